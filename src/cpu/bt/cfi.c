/* Shadow stacks of return addresses for `--cfi` (see cfi.h for the policy and its limits).
 *
 * Per vCPU two shadow stacks: one for CPL 3, tagged with the address space (CR3 without its PCID
 * bits) and emptied when another one calls or returns, and one for the kernel (CPL 0-2), whose
 * mappings every address space shares.  Each is a ring of CFI_DEPTH records ordered by stack slot
 * (the newest, lowest slot on top); deeper recursion overwrites the oldest records, whose returns
 * are then unverified.
 *
 * Trust: guest values are compared only.  The counters are per vCPU, written by that vCPU alone
 * (no lock, no atomic read-modify-write on the hot path, nothing for the translator's inline code
 * to test), summed with the process-wide ones by bt_cfi_get_stats and folded into them when the
 * vCPU goes; violations are counted at once. */
#include "cpu/bt/cfi.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/bt/bt.h"
#include "mem/guest.h"
#include "util/log.h"

#define CFI_DEPTH     BT_CFI_DEPTH
#define CFI_LOG_FIRST 16u /* violations logged one by one; then every 1024th */

_Atomic int bt_cfi_mode_now = BT_CFI_LOG;
_Atomic bool bt_cfi_kernel_now = false;

static _Atomic uint64_t g_calls, g_checked, g_unverified, g_viol_user, g_viol_kernel, g_retpoline;

int bt_cfi_parse_mode(const char *s, enum bt_cfi_mode *out)
{
    if (s && !strcmp(s, "off"))
        *out = BT_CFI_OFF;
    else if (s && !strcmp(s, "log"))
        *out = BT_CFI_LOG;
    else if (s && !strcmp(s, "enforce"))
        *out = BT_CFI_ENFORCE;
    else
        return err_set(EINVAL, "--cfi \"%s\": expected off, log or enforce", s ? s : "");
    return 0;
}

int bt_cfi_parse_scope(const char *s, bool *kernel)
{
    if (s && !strcmp(s, "user"))
        *kernel = false;
    else if (s && !strcmp(s, "all"))
        *kernel = true;
    else
        return err_set(EINVAL,
                       "--cfi-scope \"%s\": expected user (CPL 3 only) or all (the kernel too)",
                       s ? s : "");
    return 0;
}

const char *bt_cfi_mode_name(enum bt_cfi_mode m)
{
    switch (m) {
    case BT_CFI_OFF: return "off";
    case BT_CFI_LOG: return "log";
    case BT_CFI_ENFORCE: return "enforce";
    }
    return "?";
}

void bt_cfi_set_policy(const struct bt_cfi_policy *p)
{
    atomic_store(&bt_cfi_mode_now, (int)p->mode);
    atomic_store(&bt_cfi_kernel_now, p->kernel);
}

void bt_cfi_get_policy(struct bt_cfi_policy *p)
{
    p->mode = (enum bt_cfi_mode)atomic_load(&bt_cfi_mode_now);
    p->kernel = atomic_load(&bt_cfi_kernel_now);
}

/* the live vCPUs' counters (struct bt_cfi_cpu.next), and what the departed ones counted */
static pthread_mutex_t live_lock = PTHREAD_MUTEX_INITIALIZER;
static struct bt_cfi_cpu *live;

