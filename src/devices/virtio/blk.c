/* virtio-blk request parsing and execution, and the per-disk worker thread (see blk.h).
 * Trusts nothing in guest requests; trusts the image file only to be a file (its size is read
 * once; a file that shrinks under us gives short reads, which fail the request). */
#include "devices/virtio/blk.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "devices/virtio/ratelimit.h"
#include "util/log.h"

#define SECTOR 512ull

/* iovecs of guest RAM for bytes [off, off+len) of a chain part (readable or writable).  Returns
 * the count, or -1 if the part is too short. */
static int part_iov(struct guest_mem *m, const struct vq_chain *c, bool writable, uint64_t off,
                    uint64_t len, struct iovec *iov, int max)
{
    unsigned first = writable ? c->nout : 0, n = writable ? c->nin : c->nout;
    int k = 0;
    for (unsigned i = first; i < first + n && len > 0; i++) {
        const struct vq_seg *s = &c->seg[i];
        if (off >= s->len) {
            off -= s->len;
            continue;
        }
        uint64_t piece = MIN((uint64_t)s->len - off, len);
        void *p = guest_ptr(m, s->addr + off, piece);
        if (!p || k >= max) return -1;
        iov[k++] = (struct iovec){p, piece};
        if (writable) guest_mark_dirty(m, s->addr + off, piece);
        len -= piece;
        off = 0;
    }
    return len ? -1 : k;
}

/* Full positional vector I/O: loops over short transfers and EINTR. */
static int rw_full(int fd, struct iovec *iov, int n, uint64_t pos, bool write)
{
    while (n > 0) {
        ssize_t r = write ? pwritev(fd, iov, n, (off_t)pos) : preadv(fd, iov, n, (off_t)pos);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1; /* error, or end of file inside the range */
        pos += (uint64_t)r;
        while (n > 0 && (size_t)r >= iov->iov_len) {
            r -= (ssize_t)iov->iov_len;
            iov++;
            n--;
        }
        if (n > 0) {
            iov->iov_base = (uint8_t *)iov->iov_base + r;
            iov->iov_len -= (size_t)r;
        }
    }
    return 0;
}

static bool range_ok(const struct blk_backend *b, uint64_t sector, uint64_t nsect)
{
    return sector <= b->sectors && nsect <= b->sectors - sector;
}

static int zero_range(const struct blk_backend *b, uint64_t pos, uint64_t len, bool unmap)
{
    if (fallocate(b->fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, (off_t)pos, (off_t)len) == 0)
        return 0;
    if (unmap &&
        fallocate(b->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)pos, (off_t)len) == 0)
        return 0;
    static const uint8_t zero[65536];
    while (len) {
        size_t n = (size_t)MIN(len, sizeof(zero));
        ssize_t w = pwrite(b->fd, zero, n, (off_t)pos);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        pos += (uint64_t)w;
        len -= (uint64_t)w;
    }
    return 0;
}

/* DISCARD / WRITE_ZEROES: 16-byte segments {le64 sector, le32 num_sectors, le32 flags}. */
static int discard_zeroes(const struct blk_backend *b, struct guest_mem *m,
                          const struct vq_chain *c, uint32_t type)
{
    uint64_t len = c->out_len - 16;
    if (len == 0 || len % 16 || len / 16 > VIRTIO_BLK_MAX_DWZ_SEGS) return VIRTIO_BLK_S_IOERR;
    if (b->ro) return VIRTIO_BLK_S_IOERR;
    for (uint64_t off = 16; off < c->out_len; off += 16) {
        uint8_t raw[16];
        if (vq_copy_from(m, c, off, raw, 16) != 16) return VIRTIO_BLK_S_IOERR;
        uint64_t sector;
        uint32_t num, flags;
        memcpy(&sector, raw, 8);
        memcpy(&num, raw + 8, 4);
        memcpy(&flags, raw + 12, 4);
        if (!range_ok(b, sector, num)) return VIRTIO_BLK_S_IOERR;
        if (type == VIRTIO_BLK_T_DISCARD) {
            if (flags) return VIRTIO_BLK_S_UNSUPP; /* 5.2.6.2: reserved bits / unmap */
            /* Discard is a hint: a file system without hole punching simply keeps the data. */
            if (num)
                (void)fallocate(b->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                                (off_t)(sector * SECTOR), (off_t)(num * SECTOR));
        } else {
            if (flags & ~1u) return VIRTIO_BLK_S_UNSUPP;
            if (num && zero_range(b, sector * SECTOR, num * SECTOR, flags & 1) < 0)
                return VIRTIO_BLK_S_IOERR;
        }
    }
    return VIRTIO_BLK_S_OK;
}

