/* MC146818 RTC/CMOS (see rtc.h).  Trusts: nothing; the guest's index is masked to 7 bits, time
 * values it writes are decoded defensively (bad BCD or out-of-range fields only yield a strange
 * but harmless date; timegm() normalises them). */
#include "devices/rtc.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cpu/cpu.h"
#include "devices/devutil.h"
#include "machine/layout.h"
#include "util/log.h"

enum {
    REG_SEC = 0x00,
    REG_SEC_ALARM = 0x01,
    REG_MIN = 0x02,
    REG_MIN_ALARM = 0x03,
    REG_HOUR = 0x04,
    REG_HOUR_ALARM = 0x05,
    REG_WDAY = 0x06,
    REG_MDAY = 0x07,
    REG_MONTH = 0x08,
    REG_YEAR = 0x09,
    REG_A = 0x0a,
    REG_B = 0x0b,
    REG_C = 0x0c,
    REG_D = 0x0d,
    REG_CENTURY = 0x32,
};

#define A_UIP  0x80
#define B_SET  0x80
#define B_PIE  0x40
#define B_AIE  0x20
#define B_UIE  0x10
#define B_DM   0x04 /* 1 = binary, 0 = BCD */
#define B_24H  0x02
#define C_IRQF 0x80
#define C_PF   0x40
#define C_AF   0x20
#define C_UF   0x10
#define D_VRT  0x80

#define NS_PER_S 1000000000ll
#define UIP_NS   244000ll

static int64_t realtime_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * NS_PER_S + ts.tv_nsec;
}

int64_t (*rtc_host_clock_ns)(void) = realtime_ns;

struct rtc {
    pthread_mutex_t lock;
    struct vm *vm;
    uint8_t index;
    bool nmi_disabled;
    uint8_t cmos[128];
    int64_t offset_s; /* guest time = host time + offset */

    /* Register C: flags latched since the guest last read it.  Events are evaluated lazily at
     * each register C read and, while an interrupt is enabled, by the timer thread. */
    uint8_t c_flags;
    int64_t ev_last; /* host ns up to which events have been evaluated */
    struct irq_line irq;
    bool irq_level;
    pthread_t timer;
    pthread_cond_t timer_cond; /* CLOCK_MONOTONIC; signalled when A or B change, and at detach */
    bool timer_started, timer_stop;
};

static bool is_time_reg(unsigned r)
{
    return r == REG_SEC || r == REG_MIN || r == REG_HOUR || r == REG_WDAY || r == REG_MDAY ||
           r == REG_MONTH || r == REG_YEAR || r == REG_CENTURY;
}

static uint8_t to_bcd(unsigned v)
{
    return (uint8_t)(((v / 10) % 10) << 4 | (v % 10));
}

static unsigned from_bcd(uint8_t v)
{
    return (v >> 4) * 10 + (v & 0x0f);
}

static uint8_t encode(const struct rtc *r, unsigned v)
{
    return (r->cmos[REG_B] & B_DM) ? (uint8_t)v : to_bcd(v);
}

static unsigned decode(const struct rtc *r, uint8_t v)
{
    return (r->cmos[REG_B] & B_DM) ? v : from_bcd(v);
}

static uint8_t encode_hour(const struct rtc *r, unsigned h)
{
    if (r->cmos[REG_B] & B_24H) return encode(r, h);
    unsigned h12 = h % 12 ? h % 12 : 12;
    return (uint8_t)(encode(r, h12) | (h >= 12 ? 0x80 : 0));
}

static unsigned decode_hour(const struct rtc *r, uint8_t v)
{
    if (r->cmos[REG_B] & B_24H) return decode(r, v);
    unsigned h = decode(r, v & 0x7f) % 12;
    return (v & 0x80) ? h + 12 : h;
}

static int64_t guest_seconds(const struct rtc *r, int64_t host_ns)
{
    return host_ns / NS_PER_S + r->offset_s;
}

/* Writes the broken-down time of `t` into the time registers. */
static void render(struct rtc *r, int64_t t)
{
    time_t tt = (time_t)t;
    struct tm tm;
    if (!gmtime_r(&tt, &tm)) memset(&tm, 0, sizeof(tm));
    unsigned year = (unsigned)(tm.tm_year + 1900);
    r->cmos[REG_SEC] = encode(r, (unsigned)tm.tm_sec);
    r->cmos[REG_MIN] = encode(r, (unsigned)tm.tm_min);
    r->cmos[REG_HOUR] = encode_hour(r, (unsigned)tm.tm_hour);
    r->cmos[REG_WDAY] = encode(r, (unsigned)tm.tm_wday + 1);
    r->cmos[REG_MDAY] = encode(r, (unsigned)tm.tm_mday);
    r->cmos[REG_MONTH] = encode(r, (unsigned)tm.tm_mon + 1);
    r->cmos[REG_YEAR] = encode(r, year % 100);
    r->cmos[REG_CENTURY] = encode(r, year / 100);
}

