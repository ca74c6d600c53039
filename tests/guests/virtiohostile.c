/* virtiohostile: a hostile driver for lookout's virtio-mmio devices.  For every slot that answers
 * with the "virt" magic it runs a pseudo-random campaign (seed= and iters= on the command line):
 * register reads and writes at any offset and size with random and boundary values, bring-ups
 * with bad queue sizes and ring addresses (0, the end of RAM, MMIO, wrapping), rings full of
 * malformed descriptors (loops, huge and zero lengths, wrong directions, indices out of range,
 * nested indirect tables, avail indices that jump), notifies of any queue, interrupt acks and
 * resets.  Then random port I/O over the whole port space (except the ports that would end the
 * run: the exit port, ACPI sleep/reset, the i8042 command port, COM1 which carries this output).
 * Finally every device must still answer: magic, version, a reset that reads back 0.
 * Prints "virtiohostile: N devices, M operations, all devices still answer", exit value 0; a dead
 * device gives value 1.  The VMM must not crash (run it under the sanitizer build). */
#include "lib.h"

#define VBASE     0xd0000000ull
#define AREA      0x400000ull /* rings and buffers the devices may DMA into: 4-5 MiB */
#define AREA_SIZE 0x100000ull

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void)
{
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng_state = x;
}

static const uint64_t boundary[] = {
    0,     1,     2,      3,      4,      7,       8,          0xf,        0x10,       0xff,
    0x100, 0x101, 0x7fff, 0x8000, 0xffff, 0x10000, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff};

static uint64_t value(void)
{
    return (rnd() & 1) ? boundary[rnd() % (sizeof(boundary) / sizeof(boundary[0]))] : rnd();
}

/* An address for rings/buffers: mostly inside the DMA area, sometimes hostile. */
static uint64_t addr(uint64_t mem_end)
{
    switch (rnd() % 8) {
    case 0: return 0;
    case 1: return mem_end - (rnd() % 64);
    case 2: return VBASE + (rnd() % 0x2000);
    case 3: return 0xfffffffffffff000ull + (rnd() % 0x1000);
    case 4: return rnd();
    default: return AREA + (rnd() % AREA_SIZE);
    }
}

static void w(uint64_t b, unsigned off, unsigned size, uint64_t v)
{
    volatile void *p = (volatile void *)(b + off);
    switch (size) {
    case 1: *(volatile uint8_t *)p = (uint8_t)v; break;
    case 2: *(volatile uint16_t *)p = (uint16_t)v; break;
    case 4: *(volatile uint32_t *)p = (uint32_t)v; break;
    default: *(volatile uint64_t *)p = v; break;
    }
}

static uint64_t r(uint64_t b, unsigned off, unsigned size)
{
    volatile void *p = (volatile void *)(b + off);
    switch (size) {
    case 1: return *(volatile uint8_t *)p;
    case 2: return *(volatile uint16_t *)p;
    case 4: return *(volatile uint32_t *)p;
    default: return *(volatile uint64_t *)p;
    }
}

static void bring_up(uint64_t b, uint64_t mem_end)
{
    static const uint32_t sizes[] = {0, 1, 3, 8, 16, 256, 257, 0xffff};
    mmio_write32(b + 0x70, 0);
    mmio_write32(b + 0x70, 3);
    mmio_write32(b + 0x24, 1);
    mmio_write32(b + 0x20, (rnd() & 3) ? 1 : (uint32_t)rnd());
    mmio_write32(b + 0x24, 0);
    mmio_write32(b + 0x20, (uint32_t)rnd());
    mmio_write32(b + 0x70, 0xb);
    unsigned q = (unsigned)(rnd() % 3);
    mmio_write32(b + 0x30, q);
    mmio_write32(b + 0x38, (rnd() & 1) ? 8 : sizes[rnd() % 8]);
    uint64_t d = (rnd() & 3) ? AREA : addr(mem_end),
             a = (rnd() & 3) ? AREA + 0x1000 : addr(mem_end),
             u = (rnd() & 3) ? AREA + 0x2000 : addr(mem_end);
    mmio_write32(b + 0x80, (uint32_t)d);
    mmio_write32(b + 0x84, (uint32_t)(d >> 32));
    mmio_write32(b + 0x90, (uint32_t)a);
    mmio_write32(b + 0x94, (uint32_t)(a >> 32));
    mmio_write32(b + 0xa0, (uint32_t)u);
    mmio_write32(b + 0xa4, (uint32_t)(u >> 32));
    mmio_write32(b + 0x44, 1);
    mmio_write32(b + 0x70, 0xf);
}

