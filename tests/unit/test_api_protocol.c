/* Unit tests for the control protocol parser/dispatcher: valid requests, id echo, malformed JSON,
 * wrong types, oversized lines, unknown commands, failing machine operations. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <cjson/cJSON.h>

#include "api/protocol.h"
#include "legacy_fakevm.h"
#include "util/log.h"

static int paused, resumed, quits, fail_pause;
static bool is_paused;

static int fake_pause(struct vm *vm)
{
    paused++;
    if (fail_pause) return err_set(EBUSY, "vcpu 0 did not park");
    is_paused = true;
    return 0;
}
static int fake_resume(struct vm *vm)
{
    resumed++;
    is_paused = false;
    return 0;
}
static const char *fake_state(const struct vm *vm)
{
    return is_paused ? "paused" : "running";
}
static void fake_quit(struct vm *vm)
{
    quits++;
}
static const struct api_ops fake_ops = {
    .pause = fake_pause, .resume = fake_resume, .state_name = fake_state, .quit = fake_quit};

static struct vm vm;
static struct api_ctx ctx;
static char reply[API_REPLY_MAX];

static int setup(void **state)
{
    fake_vm_init(&vm);
    vm.ncpus = 2;
    ctx = (struct api_ctx){.vm = &vm, .ops = &fake_ops, .start_ns = api_now_ns()};
    paused = resumed = quits = fail_pause = 0;
    is_paused = false;
    return 0;
}

/* Runs one line and parses the reply (which must be one JSON object ending in a newline). */
static cJSON *run(const char *line)
{
    size_t n = api_handle_line(&ctx, line, strlen(line), reply, sizeof(reply));
    assert_true(n > 0);
    assert_int_equal(strlen(reply), n);
    assert_int_equal(reply[n - 1], '\n');
    assert_null(memchr(reply, '\n', n - 1));
    cJSON *r = cJSON_Parse(reply);
    assert_non_null(r);
    assert_true(cJSON_IsBool(cJSON_GetObjectItem(r, "ok")));
    return r;
}

static bool ok(const cJSON *r)
{
    return cJSON_IsTrue(cJSON_GetObjectItem(r, "ok"));
}

static const char *str(const cJSON *r, const char *k)
{
    const cJSON *v = cJSON_GetObjectItem(r, k);
    return cJSON_IsString(v) ? v->valuestring : "";
}

static void test_status(void **state)
{
    cJSON *r = run("{\"cmd\":\"status\"}");
    assert_true(ok(r));
    assert_string_equal(str(r, "state"), "running");
    assert_string_equal(str(r, "backend"), "fake");
    assert_int_equal(cJSON_GetObjectItem(r, "vcpus")->valueint, 2);
    assert_int_equal(cJSON_GetObjectItem(r, "memory_mib")->valueint, 256);
    assert_true(cJSON_GetObjectItem(r, "memory")->valuedouble == (double)(256 << 20));
    assert_true(cJSON_GetObjectItem(r, "uptime")->valuedouble >= 0);
    assert_null(cJSON_GetObjectItem(r, "id"));
    /* --cfi: not the software CPU, so the policy reads "off"; the counts are there */
    cJSON *cfi = cJSON_GetObjectItem(r, "cfi");
    assert_non_null(cfi);
    assert_string_equal(str(cfi, "policy"), "off");
    assert_string_equal(str(cfi, "scope"), "user");
    assert_non_null(cJSON_GetObjectItem(cfi, "violations"));
    assert_non_null(cJSON_GetObjectItem(cfi, "returns_checked"));
    cJSON_Delete(r);
}

static void test_pause_resume_quit_with_ids(void **state)
{
    cJSON *r = run("  {\"id\": 7, \"cmd\": \"pause\", \"future\": [1,2]}  ");
    assert_true(ok(r));
    assert_int_equal(paused, 1);
    assert_string_equal(str(r, "state"), "paused");
    assert_int_equal(cJSON_GetObjectItem(r, "id")->valueint, 7);
    cJSON_Delete(r);
    r = run("{\"cmd\":\"resume\",\"id\":\"abc\"}");
    assert_true(ok(r));
    assert_int_equal(resumed, 1);
    assert_string_equal(str(r, "id"), "abc");
    cJSON_Delete(r);
    r = run("{\"cmd\":\"quit\",\"id\":{\"nested\":[true]}}");
    assert_true(ok(r));
    assert_int_equal(quits, 1);
    assert_true(ctx.quit_requested);
    assert_true(cJSON_IsObject(cJSON_GetObjectItem(r, "id")));
    cJSON_Delete(r);
}

