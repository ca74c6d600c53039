/* The board end to end under KVM, with stand-ins for the loader and devices: machine_create picks
 * the backend, the vCPU threads run hand-written code, and the exit loop delivers port I/O to the
 * bus.  Covers the exit port, a triple fault, pause/resume from another thread, and an AP started
 * by INIT-SIPI through KVM's in-kernel LAPIC.
 *
 * The stand-ins are weak: once the real loader and devices are linked in they take over, the
 * stand-in loader is never called, and these tests skip (the real ones are tested by the
 * integration suite with real kernels).  Skips too when /dev/kvm is unusable. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "machine/board_deps.h"
#include "machine/machine.h"
#include "util/log.h"

static bool stub_loader_used;

/* ---- stand-ins ---- */

static void exit_write(void *opaque, uint64_t off, const uint8_t *d, unsigned size)
{
    uint32_t v = 0;
    memcpy(&v, d, size > 4 ? 4 : size);
    if (off == 0) vm_request_stop(opaque, VM_STOP_EXIT_PORT, (int)v);
}
static void exit_read(void *opaque, uint64_t off, uint8_t *d, unsigned size)
{
    memset(d, 0xff, size);
}
static const struct bus_ops exit_ops = {.read = exit_read, .write = exit_write};

__attribute__((weak)) int exitport_attach(struct vm *vm)
{
    return bus_register(&vm->pio, PORT_EXIT, 4, &exit_ops, vm, "exit");
}
static int dummy_uart;
__attribute__((weak)) struct uart16550 *uart_attach(struct vm *vm, uint16_t port, unsigned gsi,
                                                    void (*out)(void *, const uint8_t *, size_t),
                                                    void *ctx)
{
    return (struct uart16550 *)&dummy_uart;
}
__attribute__((weak)) int i8042_attach(struct vm *vm)
{
    return 0;
}
__attribute__((weak)) int rtc_attach(struct vm *vm)
{
    return 0;
}
__attribute__((weak)) int acpi_pm_attach(struct vm *vm)
{
    return 0;
}
__attribute__((weak)) int acpi_build(struct vm *vm, const struct acpi_config *cfg)
{
    return 0;
}

static void put(struct vm *vm, uint64_t gpa, const void *p, size_t n)
{
    assert_int_equal(guest_write(&vm->mem, gpa, p, n), 0);
}
static void put64(struct vm *vm, uint64_t gpa, uint64_t v)
{
    put(vm, gpa, &v, 8);
}

/* "kernel" names a program; the BSP starts in 64-bit mode at 0x100000. */
__attribute__((weak)) int boot_load(struct vm *vm, const char *kernel, const char *initrd,
                                    const char *cmdline, struct x86_state *s)
{
    stub_loader_used = true;
    put64(vm, 0x9000, 0xa000 | 3);
    put64(vm, 0xa000, 0xb000 | 3);
    put64(vm, 0xa000 + 3 * 8, 0xc000 | 3); /* 3-4 GiB for the LAPIC */
    for (uint64_t i = 0; i < 8; i++)
        put64(vm, 0xb000 + 8 * i, (i << 21) | 0x83);
    put64(vm, 0xc000 + 8 * ((LAYOUT_LAPIC_BASE - 0xc0000000ull) >> 21),
          (LAYOUT_LAPIC_BASE & ~0x1fffffull) | 0x83 | 0x10);
    struct x86_seg code = {
        .limit = 0xffffffff, .sel = 8, .type = 0xb, .s = 1, .present = 1, .l = 1, .g = 1};
    struct x86_seg data = {
        .limit = 0xffffffff, .sel = 0x10, .type = 3, .s = 1, .present = 1, .db = 1, .g = 1};
    s->seg[SEG_CS] = code;
    s->seg[SEG_DS] = s->seg[SEG_ES] = s->seg[SEG_SS] = s->seg[SEG_FS] = s->seg[SEG_GS] = data;
    s->seg[SEG_TR] = (struct x86_seg){.sel = 0x18, .limit = 0x67, .type = 0xb, .present = 1};
    s->seg[SEG_LDTR] = (struct x86_seg){.type = 2, .present = 1, .limit = 0xffff};
    s->cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_NE | X86_CR0_PG;
    s->cr3 = 0x9000;
    s->cr4 = X86_CR4_PAE;
    s->efer = X86_EFER_LME | X86_EFER_LMA;
    s->rip = 0x100000;
    s->gpr[RSP] = 0x80000;
    s->idtr = (struct x86_dtable){0, 0};

    static const uint8_t exit42[] = {0xb8, 0x2a, 0, 0, 0, 0xe7, 0xf4, 0xeb, 0xfe};
    static const uint8_t triple[] = {0x0f, 0x0b};                 /* ud2 with an empty IDT */
    static const uint8_t spin[] = {0x48, 0xff, 0xc0, 0xeb, 0xfb}; /* inc rax; jmp back */
    static const uint8_t smp_bsp[] = {
        0xbb, 0x00, 0x03, 0xe0, 0xfe, /* mov ebx, 0xfee00300 (ICR) */
        0xc7, 0x83, 0xf0, 0xfd, 0xff, 0xff, 0xff,
        0x01, 0x00, 0x00,                         /* SVR = 0x1ff: KVM drops
                                                   * IPIs of a disabled APIC */
        0xc7, 0x43, 0x10, 0x00, 0x00, 0x00, 0x01, /* ICR high: destination APIC 1 */
        0xc7, 0x03, 0x00, 0x45, 0x00, 0x00,       /* INIT */
        0xb9, 0xa0, 0x86, 0x01, 0x00, 0xe2, 0xfe, /* mov ecx, 100000; loop $ */
        0xc7, 0x03, 0x08, 0x46, 0x00, 0x00,       /* SIPI, vector 8: start at 0x8000 */
        0xb9, 0xa0, 0x86, 0x01, 0x00, 0xe2, 0xfe, /* mov ecx, 100000; loop $ */
        0xc7, 0x03, 0x08, 0x46, 0x00, 0x00,       /* SIPI again, as the MP spec says */
        0xeb, 0xfe,                               /* jmp $ */
    };
    static const uint8_t smp_ap[] = {0xb0, 0x77, 0xe6, 0xf4, 0xeb, 0xfe}; /* real mode */
    if (!strcmp(kernel, "exit42"))
        put(vm, 0x100000, exit42, sizeof(exit42));
    else if (!strcmp(kernel, "triple"))
        put(vm, 0x100000, triple, sizeof(triple));
    else if (!strcmp(kernel, "spin"))
        put(vm, 0x100000, spin, sizeof(spin));
    else if (!strcmp(kernel, "smp")) {
        put(vm, 0x100000, smp_bsp, sizeof(smp_bsp));
        put(vm, 0x8000, smp_ap, sizeof(smp_ap));
    } else
        return err_set(EINVAL, "no such test program");
    return 0;
}

