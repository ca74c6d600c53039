/* Test environment for the software CPU's system half: a VM with 16 MiB of RAM and empty buses,
 * one bt_cpu, and builders for page tables, GDT/IDT/TSS in 64-bit, 32-bit and real mode.
 *
 * Layout (guest-physical, identity-mapped in the paged modes):
 *   0x1000 PML4 / 32-bit page directory, 0x2000 PDPT, 0x3000 PD, 0x4000 PT (tests' own)
 *   0x5000 GDT, 0x5800 TSS (I/O bitmap at 0x5800+0x88), 0x6000 IDT,
 *   0x7000 handlers: vector v at 0x7000 + 16*v is HLT (so RIP after the stop names the vector)
 *   0x9000 ring-0 stack top (TSS RSP0), 0xa000 IST1 stack top, 0x230000 ring-3 stack top
 *   0x10000 code under test (ring 0), 0x220000 code under test (ring 3)
 * Everything below 4 MiB is mapped with 2 MiB pages, writable; the first 2 MiB (system
 * structures) supervisor-only, the second user-accessible; except where
 * a test edits entries.
 *
 * Trust: test code only. */
#pragma once
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cpu/bt/bt.h"
#include "cpu/bt/jit.h"
#include "cpu/bt/btvm.h"
#include "mem/guest.h"
#include "util/log.h"

#define T_PML4   0x1000ull
#define T_PDPT   0x2000ull
#define T_PD     0x3000ull
#define T_PT     0x4000ull
#define T_GDT    0x5000ull
#define T_TSS    0x5800ull
#define T_IDT    0x6000ull
#define T_HAND   0x7000ull
#define T_STACK0 0x9000ull
#define T_IST1   0xa000ull
#define T_STACK3 0x230000ull
#define T_CODE0  0x10000ull
#define T_CODE3  0x220000ull

#define SEL_KCODE   0x08
#define SEL_KDATA   0x10
#define SEL_UDATA   0x1b
#define SEL_UCODE   0x23
#define SEL_TSS     0x28
#define SEL_KCODE32 0x38
#define SEL_UCODE32 0x43 /* 0x40 | 3 */

struct tenv {
    struct vm vm;
    struct bt_cpu *c;
};

static inline void *gp(struct tenv *t, uint64_t gpa, uint64_t len)
{
    void *p = guest_ptr(&t->vm.mem, gpa, len);
    assert_non_null(p);
    return p;
}
static inline void put64(struct tenv *t, uint64_t gpa, uint64_t v)
{
    memcpy(gp(t, gpa, 8), &v, 8);
}
static inline uint64_t get64(struct tenv *t, uint64_t gpa)
{
    uint64_t v;
    memcpy(&v, gp(t, gpa, 8), 8);
    return v;
}
static inline void put32(struct tenv *t, uint64_t gpa, uint32_t v)
{
    memcpy(gp(t, gpa, 4), &v, 4);
}
static inline uint32_t get32(struct tenv *t, uint64_t gpa)
{
    uint32_t v;
    memcpy(&v, gp(t, gpa, 4), 4);
    return v;
}
static inline void put_bytes(struct tenv *t, uint64_t gpa, const void *b, size_t n)
{
    memcpy(gp(t, gpa, n), b, n);
}

/* Runs `stmt`; returns -1 if it completed, else the vector bt_raise() recorded. */
#define T_TRY(c, stmt)                                                                             \
    ({                                                                                             \
        volatile int _v = -1;                                                                      \
        if (setjmp((c)->fault_jmp) == 0) {                                                         \
            stmt;                                                                                  \
        } else {                                                                                   \
            _v = (c)->pending_vector;                                                              \
        }                                                                                          \
        _v;                                                                                        \
    })

