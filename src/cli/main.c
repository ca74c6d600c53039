/* lookout's command line: `run`, `ctl`, `guest`, `--help`, `--version`.  The only place that turns
 * errors into exit statuses.  Trusts: nothing from argv (parsed in options.c); the helper script
 * $LOOKOUT_HOME/guest/build.sh for the default guest's paths (its output is parsed strictly). */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli/options.h"
#include "api/client.h"
#include "machine/console.h"
#include "machine/machine.h"
#include "snapshot/snapshot.h"
#include "util/log.h"

#define LOOKOUT_VERSION "0.1.0"

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: lookout run [options] [-- CMD [ARGS...]]\n"
        "       lookout ctl SOCKET COMMAND     (status, pause, resume, quit)\n"
        "       lookout ctl SOCKET snapshot PATH [--stop] [--zstd] | rollback PATH "
        "[--eager|--lazy] "
        "[--force]\n"
        "       lookout guest build [...]       (build the default Debian guest)\n"
        "       lookout --help | --version\n"
        "\n"
        "run options:\n"
        "  --kernel FILE        bzImage, ELF vmlinux or Multiboot kernel (default: the\n"
        "                       Debian guest built by `lookout guest build`)\n"
        "  --initrd FILE        initramfs (Multiboot: module 0)\n"
        "  --append STRING      kernel command line (added to the default guest's)\n"
        "  --mem SIZE           guest RAM, 16M..64G, suffix K/M/G (default 512M; bare = MiB)\n"
        "  --smp N              vCPUs, 1..64 (default 1)\n"
        "  --cpu kvm|bt|auto    CPU backend (default auto: KVM on hardware virtualization,\n"
        "                       the software CPU otherwise)\n"
        "  --cpu-model lookout-v1|host   CPUID model (host: what KVM supports; KVM only)\n"
        "  --api SOCKET         control socket (see lookout ctl)\n"
        "  --restore PATH       resume the snapshot PATH (memory, vCPUs and CPU model come from\n"
        "                       it; --mem/--smp/--cpu-model must agree if given; memory is\n"
        "                       mapped copy-on-write unless --restore-eager); give the same\n"
        "                       --disk/--net/--rng options, in the same order, as when it was\n"
        "                       taken; disk images must be as they were at the snapshot\n"
        "                       (same size and mtime) unless --restore-force;\n"
        "                       --restore-lazy loads memory on demand (userfaultfd)\n"
        "  --disk PATH[,ro][,bw=RATE][,iops=N]  virtio disk on a raw image (repeatable;\n"
        "                       RATE in bytes/s with K/M/G, e.g. bw=10M)\n"
        "  --disk ...,burst=MS  the disk's buckets hold MS ms of their rate (default 1000)\n"
        "  --net user[,hostfwd=tcp::HOSTPORT-:GUESTPORT]|tap:IFNAME  virtio NIC (repeatable)\n"
        "  --net ...,bw=RATE,pps=N  NIC rate limits in bytes/s (K/M/G) and packets/s, both\n"
        "                       directions; rx-bw=, tx-bw=, rx-pps=, tx-pps= one direction\n"
        "                       (rx: to the guest); burst=MS as for --disk\n"
        "  --rng[=bw=RATE]      virtio entropy device fed from the host's getrandom()\n"
        "  --cfi off|log|enforce  return-address integrity under --cpu bt (default log: count\n"
        "                       and log returns to an overwritten return address; enforce:\n"
        "                       stop the VM there)\n"
        "  --cfi-scope user|all   privilege levels --cfi polices (default user: CPL 3 only)\n"
        "  -v, --verbose        with -- CMD: also show the kernel's console on stderr\n"
        "  -- CMD [ARGS...]     run CMD in the guest, copy its output to stdout, power off and\n"
        "                       exit with its status\n"
        "\n"
        "exit status: 0 guest powered off or rebooted; (v << 1) | 1 when the guest writes v to\n"
        "the test exit port 0xf4 (with -- CMD: CMD's status, or %d if the guest stopped\n"
        "without reporting it); %d usage or input error; %d lookout error; %d CPU backend\n"
        "internal error; %d guest triple fault; %d stopped by --cfi enforce; 128+N stopped by\n"
        "signal N.\n"
        "environment: LOOKOUT_HOME (default: the directory above the binary's),\n"
        "LOOKOUT_LOG=debug|info|warn|error\n",
        EXIT_NO_STATUS, EXIT_USAGE, EXIT_VMM_ERROR, EXIT_INTERNAL, EXIT_TRIPLE_FAULT, EXIT_CFI);
}

