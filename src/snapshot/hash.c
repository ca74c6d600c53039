/* Thin wrappers that keep the snapshot code independent of which library computes its hashes
 * (see hash.h).  libsodium's SHA-256 functions need no sodium_init(): they use no randomness. */
#include "snapshot/hash.h"

#include <xxhash.h>

void sha256_init(struct sha256 *c)
{
    crypto_hash_sha256_init(&c->st);
}

void sha256_update(struct sha256 *c, const void *data, size_t n)
{
    if (n) crypto_hash_sha256_update(&c->st, data, n);
}

void sha256_final(struct sha256 *c, uint8_t out[SHA256_LEN])
{
    crypto_hash_sha256_final(&c->st, out);
}

void sha256(const void *data, size_t n, uint8_t out[SHA256_LEN])
{
    crypto_hash_sha256(out, data, n);
}

uint64_t xxh64(const void *data, size_t n, uint64_t seed)
{
    return XXH64(data, n, seed);
}
