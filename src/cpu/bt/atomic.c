/* Exchange and compare-exchange: XCHG, XADD, CMPXCHG, CMPXCHG8B, CMPXCHG16B.
 *
 * Trust: operands are guest data.  With a memory operand in RAM, XCHG (always locked on x86) and
 * LOCK-prefixed forms run as the host's locked instruction on the guest page (bt_host_ptr), so
 * other vCPU threads see them atomic; MMIO targets are emulated as a read and a write.  The
 * compare-exchanges run on the host, against the host page or a local copy, so results, the
 * accumulator writes and flags are exactly the host CPU's. */
#include "cpu/bt/intops.h"

#define PRE  "lea -128(%%rsp), %%rsp\n\tpushq %[f]\n\tpopfq\n\t"
#define POST "\n\tpushfq\n\tpopq %[f]\n\tlea 128(%%rsp), %%rsp"

static void op_xchg(struct bt_cpu *c, const struct bt_insn *i)
{
    unsigned size = i->op[0].size;
    /* Zydis puts the memory operand (if any) first */
    if (i->op[0].kind == BT_OPK_MEM) {
        uint64_t b = bt_op_read(c, i, 1);
        uint64_t lin = bt_op_lin(c, i, 0, size, BT_ACC_WRITE);
        void *p = bt_lock_ptr(c, lin, size);
        uint64_t old;
        if (p) {
            uint64_t fl = c->s.rflags;
            old = bt_host_alu_locked(BT_XCHG, size, p, b, &fl);
        } else {
            bt_probe_write(c, lin, size, BT_ACC_WRITE);
            old = bt_read(c, lin, size, BT_ACC_READ);
            bt_write(c, lin, size, b, BT_ACC_WRITE);
        }
        bt_op_write(c, i, 1, old);
        return;
    }
    uint64_t a = bt_op_read(c, i, 0), b = bt_op_read(c, i, 1);
    bt_op_write(c, i, 0, b);
    bt_op_write(c, i, 1, a);
}

static void op_xadd(struct bt_cpu *c, const struct bt_insn *i)
{
    bt_check_lock(c, i);
    unsigned size = i->op[0].size;
    uint64_t src = bt_op_read(c, i, 1);
    uint64_t fl = c->s.rflags;
    if ((i->pfx & BT_PFX_LOCK)) {
        uint64_t lin = bt_op_lin(c, i, 0, size, BT_ACC_WRITE);
        void *p = bt_lock_ptr(c, lin, size);
        if (p) {
            uint64_t old = bt_host_alu_locked(BT_XADD, size, p, src, &fl);
            bt_op_write(c, i, 1, old);
            bt_commit_flags(c, fl);
            return;
        }
    }
    struct bt_rmw r;
    uint64_t dst = bt_rmw_read(c, i, 0, &r);
    uint64_t sum = bt_host_alu(BT_ADD, size, dst, src, &fl);
    if (r.mem) {
        bt_rmw_write(c, i, 0, &r, sum);
        bt_op_write(c, i, 1, dst);
    } else {
        bt_op_write(c, i, 1, dst); /* SRC <- DEST, then DEST <- sum (same register: sum) */
        bt_op_write(c, i, 0, sum);
    }
    bt_commit_flags(c, fl);
}

/* host CMPXCHG with the destination in a register (a memory copy is loaded into one) */
static uint64_t host_cmpxchg(unsigned size, uint64_t *rax, uint64_t dst, uint64_t src, uint64_t *fl)
{
    uint64_t h = (*fl & BT_ARITH_FLAGS) | X86_FLAG_FIXED, a = *rax;
    switch (size) {
    case 1:
        asm(PRE "cmpxchgb %b[s], %b[d]" POST
            : "+a"(a), [d] "+r"(dst), [f] "+r"(h)
            : [s] "r"(src)
            : "cc");
        break;
    case 2:
        asm(PRE "cmpxchgw %w[s], %w[d]" POST
            : "+a"(a), [d] "+r"(dst), [f] "+r"(h)
            : [s] "r"(src)
            : "cc");
        break;
    case 4:
        asm(PRE "cmpxchgl %k[s], %k[d]" POST
            : "+a"(a), [d] "+r"(dst), [f] "+r"(h)
            : [s] "r"(src)
            : "cc");
        break;
    default:
        asm(PRE "cmpxchgq %q[s], %q[d]" POST
            : "+a"(a), [d] "+r"(dst), [f] "+r"(h)
            : [s] "r"(src)
            : "cc");
        break;
    }
    *rax = a;
    *fl = (*fl & ~(uint64_t)BT_ARITH_FLAGS) | (h & BT_ARITH_FLAGS);
    return dst;
}

