/* virtio-blk (device id 2) on a raw image file or block device.
 *
 * Requests run on one worker thread per disk, never on a vCPU thread.  Writes go to the host page
 * cache (the device advertises VIRTIO_BLK_F_FLUSH, so the guest treats it as a write-back cache)
 * and a FLUSH completes only after fdatasync() succeeded: data the guest synced survives a kill
 * of lookout.  `ro` disks offer VIRTIO_BLK_F_RO and fail writes, discards and write-zeroes with
 * VIRTIO_BLK_S_IOERR.
 *
 * Trusts nothing in a request: header size, type, direction of every part, sector range (with
 * overflow checks), data length (a multiple of 512) and segment counts are checked before the
 * image is touched. */
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "bus/bus.h"
#include "devices/virtio/mmio.h"
#include "mem/guest.h"

#define VIRTIO_ID_BLOCK 2

#define VIRTIO_BLK_F_SEG_MAX      2
#define VIRTIO_BLK_F_RO           5
#define VIRTIO_BLK_F_FLUSH        9
#define VIRTIO_BLK_F_DISCARD      13
#define VIRTIO_BLK_F_WRITE_ZEROES 14

#define VIRTIO_BLK_T_IN           0
#define VIRTIO_BLK_T_OUT          1
#define VIRTIO_BLK_T_FLUSH        4
#define VIRTIO_BLK_T_GET_ID       8
#define VIRTIO_BLK_T_DISCARD      11
#define VIRTIO_BLK_T_WRITE_ZEROES 13

#define VIRTIO_BLK_S_OK     0
#define VIRTIO_BLK_S_IOERR  1
#define VIRTIO_BLK_S_UNSUPP 2

#define VIRTIO_BLK_ID_BYTES     20
#define VIRTIO_BLK_MAX_DWZ_SEGS 32 /* max_discard_seg and max_write_zeroes_seg */
#define VIRTIO_BLK_CONFIG_SIZE  60

struct blk_opts {
    const char *path;
    bool ro;
    uint64_t bw;       /* bytes/s, 0 = unlimited */
    uint64_t iops;     /* requests/s, 0 = unlimited */
    uint32_t burst_ms; /* the buckets hold this many ms of their rate (0: one second) */
};

/* The image side of a disk, separate from the transport so tests can drive it directly. */
struct blk_backend {
    int fd;
    bool ro;
    uint64_t sectors; /* capacity in 512-byte sectors */
    char id[VIRTIO_BLK_ID_BYTES];
};

/* Executes one request chain against the image: returns the status byte written (0/1/2), or -1
 * if the chain has no device-writable byte to hold it (nothing is done then).  *used = bytes the
 * device wrote into the chain (for the used ring). */
int blk_process(const struct blk_backend *b, struct guest_mem *m, const struct vq_chain *c,
                uint32_t *used);

struct virtio_blk;
struct virtio_blk *virtio_blk_create(struct guest_mem *mem, struct irq_line irq,
                                     const struct blk_opts *o); /* NULL + err_set */
struct virtio_mmio *virtio_blk_transport(struct virtio_blk *d);
void virtio_blk_destroy(struct virtio_blk *d); /* stops the worker, closes the image */

/* Snapshot state (struct virtio_dev_state, mmio.h): transport, config space, buckets, and the
 * image's identity (path, size, mtime): its contents are not in the snapshot.  check() refuses a
 * different capacity or ro flag always, and an image modified since the snapshot (mtime or size)
 * unless `force`; it changes nothing.  set() applies (after check). */
void virtio_blk_get_state(struct virtio_blk *d, struct virtio_dev_state *s);
int virtio_blk_check_state(struct virtio_blk *d, const struct virtio_dev_state *s, bool force);
int virtio_blk_set_state(struct virtio_blk *d, const struct virtio_dev_state *s);
