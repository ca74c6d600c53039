/* Unit tests for the 16550A UART: registers, interrupts, FIFOs, loopback, and the probe sequences
 * of Linux's 8250 driver. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "devices/uart16550.h"
#include "legacy_fakevm.h"
#include "machine/layout.h"

#define B PORT_COM1
enum { RBR = 0, IER = 1, IIR = 2, FCR = 2, LCR = 3, MCR = 4, LSR = 5, MSR = 6, SCR = 7 };

static uint8_t out_buf[256];
static size_t out_len;
static void capture(void *ctx, const uint8_t *buf, size_t n)
{
    for (size_t i = 0; i < n && out_len < sizeof(out_buf); i++)
        out_buf[out_len++] = buf[i];
}

static int notified;
static void on_notify(void *ctx)
{
    notified++;
}

struct fx {
    struct vm vm;
    struct uart16550 *u;
};

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));
    fake_vm_init(&f->vm);
    out_len = 0;
    notified = 0;
    f->u = uart_attach(&f->vm, B, GSI_COM1, capture, NULL);
    assert_non_null(f->u);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    uart_detach(&f->vm, f->u);
    assert_int_equal(f->vm.pio.n, 0);
    free(f);
    return 0;
}

#define VM (&((struct fx *)*state)->vm)
#define U  (((struct fx *)*state)->u)

static void test_scratch_and_reset_values(void **state)
{
    outb(VM, B + SCR, 0xa5);
    assert_int_equal(inb(VM, B + SCR), 0xa5);
    outb(VM, B + SCR, 0x5a);
    assert_int_equal(inb(VM, B + SCR), 0x5a);
    assert_int_equal(inb(VM, B + IER), 0);
    assert_int_equal(inb(VM, B + IIR), 0x01); /* no interrupt, FIFOs off */
    assert_int_equal(inb(VM, B + LSR), 0x60); /* THRE | TEMT */
    assert_int_not_equal(inb(VM, B + LSR), 0xff);
}

static void test_dlab_divisor(void **state)
{
    outb(VM, B + IER, 0x05);
    outb(VM, B + LCR, 0x83); /* DLAB, 8N1 */
    outb(VM, B + 0, 0x01);
    outb(VM, B + 1, 0x02);
    assert_int_equal(inb(VM, B + 0), 0x01);
    assert_int_equal(inb(VM, B + 1), 0x02);
    assert_int_equal(out_len, 0); /* a divisor write is not a transmit */
    outb(VM, B + LCR, 0x03);
    assert_int_equal(inb(VM, B + LCR), 0x03);
    assert_int_equal(inb(VM, B + IER), 0x05); /* IER untouched by the divisor write */
}

static void test_transmit_and_lsr(void **state)
{
    outb(VM, B + RBR, 'h');
    outb(VM, B + RBR, 'i');
    assert_int_equal(out_len, 2);
    assert_memory_equal(out_buf, "hi", 2);
    assert_int_equal(inb(VM, B + LSR) & 0x60, 0x60);
}

static void test_ier_masks_high_bits(void **state)
{
    /* Linux autoconfig: IER=0 reads 0, IER=0x0f reads 0x0f, bit 6 (Xscale UUE) does not stick */
    outb(VM, B + IER, 0xff);
    assert_int_equal(inb(VM, B + IER), 0x0f);
    outb(VM, B + IER, 0);
    assert_int_equal(inb(VM, B + IER), 0);
}

static void test_autoconfig_finds_16550a(void **state)
{
    outb(VM, B + LCR, 0xbf);
    outb(VM, B + 2, 0); /* EFR = 0 on 16650s; FCR here */
    outb(VM, B + LCR, 0);
    outb(VM, B + FCR, 0x01);
    uint8_t iir = inb(VM, B + IIR);
    assert_int_equal(iir >> 6, 3); /* 16550A */
    /* not a 16650: EFR with LCR=0x80 / 0xbf reads as IIR, never 0 */
    outb(VM, B + LCR, 0x80);
    assert_int_not_equal(inb(VM, B + 2), 0);
    outb(VM, B + LCR, 0xbf);
    assert_int_not_equal(inb(VM, B + 2), 0);
    /* not a 16750: IIR bit 5 stays clear even when asking for 64-byte FIFOs */
    outb(VM, B + LCR, 0);
    outb(VM, B + FCR, 0x21);
    assert_int_equal(inb(VM, B + IIR) >> 5, 6);
    outb(VM, B + LCR, 0x80);
    outb(VM, B + FCR, 0x21);
    assert_int_equal(inb(VM, B + IIR) >> 5, 6);
    outb(VM, B + LCR, 0);
}

