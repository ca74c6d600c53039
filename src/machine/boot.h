/* Kernel loaders: Linux bzImage and ELF vmlinux (64-bit boot protocol) and Multiboot v1.
 *
 * boot_load() is the one entry point the machine calls.  It reads the kernel file, detects its
 * format, loads it into guest RAM (through mem/guest.h only), places the initrd, writes the
 * command line, the boot tables of the protocol (zero page + e820, or Multiboot info + mmap), the
 * boot GDT and identity page tables, and fills *bsp with the state the protocol enters with.
 * The ACPI tables are not written here: acpi_build() does that (the zero page points at them).
 *
 * Trusts nothing in the kernel or initrd file: every header field is range- and overflow-checked
 * and every failure names the file and the reason. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cpu/cpu.h"
#include "x86/state.h"

/* kernel: path of the kernel (required); initrd: path or NULL; cmdline: NULL means "".
 * Returns 0, or -errno with err_msg() naming the file and the reason. */
int boot_load(struct vm *vm, const char *kernel, const char *initrd, const char *cmdline,
              struct x86_state *bsp);

/* A bzImage whose payload is LZ4 (Debian's cloud kernel) is decompressed on the host and its
 * vmlinux entered directly at its 64-bit entry, with the bzImage's own setup header in the zero
 * page: the guest skips its decompressor (tens of seconds when supervisor code is emulated; no
 * KASLR then).  Other payloads boot through the bzImage's 64-bit entry.  Default true; set false
 * before boot_load() to always use the kernel's own decompressor. */
extern bool boot_direct_vmlinux;

/* ---- Pieces shared by the loaders, exposed for the unit tests ---- */

/* Boot GDT selectors (at LAYOUT_BOOT_GDT): Linux wants __BOOT_CS 0x10 / __BOOT_DS 0x18. */
#define BOOT_SEL_CODE32 0x08
#define BOOT_SEL_CODE64 0x10
#define BOOT_SEL_DATA   0x18

#define BOOT_KERNEL_MAX_SIZE (1ull << 30) /* refuse larger kernel files outright */

enum boot_format { BOOT_FMT_UNKNOWN, BOOT_FMT_BZIMAGE, BOOT_FMT_MULTIBOOT, BOOT_FMT_ELF64 };

/* A kernel image read into host memory. */
struct boot_image {
    const char *path;
    const uint8_t *data;
    size_t size;
};

enum boot_format boot_detect(const struct boot_image *k);
const char *boot_format_name(enum boot_format f);

int boot_linux_bzimage(struct vm *vm, const struct boot_image *k, const char *initrd,
                       const char *cmdline, struct x86_state *bsp);
int boot_linux_elf(struct vm *vm, const struct boot_image *k, const char *initrd,
                   const char *cmdline, struct x86_state *bsp);
int boot_multiboot(struct vm *vm, const struct boot_image *k, const char *initrd,
                   const char *cmdline, struct x86_state *bsp);

/* Reads a whole file (at most max bytes) into a malloc'd buffer; `what` names it in errors. */
int boot_read_file(const char *path, const char *what, uint64_t max, uint8_t **data, size_t *size);
/* Reads the initrd file into guest RAM, page-aligned, as high as possible inside [lo, hi).
 * Refuses clearly if it does not fit.  *addr and *size receive the placement. */
int boot_place_initrd(struct vm *vm, const char *path, uint64_t lo, uint64_t hi, uint64_t *addr,
                      uint64_t *size);
/* Checks that [addr, addr+size) is RAM below the MMIO hole at or above 1 MiB (where kernels may
 * go: below is the loaders' own structures).  `path`/`what` name the culprit in the error. */
int boot_check_kernel_range(const struct vm *vm, uint64_t addr, uint64_t size, const char *path,
                            const char *what);
/* Writes the boot GDT and the identity page tables (4 GiB, 2 MiB pages). */
int boot_write_gdt(struct vm *vm);
int boot_write_page_tables(struct vm *vm);
/* Writes the command line (NUL-terminated) at LAYOUT_CMDLINE; refuses one of max bytes or more. */
int boot_write_cmdline(struct vm *vm, const char *cmdline, uint64_t max);
/* ELF executables: the PT_LOAD segments of a 32-bit (EM_386) or 64-bit (EM_X86_64) ELF file,
 * each checked against the file size, and the entry point translated to a physical address
 * (through p_vaddr -> p_paddr if it is not already inside a segment's physical range). */
struct boot_segment {
    uint64_t offset, filesz, paddr, vaddr, memsz;
};
#define BOOT_ELF_MAX_SEGMENTS 32
/* Returns the number of PT_LOAD segments (>= 1) or -errno. */
int boot_elf_parse(const struct boot_image *k, int elfclass, struct boot_segment *seg, unsigned max,
                   uint64_t *entry_phys);
/* Copies the segments to p_paddr (zeroing p_memsz - p_filesz) after boot_check_kernel_range on
 * each and a pairwise overlap check; *end receives the highest end address. */
int boot_elf_load(struct vm *vm, const struct boot_image *k, const struct boot_segment *seg,
                  unsigned n, uint64_t *end);
/* Entry states: 64-bit long mode (Linux 64-bit protocol) and 32-bit flat protected mode without
 * paging (Multiboot).  Start from x86_state_reset(). */
void boot_state_long64(struct x86_state *s, uint64_t rip, uint64_t rsi);
void boot_state_prot32(struct x86_state *s, uint32_t eip, uint32_t eax, uint32_t ebx);
