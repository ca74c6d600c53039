/* Hashes for snapshot integrity: SHA-256 over the state file (libsodium's implementation), and
 * XXH64 per memory page (libxxhash), because hashing a large RAM image with SHA-256 alone would
 * dominate save time.  Both are standard algorithms, so files do not depend on the library build.
 * Trusts: nothing; any bytes hash. */
#pragma once
#include <stddef.h>
#include <stdint.h>

#include <sodium/crypto_hash_sha256.h>

#define SHA256_LEN 32

struct sha256 {
    crypto_hash_sha256_state st;
};

void sha256_init(struct sha256 *c);
void sha256_update(struct sha256 *c, const void *data, size_t n);
void sha256_final(struct sha256 *c, uint8_t out[SHA256_LEN]);
void sha256(const void *data, size_t n, uint8_t out[SHA256_LEN]);

uint64_t xxh64(const void *data, size_t n, uint64_t seed);
