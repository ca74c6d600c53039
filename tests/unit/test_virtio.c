/* Unit tests for the virtio devices against a real guest RAM the test owns: the split-virtqueue
 * walker (loops, out-of-range and wrapping addresses, huge lengths, wrong directions, indices out
 * of range, indirect tables), the virtio-blk request parser and executor on a temporary image,
 * the rng and net chain parsers, the virtio-mmio register interface (sizes, offsets, feature
 * negotiation, status, needs-reset, interrupts, state round trip) and the option parser. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "devices/virtio/blk.h"
#include "devices/virtio/config.h"
#include "devices/virtio/mmio.h"
#include "devices/virtio/net.h"
#include "devices/virtio/ratelimit.h"
#include "devices/virtio/rng.h"
#include "devices/virtio/virtq.h"
#include "snapshot/codec.h"
#include "vring_builder.h"

#define MEM (16ull << 20)
#define W   VIRTQ_DESC_F_WRITE
#define N   VIRTQ_DESC_F_NEXT
#define IND VIRTQ_DESC_F_INDIRECT

static struct guest_mem mem;
static struct vrb vb;
static struct vq_chain chain;

static int setup(void **state)
{
    assert_int_equal(guest_mem_init(&mem, MEM), 0);
    vrb_init(&vb, &mem, 8);
    return 0;
}

static int teardown(void **state)
{
    guest_mem_destroy(&mem);
    return 0;
}

/* ---- virtqueue walker ---- */

static void test_simple_chain(void **state)
{
    assert_int_equal(vq_pop(&vb.q, &mem, &chain), 0); /* empty */
    vrb_desc(&vb, 0, VRB_BUF, 16, N, 1);
    vrb_desc(&vb, 1, VRB_BUF + 0x1000, 100, N, 2);
    vrb_desc(&vb, 2, VRB_BUF + 0x2000, 1, W, 0);
    vrb_publish(&vb, 0);
    assert_int_equal(vq_pop(&vb.q, &mem, &chain), 1);
    assert_int_equal(chain.head, 0);
    assert_int_equal(chain.nout, 2);
    assert_int_equal(chain.nin, 1);
    assert_int_equal(chain.out_len, 116);
    assert_int_equal(chain.in_len, 1);
    assert_int_equal(vq_pop(&vb.q, &mem, &chain), 0);
    assert_int_equal(vq_push(&vb.q, &mem, 0, 1), 0);
    assert_int_equal(vrb_used_idx(&vb), 1);
    uint32_t id, len;
    vrb_used_elem(&vb, 0, &id, &len);
    assert_int_equal(id, 0);
    assert_int_equal(len, 1);
}

static void test_loop(void **state)
{
    vrb_desc(&vb, 0, VRB_BUF, 16, N, 1);
    vrb_desc(&vb, 1, VRB_BUF, 16, N, 0);
    vrb_publish(&vb, 0);
    assert_int_equal(vq_pop(&vb.q, &mem, &chain), -EPROTO);
}

static void test_self_loop(void **state)
{
    vrb_desc(&vb, 3, VRB_BUF, 16, N, 3);
    vrb_publish(&vb, 3);
    assert_int_equal(vq_pop(&vb.q, &mem, &chain), -EPROTO);
}

static void test_out_of_ram(void **state)
{
    vrb_desc(&vb, 0, MEM - 8, 16, 0, 0); /* straddles the end of RAM */
    vrb_publish(&vb, 0);
    assert_int_equal(vq_pop(&vb.q, &mem, &chain), -EPROTO);
    vrb_desc(&vb, 1, 0xfffffffffffffff0ull, 0x20, 0, 0); /* wraps around */
    vrb_publish(&vb, 1);
    assert_int_equal(vq_pop(&vb.q, &mem, &chain), -EPROTO);
    vrb_desc(&vb, 2, 0xd0000000ull, 4, W, 0); /* MMIO, not RAM */
    vrb_publish(&vb, 2);
    assert_int_equal(vq_pop(&vb.q, &mem, &chain), -EPROTO);
}

static void test_huge_and_zero_len(void **state)
{
    vrb_desc(&vb, 0, VRB_BUF, 0xffffffffu, 0, 0);
    vrb_publish(&vb, 0);
    assert_int_equal(vq_pop(&vb.q, &mem, &chain), -EPROTO);
    vrb_desc(&vb, 1, VRB_BUF, 0, N, 2); /* zero length: allowed, contributes nothing */
    vrb_desc(&vb, 2, VRB_BUF, 4, W, 0);
    vrb_publish(&vb, 1);
    assert_int_equal(vq_pop(&vb.q, &mem, &chain), 1);
    assert_int_equal(chain.nout + chain.nin, 1);
    assert_int_equal(chain.in_len, 4);
}

static void test_indices_out_of_range(void **state)
{
    vrb_desc(&vb, 0, VRB_BUF, 16, N, 8); /* next == size */
    vrb_publish(&vb, 0);
    assert_int_equal(vq_pop(&vb.q, &mem, &chain), -EPROTO);
    vrb_publish(&vb, 9); /* head >= size */
    assert_int_equal(vq_pop(&vb.q, &mem, &chain), -EPROTO);
}

static void test_avail_jump(void **state)
{
    vrb_desc(&vb, 0, VRB_BUF, 16, 0, 0);
    vrb_set_avail_idx(&vb, 9); /* 9 new entries on a queue of 8 */
    assert_int_equal(vq_pop(&vb.q, &mem, &chain), -EPROTO);
    /* wrap-around of the free-running index is fine */
    vrb_init(&vb, &mem, 8);
    vb.q.last_avail = 0xffff;
    vb.avail_idx = 0xffff;
    vrb_desc(&vb, 0, VRB_BUF, 16, 0, 0);
    vrb_publish(&vb, 0);
    assert_int_equal(vq_pop(&vb.q, &mem, &chain), 1);
    assert_int_equal(vb.q.last_avail, 0);
}

static void test_direction_order(void **state)
{
    vrb_desc(&vb, 0, VRB_BUF, 16, W | N, 1);
    vrb_desc(&vb, 1, VRB_BUF, 16, N, 2); /* readable after writable */
    vrb_desc(&vb, 2, VRB_BUF, 1, W, 0);
    vrb_publish(&vb, 0);
    assert_int_equal(vq_pop(&vb.q, &mem, &chain), -EPROTO);
}

static void test_indirect(void **state)
{
    uint64_t t = VRB_BUF + 0x8000;
    vrb_desc_at(&mem, t, 0, VRB_BUF, 16, N, 1);
    vrb_desc_at(&mem, t, 1, VRB_BUF + 0x100, 512, W | N, 2);
    vrb_desc_at(&mem, t, 2, VRB_BUF + 0x400, 1, W, 0);
    vrb_desc(&vb, 0, t, 48, IND, 0);
    vrb_publish(&vb, 0);
    assert_int_equal(vq_pop(&vb.q, &mem, &chain), 1);
    assert_int_equal(chain.nout, 1);
    assert_int_equal(chain.nin, 2);
    assert_int_equal(chain.in_len, 513);

    /* not a multiple of 16 */
    vrb_desc(&vb, 1, t, 40, IND, 0);
    vrb_publish(&vb, 1);
    assert_int_equal(vq_pop(&vb.q, &mem, &chain), -EPROTO);
    /* next out of the table */
    vrb_desc_at(&mem, t, 2, VRB_BUF + 0x400, 1, W | N, 3);
    vrb_desc(&vb, 2, t, 48, IND, 0);
    vrb_publish(&vb, 2);
    assert_int_equal(vq_pop(&vb.q, &mem, &chain), -EPROTO);
    /* loop inside the table */
    vrb_desc_at(&mem, t, 2, VRB_BUF + 0x400, 1, W | N, 1);
    vrb_desc(&vb, 3, t, 48, IND, 0);
    vrb_publish(&vb, 3);
    assert_int_equal(vq_pop(&vb.q, &mem, &chain), -EPROTO);
    /* nested */
    vrb_desc_at(&mem, t, 0, t, 48, IND, 0);
    vrb_desc(&vb, 4, t, 48, IND, 0);
    vrb_publish(&vb, 4);
    assert_int_equal(vq_pop(&vb.q, &mem, &chain), -EPROTO);
    /* INDIRECT with NEXT */
    vrb_desc_at(&mem, t, 0, VRB_BUF, 16, 0, 0);
    vrb_desc(&vb, 5, t, 16, IND | N, 6);
    vrb_publish(&vb, 5);
    assert_int_equal(vq_pop(&vb.q, &mem, &chain), -EPROTO);
    /* table outside RAM, and an empty table */
    vrb_desc(&vb, 6, MEM - 16, 32, IND, 0);
    vrb_publish(&vb, 6);
    assert_int_equal(vq_pop(&vb.q, &mem, &chain), -EPROTO);
    vrb_desc(&vb, 7, t, 0, IND, 0);
    vrb_publish(&vb, 7);
    assert_int_equal(vq_pop(&vb.q, &mem, &chain), -EPROTO);
}

