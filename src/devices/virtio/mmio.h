/* virtio-mmio transport, virtio 1.x modern interface only (Version register 2, spec 4.2.2).
 *
 * One 4 KiB register window per device.  Registers 0x000-0x0ff take aligned 32-bit accesses only;
 * anything else is ignored (reads return 0), as are writes the spec forbids in the current state
 * (features after FEATURES_OK, queue setup while the queue is ready).  Config space (0x100 on)
 * takes 1/2/4-byte accesses inside the device's config size; outside it reads 0, writes are
 * dropped.  The interrupt line is level-triggered and asserted while InterruptStatus != 0.
 *
 * Threads: register accesses come from vCPU threads; device back ends (worker/poll threads) pop
 * and push chains and raise interrupts.  Everything that touches the transport state takes
 * `lock`.  A reset (Status 0) waits until the back end has no request in flight, so no thread
 * writes guest memory for a queue the driver has taken back.
 *
 * Trusts: the device ops (ours).  Nothing the guest writes. */
#pragma once
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "bus/bus.h"
#include "devices/virtio/virtq.h"
#include "mem/guest.h"

#define VIRTIO_MMIO_MAGIC   0x74726976 /* "virt" */
#define VIRTIO_MMIO_VERSION 2
#define VIRTIO_VENDOR_ID    0x4b4f4f4c /* "LOOK" */
#define VIRTIO_MMIO_SIZE    0x1000
#define VIRTIO_MAX_QUEUES   4

/* Device status bits (2.1) */
#define VIRTIO_STATUS_ACKNOWLEDGE 1
#define VIRTIO_STATUS_DRIVER      2
#define VIRTIO_STATUS_DRIVER_OK   4
#define VIRTIO_STATUS_FEATURES_OK 8
#define VIRTIO_STATUS_NEEDS_RESET 64
#define VIRTIO_STATUS_FAILED      128

/* Transport features (6) */
#define VIRTIO_F_INDIRECT_DESC 28
#define VIRTIO_F_VERSION_1     32

#define VIRTIO_INT_USED   1
#define VIRTIO_INT_CONFIG 2

/* Register offsets (4.2.2) */
enum {
    VMMIO_MAGIC = 0x000,
    VMMIO_VERSION = 0x004,
    VMMIO_DEVICE_ID = 0x008,
    VMMIO_VENDOR_ID = 0x00c,
    VMMIO_DEVICE_FEATURES = 0x010,
    VMMIO_DEVICE_FEATURES_SEL = 0x014,
    VMMIO_DRIVER_FEATURES = 0x020,
    VMMIO_DRIVER_FEATURES_SEL = 0x024,
    VMMIO_QUEUE_SEL = 0x030,
    VMMIO_QUEUE_NUM_MAX = 0x034,
    VMMIO_QUEUE_NUM = 0x038,
    VMMIO_QUEUE_READY = 0x044,
    VMMIO_QUEUE_NOTIFY = 0x050,
    VMMIO_INTERRUPT_STATUS = 0x060,
    VMMIO_INTERRUPT_ACK = 0x064,
    VMMIO_STATUS = 0x070,
    VMMIO_QUEUE_DESC_LOW = 0x080,
    VMMIO_QUEUE_DESC_HIGH = 0x084,
    VMMIO_QUEUE_DRIVER_LOW = 0x090,
    VMMIO_QUEUE_DRIVER_HIGH = 0x094,
    VMMIO_QUEUE_DEVICE_LOW = 0x0a0,
    VMMIO_QUEUE_DEVICE_HIGH = 0x0a4,
    VMMIO_SHM_SEL = 0x0ac,
    VMMIO_SHM_LEN_LOW = 0x0b0,
    VMMIO_SHM_LEN_HIGH = 0x0b4,
    VMMIO_SHM_BASE_LOW = 0x0b8,
    VMMIO_SHM_BASE_HIGH = 0x0bc,
    VMMIO_CONFIG_GENERATION = 0x0fc,
    VMMIO_CONFIG = 0x100,
};

struct virtio_mmio;

struct virtio_dev_ops {
    uint32_t device_id;
    unsigned nqueues;
    uint32_t config_size; /* bytes of device config space */
    /* Config space access inside [0, config_size), len 1/2/4, with `lock` held. */
    void (*config_read)(void *dev, uint32_t off, uint8_t *data, unsigned len);
    void (*config_write)(void *dev, uint32_t off, const uint8_t *data, unsigned len);
    /* QueueNotify for a ready queue while DRIVER_OK; called with `lock` held: must not block on
     * I/O (wake a thread, or do a bounded amount of work). */
    void (*notify)(void *dev, unsigned q);
    /* Device reset, with `lock` held and no request in flight. */
    void (*reset)(void *dev);
};

struct virtio_mmio {
    pthread_mutex_t lock;
    pthread_cond_t idle; /* signalled when inflight drops to 0 */
    struct guest_mem *mem;
    struct irq_line irq;
    const struct virtio_dev_ops *ops;
    void *dev;
    uint64_t host_features;
    /* guest-visible state */
    uint32_t status;
    uint32_t dev_features_sel, drv_features_sel;
    uint64_t drv_features;
    uint32_t queue_sel;
    uint32_t isr;
    uint32_t config_gen;
    struct virtq vq[VIRTIO_MAX_QUEUES];
    /* host side */
    unsigned inflight; /* requests a back end popped and has not completed */
    bool quiesced;     /* snapshot in progress: back ends pop nothing (virtio_mmio_quiesce) */
    bool irq_level;
    unsigned fail_logged; /* needs-reset warnings printed (capped) */
};

