/* MMX, SSE and SSE2 for the software CPU, plus MXCSR and FXSAVE/FXRSTOR.
 *
 * Exactness comes from the host: every arithmetic operation runs the same instruction on host
 * registers (a table of small asm thunks, one per mnemonic), with the guest's MXCSR loaded but all
 * exception masks forced on, so the host never traps.  The flags the host raised are then checked
 * against the guest's masks: an unmasked one becomes #XM (or #UD when CR4.OSXMMEXCPT is clear)
 * with the flags set and the destination untouched, as the SDM specifies.  Pure data movement and
 * permutations are plain C.
 *
 * Only the model's ISA is registered (MMX, SSE, SSE2; the CPU model advertises nothing newer), so
 * SSE3/SSSE3/SSE4 mnemonics have no handler and raise #UD.  Where a later extension reuses an
 * SSE2 mnemonic with another opcode (PEXTRW 66 0F 3A 15 is SSE4.1) the opcode is checked.
 *
 * Intended differences: with an unmasked IE/DE/ZE only those flags are reported (hardware may also
 * report post-computation flags of other lanes in some cases); MASKMOVDQU/MASKMOVQ store byte by
 * byte.
 *
 * Trust: operands come from the decoder; memory goes through the soft MMU (bt_op_lin and
 * bt_read_buf/bt_write_buf), which raises the guest's faults.  Every read that can fault happens
 * before any architectural state changes. */
#include <stdatomic.h>
#include <string.h>

#include "cpu/bt/bt.h"
#include "cpu/bt/fpu.h"

typedef void (*thunk2)(uint8_t *d, const uint8_t *s);

/* ---- register operand classification (by the Zydis register, which the decoder keeps) ----- */

static bool op_is_xmm(const struct bt_operand *o)
{
    return o->kind == BT_OPK_REG && o->zreg >= ZYDIS_REGISTER_XMM0 &&
           o->zreg <= ZYDIS_REGISTER_XMM15;
}
static bool op_is_mmx(const struct bt_operand *o)
{
    return o->kind == BT_OPK_REG && o->zreg >= ZYDIS_REGISTER_MM0 && o->zreg <= ZYDIS_REGISTER_MM7;
}
static unsigned xreg(const struct bt_operand *o)
{
    return (unsigned)(o->zreg - ZYDIS_REGISTER_XMM0) & 15;
}
static unsigned mreg(const struct bt_operand *o)
{
    return (unsigned)(o->zreg - ZYDIS_REGISTER_MM0) & 7;
}

/* ---- checks --------------------------------------------------------------------------------- */

void bt_sse_check(struct bt_cpu *c)
{
    if ((c->s.cr0 & X86_CR0_EM) || !(c->s.cr4 & X86_CR4_OSFXSR)) bt_ud(c);
    if (c->s.cr0 & X86_CR0_TS) bt_raise(c, X86_NM, BT_NO_ERRCODE);
}

/* MMX-register checks without the transition (done after the operands are read, so a faulting
 * memory operand leaves the x87 state alone). */
static void mmx_check(struct bt_cpu *c)
{
    if (c->s.cr0 & X86_CR0_EM) bt_ud(c);
    if (c->s.cr0 & X86_CR0_TS) bt_raise(c, X86_NM, BT_NO_ERRCODE);
    if ((c->s.fx.fsw & FSW_EXC & ~c->s.fx.fcw) && (c->s.cr0 & X86_CR0_NE))
        bt_raise(c, X86_MF, BT_NO_ERRCODE);
}

/* x87 -> MMX transition: TOP becomes 0 (slot n is then the physical register Rn = MMn) and every
 * register valid. */
static void mmx_transition(struct bt_cpu *c)
{
    fpu_rotate_top0(&c->s.fx);
    c->s.fx.ftw = 0xff;
}

void bt_mmx_enter(struct bt_cpu *c)
{
    mmx_check(c);
    mmx_transition(c);
}

static void check_for(struct bt_cpu *c, const struct bt_insn *i)
{
    bool x = false, m = false;
    if (i->pfx & BT_PFX_LOCK) bt_ud(c);
    for (unsigned n = 0; n < i->nops && n < 4; n++) {
        x |= op_is_xmm(&i->op[n]);
        m |= op_is_mmx(&i->op[n]);
    }
    if (x || !m) bt_sse_check(c);
    if (m) mmx_check(c);
}

static _Noreturn void simd_fault(struct bt_cpu *c)
{
    if (c->s.cr4 & X86_CR4_OSXMMEXCPT) bt_raise(c, X86_XM, BT_NO_ERRCODE);
    bt_ud(c);
}

/* ---- MXCSR around a host operation ---------------------------------------------------------- */

static inline uint32_t host_stmxcsr(void)
{
    uint32_t v;
    __asm__ volatile("stmxcsr %0" : "=m"(v));
    return v;
}
static inline void host_ldmxcsr(uint32_t v)
{
    __asm__ volatile("ldmxcsr %0" : : "m"(v));
}

/* The MXCSR bits the host accepts (DAZ is missing on some early SSE2 parts): a guest value must
 * never make the host's LDMXCSR fault. */
static uint32_t host_mxcsr_mask(void)
{
    static _Atomic uint32_t mask;
    uint32_t m = atomic_load_explicit(&mask, memory_order_relaxed);
    if (!m) {
        struct x86_fxsave img;
        __asm__ volatile("fxsave64 %0" : "=m"(img));
        m = img.mxcsr_mask ? img.mxcsr_mask : 0xffbf; /* 0 means "no DAZ" */
        atomic_store_explicit(&mask, m, memory_order_relaxed);
    }
    return m;
}

static uint32_t fp_enter(const struct bt_cpu *c)
{
    uint32_t host = host_stmxcsr();
    host_ldmxcsr((c->s.fx.mxcsr & 0xffc0u & host_mxcsr_mask()) | MXCSR_MASKS);
    return host;
}

/* Restores the host MXCSR, records the exceptions the guest sees and raises #XM for an unmasked
 * one (then the caller's destination is never written). */
static void fp_leave(struct bt_cpu *c, uint32_t host)
{
    uint32_t raised = host_stmxcsr() & MXCSR_FLAGS;
    host_ldmxcsr(host);
    uint32_t unmasked = raised & ~(c->s.fx.mxcsr >> 7) & MXCSR_FLAGS;
    if (unmasked & 0x7) /* IE/DE/ZE are detected before computing: no OE/UE/PE reported */
        raised &= 0x7;
    c->s.fx.mxcsr |= raised;
    if (unmasked) simd_fault(c);
}

/* ---- operand plumbing ----------------------------------------------------------------------- */

static unsigned mem_size(const struct bt_insn *i, int n, unsigned dflt)
{
    unsigned s = i->op[n].size;
    return (s && s <= 16) ? s : dflt;
}

static uint64_t mem_lin(struct bt_cpu *c, const struct bt_insn *i, int n, unsigned size, int acc,
                        bool aligned)
{
    uint64_t lin = bt_op_lin(c, i, n, size, acc);
    if (aligned && (lin & 15)) bt_gp0(c);
    return lin;
}

