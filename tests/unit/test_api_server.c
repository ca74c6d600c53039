/* Unit tests for the control socket server and the `lookout ctl` client over a real Unix socket:
 * round trips, socket-path safety (mode 0600, stale vs live sockets, non-sockets), hostile
 * clients (oversized lines, too many connections, a client that never reads). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <poll.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "api/client.h"
#include "api/protocol.h"
#include "api/server.h"
#include "legacy_fakevm.h"

static _Atomic int paused, quits;
static int fake_pause(struct vm *vm)
{
    paused++;
    return 0;
}
static int fake_resume(struct vm *vm)
{
    paused--;
    return 0;
}
static const char *fake_state(const struct vm *vm)
{
    return paused ? "paused" : "running";
}
static void fake_quit(struct vm *vm)
{
    quits++;
}
static const struct api_ops fake_ops = {
    .pause = fake_pause, .resume = fake_resume, .state_name = fake_state, .quit = fake_quit};

static struct vm vm;
static char dir[64], path[128];

static int setup(void **state)
{
    fake_vm_init(&vm);
    paused = quits = 0;
    strcpy(dir, "/tmp/lookout-api-test-XXXXXX");
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/ctl.sock", dir);
    return 0;
}

static int teardown(void **state)
{
    unlink(path);
    rmdir(dir);
    return 0;
}

static int connect_path(const char *p)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    strcpy(sa.sun_path, p);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Reads until a newline or EOF (2 s timeout).  Returns bytes read. */
static size_t read_reply(int fd, char *buf, size_t cap)
{
    size_t n = 0;
    while (n + 1 < cap) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 2000) <= 0) break;
        ssize_t r = read(fd, buf + n, 1);
        if (r <= 0) break;
        n += (size_t)r;
        if (buf[n - 1] == '\n') break;
    }
    buf[n] = 0;
    return n;
}

static bool at_eof(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 2000) <= 0) return false;
    char c;
    return read(fd, &c, 1) <= 0; /* EOF, or ECONNRESET when the server left our bytes unread */
}

static void test_round_trip_and_ctl(void **state)
{
    struct api_server *s = api_start_ops(&vm, path, &fake_ops);
    assert_non_null(s);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_true(S_ISSOCK(st.st_mode));
    assert_int_equal(st.st_mode & 0777, 0600);

    int fd = connect_path(path);
    assert_true(fd >= 0);
    char buf[API_REPLY_MAX];
    /* two requests in one write, one split across writes */
    const char *two = "{\"cmd\":\"status\",\"id\":1}\n{\"cmd\":\"pa";
    assert_int_equal(write(fd, two, strlen(two)), (ssize_t)strlen(two));
    read_reply(fd, buf, sizeof(buf));
    assert_non_null(strstr(buf, "\"ok\":true"));
    assert_non_null(strstr(buf, "\"id\":1"));
    assert_int_equal(write(fd, "use\"}\r\n", 7), 7);
    read_reply(fd, buf, sizeof(buf));
    assert_non_null(strstr(buf, "\"state\":\"paused\""));
    /* malformed: an error, and the connection stays usable */
    assert_int_equal(write(fd, "{oops\n", 6), 6);
    read_reply(fd, buf, sizeof(buf));
    assert_non_null(strstr(buf, "\"ok\":false"));
    assert_int_equal(write(fd, "{\"cmd\":\"resume\"}\n", 17), 17);
    read_reply(fd, buf, sizeof(buf));
    assert_non_null(strstr(buf, "\"state\":\"running\""));
    close(fd);

    char *argv_status[] = {"ctl", path, "status", NULL};
    assert_int_equal(ctl_main(3, argv_status), 0);
    char *argv_bad[] = {"ctl", path, "bogus", NULL};
    assert_int_equal(ctl_main(3, argv_bad), 1);
    char *argv_kv[] = {"ctl", path, "status", "id=5", "verbose=true", NULL};
    assert_int_equal(ctl_main(5, argv_kv), 0);
    char *argv_quit[] = {"ctl", path, "quit", NULL};
    assert_int_equal(ctl_main(3, argv_quit), 0);
    assert_int_equal(quits, 1);

    api_stop(s);
    assert_int_equal(access(path, F_OK), -1);      /* removed */
    assert_int_equal(ctl_main(3, argv_status), 1); /* no socket any more: clear error, 1 */
}

static void test_ctl_usage(void **state)
{
    char *a1[] = {"ctl", NULL};
    assert_int_equal(ctl_main(1, a1), 2);
    char *a2[] = {"ctl", path, NULL};
    assert_int_equal(ctl_main(2, a2), 2);
    char *a3[] = {"ctl", path, "status", "novalue", NULL};
    assert_int_equal(ctl_main(4, a3), 2);
    char *a4[] = {"ctl", path, "status", "cmd=quit", NULL};
    assert_int_equal(ctl_main(4, a4), 2);
}

