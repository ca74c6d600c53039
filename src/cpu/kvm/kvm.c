/* The KVM CPU backend: runs vCPUs with /dev/kvm and translates between KVM's structures and the
 * neutral state (x86/state.h, x86/irqchip.h).
 *
 * Trusts: the host kernel.  Distrusts: offsets and sizes KVM reports inside kvm_run that we use to
 * form pointers (checked against the mapping size), and guest values (only copied, never used as
 * addresses except through mem/guest.h).
 *
 * Emulation failures: a KVM without VMX/SVM (kvm_pvm) runs guest supervisor code in its in-kernel
 * emulator, which gives up on some instructions.  The software CPU then executes that one
 * instruction on the neutral state (bt_emulate_one) and KVM resumes.
 *
 * XSAVE-managed state: x87/SSE travel with KVM_GET/SET_FPU; with KVM_CAP_XSAVE the AVX and AVX-512
 * components the neutral state carries also travel (KVM_GET/SET_XSAVE, standard format), and
 * components it does not carry are written back exactly as KVM reported them. */
#include "cpu/kvm/kvm.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "cpu/cpu.h"
#include "util/log.h"

/* Provided by the software CPU (cpu/bt) when it is linked in: executes exactly one instruction at
 * s->rip.  Weak so this backend links without it. */
int bt_emulate_one(struct vm *vm, unsigned cpu_index, struct x86_state *s) __attribute__((weak));

#define KVM_TSS_ADDR      0xfffbd000ull /* 3 pages, in the MMIO hole above the LAPIC */
#define KVM_IDENT_MAP     0xfffbc000ull /* 1 page */
#define KICK_SIGNAL       SIGUSR1
#define MAX_CPUID_ENTRIES 256

struct kvm_vm_priv {
    int fd;
    size_t run_size;
    uint32_t *msrs; /* KVM_GET_MSR_INDEX_LIST: the only MSRs we ever read or write */
    unsigned nmsrs;
    bool has_xcrs, has_debugregs;
    bool has_xsave; /* KVM_CAP_XSAVE: the AVX upper halves travel with KVM_GET/SET_XSAVE */
    bool dirty_logging;
    uint64_t clock_base_ns; /* CLOCK_MONOTONIC at creation: the VM clock of pit_state */
};

struct kvm_vcpu_priv {
    int fd;
    struct kvm_run *run;
    bool io_pending;     /* an IO/MMIO exit whose completion KVM does at the next KVM_RUN */
    _Atomic bool in_run; /* inside KVM_RUN on thread `tid`: a kick must signal it */
    pthread_t tid;
    /* Last TSC and TSC deadline read: written back unchanged they would rewind the clock or
     * re-arm a timer that fired in between, so set_state skips them when equal. */
    bool msr_cache_valid;
    uint64_t last_tsc, last_deadline;
};

static int kvm_fd = -1;
static pthread_mutex_t kvm_lock = PTHREAD_MUTEX_INITIALIZER;
static int prepared_vm_fd = -1; /* created by kvm_query_host, adopted by vm_create */

static int xioctl(int fd, unsigned long req, void *arg)
{
    int r;
    do
        r = ioctl(fd, req, arg);
    while (r < 0 && errno == EINTR);
    return r < 0 ? -errno : r;
}

static void kick_handler(int sig)
{
    (void)sig; /* only interrupts KVM_RUN */
}

static int open_kvm(void)
{
    pthread_mutex_lock(&kvm_lock);
    int r = 0;
    if (kvm_fd >= 0) goto out;
    int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        if (e == ENOENT || e == ENODEV || e == ENXIO)
            r = err_set(e, "/dev/kvm does not exist: this host has no KVM (load kvm_intel or "
                           "kvm_amd, or enable virtualization in the firmware); run with --cpu bt "
                           "to use the software CPU instead");
        else if (e == EACCES || e == EPERM)
            r = err_set(e, "no permission to open /dev/kvm: add yourself to its group (e.g. "
                           "`sudo usermod -aG kvm $USER`, then log in again) or run with --cpu bt "
                           "to use the software CPU instead");
        else
            r = err_set(e, "cannot open /dev/kvm: %s; run with --cpu bt to use the software CPU",
                        strerror(e));
        goto out;
    }
    int v = ioctl(fd, KVM_GET_API_VERSION, 0);
    if (v != KVM_API_VERSION) {
        close(fd);
        r = err_set(ENOTSUP,
                    "/dev/kvm speaks KVM API version %d, lookout needs %d; run with "
                    "--cpu bt",
                    v, KVM_API_VERSION);
        goto out;
    }
    static const struct {
        int cap;
        const char *name;
    } caps[] = {
        {KVM_CAP_IRQCHIP, "IRQCHIP"},
        {KVM_CAP_PIT2, "PIT2"},
        {KVM_CAP_SET_TSS_ADDR, "SET_TSS_ADDR"},
        {KVM_CAP_USER_MEMORY, "USER_MEMORY"},
        {KVM_CAP_IMMEDIATE_EXIT, "IMMEDIATE_EXIT"},
        {KVM_CAP_VCPU_EVENTS, "VCPU_EVENTS"},
        {KVM_CAP_EXT_CPUID, "EXT_CPUID"},
    };
    for (unsigned i = 0; i < ARRAY_SIZE(caps); i++)
        if (ioctl(fd, KVM_CHECK_EXTENSION, caps[i].cap) <= 0) {
            close(fd);
            r = err_set(ENOTSUP,
                        "/dev/kvm lacks KVM_CAP_%s, which lookout needs; run with "
                        "--cpu bt",
                        caps[i].name);
            goto out;
        }
    struct sigaction sa = {.sa_handler = kick_handler};
    sigemptyset(&sa.sa_mask);
    sigaction(KICK_SIGNAL, &sa, NULL); /* no SA_RESTART: KVM_RUN must return EINTR */
    kvm_fd = fd;
out:
    pthread_mutex_unlock(&kvm_lock);
    return r;
}

static int kvm_probe(void)
{
    return open_kvm();
}

bool kvm_is_software_virt(void)
{
    if (access("/sys/module/kvm_pvm", F_OK) == 0) return true;
    /* Hardware KVM needs VMX or SVM; without them any /dev/kvm is a software implementation. */
    FILE *f = fopen("/proc/cpuinfo", "re");
    if (!f) return false;
    char line[4096];
    bool flags_seen = false, hw = false;
    while (fgets(line, sizeof(line), f)) {
        if (strncmp(line, "flags", 5)) continue;
        flags_seen = true;
        hw = strstr(line, " vmx") || strstr(line, " svm");
        break;
    }
    fclose(f);
    return flags_seen && !hw;
}

