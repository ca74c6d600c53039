/* Unit tests of the translator (src/cpu/bt/jit.c): the same programs run interpreted and
 * translated from identical states must end in identical states (registers, flags, RIP,
 * instruction count, memory); a store into a translated block makes it re-translated; a fault in
 * the middle of a translated block is delivered with the faulting RIP; the code cache never has a
 * mapping that is both writable and executable.  Also prints both speeds on a simple loop. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <pthread.h>
#include <time.h>

#include <cmocka.h>

#include "bt_testenv.h"
#include "cpu/bt/cfi.h"
#include "cpu/bt/jit.h"

static struct tenv *T;

static int setup(void **st)
{
    log_init_from_env();
    T = tenv_new(true); /* with the backend: the code-page write-watch is on */
    return 0;
}

static int teardown(void **st)
{
    tenv_free(T);
    return 0;
}

/* Switches the vCPU between interpreter (false) and translator (true). */
static void use_jit(bool on)
{
    struct bt_cpu *c = T->c;
    if (on && !c->jit) {
        /* created by bt_core_init only when LOOKOUT_BT_JIT allows; recreate the core so the
         * translator gets core.c's invalidation flag */
        bt_core_destroy(c);
        setenv("LOOKOUT_BT_JIT", "1", 1);
        assert_int_equal(bt_core_init(c), 0);
    }
    if (c->jit) {
        assert_int_equal(bt_jit_set_enabled(c, NULL, on), 0);
        bt_jit_set_hot_runs(c, 0); /* translate everything: the tests compare translations */
    }
}

struct outcome {
    uint64_t gpr[16], rip, rflags, cr2, icount;
    bool halted;
    uint8_t mem[0x2000];
    uint8_t stack[0x200]; /* below the initial RSP */
    uint8_t xmm[16][16];
};

#define T_DATA 0x300000ull /* scratch data page (second 2 MiB page, writable) */

/* called by run_prog after the machine is set up, before the program runs: extra code pages,
 * page tables */
static void (*setup_hook)(void);
/* Called after the registers are set and before the program runs (ring switch, TLB priming) */
static void (*prep)(struct bt_cpu *c);

static void run_prog(bool jit, const uint8_t *code, size_t n, uint64_t budget, struct outcome *o)
{
    t_setup_long(T);
    use_jit(jit);
    if (setup_hook) setup_hook();
    struct bt_cpu *c = T->c;
    static const uint64_t init[16] = {
        1,  2,  3,  4,     T_STACK0 - 0x100, 6, 7, 8, 0x8000000000000000ull, 0xffffffff, 10, 11,
        12, 13, 14, T_DATA};
    memcpy(c->s.gpr, init, sizeof(init));
    c->s.rflags = X86_FLAG_FIXED | X86_FLAG_CF;
    memset(gp(T, T_DATA, 0x2000), 0x5a, 0x2000);
    c->icount = 0;
    if (prep) prep(c);
    uint64_t sp0 = c->s.gpr[RSP];
    t_run(T, code, n, budget);
    memcpy(o->gpr, c->s.gpr, sizeof(o->gpr));
    o->rip = c->s.rip;
    o->rflags = c->s.rflags;
    o->cr2 = c->s.cr2;
    o->icount = c->icount;
    o->halted = c->halted;
    memcpy(o->mem, gp(T, T_DATA, 0x2000), 0x2000);
    memcpy(o->stack, gp(T, sp0 - 0x200, 0x200), 0x200);
    memcpy(o->xmm, c->s.fx.xmm, sizeof(o->xmm));
}

static void compare(const struct outcome *a, const struct outcome *b)
{
    for (int r = 0; r < 16; r++) {
        if (a->gpr[r] != b->gpr[r])
            print_error("gpr %d: interpreted %#llx translated %#llx\n", r,
                        (unsigned long long)a->gpr[r], (unsigned long long)b->gpr[r]);
        assert_int_equal(a->gpr[r], b->gpr[r]);
    }
    assert_int_equal(a->rip, b->rip);
    assert_int_equal(a->rflags, b->rflags);
    assert_int_equal(a->cr2, b->cr2);
    assert_int_equal(a->icount, b->icount);
    assert_int_equal(a->halted, b->halted);
    assert_memory_equal(a->mem, b->mem, sizeof(a->mem));
    assert_memory_equal(a->stack, b->stack, sizeof(a->stack));
    assert_memory_equal(a->xmm, b->xmm, sizeof(a->xmm));
}

static void both(const uint8_t *code, size_t n, uint64_t budget, struct outcome *ti,
                 struct outcome *tj)
{
    run_prog(false, code, n, budget, ti);
    struct bt_jit_stats s0, s1;
    bt_jit_get_stats(T->c, &s0);
    run_prog(true, code, n, budget, tj);
    bt_jit_get_stats(T->c, &s1);
    compare(ti, tj);
    /* no native form fell back to its handler because the encoder refused it (LOOKOUT_LOG=debug
     * names it: "cannot encode") */
    assert_int_equal(s1.encode_fallbacks, s0.encode_fallbacks);
}

/* A loop mixing every native form with memory operands (handler path):
 *   mov ecx, N; again: add rax, rcx; lea rbx, [rax+rcx*4+8]; xor rdx, rbx; sub r8d, 3;
 *   inc r9b; test al, 1; cmp rdx, rax; mov [r15+8], rdx; mov r10, [r15+8]; or r11w, cx;
 *   and r12, -16; dec ecx; jnz again; hlt */
static const uint8_t loop_prog[] = {
    0xb9, 0x00, 0x00, 0x00, 0x00, /* mov ecx, N (patched) */
    0x48, 0x01, 0xc8,             /* add rax, rcx */
    0x48, 0x8d, 0x5c, 0x88, 0x08, /* lea rbx, [rax+rcx*4+8] */
    0x48, 0x31, 0xda,             /* xor rdx, rbx */
    0x41, 0x83, 0xe8, 0x03,       /* sub r8d, 3 */
    0x41, 0xfe, 0xc1,             /* inc r9b */
    0xa8, 0x01,                   /* test al, 1 */
    0x48, 0x39, 0xc2,             /* cmp rdx, rax */
    0x49, 0x89, 0x57, 0x08,       /* mov [r15+8], rdx */
    0x4d, 0x8b, 0x57, 0x08,       /* mov r10, [r15+8] */
    0x66, 0x41, 0x09, 0xcb,       /* or r11w, cx */
    0x49, 0x83, 0xe4, 0xf0,       /* and r12, -16 */
    0xff, 0xc9,                   /* dec ecx */
    0x75, 0x00,                   /* jnz again (patched) */
    0xf4,                         /* hlt */
};

static void make_loop(uint8_t *p, uint32_t iters)
{
    memcpy(p, loop_prog, sizeof(loop_prog));
    memcpy(p + 1, &iters, 4);
    size_t jnz = sizeof(loop_prog) - 3; /* offset of the 0x75 */
    p[jnz + 1] = (uint8_t)(5 - (int)(jnz + 2));
}

static void test_loop_same_state(void **st)
{
    uint8_t p[sizeof(loop_prog)];
    make_loop(p, 1000);
    static struct outcome a, b;
    both(p, sizeof(p), 1000000, &a, &b);
    assert_true(a.halted);
    assert_int_equal(a.icount, 2 + 1000 * 13);
    struct bt_jit_stats s;
    bt_jit_get_stats(T->c, &s);

    assert_true(s.blocks_translated >= 2);
    assert_true(s.insns_native >= 10);
    assert_true(s.chains >= 1); /* the loop's back edge is chained to itself */
    assert_true(s.runs < 100);  /* so the loop rarely goes back to the interpreter loop */
}

/* A same-page chain exit leaves through its unchained stub when the budget is spent, also once
 * patched (its budget test and chain jump are one JBE): the loop runs the successor next, and
 * try_chain must not link the already patched site again each time, or the link table fills up
 * and the cache is flushed.  Many short slices of one chained loop: one chain, whatever the
 * number of slices, and the loop's results exact. */
static void test_chain_budget_slices(void **st)
{
    uint8_t p[sizeof(loop_prog)];
    make_loop(p, 5000);
    static struct outcome a, b;
    run_prog(false, p, sizeof(p), 1000000, &a);
    run_prog(true, p, sizeof(p), 400, &b); /* translated, its back edge chained */
    struct bt_cpu *c = T->c;
    assert_false(c->halted);
    struct bt_jit_stats s0, s1;
    bt_jit_get_stats(c, &s0);
    int slices = 0;
    while (!c->halted && slices < 1000) {
        c->exit_now = false;
        bt_exec(c, 150); /* each slice ends at the chained back edge's budget test */
        slices++;
    }
    assert_true(c->halted);
    assert_true(slices > 100);
    bt_jit_get_stats(c, &s1);
    /* a slice may end inside the loop's block: the loop then runs a block from that
     * instruction, translated and chained in turn (at most one per instruction of the loop);
     * not one link per slice */
    assert_true(s1.chains - s0.chains <= 13);
    assert_int_equal(s1.flushes, s0.flushes);
    assert_true(s1.exits_unchained - s0.exits_unchained >= (uint64_t)slices / 2);
    assert_int_equal(c->icount, a.icount);
    assert_int_equal(c->s.gpr[RAX], a.gpr[RAX]);
    assert_int_equal(c->s.gpr[RDX], a.gpr[RDX]);
    assert_int_equal(c->s.gpr[R11], a.gpr[R11]);
}

/* Conditional branches on every condition code, after flag-setting native ops; and a budget
 * that ends the run in the middle of the loop (the translated path must stop exactly there). */
static void test_all_conditions(void **st)
{
    static struct outcome a, b;
    for (int cc = 0; cc < 16; cc++) {
        for (int seed = 0; seed < 4; seed++) {
            static const uint8_t ops[4][3] = {
                {0x48, 0x29, 0xd8}, /* sub rax, rbx */
                {0x48, 0x01, 0xc8}, /* add rax, rcx */
                {0x48, 0x21, 0xd0}, /* and rax, rdx */
                {0x48, 0x39, 0xf0}, /* cmp rax, rsi */
            };
            uint8_t p[] = {
                0x48,
                0xc7,
                0xc3,
                0x05,
                0x00,
                0x00,
                0x00, /* mov rbx, 5 */
                0x48,
                0xb9,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0x80, /* mov rcx, 0x8000000000000000 */
                ops[seed][0],
                ops[seed][1],
                ops[seed][2], /* the flag op */
                (uint8_t)(0x70 | cc),
                0x02, /* jcc +2 */
                0xff,
                0xc7, /* inc edi (not taken path) */
                0x48,
                0xff,
                0xc6, /* inc rsi */
                0xf4, /* hlt */
            };
            both(p, sizeof(p), 1000, &a, &b);
        }
    }
    uint8_t p[sizeof(loop_prog)];
    make_loop(p, 1000);
    for (uint64_t budget = 50; budget < 80; budget++) {
        both(p, sizeof(p), budget, &a, &b);
        assert_false(a.halted);
    }
}

/* Loads inline through the TLB (and their slow paths: first touch of a page, a page-crossing
 * load, a load after a store into the same page, user mode), looped so the TLB is warm. */
static void test_inline_loads(void **st)
{
    static const uint8_t body[] = {
        0x49, 0x8b, 0x07,                         /* mov rax, [r15] */
        0x49, 0x03, 0x87, 0xf8, 0x0f, 0x00, 0x00, /* add rax, [r15+0xff8] */
        0x41, 0x8b, 0x8f, 0xfe, 0x0f, 0x00, 0x00, /* mov ecx, [r15+0xffe]: crosses the page */
        0x41, 0x80, 0x7f, 0x05, 0x5a,             /* cmp byte [r15+5], 0x5a */
        0x41, 0x85, 0x57, 0x10,                   /* test [r15+16], edx */
        0x66, 0x41, 0x3b, 0x5f, 0x20,             /* cmp bx, [r15+0x20] */
        0x4d, 0x33, 0x67, 0x28,                   /* xor r12, [r15+0x28] */
        0x49, 0x89, 0x47, 0x28,                   /* mov [r15+0x28], rax */
        0x48, 0x2b, 0x15, 0xd7, 0xff, 0xff, 0xff, /* sub rdx, [rip-0x29]: the code itself */
        0x49, 0xff, 0xc7,                         /* inc r15 */
        0xff, 0xce,                               /* dec esi */
        0x75, 0x00,                               /* jnz top (patched) */
        0xf4,
    };
    uint8_t p[sizeof(body) + 5];
    p[0] = 0xbe, p[1] = 40, p[2] = p[3] = p[4] = 0; /* mov esi, 40 */
    memcpy(p + 5, body, sizeof(body));
    p[sizeof(p) - 2] = (uint8_t)(5 - (int)(sizeof(p) - 1));
    static struct outcome a, b;
    both(p, sizeof(p), 100000, &a, &b);
    assert_true(a.halted);
    assert_int_equal(a.rip, T_CODE0 + sizeof(p)); /* its own HLT, not an exception handler's */
    struct bt_jit_stats s;
    bt_jit_get_stats(T->c, &s);
    assert_true(s.insns_inline_mem >= 7);
}

/* Every native memory form (stores, read-modify-write, shifts and rotates on memory, MOVZX/MOVSX,
 * IMUL r,m, PUSH/POP, CALL/RET, page-crossing accesses that take the slow path), looped with the
 * TLB warm so the inline fast paths run. */
static const uint8_t mem_forms[] = {
    0xbe, 0x1e, 0x00, 0x00, 0x00,                   /* 0: mov esi,0x1e */
    0x49, 0x89, 0x47, 0x08,                         /* 5: mov QWORD PTR [r15+0x8],rax */
    0x41, 0xc7, 0x47, 0x10, 0x78, 0x56, 0x34, 0x12, /* 9: mov DWORD PTR [r15+0x10],0x12345678 */
    0x49, 0xc7, 0x47, 0x18, 0xfb, 0xff, 0xff, 0xff, /* 11: mov QWORD PTR
                                                       [r15+0x18],0xfffffffffffffffb */
    0x66, 0x41, 0x89, 0x4f, 0x20,                   /* 19: mov WORD PTR [r15+0x20],cx */
    0x41, 0x88, 0x57, 0x22,                         /* 1e: mov BYTE PTR [r15+0x22],dl */
    0x49, 0x01, 0x47, 0x28,                         /* 22: add QWORD PTR [r15+0x28],rax */
    0x41, 0x83, 0x6f, 0x30, 0x07,                   /* 26: sub DWORD PTR [r15+0x30],0x7 */
    0x66, 0x41, 0x21, 0x4f, 0x38,                   /* 2b: and WORD PTR [r15+0x38],cx */
    0x41, 0x80, 0x4f, 0x3a, 0x81,                   /* 30: or BYTE PTR [r15+0x3a],0x81 */
    0x49, 0x31, 0x57, 0x40,                         /* 35: xor QWORD PTR [r15+0x40],rdx */
    0x49, 0x11, 0x5f, 0x48,                         /* 39: adc QWORD PTR [r15+0x48],rbx */
    0x41, 0x83, 0x5f, 0x50, 0x03,                   /* 3d: sbb DWORD PTR [r15+0x50],0x3 */
    0x49, 0x13, 0x4f, 0x48,                         /* 42: adc rcx,QWORD PTR [r15+0x48] */
    0x41, 0x1b, 0x57, 0x50,                         /* 46: sbb edx,DWORD PTR [r15+0x50] */
    0x49, 0xff, 0x47, 0x58,                         /* 4a: inc QWORD PTR [r15+0x58] */
    0x66, 0x41, 0xff, 0x4f, 0x60,                   /* 4e: dec WORD PTR [r15+0x60] */
    0x41, 0xf7, 0x5f, 0x68,                         /* 53: neg DWORD PTR [r15+0x68] */
    0x41, 0xf6, 0x57, 0x70,                         /* 57: not BYTE PTR [r15+0x70] */
    0x49, 0xd3, 0x67, 0x78,                         /* 5b: shl QWORD PTR [r15+0x78],cl */
    0x41, 0xc1, 0xaf, 0x80, 0x00, 0x00, 0x00, 0x03, /* 5f: shr DWORD PTR [r15+0x80],0x3 */
    0x66, 0x41, 0xd1, 0xbf, 0x88, 0x00, 0x00, 0x00, /* 67: sar WORD PTR [r15+0x88],1 */
    0x49, 0xc1, 0x87, 0x90, 0x00, 0x00, 0x00, 0x05, /* 6f: rol QWORD PTR [r15+0x90],0x5 */
    0x41, 0xd2, 0x8f, 0x98, 0x00, 0x00, 0x00,       /* 77: ror BYTE PTR [r15+0x98],cl */
    0x41, 0x0f, 0xb6, 0x87, 0x99, 0x00, 0x00, 0x00, /* 7e: movzx eax,BYTE PTR [r15+0x99] */
    0x4d, 0x0f, 0xb7, 0x87, 0x9a, 0x00, 0x00, 0x00, /* 86: movzx r8,WORD PTR [r15+0x9a] */
    0x4d, 0x0f, 0xbe, 0x8f, 0x9c, 0x00, 0x00, 0x00, /* 8e: movsx r9,BYTE PTR [r15+0x9c] */
    0x45, 0x0f, 0xbf, 0x97, 0x9e, 0x00, 0x00, 0x00, /* 96: movsx r10d,WORD PTR [r15+0x9e] */
    0x66, 0x45, 0x0f, 0xbe, 0x9f, 0xa0, 0x00, 0x00, 0x00, /* 9e: movsx r11w,BYTE PTR [r15+0xa0] */
    0x4d, 0x63, 0xa7, 0xa4, 0x00, 0x00, 0x00,             /* a7: movsxd r12,DWORD PTR [r15+0xa4] */
    0x4d, 0x0f, 0xaf, 0x6f, 0x28,                         /* ae: imul r13,QWORD PTR [r15+0x28] */
    0x45, 0x6b, 0x77, 0x30, 0xfd,             /* b3: imul r14d,DWORD PTR [r15+0x30],0xfffffffd */
    0x66, 0x41, 0x69, 0x5f, 0x20, 0x34, 0x12, /* b8: imul bx,WORD PTR [r15+0x20],0x1234 */
    0x50,                                     /* bf: push rax */
    0x41, 0x50,                               /* c0: push r8 */
    0x6a, 0xf9,                               /* c2: push 0xfffffffffffffff9 */
    0x5f,                                     /* c4: pop rdi */
    0x5d,                                     /* c5: pop rbp */
    0x58,                                     /* c6: pop rax */
    0x41, 0x85, 0x47, 0x10,                   /* c7: test DWORD PTR [r15+0x10],eax */
    0x41, 0x80, 0x7f, 0x22, 0x5a,             /* cb: cmp BYTE PTR [r15+0x22],0x5a */
    0x41, 0x89, 0x87, 0xfd, 0x0f, 0x00, 0x00, /* d0: mov DWORD PTR [r15+0xffd],eax */
    0x41, 0x01, 0x8f, 0xfe, 0x0f, 0x00, 0x00, /* d7: add DWORD PTR [r15+0xffe],ecx */
    0xe8, 0x10, 0x00, 0x00, 0x00,             /* de: call f3 <sub1> */
    0x48, 0x01, 0xf8,                         /* e3: add rax,rdi */
    0x4d, 0x8d, 0x7f, 0x08,                   /* e6: lea r15,[r15+0x8] */
    0xff, 0xce,                               /* ea: dec esi */
    0x0f, 0x85, 0x13, 0xff, 0xff, 0xff,       /* ec: jne 5 <top> */
    0xf4,                                     /* f2: hlt */
    0x51,                                     /* f3: push rcx */
    0x48, 0x31, 0x04, 0x24,                   /* f4: xor QWORD PTR [rsp],rax */
    0x59,                                     /* f8: pop rcx */
    0xc3,                                     /* f9: ret */
};

static void prime_data(struct bt_cpu *c)
{
    /* TLB entries with write permission for the data pages and the stack: the inline paths run
     * from the first access (both runs prime alike) */
    bt_probe_write(c, T_DATA, 8, BT_ACC_WRITE);
    bt_probe_write(c, T_DATA + 0x1000, 8, BT_ACC_WRITE);
    bt_probe_write(c, c->s.gpr[RSP] - 8, 8, BT_ACC_WRITE);
}

