/* Unit tests of exception/interrupt delivery and the system instructions of the software CPU,
 * run as real instruction sequences through bt_exec(): IDT delivery with stack switch, IST and
 * error codes, #DF and triple fault, IRET to ring 3, SYSCALL/SYSRET, CPUID/RDMSR/WRMSR checks,
 * IN/OUT with IOPL and the TSS bitmap, CR writes with reserved bits, real-mode and 32-bit
 * protected-mode delivery. */
#include "bt_testenv.h"

static const uint8_t HLT[] = {0xf4};

/* The frame an exception handler got: [0] = error code if has_err, then RIP, CS, RFLAGS, RSP, SS.
 */
static uint64_t frame(struct tenv *t, int k)
{
    return get64(t, t->c->s.gpr[RSP] + 8 * (uint64_t)k);
}

static struct tenv *setup(void)
{
    struct tenv *t = tenv_new(false);
    t_setup_long(t);
    return t;
}

static void int80_from_ring3_switches_stack(void **state)
{
    struct tenv *t = setup();
    struct bt_cpu *c = t->c;
    t_to_ring3(t, T_CODE3);
    uint64_t old_rsp = c->s.gpr[RSP];
    c->s.rflags |= X86_FLAG_IF;
    t_run(t, (uint8_t[]){0xcd, 0x80}, 2, 10);
    assert_int_equal(t_handler_vector(t), 0x80);
    assert_int_equal(c->cpl, 0);
    assert_int_equal(c->s.gpr[RSP], T_STACK0 - 40);
    assert_int_equal(frame(t, 0), T_CODE3 + 2);
    assert_int_equal(frame(t, 1), SEL_UCODE);
    assert_true(frame(t, 2) & X86_FLAG_IF);
    assert_int_equal(frame(t, 3), old_rsp);
    assert_int_equal(frame(t, 4), SEL_UDATA);
    assert_false(c->s.rflags & X86_FLAG_IF); /* interrupt gate */
    assert_true(c->s.seg[SEG_SS].unusable);  /* null SS at CPL 0 in long mode */
    tenv_free(t);
}

static void int_gate_dpl_gives_gp(void **state)
{
    struct tenv *t = setup();
    t_to_ring3(t, T_CODE3);
    t_run(t, (uint8_t[]){0xcd, 0x40}, 2, 10);
    assert_int_equal(t_handler_vector(t), X86_GP);
    assert_int_equal(frame(t, 0), 0x40 * 8 + 2);
    assert_int_equal(frame(t, 1), T_CODE3); /* faulting INT, not after it */
    assert_int_equal(frame(t, 2), SEL_UCODE);
    tenv_free(t);
}

static void page_fault_from_ring3(void **state)
{
    struct tenv *t = setup();
    struct bt_cpu *c = t->c;
    t_to_ring3(t, T_CODE3);
    /* mov rax, [0x500000] (not mapped) */
    t_run(t, (uint8_t[]){0x48, 0x8b, 0x04, 0x25, 0x00, 0x00, 0x50, 0x00}, 8, 10);
    assert_int_equal(t_handler_vector(t), X86_PF);
    assert_int_equal(frame(t, 0), 4); /* U, not present, read */
    assert_int_equal(c->s.cr2, 0x500000);
    assert_int_equal(frame(t, 1), T_CODE3);
    tenv_free(t);
}

static void ud2_same_privilege_no_errcode(void **state)
{
    struct tenv *t = setup();
    struct bt_cpu *c = t->c;
    uint64_t rsp = c->s.gpr[RSP];
    t_run(t, (uint8_t[]){0x0f, 0x0b}, 2, 10);
    assert_int_equal(t_handler_vector(t), X86_UD);
    assert_int_equal(c->s.gpr[RSP], (rsp & ~0xfull) - 40);
    assert_int_equal(frame(t, 0), T_CODE0);
    assert_int_equal(frame(t, 1), SEL_KCODE);
    assert_int_equal(frame(t, 4), SEL_KDATA);
    tenv_free(t);
}

