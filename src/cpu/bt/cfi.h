/* Control-flow integrity of near returns, enforced by the software CPU (`--cfi`): a per-vCPU
 * shadow stack of return addresses.  CALL records (stack slot, return address); RET compares the
 * address it pops with the record for the same stack slot.  The same slot holding another address
 * means the return address was overwritten since the CALL: a return-oriented attack, or code that
 * rewrites its own return address (a violation).  A RET at a slot without a record (the shadow
 * stack overflowed, another thread's stack, a signal frame, a context switch) is "unverified",
 * never a violation; records below the slot being returned from or called at are dead frames
 * (longjmp, exceptions) and are dropped.
 *
 * The hooks live in the CALL and RET handlers (branch.c), which the interpreter and the
 * translator both run, so both see the same policy and counts.  Native CALL/RET forms in the
 * translator must call them too while bt_cfi_active() is true.
 *
 * Policy (process-wide: one VM per process): off, log (count and log, the guest continues) or
 * enforce (the VM stops before the offending RET completes, VM_STOP_CFI); scope user (CPL 3 only,
 * the default) or all (the kernel too: see docs/translator.md for its false positives).
 *
 * Trust: stack slots and addresses are guest values only compared, never dereferenced here. */
#pragma once
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

struct bt_cpu;
struct vm;

enum bt_cfi_mode { BT_CFI_OFF, BT_CFI_LOG, BT_CFI_ENFORCE };

struct bt_cfi_policy {
    enum bt_cfi_mode mode;
    bool kernel; /* also CPL 0-2 */
};

/* "off" | "log" | "enforce"; "user" | "all".  0, or -EINVAL with err_set(). */
int bt_cfi_parse_mode(const char *s, enum bt_cfi_mode *out);
int bt_cfi_parse_scope(const char *s, bool *kernel);
const char *bt_cfi_mode_name(enum bt_cfi_mode m);

void bt_cfi_set_policy(const struct bt_cfi_policy *p);
void bt_cfi_get_policy(struct bt_cfi_policy *p);

/* Counts since start (or the last reset), all vCPUs.  checked: returns compared with a record
 * (matched or violation); unverified: returns without a record for their slot; retpoline: of the
 * checked, mismatches that were retpoline thunks' indirect jumps (not violations, see cfi.c). */
struct bt_cfi_stats {
    uint64_t calls, checked, unverified, violations_user, violations_kernel, retpoline;
};
void bt_cfi_get_stats(struct bt_cfi_stats *st);
void bt_cfi_reset_stats(void); /* tests */

/* ---- the shadow stacks (cfi.c; laid out here for the translator's inline fast path, which does
 * the common cases of the hooks below: a CALL that pops nothing, a RET matching the top) ---- */
#define BT_CFI_DEPTH 64u /* records per shadow stack (a ring) */
struct bt_cfi_frame {
    uint64_t slot, ret;
};
struct bt_cfi_stack {
    uint64_t space; /* user stack: the address space its records belong to */
    /* user stack: the CR3 value last found to be that space (the inline code compares CR3 with
     * it, one compare instead of masking the PCID and no-flush bits; 0 at first) */
    uint64_t space_cr3;
    /* the byte offset in f of the next push (16 x its index); the record below it is the
     * newest.  A record whose slot is BT_CFI_EMPTY holds nothing (popped, or never written): the
     * ring is empty when the newest is, and the inline code needs no count (a guest stack slot
     * is never ~0: an 8-byte access there wraps around the address space) */
    unsigned top, pad;
    struct bt_cfi_frame f[BT_CFI_DEPTH];
};
#define BT_CFI_EMPTY (~0ull)
struct bt_cfi_cpu {
    struct bt_cfi_stack st[2]; /* 0 kernel, 1 user */
    /* written by this vCPU only (relaxed stores; the translator's inline INC), read by
     * bt_cfi_get_stats on any thread (relaxed loads) */
    uint64_t calls, checked, unverified;
    struct bt_cfi_cpu *next; /* the live vCPUs' counters (cfi.c, under its lock) */
};

/* ---- the handlers' hooks ---- */
extern _Atomic int bt_cfi_mode_now; /* enum bt_cfi_mode */
extern _Atomic bool bt_cfi_kernel_now;
static inline bool bt_cfi_active(unsigned cpl)
{
    return atomic_load_explicit(&bt_cfi_mode_now, memory_order_relaxed) != BT_CFI_OFF &&
           (cpl == 3 || atomic_load_explicit(&bt_cfi_kernel_now, memory_order_relaxed));
}
/* A near CALL pushed `ret` at stack offset `slot`. */
void bt_cfi_call(struct bt_cpu *c, uint64_t slot, uint64_t ret);
/* A near RET is about to pop `target` from `slot`.  False: enforce mode stops the VM here (the
 * caller must not complete the RET; the vCPU has exit_now set). */
bool bt_cfi_ret(struct bt_cpu *c, uint64_t slot, uint64_t target);
/* Frees the vCPU's shadow stacks (bt_core_destroy). */
void bt_cfi_destroy(struct bt_cpu *c);
