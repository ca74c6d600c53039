/* Token buckets for per-device rate limits (bytes/s and operations/s), so one VM's I/O cannot
 * starve its neighbours.  A bucket with rate 0 is unlimited.  Burst = one second of rate.
 * Trusts: its callers (rates come from validated options).  Not thread-safe: one bucket belongs
 * to one worker thread. */
#pragma once
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

struct tbucket {
    uint64_t rate; /* tokens per second, 0 = unlimited */
    double tokens; /* may go negative: a large request borrows from the future */
    uint64_t last_ns;
};

static inline uint64_t tb_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline void tb_init(struct tbucket *b, uint64_t rate)
{
    b->rate = rate;
    b->tokens = (double)rate;
    b->last_ns = tb_now_ns();
}

/* Takes n tokens at time now; returns how many ns the caller must wait before doing the work
 * (0 if it may go at once).  A request larger than the burst is admitted once the bucket is full
 * and leaves it in debt, so no size of request waits forever. */
static inline uint64_t tb_take(struct tbucket *b, uint64_t n, uint64_t now)
{
    if (!b->rate) return 0;
    if (now > b->last_ns) {
        b->tokens += (double)(now - b->last_ns) * (double)b->rate / 1e9;
        if (b->tokens > (double)b->rate) b->tokens = (double)b->rate;
        b->last_ns = now;
    }
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
