/* Multiboot v1 loader (GNU Multiboot Specification 0.6.96): ELF32 kernels and the a.out kludge
 * (header flag 16).  Builds the Multiboot information structure at LAYOUT_MB_INFO with the memory
 * sizes, the memory map (from e820), the command line ("<kernel path> <append>", as GRUB and QEMU
 * pass it) and the initrd as module 0, and enters in 32-bit protected mode without paging.
 * Trusts nothing in the image: header addresses are checked for overflow, file bounds, and
 * against the low-memory structures and the MMIO hole. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "machine/boot.h"
#include "machine/e820.h"
#include "machine/layout.h"
#include "util/log.h"

#define MB_MAGIC        0x1BADB002u
#define MB_BOOT_MAGIC   0x2BADB002u
#define MB_SEARCH       8192
#define MB_F_PAGE_ALIGN (1u << 0)
#define MB_F_MEMINFO    (1u << 1)
#define MB_F_VIDEO      (1u << 2)
#define MB_F_AOUT       (1u << 16)
#define MB_F_SUPPORTED  (MB_F_PAGE_ALIGN | MB_F_MEMINFO) /* of the required bits 0-15 */

/* Multiboot info flags and offsets */
#define MBI_MEM         (1u << 0)
#define MBI_CMDLINE     (1u << 2)
#define MBI_MODS        (1u << 3)
#define MBI_MMAP        (1u << 6)
#define MBI_LOADER_NAME (1u << 9)
#define MBI_MODS_OFF    0x80
#define MBI_MMAP_OFF    0x100
#define MBI_AREA        0x1000

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}
static void put64(uint8_t *p, uint64_t v)
{
    put32(p, (uint32_t)v);
    put32(p + 4, (uint32_t)(v >> 32));
}

/* Finds the header: the first magic with a valid checksum.  Returns its offset or -errno. */
static long find_header(const struct boot_image *k)
{
    size_t lim = k->size < MB_SEARCH ? k->size : MB_SEARCH;
    long bad = -1;
    for (size_t off = 0; off + 12 <= lim; off += 4) {
        const uint8_t *h = k->data + off;
        if (get32(h) != MB_MAGIC) continue;
        if ((uint32_t)(get32(h) + get32(h + 4) + get32(h + 8)) == 0) return (long)off;
        if (bad < 0) bad = (long)off;
    }
    if (bad >= 0)
        return err_set(ENOEXEC, "kernel %s: Multiboot header at offset %#lx has a bad checksum",
                       k->path, bad);
    return err_set(ENOEXEC, "kernel %s: no Multiboot header in the first 8 KiB", k->path);
}

/* The a.out kludge: the header's own address fields say what to load where. */
static int load_aout(struct vm *vm, const struct boot_image *k, size_t hoff, uint64_t *entry,
                     uint64_t *end)
{
    const char *p = k->path;
    if (hoff + 32 > k->size)
        return err_set(ENOEXEC, "kernel %s: Multiboot header (a.out kludge) is truncated", p);
    const uint8_t *h = k->data + hoff;
    uint32_t header_addr = get32(h + 12), load_addr = get32(h + 16), load_end = get32(h + 20),
             bss_end = get32(h + 24), entry_addr = get32(h + 28);
    if (load_addr > header_addr || header_addr - load_addr > hoff)
        return err_set(ENOEXEC,
                       "kernel %s: Multiboot load_addr %#x / header_addr %#x put the "
                       "image start before the beginning of the file",
                       p, load_addr, header_addr);
    uint64_t file_off = hoff - (header_addr - load_addr);
    uint64_t load_size;
    if (load_end == 0) {
        load_size = k->size - file_off;
    } else {
        if (load_end <= load_addr)
            return err_set(ENOEXEC,
                           "kernel %s: Multiboot load_end_addr %#x is not above "
                           "load_addr %#x",
                           p, load_end, load_addr);
        load_size = (uint64_t)load_end - load_addr;
        if (load_size > k->size - file_off)
            return err_set(ENOEXEC,
                           "kernel %s: Multiboot load range (%#llx bytes from file "
                           "offset %#llx) is beyond the end of the file: truncated?",
                           p, (unsigned long long)load_size, (unsigned long long)file_off);
    }
    uint64_t mem_end = (uint64_t)load_addr + load_size;
    if (bss_end != 0) {
        if (bss_end < mem_end)
            return err_set(ENOEXEC,
                           "kernel %s: Multiboot bss_end_addr %#x is below the end of "
                           "the loaded image %#llx",
                           p, bss_end, (unsigned long long)mem_end);
        mem_end = bss_end;
    }
    if (entry_addr < load_addr || entry_addr >= mem_end)
        return err_set(ENOEXEC,
                       "kernel %s: Multiboot entry_addr %#x is outside the image "
                       "%#x-%#llx",
                       p, entry_addr, load_addr, (unsigned long long)mem_end);
    int r = boot_check_kernel_range(vm, load_addr, mem_end - load_addr, p, "Multiboot image");
    if (r < 0) return r;
    uint8_t *dst = guest_ptr(&vm->mem, load_addr, mem_end - load_addr);
    if (!dst) return err_set(EFAULT, "kernel %s: image not in RAM", p);
    memcpy(dst, k->data + file_off, load_size);
    memset(dst + load_size, 0, mem_end - load_addr - load_size);
    guest_mark_dirty(&vm->mem, load_addr, mem_end - load_addr);
    *entry = entry_addr;
    *end = mem_end;
    return 0;
}

