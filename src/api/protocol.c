/* Control protocol parser and dispatcher (see protocol.h).  Trusts: nothing in a request line. */
#include "api/protocol.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cpu/bt/cfi.h"
#include "cpu/cpu.h"
#include "machine/machine.h"
#include "snapshot/snapshot.h"
#include "util/log.h"

int64_t api_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

static void machine_quit(struct vm *vm)
{
    vm_request_stop(vm, VM_STOP_QUIT, 0);
}

static const struct api_ops machine_ops = {
    .pause = machine_pause,
    .resume = machine_resume,
    .state_name = machine_state_name,
    .quit = machine_quit,
    .snapshot = machine_snapshot,
    .rollback = machine_rollback,
};

/* snapshot / rollback: {"path": "...", ...}; the path must be absolute (the client resolves it,
 * the VM's working directory is not the user's). */
static int snap_cmd(struct api_ctx *ctx, const struct api_ops *ops, const cJSON *req, bool save,
                    cJSON *r)
{
    const cJSON *path = cJSON_GetObjectItemCaseSensitive(req, "path");
    if (!cJSON_IsString(path) || !path->valuestring || path->valuestring[0] != '/')
        return err_set(EINVAL, "\"path\" must be an absolute file name");
    if (save ? !ops->snapshot : !ops->rollback) return err_set(ENOTSUP, "not supported here");
    struct snap_stats st;
    int rc;
    if (save) {
        const cJSON *parent = cJSON_GetObjectItemCaseSensitive(req, "parent");
        if (parent &&
            (!cJSON_IsString(parent) || !parent->valuestring || parent->valuestring[0] != '/'))
            return err_set(EINVAL, "\"parent\" must be an absolute file name");
        struct snap_save_opts o = {.zstd =
                                       cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(req, "zstd")),
                                   .parent = parent ? parent->valuestring : NULL};
        bool stop = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(req, "stop"));
        rc = ops->snapshot(ctx->vm, path->valuestring, stop, &o, &st);
    } else {
        struct snap_restore_opts o = {
            .eager = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(req, "eager")),
            .verify = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(req, "verify")),
            .force = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(req, "force")),
            .lazy = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(req, "lazy"))};
        rc = ops->rollback(ctx->vm, path->valuestring, &o, &st);
    }
    if (rc < 0) return rc;
    cJSON_AddStringToObject(r, "state", ops->state_name(ctx->vm));
    cJSON_AddNumberToObject(r, "ms", (double)(int64_t)(st.ms * 1000) / 1000);
    cJSON_AddNumberToObject(r, "state_bytes", (double)st.state_bytes);
    if (save) cJSON_AddNumberToObject(r, "mem_bytes", (double)st.mem_bytes);
    cJSON_AddNumberToObject(r, "mem_pages", (double)st.mem_pages);
    if (!save) cJSON_AddBoolToObject(r, "mapped", st.mapped);
    return 0;
}

/* Serialises `obj` into reply; falls back to a fixed error when it does not fit. */
static size_t emit(cJSON *obj, char *reply, size_t cap)
{
    static const char fallback[] = "{\"ok\":false,\"error\":\"reply too large\"}\n";
    char *s = obj ? cJSON_PrintUnformatted(obj) : NULL;
    size_t n = s ? strlen(s) : 0;
    if (!s || n + 2 > cap) {
        free(s);
        if (cap < sizeof(fallback)) {
            if (cap) reply[0] = 0;
            return 0;
        }
        memcpy(reply, fallback, sizeof(fallback));
        return sizeof(fallback) - 1;
    }
    memcpy(reply, s, n);
    reply[n] = '\n';
    reply[n + 1] = 0;
    free(s);
    return n + 1;
}

static size_t error_reply(const cJSON *id, const char *msg, char *reply, size_t cap)
{
    cJSON *r = cJSON_CreateObject();
    if (r) {
        cJSON_AddFalseToObject(r, "ok");
        cJSON_AddStringToObject(r, "error", msg);
        if (id) cJSON_AddItemToObject(r, "id", cJSON_Duplicate(id, true));
    }
    size_t n = emit(r, reply, cap);
    cJSON_Delete(r);
    return n;
}

size_t api_reply_too_long(char *reply, size_t cap)
{
    char msg[96];
    snprintf(msg, sizeof(msg), "request line too long (the limit is %d bytes); closing",
             API_LINE_MAX);
    return error_reply(NULL, msg, reply, cap);
}

static bool only_space(const char *p, const char *end)
{
    for (; p < end; p++)
        if (*p != ' ' && *p != '\t' && *p != '\r' && *p != '\n') return false;
    return true;
}

