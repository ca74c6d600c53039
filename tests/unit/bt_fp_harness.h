/* Test harness shared by test_bt_sse.c and test_bt_fpu.c: a software CPU in 64-bit long mode over
 * 16 MiB of guest RAM (identity-mapped with 2 MiB pages), a one-instruction runner that goes
 * through the real decoder and dispatch table, and a native runner that executes the very same
 * instruction bytes on the host CPU from the same register image, so the two can be compared.
 *
 * Until the soft MMU and event code land (branch btsys), weak stand-ins below give the software CPU
 * flat, identity-translated memory and a bt_raise() that records the vector; the real strong
 * definitions replace them automatically, and the tests keep working because the guest's page
 * tables are identity maps.
 *
 * Trust: test-only code; the native runner executes only byte strings from the test tables. */
#pragma once
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <cmocka.h>

#include "cpu/bt/bt.h"
#include "cpu/bt/fpu.h"
#include "mem/guest.h"
#include "util/log.h"

#define H_DATA_GPA 0x100000ull /* guest data area (rbx, rdi, rsi point here) */
#define H_DATA_LEN 4096

/* ---- weak stand-ins (replaced by src/cpu/bt/mmu.c, seg.c, event.c when linked) ------------- */

#define H_WEAK __attribute__((weak))

H_WEAK _Noreturn void bt_raise(struct bt_cpu *c, int vector, uint32_t errcode)
{
    c->pending_vector = vector;
    c->pending_err = errcode;
    longjmp(c->fault_jmp, 1);
}
H_WEAK _Noreturn void bt_raise_pf(struct bt_cpu *c, uint64_t lin, uint32_t errcode)
{
    c->s.cr2 = lin;
    bt_raise(c, X86_PF, errcode);
}
H_WEAK void bt_update_mode(struct bt_cpu *c)
{
    c->cpl = c->s.seg[SEG_CS].dpl;
    c->long_mode = (c->s.efer & X86_EFER_LMA) != 0;
    c->paging = (c->s.cr0 & X86_CR0_PG) != 0;
    c->code_bits = (c->long_mode && c->s.seg[SEG_CS].l) ? 64 : c->s.seg[SEG_CS].db ? 32 : 16;
    c->stack_bits = c->long_mode && c->code_bits == 64 ? 64 : c->s.seg[SEG_SS].db ? 32 : 16;
}
H_WEAK uint64_t bt_seg_linear(struct bt_cpu *c, int seg, uint64_t off, unsigned size, int acc)
{
    uint64_t lin = off + ((seg == SEG_FS || seg == SEG_GS) ? c->s.seg[seg].base : 0);
    if (!x86_is_canonical(lin)) bt_raise(c, seg == SEG_SS ? X86_SS : X86_GP, 0);
    return lin;
}
static uint8_t *h_fake_ptr(struct bt_cpu *c, uint64_t lin, size_t n, int acc)
{
    uint8_t *p = guest_ptr(&c->vm->mem, lin, n ? n : 1);
    if (!p) bt_raise_pf(c, lin, (acc & BT_ACC_WRITE) ? 2 : 0);
    return p;
}
H_WEAK uint64_t bt_read(struct bt_cpu *c, uint64_t lin, unsigned size, int acc)
{
    uint64_t v = 0;
    memcpy(&v, h_fake_ptr(c, lin, size, acc), size);
    return v;
}
H_WEAK void bt_write(struct bt_cpu *c, uint64_t lin, unsigned size, uint64_t v, int acc)
{
    memcpy(h_fake_ptr(c, lin, size, acc), &v, size);
}
H_WEAK void bt_read_buf(struct bt_cpu *c, uint64_t lin, void *buf, size_t n, int acc)
{
    memcpy(buf, h_fake_ptr(c, lin, n, acc), n);
}
H_WEAK void bt_write_buf(struct bt_cpu *c, uint64_t lin, const void *buf, size_t n, int acc)
{
    memcpy(h_fake_ptr(c, lin, n, acc), buf, n);
}
H_WEAK void bt_probe_write(struct bt_cpu *c, uint64_t lin, unsigned size, int acc)
{
    h_fake_ptr(c, lin, size, acc);
}
H_WEAK void *bt_host_ptr(struct bt_cpu *c, uint64_t lin, unsigned size, int acc)
{
    return h_fake_ptr(c, lin, size, acc);
}