static uint64_t get(const uint64_t *p)
{
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static void bump(uint64_t *p) /* this vCPU's counter: only its own thread writes it */
{
    __atomic_store_n(p, *p + 1, __ATOMIC_RELAXED);
}

void bt_cfi_get_stats(struct bt_cfi_stats *st)
{
    pthread_mutex_lock(&live_lock);
    st->calls = atomic_load(&g_calls);
    st->checked = atomic_load(&g_checked);
    st->unverified = atomic_load(&g_unverified);
    for (const struct bt_cfi_cpu *k = live; k; k = k->next) {
        st->calls += get(&k->calls);
        st->checked += get(&k->checked);
        st->unverified += get(&k->unverified);
    }
    pthread_mutex_unlock(&live_lock);
    st->violations_user = atomic_load(&g_viol_user);
    st->violations_kernel = atomic_load(&g_viol_kernel);
    st->retpoline = atomic_load(&g_retpoline);
}

void bt_cfi_reset_stats(void) /* tests: no vCPU running */
{
    pthread_mutex_lock(&live_lock);
    atomic_store(&g_calls, 0);
    atomic_store(&g_checked, 0);
    atomic_store(&g_unverified, 0);
    for (struct bt_cfi_cpu *k = live; k; k = k->next)
        k->calls = k->checked = k->unverified = 0;
    pthread_mutex_unlock(&live_lock);
    atomic_store(&g_viol_user, 0);
    atomic_store(&g_viol_kernel, 0);
    atomic_store(&g_retpoline, 0);
}

void bt_cfi_destroy(struct bt_cpu *c)
{
    struct bt_cfi_cpu *k = c->cfi;
    if (!k) return;
    pthread_mutex_lock(&live_lock);
    for (struct bt_cfi_cpu **p = &live; *p; p = &(*p)->next)
        if (*p == k) {
            *p = k->next;
            break;
        }
    atomic_fetch_add(&g_calls, k->calls);
    atomic_fetch_add(&g_checked, k->checked);
    atomic_fetch_add(&g_unverified, k->unverified);
    pthread_mutex_unlock(&live_lock);
    free(k);
    c->cfi = NULL;
}

static void empty_stack(struct bt_cfi_stack *s)
{
    for (unsigned k = 0; k < CFI_DEPTH; k++)
        s->f[k].slot = BT_CFI_EMPTY;
    s->top = 0;
}

/* The shadow stack for the current privilege (user: emptied when the address space changed).
 * NULL when there is no memory for it (CFI then checks nothing on this vCPU). */
static inline __attribute__((always_inline)) struct bt_cfi_stack *stack_of(struct bt_cpu *c)
{
    struct bt_cfi_cpu *k = c->cfi;
    if (!k) {
        k = c->cfi = calloc(1, sizeof(*k));
        if (!k) return NULL;
        empty_stack(&k->st[0]);
        empty_stack(&k->st[1]);
        pthread_mutex_lock(&live_lock);
        k->next = live;
        live = k;
        pthread_mutex_unlock(&live_lock);
    }
    if (c->cpl != 3) return &k->st[0];
    struct bt_cfi_stack *s = &k->st[1];
    if (s->space_cr3 != c->s.cr3) {
        uint64_t space = c->s.cr3 & 0x7ffffffffffff000ull;
        if (s->space != space) {
            s->space = space;
            empty_stack(s);
        }
        s->space_cr3 = c->s.cr3;
    }
    return s;
}

/* s->top is a byte offset into f (16 per record, for the translator's inline code) */
#define FRAME_BYTES ((unsigned)sizeof(struct bt_cfi_frame))
#define RING_BYTES  (CFI_DEPTH * FRAME_BYTES)

static inline struct bt_cfi_frame *top_of(struct bt_cfi_stack *s)
{
    return &s->f[((s->top + RING_BYTES - FRAME_BYTES) % RING_BYTES) / FRAME_BYTES];
}

static inline bool empty(struct bt_cfi_stack *s)
{
    return top_of(s)->slot == BT_CFI_EMPTY;
}

static inline void pop(struct bt_cfi_stack *s)
{
    top_of(s)->slot = BT_CFI_EMPTY;
    s->top = (s->top + RING_BYTES - FRAME_BYTES) % RING_BYTES;
}

void bt_cfi_call(struct bt_cpu *c, uint64_t slot, uint64_t ret)
{
    struct bt_cfi_stack *s = stack_of(c);
    if (!s) return;
    /* records at or below the new slot belong to frames that are gone (longjmp) */
    while (!empty(s) && top_of(s)->slot <= slot)
        pop(s);
    s->f[s->top / FRAME_BYTES] = (struct bt_cfi_frame){slot, ret}; /* full: over the oldest */
    s->top = (s->top + FRAME_BYTES) % RING_BYTES;
    bump(&((struct bt_cfi_cpu *)c->cfi)->calls);
}

/* Retpoline thunks (Linux's __x86_indirect_thunk_*, code built with -mretpoline) CALL a label
 * that overwrites the return address just pushed with the real target and RET: the return site
 * they leave behind is a speculation trap that starts with PAUSE (F3 90).  A mismatch whose
 * recorded return site is such a trap is the thunk's indirect jump, not an attack (an attacker
 * would have to rewrite the slot in the one instruction between the thunk's CALL and RET).
 * Reads the guest's code through its page tables without side effects on failure; RAM only. */
static bool retpoline_site(struct bt_cpu *c, uint64_t site)
{
    uint64_t gpa;
    if (!c->vm || (site & 0xfff) > 0xffe || bt_translate(c, site, BT_ACC_EXEC, &gpa)) return false;
    const uint8_t *p = guest_ptr(&c->vm->mem, gpa, 2);
    return p && p[0] == 0xf3 && p[1] == 0x90;
}

bool bt_cfi_ret(struct bt_cpu *c, uint64_t slot, uint64_t target)
{
    struct bt_cfi_stack *s = stack_of(c);
    if (!s) return true;
    struct bt_cfi_cpu *k = c->cfi;
    while (!empty(s) && top_of(s)->slot < slot) /* frames unwound without their RET */
        pop(s);
    if (empty(s) || top_of(s)->slot != slot) {
        bump(&k->unverified);
        return true;
    }
    uint64_t expected = top_of(s)->ret;
    pop(s);
    bump(&k->checked);
    if (expected == target) return true;
    if (retpoline_site(c, expected)) {
        atomic_fetch_add(&g_retpoline, 1);
        return true;
    }

    bool user = c->cpl == 3;
    uint64_t n = atomic_fetch_add(user ? &g_viol_user : &g_viol_kernel, 1) + 1;
    enum bt_cfi_mode mode = (enum bt_cfi_mode)atomic_load(&bt_cfi_mode_now);
    if (mode == BT_CFI_ENFORCE) {
        log_err("control-flow integrity: vCPU %u, CPL %u: the RET at %#llx would return to %#llx, "
                "but the CALL that wrote the return address at stack offset %#llx returns to "
                "%#llx (the return address was overwritten: a return-oriented attack, or code "
                "that rewrites its own return address); the VM is stopped before the RET "
                "completes (--cfi enforce; --cfi log only counts such returns)",
                c->index, c->cpl, (unsigned long long)c->insn_rip, (unsigned long long)target,
                (unsigned long long)slot, (unsigned long long)expected);
        if (c->vm) vm_request_stop(c->vm, VM_STOP_CFI, 0);
        c->exit_now = true;
        return false;
    }
    if (n <= CFI_LOG_FIRST || n % 1024 == 0)
        log_warn("control-flow integrity: vCPU %u, CPL %u: RET at %#llx returns to %#llx, the "
                 "CALL for stack offset %#llx returns to %#llx (%s violation %llu; logged only: "
                 "--cfi log)",
                 c->index, c->cpl, (unsigned long long)c->insn_rip, (unsigned long long)target,
                 (unsigned long long)slot, (unsigned long long)expected, user ? "user" : "kernel",
                 (unsigned long long)n);
    return true;
}