static void test_size_fifo_counts_16(void **state)
{
    /* Linux's size_fifo(): loopback, 256 bytes out, count what comes back (64 would make it a
     * "U6_16550A").  Nothing may reach the console meanwhile. */
    outb(VM, B + LCR, 0);
    outb(VM, B + FCR, 0x07);
    outb(VM, B + MCR, 0x10);
    outb(VM, B + LCR, 0x80);
    outb(VM, B + 0, 0x01);
    outb(VM, B + 1, 0x00);
    outb(VM, B + LCR, 0x03);
    for (int i = 0; i < 256; i++)
        outb(VM, B + RBR, (uint8_t)i);
    int count = 0;
    while ((inb(VM, B + LSR) & 0x01) && count < 256) {
        inb(VM, B + RBR);
        count++;
    }
    assert_int_equal(count, 16);
    assert_int_equal(out_len, 0);
}

static void test_loopback_msr(void **state)
{
    /* Linux's loopback check: MCR = LOOP | OUT2 | RTS  ->  MSR & 0xf0 == DCD | CTS */
    outb(VM, B + MCR, 0x10 | 0x0a);
    assert_int_equal(inb(VM, B + MSR) & 0xf0, 0x90);
    outb(VM, B + MCR, 0x10 | 0x05); /* DTR, OUT1 -> DSR, RI */
    assert_int_equal(inb(VM, B + MSR) & 0xf0, 0x60);
    outb(VM, B + MCR, 0);
    assert_int_equal(inb(VM, B + MSR) & 0xf0, 0xb0); /* the host side: CTS DSR DCD */
}

static void test_thre_interrupt_linux_startup(void **state)
{
    outb(VM, B + MCR, 0x0b); /* DTR RTS OUT2 */
    assert_int_equal(fake_irq.level[GSI_COM1], 0);
    /* UART_BUG_THRE test: enabling THRI with THR empty must raise THRE at once */
    outb(VM, B + IER, 0x02);
    assert_int_equal(fake_irq.level[GSI_COM1], 1);
    assert_int_equal(inb(VM, B + IIR) & 0x0f, 0x02);
    assert_int_equal(fake_irq.level[GSI_COM1], 0); /* reading IIR acknowledged it */
    assert_int_equal(inb(VM, B + IIR) & 0x0f, 0x01);
    outb(VM, B + IER, 0);
    outb(VM, B + IER, 0x02); /* re-enabling re-arms it */
    assert_int_equal(inb(VM, B + IIR) & 0x0f, 0x02);
    outb(VM, B + IER, 0);
    /* UART_BUG_TXEN test: IER=THRI, then LSR and IIR */
    outb(VM, B + IER, 0x02);
    assert_true(inb(VM, B + LSR) & 0x40);
    assert_int_equal(inb(VM, B + IIR) & 0x01, 0);
    outb(VM, B + IER, 0);
}

static void test_thre_edge_per_byte(void **state)
{
    outb(VM, B + MCR, 0x08);
    outb(VM, B + IER, 0x02);
    int rises = fake_irq.rises[GSI_COM1];
    outb(VM, B + RBR, 'a'); /* pending THRE: the pin must drop and rise again */
    assert_int_equal(fake_irq.rises[GSI_COM1], rises + 1);
    assert_int_equal(fake_irq.level[GSI_COM1], 1);
    assert_int_equal(inb(VM, B + IIR) & 0x0f, 0x02);
    assert_int_equal(fake_irq.level[GSI_COM1], 0);
}

static void test_out2_gates_irq(void **state)
{
    outb(VM, B + IER, 0x02);
    assert_int_equal(fake_irq.level[GSI_COM1], 0); /* OUT2 clear: pin held low */
    outb(VM, B + MCR, 0x08);
    assert_int_equal(fake_irq.level[GSI_COM1], 1);
    outb(VM, B + MCR, 0x00);
    assert_int_equal(fake_irq.level[GSI_COM1], 0);
    outb(VM, B + MCR, 0x08);
    outb(VM, B + IER, 0x00);
    assert_int_equal(fake_irq.level[GSI_COM1], 0);
}

