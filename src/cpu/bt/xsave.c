/* XSAVE/XRSTOR/XSAVEOPT/XGETBV/XSETBV for the software CPU, for the x87 and SSE state components.
 *
 * The lookout-v1 CPU model has no XSAVE, and the bt backend never lets CR4.OSXSAVE be set, so
 * under --cpu bt every one of these raises #UD as the model's hardware would.  They exist for
 * bt_emulate_one(): kvm_pvm does not intercept CPUID, so a guest there sees the host's XSAVE,
 * enables CR4.OSXSAVE, and kvm_pvm's emulator gives up on XRSTOR; the KVM backend then hands the
 * instruction to this CPU.  The neutral state holds x87 and SSE only (no YMM/AVX-512), so an
 * access whose requested-feature bitmap includes anything beyond bits 0-1 stops with an internal
 * error rather than silently losing state.
 *
 * Trust: the XSAVE area and EDX:EAX/ECX come from the guest; alignment, header reserved bits,
 * XSTATE_BV against XCR0 and the XCR0 combination rules are checked as the SDM (Vol.1 13.7-13.8,
 * Vol.2 XSETBV) says. */
#include <string.h>

#include "cpu/bt/fpu.h"
#include "cpu/bt/sys.h"
#include "util/log.h"

#define XFEATURE_SUPPORTED 3ull /* x87 | SSE */

static void xsave_check(struct bt_cpu *c, const struct bt_insn *i)
{
    if ((i->pfx & BT_PFX_LOCK) || !(c->s.cr4 & X86_CR4_OSXSAVE)) bt_ud(c);
    if (c->s.cr0 & X86_CR0_TS) bt_raise(c, X86_NM, BT_NO_ERRCODE);
    if (i->op[0].kind != BT_OPK_MEM) bt_ud(c);
}

static uint64_t rfbm_of(struct bt_cpu *c)
{
    uint64_t mask = (c->s.gpr[RDX] << 32) | (uint32_t)c->s.gpr[RAX];
    return c->s.xcr0 & mask;
}

static bool unsupported_components(struct bt_cpu *c, uint64_t rfbm)
{
    if (!(rfbm & ~XFEATURE_SUPPORTED)) return false;
    bt_log_unsupported("XSAVE state components beyond x87/SSE (AVX and later)");
    if (c->exit) c->exit->reason = VCPU_EXIT_INTERNAL;
    c->exit_now = true;
    c->s.rip = c->insn_rip; /* nothing happened */
    return true;
}

static void op_xsave(struct bt_cpu *c, const struct bt_insn *i)
{
    xsave_check(c, i);
    uint64_t rfbm = rfbm_of(c);
    uint64_t lin = bt_op_lin(c, i, 0, 576, BT_ACC_WRITE);
    if (lin & 63) bt_gp0(c);
    if (unsupported_components(c, rfbm)) return;
    bt_probe_write(c, lin, 576, BT_ACC_WRITE);
    uint8_t old[576];
    bt_read_buf(c, lin, old, sizeof(old), BT_ACC_READ);
    bool rex_w = i->mnemonic != ZYDIS_MNEMONIC_XSAVE && i->mnemonic != ZYDIS_MNEMONIC_XSAVEOPT;
    bt_fxsave_to(c, lin, rex_w);
    uint8_t img[576];
    bt_read_buf(c, lin, img, sizeof(img), BT_ACC_READ);
    /* keep what the requested-feature bitmap excludes */
    if (!(rfbm & 1)) {
        memcpy(img, old, 24);
        memcpy(img + 32, old + 32, 128);
    }
    if (!(rfbm & 2)) {
        memcpy(img + 24, old + 24, 8); /* MXCSR goes with SSE (or AVX) */
        memcpy(img + 160, old + 160, 256);
    }
    uint64_t bv;
    memcpy(&bv, old + 512, 8);
    bv = (bv & ~rfbm) | (rfbm & XFEATURE_SUPPORTED);
    memcpy(img + 512, &bv, 8);
    bt_write_buf(c, lin, img, sizeof(img), BT_ACC_WRITE);
}
BT_HANDLER(XSAVE, op_xsave);
BT_HANDLER(XSAVE64, op_xsave);
BT_HANDLER(XSAVEOPT, op_xsave);
BT_HANDLER(XSAVEOPT64, op_xsave);

