/* Unit tests of the software CPU's XSAVE feature set (src/cpu/bt/xsave.c), the KVM fallback's
 * path for guests that see the host's XSAVE (kvm_pvm).
 *
 * Differential: random x87/SSE/AVX/AVX-512 contents and XSTATE_BV values are loaded with XRSTOR
 * (standard and compacted) and saved with XSAVE, XSAVEOPT and XSAVEC, once by the software CPU
 * through the real decoder and once natively by this host, and the XSAVE areas must match byte
 * for byte.  XRSTOR's header checks are compared with the host's too (the host's #GP arrives here
 * as SIGSEGV).  XSAVES/XRSTORS (CPL 0 only, so not runnable here) are checked against the host's
 * XSAVEC image, which they equal when IA32_XSS is 0.  Then the SDM's faults: #UD without
 * CR4.OSXSAVE or without XSAVE in the guest's CPUID (the --cpu bt case), #NM, alignment #GP,
 * XSETBV's rules and CPL, and the stop on a component the neutral state does not carry.
 *
 * Trust: test code only. */
#include <cpuid.h>
#include <signal.h>

#include "bt_testenv.h"
#include "host_vendor.h"
#include "cpu/bt/fpu.h"

#define SRC  0x40000ull
#define DST  0x48000ull
#define AREA 4096

static uint64_t host_xcr0;   /* what the host OS enabled */
static uint64_t test_mask;   /* the carried components this host has: RFBM for every run */
static uint32_t host_d1_eax; /* CPUID.(0xD,1).EAX */

static bool host_probe(void)
{
    unsigned a, b, c, d;
    if (__get_cpuid_max(0, NULL) < 0xd) return false;
    __cpuid(1, a, b, c, d);
    if (!(c & (1u << 27))) return false; /* OSXSAVE */
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    host_xcr0 = (uint64_t)hi << 32 | lo;
    test_mask = host_xcr0 & X86_XFEATURE_CARRIED;
    __cpuid_count(0xd, 1, a, b, c, d);
    host_d1_eax = a;
    return true;
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void)
{
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return rng;
}
static void rnd_fill(uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)rnd();
}

/* A valid standard-format image with XSTATE_BV = bv: every component holds random data (also
 * those bv marks initial, which XRSTOR must then ignore). */
static void make_image(uint8_t *img, uint64_t bv)
{
    memset(img, 0, AREA);
    rnd_fill(img, 2688);
    struct x86_fxsave *fx = (struct x86_fxsave *)img;
    fx->fcw = (uint16_t)(0x037f ^ (rnd() & 0x0c00)); /* precision/rounding vary, all masked */
    fx->fsw &= 0x3f00;                               /* no pending exceptions */
    fx->fop &= 0x7ff;
    fx->mxcsr = 0x1f80 | (uint32_t)(rnd() & 0x7f); /* all masked, random flags/DAZ/FZ-free */
    fx->mxcsr_mask = 0;
    fx->rsvd1 = 0;
    for (int k = 0; k < 8; k++)
        memset(fx->st[k] + 10, 0, 6); /* reserved bytes of each ST slot read back as 0 */
    memset(img + 416, 0, 96);
    memset(img + 512, 0, 64);
    memcpy(img + 512, &bv, 8);
}

/* ---- the software CPU side ---------------------------------------------------------------- */

static struct tenv *setup(void)
{
    struct tenv *t = tenv_new(false);
    t_setup_long(t);
    struct bt_cpu *c = t->c;
    c->stop_after_event = true;
    bt_xsave_guest_view(c);
    c->xsave_d1_eax = host_d1_eax & 0xf; /* XSAVES included where the host has it */
    c->s.cr4 |= X86_CR4_OSXSAVE;
    c->s.xcr0 = test_mask;
    return t;
}

/* Executes one instruction at T_CODE0 with EDX:EAX = mask and RBX = addr; returns the vector it
 * raised (delivered to the HLT handlers) or -1. */
static int run1(struct tenv *t, const uint8_t *code, size_t n, uint64_t mask, uint64_t addr)
{
    struct bt_cpu *c = t->c;
    c->s.rip = T_CODE0;
    c->s.gpr[RAX] = (uint32_t)mask;
    c->s.gpr[RDX] = mask >> 32;
    c->s.gpr[RBX] = addr;
    put_bytes(t, T_CODE0, code, n);
    bt_cache_flush(c);
    c->halted = false;
    c->exit_now = false;
    bt_exec(c, 1);
    if (c->s.rip == T_CODE0 + n) return -1;
    uint64_t rip = c->s.rip;
    if (rip >= T_HAND && rip < T_HAND + 16 * 256 && (rip - T_HAND) % 16 == 0)
        return (int)((rip - T_HAND) / 16);
    return -2; /* stopped without executing (internal error) */
}

