/* ACPI tables for the board: RSDP (at LAYOUT_ACPI_BASE), XSDT, RSDT, a hardware-reduced FADT,
 * MADT (every vCPU's local APIC and the IOAPIC) and a DSDT describing COM1, COM2, the RTC, the
 * virtio-mmio devices and \_S5.  The Debian cloud kernel has no MP-table support and finds
 * virtio-mmio devices only here.  Trusts its configuration only after checking it. */
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "cpu/cpu.h"
#include "machine/layout.h"

struct acpi_config {
    unsigned ncpus;
    unsigned nvirtio;
    struct {
        uint64_t base;
        uint32_t size;
        uint32_t gsi;
    } virtio[LAYOUT_VIRTIO_MAX];
};

/* Writes all tables into guest RAM at LAYOUT_ACPI_BASE.  0 or -errno (err_set). */
int acpi_build(struct vm *vm, const struct acpi_config *cfg);

/* Builds the same tables into a host buffer laid out as they would sit at guest address `base`
 * (for acpi_build and the unit tests).  Returns the number of bytes used, or -errno. */
long acpi_build_tables(const struct acpi_config *cfg, uint8_t *buf, size_t cap, uint64_t base);

/* Sum of bytes mod 256 (0 for a table with a correct checksum). */
uint8_t acpi_checksum(const uint8_t *p, size_t n);
