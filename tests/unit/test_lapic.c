/* Unit tests for the user-space LAPIC (devices/lapic.c): registers, PPR/TPR, EOI broadcast, timer
 * modes at explicit virtual times, IPI routing between four LAPICs, APIC base, state round trips.
 * Trusts nothing; each test builds its own VM/bus fixture. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <errno.h>
#include <pthread.h>
#include <time.h>

#include "cpu/cpu.h"
#include "devices/lapic.h"
#include "devices/vclock.h"
#include "machine/layout.h"
#include "util/log.h"

#define NCPU 4

struct fix {
    struct vm vm;
    struct lapic_bus bus;
    struct lapic *l[NCPU];
    int kicks[NCPU];
    int eoi_count, eoi_last;
};

static void on_kick(void *ctx)
{
    (*(int *)ctx)++;
}
static void on_eoi(void *ctx, int vector)
{
    struct fix *f = ctx;
    f->eoi_count++;
    f->eoi_last = vector;
}

static int setup(void **state)
{
    static struct fix f;
    memset(&f, 0, sizeof(f));
    f.vm.tsc_khz = 2000000; /* 2 GHz: 2 TSC ticks per ns */
    lapic_bus_init(&f.bus, on_eoi, &f);
    for (unsigned i = 0; i < NCPU; i++) {
        f.l[i] = lapic_create(&f.vm, &f.bus, i, i == 0, on_kick, &f.kicks[i]);
        assert_non_null(f.l[i]);
    }
    *state = &f;
    return 0;
}
static int teardown(void **state)
{
    struct fix *f = *state;
    for (unsigned i = 0; i < NCPU; i++)
        lapic_destroy(f->l[i]);
    return 0;
}

static void wr(struct lapic *l, uint32_t off, uint32_t v)
{
    lapic_reg_write(l, off, v, 0);
}
static uint32_t rd(struct lapic *l, uint32_t off)
{
    return lapic_reg_read(l, off, 0);
}
static void enable(struct lapic *l)
{
    wr(l, APIC_SVR, APIC_SVR_ENABLE | 0xff);
}
static bool irr(struct lapic *l, int v)
{
    return rd(l, APIC_IRR + (v / 32) * 0x10) & (1u << (v % 32));
}
static bool isr(struct lapic *l, int v)
{
    return rd(l, APIC_ISR + (v / 32) * 0x10) & (1u << (v % 32));
}
static bool tmr(struct lapic *l, int v)
{
    return rd(l, APIC_TMR + (v / 32) * 0x10) & (1u << (v % 32));
}

static void test_reset_values(void **state)
{
    struct fix *f = *state;
    struct lapic *l = f->l[2];
    assert_int_equal(rd(l, APIC_ID), 2u << 24);
    assert_int_equal(rd(l, APIC_LVR), 0x00050014);
    assert_int_equal(rd(l, APIC_DFR), 0xffffffff);
    assert_int_equal(rd(l, APIC_SVR), 0xff);
    assert_int_equal(rd(l, APIC_TPR), 0);
    assert_int_equal(rd(l, APIC_PPR), 0);
    for (uint32_t off = APIC_LVTT; off <= APIC_LVTERR; off += 0x10)
        assert_int_equal(rd(l, off), APIC_LVT_MASKED);
    assert_int_equal(lapic_get_base(f->l[0]), LAYOUT_LAPIC_BASE | APIC_BASE_ENABLE | APIC_BASE_BSP);
    assert_int_equal(lapic_get_base(l), LAYOUT_LAPIC_BASE | APIC_BASE_ENABLE);
    assert_int_equal(lapic_mmio_base(l), LAYOUT_LAPIC_BASE);
    assert_true(lapic_wait_for_sipi(l));
    assert_false(lapic_wait_for_sipi(f->l[0]));
    assert_int_equal(lapic_next_event_ns(l), INT64_MAX);
}

