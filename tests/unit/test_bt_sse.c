/* Unit tests of the software CPU's MMX/SSE/SSE2 (src/cpu/bt/sse.c): every instruction class runs
 * through the real decoder and dispatch on random operands and is compared with the same bytes
 * executed natively (registers, MXCSR, x87 state for MMX, memory, flags); then the checks the SDM
 * specifies: #UD outside the CPU model, #NM, #UD with CR0.EM / CR4.OSFXSR clear, alignment #GP,
 * unmasked SIMD exceptions (#XM or #UD), LDMXCSR/FXRSTOR reserved bits. */
#include "bt_fp_cases.h"
#include "bt_fp_harness.h"
#include "host_vendor.h"

static void test_sse_differential(void **state)
{
    int bad = h_diff_cases(sse_cases, ARRAY_SIZE(sse_cases), 200);
    assert_int_equal(bad, 0);
}

static void fresh(void)
{
    h_long_mode(h_c);
    bt_fpu_reset(h_c);
    h_c->s.gpr[RBX] = H_DATA_GPA;
}

/* SSE3 and later encodings, including those sharing opcodes with SSE2, raise #UD. */
static void test_outside_model_ud(void **state)
{
    static const char *const ud[] = {
        "660f3800c1",   /* pshufb xmm0, xmm1 (SSSE3) */
        "0f3800c1",     /* pshufb mm0, mm1 (SSSE3) */
        "f20f7cc1",     /* haddps (SSE3) */
        "660f3a0fc108", /* palignr (SSSE3) */
        "f20ff003",     /* lddqu xmm0, [rbx] (SSE3) */
        "f30f16c1",     /* movshdup (SSE3) */
        "f20f12c1",     /* movddup (SSE3) */
        "660fd0c1",     /* addsubpd (SSE3) */
        "660f3a150302", /* pextrw [rbx], xmm0, 2 (SSE4.1 form) */
        "660f3840c1",   /* pmulld (SSE4.1) */
        "660f3817c1",   /* ptest (SSE4.1) */
        "660f3a0bc100", /* roundsd (SSE4.1) */
        "c5f858c1",     /* vaddps (AVX) */
        "0f01d0",       /* xgetbv (XSAVE) */
        "0fae23",       /* xsave [rbx] (XSAVE) */
        "df0b",         /* fisttp word [rbx] (SSE3) */
    };
    for (size_t k = 0; k < ARRAY_SIZE(ud); k++) {
        fresh();
        int v = h_run(h_c, ud[k]);
        if (v != X86_UD) print_message("%s: vector %d\n", ud[k], v);
        assert_int_equal(v, X86_UD);
    }
}

static void test_nm_ud_checks(void **state)
{
    fresh();
    h_c->s.cr0 |= X86_CR0_TS;
    assert_int_equal(h_run(h_c, "0f58ca"), X86_NM); /* addps */
    assert_int_equal(h_run(h_c, "0ffcca"), X86_NM); /* paddb mm */
    assert_int_equal(h_run(h_c, "0fae03"), X86_NM); /* fxsave */
    assert_int_equal(h_run(h_c, "0fae13"), X86_NM); /* ldmxcsr */
    h_c->s.cr0 &= ~X86_CR0_TS;
    h_c->s.cr0 |= X86_CR0_EM;
    assert_int_equal(h_run(h_c, "0f58ca"), X86_UD); /* SSE with EM: #UD */
    assert_int_equal(h_run(h_c, "0ffcca"), X86_UD); /* MMX with EM: #UD */
    assert_int_equal(h_run(h_c, "0fae03"), X86_NM); /* fxsave with EM: #NM */
    h_c->s.cr0 &= ~X86_CR0_EM;
    h_c->s.cr4 &= ~X86_CR4_OSFXSR;
    assert_int_equal(h_run(h_c, "0f58ca"), X86_UD);   /* SSE without OSFXSR */
    assert_int_equal(h_run(h_c, "660fefca"), X86_UD); /* pxor xmm */
    assert_int_equal(h_run(h_c, "0fefca"), -1);       /* pxor mm: MMX does not need OSFXSR */
    h_c->s.cr4 |= X86_CR4_OSFXSR;
    assert_int_equal(h_run(h_c, "f00f58ca"), X86_UD); /* LOCK addps */
}

