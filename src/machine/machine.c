/* The board: picks the CPU backend, maps RAM, builds the CPUID model, attaches devices and boot
 * tables, and runs one thread per vCPU with the exit loop that dispatches port I/O and MMIO.
 *
 * Trusts: the configuration (validated by cli/ and again here for ranges), the backend and the
 * devices.  Guest-controlled values reach this file only as I/O exits, whose sizes come from the
 * backend (checked there) and whose addresses go to the bus, which handles unclaimed ones. */
#include "machine/machine.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <x86intrin.h>

#include "cpu/kvm/kvm.h"
#include "api/server.h"
#include "devices/acpi_pm.h"
#include "devices/exitport.h"
#include "devices/i8042.h"
#include "devices/rtc.h"
#include "devices/uart16550.h"
#include "devices/vclock.h"
#include "machine/acpi.h"
#include "machine/boot.h"
#include "machine/console.h"
#include "machine/layout.h"
#include "snapshot/codec.h"
#include "snapshot/snapshot.h"
#include "machine/virtio_board.h"
#include "util/log.h"

/* The software CPU, once linked in (weak until then). */
extern const struct cpu_backend cpu_backend_bt __attribute__((weak));

#define COM1_KEEP (64u << 10) /* command mode: last COM1 bytes kept for an abnormal end */

struct board {
    struct machine_config cfg;
    struct uart16550 *com1, *com2;
    struct console *console;     /* COM1 <-> the terminal (not in command mode) */
    struct console *out_console; /* command mode: COM2 -> stdout */
    struct api_server *api;
    struct virtio_board *virtio; /* virtio-mmio slots (--disk, --net, --rng) */
    bool threads_started;
    bool have_i8042, have_rtc, have_exitport, have_acpi_pm; /* attached: detach at the end */
    bool vm_created; /* backend vm_create succeeded: vm_destroy is due */
    /* COM1 in command mode: a ring of the last COM1_KEEP bytes of kernel output */
    pthread_mutex_t ring_lock;
    uint8_t *ring;
    size_t ring_head, ring_len;
};

static void write_all(int fd, const uint8_t *buf, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, buf, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return; /* a closed stdout must not stop the guest */
        buf += w;
        n -= (size_t)w;
    }
}

static void com1_out(void *ctx, const uint8_t *buf, size_t n)
{
    struct board *b = ctx;
    if (!b->cfg.command_mode) {
        console_output(b->console, buf, n); /* buffered: a stuck terminal never blocks a vCPU */
        return;
    }
    if (b->cfg.verbose) write_all(STDERR_FILENO, buf, n);
    pthread_mutex_lock(&b->ring_lock);
    for (size_t i = 0; i < n; i++) {
        b->ring[(b->ring_head + b->ring_len) % COM1_KEEP] = buf[i];
        if (b->ring_len < COM1_KEEP)
            b->ring_len++;
        else
            b->ring_head = (b->ring_head + 1) % COM1_KEEP;
    }
    pthread_mutex_unlock(&b->ring_lock);
}

static void com2_out(void *ctx, const uint8_t *buf, size_t n)
{
    struct board *b = ctx;
    if (b->cfg.command_mode) console_output(b->out_console, buf, n);
}

static void dump_com1_ring(struct board *b)
{
    pthread_mutex_lock(&b->ring_lock);
    if (b->ring_len) {
        dprintf(STDERR_FILENO, "lookout: last %zu bytes of the guest's console (COM1):\n",
                b->ring_len);
        size_t first = MIN(b->ring_len, COM1_KEEP - b->ring_head);
        write_all(STDERR_FILENO, b->ring + b->ring_head, first);
        write_all(STDERR_FILENO, b->ring, b->ring_len - first);
        dprintf(STDERR_FILENO, "\n");
    }
    pthread_mutex_unlock(&b->ring_lock);
}

/* ---- backend choice ---------------------------------------------------------------------- */

