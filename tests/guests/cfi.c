/* cfi: user-mode code that returns normally, and (with rop=1 on the command line) a ROP-style
 * return to a non-call site, for lookout's --cfi (the software CPU's return-address shadow stack).
 *
 * The kernel gives ring 3 access to the first 2 MiB (its own image), loads a GDT with user
 * segments and a TSS, and runs two user programs by IRETQ; each ends with INT3, which (DPL-0
 * gates) arrives as #GP in the kernel, and the handler resumes the kernel with the user's RAX.
 *   clean: 100 calls of a leaf, a 100-deep recursion (deeper than the shadow stack), a
 *          longjmp-like unwind (a callee restores an outer frame's stack pointer and returns)
 *   rop:   a callee overwrites its own return address with a gadget's and returns: the gadget
 *          sets RAX = 0x1337
 * Prints "cfi: clean run ok", then with rop=1 either "cfi: ROP gadget ran in user mode" (no
 * enforcement: the interpreter/translator under --cfi off|log, or KVM) or nothing more when
 * lookout stops the VM at the return (--cfi enforce: exit status 126).  Ends with "cfi: done",
 * value 0 -> status 1.  A failure prints "cfi: FAILED ..." and writes 1 (status 3).
 * Trusts nothing from the host but the Multiboot information. */
#include "lib.h"

extern uint64_t pml4[];
extern char u_clean[], u_rop[];

static struct {
    uint32_t reserved0;
    uint64_t rsp0, rsp1, rsp2, reserved1, ist[7], reserved2;
    uint16_t reserved3, iomap;
} __attribute__((packed, aligned(16))) tss;

static uint64_t gdt2[8] __attribute__((aligned(16)));
static uint8_t kstack0[8192] __attribute__((aligned(16)));
static uint8_t ustack[16384] __attribute__((aligned(16)));
uint64_t kresume_rsp, user_sp, user_ip; /* read by run_user's asm */
static volatile uint64_t user_rax;
static volatile int user_done;

/* The user programs: plain code in the kernel image, reachable from ring 3 once the first 2 MiB
 * are user pages. */
__asm__(".text\n"
        ".globl u_clean, u_rop\n"
        "u_clean:\n"
        "    mov $100, %ecx\n"
        "1:  call u_leaf\n"
        "    dec %ecx\n"
        "    jnz 1b\n"
        "    mov $100, %edi\n"
        "    call u_rec\n"
        "    call u_lj_a\n"
        "    mov $0x600d, %eax\n"
        "    int3\n"
        "u_leaf: ret\n"
        "u_rec: test %edi, %edi\n"
        "    jz 2f\n"
        "    dec %edi\n"
        "    call u_rec\n"
        "2:  ret\n"
        "u_lj_a: mov %rsp, %r8\n"
        "    call u_lj_b\n"
        "    ud2\n"
        "u_lj_b: call u_lj_c\n"
        "    ud2\n"
        "u_lj_c: mov %r8, %rsp\n"
        "    ret\n"
        "u_rop:\n"
        "    call u_victim\n"
        "    mov $1, %eax\n" /* the real return site: not reached */
        "    int3\n"
        "u_victim:\n"
        "    lea u_gadget(%rip), %rax\n"
        "    mov %rax, (%rsp)\n" /* overwrite the return address */
        "    ret\n"
        "u_gadget:\n" /* not a call site */
        "    mov $0x1337, %eax\n"
        "    int3\n");

/* #GP (INT3 through a DPL-0 gate) or #BP from ring 3: back to the kernel after run_user's IRETQ */
extern char kresume[];
static void back_to_kernel(struct trap_frame *f)
{
    if ((f->cs & 3) != 3) {
        kprintf("cfi: FAILED: trap %lu in the kernel at %lx\n", f->vector, f->rip);
        exit_vm(1);
    }
    user_rax = f->rax;
    user_done = 1;
    f->rip = (uint64_t)(uintptr_t)kresume;
    f->cs = 0x08;
    f->ss = 0x10;
    f->rsp = kresume_rsp;
    f->rflags = 0x2;
}