static void ist_and_nmi_unmask_on_iret(void **state)
{
    struct tenv *t = setup();
    struct bt_cpu *c = t->c;
    t_set_gate64(t, X86_NMI, T_CODE0 + 0x100, 0xe, 0, 1, true);
    put_bytes(t, T_CODE0 + 0x100, (uint8_t[]){0x48, 0xcf}, 2); /* iretq */
    put_bytes(t, T_CODE0, HLT, 1);
    c->insn_rip = c->s.rip;
    bt_deliver(c, BT_EV_NMI, X86_NMI, BT_NO_ERRCODE);
    assert_int_equal(c->s.rip, T_CODE0 + 0x100);
    assert_int_equal(c->s.gpr[RSP], T_IST1 - 40);
    assert_true(c->s.ev.nmi_masked);
    c->halted = false;
    bt_exec(c, 5);
    assert_false(c->s.ev.nmi_masked);
    assert_true(c->halted);
    assert_int_equal(c->s.rip, T_CODE0 + 1);
    assert_int_equal(c->s.gpr[RSP], T_STACK0 - 0x100);
    tenv_free(t);
}

static void benign_then_contributory_is_serial(void **state)
{
    struct tenv *t = setup();
    struct bt_cpu *c = t->c;
    t_set_gate64(t, X86_UD, T_HAND + 16 * X86_UD, 0xe, 0, 0, false);
    t_run(t, (uint8_t[]){0x0f, 0x0b}, 2, 10);
    assert_int_equal(t_handler_vector(t), X86_NP);
    assert_int_equal(frame(t, 0), X86_UD * 8 + 2 + 1); /* IDT, EXT */
    assert_false(c->shutdown);
    tenv_free(t);
}

static void double_and_triple_fault(void **state)
{
    struct tenv *t = setup();
    struct bt_cpu *c = t->c;
    t_set_gate64(t, X86_GP, T_HAND + 16 * X86_GP, 0xe, 0, 0, false);
    t_to_ring3(t, T_CODE3);
    t_run(t, (uint8_t[]){0xcd, 0x40}, 2, 10);
    assert_int_equal(t_handler_vector(t), X86_DF);
    assert_int_equal(frame(t, 0), 0);
    assert_false(c->shutdown);

    /* and with no #DF gate either: shutdown */
    t_setup_long(t);
    t_set_gate64(t, X86_GP, T_HAND + 16 * X86_GP, 0xe, 0, 0, false);
    t_set_gate64(t, X86_DF, T_HAND + 16 * X86_DF, 0xe, 0, 0, false);
    struct vcpu_exit ex = {.reason = VCPU_EXIT_NONE};
    c->exit = &ex;
    t_to_ring3(t, T_CODE3);
    t_run(t, (uint8_t[]){0xcd, 0x40}, 2, 10);
    assert_true(c->shutdown);
    assert_int_equal(ex.reason, VCPU_EXIT_SHUTDOWN);
    c->exit = NULL;

    /* a #PF whose delivery faults (#PF on the handler stack) is a #DF */
    t_setup_long(t);
    put64(t, T_TSS + 4, 0x500000); /* RSP0 in an unmapped page */
    t_to_ring3(t, T_CODE3);
    t_set_gate64(t, X86_DF, T_HAND + 16 * X86_DF, 0xe, 0, 1, true); /* #DF on IST1 */
    t_run(t, (uint8_t[]){0x48, 0x8b, 0x04, 0x25, 0x00, 0x00, 0x50, 0x00}, 8, 10);
    assert_int_equal(t_handler_vector(t), X86_DF);
    assert_int_equal(c->s.gpr[RSP], T_IST1 - 48);
    tenv_free(t);
}

