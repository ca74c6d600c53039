/* Test environment for the software CPU (unit tests and the differential tester): one bt_cpu on
 * a 16 MiB guest in 64-bit ring-3 mode with flat segments and 4-level paging, where linear
 * [DT_BASE, DT_BASE + 2 MiB) maps to guest-physical DT_PHYS (one 2 MiB page).  The scratch data
 * (DT_SCRATCH, 8 KiB, also the stack) and the code page (DT_CODE) sit at the same linear
 * addresses the native runner (native.h) maps in its child, so register values that point into
 * the scratch mean the same thing on both sides.
 *
 * Exceptions are caught by bt_fault_observer before delivery: the run stops with RIP at the
 * faulting instruction, as a signal does natively. */
#pragma once
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/bt/bt.h"
#include "cpu/bt/jit.h"
#include "cpu/bt/intops.h"
#include "mem/guest.h"

#define DT_BASE      0x10000000ull
#define DT_SCRATCH   DT_BASE
#define DT_SCRATCH_N 8192u
#define DT_CODE      (DT_BASE + 0x2000)
#define DT_CODE_N    4096u
#define DT_PHYS      0x200000ull

struct btenv {
    struct vm vm;
    struct bt_cpu *c;
    bool faulted;
    int vector;
    uint32_t err;
};

static struct btenv *btenv_current;
/* 64: 64-bit mode (CS 0x33); 32: compatibility mode (CS 0x23, the 32-bit code segment Linux
 * gives every 64-bit process), so 32-bit code can be compared natively too */
static int btenv_bits = 64;
/* x87/MMX/SSE state both sides start from (FXSAVE image); NULL: the reset values */
static const struct x86_fxsave *btenv_fx;

static bool btenv_observer(struct bt_cpu *c, int vector, uint32_t err)
{
    btenv_current->faulted = true;
    btenv_current->vector = vector;
    btenv_current->err = err;
    return true;
}

static void btenv_put64(struct btenv *e, uint64_t gpa, uint64_t v)
{
    guest_write(&e->vm.mem, gpa, &v, 8);
}

static int btenv_init(struct btenv *e)
{
    memset(e, 0, sizeof(*e));
    if (guest_mem_init(&e->vm.mem, 16ull << 20) < 0) return -1;
    e->vm.mem_size = 16ull << 20;
    e->vm.ncpus = 1;
    e->c = calloc(1, sizeof(*e->c));
    if (!e->c) return -1;
    e->c->vm = &e->vm;
    if (bt_core_init(e->c) < 0 || bt_mmu_init(e->c) < 0) return -1;
    /* with the translator on (LOOKOUT_BT_JIT unset or 1), translate every block on first use so
     * the cases compare the translated code, not the interpreter it falls back to when cold */
    bt_jit_set_hot_runs(e->c, 0);
    /* PML4 at 0x1000 -> PDPT at 0x2000 -> PD at 0x3000 -> PT at 0x4000 for DT_BASE: two
     * writable scratch pages and the read-only code page, nothing else (as in the native child) */
    btenv_put64(e, 0x1000, 0x2000 | 7);
    btenv_put64(e, 0x2000, 0x3000 | 7);
    btenv_put64(e, 0x3000 + 8 * ((DT_BASE >> 21) & 511), 0x4000 | 7);
    btenv_put64(e, 0x4000 + 8 * ((DT_BASE >> 12) & 511), DT_PHYS | 7);
    btenv_put64(e, 0x4000 + 8 * (((DT_BASE >> 12) + 1) & 511), (DT_PHYS + 0x1000) | 7);
    btenv_put64(e, 0x4000 + 8 * (((DT_BASE >> 12) + 2) & 511), (DT_PHYS + 0x2000) | 5);
    btenv_current = e;
    bt_fault_observer = btenv_observer;
    return 0;
}

static void btenv_destroy(struct btenv *e)
{
    bt_mmu_destroy(e->c);
    bt_core_destroy(e->c);
    free(e->c);
    guest_mem_destroy(&e->vm.mem);
}