static void op_xrstor(struct bt_cpu *c, const struct bt_insn *i)
{
    xsave_check(c, i);
    uint64_t rfbm = rfbm_of(c);
    uint64_t lin = bt_op_lin(c, i, 0, 576, BT_ACC_READ);
    if (lin & 63) bt_gp0(c);
    uint8_t hdr[64];
    uint64_t m = c->code_bits == 64 ? ~0ull : 0xffffffffull;
    bt_read_buf(c, (lin + 512) & m, hdr, sizeof(hdr), BT_ACC_READ);
    uint64_t bv, comp;
    memcpy(&bv, hdr, 8);
    memcpy(&comp, hdr + 8, 8);
    if (comp & (1ull << 63)) bt_gp0(c); /* compacted form needs XSAVEC: not supported */
    for (unsigned k = 16; k < 64; k++)
        if (hdr[k]) bt_gp0(c);
    if (bv & ~c->s.xcr0) bt_gp0(c);
    if (unsupported_components(c, rfbm)) return;
    struct x86_fxsave old = c->s.fx;
    bool rex_w = i->mnemonic != ZYDIS_MNEMONIC_XRSTOR;
    if (rfbm & 3) bt_fxrstor_from(c, lin, rex_w);
    struct x86_fxsave *fx = &c->s.fx;
    if (!(rfbm & 1)) {
        fx->fcw = old.fcw, fx->fsw = old.fsw, fx->ftw = old.ftw, fx->fop = old.fop;
        fx->fip = old.fip, fx->fdp = old.fdp;
        memcpy(fx->st, old.st, sizeof(fx->st));
    } else if (!(bv & 1)) {
        fx->fcw = 0x37f, fx->fsw = 0, fx->ftw = 0, fx->fop = 0, fx->fip = 0, fx->fdp = 0;
        memset(fx->st, 0, sizeof(fx->st));
    }
    if (!(rfbm & 2)) {
        fx->mxcsr = old.mxcsr;
        memcpy(fx->xmm, old.xmm, sizeof(fx->xmm));
    } else if (!(bv & 2)) {
        memset(fx->xmm, 0, sizeof(fx->xmm)); /* MXCSR is still loaded from memory */
    }
}
BT_HANDLER(XRSTOR, op_xrstor);
BT_HANDLER(XRSTOR64, op_xrstor);

static void op_xgetbv(struct bt_cpu *c, const struct bt_insn *i)
{
    if (!(c->s.cr4 & X86_CR4_OSXSAVE)) bt_ud(c);
    if ((uint32_t)c->s.gpr[RCX] != 0) bt_gp0(c);
    c->s.gpr[RAX] = (uint32_t)c->s.xcr0;
    c->s.gpr[RDX] = c->s.xcr0 >> 32;
}
BT_HANDLER(XGETBV, op_xgetbv);

static void op_xsetbv(struct bt_cpu *c, const struct bt_insn *i)
{
    if (!(c->s.cr4 & X86_CR4_OSXSAVE)) bt_ud(c);
    if (c->cpl != 0 || (uint32_t)c->s.gpr[RCX] != 0) bt_gp0(c);
    uint64_t v = (c->s.gpr[RDX] << 32) | (uint32_t)c->s.gpr[RAX];
    if (!(v & 1) || (v & ~XFEATURE_SUPPORTED)) bt_gp0(c);
    c->s.xcr0 = v;
}
BT_HANDLER(XSETBV, op_xsetbv);
