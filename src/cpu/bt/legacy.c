/* Legacy integer instructions that exist only outside 64-bit mode: the BCD adjustments (AAA AAS
 * DAA DAS AAM AAD), SALC and BOUND.
 *
 * Trust: operands are guest registers and memory.  The host cannot run these opcodes (they are
 * invalid in 64-bit mode), so the "undefined" flags follow what the host CPU does in 32-bit code,
 * measured with the differential tester's compatibility-mode runs: AAA/AAS/DAA/DAS clear OF and
 * set SF/ZF/PF from the final AL; AAM sets SF/ZF/PF from AL and clears OF/AF/CF; AAD's flags are
 * those of the 8-bit addition AL + AH*imm. */
#include "cpu/bt/intops.h"

static uint64_t szp(uint8_t v)
{
    uint64_t f = 0;
    if (v & 0x80) f |= X86_FLAG_SF;
    if (v == 0) f |= X86_FLAG_ZF;
    if (!(__builtin_popcount(v) & 1)) f |= X86_FLAG_PF;
    return f;
}

static void not_in_64(struct bt_cpu *c)
{
    if (c->code_bits == 64) bt_ud(c);
}

static void set_al_flags(struct bt_cpu *c, uint16_t ax, uint64_t f)
{
    bt_gpr_write(c, RAX, 2, ax);
    c->s.rflags = (c->s.rflags & ~(uint64_t)BT_ARITH_FLAGS) | f;
}

static void ascii_adjust(struct bt_cpu *c, bool sub)
{
    not_in_64(c);
    uint16_t ax = (uint16_t)c->s.gpr[RAX];
    uint64_t f = 0;
    if ((ax & 0xf) > 9 || (c->s.rflags & X86_FLAG_AF)) {
        ax = sub ? (uint16_t)(ax - 0x106) : (uint16_t)(ax + 0x106);
        f = X86_FLAG_AF | X86_FLAG_CF;
    }
    ax &= 0xff0f;
    set_al_flags(c, ax, f | szp((uint8_t)ax));
}

static void op_aaa(struct bt_cpu *c, const struct bt_insn *i)
{
    ascii_adjust(c, false);
}
static void op_aas(struct bt_cpu *c, const struct bt_insn *i)
{
    ascii_adjust(c, true);
}

static void decimal_adjust(struct bt_cpu *c, bool sub)
{
    not_in_64(c);
    uint8_t al = (uint8_t)c->s.gpr[RAX], a = al;
    bool cf = c->s.rflags & X86_FLAG_CF, ncf = false;
    uint64_t f = 0;
    if ((a & 0xf) > 9 || (c->s.rflags & X86_FLAG_AF)) {
        ncf = cf || (sub ? a < 6 : a + 6 > 0xff);
        a = sub ? (uint8_t)(a - 6) : (uint8_t)(a + 6);
        f |= X86_FLAG_AF;
    }
    if (al > 0x99 || cf) {
        a = sub ? (uint8_t)(a - 0x60) : (uint8_t)(a + 0x60);
        ncf = true;
    }
    f |= szp(a) | (ncf ? X86_FLAG_CF : 0);
    set_al_flags(c, (uint16_t)((c->s.gpr[RAX] & 0xff00) | a), f);
}

static void op_daa(struct bt_cpu *c, const struct bt_insn *i)
{
    decimal_adjust(c, false);
}
static void op_das(struct bt_cpu *c, const struct bt_insn *i)
{
    decimal_adjust(c, true);
}

static void op_aam(struct bt_cpu *c, const struct bt_insn *i)
{
    not_in_64(c);
    uint8_t base = (uint8_t)i->op[0].disp, al = (uint8_t)c->s.gpr[RAX];
    if (base == 0) bt_raise(c, X86_DE, BT_NO_ERRCODE);
    uint8_t q = al / base, r = al % base;
    set_al_flags(c, (uint16_t)(q << 8 | r), szp(r));
}

static void op_aad(struct bt_cpu *c, const struct bt_insn *i)
{
    not_in_64(c);
    uint8_t base = (uint8_t)i->op[0].disp, al = (uint8_t)c->s.gpr[RAX];
    uint8_t ah = (uint8_t)(c->s.gpr[RAX] >> 8);
    uint64_t fl = c->s.rflags;
    uint64_t r = bt_host_alu(BT_ADD, 1, al, (uint8_t)(ah * base), &fl);
    set_al_flags(c, (uint16_t)(r & 0xff), fl & BT_ARITH_FLAGS);
}

static void op_salc(struct bt_cpu *c, const struct bt_insn *i)
{
    not_in_64(c);
    bt_gpr_write(c, RAX, 1, (c->s.rflags & X86_FLAG_CF) ? 0xff : 0);
}

static void op_bound(struct bt_cpu *c, const struct bt_insn *i)
{
    not_in_64(c);
    if (i->op[1].kind != BT_OPK_MEM) bt_ud(c);
    unsigned size = bt_opbytes(i);
    uint64_t lin = bt_op_lin(c, i, 1, 2 * size, BT_ACC_READ);
    int64_t lo = bt_sext(bt_read(c, lin, size, BT_ACC_READ), size);
    int64_t hi = bt_sext(bt_read(c, lin + size, size, BT_ACC_READ), size);
    int64_t idx = bt_sext(bt_op_read(c, i, 0), size);
    if (idx < lo || idx > hi) bt_raise(c, X86_BR, BT_NO_ERRCODE);
}

BT_HANDLER(AAA, op_aaa);
BT_HANDLER(AAS, op_aas);
BT_HANDLER(DAA, op_daa);
BT_HANDLER(DAS, op_das);
BT_HANDLER(AAM, op_aam);
BT_HANDLER(AAD, op_aad);
BT_HANDLER(SALC, op_salc);
BT_HANDLER(BOUND, op_bound);
