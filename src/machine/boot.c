/* Kernel format detection and the pieces every loader shares: file reading, initrd placement,
 * the boot GDT, identity page tables and the entry register states.
 * Trusts nothing from the kernel/initrd files; guest RAM only through mem/guest.h. */
#include "machine/boot.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "machine/e820.h"
#include "machine/layout.h"
#include "util/log.h"

static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

const char *boot_format_name(enum boot_format f)
{
    switch (f) {
    case BOOT_FMT_BZIMAGE: return "Linux bzImage";
    case BOOT_FMT_MULTIBOOT: return "Multiboot";
    case BOOT_FMT_ELF64: return "ELF64 vmlinux";
    default: return "unknown";
    }
}

enum boot_format boot_detect(const struct boot_image *k)
{
    /* bzImage first: its setup header magic sits at a fixed offset. */
    if (k->size >= 0x206 && memcmp(k->data + 0x202, "HdrS", 4) == 0) return BOOT_FMT_BZIMAGE;
    /* Multiboot: a magic word in the first 8 KiB, 4-byte aligned (checksum checked later, so a
     * corrupt header is reported as such rather than "unknown format"). */
    size_t lim = k->size < 8192 ? k->size : 8192;
    for (size_t off = 0; off + 12 <= lim; off += 4)
        if (rd32(k->data + off) == 0x1BADB002u) return BOOT_FMT_MULTIBOOT;
    if (k->size >= 20 &&
        memcmp(k->data,
               "\x7f"
               "ELF",
               4) == 0 &&
        k->data[4] == 2 /* ELFCLASS64 */ && k->data[18] == 62 /* EM_X86_64 */)
        return BOOT_FMT_ELF64;
    return BOOT_FMT_UNKNOWN;
}

int boot_read_file(const char *path, const char *what, uint64_t max, uint8_t **data, size_t *size)
{
    *data = NULL;
    *size = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return err_set(errno, "%s %s: cannot open: %s (check the path)", what, path,
                       strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int e = errno;
        close(fd);
        return err_set(e, "%s %s: cannot stat: %s", what, path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return err_set(EINVAL, "%s %s: not a regular file", what, path);
    }
    if (st.st_size <= 0) {
        close(fd);
        return err_set(EINVAL, "%s %s: the file is empty", what, path);
    }
    if ((uint64_t)st.st_size > max) {
        close(fd);
        return err_set(EFBIG, "%s %s: %llu bytes is larger than the %llu MiB limit", what, path,
                       (unsigned long long)st.st_size, (unsigned long long)(max >> 20));
    }
    size_t n = (size_t)st.st_size;
    uint8_t *buf = malloc(n);
    if (!buf) {
        close(fd);
        return err_set(ENOMEM, "%s %s: cannot allocate %zu bytes", what, path, n);
    }
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            int e = r < 0 ? errno : EIO;
            free(buf);
            close(fd);
            return err_set(e, "%s %s: read failed after %zu of %zu bytes: %s", what, path, got, n,
                           r < 0 ? strerror(e) : "file shrank while reading");
        }
        got += (size_t)r;
    }
    close(fd);
    *data = buf;
    *size = n;
    return 0;
}

int boot_place_initrd(struct vm *vm, const char *path, uint64_t lo, uint64_t hi, uint64_t *addr,
                      uint64_t *size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return err_set(errno, "initrd %s: cannot open: %s (check the path)", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return err_set(EINVAL, "initrd %s: not a regular file", path);
    }
    uint64_t n = (uint64_t)st.st_size;
    lo = ALIGN_UP(lo, GUEST_PAGE_SIZE);
    hi &= ~(GUEST_PAGE_SIZE - 1);
    if (n == 0 || hi <= lo || n > hi - lo) {
        close(fd);
        if (n == 0) return err_set(EINVAL, "initrd %s: the file is empty", path);
        return err_set(ENOSPC,
                       "initrd %s (%llu KiB) does not fit in guest RAM: only %llu KiB are free "
                       "between the kernel (ends %#llx) and %#llx; use a larger --mem or a "
                       "smaller initrd",
                       path, (unsigned long long)(n >> 10),
                       (unsigned long long)(hi > lo ? (hi - lo) >> 10 : 0), (unsigned long long)lo,
                       (unsigned long long)hi);
    }
    uint64_t at = (hi - n) & ~(GUEST_PAGE_SIZE - 1);
    uint8_t *dst = guest_ptr(&vm->mem, at, n);
    if (!dst) {
        close(fd);
        return err_set(EFAULT, "initrd %s: range %#llx+%#llx is not guest RAM", path,
                       (unsigned long long)at, (unsigned long long)n);
    }
    uint64_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, dst + got, n - got > (1u << 30) ? (1u << 30) : n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            int e = r < 0 ? errno : EIO;
            close(fd);
            return err_set(e, "initrd %s: read failed after %llu of %llu bytes: %s", path,
                           (unsigned long long)got, (unsigned long long)n,
                           r < 0 ? strerror(e) : "file shrank while reading");
        }
        got += (uint64_t)r;
    }
    close(fd);
    guest_mark_dirty(&vm->mem, at, n);
    *addr = at;
    *size = n;
    return 0;
}

