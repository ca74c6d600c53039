/* ACPI table construction (see acpi.h).  Layouts from the ACPI 6.x specification, chapter 5.
 * Trusts nothing in acpi_config: counts, addresses and GSIs are checked before use. */
#include "machine/acpi.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "machine/aml.h"
#include "util/log.h"

#define OEM_ID       "LOOKOT"
#define OEM_TABLE_ID "LOOKOUT "
#define CREATOR_ID   "LKOT"

#define IOAPIC_PINS 24 /* KVM's and our IOAPIC */

/* FADT */
#define FADT_LEN             276 /* revision 6 */
#define FADT_F_RESET_REG_SUP (1u << 10)
#define FADT_F_HW_REDUCED    (1u << 20)
#define IAPC_8042            (1u << 1)
#define IAPC_NO_VGA          (1u << 2) /* no VGA: spares the guest its port probes */
#define GAS_SYSTEM_IO        1
#define GAS_ACCESS_BYTE      1

uint8_t acpi_checksum(const uint8_t *p, size_t n)
{
    uint8_t s = 0;
    for (size_t i = 0; i < n; i++)
        s = (uint8_t)(s + p[i]);
    return s;
}

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}
static void put32(uint8_t *p, uint32_t v)
{
    put16(p, (uint16_t)v);
    put16(p + 2, (uint16_t)(v >> 16));
}
static void put64(uint8_t *p, uint64_t v)
{
    put32(p, (uint32_t)v);
    put32(p + 4, (uint32_t)(v >> 32));
}

/* The standard 36-byte description header; the checksum is set by finish(). */
static void header(uint8_t *t, const char *sig, uint32_t len, uint8_t rev)
{
    memcpy(t, sig, 4);
    put32(t + 4, len);
    t[8] = rev;
    t[9] = 0;
    memcpy(t + 10, OEM_ID, 6);
    memcpy(t + 16, OEM_TABLE_ID, 8);
    put32(t + 24, 1);
    memcpy(t + 28, CREATOR_ID, 4);
    put32(t + 32, 1);
}

static void finish(uint8_t *t, size_t len)
{
    t[9] = 0;
    t[9] = (uint8_t)(0x100 - acpi_checksum(t, len));
}

/* Generic Address Structure: 8-bit System I/O register at `port`. */
static void gas_io8(uint8_t *g, uint16_t port)
{
    g[0] = GAS_SYSTEM_IO;
    g[1] = 8; /* bit width */
    g[2] = 0; /* bit offset */
    g[3] = GAS_ACCESS_BYTE;
    put64(g + 4, port);
}

static int check_config(const struct acpi_config *cfg)
{
    if (cfg->ncpus < 1 || cfg->ncpus > VM_MAX_CPUS)
        return err_set(EINVAL, "ACPI: %u vCPUs is out of range 1..%u", cfg->ncpus, VM_MAX_CPUS);
    if (cfg->nvirtio > LAYOUT_VIRTIO_MAX)
        return err_set(EINVAL, "ACPI: %u virtio devices, at most %u", cfg->nvirtio,
                       LAYOUT_VIRTIO_MAX);
    for (unsigned i = 0; i < cfg->nvirtio; i++) {
        uint64_t b = cfg->virtio[i].base, s = cfg->virtio[i].size;
        if (s == 0 || b + s > 0x100000000ull || b < 0x100000000ull - 0x40000000ull)
            return err_set(EINVAL,
                           "ACPI: virtio device %u at %#llx+%#llx is not inside the "
                           "32-bit MMIO hole",
                           i, (unsigned long long)b, (unsigned long long)s);
        if (cfg->virtio[i].gsi < 16 || cfg->virtio[i].gsi >= IOAPIC_PINS)
            return err_set(EINVAL,
                           "ACPI: virtio device %u uses GSI %u; use an IOAPIC pin "
                           "16..%u (0-15 are the ISA interrupts)",
                           i, cfg->virtio[i].gsi, IOAPIC_PINS - 1);
    }
    return 0;
}