static void iretq_to_ring3_and_hlt_faults(void **state)
{
    struct tenv *t = setup();
    struct bt_cpu *c = t->c;
    uint64_t rsp = c->s.gpr[RSP];
    put64(t, rsp + 0, T_CODE3);
    put64(t, rsp + 8, SEL_UCODE);
    put64(t, rsp + 16, 0x202);
    put64(t, rsp + 24, T_STACK3 - 8);
    put64(t, rsp + 32, SEL_UDATA);
    put_bytes(t, T_CODE3, HLT, 1);
    t_run(t, (uint8_t[]){0x48, 0xcf}, 2, 10);
    /* HLT at CPL 3 is #GP(0) */
    assert_int_equal(t_handler_vector(t), X86_GP);
    assert_int_equal(frame(t, 0), 0);
    assert_int_equal(frame(t, 1), T_CODE3);
    assert_int_equal(frame(t, 2), SEL_UCODE);
    assert_true(frame(t, 3) & X86_FLAG_IF);
    assert_int_equal(frame(t, 4), T_STACK3 - 8);
    assert_int_equal(frame(t, 5), SEL_UDATA);
    assert_true(c->s.seg[SEG_DS].unusable); /* DPL-0 data segment dropped on return to ring 3 */

    /* IRET to ring 3 with an RPL-0 SS selector is #GP(selector) */
    t_setup_long(t);
    rsp = c->s.gpr[RSP];
    put64(t, rsp + 0, T_CODE3);
    put64(t, rsp + 8, SEL_UCODE);
    put64(t, rsp + 16, 0x2);
    put64(t, rsp + 24, T_STACK3 - 8);
    put64(t, rsp + 32, SEL_KDATA);
    t_run(t, (uint8_t[]){0x48, 0xcf}, 2, 10);
    assert_int_equal(t_handler_vector(t), X86_GP);
    assert_int_equal(frame(t, 0), SEL_KDATA);
    assert_int_equal(frame(t, 1), T_CODE0);
    tenv_free(t);
}

static void syscall_sysret(void **state)
{
    struct tenv *t = setup();
    struct bt_cpu *c = t->c;
    t_to_ring3(t, T_CODE3);
    c->s.rflags = 0x246;
    c->s.sfmask = X86_FLAG_IF | X86_FLAG_DF;
    t_run(t, (uint8_t[]){0x0f, 0x05}, 2, 10);
    assert_int_equal(t_handler_vector(t), 0xf0); /* LSTAR */
    assert_int_equal(c->cpl, 0);
    assert_int_equal(c->s.gpr[RCX], T_CODE3 + 2);
    assert_int_equal(c->s.gpr[R11], 0x246);
    assert_int_equal(c->s.seg[SEG_CS].sel, SEL_KCODE);
    assert_int_equal(c->s.seg[SEG_SS].sel, SEL_KDATA);
    assert_false(c->s.rflags & X86_FLAG_IF);

    /* SYSRET to 64-bit ring 3, which then faults on HLT */
    c->s.rip = T_CODE0;
    c->s.gpr[RCX] = T_CODE3 + 0x10;
    c->s.gpr[R11] = 0x202;
    put_bytes(t, T_CODE3 + 0x10, HLT, 1);
    t_run(t, (uint8_t[]){0x48, 0x0f, 0x07}, 3, 10);
    assert_int_equal(t_handler_vector(t), X86_GP);
    assert_int_equal(frame(t, 1), T_CODE3 + 0x10);
    assert_int_equal(frame(t, 2), 0x20 | 3);
    assert_int_equal(frame(t, 5), 0x18 | 3);

    /* non-canonical RCX: #GP in ring 0 at the SYSRET */
    t_setup_long(t);
    c->s.gpr[RCX] = 0x0000800000000000ull;
    t_run(t, (uint8_t[]){0x48, 0x0f, 0x07}, 3, 10);
    assert_int_equal(t_handler_vector(t), X86_GP);
    assert_int_equal(frame(t, 1), T_CODE0);
    assert_int_equal(frame(t, 2), SEL_KCODE);

    /* SYSCALL without EFER.SCE: #UD */
    t_setup_long(t);
    c->s.efer &= ~X86_EFER_SCE;
    t_run(t, (uint8_t[]){0x0f, 0x05}, 2, 10);
    assert_int_equal(t_handler_vector(t), X86_UD);
    tenv_free(t);
}