static const uint8_t XSAVE64[] = {0x48, 0x0f, 0xae, 0x23};
static const uint8_t XRSTOR64[] = {0x48, 0x0f, 0xae, 0x2b};
static const uint8_t XSAVEOPT64[] = {0x48, 0x0f, 0xae, 0x33};
static const uint8_t XSAVEC64[] = {0x48, 0x0f, 0xc7, 0x23};
static const uint8_t XSAVES64[] = {0x48, 0x0f, 0xc7, 0x2b};
static const uint8_t XRSTORS64[] = {0x48, 0x0f, 0xc7, 0x1b};
static const uint8_t XSAVE32[] = {0x0f, 0xae, 0x23}; /* without REX.W: 32-bit FIP/FDP form */
static const uint8_t XSAVEC32[] = {0x0f, 0xc7, 0x23};
static const uint8_t XGETBV[] = {0x0f, 0x01, 0xd0};
static const uint8_t XSETBV[] = {0x0f, 0x01, 0xd1};

/* ---- the host side ------------------------------------------------------------------------ */

enum save_op { OP_XSAVE, OP_XSAVEOPT, OP_XSAVEC, OP_XSAVE_NOREXW, OP_XSAVEC_NOREXW };

/* Host: XRSTOR64 src (rmask), then save into dst (smask), with the test's own x87/SSE/AVX state
 * saved around it. */
static void host_roundtrip(const uint8_t *src, uint64_t rmask, uint8_t *dst, uint64_t smask,
                           enum save_op op)
{
    static uint8_t keep[AREA] __attribute__((aligned(64)));
    uint32_t kl = (uint32_t)test_mask, kh = (uint32_t)(test_mask >> 32);
    uint32_t rl = (uint32_t)rmask, rh = (uint32_t)(rmask >> 32);
    uint32_t sl = (uint32_t)smask, sh = (uint32_t)(smask >> 32);
#define HOST_RT(SAVE)                                                                              \
    __asm__ volatile("mov %[kl], %%eax\n\tmov %[kh], %%edx\n\txsave64 (%[keep])\n\t"               \
                     "mov %[rl], %%eax\n\tmov %[rh], %%edx\n\txrstor64 (%[src])\n\t"               \
                     "mov %[sl], %%eax\n\tmov %[sh], %%edx\n\t" SAVE " (%[dst])\n\t"               \
                     "mov %[kl], %%eax\n\tmov %[kh], %%edx\n\txrstor64 (%[keep])"                  \
                     :                                                                             \
                     : [keep] "r"(keep), [src] "r"(src), [dst] "r"(dst), [kl] "r"(kl),             \
                       [kh] "r"(kh), [rl] "r"(rl), [rh] "r"(rh), [sl] "r"(sl), [sh] "r"(sh)        \
                     : "rax", "rdx", "memory")
    switch (op) {
    case OP_XSAVE: HOST_RT("xsave64"); break;
    case OP_XSAVEOPT: HOST_RT("xsaveopt64"); break;
    case OP_XSAVEC: HOST_RT("xsavec64"); break;
    case OP_XSAVE_NOREXW: HOST_RT("xsave"); break;
    case OP_XSAVEC_NOREXW: HOST_RT("xsavec"); break;
    }
#undef HOST_RT
}

static sigjmp_buf fault_jmp;
static void on_segv(int sig)
{
    (void)sig;
    siglongjmp(fault_jmp, 1);
}
/* Does the host's XRSTOR64 of src with rmask fault?  (The test's own state is kept.) */
static bool host_xrstor_faults(const uint8_t *src, uint64_t rmask)
{
    static uint8_t keep[AREA] __attribute__((aligned(64)));
    static uint8_t dst[AREA] __attribute__((aligned(64)));
    struct sigaction sa = {.sa_handler = on_segv}, old;
    sigaction(SIGSEGV, &sa, &old);
    uint32_t kl = (uint32_t)test_mask, kh = (uint32_t)(test_mask >> 32);
    __asm__ volatile("xsave64 (%0)" ::"r"(keep), "a"(kl), "d"(kh) : "memory");
    bool faulted = false;
    if (sigsetjmp(fault_jmp, 1) == 0) {
        host_roundtrip(src, rmask, dst, 0, OP_XSAVE);
    } else {
        faulted = true;
        __asm__ volatile("xrstor64 (%0)" ::"r"(keep), "a"(kl), "d"(kh) : "memory");
    }
    sigaction(SIGSEGV, &old, NULL);
    return faulted;
}

/* ---- differential ------------------------------------------------------------------------- */