static inline struct tenv *tenv_new(bool with_backend)
{
    struct tenv *t = calloc(1, sizeof(*t));
    assert_non_null(t);
    assert_int_equal(guest_mem_init(&t->vm.mem, 16ull << 20), 0);
    bus_init(&t->vm.pio, "pio");
    bus_init(&t->vm.mmio, "mmio");
    t->vm.ncpus = 1;
    t->vm.tsc_khz = 1000000;
    pthread_mutex_init(&t->vm.lock, NULL);
    pthread_cond_init(&t->vm.cond, NULL);
    if (with_backend) {
        t->vm.backend = &cpu_backend_bt;
        assert_int_equal(cpu_backend_bt.vm_create(&t->vm), 0);
    }
    t->c = calloc(1, sizeof(*t->c));
    assert_non_null(t->c);
    t->c->vm = &t->vm;
    assert_int_equal(bt_core_init(t->c), 0);
    bt_jit_set_hot_runs(t->c, 0); /* translator on: translate on first use (see btenv.h) */
    assert_int_equal(bt_mmu_init(t->c), 0);
    if (with_backend) {
        struct bt_vm *bv = bt_vm_of(&t->vm);
        bv->cpu[0] = t->c;
    }
    return t;
}

static inline void tenv_free(struct tenv *t)
{
    if (t->vm.backend) {
        struct bt_vm *bv = bt_vm_of(&t->vm);
        if (bv) bv->cpu[0] = NULL;
    }
    bt_mmu_destroy(t->c);
    bt_core_destroy(t->c);
    free(t->c);
    if (t->vm.backend) cpu_backend_bt.vm_destroy(&t->vm);
    guest_mem_destroy(&t->vm.mem);
    free(t);
}

static inline uint64_t t_gate64(uint64_t off, uint16_t sel, unsigned type, unsigned dpl,
                                unsigned ist, uint64_t *hi)
{
    *hi = off >> 32;
    return (off & 0xffff) | ((uint64_t)sel << 16) | ((uint64_t)ist << 32) |
           ((uint64_t)(0x80 | (dpl << 5) | type) << 40) | ((off >> 16 & 0xffff) << 48);
}

static inline void t_set_gate64(struct tenv *t, int v, uint64_t off, unsigned type, unsigned dpl,
                                unsigned ist, bool present)
{
    uint64_t hi, lo = t_gate64(off, SEL_KCODE, type, dpl, ist, &hi);
    if (!present) lo &= ~(1ull << 47);
    put64(t, T_IDT + 16 * (uint64_t)v, lo);
    put64(t, T_IDT + 16 * (uint64_t)v + 8, hi);
}

static inline void t_seg(struct x86_seg *s, uint16_t sel, uint8_t type, unsigned dpl, bool l,
                         bool db)
{
    memset(s, 0, sizeof(*s));
    s->sel = sel;
    s->limit = 0xffffffff;
    s->type = type;
    s->s = 1;
    s->dpl = (uint8_t)dpl;
    s->present = 1;
    s->l = l;
    s->db = db;
    s->g = 1;
}

/* 64-bit long mode at CPL 0 with paging, GDT, IDT (all HLT handlers, interrupt gates DPL 0 except
 * 3/4/0x80 DPL 3), TSS (RSP0, IST1, I/O bitmap all ones). */