int kvm_query_host(struct cpuid_entry *sup, unsigned max, unsigned *n, uint64_t *tsc_khz)
{
    int r = open_kvm();
    if (r) return r;
    size_t sz = sizeof(struct kvm_cpuid2) + MAX_CPUID_ENTRIES * sizeof(struct kvm_cpuid_entry2);
    struct kvm_cpuid2 *c = calloc(1, sz);
    if (!c) return err_set(ENOMEM, "out of memory");
    c->nent = MAX_CPUID_ENTRIES;
    r = xioctl(kvm_fd, KVM_GET_SUPPORTED_CPUID, c);
    if (r < 0) {
        free(c);
        return err_set(-r, "KVM_GET_SUPPORTED_CPUID failed: %s", strerror(-r));
    }
    unsigned k = 0;
    for (unsigned i = 0; i < c->nent && k < max; i++) {
        const struct kvm_cpuid_entry2 *e = &c->entries[i];
        sup[k++] = (struct cpuid_entry){
            .function = e->function,
            .index = e->index,
            .flags = (e->flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX) ? CPUID_FLAG_INDEXED : 0,
            .eax = e->eax,
            .ebx = e->ebx,
            .ecx = e->ecx,
            .edx = e->edx};
        /* KVM emulates the TSC-deadline timer in its LAPIC whatever the host has */
        if (e->function == 1 && ioctl(kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_TSC_DEADLINE_TIMER) > 0)
            sup[k - 1].ecx |= 1u << 24;
    }
    free(c);
    *n = k;

    /* The TSC rate: a VM-wide ioctl on recent kernels, else ask a throw-away vCPU. */
    pthread_mutex_lock(&kvm_lock);
    if (prepared_vm_fd < 0) prepared_vm_fd = xioctl(kvm_fd, KVM_CREATE_VM, 0);
    int vmfd = prepared_vm_fd;
    pthread_mutex_unlock(&kvm_lock);
    if (vmfd < 0) return err_set(-vmfd, "KVM_CREATE_VM failed: %s", strerror(-vmfd));
    int khz = ioctl(vmfd, KVM_GET_TSC_KHZ, 0);
    if (khz <= 0) {
        int tmp = xioctl(kvm_fd, KVM_CREATE_VM, 0);
        int vc = tmp >= 0 ? xioctl(tmp, KVM_CREATE_VCPU, 0) : -1;
        khz = vc >= 0 ? ioctl(vc, KVM_GET_TSC_KHZ, 0) : -1;
        if (vc >= 0) close(vc);
        if (tmp >= 0) close(tmp);
    }
    if (khz <= 0)
        return err_set(ENOTSUP, "KVM does not report the TSC frequency (KVM_GET_TSC_KHZ)");
    *tsc_khz = (uint64_t)khz;
    return 0;
}

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int64_t kvm_vm_clock_ns(struct vm *vm)
{
    struct kvm_vm_priv *p = vm->bk;
    return p ? (int64_t)(mono_ns() - p->clock_base_ns) : 0;
}

static int set_slots(struct vm *vm, bool log_dirty)
{
    struct kvm_vm_priv *p = vm->bk;
    for (unsigned i = 0; i < vm->mem.nslots; i++) {
        const struct guest_slot *s = &vm->mem.slot[i];
        struct kvm_userspace_memory_region reg = {
            .slot = i,
            .flags = log_dirty ? KVM_MEM_LOG_DIRTY_PAGES : 0,
            .guest_phys_addr = s->gpa,
            .memory_size = s->size,
            .userspace_addr = (uint64_t)(uintptr_t)s->hva,
        };
        int r = xioctl(p->fd, KVM_SET_USER_MEMORY_REGION, &reg);
        if (r < 0)
            return err_set(-r, "KVM_SET_USER_MEMORY_REGION (slot %u, %llu MiB at %#llx) failed: %s",
                           i, (unsigned long long)(s->size >> 20), (unsigned long long)s->gpa,
                           strerror(-r));
    }
    p->dirty_logging = log_dirty;
    return 0;
}

static void kvm_vm_destroy(struct vm *vm)
{
    struct kvm_vm_priv *p = vm->bk;
    if (!p) return;
    if (p->fd >= 0) close(p->fd);
    free(p->msrs);
    free(p);
    vm->bk = NULL;
}

