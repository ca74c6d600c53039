/* Data movement and flag-register odds and ends: MOV (GPR, memory, immediate, segment, and
 * default MOV CR/DR), MOVZX/MOVSX/MOVSXD, LEA, CBW..CQO, PUSH/POP (incl. segment registers),
 * PUSHA/POPA, ENTER/LEAVE, SETcc, CMOVcc, LAHF/SAHF, CLC/STC/CMC/CLD/STD, NOP/PAUSE, UD0/1/2.
 *
 * Trust: values are guest data and only moved.  Stack operations compute every address first
 * and commit RSP last, so a #SS/#PF leaves the stack pointer unchanged; segment loads go through
 * seg.c (bt_load_seg), which applies all descriptor checks. */
#include "cpu/bt/intops.h"

static void op_mov(struct bt_cpu *c, const struct bt_insn *i)
{
    bt_opw(c, i, 0, bt_opr(c, i, 1));
}

static void op_mov_seg(struct bt_cpu *c, const struct bt_insn *i)
{
    if (i->op[0].kind == BT_OPK_REG && i->op[0].rclass == BT_RC_SEG) {
        int seg = i->op[0].reg;
        if (seg == SEG_CS) bt_ud(c);
        uint16_t sel = (uint16_t)bt_op_read(c, i, 1);
        bt_load_seg(c, seg, sel);
        if (seg == SEG_SS) c->s.ev.interrupt_shadow = 2;
        return;
    }
    /* MOV r/m, Sreg: a register destination gets the zero-extended selector, memory 16 bits */
    bt_op_write(c, i, 0, c->s.seg[i->op[1].reg].sel);
}

/* Defaults for MOV CR/DR (system.c may register its own for the same pseudo mnemonics). */
static void op_mov_cr(struct bt_cpu *c, const struct bt_insn *i)
{
    if (c->cpl != 0) bt_gp0(c);
    unsigned size = c->long_mode ? 8 : 4;
    if (i->op[0].rclass == BT_RC_CR) {
        bt_write_cr(c, i->op[0].reg, bt_gpr_read(c, i->op[1].reg, size));
        return;
    }
    uint64_t v;
    switch (i->op[1].reg) {
    case 0: v = c->s.cr0; break;
    case 2: v = c->s.cr2; break;
    case 3: v = c->s.cr3; break;
    case 4: v = c->s.cr4; break;
    case 8: v = c->s.cr8; break;
    default: bt_ud(c);
    }
    bt_gpr_write(c, i->op[0].reg, size, v);
}

static void op_mov_dr(struct bt_cpu *c, const struct bt_insn *i)
{
    if (c->cpl != 0) bt_gp0(c);
    unsigned size = c->long_mode ? 8 : 4;
    bool to_dr = i->op[0].rclass == BT_RC_DR;
    unsigned n = to_dr ? i->op[0].reg : i->op[1].reg;
    if (n == 4 || n == 5) {
        if (c->s.cr4 & X86_CR4_DE) bt_ud(c);
        n += 2; /* aliases of DR6/DR7 */
    }
    if (n > 7) bt_ud(c);
    if (to_dr) {
        uint64_t v = bt_gpr_read(c, i->op[1].reg, size);
        if (n >= 6 && (v >> 32)) bt_gp0(c);
        if (n < 4)
            c->s.dr[n] = v;
        else if (n == 6)
            c->s.dr6 = (v & 0x1e00f) | 0xffff0ff0;
        else
            c->s.dr7 = (v & ~0xd800ull) | 0x400;
        return;
    }
    uint64_t v = n < 4 ? c->s.dr[n] : n == 6 ? c->s.dr6 : c->s.dr7;
    bt_gpr_write(c, i->op[0].reg, size, v);
}

static void op_movzx(struct bt_cpu *c, const struct bt_insn *i)
{
    bt_op_write(c, i, 0, bt_op_read(c, i, 1));
}

static void op_movsx(struct bt_cpu *c, const struct bt_insn *i)
{
    bt_op_write(c, i, 0, (uint64_t)bt_sext(bt_op_read(c, i, 1), i->op[1].size));
}

static void op_lea(struct bt_cpu *c, const struct bt_insn *i)
{
    bt_op_write(c, i, 0, bt_op_ea(c, i, 1));
}

