/* Bit instructions: BT BTS BTR BTC (register, immediate and memory forms), BSF BSR, BSWAP.
 *
 * Trust: a register bit offset on a memory operand is a signed guest value that can point far
 * from the operand (SDM Vol.2 "BT": bit base + offset); the addressed word is computed with the
 * address-size wrap and then goes through the normal segment and paging checks. */
#include "cpu/bt/intops.h"

static void bitop(struct bt_cpu *c, const struct bt_insn *i, int op)
{
    bt_check_lock(c, i);
    unsigned size = i->op[0].size, bits = size * 8;
    uint64_t off = bt_op_read(c, i, 1);
    uint64_t fl = c->s.rflags;
    if (i->op[0].kind != BT_OPK_MEM) {
        uint64_t a = bt_op_read(c, i, 0);
        uint64_t v = bt_host_alu(op, size, a, off, &fl);
        if (op != BT_BT) bt_op_write(c, i, 0, v);
        bt_commit_flags(c, fl);
        return;
    }
    uint64_t ea = bt_op_ea(c, i, 0);
    if (i->op[1].kind == BT_OPK_REG) {
        /* the register offset selects a word anywhere around the operand */
        int64_t soff = bt_sext(off, size);
        ea += (uint64_t)((soff >> (bits == 16 ? 4 : bits == 32 ? 5 : 6)) * (int64_t)size);
        ea &= i->addrsize == 64 ? ~0ull : (1ull << i->addrsize) - 1;
    }
    off &= bits - 1;
    int acc = op == BT_BT ? BT_ACC_READ : BT_ACC_WRITE;
    uint64_t lin = bt_seg_linear(c, i->op[0].seg, ea, size, acc);
    if (op != BT_BT && (i->pfx & BT_PFX_LOCK)) {
        void *p = bt_lock_ptr(c, lin, size);
        if (p) {
            bt_host_alu_locked(op, size, p, off, &fl);
            bt_commit_flags(c, fl);
            return;
        }
    }
    if (op != BT_BT) bt_probe_write(c, lin, size, BT_ACC_WRITE);
    uint64_t a = bt_read(c, lin, size, BT_ACC_READ);
    uint64_t v = bt_host_alu(op, size, a, off, &fl);
    if (op != BT_BT) bt_write(c, lin, size, v, BT_ACC_WRITE);
    bt_commit_flags(c, fl);
}

static void op_bt(struct bt_cpu *c, const struct bt_insn *i)
{
    bitop(c, i, BT_BT);
}
static void op_bts(struct bt_cpu *c, const struct bt_insn *i)
{
    bitop(c, i, BT_BTS);
}
static void op_btr(struct bt_cpu *c, const struct bt_insn *i)
{
    bitop(c, i, BT_BTR);
}
static void op_btc(struct bt_cpu *c, const struct bt_insn *i)
{
    bitop(c, i, BT_BTC);
}

/* BSF/BSR: the host instruction runs on the whole 64-bit destination register, so what it does
 * to the destination for a zero source (kept, including the upper half) is what the guest gets. */
static void bitscan(struct bt_cpu *c, const struct bt_insn *i, int op)
{
    unsigned size = i->op[0].size;
    uint64_t src = bt_op_read(c, i, 1);
    uint64_t fl = c->s.rflags;
    uint64_t *dst = &c->s.gpr[i->op[0].reg];
    uint64_t v = bt_host_alu(op, size, *dst, src, &fl);
    *dst = v;
    bt_commit_flags(c, fl);
}

static void op_bsf(struct bt_cpu *c, const struct bt_insn *i)
{
    bitscan(c, i, BT_BSF);
}
static void op_bsr(struct bt_cpu *c, const struct bt_insn *i)
{
    bitscan(c, i, BT_BSR);
}

static void op_bswap(struct bt_cpu *c, const struct bt_insn *i)
{
    uint64_t *r = &c->s.gpr[i->op[0].reg];
    switch (i->op[0].size) {
    case 8: *r = __builtin_bswap64(*r); break;
    case 4: *r = __builtin_bswap32((uint32_t)*r); break;
    default: {
        /* 16-bit BSWAP is undefined; run the encoding on the host for its answer */
        uint64_t v = *r;
        asm(".byte 0x66, 0x0f, 0xc8" : "+a"(v));
        *r = (*r & ~0xffffull) | (v & 0xffff);
        break;
    }
    }
}

BT_HANDLER(BT, op_bt);
BT_HANDLER(BTS, op_bts);
BT_HANDLER(BTR, op_btr);
BT_HANDLER(BTC, op_btc);
BT_HANDLER(BSF, op_bsf);
BT_HANDLER(BSR, op_bsr);
BT_HANDLER(BSWAP, op_bswap);
