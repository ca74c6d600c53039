/* Unit tests of the software CPU core and integer ISA: decoding into struct bt_insn, and directed
 * instruction cases run both natively (in a sandboxed child) and on the software CPU, compared
 * register by register, flag by flag and byte by byte (tests/difftest/dtcase.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "../difftest/dtcase.h"

static struct btenv env;
static struct native_result *nres;
static uint8_t scratch[DT_SCRATCH_N];

static int setup(void **st)
{
    if (btenv_init(&env) < 0) return -1;
    nres = native_alloc();
    for (unsigned k = 0; k < DT_SCRATCH_N; k++)
        scratch[k] = (uint8_t)(k * 37 + 11);
    return nres ? 0 : -1;
}

static int teardown(void **st)
{
    btenv_destroy(&env);
    return 0;
}

static void base_regs(uint64_t g[16])
{
    static const uint64_t v[16] = {0x8000000000000001ull,
                                   0x41,
                                   0xffffffff80000000ull,
                                   DT_SCRATCH + 0x900,
                                   DT_SCRATCH + 0x1800,
                                   DT_SCRATCH + 0x840,
                                   DT_SCRATCH + 0x200,
                                   DT_SCRATCH + 0x600,
                                   0x7fffffffffffffffull,
                                   0x1234567890abcdefull,
                                   0xffff,
                                   DT_SCRATCH + 0x880,
                                   3,
                                   DT_SCRATCH + 0x8c0,
                                   0x80,
                                   0xfedcba9876543210ull};
    memcpy(g, v, sizeof(v));
}

/* runs the bytes under several flag images and register tweaks; fails on any difference */
static void check_bytes(const uint8_t *code, size_t len)
{
    uint64_t g[16];
    static const uint64_t flag_images[] = {0, 0x8d5, 0x1, 0x40, 0x400, 0x801};
    for (size_t f = 0; f < sizeof(flag_images) / sizeof(flag_images[0]); f++) {
        for (int variant = 0; variant < 3; variant++) {
            base_regs(g);
            if (variant == 1) g[RAX] = 0, g[RDX] = 0, g[R8] = 1, g[R12] = 0;
            if (variant == 2) g[RAX] = 0xffffffff, g[RCX] = 0xff, g[RDX] = 7, g[R9] = 0x80000000;
            char msg[1024], hex[64];
            int r = dt_check(&env, nres, code, len, scratch, g, flag_images[f], msg, sizeof(msg));
            assert_int_not_equal(r, -1);
            if (r == 1) { /* 2: vendor-dependent, not compared (dtcase.h) */
                dt_hex(code, len, hex, sizeof(hex));
                print_error("mismatch for [%s] flags %#llx variant %d:%s\n", hex,
                            (unsigned long long)flag_images[f], variant, msg);
                fail();
            }
        }
    }
}

#define CASE(...)                                                                                  \
    do {                                                                                           \
        static const uint8_t b_[] = {__VA_ARGS__};                                                 \
        check_bytes(b_, sizeof(b_));                                                               \
    } while (0)

