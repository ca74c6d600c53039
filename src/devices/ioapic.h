/* User-space I/O APIC (82093AA, version 0x11, 24 pins) for the software CPU backend.
 *
 * Trust: register writes come from the guest and are masked to their defined bits; restored state
 * is validated.  Pin levels come from device models through ioapic_set_irq (any thread).
 *
 * Lines are logical: level 1 means "asserted" whatever the entry's polarity bit says (the
 * polarity is stored for the guest to read back), as KVM's in-kernel IOAPIC treats them.
 *   edge-triggered entry:  a rising edge of an unmasked pin delivers once; edges on a masked pin
 *                          are lost (82093AA datasheet, 3.2.4).
 *   level-triggered entry: while asserted and unmasked with Remote IRR clear, the pin delivers and
 *                          sets Remote IRR; the LAPIC's EOI broadcast of that vector clears Remote
 *                          IRR and the pin re-delivers if still asserted.  Unmasking an asserted
 *                          pin delivers (as KVM and QEMU do; the datasheet ignores level changes
 *                          while masked, but a line still high after unmasking is a pending
 *                          request, and Linux's mask/handle/unmask of level IRQs relies on it).
 * state.irr holds the asserted level-triggered pins (and, like KVM, edge pins whose interrupt is
 * not yet delivered: none here, since delivery is synchronous).
 *
 * No EOI register (that is version 0x20).  Delivery is synchronous, so Delivery Status reads 0.
 * Locking: one mutex; deliver() is called with it held and must only take LAPIC locks (the
 * LAPIC never calls back into the IOAPIC while holding its own lock). */
#pragma once
#include <stdint.h>

#include "devices/lapic.h"
#include "x86/irqchip.h"

struct vm;
struct ioapic;

#define IOAPIC_VERSION    0x11
#define IOAPIC_MMIO_SIZE  0x1000
#define IOAPIC_REG_ID     0x00
#define IOAPIC_REG_VER    0x01
#define IOAPIC_REG_ARB    0x02
#define IOAPIC_REG_REDTBL 0x10 /* pin n: low half 0x10 + 2n, high half 0x11 + 2n */

#define IOAPIC_RTE_MASKED     (1ull << 16)
#define IOAPIC_RTE_LEVEL      (1ull << 15)
#define IOAPIC_RTE_REMOTE_IRR (1ull << 14)
#define IOAPIC_RTE_POLARITY   (1ull << 13)
#define IOAPIC_RTE_DS         (1ull << 12)
#define IOAPIC_RTE_LOGICAL    (1ull << 11)
/* bits the guest can write: vector, delivery mode, dest mode, polarity, trigger, mask, dest */
#define IOAPIC_RTE_WRITABLE 0xff0000000001afffull

/* Routes one message to the LAPICs (lapic_bus_deliver_cb with the struct lapic_bus as ctx);
 * returns how many LAPICs accepted it. */
typedef int (*ioapic_deliver_fn)(void *ctx, const struct apic_irq *irq);

/* Creates an IOAPIC in its reset state (all pins masked, ID 0).  vm may be NULL (tests). */
struct ioapic *ioapic_create(struct vm *vm, ioapic_deliver_fn deliver, void *deliver_ctx);
void ioapic_destroy(struct ioapic *io);
/* Registers the MMIO window [LAYOUT_IOAPIC_BASE, +IOAPIC_MMIO_SIZE) on vm->mmio (the bt backend
 * calls it once, before vCPUs run).  -errno with err_set() if the range is taken. */
int ioapic_attach(struct vm *vm, struct ioapic *io);

/* MMIO at `offset` from the base: IOREGSEL at 0x00, IOWIN at 0x10.  Reads of 1/2/4 bytes within
 * one of them are served; writes to IOWIN must be 4 bytes.  Anything else reads 0 / is ignored. */
void ioapic_mmio_read(struct ioapic *io, uint64_t offset, uint8_t *data, unsigned size);
void ioapic_mmio_write(struct ioapic *io, uint64_t offset, const uint8_t *data, unsigned size);

/* Pin `pin` (= GSI) to `level` (0 de-asserted, nonzero asserted); pins >= 24 are ignored. */
void ioapic_set_irq(struct ioapic *io, unsigned pin, int level);
/* An irq_line-compatible adapter: ctx = the IOAPIC, gsi = the pin. */
void ioapic_irq_line_cb(void *ctx, unsigned gsi, int level);
/* EOI broadcast from a LAPIC for `vector` (wire to lapic_bus_init's eoi with the IOAPIC). */
void ioapic_eoi(struct ioapic *io, int vector);
void ioapic_eoi_cb(void *ctx, int vector);

void ioapic_get_state(struct ioapic *io, struct ioapic_state *s);
/* -EINVAL with err_set() for a base other than LAYOUT_IOAPIC_BASE, an ID > 15, IOREGSEL > 0xff,
 * reserved bits in an entry, Remote IRR on an edge entry, or IRR bits beyond pin 23.  Loading
 * delivers nothing; pins asserted in state.irr count as the current line levels. */
int ioapic_set_state(struct ioapic *io, const struct ioapic_state *s);
