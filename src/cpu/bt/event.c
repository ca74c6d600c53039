/* Exceptions and interrupts of the software CPU: raising a fault from inside an instruction,
 * delivery through the real-mode IVT or the protected/long-mode IDT (interrupt and trap gates,
 * stack switch through the TSS, IST, error codes), the double-fault and triple-fault rules,
 * IRET in every mode, INT n/INT3/INTO/INT1, and taking NMIs, LAPIC interrupts and INIT/SIPI
 * between instructions.
 *
 * Trust: the IDT, GDT, TSS and stacks are guest memory and are checked as the SDM (Vol.3 ch. 6)
 * says; a fault during delivery is itself delivered (or becomes #DF / a triple fault), never a
 * host error.  Architectural registers change only after every check and every stack write of
 * the delivery succeeded. */
#include <string.h>

#include "cpu/bt/btvm.h"
#include "cpu/bt/irqglue.h"
#include "cpu/bt/sys.h"
#include "util/log.h"

_Noreturn void bt_raise(struct bt_cpu *c, int vector, uint32_t errcode)
{
    c->pending_vector = vector;
    c->pending_err = errcode;
    longjmp(c->fault_jmp, 1);
}

_Noreturn void bt_raise_pf(struct bt_cpu *c, uint64_t lin, uint32_t errcode)
{
    c->s.cr2 = lin;
    bt_raise(c, X86_PF, errcode);
}

static bool has_errcode(int v)
{
    return v == X86_DF || v == X86_TS || v == X86_NP || v == X86_SS || v == X86_GP || v == X86_PF ||
           v == X86_AC;
}

enum exc_class { BENIGN, CONTRIBUTORY, PAGEFAULT };
static enum exc_class class_of(int v)
{
    if (v == X86_PF) return PAGEFAULT;
    if (v == X86_DE || v == X86_TS || v == X86_NP || v == X86_SS || v == X86_GP)
        return CONTRIBUTORY;
    return BENIGN;
}

static void triple_fault(struct bt_cpu *c)
{
    c->shutdown = true;
    c->exit_now = true;
    if (c->exit) c->exit->reason = VCPU_EXIT_SHUTDOWN;
}

/* Internal kinds beyond enum bt_event_kind: INT1 (ICEBP) is a trap delivered like a hardware
 * #DB (no gate-DPL check) with the return address after the instruction. */
#define EV_ICEBP 100

static void deliver_real(struct bt_cpu *c, int vector)
{
    uint64_t lin = c->s.idtr.base + (uint64_t)vector * 4;
    if ((uint64_t)vector * 4 + 3 > c->s.idtr.limit) bt_gp0(c);
    uint32_t ent = (uint32_t)bt_read(c, lin & 0xffffffffull, 4, BT_ACC_READ | BT_ACC_IMPLICIT);
    uint64_t vals[3] = {c->s.rflags & 0xffff, c->s.seg[SEG_CS].sel, c->s.rip & 0xffff};
    uint64_t sp =
        bt_frame_push(c, &c->s.seg[SEG_SS], c->stack_bits, c->s.gpr[RSP], vals, 3, 2, 0, 0);
    uint64_t m = bt_stack_mask(c);
    c->s.gpr[RSP] = (c->s.gpr[RSP] & ~m) | sp;
    c->s.rflags &= ~(uint64_t)(X86_FLAG_IF | X86_FLAG_TF | X86_FLAG_AC | X86_FLAG_RF);
    struct x86_seg *cs = &c->s.seg[SEG_CS];
    cs->sel = (uint16_t)(ent >> 16);
    cs->base = (uint64_t)cs->sel << 4;
    c->s.rip = ent & 0xffff;
    bt_update_mode(c);
}

