/* Unit tests for the kernel loaders and the e820 map: synthetic bzImage, ELF64 vmlinux, Multiboot
 * ELF32 and a.out-kludge images load to the right addresses with the right BSP state and boot
 * tables; corrupt, truncated and hostile headers are refused with an error naming the file; an
 * initrd that does not fit is refused; and (when `make guests` ran) the project's own test
 * kernels load. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "cpu/cpu.h"
#include "machine/boot.h"
#include "machine/e820.h"
#include "machine/layout.h"
#include "util/log.h"

#include "test_boot_images.h"

#define MiB (1ull << 20)
#define GiB (1ull << 30)

struct fixture {
    struct vm vm;
    char kpath[64], ipath[64];
};

static struct fixture *fx_new(uint64_t mem)
{
    struct fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    assert_int_equal(guest_mem_init(&f->vm.mem, mem), 0);
    return f;
}

static void fx_free(struct fixture *f)
{
    if (f->kpath[0]) unlink(f->kpath);
    if (f->ipath[0]) unlink(f->ipath);
    guest_mem_destroy(&f->vm.mem);
    free(f);
}

static void write_tmp(char *path, const void *data, size_t n)
{
    strcpy(path, "/tmp/lookout-boot-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, data, n), (ssize_t)n);
    close(fd);
}

static const uint8_t *g(struct fixture *f, uint64_t gpa, uint64_t len)
{
    const uint8_t *p = guest_ptr(&f->vm.mem, gpa, len);
    assert_non_null(p);
    return p;
}

/* Loads `img` as a kernel file; returns boot_load's result. */
static int load(struct fixture *f, const void *img, size_t n, const void *initrd, size_t in,
                const char *cmdline, struct x86_state *s)
{
    if (f->kpath[0]) unlink(f->kpath);
    if (f->ipath[0]) unlink(f->ipath);
    f->ipath[0] = 0;
    write_tmp(f->kpath, img, n);
    if (initrd) write_tmp(f->ipath, initrd, in);
    err_clear();
    return boot_load(&f->vm, f->kpath, initrd ? f->ipath : NULL, cmdline, s);
}

static void expect_refused(struct fixture *f, const void *img, size_t n, const char *why)
{
    struct x86_state s;
    int r = load(f, img, n, NULL, 0, "", &s);
    if (r >= 0) fail_msg("image accepted; expected refusal because %s", why);
    const char *m = err_msg();
    if (!strstr(m, f->kpath)) fail_msg("error does not name the file: %s", m);
    if (!strstr(m, why)) fail_msg("error '%s' does not say '%s'", m, why);
    unlink(f->kpath);
    f->kpath[0] = 0;
}

/* ---------------- e820 ---------------- */

static void test_e820_below_hole(void **st)
{
    struct fixture *f = fx_new(64 * MiB);
    struct e820_entry e[E820_MAX_ENTRIES];
    int n = e820_build(&f->vm.mem, e, E820_MAX_ENTRIES);
    assert_int_equal(n, 5);
    assert_true(e[0].addr == 0 && e[0].size == LAYOUT_EBDA && e[0].type == E820_RAM);
    assert_true(e[1].addr == LAYOUT_EBDA && e[1].addr + e[1].size == MiB &&
                e[1].type == E820_RESERVED);
    assert_true(e[2].addr == MiB && e[2].addr + e[2].size == 64 * MiB && e[2].type == E820_RAM);
    assert_true(e[3].addr == LAYOUT_IOAPIC_BASE && e[3].type == E820_RESERVED);
    assert_true(e[4].addr == LAYOUT_LAPIC_BASE && e[4].type == E820_RESERVED);
    for (int i = 1; i < n; i++)
        assert_true(e[i - 1].addr + e[i - 1].size <= e[i].addr);
    assert_int_equal(e820_build(&f->vm.mem, e, 3), -EINVAL); /* too small a table */
    fx_free(f);
}

static void test_e820_above_hole(void **st)
{
    struct fixture *f = fx_new(4 * GiB);
    struct e820_entry e[E820_MAX_ENTRIES];
    int n = e820_build(&f->vm.mem, e, E820_MAX_ENTRIES);
    assert_int_equal(n, 6);
    assert_true(e[2].addr + e[2].size == GUEST_MMIO_HOLE);
    assert_true(e[5].addr == GUEST_HIGH_BASE && e[5].size == 1 * GiB && e[5].type == E820_RAM);
    uint64_t ram = 0;
    for (int i = 0; i < n; i++)
        if (e[i].type == E820_RAM) ram += e[i].size;
    assert_int_equal(ram, 4 * GiB - (MiB - LAYOUT_EBDA));
    fx_free(f);
}