static void test_inline_mem_forms(void **st)
{
    static struct outcome a, b;
    prep = prime_data;
    both(mem_forms, sizeof(mem_forms), 100000, &a, &b);
    prep = NULL;
    assert_true(a.halted);
    assert_int_equal(a.rip, T_CODE0 + 0xf3); /* its own HLT */
    struct bt_jit_stats s;
    bt_jit_get_stats(T->c, &s);
    assert_true(s.insns_inline_mem >= 40);
    /* cold TLB: every first access takes the slow path */
    both(mem_forms, sizeof(mem_forms), 100000, &a, &b);
    assert_int_equal(a.rip, T_CODE0 + 0xf3);
    /* IMUL memory forms after a register IMUL in the same block */
    static const uint8_t imuls[] = {
        0x49, 0xba, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, /* mov r10, 0x100000000 */
        0xba, 0x79, 0x00, 0x00, 0x00,                               /* mov edx, 0x79 */
        0x41, 0x6b, 0xd2, 0xb3,                                     /* imul edx, r10d, -77 */
        0x41, 0x6b, 0x7f, 0x49, 0xee,                               /* imul edi, [r15+0x49], -18 */
        0x41, 0x0f, 0xaf, 0x47, 0x48,                               /* imul eax, [r15+0x48] */
        0x66, 0x41, 0x69, 0x4f, 0x46, 0xff, 0x7f, /* imul cx, [r15+0x46], 0x7fff */
        0xf4,
    };
    prep = prime_data;
    both(imuls, sizeof(imuls), 1000, &a, &b);
    prep = NULL;
    assert_int_equal(a.gpr[RDX], 0);
    /* budgets ending anywhere in the loop */
    for (uint64_t budget = 60; budget < 130; budget += 7)
        both(mem_forms, sizeof(mem_forms), budget, &a, &b);
}

/* Register forms beyond ALU/MOV/LEA (MOVZX/MOVSX/MOVSXD, BSWAP, NEG/NOT, ADC/SBB, ROL/ROR with the
 * OF rule of the immediate forms, NOPs) and SETcc/CMOVcc on every condition code with flags that
 * vary from pass to pass. */
static const uint8_t reg_forms[] = {
    0x6a, 0x28,                         /* 0: push 0x28 */
    0x0f, 0xb6, 0xc1,                   /* 2: movzx eax,cl */
    0x44, 0x0f, 0xb7, 0xc2,             /* 5: movzx r8d,dx */
    0x4c, 0x0f, 0xb6, 0xcb,             /* 9: movzx r9,bl */
    0x4c, 0x0f, 0xbf, 0xd1,             /* d: movsx r10,cx */
    0x44, 0x0f, 0xbe, 0xda,             /* 11: movsx r11d,dl */
    0x66, 0x44, 0x0f, 0xbe, 0xe3,       /* 15: movsx r12w,bl */
    0x4c, 0x63, 0xea,                   /* 1a: movsxd r13,edx */
    0x41, 0x0f, 0xc8,                   /* 1d: bswap r8d */
    0x49, 0x0f, 0xc9,                   /* 20: bswap r9 */
    0x49, 0xf7, 0xda,                   /* 23: neg r10 */
    0x41, 0xf7, 0xd3,                   /* 26: not r11d */
    0x66, 0xf7, 0xd9,                   /* 29: neg cx */
    0x48, 0x11, 0xd0,                   /* 2c: adc rax,rdx */
    0x41, 0x83, 0xd8, 0x77,             /* 2f: sbb r8d,0x77 */
    0x10, 0xcb,                         /* 33: adc bl,cl */
    0x49, 0xc1, 0xc4, 0x07,             /* 35: rol r12,0x7 */
    0x41, 0xd1, 0xcd,                   /* 39: ror r13d,1 */
    0x66, 0xd3, 0xc2,                   /* 3c: rol dx,cl */
    0x41, 0xc0, 0xc9, 0x03,             /* 3f: ror r9b,0x3 */
    0x0f, 0x1f, 0x04, 0x00,             /* 43: nop DWORD PTR [rax+rax*1] */
    0x90,                               /* 47: nop */
    0x48, 0x01, 0xc7,                   /* 48: add rdi,rax */
    0x44, 0x29, 0xce,                   /* 4b: sub esi,r9d */
    0x41, 0x0f, 0x90, 0xc6,             /* 4e: seto r14b */
    0x4c, 0x0f, 0x40, 0xff,             /* 52: cmovo r15,rdi */
    0x41, 0x0f, 0x40, 0xf5,             /* 56: cmovo esi,r13d */
    0x66, 0x0f, 0x40, 0xea,             /* 5a: cmovo bp,dx */
    0x41, 0x0f, 0x91, 0xc6,             /* 5e: setno r14b */
    0x4c, 0x0f, 0x41, 0xff,             /* 62: cmovno r15,rdi */
    0x41, 0x0f, 0x41, 0xf5,             /* 66: cmovno esi,r13d */
    0x66, 0x0f, 0x41, 0xea,             /* 6a: cmovno bp,dx */
    0x41, 0x0f, 0x92, 0xc6,             /* 6e: setb r14b */
    0x4c, 0x0f, 0x42, 0xff,             /* 72: cmovb r15,rdi */
    0x41, 0x0f, 0x42, 0xf5,             /* 76: cmovb esi,r13d */
    0x66, 0x0f, 0x42, 0xea,             /* 7a: cmovb bp,dx */
    0x41, 0x0f, 0x93, 0xc6,             /* 7e: setae r14b */
    0x4c, 0x0f, 0x43, 0xff,             /* 82: cmovae r15,rdi */
    0x41, 0x0f, 0x43, 0xf5,             /* 86: cmovae esi,r13d */
    0x66, 0x0f, 0x43, 0xea,             /* 8a: cmovae bp,dx */
    0x41, 0x0f, 0x94, 0xc6,             /* 8e: sete r14b */
    0x4c, 0x0f, 0x44, 0xff,             /* 92: cmove r15,rdi */
    0x41, 0x0f, 0x44, 0xf5,             /* 96: cmove esi,r13d */
    0x66, 0x0f, 0x44, 0xea,             /* 9a: cmove bp,dx */
    0x41, 0x0f, 0x95, 0xc6,             /* 9e: setne r14b */
    0x4c, 0x0f, 0x45, 0xff,             /* a2: cmovne r15,rdi */
    0x41, 0x0f, 0x45, 0xf5,             /* a6: cmovne esi,r13d */
    0x66, 0x0f, 0x45, 0xea,             /* aa: cmovne bp,dx */
    0x41, 0x0f, 0x96, 0xc6,             /* ae: setbe r14b */
    0x4c, 0x0f, 0x46, 0xff,             /* b2: cmovbe r15,rdi */
    0x41, 0x0f, 0x46, 0xf5,             /* b6: cmovbe esi,r13d */
    0x66, 0x0f, 0x46, 0xea,             /* ba: cmovbe bp,dx */
    0x41, 0x0f, 0x97, 0xc6,             /* be: seta r14b */
    0x4c, 0x0f, 0x47, 0xff,             /* c2: cmova r15,rdi */
    0x41, 0x0f, 0x47, 0xf5,             /* c6: cmova esi,r13d */
    0x66, 0x0f, 0x47, 0xea,             /* ca: cmova bp,dx */
    0x4c, 0x01, 0xe0,                   /* ce: add rax,r12 */
    0x38, 0xda,                         /* d1: cmp dl,bl */
    0x41, 0x0f, 0x98, 0xc6,             /* d3: sets r14b */
    0x4c, 0x0f, 0x48, 0xff,             /* d7: cmovs r15,rdi */
    0x41, 0x0f, 0x48, 0xf5,             /* db: cmovs esi,r13d */
    0x66, 0x0f, 0x48, 0xea,             /* df: cmovs bp,dx */
    0x41, 0x0f, 0x99, 0xc6,             /* e3: setns r14b */
    0x4c, 0x0f, 0x49, 0xff,             /* e7: cmovns r15,rdi */
    0x41, 0x0f, 0x49, 0xf5,             /* eb: cmovns esi,r13d */
    0x66, 0x0f, 0x49, 0xea,             /* ef: cmovns bp,dx */
    0x41, 0x0f, 0x9a, 0xc6,             /* f3: setp r14b */
    0x4c, 0x0f, 0x4a, 0xff,             /* f7: cmovp r15,rdi */
    0x41, 0x0f, 0x4a, 0xf5,             /* fb: cmovp esi,r13d */
    0x66, 0x0f, 0x4a, 0xea,             /* ff: cmovp bp,dx */
    0x41, 0x0f, 0x9b, 0xc6,             /* 103: setnp r14b */
    0x4c, 0x0f, 0x4b, 0xff,             /* 107: cmovnp r15,rdi */
    0x41, 0x0f, 0x4b, 0xf5,             /* 10b: cmovnp esi,r13d */
    0x66, 0x0f, 0x4b, 0xea,             /* 10f: cmovnp bp,dx */
    0x41, 0x0f, 0x9c, 0xc6,             /* 113: setl r14b */
    0x4c, 0x0f, 0x4c, 0xff,             /* 117: cmovl r15,rdi */
    0x41, 0x0f, 0x4c, 0xf5,             /* 11b: cmovl esi,r13d */
    0x66, 0x0f, 0x4c, 0xea,             /* 11f: cmovl bp,dx */
    0x41, 0x0f, 0x9d, 0xc6,             /* 123: setge r14b */
    0x4c, 0x0f, 0x4d, 0xff,             /* 127: cmovge r15,rdi */
    0x41, 0x0f, 0x4d, 0xf5,             /* 12b: cmovge esi,r13d */
    0x66, 0x0f, 0x4d, 0xea,             /* 12f: cmovge bp,dx */
    0x41, 0x0f, 0x9e, 0xc6,             /* 133: setle r14b */
    0x4c, 0x0f, 0x4e, 0xff,             /* 137: cmovle r15,rdi */
    0x41, 0x0f, 0x4e, 0xf5,             /* 13b: cmovle esi,r13d */
    0x66, 0x0f, 0x4e, 0xea,             /* 13f: cmovle bp,dx */
    0x41, 0x0f, 0x9f, 0xc6,             /* 143: setg r14b */
    0x4c, 0x0f, 0x4f, 0xff,             /* 147: cmovg r15,rdi */
    0x41, 0x0f, 0x4f, 0xf5,             /* 14b: cmovg esi,r13d */
    0x66, 0x0f, 0x4f, 0xea,             /* 14f: cmovg bp,dx */
    0x48, 0xff, 0x0c, 0x24,             /* 153: dec QWORD PTR [rsp] */
    0x0f, 0x85, 0xa5, 0xfe, 0xff, 0xff, /* 157: jne 2 <top> */
    0xf4,                               /* 15d: hlt */
};

/* CBW..CQO on values of both signs, prefetches (no access, never a fault) */
static const uint8_t sign_ext[] = {
    0xbe, 0x06, 0x00, 0x00, 0x00,             /* 0: mov esi,0x6 */
    0x66, 0x98,                               /* 5: cbw */
    0x98,                                     /* 7: cwde */
    0x48, 0x98,                               /* 8: cdqe */
    0x66, 0x99,                               /* a: cwd */
    0x99,                                     /* c: cdq */
    0x48, 0x99,                               /* d: cqo */
    0x0f, 0x18, 0x08,                         /* f: prefetcht0 BYTE PTR [rax] */
    0x41, 0x0f, 0x18, 0x47, 0x08,             /* 12: prefetchnta BYTE PTR [r15+0x8] */
    0x48, 0x69, 0xc0, 0x01, 0x36, 0x65, 0xc4, /* 17: imul rax,rax,0xffffffffc4653601 */
    0xff, 0xce,                               /* 1e: dec esi */
    0x75, 0xe3,                               /* 20: jne 5 <top> */
    0xf4,                                     /* 22: hlt */
};

static void test_reg_forms(void **st)
{
    static struct outcome a, b;
    both(sign_ext, sizeof(sign_ext), 1000, &a, &b);
    assert_int_equal(a.rip, T_CODE0 + sizeof(sign_ext));
    both(reg_forms, sizeof(reg_forms), 100000, &a, &b);
    assert_true(a.halted);
    assert_int_equal(a.rip, T_CODE0 + sizeof(reg_forms));
    for (uint64_t budget = 100; budget < 200; budget += 13)
        both(reg_forms, sizeof(reg_forms), budget, &a, &b);
}

/* Flags that a later instruction of the block overwrites are not stored (dead flags); the ones a
 * reader sees are: a SETcc, the loop's Jcc, the block end, and a load that faults (the #PF frame
 * holds RFLAGS) or not (R13 mapped or not). */
static const uint8_t dead_flags[] = {
    0xbe, 0x32, 0x00, 0x00, 0x00, /* 0: mov esi,0x32 */
    0x48, 0x01, 0xd8,             /* 5: add rax,rbx */
    0x48, 0x29, 0xd1,             /* 8: sub rcx,rdx */
    0x4c, 0x8d, 0x04, 0x08,       /* b: lea r8,[rax+rcx*1] */
    0x45, 0x31, 0xc1,             /* f: xor r9d,r8d */
    0x49, 0x39, 0xc1,             /* 12: cmp r9,rax */
    0x4d, 0x89, 0xca,             /* 15: mov r10,r9 */
    0x49, 0x83, 0xe2, 0x3f,       /* 18: and r10,0x3f */
    0x4d, 0x85, 0xd2,             /* 1c: test r10,r10 */
    0x41, 0x0f, 0x94, 0xc3,       /* 1f: sete r11b */
    0x4c, 0x01, 0xd3,             /* 23: add rbx,r10 */
    0x48, 0x09, 0xda,             /* 26: or rdx,rbx */
    0x48, 0x29, 0xc2,             /* 29: sub rdx,rax */
    0xff, 0xce,                   /* 2c: dec esi */
    0x75, 0xd5,                   /* 2e: jne 5 <top> */
    0x48, 0x01, 0xc8,             /* 30: add rax,rcx */
    0x48, 0x29, 0xd3,             /* 33: sub rbx,rdx */
    0x4d, 0x8b, 0x65, 0x00,       /* 36: mov r12,QWORD PTR [r13+0x0] */
    0xf4,                         /* 3a: hlt */
};
/* Shifts and rotates by an immediate whose flags a later writer overwrites (FL_SHIFT / FL_ROT:
 * the value alone, no flags), on pinned registers, 16-bit forms and a 32-bit unpinned register,
 * next to ones whose flags are read (ADC after ROR and SHL, SETO after ROL by 1) and rotates
 * between a CMP and the SETcc that reads the CMP's flags (a rotate keeps them). */
static const uint8_t dead_shifts[] = {
    0xbe, 0x32, 0x00, 0x00, 0x00, /* 0: mov esi,0x32 */
    0x48, 0x01, 0xd8,             /* 5: add rax,rbx */
    0xc1, 0xc8, 0x07,             /* 8: ror eax,0x7 */
    0x48, 0xc1, 0xe1, 0x03,       /* b: shl rcx,0x3 */
    0x66, 0xc1, 0xc2, 0x05,       /* f: rol dx,0x5 */
    0xc1, 0xcb, 0x03,             /* 13: ror ebx,0x3 */
    0x41, 0xc1, 0xe1, 0x02,       /* 16: shl r9d,0x2 */
    0x49, 0xd1, 0xfb,             /* 1a: sar r11,1 */
    0x31, 0xc1,                   /* 1d: xor ecx,eax */
    0x48, 0xc1, 0xef, 0x09,       /* 1f: shr rdi,0x9 */
    0x49, 0xc1, 0xc1, 0x0d,       /* 23: rol r9,0xd */
    0x48, 0x29, 0xca,             /* 27: sub rdx,rcx */
    0xc1, 0xcb, 0x03,             /* 2a: ror ebx,0x3 */
    0x48, 0x11, 0xdf,             /* 2d: adc rdi,rbx */
    0xd1, 0xc0,                   /* 30: rol eax,1 */
    0x41, 0x0f, 0x90, 0xc2,       /* 32: seto r10b */
    0xc1, 0xe0, 0x04,             /* 36: shl eax,0x4 */
    0x48, 0x83, 0xd1, 0x00,       /* 39: adc rcx,0x0 */
    0x41, 0xc1, 0xe9, 0x03,       /* 3d: shr r9d,0x3 */
    0x39, 0xc9,                   /* 41: cmp ecx,ecx */
    0xc1, 0xcb, 0x05,             /* 43: ror ebx,0x5 */
    0x41, 0x0f, 0x96, 0xc0,       /* 46: setbe r8b */
    0x83, 0xfa, 0x40,             /* 4a: cmp edx,0x40 */
    0x49, 0xc1, 0xc3, 0x02,       /* 4d: rol r11,0x2 */
    0x41, 0x0f, 0x9c, 0xc4,       /* 51: setl r12b */
    0xff, 0xce,                   /* 55: dec esi */
    0x75, 0xac,                   /* 57: jne 5 <top> */
    0xf4,                         /* 59: hlt */
};
/* CMOVcc and SETcc right after the flag producer they read run on the host's flags, and the
 * producer stores no flags when a writer follows (translate's hdead): every size, pinned
 * registers and c->s.gpr slots on both sides, a NEG producer, and a CMOVZ whose flags an ADC
 * then reads too (stored). */
static const uint8_t host_readers[] = {
    0xbe, 0x32, 0x00, 0x00, 0x00,             /* 0: mov esi,0x32 */
    0x48, 0x01, 0xd8,                         /* 5: add rax,rbx */
    0x48, 0x39, 0xc8,                         /* 8: cmp rax,rcx */
    0x48, 0x0f, 0x4c, 0xd0,                   /* b: cmovl rdx,rax */
    0x49, 0x31, 0xd4,                         /* f: xor r12,rdx */
    0x29, 0xc1,                               /* 12: sub ecx,eax */
    0x44, 0x0f, 0x46, 0xe1,                   /* 14: cmovbe r12d,ecx */
    0x48, 0x81, 0xc3, 0x67, 0x45, 0x23, 0x01, /* 18: add rbx,0x1234567 */
    0xf7, 0xc3, 0x40, 0x00, 0x00, 0x00,       /* 1f: test ebx,0x40 */
    0x66, 0x0f, 0x45, 0xda,                   /* 25: cmovne bx,dx */
    0x4d, 0x21, 0xe1,                         /* 29: and r9,r12 */
    0x41, 0x0f, 0x94, 0xc2,                   /* 2c: sete r10b */
    0x49, 0x09, 0xc5,                         /* 30: or r13,rax */
    0x41, 0x39, 0xfe,                         /* 33: cmp r14d,edi */
    0x41, 0x0f, 0x9f, 0xc6,                   /* 36: setg r14b */
    0x49, 0x39, 0xc7,                         /* 3a: cmp r15,rax */
    0x4c, 0x0f, 0x40, 0xfb,                   /* 3d: cmovo r15,rbx */
    0x48, 0xf7, 0xdf,                         /* 41: neg rdi */
    0x4c, 0x0f, 0x48, 0xdf,                   /* 44: cmovs r11,rdi */
    0x49, 0x29, 0xc3,                         /* 48: sub r11,rax */
    0x49, 0x0f, 0x4a, 0xc5,                   /* 4b: cmovp rax,r13 */
    0x39, 0xc8,                               /* 4f: cmp eax,ecx */
    0x45, 0x0f, 0x44, 0xc1,                   /* 51: cmove r8d,r9d */
    0x49, 0x83, 0xd0, 0x01,                   /* 55: adc r8,0x1 */
    0xf6, 0xc2, 0x03,                         /* 59: test dl,0x3 */
    0x40, 0x0f, 0x97, 0xc7,                   /* 5c: seta dil */
    0x4c, 0x31, 0xcf,                         /* 60: xor rdi,r9 */
    0xff, 0xce,                               /* 63: dec esi */
    0x75, 0x9e,                               /* 65: jne 5 <top> */
    0xf4,                                     /* 67: hlt */
};
/* INC/DEC of registers whose flags a later writer overwrites (the value alone, FL_ROT) and ones
 * whose flags are read (ADC, SETZ, and SBB reading the CF a SUB left through a DEC and an INC,
 * which keep it): pinned, c->s.gpr slots, 8/16/32/64 bits. */