static int kvm_vm_create(struct vm *vm)
{
    int r = open_kvm();
    if (r) return r;
    struct kvm_vm_priv *p = calloc(1, sizeof(*p));
    if (!p) return err_set(ENOMEM, "out of memory");
    vm->bk = p;
    pthread_mutex_lock(&kvm_lock);
    p->fd = prepared_vm_fd;
    prepared_vm_fd = -1;
    pthread_mutex_unlock(&kvm_lock);
    if (p->fd < 0) p->fd = xioctl(kvm_fd, KVM_CREATE_VM, 0);
    if (p->fd < 0) {
        r = err_set(-p->fd, "KVM_CREATE_VM failed: %s", strerror(-p->fd));
        goto fail;
    }
    p->clock_base_ns = mono_ns();
    int sz = ioctl(kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (sz < (int)sizeof(struct kvm_run)) {
        r = err_set(EIO, "KVM_GET_VCPU_MMAP_SIZE returned %d", sz);
        goto fail;
    }
    p->run_size = (size_t)sz;
    p->has_xcrs = ioctl(kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_XCRS) > 0;
    p->has_debugregs = ioctl(kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_DEBUGREGS) > 0;
    p->has_xsave = ioctl(kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_XSAVE) > 0;

    if ((r = xioctl(p->fd, KVM_SET_TSS_ADDR, (void *)(uintptr_t)KVM_TSS_ADDR)) < 0) {
        r = err_set(-r, "KVM_SET_TSS_ADDR failed: %s", strerror(-r));
        goto fail;
    }
    uint64_t ident = KVM_IDENT_MAP;
    if (ioctl(kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_SET_IDENTITY_MAP_ADDR) > 0 &&
        (r = xioctl(p->fd, KVM_SET_IDENTITY_MAP_ADDR, &ident)) < 0) {
        r = err_set(-r, "KVM_SET_IDENTITY_MAP_ADDR failed: %s", strerror(-r));
        goto fail;
    }
    if ((r = xioctl(p->fd, KVM_CREATE_IRQCHIP, NULL)) < 0) {
        r = err_set(-r, "KVM_CREATE_IRQCHIP failed: %s", strerror(-r));
        goto fail;
    }
    struct kvm_pit_config pit = {.flags = KVM_PIT_SPEAKER_DUMMY};
    if ((r = xioctl(p->fd, KVM_CREATE_PIT2, &pit)) < 0) {
        r = err_set(-r, "KVM_CREATE_PIT2 failed: %s", strerror(-r));
        goto fail;
    }
    if ((r = set_slots(vm, vm->mem.dirty_enabled)) < 0) goto fail;

    /* The MSRs KVM can save and restore; nothing outside this list is ever touched. */
    struct kvm_msr_list probe = {.nmsrs = 0};
    r = ioctl(kvm_fd, KVM_GET_MSR_INDEX_LIST, &probe);
    if (r < 0 && errno != E2BIG) {
        r = err_set(errno, "KVM_GET_MSR_INDEX_LIST failed: %s", strerror(errno));
        goto fail;
    }
    struct kvm_msr_list *l = calloc(1, sizeof(*l) + probe.nmsrs * sizeof(uint32_t));
    if (!l) {
        r = err_set(ENOMEM, "out of memory");
        goto fail;
    }
    l->nmsrs = probe.nmsrs;
    if ((r = xioctl(kvm_fd, KVM_GET_MSR_INDEX_LIST, l)) < 0) {
        free(l);
        r = err_set(-r, "KVM_GET_MSR_INDEX_LIST failed: %s", strerror(-r));
        goto fail;
    }
    p->nmsrs = l->nmsrs;
    p->msrs = malloc(l->nmsrs * sizeof(uint32_t) + 1);
    if (!p->msrs) {
        free(l);
        r = err_set(ENOMEM, "out of memory");
        goto fail;
    }
    memcpy(p->msrs, l->indices, l->nmsrs * sizeof(uint32_t));
    free(l);
    return 0;
fail:
    kvm_vm_destroy(vm);
    return r;
}

static bool msr_listed(const struct kvm_vm_priv *p, uint32_t idx)
{
    for (unsigned i = 0; i < p->nmsrs; i++)
        if (p->msrs[i] == idx) return true;
    return false;
}

static void kvm_vcpu_destroy(struct vcpu *cpu)
{
    struct kvm_vcpu_priv *c = cpu->bk;
    if (!c) return;
    const struct kvm_vm_priv *p = cpu->vm->bk;
    if (c->run) munmap(c->run, p->run_size);
    if (c->fd >= 0) close(c->fd);
    free(c);
    cpu->bk = NULL;
}

static int kvm_vcpu_create(struct vcpu *cpu)
{
    struct vm *vm = cpu->vm;
    struct kvm_vm_priv *p = vm->bk;
    struct kvm_vcpu_priv *c = calloc(1, sizeof(*c));
    if (!c) return err_set(ENOMEM, "out of memory");
    cpu->bk = c;
    int r;
    c->fd = xioctl(p->fd, KVM_CREATE_VCPU, (void *)(uintptr_t)cpu->id);
    if (c->fd < 0) {
        r = err_set(-c->fd, "KVM_CREATE_VCPU %u failed: %s", cpu->id, strerror(-c->fd));
        goto fail;
    }
    c->run = mmap(NULL, p->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, c->fd, 0);
    if (c->run == MAP_FAILED) {
        c->run = NULL;
        r = err_set(errno, "cannot map kvm_run of vCPU %u: %s", cpu->id, strerror(errno));
        goto fail;
    }
    /* The VM's CPUID model with this vCPU's APIC ID. */
    const struct cpuid_model *m = &vm->cpuid;
    struct kvm_cpuid2 *cp = calloc(1, sizeof(*cp) + m->n * sizeof(struct kvm_cpuid_entry2));
    if (!cp) {
        r = err_set(ENOMEM, "out of memory");
        goto fail;
    }
    cp->nent = m->n;
    for (unsigned i = 0; i < m->n; i++) {
        const struct cpuid_entry *e = &m->e[i];
        uint32_t out[4];
        cpuid_query(m, e->function, e->index, cpu->id, out);
        cp->entries[i] = (struct kvm_cpuid_entry2){
            .function = e->function,
            .index = e->index,
            .flags = (e->flags & CPUID_FLAG_INDEXED) ? KVM_CPUID_FLAG_SIGNIFCANT_INDEX : 0,
            .eax = out[0],
            .ebx = out[1],
            .ecx = out[2],
            .edx = out[3]};
    }
    r = xioctl(c->fd, KVM_SET_CPUID2, cp);
    free(cp);
    if (r < 0) {
        r = err_set(-r, "KVM_SET_CPUID2 (model %s, %u entries) failed: %s", m->name, m->n,
                    strerror(-r));
        goto fail;
    }
    return 0;
fail:
    kvm_vcpu_destroy(cpu);
    return r;
}

/* ---- state conversion ------------------------------------------------------------------- */

static void seg_from_kvm(struct x86_seg *d, const struct kvm_segment *s)
{
    *d = (struct x86_seg){.base = s->base,
                          .limit = s->limit,
                          .sel = s->selector,
                          .type = s->type,
                          .s = s->s,
                          .dpl = s->dpl,
                          .present = s->present,
                          .avl = s->avl,
                          .l = s->l,
                          .db = s->db,
                          .g = s->g,
                          .unusable = s->unusable};
}

static void seg_to_kvm(struct kvm_segment *d, const struct x86_seg *s)
{
    *d = (struct kvm_segment){.base = s->base,
                              .limit = s->limit,
                              .selector = s->sel,
                              .type = s->type,
                              .s = s->s,
                              .dpl = s->dpl,
                              .present = s->present,
                              .avl = s->avl,
                              .l = s->l,
                              .db = s->db,
                              .g = s->g,
                              .unusable = s->unusable};
}

/* KVM_GET/SET_XSAVE use the standard (non-compacted) format: legacy region, header at 512 with
 * XSTATE_BV, then each component at the host's standard offset (x86_xcomp_std_off: AMD's
 * AVX-512 components sit elsewhere than Intel's). */
#define XS_HDR 512
static void xsave_region_to_state(const struct kvm_xsave *xs, struct x86_state *s)
{
    const uint8_t *b = (const uint8_t *)xs->region;
    uint64_t bv;
    memcpy(&bv, b + XS_HDR, 8);
    for (unsigned k = 0; k < ARRAY_SIZE(x86_xcomps); k++) {
        const struct x86_xcomp *x = &x86_xcomps[k];
        uint8_t *f = (uint8_t *)s + x->field;
        if (bv & (1ull << x->bit))
            memcpy(f, b + x86_xcomp_std_off(x), x->size);
        else
            memset(f, 0, x->size); /* in its initial configuration */
    }
}
/* The neutral state into a region KVM_GET_XSAVE filled: the legacy region's x87 and SSE state
 * (not MXCSR_MASK, a CPU constant, nor bytes 416-511), x87 and SSE marked in use in XSTATE_BV
 * (a component whose bit is clear is restored to its initial configuration, whatever the
 * region holds: SDM Vol.1 13.8.1), and AVX and AVX-512 at the host's offsets, each marked in
 * use unless it is in its initial configuration (all zero) and was not in use before. */
_Static_assert(offsetof(struct x86_fxsave, xmm) == offsetof(struct x86_fxsave, st) + 128,
               "ST and XMM registers are contiguous in the FXSAVE image");
static void xsave_region_from_state(struct kvm_xsave *xs, const struct x86_state *s)
{
    uint8_t *b = (uint8_t *)xs->region;
    memcpy(b, &s->fx, offsetof(struct x86_fxsave, mxcsr_mask));
    memcpy(b + offsetof(struct x86_fxsave, st), s->fx.st, sizeof(s->fx.st) + sizeof(s->fx.xmm));
    uint64_t bv;
    memcpy(&bv, b + XS_HDR, 8);
    bv |= X86_XFEATURE_X87 | X86_XFEATURE_SSE;
    static const uint8_t zero[1024];
    for (unsigned k = 0; k < ARRAY_SIZE(x86_xcomps); k++) {
        const struct x86_xcomp *x = &x86_xcomps[k];
        const uint8_t *f = (const uint8_t *)s + x->field;
        uint64_t m = 1ull << x->bit;
        if (!(bv & m) && memcmp(f, zero, x->size) == 0) continue; /* still initial */
        bv |= m;
        memcpy(b + x86_xcomp_std_off(x), f, x->size);
    }
    memcpy(b + XS_HDR, &bv, 8);
}

/* Neutral MSR fields, in the order they are written back (TSC before the deadline). */
static uint64_t *msr_field(struct x86_state *s, uint32_t idx)
{
    switch (idx) {
    case MSR_IA32_TSC: return &s->tsc;
    case MSR_IA32_TSC_ADJUST: return &s->tsc_adjust;
    case MSR_STAR: return &s->star;
    case MSR_LSTAR: return &s->lstar;
    case MSR_CSTAR: return &s->cstar;
    case MSR_SFMASK: return &s->sfmask;
    case MSR_KERNEL_GS_BASE: return &s->kernel_gs_base;
    case MSR_IA32_SYSENTER_CS: return &s->sysenter_cs;
    case MSR_IA32_SYSENTER_ESP: return &s->sysenter_esp;
    case MSR_IA32_SYSENTER_EIP: return &s->sysenter_eip;
    case MSR_IA32_PAT: return &s->pat;
    case MSR_TSC_AUX: return &s->tsc_aux;
    case MSR_IA32_MISC_ENABLE: return &s->misc_enable;
    case MSR_IA32_TSC_DEADLINE: return &s->tsc_deadline;
    case MSR_IA32_XSS: return &s->xss;
    default: return NULL;
    }
}
static const uint32_t state_msrs[] = {
    MSR_IA32_TSC,
    MSR_IA32_TSC_ADJUST, /* after the TSC: a host-side TSC write leaves it alone */
    MSR_STAR,
    MSR_LSTAR,
    MSR_CSTAR,
    MSR_SFMASK,
    MSR_KERNEL_GS_BASE,
    MSR_IA32_SYSENTER_CS,
    MSR_IA32_SYSENTER_ESP,
    MSR_IA32_SYSENTER_EIP,
    MSR_IA32_PAT,
    MSR_TSC_AUX,
    MSR_IA32_MISC_ENABLE,
    MSR_IA32_TSC_DEADLINE,
    MSR_IA32_XSS,
};

struct msr_buf {
    struct kvm_msrs hdr;
    struct kvm_msr_entry e[ARRAY_SIZE(state_msrs)];
};

static int enum_to_kvm_mp(uint32_t s)
{
    switch (s) {
    case MP_HALTED: return KVM_MP_STATE_HALTED;
    case MP_WAIT_FOR_SIPI: return KVM_MP_STATE_INIT_RECEIVED;
    case MP_STOPPED: return KVM_MP_STATE_STOPPED;
    default: return KVM_MP_STATE_RUNNABLE;
    }
}

static uint32_t kvm_mp_to_enum(uint32_t s)
{
    switch (s) {
    case KVM_MP_STATE_HALTED: return MP_HALTED;
    case KVM_MP_STATE_UNINITIALIZED:
    case KVM_MP_STATE_INIT_RECEIVED: return MP_WAIT_FOR_SIPI;
    case KVM_MP_STATE_STOPPED: return MP_STOPPED;
    default: return MP_RUNNABLE;
    }
}

/* KVM finishes an IN or MMIO read at the next KVM_RUN; state read or written before that would be
 * wrong, so complete it now without entering the guest (KVM API: immediate_exit). */
static int flush_pending(struct vcpu *cpu)
{
    struct kvm_vcpu_priv *c = cpu->bk;
    if (!c->io_pending) return 0;
    c->run->immediate_exit = 1;
    int r = ioctl(c->fd, KVM_RUN, 0);
    int e = errno;
    c->run->immediate_exit = 0;
    c->io_pending = false;
    if (r < 0 && e != EINTR && e != EAGAIN)
        return err_set(e, "completing I/O on vCPU %u failed: %s", cpu->id, strerror(e));
    return 0;
}

static int kvm_get_state(struct vcpu *cpu, struct x86_state *s)
{
    struct kvm_vcpu_priv *c = cpu->bk;
    const struct kvm_vm_priv *p = cpu->vm->bk;
    int r = flush_pending(cpu);
    if (r) return r;
    memset(s, 0, sizeof(*s));

    struct kvm_regs regs;
    if ((r = xioctl(c->fd, KVM_GET_REGS, &regs)) < 0) goto fail;
    const uint64_t g[16] = {regs.rax, regs.rcx, regs.rdx, regs.rbx, regs.rsp, regs.rbp,
                            regs.rsi, regs.rdi, regs.r8,  regs.r9,  regs.r10, regs.r11,
                            regs.r12, regs.r13, regs.r14, regs.r15};
    memcpy(s->gpr, g, sizeof(g));
    s->rip = regs.rip;
    s->rflags = regs.rflags;

    struct kvm_sregs sr;
    if ((r = xioctl(c->fd, KVM_GET_SREGS, &sr)) < 0) goto fail;
    seg_from_kvm(&s->seg[SEG_ES], &sr.es);
    seg_from_kvm(&s->seg[SEG_CS], &sr.cs);
    seg_from_kvm(&s->seg[SEG_SS], &sr.ss);
    seg_from_kvm(&s->seg[SEG_DS], &sr.ds);
    seg_from_kvm(&s->seg[SEG_FS], &sr.fs);
    seg_from_kvm(&s->seg[SEG_GS], &sr.gs);
    seg_from_kvm(&s->seg[SEG_LDTR], &sr.ldt);
    seg_from_kvm(&s->seg[SEG_TR], &sr.tr);
    s->gdtr = (struct x86_dtable){.base = sr.gdt.base, .limit = sr.gdt.limit};
    s->idtr = (struct x86_dtable){.base = sr.idt.base, .limit = sr.idt.limit};
    s->cr0 = sr.cr0;
    s->cr2 = sr.cr2;
    s->cr3 = sr.cr3;
    s->cr4 = sr.cr4;
    s->cr8 = sr.cr8;
    s->efer = sr.efer;
    s->apic_base = sr.apic_base;

    struct kvm_fpu fpu;
    if ((r = xioctl(c->fd, KVM_GET_FPU, &fpu)) < 0) goto fail;
    s->fx.fcw = fpu.fcw;
    s->fx.fsw = fpu.fsw;
    s->fx.ftw = fpu.ftwx;
    s->fx.fop = fpu.last_opcode;
    s->fx.fip = fpu.last_ip;
    s->fx.fdp = fpu.last_dp;
    s->fx.mxcsr = fpu.mxcsr;
    s->fx.mxcsr_mask = 0xffff; /* a CPU constant, not state: what FXSAVE reports */
    memcpy(s->fx.st, fpu.fpr, sizeof(s->fx.st));
    memcpy(s->fx.xmm, fpu.xmm, sizeof(s->fx.xmm));

    if (p->has_xsave) {
        struct kvm_xsave *xs = malloc(sizeof(*xs));
        if (!xs) return err_set(ENOMEM, "out of memory reading vCPU %u's XSAVE state", cpu->id);
        r = xioctl(c->fd, KVM_GET_XSAVE, xs);
        if (r == 0) xsave_region_to_state(xs, s);
        free(xs);
        if (r < 0) goto fail;
    }

    s->xcr0 = 1;
    if (p->has_xcrs) {
        struct kvm_xcrs x;
        if ((r = xioctl(c->fd, KVM_GET_XCRS, &x)) < 0) goto fail;
        for (unsigned i = 0; i < x.nr_xcrs && i < KVM_MAX_XCRS; i++)
            if (x.xcrs[i].xcr == 0) s->xcr0 = x.xcrs[i].value;
    }
    if (p->has_debugregs) {
        struct kvm_debugregs d;
        if ((r = xioctl(c->fd, KVM_GET_DEBUGREGS, &d)) < 0) goto fail;
        memcpy(s->dr, d.db, sizeof(s->dr));
        s->dr6 = d.dr6;
        s->dr7 = d.dr7;
    } else {
        s->dr6 = 0xffff0ff0;
        s->dr7 = 0x400;
    }

    struct msr_buf mb = {0};
    for (unsigned i = 0; i < ARRAY_SIZE(state_msrs); i++)
        if (msr_listed(p, state_msrs[i])) mb.e[mb.hdr.nmsrs++].index = state_msrs[i];
    r = xioctl(c->fd, KVM_GET_MSRS, &mb);
    if (r < 0) goto fail;
    if ((unsigned)r != mb.hdr.nmsrs) {
        return err_set(EIO, "KVM_GET_MSRS: MSR %#x is listed but cannot be read", mb.e[r].index);
    }
    for (unsigned i = 0; i < mb.hdr.nmsrs; i++)
        *msr_field(s, mb.e[i].index) = mb.e[i].data;
    c->last_tsc = s->tsc;
    c->last_deadline = s->tsc_deadline;
    c->msr_cache_valid = true;

    struct kvm_vcpu_events ev;
    if ((r = xioctl(c->fd, KVM_GET_VCPU_EVENTS, &ev)) < 0) goto fail;
    s->ev.exception_pending = ev.exception.injected || ev.exception.pending;
    s->ev.exception_vector = ev.exception.nr;
    s->ev.exception_has_error = ev.exception.has_error_code;
    s->ev.exception_error = ev.exception.error_code;
    s->ev.interrupt_pending = ev.interrupt.injected;
    s->ev.interrupt_vector = ev.interrupt.nr;
    s->ev.nmi_pending = ev.nmi.injected || ev.nmi.pending;
    s->ev.nmi_masked = ev.nmi.masked;
    s->ev.interrupt_shadow = ev.interrupt.shadow;

    struct kvm_mp_state mp;
    if ((r = xioctl(c->fd, KVM_GET_MP_STATE, &mp)) < 0) goto fail;
    s->mp_state = kvm_mp_to_enum(mp.mp_state);
    return 0;
fail:
    return err_set(-r, "reading the state of vCPU %u from KVM failed: %s", cpu->id, strerror(-r));
}

static int kvm_set_state(struct vcpu *cpu, const struct x86_state *s)
{
    struct kvm_vcpu_priv *c = cpu->bk;
    const struct kvm_vm_priv *p = cpu->vm->bk;
    int r = flush_pending(cpu);
    if (r) return r;
    const char *what;

    struct kvm_sregs sr;
    what = "special registers";
    if ((r = xioctl(c->fd, KVM_GET_SREGS, &sr)) < 0) goto fail;
    seg_to_kvm(&sr.es, &s->seg[SEG_ES]);
    seg_to_kvm(&sr.cs, &s->seg[SEG_CS]);
    seg_to_kvm(&sr.ss, &s->seg[SEG_SS]);
    seg_to_kvm(&sr.ds, &s->seg[SEG_DS]);
    seg_to_kvm(&sr.fs, &s->seg[SEG_FS]);
    seg_to_kvm(&sr.gs, &s->seg[SEG_GS]);
    seg_to_kvm(&sr.ldt, &s->seg[SEG_LDTR]);
    seg_to_kvm(&sr.tr, &s->seg[SEG_TR]);
    sr.gdt = (struct kvm_dtable){.base = s->gdtr.base, .limit = s->gdtr.limit};
    sr.idt = (struct kvm_dtable){.base = s->idtr.base, .limit = s->idtr.limit};
    sr.cr0 = s->cr0;
    sr.cr2 = s->cr2;
    sr.cr3 = s->cr3;
    sr.cr4 = s->cr4;
    sr.cr8 = s->cr8;
    sr.efer = s->efer;
    sr.apic_base = s->apic_base;
    memset(sr.interrupt_bitmap, 0, sizeof(sr.interrupt_bitmap)); /* events carry interrupts */
    if ((r = xioctl(c->fd, KVM_SET_SREGS, &sr)) < 0) goto fail;

    what = "registers";
    struct kvm_regs regs = {.rax = s->gpr[RAX],
                            .rbx = s->gpr[RBX],
                            .rcx = s->gpr[RCX],
                            .rdx = s->gpr[RDX],
                            .rsi = s->gpr[RSI],
                            .rdi = s->gpr[RDI],
                            .rsp = s->gpr[RSP],
                            .rbp = s->gpr[RBP],
                            .r8 = s->gpr[R8],
                            .r9 = s->gpr[R9],
                            .r10 = s->gpr[R10],
                            .r11 = s->gpr[R11],
                            .r12 = s->gpr[R12],
                            .r13 = s->gpr[R13],
                            .r14 = s->gpr[R14],
                            .r15 = s->gpr[R15],
                            .rip = s->rip,
                            .rflags = s->rflags};
    if ((r = xioctl(c->fd, KVM_SET_REGS, &regs)) < 0) goto fail;

    if (!p->has_xsave) {
        what = "FPU/SSE state";
        struct kvm_fpu fpu = {.fcw = s->fx.fcw,
                              .fsw = s->fx.fsw,
                              .ftwx = s->fx.ftw,
                              .last_opcode = s->fx.fop,
                              .last_ip = s->fx.fip,
                              .last_dp = s->fx.fdp,
                              .mxcsr = s->fx.mxcsr};
        memcpy(fpu.fpr, s->fx.st, sizeof(fpu.fpr));
        memcpy(fpu.xmm, s->fx.xmm, sizeof(fpu.xmm));
        if ((r = xioctl(c->fd, KVM_SET_FPU, &fpu)) < 0) goto fail;
    }
    if (p->has_xcrs) {
        what = "XCR0";
        struct kvm_xcrs x = {.nr_xcrs = 1};
        x.xcrs[0].xcr = 0;
        x.xcrs[0].value = s->xcr0;
        if ((r = xioctl(c->fd, KVM_SET_XCRS, &x)) < 0) goto fail;
    }
    if (p->has_xsave) {
        /* x87, SSE, AVX and AVX-512 in one KVM_SET_XSAVE, over the region KVM_GET_XSAVE gives
         * (components the neutral state does not carry go back unchanged).  Not KVM_SET_FPU
         * first and the region read back after it: KVM_GET_XSAVE reports the legacy region's
         * XMM registers as zero while XSTATE_BV[1] is clear (a fresh vCPU's, seen on an AMD
         * host), so that read-back would undo what KVM_SET_FPU had set. */
        what = "FPU, SSE, AVX and AVX-512 state (XSAVE)";
        struct kvm_xsave *xs = malloc(sizeof(*xs));
        if (!xs) return err_set(ENOMEM, "out of memory writing vCPU %u's XSAVE state", cpu->id);
        r = xioctl(c->fd, KVM_GET_XSAVE, xs);
        if (r == 0) {
            xsave_region_from_state(xs, s);
            r = xioctl(c->fd, KVM_SET_XSAVE, xs);
        }
        free(xs);
        if (r < 0) goto fail;
    }
    if (p->has_debugregs) {
        what = "debug registers";
        struct kvm_debugregs d = {.dr6 = s->dr6, .dr7 = s->dr7};
        memcpy(d.db, s->dr, sizeof(d.db));
        if ((r = xioctl(c->fd, KVM_SET_DEBUGREGS, &d)) < 0) goto fail;
    }

    what = "MSRs";
    struct msr_buf mb = {0};
    for (unsigned i = 0; i < ARRAY_SIZE(state_msrs); i++) {
        uint32_t idx = state_msrs[i];
        if (!msr_listed(p, idx)) continue;
        uint64_t v = *msr_field((struct x86_state *)s, idx);
        if (c->msr_cache_valid && ((idx == MSR_IA32_TSC && v == c->last_tsc) ||
                                   (idx == MSR_IA32_TSC_DEADLINE && v == c->last_deadline)))
            continue;
        mb.e[mb.hdr.nmsrs].index = idx;
        mb.e[mb.hdr.nmsrs++].data = v;
    }
    r = xioctl(c->fd, KVM_SET_MSRS, &mb);
    if (r < 0) goto fail;
    if ((unsigned)r != mb.hdr.nmsrs)
        return err_set(EINVAL, "KVM refused MSR %#x = %#llx on vCPU %u", mb.e[r].index,
                       (unsigned long long)mb.e[r].data, cpu->id);
    c->msr_cache_valid = false;

    what = "events";
    struct kvm_vcpu_events ev;
    memset(&ev, 0, sizeof(ev));
    ev.exception.injected = s->ev.exception_pending;
    ev.exception.nr = s->ev.exception_vector;
    ev.exception.has_error_code = s->ev.exception_has_error;
    ev.exception.error_code = s->ev.exception_error;
    ev.interrupt.injected = s->ev.interrupt_pending;
    ev.interrupt.nr = s->ev.interrupt_vector;
    ev.interrupt.shadow = s->ev.interrupt_shadow;
    ev.nmi.pending = s->ev.nmi_pending;
    ev.nmi.masked = s->ev.nmi_masked;
    ev.flags = KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SHADOW;
    if ((r = xioctl(c->fd, KVM_SET_VCPU_EVENTS, &ev)) < 0) goto fail;

    what = "MP state";
    struct kvm_mp_state mp = {.mp_state = (uint32_t)enum_to_kvm_mp(s->mp_state)};
    if ((r = xioctl(c->fd, KVM_SET_MP_STATE, &mp)) < 0) goto fail;
    return 0;
fail:
    return err_set(-r, "KVM refused the %s of vCPU %u: %s", what, cpu->id, strerror(-r));
}

/* ---- running ---------------------------------------------------------------------------- */

static void kvm_vcpu_kick(struct vcpu *cpu)
{
    struct kvm_vcpu_priv *c = cpu->bk;
    if (!c || !c->run) return;
    /* Ordering: immediate_exit is set before in_run is read, and the vCPU thread sets in_run
     * before KVM_RUN reads immediate_exit; so either KVM_RUN sees the flag or we see in_run and
     * the signal interrupts it.  Only a thread inside KVM_RUN is signalled, never one that may
     * have exited. */
    c->run->immediate_exit = 1;
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load(&c->in_run) && !pthread_equal(c->tid, pthread_self()))
        pthread_kill(c->tid, KICK_SIGNAL);
}