static void deliver_prot(struct bt_cpu *c, int kind, int vector, uint32_t err)
{
    bool soft = kind == BT_EV_SOFTINT;
    uint32_t ext = (kind == BT_EV_SOFTINT) ? 0 : 1;
    uint32_t idt_err = (uint32_t)vector * 8 + 2 + ext;
    bool lm = c->long_mode;
    unsigned esz = lm ? 16 : 8;
    if ((uint64_t)vector * esz + esz - 1 > c->s.idtr.limit) bt_raise(c, X86_GP, idt_err);
    uint64_t glin = c->s.idtr.base + (uint64_t)vector * esz;
    if (!lm) glin &= 0xffffffffull;
    uint64_t gate = bt_read(c, glin, 8, BT_ACC_READ | BT_ACC_IMPLICIT);
    uint64_t gate_hi = lm ? bt_read(c, glin + 8, 8, BT_ACC_READ | BT_ACC_IMPLICIT) : 0;
    unsigned type = DESC_TYPE(gate), gdpl = DESC_DPL(gate);
    bool valid_type;
    if (lm)
        valid_type = !DESC_S(gate) && (type == 0xe || type == 0xf);
    else
        valid_type = !DESC_S(gate) &&
                     (type == 0x6 || type == 0x7 || type == 0xe || type == 0xf || type == 0x5);
    if (!valid_type) bt_raise(c, X86_GP, idt_err);
    if (soft && gdpl < c->cpl) bt_raise(c, X86_GP, idt_err);
    if (!DESC_P(gate)) bt_raise(c, X86_NP, idt_err);
    if (type == 0x5) {
        bt_log_unsupported("a task gate in the IDT");
        bt_raise(c, X86_GP, idt_err);
    }
    bool trap = type & 1;
    unsigned gsize = lm ? 8 : (type & 8) ? 4 : 2;
    uint16_t tsel = (uint16_t)(gate >> 16);
    uint64_t off =
        (gate & 0xffff) | ((gate >> 32) & 0xffff0000ull) | ((gate_hi & 0xffffffffull) << 32);
    unsigned ist = lm ? (unsigned)(gate >> 32) & 7 : 0;
    if ((tsel & 0xfffc) == 0) bt_raise(c, X86_GP, ext);
    uint64_t d;
    if (!bt_desc_read(c, tsel, &d)) bt_raise(c, X86_GP, (tsel & 0xfffc) | ext);
    unsigned dpl = DESC_DPL(d);
    if (!DESC_IS_CODE(d) || dpl > c->cpl) bt_raise(c, X86_GP, (tsel & 0xfffc) | ext);
    if (!DESC_P(d)) bt_raise(c, X86_NP, (tsel & 0xfffc) | ext);
    if (lm && !(DESC_L(d) && !DESC_DB(d))) bt_raise(c, X86_GP, (tsel & 0xfffc) | ext);
    if (c->s.rflags & X86_FLAG_VM) {
        bt_log_unsupported("virtual-8086 mode");
        bt_raise(c, X86_GP, (tsel & 0xfffc) | ext);
    }
    bool conforming = DESC_TYPE(d) & 4;
    unsigned ncpl = conforming ? c->cpl : dpl;
    struct x86_seg ncs;
    bt_desc_to_seg(d, tsel, &ncs);
    if (lm) {
        if (!x86_is_canonical(off)) bt_raise(c, X86_GP, ext);
    } else {
        if (gsize == 2) off &= 0xffff;
        if (off > ncs.limit) bt_raise(c, X86_GP, ext);
    }

    uint64_t old_flags = c->s.rflags;
    if (kind == BT_EV_EXTINT || kind == BT_EV_NMI || kind == BT_EV_SOFTINT || kind == EV_ICEBP)
        old_flags &= ~(uint64_t)X86_FLAG_RF;
    uint64_t vals[8];
    unsigned n = 0;
    struct x86_seg nss = c->s.seg[SEG_SS];
    unsigned nbits = c->stack_bits;
    uint64_t sp = c->s.gpr[RSP];
    bool switch_stack = ncpl < c->cpl;
    if (switch_stack || (lm && ist)) {
        uint16_t ss_sel;
        uint64_t nsp;
        bt_tss_stack(c, ncpl, ist, ext, &ss_sel, &nsp);
        if (lm) {
            if (switch_stack) {
                memset(&nss, 0, sizeof(nss));
                nss.sel = (uint16_t)ncpl;
                nss.unusable = 1;
                nss.dpl = ncpl;
                nss.db = 1;
            }
            nbits = 64;
        } else {
            uint32_t e = (ss_sel & 0xfffc) | ext;
            uint64_t sd;
            if ((ss_sel & 0xfffc) == 0) bt_raise(c, X86_TS, ext);
            if (!bt_desc_read(c, ss_sel, &sd)) bt_raise(c, X86_TS, e);
            if ((ss_sel & 3) != ncpl || DESC_DPL(sd) != ncpl || !DESC_IS_DATA(sd) ||
                !(DESC_TYPE(sd) & 2))
                bt_raise(c, X86_TS, e);
            if (!DESC_P(sd)) bt_raise(c, X86_SS, e);
            bt_desc_to_seg(sd | (1ull << 40), ss_sel, &nss);
            nbits = nss.db ? 32 : 16;
        }
        if (switch_stack || !lm) {
            vals[n++] = c->s.seg[SEG_SS].sel;
            vals[n++] = c->s.gpr[RSP];
        }
        sp = nsp;
    }
    if (lm) {
        if (n == 0) {
            vals[n++] = c->s.seg[SEG_SS].sel;
            vals[n++] = c->s.gpr[RSP];
        }
        nbits = 64;
        sp &= ~0xfull;
    }
    vals[n++] = old_flags;
    vals[n++] = c->s.seg[SEG_CS].sel;
    vals[n++] = c->s.rip;
    if (err != BT_NO_ERRCODE) vals[n++] = err;
    if (gsize < 8)
        for (unsigned k = 0; k < n; k++)
            vals[k] &= gsize == 2 ? 0xffff : 0xffffffffull;
    int acc = ncpl < 3 ? BT_ACC_IMPLICIT : 0;
    uint32_t ss_err = switch_stack ? ((nss.sel & 0xfffc) | ext) : 0;
    uint64_t nsp = bt_frame_push(c, &nss, nbits, sp, vals, n, gsize, acc, ss_err);

    /* Commit. */
    if (switch_stack && !lm) {
        uint64_t sd;
        if (bt_desc_read(c, nss.sel, &sd)) bt_desc_set_accessed(c, nss.sel, sd);
    }
    bt_set_cs(c, tsel, d, ncpl);
    c->s.seg[SEG_SS] = nss;
    if (nbits == 16)
        c->s.gpr[RSP] = (c->s.gpr[RSP] & ~0xffffull) | (nsp & 0xffff);
    else if (nbits == 32 && !switch_stack)
        c->s.gpr[RSP] = (c->s.gpr[RSP] & ~0xffffffffull) | (nsp & 0xffffffffull);
    else
        c->s.gpr[RSP] = nsp;
    c->s.rip = off;
    c->s.rflags &= ~(uint64_t)(X86_FLAG_TF | X86_FLAG_NT | X86_FLAG_RF | X86_FLAG_VM);
    if (!trap) c->s.rflags &= ~(uint64_t)X86_FLAG_IF;
    bt_update_mode(c);
}

