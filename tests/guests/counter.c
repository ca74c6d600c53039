/* counter: counts forever on COM1, driven by the LAPIC timer, for snapshot tests.
 * Every 20 ms tick (periodic LAPIC timer, vector 0x40, HLT between ticks) it increments a counter,
 * writes it into a 4 MiB table in RAM (so memory contents follow the count) and prints
 * "count N ok" — or "count N BAD" if the table entry of the previous tick does not hold the
 * previous count (memory and registers restored inconsistently).  The FPU/SSE is used too: the
 * count is also kept in an XMM register, compared on each tick.  Cmdline "stop=N" exits with value
 * 0 after tick N (lookout exit status 1); a mismatch exits with value 1 (status 3).  "spin=1"
 * counts without waiting for ticks (restore latency benchmarks: output resumes at once). */
#include "lib.h"

#define LAPIC          0xfee00000ull
#define LAPIC_EOI      (LAPIC + 0xb0)
#define LAPIC_SVR      (LAPIC + 0xf0)
#define LAPIC_LVT_TMR  (LAPIC + 0x320)
#define LAPIC_TMR_INIT (LAPIC + 0x380)
#define LAPIC_TMR_DIV  (LAPIC + 0x3e0)
#define VEC_TIMER      0x40
#define TABLE_WORDS    (4u << 20) / 8

static volatile uint64_t ticks;
static uint64_t table[TABLE_WORDS];

static void timer_irq(struct trap_frame *f)
{
    (void)f;
    ticks++;
    mmio_write32(LAPIC_EOI, 0);
}

int kmain(struct mb_info *mbi)
{
    long stop = cmdline_value(mbi, "stop");
    long spin = cmdline_value(mbi, "spin"); /* spin=1: count as fast as it can print (benchmarks) */
    uint64_t cr;
    __asm__ volatile("mov %%cr0, %0" : "=r"(cr)); /* SSE on: CR0.EM off, MP on; CR4.OSFXSR */
    cr = (cr & ~4ull) | 2ull;
    __asm__ volatile("mov %0, %%cr0" ::"r"(cr));
    __asm__ volatile("mov %%cr4, %0" : "=r"(cr));
    cr |= 3ull << 9;
    __asm__ volatile("mov %0, %%cr4" ::"r"(cr));
    outb(0x21, 0xff); /* mask the 8259s */
    outb(0xa1, 0xff);
    set_trap(VEC_TIMER, timer_irq);
    mmio_write32(LAPIC_SVR, 0x1ff);
    mmio_write32(LAPIC_TMR_DIV, 0x3);                  /* divide by 16: 62.5 MHz at a 1 GHz bus */
    mmio_write32(LAPIC_LVT_TMR, VEC_TIMER | 1u << 17); /* periodic */
    mmio_write32(LAPIC_TMR_INIT, 1250000);             /* 20 ms */
    kprintf("counter: start\n");
    uint64_t count = 0, seen = 0;
    for (;;) {
        __asm__ volatile("cli");
        if (ticks == seen && spin <= 0) {
            __asm__ volatile("sti; hlt");
            continue;
        }
        __asm__ volatile("sti");
        seen = ticks;
        uint64_t x, prev = count ? table[(count - 1) % TABLE_WORDS] : 0;
        __asm__ volatile("movq %%xmm7, %0" : "=r"(x));
        bool ok = count == 0 || (prev == count - 1 && x == count - 1 + 0x5a5a0000ull);
        if (!ok)
            kprintf("counter: table says %lu, xmm7 %lx\n", (unsigned long)prev, (unsigned long)x);
        table[count % TABLE_WORDS] = count;
        x = count + 0x5a5a0000ull;
        __asm__ volatile("movq %0, %%xmm7" ::"r"(x));
        kprintf("count %lu %s\n", (unsigned long)count, ok ? "ok" : "BAD");
        if (!ok) return 1;
        if (stop >= 0 && count >= (uint64_t)stop) return 0;
        count++;
    }
}
