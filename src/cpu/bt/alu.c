/* Integer arithmetic and logic (ADD OR ADC SBB AND SUB XOR CMP TEST INC DEC NEG NOT) and the host
 * execution helpers every integer family uses for exact flags.
 *
 * Trust: operand values are guest data and are only computed on; the host instruction runs with
 * the guest's six arithmetic flags loaded and nothing else (TF, AC, DF and IOPL are never loaded
 * into the host RFLAGS), so it cannot trap or change host state beyond its result and flags.
 * The asm lowers RSP by 128 before PUSHF/POPF so the compiler's red zone is never overwritten. */
#include "cpu/bt/intops.h"

#define PRE  "lea -128(%%rsp), %%rsp\n\tpushq %[f]\n\tpopfq\n\t"
#define POST "\n\tpushfq\n\tpopq %[f]\n\tlea 128(%%rsp), %%rsp"

/* host flags image: the guest's arithmetic flags and the always-one bit, nothing else */
static inline uint64_t fl_in(uint64_t fl)
{
    return (fl & BT_ARITH_FLAGS) | X86_FLAG_FIXED;
}
static inline void fl_out(uint64_t *fl, uint64_t h)
{
    *fl = (*fl & ~(uint64_t)BT_ARITH_FLAGS) | (h & BT_ARITH_FLAGS);
}

/* two-operand "op b, a" at each size */
#define OP2(I)                                                                                     \
    switch (size) {                                                                                \
    case 1: asm(PRE I "b %b[b], %b[a]" POST                                                        \
                : [a] "+r"(a), [f] "+r"(h)                                                         \
                : [b] "r"(b)                                                                       \
                : "cc");                                                                           \
        break;                                                                                     \
    case 2: asm(PRE I "w %w[b], %w[a]" POST                                                        \
                : [a] "+r"(a), [f] "+r"(h)                                                         \
                : [b] "r"(b)                                                                       \
                : "cc");                                                                           \
        break;                                                                                     \
    case 4: asm(PRE I "l %k[b], %k[a]" POST                                                        \
                : [a] "+r"(a), [f] "+r"(h)                                                         \
                : [b] "r"(b)                                                                       \
                : "cc");                                                                           \
        break;                                                                                     \
    default: asm(PRE I "q %q[b], %q[a]" POST                                                       \
                 : [a] "+r"(a), [f] "+r"(h)                                                        \
                 : [b] "r"(b)                                                                      \
                 : "cc");                                                                          \
        break;                                                                                     \
    }
/* the same without loading the guest flags: for operations whose six flags do not depend on
 * the incoming ones (POPF is the expensive part; the differential tester checks the claim) */
#define PRE_NF "lea -128(%%rsp), %%rsp\n\t"
#define OP2N(I)                                                                                    \
    switch (size) {                                                                                \
    case 1:                                                                                        \
        asm(PRE_NF I "b %b[b], %b[a]" POST : [a] "+r"(a), [f] "=r"(h) : [b] "r"(b) : "cc");        \
        break;                                                                                     \
    case 2:                                                                                        \
        asm(PRE_NF I "w %w[b], %w[a]" POST : [a] "+r"(a), [f] "=r"(h) : [b] "r"(b) : "cc");        \
        break;                                                                                     \
    case 4:                                                                                        \
        asm(PRE_NF I "l %k[b], %k[a]" POST : [a] "+r"(a), [f] "=r"(h) : [b] "r"(b) : "cc");        \
        break;                                                                                     \
    default:                                                                                       \
        asm(PRE_NF I "q %q[b], %q[a]" POST : [a] "+r"(a), [f] "=r"(h) : [b] "r"(b) : "cc");        \
        break;                                                                                     \
    }
