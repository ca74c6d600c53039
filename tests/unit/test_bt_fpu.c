/* Unit tests of the software CPU's x87 (src/cpu/bt/fpu.c): each instruction class runs through the
 * real decoder and dispatch on random register stacks (random TOP, tags, specials, unnormals) and
 * is compared with the same bytes executed natively: registers, status word (C0-C3, TOP, flags,
 * SF), tags, control word, memory and EFLAGS (FCOMI/FCMOV).  Then: ModRM re-derivation for every
 * valid register encoding, #NM/#MF rules, unmasked exceptions, FNSTENV/FLDENV and FNSAVE/FRSTOR
 * against the host's own images, FIP/FOP bookkeeping. */
#include "bt_fp_cases.h"
#include "bt_fp_harness.h"

static void test_x87_differential(void **state)
{
    int bad = h_diff_cases(x87_cases, ARRAY_SIZE(x87_cases), 300);
    assert_int_equal(bad, 0);
}

static void fresh(void)
{
    h_long_mode(h_c);
    bt_fpu_reset(h_c);
    h_c->s.gpr[RBX] = H_DATA_GPA;
}

/* The handler re-derives ModRM from the decoded operands: check it for every valid encoding. */
static void test_modrm_rederivation(void **state)
{
    int checked = 0;
    for (unsigned op = 0xd8; op <= 0xdf; op++) {
        for (unsigned m = 0xc0; m <= 0xff; m++) {
            uint8_t b[2] = {(uint8_t)op, (uint8_t)m};
            struct bt_insn in;
            if (bt_decode_bytes(b, 2, 64, &in) < 0) continue;
            assert_int_equal(in.opcode, op);
            if (bt_x87_modrm(&in) != (int)m)
                fail_msg("%02x %02x: re-derived modrm %02x", op, m, bt_x87_modrm(&in));
            checked++;
        }
    }
    assert_int_equal(checked, 420);
}

static void test_checks(void **state)
{
    fresh();
    h_c->s.cr0 |= X86_CR0_TS;
    assert_int_equal(h_run(h_c, "d8c1"), X86_NM); /* fadd */
    assert_int_equal(h_run(h_c, "dbe3"), X86_NM); /* fninit */
    assert_int_equal(h_run(h_c, "9b"), X86_NM);   /* fwait: MP and TS */
    h_c->s.cr0 &= ~X86_CR0_MP;
    assert_int_equal(h_run(h_c, "9b"), -1); /* fwait: TS alone is fine */
    h_c->s.cr0 &= ~X86_CR0_TS;
    h_c->s.cr0 |= X86_CR0_EM;
    assert_int_equal(h_run(h_c, "d9e8"), X86_NM); /* fld1 with EM: #NM */
    assert_int_equal(h_run(h_c, "9b"), -1);       /* fwait ignores EM */
    h_c->s.cr0 &= ~X86_CR0_EM;
    assert_int_equal(h_run(h_c, "f0d8c1"), X86_UD); /* LOCK */
    assert_int_equal(h_run(h_c, "d90b"), X86_UD);   /* d9 /1 */
    assert_int_equal(h_run(h_c, "dd0b"), X86_UD);   /* fisttp (SSE3) */
    assert_int_equal(h_run(h_c, "d9d1"), X86_UD);   /* undefined register form */
}

/* Unmasked zero-divide: no result, ZE/ES/B set; the next waiting instruction raises #MF (CR0.NE);
 * the no-wait forms do not; FNCLEX clears it. */
