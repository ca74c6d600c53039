/* Crashme for the software CPU (issue 3 item 9): random instruction bytes executed in ring 0 and
 * ring 3 of a 64-bit guest, with random registers, must never crash or hang the VMM process (this
 * binary runs under ASan/UBSan); each run must end in the guest: an exception or interrupt
 * delivered through the guest's IDT (whose handlers are HLT, so the stop address names the
 * vector), a HLT of its own, a triple fault, or the instruction budget.
 *
 * BT_CRASHME_N (default 3000) and BT_CRASHME_SEED (default 1) select the campaign; the figures are
 * printed at the end. */
#include <stdio.h>

#include "bt_testenv.h"

static uint64_t rng_state;
static uint64_t rnd(void)
{
    /* xorshift64*: reproducible from the seed */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
}

static unsigned long envnum(const char *name, unsigned long dflt)
{
    const char *v = getenv(name);
    return v && *v ? strtoul(v, NULL, 0) : dflt;
}

static void crashme(void **state)
{
    struct tenv *t = tenv_new(true);
    struct bt_cpu *c = t->c;
    t_setup_long(t);
    const size_t tmpl_len = 0x100000;
    uint8_t *tmpl = malloc(tmpl_len);
    assert_non_null(tmpl);
    memcpy(tmpl, gp(t, 0, tmpl_len), tmpl_len);
    struct x86_state s0 = c->s;

    unsigned long n = envnum("BT_CRASHME_N", 3000);
    rng_state = envnum("BT_CRASHME_SEED", 1) * 0x9e3779b97f4a7c15ull | 1;
    unsigned long vectors[2][256] = {{0}}, own_hlt[2] = {0}, triple[2] = {0}, budget[2] = {0},
                  other[2] = {0};
    uint64_t insns = 0;
    struct vcpu_exit ex;
    for (unsigned long k = 0; k < n; k++) {
        int ring = (int)(k & 1);
        memcpy(gp(t, 0, tmpl_len), tmpl, tmpl_len);
        c->s = s0;
        uint64_t code = ring ? T_CODE3 : T_CODE0;
        if (ring)
            t_to_ring3(t, code);
        else
            bt_update_mode(c);
        for (int r = 0; r < 16; r++) {
            if (r == RSP) continue;
            uint64_t v = rnd();
            /* half the registers point into mapped memory so memory operands do something */
            c->s.gpr[r] = (rnd() & 1) ? (v & 0x3fffff) : v;
        }
        if (rnd() % 4 == 0) c->s.gpr[RSP] = rnd();
        c->s.rflags = (rnd() & 0xcd5) | X86_FLAG_FIXED;
        uint8_t bytes[96];
        for (size_t b = 0; b < sizeof(bytes); b += 8) {
            uint64_t v = rnd();
            memcpy(bytes + b, &v, 8);
        }
        put_bytes(t, code, bytes, sizeof(bytes));
        bt_tlb_flush(c, true);
        bt_cache_flush(c);
        memset(&ex, 0, sizeof(ex));
        c->exit = &ex;
        c->halted = false;
        c->shutdown = false;
        c->exit_now = false;
        insns += bt_exec(c, 256);
        c->exit = NULL;
        int v = t_handler_vector(t);
        if (c->shutdown || ex.reason == VCPU_EXIT_SHUTDOWN) {
            triple[ring]++;
        } else if (v >= 0 && c->cpl == 0) {
            vectors[ring][v]++;
        } else if (c->halted) {
            own_hlt[ring]++;
        } else if (c->exit_now) {
            other[ring]++;
        } else {
            budget[ring]++;
        }
    }
    unsigned long exc[2] = {0, 0};
    for (int ring = 0; ring < 2; ring++)
        for (int v = 0; v < 256; v++)
            exc[ring] += vectors[ring][v];
    printf("crashme: %lu cases (seed %lu), %llu instructions executed\n", n,
           envnum("BT_CRASHME_SEED", 1), (unsigned long long)insns);
    for (int ring = 0; ring < 2; ring++) {
        printf("  ring %d: %lu delivered to the IDT, %lu own HLT, %lu triple faults, %lu budget "
               "exhausted, %lu other stops\n    vectors:",
               ring ? 3 : 0, exc[ring], own_hlt[ring], triple[ring], budget[ring], other[ring]);
        for (int v = 0; v < 256; v++)
            if (vectors[ring][v]) printf(" %d:%lu", v, vectors[ring][v]);
        printf("\n");
    }
    /* Every ring-3 run must stay inside the guest: ring 3 cannot halt or break the tables. */
    assert_int_equal(own_hlt[1], 0);
    assert_int_equal(triple[1], 0);
    assert_true(exc[1] + budget[1] == n / 2 - other[1]);
    assert_true(exc[1] > n / 4); /* most random ring-3 code faults quickly */
    free(tmpl);
    tenv_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(crashme),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
