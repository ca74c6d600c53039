/* The XSAVE feature set for the software CPU: XSAVE, XSAVEOPT, XSAVEC, XSAVES, XRSTOR, XRSTORS,
 * XGETBV, XSETBV, for the state components the neutral state carries: x87 (0), SSE (1), AVX (2)
 * and AVX-512 (5, 6, 7), in the standard and the compacted format.
 *
 * Who reaches this: the lookout-v1 CPU model has no XSAVE, so under --cpu bt the guest can never
 * set CR4.OSXSAVE and every instruction here raises #UD, as the model's hardware would.  They
 * exist for bt_emulate_one(): kvm_pvm does not present the VM's CPUID model, so a guest there sees
 * the host's XSAVE (seen: XCR0 mask 0xe7, CPUID.(0xD,1).EAX = 7: XSAVEOPT, XSAVEC, XGETBV1),
 * enables CR4.OSXSAVE, and kvm_pvm's emulator gives up on XRSTOR; the KVM backend then hands the
 * instruction to this CPU.  bt_xsave_guest_view() records what that guest was shown, and every
 * handler checks it (c->xsave_visible, c->xsave_d1_eax, c->xcr0_supported) before CR4.OSXSAVE.
 *
 * Components the neutral state does not carry (AMX, PKRU, supervisor state, ...): an access whose
 * requested-feature bitmap names one stops the vCPU with an internal error ("unsupported XSAVE
 * component N, stopping") rather than corrupting state.
 *
 * XINUSE (the init optimisation) is computed from the register contents: a component is "in use"
 * exactly when it is not in its initial configuration.  The SDM allows a processor to report 1 for
 * a component in its initial configuration, never 0 for one that is not, so this is one of the
 * behaviours hardware may show.  XSAVEOPT and XSAVES do not use the modified optimisation (they
 * behave as XSAVE and XSAVEC-with-supervisor-state), which the SDM also allows.
 *
 * Trust: the XSAVE area, its header and EDX:EAX/ECX come from the guest; alignment, header reserved
 * bits, XSTATE_BV/XCOMP_BV against XCR0 (| IA32_XSS), MXCSR reserved bits and the XCR0 combination
 * rules are checked as the SDM (Vol.1 13.7-13.12, Vol.2 XRSTOR/XSETBV) says, before any state or
 * memory changes. */
#include <cpuid.h>
#include <pthread.h>
#include <stddef.h>
#include <string.h>

#include "cpu/bt/fpu.h"
#include "cpu/bt/sys.h"
#include "util/log.h"

#define XF_X87        X86_XFEATURE_X87
#define XF_SSE        X86_XFEATURE_SSE
#define XF_AVX        X86_XFEATURE_AVX
#define XS_HDR        512
#define XS_EXT        576 /* start of the extended region */
#define XCOMP_COMPACT (1ull << 63)
/* CPUID.(0xD,1).EAX */
#define D1_XSAVEOPT 1u
#define D1_XSAVEC   2u
#define D1_XGETBV1  4u
#define D1_XSAVES   8u

/* Sizes and 64-byte-alignment flags of every component as the host enumerates them (compacted
 * offsets of the carried components depend on the components below them in XCOMP_BV). */
static struct {
    uint32_t size[64];
    bool align[64];
    unsigned lin_bits; /* linear-address width, CPUID.0x80000008:EAX[15:8] */
} host_comp = {.lin_bits = 48};
static pthread_once_t host_comp_once = PTHREAD_ONCE_INIT;
static void host_comp_probe(void)
{
    unsigned a, b, c, d;
    if (__get_cpuid_max(0x80000000, NULL) >= 0x80000008) {
        __cpuid(0x80000008, a, b, c, d);
        unsigned w = (a >> 8) & 0xff;
        if (w >= 32 && w <= 64) host_comp.lin_bits = w;
    }
    if (__get_cpuid_max(0, NULL) < 0xd) return;
    for (unsigned i = 2; i < 63; i++) {
        __cpuid_count(0xd, i, a, b, c, d);
        host_comp.size[i] = a;
        host_comp.align[i] = c & 2;
    }
    for (unsigned k = 0; k < ARRAY_SIZE(x86_xcomps); k++) /* architectural, whatever the host */
        host_comp.size[x86_xcomps[k].bit] = x86_xcomps[k].size;
}