static const uint8_t dead_incdec[] = {
    0xbe, 0x32, 0x00, 0x00, 0x00, /* 0: mov esi,0x32 */
    0x48, 0xff, 0xc0,             /* 5: inc rax */
    0x48, 0x01, 0xc3,             /* 8: add rbx,rax */
    0x41, 0xff, 0xcc,             /* b: dec r12d */
    0x41, 0x39, 0xdc,             /* e: cmp r12d,ebx */
    0x66, 0xff, 0xc1,             /* 11: inc cx */
    0x48, 0x29, 0xd1,             /* 14: sub rcx,rdx */
    0x48, 0x01, 0xca,             /* 17: add rdx,rcx */
    0x48, 0xff, 0xc2,             /* 1a: inc rdx */
    0x48, 0x83, 0xd7, 0x00,       /* 1d: adc rdi,0x0 */
    0x49, 0xff, 0xca,             /* 21: dec r10 */
    0x41, 0x0f, 0x94, 0xc1,       /* 24: sete r9b */
    0x41, 0xfe, 0xc5,             /* 28: inc r13b */
    0x49, 0x31, 0xdd,             /* 2b: xor r13,rbx */
    0x49, 0x29, 0xdf,             /* 2e: sub r15,rbx */
    0x66, 0x41, 0xff, 0xce,       /* 31: dec r14w */
    0x66, 0x41, 0xff, 0xc6,       /* 35: inc r14w */
    0x4d, 0x19, 0xf8,             /* 39: sbb r8,r15 */
    0xff, 0xce,                   /* 3c: dec esi */
    0x75, 0xc5,                   /* 3e: jne 5 <top> */
    0xf4,                         /* 40: hlt */
};
static uint64_t r13_value;

static void set_r13(struct bt_cpu *c)
{
    c->s.gpr[R13] = r13_value;
}

static void test_dead_flags(void **st)
{
    static struct outcome a, b;
    prep = set_r13;
    r13_value = T_DATA + 0x40;
    both(dead_flags, sizeof(dead_flags), 100000, &a, &b);
    assert_int_equal(a.rip, T_CODE0 + sizeof(dead_flags));
    both(dead_shifts, sizeof(dead_shifts), 100000, &a, &b);
    assert_int_equal(a.rip, T_CODE0 + sizeof(dead_shifts));
    both(host_readers, sizeof(host_readers), 100000, &a, &b);
    assert_int_equal(a.rip, T_CODE0 + sizeof(host_readers));
    both(dead_incdec, sizeof(dead_incdec), 100000, &a, &b);
    assert_int_equal(a.rip, T_CODE0 + sizeof(dead_incdec));
    /* a flag-neutral instruction that takes its handler (BSWAP r16) between two flag writers:
     * the block is translated again without the dead-flag pass */
    static const uint8_t neutral_handler[] = {
        0x48, 0x01, 0xd8, /* add rax, rbx */
        0x66, 0x0f, 0xc8, /* bswap ax */
        0x48, 0x29, 0xd1, /* sub rcx, rdx */
        0xf4,
    };
    prep = NULL;
    both(neutral_handler, sizeof(neutral_handler), 100, &a, &b);
    prep = set_r13;
    r13_value = 0x40000000;
    both(dead_flags, sizeof(dead_flags), 100000, &a, &b);
    assert_int_equal(t_handler_vector(T), X86_PF);
    assert_int_equal(get64(T, T->c->s.gpr[RSP] + 24), a.rflags & ~(uint64_t)X86_FLAG_IF);
    prep = NULL;
}

/* 16-byte SSE moves: loads, stores (one crossing a page), XMM to XMM, and an aligned load whose
 * address becomes misaligned (#GP from the handler); CR0.TS set makes the first one #NM. */
static const uint8_t sse_moves[] = {
    0xbe, 0x14, 0x00, 0x00, 0x00,       /* 0: mov esi,0x14 */
    0xf3, 0x41, 0x0f, 0x6f, 0x4f, 0x11, /* 5: movdqu xmm1,XMMWORD PTR [r15+0x11] */
    0x41, 0x0f, 0x28, 0x57, 0x20,       /* b: movaps xmm2,XMMWORD PTR [r15+0x20] */
    0x41, 0x0f, 0x11, 0x4f, 0x43,       /* 10: movups XMMWORD PTR [r15+0x43],xmm1 */
    0x66, 0x41, 0x0f, 0x7f, 0x57, 0x50, /* 15: movdqa XMMWORD PTR [r15+0x50],xmm2 */
    0x66, 0x0f, 0x28, 0xd9,             /* 1b: movapd xmm3,xmm1 */
    0x66, 0x45, 0x0f, 0x10, 0x8f, 0xf8,
    0x0f, 0x00, 0x00, /* 1f: movupd xmm9,XMMWORD PTR [r15+0xff8] */
    0xf3, 0x45, 0x0f, 0x7f, 0x8f, 0xf9,
    0x1f, 0x00, 0x00,             /* 28: movdqu XMMWORD PTR [r15+0x1ff9],xmm9 */
    0x41, 0x0f, 0x28, 0x24, 0x3f, /* 31: movaps xmm4,XMMWORD PTR [r15+rdi*1] */
    0x48, 0x83, 0xc7, 0x10,       /* 36: add rdi,0x10 */
    0xff, 0xce,                   /* 3a: dec esi */
    0x75, 0xc7,                   /* 3c: jne 5 <top> */
    0xf4,                         /* 3e: hlt */
};
/* A handler between two SSE moves of a block (MOV CR0 setting TS on the last passes): the second
 * one raises #NM although the first one's check passed.  (MOV CR0 leaves the translated block
 * today, so the second move starts a block of its own; translate() also clears emit.sse_ok at
 * every handler in case one that changes CR0 does not.) */
static const uint8_t sse_ts_mid[] = {
    0xbe, 0x28, 0x00, 0x00, 0x00,       /* 0: mov esi,0x28 */
    0xf3, 0x41, 0x0f, 0x6f, 0x4f, 0x10, /* 5: movdqu xmm1,XMMWORD PTR [r15+0x10] */
    0x4c, 0x89, 0xc2,                   /* b: mov rdx,r8 */
    0x83, 0xfe, 0x03,                   /* e: cmp esi,0x3 */
    0x49, 0x0f, 0x44, 0xd1,             /* 11: cmove rdx,r9 */
    0x0f, 0x22, 0xc2,                   /* 15: mov cr0,rdx */
    0xf3, 0x41, 0x0f, 0x6f, 0x57, 0x20, /* 18: movdqu xmm2,XMMWORD PTR [r15+0x20] */
    0xff, 0xce,                         /* 1e: dec esi */
    0x75, 0xe3,                         /* 20: jne 5 <top> */
    0xf4,                               /* 22: hlt */
};

static void prep_sse_ts(struct bt_cpu *c)
{
    c->s.gpr[R8] = c->s.cr0;
    c->s.gpr[R9] = c->s.cr0 | X86_CR0_TS;
}

static uint64_t sse_rdi, sse_cr0_or;

static void prep_sse(struct bt_cpu *c)
{
    prime_data(c);
    c->s.gpr[RDI] = sse_rdi;
    c->s.cr0 |= sse_cr0_or;
    for (int r = 0; r < 16; r++)
        memset(c->s.fx.xmm[r], 0x11 * r, 16);
}

/* SSE2 integer ops (a strlen-like PCMPEQB/PMOVMSKB, the others with register and aligned
 * memory sources: a misaligned one is the handler's #GP) */
static const uint8_t sse_int[] = {
    0xbe, 0x0a, 0x00, 0x00, 0x00,       /* 0: mov esi,0xa */
    0x66, 0x0f, 0xef, 0xc0,             /* 5: pxor xmm0,xmm0 */
    0xf3, 0x41, 0x0f, 0x6f, 0x0c, 0x3f, /* 9: movdqu xmm1,XMMWORD PTR [r15+rdi*1] */
    0x66, 0x0f, 0x74, 0xc1,             /* f: pcmpeqb xmm0,xmm1 */
    0x66, 0x0f, 0xd7, 0xc0,             /* 13: pmovmskb eax,xmm0 */
    0x66, 0x44, 0x0f, 0xd7, 0xc1,       /* 17: pmovmskb r8d,xmm1 */
    0x66, 0x41, 0x0f, 0xeb, 0x57, 0x40, /* 1c: por xmm2,XMMWORD PTR [r15+0x40] */
    0x66, 0x0f, 0xdb, 0xd9,             /* 22: pand xmm3,xmm1 */
    0x66, 0x0f, 0xdf, 0xe2,             /* 26: pandn xmm4,xmm2 */
    0x66, 0x0f, 0xfc, 0xe9,             /* 2a: paddb xmm5,xmm1 */
    0x66, 0x41, 0x0f, 0xfd, 0x77, 0x60, /* 2e: paddw xmm6,XMMWORD PTR [r15+0x60] */
    0x66, 0x0f, 0xfe, 0xf9,             /* 34: paddd xmm7,xmm1 */
    0x66, 0x44, 0x0f, 0xd4, 0xc7,       /* 38: paddq xmm8,xmm7 */
    0x66, 0x44, 0x0f, 0xf8, 0xc9,       /* 3d: psubb xmm9,xmm1 */
    0x66, 0x45, 0x0f, 0xf9, 0xd1,       /* 42: psubw xmm10,xmm9 */
    0x66, 0x45, 0x0f, 0xfa, 0x1c, 0x3f, /* 47: psubd xmm11,XMMWORD PTR [r15+rdi*1] */
    0x66, 0x45, 0x0f, 0xfb, 0xe3,       /* 4d: psubq xmm12,xmm11 */
    0x66, 0x44, 0x0f, 0xda, 0xe9,       /* 52: pminub xmm13,xmm1 */
    0x66, 0x44, 0x0f, 0xde, 0xf1,       /* 57: pmaxub xmm14,xmm1 */
    0x66, 0x45, 0x0f, 0x75, 0xfe,       /* 5c: pcmpeqw xmm15,xmm14 */
    0x66, 0x41, 0x0f, 0x76, 0xd7,       /* 61: pcmpeqd xmm2,xmm15 */
    0x48, 0x83, 0xc7, 0x10,             /* 66: add rdi,0x10 */
    0xff, 0xce,                         /* 6a: dec esi */
    0x75, 0x97,                         /* 6c: jne 5 <top> */
    0xf4,                               /* 6e: hlt */
};

static void test_sse_moves(void **st)
{
    static struct outcome a, b;
    prep = prep_sse;
    sse_rdi = 0x400; /* aligned all along */
    both(sse_moves, sizeof(sse_moves), 100000, &a, &b);
    assert_int_equal(a.rip, T_CODE0 + sizeof(sse_moves));
    sse_rdi = 0x408 - 19 * 16; /* misaligned on the last pass */
    both(sse_moves, sizeof(sse_moves), 100000, &a, &b);
    assert_int_equal(t_handler_vector(T), X86_GP);
    sse_rdi = 0x400;
    sse_cr0_or = X86_CR0_TS;
    both(sse_moves, sizeof(sse_moves), 100000, &a, &b);
    assert_int_equal(t_handler_vector(T), X86_NM);
    sse_cr0_or = 0;
    prep = prep_sse_ts;
    both(sse_ts_mid, sizeof(sse_ts_mid), 100000, &a, &b);
    assert_int_equal(t_handler_vector(T), X86_NM);
    assert_int_equal(a.gpr[RSI], 3);
    prep = prep_sse;
    for (int r = 0; r < 64; r++)
        put64(T, T_DATA + 0x400 + 8 * (uint64_t)r, 0x0123456789abcdefull * (uint64_t)r);
    sse_rdi = 0x400;
    both(sse_int, sizeof(sse_int), 100000, &a, &b);
    assert_int_equal(a.rip, T_CODE0 + sizeof(sse_int));
    sse_rdi = 0x404;
    both(sse_int, sizeof(sse_int), 100000, &a, &b);
    assert_int_equal(t_handler_vector(T), X86_GP);
    prep = NULL;
    struct bt_jit_stats s;
    bt_jit_get_stats(T->c, &s);
    assert_true(s.insns_inline_mem >= 8);
}

/* A store that faults in the middle of a translated block whose earlier accesses ran inline:
 * memory and registers as the interpreter leaves them, the #PF with the store's RIP, CR2 and
 * error code.  Targets: an unmapped page, a read-only page (in the TLB for reads), a code page
 * (no fault: the watched page takes the slow path, which invalidates). */
static const uint8_t store_fault[] = {
    0x49, 0x8b, 0x07,       /* 0: mov rax, [r15] */
    0x49, 0x01, 0x47, 0x08, /* 3: add [r15+8], rax */
    0x49, 0x89, 0x47, 0x10, /* 7: mov [r15+0x10], rax */
    0x50,                   /* b: push rax */
    0x59,                   /* c: pop rcx */
    0x89, 0x03,             /* d: mov [rbx], eax */
    0xff, 0xc0,             /* f: inc eax */
    0xf4,                   /* 11: hlt */
};
static uint64_t fault_target;

#define T_RO 0x400000ull /* a read-only 2 MiB page (user-accessible) */

static void prime_fault(struct bt_cpu *c)
{
    put64(T, T_PD + 16, T_RO | 0x85); /* present, user, 2 MiB, not writable */
    prime_data(c);
    bt_read(c, T_RO, 8, BT_ACC_READ);
    c->s.gpr[RBX] = fault_target;
}

static void test_store_faults(void **st)
{
    static struct outcome a, b;
    static const struct {
        uint64_t target;
        int vector;
        uint32_t err;
    } cases[] = {
        {0x40000000, X86_PF, 0x2},          /* not present, write */
        {T_RO + 0x10, X86_PF, 0x3},         /* protection, write */
        {T_CODE0 + 0x800, -1, 0},           /* a code page: no fault */
        {T_DATA + 0x100, -1, 0},            /* plain */
        {0x0000800000000000ull, X86_GP, 0}, /* not canonical */
        {0xffff7ffffffff000ull, X86_GP, 0}, /* not canonical either */
    };
    prep = prime_fault;
    for (size_t k = 0; k < ARRAY_SIZE(cases); k++) {
        fault_target = cases[k].target;
        both(store_fault, sizeof(store_fault), 1000, &a, &b);
        if (cases[k].vector < 0) {
            assert_int_equal(a.rip, T_CODE0 + sizeof(store_fault));
            continue;
        }
        assert_int_equal(t_handler_vector(T), cases[k].vector);
        if (cases[k].vector == X86_PF) assert_int_equal(b.cr2, cases[k].target);
        assert_int_equal(get64(T, T->c->s.gpr[RSP]), cases[k].err);
        assert_int_equal(get64(T, T->c->s.gpr[RSP] + 8), T_CODE0 + 0xd);
        assert_int_equal(b.icount, 5 + 1); /* five before the store, then the handler's HLT */
    }
    prep = NULL;
}

/* Deferred flags (recomputable/recompute_flags in jit.c): a register producer right before a
 * memory operation that overwrites all six flags leaves its flags out of the fast path, and the
 * operation's slow path makes them again, so a fault there still shows the producer's flags
 * (and CF from before an INC/DEC).  Each program faults on the CMP's access to a page that is
 * not present; the RFLAGS in the #PF frame must be the producer's. */
static void test_deferred_flags(void **st)
{
    enum { ANY = 0xffff }; /* compared with the interpreter's frame only (both()) */
    static struct outcome a, b;
    static const struct {
        uint8_t code[28];
        size_t len;
        int64_t bias;     /* RBX = the faulting address + bias */
        uint64_t flags;   /* the arithmetic flags the frame must hold (ANY: as interpreted) */
        unsigned members; /* probe-group members the translation must have (grouped body) */
    } cases[] = {
        /* stc; mov rax, rbx; again: inc rax; cmp byte [rax], 0; jnz again; hlt */
        {{0xf9, 0x48, 0x89, 0xd8, 0x48, 0xff, 0xc0, 0x80, 0x38, 0x00, 0x75, 0xf8, 0xf4},
         13,
         -1,
         X86_FLAG_CF | X86_FLAG_PF | X86_FLAG_AF,
         0},
        /* stc; mov rax, rbx; dec rax; cmp byte [rax], 0; hlt */
        {{0xf9, 0x48, 0x89, 0xd8, 0x48, 0xff, 0xc8, 0x80, 0x38, 0x00, 0xf4},
         11,
         1,
         X86_FLAG_CF | X86_FLAG_PF,
         0},
        /* stc; mov rax, rbx; add rax, 8; add ecx, [rax]; hlt */
        {{0xf9, 0x48, 0x89, 0xd8, 0x48, 0x83, 0xc0, 0x08, 0x03, 0x08, 0xf4},
         11,
         -8,
         X86_FLAG_PF | X86_FLAG_AF,
         0},
        /* stc; mov rax, rbx; mov rcx, rbx; cmp rax, rcx; test [rax], cl; hlt */
        {{0xf9, 0x48, 0x89, 0xd8, 0x48, 0x89, 0xd9, 0x48, 0x39, 0xc8, 0x84, 0x08, 0xf4},
         13,
         0,
         X86_FLAG_ZF | X86_FLAG_PF,
         0},
        /* stc; mov rax, rbx; mov edx, 7; xor edx, 0x3c; cmp byte [rax], 0; hlt (AF undefined) */
        {{0xf9, 0x48, 0x89, 0xd8, 0xba, 0x07, 0, 0, 0, 0x83, 0xf2, 0x3c, 0x80, 0x38, 0x00, 0xf4},
         16,
         0,
         ANY,
         0},
        /* stc; mov rax, rbx; sub edx, edx; test [rax], cl; hlt */
        {{0xf9, 0x48, 0x89, 0xd8, 0x29, 0xd2, 0x84, 0x08, 0xf4},
         9,
         0,
         X86_FLAG_ZF | X86_FLAG_PF,
         0},
        /* stc; mov rax, rbx; mov ecx, -1; mov edx, 1; add ecx, edx; cmp byte [rax], 0; hlt */
        {{0xf9, 0x48, 0x89, 0xd8, 0xb9, 0xff, 0xff, 0xff, 0xff, 0xba,
          0x01, 0,    0,    0,    0x01, 0xd1, 0x80, 0x38, 0x00, 0xf4},
         20,
         0,
         X86_FLAG_CF | X86_FLAG_ZF | X86_FLAG_PF | X86_FLAG_AF,
         0},
        /* A memory ADD whose flags a later fault shows: they must be stored (mflags_dead only
         * when nothing can see them).  mov rax, rbx; mov ecx, -1; add ecx, [rsp]; mov esi,
         * [rax]; hlt */
        {{0x48, 0x89, 0xd8, 0xb9, 0xff, 0xff, 0xff, 0xff, 0x03, 0x0c, 0x24, 0x8b, 0x30, 0xf4},
         14,
         0,
         ANY,
         0},
        /* ... and one whose flags are overwritten first (XOR): not stored, no difference.
         * mov rax, rbx; add ecx, [rsp]; xor edx, edx; mov esi, [rax]; hlt */
        {{0x48, 0x89, 0xd8, 0x03, 0x0c, 0x24, 0x31, 0xd2, 0x8b, 0x30, 0xf4}, 11, 0, ANY, 0},
        /* In a probe group's body a member cannot fault (flag_liveness), another access can:
         * the ADD's flags (a member) must be stored for the fault of MOV ESI, [RAX], past the
         * members after it.  mov rax, rbx; mov ecx, -1; add ecx, [rsp]; mov edx, [rsp+8];
         * mov edi, [rsp+16]; mov esi, [rax]; xor r8d, r8d; hlt */
        {{0x48, 0x89, 0xd8, 0xb9, 0xff, 0xff, 0xff, 0xff, 0x03, 0x0c, 0x24, 0x8b, 0x54,
          0x24, 0x08, 0x8b, 0x7c, 0x24, 0x10, 0x8b, 0x30, 0x45, 0x31, 0xc0, 0xf4},
         25,
         0,
         ANY,
         3},
        /* ... and with a flag writer before that access: the member ADD's flags are dead.
         * mov rax, rbx; add ecx, [rsp]; mov edx, [rsp+8]; mov edi, [rsp+16]; xor r8d, r8d;
         * mov esi, [rax]; hlt */
        {{0x48, 0x89, 0xd8, 0x03, 0x0c, 0x24, 0x8b, 0x54, 0x24, 0x08,
          0x8b, 0x7c, 0x24, 0x10, 0x45, 0x31, 0xc0, 0x8b, 0x30, 0xf4},
         20,
         0,
         ANY,
         3},
    };
    prep = prime_fault;
    for (size_t k = 0; k < ARRAY_SIZE(cases); k++) {
        fault_target = 0x40000000 + cases[k].bias;
        struct bt_jit_stats s0, s1;
        bt_jit_get_stats(T->c, &s0);
        both(cases[k].code, cases[k].len, 1000, &a, &b);
        bt_jit_get_stats(T->c, &s1);
        assert_true(s1.grp_members >= s0.grp_members + cases[k].members);
        assert_int_equal(t_handler_vector(T), X86_PF);
        assert_int_equal(b.cr2, 0x40000000);
        uint64_t fl = get64(T, T->c->s.gpr[RSP] + 24) & BT_ARITH_FLAGS;
        if (cases[k].flags != ANY && fl != cases[k].flags)
            fail_msg("case %zu: flags at the fault %#llx, want %#llx", k, (unsigned long long)fl,
                     (unsigned long long)cases[k].flags);
    }
    prep = NULL;
}

