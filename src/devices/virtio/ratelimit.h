/* Token buckets for per-device rate limits (bytes/s and operations/s), so one VM's I/O cannot
 * starve its neighbours.  A bucket with rate 0 is unlimited.  Its capacity (the burst) is
 * burst_ms milliseconds of its rate (tb_init: one second).
 *
 * Two ways to use one: tb_take() charges first and says how long to sleep (the disk and entropy
 * workers, which may block); tb_wait_ns() + tb_charge() ask whether the bucket is out of debt and
 * charge after the work (the NIC, whose vCPU-side transmit must never sleep: it stops and a
 * timer re-kicks it).  Either way a request larger than the burst is admitted when the bucket is
 * not in debt and leaves it in debt, so no size of request waits forever, and over any interval
 * T the work admitted is at most rate*T + burst + one request.
 * Trusts: its callers (rates come from validated options).  Not thread-safe: one bucket belongs
 * to one thread or is used under its device's lock. */
#pragma once
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#define TB_BURST_MS_DEFAULT 1000
#define TB_BURST_MS_MAX     60000

struct tbucket {
    uint64_t rate;   /* tokens per second, 0 = unlimited */
    double capacity; /* the burst: the most tokens the bucket holds */
    double tokens;   /* may go negative: a large request borrows from the future */
    uint64_t last_ns;
};

static inline uint64_t tb_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* burst_ms 0 means the default (one second of rate). */
static inline void tb_init_burst(struct tbucket *b, uint64_t rate, uint32_t burst_ms)
{
    if (!burst_ms) burst_ms = TB_BURST_MS_DEFAULT;
    b->rate = rate;
    b->capacity = (double)rate * (double)burst_ms / 1000.0;
    b->tokens = b->capacity;
    b->last_ns = tb_now_ns();
}

static inline void tb_init(struct tbucket *b, uint64_t rate)
{
    tb_init_burst(b, rate, TB_BURST_MS_DEFAULT);
}

/* Adds the tokens earned since the last call (time never runs backwards for a bucket). */
static inline void tb_refill(struct tbucket *b, uint64_t now)
{
    if (!b->rate || now <= b->last_ns) return;
    b->tokens += (double)(now - b->last_ns) * (double)b->rate / 1e9;
    if (b->tokens > b->capacity) b->tokens = b->capacity;
    b->last_ns = now;
}

/* ns from now until the bucket is out of debt (0: work may start now). */
static inline uint64_t tb_wait_ns(struct tbucket *b, uint64_t now)
{
    if (!b->rate) return 0;
    tb_refill(b, now);
    if (b->tokens >= 0) return 0;
    uint64_t ns = (uint64_t)(-b->tokens * 1e9 / (double)b->rate);
    return ns ? ns : 1;
}

/* Charges n tokens for work already admitted. */
static inline void tb_charge(struct tbucket *b, uint64_t n)
{
    if (b->rate) b->tokens -= (double)n;
}

/* Takes n tokens at time now; returns how many ns the caller must wait before doing the work
 * (0 if it may go at once). */
static inline uint64_t tb_take(struct tbucket *b, uint64_t n, uint64_t now)
{
    if (!b->rate) return 0;
    tb_refill(b, now);
    b->tokens -= (double)n;
    if (b->tokens >= 0) return 0;
    return (uint64_t)(-b->tokens * 1e9 / (double)b->rate);
}

static inline void tb_sleep_ns(uint64_t ns)
{
    if (!ns) return;
    struct timespec ts = {(time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull)};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

/* Snapshot: the bucket's level in 1/1000 tokens.  Restoring applies the level only when the rate
 * is the one the snapshot had (limits are host policy: the command line may change them), capped
 * at the burst. */
static inline int64_t tb_level_milli(const struct tbucket *b)
{
    return (int64_t)(b->tokens * 1000.0);
}

static inline void tb_restore(struct tbucket *b, uint64_t rate, int64_t milli)
{
    if (!b->rate || rate != b->rate) return;
    double t = (double)milli / 1000.0;
    if (t > (double)b->rate) t = (double)b->rate;
    if (t < -(double)b->rate * 60.0) t = -(double)b->rate * 60.0; /* a minute of debt at most */
    b->tokens = t;
    b->last_ns = tb_now_ns();
}
