/* The control protocol: one JSON object per line in each direction.
 *
 * Request:  {"cmd":"status"|"pause"|"resume"|"quit"|"help", "id":<any JSON value, optional>}
 *           {"cmd":"snapshot","path":"/abs/file","stop":false,"zstd":false}
 *           {"cmd":"rollback","path":"/abs/file","eager":false}
 * snapshot/rollback reply state, ms, state_bytes, mem_bytes, mem_pages (and mapped).
 * Reply:    {"ok":true, ...command fields..., "id":<echoed>}
 *           {"ok":false, "error":"what went wrong", "id":<echoed if the request had one>}
 * status replies state ("running"/"paused"/...), vcpus, memory (bytes), memory_mib, backend,
 * uptime (seconds since the control socket started, a float), and cfi: {policy ("off"/"log"/
 * "enforce"; "off" unless the software CPU runs the guest), scope ("user"/"all"), violations,
 * violations_user, violations_kernel, returns_checked, returns_unverified, returns_retpoline}
 * (see cpu/bt/cfi.h).  Unknown fields in a request are ignored so newer clients can talk to
 * older servers; an unknown cmd is an error.
 *
 * api_handle_line() is a pure function of its inputs (plus the machine operations it calls): the
 * socket server, unit tests and the fuzz harness all drive it the same way.
 * Trusts: nothing in the line; it is parsed by cJSON with a length bound, any byte sequence is
 * answered with a reply. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct vm;
struct snap_save_opts;
struct snap_restore_opts;
struct snap_stats;

#define API_LINE_MAX  4096 /* longest request line accepted, newline excluded */
#define API_REPLY_MAX 4096 /* replies are at most this long, newline included */

/* The machine operations the protocol uses; tests substitute fakes.  NULL ops in api_ctx means
 * the board's own (machine_pause/machine_resume/machine_state_name and a VM_STOP_QUIT request). */
struct api_ops {
    int (*pause)(struct vm *vm);  /* 0 or -errno with err_msg() */
    int (*resume)(struct vm *vm); /* 0 or -errno with err_msg() */
    const char *(*state_name)(const struct vm *vm);
    void (*quit)(struct vm *vm);
    /* NULL: the command answers "not supported" (fakes in tests) */
    int (*snapshot)(struct vm *vm, const char *path, bool stop, const struct snap_save_opts *o,
                    struct snap_stats *st);
    int (*rollback)(struct vm *vm, const char *path, const struct snap_restore_opts *o,
                    struct snap_stats *st);
};

struct api_ctx {
    struct vm *vm;
    const struct api_ops *ops;
    int64_t start_ns;    /* CLOCK_MONOTONIC when the VM (or the socket) started: uptime origin */
    bool quit_requested; /* set once a quit command was accepted */
};

/* Handles one request line (without its newline; len bytes, need not be NUL-terminated) and
 * writes a NUL-terminated reply ending in '\n' into reply[cap].  Returns the reply length (without
 * the NUL).  cap must be at least 64; a reply that would not fit becomes an error reply. */
size_t api_handle_line(struct api_ctx *ctx, const char *line, size_t len, char *reply, size_t cap);

/* Writes the error reply for a request line that exceeded API_LINE_MAX (the server then drops
 * the connection: it cannot tell where the next request starts). */
size_t api_reply_too_long(char *reply, size_t cap);

/* CLOCK_MONOTONIC in nanoseconds (uptime origin for api_ctx.start_ns). */
int64_t api_now_ns(void);
