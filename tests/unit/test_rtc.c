/* Unit tests for the MC146818 RTC: time from a fake host clock in BCD and binary, 12/24-hour,
 * the UIP window, register D, guest-set time, CMOS memory and the NMI bit of the index. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <unistd.h>

#include "devices/rtc.h"
#include "legacy_fakevm.h"
#include "machine/layout.h"

/* 2026-11-22 21:05:09 UTC (a Sunday), plus a settable fraction of a second */
#define T0 1795381509ll
static _Atomic int64_t fake_now; /* the RTC timer thread reads it too */
static int64_t fake_clock(void)
{
    return fake_now;
}

static uint8_t rd(struct vm *vm, uint8_t idx)
{
    outb(vm, PORT_RTC, idx);
    return inb(vm, PORT_RTC + 1);
}

static void wr(struct vm *vm, uint8_t idx, uint8_t v)
{
    outb(vm, PORT_RTC, idx);
    outb(vm, PORT_RTC + 1, v);
}

static int setup(void **state)
{
    struct vm *vm = calloc(1, sizeof(*vm));
    fake_vm_init(vm);
    rtc_host_clock_ns = fake_clock;
    fake_now = T0 * 1000000000ll + 500000000ll;
    assert_int_equal(rtc_attach(vm), 0);
    *state = vm;
    return 0;
}

static int teardown(void **state)
{
    struct vm *vm = *state;
    rtc_detach(vm);
    assert_int_equal(vm->pio.n, 0);
    free(vm);
    return 0;
}

static void test_bcd_time(void **state)
{
    struct vm *vm = *state;
    assert_int_equal(rd(vm, 0x0b) & 0x06, 0x02); /* BCD, 24h by default */
    assert_int_equal(rd(vm, 0x00), 0x09);
    assert_int_equal(rd(vm, 0x02), 0x05);
    assert_int_equal(rd(vm, 0x04), 0x21);
    assert_int_equal(rd(vm, 0x06), 0x01); /* Sunday */
    assert_int_equal(rd(vm, 0x07), 0x22);
    assert_int_equal(rd(vm, 0x08), 0x11);
    assert_int_equal(rd(vm, 0x09), 0x26);
    assert_int_equal(rd(vm, 0x32), 0x20);
    fake_now += 2 * 1000000000ll; /* the clock runs */
    assert_int_equal(rd(vm, 0x00), 0x11);
}

static void test_binary_and_12h(void **state)
{
    struct vm *vm = *state;
    wr(vm, 0x0b, 0x04); /* binary, 12-hour */
    assert_int_equal(rd(vm, 0x00), 9);
    assert_int_equal(rd(vm, 0x04), 0x80 | 9); /* 9 PM */
    assert_int_equal(rd(vm, 0x09), 26);
    assert_int_equal(rd(vm, 0x32), 20);
    wr(vm, 0x0b, 0x00); /* BCD, 12-hour */
    assert_int_equal(rd(vm, 0x04), 0x89);
}

static void test_uip_and_reg_d(void **state)
{
    struct vm *vm = *state;
    assert_int_equal(rd(vm, 0x0d), 0x80); /* VRT, and bit 6 clear as Linux checks */
    assert_int_equal(rd(vm, 0x0a), 0x26);
    fake_now = T0 * 1000000000ll + 999900000ll; /* 100 us before the second rolls */
    assert_int_equal(rd(vm, 0x0a) & 0x80, 0x80);
    fake_now += 200000;
    assert_int_equal(rd(vm, 0x0a) & 0x80, 0);
    wr(vm, 0x0a, 0xff); /* UIP is read-only */
    fake_now = T0 * 1000000000ll;
    assert_int_equal(rd(vm, 0x0a), 0x7f);
}

static void test_guest_sets_time(void **state)
{
    struct vm *vm = *state;
    wr(vm, 0x0b, 0x82); /* SET: the guest edits a frozen copy */
    fake_now += 5 * 1000000000ll;
    assert_int_equal(rd(vm, 0x00), 0x09);
    assert_int_equal(rd(vm, 0x0a) & 0x80, 0); /* no update in progress while SET */
    wr(vm, 0x09, 0x30);                       /* 2030 */
    wr(vm, 0x04, 0x08);
    wr(vm, 0x0b, 0x02);
    assert_int_equal(rd(vm, 0x09), 0x30);
    assert_int_equal(rd(vm, 0x04), 0x08);
    fake_now += 60 * 1000000000ll;
    assert_int_equal(rd(vm, 0x02), 0x06); /* minutes keep running from the new time */
    /* a direct write while running changes that field */
    wr(vm, 0x02, 0x30);
    assert_int_equal(rd(vm, 0x02), 0x30);
    assert_int_equal(rd(vm, 0x09), 0x30);
}

static void test_cmos_memory_and_index(void **state)
{
    struct vm *vm = *state;
    wr(vm, 0x40, 0xab);
    wr(vm, 0x7f, 0xcd);
    assert_int_equal(rd(vm, 0x40), 0xab);
    assert_int_equal(rd(vm, 0xff), 0xcd); /* NMI-disable bit is not part of the index */
    wr(vm, 0x0d, 0x00);
    assert_int_equal(rd(vm, 0x0d), 0x80); /* D is read-only */
    assert_int_equal(inb(vm, PORT_RTC), 0xff);
}

