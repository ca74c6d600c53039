/* Shared between the x87 (fpu.c), MMX and SSE (sse.c) halves of the software CPU's floating-point
 * unit: the checks every FP instruction makes first, MMX register access (MMX registers alias the
 * x87 registers in the FXSAVE image), and operand plumbing.
 *
 * Trust: callers pass decoded instructions whose operand kinds were produced by the decoder; the
 * values in c->s.fx may come from the guest (FXRSTOR) or a snapshot and are never assumed
 * well-formed: anything that reaches the host FPU is sanitized first. */
#pragma once
#include <stdint.h>
#include <string.h>

#include "cpu/bt/bt.h"

/* FSW fields */
#define FSW_IE  0x0001
#define FSW_SF  0x0040
#define FSW_ES  0x0080
#define FSW_C0  0x0100
#define FSW_C1  0x0200
#define FSW_C2  0x0400
#define FSW_TOP 0x3800
#define FSW_C3  0x4000
#define FSW_B   0x8000
#define FSW_EXC 0x003f /* IE DE ZE OE UE PE */

#define MXCSR_FLAGS 0x003fu
#define MXCSR_MASKS 0x1f80u
#define MXCSR_DAZ   0x0040u
#define MXCSR_SUPPORTED                                                                            \
    0xffffu /* the MXCSR_MASK we report: every bit of the low half incl. DAZ                       \
             */

static inline unsigned fpu_top(const struct bt_cpu *c)
{
    return (c->s.fx.fsw >> 11) & 7;
}

/* FCW as hardware keeps it: reserved bits 7 and 13-15 read as 0, bit 6 as 1. */
static inline uint16_t fcw_normalize(uint16_t v)
{
    return (uint16_t)((v & 0x1f3f) | 0x40);
}

/* Makes TOP 0 without moving any physical register (FNINIT, MMX instructions): the FXSAVE image
 * keeps registers in stack order (slot k = ST(k) = R[(TOP+k)&7]), so the slots rotate. */
static inline void fpu_rotate_top0(struct x86_fxsave *fx)
{
    unsigned top = (fx->fsw >> 11) & 7;
    if (top) {
        uint8_t tmp[8][16];
        memcpy(tmp, fx->st, sizeof(tmp));
        for (unsigned k = 0; k < 8; k++)
            memcpy(fx->st[(top + k) & 7], tmp[k], 16);
        fx->fsw &= (uint16_t)~FSW_TOP;
    }
}

/* x87 instructions: CR0.EM/TS -> #NM, then (if `waiting`) a pending unmasked x87 exception
 * -> #MF (CR0.NE=1; with NE=0 the legacy FERR# path is not modelled and nothing is raised). */
void bt_x87_check(struct bt_cpu *c, bool waiting);
/* MMX-register instructions: CR0.EM -> #UD, CR0.TS -> #NM, pending x87 exception -> #MF, then the
 * x87 -> MMX transition (TOP = 0, all registers valid). */
void bt_mmx_enter(struct bt_cpu *c);

/* MMX register n (valid after bt_mmx_enter: with TOP = 0 the FXSAVE slot n is register Rn). */
static inline uint64_t mmx_get(const struct bt_cpu *c, unsigned n)
{
    uint64_t v;
    memcpy(&v, c->s.fx.st[n & 7], 8);
    return v;
}
static inline void mmx_set(struct bt_cpu *c, unsigned n, uint64_t v)
{
    memcpy(c->s.fx.st[n & 7], &v, 8);
    c->s.fx.st[n & 7][8] = 0xff; /* an MMX write sets the exponent/sign field to all ones */
    c->s.fx.st[n & 7][9] = 0xff;
}

/* FXSAVE / FXRSTOR of the live image to guest memory (sse.c); also used by tests. */
void bt_fxsave_to(struct bt_cpu *c, uint64_t lin, bool rex_w);
void bt_fxrstor_from(struct bt_cpu *c, uint64_t lin, bool rex_w);
/* The ModRM byte of an x87 register-form instruction, re-derived from the decoded operands (fpu.c;
 * exported for the decoder cross-check in the unit tests). */
int bt_x87_modrm(const struct bt_insn *i);