/* ---- the guest CPU -------------------------------------------------------------------------- */

static struct vm h_vm;
static struct bt_cpu *h_c;

static void h_long_mode(struct bt_cpu *c)
{
    /* identity map of the first 16 MiB: PML4 at 0x1000, PDPT at 0x2000, PD at 0x3000 */
    uint64_t e;
    e = 0x2000 | 3;
    guest_write(&h_vm.mem, 0x1000, &e, 8);
    e = 0x3000 | 3;
    guest_write(&h_vm.mem, 0x2000, &e, 8);
    for (uint64_t k = 0; k < 8; k++) {
        e = (k << 21) | 0x83;
        guest_write(&h_vm.mem, 0x3000 + 8 * k, &e, 8);
    }
    struct x86_state *s = &c->s;
    s->cr0 = X86_CR0_PE | X86_CR0_MP | X86_CR0_ET | X86_CR0_NE | X86_CR0_WP | X86_CR0_PG;
    s->cr3 = 0x1000;
    s->cr4 = X86_CR4_PAE | X86_CR4_OSFXSR | X86_CR4_OSXMMEXCPT;
    s->efer = X86_EFER_LME | X86_EFER_LMA | X86_EFER_SCE;
    for (int k = 0; k < SEG_COUNT; k++) {
        s->seg[k] = (struct x86_seg){
            .limit = 0xffffffff, .sel = 0x10, .type = 3, .s = 1, .present = 1, .db = 1, .g = 1};
    }
    s->seg[SEG_CS] = (struct x86_seg){
        .limit = 0xffffffff, .sel = 0x08, .type = 0xb, .s = 1, .present = 1, .l = 1, .g = 1};
    s->seg[SEG_LDTR] = (struct x86_seg){.unusable = 1};
    s->seg[SEG_TR] = (struct x86_seg){.limit = 0x67, .sel = 0x18, .type = 0xb, .present = 1};
    s->rflags = X86_FLAG_FIXED;
    s->rip = 0x200000;
    bt_update_mode(c);
    bt_tlb_flush(c, true);
}

static int h_setup(void **state)
{
    memset(&h_vm, 0, sizeof(h_vm));
    if (guest_mem_init(&h_vm.mem, 16ull << 20) < 0) return -1;
    h_vm.mem_size = 16ull << 20;
    h_vm.ncpus = 1;
    h_c = calloc(1, sizeof(*h_c));
    if (!h_c) return -1;
    h_c->vm = &h_vm;
    bt_fpu_reset(h_c);
    h_long_mode(h_c);
    if (bt_mmu_init(h_c) < 0) return -1;
    return 0;
}

static int h_teardown(void **state)
{
    bt_mmu_destroy(h_c);
    bt_core_destroy(h_c);
    free(h_c);
    guest_mem_destroy(&h_vm.mem);
    return 0;
}

static size_t h_hex(const char *hex, uint8_t *out, size_t max)
{
    size_t n = 0;
    while (hex[0] && hex[1] && n < max) {
        unsigned v;
        if (sscanf(hex, "%2x", &v) != 1) break;
        out[n++] = (uint8_t)v;
        hex += 2;
    }
    return n;
}

/* Decodes `hex` as 64-bit code and runs it once on the software CPU, as the interpreter loop does.
 * Returns -1, or the vector of the exception the instruction raised. */
static int h_run(struct bt_cpu *c, const char *hex)
{
    uint8_t b[16];
    size_t n = h_hex(hex, b, sizeof(b));
    struct bt_insn in;
    if (bt_decode_bytes(b, n, 64, &in) < 0) return X86_UD; /* undecodable: the loop raises #UD */
    c->insn_rip = c->s.rip;
    c->next_rip = c->s.rip + in.len;
    c->s.rip = c->next_rip;
    c->pending_vector = -1;
    if (setjmp(c->fault_jmp)) {
        c->s.rip = c->insn_rip;
        return c->pending_vector;
    }
    in.fn(c, &in);
    return -1;
}

/* ---- the native runner ---------------------------------------------------------------------- */

struct h_native {
    uint64_t gpr[16];
    uint64_t rflags;
    uint64_t pad;
    struct x86_fxsave fx; /* offset 144 */
    struct x86_fxsave host;
} __attribute__((aligned(16)));
_Static_assert(offsetof(struct h_native, fx) == 144, "native context layout");
_Static_assert(offsetof(struct h_native, host) == 656, "native context layout");