static void test_e820_exactly_hole(void **st)
{
    struct fixture *f = fx_new(3 * GiB);
    struct e820_entry e[E820_MAX_ENTRIES];
    assert_int_equal(e820_build(&f->vm.mem, e, E820_MAX_ENTRIES), 5);
    assert_true(e[2].addr + e[2].size == 3 * GiB);
    fx_free(f);
}

/* ---------------- bzImage ---------------- */

static void check_long_mode(const struct x86_state *s, uint64_t rip)
{
    assert_int_equal(s->rip, rip);
    assert_int_equal(s->gpr[RSI], LAYOUT_ZERO_PAGE);
    assert_int_equal(s->seg[SEG_CS].sel, 0x10);
    assert_int_equal(s->seg[SEG_CS].l, 1);
    assert_int_equal(s->seg[SEG_CS].db, 0);
    for (int i = 0; i < SEG_COUNT; i++)
        if (i != SEG_CS && i != SEG_LDTR && i != SEG_TR) assert_int_equal(s->seg[i].sel, 0x18);
    assert_true(s->efer & X86_EFER_LMA);
    assert_true(s->efer & X86_EFER_LME);
    assert_true(s->cr0 & X86_CR0_PG);
    assert_true(s->cr0 & X86_CR0_PE);
    assert_true(s->cr4 & X86_CR4_PAE);
    assert_int_equal(s->cr3, LAYOUT_PML4);
    assert_int_equal(s->rflags & X86_FLAG_IF, 0);
    assert_int_equal(s->gdtr.base, LAYOUT_BOOT_GDT);
    assert_int_equal(s->mp_state, MP_RUNNABLE);
}

static void check_tables(struct fixture *f)
{
    /* GDT: 0x10 is a 64-bit code segment, 0x18 a data segment */
    const uint8_t *gdt = g(f, LAYOUT_BOOT_GDT, 32);
    assert_int_equal(rd64(gdt + 0x10), 0x00af9b000000ffffull);
    assert_int_equal(rd64(gdt + 0x18), 0x00cf93000000ffffull);
    /* page tables: identity map through 4 GiB with 2 MiB pages */
    const uint8_t *pml4 = g(f, LAYOUT_PML4, 4096);
    uint64_t pdpt = rd64(pml4) & ~0xfffull;
    for (uint64_t va = 0; va < 4 * GiB; va += 333 * MiB + 4096) {
        uint64_t pdpte = rd64(g(f, pdpt + ((va >> 30) & 511) * 8, 8));
        assert_true(pdpte & 1);
        uint64_t pde = rd64(g(f, (pdpte & ~0xfffull) + ((va >> 21) & 511) * 8, 8));
        assert_true((pde & 0x81) == 0x81);
        assert_int_equal(pde & ~0x1fffffull, va & ~0x1fffffull);
    }
    uint64_t lapic_pde = rd64(
        g(f, (rd64(g(f, pdpt + 3 * 8, 8)) & ~0xfffull) + ((LAYOUT_LAPIC_BASE >> 21) & 511) * 8, 8));
    assert_int_equal(lapic_pde & ~0x1fffffull, LAYOUT_LAPIC_BASE & ~0x1fffffull);
}

static void test_bzimage_loads(void **st)
{
    struct fixture *f = fx_new(256 * MiB);
    static uint8_t b[BZ_SIZE];
    make_bzimage(b);
    static uint8_t initrd[100000];
    for (size_t i = 0; i < sizeof(initrd); i++)
        initrd[i] = (uint8_t)(i ^ 0x5a);
    struct x86_state s;
    assert_int_equal(load(f, b, BZ_SIZE, initrd, sizeof(initrd), "console=ttyS0 quiet", &s), 0);
    /* protected-mode code at the preferred address, entry at +0x200 */
    assert_memory_equal(g(f, 0x1000000, BZ_PM), b + BZ_SETUP, BZ_PM);
    check_long_mode(&s, 0x1000200);
    check_tables(f);
    const uint8_t *zp = g(f, LAYOUT_ZERO_PAGE, 4096);
    assert_memory_equal(zp + 0x202, "HdrS", 4);
    assert_int_equal(zp[0x210], 0xff);
    assert_int_equal(rd32(zp + 0x228), LAYOUT_CMDLINE);
    assert_string_equal((const char *)g(f, LAYOUT_CMDLINE, 20), "console=ttyS0 quiet");
    assert_int_equal(rd64(zp + 0x70), LAYOUT_ACPI_BASE);
    assert_int_equal(zp[0x1e8], 5);
    assert_int_equal(rd64(zp + 0x2d0 + 2 * 20), MiB);
    assert_int_equal(rd64(zp + 0x2d0 + 2 * 20 + 8), 255 * MiB);
    assert_int_equal(rd32(zp + 0x2d0 + 2 * 20 + 16), 1);
    /* initrd: page aligned, at the top of RAM, contents intact */
    uint32_t ia = rd32(zp + 0x218), is = rd32(zp + 0x21c);
    assert_int_equal(is, sizeof(initrd));
    assert_int_equal(ia % 4096, 0);
    assert_true(ia + is <= 256 * MiB && ia + is > 256 * MiB - 4096);
    assert_true(ia >= 0x1000000 + 0x400000);
    assert_memory_equal(g(f, ia, is), initrd, is);
    fx_free(f);
}

