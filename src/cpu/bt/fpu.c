/* x87 FPU for the software CPU.
 *
 * The live state is the FXSAVE image c->s.fx (registers in stack order: slot k is ST(k); the
 * abridged tag word in physical-register order).  Because it is exactly what FXRSTOR loads, every
 * computational x87 instruction is executed on the host x87 itself: the host's own FPU state is
 * saved, the guest image (sanitized: all exceptions masked, no pending flags, a valid MXCSR) is
 * loaded with FXRSTOR64, the very same instruction bytes run (a table of one thunk per encoding:
 * 8 x 64 register forms, 8 x 8 memory forms addressed through a host buffer), and FXSAVE64 brings
 * the result back.  Stack overflow/underflow, C0-C3, tags, TOP, rounding, denormals and the
 * transcendental results are then those of real hardware, bit for bit.  Guest exception masks are
 * applied afterwards: an unmasked invalid/denormal/zero-divide leaves the registers (and memory)
 * unchanged and sets ES/B so the next waiting instruction raises #MF; unmasked overflow/underflow
 * on a register destination keep the masked result (hardware stores a biased exponent: an intended
 * difference), on a memory destination nothing is stored, as on hardware.
 *
 * Control instructions (FNINIT, FNCLEX, FLDCW, FNSTCW, FNSTSW, FLDENV, FNSTENV, FRSTOR, FNSAVE,
 * FWAIT) are plain C: they involve the guest's memory formats and do not update FIP/FOP/FDP.
 *
 * Intended differences from hardware: FCS/FDS are stored as 0 (as on CPUs that deprecate them);
 * FOP's mod/rm bits for memory forms assume the shortest encoding of the operand (the decoder keeps
 * no raw ModRM); FNSTENV/FLDENV/FNSAVE/FRSTOR always use the protected-mode layouts (no real-mode
 * layouts); with CR0.NE=0 a pending exception is not signalled (no FERR#/IRQ13).
 *
 * Trust: the instruction's encoding is re-derived from the decoder's fields and checked against
 * the table of valid encodings before anything reaches the host, so a guest can never make the host
 * execute an undefined opcode.  Guest memory goes through the soft MMU; loads happen before, stores
 * after the host run and before the state is committed, so a fault leaves the state untouched. */
#include <string.h>

#include "cpu/bt/bt.h"
#include "cpu/bt/fpu.h"

#define FCW_MASKS 0x003f

/* ---- checks --------------------------------------------------------------------------------- */

void bt_x87_check(struct bt_cpu *c, bool waiting)
{
    if (c->s.cr0 & (X86_CR0_EM | X86_CR0_TS)) bt_raise(c, X86_NM, BT_NO_ERRCODE);
    if (waiting && (c->s.fx.fsw & FSW_EXC & ~c->s.fx.fcw) && (c->s.cr0 & X86_CR0_NE))
        bt_raise(c, X86_MF, BT_NO_ERRCODE);
}

void bt_fpu_check(struct bt_cpu *c)
{
    bt_x87_check(c, true);
}

void bt_fpu_reset(struct bt_cpu *c)
{
    memset(&c->s.fx, 0, sizeof(c->s.fx));
    c->s.fx.fcw = 0x37f;
    c->s.fx.mxcsr = 0x1f80;
    c->s.fx.mxcsr_mask = MXCSR_SUPPORTED;
}

static void done(struct bt_cpu *c)
{
    c->s.rip = c->next_rip;
}

/* FNINIT (also the tail of FNSAVE): TOP 0 without moving registers, all tags empty. */
static void x87_init(struct x86_fxsave *fx)
{
    fpu_rotate_top0(fx);
    fx->fcw = 0x37f;
    fx->fsw = 0;
    fx->ftw = 0;
    fx->fop = 0;
    fx->fip = 0;
    fx->fdp = 0;
}

/* ES and B summarize "an unmasked exception flag is set". */
static uint16_t fsw_summary(uint16_t fsw, uint16_t fcw)
{
    if (fsw & FSW_EXC & ~fcw) return fsw | FSW_ES | FSW_B;
    return fsw & (uint16_t) ~(FSW_ES | FSW_B);
}

