/* Unit tests for the ACPI tables and the AML encoder: checksums, table links, MADT entries per
 * vCPU count, DSDT content, bad configurations, and (when acpica-tools is installed) that
 * `iasl -d` disassembles every table without errors or warnings. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "machine/acpi.h"
#include "machine/aml.h"
#include "machine/layout.h"

static uint8_t area[LAYOUT_ACPI_SIZE];

static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t rd64(const uint8_t *p)
{
    return rd32(p) | (uint64_t)rd32(p + 4) << 32;
}

static const uint8_t *at(uint64_t gpa)
{
    assert_true(gpa >= LAYOUT_ACPI_BASE && gpa < LAYOUT_ACPI_BASE + LAYOUT_ACPI_SIZE);
    return area + (gpa - LAYOUT_ACPI_BASE);
}

static void config(struct acpi_config *c, unsigned ncpus, unsigned nvirtio)
{
    memset(c, 0, sizeof(*c));
    c->ncpus = ncpus;
    c->nvirtio = nvirtio;
    for (unsigned i = 0; i < nvirtio; i++) {
        c->virtio[i].base = LAYOUT_VIRTIO_BASE + i * LAYOUT_VIRTIO_STRIDE;
        c->virtio[i].size = 0x200;
        c->virtio[i].gsi = LAYOUT_VIRTIO_GSI + i;
    }
}

static long build(const struct acpi_config *c)
{
    return acpi_build_tables(c, area, sizeof(area), LAYOUT_ACPI_BASE);
}

/* Finds a table by signature through RSDP -> XSDT (and FADT -> DSDT). */
static const uint8_t *find_table(const char *sig)
{
    const uint8_t *x = at(rd64(area + 24));
    if (!memcmp(sig, "DSDT", 4)) return at(rd64(find_table("FACP") + 140));
    for (uint32_t off = 36; off < rd32(x + 4); off += 8) {
        const uint8_t *t = at(rd64(x + off));
        if (!memcmp(t, sig, 4)) return t;
    }
    return NULL;
}

static void test_rsdp_and_checksums(void **st)
{
    struct acpi_config c;
    config(&c, 2, 3);
    long n = build(&c);
    assert_true(n > 0 && n <= (long)sizeof(area));
    assert_memory_equal(area, "RSD PTR ", 8);
    assert_int_equal(area[15], 2);
    assert_int_equal(acpi_checksum(area, 20), 0);
    assert_int_equal(acpi_checksum(area, 36), 0);
    assert_int_equal(rd32(area + 20), 36);
    const char *sigs[] = {"XSDT", "FACP", "APIC", "DSDT"};
    for (unsigned i = 0; i < 4; i++) {
        const uint8_t *t = i == 0 ? at(rd64(area + 24)) : find_table(sigs[i]);
        assert_non_null(t);
        assert_memory_equal(t, sigs[i], 4);
        assert_int_equal(acpi_checksum(t, rd32(t + 4)), 0);
    }
    const uint8_t *r = at(rd32(area + 16));
    assert_memory_equal(r, "RSDT", 4);
    assert_int_equal(acpi_checksum(r, rd32(r + 4)), 0);
    /* Corrupting one byte breaks the checksum: the check above can fail. */
    uint8_t *m = (uint8_t *)find_table("APIC");
    m[40] ^= 1;
    assert_int_not_equal(acpi_checksum(m, rd32(m + 4)), 0);
}

static void test_fadt(void **st)
{
    struct acpi_config c;
    config(&c, 1, 0);
    assert_true(build(&c) > 0);
    const uint8_t *f = find_table("FACP");
    assert_int_equal(rd32(f + 4), 276);
    assert_int_equal(f[8], 6);
    uint32_t flags = rd32(f + 112);
    assert_true(flags & (1u << 20)); /* HW_REDUCED_ACPI */
    assert_true(flags & (1u << 10)); /* RESET_REG_SUP */
    assert_int_equal(f[46] | f[47] << 8, GSI_SCI);
    assert_int_equal(f[109] & 2, 2); /* 8042 */
    assert_int_equal(f[109] & 4, 4); /* no VGA */
    /* reset register: SystemIO, 8 bits, port, value */
    assert_int_equal(f[116], 1);
    assert_int_equal(f[117], 8);
    assert_int_equal(rd64(f + 120), PORT_ACPI_RESET);
    assert_int_equal(f[128], ACPI_RESET_VALUE);
    assert_int_equal(f[244], 1);
    assert_int_equal(rd64(f + 248), PORT_ACPI_SLEEP_CTL);
    assert_int_equal(f[256], 1);
    assert_int_equal(rd64(f + 260), PORT_ACPI_SLEEP_STS);
    assert_int_equal(rd32(f + 40), (uint32_t)rd64(f + 140));
}

