/* User-space xAPIC (see lapic.h).  Trusts nothing: guest register writes are masked to their
 * defined bits, ICR commands with illegal vectors are refused with the SDM's ESR bits, and
 * restored state is validated before it replaces anything. */
#include "devices/lapic.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/cpu.h"
#include "devices/vclock.h"
#include "machine/layout.h"
#include "util/log.h"

#define R(l, off) ((l)->st.regs[(off) >> 2])

struct lapic {
    pthread_mutex_t lock;
    struct lapic_state st; /* architectural registers; TMCCT and PPR are computed */
    struct vm *vm;
    struct lapic_bus *bus;
    unsigned slot;
    bool has_tsc_deadline; /* CPUID.01H:ECX[24]; without it LVT timer bit 18 is reserved */
    uint64_t base;         /* IA32_APIC_BASE */

    /* timer: next expiry (INT64_MAX: not armed) and period (0: one-shot or TSC deadline) */
    int64_t timer_expire, timer_period;
    uint64_t tsc_deadline;
    uint32_t esr_pending; /* errors since the last ESR write */

    bool nmi, init, wait_sipi;
    int sipi; /* pending SIPI vector or -1 */

    /* read by other threads without the lock */
    _Atomic int64_t next_event;
    _Atomic bool attention;
    _Atomic uint32_t m_id, m_ldr, m_dfr; /* ID, LDR, DFR mirrors for destination matching */
    _Atomic bool m_hw, m_sw;             /* hardware-enabled (APIC_BASE), software-enabled (SVR) */
    _Atomic uint64_t m_base;             /* IA32_APIC_BASE */

    void (*kick)(void *ctx);
    void *kick_ctx;
};

/* ---- vector bitmaps (ISR/TMR/IRR: eight 32-bit registers, 16 bytes apart) ---- */

static inline uint32_t *vec_word(struct lapic *l, unsigned base, int v)
{
    return &l->st.regs[(base >> 2) + ((unsigned)v >> 5) * 4];
}
static inline void vec_set(struct lapic *l, unsigned base, int v)
{
    *vec_word(l, base, v) |= 1u << (v & 31);
}
static inline void vec_clear(struct lapic *l, unsigned base, int v)
{
    *vec_word(l, base, v) &= ~(1u << (v & 31));
}
static inline bool vec_test(struct lapic *l, unsigned base, int v)
{
    return *vec_word(l, base, v) & (1u << (v & 31));
}
static int vec_highest(const struct lapic_state *st, unsigned base)
{
    for (int i = 7; i >= 0; i--) {
        uint32_t w = st->regs[(base >> 2) + i * 4];
        if (w) return i * 32 + 31 - __builtin_clz(w);
    }
    return -1;
}

static uint32_t compute_ppr(const struct lapic_state *st)
{
    uint32_t tpr = st->regs[APIC_TPR >> 2] & 0xff;
    int isrv = vec_highest(st, APIC_ISR);
    uint32_t isr_class = isrv < 0 ? 0 : ((uint32_t)isrv & 0xf0);
    return (tpr & 0xf0) >= isr_class ? tpr : isr_class;
}

/* Vector the CPU would take now, or -1 (lock held). */
static int deliverable_locked(struct lapic *l)
{
    if (!(l->base & APIC_BASE_ENABLE)) return -1;
    int v = vec_highest(&l->st, APIC_IRR);
    if (v < 0) return -1;
    if (((uint32_t)v & 0xf0) <= (R(l, APIC_PPR) & 0xf0)) return -1;
    return v;
}

/* Recomputes PPR and the lock-free "something for the CPU" flag after any change. */
static void refresh_locked(struct lapic *l)
{
    R(l, APIC_PPR) = compute_ppr(&l->st);
    bool a = deliverable_locked(l) >= 0 || l->nmi || l->init || (l->wait_sipi && l->sipi >= 0);
    atomic_store_explicit(&l->attention, a, memory_order_release);
}

static void sync_mirrors_locked(struct lapic *l)
{
    atomic_store_explicit(&l->m_id, R(l, APIC_ID) >> 24, memory_order_relaxed);
    atomic_store_explicit(&l->m_ldr, R(l, APIC_LDR), memory_order_relaxed);
    atomic_store_explicit(&l->m_dfr, R(l, APIC_DFR), memory_order_relaxed);
    atomic_store_explicit(&l->m_hw, (l->base & APIC_BASE_ENABLE) != 0, memory_order_relaxed);
    atomic_store_explicit(&l->m_base, l->base, memory_order_release);
    atomic_store_explicit(&l->m_sw, (R(l, APIC_SVR) & APIC_SVR_ENABLE) != 0, memory_order_relaxed);
}

static void kick(struct lapic *l)
{
    if (l->kick) l->kick(l->kick_ctx);
}

/* ---- timer ---- */

static unsigned timer_mode(struct lapic *l)
{
    return (R(l, APIC_LVTT) >> APIC_TIMER_MODE_SHIFT) & 3;
}