/* The time the registers hold, as seconds since the epoch. */
static int64_t registers_time(const struct rtc *r)
{
    struct tm tm = {0};
    tm.tm_sec = (int)(decode(r, r->cmos[REG_SEC]) % 60);
    tm.tm_min = (int)(decode(r, r->cmos[REG_MIN]) % 60);
    tm.tm_hour = (int)(decode_hour(r, r->cmos[REG_HOUR]) % 24);
    tm.tm_mday = (int)decode(r, r->cmos[REG_MDAY]);
    if (tm.tm_mday < 1 || tm.tm_mday > 31) tm.tm_mday = 1;
    tm.tm_mon = (int)(decode(r, r->cmos[REG_MONTH]) % 13);
    tm.tm_mon = tm.tm_mon ? tm.tm_mon - 1 : 0;
    tm.tm_year =
        (int)(decode(r, r->cmos[REG_CENTURY]) % 100 * 100 + decode(r, r->cmos[REG_YEAR]) % 100) -
        1900;
    return (int64_t)timegm(&tm);
}

static bool alarm_field_matches(const struct rtc *r, uint8_t alarm, uint8_t now)
{
    return alarm >= 0xc0 || alarm == now; /* 0xc0-0xff: "don't care" */
}

static int64_t periodic_ns(const struct rtc *r)
{
    unsigned rs = r->cmos[REG_A] & 0x0f;
    if (!rs) return 0;
    if (rs < 3) rs += 7; /* rates 1 and 2 are the same as 8 and 9 */
    return NS_PER_S * (1ll << (rs - 1)) / 32768;
}

static bool irqf(const struct rtc *r)
{
    uint8_t b = r->cmos[REG_B], c = r->c_flags;
    return ((c & C_PF) && (b & B_PIE)) || ((c & C_AF) && (b & B_AIE)) ||
           ((c & C_UF) && (b & B_UIE));
}

/* IRQ 8 is asserted while an enabled flag is latched in register C (reading C releases it). */
static void update_irq(struct rtc *r)
{
    bool level = irqf(r);
    if (level != r->irq_level) {
        r->irq_level = level;
        irq_line_set(&r->irq, level);
    }
}

/* Latches the periodic, update-ended and alarm events that happened since the last evaluation. */
static void poll_events(struct rtc *r, int64_t now)
{
    int64_t last = r->ev_last;
    if (now <= last) return;
    r->ev_last = now;
    int64_t period = periodic_ns(r);
    if (period && now / period != last / period) r->c_flags |= C_PF;
    if (!(r->cmos[REG_B] & B_SET) && now / NS_PER_S != last / NS_PER_S) {
        r->c_flags |= C_UF; /* an update cycle completed */
        render(r, guest_seconds(r, now));
        if (alarm_field_matches(r, r->cmos[REG_SEC_ALARM], r->cmos[REG_SEC]) &&
            alarm_field_matches(r, r->cmos[REG_MIN_ALARM], r->cmos[REG_MIN]) &&
            alarm_field_matches(r, r->cmos[REG_HOUR_ALARM], r->cmos[REG_HOUR]))
            r->c_flags |= C_AF;
    }
    update_irq(r);
}

static uint8_t read_reg_c(struct rtc *r, int64_t now)
{
    poll_events(r, now);
    uint8_t c = (uint8_t)(r->c_flags | (irqf(r) ? C_IRQF : 0));
    r->c_flags = 0;
    update_irq(r);
    return c;
}

/* While an RTC interrupt is enabled, wakes at each event time so IRQ 8 fires without the guest
 * polling.  Sleeps on the condition variable otherwise. */
