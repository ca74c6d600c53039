/* `lookout run` option parsing and command-mode encoding (see options.h).  Trusts nothing from
 * argv: numbers are parsed strictly with overflow checks, unknown options are errors. */
#include "cli/options.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cpu/cpu.h"
#include "mem/guest.h"
#include "util/log.h"

int parse_mem_size(const char *s, uint64_t *out)
{
    if (!s || !isdigit((unsigned char)s[0]))
        return err_set(EINVAL, "--mem \"%s\": expected a size such as 512M or 2G", s ? s : "");
    uint64_t v = 0;
    const char *p = s;
    for (; isdigit((unsigned char)*p); p++) {
        if (v > (UINT64_MAX - 9) / 10) return err_set(EINVAL, "--mem \"%s\": too large", s);
        v = v * 10 + (uint64_t)(*p - '0');
    }
    unsigned shift = 20; /* no suffix: MiB */
    if (*p) {
        switch (toupper((unsigned char)*p)) {
        case 'K': shift = 10; break;
        case 'M': shift = 20; break;
        case 'G': shift = 30; break;
        default: return err_set(EINVAL, "--mem \"%s\": unknown unit \"%s\" (use K, M or G)", s, p);
        }
        p++;
        if (!strcasecmp(p, "iB") || !strcasecmp(p, "B")) p += strlen(p);
        if (*p) return err_set(EINVAL, "--mem \"%s\": unexpected \"%s\" after the unit", s, p);
    }
    if (v > (UINT64_MAX >> shift)) return err_set(EINVAL, "--mem \"%s\": too large", s);
    v <<= shift;
    if (v < GUEST_MEM_MIN || v > GUEST_MEM_MAX)
        return err_set(EINVAL, "--mem %s is out of range: use %llu MiB to %llu GiB", s,
                       GUEST_MEM_MIN >> 20, GUEST_MEM_MAX >> 30);
    if (v & (GUEST_PAGE_SIZE - 1))
        return err_set(EINVAL, "--mem %s is not a whole number of 4 KiB pages", s);
    *out = v;
    return 0;
}

static int parse_smp(const char *s, unsigned *out)
{
    char *end;
    errno = 0;
    long v = s && isdigit((unsigned char)s[0]) ? strtol(s, &end, 10) : -1;
    if (v < 0 || errno || *end)
        return err_set(EINVAL, "--smp \"%s\": expected a number of vCPUs (1 to %d)", s ? s : "",
                       VM_MAX_CPUS);
    if (v < 1 || v > VM_MAX_CPUS)
        return err_set(EINVAL, "--smp %ld is out of range: use 1 to %d", v, VM_MAX_CPUS);
    *out = (unsigned)v;
    return 0;
}

int run_options_parse(struct run_options *o, int argc, char **argv)
{
    memset(o, 0, sizeof(*o));
    o->mem_size = 512ull << 20;
    o->ncpus = 1;
    o->cpu = "auto";
    o->cpu_model = "lookout-v1";
    o->cfi = (struct bt_cfi_policy){.mode = BT_CFI_LOG, .kernel = false};
    static const char *const with_value[] = {
        "--kernel", "--initrd",  "--append", "--mem", "--smp", "--cpu",      "--cpu-model",
        "--api",    "--restore", "--disk",   "--net", "--cfi", "--cfi-scope"};
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--")) {
            o->cmd_argc = argc - i - 1;
            o->cmd_argv = argv + i + 1;
            if (o->cmd_argc == 0) return err_set(EINVAL, "nothing after \"--\": give a command");
            break;
        }
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) return 1;
        if (!strcmp(a, "--restore-eager")) {
            o->restore_eager = true;
            continue;
        }
        if (!strcmp(a, "--restore-force")) {
            o->restore_force = true;
            continue;
        }
        if (!strcmp(a, "--restore-lazy")) {
            o->restore_lazy = true;
            continue;
        }
        if (!strcmp(a, "--rng") || !strncmp(a, "--rng=", 6)) {
            int r = vdev_parse(&o->vdevs, "--rng", a[5] == '=' ? a + 6 : NULL);
            if (r) return r;
            continue;
        }
        if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) {
            o->verbose = true;
            continue;
        }
        /* --opt value  or  --opt=value */
        const char *name = a, *val = NULL;
        char buf[32];
        const char *eq = strchr(a, '=');
        if (eq && a[0] == '-' && (size_t)(eq - a) < sizeof(buf)) {
            memcpy(buf, a, (size_t)(eq - a));
            buf[eq - a] = 0;
            name = buf;
            val = eq + 1;
        }
        bool known = false;
        for (unsigned k = 0; k < ARRAY_SIZE(with_value); k++)
            if (!strcmp(name, with_value[k])) known = true;
        if (!known) {
            if (a[0] == '-')
                return err_set(EINVAL, "unknown option \"%s\" (see lookout --help)", a);
            return err_set(EINVAL,
                           "unexpected argument \"%s\" (a command to run in the guest "
                           "goes after \"--\")",
                           a);
        }
        if (!val) {
            if (i + 1 >= argc) return err_set(EINVAL, "option %s needs a value", name);
            val = argv[++i];
        }
        int r = 0;
        if (!strcmp(name, "--kernel"))
            o->kernel = val;
        else if (!strcmp(name, "--initrd"))
            o->initrd = val;
        else if (!strcmp(name, "--append"))
            o->append = val;
        else if (!strcmp(name, "--mem"))
            r = parse_mem_size(val, &o->mem_size), o->mem_set = true;
        else if (!strcmp(name, "--smp"))
            r = parse_smp(val, &o->ncpus), o->smp_set = true;
        else if (!strcmp(name, "--restore"))
            o->restore = val;
        else if (!strcmp(name, "--disk") || !strcmp(name, "--net"))
            r = vdev_parse(&o->vdevs, name, val);
        else if (!strcmp(name, "--api"))
            o->api_path = val;
        else if (!strcmp(name, "--cfi"))
            r = bt_cfi_parse_mode(val, &o->cfi.mode), o->cfi_set = true;
        else if (!strcmp(name, "--cfi-scope"))
            r = bt_cfi_parse_scope(val, &o->cfi.kernel), o->cfi_set = true;
        else if (!strcmp(name, "--cpu")) {
            if (strcmp(val, "kvm") && strcmp(val, "bt") && strcmp(val, "auto"))
                return err_set(EINVAL, "--cpu \"%s\": use kvm, bt or auto", val);
            o->cpu = val;
        } else if (!strcmp(name, "--cpu-model")) {
            if (strcmp(val, "lookout-v1") && strcmp(val, "host"))
                return err_set(EINVAL, "--cpu-model \"%s\": use lookout-v1 or host", val);
            o->cpu_model = val;
            o->model_set = true;
        }
        if (r) return r;
        if (!*val && strcmp(name, "--append"))
            return err_set(EINVAL, "option %s needs a non-empty value", name);
    }
    if (o->restore && (o->kernel || o->initrd || o->append || o->cmd_argc))
        return err_set(EINVAL, "--restore resumes a snapshot: --kernel, --initrd, --append and "
                               "\"-- CMD\" do not apply");
    if (o->restore_eager && !o->restore) return err_set(EINVAL, "--restore-eager needs --restore");
    if (o->restore_force && !o->restore) return err_set(EINVAL, "--restore-force needs --restore");
    if (o->restore_lazy && !o->restore) return err_set(EINVAL, "--restore-lazy needs --restore");
    if (o->restore_lazy && o->restore_eager)
        return err_set(EINVAL, "--restore-lazy and --restore-eager exclude each other");
    if (o->initrd && !o->kernel)
        return err_set(EINVAL, "--initrd needs --kernel (the default guest brings its own)");
    return 0;
}