/* bt_cpu.ustat: instructions at CPL 3 and the entries into the kernel from there, by cause */
static void user_stats(void **state)
{
    struct tenv *t = setup();
    struct bt_cpu *c = t->c;
    memset(&c->ustat, 0, sizeof(c->ustat));
    /* three NOPs and SYSCALL at CPL 3: one stay of three instructions (the one that leaves
     * counts as the kernel's), one system call */
    t_to_ring3(t, T_CODE3);
    t_run(t, (uint8_t[]){0x90, 0x90, 0x90, 0x0f, 0x05}, 5, 20);
    assert_int_equal(t_handler_vector(t), 0xf0);
    assert_int_equal(c->cpl, 0);
    assert_int_equal(c->ustat.entries, 1);
    assert_int_equal(c->ustat.syscalls, 1);
    assert_int_equal(c->ustat.icount, 3);
    uint64_t kernel0 = c->icount;
    /* NOP, INT 0x80 (a DPL-3 gate) */
    t_to_ring3(t, T_CODE3);
    t_run(t, (uint8_t[]){0x90, 0xcd, 0x80}, 3, 10);
    assert_int_equal(t_handler_vector(t), 0x80);
    assert_int_equal(c->ustat.softints, 1);
    assert_int_equal(c->ustat.icount, 4);
    /* a load from an unmapped page: a page fault */
    t_to_ring3(t, T_CODE3);
    t_run(t, (uint8_t[]){0x48, 0x8b, 0x04, 0x25, 0x00, 0x00, 0x80, 0x00}, 8, 10);
    assert_int_equal(t_handler_vector(t), X86_PF);
    /* HLT: #GP, an exception that is not a page fault */
    t_to_ring3(t, T_CODE3);
    t_run(t, (uint8_t[]){0xf4}, 1, 10);
    assert_int_equal(t_handler_vector(t), X86_GP);
    assert_int_equal(c->ustat.faults, 2);
    assert_int_equal(c->ustat.page_faults, 1);
    /* an external interrupt taken at CPL 3; one taken at CPL 0 does not count */
    t_to_ring3(t, T_CODE3);
    bt_deliver(c, BT_EV_EXTINT, 0x30, BT_NO_ERRCODE);
    assert_int_equal(c->cpl, 0);
    bt_deliver(c, BT_EV_EXTINT, 0x31, BT_NO_ERRCODE);
    assert_int_equal(c->ustat.irqs, 1);
    assert_int_equal(c->ustat.entries, 5);
    assert_int_equal(c->ustat.syscalls, 1);
    assert_int_equal(c->ustat.softints, 1);
    /* in the kernel: a SYSCALL is no user one, a MOV to CR3 counts, no stay grows */
    uint64_t user = c->ustat.icount;
    t_setup_long(t);
    t_run(t, (uint8_t[]){0x48, 0xc7, 0xc0, 0x00, 0x10, 0x00, 0x00, 0x0f, 0x22, 0xd8, 0x0f, 0x05},
          12, 10);
    assert_int_equal(t_handler_vector(t), 0xf0);
    assert_int_equal(c->ustat.syscalls, 1);
    assert_int_equal(c->ustat.cr3_loads, 1);
    assert_int_equal(c->ustat.entries, 5);
    assert_int_equal(c->ustat.icount, user);
    assert_true(c->icount > kernel0);
    tenv_free(t);
}

static int run_one(struct tenv *t, const uint8_t *code, size_t n)
{
    t->c->s.rip = T_CODE0 + 0x200;
    put_bytes(t, T_CODE0 + 0x200 + n, HLT, 1);
    t_run(t, code, n, 5);
    return t_handler_vector(t); /* -1: ran to the HLT after it */
}