/* Divide configuration bits 0,1,3 -> log2 of the divisor (SDM Figure 10-10): 0b111 is 1. */
static unsigned div_shift(uint32_t tdcr)
{
    unsigned v = ((tdcr & 8) >> 1) | (tdcr & 3);
    return (v + 1) & 7;
}

static void set_next_event_locked(struct lapic *l)
{
    atomic_store_explicit(&l->next_event, l->timer_expire, memory_order_release);
}

static void timer_stop_locked(struct lapic *l)
{
    l->timer_expire = INT64_MAX;
    l->timer_period = 0;
    set_next_event_locked(l);
}

static int64_t sat_add(int64_t a, int64_t b)
{
    return a > INT64_MAX - b ? INT64_MAX : a + b;
}

/* Starts counting down `count` (in timer-bus units before division) from now. */
static void timer_start_locked(struct lapic *l, uint32_t count, int64_t now)
{
    if (!count) {
        timer_stop_locked(l);
        return;
    }
    unsigned sh = div_shift(R(l, APIC_TDCR));
    int64_t dur = (int64_t)count << sh;
    l->timer_period = 0;
    if (timer_mode(l) == APIC_TIMER_PERIODIC) {
        int64_t period = (int64_t)R(l, APIC_TMICT) << sh;
        l->timer_period = MAX(period, (int64_t)LAPIC_MIN_PERIOD_NS);
        if (count == R(l, APIC_TMICT)) dur = l->timer_period;
    }
    l->timer_expire = sat_add(now, dur);
    set_next_event_locked(l);
}

static uint32_t current_count_locked(struct lapic *l, int64_t now)
{
    if (timer_mode(l) == APIC_TIMER_TSCDEADLINE || l->timer_expire == INT64_MAX) return 0;
    int64_t rem = l->timer_expire - now;
    if (rem <= 0) {
        if (!l->timer_period) return 0;
        /* periodic and not yet updated: where it is in the current period */
        rem = l->timer_period - (now - l->timer_expire) % l->timer_period;
    }
    uint64_t c = (uint64_t)rem >> div_shift(R(l, APIC_TDCR));
    return c > R(l, APIC_TMICT) ? R(l, APIC_TMICT) : (uint32_t)c;
}

/* ---- acceptance ---- */

/* An error the APIC detected: logged for the next ESR write, and the LVT error interrupt. */
static void apic_error_locked(struct lapic *l, uint32_t bits)
{
    l->esr_pending |= bits;
    uint32_t lvt = R(l, APIC_LVTERR);
    if (!(lvt & APIC_LVT_MASKED) && (lvt & 0xff) >= 16) vec_set(l, APIC_IRR, (int)(lvt & 0xff));
    refresh_locked(l);
}

static bool accept_fixed_locked(struct lapic *l, int v, bool level_trig)
{
    if (v < 16) {
        apic_error_locked(l, APIC_ESR_RECV_ILLEGAL_VECTOR);
        return false;
    }
    vec_set(l, APIC_IRR, v);
    if (level_trig)
        vec_set(l, APIC_TMR, v);
    else
        vec_clear(l, APIC_TMR, v);
    refresh_locked(l);
    return true;
}

/* The local timer's interrupt when the count reaches zero (lock held); true if IRR was set. */
static bool timer_fire_locked(struct lapic *l)
{
    uint32_t lvt = R(l, APIC_LVTT);
    if (lvt & APIC_LVT_MASKED) return false;
    return accept_fixed_locked(l, (int)(lvt & 0xff), false);
}

/* ---- reset ---- */

static void reset_regs_locked(struct lapic *l, unsigned id)
{
    memset(&l->st, 0, sizeof(l->st));
    R(l, APIC_ID) = id << 24;
    R(l, APIC_LVR) = APIC_VERSION | (APIC_MAX_LVT << 16);
    R(l, APIC_DFR) = 0xffffffffu;
    R(l, APIC_SVR) = 0xff;
    static const unsigned lvts[] = {APIC_LVTT, APIC_LVTTHMR, APIC_LVTPC,
                                    APIC_LVT0, APIC_LVT1,    APIC_LVTERR};
    for (unsigned i = 0; i < ARRAY_SIZE(lvts); i++)
        R(l, lvts[i]) = APIC_LVT_MASKED;
    l->tsc_deadline = 0;
    l->esr_pending = 0;
    timer_stop_locked(l);
    sync_mirrors_locked(l);
    refresh_locked(l);
}

/* ---- bus ---- */

void lapic_bus_init(struct lapic_bus *bus, void (*eoi)(void *ctx, int vector), void *eoi_ctx)
{
    for (unsigned i = 0; i < LAPIC_BUS_MAX; i++)
        atomic_store(&bus->cpu[i], NULL);
    bus->eoi = eoi;
    bus->eoi_ctx = eoi_ctx;
}