/* 16/32/64 only (BT*, BSF/BSR) */
#define OP2W(I)                                                                                    \
    switch (size) {                                                                                \
    case 2: asm(PRE I "w %w[b], %w[a]" POST                                                        \
                : [a] "+r"(a), [f] "+r"(h)                                                         \
                : [b] "r"(b)                                                                       \
                : "cc");                                                                           \
        break;                                                                                     \
    case 4: asm(PRE I "l %k[b], %k[a]" POST                                                        \
                : [a] "+r"(a), [f] "+r"(h)                                                         \
                : [b] "r"(b)                                                                       \
                : "cc");                                                                           \
        break;                                                                                     \
    default: asm(PRE I "q %q[b], %q[a]" POST                                                       \
                 : [a] "+r"(a), [f] "+r"(h)                                                        \
                 : [b] "r"(b)                                                                      \
                 : "cc");                                                                          \
        break;                                                                                     \
    }
#define OP1(I)                                                                                     \
    switch (size) {                                                                                \
    case 1: asm(PRE I "b %b[a]" POST : [a] "+r"(a), [f] "+r"(h) : : "cc"); break;                  \
    case 2: asm(PRE I "w %w[a]" POST : [a] "+r"(a), [f] "+r"(h) : : "cc"); break;                  \
    case 4: asm(PRE I "l %k[a]" POST : [a] "+r"(a), [f] "+r"(h) : : "cc"); break;                  \
    default: asm(PRE I "q %q[a]" POST : [a] "+r"(a), [f] "+r"(h) : : "cc"); break;                 \
    }
#define SHIFT(I)                                                                                   \
    switch (size) {                                                                                \
    case 1: asm(PRE I "b %%cl, %b[a]" POST : [a] "+r"(a), [f] "+r"(h) : "c"(b) : "cc"); break;     \
    case 2: asm(PRE I "w %%cl, %w[a]" POST : [a] "+r"(a), [f] "+r"(h) : "c"(b) : "cc"); break;     \
    case 4: asm(PRE I "l %%cl, %k[a]" POST : [a] "+r"(a), [f] "+r"(h) : "c"(b) : "cc"); break;     \
    default: asm(PRE I "q %%cl, %q[a]" POST : [a] "+r"(a), [f] "+r"(h) : "c"(b) : "cc"); break;    \
    }

uint64_t bt_host_alu(int op, unsigned size, uint64_t a, uint64_t b, uint64_t *fl)
{
    uint64_t h = fl_in(*fl);
    switch (op) {
    case BT_ADD: OP2N("add"); break;
    case BT_OR: OP2N("or"); break;
    case BT_ADC: OP2("adc"); break;
    case BT_SBB: OP2("sbb"); break;
    case BT_AND: OP2N("and"); break;
    case BT_SUB: OP2N("sub"); break;
    case BT_XOR: OP2N("xor"); break;
    case BT_CMP: OP2N("cmp"); break;
    case BT_TEST: OP2N("test"); break;
    case BT_XADD: OP2("xadd"); break; /* a = a + b (b's new value is not needed) */
    case BT_INC: OP1("inc"); break;
    case BT_DEC: OP1("dec"); break;
    case BT_NEG: OP1("neg"); break;
    case BT_NOT: OP1("not"); break;
    case BT_ROL: SHIFT("rol"); break;
    case BT_ROR: SHIFT("ror"); break;
    case BT_RCL: SHIFT("rcl"); break;
    case BT_RCR: SHIFT("rcr"); break;
    case BT_SHL: SHIFT("shl"); break;
    case BT_SAL: SHIFT("sal"); break;
    case BT_SHR: SHIFT("shr"); break;
    case BT_SAR: SHIFT("sar"); break;
    case BT_BT: OP2W("bt"); break;
    case BT_BTS: OP2W("bts"); break;
    case BT_BTR: OP2W("btr"); break;
    case BT_BTC: OP2W("btc"); break;
    case BT_BSF: OP2W("bsf"); break; /* a is the old destination: kept when b == 0 */
    case BT_BSR: OP2W("bsr"); break;
    default: break;
    }
    fl_out(fl, h);
    return a;
}