static void test_decode(void **st)
{
    struct bt_insn in;
    static const uint8_t rip_rel[] = {0x8b, 0x05, 0x10, 0, 0, 0}; /* mov eax, [rip+0x10] */
    assert_int_equal(bt_decode_bytes(rip_rel, sizeof(rip_rel), 64, &in), 0);
    assert_int_equal(in.len, 6);
    assert_int_equal(in.op[1].kind, BT_OPK_MEM);
    assert_int_equal(in.op[1].base, BT_REG_RIP);
    assert_int_equal(in.op[1].disp, 0x16);           /* EA = insn_rip + disp */
    static const uint8_t rbp[] = {0x8b, 0x45, 0xf0}; /* mov eax, [rbp-0x10]: SS */
    assert_int_equal(bt_decode_bytes(rbp, sizeof(rbp), 64, &in), 0);
    assert_int_equal(in.op[1].seg, SEG_SS);
    assert_int_equal(in.op[1].disp, -0x10);
    static const uint8_t ah[] = {0x88, 0xe0}; /* mov al, ah */
    assert_int_equal(bt_decode_bytes(ah, sizeof(ah), 64, &in), 0);
    assert_int_equal(in.op[1].rclass, BT_RC_GPR8H);
    assert_int_equal(in.op[1].reg, 0);
    static const uint8_t imm[] = {0x66, 0x83, 0xc0, 0xff}; /* add ax, -1 */
    assert_int_equal(bt_decode_bytes(imm, sizeof(imm), 64, &in), 0);
    assert_int_equal(in.op[1].disp, 0xffff);
    static const uint8_t fsmovs[] = {0xf3, 0x64, 0xa5}; /* rep movsd fs: */
    assert_int_equal(bt_decode_bytes(fsmovs, sizeof(fsmovs), 64, &in), 0);
    assert_int_equal(in.mnemonic, BT_MNEM_MOVSD_STR);
    assert_int_equal(in.dseg, SEG_FS);
    assert_true(in.pfx & BT_PFX_REP);
    static const uint8_t tz[] = {0xf3, 0x0f, 0xbc, 0xc1}; /* TZCNT encoding: BSF here */
    assert_int_equal(bt_decode_bytes(tz, sizeof(tz), 64, &in), 0);
    assert_int_equal(in.mnemonic, ZYDIS_MNEMONIC_BSF);
    static const uint8_t lockreg[] = {0xf0, 0x01, 0xc0}; /* lock add eax, eax: invalid */
    assert_int_not_equal(bt_decode_bytes(lockreg, sizeof(lockreg), 64, &in), 0);
    static const uint8_t b16[] = {0x8b, 0x42, 0x10}; /* 16-bit: mov ax, [bp+si+0x10] */
    assert_int_equal(bt_decode_bytes(b16, sizeof(b16), 16, &in), 0);
    assert_int_equal(in.addrsize, 16);
    assert_int_equal(in.op[1].seg, SEG_SS);
    assert_int_equal(in.op[1].base, RBP);
    assert_int_equal(in.op[1].index, RSI);
}

static void test_alu(void **st)
{
    CASE(0x48, 0x01, 0xc8);                            /* add rax, rcx */
    CASE(0x11, 0xd0);                                  /* adc eax, edx */
    CASE(0x66, 0x19, 0xc8);                            /* sbb ax, cx */
    CASE(0x28, 0xe0);                                  /* sub al, ah */
    CASE(0x4d, 0x31, 0xc8);                            /* xor r8, r9 */
    CASE(0x48, 0x83, 0xe8, 0x80);                      /* sub rax, -128 */
    CASE(0x48, 0x81, 0x43, 0x08, 0xff, 0xff, 0, 0x80); /* add qword [rbx+8], imm */
    CASE(0x48, 0xf7, 0xd8);                            /* neg rax */
    CASE(0xfe, 0x43, 0x10);                            /* inc byte [rbx+0x10] */
    CASE(0x48, 0xff, 0xca);                            /* dec rdx */
    CASE(0x85, 0x45, 0x04);                            /* test [rbp+4], eax */
    CASE(0x3c, 0x41);                                  /* cmp al, 0x41 */
    CASE(0xf0, 0x48, 0x09, 0x4b, 0x20);                /* lock or [rbx+0x20], rcx */
}

static void test_shift(void **st)
{
    CASE(0x48, 0xd3, 0xe0);             /* shl rax, cl */
    CASE(0xd3, 0xfa);                   /* sar edx, cl */
    CASE(0x66, 0xd3, 0xd0);             /* rcl ax, cl */
    CASE(0xc0, 0xd8, 0x05);             /* rcr al, 5 */
    CASE(0x48, 0xc1, 0xc0, 0x00);       /* rol rax, 0: no flags */
    CASE(0xd1, 0xe8);                   /* shr eax, 1 */
    CASE(0x48, 0x0f, 0xa5, 0xd0);       /* shld rax, rdx, cl */
    CASE(0x66, 0x0f, 0xac, 0xd0, 0x11); /* shrd ax, dx, 17 */
    CASE(0xd3, 0x43, 0x04);             /* rol dword [rbx+4], cl */
}