static void test_path_safety(void **state)
{
    /* a regular file is never clobbered */
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("precious", f);
    fclose(f);
    assert_null(api_start_ops(&vm, path, &fake_ops));
    assert_int_equal(access(path, F_OK), 0);
    unlink(path);

    /* a live socket is refused; a stale one is replaced */
    struct api_server *s = api_start_ops(&vm, path, &fake_ops);
    assert_non_null(s);
    assert_null(api_start_ops(&vm, path, &fake_ops));
    api_stop(s);

    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    strcpy(sa.sun_path, path);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    close(fd); /* bound, never listened, owner gone: stale */
    s = api_start_ops(&vm, path, &fake_ops);
    assert_non_null(s);
    api_stop(s);

    char longpath[200];
    memset(longpath, 'a', sizeof(longpath) - 1);
    longpath[sizeof(longpath) - 1] = 0;
    assert_null(api_start_ops(&vm, longpath, &fake_ops));
}

static void test_oversized_line_drops_connection(void **state)
{
    struct api_server *s = api_start_ops(&vm, path, &fake_ops);
    assert_non_null(s);
    int fd = connect_path(path);
    char big[API_LINE_MAX + 10];
    memset(big, 'x', sizeof(big));
    assert_int_equal(write(fd, big, sizeof(big)), (ssize_t)sizeof(big));
    char buf[API_REPLY_MAX];
    read_reply(fd, buf, sizeof(buf));
    assert_non_null(strstr(buf, "too long"));
    assert_true(at_eof(fd));
    close(fd);
    /* the server still serves others */
    fd = connect_path(path);
    assert_int_equal(write(fd, "{\"cmd\":\"status\"}\n", 17), 17);
    read_reply(fd, buf, sizeof(buf));
    assert_non_null(strstr(buf, "\"ok\":true"));
    close(fd);
    api_stop(s);
}

static void test_too_many_clients(void **state)
{
    struct api_server *s = api_start_ops(&vm, path, &fake_ops);
    int fds[API_MAX_CLIENTS];
    char buf[API_REPLY_MAX];
    for (int i = 0; i < API_MAX_CLIENTS; i++) {
        fds[i] = connect_path(path);
        assert_true(fds[i] >= 0);
        /* a round trip makes sure the server has accepted it */
        assert_int_equal(write(fds[i], "{\"cmd\":\"status\"}\n", 17), 17);
        read_reply(fds[i], buf, sizeof(buf));
        assert_non_null(strstr(buf, "\"ok\":true"));
    }
    int extra = connect_path(path);
    assert_true(extra >= 0);
    read_reply(extra, buf, sizeof(buf));
    assert_non_null(strstr(buf, "too many"));
    assert_true(at_eof(extra));
    close(extra);
    close(fds[0]);
    usleep(100000);
    extra = connect_path(path);
    assert_int_equal(write(extra, "{\"cmd\":\"status\"}\n", 17), 17);
    read_reply(extra, buf, sizeof(buf));
    assert_non_null(strstr(buf, "\"ok\":true"));
    close(extra);
    for (int i = 1; i < API_MAX_CLIENTS; i++)
        close(fds[i]);
    api_stop(s);
}

static void test_client_that_never_reads(void **state)
{
    struct api_server *s = api_start_ops(&vm, path, &fake_ops);
    int hog = connect_path(path);
    int small = 4096;
    setsockopt(hog, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    const char req[] = "{\"cmd\":\"status\"}\n";
    /* flood requests without reading replies: the server must drop us, not block */
    char flood[64 * sizeof(req)];
    for (size_t i = 0; i < 64; i++)
        memcpy(flood + i * (sizeof(req) - 1), req, sizeof(req) - 1);
    bool dropped = false;
    for (int round = 0; round < 2000 && !dropped; round++) {
        ssize_t w = send(hog, flood, 64 * (sizeof(req) - 1), MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0 && errno != EAGAIN) dropped = true;
        if (w < 0 && errno == EAGAIN) usleep(1000);
        /* meanwhile another client is served promptly */
        if (round % 200 == 0) {
            int fd = connect_path(path);
            char buf[API_REPLY_MAX];
            assert_int_equal(write(fd, req, sizeof(req) - 1), (ssize_t)(sizeof(req) - 1));
            read_reply(fd, buf, sizeof(buf));
            assert_non_null(strstr(buf, "\"ok\":true"));
            close(fd);
        }
    }
    assert_true(dropped);
    close(hog);
    api_stop(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_round_trip_and_ctl, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ctl_usage, setup, teardown),
        cmocka_unit_test_setup_teardown(test_path_safety, setup, teardown),
        cmocka_unit_test_setup_teardown(test_oversized_line_drops_connection, setup, teardown),
        cmocka_unit_test_setup_teardown(test_too_many_clients, setup, teardown),
        cmocka_unit_test_setup_teardown(test_client_that_never_reads, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