static bool dest_match(struct lapic *l, const struct apic_irq *irq, struct lapic *src)
{
    if (!atomic_load_explicit(&l->m_hw, memory_order_relaxed)) return false;
    switch (irq->shorthand) {
    case APIC_SH_SELF: return l == src;
    case APIC_SH_ALL: return true;
    case APIC_SH_OTHERS: return l != src;
    default: break;
    }
    if (!irq->logical)
        return irq->dest == 0xff ||
               atomic_load_explicit(&l->m_id, memory_order_relaxed) == irq->dest;
    uint32_t ldr = atomic_load_explicit(&l->m_ldr, memory_order_relaxed) >> 24;
    uint32_t model = atomic_load_explicit(&l->m_dfr, memory_order_relaxed) >> 28;
    if (model == 0xf) return (ldr & irq->dest) != 0; /* flat: a bit per APIC */
    if (model == 0x0) {                              /* cluster: cluster ID in 7:4, members 3:0 */
        if (irq->dest == 0xff) return true;
        return (irq->dest >> 4) == (ldr >> 4) && (irq->dest & ldr & 0xf);
    }
    return false;
}

/* One LAPIC receives a message; returns true if it took it. */
static bool lapic_receive(struct lapic *l, const struct apic_irq *irq)
{
    bool taken = false;
    pthread_mutex_lock(&l->lock);
    bool hw = l->base & APIC_BASE_ENABLE, sw = R(l, APIC_SVR) & APIC_SVR_ENABLE;
    switch (irq->delivery_mode) {
    case APIC_DM_FIXED:
    case APIC_DM_LOWEST:
        if (hw && sw) taken = accept_fixed_locked(l, irq->vector, irq->level_trig);
        break;
    case APIC_DM_NMI:
        if (hw) taken = l->nmi = true;
        break;
    case APIC_DM_INIT:
        if (!hw) break;
        if (!irq->level && irq->level_trig) break; /* INIT level de-assert: arbitration IDs only */
        l->init = true;
        l->sipi = -1; /* a SIPI that came before this INIT is void */
        taken = true;
        break;
    case APIC_DM_SIPI:
        /* only recognised in wait-for-SIPI (or right behind an INIT not yet processed) */
        if (hw && (l->wait_sipi || l->init) && l->sipi < 0) {
            l->sipi = irq->vector;
            taken = true;
        }
        break;
    default: /* SMI (no SMM in the model), ExtINT (no 8259), reserved */
        log_debug("lapic %u: delivery mode %u ignored", (unsigned)(R(l, APIC_ID) >> 24),
                  irq->delivery_mode);
        break;
    }
    if (taken) refresh_locked(l);
    pthread_mutex_unlock(&l->lock);
    if (taken) kick(l);
    return taken;
}

int lapic_bus_deliver(struct lapic_bus *bus, const struct apic_irq *irq, struct lapic *src)
{
    if (!bus) return src && dest_match(src, irq, src) ? lapic_receive(src, irq) : 0;
    if (irq->delivery_mode == APIC_DM_LOWEST) {
        /* treated as fixed to the lowest-numbered matching APIC (no arbitration by priority) */
        struct lapic *best = NULL;
        uint32_t best_id = UINT32_MAX;
        for (unsigned i = 0; i < LAPIC_BUS_MAX; i++) {
            struct lapic *l = atomic_load_explicit(&bus->cpu[i], memory_order_acquire);
            if (!l || !dest_match(l, irq, src)) continue;
            if (!atomic_load_explicit(&l->m_sw, memory_order_relaxed)) continue;
            uint32_t id = atomic_load_explicit(&l->m_id, memory_order_relaxed);
            if (id < best_id) best = l, best_id = id;
        }
        return best ? lapic_receive(best, irq) : 0;
    }
    int n = 0;
    for (unsigned i = 0; i < LAPIC_BUS_MAX; i++) {
        struct lapic *l = atomic_load_explicit(&bus->cpu[i], memory_order_acquire);
        if (l && dest_match(l, irq, src)) n += lapic_receive(l, irq);
    }
    return n;
}

int lapic_bus_deliver_cb(void *ctx, const struct apic_irq *irq)
{
    return lapic_bus_deliver(ctx, irq, NULL);
}

/* ---- lifecycle ---- */