static void test_register_masks(void **state)
{
    struct fix *f = *state;
    struct lapic *l = f->l[1];
    enable(l);
    wr(l, APIC_TPR, 0xffffffff);
    assert_int_equal(rd(l, APIC_TPR), 0xff);
    wr(l, APIC_LDR, 0xffffffff);
    assert_int_equal(rd(l, APIC_LDR), 0xff000000);
    wr(l, APIC_DFR, 0);
    assert_int_equal(rd(l, APIC_DFR), 0x0fffffff);
    wr(l, APIC_SVR, 0xffffffff);
    assert_int_equal(rd(l, APIC_SVR), 0x3ff);
    wr(l, APIC_TDCR, 0xffffffff);
    assert_int_equal(rd(l, APIC_TDCR), 0xb);
    wr(l, APIC_ICR2, 0xffffffff);
    assert_int_equal(rd(l, APIC_ICR2), 0xff000000);
    wr(l, APIC_LVT0, 0xffffffff);
    assert_int_equal(rd(l, APIC_LVT0), 0x1a7ff); /* delivery status and remote IRR read-only */
    wr(l, APIC_LVTERR, 0xffffffff);
    assert_int_equal(rd(l, APIC_LVTERR), 0x100ff);
    wr(l, APIC_LVTPC, 0xffffffff);
    assert_int_equal(rd(l, APIC_LVTPC), 0x107ff);
    /* read-only registers ignore writes */
    wr(l, APIC_LVR, 0);
    assert_int_equal(rd(l, APIC_LVR), 0x00050014);
    wr(l, APIC_IRR, 0xffffffff);
    assert_int_equal(rd(l, APIC_IRR), 0);
    wr(l, APIC_ISR + 0x10, 0xffffffff);
    assert_int_equal(rd(l, APIC_ISR + 0x10), 0);
    wr(l, APIC_ID, 0x12345678);
    assert_int_equal(rd(l, APIC_ID), 0x12000000);
    assert_int_equal(lapic_id(l), 0x12);
    assert_int_equal(rd(l, APIC_EOI), 0);
    assert_int_equal(rd(l, 0x2f0), 0); /* no CMCI LVT */
}

static void test_mmio_access(void **state)
{
    struct fix *f = *state;
    struct lapic *l = f->l[0];
    uint8_t b[8];
    const uint8_t v[4] = {0x42, 0, 0, 0};
    lapic_mmio_write(l, APIC_TPR, v, 4, 0);
    memset(b, 0xaa, sizeof(b));
    lapic_mmio_read(l, APIC_TPR, b, 4, 0);
    assert_int_equal(b[0], 0x42);
    assert_int_equal(b[1], 0);
    lapic_mmio_read(l, APIC_LVR + 2, b, 1, 0); /* byte read inside the dword: max LVT */
    assert_int_equal(b[0], 5);
    memset(b, 0xaa, sizeof(b));
    lapic_mmio_read(l, APIC_TPR, b, 8, 0); /* 8-byte read: zero */
    for (int i = 0; i < 8; i++)
        assert_int_equal(b[i], 0);
    lapic_mmio_read(l, APIC_TPR + 4, b, 4, 0); /* beyond the register's dword */
    assert_int_equal(b[0], 0);
    const uint8_t w[4] = {0x10, 0, 0, 0};
    lapic_mmio_write(l, APIC_TPR, w, 2, 0);     /* not 4 bytes: ignored */
    lapic_mmio_write(l, APIC_TPR + 4, w, 4, 0); /* unaligned: ignored */
    assert_int_equal(rd(l, APIC_TPR), 0x42);
    lapic_mmio_read(l, 0x800, b, 4, 0);
    assert_int_equal(b[0] | b[1] | b[2] | b[3], 0);
}

static void test_sw_disable(void **state)
{
    struct fix *f = *state;
    struct lapic *l = f->l[0];
    wr(l, APIC_LVTT, 0x30); /* unmask attempt while disabled */
    assert_int_equal(rd(l, APIC_LVTT), APIC_LVT_MASKED | 0x30);
    lapic_set_irr(l, 0x40, false);
    assert_false(irr(l, 0x40));
    assert_int_equal(lapic_pending_vector(l), -1);
    lapic_inject_nmi(l); /* NMI is accepted while software-disabled */
    assert_true(lapic_has_nmi(l));
    assert_true(lapic_take_nmi(l));
    assert_false(lapic_take_nmi(l));
    enable(l);
    wr(l, APIC_LVTT, 0x30);
    assert_int_equal(rd(l, APIC_LVTT), 0x30);
    wr(l, APIC_SVR, 0xff); /* disabling masks every LVT */
    assert_int_equal(rd(l, APIC_LVTT), APIC_LVT_MASKED | 0x30);
}

static void test_priority(void **state)
{
    struct fix *f = *state;
    struct lapic *l = f->l[0];
    enable(l);
    assert_false(lapic_attention(l));
    lapic_set_irr(l, 0x31, false);
    lapic_set_irr(l, 0x52, false);
    assert_true(lapic_attention(l));
    assert_true(f->kicks[0] >= 2);
    assert_int_equal(lapic_pending_vector(l), 0x52);
    lapic_accept(l, 0x52);
    assert_true(isr(l, 0x52));
    assert_false(irr(l, 0x52));
    assert_int_equal(rd(l, APIC_PPR), 0x50);
    assert_int_equal(lapic_pending_vector(l), -1); /* 0x31's class is below 0x50 */
    assert_false(lapic_attention(l));
    lapic_set_irr(l, 0x5f, false); /* same class as in service: blocked */
    assert_int_equal(lapic_pending_vector(l), -1);
    lapic_set_irr(l, 0x61, false);
    assert_int_equal(lapic_pending_vector(l), 0x61);
    wr(l, APIC_TPR, 0x70);
    assert_int_equal(rd(l, APIC_PPR), 0x70);
    assert_int_equal(lapic_pending_vector(l), -1);
    wr(l, APIC_TPR, 0x60); /* equal class still blocks */
    assert_int_equal(lapic_pending_vector(l), -1);
    wr(l, APIC_TPR, 0x5f);
    assert_int_equal(rd(l, APIC_PPR), 0x5f);
    assert_int_equal(lapic_pending_vector(l), 0x61);
    wr(l, APIC_TPR, 0);
    wr(l, APIC_EOI, 0); /* ends 0x52 */
    assert_int_equal(rd(l, APIC_PPR), 0);
    assert_int_equal(lapic_pending_vector(l), 0x61);
    lapic_accept(l, 0x61);
    assert_int_equal(lapic_pending_vector(l), -1); /* 0x5f blocked by 0x61 in service */
    wr(l, APIC_EOI, 0);
    assert_int_equal(lapic_pending_vector(l), 0x5f);
    lapic_accept(l, 0x99); /* not in IRR: nothing happens */
    assert_false(isr(l, 0x99));
}

