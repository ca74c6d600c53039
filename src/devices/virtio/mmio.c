/* virtio-mmio transport registers, feature negotiation, status/reset and interrupts (see mmio.h).
 * Trusts nothing the guest writes: every register value is checked before it changes state. */
#include "devices/virtio/mmio.h"

#include <errno.h>
#include <string.h>

#include "devices/devutil.h"
#include "util/log.h"

static void update_irq(struct virtio_mmio *t)
{
    bool level = t->isr != 0;
    if (level != t->irq_level) {
        t->irq_level = level;
        irq_line_set(&t->irq, level);
    }
}

void virtio_mmio_init(struct virtio_mmio *t, struct guest_mem *mem, struct irq_line irq,
                      const struct virtio_dev_ops *ops, void *dev, uint64_t device_features)
{
    memset(t, 0, sizeof(*t));
    pthread_mutex_init(&t->lock, NULL);
    pthread_cond_init(&t->idle, NULL);
    t->mem = mem;
    t->irq = irq;
    t->ops = ops;
    t->dev = dev;
    t->host_features =
        device_features | (1ull << VIRTIO_F_VERSION_1) | (1ull << VIRTIO_F_INDIRECT_DESC);
}

void virtio_mmio_destroy(struct virtio_mmio *t)
{
    pthread_cond_destroy(&t->idle);
    pthread_mutex_destroy(&t->lock);
}

static void *worker_main(void *arg)
{
    struct virtio_worker *w = arg;
    struct virtio_mmio *t = w->t;
    pthread_mutex_lock(&t->lock);
    for (;;) {
        while (!w->kick && !w->stop)
            pthread_cond_wait(&w->work, &t->lock);
        if (w->stop) break;
        w->kick = false;
        while (!w->stop && virtio_mmio_pop(t, 0, &w->chain) > 0) {
            pthread_mutex_unlock(&t->lock);
            uint32_t used = w->serve(w->dev, &w->chain);
            pthread_mutex_lock(&t->lock);
            virtio_mmio_push(t, 0, w->chain.head, used);
        }
    }
    pthread_mutex_unlock(&t->lock);
    return NULL;
}

int virtio_worker_start(struct virtio_worker *w, struct virtio_mmio *t,
                        uint32_t (*serve)(void *dev, const struct vq_chain *c), void *dev)
{
    w->t = t;
    w->serve = serve;
    w->dev = dev;
    w->kick = w->stop = false;
    pthread_cond_init(&w->work, NULL);
    int e = pthread_create(&w->thread, NULL, worker_main, w);
    if (e) pthread_cond_destroy(&w->work);
    return e;
}

void virtio_worker_kick(struct virtio_worker *w)
{
    w->kick = true;
    pthread_cond_signal(&w->work);
}

void virtio_worker_stop(struct virtio_worker *w)
{
    pthread_mutex_lock(&w->t->lock);
    w->stop = true;
    pthread_cond_signal(&w->work);
    pthread_mutex_unlock(&w->t->lock);
    pthread_join(w->thread, NULL);
    pthread_cond_destroy(&w->work);
}

bool virtio_mmio_running(const struct virtio_mmio *t)
{
    return (t->status & VIRTIO_STATUS_DRIVER_OK) && !(t->status & VIRTIO_STATUS_NEEDS_RESET);
}

void virtio_mmio_config_changed(struct virtio_mmio *t)
{
    t->config_gen++;
    t->isr |= VIRTIO_INT_CONFIG;
    update_irq(t);
}

void virtio_mmio_fail(struct virtio_mmio *t, const char *why)
{
    if (t->status & VIRTIO_STATUS_NEEDS_RESET) return;
    /* A hostile guest can break queues in a loop: say so a few times, not without end. */
    if (t->fail_logged < 5)
        log_warn("virtio device %u: %s: the device needs a reset%s", t->ops->device_id, why,
                 ++t->fail_logged == 5 ? " (further reports of this device suppressed)" : "");
    t->status |= VIRTIO_STATUS_NEEDS_RESET;
    if (t->status & VIRTIO_STATUS_DRIVER_OK) {
        t->isr |= VIRTIO_INT_CONFIG;
        update_irq(t);
    }
}

