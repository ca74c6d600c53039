/* Unit tests of `lookout run` option parsing and the command-mode encoding. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <errno.h>

#include "cli/options.h"
#include "util/log.h"

static int parse(struct run_options *o, const char *const *args)
{
    int n = 0;
    while (args[n])
        n++;
    return run_options_parse(o, n, (char **)args);
}

static void test_mem_sizes(void **st)
{
    (void)st;
    uint64_t v;
    assert_int_equal(parse_mem_size("512M", &v), 0);
    assert_int_equal(v, 512ull << 20);
    assert_int_equal(parse_mem_size("2g", &v), 0);
    assert_int_equal(v, 2ull << 30);
    assert_int_equal(parse_mem_size("65536K", &v), 0);
    assert_int_equal(v, 64ull << 20);
    assert_int_equal(parse_mem_size("1GiB", &v), 0);
    assert_int_equal(v, 1ull << 30);
    assert_int_equal(parse_mem_size("256", &v), 0); /* bare number: MiB */
    assert_int_equal(v, 256ull << 20);
    assert_int_equal(parse_mem_size("16M", &v), 0);
    assert_int_equal(parse_mem_size("64G", &v), 0);
    const char *bad[] = {"15M",
                         "65G",
                         "",
                         "M",
                         "-1G",
                         "12X",
                         "1.5G",
                         "1GBx",
                         "4097K",
                         "99999999999999999999999G",
                         "18446744073709551615"};
    for (unsigned i = 0; i < ARRAY_SIZE(bad); i++) {
        v = 7;
        assert_true(parse_mem_size(bad[i], &v) < 0);
        assert_int_equal(v, 7);
    }
    parse_mem_size("8M", &v);
    assert_non_null(strstr(err_msg(), "16 MiB"));
}

static void test_run_options(void **st)
{
    (void)st;
    struct run_options o;
    const char *a1[] = {"--kernel", "k",        "--initrd=i",    "--mem", "1G",
                        "--smp",    "4",        "--cpu",         "kvm",   "--api",
                        "/tmp/s",   "--append", "console=ttyS0", NULL};
    assert_int_equal(parse(&o, a1), 0);
    assert_string_equal(o.kernel, "k");
    assert_string_equal(o.initrd, "i");
    assert_int_equal(o.mem_size, 1ull << 30);
    assert_int_equal(o.ncpus, 4);
    assert_string_equal(o.cpu, "kvm");
    assert_string_equal(o.api_path, "/tmp/s");
    assert_string_equal(o.append, "console=ttyS0");
    assert_int_equal(o.cmd_argc, 0);

    const char *a2[] = {"--smp=2", "-v", "--", "uname", "-r", NULL};
    assert_int_equal(parse(&o, a2), 0);
    assert_int_equal(o.ncpus, 2);
    assert_true(o.verbose);
    assert_int_equal(o.cmd_argc, 2);
    assert_string_equal(o.cmd_argv[0], "uname");
    assert_string_equal(o.cmd_argv[1], "-r"); /* options after -- belong to the command */
    assert_int_equal(o.mem_size, 512ull << 20);
    assert_string_equal(o.cpu, "auto");
    assert_string_equal(o.cpu_model, "lookout-v1");
    assert_int_equal(o.cfi.mode, BT_CFI_LOG); /* the default: count, user mode only */
    assert_false(o.cfi.kernel);

    const char *c1[] = {"--cfi", "enforce", "--cfi-scope=all", NULL};
    assert_int_equal(parse(&o, c1), 0);
    assert_int_equal(o.cfi.mode, BT_CFI_ENFORCE);
    assert_true(o.cfi.kernel);
    const char *c2[] = {"--cfi=off", NULL};
    assert_int_equal(parse(&o, c2), 0);
    assert_int_equal(o.cfi.mode, BT_CFI_OFF);

    const char *h[] = {"--help", NULL};
    assert_int_equal(parse(&o, h), 1);

    const char *const *bad[] = {
        (const char *[]){"--smp", "0", NULL},
        (const char *[]){"--smp", "65", NULL},
        (const char *[]){"--smp", "2x", NULL},
        (const char *[]){"--smp", "", NULL},
        (const char *[]){"--mem", "8M", NULL},
        (const char *[]){"--bogus", NULL},
        (const char *[]){"--kernel", NULL},
        (const char *[]){"--cpu", "tcg", NULL},
        (const char *[]){"--cpu-model", "x", NULL},
        (const char *[]){"stray", NULL},
        (const char *[]){"--", NULL},
        (const char *[]){"--initrd", "i", NULL},
        (const char *[]){"--kernel=", NULL},
        (const char *[]){"--cfi", "strict", NULL},
        (const char *[]){"--cfi-scope", "kernel", NULL},
    };
    for (unsigned i = 0; i < ARRAY_SIZE(bad); i++)
        assert_true(parse(&o, bad[i]) < 0);
    const char *u[] = {"--frobnicate", NULL};
    parse(&o, u);
    assert_non_null(strstr(err_msg(), "--frobnicate"));
}

static void test_restore_options(void **st)
{
    (void)st;
    struct run_options o;
    const char *a1[] = {"--restore", "s", "--restore-lazy", "--restore-force", "--disk",
                        "d.img",     NULL};
    assert_int_equal(parse(&o, a1), 0);
    assert_true(o.restore_lazy && o.restore_force && !o.restore_eager);
    assert_int_equal(o.vdevs.n, 1);
    const char *a2[] = {"--restore-lazy", NULL};
    assert_int_equal(parse(&o, a2), -EINVAL); /* needs --restore */
    const char *a3[] = {"--restore-force", NULL};
    assert_int_equal(parse(&o, a3), -EINVAL);
    const char *a4[] = {"--restore", "s", "--restore-lazy", "--restore-eager", NULL};
    assert_int_equal(parse(&o, a4), -EINVAL); /* one way of loading memory */
}

static void test_quote_and_base64(void **st)
{
    (void)st;
    char *a[] = {"echo", "it's", "a b", ""};
    char *s = shell_quote_argv(4, a);
    assert_string_equal(s, "'echo' 'it'\\''s' 'a b' ''");
    free(s);
    const char *in[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    const char *out[] = {"", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
    for (unsigned i = 0; i < ARRAY_SIZE(in); i++) {
        char *b = base64_encode((const uint8_t *)in[i], strlen(in[i]));
        assert_string_equal(b, out[i]);
        free(b);
    }
    uint8_t bin[3] = {0xff, 0xfe, 0xfd};
    char *b = base64_encode(bin, 3);
    assert_string_equal(b, "//79");
    free(b);
}

static void test_command_cmdline(void **st)
{
    (void)st;
    char *a[] = {"nproc"};
    char *c;
    assert_int_equal(command_mode_cmdline("quiet", 1, a, &c), 0);
    assert_string_equal(c, "quiet lookout.run=J25wcm9jJw=="); /* base64 of 'nproc' */
    free(c);
    assert_int_equal(command_mode_cmdline("", 1, a, &c), 0);
    assert_string_equal(c, "lookout.run=J25wcm9jJw==");
    free(c);
    static char big[2000];
    memset(big, 'x', sizeof(big) - 1);
    char *b[] = {big};
    assert_true(command_mode_cmdline("", 1, b, &c) < 0);
    assert_null(c);
    assert_non_null(strstr(err_msg(), "too long"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mem_sizes),       cmocka_unit_test(test_run_options),
        cmocka_unit_test(test_restore_options), cmocka_unit_test(test_quote_and_base64),
        cmocka_unit_test(test_command_cmdline),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