static void test_alignment(void **state)
{
    fresh();
    h_c->s.gpr[RBX] = H_DATA_GPA + 8;
    assert_int_equal(h_run(h_c, "0f280b"), X86_GP);   /* movaps xmm1, [rbx+8] */
    assert_int_equal(h_run(h_c, "0f2913"), X86_GP);   /* movaps [rbx], xmm2 */
    assert_int_equal(h_run(h_c, "0f580b"), X86_GP);   /* addps xmm1, [rbx] */
    assert_int_equal(h_run(h_c, "660fef0b"), X86_GP); /* pxor xmm1, [rbx] */
    assert_int_equal(h_run(h_c, "0f2b13"), X86_GP);   /* movntps */
    assert_int_equal(h_run(h_c, "0fae03"), X86_GP);   /* fxsave */
    assert_int_equal(h_run(h_c, "480fae0b"), X86_GP); /* fxrstor64 */
    assert_int_equal(h_run(h_c, "0f100b"), -1);       /* movups: fine */
    assert_int_equal(h_run(h_c, "f30f580b"), -1);     /* addss m32: fine */
    assert_int_equal(h_run(h_c, "660fd60b"), -1);     /* movq [rbx], xmm1: fine */
    assert_int_equal(h_run(h_c, "0ffc0b"), -1);       /* paddb mm1, [rbx]: fine */
    h_c->s.gpr[RBX] = 0x8000000000000000ull;          /* non-canonical */
    assert_int_equal(h_run(h_c, "0f100b"), X86_GP);
    h_c->s.gpr[RBX] = 64ull << 20; /* beyond RAM / unmapped */
    assert_int_equal(h_run(h_c, "0f100b"), X86_PF);
}

/* Unmasked exceptions: flags set, destination untouched, #XM (or #UD without OSXMMEXCPT). */
static void test_unmasked_xm(void **state)
{
    fresh();
    float one[4] = {1, 1, 1, 1}, zero[4] = {0, 2, 2, 2};
    memcpy(h_c->s.fx.xmm[1], one, 16);
    memcpy(h_c->s.fx.xmm[2], zero, 16);
    h_c->s.fx.mxcsr = 0x1f80 & ~0x200u;             /* ZM clear */
    assert_int_equal(h_run(h_c, "0f5eca"), X86_XM); /* divps xmm1, xmm2 */
    assert_memory_equal(h_c->s.fx.xmm[1], one, 16);
    assert_int_equal(h_c->s.fx.mxcsr & 0x3f, 0x4); /* ZE only (PE not reported with it) */
    h_c->s.cr4 &= ~X86_CR4_OSXMMEXCPT;
    assert_int_equal(h_run(h_c, "0f5eca"), X86_UD);
    h_c->s.cr4 |= X86_CR4_OSXMMEXCPT;
    /* masked: result written, flag set */
    h_c->s.fx.mxcsr = 0x1f80;
    assert_int_equal(h_run(h_c, "0f5eca"), -1);
    assert_int_equal(h_c->s.fx.mxcsr & 0x3f, 0x4);
    uint32_t r0;
    memcpy(&r0, h_c->s.fx.xmm[1], 4);
    assert_int_equal(r0, 0x7f800000); /* +inf */
    /* precision exception unmasked: 1/3 */
    float three[4] = {3, 3, 3, 3};
    memcpy(h_c->s.fx.xmm[1], one, 16);
    memcpy(h_c->s.fx.xmm[2], three, 16);
    h_c->s.fx.mxcsr = 0x1f80 & ~0x1000u; /* PM clear */
    assert_int_equal(h_run(h_c, "0f5eca"), X86_XM);
    assert_int_equal(h_c->s.fx.mxcsr & 0x3f, 0x20);
    /* the x87-side for CVTPS2PI: still an SSE instruction */
    h_c->s.fx.mxcsr = 0x1f80;
}