static void test_bzimage_relocates_when_small(void **st)
{
    /* 16 MiB of RAM: the preferred 16 MiB address does not fit, the lowest aligned one does. */
    struct fixture *f = fx_new(16 * MiB);
    static uint8_t b[BZ_SIZE];
    make_bzimage(b);
    struct x86_state s;
    assert_int_equal(load(f, b, BZ_SIZE, NULL, 0, NULL, &s), 0);
    check_long_mode(&s, 0x200000 + 0x200);
    assert_memory_equal(g(f, 0x200000, BZ_PM), b + BZ_SETUP, BZ_PM);
    assert_int_equal(rd32(g(f, LAYOUT_ZERO_PAGE + 0x218, 4)), 0);
    fx_free(f);
}

static void test_bzimage_initrd_too_big(void **st)
{
    struct fixture *f = fx_new(16 * MiB);
    static uint8_t b[BZ_SIZE];
    make_bzimage(b);
    size_t n = 14 * MiB;
    uint8_t *initrd = calloc(1, n);
    struct x86_state s;
    int r = load(f, b, BZ_SIZE, initrd, n, NULL, &s);
    free(initrd);
    assert_int_equal(r, -ENOSPC);
    assert_non_null(strstr(err_msg(), "does not fit"));
    assert_non_null(strstr(err_msg(), f->ipath));
    fx_free(f);
}

static void test_bzimage_corrupt(void **st)
{
    struct fixture *f = fx_new(64 * MiB);
    static uint8_t b[BZ_SIZE];
    make_bzimage(b);
    expect_refused(f, b, 0x300, "too short");
    make_bzimage(b);
    expect_refused(f, b, BZ_SETUP, "truncated");
    b[0x1fe] = 0;
    expect_refused(f, b, BZ_SIZE, "boot flag");
    make_bzimage(b);
    wr16(b + 0x206, 0x0206);
    expect_refused(f, b, BZ_SIZE, "too old");
    make_bzimage(b);
    wr16(b + 0x236, 0);
    expect_refused(f, b, BZ_SIZE, "64-bit");
    make_bzimage(b);
    b[0x1f1] = 200; /* setup larger than the file */
    expect_refused(f, b, BZ_SIZE, "truncated");
    make_bzimage(b);
    wr32(b + 0x230, 0x300001);
    expect_refused(f, b, BZ_SIZE, "kernel_alignment");
    make_bzimage(b);
    wr32(b + 0x260, 0xfffff000); /* init_size larger than RAM */
    expect_refused(f, b, BZ_SIZE, "does not fit");
    make_bzimage(b);
    b[0x234] = 0; /* not relocatable, wants to sit on the boot tables */
    wr64(b + 0x258, 0x7000);
    expect_refused(f, b, BZ_SIZE, "below 1 MiB");
    make_bzimage(b);
    b[0x234] = 0;
    wr64(b + 0x258, 0xfffffffffffff000ull); /* wraps */
    expect_refused(f, b, BZ_SIZE, "wraps");
    make_bzimage(b);
    b[0x201] = 0x01; /* header shorter than the fields we read */
    expect_refused(f, b, BZ_SIZE, "setup header");
    fx_free(f);
}

static void test_bzimage_cmdline_too_long(void **st)
{
    struct fixture *f = fx_new(64 * MiB);
    static uint8_t b[BZ_SIZE];
    make_bzimage(b);
    wr32(b + 0x238, 15);
    struct x86_state s;
    assert_int_equal(load(f, b, BZ_SIZE, NULL, 0, "0123456789abcdef", &s), -E2BIG);
    assert_int_equal(load(f, b, BZ_SIZE, NULL, 0, "0123456789abcde", &s), 0);
    fx_free(f);
}

/* ---------------- ELF ---------------- */

