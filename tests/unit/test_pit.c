/* Unit tests for the i8254 PIT (devices/pit.c): counting in modes 0, 2, 3, 4 at explicit virtual
 * times, channel 0's interrupt pulses, the channel 2 gate and OUT through port 0x61 (the way
 * Linux calibrates), latch and read-back commands, BCD, and state round trips. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <errno.h>

#include "cpu/cpu.h"
#include "devices/ioapic.h"
#include "devices/lapic.h"
#include "devices/pit.h"
#include "util/log.h"

struct irqrec {
    int raises, lowers, level;
    unsigned gsi;
};
static struct irqrec IRQ;
static struct pit *P;

static void on_irq(void *ctx, unsigned gsi, int level)
{
    struct irqrec *r = ctx;
    r->gsi = gsi;
    if (level && !r->level) r->raises++;
    if (!level && r->level) r->lowers++;
    r->level = level;
}

static int setup(void **state)
{
    memset(&IRQ, 0, sizeof(IRQ));
    struct irq_line line = {.set = on_irq, .ctx = &IRQ, .gsi = 2};
    P = pit_create(NULL, &line);
    assert_non_null(P);
    return 0;
}
static int teardown(void **state)
{
    pit_destroy(P);
    return 0;
}

/* virtual time at which k input clocks have elapsed since t0 (rounded up, as the PIT does) */
static int64_t tt(int64_t t0, uint64_t k)
{
    return t0 + (int64_t)((k * 1000000000ull + PIT_FREQ_HZ - 1) / PIT_FREQ_HZ);
}

static void out(uint16_t port, uint8_t v, int64_t now)
{
    pit_port_write(P, port, v, now);
}
static uint8_t in(uint16_t port, int64_t now)
{
    return pit_port_read(P, port, now);
}
static void load16(unsigned ch, uint16_t count, int64_t now)
{
    out(0x40 + ch, count & 0xff, now);
    out(0x40 + ch, count >> 8, now);
}
static unsigned read16(unsigned ch, int64_t now)
{
    unsigned lo = in(0x40 + ch, now);
    return lo | (unsigned)in(0x40 + ch, now) << 8;
}

static void test_reset(void **state)
{
    assert_int_equal(pit_next_event_ns(P), INT64_MAX);
    struct pit_state s;
    pit_get_state(P, &s);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(s.channels[i].mode, PIT_MODE_UNPROGRAMMED);
        assert_int_equal(s.channels[i].gate, i != 2);
    }
    load16(0, 100, 0); /* no control word yet: ignored */
    assert_int_equal(pit_next_event_ns(P), INT64_MAX);
    assert_int_equal(in(0x43, 0), 0);
}

static void test_mode2_rate(void **state)
{
    int64_t t0 = 1000;
    out(0x43, 0x34, 0); /* ch0, lo/hi, mode 2, binary */
    load16(0, 1193, t0);
    assert_int_equal(pit_next_event_ns(P), tt(t0, 1193));
    assert_int_equal(read16(0, tt(t0, 100)), 1093);
    assert_int_equal(read16(0, tt(t0, 1193 + 5)), 1188); /* reloaded */
    pit_update(P, tt(t0, 1193) - 1);
    assert_int_equal(IRQ.raises, 0);
    pit_update(P, tt(t0, 1193));
    assert_int_equal(IRQ.raises, 1);
    assert_int_equal(IRQ.lowers, 1); /* a pulse */
    assert_int_equal(IRQ.gsi, 2);
    assert_int_equal(pit_next_event_ns(P), tt(t0, 2 * 1193));
    pit_update(P, tt(t0, 10 * 1193) + 7); /* missed periods coalesce */
    assert_int_equal(IRQ.raises, 2);
    assert_int_equal(pit_next_event_ns(P), tt(t0, 11 * 1193));
    /* a control word stops the interrupts until a count is written */
    out(0x43, 0x34, tt(t0, 10 * 1193) + 8);
    assert_int_equal(pit_next_event_ns(P), INT64_MAX);
    load16(0, 0, 5000000000ll); /* 0 means 65536 */
    assert_int_equal(pit_next_event_ns(P), tt(5000000000ll, 65536));
    assert_int_equal(read16(0, 5000000000ll), 0);
    assert_int_equal(read16(0, tt(5000000000ll, 1)), 65535);
}