static int fail_usage(const char *msg)
{
    fprintf(stderr, "lookout: %s\n", msg);
    return EXIT_USAGE;
}

/* $LOOKOUT_HOME, or the directory above the one holding this binary (build/lookout -> .). */
static int lookout_home(char *out, size_t n)
{
    const char *env = getenv("LOOKOUT_HOME");
    if (env && *env) {
        snprintf(out, n, "%s", env);
        return 0;
    }
    char exe[PATH_MAX];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (len <= 0) return err_set(errno, "cannot find the lookout binary: set LOOKOUT_HOME");
    exe[len] = 0;
    char *dir = dirname(exe); /* .../build */
    dir = dirname(dir);       /* ... */
    snprintf(out, n, "%s", dir);
    return 0;
}

/* Copies with truncation; false if src did not fit. */
static bool copy_str(char *dst, size_t n, const char *src)
{
    size_t len = strnlen(src, n);
    bool fits = len < n;
    if (!fits) len = n - 1;
    memcpy(dst, src, len);
    dst[len] = 0;
    return fits;
}

static int check_file(const char *what, const char *path)
{
    struct stat st;
    if (stat(path, &st) < 0) return err_set(errno, "%s %s: %s", what, path, strerror(errno));
    if (!S_ISREG(st.st_mode)) return err_set(EINVAL, "%s %s: not a regular file", what, path);
    if (access(path, R_OK) < 0) return err_set(errno, "%s %s: %s", what, path, strerror(errno));
    return 0;
}

/* Runs `build.sh --print-paths` and takes KERNEL=, INITRD=, APPEND= from its output. */
struct guest_paths {
    char kernel[PATH_MAX], initrd[PATH_MAX], append[CMDLINE_MAX];
};