static void test_elf64_vmlinux_loads(void **st)
{
    struct fixture *f = fx_new(128 * MiB);
    static uint8_t b[16384];
    struct elf_seg sg[2] = {
        {0x1000, 0xffffffff81000000ull, 0x1000000, 0x2000, 0x3000},
        {0x3000, 0xffffffff82000000ull, 0x2000000, 0x800, 0x800},
    };
    size_t n = make_elf(b, sizeof(b), 64, 0x1000000, sg, 2);
    /* dirty the bss area first: the loader must zero it */
    memset(guest_ptr(&f->vm.mem, 0x1002000, 0x1000), 0xcc, 0x1000);
    struct x86_state s;
    assert_int_equal(load(f, b, n, "initrd!", 7, "root=/dev/vda", &s), 0);
    check_long_mode(&s, 0x1000000);
    check_tables(f);
    assert_memory_equal(g(f, 0x1000000, 0x2000), b + 0x1000, 0x2000);
    const uint8_t *bss = g(f, 0x1002000, 0x1000);
    for (int i = 0; i < 0x1000; i++)
        assert_int_equal(bss[i], 0);
    assert_memory_equal(g(f, 0x2000000, 0x800), b + 0x3000, 0x800);
    const uint8_t *zp = g(f, LAYOUT_ZERO_PAGE, 4096);
    assert_int_equal(zp[0x1fe] | zp[0x1ff] << 8, 0xaa55);
    assert_memory_equal(zp + 0x202, "HdrS", 4);
    assert_int_equal(rd32(zp + 0x21c), 7);
    uint32_t ia = rd32(zp + 0x218);
    assert_true(ia >= 0x2000800);
    assert_memory_equal(g(f, ia, 7), "initrd!", 7);
    assert_string_equal((const char *)g(f, rd32(zp + 0x228), 14), "root=/dev/vda");
    fx_free(f);
}

static void test_elf64_virtual_entry_translated(void **st)
{
    struct fixture *f = fx_new(64 * MiB);
    static uint8_t b[8192];
    struct elf_seg sg = {0x1000, 0xffffffff81000000ull, 0x1000000, 0x1000, 0x1000};
    size_t n = make_elf(b, sizeof(b), 64, 0xffffffff81000040ull, &sg, 1);
    struct x86_state s;
    assert_int_equal(load(f, b, n, NULL, 0, NULL, &s), 0);
    assert_int_equal(s.rip, 0x1000040);
    fx_free(f);
}

static void test_elf64_corrupt(void **st)
{
    struct fixture *f = fx_new(64 * MiB);
    static uint8_t b[8192];
    struct elf_seg ok = {0x1000, 0x1000000, 0x1000000, 0x1000, 0x1000};
    struct elf_seg sg;
    size_t n;
    /* segment data beyond the end of the file */
    n = make_elf(b, sizeof(b), 64, 0x1000000, &ok, 1);
    expect_refused(f, b, n - 1, "beyond the end of the file");
    /* program headers beyond the end */
    n = make_elf(b, sizeof(b), 64, 0x1000000, &ok, 1);
    wr64(b + 32, 0xfffffffffffffff0ull);
    expect_refused(f, b, n, "program headers");
    /* filesz > memsz */
    sg = ok;
    sg.memsz = 0x800;
    n = make_elf(b, sizeof(b), 64, 0x1000000, &sg, 1);
    expect_refused(f, b, n, "memory size");
    /* below 1 MiB: over our boot tables */
    sg = ok;
    sg.paddr = 0x7000;
    n = make_elf(b, sizeof(b), 64, 0x7000, &sg, 1);
    expect_refused(f, b, n, "below 1 MiB");
    /* beyond RAM / into the MMIO hole */
    sg = ok;
    sg.paddr = 0xfec00000;
    n = make_elf(b, sizeof(b), 64, 0xfec00000, &sg, 1);
    expect_refused(f, b, n, "does not fit");
    /* paddr + memsz wraps */
    sg = ok;
    sg.paddr = 0xfffffffffffff000ull;
    n = make_elf(b, sizeof(b), 64, 0xfffffffffffff000ull, &sg, 1);
    expect_refused(f, b, n, "wraps");
    /* overlapping segments */
    struct elf_seg two[2] = {ok, ok};
    two[1].paddr += 0x800;
    two[1].vaddr += 0x800;
    n = make_elf(b, sizeof(b), 64, 0x1000000, two, 2);
    expect_refused(f, b, n, "overlap");
    /* entry outside every segment */
    n = make_elf(b, sizeof(b), 64, 0x5000000, &ok, 1);
    expect_refused(f, b, n, "entry point");
    /* no loadable segment */
    n = make_elf(b, sizeof(b), 64, 0x1000000, &ok, 1);
    wr32(b + 64, 4); /* PT_NOTE */
    expect_refused(f, b, n, "no loadable segment");
    /* wrong program header size */
    n = make_elf(b, sizeof(b), 64, 0x1000000, &ok, 1);
    wr16(b + 54, 40);
    expect_refused(f, b, n, "program header size");
    /* not an executable */
    n = make_elf(b, sizeof(b), 64, 0x1000000, &ok, 1);
    wr16(b + 16, 3);
    expect_refused(f, b, n, "ET_EXEC");
    fx_free(f);
}

