/* Synthetic kernel images shared by the loader unit tests (test_boot.c, test_boot_fuzz.c):
 * a minimal bzImage, ELF32/ELF64 executables, a Multiboot header and an a.out-kludge image. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

static inline void wr16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}
static inline void wr32(uint8_t *p, uint32_t v)
{
    wr16(p, (uint16_t)v);
    wr16(p + 2, (uint16_t)(v >> 16));
}
static inline void wr64(uint8_t *p, uint64_t v)
{
    wr32(p, (uint32_t)v);
    wr32(p + 4, (uint32_t)(v >> 32));
}
static inline uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t rd64(const uint8_t *p)
{
    return rd32(p) | (uint64_t)rd32(p + 4) << 32;
}

#define BZ_SETUP_SECTS 4
#define BZ_SETUP       ((BZ_SETUP_SECTS + 1) * 512)
#define BZ_PM          8192
#define BZ_SIZE        (BZ_SETUP + BZ_PM)

static inline void make_bzimage(uint8_t *b)
{
    memset(b, 0, BZ_SIZE);
    b[0x1f1] = BZ_SETUP_SECTS;
    wr16(b + 0x1fe, 0xaa55);
    b[0x200] = 0xeb;
    b[0x201] = 0x6a; /* header ends at 0x26c */
    memcpy(b + 0x202, "HdrS", 4);
    wr16(b + 0x206, 0x020f);
    b[0x211] = 0x01; /* LOADED_HIGH */
    wr32(b + 0x22c, 0x7fffffff);
    wr32(b + 0x230, 0x200000);
    b[0x234] = 1;       /* relocatable */
    wr16(b + 0x236, 3); /* XLF_KERNEL_64 | CAN_BE_LOADED_ABOVE_4G */
    wr32(b + 0x238, 2047);
    wr64(b + 0x258, 0x1000000);
    wr32(b + 0x260, 0x400000);
    for (int i = 0; i < BZ_PM; i++)
        b[BZ_SETUP + i] = (uint8_t)(i * 7 + 1);
}

struct elf_seg {
    uint64_t off, vaddr, paddr, filesz, memsz;
};

/* A minimal ELF executable with the given segments (class 32 or 64). */
static inline size_t make_elf(uint8_t *b, size_t cap, int cls, uint64_t entry,
                              const struct elf_seg *sg, unsigned n)
{
    memset(b, 0, cap);
    bool is64 = cls == 64;
    memcpy(b,
           "\x7f"
           "ELF",
           4);
    b[4] = is64 ? 2 : 1;
    b[5] = 1;
    b[6] = 1;
    wr16(b + 16, 2);
    wr16(b + 18, is64 ? 62 : 3);
    wr32(b + 20, 1);
    size_t phoff = is64 ? 64 : 52, phsz = is64 ? 56 : 32;
    if (is64) {
        wr64(b + 24, entry);
        wr64(b + 32, phoff);
        wr16(b + 52, 64);
        wr16(b + 54, (uint16_t)phsz);
        wr16(b + 56, (uint16_t)n);
    } else {
        wr32(b + 24, (uint32_t)entry);
        wr32(b + 28, (uint32_t)phoff);
        wr16(b + 40, 52);
        wr16(b + 42, (uint16_t)phsz);
        wr16(b + 44, (uint16_t)n);
    }
    size_t end = 0;
    for (unsigned i = 0; i < n; i++) {
        uint8_t *ph = b + phoff + i * phsz;
        wr32(ph, 1);
        if (is64) {
            wr32(ph + 4, 7);
            wr64(ph + 8, sg[i].off);
            wr64(ph + 16, sg[i].vaddr);
            wr64(ph + 24, sg[i].paddr);
            wr64(ph + 32, sg[i].filesz);
            wr64(ph + 40, sg[i].memsz);
        } else {
            wr32(ph + 4, (uint32_t)sg[i].off);
            wr32(ph + 8, (uint32_t)sg[i].vaddr);
            wr32(ph + 12, (uint32_t)sg[i].paddr);
            wr32(ph + 16, (uint32_t)sg[i].filesz);
            wr32(ph + 20, (uint32_t)sg[i].memsz);
            wr32(ph + 24, 7);
        }
        if (sg[i].off + sg[i].filesz <= cap) {
            for (uint64_t j = 0; j < sg[i].filesz; j++)
                b[sg[i].off + j] = (uint8_t)(j * 13 + i + 1);
            if (sg[i].off + sg[i].filesz > end) end = sg[i].off + sg[i].filesz;
        }
    }
    return end;
}