static void deliver_once(struct bt_cpu *c, int kind, int vector, uint32_t err)
{
    if (kind == BT_EV_EXCEPTION || kind == EV_ICEBP) {
        /* exceptions that push no error code never get one */
        if (!has_errcode(vector)) err = BT_NO_ERRCODE;
    }
    if (kind == BT_EV_NMI) c->s.ev.nmi_masked = 1;
    if (!(c->s.cr0 & X86_CR0_PE))
        deliver_real(c, vector);
    else
        deliver_prot(c, kind == EV_ICEBP ? BT_EV_EXCEPTION : kind, vector,
                     (kind == BT_EV_EXCEPTION || kind == EV_ICEBP) ? err : BT_NO_ERRCODE);
}

static void deliver(struct bt_cpu *c, int kind, int vector, uint32_t err)
{
    if (c->cpl == 3) {
        if (kind == BT_EV_EXCEPTION) {
            c->ustat.faults++;
            c->ustat.page_faults += vector == X86_PF;
        } else if (kind == BT_EV_EXTINT || kind == BT_EV_NMI) {
            c->ustat.irqs++;
        } else {
            c->ustat.softints++; /* INT n, INT3, INTO, INT1 */
        }
    }
    jmp_buf saved;
    memcpy(saved, c->fault_jmp, sizeof(saved));
    bool was = c->in_event_delivery;
    volatile int k = kind, v = vector;
    volatile uint32_t e = err;
    volatile unsigned rounds = 0;
    for (;;) {
        if (setjmp(c->fault_jmp) == 0) {
            c->in_event_delivery = true;
            c->delivering_vector = (uint8_t)v;
            deliver_once(c, k, v, e);
            break;
        }
        int nv = c->pending_vector;
        uint32_t ne = c->pending_err;
        if (k == BT_EV_SOFTINT || k == EV_ICEBP) c->s.rip = c->insn_rip;
        if (++rounds > 4) {
            triple_fault(c);
            break;
        }
        if (k == BT_EV_EXCEPTION) {
            enum exc_class c1 = class_of(v), c2 = class_of(nv);
            if (v == X86_DF && c2 != BENIGN) {
                triple_fault(c);
                break;
            }
            if ((c1 == CONTRIBUTORY && c2 == CONTRIBUTORY) || (c1 == PAGEFAULT && c2 != BENIGN)) {
                nv = X86_DF;
                ne = 0;
            }
        }
        k = BT_EV_EXCEPTION;
        v = nv;
        e = ne;
    }
    c->in_event_delivery = was;
    memcpy(c->fault_jmp, saved, sizeof(saved));
    c->s.ev.interrupt_shadow = 0;
}