int blk_process(const struct blk_backend *b, struct guest_mem *m, const struct vq_chain *c,
                uint32_t *used)
{
    *used = 0;
    if (c->in_len < 1) return -1; /* nowhere to put the status */
    uint64_t status_off = c->in_len - 1;
    uint8_t hdr[16];
    int st = VIRTIO_BLK_S_IOERR;
    uint32_t wrote = 0;
    if (c->out_len < 16 || vq_copy_from(m, c, 0, hdr, 16) != 16) goto done;
    uint32_t type;
    uint64_t sector;
    memcpy(&type, hdr, 4);
    memcpy(&sector, hdr + 8, 8);
    struct iovec iov[VQ_MAX_SEGS];
    switch (type) {
    case VIRTIO_BLK_T_IN: {
        uint64_t len = status_off;
        if (c->out_len != 16 || len % SECTOR || !range_ok(b, sector, len / SECTOR)) goto done;
        if (len) {
            int n = part_iov(m, c, true, 0, len, iov, VQ_MAX_SEGS);
            if (n < 0 || rw_full(b->fd, iov, n, sector * SECTOR, false) < 0) goto done;
        }
        wrote = (uint32_t)len;
        st = VIRTIO_BLK_S_OK;
        break;
    }
    case VIRTIO_BLK_T_OUT: {
        uint64_t len = c->out_len - 16;
        if (b->ro || status_off != 0 || len % SECTOR || !range_ok(b, sector, len / SECTOR))
            goto done;
        if (len) {
            int n = part_iov(m, c, false, 16, len, iov, VQ_MAX_SEGS);
            if (n < 0 || rw_full(b->fd, iov, n, sector * SECTOR, true) < 0) goto done;
        }
        st = VIRTIO_BLK_S_OK;
        break;
    }
    case VIRTIO_BLK_T_FLUSH:
        if (c->out_len != 16 || status_off != 0) goto done;
        st = (b->ro || fdatasync(b->fd) == 0) ? VIRTIO_BLK_S_OK : VIRTIO_BLK_S_IOERR;
        break;
    case VIRTIO_BLK_T_GET_ID: {
        if (c->out_len != 16) goto done;
        uint64_t len = MIN(status_off, (uint64_t)VIRTIO_BLK_ID_BYTES);
        if (len && vq_copy_to(m, c, 0, b->id, len) != (long)len) goto done;
        wrote = (uint32_t)len;
        st = VIRTIO_BLK_S_OK;
        break;
    }
    case VIRTIO_BLK_T_DISCARD:
    case VIRTIO_BLK_T_WRITE_ZEROES:
        if (status_off != 0) goto done;
        st = discard_zeroes(b, m, c, type);
        break;
    default: st = VIRTIO_BLK_S_UNSUPP; break;
    }
done:;
    uint8_t s8 = (uint8_t)st;
    if (vq_copy_to(m, c, status_off, &s8, 1) != 1) return -1;
    *used = wrote + 1;
    return st;
}

/* ---- the device ---------------------------------------------------------------------------- */

struct virtio_blk {
    struct virtio_mmio t;
    struct blk_backend be;
    struct virtio_dev_ops ops;
    uint8_t config[VIRTIO_BLK_CONFIG_SIZE];
    struct virtio_worker w;
    struct tbucket bw, iops;
    char path[VIRTIO_SNAP_PATH + 1]; /* as given (for snapshots and messages) */
};

