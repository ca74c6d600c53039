/* The i8042 keyboard controller at ports 0x60 (data) and 0x64 (status / command), without a
 * keyboard or mouse behind it: enough for Linux's i8042 probe and its reboot path.
 *
 * Controller commands: 0x20 read / 0x60 write the command byte, 0xAA self-test (-> 0x55),
 * 0xAB / 0xA9 keyboard / aux interface test (-> 0x00), 0xAD/0xAE and 0xA7/0xA8 disable/enable
 * the ports (reflected in the command byte), 0xD2/0xD3 loop a byte back as keyboard / aux data,
 * 0xD4 forward a byte to the aux device, 0xD0/0xD1 read/write the output port, 0xFE (and any
 * 0xF0-0xFF pulse that includes the reset line) stops the VM with VM_STOP_RESET.
 * Bytes sent to the absent keyboard or mouse get 0xFE with the timeout status bit, so Linux's PS/2
 * drivers give up at once instead of waiting for a device.  The output buffer raises IRQ 1
 * (keyboard-side data) or IRQ 12 (aux data) while it is full and the command byte enables that
 * interrupt, as on a PC; Linux disables both while it probes and polls the status port. */
#pragma once
#include <stdint.h>

struct vm;

int i8042_attach(struct vm *vm);

/* Guest-visible state for snapshots; -ENODEV without an i8042, -EINVAL for impossible states. */
struct i8042_state {
    uint8_t status, ctr, outport, out, pending_cmd;
};
int i8042_get_state(struct vm *vm, struct i8042_state *s);
int i8042_set_state(struct vm *vm, const struct i8042_state *s);
void i8042_detach(struct vm *vm);