static void msr_checks(void **state)
{
    struct tenv *t = setup();
    struct bt_cpu *c = t->c;
    const uint8_t rdmsr[] = {0x0f, 0x32}, wrmsr[] = {0x0f, 0x30};
    c->s.gpr[RCX] = 0xdead;
    assert_int_equal(run_one(t, rdmsr, 2), X86_GP);
    assert_int_equal(frame(t, 0), 0);
    /* STAR round trip */
    t_setup_long(t);
    c->s.gpr[RCX] = MSR_STAR;
    c->s.gpr[RAX] = 0x11223344;
    c->s.gpr[RDX] = 0x00230010;
    assert_int_equal(run_one(t, wrmsr, 2), -1);
    assert_int_equal(c->s.star, 0x0023001011223344ull);
    c->s.gpr[RAX] = c->s.gpr[RDX] = 0;
    assert_int_equal(run_one(t, rdmsr, 2), -1);
    assert_int_equal(c->s.gpr[RAX], 0x11223344);
    assert_int_equal(c->s.gpr[RDX], 0x00230010);
    /* IA32_TSC_ADJUST: a TSC write moves it by the same delta; writing it moves the TSC */
    t_setup_long(t);
    uint64_t tsc0 = bt_rdtsc(c);
    c->s.gpr[RCX] = MSR_IA32_TSC;
    c->s.gpr[RAX] = 0;
    c->s.gpr[RDX] = 0x100; /* TSC = 2^40, far ahead */
    assert_int_equal(run_one(t, wrmsr, 2), -1);
    assert_true(((1ull << 40) - tsc0) - c->s.tsc_adjust < 1000000000ull);
    c->s.gpr[RCX] = MSR_IA32_TSC_ADJUST;
    c->s.gpr[RAX] = c->s.gpr[RDX] = 0;
    assert_int_equal(run_one(t, wrmsr, 2), -1);
    assert_int_equal(c->s.tsc_adjust, 0);
    assert_true(bt_rdtsc(c) - tsc0 < 1000000000ull); /* back near where it was */
    assert_int_equal(run_one(t, rdmsr, 2), -1);
    assert_int_equal(c->s.gpr[RAX] | c->s.gpr[RDX], 0);
    /* EFER reserved bit, non-canonical LSTAR, bad PAT type: #GP */
    c->s.gpr[RCX] = MSR_EFER;
    c->s.gpr[RAX] = (uint32_t)(c->s.efer | 2);
    c->s.gpr[RDX] = 0;
    assert_int_equal(run_one(t, wrmsr, 2), X86_GP);
    t_setup_long(t);
    c->s.gpr[RCX] = MSR_LSTAR;
    c->s.gpr[RAX] = 0;
    c->s.gpr[RDX] = 0x00008000;
    assert_int_equal(run_one(t, wrmsr, 2), X86_GP);
    t_setup_long(t);
    c->s.gpr[RCX] = MSR_IA32_PAT;
    c->s.gpr[RAX] = 0x02;
    c->s.gpr[RDX] = 0;
    assert_int_equal(run_one(t, wrmsr, 2), X86_GP);
    /* EFER.LME cannot change while paging is on */
    t_setup_long(t);
    c->s.gpr[RCX] = MSR_EFER;
    c->s.gpr[RAX] = (uint32_t)(c->s.efer & ~X86_EFER_LME);
    assert_int_equal(run_one(t, wrmsr, 2), X86_GP);
    /* ring 3: RDMSR is #GP(0) */
    t_setup_long(t);
    t_to_ring3(t, T_CODE3);
    c->s.gpr[RCX] = MSR_STAR;
    t_run(t, rdmsr, 2, 5);
    assert_int_equal(t_handler_vector(t), X86_GP);
    /* CPUID from ring 3 works (model leaf 0 as configured) */
    t_setup_long(t);
    t->vm.cpuid.n = 1;
    t->vm.cpuid.e[0] = (struct cpuid_entry){.function = 0, .eax = 0xd, .ebx = 0x756e6547};
    t_to_ring3(t, T_CODE3);
    c->s.gpr[RAX] = 0;
    put_bytes(t, T_CODE3 + 2, (uint8_t[]){0xcd, 0x80}, 2);
    t_run(t, (uint8_t[]){0x0f, 0xa2}, 2, 5);
    assert_int_equal(t_handler_vector(t), 0x80);
    assert_int_equal(c->s.gpr[RAX], 0xd);
    assert_int_equal(c->s.gpr[RBX], 0x756e6547);
    tenv_free(t);
}