static void test_mode3_square(void **state)
{
    int64_t t0 = 0;
    out(0x43, 0x36, t0); /* ch0, lo/hi, mode 3 */
    load16(0, 1000, t0);
    assert_int_equal(read16(0, tt(t0, 100)), 800); /* decrements by two */
    assert_int_equal(read16(0, tt(t0, 600)), 800); /* second half */
    assert_int_equal(pit_next_event_ns(P), tt(t0, 1000));
    pit_update(P, tt(t0, 1000));
    assert_int_equal(IRQ.raises, 1);
    assert_int_equal(pit_next_event_ns(P), tt(t0, 2000));
    /* channel 2's OUT in mode 3, read through port 0x61 bit 5 */
    out(0x61, 0x01, 0); /* gate 2 high */
    out(0x43, 0xb6, 0); /* ch2, lo/hi, mode 3 */
    load16(2, 1000, 0);
    assert_true(in(0x61, tt(0, 10)) & 0x20);
    assert_true(in(0x61, tt(0, 499)) & 0x20);
    assert_false(in(0x61, tt(0, 500)) & 0x20);
    assert_false(in(0x61, tt(0, 999)) & 0x20);
    assert_true(in(0x61, tt(0, 1000)) & 0x20);
    /* gate low holds OUT high; a rising gate restarts the count */
    out(0x61, 0x00, tt(0, 1600));
    assert_true(in(0x61, tt(0, 1700)) & 0x20);
    out(0x61, 0x01, tt(0, 2000));
    assert_int_equal(read16(2, tt(0, 2000)), 1000 % 65536);
    assert_int_equal(read16(2, tt(tt(0, 2000), 100)), 800);
}

static void test_mode0_linux_calibration(void **state)
{
    /* arch/x86/kernel/tsc.c pit_calibrate_tsc(): gate high, speaker off, mode 0 on channel 2 */
    int64_t t0 = 123456;
    out(0x61, (in(0x61, 0) & ~0x02) | 0x01, 0);
    out(0x43, 0xb0, 0);
    out(0x42, 11932 & 0xff, t0);
    out(0x42, 11932 >> 8, t0);
    assert_false(in(0x61, t0) & 0x20);
    assert_false(in(0x61, tt(t0, 11931)) & 0x20);
    assert_true(in(0x61, tt(t0, 11932)) & 0x20);
    assert_true(in(0x61, tt(t0, 20000)) & 0x20); /* stays high */
    /* quick_pit_calibrate(): count down from 0xffff, reading LSB then MSB */
    out(0x43, 0xb0, 0);
    out(0x42, 0xff, 1000000);
    out(0x42, 0xff, 1000000);
    assert_int_equal(read16(2, tt(1000000, 256)), 0xffff - 256);
    assert_int_equal(read16(2, tt(1000000, 0x10000)), 0xffff); /* wrapped */
    /* mode 0 on channel 0: one interrupt at terminal count */
    out(0x43, 0x30, 0);
    load16(0, 500, 0);
    assert_int_equal(pit_next_event_ns(P), tt(0, 500));
    pit_update(P, tt(0, 500));
    assert_int_equal(IRQ.raises, 1);
    assert_int_equal(pit_next_event_ns(P), INT64_MAX);
    pit_update(P, tt(0, 100000));
    assert_int_equal(IRQ.raises, 1);
}

static void test_mode4_strobe(void **state)
{
    out(0x43, 0x38, 0); /* ch0 mode 4 */
    load16(0, 300, 0);
    assert_int_equal(read16(0, tt(0, 50)), 250);
    pit_update(P, tt(0, 299));
    assert_int_equal(IRQ.raises, 0);
    pit_update(P, tt(0, 300));
    assert_int_equal(IRQ.raises, 1);
    assert_int_equal(pit_next_event_ns(P), INT64_MAX);
    /* OUT: one-clock low strobe at terminal count (channel 2) */
    out(0x61, 0x01, 0);
    out(0x43, 0xb8, 0);
    load16(2, 300, 0);
    assert_true(in(0x61, tt(0, 299)) & 0x20);
    assert_false(in(0x61, tt(0, 300)) & 0x20);
    assert_true(in(0x61, tt(0, 301)) & 0x20);
}

static void test_latch(void **state)
{
    out(0x43, 0x34, 0);
    load16(0, 1000, 0);
    out(0x43, 0x00, tt(0, 100)); /* latch channel 0 */
    out(0x43, 0x00, tt(0, 200)); /* ignored: already latched */
    assert_int_equal(read16(0, tt(0, 300)), 900);
    assert_int_equal(read16(0, tt(0, 300)), 700); /* live again */
    /* LSB-only and MSB-only access */
    out(0x43, 0x14, 0); /* ch0, LSB only, mode 2 */
    out(0x40, 200, 0);
    assert_int_equal(in(0x40, tt(0, 50)), 150);
    out(0x43, 0x24, 0); /* ch0, MSB only */
    out(0x40, 0x02, 0); /* count 0x200 */
    assert_int_equal(in(0x40, tt(0, 0x100)), 0x01);
    out(0x43, 0x00, tt(0, 0x180)); /* latch with MSB-only access: one byte */
    assert_int_equal(in(0x40, tt(0, 0x1f0)), 0x00);
    assert_int_equal(in(0x40, tt(0, 0x1f0)), 0x00); /* live: 0x10 left -> MSB 0 */
}