/* ---------------- Multiboot ---------------- */

static void check_prot32(const struct x86_state *s, uint32_t eip)
{
    assert_int_equal(s->rip, eip);
    assert_int_equal(s->gpr[RAX], 0x2BADB002u);
    assert_int_equal(s->gpr[RBX], LAYOUT_MB_INFO);
    assert_int_equal(s->seg[SEG_CS].sel, 0x08);
    assert_int_equal(s->seg[SEG_CS].db, 1);
    assert_int_equal(s->seg[SEG_CS].l, 0);
    assert_int_equal(s->seg[SEG_CS].limit, 0xffffffffu);
    assert_int_equal(s->seg[SEG_DS].limit, 0xffffffffu);
    assert_int_equal(s->seg[SEG_SS].db, 1);
    assert_true(s->cr0 & X86_CR0_PE);
    assert_false(s->cr0 & X86_CR0_PG);
    assert_int_equal(s->efer, 0);
    assert_int_equal(s->rflags & (X86_FLAG_IF | X86_FLAG_VM), 0);
}

static void check_mbi(struct fixture *f, const char *cmdline, const void *mod, size_t modlen)
{
    const uint8_t *mbi = g(f, LAYOUT_MB_INFO, 120);
    uint32_t flags = rd32(mbi);
    assert_true(flags & 1);    /* mem */
    assert_true(flags & 4);    /* cmdline */
    assert_true(flags & 8);    /* mods */
    assert_true(flags & 0x40); /* mmap */
    assert_int_equal(rd32(mbi + 4), 639);
    assert_int_equal(rd32(mbi + 8), (64 * MiB - MiB) / 1024);
    assert_string_equal((const char *)g(f, rd32(mbi + 16), strlen(cmdline) + 1), cmdline);
    /* mmap: 5 entries of 24 bytes, size field 20 */
    uint32_t ml = rd32(mbi + 44), ma = rd32(mbi + 48);
    assert_int_equal(ml, 5 * 24);
    const uint8_t *mm = g(f, ma, ml);
    assert_int_equal(rd32(mm), 20);
    assert_int_equal(rd64(mm + 4), 0);
    assert_int_equal(rd32(mm + 20), 1);
    assert_int_equal(rd64(mm + 48 + 4), MiB);
    assert_int_equal(rd64(mm + 48 + 12), 63 * MiB);
    assert_int_equal(rd32(mm + 24 + 20), 2);
    if (!mod) {
        assert_int_equal(rd32(mbi + 20), 0);
        return;
    }
    assert_int_equal(rd32(mbi + 20), 1);
    const uint8_t *m = g(f, rd32(mbi + 24), 16);
    uint32_t start = rd32(m), end = rd32(m + 4);
    assert_int_equal(start % 4096, 0);
    assert_int_equal(end - start, modlen);
    assert_memory_equal(g(f, start, modlen), mod, modlen);
    assert_string_equal((const char *)g(f, rd32(m + 8), strlen(f->ipath) + 1), f->ipath);
}

static void test_multiboot_elf32_loads(void **st)
{
    struct fixture *f = fx_new(64 * MiB);
    static uint8_t b[8192];
    struct elf_seg sg = {0x100, 0x100000, 0x100000, 0x400, 0x2000};
    size_t n = make_elf(b, sizeof(b), 32, 0x100010, &sg, 1);
    mb_header(b + 0x100, 0x3);
    struct x86_state s;
    assert_int_equal(load(f, b, n, "module zero", 11, "a b c", &s), 0);
    check_prot32(&s, 0x100010);
    assert_memory_equal(g(f, 0x100000, 0x400), b + 0x100, 0x400);
    char want[128];
    snprintf(want, sizeof(want), "%s a b c", f->kpath);
    check_mbi(f, want, "module zero", 11);
    fx_free(f);
}