static uint64_t run_user(const char *entry)
{
    user_done = 0;
    user_sp = (uint64_t)(uintptr_t)(ustack + sizeof(ustack));
    user_ip = (uint64_t)(uintptr_t)entry;
    __asm__ volatile("push %%rbp\n"
                     "mov %%rsp, kresume_rsp(%%rip)\n"
                     "pushq $0x1b\n" /* SS: user data, RPL 3 */
                     "pushq user_sp(%%rip)\n"
                     "pushq $0x2\n"  /* RFLAGS: interrupts off, IOPL 0 */
                     "pushq $0x23\n" /* CS: user code, RPL 3 */
                     "pushq user_ip(%%rip)\n"
                     "iretq\n"
                     ".globl kresume\n"
                     "kresume:\n"
                     "pop %%rbp\n"
                     :
                     :
                     : "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12",
                       "r13", "r14", "r15", "memory", "cc");
    if (!user_done) {
        kprintf("cfi: FAILED: the user program did not come back\n");
        exit_vm(1);
    }
    return user_rax;
}

static void setup_user(void)
{
    /* ring 3 may use the first 2 MiB (the kernel image, its data and the user stack) */
    uint64_t *pdpt = (uint64_t *)(uintptr_t)(pml4[0] & ~0xfffull);
    uint64_t *pd = (uint64_t *)(uintptr_t)(pdpt[0] & ~0xfffull);
    pml4[0] |= 4;
    pdpt[0] |= 4;
    pd[0] |= 4;
    uint64_t cr3;
    __asm__ volatile("mov %%cr3, %0\n mov %0, %%cr3" : "=r"(cr3)::"memory");

    tss.rsp0 = (uint64_t)(uintptr_t)(kstack0 + sizeof(kstack0));
    tss.iomap = sizeof(tss);
    uint64_t base = (uint64_t)(uintptr_t)&tss, lim = sizeof(tss) - 1;
    gdt2[0] = 0;
    gdt2[1] = 0x00af9a000000ffffull; /* 0x08 kernel code 64 */
    gdt2[2] = 0x00cf92000000ffffull; /* 0x10 kernel data */
    gdt2[3] = 0x00cff2000000ffffull; /* 0x18 user data */
    gdt2[4] = 0x00affa000000ffffull; /* 0x20 user code 64 */
    gdt2[5] = (lim & 0xffff) | ((base & 0xffffff) << 16) | (0x89ull << 40) |
              ((lim >> 16 & 0xf) << 48) | ((base >> 24 & 0xff) << 56); /* 0x28 TSS */
    gdt2[6] = base >> 32;
    struct {
        uint16_t limit;
        uint64_t base;
    } __attribute__((packed)) d = {sizeof(gdt2) - 1, (uint64_t)(uintptr_t)gdt2};
    __asm__ volatile("lgdt %0\n ltr %w1" ::"m"(d), "r"(0x28) : "memory");
    set_trap(13, back_to_kernel);
    set_trap(3, back_to_kernel);
}

int kmain(struct mb_info *mbi)
{
    long rop = cmdline_value(mbi, "rop");
    setup_user();
    uint64_t r = run_user(u_clean);
    if (r != 0x600d) {
        kprintf("cfi: FAILED: the clean user program ended with %lx\n", r);
        return 1;
    }
    kprintf("cfi: clean run ok\n");
    if (rop == 1) {
        r = run_user(u_rop);
        if (r == 0x1337)
            kprintf("cfi: ROP gadget ran in user mode (nothing stopped it)\n");
        else
            kprintf("cfi: FAILED: the ROP program ended with %lx\n", r);
    }
    kprintf("cfi: done\n");
    return 0;
}
