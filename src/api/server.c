/* Control socket server (see server.h).  Trusts: nothing a client sends; the only state a client
 * can grow is its bounded input line and bounded pending output. */
#include "api/server.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "api/protocol.h"
#include "cpu/cpu.h"
#include "util/log.h"

struct client {
    int fd;
    size_t in_len;
    char in[API_LINE_MAX + 1]; /* a line plus its newline */
    char *out;
    size_t out_len;
    bool closing; /* close once the output is flushed */
};

struct api_server {
    struct api_ctx ctx;
    char *path;
    dev_t dev;
    ino_t ino;
    int lfd, wake_fd;
    pthread_t thread;
    bool started;
    _Atomic bool stop;
    struct client cl[API_MAX_CLIENTS];
};

static void client_close(struct client *c)
{
    if (c->fd >= 0) close(c->fd);
    free(c->out);
    memset(c, 0, sizeof(*c));
    c->fd = -1;
}

static void client_flush(struct client *c)
{
    while (c->out_len) {
        ssize_t w = send(c->fd, c->out, c->out_len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) { /* peer gone */
                c->out_len = 0;
                c->closing = true;
            }
            return;
        }
        memmove(c->out, c->out + w, c->out_len - (size_t)w);
        c->out_len -= (size_t)w;
    }
}

static void client_queue(struct client *c, const char *buf, size_t n)
{
    if (c->out_len + n > API_OUT_MAX) {
        log_warn("api: dropping a client that does not read its replies");
        c->out_len = 0;
        c->closing = true;
        return;
    }
    char *p = realloc(c->out, c->out_len + n);
    if (!p) {
        c->closing = true;
        return;
    }
    c->out = p;
    memcpy(c->out + c->out_len, buf, n);
    c->out_len += n;
}

static void handle_line(struct api_server *s, struct client *c, const char *line, size_t len)
{
    while (len && (line[len - 1] == '\r' || line[len - 1] == ' '))
        len--;
    if (len == 0) return;
    char reply[API_REPLY_MAX];
    size_t n = api_handle_line(&s->ctx, line, len, reply, sizeof(reply));
    client_queue(c, reply, n);
}

/* Reads what the client sent and answers every complete line. */
static void client_read(struct api_server *s, struct client *c)
{
    for (;;) {
        size_t room = sizeof(c->in) - c->in_len;
        ssize_t r = room ? recv(c->fd, c->in + c->in_len, room, MSG_DONTWAIT) : 0;
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) c->closing = true;
            return;
        }
        if (r == 0 && room) { /* EOF: a last request without newline still counts */
            handle_line(s, c, c->in, c->in_len);
            c->in_len = 0;
            c->closing = true;
            return;
        }
        c->in_len += (size_t)r;
        size_t start = 0;
        for (size_t i = 0; i < c->in_len; i++) {
            if (c->in[i] != '\n') continue;
            handle_line(s, c, c->in + start, i - start);
            start = i + 1;
            if (c->closing) return;
        }
        memmove(c->in, c->in + start, c->in_len - start);
        c->in_len -= start;
        if (c->in_len == sizeof(c->in)) { /* no newline within the limit */
            char reply[API_REPLY_MAX];
            size_t n = api_reply_too_long(reply, sizeof(reply));
            client_queue(c, reply, n);
            c->in_len = 0;
            c->closing = true;
            return;
        }
    }
}

