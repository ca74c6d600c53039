/* Shared runtime of the Multiboot test kernels (see lib.h).  Trusts the Multiboot loader's
 * structures only as far as the spec promises; ACPI tables are checksummed before use. */
#include "lib.h"

#define COM1      0x3f8
#define EXIT_PORT 0xf4

extern char isr_stubs[];
/* The Multiboot kernels define kmain; the Linux-entry kernel (linux64) does not. */
extern int kmain(struct mb_info *mbi) __attribute__((weak));

volatile uint32_t expect_armed, expect_vector, expect_hits;
volatile uint64_t expect_resume;

static trap_fn traps[256];

struct idt_entry {
    uint16_t off0, sel;
    uint8_t ist, type;
    uint16_t off1;
    uint32_t off2, zero;
} __attribute__((packed));

static struct idt_entry idt[256] __attribute__((aligned(16)));

void putc_serial(char c)
{
    /* Wait for the transmit holding register to drain, but never forever. */
    for (int i = 0; i < 100000 && !(inb(COM1 + 5) & 0x20); i++)
        __asm__ volatile("pause");
    outb(COM1, (uint8_t)c);
}

void puts_serial(const char *s)
{
    while (*s) {
        if (*s == '\n') putc_serial('\r');
        putc_serial(*s++);
    }
}

static void put_num(uint64_t v, unsigned base, int width, char pad, bool neg)
{
    char buf[24];
    int n = 0;
    do {
        buf[n++] = "0123456789abcdef"[v % base];
        v /= base;
    } while (v);
    if (neg) buf[n++] = '-';
    while (n < width)
        buf[n++] = pad;
    while (n)
        putc_serial(buf[--n]);
}

void kprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    for (const char *p = fmt; *p; p++) {
        if (*p != '%') {
            if (*p == '\n') putc_serial('\r');
            putc_serial(*p);
            continue;
        }
        p++;
        char pad = ' ';
        int width = 0;
        if (*p == '0') pad = '0';
        while (*p >= '0' && *p <= '9')
            width = width * 10 + (*p++ - '0');
        bool lng = false;
        while (*p == 'l') {
            lng = true;
            p++;
        }
        switch (*p) {
        case 'd': {
            int64_t v = lng ? va_arg(ap, int64_t) : va_arg(ap, int);
            put_num(v < 0 ? (uint64_t)-v : (uint64_t)v, 10, width, pad, v < 0);
            break;
        }
        case 'u':
            put_num(lng ? va_arg(ap, uint64_t) : va_arg(ap, unsigned), 10, width, pad, false);
            break;
        case 'x':
            put_num(lng ? va_arg(ap, uint64_t) : va_arg(ap, unsigned), 16, width, pad, false);
            break;
        case 'c': putc_serial((char)va_arg(ap, int)); break;
        case 's': {
            const char *s = va_arg(ap, const char *);
            puts_serial(s ? s : "(null)");
            break;
        }
        case '%': putc_serial('%'); break;
        default: putc_serial('?'); break;
        }
    }
    va_end(ap);
}

void exit_vm(uint32_t v)
{
    outl(EXIT_PORT, v);
    for (;;)
        __asm__ volatile("cli; hlt");
}

void set_trap(unsigned vector, trap_fn fn)
{
    if (vector < 256) traps[vector] = fn;
}

void trap_handler(struct trap_frame *f)
{
    unsigned v = (unsigned)f->vector & 0xff;
    if (expect_armed && v == expect_vector) {
        expect_armed = 0;
        expect_hits++;
        f->rip = expect_resume;
        return;
    }
    if (traps[v]) {
        traps[v](f);
        return;
    }
    kprintf("unexpected %s %u at rip %lx error %lx cr2 ", v < 32 ? "exception" : "interrupt", v,
            f->rip, f->error);
    uint64_t cr2;
    __asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
    kprintf("%lx\n", cr2);
    exit_vm(v < 64 ? 64 + v : 127);
}

static void idt_init(void)
{
    for (unsigned v = 0; v < 256; v++) {
        uint64_t a = (uint64_t)(uintptr_t)(isr_stubs + 16 * v);
        idt[v] = (struct idt_entry){.off0 = (uint16_t)a,
                                    .sel = 0x08,
                                    .ist = 0,
                                    .type = 0x8e /* present, DPL 0, 64-bit interrupt gate */,
                                    .off1 = (uint16_t)(a >> 16),
                                    .off2 = (uint32_t)(a >> 32)};
    }
    struct {
        uint16_t limit;
        uint64_t base;
    } __attribute__((packed)) d = {sizeof(idt) - 1, (uint64_t)(uintptr_t)idt};
    __asm__ volatile("lidt %0" ::"m"(d));
}