static void test_readback(void **state)
{
    out(0x43, 0x34, 0);
    load16(0, 1000, 0);
    out(0x43, 0xc2, tt(0, 10)); /* read-back count and status of channel 0 */
    uint8_t st = in(0x40, tt(0, 50));
    assert_int_equal(st & 0x3f, (3 << 4) | (2 << 1)); /* lo/hi, mode 2, binary */
    assert_true(st & 0x80);                           /* OUT high in mode 2 */
    assert_int_equal(read16(0, tt(0, 50)), 990);
    out(0x43, 0xe2, tt(0, 60)); /* status only */
    assert_int_equal(in(0x40, tt(0, 70)) & 0x3f, 0x34 & 0x3f);
    assert_int_equal(read16(0, tt(0, 70)), 930);
    out(0x43, 0xd2, tt(0, 80)); /* count only */
    assert_int_equal(read16(0, tt(0, 90)), 920);
    /* read-back of channels 0 and 2 at once */
    out(0x61, 1, 0);
    out(0x43, 0xb0, 0);
    load16(2, 5000, 0);
    out(0x43, 0xca, tt(0, 100)); /* count+status, ch0 and ch2 */
    assert_int_equal(in(0x42, tt(0, 200)) & 0x3f, (3 << 4) | (0 << 1));
    assert_int_equal(read16(2, tt(0, 200)), 4900);
    in(0x40, 0); /* ch0 status */
    assert_int_equal(read16(0, tt(0, 200)), 900);
}

static void test_bcd(void **state)
{
    out(0x43, 0x31, 0);   /* ch0, lo/hi, mode 0, BCD */
    load16(0, 0x1000, 0); /* 1000 decimal */
    assert_int_equal(read16(0, tt(0, 1)), 0x0999);
    assert_int_equal(read16(0, tt(0, 234)), 0x0766);
    assert_int_equal(pit_next_event_ns(P), tt(0, 1000));
    out(0x43, 0x35, 0); /* mode 2 BCD, count 0 = 10000 */
    load16(0, 0, 0);
    assert_int_equal(pit_next_event_ns(P), tt(0, 10000));
    assert_int_equal(read16(0, tt(0, 1)), 0x9999);
}

static void test_port61(void **state)
{
    out(0x61, 0xff, 0);
    uint8_t v = in(0x61, 0);
    assert_int_equal(v & 0x0f, 0x0f);
    assert_int_equal(v & 0xc0, 0);
    out(0x61, 0x02, 0);
    assert_int_equal(in(0x61, 0) & 0x0f, 0x02);
    /* refresh toggles */
    assert_int_not_equal(in(0x61, 1000) & 0x10, in(0x61, 16000) & 0x10);
    struct pit_state s;
    pit_get_state(P, &s);
    assert_int_equal(s.channels[2].gate, 0);
    assert_int_equal(s.flags, 0x02u << PIT_FLAGS_PORT61_SHIFT);
}

static void test_min_period(void **state)
{
    out(0x43, 0x34, 0);
    load16(0, 2, 0);
    pit_update(P, tt(0, 2));
    assert_int_equal(IRQ.raises, 1);
    assert_true(pit_next_event_ns(P) >= tt(0, 2) + PIT_MIN_IRQ_PERIOD_NS);
}

static void test_attach(void **state)
{
    struct vm vm;
    memset(&vm, 0, sizeof(vm));
    bus_init(&vm.pio, "pio");
    assert_int_equal(pit_attach(&vm, P), 0);
    assert_true(pit_attach(&vm, P) < 0);
    uint8_t b[2] = {0x34};
    assert_true(bus_access(&vm.pio, 0x43, b, 1, true));
    b[0] = 0x10, b[1] = 0x27; /* 16-bit write = two byte writes: to ports 0x40 and 0x41 */
    assert_true(bus_access(&vm.pio, 0x40, b, 1, true));
    assert_true(bus_access(&vm.pio, 0x40, b + 1, 1, true));
    assert_true(pit_next_event_ns(P) != INT64_MAX);
    assert_true(bus_access(&vm.pio, 0x61, b, 1, false));
}