const struct cpu_backend *machine_pick_backend(const char *cpu)
{
    const struct cpu_backend *bt = &cpu_backend_bt; /* NULL while the software CPU is absent */
    if (!cpu || !strcmp(cpu, "auto")) {
        int r = cpu_backend_kvm.probe();
        if (r == 0 && !kvm_is_software_virt()) {
            log_info("--cpu auto: KVM on hardware virtualization");
            return &cpu_backend_kvm;
        }
        /* Said at info level so tests and users can see which backend auto chose and why. */
        if (bt && r == 0)
            log_info("--cpu auto: the software CPU (bt): this host's /dev/kvm has no VMX/SVM "
                     "(kvm_pvm), which runs a Linux kernel far slower");
        else if (bt)
            log_info("--cpu auto: the software CPU (bt): KVM is not usable here (%s)", err_msg());
        if (bt) return bt;
        if (r == 0) {
            log_warn("this host's /dev/kvm has no VMX/SVM (kvm_pvm), where the software CPU is "
                     "faster, but the software CPU is not available in this build yet: using "
                     "KVM, which runs a Linux kernel very slowly");
            return &cpu_backend_kvm;
        }
        err_wrap(r, "no CPU backend can run here (the software CPU is not available yet)");
        return NULL;
    }
    if (!strcmp(cpu, "kvm")) {
        if (cpu_backend_kvm.probe() != 0) return NULL;
        return &cpu_backend_kvm;
    }
    if (!strcmp(cpu, "bt")) {
        if (!bt) {
            err_set(ENOTSUP, "the software CPU (--cpu bt) is not available in this build yet; "
                             "use --cpu kvm");
            return NULL;
        }
        if (bt->probe && bt->probe() != 0) return NULL;
        return bt;
    }
    err_set(EINVAL, "unknown CPU backend \"%s\": use kvm, bt or auto", cpu);
    return NULL;
}

/* The guest TSC rate for the software CPU: the software time base's choice (vclock), else what
 * KVM reports, else the host TSC measured against CLOCK_MONOTONIC for a few milliseconds. */
static uint64_t host_tsc_khz(void)
{
    return vclock_pick_tsc_khz();
}

/* ---- creation ---------------------------------------------------------------------------- */

static struct vm *vm_alloc(const struct machine_config *cfg)
{
    struct vm *vm = calloc(1, sizeof(*vm));
    struct board *b = calloc(1, sizeof(*b));
    if (!vm || !b) {
        free(vm);
        free(b);
        err_set(ENOMEM, "out of memory");
        return NULL;
    }
    vm->board = b;
    b->cfg = *cfg;
    pthread_mutex_init(&vm->lock, NULL);
    pthread_cond_init(&vm->cond, NULL);
    pthread_mutex_init(&b->ring_lock, NULL);
    atomic_store(&vm->state, VM_STATE_CREATED);
    bus_init(&vm->pio, "pio");
    bus_init(&vm->mmio, "mmio");
    return vm;
}

static int attach_devices(struct vm *vm)
{
    struct board *b = vm->board;
    int r;
    b->com1 = uart_attach(vm, PORT_COM1, GSI_COM1, com1_out, b);
    if (!b->com1) return err_wrap(-EIO, "COM1");
    b->com2 = uart_attach(vm, PORT_COM2, GSI_COM2, com2_out, b);
    if (!b->com2) return err_wrap(-EIO, "COM2");
    if ((r = i8042_attach(vm)) < 0) return err_wrap(r, "i8042");
    b->have_i8042 = true;
    if ((r = rtc_attach(vm)) < 0) return err_wrap(r, "RTC");
    b->have_rtc = true;
    if ((r = exitport_attach(vm)) < 0) return err_wrap(r, "exit port");
    b->have_exitport = true;
    if ((r = acpi_pm_attach(vm)) < 0) return err_wrap(r, "ACPI power management");
    b->have_acpi_pm = true;
    if (!(b->virtio = virtio_board_attach(vm, b->cfg.vdevs))) return err_wrap(-EIO, "virtio");
    return 0;
}

