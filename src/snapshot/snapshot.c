/* Save and restore of a whole VM (see snapshot.h, docs/snapshot-format.md).
 *
 * Trusts: nothing read from the state or memory file (the parser and the codecs check every
 * length, the parts' set_state functions every value); the VM, its backend and its devices.
 * Threads: called with the VM paused (every vCPU parked) or not yet started. */
#include "snapshot/snapshot.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zstd.h>

#include "cpu/kvm/kvm.h"
#include "devices/vclock.h"
#include "machine/machine.h"
#include "snapshot/codec.h"
#include "util/log.h"

#define MEM_MAGIC    "LOOKMEM"
#define MEM_VERSION  1u
#define MEM_HDR      4096u /* the header page; RAM follows, page-aligned, mappable */
#define PAGE         GUEST_PAGE_SIZE
#define PROGRESS_MIN (1ull << 30) /* memories at least this large report progress */

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* ---- registry ----------------------------------------------------------------------------- */

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
    struct vm *vm;
    const struct snap_device_ops *ops;
    void *opaque;
} reg[SNAP_MAX_DEVICES];

int snap_register_device(struct vm *vm, const struct snap_device_ops *ops, void *opaque)
{
    if (!ops || !ops->name || !ops->save || !ops->check || !ops->load ||
        strlen(ops->name) > SNAP_NAME_LEN || !ops->name[0])
        return err_set(EINVAL, "snapshot section registration: incomplete ops or bad name");
    pthread_mutex_lock(&reg_lock);
    int free_slot = -1;
    for (int i = 0; i < SNAP_MAX_DEVICES; i++) {
        if (!reg[i].ops) {
            if (free_slot < 0) free_slot = i;
        } else if (reg[i].vm == vm && !strcmp(reg[i].ops->name, ops->name)) {
            pthread_mutex_unlock(&reg_lock);
            return err_set(EEXIST, "snapshot section %s is registered twice", ops->name);
        }
    }
    if (free_slot < 0) {
        pthread_mutex_unlock(&reg_lock);
        return err_set(ENOSPC, "more than %d snapshot device sections", SNAP_MAX_DEVICES);
    }
    reg[free_slot].vm = vm;
    reg[free_slot].ops = ops;
    reg[free_slot].opaque = opaque;
    pthread_mutex_unlock(&reg_lock);
    return 0;
}

void snap_unregister_device(struct vm *vm, void *opaque)
{
    pthread_mutex_lock(&reg_lock);
    for (int i = 0; i < SNAP_MAX_DEVICES; i++)
        if (reg[i].ops && reg[i].vm == vm && reg[i].opaque == opaque) reg[i].ops = NULL;
    pthread_mutex_unlock(&reg_lock);
}

/* Registered devices of `vm`, in registration-slot order (stable while the VM is paused). */
static unsigned reg_list(struct vm *vm, const struct snap_device_ops **ops, void **opaque)
{
    unsigned n = 0;
    pthread_mutex_lock(&reg_lock);
    for (int i = 0; i < SNAP_MAX_DEVICES; i++)
        if (reg[i].ops && reg[i].vm == vm) {
            ops[n] = reg[i].ops;
            opaque[n++] = reg[i].opaque;
        }
    pthread_mutex_unlock(&reg_lock);
    return n;
}

static void quiesce_all(struct vm *vm, bool on)
{
    const struct snap_device_ops *ops[SNAP_MAX_DEVICES];
    void *op[SNAP_MAX_DEVICES];
    unsigned n = reg_list(vm, ops, op);
    for (unsigned i = 0; i < n; i++)
        if (ops[i]->quiesce) ops[i]->quiesce(op[i], on);
}

static bool restore_force;

bool snap_restore_forced(void)
{
    return restore_force;
}

/* ---- the board's parts -------------------------------------------------------------------- */

static bool is_kvm(const struct vm *vm)
{
    return vm->backend == &cpu_backend_kvm;
}

/* The VM clock the PIT's load times are kept in: host monotonic time since creation under KVM,
 * virtual time (vclock) under the software CPU. */
static int64_t vm_clock(struct vm *vm)
{
    return is_kvm(vm) ? kvm_vm_clock_ns(vm) : vclock_ns();
}

static void device_list(struct vm *vm, char *out, size_t cap)
{
    const struct snap_device_ops *ops[SNAP_MAX_DEVICES];
    void *op[SNAP_MAX_DEVICES];
    unsigned n = reg_list(vm, ops, op);
    snprintf(out, cap, "com1,com2,i8042,rtc,acpi_pm,exitport,ioapic,pit");
    for (unsigned i = 0; i < n; i++) {
        size_t l = strlen(out);
        snprintf(out + l, cap - l, ",%s", ops[i]->name);
    }
}

static void header_for(struct vm *vm, struct snap_header *h)
{
    memset(h, 0, sizeof(*h));
    h->version = SNAP_FORMAT_VERSION;
    h->mem_size = vm->mem_size;
    h->ncpus = vm->ncpus;
    snprintf(h->cpu_model, sizeof(h->cpu_model), "%s", vm->cpuid.name);
    snap_cpuid_hash(&vm->cpuid, h->cpuid_hash);
    snprintf(h->backend, sizeof(h->backend), "%s", vm->backend->name);
    h->tsc_khz = vm->tsc_khz;
    device_list(vm, h->devices, sizeof(h->devices));
}

static int sec_end(struct snap_writer *w)
{
    return snap_section_end(w);
}

/* Serialises everything but memory into w (header already begun).  Used for saving and for the
 * in-memory backup a restore falls back to. */
static int save_state(struct vm *vm, struct snap_writer *w)
{
    const struct cpu_backend *be = vm->backend;
    char name[SNAP_NAME_LEN + 1];
    int r;
    int64_t now = vm_clock(vm);
    snap_section_begin(w, "clock", SNAP_V_CLOCK, 0);
    snap_put_u64(w, (uint64_t)now);
    struct timespec rt;
    clock_gettime(CLOCK_REALTIME, &rt);
    snap_put_u64(w, (uint64_t)rt.tv_sec * 1000000000ull + (uint64_t)rt.tv_nsec);
    sec_end(w);
    snap_section_begin(w, "cpuid", SNAP_V_CPUID, 0);
    snap_enc_cpuid(w, &vm->cpuid);
    sec_end(w);
    for (unsigned i = 0; i < vm->ncpus; i++) {
        struct x86_state s;
        struct lapic_state l;
        if ((r = be->get_state(vm->vcpu[i], &s)) < 0) return err_wrap(r, "reading vCPU %u", i);
        if ((r = be->get_lapic(vm->vcpu[i], &l)) < 0)
            return err_wrap(r, "reading the LAPIC of vCPU %u", i);
        snprintf(name, sizeof(name), "cpu%u", i);
        snap_section_begin(w, name, SNAP_V_CPU, 0);
        snap_enc_cpu(w, &s);
        sec_end(w);
        snprintf(name, sizeof(name), "lapic%u", i);
        snap_section_begin(w, name, SNAP_V_LAPIC, 0);
        snap_enc_lapic(w, &l);
        sec_end(w);
    }
    struct ioapic_state io;
    struct pit_state pit;
    if ((r = be->get_ioapic(vm, &io)) < 0) return err_wrap(r, "reading the IOAPIC");
    if ((r = be->get_pit(vm, &pit)) < 0) return err_wrap(r, "reading the PIT");
    snap_section_begin(w, "ioapic", SNAP_V_IOAPIC, 0);
    snap_enc_ioapic(w, &io);
    sec_end(w);
    snap_section_begin(w, "pit", SNAP_V_PIT, 0);
    snap_enc_pit(w, &pit, now);
    sec_end(w);
    for (unsigned k = 0; k < 2; k++) {
        struct uart16550 *u = machine_uart(vm, k);
        if (!u) return err_set(ENODEV, "the VM has no COM%u", k + 1);
        struct uart_state us;
        uart_get_state(u, &us);
        snap_section_begin(w, k ? "com2" : "com1", SNAP_V_UART, 0);
        snap_enc_uart(w, &us);
        sec_end(w);
    }
    struct rtc_state rtc;
    struct i8042_state kb;
    struct acpi_pm_state pm;
    if ((r = rtc_get_state(vm, &rtc)) < 0) return r;
    if ((r = i8042_get_state(vm, &kb)) < 0) return r;
    if ((r = acpi_pm_get_state(vm, &pm)) < 0) return r;
    snap_section_begin(w, "rtc", SNAP_V_RTC, 0);
    snap_enc_rtc(w, &rtc);
    sec_end(w);
    snap_section_begin(w, "i8042", SNAP_V_I8042, 0);
    snap_enc_i8042(w, &kb);
    sec_end(w);
    snap_section_begin(w, "acpi_pm", SNAP_V_ACPIPM, 0);
    snap_enc_acpi_pm(w, &pm);
    sec_end(w);
    const struct snap_device_ops *ops[SNAP_MAX_DEVICES];
    void *op[SNAP_MAX_DEVICES];
    unsigned n = reg_list(vm, ops, op);
    for (unsigned i = 0; i < n; i++) {
        snap_section_begin(w, ops[i]->name, ops[i]->version, ops[i]->flags);
        if ((r = ops[i]->save(op[i], w)) < 0) return err_wrap(r, "saving %s", ops[i]->name);
        sec_end(w);
    }
    return w->err;
}