static void test_receive_fifo_and_rx_irq(void **state)
{
    outb(VM, B + FCR, 0x07); /* FIFO on, trigger 1 */
    outb(VM, B + MCR, 0x08);
    outb(VM, B + IER, 0x01);
    assert_int_equal(fake_irq.level[GSI_COM1], 0);
    assert_int_equal(uart_receive(U, (const uint8_t *)"abc", 3), 3);
    assert_int_equal(fake_irq.level[GSI_COM1], 1);
    assert_int_equal(inb(VM, B + IIR), 0xc4);
    assert_true(inb(VM, B + LSR) & 0x01);
    assert_int_equal(inb(VM, B + RBR), 'a');
    assert_int_equal(inb(VM, B + RBR), 'b');
    assert_int_equal(inb(VM, B + RBR), 'c');
    assert_false(inb(VM, B + LSR) & 0x01);
    assert_int_equal(fake_irq.level[GSI_COM1], 0);
    assert_int_equal(inb(VM, B + IIR), 0xc1);
}

static void test_receive_trigger_and_timeout(void **state)
{
    outb(VM, B + FCR, 0x87); /* trigger 8 */
    outb(VM, B + IER, 0x01);
    uart_receive(U, (const uint8_t *)"12345", 5);
    assert_int_equal(inb(VM, B + IIR) & 0x0f, 0x0c); /* below trigger: character timeout */
    uart_receive(U, (const uint8_t *)"678", 3);
    assert_int_equal(inb(VM, B + IIR) & 0x0f, 0x04); /* at trigger: data available */
}

static void test_receive_full_fifo_and_notify(void **state)
{
    uint8_t buf[40];
    memset(buf, 'x', sizeof(buf));
    uart_set_rx_notify(U, on_notify, NULL);
    assert_int_equal(uart_receive(U, buf, 4), 1); /* FIFOs off: one holding register */
    outb(VM, B + FCR, 0x01);                      /* toggling FIFO enable clears it */
    assert_false(inb(VM, B + LSR) & 0x01);
    assert_int_equal(notified, 1);
    assert_int_equal(uart_receive(U, buf, sizeof(buf)), 16);
    assert_int_equal(uart_receive(U, buf, 1), 0);
    assert_false(inb(VM, B + LSR) & 0x02); /* the polite path never overruns */
    for (int i = 0; i < 15; i++)
        inb(VM, B + RBR);
    assert_int_equal(notified, 1);
    inb(VM, B + RBR);
    assert_int_equal(notified, 2); /* emptied: offer the rest */
}

static void test_loopback_transmit_and_overrun(void **state)
{
    outb(VM, B + FCR, 0x01);
    outb(VM, B + MCR, 0x18);                                       /* loop + OUT2 */
    outb(VM, B + IER, 0x05);                                       /* RDI + RLSI */
    assert_int_equal(uart_receive(U, (const uint8_t *)"z", 1), 0); /* input disconnected */
    for (int i = 0; i < 17; i++)
        outb(VM, B + RBR, (uint8_t)('A' + i));
    assert_int_equal(out_len, 0);                    /* nothing left the chip */
    assert_int_equal(fake_irq.level[GSI_COM1], 0);   /* loopback holds the pin inactive */
    assert_int_equal(inb(VM, B + IIR) & 0x0f, 0x06); /* line status beats data */
    uint8_t lsr = inb(VM, B + LSR);
    assert_true(lsr & 0x02);
    assert_true(lsr & 0x01);
    assert_false(inb(VM, B + LSR) & 0x02); /* OE clears on read */
    assert_int_equal(inb(VM, B + IIR) & 0x0f, 0x04);
    for (int i = 0; i < 16; i++)
        assert_int_equal(inb(VM, B + RBR), 'A' + i);
    assert_false(inb(VM, B + LSR) & 0x01);
}

static void test_iir_priority_order(void **state)
{
    outb(VM, B + MCR, 0x18);
    outb(VM, B + IER, 0x0f);
    outb(VM, B + MCR, 0x1a);                         /* DCTS pending */
    outb(VM, B + RBR, 'q');                          /* RX data + THRE pending */
    assert_int_equal(inb(VM, B + IIR) & 0x0f, 0x04); /* RX data first (FIFOs off) */
    inb(VM, B + RBR);
    assert_int_equal(inb(VM, B + IIR) & 0x0f, 0x02); /* then THRE (read acknowledges) */
    uint8_t iir = inb(VM, B + IIR) & 0x0f;
    assert_int_equal(iir, 0x00); /* then modem status */
    assert_true(inb(VM, B + MSR) & 0x01);
    assert_int_equal(inb(VM, B + IIR) & 0x0f, 0x01);
}