static void test_indirect_not_negotiated(void **state)
{
    vb.q.indirect = false;
    vrb_desc_at(&mem, VRB_BUF + 0x8000, 0, VRB_BUF, 16, 0, 0);
    vrb_desc(&vb, 0, VRB_BUF + 0x8000, 16, IND, 0);
    vrb_publish(&vb, 0);
    assert_int_equal(vq_pop(&vb.q, &mem, &chain), -EPROTO);
}

static void test_vq_check(void **state)
{
    assert_int_equal(vq_check(&vb.q, &mem), 0);
    struct virtq q = vb.q;
    q.size = 6; /* not a power of two */
    assert_int_equal(vq_check(&q, &mem), -EINVAL);
    q = vb.q;
    q.size = 512;
    assert_int_equal(vq_check(&q, &mem), -EINVAL);
    q = vb.q;
    q.desc += 8; /* misaligned */
    assert_int_equal(vq_check(&q, &mem), -EINVAL);
    q = vb.q;
    q.used = MEM - 8;
    assert_int_equal(vq_check(&q, &mem), -EINVAL);
}

static void test_copy_helpers(void **state)
{
    vrb_desc(&vb, 0, VRB_BUF, 3, N, 1);
    vrb_desc(&vb, 1, VRB_BUF + 0x100, 5, N, 2);
    vrb_desc(&vb, 2, VRB_BUF + 0x200, 4, W, 0);
    memcpy(mem.base + VRB_BUF, "abc", 3);
    memcpy(mem.base + VRB_BUF + 0x100, "defgh", 5);
    vrb_publish(&vb, 0);
    assert_int_equal(vq_pop(&vb.q, &mem, &chain), 1);
    char buf[16] = {0};
    assert_int_equal(vq_copy_from(&mem, &chain, 2, buf, 16), 6);
    assert_string_equal(buf, "cdefgh");
    assert_int_equal(vq_copy_to(&mem, &chain, 1, "xyzw", 4), 3); /* 4 writable bytes */
    assert_memory_equal(mem.base + VRB_BUF + 0x201, "xyz", 3);
}

/* ---- virtio-blk ---- */

static struct blk_backend be;
static char img[64];

static int blk_setup(void **state)
{
    setup(state);
    strcpy(img, "/tmp/lookout-vblk-XXXXXX");
    be.fd = mkstemp(img);
    assert_true(be.fd >= 0);
    assert_int_equal(ftruncate(be.fd, 1 << 20), 0);
    be.sectors = (1 << 20) / 512;
    be.ro = false;
    memcpy(be.id, "test-disk", 10);
    return 0;
}

static int blk_teardown(void **state)
{
    close(be.fd);
    unlink(img);
    return teardown(state);
}

#define HDR  (VRB_BUF)
#define DATA (VRB_BUF + 0x1000)
#define STAT (VRB_BUF + 0x800)

static void put_hdr(uint32_t type, uint64_t sector)
{
    uint8_t h[16] = {0};
    memcpy(h, &type, 4);
    memcpy(h + 8, &sector, 8);
    guest_write(&mem, HDR, h, 16);
}

/* header(16, readable) + data (readable for OUT, writable for IN) + status(1, writable) */
static int run_req(uint32_t type, uint64_t sector, uint32_t dlen, bool data_writable,
                   uint32_t *used)
{
    put_hdr(type, sector);
    mem.base[STAT] = 0xee;
    vrb_init(&vb, &mem, 8);
    if (dlen) {
        vrb_desc(&vb, 0, HDR, 16, N, 1);
        vrb_desc(&vb, 1, DATA, dlen, (data_writable ? W : 0) | N, 2);
        vrb_desc(&vb, 2, STAT, 1, W, 0);
    } else {
        vrb_desc(&vb, 0, HDR, 16, N, 2);
        vrb_desc(&vb, 2, STAT, 1, W, 0);
    }
    vrb_publish(&vb, 0);
    assert_int_equal(vq_pop(&vb.q, &mem, &chain), 1);
    int st = blk_process(&be, &mem, &chain, used);
    if (st >= 0) assert_int_equal(mem.base[STAT], st);
    return st;
}

static void test_blk_rw(void **state)
{
    uint32_t used;
    for (int i = 0; i < 1024; i++)
        mem.base[DATA + i] = (uint8_t)(i * 7);
    assert_int_equal(run_req(VIRTIO_BLK_T_OUT, 2, 1024, false, &used), VIRTIO_BLK_S_OK);
    assert_int_equal(used, 1);
    uint8_t file[1024];
    assert_int_equal(pread(be.fd, file, 1024, 1024), 1024);
    assert_memory_equal(file, mem.base + DATA, 1024);
    memset(mem.base + DATA, 0, 1024);
    assert_int_equal(run_req(VIRTIO_BLK_T_IN, 2, 1024, true, &used), VIRTIO_BLK_S_OK);
    assert_int_equal(used, 1025);
    assert_memory_equal(file, mem.base + DATA, 1024);
    assert_int_equal(run_req(VIRTIO_BLK_T_FLUSH, 0, 0, false, &used), VIRTIO_BLK_S_OK);
    /* last sector is fine, one past is not */
    assert_int_equal(run_req(VIRTIO_BLK_T_IN, 2047, 512, true, &used), VIRTIO_BLK_S_OK);
    assert_int_equal(run_req(VIRTIO_BLK_T_IN, 2047, 1024, true, &used), VIRTIO_BLK_S_IOERR);
    assert_int_equal(run_req(VIRTIO_BLK_T_IN, 2048, 512, true, &used), VIRTIO_BLK_S_IOERR);
    assert_int_equal(used, 1);
}

static void test_blk_bounds(void **state)
{
    uint32_t used;
    /* sector * 512 overflows 64 bits */
    assert_int_equal(run_req(VIRTIO_BLK_T_OUT, UINT64_MAX / 256, 512, false, &used),
                     VIRTIO_BLK_S_IOERR);
    assert_int_equal(run_req(VIRTIO_BLK_T_IN, UINT64_MAX, 512, true, &used), VIRTIO_BLK_S_IOERR);
    /* not a multiple of 512 */
    assert_int_equal(run_req(VIRTIO_BLK_T_IN, 0, 100, true, &used), VIRTIO_BLK_S_IOERR);
    assert_int_equal(run_req(VIRTIO_BLK_T_OUT, 0, 100, false, &used), VIRTIO_BLK_S_IOERR);
}