static void test_multiboot_no_cmdline_no_initrd(void **st)
{
    struct fixture *f = fx_new(64 * MiB);
    static uint8_t b[8192];
    struct elf_seg sg = {0x100, 0x200000, 0x200000, 0x400, 0x400};
    size_t n = make_elf(b, sizeof(b), 32, 0x200000, &sg, 1);
    mb_header(b + 0x104, 0x2);
    struct x86_state s;
    assert_int_equal(load(f, b, n, NULL, 0, NULL, &s), 0);
    check_prot32(&s, 0x200000);
    check_mbi(f, f->kpath, NULL, 0);
    fx_free(f);
}

static void test_multiboot_aout_loads(void **st)
{
    struct fixture *f = fx_new(64 * MiB);
    static uint8_t b[AOUT_SIZE];
    make_aout(b);
    memset(guest_ptr(&f->vm.mem, 0x102000, 0x6000), 0xee, 0x6000);
    struct x86_state s;
    assert_int_equal(load(f, b, AOUT_SIZE, "xyz", 3, "k=v", &s), 0);
    check_prot32(&s, 0x100080);
    assert_memory_equal(g(f, 0x100000, 0x2000), b, 0x2000);
    const uint8_t *bss = g(f, 0x102000, 0x6000);
    for (int i = 0; i < 0x6000; i++)
        assert_int_equal(bss[i], 0);
    /* load_end_addr 0: the rest of the file */
    make_aout(b);
    wr32(b + 0x40 + 20, 0);
    wr32(b + 0x40 + 24, 0);
    assert_int_equal(load(f, b, AOUT_SIZE, NULL, 0, NULL, &s), 0);
    assert_memory_equal(g(f, 0x100000, AOUT_SIZE), b, AOUT_SIZE);
    fx_free(f);
}

static void test_multiboot_corrupt(void **st)
{
    struct fixture *f = fx_new(64 * MiB);
    static uint8_t b[AOUT_SIZE];
    make_aout(b);
    b[0x48] ^= 1;
    expect_refused(f, b, AOUT_SIZE, "bad checksum");
    make_aout(b);
    mb_header(b + 0x40, 0x10007); /* wants a video mode */
    expect_refused(f, b, AOUT_SIZE, "video mode");
    make_aout(b);
    mb_header(b + 0x40, 0x18000); /* unknown required bit 15 */
    expect_refused(f, b, AOUT_SIZE, "feature flags");
    make_aout(b);
    wr32(b + 0x40 + 16, 0x100044); /* load_addr after header_addr */
    expect_refused(f, b, AOUT_SIZE, "before the beginning of the file");
    make_aout(b);
    wr32(b + 0x40 + 12, 0x200040); /* image would start 1 MiB before the file */
    expect_refused(f, b, AOUT_SIZE, "before the beginning of the file");
    make_aout(b);
    wr32(b + 0x40 + 20, 0x104000); /* load_end beyond the file */
    expect_refused(f, b, AOUT_SIZE, "beyond the end of the file");
    make_aout(b);
    wr32(b + 0x40 + 20, 0x0ff000); /* load_end below load_addr */
    expect_refused(f, b, AOUT_SIZE, "not above");
    make_aout(b);
    wr32(b + 0x40 + 24, 0x101000); /* bss_end below load_end */
    expect_refused(f, b, AOUT_SIZE, "bss_end_addr");
    make_aout(b);
    wr32(b + 0x40 + 28, 0x90000); /* entry outside */
    expect_refused(f, b, AOUT_SIZE, "entry_addr");
    make_aout(b);
    wr32(b + 0x40 + 24, 0xffffff00); /* bss into the MMIO hole */
    expect_refused(f, b, AOUT_SIZE, "does not fit");
    make_aout(b);
    wr32(b + 0x40 + 12, 0x7040); /* load over the Multiboot info page */
    wr32(b + 0x40 + 16, 0x7000);
    wr32(b + 0x40 + 20, 0x9000);
    wr32(b + 0x40 + 24, 0x9000);
    wr32(b + 0x40 + 28, 0x7080);
    expect_refused(f, b, AOUT_SIZE, "below 1 MiB");
    make_aout(b);
    expect_refused(f, b, 0x50, "truncated"); /* header cut short */
    /* ELF path: no kludge and a broken ELF */
    make_aout(b);
    mb_header(b + 0x40, 0x3);
    expect_refused(f, b, AOUT_SIZE, "ELF");
    /* a Multiboot ELF64 is refused with advice */
    static uint8_t e[8192];
    struct elf_seg sg = {0x100, 0x100000, 0x100000, 0x400, 0x400};
    size_t n = make_elf(e, sizeof(e), 64, 0x100000, &sg, 1);
    mb_header(e + 0x100, 0x3);
    expect_refused(f, e, n, "elf32-i386");
    fx_free(f);
}