static void test_muldiv(void **st)
{
    CASE(0x48, 0xf7, 0xe1);       /* mul rcx */
    CASE(0xf6, 0xe9);             /* imul cl */
    CASE(0x48, 0x0f, 0xaf, 0xc2); /* imul rax, rdx */
    CASE(0x6b, 0xc1, 0x9c);       /* imul eax, ecx, -100 */
    CASE(0x48, 0xf7, 0xf1);       /* div rcx */
    CASE(0xf7, 0xf9);             /* idiv ecx */
    CASE(0xf6, 0xf1);             /* div cl */
    CASE(0x49, 0xf7, 0xfc);       /* idiv r12 (0 in one variant: #DE) */
    CASE(0x48, 0xf7, 0xfa);       /* idiv rdx */
    CASE(0x48, 0xc7, 0xc1, 0xff, 0xff, 0xff, 0xff, 0x48, 0xf7, 0xf9); /* idiv by -1: #DE */
    CASE(0x48, 0x31, 0xd2, 0x48, 0xf7, 0xd2, 0x48, 0xc7, 0xc1, 0xff, 0xff, 0xff, 0xff, 0x48, 0xf7,
         0xf9);                                     /* rdx = -1, idiv by -1 */
    CASE(0xb9, 0xff, 0xff, 0xff, 0xff, 0xf7, 0xf9); /* 32-bit idiv by -1 */
}

static void test_bitops(void **st)
{
    CASE(0x48, 0x0f, 0xa3, 0xc8);       /* bt rax, rcx */
    CASE(0x0f, 0xab, 0x4b, 0x10);       /* bts [rbx+0x10], ecx */
    CASE(0x48, 0x0f, 0xb3, 0x4d, 0x00); /* btr [rbp], rcx */
    CASE(0x66, 0x0f, 0xbb, 0x53, 0x20); /* btc [rbx+0x20], dx */
    CASE(0x0f, 0xba, 0x63, 0x08, 0x45); /* bt dword [rbx+8], 0x45 */
    CASE(0x48, 0x0f, 0xbc, 0xc1);       /* bsf rax, rcx */
    CASE(0x0f, 0xbd, 0xc4);             /* bsr eax, r12d? (esp) */
    CASE(0x45, 0x0f, 0xbc, 0xc4);       /* bsf r8d, r12d (0 in a variant) */
    CASE(0x48, 0x0f, 0xc8);             /* bswap rax */
    CASE(0x0f, 0xc9);                   /* bswap ecx */
}

static void test_datamov(void **st)
{
    CASE(0x48, 0x0f, 0xbe, 0xc1);                         /* movsx rax, cl */
    CASE(0x0f, 0xb7, 0x43, 0x02);                         /* movzx eax, word [rbx+2] */
    CASE(0x48, 0x63, 0xc2);                               /* movsxd rax, edx */
    CASE(0x48, 0x8d, 0x44, 0x8b, 0x10);                   /* lea rax, [rbx+rcx*4+0x10] */
    CASE(0x67, 0x8d, 0x04, 0x0b);                         /* lea eax, [ebx+ecx] */
    CASE(0x48, 0x98, 0x48, 0x99);                         /* cdqe; cqo */
    CASE(0x66, 0x98, 0x66, 0x99);                         /* cbw; cwd */
    CASE(0x51, 0x41, 0x50, 0x5a, 0x41, 0x59);             /* push rcx; push r8; pop rdx; pop r9 */
    CASE(0xff, 0x73, 0x08, 0x8f, 0x43, 0x10);             /* push [rbx+8]; pop [rbx+0x10] */
    CASE(0x8f, 0x44, 0x24, 0x08);                         /* pop [rsp+8] */
    CASE(0xc8, 0x20, 0x00, 0x03, 0xc9);                   /* enter 0x20, 3; leave */
    CASE(0x0f, 0x94, 0xc0, 0x0f, 0x9f, 0x43, 0x04);       /* setz al; setg [rbx+4] */
    CASE(0x0f, 0x44, 0xc1, 0x48, 0x0f, 0x4c, 0x53, 0x08); /* cmovz eax, ecx; cmovl rdx, [rbx+8] */
    CASE(0x9f, 0x80, 0xf4, 0xff, 0x9e);                   /* lahf; xor ah, 0xff; sahf */
    CASE(0xf5, 0xf9, 0xf8, 0xfc, 0xfd);                   /* cmc stc clc cld std */
    CASE(0x0f, 0x1f, 0x44, 0x00, 0x00, 0x90, 0xf3, 0x90); /* nops, pause */
    CASE(0x0f, 0x0b);                                     /* ud2 */
    CASE(0x8b, 0x05, 0x00, 0xe0, 0xff, 0xff);             /* mov eax, [rip-0x2000] (scratch) */
    CASE(0x66, 0x8c, 0xd8, 0x8c, 0x5b, 0x04);             /* mov ax, ds; mov [rbx+4], ds */
}