/* The same at CPL 3: user accesses run inline on user pages; a supervisor page (its TLB entry
 * made by a kernel access) and a read-only page fault with the user bit, precisely. */
static const uint8_t user_prog[] = {
    0x49, 0x8b, 0x07,       /* 0: mov rax, [r15] */
    0x49, 0x89, 0x47, 0x08, /* 3: mov [r15+8], rax */
    0x83, 0xc0, 0x01,       /* 7: add eax, 1 */
    0x41, 0x01, 0x47, 0x10, /* a: add [r15+0x10], eax */
    0x89, 0xc1,             /* e: mov ecx, eax */
    0x01, 0x0a,             /* 10: add [rdx], ecx */
    0xff, 0xc0,             /* 12: inc eax */
    0xf4,                   /* 14: hlt: #GP at CPL 3 */
};

static void prime_user(struct bt_cpu *c)
{
    put64(T, T_PD + 16, T_RO | 0x85);
    prime_data(c);
    bt_read(c, T_RO, 8, BT_ACC_READ);
    bt_read(c, 0x8000, 8, BT_ACC_READ); /* a supervisor page, in the TLB */
    t_to_ring3(T, T_CODE3);
    c->s.gpr[RDX] = fault_target;
}

static void prime_user_iopl3(struct bt_cpu *c)
{
    prime_user(c);
    c->s.rflags |= X86_FLAG_IOPL | X86_FLAG_IF;
}

/* Translations are made per privilege class (their memory probes test that class's fast tags):
 * code translated at CPL 0 and then run at CPL 3 from the same page must not let the user
 * write a supervisor page its kernel run wrote inline. */
static void test_cpl_classes(void **st)
{
    t_setup_long(T);
    use_jit(true);
    struct bt_cpu *c = T->c;
    c->s.rip = T_CODE3;
    c->s.gpr[R15] = T_DATA;
    c->s.gpr[RDX] = 0x8000;
    prime_data(c);
    bt_probe_write(c, 0x8000, 8, BT_ACC_WRITE); /* the supervisor page, writable, in the TLB */
    t_run(T, user_prog, sizeof(user_prog), 1000);
    assert_true(c->halted);
    assert_int_equal(c->s.rip, T_CODE3 + sizeof(user_prog)); /* its own HLT, at CPL 0 */
    struct bt_jit_stats s0, s1;
    bt_jit_get_stats(c, &s0);
    assert_true(s0.blocks_translated >= 1);
    t_to_ring3(T, T_CODE3); /* the same code, not flushed */
    c->s.gpr[R15] = T_DATA;
    c->s.gpr[RDX] = 0x8000;
    c->halted = false;
    c->exit_now = false;
    bt_exec(c, 1000);
    assert_int_equal(t_handler_vector(T), X86_PF);
    assert_int_equal(get64(T, T->c->s.gpr[RSP]), 0x7); /* protection, write, user */
    bt_jit_get_stats(c, &s1);
    assert_true(s1.cpl_mismatch > s0.cpl_mismatch);
}

static void test_user_mode(void **st)
{
    static struct outcome a, b;
    static const struct {
        uint64_t target;
        int vector;
        uint32_t err;
    } cases[] = {
        {T_DATA + 0x20, X86_GP, 0}, /* no fault until the HLT */
        {0x8000, X86_PF, 0x7},      /* supervisor page: protection, write, user */
        {T_RO + 8, X86_PF, 0x7},    /* read-only page */
        {0x40000000, X86_PF, 0x6},  /* not present */
    };
    prep = prime_user;
    for (size_t k = 0; k < ARRAY_SIZE(cases); k++) {
        fault_target = cases[k].target;
        both(user_prog, sizeof(user_prog), 1000, &a, &b);
        assert_int_equal(t_handler_vector(T), cases[k].vector);
        assert_int_equal(get64(T, T->c->s.gpr[RSP]), cases[k].err);
        if (cases[k].vector == X86_PF) {
            assert_int_equal(b.cr2, cases[k].target);
            assert_int_equal(get64(T, T->c->s.gpr[RSP] + 8), T_CODE3 + 0x10);
        }
    }
    /* CLI at CPL 3: #GP with IOPL 0, clears IF with IOPL 3; PUSHFQ pushes what it sees */
    static const uint8_t cli_prog[] = {0x48, 0xff, 0xc0, 0xfa, 0x9c, 0x41, 0x5d, 0xf4};
    prep = prime_user;
    fault_target = T_DATA;
    both(cli_prog, sizeof(cli_prog), 1000, &a, &b);
    assert_int_equal(t_handler_vector(T), X86_GP);
    assert_int_equal(get64(T, T->c->s.gpr[RSP] + 8), T_CODE3 + 3);
    prep = prime_user_iopl3;
    both(cli_prog, sizeof(cli_prog), 1000, &a, &b);
    assert_int_equal(a.gpr[R13] & X86_FLAG_IF, 0);
    assert_int_equal(a.gpr[R13] & X86_FLAG_IOPL, X86_FLAG_IOPL);
    prep = NULL;
    struct bt_jit_stats s;
    bt_jit_get_stats(T->c, &s);
    assert_true(s.insns_inline_mem >= 4);
}

/* A TLB change between two inline stores to the same page: the PTE made read-only, then INVLPG
 * (a handler in the middle of the block).  The translated store after it must not use the write
 * tag the first store's warm entry had (bt_tlb_flush_page kills the inline tags with the entry):
 * #PF (protection, write) at the second store in both runs. */
static const uint8_t tlb_change[] = {
    0x89, 0x02,       /* 0: mov [rdx], eax */
    0x4d, 0x89, 0x08, /* 2: mov [r8], r9: the PTE, now read-only */
    0x0f, 0x01, 0x3a, /* 5: invlpg [rdx] */
    0x89, 0x42, 0x08, /* 8: mov [rdx+8], eax */
    0xf4,             /* b: hlt */
};

static void prime_tlb_change(struct bt_cpu *c)
{
    put64(T, T_PD + 16, T_RO | 0x83); /* writable, supervisor */
    c->s.gpr[RDX] = T_RO + 0x10;
    c->s.gpr[R8] = T_PD + 16;
    c->s.gpr[R9] = T_RO | 0x81;                      /* read-only */
    bt_probe_write(c, T_RO + 0x10, 8, BT_ACC_WRITE); /* the write tag is warm */
}

static void test_tlb_change(void **st)
{
    static struct outcome a, b;
    prep = prime_tlb_change;
    both(tlb_change, sizeof(tlb_change), 1000, &a, &b);
    prep = NULL;
    assert_int_equal(t_handler_vector(T), X86_PF);
    assert_int_equal(get64(T, T->c->s.gpr[RSP]), 0x3);
    assert_int_equal(b.cr2, T_RO + 0x18);
    assert_int_equal(get64(T, T->c->s.gpr[RSP] + 8), T_CODE0 + 8);
    struct bt_jit_stats s;
    bt_jit_get_stats(T->c, &s);
    assert_true(s.insns_inline_mem >= 2);
}

/* An instruction crossing a page (decoded uncached on every run, the decoding memoised by its
 * bytes) whose immediate the loop increments: each run must see the new bytes, both ways. */
static void test_crossing_smc(void **st)
{
    static uint8_t p[0x1008];
    static const uint8_t head[] = {
        0xb9, 0x03, 0x00, 0x00, 0x00, /* 0: mov ecx, 3 */
        0xba, 0xff, 0x0f, 0x01, 0x00, /* 5: mov edx, T_CODE0 + 0xfff (the immediate) */
        0x31, 0xf6,                   /* a: xor esi, esi */
        0xe9, 0xed, 0x0f, 0x00, 0x00, /* c: jmp 0xffe */
        0x01, 0xc6,                   /* 11: add esi, eax */
        0xff, 0x02,                   /* 13: inc dword [rdx] */
        0xff, 0xc9,                   /* 15: dec ecx */
        0x75, 0xf3,                   /* 17: jnz 0xc */
        0xf4,                         /* 19: hlt */
    };
    static const uint8_t tail[] = {
        0xb8, 0x10, 0x00, 0x00, 0x00, /* ffe: mov eax, 0x10 (crosses into the next page) */
        0xe9, 0x09, 0xf0, 0xff, 0xff, /* 1003: jmp 0x11 */
    };
    static struct outcome a, b;
    _Static_assert(T_CODE0 == 0x10000, "the program's addresses");
    memset(p, 0x90, sizeof(p));
    memcpy(p, head, sizeof(head));
    memcpy(p + 0xffe, tail, sizeof(tail));
    both(p, sizeof(p), 1000, &a, &b);
    assert_true(a.halted);
    assert_int_equal(a.gpr[RSI], 0x10 + 0x11 + 0x12);
    /* the same with a store into the crossing instruction's bytes on the next page only (its
     * first page, the one watched, stays the same): the translation's entry check and the
     * loop's lookup compare those bytes */
    p[0x01] = 20;   /* mov ecx, 20: long enough for the chains into it to be patched */
    p[0x06] = 0x00; /* mov edx, T_CODE0 + 0x1000: the immediate's second byte */
    p[0x07] = 0x10;
    p[0x13] = 0xfe; /* inc byte [rdx] */
    both(p, sizeof(p), 1000, &a, &b);
    assert_true(a.halted);
    assert_int_equal(a.gpr[RSI], 20 * 0x10 + 0x100 * (19 * 20 / 2));
    struct bt_jit_stats s;
    bt_jit_get_stats(T->c, &s);
    assert_true(s.blocks_translated >= 3);
}

/* Dirty logging switched on while translated code that stores inline runs: the stores after the
 * switch are logged (the inline path defers to the handler while logging is on). */
static void test_dirty_log(void **st)
{
    static const uint8_t p[] = {
        0xb9, 0x10, 0x00, 0x00, 0x00, /* mov ecx, 16 */
        0x49, 0x89, 0x0f,             /* again: mov [r15], rcx */
        0x49, 0x83, 0xc7, 0x08,       /* add r15, 8 */
        0xff, 0xc9,                   /* dec ecx */
        0x75, 0xf5,                   /* jnz again */
        0xf4,
    };
    struct guest_mem *m = &T->vm.mem;
    assert_int_equal(guest_dirty_enable(m), 0);
    for (int jit = 0; jit < 2; jit++) {
        m->dirty_enabled = false;
        t_setup_long(T);
        use_jit(jit);
        struct bt_cpu *c = T->c;
        c->s.gpr[R15] = T_DATA + 0x3000;
        put_bytes(T, T_CODE0, p, sizeof(p));
        prime_data(c);
        bt_probe_write(c, T_DATA + 0x3000, 8, BT_ACC_WRITE);
        bt_exec(c, 20); /* the loop runs translated and warm, unlogged */
        assert_false(c->halted);
        uint64_t bits[(16 << 20) / 4096 / 64];
        m->dirty_enabled = true;                /* logging starts (guest_dirty_enable) ... */
        bt_mmu_dirty_started(bt_vm_of(&T->vm)); /* ... as the backend's dirty_log starts it */
        memset(bits, 0, sizeof(bits));
        guest_dirty_collect(m, bits, ARRAY_SIZE(bits));
        memset(bits, 0, sizeof(bits));
        bt_exec(c, 1000);
        assert_true(c->halted);
        guest_dirty_collect(m, bits, ARRAY_SIZE(bits));
        uint64_t pg = (T_DATA + 0x3000) >> 12;
        assert_true((bits[pg / 64] >> (pg % 64)) & 1);
        assert_int_equal(get64(T, T_DATA + 0x3000 + 15 * 8), 1);
    }
    m->dirty_enabled = false;
}

/* Shifts (immediate and CL counts, including 0 and above the width) and IMUL register forms,
 * whose flags depend on the incoming ones or are undefined: translated like the interpreter. */
static uint64_t flags_in;

static void set_flags(struct bt_cpu *c)
{
    c->s.rflags = X86_FLAG_FIXED | flags_in;
}

static void test_shift_imul(void **st)
{
    /* incoming flags (a count of 0 keeps them; the undefined ones may depend on them) */
    static const uint64_t in_flags[] = {0, BT_ARITH_FLAGS, X86_FLAG_OF,
                                        X86_FLAG_SF | X86_FLAG_ZF | X86_FLAG_AF | X86_FLAG_PF,
                                        X86_FLAG_CF | X86_FLAG_OF};
    prep = set_flags;
    static const uint8_t ops[][8] = {
        {3, 0x48, 0xd3, 0xe0},                   /* shl rax, cl */
        {3, 0x48, 0xd3, 0xe8},                   /* shr rax, cl */
        {2, 0xd3, 0xfa},                         /* sar edx, cl */
        {3, 0x66, 0xd3, 0xe3},                   /* shl bx, cl */
        {2, 0xd2, 0xe8},                         /* shr al, cl */
        {4, 0x48, 0xc1, 0xe0, 0x00},             /* shl rax, 0 */
        {4, 0x48, 0xc1, 0xf8, 0x3f},             /* sar rax, 63 */
        {3, 0xc1, 0xe2, 0x21},                   /* shl edx, 33 */
        {3, 0xd0, 0xe4},                         /* shl ah, 1: high byte, handler */
        {4, 0x48, 0x0f, 0xaf, 0xc2},             /* imul rax, rdx */
        {3, 0x0f, 0xaf, 0xc1},                   /* imul eax, ecx */
        {4, 0x66, 0x0f, 0xaf, 0xd8},             /* imul bx, ax */
        {4, 0x48, 0x6b, 0xc2, 0xf9},             /* imul rax, rdx, -7 */
        {7, 0x69, 0xc8, 0x01, 0x00, 0x01, 0x00}, /* imul ecx, eax, 0x10001 */
        {3, 0x48, 0xd3, 0xc0},                   /* rol rax, cl */
        {2, 0xd3, 0xca},                         /* ror edx, cl */
        {3, 0x48, 0xd1, 0xc0},                   /* rol rax, 1 */
        {3, 0xc1, 0xc8, 0x05},                   /* ror eax, 5 */
        {3, 0xc0, 0xc2, 0x08},                   /* rol dl, 8 */
        {4, 0x66, 0xc1, 0xcb, 0x11},             /* ror bx, 17 */
        {4, 0x48, 0xc1, 0xc0, 0x00},             /* rol rax, 0 */
        {3, 0xc0, 0xcc, 0x03},                   /* ror ah, 3: high byte, handler */
    };
    static const uint64_t cls[] = {0, 1, 5, 31, 32, 63, 64, 200};
    static struct outcome a, b;
    for (size_t k = 0; k < ARRAY_SIZE(ops); k++) {
        for (size_t n = 0; n < ARRAY_SIZE(cls); n++) {
            uint8_t p[32];
            size_t len = 0;
            /* mov ecx, count; mov rax, 0x8000000180000001; mov edx, 0x9abcdef1; the op; hlt */
            p[len++] = 0xb9;
            memcpy(p + len, &cls[n], 4), len += 4;
            static const uint8_t movs[] = {0x48, 0xb8, 1,    0,    0,    0x80, 1,   0,
                                           0,    0x80, 0xba, 0xf1, 0xde, 0xbc, 0x9a};
            memcpy(p + len, movs, sizeof(movs)), len += sizeof(movs);
            memcpy(p + len, ops[k] + 1, ops[k][0]), len += ops[k][0];
            p[len++] = 0xf4;
            for (size_t f = 0; f < ARRAY_SIZE(in_flags); f++) {
                flags_in = in_flags[f];
                both(p, len, 1000, &a, &b);
            }
        }
    }
    prep = NULL;
}

/* The forms made native after the handler-call statistic (jit.c's native_muldiv,
 * native_bitscan, native_atomic, native_sse_more, native_indirect): each op after
 * mov rax, A; mov rdx, D; mov rcx, S; mov [r15+8], rcx, over operand values that take the fast
 * path and values the handler must take (#DE for DIV/IDIV, a split-line LOCK), varied incoming
 * flags, a warm and a cold TLB. */
static bool forms_prime;

static void prep_forms(struct bt_cpu *c)
{
    if (forms_prime) prime_data(c);
    c->s.rflags = X86_FLAG_FIXED | flags_in;
    for (int r = 0; r < 16; r++)
        memset(c->s.fx.xmm[r], 0x13 * r + 1, 16);
}