static void test_reg_c_flags(void **state)
{
    struct vm *vm = *state;
    rd(vm, 0x0c);
    assert_int_equal(rd(vm, 0x0c), 0); /* nothing happened since */
    wr(vm, 0x0b, 0x12);                /* UIE */
    fake_now += 1000000000ll;
    uint8_t c = rd(vm, 0x0c);
    assert_true(c & 0x10);
    assert_true(c & 0x80);
    assert_int_equal(rd(vm, 0x0c) & 0x90, 0); /* cleared by reading */
}

static void test_irq8_update_interrupt(void **state)
{
    struct vm *vm = *state;
    rd(vm, 0x0c);
    wr(vm, 0x0b, 0x12); /* UIE: the timer thread starts */
    assert_int_equal(fake_irq.level[GSI_RTC], 0);
    fake_now += 1000000000ll; /* a second passes; the thread notices within its sleep (<= 1 s) */
    for (int i = 0; i < 300 && !fake_irq.level[GSI_RTC]; i++)
        usleep(10000);
    assert_int_equal(fake_irq.level[GSI_RTC], 1);
    uint8_t c = rd(vm, 0x0c);
    assert_int_equal(c & 0x90, 0x90);
    assert_int_equal(fake_irq.level[GSI_RTC], 0); /* reading C releases the line */
    wr(vm, 0x0b, 0x02);
    fake_now += 1000000000ll;
    usleep(50000);
    assert_int_equal(fake_irq.level[GSI_RTC], 0);
}

static void test_irq8_on_enable_with_latched_flag(void **state)
{
    struct vm *vm = *state;
    rd(vm, 0x0c);
    fake_now += 1000000000ll;
    wr(vm, 0x0b, 0x12); /* UF latched meanwhile: enabling UIE asserts at once */
    assert_int_equal(fake_irq.level[GSI_RTC], 1);
    rd(vm, 0x0c);
    assert_int_equal(fake_irq.level[GSI_RTC], 0);
}

static void test_periodic_flag(void **state)
{
    struct vm *vm = *state;
    rd(vm, 0x0c);
    fake_now += 2000000; /* 2 ms: at 1024 Hz a periodic tick passed */
    assert_true(rd(vm, 0x0c) & 0x40);
    wr(vm, 0x0a, 0x20); /* rate 0: periodic off */
    fake_now += 2000000;
    assert_false(rd(vm, 0x0c) & 0x40);
}

static void test_state_round_trip(void **state)
{
    struct vm *vm = *state;
    wr(vm, 0x0b, 0x82); /* the guest sets 2030-01-02 03:04:05 */
    wr(vm, 0x09, 0x30);
    wr(vm, 0x08, 0x01);
    wr(vm, 0x07, 0x02);
    wr(vm, 0x04, 0x03);
    wr(vm, 0x02, 0x04);
    wr(vm, 0x00, 0x05);
    wr(vm, 0x0b, 0x02); /* run (the registers were BCD) */
    wr(vm, 0x0b, 0x06); /* then binary, 24h */
    wr(vm, 0x50, 0x99);
    outb(vm, PORT_RTC, 0x09);
    struct rtc_state st;
    assert_int_equal(rtc_get_state(vm, &st), 0);
    assert_int_equal(st.index, 0x09);

    struct vm *vm2 = calloc(1, sizeof(*vm2));
    fake_vm_init(vm2);
    assert_int_equal(rtc_attach(vm2), 0);
    fake_now += 10 * 1000000000ll; /* restored 10 s later */
    assert_int_equal(rtc_set_state(vm2, &st), 0);
    assert_int_equal(inb(vm2, PORT_RTC + 1), 30); /* the index was restored too: year */
    assert_int_equal(rd(vm2, 0x00), 15);
    assert_int_equal(rd(vm2, 0x04), 3);
    assert_int_equal(rd(vm2, 0x50), 0x99);

    struct rtc_state bad = st;
    bad.index = 0x80;
    assert_int_equal(rtc_set_state(vm2, &bad), -EINVAL);
    bad = st;
    bad.offset_s = INT64_MAX;
    assert_int_equal(rtc_set_state(vm2, &bad), -EINVAL);
    rtc_detach(vm2);
    assert_int_equal(rtc_get_state(vm2, &st), -ENODEV);
    free(vm2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_bcd_time, setup, teardown),
        cmocka_unit_test_setup_teardown(test_binary_and_12h, setup, teardown),
        cmocka_unit_test_setup_teardown(test_uip_and_reg_d, setup, teardown),
        cmocka_unit_test_setup_teardown(test_guest_sets_time, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cmos_memory_and_index, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reg_c_flags, setup, teardown),
        cmocka_unit_test_setup_teardown(test_irq8_update_interrupt, setup, teardown),
        cmocka_unit_test_setup_teardown(test_irq8_on_enable_with_latched_flag, setup, teardown),
        cmocka_unit_test_setup_teardown(test_periodic_flag, setup, teardown),
        cmocka_unit_test_setup_teardown(test_state_round_trip, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
