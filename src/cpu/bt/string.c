/* String instructions MOVS CMPS SCAS LODS STOS (byte/word/dword/qword) with REP/REPE/REPNE, and
 * XLAT.
 *
 * Trust: counts and pointers are guest registers.  A REP instruction runs at most CHUNK
 * iterations per execution and then leaves RIP on itself with RCX/RSI/RDI updated, so interrupts
 * are taken between chunks and a fault in iteration k leaves the registers exactly as after k-1
 * iterations (each iteration commits its register updates only after its accesses succeeded). */
#include <string.h>

#include "cpu/bt/intops.h"
#include "util/log.h"

#define CHUNK 1024

enum { MOVS, CMPS, SCAS, LODS, STOS };

/* REP MOVS/STOS fast path (64-bit mode, 64-bit addressing, DF=0): up to the end of the current
 * source and destination pages at once through host pointers.  Returns the elements done (0: take
 * the element-by-element path, e.g. for MMIO).  Faults can only come from the first element's
 * pages, which is where the element-wise path would fault too. */
static uint64_t bulk(struct bt_cpu *c, const struct bt_insn *i, int kind, unsigned size,
                     uint64_t count)
{
    uint64_t di = c->s.gpr[RDI], si = c->s.gpr[RSI];
    uint64_t ld = bt_seg_linear(c, SEG_ES, di, size, BT_ACC_WRITE);
    uint64_t n = MIN(count, (4096 - (ld & 0xfff)) / size);
    uint64_t ls = 0;
    if (kind == MOVS) {
        ls = bt_seg_linear(c, i->dseg, si, size, BT_ACC_READ);
        n = MIN(n, (4096 - (ls & 0xfff)) / size);
    }
    if (n < 2) return 0;
    uint64_t bytes = n * size;
    if (!x86_is_canonical(ld + bytes - 1) || (kind == MOVS && !x86_is_canonical(ls + bytes - 1)))
        return 0;
    uint8_t *ps = NULL;
    if (kind == MOVS) {
        ps = bt_host_ptr(c, ls, (unsigned)bytes, BT_ACC_READ);
        if (!ps) return 0;
    }
    uint8_t *pd = bt_host_ptr(c, ld, (unsigned)bytes, BT_ACC_WRITE);
    if (!pd) return 0;
    if (kind == STOS) {
        uint64_t v = c->s.gpr[RAX];
        if (size == 1) {
            memset(pd, (int)(v & 0xff), bytes);
        } else {
            for (uint64_t k = 0; k < n; k++)
                memcpy(pd + k * size, &v, size);
        }
    } else if (pd > ps && pd < ps + bytes) {
        /* forward overlap: element by element, as the hardware copies (the pattern repeats) */
        for (uint64_t k = 0; k < n; k++)
            memmove(pd + k * size, ps + k * size, size);
    } else {
        memmove(pd, ps, bytes);
    }
    c->s.gpr[RDI] = di + bytes;
    if (kind == MOVS) c->s.gpr[RSI] = si + bytes;
    c->s.gpr[RCX] = count - n;
    return n;
}