void bt_xsave_guest_view(struct bt_cpu *c)
{
    unsigned a, b, cx, d;
    c->xsave_visible = false;
    c->xsave_d1_eax = 0;
    c->xcr0_supported = 0;
    pthread_once(&host_comp_once, host_comp_probe);
    if (__get_cpuid_max(0, NULL) < 0xd) return;
    __cpuid(1, a, b, cx, d);
    if (!(cx & (1u << 26))) return;
    __cpuid_count(0xd, 0, a, b, cx, d);
    /* AMX tile state (17, 18) is shown by KVM only to a VMM that asked the host for permission
     * (arch_prctl ARCH_REQ_XCOMP_GUEST_PERM); lookout does not. */
    c->xcr0_supported = ((uint64_t)d << 32 | a) & ~((1ull << 17) | (1ull << 18));
    __cpuid_count(0xd, 1, a, b, cx, d);
    /* KVM shows XSAVES only when it manages IA32_XSS for the guest (kvm_pvm here does not: the
     * guest sees 0xD.1 EAX = 7); a vCPU with a nonzero IA32_XSS has evidently been shown it. */
    c->xsave_d1_eax = a & (D1_XSAVEOPT | D1_XSAVEC | D1_XGETBV1);
    if ((a & D1_XSAVES) && c->s.xss) c->xsave_d1_eax |= D1_XSAVES;
    c->xsave_visible = true;
}

/* #UD unless the guest's CPUID shows the instruction and CR4.OSXSAVE is set. */
static void xs_enabled(struct bt_cpu *c, const struct bt_insn *i, uint32_t d1_feature)
{
    if ((i->pfx & BT_PFX_LOCK) || !c->xsave_visible || !(c->s.cr4 & X86_CR4_OSXSAVE)) bt_ud(c);
    if (d1_feature && !(c->xsave_d1_eax & d1_feature)) bt_ud(c);
    pthread_once(&host_comp_once, host_comp_probe);
}

static void xs_mem_checks(struct bt_cpu *c, const struct bt_insn *i, uint32_t d1_feature)
{
    xs_enabled(c, i, d1_feature);
    if (c->s.cr0 & X86_CR0_TS) bt_raise(c, X86_NM, BT_NO_ERRCODE);
    if (i->op[0].kind != BT_OPK_MEM) bt_ud(c);
}

/* Components beyond what the neutral state carries: stop, leaving state and memory untouched. */
static bool xs_refuse(struct bt_cpu *c, uint64_t rfbm)
{
    uint64_t extra = rfbm & ~X86_XFEATURE_CARRIED;
    if (!extra) return false;
    log_err("software CPU: unsupported XSAVE component %d, stopping (the neutral vCPU state "
            "carries x87, SSE, AVX and AVX-512 only)",
            __builtin_ctzll(extra));
    if (c->exit) c->exit->reason = VCPU_EXIT_INTERNAL;
    c->exit_now = true;
    c->s.rip = c->insn_rip; /* nothing happened */
    return true;
}

static const uint8_t zero_block[1024];

static uint8_t *comp_field(struct bt_cpu *c, const struct x86_xcomp *x)
{
    return (uint8_t *)&c->s + x->field;
}

