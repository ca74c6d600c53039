/* Port-I/O and MMIO dispatch: an address range maps to one device's handlers.
 *
 * One handler signature serves both buses.  The bus zero-fills nothing itself for claimed ranges
 * (the device must write all `size` bytes of `data` on a read); for an unclaimed address a read
 * returns all-ones, as an undriven ISA/PCI bus does, and a write is dropped.  Accesses that
 * straddle a device's range end are split by byte so no device ever sees an offset past its end.
 * Registration happens before the vCPUs start; lookups afterwards are lock-free reads. */
#pragma once
#include <stdbool.h>
#include <stdint.h>

struct bus_ops {
    /* offset is relative to the range base; size is 1, 2, 4 or 8; data is little-endian bytes */
    void (*read)(void *opaque, uint64_t offset, uint8_t *data, unsigned size);
    void (*write)(void *opaque, uint64_t offset, const uint8_t *data, unsigned size);
};

struct bus_range {
    uint64_t base, len;
    const struct bus_ops *ops;
    void *opaque;
    const char *name;
};

#define BUS_MAX_RANGES 64

struct bus {
    const char *name; /* "pio" or "mmio" */
    struct bus_range r[BUS_MAX_RANGES];
    unsigned n; /* sorted by base */
    _Atomic unsigned long unclaimed; /* count of accesses nobody claimed (for diagnostics) */
};

void bus_init(struct bus *b, const char *name);
/* Fails with -EBUSY if the range overlaps an existing one, -ENOSPC if the bus is full. */
int bus_register(struct bus *b, uint64_t base, uint64_t len, const struct bus_ops *ops,
                 void *opaque, const char *name);
const struct bus_range *bus_find(const struct bus *b, uint64_t addr);
/* Performs one access.  Returns true if some device claimed it. */
bool bus_access(struct bus *b, uint64_t addr, uint8_t *data, unsigned size, bool is_write);

/* An interrupt line as a device sees it: devices never know which controller or backend. */
struct irq_line {
    void (*set)(void *ctx, unsigned gsi, int level);
    void *ctx;
    unsigned gsi;
};
static inline void irq_line_set(const struct irq_line *l, int level)
{
    if (l->set) l->set(l->ctx, l->gsi, level);
}