void runtime_init(void)
{
    outb(COM1 + 1, 0x00); /* no UART interrupts */
    outb(COM1 + 3, 0x03); /* 8 bits, no parity, one stop bit */
    idt_init();
}

__attribute__((noreturn)) void mb_start(uint32_t magic, uint32_t info);
void mb_start(uint32_t magic, uint32_t info)
{
    if (magic != 0x2BADB002u) {
        kprintf("bad Multiboot magic %x\n", magic);
        exit_vm(3);
    }
    exit_vm((uint32_t)kmain((struct mb_info *)(uintptr_t)info));
}

void delay_tsc(uint64_t ticks)
{
    uint64_t t0 = rdtsc();
    while (rdtsc() - t0 < ticks)
        __asm__ volatile("pause");
}

size_t kstrlen(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

int kstrncmp(const char *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (a[i] != b[i]) return (unsigned char)a[i] - (unsigned char)b[i];
        if (!a[i]) return 0;
    }
    return 0;
}

void *kmemcpy(void *d, const void *s, size_t n)
{
    char *dd = d;
    const char *ss = s;
    while (n--)
        *dd++ = *ss++;
    return d;
}

long cmdline_value(const struct mb_info *mbi, const char *key)
{
    if (!(mbi->flags & (1u << 2))) return -1;
    const char *c = (const char *)(uintptr_t)mbi->cmdline;
    size_t kl = kstrlen(key);
    for (const char *p = c; *p; p++) {
        if ((p == c || p[-1] == ' ') && !kstrncmp(p, key, kl) && p[kl] == '=') {
            long v = 0;
            const char *q = p + kl + 1;
            if (*q < '0' || *q > '9') return -1;
            while (*q >= '0' && *q <= '9')
                v = v * 10 + (*q++ - '0');
            return v;
        }
    }
    return -1;
}

static bool checksum_ok(const uint8_t *p, uint32_t len)
{
    uint8_t s = 0;
    for (uint32_t i = 0; i < len; i++)
        s = (uint8_t)(s + p[i]);
    return s == 0;
}

static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static const uint8_t *find_rsdp(void)
{
    for (uint64_t a = 0xe0000; a < 0x100000; a += 16) {
        const uint8_t *p = (const uint8_t *)(uintptr_t)a;
        if (!kstrncmp((const char *)p, "RSD PTR ", 8) && checksum_ok(p, 20)) return p;
    }
    return NULL;
}

int madt_apic_ids(uint8_t *ids, int max)
{
    const uint8_t *rsdp = find_rsdp();
    if (!rsdp) return -1;
    bool x = rsdp[15] >= 2 && (rd32(rsdp + 24) | rd32(rsdp + 28));
    const uint8_t *sdt =
        (const uint8_t *)(uintptr_t)(x ? rd32(rsdp + 24) | (uint64_t)rd32(rsdp + 28) << 32
                                       : rd32(rsdp + 16));
    if (!checksum_ok(sdt, rd32(sdt + 4))) return -1;
    unsigned esz = x ? 8 : 4;
    for (uint32_t off = 36; off + esz <= rd32(sdt + 4); off += esz) {
        uint64_t a = rd32(sdt + off);
        if (x) a |= (uint64_t)rd32(sdt + off + 4) << 32;
        const uint8_t *t = (const uint8_t *)(uintptr_t)a;
        if (kstrncmp((const char *)t, "APIC", 4) || !checksum_ok(t, rd32(t + 4))) continue;
        int n = 0;
        for (uint32_t o = 44; o + 2 <= rd32(t + 4) && t[o + 1] >= 2; o += t[o + 1])
            if (t[o] == 0 && (rd32(t + o + 4) & 1) && n < max) ids[n++] = t[o + 3];
        return n;
    }
    return -1;
}

/* The compiler may emit calls to these even in freestanding code (struct copies, loops). */
void *memcpy(void *d, const void *s, size_t n);
void *memset(void *d, int c, size_t n);
void *memmove(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);

void *memcpy(void *d, const void *s, size_t n)
{
    void *r = d;
    __asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n)::"memory");
    return r;
}

void *memset(void *d, int c, size_t n)
{
    void *r = d;
    __asm__ volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(c) : "memory");
    return r;
}

void *memmove(void *d, const void *s, size_t n)
{
    unsigned char *dd = d;
    const unsigned char *ss = s;
    if (dd < ss)
        while (n--)
            *dd++ = *ss++;
    else
        while (n--)
            dd[n] = ss[n];
    return d;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const unsigned char *x = a, *y = b;
    for (size_t i = 0; i < n; i++)
        if (x[i] != y[i]) return x[i] - y[i];
    return 0;
}

/* Application processors park here unless the kernel (smp) provides its own ap_main. */
__attribute__((weak, noreturn)) void ap_main(void);
void ap_main(void)
{
    for (;;)
        __asm__ volatile("cli; hlt");
}