static void test_mxcsr(void **state)
{
    fresh();
    uint32_t v = 0x1f80 | 0x6000 | 0x40;
    guest_write(&h_vm.mem, H_DATA_GPA, &v, 4);
    assert_int_equal(h_run(h_c, "0fae13"), -1); /* ldmxcsr [rbx] */
    assert_int_equal(h_c->s.fx.mxcsr, v);
    assert_int_equal(h_run(h_c, "0fae5b04"), -1); /* stmxcsr [rbx+4] */
    uint32_t w = 0;
    guest_read(&h_vm.mem, H_DATA_GPA + 4, &w, 4);
    assert_int_equal(w, v);
    v = 0x10000 | 0x1f80;
    guest_write(&h_vm.mem, H_DATA_GPA, &v, 4);
    assert_int_equal(h_run(h_c, "0fae13"), X86_GP); /* reserved bit */
    assert_int_equal(h_c->s.fx.mxcsr, 0x1f80 | 0x6000 | 0x40);
}

/* FXSAVE64 writes what the host's FXSAVE64 writes for the same state; FXRSTOR64 round-trips;
 * the 32-bit forms and a reserved MXCSR bit in the image. */
static void test_fxsave_fxrstor(void **state)
{
    for (int it = 0; it < 50; it++) {
        fresh();
        struct x86_fxsave fx, nat __attribute__((aligned(16))), host __attribute__((aligned(16)));
        h_rand_fx(&fx);
        h_c->s.fx = fx;
        assert_int_equal(h_run(h_c, "480fae03"), -1); /* fxsave64 [rbx] */
        uint8_t img[512];
        guest_read(&h_vm.mem, H_DATA_GPA, img, 512);
        __asm__ volatile("fxsave64 %0\n\tfxrstor64 %2\n\tfxsave64 %1\n\tfxrstor64 %0"
                         : "+m"(host), "=m"(nat)
                         : "m"(fx));
        const uint8_t *n8 = (const uint8_t *)&nat;
        fx_vendor_align(img, n8);
        assert_memory_equal(img, n8, 6);                  /* FCW FSW FTW */
        assert_memory_equal(img + 24, n8 + 24, 416 - 24); /* MXCSR, mask, registers */

        struct x86_fxsave scrambled;
        h_rand_fx(&scrambled);
        h_c->s.fx = scrambled;
        assert_int_equal(h_run(h_c, "480fae0b"), -1); /* fxrstor64 [rbx] */
        char why[96];
        if (h_fx_diff(&h_c->s.fx, &fx, why, sizeof(why), true, true))
            fail_msg("fxrstor64 round trip: %s", why);
        assert_int_equal(h_c->s.fx.fop, fx.fop & 0x7ff);
    }
    /* 32-bit form: FIP/FDP as 32-bit offsets */
    fresh();
    h_c->s.fx.fip = 0x123456789aull;
    h_c->s.fx.fdp = 0xabcdef0123ull;
    assert_int_equal(h_run(h_c, "0fae03"), -1);
    uint32_t ip, dp;
    guest_read(&h_vm.mem, H_DATA_GPA + 8, &ip, 4);
    guest_read(&h_vm.mem, H_DATA_GPA + 16, &dp, 4);
    assert_int_equal(ip, 0x3456789a);
    assert_int_equal(dp, 0xcdef0123);
    /* reserved MXCSR bit in the image -> #GP, nothing loaded */
    uint32_t bad = 0x41f80;
    guest_write(&h_vm.mem, H_DATA_GPA + 24, &bad, 4);
    h_c->s.fx.fcw = 0x1234;
    assert_int_equal(h_run(h_c, "480fae0b"), X86_GP);
    assert_int_equal(h_c->s.fx.fcw, 0x1234);
}

/* MMX writes make every tag valid, TOP zero, and the register's exponent field all ones; EMMS
 * empties the tags.  (The differential test covers this too; here it is spelled out.) */
static void test_mmx_aliasing(void **state)
{
    fresh();
    h_c->s.fx.fsw = 3 << 11; /* TOP = 3 */
    h_c->s.fx.ftw = 0;
    uint64_t v = 0x1122334455667788ull;
    memcpy(h_c->s.fx.st[(2 - 3) & 7], &v, 8);   /* physical R2 = ST((2-TOP)&7) */
    assert_int_equal(h_run(h_c, "0f6fca"), -1); /* movq mm1, mm2 */
    assert_int_equal(fpu_top(h_c), 0);
    assert_int_equal(h_c->s.fx.ftw, 0xff);
    assert_int_equal(mmx_get(h_c, 1), v);
    assert_int_equal(mmx_get(h_c, 2), v);
    assert_int_equal(h_c->s.fx.st[1][8], 0xff);
    assert_int_equal(h_c->s.fx.st[1][9], 0xff);
    assert_int_equal(h_run(h_c, "0f77"), -1); /* emms */
    assert_int_equal(h_c->s.fx.ftw, 0);
}

