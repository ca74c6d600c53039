/* libFuzzer harness for the split-virtqueue walker and the request parsers behind it.  The input
 * is copied into guest RAM as the descriptor table, available ring and buffers of one queue (its
 * size and the indirect-descriptor feature come from the first byte; a mode bit folds descriptor
 * addresses into RAM so chains get deep).  Every chain popped goes through the virtio-blk
 * executor (on a small memfd image), the rng filler and the net transmit/receive parsers, then is
 * returned on the used ring.  Nothing may crash, touch memory outside guest RAM (ASan), hang, or
 * accept a chain whose segments are not all inside RAM.  Build and run: tests/fuzz/run.sh. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "devices/virtio/blk.h"
#include "devices/virtio/net.h"
#include "devices/virtio/rng.h"
#include "devices/virtio/virtq.h"
#include "mem/guest.h"
#include "util/log.h"

#define RING_BASE 0x1000ull
#define RING_SPAN 0x20000ull /* what the input may cover, and what is wiped between inputs */

static struct guest_mem mem;
static struct blk_backend be;
static struct vq_chain chain;
static uint8_t frame[VNET_MAX_FRAME];

static void init_once(void)
{
    if (mem.base) return;
    if (guest_mem_init(&mem, GUEST_MEM_MIN) < 0) abort();
    be.fd = memfd_create("fuzz-disk", 0);
    if (be.fd < 0 || ftruncate(be.fd, 64 * 512) < 0) abort();
    be.sectors = 64;
    memcpy(be.id, "fuzz", 4);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    init_once();
    if (size < 2) return 0;
    memset(mem.base + RING_BASE, 0, RING_SPAN);
    uint8_t ctl = data[0];
    data++;
    size--;
    memcpy(mem.base + RING_BASE, data, size < RING_SPAN ? size : RING_SPAN);

    struct virtq q = {0};
    q.size = (uint16_t)(1u << (ctl & 7)); /* 1..128 */
    q.ready = true;
    q.indirect = ctl & 0x08;
    q.desc = RING_BASE;
    q.avail = RING_BASE + 16ull * q.size;
    q.used = (q.avail + 6 + 2ull * q.size + 3) & ~3ull;
    be.ro = ctl & 0x20;
    if (ctl & 0x10) { /* fold addresses into the first 16 MiB so they usually hit RAM */
        for (unsigned i = 0; i < q.size; i++) {
            uint64_t a;
            memcpy(&a, mem.base + q.desc + 16ull * i, 8);
            a &= GUEST_MEM_MIN - 1;
            memcpy(mem.base + q.desc + 16ull * i, &a, 8);
        }
    }
    if (vq_check(&q, &mem) < 0) return 0;
    for (int n = 0; n < 64; n++) {
        int r = vq_pop(&q, &mem, &chain);
        if (r <= 0) break;
        /* the walker's promise: every segment lies in RAM */
        for (unsigned i = 0; i < chain.nout + chain.nin; i++)
            if (!guest_ptr(&mem, chain.seg[i].addr, chain.seg[i].len)) abort();
        uint32_t used = 0;
        switch ((ctl >> 6) & 3) {
        case 0: (void)blk_process(&be, &mem, &chain, &used); break;
        case 1: used = rng_process(&mem, &chain); break;
        case 2: (void)vnet_tx_parse(&mem, &chain, frame); break;
        case 3: {
            size_t flen = size < 1514 ? size : 1514;
            uint8_t flags = vnet_l4_csum_valid(data, flen) ? VNET_HDR_F_DATA_VALID : 0;
            long w = vnet_rx_fill_flags(&mem, &chain, data, flen, flags);
            used = w < 0 ? 0 : (uint32_t)w;
            break;
        }
        }
        if (used > chain.in_len) abort(); /* never claim more than the chain holds */
        if (vq_push(&q, &mem, chain.head, used) < 0) break;
    }
    return 0;
}
