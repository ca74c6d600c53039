/* Unit tests of the software CPU's MMX/SSE/SSE2 (src/cpu/bt/sse.c): every instruction class runs
 * through the real decoder and dispatch on random operands and is compared with the same bytes
 * executed natively (registers, MXCSR, x87 state for MMX, memory, flags); then the checks the SDM
 * specifies: #UD outside the CPU model, #NM, #UD with CR0.EM / CR4.OSFXSR clear, alignment #GP,
 * unmasked SIMD exceptions (#XM or #UD), LDMXCSR/FXRSTOR reserved bits. */
#include "bt_fp_harness.h"

static const struct h_case sse_cases[] = {
    {"addps xmm1, xmm2", "0f58ca"},
    {"addps xmm9, [rbx]", "440f580b"},
    {"addss xmm1, xmm2", "f30f58ca"},
    {"addss xmm3, [rbx+4]", "f30f585b04"},
    {"addpd xmm1, xmm10", "66410f58ca"},
    {"addpd xmm1, [rbx]", "660f580b"},
    {"addsd xmm1, xmm2", "f20f58ca"},
    {"addsd xmm1, [rbx+8]", "f20f584b08"},
    {"subps xmm1, xmm2", "0f5cca"},
    {"subss xmm1, xmm2", "f30f5cca"},
    {"subpd xmm1, xmm2", "660f5cca"},
    {"subsd xmm1, [rbx]", "f20f5c0b"},
    {"mulps xmm1, xmm2", "0f59ca"},
    {"mulss xmm1, xmm2", "f30f59ca"},
    {"mulpd xmm1, [rbx+16]", "660f594b10"},
    {"mulsd xmm1, xmm2", "f20f59ca"},
    {"divps xmm1, xmm2", "0f5eca"},
    {"divss xmm1, [rbx]", "f30f5e0b"},
    {"divpd xmm1, xmm2", "660f5eca"},
    {"divsd xmm1, xmm2", "f20f5eca"},
    {"minps xmm1, xmm2", "0f5dca"},
    {"minss xmm1, xmm2", "f30f5dca"},
    {"minpd xmm1, xmm2", "660f5dca"},
    {"minsd xmm1, [rbx]", "f20f5d0b"},
    {"maxps xmm1, [rbx]", "0f5f0b"},
    {"maxss xmm1, xmm2", "f30f5fca"},
    {"maxpd xmm1, xmm2", "660f5fca"},
    {"maxsd xmm1, xmm2", "f20f5fca"},
    {"sqrtps xmm1, xmm2", "0f51ca"},
    {"sqrtss xmm1, xmm2", "f30f51ca"},
    {"sqrtpd xmm1, [rbx]", "660f510b"},
    {"sqrtsd xmm1, xmm2", "f20f51ca"},
    {"rcpps xmm1, xmm2", "0f53ca"},
    {"rcpss xmm1, xmm2", "f30f53ca"},
    {"rsqrtps xmm1, xmm2", "0f52ca"},
    {"rsqrtss xmm1, [rbx]", "f30f520b"},
    {"andps xmm1, xmm2", "0f54ca"},
    {"andpd xmm1, [rbx]", "660f540b"},
    {"andnps xmm1, xmm2", "0f55ca"},
    {"andnpd xmm1, xmm2", "660f55ca"},
    {"orps xmm1, xmm2", "0f56ca"},
    {"orpd xmm1, xmm2", "660f56ca"},
    {"xorps xmm1, xmm1", "0f57c9"},
    {"xorpd xmm11, xmm2", "66440f57da"},
    {"unpcklps xmm1, xmm2", "0f14ca"},
    {"unpckhps xmm1, [rbx]", "0f150b"},
    {"unpcklpd xmm1, xmm2", "660f14ca"},
    {"unpckhpd xmm1, xmm2", "660f15ca"},
    {"cmpps xmm1, xmm2, 0", "0fc2ca00"},
    {"cmpps xmm1, xmm2, 1", "0fc2ca01"},
    {"cmpps xmm1, [rbx], 2", "0fc20b02"},
    {"cmpps xmm1, xmm2, 3", "0fc2ca03"},
    {"cmpps xmm1, xmm2, 4", "0fc2ca04"},
    {"cmpps xmm1, xmm2, 5", "0fc2ca05"},
    {"cmpps xmm1, xmm2, 6", "0fc2ca06"},
    {"cmpps xmm1, xmm2, 7", "0fc2ca07"},
    {"cmppd xmm1, xmm2, 1", "660fc2ca01"},
    {"cmppd xmm1, xmm2, 3", "660fc2ca03"},
    {"cmpss xmm1, xmm2, 2", "f30fc2ca02"},
    {"cmpss xmm1, [rbx], 5", "f30fc20b05"},
    {"cmpsd xmm1, xmm2, 0", "f20fc2ca00"},
    {"cmpsd xmm1, [rbx], 6", "f20fc20b06"},
    {"comiss xmm1, xmm2", "0f2fca"},
    {"ucomiss xmm1, [rbx]", "0f2e0b"},
    {"comisd xmm1, xmm2", "660f2fca"},
    {"ucomisd xmm1, xmm2", "660f2eca"},
    {"cvtps2pd xmm1, xmm2", "0f5aca"},
    {"cvtps2pd xmm1, [rbx]", "0f5a0b"},
    {"cvtpd2ps xmm1, xmm2", "660f5aca"},
    {"cvtss2sd xmm1, xmm2", "f30f5aca"},
    {"cvtsd2ss xmm1, [rbx]", "f20f5a0b"},
    {"cvtdq2ps xmm1, xmm2", "0f5bca"},
    {"cvtps2dq xmm1, xmm2", "660f5bca"},
    {"cvttps2dq xmm1, xmm2", "f30f5bca"},
    {"cvtdq2pd xmm1, xmm2", "f30fe6ca"},
    {"cvtpd2dq xmm1, xmm2", "f20fe6ca"},
    {"cvttpd2dq xmm1, [rbx]", "660fe60b"},
    {"cvtsi2ss xmm1, eax", "f30f2ac8"},
    {"cvtsi2ss xmm1, rax", "f3480f2ac8"},
    {"cvtsi2sd xmm1, ecx", "f20f2ac9"},
    {"cvtsi2sd xmm1, rcx", "f2480f2ac9"},
    {"cvtsi2sd xmm1, dword ptr [rbx]", "f20f2a0b"},
    {"cvtsi2sd xmm1, qword ptr [rbx]", "f2480f2a0b"},
    {"cvtss2si eax, xmm2", "f30f2dc2"},
    {"cvtss2si rax, xmm2", "f3480f2dc2"},
    {"cvttss2si ecx, [rbx]", "f30f2c0b"},
    {"cvttss2si r9, xmm2", "f34c0f2cca"},
    {"cvtsd2si eax, xmm2", "f20f2dc2"},
    {"cvtsd2si rdx, xmm2", "f2480f2dd2"},
    {"cvttsd2si eax, xmm2", "f20f2cc2"},
    {"cvttsd2si rax, [rbx]", "f2480f2c03"},
    {"cvtpi2ps xmm1, mm2", "0f2aca"},
    {"cvtpi2pd xmm1, [rbx]", "660f2a0b"},
    {"cvtps2pi mm1, xmm2", "0f2dca"},
    {"cvttps2pi mm1, xmm2", "0f2cca"},
    {"cvtpd2pi mm1, xmm2", "660f2dca"},
    {"cvttpd2pi mm1, [rbx]", "660f2c0b"},
    {"paddb xmm1, xmm2", "660ffcca"},
    {"paddb mm1, mm2", "0ffcca"},
    {"paddw xmm1, [rbx]", "660ffd0b"},
    {"paddw mm1, [rbx]", "0ffd0b"},
    {"paddd xmm1, xmm2", "660ffeca"},
    {"paddq xmm1, xmm2", "660fd4ca"},
    {"paddq mm1, mm2", "0fd4ca"},
    {"paddsb xmm1, xmm2", "660fecca"},
    {"paddsw mm1, mm2", "0fedca"},
    {"paddusb xmm1, xmm2", "660fdcca"},
    {"paddusw xmm1, xmm2", "660fddca"},
    {"psubb xmm1, xmm2", "660ff8ca"},
    {"psubw mm1, mm2", "0ff9ca"},
    {"psubd xmm1, xmm2", "660ffaca"},
    {"psubq xmm1, xmm2", "660ffbca"},
    {"psubsb xmm1, xmm2", "660fe8ca"},
    {"psubsw xmm1, xmm2", "660fe9ca"},
    {"psubusb mm3, mm2", "0fd8da"},
    {"psubusw xmm1, xmm2", "660fd9ca"},
    {"pcmpeqb xmm1, xmm2", "660f74ca"},
    {"pcmpeqb mm1, mm2", "0f74ca"},
    {"pcmpeqw xmm1, xmm2", "660f75ca"},
    {"pcmpeqd xmm1, [rbx]", "660f760b"},
    {"pcmpgtb xmm1, xmm2", "660f64ca"},
    {"pcmpgtw mm1, mm2", "0f65ca"},
    {"pcmpgtd xmm1, xmm2", "660f66ca"},
    {"pminub xmm1, xmm2", "660fdaca"},
    {"pminub mm1, mm2", "0fdaca"},
    {"pmaxub xmm1, xmm2", "660fdeca"},
    {"pminsw xmm1, xmm2", "660feaca"},
    {"pmaxsw mm1, [rbx]", "0fee0b"},
    {"pavgb xmm1, xmm2", "660fe0ca"},
    {"pavgw xmm1, xmm2", "660fe3ca"},
    {"pmullw xmm1, xmm2", "660fd5ca"},
    {"pmulhw xmm1, xmm2", "660fe5ca"},
    {"pmulhuw mm1, mm2", "0fe4ca"},
    {"pmuludq xmm1, xmm2", "660ff4ca"},
    {"pmuludq mm1, mm2", "0ff4ca"},
    {"pmaddwd xmm1, xmm2", "660ff5ca"},
    {"psadbw xmm1, xmm2", "660ff6ca"},
    {"psadbw mm1, mm2", "0ff6ca"},
    {"pand xmm1, xmm2", "660fdbca"},
    {"pandn xmm1, xmm2", "660fdfca"},
    {"por mm1, mm2", "0febca"},
    {"pxor xmm1, xmm2", "660fefca"},
    {"pxor xmm15, xmm15", "66450fefff"},
    {"punpcklbw xmm1, xmm2", "660f60ca"},
    {"punpcklbw mm1, mm2", "0f60ca"},
    {"punpcklwd xmm1, xmm2", "660f61ca"},
    {"punpckldq xmm1, [rbx]", "660f620b"},
    {"punpckhbw xmm1, xmm2", "660f68ca"},
    {"punpckhbw mm1, mm2", "0f68ca"},
    {"punpckhwd xmm1, xmm2", "660f69ca"},
    {"punpckhdq mm1, mm2", "0f6aca"},
    {"punpcklqdq xmm1, xmm2", "660f6cca"},
    {"punpckhqdq xmm1, xmm2", "660f6dca"},
    {"packsswb xmm1, xmm2", "660f63ca"},
    {"packsswb mm1, mm2", "0f63ca"},
    {"packssdw xmm1, xmm2", "660f6bca"},
    {"packuswb xmm1, xmm2", "660f67ca"},
    {"packuswb mm1, [rbx]", "0f670b"},
    {"psllw xmm1, xmm2", "660ff1ca"},
    {"psllw xmm1, 3", "660f71f103"},
    {"psllw mm1, 17", "0f71f111"},
    {"pslld xmm1, [rbx]", "660ff20b"},
    {"pslld xmm1, 31", "660f72f11f"},
    {"psllq xmm1, 63", "660f73f13f"},
    {"psllq mm1, mm2", "0ff3ca"},
    {"psrlw xmm1, 15", "660f71d10f"},
    {"psrld mm1, 5", "0f72d105"},
    {"psrlq xmm1, xmm2", "660fd3ca"},
    {"psrlq xmm1, 64", "660f73d140"},
    {"psraw xmm1, 7", "660f71e107"},
    {"psraw xmm1, 200", "660f71e1c8"},
    {"psrad mm1, mm2", "0fe2ca"},
    {"psrad xmm1, 9", "660f72e109"},
    {"pslldq xmm1, 3", "660f73f903"},
    {"pslldq xmm1, 17", "660f73f911"},
    {"psrldq xmm1, 15", "660f73d90f"},
    {"psrldq xmm1, 1", "660f73d901"},
    {"pshufd xmm1, xmm2, 0x1b", "660f70ca1b"},
    {"pshufd xmm1, [rbx], 0xe4", "660f700be4"},
    {"pshufhw xmm1, xmm2, 0x93", "f30f70ca93"},
    {"pshuflw xmm1, xmm2, 0x4e", "f20f70ca4e"},
    {"pshufw mm1, mm2, 0x39", "0f70ca39"},
    {"pshufw mm1, [rbx], 0x00", "0f700b00"},
    {"shufps xmm1, xmm2, 0x72", "0fc6ca72"},
    {"shufps xmm1, [rbx], 0x8d", "0fc60b8d"},
    {"shufpd xmm1, xmm2, 1", "660fc6ca01"},
    {"shufpd xmm1, xmm2, 2", "660fc6ca02"},
    {"pinsrw xmm1, eax, 5", "660fc4c805"},
    {"pinsrw xmm1, word ptr [rbx], 2", "660fc40b02"},
    {"pinsrw mm1, ecx, 3", "0fc4c903"},
    {"pextrw eax, xmm2, 6", "660fc5c206"},
    {"pextrw ecx, mm2, 1", "0fc5ca01"},
    {"pmovmskb eax, xmm2", "660fd7c2"},
    {"pmovmskb ecx, mm2", "0fd7ca"},
    {"movmskps eax, xmm2", "0f50c2"},
    {"movmskpd edx, xmm2", "660f50d2"},
    {"movaps xmm1, xmm2", "0f28ca"},
    {"movaps xmm1, [rbx]", "0f280b"},
    {"movaps [rbx+16], xmm2", "0f295310"},
    {"movapd xmm1, xmm2", "660f28ca"},
    {"movdqa xmm8, [rbx]", "66440f6f03"},
    {"movdqa [rbx], xmm13", "66440f7f2b"},
    {"movups xmm1, [rbx+1]", "0f104b01"},
    {"movups [rbx+3], xmm2", "0f115303"},
    {"movupd xmm1, [rbx+5]", "660f104b05"},
    {"movdqu xmm1, [rbx+7]", "f30f6f4b07"},
    {"movdqu [rbx+9], xmm2", "f30f7f5309"},
    {"movntps [rbx], xmm2", "0f2b13"},
    {"movntpd [rbx+16], xmm2", "660f2b5310"},
    {"movntdq [rbx], xmm2", "660fe713"},
    {"movnti [rbx+4], eax", "0fc34304"},
    {"movnti [rbx+8], rcx", "480fc34b08"},
    {"movntq [rbx], mm2", "0fe713"},
    {"movss xmm1, xmm2", "f30f10ca"},
    {"movss xmm1, [rbx+4]", "f30f104b04"},
    {"movss [rbx+8], xmm2", "f30f115308"},
    {"movsd xmm1, xmm2", "f20f10ca"},
    {"movsd xmm1, [rbx]", "f20f100b"},
    {"movsd [rbx+24], xmm2", "f20f115318"},
    {"movlps xmm1, [rbx]", "0f120b"},
    {"movlps [rbx+8], xmm2", "0f135308"},
    {"movhps xmm1, [rbx]", "0f160b"},
    {"movhps [rbx+8], xmm2", "0f175308"},
    {"movlpd xmm1, [rbx]", "660f120b"},
    {"movhpd [rbx], xmm2", "660f1713"},
    {"movhlps xmm1, xmm2", "0f12ca"},
    {"movlhps xmm1, xmm2", "0f16ca"},
    {"movd xmm1, eax", "660f6ec8"},
    {"movd xmm1, [rbx]", "660f6e0b"},
    {"movd eax, xmm2", "660f7ed0"},
    {"movd [rbx], xmm2", "660f7e13"},
    {"movd mm1, ecx", "0f6ec9"},
    {"movd edx, mm2", "0f7ed2"},
    {"movq xmm1, rax", "66480f6ec8"},
    {"movq rax, xmm2", "66480f7ed0"},
    {"movq mm1, rax", "480f6ec8"},
    {"movq rcx, mm2", "480f7ed1"},
    {"movq xmm1, xmm2", "f30f7eca"},
    {"movq xmm1, [rbx]", "f30f7e0b"},
    {"movq [rbx], xmm2", "660fd613"},
    {"movq mm1, mm2", "0f6fca"},
    {"movq mm1, [rbx]", "0f6f0b"},
    {"movq [rbx], mm2", "0f7f13"},
    {"movq2dq xmm1, mm2", "f30fd6ca"},
    {"movdq2q mm1, xmm2", "f20fd6ca"},
    {"maskmovdqu xmm1, xmm2", "660ff7ca"},
    {"maskmovq mm1, mm2", "0ff7ca"},
    {"emms", "0f77"},
    {"ldmxcsr [rbx+32]", "0fae5320"},
    {"stmxcsr [rbx]", "0fae1b"},
    {"lfence", "0faee8"},
    {"sfence", "0faef8"},
    {"mfence", "0faef0"},
    {"prefetchnta [rbx]", "0f1803"},
    {"prefetcht0 [rbx]", "0f180b"},
    {"clflush [rbx]", "0fae3b"},
};

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
        cmocka_unit_test(test_sse_differential),    cmocka_unit_test(test_outside_model_ud),
        cmocka_unit_test(test_nm_ud_checks),        cmocka_unit_test(test_alignment),
        cmocka_unit_test(test_unmasked_xm),         cmocka_unit_test(test_mxcsr),
        cmocka_unit_test(test_fxsave_fxrstor),      cmocka_unit_test(test_mmx_aliasing),
        cmocka_unit_test(test_through_interpreter),
    };
    return cmocka_run_group_tests(tests, h_setup, h_teardown);
}
