/* Builds split virtqueues in a real (test-owned) guest RAM for the virtio unit tests and fuzz
 * harnesses: descriptor table at VRB_DESC, available ring at VRB_AVAIL, used ring at VRB_USED,
 * buffers from VRB_BUF on.  Trusts its callers (tests). */
#pragma once
#include <stdint.h>
#include <string.h>

#include "devices/virtio/virtq.h"
#include "mem/guest.h"

#define VRB_DESC  0x1000ull
#define VRB_AVAIL 0x3000ull
#define VRB_USED  0x4000ull
#define VRB_BUF   0x10000ull

struct vrb {
    struct guest_mem *m;
    struct virtq q;
    uint16_t avail_idx;
};

static inline void vrb_init(struct vrb *b, struct guest_mem *m, uint16_t size)
{
    memset(b, 0, sizeof(*b));
    b->m = m;
    b->q.size = size;
    b->q.ready = true;
    b->q.indirect = true;
    b->q.desc = VRB_DESC;
    b->q.avail = VRB_AVAIL;
    b->q.used = VRB_USED;
    memset(m->base + VRB_DESC, 0, 0x4000);
}

static inline void vrb_desc_at(struct guest_mem *m, uint64_t table, uint16_t i, uint64_t addr,
                               uint32_t len, uint16_t flags, uint16_t next)
{
    uint8_t raw[16];
    memcpy(raw, &addr, 8);
    memcpy(raw + 8, &len, 4);
    memcpy(raw + 12, &flags, 2);
    memcpy(raw + 14, &next, 2);
    guest_write(m, table + 16ull * i, raw, 16);
}

static inline void vrb_desc(struct vrb *b, uint16_t i, uint64_t addr, uint32_t len, uint16_t flags,
                            uint16_t next)
{
    vrb_desc_at(b->m, VRB_DESC, i, addr, len, flags, next);
}

/* Puts `head` on the available ring and bumps the index. */
static inline void vrb_publish(struct vrb *b, uint16_t head)
{
    uint16_t size = b->q.size ? b->q.size : 1;
    guest_write(b->m, VRB_AVAIL + 4 + 2ull * (b->avail_idx % size), &head, 2);
    b->avail_idx++;
    guest_write(b->m, VRB_AVAIL + 2, &b->avail_idx, 2);
}

static inline void vrb_set_avail_idx(struct vrb *b, uint16_t idx)
{
    b->avail_idx = idx;
    guest_write(b->m, VRB_AVAIL + 2, &idx, 2);
}

static inline uint16_t vrb_used_idx(struct vrb *b)
{
    uint16_t v = 0;
    guest_read(b->m, VRB_USED + 2, &v, 2);
    return v;
}

static inline void vrb_used_elem(struct vrb *b, uint16_t slot, uint32_t *id, uint32_t *len)
{
    uint16_t size = b->q.size ? b->q.size : 1;
    guest_read(b->m, VRB_USED + 4 + 8ull * (slot % size), id, 4);
    guest_read(b->m, VRB_USED + 8 + 8ull * (slot % size), len, 4);
}
