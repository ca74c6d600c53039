/* Serial console threads (see console.h).  Trusts: nothing in the byte streams. */
#include "machine/console.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "cpu/cpu.h"
#include "devices/uart16550.h"
#include "util/log.h"

#define OUT_RING_SIZE    (64 * 1024)
#define OUT_CHUNK        4096
#define OUT_WAIT_MS      1000 /* default: how long a vCPU waits for a stuck host side */
#define FLUSH_TIMEOUT_MS 1000
#define ESCAPE_CHAR      0x01 /* Ctrl-A */

struct console {
    struct vm *vm;
    struct uart16550 *uart;
    int in_fd, out_fd, wake_fd;
    bool interactive;
    pthread_t reader, writer;
    bool reader_started, writer_started;
    bool hooked;             /* installed as the UART's output */
    _Atomic int out_wait_ms; /* < 0: wait as long as it takes (lossless) */
    _Atomic bool stopping;

    /* Output ring, protected by lock. */
    pthread_mutex_t lock;
    pthread_cond_t have_data, have_space;
    uint8_t *ring;
    size_t head, len;
    bool stuck;      /* a vCPU gave up waiting: drop until the writer makes progress */
    bool out_broken; /* out_fd failed: drop everything */
    _Atomic uint64_t dropped;

    /* Input not yet accepted by the UART (reader thread only). */
    uint8_t pending[512];
    size_t pend_off, pend_len;
    bool escape;
};

/* Terminal state for console_restore_terminal(): plain globals so a signal handler can use them. */
static struct termios saved_termios;
static volatile sig_atomic_t saved_fd = -1;

void console_restore_terminal(void)
{
    int fd = saved_fd;
    if (fd >= 0) {
        tcsetattr(fd, TCSANOW, &saved_termios);
        saved_fd = -1;
    }
}

