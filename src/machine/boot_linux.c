/* Linux x86-64 boot protocol (Documentation/arch/x86/boot.rst): bzImage through the 64-bit entry
 * point, and an ELF vmlinux entered the same way.  Builds the zero page (boot_params) with the
 * setup header, e820 map, command line, initrd and ACPI RSDP pointer.
 * Trusts nothing in the image: every setup-header field used is range-checked first. */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "machine/boot.h"
#include "machine/e820.h"
#include "machine/layout.h"
#include "util/log.h"

#include <lz4.h>

/* boot_params (the zero page) offsets */
#define BP_ACPI_RSDP_ADDR   0x070
#define BP_EXT_RAMDISK_IMG  0x0c0
#define BP_EXT_RAMDISK_SIZE 0x0c4
#define BP_EXT_CMD_LINE_PTR 0x0c8
#define BP_E820_ENTRIES     0x1e8
#define BP_HDR              0x1f1
#define BP_E820_TABLE       0x2d0
#define BP_E820_MAX         128
#define BP_HDR_MAX_END      0x290 /* struct setup_header cannot grow past edd_mbr_sig_buffer */

/* setup header offsets (in the file and in boot_params alike) */
#define HDR_SETUP_SECTS      0x1f1
#define HDR_BOOT_FLAG        0x1fe
#define HDR_JUMP             0x200
#define HDR_MAGIC            0x202
#define HDR_VERSION          0x206
#define HDR_TYPE_OF_LOADER   0x210
#define HDR_LOADFLAGS        0x211
#define HDR_RAMDISK_IMAGE    0x218
#define HDR_RAMDISK_SIZE     0x21c
#define HDR_HEAP_END_PTR     0x224
#define HDR_CMD_LINE_PTR     0x228
#define HDR_INITRD_ADDR_MAX  0x22c
#define HDR_KERNEL_ALIGNMENT 0x230
#define HDR_RELOCATABLE      0x234
#define HDR_XLOADFLAGS       0x236
#define HDR_CMDLINE_SIZE     0x238
#define HDR_PREF_ADDRESS     0x258
#define HDR_INIT_SIZE        0x260

#define LOADED_HIGH   0x01
#define XLF_KERNEL_64 0x01

#define PROTO_MIN 0x020c /* 2.12: xloadflags, hence XLF_KERNEL_64, exists from here on */

#define HDR_PAYLOAD_OFFSET 0x248
#define HDR_PAYLOAD_LENGTH 0x24c
#define LZ4_LEGACY_MAGIC   0x184c2102u
#define DIRECT_MAX_SIZE    (512u << 20) /* largest decompressed vmlinux we accept */

bool boot_direct_vmlinux = true;

static uint16_t get16(const uint8_t *p, size_t off)
{
    return (uint16_t)(p[off] | p[off + 1] << 8);
}
static uint32_t get32(const uint8_t *p, size_t off)
{
    return (uint32_t)get16(p, off) | (uint32_t)get16(p, off + 2) << 16;
}
static uint64_t get64(const uint8_t *p, size_t off)
{
    return (uint64_t)get32(p, off) | (uint64_t)get32(p, off + 4) << 32;
}
static void put8(uint8_t *p, size_t off, uint8_t v)
{
    p[off] = v;
}
static void put16(uint8_t *p, size_t off, uint16_t v)
{
    p[off] = (uint8_t)v;
    p[off + 1] = (uint8_t)(v >> 8);
}
static void put32(uint8_t *p, size_t off, uint32_t v)
{
    put16(p, off, (uint16_t)v);
    put16(p, off + 2, (uint16_t)(v >> 16));
}
static void put64(uint8_t *p, size_t off, uint64_t v)
{
    put32(p, off, (uint32_t)v);
    put32(p, off + 4, (uint32_t)(v >> 32));
}

/* Fills the parts of the zero page every Linux entry shares, places the initrd, writes the
 * command line and the zero page, the page tables, and the entry state. */