static void accept_clients(struct api_server *s)
{
    for (;;) {
        int fd = accept4(s->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                log_warn("api: accept failed: %s", strerror(errno));
            return;
        }
        struct client *slot = NULL;
        for (unsigned i = 0; i < API_MAX_CLIENTS && !slot; i++)
            if (s->cl[i].fd < 0) slot = &s->cl[i];
        if (!slot) {
            static const char busy[] =
                "{\"ok\":false,\"error\":\"too many control connections; try again later\"}\n";
            ssize_t w = send(fd, busy, sizeof(busy) - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
            (void)w;
            close(fd);
            continue;
        }
        slot->fd = fd;
    }
}

static void *server_main(void *arg)
{
    struct api_server *s = arg;
    struct pollfd p[2 + API_MAX_CLIENTS];
    while (!atomic_load(&s->stop)) {
        p[0] = (struct pollfd){.fd = s->wake_fd, .events = POLLIN};
        p[1] = (struct pollfd){.fd = s->lfd, .events = POLLIN};
        for (unsigned i = 0; i < API_MAX_CLIENTS; i++) {
            struct client *c = &s->cl[i];
            p[2 + i] = (struct pollfd){
                .fd = c->fd,
                .events = (short)((c->closing ? 0 : POLLIN) | (c->out_len ? POLLOUT : 0))};
        }
        if (poll(p, 2 + API_MAX_CLIENTS, -1) < 0) {
            if (errno == EINTR) continue;
            log_err("api: poll failed: %s; the control socket stops answering", strerror(errno));
            break;
        }
        if (p[1].revents & POLLIN) accept_clients(s);
        for (unsigned i = 0; i < API_MAX_CLIENTS; i++) {
            struct client *c = &s->cl[i];
            if (c->fd < 0) continue;
            short ev = p[2 + i].revents;
            if (ev & (POLLIN | POLLHUP)) client_read(s, c);
            if (ev & (POLLERR | POLLNVAL)) c->closing = true, c->out_len = 0;
            client_flush(c);
            if (c->closing && c->out_len == 0) client_close(c);
        }
    }
    return NULL;
}

/* Refuses to clobber anything but a stale socket (one nobody accepts connections on). */
static int clear_stale_socket(const char *path, const struct sockaddr_un *sa)
{
    struct stat st;
    if (lstat(path, &st) < 0) {
        if (errno == ENOENT) return 0;
        return err_set(errno, "control socket %s: %s", path, strerror(errno));
    }
    if (!S_ISSOCK(st.st_mode))
        return err_set(EEXIST,
                       "control socket %s: a file that is not a socket exists there; refusing to "
                       "replace it (choose another path or remove it)",
                       path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return err_set(errno, "control socket: socket(): %s", strerror(errno));
    int r = connect(fd, (const struct sockaddr *)sa, sizeof(*sa));
    int e = errno;
    close(fd);
    if (r == 0)
        return err_set(EADDRINUSE,
                       "control socket %s is in use by a running lookout (or another program); "
                       "choose another path",
                       path);
    if (e != ECONNREFUSED)
        return err_set(e, "control socket %s: cannot tell whether it is stale: %s", path,
                       strerror(e));
    if (unlink(path) < 0)
        return err_set(errno, "control socket %s: cannot remove the stale socket: %s", path,
                       strerror(errno));
    log_info("api: removed stale socket %s", path);
    return 0;
}

struct api_server *api_start(struct vm *vm, const char *path)
{
    return api_start_ops(vm, path, NULL);
}

struct api_server *api_start_ops(struct vm *vm, const char *path, const struct api_ops *ops)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (!path || !*path || strlen(path) >= sizeof(sa.sun_path)) {
        err_set(ENAMETOOLONG, "control socket path \"%s\" is empty or longer than %zu bytes",
                path ? path : "", sizeof(sa.sun_path) - 1);
        return NULL;
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    if (clear_stale_socket(path, &sa) < 0) return NULL;

    struct api_server *s = calloc(1, sizeof(*s));
    if (!s || !(s->path = strdup(path))) {
        free(s);
        err_set(ENOMEM, "control socket: out of memory");
        return NULL;
    }
    s->ctx = (struct api_ctx){.vm = vm, .ops = ops, .start_ns = api_now_ns()};
    s->lfd = s->wake_fd = -1;
    for (unsigned i = 0; i < API_MAX_CLIENTS; i++)
        s->cl[i].fd = -1;

    bool bound = false;
    int r;
    s->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (s->lfd < 0) {
        r = err_set(errno, "control socket: socket(): %s", strerror(errno));
        goto fail;
    }
    if (bind(s->lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        r = err_set(errno, "control socket %s: bind: %s", path, strerror(errno));
        goto fail;
    }
    bound = true;
    /* 0600 before listen(): until listen() nobody can connect, so there is no window in which
     * another user could talk to the VM. */
    struct stat st;
    if (chmod(path, 0600) < 0 || stat(path, &st) < 0) {
        r = err_set(errno, "control socket %s: chmod 0600: %s", path, strerror(errno));
        goto fail;
    }
    s->dev = st.st_dev;
    s->ino = st.st_ino;
    if (listen(s->lfd, API_MAX_CLIENTS) < 0) {
        r = err_set(errno, "control socket %s: listen: %s", path, strerror(errno));
        goto fail;
    }
    s->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (s->wake_fd < 0) {
        r = err_set(errno, "control socket: eventfd: %s", strerror(errno));
        goto fail;
    }
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    r = pthread_create(&s->thread, NULL, server_main, s);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (r != 0) {
        r = err_set(r, "control socket: cannot start its thread: %s", strerror(r));
        goto fail;
    }
    s->started = true;
    return s;
fail:
    (void)r;
    if (s->lfd >= 0) close(s->lfd);
    if (s->wake_fd >= 0) close(s->wake_fd);
    if (bound) unlink(path);
    free(s->path);
    free(s);
    return NULL;
}

void api_stop(struct api_server *s)
{
    if (!s) return;
    atomic_store(&s->stop, true);
    if (s->started) {
        uint64_t one = 1;
        ssize_t w = write(s->wake_fd, &one, sizeof(one));
        (void)w;
        pthread_join(s->thread, NULL);
    }
    for (unsigned i = 0; i < API_MAX_CLIENTS; i++) {
        if (s->cl[i].fd < 0) continue;
        client_flush(&s->cl[i]); /* e.g. the reply to "quit" */
        client_close(&s->cl[i]);
    }
    close(s->lfd);
    close(s->wake_fd);
    /* Remove the socket only if it is still ours (nobody replaced it meanwhile). */
    struct stat st;
    if (lstat(s->path, &st) == 0 && st.st_dev == s->dev && st.st_ino == s->ino) unlink(s->path);
    free(s->path);
    free(s);
}