/* Reads operand n (XMM register or memory) into 16 bytes; memory reads `size` bytes, the rest
 * zero.  m128 operands of legacy SSE instructions must be 16-byte aligned unless `unaligned`. */
static void read_x(struct bt_cpu *c, const struct bt_insn *i, int n, uint8_t out[16], unsigned dflt,
                   bool unaligned)
{
    const struct bt_operand *o = &i->op[n];
    memset(out, 0, 16);
    if (op_is_xmm(o)) {
        memcpy(out, c->s.fx.xmm[xreg(o)], 16);
    } else if (o->kind == BT_OPK_MEM) {
        unsigned size = mem_size(i, n, dflt);
        uint64_t lin = mem_lin(c, i, n, size, BT_ACC_READ, size == 16 && !unaligned);
        bt_read_buf(c, lin, out, size, BT_ACC_READ);
    } else if (op_is_mmx(o)) {
        uint64_t v = mmx_get(c, (mreg(o) - fpu_top(c)) & 7); /* before the transition */
        memcpy(out, &v, 8);
    } else if (o->kind == BT_OPK_REG && o->rclass == BT_RC_GPR) {
        uint64_t v = bt_gpr_read(c, o->reg, o->size);
        memcpy(out, &v, 8);
    } else if (o->kind == BT_OPK_IMM) {
        uint64_t v = (uint64_t)o->disp & 0xff;
        memcpy(out, &v, 8);
    } else {
        bt_ud(c);
    }
}

static void write_mem(struct bt_cpu *c, const struct bt_insn *i, int n, const void *buf,
                      unsigned size, bool aligned)
{
    uint64_t lin = mem_lin(c, i, n, size, BT_ACC_WRITE, aligned);
    bt_write_buf(c, lin, buf, size, BT_ACC_WRITE);
}

static void done(struct bt_cpu *c)
{
    c->s.rip = c->next_rip;
}

/* ---- host thunks ---------------------------------------------------------------------------- */

#define XT(name, insn)                                                                             \
    static void xt_##name(uint8_t *d, const uint8_t *s)                                            \
    {                                                                                              \
        __asm__ volatile("movdqu (%0), %%xmm0\n\tmovdqu (%1), %%xmm1\n\t" insn                     \
                         " %%xmm1, %%xmm0\n\tmovdqu %%xmm0, (%0)"                                  \
                         :                                                                         \
                         : "r"(d), "r"(s)                                                          \
                         : "xmm0", "xmm1", "memory");                                              \
    }
#define MT(name, insn)                                                                             \
    static void mt_##name(uint8_t *d, const uint8_t *s)                                            \
    {                                                                                              \
        __asm__ volatile("movq (%0), %%mm0\n\tmovq (%1), %%mm1\n\t" insn                           \
                         " %%mm1, %%mm0\n\tmovq %%mm0, (%0)\n\temms"                               \
                         :                                                                         \
                         : "r"(d), "r"(s)                                                          \
                         : "mm0", "mm1", "memory");                                                \
    }

/* Two-operand op, destination a register (XMM or MMX), source register or memory. */
static void binop(struct bt_cpu *c, const struct bt_insn *i, thunk2 xt, thunk2 mt, bool fp,
                  unsigned xsize)
{
    uint8_t d[16], s[16];
    check_for(c, i);
    if (op_is_mmx(&i->op[0])) {
        if (!mt) bt_ud(c);
        read_x(c, i, 1, s, 8, false);
        mmx_transition(c);
        uint64_t v = mmx_get(c, mreg(&i->op[0]));
        memcpy(d, &v, 8);
        mt(d, s);
        memcpy(&v, d, 8);
        mmx_set(c, mreg(&i->op[0]), v);
    } else if (op_is_xmm(&i->op[0])) {
        read_x(c, i, 1, s, xsize, false);
        memcpy(d, c->s.fx.xmm[xreg(&i->op[0])], 16);
        if (fp) {
            uint32_t h = fp_enter(c);
            xt(d, s);
            fp_leave(c, h);
        } else {
            xt(d, s);
        }
        memcpy(c->s.fx.xmm[xreg(&i->op[0])], d, 16);
    } else {
        bt_ud(c);
    }
    done(c);
}

