/* bench/direct_costs.c: what the host charges for the events a design that ran guest user code
 * directly (natively, in a helper process per guest address space) would have to handle.
 *
 * docs/translator.md ("User code run directly: what it would pay") multiplies these costs by the
 * guest's own event counts (the "software CPU N:" line lookout logs at teardown with
 * LOOKOUT_LOG=info) to estimate each bench/guest row under such a design.  Nothing here is part
 * of lookout; it measures the host only.
 *
 *   build/direct-costs [ROUNDS]      (make build/direct-costs; ROUNDS default 200000)
 *
 * Measures, each as a mean over ROUNDS events:
 *   trap     a system call the helper's seccomp filter turns into SIGSYS, handled in the helper
 *            itself (the floor of reflecting a guest system call: the trap and the signal return)
 *   reflect  the same, the handler then handing the event to the monitor process through shared
 *            memory and a futex and waiting for its answer (a guest system call or fault
 *            reflected to the translated kernel, with the kernel's own work left out); and with
 *            both sides spinning on the shared words instead of sleeping (each needs a core)
 *   fault    a touch of an unmapped page whose SIGSEGV handler maps a page of a memfd there
 *            (MAP_FIXED): a guest user page made present in the helper
 *   unmap    per page, dropping a region with ROUNDS/64 such pages mapped (what a CR3 load that
 *            flushed the helper's mappings would cost per page mapped again later)
 * and, for scale, a plain system call (getppid) without any filter. */
#include <errno.h>
#include <linux/futex.h>
#include <seccomp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct shared {
    _Atomic uint32_t req, ans; /* sequence numbers: the helper's request, the monitor's answer */
    uint64_t regs[16];         /* what a helper would pass: the guest's registers */
};

static struct shared *sh;
static uint32_t seq;
static int mfd = -1;
static const long page = 4096;

static double now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

static long futex(_Atomic uint32_t *w, int op, uint32_t v)
{
    return syscall(SYS_futex, (uint32_t *)w, op, v, NULL, NULL, 0);
}

/* the helper's SIGSYS handler: nothing (trap) or a round trip to the monitor (reflect) */
enum { NONE, FUTEX, SPIN };
static volatile int reflect; /* NONE, FUTEX or SPIN */
static void on_sigsys(int sig, siginfo_t *si, void *uc)
{
    (void)sig, (void)si, (void)uc;
    if (reflect == NONE) return;
    sh->regs[0] = ++seq;
    atomic_store(&sh->req, seq);
    if (reflect == SPIN) {
        while (atomic_load(&sh->ans) != seq)
            __builtin_ia32_pause();
        return;
    }
    futex(&sh->req, FUTEX_WAKE, 1);
    while (atomic_load(&sh->ans) != seq)
        futex(&sh->ans, FUTEX_WAIT, seq - 1);
}

static void on_sigsegv(int sig, siginfo_t *si, void *uc)
{
    (void)sig, (void)uc;
    uintptr_t a = (uintptr_t)si->si_addr & ~(uintptr_t)(page - 1);
    if (mmap((void *)a, (size_t)page, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, mfd, 0) ==
        MAP_FAILED)
        _exit(3);
}

static int install(int sig, void (*fn)(int, siginfo_t *, void *))
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = fn;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    return sigaction(sig, &sa, NULL);
}

/* the helper: a filter that traps getppid, then `rounds` calls; writes the mean to *out */
static int helper(long rounds, int do_reflect, double *out)
{
    if (install(SIGSYS, on_sigsys) != 0) return -1;
    scmp_filter_ctx f = seccomp_init(SCMP_ACT_ALLOW);
    if (!f || seccomp_rule_add(f, SCMP_ACT_TRAP, SCMP_SYS(getppid), 0) != 0 ||
        seccomp_load(f) != 0) {
        fprintf(stderr, "direct-costs: cannot load a seccomp filter\n");
        return -1;
    }
    seccomp_release(f);
    reflect = do_reflect;
    double t0 = now_ns();
    for (long k = 0; k < rounds; k++)
        syscall(SYS_getppid);
    *out = (now_ns() - t0) / (double)rounds;
    return 0;
}