static void test_more_forms(void **st)
{
    static const uint8_t ops[][12] = {
        {3, 0x48, 0xf7, 0xf1},                   /* div rcx */
        {2, 0xf7, 0xf1},                         /* div ecx */
        {3, 0x66, 0xf7, 0xf1},                   /* div cx */
        {2, 0xf6, 0xf1},                         /* div cl */
        {3, 0x48, 0xf7, 0xf9},                   /* idiv rcx */
        {2, 0xf7, 0xf9},                         /* idiv ecx */
        {3, 0x66, 0xf7, 0xf9},                   /* idiv cx */
        {2, 0xf6, 0xf9},                         /* idiv cl */
        {3, 0x48, 0xf7, 0xe1},                   /* mul rcx */
        {2, 0xf7, 0xe1},                         /* mul ecx */
        {3, 0x66, 0xf7, 0xe1},                   /* mul cx */
        {2, 0xf6, 0xe1},                         /* mul cl */
        {3, 0x48, 0xf7, 0xe9},                   /* imul rcx */
        {2, 0xf6, 0xe9},                         /* imul cl */
        {4, 0x49, 0xf7, 0x77, 0x08},             /* div qword [r15+8] */
        {4, 0x41, 0xf7, 0x7f, 0x08},             /* idiv dword [r15+8] */
        {4, 0x41, 0xf6, 0x67, 0x08},             /* mul byte [r15+8] */
        {4, 0x48, 0x0f, 0xbc, 0xc1},             /* bsf rax, rcx */
        {3, 0x0f, 0xbd, 0xc1},                   /* bsr eax, ecx */
        {4, 0x66, 0x0f, 0xbc, 0xc1},             /* bsf ax, cx */
        {5, 0x49, 0x0f, 0xbc, 0x47, 0x08},       /* bsf rax, [r15+8] */
        {4, 0xf3, 0x0f, 0xbc, 0xc1},             /* rep bsf eax, ecx (TZCNT encoding) */
        {6, 0xf0, 0x49, 0x0f, 0xb1, 0x4f, 0x08}, /* lock cmpxchg [r15+8], rcx */
        {5, 0x41, 0x0f, 0xb1, 0x57, 0x08},       /* cmpxchg dword [r15+8], edx */
        {6, 0xf0, 0x41, 0x0f, 0xb0, 0x4f, 0x08}, /* lock cmpxchg byte [r15+8], cl */
        {6, 0xf0, 0x49, 0x0f, 0xb1, 0x4f, 0x3d}, /* lock cmpxchg [r15+0x3d], rcx: split */
        {6, 0xf0, 0x49, 0x0f, 0xc1, 0x57, 0x08}, /* lock xadd [r15+8], rdx */
        {6, 0x66, 0x41, 0x0f, 0xc1, 0x47, 0x08}, /* xadd word [r15+8], ax */
        {4, 0x49, 0x87, 0x47, 0x08},             /* xchg [r15+8], rax */
        {4, 0x41, 0x86, 0x57, 0x09},             /* xchg byte [r15+9], dl */
        {4, 0x41, 0x87, 0x4f, 0x0a},             /* xchg dword [r15+10], ecx */
        {8, 0x66, 0x0f, 0x60, 0xc1, 0x66, 0x0f, 0x61, 0xd0},       /* punpcklbw; punpcklwd */
        {9, 0x66, 0x0f, 0x70, 0xd8, 0x1b, 0x66, 0x0f, 0x68, 0xc1}, /* pshufd 0x1b; punpckhbw */
        {4, 0x66, 0x0f, 0x6c, 0xc1},                               /* punpcklqdq xmm0, xmm1 */
        {9, 0x66, 0x0f, 0x6e, 0xc9, 0x66, 0x48, 0x0f, 0x6e,
         0xd2}, /* movd xmm1, ecx; movq xmm2, rdx */
        {9, 0x66, 0x0f, 0x7e, 0xc8, 0x66, 0x48, 0x0f, 0x7e,
         0xda},                                        /* movd eax, xmm1; movq rdx, xmm3 */
        {4, 0x48, 0x0f, 0xa3, 0xc8},                   /* bt rax, rcx */
        {4, 0x0f, 0xba, 0xe8, 0x05},                   /* bts eax, 5 */
        {5, 0x48, 0x0f, 0xba, 0xf2, 0x3f},             /* btr rdx, 63 */
        {4, 0x66, 0x0f, 0xbb, 0xc1},                   /* btc cx, ax */
        {6, 0x41, 0x0f, 0xba, 0x67, 0x08, 0x03},       /* bt dword [r15+8], 3 */
        {6, 0x49, 0x0f, 0xba, 0x6f, 0x08, 0x28},       /* bts qword [r15+8], 40 */
        {7, 0x66, 0x41, 0x0f, 0xba, 0x77, 0x08, 0x11}, /* btr word [r15+8], 17 */
        {6, 0x41, 0x0f, 0xba, 0x7f, 0x08, 0x1f},       /* btc dword [r15+8], 31 */
        {3, 0x0f, 0x94, 0xc4},                         /* setz ah */
        {5, 0x41, 0x0f, 0x95, 0x47, 0x09},             /* setnz byte [r15+9] */
        {5, 0x41, 0x0f, 0x9c, 0x47, 0x08},             /* setl byte [r15+8] */
        {3, 0x0f, 0x96, 0xc7},                         /* setbe bh */
        {3, 0x9c, 0x41, 0x5d},                         /* pushfq; pop r13 */
        {4, 0xfa, 0x9c, 0x41, 0x5d},                   /* cli; pushfq; pop r13 */
    };
    static const uint64_t vals[][3] = {
        {100, 0, 7},
        {0xffffffffffffffffull, 5, 7},
        {123, 0, 0}, /* #DE */
        {1, 9, 7},   /* DIV: quotient too big, #DE */
        {-100ull, -1ull, -7ull},
        {0x8000000000000000ull, -1ull, -1ull}, /* IDIV overflow */
        {0x80, 0, 0xff},
        {0x123456789abcdef0ull, 0x1234, 0x10000},
        {0xfffffff0, 0, 3},
        {-5ull, 0, 2},  /* IDIV: RDX not RAX's sign: the handler decides */
        {7, 0x8000, 7}, /* CMPXCHG: equal */
        {0xff00, 0x7f, 0x100},
    };
    static const uint64_t in_flags[] = {0, BT_ARITH_FLAGS, X86_FLAG_OF | X86_FLAG_ZF | X86_FLAG_IF};
    static struct outcome a, b;
    prep = prep_forms;
    for (size_t k = 0; k < ARRAY_SIZE(ops); k++) {
        for (size_t v = 0; v < ARRAY_SIZE(vals); v++) {
            uint8_t p[64];
            size_t len = 0;
            static const uint8_t movabs[3] = {0xb8, 0xba, 0xb9}; /* rax, rdx, rcx */
            for (int r = 0; r < 3; r++) {
                p[len++] = 0x48;
                p[len++] = movabs[r];
                memcpy(p + len, &vals[v][r], 8), len += 8;
            }
            static const uint8_t st_rcx[] = {0x49, 0x89, 0x4f, 0x08,  /* mov [r15+8], rcx */
                                             0x49, 0x89, 0x4f, 0x3d}; /* mov [r15+0x3d], rcx */
            memcpy(p + len, st_rcx, sizeof(st_rcx)), len += sizeof(st_rcx);
            memcpy(p + len, ops[k] + 1, ops[k][0]), len += ops[k][0];
            p[len++] = 0x48, p[len++] = 0xff, p[len++] = 0xc3; /* inc rbx (after) */
            p[len++] = 0xf4;
            for (size_t f = 0; f < ARRAY_SIZE(in_flags); f++) {
                flags_in = in_flags[f];
                forms_prime = f != 1; /* once with a cold TLB: the slow path */
                both(p, len, 1000, &a, &b);
            }
        }
    }
    /* DIV by zero: #DE with the state before the instruction and its RIP in the frame */
    static const uint8_t de[] = {
        0x31, 0xc9,       /* xor ecx, ecx */
        0x48, 0xff, 0xc0, /* inc rax */
        0x48, 0xf7, 0xf1, /* div rcx */
        0x48, 0xff, 0xc0, /* inc rax (not reached) */
        0xf4,
    };
    flags_in = 0;
    forms_prime = true;
    both(de, sizeof(de), 1000, &a, &b);
    assert_int_equal(t_handler_vector(T), X86_DE);
    assert_int_equal(a.gpr[RAX], 2);
    assert_int_equal(get64(T, T->c->s.gpr[RSP]), T_CODE0 + 5);
    /* #PF from the memory forms: nothing written, CR2 and RIP exact */
    static const uint8_t pf[][12] = {
        {8, 0x48, 0xf7, 0x34, 0x25, 0, 0, 0, 0x40},              /* div qword [0x40000000] */
        {10, 0xf0, 0x48, 0x0f, 0xb1, 0x0c, 0x25, 0, 0, 0, 0x40}, /* lock cmpxchg */
        {8, 0x48, 0x87, 0x0c, 0x25, 0, 0, 0, 0x40},              /* xchg [0x40000000], rcx */
        {7, 0xff, 0x24, 0x25, 0, 0, 0, 0x40},                    /* jmp [0x40000000] */
        {7, 0xff, 0x14, 0x25, 0, 0, 0, 0x40},                    /* call [0x40000000] */
    };
    for (size_t k = 0; k < ARRAY_SIZE(pf); k++) {
        uint8_t p[32] = {0x48, 0xff, 0xc0}; /* inc rax */
        size_t len = 3;
        memcpy(p + len, pf[k] + 1, pf[k][0]), len += pf[k][0];
        p[len++] = 0xf4;
        both(p, len, 1000, &a, &b);
        assert_int_equal(t_handler_vector(T), X86_PF);
        assert_int_equal(a.cr2, 0x40000000);
    }
    /* indirect JMP/CALL: through memory (a warm and a cold TLB), and non-canonical (#GP) */
    static const uint8_t ind[] = {
        0x48, 0x8d, 0x05, 0x1b, 0x00, 0x00, 0x00, /* 0: lea rax, [rip+0x1b] (0x22) */
        0x49, 0x89, 0x47, 0x08,                   /* 7: mov [r15+8], rax */
        0x41, 0xff, 0x57, 0x08,                   /* b: call [r15+8] */
        0x48, 0x8d, 0x0d, 0x06, 0x00, 0x00, 0x00, /* f: lea rcx, [rip+6] (0x1c) */
        0xff, 0xe1,                               /* 16: jmp rcx */
        0x0f, 0x0b,                               /* 18: ud2 */
        0x0f, 0x0b,                               /* 1a: ud2 */
        0x48, 0xff, 0xc3,                         /* 1c: inc rbx */
        0xff, 0xe2,                               /* 1f: jmp rdx: non-canonical, #GP */
        0xf4,                                     /* 21 */
        0x48, 0x83, 0xc3, 0x05,                   /* 22: add rbx, 5 */
        0xc3,                                     /* 26: ret */
    };
    for (int cold = 0; cold < 2; cold++) {
        forms_prime = !cold;
        prep = prep_forms;
        setup_hook = NULL;
        static const uint8_t mov_rdx[] = {0x48, 0xba, 0, 0, 0, 0, 0, 0, 0, 0x80, 0xff, 0xd2};
        uint8_t p[64];
        memcpy(p, mov_rdx, 10); /* mov rdx, 0x8000000000000000 */
        memcpy(p + 10, ind, sizeof(ind));
        /* the lea displacements are RIP-relative: unaffected by the prefix */
        both(p, 10 + sizeof(ind), 1000, &a, &b);
        assert_int_equal(t_handler_vector(T), X86_GP);
        assert_int_equal(a.gpr[RBX], 4 + 5 + 1);
        /* call rdx: #GP before the push */
        memcpy(p + 10, mov_rdx + 10, 2);
        p[12] = 0xf4;
        both(p, 13, 1000, &a, &b);
        assert_int_equal(t_handler_vector(T), X86_GP);
    }
    prep = NULL;
}

/* A fault in the middle of a translated block: native instructions before it have run, the
 * exception is delivered with the faulting instruction's RIP and CR2. */
static void test_fault_mid_block(void **st)
{
    static const uint8_t p[] = {
        0xb8, 0x07, 0x00, 0x00, 0x00,             /* mov eax, 7 */
        0x83, 0xc0, 0x01,                         /* add eax, 1 */
        0x48, 0x8b, 0x1c, 0x25, 0,    0, 0, 0x40, /* mov rbx, [0x40000000]: not mapped */
        0xff, 0xc0,                               /* inc eax (not reached) */
        0xf4,
    };
    static struct outcome a, b;
    both(p, sizeof(p), 1000, &a, &b);
    assert_int_equal(a.gpr[RAX], 8);
    assert_int_equal(a.cr2, 0x40000000);
    assert_int_equal(t_handler_vector(T), X86_PF);
    /* the frame's RIP (above the error code) names the load */
    assert_int_equal(get64(T, T->c->s.gpr[RSP] + 8), T_CODE0 + 8);
}

/* A crossing instruction's bytes on its second page change behind the code watch (a host-side
 * write here; another mapping of that page in a real guest) while the loop around it is chained:
 * the translation's entry check sees it and leaves for the loop, which decodes again.  Returns
 * RSI (the sum of the immediates the loop saw) and the instruction count.  Two loops: in the
 * first the crossing block is reached by a jump from the next page (its exit wrote s.rip); in the
 * second by a chained jump from its own page (R12 moved, JIT_ENTRY2), so the failing entry check
 * must write s.rip itself. */
static void crossing_run(bool jit, bool same_page, uint64_t *rsi, uint64_t *icount)
{
    static const uint8_t head_far[] = {
        0xb9, 0xe8, 0x03, 0x00, 0x00, /* 0: mov ecx, 1000 */
        0x31, 0xf6,                   /* 5: xor esi, esi */
        0xe9, 0xf2, 0x0f, 0x00, 0x00, /* 7: jmp 0xffe */
    };
    static const uint8_t tail_far[] = {
        0xb8, 0x10, 0x20, 0x30, 0x40, /* ffe: mov eax, 0x40302010 (3 bytes on the next page) */
        0x01, 0xc6,                   /* 1003: add esi, eax */
        0xff, 0xc9,                   /* 1005: dec ecx */
        0x75, 0xf5,                   /* 1007: jnz 0xffe */
        0xf4,                         /* 1009: hlt */
    };
    static const uint8_t head_near[] = {
        0xb9, 0xe8, 0x03, 0x00, 0x00, /* 0: mov ecx, 1000 */
        0x31, 0xf6,                   /* 5: xor esi, esi */
        0xe9, 0xec, 0x0f, 0x00, 0x00, /* 7: jmp 0xff8 */
    };
    static const uint8_t tail_near[] = {
        0xff, 0xc9,                   /* ff8: dec ecx */
        0x74, 0x0b,                   /* ffa: jz 0x1007 (falls through on the page: chained) */
        0x90, 0x90,                   /* ffc: nop; nop (a block: the next insn crosses) */
        0xb8, 0x10, 0x20, 0x30, 0x40, /* ffe: mov eax, 0x40302010 (3 bytes on the next page) */
        0x01, 0xc6,                   /* 1003: add esi, eax */
        0xeb, 0xf1,                   /* 1005: jmp 0xff8 */
        0xf4,                         /* 1007: hlt */
    };
    _Static_assert(sizeof(head_far) == sizeof(head_near), "one head length");
    static uint8_t p[0x100a];
    const uint8_t *tail = same_page ? tail_near : tail_far;
    size_t at = same_page ? 0xff8 : 0xffe, tl = same_page ? sizeof(tail_near) : sizeof(tail_far);
    memset(p, 0x90, sizeof(p));
    memcpy(p, same_page ? head_near : head_far, sizeof(head_far));
    memcpy(p + at, tail, tl);
    t_setup_long(T);
    use_jit(jit);
    struct bt_cpu *c = T->c;
    c->icount = 0;
    t_run(T, p, at + tl, 700); /* stops in the loop, its chains patched */
    assert_false(c->halted);
    static const uint8_t now[] = {0x21, 0x31, 0x41};
    memcpy(gp(T, T_CODE0 + 0x1000, 3), now, 3); /* the guest's own writes would be watched */
    c->exit_now = false;
    /* near: one instruction at a time to 1003, so the crossing block is next entered by the
     * chain from the block at ffc, not by the loop */
    for (int k = 0; same_page && k < 8 && c->s.rip != T_CODE0 + 0x1003; k++)
        bt_exec(c, 1);
    if (same_page) assert_int_equal(c->s.rip, T_CODE0 + 0x1003);
    bt_exec(c, 100000);
    assert_true(c->halted);
    *rsi = c->s.gpr[RSI];
    *icount = c->icount;
}

static void test_crossing_remap(void **st)
{
    uint64_t ri, ii, rj, ij;
    for (int near = 0; near < 2; near++) {
        crossing_run(false, near, &ri, &ii);
        crossing_run(true, near, &rj, &ij);
        assert_int_equal(ri, rj);
        assert_int_equal(ii, ij);
        /* both immediates were seen */
        assert_true(ri != (1000ull - near) * 0x40302010 % (1ull << 32));
    }
}

/* Self-modifying code: the loop body rewrites the immediate of an instruction in its own block
 * (already translated and run once); the next iteration must see the new bytes. */
static void test_self_modifying(void **st)
{
    static const uint8_t p[] = {
        0xb9,
        0x03,
        0x00,
        0x00,
        0x00, /* mov ecx, 3 */
        0x31,
        0xdb, /* xor ebx, ebx */
        /* again (7): */
        0xb8,
        0x01,
        0x00,
        0x00,
        0x00, /* mov eax, 1   <- imm patched at 8 */
        0x01,
        0xc3, /* add ebx, eax */
        0x88,
        0x0d,
        0xf4,
        0xff,
        0xff,
        0xff, /* mov [rip-12], cl (-> offset 8) */
        0xff,
        0xc9, /* dec ecx */
        0x75,
        0xef, /* jnz again */
        0xf4,
    };
    static struct outcome a, b;
    both(p, sizeof(p), 1000, &a, &b);
    assert_true(a.halted);
    assert_int_equal(a.gpr[RBX], 1 + 3 + 2); /* each pass runs the bytes the previous wrote */
    assert_int_equal(a.icount, 18);

    /* the same across blocks: a subroutine translated, then patched from the caller */
    static const uint8_t q[] = {
        0xe8, 0x1b, 0x00, 0x00, 0x00,             /* call sub (0x20) */
        0x89, 0xc3,                               /* mov ebx, eax */
        0xc6, 0x05, 0x13, 0x00, 0x00, 0x00, 0x09, /* mov byte [rip+0x13], 9 (-> 0x21) */
        0xe8, 0x0d, 0x00, 0x00, 0x00,             /* call sub */
        0x01, 0xc3,                               /* add ebx, eax */
        0xf4,                                     /* hlt (0x15) */
        0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90,
        /* sub (0x20): */
        0xb8, 0x02, 0x00, 0x00, 0x00, /* mov eax, 2 */
        0xc3,                         /* ret */
    };
    both(q, sizeof(q), 1000, &a, &b);
    assert_true(a.halted);
    assert_int_equal(a.gpr[RBX], 2 + 9);
}

/* Chained blocks and self-modifying code: A jumps to B (chained after the first pass), C rewrites
 * B's immediate each pass; every pass must run the bytes as they are then. */
static void test_chain_smc(void **st)
{
    uint8_t p[0x2e];
    memset(p, 0x90, sizeof(p));
    static const uint8_t head[] = {
        0xb9, 0x03, 0x00, 0x00, 0x00,       /* 0x00 mov ecx, 3 */
        0x31, 0xdb,                         /* 0x05 xor ebx, ebx */
        0xff, 0xc9,                         /* 0x07 A: dec ecx */
        0xeb, 0x15,                         /* 0x09 jmp B */
        0x88, 0x0d, 0x10, 0x00, 0x00, 0x00, /* 0x0b C: mov [rip+0x10], cl (-> 0x21) */
        0xeb, 0xf4,                         /* 0x11 jmp A */
    };
    static const uint8_t tail[] = {
        0xb8, 0x01, 0x00, 0x00, 0x00, /* 0x20 B: mov eax, 1 */
        0x01, 0xc3,                   /* 0x25 add ebx, eax */
        0x85, 0xc9,                   /* 0x27 test ecx, ecx */
        0x74, 0x02,                   /* 0x29 jz done */
        0xeb, 0xde,                   /* 0x2b jmp C */
        0xf4,                         /* 0x2d done: hlt */
    };
    memcpy(p, head, sizeof(head));
    memcpy(p + 0x20, tail, sizeof(tail));
    static struct outcome a, b;
    both(p, sizeof(p), 1000, &a, &b);
    assert_true(a.halted);
    assert_int_equal(a.gpr[RBX], 1 + 2 + 1);
}

/* A block chained to itself (`jmp $`) stops exactly at the budget, and a kick from another thread
 * stops it under an unbounded budget (the chained jump checks what the loop checks; without the
 * kick check this test hangs until the runner's timeout, which is how it fails). */
static void *run_forever(void *arg)
{
    bt_exec(T->c, UINT64_MAX / 2);
    return arg;
}

static void test_chain_budget_kick(void **st)
{
    static const uint8_t spin[] = {0x90, 0xff, 0xc0, 0xeb, 0xfb}; /* nop; inc eax; jmp -5 */
    static struct outcome a, b;
    for (uint64_t budget = 990; budget < 1010; budget++) {
        both(spin, sizeof(spin), budget, &a, &b);
        assert_int_equal(b.icount, budget);
    }
    t_setup_long(T);
    use_jit(true);
    put_bytes(T, T_CODE0, spin, sizeof(spin));
    T->c->icount = 0;
    atomic_store(&T->c->kicked, false);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, run_forever, NULL), 0);
    struct timespec ts = {0, 50 * 1000 * 1000};
    nanosleep(&ts, NULL);
    atomic_store(&T->c->kicked, true); /* as the backend's kick does: flag, then poke */
    bt_jit_poke(T->c);
    assert_int_equal(pthread_join(th, NULL), 0);
    atomic_store(&T->c->kicked, false);
    assert_true(T->c->icount > 1000);
    struct bt_jit_stats s;
    bt_jit_get_stats(T->c, &s);
    assert_true(s.chains >= 1);
}

/* ---- control flow: inline lookup, cross-page chains (assembled with GNU as; the sources are in
 * the comments, the bytes from `ld -Ttext=0x10000 --oformat binary`) ---- */

/*   start: mov ecx, 50; xor ebx, ebx
 *   loop1: lea rax, [rip+f1]; call rax          (indirect call, another page)
 *          lea rdx, [rip+t1]; jmp rdx; nop      (indirect jump)
 *   t1:    call f2                              (direct call, another page; f2 calls f1)
 *          add rbx, rax; call [rip+fptr]        (memory-indirect call)
 *          dec ecx; jnz loop1
 *          mov edi, 150; xor eax, eax; call rec (recursion 150 deep: deeper than the shadow stack)
 *          add rbx, rax; call lj_a; add rbx, 7; hlt
 *   fptr:  .quad f3
 *   rec:   test edi, edi; jz 1f; dec edi; push rdi; call rec; pop rdi; add rax, rdi; 1: ret
 *   lj_a:  mov r8, rsp; call lj_b; ud2          (longjmp-like: lj_c returns from lj_a's frame)
 *   lj_b:  call lj_c; ud2
 *   lj_c:  mov rsp, r8; ret
 *   0x11000 f1: add rbx, 3; ret
 *   0x12000 f2: mov eax, ecx; call f1; ret      f3: inc rbx; ret */