/* XINUSE, from the register contents (see the header comment). */
static uint64_t xinuse(struct bt_cpu *c)
{
    const struct x86_fxsave *fx = &c->s.fx;
    uint64_t u = 0;
    if (fx->fcw != 0x37f || fx->fsw || fx->ftw || fx->fop || fx->fip || fx->fdp ||
        memcmp(fx->st, zero_block, sizeof(fx->st)))
        u |= XF_X87;
    if (memcmp(fx->xmm, zero_block, sizeof(fx->xmm))) u |= XF_SSE; /* MXCSR is not tracked */
    for (unsigned k = 0; k < ARRAY_SIZE(x86_xcomps); k++)
        if (memcmp(comp_field(c, &x86_xcomps[k]), zero_block, x86_xcomps[k].size))
            u |= 1ull << x86_xcomps[k].bit;
    return u;
}

/* Offset of component `bit` (>= 2) in an area of format `xcomp` (0: standard). */
static unsigned comp_offset(const struct x86_xcomp *x, uint64_t xcomp)
{
    if (!(xcomp & XCOMP_COMPACT)) return x86_xcomp_std_off(x);
    unsigned off = XS_EXT;
    for (unsigned j = 2; j < x->bit; j++) {
        if (!(xcomp & (1ull << j))) continue;
        if (host_comp.align[j]) off = ALIGN_UP(off, 64u);
        off += host_comp.size[j];
    }
    if (host_comp.align[x->bit]) off = ALIGN_UP(off, 64u);
    return off;
}

/* Bytes of the area an access with this bitmap and format touches (for the up-front checks). */
static unsigned area_size(uint64_t rfbm, uint64_t xcomp)
{
    unsigned end = XS_EXT;
    for (unsigned k = 0; k < ARRAY_SIZE(x86_xcomps); k++) {
        const struct x86_xcomp *x = &x86_xcomps[k];
        if (rfbm & (1ull << x->bit)) end = MAX(end, comp_offset(x, xcomp) + x->size);
    }
    return end;
}

/* The legacy region as FXSAVE would write it (x87 in the REX.W or the 32-bit form). */
static void legacy_image(struct bt_cpu *c, bool rex_w, struct x86_fxsave *img)
{
    *img = c->s.fx;
    img->mxcsr_mask = MXCSR_SUPPORTED;
    img->fop &= 0x7ff;
    if (!rex_w) {
        uint8_t *p = (uint8_t *)img;
        uint32_t ip = (uint32_t)c->s.fx.fip, dp = (uint32_t)c->s.fx.fdp;
        memset(p + 8, 0, 16);
        memcpy(p + 8, &ip, 4);
        memcpy(p + 16, &dp, 4);
    }
}

/* FIP is a linear address: XRSTOR keeps it canonical for the CPU's linear-address width
 * (the host's, whose CPUID the guest sees: 57 bits on an LA57 part, as seen on this host). */
static uint64_t canon_lin(uint64_t v)
{
    unsigned sh = 64 - host_comp.lin_bits;
    return (uint64_t)((int64_t)(v << sh) >> sh);
}

/* Linear address of byte `off` of the area (wrapping at 4 GiB outside 64-bit mode). */
static uint64_t at(const struct bt_cpu *c, uint64_t lin, uint64_t off)
{
    return c->code_bits == 64 ? lin + off : (uint32_t)(lin + off);
}

enum xs_kind { XS_STD, XS_OPT, XS_C, XS_S };

static uint64_t edx_eax(const struct bt_cpu *c)
{
    return (c->s.gpr[RDX] << 32) | (uint32_t)c->s.gpr[RAX];
}

