/* Near control transfers: JMP, Jcc, CALL, RET (with imm16), JCXZ/JECXZ/JRCXZ, LOOP/LOOPE/LOOPNE,
 * and the glue from far JMP/CALL/RET encodings to seg.c's far-transfer code.
 *
 * Trust: branch targets are guest data.  A target outside the code segment limit (legacy modes)
 * or non-canonical (64-bit mode) raises #GP(0) on the branch itself, before any register or
 * stack change, as the SDM's pseudo-code does. */
#include "cpu/bt/cfi.h"
#include "cpu/bt/intops.h"

static uint64_t ip_mask(unsigned opsize)
{
    return opsize == 64 ? ~0ull : opsize == 32 ? 0xffffffffull : 0xffffull;
}

/* Validates a near target (already truncated to the operand size) and jumps. */
static void jump_to(struct bt_cpu *c, uint64_t target)
{
    if (c->code_bits == 64) {
        if (!x86_is_canonical(target)) bt_gp0(c);
    } else if (target > c->s.seg[SEG_CS].limit) {
        bt_gp0(c);
    }
    c->s.rip = target;
}

static uint64_t rel_target(struct bt_cpu *c, const struct bt_insn *i)
{
    return (c->next_rip + (uint64_t)i->op[0].disp) & ip_mask(i->opsize);
}

static uint64_t near_target(struct bt_cpu *c, const struct bt_insn *i)
{
    if (i->op[0].kind == BT_OPK_IMM) return rel_target(c, i);
    return bt_op_read(c, i, 0) & ip_mask(i->opsize);
}

static void op_jmp(struct bt_cpu *c, const struct bt_insn *i)
{
    jump_to(c, near_target(c, i));
}

static void op_jcc(struct bt_cpu *c, const struct bt_insn *i)
{
    if (bt_cond(c->s.rflags, i->opcode & 0xf)) jump_to(c, rel_target(c, i));
}

static uint64_t stack_mask(const struct bt_cpu *c)
{
    return c->stack_bits == 64 ? ~0ull : c->stack_bits == 32 ? 0xffffffffull : 0xffffull;
}

/* --cfi checks returns of the software CPU's own guests (not the KVM backend's fallback, which
 * sees single instructions of a guest the hardware runs) */
static inline bool cfi_on(const struct bt_cpu *c)
{
    return bt_cfi_active(c->cpl) && !c->kvm_assist;
}

static void op_call(struct bt_cpu *c, const struct bt_insn *i)
{
    uint64_t target = near_target(c, i);
    if (c->code_bits == 64 ? !x86_is_canonical(target) : target > c->s.seg[SEG_CS].limit) bt_gp0(c);
    bt_push(c, i->opsize / 8, c->next_rip);
    c->s.rip = target;
    if (cfi_on(c)) bt_cfi_call(c, c->s.gpr[RSP] & stack_mask(c), c->next_rip);
}

static void op_ret(struct bt_cpu *c, const struct bt_insn *i)
{
    unsigned size = i->opsize / 8;
    uint64_t mask = stack_mask(c);
    uint64_t rsp = c->s.gpr[RSP] & mask;
    uint64_t lin = bt_seg_linear(c, SEG_SS, rsp, size, BT_ACC_READ);
    uint64_t target = bt_read(c, lin, size, BT_ACC_READ);
    jump_to(c, target); /* may #GP: RSP is committed only after */
    if (cfi_on(c) && !bt_cfi_ret(c, rsp, target)) {
        c->s.rip = c->insn_rip; /* --cfi enforce: the RET does not complete, the VM stops */
        return;
    }
    uint64_t extra = i->nops ? (uint64_t)i->op[0].disp & 0xffff : 0;
    c->s.gpr[RSP] = (c->s.gpr[RSP] & ~mask) | ((rsp + size + extra) & mask);
}

/* count register of JCXZ/LOOP: CX, ECX or RCX by address size */
static unsigned count_size(const struct bt_insn *i)
{
    return i->addrsize / 8;
}

static void op_jrcxz(struct bt_cpu *c, const struct bt_insn *i)
{
    if (bt_gpr_read(c, RCX, count_size(i)) == 0) jump_to(c, rel_target(c, i));
}