static void test_multiboot_initrd_too_big(void **st)
{
    struct fixture *f = fx_new(16 * MiB);
    static uint8_t b[AOUT_SIZE];
    make_aout(b);
    size_t n = 15 * MiB;
    uint8_t *initrd = calloc(1, n);
    struct x86_state s;
    int r = load(f, b, AOUT_SIZE, initrd, n, NULL, &s);
    free(initrd);
    assert_int_equal(r, -ENOSPC);
    assert_non_null(strstr(err_msg(), "does not fit"));
    fx_free(f);
}

/* ---------------- files ---------------- */

static void test_bad_files(void **st)
{
    struct fixture *f = fx_new(16 * MiB);
    struct x86_state s;
    assert_true(boot_load(&f->vm, "/nonexistent/vmlinuz", NULL, NULL, &s) < 0);
    assert_non_null(strstr(err_msg(), "/nonexistent/vmlinuz"));
    assert_true(boot_load(&f->vm, "/tmp", NULL, NULL, &s) < 0);
    assert_non_null(strstr(err_msg(), "regular file"));
    expect_refused(f, "", 0, "empty");
    expect_refused(f, "#!/bin/sh\necho not a kernel\n", 27, "not a kernel");
    static uint8_t zeros[20000];
    expect_refused(f, zeros, sizeof(zeros), "not a kernel");
    /* a missing initrd is named */
    static uint8_t b[BZ_SIZE];
    make_bzimage(b);
    write_tmp(f->kpath, b, BZ_SIZE);
    assert_true(boot_load(&f->vm, f->kpath, "/nonexistent/initrd.gz", NULL, &s) < 0);
    assert_non_null(strstr(err_msg(), "/nonexistent/initrd.gz"));
    fx_free(f);
}

/* The project's own test kernels, when `make guests` has built them. */
static void test_guest_kernels_load(void **st)
{
    const char *names[] = {"exit42", "smp", "emufail", "cmdline", "linux64"};
    unsigned found = 0;
    for (unsigned i = 0; i < ARRAY_SIZE(names); i++) {
        char path[128];
        snprintf(path, sizeof(path), "build/guests/%s.elf", names[i]);
        if (access(path, R_OK) != 0) continue;
        found++;
        struct fixture *f = fx_new(64 * MiB);
        struct x86_state s;
        err_clear();
        int r = boot_load(&f->vm, path, NULL, "x=1", &s);
        if (r < 0) fail_msg("%s: %s", path, err_msg());
        if (!strcmp(names[i], "linux64"))
            assert_int_equal(s.gpr[RSI], LAYOUT_ZERO_PAGE); /* Linux 64-bit entry */
        else
            assert_int_equal(s.gpr[RAX], 0x2BADB002u); /* Multiboot */
        assert_true(s.rip >= MiB && s.rip < 64 * MiB);
        fx_free(f);
    }
    if (!found) {
        print_message("no test kernels in build/guests (run make guests): skipping\n");
        skip();
    }
}

/* A real Linux bzImage, when one is at hand ($LOOKOUT_TEST_BZIMAGE or the default guest's cache):
 * boots directly from its decompressed LZ4 payload, or (with boot_direct_vmlinux off) at its
 * preferred address + 0x200, with the header the kernel expects either way. */
static void test_real_bzimage(void **st)
{
    const char *path = getenv("LOOKOUT_TEST_BZIMAGE");
    char buf[512];
    if (!path && getenv("HOME")) {
        snprintf(buf, sizeof(buf), "%s/.cache/lookout/guest/vmlinuz", getenv("HOME"));
        path = buf;
    }
    if (!path || access(path, R_OK) != 0) {
        print_message("no real bzImage (set LOOKOUT_TEST_BZIMAGE): skipping\n");
        skip();
    }
    /* Is the payload LZ4 (direct boot possible)?  Read its first bytes from the file. */
    bool lz4 = false;
    FILE *fp = fopen(path, "rb");
    uint8_t h[0x270];
    if (fp && fread(h, 1, sizeof(h), fp) == sizeof(h)) {
        long at = ((h[0x1f1] ? h[0x1f1] : 4) + 1) * 512 + (long)rd32(h + 0x248);
        uint8_t m[4];
        lz4 = fseek(fp, at, SEEK_SET) == 0 && fread(m, 1, 4, fp) == 4 && rd32(m) == 0x184c2102u;
    }
    if (fp) fclose(fp);
    for (int direct = 0; direct < 2; direct++) {
        struct fixture *f = fx_new(512 * MiB);
        struct x86_state s;
        static char initrd[4096] = "initramfs";
        write_tmp(f->ipath, initrd, sizeof(initrd));
        err_clear();
        boot_direct_vmlinux = direct;
        int r = boot_load(&f->vm, path, f->ipath, "console=ttyS0", &s);
        boot_direct_vmlinux = true;
        if (r < 0) fail_msg("%s: %s", path, err_msg());
        const uint8_t *zp = g(f, LAYOUT_ZERO_PAGE, 4096);
        uint64_t pref = rd64(zp + 0x258);
        /* direct: entered at vmlinux's phys_startup_64, which sits at the preferred address */
        check_long_mode(&s, direct && lz4 ? pref : pref + 0x200);
        assert_memory_equal(zp + 0x202, "HdrS", 4);
        assert_int_equal(zp[0x210], 0xff);
        assert_int_equal(rd32(zp + 0x21c), sizeof(initrd));
        assert_memory_equal(g(f, rd32(zp + 0x218), 9), "initramfs", 9);
        fx_free(f);
    }
}

