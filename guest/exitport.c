/* lookout-exit: the guest side of lookout's test exit port (I/O port 0xf4, isa-debug-exit style).
 *
 * Usage inside the guest: lookout-exit STATUS   (STATUS 0..255)
 * Writes STATUS as one byte to port 0xf4; lookout ends the VM there and, in `lookout run -- CMD`
 * mode, exits with that status.  Debian's cloud kernel is built without CONFIG_DEVPORT, so there is
 * no /dev/port to write through: this helper asks for the port with ioperm(2) (needs root, which
 * /init is) and executes OUT itself.
 *
 * Built by guest/build.sh with the host compiler as a tiny static binary without libc
 * (-nostdlib), so it runs in the busybox-only initramfs.  Trusts nothing but its argument, which
 * it checks: anything that is not a decimal number 0..255 becomes 255. */
#include <stdint.h>

#define SYS_exit   60
#define SYS_ioperm 173
#define EXIT_PORT  0xf4

static long sys3(long nr, long a, long b, long c)
{
    long ret;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(nr), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
    return ret;
}

static unsigned parse_status(const char *s)
{
    unsigned v = 0;
    if (!s || !*s)
        return 255;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return 255;
        v = v * 10 + (unsigned)(*s - '0');
        if (v > 255)
            return 255;
    }
    return v;
}

/* Called from _start with the initial stack pointer: argc, argv[0], argv[1], ... */
__attribute__((used, noreturn)) static void start_c(long *sp)
{
    long argc = sp[0];
    const char *arg = argc > 1 ? (const char *)sp[2] : 0;
    uint8_t status = (uint8_t)parse_status(arg);

    if (sys3(SYS_ioperm, EXIT_PORT, 1, 1) == 0)
        __asm__ volatile("outb %0, %1" : : "a"(status), "Nd"((uint16_t)EXIT_PORT));
    /* Still here: the port is not an exit port on this machine, or ioperm was refused.
     * Tell the caller so /init can fall back to power-off. */
    sys3(SYS_exit, 1, 0, 0);
    for (;;)
        ;
}

__asm__(".globl _start\n"
        "_start:\n"
        "  xor %rbp, %rbp\n"
        "  mov %rsp, %rdi\n"
        "  and $-16, %rsp\n"
        "  call start_c\n"
        "  hlt\n");