static void test_unmasked_pending_mf(void **state)
{
    fresh();
    assert_int_equal(h_run(h_c, "d9e8"), -1); /* fld1 */
    assert_int_equal(h_run(h_c, "d9ee"), -1); /* fldz */
    uint8_t before[8][16];
    memcpy(before, h_c->s.fx.st, sizeof(before));
    h_c->s.fx.fcw = 0x037b;                   /* ZM clear */
    assert_int_equal(h_run(h_c, "d8f9"), -1); /* fdivr st0, st1: 1/0 */
    assert_memory_equal(before, h_c->s.fx.st, sizeof(before));
    assert_int_equal(h_c->s.fx.fsw & (0x3f | FSW_ES | FSW_B), 0x4 | FSW_ES | FSW_B);
    assert_int_equal(h_run(h_c, "d8c1"), X86_MF);   /* fadd */
    assert_int_equal(h_run(h_c, "9b"), X86_MF);     /* fwait */
    assert_int_equal(h_run(h_c, "0ffcca"), X86_MF); /* paddb mm: MMX waits too */
    assert_int_equal(h_run(h_c, "dfe0"), -1);       /* fnstsw ax */
    assert_int_equal(h_c->s.gpr[RAX] & 0xffff, h_c->s.fx.fsw);
    assert_int_equal(h_run(h_c, "d93b"), -1); /* fnstcw [rbx] */
    h_c->s.cr0 &= ~X86_CR0_NE;
    assert_int_equal(h_run(h_c, "d8c1"), -1); /* legacy FERR# path: not modelled */
    h_c->s.cr0 |= X86_CR0_NE;
    assert_int_equal(h_run(h_c, "dbe2"), -1); /* fnclex */
    assert_int_equal(h_c->s.fx.fsw & 0x80ff, 0);
    assert_int_equal(h_run(h_c, "d8c1"), -1);
    /* FLDCW unmasking a set flag makes it pending */
    fresh();
    h_c->s.fx.fsw = 0x0001; /* IE set, masked */
    uint16_t cw = 0x037e;
    guest_write(&h_vm.mem, H_DATA_GPA, &cw, 2);
    assert_int_equal(h_run(h_c, "d92b"), -1); /* fldcw [rbx] */
    assert_true(h_c->s.fx.fsw & FSW_ES);
    assert_int_equal(h_run(h_c, "d9e8"), X86_MF);
    /* stack overflow, masked: C1=1, IE|SF, indefinite pushed */
    fresh();
    for (int k = 0; k < 8; k++)
        assert_int_equal(h_run(h_c, "d9e8"), -1);
    assert_int_equal(h_run(h_c, "d9e8"), -1);
    assert_int_equal(h_c->s.fx.fsw & (FSW_IE | FSW_SF | FSW_C1), FSW_IE | FSW_SF | FSW_C1);
    /* unmasked stack underflow leaves TOP alone */
    fresh();
    h_c->s.fx.fcw = 0x037e;
    assert_int_equal(h_run(h_c, "ddd8"), -1); /* fstp st0 on an empty stack */
    assert_int_equal(fpu_top(h_c), 0);
    assert_int_equal(h_c->s.fx.fsw & (FSW_IE | FSW_SF | FSW_C1 | FSW_ES), FSW_IE | FSW_SF | FSW_ES);
}

/* FIP/FOP/FDP follow the last non-control instruction. */
static void test_fip_fop(void **state)
{
    fresh();
    h_c->s.rip = 0x200010;
    assert_int_equal(h_run(h_c, "d8c3"), -1);
    assert_int_equal(h_c->s.fx.fop, 0x0c3);
    assert_int_equal(h_c->s.fx.fip, 0x200010);
    h_c->s.rip = 0x200020;
    assert_int_equal(h_run(h_c, "dd4310"), -1); /* fld qword [rbx+16] */
    assert_int_equal(h_c->s.fx.fop, 0x543);
    assert_int_equal(h_c->s.fx.fdp, H_DATA_GPA + 16);
    h_c->s.rip = 0x200030;
    assert_int_equal(h_run(h_c, "d93b"), -1); /* fnstcw: a control instruction */
    assert_int_equal(h_c->s.fx.fip, 0x200020);
}

/* FNSTENV/FNSAVE images equal the host's (control/status/tag words, registers); FLDENV/FRSTOR
 * round-trip; FNSAVE re-initializes, FNSTENV masks everything. */