int virtio_mmio_pop(struct virtio_mmio *t, unsigned q, struct vq_chain *c)
{
    if (q >= t->ops->nqueues || !virtio_mmio_running(t) || t->quiesced) return 0;
    int r = vq_pop(&t->vq[q], t->mem, c);
    if (r < 0) {
        virtio_mmio_fail(t, err_msg());
        return r;
    }
    if (r > 0) t->inflight++;
    return r;
}

void virtio_mmio_push(struct virtio_mmio *t, unsigned q, uint16_t head, uint32_t len)
{
    if (t->inflight) t->inflight--;
    if (t->inflight == 0) pthread_cond_broadcast(&t->idle);
    if (q >= t->ops->nqueues || !virtio_mmio_running(t)) return;
    struct virtq *vq = &t->vq[q];
    if (vq_push(vq, t->mem, head, len) < 0) {
        virtio_mmio_fail(t, err_msg());
        return;
    }
    if (vq_want_irq(vq, t->mem)) {
        t->isr |= VIRTIO_INT_USED;
        update_irq(t);
    }
}

static void do_reset(struct virtio_mmio *t)
{
    while (t->inflight)
        pthread_cond_wait(&t->idle, &t->lock);
    if (t->ops->reset) t->ops->reset(t->dev);
    t->status = 0;
    t->dev_features_sel = t->drv_features_sel = 0;
    t->drv_features = 0;
    t->queue_sel = 0;
    t->isr = 0;
    memset(t->vq, 0, sizeof(t->vq));
    update_irq(t);
}

static struct virtq *cur_queue(struct virtio_mmio *t)
{
    return t->queue_sel < t->ops->nqueues ? &t->vq[t->queue_sel] : NULL;
}

static uint32_t reg_read(struct virtio_mmio *t, uint64_t off)
{
    struct virtq *q = cur_queue(t);
    switch (off) {
    case VMMIO_MAGIC: return VIRTIO_MMIO_MAGIC;
    case VMMIO_VERSION: return VIRTIO_MMIO_VERSION;
    case VMMIO_DEVICE_ID: return t->ops->device_id;
    case VMMIO_VENDOR_ID: return VIRTIO_VENDOR_ID;
    case VMMIO_DEVICE_FEATURES:
        return t->dev_features_sel == 0   ? (uint32_t)t->host_features
               : t->dev_features_sel == 1 ? (uint32_t)(t->host_features >> 32)
                                          : 0;
    case VMMIO_QUEUE_NUM_MAX: return q ? VQ_MAX_SIZE : 0;
    case VMMIO_QUEUE_READY: return q ? q->ready : 0;
    case VMMIO_INTERRUPT_STATUS: return t->isr;
    case VMMIO_STATUS: return t->status;
    case VMMIO_SHM_LEN_LOW:
    case VMMIO_SHM_LEN_HIGH: return 0xffffffff; /* no shared memory regions: length -1 */
    case VMMIO_CONFIG_GENERATION: return t->config_gen;
    /* The spec does not define reads of these (write-only registers): 0, as is everything else
     * (the queue address registers are readable in practice: Linux does not read them). */
    case VMMIO_QUEUE_NUM: return q ? q->size : 0;
    case VMMIO_QUEUE_DESC_LOW: return q ? (uint32_t)q->desc : 0;
    case VMMIO_QUEUE_DESC_HIGH: return q ? (uint32_t)(q->desc >> 32) : 0;
    case VMMIO_QUEUE_DRIVER_LOW: return q ? (uint32_t)q->avail : 0;
    case VMMIO_QUEUE_DRIVER_HIGH: return q ? (uint32_t)(q->avail >> 32) : 0;
    case VMMIO_QUEUE_DEVICE_LOW: return q ? (uint32_t)q->used : 0;
    case VMMIO_QUEUE_DEVICE_HIGH: return q ? (uint32_t)(q->used >> 32) : 0;
    default: return 0;
    }
}