static int first_diff(const uint8_t *a, const uint8_t *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (a[i] != b[i]) return (int)i;
    return -1;
}

static void prefill(uint8_t *p, enum save_op op)
{
    if (op == OP_XSAVEOPT) {
        /* XSAVEOPT may skip components in their initial configuration (the host does): start
         * from the initial image so writing and skipping give the same bytes */
        memset(p, 0, AREA);
        p[0] = 0x7f, p[1] = 0x03;
    } else {
        memset(p, 0x5a, AREA);
        memset(p + 512, 0, 64); /* a standard-format header the save merges into */
    }
}

static unsigned host_comp_size(unsigned bit)
{
    unsigned a, b, c, d;
    __cpuid_count(0xd, bit, a, b, c, d);
    return a;
}

/* Offset of component `bit` (>= 2) in the host's image of format `xcomp` (its XCOMP_BV: the
 * standard format unless bit 63 is set), from CPUID leaf 0xD as the SDM (Vol.1 13.4.3) says. */
static unsigned host_comp_off(unsigned bit, uint64_t xcomp)
{
    unsigned a, b, c, d;
    if (!(xcomp >> 63)) {
        __cpuid_count(0xd, bit, a, b, c, d);
        return b;
    }
    unsigned off = 576;
    for (unsigned j = 2; j <= bit; j++) {
        if (j < bit && !(xcomp & (1ull << j))) continue;
        __cpuid_count(0xd, j, a, b, c, d);
        if (c & 2) off = (off + 63) & ~63u;
        if (j < bit) off += a;
    }
    return off;
}

/* Every component of `which` (SSE and up) is in its initial configuration in a saved image as
 * XINUSE tracks it.  SSE: the XMM registers zero; the SDM (Vol.1 13.6) says XINUSE[1]
 * pertains to the XMM registers only, not to MXCSR, so MXCSR may hold anything (the standard
 * XRSTOR loads it from the image whenever RFBM[1] or RFBM[2] is set, even with XSTATE_BV[1] =
 * 0); the first eight registers are checked, the eight more of the 64-bit forms are compared
 * byte for byte afterwards.  AVX and AVX-512: all zero. */
static bool saved_initial(const uint8_t *img, uint64_t which, uint64_t xcomp)
{
    if (which & X86_XFEATURE_SSE)
        for (unsigned k = 160; k < 160 + 128; k++)
            if (img[k]) return false;
    for (unsigned bit = 2; bit < 64; bit++) {
        if (!(which & (1ull << bit))) continue;
        unsigned off = host_comp_off(bit, xcomp), n = host_comp_size(bit);
        if (!n || off + n > AREA) return false;
        for (unsigned k = off; k < off + n; k++)
            if (img[k]) return false;
    }
    return true;
}

