/* Unit tests for the i8042 controller: the probe sequence Linux's i8042 driver sends, and the
 * reset paths (command 0xFE, output-port write). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "devices/i8042.h"
#include "legacy_fakevm.h"
#include "machine/layout.h"

static int setup(void **state)
{
    struct vm *vm = calloc(1, sizeof(*vm));
    fake_vm_init(vm);
    assert_int_equal(i8042_attach(vm), 0);
    *state = vm;
    return 0;
}

static int teardown(void **state)
{
    struct vm *vm = *state;
    i8042_detach(vm);
    assert_int_equal(vm->pio.n, 0);
    free(vm);
    return 0;
}

/* What i8042_command() does: write the command, then wait for OBF and read the reply. */
static int command(struct vm *vm, uint8_t cmd, int param, int *reply)
{
    assert_false(inb(vm, PORT_I8042_CMD) & 0x02); /* input buffer empty */
    outb(vm, PORT_I8042_CMD, cmd);
    if (param >= 0) outb(vm, PORT_I8042_DATA, (uint8_t)param);
    if (!reply) return 0;
    if (!(inb(vm, PORT_I8042_CMD) & 0x01)) return -1;
    *reply = inb(vm, PORT_I8042_DATA);
    return 0;
}

static void test_probe_sequence(void **state)
{
    struct vm *vm = *state;
    int r;
    /* i8042_flush: nothing to drain, and the status is not 0xff */
    uint8_t st = inb(vm, PORT_I8042_CMD);
    assert_int_not_equal(st, 0xff);
    assert_false(st & 0x01);
    assert_int_equal(command(vm, 0xaa, -1, &r), 0);
    assert_int_equal(r, 0x55);
    int ctr1, ctr2;
    assert_int_equal(command(vm, 0x20, -1, &ctr1), 0);
    assert_int_equal(command(vm, 0x20, -1, &ctr2), 0);
    assert_int_equal(ctr1, ctr2);
    assert_int_equal(command(vm, 0x60, ctr1 & ~0x03, NULL), 0);
    assert_int_equal(command(vm, 0x20, -1, &r), 0);
    assert_int_equal(r, ctr1 & ~0x03);
    assert_int_equal(command(vm, 0xab, -1, &r), 0);
    assert_int_equal(r, 0);
    assert_int_equal(command(vm, 0xa9, -1, &r), 0);
    assert_int_equal(r, 0);
    /* aux port toggling is reflected in the command byte (i8042_toggle_aux) */
    command(vm, 0xa7, -1, NULL);
    command(vm, 0x20, -1, &r);
    assert_true(r & 0x20);
    command(vm, 0xa8, -1, NULL);
    command(vm, 0x20, -1, &r);
    assert_false(r & 0x20);
    command(vm, 0xad, -1, NULL);
    command(vm, 0x20, -1, &r);
    assert_true(r & 0x10);
    command(vm, 0xae, -1, NULL);
    command(vm, 0x20, -1, &r);
    assert_false(r & 0x10);
    /* aux loopback echoes with the aux-data status bit */
    outb(vm, PORT_I8042_CMD, 0xd3);
    outb(vm, PORT_I8042_DATA, 0x5a);
    assert_int_equal(inb(vm, PORT_I8042_CMD) & 0x21, 0x21);
    assert_int_equal(inb(vm, PORT_I8042_DATA), 0x5a);
    assert_false(inb(vm, PORT_I8042_CMD) & 0x01);
    assert_false(vm_stopping(vm));
}

static void test_absent_keyboard_answers_fast(void **state)
{
    struct vm *vm = *state;
    outb(vm, PORT_I8042_DATA, 0xff); /* "reset" to the keyboard */
    uint8_t st = inb(vm, PORT_I8042_CMD);
    assert_true(st & 0x01);
    assert_true(st & 0x40); /* timeout: nobody there */
    assert_int_equal(inb(vm, PORT_I8042_DATA), 0xfe);
    assert_int_equal(inb(vm, PORT_I8042_CMD) & 0x41, 0);
}

static void test_irqs_follow_output_buffer(void **state)
{
    struct vm *vm = *state;
    int ctr;
    command(vm, 0x20, -1, &ctr);
    assert_true(ctr & 0x01);
    /* a controller reply with KBDINT set raises IRQ 1 until the data is read */
    outb(vm, PORT_I8042_CMD, 0xaa);
    assert_int_equal(fake_irq.level[1], 1);
    inb(vm, PORT_I8042_DATA);
    assert_int_equal(fake_irq.level[1], 0);
    /* aux data raises IRQ 12 */
    outb(vm, PORT_I8042_CMD, 0xd4);
    outb(vm, PORT_I8042_DATA, 0xf2);
    assert_int_equal(fake_irq.level[12], 1);
    assert_int_equal(fake_irq.level[1], 0);
    inb(vm, PORT_I8042_DATA);
    assert_int_equal(fake_irq.level[12], 0);
    /* with interrupts disabled in the command byte, nothing */
    command(vm, 0x60, ctr & ~0x03, NULL);
    outb(vm, PORT_I8042_CMD, 0xaa);
    assert_int_equal(fake_irq.level[1], 0);
    assert_int_equal(inb(vm, PORT_I8042_DATA), 0x55);
}

static void test_reset_command(void **state)
{
    struct vm *vm = *state;
    outb(vm, PORT_I8042_CMD, 0xfe);
    assert_true(vm_stopping(vm));
    assert_int_equal(vm->stop_reason, VM_STOP_RESET);
}

static void test_reset_via_output_port(void **state)
{
    struct vm *vm = *state;
    outb(vm, PORT_I8042_CMD, 0xd1);
    outb(vm, PORT_I8042_DATA, 0x03); /* reset line stays high: nothing */
    assert_false(vm_stopping(vm));
    outb(vm, PORT_I8042_CMD, 0xd1);
    outb(vm, PORT_I8042_DATA, 0x02);
    assert_int_equal(vm->stop_reason, VM_STOP_RESET);
}

static void test_state_round_trip(void **state)
{
    struct vm *vm = *state;
    outb(vm, PORT_I8042_CMD, 0xaa); /* reply 0x55 waiting, IRQ 1 up */
    outb(vm, PORT_I8042_CMD, 0x60); /* and a command waiting for its data byte */
    struct i8042_state st;
    assert_int_equal(i8042_get_state(vm, &st), 0);
    struct vm *vm2 = calloc(1, sizeof(*vm2));
    fake_vm_init(vm2);
    assert_int_equal(i8042_attach(vm2), 0);
    assert_int_equal(i8042_set_state(vm2, &st), 0);
    assert_int_equal(fake_irq.level[1], 1);
    assert_int_equal(inb(vm2, PORT_I8042_DATA), 0x55);
    outb(vm2, PORT_I8042_DATA, 0x00); /* completes the pending 0x60: command byte 0 */
    int r;
    command(vm2, 0x20, -1, &r);
    assert_int_equal(r, 0);
    struct i8042_state bad = st;
    bad.pending_cmd = 0x20;
    assert_int_equal(i8042_set_state(vm2, &bad), -EINVAL);
    i8042_detach(vm2);
    free(vm2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_probe_sequence, setup, teardown),
        cmocka_unit_test_setup_teardown(test_absent_keyboard_answers_fast, setup, teardown),
        cmocka_unit_test_setup_teardown(test_irqs_follow_output_buffer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reset_command, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reset_via_output_port, setup, teardown),
        cmocka_unit_test_setup_teardown(test_state_round_trip, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