static void set_lo(uint64_t *a, uint32_t v)
{
    *a = (*a & ~0xffffffffull) | v;
}
static void set_hi(uint64_t *a, uint32_t v)
{
    *a = (*a & 0xffffffffull) | (uint64_t)v << 32;
}

static void write_status(struct virtio_mmio *t, uint32_t v)
{
    if (v == 0) {
        do_reset(t);
        return;
    }
    v &= 0xff;
    /* The driver sets bits; it never clears one except by a reset (3.1.1).  NEEDS_RESET is the
     * device's own bit. */
    uint32_t add = v & ~t->status & ~(uint32_t)VIRTIO_STATUS_NEEDS_RESET;
    if (add & VIRTIO_STATUS_FEATURES_OK) {
        /* Accept only a subset of what we offer that includes VERSION_1 (modern only). */
        if ((t->drv_features & ~t->host_features) ||
            !(t->drv_features & (1ull << VIRTIO_F_VERSION_1)))
            add &= ~(uint32_t)VIRTIO_STATUS_FEATURES_OK;
        else
            for (unsigned i = 0; i < VIRTIO_MAX_QUEUES; i++)
                t->vq[i].indirect = t->drv_features & (1ull << VIRTIO_F_INDIRECT_DESC);
    }
    if ((add & VIRTIO_STATUS_DRIVER_OK) && !(t->status & VIRTIO_STATUS_FEATURES_OK) &&
        !(add & VIRTIO_STATUS_FEATURES_OK))
        add &= ~(uint32_t)VIRTIO_STATUS_DRIVER_OK; /* DRIVER_OK before FEATURES_OK: refused */
    t->status |= add;
}

static void reg_write(struct virtio_mmio *t, uint64_t off, uint32_t v)
{
    struct virtq *q = cur_queue(t);
    bool feat_locked = t->status & VIRTIO_STATUS_FEATURES_OK;
    bool q_setup = q && !q->ready; /* 4.2.3.2: set up only while not ready */
    switch (off) {
    case VMMIO_DEVICE_FEATURES_SEL: t->dev_features_sel = v; break;
    case VMMIO_DRIVER_FEATURES_SEL: t->drv_features_sel = v; break;
    case VMMIO_DRIVER_FEATURES:
        if (feat_locked) break;
        if (t->drv_features_sel == 0) set_lo(&t->drv_features, v);
        if (t->drv_features_sel == 1) set_hi(&t->drv_features, v);
        break;
    case VMMIO_QUEUE_SEL: t->queue_sel = v; break;
    case VMMIO_QUEUE_NUM:
        if (q_setup) q->size = v <= VQ_MAX_SIZE ? (uint16_t)v : 0;
        break;
    case VMMIO_QUEUE_DESC_LOW:
        if (q_setup) set_lo(&q->desc, v);
        break;
    case VMMIO_QUEUE_DESC_HIGH:
        if (q_setup) set_hi(&q->desc, v);
        break;
    case VMMIO_QUEUE_DRIVER_LOW:
        if (q_setup) set_lo(&q->avail, v);
        break;
    case VMMIO_QUEUE_DRIVER_HIGH:
        if (q_setup) set_hi(&q->avail, v);
        break;
    case VMMIO_QUEUE_DEVICE_LOW:
        if (q_setup) set_lo(&q->used, v);
        break;
    case VMMIO_QUEUE_DEVICE_HIGH:
        if (q_setup) set_hi(&q->used, v);
        break;
    case VMMIO_QUEUE_READY:
        if (!q) break;
        if (v == 1 && !q->ready) {
            if (vq_check(q, t->mem) < 0) {
                virtio_mmio_fail(t, err_msg());
                break;
            }
            q->ready = true;
            q->last_avail = q->used_idx = 0;
        } else if (v == 0 && q->ready) {
            /* Taking a queue back: wait until no request of this device is in flight. */
            while (t->inflight)
                pthread_cond_wait(&t->idle, &t->lock);
            q->ready = false;
        }
        break;
    case VMMIO_QUEUE_NOTIFY:
        /* v is the queue index (no VIRTIO_F_NOTIFICATION_DATA) */
        if (v < t->ops->nqueues && t->vq[v].ready && virtio_mmio_running(t) && t->ops->notify)
            t->ops->notify(t->dev, v);
        break;
    case VMMIO_INTERRUPT_ACK:
        t->isr &= ~v;
        update_irq(t);
        break;
    case VMMIO_STATUS: write_status(t, v); break;
    case VMMIO_SHM_SEL: break;
    default: break; /* read-only or reserved: ignored */
    }
}