void bt_deliver(struct bt_cpu *c, enum bt_event_kind kind, int vector, uint32_t errcode)
{
    c->halted = false;
    if (c->s.mp_state == MP_HALTED) c->s.mp_state = MP_RUNNABLE;
    deliver(c, kind, vector & 0xff, errcode);
    if (c->stop_after_event) c->exit_now = true;
}

/* ---- INT n / INT3 / INTO / INT1 ------------------------------------------------------------- */

static void op_int(struct bt_cpu *c, const struct bt_insn *i)
{
    int vector;
    switch (i->mnemonic) {
    case ZYDIS_MNEMONIC_INT3: vector = X86_BP; break;
    case ZYDIS_MNEMONIC_INTO:
        if (c->code_bits == 64) bt_ud(c);
        if (!(c->s.rflags & X86_FLAG_OF)) {
            c->s.rip = c->next_rip;
            return;
        }
        vector = X86_OF;
        break;
    case ZYDIS_MNEMONIC_INT1:
        c->s.rip = c->next_rip;
        deliver(c, EV_ICEBP, X86_DB, BT_NO_ERRCODE);
        return;
    default: vector = (int)(i->op[0].disp & 0xff); break;
    }
    if (bt_vm86(c) && ((c->s.rflags & X86_FLAG_IOPL) >> 12) < 3) bt_gp0(c);
    c->s.rip = c->next_rip;
    deliver(c, BT_EV_SOFTINT, vector, BT_NO_ERRCODE);
}
BT_HANDLER(INT, op_int);
BT_HANDLER(INT3, op_int);
BT_HANDLER(INTO, op_int);
BT_HANDLER(INT1, op_int);

/* ---- IRET ----------------------------------------------------------------------------------- */