static inline void mb_header(uint8_t *h, uint32_t flags)
{
    wr32(h, 0x1BADB002u);
    wr32(h + 4, flags);
    wr32(h + 8, (uint32_t)(0u - 0x1BADB002u - flags));
}

#define AOUT_SIZE 0x3000

static inline void make_aout(uint8_t *b)
{
    memset(b, 0, AOUT_SIZE);
    /* header 0x40 bytes into the image; image loads at 1 MiB */
    uint8_t *h = b + 0x40;
    mb_header(h, 0x10003);
    wr32(h + 12, 0x100040); /* header_addr */
    wr32(h + 16, 0x100000); /* load_addr */
    wr32(h + 20, 0x102000); /* load_end_addr */
    wr32(h + 24, 0x108000); /* bss_end_addr */
    wr32(h + 28, 0x100080); /* entry */
    for (int i = 0x80; i < AOUT_SIZE; i++)
        b[i] = (uint8_t)i;
}

/* Appends an LZ4 length continuation (the part of a length beyond the token's 15). */
static inline size_t lz4_len(uint8_t *b, size_t pos, size_t v)
{
    while (v >= 255) {
        b[pos++] = 255;
        v -= 255;
    }
    b[pos++] = (uint8_t)v;
    return pos;
}

/* A bzImage (make_bzimage) whose payload is an LZ4 legacy frame holding an ELF64 vmlinux: one
 * block with a literal run, a back-reference (offset 256) and a final literal run.  Fills elf[]
 * with the uncompressed ELF (LZ4_ELF_SIZE bytes); returns the image size and where the block
 * sits in it (after the frame magic and block size). */
#define LZ4_ELF_SIZE 0x3000
static inline size_t make_lz4_bzimage(uint8_t *b, size_t cap, uint8_t *elf, size_t *blk_at,
                                      size_t *blk_len)
{
    struct elf_seg sg = {0x1000, 0xffffffff81000000ull, 0x1000000, 0x2000, 0x2800};
    size_t en = make_elf(elf, LZ4_ELF_SIZE, 64, 0x1000000, &sg, 1); /* data has period 256 */
    make_bzimage(b);
    size_t payload = 0x100;
    uint8_t *pl = b + BZ_SETUP + payload;
    uint8_t *blk = pl + 8;
    size_t lit1 = 0x1100, tail = 8, ml = en - lit1 - tail, n = 0;
    blk[n++] = 0xff; /* 15+ literals, 15+ match */
    n = lz4_len(blk, n, lit1 - 15);
    memcpy(blk + n, elf, lit1);
    n += lit1;
    blk[n++] = 0x00; /* offset 256 */
    blk[n++] = 0x01;
    n = lz4_len(blk, n, ml - 4 - 15);
    blk[n++] = (uint8_t)(tail << 4);
    memcpy(blk + n, elf + en - tail, tail);
    n += tail;
    wr32(pl, 0x184c2102u);
    wr32(pl + 4, (uint32_t)n);
    wr32(pl + 8 + n, (uint32_t)en);
    size_t plen = 4 + 4 + n + 4;
    wr32(b + 0x248, (uint32_t)payload);
    wr32(b + 0x24c, (uint32_t)plen);
    *blk_at = (size_t)(blk - b);
    *blk_len = n;
    (void)cap;
    return BZ_SETUP + payload + plen;
}