struct lapic *lapic_create(struct vm *vm, struct lapic_bus *bus, unsigned apic_id, bool bsp,
                           void (*kick_fn)(void *ctx), void *kick_ctx)
{
    if (apic_id > 0xfe) {
        err_set(EINVAL,
                "LAPIC: APIC ID %u does not fit xAPIC's 8-bit ID (0xff is broadcast); "
                "use fewer vCPUs",
                apic_id);
        return NULL;
    }
    struct lapic *l = calloc(1, sizeof(*l));
    if (!l) {
        err_set(ENOMEM, "LAPIC %u: out of memory", apic_id);
        return NULL;
    }
    pthread_mutex_init(&l->lock, NULL);
    l->vm = vm;
    l->bus = bus;
    l->kick = kick_fn;
    l->kick_ctx = kick_ctx;
    l->base = LAYOUT_LAPIC_BASE | APIC_BASE_ENABLE | (bsp ? APIC_BASE_BSP : 0);
    /* TSC-deadline mode exists only if the CPU model says so; with no model (tests), it does */
    l->has_tsc_deadline = true;
    if (vm && vm->cpuid.n) {
        l->has_tsc_deadline = false;
        for (unsigned i = 0; i < vm->cpuid.n && i < CPUID_MAX_ENTRIES; i++)
            if (vm->cpuid.e[i].function == 1) l->has_tsc_deadline = vm->cpuid.e[i].ecx & (1u << 24);
    }
    l->sipi = -1;
    l->wait_sipi = !bsp;
    reset_regs_locked(l, apic_id);
    if (bus) {
        unsigned i;
        for (i = 0; i < LAPIC_BUS_MAX; i++) {
            struct lapic *expect = NULL;
            if (atomic_compare_exchange_strong(&bus->cpu[i], &expect, l)) break;
        }
        if (i == LAPIC_BUS_MAX) {
            pthread_mutex_destroy(&l->lock);
            free(l);
            err_set(ENOSPC, "LAPIC %u: the APIC bus already has %d LAPICs; use fewer vCPUs",
                    apic_id, LAPIC_BUS_MAX);
            return NULL;
        }
        l->slot = i;
    }
    return l;
}

void lapic_destroy(struct lapic *l)
{
    if (!l) return;
    if (l->bus) {
        struct lapic *expect = l;
        atomic_compare_exchange_strong(&l->bus->cpu[l->slot], &expect, NULL);
    }
    pthread_mutex_destroy(&l->lock);
    free(l);
}

/* ---- registers ---- */

uint32_t lapic_reg_read(struct lapic *l, uint32_t off, int64_t now)
{
    uint32_t v = 0;
    if ((off & 0xf) || off >= 0x400) return 0;
    pthread_mutex_lock(&l->lock);
    switch (off) {
    case APIC_ID:
    case APIC_LVR:
    case APIC_TPR:
    case APIC_PPR:
    case APIC_LDR:
    case APIC_DFR:
    case APIC_SVR:
    case APIC_ESR:
    case APIC_ICR:
    case APIC_ICR2:
    case APIC_LVTT:
    case APIC_LVTTHMR:
    case APIC_LVTPC:
    case APIC_LVT0:
    case APIC_LVT1:
    case APIC_LVTERR:
    case APIC_TMICT:
    case APIC_TDCR: v = R(l, off); break;
    case APIC_TMCCT: v = current_count_locked(l, now); break;
    case APIC_APR:
    case APIC_EOI:
    case APIC_RRD: v = 0; break; /* APR has no meaning without bus arbitration; EOI write-only */
    default:
        if (off >= APIC_ISR && off < APIC_ESR)
            v = R(l, off); /* ISR, TMR, IRR */
        else
            log_debug("lapic: read of reserved register %#x", off);
        break;
    }
    pthread_mutex_unlock(&l->lock);
    return v;
}

/* Work a register write leaves for after the lock is dropped. */
struct deferred {
    int eoi_vector; /* level-triggered EOI to broadcast, or -1 */
    bool send;
    uint32_t icr_low, icr_high;
    bool kick;
};

static uint32_t lvt_write_mask(const struct lapic *l, uint32_t off)
{
    switch (off) {
    case APIC_LVTT:
        return 0xff | APIC_LVT_MASKED | ((l->has_tsc_deadline ? 3u : 1u) << APIC_TIMER_MODE_SHIFT);
    case APIC_LVTTHMR:
    case APIC_LVTPC: return 0x7ff | APIC_LVT_MASKED;
    case APIC_LVT0:
    case APIC_LVT1: return 0x7ff | (1u << 13) | APIC_LVT_LEVEL | APIC_LVT_MASKED;
    case APIC_LVTERR: return 0xff | APIC_LVT_MASKED;
    }
    return 0;
}

static void write_lvtt_locked(struct lapic *l, uint32_t val, int64_t now)
{
    unsigned old_mode = timer_mode(l), mode = (val >> APIC_TIMER_MODE_SHIFT) & 3;
    if (mode == 3) { /* reserved: keep the old mode rather than invent one */
        val = (val & ~(3u << APIC_TIMER_MODE_SHIFT)) | (old_mode << APIC_TIMER_MODE_SHIFT);
        mode = old_mode;
    }
    uint32_t cur = current_count_locked(l, now);
    R(l, APIC_LVTT) = val;
    if (mode == old_mode) return;
    if (mode == APIC_TIMER_TSCDEADLINE || old_mode == APIC_TIMER_TSCDEADLINE) {
        /* SDM 10.5.4.1: switching to or from TSC-deadline mode disarms the timer */
        R(l, APIC_TMICT) = 0;
        l->tsc_deadline = 0;
        timer_stop_locked(l);
    } else if (l->timer_expire != INT64_MAX || mode == APIC_TIMER_PERIODIC) {
        /* one-shot <-> periodic: the running count continues under the new mode */
        if (cur) timer_start_locked(l, cur, now);
    }
}