static void one_case(struct tenv *t, const uint8_t *src, bool src_host_compacts, uint64_t bv,
                     uint64_t rmask, uint64_t smask, enum save_op op, int *bad)
{
    static uint8_t host_src[AREA] __attribute__((aligned(64)));
    static uint8_t soft_dst[AREA];
    static const uint8_t *const save_code[] = {XSAVE64, XSAVEOPT64, XSAVEC64, XSAVE32, XSAVEC32};
    static const size_t save_len[] = {4, 4, 4, 3, 3};
    memcpy(host_src, src, AREA);
    if (src_host_compacts) {
        /* turn the standard image into the host's compacted one: XRSTOR + XSAVEC natively */
        static uint8_t tmp[AREA] __attribute__((aligned(64)));
        static uint8_t std_img[AREA] __attribute__((aligned(64)));
        memcpy(std_img, src, AREA);
        /* With SSE initial but MXCSR not 1F80H, XSAVEC marks SSE in use (zero XMM data); after
         * restoring that, whether XSAVE reports XSTATE_BV[1] = 1 for the zero XMM registers is
         * up to the implementation (the host does, the software CPU does not: both allowed by
         * the SDM), so such images are not compared byte for byte. */
        if (!(bv & X86_XFEATURE_SSE)) ((struct x86_fxsave *)std_img)->mxcsr = 0x1f80;
        memset(tmp, 0, AREA);
        host_roundtrip(std_img, test_mask, tmp, test_mask, OP_XSAVEC);
        memcpy(host_src, tmp, AREA);
    }

    struct bt_cpu *c = t->c;
    /* a known software state before the restore: what rmask leaves alone must survive */
    t_setup_long(t);
    c->s.cr4 |= X86_CR4_OSXSAVE;
    c->s.xcr0 = test_mask;
    static uint8_t init_img[AREA] __attribute__((aligned(64)));
    make_image(init_img, test_mask);
    memcpy(gp(t, SRC, AREA), init_img, AREA);
    assert_int_equal(run1(t, XRSTOR64, 4, test_mask, SRC), -1);
    /* the host's state before its restore was the test's own: mirror that into the untouched
     * components by restoring the same image first on the host too */
    static uint8_t pre[AREA] __attribute__((aligned(64)));
    static uint8_t host_dst2[AREA] __attribute__((aligned(64)));
    memcpy(pre, init_img, AREA);
    {
        /* host: init_img (all) -> host_src (rmask) -> save */
        static uint8_t keep[AREA] __attribute__((aligned(64)));
        uint32_t kl = (uint32_t)test_mask, kh = (uint32_t)(test_mask >> 32);
        uint32_t rl = (uint32_t)rmask, rh = (uint32_t)(rmask >> 32);
        uint32_t sl = (uint32_t)smask, sh = (uint32_t)(smask >> 32);
        prefill(host_dst2, op);
#define HOST_RT2(SAVE)                                                                             \
    __asm__ volatile(                                                                              \
        "mov %[kl], %%eax\n\tmov %[kh], %%edx\n\txsave64 (%[keep])\n\t"                            \
        "xrstor64 (%[pre])\n\t"                                                                    \
        "mov %[rl], %%eax\n\tmov %[rh], %%edx\n\txrstor64 (%[src])\n\t"                            \
        "mov %[sl], %%eax\n\tmov %[sh], %%edx\n\t" SAVE " (%[dst])\n\t"                            \
        "mov %[kl], %%eax\n\tmov %[kh], %%edx\n\txrstor64 (%[keep])"                               \
        :                                                                                          \
        : [keep] "r"(keep), [pre] "r"(pre), [src] "r"(host_src), [dst] "r"(host_dst2),             \
          [kl] "r"(kl), [kh] "r"(kh), [rl] "r"(rl), [rh] "r"(rh), [sl] "r"(sl), [sh] "r"(sh)       \
        : "rax", "rdx", "memory")
        switch (op) {
        case OP_XSAVE: HOST_RT2("xsave64"); break;
        case OP_XSAVEOPT: HOST_RT2("xsaveopt64"); break;
        case OP_XSAVEC: HOST_RT2("xsavec64"); break;
        case OP_XSAVE_NOREXW: HOST_RT2("xsave"); break;
        case OP_XSAVEC_NOREXW: HOST_RT2("xsavec"); break;
        }
#undef HOST_RT2
    }
    memcpy(gp(t, SRC, AREA), host_src, AREA);
    int v = run1(t, XRSTOR64, 4, rmask, SRC);
    if (v != -1) {
        print_message("xrstor (bv %#llx rmask %#llx compacted %d): vector %d\n",
                      (unsigned long long)bv, (unsigned long long)rmask, src_host_compacts, v);
        (*bad)++;
        return;
    }
    prefill(soft_dst, op);
    memcpy(gp(t, DST, AREA), soft_dst, AREA);
    v = run1(t, save_code[op], save_len[op], smask, DST);
    if (v != -1) {
        print_message("save op %d: vector %d\n", op, v);
        (*bad)++;
        return;
    }
    memcpy(soft_dst, gp(t, DST, AREA), AREA);
    fx_vendor_align(soft_dst, host_dst2);
    int d = first_diff(soft_dst, host_dst2, AREA);
    uint64_t hbv, sbv, xcomp;
    memcpy(&hbv, host_dst2 + 512, 8);
    memcpy(&sbv, soft_dst + 512, 8);
    memcpy(&xcomp, host_dst2 + 520, 8);
    uint64_t extra = hbv & ~sbv;
    if (d >= 0 && extra && !(sbv & ~hbv) && !(extra & X86_XFEATURE_X87) &&
        saved_initial(host_dst2, extra, xcomp)) {
        /* The host reports a component in use (XINUSE[i] = 1) where the software CPU reports its
         * initial configuration, and what the host saved for it is that initial configuration:
         * allowed by the SDM (XINUSE[i] may be 1 for a component in its initial state), and
         * whether the host does so depends on its own history, not on the case.  Seen in CI for
         * SSE after restoring it from a compacted image without it, once with XSAVE (only
         * XSTATE_BV differed) and once with XSAVEC (which then also writes MXCSR and the XMM
         * registers), and with the 32-bit XSAVE after a standard XRSTOR that loaded an MXCSR
         * other than 1F80H; on an AMD host for AVX with the 32-bit XSAVEC.  Not a mismatch: the
         * software CPU's image takes the host's bytes and bits for those components, and the
         * rest must still be equal. */
        if (extra & X86_XFEATURE_SSE) {
            memcpy(soft_dst + 24, host_dst2 + 24, 8);
            memcpy(soft_dst + 160, host_dst2 + 160, 256);
        }
        for (unsigned bit = 2; bit < 64; bit++) {
            if (!(extra & (1ull << bit))) continue;
            unsigned off = host_comp_off(bit, xcomp), n = host_comp_size(bit);
            memcpy(soft_dst + off, host_dst2 + off, n);
        }
        sbv |= extra;
        memcpy(soft_dst + 512, &sbv, 8);
        d = first_diff(soft_dst, host_dst2, AREA);
    }
    if (d >= 0) {
        print_message("op %d bv %#llx rmask %#llx smask %#llx compacted-src %d: byte %d differs "
                      "(soft %02x host %02x)\n",
                      op, (unsigned long long)bv, (unsigned long long)rmask,
                      (unsigned long long)smask, src_host_compacts, d, soft_dst[d], host_dst2[d]);
        (*bad)++;
    }
}

