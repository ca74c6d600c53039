/* The serial console: host terminal (or pipes) <-> a UART.
 *
 * Input: a thread reads in_fd and feeds the UART with uart_receive(), holding what the RX FIFO
 * cannot take and offering it again when the guest has drained the FIFO (the UART's rx notifier
 * wakes the thread), so pasted text is never dropped.  On EOF of in_fd it stops reading (the
 * guest keeps running).  With `interactive`, Ctrl-A starts an escape: Ctrl-A x quits the VM
 * (VM_STOP_QUIT), Ctrl-A Ctrl-A sends one Ctrl-A, Ctrl-A h prints help; any other byte after
 * Ctrl-A is sent as is together with the Ctrl-A.  If in addition in_fd is a terminal, it is put
 * in raw mode (no echo, no line editing, no signals: Ctrl-C goes to the guest) until
 * console_stop() or console_restore_terminal().
 *
 * Output: console_output() is the UART's `out` callback.  It copies the bytes into a bounded
 * buffer (64 KiB) that a writer thread drains to out_fd, so a vCPU never blocks on the host
 * terminal.  When the buffer is full the vCPU waits at most one second (console_set_output_wait)
 * for the writer; if the host side stays stuck, bytes are dropped and counted (reported by
 * console_stop()) until the writer makes progress again.  A write error on out_fd (EPIPE, EIO)
 * drops all further output likewise.
 *
 * Threads: console_output() from vCPU threads (with the UART lock held), the rest from the board.
 * Trusts: the bytes in both directions are opaque; nothing is interpreted except the escape. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct vm;
struct uart16550;
struct console;

/* Starts the console for `uart` (may be NULL: a console that only prints what is passed to
 * console_output()).  If the UART has no output callback (uart_attach() was given a NULL `out`),
 * the console installs itself as its output and removes itself again in console_stop(); a board
 * that passes its own callback calls console_output() from it and must stop the vCPUs first.  in_fd
 * -1: no input (e.g. COM2 in command mode); out_fd -1: output is discarded.  Returns NULL with
 * err_set() on failure. */
struct console *console_start(struct vm *vm, struct uart16550 *uart, int in_fd, int out_fd,
                              bool interactive);

/* The UART `out` callback (console_start() installs it; usable directly with the struct console *
 * as ctx).  Safe with a NULL console (drops). */
void console_output(void *console, const uint8_t *buf, size_t n);

/* Detaches from the UART if it installed itself (its output is dropped from then on), stops the
 * threads, flushes buffered output (for at most about a second), restores the terminal and frees
 * the console.  Safe while vCPUs still run only if the console installed itself. */
void console_stop(struct console *c);

/* Restores the terminal mode console_start() changed, if any.  Async-signal-safe (only
 * tcsetattr()), idempotent; also registered with atexit() when raw mode is entered. */
void console_restore_terminal(void);

/* How long a vCPU may wait for room in the output buffer before output is dropped: default 1000
 * ms; a negative value never drops (lossless, e.g. for command output in `lookout run -- CMD`),
 * at the price that a host side that never reads stalls the writing vCPU (it still ends when the
 * VM stops or the console is stopped). */
void console_set_output_wait(struct console *c, int ms);

/* Bytes of guest output dropped so far because the host side did not keep up. */
uint64_t console_dropped(const struct console *c);