static void test_madt_per_ncpus(void **st)
{
    unsigned counts[] = {1, 2, 4, 64};
    for (unsigned k = 0; k < 4; k++) {
        struct acpi_config c;
        config(&c, counts[k], 0);
        assert_true(build(&c) > 0);
        const uint8_t *m = find_table("APIC");
        assert_int_equal(rd32(m + 36), (uint32_t)LAYOUT_LAPIC_BASE);
        assert_int_equal(rd32(m + 40) & 1, 0); /* no PCAT_COMPAT */
        unsigned nl = 0, nio = 0;
        for (uint32_t off = 44; off < rd32(m + 4);) {
            const uint8_t *e = m + off;
            assert_true(e[1] >= 2);
            if (e[0] == 0) {
                assert_int_equal(e[1], 8);
                assert_int_equal(e[2], nl);
                assert_int_equal(e[3], nl); /* APIC ID = index */
                assert_int_equal(rd32(e + 4) & 1, 1);
                nl++;
            } else if (e[0] == 1) {
                assert_int_equal(e[1], 12);
                assert_int_equal(e[2], counts[k]);
                assert_int_equal(rd32(e + 4), (uint32_t)LAYOUT_IOAPIC_BASE);
                assert_int_equal(rd32(e + 8), 0);
                nio++;
            }
            off += e[1];
        }
        assert_int_equal(nl, counts[k]);
        assert_int_equal(nio, 1);
    }
}

static bool contains(const uint8_t *p, size_t n, const void *needle, size_t nl)
{
    for (size_t i = 0; i + nl <= n; i++)
        if (!memcmp(p + i, needle, nl)) return true;
    return false;
}

static void test_dsdt_content(void **st)
{
    struct acpi_config c;
    config(&c, 1, 2);
    assert_true(build(&c) > 0);
    const uint8_t *d = find_table("DSDT");
    size_t n = rd32(d + 4);
    assert_true(contains(d, n, "LNRO0005", 9));
    assert_true(contains(d, n, "VR00", 4));
    assert_true(contains(d, n, "VR01", 4));
    assert_false(contains(d, n, "VR02", 4));
    assert_true(contains(d, n, "COM1", 4));
    assert_true(contains(d, n, "_S5_", 4));
    /* EisaId("PNP0501") = 0x0105D041, stored little-endian after DWordPrefix */
    assert_true(contains(d, n, "\x0c\x41\xd0\x05\x01", 5));
    /* Extended interrupt for VR01: consumer, level, active high, GSI 17 */
    uint8_t irq[] = {0x89, 6, 0, 0x01, 1, LAYOUT_VIRTIO_GSI + 1, 0, 0, 0};
    assert_true(contains(d, n, irq, sizeof(irq)));
}

static void test_bad_config(void **st)
{
    struct acpi_config c;
    config(&c, 0, 0);
    assert_int_equal(build(&c), -EINVAL);
    config(&c, 65, 0);
    assert_int_equal(build(&c), -EINVAL);
    config(&c, 1, 1);
    c.nvirtio = LAYOUT_VIRTIO_MAX + 1;
    assert_int_equal(build(&c), -EINVAL);
    config(&c, 1, 1);
    c.virtio[0].gsi = 4;
    assert_int_equal(build(&c), -EINVAL);
    config(&c, 1, 1);
    c.virtio[0].base = 0xfffff000;
    c.virtio[0].size = 0x2000;
    assert_int_equal(build(&c), -EINVAL);
    /* too small a buffer */
    config(&c, 1, 0);
    assert_true(acpi_build_tables(&c, area, 200, LAYOUT_ACPI_BASE) < 0);
}

static void test_pkglen(void **st)
{
    uint8_t e[4];
    assert_int_equal(aml_pkglen_encode(0, e), 1);
    assert_int_equal(e[0], 1);
    assert_int_equal(aml_pkglen_encode(62, e), 1);
    assert_int_equal(e[0], 63);
    /* body 63 -> total 65 with 2 bytes: lead 0x41, then 65 >> 4 = 4 */
    assert_int_equal(aml_pkglen_encode(63, e), 2);
    assert_int_equal(e[0], 0x41);
    assert_int_equal(e[1], 0x04);
    /* body 4093 -> total 4095 still fits 2 bytes; body 4094 needs 3: total 4097 = 0x1001 */
    assert_int_equal(aml_pkglen_encode(4093, e), 2);
    assert_int_equal(aml_pkglen_encode(4094, e), 3);
    assert_int_equal(e[0], 0x81);
    assert_int_equal(e[1], 0x00);
    assert_int_equal(e[2], 0x01);
    assert_int_equal(aml_pkglen_encode(1u << 28, e), 0);
}

