/* Split virtqueue walker (see virtq.h).  Trusts nothing read from guest memory: every index is
 * reduced modulo the queue size or range-checked, every address range goes through guest_ptr()
 * semantics (guest_read/guest_write), and chain walks are bounded and loop-checked. */
#include "devices/virtio/virtq.h"

#include <errno.h>
#include <string.h>

#include "util/log.h"

struct vring_desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};

static bool range_ok(const struct guest_mem *m, uint64_t addr, uint64_t len)
{
    if (len == 0) return true;
    if (addr + len < addr) return false;
    return guest_ptr(m, addr, len) != NULL;
}

int vq_check(const struct virtq *q, const struct guest_mem *m)
{
    if (q->size == 0 || q->size > VQ_MAX_SIZE || (q->size & (q->size - 1)))
        return err_set(EINVAL, "queue size %u is not a power of two up to %u", q->size,
                       VQ_MAX_SIZE);
    if ((q->desc & 15) || (q->avail & 1) || (q->used & 3))
        return err_set(EINVAL, "misaligned ring addresses (desc %#llx avail %#llx used %#llx)",
                       (unsigned long long)q->desc, (unsigned long long)q->avail,
                       (unsigned long long)q->used);
    if (!range_ok(m, q->desc, 16ull * q->size) || !range_ok(m, q->avail, 6 + 2ull * q->size) ||
        !range_ok(m, q->used, 6 + 8ull * q->size))
        return err_set(EINVAL, "ring outside guest RAM (desc %#llx avail %#llx used %#llx)",
                       (unsigned long long)q->desc, (unsigned long long)q->avail,
                       (unsigned long long)q->used);
    return 0;
}

static int read_desc(const struct guest_mem *m, uint64_t table, uint32_t i, struct vring_desc *d)
{
    uint8_t raw[16];
    if (guest_read(m, table + 16ull * i, raw, 16) < 0)
        return err_set(EPROTO, "descriptor %u outside guest RAM", i);
    memcpy(&d->addr, raw, 8);
    memcpy(&d->len, raw + 8, 4);
    memcpy(&d->flags, raw + 12, 2);
    memcpy(&d->next, raw + 14, 2);
    return 0;
}

static int add_seg(struct vq_chain *c, const struct guest_mem *m, const struct vring_desc *d)
{
    if (c->nout + c->nin >= VQ_MAX_SEGS)
        return err_set(EPROTO, "descriptor chain longer than %u", VQ_MAX_SEGS);
    if (!range_ok(m, d->addr, d->len))
        return err_set(EPROTO, "buffer %#llx+%u outside guest RAM", (unsigned long long)d->addr,
                       d->len);
    bool w = d->flags & VIRTQ_DESC_F_WRITE;
    if (!w && c->nin)
        return err_set(EPROTO, "device-readable descriptor after a device-writable one");
    if (d->len == 0) return 0; /* harmless: contributes nothing */
    c->seg[c->nout + c->nin] = (struct vq_seg){d->addr, d->len};
    if (w) {
        c->nin++;
        c->in_len += d->len;
    } else {
        c->nout++;
        c->out_len += d->len;
    }
    return 0;
}

/* Walks an indirect table (2.7.5.3): its own bounds, no nesting, NEXT stays inside the table. */
static int walk_indirect(struct vq_chain *c, const struct guest_mem *m, const struct vring_desc *t)
{
    if (t->len == 0 || (t->len & 15) || t->len / 16 > VQ_MAX_SEGS)
        return err_set(EPROTO,
                       "indirect table of %u bytes (need a multiple of 16, at most %u "
                       "entries)",
                       t->len, VQ_MAX_SEGS);
    if (!range_ok(m, t->addr, t->len)) return err_set(EPROTO, "indirect table outside guest RAM");
    uint32_t n = t->len / 16, i = 0;
    uint64_t seen[VQ_MAX_SEGS / 64] = {0};
    for (unsigned steps = 0;; steps++) {
        if (steps >= n) return err_set(EPROTO, "indirect chain loops");
        if (seen[i / 64] & (1ull << (i % 64))) return err_set(EPROTO, "indirect chain loops");
        seen[i / 64] |= 1ull << (i % 64);
        struct vring_desc d;
        int r = read_desc(m, t->addr, i, &d);
        if (r < 0) return r;
        if (d.flags & VIRTQ_DESC_F_INDIRECT) return err_set(EPROTO, "nested indirect descriptor");
        if ((r = add_seg(c, m, &d)) < 0) return r;
        if (!(d.flags & VIRTQ_DESC_F_NEXT)) return 0;
        if (d.next >= n)
            return err_set(EPROTO, "indirect next %u beyond the table (%u)", d.next, n);
        i = d.next;
    }
}

