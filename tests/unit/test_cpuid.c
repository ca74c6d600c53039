/* Unit tests of the CPUID model: the lookout-v1 leaves, per-vCPU fields, out-of-range leaves,
 * the intersection with what a backend supports, and the refusal when required features lack. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "util/log.h"
#include "x86/cpuid.h"

static struct cpuid_model m;

static void q(uint32_t fn, uint32_t idx, unsigned apic, uint32_t out[4])
{
    cpuid_query(&m, fn, idx, apic, out);
}

static void test_v1_basic(void **st)
{
    (void)st;
    assert_int_equal(cpuid_model_build(&m, "lookout-v1", NULL, 0, 4, 2600000), 0);
    uint32_t r[4];
    q(0, 0, 0, r);
    assert_int_equal(r[0], 0x16);
    char vendor[13] = {0};
    memcpy(vendor, &r[1], 4);
    memcpy(vendor + 4, &r[3], 4);
    memcpy(vendor + 8, &r[2], 4);
    assert_string_equal(vendor, "GenuineIntel");

    q(1, 0, 3, r);
    assert_int_equal((r[0] >> 8) & 0xf, 6);   /* family */
    assert_int_equal(r[1] >> 24, 3);          /* APIC ID */
    assert_int_equal((r[1] >> 16) & 0xff, 4); /* logical processors */
    assert_int_equal((r[1] >> 8) & 0xff, 8);  /* CLFLUSH line / 8 */
    assert_true(r[2] & (1u << 24));           /* TSC deadline */
    assert_true(r[2] & (1u << 31));           /* hypervisor */
    assert_true(r[2] & (1u << 13));           /* CX16 */
    assert_false(r[2] & 1u);                  /* no SSE3 */
    assert_false(r[2] & (1u << 26));          /* no XSAVE */
    assert_false(r[2] & (1u << 21));          /* no x2APIC */
    assert_int_equal(
        r[3],
        0x0789ab79u); /* FPU PSE TSC MSR PAE CX8 APIC SEP PGE CMOV PAT CLFSH MMX FXSR SSE SSE2 */
    q(1, 0, 0, r);
    assert_int_equal(r[1] >> 24, 0);

    q(7, 0, 0, r);
    assert_int_equal(r[0] | r[2] | r[3], 0);
    assert_int_equal(r[1], 1u << 1); /* TSC_ADJUST only */
    q(0x80000007, 0, 0, r);
    assert_int_equal(r[0] | r[1] | r[2], 0);
    assert_int_equal(r[3], 1u << 8); /* invariant TSC: Linux then runs no TSC watchdog */
    q(0x80000001, 0, 0, r);
    assert_int_equal(r[3], (1u << 11) | (1u << 20) | (1u << 27) | (1u << 29));
    assert_int_equal(r[2], 1);
    q(0x80000008, 0, 0, r);
    assert_int_equal(r[0], 48u << 8 | 40u);
}

static void test_v1_frequencies(void **st)
{
    (void)st;
    const uint64_t khz = 2593907;
    assert_int_equal(cpuid_model_build(&m, "lookout-v1", NULL, 0, 1, khz), 0);
    uint32_t r[4];
    q(0x15, 0, 0, r);
    assert_true(r[0] && r[1] && r[2]);
    /* Linux (native_calibrate_tsc): crystal_khz = ECX / 1000; tsc_khz = crystal_khz * EBX / EAX,
     * all in 32-bit unsigned arithmetic, so the product must not overflow. */
    assert_true((uint64_t)(r[2] / 1000) * r[1] <= UINT32_MAX);
    uint32_t linux_khz = (uint32_t)(r[2] / 1000) * r[1] / r[0];
    assert_true(linux_khz >= khz - khz / 1000000 - 1 && linux_khz <= khz + khz / 1000000 + 1);
    /* whole-MHz rates (what vclock picks on most hosts) are exact */
    static const uint64_t exact[] = {2600000, 2000000, 3400000, 1000000, 4294000};
    for (unsigned n = 0; n < ARRAY_SIZE(exact); n++) {
        assert_int_equal(cpuid_model_build(&m, "lookout-v1", NULL, 0, 1, exact[n]), 0);
        q(0x15, 0, 0, r);
        assert_true((uint64_t)(r[2] / 1000) * r[1] <= UINT32_MAX);
        assert_int_equal((uint32_t)(r[2] / 1000) * r[1] / r[0], exact[n]);
    }
    assert_int_equal(cpuid_model_build(&m, "lookout-v1", NULL, 0, 1, khz), 0);
    q(0x16, 0, 0, r);
    assert_int_equal(r[0], khz / 1000);
    q(0x40000000, 0, 0, r);
    assert_int_equal(r[0], 0x40000010);
    char sig[13] = {0};
    memcpy(sig, &r[1], 4);
    memcpy(sig + 4, &r[2], 4);
    memcpy(sig + 8, &r[3], 4);
    assert_int_equal(strlen(sig), 12);
    assert_memory_equal(sig, "Lookout", 7);
    q(0x40000010, 0, 0, r);
    assert_int_equal(r[0], khz);
    assert_int_equal(r[1], 1000000);
    char brand[49] = {0};
    for (unsigned i = 0; i < 3; i++) {
        q(0x80000002 + i, 0, 0, r);
        memcpy(brand + 16 * i, r, 16);
    }
    assert_string_equal(brand, "lookout virtual CPU");
}

