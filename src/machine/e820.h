/* The guest's physical memory map (BIOS e820 style), built from the RAM slots.
 *
 * Used by the Linux zero page and the Multiboot memory map.  Trusts the guest_mem slots, which
 * mem/guest.c laid out (slot 0 at gpa 0 below the MMIO hole, slot 1 at 4 GiB). */
#pragma once
#include <stdint.h>

#include "mem/guest.h"

#define E820_RAM      1
#define E820_RESERVED 2

#define E820_MAX_ENTRIES 8

struct e820_entry {
    uint64_t addr, size;
    uint32_t type;
};

/* Fills out[] (room for max entries, sorted by address, non-overlapping):
 *   RAM 0..LAYOUT_EBDA, reserved LAYOUT_EBDA..1 MiB (EBDA, ACPI tables, BIOS area),
 *   RAM 1 MiB..end of slot 0, reserved IOAPIC and LAPIC pages, RAM slot 1 (above 4 GiB).
 * Returns the number of entries, or -EINVAL (err_set) for a memory layout it cannot describe. */
int e820_build(const struct guest_mem *m, struct e820_entry *out, unsigned max);

/* End of the RAM below the MMIO hole (slot 0), i.e. the highest low address + 1. */
uint64_t e820_low_ram_end(const struct guest_mem *m);