/* ---- decoded state (phase one) ------------------------------------------------------------- */

struct decoded {
    int64_t clock_ns;
    struct x86_state cpu[VM_MAX_CPUS];
    struct lapic_state lapic[VM_MAX_CPUS];
    struct ioapic_state io;
    struct pit_state pit; /* load times relative to the snapshot clock (rebased at apply) */
    struct uart_state com[2];
    struct rtc_state rtc;
    struct i8042_state kb;
    struct acpi_pm_state pm;
    const struct snap_section *extra[SNAP_MAX_DEVICES];
    const struct snap_device_ops *xops[SNAP_MAX_DEVICES];
    void *xop[SNAP_MAX_DEVICES];
    unsigned nextra;
};

static const struct snap_section *need(const struct snap_file *f, const char *name, uint32_t ver)
{
    const struct snap_section *s = snap_find(f, name);
    if (!s) {
        err_set(EINVAL, "section %s: missing", name);
        return NULL;
    }
    if (s->version != ver) {
        err_set(EINVAL, "section %s: version %u, this lookout reads version %u", name, s->version,
                ver);
        return NULL;
    }
    return s;
}

static bool builtin_name(const char *n, unsigned ncpus)
{
    static const char *const fixed[] = {"clock", "cpuid", "ioapic", "pit",    "com1",
                                        "com2",  "rtc",   "i8042",  "acpi_pm"};
    for (unsigned i = 0; i < ARRAY_SIZE(fixed); i++)
        if (!strcmp(n, fixed[i])) return true;
    char buf[SNAP_NAME_LEN + 1];
    for (unsigned i = 0; i < ncpus; i++) {
        snprintf(buf, sizeof(buf), "cpu%u", i);
        if (!strcmp(n, buf)) return true;
        snprintf(buf, sizeof(buf), "lapic%u", i);
        if (!strcmp(n, buf)) return true;
    }
    return !strcmp(n, "memory") || !strcmp(n, "parent") || !strcmp(n, "memmap");
}

/* Compares the configuration and decodes every section; touches nothing in the VM. */
static int decode_all(struct vm *vm, const struct snap_file *f, struct decoded *d)
{
    const struct snap_header *h = &f->h;
    char devs[SNAP_DEVLIST_MAX + 1];
    int r;
    if (h->mem_size != vm->mem_size)
        return err_set(EINVAL, "header: the snapshot has %llu MiB of memory, this VM %llu MiB",
                       (unsigned long long)(h->mem_size >> 20),
                       (unsigned long long)(vm->mem_size >> 20));
    if (h->ncpus != vm->ncpus)
        return err_set(EINVAL, "header: the snapshot has %u vCPUs, this VM %u", h->ncpus,
                       vm->ncpus);
    device_list(vm, devs, sizeof(devs));
    if (strcmp(devs, h->devices))
        return err_set(EINVAL,
                       "header: the snapshot's devices are \"%s\", this VM has \"%s\" (a "
                       "restored VM needs the same --disk/--net/--rng options, in the same "
                       "order, as the VM the snapshot was taken of)",
                       h->devices, devs);
    uint8_t hash[SHA256_LEN];
    snap_cpuid_hash(&vm->cpuid, hash);
    if (strcmp(h->cpu_model, vm->cpuid.name) || memcmp(hash, h->cpuid_hash, SHA256_LEN)) {
        /* say which leaf differs */
        char detail[160] = "";
        const struct snap_section *cs = snap_find(f, "cpuid");
        static struct cpuid_model m;
        if (cs && snap_dec_cpuid(cs, &m) == 0) {
            for (unsigned i = 0; i < m.n; i++) {
                const struct cpuid_entry *e = &m.e[i],
                                         *t = cpuid_find(&vm->cpuid, e->function, e->index);
                if (!t || t->eax != e->eax || t->ebx != e->ebx || t->ecx != e->ecx ||
                    t->edx != e->edx) {
                    snprintf(detail, sizeof(detail), " (first difference: leaf %#x.%u)",
                             e->function, e->index);
                    break;
                }
            }
            if (!detail[0] && m.n != vm->cpuid.n)
                snprintf(detail, sizeof(detail), " (%u leaves, this VM has %u)", m.n, vm->cpuid.n);
        }
        err_clear();
        return err_set(EINVAL,
                       "header: the snapshot's CPU model \"%s\" (taken under %s) cannot be "
                       "presented by this VM's %s backend with model \"%s\"%s",
                       h->cpu_model, h->backend[0] ? h->backend : "?", vm->backend->name,
                       vm->cpuid.name, detail);
    }

    const struct snap_section *s;
    if (!(s = need(f, "clock", SNAP_V_CLOCK))) return -EINVAL;
    struct snap_rd rd;
    snap_rd_init(&rd, s);
    d->clock_ns = (int64_t)snap_get_u64(&rd);
    (void)snap_get_u64(&rd);
    if ((r = snap_rd_done(&rd)) < 0) return r;
    if (d->clock_ns < 0) return err_set(EINVAL, "section clock: negative VM time");
    if (!need(f, "cpuid", SNAP_V_CPUID)) return -EINVAL;
    char name[SNAP_NAME_LEN + 1];
    for (unsigned i = 0; i < vm->ncpus; i++) {
        snprintf(name, sizeof(name), "cpu%u", i);
        if (!(s = need(f, name, SNAP_V_CPU))) return -EINVAL;
        if ((r = snap_dec_cpu(s, &d->cpu[i])) < 0) return r;
        snprintf(name, sizeof(name), "lapic%u", i);
        if (!(s = need(f, name, SNAP_V_LAPIC))) return -EINVAL;
        if ((r = snap_dec_lapic(s, &d->lapic[i])) < 0) return r;
    }
    if (!(s = need(f, "ioapic", SNAP_V_IOAPIC)) || (r = snap_dec_ioapic(s, &d->io)) < 0)
        return -EINVAL;
    if (!(s = need(f, "pit", SNAP_V_PIT)) || (r = snap_dec_pit(s, &d->pit, 0)) < 0) return -EINVAL;
    if (!(s = need(f, "com1", SNAP_V_UART)) || (r = snap_dec_uart(s, &d->com[0])) < 0)
        return -EINVAL;
    if (!(s = need(f, "com2", SNAP_V_UART)) || (r = snap_dec_uart(s, &d->com[1])) < 0)
        return -EINVAL;
    if (!(s = need(f, "rtc", SNAP_V_RTC)) || (r = snap_dec_rtc(s, &d->rtc)) < 0) return -EINVAL;
    if (!(s = need(f, "i8042", SNAP_V_I8042)) || (r = snap_dec_i8042(s, &d->kb)) < 0)
        return -EINVAL;
    if (!(s = need(f, "acpi_pm", SNAP_V_ACPIPM)) || (r = snap_dec_acpi_pm(s, &d->pm)) < 0)
        return -EINVAL;

    /* registered devices: each must be present (unless optional) and pass its check */
    const struct snap_device_ops *ops[SNAP_MAX_DEVICES];
    void *op[SNAP_MAX_DEVICES];
    unsigned n = reg_list(vm, ops, op);
    d->nextra = 0;
    for (unsigned i = 0; i < n; i++) {
        s = snap_find(f, ops[i]->name);
        if (!s) {
            if (ops[i]->flags & SNAP_SEC_OPTIONAL) continue;
            return err_set(EINVAL, "section %s: missing", ops[i]->name);
        }
        if ((r = ops[i]->check(op[i], s)) < 0) return err_wrap(r, "section %s", s->name);
        d->extra[d->nextra] = s;
        d->xops[d->nextra] = ops[i];
        d->xop[d->nextra++] = op[i];
    }
    /* anything else must be optional */
    for (unsigned i = 0; i < f->nsec; i++) {
        const struct snap_section *x = &f->sec[i];
        bool known = builtin_name(x->name, vm->ncpus);
        for (unsigned k = 0; k < n && !known; k++)
            known = !strcmp(ops[k]->name, x->name);
        if (!known && !(x->flags & SNAP_SEC_OPTIONAL))
            return err_set(EINVAL,
                           "section %s: unknown to this lookout and not optional (the snapshot "
                           "needs a newer lookout or a device this VM lacks)",
                           x->name);
    }
    return 0;
}