static uint8_t port80_val;
static unsigned port_writes;
static void p_rd(void *o, uint64_t off, uint8_t *d, unsigned size)
{
    memset(d, 0x5a, size);
}
static void p_wr(void *o, uint64_t off, const uint8_t *d, unsigned size)
{
    port80_val = d[0];
    port_writes++;
}
static const struct bus_ops port_ops = {p_rd, p_wr};

static void io_iopl_and_bitmap(void **state)
{
    struct tenv *t = setup();
    struct bt_cpu *c = t->c;
    assert_int_equal(bus_register(&t->vm.pio, 0x80, 2, &port_ops, NULL, "p80"), 0);
    const uint8_t out80[] = {0xe6, 0x80}, out81[] = {0xe6, 0x81}, in80[] = {0xe4, 0x80};
    /* allow port 0x80 only */
    *(uint8_t *)gp(t, T_TSS + 0x88 + 0x80 / 8, 1) = 0xfe;
    t_to_ring3(t, T_CODE3);
    c->s.gpr[RAX] = 0x42;
    put_bytes(t, T_CODE3 + 2, (uint8_t[]){0xcd, 0x80}, 2);
    port_writes = 0;
    t_run(t, out80, 2, 5);
    assert_int_equal(t_handler_vector(t), 0x80);
    assert_int_equal(port80_val, 0x42);
    assert_int_equal(port_writes, 1);
    t_to_ring3(t, T_CODE3);
    put_bytes(t, T_CODE3 + 2, (uint8_t[]){0xcd, 0x80}, 2);
    t_run(t, out81, 2, 5);
    assert_int_equal(t_handler_vector(t), X86_GP);
    assert_int_equal(frame(t, 0), 0);
    assert_int_equal(port_writes, 1);
    /* a 2-byte access at 0x80 needs the bit of 0x81 too */
    t_to_ring3(t, T_CODE3);
    t_run(t, (uint8_t[]){0x66, 0xe5, 0x80}, 3, 5); /* in ax, 0x80 */
    assert_int_equal(t_handler_vector(t), X86_GP);
    /* IOPL 3 allows everything */
    t_to_ring3(t, T_CODE3);
    c->s.rflags |= X86_FLAG_IOPL;
    c->s.gpr[RAX] = 0;
    put_bytes(t, T_CODE3 + 2, (uint8_t[]){0xcd, 0x80}, 2);
    t_run(t, in80, 2, 5);
    assert_int_equal(t_handler_vector(t), 0x80);
    assert_int_equal(c->s.gpr[RAX] & 0xff, 0x5a);
    /* ring 3 CLI with IOPL 0: #GP; POPF silently keeps IF */
    t_setup_long(t);
    t_to_ring3(t, T_CODE3);
    t_run(t, (uint8_t[]){0xfa}, 1, 5);
    assert_int_equal(t_handler_vector(t), X86_GP);
    t_setup_long(t);
    t_to_ring3(t, T_CODE3);
    c->s.rflags |= X86_FLAG_IF;
    /* push 0; popfq; int 0x80 */
    t_run(t, (uint8_t[]){0x6a, 0x00, 0x9d, 0xcd, 0x80}, 5, 10);
    assert_int_equal(t_handler_vector(t), 0x80);
    assert_true(frame(t, 2) & X86_FLAG_IF);
    tenv_free(t);
}

