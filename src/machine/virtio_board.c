/* Virtio slots of the board (see virtio_board.h).  Trusts the parsed device list. */
#include "machine/virtio_board.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/cpu.h"
#include "devices/devutil.h"
#include "devices/virtio/blk.h"
#include "devices/virtio/net.h"
#include "devices/virtio/rng.h"
#include "snapshot/codec.h"
#include "snapshot/snapshot.h"
#include "util/log.h"

struct vslot {
    enum vdev_kind kind;
    void *dev;
    struct virtio_mmio *t;
    bool registered; /* with the snapshot registry */
    char name[SNAP_NAME_LEN + 1];
    struct snap_device_ops ops;
};

struct virtio_board {
    unsigned n;
    struct vslot slot[LAYOUT_VIRTIO_MAX];
};

/* ---- snapshot sections: one per slot, "virtioN-blk" / "-net" / "-rng" ----------------------- */

static int vs_save(void *opaque, struct snap_writer *w)
{
    struct vslot *v = opaque;
    static struct virtio_dev_state s; /* large (the path); the VM is paused: one user */
    switch (v->kind) {
    case VDEV_BLK: virtio_blk_get_state(v->dev, &s); break;
    case VDEV_NET: virtio_net_get_state(v->dev, &s); break;
    case VDEV_RNG: virtio_rng_get_state(v->dev, &s); break;
    }
    snap_enc_virtio(w, &s);
    return 0;
}

static int vs_decode_check(struct vslot *v, const struct snap_section *sec,
                           struct virtio_dev_state *s)
{
    if (sec->version != SNAP_V_VIRTIO)
        return err_set(EINVAL, "version %u, this lookout reads version %u", sec->version,
                       SNAP_V_VIRTIO);
    int r = snap_dec_virtio(sec, s);
    if (r < 0) return r;
    switch (v->kind) {
    case VDEV_BLK: return virtio_blk_check_state(v->dev, s, snap_restore_forced());
    case VDEV_NET: return virtio_net_check_state(v->dev, s);
    case VDEV_RNG: return virtio_rng_check_state(v->dev, s);
    }
    return -EINVAL;
}

static int vs_check(void *opaque, const struct snap_section *sec)
{
    static struct virtio_dev_state s;
    return vs_decode_check(opaque, sec, &s);
}

static int vs_load(void *opaque, const struct snap_section *sec)
{
    struct vslot *v = opaque;
    static struct virtio_dev_state s;
    int r = snap_dec_virtio(sec, &s);
    if (r < 0) return r;
    switch (v->kind) {
    case VDEV_BLK: return virtio_blk_set_state(v->dev, &s);
    case VDEV_NET: return virtio_net_set_state(v->dev, &s);
    case VDEV_RNG: return virtio_rng_set_state(v->dev, &s);
    }
    return -EINVAL;
}

static void vs_quiesce(void *opaque, bool on)
{
    struct vslot *v = opaque;
    virtio_mmio_quiesce(v->t, on);
}

static int vs_register(struct vm *vm, struct vslot *v, unsigned i)
{
    static const char *const kind_name[] = {
        [VDEV_BLK] = "blk", [VDEV_NET] = "net", [VDEV_RNG] = "rng"};
    snprintf(v->name, sizeof(v->name), "virtio%u-%s", i, kind_name[v->kind]);
    v->ops = (struct snap_device_ops){.name = v->name,
                                      .version = SNAP_V_VIRTIO,
                                      .save = vs_save,
                                      .check = vs_check,
                                      .load = vs_load,
                                      .quiesce = vs_quiesce};
    int r = snap_register_device(vm, &v->ops, v);
    if (r == 0) v->registered = true;
    return r;
}

static void destroy_dev(enum vdev_kind k, void *dev)
{
    switch (k) {
    case VDEV_BLK: virtio_blk_destroy(dev); break;
    case VDEV_NET: virtio_net_destroy(dev); break;
    case VDEV_RNG: virtio_rng_destroy(dev); break;
    }
}