static int finish_linux(struct vm *vm, const char *path, uint8_t *zp, uint64_t kernel_end,
                        uint64_t initrd_max, const char *initrd, const char *cmdline,
                        uint64_t cmdline_max, uint64_t entry, struct x86_state *bsp)
{
    struct e820_entry e[E820_MAX_ENTRIES];
    int n = e820_build(&vm->mem, e, ARRAY_SIZE(e));
    if (n < 0) return n;
    _Static_assert(E820_MAX_ENTRIES <= BP_E820_MAX, "e820 table fits the zero page");
    for (int i = 0; i < n; i++) {
        size_t off = BP_E820_TABLE + (size_t)i * 20;
        put64(zp, off, e[i].addr);
        put64(zp, off + 8, e[i].size);
        put32(zp, off + 16, e[i].type);
    }
    put8(zp, BP_E820_ENTRIES, (uint8_t)n);
    put64(zp, BP_ACPI_RSDP_ADDR, LAYOUT_ACPI_BASE);

    put8(zp, HDR_TYPE_OF_LOADER, 0xff); /* undefined boot loader */
    put32(zp, HDR_CMD_LINE_PTR, (uint32_t)LAYOUT_CMDLINE);
    put32(zp, BP_EXT_CMD_LINE_PTR, 0);
    int r = boot_write_cmdline(vm, cmdline, cmdline_max);
    if (r < 0) return err_wrap(r, "kernel %s", path);

    if (initrd) {
        uint64_t hi = MIN(e820_low_ram_end(&vm->mem), initrd_max);
        uint64_t addr, size;
        r = boot_place_initrd(vm, initrd, kernel_end, hi, &addr, &size);
        if (r < 0) return r;
        put32(zp, HDR_RAMDISK_IMAGE, (uint32_t)addr);
        put32(zp, HDR_RAMDISK_SIZE, (uint32_t)size);
        put32(zp, BP_EXT_RAMDISK_IMG, (uint32_t)(addr >> 32));
        put32(zp, BP_EXT_RAMDISK_SIZE, (uint32_t)(size >> 32));
    }
    if ((r = guest_write(&vm->mem, LAYOUT_ZERO_PAGE, zp, 4096)) < 0 ||
        (r = boot_write_page_tables(vm)) < 0)
        return r;
    boot_state_long64(bsp, entry, LAYOUT_ZERO_PAGE);
    return 0;
}

/* The kernel's LZ4 payload: a legacy-frame stream (magic, then size-prefixed blocks) followed by
 * the 4-byte decompressed size the kernel build appends.  NULL if it is anything else. */
static uint8_t *lz4_payload(const uint8_t *p, size_t n, size_t *outlen)
{
    if (n < 12 || get32(p, 0) != LZ4_LEGACY_MAGIC) return NULL;
    uint32_t want = get32(p, n - 4);
    if (want == 0 || want > DIRECT_MAX_SIZE) return NULL;
    uint8_t *out = malloc(want);
    if (!out) return NULL;
    size_t i = 4, o = 0, end = n - 4;
    while (i < end) {
        if (end - i < 4) goto bad;
        uint32_t c = get32(p, i);
        i += 4;
        if (c == LZ4_LEGACY_MAGIC) continue; /* concatenated frames */
        if (c > end - i || c > INT32_MAX) goto bad;
        /* liblz4's safe decoder bounds every literal and match against both buffers */
        int got = LZ4_decompress_safe((const char *)p + i, (char *)out + o, (int)c,
                                      (int)MIN((size_t)want - o, (size_t)INT32_MAX));
        if (got < 0) goto bad;
        o += (size_t)got;
        i += c;
    }
    if (o != want) goto bad;
    *outlen = o;
    return out;
bad:
    free(out);
    return NULL;
}

static int load_vmlinux(struct vm *vm, const struct boot_image *k, const uint8_t *hdr,
                        size_t hdr_end, const char *initrd, const char *cmdline,
                        struct x86_state *bsp);

/* Decompresses an LZ4 payload on the host and loads the vmlinux inside it, so the guest does not
 * spend its first (emulated) seconds decompressing itself.  Returns 1 if the payload is not one
 * we can handle (the caller boots the bzImage normally), 0 or -errno otherwise. */
