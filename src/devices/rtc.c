/* MC146818 RTC/CMOS (see rtc.h).  Trusts: nothing; the guest's index is masked to 7 bits, time
 * values it writes are decoded defensively (bad BCD or out-of-range fields only yield a strange
 * but harmless date; timegm() normalises them). */
#include "devices/rtc.h"

#include <errno.h>
#include <pthread.h>
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
    int64_t offset_s;    /* guest time = host time + offset */
    int64_t last_c_read; /* host ns of the last register C read, for its lazily computed flags */
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

static uint8_t read_reg_c(struct rtc *r, int64_t now)
{
    uint8_t c = 0;
    int64_t last = r->last_c_read;
    r->last_c_read = now;
    if (!(r->cmos[REG_B] & B_SET)) {
        if (now / NS_PER_S != last / NS_PER_S) c |= C_UF;
        unsigned rs = r->cmos[REG_A] & 0x0f;
        if (rs) {
            if (rs < 3) rs += 7; /* rates 1 and 2 are the same as 8 and 9 */
            int64_t period = NS_PER_S * (1ll << (rs - 1)) / 32768;
            if (now / period != last / period) c |= C_PF;
        }
        /* Alarm: compare against the current time only (a poller reads often enough). */
        render(r, guest_seconds(r, now));
        if (alarm_field_matches(r, r->cmos[REG_SEC_ALARM], r->cmos[REG_SEC]) &&
            alarm_field_matches(r, r->cmos[REG_MIN_ALARM], r->cmos[REG_MIN]) &&
            alarm_field_matches(r, r->cmos[REG_HOUR_ALARM], r->cmos[REG_HOUR]))
            c |= C_AF;
    }
    uint8_t b = r->cmos[REG_B];
    if ((c & C_PF && b & B_PIE) || (c & C_AF && b & B_AIE) || (c & C_UF && b & B_UIE)) c |= C_IRQF;
    return c;
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
    case REG_A: r->cmos[REG_A] = v & 0x7f; return;
    case REG_B:
        if ((v & B_SET) && !frozen) {
            render(r, guest_seconds(r, now)); /* freeze: the guest edits a snapshot */
            v &= ~B_UIE;                      /* the chip clears UIE when SET is written */
        } else if (!(v & B_SET) && frozen) {
            r->cmos[REG_B] = v; /* decode in the format the guest now states */
            r->offset_s = registers_time(r) - now / NS_PER_S;
            log_debug("rtc: guest set the clock (offset %lld s from host)", (long long)r->offset_s);
        }
        r->cmos[REG_B] = v;
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
    r->last_c_read = rtc_host_clock_ns();
    int rc = bus_register(&vm->pio, PORT_RTC, 2, &rtc_ops, r, "rtc");
    if (rc < 0) {
        pthread_mutex_destroy(&r->lock);
        free(r);
        return err_wrap(rc, "rtc");
    }
    return 0;
}

void rtc_detach(struct vm *vm)
{
    for (unsigned i = 0; i < vm->pio.n; i++)
        if (vm->pio.r[i].ops == &rtc_ops) {
            struct rtc *r = vm->pio.r[i].opaque;
            dev_unregister(&vm->pio, r);
            pthread_mutex_destroy(&r->lock);
            free(r);
            return;
        }
}