static void reg_write_locked(struct lapic *l, uint32_t off, uint32_t val, int64_t now,
                             struct deferred *d)
{
    bool sw = R(l, APIC_SVR) & APIC_SVR_ENABLE;
    switch (off) {
    case APIC_ID:
        R(l, APIC_ID) = val & 0xff000000u;
        sync_mirrors_locked(l);
        break;
    case APIC_TPR:
        R(l, APIC_TPR) = val & 0xff;
        refresh_locked(l);
        break;
    case APIC_EOI: {
        int v = vec_highest(&l->st, APIC_ISR);
        if (v < 0) break;
        vec_clear(l, APIC_ISR, v);
        if (vec_test(l, APIC_TMR, v)) d->eoi_vector = v;
        refresh_locked(l);
        break;
    }
    case APIC_LDR:
        R(l, APIC_LDR) = val & 0xff000000u;
        sync_mirrors_locked(l);
        break;
    case APIC_DFR:
        R(l, APIC_DFR) = (val & 0xf0000000u) | 0x0fffffffu;
        sync_mirrors_locked(l);
        break;
    case APIC_SVR:
        R(l, APIC_SVR) = val & 0x3ff; /* vector, APIC enable, focus checking */
        if (!(val & APIC_SVR_ENABLE)) {
            /* SDM 10.4.7.2: software disable masks every LVT entry */
            static const unsigned lvts[] = {APIC_LVTT, APIC_LVTTHMR, APIC_LVTPC,
                                            APIC_LVT0, APIC_LVT1,    APIC_LVTERR};
            for (unsigned i = 0; i < ARRAY_SIZE(lvts); i++)
                R(l, lvts[i]) |= APIC_LVT_MASKED;
        }
        sync_mirrors_locked(l);
        break;
    case APIC_ESR: /* a write latches the errors seen since the previous write */
        R(l, APIC_ESR) = l->esr_pending;
        l->esr_pending = 0;
        break;
    case APIC_ICR:
        /* vector, mode, dest mode, level, trigger, shorthand; delivery status stays 0 (idle)
         * because delivery is synchronous */
        R(l, APIC_ICR) = val & 0x000ccfffu;
        d->send = true;
        d->icr_low = R(l, APIC_ICR);
        d->icr_high = R(l, APIC_ICR2);
        break;
    case APIC_ICR2: R(l, APIC_ICR2) = val & 0xff000000u; break;
    case APIC_LVTT:
    case APIC_LVTTHMR:
    case APIC_LVTPC:
    case APIC_LVT0:
    case APIC_LVT1:
    case APIC_LVTERR: {
        uint32_t nv = val & lvt_write_mask(l, off);
        if (!sw) nv |= APIC_LVT_MASKED; /* cannot unmask while software-disabled */
        if (off == APIC_LVT0 || off == APIC_LVT1) nv |= R(l, off) & APIC_LVT_REMOTE_IRR;
        if (off == APIC_LVTT)
            write_lvtt_locked(l, nv, now);
        else
            R(l, off) = nv;
        break;
    }
    case APIC_TMICT:
        if (timer_mode(l) == APIC_TIMER_TSCDEADLINE) break; /* ignored in TSC-deadline mode */
        R(l, APIC_TMICT) = val;
        timer_start_locked(l, val, now);
        break;
    case APIC_TDCR: {
        uint32_t cur = current_count_locked(l, now);
        R(l, APIC_TDCR) = val & 0xb;
        /* the remaining count continues at the new rate */
        if (l->timer_expire != INT64_MAX && timer_mode(l) != APIC_TIMER_TSCDEADLINE)
            timer_start_locked(l, cur ? cur : 1, now);
        break;
    }
    default:
        log_debug("lapic: write %#x to read-only or reserved register %#x ignored", val, off);
        break;
    }
}

void lapic_reg_write(struct lapic *l, uint32_t off, uint32_t val, int64_t now)
{
    if ((off & 0xf) || off >= 0x400) return;
    struct deferred d = {.eoi_vector = -1};
    pthread_mutex_lock(&l->lock);
    reg_write_locked(l, off, val, now, &d);
    pthread_mutex_unlock(&l->lock);
    if (d.eoi_vector >= 0 && l->bus && l->bus->eoi) l->bus->eoi(l->bus->eoi_ctx, d.eoi_vector);
    if (d.send) lapic_send_ipi(l, d.icr_low, d.icr_high);
}

void lapic_send_ipi(struct lapic *l, uint32_t low, uint32_t high)
{
    struct apic_irq irq = {
        .vector = low & 0xff,
        .delivery_mode = (low >> 8) & 7,
        .logical = (low >> 11) & 1,
        .level = (low >> 14) & 1,
        .level_trig = (low >> 15) & 1,
        .shorthand = (low >> 18) & 3,
        .dest = high >> 24,
    };
    if ((irq.delivery_mode == APIC_DM_FIXED || irq.delivery_mode == APIC_DM_LOWEST) &&
        irq.vector < 16) {
        pthread_mutex_lock(&l->lock);
        apic_error_locked(l, APIC_ESR_SEND_ILLEGAL_VECTOR);
        pthread_mutex_unlock(&l->lock);
        kick(l);
        return;
    }
    if (irq.shorthand == APIC_SH_SELF && irq.delivery_mode != APIC_DM_FIXED) {
        log_debug("lapic: self IPI with delivery mode %u is invalid; dropped", irq.delivery_mode);
        return;
    }
    if (irq.delivery_mode != APIC_DM_INIT) irq.level = true; /* only INIT has a de-assert */
    lapic_bus_deliver(l->bus, &irq, l);
}