/* ---- host execution ------------------------------------------------------------------------- */

struct x87_run {
    struct x86_fxsave host;
    struct x86_fxsave img;
};

/* Valid register-form encodings (D8-DF, ModRM C0-FF), one bit per ModRM; anything else never
 * reaches the host (it would be SIGILL there). */
static const uint64_t x87_reg_valid[8] = {
    0xffffffffffffffffull, 0xffff7f33ff01ffffull, 0x00000200ffffffffull, 0x00ffff1fffffffffull,
    0xffffffffffffffffull, 0x0000ffffffffffffull, 0xffffffff02ffffffull, 0x00ffff01ffffffffull,
};

/* Host FPU state saved, guest image loaded, the instruction, image saved, host state restored.
 * Register forms also carry CF/PF/ZF in (FCMOVcc) and out (FCOMI/FUCOMI); the stack pointer
 * steps over the red zone before PUSHF/POPF. */
#define X87_SEQ(bytes)                                                                             \
    __asm__ volatile("fxsave64 (%1)\n\tfxrstor64 (%2)\n\t" bytes                                   \
                     "\n\tfxsave64 (%2)\n\tfxrstor64 (%1)"                                         \
                     : "=m"(*r)                                                                    \
                     : "r"(&r->host), "r"(&r->img), "D"(mem), "m"(*r)                              \
                     : "memory")
#define X87_SEQ_FLAGS(bytes)                                                                       \
    __asm__ volatile("fxsave64 (%1)\n\tfxrstor64 (%2)\n\t"                                         \
                     "lea -128(%%rsp), %%rsp\n\tpushfq\n\tpop %%rax\n\tand $~0x45, %%rax\n\t"      \
                     "or %3, %%rax\n\tpush %%rax\n\tpopfq\n\t" bytes "\n\t"                        \
                     "pushfq\n\tpop %0\n\tlea 128(%%rsp), %%rsp\n\t"                               \
                     "fxsave64 (%2)\n\tfxrstor64 (%1)"                                             \
                     : "=&r"(flags_out)                                                            \
                     : "r"(&r->host), "r"(&r->img), "r"(flags_in)                                  \
                     : "rax", "memory", "cc")
