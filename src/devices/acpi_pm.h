/* The hardware-reduced ACPI power-management registers the FADT points at (machine/layout.h):
 *   PORT_ACPI_SLEEP_CTL  write SLP_EN (bit 5) with SLP_TYP (bits 2-4) == ACPI_S5_SLP_TYP: power off
 *                        (VM_STOP_POWEROFF); other sleep types are ignored with a log line.
 *   PORT_ACPI_SLEEP_STS  WAK_STS (bit 7), write-1-to-clear; reads 0x80 after an ignored sleep so
 *                        the guest's "wait for wake" loop ends.
 *   PORT_ACPI_RESET      writing ACPI_RESET_VALUE resets (VM_STOP_RESET).
 * Reads of the control and reset registers return 0. */
#pragma once
#include <stdint.h>

struct vm;

int acpi_pm_attach(struct vm *vm);

/* Guest-visible state for snapshots (the sleep status register); -ENODEV without the device. */
struct acpi_pm_state {
    uint8_t sleep_sts;
};
int acpi_pm_get_state(struct vm *vm, struct acpi_pm_state *s);
int acpi_pm_set_state(struct vm *vm, const struct acpi_pm_state *s);
void acpi_pm_detach(struct vm *vm);