static void op_iret(struct bt_cpu *c, const struct bt_insn *i)
{
    unsigned sz = i->opsize / 8;
    uint64_t m = bt_stack_mask(c);
    if (!(c->s.cr0 & X86_CR0_PE) || bt_vm86(c)) {
        if (bt_vm86(c) && ((c->s.rflags & X86_FLAG_IOPL) >> 12) < 3) bt_gp0(c);
        uint64_t ip = bt_stack_read(c, 0, sz);
        uint16_t cs = (uint16_t)bt_stack_read(c, sz, sz);
        uint64_t fl = bt_stack_read(c, 2 * sz, sz);
        if ((ip & 0xffffffffull) > c->s.seg[SEG_CS].limit) bt_gp0(c);
        struct x86_seg *s = &c->s.seg[SEG_CS];
        s->sel = cs;
        s->base = (uint64_t)cs << 4;
        c->s.gpr[RSP] = (c->s.gpr[RSP] & ~m) | ((c->s.gpr[RSP] + 3 * sz) & m);
        c->s.rip = ip & (sz == 2 ? 0xffff : 0xffffffffull);
        bt_write_rflags(c, fl, sz);
        c->s.ev.nmi_masked = 0;
        bt_update_mode(c);
        return;
    }
    if (c->s.rflags & X86_FLAG_NT) {
        if (c->long_mode) bt_gp0(c);
        bt_log_unsupported("a task return (IRET with NT=1)");
        bt_raise(c, X86_GP, c->s.seg[SEG_TR].sel & 0xfffc);
    }
    uint64_t ip = bt_stack_read(c, 0, sz);
    uint16_t sel = (uint16_t)bt_stack_read(c, sz, sz);
    uint64_t fl = bt_stack_read(c, 2 * sz, sz);
    if (sz == 4 && (fl & X86_FLAG_VM) && c->cpl == 0 && !c->long_mode) {
        bt_log_unsupported("virtual-8086 mode (IRET to VM86)");
        bt_gp0(c);
    }
    unsigned cpl = c->cpl, rpl = sel & 3;
    uint16_t errsel = sel & 0xfffc;
    if (errsel == 0) bt_gp0(c);
    uint64_t d;
    if (!bt_desc_read(c, sel, &d)) bt_raise(c, X86_GP, errsel);
    if (!DESC_IS_CODE(d) || rpl < cpl) bt_raise(c, X86_GP, errsel);
    unsigned dpl = DESC_DPL(d);
    if ((DESC_TYPE(d) & 4) ? dpl > rpl : dpl != rpl) bt_raise(c, X86_GP, errsel);
    if (!DESC_P(d)) bt_raise(c, X86_NP, errsel);
    if (c->long_mode && DESC_L(d) && DESC_DB(d)) bt_raise(c, X86_GP, errsel);
    struct x86_seg ncs;
    bt_desc_to_seg(d, sel, &ncs);
    bool to64 = c->long_mode && ncs.l;
    if (to64) {
        if (!x86_is_canonical(ip)) bt_gp0(c);
    } else {
        ip &= sz == 2 ? 0xffff : 0xffffffffull;
        if (ip > ncs.limit) bt_gp0(c);
    }
    bool pop_stack = rpl > cpl || c->code_bits == 64;
    uint64_t nsp = 0;
    struct x86_seg nss = c->s.seg[SEG_SS];
    if (pop_stack) {
        nsp = bt_stack_read(c, 3 * sz, sz);
        uint16_t ss_sel = (uint16_t)bt_stack_read(c, 4 * sz, sz);
        uint16_t e = ss_sel & 0xfffc;
        if (e == 0) {
            /* null SS: only on return to 64-bit code at CPL < 3 */
            if (!(to64 && rpl != 3)) bt_gp0(c);
            memset(&nss, 0, sizeof(nss));
            nss.sel = ss_sel;
            nss.unusable = 1;
            nss.dpl = rpl;
            nss.db = 1;
        } else {
            uint64_t sd;
            if (!bt_desc_read(c, ss_sel, &sd)) bt_raise(c, X86_GP, e);
            if ((ss_sel & 3) != rpl || DESC_DPL(sd) != rpl || !DESC_IS_DATA(sd) ||
                !(DESC_TYPE(sd) & 2))
                bt_raise(c, X86_GP, e);
            if (!DESC_P(sd)) bt_raise(c, X86_SS, e);
            bt_desc_set_accessed(c, ss_sel, sd);
            bt_desc_to_seg(sd | (1ull << 40), ss_sel, &nss);
        }
    }
    /* Commit: flags with the rules of the old CPL, then CS/SS. */
    bt_write_rflags(c, fl, sz);
    uint64_t old_rsp = c->s.gpr[RSP];
    bt_set_cs(c, sel, d, rpl);
    if (pop_stack) c->s.seg[SEG_SS] = nss;
    bt_update_mode(c);
    if (pop_stack) {
        unsigned bits = c->stack_bits;
        if (bits == 64 || sz == 8)
            c->s.gpr[RSP] = nsp;
        else if (bits == 32)
            c->s.gpr[RSP] = nsp & 0xffffffffull;
        else
            c->s.gpr[RSP] = (old_rsp & ~0xffffull) | (nsp & 0xffff);
    } else {
        c->s.gpr[RSP] = (old_rsp & ~m) | ((old_rsp + 3 * sz) & m);
    }
    c->s.rip = ip;
    c->s.ev.nmi_masked = 0;
    if (rpl > cpl) bt_nullify_data_segs(c);
}
BT_HANDLER(IRET, op_iret);
BT_HANDLER(IRETD, op_iret);
BT_HANDLER(IRETQ, op_iret);