static void test_eoi_broadcast(void **state)
{
    struct fix *f = *state;
    struct lapic *l = f->l[0];
    enable(l);
    lapic_set_irr(l, 0x40, true);
    assert_true(tmr(l, 0x40));
    lapic_accept(l, 0x40);
    lapic_set_irr(l, 0x80, false);
    assert_false(tmr(l, 0x80));
    lapic_accept(l, 0x80);
    wr(l, APIC_EOI, 0);
    assert_false(isr(l, 0x80));
    assert_true(isr(l, 0x40));
    assert_int_equal(f->eoi_count, 0); /* edge vector: no broadcast */
    wr(l, APIC_EOI, 0);
    assert_false(isr(l, 0x40));
    assert_int_equal(f->eoi_count, 1);
    assert_int_equal(f->eoi_last, 0x40);
    wr(l, APIC_EOI, 0); /* nothing in service */
    assert_int_equal(f->eoi_count, 1);
}

static void test_errors(void **state)
{
    struct fix *f = *state;
    struct lapic *l = f->l[0];
    enable(l);
    wr(l, APIC_LVTERR, 0xfe);
    lapic_set_irr(l, 5, false); /* vectors 0-15 are illegal */
    assert_false(irr(l, 5));
    assert_true(irr(l, 0xfe));            /* error interrupt */
    assert_int_equal(rd(l, APIC_ESR), 0); /* not latched until ESR is written */
    wr(l, APIC_ESR, 0);
    assert_int_equal(rd(l, APIC_ESR), APIC_ESR_RECV_ILLEGAL_VECTOR);
    wr(l, APIC_ICR2, 1u << 24);
    wr(l, APIC_ICR, 0x000003); /* fixed, vector 3: send illegal vector */
    assert_int_equal(rd(f->l[1], APIC_IRR), 0);
    wr(l, APIC_ESR, 0);
    assert_int_equal(rd(l, APIC_ESR), APIC_ESR_SEND_ILLEGAL_VECTOR);
    wr(l, APIC_ESR, 0);
    assert_int_equal(rd(l, APIC_ESR), 0);
}

static void test_timer_oneshot(void **state)
{
    struct fix *f = *state;
    struct lapic *l = f->l[0];
    enable(l);
    lapic_reg_write(l, APIC_TDCR, 0x0, 0); /* divide by 2 */
    lapic_reg_write(l, APIC_LVTT, 0x20, 0);
    lapic_reg_write(l, APIC_TMICT, 1000, 1000);
    assert_int_equal(lapic_next_event_ns(l), 3000);
    assert_int_equal(lapic_reg_read(l, APIC_TMCCT, 2000), 500);
    assert_int_equal(lapic_reg_read(l, APIC_TMICT, 2000), 1000);
    lapic_update_timer(l, 2999);
    assert_false(irr(l, 0x20));
    int k = f->kicks[0];
    lapic_update_timer(l, 3000);
    assert_true(irr(l, 0x20));
    assert_true(f->kicks[0] > k);
    assert_int_equal(lapic_next_event_ns(l), INT64_MAX);
    assert_int_equal(lapic_reg_read(l, APIC_TMCCT, 3500), 0);
    /* a count of 0 stops the timer */
    lapic_reg_write(l, APIC_TMICT, 100, 4000);
    lapic_reg_write(l, APIC_TMICT, 0, 4050);
    assert_int_equal(lapic_next_event_ns(l), INT64_MAX);
    /* divide by 1 (0b1011) and by 128 (0b1010) */
    lapic_reg_write(l, APIC_TDCR, 0xb, 5000);
    lapic_reg_write(l, APIC_TMICT, 10, 5000);
    assert_int_equal(lapic_next_event_ns(l), 5010);
    lapic_reg_write(l, APIC_TDCR, 0xa, 5000);
    lapic_reg_write(l, APIC_TMICT, 10, 5000);
    assert_int_equal(lapic_next_event_ns(l), 5000 + 1280);
}