char *shell_quote_argv(int argc, char **argv)
{
    size_t len = 1;
    for (int i = 0; i < argc; i++) {
        len += 3; /* quotes and separator */
        for (const char *p = argv[i]; *p; p++)
            len += *p == '\'' ? 4 : 1;
    }
    char *out = malloc(len), *w = out;
    if (!out) return NULL;
    for (int i = 0; i < argc; i++) {
        if (i) *w++ = ' ';
        *w++ = '\'';
        for (const char *p = argv[i]; *p; p++) {
            if (*p == '\'') {
                memcpy(w, "'\\''", 4); /* close, escaped quote, reopen */
                w += 4;
            } else {
                *w++ = *p;
            }
        }
        *w++ = '\'';
    }
    *w = 0;
    return out;
}

char *base64_encode(const uint8_t *d, size_t n)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *out = malloc((n + 2) / 3 * 4 + 1), *w = out;
    if (!out) return NULL;
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)d[i] << 16 | (uint32_t)d[i + 1] << 8 | d[i + 2];
        *w++ = tab[v >> 18];
        *w++ = tab[(v >> 12) & 63];
        *w++ = tab[(v >> 6) & 63];
        *w++ = tab[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)d[i] << 16;
        *w++ = tab[v >> 18];
        *w++ = tab[(v >> 12) & 63];
        *w++ = '=';
        *w++ = '=';
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)d[i] << 16 | (uint32_t)d[i + 1] << 8;
        *w++ = tab[v >> 18];
        *w++ = tab[(v >> 12) & 63];
        *w++ = tab[(v >> 6) & 63];
        *w++ = '=';
    }
    *w = 0;
    return out;
}

int command_mode_cmdline(const char *base, int argc, char **argv, char **out)
{
    *out = NULL;
    char *q = shell_quote_argv(argc, argv);
    if (!q) return err_set(ENOMEM, "out of memory");
    char *b64 = base64_encode((const uint8_t *)q, strlen(q));
    free(q);
    if (!b64) return err_set(ENOMEM, "out of memory");
    size_t len = strlen(base ? base : "") + strlen(b64) + 32;
    char *s = malloc(len);
    if (!s) {
        free(b64);
        return err_set(ENOMEM, "out of memory");
    }
    snprintf(s, len, "%s%slookout.run=%s", base ? base : "", base && *base ? " " : "", b64);
    free(b64);
    if (strlen(s) >= CMDLINE_MAX) {
        size_t n = strlen(s);
        free(s);
        return err_set(E2BIG,
                       "the command is too long: the kernel command line would be %zu bytes, "
                       "Linux takes at most %d (shorten the command or put it in a script)",
                       n, CMDLINE_MAX - 1);
    }
    *out = s;
    return 0;
}