/* Reads the instruction bytes at RIP for an error report, through the guest's page tables
 * (KVM_TRANSLATE) and the checked RAM accessor.  Returns the number of bytes read. */
static unsigned insn_bytes_at_rip(struct vcpu *cpu, const struct x86_state *s, uint8_t out[15])
{
    struct kvm_vcpu_priv *c = cpu->bk;
    uint64_t la = s->seg[SEG_CS].base + s->rip;
    if (!(s->efer & X86_EFER_LMA)) la &= 0xffffffffu;
    unsigned n = 0;
    while (n < 15) {
        struct kvm_translation t = {.linear_address = la + n};
        if (xioctl(c->fd, KVM_TRANSLATE, &t) < 0 || !t.valid) break;
        /* copy up to the end of this page */
        unsigned chunk = (unsigned)MIN(15u - n, 4096 - ((la + n) & 4095));
        if (guest_read(&cpu->vm->mem, t.physical_address, out + n, chunk)) break;
        n += chunk;
    }
    return n;
}

static int emulation_failure(struct vcpu *cpu, struct vcpu_exit *exit)
{
    struct kvm_vcpu_priv *c = cpu->bk;
    struct x86_state s;
    int r = kvm_get_state(cpu, &s);
    if (r) return r;
    const struct x86_state before = s;
    char why[600] = "the software CPU is not linked into this build";
    if (bt_emulate_one) {
        err_clear();
        r = bt_emulate_one(cpu->vm, cpu->id, &s);
        if (r == 0) {
            if (log_threshold >= LOG_DEBUG) {
                uint8_t ib[15];
                char hx[64] = "";
                unsigned nb = insn_bytes_at_rip(cpu, &before, ib);
                for (unsigned k = 0; k < nb && k < 8; k++)
                    snprintf(hx + 3 * k, 4, " %02x", ib[k]);
                log_debug("vCPU %u: KVM could not emulate the instruction at %#llx (bytes:%s); "
                          "the software CPU executed it",
                          cpu->id, (unsigned long long)before.rip, hx);
            }
            /* The software CPU reports the TSC advanced by its own run time.  Writing that back
             * would set KVM's TSC offset per vCPU on every hand-off, so the vCPUs' TSCs drift
             * apart and Linux declares the TSC unstable: keep KVM's TSC unless the instruction
             * moved it by more than a second's worth of ticks (a WRMSR to IA32_TSC). */
            uint64_t d = s.tsc - before.tsc, second = cpu->vm->tsc_khz * 1000;
            if (d < second || -d < second) s.tsc = before.tsc;
            r = kvm_set_state(cpu, &s);
            if (r) return r;
            exit->reason = VCPU_EXIT_NONE;
            return 0;
        }
        if (r == -ESHUTDOWN) { /* the instruction's exception could not be delivered */
            log_err("%s", err_msg());
            exit->reason = VCPU_EXIT_SHUTDOWN;
            return 0;
        }
        /* -ENOSYS: a placeholder stands in for the software CPU */
        if (r != -ENOSYS) snprintf(why, sizeof(why), "the software CPU failed too: %s", err_msg());
    }
    uint8_t b[15];
    unsigned n;
    if (c->run->emulation_failure.ndata >= 3 &&
        (c->run->emulation_failure.flags & KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES)) {
        n = MIN(c->run->emulation_failure.insn_size, 15u);
        memcpy(b, c->run->emulation_failure.insn_bytes, n);
    } else {
        n = insn_bytes_at_rip(cpu, &before, b);
    }
    char hex[64] = "";
    for (unsigned i = 0; i < n; i++)
        snprintf(hex + 3 * i, 4, " %02x", b[i]);
    err_set(ENOTSUP,
            "vCPU %u: KVM's instruction emulator cannot execute the instruction at rip %#llx "
            "(bytes:%s) and %s; this host's KVM has no VMX/SVM, so try --cpu bt",
            cpu->id, (unsigned long long)before.rip, n ? hex : " unreadable", why);
    exit->reason = VCPU_EXIT_INTERNAL;
    return 0;
}