static void test_timer_divide_change(void **state)
{
    struct fix *f = *state;
    struct lapic *l = f->l[0];
    enable(l);
    lapic_reg_write(l, APIC_TDCR, 0xb, 0); /* by 1 */
    lapic_reg_write(l, APIC_LVTT, 0x20, 0);
    lapic_reg_write(l, APIC_TMICT, 1000, 0);
    lapic_reg_write(l, APIC_TDCR, 0x1, 400); /* by 4: 600 counts left take 2400 ns */
    assert_int_equal(lapic_reg_read(l, APIC_TMCCT, 400), 600);
    assert_int_equal(lapic_next_event_ns(l), 400 + 2400);
    assert_int_equal(lapic_reg_read(l, APIC_TMCCT, 1600), 300);
}

static void test_timer_periodic(void **state)
{
    struct fix *f = *state;
    struct lapic *l = f->l[0];
    enable(l);
    lapic_reg_write(l, APIC_TDCR, 0xb, 0);
    lapic_reg_write(l, APIC_LVTT, (APIC_TIMER_PERIODIC << 17) | 0x21, 0);
    lapic_reg_write(l, APIC_TMICT, 100000, 0);
    assert_int_equal(lapic_next_event_ns(l), 100000);
    assert_int_equal(lapic_reg_read(l, APIC_TMCCT, 30000), 70000);
    lapic_update_timer(l, 100000);
    assert_true(irr(l, 0x21));
    assert_int_equal(lapic_next_event_ns(l), 200000);
    assert_int_equal(lapic_reg_read(l, APIC_TMCCT, 250000), 50000); /* even before the update */
    lapic_accept(l, 0x21);
    wr(l, APIC_EOI, 0);
    lapic_update_timer(l, 450000); /* missed periods coalesce into one interrupt */
    assert_true(irr(l, 0x21));
    assert_int_equal(lapic_next_event_ns(l), 500000);
    /* a tiny period is stretched */
    lapic_reg_write(l, APIC_TMICT, 10, 600000);
    assert_int_equal(lapic_next_event_ns(l), 600000 + LAPIC_MIN_PERIOD_NS);
    /* switching to one-shot keeps the running count, then stops after it */
    lapic_reg_write(l, APIC_TMICT, 100000, 1000000);
    lapic_reg_write(l, APIC_LVTT, 0x21, 1040000);
    assert_int_equal(lapic_next_event_ns(l), 1100000);
    lapic_update_timer(l, 1100000);
    assert_int_equal(lapic_next_event_ns(l), INT64_MAX);
}

static void test_timer_masked(void **state)
{
    struct fix *f = *state;
    struct lapic *l = f->l[0];
    enable(l);
    lapic_reg_write(l, APIC_TDCR, 0xb, 0);
    lapic_reg_write(l, APIC_LVTT, APIC_LVT_MASKED | 0x22, 0);
    lapic_reg_write(l, APIC_TMICT, 500, 0);
    assert_int_equal(lapic_reg_read(l, APIC_TMCCT, 100), 400); /* counts while masked */
    lapic_update_timer(l, 600);
    assert_false(irr(l, 0x22));
    assert_int_equal(lapic_next_event_ns(l), INT64_MAX);
}

static void test_timer_tsc_deadline(void **state)
{
    struct fix *f = *state;
    struct lapic *l = f->l[0];
    enable(l);
    /* ignored outside TSC-deadline mode */
    lapic_set_tsc_deadline(l, 12345, 0, 0);
    assert_int_equal(lapic_get_tsc_deadline(l), 0);
    assert_int_equal(lapic_next_event_ns(l), INT64_MAX);
    lapic_reg_write(l, APIC_LVTT, (APIC_TIMER_TSCDEADLINE << 17) | 0x23, 0);
    lapic_reg_write(l, APIC_TMICT, 1000, 0); /* ignored in TSC-deadline mode */
    assert_int_equal(rd(l, APIC_TMICT), 0);
    /* at now=1000 ns this vCPU's TSC reads 5000; 2 ticks per ns */
    lapic_set_tsc_deadline(l, 7000, 1000, 5000);
    assert_int_equal(lapic_get_tsc_deadline(l), 7000);
    assert_int_equal(lapic_next_event_ns(l), 2000);
    assert_int_equal(lapic_reg_read(l, APIC_TMCCT, 1500), 0);
    lapic_update_timer(l, 1999);
    assert_false(irr(l, 0x23));
    lapic_update_timer(l, 2000);
    assert_true(irr(l, 0x23));
    assert_int_equal(lapic_get_tsc_deadline(l), 0); /* cleared when it fires */
    lapic_accept(l, 0x23);
    wr(l, APIC_EOI, 0);
    /* a deadline already passed fires at once */
    lapic_set_tsc_deadline(l, 100, 3000, 6000);
    assert_true(irr(l, 0x23));
    assert_int_equal(lapic_next_event_ns(l), INT64_MAX);
    lapic_accept(l, 0x23);
    wr(l, APIC_EOI, 0);
    /* 0 disarms */
    lapic_set_tsc_deadline(l, 100000, 3000, 6000);
    assert_int_not_equal(lapic_next_event_ns(l), INT64_MAX);
    lapic_set_tsc_deadline(l, 0, 3000, 6000);
    assert_int_equal(lapic_next_event_ns(l), INT64_MAX);
    /* leaving TSC-deadline mode disarms */
    lapic_set_tsc_deadline(l, 100000, 3000, 6000);
    lapic_reg_write(l, APIC_LVTT, 0x23, 3100);
    assert_int_equal(lapic_next_event_ns(l), INT64_MAX);
    assert_int_equal(lapic_get_tsc_deadline(l), 0);
    lapic_update_timer(l, 1000000);
    assert_false(irr(l, 0x23));
}