static void test_env_save(void **state)
{
    static uint8_t nat[128] __attribute__((aligned(16)));
    for (int it = 0; it < 100; it++) {
        fresh();
        struct x86_fxsave fx, host __attribute__((aligned(16)));
        h_rand_fx(&fx);
        h_c->s.fx = fx;
        assert_int_equal(h_run(h_c, "dd33"), -1); /* fnsave [rbx] */
        uint8_t img[108];
        guest_read(&h_vm.mem, H_DATA_GPA, img, sizeof(img));
        __asm__ volatile("fxsave64 %0\n\tfxrstor64 %2\n\tfnsave %1\n\tfxrstor64 %0"
                         : "+m"(host), "=m"(nat)
                         : "m"(fx));
        assert_memory_equal(img, nat, 2);            /* FCW */
        assert_memory_equal(img + 4, nat + 4, 2);    /* FSW */
        assert_memory_equal(img + 8, nat + 8, 2);    /* FTW (full) */
        assert_memory_equal(img + 28, nat + 28, 80); /* ST0-ST7 */
        assert_int_equal(h_c->s.fx.fcw, 0x37f);
        assert_int_equal(h_c->s.fx.ftw, 0);

        assert_int_equal(h_run(h_c, "dd23"), -1); /* frstor [rbx] */
        char why[96];
        if (h_fx_diff(&h_c->s.fx, &fx, why, sizeof(why), true, false)) {
            /* FSW's ES/B are recomputed from the flags and masks */
            if (!(h_c->s.fx.fsw != fx.fsw && ((h_c->s.fx.fsw ^ fx.fsw) & ~(FSW_ES | FSW_B)) == 0))
                fail_msg("frstor round trip: %s", why);
        }

        h_c->s.fx = fx;
        assert_int_equal(h_run(h_c, "d933"), -1); /* fnstenv [rbx] */
        assert_int_equal(h_c->s.fx.fcw, fx.fcw | 0x3f);
        h_c->s.fx.fcw = 0x37f;
        h_c->s.fx.ftw = (uint8_t)~fx.ftw;
        assert_int_equal(h_run(h_c, "d923"), -1); /* fldenv [rbx] */
        assert_int_equal(h_c->s.fx.fcw, fx.fcw);
        assert_int_equal(h_c->s.fx.ftw, fx.ftw);
    }
    /* 16-bit operand size: 14-byte environment */
    fresh();
    h_c->s.fx.fcw = 0x027f;
    assert_int_equal(h_run(h_c, "66d933"), -1);
    uint16_t w[7];
    guest_read(&h_vm.mem, H_DATA_GPA, w, sizeof(w));
    assert_int_equal(w[0], 0x027f);
    assert_int_equal(w[2], 0xffff);
}

/* Hostile bytes: random x87/MMX/SSE-space encodings (random prefixes, REX, ModRM, displacements)
 * on random state (unmasked exceptions, CR0.TS/EM, CR4.OSFXSR off) must never hurt the host; every
 * instruction outside the model must raise #UD, and no instruction inside it may lack a handler. */
