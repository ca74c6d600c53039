/* smp: starts every application processor with INIT-SIPI-SIPI from the BSP's local APIC.
 * The APs are found in the ACPI MADT (or, without one, counted by `cpus=N` on the command line,
 * assumed to have APIC IDs 0..N-1).  Each AP enters long mode through the real-mode trampoline
 * in entry.S and increments a shared counter.  The BSP prints "smp: N cpus up" and exits with 0
 * when all came up, else prints what it expected and exits with 1. */
#include "lib.h"

#define LAPIC        0xfee00000ull
#define LAPIC_ID     (LAPIC + 0x20)
#define LAPIC_SVR    (LAPIC + 0xf0)
#define LAPIC_ICR_LO (LAPIC + 0x300)
#define LAPIC_ICR_HI (LAPIC + 0x310)
#define ICR_INIT     0x00004500u /* INIT, level assert */
#define ICR_STARTUP  0x00004600u
#define ICR_PENDING  (1u << 12)
#define TRAMPOLINE   0x10000u /* below 1 MiB, page aligned: SIPI vector 0x10 */
#define MAX_CPUS     64

extern char ap_tramp[], ap_tramp_end[];
static volatile uint32_t ap_up;
static volatile uint64_t ap_seen[4]; /* bitmap of the APIC IDs the APs read from their LAPIC */

__attribute__((noreturn)) void ap_main(void);
void ap_main(void)
{
    uint8_t id = (uint8_t)(mmio_read32(LAPIC_ID) >> 24);
    __atomic_or_fetch(&ap_seen[id / 64], 1ull << (id % 64), __ATOMIC_SEQ_CST);
    __atomic_add_fetch(&ap_up, 1, __ATOMIC_SEQ_CST);
    for (;;)
        __asm__ volatile("cli; hlt");
}

static bool icr_send(uint8_t apic_id, uint32_t lo)
{
    mmio_write32(LAPIC_ICR_HI, (uint32_t)apic_id << 24);
    mmio_write32(LAPIC_ICR_LO, lo);
    for (int i = 0; i < 1000000; i++)
        if (!(mmio_read32(LAPIC_ICR_LO) & ICR_PENDING)) return true;
    return false;
}

int kmain(struct mb_info *mbi)
{
    uint8_t ids[MAX_CPUS];
    int n = madt_apic_ids(ids, MAX_CPUS);
    long want = cmdline_value(mbi, "cpus");
    if (n < 0) {
        kprintf("smp: no ACPI MADT found\n");
        if (want < 1 || want > MAX_CPUS) {
            kprintf("smp: pass cpus=N on the command line\n");
            return 2;
        }
        n = (int)want;
        for (int i = 0; i < n; i++)
            ids[i] = (uint8_t)i;
    } else {
        kprintf("smp: MADT lists %d cpus\n", n);
        if (want > 0 && want != n) {
            kprintf("smp: command line says cpus=%ld, MADT says %d\n", want, n);
            return 1;
        }
    }
    size_t tlen = (size_t)(ap_tramp_end - ap_tramp);
    kmemcpy((void *)(uintptr_t)TRAMPOLINE, ap_tramp, tlen);

    if (mmio_read32(LAPIC + 0x30) == 0xffffffffu) { /* version register of a missing LAPIC */
        kprintf("smp: no local APIC at %x\n", (unsigned)LAPIC);
        return 2;
    }
    mmio_write32(LAPIC_SVR, mmio_read32(LAPIC_SVR) | 0x1ff); /* software-enable, vector 0xff */
    uint8_t self = (uint8_t)(mmio_read32(LAPIC_ID) >> 24);
    kprintf("smp: BSP APIC ID %u\n", self);

    uint32_t started = 0;
    for (int i = 0; i < n; i++) {
        if (ids[i] == self) continue;
        started++;
        if (!icr_send(ids[i], ICR_INIT)) kprintf("smp: INIT to %u stuck\n", ids[i]);
        delay_tsc(10000000); /* ~10 ms at 1 GHz: the INIT-SIPI gap */
        for (int k = 0; k < 2 && ap_up < started; k++) {
            if (!icr_send(ids[i], ICR_STARTUP | (TRAMPOLINE >> 12)))
                kprintf("smp: SIPI to %u stuck\n", ids[i]);
            delay_tsc(200000);
        }
        /* Wait for this AP (a few seconds at most) before starting the next. */
        uint64_t t0 = rdtsc();
        while (ap_up < started && rdtsc() - t0 < 5000000000ull)
            __asm__ volatile("pause");
        if (ap_up < started) kprintf("smp: APIC ID %u did not come up\n", ids[i]);
    }
    uint32_t up = 1 + ap_up;
    kprintf("smp: %u cpus up\n", up);
    if (up != (uint32_t)n) {
        kprintf("smp: expected %d\n", n);
        return 1;
    }
    for (int i = 0; i < n; i++) {
        if (ids[i] == self) continue;
        if (!(ap_seen[ids[i] / 64] & (1ull << (ids[i] % 64)))) {
            kprintf("smp: no AP reported APIC ID %u\n", ids[i]);
            return 1;
        }
    }
    return 0;
}