#define RR(k)                                                                                      \
    case (k):                                                                                      \
        X87_SEQ_FLAGS(".byte 0xd8+((" #k ")>>8), (" #k ")&0xff");                                  \
        break;
#define RR8(k) RR(k) RR(k + 1) RR(k + 2) RR(k + 3) RR(k + 4) RR(k + 5) RR(k + 6) RR(k + 7)
#define RR64(k)                                                                                    \
    RR8(k) RR8(k + 8) RR8(k + 16) RR8(k + 24) RR8(k + 32) RR8(k + 40) RR8(k + 48) RR8(k + 56)
/* memory forms: ModRM mod=00 rm=111, i.e. [rdi] */
#define RM(k)                                                                                      \
    case (k):                                                                                      \
        X87_SEQ(".byte 0xd8+((" #k ")>>3), ((" #k ")&7)<<3|7");                                    \
        break;
#define RM8(k) RM(k) RM(k + 1) RM(k + 2) RM(k + 3) RM(k + 4) RM(k + 5) RM(k + 6) RM(k + 7)

/* key: (opcode & 7) << 8 | modrm for register forms; (opcode & 7) << 3 | reg for memory forms */
static uint64_t x87_host(struct x87_run *r, bool is_mem, unsigned key, void *mem, uint64_t flags_in)
{
    uint64_t flags_out = 0;
    if (is_mem) {
        switch (key) {
            RM8(0) RM8(8) RM8(16) RM8(24) RM8(32) RM8(40) RM8(48) RM8(56)
        }
    } else {
        switch (key) {
            RR64(0x0c0)
            RR64(0x1c0) RR64(0x2c0) RR64(0x3c0) RR64(0x4c0) RR64(0x5c0) RR64(0x6c0) RR64(0x7c0)
        }
    }
    return flags_out;
}

/* Memory forms: what the operand is. */
enum { XM_INV, XM_LOAD, XM_STORE, XM_CTRL };
struct x87_memform {
    uint8_t kind, size;
};
/* clang-format off */
static const struct x87_memform x87_mem[64] = {
    /* D8: m32fp arithmetic */
    {XM_LOAD, 4}, {XM_LOAD, 4}, {XM_LOAD, 4}, {XM_LOAD, 4},
    {XM_LOAD, 4}, {XM_LOAD, 4}, {XM_LOAD, 4}, {XM_LOAD, 4},
    /* D9: FLD m32, -, FST m32, FSTP m32, FLDENV, FLDCW, FNSTENV, FNSTCW */
    {XM_LOAD, 4}, {XM_INV, 0}, {XM_STORE, 4}, {XM_STORE, 4},
    {XM_CTRL, 0}, {XM_CTRL, 0}, {XM_CTRL, 0}, {XM_CTRL, 0},
    /* DA: m32int arithmetic */
    {XM_LOAD, 4}, {XM_LOAD, 4}, {XM_LOAD, 4}, {XM_LOAD, 4},
    {XM_LOAD, 4}, {XM_LOAD, 4}, {XM_LOAD, 4}, {XM_LOAD, 4},
    /* DB: FILD m32, FISTTP (SSE3), FIST m32, FISTP m32, -, FLD m80, -, FSTP m80 */
    {XM_LOAD, 4}, {XM_INV, 0}, {XM_STORE, 4}, {XM_STORE, 4},
    {XM_INV, 0}, {XM_LOAD, 10}, {XM_INV, 0}, {XM_STORE, 10},
    /* DC: m64fp arithmetic */
    {XM_LOAD, 8}, {XM_LOAD, 8}, {XM_LOAD, 8}, {XM_LOAD, 8},
    {XM_LOAD, 8}, {XM_LOAD, 8}, {XM_LOAD, 8}, {XM_LOAD, 8},
    /* DD: FLD m64, FISTTP (SSE3), FST m64, FSTP m64, FRSTOR, -, FNSAVE, FNSTSW m16 */
    {XM_LOAD, 8}, {XM_INV, 0}, {XM_STORE, 8}, {XM_STORE, 8},
    {XM_CTRL, 0}, {XM_INV, 0}, {XM_CTRL, 0}, {XM_CTRL, 0},
    /* DE: m16int arithmetic */
    {XM_LOAD, 2}, {XM_LOAD, 2}, {XM_LOAD, 2}, {XM_LOAD, 2},
    {XM_LOAD, 2}, {XM_LOAD, 2}, {XM_LOAD, 2}, {XM_LOAD, 2},
    /* DF: FILD m16, FISTTP (SSE3), FIST m16, FISTP m16, FBLD, FILD m64, FBSTP, FISTP m64 */
    {XM_LOAD, 2}, {XM_INV, 0}, {XM_STORE, 2}, {XM_STORE, 2},
    {XM_LOAD, 10}, {XM_LOAD, 8}, {XM_STORE, 10}, {XM_STORE, 8},
};
/* clang-format on */

/* ModRM.rm of register forms whose operands do not name ST(i). */
static int x87_fixed_rm(unsigned mnemonic)
{
    switch (mnemonic) {
    case ZYDIS_MNEMONIC_FCHS: return 0;
    case ZYDIS_MNEMONIC_FABS: return 1;
    case ZYDIS_MNEMONIC_FTST: return 4;
    case ZYDIS_MNEMONIC_FXAM: return 5;
    case ZYDIS_MNEMONIC_FLD1: return 0;
    case ZYDIS_MNEMONIC_FLDL2T: return 1;
    case ZYDIS_MNEMONIC_FLDL2E: return 2;
    case ZYDIS_MNEMONIC_FLDPI: return 3;
    case ZYDIS_MNEMONIC_FLDLG2: return 4;
    case ZYDIS_MNEMONIC_FLDLN2: return 5;
    case ZYDIS_MNEMONIC_FLDZ: return 6;
    case ZYDIS_MNEMONIC_F2XM1: return 0;
    case ZYDIS_MNEMONIC_FYL2X: return 1;
    case ZYDIS_MNEMONIC_FPTAN: return 2;
    case ZYDIS_MNEMONIC_FPATAN: return 3;
    case ZYDIS_MNEMONIC_FXTRACT: return 4;
    case ZYDIS_MNEMONIC_FPREM1: return 5;
    case ZYDIS_MNEMONIC_FDECSTP: return 6;
    case ZYDIS_MNEMONIC_FINCSTP: return 7;
    case ZYDIS_MNEMONIC_FPREM: return 0;
    case ZYDIS_MNEMONIC_FYL2XP1: return 1;
    case ZYDIS_MNEMONIC_FSQRT: return 2;
    case ZYDIS_MNEMONIC_FSINCOS: return 3;
    case ZYDIS_MNEMONIC_FRNDINT: return 4;
    case ZYDIS_MNEMONIC_FSCALE: return 5;
    case ZYDIS_MNEMONIC_FSIN: return 6;
    case ZYDIS_MNEMONIC_FCOS: return 7;
    case ZYDIS_MNEMONIC_FUCOMPP: return 1;
    case ZYDIS_MNEMONIC_FCOMPP: return 1;
    case ZYDIS_MNEMONIC_FENI8087_NOP: return 0;
    case ZYDIS_MNEMONIC_FDISI8087_NOP: return 1;
    case ZYDIS_MNEMONIC_FNCLEX: return 2;
    case ZYDIS_MNEMONIC_FNINIT: return 3;
    case ZYDIS_MNEMONIC_FSETPM287_NOP: return 4;
    default: return 0; /* FNOP, FNSTSW AX */
    }
}

/* Re-derives the ModRM byte of a register form from the decoded fields: the operand that names a
 * register other than ST0 gives rm; forms that name none use the fixed table. */
int bt_x87_modrm(const struct bt_insn *i)
{
    int rm = -1;
    for (unsigned n = 0; n < i->nops && n < 4; n++) {
        const struct bt_operand *o = &i->op[n];
        if (o->kind == BT_OPK_REG && o->zreg >= ZYDIS_REGISTER_ST0 &&
            o->zreg <= ZYDIS_REGISTER_ST7) {
            if (o->zreg != ZYDIS_REGISTER_ST0 || rm < 0) rm = o->zreg - ZYDIS_REGISTER_ST0;
        }
    }
    if (rm < 0) rm = x87_fixed_rm(i->mnemonic);
    return 0xc0 | (i->modrm_reg & 7) << 3 | rm;
}

/* An approximation of the memory form's ModRM for FOP (the decoder keeps no raw ModRM): the
 * mod/rm bits follow the shortest encoding of the decoded operand. */
static unsigned guess_mem_modrm(const struct bt_insn *i, int n)
{
    const struct bt_operand *o = &i->op[n];
    unsigned reg = (i->modrm_reg & 7) << 3;
    if (o->base == BT_NOREG || o->base == BT_REG_RIP) return reg | 5;
    unsigned rm = (o->index != BT_NOREG || (o->base & 7) == 4) ? 4 : (o->base & 7);
    unsigned mod = (o->disp == 0 && (o->base & 7) != 5)  ? 0
                   : (o->disp >= -128 && o->disp <= 127) ? 1
                                                         : 2;
    return mod << 6 | reg | rm;
}

static int mem_operand(const struct bt_insn *i)
{
    for (unsigned n = 0; n < i->nops && n < 4; n++)
        if (i->op[n].kind == BT_OPK_MEM) return (int)n;
    return -1;
}

/* ---- control instructions in C -------------------------------------------------------------- */

/* Full 16-bit tag word from the abridged one and the register contents (SDM Vol.1 10.5.1.1). */
static uint16_t full_tag_word(const struct x86_fxsave *fx)
{
    unsigned top = (fx->fsw >> 11) & 7;
    uint16_t tw = 0;
    for (unsigned phys = 0; phys < 8; phys++) {
        unsigned tag;
        if (!(fx->ftw & (1u << phys))) {
            tag = 3;
        } else {
            const uint8_t *r = fx->st[(phys - top) & 7];
            uint16_t exp = (uint16_t)((r[9] << 8 | r[8]) & 0x7fff);
            uint64_t mant;
            memcpy(&mant, r, 8);
            if (exp == 0x7fff)
                tag = 2;
            else if (exp == 0)
                tag = mant ? 2 : 1;
            else
                tag = (mant >> 63) ? 0 : 2;
        }
        tw |= (uint16_t)(tag << (2 * phys));
    }
    return tw;
}

static uint8_t abridged_tag(uint16_t tw)
{
    uint8_t a = 0;
    for (unsigned phys = 0; phys < 8; phys++)
        if (((tw >> (2 * phys)) & 3) != 3) a |= (uint8_t)(1u << phys);
    return a;
}

/* Environment image, protected-mode layout (14 bytes for 16-bit operand size, 28 for 32/64).
 * FCS/FDS are stored as 0, as on CPUs that deprecate them; real-mode layouts are not modelled. */
static size_t env_build(const struct bt_cpu *c, bool o16, uint8_t *e)
{
    const struct x86_fxsave *fx = &c->s.fx;
    uint16_t tw = full_tag_word(fx);
    if (o16) {
        uint16_t w[7] = {fx->fcw, fx->fsw, tw, (uint16_t)fx->fip, 0, (uint16_t)fx->fdp, 0};
        memcpy(e, w, 14);
        return 14;
    }
    uint32_t d[7] = {0xffff0000u | fx->fcw,
                     0xffff0000u | fx->fsw,
                     0xffff0000u | tw,
                     (uint32_t)fx->fip,
                     (uint32_t)(fx->fop & 0x7ff) << 16,
                     (uint32_t)fx->fdp,
                     0xffff0000u};
    memcpy(e, d, 28);
    return 28;
}

static size_t env_load(struct x86_fxsave *fx, bool o16, const uint8_t *e)
{
    uint16_t tw;
    if (o16) {
        uint16_t w[7];
        memcpy(w, e, 14);
        fx->fcw = w[0];
        fx->fsw = w[1];
        tw = w[2];
        fx->fip = w[3];
        fx->fdp = w[5];
    } else {
        uint32_t d[7];
        memcpy(d, e, 28);
        fx->fcw = (uint16_t)d[0];
        fx->fsw = (uint16_t)d[1];
        tw = (uint16_t)d[2];
        fx->fip = d[3];
        fx->fop = (uint16_t)((d[4] >> 16) & 0x7ff);
        fx->fdp = d[5];
    }
    fx->fcw = fcw_normalize(fx->fcw);
    fx->ftw = abridged_tag(tw);
    fx->fsw = fsw_summary(fx->fsw, fx->fcw);
    return o16 ? 14 : 28;
}

static void x87_ctrl_mem(struct bt_cpu *c, const struct bt_insn *i, unsigned op, unsigned reg,
                         int mn)
{
    bool o16 = i->opsize == 16;
    unsigned form = (op & 7) << 3 | reg;
    uint8_t buf[108];
    switch (form) {
    case 0x0c: { /* FLDENV */
        bt_x87_check(c, true);
        unsigned n = o16 ? 14 : 28;
        bt_read_buf(c, bt_op_lin(c, i, mn, n, BT_ACC_READ), buf, n, BT_ACC_READ);
        env_load(&c->s.fx, o16, buf);
        break;
    }
    case 0x0d: { /* FLDCW */
        bt_x87_check(c, true);
        uint16_t v = (uint16_t)bt_read(c, bt_op_lin(c, i, mn, 2, BT_ACC_READ), 2, BT_ACC_READ);
        c->s.fx.fcw = fcw_normalize(v);
        c->s.fx.fsw = fsw_summary(c->s.fx.fsw, c->s.fx.fcw);
        break;
    }
    case 0x0e: { /* FNSTENV: then all exceptions are masked */
        bt_x87_check(c, false);
        size_t n = env_build(c, o16, buf);
        bt_write_buf(c, bt_op_lin(c, i, mn, (unsigned)n, BT_ACC_WRITE), buf, n, BT_ACC_WRITE);
        c->s.fx.fcw |= FCW_MASKS;
        c->s.fx.fsw = fsw_summary(c->s.fx.fsw, c->s.fx.fcw);
        break;
    }
    case 0x0f: /* FNSTCW */
        bt_x87_check(c, false);
        bt_write(c, bt_op_lin(c, i, mn, 2, BT_ACC_WRITE), 2, c->s.fx.fcw, BT_ACC_WRITE);
        break;
    case 0x2c: { /* FRSTOR */
        bt_x87_check(c, true);
        unsigned n = o16 ? 94 : 108, e = o16 ? 14 : 28;
        bt_read_buf(c, bt_op_lin(c, i, mn, n, BT_ACC_READ), buf, n, BT_ACC_READ);
        struct x86_fxsave fx = c->s.fx;
        for (unsigned k = 0; k < 8; k++) {
            memset(fx.st[k], 0, 16);
            memcpy(fx.st[k], buf + e + 10 * k, 10);
        }
        env_load(&fx, o16, buf); /* after the registers: the tags are taken from the image */
        c->s.fx = fx;
        break;
    }
    case 0x2e: { /* FNSAVE: then FNINIT */
        bt_x87_check(c, false);
        size_t e = env_build(c, o16, buf);
        for (unsigned k = 0; k < 8; k++)
            memcpy(buf + e + 10 * k, c->s.fx.st[k], 10);
        size_t n = e + 80;
        bt_write_buf(c, bt_op_lin(c, i, mn, (unsigned)n, BT_ACC_WRITE), buf, n, BT_ACC_WRITE);
        x87_init(&c->s.fx);
        break;
    }
    case 0x2f: /* FNSTSW m16 */
        bt_x87_check(c, false);
        bt_write(c, bt_op_lin(c, i, mn, 2, BT_ACC_WRITE), 2, c->s.fx.fsw, BT_ACC_WRITE);
        break;
    default: bt_ud(c);
    }
    done(c);
}

/* ---- the x87 handler ------------------------------------------------------------------------ */

static void op_x87(struct bt_cpu *c, const struct bt_insn *i)
{
    unsigned op = i->opcode;
    if (i->opcode_map != ZYDIS_OPCODE_MAP_DEFAULT || op < 0xd8 || op > 0xdf ||
        (i->pfx & BT_PFX_LOCK))
        bt_ud(c);
    unsigned reg = i->modrm_reg & 7;
    int mn = mem_operand(i);
    uint8_t buf[16] = {0};
    unsigned key, fop;
    const struct x87_memform *mf = NULL;
    uint64_t lin = 0;

    if (mn >= 0) {
        mf = &x87_mem[(op & 7) << 3 | reg];
        if (mf->kind == XM_INV) bt_ud(c);
        if (mf->kind == XM_CTRL) {
            x87_ctrl_mem(c, i, op, reg, mn);
            return;
        }
        key = (op & 7) << 3 | reg;
        fop = (op & 7) << 8 | guess_mem_modrm(i, mn);
        bt_x87_check(c, true);
        lin = bt_op_lin(c, i, mn, mf->size, mf->kind == XM_LOAD ? BT_ACC_READ : BT_ACC_WRITE);
        if (mf->kind == XM_LOAD) bt_read_buf(c, lin, buf, mf->size, BT_ACC_READ);
    } else {
        unsigned modrm = (unsigned)bt_x87_modrm(i);
        key = (op & 7) << 8 | modrm;
        if (!(x87_reg_valid[op & 7] >> (modrm - 0xc0) & 1)) bt_ud(c);
        fop = key;
        switch (key) {
        case 0x3e2: /* FNCLEX */
            bt_x87_check(c, false);
            c->s.fx.fsw &= (uint16_t) ~(FSW_EXC | FSW_SF | FSW_ES | FSW_B);
            done(c);
            return;
        case 0x3e3: /* FNINIT */
            bt_x87_check(c, false);
            x87_init(&c->s.fx);
            done(c);
            return;
        case 0x7e0: /* FNSTSW AX */
            bt_x87_check(c, false);
            bt_gpr_write(c, RAX, 2, c->s.fx.fsw);
            done(c);
            return;
        default: bt_x87_check(c, true);
        }
    }

    /* run it on the host with every exception masked and no flags pending */
    static _Thread_local struct x87_run r __attribute__((aligned(64)));
    const struct x86_fxsave *old = &c->s.fx;
    r.img = *old;
    r.img.fcw |= FCW_MASKS;
    r.img.fsw &= (uint16_t) ~(FSW_EXC | FSW_SF | FSW_ES | FSW_B);
    r.img.mxcsr = 0x1f80;
    const uint64_t cpz = X86_FLAG_CF | X86_FLAG_PF | X86_FLAG_ZF;
    uint64_t fl = x87_host(&r, mn >= 0, key, buf, c->s.rflags & cpz);

    uint16_t raised = r.img.fsw & (FSW_EXC | FSW_SF);
    uint16_t unmasked = raised & FSW_EXC & ~old->fcw;
    struct x86_fxsave nw = *old;
    if (unmasked & 0x7) {
        /* invalid, denormal, zero-divide unmasked: no result, only the flags (and C1 for a stack
         * fault, which tells overflow from underflow) */
        nw.fsw = (uint16_t)(old->fsw | raised);
        if (raised & FSW_SF) nw.fsw = (uint16_t)((nw.fsw & ~FSW_C1) | (r.img.fsw & FSW_C1));
    } else {
        nw.fsw = (uint16_t)(r.img.fsw | (old->fsw & (FSW_EXC | FSW_SF)));
        nw.ftw = r.img.ftw;
        memcpy(nw.st, r.img.st, sizeof(nw.st));
        if (mf && mf->kind == XM_STORE && !(unmasked & 0x18))
            bt_write_buf(c, lin, buf, mf->size, BT_ACC_WRITE);
        /* FCOMI/FUCOMI(P): DB/DF E8-F7 set ZF PF CF and clear OF SF AF */
        if (!mf && ((op & 7) == 3 || (op & 7) == 7) && (key & 0xff) >= 0xe8 && (key & 0xff) <= 0xf7)
            c->s.rflags = (c->s.rflags & ~(uint64_t)BT_ARITH_FLAGS) | (fl & cpz);
    }
    nw.fsw = fsw_summary(nw.fsw, old->fcw);
    nw.fop = (uint16_t)(fop & 0x7ff);
    nw.fip = c->insn_rip;
    if (mn >= 0) nw.fdp = bt_op_ea(c, i, mn);
    c->s.fx = nw;
    done(c);
}

/* FWAIT: #NM only when CR0.MP and CR0.TS are both set; then pending exceptions. */
static void op_fwait(struct bt_cpu *c, const struct bt_insn *i)
{
    if ((c->s.cr0 & (X86_CR0_MP | X86_CR0_TS)) == (X86_CR0_MP | X86_CR0_TS))
        bt_raise(c, X86_NM, BT_NO_ERRCODE);
    if ((c->s.fx.fsw & FSW_EXC & ~c->s.fx.fcw) && (c->s.cr0 & X86_CR0_NE))
        bt_raise(c, X86_MF, BT_NO_ERRCODE);
    done(c);
}
BT_HANDLER(FWAIT, op_fwait);

/* Every x87 mnemonic of the model goes to op_x87 (FISTTP is SSE3: not registered, so #UD). */
BT_HANDLER(F2XM1, op_x87);
BT_HANDLER(FABS, op_x87);
BT_HANDLER(FADD, op_x87);
BT_HANDLER(FADDP, op_x87);
BT_HANDLER(FBLD, op_x87);
BT_HANDLER(FBSTP, op_x87);
BT_HANDLER(FCHS, op_x87);
BT_HANDLER(FCMOVB, op_x87);
BT_HANDLER(FCMOVBE, op_x87);
BT_HANDLER(FCMOVE, op_x87);
BT_HANDLER(FCMOVNB, op_x87);
BT_HANDLER(FCMOVNBE, op_x87);
BT_HANDLER(FCMOVNE, op_x87);
BT_HANDLER(FCMOVNU, op_x87);
BT_HANDLER(FCMOVU, op_x87);
BT_HANDLER(FCOM, op_x87);
BT_HANDLER(FCOMI, op_x87);
BT_HANDLER(FCOMIP, op_x87);
BT_HANDLER(FCOMP, op_x87);
BT_HANDLER(FCOMPP, op_x87);
BT_HANDLER(FCOS, op_x87);
BT_HANDLER(FDECSTP, op_x87);
BT_HANDLER(FDISI8087_NOP, op_x87);
BT_HANDLER(FDIV, op_x87);
BT_HANDLER(FDIVP, op_x87);
BT_HANDLER(FDIVR, op_x87);
BT_HANDLER(FDIVRP, op_x87);
BT_HANDLER(FENI8087_NOP, op_x87);
BT_HANDLER(FFREE, op_x87);
BT_HANDLER(FFREEP, op_x87);
BT_HANDLER(FIADD, op_x87);
BT_HANDLER(FICOM, op_x87);
BT_HANDLER(FICOMP, op_x87);
BT_HANDLER(FIDIV, op_x87);
BT_HANDLER(FIDIVR, op_x87);
BT_HANDLER(FILD, op_x87);
BT_HANDLER(FIMUL, op_x87);
BT_HANDLER(FINCSTP, op_x87);
BT_HANDLER(FIST, op_x87);
BT_HANDLER(FISTP, op_x87);
BT_HANDLER(FISUB, op_x87);
BT_HANDLER(FISUBR, op_x87);
BT_HANDLER(FLD, op_x87);
BT_HANDLER(FLD1, op_x87);
BT_HANDLER(FLDCW, op_x87);
BT_HANDLER(FLDENV, op_x87);
BT_HANDLER(FLDL2E, op_x87);
BT_HANDLER(FLDL2T, op_x87);
BT_HANDLER(FLDLG2, op_x87);
BT_HANDLER(FLDLN2, op_x87);
BT_HANDLER(FLDPI, op_x87);
BT_HANDLER(FLDZ, op_x87);
BT_HANDLER(FMUL, op_x87);
BT_HANDLER(FMULP, op_x87);
BT_HANDLER(FNCLEX, op_x87);
BT_HANDLER(FNINIT, op_x87);
BT_HANDLER(FNOP, op_x87);
BT_HANDLER(FNSAVE, op_x87);
BT_HANDLER(FNSTCW, op_x87);
BT_HANDLER(FNSTENV, op_x87);
BT_HANDLER(FNSTSW, op_x87);
BT_HANDLER(FPATAN, op_x87);
BT_HANDLER(FPREM, op_x87);
BT_HANDLER(FPREM1, op_x87);
BT_HANDLER(FPTAN, op_x87);
BT_HANDLER(FRNDINT, op_x87);
BT_HANDLER(FRSTOR, op_x87);
BT_HANDLER(FSCALE, op_x87);
BT_HANDLER(FSETPM287_NOP, op_x87);
BT_HANDLER(FSIN, op_x87);
BT_HANDLER(FSINCOS, op_x87);
BT_HANDLER(FSQRT, op_x87);
BT_HANDLER(FST, op_x87);
BT_HANDLER(FSTP, op_x87);
BT_HANDLER(FSTPNCE, op_x87);
BT_HANDLER(FSUB, op_x87);
BT_HANDLER(FSUBP, op_x87);
BT_HANDLER(FSUBR, op_x87);
BT_HANDLER(FSUBRP, op_x87);
BT_HANDLER(FTST, op_x87);
BT_HANDLER(FUCOM, op_x87);
BT_HANDLER(FUCOMI, op_x87);
BT_HANDLER(FUCOMIP, op_x87);
BT_HANDLER(FUCOMP, op_x87);
BT_HANDLER(FUCOMPP, op_x87);
BT_HANDLER(FXAM, op_x87);
BT_HANDLER(FXCH, op_x87);
BT_HANDLER(FXTRACT, op_x87);
BT_HANDLER(FYL2X, op_x87);
BT_HANDLER(FYL2XP1, op_x87);
