/* Bus dispatch (see bus.h).  Trusts: addresses and sizes come from the guest; sizes other than
 * 1/2/4/8 are refused before any device sees them. */
#include "bus/bus.h"

#include <errno.h>
#include <string.h>

#include "util/log.h"

void bus_init(struct bus *b, const char *name)
{
    memset(b, 0, sizeof(*b));
    b->name = name;
}

int bus_register(struct bus *b, uint64_t base, uint64_t len, const struct bus_ops *ops,
                 void *opaque, const char *name)
{
    if (len == 0 || base + len < base)
        return err_set(EINVAL, "%s: bad range %#llx+%#llx for %s", b->name,
                       (unsigned long long)base, (unsigned long long)len, name);
    if (b->n == BUS_MAX_RANGES)
        return err_set(ENOSPC, "%s: too many devices (max %d) registering %s", b->name,
                       BUS_MAX_RANGES, name);
    unsigned pos = 0;
    for (unsigned i = 0; i < b->n; i++) {
        const struct bus_range *r = &b->r[i];
        if (base < r->base + r->len && r->base < base + len)
            return err_set(EBUSY, "%s: %s at %#llx+%#llx overlaps %s at %#llx+%#llx", b->name,
                           name, (unsigned long long)base, (unsigned long long)len, r->name,
                           (unsigned long long)r->base, (unsigned long long)r->len);
        if (r->base < base) pos = i + 1;
    }
    memmove(&b->r[pos + 1], &b->r[pos], (b->n - pos) * sizeof(b->r[0]));
    b->r[pos] = (struct bus_range){base, len, ops, opaque, name};
    b->n++;
    return 0;
}

const struct bus_range *bus_find(const struct bus *b, uint64_t addr)
{
    unsigned lo = 0, hi = b->n;
    while (lo < hi) {
        unsigned mid = (lo + hi) / 2;
        const struct bus_range *r = &b->r[mid];
        if (addr < r->base) hi = mid;
        else if (addr - r->base >= r->len) lo = mid + 1;
        else return r;
    }
    return NULL;
}

bool bus_access(struct bus *b, uint64_t addr, uint8_t *data, unsigned size, bool is_write)
{
    if (size != 1 && size != 2 && size != 4 && size != 8) {
        if (!is_write) memset(data, 0xff, size > 8 ? 8 : size);
        return false;
    }
    const struct bus_range *r = bus_find(b, addr);
    if (r && addr - r->base + size <= r->len) {
        if (is_write) r->ops->write(r->opaque, addr - r->base, data, size);
        else r->ops->read(r->opaque, addr - r->base, data, size);
        return true;
    }
    if (!r && !bus_find(b, addr + size - 1)) {
        if (!is_write) memset(data, 0xff, size);
        b->unclaimed++;
        return false;
    }
    /* Straddles a range boundary: split into bytes so each device sees only its own offsets. */
    bool any = false;
    for (unsigned i = 0; i < size; i++) any |= bus_access(b, addr + i, data + i, 1, is_write);
    return any;
}