static void cr_writes(void **state)
{
    struct tenv *t = setup();
    struct bt_cpu *c = t->c;
    const uint8_t mov_cr4_rax[] = {0x0f, 0x22, 0xe0}, mov_cr0_rax[] = {0x0f, 0x22, 0xc0},
                  mov_cr3_rax[] = {0x0f, 0x22, 0xd8};
    c->s.gpr[RAX] = c->s.cr4 | X86_CR4_LA57;
    assert_int_equal(run_one(t, mov_cr4_rax, 3), X86_GP);
    t_setup_long(t);
    c->s.gpr[RAX] = c->s.cr4 & ~X86_CR4_PAE; /* long mode needs PAE */
    assert_int_equal(run_one(t, mov_cr4_rax, 3), X86_GP);
    t_setup_long(t);
    c->s.gpr[RAX] = c->s.cr4 | X86_CR4_PGE;
    assert_int_equal(run_one(t, mov_cr4_rax, 3), -1);
    assert_true(c->s.cr4 & X86_CR4_PGE);
    t_setup_long(t);
    c->s.gpr[RAX] = c->s.cr0 & ~X86_CR0_PG; /* cannot leave paging in 64-bit mode */
    assert_int_equal(run_one(t, mov_cr0_rax, 3), X86_GP);
    t_setup_long(t);
    c->s.gpr[RAX] = c->s.cr0 | (1ull << 32);
    assert_int_equal(run_one(t, mov_cr0_rax, 3), X86_GP);
    t_setup_long(t);
    c->s.gpr[RAX] = (c->s.cr0 | X86_CR0_NW) & ~X86_CR0_CD;
    assert_int_equal(run_one(t, mov_cr0_rax, 3), X86_GP);
    t_setup_long(t);
    c->s.gpr[RAX] = T_PML4 | (1ull << 62);
    assert_int_equal(run_one(t, mov_cr3_rax, 3), X86_GP);
    t_setup_long(t);
    c->s.gpr[RAX] = T_PML4;
    assert_int_equal(run_one(t, mov_cr3_rax, 3), -1);
    /* ring 3: #GP(0) */
    t_setup_long(t);
    t_to_ring3(t, T_CODE3);
    c->s.gpr[RAX] = c->s.cr0;
    t_run(t, mov_cr0_rax, 3, 5);
    assert_int_equal(t_handler_vector(t), X86_GP);
    tenv_free(t);
}

static void real_mode_ivt(void **state)
{
    struct tenv *t = setup();
    struct bt_cpu *c = t->c;
    memset(&c->s, 0, sizeof(c->s));
    x86_state_reset(&c->s, 0, true);
    c->s.cr0 = X86_CR0_ET;
    c->s.seg[SEG_CS].sel = 0x1000;
    c->s.seg[SEG_CS].base = 0x10000;
    c->s.seg[SEG_SS].base = 0;
    c->s.seg[SEG_SS].sel = 0;
    c->s.gpr[RSP] = 0x8000;
    c->s.rip = 0;
    c->s.rflags = X86_FLAG_FIXED | X86_FLAG_IF;
    c->s.idtr = (struct x86_dtable){0, 0x3ff};
    bt_update_mode(c);
    bt_tlb_flush(c, true);
    put32(t, 0x21 * 4, (0x0700u << 16) | 0x0210); /* 0700:0210 = 0x7210 = handler 0x21 */
    put_bytes(t, 0x10000, (uint8_t[]){0xcd, 0x21}, 2);
    bt_cache_flush(c);
    bt_exec(c, 5);
    assert_true(c->halted);
    assert_int_equal(c->s.seg[SEG_CS].sel, 0x0700);
    assert_int_equal(c->s.rip, 0x211);
    assert_int_equal(c->s.gpr[RSP], 0x7ffa);
    uint16_t *st = gp(t, 0x7ffa, 6);
    assert_int_equal(st[0], 2);
    assert_int_equal(st[1], 0x1000);
    assert_true(st[2] & X86_FLAG_IF);
    assert_false(c->s.rflags & X86_FLAG_IF);
    tenv_free(t);
}