static void op_cbw(struct bt_cpu *c, const struct bt_insn *i)
{
    unsigned size = bt_opbytes(i); /* CBW 2, CWDE 4, CDQE 8 */
    bt_gpr_write(c, RAX, size, (uint64_t)bt_sext(c->s.gpr[RAX], size / 2));
}

static void op_cwd(struct bt_cpu *c, const struct bt_insn *i)
{
    unsigned size = bt_opbytes(i); /* CWD 2, CDQ 4, CQO 8 */
    bt_gpr_write(c, RDX, size, bt_sext(c->s.gpr[RAX], size) < 0 ? ~0ull : 0);
}

static uint64_t stack_mask(const struct bt_cpu *c)
{
    return c->stack_bits == 64 ? ~0ull : c->stack_bits == 32 ? 0xffffffffull : 0xffffull;
}

/* push onto a local copy of RSP (committed by the caller) */
static void lpush(struct bt_cpu *c, uint64_t *rsp, unsigned size, uint64_t v)
{
    *rsp = (*rsp - size) & stack_mask(c);
    bt_write(c, bt_seg_linear(c, SEG_SS, *rsp, size, BT_ACC_WRITE), size, v, BT_ACC_WRITE);
}

static uint64_t lpop(struct bt_cpu *c, uint64_t *rsp, unsigned size)
{
    uint64_t v = bt_read(c, bt_seg_linear(c, SEG_SS, *rsp, size, BT_ACC_READ), size, BT_ACC_READ);
    *rsp = (*rsp + size) & stack_mask(c);
    return v;
}

static void set_rsp(struct bt_cpu *c, uint64_t rsp)
{
    uint64_t mask = stack_mask(c);
    c->s.gpr[RSP] = (c->s.gpr[RSP] & ~mask) | (rsp & mask);
}

static void op_push(struct bt_cpu *c, const struct bt_insn *i)
{
    unsigned size = bt_opbytes(i);
    const struct bt_operand *o = &i->op[0];
    if (o->kind == BT_OPK_REG && o->rclass == BT_RC_SEG) {
        /* recent Intel CPUs move only the 16-bit selector into the wider slot */
        uint64_t rsp = (c->s.gpr[RSP] - size) & stack_mask(c);
        bt_write(c, bt_seg_linear(c, SEG_SS, rsp, size, BT_ACC_WRITE), 2, c->s.seg[o->reg].sel,
                 BT_ACC_WRITE);
        set_rsp(c, rsp);
        return;
    }
    bt_push(c, size, bt_op_read(c, i, 0));
}

static void op_pop(struct bt_cpu *c, const struct bt_insn *i)
{
    unsigned size = bt_opbytes(i);
    const struct bt_operand *o = &i->op[0];
    uint64_t rsp = c->s.gpr[RSP] & stack_mask(c);
    uint64_t v = lpop(c, &rsp, size);
    if (o->kind == BT_OPK_REG && o->rclass == BT_RC_SEG) {
        bt_load_seg(c, o->reg, (uint16_t)v); /* may fault: RSP not yet changed */
        set_rsp(c, rsp);
        if (o->reg == SEG_SS) c->s.ev.interrupt_shadow = 2;
        return;
    }
    if (o->kind == BT_OPK_MEM) {
        /* an RSP-based destination address uses the incremented RSP */
        uint64_t old = c->s.gpr[RSP];
        set_rsp(c, rsp);
        uint64_t ea = bt_op_ea(c, i, 0);
        c->s.gpr[RSP] = old;
        bt_write(c, bt_seg_linear(c, o->seg, ea, size, BT_ACC_WRITE), size, v, BT_ACC_WRITE);
        set_rsp(c, rsp);
        return;
    }
    set_rsp(c, rsp);
    bt_op_write(c, i, 0, v); /* POP RSP: the popped value wins */
}

static void op_pusha(struct bt_cpu *c, const struct bt_insn *i)
{
    unsigned size = bt_opbytes(i);
    uint64_t rsp = c->s.gpr[RSP] & stack_mask(c), orig = c->s.gpr[RSP];
    static const int order[8] = {RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI};
    for (int k = 0; k < 8; k++)
        lpush(c, &rsp, size, order[k] == RSP ? orig : c->s.gpr[order[k]]);
    set_rsp(c, rsp);
}