static int load_guest(struct vm *vm, struct x86_state *bsp)
{
    const struct machine_config *cfg = &((struct board *)vm->board)->cfg;
    int r;
    struct acpi_config ac;
    memset(&ac, 0, sizeof(ac));
    ac.ncpus = vm->ncpus;
    virtio_board_acpi(((struct board *)vm->board)->virtio, &ac);
    if ((r = acpi_build(vm, &ac)) < 0) return err_wrap(r, "building the ACPI tables");
    /* There is no firmware, but guests still jump to the reset vector to reboot: Linux on a
     * HW-reduced ACPI board picks its EFI-then-BIOS path (machine_real_restart to F000:FFF0),
     * never the reset register.  What a BIOS would do there is reset the board, so the vector
     * holds: mov al, ACPI_RESET_VALUE; mov dx, PORT_ACPI_RESET; out dx, al; hlt; jmp $-1. */
    static const uint8_t reset_stub[] = {0xb0,
                                         ACPI_RESET_VALUE,
                                         0xba,
                                         PORT_ACPI_RESET & 0xff,
                                         PORT_ACPI_RESET >> 8,
                                         0xee,
                                         0xf4,
                                         0xeb,
                                         0xfd};
    if ((r = guest_write(&vm->mem, LAYOUT_RESET_VECTOR, reset_stub, sizeof(reset_stub))) < 0)
        return err_wrap(r, "writing the reset vector");
    x86_state_reset(bsp, 0, true);
    if ((r = boot_load(vm, cfg->kernel, cfg->initrd, cfg->cmdline ? cfg->cmdline : "", bsp)) < 0)
        return r;
    return 0;
}

struct vm *machine_create(const struct machine_config *cfg)
{
    if (cfg->ncpus < 1 || cfg->ncpus > VM_MAX_CPUS) {
        err_set(EINVAL, "%u vCPUs is out of range: use 1 to %d", cfg->ncpus, VM_MAX_CPUS);
        return NULL;
    }
    if (!cfg->kernel && !cfg->restore_path) {
        err_set(EINVAL, "no kernel given");
        return NULL;
    }
    const struct cpu_backend *be = machine_pick_backend(cfg->cpu);
    if (!be) return NULL;
    struct vm *vm = vm_alloc(cfg);
    if (!vm) return NULL;
    struct board *b = vm->board;
    vm->backend = be;
    vm->ncpus = cfg->ncpus;
    int r;
    if (cfg->command_mode && !(b->ring = malloc(COM1_KEEP))) {
        err_set(ENOMEM, "out of memory");
        goto fail;
    }
    if ((r = guest_mem_init(&vm->mem, cfg->mem_size)) < 0) goto fail;
    vm->mem_size = vm->mem.size;

    /* The CPUID model: lookout-v1 (or host), cut down to what KVM can present. */
    struct cpuid_entry sup[256];
    unsigned nsup = 0;
    bool is_kvm = be == &cpu_backend_kvm;
    if (is_kvm) {
        if ((r = kvm_query_host(sup, ARRAY_SIZE(sup), &nsup, &vm->tsc_khz)) < 0) goto fail;
    } else {
        /* a restore brings its TSC rate: skip the host measurement (it costs milliseconds) */
        vm->tsc_khz = cfg->tsc_khz ? cfg->tsc_khz : host_tsc_khz();
    }
    if (cfg->tsc_khz) vm->tsc_khz = cfg->tsc_khz;
    const char *model = cfg->cpu_model ? cfg->cpu_model : "lookout-v1";
    if ((r = cpuid_model_build(&vm->cpuid, model, is_kvm ? sup : NULL, nsup, vm->ncpus,
                               vm->tsc_khz)) < 0)
        goto fail;
    if (cfg->restore_cpuid) {
        if ((r = snap_cpuid_presentable(&vm->cpuid, cfg->restore_cpuid)) < 0) {
            err_wrap(r, "snapshot %s: its CPU model \"%s\" cannot be presented by the %s backend",
                     cfg->restore_path, cfg->restore_cpuid->name, be->name);
            goto fail;
        }
        vm->cpuid = *cfg->restore_cpuid;
    }

