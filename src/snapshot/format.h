/* The snapshot state file: a header (machine configuration), named sections and a SHA-256 trailer.
 * docs/snapshot-format.md is the specification; this is its encoder and its hostile-input parser.
 *
 * Everything is little-endian and written field by field (never a struct dump), so the format
 * depends on neither the compiler nor the backend.  The parser trusts nothing: every length is
 * checked against what remains, against the per-section cap and against the file cap; the
 * checksum is verified before any field is believed; errors name the section and the reason.
 * This file knows nothing about VMs: it is pure data, unit-tested and fuzzed on its own. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "snapshot/hash.h"

#define SNAP_MAGIC          "LOOKSNAP"
#define SNAP_FORMAT_VERSION 1u
#define SNAP_NAME_LEN       24          /* section name field, NUL-padded */
#define SNAP_SECTION_MAX    (4u << 20)  /* payload cap of one section */
#define SNAP_FILE_MAX       (64u << 20) /* cap of the whole state file */
#define SNAP_MAX_SECTIONS   512u
#define SNAP_DEVLIST_MAX    1024u /* bytes of the device list string */
#define SNAP_HEADER_FIXED   146u  /* bytes before the device list */
#define SNAP_SEC_HDR        40u   /* name[24] version flags length */
#define SNAP_ID_LEN         16

/* Section flags */
#define SNAP_SEC_OPTIONAL 1u /* a reader that does not know the section may skip it */

/* How guest memory is stored (header mem_format) */
enum snap_mem_format { SNAP_MEM_RAW = 0, SNAP_MEM_ZSTD = 1 };

struct snap_header {
    uint32_t version;
    uint64_t mem_size;
    uint32_t ncpus;
    uint32_t mem_format;
    char cpu_model[33];
    uint8_t cpuid_hash[SHA256_LEN];
    char backend[17];
    uint64_t tsc_khz;
    uint8_t id[SNAP_ID_LEN]; /* also in the memory file: pairs the two */
    uint32_t flags;          /* reserved, 0 */
    char devices[SNAP_DEVLIST_MAX + 1];
};

struct snap_section {
    char name[SNAP_NAME_LEN + 1];
    uint32_t version, flags;
    const uint8_t *data; /* points into the parsed buffer */
    uint64_t len;
};

struct snap_file {
    struct snap_header h;
    unsigned nsec;
    struct snap_section sec[SNAP_MAX_SECTIONS];
};

/* ---- writing ---- */
struct snap_writer {
    uint8_t *buf;
    size_t len, cap;
    int err;          /* first error (-errno, err_set() done) */
    size_t sec_start; /* offset of the open section's header, or 0 */
    unsigned nsec;
};

int snap_writer_begin(struct snap_writer *w, const struct snap_header *h);
void snap_section_begin(struct snap_writer *w, const char *name, uint32_t version, uint32_t flags);
int snap_section_end(struct snap_writer *w); /* refuses a payload over SNAP_SECTION_MAX */
void snap_put_u8(struct snap_writer *w, uint8_t v);
void snap_put_u16(struct snap_writer *w, uint16_t v);
void snap_put_u32(struct snap_writer *w, uint32_t v);
void snap_put_u64(struct snap_writer *w, uint64_t v);
void snap_put_bytes(struct snap_writer *w, const void *p, size_t n);
/* Patches the section count and appends the checksum; the file is w->buf[0..w->len). */
int snap_writer_finish(struct snap_writer *w);
void snap_writer_free(struct snap_writer *w);

/* ---- reading ---- */
/* Parses and verifies buf (magic, version, size caps, checksum, header, every section header).
 * 0, or -EINVAL / -E2BIG with err_set() naming the part and the reason.  f->sec[].data point into
 * buf, which must outlive f. */
int snap_parse(const uint8_t *buf, size_t len, struct snap_file *f);
const struct snap_section *snap_find(const struct snap_file *f, const char *name);

/* A bounds-checked cursor over one section's payload.  Reads past the end return 0 and set bad;
 * snap_rd_done() then says "section X: truncated" or "N bytes left over". */
struct snap_rd {
    const struct snap_section *sec;
    uint64_t off;
    bool bad;
};
void snap_rd_init(struct snap_rd *r, const struct snap_section *sec);
uint8_t snap_get_u8(struct snap_rd *r);
uint16_t snap_get_u16(struct snap_rd *r);
uint32_t snap_get_u32(struct snap_rd *r);
uint64_t snap_get_u64(struct snap_rd *r);
void snap_get_bytes(struct snap_rd *r, void *out, size_t n);
int snap_rd_done(struct snap_rd *r); /* 0, or -EINVAL with err_set() */