void h_native_exec(struct h_native *ctx, void *code);
__asm__(".text\n"
        ".type h_native_exec, @function\n"
        "h_native_exec:\n"
        "  push %rbx\n  push %rbp\n  push %r12\n  push %r13\n  push %r14\n  push %r15\n"
        "  push %rdi\n"
        "  mov %rsi, %r15\n"
        "  fxsave64 656(%rdi)\n"
        "  fxrstor64 144(%rdi)\n"
        "  pushq 128(%rdi)\n  popfq\n"
        "  mov 0(%rdi), %rax\n  mov 8(%rdi), %rcx\n  mov 16(%rdi), %rdx\n  mov 24(%rdi), %rbx\n"
        "  mov 40(%rdi), %rbp\n  mov 48(%rdi), %rsi\n  mov 64(%rdi), %r8\n  mov 72(%rdi), %r9\n"
        "  mov 80(%rdi), %r10\n  mov 88(%rdi), %r11\n  mov 96(%rdi), %r12\n  mov 104(%rdi), %r13\n"
        "  mov 112(%rdi), %r14\n  mov 56(%rdi), %rdi\n"
        "  call *%r15\n"
        "  push %rdi\n"
        "  mov 8(%rsp), %rdi\n"
        "  mov %rax, 0(%rdi)\n  mov %rcx, 8(%rdi)\n  mov %rdx, 16(%rdi)\n  mov %rbx, 24(%rdi)\n"
        "  mov %rbp, 40(%rdi)\n  mov %rsi, 48(%rdi)\n  mov %r8, 64(%rdi)\n  mov %r9, 72(%rdi)\n"
        "  mov %r10, 80(%rdi)\n  mov %r11, 88(%rdi)\n  mov %r12, 96(%rdi)\n  mov %r13, 104(%rdi)\n"
        "  mov %r14, 112(%rdi)\n"
        "  pop %rax\n  mov %rax, 56(%rdi)\n"
        "  pushfq\n  popq 128(%rdi)\n"
        "  fxsave64 144(%rdi)\n"
        "  fxrstor64 656(%rdi)\n"
        "  pop %rdi\n"
        "  pop %r15\n  pop %r14\n  pop %r13\n  pop %r12\n  pop %rbp\n  pop %rbx\n"
        "  cld\n"
        "  ret\n"
        ".size h_native_exec, .-h_native_exec\n");

static uint8_t *h_code;

/* Runs the instruction natively: registers and FXSAVE image from *ctx, results back into *ctx. */
static void h_native(struct h_native *ctx, const char *hex)
{
    if (!h_code) {
        h_code = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        assert_true(h_code != MAP_FAILED);
    }
    assert_int_equal(mprotect(h_code, 4096, PROT_READ | PROT_WRITE), 0);
    size_t n = h_hex(hex, h_code, 15);
    h_code[n] = 0xc3; /* ret */
    assert_int_equal(mprotect(h_code, 4096, PROT_READ | PROT_EXEC), 0);
    h_native_exec(ctx, h_code);
}

/* ---- random operands ------------------------------------------------------------------------ */

static uint64_t h_seed = 0x9e3779b97f4a7c15ull;
static uint64_t h_rand(void)
{
    h_seed ^= h_seed << 13;
    h_seed ^= h_seed >> 7;
    h_seed ^= h_seed << 17;
    return h_seed;
}

static uint32_t h_rand_f32(void)
{
    static const uint32_t special[] = {0,          0x80000000, 0x7f800000, 0xff800000,
                                       0x7fc00000, 0xffc00000, 0x7fa00000, 0x00000001,
                                       0x807fffff, 0x3f800000, 0xbf800000, 0x4f000000,
                                       0xcf000000, 0x7f7fffff, 0x40490fdb, 0x3effffff};
    switch (h_rand() % 8) {
    case 0: return (uint32_t)h_rand();
    case 1: return special[h_rand() % 16];
    case 2: {
        float f = (float)(int32_t)(h_rand() % 2001 - 1000);
        uint32_t u;
        memcpy(&u, &f, 4);
        return u;
    }
    default: return (uint32_t)((h_rand() & 0x807fffff) | ((0x70 + h_rand() % 32) << 23));
    }
}

