/* Unit tests for the serial console: guest output to a pipe, input held back until the guest
 * drains the UART FIFO, the Ctrl-A escapes, EOF, dropping output when the host side is stuck,
 * and raw mode on a pseudo-terminal restored on stop. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <fcntl.h>
#include <poll.h>
#include <pty.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "devices/uart16550.h"
#include "legacy_fakevm.h"
#include "machine/console.h"
#include "machine/layout.h"

#define B PORT_COM1

struct fx {
    struct vm vm;
    struct uart16550 *u;
    struct console *c;
    int in[2], out[2];
};

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));
    fake_vm_init(&f->vm);
    assert_int_equal(pipe(f->in), 0);
    assert_int_equal(pipe(f->out), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    console_stop(f->c);
    uart_detach(&f->vm, f->u);
    for (int i = 0; i < 2; i++) {
        if (f->in[i] >= 0) close(f->in[i]);
        if (f->out[i] >= 0) close(f->out[i]);
    }
    free(f);
    return 0;
}

static void start(struct fx *f, bool interactive, bool with_input)
{
    f->u = uart_attach(&f->vm, B, GSI_COM1, NULL, NULL); /* the console hooks itself in */
    assert_non_null(f->u);
    outb(&f->vm, B + 2, 0x01); /* FIFOs on, as Linux runs it */
    f->c = console_start(&f->vm, f->u, with_input ? f->in[0] : -1, f->out[1], interactive);
    assert_non_null(f->c);
}

static size_t read_out(struct fx *f, char *buf, size_t want, int timeout_ms)
{
    size_t n = 0;
    while (n < want) {
        struct pollfd p = {.fd = f->out[0], .events = POLLIN};
        if (poll(&p, 1, timeout_ms) <= 0) break;
        ssize_t r = read(f->out[0], buf + n, want - n);
        if (r <= 0) break;
        n += (size_t)r;
    }
    return n;
}

/* Reads what the guest would receive, polling LSR.DR like a guest driver, for up to 2 s. */
static size_t rx_read(struct fx *f, uint8_t *buf, size_t want)
{
    size_t n = 0;
    for (int spins = 0; n < want && spins < 2000; spins++) {
        while (n < want && (inb(&f->vm, B + 5) & 0x01))
            buf[n++] = inb(&f->vm, B + 0);
        if (n < want) usleep(1000);
    }
    return n;
}

static void test_output(void **state)
{
    struct fx *f = *state;
    start(f, false, false);
    const char *msg = "hello, world\r\n";
    for (const char *p = msg; *p; p++)
        outb(&f->vm, B, (uint8_t)*p);
    char buf[64] = {0};
    assert_int_equal(read_out(f, buf, strlen(msg), 2000), strlen(msg));
    assert_string_equal(buf, msg);
}

static void test_input_held_until_drained(void **state)
{
    struct fx *f = *state;
    start(f, false, true);
    uint8_t msg[100];
    for (size_t i = 0; i < sizeof(msg); i++)
        msg[i] = (uint8_t)(i * 7 + 1);
    assert_int_equal(write(f->in[1], msg, sizeof(msg)), (ssize_t)sizeof(msg));
    usleep(50000);
    /* the FIFO holds 16; nothing overran */
    assert_false(inb(&f->vm, B + 5) & 0x02);
    uint8_t got[100];
    assert_int_equal(rx_read(f, got, sizeof(got)), sizeof(got));
    assert_memory_equal(got, msg, sizeof(msg));
    /* EOF on input: reading stops, output still works, no stop request */
    close(f->in[1]);
    f->in[1] = -1;
    usleep(20000);
    assert_false(vm_stopping(&f->vm));
    outb(&f->vm, B, 'k');
    char c = 0;
    assert_int_equal(read_out(f, &c, 1, 2000), 1);
    assert_int_equal(c, 'k');
}

static void test_escapes(void **state)
{
    struct fx *f = *state;
    start(f, true, true);
    assert_int_equal(write(f->in[1],
                           "a\x01\x01"
                           "b\x01h",
                           6),
                     6);
    uint8_t got[3];
    assert_int_equal(rx_read(f, got, 3), 3);
    assert_memory_equal(got,
                        "a\x01"
                        "b",
                        3);
    char help[256] = {0};
    read_out(f, help, 60, 2000);
    assert_non_null(strstr(help, "Ctrl-A x"));
    assert_false(vm_stopping(&f->vm));
    /* an unknown escape passes both bytes through */
    assert_int_equal(write(f->in[1], "\x01z", 2), 2);
    assert_int_equal(rx_read(f, got, 2), 2);
    assert_memory_equal(got, "\x01z", 2);
    assert_int_equal(write(f->in[1], "\x01x", 2), 2);
    for (int i = 0; i < 200 && !vm_stopping(&f->vm); i++)
        usleep(10000);
    assert_int_equal(f->vm.stop_reason, VM_STOP_QUIT);
}

static void test_non_interactive_passes_ctrl_a(void **state)
{
    struct fx *f = *state;
    start(f, false, true);
    assert_int_equal(write(f->in[1], "\x01x", 2), 2);
    uint8_t got[2];
    assert_int_equal(rx_read(f, got, 2), 2);
    assert_memory_equal(got, "\x01x", 2);
    assert_false(vm_stopping(&f->vm));
}