static void test_wide_access_and_unclaimed(void **state)
{
    uint8_t d[2] = {0, 0};
    outb(VM, B + SCR, 0x42);
    vm_pio(VM, B + 6, d, 2, false); /* MSR + SCR */
    assert_int_equal(d[1], 0x42);
    assert_int_equal(inb(VM, B + 8), 0xff); /* past the UART: nobody */
}

static void test_state_round_trip(void **state)
{
    outb(VM, B + FCR, 0x81);
    outb(VM, B + LCR, 0x83);
    outb(VM, B + 0, 0x34);
    outb(VM, B + 1, 0x12);
    outb(VM, B + LCR, 0x03);
    outb(VM, B + MCR, 0x0b);
    outb(VM, B + SCR, 0x77);
    outb(VM, B + IER, 0x03); /* RX + THRE: THRE pending */
    uart_receive(U, (const uint8_t *)"snap", 4);
    inb(VM, B + RBR); /* "nap" left, head moved */
    struct uart_state st;
    uart_get_state(U, &st);
    assert_int_equal(st.rx_count, 3);
    assert_memory_equal(st.rx, "nap", 3);

    struct vm vm2;
    fake_vm_init(&vm2);
    struct uart16550 *u2 = uart_attach(&vm2, B, GSI_COM1, capture, NULL);
    assert_int_equal(uart_set_state(u2, &st), 0);
    assert_int_equal(fake_irq.level[GSI_COM1], 1); /* the pin follows the restored registers */
    assert_int_equal(inb(&vm2, B + SCR), 0x77);
    assert_int_equal(inb(&vm2, B + IIR), 0xcc); /* FIFO on, 3 bytes below trigger 8: timeout */
    outb(&vm2, B + LCR, 0x83);
    assert_int_equal(inb(&vm2, B + 0), 0x34);
    assert_int_equal(inb(&vm2, B + 1), 0x12);
    outb(&vm2, B + LCR, 0x03);
    assert_int_equal(inb(&vm2, B + RBR), 'n');
    assert_int_equal(inb(&vm2, B + RBR), 'a');
    assert_int_equal(inb(&vm2, B + RBR), 'p');
    assert_int_equal(inb(&vm2, B + IIR) & 0x0f, 0x02); /* then the pending THRE */

    /* hostile snapshots are refused */
    struct uart_state bad = st;
    bad.rx_count = 17;
    assert_int_equal(uart_set_state(u2, &bad), -EINVAL);
    bad = st;
    bad.fcr = 0;
    bad.rx_count = 3; /* FIFO off holds 1 */
    assert_int_equal(uart_set_state(u2, &bad), -EINVAL);
    bad = st;
    bad.ier = 0x40;
    assert_int_equal(uart_set_state(u2, &bad), -EINVAL);
    bad = st;
    bad.lsr &= ~0x01; /* DR clear but bytes present */
    assert_int_equal(uart_set_state(u2, &bad), -EINVAL);
    uart_detach(&vm2, u2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_scratch_and_reset_values, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dlab_divisor, setup, teardown),
        cmocka_unit_test_setup_teardown(test_transmit_and_lsr, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ier_masks_high_bits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_autoconfig_finds_16550a, setup, teardown),
        cmocka_unit_test_setup_teardown(test_size_fifo_counts_16, setup, teardown),
        cmocka_unit_test_setup_teardown(test_loopback_msr, setup, teardown),
        cmocka_unit_test_setup_teardown(test_thre_interrupt_linux_startup, setup, teardown),
        cmocka_unit_test_setup_teardown(test_thre_edge_per_byte, setup, teardown),
        cmocka_unit_test_setup_teardown(test_out2_gates_irq, setup, teardown),
        cmocka_unit_test_setup_teardown(test_receive_fifo_and_rx_irq, setup, teardown),
        cmocka_unit_test_setup_teardown(test_receive_trigger_and_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_receive_full_fifo_and_notify, setup, teardown),
        cmocka_unit_test_setup_teardown(test_loopback_transmit_and_overrun, setup, teardown),
        cmocka_unit_test_setup_teardown(test_iir_priority_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wide_access_and_unclaimed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_state_round_trip, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