static void test_differential(void **state)
{
    if (!host_probe()) skip();
    struct tenv *t = setup();
    static uint8_t src[AREA] __attribute__((aligned(64)));
    const uint64_t m = test_mask;
    const uint64_t masks[] = {
        m, m & 7, m & 3, m & 1, m & 2, m & 4, m & ~2ull, m & ~4ull, m & (X86_XFEATURE_AVX512 | 1)};
    int bad = 0, cases = 0;
    for (int round = 0; round < 6; round++) {
        for (unsigned bi = 0; bi < ARRAY_SIZE(masks); bi++) {
            uint64_t bv = masks[bi];
            make_image(src, bv);
            for (unsigned ri = 0; ri < ARRAY_SIZE(masks); ri += 1 + round % 3) {
                for (int op = OP_XSAVE; op <= OP_XSAVEC_NOREXW; op++) {
                    if (op == OP_XSAVEOPT && !(host_d1_eax & 1)) continue;
                    if ((op == OP_XSAVEC || op == OP_XSAVEC_NOREXW) && !(host_d1_eax & 2)) continue;
                    uint64_t smask = masks[(bi + ri + (unsigned)op) % ARRAY_SIZE(masks)];
                    one_case(t, src, false, bv, masks[ri], smask, (enum save_op)op, &bad);
                    if (host_d1_eax & 2)
                        one_case(t, src, true, bv, masks[ri], smask, (enum save_op)op, &bad);
                    cases += (host_d1_eax & 2) ? 2 : 1;
                }
            }
        }
    }
    print_message("xsave differential: %d cases, %d mismatches\n", cases, bad);
    assert_int_equal(bad, 0);
    tenv_free(t);
}

/* XRSTOR's header checks against the host's: the same mutation must fault on both or neither. */
static void test_header_checks_vs_host(void **state)
{
    if (!host_probe()) skip();
    struct tenv *t = setup();
    static uint8_t img[AREA] __attribute__((aligned(64)));
    int bad = 0;
    for (int form = 0; form < 2; form++) {
        if (form == 1 && !(host_d1_eax & 2)) continue;
        for (unsigned byte = 0; byte < 64; byte++) {
            for (unsigned bit = 0; bit < 8; bit += 3) {
                make_image(img, test_mask);
                if (form == 1) {
                    static uint8_t tmp[AREA] __attribute__((aligned(64)));
                    memset(tmp, 0, AREA);
                    host_roundtrip(img, test_mask, tmp, test_mask, OP_XSAVEC);
                    memcpy(img, tmp, AREA);
                }
                img[512 + byte] ^= (uint8_t)(1u << bit);
                bool host = host_xrstor_faults(img, test_mask);
                t_setup_long(t);
                t->c->s.cr4 |= X86_CR4_OSXSAVE;
                t->c->s.xcr0 = test_mask;
                memcpy(gp(t, SRC, AREA), img, AREA);
                int v = run1(t, XRSTOR64, 4, test_mask, SRC);
                bool soft = v == X86_GP;
                if (v != -1 && v != X86_GP) soft = true, bad += 1000;
                /* header bits naming components this host lacks but the software CPU's XCR0
                 * (the same test_mask) also lacks: both must fault */
                if (host != soft) {
                    print_message("form %d header byte %u bit %u: host %s, software CPU %s\n", form,
                                  byte, bit, host ? "#GP" : "ok", soft ? "#GP" : "ok");
                    bad++;
                }
            }
        }
    }
    assert_int_equal(bad, 0);
    tenv_free(t);
}

/* XSAVES/XRSTORS with IA32_XSS = 0 write and read what XSAVEC does; CPL 3 and the standard form
 * are #GP. */
