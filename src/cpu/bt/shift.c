/* Shifts and rotates: SHL/SAL SHR SAR ROL ROR RCL RCR (by 1, CL, imm8) and SHLD/SHRD.
 *
 * Trust: the count is guest data; the host instruction masks it exactly as the guest's would
 * (5 or 6 bits, RCL/RCR modulo 9/17 for narrow operands) and leaves the flags alone for a masked
 * count of 0, so the guest sees hardware's "count 0 changes no flags" rule for free. */
#include "cpu/bt/intops.h"

static void shift(struct bt_cpu *c, const struct bt_insn *i, int op)
{
    unsigned size = i->op[0].size;
    uint8_t count = (uint8_t)bt_op_read(c, i, 1);
    struct bt_rmw r;
    uint64_t fl = c->s.rflags;
    uint64_t a = bt_rmw_read(c, i, 0, &r);
    uint64_t v = bt_host_alu(op, size, a, count, &fl);
    /* The host runs the CL form.  Intel's immediate forms of ROL/ROR with a register destination
     * differ in the undefined OF: for a masked count above 1 it is left unchanged (measured on
     * the host; the CL forms and the memory-destination forms compute it). */
    if ((op == BT_ROL || op == BT_ROR) && i->op[1].kind == BT_OPK_IMM && !r.mem &&
        (count & (size == 8 ? 63 : 31)) > 1)
        fl = (fl & ~(uint64_t)X86_FLAG_OF) | (c->s.rflags & X86_FLAG_OF);
    bt_rmw_write(c, i, 0, &r, v);
    bt_commit_flags(c, fl);
}

static void op_rol(struct bt_cpu *c, const struct bt_insn *i)
{
    shift(c, i, BT_ROL);
}
static void op_ror(struct bt_cpu *c, const struct bt_insn *i)
{
    shift(c, i, BT_ROR);
}
static void op_rcl(struct bt_cpu *c, const struct bt_insn *i)
{
    shift(c, i, BT_RCL);
}
static void op_rcr(struct bt_cpu *c, const struct bt_insn *i)
{
    shift(c, i, BT_RCR);
}
static void op_shl(struct bt_cpu *c, const struct bt_insn *i)
{
    shift(c, i, BT_SHL);
}
static void op_shr(struct bt_cpu *c, const struct bt_insn *i)
{
    shift(c, i, BT_SHR);
}
static void op_sar(struct bt_cpu *c, const struct bt_insn *i)
{
    shift(c, i, BT_SAR);
}

static void shd(struct bt_cpu *c, const struct bt_insn *i, int op)
{
    unsigned size = i->op[0].size;
    uint64_t src = bt_op_read(c, i, 1);
    uint8_t count = (uint8_t)bt_op_read(c, i, 2);
    struct bt_rmw r;
    uint64_t fl = c->s.rflags;
    uint64_t a = bt_rmw_read(c, i, 0, &r);
    uint64_t v = bt_host_shd(op, size, a, src, count, &fl);
    bt_rmw_write(c, i, 0, &r, v);
    bt_commit_flags(c, fl);
}

static void op_shld(struct bt_cpu *c, const struct bt_insn *i)
{
    shd(c, i, BT_SHLD);
}
static void op_shrd(struct bt_cpu *c, const struct bt_insn *i)
{
    shd(c, i, BT_SHRD);
}

BT_HANDLER(ROL, op_rol);
BT_HANDLER(ROR, op_ror);
BT_HANDLER(RCL, op_rcl);
BT_HANDLER(RCR, op_rcr);
BT_HANDLER(SHL, op_shl);
BT_HANDLER(SHR, op_shr);
BT_HANDLER(SAR, op_sar);
BT_HANDLER(SHLD, op_shld);
BT_HANDLER(SHRD, op_shrd);