static void test_blk_directions(void **state)
{
    uint32_t used;
    off_t before = lseek(be.fd, 0, SEEK_END);
    /* a write whose data is device-writable, a read whose data is device-readable */
    assert_int_equal(run_req(VIRTIO_BLK_T_OUT, 0, 512, true, &used), VIRTIO_BLK_S_IOERR);
    assert_int_equal(run_req(VIRTIO_BLK_T_IN, 0, 512, false, &used), VIRTIO_BLK_S_IOERR);
    assert_int_equal(run_req(VIRTIO_BLK_T_FLUSH, 0, 512, true, &used), VIRTIO_BLK_S_IOERR);
    assert_int_equal(lseek(be.fd, 0, SEEK_END), before);
    /* no writable byte for the status: nothing done */
    vrb_init(&vb, &mem, 8);
    put_hdr(VIRTIO_BLK_T_IN, 0);
    vrb_desc(&vb, 0, HDR, 16, 0, 0);
    vrb_publish(&vb, 0);
    assert_int_equal(vq_pop(&vb.q, &mem, &chain), 1);
    assert_int_equal(blk_process(&be, &mem, &chain, &used), -1);
    assert_int_equal(used, 0);
    /* header shorter than 16 bytes */
    vrb_init(&vb, &mem, 8);
    vrb_desc(&vb, 0, HDR, 8, N, 1);
    vrb_desc(&vb, 1, STAT, 1, W, 0);
    vrb_publish(&vb, 0);
    assert_int_equal(vq_pop(&vb.q, &mem, &chain), 1);
    assert_int_equal(blk_process(&be, &mem, &chain, &used), VIRTIO_BLK_S_IOERR);
}

static void test_blk_ro_id_unsupp(void **state)
{
    uint32_t used;
    be.ro = true;
    memset(mem.base + DATA, 0x55, 512);
    assert_int_equal(run_req(VIRTIO_BLK_T_OUT, 0, 512, false, &used), VIRTIO_BLK_S_IOERR);
    uint8_t z[512];
    assert_int_equal(pread(be.fd, z, 512, 0), 512);
    assert_int_equal(z[0], 0);
    assert_int_equal(run_req(VIRTIO_BLK_T_FLUSH, 0, 0, false, &used), VIRTIO_BLK_S_OK);
    be.ro = false;
    assert_int_equal(run_req(VIRTIO_BLK_T_GET_ID, 0, 20, true, &used), VIRTIO_BLK_S_OK);
    assert_int_equal(used, 21);
    assert_string_equal((char *)mem.base + DATA, "test-disk");
    assert_int_equal(run_req(99, 0, 0, false, &used), VIRTIO_BLK_S_UNSUPP);
}

static void put_seg(uint64_t at, uint64_t sector, uint32_t num, uint32_t flags)
{
    uint8_t s[16];
    memcpy(s, &sector, 8);
    memcpy(s + 8, &num, 4);
    memcpy(s + 12, &flags, 4);
    guest_write(&mem, at, s, 16);
}

static void test_blk_write_zeroes_discard(void **state)
{
    uint32_t used;
    uint8_t ff[4096];
    memset(ff, 0xff, sizeof(ff));
    assert_int_equal(pwrite(be.fd, ff, 4096, 8192), 4096);
    put_seg(DATA, 16, 8, 0);
    assert_int_equal(run_req(VIRTIO_BLK_T_WRITE_ZEROES, 0, 16, false, &used), VIRTIO_BLK_S_OK);
    uint8_t back[4096];
    assert_int_equal(pread(be.fd, back, 4096, 8192), 4096);
    for (int i = 0; i < 4096; i++)
        assert_int_equal(back[i], 0);
    put_seg(DATA, 16, 8, 1); /* discard with flags: unsupported */
    assert_int_equal(run_req(VIRTIO_BLK_T_DISCARD, 0, 16, false, &used), VIRTIO_BLK_S_UNSUPP);
    put_seg(DATA, 2040, 16, 0); /* past the end */
    assert_int_equal(run_req(VIRTIO_BLK_T_DISCARD, 0, 16, false, &used), VIRTIO_BLK_S_IOERR);
    assert_int_equal(run_req(VIRTIO_BLK_T_DISCARD, 0, 24, false, &used), VIRTIO_BLK_S_IOERR);
    put_seg(DATA, 0, 8, 0);
    be.ro = true;
    assert_int_equal(run_req(VIRTIO_BLK_T_WRITE_ZEROES, 0, 16, false, &used), VIRTIO_BLK_S_IOERR);
    be.ro = false;
}

/* ---- rng and net parsers ---- */

static void test_rng_process(void **state)
{
    vrb_desc(&vb, 0, VRB_BUF, 64, W, 0);
    vrb_publish(&vb, 0);
    assert_int_equal(vq_pop(&vb.q, &mem, &chain), 1);
    assert_int_equal(rng_process(&mem, &chain), 64);
    vrb_desc(&vb, 1, VRB_BUF, 64, 0, 0); /* device-readable: refused */
    vrb_publish(&vb, 1);
    assert_int_equal(vq_pop(&vb.q, &mem, &chain), 1);
    assert_int_equal(rng_process(&mem, &chain), 0);
    vrb_desc(&vb, 2, VRB_BUF, 1 << 20, W, 0); /* capped */
    vrb_publish(&vb, 2);
    assert_int_equal(vq_pop(&vb.q, &mem, &chain), 1);
    assert_int_equal(rng_process(&mem, &chain), VIRTIO_RNG_MAX_REQ);
}

static uint8_t frame[VNET_MAX_FRAME];

static void test_net_parsers(void **state)
{
    memset(mem.base + VRB_BUF, 0, 12);
    vrb_desc(&vb, 0, VRB_BUF, 12 + 60, 0, 0);
    vrb_publish(&vb, 0);
    assert_int_equal(vq_pop(&vb.q, &mem, &chain), 1);
    assert_int_equal(vnet_tx_parse(&mem, &chain, frame), 60);
    mem.base[VRB_BUF] = 1; /* NEEDS_CSUM with csum_start 0, csum_offset 0: in range */
    assert_int_equal(vnet_tx_parse(&mem, &chain, frame), 60);
    mem.base[VRB_BUF + 6] = 59; /* csum_start 59: the 2-byte field would end past the frame */
    assert_int_equal(vnet_tx_parse(&mem, &chain, frame), -1);
    mem.base[VRB_BUF + 6] = 0;
    mem.base[VRB_BUF + 8] = 0xff; /* csum_offset 255 */
    assert_int_equal(vnet_tx_parse(&mem, &chain, frame), -1);
    mem.base[VRB_BUF + 8] = 0;
    mem.base[VRB_BUF] = 2; /* DATA_VALID is for the receive side */
    assert_int_equal(vnet_tx_parse(&mem, &chain, frame), -1);
    mem.base[VRB_BUF] = 0;
    mem.base[VRB_BUF + 1] = 1; /* GSO TCPv4: not offered */
    assert_int_equal(vnet_tx_parse(&mem, &chain, frame), -1);
    mem.base[VRB_BUF + 1] = 0;
    vrb_desc(&vb, 1, VRB_BUF, 12 + 10, 0, 0); /* runt */
    vrb_publish(&vb, 1);
    assert_int_equal(vq_pop(&vb.q, &mem, &chain), 1);
    assert_int_equal(vnet_tx_parse(&mem, &chain, frame), -1);
    vrb_desc(&vb, 2, VRB_BUF, 12 + 60, W, 0); /* tx with a writable buffer */
    vrb_publish(&vb, 2);
    assert_int_equal(vq_pop(&vb.q, &mem, &chain), 1);
    assert_int_equal(vnet_tx_parse(&mem, &chain, frame), -1);
    /* rx */
    memset(frame, 0xab, 100);
    assert_int_equal(vnet_rx_fill(&mem, &chain, frame, 60), 72);
    assert_int_equal(mem.base[VRB_BUF + 12], 0xab);
    assert_int_equal(vnet_rx_fill(&mem, &chain, frame, 61), -1); /* too small */
    assert_int_equal(vnet_rx_fill_flags(&mem, &chain, frame, 60, VNET_HDR_F_DATA_VALID), 72);
    assert_int_equal(mem.base[VRB_BUF], VNET_HDR_F_DATA_VALID);
}