void lapic_mmio_read(struct lapic *l, uint32_t offset, uint8_t *data, unsigned size, int64_t now)
{
    memset(data, 0, size);
    offset &= 0xfff;
    unsigned within = offset & 0xf;
    if (offset >= 0x400 || size > 4 || within + size > 4) {
        log_debug("lapic: %u-byte read at %#x not supported; reads 0", size, offset);
        return;
    }
    uint32_t v = lapic_reg_read(l, offset & ~0xfu, now) >> (within * 8);
    for (unsigned i = 0; i < size; i++)
        data[i] = (uint8_t)(v >> (i * 8));
}

void lapic_mmio_write(struct lapic *l, uint32_t offset, const uint8_t *data, unsigned size,
                      int64_t now)
{
    offset &= 0xfff;
    if (size != 4 || (offset & 0xf) || offset >= 0x400) {
        log_debug("lapic: %u-byte write at %#x not supported; ignored", size, offset);
        return;
    }
    uint32_t v = (uint32_t)data[0] | (uint32_t)data[1] << 8 | (uint32_t)data[2] << 16 |
                 (uint32_t)data[3] << 24;
    lapic_reg_write(l, offset, v, now);
}

/* ---- MSRs ---- */

uint64_t lapic_get_base(struct lapic *l)
{
    return atomic_load_explicit(&l->m_base, memory_order_acquire);
}

uint64_t lapic_mmio_base(struct lapic *l)
{
    uint64_t b = lapic_get_base(l);
    return (b & APIC_BASE_ENABLE) ? (b & APIC_BASE_ADDR_MASK) : UINT64_MAX;
}

int lapic_set_base(struct lapic *l, uint64_t value, unsigned maxphyaddr)
{
    if (maxphyaddr < 32 || maxphyaddr > 52) maxphyaddr = 52;
    uint64_t allowed =
        APIC_BASE_BSP | APIC_BASE_ENABLE | (APIC_BASE_ADDR_MASK & ((1ull << maxphyaddr) - 1));
    if (value & ~allowed)
        return err_set(EINVAL,
                       "IA32_APIC_BASE %#llx sets reserved bits (x2APIC is not in the "
                       "CPU model)",
                       (unsigned long long)value);
    pthread_mutex_lock(&l->lock);
    bool was = l->base & APIC_BASE_ENABLE;
    l->base = value;
    if (was && !(value & APIC_BASE_ENABLE)) {
        /* SDM 10.4.3: a globally disabled APIC returns to its power-up state */
        reset_regs_locked(l, R(l, APIC_ID) >> 24);
        l->nmi = l->init = false;
        l->sipi = -1;
    }
    sync_mirrors_locked(l);
    refresh_locked(l);
    pthread_mutex_unlock(&l->lock);
    return 0;
}

uint64_t lapic_get_tsc_deadline(struct lapic *l)
{
    pthread_mutex_lock(&l->lock);
    uint64_t d = timer_mode(l) == APIC_TIMER_TSCDEADLINE ? l->tsc_deadline : 0;
    pthread_mutex_unlock(&l->lock);
    return d;
}

void lapic_set_tsc_deadline(struct lapic *l, uint64_t deadline, int64_t now, uint64_t tsc_now)
{
    bool fired = false;
    pthread_mutex_lock(&l->lock);
    if (timer_mode(l) != APIC_TIMER_TSCDEADLINE) goto out; /* SDM: ignored in other modes */
    l->tsc_deadline = deadline;
    if (!deadline) {
        timer_stop_locked(l);
    } else if (deadline <= tsc_now) {
        timer_stop_locked(l);
        l->tsc_deadline = 0;
        fired = timer_fire_locked(l);
    } else {
        uint64_t khz = l->vm ? l->vm->tsc_khz : 0;
        l->timer_period = 0;
        l->timer_expire = sat_add(now, vclock_ticks_to_ns(khz, deadline - tsc_now));
        set_next_event_locked(l);
    }
out:
    pthread_mutex_unlock(&l->lock);
    if (fired) kick(l);
}

/* ---- CPU side ---- */

bool lapic_attention(struct lapic *l)
{
    return atomic_load_explicit(&l->attention, memory_order_acquire);
}

const _Atomic bool *lapic_attention_flag(struct lapic *l)
{
    return &l->attention;
}

int lapic_pending_vector(struct lapic *l)
{
    pthread_mutex_lock(&l->lock);
    int v = deliverable_locked(l);
    pthread_mutex_unlock(&l->lock);
    return v;
}