void virtio_mmio_init(struct virtio_mmio *t, struct guest_mem *mem, struct irq_line irq,
                      const struct virtio_dev_ops *ops, void *dev, uint64_t device_features);
void virtio_mmio_destroy(struct virtio_mmio *t);
extern const struct bus_ops virtio_mmio_bus_ops; /* opaque = struct virtio_mmio * */

/* For back ends, with t->lock held: */
bool virtio_mmio_running(const struct virtio_mmio *t); /* DRIVER_OK and not NEEDS_RESET */
/* Pops a chain from queue q (1), none (0) or marks the device broken (<0).  On 1, inflight++. */
int virtio_mmio_pop(struct virtio_mmio *t, unsigned q, struct vq_chain *c);
/* Completes a popped chain (inflight--), raises the used-buffer interrupt if wanted. */
void virtio_mmio_push(struct virtio_mmio *t, unsigned q, uint16_t head, uint32_t len);
/* DEVICE_NEEDS_RESET + config-change interrupt (2.1.2), logging why. */
void virtio_mmio_fail(struct virtio_mmio *t, const char *why);
void virtio_mmio_config_changed(struct virtio_mmio *t);

/* One worker thread serving queue 0 off the vCPU thread (virtio-blk, virtio-rng): woken by a
 * kick, it pops every available chain and serves each with t->lock released; serve() returns the
 * bytes written into the chain (it may sleep, e.g. on a rate limit).  Quiescing (pop returns
 * nothing) and needs-reset are the transport's. */
struct virtio_worker {
    struct virtio_mmio *t;
    uint32_t (*serve)(void *dev, const struct vq_chain *c);
    void *dev;
    pthread_t thread;
    pthread_cond_t work; /* with t->lock */
    bool kick, stop;
    struct vq_chain chain; /* worker-owned */
};
/* 0, or the pthread error (nothing left to undo). */
int virtio_worker_start(struct virtio_worker *w, struct virtio_mmio *t,
                        uint32_t (*serve)(void *dev, const struct vq_chain *c), void *dev);
void virtio_worker_kick(struct virtio_worker *w); /* with t->lock held */
void virtio_worker_stop(struct virtio_worker *w); /* joins the thread */

/* Transport state for snapshots: plain data, validated before it is set. */
struct virtio_mmio_state {
    uint32_t status, dev_features_sel, drv_features_sel, queue_sel, isr, config_gen;
    uint64_t drv_features;
    struct {
        uint16_t size, last_avail, used_idx;
        uint8_t ready;
        uint64_t desc, avail, used;
    } vq[VIRTIO_MAX_QUEUES];
};
void virtio_mmio_get_state(struct virtio_mmio *t, struct virtio_mmio_state *s);
/* Checks a state against this device and guest RAM without changing anything: exactly the
 * invariants the register interface keeps, so every state a device can reach restores and
 * nothing else does.  Driver features a subset of the offer once FEATURES_OK is set; status
 * bits possible (DRIVER_OK only with FEATURES_OK, FEATURES_OK only with VERSION_1); interrupt
 * status bits 0-1; queue sizes up to VQ_MAX_SIZE; a ready queue's size a power of two and its
 * rings aligned and inside RAM; only existing queues set up; and, for a running device, no
 * request in flight (last_avail == used_idx: a snapshot is taken quiesced).  0 or -EINVAL with
 * err_set() naming the queue and the field. */
int virtio_mmio_check_state(const struct virtio_mmio *t, const struct virtio_mmio_state *s);
/* check, then apply (waiting until no request is in flight); the interrupt line is set to the
 * state's level. */
int virtio_mmio_set_state(struct virtio_mmio *t, const struct virtio_mmio_state *s);
/* Snapshot quiescing: on=true waits until no request is in flight and makes virtio_mmio_pop()
 * return 0 until on=false, so back-end threads neither start requests nor touch the rings while
 * the state and memory are saved or replaced.  on=false notifies the device for every ready queue,
 * so requests the guest queued meanwhile (or before a restored snapshot) are served. */
void virtio_mmio_quiesce(struct virtio_mmio *t, bool on);

/* A whole virtio device for snapshots (transport + device config + device part).  The same
 * struct for every kind; fields of other kinds stay zero.  Encoded by snapshot/codec.c. */
#define VIRTIO_CONFIG_MAX   64   /* bytes of device config space saved */
#define VIRTIO_SNAP_PATH    1024 /* longest image path recorded */
#define VIRTIO_SNAP_BUCKETS 4
struct virtio_dev_state {
    uint32_t device_id;
    uint8_t nqueues; /* the device's queue count; queues beyond it are all zero */
    struct virtio_mmio_state mmio;
    uint16_t config_len;
    uint8_t config[VIRTIO_CONFIG_MAX];
    /* rate limiter buckets (blk: bytes, ops; rng: bytes; net: rx bytes, rx frames, tx bytes, tx
     * frames, or none in snapshots older than the NIC's limits): rate/s and level in 1/1000 tokens
     */
    uint8_t nbuckets;
    struct {
        uint64_t rate;
        int64_t milli;
    } bucket[VIRTIO_SNAP_BUCKETS];
    struct { /* device id 2 */
        uint8_t ro;
        uint64_t sectors, image_size;
        int64_t image_mtime_ns;
        char path[VIRTIO_SNAP_PATH + 1];
    } blk;
    struct {             /* device id 1 */
        uint8_t backend; /* enum vnet_backend */
        char ifname[17];
    } net;
};
