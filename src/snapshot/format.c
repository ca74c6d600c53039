/* Snapshot state file encoder and parser (see format.h and docs/snapshot-format.md).
 * Trusts: nothing in a buffer handed to snap_parse(); every offset is checked before use. */
#include "snapshot/format.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "util/log.h"

/* ---- writing ------------------------------------------------------------------------------ */

static void grow(struct snap_writer *w, size_t n)
{
    if (w->err) return;
    if (w->len + n > SNAP_FILE_MAX) {
        w->err = err_set(E2BIG, "the snapshot state would exceed %u MiB", SNAP_FILE_MAX >> 20);
        return;
    }
    if (w->len + n <= w->cap) return;
    size_t cap = w->cap ? w->cap : 4096;
    while (cap < w->len + n)
        cap *= 2;
    uint8_t *p = realloc(w->buf, cap);
    if (!p) {
        w->err = err_set(ENOMEM, "out of memory for the snapshot state");
        return;
    }
    w->buf = p;
    w->cap = cap;
}

void snap_put_bytes(struct snap_writer *w, const void *p, size_t n)
{
    grow(w, n);
    if (w->err || !n) return;
    memcpy(w->buf + w->len, p, n);
    w->len += n;
}

void snap_put_u8(struct snap_writer *w, uint8_t v)
{
    snap_put_bytes(w, &v, 1);
}
void snap_put_u16(struct snap_writer *w, uint16_t v)
{
    uint8_t b[2] = {(uint8_t)v, (uint8_t)(v >> 8)};
    snap_put_bytes(w, b, 2);
}
void snap_put_u32(struct snap_writer *w, uint32_t v)
{
    uint8_t b[4];
    for (int i = 0; i < 4; i++)
        b[i] = (uint8_t)(v >> (8 * i));
    snap_put_bytes(w, b, 4);
}
void snap_put_u64(struct snap_writer *w, uint64_t v)
{
    uint8_t b[8];
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(v >> (8 * i));
    snap_put_bytes(w, b, 8);
}

static void put_fixed_str(struct snap_writer *w, const char *s, size_t field)
{
    char tmp[64] = {0};
    size_t n = strnlen(s, field);
    memcpy(tmp, s, n);
    snap_put_bytes(w, tmp, field);
}

int snap_writer_begin(struct snap_writer *w, const struct snap_header *h)
{
    memset(w, 0, sizeof(*w));
    size_t dl = strnlen(h->devices, SNAP_DEVLIST_MAX + 1);
    if (dl > SNAP_DEVLIST_MAX)
        return w->err = err_set(E2BIG, "the device list is longer than %u bytes", SNAP_DEVLIST_MAX);
    snap_put_bytes(w, SNAP_MAGIC, 8);
    snap_put_u32(w, SNAP_FORMAT_VERSION);
    snap_put_u32(w, (uint32_t)(SNAP_HEADER_FIXED + dl));
    snap_put_u64(w, h->mem_size);
    snap_put_u32(w, h->ncpus);
    snap_put_u32(w, h->mem_format);
    put_fixed_str(w, h->cpu_model, 32);
    snap_put_bytes(w, h->cpuid_hash, SHA256_LEN);
    put_fixed_str(w, h->backend, 16);
    snap_put_u64(w, h->tsc_khz);
    snap_put_bytes(w, h->id, SNAP_ID_LEN);
    snap_put_u32(w, h->flags);
    snap_put_u32(w, 0); /* section count, patched by finish */
    snap_put_u16(w, (uint16_t)dl);
    snap_put_bytes(w, h->devices, dl);
    return w->err;
}

void snap_section_begin(struct snap_writer *w, const char *name, uint32_t version, uint32_t flags)
{
    if (w->err) return;
    w->sec_start = w->len;
    put_fixed_str(w, name, SNAP_NAME_LEN);
    snap_put_u32(w, version);
    snap_put_u32(w, flags);
    snap_put_u64(w, 0); /* length, patched by section_end */
}

int snap_section_end(struct snap_writer *w)
{
    if (w->err) return w->err;
    uint64_t n = w->len - w->sec_start - SNAP_SEC_HDR;
    if (n > SNAP_SECTION_MAX) {
        char name[SNAP_NAME_LEN + 1] = {0};
        memcpy(name, w->buf + w->sec_start, SNAP_NAME_LEN);
        return w->err = err_set(E2BIG, "section %s: %llu bytes is over the %u MiB cap", name,
                                (unsigned long long)n, SNAP_SECTION_MAX >> 20);
    }
    for (int i = 0; i < 8; i++)
        w->buf[w->sec_start + 32 + i] = (uint8_t)(n >> (8 * i));
    w->nsec++;
    w->sec_start = 0;
    return 0;
}