static void string_op(struct bt_cpu *c, const struct bt_insn *i, int kind, unsigned size)
{
    if ((kind == MOVS || kind == STOS) && (i->pfx & BT_PFX_REP) && c->code_bits == 64 &&
        i->addrsize == 64 && !(c->s.rflags & X86_FLAG_DF)) {
        for (unsigned chunk = 0; chunk < 16; chunk++) {
            uint64_t count = c->s.gpr[RCX];
            if (count == 0) return;
            if (bulk(c, i, kind, size, count) == 0)
                goto elementwise; /* page-crossing element or MMIO: one chunk the slow way */
        }
        if (c->s.gpr[RCX] != 0)
            c->s.rip = c->insn_rip; /* more to do: run again after an interrupt check */
        return;
    }
elementwise:;
    unsigned as = i->addrsize / 8; /* RCX/RSI/RDI width */
    uint64_t amask = bt_size_mask(as);
    bool rep = i->pfx & (BT_PFX_REP | BT_PFX_REPNE);
    int64_t delta = (c->s.rflags & X86_FLAG_DF) ? -(int64_t)size : (int64_t)size;
    /* CMPS/SCAS flags are committed when the instruction ends: a fault in the middle leaves the
     * flags it started with, as the host CPU does (measured by the difftest) */
    uint64_t fl = c->s.rflags;
    for (unsigned n = 0; n < CHUNK; n++) {
        uint64_t count = 0;
        if (rep) {
            count = bt_gpr_read(c, RCX, as);
            if (count == 0) goto done;
        }
        uint64_t si = c->s.gpr[RSI] & amask, di = c->s.gpr[RDI] & amask;
        switch (kind) {
        case MOVS: {
            uint64_t v =
                bt_read(c, bt_seg_linear(c, i->dseg, si, size, BT_ACC_READ), size, BT_ACC_READ);
            bt_write(c, bt_seg_linear(c, SEG_ES, di, size, BT_ACC_WRITE), size, v, BT_ACC_WRITE);
            bt_gpr_write(c, RSI, as, si + delta);
            bt_gpr_write(c, RDI, as, di + delta);
            break;
        }
        case CMPS: {
            uint64_t a =
                bt_read(c, bt_seg_linear(c, i->dseg, si, size, BT_ACC_READ), size, BT_ACC_READ);
            uint64_t b =
                bt_read(c, bt_seg_linear(c, SEG_ES, di, size, BT_ACC_READ), size, BT_ACC_READ);
            bt_host_alu(BT_CMP, size, a, b, &fl);
            bt_gpr_write(c, RSI, as, si + delta);
            bt_gpr_write(c, RDI, as, di + delta);
            break;
        }
        case SCAS: {
            uint64_t b =
                bt_read(c, bt_seg_linear(c, SEG_ES, di, size, BT_ACC_READ), size, BT_ACC_READ);
            bt_host_alu(BT_CMP, size, c->s.gpr[RAX], b, &fl);
            bt_gpr_write(c, RDI, as, di + delta);
            break;
        }
        case LODS: {
            uint64_t v =
                bt_read(c, bt_seg_linear(c, i->dseg, si, size, BT_ACC_READ), size, BT_ACC_READ);
            bt_gpr_write(c, RAX, size, v);
            bt_gpr_write(c, RSI, as, si + delta);
            break;
        }
        default: /* STOS */
            bt_write(c, bt_seg_linear(c, SEG_ES, di, size, BT_ACC_WRITE), size, c->s.gpr[RAX],
                     BT_ACC_WRITE);
            bt_gpr_write(c, RDI, as, di + delta);
            break;
        }
        if (!rep) goto done;
        bt_gpr_write(c, RCX, as, count - 1);
        if (count == 1) goto done;
        if (kind == CMPS || kind == SCAS) {
            bool zf = fl & X86_FLAG_ZF;
            if ((i->pfx & BT_PFX_REPNE) ? zf : !zf) goto done;
        }
    }
    /* more to do: run again after an interrupt check.  The flags stay as they were (each
     * iteration computes its own; the host shows the starting flags at a fault, too) */
    c->s.rip = c->insn_rip;
    return;
done:
    if (kind == CMPS || kind == SCAS) bt_commit_flags(c, fl);
}

#define STR(NAME, KIND, SIZE)                                                                      \
    static void op_##NAME(struct bt_cpu *c, const struct bt_insn *i)                               \
    {                                                                                              \
        string_op(c, i, KIND, SIZE);                                                               \
    }
STR(movsb, MOVS, 1)
STR(movsw, MOVS, 2)
STR(movsd, MOVS, 4)
STR(movsq, MOVS, 8)
STR(cmpsb, CMPS, 1)
STR(cmpsw, CMPS, 2)
STR(cmpsd, CMPS, 4)
STR(cmpsq, CMPS, 8)
STR(scasb, SCAS, 1)
STR(scasw, SCAS, 2)
STR(scasd, SCAS, 4)
STR(scasq, SCAS, 8)
STR(lodsb, LODS, 1)
STR(lodsw, LODS, 2)
STR(lodsd, LODS, 4)
STR(lodsq, LODS, 8)
STR(stosb, STOS, 1)
STR(stosw, STOS, 2)
STR(stosd, STOS, 4)
STR(stosq, STOS, 8)

static void op_xlat(struct bt_cpu *c, const struct bt_insn *i)
{
    uint64_t ea = (c->s.gpr[RBX] + (c->s.gpr[RAX] & 0xff)) & bt_size_mask(i->addrsize / 8);
    uint64_t v = bt_read(c, bt_seg_linear(c, i->dseg, ea, 1, BT_ACC_READ), 1, BT_ACC_READ);
    bt_gpr_write(c, RAX, 1, v);
}

BT_HANDLER(MOVSB, op_movsb);
BT_HANDLER(MOVSW, op_movsw);
BT_HANDLER_ID(BT_MNEM_MOVSD_STR, op_movsd);
BT_HANDLER(MOVSQ, op_movsq);
BT_HANDLER(CMPSB, op_cmpsb);
BT_HANDLER(CMPSW, op_cmpsw);
BT_HANDLER_ID(BT_MNEM_CMPSD_STR, op_cmpsd);
BT_HANDLER(CMPSQ, op_cmpsq);
BT_HANDLER(SCASB, op_scasb);
BT_HANDLER(SCASW, op_scasw);
BT_HANDLER(SCASD, op_scasd);
BT_HANDLER(SCASQ, op_scasq);
BT_HANDLER(LODSB, op_lodsb);
BT_HANDLER(LODSW, op_lodsw);
BT_HANDLER(LODSD, op_lodsd);
BT_HANDLER(LODSQ, op_lodsq);
BT_HANDLER(STOSB, op_stosb);
BT_HANDLER(STOSW, op_stosw);
BT_HANDLER(STOSD, op_stosd);
BT_HANDLER(STOSQ, op_stosq);
BT_HANDLER(XLAT, op_xlat);