struct virtio_board *virtio_board_attach(struct vm *vm, const struct vdev_list *l)
{
    struct virtio_board *vb = calloc(1, sizeof(*vb));
    if (!vb) {
        err_set(ENOMEM, "out of memory");
        return NULL;
    }
    for (unsigned i = 0; l && i < l->n && i < VDEV_MAX; i++) {
        const struct vdev_spec *s = &l->d[i];
        struct irq_line irq = {.set = vm_irq_set, .ctx = vm, .gsi = LAYOUT_VIRTIO_GSI + i};
        void *dev = NULL;
        struct virtio_mmio *t = NULL;
        switch (s->kind) {
        case VDEV_BLK: {
            struct blk_opts o = {.path = s->path,
                                 .ro = s->ro,
                                 .bw = s->bw,
                                 .iops = s->iops,
                                 .burst_ms = s->burst_ms};
            struct virtio_blk *d = virtio_blk_create(&vm->mem, irq, &o);
            if (d) t = virtio_blk_transport(d);
            dev = d;
            break;
        }
        case VDEV_NET: {
            struct virtio_net *d = virtio_net_create(&vm->mem, irq, s, i);
            if (d) t = virtio_net_transport(d);
            dev = d;
            break;
        }
        case VDEV_RNG: {
            struct virtio_rng *d = virtio_rng_create(&vm->mem, irq, s->bw);
            if (d) t = virtio_rng_transport(d);
            dev = d;
            break;
        }
        }
        if (!dev) {
            err_wrap(-EIO, "virtio device %u", i);
            goto fail;
        }
        uint64_t base = LAYOUT_VIRTIO_BASE + i * LAYOUT_VIRTIO_STRIDE;
        int r = bus_register(&vm->mmio, base, VIRTIO_MMIO_SIZE, &virtio_mmio_bus_ops, t, "virtio");
        if (r < 0) {
            destroy_dev(s->kind, dev);
            err_wrap(r, "registering virtio device %u at %#llx", i, (unsigned long long)base);
            goto fail;
        }
        vb->slot[i].kind = s->kind;
        vb->slot[i].dev = dev;
        vb->slot[i].t = t;
        vb->n = i + 1;
        if ((r = vs_register(vm, &vb->slot[i], i)) < 0) {
            err_wrap(r, "virtio device %u: snapshot section", i);
            goto fail;
        }
    }
    return vb;
fail:
    virtio_board_detach(vm, vb);
    return NULL;
}

void virtio_board_acpi(const struct virtio_board *vb, struct acpi_config *cfg)
{
    cfg->nvirtio = vb ? vb->n : 0;
    for (unsigned i = 0; i < cfg->nvirtio; i++) {
        cfg->virtio[i].base = LAYOUT_VIRTIO_BASE + i * LAYOUT_VIRTIO_STRIDE;
        cfg->virtio[i].size = VIRTIO_MMIO_SIZE;
        cfg->virtio[i].gsi = LAYOUT_VIRTIO_GSI + i;
    }
}

void virtio_board_detach(struct vm *vm, struct virtio_board *vb)
{
    if (!vb) return;
    for (unsigned i = 0; i < vb->n; i++) {
        if (!vb->slot[i].dev) continue;
        if (vb->slot[i].registered) snap_unregister_device(vm, &vb->slot[i]);
        dev_unregister(&vm->mmio, &virtio_mmio_bus_ops, vb->slot[i].t);
        destroy_dev(vb->slot[i].kind, vb->slot[i].dev);
    }
    free(vb);
}

unsigned virtio_board_count(const struct virtio_board *vb)
{
    return vb ? vb->n : 0;
}

void *virtio_board_device(const struct virtio_board *vb, unsigned slot, enum vdev_kind *kind)
{
    if (!vb || slot >= vb->n) return NULL;
    if (kind) *kind = vb->slot[slot].kind;
    return vb->slot[slot].dev;
}
