/* Intel 8254 programmable interval timer (PIT) on ports 0x40-0x43, with the channel-2 gate and
 * speaker bits of port 0x61, for the software CPU backend.  Follows the 82C54 datasheet.
 *
 * Trust: every port write is guest input; restored state is validated.
 *
 * Channel 0's OUT drives `irq0` (the board passes GSI 2: the usual ISA override of IRQ 0), as a
 * pulse (assert, de-assert) on each rising edge of OUT: once per terminal count in modes 0 and 4,
 * every N input clocks in modes 2 and 3 (periods below PIT_MIN_IRQ_PERIOD_NS are stretched so a
 * guest cannot make an interrupt storm; missed periods are coalesced).  Channel 1 counts but
 * drives nothing; channel 2's OUT is readable in port 0x61 bit 5, which is how Linux calibrates.
 *
 * Modes 0, 2, 3, 4 count as the datasheet says; 1 and 5 (hardware-triggered) start on a rising
 * gate, which only channel 2 has.  As KVM does, the gate does not pause modes 0 and 4; a rising
 * gate restarts modes 1, 2, 3, 5, and OUT is held high while the gate is low in modes 2 and 3.
 * A control word stops channel 0's interrupts until the new count is written.  Counts are in
 * binary or BCD (the raw value written is kept, as KVM keeps it).
 *
 * Time: the input clock is PIT_FREQ_HZ from count_load_time (virtual ns); every time-dependent
 * function takes `now`.  pit_attach's port handlers use vclock_ns().  Thread-safe (one mutex;
 * irq0 is raised with it released). */
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "bus/bus.h"
#include "x86/irqchip.h"

struct vm;
struct pit;

#define PIT_FREQ_HZ   1193182
#define PIT_PORT_BASE 0x40 /* channels 0-2 at 0x40-0x42, control word at 0x43 */
#define PIT_PORT_CTRL 0x43
/* port 0x61, NMI status and control: bit 0 gate 2, bit 1 speaker data, bit 5 OUT2 */
#define PIT_PORT_61           0x61
#define PIT_MIN_IRQ_PERIOD_NS 50000

/* kvm_pit_channel_state read/write states */
#define PIT_RW_LSB            1
#define PIT_RW_MSB            2
#define PIT_RW_WORD0          3
#define PIT_RW_WORD1          4
#define PIT_MODE_UNPROGRAMMED 0xff /* as KVM resets it: no counting until a control word */

/* struct pit_state.flags: bits 1-3 of port 0x61 as last written (bit 0 is channels[2].gate);
 * KVM's flags (HPET legacy routing) are not supported. */
#define PIT_FLAGS_PORT61_SHIFT 8
#define PIT_FLAGS_PORT61_MASK  (0xeu << PIT_FLAGS_PORT61_SHIFT)

/* irq0 is copied; NULL or an irq_line without .set means channel 0 drives nothing. */
struct pit *pit_create(struct vm *vm, const struct irq_line *irq0);
void pit_destroy(struct pit *p);
/* Registers ports 0x40-0x43 and 0x61 on vm->pio.  -errno with err_set() if they are taken. */
int pit_attach(struct vm *vm, struct pit *p);

/* One byte of port I/O at `port` (0x40-0x43 or 0x61); other ports read 0xff / are ignored.
 * Port 0x43 is write-only and reads 0. */
uint8_t pit_port_read(struct pit *p, uint16_t port, int64_t now);
void pit_port_write(struct pit *p, uint16_t port, uint8_t val, int64_t now);

/* When channel 0 next raises irq0 (virtual ns), or INT64_MAX; lock-free. */
int64_t pit_next_event_ns(struct pit *p);
/* Raises irq0 if its time has come (at most one pulse per call) and schedules the next. */
void pit_update(struct pit *p, int64_t now);

void pit_get_state(struct pit *p, struct pit_state *s);
/* -EINVAL with err_set() on a count outside 1..65536, a mode other than 0-5/0xff, read/write or
 * latch states out of range, boolean fields other than 0/1, or unknown flags.  Channel 0's
 * schedule is re-derived from count_load_time and `now`. */
int pit_set_state(struct pit *p, const struct pit_state *s, int64_t now);