    if ((r = be->vm_create(vm)) < 0) {
        err_wrap(r, "creating the VM (%s backend)", be->name);
        goto fail;
    }
    b->vm_created = true;
    for (unsigned i = 0; i < vm->ncpus; i++) {
        struct vcpu *c = calloc(1, sizeof(*c));
        if (!c) {
            err_set(ENOMEM, "out of memory");
            goto fail;
        }
        c->vm = vm;
        c->id = i;
        if ((r = be->vcpu_create(c)) < 0) {
            free(c);
            err_wrap(r, "creating vCPU %u", i);
            goto fail;
        }
        vm->vcpu[i] = c;
    }
    if ((r = attach_devices(vm)) < 0) goto fail;
    if (cfg->restore_path) {
        struct snap_restore_opts ro = {
            .eager = cfg->restore_eager, .force = cfg->restore_force, .lazy = cfg->restore_lazy};
        if ((r = snapshot_restore(vm, cfg->restore_path, &ro, NULL)) < 0) goto fail;
        goto started;
    }
    struct x86_state s;
    if ((r = load_guest(vm, &s)) < 0) goto fail;
    for (unsigned i = 0; i < vm->ncpus; i++) {
        if (i > 0) x86_state_reset(&s, i, false);
        if ((r = be->set_state(vm->vcpu[i], &s)) < 0) {
            err_wrap(r, "setting the initial state of vCPU %u", i);
            goto fail;
        }
    }
started:
    if (cfg->api_path) {
        b->api = api_start(vm, cfg->api_path);
        if (!b->api) goto fail;
    }
    return vm;
fail:
    machine_destroy(vm);
    return NULL;
}

/* ---- running ----------------------------------------------------------------------------- */

static void dump_vcpu(struct vcpu *cpu, const char *why)
{
    struct x86_state s;
    if (!strncmp(why, "vCPU ", 5))
        log_err("%s", why); /* the backend already named it */
    else
        log_err("vCPU %u: %s", cpu->id, why);
    if (cpu->vm->backend->get_state(cpu, &s) == 0)
        x86_state_dump(&s, STDERR_FILENO);
    else
        log_err("(registers unavailable: %s)", err_msg());
}

static void park(struct vcpu *cpu)
{
    struct vm *vm = cpu->vm;
    pthread_mutex_lock(&vm->lock);
    atomic_store(&cpu->parked, true);
    pthread_cond_broadcast(&vm->cond);
    while (atomic_load(&vm->pause_requested) && !vm_stopping(vm))
        pthread_cond_wait(&vm->cond, &vm->lock);
    atomic_store(&cpu->parked, false);
    pthread_mutex_unlock(&vm->lock);
}

/* HLT the backend could not wait out itself: sleep until kicked, a pause/stop, or 1 ms passes
 * (the software backend's timers are polled by its run loop). */
static void wait_halted(struct vm *vm)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 1000000;
    if (ts.tv_nsec >= 1000000000) ts.tv_sec++, ts.tv_nsec -= 1000000000;
    pthread_mutex_lock(&vm->lock);
    if (!vm_stopping(vm) && !atomic_load(&vm->pause_requested))
        pthread_cond_timedwait(&vm->cond, &vm->lock, &ts);
    pthread_mutex_unlock(&vm->lock);
}