int boot_check_kernel_range(const struct vm *vm, uint64_t addr, uint64_t size, const char *path,
                            const char *what)
{
    uint64_t end = addr + size;
    uint64_t low_end = e820_low_ram_end(&vm->mem);
    if (end < addr)
        return err_set(EINVAL, "kernel %s: %s at %#llx+%#llx wraps around the address space", path,
                       what, (unsigned long long)addr, (unsigned long long)size);
    if (addr < LAYOUT_KERNEL_MIN)
        return err_set(EINVAL,
                       "kernel %s: %s at %#llx lies below 1 MiB, where lookout keeps its boot "
                       "tables; link the kernel at 1 MiB or higher",
                       path, what, (unsigned long long)addr);
    if (end > low_end)
        return err_set(ENOSPC,
                       "kernel %s: %s at %#llx-%#llx does not fit in the %llu MiB of RAM below "
                       "the MMIO hole; use a larger --mem (the hole starts at 3 GiB)",
                       path, what, (unsigned long long)addr, (unsigned long long)end,
                       (unsigned long long)(low_end >> 20));
    return 0;
}

int boot_write_gdt(struct vm *vm)
{
    /* Flat segments: 0x08 32-bit code (Multiboot), 0x10 64-bit code and 0x18 data (Linux's
     * __BOOT_CS/__BOOT_DS).  Accessed bits preset so no CPU needs to write the table. */
    static const uint64_t gdt[4] = {
        0, 0x00cf9b000000ffffull, /* code, 32-bit, 4 GiB */
        0x00af9b000000ffffull,    /* code, 64-bit (L=1) */
        0x00cf93000000ffffull,    /* data, 4 GiB */
    };
    uint8_t idt[16] = {0}; /* the boot IDT is empty: interrupts are off at entry */
    int r = guest_write(&vm->mem, LAYOUT_BOOT_GDT, gdt, sizeof(gdt));
    if (r == 0) r = guest_write(&vm->mem, LAYOUT_BOOT_IDT, idt, sizeof(idt));
    return r < 0 ? err_wrap(r, "writing the boot GDT") : 0;
}

int boot_write_page_tables(struct vm *vm)
{
    /* PML4 at LAYOUT_PML4, one PDPT after it, then four page directories of 2 MiB pages: an
     * identity map of the first 4 GiB (the model has no 1 GiB pages). */
    enum { P = 1, RW = 2, PS = 0x80 };
    uint64_t pml4 = LAYOUT_PML4, pdpt = pml4 + 0x1000, pd = pdpt + 0x1000;
    _Static_assert(LAYOUT_PML4 + 6 * 0x1000 == LAYOUT_PML4_END, "page-table area size");
    uint64_t page[512];
    memset(page, 0, sizeof(page));
    page[0] = pdpt | P | RW;
    int r = guest_write(&vm->mem, pml4, page, sizeof(page));
    memset(page, 0, sizeof(page));
    for (unsigned i = 0; i < 4; i++)
        page[i] = (pd + i * 0x1000ull) | P | RW;
    if (r == 0) r = guest_write(&vm->mem, pdpt, page, sizeof(page));
    for (unsigned i = 0; i < 4 && r == 0; i++) {
        for (unsigned j = 0; j < 512; j++)
            page[j] = ((uint64_t)i << 30) + ((uint64_t)j << 21) + (P | RW | PS);
        r = guest_write(&vm->mem, pd + i * 0x1000ull, page, sizeof(page));
    }
    return r < 0 ? err_wrap(r, "writing the boot page tables") : 0;
}

int boot_write_cmdline(struct vm *vm, const char *cmdline, uint64_t max)
{
    if (!cmdline) cmdline = "";
    size_t n = strlen(cmdline);
    if (max > LAYOUT_CMDLINE_MAX) max = LAYOUT_CMDLINE_MAX;
    if (n + 1 > max)
        return err_set(E2BIG, "kernel command line is %zu bytes; this kernel accepts at most %llu",
                       n, (unsigned long long)(max - 1));
    return guest_write(&vm->mem, LAYOUT_CMDLINE, cmdline, n + 1);
}

static void flat_seg(struct x86_seg *sg, uint16_t sel, uint8_t type, bool code64)
{
    memset(sg, 0, sizeof(*sg));
    sg->sel = sel;
    sg->base = 0;
    sg->limit = 0xffffffff;
    sg->type = type;
    sg->s = 1;
    sg->present = 1;
    sg->g = 1;
    sg->l = code64;
    sg->db = !code64;
}