static void loop(struct bt_cpu *c, const struct bt_insn *i, int kind)
{
    unsigned cs = count_size(i);
    uint64_t count = (bt_gpr_read(c, RCX, cs) - 1) & bt_size_mask(cs);
    bool take = count != 0;
    if (kind == 1)
        take = take && (c->s.rflags & X86_FLAG_ZF);
    else if (kind == 2)
        take = take && !(c->s.rflags & X86_FLAG_ZF);
    if (take) jump_to(c, rel_target(c, i));
    bt_gpr_write(c, RCX, cs, count);
}

static void op_loop(struct bt_cpu *c, const struct bt_insn *i)
{
    loop(c, i, 0);
}
static void op_loope(struct bt_cpu *c, const struct bt_insn *i)
{
    loop(c, i, 1);
}
static void op_loopne(struct bt_cpu *c, const struct bt_insn *i)
{
    loop(c, i, 2);
}

/* Far transfers: decode the pointer, seg.c does the descriptor checks and the switch. */
static void far_pointer(struct bt_cpu *c, const struct bt_insn *i, uint16_t *sel, uint64_t *off)
{
    if (i->op[0].kind == BT_OPK_PTR) {
        *sel = i->op[0].sel;
        *off = (uint64_t)i->op[0].disp & ip_mask(i->opsize);
        return;
    }
    if (i->op[0].kind != BT_OPK_MEM) bt_ud(c); /* FF /3 and /5 with a register operand */
    unsigned osz = i->opsize / 8;
    uint64_t lin = bt_op_lin(c, i, 0, osz + 2, BT_ACC_READ);
    *off = bt_read(c, lin, osz, BT_ACC_READ);
    *sel = (uint16_t)bt_read(c, lin + osz, 2, BT_ACC_READ);
}

static void op_jmp_far(struct bt_cpu *c, const struct bt_insn *i)
{
    uint16_t sel;
    uint64_t off;
    far_pointer(c, i, &sel, &off);
    bt_far_jump(c, sel, off, false, i->opsize);
}

static void op_call_far(struct bt_cpu *c, const struct bt_insn *i)
{
    uint16_t sel;
    uint64_t off;
    far_pointer(c, i, &sel, &off);
    bt_far_jump(c, sel, off, true, i->opsize);
}

static void op_ret_far(struct bt_cpu *c, const struct bt_insn *i)
{
    bt_far_return(c, i->opsize, i->nops ? (uint16_t)i->op[0].disp : 0);
}

BT_HANDLER(JMP, op_jmp);
BT_HANDLER(CALL, op_call);
BT_HANDLER(RET, op_ret);
BT_HANDLER(JO, op_jcc);
BT_HANDLER(JNO, op_jcc);
BT_HANDLER(JB, op_jcc);
BT_HANDLER(JNB, op_jcc);
BT_HANDLER(JZ, op_jcc);
BT_HANDLER(JNZ, op_jcc);
BT_HANDLER(JBE, op_jcc);
BT_HANDLER(JNBE, op_jcc);
BT_HANDLER(JS, op_jcc);
BT_HANDLER(JNS, op_jcc);
BT_HANDLER(JP, op_jcc);
BT_HANDLER(JNP, op_jcc);
BT_HANDLER(JL, op_jcc);
BT_HANDLER(JNL, op_jcc);
BT_HANDLER(JLE, op_jcc);
BT_HANDLER(JNLE, op_jcc);
BT_HANDLER(JCXZ, op_jrcxz);
BT_HANDLER(JECXZ, op_jrcxz);
BT_HANDLER(JRCXZ, op_jrcxz);
BT_HANDLER(LOOP, op_loop);
BT_HANDLER(LOOPE, op_loope);
BT_HANDLER(LOOPNE, op_loopne);
BT_HANDLER_ID(BT_MNEM_JMP_FAR, op_jmp_far);
BT_HANDLER_ID(BT_MNEM_CALL_FAR, op_call_far);
BT_HANDLER_ID(BT_MNEM_RET_FAR, op_ret_far);