static void xsave_common(struct bt_cpu *c, const struct bt_insn *i, enum xs_kind kind, bool rex_w)
{
    static const uint32_t feat[] = {0, D1_XSAVEOPT, D1_XSAVEC, D1_XSAVES};
    xs_mem_checks(c, i, feat[kind]);
    if (kind == XS_S && c->cpl != 0) bt_gp0(c);
    bool compact = kind == XS_C || kind == XS_S;
    uint64_t rfbm = edx_eax(c) & (c->s.xcr0 | (kind == XS_S ? c->s.xss : 0));
    uint64_t xcomp = compact ? (rfbm | XCOMP_COMPACT) : 0;
    unsigned size = area_size(rfbm, xcomp);
    uint64_t lin = bt_op_lin(c, i, 0, size, BT_ACC_WRITE);
    if (lin & 63) bt_gp0(c);
    if (xs_refuse(c, rfbm)) return;
    bt_probe_write(c, lin, size, BT_ACC_WRITE); /* every fault before the first byte is written */

    uint64_t inuse = xinuse(c);
    /* The compacted form's restore initialises MXCSR along with SSE when XSTATE_BV[1] = 0, so
     * XSAVEC/XSAVES count SSE in use when MXCSR is not 1F80H (as the host does). */
    if (compact && c->s.fx.mxcsr != 0x1f80) inuse |= XF_SSE;
    uint64_t save = compact ? (rfbm & inuse) : rfbm; /* XSAVEC/XSAVES: the init optimisation */
    bool b64 = c->code_bits == 64;
    struct x86_fxsave img;
    legacy_image(c, rex_w, &img);
    const uint8_t *p = (const uint8_t *)&img;
    if (save & XF_X87) {
        bt_write_buf(c, lin, p, 24, BT_ACC_WRITE);
        bt_write_buf(c, at(c, lin, 32), p + 32, 128, BT_ACC_WRITE);
    }
    /* MXCSR and MXCSR_MASK: the standard form writes them with SSE or AVX whatever XINUSE
     * says; the compacted form only with the SSE component it saves */
    if (compact ? (save & XF_SSE) : (rfbm & (XF_SSE | XF_AVX)))
        bt_write_buf(c, at(c, lin, 24), p + 24, 8, BT_ACC_WRITE);
    if (save & XF_SSE) bt_write_buf(c, at(c, lin, 160), p + 160, b64 ? 256 : 128, BT_ACC_WRITE);
    for (unsigned k = 0; k < ARRAY_SIZE(x86_xcomps); k++) {
        const struct x86_xcomp *x = &x86_xcomps[k];
        unsigned n = b64 ? x->size : x->size_legacy;
        if ((save & (1ull << x->bit)) && n)
            bt_write_buf(c, at(c, lin, comp_offset(x, xcomp)), comp_field(c, x), n, BT_ACC_WRITE);
    }
    if (compact) {
        uint64_t hdr[2] = {rfbm & inuse, xcomp};
        bt_write_buf(c, at(c, lin, XS_HDR), hdr, 16, BT_ACC_WRITE);
    } else {
        uint64_t bv = bt_read(c, at(c, lin, XS_HDR), 8, BT_ACC_READ);
        bv = (bv & ~rfbm) | (rfbm & inuse);
        bt_write(c, at(c, lin, XS_HDR), 8, bv, BT_ACC_WRITE);
    }
}

static void op_xsave(struct bt_cpu *c, const struct bt_insn *i)
{
    xsave_common(c, i, XS_STD, false);
}
static void op_xsave64(struct bt_cpu *c, const struct bt_insn *i)
{
    xsave_common(c, i, XS_STD, true);
}
static void op_xsaveopt(struct bt_cpu *c, const struct bt_insn *i)
{
    xsave_common(c, i, XS_OPT, false);
}
static void op_xsaveopt64(struct bt_cpu *c, const struct bt_insn *i)
{
    xsave_common(c, i, XS_OPT, true);
}
static void op_xsavec(struct bt_cpu *c, const struct bt_insn *i)
{
    xsave_common(c, i, XS_C, false);
}
static void op_xsavec64(struct bt_cpu *c, const struct bt_insn *i)
{
    xsave_common(c, i, XS_C, true);
}
static void op_xsaves(struct bt_cpu *c, const struct bt_insn *i)
{
    xsave_common(c, i, XS_S, false);
}
static void op_xsaves64(struct bt_cpu *c, const struct bt_insn *i)
{
    xsave_common(c, i, XS_S, true);
}
BT_HANDLER(XSAVE, op_xsave);
BT_HANDLER(XSAVE64, op_xsave64);
BT_HANDLER(XSAVEOPT, op_xsaveopt);
BT_HANDLER(XSAVEOPT64, op_xsaveopt64);
BT_HANDLER(XSAVEC, op_xsavec);
BT_HANDLER(XSAVEC64, op_xsavec64);
BT_HANDLER(XSAVES, op_xsaves);
BT_HANDLER(XSAVES64, op_xsaves64);