static void test_hostile_bytes(void **state)
{
    ZydisDecoder zd;
    ZydisDecoderInit(&zd, ZYDIS_MACHINE_MODE_LONG_64, ZYDIS_STACK_WIDTH_64);
    int in_model = 0, outside = 0, unhandled = 0;
    for (int it = 0; it < 40000; it++) {
        uint8_t b[16];
        size_t n = 0;
        for (int k = 0; k < 16; k++)
            b[k] = (uint8_t)h_rand();
        switch (h_rand() % 4) {
        case 0: b[n++] = 0x66; break;
        case 1: b[n++] = (h_rand() & 1) ? 0xf2 : 0xf3; break;
        default: break;
        }
        if (h_rand() % 4 == 0) b[n++] = (uint8_t)(0x40 | (h_rand() & 15));
        switch (h_rand() % 8) {
        case 0: b[n++] = (uint8_t)(0xd8 + h_rand() % 8); break;
        case 1:
            b[n++] = 0x0f;
            b[n++] = (h_rand() & 1) ? 0x38 : 0x3a;
            break;
        case 2:
            b[n++] = 0x0f;
            b[n++] = 0xae;
            break;
        default: b[n++] = 0x0f; break;
        }
        ZydisDecodedInstruction z;
        ZydisDecodedOperand zo[ZYDIS_MAX_OPERAND_COUNT];
        if (ZYAN_FAILED(ZydisDecoderDecodeFull(&zd, b, 15, &z, zo))) continue;
        bool model = z.meta.isa_ext == ZYDIS_ISA_EXT_X87 || z.meta.isa_ext == ZYDIS_ISA_EXT_MMX ||
                     z.meta.isa_ext == ZYDIS_ISA_EXT_SSE || z.meta.isa_ext == ZYDIS_ISA_EXT_SSE2 ||
                     z.meta.isa_set == ZYDIS_ISA_SET_FXSAVE ||
                     z.meta.isa_set == ZYDIS_ISA_SET_FXSAVE64 ||
                     z.meta.isa_set == ZYDIS_ISA_SET_FCMOV || z.meta.isa_ext == ZYDIS_ISA_EXT_CLFSH;
        bool newer =
            z.meta.isa_ext == ZYDIS_ISA_EXT_SSE3 || z.meta.isa_ext == ZYDIS_ISA_EXT_SSSE3 ||
            z.meta.isa_ext == ZYDIS_ISA_EXT_SSE4 || z.meta.isa_ext == ZYDIS_ISA_EXT_SSE4A ||
            z.meta.isa_ext == ZYDIS_ISA_EXT_AMD3DNOW;
        if (z.mnemonic == ZYDIS_MNEMONIC_PAUSE || (!model && !newer))
            continue; /* other families: not this test's business */

        h_long_mode(h_c);
        h_rand_fx(&h_c->s.fx);
        h_c->s.fx.fcw = (uint16_t)(h_c->s.fx.fcw & ~(h_rand() & 0x3f));
        h_c->s.fx.mxcsr &= (uint32_t) ~(h_rand() & 0x1f80);
        if (h_rand() % 8 == 0) h_c->s.cr0 |= X86_CR0_TS;
        if (h_rand() % 16 == 0) h_c->s.cr0 |= X86_CR0_EM;
        if (h_rand() % 16 == 0) h_c->s.cr4 &= ~X86_CR4_OSFXSR;
        for (int r = 0; r < 16; r++)
            h_c->s.gpr[r] = (h_rand() & 1) ? H_DATA_GPA + (h_rand() % 2048) : h_rand();
        h_c->s.rip = 0x200000;
        uint64_t before = h_c->ud_unhandled;
        char hex[40] = "";
        for (size_t k = 0; k < z.length; k++)
            snprintf(hex + 2 * k, 3, "%02x", b[k]);
        int v = h_run(h_c, hex);
        if (newer) {
            outside++;
            if (v != X86_UD)
                fail_msg("%s (%s) outside the model: vector %d", hex,
                         ZydisMnemonicGetString(z.mnemonic), v);
        } else {
            in_model++;
            if (h_c->ud_unhandled != before) {
                print_message("no handler: %s (%s)\n", hex, ZydisMnemonicGetString(z.mnemonic));
                unhandled++;
            }
        }
    }
    print_message("hostile bytes: %d in the model, %d outside it\n", in_model, outside);
    assert_true(in_model > 5000 && outside > 500);
    assert_int_equal(unhandled, 0);
    h_long_mode(h_c);
    bt_fpu_reset(h_c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_x87_differential), cmocka_unit_test(test_modrm_rederivation),
        cmocka_unit_test(test_checks),           cmocka_unit_test(test_unmasked_pending_mf),
        cmocka_unit_test(test_fip_fop),          cmocka_unit_test(test_env_save),
        cmocka_unit_test(test_hostile_bytes),
    };
    return cmocka_run_group_tests(tests, h_setup, h_teardown);
}
