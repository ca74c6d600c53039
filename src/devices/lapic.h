/* User-space local APIC (xAPIC, no x2APIC) for the software CPU backend, which has no in-kernel
 * irqchip.  Follows Intel SDM Vol.3 ch. 10 ("Advanced Programmable Interrupt Controller").
 *
 * Trust: every register write, ICR command, MSR value and restored state comes from the guest or a
 * snapshot file and is checked here; reserved bits are dropped on writes and rejected on set_state.
 *
 * State: the architectural registers live in struct lapic_state (the KVM_GET_LAPIC 1 KiB page,
 * x86/irqchip.h) so get/set is a copy plus validation.  Besides that page, a LAPIC has the
 * IA32_APIC_BASE and IA32_TSC_DEADLINE MSRs (saved in x86_state by the CPU) and its timer's
 * running state, which get_state folds into the current-count register and set_state re-derives.
 *
 * Time: every time-dependent call takes `now`, virtual ns (devices/vclock.h: vclock_ns()).  The
 * timer's bus clock is LAPIC_BUS_HZ = 1 GHz (1 ns per count before division), as KVM's default, so
 * counts mean the same under both backends.  Linux takes the APIC timer rate from CPUID leaf 0x15's
 * crystal frequency (ECX) when present, so the CPU model must report ECX = LAPIC_BUS_HZ there.
 * Periodic timer periods are clamped to LAPIC_MIN_PERIOD_NS.
 *
 * Threads: a LAPIC belongs to one vCPU thread (MMIO, accept, EOI, MSRs), but interrupts arrive from
 * any thread (IOAPIC, IPIs from other vCPUs, a timer thread calling lapic_update_timer).  Each
 * LAPIC has its own mutex; no LAPIC holds its lock while calling into another LAPIC, the IOAPIC, or
 * a kick callback, so lock order is always  IOAPIC -> one LAPIC.
 *
 * Using it from the software CPU:
 *   - create a struct lapic_bus per VM (lapic_bus_init) and one LAPIC per vCPU (lapic_create),
 *     before any vCPU thread runs; the bus routes IPIs and IOAPIC messages to LAPICs;
 *   - MMU: accesses to the 4 KiB page at lapic_mmio_base() go to lapic_mmio_read/write (only while
 *     the APIC is hardware-enabled: lapic_mmio_base() returns UINT64_MAX otherwise);
 *   - RDMSR/WRMSR 0x1b -> lapic_get_base/lapic_set_base (a negative return means #GP);
 *     0x6e0 -> lapic_get_tsc_deadline/lapic_set_tsc_deadline;
 *   - at instruction boundaries: if lapic_attention(), check lapic_take_init, lapic_take_sipi (in
 *     wait-for-SIPI), lapic_take_nmi, and with IF=1 and no shadow lapic_pending_vector ->
 *     lapic_accept(vector) -> deliver through the IDT;
 *   - time: call lapic_update_timer(now) whenever now >= lapic_next_event_ns() (from the run loop,
 *     before HLT sleeps, or a timer thread); a halted vCPU sleeps until min(next event) or a kick.
 *     Virtual and host time run at the same rate, so "sleep deadline - vclock_ns() ns" is right.
 *
 * Wiring for the software backend (vm_create / vcpu_create), in this order:
 *     vm->tsc_khz = vm->tsc_khz ? vm->tsc_khz : vclock_pick_tsc_khz();
 *     io = ioapic_create(vm, lapic_bus_deliver_cb, &bus);   (bus: a struct lapic_bus it owns)
 *     lapic_bus_init(&bus, ioapic_eoi_cb, io);
 *     ioapic_attach(vm, io);
 *     pit = pit_create(vm, &(struct irq_line){vm_irq_set, vm, 2});  pit_attach(vm, pit);
 *     per vCPU: lapic_create(vm, &bus, cpu->id, cpu->id == 0, kick_fn, cpu);
 *     backend irq_line(vm, gsi, level) -> ioapic_set_irq(io, gsi, level)   (no 8259 PIC)
 *     get/set_lapic/ioapic/pit -> lapic_get/set_state(.., vclock_ns()), ioapic_*, pit_*(.., now)
 * Snapshot order: LAPIC state before IA32_TSC_DEADLINE (set_state disarms the deadline).
 */
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "x86/irqchip.h"