static const uint8_t ind_0[] = {
    0xb9, 0x32, 0x00, 0x00, 0x00, 0x31, 0xdb, 0x48, 0x8d, 0x05, 0xf2, 0x0f, 0x00, 0x00, 0xff,
    0xd0, 0x48, 0x8d, 0x15, 0x03, 0x00, 0x00, 0x00, 0xff, 0xe2, 0x90, 0xe8, 0xe1, 0x1f, 0x00,
    0x00, 0x48, 0x01, 0xc3, 0xff, 0x15, 0x20, 0x00, 0x00, 0x00, 0xff, 0xc9, 0x75, 0xdb, 0xbf,
    0x96, 0x00, 0x00, 0x00, 0x31, 0xc0, 0xe8, 0x18, 0x00, 0x00, 0x00, 0x48, 0x01, 0xc3, 0xe8,
    0x21, 0x00, 0x00, 0x00, 0x48, 0x83, 0xc3, 0x07, 0xf4, 0x0f, 0x1f, 0x00, 0x08, 0x20, 0x01,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x85, 0xff, 0x74, 0x0c, 0xff, 0xcf, 0x57, 0xe8, 0xf4, 0xff,
    0xff, 0xff, 0x5f, 0x48, 0x01, 0xf8, 0xc3, 0x49, 0x89, 0xe0, 0xe8, 0x02, 0x00, 0x00, 0x00,
    0x0f, 0x0b, 0xe8, 0x02, 0x00, 0x00, 0x00, 0x0f, 0x0b, 0x4c, 0x89, 0xc4, 0xc3};
static const uint8_t ind_1000[] = {0x48, 0x83, 0xc3, 0x03, 0xc3};
static const uint8_t ind_2000[] = {0x89, 0xc8, 0xe8, 0xf9, 0xef, 0xff,
                                   0xff, 0xc3, 0x48, 0xff, 0xc3, 0xc3};

static uint64_t ind_base = T_CODE0;
static void prep_ind(void)
{
    put_bytes(T, ind_base + 0x1000, ind_1000, sizeof(ind_1000));
    put_bytes(T, ind_base + 0x2000, ind_2000, sizeof(ind_2000));
}

/* Two functions reached by indirect CALLs (the inline lookup) whose page the guest remaps halfway
 * to another physical page holding other code: after INVLPG (A), a CR3 reload (B) or INVLPG of a
 * global page with CR4.PGE (C) the lookup must not jump to an old translation, although the
 * first call after the remap fills the TLB with the new page again (the second function's entry
 * is then stale and the TLB maps its page, to another physical page: revalidation must fail).
 *   mov ecx, 100; xor ebx, ebx
 *   again: mov eax, 0x600000; call rax; add ebx, eax; mov eax, 0x600010; call rax; add ebx, eax
 *          cmp ecx, 50; jne skip
 *          mov [r8], r9 (the PDE: the other page); invlpg [rdx] | mov rsi, cr3; mov cr3, rsi
 *   skip:  dec ecx; jnz again; hlt
 *   0x600000 -> 0x600000: f: mov eax, 1; ret; g (+0x10): mov eax, 10; ret
 *            -> 0x800000: f: mov eax, 2; ret; g: mov eax, 20; ret */
static const uint8_t remap_invlpg[] = {
    0xb9, 0x64, 0x00, 0x00, 0x00, 0x31, 0xdb, 0xb8, 0x00, 0x00, 0x60, 0x00, 0xff, 0xd0,
    0x01, 0xc3, 0xb8, 0x10, 0x00, 0x60, 0x00, 0xff, 0xd0, 0x01, 0xc3, 0x83, 0xf9, 0x32,
    0x75, 0x06, 0x4d, 0x89, 0x08, 0x0f, 0x01, 0x3a, 0xff, 0xc9, 0x75, 0xdf, 0xf4};
static const uint8_t remap_cr3[] = {
    0xb9, 0x64, 0x00, 0x00, 0x00, 0x31, 0xdb, 0xb8, 0x00, 0x00, 0x60, 0x00, 0xff, 0xd0, 0x01,
    0xc3, 0xb8, 0x10, 0x00, 0x60, 0x00, 0xff, 0xd0, 0x01, 0xc3, 0x83, 0xf9, 0x32, 0x75, 0x09,
    0x4d, 0x89, 0x08, 0x0f, 0x20, 0xde, 0x0f, 0x22, 0xde, 0xff, 0xc9, 0x75, 0xdc, 0xf4};
static uint64_t remap_pde_bits;

static void prep_remap(struct bt_cpu *c)
{
    static const uint8_t f1[] = {0xb8, 0x01, 0x00, 0x00, 0x00, 0xc3};
    static const uint8_t g1[] = {0xb8, 0x0a, 0x00, 0x00, 0x00, 0xc3};
    static const uint8_t f2[] = {0xb8, 0x02, 0x00, 0x00, 0x00, 0xc3};
    static const uint8_t g2[] = {0xb8, 0x14, 0x00, 0x00, 0x00, 0xc3};
    put_bytes(T, 0x600000, f1, sizeof(f1));
    put_bytes(T, 0x600010, g1, sizeof(g1));
    put_bytes(T, 0x800000, f2, sizeof(f2));
    put_bytes(T, 0x800010, g2, sizeof(g2));
    put64(T, T_PD + 24, 0x600000 | remap_pde_bits);
    c->s.gpr[R8] = T_PD + 24;
    c->s.gpr[R9] = 0x800000 | remap_pde_bits;
    c->s.gpr[RDX] = 0x600000;
    if (remap_pde_bits & 0x100) c->s.cr4 |= X86_CR4_PGE;
}

static void test_lookup_remap(void **st)
{
    static struct outcome a, b;
    static const struct {
        const uint8_t *code;
        size_t n;
        uint64_t bits;
    } v[] = {{remap_invlpg, sizeof(remap_invlpg), 0x83},
             {remap_cr3, sizeof(remap_cr3), 0x83},
             {remap_invlpg, sizeof(remap_invlpg), 0x183}};
    prep = prep_remap;
    for (unsigned k = 0; k < ARRAY_SIZE(v); k++) {
        remap_pde_bits = v[k].bits;
        run_prog(false, v[k].code, v[k].n, 100000, &a);
        struct bt_jit_stats s0, s;
        bt_jit_get_stats(T->c, &s0);
        run_prog(true, v[k].code, v[k].n, 100000, &b);
        bt_jit_get_stats(T->c, &s);
        compare(&a, &b);
        assert_true(a.halted);
        assert_int_equal(a.gpr[RBX], 51 * (1 + 10) + 49 * (2 + 20));
        assert_true(s.lookup_hits - s0.lookup_hits > 40);         /* the lookup ran f and g */
        assert_true(s.lookup_miss_tlb - s0.lookup_miss_tlb >= 2); /* and not after the remap */
        /* stale entries of other pages (the return addresses) the TLB vouched for again */
        if (k == 1) assert_true(s.lookup_revalidated - s0.lookup_revalidated >= 1);
    }
    prep = NULL;
}

static void test_indirect_calls(void **st)
{
    static struct outcome a, b;
    setup_hook = prep_ind;
    run_prog(false, ind_0, sizeof(ind_0), 1000000, &a);
    struct bt_jit_stats s0, s;
    bt_jit_get_stats(T->c, &s0);
    run_prog(true, ind_0, sizeof(ind_0), 1000000, &b);
    bt_jit_get_stats(T->c, &s);
    compare(&a, &b);
    assert_true(a.halted);
    /* 50 x (3 + (3 + ecx) + 1) with ecx 50..1, then 149*150/2 from rec, then 7 */
    assert_int_equal(a.gpr[RBX], 50 * 7 + 50 * 51 / 2 + 150 * 149 / 2 + 7);
    uint64_t hits = s.lookup_hits - s0.lookup_hits, runs = s.runs - s0.runs;
    print_message("lookups %llu hits %llu, loop entries %llu\n",
                  (unsigned long long)(s.lookups - s0.lookups), (unsigned long long)hits,
                  (unsigned long long)runs);
    assert_true(hits > 300); /* the calls and returns of the loop */
    assert_true(runs < hits / 4);
    /* every budget that ends inside the program ends identically */
    for (uint64_t budget = 1; budget < 1500; budget += 37)
        both(ind_0, sizeof(ind_0), budget, &a, &b);
    setup_hook = NULL;
}

/* Self-modifying code reached through a lookup: f (another page) is called indirectly, then its
 * immediate rewritten; the lookup must never jump to the old translation.
 *   start: mov ecx, 3; xor ebx, ebx
 *   again: lea rax, [rip+f]; call rax; add ebx, eax; mov byte [rip+f+1], cl; dec ecx; jnz again
 *          hlt
 *   0x11000 f: mov eax, 1; ret */
static const uint8_t smc_0[] = {0xb9, 0x03, 0x00, 0x00, 0x00, 0x31, 0xdb, 0x48, 0x8d, 0x05,
                                0xf2, 0x0f, 0x00, 0x00, 0xff, 0xd0, 0x01, 0xc3, 0x88, 0x0d,
                                0xe9, 0x0f, 0x00, 0x00, 0xff, 0xc9, 0x75, 0xeb, 0xf4};
static const uint8_t smc_1000[] = {0xb8, 0x01, 0x00, 0x00, 0x00, 0xc3};

static void prep_smc(void)
{
    put_bytes(T, T_CODE0 + 0x1000, smc_1000, sizeof(smc_1000));
}

static void test_lookup_smc(void **st)
{
    static struct outcome a, b;
    setup_hook = prep_smc;
    both(smc_0, sizeof(smc_0), 1000, &a, &b);
    assert_true(a.halted);
    assert_int_equal(a.gpr[RBX], 1 + 3 + 2);
    setup_hook = NULL;
}

/* Two address spaces mapping linear 2-4 MiB to different physical pages (CR3 0x1000: identity;
 * CR3 0x14000: physical 4-6 MiB), switched every pass.  The same linear code at 0x250000 is
 * `mov eax, 1; ret` in one and `mov eax, 2; ret` in the other (reached by an indirect call: the
 * lookup), and at 0x250100 `mov eax, 10 / 20; jmp back` (reached by a direct jump across pages:
 * the TLB-checked chain).
 *   start: mov ecx, 6; xor ebx, ebx
 *   again: mov rdx, 0x250000; call rdx; add ebx, eax; jmp 0x250100
 *   back:  add ebx, eax; mov rax, cr3; xor eax, 0x15000; mov cr3, rax; dec ecx; jnz again; hlt */
static const uint8_t cr3_0[] = {0xb9, 0x06, 0x00, 0x00, 0x00, 0x31, 0xdb, 0x48, 0xc7, 0xc2, 0x00,
                                0x00, 0x25, 0x00, 0xff, 0xd2, 0x01, 0xc3, 0xe9, 0xe9, 0x00, 0x24,
                                0x00, 0x01, 0xc3, 0x0f, 0x20, 0xd8, 0x35, 0x00, 0x50, 0x01, 0x00,
                                0x0f, 0x22, 0xd8, 0xff, 0xc9, 0x75, 0xdf, 0xf4};
static const uint8_t pA_0[] = {0xb8, 0x01, 0x00, 0x00, 0x00, 0xc3};
static const uint8_t pA_100[] = {0xb8, 0x0a, 0x00, 0x00, 0x00, 0xe9, 0x0d, 0xff, 0xdb, 0xff};
static const uint8_t pB_0[] = {0xb8, 0x02, 0x00, 0x00, 0x00, 0xc3};
static const uint8_t pB_100[] = {0xb8, 0x14, 0x00, 0x00, 0x00, 0xe9, 0x0d, 0xff, 0xdb, 0xff};

static void prep_cr3(void)
{
    put64(T, 0x14000, 0x15000 | 7);
    put64(T, 0x15000, 0x16000 | 7);
    put64(T, 0x16000, 0x000000 | 0x83);
    put64(T, 0x16008, 0x400000 | 0x87);
    put_bytes(T, 0x250000, pA_0, sizeof(pA_0));
    put_bytes(T, 0x250100, pA_100, sizeof(pA_100));
    put_bytes(T, 0x450000, pB_0, sizeof(pB_0));
    put_bytes(T, 0x450100, pB_100, sizeof(pB_100));
}

static void test_cr3_switch(void **st)
{
    static struct outcome a, b;
    setup_hook = prep_cr3;
    for (int round = 0; round < 2; round++) { /* the second time every block is translated */
        both(cr3_0, sizeof(cr3_0), 1000, &a, &b);
        assert_true(a.halted);
        assert_int_equal(a.gpr[RBX], 3 * (1 + 10) + 3 * (2 + 20));
    }
    struct bt_jit_stats s;
    bt_jit_get_stats(T->c, &s);
    assert_true(s.chains_cross >= 1);
    setup_hook = NULL;
}

/* test_cr3_switch with the first 2 MiB (the program, and so the return address of its indirect
 * call) mapped global in both address spaces and CR4.PGE set: after each switch the RET's lookup
 * finds the entry made under the other CR3 and may take it (a global page holds for every
 * address space until a flush drops global pages), while the called code at 0x250000, mapped
 * differently in each space and not global, must still miss.  Before lookups honoured global
 * entries the RETs missed after every switch (kernel code under every process's CR3). */
static void prep_cr3_global(void)
{
    prep_cr3();
    put64(T, T_PD + 0, 0x000000 | 0x183);
    put64(T, 0x16000, 0x000000 | 0x183);
}

static void pge_on(struct bt_cpu *c)
{
    c->s.cr4 |= X86_CR4_PGE;
}

static void test_cr3_switch_global(void **st)
{
    static struct outcome a, b;
    setup_hook = prep_cr3_global;
    prep = pge_on;
    struct bt_jit_stats s0, s1;
    for (int round = 0; round < 2; round++) { /* the second time every block is translated */
        bt_jit_get_stats(T->c, &s0);
        both(cr3_0, sizeof(cr3_0), 1000, &a, &b);
        bt_jit_get_stats(T->c, &s1);
        assert_true(a.halted);
        assert_int_equal(a.gpr[RBX], 3 * (1 + 10) + 3 * (2 + 20));
    }
    /* the second round: every lookup comes right after a switch; the RETs' (global) hit (15
     * here; 0 when a global entry made under the other CR3 was a miss), the calls' miss */
    assert_true(s1.lookup_hits - s0.lookup_hits >= 10);
    assert_true(s1.lookup_miss_key - s0.lookup_miss_key >= 4);
    prep = NULL;
    setup_hook = NULL;
}

/* The same linear code in two modes: X (bytes 48 ff c1 ff e2) is `inc rcx; jmp rdx` in 64-bit code
 * and `dec eax; inc ecx; jmp edx` in 32-bit code.  It runs twice in 64-bit mode through an
 * indirect jump (its lookup entry is filled), then a far jump to a 32-bit code segment enters it
 * at the same RIP: the lookup must not take the 64-bit translation.
 *   start: mov esi, 2
 *   again: lea rdx, [rip+back]; lea rax, [rip+X]; jmp rax
 *   back:  dec esi; jnz again; lea edx, [rip+back32]; jmp fword [rip+farptr]
 *   back32: hlt
 *   farptr: .long X; .word 0x38 (32-bit kernel code)    X: .byte 0x48, 0xff, 0xc1, 0xff, 0xe2 */
static const uint8_t mode_0[] = {0xbe, 0x02, 0x00, 0x00, 0x00, 0x48, 0x8d, 0x15, 0x09, 0x00, 0x00,
                                 0x00, 0x48, 0x8d, 0x05, 0x1d, 0x00, 0x00, 0x00, 0xff, 0xe0, 0xff,
                                 0xce, 0x75, 0xec, 0x8d, 0x15, 0x06, 0x00, 0x00, 0x00, 0xff, 0x2d,
                                 0x03, 0x00, 0x00, 0x00, 0xf4, 0x66, 0x90, 0x30, 0x00, 0x01, 0x00,
                                 0x38, 0x00, 0x66, 0x90, 0x48, 0xff, 0xc1, 0xff, 0xe2};

static void test_lookup_mode(void **st)
{
    static struct outcome a, b;
    both(mode_0, sizeof(mode_0), 1000, &a, &b);
    assert_true(a.halted);
    assert_int_equal(a.rip, T_CODE0 + 0x26);
    assert_int_equal(a.gpr[RCX], 2 + 3);              /* 2 from the initial state, +1 per pass */
    assert_int_equal(a.gpr[RAX], T_CODE0 + 0x30 - 1); /* the 32-bit pass decremented EAX */
}

/* A loop in 32-bit code (a far jump to the 32-bit kernel code segment): translated, its register
 * forms native, the loop chained (the block's RIP in R12 wraps to 32 bits).
 *   jmp fword [rip+farptr]; farptr: .long l32; .word 0x38
 *   l32: mov ecx, 100; lp: add eax, ecx; xor edx, eax; lea ebx, [eax+edx*2]; dec ecx; jnz lp; hlt
 */
static const uint8_t code32_0[] = {0xff, 0x2d, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x01, 0x00, 0x38,
                                   0x00, 0x90, 0x90, 0x90, 0x90, 0xb9, 0x64, 0x00, 0x00, 0x00, 0x01,
                                   0xc8, 0x31, 0xc2, 0x8d, 0x1c, 0x50, 0x49, 0x75, 0xf6, 0xf4};

static void test_code32(void **st)
{
    static struct outcome a, b;
    run_prog(false, code32_0, sizeof(code32_0), 100000, &a);
    struct bt_jit_stats s0, s;
    bt_jit_get_stats(T->c, &s0);
    run_prog(true, code32_0, sizeof(code32_0), 100000, &b);
    bt_jit_get_stats(T->c, &s);
    compare(&a, &b);
    assert_true(a.halted);
    assert_int_equal(a.gpr[RCX], 0);
    print_message("32-bit loop: %llu blocks translated, %llu native, %llu called, %llu runs\n",
                  (unsigned long long)(s.blocks_translated - s0.blocks_translated),
                  (unsigned long long)(s.insns_native - s0.insns_native),
                  (unsigned long long)(s.insns_called - s0.insns_called),
                  (unsigned long long)(s.runs - s0.runs));
    assert_true(s.insns_native - s0.insns_native >= 5);   /* the loop's body and branch */
    assert_true(s.chains - s0.chains >= 1);               /* its back edge */
    for (uint64_t budget = 1; budget < 400; budget += 23) /* budgets ending inside */
        both(code32_0, sizeof(code32_0), budget, &a, &b);
}

/* REP string instructions in the middle of a block run in chunks (16 pages per handler call):
 * each chunk re-runs the instruction, which leaves the block through the inline lookup.
 *   mov esi, 0x240000; mov edi, 0x2a0000; mov ecx, 0x14000; xor eax, eax; rep movsb; add eax, 1
 *   mov ecx, 0x23456; mov edi, 0x280000; rep stosb; add eax, 2; hlt */
static const uint8_t rep_0[] = {0xbe, 0x00, 0x00, 0x24, 0x00, 0xbf, 0x00, 0x00, 0x2a, 0x00,
                                0xb9, 0x00, 0x40, 0x01, 0x00, 0x31, 0xc0, 0xf3, 0xa4, 0x83,
                                0xc0, 0x01, 0xb9, 0x56, 0x34, 0x02, 0x00, 0xbf, 0x00, 0x00,
                                0x28, 0x00, 0xf3, 0xaa, 0x83, 0xc0, 0x02, 0xf4};

static void test_rep_mid_block(void **st)
{
    static struct outcome a, b;
    both(rep_0, sizeof(rep_0), 100000, &a, &b);
    assert_true(a.halted);
    assert_int_equal(a.gpr[RAX], 3);
    assert_int_equal(a.gpr[RCX], 0);
    assert_int_equal(a.gpr[RSI], 0x240000 + 0x14000);
    assert_int_equal(a.gpr[RDI], 0x280000 + 0x23456);
    for (uint64_t budget = 3; budget < 20; budget++) /* budgets ending between the chunks */
        both(rep_0, sizeof(rep_0), budget, &a, &b);
}

/* ---- --cfi: the shadow stack of the CALL/RET handlers, the same in both backends ---- */

/*   start: call r1; add rbx, 1; call r2; add rbx, 2; hlt
 *   r1:    lea rax, [rip+gadget]; mov [rsp], rax; ret     (ROP-style: a return to a non-call site)
 *   r2:    ret
 *   gadget: add rbx, 100; hlt */
static const uint8_t rop_0[] = {0xe8, 0x0e, 0x00, 0x00, 0x00, 0x48, 0x83, 0xc3, 0x01, 0xe8,
                                0x11, 0x00, 0x00, 0x00, 0x48, 0x83, 0xc3, 0x02, 0xf4, 0x48,
                                0x8d, 0x05, 0x06, 0x00, 0x00, 0x00, 0x48, 0x89, 0x04, 0x24,
                                0xc3, 0xc3, 0x48, 0x83, 0xc3, 0x64, 0xf4};