/* Without CPUID.01H:ECX.TSC_Deadline, LVT timer bit 18 is reserved (SDM 10.5.4.1). */
static void test_tsc_deadline_needs_cpuid(void **state)
{
    struct fix *f = *state;
    struct vm vm;
    memset(&vm, 0, sizeof(vm));
    vm.tsc_khz = 1000000;
    vm.cpuid.n = 1;
    vm.cpuid.e[0] = (struct cpuid_entry){.function = 1, .ecx = 0};
    struct lapic *l = lapic_create(&vm, NULL, 5, false, NULL, NULL);
    assert_non_null(l);
    enable(l);
    wr(l, APIC_LVTT, (APIC_TIMER_TSCDEADLINE << 17) | 0x23);
    assert_int_equal(rd(l, APIC_LVTT), 0x23); /* bit 18 dropped: one-shot */
    lapic_set_tsc_deadline(l, 10, 0, 5);
    assert_int_equal(lapic_get_tsc_deadline(l), 0);
    assert_false(irr(l, 0x23));
    struct lapic_state s;
    lapic_get_state(f->l[0], &s, 0);
    s.regs[APIC_LVTT >> 2] = (APIC_TIMER_TSCDEADLINE << 17) | 0x23;
    assert_int_equal(lapic_set_state(l, &s, 0), -EINVAL);
    lapic_destroy(l);
    vm.cpuid.e[0].ecx = 1u << 24;
    l = lapic_create(&vm, NULL, 5, false, NULL, NULL);
    enable(l);
    wr(l, APIC_LVTT, (APIC_TIMER_TSCDEADLINE << 17) | 0x23);
    assert_int_equal(rd(l, APIC_LVTT), (APIC_TIMER_TSCDEADLINE << 17) | 0x23);
    assert_int_equal(lapic_set_state(l, &s, 0), 0);
    lapic_destroy(l);
}

static void send(struct lapic *from, uint32_t low, uint8_t dest)
{
    wr(from, APIC_ICR2, (uint32_t)dest << 24);
    wr(from, APIC_ICR, low);
}

static void test_ipi_fixed(void **state)
{
    struct fix *f = *state;
    for (int i = 0; i < NCPU; i++)
        enable(f->l[i]);
    int k2 = f->kicks[2];
    send(f->l[0], 0x41, 2); /* fixed, physical */
    for (int i = 0; i < NCPU; i++)
        assert_int_equal(irr(f->l[i], 0x41), i == 2);
    assert_int_equal(f->kicks[2], k2 + 1);
    assert_int_equal(rd(f->l[0], APIC_ICR) & (1u << 12), 0); /* delivery status idle */
    send(f->l[0], 0x42, 0xff);                               /* physical broadcast */
    for (int i = 0; i < NCPU; i++)
        assert_true(irr(f->l[i], 0x42));
    send(f->l[1], 0x43 | (APIC_SH_SELF << 18), 0);
    for (int i = 0; i < NCPU; i++)
        assert_int_equal(irr(f->l[i], 0x43), i == 1);
    send(f->l[1], 0x44 | (APIC_SH_ALL << 18), 0);
    for (int i = 0; i < NCPU; i++)
        assert_true(irr(f->l[i], 0x44));
    send(f->l[1], 0x45 | (APIC_SH_OTHERS << 18), 0);
    for (int i = 0; i < NCPU; i++)
        assert_int_equal(irr(f->l[i], 0x45), i != 1);
    send(f->l[0], 0x46, 7); /* nobody has ID 7 */
    for (int i = 0; i < NCPU; i++)
        assert_false(irr(f->l[i], 0x46));
    send(f->l[0], 0x47 | (1u << 15) | (1u << 14), 3); /* level-triggered fixed: TMR */
    assert_true(tmr(f->l[3], 0x47));
    /* a software-disabled target drops fixed IPIs */
    wr(f->l[3], APIC_SVR, 0xff);
    send(f->l[0], 0x48, 3);
    assert_false(irr(f->l[3], 0x48));
}