int boot_multiboot(struct vm *vm, const struct boot_image *k, const char *initrd,
                   const char *cmdline, struct x86_state *bsp)
{
    const char *p = k->path;
    long hoff = find_header(k);
    if (hoff < 0) return (int)hoff;
    uint32_t flags = get32(k->data + hoff + 4);
    uint32_t unsupported = flags & 0xffff & ~MB_F_SUPPORTED;
    if (unsupported)
        return err_set(ENOEXEC,
                       "kernel %s: Multiboot header requires feature flags %#x that "
                       "lookout does not provide%s",
                       p, unsupported,
                       (unsupported & MB_F_VIDEO) ? " (a graphics video mode)" : "");
    uint64_t entry, end;
    int r;
    if (flags & MB_F_AOUT) {
        r = load_aout(vm, k, (size_t)hoff, &entry, &end);
    } else {
        if (k->size >= 5 &&
            memcmp(k->data,
                   "\x7f"
                   "ELF",
                   4) == 0 &&
            k->data[4] == 2)
            return err_set(ENOEXEC,
                           "kernel %s: a Multiboot kernel must be ELF32 (convert it with "
                           "objcopy -O elf32-i386) or use the a.out kludge (flag 16)",
                           p);
        struct boot_segment seg[BOOT_ELF_MAX_SEGMENTS];
        int n = boot_elf_parse(k, 32, seg, ARRAY_SIZE(seg), &entry);
        if (n < 0) return n;
        r = boot_elf_load(vm, k, seg, (unsigned)n, &end);
    }
    if (r < 0) return r;
    if (entry >= 0xffffffffull) return err_set(ENOEXEC, "kernel %s: entry above 4 GiB", p);

    /* Strings live in the command-line area: the command line, module 0's string, our name. */
    const char *append = cmdline ? cmdline : "";
    size_t plen = strlen(p), alen = strlen(append);
    size_t ilen = initrd ? strlen(initrd) : 0;
    static const char loader[] = "lookout";
    size_t need = plen + 1 + alen + 1 + ilen + 1 + sizeof(loader);
    if (need > LAYOUT_CMDLINE_MAX)
        return err_set(E2BIG,
                       "kernel %s: command line, module and kernel names take %zu bytes; "
                       "the limit is %llu",
                       p, need, (unsigned long long)LAYOUT_CMDLINE_MAX);
    char *str = malloc(need);
    if (!str) return err_set(ENOMEM, "out of memory");
    int cl = alen ? snprintf(str, need, "%s %s", p, append) : snprintf(str, need, "%s", p);
    uint64_t cmd_at = LAYOUT_CMDLINE, mod_str_at = cmd_at + (uint64_t)cl + 1;
    memcpy(str + cl + 1, initrd ? initrd : "", ilen + 1);
    uint64_t name_at = mod_str_at + ilen + 1;
    memcpy(str + cl + 1 + ilen + 1, loader, sizeof(loader));
    r = guest_write(&vm->mem, LAYOUT_CMDLINE, str, name_at + sizeof(loader) - LAYOUT_CMDLINE);
    free(str);
    if (r < 0) return r;

    uint8_t info[MBI_AREA];
    memset(info, 0, sizeof(info));
    uint32_t iflags = MBI_MEM | MBI_CMDLINE | MBI_MODS | MBI_MMAP | MBI_LOADER_NAME;
    uint64_t low_end = e820_low_ram_end(&vm->mem);
    put32(info + 4, (uint32_t)(LAYOUT_EBDA >> 10));                   /* mem_lower, KiB */
    put32(info + 8, (uint32_t)((low_end - LAYOUT_KERNEL_MIN) >> 10)); /* mem_upper, KiB */
    put32(info + 16, (uint32_t)cmd_at);
    put32(info + 64, (uint32_t)name_at);
    put32(info + 24, (uint32_t)(LAYOUT_MB_INFO + MBI_MODS_OFF));
    if (initrd) {
        uint64_t addr, size;
        r = boot_place_initrd(vm, initrd, ALIGN_UP(end, GUEST_PAGE_SIZE), low_end, &addr, &size);
        if (r < 0) return r;
        put32(info + 20, 1); /* mods_count */
        uint8_t *m = info + MBI_MODS_OFF;
        put32(m, (uint32_t)addr);
        put32(m + 4, (uint32_t)(addr + size)); /* mod_end: first byte after the module */
        put32(m + 8, (uint32_t)mod_str_at);
    }
    struct e820_entry e[E820_MAX_ENTRIES];
    int n = e820_build(&vm->mem, e, ARRAY_SIZE(e));
    if (n < 0) return n;
    for (int i = 0; i < n; i++) {
        uint8_t *me = info + MBI_MMAP_OFF + i * 24;
        put32(me, 20); /* size of the entry, not counting this field */
        put64(me + 4, e[i].addr);
        put64(me + 12, e[i].size);
        put32(me + 20, e[i].type == E820_RAM ? 1 : 2);
    }
    put32(info + 44, (uint32_t)n * 24);
    put32(info + 48, (uint32_t)(LAYOUT_MB_INFO + MBI_MMAP_OFF));
    put32(info, iflags);
    if ((r = guest_write(&vm->mem, LAYOUT_MB_INFO, info, sizeof(info))) < 0) return r;
    boot_state_prot32(bsp, (uint32_t)entry, MB_BOOT_MAGIC, (uint32_t)LAYOUT_MB_INFO);
    return 0;
}