static void common_flat(struct x86_state *s, uint16_t cs, bool code64)
{
    flat_seg(&s->seg[SEG_CS], cs, 0xb, code64);
    static const int data[] = {SEG_DS, SEG_ES, SEG_SS, SEG_FS, SEG_GS};
    for (unsigned i = 0; i < ARRAY_SIZE(data); i++)
        flat_seg(&s->seg[data[i]], BOOT_SEL_DATA, 0x3, false);
    s->gdtr.base = LAYOUT_BOOT_GDT;
    s->gdtr.limit = 4 * 8 - 1;
    s->idtr.base = LAYOUT_BOOT_IDT;
    s->idtr.limit = 0;
    s->rflags = X86_FLAG_FIXED; /* IF=0: interrupts off, as both protocols require */
    s->gpr[RSP] = LAYOUT_BOOT_STACK;
    s->gpr[RDX] = 0;
}

void boot_state_long64(struct x86_state *s, uint64_t rip, uint64_t rsi)
{
    common_flat(s, BOOT_SEL_CODE64, true);
    s->cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_NE | X86_CR0_PG;
    s->cr3 = LAYOUT_PML4;
    s->cr4 = X86_CR4_PAE;
    s->efer = X86_EFER_LME | X86_EFER_LMA;
    s->rip = rip;
    s->gpr[RSI] = rsi;
}

void boot_state_prot32(struct x86_state *s, uint32_t eip, uint32_t eax, uint32_t ebx)
{
    common_flat(s, BOOT_SEL_CODE32, false);
    s->cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_NE;
    s->cr3 = 0;
    s->cr4 = 0;
    s->efer = 0;
    s->rip = eip;
    s->gpr[RAX] = eax;
    s->gpr[RBX] = ebx;
}

int boot_load(struct vm *vm, const char *kernel, const char *initrd, const char *cmdline,
              struct x86_state *bsp)
{
    if (!kernel || !*kernel) return err_set(EINVAL, "no kernel given: pass --kernel FILE");
    uint8_t *data;
    size_t size;
    int r = boot_read_file(kernel, "kernel", BOOT_KERNEL_MAX_SIZE, &data, &size);
    if (r < 0) return r;
    struct boot_image k = {.path = kernel, .data = data, .size = size};
    x86_state_reset(bsp, 0, true);
    r = boot_write_gdt(vm);
    if (r == 0) {
        enum boot_format f = boot_detect(&k);
        switch (f) {
        case BOOT_FMT_BZIMAGE: r = boot_linux_bzimage(vm, &k, initrd, cmdline, bsp); break;
        case BOOT_FMT_MULTIBOOT: r = boot_multiboot(vm, &k, initrd, cmdline, bsp); break;
        case BOOT_FMT_ELF64: r = boot_linux_elf(vm, &k, initrd, cmdline, bsp); break;
        default:
            r = err_set(ENOEXEC,
                        "kernel %s: not a kernel lookout can boot (no Linux bzImage setup "
                        "header, no Multiboot header in the first 8 KiB, not an x86-64 ELF "
                        "vmlinux)",
                        kernel);
        }
        if (r == 0) log_info("loaded %s kernel %s", boot_format_name(f), kernel);
    }
    free(data);
    return r;
}

/* ---- ELF ---- */

static uint16_t rd16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}
static uint64_t rd64(const uint8_t *p)
{
    return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32;
}

