/* The test exit port (isa-debug-exit compatible) at PORT_EXIT (0xf4).
 *
 * A write of 1, 2 or 4 bytes (8 is accepted too) stops the VM with VM_STOP_EXIT_PORT and
 * vm->exit_code = the RAW value written; cli/ turns it into the process status ((v << 1) | 1, as
 * QEMU's isa-debug-exit does, or v itself in command mode).  Reads return all-ones. */
#pragma once

struct vm;

int exitport_attach(struct vm *vm);
void exitport_detach(struct vm *vm);