static void test_out_of_range_and_topology(void **st)
{
    (void)st;
    assert_int_equal(cpuid_model_build(&m, "lookout-v1", NULL, 0, 6, 1000000), 0);
    uint32_t r[4], top[4];
    q(0x16, 0, 0, top);
    q(0x17, 0, 0, r);
    assert_memory_equal(r, top, sizeof(r));
    q(0x80000009, 0, 0, r);
    assert_memory_equal(r, top, sizeof(r));
    q(2, 0, 0, r); /* absent but in range: zeros */
    assert_int_equal(r[0] | r[1] | r[2] | r[3], 0);
    q(0x40000005, 0, 0, r);
    assert_int_equal(r[0] | r[1] | r[2] | r[3], 0);

    q(0xb, 0, 5, r);
    assert_int_equal(r[1], 1);
    assert_int_equal(r[2], 0x100);
    assert_int_equal(r[3], 5);
    q(0xb, 1, 5, r);
    assert_int_equal(r[0], 3); /* 6 cores need 3 bits */
    assert_int_equal(r[1], 6);
    assert_int_equal(r[2], 0x201);
    q(0xb, 7, 5, r);
    assert_int_equal(r[2], 7); /* invalid level echoes the index */
    assert_int_equal(r[3], 5);
}

/* A plausible KVM report: everything lookout-v1 has, minus RDTSCP, with 39 physical bits. */
static struct cpuid_entry sup[] = {
    {0, 0, 0, 0xd, 0x756e6547, 0x6c65746e, 0x49656e69},
    {1, 0, 0, 0x000a0671, 0, 0x01202001, 0x0f8bfbff},
    {6, 0, 0, 4, 0, 0, 0},
    {7, 0, CPUID_FLAG_INDEXED, 0, 0x01802852, 0, 0},
    {0x80000000, 0, 0, 0x80000008, 0, 0, 0},
    {0x80000001, 0, 0, 0, 0, 0x101, 0x20100800},
    {0x80000008, 0, 0, 0x3027, 0, 0, 0},
};

static void test_intersection(void **st)
{
    (void)st;
    assert_int_equal(cpuid_model_build(&m, "lookout-v1", sup, ARRAY_SIZE(sup), 2, 2600000), 0);
    uint32_t r[4];
    q(0x80000001, 0, 0, r);
    assert_false(r[3] & (1u << 27)); /* RDTSCP dropped */
    assert_true(r[3] & (1u << 29));
    q(1, 0, 0, r);
    assert_true(r[2] & (1u << 31)); /* hypervisor bit is the VMM's, kept */
    assert_true(r[2] & (1u << 24));
    assert_false(r[2] & 1u); /* SSE3 from the host is not added */
    q(7, 0, 0, r);
    assert_int_equal(r[1], 1u << 1); /* TSC_ADJUST (both have it); the host's others not added */
    q(0x80000007, 0, 0, r);
    assert_int_equal(r[3], 0); /* invariant TSC dropped: this backend does not report it */
    q(0x80000008, 0, 0, r);
    assert_int_equal(r[0] & 0xff, 39);
}

static void test_missing_required(void **st)
{
    (void)st;
    struct cpuid_entry s2[ARRAY_SIZE(sup)];
    memcpy(s2, sup, sizeof(sup));
    s2[1].edx &= ~(1u << 26); /* SSE2 */
    s2[5].edx &= ~(1u << 20); /* NX */
    int r = cpuid_model_build(&m, "lookout-v1", s2, ARRAY_SIZE(s2), 1, 2600000);
    assert_true(r < 0);
    assert_non_null(strstr(err_msg(), "SSE2"));
    assert_non_null(strstr(err_msg(), "NX"));
    assert_non_null(strstr(err_msg(), "--cpu bt"));
    assert_null(strstr(err_msg(), "CMOV"));
}

static void test_host_and_errors(void **st)
{
    (void)st;
    assert_true(cpuid_model_build(&m, "host", NULL, 0, 1, 2600000) < 0);
    assert_non_null(strstr(err_msg(), "KVM"));
    assert_true(cpuid_model_build(&m, "pentium", NULL, 0, 1, 2600000) < 0);
    assert_true(cpuid_model_build(&m, "lookout-v1", NULL, 0, 0, 2600000) < 0);
    assert_true(cpuid_model_build(&m, "lookout-v1", NULL, 0, 1, 0) < 0);

    assert_int_equal(cpuid_model_build(&m, "host", sup, ARRAY_SIZE(sup), 2, 2600000), 0);
    uint32_t r[4];
    q(1, 0, 1, r);
    assert_true(r[2] & (1u << 31));
    assert_int_equal(r[1] >> 24, 1);
    q(7, 0, 0, r);
    assert_int_equal(r[1], 0x01802852); /* passed through */
    q(0, 0, 0, r);
    assert_int_equal(r[0], 0x16); /* raised so the frequency leaves are visible */
    q(0x15, 0, 0, r);
    assert_int_equal((uint32_t)(r[2] / 1000) * r[1] / r[0], 2600000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_v1_basic),
        cmocka_unit_test(test_v1_frequencies),
        cmocka_unit_test(test_out_of_range_and_topology),
        cmocka_unit_test(test_intersection),
        cmocka_unit_test(test_missing_required),
        cmocka_unit_test(test_host_and_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
