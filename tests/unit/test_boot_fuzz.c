/* Mutation test for the kernel loaders: thousands of randomly corrupted and truncated variants
 * of each synthetic image (bzImage, ELF64 vmlinux, Multiboot ELF32 and a.out kludge) are fed to
 * the in-memory loaders under ASan/UBSan.  Each must either load, or fail with an error message
 * naming the file; it must never read or write out of bounds.  Deterministic (fixed seed). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cpu/cpu.h"
#include "machine/boot.h"
#include "util/log.h"

#include "test_boot_images.h"

#define ITERATIONS 20000
#define PATH       "fuzzed-kernel"

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint32_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)rng;
}

/* Corrupts 1-8 bytes or 32-bit words, mostly inside [hot_at, hot_at + hot) (the headers). */
static void mutate(uint8_t *b, size_t n, size_t hot_at, size_t hot)
{
    unsigned k = 1 + next() % 8;
    for (unsigned i = 0; i < k; i++) {
        size_t off = (next() % 4) ? hot_at + next() % hot : next() % n;
        switch (next() % 4) {
        case 0: b[off] ^= (uint8_t)(1u << (next() % 8)); break;
        case 1: b[off] = (uint8_t)next(); break;
        case 2:
            if (off + 4 <= n) {
                static const uint32_t special[] = {0,          1,          0x7fffffff, 0x80000000,
                                                   0xffffffff, 0xfffff000, 0x100000,   0x1000};
                wr32(b + off, special[next() % 8]);
            }
            break;
        default: b[off] = 0; break;
        }
    }
}

static unsigned loaded, refused;

static void run(struct vm *vm, const uint8_t *img, size_t n,
                int (*loader)(struct vm *, const struct boot_image *, const char *, const char *,
                              struct x86_state *))
{
    struct boot_image k = {.path = PATH, .data = img, .size = n};
    struct x86_state s;
    x86_state_reset(&s, 0, true);
    err_clear();
    int r = boot_detect(&k) == BOOT_FMT_UNKNOWN ? -ENOEXEC : loader(vm, &k, NULL, "fuzz", &s);
    if (r == 0) {
        loaded++;
        /* whatever loaded must enter inside RAM at or above 1 MiB */
        assert_true(s.rip >= 0x100000 && guest_is_ram(&vm->mem, s.rip));
    } else {
        refused++;
        if (boot_detect(&k) != BOOT_FMT_UNKNOWN && !strstr(err_msg(), PATH))
            fail_msg("error does not name the file: %s", err_msg());
    }
}

static void fuzz_at(int (*loader)(struct vm *, const struct boot_image *, const char *,
                                  const char *, struct x86_state *),
                    const uint8_t *base, size_t n, size_t hot_at, size_t hot);

static void fuzz(int (*loader)(struct vm *, const struct boot_image *, const char *, const char *,
                               struct x86_state *),
                 const uint8_t *base, size_t n, size_t hot)
{
    fuzz_at(loader, base, n, 0, hot);
}

static void fuzz_at(int (*loader)(struct vm *, const struct boot_image *, const char *,
                                  const char *, struct x86_state *),
                    const uint8_t *base, size_t n, size_t hot_at, size_t hot)
{
    struct vm *vm = calloc(1, sizeof(*vm));
    assert_non_null(vm);
    assert_int_equal(guest_mem_init(&vm->mem, 32ull << 20), 0);
    uint8_t *b = malloc(n);
    loaded = refused = 0;
    for (unsigned i = 0; i < ITERATIONS; i++) {
        memcpy(b, base, n);
        mutate(b, n, hot_at, hot);
        /* a quarter of the runs also truncate, into an exactly-sized buffer for ASan */
        size_t len = (next() % 4) ? n : next() % (n + 1);
        uint8_t *t = malloc(len ? len : 1);
        memcpy(t, b, len);
        run(vm, t, len, loader);
        free(t);
    }
    print_message("%u loaded, %u refused\n", loaded, refused);
    assert_true(refused > 0);
    free(b);
    guest_mem_destroy(&vm->mem);
    free(vm);
}

static void test_fuzz_bzimage(void **st)
{
    static uint8_t b[BZ_SIZE];
    make_bzimage(b);
    fuzz(boot_linux_bzimage, b, sizeof(b), 0x270);
}

static void test_fuzz_bzimage_lz4(void **st)
{
    static uint8_t b[BZ_SIZE + 0x2000], elf[LZ4_ELF_SIZE];
    size_t at, len;
    size_t n = make_lz4_bzimage(b, sizeof(b), elf, &at, &len);
    /* mutate the LZ4 frame, not the setup header */
    fuzz_at(boot_linux_bzimage, b, n, at - 8, 64);
}

static void test_fuzz_elf64(void **st)
{
    static uint8_t b[16384];
    struct elf_seg sg[2] = {{0x1000, 0xffffffff81000000ull, 0x1000000, 0x2000, 0x3000},
                            {0x3000, 0xffffffff82000000ull, 0x1400000, 0x800, 0x800}};
    size_t n = make_elf(b, sizeof(b), 64, 0x1000000, sg, 2);
    fuzz(boot_linux_elf, b, n, 64 + 2 * 56);
}

static void test_fuzz_multiboot_elf32(void **st)
{
    static uint8_t b[8192];
    struct elf_seg sg = {0x100, 0x100000, 0x100000, 0x400, 0x2000};
    size_t n = make_elf(b, sizeof(b), 32, 0x100010, &sg, 1);
    mb_header(b + 0x100, 0x3);
    fuzz(boot_multiboot, b, n, 0x10c);
}

static void test_fuzz_multiboot_aout(void **st)
{
    static uint8_t b[AOUT_SIZE];
    make_aout(b);
    fuzz(boot_multiboot, b, sizeof(b), 0x60);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fuzz_bzimage),        cmocka_unit_test(test_fuzz_bzimage_lz4),
        cmocka_unit_test(test_fuzz_elf64),          cmocka_unit_test(test_fuzz_multiboot_elf32),
        cmocka_unit_test(test_fuzz_multiboot_aout),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
