/* 16550A UART emulation (see uart16550.h for the model and its simplifications).
 *
 * Trusts: nothing the guest writes; register writes are masked to the bits a 16550A implements and
 * reads return only defined bits, so Linux's 8250 autoconfig identifies a plain 16550A (IER bits
 * 4-7 read 0: no Xscale UUE; IIR bits 4-5 read 0: no 64-byte 16750 FIFO; EFR reads as IIR: not a
 * 16650).  Offsets come from the bus, already relative to the base and below 8. */
#include "devices/uart16550.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "bus/bus.h"
#include "cpu/cpu.h"
#include "devices/devutil.h"
#include "util/log.h"

/* Register offsets */
enum {
    R_RBR_THR = 0,
    R_IER = 1,
    R_IIR_FCR = 2,
    R_LCR = 3,
    R_MCR = 4,
    R_LSR = 5,
    R_MSR = 6,
    R_SCR = 7
};

#define IER_RDI  0x01 /* received data available */
#define IER_THRI 0x02 /* THR empty */
#define IER_RLSI 0x04 /* receiver line status */
#define IER_MSI  0x08 /* modem status */

#define IIR_NO_INT  0x01
#define IIR_MSI     0x00
#define IIR_THRI    0x02
#define IIR_RDI     0x04
#define IIR_RLSI    0x06
#define IIR_TIMEOUT 0x0c
#define IIR_FIFO_ON 0xc0

#define FCR_ENABLE   0x01
#define FCR_CLEAR_RX 0x02
#define FCR_CLEAR_TX 0x04

#define LCR_DLAB 0x80

#define MCR_DTR  0x01
#define MCR_RTS  0x02
#define MCR_OUT1 0x04
#define MCR_OUT2 0x08
#define MCR_LOOP 0x10

#define LSR_DR   0x01
#define LSR_OE   0x02
#define LSR_BI   0x10
#define LSR_THRE 0x20
#define LSR_TEMT 0x40

#define MSR_DCTS 0x01
#define MSR_DDSR 0x02
#define MSR_TERI 0x04
#define MSR_DDCD 0x08
#define MSR_CTS  0x10
#define MSR_DSR  0x20
#define MSR_RI   0x40
#define MSR_DCD  0x80

#define FIFO_SIZE 16

struct uart16550 {
    pthread_mutex_t lock;
    struct vm *vm;
    struct irq_line irq;
    uart_out_fn out;
    void *out_ctx;
    void (*rx_notify)(void *ctx);
    void *rx_notify_ctx;
    bool rx_waiting; /* uart_receive refused bytes; notify when room appears */

    uint8_t ier, lcr, mcr, lsr, msr, scr, fcr;
    uint16_t divisor;
    bool thre_pending; /* the THRE interrupt source (cleared by an IIR read that reports it) */
    bool irq_level;

    uint8_t rx[FIFO_SIZE];
    unsigned rx_head, rx_count;
};

static bool fifo_on(const struct uart16550 *u)
{
    return u->fcr & FCR_ENABLE;
}

static unsigned rx_capacity(const struct uart16550 *u)
{
    return fifo_on(u) ? FIFO_SIZE : 1;
}

static unsigned rx_trigger(const struct uart16550 *u)
{
    static const unsigned level[4] = {1, 4, 8, 14};
    return fifo_on(u) ? level[u->fcr >> 6] : 1;
}

/* The interrupt the 16550A reports in IIR: the highest-priority pending source enabled in IER. */
static uint8_t pending_iir(const struct uart16550 *u)
{
    if ((u->ier & IER_RLSI) && (u->lsr & (LSR_OE | 0x0e | LSR_BI))) return IIR_RLSI;
    if ((u->ier & IER_RDI) && u->rx_count)
        return u->rx_count >= rx_trigger(u) ? IIR_RDI : (fifo_on(u) ? IIR_TIMEOUT : IIR_RDI);
    if ((u->ier & IER_THRI) && u->thre_pending) return IIR_THRI;
    if ((u->ier & IER_MSI) && (u->msr & 0x0f)) return IIR_MSI;
    return IIR_NO_INT;
}

/* Recomputes the IRQ pin and tells the interrupt controller when it changes.  Called with the
 * lock held so the controller sees level changes in order (see the header). */