static void locked_cmpxchg(unsigned size, void *p, uint64_t *rax, uint64_t src, uint64_t *fl)
{
    uint64_t h = (*fl & BT_ARITH_FLAGS) | X86_FLAG_FIXED, a = *rax;
    switch (size) {
    case 1:
        asm volatile(PRE "lock cmpxchgb %b[s], %[m]" POST
                     : "+a"(a), [m] "+m"(*(uint8_t *)p), [f] "+r"(h)
                     : [s] "r"(src)
                     : "cc", "memory");
        break;
    case 2:
        asm volatile(PRE "lock cmpxchgw %w[s], %[m]" POST
                     : "+a"(a), [m] "+m"(*(uint16_t *)p), [f] "+r"(h)
                     : [s] "r"(src)
                     : "cc", "memory");
        break;
    case 4:
        asm volatile(PRE "lock cmpxchgl %k[s], %[m]" POST
                     : "+a"(a), [m] "+m"(*(uint32_t *)p), [f] "+r"(h)
                     : [s] "r"(src)
                     : "cc", "memory");
        break;
    default:
        asm volatile(PRE "lock cmpxchgq %q[s], %[m]" POST
                     : "+a"(a), [m] "+m"(*(uint64_t *)p), [f] "+r"(h)
                     : [s] "r"(src)
                     : "cc", "memory");
        break;
    }
    *rax = a;
    *fl = (*fl & ~(uint64_t)BT_ARITH_FLAGS) | (h & BT_ARITH_FLAGS);
}

static void op_cmpxchg(struct bt_cpu *c, const struct bt_insn *i)
{
    bt_check_lock(c, i);
    unsigned size = i->op[0].size;
    uint64_t src = bt_op_read(c, i, 1);
    uint64_t fl = c->s.rflags, rax = c->s.gpr[RAX];
    if (i->op[0].kind == BT_OPK_MEM) {
        uint64_t lin = bt_op_lin(c, i, 0, size, BT_ACC_WRITE);
        void *p = (i->pfx & BT_PFX_LOCK) ? bt_lock_ptr(c, lin, size) : NULL;
        if (p) {
            locked_cmpxchg(size, p, &rax, src, &fl);
        } else {
            bt_probe_write(c, lin, size, BT_ACC_WRITE);
            uint64_t m = bt_read(c, lin, size, BT_ACC_READ);
            m = host_cmpxchg(size, &rax, m, src, &fl);
            bt_write(c, lin, size, m, BT_ACC_WRITE); /* hardware always writes the destination */
        }
    } else {
        /* on the whole 64-bit register, so the host's zero-extension rules apply as they are */
        uint64_t *d = &c->s.gpr[i->op[0].reg];
        if (i->op[0].rclass == BT_RC_GPR8H) {
            uint64_t m = host_cmpxchg(1, &rax, (*d >> 8) & 0xff, src, &fl);
            *d = (*d & ~0xff00ull) | ((m & 0xff) << 8);
            if (d == &c->s.gpr[RAX]) /* CMPXCHG AH, r8: both halves of AX change */
                rax = (rax & ~0xff00ull) | ((m & 0xff) << 8);
            c->s.gpr[RAX] = rax;
        } else {
            uint64_t v = host_cmpxchg(size, &rax, *d, src, &fl);
            c->s.gpr[RAX] = rax;
            *d = v; /* last: CMPXCHG rAX, r writes the source into rAX */
        }
        bt_commit_flags(c, fl);
        return;
    }
    c->s.gpr[RAX] = rax;
    bt_commit_flags(c, fl);
}