/* Compatibility mode: FXSAVE/FXRSTOR leave XMM8-15 alone (image bytes 288-415 untouched). */
static void test_fxsave_compat_mode(void **state)
{
    fresh();
    h_c->s.seg[SEG_CS].l = 0;
    h_c->s.seg[SEG_CS].db = 1;
    bt_update_mode(h_c);
    assert_int_equal(h_c->code_bits, 32);
    uint8_t fill[512];
    memset(fill, 0xaa, sizeof(fill));
    guest_write(&h_vm.mem, H_DATA_GPA, fill, sizeof(fill));
    memset(h_c->s.fx.xmm, 0x11, sizeof(h_c->s.fx.xmm));
    assert_int_equal(h_run(h_c, "0fae03"), -1); /* fxsave [ebx] */
    uint8_t img[512];
    guest_read(&h_vm.mem, H_DATA_GPA, img, sizeof(img));
    assert_int_equal(img[160], 0x11);     /* XMM0 */
    assert_int_equal(img[288 + 5], 0xaa); /* XMM8: not written */
    memset(h_c->s.fx.xmm[9], 0x22, 16);
    assert_int_equal(h_run(h_c, "0fae0b"), -1);  /* fxrstor [ebx] */
    assert_int_equal(h_c->s.fx.xmm[9][0], 0x22); /* XMM9 kept */
    assert_int_equal(h_c->s.fx.xmm[7][0], 0x11);
    h_long_mode(h_c);
}

/* A short program through the interpreter loop itself (bt_exec: block cache, fetch, dispatch). */
static void test_through_interpreter(void **state)
{
    fresh();
    uint8_t code[64];
    size_t n =
        h_hex("0f28030f5843100f294320d9e8d8c0dd5b30660fefc9660f2f4b30f2480f2c4330480f6ed80f77",
              code, sizeof(code));
    guest_write(&h_vm.mem, 0x200000, code, n);
    float a[4] = {1, 2, 3, 4}, b[4] = {0.5f, 0.25f, -3, 1e10f}, r[4];
    guest_write(&h_vm.mem, H_DATA_GPA, a, 16);
    guest_write(&h_vm.mem, H_DATA_GPA + 16, b, 16);
    h_c->s.rip = 0x200000;
    h_c->s.rflags = X86_FLAG_FIXED;
    h_c->ud_unhandled = 0;
    assert_int_equal(bt_exec(h_c, 11), 11);
    assert_int_equal(h_c->s.rip, 0x200000 + n);
    guest_read(&h_vm.mem, H_DATA_GPA + 32, r, 16);
    for (int k = 0; k < 4; k++)
        assert_true(r[k] == a[k] + b[k]);
    double d;
    guest_read(&h_vm.mem, H_DATA_GPA + 48, &d, 8);
    assert_true(d == 2.0);
    assert_int_equal(h_c->s.rflags & BT_ARITH_FLAGS, X86_FLAG_CF); /* 0 < 2 */
    assert_int_equal(h_c->s.gpr[RAX], 2);
    assert_int_equal(mmx_get(h_c, 3), 2);
    assert_int_equal(h_c->s.fx.ftw, 0); /* EMMS */
    assert_int_equal(h_c->ud_unhandled, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sse_differential),   cmocka_unit_test(test_outside_model_ud),
        cmocka_unit_test(test_nm_ud_checks),       cmocka_unit_test(test_alignment),
        cmocka_unit_test(test_unmasked_xm),        cmocka_unit_test(test_mxcsr),
        cmocka_unit_test(test_fxsave_fxrstor),     cmocka_unit_test(test_mmx_aliasing),
        cmocka_unit_test(test_fxsave_compat_mode), cmocka_unit_test(test_through_interpreter),
    };
    return cmocka_run_group_tests(tests, h_setup, h_teardown);
}