static void *timer_main(void *arg)
{
    struct rtc *r = arg;
    pthread_mutex_lock(&r->lock);
    while (!r->timer_stop) {
        uint8_t b = r->cmos[REG_B];
        int64_t period = periodic_ns(r);
        bool want_periodic = (b & B_PIE) && period;
        bool want_seconds = (b & (B_UIE | B_AIE)) && !(b & B_SET);
        if (!want_periodic && !want_seconds) {
            pthread_cond_wait(&r->timer_cond, &r->lock);
            continue;
        }
        int64_t now = rtc_host_clock_ns();
        poll_events(r, now);
        int64_t next = INT64_MAX;
        if (want_seconds) next = (now / NS_PER_S + 1) * NS_PER_S;
        if (want_periodic) next = MIN(next, (now / period + 1) * period);
        int64_t sleep_ns = MAX(MIN(next - now, NS_PER_S), 50000ll);
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        int64_t until = (int64_t)ts.tv_sec * NS_PER_S + ts.tv_nsec + sleep_ns;
        ts.tv_sec = (time_t)(until / NS_PER_S);
        ts.tv_nsec = (long)(until % NS_PER_S);
        pthread_cond_timedwait(&r->timer_cond, &r->lock, &ts);
    }
    pthread_mutex_unlock(&r->lock);
    return NULL;
}

/* Called with the lock held after A or B changed. */
static void timer_kick(struct rtc *r)
{
    if (!r->timer_started && (r->cmos[REG_B] & (B_PIE | B_AIE | B_UIE))) {
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_BLOCK, &all, &old);
        int e = pthread_create(&r->timer, NULL, timer_main, r);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (e)
            log_warn("rtc: cannot start the timer thread (%s); IRQ 8 only when polled",
                     strerror(e));
        r->timer_started = e == 0;
    }
    pthread_cond_signal(&r->timer_cond);
}

static uint8_t reg_read(struct rtc *r, unsigned idx)
{
    int64_t now = rtc_host_clock_ns();
    bool frozen = r->cmos[REG_B] & B_SET;
    if (is_time_reg(idx) && !frozen) render(r, guest_seconds(r, now));
    switch (idx) {
    case REG_A: {
        int64_t sub = now % NS_PER_S;
        if (sub < 0) sub += NS_PER_S;
        bool uip = !frozen && sub >= NS_PER_S - UIP_NS;
        return (uint8_t)((r->cmos[REG_A] & 0x7f) | (uip ? A_UIP : 0));
    }
    case REG_C: return read_reg_c(r, now);
    case REG_D: return D_VRT;
    default: return r->cmos[idx];
    }
}

static void reg_write(struct rtc *r, unsigned idx, uint8_t v)
{
    int64_t now = rtc_host_clock_ns();
    bool frozen = r->cmos[REG_B] & B_SET;
    if (is_time_reg(idx)) {
        if (frozen) {
            r->cmos[idx] = v;
        } else {
            /* A direct write while the clock runs sets that field of the running time. */
            render(r, guest_seconds(r, now));
            r->cmos[idx] = v;
            r->offset_s = registers_time(r) - now / NS_PER_S;
        }
        return;
    }
    switch (idx) {
    case REG_A:
        poll_events(r, now);
        r->cmos[REG_A] = v & 0x7f;
        timer_kick(r);
        return;
    case REG_B:
        if ((v & B_SET) && !frozen) {
            render(r, guest_seconds(r, now)); /* freeze: the guest edits a snapshot */
            v &= ~B_UIE;                      /* the chip clears UIE when SET is written */
        } else if (!(v & B_SET) && frozen) {
            r->cmos[REG_B] = v; /* decode in the format the guest now states */
            r->offset_s = registers_time(r) - now / NS_PER_S;
            log_debug("rtc: guest set the clock (offset %lld s from host)", (long long)r->offset_s);
        }
        poll_events(r, now);
        r->cmos[REG_B] = v;
        update_irq(r); /* enabling an interrupt whose flag is latched asserts IRQ 8 at once */
        timer_kick(r);
        return;
    case REG_C:
    case REG_D: return; /* read-only */
    default: r->cmos[idx] = v; return;
    }
}

static void rtc_read(void *opaque, uint64_t offset, uint8_t *data, unsigned size)
{
    struct rtc *r = opaque;
    pthread_mutex_lock(&r->lock);
    for (unsigned i = 0; i < size; i++) {
        if (offset + i == 0)
            data[i] = 0xff; /* the index register is write-only */
        else if (offset + i == 1)
            data[i] = reg_read(r, r->index);
        else
            data[i] = 0xff;
    }
    pthread_mutex_unlock(&r->lock);
}

static void rtc_write(void *opaque, uint64_t offset, const uint8_t *data, unsigned size)
{
    struct rtc *r = opaque;
    pthread_mutex_lock(&r->lock);
    for (unsigned i = 0; i < size; i++) {
        if (offset + i == 0) {
            r->index = data[i] & 0x7f;
            r->nmi_disabled = data[i] & 0x80;
        } else if (offset + i == 1) {
            reg_write(r, r->index, data[i]);
        }
    }
    pthread_mutex_unlock(&r->lock);
}

