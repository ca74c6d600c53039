/* libFuzzer harness for the control protocol: any byte string as one request line must yield one
 * well-formed reply (a single JSON object with a boolean "ok", ending in one newline) and never
 * crash, leak or overflow.  Machine operations are fakes.  Build and run: tests/fuzz/run.sh. */
#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "api/protocol.h"
#include "cpu/cpu.h"

static int fz_pause(struct vm *vm)
{
    return 0;
}
static const char *fz_state(const struct vm *vm)
{
    return "running";
}
static void fz_quit(struct vm *vm) {}
static const struct api_ops fz_ops = {fz_pause, fz_pause, fz_state, fz_quit};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct vm vm;
    struct api_ctx ctx = {.vm = &vm, .ops = &fz_ops};
    char reply[API_REPLY_MAX];
    size_t n = api_handle_line(&ctx, (const char *)data, size, reply, sizeof(reply));
    if (n == 0 || n >= sizeof(reply) || reply[n - 1] != '\n' || strlen(reply) != n ||
        memchr(reply, '\n', n - 1))
        abort();
    cJSON *r = cJSON_Parse(reply);
    if (!r || !cJSON_IsBool(cJSON_GetObjectItem(r, "ok"))) abort();
    cJSON_Delete(r);
    return 0;
}
