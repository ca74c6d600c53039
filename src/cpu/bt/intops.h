/* Private helpers shared by the integer-ISA families of the software CPU (alu.c, shift.c,
 * muldiv.c, bitop.c, string.c, branch.c, datamov.c, atomic.c).  Not part of the bt.h contract.
 *
 * Flags: every arithmetic result is computed by the same instruction on the host with the guest's
 * arithmetic flags loaded (bt_host_*), so all six arithmetic flags — including the ones the SDM
 * calls undefined — are the host CPU's.  Handlers compute into locals and commit flags only after
 * the last access that can fault, so a faulting instruction leaves no trace. */
#pragma once
#include "cpu/bt/bt.h"

enum bt_alu_op {
    BT_ADD,
    BT_OR,
    BT_ADC,
    BT_SBB,
    BT_AND,
    BT_SUB,
    BT_XOR,
    BT_CMP, /* ModRM.reg order of 80-83 */
    BT_TEST,
    BT_INC,
    BT_DEC,
    BT_NEG,
    BT_NOT,
    BT_ROL,
    BT_ROR,
    BT_RCL,
    BT_RCR,
    BT_SHL,
    BT_SHR,
    BT_SAL,
    BT_SAR, /* ModRM.reg order of C0-D3 */
    BT_SHLD,
    BT_SHRD,
    BT_BT,
    BT_BTS,
    BT_BTR,
    BT_BTC,
    BT_BSF,
    BT_BSR,
    BT_XADD,
    BT_XCHG,
};

/* a (op) b on the host at `size` bytes; *fl is the guest RFLAGS, its arithmetic bits updated.
 * Shifts take the count in b; SHLD/SHRD take the source in b and the count in n. */
uint64_t bt_host_alu(int op, unsigned size, uint64_t a, uint64_t b, uint64_t *fl);
uint64_t bt_host_shd(int op, unsigned size, uint64_t a, uint64_t b, uint8_t n, uint64_t *fl);
/* LOCK-prefixed forms on a host pointer (guest RAM from bt_host_ptr): returns the old value for
 * XADD/XCHG, else 0. */
uint64_t bt_host_alu_locked(int op, unsigned size, void *p, uint64_t b, uint64_t *fl);

static inline uint64_t bt_size_mask(unsigned size)
{
    return size >= 8 ? ~0ull : (1ull << (size * 8)) - 1;
}

/* Inline front ends of bt_op_read()/bt_op_write() for the common GPR and immediate operands
 * (the interpreter's hottest path); everything else goes to the full versions. */
static inline uint64_t bt_opr(struct bt_cpu *c, const struct bt_insn *i, int n)
{
    const struct bt_operand *o = &i->op[n];
    if (o->kind == BT_OPK_REG && o->rclass == BT_RC_GPR)
        return c->s.gpr[o->reg] & bt_size_mask(o->size);
    if (o->kind == BT_OPK_IMM) return (uint64_t)o->disp;
    return bt_op_read(c, i, n);
}

static inline void bt_opw(struct bt_cpu *c, const struct bt_insn *i, int n, uint64_t v)
{
    const struct bt_operand *o = &i->op[n];
    if (o->kind == BT_OPK_REG && o->rclass == BT_RC_GPR) {
        uint64_t *r = &c->s.gpr[o->reg];
        switch (o->size) {
        case 8: *r = v; return;
        case 4: *r = (uint32_t)v; return;
        case 2: *r = (*r & ~0xffffull) | (v & 0xffff); return;
        default: *r = (*r & ~0xffull) | (v & 0xff); return;
        }
    }
    bt_op_write(c, i, n, v);
}

static inline unsigned bt_opbytes(const struct bt_insn *i)
{
    return i->opsize / 8;
}

static inline void bt_commit_flags(struct bt_cpu *c, uint64_t fl)
{
    c->s.rflags = (c->s.rflags & ~(uint64_t)BT_ARITH_FLAGS) | (fl & BT_ARITH_FLAGS);
}

/* Condition code cc (0-15, the low nibble of Jcc/SETcc/CMOVcc) on RFLAGS */
static inline bool bt_cond(uint64_t f, unsigned cc)
{
    bool r;
    switch (cc >> 1) {
    case 0: r = f & X86_FLAG_OF; break;
    case 1: r = f & X86_FLAG_CF; break;
    case 2: r = f & X86_FLAG_ZF; break;
    case 3: r = f & (X86_FLAG_CF | X86_FLAG_ZF); break;
    case 4: r = f & X86_FLAG_SF; break;
    case 5: r = f & X86_FLAG_PF; break;
    case 6: r = !(f & X86_FLAG_SF) != !(f & X86_FLAG_OF); break;
    default: r = (f & X86_FLAG_ZF) || (!(f & X86_FLAG_SF) != !(f & X86_FLAG_OF)); break;
    }
    return (cc & 1) ? !r : r;
}

/* Read-modify-write access to operand n (register or memory): the linear address is computed and
 * checked for writing once, so the later write cannot fault after flags were computed. */
struct bt_rmw {
    uint64_t lin;
    bool mem;
};
uint64_t bt_rmw_read(struct bt_cpu *c, const struct bt_insn *i, int n, struct bt_rmw *r);
void bt_rmw_write(struct bt_cpu *c, const struct bt_insn *i, int n, const struct bt_rmw *r,
                  uint64_t v);
/* #UD unless a LOCK prefix is absent or the destination is memory (hardware's rule). */
void bt_check_lock(struct bt_cpu *c, const struct bt_insn *i);

/* Sign-extend the low `size` bytes */
static inline int64_t bt_sext(uint64_t v, unsigned size)
{
    switch (size) {
    case 1: return (int8_t)v;
    case 2: return (int16_t)v;
    case 4: return (int32_t)v;
    default: return (int64_t)v;
    }
}

/* Tests and tools (the differential tester): called by the interpreter loop before it delivers an
 * exception; returning true skips the delivery and ends bt_exec with RIP at the faulting
 * instruction.  NULL in the VMM. */
extern bool (*bt_fault_observer)(struct bt_cpu *c, int vector, uint32_t errcode);

/* Host pointer for a LOCKed access to guest RAM, or NULL when the caller must emulate it (MMIO,
 * or an access that splits a cache line: a split lock on the host is slow, and fatal where the
 * host kernel runs with split_lock_detect=fatal). */
static inline void *bt_lock_ptr(struct bt_cpu *c, uint64_t lin, unsigned size)
{
    if ((lin & 63) + size > 64) {
        bt_probe_write(c, lin, size, BT_ACC_WRITE);
        return NULL;
    }
    return bt_host_ptr(c, lin, size, BT_ACC_READ | BT_ACC_WRITE);
}

/* True if a handler is registered for the (pseudo) mnemonic (tools: the differential tester). */
bool bt_has_handler(unsigned mnemonic);
