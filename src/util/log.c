/* Logging to stderr and the per-thread error message.  Trusts nothing from the guest: callers
 * format guest values with explicit widths, never as format strings. */
#include "util/log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

enum log_level log_threshold = LOG_WARN;
static struct timespec process_start;

__attribute__((constructor)) static void note_process_start(void)
{
    clock_gettime(CLOCK_MONOTONIC, &process_start);
}

double uptime_ms(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - process_start.tv_sec) * 1e3 +
           (double)(now.tv_nsec - process_start.tv_nsec) / 1e6;
}
static __thread char err_buf[1024];

void log_init_from_env(void)
{
    const char *e = getenv("LOOKOUT_LOG");
    if (!e) return;
    if (!strcasecmp(e, "debug")) log_threshold = LOG_DEBUG;
    else if (!strcasecmp(e, "info")) log_threshold = LOG_INFO;
    else if (!strcasecmp(e, "warn")) log_threshold = LOG_WARN;
    else if (!strcasecmp(e, "error")) log_threshold = LOG_ERROR;
}

void log_msg(enum log_level lvl, const char *fmt, ...)
{
    static const char *names[] = {"error", "warning", "info", "debug"};
    if (lvl > log_threshold) return;
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    /* \r so lines stay readable while the console is in raw mode */
    fprintf(stderr, "lookout: %s: %s\r\n", names[lvl], line);
}

int err_set(int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err_buf, sizeof(err_buf), fmt, ap);
    va_end(ap);
    return err > 0 ? -err : (err < 0 ? err : -EIO);
}

int err_wrap(int ret, const char *fmt, ...)
{
    char prefix[512], old[sizeof(err_buf)];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof(prefix), fmt, ap);
    va_end(ap);
    memcpy(old, err_buf, sizeof(old));
    const char *why = old[0] ? old : strerror(ret < 0 ? -ret : ret);
    size_t n = strnlen(prefix, sizeof(prefix) - 1);
    memcpy(err_buf, prefix, n);
    memcpy(err_buf + n, ": ", 2);
    size_t rest = sizeof(err_buf) - n - 3;
    size_t wl = strnlen(why, rest);
    memcpy(err_buf + n + 2, why, wl);
    err_buf[n + 2 + wl] = 0;
    return ret;
}

const char *err_msg(void)
{
    return err_buf[0] ? err_buf : "unknown error";
}

void err_clear(void)
{
    err_buf[0] = 0;
}