static void test_xsaves(void **state)
{
    if (!host_probe()) skip();
    if (!(host_d1_eax & 8)) skip();
    struct tenv *t = setup();
    struct bt_cpu *c = t->c;
    static uint8_t img[AREA] __attribute__((aligned(64)));
    static uint8_t host_c[AREA] __attribute__((aligned(64)));
    make_image(img, test_mask & ~2ull); /* SSE initial */
    memset(host_c, 0x5a, AREA);
    host_roundtrip(img, test_mask, host_c, test_mask, OP_XSAVEC);
    memcpy(gp(t, SRC, AREA), img, AREA);
    assert_int_equal(run1(t, XRSTOR64, 4, test_mask, SRC), -1);
    memset(gp(t, DST, AREA), 0x5a, AREA);
    assert_int_equal(run1(t, XSAVES64, 4, ~0ull, DST), -1);
    static uint8_t soft_c[AREA];
    memcpy(soft_c, gp(t, DST, AREA), AREA);
    fx_vendor_align(soft_c, host_c);
    assert_int_equal(first_diff(soft_c, host_c, AREA), -1);
    /* XRSTORS of that image after clobbering: the same state comes back.  (XSAVES, like the
     * host's XSAVEC, left header bytes 16-63 alone: they must be zero for the restore.) */
    memset(gp(t, DST + 528, 48), 0, 48);
    struct x86_state before = c->s;
    memset(c->s.fx.xmm, 0x11, sizeof(c->s.fx.xmm));
    memset(c->s.ymmh, 0x22, sizeof(c->s.ymmh));
    assert_int_equal(run1(t, XRSTORS64, 4, ~0ull, DST), -1);
    assert_memory_equal(c->s.fx.xmm, before.fx.xmm, sizeof(before.fx.xmm));
    assert_memory_equal(c->s.ymmh, before.ymmh, sizeof(before.ymmh));
    /* XRSTORS needs the compacted format */
    memcpy(gp(t, SRC, AREA), img, AREA);
    assert_int_equal(run1(t, XRSTORS64, 4, ~0ull, SRC), X86_GP);
    /* CPL 3: #GP */
    t_to_ring3(t, T_CODE3);
    uint64_t ua = 0x240000;
    c->s.rip = T_CODE3;
    put_bytes(t, T_CODE3, XSAVES64, 4);
    c->s.gpr[RAX] = 7, c->s.gpr[RDX] = 0, c->s.gpr[RBX] = ua;
    bt_cache_flush(c);
    c->halted = false;
    c->exit_now = false;
    bt_exec(c, 1);
    assert_int_equal(c->s.rip, T_HAND + 16 * X86_GP);
    tenv_free(t);
}

