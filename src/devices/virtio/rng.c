/* virtio-rng: chains filled from getrandom() (see rng.h).  Trusts nothing in the chains. */
#include "devices/virtio/rng.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "devices/virtio/ratelimit.h"
#include "util/log.h"

uint32_t rng_process(struct guest_mem *m, const struct vq_chain *c)
{
    if (c->nout || c->in_len == 0) return 0; /* 5.4.6: only device-writable buffers */
    uint8_t buf[VIRTIO_RNG_MAX_REQ];
    size_t n = (size_t)MIN(c->in_len, (uint64_t)sizeof(buf)), got = 0;
    while (got < n) {
        ssize_t r = getrandom(buf + got, n - got, GRND_NONBLOCK);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got += (size_t)r;
    }
    if (!got || vq_copy_to(m, c, 0, buf, got) != (long)got) return 0;
    return (uint32_t)got;
}

struct virtio_rng {
    struct virtio_mmio t;
    struct virtio_dev_ops ops;
    struct tbucket bw;
    struct vq_chain chain;
};

/* With t.lock held, on the vCPU thread: a bounded number of bounded requests. */
static void rng_notify(void *dev, unsigned q)
{
    struct virtio_rng *d = dev;
    for (unsigned i = 0; i < VQ_MAX_SIZE; i++) {
        if (d->bw.rate && tb_take(&d->bw, 0, tb_now_ns()) > 0) break; /* over budget: later */
        if (virtio_mmio_pop(&d->t, 0, &d->chain) <= 0) break;
        uint32_t n = rng_process(d->t.mem, &d->chain);
        (void)tb_take(&d->bw, n, tb_now_ns());
        virtio_mmio_push(&d->t, 0, d->chain.head, n);
    }
}

struct virtio_rng *virtio_rng_create(struct guest_mem *mem, struct irq_line irq,
                                     uint64_t bytes_per_sec)
{
    struct virtio_rng *d = calloc(1, sizeof(*d));
    if (!d) {
        err_set(ENOMEM, "out of memory");
        return NULL;
    }
    d->ops =
        (struct virtio_dev_ops){.device_id = VIRTIO_ID_RNG, .nqueues = 1, .notify = rng_notify};
    tb_init(&d->bw, bytes_per_sec);
    virtio_mmio_init(&d->t, mem, irq, &d->ops, d, 0);
    return d;
}

struct virtio_mmio *virtio_rng_transport(struct virtio_rng *d)
{
    return &d->t;
}

void virtio_rng_destroy(struct virtio_rng *d)
{
    if (!d) return;
    virtio_mmio_destroy(&d->t);
    free(d);
}

void virtio_rng_get_state(struct virtio_rng *d, struct virtio_rng_state *s)
{
    virtio_mmio_get_state(&d->t, &s->mmio);
}

int virtio_rng_set_state(struct virtio_rng *d, const struct virtio_rng_state *s)
{
    return virtio_mmio_set_state(&d->t, &s->mmio);
}