static void test_aml_nesting_and_overflow(void **st)
{
    uint8_t buf[512];
    struct aml a;
    aml_init(&a, buf, sizeof(buf));
    aml_scope_begin(&a, "\\_SB_");
    aml_device_begin(&a, "DEV");
    aml_name_decl(&a, "_UID");
    aml_integer(&a, 0x1234);
    aml_end(&a);
    aml_end(&a);
    assert_false(a.err);
    assert_int_equal(a.depth, 0);
    /* Scope: 10 len '\' _SB_ ; Device: 5b 82 len DEV_ ; Name _UID WordConst 1234 */
    const uint8_t want[] = {0x10, 21,  '\\', '_',  'S', 'B', '_', 0x5b, 0x82, 13,   'D',
                            'E',  'V', '_',  0x08, '_', 'U', 'I', 'D',  0x0b, 0x34, 0x12};
    assert_int_equal(a.len, sizeof(want));
    assert_memory_equal(buf, want, sizeof(want));
    /* Overflowing the buffer is reported, never written past. */
    aml_init(&a, buf, 8);
    aml_string(&a, "much longer than eight bytes");
    assert_true(a.err);
    struct aml_res r = {.n = 0};
    aml_res_io(&r, 0x3f8, 8);
    aml_res_end(&r);
    uint8_t s = 0;
    for (size_t i = 0; i < r.n; i++)
        s = (uint8_t)(s + r.b[i]);
    assert_int_equal(s, 0);
}

/* Writes each table to a file and runs `iasl -d` on it (skipped without acpica-tools). */
static void test_iasl_disassembles(void **st)
{
    if (system("command -v iasl >/dev/null 2>&1") != 0) {
        print_message("iasl not installed (apt-get install acpica-tools): skipping\n");
        skip();
    }
    struct acpi_config c;
    config(&c, 4, 3);
    assert_true(build(&c) > 0);
    char dir[] = "/tmp/lookout-acpi-XXXXXX";
    assert_non_null(mkdtemp(dir));
    const char *sigs[] = {"FACP", "APIC", "DSDT", "XSDT"};
    for (unsigned i = 0; i < 4; i++) {
        const uint8_t *t = i == 3 ? at(rd64(area + 24)) : find_table(sigs[i]);
        char path[128], cmd[512];
        snprintf(path, sizeof(path), "%s/%s.dat", dir, sigs[i]);
        FILE *f = fopen(path, "wb");
        assert_non_null(f);
        assert_int_equal(fwrite(t, 1, rd32(t + 4), f), rd32(t + 4));
        fclose(f);
        snprintf(cmd, sizeof(cmd), "cd %s && iasl -d %s.dat > %s.log 2>&1", dir, sigs[i], sigs[i]);
        int rc = system(cmd);
        snprintf(cmd, sizeof(cmd),
                 "grep -Eiq 'error|warning|invalid|incorrect|unknown' %s/%s.log %s/%s.dsl", dir,
                 sigs[i], dir, sigs[i]);
        int bad = system(cmd) == 0;
        if (rc != 0 || bad) {
            snprintf(cmd, sizeof(cmd), "cat %s/%s.log %s/%s.dsl", dir, sigs[i], dir, sigs[i]);
            (void)!system(cmd);
        }
        assert_int_equal(rc, 0);
        assert_false(bad);
    }
    char cmd[256];
    snprintf(cmd, sizeof(cmd),
             "grep -q 'LNRO0005' %s/DSDT.dsl && grep -q 'Level, ActiveHigh' "
             "%s/DSDT.dsl && grep -q 'PNP0B00' %s/DSDT.dsl",
             dir, dir, dir);
    assert_int_equal(system(cmd), 0);
    if (getenv("KEEP_ACPI")) return;
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    (void)!system(cmd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rsdp_and_checksums),
        cmocka_unit_test(test_fadt),
        cmocka_unit_test(test_madt_per_ncpus),
        cmocka_unit_test(test_dsdt_content),
        cmocka_unit_test(test_bad_config),
        cmocka_unit_test(test_pkglen),
        cmocka_unit_test(test_aml_nesting_and_overflow),
        cmocka_unit_test(test_iasl_disassembles),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