/* Phase two.  Any failure leaves the VM to be put back from a backup by the caller. */
static int apply_all(struct vm *vm, const struct decoded *d)
{
    const struct cpu_backend *be = vm->backend;
    int r;
    /* the VM clock first, so timers are re-armed against the right "now" */
    if (!is_kvm(vm)) vclock_set_ns(d->clock_ns);
    int64_t now = vm_clock(vm);
    for (unsigned i = 0; i < vm->ncpus; i++) {
        /* state (APIC base, mode), then the LAPIC page, then the state again: set_lapic disarms
         * the TSC deadline, which the second set_state re-arms (devices/lapic.h) */
        if ((r = be->set_state(vm->vcpu[i], &d->cpu[i])) < 0)
            return err_wrap(r, "section cpu%u", i);
        if ((r = be->set_lapic(vm->vcpu[i], &d->lapic[i])) < 0)
            return err_wrap(r, "section lapic%u", i);
        if ((r = be->set_state(vm->vcpu[i], &d->cpu[i])) < 0)
            return err_wrap(r, "section cpu%u", i);
    }
    if ((r = be->set_ioapic(vm, &d->io)) < 0) return err_wrap(r, "section ioapic");
    struct pit_state pit = d->pit;
    for (int i = 0; i < 3; i++)
        pit.channels[i].count_load_time += now;
    if ((r = be->set_pit(vm, &pit)) < 0) return err_wrap(r, "section pit");
    for (unsigned k = 0; k < 2; k++)
        if ((r = uart_set_state(machine_uart(vm, k), &d->com[k])) < 0)
            return err_wrap(r, "section com%u", k + 1);
    if ((r = rtc_set_state(vm, &d->rtc)) < 0) return err_wrap(r, "section rtc");
    if ((r = i8042_set_state(vm, &d->kb)) < 0) return err_wrap(r, "section i8042");
    if ((r = acpi_pm_set_state(vm, &d->pm)) < 0) return err_wrap(r, "section acpi_pm");
    for (unsigned i = 0; i < d->nextra; i++)
        if ((r = d->xops[i]->load(d->xop[i], d->extra[i])) < 0)
            return err_wrap(r, "section %s", d->extra[i]->name);
    return 0;
}

/* ---- memory file ---------------------------------------------------------------------------- */

struct mem_info {
    uint32_t format;
    uint64_t pages; /* non-zero pages */
    uint64_t zlen;  /* zstd: bytes of the compressed stream after the header page */
    uint8_t digest[SHA256_LEN];
};

static void mem_header(uint8_t *p, const struct snap_header *h, const struct mem_info *mi)
{
    memset(p, 0, MEM_HDR);
    memcpy(p, MEM_MAGIC, 8);
    for (int i = 0; i < 4; i++) {
        p[8 + i] = (uint8_t)(MEM_VERSION >> (8 * i));
        p[12 + i] = (uint8_t)(mi->format >> (8 * i));
    }
    for (int i = 0; i < 8; i++) {
        p[16 + i] = (uint8_t)(h->mem_size >> (8 * i));
        p[40 + i] = (uint8_t)(mi->pages >> (8 * i));
        p[80 + i] = (uint8_t)(mi->zlen >> (8 * i));
    }
    memcpy(p + 24, h->id, SNAP_ID_LEN);
    memcpy(p + 48, mi->digest, SHA256_LEN);
}

static void enc_mem_section(struct snap_writer *w, const struct mem_info *mi)
{
    snap_section_begin(w, "memory", SNAP_V_MEMORY, 0);
    snap_put_u32(w, mi->format);
    snap_put_u64(w, mi->pages);
    snap_put_u64(w, mi->zlen);
    snap_put_bytes(w, mi->digest, SHA256_LEN);
    sec_end(w);
}

static int dec_mem_section(const struct snap_file *f, struct mem_info *mi)
{
    const struct snap_section *s = need(f, "memory", SNAP_V_MEMORY);
    if (!s) return -EINVAL;
    struct snap_rd r;
    snap_rd_init(&r, s);
    mi->format = snap_get_u32(&r);
    mi->pages = snap_get_u64(&r);
    mi->zlen = snap_get_u64(&r);
    snap_get_bytes(&r, mi->digest, SHA256_LEN);
    int rc = snap_rd_done(&r);
    if (rc) return rc;
    if (mi->format != f->h.mem_format || mi->pages > f->h.mem_size / PAGE)
        return err_set(EINVAL, "section memory: inconsistent with the header");
    return 0;
}

static bool page_zero(const uint8_t *p)
{
    const uint64_t *q = (const uint64_t *)p;
    for (size_t i = 0; i < PAGE / 8; i += 8)
        if (q[i] | q[i + 1] | q[i + 2] | q[i + 3] | q[i + 4] | q[i + 5] | q[i + 6] | q[i + 7])
            return false;
    return true;
}

static void digest_page(struct sha256 *c, uint64_t idx, const uint8_t *p)
{
    uint8_t rec[16];
    uint64_t hsh = xxh64(p, PAGE, 0);
    for (int i = 0; i < 8; i++) {
        rec[i] = (uint8_t)(idx >> (8 * i));
        rec[8 + i] = (uint8_t)(hsh >> (8 * i));
    }
    sha256_update(c, rec, sizeof(rec));
}