static void mmio_read(void *opaque, uint64_t off, uint8_t *data, unsigned size)
{
    struct virtio_mmio *t = opaque;
    memset(data, 0, size);
    pthread_mutex_lock(&t->lock);
    if (off < VMMIO_CONFIG) {
        if (size == 4 && !(off & 3)) {
            uint32_t v = reg_read(t, off);
            memcpy(data, &v, 4);
        }
    } else {
        uint64_t c = off - VMMIO_CONFIG;
        if ((size == 1 || size == 2 || size == 4) && c < t->ops->config_size &&
            size <= t->ops->config_size - c && t->ops->config_read)
            t->ops->config_read(t->dev, (uint32_t)c, data, size);
    }
    pthread_mutex_unlock(&t->lock);
}

static void mmio_write(void *opaque, uint64_t off, const uint8_t *data, unsigned size)
{
    struct virtio_mmio *t = opaque;
    pthread_mutex_lock(&t->lock);
    if (off < VMMIO_CONFIG) {
        if (size == 4 && !(off & 3)) reg_write(t, off, (uint32_t)dev_le_value(data, 4));
    } else {
        uint64_t c = off - VMMIO_CONFIG;
        if ((size == 1 || size == 2 || size == 4) && c < t->ops->config_size &&
            size <= t->ops->config_size - c && t->ops->config_write)
            t->ops->config_write(t->dev, (uint32_t)c, data, size);
    }
    pthread_mutex_unlock(&t->lock);
}

const struct bus_ops virtio_mmio_bus_ops = {.read = mmio_read, .write = mmio_write};

void virtio_mmio_get_state(struct virtio_mmio *t, struct virtio_mmio_state *s)
{
    memset(s, 0, sizeof(*s));
    pthread_mutex_lock(&t->lock);
    s->status = t->status;
    s->dev_features_sel = t->dev_features_sel;
    s->drv_features_sel = t->drv_features_sel;
    s->queue_sel = t->queue_sel;
    s->isr = t->isr;
    s->config_gen = t->config_gen;
    s->drv_features = t->drv_features;
    for (unsigned i = 0; i < VIRTIO_MAX_QUEUES; i++) {
        const struct virtq *q = &t->vq[i];
        s->vq[i].size = q->size;
        s->vq[i].last_avail = q->last_avail;
        s->vq[i].used_idx = q->used_idx;
        s->vq[i].ready = q->ready;
        s->vq[i].desc = q->desc;
        s->vq[i].avail = q->avail;
        s->vq[i].used = q->used;
    }
    pthread_mutex_unlock(&t->lock);
}

/* The invariants the register interface itself maintains, and no more: a state this device can
 * reach must restore (tests/integration/test_snapshot.py snapshots the hostile driver to check). */