static void *flood(void *arg)
{
    struct fx *f = arg;
    for (int i = 0; i < 300 * 1024; i++)
        outb(&f->vm, B, 'x');
    return NULL;
}

static void test_stuck_output_drops(void **state)
{
    struct fx *f = *state;
    start(f, false, false);
    pthread_t t;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    pthread_create(&t, NULL, flood, f);
    pthread_join(t, NULL); /* must finish although nobody reads the pipe */
    clock_gettime(CLOCK_MONOTONIC, &t1);
    assert_true(t1.tv_sec - t0.tv_sec < 10);
    assert_true(console_dropped(f->c) > 0);
    /* once the host reads again, output flows again */
    char buf[4096];
    while (read_out(f, buf, sizeof(buf), 200) == sizeof(buf)) {
    }
    outb(&f->vm, B, 'y');
    char c = 0;
    for (int i = 0; i < 100 && c != 'y'; i++)
        read_out(f, &c, 1, 50);
    assert_int_equal(c, 'y');
}

static void test_raw_mode_on_pty(void **state)
{
    struct fx *f = *state;
    int master, slave;
    assert_int_equal(openpty(&master, &slave, NULL, NULL, NULL), 0);
    struct termios before, during, after;
    tcgetattr(slave, &before);
    assert_true(before.c_lflag & ICANON);
    f->u = uart_attach(&f->vm, B, GSI_COM1, NULL, NULL);
    f->c = console_start(&f->vm, f->u, slave, f->out[1], true);
    tcgetattr(slave, &during);
    assert_false(during.c_lflag & (ICANON | ECHO | ISIG));
    /* Ctrl-C reaches the guest as a byte */
    assert_int_equal(write(master, "\x03", 1), 1);
    uint8_t got = 0;
    assert_int_equal(rx_read(f, &got, 1), 1);
    assert_int_equal(got, 3);
    console_stop(f->c);
    f->c = NULL;
    tcgetattr(slave, &after);
    assert_int_equal(after.c_lflag, before.c_lflag);
    console_restore_terminal(); /* idempotent */
    close(master);
    close(slave);
}

static void *flood_until_told(void *arg)
{
    struct fx *f = arg;
    while (!vm_stopping(&f->vm))
        outb(&f->vm, B, 'z');
    return NULL;
}

static void test_stop_while_vcpu_writes(void **state)
{
    /* console_stop() with a vCPU still writing (and the pipe full): it must not hang, and the
     * vCPU must not touch the freed console afterwards (ASan would catch it). */
    struct fx *f = *state;
    start(f, false, false);
    pthread_t t;
    pthread_create(&t, NULL, flood_until_told, f);
    usleep(200000);
    console_stop(f->c);
    f->c = NULL;
    usleep(50000);
    vm_request_stop(&f->vm, VM_STOP_QUIT, 0);
    pthread_join(t, NULL);
}

static void test_lossless_output_waits(void **state)
{
    struct fx *f = *state;
    start(f, false, false);
    console_set_output_wait(f->c, -1);
    pthread_t t;
    pthread_create(&t, NULL, flood, f); /* 300 KiB: more than pipe + buffer */
    usleep(1500000);                    /* longer than the default wait: still nothing dropped */
    assert_int_equal(console_dropped(f->c), 0);
    char buf[4096];
    size_t total = 0, n;
    while ((n = read_out(f, buf, sizeof(buf), 500)) > 0)
        total += n;
    pthread_join(t, NULL);
    assert_int_equal(total, 300 * 1024);
    assert_int_equal(console_dropped(f->c), 0);
}

static uint8_t board_seen[8];
static size_t board_seen_len;
static struct console *board_console;
static void board_out(void *ctx, const uint8_t *buf, size_t n)
{
    for (size_t i = 0; i < n && board_seen_len < sizeof(board_seen); i++)
        board_seen[board_seen_len++] = buf[i];
    console_output(board_console, buf, n);
}

static void test_board_callback_is_kept(void **state)
{
    /* a board that wires its own callback keeps it; it forwards to console_output() */
    struct fx *f = *state;
    board_seen_len = 0;
    f->u = uart_attach(&f->vm, B, GSI_COM1, board_out, NULL);
    f->c = console_start(&f->vm, f->u, -1, f->out[1], false);
    board_console = f->c;
    outb(&f->vm, B, 'q');
    char c = 0;
    assert_int_equal(read_out(f, &c, 1, 2000), 1);
    assert_int_equal(c, 'q');
    assert_int_equal(board_seen_len, 1);
    console_stop(f->c);
    f->c = NULL;
    board_console = NULL;
    outb(&f->vm, B, 'r'); /* still the board's callback (console gone: dropped safely) */
    assert_int_equal(board_seen_len, 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_output, setup, teardown),
        cmocka_unit_test_setup_teardown(test_input_held_until_drained, setup, teardown),
        cmocka_unit_test_setup_teardown(test_escapes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_non_interactive_passes_ctrl_a, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stuck_output_drops, setup, teardown),
        cmocka_unit_test_setup_teardown(test_raw_mode_on_pty, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stop_while_vcpu_writes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lossless_output_waits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_board_callback_is_kept, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