/* A bzImage whose payload is an LZ4 legacy frame holding an ELF64 vmlinux (one block with a
 * literal run, a back-reference and a final literal run) boots the vmlinux directly. */
static void test_bzimage_lz4_direct(void **st)
{
    static uint8_t elf[LZ4_ELF_SIZE], b[BZ_SIZE + 0x2000];
    size_t blk_at, blk_len;
    size_t total = make_lz4_bzimage(b, sizeof(b), elf, &blk_at, &blk_len);
    uint8_t *blk = malloc(blk_len);
    memcpy(blk, b + blk_at, blk_len);
    uint8_t *pl = b + blk_at - 8;
    size_t n = blk_len, en = LZ4_ELF_SIZE;
    struct fixture *f = fx_new(64 * MiB);
    struct x86_state s;
    assert_int_equal(load(f, b, total, "rd", 2, "quiet", &s), 0);
    check_long_mode(&s, 0x1000000); /* the ELF entry, not load + 0x200 */
    assert_memory_equal(g(f, 0x1000000, 0x2000), elf + 0x1000, 0x2000);
    const uint8_t *zp = g(f, LAYOUT_ZERO_PAGE, 4096);
    assert_int_equal(rd32(zp + 0x238), 2047); /* the bzImage's own header */
    assert_int_equal(zp[0x210], 0xff);
    assert_memory_equal(g(f, rd32(zp + 0x218), 2), "rd", 2);

    /* A corrupt payload (wrong decompressed size) falls back to the kernel's own entry. */
    wr32(pl + 8 + n, (uint32_t)en + 1);
    assert_int_equal(load(f, b, total, NULL, 0, "quiet", &s), 0);
    check_long_mode(&s, 0x1000200);
    /* So does a back-reference before the start of the output. */
    wr32(pl + 8 + n, (uint32_t)en);
    blk[0] = 0x0f; /* no literals: the match comes first */
    memcpy(pl + 8, blk, n);
    assert_int_equal(load(f, b, total, NULL, 0, "quiet", &s), 0);
    check_long_mode(&s, 0x1000200);
    /* And with the knob off the payload is never looked at. */
    blk[0] = 0xff;
    memcpy(pl + 8, blk, n);
    boot_direct_vmlinux = false;
    assert_int_equal(load(f, b, total, NULL, 0, "quiet", &s), 0);
    boot_direct_vmlinux = true;
    check_long_mode(&s, 0x1000200);
    free(blk);
    fx_free(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_e820_below_hole),
        cmocka_unit_test(test_e820_above_hole),
        cmocka_unit_test(test_e820_exactly_hole),
        cmocka_unit_test(test_bzimage_loads),
        cmocka_unit_test(test_bzimage_relocates_when_small),
        cmocka_unit_test(test_bzimage_initrd_too_big),
        cmocka_unit_test(test_bzimage_corrupt),
        cmocka_unit_test(test_bzimage_cmdline_too_long),
        cmocka_unit_test(test_elf64_vmlinux_loads),
        cmocka_unit_test(test_elf64_virtual_entry_translated),
        cmocka_unit_test(test_elf64_corrupt),
        cmocka_unit_test(test_multiboot_elf32_loads),
        cmocka_unit_test(test_multiboot_no_cmdline_no_initrd),
        cmocka_unit_test(test_multiboot_aout_loads),
        cmocka_unit_test(test_multiboot_corrupt),
        cmocka_unit_test(test_multiboot_initrd_too_big),
        cmocka_unit_test(test_bad_files),
        cmocka_unit_test(test_guest_kernels_load),
        cmocka_unit_test(test_real_bzimage),
        cmocka_unit_test(test_bzimage_lz4_direct),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