static int kvm_vcpu_run(struct vcpu *cpu, struct vcpu_exit *exit)
{
    struct kvm_vcpu_priv *c = cpu->bk;
    const struct kvm_vm_priv *p = cpu->vm->bk;
    struct kvm_run *run = c->run;
    memset(exit, 0, sizeof(*exit));
    c->io_pending = false;
    c->msr_cache_valid = false; /* the guest may change them from here on */
    c->tid = pthread_self();
    atomic_store(&c->in_run, true);
    int r = ioctl(c->fd, KVM_RUN, 0);
    atomic_store(&c->in_run, false);
    if (r < 0) {
        int e = errno;
        if (e == EINTR || e == EAGAIN) {
            run->immediate_exit = 0;
            exit->reason = VCPU_EXIT_NONE;
            return 0;
        }
        return err_set(e, "KVM_RUN on vCPU %u failed: %s", cpu->id, strerror(e));
    }
    switch (run->exit_reason) {
    case KVM_EXIT_IO: {
        uint64_t len = (uint64_t)run->io.size * run->io.count;
        if (run->io.size == 0 || run->io.size > 4 || run->io.data_offset > p->run_size ||
            len > p->run_size - run->io.data_offset) {
            exit->reason = VCPU_EXIT_INTERNAL;
            return err_set(EIO, "KVM reported a malformed I/O exit (port %#x size %u count %u)",
                           run->io.port, run->io.size, run->io.count);
        }
        exit->reason = VCPU_EXIT_IO;
        exit->io.port = run->io.port;
        exit->io.size = run->io.size;
        exit->io.is_write = run->io.direction == KVM_EXIT_IO_OUT;
        exit->io.count = run->io.count;
        exit->io.data = (uint8_t *)run + run->io.data_offset;
        c->io_pending = true;
        return 0;
    }
    case KVM_EXIT_MMIO:
        if (run->mmio.len == 0 || run->mmio.len > 8) {
            exit->reason = VCPU_EXIT_INTERNAL;
            return err_set(EIO, "KVM reported an MMIO exit of %u bytes", run->mmio.len);
        }
        exit->reason = VCPU_EXIT_MMIO;
        exit->mmio.gpa = run->mmio.phys_addr;
        exit->mmio.data = run->mmio.data;
        exit->mmio.len = (uint8_t)run->mmio.len;
        exit->mmio.is_write = run->mmio.is_write;
        c->io_pending = true;
        return 0;
    case KVM_EXIT_HLT: exit->reason = VCPU_EXIT_HLT; return 0;
    case KVM_EXIT_SHUTDOWN: exit->reason = VCPU_EXIT_SHUTDOWN; return 0;
    case KVM_EXIT_INTR: exit->reason = VCPU_EXIT_NONE; return 0;
    case KVM_EXIT_DEBUG: exit->reason = VCPU_EXIT_DEBUG; return 0;
    case KVM_EXIT_INTERNAL_ERROR:
        if (run->internal.suberror == KVM_INTERNAL_ERROR_EMULATION)
            return emulation_failure(cpu, exit);
        exit->reason = VCPU_EXIT_INTERNAL;
        {
            char extra[160] = "";
            size_t len = 0;
            for (unsigned i = 0; i < run->internal.ndata && i < 4; i++)
                len += (size_t)snprintf(extra + len, sizeof(extra) - len, " %#llx",
                                        (unsigned long long)run->internal.data[i]);
            err_set(EIO, "vCPU %u: KVM internal error, suberror %u (%s), data:%s", cpu->id,
                    run->internal.suberror,
                    run->internal.suberror == KVM_INTERNAL_ERROR_SIMUL_EX
                        ? "exception while delivering an exception"
                    : run->internal.suberror == KVM_INTERNAL_ERROR_DELIVERY_EV
                        ? "event delivery failed"
                        : "unexpected exit",
                    extra[0] ? extra : " none");
        }
        return 0;
    case KVM_EXIT_FAIL_ENTRY:
        exit->reason = VCPU_EXIT_INTERNAL;
        err_set(EIO,
                "vCPU %u: the CPU refused to enter the guest (hardware reason %#llx); the "
                "vCPU state is invalid",
                cpu->id, (unsigned long long)run->fail_entry.hardware_entry_failure_reason);
        return 0;
    case KVM_EXIT_SYSTEM_EVENT:
        switch (run->system_event.type) {
        case KVM_SYSTEM_EVENT_SHUTDOWN: vm_request_stop(cpu->vm, VM_STOP_POWEROFF, 0); break;
        case KVM_SYSTEM_EVENT_RESET: vm_request_stop(cpu->vm, VM_STOP_RESET, 0); break;
        default:
            exit->reason = VCPU_EXIT_INTERNAL;
            err_set(EIO, "vCPU %u: KVM system event %u (guest crash or unsupported event)", cpu->id,
                    run->system_event.type);
            return 0;
        }
        exit->reason = VCPU_EXIT_NONE;
        return 0;
    default:
        exit->reason = VCPU_EXIT_INTERNAL;
        err_set(ENOTSUP, "vCPU %u: KVM exit reason %u is not handled by lookout", cpu->id,
                run->exit_reason);
        return 0;
    }
}