/* Fills the ring at AREA (queue of up to 256) with malformed descriptors and publishes heads. */
static void poison_ring(uint64_t mem_end)
{
    static const uint32_t lens[] = {0, 1, 15, 16, 17, 512, 4096, 0xffffffff};
    volatile uint8_t *desc = (volatile uint8_t *)AREA;
    for (unsigned i = 0; i < 256; i++) {
        uint64_t a = (rnd() & 3) ? AREA + 0x4000 + (rnd() % (AREA_SIZE - 0x5000)) : addr(mem_end);
        uint32_t len = (rnd() & 1) ? lens[rnd() % 8] : (uint32_t)(rnd() % 8192);
        uint16_t flags = (uint16_t)(rnd() % 8), next = (uint16_t)((rnd() & 1) ? rnd() % 8 : rnd());
        if ((flags & 4) && (rnd() & 1)) { /* an indirect table inside the area */
            a = AREA + 0x3000;
            len = (uint32_t)(16 * (rnd() % 20));
        }
        *(volatile uint64_t *)(desc + 16 * i) = a;
        *(volatile uint32_t *)(desc + 16 * i + 8) = len;
        *(volatile uint16_t *)(desc + 16 * i + 12) = flags;
        *(volatile uint16_t *)(desc + 16 * i + 14) = next;
    }
    volatile uint64_t *ind = (volatile uint64_t *)(AREA + 0x3000);
    for (unsigned i = 0; i < 40; i++)
        ind[i] = rnd() & 0xffff00070000ffffull;
    volatile uint16_t *avail = (volatile uint16_t *)(AREA + 0x1000);
    for (unsigned i = 0; i < 256; i++)
        avail[2 + i] = (uint16_t)((rnd() & 3) ? rnd() % 8 : rnd());
    uint16_t idx = avail[1];
    switch (rnd() % 4) {
    case 0: idx = (uint16_t)rnd(); break;     /* a jump */
    case 1: idx = (uint16_t)(idx + 9); break; /* just over a queue of 8 */
    default: idx = (uint16_t)(idx + 1 + rnd() % 4); break;
    }
    avail[1] = idx;
}

static void campaign(uint64_t b, unsigned iters, uint64_t mem_end)
{
    static const unsigned sz[4] = {1, 2, 4, 8};
    for (unsigned i = 0; i < iters; i++) {
        switch (rnd() % 10) {
        case 0:
        case 1:
        case 2: {
            unsigned off = (unsigned)(rnd() % 0x1000), size = sz[rnd() % 4];
            if (rnd() & 1) off = (unsigned)(rnd() % 0x140) & ~3u;
            if (off + size > 0x1000) off = 0x1000 - size;
            w(b, off, size, value());
            break;
        }
        case 3: {
            unsigned off = (unsigned)(rnd() % 0x1000), size = sz[rnd() % 4];
            if (off + size > 0x1000) off = 0x1000 - size;
            (void)r(b, off, size);
            break;
        }
        case 4: bring_up(b, mem_end); break;
        case 5: poison_ring(mem_end); break;
        case 6:
        case 7:
            mmio_write32(b + 0x50, (rnd() & 3) ? (uint32_t)(rnd() % 3) : (uint32_t)rnd());
            break;
        case 8:
            mmio_write32(b + 0x64, mmio_read32(b + 0x60) | (uint32_t)rnd());
            (void)mmio_read32(b + 0x70);
            break;
        default:
            if (rnd() % 4 == 0) mmio_write32(b + 0x70, 0);
            (void)mmio_read32(b + 0xfc);
            break;
        }
    }
}

static int port_allowed(uint16_t p)
{
    if (p >= 0xf0 && p <= 0xff) return 0;               /* exit port and neighbours */
    if (p >= 0x600 && p <= 0x60f) return 0;             /* ACPI sleep control / reset */
    if (p == 0x64 || p == 0x92 || p == 0xcf9) return 0; /* reset lines */
    if (p >= 0x3f8 && p <= 0x3ff) return 0;             /* COM1 carries our output */
    return 1;
}

int kmain(struct mb_info *mbi)
{
    long seed = cmdline_value(mbi, "seed");
    long iters = cmdline_value(mbi, "iters");
    if (seed > 0) rng_state ^= (uint64_t)seed * 0x2545f4914f6cdd1dull;
    if (iters <= 0) iters = 2000;
    uint64_t mem_end = 0x100000ull + ((uint64_t)mbi->mem_upper << 10);
    unsigned ndev = 0;
    uint64_t ops = 0;
    for (unsigned slot = 0; slot < 8; slot++) {
        uint64_t b = VBASE + 0x1000ull * slot;
        if (mmio_read32(b) != 0x74726976) continue;
        ndev++;
        kprintf("virtiohostile: slot %u device id %u\n", slot, mmio_read32(b + 8));
        campaign(b, (unsigned)iters, mem_end);
        ops += (uint64_t)iters;
    }
    for (long i = 0; i < iters * 4; i++) {
        uint16_t p = (uint16_t)rnd();
        if (!port_allowed(p)) continue;
        if (rnd() & 1)
            outb(p, (uint8_t)rnd());
        else
            (void)inb(p);
        ops++;
    }
    delay_tsc(50000000); /* let device threads finish what the campaign queued */
    int dead = 0;
    for (unsigned slot = 0; slot < 8; slot++) {
        uint64_t b = VBASE + 0x1000ull * slot;
        if (slot < ndev) {
            mmio_write32(b + 0x70, 0);
            if (mmio_read32(b) != 0x74726976 || mmio_read32(b + 4) != 2 ||
                mmio_read32(b + 0x70) != 0) {
                kprintf("virtiohostile: device in slot %u no longer answers\n", slot);
                dead = 1;
            }
        }
    }
    kprintf("virtiohostile: %u devices, %lu operations, %s\n", ndev, (unsigned long)ops,
            dead ? "A DEVICE DIED" : "all devices still answer");
    return dead;
}
