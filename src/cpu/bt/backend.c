/* The software CPU as a backend (struct cpu_backend cpu_backend_bt): per-VM state (code-page
 * watch, user-space interrupt controllers and PIT), vCPU creation and reset, the run loop with
 * HLT waits and kicks, state get/set with validation, interrupt lines, dirty log, debug
 * single-step, and bt_emulate_one() for the KVM backend.
 *
 * Trust: state handed to set_state may come from a snapshot file: values hardware would refuse
 * (reserved CR0/CR4/EFER bits, non-canonical bases, inconsistent long mode) are rejected with a
 * clear error before anything is copied. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cpu/bt/btvm.h"
#include "cpu/bt/irqglue.h"
#include "cpu/bt/jit.h"
#include "cpu/bt/sys.h"
#include "util/log.h"

#define BT_RUN_BUDGET 50000 /* instructions between checks of kicks, timers and stop requests */

struct bt_vcpu {
    struct bt_cpu cpu;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool wake; /* under lock: something became pending since the vCPU last looked */
    bool single_step;
};

struct bt_vm *bt_vm_of(const struct vm *vm)
{
    return vm && vm->backend == &cpu_backend_bt ? vm->bk : NULL;
}

static struct bt_vcpu *bvc(struct vcpu *cpu)
{
    return cpu->bk;
}

static int bt_probe(void)
{
    return 0;
}

static int bt_vm_create(struct vm *vm)
{
    struct bt_vm *bv = calloc(1, sizeof(*bv));
    if (!bv) return err_set(ENOMEM, "software CPU: cannot allocate the VM state");
    bv->vm = vm;
    int r = bt_watch_init(bv);
    if (r < 0) {
        free(bv);
        return r;
    }
    vm->bk = bv;
    if (vm->tsc_khz == 0) vm->tsc_khz = 2000000; /* a 2 GHz TSC unless the machine chose one */
    r = bt_glue_vm_create(vm);
    if (r < 0) {
        bt_watch_destroy(bv);
        free(bv);
        vm->bk = NULL;
        return r;
    }
    vm->mem.write_hook = bt_watch_external_write;
    vm->mem.write_hook_ctx = bv;
    return 0;
}

static void bt_vm_destroy(struct vm *vm)
{
    struct bt_vm *bv = vm->bk;
    if (!bv) return;
    vm->mem.write_hook = NULL;
    vm->mem.write_hook_ctx = NULL;
    bt_glue_vm_destroy(vm);
    bt_watch_destroy(bv);
    free(bv);
    vm->bk = NULL;
}

static int bt_vcpu_create(struct vcpu *cpu)
{
    struct vm *vm = cpu->vm;
    struct bt_vm *bv = vm->bk;
    if (cpu->id >= VM_MAX_CPUS) return err_set(EINVAL, "vCPU id %u out of range", cpu->id);
    struct bt_vcpu *v = aligned_alloc(_Alignof(struct bt_vcpu), sizeof(*v)); /* bt_cpu.tlb */
    if (!v) return err_set(ENOMEM, "software CPU: cannot allocate vCPU %u", cpu->id);
    memset(v, 0, sizeof(*v));
    struct bt_cpu *c = &v->cpu;
    c->vm = vm;
    c->vcpu = cpu;
    c->index = cpu->id;
    x86_state_reset(&c->s, cpu->id, cpu->id == 0);
    c->halted = c->s.mp_state != MP_RUNNABLE;
    pthread_mutex_init(&v->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&v->cond, &ca);
    pthread_condattr_destroy(&ca);
    int r = bt_core_init(c);
    if (r == 0) r = bt_mmu_init(c);
    if (r == 0) r = bt_glue_lapic_create(c);
    if (r < 0) {
        bt_mmu_destroy(c);
        bt_core_destroy(c);
        free(v);
        return r;
    }
    bt_fpu_reset(c);
    bt_update_mode(c);
    cpu->bk = v;
    if (bv) bv->cpu[cpu->id] = c;
    return 0;
}