/* ---- VM-wide -------------------------------------------------------------------------- */

static int kvm_irq_line(struct vm *vm, unsigned gsi, int level)
{
    struct kvm_vm_priv *p = vm->bk;
    struct kvm_irq_level l = {.irq = gsi, .level = level ? 1 : 0};
    int r = xioctl(p->fd, KVM_IRQ_LINE, &l);
    return r < 0 ? err_set(-r, "KVM_IRQ_LINE gsi %u failed: %s", gsi, strerror(-r)) : 0;
}

static void or_bits(uint64_t *out, size_t nwords, uint64_t first_page, const uint64_t *bits,
                    uint64_t npages)
{
    for (uint64_t w = 0; w < (npages + 63) / 64; w++) {
        uint64_t v = bits[w];
        while (v) {
            unsigned b = (unsigned)__builtin_ctzll(v);
            v &= v - 1;
            uint64_t pg = first_page + w * 64 + b;
            if (w * 64 + b < npages && pg / 64 < nwords) out[pg / 64] |= 1ull << (pg % 64);
        }
    }
}

static int kvm_dirty_log(struct vm *vm, uint64_t *bitmap, size_t nwords)
{
    struct kvm_vm_priv *p = vm->bk;
    uint64_t npages_all = vm->mem.size >> GUEST_PAGE_SHIFT;
    int r;
    if (!p->dirty_logging) {
        /* Logging starts now: everything before is unknown, so report every page. */
        if ((r = guest_dirty_enable(&vm->mem)) < 0) return r;
        if ((r = set_slots(vm, true)) < 0) return r;
        for (uint64_t pg = 0; pg < npages_all && pg / 64 < nwords; pg++)
            bitmap[pg / 64] |= 1ull << (pg % 64);
        return 0;
    }
    for (unsigned i = 0; i < vm->mem.nslots; i++) {
        const struct guest_slot *s = &vm->mem.slot[i];
        uint64_t npages = s->size >> GUEST_PAGE_SHIFT;
        uint64_t *bits = calloc((npages + 63) / 64, sizeof(uint64_t));
        if (!bits) return err_set(ENOMEM, "out of memory for the dirty log");
        struct kvm_dirty_log dl = {.slot = i, .dirty_bitmap = bits};
        r = xioctl(p->fd, KVM_GET_DIRTY_LOG, &dl);
        if (r < 0) {
            free(bits);
            return err_set(-r, "KVM_GET_DIRTY_LOG slot %u failed: %s", i, strerror(-r));
        }
        or_bits(bitmap, nwords, (uint64_t)(s->hva - vm->mem.base) >> GUEST_PAGE_SHIFT, bits,
                npages);
        free(bits);
    }
    guest_dirty_collect(&vm->mem, bitmap, nwords); /* device and emulator writes */
    return 0;
}