static void *vcpu_thread(void *arg)
{
    struct vcpu *cpu = arg;
    struct vm *vm = cpu->vm;
    const struct cpu_backend *be = vm->backend;
    struct vcpu_exit ex;
    bool first = cpu->id == 0;
    while (!vm_stopping(vm)) {
        if (atomic_load(&vm->pause_requested)) {
            park(cpu);
            continue;
        }
        if (first) { /* bench/boot reads this line */
            log_info("first guest instruction after %.3f ms", uptime_ms());
            first = false;
        }
        int r = be->vcpu_run(cpu, &ex);
        if (r < 0) {
            char why[1100];
            snprintf(why, sizeof(why), "the CPU backend failed: %s", err_msg());
            dump_vcpu(cpu, why);
            vm_request_stop(vm, VM_STOP_INTERNAL_ERROR, 0);
            break;
        }
        switch (ex.reason) {
        case VCPU_EXIT_IO:
            for (uint32_t i = 0; i < ex.io.count; i++)
                vm_pio(vm, ex.io.port, ex.io.data + (size_t)i * ex.io.size, ex.io.size,
                       ex.io.is_write);
            break;
        case VCPU_EXIT_MMIO:
            vm_mmio(vm, ex.mmio.gpa, ex.mmio.data, ex.mmio.len, ex.mmio.is_write);
            break;
        case VCPU_EXIT_HLT: wait_halted(vm); break;
        case VCPU_EXIT_SHUTDOWN:
            dump_vcpu(cpu, "triple fault (the guest hit an exception it could not handle); "
                           "registers:");
            vm_request_stop(vm, VM_STOP_TRIPLE_FAULT, 0);
            break;
        case VCPU_EXIT_INTERNAL: {
            char why[1100];
            snprintf(why, sizeof(why), "%s", err_msg());
            dump_vcpu(cpu, why);
            vm_request_stop(vm, VM_STOP_INTERNAL_ERROR, 0);
            break;
        }
        case VCPU_EXIT_DEBUG: /* no debugger attached yet: keep running */
        case VCPU_EXIT_NONE: break;
        }
    }
    /* A stopped vCPU counts as parked, so a pause never waits for it. */
    pthread_mutex_lock(&vm->lock);
    atomic_store(&cpu->parked, true);
    pthread_cond_broadcast(&vm->cond);
    pthread_mutex_unlock(&vm->lock);
    return NULL;
}

/* After the vCPUs stopped (the UARTs keep pointers to the consoles): flushes output, restores
 * the terminal. */
static void stop_consoles(struct board *b)
{
    if (b->console) console_stop(b->console);
    if (b->out_console) console_stop(b->out_console);
    b->console = b->out_console = NULL;
}

enum vm_stop_reason machine_run(struct vm *vm)
{
    struct board *b = vm->board;
    const struct machine_config *cfg = &b->cfg;
    {
        if (!cfg->command_mode)
            b->console = console_start(vm, b->com1, cfg->console_in_fd, cfg->console_out_fd,
                                       cfg->console_in_fd >= 0 && isatty(cfg->console_in_fd));
        else
            b->out_console = console_start(vm, NULL, -1, cfg->console_out_fd, false);
        if ((!cfg->command_mode && !b->console) || (cfg->command_mode && !b->out_console)) {
            log_err("cannot start the console: %s", err_msg());
            vm_request_stop(vm, VM_STOP_VMM_ERROR, 0);
            atomic_store(&vm->state, VM_STATE_STOPPED);
            return VM_STOP_VMM_ERROR;
        }
    }

