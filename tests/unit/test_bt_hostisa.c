/* Unit tests of src/cpu/bt/hostisa.c: POPCNT and CLAC/STAC exist only in the KVM fallback
 * (c->host_isa, set by bt_emulate_one) and raise #UD under the lookout-v1 model; POPCNT's result
 * and flags are compared with the host's own POPCNT on random operands of every size.
 *
 * Trust: test code only. */
#include <cpuid.h>

#include "bt_testenv.h"

static uint64_t rng = 0x243f6a8885a308d3ull;
static uint64_t rnd(void)
{
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return rng;
}

/* Runs one instruction at T_CODE0; the vector raised or -1. */
static int run1(struct tenv *t, const uint8_t *code, size_t n)
{
    struct bt_cpu *c = t->c;
    c->s.rip = T_CODE0;
    put_bytes(t, T_CODE0, code, n);
    bt_cache_flush(c);
    c->halted = false;
    c->exit_now = false;
    bt_exec(c, 1);
    if (c->s.rip == T_CODE0 + n) return -1;
    return (int)((c->s.rip - T_HAND) / 16);
}

static bool host_has(unsigned leaf, int reg, unsigned bit)
{
    unsigned r[4];
    __cpuid_count(leaf, 0, r[0], r[1], r[2], r[3]);
    return (r[reg] >> bit) & 1;
}

static void test_popcnt(void **state)
{
    if (!host_has(1, 2, 23)) skip();
    struct tenv *t = tenv_new(false);
    t_setup_long(t);
    struct bt_cpu *c = t->c;
    c->stop_after_event = true;
    /* popcnt rax, rbx / popcnt eax, ebx / popcnt ax, bx */
    static const uint8_t q[] = {0xf3, 0x48, 0x0f, 0xb8, 0xc3};
    static const uint8_t d[] = {0xf3, 0x0f, 0xb8, 0xc3};
    static const uint8_t w[] = {0x66, 0xf3, 0x0f, 0xb8, 0xc3};
    /* under the model: #UD */
    assert_int_equal(run1(t, q, sizeof(q)), X86_UD);
    c->host_isa = true;
    for (int k = 0; k < 300; k++) {
        uint64_t src = rnd(), dst = rnd(), fl_in = (rnd() & 0x8d5) | X86_FLAG_FIXED;
        if (k % 17 == 0) src = 0;
        for (int sz = 0; sz < 3; sz++) {
            uint64_t h = dst, hf;
            switch (sz) {
            case 0:
                __asm__("push %[f]\n\tpopf\n\tpopcnt %[s], %[d]\n\tpushf\n\tpop %[o]"
                        : [d] "+r"(h), [o] "=r"(hf)
                        : [s] "r"(src), [f] "r"(fl_in)
                        : "cc");
                break;
            case 1: {
                uint32_t h32 = (uint32_t)h;
                __asm__("push %[f]\n\tpopf\n\tpopcnt %[s], %[d]\n\tpushf\n\tpop %[o]"
                        : [d] "+r"(h32), [o] "=r"(hf)
                        : [s] "r"((uint32_t)src), [f] "r"(fl_in)
                        : "cc");
                h = h32; /* zero-extended */
                break;
            }
            default: {
                uint16_t h16 = (uint16_t)h;
                __asm__("push %[f]\n\tpopf\n\tpopcnt %[s], %[d]\n\tpushf\n\tpop %[o]"
                        : [d] "+r"(h16), [o] "=r"(hf)
                        : [s] "r"((uint16_t)src), [f] "r"(fl_in)
                        : "cc");
                h = (dst & ~0xffffull) | h16;
                break;
            }
            }
            c->s.gpr[RAX] = dst, c->s.gpr[RBX] = src;
            c->s.rflags = fl_in;
            const uint8_t *code = sz == 0 ? q : sz == 1 ? d : w;
            size_t n = sz == 0 ? sizeof(q) : sz == 1 ? sizeof(d) : sizeof(w);
            assert_int_equal(run1(t, code, n), -1);
            assert_int_equal(c->s.gpr[RAX], h);
            assert_int_equal(c->s.rflags & 0x8d5, hf & 0x8d5);
        }
    }
    /* LOCK: #UD */
    static const uint8_t lk[] = {0xf0, 0xf3, 0x48, 0x0f, 0xb8, 0xc3};
    assert_int_equal(run1(t, lk, sizeof(lk)), X86_UD);
    tenv_free(t);
}

static void test_clac_stac(void **state)
{
    if (!host_has(7, 1, 20)) skip();
    struct tenv *t = tenv_new(false);
    t_setup_long(t);
    struct bt_cpu *c = t->c;
    c->stop_after_event = true;
    static const uint8_t clac[] = {0x0f, 0x01, 0xca}, stac[] = {0x0f, 0x01, 0xcb};
    assert_int_equal(run1(t, stac, 3), X86_UD); /* the model has no SMAP */
    c->host_isa = true;
    assert_int_equal(run1(t, stac, 3), -1);
    assert_true(c->s.rflags & X86_FLAG_AC);
    assert_int_equal(run1(t, clac, 3), -1);
    assert_false(c->s.rflags & X86_FLAG_AC);
    /* ring 3: #UD */
    t_to_ring3(t, T_CODE3);
    put_bytes(t, T_CODE3, stac, 3);
    bt_cache_flush(c);
    c->halted = false;
    c->exit_now = false;
    bt_exec(c, 1);
    assert_int_equal(c->s.rip, T_HAND + 16 * X86_UD);
    assert_false(c->s.rflags & X86_FLAG_AC);
    tenv_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_popcnt),
        cmocka_unit_test(test_clac_stac),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
