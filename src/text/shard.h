/* shard.h — the on-disk token shard, shared by its writer (data_prepare.c) and its reader
 * (dataset.c). A shard is a FR_SHARD_HEADER_BYTES header followed by `count` token ids of
 * `width` bytes each, all little-endian:
 *
 *   bytes  0..7   magic "FRUGALTK"
 *          8..11  u32 version (FR_SHARD_VERSION)
 *         12..15  u32 token width in bytes (2 or 4)
 *         16..23  u64 count of tokens
 *         24..27  u32 vocabulary size
 *         28..31  u32 end-of-text id
 *         32..63  zero (reserved)
 *
 * include/frugal.h and docs/data.md describe the same layout for users.
 */
#ifndef FR_TEXT_SHARD_H
#define FR_TEXT_SHARD_H

#include <stdint.h>
#include <string.h>

#define FR_SHARD_HEADER_BYTES 64
#define FR_SHARD_VERSION 1

static const char FR_SHARD_MAGIC[8] = {'F', 'R', 'U', 'G', 'A', 'L', 'T', 'K'};

static inline uint32_t fr_shard_get_u32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t fr_shard_get_u64(const unsigned char *p) {
    return (uint64_t)fr_shard_get_u32(p) | (uint64_t)fr_shard_get_u32(p + 4) << 32;
}

static inline void fr_shard_put_u32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static inline void fr_shard_put_u64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

/* The header of a shard of `count` tokens (the writers: data_prepare.c, sft_prepare.c) */
static inline void fr_shard_make_header(unsigned char h[FR_SHARD_HEADER_BYTES], int width, uint64_t count,
                                        uint32_t vocab, uint32_t eot) {
    memset(h, 0, FR_SHARD_HEADER_BYTES);
    memcpy(h, FR_SHARD_MAGIC, 8);
    fr_shard_put_u32(h + 8, FR_SHARD_VERSION);
    fr_shard_put_u32(h + 12, (uint32_t)width);
    fr_shard_put_u64(h + 16, count);
    fr_shard_put_u32(h + 24, vocab);
    fr_shard_put_u32(h + 28, eot);
}

#endif