    /* vCPU threads take only the kick signal; SIGINT/SIGTERM go to the thread that waits. */
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGHUP);
    sigaddset(&block, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    atomic_store(&vm->state, VM_STATE_RUNNING);
    unsigned started = 0;
    for (unsigned i = 0; i < vm->ncpus; i++) {
        int e = pthread_create(&vm->vcpu[i]->thread, NULL, vcpu_thread, vm->vcpu[i]);
        if (e) {
            log_err("cannot start the thread of vCPU %u: %s", i, strerror(e));
            vm_request_stop(vm, VM_STOP_VMM_ERROR, 0);
            break;
        }
        started++;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    b->threads_started = true;

    pthread_mutex_lock(&vm->lock);
    while (!vm_stopping(vm))
        pthread_cond_wait(&vm->cond, &vm->lock);
    pthread_mutex_unlock(&vm->lock);
    for (unsigned i = 0; i < started; i++) {
        vm->backend->vcpu_kick(vm->vcpu[i]);
        pthread_join(vm->vcpu[i]->thread, NULL);
    }
    b->threads_started = false;
    atomic_store(&vm->state, VM_STATE_STOPPED);
    stop_consoles(b);

    enum vm_stop_reason why = (enum vm_stop_reason)atomic_load(&vm->stop_reason);
    /* command mode ends normally only by the exit port (the command's status) or a quit */
    if (cfg->command_mode && why != VM_STOP_EXIT_PORT && why != VM_STOP_QUIT && !cfg->verbose)
        dump_com1_ring(b);
    return why;
}

int machine_pause(struct vm *vm)
{
    if (atomic_load(&vm->state) != VM_STATE_RUNNING && atomic_load(&vm->state) != VM_STATE_PAUSED)
        return err_set(EINVAL, "the VM is %s, not running", machine_state_name(vm));
    atomic_store(&vm->pause_requested, true);
    for (unsigned i = 0; i < vm->ncpus; i++)
        vm->backend->vcpu_kick(vm->vcpu[i]);
    pthread_mutex_lock(&vm->lock);
    for (;;) {
        bool all = true;
        for (unsigned i = 0; i < vm->ncpus; i++)
            if (!atomic_load(&vm->vcpu[i]->parked)) all = false;
        if (all || vm_stopping(vm)) break;
        pthread_cond_wait(&vm->cond, &vm->lock);
    }
    if (!vm_stopping(vm)) atomic_store(&vm->state, VM_STATE_PAUSED);
    pthread_mutex_unlock(&vm->lock);
    /* the software backend's devices keep time in virtual ns: freeze it while paused */
    if (vm->backend != &cpu_backend_kvm) vclock_pause();
    return 0;
}

int machine_resume(struct vm *vm)
{
    if (atomic_load(&vm->state) != VM_STATE_PAUSED)
        return err_set(EINVAL, "the VM is %s, not paused", machine_state_name(vm));
    if (vm->backend != &cpu_backend_kvm) vclock_resume();
    pthread_mutex_lock(&vm->lock);
    atomic_store(&vm->pause_requested, false);
    atomic_store(&vm->state, VM_STATE_RUNNING);
    pthread_cond_broadcast(&vm->cond);
    pthread_mutex_unlock(&vm->lock);
    return 0;
}

struct uart16550 *machine_uart(struct vm *vm, unsigned idx)
{
    struct board *b = vm->board;
    return idx == 0 ? b->com1 : idx == 1 ? b->com2 : NULL;
}

const char *machine_state_name(const struct vm *vm)
{
    switch (atomic_load(&vm->state)) {
    case VM_STATE_CREATED: return "created";
    case VM_STATE_RUNNING: return "running";
    case VM_STATE_PAUSED: return "paused";
    default: return "stopped";
    }
}

/* No vCPU runs any more: the devices can go (their threads stop, their memory is freed). */
static void detach_devices(struct vm *vm)
{
    struct board *b = vm->board;
    {
        if (b->com1) uart_detach(vm, b->com1);
        if (b->com2) uart_detach(vm, b->com2);
        b->com1 = b->com2 = NULL;
    }
    if (b->have_i8042) i8042_detach(vm);
    if (b->have_rtc) rtc_detach(vm);
    if (b->have_exitport) exitport_detach(vm);
    if (b->have_acpi_pm) acpi_pm_detach(vm);
    b->have_i8042 = b->have_rtc = b->have_exitport = b->have_acpi_pm = false;
    virtio_board_detach(vm, b->virtio);
    b->virtio = NULL;
}

void machine_destroy(struct vm *vm)
{
    if (!vm) return;
    struct board *b = vm->board;
    if (b->threads_started) {
        vm_request_stop(vm, VM_STOP_QUIT, 0);
        for (unsigned i = 0; i < vm->ncpus; i++)
            pthread_join(vm->vcpu[i]->thread, NULL);
    }
    stop_consoles(b);
    if (b->api) api_stop(b->api);
    detach_devices(vm);
    for (unsigned i = 0; i < VM_MAX_CPUS; i++) {
        if (!vm->vcpu[i]) continue;
        if (vm->backend) vm->backend->vcpu_destroy(vm->vcpu[i]);
        free(vm->vcpu[i]);
        vm->vcpu[i] = NULL;
    }
    if (b->vm_created) vm->backend->vm_destroy(vm);
    snapshot_release(vm); /* a lazy restore's loader thread fills guest RAM */
    guest_mem_destroy(&vm->mem);
    pthread_mutex_destroy(&b->ring_lock);
    free(b->ring);
    free(b);
    pthread_cond_destroy(&vm->cond);
    pthread_mutex_destroy(&vm->lock);
    free(vm);
}
