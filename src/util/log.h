/* Logging and error reporting shared by every floor.
 *
 * Library code never exits: it reports with err_set() (what failed, why, what to do) and returns
 * a negative errno.  Only cli/ turns an error into an exit status.  err_set() keeps the message in
 * thread-local storage so concurrent vCPU threads do not trample each other. */
#pragma once
#include <stdarg.h>
#include <stdbool.h>

enum log_level { LOG_ERROR, LOG_WARN, LOG_INFO, LOG_DEBUG };

extern enum log_level log_threshold; /* default LOG_WARN; LOOKOUT_LOG=debug|info|warn|error */

void log_init_from_env(void);
void log_msg(enum log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_err(...)   log_msg(LOG_ERROR, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_WARN, __VA_ARGS__)
#define log_info(...)  log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...) do { if (log_threshold >= LOG_DEBUG) log_msg(LOG_DEBUG, __VA_ARGS__); } while (0)

/* Records an error message for the calling thread and returns -err (err is a positive errno),
 * so a caller can write `return err_set(EINVAL, "kernel %s: ...", path);`. */
int err_set(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prefixes the current message with more context: "loading kernel: <old message>". */
int err_wrap(int ret, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
const char *err_msg(void);
/* Milliseconds since the process started (taken in a constructor, before main()). */
double uptime_ms(void);
void err_clear(void);

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define MIN(a, b)     ((a) < (b) ? (a) : (b))
#define MAX(a, b)     ((a) > (b) ? (a) : (b))
#define ALIGN_UP(x, a) (((x) + ((a) - 1)) & ~((__typeof__(x))(a) - 1))
#define __must_check __attribute__((warn_unused_result))