static int write_all_at(int fd, const void *buf, size_t n, off_t off, const char *path)
{
    const uint8_t *p = buf;
    while (n) {
        ssize_t w = pwrite(fd, p, n, off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return err_set(errno ? errno : EIO, "writing %s: %s", path, strerror(errno));
        p += w;
        n -= (size_t)w;
        off += w;
    }
    return 0;
}

static void progress(const char *what, uint64_t done, uint64_t total, unsigned *last)
{
    if (total < PROGRESS_MIN) return;
    unsigned pct = (unsigned)(done * 100 / total);
    if (pct / 10 != *last / 10 || done == total) {
        /* on stderr whatever LOOKOUT_LOG says: someone is waiting for a large save */
        dprintf(STDERR_FILENO, "lookout: %s: %u%% (%llu of %llu MiB)\n", what, pct,
                (unsigned long long)(done >> 20), (unsigned long long)(total >> 20));
        *last = pct;
    }
}

/* Raw layout: the header page, then RAM at its offset; zero pages are left as holes. */
static int save_mem_raw(struct vm *vm, int fd, const char *path, struct mem_info *mi)
{
    const uint8_t *base = vm->mem.base;
    uint64_t npages = vm->mem_size / PAGE;
    if (ftruncate(fd, (off_t)(MEM_HDR + vm->mem_size)) < 0)
        return err_set(errno, "%s: %s", path, strerror(errno));
    struct sha256 c;
    sha256_init(&c);
    unsigned last = 0;
    uint64_t run = 0, nrun = 0;
    for (uint64_t i = 0; i <= npages; i++) {
        bool nz = i < npages && !page_zero(base + i * PAGE);
        if (nz) {
            digest_page(&c, i, base + i * PAGE);
            mi->pages++;
            if (!nrun) run = i;
            nrun++;
        }
        if ((!nz || nrun == 256) && nrun) {
            int r = write_all_at(fd, base + run * PAGE, nrun * PAGE, (off_t)(MEM_HDR + run * PAGE),
                                 path);
            if (r) return r;
            nrun = 0;
        }
        if ((i & 0x3fff) == 0) progress("snapshot memory", i * PAGE, vm->mem_size, &last);
    }
    progress("snapshot memory", vm->mem_size, vm->mem_size, &last);
    sha256_final(&c, mi->digest);
    return 0;
}

/* zstd layout: the header page, then one zstd frame of [page bitmap][non-zero pages]. */
static int save_mem_zstd(struct vm *vm, int fd, const char *path, int level, struct mem_info *mi)
{
    const uint8_t *base = vm->mem.base;
    uint64_t npages = vm->mem_size / PAGE, bmbytes = ALIGN_UP(npages, 64) / 8;
    uint64_t *bm = calloc(1, bmbytes);
    size_t outcap = ZSTD_CStreamOutSize();
    uint8_t *out = malloc(outcap);
    ZSTD_CCtx *z = ZSTD_createCCtx();
    int r = 0;
    if (!bm || !out || !z) {
        r = err_set(ENOMEM, "out of memory for compression");
        goto done;
    }
    struct sha256 c;
    sha256_init(&c);
    for (uint64_t i = 0; i < npages; i++)
        if (!page_zero(base + i * PAGE)) {
            bm[i / 64] |= 1ull << (i % 64);
            digest_page(&c, i, base + i * PAGE);
            mi->pages++;
        }
    sha256_final(&c, mi->digest);
    ZSTD_CCtx_setParameter(z, ZSTD_c_compressionLevel, level ? level : 3);
    ZSTD_CCtx_setParameter(z, ZSTD_c_nbWorkers, 2); /* ignored without multithreading support */
    off_t off = MEM_HDR;
    unsigned last = 0;
    /* feed: bitmap, then each non-zero page, ending the frame with the last */
    uint64_t fed = 0;
    for (int64_t i = -1; i < (int64_t)npages; i++) {
        const void *src;
        size_t len;
        if (i < 0) {
            src = bm, len = bmbytes;
        } else {
            if (!(bm[i / 64] >> (i % 64) & 1)) continue;
            src = base + (uint64_t)i * PAGE, len = PAGE;
            fed++;
        }
        ZSTD_EndDirective mode = (i >= 0 && fed == mi->pages) || (i < 0 && mi->pages == 0)
                                     ? ZSTD_e_end
                                     : ZSTD_e_continue;
        ZSTD_inBuffer in = {src, len, 0};
        size_t rem;
        do {
            ZSTD_outBuffer ob = {out, outcap, 0};
            rem = ZSTD_compressStream2(z, &ob, &in, mode);
            if (ZSTD_isError(rem)) {
                r = err_set(EIO, "zstd: %s", ZSTD_getErrorName(rem));
                goto done;
            }
            if (ob.pos && (r = write_all_at(fd, out, ob.pos, off, path)) < 0) goto done;
            off += (off_t)ob.pos;
        } while (mode == ZSTD_e_end ? rem != 0 : in.pos < in.size);
        if (i >= 0 && (i & 0x3fff) == 0)
            progress("snapshot memory (zstd)", (uint64_t)i * PAGE, vm->mem_size, &last);
    }
    mi->zlen = (uint64_t)off - MEM_HDR;
done:
    ZSTD_freeCCtx(z);
    free(out);
    free(bm);
    return r;
}

static int read_all_at(int fd, void *buf, size_t n, off_t off, const char *path)
{
    uint8_t *p = buf;
    while (n) {
        ssize_t g = pread(fd, p, n, off);
        if (g < 0 && errno == EINTR) continue;
        if (g < 0) return err_set(errno, "reading %s: %s", path, strerror(errno));
        if (g == 0) return err_set(EINVAL, "memory file %s: truncated", path);
        p += g;
        n -= (size_t)g;
        off += g;
    }
    return 0;
}

/* Opens PATH.mem and checks its header page against the (checksummed) memory section. */
static int open_mem(const char *mpath, const struct snap_file *f, const struct mem_info *mi)
{
    int fd = open(mpath, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return err_set(errno, "memory file %s: %s", mpath, strerror(errno));
    uint8_t hdr[MEM_HDR], want[MEM_HDR];
    struct stat st;
    int r = read_all_at(fd, hdr, MEM_HDR, 0, mpath);
    if (r == 0 && fstat(fd, &st) < 0) r = err_set(errno, "%s: %s", mpath, strerror(errno));
    if (r == 0) {
        mem_header(want, &f->h, mi);
        if (memcmp(hdr, MEM_MAGIC, 8))
            r = err_set(EINVAL, "memory file %s: not a lookout memory file (bad magic)", mpath);
        else if (memcmp(hdr, want, MEM_HDR))
            r = err_set(EINVAL,
                        "memory file %s: its header does not match the state file (it belongs to "
                        "another snapshot, or was modified)",
                        mpath);
        else if (mi->format == SNAP_MEM_RAW && (uint64_t)st.st_size != MEM_HDR + f->h.mem_size)
            r = err_set(EINVAL, "memory file %s: %lld bytes, expected %llu", mpath,
                        (long long)st.st_size, (unsigned long long)(MEM_HDR + f->h.mem_size));
        else if (mi->format == SNAP_MEM_ZSTD && (uint64_t)st.st_size != MEM_HDR + mi->zlen)
            r = err_set(EINVAL, "memory file %s: %lld bytes, expected %llu", mpath,
                        (long long)st.st_size, (unsigned long long)(MEM_HDR + mi->zlen));
    }
    if (r) {
        close(fd);
        return r;
    }
    return fd;
}

/* Fresh zero pages over all of RAM (whatever mapping was there before). */
static int ram_zero(struct vm *vm)
{
    void *p = mmap(vm->mem.base, vm->mem_size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
    if (p == MAP_FAILED) return err_set(errno, "remapping guest RAM: %s", strerror(errno));
    madvise(vm->mem.base, vm->mem_size, MADV_DONTDUMP);
    return 0;
}

static int digest_ram(struct vm *vm, uint8_t out[SHA256_LEN], uint64_t *pages)
{
    struct sha256 c;
    sha256_init(&c);
    *pages = 0;
    for (uint64_t i = 0; i < vm->mem_size / PAGE; i++)
        if (!page_zero(vm->mem.base + i * PAGE)) {
            digest_page(&c, i, vm->mem.base + i * PAGE);
            (*pages)++;
        }
    sha256_final(&c, out);
    return 0;
}

/* Digest of the pages set in `loaded` (NULL: all pages); the others are known to be zero. */
static void digest_loaded(struct vm *vm, const uint64_t *loaded, uint8_t out[SHA256_LEN],
                          uint64_t *pages)
{
    if (!loaded) {
        digest_ram(vm, out, pages);
        return;
    }
    struct sha256 c;
    sha256_init(&c);
    *pages = 0;
    uint64_t npages = vm->mem_size / PAGE;
    for (uint64_t w = 0; w < ALIGN_UP(npages, 64) / 64; w++) {
        for (uint64_t bits = loaded[w]; bits; bits &= bits - 1) {
            uint64_t i = w * 64 + (uint64_t)__builtin_ctzll(bits);
            if (i >= npages || page_zero(vm->mem.base + i * PAGE)) continue;
            digest_page(&c, i, vm->mem.base + i * PAGE);
            (*pages)++;
        }
    }
    sha256_final(&c, out);
}

static int check_digest(struct vm *vm, const struct mem_info *mi, const char *mpath,
                        const uint64_t *loaded)
{
    uint8_t d[SHA256_LEN];
    uint64_t pages;
    digest_loaded(vm, loaded, d, &pages);
    if (pages != mi->pages || memcmp(d, mi->digest, SHA256_LEN))
        return err_set(EINVAL, "memory file %s: contents do not match the digest (corrupted)",
                       mpath);
    return 0;
}

static int load_mem_raw_eager(struct vm *vm, int fd, const char *mpath, uint64_t *loaded)
{
    int r = ram_zero(vm);
    if (r) return r;
    off_t end = (off_t)(MEM_HDR + vm->mem_size), pos = MEM_HDR;
    unsigned last = 0;
    while (pos < end) {
        off_t data = lseek(fd, pos, SEEK_DATA);
        if (data < 0) break; /* ENXIO: only holes remain */
        off_t hole = lseek(fd, data, SEEK_HOLE);
        if (hole < 0 || hole > end) hole = end;
        data &= ~(off_t)(PAGE - 1);
        if (data < MEM_HDR) data = MEM_HDR;
        if (hole > data && (r = read_all_at(fd, vm->mem.base + (data - MEM_HDR),
                                            (size_t)(hole - data), data, mpath)) < 0)
            return r;
        for (uint64_t pg = (uint64_t)(data - MEM_HDR) / PAGE;
             hole > data && pg < (uint64_t)(hole - MEM_HDR + PAGE - 1) / PAGE; pg++)
            loaded[pg / 64] |= 1ull << (pg % 64);
        pos = hole;
        progress("restore memory", (uint64_t)(pos - MEM_HDR), vm->mem_size, &last);
    }
    return 0;
}

static int load_mem_raw_mapped(struct vm *vm, int fd, const char *mpath)
{
    void *p = mmap(vm->mem.base, vm->mem_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, fd,
                   MEM_HDR);
    if (p == MAP_FAILED) return err_set(errno, "mapping %s: %s", mpath, strerror(errno));
    madvise(vm->mem.base, vm->mem_size, MADV_DONTDUMP);
    return 0;
}

/* ---- lazy restore through userfaultfd --------------------------------------------------------
 * Guest RAM becomes fresh anonymous memory registered with a userfaultfd; a loader thread serves
 * each missing-page fault (vCPU threads, the software CPU, KVM's own accesses through
 * get_user_pages, device threads) by reading that page from the memory file, and between faults
 * copies the file's data extents in, in order.  Once every data page is in, it unregisters: the
 * pages left are the file's holes, which then fault in as zero pages without us.  One loader per
 * process (one VM per process); it is stopped before RAM is replaced again and before the VM's
 * memory is freed (snapshot_release). */
#define LAZY_BATCH 16 /* pages copied between two looks at the fault queue */

static struct {
    pthread_t thread;
    bool running;
    int uffd, fd, stopfd;
    uint8_t *base;
    uint64_t size;
    char path[4096];
    uint64_t faults, copied;
    double t0;
} lazy = {.uffd = -1, .fd = -1, .stopfd = -1};

/* Copies page `pg` from the file into RAM; 0, or -errno (EEXIST: already there, not an error).
 * A fault on a page in a hole of the file (a zero page) maps the shared zero page instead, so
 * reading all of RAM (a snapshot save, say) does not allocate it. */
static int lazy_copy(uint64_t pg, uint8_t *buf, bool fault)
{
    off_t off = (off_t)(MEM_HDR + pg * PAGE);
    if (fault && lseek(lazy.fd, off, SEEK_DATA) != off) {
        struct uffdio_zeropage z = {
            .range = {.start = (uint64_t)(uintptr_t)(lazy.base + pg * PAGE), .len = PAGE}};
        if (ioctl(lazy.uffd, UFFDIO_ZEROPAGE, &z) == 0) return 0;
        if (errno == EEXIST) {
            struct uffdio_range w = {.start = z.range.start, .len = PAGE};
            (void)ioctl(lazy.uffd, UFFDIO_WAKE, &w);
            return 0;
        }
        /* anything else: fall back to copying what the file reads as */
    }
    int r = read_all_at(lazy.fd, buf, PAGE, off, lazy.path);
    if (r) return r;
    struct uffdio_copy c = {.dst = (uint64_t)(uintptr_t)(lazy.base + pg * PAGE),
                            .src = (uint64_t)(uintptr_t)buf,
                            .len = PAGE,
                            .mode = 0};
    if (ioctl(lazy.uffd, UFFDIO_COPY, &c) == 0) {
        lazy.copied++;
        return 0;
    }
    if (errno == EEXIST) {
        /* faulted in meanwhile (by us); wake anyone waiting on it */
        struct uffdio_range w = {.start = c.dst, .len = PAGE};
        (void)ioctl(lazy.uffd, UFFDIO_WAKE, &w);
        return 0;
    }
    return -errno;
}

static void *lazy_thread(void *arg)
{
    static uint8_t buf[PAGE] __attribute__((aligned(PAGE)));
    off_t pos = MEM_HDR, end = (off_t)(MEM_HDR + lazy.size), hole = MEM_HDR;
    bool done = false;
    const char *why = NULL;
    while (!why) {
        struct pollfd pf[2] = {{.fd = lazy.uffd, .events = POLLIN},
                               {.fd = lazy.stopfd, .events = POLLIN}};
        int n = poll(pf, 2, done ? -1 : 0);
        if (n < 0 && errno != EINTR) why = "poll failed";
        if (pf[1].revents) break;
        if (pf[0].revents & POLLIN) {
            struct uffd_msg m[16];
            ssize_t got = read(lazy.uffd, m, sizeof(m));
            for (ssize_t i = 0; i < got / (ssize_t)sizeof(m[0]) && !why; i++) {
                if (m[i].event != UFFD_EVENT_PAGEFAULT) continue;
                uint64_t off = m[i].arg.pagefault.address - (uint64_t)(uintptr_t)lazy.base;
                lazy.faults++;
                if (off >= lazy.size || lazy_copy(off / PAGE, buf, true) < 0)
                    why = "serving a fault";
            }
            continue;
        }
        if (done) continue;
        /* between faults: the next few pages of the file's data extents */
        for (int k = 0; k < LAZY_BATCH && !done && !why; k++) {
            if (pos >= hole) {
                off_t d = pos < end ? lseek(lazy.fd, pos, SEEK_DATA) : -1;
                if (d < 0 || d >= end) {
                    done = true;
                    break;
                }
                pos = d & ~(off_t)(PAGE - 1);
                hole = lseek(lazy.fd, d, SEEK_HOLE);
                if (hole < 0 || hole > end) hole = end;
            }
            if (pos < MEM_HDR) pos = MEM_HDR;
            if (lazy_copy((uint64_t)(pos - MEM_HDR) / PAGE, buf, false) < 0) why = "prefetching";
            pos += PAGE;
        }
        if (done) {
            /* every data page is in: what is missing is zero, the kernel can fill it */
            struct uffdio_range rg = {.start = (uint64_t)(uintptr_t)lazy.base, .len = lazy.size};
            if (ioctl(lazy.uffd, UFFDIO_UNREGISTER, &rg) < 0) why = "unregistering";
            log_info("lazy restore: all %llu data pages in after %.1f ms (%llu faults served)",
                     (unsigned long long)lazy.copied, now_ms() - lazy.t0,
                     (unsigned long long)lazy.faults);
            if (!why) break;
        }
    }
    if (why)
        log_err("lazy restore from %s stopped (%s: %s): the guest may hang on a missing page",
                lazy.path, why, strerror(errno));
    return arg;
}

static void lazy_stop(void)
{
    if (!lazy.running) return;
    uint64_t one = 1;
    if (write(lazy.stopfd, &one, 8) < 0) { /* the eventfd cannot be full */
    }
    pthread_join(lazy.thread, NULL);
    lazy.running = false;
    close(lazy.uffd);
    close(lazy.fd);
    close(lazy.stopfd);
    lazy.uffd = lazy.fd = lazy.stopfd = -1;
}

void snapshot_release(struct vm *vm)
{
    if (lazy.base == vm->mem.base) lazy_stop();
}

static int load_mem_raw_lazy(struct vm *vm, int fd, const char *mpath)
{
    int r = ram_zero(vm);
    if (r) return r;
    int uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (uffd < 0)
        return err_set(errno,
                       "lazy restore: userfaultfd: %s (needs vm.unprivileged_userfaultfd=1 or "
                       "CAP_SYS_PTRACE; restore without lazy instead)",
                       strerror(errno));
    struct uffdio_api api = {.api = UFFD_API, .features = 0};
    struct uffdio_register ureg = {
        .range = {.start = (uint64_t)(uintptr_t)vm->mem.base, .len = vm->mem_size},
        .mode = UFFDIO_REGISTER_MODE_MISSING};
    if (ioctl(uffd, UFFDIO_API, &api) < 0 || ioctl(uffd, UFFDIO_REGISTER, &ureg) < 0) {
        r = err_set(errno, "lazy restore: registering guest RAM with userfaultfd: %s",
                    strerror(errno));
        close(uffd);
        return r;
    }
    lazy.uffd = uffd;
    lazy.fd = dup(fd);
    lazy.stopfd = eventfd(0, EFD_CLOEXEC);
    lazy.base = vm->mem.base;
    lazy.size = vm->mem_size;
    lazy.faults = lazy.copied = 0;
    lazy.t0 = now_ms();
    snprintf(lazy.path, sizeof(lazy.path), "%s", mpath);
    int e = lazy.fd < 0 || lazy.stopfd < 0 ? errno
                                           : pthread_create(&lazy.thread, NULL, lazy_thread, NULL);
    if (e) {
        close(uffd);
        if (lazy.fd >= 0) close(lazy.fd);
        if (lazy.stopfd >= 0) close(lazy.stopfd);
        lazy.uffd = lazy.fd = lazy.stopfd = -1;
        ram_zero(vm); /* unregistered again: nothing may wait for a loader that is not there */
        return err_set(e, "lazy restore: starting the loader: %s", strerror(e));
    }
    lazy.running = true;
    return 0;
}

static int load_mem_zstd(struct vm *vm, int fd, const char *mpath, const struct mem_info *mi,
                         uint64_t *bm)
{
    uint64_t npages = vm->mem_size / PAGE, bmbytes = ALIGN_UP(npages, 64) / 8;
    size_t incap = ZSTD_DStreamInSize();
    uint8_t *in = malloc(incap);
    ZSTD_DCtx *z = ZSTD_createDCtx();
    int r = 0;
    if (!in || !z) {
        r = err_set(ENOMEM, "out of memory for decompression");
        goto done;
    }
    if ((r = ram_zero(vm)) < 0) goto done;
    /* output cursor: first the bitmap, then page after page as the bitmap says */
    uint8_t *dst = (uint8_t *)bm;
    uint64_t dst_left = bmbytes, page = 0, pages_done = 0;
    bool in_bitmap = true, frame_done = false;
    off_t off = MEM_HDR, end = (off_t)(MEM_HDR + mi->zlen);
    unsigned last = 0;
    while (off < end && !frame_done) {
        size_t n = (size_t)MIN((off_t)incap, end - off);
        if ((r = read_all_at(fd, in, n, off, mpath)) < 0) goto done;
        off += (off_t)n;
        ZSTD_inBuffer ib = {in, n, 0};
        while (ib.pos < ib.size) {
            if (dst_left == 0) {
                /* advance to the next page the bitmap lists */
                in_bitmap = false;
                while (page < npages && !(bm[page / 64] >> (page % 64) & 1))
                    page++;
                if (page >= npages) {
                    r = err_set(EINVAL, "memory file %s: more data than the page map lists", mpath);
                    goto done;
                }
                dst = vm->mem.base + page * PAGE;
                dst_left = PAGE;
                page++;
                pages_done++;
            }
            ZSTD_outBuffer ob = {dst, (size_t)dst_left, 0};
            size_t ret = ZSTD_decompressStream(z, &ob, &ib);
            if (ZSTD_isError(ret)) {
                r = err_set(EINVAL, "memory file %s: zstd: %s", mpath, ZSTD_getErrorName(ret));
                goto done;
            }
            dst += ob.pos;
            dst_left -= ob.pos;
            if (ret == 0) {
                frame_done = true;
                break;
            }
        }
        progress("restore memory (zstd)", (uint64_t)(off - MEM_HDR), mi->zlen, &last);
    }
    (void)in_bitmap;
    if (!frame_done || dst_left || pages_done != mi->pages || off != end)
        r = err_set(EINVAL, "memory file %s: the compressed stream is truncated or inconsistent",
                    mpath);
done:
    ZSTD_freeDCtx(z);
    free(in);
    return r;
}

/* ---- incremental snapshots ------------------------------------------------------------ */

/* The snapshot this process's VM memory is tracked against: after every save or restore the
 * backend's dirty log is cleared, so the next dirty_log() lists exactly the pages written since. */
static struct {
    struct vm *vm;
    bool valid;
    uint8_t id[SNAP_ID_LEN];
} track;

static size_t map_words(const struct vm *vm)
{
    return ALIGN_UP(vm->mem_size / PAGE, 64) / 64;
}

static void track_reset(struct vm *vm, const uint8_t id[SNAP_ID_LEN])
{
    track.valid = false;
    uint64_t *scratch = calloc(map_words(vm), sizeof(uint64_t));
    if (!scratch || !vm->backend->dirty_log ||
        vm->backend->dirty_log(vm, scratch, map_words(vm)) < 0) {
        log_debug("snapshot: no dirty tracking (%s): incremental snapshots unavailable", err_msg());
        err_clear();
        free(scratch);
        return;
    }
    free(scratch);
    track.vm = vm;
    memcpy(track.id, id, SNAP_ID_LEN);
    track.valid = true;
}

/* The pages in `map`, zero pages left as holes. */
static int save_mem_incr(struct vm *vm, int fd, const char *path, const uint64_t *map,
                         struct mem_info *mi)
{
    const uint8_t *base = vm->mem.base;
    uint64_t npages = vm->mem_size / PAGE;
    if (ftruncate(fd, (off_t)(MEM_HDR + vm->mem_size)) < 0)
        return err_set(errno, "%s: %s", path, strerror(errno));
    struct sha256 c;
    sha256_init(&c);
    for (uint64_t i = 0; i < npages; i++) {
        if (!(map[i / 64] >> (i % 64) & 1) || page_zero(base + i * PAGE)) continue;
        digest_page(&c, i, base + i * PAGE);
        mi->pages++;
        int r = write_all_at(fd, base + i * PAGE, PAGE, (off_t)(MEM_HDR + i * PAGE), path);
        if (r) return r;
    }
    sha256_final(&c, mi->digest);
    return 0;
}

static void enc_parent(struct snap_writer *w, const uint8_t id[SNAP_ID_LEN], const char *ppath,
                       const uint64_t *map, size_t nwords, uint64_t npages)
{
    snap_section_begin(w, "parent", 1, 0);
    snap_put_bytes(w, id, SNAP_ID_LEN);
    size_t n = strlen(ppath);
    snap_put_u16(w, (uint16_t)n);
    snap_put_bytes(w, ppath, n);
    sec_end(w);
    snap_section_begin(w, "memmap", 1, 0);
    snap_put_u64(w, npages);
    for (size_t i = 0; i < nwords; i++)
        snap_put_u64(w, map[i]);
    sec_end(w);
}

/* A parent in a chain: its state file (parsed), memory file and, for the child, the page map. */
struct link {
    uint8_t *buf;
    struct snap_file *f;
    struct mem_info mi;
    int fd;
    char path[4096], mpath[4200];
    uint64_t *map; /* pages this snapshot carries (NULL: a full snapshot) */
};

static void link_free(struct link *l)
{
    if (l->fd >= 0) close(l->fd);
    free(l->map);
    free(l->f);
    free(l->buf);
    memset(l, 0, sizeof(*l));
    l->fd = -1;
}

/* Decodes f's "parent" and "memmap" sections: 1 (and *ppath, id, map) if f is incremental. */
static int dec_parent(struct vm *vm, const struct snap_file *f, char *ppath, size_t cap,
                      uint8_t id[SNAP_ID_LEN], uint64_t **map)
{
    const struct snap_section *ps = snap_find(f, "parent");
    if (!ps) return 0;
    if (ps->version != 1) return err_set(EINVAL, "section parent: version %u", ps->version);
    struct snap_rd r;
    snap_rd_init(&r, ps);
    snap_get_bytes(&r, id, SNAP_ID_LEN);
    uint16_t n = snap_get_u16(&r);
    if (n == 0 || n >= cap) return err_set(EINVAL, "section parent: bad path length %u", n);
    snap_get_bytes(&r, ppath, n);
    ppath[n] = 0;
    int rc = snap_rd_done(&r);
    if (rc) return rc;
    if (memchr(ppath, 0, n)) return err_set(EINVAL, "section parent: NUL in the path");
    const struct snap_section *ms = need(f, "memmap", 1);
    if (!ms) return -EINVAL;
    snap_rd_init(&r, ms);
    uint64_t npages = snap_get_u64(&r);
    if (npages != vm->mem_size / PAGE)
        return err_set(EINVAL, "section memmap: %llu pages, the VM has %llu",
                       (unsigned long long)npages, (unsigned long long)(vm->mem_size / PAGE));
    *map = calloc(map_words(vm), sizeof(uint64_t));
    if (!*map) return err_set(ENOMEM, "out of memory");
    for (size_t i = 0; i < map_words(vm); i++)
        (*map)[i] = snap_get_u64(&r);
    return (rc = snap_rd_done(&r)) ? rc : 1;
}

/* Overlays an incremental snapshot's pages onto RAM (read, not mapped: they are scattered). */
static int load_overlay(struct vm *vm, const struct link *l, bool verify)
{
    uint64_t npages = vm->mem_size / PAGE;
    for (uint64_t i = 0; i < npages;) {
        if (!(l->map[i / 64] >> (i % 64) & 1)) {
            i++;
            continue;
        }
        uint64_t j = i;
        while (j < npages && j - i < 256 && (l->map[j / 64] >> (j % 64) & 1))
            j++;
        int r = read_all_at(l->fd, vm->mem.base + i * PAGE, (size_t)((j - i) * PAGE),
                            (off_t)(MEM_HDR + i * PAGE), l->mpath);
        if (r) return r;
        i = j;
    }
    return verify ? check_digest(vm, &l->mi, l->mpath, l->map) : 0;
}

/* ---- save ------------------------------------------------------------------------------- */

static int path_join(char *out, size_t cap, const char *path, const char *suffix)
{
    if ((size_t)snprintf(out, cap, "%s%s", path, suffix) >= cap)
        return err_set(ENAMETOOLONG, "snapshot path too long: %s", path);
    return 0;
}

static int write_file_sync(const char *tmp, const uint8_t *buf, size_t n)
{
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return err_set(errno, "creating %s: %s", tmp, strerror(errno));
    int r = write_all_at(fd, buf, n, 0, tmp);
    if (!r && fsync(fd) < 0) r = err_set(errno, "syncing %s: %s", tmp, strerror(errno));
    close(fd);
    return r;
}

static int save_quiesced(struct vm *vm, const char *path, const struct snap_save_opts *o,
                         struct snap_stats *st);

/* Devices are quiesced for the whole save (the dirty log read included), so memory and their
 * state are one consistent moment and no request is half done. */
int snapshot_save(struct vm *vm, const char *path, const struct snap_save_opts *o,
                  struct snap_stats *st)
{
    quiesce_all(vm, true);
    int r = save_quiesced(vm, path, o, st);
    quiesce_all(vm, false);
    return r;
}

static int save_quiesced(struct vm *vm, const char *path, const struct snap_save_opts *o,
                         struct snap_stats *st)
{
    struct snap_stats dummy;
    if (!st) st = &dummy;
    memset(st, 0, sizeof(*st));
    double t0 = now_ms();
    char tmp[4096], mtmp[4096], mpath[4096];
    int r;
    if ((r = path_join(tmp, sizeof(tmp), path, ".tmp")) < 0 ||
        (r = path_join(mtmp, sizeof(mtmp), path, ".mem.tmp")) < 0 ||
        (r = path_join(mpath, sizeof(mpath), path, ".mem")) < 0)
        return r;
    struct snap_header h;
    header_for(vm, &h);
    h.mem_format = o && o->zstd ? SNAP_MEM_ZSTD : SNAP_MEM_RAW;
    if (getrandom(h.id, sizeof(h.id), 0) != (ssize_t)sizeof(h.id))
        return err_set(EIO, "getrandom failed: %s", strerror(errno));

    /* incremental: the parent must be what the dirty log is relative to */
    uint64_t *map = NULL;
    uint8_t pid[SNAP_ID_LEN];
    if (o && o->parent) {
        struct snap_header ph;
        static struct cpuid_model pm;
        if (h.mem_format != SNAP_MEM_RAW)
            return err_set(EINVAL, "incremental snapshots use the raw memory layout (no --zstd)");
        if (o->parent[0] != '/')
            return err_set(EINVAL, "the parent path must be absolute: %s", o->parent);
        if ((r = snapshot_peek(o->parent, &ph, &pm)) < 0) return r;
        if (!track.valid || track.vm != vm || memcmp(track.id, ph.id, SNAP_ID_LEN))
            return err_set(EINVAL,
                           "parent %s is not this VM's last snapshot or restore, so the pages "
                           "written since it are not known: take a full snapshot",
                           o->parent);
        memcpy(pid, ph.id, SNAP_ID_LEN);
        map = calloc(map_words(vm), sizeof(uint64_t));
        if (!map) return err_set(ENOMEM, "out of memory");
        if ((r = vm->backend->dirty_log(vm, map, map_words(vm))) < 0) {
            free(map);
            track.valid = false;
            return err_wrap(r, "reading the dirty log");
        }
        track.valid = false; /* the log is consumed: only this save may succeed from here */
    }

    /* memory first: its digest goes into the state file */
    struct mem_info mi = {.format = h.mem_format};
    int fd = open(mtmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        free(map);
        return err_set(errno, "creating %s: %s", mtmp, strerror(errno));
    }

    r = map                             ? save_mem_incr(vm, fd, mtmp, map, &mi)
        : h.mem_format == SNAP_MEM_ZSTD ? save_mem_zstd(vm, fd, mtmp, o ? o->level : 0, &mi)
                                        : save_mem_raw(vm, fd, mtmp, &mi);
    if (!r) {
        uint8_t hdr[MEM_HDR];
        mem_header(hdr, &h, &mi);
        r = write_all_at(fd, hdr, MEM_HDR, 0, mtmp);
    }
    struct stat sst;
    if (!r && fstat(fd, &sst) == 0) st->mem_bytes = (uint64_t)sst.st_blocks * 512;
    if (!r && fsync(fd) < 0) r = err_set(errno, "syncing %s: %s", mtmp, strerror(errno));
    close(fd);

    struct snap_writer w;
    memset(&w, 0, sizeof(w));
    if (!r) r = snap_writer_begin(&w, &h);
    if (!r) r = save_state(vm, &w);
    if (!r) {
        enc_mem_section(&w, &mi);
        if (map) enc_parent(&w, pid, o->parent, map, map_words(vm), vm->mem_size / PAGE);
        r = snap_writer_finish(&w);
    }
    if (!r) r = write_file_sync(tmp, w.buf, w.len);
    if (!r && rename(mtmp, mpath) < 0)
        r = err_set(errno, "renaming %s to %s: %s", mtmp, mpath, strerror(errno));
    if (!r && rename(tmp, path) < 0)
        r = err_set(errno, "renaming %s to %s: %s", tmp, path, strerror(errno));
    if (r) {
        unlink(tmp);
        unlink(mtmp);
    }
    st->state_bytes = w.len;
    st->mem_pages = mi.pages;
    st->ms = now_ms() - t0;
    snap_writer_free(&w);
    free(map);
    if (!r) track_reset(vm, h.id);
    return r;
}

/* ---- restore ---------------------------------------------------------------------------- */

static int read_state_file(const char *path, uint8_t **buf, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return err_set(errno, "snapshot %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return err_set(EINVAL, "snapshot %s: not a regular file", path);
    }
    if (st.st_size > SNAP_FILE_MAX) {
        close(fd);
        return err_set(E2BIG, "snapshot %s: %lld bytes is over the %u MiB cap", path,
                       (long long)st.st_size, SNAP_FILE_MAX >> 20);
    }
    *len = (size_t)st.st_size;
    *buf = malloc(*len ? *len : 1);
    if (!*buf) {
        close(fd);
        return err_set(ENOMEM, "out of memory");
    }
    int r = read_all_at(fd, *buf, *len, 0, path);
    close(fd);
    if (r) {
        free(*buf);
        *buf = NULL;
    }
    return r;
}

int snapshot_peek(const char *path, struct snap_header *h, struct cpuid_model *cpuid)
{
    uint8_t *buf;
    size_t len;
    int r = read_state_file(path, &buf, &len);
    if (r) return r;
    struct snap_file *f = malloc(sizeof(*f));
    if (!f) {
        free(buf);
        return err_set(ENOMEM, "out of memory");
    }
    r = snap_parse(buf, len, f);
    const struct snap_section *cs = r ? NULL : need(f, "cpuid", SNAP_V_CPUID);
    if (!r && !cs) r = -EINVAL;
    if (!r) r = snap_dec_cpuid(cs, cpuid);
    if (!r) {
        uint8_t hash[SHA256_LEN];
        snap_cpuid_hash(cpuid, hash);
        if (memcmp(hash, f->h.cpuid_hash, SHA256_LEN))
            r = err_set(EINVAL, "section cpuid: does not match the header's CPUID hash");
        size_t nl = strnlen(f->h.cpu_model, sizeof(cpuid->name) - 1);
        memcpy(cpuid->name, f->h.cpu_model, nl);
        cpuid->name[nl] = 0;
    }
    if (!r)
        *h = f->h;
    else
        err_wrap(r, "snapshot %s", path);
    free(f);
    free(buf);
    return r;
}

static int restore_quiesced(struct vm *vm, const char *path, const struct snap_restore_opts *o,
                            struct snap_stats *st);

/* Devices are quiesced for the whole restore: their back ends start no request on the rings of
 * the state being replaced; afterwards they serve what the restored guest queued. */
int snapshot_restore(struct vm *vm, const char *path, const struct snap_restore_opts *o,
                     struct snap_stats *st)
{
    quiesce_all(vm, true);
    restore_force = o && o->force;
    int r = restore_quiesced(vm, path, o, st);
    restore_force = false;
    quiesce_all(vm, false);
    return r;
}

static int restore_quiesced(struct vm *vm, const char *path, const struct snap_restore_opts *o,
                            struct snap_stats *st)
{
    struct snap_stats dummy;
    if (!st) st = &dummy;
    memset(st, 0, sizeof(*st));
    double t0 = now_ms();
    char mpath[4096];
    uint8_t *buf = NULL;
    size_t len = 0;
    struct snap_file *f = NULL, *bf = NULL;
    struct decoded *d = NULL, *bd = NULL;
    struct snap_writer bw;
    memset(&bw, 0, sizeof(bw));
    uint64_t *loaded = NULL, *topmap = NULL;
    static struct link chain[SNAP_CHAIN_MAX]; /* parents, nearest first; VM paused: one user */
    unsigned nchain = 0;
    int fd = -1, r;
    if ((r = path_join(mpath, sizeof(mpath), path, ".mem")) < 0) return r;
    if ((r = read_state_file(path, &buf, &len)) < 0) return r;
    f = malloc(sizeof(*f));
    d = calloc(1, sizeof(*d));
    bf = malloc(sizeof(*bf));
    bd = calloc(1, sizeof(*bd));
    if (!f || !d || !bf || !bd) {
        r = err_set(ENOMEM, "out of memory");
        goto out;
    }
    /* phase one: parse, compare, decode, check the memory file */
    struct mem_info mi;
    if ((r = snap_parse(buf, len, f)) < 0 || (r = decode_all(vm, f, d)) < 0 ||
        (r = dec_mem_section(f, &mi)) < 0) {
        err_wrap(r, "snapshot %s", path);
        goto out;
    }
    if ((fd = open_mem(mpath, f, &mi)) < 0) {
        r = fd;
        goto out;
    }
    /* incremental: every parent down to a full snapshot, each checked like the top one */
    {
        const struct snap_file *cur = f;
        uint64_t **curmap = &topmap;
        for (;;) {
            char ppath[4096];
            uint8_t pid[SNAP_ID_LEN];
            uint64_t *m = NULL;
            r = dec_parent(vm, cur, ppath, sizeof(ppath), pid, &m);
            if (r < 0) {
                free(m);
                err_wrap(r, "snapshot %s", nchain ? chain[nchain - 1].path : path);
                goto out;
            }
            *curmap = m;
            if (r == 0) break;
            if (nchain == SNAP_CHAIN_MAX) {
                r = err_set(EINVAL, "snapshot %s: more than %d parents", path, SNAP_CHAIN_MAX);
                goto out;
            }
            struct link *l = &chain[nchain++];
            memset(l, 0, sizeof(*l));
            l->fd = -1;
            snprintf(l->path, sizeof(l->path), "%s", ppath);
            snprintf(l->mpath, sizeof(l->mpath), "%s.mem", ppath);
            size_t plen;
            l->f = malloc(sizeof(*l->f));
            if (!l->f) {
                r = err_set(ENOMEM, "out of memory");
                goto out;
            }
            if ((r = read_state_file(ppath, &l->buf, &plen)) < 0 ||
                (r = snap_parse(l->buf, plen, l->f)) < 0 ||
                (r = dec_mem_section(l->f, &l->mi)) < 0) {
                err_wrap(r, "parent snapshot %s", ppath);
                goto out;
            }
            if (memcmp(l->f->h.id, pid, SNAP_ID_LEN) || l->f->h.mem_size != f->h.mem_size ||
                l->f->h.ncpus != f->h.ncpus ||
                memcmp(l->f->h.cpuid_hash, f->h.cpuid_hash, SHA256_LEN)) {
                r = err_set(EINVAL,
                            "parent snapshot %s: not the parent this snapshot was taken from "
                            "(replaced or overwritten since?)",
                            ppath);
                goto out;
            }
            if ((l->fd = open_mem(l->mpath, l->f, &l->mi)) < 0) {
                r = l->fd;
                goto out;
            }
            cur = l->f;
            curmap = &l->map;
        }
    }
    if (o && o->lazy && (nchain || mi.format != SNAP_MEM_RAW)) {
        r = err_set(EINVAL,
                    "snapshot %s: a lazy restore needs a full snapshot with the raw memory "
                    "layout (this one is %s)",
                    path, nchain ? "incremental" : "zstd-compressed");
        goto out;
    }
    /* the backup, in case a part refuses its state in phase two */
    struct snap_header bh;
    header_for(vm, &bh);
    if ((r = snap_writer_begin(&bw, &bh)) < 0 || (r = save_state(vm, &bw)) < 0 ||
        (r = snap_writer_finish(&bw)) < 0 || (r = snap_parse(bw.buf, bw.len, bf)) < 0 ||
        (r = decode_all(vm, bf, bd)) < 0) {
        err_wrap(r, "saving the VM's current state before the restore");
        goto out;
    }
    /* phase two */
    if ((r = apply_all(vm, d)) < 0) {
        char why[1024];
        snprintf(why, sizeof(why), "%s", err_msg());
        if (apply_all(vm, bd) < 0) log_err("putting the previous state back failed: %s", err_msg());
        r = err_set(EINVAL, "snapshot %s: %s (nothing was restored)", path, why);
        goto out;
    }
    /* the base: the full snapshot at the end of the chain (or the top one itself) */
    const struct mem_info *bmi = nchain ? &chain[nchain - 1].mi : &mi;
    int bfd = nchain ? chain[nchain - 1].fd : fd;
    const char *bmpath = nchain ? chain[nchain - 1].mpath : mpath;
    bool lazy_load = o && o->lazy;
    bool mapped = bmi->format == SNAP_MEM_RAW && !(o && o->eager) && !lazy_load;
    bool verify = (!mapped && !lazy_load) || (o && o->verify && !lazy_load);
    lazy_stop(); /* RAM is about to be replaced: a loader still filling it must not go on */
    /* pages read from the file (the rest stay zero); their digest is checked */
    loaded = calloc(1, ALIGN_UP(vm->mem_size / PAGE, 64) / 8);
    if (!loaded)
        r = err_set(ENOMEM, "out of memory");
    else if (bmi->format == SNAP_MEM_ZSTD)
        r = load_mem_zstd(vm, bfd, bmpath, bmi, loaded);
    else if (lazy_load)
        r = load_mem_raw_lazy(vm, bfd, bmpath);
    else if (mapped)
        r = load_mem_raw_mapped(vm, bfd, bmpath);
    else
        r = load_mem_raw_eager(vm, bfd, bmpath, loaded);
    if (!r && verify) r = check_digest(vm, bmi, bmpath, mapped ? NULL : loaded);
    /* then each increment, oldest first, the top one last */
    for (int k = (int)nchain - 2; !r && k >= -1; k--) {
        struct link top = {.fd = fd, .mi = mi, .map = topmap};
        snprintf(top.mpath, sizeof(top.mpath), "%s", mpath);
        r = load_overlay(vm, k >= 0 ? &chain[k] : &top, verify);
    }
    if (r) {
        /* memory may be partly loaded: the VM cannot go on from here */
        char why[1024];
        snprintf(why, sizeof(why), "%s", err_msg());
        apply_all(vm, bd);
        r = err_set(EIO,
                    "snapshot %s: loading memory failed: %s (the VM's memory is lost; stop it)",
                    path, why);
        vm_request_stop(vm, VM_STOP_VMM_ERROR, 0);
        goto out;
    }
    st->mapped = mapped;
    st->mem_pages = mi.pages;
    track_reset(vm, f->h.id);
    st->state_bytes = len;
    st->ms = now_ms() - t0;
    log_info("restored %s in %.3f ms (%s memory, %llu pages)", path, st->ms,
             lazy_load ? "lazy"
             : mapped  ? "mapped"
                       : "read",
             (unsigned long long)mi.pages);
out:
    for (unsigned k = 0; k < nchain; k++)
        link_free(&chain[k]);
    free(topmap);
    free(loaded);
    if (fd >= 0) close(fd);
    snap_writer_free(&bw);
    free(bd);
    free(bf);
    free(d);
    free(f);
    free(buf);
    return r;
}

/* ---- machine-level commands --------------------------------------------------------------- */

int machine_snapshot(struct vm *vm, const char *path, bool stop, const struct snap_save_opts *o,
                     struct snap_stats *st)
{
    bool was_paused = atomic_load(&vm->state) == VM_STATE_PAUSED;
    int r = machine_pause(vm);
    if (r) return r;
    r = snapshot_save(vm, path, o, st);
    if (!stop && !was_paused) {
        int r2 = machine_resume(vm);
        if (!r) r = r2;
    }
    return r;
}

int machine_rollback(struct vm *vm, const char *path, const struct snap_restore_opts *o,
                     struct snap_stats *st)
{
    bool was_paused = atomic_load(&vm->state) == VM_STATE_PAUSED;
    int r = machine_pause(vm);
    if (r) return r;
    r = snapshot_restore(vm, path, o, st);
    if (!was_paused && !vm_stopping(vm)) {
        int r2 = machine_resume(vm);
        if (!r) r = r2;
    }
    return r;
}
