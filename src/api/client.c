/* Control socket client (see client.h).  Trusts: the reply only as far as printing it and
 * reading its "ok" field; a missing or malformed reply is an error. */
#include "api/client.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "api/protocol.h"

#define REPLY_TIMEOUT_MS 30000  /* pause waits for every vCPU to park: allow it time */
#define SNAP_TIMEOUT_MS  600000 /* saving or loading a large memory takes a while */

static void usage(FILE *f)
{
    fprintf(f, "usage: lookout ctl SOCKET COMMAND [KEY=VALUE...]\n"
               "       lookout ctl SOCKET snapshot PATH [--stop] [--zstd] [--parent SNAPSHOT]\n"
               "       lookout ctl SOCKET rollback PATH [--eager|--lazy] [--force]\n"
               "  commands: status, pause, resume, quit, help, snapshot, rollback\n"
               "  SOCKET is the path given to `lookout run --api SOCKET`\n");
}

static cJSON *arg_value(const char *v)
{
    cJSON *j = cJSON_Parse(v);
    if (j && (cJSON_IsNumber(j) || cJSON_IsBool(j) || cJSON_IsNull(j))) return j;
    cJSON_Delete(j);
    return cJSON_CreateString(v);
}

static int connect_to(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sa.sun_path)) {
        fprintf(stderr, "lookout ctl: socket path too long (max %zu bytes): %s\n",
                sizeof(sa.sun_path) - 1, path);
        return -1;
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        fprintf(stderr, "lookout ctl: socket(): %s\n", strerror(errno));
        return -1;
    }
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int e = errno;
        if (e == ENOENT)
            fprintf(stderr,
                    "lookout ctl: no control socket at %s (is lookout running with --api %s?)\n",
                    path, path);
        else if (e == ECONNREFUSED)
            fprintf(stderr,
                    "lookout ctl: nothing is listening on %s (the VM has probably exited and "
                    "left a stale socket)\n",
                    path);
        else if (e == EACCES)
            fprintf(stderr,
                    "lookout ctl: permission denied on %s (the socket is mode 0600: run "
                    "as the user who started the VM)\n",
                    path);
        else
            fprintf(stderr, "lookout ctl: cannot connect to %s: %s\n", path, strerror(e));
        close(fd);
        return -1;
    }
    return fd;
}

static int send_all(int fd, const char *buf, size_t n)
{
    while (n) {
        ssize_t w = send(fd, buf, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        buf += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Reads one reply line into buf (NUL-terminated, newline stripped).  0 or -1 with a message. */
static int read_line(int fd, char *buf, size_t cap, int timeout_ms)
{
    size_t len = 0;
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int r = poll(&p, 1, timeout_ms);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            fprintf(stderr, "lookout ctl: no reply within %d s\n", timeout_ms / 1000);
            return -1;
        }
        ssize_t n = recv(fd, buf + len, cap - 1 - len, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            fprintf(stderr, "lookout ctl: the VM closed the connection without a reply%s\n",
                    len ? " line" : "");
            return -1;
        }
        len += (size_t)n;
        char *nl = memchr(buf, '\n', len);
        if (nl) {
            *nl = 0;
            return 0;
        }
        if (len == cap - 1) {
            fprintf(stderr, "lookout ctl: reply too long\n");
            return -1;
        }
    }
}

int ctl_main(int argc, char **argv)
{
    if (argc >= 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) {
        usage(stdout);
        return 0;
    }
    if (argc < 3) {
        usage(stderr);
        return 2;
    }
    cJSON *req = cJSON_CreateObject();
    if (!req) return 1;
    cJSON_AddStringToObject(req, "cmd", argv[2]);
    bool snap = !strcmp(argv[2], "snapshot") || !strcmp(argv[2], "rollback");
    for (int i = 3; i < argc; i++) {
        /* snapshot/rollback: PATH (made absolute: the VM's working directory is not ours) and
         * --stop/--zstd/--eager/--verify flags */
        const char *field = "path";
        if (snap && !strcmp(argv[i], "--parent")) {
            if (++i >= argc) {
                fprintf(stderr, "lookout ctl: --parent needs a snapshot path\n");
                cJSON_Delete(req);
                return 2;
            }
            field = "parent";
        } else if (snap && argv[i][0] == '-' && argv[i][1] == '-' && !strchr(argv[i], '=')) {
            cJSON_DeleteItemFromObjectCaseSensitive(req, argv[i] + 2);
            cJSON_AddTrueToObject(req, argv[i] + 2);
            continue;
        }
        if (snap && !strchr(argv[i], '=')) {
            char abs[PATH_MAX + 2];
            if (argv[i][0] == '/') {
                snprintf(abs, sizeof(abs), "%s", argv[i]);
            } else {
                char cwd[PATH_MAX];
                if (!getcwd(cwd, sizeof(cwd))) {
                    fprintf(stderr, "lookout ctl: getcwd: %s\n", strerror(errno));
                    cJSON_Delete(req);
                    return 2;
                }
                if ((size_t)snprintf(abs, sizeof(abs), "%s/%s", cwd, argv[i]) >= sizeof(abs)) {
                    fprintf(stderr, "lookout ctl: path too long\n");
                    cJSON_Delete(req);
                    return 2;
                }
            }
            cJSON_DeleteItemFromObjectCaseSensitive(req, field);
            cJSON_AddStringToObject(req, field, abs);
            continue;
        }
        const char *eq = strchr(argv[i], '=');
        if (!eq || eq == argv[i]) {
            fprintf(stderr, "lookout ctl: argument \"%s\" is not KEY=VALUE\n", argv[i]);
            usage(stderr);
            cJSON_Delete(req);
            return 2;
        }
        char *key = strndup(argv[i], (size_t)(eq - argv[i]));
        if (!key || !strcmp(key, "cmd")) {
            fprintf(stderr, "lookout ctl: argument \"%s\": the key cannot be \"cmd\"\n", argv[i]);
            free(key);
            cJSON_Delete(req);
            return 2;
        }
        cJSON_DeleteItemFromObjectCaseSensitive(req, key);
        cJSON_AddItemToObject(req, key, arg_value(eq + 1));
        free(key);
    }
    char *line = cJSON_PrintUnformatted(req);
    cJSON_Delete(req);
    if (!line) return 1;
    if (strlen(line) > API_LINE_MAX) {
        fprintf(stderr, "lookout ctl: request too long (max %d bytes)\n", API_LINE_MAX);
        free(line);
        return 2;
    }
    int fd = connect_to(argv[1]);
    if (fd < 0) {
        free(line);
        return 1;
    }
    int rc = 1;
    char reply[API_REPLY_MAX + 1];
    if (send_all(fd, line, strlen(line)) < 0 || send_all(fd, "\n", 1) < 0) {
        fprintf(stderr, "lookout ctl: sending the request failed: %s\n", strerror(errno));
    } else if (read_line(fd, reply, sizeof(reply), snap ? SNAP_TIMEOUT_MS : REPLY_TIMEOUT_MS) ==
               0) {
        printf("%s\n", reply);
        cJSON *r = cJSON_Parse(reply);
        if (!r)
            fprintf(stderr, "lookout ctl: the reply is not JSON\n");
        else if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r, "ok")))
            rc = 0;
        cJSON_Delete(r);
    }
    free(line);
    close(fd);
    return rc;
}