static void update_irq(struct uart16550 *u)
{
    bool level = pending_iir(u) != IIR_NO_INT && (u->mcr & MCR_OUT2) && !(u->mcr & MCR_LOOP);
    if (level != u->irq_level) {
        u->irq_level = level;
        irq_line_set(&u->irq, level);
    }
}

static void rx_clear(struct uart16550 *u)
{
    u->rx_head = u->rx_count = 0;
    u->lsr &= ~LSR_DR;
}

/* Caller holds the lock.  Returns false (and flags an overrun) when the FIFO is full. */
static bool rx_push(struct uart16550 *u, uint8_t b)
{
    if (u->rx_count >= rx_capacity(u)) {
        u->lsr |= LSR_OE; /* the shift register's byte is lost; the FIFO keeps its contents */
        return false;
    }
    u->rx[(u->rx_head + u->rx_count) % FIFO_SIZE] = b;
    u->rx_count++;
    u->lsr |= LSR_DR;
    return true;
}

static void rx_space_available(struct uart16550 *u)
{
    if (u->rx_waiting && u->rx_count == 0) {
        u->rx_waiting = false;
        if (u->rx_notify) u->rx_notify(u->rx_notify_ctx);
    }
}

/* Modem status: the input lines.  Outside loopback the "modem" is always there (CTS, DSR, DCD
 * asserted) so a guest using hardware flow control can transmit.  In loopback they mirror MCR. */
static uint8_t modem_lines(const struct uart16550 *u)
{
    if (!(u->mcr & MCR_LOOP)) return MSR_CTS | MSR_DSR | MSR_DCD;
    uint8_t m = 0;
    if (u->mcr & MCR_RTS) m |= MSR_CTS;
    if (u->mcr & MCR_DTR) m |= MSR_DSR;
    if (u->mcr & MCR_OUT1) m |= MSR_RI;
    if (u->mcr & MCR_OUT2) m |= MSR_DCD;
    return m;
}

static void update_msr(struct uart16550 *u)
{
    uint8_t old = u->msr & 0xf0, now = modem_lines(u), delta = u->msr & 0x0f;
    uint8_t changed = old ^ now;
    if (changed & MSR_CTS) delta |= MSR_DCTS;
    if (changed & MSR_DSR) delta |= MSR_DDSR;
    if (changed & MSR_DCD) delta |= MSR_DDCD;
    if ((old & MSR_RI) && !(now & MSR_RI)) delta |= MSR_TERI; /* trailing edge only */
    u->msr = now | delta;
}

static void transmit(struct uart16550 *u, uint8_t b)
{
    u->thre_pending = false;
    update_irq(u); /* THR full for an instant: the pin drops... */
    if (u->mcr & MCR_LOOP) {
        rx_push(u, b);
    } else if (u->out) {
        u->out(u->out_ctx, &b, 1);
    }
    u->lsr |= LSR_THRE | LSR_TEMT;
    u->thre_pending = true; /* ...and rises again once the byte has left */
    update_irq(u);
}

static uint8_t reg_read(struct uart16550 *u, unsigned reg)
{
    switch (reg) {
    case R_RBR_THR: {
        if (u->lcr & LCR_DLAB) return u->divisor & 0xff;
        uint8_t b = 0;
        if (u->rx_count) {
            b = u->rx[u->rx_head];
            u->rx_head = (u->rx_head + 1) % FIFO_SIZE;
            if (--u->rx_count == 0) u->lsr &= ~LSR_DR;
        }
        update_irq(u);
        rx_space_available(u);
        return b;
    }
    case R_IER:
        if (u->lcr & LCR_DLAB) return u->divisor >> 8;
        return u->ier;
    case R_IIR_FCR: {
        uint8_t iir = pending_iir(u);
        if (iir == IIR_THRI) {
            u->thre_pending = false; /* reading IIR acknowledges THRE */
            update_irq(u);
        }
        return iir | (fifo_on(u) ? IIR_FIFO_ON : 0);
    }
    case R_LCR: return u->lcr;
    case R_MCR: return u->mcr;
    case R_LSR: {
        uint8_t v = u->lsr;
        u->lsr &= ~(LSR_OE | 0x0e | LSR_BI); /* error bits clear on read */
        update_irq(u);
        return v;
    }
    case R_MSR: {
        uint8_t v = u->msr;
        u->msr &= 0xf0;
        update_irq(u);
        return v;
    }
    default: return u->scr;
    }
}