static void xrstor_common(struct bt_cpu *c, const struct bt_insn *i, bool s_form, bool rex_w)
{
    xs_mem_checks(c, i, s_form ? D1_XSAVES : 0);
    if (s_form && c->cpl != 0) bt_gp0(c);
    uint64_t lin = bt_op_lin(c, i, 0, XS_EXT, BT_ACC_READ);
    if (lin & 63) bt_gp0(c);
    uint64_t allowed = c->s.xcr0 | (s_form ? c->s.xss : 0);
    uint8_t hdr[64];
    bt_read_buf(c, at(c, lin, XS_HDR), hdr, sizeof(hdr), BT_ACC_READ);
    uint64_t bv, xcomp;
    memcpy(&bv, hdr, 8);
    memcpy(&xcomp, hdr + 8, 8);
    bool compact = xcomp & XCOMP_COMPACT;
    if (compact) {
        if (!(c->xsave_d1_eax & (D1_XSAVEC | D1_XSAVES))) bt_gp0(c);
        if (xcomp & ~XCOMP_COMPACT & ~allowed) bt_gp0(c);
        if (bv & ~(xcomp & ~XCOMP_COMPACT)) bt_gp0(c);
        for (unsigned k = 16; k < 64; k++)
            if (hdr[k]) bt_gp0(c);
    } else {
        if (s_form) bt_gp0(c); /* XRSTORS needs the compacted format */
        if (bv & ~c->s.xcr0) bt_gp0(c);
        for (unsigned k = 8; k < 24; k++)
            if (hdr[k]) bt_gp0(c);
    }
    uint64_t rfbm = edx_eax(c) & allowed;
    unsigned size = area_size(rfbm, compact ? xcomp : 0);
    bt_op_lin(c, i, 0, size, BT_ACC_READ); /* segment limit over the whole area */
    if (xs_refuse(c, rfbm)) return;

    bool b64 = c->code_bits == 64;
    struct x86_fxsave m;
    bt_read_buf(c, lin, &m, sizeof(m), BT_ACC_READ);
    /* MXCSR: the standard form loads it whenever SSE or AVX is requested; the compacted form
     * only with SSE, from memory if XSTATE_BV[1] else its initial value */
    bool load_mxcsr = compact ? (rfbm & XF_SSE) : (rfbm & (XF_SSE | XF_AVX));
    uint32_t mxcsr = compact && !(bv & XF_SSE) ? 0x1f80 : m.mxcsr;
    if (load_mxcsr && (mxcsr & ~MXCSR_SUPPORTED)) bt_gp0(c);
    struct x86_state ns = c->s; /* built completely before it replaces the state */
    for (unsigned k = 0; k < ARRAY_SIZE(x86_xcomps); k++) {
        const struct x86_xcomp *x = &x86_xcomps[k];
        uint64_t bit = 1ull << x->bit;
        unsigned n = b64 ? x->size : x->size_legacy;
        if (!(rfbm & bit) || !n) continue;
        uint8_t *f = (uint8_t *)&ns + x->field;
        if (bv & bit)
            bt_read_buf(c, at(c, lin, comp_offset(x, compact ? xcomp : 0)), f, n, BT_ACC_READ);
        else
            memset(f, 0, n);
    }
    struct x86_fxsave *fx = &ns.fx;
    if (rfbm & XF_X87) {
        if (bv & XF_X87) {
            fx->fcw = fcw_normalize(m.fcw);
            fx->fsw = m.fsw;
            fx->ftw = m.ftw;
            fx->fop = m.fop & 0x7ff;
            if (rex_w) {
                fx->fip = canon_lin(m.fip);
                fx->fdp = m.fdp; /* kept whole (seen on the host) */
            } else {
                const uint8_t *p = (const uint8_t *)&m;
                uint32_t ip, dp;
                memcpy(&ip, p + 8, 4);
                memcpy(&dp, p + 16, 4);
                fx->fip = ip;
                fx->fdp = dp;
            }
            memcpy(fx->st, m.st, sizeof(fx->st));
        } else {
            fx->fcw = 0x37f, fx->fsw = 0, fx->ftw = 0, fx->fop = 0, fx->fip = 0, fx->fdp = 0;
            memset(fx->st, 0, sizeof(fx->st));
        }
    }
    if (rfbm & XF_SSE) {
        size_t n = b64 ? 256 : 128; /* XMM8-15 are untouched outside 64-bit mode */
        if (bv & XF_SSE)
            memcpy(fx->xmm, m.xmm, n);
        else
            memset(fx->xmm, 0, n);
    }
    if (load_mxcsr) fx->mxcsr = mxcsr;
    c->s = ns;
}

