/* Parsing of `lookout run` options and the helpers of command mode, as pure functions so unit
 * tests can call them.  Trusts nothing: every argument is validated with a clear message. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cpu/bt/cfi.h"
#include "devices/virtio/config.h"

/* Exit statuses of `lookout run` (documented in --help).  The test exit port gives odd values
 * ((v << 1) | 1), so every status lookout chooses itself is even. */
#define EXIT_OK           0
#define EXIT_USAGE        2   /* bad options or input files */
#define EXIT_NO_STATUS    118 /* -- CMD: the guest stopped without reporting CMD's status */
#define EXIT_VMM_ERROR    120 /* lookout failed (including: the VM could not be created) */
#define EXIT_INTERNAL     122 /* the CPU backend could not run the guest (registers printed) */
#define EXIT_TRIPLE_FAULT 124 /* the guest triple-faulted (registers printed) */
#define EXIT_CFI          126 /* --cfi enforce stopped the guest at an overwritten return */
#define EXIT_SIGNAL_BASE  128 /* 128 + signal number: stopped by SIGINT/SIGTERM/SIGHUP */

#define CMDLINE_MAX 2048 /* the x86 Linux kernel's COMMAND_LINE_SIZE, with the NUL */

struct run_options {
    const char *kernel, *initrd, *append;
    uint64_t mem_size;
    unsigned ncpus;
    const char *cpu, *cpu_model, *api_path;
    bool verbose;
    const char *restore; /* --restore PATH: resume a snapshot instead of booting */
    bool restore_eager;  /* --restore-eager: read memory rather than map it */
    bool restore_force;  /* --restore-force: accept disk images changed since the snapshot */
    bool restore_lazy;   /* --restore-lazy: memory on demand through userfaultfd */
    bool mem_set, smp_set, model_set; /* given explicitly (a restore refuses disagreement) */
    int cmd_argc;                     /* `-- CMD ARGS...`: argv after "--", or 0 */
    char **cmd_argv;
    struct vdev_list vdevs;   /* --disk, --net, --rng in order: virtio-mmio slots 0, 1, ... */
    struct bt_cfi_policy cfi; /* --cfi, --cfi-scope (software CPU only) */
    bool cfi_set;
};

/* Parses the arguments after "run" (argv[0] is the first option).  0, or -EINVAL with err_set()
 * naming the offending argument; `--help` returns 1. */
int run_options_parse(struct run_options *o, int argc, char **argv);

/* "512M", "2G", "1048576K", "65536" (MiB when no suffix, as QEMU): bytes, or -EINVAL. */
int parse_mem_size(const char *s, uint64_t *out);

/* Joins argv into one POSIX-shell string, each word single-quoted.  malloc'ed, NULL on ENOMEM. */
char *shell_quote_argv(int argc, char **argv);

/* Standard base64 with padding.  malloc'ed, NULL on ENOMEM. */
char *base64_encode(const uint8_t *data, size_t n);

/* The kernel command line for `run -- CMD`: base + " lookout.run=<base64 of the quoted argv>".
 * -E2BIG (err_set) if it exceeds CMDLINE_MAX - 1 bytes. */
int command_mode_cmdline(const char *base, int argc, char **argv, char **out);