/* A reference checksum for the tests, written independently of net.c's: RFC 1071 over 16-bit
 * big-endian words. */
static uint16_t ref_csum(const uint8_t *p, size_t n, uint32_t sum)
{
    for (size_t i = 0; i + 1 < n; i += 2)
        sum += (uint32_t)(p[i] << 8 | p[i + 1]);
    if (n & 1) sum += (uint32_t)p[n - 1] << 8;
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

/* Ethernet + IPv4 + TCP (proto 6) or UDP (17) with `plen` payload bytes; l4 checksum left 0. */
static size_t build_ip_frame(uint8_t *f, uint8_t proto, size_t plen)
{
    size_t l4h = proto == 6 ? 20 : 8, tot = 20 + l4h + plen;
    memset(f, 0, 14 + tot);
    f[12] = 0x08; /* IPv4 */
    uint8_t *ip = f + 14;
    ip[0] = 0x45;
    ip[2] = (uint8_t)(tot >> 8);
    ip[3] = (uint8_t)tot;
    ip[8] = 64;
    ip[9] = proto;
    memcpy(ip + 12, "\x0a\x00\x02\x0f\x0a\x00\x02\x02", 8);
    uint8_t *l4 = ip + 20;
    l4[0] = 0x12, l4[1] = 0x34, l4[2] = 0x00, l4[3] = 0x50;
    if (proto == 6)
        l4[12] = 0x50;
    else
        l4[4] = (uint8_t)((8 + plen) >> 8), l4[5] = (uint8_t)(8 + plen);
    for (size_t i = 0; i < plen; i++)
        l4[l4h + i] = (uint8_t)(i * 7 + 3);
    return 14 + tot;
}

/* The pseudo-header sum (addresses, protocol, L4 length), not complemented: what a guest with
 * VIRTIO_NET_F_CSUM leaves in the checksum field. */
static uint32_t pseudo_sum(const uint8_t *f)
{
    const uint8_t *ip = f + 14;
    uint32_t sum = 0;
    for (int i = 12; i < 20; i += 2)
        sum += (uint32_t)(ip[i] << 8 | ip[i + 1]);
    size_t l4len = (size_t)(ip[2] << 8 | ip[3]) - 20;
    return sum + ip[9] + (uint32_t)l4len;
}

static void test_net_checksums(void **state)
{
    static uint8_t f[2000];
    for (int proto = 6; proto <= 17; proto += 11) {
        unsigned coff = proto == 6 ? 16 : 6;
        for (size_t plen = 0; plen < 40; plen += 13) { /* odd lengths too */
            size_t n = build_ip_frame(f, (uint8_t)proto, plen);
            uint8_t *ck = f + 34 + coff;
            /* a correct checksum verifies; one flipped payload bit does not */
            uint16_t c = ref_csum(f + 34, n - 34, pseudo_sum(f));
            if (proto == 17 && c == 0) c = 0xffff;
            ck[0] = (uint8_t)(c >> 8), ck[1] = (uint8_t)c;
            assert_true(vnet_l4_csum_valid(f, n));
            f[n - 1] ^= plen ? 0x10 : 0;
            f[34] ^= plen ? 0 : 0x10; /* no payload: flip a port bit */
            assert_false(vnet_l4_csum_valid(f, n));
            /* the transmit offload: the guest leaves the pseudo-header sum in the field */
            n = build_ip_frame(f, (uint8_t)proto, plen);
            uint16_t ps = (uint16_t)(pseudo_sum(f) % 0xffff);
            ck[0] = (uint8_t)(ps >> 8), ck[1] = (uint8_t)ps;
            memset(mem.base + VRB_BUF, 0, 12);
            mem.base[VRB_BUF] = VNET_HDR_F_NEEDS_CSUM;
            mem.base[VRB_BUF + 6] = 34;
            mem.base[VRB_BUF + 8] = (uint8_t)coff;
            memcpy(mem.base + VRB_BUF + 12, f, n);
            vrb_init(&vb, &mem, 8);
            vrb_desc(&vb, 0, VRB_BUF, (uint32_t)(12 + n), 0, 0);
            vrb_publish(&vb, 0);
            assert_int_equal(vq_pop(&vb.q, &mem, &chain), 1);
            assert_int_equal(vnet_tx_parse(&mem, &chain, frame), (long)n);
            assert_true(vnet_l4_csum_valid(frame, n));
        }
    }
    size_t n = build_ip_frame(f, 17, 10); /* UDP without a checksum (0) */
    assert_true(vnet_l4_csum_valid(f, n));
    n = build_ip_frame(f, 6, 10);
    uint16_t c = ref_csum(f + 34, n - 34, pseudo_sum(f));
    f[50] = (uint8_t)(c >> 8), f[51] = (uint8_t)c;
    assert_true(vnet_l4_csum_valid(f, n));
    assert_false(vnet_l4_csum_valid(f, n - 1)); /* IP total length beyond the frame */
    f[20] = 0x20;                               /* more fragments */
    assert_false(vnet_l4_csum_valid(f, n));
    f[20] = 0;
    f[23] = 1; /* ICMP: not ours to judge */
    assert_false(vnet_l4_csum_valid(f, n));
    f[23] = 6;
    f[14] = 0x44; /* IHL 4: bad */
    assert_false(vnet_l4_csum_valid(f, n));
    f[14] = 0x45;
    f[12] = 0x86, f[13] = 0xdd; /* IPv6 */
    assert_false(vnet_l4_csum_valid(f, n));
    assert_false(vnet_l4_csum_valid(f, 20));
}

/* ---- the MMIO register interface (with the rng device) ---- */

static _Atomic int irq_level, irq_changes; /* the disk worker sets it too */
static void fake_irq(void *ctx, unsigned gsi, int level)
{
    irq_level = level;
    irq_changes++;
}

static uint32_t rd(struct virtio_mmio *t, uint64_t off, unsigned size)
{
    uint8_t d[8];
    memset(d, 0xcc, sizeof(d));
    virtio_mmio_bus_ops.read(t, off, d, size);
    uint32_t v = 0;
    memcpy(&v, d, size < 4 ? size : 4);
    return v;
}

static void wr(struct virtio_mmio *t, uint64_t off, uint32_t v)
{
    virtio_mmio_bus_ops.write(t, off, (uint8_t *)&v, 4);
}

static struct virtio_mmio *bring_up(struct virtio_rng *r)
{
    struct virtio_mmio *t = virtio_rng_transport(r);
    wr(t, VMMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
    wr(t, VMMIO_DRIVER_FEATURES_SEL, 1);
    wr(t, VMMIO_DRIVER_FEATURES, 1); /* VERSION_1 */
    wr(t, VMMIO_STATUS,
       VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK);
    assert_true(rd(t, VMMIO_STATUS, 4) & VIRTIO_STATUS_FEATURES_OK);
    wr(t, VMMIO_QUEUE_SEL, 0);
    wr(t, VMMIO_QUEUE_NUM, 8);
    wr(t, VMMIO_QUEUE_DESC_LOW, VRB_DESC);
    wr(t, VMMIO_QUEUE_DRIVER_LOW, VRB_AVAIL);
    wr(t, VMMIO_QUEUE_DEVICE_LOW, VRB_USED);
    wr(t, VMMIO_QUEUE_READY, 1);
    assert_int_equal(rd(t, VMMIO_QUEUE_READY, 4), 1);
    wr(t, VMMIO_STATUS, 0xf);
    return t;
}

static void test_mmio_identity_and_sizes(void **state)
{
    struct virtio_rng *r = virtio_rng_create(&mem, (struct irq_line){fake_irq, NULL, 16}, 0);
    struct virtio_mmio *t = virtio_rng_transport(r);
    assert_int_equal(rd(t, VMMIO_MAGIC, 4), VIRTIO_MMIO_MAGIC);
    assert_int_equal(rd(t, VMMIO_VERSION, 4), 2);
    assert_int_equal(rd(t, VMMIO_DEVICE_ID, 4), VIRTIO_ID_RNG);
    assert_int_equal(rd(t, VMMIO_MAGIC, 2), 0);     /* wrong size: 0 */
    assert_int_equal(rd(t, VMMIO_MAGIC + 1, 4), 0); /* unaligned: 0 */
    assert_int_equal(rd(t, 0x0e0, 4), 0);           /* reserved */
    assert_int_equal(rd(t, VMMIO_CONFIG, 4), 0);    /* rng has no config space */
    assert_int_equal(rd(t, 0xffc, 4), 0);
    wr(t, VMMIO_DEVICE_FEATURES_SEL, 1);
    assert_true(rd(t, VMMIO_DEVICE_FEATURES, 4) & 1); /* VERSION_1 */
    wr(t, VMMIO_DEVICE_FEATURES_SEL, 7);
    assert_int_equal(rd(t, VMMIO_DEVICE_FEATURES, 4), 0);
    /* a 1-byte write to Status is ignored */
    uint8_t b = 1;
    virtio_mmio_bus_ops.write(t, VMMIO_STATUS, &b, 1);
    assert_int_equal(rd(t, VMMIO_STATUS, 4), 0);
    virtio_rng_destroy(r);
}

static void test_mmio_negotiation(void **state)
{
    struct virtio_rng *r = virtio_rng_create(&mem, (struct irq_line){fake_irq, NULL, 16}, 0);
    struct virtio_mmio *t = virtio_rng_transport(r);
    wr(t, VMMIO_STATUS, 3);
    /* legacy driver (no VERSION_1): FEATURES_OK refused */
    wr(t, VMMIO_STATUS, 0xb);
    assert_false(rd(t, VMMIO_STATUS, 4) & VIRTIO_STATUS_FEATURES_OK);
    /* a feature we never offered: refused */
    wr(t, VMMIO_DRIVER_FEATURES_SEL, 1);
    wr(t, VMMIO_DRIVER_FEATURES, 1 | 0x80000000u);
    wr(t, VMMIO_STATUS, 0xb);
    assert_false(rd(t, VMMIO_STATUS, 4) & VIRTIO_STATUS_FEATURES_OK);
    wr(t, VMMIO_DRIVER_FEATURES, 1);
    wr(t, VMMIO_STATUS, 0xb);
    assert_true(rd(t, VMMIO_STATUS, 4) & VIRTIO_STATUS_FEATURES_OK);
    /* features are frozen after FEATURES_OK */
    wr(t, VMMIO_DRIVER_FEATURES, 0);
    assert_int_equal(t->drv_features, 1ull << 32);
    /* the driver cannot set NEEDS_RESET, nor clear bits except by a reset */
    wr(t, VMMIO_STATUS, 0x40 | 0x3);
    assert_int_equal(rd(t, VMMIO_STATUS, 4), 0xb);
    wr(t, VMMIO_STATUS, 0);
    assert_int_equal(rd(t, VMMIO_STATUS, 4), 0);
    virtio_rng_destroy(r);
}

static void test_mmio_rng_irq_and_needs_reset(void **state)
{
    irq_level = irq_changes = 0;
    struct virtio_rng *r = virtio_rng_create(&mem, (struct irq_line){fake_irq, NULL, 16}, 0);
    struct virtio_mmio *t = bring_up(r);
    vrb_init(&vb, &mem, 8);
    vrb_desc(&vb, 0, VRB_BUF, 32, W, 0);
    vrb_publish(&vb, 0);
    wr(t, VMMIO_QUEUE_NOTIFY, 0);
    for (int i = 0; i < 5000 && !irq_level; i++) /* served by the device's thread */
        usleep(1000);
    assert_int_equal(vrb_used_idx(&vb), 1);
    assert_int_equal(irq_level, 1);
    assert_int_equal(rd(t, VMMIO_INTERRUPT_STATUS, 4), VIRTIO_INT_USED);
    wr(t, VMMIO_INTERRUPT_ACK, VIRTIO_INT_USED);
    assert_int_equal(irq_level, 0);
    /* queue setup is frozen while ready */
    wr(t, VMMIO_QUEUE_NUM, 4);
    assert_int_equal(t->vq[0].size, 8);
    /* notify of a queue that does not exist: ignored */
    wr(t, VMMIO_QUEUE_NOTIFY, 3);
    wr(t, VMMIO_QUEUE_NOTIFY, 0xffffffff);
    /* the avail index jumps by more than the queue size: needs reset + config interrupt */
    vrb_set_avail_idx(&vb, 100);
    wr(t, VMMIO_QUEUE_NOTIFY, 0);
    for (int i = 0; i < 5000 && !(rd(t, VMMIO_STATUS, 4) & VIRTIO_STATUS_NEEDS_RESET); i++)
        usleep(1000);
    assert_true(rd(t, VMMIO_STATUS, 4) & VIRTIO_STATUS_NEEDS_RESET);
    assert_int_equal(rd(t, VMMIO_INTERRUPT_STATUS, 4), VIRTIO_INT_CONFIG);
    assert_int_equal(irq_level, 1);
    wr(t, VMMIO_STATUS, 0);
    assert_int_equal(rd(t, VMMIO_STATUS, 4), 0);
    assert_int_equal(irq_level, 0);
    assert_int_equal(rd(t, VMMIO_QUEUE_READY, 4), 0);
    virtio_rng_destroy(r);
}

static void test_mmio_bad_ring_ready(void **state)
{
    struct virtio_rng *r = virtio_rng_create(&mem, (struct irq_line){fake_irq, NULL, 16}, 0);
    struct virtio_mmio *t = virtio_rng_transport(r);
    wr(t, VMMIO_STATUS, 3);
    wr(t, VMMIO_DRIVER_FEATURES_SEL, 1);
    wr(t, VMMIO_DRIVER_FEATURES, 1);
    wr(t, VMMIO_STATUS, 0xb);
    wr(t, VMMIO_QUEUE_NUM, 8);
    wr(t, VMMIO_QUEUE_DESC_LOW, 0xfffff000);
    wr(t, VMMIO_QUEUE_DESC_HIGH, 0xffffffff);
    wr(t, VMMIO_QUEUE_READY, 1);
    assert_int_equal(rd(t, VMMIO_QUEUE_READY, 4), 0);
    assert_true(rd(t, VMMIO_STATUS, 4) & VIRTIO_STATUS_NEEDS_RESET);
    virtio_rng_destroy(r);
}

/* Encodes a device state as a snapshot section payload and decodes it again. */
static struct snap_writer enc_w;
static struct snap_section enc_sec;
static void encode(const struct virtio_dev_state *s)
{
    snap_writer_free(&enc_w);
    memset(&enc_w, 0, sizeof(enc_w));
    snap_enc_virtio(&enc_w, s);
    assert_int_equal(enc_w.err, 0);
    memset(&enc_sec, 0, sizeof(enc_sec));
    strcpy(enc_sec.name, "virtio0-test");
    enc_sec.version = SNAP_V_VIRTIO;
    enc_sec.data = enc_w.buf;
    enc_sec.len = enc_w.len;
}

static void test_mmio_state_round_trip(void **state)
{
    struct virtio_rng *r = virtio_rng_create(&mem, (struct irq_line){fake_irq, NULL, 16}, 1000);
    bring_up(r);
    static struct virtio_dev_state s, s2, bad;
    virtio_rng_get_state(r, &s);
    assert_int_equal(s.device_id, VIRTIO_ID_RNG);
    assert_int_equal(s.nbuckets, 1);
    assert_int_equal(s.bucket[0].rate, 1000);
    /* through the section codec */
    encode(&s);
    assert_int_equal(snap_dec_virtio(&enc_sec, &s2), 0);
    assert_memory_equal(&s, &s2, sizeof(s));
    struct virtio_rng *r2 = virtio_rng_create(&mem, (struct irq_line){fake_irq, NULL, 16}, 1000);
    assert_int_equal(virtio_rng_check_state(r2, &s2), 0);
    assert_int_equal(virtio_rng_set_state(r2, &s2), 0);
    virtio_rng_get_state(r2, &s2);
    s2.bucket[0].milli = s.bucket[0].milli; /* refilled a little meanwhile */
    assert_memory_equal(&s, &s2, sizeof(s));

    /* hostile values: each refused by the check, and set changes nothing */
#define REFUSE(stmt)                                                                               \
    do {                                                                                           \
        bad = s;                                                                                   \
        stmt;                                                                                      \
        assert_int_equal(virtio_rng_check_state(r2, &bad), -EINVAL);                               \
        assert_int_equal(virtio_rng_set_state(r2, &bad), -EINVAL);                                 \
    } while (0)
    REFUSE(bad.mmio.vq[0].used = MEM);                 /* ring outside RAM */
    REFUSE(bad.mmio.vq[0].desc = MEM - 16);            /* ring crosses the end of RAM */
    REFUSE(bad.mmio.vq[0].avail |= 1);                 /* misaligned */
    REFUSE(bad.mmio.vq[0].size = 12);                  /* not a power of two */
    REFUSE(bad.mmio.vq[0].size = 512);                 /* over the maximum */
    REFUSE(bad.mmio.vq[0].size = 0);                   /* ready with size 0 */
    REFUSE(bad.mmio.vq[0].ready = 2);                  /* not a boolean */
    REFUSE(bad.mmio.vq[0].last_avail = 5);             /* a request in flight */
    REFUSE(bad.mmio.drv_features |= 1ull << 40);       /* never offered */
    REFUSE(bad.mmio.drv_features &= ~(1ull << 32));    /* FEATURES_OK without VERSION_1 */
    REFUSE(bad.mmio.status = VIRTIO_STATUS_DRIVER_OK); /* DRIVER_OK without FEATURES_OK */
    REFUSE(bad.mmio.status |= 0x100);                  /* reserved */
    REFUSE(bad.mmio.isr = 4);                          /* reserved */
    REFUSE(bad.mmio.vq[1].size = 8);                   /* the rng has one queue */
    REFUSE(bad.nbuckets = 0);
    REFUSE(bad.config_len = 4);
    REFUSE(bad.device_id = VIRTIO_ID_BLOCK);
#undef REFUSE
    virtio_rng_get_state(r2, &s2);
    s2.bucket[0].milli = s.bucket[0].milli;
    assert_memory_equal(&s, &s2, sizeof(s)); /* untouched by the refusals */

    /* the decoder: truncation, trailing bytes, impossible counts, unknown device */
    encode(&s);
    enc_sec.len--;
    assert_int_equal(snap_dec_virtio(&enc_sec, &s2), -EINVAL);
    uint8_t *copy = malloc(enc_w.len + 1);
    memcpy(copy, enc_w.buf, enc_w.len);
    copy[enc_w.len] = 0;
    enc_sec.data = copy;
    enc_sec.len = enc_w.len + 1;
    assert_int_equal(snap_dec_virtio(&enc_sec, &s2), -EINVAL);
    enc_sec.len = enc_w.len;
    copy[0] = 3; /* device id 3 (console): not ours */
    assert_int_equal(snap_dec_virtio(&enc_sec, &s2), -EINVAL);
    copy[0] = 4;
    copy[4 * 7 + 8] = 9; /* nqueues */
    assert_int_equal(snap_dec_virtio(&enc_sec, &s2), -EINVAL);
    free(copy);
    snap_writer_free(&enc_w);
    memset(&enc_w, 0, sizeof(enc_w));
    virtio_rng_destroy(r);
    virtio_rng_destroy(r2);
}

/* Quiesced, the back end pops nothing; released, it serves what was queued meanwhile. */
static void test_mmio_quiesce(void **state)
{
    irq_level = 0;
    struct virtio_rng *r = virtio_rng_create(&mem, (struct irq_line){fake_irq, NULL, 16}, 0);
    struct virtio_mmio *t = bring_up(r);
    vrb_init(&vb, &mem, 8);
    virtio_mmio_quiesce(t, true);
    vrb_desc(&vb, 0, VRB_BUF, 32, W, 0);
    vrb_publish(&vb, 0);
    wr(t, VMMIO_QUEUE_NOTIFY, 0);
    usleep(50000);
    assert_int_equal(vrb_used_idx(&vb), 0);
    virtio_mmio_quiesce(t, false);
    for (int i = 0; i < 5000 && vrb_used_idx(&vb) == 0; i++)
        usleep(1000);
    assert_int_equal(vrb_used_idx(&vb), 1);
    virtio_rng_destroy(r);
}

/* A disk's state carries the image's identity: a different size or ro flag is refused, a
 * modified image is refused unless forced. */
static void test_blk_state_identity(void **state)
{
    struct blk_opts o = {.path = img, .bw = 1 << 20};
    struct virtio_blk *d = virtio_blk_create(&mem, (struct irq_line){fake_irq, NULL, 16}, &o);
    assert_non_null(d);
    static struct virtio_dev_state s, s2;
    virtio_blk_get_state(d, &s);
    assert_int_equal(s.blk.sectors, 2048);
    assert_string_equal(s.blk.path, img);
    encode(&s);
    assert_int_equal(snap_dec_virtio(&enc_sec, &s2), 0);
    assert_memory_equal(&s, &s2, sizeof(s));
    assert_int_equal(virtio_blk_check_state(d, &s2, false), 0);
    s2.blk.sectors++;
    assert_int_equal(virtio_blk_check_state(d, &s2, true), -EINVAL); /* never, even forced */
    s2 = s;
    s2.blk.ro = 1;
    assert_int_equal(virtio_blk_check_state(d, &s2, true), -EINVAL);
    s2 = s;
    s2.config[0] ^= 1; /* capacity in config space */
    assert_int_equal(virtio_blk_check_state(d, &s2, true), -EINVAL);
    s2 = s;
    s2.blk.image_mtime_ns -= 1000000000; /* the image was written after the snapshot */
    assert_int_equal(virtio_blk_check_state(d, &s2, false), -EINVAL);
    assert_int_equal(virtio_blk_check_state(d, &s2, true), 0);
    assert_int_equal(virtio_blk_set_state(d, &s2), 0);
    /* a path with a control byte is refused by the decoder */
    s2 = s;
    s2.blk.path[0] = '\n';
    encode(&s2);
    assert_int_equal(snap_dec_virtio(&enc_sec, &s2), -EINVAL);
    snap_writer_free(&enc_w);
    memset(&enc_w, 0, sizeof(enc_w));
    virtio_blk_destroy(d);
}

static void test_blk_device_config(void **state)
{
    struct blk_opts o = {.path = img, .ro = true};
    struct virtio_blk *d = virtio_blk_create(&mem, (struct irq_line){fake_irq, NULL, 16}, &o);
    assert_non_null(d);
    struct virtio_mmio *t = virtio_blk_transport(d);
    assert_int_equal(rd(t, VMMIO_DEVICE_ID, 4), VIRTIO_ID_BLOCK);
    assert_int_equal(rd(t, VMMIO_CONFIG, 4), 2048); /* capacity, low word */
    assert_int_equal(rd(t, VMMIO_CONFIG + 4, 4), 0);
    assert_int_equal(rd(t, VMMIO_CONFIG + 1, 1), 8);  /* byte access */
    assert_int_equal(rd(t, VMMIO_CONFIG + 58, 4), 0); /* straddles the end: 0 */
    assert_true(rd(t, VMMIO_DEVICE_FEATURES, 4) & (1u << VIRTIO_BLK_F_RO));
    virtio_blk_destroy(d);
}

/* The real disk device: requests go to its worker thread; completion raises the interrupt. */
static void test_blk_device_worker(void **state)
{
    irq_level = 0;
    struct blk_opts o = {.path = img};
    struct virtio_blk *d = virtio_blk_create(&mem, (struct irq_line){fake_irq, NULL, 16}, &o);
    assert_non_null(d);
    struct virtio_mmio *t = virtio_blk_transport(d);
    wr(t, VMMIO_STATUS, 3);
    wr(t, VMMIO_DRIVER_FEATURES_SEL, 1);
    wr(t, VMMIO_DRIVER_FEATURES, 1);
    wr(t, VMMIO_STATUS, 0xb);
    wr(t, VMMIO_QUEUE_NUM, 8);
    wr(t, VMMIO_QUEUE_DESC_LOW, VRB_DESC);
    wr(t, VMMIO_QUEUE_DRIVER_LOW, VRB_AVAIL);
    wr(t, VMMIO_QUEUE_DEVICE_LOW, VRB_USED);
    wr(t, VMMIO_QUEUE_READY, 1);
    wr(t, VMMIO_STATUS, 0xf);
    vrb_init(&vb, &mem, 8);
    put_hdr(VIRTIO_BLK_T_OUT, 1);
    memset(mem.base + DATA, 0x5a, 512);
    vrb_desc(&vb, 0, HDR, 16, N, 1);
    vrb_desc(&vb, 1, DATA, 512, N, 2);
    vrb_desc(&vb, 2, STAT, 1, W, 0);
    vrb_publish(&vb, 0);
    wr(t, VMMIO_QUEUE_NOTIFY, 0);
    for (int i = 0; i < 5000 && vrb_used_idx(&vb) == 0; i++)
        usleep(1000);
    assert_int_equal(vrb_used_idx(&vb), 1);
    assert_int_equal(mem.base[STAT], VIRTIO_BLK_S_OK);
    uint8_t back[512];
    assert_int_equal(pread(be.fd, back, 512, 512), 512);
    assert_int_equal(back[0], 0x5a);
    for (int i = 0; i < 5000 && !irq_level; i++)
        usleep(1000);
    assert_int_equal(irq_level, 1);
    wr(t, VMMIO_STATUS, 0); /* reset with the worker idle */
    assert_int_equal(irq_level, 0);
    virtio_blk_destroy(d);
}

/* ---- token buckets ---- */

static void test_tbucket(void **state)
{
    struct tbucket b;
    tb_init(&b, 1000); /* 1000 tokens/s, burst 1000 */
    uint64_t t0 = b.last_ns;
    assert_int_equal(tb_take(&b, 1000, t0), 0);
    assert_int_equal(tb_take(&b, 500, t0), 500000000);   /* half a second of debt */
    assert_int_equal(tb_take(&b, 0, t0 + 500000000), 0); /* repaid */
    assert_int_equal(tb_take(&b, 5000, t0 + 2500000000ull), 4000000000ull); /* > burst: debt */
    struct tbucket u;
    tb_init(&u, 0); /* unlimited */
    assert_int_equal(tb_take(&u, UINT64_MAX, 0), 0);
    assert_int_equal(tb_wait_ns(&u, 0), 0);
    tb_charge(&u, UINT64_MAX);
    assert_int_equal(tb_wait_ns(&u, 0), 0);
}

/* The NIC's way: admitted while out of debt, charged afterwards; the burst is burst_ms of rate. */
static void test_tbucket_wait_charge_burst(void **state)
{
    struct tbucket b;
    tb_init_burst(&b, 1000000, 250); /* 1 MB/s, burst 250 ms = 250 000 */
    uint64_t t0 = b.last_ns;
    assert_true(b.tokens == 250000.0);
    assert_int_equal(tb_wait_ns(&b, t0), 0);
    tb_charge(&b, 250000);                   /* the whole burst at once */
    assert_int_equal(tb_wait_ns(&b, t0), 0); /* exactly empty is not in debt */
    tb_charge(&b, 1500);                     /* one frame more: 1.5 ms of debt */
    assert_int_equal(tb_wait_ns(&b, t0), 1500000);
    assert_int_equal(tb_wait_ns(&b, t0 + 1000000), 500000);
    assert_int_equal(tb_wait_ns(&b, t0 + 1500000), 0);
    /* idle for a long time: the bucket refills to the burst, not beyond */
    assert_int_equal(tb_wait_ns(&b, t0 + 10000000000ull), 0);
    assert_true(b.tokens == 250000.0);
    /* time running backwards (another thread's older reading) changes nothing */
    tb_charge(&b, 251000);
    assert_int_equal(tb_wait_ns(&b, t0), 1000000);
    /* a sub-nanosecond debt still says "wait", so callers never spin on a 0 */
    struct tbucket c;
    tb_init_burst(&c, 3, 1000);
    tb_charge(&c, 3);
    c.tokens = -1e-12;
    assert_true(tb_wait_ns(&c, c.last_ns) >= 1);
    /* sustained: over 10 s of 1500-byte frames sent whenever allowed, the bytes admitted are
     * at most rate*T + burst + one frame */
    struct tbucket s;
    tb_init_burst(&s, 1000000, 1000);
    uint64_t t = s.last_ns, end = t + 10000000000ull, sent = 0;
    while (t < end) {
        uint64_t w = tb_wait_ns(&s, t);
        if (w) {
            t += w;
            continue;
        }
        tb_charge(&s, 1500);
        sent += 1500;
    }
    assert_true(sent <= 10000000 + 1000000 + 1500);
    assert_true(sent >= 10000000 + 1000000 - 1500);
}

/* The NIC's transmit limit on the real device: at tx-pps=10 with a 100 ms burst, two frames go
 * at once (the burst, then one into debt) and the rest follow one per 100 ms with no further
 * kick from the guest (the poll thread re-runs transmit); none is skipped. */
static void test_net_tx_throttle(void **state)
{
    struct vdev_spec spec;
    memset(&spec, 0, sizeof(spec));
    spec.kind = VDEV_NET;
    spec.net = VNET_USER;
    spec.tx_pps = 10;
    spec.burst_ms = 100;
    struct virtio_net *d = virtio_net_create(&mem, (struct irq_line){fake_irq, NULL, 17}, &spec, 0);
    assert_non_null(d);
    struct virtio_mmio *t = virtio_net_transport(d);
    wr(t, VMMIO_STATUS, 3);
    wr(t, VMMIO_DRIVER_FEATURES_SEL, 1);
    wr(t, VMMIO_DRIVER_FEATURES, 1);
    wr(t, VMMIO_STATUS, 0xb);
    wr(t, VMMIO_QUEUE_SEL, 1); /* transmit */
    wr(t, VMMIO_QUEUE_NUM, 8);
    wr(t, VMMIO_QUEUE_DESC_LOW, VRB_DESC);
    wr(t, VMMIO_QUEUE_DRIVER_LOW, VRB_AVAIL);
    wr(t, VMMIO_QUEUE_DEVICE_LOW, VRB_USED);
    wr(t, VMMIO_QUEUE_READY, 1);
    wr(t, VMMIO_STATUS, 0xf);
    vrb_init(&vb, &mem, 8);
    memset(mem.base + VRB_BUF, 0, 4 * 0x100);
    for (uint16_t i = 0; i < 4; i++) {
        vrb_desc(&vb, i, VRB_BUF + 0x100u * i, VNET_HDR_LEN + 60, 0, 0);
        vrb_publish(&vb, i);
    }
    uint64_t t0 = tb_now_ns();
    wr(t, VMMIO_QUEUE_NOTIFY, 1);
    uint16_t first = vrb_used_idx(&vb);
    if (tb_now_ns() - t0 < 90000000ull) /* not descheduled past the first re-kick */
        assert_int_equal(first, 2);
    for (int i = 0; i < 3000 && vrb_used_idx(&vb) < 4; i++)
        usleep(1000);
    uint64_t dt = tb_now_ns() - t0;
    assert_int_equal(vrb_used_idx(&vb), 4);
    assert_true(dt >= 190000000ull); /* frames 3 and 4 at 100 and 200 ms */
    assert_true(dt < 2000000000ull);

    /* snapshots carry the four buckets (rx/tx bytes/frames): the spent transmit bucket comes
     * back spent; a snapshot from before the limits (no buckets) is accepted, others refused */
    static struct virtio_dev_state st;
    virtio_net_get_state(d, &st);
    assert_int_equal(st.nbuckets, 4);
    assert_int_equal(st.bucket[3].rate, 10);
    assert_true(st.bucket[3].milli < 1000); /* less than one frame left */
    assert_int_equal(st.bucket[0].rate, 0);
    assert_int_equal(virtio_net_check_state(d, &st), 0);
    st.nbuckets = 3;
    assert_true(virtio_net_check_state(d, &st) < 0);
    st.nbuckets = 0;
    assert_int_equal(virtio_net_check_state(d, &st), 0);
    virtio_net_destroy(d);
}

/* ---- options ---- */

static void test_options(void **state)
{
    struct vdev_list l;
    memset(&l, 0, sizeof(l));
    assert_int_equal(vdev_parse(&l, "--disk", "/tmp/a.img,ro,bw=10M,iops=1000"), 0);
    assert_string_equal(l.d[0].path, "/tmp/a.img");
    assert_true(l.d[0].ro);
    assert_int_equal(l.d[0].bw, 10ull << 20);
    assert_int_equal(l.d[0].iops, 1000);
    assert_int_equal(vdev_parse(&l, "--net", "user,hostfwd=tcp::8022-:22"), 0);
    assert_int_equal(l.d[1].nfwd, 1);
    assert_int_equal(l.d[1].fwd[0].host_port, 8022);
    assert_int_equal(l.d[1].fwd[0].guest_port, 22);
    assert_int_equal(vdev_parse(&l, "--net", "tap:tap0"), 0);
    assert_string_equal(l.d[2].ifname, "tap0");
    assert_int_equal(vdev_parse(&l, "--rng", NULL), 0);
    assert_int_equal(l.n, 4);
    assert_int_equal(vdev_parse(&l, "--disk", "x,rw"), -EINVAL);
    assert_int_equal(vdev_parse(&l, "--disk", ",ro"), -EINVAL);
    assert_int_equal(vdev_parse(&l, "--disk", "x,bw=0"), -EINVAL);
    assert_int_equal(vdev_parse(&l, "--disk", "x,iops=9999999999999999999999"), -EINVAL);
    assert_int_equal(vdev_parse(&l, "--net", "user,hostfwd=tcp::0-:22"), -EINVAL);
    assert_int_equal(vdev_parse(&l, "--net", "user,hostfwd=tcp::70000-:22"), -EINVAL);
    assert_int_equal(vdev_parse(&l, "--net", "tap:"), -EINVAL);
    assert_int_equal(vdev_parse(&l, "--net", "tap:waytoolonginterfacename"), -EINVAL);
    assert_int_equal(vdev_parse(&l, "--net", "bridge"), -EINVAL);
    assert_int_equal(vdev_parse(&l, "--rng", "bw=x"), -EINVAL);
    assert_int_equal(vdev_parse(&l, "--net", "user,bw=-1"), -EINVAL);
    assert_int_equal(vdev_parse(&l, "--net", "user,pps=0"), -EINVAL);
    assert_int_equal(vdev_parse(&l, "--net", "user,burst=0"), -EINVAL);
    assert_int_equal(vdev_parse(&l, "--net", "user,burst=1K"), -EINVAL);
    assert_int_equal(vdev_parse(&l, "--net", "user,burst=60001"), -EINVAL);
    assert_int_equal(vdev_parse(&l, "--net", "user,rx-bw="), -EINVAL);
    assert_int_equal(vdev_parse(&l, "--net", "tap:t0,hostfwd=tcp::8022-:22"), -EINVAL);
    assert_int_equal(vdev_parse(&l, "--net", "tap:t0,iops=5"), -EINVAL);
    assert_int_equal(vdev_parse(&l, "--disk", "x,burst=0"), -EINVAL);
    assert_int_equal(l.n, 4);
    /* NIC limits: both directions, then one direction overriding */
    struct vdev_list n;
    memset(&n, 0, sizeof(n));
    assert_int_equal(vdev_parse(&n, "--net", "user,bw=1M,pps=100,tx-bw=2M,burst=250"), 0);
    assert_int_equal(n.d[0].rx_bw, 1ull << 20);
    assert_int_equal(n.d[0].tx_bw, 2ull << 20);
    assert_int_equal(n.d[0].rx_pps, 100);
    assert_int_equal(n.d[0].tx_pps, 100);
    assert_int_equal(n.d[0].burst_ms, 250);
    assert_int_equal(vdev_parse(&n, "--net", "tap:tap1,rx-pps=5,hostfwd=x"), -EINVAL);
    assert_int_equal(vdev_parse(&n, "--net", "tap:tap1,rx-pps=5"), 0);
    assert_string_equal(n.d[1].ifname, "tap1");
    assert_int_equal(n.d[1].rx_pps, 5);
    assert_int_equal(n.d[1].tx_pps, 0);
    assert_int_equal(n.d[1].rx_bw, 0);
    assert_int_equal(vdev_parse(&n, "--net", "user,hostfwd=tcp::8022-:22,rx-bw=64K"), 0);
    assert_int_equal(n.d[2].nfwd, 1);
    assert_int_equal(n.d[2].rx_bw, 64 << 10);
    assert_int_equal(vdev_parse(&n, "--disk", "/x,iops=10,burst=100"), 0);
    assert_int_equal(n.d[3].burst_ms, 100);
    for (int i = 4; i < VDEV_MAX; i++)
        assert_int_equal(vdev_parse(&l, "--rng", NULL), 0);
    assert_int_equal(vdev_parse(&l, "--rng", NULL), -EINVAL); /* GSIs run out */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_simple_chain, setup, teardown),
        cmocka_unit_test_setup_teardown(test_loop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_self_loop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_out_of_ram, setup, teardown),
        cmocka_unit_test_setup_teardown(test_huge_and_zero_len, setup, teardown),
        cmocka_unit_test_setup_teardown(test_indices_out_of_range, setup, teardown),
        cmocka_unit_test_setup_teardown(test_avail_jump, setup, teardown),
        cmocka_unit_test_setup_teardown(test_direction_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_indirect, setup, teardown),
        cmocka_unit_test_setup_teardown(test_indirect_not_negotiated, setup, teardown),
        cmocka_unit_test_setup_teardown(test_vq_check, setup, teardown),
        cmocka_unit_test_setup_teardown(test_copy_helpers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_blk_rw, blk_setup, blk_teardown),
        cmocka_unit_test_setup_teardown(test_blk_bounds, blk_setup, blk_teardown),
        cmocka_unit_test_setup_teardown(test_blk_directions, blk_setup, blk_teardown),
        cmocka_unit_test_setup_teardown(test_blk_ro_id_unsupp, blk_setup, blk_teardown),
        cmocka_unit_test_setup_teardown(test_blk_write_zeroes_discard, blk_setup, blk_teardown),
        cmocka_unit_test_setup_teardown(test_blk_device_config, blk_setup, blk_teardown),
        cmocka_unit_test_setup_teardown(test_blk_device_worker, blk_setup, blk_teardown),
        cmocka_unit_test_setup_teardown(test_rng_process, setup, teardown),
        cmocka_unit_test_setup_teardown(test_net_parsers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_net_checksums, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mmio_identity_and_sizes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mmio_negotiation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mmio_rng_irq_and_needs_reset, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mmio_bad_ring_ready, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mmio_state_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mmio_quiesce, setup, teardown),
        cmocka_unit_test_setup_teardown(test_blk_state_identity, blk_setup, blk_teardown),
        cmocka_unit_test(test_tbucket),
        cmocka_unit_test(test_tbucket_wait_charge_burst),
        cmocka_unit_test_setup_teardown(test_net_tx_throttle, setup, teardown),
        cmocka_unit_test(test_options),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
