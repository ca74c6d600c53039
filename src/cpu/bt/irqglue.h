/* TEMPORARY glue between the software CPU and the user-space LAPIC/IOAPIC/PIT of helper "lapic"
 * (src/devices/lapic.h etc., not merged yet).  Everything the CPU needs from those devices goes
 * through these few functions, so wiring the real devices in means rewriting irqglue.c only.
 * Until then: no LAPIC page (reads all-ones), no pending interrupts, TPR kept here.
 *
 * Trust: offsets and values come from the guest; the device code checks them. */
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "cpu/bt/bt.h"

int bt_glue_lapic_create(struct bt_cpu *c);
void bt_glue_lapic_destroy(struct bt_cpu *c);
void bt_glue_lapic_read(struct bt_cpu *c, uint32_t off, uint8_t *data, unsigned size);
void bt_glue_lapic_write(struct bt_cpu *c, uint32_t off, const uint8_t *data, unsigned size);
/* Highest-priority deliverable vector (respecting TPR/ISR), or -1. */
int bt_glue_lapic_pending(struct bt_cpu *c);
/* The CPU takes `vector`: IRR -> ISR. */
void bt_glue_lapic_accept(struct bt_cpu *c, int vector);
/* CR8 <-> TPR[7:4] */
uint64_t bt_glue_get_cr8(struct bt_cpu *c);
void bt_glue_set_cr8(struct bt_cpu *c, uint64_t v);
void bt_glue_set_tsc_deadline(struct bt_cpu *c, uint64_t tsc);
/* ns (CLOCK_MONOTONIC) of the next timer event of this vCPU's LAPIC or the VM's PIT, or -1. */
int64_t bt_glue_next_event_ns(struct bt_cpu *c);
/* Runs expired timers (called by the vCPU thread before checking for interrupts). */
void bt_glue_timers(struct bt_cpu *c);
/* NMI/INIT/SIPI pending for this vCPU (set by IPIs); consumed by bt_check_interrupts. */
bool bt_glue_take_nmi(struct bt_cpu *c);
bool bt_glue_take_init(struct bt_cpu *c);
int bt_glue_take_sipi(struct bt_cpu *c); /* vector or -1 */

/* Per-VM devices */
int bt_glue_vm_create(struct vm *vm);
void bt_glue_vm_destroy(struct vm *vm);
int bt_glue_irq_line(struct vm *vm, unsigned gsi, int level);