static int kvm_get_lapic(struct vcpu *cpu, struct lapic_state *s)
{
    struct kvm_vcpu_priv *c = cpu->bk;
    struct kvm_lapic_state k;
    int r = xioctl(c->fd, KVM_GET_LAPIC, &k);
    if (r < 0) return err_set(-r, "KVM_GET_LAPIC failed: %s", strerror(-r));
    _Static_assert(sizeof(k.regs) == sizeof(s->regs), "LAPIC page size");
    memcpy(s->regs, k.regs, sizeof(s->regs));
    return 0;
}

static int kvm_set_lapic(struct vcpu *cpu, const struct lapic_state *s)
{
    struct kvm_vcpu_priv *c = cpu->bk;
    struct kvm_lapic_state k;
    memcpy(k.regs, s->regs, sizeof(k.regs));
    int r = xioctl(c->fd, KVM_SET_LAPIC, &k);
    return r < 0 ? err_set(-r, "KVM_SET_LAPIC failed: %s", strerror(-r)) : 0;
}

static int kvm_get_ioapic(struct vm *vm, struct ioapic_state *s)
{
    struct kvm_vm_priv *p = vm->bk;
    struct kvm_irqchip chip = {.chip_id = KVM_IRQCHIP_IOAPIC};
    int r = xioctl(p->fd, KVM_GET_IRQCHIP, &chip);
    if (r < 0) return err_set(-r, "KVM_GET_IRQCHIP (IOAPIC) failed: %s", strerror(-r));
    const struct kvm_ioapic_state *k = &chip.chip.ioapic;
    s->base_address = k->base_address;
    s->ioregsel = k->ioregsel;
    s->id = k->id;
    s->irr = k->irr;
    for (unsigned i = 0; i < IOAPIC_NUM_PINS; i++)
        s->redirtbl[i] = k->redirtbl[i].bits;
    return 0;
}