static long build_dsdt(const struct acpi_config *cfg, uint8_t *t, size_t cap)
{
    struct aml a;
    if (cap < 36) return -ENOSPC;
    aml_init(&a, t + 36, cap - 36);

    aml_scope_begin(&a, "\\_SB_");
    static const struct {
        const char *name, *hid;
        unsigned uid;
        uint16_t port;
        uint8_t len, irq;
    } legacy[] = {
        {"COM1", "PNP0501", 1, PORT_COM1, 8, GSI_COM1},
        {"COM2", "PNP0501", 2, PORT_COM2, 8, GSI_COM2},
        {"RTC_", "PNP0B00", 0, PORT_RTC, 2, GSI_RTC},
    };
    for (unsigned i = 0; i < ARRAY_SIZE(legacy); i++) {
        struct aml_res r = {.n = 0};
        aml_device_begin(&a, legacy[i].name);
        aml_name_decl(&a, "_HID");
        aml_eisaid(&a, legacy[i].hid);
        aml_name_decl(&a, "_UID");
        aml_integer(&a, legacy[i].uid);
        aml_res_io(&r, legacy[i].port, legacy[i].len);
        aml_res_irq_noflags(&r, legacy[i].irq);
        aml_res_end(&r);
        aml_name_res(&a, "_CRS", &r);
        aml_end(&a);
    }
    for (unsigned i = 0; i < cfg->nvirtio; i++) {
        /* As QEMU's microvm describes virtio-mmio: LNRO0005, level-triggered, active high. */
        char name[5] = {'V', 'R', (char)('0' + i / 10 % 10), (char)('0' + i % 10), 0};
        struct aml_res r = {.n = 0};
        aml_device_begin(&a, name);
        aml_name_decl(&a, "_HID");
        aml_string(&a, "LNRO0005");
        aml_name_decl(&a, "_UID");
        aml_integer(&a, i);
        aml_name_decl(&a, "_CCA");
        aml_integer(&a, 1); /* DMA is cache-coherent */
        aml_res_mem32_fixed(&r, (uint32_t)cfg->virtio[i].base, cfg->virtio[i].size);
        aml_res_ext_irq(&r, cfg->virtio[i].gsi, true, false);
        aml_res_end(&r);
        aml_name_res(&a, "_CRS", &r);
        aml_end(&a);
    }
    aml_end(&a);

    /* \_S5: SLP_TYPa for the HW-reduced sleep control register (the rest unused). */
    aml_name_decl(&a, "_S5_");
    aml_package_begin(&a, 4);
    aml_integer(&a, ACPI_S5_SLP_TYP);
    aml_integer(&a, 0);
    aml_integer(&a, 0);
    aml_integer(&a, 0);
    aml_end(&a);

    if (a.err || a.depth != 0) return -ENOSPC;
    size_t len = 36 + a.len;
    header(t, "DSDT", (uint32_t)len, 2);
    finish(t, len);
    return (long)len;
}