struct vm;
struct lapic;

/* Register offsets in the xAPIC page. */
#define APIC_ID       0x020
#define APIC_LVR      0x030
#define APIC_TPR      0x080
#define APIC_APR      0x090
#define APIC_PPR      0x0a0
#define APIC_EOI      0x0b0
#define APIC_RRD      0x0c0
#define APIC_LDR      0x0d0
#define APIC_DFR      0x0e0
#define APIC_SVR      0x0f0
#define APIC_ISR      0x100
#define APIC_TMR      0x180
#define APIC_IRR      0x200
#define APIC_ESR      0x280
#define APIC_LVT_CMCI 0x2f0
#define APIC_ICR      0x300
#define APIC_ICR2     0x310
#define APIC_LVTT     0x320
#define APIC_LVTTHMR  0x330
#define APIC_LVTPC    0x340
#define APIC_LVT0     0x350
#define APIC_LVT1     0x360
#define APIC_LVTERR   0x370
#define APIC_TMICT    0x380
#define APIC_TMCCT    0x390
#define APIC_TDCR     0x3e0

#define APIC_VERSION                 0x14 /* integrated APIC, as KVM presents */
#define APIC_MAX_LVT                 5    /* LVT timer, thermal, perf, LINT0, LINT1, error */
#define APIC_SVR_ENABLE              0x100u
#define APIC_LVT_MASKED              0x10000u
#define APIC_LVT_LEVEL               0x8000u
#define APIC_LVT_REMOTE_IRR          0x4000u
#define APIC_TIMER_MODE_SHIFT        17
#define APIC_TIMER_ONESHOT           0u
#define APIC_TIMER_PERIODIC          1u
#define APIC_TIMER_TSCDEADLINE       2u
#define APIC_ESR_SEND_ILLEGAL_VECTOR 0x20u
#define APIC_ESR_RECV_ILLEGAL_VECTOR 0x40u
#define APIC_ESR_ILLEGAL_REGISTER    0x80u

/* IA32_APIC_BASE */
#define APIC_BASE_BSP       (1ull << 8)
#define APIC_BASE_X2APIC    (1ull << 10) /* not supported: setting it is #GP */
#define APIC_BASE_ENABLE    (1ull << 11)
#define APIC_BASE_ADDR_MASK 0x000ffffffffff000ull /* further limited by MAXPHYADDR */

#define LAPIC_BUS_HZ        1000000000u /* timer input clock before the divider */
#define LAPIC_MIN_PERIOD_NS 50000 /* 20 kHz: a guest cannot make the timer an interrupt storm */

/* Delivery modes (ICR, LVT, IOAPIC redirection entries). */
enum apic_dm {
    APIC_DM_FIXED = 0,
    APIC_DM_LOWEST = 1,
    APIC_DM_SMI = 2,
    APIC_DM_NMI = 4,
    APIC_DM_INIT = 5,
    APIC_DM_SIPI = 6,
    APIC_DM_EXTINT = 7,
};
enum apic_shorthand { APIC_SH_NONE, APIC_SH_SELF, APIC_SH_ALL, APIC_SH_OTHERS };

/* One interrupt message on the APIC bus, from an ICR write or an IOAPIC redirection entry. */
struct apic_irq {
    uint8_t vector;
    uint8_t delivery_mode; /* enum apic_dm */
    bool logical;          /* destination mode: false physical, true logical */
    bool level;            /* level asserted (false only for INIT level de-assert) */
    bool level_trig;       /* trigger mode: true level (sets TMR; EOI is broadcast) */
    uint8_t shorthand;     /* enum apic_shorthand; non-NONE only from an ICR */
    uint8_t dest;          /* physical APIC ID (0xff broadcast) or logical MDA */
};

