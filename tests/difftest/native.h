/* Native side of the differential tester: runs instruction bytes on the host CPU in a forked,
 * sandboxed child and reports the registers, flags and scratch memory at the end (the UD2 that
 * closes the code) or at the first fault.
 *
 * Sandbox: the child maps the code and scratch pages at the addresses btenv.h uses, installs
 * handlers on an alternate stack, arms a 2 s alarm, then enters seccomp strict mode (read, write,
 * _exit, sigreturn only) before jumping to the code with every GPR and the flags loaded.  The
 * handler copies the state into a shared page and leaves with a raw exit(2).  Whatever the bytes
 * do, they can only touch the child. */
#pragma once
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <ucontext.h>
#include <unistd.h>
#include <linux/seccomp.h>

#include "btenv.h"

struct native_result {
    int sig; /* SIGILL at the end marker, else the fault's signal; 0 if the child died otherwise */
    uint64_t gpr[16];
    uint64_t rip, rflags;
    struct x86_fxsave fx; /* x87/MMX/SSE state at the end (FXSAVE layout, from the signal frame) */
    uint8_t scratch[DT_SCRATCH_N];
};

/* register image the trampoline loads (child only) */
uint64_t native_regs[16], native_flags, native_target;
struct x86_fxsave native_fx; /* loaded with FXRSTOR before the jump */
struct {
    uint32_t off;
    uint16_t sel;
} __attribute__((packed)) native_far; /* m16:32 for the far jump into 32-bit code */
static struct native_result *native_out;

#define NATIVE_LOADS                                                                               \
    "  fxrstor64 native_fx(%rip)\n"                                                                \
    "  pushq native_flags(%rip)\n"                                                                 \
    "  popfq\n"                                                                                    \
    "  movq native_regs+0(%rip), %rax\n"                                                           \
    "  movq native_regs+8(%rip), %rcx\n"                                                           \
    "  movq native_regs+16(%rip), %rdx\n"                                                          \
    "  movq native_regs+24(%rip), %rbx\n"                                                          \
    "  movq native_regs+40(%rip), %rbp\n"                                                          \
    "  movq native_regs+48(%rip), %rsi\n"                                                          \
    "  movq native_regs+56(%rip), %rdi\n"                                                          \
    "  movq native_regs+64(%rip), %r8\n"                                                           \
    "  movq native_regs+72(%rip), %r9\n"                                                           \
    "  movq native_regs+80(%rip), %r10\n"                                                          \
    "  movq native_regs+88(%rip), %r11\n"                                                          \
    "  movq native_regs+96(%rip), %r12\n"                                                          \
    "  movq native_regs+104(%rip), %r13\n"                                                         \
    "  movq native_regs+112(%rip), %r14\n"                                                         \
    "  movq native_regs+120(%rip), %r15\n"                                                         \
    "  movq native_regs+32(%rip), %rsp\n"
__asm__(".text\n"
        "native_enter:\n" NATIVE_LOADS "  jmp *native_target(%rip)\n"
        "native_enter32:\n"
        "  movl $0x2b, %eax\n" /* 32-bit code needs usable DS/ES: __USER_DS */
        "  movl %eax, %ds\n"
        "  movl %eax, %es\n" NATIVE_LOADS "  ljmpl *native_far(%rip)\n");
void native_enter(void);
void native_enter32(void);

static void native_on_signal(int sig, siginfo_t *si, void *ucv)
{
    ucontext_t *uc = ucv;
    greg_t *g = uc->uc_mcontext.gregs;
    struct native_result *r = native_out;
    r->gpr[RAX] = g[REG_RAX], r->gpr[RCX] = g[REG_RCX], r->gpr[RDX] = g[REG_RDX];
    r->gpr[RBX] = g[REG_RBX], r->gpr[RSP] = g[REG_RSP], r->gpr[RBP] = g[REG_RBP];
    r->gpr[RSI] = g[REG_RSI], r->gpr[RDI] = g[REG_RDI], r->gpr[R8] = g[REG_R8];
    r->gpr[R9] = g[REG_R9], r->gpr[R10] = g[REG_R10], r->gpr[R11] = g[REG_R11];
    r->gpr[R12] = g[REG_R12], r->gpr[R13] = g[REG_R13], r->gpr[R14] = g[REG_R14];
    r->gpr[R15] = g[REG_R15];
    r->rip = g[REG_RIP];
    r->rflags = g[REG_EFL];
    memcpy(r->scratch, (void *)DT_SCRATCH, DT_SCRATCH_N);
    if (uc->uc_mcontext.fpregs) memcpy(&r->fx, uc->uc_mcontext.fpregs, sizeof(r->fx));
    r->sig = sig;
    /* exit(2), not exit_group: the only exit seccomp strict mode allows */
    __asm__ volatile("syscall" : : "a"(60), "D"(0) : "rcx", "r11", "memory");
    for (;;)
        ;
}

static _Noreturn void native_child(const uint8_t *code, size_t len, const uint8_t *scratch,
                                   const uint64_t gpr[16], uint64_t rflags)
{
    void *s = mmap((void *)DT_SCRATCH, DT_SCRATCH_N, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    void *x = mmap((void *)DT_CODE, DT_CODE_N, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (s != (void *)DT_SCRATCH || x != (void *)DT_CODE) _exit(120);
    memcpy(s, scratch, DT_SCRATCH_N);
    memset(x, 0xcc, DT_CODE_N);
    memcpy(x, code, len);
    ((uint8_t *)x)[len] = 0x0f, ((uint8_t *)x)[len + 1] = 0x0b;
    if (mprotect(x, DT_CODE_N, PROT_READ | PROT_EXEC) < 0) _exit(121);
    static uint8_t altstack[65536];
    stack_t ss = {.ss_sp = altstack, .ss_size = sizeof(altstack)};
    sigaltstack(&ss, NULL);
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = native_on_signal;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigfillset(&sa.sa_mask);
    int sigs[] = {SIGILL, SIGSEGV, SIGBUS, SIGFPE, SIGTRAP};
    for (size_t k = 0; k < sizeof(sigs) / sizeof(sigs[0]); k++)
        sigaction(sigs[k], &sa, NULL);
    memcpy(native_regs, gpr, sizeof(native_regs));
    if (btenv_fx) {
        native_fx = *btenv_fx;
    } else {
        memset(&native_fx, 0, sizeof(native_fx));
        native_fx.fcw = 0x37f;
        native_fx.mxcsr = 0x1f80;
    }
    native_fx.mxcsr_mask = 0;
    native_flags = (rflags & 0xcd5) | 0x202; /* arithmetic flags and DF only */
    native_target = DT_CODE;
    native_far.off = (uint32_t)DT_CODE;
    native_far.sel = 0x23;
    alarm(2);
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT) < 0) _exit(122);
    if (btenv_bits == 32)
        native_enter32();
    else
        native_enter();
    _exit(123);
}

/* Runs the case natively; returns 0 and fills *r, or -1 if the child could not run it. */
static int native_run(struct native_result *shared, const uint8_t *code, size_t len,
                      const uint8_t *scratch, const uint64_t gpr[16], uint64_t rflags)
{
    memset(shared, 0, sizeof(*shared));
    native_out = shared;
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) native_child(code, len, scratch, gpr, rflags);
    int st;
    if (waitpid(pid, &st, 0) < 0) return -1;
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) shared->sig = 0;
    return 0;
}

static struct native_result *native_alloc(void)
{
    void *p = mmap(NULL, sizeof(struct native_result), PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}