static void test_ipi_logical(void **state)
{
    struct fix *f = *state;
    for (int i = 0; i < NCPU; i++) {
        enable(f->l[i]);
        wr(f->l[i], APIC_LDR, (1u << i) << 24); /* flat model: one bit each */
    }
    send(f->l[0], 0x51 | (1u << 11), 0x06);
    for (int i = 0; i < NCPU; i++)
        assert_int_equal(irr(f->l[i], 0x51), i == 1 || i == 2);
    /* lowest priority: treated as fixed to the lowest-numbered target */
    send(f->l[0], 0x52 | (APIC_DM_LOWEST << 8) | (1u << 11), 0x0c);
    for (int i = 0; i < NCPU; i++)
        assert_int_equal(irr(f->l[i], 0x52), i == 2);
    /* cluster model: cluster 1 = APICs 0,1; cluster 2 = APICs 2,3 */
    for (int i = 0; i < NCPU; i++) {
        wr(f->l[i], APIC_DFR, 0x0fffffff);
        wr(f->l[i], APIC_LDR, ((uint32_t)(i < 2 ? 0x10 : 0x20) | (1u << (i & 1))) << 24);
    }
    send(f->l[0], 0x53 | (1u << 11), 0x22); /* cluster 2, member bit 1 -> APIC 3 */
    for (int i = 0; i < NCPU; i++)
        assert_int_equal(irr(f->l[i], 0x53), i == 3);
    send(f->l[0], 0x54 | (1u << 11), 0x13); /* cluster 1, both */
    for (int i = 0; i < NCPU; i++)
        assert_int_equal(irr(f->l[i], 0x54), i < 2);
    send(f->l[0], 0x55 | (1u << 11), 0xff); /* broadcast */
    for (int i = 0; i < NCPU; i++)
        assert_true(irr(f->l[i], 0x55));
}

static void test_ipi_nmi_init_sipi(void **state)
{
    struct fix *f = *state;
    for (int i = 0; i < NCPU; i++)
        enable(f->l[i]);
    send(f->l[0], APIC_DM_NMI << 8, 1);
    assert_true(lapic_has_nmi(f->l[1]));
    assert_false(lapic_has_nmi(f->l[2]));
    assert_true(lapic_attention(f->l[1]));
    /* SIPI to an AP that is not waiting for one: ignored */
    lapic_set_wait_for_sipi(f->l[2], false);
    send(f->l[0], (APIC_DM_SIPI << 8) | 0x9a, 2);
    assert_int_equal(lapic_take_sipi(f->l[2]), -1);
    /* INIT assert (level), INIT de-assert (ignored), SIPI, SIPI: the MP start-up sequence */
    wr(f->l[2], APIC_TPR, 0x30);
    send(f->l[0], (APIC_DM_INIT << 8) | (1u << 14) | (1u << 15), 2);
    send(f->l[0], (APIC_DM_INIT << 8) | (1u << 15) | (APIC_SH_ALL << 18), 0); /* de-assert */
    assert_false(lapic_take_init(f->l[3]));
    send(f->l[0], (APIC_DM_SIPI << 8) | 0x9a, 2);
    send(f->l[0], (APIC_DM_SIPI << 8) | 0x9b, 2);
    assert_int_equal(lapic_take_sipi(f->l[2]), -1); /* INIT must be taken first */
    assert_true(lapic_take_init(f->l[2]));
    assert_false(lapic_take_init(f->l[2]));
    assert_int_equal(rd(f->l[2], APIC_TPR), 0); /* INIT reset the registers */
    assert_int_equal(rd(f->l[2], APIC_SVR), 0xff);
    assert_int_equal(rd(f->l[2], APIC_ID), 2u << 24); /* except the ID */
    assert_true(lapic_wait_for_sipi(f->l[2]));
    assert_int_equal(lapic_take_sipi(f->l[2]), 0x9a);
    assert_int_equal(lapic_take_sipi(f->l[2]), -1);
    assert_false(lapic_wait_for_sipi(f->l[2]));
    send(f->l[0], (APIC_DM_SIPI << 8) | 0x9c, 2); /* running now: ignored */
    assert_int_equal(lapic_take_sipi(f->l[2]), -1);
    /* INIT to all others, then SIPI to all others */
    send(f->l[0], (APIC_DM_INIT << 8) | (1u << 14) | (APIC_SH_OTHERS << 18), 0);
    assert_false(lapic_take_init(f->l[0]));
    for (int i = 1; i < NCPU; i++)
        assert_true(lapic_take_init(f->l[i]));
    send(f->l[0], (APIC_DM_SIPI << 8) | 0x10 | (APIC_SH_OTHERS << 18), 0);
    for (int i = 1; i < NCPU; i++)
        assert_int_equal(lapic_take_sipi(f->l[i]), 0x10);
    /* a self IPI with a non-fixed mode is invalid */
    send(f->l[0], (APIC_DM_NMI << 8) | (APIC_SH_SELF << 18), 0);
    assert_false(lapic_has_nmi(f->l[0]));
}