static void test_branch(void **st)
{
    CASE(0x74, 0x02, 0xff, 0xc0, 0xff, 0xc1);                /* jz +2 (over inc eax); inc ecx */
    CASE(0x7c, 0x02, 0xff, 0xc0, 0xff, 0xc1);                /* jl */
    CASE(0xe8, 0x02, 0, 0, 0, 0xeb, 0x01, 0xc3);             /* call +2 (to ret); jmp +1; ret */
    CASE(0xe3, 0x02, 0xff, 0xc0, 0x90);                      /* jrcxz */
    CASE(0xb1, 0x05, 0xff, 0xc0, 0xe2, 0xfc);                /* mov cl,5; loop: inc eax; loop */
    CASE(0x48, 0x8d, 0x05, 0x03, 0, 0, 0, 0xff, 0xe0, 0x90); /* lea rax,[rip+3]; jmp rax */
}

static void test_string(void **st)
{
    CASE(0xb9, 0x10, 0, 0, 0, 0xf3, 0xa4);       /* mov ecx,16; rep movsb */
    CASE(0xb9, 0x08, 0, 0, 0, 0xf3, 0x48, 0xa5); /* rep movsq */
    CASE(0xb9, 0x20, 0, 0, 0, 0xf3, 0xab);       /* rep stosd */
    CASE(0xb9, 0x20, 0, 0, 0, 0xf3, 0xa6);       /* repe cmpsb */
    CASE(0xb9, 0x20, 0, 0, 0, 0xf2, 0xae);       /* repne scasb */
    CASE(0xac, 0x66, 0xad, 0xaa, 0x48, 0xab);    /* lodsb lodsw stosb stosq */
    CASE(0xb9, 0x00, 0x30, 0, 0, 0xf3, 0xa4);    /* rep movsb 0x3000: runs off the scratch */
    CASE(0xd7);                                  /* xlat (rbx + al) */
}

static void test_atomic(void **st)
{
    CASE(0x48, 0x87, 0x4b, 0x08);                         /* xchg [rbx+8], rcx */
    CASE(0x48, 0x91);                                     /* xchg rax, rcx */
    CASE(0xf0, 0x48, 0x0f, 0xc1, 0x4b, 0x10);             /* lock xadd [rbx+0x10], rcx */
    CASE(0x0f, 0xc1, 0xc8);                               /* xadd eax, ecx */
    CASE(0xf0, 0x0f, 0xb1, 0x4b, 0x10);                   /* lock cmpxchg [rbx+0x10], ecx */
    CASE(0x0f, 0xb1, 0xca);                               /* cmpxchg edx, ecx */
    CASE(0x48, 0x8b, 0x43, 0x10, 0x0f, 0xb1, 0x4b, 0x10); /* load, then cmpxchg (equal) */
    CASE(0x0f, 0xc7, 0x4b, 0x08);                         /* cmpxchg8b [rbx+8] */
    CASE(0x48, 0x0f, 0xc7, 0x4b, 0x00);                   /* cmpxchg16b [rbx]: aligned */
    CASE(0x48, 0x0f, 0xc7, 0x4b, 0x08);                   /* cmpxchg16b [rbx+8]: #GP */
}

/* crashme: random bytes (biased towards the integer opcode space) in ring 3, 64- and 32-bit code:
 * the software CPU must end every run with an exception or the budget, never crash or hang
 * (this binary runs under ASan/UBSan). */
static void test_crashme(void **st)
{
    uint64_t x = 0x2545f4914f6cdd1dull;
    uint8_t code[64];
    uint64_t g[16];
    unsigned runs = 0, faults = 0;
    for (int n = 0; n < 20000; n++) {
        for (size_t k = 0; k < sizeof(code); k++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            code[k] = (uint8_t)x;
        }
        base_regs(g);
        btenv_bits = (n & 3) == 0 ? 32 : 64;
        btenv_load(&env, code, sizeof(code), scratch, g, x & 0xcd5);
        int v = btenv_run(&env, 200);
        runs++;
        faults += v >= 0;
    }
    btenv_bits = 64;
    print_message("crashme: %u runs, %u ended in an exception\n", runs, faults);
    assert_int_equal(runs, 20000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decode), cmocka_unit_test(test_alu),
        cmocka_unit_test(test_shift),  cmocka_unit_test(test_muldiv),
        cmocka_unit_test(test_bitops), cmocka_unit_test(test_datamov),
        cmocka_unit_test(test_branch), cmocka_unit_test(test_string),
        cmocka_unit_test(test_atomic), cmocka_unit_test(test_crashme),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