/* ---- tests ---- */

static struct vm *create(const char *prog, unsigned ncpus)
{
    struct machine_config cfg = {.kernel = prog,
                                 .cmdline = "",
                                 .mem_size = 32ull << 20,
                                 .ncpus = ncpus,
                                 .cpu = "kvm",
                                 .cpu_model = "lookout-v1",
                                 .console_in_fd = -1,
                                 .console_out_fd = -1};
    stub_loader_used = false;
    struct vm *vm = machine_create(&cfg);
    if (!vm && !stub_loader_used) return NULL;
    if (!vm) fail_msg("machine_create: %s", err_msg());
    return vm;
}

static bool usable(void)
{
    if (cpu_backend_kvm.probe() != 0) {
        print_message("skipping: %s\n", err_msg());
        return false;
    }
    return true;
}

static void test_exit_port(void **st)
{
    if (!usable()) skip();
    struct vm *vm = create("exit42", 1);
    if (!vm) skip(); /* the real loader is linked in */
    assert_int_equal(machine_run(vm), VM_STOP_EXIT_PORT);
    assert_int_equal(vm->exit_code, 42);
    assert_string_equal(machine_state_name(vm), "stopped");
    machine_destroy(vm);
}

static void test_triple_fault(void **st)
{
    if (!usable()) skip();
    struct vm *vm = create("triple", 1);
    if (!vm) skip();
    assert_int_equal(machine_run(vm), VM_STOP_TRIPLE_FAULT);
    machine_destroy(vm);
}

static void *runner(void *arg)
{
    struct vm *vm = arg;
    return (void *)(uintptr_t)machine_run(vm);
}

static void test_pause_resume(void **st)
{
    if (!usable()) skip();
    struct vm *vm = create("spin", 2);
    if (!vm) skip();
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, runner, vm), 0);
    while (strcmp(machine_state_name(vm), "running"))
        usleep(1000);
    usleep(20000);
    assert_int_equal(machine_pause(vm), 0);
    assert_string_equal(machine_state_name(vm), "paused");
    struct x86_state a, b;
    assert_int_equal(vm->backend->get_state(vm->vcpu[0], &a), 0);
    usleep(20000);
    assert_int_equal(vm->backend->get_state(vm->vcpu[0], &b), 0);
    assert_int_equal(a.gpr[RAX], b.gpr[RAX]); /* really paused */
    assert_true(a.gpr[RAX] > 0);              /* and it had run */
    assert_true(a.rip >= 0x100000 && a.rip < 0x100005);
    assert_int_equal(machine_resume(vm), 0);
    usleep(20000);
    assert_int_equal(machine_pause(vm), 0);
    assert_int_equal(vm->backend->get_state(vm->vcpu[0], &b), 0);
    assert_true(b.gpr[RAX] > a.gpr[RAX]); /* ran again after resume */
    assert_int_equal(machine_resume(vm), 0);
    vm_request_stop(vm, VM_STOP_QUIT, 0);
    void *ret;
    pthread_join(t, &ret);
    assert_int_equal((uintptr_t)ret, VM_STOP_QUIT);
    machine_destroy(vm);
}

static void test_smp_init_sipi(void **st)
{
    if (!usable()) skip();
    struct vm *vm = create("smp", 2);
    if (!vm) skip();
    assert_int_equal(machine_run(vm), VM_STOP_EXIT_PORT);
    assert_int_equal(vm->exit_code, 0x77); /* written by the AP */
    machine_destroy(vm);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exit_port),
        cmocka_unit_test(test_triple_fault),
        cmocka_unit_test(test_pause_resume),
        cmocka_unit_test(test_smp_init_sipi),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