/* integer ops with MMX and SSE2 forms */
#define INT2(MN, name)                                                                             \
    XT(name, #name)                                                                                \
    MT(name, #name)                                                                                \
    static void op_##name(struct bt_cpu *c, const struct bt_insn *i)                               \
    {                                                                                              \
        binop(c, i, xt_##name, mt_##name, false, 16);                                              \
    }                                                                                              \
    BT_HANDLER(MN, op_##name);
/* XMM-only ops; fp: uses MXCSR; sz: memory operand size when the decoder gives none */
#define XOP(MN, name, fp, sz)                                                                      \
    XT(name, #name)                                                                                \
    static void op_##name(struct bt_cpu *c, const struct bt_insn *i)                               \
    {                                                                                              \
        binop(c, i, xt_##name, NULL, fp, sz);                                                      \
    }                                                                                              \
    BT_HANDLER(MN, op_##name);

INT2(PADDB, paddb)
INT2(PADDW, paddw)
INT2(PADDD, paddd)
INT2(PADDQ, paddq)
INT2(PADDSB, paddsb)
INT2(PADDSW, paddsw)
INT2(PADDUSB, paddusb)
INT2(PADDUSW, paddusw)
INT2(PSUBB, psubb)
INT2(PSUBW, psubw)
INT2(PSUBD, psubd)
INT2(PSUBQ, psubq)
INT2(PSUBSB, psubsb)
INT2(PSUBSW, psubsw)
INT2(PSUBUSB, psubusb)
INT2(PSUBUSW, psubusw)
INT2(PCMPEQB, pcmpeqb)
INT2(PCMPEQW, pcmpeqw)
INT2(PCMPEQD, pcmpeqd)
INT2(PCMPGTB, pcmpgtb)
INT2(PCMPGTW, pcmpgtw)
INT2(PCMPGTD, pcmpgtd)
INT2(PMINUB, pminub)
INT2(PMAXUB, pmaxub)
INT2(PMINSW, pminsw)
INT2(PMAXSW, pmaxsw)
INT2(PAVGB, pavgb)
INT2(PAVGW, pavgw)
INT2(PMULLW, pmullw)
INT2(PMULHW, pmulhw)
INT2(PMULHUW, pmulhuw)
INT2(PMULUDQ, pmuludq)
INT2(PMADDWD, pmaddwd)
INT2(PSADBW, psadbw)
INT2(PAND, pand)
INT2(PANDN, pandn)
INT2(POR, por)
INT2(PXOR, pxor)
INT2(PUNPCKLBW, punpcklbw)
INT2(PUNPCKLWD, punpcklwd)
INT2(PUNPCKLDQ, punpckldq)
INT2(PUNPCKHBW, punpckhbw)
INT2(PUNPCKHWD, punpckhwd)
INT2(PUNPCKHDQ, punpckhdq)
INT2(PACKSSWB, packsswb)
INT2(PACKSSDW, packssdw)
INT2(PACKUSWB, packuswb)
XOP(PUNPCKLQDQ, punpcklqdq, false, 16)
XOP(PUNPCKHQDQ, punpckhqdq, false, 16)

/* shifts: the immediate form is the count form with the count in a register */
#define SHIFT(MN, name)                                                                            \
    XT(name, #name)                                                                                \
    MT(name, #name)                                                                                \
    static void op_##name(struct bt_cpu *c, const struct bt_insn *i)                               \
    {                                                                                              \
        binop(c, i, xt_##name, mt_##name, false, 16);                                              \
    }                                                                                              \
    BT_HANDLER(MN, op_##name);
SHIFT(PSLLW, psllw)
SHIFT(PSLLD, pslld)
SHIFT(PSLLQ, psllq)
SHIFT(PSRLW, psrlw)
SHIFT(PSRLD, psrld)
SHIFT(PSRLQ, psrlq)
SHIFT(PSRAW, psraw)
SHIFT(PSRAD, psrad)

/* logical and unpack FP-typed ops (no FP exceptions) */
XOP(ANDPS, andps, false, 16)
XOP(ANDPD, andpd, false, 16)
XOP(ANDNPS, andnps, false, 16)
XOP(ANDNPD, andnpd, false, 16)
XOP(ORPS, orps, false, 16)
XOP(ORPD, orpd, false, 16)
XOP(XORPS, xorps, false, 16)
XOP(XORPD, xorpd, false, 16)
XOP(UNPCKLPS, unpcklps, false, 16)
XOP(UNPCKHPS, unpckhps, false, 16)
XOP(UNPCKLPD, unpcklpd, false, 16)
XOP(UNPCKHPD, unpckhpd, false, 16)

/* floating point */
XOP(ADDPS, addps, true, 16)
XOP(ADDSS, addss, true, 4)
XOP(ADDPD, addpd, true, 16)
XOP(ADDSD, addsd, true, 8)
XOP(SUBPS, subps, true, 16)
XOP(SUBSS, subss, true, 4)
XOP(SUBPD, subpd, true, 16)
XOP(SUBSD, subsd, true, 8)
XOP(MULPS, mulps, true, 16)
XOP(MULSS, mulss, true, 4)
XOP(MULPD, mulpd, true, 16)
XOP(MULSD, mulsd, true, 8)
XOP(DIVPS, divps, true, 16)
XOP(DIVSS, divss, true, 4)
XOP(DIVPD, divpd, true, 16)
XOP(DIVSD, divsd, true, 8)
XOP(MINPS, minps, true, 16)
XOP(MINSS, minss, true, 4)
XOP(MINPD, minpd, true, 16)
XOP(MINSD, minsd, true, 8)
XOP(MAXPS, maxps, true, 16)
XOP(MAXSS, maxss, true, 4)
XOP(MAXPD, maxpd, true, 16)
XOP(MAXSD, maxsd, true, 8)
XOP(SQRTPS, sqrtps, true, 16)
XOP(SQRTSS, sqrtss, true, 4)
XOP(SQRTPD, sqrtpd, true, 16)
XOP(SQRTSD, sqrtsd, true, 8)
XOP(RCPPS, rcpps, true, 16)
XOP(RCPSS, rcpss, true, 4)
XOP(RSQRTPS, rsqrtps, true, 16)
XOP(RSQRTSS, rsqrtss, true, 4)
XOP(CVTPS2PD, cvtps2pd, true, 8)
XOP(CVTPD2PS, cvtpd2ps, true, 16)
XOP(CVTSS2SD, cvtss2sd, true, 4)
XOP(CVTSD2SS, cvtsd2ss, true, 8)
XOP(CVTDQ2PS, cvtdq2ps, true, 16)
XOP(CVTPS2DQ, cvtps2dq, true, 16)
XOP(CVTTPS2DQ, cvttps2dq, true, 16)
XOP(CVTDQ2PD, cvtdq2pd, true, 8)
XOP(CVTPD2DQ, cvtpd2dq, true, 16)
XOP(CVTTPD2DQ, cvttpd2dq, true, 16)

/* CMPccPS/PD/SS/SD: one thunk per predicate 0-7 (the legacy encoding ignores imm8[7:3]) */
#define CMP8(name)                                                                                 \
    XT(name##0, #name " $0,")                                                                      \
    XT(name##1, #name " $1,")                                                                      \
    XT(name##2, #name " $2,")                                                                      \
    XT(name##3, #name " $3,")                                                                      \
    XT(name##4, #name " $4,")                                                                      \
    XT(name##5, #name " $5,")                                                                      \
    XT(name##6, #name " $6,")                                                                      \
    XT(name##7, #name " $7,")                                                                      \
    static const thunk2 name##_t[8] = {xt_##name##0, xt_##name##1, xt_##name##2, xt_##name##3,     \
                                       xt_##name##4, xt_##name##5, xt_##name##6, xt_##name##7};
CMP8(cmpps)
CMP8(cmppd)
CMP8(cmpss)
CMP8(cmpsd)

static void cmp_op(struct bt_cpu *c, const struct bt_insn *i, const thunk2 *t, unsigned sz)
{
    binop(c, i, t[i->op[2].disp & 7], NULL, true, sz);
}
static void op_cmpps(struct bt_cpu *c, const struct bt_insn *i)
{
    cmp_op(c, i, cmpps_t, 16);
}
static void op_cmppd(struct bt_cpu *c, const struct bt_insn *i)
{
    cmp_op(c, i, cmppd_t, 16);
}
static void op_cmpss(struct bt_cpu *c, const struct bt_insn *i)
{
    cmp_op(c, i, cmpss_t, 4);
}
BT_HANDLER(CMPPS, op_cmpps);
BT_HANDLER(CMPPD, op_cmppd);
BT_HANDLER(CMPSS, op_cmpss);
/* The string CMPSD/MOVSD (A7, A5) reach the decoder's pseudo mnemonics, so these are SSE2 only. */
static void op_cmpsd(struct bt_cpu *c, const struct bt_insn *i)
{
    cmp_op(c, i, cmpsd_t, 8);
}
BT_HANDLER(CMPSD, op_cmpsd);

/* ---- COMISS/COMISD/UCOMISS/UCOMISD: EFLAGS from the host's compare
 * -------------------------------------- */

#define COMI(name)                                                                                 \
    static uint64_t ct_##name(const uint8_t *d, const uint8_t *s)                                  \
    {                                                                                              \
        uint8_t zf, pf, cf;                                                                        \
        __asm__ volatile("movdqu (%3), %%xmm0\n\tmovdqu (%4), %%xmm1\n\t" #name                    \
                         " %%xmm1, %%xmm0\n\tsetz %0\n\tsetp %1\n\tsetc %2"                        \
                         : "=q"(zf), "=q"(pf), "=q"(cf)                                            \
                         : "r"(d), "r"(s)                                                          \
                         : "xmm0", "xmm1", "cc", "memory");                                        \
        return (zf ? X86_FLAG_ZF : 0) | (pf ? X86_FLAG_PF : 0) | (cf ? X86_FLAG_CF : 0);           \
    }
COMI(comiss)
COMI(ucomiss)
COMI(comisd)
COMI(ucomisd)

static void comi(struct bt_cpu *c, const struct bt_insn *i,
                 uint64_t (*t)(const uint8_t *, const uint8_t *), unsigned sz)
{
    uint8_t d[16], s[16];
    check_for(c, i);
    read_x(c, i, 1, s, sz, false);
    memcpy(d, c->s.fx.xmm[xreg(&i->op[0])], 16);
    uint32_t h = fp_enter(c);
    uint64_t f = t(d, s);
    fp_leave(c, h);
    c->s.rflags = (c->s.rflags & ~(uint64_t)BT_ARITH_FLAGS) | f;
    done(c);
}
static void op_comiss(struct bt_cpu *c, const struct bt_insn *i)
{
    comi(c, i, ct_comiss, 4);
}
static void op_ucomiss(struct bt_cpu *c, const struct bt_insn *i)
{
    comi(c, i, ct_ucomiss, 4);
}
static void op_comisd(struct bt_cpu *c, const struct bt_insn *i)
{
    comi(c, i, ct_comisd, 8);
}
static void op_ucomisd(struct bt_cpu *c, const struct bt_insn *i)
{
    comi(c, i, ct_ucomisd, 8);
}
BT_HANDLER(COMISS, op_comiss);
BT_HANDLER(UCOMISS, op_ucomiss);
BT_HANDLER(COMISD, op_comisd);
BT_HANDLER(UCOMISD, op_ucomisd);

/* ---- conversions with a GPR ------------------------------------------------------------------ */

#define CVT_TO_GPR(name)                                                                           \
    static uint64_t gt_##name(const uint8_t *s, bool w)                                            \
    {                                                                                              \
        uint64_t r;                                                                                \
        uint32_t r32;                                                                              \
        if (w) {                                                                                   \
            __asm__ volatile("movdqu (%1), %%xmm1\n\t" #name "q %%xmm1, %0"                        \
                             : "=r"(r)                                                             \
                             : "r"(s)                                                              \
                             : "xmm1", "memory");                                                  \
            return r;                                                                              \
        }                                                                                          \
        __asm__ volatile("movdqu (%1), %%xmm1\n\t" #name "l %%xmm1, %0"                            \
                         : "=r"(r32)                                                               \
                         : "r"(s)                                                                  \
                         : "xmm1", "memory");                                                      \
        return r32;                                                                                \
    }
CVT_TO_GPR(cvtss2si)
CVT_TO_GPR(cvttss2si)
CVT_TO_GPR(cvtsd2si)
CVT_TO_GPR(cvttsd2si)

static void cvt_to_gpr(struct bt_cpu *c, const struct bt_insn *i,
                       uint64_t (*t)(const uint8_t *, bool), unsigned sz)
{
    uint8_t s[16];
    check_for(c, i);
    if (i->op[0].kind != BT_OPK_REG || i->op[0].rclass != BT_RC_GPR) bt_ud(c);
    read_x(c, i, 1, s, sz, false);
    bool w = i->op[0].size == 8;
    uint32_t h = fp_enter(c);
    uint64_t r = t(s, w);
    fp_leave(c, h);
    bt_gpr_write(c, i->op[0].reg, w ? 8 : 4, r);
    done(c);
}
static void op_cvtss2si(struct bt_cpu *c, const struct bt_insn *i)
{
    cvt_to_gpr(c, i, gt_cvtss2si, 4);
}
static void op_cvttss2si(struct bt_cpu *c, const struct bt_insn *i)
{
    cvt_to_gpr(c, i, gt_cvttss2si, 4);
}
static void op_cvtsd2si(struct bt_cpu *c, const struct bt_insn *i)
{
    cvt_to_gpr(c, i, gt_cvtsd2si, 8);
}
static void op_cvttsd2si(struct bt_cpu *c, const struct bt_insn *i)
{
    cvt_to_gpr(c, i, gt_cvttsd2si, 8);
}
BT_HANDLER(CVTSS2SI, op_cvtss2si);
BT_HANDLER(CVTTSS2SI, op_cvttss2si);
BT_HANDLER(CVTSD2SI, op_cvtsd2si);
BT_HANDLER(CVTTSD2SI, op_cvttsd2si);

#define CVT_FROM_GPR(name)                                                                         \
    static void ft_##name(uint8_t *d, uint64_t v, bool w)                                          \
    {                                                                                              \
        if (w)                                                                                     \
            __asm__ volatile("movdqu (%0), %%xmm0\n\t" #name "q %1, %%xmm0\n\tmovdqu %%xmm0, (%0)" \
                             :                                                                     \
                             : "r"(d), "r"(v)                                                      \
                             : "xmm0", "memory");                                                  \
        else                                                                                       \
            __asm__ volatile("movdqu (%0), %%xmm0\n\t" #name "l %1, %%xmm0\n\tmovdqu %%xmm0, (%0)" \
                             :                                                                     \
                             : "r"(d), "r"((uint32_t)v)                                            \
                             : "xmm0", "memory");                                                  \
    }
CVT_FROM_GPR(cvtsi2ss)
CVT_FROM_GPR(cvtsi2sd)

static void cvt_from_gpr(struct bt_cpu *c, const struct bt_insn *i,
                         void (*t)(uint8_t *, uint64_t, bool))
{
    uint8_t d[16], s[16];
    check_for(c, i);
    bool w = i->op[1].size == 8;
    read_x(c, i, 1, s, w ? 8 : 4, false);
    uint64_t v;
    memcpy(&v, s, 8);
    memcpy(d, c->s.fx.xmm[xreg(&i->op[0])], 16);
    uint32_t h = fp_enter(c);
    t(d, v, w);
    fp_leave(c, h);
    memcpy(c->s.fx.xmm[xreg(&i->op[0])], d, 16);
    done(c);
}
static void op_cvtsi2ss(struct bt_cpu *c, const struct bt_insn *i)
{
    cvt_from_gpr(c, i, ft_cvtsi2ss);
}
static void op_cvtsi2sd(struct bt_cpu *c, const struct bt_insn *i)
{
    cvt_from_gpr(c, i, ft_cvtsi2sd);
}
BT_HANDLER(CVTSI2SS, op_cvtsi2ss);
BT_HANDLER(CVTSI2SD, op_cvtsi2sd);

/* ---- conversions with an MMX register ------------------------------------------------------- */

/* xmm <- mm/m64 (CVTPI2PS merges into the low half, CVTPI2PD fills the register) */
#define CVT_FROM_MM(name)                                                                          \
    static void pt_##name(uint8_t *d, const uint8_t *s)                                            \
    {                                                                                              \
        __asm__ volatile("movdqu (%0), %%xmm0\n\tmovq (%1), %%mm1\n\t" #name                       \
                         " %%mm1, %%xmm0\n\tmovdqu %%xmm0, (%0)\n\temms"                           \
                         :                                                                         \
                         : "r"(d), "r"(s)                                                          \
                         : "xmm0", "mm1", "memory");                                               \
    }
CVT_FROM_MM(cvtpi2ps)
CVT_FROM_MM(cvtpi2pd)
/* mm <- xmm/m64 or xmm/m128 */
#define CVT_TO_MM(name)                                                                            \
    static void pt_##name(uint8_t *d, const uint8_t *s)                                            \
    {                                                                                              \
        __asm__ volatile("movdqu (%1), %%xmm1\n\t" #name                                           \
                         " %%xmm1, %%mm0\n\tmovq %%mm0, (%0)\n\temms"                              \
                         :                                                                         \
                         : "r"(d), "r"(s)                                                          \
                         : "xmm1", "mm0", "memory");                                               \
    }
CVT_TO_MM(cvtps2pi)
CVT_TO_MM(cvttps2pi)
CVT_TO_MM(cvtpd2pi)
CVT_TO_MM(cvttpd2pi)

static void cvt_mm(struct bt_cpu *c, const struct bt_insn *i, thunk2 t, unsigned sz)
{
    uint8_t d[16], s[16];
    check_for(c, i);
    bt_sse_check(c); /* SSE FP instructions: CR4.OSFXSR and CR0.EM apply too */
    bool to_mm = op_is_mmx(&i->op[0]);
    read_x(c, i, 1, s, sz, false);
    if (to_mm || op_is_mmx(&i->op[1])) mmx_transition(c);
    memset(d, 0, sizeof(d));
    if (!to_mm) memcpy(d, c->s.fx.xmm[xreg(&i->op[0])], 16);
    uint32_t h = fp_enter(c);
    t(d, s);
    fp_leave(c, h);
    if (to_mm) {
        uint64_t v;
        memcpy(&v, d, 8);
        mmx_set(c, mreg(&i->op[0]), v);
    } else {
        memcpy(c->s.fx.xmm[xreg(&i->op[0])], d, 16);
    }
    done(c);
}
static void op_cvtpi2ps(struct bt_cpu *c, const struct bt_insn *i)
{
    cvt_mm(c, i, pt_cvtpi2ps, 8);
}
static void op_cvtpi2pd(struct bt_cpu *c, const struct bt_insn *i)
{
    cvt_mm(c, i, pt_cvtpi2pd, 8);
}
static void op_cvtps2pi(struct bt_cpu *c, const struct bt_insn *i)
{
    cvt_mm(c, i, pt_cvtps2pi, 8);
}
static void op_cvttps2pi(struct bt_cpu *c, const struct bt_insn *i)
{
    cvt_mm(c, i, pt_cvttps2pi, 8);
}
static void op_cvtpd2pi(struct bt_cpu *c, const struct bt_insn *i)
{
    cvt_mm(c, i, pt_cvtpd2pi, 16);
}
static void op_cvttpd2pi(struct bt_cpu *c, const struct bt_insn *i)
{
    cvt_mm(c, i, pt_cvttpd2pi, 16);
}
BT_HANDLER(CVTPI2PS, op_cvtpi2ps);
BT_HANDLER(CVTPI2PD, op_cvtpi2pd);
BT_HANDLER(CVTPS2PI, op_cvtps2pi);
BT_HANDLER(CVTTPS2PI, op_cvttps2pi);
BT_HANDLER(CVTPD2PI, op_cvtpd2pi);
BT_HANDLER(CVTTPD2PI, op_cvttpd2pi);

/* ---- data movement ----------------------------------------------------------------------------
 */

/* Full-register moves: register <- register/memory, or memory <- register. */
static void mov_full(struct bt_cpu *c, const struct bt_insn *i, bool aligned, bool store_only)
{
    uint8_t v[16];
    check_for(c, i);
    if (i->op[0].kind == BT_OPK_MEM) {
        if (!op_is_xmm(&i->op[1])) bt_ud(c);
        write_mem(c, i, 0, c->s.fx.xmm[xreg(&i->op[1])], 16, aligned);
    } else {
        if (store_only || !op_is_xmm(&i->op[0])) bt_ud(c);
        read_x(c, i, 1, v, 16, !aligned);
        memcpy(c->s.fx.xmm[xreg(&i->op[0])], v, 16);
    }
    done(c);
}
static void op_movaps(struct bt_cpu *c, const struct bt_insn *i)
{
    mov_full(c, i, true, false);
}
static void op_movups(struct bt_cpu *c, const struct bt_insn *i)
{
    mov_full(c, i, false, false);
}
static void op_movnt(struct bt_cpu *c, const struct bt_insn *i)
{
    mov_full(c, i, true, true);
}
BT_HANDLER(MOVAPS, op_movaps);
BT_HANDLER(MOVAPD, op_movaps);
BT_HANDLER(MOVDQA, op_movaps);
BT_HANDLER(MOVUPS, op_movups);
BT_HANDLER(MOVUPD, op_movups);
BT_HANDLER(MOVDQU, op_movups);
BT_HANDLER(MOVNTPS, op_movnt);
BT_HANDLER(MOVNTPD, op_movnt);
BT_HANDLER(MOVNTDQ, op_movnt);

/* MOVSS/MOVSD: register-register moves the low element only; a load zeroes the rest. */
static void mov_scalar(struct bt_cpu *c, const struct bt_insn *i, unsigned n)
{
    check_for(c, i);
    if (i->op[0].kind == BT_OPK_MEM) {
        write_mem(c, i, 0, c->s.fx.xmm[xreg(&i->op[1])], n, false);
    } else if (op_is_xmm(&i->op[1])) {
        memcpy(c->s.fx.xmm[xreg(&i->op[0])], c->s.fx.xmm[xreg(&i->op[1])], n);
    } else {
        uint8_t v[16];
        read_x(c, i, 1, v, n, true);
        memcpy(c->s.fx.xmm[xreg(&i->op[0])], v, 16);
    }
    done(c);
}
static void op_movss(struct bt_cpu *c, const struct bt_insn *i)
{
    mov_scalar(c, i, 4);
}
BT_HANDLER(MOVSS, op_movss);
static void op_movsd(struct bt_cpu *c, const struct bt_insn *i)
{
    mov_scalar(c, i, 8);
}
BT_HANDLER(MOVSD, op_movsd);

/* MOVLPS/MOVLPD/MOVHPS/MOVHPD (with memory), MOVHLPS/MOVLHPS (register forms). */
static void mov_half(struct bt_cpu *c, const struct bt_insn *i, unsigned dst_off, unsigned src_off)
{
    check_for(c, i);
    if (i->op[0].kind == BT_OPK_MEM) {
        write_mem(c, i, 0, c->s.fx.xmm[xreg(&i->op[1])] + src_off, 8, false);
    } else {
        uint8_t v[16];
        read_x(c, i, 1, v, 8, true);
        memcpy(c->s.fx.xmm[xreg(&i->op[0])] + dst_off, v + (op_is_xmm(&i->op[1]) ? src_off : 0), 8);
    }
    done(c);
}
static void op_movlps(struct bt_cpu *c, const struct bt_insn *i)
{
    mov_half(c, i, 0, 0);
}
static void op_movhps(struct bt_cpu *c, const struct bt_insn *i)
{
    mov_half(c, i, 8, 8);
}
static void op_movhlps(struct bt_cpu *c, const struct bt_insn *i)
{
    mov_half(c, i, 0, 8);
}
static void op_movlhps(struct bt_cpu *c, const struct bt_insn *i)
{
    mov_half(c, i, 8, 0);
}
BT_HANDLER(MOVLPS, op_movlps);
BT_HANDLER(MOVLPD, op_movlps);
BT_HANDLER(MOVHPS, op_movhps);
BT_HANDLER(MOVHPD, op_movhps);
BT_HANDLER(MOVHLPS, op_movhlps);
BT_HANDLER(MOVLHPS, op_movlhps);

/* MOVD/MOVQ in all their forms (GPR, memory, MMX, XMM); writes to XMM zero the upper bits. */
static void op_movdq(struct bt_cpu *c, const struct bt_insn *i)
{
    const struct bt_operand *d = &i->op[0], *s = &i->op[1];
    unsigned n = i->mnemonic == ZYDIS_MNEMONIC_MOVD ? 4 : 8;
    uint8_t v[16];
    check_for(c, i);
    if (d->kind == BT_OPK_MEM && s->kind == BT_OPK_MEM) bt_ud(c);
    read_x(c, i, 1, v, n, true);
    uint64_t x = 0;
    memcpy(&x, v, n);
    if (op_is_mmx(d) || op_is_mmx(s)) mmx_transition(c);
    if (d->kind == BT_OPK_MEM) {
        write_mem(c, i, 0, &x, n, false);
    } else if (op_is_xmm(d)) {
        memset(c->s.fx.xmm[xreg(d)], 0, 16);
        memcpy(c->s.fx.xmm[xreg(d)], &x, 8);
    } else if (op_is_mmx(d)) {
        mmx_set(c, mreg(d), x);
    } else if (d->kind == BT_OPK_REG && d->rclass == BT_RC_GPR) {
        bt_gpr_write(c, d->reg, n, x);
    } else {
        bt_ud(c);
    }
    done(c);
}
BT_HANDLER(MOVD, op_movdq);
BT_HANDLER(MOVQ, op_movdq);

static void op_movq2dq(struct bt_cpu *c, const struct bt_insn *i)
{
    check_for(c, i);
    uint64_t v = mmx_get(c, (mreg(&i->op[1]) - fpu_top(c)) & 7);
    mmx_transition(c);
    memset(c->s.fx.xmm[xreg(&i->op[0])], 0, 16);
    memcpy(c->s.fx.xmm[xreg(&i->op[0])], &v, 8);
    done(c);
}
static void op_movdq2q(struct bt_cpu *c, const struct bt_insn *i)
{
    uint64_t v;
    check_for(c, i);
    memcpy(&v, c->s.fx.xmm[xreg(&i->op[1])], 8);
    mmx_transition(c);
    mmx_set(c, mreg(&i->op[0]), v);
    done(c);
}
BT_HANDLER(MOVQ2DQ, op_movq2dq);
BT_HANDLER(MOVDQ2Q, op_movdq2q);

static void op_movnti(struct bt_cpu *c, const struct bt_insn *i)
{
    if (i->pfx & BT_PFX_LOCK) bt_ud(c);
    if (i->op[0].kind != BT_OPK_MEM || i->op[1].kind != BT_OPK_REG) bt_ud(c);
    unsigned n = i->op[1].size == 8 ? 8 : 4;
    uint64_t v = bt_gpr_read(c, i->op[1].reg, n);
    write_mem(c, i, 0, &v, n, false);
    done(c);
}
BT_HANDLER(MOVNTI, op_movnti);

static void op_movntq(struct bt_cpu *c, const struct bt_insn *i)
{
    check_for(c, i);
    if (i->op[0].kind != BT_OPK_MEM) bt_ud(c);
    uint64_t v = mmx_get(c, (mreg(&i->op[1]) - fpu_top(c)) & 7);
    write_mem(c, i, 0, &v, 8, false);
    mmx_transition(c);
    done(c);
}
BT_HANDLER(MOVNTQ, op_movntq);

/* MASKMOVDQU / MASKMOVQ: byte stores to DS:rDI (or the override segment) selected by the mask's
 * sign bits. */
static void op_maskmov(struct bt_cpu *c, const struct bt_insn *i)
{
    uint8_t data[16], mask[16];
    unsigned n;
    check_for(c, i);
    if (op_is_xmm(&i->op[0])) {
        n = 16;
        memcpy(data, c->s.fx.xmm[xreg(&i->op[0])], 16);
        memcpy(mask, c->s.fx.xmm[xreg(&i->op[1])], 16);
    } else {
        uint64_t a = mmx_get(c, (mreg(&i->op[0]) - fpu_top(c)) & 7);
        uint64_t b = mmx_get(c, (mreg(&i->op[1]) - fpu_top(c)) & 7);
        n = 8;
        memcpy(data, &a, 8);
        memcpy(mask, &b, 8);
    }
    uint64_t ea = bt_gpr_read(c, RDI, i->addrsize / 8);
    for (unsigned k = 0; k < n; k++) {
        if (!(mask[k] & 0x80)) continue;
        uint64_t off = ea + k;
        if (i->addrsize == 32)
            off = (uint32_t)off;
        else if (i->addrsize == 16)
            off = (uint16_t)off;
        uint64_t lin = bt_seg_linear(c, i->dseg, off, 1, BT_ACC_WRITE);
        bt_write(c, lin, 1, data[k], BT_ACC_WRITE);
    }
    if (n == 8) mmx_transition(c);
    done(c);
}
BT_HANDLER(MASKMOVDQU, op_maskmov);
BT_HANDLER(MASKMOVQ, op_maskmov);

/* MOVMSKPS/MOVMSKPD/PMOVMSKB: sign bits to a GPR */
static void movmsk(struct bt_cpu *c, const struct bt_insn *i, unsigned elem)
{
    uint8_t v[16];
    check_for(c, i);
    unsigned n = op_is_mmx(&i->op[1]) ? 8 : 16;
    read_x(c, i, 1, v, n, false);
    if (n == 8) mmx_transition(c);
    uint32_t m = 0;
    for (unsigned k = 0; k < n / elem; k++)
        m |= (uint32_t)(v[k * elem + elem - 1] >> 7) << k;
    bt_gpr_write(c, i->op[0].reg, 4, m);
    done(c);
}
static void op_movmskps(struct bt_cpu *c, const struct bt_insn *i)
{
    movmsk(c, i, 4);
}
static void op_movmskpd(struct bt_cpu *c, const struct bt_insn *i)
{
    movmsk(c, i, 8);
}
static void op_pmovmskb(struct bt_cpu *c, const struct bt_insn *i)
{
    movmsk(c, i, 1);
}
BT_HANDLER(MOVMSKPS, op_movmskps);
BT_HANDLER(MOVMSKPD, op_movmskpd);
BT_HANDLER(PMOVMSKB, op_pmovmskb);

/* ---- permutations with an immediate --------------------------------------------------------- */

static void op_pshufd(struct bt_cpu *c, const struct bt_insn *i)
{
    uint8_t s[16];
    uint32_t a[4], r[4];
    check_for(c, i);
    read_x(c, i, 1, s, 16, false);
    unsigned imm = (unsigned)i->op[2].disp & 0xff;
    memcpy(a, s, 16);
    for (unsigned k = 0; k < 4; k++)
        r[k] = a[(imm >> (2 * k)) & 3];
    memcpy(c->s.fx.xmm[xreg(&i->op[0])], r, 16);
    done(c);
}
/* PSHUFLW/PSHUFHW: shuffle the words of one half, copy the other */
static void pshufxw(struct bt_cpu *c, const struct bt_insn *i, unsigned half)
{
    uint8_t s[16];
    uint16_t w[8], r[8];
    check_for(c, i);
    read_x(c, i, 1, s, 16, false);
    unsigned imm = (unsigned)i->op[2].disp & 0xff;
    memcpy(w, s, 16);
    memcpy(r, w, 16);
    for (unsigned k = 0; k < 4; k++)
        r[half * 4 + k] = w[half * 4 + ((imm >> (2 * k)) & 3)];
    memcpy(c->s.fx.xmm[xreg(&i->op[0])], r, 16);
    done(c);
}
static void op_pshuflw(struct bt_cpu *c, const struct bt_insn *i)
{
    pshufxw(c, i, 0);
}
static void op_pshufhw(struct bt_cpu *c, const struct bt_insn *i)
{
    pshufxw(c, i, 1);
}
static void op_pshufw(struct bt_cpu *c, const struct bt_insn *i)
{
    uint8_t s[16];
    uint16_t w[4], r[4];
    check_for(c, i);
    read_x(c, i, 1, s, 8, false);
    mmx_transition(c);
    unsigned imm = (unsigned)i->op[2].disp & 0xff;
    memcpy(w, s, 8);
    for (unsigned k = 0; k < 4; k++)
        r[k] = w[(imm >> (2 * k)) & 3];
    uint64_t v;
    memcpy(&v, r, 8);
    mmx_set(c, mreg(&i->op[0]), v);
    done(c);
}
BT_HANDLER(PSHUFD, op_pshufd);
BT_HANDLER(PSHUFLW, op_pshuflw);
BT_HANDLER(PSHUFHW, op_pshufhw);
BT_HANDLER(PSHUFW, op_pshufw);

static void op_shufps(struct bt_cpu *c, const struct bt_insn *i)
{
    uint8_t s[16];
    uint32_t a[4], b[4], r[4];
    check_for(c, i);
    read_x(c, i, 1, s, 16, false);
    unsigned imm = (unsigned)i->op[2].disp & 0xff;
    memcpy(a, c->s.fx.xmm[xreg(&i->op[0])], 16);
    memcpy(b, s, 16);
    r[0] = a[imm & 3];
    r[1] = a[(imm >> 2) & 3];
    r[2] = b[(imm >> 4) & 3];
    r[3] = b[(imm >> 6) & 3];
    memcpy(c->s.fx.xmm[xreg(&i->op[0])], r, 16);
    done(c);
}
static void op_shufpd(struct bt_cpu *c, const struct bt_insn *i)
{
    uint8_t s[16];
    uint64_t a[2], b[2], r[2];
    check_for(c, i);
    read_x(c, i, 1, s, 16, false);
    unsigned imm = (unsigned)i->op[2].disp & 0xff;
    memcpy(a, c->s.fx.xmm[xreg(&i->op[0])], 16);
    memcpy(b, s, 16);
    r[0] = a[imm & 1];
    r[1] = b[(imm >> 1) & 1];
    memcpy(c->s.fx.xmm[xreg(&i->op[0])], r, 16);
    done(c);
}
BT_HANDLER(SHUFPS, op_shufps);
BT_HANDLER(SHUFPD, op_shufpd);

/* PSLLDQ/PSRLDQ: byte shifts of the whole register; counts above 15 clear it */
static void bytesh(struct bt_cpu *c, const struct bt_insn *i, bool left)
{
    uint8_t r[16] = {0};
    check_for(c, i);
    unsigned n = (unsigned)i->op[1].disp & 0xff;
    uint8_t *x = c->s.fx.xmm[xreg(&i->op[0])];
    if (n < 16) {
        if (left)
            memcpy(r + n, x, 16 - n);
        else
            memcpy(r, x + n, 16 - n);
    }
    memcpy(x, r, 16);
    done(c);
}
static void op_pslldq(struct bt_cpu *c, const struct bt_insn *i)
{
    bytesh(c, i, true);
}
static void op_psrldq(struct bt_cpu *c, const struct bt_insn *i)
{
    bytesh(c, i, false);
}
BT_HANDLER(PSLLDQ, op_pslldq);
BT_HANDLER(PSRLDQ, op_psrldq);

static void op_pinsrw(struct bt_cpu *c, const struct bt_insn *i)
{
    uint8_t s[16];
    uint16_t w;
    check_for(c, i);
    read_x(c, i, 1, s, 2, true);
    memcpy(&w, s, 2);
    unsigned imm = (unsigned)i->op[2].disp & 0xff;
    if (op_is_mmx(&i->op[0])) {
        mmx_transition(c);
        uint64_t v = mmx_get(c, mreg(&i->op[0]));
        unsigned sh = (imm & 3) * 16;
        v = (v & ~(0xffffull << sh)) | ((uint64_t)w << sh);
        mmx_set(c, mreg(&i->op[0]), v);
    } else {
        memcpy(c->s.fx.xmm[xreg(&i->op[0])] + (imm & 7) * 2, &w, 2);
    }
    done(c);
}
static void op_pextrw(struct bt_cpu *c, const struct bt_insn *i)
{
    /* 66 0F 3A 15 (memory/register destination) is SSE4.1: outside the model */
    if (i->opcode_map != ZYDIS_OPCODE_MAP_0F || i->opcode != 0xc5) bt_ud(c);
    uint8_t s[16];
    uint16_t w;
    check_for(c, i);
    read_x(c, i, 1, s, 16, false);
    unsigned imm = (unsigned)i->op[2].disp & 0xff;
    if (op_is_mmx(&i->op[1])) {
        mmx_transition(c);
        memcpy(&w, s + (imm & 3) * 2, 2);
    } else {
        memcpy(&w, s + (imm & 7) * 2, 2);
    }
    bt_gpr_write(c, i->op[0].reg, 4, w);
    done(c);
}
BT_HANDLER(PINSRW, op_pinsrw);
BT_HANDLER(PEXTRW, op_pextrw);

/* ---- state: EMMS, MXCSR, FXSAVE/FXRSTOR ------------------------------------------------------ */

/* EMMS is an MMX instruction too: TOP becomes 0 (as hardware shows), then every tag empty. */
static void op_emms(struct bt_cpu *c, const struct bt_insn *i)
{
    mmx_check(c);
    mmx_transition(c);
    c->s.fx.ftw = 0;
    done(c);
}
BT_HANDLER(EMMS, op_emms);

static void op_ldmxcsr(struct bt_cpu *c, const struct bt_insn *i)
{
    uint32_t v;
    check_for(c, i);
    uint64_t lin = bt_op_lin(c, i, 0, 4, BT_ACC_READ);
    v = (uint32_t)bt_read(c, lin, 4, BT_ACC_READ);
    if (v & ~MXCSR_SUPPORTED) bt_gp0(c);
    c->s.fx.mxcsr = v;
    done(c);
}
static void op_stmxcsr(struct bt_cpu *c, const struct bt_insn *i)
{
    check_for(c, i);
    uint64_t lin = bt_op_lin(c, i, 0, 4, BT_ACC_WRITE);
    bt_write(c, lin, 4, c->s.fx.mxcsr, BT_ACC_WRITE);
    done(c);
}
BT_HANDLER(LDMXCSR, op_ldmxcsr);
BT_HANDLER(STMXCSR, op_stmxcsr);

/* FXSAVE/FXRSTOR check CR0.EM and CR0.TS (#NM), not CR4.OSFXSR, and never #MF. */
static void fxsr_check(struct bt_cpu *c, const struct bt_insn *i)
{
    if (i->pfx & BT_PFX_LOCK) bt_ud(c);
    if (c->s.cr0 & (X86_CR0_EM | X86_CR0_TS)) bt_raise(c, X86_NM, BT_NO_ERRCODE);
    if (i->op[0].kind != BT_OPK_MEM) bt_ud(c);
}

/* Size of the image that FXSAVE writes/FXRSTOR reads: XMM8-15 exist only in 64-bit mode. */
static size_t fx_span(const struct bt_cpu *c)
{
    return c->code_bits == 64 ? 416 : 288;
}

void bt_fxsave_to(struct bt_cpu *c, uint64_t lin, bool rex_w)
{
    struct x86_fxsave img = c->s.fx;
    img.mxcsr_mask = MXCSR_SUPPORTED;
    img.fop &= 0x7ff;
    if (!rex_w) {
        /* 32-bit form: FIP/FDP offsets with the selectors (stored as 0, as CPUs that deprecate
         * FCS/FDS do) */
        uint8_t *p = (uint8_t *)&img;
        uint32_t ip = (uint32_t)c->s.fx.fip, dp = (uint32_t)c->s.fx.fdp;
        memset(p + 8, 0, 16);
        memcpy(p + 8, &ip, 4);
        memcpy(p + 16, &dp, 4);
    }
    bt_write_buf(c, lin, &img, fx_span(c), BT_ACC_WRITE);
}

void bt_fxrstor_from(struct bt_cpu *c, uint64_t lin, bool rex_w)
{
    struct x86_fxsave img;
    size_t n = fx_span(c);
    memcpy(&img, &c->s.fx, sizeof(img));
    bt_read_buf(c, lin, &img, n, BT_ACC_READ);
    if (img.mxcsr & ~MXCSR_SUPPORTED) bt_gp0(c);
    if (!rex_w) {
        const uint8_t *p = (const uint8_t *)&img;
        uint32_t ip, dp;
        memcpy(&ip, p + 8, 4);
        memcpy(&dp, p + 16, 4);
        img.fip = ip;
        img.fdp = dp;
    }
    img.fop &= 0x7ff;
    img.fcw = fcw_normalize(img.fcw);
    img.rsvd1 = 0;
    img.mxcsr_mask = MXCSR_SUPPORTED;
    memcpy(img.rsvd2, c->s.fx.rsvd2, sizeof(img.rsvd2));
    c->s.fx = img;
}

static void fxsave_common(struct bt_cpu *c, const struct bt_insn *i, bool rex_w, bool save)
{
    fxsr_check(c, i);
    uint64_t lin = bt_op_lin(c, i, 0, 512, save ? BT_ACC_WRITE : BT_ACC_READ);
    if (lin & 15) bt_gp0(c);
    /* the whole 512-byte area is checked for faults before anything is written */
    if (save) bt_probe_write(c, lin, 512, BT_ACC_WRITE);
    if (save)
        bt_fxsave_to(c, lin, rex_w);
    else
        bt_fxrstor_from(c, lin, rex_w);
    done(c);
}
static void op_fxsave(struct bt_cpu *c, const struct bt_insn *i)
{
    fxsave_common(c, i, false, true);
}
static void op_fxsave64(struct bt_cpu *c, const struct bt_insn *i)
{
    fxsave_common(c, i, true, true);
}
static void op_fxrstor(struct bt_cpu *c, const struct bt_insn *i)
{
    fxsave_common(c, i, false, false);
}
static void op_fxrstor64(struct bt_cpu *c, const struct bt_insn *i)
{
    fxsave_common(c, i, true, false);
}
BT_HANDLER(FXSAVE, op_fxsave);
BT_HANDLER(FXSAVE64, op_fxsave64);
BT_HANDLER(FXRSTOR, op_fxrstor);
BT_HANDLER(FXRSTOR64, op_fxrstor64);

/* ---- ordering and cache hints ---------------------------------------------------------------- */

static void op_fence(struct bt_cpu *c, const struct bt_insn *i)
{
    if (i->pfx & BT_PFX_LOCK) bt_ud(c);
    /* other vCPUs run on other host threads: keep the guest's ordering on the host */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    done(c);
}
BT_HANDLER(LFENCE, op_fence);
BT_HANDLER(SFENCE, op_fence);
BT_HANDLER(MFENCE, op_fence);

/* Prefetches never fault. */
static void op_prefetch(struct bt_cpu *c, const struct bt_insn *i)
{
    if (i->pfx & BT_PFX_LOCK) bt_ud(c);
    done(c);
}
BT_HANDLER(PREFETCHNTA, op_prefetch);
BT_HANDLER(PREFETCHT0, op_prefetch);
BT_HANDLER(PREFETCHT1, op_prefetch);
BT_HANDLER(PREFETCHT2, op_prefetch);

/* CLFLUSH faults like a byte read (segment and paging checks); guest RAM is coherent. */
static void op_clflush(struct bt_cpu *c, const struct bt_insn *i)
{
    if (i->pfx & BT_PFX_LOCK) bt_ud(c);
    uint64_t lin = bt_op_lin(c, i, 0, 1, BT_ACC_READ);
    (void)bt_host_ptr(c, lin, 1, BT_ACC_READ);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    done(c);
}
BT_HANDLER(CLFLUSH, op_clflush);
