/* virtio-rng (device id 4, "entropy device"): one request queue whose device-writable buffers
 * are filled from the host's getrandom().  Requests are served by a worker thread (each at most
 * VIRTIO_RNG_MAX_REQ bytes), which sleeps while the optional byte budget is spent, so a limited
 * guest waits instead of spinning and a vCPU never blocks.
 * Trusts nothing in a chain: a request with device-readable parts or no writable bytes is
 * completed with 0 bytes. */
#pragma once
#include <stdint.h>

#include "bus/bus.h"
#include "devices/virtio/mmio.h"
#include "mem/guest.h"

#define VIRTIO_ID_RNG      4
#define VIRTIO_RNG_MAX_REQ 4096 /* bytes per request: Linux asks for at most a page */

/* Fills a chain's writable part (up to VIRTIO_RNG_MAX_REQ bytes): bytes written, 0 for a bad
 * request. */
uint32_t rng_process(struct guest_mem *m, const struct vq_chain *c);

struct virtio_rng;
struct virtio_rng *virtio_rng_create(struct guest_mem *mem, struct irq_line irq,
                                     uint64_t bytes_per_sec); /* 0 = unlimited */
struct virtio_mmio *virtio_rng_transport(struct virtio_rng *d);
void virtio_rng_destroy(struct virtio_rng *d);

/* Snapshot state (struct virtio_dev_state): transport and the byte bucket. */
void virtio_rng_get_state(struct virtio_rng *d, struct virtio_dev_state *s);
int virtio_rng_check_state(struct virtio_rng *d, const struct virtio_dev_state *s);
int virtio_rng_set_state(struct virtio_rng *d, const struct virtio_dev_state *s);
