/* uartirq: interrupt-driven COM1 through the IOAPIC, and the CMOS clock.
 * Masks the 8259s, enables the local APIC, routes IOAPIC pin 4 (COM1) to vector 0x30, enables the
 * 16550's receive and THR-empty interrupts with OUT2, and sleeps in HLT.  Every byte received is
 * echoed as "<c>"; 'q' ends the run.  Prints the RTC date ("uartirq: rtc YYYY-MM-DD hh:mm:ss
 * UTC"), then how many RX and THRE interrupts arrived.  Exit value 0 if at least one of each came
 * (lookout exit status 1), else 1 (status 3).  Input that arrives before the kernel has set up the
 * UART may lose its first byte or two (the kernel clears the FIFO and drains RBR at set-up). */
#include "lib.h"

#define COM        0x3f8
#define LAPIC_EOI  0xfee000b0ull
#define LAPIC_SVR  0xfee000f0ull
#define IOAPIC_SEL 0xfec00000ull
#define IOAPIC_WIN 0xfec00010ull
#define VEC_COM1   0x30

static volatile unsigned rx_irqs, thre_irqs, spurious;
static volatile char ring[64];
static volatile unsigned ring_head, ring_tail;

static void ioapic_write(uint32_t reg, uint32_t v)
{
    mmio_write32(IOAPIC_SEL, reg);
    mmio_write32(IOAPIC_WIN, v);
}

static void com1_irq(struct trap_frame *f)
{
    (void)f;
    for (int guard = 0; guard < 64; guard++) {
        uint8_t iir = inb(COM + 2);
        if (iir & 1) break;
        switch (iir & 0x0e) {
        case 0x04:
        case 0x0c:
            rx_irqs++;
            while (inb(COM + 5) & 1) {
                char c = (char)inb(COM);
                ring[ring_head++ % 64] = c;
            }
            break;
        case 0x02:
            thre_irqs++;
            outb(COM + 1, 0x01); /* one THRE interrupt is enough: keep only RX */
            break;
        default:
            spurious++;
            inb(COM + 5);
            inb(COM + 6);
        }
    }
    mmio_write32(LAPIC_EOI, 0);
}

static uint8_t cmos(uint8_t idx)
{
    outb(0x70, idx);
    return inb(0x71);
}

int kmain(struct mb_info *mbi)
{
    (void)mbi;
    outb(0x21, 0xff); /* mask both 8259s: interrupts come through the IOAPIC */
    outb(0xa1, 0xff);
    mmio_write32(LAPIC_SVR, 0x1ff);
    ioapic_write(0x10 + 2 * 4 + 1, 0);    /* destination APIC ID 0 */
    ioapic_write(0x10 + 2 * 4, VEC_COM1); /* edge, active high, unmasked, fixed */
    set_trap(VEC_COM1, com1_irq);

    while (cmos(0x0a) & 0x80) {
    }
    /* BCD, 24-hour (the power-on format): print each register's two digits */
    static const uint8_t regs[] = {0x32, 0x09, 0x08, 0x07, 0x04, 0x02, 0x00};
    static const char *const sep[] = {"", "", "-", "-", " ", ":", ":"};
    kprintf("uartirq: rtc ");
    for (unsigned i = 0; i < sizeof(regs); i++) {
        uint8_t v = cmos(regs[i]);
        kprintf("%s%x%x", sep[i], v >> 4, v & 15);
    }
    kprintf(" UTC\n");

    outb(COM + 2, 0x07); /* FIFOs on and cleared */
    outb(COM + 4, 0x0b); /* DTR RTS OUT2 */
    inb(COM + 5);
    inb(COM);
    inb(COM + 2);
    outb(COM + 1, 0x03); /* RX data + THR empty */
    __asm__ volatile("sti");
    kprintf("uartirq: ready\n");
    bool quit = false;
    uint64_t start = rdtsc();
    while (!quit) {
        /* Sleep only if nothing arrived: "sti; hlt" lets no interrupt slip in between. */
        __asm__ volatile("cli");
        if (ring_tail == ring_head)
            __asm__ volatile("sti; hlt");
        else
            __asm__ volatile("sti");
        while (ring_tail != ring_head) {
            char c = ring[ring_tail++ % 64];
            if (c == 'q')
                quit = true;
            else
                kprintf("<%c>", c);
        }
        if (rdtsc() - start > 30ull * 1000 * 1000 * 1000) break;
    }
    __asm__ volatile("cli");
    kprintf("\nuartirq: rx irqs %u, thre irqs %u, other %u\n", rx_irqs, thre_irqs, spurious);
    return rx_irqs > 0 && thre_irqs > 0 ? 0 : 1;
}