static int enter_raw_mode(int fd)
{
    static bool atexit_done;
    struct termios t;
    if (tcgetattr(fd, &t) < 0)
        return err_set(errno, "console: cannot read the terminal mode: %s", strerror(errno));
    saved_termios = t;
    cfmakeraw(&t); /* clears ISIG too: Ctrl-C and Ctrl-Z go to the guest */
    t.c_cc[VMIN] = 1;
    t.c_cc[VTIME] = 0;
    saved_fd = fd;
    if (!atexit_done) {
        atexit(console_restore_terminal);
        atexit_done = true;
    }
    if (tcsetattr(fd, TCSANOW, &t) < 0) {
        saved_fd = -1;
        return err_set(errno, "console: cannot put the terminal in raw mode: %s", strerror(errno));
    }
    return 0;
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

static void wake(struct console *c)
{
    uint64_t one = 1;
    ssize_t r = write(c->wake_fd, &one, sizeof(one));
    (void)r; /* an eventfd write only fails if the counter would overflow: it is awake anyway */
}

static void rx_notify(void *ctx)
{
    wake(ctx);
}

void console_output(void *console, const uint8_t *buf, size_t n)
{
    struct console *c = console;
    if (!c || c->out_fd < 0) return;
    pthread_mutex_lock(&c->lock);
    while (n > 0) {
        if (c->out_broken || c->stuck) break;
        if (c->len == OUT_RING_SIZE) {
            /* Full: wait for the writer, a bounded time unless lossless output was asked for.
             * The waits are in slices so a VM stop or console stop ends them. */
            int wait_ms = atomic_load(&c->out_wait_ms);
            int64_t deadline = wait_ms < 0 ? INT64_MAX : now_ns() + wait_ms * 1000000ll;
            while (c->len == OUT_RING_SIZE && !c->out_broken && !atomic_load(&c->stopping) &&
                   !vm_stopping(c->vm) && now_ns() < deadline) {
                struct timespec ts;
                clock_gettime(CLOCK_MONOTONIC, &ts);
                ts.tv_nsec += 100000000l;
                if (ts.tv_nsec >= 1000000000l) {
                    ts.tv_sec++;
                    ts.tv_nsec -= 1000000000l;
                }
                pthread_cond_timedwait(&c->have_space, &c->lock, &ts);
            }
            if (c->len == OUT_RING_SIZE) {
                c->stuck = true;
                break;
            }
        }
        size_t tail = (c->head + c->len) % OUT_RING_SIZE;
        size_t room = MIN(OUT_RING_SIZE - c->len, OUT_RING_SIZE - tail);
        size_t k = MIN(room, n);
        memcpy(c->ring + tail, buf, k);
        c->len += k;
        buf += k;
        n -= k;
        pthread_cond_signal(&c->have_data);
    }
    if (n) atomic_fetch_add(&c->dropped, n);
    pthread_mutex_unlock(&c->lock);
}

/* Writes buf to out_fd, waiting for it to become writable at most timeout_ms each time.
 * Returns bytes written, or -1 if the fd failed for good. */
static ssize_t write_some(int fd, const uint8_t *buf, size_t n, int timeout_ms)
{
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    int r = poll(&p, 1, timeout_ms);
    if (r == 0 || (r < 0 && errno == EINTR)) return 0;
    if (r < 0 || (p.revents & (POLLERR | POLLNVAL))) return -1;
    ssize_t w = write(fd, buf, n);
    if (w < 0) return (errno == EINTR || errno == EAGAIN) ? 0 : -1;
    return w;
}

static void *writer_main(void *arg)
{
    struct console *c = arg;
    uint8_t chunk[OUT_CHUNK];
    int64_t flush_deadline = 0;
    for (;;) {
        pthread_mutex_lock(&c->lock);
        while (c->len == 0 && !atomic_load(&c->stopping))
            pthread_cond_wait(&c->have_data, &c->lock);
        if (atomic_load(&c->stopping)) {
            if (!flush_deadline) flush_deadline = now_ns() + FLUSH_TIMEOUT_MS * 1000000ll;
            if (c->len == 0 || c->out_broken || now_ns() > flush_deadline) {
                pthread_mutex_unlock(&c->lock);
                break;
            }
        }
        size_t k = MIN(c->len, MIN(sizeof(chunk), OUT_RING_SIZE - c->head));
        memcpy(chunk, c->ring + c->head, k);
        pthread_mutex_unlock(&c->lock);

        ssize_t w = write_some(c->out_fd, chunk, k, 100);

        pthread_mutex_lock(&c->lock);
        if (w < 0) {
            /* The host side is gone (closed pipe, hung-up terminal): drop from now on. */
            atomic_fetch_add(&c->dropped, c->len);
            c->len = 0;
            c->out_broken = true;
        } else if (w > 0) {
            c->head = (c->head + (size_t)w) % OUT_RING_SIZE;
            c->len -= (size_t)w;
            c->stuck = false;
        }
        pthread_cond_broadcast(&c->have_space);
        pthread_mutex_unlock(&c->lock);
    }
    return NULL;
}

static void say(struct console *c, const char *s)
{
    console_output(c, (const uint8_t *)s, strlen(s));
}

static void escape_byte(struct console *c, uint8_t b)
{
    switch (b) {
    case 'x':
    case 'X':
        say(c, "\r\n[lookout: quit]\r\n");
        vm_request_stop(c->vm, VM_STOP_QUIT, 0);
        return;
    case ESCAPE_CHAR: c->pending[c->pend_len++] = ESCAPE_CHAR; return;
    case 'h':
    case 'H':
    case '?':
        say(c, "\r\n[lookout console escapes]\r\n"
               "  Ctrl-A x       quit lookout\r\n"
               "  Ctrl-A Ctrl-A  send Ctrl-A to the guest\r\n"
               "  Ctrl-A h       this help\r\n");
        return;
    default:
        c->pending[c->pend_len++] = ESCAPE_CHAR;
        c->pending[c->pend_len++] = b;
        return;
    }
}

/* Turns bytes read from in_fd into bytes for the guest (escape handling in interactive mode).
 * Never produces more bytes than it consumes plus one held Ctrl-A, which fits `pending`. */
static void take_input(struct console *c, const uint8_t *buf, size_t n)
{
    c->pend_off = c->pend_len = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t b = buf[i];
        if (!c->interactive) {
            c->pending[c->pend_len++] = b;
        } else if (c->escape) {
            c->escape = false;
            escape_byte(c, b);
        } else if (b == ESCAPE_CHAR) {
            c->escape = true;
        } else {
            c->pending[c->pend_len++] = b;
        }
    }
}