static const struct bus_ops rtc_ops = {.read = rtc_read, .write = rtc_write};

int rtc_attach(struct vm *vm)
{
    struct rtc *r = calloc(1, sizeof(*r));
    if (!r) return err_set(ENOMEM, "rtc: out of memory");
    pthread_mutex_init(&r->lock, NULL);
    r->vm = vm;
    r->cmos[REG_A] = 0x26;  /* 32.768 kHz time base, 1024 Hz periodic rate: the PC default */
    r->cmos[REG_B] = B_24H; /* BCD, 24-hour, no interrupts: what PC firmware leaves */
    r->ev_last = rtc_host_clock_ns();
    r->irq = (struct irq_line){.set = vm_irq_set, .ctx = vm, .gsi = GSI_RTC};
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&r->timer_cond, &ca);
    pthread_condattr_destroy(&ca);
    int rc = bus_register(&vm->pio, PORT_RTC, 2, &rtc_ops, r, "rtc");
    if (rc < 0) {
        pthread_cond_destroy(&r->timer_cond);
        pthread_mutex_destroy(&r->lock);
        free(r);
        return err_wrap(rc, "rtc");
    }
    return 0;
}

static struct rtc *find_rtc(struct vm *vm)
{
    for (unsigned i = 0; i < vm->pio.n; i++)
        if (vm->pio.r[i].ops == &rtc_ops) return vm->pio.r[i].opaque;
    err_set(ENODEV, "this VM has no RTC");
    return NULL;
}

int rtc_get_state(struct vm *vm, struct rtc_state *s)
{
    struct rtc *r = find_rtc(vm);
    if (!r) return -ENODEV;
    memset(s, 0, sizeof(*s));
    pthread_mutex_lock(&r->lock);
    poll_events(r, rtc_host_clock_ns());
    memcpy(s->cmos, r->cmos, sizeof(s->cmos));
    s->cmos[REG_D] = D_VRT;
    s->index = r->index;
    s->c_flags = r->c_flags;
    s->nmi_disabled = r->nmi_disabled;
    s->offset_s = r->offset_s;
    pthread_mutex_unlock(&r->lock);
    return 0;
}

int rtc_set_state(struct vm *vm, const struct rtc_state *s)
{
    struct rtc *r = find_rtc(vm);
    if (!r) return -ENODEV;
    if (s->index > 0x7f) return err_set(EINVAL, "rtc state: index %#x is past 127", s->index);
    if (s->c_flags & 0x8f)
        return err_set(EINVAL, "rtc state: register C flags %#x has undefined bits", s->c_flags);
    if (s->nmi_disabled > 1) return err_set(EINVAL, "rtc state: nmi_disabled is not 0 or 1");
    /* +-10000 years: beyond that timegm()/gmtime_r() arithmetic is no longer meaningful */
    if (s->offset_s > 315569520000ll || s->offset_s < -315569520000ll)
        return err_set(EINVAL, "rtc state: clock offset %lld s is out of range",
                       (long long)s->offset_s);
    pthread_mutex_lock(&r->lock);
    memcpy(r->cmos, s->cmos, sizeof(r->cmos));
    r->cmos[REG_A] &= 0x7f;
    r->cmos[REG_C] = r->cmos[REG_D] = 0;
    r->index = s->index;
    r->c_flags = s->c_flags;
    r->nmi_disabled = s->nmi_disabled;
    r->offset_s = s->offset_s;
    r->ev_last = rtc_host_clock_ns();
    update_irq(r);
    timer_kick(r);
    pthread_mutex_unlock(&r->lock);
    return 0;
}

void rtc_detach(struct vm *vm)
{
    for (unsigned i = 0; i < vm->pio.n; i++)
        if (vm->pio.r[i].ops == &rtc_ops) {
            struct rtc *r = vm->pio.r[i].opaque;
            dev_unregister(&vm->pio, &rtc_ops, r);
            pthread_mutex_lock(&r->lock);
            r->timer_stop = true;
            pthread_cond_signal(&r->timer_cond);
            pthread_mutex_unlock(&r->lock);
            if (r->timer_started) pthread_join(r->timer, NULL);
            pthread_cond_destroy(&r->timer_cond);
            pthread_mutex_destroy(&r->lock);
            free(r);
            return;
        }
}