uint64_t bt_host_shd(int op, unsigned size, uint64_t a, uint64_t b, uint8_t n, uint64_t *fl)
{
    uint64_t h = fl_in(*fl);
#define SHD(I)                                                                                     \
    switch (size) {                                                                                \
    case 2:                                                                                        \
        asm(PRE I "w %%cl, %w[b], %w[a]" POST                                                      \
            : [a] "+r"(a), [f] "+r"(h)                                                             \
            : [b] "r"(b), "c"(n)                                                                   \
            : "cc");                                                                               \
        break;                                                                                     \
    case 4:                                                                                        \
        asm(PRE I "l %%cl, %k[b], %k[a]" POST                                                      \
            : [a] "+r"(a), [f] "+r"(h)                                                             \
            : [b] "r"(b), "c"(n)                                                                   \
            : "cc");                                                                               \
        break;                                                                                     \
    default:                                                                                       \
        asm(PRE I "q %%cl, %q[b], %q[a]" POST                                                      \
            : [a] "+r"(a), [f] "+r"(h)                                                             \
            : [b] "r"(b), "c"(n)                                                                   \
            : "cc");                                                                               \
        break;                                                                                     \
    }
    if (op == BT_SHLD) {
        SHD("shld");
    } else {
        SHD("shrd");
    }
#undef SHD
    fl_out(fl, h);
    return a;
}

/* LOCK forms on host memory */
#define LOP2(I)                                                                                    \
    switch (size) {                                                                                \
    case 1:                                                                                        \
        asm volatile(PRE "lock " I "b %b[b], %[m]" POST                                            \
                     : [m] "+m"(*(uint8_t *)p), [f] "+r"(h), [b] "+r"(b)                           \
                     :                                                                             \
                     : "cc", "memory");                                                            \
        break;                                                                                     \
    case 2:                                                                                        \
        asm volatile(PRE "lock " I "w %w[b], %[m]" POST                                            \
                     : [m] "+m"(*(uint16_t *)p), [f] "+r"(h), [b] "+r"(b)                          \
                     :                                                                             \
                     : "cc", "memory");                                                            \
        break;                                                                                     \
    case 4:                                                                                        \
        asm volatile(PRE "lock " I "l %k[b], %[m]" POST                                            \
                     : [m] "+m"(*(uint32_t *)p), [f] "+r"(h), [b] "+r"(b)                          \
                     :                                                                             \
                     : "cc", "memory");                                                            \
        break;                                                                                     \
    default:                                                                                       \
        asm volatile(PRE "lock " I "q %q[b], %[m]" POST                                            \
                     : [m] "+m"(*(uint64_t *)p), [f] "+r"(h), [b] "+r"(b)                          \
                     :                                                                             \
                     : "cc", "memory");                                                            \
        break;                                                                                     \
    }
#define LOP2W(I)                                                                                   \
    switch (size) {                                                                                \
    case 2:                                                                                        \
        asm volatile(PRE "lock " I "w %w[b], %[m]" POST                                            \
                     : [m] "+m"(*(uint16_t *)p), [f] "+r"(h), [b] "+r"(b)                          \
                     :                                                                             \
                     : "cc", "memory");                                                            \
        break;                                                                                     \
    case 4:                                                                                        \
        asm volatile(PRE "lock " I "l %k[b], %[m]" POST                                            \
                     : [m] "+m"(*(uint32_t *)p), [f] "+r"(h), [b] "+r"(b)                          \
                     :                                                                             \
                     : "cc", "memory");                                                            \
        break;                                                                                     \
    default:                                                                                       \
        asm volatile(PRE "lock " I "q %q[b], %[m]" POST                                            \
                     : [m] "+m"(*(uint64_t *)p), [f] "+r"(h), [b] "+r"(b)                          \
                     :                                                                             \
                     : "cc", "memory");                                                            \
        break;                                                                                     \
    }
