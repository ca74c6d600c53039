/* Glue between the software CPU and the user-space LAPIC, IOAPIC and PIT (devices/lapic.h,
 * ioapic.h, pit.h): everything the CPU needs from those devices goes through these functions, so
 * the CPU files never deal with virtual time or device locking.
 *
 * Time: the devices count in virtual ns (devices/vclock.h); the guest TSC is vclock_tsc() plus
 * the vCPU's own offset (IA32_TSC writes).
 * Trust: offsets and values come from the guest; the device code checks them. */
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "cpu/bt/bt.h"

/* vCPU side (c->lapic is NULL under bt_emulate_one: the KVM backend's LAPIC is in the kernel) */
int bt_glue_lapic_create(struct bt_cpu *c);
void bt_glue_lapic_destroy(struct bt_cpu *c);
bool bt_glue_is_lapic_page(struct bt_cpu *c, uint64_t gpa);
void bt_glue_lapic_read(struct bt_cpu *c, uint32_t off, uint8_t *data, unsigned size);
void bt_glue_lapic_write(struct bt_cpu *c, uint32_t off, const uint8_t *data, unsigned size);
/* Highest-priority deliverable vector (respecting TPR/ISR), or -1; accept moves it IRR -> ISR. */
int bt_glue_lapic_pending(struct bt_cpu *c);
void bt_glue_lapic_accept(struct bt_cpu *c, int vector);
/* CR8 <-> TPR[7:4] */
uint64_t bt_glue_get_cr8(struct bt_cpu *c);
void bt_glue_set_cr8(struct bt_cpu *c, uint64_t v);
/* IA32_APIC_BASE: false if the value must raise #GP. */
bool bt_glue_set_apic_base(struct bt_cpu *c, uint64_t v, unsigned maxphy);
uint64_t bt_glue_get_tsc_deadline(struct bt_cpu *c);
void bt_glue_set_tsc_deadline(struct bt_cpu *c, uint64_t tsc);
/* Guest TSC of this vCPU now (vclock plus c->tsc_offset). */
uint64_t bt_glue_tsc(struct bt_cpu *c);
/* Virtual ns of the next timer event of this vCPU's LAPIC (and the PIT on vCPU 0), INT64_MAX if
 * none; bt_glue_timers fires what has expired. */
int64_t bt_glue_next_event_ns(struct bt_cpu *c);
void bt_glue_timers(struct bt_cpu *c);
int64_t bt_glue_now(void);
/* NMI/INIT/SIPI from IPIs; consumed by bt_check_interrupts. */
bool bt_glue_attention(struct bt_cpu *c);
bool bt_glue_take_nmi(struct bt_cpu *c);
bool bt_glue_take_init(struct bt_cpu *c);
int bt_glue_take_sipi(struct bt_cpu *c); /* vector or -1 */
void bt_glue_set_wait_for_sipi(struct bt_cpu *c, bool wait);

/* VM side */
int bt_glue_vm_create(struct vm *vm);
void bt_glue_vm_destroy(struct vm *vm);
int bt_glue_irq_line(struct vm *vm, unsigned gsi, int level);
int bt_glue_get_lapic(struct bt_cpu *c, struct lapic_state *s);
int bt_glue_set_lapic(struct bt_cpu *c, const struct lapic_state *s);
int bt_glue_get_ioapic(struct vm *vm, struct ioapic_state *s);
int bt_glue_set_ioapic(struct vm *vm, const struct ioapic_state *s);
int bt_glue_get_pit(struct vm *vm, struct pit_state *s);
int bt_glue_set_pit(struct vm *vm, const struct pit_state *s);