static void test_apic_base(void **state)
{
    struct fix *f = *state;
    struct lapic *l = f->l[1];
    enable(l);
    lapic_set_irr(l, 0x50, false);
    assert_int_equal(lapic_set_base(l, LAYOUT_LAPIC_BASE | APIC_BASE_ENABLE | APIC_BASE_X2APIC, 40),
                     -EINVAL);
    assert_int_equal(lapic_set_base(l, LAYOUT_LAPIC_BASE | APIC_BASE_ENABLE | 1, 40), -EINVAL);
    assert_int_equal(lapic_set_base(l, (1ull << 40) | APIC_BASE_ENABLE, 40), -EINVAL);
    assert_int_equal(lapic_get_base(l), LAYOUT_LAPIC_BASE | APIC_BASE_ENABLE);
    /* relocation */
    assert_int_equal(lapic_set_base(l, 0xfed00000ull | APIC_BASE_ENABLE, 40), 0);
    assert_int_equal(lapic_mmio_base(l), 0xfed00000ull);
    /* disable: no MMIO, no interrupts, registers back to power-up state */
    assert_int_equal(lapic_set_base(l, 0xfed00000ull, 40), 0);
    assert_int_equal(lapic_mmio_base(l), UINT64_MAX);
    assert_int_equal(lapic_pending_vector(l), -1);
    send(f->l[0], APIC_DM_NMI << 8, 1);
    assert_false(lapic_has_nmi(l));
    assert_int_equal(lapic_set_base(l, LAYOUT_LAPIC_BASE | APIC_BASE_ENABLE, 40), 0);
    assert_int_equal(rd(l, APIC_SVR), 0xff);
    assert_false(irr(l, 0x50));
    assert_int_equal(rd(l, APIC_ID), 1u << 24);
}

static void test_state_roundtrip(void **state)
{
    struct fix *f = *state;
    struct lapic *l = f->l[0];
    enable(l);
    wr(l, APIC_TPR, 0x20);
    wr(l, APIC_LDR, 0x01000000);
    wr(l, APIC_LVT0, 0x700);
    wr(l, APIC_LVTERR, 0xfe);
    lapic_set_irr(l, 0x61, true);
    lapic_set_irr(l, 0x71, false);
    lapic_accept(l, 0x71);
    lapic_reg_write(l, APIC_TDCR, 0x3, 0); /* by 16 */
    lapic_reg_write(l, APIC_LVTT, (APIC_TIMER_PERIODIC << 17) | 0x30, 0);
    lapic_reg_write(l, APIC_TMICT, 100000, 0); /* period 1.6 ms */
    struct lapic_state s1, s2;
    lapic_get_state(l, &s1, 400000); /* 25000 counts done */
    assert_int_equal(s1.regs[APIC_TMCCT >> 2], 75000);
    assert_int_equal(s1.regs[APIC_PPR >> 2], 0x70);

    struct lapic *m = lapic_create(&f->vm, NULL, 9, false, NULL, NULL);
    assert_non_null(m);
    assert_int_equal(lapic_set_state(m, &s1, 10000000), 0);
    lapic_get_state(m, &s2, 10000000);
    assert_memory_equal(&s1, &s2, sizeof(s1));
    assert_int_equal(lapic_next_event_ns(m), 10000000 + 75000 * 16);
    assert_int_equal(lapic_pending_vector(m), -1); /* 0x61 blocked by 0x71 in service */
    assert_int_equal(lapic_id(m), 0);
    lapic_update_timer(m, 10000000 + 75000 * 16);
    assert_int_equal(lapic_next_event_ns(m), 10000000 + 75000 * 16 + 1600000);
    lapic_destroy(m);
}

static void test_state_invalid(void **state)
{
    struct fix *f = *state;
    struct lapic *l = f->l[0];
    struct lapic_state good, s;
    enable(l);
    wr(l, APIC_TPR, 0x33);
    lapic_get_state(l, &good, 0);
    struct {
        unsigned off;
        uint32_t val;
    } bad[] = {
        {APIC_TPR, 0x100},      {APIC_ID, 0x1},   {APIC_LVTT, 3u << 17}, {APIC_LVTT, 1u << 20},
        {APIC_DFR, 0x5fffffff}, {APIC_IRR, 0x20}, {APIC_ISR, 0x8000},    {APIC_TMR, 1},
        {APIC_SVR, 1u << 12},   {APIC_TDCR, 0x4}, {APIC_LVT0, 1u << 17}, {APIC_ICR2, 0xff},
        {APIC_LDR, 0x00ff0000},
    };
    for (unsigned i = 0; i < ARRAY_SIZE(bad); i++) {
        s = good;
        s.regs[bad[i].off >> 2] = bad[i].val;
        assert_int_equal(lapic_set_state(l, &s, 0), -EINVAL);
    }
    /* nothing changed */
    assert_int_equal(rd(l, APIC_TPR), 0x33);
    /* computed and unused slots are ignored, not trusted */
    s = good;
    s.regs[APIC_PPR >> 2] = 0xff;
    s.regs[APIC_LVR >> 2] = 0x12345678;
    s.regs[0x3f0 >> 2] = 0xdeadbeef;
    s.regs[APIC_ICR >> 2] = 0xfffff0fe; /* reserved bits and delivery status dropped */
    assert_int_equal(lapic_set_state(l, &s, 0), 0);
    assert_int_equal(rd(l, APIC_ICR), 0x000cc0fe);
    assert_int_equal(rd(l, APIC_PPR), 0x33);
    assert_int_equal(rd(l, APIC_LVR), 0x00050014);
    /* software-disabled state gets its LVTs masked */
    s = good;
    s.regs[APIC_SVR >> 2] = 0xff;
    s.regs[APIC_LVTT >> 2] = 0x40;
    assert_int_equal(lapic_set_state(l, &s, 0), 0);
    assert_int_equal(rd(l, APIC_LVTT), APIC_LVT_MASKED | 0x40);
}

