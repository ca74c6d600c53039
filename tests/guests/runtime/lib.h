/* Shared runtime of the Multiboot test kernels: port I/O, COM1 output, printf, the exit port,
 * the IDT, the Multiboot information structure and the ACPI MADT walk.
 * The kernels run in ring 0, long mode, identity-mapped 4 GiB, interrupts off. */
#pragma once
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Multiboot v1 information (the fields the kernels read). */
struct mb_info {
    uint32_t flags, mem_lower, mem_upper, boot_device, cmdline, mods_count, mods_addr;
    uint32_t syms[4];
    uint32_t mmap_length, mmap_addr;
    uint32_t drives_length, drives_addr, config_table, boot_loader_name;
} __attribute__((packed));

struct mb_module {
    uint32_t mod_start, mod_end, string, reserved;
} __attribute__((packed));

struct mb_mmap {
    uint32_t size;
    uint64_t addr, len;
    uint32_t type;
} __attribute__((packed));

/* The saved state of an interrupted context (see isr_common in entry.S). */
struct trap_frame {
    uint64_t r15, r14, r13, r12, r11, r10, r9, r8, rdi, rsi, rbp, rbx, rdx, rcx, rax;
    uint64_t vector, error, rip, cs, rflags, rsp, ss;
};

typedef void (*trap_fn)(struct trap_frame *f);

/* Provided by each kernel: returns the value for the exit port (0 = success). */
int kmain(struct mb_info *mbi);

static inline void outb(uint16_t port, uint8_t v)
{
    __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(port));
}
static inline uint8_t inb(uint16_t port)
{
    uint8_t v;
    __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}
static inline void outl(uint16_t port, uint32_t v)
{
    __asm__ volatile("outl %0, %1" ::"a"(v), "Nd"(port));
}
static inline uint64_t rdtsc(void)
{
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return (uint64_t)hi << 32 | lo;
}
static inline void cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4])
{
    __asm__ volatile("cpuid"
                     : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3])
                     : "a"(leaf), "c"(sub));
}
static inline uint32_t mmio_read32(uint64_t addr)
{
    return *(volatile uint32_t *)addr;
}
static inline void mmio_write32(uint64_t addr, uint32_t v)
{
    *(volatile uint32_t *)addr = v;
}

/* COM1 set-up and the IDT (vector stubs in common.S); called by every entry path. */
void runtime_init(void);
void putc_serial(char c);
void puts_serial(const char *s);
void kprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Writes v to the exit port (lookout exits with (v << 1) | 1) and halts if that returns. */
__attribute__((noreturn)) void exit_vm(uint32_t v);

/* Installs a handler for a vector (the default handler prints it and exits 64 + vector). */
void set_trap(unsigned vector, trap_fn fn);
/* Expected-fault support: the next `vector` resumes at the address set by the TRY_* asm. */
extern volatile uint32_t expect_armed, expect_vector, expect_hits;
extern volatile uint64_t expect_resume;

void delay_tsc(uint64_t ticks);
size_t kstrlen(const char *s);
int kstrncmp(const char *a, const char *b, size_t n);
void *kmemcpy(void *d, const void *s, size_t n);
/* Finds "key=" in the command line and parses a decimal value; -1 if absent. */
long cmdline_value(const struct mb_info *mbi, const char *key);

/* ACPI: the MADT's enabled local APIC IDs (returns the count, up to max), or -1 without MADT. */
int madt_apic_ids(uint8_t *ids, int max);