static void bt_vcpu_destroy(struct vcpu *cpu)
{
    struct bt_vcpu *v = bvc(cpu);
    if (!v) return;
    struct bt_vm *bv = cpu->vm->bk;
    if (bv) bv->cpu[cpu->id] = NULL;
    bt_glue_lapic_destroy(&v->cpu);
    bt_mmu_destroy(&v->cpu);
    bt_core_destroy(&v->cpu);
    pthread_cond_destroy(&v->cond);
    pthread_mutex_destroy(&v->lock);
    free(v);
    cpu->bk = NULL;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Halted: sleep until a kick (interrupt, IPI, stop request) or the next timer event. */
static void halt_wait(struct bt_vcpu *v)
{
    struct bt_cpu *c = &v->cpu;
    /* timer deadlines are in virtual ns; the wait is the same span of host time */
    int64_t ev = bt_glue_next_event_ns(c), vnow = bt_glue_now();
    int64_t span = 10000000; /* re-check at least every 10 ms */
    if (ev - vnow < span) span = ev - vnow;
    if (span <= 0) return;
    uint64_t until = now_ns() + (uint64_t)span;
    struct timespec ts = {.tv_sec = (time_t)(until / 1000000000ull),
                          .tv_nsec = (long)(until % 1000000000ull)};
    pthread_mutex_lock(&v->lock);
    if (!atomic_load(&c->kicked) && !v->wake) pthread_cond_timedwait(&v->cond, &v->lock, &ts);
    pthread_mutex_unlock(&v->lock);
}

void bt_vcpu_wake(struct vcpu *cpu)
{
    struct bt_vcpu *v = cpu ? bvc(cpu) : NULL;
    if (!v) return;
    pthread_mutex_lock(&v->lock);
    v->wake = true;
    bt_jit_poke(&v->cpu); /* running: leave translated code for the loop's event check */
    pthread_cond_signal(&v->cond);
    pthread_mutex_unlock(&v->lock);
}

static int bt_vcpu_run(struct vcpu *cpu, struct vcpu_exit *exit)
{
    struct bt_vcpu *v = bvc(cpu);
    struct bt_cpu *c = &v->cpu;
    memset(exit, 0, sizeof(*exit));
    exit->reason = VCPU_EXIT_NONE;
    c->exit = exit;
    for (;;) {
        if (atomic_exchange(&c->kicked, false) || vm_stopping(cpu->vm)) break;
        if (c->shutdown) {
            exit->reason = VCPU_EXIT_SHUTDOWN;
            break;
        }
        bt_glue_timers(c);
        if (c->halted || c->s.mp_state == MP_WAIT_FOR_SIPI) {
            pthread_mutex_lock(&v->lock);
            v->wake = false; /* anything arriving from here on wakes the wait below */
            pthread_mutex_unlock(&v->lock);
            if (bt_check_interrupts(c) && c->s.mp_state != MP_WAIT_FOR_SIPI) {
                c->halted = false;
                c->s.mp_state = MP_RUNNABLE;
            } else if (c->s.mp_state == MP_RUNNABLE && !c->halted) {
                continue; /* SIPI started it */
            } else {
                halt_wait(v);
            }
            continue;
        }
        c->exit_now = false;
        bt_exec(c, v->single_step ? 1 : BT_RUN_BUDGET);
        if (c->shutdown) {
            exit->reason = VCPU_EXIT_SHUTDOWN;
            break;
        }
        if (exit->reason == VCPU_EXIT_INTERNAL) break;
        if (v->single_step) {
            exit->reason = VCPU_EXIT_DEBUG;
            break;
        }
    }
    c->exit = NULL;
    return 0;
}

static void bt_vcpu_kick(struct vcpu *cpu)
{
    struct bt_vcpu *v = bvc(cpu);
    if (!v) return;
    pthread_mutex_lock(&v->lock);
    atomic_store(&v->cpu.kicked, true);
    bt_jit_poke(&v->cpu);
    pthread_cond_signal(&v->cond);
    pthread_mutex_unlock(&v->lock);
}

static int bt_get_state(struct vcpu *cpu, struct x86_state *s)
{
    struct bt_cpu *c = &bvc(cpu)->cpu;
    *s = c->s;
    s->tsc = bt_rdtsc(c);
    s->cr8 = bt_glue_get_cr8(c);
    s->tsc_deadline = bt_glue_get_tsc_deadline(c);
    if (c->halted && s->mp_state == MP_RUNNABLE) s->mp_state = MP_HALTED;
    return 0;
}

/* Rejects states the hardware could not be in (or that VM entry would refuse). */
static int validate_state(const struct x86_state *s)
{
    const uint64_t cr4_ok = X86_CR4_TSD | X86_CR4_DE | X86_CR4_PSE | X86_CR4_PAE | X86_CR4_MCE |
                            X86_CR4_PGE | X86_CR4_PCE | X86_CR4_OSFXSR | X86_CR4_OSXMMEXCPT;
    if (s->cr0 >> 32)
        return err_set(EINVAL, "vCPU state: CR0 %#llx has reserved bits set",
                       (unsigned long long)s->cr0);
    if ((s->cr0 & X86_CR0_PG) && !(s->cr0 & X86_CR0_PE))
        return err_set(EINVAL, "vCPU state: CR0.PG without CR0.PE");
    if (s->cr4 & ~cr4_ok)
        return err_set(EINVAL, "vCPU state: CR4 %#llx has bits the CPU model lacks",
                       (unsigned long long)s->cr4);
    if (s->efer & ~(X86_EFER_SCE | X86_EFER_LME | X86_EFER_LMA | X86_EFER_NXE))
        return err_set(EINVAL, "vCPU state: EFER %#llx has reserved bits set",
                       (unsigned long long)s->efer);
    bool lma = s->efer & X86_EFER_LMA;
    if (lma != ((s->efer & X86_EFER_LME) && (s->cr0 & X86_CR0_PG)))
        return err_set(EINVAL, "vCPU state: EFER.LMA inconsistent with EFER.LME and CR0.PG");
    if (lma && !(s->cr4 & X86_CR4_PAE))
        return err_set(EINVAL, "vCPU state: long mode without CR4.PAE");
    if (lma && s->seg[SEG_CS].l && s->seg[SEG_CS].db)
        return err_set(EINVAL, "vCPU state: CS has both L and D set");
    for (int k = 0; k < SEG_COUNT; k++)
        if (!x86_is_canonical(s->seg[k].base))
            return err_set(EINVAL, "vCPU state: segment %d base %#llx is not canonical", k,
                           (unsigned long long)s->seg[k].base);
    if (!x86_is_canonical(s->gdtr.base) || !x86_is_canonical(s->idtr.base) ||
        !x86_is_canonical(s->kernel_gs_base) || !x86_is_canonical(s->lstar))
        return err_set(EINVAL, "vCPU state: a descriptor-table or MSR base is not canonical");
    if (lma && s->seg[SEG_CS].l && !x86_is_canonical(s->rip))
        return err_set(EINVAL, "vCPU state: RIP %#llx is not canonical",
                       (unsigned long long)s->rip);
    if (s->mp_state > MP_STOPPED)
        return err_set(EINVAL, "vCPU state: bad mp_state %u", s->mp_state);
    if (s->cr8 > 15)
        return err_set(EINVAL, "vCPU state: CR8 %#llx out of range", (unsigned long long)s->cr8);
    return 0;
}

static int bt_set_state(struct vcpu *cpu, const struct x86_state *s)
{
    int r = validate_state(s);
    if (r < 0) return r;
    struct bt_cpu *c = &bvc(cpu)->cpu;
    c->s = *s;
    c->s.rflags = (c->s.rflags & 0x3f7fd5ull) | X86_FLAG_FIXED;
    c->tsc_offset = 0;
    c->tsc_offset = s->tsc - bt_rdtsc(c);
    bt_glue_set_cr8(c, s->cr8);
    if (c->lapic) {
        if (!bt_glue_set_apic_base(c, s->apic_base, 52))
            return err_set(EINVAL, "vCPU state: IA32_APIC_BASE %#llx is invalid",
                           (unsigned long long)s->apic_base);
        bt_glue_set_wait_for_sipi(c, s->mp_state == MP_WAIT_FOR_SIPI);
        bt_glue_set_tsc_deadline(c, s->tsc_deadline);
    }
    c->halted = s->mp_state == MP_HALTED || s->mp_state == MP_WAIT_FOR_SIPI;
    if (s->mp_state == MP_HALTED) c->s.mp_state = MP_RUNNABLE;
    c->shutdown = false;
    bt_update_mode(c);
    bt_tlb_flush(c, true);
    bt_cache_flush(c);
    return 0;
}

static int bt_irq_line(struct vm *vm, unsigned gsi, int level)
{
    return bt_glue_irq_line(vm, gsi, level);
}

static int bt_dirty_log(struct vm *vm, uint64_t *bitmap, size_t nwords)
{
    if (!vm->mem.dirty_enabled) {
        /* Logging starts now: everything counts as dirty for the first round. */
        int r = guest_dirty_enable(&vm->mem);
        if (r < 0) return r;
        bt_mmu_dirty_started(bt_vm_of(vm)); /* translated stores log from now on */
        size_t pages = vm->mem.size >> GUEST_PAGE_SHIFT;
        for (size_t i = 0; i < nwords && i * 64 < pages; i++)
            bitmap[i] |= pages - i * 64 >= 64 ? ~0ull : ((1ull << (pages - i * 64)) - 1);
        return 0;
    }
    guest_dirty_collect(&vm->mem, bitmap, nwords);
    return 0;
}

static int bt_get_lapic(struct vcpu *cpu, struct lapic_state *s)
{
    return bt_glue_get_lapic(&bvc(cpu)->cpu, s);
}
static int bt_set_lapic(struct vcpu *cpu, const struct lapic_state *s)
{
    return bt_glue_set_lapic(&bvc(cpu)->cpu, s);
}
static int bt_get_ioapic(struct vm *vm, struct ioapic_state *s)
{
    return bt_glue_get_ioapic(vm, s);
}
static int bt_set_ioapic(struct vm *vm, const struct ioapic_state *s)
{
    return bt_glue_set_ioapic(vm, s);
}
static int bt_get_pit(struct vm *vm, struct pit_state *s)
{
    return bt_glue_get_pit(vm, s);
}
static int bt_set_pit(struct vm *vm, const struct pit_state *s)
{
    return bt_glue_set_pit(vm, s);
}

static int bt_set_debug(struct vcpu *cpu, const struct vcpu_debug *d)
{
    bvc(cpu)->single_step = d->single_step;
    if (d->nbp) return err_set(ENOTSUP, "software CPU: breakpoints are not supported yet");
    return 0;
}

const struct cpu_backend cpu_backend_bt = {
    .name = "bt",
    .probe = bt_probe,
    .vm_create = bt_vm_create,
    .vm_destroy = bt_vm_destroy,
    .vcpu_create = bt_vcpu_create,
    .vcpu_destroy = bt_vcpu_destroy,
    .vcpu_run = bt_vcpu_run,
    .vcpu_kick = bt_vcpu_kick,
    .get_state = bt_get_state,
    .set_state = bt_set_state,
    .irq_line = bt_irq_line,
    .dirty_log = bt_dirty_log,
    .get_lapic = bt_get_lapic,
    .set_lapic = bt_set_lapic,
    .get_ioapic = bt_get_ioapic,
    .set_ioapic = bt_set_ioapic,
    .get_pit = bt_get_pit,
    .set_pit = bt_set_pit,
    .set_debug = bt_set_debug,
};

int bt_emulate_one(struct vm *vm, unsigned cpu_index, struct x86_state *s)
{
    if (cpu_index >= VM_MAX_CPUS)
        return err_set(EINVAL, "emulate: vCPU %u out of range", cpu_index);
    struct bt_cpu *c = aligned_alloc(_Alignof(struct bt_cpu), sizeof(*c)); /* bt_cpu.tlb */
    if (!c) return err_set(ENOMEM, "emulate: cannot allocate a software CPU");
    memset(c, 0, sizeof(*c));
    c->vm = vm;
    c->vcpu = vm->vcpu[cpu_index];
    c->index = cpu_index;
    c->s = *s;
    int r = bt_core_init(c);
    if (r == 0) r = bt_mmu_init(c);
    if (r == 0) {
        struct vcpu_exit exit = {.reason = VCPU_EXIT_NONE};
        c->exit = &exit;
        c->stop_after_event = true; /* one instruction, or its exception: then back to KVM */
        c->kvm_assist = true;
        c->tsc_offset = s->tsc - bt_rdtsc(c);
        c->host_isa = true; /* the guest sees (close to) the host's CPUID: see hostisa.c */
        bt_xsave_guest_view(c);
        bt_update_mode(c);
        bt_exec(c, 1);
        if (c->shutdown) {
            r = err_set(ESHUTDOWN, "emulating the instruction at %#llx ended in a triple fault",
                        (unsigned long long)s->rip);
        } else if (exit.reason == VCPU_EXIT_INTERNAL) {
            r = err_set(EIO, "the software CPU could not emulate the instruction at %#llx",
                        (unsigned long long)s->rip);
        } else {
            *s = c->s;
            s->tsc = bt_rdtsc(c);
            if (c->halted && s->mp_state == MP_RUNNABLE) s->mp_state = MP_HALTED;
        }
    }
    bt_mmu_destroy(c);
    bt_core_destroy(c);
    free(c);
    return r;
}