static void reg_write(struct uart16550 *u, unsigned reg, uint8_t v)
{
    switch (reg) {
    case R_RBR_THR:
        if (u->lcr & LCR_DLAB)
            u->divisor = (u->divisor & 0xff00) | v;
        else
            transmit(u, v);
        break;
    case R_IER:
        if (u->lcr & LCR_DLAB) {
            u->divisor = (u->divisor & 0x00ff) | (uint16_t)(v << 8);
            break;
        }
        v &= 0x0f;
        /* Enabling the THRE interrupt while THR is empty raises it at once: Linux's 8250 driver
         * tests exactly this at startup (UART_BUG_THRE / UART_BUG_TXEN) and falls back to
         * timer-driven transmission if the UART stays silent. */
        if ((v & IER_THRI) && !(u->ier & IER_THRI)) u->thre_pending = (u->lsr & LSR_THRE) != 0;
        u->ier = v;
        update_irq(u);
        break;
    case R_IIR_FCR:
        if ((v ^ u->fcr) & FCR_ENABLE) v |= FCR_CLEAR_RX | FCR_CLEAR_TX; /* toggling clears both */
        u->fcr = v & (FCR_ENABLE | 0x08 | 0xc0);
        if (!(v & FCR_ENABLE)) u->fcr = 0;
        if (v & FCR_CLEAR_RX) rx_clear(u);
        update_irq(u);
        rx_space_available(u);
        break;
    case R_LCR: u->lcr = v; break;
    case R_MCR: {
        bool was_loop = u->mcr & MCR_LOOP;
        u->mcr = v & 0x1f;
        update_msr(u);
        update_irq(u);
        if (was_loop && !(u->mcr & MCR_LOOP)) rx_space_available(u);
        break;
    }
    case R_LSR:
    case R_MSR: break; /* read-only (factory test registers on some parts) */
    default: u->scr = v; break;
    }
}

static void uart_bus_read(void *opaque, uint64_t offset, uint8_t *data, unsigned size)
{
    struct uart16550 *u = opaque;
    pthread_mutex_lock(&u->lock);
    /* A wider access reads consecutive registers, as the ISA bus would split it. */
    for (unsigned i = 0; i < size; i++)
        data[i] = reg_read(u, (unsigned)((offset + i) & 7));
    pthread_mutex_unlock(&u->lock);
}

static void uart_bus_write(void *opaque, uint64_t offset, const uint8_t *data, unsigned size)
{
    struct uart16550 *u = opaque;
    pthread_mutex_lock(&u->lock);
    for (unsigned i = 0; i < size; i++)
        reg_write(u, (unsigned)((offset + i) & 7), data[i]);
    pthread_mutex_unlock(&u->lock);
}

static const struct bus_ops uart_ops = {.read = uart_bus_read, .write = uart_bus_write};

struct uart16550 *uart_attach(struct vm *vm, uint16_t port, unsigned gsi, uart_out_fn out,
                              void *ctx)
{
    struct uart16550 *u = calloc(1, sizeof(*u));
    if (!u) {
        err_set(ENOMEM, "uart at %#x: out of memory", port);
        return NULL;
    }
    pthread_mutex_init(&u->lock, NULL);
    u->vm = vm;
    u->irq = (struct irq_line){.set = vm_irq_set, .ctx = vm, .gsi = gsi};
    u->out = out;
    u->out_ctx = ctx;
    u->lsr = LSR_THRE | LSR_TEMT;
    u->divisor = 12; /* 9600 baud, the PC BIOS default */
    u->msr = modem_lines(u);
    int r = bus_register(&vm->pio, port, 8, &uart_ops, u, "uart16550");
    if (r < 0) {
        err_wrap(r, "uart at %#x", port);
        pthread_mutex_destroy(&u->lock);
        free(u);
        return NULL;
    }
    return u;
}

void uart_detach(struct vm *vm, struct uart16550 *u)
{
    if (!u) return;
    dev_unregister(&vm->pio, &uart_ops, u);
    pthread_mutex_destroy(&u->lock);
    free(u);
}