/* The VM's LAPICs, so ICR writes and the IOAPIC reach them.  Owned by the backend (bt), set up
 * before vCPUs run; lookups are lock-free.  `eoi` receives the EOI broadcast of level-triggered
 * vectors (wire it to ioapic_eoi_cb with the IOAPIC as ctx); it is called with no LAPIC lock held.
 */
#define LAPIC_BUS_MAX 64
struct lapic_bus {
    struct lapic *_Atomic cpu[LAPIC_BUS_MAX];
    void (*eoi)(void *ctx, int vector);
    void *eoi_ctx;
};
void lapic_bus_init(struct lapic_bus *bus, void (*eoi)(void *ctx, int vector), void *eoi_ctx);
/* Delivers a message to every matching LAPIC (src: the sender for shorthands, may be NULL).
 * Lowest-priority goes to the lowest-numbered matching APIC ID.  Returns how many LAPICs took it.
 */
int lapic_bus_deliver(struct lapic_bus *bus, const struct apic_irq *irq, struct lapic *src);
/* Same, as a callback for the IOAPIC (ctx = the bus). */
int lapic_bus_deliver_cb(void *ctx, const struct apic_irq *irq);

/* Creates the LAPIC of vCPU `apic_id` in its power-up state (SDM 10.4.7.1), registers it on `bus`
 * and, for an AP (!bsp), puts it in wait-for-SIPI.  kick(kick_ctx) is called from any thread
 * whenever an interrupt, NMI, INIT or SIPI becomes pending, so a halted vCPU wakes up; it may run
 * with the IOAPIC lock held, so it must only signal (no LAPIC/IOAPIC calls).  vm supplies
 * tsc_khz (0 means VCLOCK_DEFAULT_TSC_KHZ) and the CPUID model (leaf 1 ECX bit 24 decides whether
 * TSC-deadline mode exists; an empty model or vm == NULL, as in tests, means it does).  NULL with
 * err_set() on error.
 */
struct lapic *lapic_create(struct vm *vm, struct lapic_bus *bus, unsigned apic_id, bool bsp,
                           void (*kick)(void *ctx), void *kick_ctx);
void lapic_destroy(struct lapic *l); /* unregisters; NULL is fine */

/* xAPIC MMIO page: offset 0..0xfff within the page.  Registers are 32-bit at 16-byte-aligned
 * offsets; reads of 1/2/4 bytes within a register's first dword are served, writes must be 4 bytes
 * at the aligned offset.  Anything else reads 0 / is ignored (with a debug log). */
void lapic_mmio_read(struct lapic *l, uint32_t offset, uint8_t *data, unsigned size, int64_t now);
void lapic_mmio_write(struct lapic *l, uint32_t offset, const uint8_t *data, unsigned size,
                      int64_t now);
/* Register-level access (offset 16-byte aligned, < 0x400), as the MMIO path uses. */
uint32_t lapic_reg_read(struct lapic *l, uint32_t offset, int64_t now);
void lapic_reg_write(struct lapic *l, uint32_t offset, uint32_t val, int64_t now);

/* IA32_APIC_BASE.  set returns -EINVAL (the CPU raises #GP) for reserved bits, x2APIC enable or an
 * address beyond maxphyaddr (cpu's MAXPHYADDR, e.g. 40/46); the BSP flag is taken from the value.
 * Disabling the APIC returns it to its power-up register state (ID kept). */
uint64_t lapic_get_base(struct lapic *l); /* lock-free */
int lapic_set_base(struct lapic *l, uint64_t value, unsigned maxphyaddr);
/* Guest-physical address of the register page while hardware-enabled, else UINT64_MAX
 * (lock-free: cheap enough for the MMU to ask on every physical access it cannot resolve to RAM).
 */
uint64_t lapic_mmio_base(struct lapic *l);

