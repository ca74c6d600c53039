/* linux64: a tiny ELF64 kernel entered through the Linux x86-64 boot protocol, like a vmlinux.
 * Checks what the loader promised (CS 0x10 / DS,SS 0x18, interrupts off, long mode with paging,
 * RSI = zero page with the setup header, type_of_loader 0xff, command line, e820 map, the ACPI
 * RSDP address) and prints the command line, e820 map and initrd contents.  Prints
 * "linux64: boot protocol ok" and exits with 0 when all checks pass, else 1.  A fast check of
 * the Linux boot path that does not need the Debian kernel. */
#include "lib.h"

extern uint64_t entry_rsi, entry_rflags;
extern uint16_t entry_cs, entry_ds, entry_ss;

static int failures;

static void check(const char *what, bool ok)
{
    if (!ok) failures++;
    kprintf("linux64: %s %s\n", what, ok ? "ok" : "FAILED");
}

static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t rd64(const uint8_t *p)
{
    return rd32(p) | (uint64_t)rd32(p + 4) << 32;
}

int linux_start(const uint8_t *zp);
int linux_start(const uint8_t *zp)
{
    uint64_t cr0, cr4;
    __asm__ volatile("mov %%cr0, %0" : "=r"(cr0));
    __asm__ volatile("mov %%cr4, %0" : "=r"(cr4));
    check("CS is __BOOT_CS 0x10", entry_cs == 0x10);
    check("DS and SS are __BOOT_DS 0x18", entry_ds == 0x18 && entry_ss == 0x18);
    check("interrupts off", !(entry_rflags & (1u << 9)));
    check("paging and PAE on", (cr0 & (1ull << 31)) && (cr4 & (1ull << 5)));
    check("RSI is the zero page", zp == (const uint8_t *)0x7000);
    check("setup header magic HdrS", !kstrncmp((const char *)zp + 0x202, "HdrS", 4));
    check("type_of_loader 0xff", zp[0x210] == 0xff);
    const char *cmd = (const char *)(uintptr_t)rd32(zp + 0x228);
    check("cmd_line_ptr set", cmd != 0);
    if (cmd) kprintf("linux64: cmdline [%s]\n", cmd);
    unsigned n = zp[0x1e8];
    check("e820 entries present", n > 0 && n <= 128);
    for (unsigned i = 0; i < n && i <= 128; i++) {
        const uint8_t *e = zp + 0x2d0 + 20 * i;
        kprintf("linux64: e820 %lx-%lx type %u\n", rd64(e), rd64(e) + rd64(e + 8) - 1,
                rd32(e + 16));
    }
    const uint8_t *rsdp = (const uint8_t *)(uintptr_t)rd64(zp + 0x70);
    bool rsdp_ok = rsdp && !kstrncmp((const char *)rsdp, "RSD PTR ", 8);
    uint8_t sum = 0;
    for (int i = 0; rsdp_ok && i < 36; i++)
        sum = (uint8_t)(sum + rsdp[i]);
    check("acpi_rsdp_addr points at a valid RSDP", rsdp_ok && sum == 0);
    uint8_t ids[64];
    kprintf("linux64: MADT lists %d cpus\n", madt_apic_ids(ids, 64));
    uint32_t ia = rd32(zp + 0x218), is = rd32(zp + 0x21c);
    if (is) {
        kprintf("linux64: initrd at %x size %u [", ia, is);
        const char *d = (const char *)(uintptr_t)ia;
        for (uint32_t i = 0; i < is && i < 4096; i++)
            putc_serial((d[i] >= 0x20 && d[i] < 0x7f) || d[i] == '\n' ? d[i] : '.');
        kprintf("]\n");
    }
    if (failures) {
        kprintf("linux64: %d checks failed\n", failures);
        return 1;
    }
    kprintf("linux64: boot protocol ok\n");
    return 0;
}