int boot_elf_parse(const struct boot_image *k, int elfclass, struct boot_segment *seg, unsigned max,
                   uint64_t *entry_phys)
{
    const uint8_t *d = k->data;
    const bool is64 = elfclass == 64;
    const size_t ehsize = is64 ? 64 : 52, phentsize = is64 ? 56 : 32;
    if (k->size < ehsize || memcmp(d,
                                   "\x7f"
                                   "ELF",
                                   4) != 0)
        return err_set(ENOEXEC, "kernel %s: truncated or not an ELF file", k->path);
    if (d[4] != (is64 ? 2 : 1))
        return err_set(ENOEXEC, "kernel %s: ELF class %u, expected ELF%d", k->path, d[4], elfclass);
    if (d[5] != 1) return err_set(ENOEXEC, "kernel %s: ELF file is not little-endian", k->path);
    uint16_t type = rd16(d + 16), machine = rd16(d + 18);
    if (machine != (is64 ? 62 : 3))
        return err_set(ENOEXEC, "kernel %s: ELF machine %u is not %s", k->path, machine,
                       is64 ? "x86-64" : "i386");
    if (type != 2 /* ET_EXEC */)
        return err_set(ENOEXEC, "kernel %s: ELF type %u is not an executable (ET_EXEC)", k->path,
                       type);
    uint64_t entry = is64 ? rd64(d + 24) : rd32(d + 24);
    uint64_t phoff = is64 ? rd64(d + 32) : rd32(d + 28);
    uint16_t phent = rd16(d + (is64 ? 54 : 42)), phnum = rd16(d + (is64 ? 56 : 44));
    if (phent != phentsize)
        return err_set(ENOEXEC, "kernel %s: ELF program header size %u, expected %zu", k->path,
                       phent, phentsize);
    if (phnum == 0 || phnum > 256)
        return err_set(ENOEXEC, "kernel %s: ELF has %u program headers", k->path, phnum);
    if (phoff > k->size || (uint64_t)phnum * phentsize > k->size - phoff)
        return err_set(ENOEXEC, "kernel %s: ELF program headers lie beyond the end of the file",
                       k->path);
    unsigned n = 0;
    for (unsigned i = 0; i < phnum; i++) {
        const uint8_t *ph = d + phoff + (uint64_t)i * phentsize;
        if (rd32(ph) != 1 /* PT_LOAD */) continue;
        struct boot_segment s;
        if (is64) {
            s.offset = rd64(ph + 8);
            s.vaddr = rd64(ph + 16);
            s.paddr = rd64(ph + 24);
            s.filesz = rd64(ph + 32);
            s.memsz = rd64(ph + 40);
        } else {
            s.offset = rd32(ph + 4);
            s.vaddr = rd32(ph + 8);
            s.paddr = rd32(ph + 12);
            s.filesz = rd32(ph + 16);
            s.memsz = rd32(ph + 20);
        }
        if (s.memsz == 0) continue;
        if (s.filesz > s.memsz)
            return err_set(ENOEXEC,
                           "kernel %s: ELF segment %u has file size %#llx > memory size "
                           "%#llx",
                           k->path, i, (unsigned long long)s.filesz, (unsigned long long)s.memsz);
        if (s.offset > k->size || s.filesz > k->size - s.offset)
            return err_set(ENOEXEC,
                           "kernel %s: ELF segment %u (offset %#llx, %#llx bytes) lies "
                           "beyond the end of the file (%zu bytes): truncated?",
                           k->path, i, (unsigned long long)s.offset, (unsigned long long)s.filesz,
                           k->size);
        if (n >= max)
            return err_set(ENOEXEC, "kernel %s: more than %u loadable ELF segments", k->path, max);
        seg[n++] = s;
    }
    if (n == 0) return err_set(ENOEXEC, "kernel %s: ELF file has no loadable segment", k->path);
    /* The entry point is physical if it lies inside a segment's physical range (vmlinux: ENTRY
     * is phys_startup_64); otherwise translate it through the segment whose virtual range holds
     * it. */
    for (unsigned i = 0; i < n; i++)
        if (entry >= seg[i].paddr && entry - seg[i].paddr < seg[i].memsz) {
            *entry_phys = entry;
            return (int)n;
        }
    for (unsigned i = 0; i < n; i++)
        if (entry >= seg[i].vaddr && entry - seg[i].vaddr < seg[i].memsz) {
            *entry_phys = entry - seg[i].vaddr + seg[i].paddr;
            return (int)n;
        }
    return err_set(ENOEXEC, "kernel %s: ELF entry point %#llx is outside every loadable segment",
                   k->path, (unsigned long long)entry);
}

int boot_elf_load(struct vm *vm, const struct boot_image *k, const struct boot_segment *seg,
                  unsigned n, uint64_t *end)
{
    uint64_t hi = 0;
    for (unsigned i = 0; i < n; i++) {
        int r = boot_check_kernel_range(vm, seg[i].paddr, seg[i].memsz, k->path, "ELF segment");
        if (r < 0) return r;
        for (unsigned j = 0; j < i; j++)
            if (seg[i].paddr < seg[j].paddr + seg[j].memsz &&
                seg[j].paddr < seg[i].paddr + seg[i].memsz)
                return err_set(ENOEXEC, "kernel %s: ELF segments %u and %u overlap at %#llx",
                               k->path, j, i, (unsigned long long)seg[i].paddr);
        uint8_t *dst = guest_ptr(&vm->mem, seg[i].paddr, seg[i].memsz);
        if (!dst) return err_set(EFAULT, "kernel %s: segment not in RAM", k->path);
        if (seg[i].filesz) memcpy(dst, k->data + seg[i].offset, seg[i].filesz);
        memset(dst + seg[i].filesz, 0, seg[i].memsz - seg[i].filesz);
        guest_mark_dirty(&vm->mem, seg[i].paddr, seg[i].memsz);
        hi = MAX(hi, seg[i].paddr + seg[i].memsz);
    }
    *end = hi;
    return 0;
}
