/* Split virtqueue (virtio 1.x, section 2.7) as the device side sees it: pops descriptor chains
 * from the available ring and returns them on the used ring.
 *
 * Trusts nothing in guest memory.  Every ring field and descriptor is read through mem/guest.h
 * (guest_read/guest_write, which check the range lies in RAM).  A chain is accepted only if each
 * descriptor's [addr, addr+len) is RAM (no wrap-around), the chain has at most `size` descriptors
 * (VQ_MAX_SEGS after indirect expansion), no descriptor index repeats (a loop), indirect tables
 * are well formed (multiple of 16 bytes, not nested, no NEXT out of the table) and all
 * device-readable descriptors precede the device-writable ones (2.7.4.2).  A violation is a broken
 * queue: vq_pop() returns -EPROTO and the transport sets DEVICE_NEEDS_RESET. */
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "mem/guest.h"

#define VQ_MAX_SIZE 256 /* QueueNumMax of every queue: also bounds chain length */
#define VQ_MAX_SEGS 256 /* descriptors in one chain, indirect ones included */

#define VIRTQ_DESC_F_NEXT          1
#define VIRTQ_DESC_F_WRITE         2
#define VIRTQ_DESC_F_INDIRECT      4
#define VIRTQ_AVAIL_F_NO_INTERRUPT 1

struct virtq {
    uint16_t size; /* QueueNum: power of two, 1..VQ_MAX_SIZE */
    bool ready;
    bool indirect;              /* VIRTIO_F_INDIRECT_DESC negotiated */
    uint64_t desc, avail, used; /* guest-physical ring addresses */
    uint16_t last_avail;        /* next avail ring slot the device reads (free-running) */
    uint16_t used_idx;          /* the device's used idx (free-running) */
};

struct vq_seg {
    uint64_t addr;
    uint32_t len;
};

/* One chain: the device-readable segments first (out), then the device-writable ones (in). */
struct vq_chain {
    uint16_t head;
    unsigned nout, nin;
    uint64_t out_len, in_len;       /* byte totals */
    struct vq_seg seg[VQ_MAX_SEGS]; /* seg[0..nout) readable, seg[nout..nout+nin) writable */
};

/* Checks the ring addresses/size of a queue the driver made ready: 0 or -EINVAL (err_set). */
int vq_check(const struct virtq *q, const struct guest_mem *m);
/* 1 and *c filled if a chain was available, 0 if the ring is empty, -EPROTO (err_set) if the
 * queue is broken (the caller sets DEVICE_NEEDS_RESET). */
int vq_pop(struct virtq *q, const struct guest_mem *m, struct vq_chain *c);
/* Puts `head` with `len` bytes written on the used ring.  0 or -EPROTO. */
int vq_push(struct virtq *q, struct guest_mem *m, uint16_t head, uint32_t len);
/* Whether the driver wants an interrupt for used buffers (VIRTQ_AVAIL_F_NO_INTERRUPT clear). */
bool vq_want_irq(const struct virtq *q, const struct guest_mem *m);

/* Gather/scatter over a chain's segments starting at byte `off` of the readable (from) or
 * writable (to) part.  Return bytes copied, or -EFAULT. */
long vq_copy_from(const struct guest_mem *m, const struct vq_chain *c, uint64_t off, void *buf,
                  uint64_t len);
long vq_copy_to(struct guest_mem *m, const struct vq_chain *c, uint64_t off, const void *buf,
                uint64_t len);