static uint64_t h_rand_f64(void)
{
    static const uint64_t special[] = {0,
                                       0x8000000000000000ull,
                                       0x7ff0000000000000ull,
                                       0xfff0000000000000ull,
                                       0x7ff8000000000000ull,
                                       0x7ff4000000000000ull,
                                       1,
                                       0x3ff0000000000000ull,
                                       0x41e0000000000000ull,
                                       0xc3e0000000000000ull,
                                       0x7fefffffffffffffull,
                                       0x400921fb54442d18ull};
    switch (h_rand() % 8) {
    case 0: return h_rand();
    case 1: return special[h_rand() % 12];
    case 2: {
        double d = (double)(int64_t)(h_rand() % 200001 - 100000);
        uint64_t u;
        memcpy(&u, &d, 8);
        return u;
    }
    default: return (h_rand() & 0x800fffffffffffffull) | ((0x3e0 + h_rand() % 64) << 52);
    }
}

static void h_rand_xmm(uint8_t x[16])
{
    for (int h = 0; h < 2; h++) {
        if (h_rand() & 1) {
            uint64_t v = h_rand_f64();
            memcpy(x + 8 * h, &v, 8);
        } else {
            uint32_t a = h_rand_f32(), b = h_rand_f32();
            memcpy(x + 8 * h, &a, 4);
            memcpy(x + 8 * h + 4, &b, 4);
        }
    }
    if (h_rand() % 8 == 0) /* integer-looking data */
        for (int k = 0; k < 16; k++)
            x[k] = (uint8_t)(h_rand() % 4 == 0 ? 0 : h_rand());
}

static void h_rand_st(uint8_t r[16])
{
    memset(r, 0, 16);
    uint64_t m = h_rand();
    uint16_t e;
    switch (h_rand() % 10) {
    case 0: e = 0x7fff; break; /* inf/nan */
    case 1:
        e = 0;
        m = (h_rand() & 1) ? 0 : m >> 1;
        break; /* zero / denormal */
    case 2:
        e = (uint16_t)(0x3fff + h_rand() % 64);
        m &= ~(1ull << 63);
        break; /* unnormal */
    default: e = (uint16_t)(0x3fff - 40 + h_rand() % 80); m |= 1ull << 63;
    }
    if (h_rand() & 1) e |= 0x8000;
    memcpy(r, &m, 8);
    memcpy(r + 8, &e, 2);
}

/* A random, all-exceptions-masked FP/SSE state (so the native run can never trap). */
static void h_rand_fx(struct x86_fxsave *fx)
{
    memset(fx, 0, sizeof(*fx));
    fx->fcw = (uint16_t)(0x007f | (h_rand() % 4) << 8 | (h_rand() % 4) << 10);
    fx->fsw = (uint16_t)((h_rand() % 8) << 11 | (h_rand() & (FSW_C0 | FSW_C1 | FSW_C2 | FSW_C3)));
    if (h_rand() % 4 == 0) fx->fsw |= (uint16_t)(h_rand() & 0x3f);
    fx->ftw = (uint8_t)(h_rand() % 3 == 0 ? 0xff : h_rand());
    fx->mxcsr = (uint32_t)(0x1f80 | (h_rand() % 4) << 13 | (h_rand() % 4 == 0 ? 0x8040 : 0));
    fx->mxcsr_mask = 0xffff;
    for (int k = 0; k < 8; k++)
        h_rand_st(fx->st[k]);
    for (int k = 0; k < 16; k++)
        h_rand_xmm(fx->xmm[k]);
}

static void h_rand_mem(uint8_t *m, size_t n)
{
    for (size_t k = 0; k + 16 <= n; k += 16)
        h_rand_xmm(m + k);
}

/* Compares the architectural parts of two FXSAVE images (not FIP/FDP/FOP: host addresses). */
static int h_fx_diff(const struct x86_fxsave *a, const struct x86_fxsave *b, char *why, size_t wn,
                     bool x87, bool sse)
{
    if (x87) {
        if (a->fcw != b->fcw) return snprintf(why, wn, "fcw %#x vs %#x", a->fcw, b->fcw);
        if (a->fsw != b->fsw) return snprintf(why, wn, "fsw %#x vs %#x", a->fsw, b->fsw);
        if (a->ftw != b->ftw) return snprintf(why, wn, "ftw %#x vs %#x", a->ftw, b->ftw);
        for (int k = 0; k < 8; k++)
            if (memcmp(a->st[k], b->st[k], 10)) return snprintf(why, wn, "st slot %d differs", k);
    }
    if (sse) {
        if (a->mxcsr != b->mxcsr) return snprintf(why, wn, "mxcsr %#x vs %#x", a->mxcsr, b->mxcsr);
        for (int k = 0; k < 16; k++)
            if (memcmp(a->xmm[k], b->xmm[k], 16)) return snprintf(why, wn, "xmm%d differs", k);
    }
    return 0;
}