static int default_guest(struct guest_paths *g)
{
    memset(g, 0, sizeof(*g));
    char home[PATH_MAX], script[PATH_MAX + 32];
    int r = lookout_home(home, sizeof(home));
    if (r) return r;
    snprintf(script, sizeof(script), "%s/guest/build.sh", home);
    if (access(script, X_OK) < 0)
        return err_set(ENOENT,
                       "no --kernel given and the default guest builder %s is missing "
                       "(%s): pass --kernel, or set LOOKOUT_HOME to the lookout source tree",
                       script, strerror(errno));
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) < 0) return err_set(errno, "pipe: %s", strerror(errno));
    pid_t pid = fork();
    if (pid < 0) return err_set(errno, "fork: %s", strerror(errno));
    if (pid == 0) {
        dup2(fds[1], STDOUT_FILENO);
        execl(script, script, "--print-paths", (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    FILE *f = fdopen(fds[0], "r");
    char line[CMDLINE_MAX + 16];
    while (f && fgets(line, sizeof(line), f)) {
        line[strcspn(line, "\n")] = 0;
        if (!strncmp(line, "KERNEL=", 7))
            copy_str(g->kernel, sizeof(g->kernel), line + 7);
        else if (!strncmp(line, "INITRD=", 7))
            copy_str(g->initrd, sizeof(g->initrd), line + 7);
        else if (!strncmp(line, "APPEND=", 7))
            copy_str(g->append, sizeof(g->append), line + 7);
    }
    if (f)
        fclose(f);
    else
        close(fds[0]);
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        return err_set(EIO,
                       "building the default guest failed (%s --print-paths exited with "
                       "status %d; see its messages above)",
                       script, WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
    if (!g->kernel[0]) return err_set(EIO, "%s --print-paths printed no KERNEL= line", script);
    return 0;
}

/* SIGINT/SIGTERM/SIGHUP are blocked in every thread and taken here, so stopping is an ordinary
 * function call (the console restores the terminal on the normal path). */
static struct vm *signal_vm;
static volatile int got_signal;
static sigset_t stop_signals;

static bool board_have_restore(void)
{
    void (*f)(void) = console_restore_terminal;
    return f != NULL;
}

static void *signal_thread(void *arg)
{
    (void)arg;
    for (;;) {
        int sig;
        if (sigwait(&stop_signals, &sig) != 0) continue;
        if (got_signal) { /* second signal: the VM does not stop, leave now */
            if (board_have_restore()) console_restore_terminal();
            _exit(EXIT_SIGNAL_BASE + sig);
        }
        got_signal = sig;
        if (signal_vm) vm_request_stop(signal_vm, VM_STOP_QUIT, 0);
    }
    return NULL;
}

static int exit_status(enum vm_stop_reason why, const struct vm *vm, bool command_mode)
{
    switch (why) {
    case VM_STOP_POWEROFF:
    case VM_STOP_RESET:
        if (!command_mode) return EXIT_OK;
        log_err("the guest %s without reporting the command's exit status (its console is "
                "above; --verbose shows it as it runs)",
                why == VM_STOP_RESET ? "rebooted" : "powered off");
        return EXIT_NO_STATUS;
    case VM_STOP_EXIT_PORT:
        /* command mode: /init writes the command's status byte itself */
        return command_mode ? (vm->exit_code & 0xff) : (((vm->exit_code << 1) | 1) & 0xff);
    case VM_STOP_TRIPLE_FAULT: return EXIT_TRIPLE_FAULT;
    case VM_STOP_INTERNAL_ERROR: return EXIT_INTERNAL;
    case VM_STOP_CFI: return EXIT_CFI;
    case VM_STOP_QUIT: return got_signal ? EXIT_SIGNAL_BASE + got_signal : EXIT_OK;
    default: return EXIT_VMM_ERROR;
    }
}

static int cmd_run(int argc, char **argv)
{
    struct run_options o;
    int r = run_options_parse(&o, argc, argv);
    if (r == 1) {
        usage(stdout);
        return EXIT_OK;
    }
    if (r < 0) return fail_usage(err_msg());

    static struct guest_paths g;
    char cmdline[CMDLINE_MAX];
    static struct snap_header sh;
    static struct cpuid_model scpuid;
    if (o.restore) {
        if (snapshot_peek(o.restore, &sh, &scpuid) < 0) return fail_usage(err_msg());
        char msg[256];
        if (o.mem_set && o.mem_size != sh.mem_size) {
            snprintf(msg, sizeof(msg),
                     "--mem %lluM disagrees with the snapshot's %lluM (leave "
                     "--mem out with --restore)",
                     (unsigned long long)(o.mem_size >> 20),
                     (unsigned long long)(sh.mem_size >> 20));
            return fail_usage(msg);
        }
        if (o.smp_set && o.ncpus != sh.ncpus) {
            snprintf(msg, sizeof(msg), "--smp %u disagrees with the snapshot's %u vCPUs", o.ncpus,
                     sh.ncpus);
            return fail_usage(msg);
        }
        if (o.model_set && strcmp(o.cpu_model, sh.cpu_model)) {
            snprintf(msg, sizeof(msg), "--cpu-model %s disagrees with the snapshot's %s",
                     o.cpu_model, sh.cpu_model);
            return fail_usage(msg);
        }
        o.mem_size = sh.mem_size;
        o.ncpus = sh.ncpus;
        o.cpu_model = sh.cpu_model;
        cmdline[0] = 0;
    } else if (o.kernel) {
        if (check_file("kernel", o.kernel) < 0) return fail_usage(err_msg());
        if (o.initrd && check_file("initrd", o.initrd) < 0) return fail_usage(err_msg());
        if (!copy_str(cmdline, sizeof(cmdline), o.append ? o.append : ""))
            return fail_usage("--append is too long (Linux takes 2047 bytes)");
    } else {
        if (default_guest(&g) < 0) {
            log_err("%s", err_msg());
            return EXIT_VMM_ERROR;
        }
        o.kernel = g.kernel;
        o.initrd = g.initrd[0] ? g.initrd : NULL;
        const char *user = o.append ? o.append : "";
        size_t gl = strlen(g.append), ul = strlen(user);
        if (gl + 1 + ul >= sizeof(cmdline))
            return fail_usage("--append is too long (Linux takes 2047 bytes)");
        memcpy(cmdline, g.append, gl);
        size_t pos = gl;
        if (gl && ul) cmdline[pos++] = ' ';
        memcpy(cmdline + pos, user, ul + 1);
    }
    char *full = NULL;
    if (o.cmd_argc > 0) {
        if (command_mode_cmdline(cmdline, o.cmd_argc, o.cmd_argv, &full) < 0)
            return fail_usage(err_msg());
    } else if (strlen(cmdline) >= CMDLINE_MAX - 1) {
        return fail_usage("the kernel command line is too long (Linux takes 2047 bytes)");
    }

    bt_cfi_set_policy(&o.cfi);
    if (o.cfi_set && o.cfi.mode != BT_CFI_OFF && !strcmp(o.cpu, "kvm"))
        log_warn("--cfi applies to the software CPU (--cpu bt) only: under KVM the guest's "
                 "returns run on the hardware unchecked");
    struct machine_config cfg = {
        .kernel = o.kernel,
        .initrd = o.initrd,
        .cmdline = full ? full : cmdline,
        .mem_size = o.mem_size,
        .ncpus = o.ncpus,
        .cpu = o.cpu,
        .cpu_model = o.cpu_model,
        .api_path = o.api_path,
        .command_mode = o.cmd_argc > 0,
        .verbose = o.verbose,
        .console_in_fd = o.cmd_argc > 0 ? -1 : STDIN_FILENO,
        .console_out_fd = STDOUT_FILENO,
        .restore_path = o.restore,
        .restore_eager = o.restore_eager,
        .restore_force = o.restore_force,
        .restore_lazy = o.restore_lazy,
        .tsc_khz = o.restore ? sh.tsc_khz : 0,
        .restore_cpuid = o.restore ? &scpuid : NULL,
        .vdevs = &o.vdevs,
    };

    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    sigaddset(&stop_signals, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &stop_signals, NULL);
    signal(SIGPIPE, SIG_IGN);
    pthread_t st;
    if (pthread_create(&st, NULL, signal_thread, NULL) != 0) {
        log_err("cannot start the signal thread");
        free(full);
        return EXIT_VMM_ERROR;
    }

    struct vm *vm = machine_create(&cfg);
    if (!vm) {
        log_err("%s", err_msg());
        free(full);
        return got_signal ? EXIT_SIGNAL_BASE + got_signal : EXIT_VMM_ERROR;
    }
    signal_vm = vm;
    if (got_signal) vm_request_stop(vm, VM_STOP_QUIT, 0);
    enum vm_stop_reason why = machine_run(vm);
    int status = exit_status(why, vm, cfg.command_mode);
    signal_vm = NULL;
    machine_destroy(vm);
    free(full);
    return status;
}

static int cmd_guest(int argc, char **argv)
{
    char home[PATH_MAX], script[PATH_MAX + 32];
    if (lookout_home(home, sizeof(home)) < 0) {
        log_err("%s", err_msg());
        return EXIT_VMM_ERROR;
    }
    snprintf(script, sizeof(script), "%s/guest/build.sh", home);
    char **args = calloc((size_t)argc + 2, sizeof(char *));
    if (!args) return EXIT_VMM_ERROR;
    args[0] = script;
    /* `lookout guest build ARGS` runs build.sh ARGS; anything else is passed as it is */
    int first = argc > 0 && !strcmp(argv[0], "build") ? 1 : 0;
    for (int i = first; i < argc; i++)
        args[i - first + 1] = argv[i];
    execv(script, args);
    log_err("cannot run %s: %s (set LOOKOUT_HOME to the lookout source tree)", script,
            strerror(errno));
    free(args);
    return EXIT_VMM_ERROR;
}

int main(int argc, char **argv)
{
    log_init_from_env();
    if (argc < 2) {
        usage(stderr);
        return EXIT_USAGE;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
        usage(stdout);
        return EXIT_OK;
    }
    if (!strcmp(cmd, "--version") || !strcmp(cmd, "version")) {
        printf("lookout %s\n", LOOKOUT_VERSION);
        return EXIT_OK;
    }
    if (!strcmp(cmd, "run")) return cmd_run(argc - 2, argv + 2);
    if (!strcmp(cmd, "guest")) return cmd_guest(argc - 2, argv + 2);
    if (!strcmp(cmd, "ctl")) {
        int (*ctl)(int, char **) = ctl_main;
        if (!ctl) {
            log_err("`lookout ctl` is not available in this build yet");
            return EXIT_VMM_ERROR;
        }
        return ctl(argc - 1, argv + 1); /* argv[0] = "ctl", argv[1] = SOCKET, ... */
    }
    fprintf(stderr, "lookout: unknown command \"%s\" (see lookout --help)\n", cmd);
    return EXIT_USAGE;
}
