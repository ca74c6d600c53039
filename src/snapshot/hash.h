/* Hashes for snapshot integrity: SHA-256 (FIPS 180-4) over the state file, and XXH64 (the public
 * xxHash64 algorithm) per memory page, because hashing a large RAM image with SHA-256 alone would
 * dominate save time.  Plain C, no library: the format must not depend on what is installed.
 * Trusts: nothing; any bytes hash. */
#pragma once
#include <stddef.h>
#include <stdint.h>

#define SHA256_LEN 32

struct sha256 {
    uint32_t h[8];
    uint64_t total; /* bytes hashed so far */
    uint8_t buf[64];
    size_t nbuf;
};

void sha256_init(struct sha256 *c);
void sha256_update(struct sha256 *c, const void *data, size_t n);
void sha256_final(struct sha256 *c, uint8_t out[SHA256_LEN]);
void sha256(const void *data, size_t n, uint8_t out[SHA256_LEN]);

uint64_t xxh64(const void *data, size_t n, uint64_t seed);