#define LOP1(I)                                                                                    \
    switch (size) {                                                                                \
    case 1:                                                                                        \
        asm volatile(PRE "lock " I "b %[m]" POST                                                   \
                     : [m] "+m"(*(uint8_t *)p), [f] "+r"(h)                                        \
                     :                                                                             \
                     : "cc", "memory");                                                            \
        break;                                                                                     \
    case 2:                                                                                        \
        asm volatile(PRE "lock " I "w %[m]" POST                                                   \
                     : [m] "+m"(*(uint16_t *)p), [f] "+r"(h)                                       \
                     :                                                                             \
                     : "cc", "memory");                                                            \
        break;                                                                                     \
    case 4:                                                                                        \
        asm volatile(PRE "lock " I "l %[m]" POST                                                   \
                     : [m] "+m"(*(uint32_t *)p), [f] "+r"(h)                                       \
                     :                                                                             \
                     : "cc", "memory");                                                            \
        break;                                                                                     \
    default:                                                                                       \
        asm volatile(PRE "lock " I "q %[m]" POST                                                   \
                     : [m] "+m"(*(uint64_t *)p), [f] "+r"(h)                                       \
                     :                                                                             \
                     : "cc", "memory");                                                            \
        break;                                                                                     \
    }

uint64_t bt_host_alu_locked(int op, unsigned size, void *p, uint64_t b, uint64_t *fl)
{
    uint64_t h = fl_in(*fl);
    switch (op) {
    case BT_ADD: LOP2("add"); break;
    case BT_OR: LOP2("or"); break;
    case BT_ADC: LOP2("adc"); break;
    case BT_SBB: LOP2("sbb"); break;
    case BT_AND: LOP2("and"); break;
    case BT_SUB: LOP2("sub"); break;
    case BT_XOR: LOP2("xor"); break;
    case BT_XADD: LOP2("xadd"); break; /* b receives the old memory value */
    case BT_XCHG: LOP2("xchg"); break; /* xchg is locked anyway; the prefix is harmless */
    case BT_INC: LOP1("inc"); break;
    case BT_DEC: LOP1("dec"); break;
    case BT_NEG: LOP1("neg"); break;
    case BT_NOT: LOP1("not"); break;
    case BT_BTS: LOP2W("bts"); break;
    case BT_BTR: LOP2W("btr"); break;
    case BT_BTC: LOP2W("btc"); break;
    default: break;
    }
    fl_out(fl, h);
    return b;
}

/* ---- operand helpers for read-modify-write ------------------------------------------------- */

uint64_t bt_rmw_read(struct bt_cpu *c, const struct bt_insn *i, int n, struct bt_rmw *r)
{
    const struct bt_operand *o = &i->op[n];
    if (o->kind != BT_OPK_MEM) {
        r->mem = false;
        return bt_opr(c, i, n);
    }
    r->mem = true;
    r->lin = bt_op_lin(c, i, n, o->size, BT_ACC_WRITE);
    /* hardware checks a read-modify-write as a write: a #PF reports W=1 even for the read */
    bt_probe_write(c, r->lin, o->size, BT_ACC_WRITE);
    return bt_read(c, r->lin, o->size, BT_ACC_READ);
}

void bt_rmw_write(struct bt_cpu *c, const struct bt_insn *i, int n, const struct bt_rmw *r,
                  uint64_t v)
{
    if (r->mem)
        bt_write(c, r->lin, i->op[n].size, v, BT_ACC_WRITE);
    else
        bt_opw(c, i, n, v);
}

void bt_check_lock(struct bt_cpu *c, const struct bt_insn *i)
{
    if ((i->pfx & BT_PFX_LOCK) && i->op[0].kind != BT_OPK_MEM) bt_ud(c);
}

/* LOCKed RMW on memory operand 0 through host atomics when it is RAM.  Returns false (nothing
 * done) if the target is MMIO: the caller then emulates; a device sees the accesses in order. */
static bool try_locked(struct bt_cpu *c, const struct bt_insn *i, int op, uint64_t b, uint64_t *old)
{
    if (!(i->pfx & BT_PFX_LOCK) || i->op[0].kind != BT_OPK_MEM) return false;
    unsigned size = i->op[0].size;
    uint64_t lin = bt_op_lin(c, i, 0, size, BT_ACC_WRITE);
    void *p = bt_lock_ptr(c, lin, size);
    if (!p) return false;
    uint64_t fl = c->s.rflags;
    uint64_t r = bt_host_alu_locked(op, size, p, b, &fl);
    if (old) *old = r;
    bt_commit_flags(c, fl);
    return true;
}