int virtio_mmio_check_state(const struct virtio_mmio *t, const struct virtio_mmio_state *s)
{
    bool feat_ok = s->status & VIRTIO_STATUS_FEATURES_OK;
    /* before FEATURES_OK the driver-features register holds whatever the driver wrote */
    if (feat_ok && (s->drv_features & ~t->host_features))
        return err_set(EINVAL, "driver features %#llx were not offered by this device",
                       (unsigned long long)(s->drv_features & ~t->host_features));
    if (s->status & ~0xffu) return err_set(EINVAL, "status %#x has reserved bits", s->status);
    if ((s->status & VIRTIO_STATUS_DRIVER_OK) && !feat_ok)
        return err_set(EINVAL, "status %#x: DRIVER_OK without FEATURES_OK", s->status);
    if (feat_ok && !(s->drv_features & (1ull << VIRTIO_F_VERSION_1)))
        return err_set(EINVAL, "status %#x: FEATURES_OK without VERSION_1", s->status);
    if (s->isr & ~3u) return err_set(EINVAL, "interrupt status %#x has reserved bits", s->isr);
    bool running =
        (s->status & VIRTIO_STATUS_DRIVER_OK) && !(s->status & VIRTIO_STATUS_NEEDS_RESET);
    for (unsigned i = 0; i < VIRTIO_MAX_QUEUES; i++) {
        const typeof(s->vq[0]) *v = &s->vq[i];
        if (i >= t->ops->nqueues) {
            if (v->size || v->ready || v->desc || v->avail || v->used || v->last_avail ||
                v->used_idx)
                return err_set(EINVAL, "queue %u: set up, but the device has %u queue%s", i,
                               t->ops->nqueues, t->ops->nqueues == 1 ? "" : "s");
            continue;
        }
        if (v->ready > 1) return err_set(EINVAL, "queue %u: ready is %u", i, v->ready);
        if (v->size > VQ_MAX_SIZE)
            return err_set(EINVAL, "queue %u: size %u is over %u", i, v->size, VQ_MAX_SIZE);
        if (!v->ready) continue; /* set-up registers in progress: checked when made ready */
        struct virtq q = {.size = v->size, .desc = v->desc, .avail = v->avail, .used = v->used};
        if (vq_check(&q, t->mem) < 0) return err_wrap(-EINVAL, "queue %u", i);
        /* quiesced, a running device has completed every chain it popped (a broken one may
         * have popped a chain it then refused) */
        if (running && v->last_avail != v->used_idx)
            return err_set(EINVAL,
                           "queue %u: %u request%s in flight (avail %u, used %u): a snapshot is "
                           "taken with none",
                           i, (uint16_t)(v->last_avail - v->used_idx),
                           (uint16_t)(v->last_avail - v->used_idx) == 1 ? "" : "s", v->last_avail,
                           v->used_idx);
    }
    return 0;
}

int virtio_mmio_set_state(struct virtio_mmio *t, const struct virtio_mmio_state *s)
{
    int r = virtio_mmio_check_state(t, s);
    if (r < 0) return err_wrap(r, "virtio state");
    pthread_mutex_lock(&t->lock);
    while (t->inflight)
        pthread_cond_wait(&t->idle, &t->lock);
    t->status = s->status;
    t->dev_features_sel = s->dev_features_sel;
    t->drv_features_sel = s->drv_features_sel;
    t->queue_sel = s->queue_sel;
    t->isr = s->isr;
    t->config_gen = s->config_gen;
    t->drv_features = s->drv_features;
    for (unsigned i = 0; i < VIRTIO_MAX_QUEUES; i++) {
        struct virtq *q = &t->vq[i];
        q->size = s->vq[i].size;
        q->last_avail = s->vq[i].last_avail;
        q->used_idx = s->vq[i].used_idx;
        q->ready = s->vq[i].ready;
        q->desc = s->vq[i].desc;
        q->avail = s->vq[i].avail;
        q->used = s->vq[i].used;
        q->indirect = (s->status & VIRTIO_STATUS_FEATURES_OK) &&
                      (s->drv_features & (1ull << VIRTIO_F_INDIRECT_DESC));
    }
    /* set the line whatever level it had: the interrupt controller's state was replaced too */
    t->irq_level = t->isr != 0;
    irq_line_set(&t->irq, t->irq_level);
    pthread_mutex_unlock(&t->lock);
    return 0;
}

void virtio_mmio_quiesce(struct virtio_mmio *t, bool on)
{
    pthread_mutex_lock(&t->lock);
    if (on) {
        t->quiesced = true;
        while (t->inflight)
            pthread_cond_wait(&t->idle, &t->lock);
    } else if (t->quiesced) {
        t->quiesced = false;
        for (unsigned q = 0; q < t->ops->nqueues; q++)
            if (t->vq[q].ready && virtio_mmio_running(t) && t->ops->notify)
                t->ops->notify(t->dev, q);
    }
    pthread_mutex_unlock(&t->lock);
}