static void put_le(uint8_t *p, uint64_t v, unsigned n)
{
    for (unsigned i = 0; i < n; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void blk_config_read(void *dev, uint32_t off, uint8_t *data, unsigned len)
{
    struct virtio_blk *d = dev;
    memcpy(data, d->config + off, len); /* the transport checked off+len <= config_size */
}

static void blk_notify(void *dev, unsigned q)
{
    struct virtio_blk *d = dev;
    virtio_worker_kick(&d->w);
}

/* On the worker, t.lock released: the rate limits, then the request. */
static uint32_t blk_serve(void *dev, const struct vq_chain *c)
{
    struct virtio_blk *d = dev;
    uint64_t now = tb_now_ns();
    tb_sleep_ns(MAX(tb_take(&d->iops, 1, now), tb_take(&d->bw, c->out_len + c->in_len, now)));
    uint32_t used = 0;
    (void)blk_process(&d->be, d->t.mem, c, &used);
    return used;
}

struct virtio_blk *virtio_blk_create(struct guest_mem *mem, struct irq_line irq,
                                     const struct blk_opts *o)
{
    struct virtio_blk *d = calloc(1, sizeof(*d));
    if (!d) {
        err_set(ENOMEM, "out of memory");
        return NULL;
    }
    d->be.ro = o->ro;
    /* the absolute path, for snapshots and messages (the restoring process may run elsewhere) */
    char *abs = realpath(o->path, NULL);
    snprintf(d->path, sizeof(d->path), "%s", abs ? abs : o->path);
    free(abs);
    d->be.fd = open(o->path, (o->ro ? O_RDONLY : O_RDWR) | O_CLOEXEC);
    if (d->be.fd < 0) {
        err_set(errno, "cannot open disk image %s%s: %s", o->path, o->ro ? "" : " for writing",
                strerror(errno));
        free(d);
        return NULL;
    }
    struct stat st;
    off_t size = lseek(d->be.fd, 0, SEEK_END);
    if (fstat(d->be.fd, &st) < 0 || (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) || size < 0) {
        err_set(EINVAL, "disk image %s is not a regular file or block device", o->path);
        goto fail;
    }
    /* Two VMs writing one image corrupt it: take a lock (shared for read-only use). */
    if (flock(d->be.fd, (o->ro ? LOCK_SH : LOCK_EX) | LOCK_NB) < 0) {
        err_set(EBUSY,
                "disk image %s is in use by another process (locked); use ,ro on both or "
                "a copy",
                o->path);
        goto fail;
    }
    d->be.sectors = (uint64_t)size / SECTOR;
    if ((uint64_t)size % SECTOR)
        log_warn("disk image %s: %llu trailing bytes beyond the last whole sector are not visible",
                 o->path, (unsigned long long)((uint64_t)size % SECTOR));
    const char *base = strrchr(o->path, '/');
    const char *name = base ? base + 1 : o->path; /* the id: NUL-padded, unterminated if full */
    memcpy(d->be.id, name, strnlen(name, sizeof(d->be.id)));

    uint8_t *cf = d->config;
    put_le(cf + 0, d->be.sectors, 8);     /* capacity */
    put_le(cf + 12, VQ_MAX_SEGS - 2, 4);  /* seg_max: header and status take two */
    put_le(cf + 36, UINT32_MAX / 512, 4); /* max_discard_sectors */
    put_le(cf + 40, VIRTIO_BLK_MAX_DWZ_SEGS, 4);
    put_le(cf + 44, 8, 4);                /* discard_sector_alignment: 4 KiB */
    put_le(cf + 48, UINT32_MAX / 512, 4); /* max_write_zeroes_sectors */
    put_le(cf + 52, VIRTIO_BLK_MAX_DWZ_SEGS, 4);
    cf[56] = 1; /* write_zeroes_may_unmap */
    uint64_t feat = (1ull << VIRTIO_BLK_F_SEG_MAX) | (1ull << VIRTIO_BLK_F_FLUSH);
    if (o->ro)
        feat |= 1ull << VIRTIO_BLK_F_RO;
    else
        feat |= (1ull << VIRTIO_BLK_F_DISCARD) | (1ull << VIRTIO_BLK_F_WRITE_ZEROES);

    d->ops = (struct virtio_dev_ops){.device_id = VIRTIO_ID_BLOCK,
                                     .nqueues = 1,
                                     .config_size = VIRTIO_BLK_CONFIG_SIZE,
                                     .config_read = blk_config_read,
                                     .notify = blk_notify};
    tb_init_burst(&d->bw, o->bw, o->burst_ms);
    tb_init_burst(&d->iops, o->iops, o->burst_ms);
    virtio_mmio_init(&d->t, mem, irq, &d->ops, d, feat);
    int e = virtio_worker_start(&d->w, &d->t, blk_serve, d);
    if (e) {
        err_set(e, "cannot start the disk worker thread: %s", strerror(e));
        virtio_mmio_destroy(&d->t);
        goto fail;
    }
    return d;
fail:
    close(d->be.fd);
    free(d);
    return NULL;
}

struct virtio_mmio *virtio_blk_transport(struct virtio_blk *d)
{
    return &d->t;
}

void virtio_blk_destroy(struct virtio_blk *d)
{
    if (!d) return;
    virtio_worker_stop(&d->w);
    /* What the guest wrote but never flushed still reaches the image at a clean exit. */
    if (!d->be.ro) (void)fdatasync(d->be.fd);
    close(d->be.fd);
    virtio_mmio_destroy(&d->t);
    free(d);
}

/* The image's identity now: size in bytes and modification time (ns). */
static int image_stat(const struct virtio_blk *d, uint64_t *size, int64_t *mtime_ns)
{
    struct stat st;
    if (fstat(d->be.fd, &st) < 0) return err_set(errno, "%s: %s", d->path, strerror(errno));
    off_t end = S_ISBLK(st.st_mode) ? lseek(d->be.fd, 0, SEEK_END) : st.st_size;
    *size = end < 0 ? 0 : (uint64_t)end;
    *mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000ll + st.st_mtim.tv_nsec;
    return 0;
}

void virtio_blk_get_state(struct virtio_blk *d, struct virtio_dev_state *s)
{
    memset(s, 0, sizeof(*s));
    s->device_id = VIRTIO_ID_BLOCK;
    s->nqueues = (uint8_t)d->ops.nqueues;
    virtio_mmio_get_state(&d->t, &s->mmio);
    s->config_len = VIRTIO_BLK_CONFIG_SIZE;
    memcpy(s->config, d->config, VIRTIO_BLK_CONFIG_SIZE);
    pthread_mutex_lock(&d->t.lock); /* quiesced: the worker is not in its buckets */
    s->nbuckets = 2;
    s->bucket[0].rate = d->bw.rate;
    s->bucket[0].milli = tb_level_milli(&d->bw);
    s->bucket[1].rate = d->iops.rate;
    s->bucket[1].milli = tb_level_milli(&d->iops);
    pthread_mutex_unlock(&d->t.lock);
    s->blk.ro = d->be.ro;
    s->blk.sectors = d->be.sectors;
    (void)image_stat(d, &s->blk.image_size, &s->blk.image_mtime_ns);
    snprintf(s->blk.path, sizeof(s->blk.path), "%s", d->path);
}

int virtio_blk_check_state(struct virtio_blk *d, const struct virtio_dev_state *s, bool force)
{
    if (s->device_id != VIRTIO_ID_BLOCK || s->nqueues != d->ops.nqueues)
        return err_set(EINVAL, "not a disk's state (device id %u, %u queues)", s->device_id,
                       s->nqueues);
    if (s->blk.sectors != d->be.sectors)
        return err_set(EINVAL,
                       "the snapshot's disk (%s) had %llu sectors, this VM's disk %s has %llu: "
                       "give the image the snapshot was taken with",
                       s->blk.path, (unsigned long long)s->blk.sectors, d->path,
                       (unsigned long long)d->be.sectors);
    if (s->blk.ro != d->be.ro)
        return err_set(EINVAL, "the snapshot's disk %s was %s, this VM's disk %s is %s",
                       s->blk.path, s->blk.ro ? "read-only" : "writable", d->path,
                       d->be.ro ? "read-only (,ro)" : "writable");
    if (s->config_len != VIRTIO_BLK_CONFIG_SIZE ||
        memcmp(s->config, d->config, VIRTIO_BLK_CONFIG_SIZE))
        return err_set(EINVAL, "the disk's config space differs from this disk's");
    if (s->nbuckets != 2) return err_set(EINVAL, "%u rate buckets, a disk has 2", s->nbuckets);
    int r = virtio_mmio_check_state(&d->t, &s->mmio);
    if (r < 0) return r;
    uint64_t size;
    int64_t mtime;
    if ((r = image_stat(d, &size, &mtime)) < 0) return r;
    if (size != s->blk.image_size || mtime != s->blk.image_mtime_ns) {
        if (!force)
            return err_set(EINVAL,
                           "disk image %s is not in the state the snapshot saw (%s: %llu bytes, "
                           "mtime %lld ns; now %llu bytes, mtime %lld ns): the guest's cached "
                           "view of it would not match the disk.  Give the image as it was "
                           "(e.g. a copy made with `cp -p` while the VM was paused for the "
                           "snapshot), or force it (run --restore-force, ctl rollback --force)",
                           d->path, s->blk.path, (unsigned long long)s->blk.image_size,
                           (long long)s->blk.image_mtime_ns, (unsigned long long)size,
                           (long long)mtime);
        log_warn("disk image %s changed since the snapshot; restoring anyway (forced)", d->path);
    }
    if (strcmp(s->blk.path, d->path))
        log_info("disk image %s stands in for the snapshot's %s (same size and mtime)", d->path,
                 s->blk.path);
    return 0;
}

int virtio_blk_set_state(struct virtio_blk *d, const struct virtio_dev_state *s)
{
    int r = virtio_mmio_set_state(&d->t, &s->mmio);
    if (r == 0) {
        pthread_mutex_lock(&d->t.lock);
        tb_restore(&d->bw, s->bucket[0].rate, s->bucket[0].milli);
        tb_restore(&d->iops, s->bucket[1].rate, s->bucket[1].milli);
        virtio_worker_kick(&d->w); /* requests the guest queued before the snapshot */
        pthread_mutex_unlock(&d->t.lock);
    }
    return r;
}
