/* e820 memory map construction (see e820.h).  Trusts only the slot layout of mem/guest.c, and
 * still checks it, because a wrong map silently corrupts the guest. */
#include "machine/e820.h"

#include <errno.h>

#include "machine/layout.h"
#include "util/log.h"

uint64_t e820_low_ram_end(const struct guest_mem *m)
{
    return m->nslots > 0 && m->slot[0].gpa == 0 ? m->slot[0].size : 0;
}

static int add(struct e820_entry *out, unsigned max, unsigned *n, uint64_t addr, uint64_t size,
               uint32_t type)
{
    if (size == 0) return 0;
    if (*n >= max) return err_set(EINVAL, "e820: more than %u entries needed", max);
    out[(*n)++] = (struct e820_entry){.addr = addr, .size = size, .type = type};
    return 0;
}

int e820_build(const struct guest_mem *m, struct e820_entry *out, unsigned max)
{
    uint64_t low_end = e820_low_ram_end(m);
    /* The loaders put their structures below 1 MiB and kernels above it: both must be RAM. */
    if (low_end < (2ull << 20) || low_end > GUEST_MMIO_HOLE)
        return err_set(EINVAL,
                       "e820: RAM slot 0 (%#llx bytes at gpa 0) cannot hold the boot layout",
                       (unsigned long long)low_end);
    unsigned n = 0;
    int r;
    if ((r = add(out, max, &n, 0, LAYOUT_EBDA, E820_RAM)) < 0 ||
        (r = add(out, max, &n, LAYOUT_EBDA, LAYOUT_KERNEL_MIN - LAYOUT_EBDA, E820_RESERVED)) < 0 ||
        (r = add(out, max, &n, LAYOUT_KERNEL_MIN, low_end - LAYOUT_KERNEL_MIN, E820_RAM)) < 0 ||
        (r = add(out, max, &n, LAYOUT_IOAPIC_BASE, 0x1000, E820_RESERVED)) < 0 ||
        (r = add(out, max, &n, LAYOUT_LAPIC_BASE, 0x1000, E820_RESERVED)) < 0)
        return r;
    if (m->nslots > 1) {
        const struct guest_slot *hi = &m->slot[1];
        if (hi->gpa < GUEST_HIGH_BASE || hi->gpa + hi->size < hi->gpa)
            return err_set(EINVAL, "e820: RAM slot 1 at %#llx is not above 4 GiB",
                           (unsigned long long)hi->gpa);
        if ((r = add(out, max, &n, hi->gpa, hi->size, E820_RAM)) < 0) return r;
    }
    return (int)n;
}
