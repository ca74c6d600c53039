/* Unit tests for the test exit port (raw value, any width) and the HW-reduced ACPI sleep/reset
 * registers (S5 powers off, other sleep types do not, the reset value resets). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "devices/acpi_pm.h"
#include "devices/exitport.h"
#include "legacy_fakevm.h"
#include "machine/layout.h"

static int setup(void **state)
{
    struct vm *vm = calloc(1, sizeof(*vm));
    fake_vm_init(vm);
    assert_int_equal(exitport_attach(vm), 0);
    assert_int_equal(acpi_pm_attach(vm), 0);
    assert_int_equal(exitport_attach(vm), -EBUSY);
    *state = vm;
    return 0;
}

static int teardown(void **state)
{
    struct vm *vm = *state;
    exitport_detach(vm);
    acpi_pm_detach(vm);
    assert_int_equal(vm->pio.n, 0);
    free(vm);
    return 0;
}

static void test_exit_port_32bit(void **state)
{
    struct vm *vm = *state;
    assert_int_equal(inb(vm, PORT_EXIT), 0xff);
    assert_false(vm_stopping(vm));
    outl(vm, PORT_EXIT, 0x21);
    assert_int_equal(vm->stop_reason, VM_STOP_EXIT_PORT);
    assert_int_equal(vm->exit_code, 0x21); /* raw: the CLI makes (v << 1) | 1 */
}

static void test_exit_port_byte(void **state)
{
    struct vm *vm = *state;
    outb(vm, PORT_EXIT, 0);
    assert_int_equal(vm->stop_reason, VM_STOP_EXIT_PORT);
    assert_int_equal(vm->exit_code, 0);
}

static void test_first_stop_reason_wins(void **state)
{
    struct vm *vm = *state;
    outb(vm, PORT_EXIT, 3);
    outb(vm, PORT_ACPI_RESET, ACPI_RESET_VALUE);
    assert_int_equal(vm->stop_reason, VM_STOP_EXIT_PORT);
    assert_int_equal(vm->exit_code, 3);
}

static void test_acpi_s5_powers_off(void **state)
{
    struct vm *vm = *state;
    outb(vm, PORT_ACPI_SLEEP_CTL, ACPI_S5_SLP_TYP << 2); /* no SLP_EN: nothing */
    assert_false(vm_stopping(vm));
    outb(vm, PORT_ACPI_SLEEP_CTL, 3 << 2 | 0x20); /* S3: ignored, "wakes" */
    assert_false(vm_stopping(vm));
    assert_int_equal(inb(vm, PORT_ACPI_SLEEP_STS), 0x80);
    outb(vm, PORT_ACPI_SLEEP_STS, 0x80); /* write 1 to clear */
    assert_int_equal(inb(vm, PORT_ACPI_SLEEP_STS), 0x00);
    outb(vm, PORT_ACPI_SLEEP_CTL, ACPI_S5_SLP_TYP << 2 | 0x20);
    assert_int_equal(vm->stop_reason, VM_STOP_POWEROFF);
}

static void test_acpi_reset(void **state)
{
    struct vm *vm = *state;
    outb(vm, PORT_ACPI_RESET, ACPI_RESET_VALUE + 1);
    assert_false(vm_stopping(vm));
    outb(vm, PORT_ACPI_RESET, ACPI_RESET_VALUE);
    assert_int_equal(vm->stop_reason, VM_STOP_RESET);
}

static void dummy_rw(void *o, uint64_t off, uint8_t *d, unsigned n) {}
static void dummy_w(void *o, uint64_t off, const uint8_t *d, unsigned n) {}
static const struct bus_ops dummy_ops = {dummy_rw, dummy_w};

static void test_detach_keeps_other_devices(void **state)
{
    struct vm *vm = *state;
    /* another device that also uses the vm as its opaque must survive the exit port's detach */
    assert_int_equal(bus_register(&vm->pio, 0x80, 1, &dummy_ops, vm, "dummy"), 0);
    exitport_detach(vm);
    assert_non_null(bus_find(&vm->pio, 0x80));
    assert_null(bus_find(&vm->pio, PORT_EXIT));
    acpi_pm_detach(vm);
    assert_int_equal(vm->pio.n, 1);
    vm->pio.n = 0; /* drop the dummy too, so teardown's check holds */
}

static void test_pm_state(void **state)
{
    struct vm *vm = *state;
    struct acpi_pm_state st = {.sleep_sts = 0x80};
    assert_int_equal(acpi_pm_set_state(vm, &st), 0);
    assert_int_equal(inb(vm, PORT_ACPI_SLEEP_STS), 0x80);
    st.sleep_sts = 0;
    assert_int_equal(acpi_pm_get_state(vm, &st), 0);
    assert_int_equal(st.sleep_sts, 0x80);
    st.sleep_sts = 0x01;
    assert_int_equal(acpi_pm_set_state(vm, &st), -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_exit_port_32bit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_exit_port_byte, setup, teardown),
        cmocka_unit_test_setup_teardown(test_first_stop_reason_wins, setup, teardown),
        cmocka_unit_test_setup_teardown(test_acpi_s5_powers_off, setup, teardown),
        cmocka_unit_test_setup_teardown(test_acpi_reset, setup, teardown),
        cmocka_unit_test_setup_teardown(test_detach_keeps_other_devices, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pm_state, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