static inline void t_setup_long(struct tenv *t)
{
    struct bt_cpu *c = t->c;
    memset(gp(t, 0, 0x100000), 0, 0x100000);
    put64(t, T_PML4, T_PDPT | 7);
    put64(t, T_PDPT, T_PD | 7);
    put64(t, T_PD + 0, 0x000000 | 0x83); /* system structures: supervisor only */
    put64(t, T_PD + 8, 0x200000 | 0x87);
    /* GDT */
    put64(t, T_GDT + 0x08, 0x00af9a000000ffffull); /* kernel code 64 */
    put64(t, T_GDT + 0x10, 0x00cf92000000ffffull); /* kernel data */
    put64(t, T_GDT + 0x18, 0x00cff2000000ffffull); /* user data */
    put64(t, T_GDT + 0x20, 0x00affa000000ffffull); /* user code 64 */
    uint64_t tss_lim = 0x88 + 8192 / 8; /* I/O bitmap for ports 0..8191, then the 0xff byte */
    put64(t, T_GDT + 0x28,
          (tss_lim & 0xffff) | ((T_TSS & 0xffffff) << 16) | (0x89ull << 40) |
              ((tss_lim >> 16 & 0xf) << 48) | ((T_TSS >> 24 & 0xff) << 56));
    put64(t, T_GDT + 0x30, 0);
    put64(t, T_GDT + 0x38, 0x00cf9a000000ffffull); /* kernel code 32 */
    put64(t, T_GDT + 0x40, 0x00cffa000000ffffull); /* user code 32 */
    /* TSS */
    put64(t, T_TSS + 4, T_STACK0);
    put64(t, T_TSS + 36, T_IST1);
    uint16_t iomap = 0x88;
    memcpy(gp(t, T_TSS + 0x66, 2), &iomap, 2);
    memset(gp(t, T_TSS + 0x88, 8192 / 8 + 1), 0xff, 8192 / 8 + 1);
    /* IDT and handlers */
    for (int v = 0; v < 256; v++) {
        *(uint8_t *)gp(t, T_HAND + 16 * (uint64_t)v, 1) = 0xf4; /* hlt */
        unsigned dpl = (v == 3 || v == 4 || v == 0x80) ? 3 : 0;
        t_set_gate64(t, v, T_HAND + 16 * (uint64_t)v, 0xe, dpl, 0, true);
    }
    memset(&c->s, 0, sizeof(c->s));
    c->s.cr0 = X86_CR0_PE | X86_CR0_PG | X86_CR0_WP | X86_CR0_ET | X86_CR0_NE;
    c->s.cr3 = T_PML4;
    c->s.cr4 = X86_CR4_PAE | X86_CR4_OSFXSR;
    c->s.efer = X86_EFER_LME | X86_EFER_LMA | X86_EFER_NXE | X86_EFER_SCE;
    c->s.rflags = X86_FLAG_FIXED;
    t_seg(&c->s.seg[SEG_CS], SEL_KCODE, 0xb, 0, true, false);
    for (int s = SEG_ES; s <= SEG_GS; s++)
        if (s != SEG_CS) t_seg(&c->s.seg[s], SEL_KDATA, 0x3, 0, false, true);
    c->s.seg[SEG_TR] = (struct x86_seg){
        .sel = SEL_TSS, .base = T_TSS, .limit = (uint32_t)tss_lim, .type = 0xb, .present = 1};
    c->s.seg[SEG_LDTR] = (struct x86_seg){.unusable = 1, .type = 2};
    c->s.gdtr = (struct x86_dtable){T_GDT, 0x4f};
    c->s.idtr = (struct x86_dtable){T_IDT, 0xfff};
    c->s.gpr[RSP] = T_STACK0 - 0x100;
    c->s.rip = T_CODE0;
    c->s.star = ((uint64_t)0x10 << 48) | ((uint64_t)SEL_KCODE << 32);
    c->s.lstar = T_HAND + 16 * 0xf0; /* SYSCALL lands on the "vector 0xf0" HLT */
    c->s.fx.mxcsr = 0x1f80;
    c->s.fx.fcw = 0x37f;
    c->s.pat = 0x0007040600070406ull;
    bt_update_mode(c);
    bt_tlb_flush(c, true);
    bt_cache_flush(c);
    c->halted = false;
    c->shutdown = false;
    c->exit_now = false;
}

/* Drops to ring 3 at `rip` with the ring-3 stack. */
static inline void t_to_ring3(struct tenv *t, uint64_t rip)
{
    struct bt_cpu *c = t->c;
    t_seg(&c->s.seg[SEG_CS], SEL_UCODE, 0xb, 3, true, false);
    t_seg(&c->s.seg[SEG_SS], SEL_UDATA, 0x3, 3, false, true);
    c->s.gpr[RSP] = T_STACK3 - 0x100;
    c->s.rip = rip;
    bt_update_mode(c);
}

/* Vector whose HLT handler the CPU stopped in, or -1. */
static inline int t_handler_vector(struct tenv *t)
{
    uint64_t rip = t->c->s.rip;
    if (!t->c->halted || rip < T_HAND + 1 || rip >= T_HAND + 16 * 256 + 1) return -1;
    if ((rip - T_HAND - 1) % 16) return -1;
    return (int)((rip - T_HAND - 1) / 16);
}

/* Runs code bytes at rip (already set) until a HLT, a shutdown or `budget` instructions. */
static inline void t_run(struct tenv *t, const void *code, size_t n, uint64_t budget)
{
    struct bt_cpu *c = t->c;
    uint64_t gpa = c->s.rip; /* identity-mapped */
    put_bytes(t, gpa, code, n);
    bt_cache_flush(c);
    c->halted = false;
    c->exit_now = false;
    bt_exec(c, budget);
}
