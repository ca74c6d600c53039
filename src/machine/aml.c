/* AML encoder (see aml.h).  Encodings from the ACPI specification, chapter 20 (AML grammar) and
 * 6.4 (resource descriptors).  Bounds-checked: an overflow marks the buffer bad. */
#include "machine/aml.h"

#include <string.h>

enum {
    AML_ZERO = 0x00,
    AML_ONE = 0x01,
    AML_NAME_OP = 0x08,
    AML_BYTE_PREFIX = 0x0a,
    AML_WORD_PREFIX = 0x0b,
    AML_DWORD_PREFIX = 0x0c,
    AML_STRING_PREFIX = 0x0d,
    AML_QWORD_PREFIX = 0x0e,
    AML_SCOPE_OP = 0x10,
    AML_BUFFER_OP = 0x11,
    AML_PACKAGE_OP = 0x12,
    AML_EXT_OP = 0x5b,
    AML_DEVICE_OP = 0x82, /* after ExtOpPrefix */
    AML_DUAL_NAME = 0x2e,
    AML_MULTI_NAME = 0x2f,
};

void aml_init(struct aml *a, uint8_t *buf, size_t cap)
{
    memset(a, 0, sizeof(*a));
    a->buf = buf;
    a->cap = cap;
}

void aml_byte(struct aml *a, uint8_t b)
{
    if (a->len >= a->cap) {
        a->err = true;
        return;
    }
    a->buf[a->len++] = b;
}

void aml_bytes(struct aml *a, const void *p, size_t n)
{
    if (n > a->cap - a->len) {
        a->err = true;
        return;
    }
    memcpy(a->buf + a->len, p, n);
    a->len += n;
}

unsigned aml_pkglen_encode(size_t body, uint8_t out[4])
{
    /* One byte holds totals up to 63 in bits 0-5; with n follow bytes, bits 0-3 of the lead
     * byte hold the low nibble and the follow bytes the next 8*n bits (total < 2^(4+8n)). */
    if (body + 1 <= 0x3f) {
        out[0] = (uint8_t)(body + 1);
        return 1;
    }
    for (unsigned n = 1; n <= 3; n++) {
        size_t total = body + 1 + n;
        if (total < (1ull << (4 + 8 * n))) {
            out[0] = (uint8_t)((n << 6) | (total & 0xf));
            for (unsigned i = 0; i < n; i++)
                out[1 + i] = (uint8_t)(total >> (4 + 8 * i));
            return n + 1;
        }
    }
    return 0;
}

void aml_pkg_begin(struct aml *a)
{
    if (a->depth >= AML_MAX_DEPTH) {
        a->err = true;
        return;
    }
    a->open[a->depth++] = a->len;
}

void aml_pkg_end(struct aml *a)
{
    if (a->depth == 0) {
        a->err = true;
        return;
    }
    size_t start = a->open[--a->depth];
    if (a->err) return;
    size_t body = a->len - start;
    uint8_t enc[4];
    unsigned n = aml_pkglen_encode(body, enc);
    if (n == 0 || n > a->cap - a->len) {
        a->err = true;
        return;
    }
    memmove(a->buf + start + n, a->buf + start, body);
    memcpy(a->buf + start, enc, n);
    a->len += n;
}

static void nameseg(struct aml *a, const char *s, size_t n)
{
    char seg[4] = {'_', '_', '_', '_'};
    if (n == 0 || n > 4) {
        a->err = true;
        return;
    }
    memcpy(seg, s, n);
    aml_bytes(a, seg, 4);
}

void aml_name(struct aml *a, const char *name)
{
    while (*name == '\\' || *name == '^')
        aml_byte(a, (uint8_t)*name++);
    const char *segs[8];
    size_t lens[8];
    unsigned nseg = 0;
    for (const char *p = name; *p;) {
        const char *dot = strchr(p, '.');
        size_t l = dot ? (size_t)(dot - p) : strlen(p);
        if (nseg == 8) {
            a->err = true;
            return;
        }
        segs[nseg] = p;
        lens[nseg++] = l;
        p += l;
        if (*p == '.') p++;
    }
    if (nseg == 0) {
        aml_byte(a, 0); /* NullName */
        return;
    }
    if (nseg == 2) aml_byte(a, AML_DUAL_NAME);
    if (nseg > 2) {
        aml_byte(a, AML_MULTI_NAME);
        aml_byte(a, (uint8_t)nseg);
    }
    for (unsigned i = 0; i < nseg; i++)
        nameseg(a, segs[i], lens[i]);
}

void aml_integer(struct aml *a, uint64_t v)
{
    if (v == 0) {
        aml_byte(a, AML_ZERO);
        return;
    }
    if (v == 1) {
        aml_byte(a, AML_ONE);
        return;
    }
    unsigned n;
    if (v <= 0xff) {
        aml_byte(a, AML_BYTE_PREFIX);
        n = 1;
    } else if (v <= 0xffff) {
        aml_byte(a, AML_WORD_PREFIX);
        n = 2;
    } else if (v <= 0xffffffffull) {
        aml_byte(a, AML_DWORD_PREFIX);
        n = 4;
    } else {
        aml_byte(a, AML_QWORD_PREFIX);
        n = 8;
    }
    for (unsigned i = 0; i < n; i++)
        aml_byte(a, (uint8_t)(v >> (8 * i)));
}

void aml_string(struct aml *a, const char *s)
{
    aml_byte(a, AML_STRING_PREFIX);
    aml_bytes(a, s, strlen(s) + 1);
}