/* runs the helper in a child; the parent answers its requests when `do_reflect` */
static int run_helper(long rounds, int do_reflect, double *mean)
{
    double *res =
        mmap(NULL, sizeof(double), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (res == MAP_FAILED) return -1;
    atomic_store(&sh->req, 0);
    atomic_store(&sh->ans, 0);
    pid_t p = fork();
    if (p < 0) return -1;
    if (p == 0) _exit(helper(rounds, do_reflect, res) == 0 ? 0 : 2);
    if (do_reflect != NONE) {
        for (uint32_t s = 1; s <= (uint32_t)rounds; s++) {
            while (atomic_load(&sh->req) != s) {
                if (do_reflect == SPIN)
                    __builtin_ia32_pause();
                else
                    futex(&sh->req, FUTEX_WAIT, s - 1);
            }
            sh->regs[1] = sh->regs[0]; /* the monitor's "work" */
            atomic_store(&sh->ans, s);
            if (do_reflect == FUTEX) futex(&sh->ans, FUTEX_WAKE, 1);
        }
    }
    int st;
    if (waitpid(p, &st, 0) != p || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "direct-costs: the helper failed (status %#x)\n", st);
        return -1;
    }
    *mean = *res;
    munmap(res, sizeof(double));
    return 0;
}

int main(int argc, char **argv)
{
    char *end = NULL;
    long rounds = argc > 1 ? strtol(argv[1], &end, 10) : 200000;
    if (argc > 2 || (argc > 1 && (end == argv[1] || *end)) || rounds < 64 || rounds > 100000000) {
        fprintf(stderr, "direct-costs: ROUNDS must be one whole number from 64 to 100000000 "
                        "(default 200000)\nusage: direct-costs [ROUNDS]\n");
        return 2;
    }
    sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED) return perror("direct-costs: mmap"), 1;

    double t0 = now_ns();
    for (long k = 0; k < rounds; k++)
        syscall(SYS_getppid);
    double plain = (now_ns() - t0) / (double)rounds;

    double trap, refl, spin;
    if (run_helper(rounds, NONE, &trap) != 0 || run_helper(rounds / 16, FUTEX, &refl) != 0 ||
        run_helper(rounds / 4, SPIN, &spin) != 0)
        return 1;

    /* fault: ROUNDS/64 pages per pass, 64 passes, each pass's region unmapped after it */
    mfd = memfd_create("direct-costs", 0);
    if (mfd < 0 || ftruncate(mfd, page) != 0) return perror("direct-costs: memfd"), 1;
    if (install(SIGSEGV, on_sigsegv) != 0) return perror("direct-costs: sigaction"), 1;
    long npages = rounds / 64;
    size_t len = (size_t)npages * (size_t)page;
    double tf = 0, tu = 0;
    for (int pass = 0; pass < 64; pass++) {
        volatile char *r = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (r == MAP_FAILED) return perror("direct-costs: mmap"), 1;
        munmap((void *)r, len); /* an address range nothing maps */
        double a = now_ns();
        for (long k = 0; k < npages; k++)
            r[k * page] = 1;
        double b = now_ns();
        munmap((void *)r, len);
        tu += now_ns() - b;
        tf += b - a;
    }
    printf("direct-costs: %ld rounds on this host (means, ns per event)\n", rounds);
    printf("  plain system call   %8.0f\n", plain);
    printf("  trap (SIGSYS)       %8.0f\n", trap);
    printf("  reflect (futex)     %8.0f\n", refl);
    printf("  reflect (spinning)  %8.0f\n", spin);
    printf("  fault (SIGSEGV+map) %8.0f\n", tf / (double)(npages * 64));
    printf("  unmap (per page)    %8.0f\n", tu / (double)(npages * 64));
    return 0;
}