static void op_xrstor(struct bt_cpu *c, const struct bt_insn *i)
{
    xrstor_common(c, i, false, false);
}
static void op_xrstor64(struct bt_cpu *c, const struct bt_insn *i)
{
    xrstor_common(c, i, false, true);
}
static void op_xrstors(struct bt_cpu *c, const struct bt_insn *i)
{
    xrstor_common(c, i, true, false);
}
static void op_xrstors64(struct bt_cpu *c, const struct bt_insn *i)
{
    xrstor_common(c, i, true, true);
}
BT_HANDLER(XRSTOR, op_xrstor);
BT_HANDLER(XRSTOR64, op_xrstor64);
BT_HANDLER(XRSTORS, op_xrstors);
BT_HANDLER(XRSTORS64, op_xrstors64);

static void op_xgetbv(struct bt_cpu *c, const struct bt_insn *i)
{
    xs_enabled(c, i, 0);
    uint32_t n = (uint32_t)c->s.gpr[RCX];
    uint64_t v;
    if (n == 0)
        v = c->s.xcr0;
    else if (n == 1 && (c->xsave_d1_eax & D1_XGETBV1))
        /* XCR0 & XINUSE; components not carried are reported in use (allowed for any state) */
        v = c->s.xcr0 & (xinuse(c) | ~X86_XFEATURE_CARRIED);
    else
        bt_gp0(c);
    c->s.gpr[RAX] = (uint32_t)v;
    c->s.gpr[RDX] = v >> 32;
}
BT_HANDLER(XGETBV, op_xgetbv);

static void op_xsetbv(struct bt_cpu *c, const struct bt_insn *i)
{
    xs_enabled(c, i, 0);
    if (c->cpl != 0 || (uint32_t)c->s.gpr[RCX] != 0) bt_gp0(c);
    uint64_t v = edx_eax(c);
    if (!(v & XF_X87) || (v & ~c->xcr0_supported)) bt_gp0(c);
    if ((v & XF_AVX) && !(v & XF_SSE)) bt_gp0(c);
    uint64_t avx512 = v & X86_XFEATURE_AVX512;
    if (avx512 && (avx512 != X86_XFEATURE_AVX512 || !(v & XF_AVX))) bt_gp0(c);
    if (((v >> 3) & 1) != ((v >> 4) & 1)) bt_gp0(c);   /* MPX BNDREGS and BNDCSR together */
    if (((v >> 17) & 1) != ((v >> 18) & 1)) bt_gp0(c); /* AMX TILECFG and TILEDATA together */
    if (xs_refuse(c, v)) return;
    c->s.xcr0 = v;
}
BT_HANDLER(XSETBV, op_xsetbv);