static void protected32_stack_switch(void **state)
{
    struct tenv *t = setup();
    struct bt_cpu *c = t->c;
    /* 32-bit TSS: ESP0/SS0; 32-bit interrupt gates; no paging */
    put64(t, T_GDT + 0x28, (0x67ull) | ((T_TSS & 0xffffff) << 16) | (0x89ull << 40));
    put32(t, T_TSS + 4, T_STACK0);
    put32(t, T_TSS + 8, SEL_KDATA);
    put64(t, T_IDT + 8 * 0x80,
          ((T_HAND + 16 * 0x80) & 0xffff) | ((uint64_t)SEL_KCODE32 << 16) | (0xeeull << 40) |
              (((T_HAND + 16 * 0x80) >> 16) << 48));
    c->s.efer = 0;
    c->s.cr0 = X86_CR0_PE | X86_CR0_ET;
    c->s.cr4 = 0;
    c->s.idtr = (struct x86_dtable){T_IDT, 0x7ff};
    c->s.seg[SEG_TR].type = 0xb;
    c->s.seg[SEG_TR].limit = 0x67;
    t_seg(&c->s.seg[SEG_CS], SEL_UCODE32, 0xb, 3, false, true);
    t_seg(&c->s.seg[SEG_SS], SEL_UDATA, 0x3, 3, false, true);
    t_seg(&c->s.seg[SEG_DS], SEL_UDATA, 0x3, 3, false, true);
    c->s.gpr[RSP] = T_STACK3 - 0x10;
    c->s.rip = T_CODE3;
    bt_update_mode(c);
    bt_tlb_flush(c, true);
    assert_int_equal(c->code_bits, 32);
    assert_int_equal(c->cpl, 3);
    t_run(t, (uint8_t[]){0xcd, 0x80}, 2, 5);
    assert_int_equal(t_handler_vector(t), 0x80);
    assert_int_equal(c->cpl, 0);
    assert_int_equal(c->s.seg[SEG_SS].sel, SEL_KDATA);
    assert_int_equal(c->s.gpr[RSP], T_STACK0 - 20);
    assert_int_equal(get32(t, T_STACK0 - 20), T_CODE3 + 2);
    assert_int_equal(get32(t, T_STACK0 - 16), SEL_UCODE32);
    assert_int_equal(get32(t, T_STACK0 - 8), T_STACK3 - 0x10);
    assert_int_equal(get32(t, T_STACK0 - 4), SEL_UDATA);
    /* the stack segment descriptor got its accessed bit */
    assert_true(get64(t, T_GDT + SEL_KDATA) & (1ull << 40));
    tenv_free(t);
}

static void sti_shadow_and_hlt_wakeup(void **state)
{
    struct tenv *t = setup();
    struct bt_cpu *c = t->c;
    /* an external interrupt pending: STI; NOP; -> taken after the NOP, not after STI */
    c->s.ev.interrupt_pending = 1;
    c->s.ev.interrupt_vector = 0x30;
    t_run(t, (uint8_t[]){0xfb, 0x90, 0x90}, 3, 10);
    assert_int_equal(t_handler_vector(t), 0x30);
    assert_int_equal(frame(t, 0), T_CODE0 + 2);
    tenv_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(int80_from_ring3_switches_stack),
        cmocka_unit_test(int_gate_dpl_gives_gp),
        cmocka_unit_test(page_fault_from_ring3),
        cmocka_unit_test(ud2_same_privilege_no_errcode),
        cmocka_unit_test(ist_and_nmi_unmask_on_iret),
        cmocka_unit_test(benign_then_contributory_is_serial),
        cmocka_unit_test(double_and_triple_fault),
        cmocka_unit_test(iretq_to_ring3_and_hlt_faults),
        cmocka_unit_test(syscall_sysret),
        cmocka_unit_test(user_stats),
        cmocka_unit_test(msr_checks),
        cmocka_unit_test(io_iopl_and_bitmap),
        cmocka_unit_test(cr_writes),
        cmocka_unit_test(real_mode_ivt),
        cmocka_unit_test(protected32_stack_switch),
        cmocka_unit_test(sti_shadow_and_hlt_wakeup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
