/* libFuzzer harness for the virtio-mmio register interface: the input's first 4 KiB become guest
 * RAM at 0x1000 (where the driver's rings may point), the rest is a program of register accesses
 * (any offset in the 4 KiB window and beyond, sizes 1/2/4/8, reads and writes) against an
 * entropy device and a disk whose requests run inline (the disk on a memfd image), so every run
 * is deterministic.  Nothing may crash or
 * touch memory outside RAM, and the interrupt line must always equal (InterruptStatus != 0).
 * At the end, each device's state must pass the snapshot check (every reachable state restores)
 * and set on a fresh device read back identical.
 * Build and run: tests/fuzz/run.sh. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "devices/virtio/blk.h"
#include "devices/virtio/mmio.h"
#include "devices/virtio/rng.h"
#include "mem/guest.h"
#include "util/log.h"

static struct guest_mem mem;
static struct blk_backend be;
static int level[2];

static void fz_irq(void *ctx, unsigned gsi, int l)
{
    level[gsi & 1] = l;
}

/* A disk whose notify processes requests inline (deterministic, unlike the worker thread). */
struct inline_blk {
    struct virtio_mmio t;
    struct vq_chain chain;
};
static struct inline_blk iblk, iblk2;
static void iblk_notify(void *dev, unsigned q)
{
    struct inline_blk *d = dev;
    for (int i = 0; i < 64 && virtio_mmio_pop(&d->t, 0, &d->chain) > 0; i++) {
        uint32_t used = 0;
        (void)blk_process(&be, d->t.mem, &d->chain, &used);
        virtio_mmio_push(&d->t, 0, d->chain.head, used);
    }
}
/* The entropy device, also inline (the real one serves requests on its own thread). */
static struct inline_blk irng, irng2;
static void irng_notify(void *dev, unsigned q)
{
    struct inline_blk *d = dev;
    for (int i = 0; i < 64 && virtio_mmio_pop(&d->t, 0, &d->chain) > 0; i++)
        virtio_mmio_push(&d->t, 0, d->chain.head, rng_process(d->t.mem, &d->chain));
}
static const struct virtio_dev_ops irng_ops = {
    .device_id = VIRTIO_ID_RNG, .nqueues = 1, .notify = irng_notify};
static uint8_t iblk_cfg[VIRTIO_BLK_CONFIG_SIZE];
static void iblk_cfg_read(void *dev, uint32_t off, uint8_t *data, unsigned len)
{
    if (off > sizeof(iblk_cfg) || len > sizeof(iblk_cfg) - off) abort(); /* transport bound */
    memcpy(data, iblk_cfg + off, len);
}
static const struct virtio_dev_ops iblk_ops = {.device_id = VIRTIO_ID_BLOCK,
                                               .nqueues = 1,
                                               .config_size = VIRTIO_BLK_CONFIG_SIZE,
                                               .config_read = iblk_cfg_read,
                                               .notify = iblk_notify};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!mem.base) {
        if (guest_mem_init(&mem, GUEST_MEM_MIN) < 0) abort();
        be.fd = memfd_create("fuzz-disk", 0);
        if (be.fd < 0 || ftruncate(be.fd, 64 * 512) < 0) abort();
        be.sectors = 64;
        log_threshold = LOG_ERROR; /* needs-reset warnings are expected here */
    }
    memset(mem.base, 0, 0x10000);
    size_t ram = size < 4096 ? size : 4096;
    memcpy(mem.base + 0x1000, data, ram);
    data += ram;
    size -= ram;
    level[0] = level[1] = 0;
    virtio_mmio_init(&irng.t, &mem, (struct irq_line){fz_irq, NULL, 0}, &irng_ops, &irng, 0);
    virtio_mmio_init(&iblk.t, &mem, (struct irq_line){fz_irq, NULL, 1}, &iblk_ops, &iblk,
                     1ull << VIRTIO_BLK_F_FLUSH);
    struct virtio_mmio *t[2] = {&irng.t, &iblk.t};
    static const unsigned sizes[4] = {1, 2, 4, 8};
    while (size >= 8) {
        uint8_t op = data[0];
        uint16_t off = (uint16_t)(data[1] | data[2] << 8);
        uint32_t v;
        memcpy(&v, data + 4, 4);
        data += 8;
        size -= 8;
        unsigned dev = op & 1, sz = sizes[(op >> 1) & 3];
        uint8_t buf[8] = {0};
        /* bias towards the real registers: most offsets are aligned words below 0x140 */
        if (op & 0x40) off = (uint16_t)((off % 0x50) * 4);
        if (off + sz > VIRTIO_MMIO_SIZE) continue; /* the bus never passes these */
        if (op & 0x08) {
            memcpy(buf, &v, 4);
            virtio_mmio_bus_ops.write(t[dev], off, buf, sz);
        } else {
            virtio_mmio_bus_ops.read(t[dev], off, buf, sz);
        }
        for (int k = 0; k < 2; k++)
            if (level[k] != (t[k]->isr != 0)) abort();
    }
    /* snapshots: every state the register interface can reach must pass the load-time check
     * and come back identical on a fresh device */
    for (int k = 0; k < 2; k++) {
        struct virtio_mmio_state st, st2;
        virtio_mmio_get_state(t[k], &st);
        if (virtio_mmio_check_state(t[k], &st) < 0) abort();
        struct inline_blk *fresh = k ? &iblk2 : &irng2;
        virtio_mmio_init(&fresh->t, &mem, (struct irq_line){fz_irq, NULL, (unsigned)k},
                         k ? &iblk_ops : &irng_ops, fresh, k ? 1ull << VIRTIO_BLK_F_FLUSH : 0);
        if (virtio_mmio_set_state(&fresh->t, &st) < 0) abort();
        virtio_mmio_get_state(&fresh->t, &st2);
        if (memcmp(&st, &st2, sizeof(st))) abort();
        virtio_mmio_destroy(&fresh->t);
    }
    virtio_mmio_destroy(&irng.t);
    virtio_mmio_destroy(&iblk.t);
    return 0;
}