size_t uart_receive(struct uart16550 *u, const uint8_t *buf, size_t n)
{
    size_t i = 0;
    pthread_mutex_lock(&u->lock);
    if (!(u->mcr & MCR_LOOP)) {
        while (i < n && u->rx_count < rx_capacity(u))
            rx_push(u, buf[i++]);
    }
    if (i < n) u->rx_waiting = true;
    update_irq(u);
    pthread_mutex_unlock(&u->lock);
    return i;
}

void uart_set_output(struct uart16550 *u, uart_out_fn out, void *ctx)
{
    pthread_mutex_lock(&u->lock);
    u->out = out;
    u->out_ctx = ctx;
    pthread_mutex_unlock(&u->lock);
}

bool uart_hook_output(struct uart16550 *u, uart_out_fn out, void *ctx)
{
    pthread_mutex_lock(&u->lock);
    bool free_slot = u->out == NULL;
    if (free_slot) {
        u->out = out;
        u->out_ctx = ctx;
    }
    pthread_mutex_unlock(&u->lock);
    return free_slot;
}

void uart_set_rx_notify(struct uart16550 *u, void (*notify)(void *ctx), void *ctx)
{
    pthread_mutex_lock(&u->lock);
    u->rx_notify = notify;
    u->rx_notify_ctx = ctx;
    pthread_mutex_unlock(&u->lock);
}

void uart_get_state(struct uart16550 *u, struct uart_state *s)
{
    memset(s, 0, sizeof(*s));
    pthread_mutex_lock(&u->lock);
    s->ier = u->ier;
    s->lcr = u->lcr;
    s->mcr = u->mcr;
    s->lsr = u->lsr;
    s->msr = u->msr;
    s->scr = u->scr;
    s->fcr = u->fcr;
    s->thre_pending = u->thre_pending;
    s->divisor = u->divisor;
    s->rx_count = (uint8_t)u->rx_count;
    for (unsigned i = 0; i < u->rx_count; i++)
        s->rx[i] = u->rx[(u->rx_head + i) % FIFO_SIZE];
    pthread_mutex_unlock(&u->lock);
}

int uart_set_state(struct uart16550 *u, const struct uart_state *s)
{
    /* A snapshot is input like any other: check every field against what the chip can hold. */
    if (s->ier & 0xf0) return err_set(EINVAL, "uart state: IER %#x has reserved bits", s->ier);
    if (s->mcr & 0xe0) return err_set(EINVAL, "uart state: MCR %#x has reserved bits", s->mcr);
    if (s->fcr & ~(FCR_ENABLE | 0x08 | 0xc0) || (s->fcr && !(s->fcr & FCR_ENABLE)))
        return err_set(EINVAL, "uart state: FCR %#x is not a stored FIFO setting", s->fcr);
    if (s->thre_pending > 1)
        return err_set(EINVAL, "uart state: thre_pending %u is not 0 or 1", s->thre_pending);
    unsigned cap = (s->fcr & FCR_ENABLE) ? FIFO_SIZE : 1;
    if (s->rx_count > cap)
        return err_set(EINVAL, "uart state: %u received bytes, the FIFO holds %u", s->rx_count,
                       cap);
    if (!!(s->lsr & LSR_DR) != (s->rx_count > 0))
        return err_set(EINVAL, "uart state: LSR.DR disagrees with the %u received bytes",
                       s->rx_count);
    pthread_mutex_lock(&u->lock);
    u->ier = s->ier;
    u->lcr = s->lcr;
    u->mcr = s->mcr;
    u->lsr = (uint8_t)(s->lsr | LSR_THRE | LSR_TEMT); /* transmission is instantaneous */
    u->msr = s->msr;
    u->scr = s->scr;
    u->fcr = s->fcr;
    u->thre_pending = s->thre_pending;
    u->divisor = s->divisor;
    u->rx_head = 0;
    u->rx_count = s->rx_count;
    memcpy(u->rx, s->rx, s->rx_count);
    update_irq(u);
    pthread_mutex_unlock(&u->lock);
    return 0;
}

bool uart_irq_level(struct uart16550 *u)
{
    pthread_mutex_lock(&u->lock);
    bool l = u->irq_level;
    pthread_mutex_unlock(&u->lock);
    return l;
}