struct hammer {
    struct lapic *src;
    int vector;
};
static void *hammer_thread(void *arg)
{
    struct hammer *h = arg;
    for (int i = 0; i < 20000; i++) {
        lapic_send_ipi(h->src, (uint32_t)h->vector, 0); /* to APIC 0 */
    }
    return NULL;
}

static void test_concurrent_ipis(void **state)
{
    struct fix *f = *state;
    for (int i = 0; i < NCPU; i++)
        enable(f->l[i]);
    struct hammer h[2] = {{f->l[1], 0x60}, {f->l[2], 0x70}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&t[i], NULL, hammer_thread, &h[i]);
    int taken = 0;
    for (int i = 0; i < 20000; i++) {
        int v = lapic_pending_vector(f->l[0]);
        if (v >= 0) {
            lapic_accept(f->l[0], v);
            wr(f->l[0], APIC_EOI, 0);
            taken++;
        }
    }
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    while (lapic_pending_vector(f->l[0]) >= 0) {
        lapic_accept(f->l[0], lapic_pending_vector(f->l[0]));
        wr(f->l[0], APIC_EOI, 0);
    }
    assert_int_equal(rd(f->l[0], APIC_ISR + 0x30), 0);
    assert_int_equal(rd(f->l[0], APIC_IRR + 0x30), 0);
    assert_false(lapic_attention(f->l[0]));
    (void)taken;
}

static void test_vclock(void **state)
{
    (void)state;
    assert_int_equal(vclock_ns_to_ticks(2000000, 1000), 2000);
    assert_int_equal(vclock_ns_to_ticks(2000000, -5), 0);
    assert_int_equal(vclock_ticks_to_ns(2000000, 2001), 1001); /* rounds up */
    assert_int_equal(vclock_ticks_to_ns(3000000, 3), 1);
    assert_int_equal(vclock_ticks_to_ns(1000, UINT64_MAX), INT64_MAX);
    assert_int_equal(vclock_ns_to_ticks(10000000, INT64_MAX), UINT64_MAX); /* saturates */
    assert_int_equal(vclock_ns_to_ticks(2000000, INT64_MAX), (uint64_t)INT64_MAX * 2);
    uint64_t khz = vclock_pick_tsc_khz();
    assert_true(khz >= 100000 && khz <= 10000000);
    int64_t a = vclock_ns();
    vclock_pause();
    int64_t b = vclock_ns();
    assert_true(b >= a);
    assert_true(vclock_paused());
    struct timespec ts = {0, 2000000};
    nanosleep(&ts, NULL);
    assert_int_equal(vclock_ns(), b); /* frozen */
    vclock_resume();
    int64_t c = vclock_ns();
    assert_true(c >= b && c - b < 1000000); /* continues from the frozen value */
    vclock_set_ns(5000000000ll);
    int64_t d = vclock_ns();
    assert_true(d >= 5000000000ll && d < 5100000000ll);
    struct vm vm = {.tsc_khz = 1000000};
    assert_int_equal(vclock_tsc_at(&vm, 12345), 12345);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_reset_values, setup, teardown),
        cmocka_unit_test_setup_teardown(test_register_masks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mmio_access, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sw_disable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_priority, setup, teardown),
        cmocka_unit_test_setup_teardown(test_eoi_broadcast, setup, teardown),
        cmocka_unit_test_setup_teardown(test_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timer_oneshot, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timer_divide_change, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timer_periodic, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timer_masked, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timer_tsc_deadline, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tsc_deadline_needs_cpuid, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ipi_fixed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ipi_logical, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ipi_nmi_init_sipi, setup, teardown),
        cmocka_unit_test_setup_teardown(test_apic_base, setup, teardown),
        cmocka_unit_test_setup_teardown(test_state_roundtrip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_state_invalid, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_ipis, setup, teardown),
        cmocka_unit_test(test_vclock),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