static void op_cmpxchg8b(struct bt_cpu *c, const struct bt_insn *i)
{
    if (i->op[0].kind != BT_OPK_MEM) bt_ud(c);
    uint64_t lin = bt_op_lin(c, i, 0, 8, BT_ACC_WRITE);
    uint64_t rax = c->s.gpr[RAX], rdx = c->s.gpr[RDX];
    uint64_t h = (c->s.rflags & BT_ARITH_FLAGS) | X86_FLAG_FIXED;
    uint32_t b = (uint32_t)c->s.gpr[RBX], cx = (uint32_t)c->s.gpr[RCX];
    void *p = (i->pfx & BT_PFX_LOCK) ? bt_lock_ptr(c, lin, 8) : NULL;
    if (p) {
        asm volatile(PRE "lock cmpxchg8b %[m]" POST
                     : "+a"(rax), "+d"(rdx), [m] "+m"(*(uint64_t *)p), [f] "+r"(h)
                     : "b"(b), "c"(cx)
                     : "cc", "memory");
    } else {
        bt_probe_write(c, lin, 8, BT_ACC_WRITE);
        uint64_t m = bt_read(c, lin, 8, BT_ACC_READ);
        /* the copy is addressed through a register: PRE moves RSP, so no RSP-relative operand */
        asm(PRE "cmpxchg8b (%[p])" POST
            : "+a"(rax), "+d"(rdx), [f] "+r"(h)
            : "b"(b), "c"(cx), [p] "r"(&m)
            : "cc", "memory");
        bt_write(c, lin, 8, m, BT_ACC_WRITE);
    }
    c->s.gpr[RAX] = rax;
    c->s.gpr[RDX] = rdx;
    bt_commit_flags(c, h);
}

static void op_cmpxchg16b(struct bt_cpu *c, const struct bt_insn *i)
{
    if (i->op[0].kind != BT_OPK_MEM) bt_ud(c);
    uint64_t ea = bt_op_ea(c, i, 0);
    uint64_t lin = bt_seg_linear(c, i->op[0].seg, ea, 16, BT_ACC_WRITE);
    if (lin & 15) bt_gp0(c);
    uint64_t rax = c->s.gpr[RAX], rdx = c->s.gpr[RDX];
    uint64_t h = (c->s.rflags & BT_ARITH_FLAGS) | X86_FLAG_FIXED;
    uint64_t b = c->s.gpr[RBX], cx = c->s.gpr[RCX];
    void *p = bt_lock_ptr(c, lin, 16);
    if (p) {
        /* always atomic when the page is RAM: cheap, and right for SMP guests */
        asm volatile(PRE "lock cmpxchg16b %[m]" POST
                     : "+a"(rax), "+d"(rdx), [m] "+m"(*(unsigned __int128 *)p), [f] "+r"(h)
                     : "b"(b), "c"(cx)
                     : "cc", "memory");
    } else {
        unsigned __int128 m __attribute__((aligned(16)));
        bt_probe_write(c, lin, 16, BT_ACC_WRITE);
        bt_read_buf(c, lin, &m, 16, BT_ACC_READ);
        asm(PRE "cmpxchg16b (%[p])" POST
            : "+a"(rax), "+d"(rdx), [f] "+r"(h)
            : "b"(b), "c"(cx), [p] "r"(&m)
            : "cc", "memory");
        bt_write_buf(c, lin, &m, 16, BT_ACC_WRITE);
    }
    c->s.gpr[RAX] = rax;
    c->s.gpr[RDX] = rdx;
    bt_commit_flags(c, h);
}

BT_HANDLER(XCHG, op_xchg);
BT_HANDLER(XADD, op_xadd);
BT_HANDLER(CMPXCHG, op_cmpxchg);
BT_HANDLER(CMPXCHG8B, op_cmpxchg8b);
BT_HANDLER(CMPXCHG16B, op_cmpxchg16b);