/* ---- interrupts between instructions -------------------------------------------------------- */

static void init_ap(struct bt_cpu *c)
{
    struct x86_state keep = c->s;
    x86_state_reset(&c->s, c->index, false);
    /* INIT keeps the APIC base and a few MSRs; the AP then waits for SIPI. */
    c->s.apic_base = keep.apic_base;
    c->s.mp_state = MP_WAIT_FOR_SIPI;
    c->halted = true;
    bt_update_mode(c);
    bt_tlb_flush(c, true);
    bt_cache_flush(c);
}

bool bt_check_interrupts(struct bt_cpu *c)
{
    bool att = bt_glue_attention(c);
    if (!att && !c->s.ev.nmi_pending && !c->s.ev.interrupt_pending &&
        c->s.mp_state != MP_WAIT_FOR_SIPI)
        return false;
    if (att && bt_glue_take_init(c) && c->index != 0) init_ap(c);
    if (c->s.mp_state == MP_WAIT_FOR_SIPI) {
        int v = bt_glue_take_sipi(c);
        if (v < 0) return false;
        struct x86_seg *cs = &c->s.seg[SEG_CS];
        cs->sel = (uint16_t)(v << 8);
        cs->base = (uint64_t)v << 12;
        c->s.rip = 0;
        c->s.mp_state = MP_RUNNABLE;
        c->halted = false;
        bt_update_mode(c);
        return true;
    }
    if (c->s.ev.interrupt_shadow) {
        /* The shadow covers exactly one instruction after STI / MOV SS; the loop clears it by
         * calling here once per instruction boundary. */
        c->s.ev.interrupt_shadow = 0;
        return false;
    }
    if (att && bt_glue_take_nmi(c)) c->s.ev.nmi_pending = 1;
    if (c->s.ev.nmi_pending && !c->s.ev.nmi_masked) {
        c->s.ev.nmi_pending = 0;
        bt_deliver(c, BT_EV_NMI, X86_NMI, BT_NO_ERRCODE);
        return true;
    }
    if (!(c->s.rflags & X86_FLAG_IF)) return false;
    if (c->s.ev.interrupt_pending) {
        c->s.ev.interrupt_pending = 0;
        bt_deliver(c, BT_EV_EXTINT, c->s.ev.interrupt_vector, BT_NO_ERRCODE);
        return true;
    }
    if (!att) return false;
    int v = bt_glue_lapic_pending(c);
    if (v < 0) return false;
    bt_glue_lapic_accept(c, v);
    bt_deliver(c, BT_EV_EXTINT, v, BT_NO_ERRCODE);
    return true;
}