static int try_direct(struct vm *vm, const struct boot_image *k, size_t setup_size, size_t hdr_end,
                      const char *initrd, const char *cmdline, struct x86_state *bsp)
{
    const uint8_t *d = k->data;
    uint64_t off = get32(d, HDR_PAYLOAD_OFFSET), len = get32(d, HDR_PAYLOAD_LENGTH);
    uint64_t pm = k->size - setup_size;
    if (len == 0 || off > pm || len > pm - off) return 1;
    size_t n;
    uint8_t *elf = lz4_payload(d + setup_size + off, len, &n);
    if (!elf) return 1;
    struct boot_image e = {.path = k->path, .data = elf, .size = n};
    int r = 1;
    if (boot_detect(&e) == BOOT_FMT_ELF64) {
        r = load_vmlinux(vm, &e, d, hdr_end, initrd, cmdline, bsp);
        if (r == 0)
            log_info("kernel %s: booting its LZ4 payload (%zu bytes) directly", k->path, n);
        else if (r != -ENOSPC && r != -E2BIG)
            r = 1; /* odd ELF: let the kernel's own path try */
    }
    free(elf);
    return r;
}

int boot_linux_bzimage(struct vm *vm, const struct boot_image *k, const char *initrd,
                       const char *cmdline, struct x86_state *bsp)
{
    const uint8_t *d = k->data;
    const char *p = k->path;
    if (k->size < 1024)
        return err_set(ENOEXEC, "kernel %s: %zu bytes is too short for a bzImage", p, k->size);
    if (get16(d, HDR_BOOT_FLAG) != 0xaa55)
        return err_set(ENOEXEC, "kernel %s: bzImage boot flag is %#x, not 0xaa55: corrupt image", p,
                       get16(d, HDR_BOOT_FLAG));
    uint16_t ver = get16(d, HDR_VERSION);
    if (ver < PROTO_MIN)
        return err_set(ENOEXEC,
                       "kernel %s: boot protocol %u.%02u is too old; lookout needs 2.12 or newer "
                       "(a 64-bit kernel from Linux 3.8 on)",
                       p, ver >> 8, ver & 0xff);
    unsigned setup_sects = d[HDR_SETUP_SECTS] ? d[HDR_SETUP_SECTS] : 4;
    size_t setup_size = (size_t)(setup_sects + 1) * 512;
    if (setup_size >= k->size)
        return err_set(ENOEXEC,
                       "kernel %s: setup code (%zu bytes) is not shorter than the file "
                       "(%zu bytes): truncated bzImage?",
                       p, setup_size, k->size);
    size_t hdr_end = 0x202 + d[HDR_JUMP + 1];
    if (hdr_end < HDR_INIT_SIZE + 4 || hdr_end > setup_size)
        return err_set(ENOEXEC, "kernel %s: setup header length %zu is inconsistent", p,
                       hdr_end - BP_HDR);
    if (hdr_end > BP_HDR_MAX_END) hdr_end = BP_HDR_MAX_END; /* newer header: copy what fits */
    if (!(get16(d, HDR_XLOADFLAGS) & XLF_KERNEL_64))
        return err_set(ENOEXEC, "kernel %s: not a 64-bit kernel (no XLF_KERNEL_64 in xloadflags)",
                       p);
    if (!(d[HDR_LOADFLAGS] & LOADED_HIGH))
        return err_set(ENOEXEC, "kernel %s: kernel cannot be loaded at 1 MiB (no LOADED_HIGH)", p);

    uint64_t pm_size = k->size - setup_size;
    uint64_t init_size = get32(d, HDR_INIT_SIZE);
    uint64_t need = MAX(init_size, pm_size);
    uint32_t align = get32(d, HDR_KERNEL_ALIGNMENT);
    bool reloc = d[HDR_RELOCATABLE] != 0;
    uint64_t pref = get64(d, HDR_PREF_ADDRESS);
    uint64_t load = pref;
    if (reloc) {
        if (align < 0x1000 || align > (1u << 30) || (align & (align - 1)))
            return err_set(ENOEXEC,
                           "kernel %s: kernel_alignment %#x is not a power of two "
                           "between 4 KiB and 1 GiB",
                           p, align);
        /* The preferred address avoids a self-relocation; otherwise the lowest aligned one. */
        if (pref % align || boot_check_kernel_range(vm, pref, need, p, "kernel") < 0)
            load = ALIGN_UP((uint64_t)LAYOUT_KERNEL_MIN, (uint64_t)align);
    }
    if (boot_direct_vmlinux) {
        int d_r = try_direct(vm, k, setup_size, hdr_end, initrd, cmdline, bsp);
        if (d_r <= 0) return d_r;
    }
    int r = boot_check_kernel_range(vm, load, need, p, "bzImage (init_size)");
    if (r < 0) return r;
    if ((r = guest_write(&vm->mem, load, d + setup_size, pm_size)) < 0) return r;

    uint8_t zp[4096];
    memset(zp, 0, sizeof(zp));
    memcpy(zp + BP_HDR, d + BP_HDR, hdr_end - BP_HDR);
    put16(zp, HDR_HEAP_END_PTR, 0);
    uint64_t cmdline_max = (uint64_t)get32(d, HDR_CMDLINE_SIZE) + 1;
    uint64_t initrd_max = (uint64_t)get32(d, HDR_INITRD_ADDR_MAX) + 1;
    return finish_linux(vm, p, zp, load + need, initrd_max, initrd, cmdline, cmdline_max,
                        load + 0x200, bsp);
}

