/* cmdline: prints what the Multiboot loader passed — command line, memory sizes, memory map and
 * module 0 (its string and contents) — for the loader tests.  Exits with 0 (status 1). */
#include "lib.h"

#define MOD_PRINT_MAX 4096

int kmain(struct mb_info *mbi)
{
    kprintf("cmdline: flags=%x\n", mbi->flags);
    if (mbi->flags & (1u << 2))
        kprintf("cmdline: [%s]\n", (const char *)(uintptr_t)mbi->cmdline);
    else
        kprintf("cmdline: none\n");
    if (mbi->flags & 1u)
        kprintf("mem_lower: %u KiB mem_upper: %u KiB\n", mbi->mem_lower, mbi->mem_upper);
    if (mbi->flags & (1u << 6)) {
        for (uint32_t off = 0; off < mbi->mmap_length;) {
            const struct mb_mmap *m = (const struct mb_mmap *)(uintptr_t)(mbi->mmap_addr + off);
            kprintf("mmap: base=%lx len=%lx type=%u\n", m->addr, m->len, m->type);
            off += m->size + 4;
        }
    }
    if (mbi->flags & (1u << 9))
        kprintf("loader: [%s]\n", (const char *)(uintptr_t)mbi->boot_loader_name);
    uint32_t nmods = (mbi->flags & (1u << 3)) ? mbi->mods_count : 0;
    kprintf("mods: %u\n", nmods);
    if (nmods) {
        const struct mb_module *m = (const struct mb_module *)(uintptr_t)mbi->mods_addr;
        uint32_t size = m->mod_end - m->mod_start;
        kprintf("mod0: [%s] start=%x size=%u\n", (const char *)(uintptr_t)m->string, m->mod_start,
                size);
        kprintf("mod0 data: [");
        const char *d = (const char *)(uintptr_t)m->mod_start;
        for (uint32_t i = 0; i < size && i < MOD_PRINT_MAX; i++) {
            char c = d[i];
            putc_serial((c >= 0x20 && c < 0x7f) || c == '\n' ? c : '.');
        }
        kprintf("]\n");
    }
    kprintf("cmdline: done\n");
    return 0;
}