static void test_state(void **state)
{
    out(0x43, 0x34, 0);
    load16(0, 1193, 1000);
    out(0x61, 0x03, 0);
    out(0x43, 0xb0, 0);
    load16(2, 777, 0);
    out(0x43, 0x80, 10); /* latch ch2 */
    struct pit_state s, s2;
    pit_get_state(P, &s);
    assert_int_equal(s.channels[0].count, 1193);
    assert_int_equal(s.channels[0].count_load_time, 1000);
    assert_int_equal(s.channels[0].mode, 2);
    assert_int_equal(s.channels[2].count_latched, PIT_RW_WORD0);

    struct irqrec r2 = {0};
    struct irq_line line = {.set = on_irq, .ctx = &r2, .gsi = 2};
    struct pit *q = pit_create(NULL, &line);
    int64_t now = tt(1000, 5 * 1193 + 3);
    assert_int_equal(pit_set_state(q, &s, now), 0);
    pit_get_state(q, &s2);
    assert_memory_equal(&s, &s2, sizeof(s));
    assert_int_equal(pit_next_event_ns(q), tt(1000, 6 * 1193));
    assert_int_equal(pit_port_read(q, 0x42, now), 777 & 0xff); /* the latch survived */
    assert_int_equal(pit_port_read(q, 0x42, now), 777 >> 8);
    assert_int_equal(pit_port_read(q, 0x61, now) & 3, 3);

    struct pit_state bad;
    bad = s, bad.channels[1].count = 0;
    assert_int_equal(pit_set_state(q, &bad, now), -EINVAL);
    bad = s, bad.channels[1].count = 0x10001;
    assert_int_equal(pit_set_state(q, &bad, now), -EINVAL);
    bad = s, bad.channels[0].mode = 6;
    assert_int_equal(pit_set_state(q, &bad, now), -EINVAL);
    bad = s, bad.channels[2].rw_mode = 4;
    assert_int_equal(pit_set_state(q, &bad, now), -EINVAL);
    bad = s, bad.channels[2].read_state = 5;
    assert_int_equal(pit_set_state(q, &bad, now), -EINVAL);
    bad = s, bad.channels[0].bcd = 2;
    assert_int_equal(pit_set_state(q, &bad, now), -EINVAL);
    bad = s, bad.flags = 1; /* HPET legacy */
    assert_int_equal(pit_set_state(q, &bad, now), -EINVAL);
    pit_get_state(q, &s2);
    assert_int_equal(s2.channels[1].count, s.channels[1].count);
    pit_destroy(q);
}

/* The whole chain the software backend wires: PIT channel 0 -> GSI 2 -> IOAPIC -> LAPIC 0. */
static void test_chain_to_lapic(void **state)
{
    struct lapic_bus bus;
    struct ioapic *io = ioapic_create(NULL, lapic_bus_deliver_cb, &bus);
    lapic_bus_init(&bus, ioapic_eoi_cb, io);
    struct lapic *l = lapic_create(NULL, &bus, 0, true, NULL, NULL);
    struct irq_line line = {.set = ioapic_irq_line_cb, .ctx = io, .gsi = 2};
    struct pit *p = pit_create(NULL, &line);
    lapic_reg_write(l, APIC_SVR, 0x1ff, 0);
    uint8_t sel[4] = {0x10 + 2 * 2},
            low[4] = {0x30, 0, 0, 0}; /* pin 2: edge, vector 0x30, APIC 0 */
    ioapic_mmio_write(io, 0, sel, 4);
    ioapic_mmio_write(io, 0x10, low, 4);
    pit_port_write(p, 0x43, 0x34, 0);
    pit_port_write(p, 0x40, 0xa9, 0); /* 1193: ~1 kHz */
    pit_port_write(p, 0x40, 0x04, 0);
    for (int tick = 1; tick <= 3; tick++) {
        int64_t t = pit_next_event_ns(p);
        assert_int_equal(t, tt(0, 1193ull * tick));
        pit_update(p, t);
        assert_int_equal(lapic_pending_vector(l), 0x30);
        lapic_accept(l, 0x30);
        lapic_reg_write(l, APIC_EOI, 0, t);
        assert_int_equal(lapic_pending_vector(l), -1);
    }
    pit_destroy(p);
    lapic_destroy(l);
    ioapic_destroy(io);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_reset, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mode2_rate, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mode3_square, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mode0_linux_calibration, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mode4_strobe, setup, teardown),
        cmocka_unit_test_setup_teardown(test_latch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_readback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bcd, setup, teardown),
        cmocka_unit_test_setup_teardown(test_port61, setup, teardown),
        cmocka_unit_test_setup_teardown(test_min_period, setup, teardown),
        cmocka_unit_test_setup_teardown(test_attach, setup, teardown),
        cmocka_unit_test_setup_teardown(test_state, setup, teardown),
        cmocka_unit_test(test_chain_to_lapic),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