int snap_writer_finish(struct snap_writer *w)
{
    if (w->err) return w->err;
    if (w->nsec > SNAP_MAX_SECTIONS)
        return w->err = err_set(E2BIG, "%u sections (the cap is %u)", w->nsec, SNAP_MAX_SECTIONS);
    for (int i = 0; i < 4; i++)
        w->buf[140 + i] = (uint8_t)(w->nsec >> (8 * i));
    uint8_t sum[SHA256_LEN];
    sha256(w->buf, w->len, sum);
    snap_put_bytes(w, sum, SHA256_LEN);
    return w->err;
}

void snap_writer_free(struct snap_writer *w)
{
    free(w->buf);
    memset(w, 0, sizeof(*w));
}

/* ---- reading ------------------------------------------------------------------------------ */

static uint64_t le(const uint8_t *p, unsigned n)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < n; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* A fixed-size NUL-padded text field: printable ASCII, then only NULs. */
static bool get_fixed_str(const uint8_t *p, size_t field, char *out)
{
    size_t n = 0;
    while (n < field && p[n]) {
        if (p[n] < 0x20 || p[n] > 0x7e) return false;
        n++;
    }
    for (size_t i = n; i < field; i++)
        if (p[i]) return false;
    memcpy(out, p, n);
    out[n] = 0;
    return true;
}

int snap_parse(const uint8_t *buf, size_t len, struct snap_file *f)
{
    memset(f, 0, sizeof(*f));
    if (len < 12 || memcmp(buf, SNAP_MAGIC, 8))
        return err_set(EINVAL, "header: not a lookout snapshot (bad magic)");
    uint32_t version = (uint32_t)le(buf + 8, 4);
    if (version != SNAP_FORMAT_VERSION)
        return err_set(EINVAL,
                       "header: format version %u, this lookout reads version %u only (use the "
                       "lookout that wrote it)",
                       version, SNAP_FORMAT_VERSION);
    if (len > SNAP_FILE_MAX)
        return err_set(E2BIG, "file: %zu bytes is over the %u MiB cap", len, SNAP_FILE_MAX >> 20);
    if (len < SNAP_HEADER_FIXED + SHA256_LEN)
        return err_set(EINVAL, "header: truncated (%zu bytes)", len);
    size_t body = len - SHA256_LEN;
    uint8_t sum[SHA256_LEN];
    sha256(buf, body, sum);
    if (memcmp(sum, buf + body, SHA256_LEN))
        return err_set(EINVAL, "checksum: the SHA-256 over the file does not match (the file is "
                               "truncated, corrupted or was modified)");
    struct snap_header *h = &f->h;
    h->version = version;
    uint32_t hlen = (uint32_t)le(buf + 12, 4);
    h->mem_size = le(buf + 16, 8);
    h->ncpus = (uint32_t)le(buf + 24, 4);
    h->mem_format = (uint32_t)le(buf + 28, 4);
    if (!get_fixed_str(buf + 32, 32, h->cpu_model) || !h->cpu_model[0])
        return err_set(EINVAL, "header: bad CPU model name");
    memcpy(h->cpuid_hash, buf + 64, SHA256_LEN);
    if (!get_fixed_str(buf + 96, 16, h->backend))
        return err_set(EINVAL, "header: bad backend name");
    h->tsc_khz = le(buf + 112, 8);
    memcpy(h->id, buf + 120, SNAP_ID_LEN);
    h->flags = (uint32_t)le(buf + 136, 4);
    uint32_t nsec = (uint32_t)le(buf + 140, 4);
    uint32_t dl = (uint32_t)le(buf + 144, 2);
    if (h->flags) return err_set(EINVAL, "header: unknown flags %#x", h->flags);
    if (dl > SNAP_DEVLIST_MAX || hlen != SNAP_HEADER_FIXED + dl || hlen > body)
        return err_set(EINVAL, "header: bad length %u (device list %u bytes)", hlen, dl);
    for (uint32_t i = 0; i < dl; i++)
        if (buf[SNAP_HEADER_FIXED + i] < 0x20 || buf[SNAP_HEADER_FIXED + i] > 0x7e)
            return err_set(EINVAL, "header: the device list is not printable text");
    memcpy(h->devices, buf + SNAP_HEADER_FIXED, dl);
    h->devices[dl] = 0;
    if (h->mem_format > SNAP_MEM_ZSTD)
        return err_set(EINVAL, "header: unknown memory format %u", h->mem_format);
    if (h->ncpus < 1 || h->ncpus > 64)
        return err_set(EINVAL, "header: %u vCPUs is out of range (1 to 64)", h->ncpus);
    if (h->mem_size < (16ull << 20) || h->mem_size > (64ull << 30) || (h->mem_size & 4095))
        return err_set(EINVAL, "header: memory size %llu is out of range",
                       (unsigned long long)h->mem_size);
    if (nsec > SNAP_MAX_SECTIONS)
        return err_set(EINVAL, "header: %u sections (the cap is %u)", nsec, SNAP_MAX_SECTIONS);

    size_t off = hlen;
    for (uint32_t i = 0; i < nsec; i++) {
        struct snap_section *s = &f->sec[i];
        if (body - off < SNAP_SEC_HDR)
            return err_set(EINVAL, "section %u of %u: truncated header", i + 1, nsec);
        if (!get_fixed_str(buf + off, SNAP_NAME_LEN, s->name) || !s->name[0])
            return err_set(EINVAL, "section %u of %u: bad name", i + 1, nsec);
        s->version = (uint32_t)le(buf + off + 24, 4);
        s->flags = (uint32_t)le(buf + off + 28, 4);
        s->len = le(buf + off + 32, 8);
        off += SNAP_SEC_HDR;
        if (s->flags & ~SNAP_SEC_OPTIONAL)
            return err_set(EINVAL, "section %s: unknown flags %#x", s->name, s->flags);
        if (s->len > SNAP_SECTION_MAX)
            return err_set(E2BIG, "section %s: %llu bytes is over the %u MiB cap", s->name,
                           (unsigned long long)s->len, SNAP_SECTION_MAX >> 20);
        if (s->len > body - off)
            return err_set(EINVAL, "section %s: %llu bytes, only %zu left in the file", s->name,
                           (unsigned long long)s->len, body - off);
        s->data = buf + off;
        off += s->len;
        for (uint32_t k = 0; k < i; k++)
            if (!strcmp(f->sec[k].name, s->name))
                return err_set(EINVAL, "section %s: appears twice", s->name);
    }
    if (off != body) return err_set(EINVAL, "file: %zu bytes after the last section", body - off);
    f->nsec = nsec;
    return 0;
}