static void *reader_main(void *arg)
{
    struct console *c = arg;
    bool in_open = c->in_fd >= 0;
    uint8_t buf[sizeof(c->pending) / 2];
    while (!atomic_load(&c->stopping) && !vm_stopping(c->vm)) {
        if (c->pend_off < c->pend_len) {
            size_t k = uart_receive(c->uart, c->pending + c->pend_off, c->pend_len - c->pend_off);
            c->pend_off += k;
        }
        bool holding = c->pend_off < c->pend_len;
        struct pollfd p[2] = {{.fd = c->wake_fd, .events = POLLIN},
                              {.fd = in_open && !holding ? c->in_fd : -1, .events = POLLIN}};
        /* The timeout is a safety net only: the UART's notifier wakes us when the FIFO drains. */
        int r = poll(p, 2, holding ? 100 : 1000);
        if (r < 0 && errno != EINTR) {
            log_warn("console: poll failed: %s; console input stops", strerror(errno));
            break;
        }
        if (p[0].revents & POLLIN) {
            uint64_t v;
            ssize_t rr = read(c->wake_fd, &v, sizeof(v));
            (void)rr;
        }
        if (p[1].revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t n = read(c->in_fd, buf, sizeof(buf));
            if (n > 0) {
                take_input(c, buf, (size_t)n);
            } else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
                in_open = false; /* EOF (or a dead fd): the guest keeps running without input */
                log_debug("console: input closed");
            }
        }
    }
    return NULL;
}

struct console *console_start(struct vm *vm, struct uart16550 *com1, int in_fd, int out_fd,
                              bool interactive)
{
    struct console *c = calloc(1, sizeof(*c));
    if (!c) {
        err_set(ENOMEM, "console: out of memory");
        return NULL;
    }
    c->vm = vm;
    c->uart = com1;
    c->in_fd = com1 ? in_fd : -1;
    c->out_fd = out_fd;
    c->interactive = interactive;
    c->out_wait_ms = OUT_WAIT_MS;
    c->ring = malloc(OUT_RING_SIZE);
    c->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    pthread_mutex_init(&c->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&c->have_data, &ca);
    pthread_cond_init(&c->have_space, &ca);
    pthread_condattr_destroy(&ca);
    if (!c->ring || c->wake_fd < 0) {
        err_set(errno ? errno : ENOMEM, "console: cannot allocate buffers: %s", strerror(errno));
        console_stop(c);
        return NULL;
    }
    if (c->in_fd >= 0 && interactive && isatty(c->in_fd) && enter_raw_mode(c->in_fd) < 0) {
        log_warn("%s; continuing in the terminal's current mode", err_msg());
    }

    /* The threads never take SIGPIPE (a closed output pipe is an EPIPE error, handled) nor the
     * signals the CLI handles on the main thread. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int r = 0;
    if (out_fd >= 0) {
        r = pthread_create(&c->writer, NULL, writer_main, c);
        c->writer_started = r == 0;
    }
    if (r == 0 && c->in_fd >= 0) {
        uart_set_rx_notify(com1, rx_notify, c);
        r = pthread_create(&c->reader, NULL, reader_main, c);
        c->reader_started = r == 0;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (r != 0) {
        err_set(r, "console: cannot start a thread: %s", strerror(r));
        console_stop(c);
        return NULL;
    }
    /* Become the UART's output unless the board wired one itself (it then calls
     * console_output() from its own callback). */
    if (com1) c->hooked = uart_hook_output(com1, console_output, c);
    return c;
}

void console_stop(struct console *c)
{
    if (!c) return;
    atomic_store(&c->stopping, true);
    if (c->wake_fd >= 0) wake(c);
    pthread_mutex_lock(&c->lock);
    pthread_cond_broadcast(&c->have_data);
    pthread_cond_broadcast(&c->have_space); /* a vCPU waiting for room gives up at once */
    pthread_mutex_unlock(&c->lock);
    /* Under the UART lock: once this returns no vCPU is inside console_output() for us. */
    if (c->hooked) uart_set_output(c->uart, NULL, NULL);
    if (c->reader_started) pthread_join(c->reader, NULL);
    if (c->uart && c->in_fd >= 0) uart_set_rx_notify(c->uart, NULL, NULL);
    if (c->writer_started) pthread_join(c->writer, NULL);
    console_restore_terminal();
    uint64_t dropped = atomic_load(&c->dropped) + c->len;
    if (dropped)
        log_warn("console: %llu bytes of guest output were dropped because the output did not "
                 "keep up (a stuck terminal or a closed pipe)",
                 (unsigned long long)dropped);
    if (c->wake_fd >= 0) close(c->wake_fd);
    pthread_cond_destroy(&c->have_data);
    pthread_cond_destroy(&c->have_space);
    pthread_mutex_destroy(&c->lock);
    free(c->ring);
    free(c);
}

void console_set_output_wait(struct console *c, int ms)
{
    atomic_store(&c->out_wait_ms, ms);
}

uint64_t console_dropped(const struct console *c)
{
    return c ? atomic_load(&c->dropped) : 0;
}