static void btenv_flat_seg(struct x86_seg *s, uint16_t sel, uint8_t type, bool code)
{
    memset(s, 0, sizeof(*s));
    s->sel = sel;
    s->type = type;
    s->s = 1;
    s->dpl = 3;
    s->present = 1;
    s->limit = 0xffffffff;
    s->g = 1;
    s->l = code;
    s->db = !code;
}

/* Loads code (followed by UD2, which marks the end), scratch memory and registers. */
static void btenv_load(struct btenv *e, const uint8_t *code, size_t len, const uint8_t *scratch,
                       const uint64_t gpr[16], uint64_t rflags)
{
    struct bt_cpu *c = e->c;
    struct x86_state *s = &c->s;
    memset(s, 0, sizeof(*s));
    s->cr0 = X86_CR0_PE | X86_CR0_MP | X86_CR0_ET | X86_CR0_NE | X86_CR0_WP | X86_CR0_PG;
    s->cr4 = X86_CR4_PAE | X86_CR4_OSFXSR | X86_CR4_OSXMMEXCPT;
    s->efer = X86_EFER_LME | X86_EFER_LMA | X86_EFER_SCE | X86_EFER_NXE;
    s->cr3 = 0x1000;
    /* Linux user mode: CS 0x33, SS 0x2b, null data selectors with flat hidden parts */
    if (btenv_bits == 32)
        btenv_flat_seg(&s->seg[SEG_CS], 0x23, 0xb, false);
    else
        btenv_flat_seg(&s->seg[SEG_CS], 0x33, 0xb, true);
    btenv_flat_seg(&s->seg[SEG_SS], 0x2b, 0x3, false);
    btenv_flat_seg(&s->seg[SEG_DS], btenv_bits == 32 ? 0x2b : 0, 0x3, false);
    btenv_flat_seg(&s->seg[SEG_ES], btenv_bits == 32 ? 0x2b : 0, 0x3, false);
    btenv_flat_seg(&s->seg[SEG_FS], 0, 0x3, false);
    btenv_flat_seg(&s->seg[SEG_GS], 0, 0x3, false);
    s->seg[SEG_TR].type = 0xb;
    s->seg[SEG_TR].present = 1;
    s->seg[SEG_LDTR].unusable = 1;
    s->fx.fcw = 0x37f;
    s->fx.mxcsr = 0x1f80;
    if (btenv_fx) s->fx = *btenv_fx;
    s->mp_state = MP_RUNNABLE;
    memcpy(s->gpr, gpr, sizeof(s->gpr));
    s->rflags = (rflags & ~(uint64_t)(X86_FLAG_TF | X86_FLAG_AC)) | X86_FLAG_FIXED | X86_FLAG_IF;
    s->rip = DT_CODE;
    uint8_t page[DT_CODE_N];
    memset(page, 0xcc, sizeof(page));
    memcpy(page, code, len);
    page[len] = 0x0f, page[len + 1] = 0x0b;
    guest_write(&e->vm.mem, DT_PHYS + (DT_CODE - DT_BASE), page, sizeof(page));
    guest_write(&e->vm.mem, DT_PHYS, scratch, DT_SCRATCH_N);
    bt_update_mode(c);
    bt_tlb_flush(c, true);
    bt_cache_invalidate_page(c, DT_PHYS + (DT_CODE - DT_BASE)); /* new code at the same address */
    c->exit_now = false;
    c->halted = false;
    e->faulted = false;
}

/* Runs until an exception (returns its vector) or the budget is spent (returns -1). */
static int btenv_run(struct btenv *e, uint64_t budget)
{
    e->faulted = false;
    e->c->exit_now = false;
    bt_exec(e->c, budget);
    return e->faulted ? e->vector : -1;
}

static void btenv_scratch(struct btenv *e, uint8_t *out)
{
    guest_read(&e->vm.mem, DT_PHYS, out, DT_SCRATCH_N);
}