void lapic_accept(struct lapic *l, int vector)
{
    if (vector < 16 || vector > 255) return;
    pthread_mutex_lock(&l->lock);
    if (vec_test(l, APIC_IRR, vector)) {
        vec_clear(l, APIC_IRR, vector);
        vec_set(l, APIC_ISR, vector);
        refresh_locked(l);
    }
    pthread_mutex_unlock(&l->lock);
}

bool lapic_has_nmi(struct lapic *l)
{
    pthread_mutex_lock(&l->lock);
    bool n = l->nmi;
    pthread_mutex_unlock(&l->lock);
    return n;
}

bool lapic_take_nmi(struct lapic *l)
{
    pthread_mutex_lock(&l->lock);
    bool n = l->nmi;
    l->nmi = false;
    refresh_locked(l);
    pthread_mutex_unlock(&l->lock);
    return n;
}

bool lapic_take_init(struct lapic *l)
{
    pthread_mutex_lock(&l->lock);
    bool i = l->init;
    if (i) {
        int sipi = l->sipi; /* a SIPI right behind the INIT survives the reset */
        l->init = false;
        reset_regs_locked(l, R(l, APIC_ID) >> 24);
        l->wait_sipi = !(l->base & APIC_BASE_BSP);
        l->sipi = l->wait_sipi ? sipi : -1;
        refresh_locked(l);
    }
    pthread_mutex_unlock(&l->lock);
    return i;
}

int lapic_take_sipi(struct lapic *l)
{
    int v = -1;
    pthread_mutex_lock(&l->lock);
    if (!l->init && l->wait_sipi && l->sipi >= 0) {
        v = l->sipi;
        l->sipi = -1;
        l->wait_sipi = false;
        refresh_locked(l);
    }
    pthread_mutex_unlock(&l->lock);
    return v;
}

bool lapic_wait_for_sipi(struct lapic *l)
{
    pthread_mutex_lock(&l->lock);
    bool w = l->wait_sipi;
    pthread_mutex_unlock(&l->lock);
    return w;
}

void lapic_set_wait_for_sipi(struct lapic *l, bool wait)
{
    pthread_mutex_lock(&l->lock);
    l->wait_sipi = wait;
    if (!wait) l->sipi = -1;
    refresh_locked(l);
    pthread_mutex_unlock(&l->lock);
}

void lapic_set_irr(struct lapic *l, int vector, bool level)
{
    if (vector < 0 || vector > 255) return;
    struct apic_irq irq = {.vector = (uint8_t)vector,
                           .delivery_mode = APIC_DM_FIXED,
                           .level = true,
                           .level_trig = level};
    lapic_receive(l, &irq);
}

void lapic_inject_nmi(struct lapic *l)
{
    struct apic_irq irq = {.delivery_mode = APIC_DM_NMI, .level = true};
    lapic_receive(l, &irq);
}

/* ---- timer entry points ---- */

int64_t lapic_next_event_ns(struct lapic *l)
{
    return atomic_load_explicit(&l->next_event, memory_order_acquire);
}

void lapic_update_timer(struct lapic *l, int64_t now)
{
    if (now < lapic_next_event_ns(l)) return;
    bool fired = false;
    pthread_mutex_lock(&l->lock);
    if (l->timer_expire <= now) {
        fired = timer_fire_locked(l);
        if (l->timer_period) {
            int64_t k = (now - l->timer_expire) / l->timer_period + 1;
            l->timer_expire = sat_add(
                l->timer_expire, k > INT64_MAX / l->timer_period ? INT64_MAX : k * l->timer_period);
            set_next_event_locked(l);
        } else {
            if (timer_mode(l) == APIC_TIMER_TSCDEADLINE) l->tsc_deadline = 0;
            timer_stop_locked(l);
        }
    }
    pthread_mutex_unlock(&l->lock);
    if (fired) kick(l);
}

/* ---- state ---- */

unsigned lapic_id(struct lapic *l)
{
    return atomic_load_explicit(&l->m_id, memory_order_relaxed);
}

void lapic_get_state(struct lapic *l, struct lapic_state *s, int64_t now)
{
    pthread_mutex_lock(&l->lock);
    *s = l->st;
    s->regs[APIC_TMCCT >> 2] = current_count_locked(l, now);
    s->regs[APIC_PPR >> 2] = compute_ppr(&l->st);
    pthread_mutex_unlock(&l->lock);
}

/* Checks that `v` has no bits outside `ok`; names the register in the error. */
static int check_bits(const char *name, uint32_t v, uint32_t ok)
{
    if (v & ~ok)
        return err_set(EINVAL,
                       "LAPIC state: %s = %#x sets reserved bits %#x; the state is corrupt "
                       "or from an APIC this model does not emulate",
                       name, v, v & ~ok);
    return 0;
}

