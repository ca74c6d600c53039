/* Small helpers shared by the legacy devices (UART, i8042, RTC, exit port, ACPI PM).
 *
 * Trusts: called only by the board while no vCPU runs (teardown), because bus lookups are
 * lock-free reads of the range table. */
#pragma once
#include <string.h>

#include "bus/bus.h"

/* Removes every range with handlers `ops` (any, if NULL) and opaque `opaque` (teardown only: no
 * vCPU may be running). */
static inline void dev_unregister(struct bus *b, const struct bus_ops *ops, const void *opaque)
{
    unsigned i = 0;
    while (i < b->n) {
        if (b->r[i].opaque == opaque && (!ops || b->r[i].ops == ops)) {
            memmove(&b->r[i], &b->r[i + 1], (b->n - i - 1) * sizeof(b->r[0]));
            b->n--;
        } else {
            i++;
        }
    }
}

/* Little-endian value of an access of 1..8 bytes. */
static inline uint64_t dev_le_value(const uint8_t *data, unsigned size)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < size && i < 8; i++)
        v |= (uint64_t)data[i] << (8 * i);
    return v;
}