long acpi_build_tables(const struct acpi_config *cfg, uint8_t *buf, size_t cap, uint64_t base)
{
    int r = check_config(cfg);
    if (r < 0) return r;
    memset(buf, 0, cap);
    /* Layout inside the area: RSDP, XSDT, RSDT, FADT, MADT, DSDT, each 16-byte aligned. */
    size_t rsdp = 0, xsdt = 48, rsdt = xsdt + 64, fadt = rsdt + 48;
    size_t madt = ALIGN_UP(fadt + FADT_LEN, 16);
    size_t madt_len = 44 + 8 * (size_t)cfg->ncpus + 12;
    size_t dsdt = ALIGN_UP(madt + madt_len, 16);
    if (dsdt >= cap) return err_set(ENOSPC, "ACPI tables do not fit in %zu bytes", cap);
    long dsdt_len = build_dsdt(cfg, buf + dsdt, cap - dsdt);
    if (dsdt_len < 0) return err_set(ENOSPC, "ACPI DSDT does not fit in %zu bytes", cap);
    size_t total = dsdt + (size_t)dsdt_len;
    if (base + total > 0x100000000ull) return err_set(EINVAL, "ACPI tables must lie below 4 GiB");

    /* DSDT is done; FADT (revision 6, hardware-reduced). */
    uint8_t *f = buf + fadt;
    header(f, "FACP", FADT_LEN, 6);
    put32(f + 40, (uint32_t)(base + dsdt));  /* DSDT (same as X_DSDT) */
    put16(f + 46, GSI_SCI);                  /* SCI_INT */
    put16(f + 109, IAPC_8042 | IAPC_NO_VGA); /* IAPC_BOOT_ARCH */
    put32(f + 112, FADT_F_HW_REDUCED | FADT_F_RESET_REG_SUP);
    gas_io8(f + 116, PORT_ACPI_RESET); /* RESET_REG */
    f[128] = ACPI_RESET_VALUE;
    f[131] = 0;                  /* FADT minor version */
    put64(f + 140, base + dsdt); /* X_DSDT */
    gas_io8(f + 244, PORT_ACPI_SLEEP_CTL);
    gas_io8(f + 256, PORT_ACPI_SLEEP_STS);
    memcpy(f + 268, "LOOKOUT ", 8); /* hypervisor vendor identity */
    finish(f, FADT_LEN);

    /* MADT: local APIC address, no PCAT_COMPAT (there is no 8259 to mask), one enabled local
     * APIC per vCPU (ACPI processor UID = APIC ID = index), one IOAPIC with GSI base 0.  No
     * interrupt source overrides: ISA IRQs map identically to IOAPIC pins. */
    uint8_t *m = buf + madt;
    header(m, "APIC", (uint32_t)madt_len, 4);
    put32(m + 36, (uint32_t)LAYOUT_LAPIC_BASE);
    put32(m + 40, 0);
    uint8_t *e = m + 44;
    for (unsigned i = 0; i < cfg->ncpus; i++, e += 8) {
        e[0] = 0; /* Processor Local APIC */
        e[1] = 8;
        e[2] = (uint8_t)i;
        e[3] = (uint8_t)i;
        put32(e + 4, 1); /* enabled */
    }
    e[0] = 1; /* I/O APIC */
    e[1] = 12;
    e[2] = (uint8_t)cfg->ncpus;
    e[3] = 0;
    put32(e + 4, (uint32_t)LAYOUT_IOAPIC_BASE);
    put32(e + 8, 0);
    finish(m, madt_len);

    /* XSDT and RSDT list FADT and MADT (the DSDT is reached through the FADT). */
    uint8_t *x = buf + xsdt;
    header(x, "XSDT", 36 + 16, 1);
    put64(x + 36, base + fadt);
    put64(x + 44, base + madt);
    finish(x, 36 + 16);
    uint8_t *rs = buf + rsdt;
    header(rs, "RSDT", 36 + 8, 1);
    put32(rs + 36, (uint32_t)(base + fadt));
    put32(rs + 40, (uint32_t)(base + madt));
    finish(rs, 36 + 8);

    /* RSDP revision 2: checksum over the first 20 bytes, extended checksum over all 36. */
    uint8_t *p = buf + rsdp;
    memcpy(p, "RSD PTR ", 8);
    memcpy(p + 9, OEM_ID, 6);
    p[15] = 2;
    put32(p + 16, (uint32_t)(base + rsdt));
    put32(p + 20, 36);
    put64(p + 24, base + xsdt);
    p[8] = (uint8_t)(0x100 - acpi_checksum(p, 20));
    p[32] = (uint8_t)(0x100 - acpi_checksum(p, 36));
    return (long)total;
}

int acpi_build(struct vm *vm, const struct acpi_config *cfg)
{
    /* Built straight into guest RAM: the whole area is reserved in e820 and ours. */
    uint8_t *buf = guest_ptr(&vm->mem, LAYOUT_ACPI_BASE, LAYOUT_ACPI_SIZE);
    if (!buf)
        return err_set(EFAULT, "ACPI area %#llx is not guest RAM",
                       (unsigned long long)LAYOUT_ACPI_BASE);
    long n = acpi_build_tables(cfg, buf, LAYOUT_ACPI_SIZE, LAYOUT_ACPI_BASE);
    if (n < 0) return err_wrap((int)n, "building the ACPI tables");
    guest_mark_dirty(&vm->mem, LAYOUT_ACPI_BASE, LAYOUT_ACPI_SIZE);
    return 0;
}