/* ---- handlers ------------------------------------------------------------------------------ */

static void binop(struct bt_cpu *c, const struct bt_insn *i, int op)
{
    if (i->pfx & BT_PFX_LOCK) bt_check_lock(c, i);
    unsigned size = i->op[0].size;
    uint64_t b = bt_opr(c, i, 1) & bt_size_mask(size);
    if ((i->pfx & BT_PFX_LOCK) && try_locked(c, i, op, b, NULL)) return;
    struct bt_rmw r;
    uint64_t fl = c->s.rflags;
    if (op == BT_CMP || op == BT_TEST) {
        uint64_t a = bt_opr(c, i, 0);
        bt_host_alu(op, size, a, b, &fl);
    } else {
        uint64_t a = bt_rmw_read(c, i, 0, &r);
        uint64_t v = bt_host_alu(op, size, a, b, &fl);
        bt_rmw_write(c, i, 0, &r, v);
    }
    bt_commit_flags(c, fl);
}

static void unop(struct bt_cpu *c, const struct bt_insn *i, int op)
{
    bt_check_lock(c, i);
    if ((i->pfx & BT_PFX_LOCK) && try_locked(c, i, op, 0, NULL)) return;
    struct bt_rmw r;
    uint64_t fl = c->s.rflags;
    uint64_t a = bt_rmw_read(c, i, 0, &r);
    uint64_t v = bt_host_alu(op, i->op[0].size, a, 0, &fl);
    bt_rmw_write(c, i, 0, &r, v);
    bt_commit_flags(c, fl);
}

static void op_add(struct bt_cpu *c, const struct bt_insn *i)
{
    binop(c, i, BT_ADD);
}
static void op_or(struct bt_cpu *c, const struct bt_insn *i)
{
    binop(c, i, BT_OR);
}
static void op_adc(struct bt_cpu *c, const struct bt_insn *i)
{
    binop(c, i, BT_ADC);
}
static void op_sbb(struct bt_cpu *c, const struct bt_insn *i)
{
    binop(c, i, BT_SBB);
}
static void op_and(struct bt_cpu *c, const struct bt_insn *i)
{
    binop(c, i, BT_AND);
}
static void op_sub(struct bt_cpu *c, const struct bt_insn *i)
{
    binop(c, i, BT_SUB);
}
static void op_xor(struct bt_cpu *c, const struct bt_insn *i)
{
    binop(c, i, BT_XOR);
}
static void op_cmp(struct bt_cpu *c, const struct bt_insn *i)
{
    binop(c, i, BT_CMP);
}
static void op_test(struct bt_cpu *c, const struct bt_insn *i)
{
    binop(c, i, BT_TEST);
}
static void op_inc(struct bt_cpu *c, const struct bt_insn *i)
{
    unop(c, i, BT_INC);
}
static void op_dec(struct bt_cpu *c, const struct bt_insn *i)
{
    unop(c, i, BT_DEC);
}
static void op_neg(struct bt_cpu *c, const struct bt_insn *i)
{
    unop(c, i, BT_NEG);
}

static void op_not(struct bt_cpu *c, const struct bt_insn *i)
{
    unop(c, i, BT_NOT); /* NOT changes no flags; the host agrees */
}

BT_HANDLER(ADD, op_add);
BT_HANDLER(OR, op_or);
BT_HANDLER(ADC, op_adc);
BT_HANDLER(SBB, op_sbb);
BT_HANDLER(AND, op_and);
BT_HANDLER(SUB, op_sub);
BT_HANDLER(XOR, op_xor);
BT_HANDLER(CMP, op_cmp);
BT_HANDLER(TEST, op_test);
BT_HANDLER(INC, op_inc);
BT_HANDLER(DEC, op_dec);
BT_HANDLER(NEG, op_neg);
BT_HANDLER(NOT, op_not);