/* Loads an ELF64 vmlinux; the zero page's setup header comes from `hdr` (a bzImage's, up to
 * hdr_end) when given, else from the defaults a vmlinux needs. */
static int load_vmlinux(struct vm *vm, const struct boot_image *k, const uint8_t *hdr,
                        size_t hdr_end, const char *initrd, const char *cmdline,
                        struct x86_state *bsp)
{
    struct boot_segment seg[BOOT_ELF_MAX_SEGMENTS];
    uint64_t entry, end;
    int n = boot_elf_parse(k, 64, seg, ARRAY_SIZE(seg), &entry);
    if (n < 0) return n;
    int r = boot_elf_load(vm, k, seg, (unsigned)n, &end);
    if (r < 0) return r;
    uint8_t zp[4096];
    memset(zp, 0, sizeof(zp));
    if (hdr) {
        memcpy(zp + BP_HDR, hdr + BP_HDR, hdr_end - BP_HDR);
        put16(zp, HDR_HEAP_END_PTR, 0);
        return finish_linux(vm, k->path, zp, end, (uint64_t)get32(hdr, HDR_INITRD_ADDR_MAX) + 1,
                            initrd, cmdline, (uint64_t)get32(hdr, HDR_CMDLINE_SIZE) + 1, entry,
                            bsp);
    }
    /* No setup header in a vmlinux: supply the fields the kernel reads. */
    put16(zp, HDR_BOOT_FLAG, 0xaa55);
    memcpy(zp + HDR_MAGIC, "HdrS", 4);
    put16(zp, HDR_VERSION, 0x020f);
    put8(zp, HDR_LOADFLAGS, LOADED_HIGH);
    put32(zp, HDR_KERNEL_ALIGNMENT, 0x200000);
    put32(zp, HDR_INITRD_ADDR_MAX, 0x7fffffff);
    put32(zp, HDR_CMDLINE_SIZE, (uint32_t)LAYOUT_CMDLINE_MAX - 1);
    return finish_linux(vm, k->path, zp, end, 0x80000000ull, initrd, cmdline, LAYOUT_CMDLINE_MAX,
                        entry, bsp);
}

int boot_linux_elf(struct vm *vm, const struct boot_image *k, const char *initrd,
                   const char *cmdline, struct x86_state *bsp)
{
    return load_vmlinux(vm, k, NULL, 0, initrd, cmdline, bsp);
}
