/* MUL, IMUL (one-, two- and three-operand forms), DIV, IDIV.
 *
 * Trust: divisor and dividend are guest data.  Division is checked here first — divide by zero
 * and a quotient that does not fit raise #DE as hardware does — so the host DIV/IDIV that then
 * computes result and (undefined) flags can never trap in the VMM. */
#include "cpu/bt/intops.h"

#define PRE  "lea -128(%%rsp), %%rsp\n\tpushq %[f]\n\tpopfq\n\t"
#define POST "\n\tpushfq\n\tpopq %[f]\n\tlea 128(%%rsp), %%rsp"

/* one-operand MUL/IMUL/DIV/IDIV on rax/rdx with the host instruction `I` */
#define ONEOP(I)                                                                                   \
    switch (size) {                                                                                \
    case 1: asm(PRE I "b %b[s]" POST                                                               \
                : "+a"(ax), "+d"(dx), [f] "+r"(h)                                                  \
                : [s] "r"(s)                                                                       \
                : "cc");                                                                           \
        break;                                                                                     \
    case 2: asm(PRE I "w %w[s]" POST                                                               \
                : "+a"(ax), "+d"(dx), [f] "+r"(h)                                                  \
                : [s] "r"(s)                                                                       \
                : "cc");                                                                           \
        break;                                                                                     \
    case 4: asm(PRE I "l %k[s]" POST                                                               \
                : "+a"(ax), "+d"(dx), [f] "+r"(h)                                                  \
                : [s] "r"(s)                                                                       \
                : "cc");                                                                           \
        break;                                                                                     \
    default: asm(PRE I "q %q[s]" POST                                                              \
                 : "+a"(ax), "+d"(dx), [f] "+r"(h)                                                 \
                 : [s] "r"(s)                                                                      \
                 : "cc");                                                                          \
        break;                                                                                     \
    }

enum { MUL, IMUL, DIV, IDIV };

static bool div_faults(int op, unsigned size, uint64_t ax, uint64_t dx, uint64_t s)
{
    unsigned bits = size * 8;
    uint64_t m = bt_size_mask(size);
    if ((s & m) == 0) return true;
    if (op == DIV) {
        if (size == 1) return (ax & 0xffff) / (s & 0xff) > 0xff;
        return (dx & m) >= (s & m); /* quotient needs more than `bits` bits */
    }
    /* IDIV: the dividend is twice the operand size, signed */
    __int128 dividend;
    if (size == 1)
        dividend = (int16_t)ax;
    else
        dividend =
            (__int128)((((unsigned __int128)(dx & m) << bits) | (ax & m)) << (128 - 2 * bits)) >>
            (128 - 2 * bits); /* shift unsigned, then sign-extend arithmetically */
    __int128 divisor = bt_sext(s, size);
    __int128 lo = -((__int128)1 << (bits - 1)), hi = ((__int128)1 << (bits - 1)) - 1;
    if (divisor == -1 && dividend == (__int128)((unsigned __int128)1 << 127))
        return true; /* overflows, and C cannot divide it */
    __int128 q = dividend / divisor;
    return q < lo || q > hi;
}

static void oneop(struct bt_cpu *c, const struct bt_insn *i, int op)
{
    unsigned size = i->op[0].size;
    uint64_t s = bt_op_read(c, i, 0);
    uint64_t ax = c->s.gpr[RAX], dx = c->s.gpr[RDX];
    uint64_t fl = c->s.rflags, h = (fl & BT_ARITH_FLAGS) | X86_FLAG_FIXED;
    if ((op == DIV || op == IDIV) && div_faults(op, size, ax, dx, s))
        bt_raise(c, X86_DE, BT_NO_ERRCODE);
    switch (op) {
    case MUL: ONEOP("mul"); break;
    case IMUL: ONEOP("imul"); break;
    case DIV: ONEOP("div"); break;
    default: ONEOP("idiv"); break;
    }
    /* the host wrote exactly the registers the guest's instruction writes (AX for byte forms,
     * zero-extended EAX/EDX for 32-bit forms) */
    if (size == 1) {
        bt_gpr_write(c, RAX, 2, ax);
    } else {
        bt_gpr_write(c, RAX, size, ax);
        bt_gpr_write(c, RDX, size, dx);
    }
    bt_commit_flags(c, h);
}

static void op_mul(struct bt_cpu *c, const struct bt_insn *i)
{
    oneop(c, i, MUL);
}
static void op_div(struct bt_cpu *c, const struct bt_insn *i)
{
    oneop(c, i, DIV);
}
static void op_idiv(struct bt_cpu *c, const struct bt_insn *i)
{
    oneop(c, i, IDIV);
}

static void op_imul(struct bt_cpu *c, const struct bt_insn *i)
{
    if (i->nops == 1) {
        oneop(c, i, IMUL);
        return;
    }
    unsigned size = i->op[0].size;
    uint64_t a = bt_op_read(c, i, 1);
    uint64_t b = i->nops == 3 ? bt_op_read(c, i, 2) : bt_op_read(c, i, 0);
    uint64_t h = (c->s.rflags & BT_ARITH_FLAGS) | X86_FLAG_FIXED;
    switch (size) {
    case 2:
        asm(PRE "imulw %w[b], %w[a]" POST : [a] "+r"(a), [f] "+r"(h) : [b] "r"(b) : "cc");
        break;
    case 4:
        asm(PRE "imull %k[b], %k[a]" POST : [a] "+r"(a), [f] "+r"(h) : [b] "r"(b) : "cc");
        break;
    default:
        asm(PRE "imulq %q[b], %q[a]" POST : [a] "+r"(a), [f] "+r"(h) : [b] "r"(b) : "cc");
        break;
    }
    bt_op_write(c, i, 0, a);
    bt_commit_flags(c, h);
}

BT_HANDLER(MUL, op_mul);
BT_HANDLER(IMUL, op_imul);
BT_HANDLER(DIV, op_div);
BT_HANDLER(IDIV, op_idiv);