static void op_popa(struct bt_cpu *c, const struct bt_insn *i)
{
    unsigned size = bt_opbytes(i);
    uint64_t rsp = c->s.gpr[RSP] & stack_mask(c);
    static const int order[8] = {RDI, RSI, RBP, RSP, RBX, RDX, RCX, RAX};
    uint64_t v[8];
    for (int k = 0; k < 8; k++)
        v[k] = lpop(c, &rsp, size);
    for (int k = 0; k < 8; k++)
        if (order[k] != RSP) bt_gpr_write(c, order[k], size, v[k]);
    set_rsp(c, rsp);
}

static void op_enter(struct bt_cpu *c, const struct bt_insn *i)
{
    unsigned size = bt_opbytes(i);
    uint64_t alloc = (uint64_t)i->op[0].disp & 0xffff;
    unsigned level = (unsigned)i->op[1].disp & 31;
    uint64_t mask = stack_mask(c);
    uint64_t rsp = c->s.gpr[RSP] & mask;
    lpush(c, &rsp, size, c->s.gpr[RBP]);
    uint64_t frame = rsp;
    if (level > 0) {
        uint64_t bp = c->s.gpr[RBP];
        for (unsigned k = 1; k < level; k++) {
            bp = (bp - size) & mask;
            uint64_t v =
                bt_read(c, bt_seg_linear(c, SEG_SS, bp, size, BT_ACC_READ), size, BT_ACC_READ);
            lpush(c, &rsp, size, v);
        }
        lpush(c, &rsp, size, frame);
    }
    uint64_t new_rsp = (rsp - alloc) & mask;
    /* the final RSP must be a valid stack address as well (hardware checks it) */
    if (alloc) bt_seg_linear(c, SEG_SS, new_rsp, 1, BT_ACC_WRITE);
    bt_gpr_write(c, RBP, c->stack_bits / 8, frame); /* by stack size (SDM ENTER) */
    set_rsp(c, new_rsp);
}

static void op_leave(struct bt_cpu *c, const struct bt_insn *i)
{
    unsigned size = bt_opbytes(i);
    uint64_t rsp = c->s.gpr[RBP] & stack_mask(c);
    uint64_t v = lpop(c, &rsp, size);
    set_rsp(c, rsp);
    bt_gpr_write(c, RBP, size, v);
}

static void op_setcc(struct bt_cpu *c, const struct bt_insn *i)
{
    bt_op_write(c, i, 0, bt_cond(c->s.rflags, i->opcode & 0xf));
}

static void op_cmovcc(struct bt_cpu *c, const struct bt_insn *i)
{
    uint64_t v = bt_op_read(c, i, 1); /* the source is read (and may fault) either way */
    if (bt_cond(c->s.rflags, i->opcode & 0xf))
        bt_op_write(c, i, 0, v);
    else if (i->op[0].size == 4)
        bt_gpr_write(c, i->op[0].reg, 4, c->s.gpr[i->op[0].reg]); /* zero-extends anyway */
}

static void op_lahf(struct bt_cpu *c, const struct bt_insn *i)
{
    uint64_t f = (c->s.rflags & (BT_ARITH_FLAGS & 0xff)) | X86_FLAG_FIXED;
    c->s.gpr[RAX] = (c->s.gpr[RAX] & ~0xff00ull) | (f << 8);
}

static void op_sahf(struct bt_cpu *c, const struct bt_insn *i)
{
    uint64_t m = BT_ARITH_FLAGS & 0xff;
    c->s.rflags = (c->s.rflags & ~m) | ((c->s.gpr[RAX] >> 8) & m);
}

