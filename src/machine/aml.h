/* A small AML (ACPI Machine Language) encoder for the DSDT: names, integers, strings, packages,
 * devices, scopes and resource-template buffers.  Output only; trusts its callers (the board),
 * but never writes past its buffer: an overflow sets `err` and the result must be discarded. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define AML_MAX_DEPTH 16

struct aml {
    uint8_t *buf;
    size_t len, cap;
    bool err;
    size_t open[AML_MAX_DEPTH]; /* start offsets of PkgLength-prefixed bodies not yet closed */
    unsigned depth;
};

void aml_init(struct aml *a, uint8_t *buf, size_t cap);
void aml_byte(struct aml *a, uint8_t b);
void aml_bytes(struct aml *a, const void *p, size_t n);

/* PkgLength encoding (ACPI 6.x 20.2.4): writes the encoding of a package whose total length,
 * including the encoding itself, is body + encoding size.  Returns the encoding size (1-4), or
 * 0 if body is too large (>= 2^28 - 4). */
unsigned aml_pkglen_encode(size_t body, uint8_t out[4]);

/* Opens/closes a PkgLength-prefixed body (the encoding is inserted at close). */
void aml_pkg_begin(struct aml *a);
void aml_pkg_end(struct aml *a);

/* A NameString: "\\" prefix allowed, then one or more 4-char segments separated by '.';
 * shorter segments are padded with '_'. */
void aml_name(struct aml *a, const char *name);
void aml_integer(struct aml *a, uint64_t v); /* Zero/One/Byte/Word/DWord/QWord const */
void aml_string(struct aml *a, const char *s);
void aml_eisaid(struct aml *a, const char *id); /* "PNP0501" -> DWordConst */

void aml_name_decl(struct aml *a, const char *name); /* NameOp + name; the object follows */
void aml_scope_begin(struct aml *a, const char *name);
void aml_device_begin(struct aml *a, const char *name);
void aml_package_begin(struct aml *a, uint8_t nelems);
void aml_end(struct aml *a); /* closes a scope, device or package */
void aml_buffer(struct aml *a, const uint8_t *data, size_t n);

/* Resource templates (ACPI 6.x 6.4): descriptors appended to a byte array. */
struct aml_res {
    uint8_t b[256];
    size_t n;
    bool err;
};
void aml_res_io(struct aml_res *r, uint16_t base, uint8_t len); /* IO(Decode16, b, b, 1, len) */
void aml_res_irq_noflags(struct aml_res *r, uint8_t irq);       /* edge, active high */
void aml_res_mem32_fixed(struct aml_res *r, uint32_t base, uint32_t size); /* read-write */
/* Extended Interrupt, resource consumer, exclusive: level or edge, active high or low. */
void aml_res_ext_irq(struct aml_res *r, uint32_t gsi, bool level, bool active_low);
void aml_res_end(struct aml_res *r); /* End Tag with the checksum over the whole template */
/* Name(name, ResourceTemplate(){...}) from a finished template. */
void aml_name_res(struct aml *a, const char *name, const struct aml_res *r);