static void test_failure_is_reported(void **state)
{
    fail_pause = 1;
    cJSON *r = run("{\"cmd\":\"pause\",\"id\":1}");
    assert_false(ok(r));
    assert_non_null(strstr(str(r, "error"), "did not park"));
    assert_int_equal(cJSON_GetObjectItem(r, "id")->valueint, 1);
    cJSON_Delete(r);
}

static void test_malformed(void **state)
{
    static const char *const bad[] = {
        "",
        "{",
        "not json",
        "{\"cmd\":\"status\"",
        "[\"status\"]",
        "\"status\"",
        "42",
        "null",
        "{\"cmd\":1}",
        "{\"cmd\":null}",
        "{\"cmd\":\"status\"} x",
        "{\"cmd\":\"status\"}{\"cmd\":\"quit\"}",
        "{\"id\":1}",
        "\xff\xfe\x00",
        "{\"cmd\":\"st\\u0000atus\"}",
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        cJSON *r = run(bad[i]);
        assert_false(ok(r));
        assert_true(strlen(str(r, "error")) > 0);
        cJSON_Delete(r);
    }
    assert_int_equal(quits, 0);
}

static void test_embedded_nul_and_length(void **state)
{
    /* the length, not a NUL, delimits the line */
    const char line[] = "{\"cmd\":\"status\"}\0{\"cmd\":\"quit\"}";
    size_t n = api_handle_line(&ctx, line, sizeof(line) - 1, reply, sizeof(reply));
    assert_true(n > 0);
    assert_non_null(strstr(reply, "\"ok\":false"));
    assert_int_equal(quits, 0);
    n = api_handle_line(&ctx, "{\"cmd\":\"quit\"}garbage", 14, reply, sizeof(reply));
    assert_non_null(strstr(reply, "\"ok\":true"));
    assert_int_equal(quits, 1);
}

static void test_unknown_command(void **state)
{
    cJSON *r = run("{\"cmd\":\"format-disk\",\"id\":3}");
    assert_false(ok(r));
    assert_non_null(strstr(str(r, "error"), "unknown command"));
    assert_int_equal(cJSON_GetObjectItem(r, "id")->valueint, 3);
    cJSON_Delete(r);
    r = run("{\"cmd\":\"\xc3\xa9t\xff\x01\"}"); /* non-ASCII bytes are not echoed */
    assert_false(ok(r));
    assert_non_null(strstr(str(r, "error"), "\"??t??\""));
    cJSON_Delete(r);
    r = run("{\"cmd\":\"help\"}");
    assert_true(ok(r));
    assert_true(cJSON_IsArray(cJSON_GetObjectItem(r, "commands")));
    cJSON_Delete(r);
}

static void test_oversized(void **state)
{
    size_t n = API_LINE_MAX + 100;
    char *big = malloc(n + 1);
    memset(big, ' ', n);
    memcpy(big, "{\"cmd\":\"status\"}", 16);
    big[n] = 0;
    cJSON *r = run(big);
    assert_false(ok(r));
    assert_non_null(strstr(str(r, "error"), "too long"));
    cJSON_Delete(r);
    /* a huge id does not overflow the reply buffer: it becomes an error reply */
    memset(big, 'a', n);
    const char *pre = "{\"cmd\":\"status\",\"id\":\"";
    memcpy(big, pre, strlen(pre));
    memcpy(big + API_LINE_MAX - 2, "\"}", 3);
    r = run(big);
    assert_false(ok(r));
    cJSON_Delete(r);
    free(big);
    /* a tiny reply buffer gets a truncated-safe answer */
    char small[64];
    size_t m = api_handle_line(&ctx, "{\"cmd\":\"status\"}", 16, small, sizeof(small));
    assert_true(m < sizeof(small));
    assert_int_equal(strlen(small), m);
}

static void test_deep_nesting(void **state)
{
    char line[API_LINE_MAX];
    size_t depth = 2000, i = 0;
    for (; i < depth; i++)
        line[i] = '[';
    line[i] = 0;
    cJSON *r = run(line);
    assert_false(ok(r));
    cJSON_Delete(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_status, setup),
        cmocka_unit_test_setup(test_pause_resume_quit_with_ids, setup),
        cmocka_unit_test_setup(test_failure_is_reported, setup),
        cmocka_unit_test_setup(test_malformed, setup),
        cmocka_unit_test_setup(test_embedded_nul_and_length, setup),
        cmocka_unit_test_setup(test_unknown_command, setup),
        cmocka_unit_test_setup(test_oversized, setup),
        cmocka_unit_test_setup(test_deep_nesting, setup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