static void op_clc(struct bt_cpu *c, const struct bt_insn *i)
{
    c->s.rflags &= ~(uint64_t)X86_FLAG_CF;
}
static void op_stc(struct bt_cpu *c, const struct bt_insn *i)
{
    c->s.rflags |= X86_FLAG_CF;
}
static void op_cmc(struct bt_cpu *c, const struct bt_insn *i)
{
    c->s.rflags ^= X86_FLAG_CF;
}
static void op_cld(struct bt_cpu *c, const struct bt_insn *i)
{
    c->s.rflags &= ~(uint64_t)X86_FLAG_DF;
}
static void op_std(struct bt_cpu *c, const struct bt_insn *i)
{
    c->s.rflags |= X86_FLAG_DF;
}
static void op_nop(struct bt_cpu *c, const struct bt_insn *i) {}
static void op_ud(struct bt_cpu *c, const struct bt_insn *i)
{
    bt_ud(c);
}

BT_HANDLER(MOV, op_mov);
BT_HANDLER_ID(BT_MNEM_MOV_SEG, op_mov_seg);
BT_HANDLER_DEFAULT(BT_MNEM_MOV_CR, op_mov_cr);
BT_HANDLER_DEFAULT(BT_MNEM_MOV_DR, op_mov_dr);
BT_HANDLER(MOVZX, op_movzx);
BT_HANDLER(MOVSX, op_movsx);
BT_HANDLER(MOVSXD, op_movsx);
BT_HANDLER(LEA, op_lea);
BT_HANDLER(CBW, op_cbw);
BT_HANDLER(CWDE, op_cbw);
BT_HANDLER(CDQE, op_cbw);
BT_HANDLER(CWD, op_cwd);
BT_HANDLER(CDQ, op_cwd);
BT_HANDLER(CQO, op_cwd);
BT_HANDLER(PUSH, op_push);
BT_HANDLER(POP, op_pop);
BT_HANDLER(PUSHA, op_pusha);
BT_HANDLER(PUSHAD, op_pusha);
BT_HANDLER(POPA, op_popa);
BT_HANDLER(POPAD, op_popa);
BT_HANDLER(ENTER, op_enter);
BT_HANDLER(LEAVE, op_leave);
BT_HANDLER(SETO, op_setcc);
BT_HANDLER(SETNO, op_setcc);
BT_HANDLER(SETB, op_setcc);
BT_HANDLER(SETNB, op_setcc);
BT_HANDLER(SETZ, op_setcc);
BT_HANDLER(SETNZ, op_setcc);
BT_HANDLER(SETBE, op_setcc);
BT_HANDLER(SETNBE, op_setcc);
BT_HANDLER(SETS, op_setcc);
BT_HANDLER(SETNS, op_setcc);
BT_HANDLER(SETP, op_setcc);
BT_HANDLER(SETNP, op_setcc);
BT_HANDLER(SETL, op_setcc);
BT_HANDLER(SETNL, op_setcc);
BT_HANDLER(SETLE, op_setcc);
BT_HANDLER(SETNLE, op_setcc);
BT_HANDLER(CMOVO, op_cmovcc);
BT_HANDLER(CMOVNO, op_cmovcc);
BT_HANDLER(CMOVB, op_cmovcc);
BT_HANDLER(CMOVNB, op_cmovcc);
BT_HANDLER(CMOVZ, op_cmovcc);
BT_HANDLER(CMOVNZ, op_cmovcc);
BT_HANDLER(CMOVBE, op_cmovcc);
BT_HANDLER(CMOVNBE, op_cmovcc);
BT_HANDLER(CMOVS, op_cmovcc);
BT_HANDLER(CMOVNS, op_cmovcc);
BT_HANDLER(CMOVP, op_cmovcc);
BT_HANDLER(CMOVNP, op_cmovcc);
BT_HANDLER(CMOVL, op_cmovcc);
BT_HANDLER(CMOVNL, op_cmovcc);
BT_HANDLER(CMOVLE, op_cmovcc);
BT_HANDLER(CMOVNLE, op_cmovcc);
BT_HANDLER(LAHF, op_lahf);
BT_HANDLER(SAHF, op_sahf);
BT_HANDLER(CLC, op_clc);
BT_HANDLER(STC, op_stc);
BT_HANDLER(CMC, op_cmc);
BT_HANDLER(CLD, op_cld);
BT_HANDLER(STD, op_std);
BT_HANDLER(NOP, op_nop);
BT_HANDLER(PAUSE, op_nop);
BT_HANDLER(UD0, op_ud);
BT_HANDLER(UD1, op_ud);
BT_HANDLER(UD2, op_ud);
