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
    struct virtio_worker w;
};

/* With t.lock held (vCPU thread): wake the worker. */
static void rng_notify(void *dev, unsigned q)
{
    struct virtio_rng *d = dev;
    virtio_worker_kick(&d->w);
}

/* On the worker, t.lock released: sleeps while over the byte budget, then fills the chain. */
static uint32_t rng_serve(void *dev, const struct vq_chain *c)
{
    struct virtio_rng *d = dev;
    uint64_t want = MIN(c->in_len, (uint64_t)VIRTIO_RNG_MAX_REQ);
    tb_sleep_ns(tb_take(&d->bw, want, tb_now_ns()));
    return rng_process(d->t.mem, c);
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
    int e = virtio_worker_start(&d->w, &d->t, rng_serve, d);
    if (e) {
        err_set(e, "cannot start the entropy device thread: %s", strerror(e));
        virtio_mmio_destroy(&d->t);
        free(d);
        return NULL;
    }
    return d;
}

struct virtio_mmio *virtio_rng_transport(struct virtio_rng *d)
{
    return &d->t;
}

void virtio_rng_destroy(struct virtio_rng *d)
{
    if (!d) return;
    virtio_worker_stop(&d->w);
    virtio_mmio_destroy(&d->t);
    free(d);
}

void virtio_rng_get_state(struct virtio_rng *d, struct virtio_dev_state *s)
{
    memset(s, 0, sizeof(*s));
    s->device_id = VIRTIO_ID_RNG;
    s->nqueues = (uint8_t)d->ops.nqueues;
    virtio_mmio_get_state(&d->t, &s->mmio);
    pthread_mutex_lock(&d->t.lock); /* quiesced: the worker is not in its bucket */
    s->nbuckets = 1;
    s->bucket[0].rate = d->bw.rate;
    s->bucket[0].milli = tb_level_milli(&d->bw);
    pthread_mutex_unlock(&d->t.lock);
}

int virtio_rng_check_state(struct virtio_rng *d, const struct virtio_dev_state *s)
{
    if (s->device_id != VIRTIO_ID_RNG || s->nqueues != d->ops.nqueues)
        return err_set(EINVAL, "not an entropy device's state (device id %u, %u queues)",
                       s->device_id, s->nqueues);
    if (s->config_len)
        return err_set(EINVAL, "config space of %u bytes, none expected", s->config_len);
    if (s->nbuckets != 1) return err_set(EINVAL, "%u rate buckets, expected 1", s->nbuckets);
    return virtio_mmio_check_state(&d->t, &s->mmio);
}

int virtio_rng_set_state(struct virtio_rng *d, const struct virtio_dev_state *s)
{
    int r = virtio_rng_check_state(d, s);
    if (r < 0) return r;
    if ((r = virtio_mmio_set_state(&d->t, &s->mmio)) < 0) return r;
    pthread_mutex_lock(&d->t.lock);
    tb_restore(&d->bw, s->bucket[0].rate, s->bucket[0].milli);
    virtio_worker_kick(&d->w); /* requests the guest queued before the snapshot */
    pthread_mutex_unlock(&d->t.lock);
    return 0;
}
