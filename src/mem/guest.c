/* Guest RAM mapping and the bounds-checked accessors (see guest.h).  Trusts: nothing from the
 * guest; every gpa/len pair is checked for overflow and slot bounds before use. */
#include "mem/guest.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "util/log.h"

int guest_mem_init(struct guest_mem *m, uint64_t size)
{
    memset(m, 0, sizeof(*m));
    if (size < GUEST_MEM_MIN || size > GUEST_MEM_MAX || (size & (GUEST_PAGE_SIZE - 1)))
        return err_set(EINVAL,
                       "guest memory size %llu MiB is out of range: use %llu MiB to %llu GiB in "
                       "whole pages",
                       (unsigned long long)(size >> 20), GUEST_MEM_MIN >> 20, GUEST_MEM_MAX >> 30);
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (p == MAP_FAILED)
        return err_set(errno, "cannot map %llu MiB of guest memory: %s (try a smaller --mem)",
                       (unsigned long long)(size >> 20), strerror(errno));
    madvise(p, size, MADV_DONTDUMP);
    m->base = p;
    m->size = size;
    uint64_t low = size < GUEST_MMIO_HOLE ? size : GUEST_MMIO_HOLE;
    m->slot[0] = (struct guest_slot){.gpa = 0, .size = low, .hva = m->base};
    m->nslots = 1;
    if (size > low) {
        m->slot[1] = (struct guest_slot){.gpa = GUEST_HIGH_BASE, .size = size - low,
                                         .hva = m->base + low};
        m->nslots = 2;
    }
    return 0;
}

void guest_mem_destroy(struct guest_mem *m)
{
    if (m->base) munmap(m->base, m->size);
    free((void *)m->dirty);
    memset(m, 0, sizeof(*m));
}

static const struct guest_slot *find_slot(const struct guest_mem *m, gpa_t gpa, uint64_t len)
{
    if (len == 0 || gpa + len < gpa) return NULL;
    for (unsigned i = 0; i < m->nslots; i++) {
        const struct guest_slot *s = &m->slot[i];
        if (gpa >= s->gpa && gpa - s->gpa < s->size && len <= s->size - (gpa - s->gpa)) return s;
    }
    return NULL;
}

void *guest_ptr(const struct guest_mem *m, gpa_t gpa, uint64_t len)
{
    const struct guest_slot *s = find_slot(m, gpa, len);
    return s ? s->hva + (gpa - s->gpa) : NULL;
}

int64_t guest_ram_offset(const struct guest_mem *m, gpa_t gpa)
{
    const struct guest_slot *s = find_slot(m, gpa, 1);
    return s ? (int64_t)(s->hva - m->base + (gpa - s->gpa)) : -1;
}

bool guest_is_ram(const struct guest_mem *m, gpa_t gpa)
{
    return find_slot(m, gpa, 1) != NULL;
}

int guest_read(const struct guest_mem *m, gpa_t gpa, void *buf, uint64_t len)
{
    if (len == 0) return 0;
    void *p = guest_ptr(m, gpa, len);
    if (!p)
        return err_set(EFAULT, "guest range %#llx+%#llx is not RAM", (unsigned long long)gpa,
                       (unsigned long long)len);
    memcpy(buf, p, len);
    return 0;
}

int guest_write(struct guest_mem *m, gpa_t gpa, const void *buf, uint64_t len)
{
    if (len == 0) return 0;
    void *p = guest_ptr(m, gpa, len);
    if (!p)
        return err_set(EFAULT, "guest range %#llx+%#llx is not RAM", (unsigned long long)gpa,
                       (unsigned long long)len);
    memcpy(p, buf, len);
    guest_mark_dirty(m, gpa, len);
    return 0;
}

void guest_mark_dirty(struct guest_mem *m, gpa_t gpa, uint64_t len)
{
    if (len == 0) return;
    if (m->write_hook) m->write_hook(m->write_hook_ctx, gpa, len);
    guest_log_dirty(m, gpa, len);
}

void guest_log_dirty(struct guest_mem *m, gpa_t gpa, uint64_t len)
{
    if (!m->dirty_enabled || len == 0) return;
    int64_t off = guest_ram_offset(m, gpa);
    if (off < 0) return;
    uint64_t first = (uint64_t)off >> GUEST_PAGE_SHIFT;
    uint64_t last = ((uint64_t)off + len - 1) >> GUEST_PAGE_SHIFT;
    uint64_t npages = m->size >> GUEST_PAGE_SHIFT;
    if (last >= npages) last = npages - 1;
    for (uint64_t pg = first; pg <= last; pg++)
        atomic_fetch_or_explicit(&m->dirty[pg / 64], 1ull << (pg % 64), memory_order_relaxed);
}

int guest_dirty_enable(struct guest_mem *m)
{
    if (m->dirty_enabled) return 0;
    size_t words = ((m->size >> GUEST_PAGE_SHIFT) + 63) / 64;
    m->dirty = calloc(words, sizeof(uint64_t));
    if (!m->dirty) return err_set(ENOMEM, "cannot allocate the dirty-page bitmap");
    m->dirty_enabled = true;
    return 0;
}

void guest_dirty_collect(struct guest_mem *m, uint64_t *out, size_t nwords)
{
    if (!m->dirty_enabled) return;
    size_t words = ((m->size >> GUEST_PAGE_SHIFT) + 63) / 64;
    for (size_t i = 0; i < words && i < nwords; i++)
        out[i] |= atomic_exchange_explicit(&m->dirty[i], 0, memory_order_relaxed);
}
