/* A 16550A UART (the PC serial port) on the port-I/O bus.
 *
 * Model: a National Semiconductor 16550A as Linux's 8250 driver autodetects it ("16550A", 16-byte
 * FIFOs).  Transmission is instantaneous: a byte written to THR is handed to the `out` callback at
 * once, so THR/TSR are always empty again when the write returns and LSR always shows THRE|TEMT.
 * Reception has a 16-byte FIFO (1-byte holding register when FIFOs are off).  Because input
 * arrives in batches from the console, the "character timeout" condition is considered met as
 * soon as a batch has been queued: IIR reports 0x0C (timeout) below the trigger level and 0x04
 * (data available) at or above it; either way the guest drains the FIFO until LSR.DR clears.
 *
 * Interrupts: the IRQ pin is the highest-priority pending source (RX line status > RX data or
 * timeout > THR empty > modem status) enabled in IER, gated by MCR.OUT2 as on PC boards, and
 * forced inactive in loopback mode (the OUT2 pin is held inactive there).  The level is sent to the
 * irq_line only when it changes, with the device lock held so level changes reach the interrupt
 * controller in the order they happened; a THR write while the THRE interrupt is pending lowers and
 * raises the line again, so an edge-triggered IOAPIC pin sees a new edge per byte, as on hardware.
 *
 * Trusts: nothing from the guest; every register value is masked to its defined bits.
 * Threads: vCPU threads (register accesses) and the console thread (uart_receive) call in
 * concurrently; one mutex per UART serialises them.  The `out` callback and the rx-space notifier
 * run with that mutex held, so they must not block for long and must not call back into the UART.
 */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct vm;
struct uart16550;

typedef void (*uart_out_fn)(void *ctx, const uint8_t *buf, size_t n);

/* Registers ports port..port+7 on vm->pio and wires the interrupt to GSI `gsi` through
 * vm_irq_set.  Returns NULL with err_set() on failure (ports taken, out of memory). */
struct uart16550 *uart_attach(struct vm *vm, uint16_t port, unsigned gsi, uart_out_fn out,
                              void *ctx);

/* Replaces the output callback (NULL drops output).  When this returns, no call to the previous
 * callback is in progress or will start, so its context may be freed. */
void uart_set_output(struct uart16550 *u, uart_out_fn out, void *ctx);
/* Installs `out` only if the UART has no output callback yet; returns whether it did. */
bool uart_hook_output(struct uart16550 *u, uart_out_fn out, void *ctx);

/* Teardown (no vCPU may be running): unregisters the ports and frees the UART. */
void uart_detach(struct vm *vm, struct uart16550 *u);

/* Queues received bytes (host -> guest).  Returns how many bytes were accepted: at most the room
 * left in the RX FIFO (16 bytes, 1 with FIFOs disabled), 0 in loopback mode (the serial input is
 * disconnected there).  Bytes not accepted are the caller's to hold and offer again; see
 * uart_set_rx_notify().  Never overruns: an overrun only happens for bytes the guest itself sends
 * in loopback mode. */
size_t uart_receive(struct uart16550 *u, const uint8_t *buf, size_t n);

/* `notify(ctx)` is called (with the UART lock held; keep it to an eventfd write or similar)
 * when the RX FIFO has become empty after uart_receive() refused bytes, so the holder of those
 * bytes can offer them again. */
void uart_set_rx_notify(struct uart16550 *u, void (*notify)(void *ctx), void *ctx);

/* The guest-visible state, for snapshots and migration: plain data, no pointers.  rx[0] is the
 * oldest received byte.  The IRQ level is not part of it: it follows from the registers. */
struct uart_state {
    uint8_t ier, lcr, mcr, lsr, msr, scr, fcr;
    uint8_t thre_pending; /* 0 or 1 */
    uint16_t divisor;
    uint8_t rx_count;
    uint8_t rx[16];
};
void uart_get_state(struct uart16550 *u, struct uart_state *s);
/* Refuses (-EINVAL, err_set() saying which field) a state no 16550A can be in (bits it does not
 * implement, more bytes than the FIFO holds); then drives the IRQ pin to the restored level. */
int uart_set_state(struct uart16550 *u, const struct uart_state *s);

/* For the board and tests: the level the IRQ pin currently has. */
bool uart_irq_level(struct uart16550 *u);