int vq_pop(struct virtq *q, const struct guest_mem *m, struct vq_chain *c)
{
    uint16_t avail_idx;
    if (!q->ready || q->size == 0 || q->size > VQ_MAX_SIZE) return 0;
    if (guest_read(m, q->avail + 2, &avail_idx, 2) < 0)
        return err_set(EPROTO, "available ring outside guest RAM");
    uint16_t pending = (uint16_t)(avail_idx - q->last_avail);
    if (pending == 0) return 0;
    if (pending > q->size)
        return err_set(EPROTO, "available index jumped by %u on a queue of %u", pending, q->size);
    __atomic_thread_fence(__ATOMIC_ACQUIRE); /* ring entries after the index */
    uint16_t head;
    if (guest_read(m, q->avail + 4 + 2ull * (q->last_avail % q->size), &head, 2) < 0)
        return err_set(EPROTO, "available ring outside guest RAM");
    if (head >= q->size)
        return err_set(EPROTO, "head descriptor %u >= queue size %u", head, q->size);
    q->last_avail++;

    c->head = head;
    c->nout = c->nin = 0;
    c->out_len = c->in_len = 0;
    uint64_t seen[VQ_MAX_SIZE / 64] = {0};
    uint16_t i = head;
    for (unsigned steps = 0;; steps++) {
        if (steps >= q->size) return err_set(EPROTO, "descriptor chain longer than the queue");
        if (seen[i / 64] & (1ull << (i % 64))) return err_set(EPROTO, "descriptor chain loops");
        seen[i / 64] |= 1ull << (i % 64);
        struct vring_desc d;
        int r = read_desc(m, q->desc, i, &d);
        if (r < 0) return r;
        if (d.flags & VIRTQ_DESC_F_INDIRECT) {
            /* 2.7.5.3.1: INDIRECT and NEXT together are invalid; INDIRECT only if negotiated */
            if (!q->indirect) return err_set(EPROTO, "indirect descriptor not negotiated");
            if (d.flags & VIRTQ_DESC_F_NEXT)
                return err_set(EPROTO, "indirect descriptor with NEXT set");
            return (r = walk_indirect(c, m, &d)) < 0 ? r : 1;
        }
        if ((r = add_seg(c, m, &d)) < 0) return r;
        if (!(d.flags & VIRTQ_DESC_F_NEXT)) return 1;
        if (d.next >= q->size) return err_set(EPROTO, "next %u >= queue size %u", d.next, q->size);
        i = d.next;
    }
}

int vq_push(struct virtq *q, struct guest_mem *m, uint16_t head, uint32_t len)
{
    uint32_t elem[2] = {head, len};
    uint64_t slot = q->used + 4 + 8ull * (q->used_idx % q->size);
    if (guest_write(m, slot, elem, 8) < 0) return err_set(EPROTO, "used ring outside guest RAM");
    q->used_idx++;
    __atomic_thread_fence(__ATOMIC_RELEASE); /* the element before the index */
    if (guest_write(m, q->used + 2, &q->used_idx, 2) < 0)
        return err_set(EPROTO, "used ring outside guest RAM");
    __atomic_thread_fence(__ATOMIC_SEQ_CST); /* index visible before we read avail flags */
    return 0;
}

bool vq_want_irq(const struct virtq *q, const struct guest_mem *m)
{
    uint16_t flags;
    if (guest_read(m, q->avail, &flags, 2) < 0) return true;
    return !(flags & VIRTQ_AVAIL_F_NO_INTERRUPT);
}

/* Walks the segments [first, first+n) from byte `off` on, calling back on each piece. */
static long copy_segs(struct guest_mem *m, const struct vq_chain *c, unsigned first, unsigned n,
                      uint64_t off, uint8_t *buf, uint64_t len, bool to_guest)
{
    uint64_t done = 0;
    for (unsigned k = first; k < first + n && done < len; k++) {
        const struct vq_seg *s = &c->seg[k];
        if (off >= s->len) {
            off -= s->len;
            continue;
        }
        uint64_t piece = MIN((uint64_t)s->len - off, len - done);
        int r = to_guest ? guest_write(m, s->addr + off, buf + done, piece)
                         : guest_read(m, s->addr + off, buf + done, piece);
        if (r < 0) return -EFAULT;
        done += piece;
        off = 0;
    }
    return (long)done;
}

long vq_copy_from(const struct guest_mem *m, const struct vq_chain *c, uint64_t off, void *buf,
                  uint64_t len)
{
    return copy_segs((struct guest_mem *)m, c, 0, c->nout, off, buf, len, false);
}

long vq_copy_to(struct guest_mem *m, const struct vq_chain *c, uint64_t off, const void *buf,
                uint64_t len)
{
    return copy_segs(m, c, c->nout, c->nin, off, (uint8_t *)buf, len, true);
}