static void add_status(struct api_ctx *ctx, const struct api_ops *ops, cJSON *r)
{
    struct vm *vm = ctx->vm;
    cJSON_AddStringToObject(r, "state", ops->state_name(vm));
    cJSON_AddNumberToObject(r, "vcpus", vm->ncpus);
    cJSON_AddNumberToObject(r, "memory", (double)vm->mem_size);
    cJSON_AddNumberToObject(r, "memory_mib", (double)(vm->mem_size >> 20));
    cJSON_AddStringToObject(r, "backend", vm->backend ? vm->backend->name : "none");
    double up = (double)(api_now_ns() - ctx->start_ns) / 1e9;
    cJSON_AddNumberToObject(r, "uptime", up < 0 ? 0 : (double)(int64_t)(up * 1000) / 1000);
    /* --cfi (software CPU): policy and return-integrity counts, all vCPUs */
    struct bt_cfi_policy pol;
    struct bt_cfi_stats cs;
    bt_cfi_get_policy(&pol);
    bt_cfi_get_stats(&cs);
    bool bt = vm->backend && !strcmp(vm->backend->name, "bt");
    cJSON *cfi = cJSON_AddObjectToObject(r, "cfi");
    if (cfi) {
        cJSON_AddStringToObject(cfi, "policy", bt ? bt_cfi_mode_name(pol.mode) : "off");
        cJSON_AddStringToObject(cfi, "scope", pol.kernel ? "all" : "user");
        cJSON_AddNumberToObject(cfi, "violations",
                                (double)(cs.violations_user + cs.violations_kernel));
        cJSON_AddNumberToObject(cfi, "violations_user", (double)cs.violations_user);
        cJSON_AddNumberToObject(cfi, "violations_kernel", (double)cs.violations_kernel);
        cJSON_AddNumberToObject(cfi, "returns_checked", (double)cs.checked);
        cJSON_AddNumberToObject(cfi, "returns_unverified", (double)cs.unverified);
        cJSON_AddNumberToObject(cfi, "returns_retpoline", (double)cs.retpoline);
    }
}

size_t api_handle_line(struct api_ctx *ctx, const char *line, size_t len, char *reply, size_t cap)
{
    const struct api_ops *ops = ctx->ops ? ctx->ops : &machine_ops;
    if (len > API_LINE_MAX) return api_reply_too_long(reply, cap);
    const char *end = NULL;
    cJSON *req = cJSON_ParseWithLengthOpts(line, len, &end, false);
    if (!req) return error_reply(NULL, "malformed request: not valid JSON", reply, cap);
    if (!end || end < line || end > line + len || !only_space(end, line + len)) {
        cJSON_Delete(req);
        return error_reply(NULL, "malformed request: trailing bytes after the JSON object", reply,
                           cap);
    }
    const cJSON *id = cJSON_IsObject(req) ? cJSON_GetObjectItemCaseSensitive(req, "id") : NULL;
    const cJSON *cmd = cJSON_IsObject(req) ? cJSON_GetObjectItemCaseSensitive(req, "cmd") : NULL;
    size_t n;
    if (!cJSON_IsObject(req)) {
        n = error_reply(NULL, "malformed request: expected a JSON object like {\"cmd\":\"status\"}",
                        reply, cap);
    } else if (!cJSON_IsString(cmd) || !cmd->valuestring) {
        n = error_reply(id, "malformed request: \"cmd\" must be a string", reply, cap);
    } else {
        const char *c = cmd->valuestring;
        cJSON *r = cJSON_CreateObject();
        int rc = 0;
        bool known = true;
        if (!r) {
            cJSON_Delete(req);
            return error_reply(NULL, "out of memory", reply, cap);
        }
        cJSON_AddTrueToObject(r, "ok"); /* first, so it leads the reply */
        if (!strcmp(c, "status")) {
            add_status(ctx, ops, r);
        } else if (!strcmp(c, "pause")) {
            rc = ops->pause(ctx->vm);
            if (!rc) cJSON_AddStringToObject(r, "state", ops->state_name(ctx->vm));
        } else if (!strcmp(c, "resume")) {
            rc = ops->resume(ctx->vm);
            if (!rc) cJSON_AddStringToObject(r, "state", ops->state_name(ctx->vm));
        } else if (!strcmp(c, "quit")) {
            ctx->quit_requested = true;
            ops->quit(ctx->vm);
        } else if (!strcmp(c, "snapshot") || !strcmp(c, "rollback")) {
            rc = snap_cmd(ctx, ops, req, c[0] == 's', r);
        } else if (!strcmp(c, "help")) {
            static const char *const cmds[] = {"status", "pause",    "resume",  "quit",
                                               "help",   "snapshot", "rollback"};
            cJSON_AddItemToObject(r, "commands", cJSON_CreateStringArray(cmds, 7));
        } else {
            known = false;
        }
        if (!known) {
            /* Echo at most 64 bytes of the name, printable ASCII only: the reply must stay valid
             * UTF-8 whatever bytes the client sent. */
            char name[65], msg[160];
            size_t i = 0;
            for (; c[i] && i < sizeof(name) - 1; i++)
                name[i] = (c[i] >= 0x20 && c[i] < 0x7f) ? c[i] : '?';
            name[i] = 0;
            snprintf(msg, sizeof(msg), "unknown command \"%s\" (try \"help\")", name);
            n = error_reply(id, msg, reply, cap);
        } else if (rc < 0) {
            char msg[512];
            snprintf(msg, sizeof(msg), "%s failed: %s", c, err_msg()[0] ? err_msg() : "error");
            n = error_reply(id, msg, reply, cap);
        } else {
            if (id) cJSON_AddItemToObject(r, "id", cJSON_Duplicate(id, true));
            n = emit(r, reply, cap);
        }
        cJSON_Delete(r);
    }
    cJSON_Delete(req);
    return n;
}