/* A retpoline thunk: start: lea rax, [rip+target]; call thunk; add rbx, 1; hlt
 *   thunk:  call 1f; 2: pause; lfence; jmp 2b; 1: mov [rsp], rax; ret
 *   target: add rbx, 10; ret */
static const uint8_t retp_0[] = {0x48, 0x8d, 0x05, 0x1b, 0x00, 0x00, 0x00, 0xe8, 0x05, 0x00,
                                 0x00, 0x00, 0x48, 0x83, 0xc3, 0x01, 0xf4, 0xe8, 0x07, 0x00,
                                 0x00, 0x00, 0xf3, 0x90, 0x0f, 0xae, 0xe8, 0xeb, 0xf9, 0x48,
                                 0x89, 0x04, 0x24, 0xc3, 0x48, 0x83, 0xc3, 0x0a, 0xc3};

/* Runs `code` at T_CODE3 in ring 3 (user stack) under `pol`; returns the CFI counts it added. */
static void run_user(bool jit, const uint8_t *code, size_t n, const struct bt_cfi_policy *pol,
                     bool user, struct outcome *o, struct bt_cfi_stats *d)
{
    t_setup_long(T);
    use_jit(jit);
    struct bt_cpu *c = T->c;
    if (user) t_to_ring3(T, T_CODE3);
    ind_base = c->s.rip;
    if (setup_hook) setup_hook();
    c->s.gpr[RBX] = 2;
    c->icount = 0;
    bt_cfi_set_policy(pol);
    bt_cfi_destroy(c); /* a fresh shadow stack */
    bt_cfi_reset_stats();
    atomic_store(&T->vm.stop_reason, VM_STOP_NONE);
    uint8_t buf[0x100];
    assert_true(n <= sizeof(buf));
    memcpy(buf, code, n);
    if (code == ind_0) { /* fptr (offset 0x48) holds the absolute address of f3 */
        uint64_t f3 = c->s.rip + 0x2008;
        memcpy(buf + 0x48, &f3, 8);
    }
    t_run(T, buf, n, 100000);
    struct bt_cfi_stats running;
    bt_cfi_get_stats(&running); /* a live vCPU's counts are in the totals at once */
    bt_cfi_destroy(c);          /* folds the vCPU's counts into the totals */
    bt_cfi_get_stats(d);
    assert_int_equal(running.calls, d->calls);
    assert_int_equal(running.checked, d->checked);
    assert_int_equal(running.unverified, d->unverified);
    memcpy(o->gpr, c->s.gpr, sizeof(o->gpr));
    o->rip = c->s.rip;
    o->rflags = c->s.rflags;
    o->icount = c->icount;
    o->halted = c->halted;
    static const struct bt_cfi_policy dflt = {BT_CFI_LOG, false};
    bt_cfi_set_policy(&dflt);
}

static void test_cfi(void **st)
{
    static struct outcome a, b;
    struct bt_cfi_stats da, db;
    const struct bt_cfi_policy log_user = {BT_CFI_LOG, false}, enforce = {BT_CFI_ENFORCE, false},
                               log_all = {BT_CFI_LOG, true};
    const uint64_t ret_r1 = T_CODE3 + 0x1e; /* the RET of r1 */

    /* calls, returns, recursion deeper than the shadow stack, a longjmp-like unwind: clean */
    setup_hook = prep_ind;
    struct bt_jit_stats j0, j1;
    for (int jit = 0; jit < 2; jit++) {
        bt_jit_get_stats(T->c, &j0);
        run_user(jit, ind_0, sizeof(ind_0), &enforce, true, jit ? &b : &a, jit ? &db : &da);
        bt_jit_get_stats(T->c, &j1);
    }
    setup_hook = NULL;
    /* the translated CALLs and RETs are native with the inline hooks (a form the encoder
     * refused would put them on their handler path, still correct) */
    print_message("translated: %llu native, %llu called instructions\n",
                  (unsigned long long)(j1.insns_native - j0.insns_native),
                  (unsigned long long)(j1.insns_called - j0.insns_called));
    assert_true(j1.insns_called - j0.insns_called <= 2);
    ind_base = T_CODE0;
    assert_int_equal(a.gpr[RBX], b.gpr[RBX]);
    assert_int_equal(a.icount, b.icount);
    assert_int_equal(a.rip, b.rip);
    assert_int_equal(a.gpr[RBX], 50 * 7 + 50 * 51 / 2 + 150 * 149 / 2 + 7);
    assert_int_equal(da.violations_user + db.violations_user, 0);
    assert_int_equal(da.checked, db.checked);
    assert_int_equal(da.unverified, db.unverified);
    print_message("clean run: %llu calls, %llu returns checked, %llu unverified\n",
                  (unsigned long long)da.calls, (unsigned long long)da.checked,
                  (unsigned long long)da.unverified);
    assert_int_equal(da.checked + da.unverified, 200 + 151 + 1); /* every RET that ran */
    assert_int_equal(da.unverified, 151 - 64); /* the recursion beyond the 64-deep ring */

    /* log: the gadget runs, one user violation, both backends */
    for (int jit = 0; jit < 2; jit++)
        run_user(jit, rop_0, sizeof(rop_0), &log_user, true, jit ? &b : &a, jit ? &db : &da);
    compare(&a, &b);
    assert_int_equal(a.gpr[RBX], 2 + 100);
    assert_int_equal(da.violations_user, 1);
    assert_int_equal(db.violations_user, 1);

    /* enforce: the VM stops at the RET, before the gadget; the RET has not completed */
    for (int jit = 0; jit < 2; jit++) {
        run_user(jit, rop_0, sizeof(rop_0), &enforce, true, jit ? &b : &a, jit ? &db : &da);
        assert_int_equal(atomic_load(&T->vm.stop_reason), VM_STOP_CFI);
        assert_true(T->c->exit_now);
    }
    assert_int_equal(a.rip, ret_r1);
    assert_int_equal(b.rip, ret_r1);
    assert_int_equal(a.gpr[RBX], 2);
    assert_int_equal(b.gpr[RBX], 2);
    assert_int_equal(a.gpr[RSP], b.gpr[RSP]);
    assert_int_equal(da.violations_user + db.violations_user, 2);

    /* the same in the kernel: not policed with scope user, counted with scope all */
    for (int jit = 0; jit < 2; jit++)
        run_user(jit, rop_0, sizeof(rop_0), &enforce, false, jit ? &b : &a, jit ? &db : &da);
    compare(&a, &b);
    assert_int_equal(a.gpr[RBX], 2 + 100);
    assert_int_equal(da.violations_kernel + db.violations_kernel, 0);
    for (int jit = 0; jit < 2; jit++)
        run_user(jit, rop_0, sizeof(rop_0), &log_all, false, jit ? &b : &a, jit ? &db : &da);
    assert_int_equal(da.violations_kernel, 1);
    assert_int_equal(db.violations_kernel, 1);

    /* a retpoline thunk rewrites its own return slot: recognised, not a violation */
    for (int jit = 0; jit < 2; jit++)
        run_user(jit, retp_0, sizeof(retp_0), &enforce, true, jit ? &b : &a, jit ? &db : &da);
    compare(&a, &b);
    assert_int_equal(a.gpr[RBX], 2 + 10 + 1);
    assert_int_equal(da.violations_user + db.violations_user, 0);
    assert_int_equal(da.retpoline, 1);
    assert_int_equal(db.retpoline, 1);
    atomic_store(&T->vm.stop_reason, VM_STOP_NONE);
    T->c->exit_now = false;
}

/* No mapping of this process is writable and executable at once, with the code cache mapped. */
static void test_wx(void **st)
{
    uint8_t p[sizeof(loop_prog)];
    make_loop(p, 10);
    static struct outcome b;
    run_prog(true, p, sizeof(p), 10000, &b);
    FILE *f = fopen("/proc/self/maps", "r");
    assert_non_null(f);
    char line[512];
    int jit_maps = 0, wx = 0;
    while (fgets(line, sizeof(line), f)) {
        char perms[8] = "";
        if (sscanf(line, "%*s %7s", perms) != 1) continue;
        if (strchr(perms, 'w') && strchr(perms, 'x')) {
            print_error("writable and executable: %s", line);
            wx++;
        }
        if (strstr(line, "lookout-jit")) jit_maps++;
    }
    fclose(f);
    assert_int_equal(wx, 0);
    assert_int_equal(jit_maps, 2); /* the RW view and the RX view */
}

/* LOOKOUT_BT_JIT: unset or 1 wants the translator, anything else (0) the interpreter alone; a
 * vCPU created under LOOKOUT_BT_JIT=0 has no translator. */
static void test_switch(void **st)
{
    const char *old = getenv("LOOKOUT_BT_JIT");
    char *saved = old ? strdup(old) : NULL;
    unsetenv("LOOKOUT_BT_JIT");
    assert_true(bt_jit_wanted());
    setenv("LOOKOUT_BT_JIT", "1", 1);
    assert_true(bt_jit_wanted());
    setenv("LOOKOUT_BT_JIT", "0", 1);
    assert_false(bt_jit_wanted());
    struct bt_cpu *c = aligned_alloc(_Alignof(struct bt_cpu), sizeof(*c)); /* bt_cpu.tlb */
    assert_non_null(c);
    memset(c, 0, sizeof(*c));
    c->vm = &T->vm;
    assert_int_equal(bt_core_init(c), 0);
    assert_null(c->jit);
    bt_core_destroy(c);
    free(c);
    if (saved)
        setenv("LOOKOUT_BT_JIT", saved, 1);
    else
        unsetenv("LOOKOUT_BT_JIT");
    free(saved);
}

static double seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Not a pass/fail test: prints guest instructions per second both ways on the loop. */
/* Probe groups: two loads and a store off R15 and two PUSHes and POPs share one prologue probe
 * each (R15's range [R15, R15 + 24), RSP's [RSP - 16, RSP)).  Run where the ranges fit in a page,
 * where R15's crosses a 4 KiB page (the prologue fails and the plain body runs), and where R15
 * points to a read-only page: the store must fault at itself, after the two loads, with CR2 its
 * address, exactly as interpreted.  In a loop of 3: warm, the grouped body runs (a fallback at most
 * for the first, cold run); across pages, every run falls back. */
static const uint8_t grp_prog[] = {
    0xbe, 0x03, 0x00, 0x00, 0x00, /* 0: mov esi, 3 */
    0x49, 0x8b, 0x07,             /* 5: mov rax, [r15] */
    0x49, 0x03, 0x47, 0x08,       /* 8: add rax, [r15+8] */
    0x49, 0x89, 0x47, 0x10,       /* c: mov [r15+16], rax */
    0x50,                         /* 10: push rax */
    0x53,                         /* 11: push rbx */
    0x59,                         /* 12: pop rcx */
    0x5a,                         /* 13: pop rdx */
    0xff, 0xce,                   /* 14: dec esi */
    0x75, 0xed,                   /* 16: jnz 5 */
    0xf4,                         /* 18: hlt */
};

static uint64_t grp_r15;

static void prime_grp(struct bt_cpu *c)
{
    put64(T, T_PD + 16, T_RO | 0x81); /* read-only, supervisor */
    c->s.gpr[R15] = grp_r15;
    bt_read(c, grp_r15, 8, BT_ACC_READ); /* warm for reads (the read-only page too) */
    bt_probe_write(c, c->s.gpr[RSP] - 16, 16, BT_ACC_WRITE); /* and the stack */
}

/* Probe groups with 16-byte SSE moves as members (memset/memcpy-like code, stack spills):
 * after a PXOR (XMM registers only: the plan goes on), five R15 accesses in [R15, R15 + 0x50)
 * (two loads, an aligned and an unaligned store, an aligned load) and two aligned stores below
 * RSP, a group each.  Run where everything fits,
 * where the MOVAPS store is misaligned (#GP at it, from its slow path, after the grouped loads),
 * where R15's range crosses a page (every run falls back), and where R15 points to a read-only
 * page (#PF at the first store). */
static const uint8_t grp_sse_prog[] = {
    0xbe, 0x03, 0x00, 0x00, 0x00,       /* 0: mov esi, 3 */
    0x66, 0x0f, 0xef, 0xc0,             /* 5: pxor xmm0, xmm0 (the plan goes on) */
    0xf3, 0x41, 0x0f, 0x6f, 0x0f,       /* 9: movdqu xmm1, [r15] */
    0xf3, 0x41, 0x0f, 0x6f, 0x57, 0x10, /* e: movdqu xmm2, [r15+0x10] */
    0x41, 0x0f, 0x29, 0x4f, 0x20,       /* 14: movaps [r15+0x20], xmm1 */
    0x41, 0x0f, 0x11, 0x57, 0x31,       /* 19: movups [r15+0x31], xmm2 */
    0x66, 0x41, 0x0f, 0x6f, 0x5f, 0x40, /* 1e: movdqa xmm3, [r15+0x40] */
    0x66, 0x0f, 0x29, 0x5c, 0x24, 0xe0, /* 24: movapd [rsp-0x20], xmm3 */
    0x0f, 0x29, 0x4c, 0x24, 0xd0,       /* 2a: movaps [rsp-0x30], xmm1 */
    0xff, 0xce,                         /* 2f: dec esi */
    0x75, 0xd2,                         /* 31: jnz 5 */
    0xf4,                               /* 33: hlt */
};

static void prime_grp_sse(struct bt_cpu *c)
{
    prime_grp(c);
    bt_probe_write(c, c->s.gpr[RSP] - 0x30, 0x30, BT_ACC_WRITE);
    for (int r = 0; r < 16; r++)
        memset(c->s.fx.xmm[r], 0x11 * r + 1, 16);
    for (int k = 0; k < 0x60; k++) /* distinct bytes to move */
        if (grp_r15 >= T_DATA && grp_r15 + k < T_DATA + 0x2000)
            *(uint8_t *)gp(T, grp_r15 + k, 1) = (uint8_t)(k * 7 + 3);
}

/* The three runs both group tests make of `prog` (its store to [R15 + store_off] at
 * T_CODE0 + store_at): everything fits (the grouped body runs, `members` accesses translated as
 * members, a fallback at most for the cold first run); R15 at `cross`, where its range crosses
 * into the next page (every run of the loop of 3 falls back); and R15 on a read-only page (#PF,
 * protection and write, at the store, after the grouped loads).  Each against the interpreter. */
static void grp_runs(const uint8_t *prog, size_t n, unsigned members, uint64_t cross,
                     uint64_t store_off, uint64_t store_at, struct outcome *fit)
{
    static struct outcome a, b;
    struct bt_jit_stats s0, s1;
    grp_r15 = T_DATA + 0x100;
    bt_jit_get_stats(T->c, &s0);
    both(prog, n, 1000, &a, fit);
    bt_jit_get_stats(T->c, &s1);
    assert_true(fit->halted);
    assert_true(s1.grp_blocks > s0.grp_blocks);
    assert_true(s1.grp_members >= s0.grp_members + members);
    assert_true(s1.grp_fallbacks - s0.grp_fallbacks <= 1);

    grp_r15 = cross;
    both(prog, n, 1000, &a, &b);
    bt_jit_get_stats(T->c, &s0);
    assert_true(b.halted);
    assert_true(s0.grp_fallbacks - s1.grp_fallbacks >= 3);

    grp_r15 = T_RO + 0x100;
    both(prog, n, 1000, &a, &b);
    assert_int_equal(t_handler_vector(T), X86_PF);
    assert_int_equal(b.cr2, T_RO + 0x100 + store_off);
    assert_int_equal(get64(T, T->c->s.gpr[RSP] + 8), T_CODE0 + store_at); /* the store's RIP */
    assert_int_equal(get64(T, T->c->s.gpr[RSP]), 0x3);                    /* protection, write */
}

/* 32-bit ALU operations whose destination lives in c->s.gpr (RBX, RBP, R9, R12-R14) with a
 * source that is another such slot or a pinned register, the flags live (SETcc, ADC, SBB,
 * CMOVcc read them) and TEST in both orders, in a loop of 20.  Every form must be native (the
 * encoder refuses TEST r, m: the operands must come memory first). */
static const uint8_t slot_forms[] = {
    0xbe, 0x14, 0x00, 0x00, 0x00, /* 0: mov esi, 20 */
    0x41, 0x21, 0xdc,             /* 5: and r12d, ebx */
    0x41, 0x85, 0xdd,             /* 8: test r13d, ebx */
    0x0f, 0x94, 0xc0,             /* b: setz al */
    0x41, 0x31, 0xc6,             /* e: xor r14d, eax */
    0x41, 0x85, 0xc9,             /* 11: test r9d, ecx */
    0x41, 0x83, 0xd4, 0x00,       /* 14: adc r12d, 0 */
    0x41, 0x01, 0xed,             /* 18: add r13d, ebp */
    0x44, 0x09, 0xcb,             /* 1b: or ebx, r9d */
    0x45, 0x39, 0xec,             /* 1e: cmp r12d, r13d */
    0x45, 0x19, 0xce,             /* 21: sbb r14d, r9d */
    0x44, 0x85, 0xe3,             /* 24: test ebx, r12d */
    0x45, 0x0f, 0x45, 0xee,       /* 27: cmovnz r13d, r14d */
    0x44, 0x29, 0xed,             /* 2b: sub ebp, r13d */
    0xff, 0xce,                   /* 2e: dec esi */
    0x75, 0xd3,                   /* 30: jnz 5 */
    0xf4,                         /* 32: hlt */
};

/* MOVZX/MOVSX from AH..BH (xz's CRC64 loop: movzx esi, dh), to pinned and unpinned registers,
 * 16 and 32 bits (no REX prefix with a high byte register), in a loop of 10 that varies them */
static const uint8_t hi_byte_forms[] = {
    0xbe, 0x0a, 0x00, 0x00, 0x00,       /* 0: mov esi, 10 */
    0x0f, 0xb6, 0xdc,                   /* 5: movzx ebx, ah */
    0x0f, 0xb6, 0xee,                   /* 8: movzx ebp, dh */
    0x66, 0x0f, 0xbe, 0xcf,             /* b: movsx cx, bh */
    0x0f, 0xbe, 0xc5,                   /* f: movsx eax, ch */
    0x0f, 0xb6, 0xff,                   /* 12: movzx edi, bh */
    0x66, 0x0f, 0xbe, 0xec,             /* 15: movsx bp, ah */
    0x05, 0x67, 0x45, 0x23, 0x01,       /* 19: add eax, 0x1234567 */
    0x48, 0xc1, 0xc2, 0x09,             /* 1e: rol rdx, 9 */
    0x81, 0xc1, 0x79, 0x35, 0x00, 0x00, /* 22: add ecx, 0x3579 */
    0xff, 0xce,                         /* 28: dec esi */
    0x75, 0xd9,                         /* 2a: jnz 5 */
    0xf4,                               /* 2c: hlt */
};

/* 32-bit operations on slots after 64-bit and after 32-bit writes in the same block: only after
 * a 32-bit write may one work on the slot's low dword in place (emit.hz); after a 64-bit write
 * (R12, R13, and R14 written 32 then 64 bits) it must zero-extend through a host register */
static const uint8_t hz_forms[] = {
    0xbe, 0x0a, 0x00, 0x00, 0x00,             /* 0: mov esi, 10 */
    0x49, 0x89, 0xc4,                         /* 5: mov r12, rax */
    0x41, 0x83, 0xc4, 0x05,                   /* 8: add r12d, 5 */
    0x49, 0xc7, 0xc5, 0xff, 0xff, 0xff, 0xff, /* c: mov r13, -1 */
    0x41, 0x21, 0xcd,                         /* 13: and r13d, ecx */
    0x89, 0xc3,                               /* 16: mov ebx, eax */
    0xc1, 0xc3, 0x03,                         /* 18: rol ebx, 3 */
    0x83, 0xf3, 0x55,                         /* 1b: xor ebx, 0x55 */
    0x48, 0x89, 0xd5,                         /* 1e: mov rbp, rdx */
    0xff, 0xc5,                               /* 21: inc ebp */
    0x41, 0x89, 0xd6,                         /* 23: mov r14d, edx */
    0x49, 0x89, 0xce,                         /* 26: mov r14, rcx */
    0x41, 0xc1, 0xee, 0x04,                   /* 29: shr r14d, 4 */
    0x48, 0xd1, 0xe0,                         /* 2d: shl rax, 1 */
    0x48, 0xc1, 0xc2, 0x07,                   /* 30: rol rdx, 7 */
    0xff, 0xce,                               /* 34: dec esi */
    0x75, 0xcd,                               /* 36: jnz 5 */
    0xf4,                                     /* 38: hlt */
};