void aml_eisaid(struct aml *a, const char *id)
{
    /* Three letters compressed to 5 bits each, then four hex digits; stored big-endian. */
    if (strlen(id) != 7) {
        a->err = true;
        return;
    }
    uint16_t vendor = 0;
    for (int i = 0; i < 3; i++) {
        if (id[i] < 'A' || id[i] > 'Z') a->err = true;
        vendor = (uint16_t)(vendor << 5 | ((id[i] - 0x40) & 0x1f));
    }
    uint16_t product = 0;
    for (int i = 3; i < 7; i++) {
        char c = id[i];
        unsigned d = c >= '0' && c <= '9'   ? (unsigned)(c - '0')
                     : c >= 'A' && c <= 'F' ? (unsigned)(c - 'A' + 10)
                                            : (a->err = true, 0u);
        product = (uint16_t)(product << 4 | d);
    }
    uint32_t v = (uint32_t)(vendor >> 8) | (uint32_t)(vendor & 0xff) << 8 |
                 (uint32_t)(product >> 8) << 16 | (uint32_t)(product & 0xff) << 24;
    aml_byte(a, AML_DWORD_PREFIX);
    for (unsigned i = 0; i < 4; i++)
        aml_byte(a, (uint8_t)(v >> (8 * i)));
}

void aml_name_decl(struct aml *a, const char *name)
{
    aml_byte(a, AML_NAME_OP);
    aml_name(a, name);
}

void aml_scope_begin(struct aml *a, const char *name)
{
    aml_byte(a, AML_SCOPE_OP);
    aml_pkg_begin(a);
    aml_name(a, name);
}

void aml_device_begin(struct aml *a, const char *name)
{
    aml_byte(a, AML_EXT_OP);
    aml_byte(a, AML_DEVICE_OP);
    aml_pkg_begin(a);
    aml_name(a, name);
}

void aml_package_begin(struct aml *a, uint8_t nelems)
{
    aml_byte(a, AML_PACKAGE_OP);
    aml_pkg_begin(a);
    aml_byte(a, nelems);
}

void aml_end(struct aml *a)
{
    aml_pkg_end(a);
}

void aml_buffer(struct aml *a, const uint8_t *data, size_t n)
{
    aml_byte(a, AML_BUFFER_OP);
    aml_pkg_begin(a);
    aml_integer(a, n);
    aml_bytes(a, data, n);
    aml_pkg_end(a);
}

static void res_bytes(struct aml_res *r, const uint8_t *p, size_t n)
{
    if (n > sizeof(r->b) - r->n) {
        r->err = true;
        return;
    }
    memcpy(r->b + r->n, p, n);
    r->n += n;
}

void aml_res_io(struct aml_res *r, uint16_t base, uint8_t len)
{
    /* Small item 0x08 (I/O port), length 7: decode16, min, max, alignment, length. */
    uint8_t d[8] = {
        0x47, 0x01, (uint8_t)base, (uint8_t)(base >> 8), (uint8_t)base, (uint8_t)(base >> 8),
        0x01, len};
    res_bytes(r, d, sizeof(d));
}

void aml_res_irq_noflags(struct aml_res *r, uint8_t irq)
{
    /* Small item 0x04 (IRQ), length 2: a 16-bit mask; no flags byte = edge, active high. */
    if (irq > 15) {
        r->err = true;
        return;
    }
    uint16_t mask = (uint16_t)(1u << irq);
    uint8_t d[3] = {0x22, (uint8_t)mask, (uint8_t)(mask >> 8)};
    res_bytes(r, d, sizeof(d));
}

void aml_res_mem32_fixed(struct aml_res *r, uint32_t base, uint32_t size)
{
    /* Large item 0x06 (32-bit fixed memory range), length 9: info (bit 0: writeable). */
    uint8_t d[12] = {0x86, 9, 0, 0x01};
    for (int i = 0; i < 4; i++) {
        d[4 + i] = (uint8_t)(base >> (8 * i));
        d[8 + i] = (uint8_t)(size >> (8 * i));
    }
    res_bytes(r, d, sizeof(d));
}

void aml_res_ext_irq(struct aml_res *r, uint32_t gsi, bool level, bool active_low)
{
    /* Large item 0x09 (extended interrupt), length 6: flags (bit 0 consumer, bit 1 edge,
     * bit 2 active low, bit 3 shared), table length 1, the interrupt number. */
    uint8_t flags = (uint8_t)(0x01 | (level ? 0 : 0x02) | (active_low ? 0x04 : 0));
    uint8_t d[9] = {0x89, 6, 0, flags, 1};
    for (int i = 0; i < 4; i++)
        d[5 + i] = (uint8_t)(gsi >> (8 * i));
    res_bytes(r, d, sizeof(d));
}

void aml_res_end(struct aml_res *r)
{
    uint8_t d[2] = {0x79, 0};
    res_bytes(r, d, 1);
    uint8_t sum = 0x79;
    for (size_t i = 0; i + 1 < r->n; i++)
        sum = (uint8_t)(sum + r->b[i]);
    d[1] = (uint8_t)(0x100 - sum); /* all bytes including the checksum add up to zero */
    res_bytes(r, d + 1, 1);
}

void aml_name_res(struct aml *a, const char *name, const struct aml_res *r)
{
    if (r->err) a->err = true;
    aml_name_decl(a, name);
    aml_buffer(a, r->b, r->n);
}