const struct snap_section *snap_find(const struct snap_file *f, const char *name)
{
    for (unsigned i = 0; i < f->nsec; i++)
        if (!strcmp(f->sec[i].name, name)) return &f->sec[i];
    return NULL;
}

void snap_rd_init(struct snap_rd *r, const struct snap_section *sec)
{
    r->sec = sec;
    r->off = 0;
    r->bad = false;
}

void snap_get_bytes(struct snap_rd *r, void *out, size_t n)
{
    if (r->bad || n > r->sec->len - r->off) {
        r->bad = true;
        memset(out, 0, n);
        return;
    }
    memcpy(out, r->sec->data + r->off, n);
    r->off += n;
}

uint8_t snap_get_u8(struct snap_rd *r)
{
    uint8_t b = 0;
    snap_get_bytes(r, &b, 1);
    return b;
}
uint16_t snap_get_u16(struct snap_rd *r)
{
    uint8_t b[2];
    snap_get_bytes(r, b, 2);
    return (uint16_t)le(b, 2);
}
uint32_t snap_get_u32(struct snap_rd *r)
{
    uint8_t b[4];
    snap_get_bytes(r, b, 4);
    return (uint32_t)le(b, 4);
}
uint64_t snap_get_u64(struct snap_rd *r)
{
    uint8_t b[8];
    snap_get_bytes(r, b, 8);
    return le(b, 8);
}

int snap_rd_done(struct snap_rd *r)
{
    if (r->bad)
        return err_set(EINVAL, "section %s (version %u): truncated (%llu bytes)", r->sec->name,
                       r->sec->version, (unsigned long long)r->sec->len);
    if (r->off != r->sec->len)
        return err_set(EINVAL, "section %s: %llu bytes left over after its fields", r->sec->name,
                       (unsigned long long)(r->sec->len - r->off));
    return 0;
}