static void test_faults(void **state)
{
    if (!host_probe()) skip();
    struct tenv *t = setup();
    struct bt_cpu *c = t->c;
    memset(gp(t, SRC, AREA), 0, AREA);
    /* alignment: 64 bytes for every form */
    assert_int_equal(run1(t, XSAVE64, 4, 3, SRC + 16), X86_GP);
    assert_int_equal(run1(t, XRSTOR64, 4, 3, SRC + 32), X86_GP);
    assert_int_equal(run1(t, XSAVEC64, 4, 3, SRC + 8), host_d1_eax & 2 ? X86_GP : X86_UD);
    assert_int_equal(run1(t, XSAVE64, 4, 3, SRC), -1);
    /* reserved header bits: standard form bytes 8-23, XSTATE_BV beyond XCR0 */
    put64(t, SRC + 512 + 16, 1);
    assert_int_equal(run1(t, XRSTOR64, 4, 3, SRC), X86_GP);
    put64(t, SRC + 512 + 16, 0);
    put64(t, SRC + 512, test_mask | (1ull << 9));
    assert_int_equal(run1(t, XRSTOR64, 4, 3, SRC), X86_GP);
    put64(t, SRC + 512, 3);
    /* compacted: XCOMP_BV beyond XCR0, XSTATE_BV beyond XCOMP_BV, bytes 16-63 */
    if (host_d1_eax & 2) {
        put64(t, SRC + 520, (1ull << 63) | test_mask | (1ull << 9));
        assert_int_equal(run1(t, XRSTOR64, 4, 3, SRC), X86_GP);
        put64(t, SRC + 520, (1ull << 63) | 1);
        assert_int_equal(run1(t, XRSTOR64, 4, 3, SRC), X86_GP);
        put64(t, SRC + 520, (1ull << 63) | 3);
        put64(t, SRC + 512 + 40, 1ull << 60);
        assert_int_equal(run1(t, XRSTOR64, 4, 3, SRC), X86_GP);
        put64(t, SRC + 512 + 40, 0);
        assert_int_equal(run1(t, XRSTOR64, 4, 3, SRC), -1);
        put64(t, SRC + 520, 0);
    }
    /* MXCSR reserved bits */
    put32(t, SRC + 24, 0x10000);
    assert_int_equal(run1(t, XRSTOR64, 4, 3, SRC), X86_GP);
    assert_int_equal(run1(t, XRSTOR64, 4, 1, SRC), -1); /* x87 only: MXCSR not loaded */
    put32(t, SRC + 24, 0x1f80);
    /* CR0.TS: #NM;  LOCK: #UD */
    c->s.cr0 |= X86_CR0_TS;
    assert_int_equal(run1(t, XSAVE64, 4, 3, SRC), X86_NM);
    c->s.cr0 &= ~X86_CR0_TS;
    assert_int_equal(run1(t, (const uint8_t[]){0xf0, 0x48, 0x0f, 0xae, 0x23}, 5, 3, SRC), X86_UD);
    /* 32-bit form (no REX.W) is fine too */
    assert_int_equal(run1(t, XSAVE32, 3, 3, SRC), -1);
    /* CR4.OSXSAVE clear: #UD for all of them */
    c->s.cr4 &= ~X86_CR4_OSXSAVE;
    assert_int_equal(run1(t, XSAVE64, 4, 3, SRC), X86_UD);
    assert_int_equal(run1(t, XRSTOR64, 4, 3, SRC), X86_UD);
    assert_int_equal(run1(t, XGETBV, 3, 0, 0), X86_UD);
    assert_int_equal(run1(t, XSETBV, 3, 3, 0), X86_UD);
    /* the software CPU's own model (--cpu bt): no XSAVE in CPUID, so #UD, and MOV CR4 refuses
     * OSXSAVE */
    c->s.cr4 |= X86_CR4_OSXSAVE;
    c->xsave_visible = false;
    c->xsave_d1_eax = 0;
    assert_int_equal(run1(t, XSAVE64, 4, 3, SRC), X86_UD);
    assert_int_equal(run1(t, XSAVEC64, 4, 3, SRC), X86_UD);
    assert_int_equal(run1(t, XGETBV, 3, 0, 0), X86_UD);
    c->s.cr4 &= ~X86_CR4_OSXSAVE;
    c->s.gpr[RAX] = c->s.cr4 | X86_CR4_OSXSAVE;
    assert_int_equal(run1(t, (const uint8_t[]){0x0f, 0x22, 0xe0}, 3, c->s.cr4 | X86_CR4_OSXSAVE, 0),
                     X86_GP); /* mov cr4, rax */
    bt_xsave_guest_view(c);
    assert_int_equal(run1(t, (const uint8_t[]){0x0f, 0x22, 0xe0}, 3, c->s.cr4 | X86_CR4_OSXSAVE, 0),
                     -1);
    assert_true(c->s.cr4 & X86_CR4_OSXSAVE);
    tenv_free(t);
}

static void test_xgetbv_xsetbv(void **state)
{
    if (!host_probe()) skip();
    struct tenv *t = setup();
    struct bt_cpu *c = t->c;
    c->s.xcr0 = 3;
    c->s.gpr[RCX] = 0;
    assert_int_equal(run1(t, XGETBV, 3, 0, 0), -1);
    assert_int_equal(c->s.gpr[RAX], 3);
    assert_int_equal(c->s.gpr[RDX], 0);
    /* XGETBV(1) = XCR0 & XINUSE where the guest sees XGETBV1 */
    memset(c->s.fx.xmm, 0, sizeof(c->s.fx.xmm));
    c->s.fx.fcw = 0x37f;
    c->s.gpr[RCX] = 1;
    if (c->xsave_d1_eax & 4) {
        assert_int_equal(run1(t, XGETBV, 3, 0, 0), -1);
        assert_int_equal(c->s.gpr[RAX], 0);
        c->s.fx.xmm[3][1] = 1;
        c->s.gpr[RCX] = 1;
        assert_int_equal(run1(t, XGETBV, 3, 0, 0), -1);
        assert_int_equal(c->s.gpr[RAX], 2);
    }
    c->s.gpr[RCX] = 2;
    assert_int_equal(run1(t, XGETBV, 3, 0, 0), X86_GP);
    /* XSETBV: invalid combinations */
    c->s.gpr[RCX] = 0;
    const uint64_t bad[] = {0, 2, 5, 4, 0x23, 0x43, 0x87, 0xe3, 1ull << 40, 0x9};
    for (unsigned k = 0; k < ARRAY_SIZE(bad); k++) {
        c->s.gpr[RCX] = 0;
        assert_int_equal(run1(t, XSETBV, 3, bad[k], 0), X86_GP);
        assert_int_equal(c->s.xcr0, 3);
    }
    c->s.gpr[RCX] = 1;
    assert_int_equal(run1(t, XSETBV, 3, 3, 0), X86_GP); /* only XCR0 is writable */
    c->s.gpr[RCX] = 0;
    assert_int_equal(run1(t, XSETBV, 3, test_mask, 0), -1);
    assert_int_equal(c->s.xcr0, test_mask);
    /* a component the host has but the neutral state does not carry: a clear stop */
    uint64_t extra = c->xcr0_supported & ~X86_XFEATURE_CARRIED & ~((1ull << 3) | (1ull << 4));
    if (extra) {
        uint64_t v = test_mask | (extra & -extra);
        c->s.gpr[RCX] = 0;
        assert_int_equal(run1(t, XSETBV, 3, v, 0), -2);
        assert_int_equal(c->s.rip, T_CODE0);
        assert_int_equal(c->s.xcr0, test_mask);
    }
    /* CPL 3: #GP */
    t_to_ring3(t, T_CODE3);
    put_bytes(t, T_CODE3, XSETBV, 3);
    c->s.gpr[RAX] = 3, c->s.gpr[RDX] = 0, c->s.gpr[RCX] = 0;
    bt_cache_flush(c);
    c->halted = false;
    c->exit_now = false;
    bt_exec(c, 1);
    assert_int_equal(c->s.rip, T_HAND + 16 * X86_GP);
    tenv_free(t);
}

