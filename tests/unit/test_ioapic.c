/* Unit tests for the user-space IOAPIC (devices/ioapic.c): registers through IOREGSEL/IOWIN,
 * edge/level/Remote IRR/mask semantics, EOI re-delivery, routing into real LAPICs, and state
 * round trips with rejection of invalid state. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <errno.h>
#include <pthread.h>

#include "cpu/cpu.h"
#include "devices/ioapic.h"
#include "devices/lapic.h"
#include "machine/layout.h"
#include "util/log.h"

/* A recording APIC bus: remembers the messages and accepts `accept` of them. */
struct rec {
    int n;
    struct apic_irq last;
    int accept;
};
static int rec_deliver(void *ctx, const struct apic_irq *irq)
{
    struct rec *r = ctx;
    r->n++;
    r->last = *irq;
    return r->accept;
}

static struct rec R;
static struct ioapic *IO;

static int setup(void **state)
{
    memset(&R, 0, sizeof(R));
    R.accept = 1;
    IO = ioapic_create(NULL, rec_deliver, &R);
    assert_non_null(IO);
    return 0;
}
static int teardown(void **state)
{
    ioapic_destroy(IO);
    return 0;
}

static uint32_t io_rd(struct ioapic *io, uint32_t idx)
{
    uint8_t b[4] = {(uint8_t)idx, 0, 0, 0};
    ioapic_mmio_write(io, 0x00, b, 4);
    ioapic_mmio_read(io, 0x10, b, 4);
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}
static void io_wr(struct ioapic *io, uint32_t idx, uint32_t v)
{
    uint8_t b[4] = {(uint8_t)idx, 0, 0, 0};
    ioapic_mmio_write(io, 0x00, b, 4);
    uint8_t w[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    ioapic_mmio_write(io, 0x10, w, 4);
}
static void route(struct ioapic *io, unsigned pin, uint32_t low, uint8_t dest)
{
    io_wr(io, 0x11 + 2 * pin, (uint32_t)dest << 24);
    io_wr(io, 0x10 + 2 * pin, low);
}

static void test_registers(void **state)
{
    assert_int_equal(io_rd(IO, IOAPIC_REG_VER), 0x00170011);
    assert_int_equal(io_rd(IO, IOAPIC_REG_ID), 0);
    io_wr(IO, IOAPIC_REG_ID, 0xffffffff);
    assert_int_equal(io_rd(IO, IOAPIC_REG_ID), 0x0f000000);
    assert_int_equal(io_rd(IO, IOAPIC_REG_ARB), 0x0f000000);
    io_wr(IO, IOAPIC_REG_VER, 0); /* read-only */
    assert_int_equal(io_rd(IO, IOAPIC_REG_VER), 0x00170011);
    for (unsigned pin = 0; pin < IOAPIC_NUM_PINS; pin++) {
        assert_int_equal(io_rd(IO, 0x10 + 2 * pin), 0x10000); /* masked at reset */
        assert_int_equal(io_rd(IO, 0x11 + 2 * pin), 0);
    }
    io_wr(IO, 0x10, 0xffffffff);
    assert_int_equal(io_rd(IO, 0x10), 0x1afff); /* no delivery status, remote IRR, reserved */
    io_wr(IO, 0x11, 0xffffffff);
    assert_int_equal(io_rd(IO, 0x11), 0xff000000);
    assert_int_equal(io_rd(IO, 0x40), 0xffffffff); /* beyond the table */
    assert_int_equal(io_rd(IO, 0x05), 0);
    /* IOREGSEL reads back; byte reads of IOWIN */
    uint8_t b[4];
    io_wr(IO, 0x12, 0x3234); /* bit 12 (delivery status) is read-only */
    ioapic_mmio_read(IO, 0x00, b, 4);
    assert_int_equal(b[0], 0x12);
    ioapic_mmio_read(IO, 0x11, b, 1);
    assert_int_equal(b[0], 0x22); /* bits 15:8 of the low half of pin 1 */
    ioapic_mmio_read(IO, 0x20, b, 4);
    assert_int_equal(b[0] | b[1] | b[2] | b[3], 0);
    assert_int_equal(R.n, 0);
}

static void test_edge(void **state)
{
    route(IO, 4, 0x34, 1);
    ioapic_set_irq(IO, 4, 1);
    assert_int_equal(R.n, 1);
    assert_int_equal(R.last.vector, 0x34);
    assert_int_equal(R.last.dest, 1);
    assert_false(R.last.logical);
    assert_false(R.last.level_trig);
    assert_int_equal(R.last.delivery_mode, APIC_DM_FIXED);
    ioapic_set_irq(IO, 4, 1); /* no edge */
    assert_int_equal(R.n, 1);
    ioapic_set_irq(IO, 4, 0);
    ioapic_set_irq(IO, 4, 1);
    assert_int_equal(R.n, 2);
    assert_int_equal(io_rd(IO, 0x18) & IOAPIC_RTE_REMOTE_IRR, 0);
    /* an edge on a masked pin is lost */
    ioapic_set_irq(IO, 4, 0);
    route(IO, 4, 0x34 | IOAPIC_RTE_MASKED, 1);
    ioapic_set_irq(IO, 4, 1);
    route(IO, 4, 0x34, 1);
    assert_int_equal(R.n, 2);
    /* logical destination and delivery mode pass through */
    ioapic_set_irq(IO, 5, 0);
    route(IO, 5, 0x35 | IOAPIC_RTE_LOGICAL | (APIC_DM_LOWEST << 8), 0x0f);
    ioapic_set_irq(IO, 5, 1);
    assert_true(R.last.logical);
    assert_int_equal(R.last.delivery_mode, APIC_DM_LOWEST);
    assert_int_equal(R.last.dest, 0x0f);
    /* out-of-range pins are ignored */
    ioapic_set_irq(IO, 24, 1);
    ioapic_set_irq(IO, 1000, 1);
    assert_int_equal(R.n, 3);
}

static void test_level(void **state)
{
    route(IO, 9, 0x39 | IOAPIC_RTE_LEVEL, 0);
    ioapic_set_irq(IO, 9, 1);
    assert_int_equal(R.n, 1);
    assert_true(R.last.level_trig);
    assert_true(io_rd(IO, 0x10 + 18) & IOAPIC_RTE_REMOTE_IRR);
    ioapic_set_irq(IO, 9, 1); /* Remote IRR blocks re-delivery */
    assert_int_equal(R.n, 1);
    ioapic_eoi(IO, 0x40); /* another vector */
    assert_int_equal(R.n, 1);
    ioapic_eoi(IO, 0x39); /* still asserted: delivered again */
    assert_int_equal(R.n, 2);
    assert_true(io_rd(IO, 0x10 + 18) & IOAPIC_RTE_REMOTE_IRR);
    ioapic_set_irq(IO, 9, 0);
    ioapic_eoi(IO, 0x39);
    assert_int_equal(R.n, 2);
    assert_false(io_rd(IO, 0x10 + 18) & IOAPIC_RTE_REMOTE_IRR);
    /* masked while asserted: delivered on unmask */
    route(IO, 9, 0x39 | IOAPIC_RTE_LEVEL | IOAPIC_RTE_MASKED, 0);
    ioapic_set_irq(IO, 9, 1);
    assert_int_equal(R.n, 2);
    struct ioapic_state s;
    ioapic_get_state(IO, &s);
    assert_int_equal(s.irr, 1u << 9);
    route(IO, 9, 0x39 | IOAPIC_RTE_LEVEL, 0);
    assert_int_equal(R.n, 3);
    /* nobody accepted: no Remote IRR, so the next assertion tries again */
    ioapic_set_irq(IO, 10, 0);
    R.accept = 0;
    route(IO, 10, 0x3a | IOAPIC_RTE_LEVEL, 5);
    ioapic_set_irq(IO, 10, 1);
    assert_int_equal(R.n, 4);
    assert_false(io_rd(IO, 0x10 + 20) & IOAPIC_RTE_REMOTE_IRR);
    ioapic_set_irq(IO, 10, 1);
    assert_int_equal(R.n, 5);
    /* switching to edge clears Remote IRR */
    R.accept = 1;
    route(IO, 11, 0x3b | IOAPIC_RTE_LEVEL, 0);
    ioapic_set_irq(IO, 11, 1);
    assert_true(io_rd(IO, 0x10 + 22) & IOAPIC_RTE_REMOTE_IRR);
    io_wr(IO, 0x10 + 22, 0x3b);
    assert_false(io_rd(IO, 0x10 + 22) & IOAPIC_RTE_REMOTE_IRR);
}

/* IOAPIC -> real LAPICs -> EOI broadcast -> IOAPIC. */
static struct ioapic *IO2;
static void eoi_to_io2(void *ctx, int v)
{
    ioapic_eoi(IO2, v);
}

static void test_with_lapics(void **state)
{
    struct lapic_bus bus;
    lapic_bus_init(&bus, eoi_to_io2, NULL);
    struct lapic *l0 = lapic_create(NULL, &bus, 0, true, NULL, NULL);
    struct lapic *l1 = lapic_create(NULL, &bus, 1, false, NULL, NULL);
    assert_non_null(l0);
    assert_non_null(l1);
    IO2 = ioapic_create(NULL, lapic_bus_deliver_cb, &bus);
    assert_non_null(IO2);
    lapic_reg_write(l0, APIC_SVR, 0x1ff, 0);
    lapic_reg_write(l1, APIC_SVR, 0x1ff, 0);
    route(IO2, 2, 0x30, 1); /* edge to APIC 1 */
    ioapic_set_irq(IO2, 2, 1);
    ioapic_set_irq(IO2, 2, 0);
    assert_int_equal(lapic_pending_vector(l1), 0x30);
    assert_int_equal(lapic_pending_vector(l0), -1);
    route(IO2, 9, 0x49 | IOAPIC_RTE_LEVEL, 0); /* level to APIC 0 */
    ioapic_set_irq(IO2, 9, 1);
    assert_int_equal(lapic_pending_vector(l0), 0x49);
    lapic_accept(l0, 0x49);
    assert_int_equal(lapic_pending_vector(l0), -1);
    lapic_reg_write(l0, APIC_EOI, 0, 0); /* line still high: comes back */
    assert_int_equal(lapic_pending_vector(l0), 0x49);
    lapic_accept(l0, 0x49);
    ioapic_set_irq(IO2, 9, 0);
    lapic_reg_write(l0, APIC_EOI, 0, 0);
    assert_int_equal(lapic_pending_vector(l0), -1);
    assert_false(io_rd(IO2, 0x10 + 18) & IOAPIC_RTE_REMOTE_IRR);
    /* logical flat destination, both CPUs */
    lapic_reg_write(l0, APIC_LDR, 0x01000000, 0);
    lapic_reg_write(l1, APIC_LDR, 0x02000000, 0);
    route(IO2, 3, 0x53 | IOAPIC_RTE_LOGICAL, 0x03);
    ioapic_set_irq(IO2, 3, 1);
    assert_int_equal(lapic_pending_vector(l0), 0x53);
    lapic_accept(l1, 0x30);
    assert_int_equal(lapic_pending_vector(l1), 0x53); /* class 5 preempts class 3 in service */
    ioapic_destroy(IO2);
    lapic_destroy(l0);
    lapic_destroy(l1);
}

static void test_attach_mmio(void **state)
{
    struct vm vm;
    memset(&vm, 0, sizeof(vm));
    bus_init(&vm.mmio, "mmio");
    assert_int_equal(ioapic_attach(&vm, IO), 0);
    assert_true(ioapic_attach(&vm, IO) < 0); /* twice: busy */
    uint8_t b[4] = {IOAPIC_REG_VER, 0, 0, 0};
    assert_true(bus_access(&vm.mmio, LAYOUT_IOAPIC_BASE, b, 4, true));
    assert_true(bus_access(&vm.mmio, LAYOUT_IOAPIC_BASE + 0x10, b, 4, false));
    assert_int_equal(b[0], 0x11);
    assert_int_equal(b[2], 23);
}

static void test_state(void **state)
{
    io_wr(IO, IOAPIC_REG_ID, 0x05000000);
    route(IO, 9, 0x39 | IOAPIC_RTE_LEVEL, 3);
    route(IO, 4, 0x34, 1);
    ioapic_set_irq(IO, 9, 1);
    struct ioapic_state s, s2;
    ioapic_get_state(IO, &s);
    assert_int_equal(s.base_address, LAYOUT_IOAPIC_BASE);
    assert_int_equal(s.id, 5);
    assert_int_equal(s.irr, 1u << 9);
    assert_true(s.redirtbl[9] & IOAPIC_RTE_REMOTE_IRR);
    assert_int_equal(s.redirtbl[9] >> 56, 3);

    struct rec r2 = {.accept = 1};
    struct ioapic *io = ioapic_create(NULL, rec_deliver, &r2);
    assert_int_equal(ioapic_set_state(io, &s), 0);
    ioapic_get_state(io, &s2);
    assert_memory_equal(&s, &s2, sizeof(s));
    assert_int_equal(r2.n, 0); /* loading delivers nothing */
    ioapic_eoi(io, 0x39);      /* the restored line is asserted: delivered after EOI */
    assert_int_equal(r2.n, 1);

    struct ioapic_state bad;
    bad = s, bad.base_address = 0xfec01000;
    assert_int_equal(ioapic_set_state(io, &bad), -EINVAL);
    bad = s, bad.id = 16;
    assert_int_equal(ioapic_set_state(io, &bad), -EINVAL);
    bad = s, bad.ioregsel = 0x100;
    assert_int_equal(ioapic_set_state(io, &bad), -EINVAL);
    bad = s, bad.irr = 1u << 24;
    assert_int_equal(ioapic_set_state(io, &bad), -EINVAL);
    bad = s, bad.redirtbl[3] = 1ull << 20;
    assert_int_equal(ioapic_set_state(io, &bad), -EINVAL);
    bad = s, bad.redirtbl[4] |= IOAPIC_RTE_REMOTE_IRR; /* edge entry */
    assert_int_equal(ioapic_set_state(io, &bad), -EINVAL);
    ioapic_get_state(io, &s2);
    assert_memory_equal(&s, &s2, sizeof(s)); /* rejected loads change nothing */
    ioapic_destroy(io);
}

/* A device thread toggles a level line while the vCPU thread takes and EOIs the interrupt: no
 * deadlock (IOAPIC -> LAPIC lock order), no lost Remote IRR. */
static struct ioapic *IO3;
static void eoi_to_io3(void *ctx, int v)
{
    ioapic_eoi(IO3, v);
}
static void *toggler(void *arg)
{
    for (int i = 0; i < 20000; i++) {
        ioapic_set_irq(IO3, 7, 1);
        ioapic_set_irq(IO3, 7, 0);
    }
    return NULL;
}

static void test_concurrent_level(void **state)
{
    struct lapic_bus bus;
    lapic_bus_init(&bus, eoi_to_io3, NULL);
    struct lapic *l = lapic_create(NULL, &bus, 0, true, NULL, NULL);
    IO3 = ioapic_create(NULL, lapic_bus_deliver_cb, &bus);
    lapic_reg_write(l, APIC_SVR, 0x1ff, 0);
    route(IO3, 7, 0x47 | IOAPIC_RTE_LEVEL, 0);
    pthread_t t;
    pthread_create(&t, NULL, toggler, NULL);
    int taken = 0;
    for (int i = 0; i < 40000; i++) {
        int v = lapic_pending_vector(l);
        if (v < 0) continue;
        lapic_accept(l, v);
        lapic_reg_write(l, APIC_EOI, 0, 0);
        taken++;
    }
    pthread_join(t, NULL);
    while (lapic_pending_vector(l) >= 0) {
        lapic_accept(l, lapic_pending_vector(l));
        lapic_reg_write(l, APIC_EOI, 0, 0);
    }
    assert_false(io_rd(IO3, 0x10 + 14) & IOAPIC_RTE_REMOTE_IRR);
    assert_int_equal(lapic_reg_read(l, APIC_ISR + 0x20, 0), 0);
    (void)taken;
    ioapic_destroy(IO3);
    lapic_destroy(l);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_registers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_edge, setup, teardown),
        cmocka_unit_test_setup_teardown(test_level, setup, teardown),
        cmocka_unit_test_setup_teardown(test_with_lapics, setup, teardown),
        cmocka_unit_test_setup_teardown(test_attach_mmio, setup, teardown),
        cmocka_unit_test_setup_teardown(test_state, setup, teardown),
        cmocka_unit_test(test_concurrent_level),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