/* MOVZX/MOVSX/MOVSXD into pinned registers (written in place: 16 bits merge, 32 zero-extend,
 * 64 extend) from pinned and unpinned sources */
static const uint8_t movx_forms[] = {
    0xbe, 0x0a, 0x00, 0x00, 0x00,             /* 0: mov esi, 10 */
    0x66, 0x0f, 0xb6, 0xc1,                   /* 5: movzx ax, cl */
    0x0f, 0xb6, 0xd3,                         /* 9: movzx edx, bl */
    0x48, 0x0f, 0xbf, 0xf9,                   /* c: movsx rdi, cx */
    0x66, 0x45, 0x0f, 0xbe, 0xc1,             /* 10: movsx r8w, r9b */
    0x48, 0x63, 0xcb,                         /* 15: movsxd rcx, ebx */
    0x4c, 0x0f, 0xb6, 0xdd,                   /* 18: movzx r11, bpl */
    0x48, 0x01, 0xd0,                         /* 1c: add rax, rdx */
    0x48, 0xc1, 0xc3, 0x0d,                   /* 1f: rol rbx, 13 */
    0x48, 0x01, 0xfd,                         /* 23: add rbp, rdi */
    0x49, 0x81, 0xc1, 0x67, 0x45, 0x23, 0x01, /* 26: add r9, 0x1234567 */
    0xff, 0xce,                               /* 2d: dec esi */
    0x75, 0xd4,                               /* 2f: jnz 5 */
    0xf4,                                     /* 31: hlt */
};

static void prep_slot_forms(struct bt_cpu *c)
{
    static const uint64_t v[16] = {0x1234567890abcdefull,
                                   0xf0f0f0f0ffff0000ull,
                                   3,
                                   0x8000000000000001ull,
                                   0,
                                   0xffffffff00000007ull,
                                   0,
                                   0,
                                   0,
                                   0xffffffff80000000ull,
                                   0,
                                   0,
                                   0xdeadbeefcafef00dull,
                                   0x7fffffffull,
                                   0x100000000ull,
                                   0};
    for (int r = 0; r < 16; r++)
        if (r != RSP && r != RSI && r != R15) c->s.gpr[r] = v[r];
}

static void test_slot_forms(void **st)
{
    static struct outcome a, b;
    prep = prep_slot_forms;
    both(slot_forms, sizeof(slot_forms), 100000, &a, &b); /* both() fails on a refused form */
    struct bt_jit_stats s0, s1;
    bt_jit_get_stats(T->c, &s0);
    both(hi_byte_forms, sizeof(hi_byte_forms), 100000, &a, &b);
    bt_jit_get_stats(T->c, &s1);
    assert_true(b.halted);
    assert_true(s1.insns_called - s0.insns_called <= 1); /* all native but the HLT */
    both(slot_forms, sizeof(slot_forms), 100000, &a, &b);
    both(movx_forms, sizeof(movx_forms), 100000, &a, &b);
    assert_true(b.halted);
    both(hz_forms, sizeof(hz_forms), 100000, &a, &b);
    assert_true(b.halted);
    for (int r = 0; r < 16; r++)
        if (r == RBX || r == RBP || r == R12 || r == R13 || r == R14)
            assert_int_equal(b.gpr[r] >> 32, 0);
    both(slot_forms, sizeof(slot_forms), 100000, &a, &b);
    prep = NULL;
    assert_true(b.halted);
    for (int r = 0; r < 16; r++) /* every 32-bit write zero-extended */
        if (r == RBX || r == RBP || r == R12 || r == R13 || r == R14)
            assert_int_equal(b.gpr[r] >> 32, 0);
}

/* Aligned SSE members 0x18 and 0x28 bytes above their group's lowest byte, with R15 8 bytes past
 * a 16-byte boundary: the operands are aligned and the group's start is not.  No #GP, the data
 * moved.  (An alignment test on the wrong address would only send the access to its slow path,
 * whose handler checks alignment itself: a cost, not a wrong result, so this cannot see it.)
 *   movdqu xmm1, [r15]; movdqa xmm2, [r15+0x18]; movaps [r15+0x28], xmm1; hlt */
static const uint8_t grp_sse_off[] = {0xf3, 0x41, 0x0f, 0x6f, 0x0f, 0x66, 0x41, 0x0f, 0x6f,
                                      0x57, 0x18, 0x41, 0x0f, 0x29, 0x4f, 0x28, 0xf4};

static void test_probe_groups_sse(void **st)
{
    static struct outcome a, b;
    prep = prime_grp_sse;
    /* all seven accesses; [r15, r15 + 0x50) across pages at 0xfc0 */
    grp_runs(grp_sse_prog, sizeof(grp_sse_prog), 7, T_DATA + 0xfc0, 0x20, 0x14, &b);
    grp_r15 = T_DATA + 0x100;
    both(grp_sse_prog, sizeof(grp_sse_prog), 1000, &a, &b); /* the moves, once more */
    assert_memory_equal(gp(T, T_DATA + 0x120, 16), gp(T, T_DATA + 0x100, 16), 16);
    grp_r15 = T_DATA + 0x108; /* the MOVAPS store misaligned: #GP at it, from its slow path */
    both(grp_sse_prog, sizeof(grp_sse_prog), 1000, &a, &b);
    assert_int_equal(t_handler_vector(T), X86_GP);
    assert_int_equal(get64(T, T->c->s.gpr[RSP] + 8), T_CODE0 + 0x14);
    struct bt_jit_stats s0, s1;
    bt_jit_get_stats(T->c, &s0);
    both(grp_sse_off, sizeof(grp_sse_off), 1000, &a, &b); /* R15 still 8 past a boundary */
    bt_jit_get_stats(T->c, &s1);
    prep = NULL;
    assert_true(b.halted); /* no #GP */
    assert_true(s1.grp_members - s0.grp_members >= 2);
    assert_memory_equal(gp(T, T_DATA + 0x108 + 0x28, 16), gp(T, T_DATA + 0x108, 16), 16);
}

static void test_probe_groups(void **st)
{
    static struct outcome b;
    prep = prime_grp;
    /* [r15, r15 + 24) across pages at 0xff0 */
    grp_runs(grp_prog, sizeof(grp_prog), 7, T_DATA + 0xff0, 0x10, 0xc, &b);
    prep = NULL;
    assert_int_equal(b.gpr[RCX], b.gpr[RBX]);
}

/* Group members reuse RSI (their group's host address) only while nothing since has changed
 * it: here an indexed load between two R15 members (its probe leaves a TLB addend in RSI) and
 * a stack member between two more (another group's address).  Distinct data under R15 and R14,
 * so a member that took the wrong RSI reads something else (or far outside guest memory). */
static const uint8_t grp_mix_prog[] = {
    0xbe, 0x03, 0x00, 0x00, 0x00, /* 0: mov esi, 3 */
    0x49, 0x8b, 0x07,             /* 5: mov rax, [r15] */
    0x4b, 0x8b, 0x0c, 0xee,       /* 8: mov rcx, [r14+r13*8] (no member) */
    0x49, 0x03, 0x47, 0x08,       /* c: add rax, [r15+8] */
    0x49, 0x8b, 0x57, 0x10,       /* 10: mov rdx, [r15+16] */
    0x50,                         /* 14: push rax */
    0x49, 0x8b, 0x5f, 0x18,       /* 15: mov rbx, [r15+24] */
    0x59,                         /* 19: pop rcx */
    0x48, 0x31, 0xd0,             /* 1a: xor rax, rdx */
    0x48, 0x01, 0xcb,             /* 1d: add rbx, rcx */
    0xff, 0xce,                   /* 20: dec esi */
    0x75, 0xe1,                   /* 22: jnz 5 */
    0xf4,                         /* 24: hlt */
};

static void prime_grp_mix(struct bt_cpu *c)
{
    c->s.gpr[R15] = T_DATA + 0x100;
    c->s.gpr[R14] = T_DATA + 0x800;
    c->s.gpr[R13] = 1;
    for (int k = 0; k < 0x40; k++) {
        *(uint8_t *)gp(T, T_DATA + 0x100 + k, 1) = (uint8_t)(k * 13 + 1);
        *(uint8_t *)gp(T, T_DATA + 0x800 + k, 1) = (uint8_t)(k * 29 + 7);
    }
    bt_read(c, T_DATA + 0x100, 8, BT_ACC_READ);
    bt_probe_write(c, c->s.gpr[RSP] - 16, 16, BT_ACC_WRITE);
}

static void test_probe_groups_rsi(void **st)
{
    static struct outcome a, b;
    struct bt_jit_stats s0, s1;
    prep = prime_grp_mix;
    bt_jit_get_stats(T->c, &s0);
    both(grp_mix_prog, sizeof(grp_mix_prog), 1000, &a, &b);
    bt_jit_get_stats(T->c, &s1);
    prep = NULL;
    assert_true(b.halted);
    assert_true(s1.grp_members >= s0.grp_members + 6); /* four under R15, PUSH and POP */
}

/* LOOKOUT_BT_PROFILE=1: every run of a translation is counted, so the guest instructions the
 * profile accounts for (runs times block sizes) are exactly what the vCPU retired in a loop that
 * never leaves its blocks early; and each block stands for more host instructions than guest ones
 * (a loop of 13 guest instructions cannot be translated to fewer than 13).  The profile is off
 * again afterwards. */
/* Direct branches across pages in the upper canonical half: 0xffff800000000000 (the lowest
 * canonical upper-half page; a 2 MiB page at 0xc00000).  At +0x100: dec ecx; jnz +0x1000 (the
 * next page: jmp back to +0x100), then a JMP or JZ back past the half's start, to
 * 0xffff7ffffffff000: not canonical, so #GP with RIP at that branch (the translator checks
 * the form only where a far exit could not chain). */
#define HIGH_VA 0xffff800000000000ull
static bool far_jz;

static void prep_far(struct bt_cpu *c)
{
    uint8_t lo[16] = {0xff, 0xc9, 0x0f, 0x85}; /* dec ecx; jnz rel32 */
    int32_t r = 0x1000 - 0x108;
    memcpy(lo + 4, &r, 4);
    size_t n = 8;
    if (far_jz) { /* jz rel32 */
        lo[n++] = 0x0f, lo[n++] = 0x84;
        r = -(0x10e + 0x1000);
    } else { /* jmp rel32 */
        lo[n++] = 0xe9;
        r = -(0x10d + 0x1000);
    }
    memcpy(lo + n, &r, 4);
    put_bytes(T, 0xc00100, lo, n + 4);
    uint8_t hi[5] = {0xe9}; /* jmp rel32 back to +0x100 */
    r = 0x100 - 0x1005;
    memcpy(hi + 1, &r, 4);
    put_bytes(T, 0xc01000, hi, sizeof(hi));
    put64(T, T_PML4 + 256 * 8, 0xa00000 | 3);
    put64(T, 0xa00000, 0xa01000 | 3);
    put64(T, 0xa01000, 0xc00000 | 0x83);
    c->s.gpr[RCX] = 100;
}

static void test_far_branch_noncanonical(void **st)
{
    /* mov rax, HIGH_VA + 0x100; jmp rax */
    static const uint8_t prog[] = {0x48, 0xb8, 0x00, 0x01, 0x00, 0x00,
                                   0x00, 0x80, 0xff, 0xff, 0xff, 0xe0};
    prep = prep_far;
    for (int k = 0; k < 2; k++) {
        far_jz = k;
        static struct outcome a, b;
        run_prog(false, prog, sizeof(prog), 100000, &a);
        struct bt_jit_stats s0, s;
        bt_jit_get_stats(T->c, &s0);
        run_prog(true, prog, sizeof(prog), 100000, &b);
        bt_jit_get_stats(T->c, &s);
        compare(&a, &b);
        assert_true(b.halted);
        assert_int_equal(b.rip, T_HAND + 16 * X86_GP + 1); /* after the #GP handler's HLT */
        assert_int_equal(b.gpr[RCX], 0);
        /* the frame: error code 0, then RIP = the branch at +0x108 */
        assert_int_equal(get64(T, b.gpr[RSP]), 0);
        assert_int_equal(get64(T, b.gpr[RSP] + 8), HIGH_VA + 0x108);
        assert_true(s.chains_cross - s0.chains_cross >= 2); /* the canonical ones chained */
    }
    prep = NULL;
}

/* A chained far exit in user code whose target page turned supervisor-only: the translations
 * (both user class) and the patched chain stay, and the kernel's own fetch refilled the TLB
 * entry (supervisor execute only), so only the far exit's permission test stands between the
 * user jump and the kernel page: #PF (present, user, fetch) at the target. */
static void test_far_exec_privilege(void **st)
{
    t_setup_long(T);
    use_jit(true);
    struct bt_cpu *c = T->c;
    /* at T_CODE3: dec ecx; jz +5 (the hlt); jmp 0x600000; hlt.  At 0x600000: jmp T_CODE3 */
    uint8_t u1[14] = {0xff, 0xc9, 0x0f, 0x84, 0x05, 0, 0, 0, 0xe9};
    int32_t r = (int32_t)(0x600000 - (T_CODE3 + 13));
    memcpy(u1 + 9, &r, 4);
    u1[13] = 0xf4;
    uint8_t u2[5] = {0xe9};
    r = (int32_t)(T_CODE3 - (0x600000 + 5));
    memcpy(u2 + 1, &r, 4);
    put_bytes(T, 0x600000, u2, sizeof(u2));
    put_bytes(T, 0x600800, (const uint8_t[]){0xf4}, 1); /* the kernel's HLT */
    put64(T, T_PD + 24, 0x600000 | 0x87);               /* user, writable, 2 MiB */
    struct bt_jit_stats s0, s1;
    bt_jit_get_stats(c, &s0);
    t_to_ring3(T, T_CODE3);
    c->s.gpr[RCX] = 50;
    t_run(T, u1, sizeof(u1), 100000);
    assert_int_equal(t_handler_vector(T), X86_GP); /* the user HLT */
    assert_int_equal(c->s.gpr[RCX], 0);
    bt_jit_get_stats(c, &s1);
    assert_true(s1.chains_cross - s0.chains_cross >= 2);
    /* supervisor-only now; the kernel (still at CPL 0 in the #GP handler) runs on that page */
    put64(T, T_PD + 24, 0x600000 | 0x83);
    bt_tlb_flush(c, true);
    c->s.rip = 0x600800;
    c->halted = false;
    c->exit_now = false;
    bt_exec(c, 100);
    assert_true(c->halted);
    assert_int_equal(c->s.rip, 0x600801);
    /* the same user loop again, nothing flushed */
    t_to_ring3(T, T_CODE3);
    c->s.gpr[RCX] = 50;
    c->halted = false;
    c->exit_now = false;
    bt_exec(c, 100000);
    assert_int_equal(t_handler_vector(T), X86_PF);
    assert_int_equal(get64(T, c->s.gpr[RSP]), 0x15); /* present, user, instruction fetch */
    assert_int_equal(get64(T, c->s.gpr[RSP] + 8), 0x600000);
    assert_int_equal(c->s.cr2, 0x600000);
    assert_int_equal(c->s.gpr[RCX], 49);
}

/* The encoding cache (a packed key per request) gives the bytes Zydis's encoder gives, for
 * requests that share slots, differ in one field (register, displacement, size, immediate,
 * scale or base), carry LOCK or cannot be encoded at all. */
static void test_encoding_cache(void **st)
{
    (void)st;
    assert_int_equal(bt_jit_enc_selftest(20000, 1), 0);
    assert_int_equal(bt_jit_enc_selftest(20000, 0x9e3779b97f4a7c15ull), 0);
}

static void test_profile(void **st)
{
    struct bt_cpu *c = T->c;
    bt_core_destroy(c);
    setenv("LOOKOUT_BT_PROFILE", "1", 1);
    setenv("LOOKOUT_BT_JIT", "1", 1);
    assert_int_equal(bt_core_init(c), 0);
    unsetenv("LOOKOUT_BT_PROFILE");
    uint8_t p[sizeof(loop_prog)];
    make_loop(p, 1000);
    static struct outcome o;
    run_prog(true, p, sizeof(p), 1000000, &o);
    assert_true(o.halted);
    struct bt_jit_stats s;
    bt_jit_get_stats(c, &s);
    assert_int_equal(s.prof_guest, o.icount); /* 2 + 1000 * 13 */
    assert_true(s.prof_runs >= 1000 && s.prof_runs <= 1003);
    assert_true(s.prof_host > 13 * 1000 && s.prof_host < 40 * o.icount);
    /* a flush moves the counts into the table; they stay */
    bt_jit_flush(c);
    struct bt_jit_stats s2;
    bt_jit_get_stats(c, &s2);
    assert_int_equal(s2.prof_guest, s.prof_guest);
    assert_int_equal(s2.prof_host, s.prof_host);
    bt_core_destroy(c); /* the report goes to the log */
    assert_int_equal(bt_core_init(c), 0);
    bt_jit_get_stats(c, &s);
    assert_int_equal(s.prof_runs, 0);
}

static void test_speed(void **st)
{
    uint8_t p[sizeof(loop_prog)];
    const char *it = getenv("LOOKOUT_JIT_BENCH_ITERS"); /* longer runs for measurements */
    make_loop(p, it ? (uint32_t)strtoul(it, NULL, 0) : 200000);
    static struct outcome o;
    double rate[2];
    for (int jit = 0; jit < 2; jit++) {
        double t0 = seconds();
        run_prog(jit, p, sizeof(p), 100000000, &o);
        double dt = seconds() - t0;
        assert_true(o.halted);
        rate[jit] = (double)o.icount / dt;
    }
    fprintf(stderr, "loop: interpreted %.1f M insns/s, translated %.1f M insns/s (x%.2f)\n",
            rate[0] / 1e6, rate[1] / 1e6, rate[1] / rate[0]);
}

int main(void)
{
    setenv("LOOKOUT_BT_GROUPS", "all", 0); /* probe groups in the CPL 0 blocks here too */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_encoding_cache), /* first: everything else depends on it */
        cmocka_unit_test(test_loop_same_state),
        cmocka_unit_test(test_chain_budget_slices),
        cmocka_unit_test(test_all_conditions),
        cmocka_unit_test(test_shift_imul),
        cmocka_unit_test(test_more_forms),
        cmocka_unit_test(test_inline_loads),
        cmocka_unit_test(test_fault_mid_block),
        cmocka_unit_test(test_inline_mem_forms),
        cmocka_unit_test(test_reg_forms),
        cmocka_unit_test(test_dead_flags),
        cmocka_unit_test(test_sse_moves),
        cmocka_unit_test(test_store_faults),
        cmocka_unit_test(test_deferred_flags),
        cmocka_unit_test(test_user_mode),
        cmocka_unit_test(test_cpl_classes),
        cmocka_unit_test(test_crossing_remap),
        cmocka_unit_test(test_dirty_log),
        cmocka_unit_test(test_tlb_change),
        cmocka_unit_test(test_crossing_smc),
        cmocka_unit_test(test_self_modifying),
        cmocka_unit_test(test_chain_smc),
        cmocka_unit_test(test_chain_budget_kick),
        cmocka_unit_test(test_indirect_calls),
        cmocka_unit_test(test_lookup_remap),
        cmocka_unit_test(test_far_branch_noncanonical),
        cmocka_unit_test(test_far_exec_privilege),
        cmocka_unit_test(test_code32),
        cmocka_unit_test(test_lookup_smc),
        cmocka_unit_test(test_cr3_switch),
        cmocka_unit_test(test_cr3_switch_global),
        cmocka_unit_test(test_lookup_mode),
        cmocka_unit_test(test_rep_mid_block),
        cmocka_unit_test(test_cfi),
        cmocka_unit_test(test_wx),
        cmocka_unit_test(test_switch),
        cmocka_unit_test(test_probe_groups),
        cmocka_unit_test(test_probe_groups_rsi),
        cmocka_unit_test(test_probe_groups_sse),
        cmocka_unit_test(test_slot_forms),
        cmocka_unit_test(test_profile),
        cmocka_unit_test(test_speed),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