/* IA32_TSC_DEADLINE (only if the CPU model sets CPUID.01H:ECX[24]; otherwise LVT timer bit 18 is
 * reserved, the mode never becomes TSC-deadline and the CPU should #GP on MSR 0x6e0).  tsc_now is
 * this vCPU's TSC at `now` (vclock_tsc_at + its own offset), so a per-vCPU TSC offset needs no
 * state here.  Writes outside TSC-deadline mode are ignored and reads return 0 there
 * (SDM 10.5.4.1); 0 disarms; a deadline in the past fires at once. */
uint64_t lapic_get_tsc_deadline(struct lapic *l);
void lapic_set_tsc_deadline(struct lapic *l, uint64_t deadline, int64_t now, uint64_t tsc_now);

/* ---- interrupt acceptance, for the CPU that owns the LAPIC ---- */
/* Cheap check (one atomic load) whether anything may be pending: IRR, NMI, INIT or SIPI. */
bool lapic_attention(struct lapic *l);
/* The flag lapic_attention() reads, for code that polls it without a call (the software CPU's
 * translated code compares the byte with 0; x86 loads have acquire semantics). */
const _Atomic bool *lapic_attention_flag(struct lapic *l);
/* Highest IRR vector whose priority class is above PPR's, or -1. */
int lapic_pending_vector(struct lapic *l);
/* The CPU takes `vector` (from lapic_pending_vector): IRR -> ISR, PPR updated. */
void lapic_accept(struct lapic *l, int vector);
bool lapic_has_nmi(struct lapic *l);
bool lapic_take_nmi(struct lapic *l); /* true (and cleared) if an NMI was pending */
/* INIT: true once per INIT received; the LAPIC has then reset its own registers (ID and
 * APIC_BASE kept) and, unless BSP, waits for SIPI.  The CPU resets itself (x86_state_reset). */
bool lapic_take_init(struct lapic *l);
/* SIPI vector (0..255) if one arrived while waiting for SIPI, else -1; leaves wait-for-SIPI. */
int lapic_take_sipi(struct lapic *l);
bool lapic_wait_for_sipi(struct lapic *l);
void lapic_set_wait_for_sipi(struct lapic *l, bool wait); /* restore (x86_state.mp_state) */

/* ---- interrupt sources (any thread) ---- */
/* Sets IRR for a fixed interrupt (TMR = level); ignored while software-disabled; vectors < 16 set
 * the receive-illegal-vector error instead.  Kicks the owner. */
void lapic_set_irr(struct lapic *l, int vector, bool level);
void lapic_inject_nmi(struct lapic *l);
/* Sends an ICR-format message from this LAPIC (what an ICR write does). */
void lapic_send_ipi(struct lapic *l, uint32_t icr_low, uint32_t icr_high);

/* ---- timer ---- */
/* When the timer next expires (virtual ns), or INT64_MAX; lock-free, any thread. */
int64_t lapic_next_event_ns(struct lapic *l);
/* Fires a timer that expired at or before `now` into IRR (if the LVT entry is unmasked) and
 * re-arms a periodic one; missed periods are coalesced into one interrupt. */
void lapic_update_timer(struct lapic *l, int64_t now);

/* ---- state ---- */
/* The register page with PPR and the current count computed for `now`. */
void lapic_get_state(struct lapic *l, struct lapic_state *s, int64_t now);
/* Validates then loads: -EINVAL with err_set() on reserved bits, vectors 0-15 in ISR/IRR/TMR, a
 * reserved timer mode or destination model.  Computed registers (version, PPR) are recomputed,
 * unused slots ignored, the ICR's reserved bits dropped; the timer resumes from the current count
 * (or the initial count if the current one is 0 or larger).  The TSC deadline is restored
 * separately. */
int lapic_set_state(struct lapic *l, const struct lapic_state *s, int64_t now);
unsigned lapic_id(struct lapic *l); /* current APIC ID (the guest may rewrite it) */