static int kvm_set_ioapic(struct vm *vm, const struct ioapic_state *s)
{
    struct kvm_vm_priv *p = vm->bk;
    struct kvm_irqchip chip = {.chip_id = KVM_IRQCHIP_IOAPIC};
    struct kvm_ioapic_state *k = &chip.chip.ioapic;
    k->base_address = s->base_address;
    k->ioregsel = s->ioregsel;
    k->id = s->id;
    k->irr = s->irr;
    for (unsigned i = 0; i < IOAPIC_NUM_PINS; i++)
        k->redirtbl[i].bits = s->redirtbl[i];
    int r = xioctl(p->fd, KVM_SET_IRQCHIP, &chip);
    return r < 0 ? err_set(-r, "KVM_SET_IRQCHIP (IOAPIC) failed: %s", strerror(-r)) : 0;
}

static int kvm_get_pit(struct vm *vm, struct pit_state *s)
{
    struct kvm_vm_priv *p = vm->bk;
    struct kvm_pit_state2 k;
    int r = xioctl(p->fd, KVM_GET_PIT2, &k);
    if (r < 0) return err_set(-r, "KVM_GET_PIT2 failed: %s", strerror(-r));
    for (unsigned i = 0; i < 3; i++) {
        const struct kvm_pit_channel_state *a = &k.channels[i];
        s->channels[i] = (struct pit_channel_state){
            .count = a->count,
            .latched_count = a->latched_count,
            .count_latched = a->count_latched,
            .status_latched = a->status_latched,
            .status = a->status,
            .read_state = a->read_state,
            .write_state = a->write_state,
            .write_latch = a->write_latch,
            .rw_mode = a->rw_mode,
            .mode = a->mode,
            .bcd = a->bcd,
            .gate = a->gate,
            /* KVM keeps host CLOCK_MONOTONIC ns; the neutral form is ns of the VM's clock */
            .count_load_time = a->count_load_time - (int64_t)p->clock_base_ns};
    }
    s->flags = k.flags;
    return 0;
}

static int kvm_set_pit(struct vm *vm, const struct pit_state *s)
{
    struct kvm_vm_priv *p = vm->bk;
    struct kvm_pit_state2 k;
    memset(&k, 0, sizeof(k));
    for (unsigned i = 0; i < 3; i++) {
        const struct pit_channel_state *a = &s->channels[i];
        k.channels[i] = (struct kvm_pit_channel_state){
            .count = a->count,
            .latched_count = a->latched_count,
            .count_latched = a->count_latched,
            .status_latched = a->status_latched,
            .status = a->status,
            .read_state = a->read_state,
            .write_state = a->write_state,
            .write_latch = a->write_latch,
            .rw_mode = a->rw_mode,
            .mode = a->mode,
            .bcd = a->bcd,
            .gate = a->gate,
            .count_load_time = a->count_load_time + (int64_t)p->clock_base_ns};
    }
    k.flags = s->flags;
    int r = xioctl(p->fd, KVM_SET_PIT2, &k);
    return r < 0 ? err_set(-r, "KVM_SET_PIT2 failed: %s", strerror(-r)) : 0;
}

static int kvm_set_debug(struct vcpu *cpu, const struct vcpu_debug *d)
{
    struct kvm_vcpu_priv *c = cpu->bk;
    if (d->nbp > 4) return err_set(EINVAL, "at most 4 hardware breakpoints, not %u", d->nbp);
    struct kvm_guest_debug g;
    memset(&g, 0, sizeof(g));
    if (d->single_step || d->nbp) {
        g.control = KVM_GUESTDBG_ENABLE;
        if (d->single_step) g.control |= KVM_GUESTDBG_SINGLESTEP;
        if (d->nbp) g.control |= KVM_GUESTDBG_USE_HW_BP;
        for (unsigned i = 0; i < d->nbp; i++) {
            g.arch.debugreg[i] = d->bp[i];
            g.arch.debugreg[7] |= 1ull << (2 * i); /* Ln: local enable, R/W=00 (execute) */
        }
    }
    int r = xioctl(c->fd, KVM_SET_GUEST_DEBUG, &g);
    return r < 0 ? err_set(-r, "KVM_SET_GUEST_DEBUG failed: %s", strerror(-r)) : 0;
}

const struct cpu_backend cpu_backend_kvm = {
    .name = "kvm",
    .probe = kvm_probe,
    .vm_create = kvm_vm_create,
    .vm_destroy = kvm_vm_destroy,
    .vcpu_create = kvm_vcpu_create,
    .vcpu_destroy = kvm_vcpu_destroy,
    .vcpu_run = kvm_vcpu_run,
    .vcpu_kick = kvm_vcpu_kick,
    .get_state = kvm_get_state,
    .set_state = kvm_set_state,
    .irq_line = kvm_irq_line,
    .dirty_log = kvm_dirty_log,
    .get_lapic = kvm_get_lapic,
    .set_lapic = kvm_set_lapic,
    .get_ioapic = kvm_get_ioapic,
    .set_ioapic = kvm_set_ioapic,
    .get_pit = kvm_get_pit,
    .set_pit = kvm_set_pit,
    .set_debug = kvm_set_debug,
};