/* The differential check: the same random state on the software CPU and natively, `iters` times
 * per instruction; returns the number of mismatches (each printed). */
static int h_diff_cases(const struct h_case *cases, size_t ncases, int iters)
{
    static uint8_t host_mem[H_DATA_LEN] __attribute__((aligned(4096)));
    int bad = 0;
    for (size_t k = 0; k < ncases; k++) {
        for (int it = 0; it < iters; it++) {
            struct h_native nat;
            struct x86_fxsave fx;
            uint8_t mem[256];
            memset(&nat, 0, sizeof(nat));
            h_rand_fx(&fx);
            h_rand_mem(mem, sizeof(mem));
            uint32_t mx = (uint32_t)(0x1f80 | (h_rand() % 4) << 13);
            memcpy(mem + 32, &mx, 4); /* LDMXCSR [rbx+32] must be valid */
            uint64_t gpr[16];
            for (int r = 0; r < 16; r++)
                gpr[r] = (h_rand() & 1) ? h_rand() : (uint64_t)(int64_t)(int16_t)h_rand();
            uint64_t flags =
                X86_FLAG_FIXED | (h_rand() & (X86_FLAG_CF | X86_FLAG_PF | X86_FLAG_ZF |
                                              X86_FLAG_SF | X86_FLAG_OF | X86_FLAG_AF));

            /* software CPU */
            struct bt_cpu *c = h_c;
            c->s.fx = fx;
            memcpy(c->s.gpr, gpr, sizeof(gpr));
            c->s.gpr[RBX] = c->s.gpr[RDI] = c->s.gpr[RSI] = H_DATA_GPA;
            c->s.gpr[RSP] = 0x80000;
            c->s.rflags = flags;
            c->s.rip = 0x200000;
            guest_write(&h_vm.mem, H_DATA_GPA, mem, sizeof(mem));
            int vec = h_run(c, cases[k].hex);

            /* native */
            memcpy(nat.gpr, gpr, sizeof(gpr));
            nat.gpr[RBX] = nat.gpr[RDI] = nat.gpr[RSI] = (uint64_t)(uintptr_t)host_mem;
            nat.rflags = flags;
            nat.fx = fx;
            memcpy(host_mem, mem, sizeof(mem));
            h_native(&nat, cases[k].hex);

            char why[128] = "";
            uint8_t gmem[256];
            guest_read(&h_vm.mem, H_DATA_GPA, gmem, sizeof(gmem));
            if (vec >= 0)
                snprintf(why, sizeof(why), "raised vector %d", vec);
            else if (h_fx_diff(&c->s.fx, &nat.fx, why, sizeof(why), true, true))
                ;
            else if (memcmp(gmem, host_mem, sizeof(gmem)))
                snprintf(why, sizeof(why), "memory differs");
            else if ((c->s.rflags ^ nat.rflags) & BT_ARITH_FLAGS)
                snprintf(why, sizeof(why), "rflags %#llx vs %#llx", (unsigned long long)c->s.rflags,
                         (unsigned long long)nat.rflags);
            else if (c->s.rip != 0x200000 + h_hex(cases[k].hex, (uint8_t[16]){0}, 15))
                snprintf(why, sizeof(why), "rip not advanced");
            else {
                for (int r = 0; r < 16; r++) {
                    if (r == RBX || r == RDI || r == RSI || r == RSP) continue;
                    if (c->s.gpr[r] != nat.gpr[r]) {
                        snprintf(why, sizeof(why), "gpr %d %#llx vs %#llx", r,
                                 (unsigned long long)c->s.gpr[r], (unsigned long long)nat.gpr[r]);
                        break;
                    }
                }
            }
            if (why[0]) {
                if (bad < 40)
                    print_message("MISMATCH %s (%s) iteration %d: %s\n", cases[k].text,
                                  cases[k].hex, it, why);
                bad++;
                break;
            }
        }
    }
    return bad;
}