/* XCR0 naming a component the neutral state does not carry (PKRU, set behind the CPU's back as
 * KVM may have): XSAVE/XRSTOR stop with an internal error and change nothing. */
static void test_uncarried_component_stops(void **state)
{
    if (!host_probe()) skip();
    struct tenv *t = setup();
    struct bt_cpu *c = t->c;
    struct vcpu_exit exit = {.reason = VCPU_EXIT_NONE};
    c->exit = &exit;
    c->s.xcr0 = 3 | (1ull << 9);
    memset(gp(t, SRC, AREA), 0xee, AREA);
    assert_int_equal(run1(t, XSAVE64, 4, ~0ull, SRC), -2);
    assert_int_equal(exit.reason, VCPU_EXIT_INTERNAL);
    assert_int_equal(c->s.rip, T_CODE0);
    assert_int_equal(*(uint8_t *)gp(t, SRC + 100, 1), 0xee);
    /* the same with an RFBM that leaves it out is fine */
    exit.reason = VCPU_EXIT_NONE;
    assert_int_equal(run1(t, XSAVE64, 4, 3, SRC), -1);
    assert_int_equal(exit.reason, VCPU_EXIT_NONE);
    c->exit = NULL;
    tenv_free(t);
}

/* Through bt_emulate_one (the KVM fallback entry): AVX upper halves survive an XSAVE/XRSTOR
 * round trip on the neutral state. */
static void test_emulate_one_avx(void **state)
{
    if (!host_probe() || !(test_mask & 4)) skip();
    struct tenv *t = tenv_new(false);
    t_setup_long(t);
    struct vcpu cpu = {.vm = &t->vm, .id = 0};
    t->vm.vcpu[0] = &cpu;
    struct x86_state s = t->c->s;
    s.cr4 |= X86_CR4_OSXSAVE;
    s.xcr0 = 7;
    s.rip = T_CODE0;
    s.gpr[RAX] = 7, s.gpr[RDX] = 0, s.gpr[RBX] = SRC;
    memset(s.ymmh[9], 0xc3, 16);
    put_bytes(t, T_CODE0, XSAVE64, 4);
    assert_int_equal(bt_emulate_one(&t->vm, 0, &s), 0);
    assert_int_equal(get64(t, SRC + 512), 4); /* x87 and SSE initial, AVX in use */
    assert_int_equal(*(uint8_t *)gp(t, SRC + 576 + 9 * 16, 1), 0xc3);
    memset(s.ymmh, 0, sizeof(s.ymmh));
    s.rip = T_CODE0;
    put_bytes(t, T_CODE0, XRSTOR64, 4);
    assert_int_equal(bt_emulate_one(&t->vm, 0, &s), 0);
    assert_int_equal(s.rip, T_CODE0 + 4);
    assert_int_equal(s.ymmh[9][15], 0xc3);
    tenv_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_differential),    cmocka_unit_test(test_header_checks_vs_host),
        cmocka_unit_test(test_xsaves),          cmocka_unit_test(test_faults),
        cmocka_unit_test(test_xgetbv_xsetbv),   cmocka_unit_test(test_uncarried_component_stops),
        cmocka_unit_test(test_emulate_one_avx),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