int lapic_set_state(struct lapic *l, const struct lapic_state *in, int64_t now)
{
    struct lapic_state s;
    memset(&s, 0, sizeof(s));
#define IN(off) (in->regs[(off) >> 2])
#define S(off)  (s.regs[(off) >> 2])
    int r = 0;
    const uint32_t ds = 1u << 12; /* delivery status: read-only, dropped */
    r = r ? r : check_bits("ID", IN(APIC_ID), 0xff000000u);
    r = r ? r : check_bits("TPR", IN(APIC_TPR), 0xff);
    r = r ? r : check_bits("LDR", IN(APIC_LDR), 0xff000000u);
    r = r ? r : check_bits("SVR", IN(APIC_SVR), 0x3ff);
    r = r ? r : check_bits("ESR", IN(APIC_ESR), 0xff);
    r = r ? r : check_bits("ICR2", IN(APIC_ICR2), 0xff000000u);
    r = r ? r : check_bits("LVT timer", IN(APIC_LVTT), lvt_write_mask(l, APIC_LVTT) | ds);
    r = r ? r : check_bits("LVT thermal", IN(APIC_LVTTHMR), lvt_write_mask(l, APIC_LVTTHMR) | ds);
    r = r ? r : check_bits("LVT perf", IN(APIC_LVTPC), lvt_write_mask(l, APIC_LVTPC) | ds);
    r = r ? r
          : check_bits("LVT LINT0", IN(APIC_LVT0),
                       lvt_write_mask(l, APIC_LVT0) | ds | APIC_LVT_REMOTE_IRR);
    r = r ? r
          : check_bits("LVT LINT1", IN(APIC_LVT1),
                       lvt_write_mask(l, APIC_LVT1) | ds | APIC_LVT_REMOTE_IRR);
    r = r ? r : check_bits("LVT error", IN(APIC_LVTERR), lvt_write_mask(l, APIC_LVTERR) | ds);
    r = r ? r : check_bits("divide configuration", IN(APIC_TDCR), 0xb);
    if (r) return r;
    if (((IN(APIC_LVTT) >> APIC_TIMER_MODE_SHIFT) & 3) == 3)
        return err_set(EINVAL, "LAPIC state: LVT timer mode 3 is reserved; the state is corrupt");
    uint32_t model = IN(APIC_DFR) >> 28;
    if (model != 0xf && model != 0)
        return err_set(EINVAL, "LAPIC state: DFR model %#x is neither flat (0xf) nor cluster (0)",
                       model);
    for (unsigned base = APIC_ISR; base <= APIC_IRR; base += 0x80)
        if (in->regs[base >> 2] & 0xffff)
            return err_set(EINVAL,
                           "LAPIC state: vectors 0-15 set in %s; the APIC never accepts them",
                           base == APIC_ISR   ? "ISR"
                           : base == APIC_TMR ? "TMR"
                                              : "IRR");

    static const unsigned copy[] = {APIC_ID,   APIC_TPR,  APIC_LDR,    APIC_SVR,     APIC_ESR,
                                    APIC_ICR,  APIC_ICR2, APIC_LVTT,   APIC_LVTTHMR, APIC_LVTPC,
                                    APIC_LVT0, APIC_LVT1, APIC_LVTERR, APIC_TMICT,   APIC_TDCR};
    for (unsigned i = 0; i < ARRAY_SIZE(copy); i++)
        S(copy[i]) = IN(copy[i]) & ~ds;
    /* KVM keeps the last ICR command as the guest wrote it, reserved bits included: it is only
     * a record of the last IPI, so it is normalised rather than refused */
    S(APIC_ICR) &= 0x000ccfffu;
    for (unsigned i = 0; i < 8; i++)
        for (unsigned base = APIC_ISR; base <= APIC_IRR; base += 0x80)
            s.regs[(base >> 2) + i * 4] = in->regs[(base >> 2) + i * 4];
    S(APIC_LVR) = APIC_VERSION | (APIC_MAX_LVT << 16);
    S(APIC_DFR) = IN(APIC_DFR) | 0x0fffffffu;
    if (!(S(APIC_SVR) & APIC_SVR_ENABLE)) {
        static const unsigned lvts[] = {APIC_LVTT, APIC_LVTTHMR, APIC_LVTPC,
                                        APIC_LVT0, APIC_LVT1,    APIC_LVTERR};
        for (unsigned i = 0; i < ARRAY_SIZE(lvts); i++)
            s.regs[lvts[i] >> 2] |= APIC_LVT_MASKED;
    }
    uint32_t cur = IN(APIC_TMCCT);

    pthread_mutex_lock(&l->lock);
    l->st = s;
    l->esr_pending = 0;
    l->tsc_deadline = 0;
    timer_stop_locked(l);
    unsigned mode = timer_mode(l);
    uint32_t init = R(l, APIC_TMICT);
    if (mode != APIC_TIMER_TSCDEADLINE && init) {
        if (mode == APIC_TIMER_PERIODIC && (cur == 0 || cur > init)) cur = init;
        if (mode == APIC_TIMER_ONESHOT && cur > init) cur = init;
        if (cur) timer_start_locked(l, cur, now); /* one-shot at 0 has already fired */
    }
    sync_mirrors_locked(l);
    refresh_locked(l);
    pthread_mutex_unlock(&l->lock);
#undef IN
#undef S
    return 0;
}
