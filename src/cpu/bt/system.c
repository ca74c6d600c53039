/* Privileged and sensitive instructions of the software CPU: control and debug registers,
 * descriptor-table registers, MSRs, CPUID, TSC, HLT, port I/O (with IOPL and the TSS I/O
 * bitmap), CLI/STI, PUSHF/POPF, SYSCALL/SYSRET, SYSENTER/SYSEXIT, SWAPGS.  Instructions outside
 * the CPU model (MONITOR/MWAIT, XGETBV/XSETBV, RDFSBASE.., RDPID) have no handler, so the core
 * raises #UD for them as the modelled hardware does.
 *
 * Trust: every operand comes from the guest; each check is the one on the SDM's instruction page
 * (CPL, IOPL, reserved bits, canonical addresses, invalid CR combinations) and a failed check
 * raises the architectural fault before any state changes.  DR7 breakpoints are stored but not
 * enforced (no hardware breakpoints in this CPU: the guest's debugger sees them never fire). */
#include <string.h>

#include "cpu/bt/btvm.h"
#include "cpu/bt/irqglue.h"
#include "cpu/bt/sys.h"
#include "util/log.h"

static unsigned iopl_of(const struct bt_cpu *c)
{
    return (unsigned)(c->s.rflags & X86_FLAG_IOPL) >> 12;
}

static void need_cpl0(struct bt_cpu *c)
{
    if (c->cpl != 0) bt_gp0(c);
}

static void next(struct bt_cpu *c)
{
    c->s.rip = c->next_rip;
}

static unsigned apic_id(const struct bt_cpu *c)
{
    return c->vcpu ? c->vcpu->id : c->index;
}

/* ---- flags ---------------------------------------------------------------------------------- */

static void write_flags(struct bt_cpu *c, uint64_t v, unsigned size, bool iret)
{
    uint64_t f = c->s.rflags;
    uint64_t mask = X86_FLAG_CF | X86_FLAG_PF | X86_FLAG_AF | X86_FLAG_ZF | X86_FLAG_SF |
                    X86_FLAG_TF | X86_FLAG_DF | X86_FLAG_OF | X86_FLAG_NT;
    bool real = !(c->s.cr0 & X86_CR0_PE);
    if (size >= 4) mask |= X86_FLAG_AC | X86_FLAG_ID;
    if (real || c->cpl == 0) mask |= X86_FLAG_IOPL;
    if (real || c->cpl <= iopl_of(c)) mask |= X86_FLAG_IF;
    if (iret && size >= 4) {
        mask |= X86_FLAG_RF;
        if (c->cpl == 0 && !real) mask |= X86_FLAG_VIF | X86_FLAG_VIP;
    }
    if (size == 2) mask &= 0xffff;
    f = (f & ~mask) | (v & mask);
    c->s.rflags = (f & 0x3f7fd5ull) | X86_FLAG_FIXED;
}

void bt_write_rflags(struct bt_cpu *c, uint64_t v, unsigned size)
{
    /* Used by IRET (event.c) and POPF: RF/VIF/VIP are loaded only by IRET, see op_popf. */
    write_flags(c, v, size, true);
}

static void op_pushf(struct bt_cpu *c, const struct bt_insn *i)
{
    if (bt_vm86(c) && iopl_of(c) < 3) bt_gp0(c);
    uint64_t f = c->s.rflags & ~(uint64_t)(X86_FLAG_VM | X86_FLAG_RF);
    bt_push(c, i->opsize / 8, f);
    next(c);
}
BT_HANDLER(PUSHF, op_pushf);
BT_HANDLER(PUSHFD, op_pushf);
BT_HANDLER(PUSHFQ, op_pushf);

static void op_popf(struct bt_cpu *c, const struct bt_insn *i)
{
    if (bt_vm86(c) && iopl_of(c) < 3) bt_gp0(c);
    uint64_t v = bt_pop(c, i->opsize / 8);
    write_flags(c, v, i->opsize / 8, false);
    next(c);
}
BT_HANDLER(POPF, op_popf);
BT_HANDLER(POPFD, op_popf);
BT_HANDLER(POPFQ, op_popf);

static void op_cli_sti(struct bt_cpu *c, const struct bt_insn *i)
{
    if ((c->s.cr0 & X86_CR0_PE) && iopl_of(c) < c->cpl) bt_gp0(c);
    if (i->mnemonic == ZYDIS_MNEMONIC_CLI) {
        c->s.rflags &= ~(uint64_t)X86_FLAG_IF;
    } else {
        if (!(c->s.rflags & X86_FLAG_IF)) c->s.ev.interrupt_shadow = 1;
        c->s.rflags |= X86_FLAG_IF;
    }
    next(c);
}
BT_HANDLER(CLI, op_cli_sti);
BT_HANDLER(STI, op_cli_sti);

/* ---- control registers ---------------------------------------------------------------------- */

#define CR0_KNOWN                                                                                  \
    (X86_CR0_PE | X86_CR0_MP | X86_CR0_EM | X86_CR0_TS | X86_CR0_ET | X86_CR0_NE | X86_CR0_WP |    \
     X86_CR0_AM | X86_CR0_NW | X86_CR0_CD | X86_CR0_PG)
#define CR4_MODEL                                                                                  \
    (X86_CR4_TSD | X86_CR4_DE | X86_CR4_PSE | X86_CR4_PAE | X86_CR4_MCE | X86_CR4_PGE |            \
     X86_CR4_PCE | X86_CR4_OSFXSR | X86_CR4_OSXMMEXCPT)

static uint64_t phys_addr_mask(struct bt_cpu *c)
{
    unsigned maxphy = 36;
    if (c->vm) {
        const struct cpuid_entry *e = cpuid_find(&c->vm->cpuid, 0x80000008, 0);
        if (e && (e->eax & 0xff) >= 32 && (e->eax & 0xff) <= 52) maxphy = e->eax & 0xff;
    }
    return (1ull << maxphy) - 1;
}

void bt_write_cr(struct bt_cpu *c, int n, uint64_t v)
{
    struct x86_state *s = &c->s;
    switch (n) {
    case 0: {
        if (v >> 32) bt_gp0(c);
        v = (v & CR0_KNOWN) | X86_CR0_ET;
        if ((v & X86_CR0_PG) && !(v & X86_CR0_PE)) bt_gp0(c);
        if ((v & X86_CR0_NW) && !(v & X86_CR0_CD)) bt_gp0(c);
        bool pg_on = (v & X86_CR0_PG) && !(s->cr0 & X86_CR0_PG);
        bool pg_off = !(v & X86_CR0_PG) && (s->cr0 & X86_CR0_PG);
        if (pg_on && (s->efer & X86_EFER_LME)) {
            if (!(s->cr4 & X86_CR4_PAE) || s->seg[SEG_CS].l) bt_gp0(c);
        }
        if (pg_off && c->code_bits == 64) bt_gp0(c);
        if (pg_on && (s->efer & X86_EFER_LME)) s->efer |= X86_EFER_LMA;
        if (pg_off) s->efer &= ~X86_EFER_LMA;
        uint64_t changed = s->cr0 ^ v;
        s->cr0 = v;
        if (changed & (X86_CR0_PG | X86_CR0_WP | X86_CR0_PE)) bt_tlb_flush(c, true);
        bt_update_mode(c);
        return;
    }
    case 2: s->cr2 = c->code_bits == 64 ? v : (v & 0xffffffffull); return;
    case 3:
        if (c->long_mode) {
            if (c->kvm_assist && (s->cr4 & X86_CR4_PCIDE)) v &= ~(1ull << 63); /* no-flush hint */
            if (v & ~phys_addr_mask(c) & ~0xfffull) bt_gp0(c);
        } else {
            v &= 0xffffffffull;
        }
        s->cr3 = v;
        c->ustat.cr3_loads++;
        bt_tlb_flush(c, false);
        return;
    case 4: {
        uint64_t ok = CR4_MODEL;
        if (c->kvm_assist) /* what a host CPU may offer to a kvm_pvm guest */
            ok |= X86_CR4_VME | X86_CR4_PVI | X86_CR4_UMIP | X86_CR4_FSGSBASE | X86_CR4_PCIDE |
                  X86_CR4_SMEP | X86_CR4_SMAP;
        /* OSXSAVE only where the guest's CPUID shows XSAVE (the KVM fallback, see bt.h) */
        if (c->xsave_visible) ok |= X86_CR4_OSXSAVE;
        if (v & ~ok) bt_gp0(c);
        if (c->long_mode && !(v & X86_CR4_PAE)) bt_gp0(c);
        uint64_t changed = s->cr4 ^ v;
        s->cr4 = v;
        if (changed & (X86_CR4_PSE | X86_CR4_PAE | X86_CR4_PGE)) bt_tlb_flush(c, true);
        return;
    }
    case 8:
        if (v & ~0xfull) bt_gp0(c);
        bt_glue_set_cr8(c, v);
        s->cr8 = v;
        return;
    default: bt_ud(c);
    }
}

static uint64_t read_cr(struct bt_cpu *c, int n)
{
    switch (n) {
    case 0: return c->s.cr0;
    case 2: return c->s.cr2;
    case 3: return c->s.cr3;
    case 4: return c->s.cr4;
    case 8: return bt_glue_get_cr8(c);
    default: bt_ud(c);
    }
}

static int dr_index(struct bt_cpu *c, int n)
{
    if (n == 4 || n == 5) {
        if (c->s.cr4 & X86_CR4_DE) bt_ud(c);
        return n + 2;
    }
    if (n > 7) bt_ud(c);
    return n;
}

/* MOV to/from CRn and DRn (the decoder routes them to pseudo mnemonics).  The register operand
 * is always 64 bits in 64-bit mode and 32 bits elsewhere, whatever the operand-size prefix. */
static void op_mov_cr(struct bt_cpu *c, const struct bt_insn *i)
{
    const struct bt_operand *d = &i->op[0], *sr = &i->op[1];
    unsigned sz = c->code_bits == 64 ? 8 : 4;
    if (i->pfx & BT_PFX_LOCK) bt_ud(c);
    need_cpl0(c);
    if (d->rclass == BT_RC_CR) {
        int n = d->reg;
        if (n != 0 && n != 2 && n != 3 && n != 4 && n != 8) bt_ud(c);
        bt_write_cr(c, n, bt_gpr_read(c, sr->reg, sz));
    } else {
        bt_gpr_write(c, d->reg, sz, read_cr(c, sr->reg));
    }
    next(c);
}
BT_HANDLER_ID(BT_MNEM_MOV_CR, op_mov_cr);

static void op_mov_dr(struct bt_cpu *c, const struct bt_insn *i)
{
    const struct bt_operand *d = &i->op[0], *sr = &i->op[1];
    unsigned sz = c->code_bits == 64 ? 8 : 4;
    need_cpl0(c);
    if (d->rclass == BT_RC_DR) {
        int n = dr_index(c, d->reg);
        uint64_t v = bt_gpr_read(c, sr->reg, sz);
        if (n < 4) {
            c->s.dr[n] = v;
        } else if (n == 6) {
            if (v >> 32) bt_gp0(c);
            c->s.dr6 = (v & 0x1e00f) | 0xffff0ff0ull;
        } else {
            if (v >> 32) bt_gp0(c);
            if (v & 0xff) bt_log_unsupported("DR7 hardware breakpoints (stored, never fire)");
            c->s.dr7 = (v & 0xffff2fffull) | 0x400;
        }
    } else {
        int n = dr_index(c, sr->reg);
        uint64_t v = n < 4 ? c->s.dr[n] : n == 6 ? c->s.dr6 : c->s.dr7;
        bt_gpr_write(c, d->reg, sz, v);
    }
    next(c);
}
BT_HANDLER_ID(BT_MNEM_MOV_DR, op_mov_dr);

static void op_clts(struct bt_cpu *c, const struct bt_insn *i)
{
    need_cpl0(c);
    c->s.cr0 &= ~X86_CR0_TS;
    next(c);
}
BT_HANDLER(CLTS, op_clts);

static void op_lmsw(struct bt_cpu *c, const struct bt_insn *i)
{
    need_cpl0(c);
    uint64_t v = bt_op_read(c, i, 0) & 0xf;
    uint64_t cr0 = (c->s.cr0 & ~0xeull) | v | (c->s.cr0 & X86_CR0_PE); /* cannot clear PE */
    bt_write_cr(c, 0, cr0);
    next(c);
}
BT_HANDLER(LMSW, op_lmsw);

static void op_smsw(struct bt_cpu *c, const struct bt_insn *i)
{
    if (i->op[0].kind == BT_OPK_MEM)
        bt_op_write(c, i, 0, c->s.cr0 & 0xffff);
    else
        bt_op_write(c, i, 0, c->s.cr0);
    next(c);
}
BT_HANDLER(SMSW, op_smsw);

/* ---- descriptor-table registers ------------------------------------------------------------- */

static void op_lgdt_lidt(struct bt_cpu *c, const struct bt_insn *i)
{
    if (i->op[0].kind != BT_OPK_MEM) bt_ud(c);
    need_cpl0(c);
    unsigned bsz = c->code_bits == 64 ? 8 : 4;
    uint64_t lin = bt_op_lin(c, i, 0, 2 + bsz, BT_ACC_READ);
    uint16_t limit = (uint16_t)bt_read(c, lin, 2, BT_ACC_READ);
    uint64_t m = c->code_bits == 64 ? ~0ull : 0xffffffffull;
    uint64_t base = bt_read(c, (lin + 2) & m, bsz, BT_ACC_READ);
    if (c->code_bits == 64) {
        if (!x86_is_canonical(base)) bt_gp0(c);
    } else if (i->opsize == 16) {
        base &= 0xffffff;
    }
    struct x86_dtable *t = i->mnemonic == ZYDIS_MNEMONIC_LGDT ? &c->s.gdtr : &c->s.idtr;
    t->base = base;
    t->limit = limit;
    next(c);
}
BT_HANDLER(LGDT, op_lgdt_lidt);
BT_HANDLER(LIDT, op_lgdt_lidt);

static void op_sgdt_sidt(struct bt_cpu *c, const struct bt_insn *i)
{
    if (i->op[0].kind != BT_OPK_MEM) bt_ud(c);
    const struct x86_dtable *t = i->mnemonic == ZYDIS_MNEMONIC_SGDT ? &c->s.gdtr : &c->s.idtr;
    unsigned bsz = c->code_bits == 64 ? 8 : 4;
    uint8_t buf[10];
    memcpy(buf, &t->limit, 2);
    uint64_t base = bsz == 8 ? t->base : (t->base & 0xffffffffull);
    memcpy(buf + 2, &base, bsz);
    uint64_t lin = bt_op_lin(c, i, 0, 2 + bsz, BT_ACC_WRITE);
    bt_write_buf(c, lin, buf, 2 + bsz, BT_ACC_WRITE);
    next(c);
}
BT_HANDLER(SGDT, op_sgdt_sidt);
BT_HANDLER(SIDT, op_sgdt_sidt);

static void load_system_seg(struct bt_cpu *c, int seg, uint16_t sel)
{
    uint16_t e = sel & 0xfffc;
    struct x86_seg *s = &c->s.seg[seg];
    if (e == 0) {
        if (seg == SEG_TR) bt_gp0(c);
        memset(s, 0, sizeof(*s));
        s->sel = sel;
        s->unusable = 1;
        return;
    }
    if (sel & 4) bt_raise(c, X86_GP, e);
    uint64_t d, hi = 0;
    if (!bt_desc_read(c, sel, &d)) bt_raise(c, X86_GP, e);
    unsigned t = DESC_TYPE(d);
    bool ok = !DESC_S(d) && (seg == SEG_LDTR ? t == 2 : (t == 9 || (!c->long_mode && t == 1)));
    if (!ok) bt_raise(c, X86_GP, e);
    if (c->long_mode) {
        if (!bt_desc_read_hi(c, sel, &hi)) bt_raise(c, X86_GP, e);
        if ((hi >> 40) & 0x1f) bt_raise(c, X86_GP, e);
        if (!x86_is_canonical(((hi & 0xffffffffull) << 32) | ((d >> 16) & 0xffffff) |
                              (((d >> 56) & 0xff) << 24)))
            bt_raise(c, X86_GP, e);
    }
    if (!DESC_P(d)) bt_raise(c, X86_NP, e);
    if (seg == SEG_TR) {
        /* mark busy in the GDT */
        d |= 2ull << 40;
        uint64_t lin = c->s.gdtr.base + (sel & ~7u) + 5;
        if (!c->long_mode) lin &= 0xffffffffull;
        bt_write(c, lin, 1, (d >> 40) & 0xff, BT_ACC_WRITE | BT_ACC_IMPLICIT);
    }
    bt_desc_to_seg(d, sel, s);
    if (c->long_mode) s->base |= (hi & 0xffffffffull) << 32;
}

static void op_lldt_ltr(struct bt_cpu *c, const struct bt_insn *i)
{
    if (!bt_pmode(c)) bt_ud(c);
    need_cpl0(c);
    uint16_t sel = (uint16_t)bt_op_read(c, i, 0);
    load_system_seg(c, i->mnemonic == ZYDIS_MNEMONIC_LLDT ? SEG_LDTR : SEG_TR, sel);
    next(c);
}
BT_HANDLER(LLDT, op_lldt_ltr);
BT_HANDLER(LTR, op_lldt_ltr);

static void op_sldt_str(struct bt_cpu *c, const struct bt_insn *i)
{
    if (!bt_pmode(c)) bt_ud(c);
    int seg = i->mnemonic == ZYDIS_MNEMONIC_SLDT ? SEG_LDTR : SEG_TR;
    bt_op_write(c, i, 0, c->s.seg[seg].sel);
    next(c);
}
BT_HANDLER(SLDT, op_sldt_str);
BT_HANDLER(STR, op_sldt_str);

static void op_invlpg(struct bt_cpu *c, const struct bt_insn *i)
{
    if (i->op[0].kind != BT_OPK_MEM) bt_ud(c);
    need_cpl0(c);
    uint64_t ea = bt_op_ea(c, i, 0);
    uint64_t lin = ea;
    if (c->code_bits != 64)
        lin = (c->s.seg[i->op[0].seg].base + ea) & 0xffffffffull;
    else if (i->op[0].seg == SEG_FS || i->op[0].seg == SEG_GS)
        lin += c->s.seg[i->op[0].seg].base;
    bt_tlb_flush_page(c, lin);
    next(c);
}
BT_HANDLER(INVLPG, op_invlpg);

static void op_cache(struct bt_cpu *c, const struct bt_insn *i)
{
    need_cpl0(c);
    next(c);
}
BT_HANDLER(INVD, op_cache);
BT_HANDLER(WBINVD, op_cache);

static void op_hlt(struct bt_cpu *c, const struct bt_insn *i)
{
    need_cpl0(c);
    next(c);
    c->halted = true; /* get_state reports it as MP_HALTED */
    c->exit_now = true;
}
BT_HANDLER(HLT, op_hlt);

/* ---- CPUID, TSC, MSRs ----------------------------------------------------------------------- */

static void op_cpuid(struct bt_cpu *c, const struct bt_insn *i)
{
    uint32_t out[4] = {0, 0, 0, 0};
    uint32_t fn = (uint32_t)c->s.gpr[RAX], idx = (uint32_t)c->s.gpr[RCX];
    if (c->vm) cpuid_query(&c->vm->cpuid, fn, idx, apic_id(c), out);
    if (fn == 1 && !(c->s.apic_base & (1u << 11))) out[3] &= ~(1u << 9); /* APIC disabled */
    c->s.gpr[RAX] = out[0];
    c->s.gpr[RBX] = out[1];
    c->s.gpr[RCX] = out[2];
    c->s.gpr[RDX] = out[3];
    next(c);
}
BT_HANDLER(CPUID, op_cpuid);

uint64_t bt_rdtsc(struct bt_cpu *c)
{
    return bt_glue_tsc(c);
}

static void op_rdtsc(struct bt_cpu *c, const struct bt_insn *i)
{
    if ((c->s.cr4 & X86_CR4_TSD) && c->cpl != 0) bt_gp0(c);
    uint64_t t = bt_rdtsc(c);
    c->s.gpr[RAX] = (uint32_t)t;
    c->s.gpr[RDX] = t >> 32;
    if (i->mnemonic == ZYDIS_MNEMONIC_RDTSCP) c->s.gpr[RCX] = (uint32_t)c->s.tsc_aux;
    next(c);
}
BT_HANDLER(RDTSC, op_rdtsc);
BT_HANDLER(RDTSCP, op_rdtsc);

static bool pat_valid(uint64_t v)
{
    for (int k = 0; k < 8; k++) {
        unsigned t = (v >> (8 * k)) & 0xff;
        if (t != 0 && t != 1 && t != 4 && t != 5 && t != 6 && t != 7) return false;
    }
    return true;
}

uint64_t bt_rdmsr(struct bt_cpu *c, uint32_t msr)
{
    const struct x86_state *s = &c->s;
    switch (msr) {
    case MSR_IA32_TSC: return bt_rdtsc(c);
    case MSR_IA32_TSC_ADJUST: return s->tsc_adjust;
    case MSR_IA32_APIC_BASE: return s->apic_base;
    case MSR_IA32_FEATURE_CONTROL: return 1; /* locked, VMX off */
    case MSR_IA32_BIOS_SIGN_ID: return 0;
    case 0x17: return 0; /* IA32_PLATFORM_ID */
    case MSR_IA32_MTRRCAP: return 0;
    case MSR_MTRR_DEF_TYPE: return 0;
    case MSR_IA32_SYSENTER_CS: return s->sysenter_cs;
    case MSR_IA32_SYSENTER_ESP: return s->sysenter_esp;
    case MSR_IA32_SYSENTER_EIP: return s->sysenter_eip;
    case MSR_IA32_MCG_CAP: return 0;
    case MSR_IA32_MCG_STATUS: return 0;
    case MSR_IA32_MISC_ENABLE: return s->misc_enable;
    case MSR_IA32_PAT: return s->pat;
    case MSR_IA32_TSC_DEADLINE: return bt_glue_get_tsc_deadline(c);
    case MSR_EFER: return s->efer;
    case MSR_STAR: return s->star;
    case MSR_LSTAR: return s->lstar;
    case MSR_CSTAR: return s->cstar;
    case MSR_SFMASK: return s->sfmask;
    case MSR_FS_BASE: return s->seg[SEG_FS].base;
    case MSR_GS_BASE: return s->seg[SEG_GS].base;
    case MSR_KERNEL_GS_BASE: return s->kernel_gs_base;
    case MSR_TSC_AUX: return s->tsc_aux;
    default:
        if (msr >= 0x200 && msr <= 0x26f) return 0; /* MTRR ranges: none configured */
        bt_gp0(c);
    }
}

static void need_canonical(struct bt_cpu *c, uint64_t v)
{
    if (!x86_is_canonical(v)) bt_gp0(c);
}

void bt_wrmsr(struct bt_cpu *c, uint32_t msr, uint64_t v)
{
    struct x86_state *s = &c->s;
    switch (msr) {
    case MSR_IA32_TSC: { /* SDM 17.17.3: the same delta goes into IA32_TSC_ADJUST */
        uint64_t delta = v - bt_rdtsc(c);
        c->tsc_offset += delta;
        s->tsc_adjust += delta;
        return;
    }
    case MSR_IA32_TSC_ADJUST: /* and a write to it moves the TSC by its change */
        c->tsc_offset += v - s->tsc_adjust;
        s->tsc_adjust = v;
        return;
    case MSR_IA32_APIC_BASE: {
        uint64_t allowed = (1u << 8) | (1u << 11) | (phys_addr_mask(c) & ~0xfffull);
        if (v & ~allowed) bt_gp0(c);
        if (!bt_glue_set_apic_base(c, v, (unsigned)__builtin_popcountll(phys_addr_mask(c))))
            bt_gp0(c);
        s->apic_base = v;
        bt_tlb_flush(c, true);
        return;
    }
    case MSR_IA32_BIOS_SIGN_ID: return;
    case MSR_IA32_FEATURE_CONTROL: bt_gp0(c); /* locked */
    case MSR_MTRR_DEF_TYPE: return;
    case MSR_IA32_MCG_STATUS: return;
    case MSR_IA32_SYSENTER_CS: s->sysenter_cs = v & 0xffff; return;
    case MSR_IA32_SYSENTER_ESP:
        need_canonical(c, v);
        s->sysenter_esp = v;
        return;
    case MSR_IA32_SYSENTER_EIP:
        need_canonical(c, v);
        s->sysenter_eip = v;
        return;
    case MSR_IA32_MISC_ENABLE: s->misc_enable = v; return;
    case MSR_IA32_PAT:
        if (!pat_valid(v)) bt_gp0(c);
        s->pat = v;
        return;
    case MSR_IA32_TSC_DEADLINE: bt_glue_set_tsc_deadline(c, v); return;
    case MSR_EFER: {
        uint64_t allowed = X86_EFER_SCE | X86_EFER_LME | X86_EFER_LMA | X86_EFER_NXE;
        if (v & ~allowed) bt_gp0(c);
        if ((s->cr0 & X86_CR0_PG) && ((v ^ s->efer) & X86_EFER_LME)) bt_gp0(c);
        uint64_t nv = (v & ~X86_EFER_LMA) | (s->efer & X86_EFER_LMA);
        if ((nv ^ s->efer) & X86_EFER_NXE) bt_tlb_flush(c, true);
        s->efer = nv;
        bt_update_mode(c);
        return;
    }
    case MSR_STAR: s->star = v; return;
    case MSR_LSTAR:
        need_canonical(c, v);
        s->lstar = v;
        return;
    case MSR_CSTAR:
        need_canonical(c, v);
        s->cstar = v;
        return;
    case MSR_SFMASK:
        if (v >> 32) bt_gp0(c);
        s->sfmask = v;
        return;
    case MSR_FS_BASE:
        need_canonical(c, v);
        s->seg[SEG_FS].base = v;
        return;
    case MSR_GS_BASE:
        need_canonical(c, v);
        s->seg[SEG_GS].base = v;
        return;
    case MSR_KERNEL_GS_BASE:
        need_canonical(c, v);
        s->kernel_gs_base = v;
        return;
    case MSR_TSC_AUX:
        if (v >> 32) bt_gp0(c);
        s->tsc_aux = v;
        return;
    default:
        if (msr >= 0x200 && msr <= 0x26f) return;
        bt_gp0(c);
    }
}

static void op_rdmsr(struct bt_cpu *c, const struct bt_insn *i)
{
    need_cpl0(c);
    uint64_t v = bt_rdmsr(c, (uint32_t)c->s.gpr[RCX]);
    c->s.gpr[RAX] = (uint32_t)v;
    c->s.gpr[RDX] = v >> 32;
    next(c);
}
BT_HANDLER(RDMSR, op_rdmsr);

static void op_wrmsr(struct bt_cpu *c, const struct bt_insn *i)
{
    need_cpl0(c);
    uint64_t v = (c->s.gpr[RDX] << 32) | (uint32_t)c->s.gpr[RAX];
    bt_wrmsr(c, (uint32_t)c->s.gpr[RCX], v);
    next(c);
}
BT_HANDLER(WRMSR, op_wrmsr);

/* ---- SWAPGS, SYSCALL/SYSRET, SYSENTER/SYSEXIT ---------------------------------------------- */

static void op_swapgs(struct bt_cpu *c, const struct bt_insn *i)
{
    if (c->code_bits != 64) bt_ud(c);
    need_cpl0(c);
    uint64_t t = c->s.seg[SEG_GS].base;
    c->s.seg[SEG_GS].base = c->s.kernel_gs_base;
    c->s.kernel_gs_base = t;
    next(c);
}
BT_HANDLER(SWAPGS, op_swapgs);

static void flat_seg(struct x86_seg *s, uint16_t sel, uint8_t type, unsigned dpl, bool l, bool db)
{
    memset(s, 0, sizeof(*s));
    s->sel = sel;
    s->limit = 0xffffffff;
    s->type = type;
    s->s = 1;
    s->dpl = dpl;
    s->present = 1;
    s->l = l;
    s->db = db;
    s->g = 1;
}

static void op_syscall(struct bt_cpu *c, const struct bt_insn *i)
{
    /* Intel: SYSCALL exists only in 64-bit mode. */
    if (c->code_bits != 64 || !(c->s.efer & X86_EFER_SCE)) bt_ud(c);
    if (c->cpl == 3) c->ustat.syscalls++;
    struct x86_state *s = &c->s;
    uint16_t sel = (uint16_t)(s->star >> 32) & 0xfffc;
    s->gpr[RCX] = c->next_rip;
    s->gpr[R11] = s->rflags & ~(uint64_t)X86_FLAG_RF;
    flat_seg(&s->seg[SEG_CS], sel, 0xb, 0, true, false);
    flat_seg(&s->seg[SEG_SS], (uint16_t)(sel + 8), 0x3, 0, false, true);
    s->rflags &= ~(s->sfmask | X86_FLAG_RF);
    s->rflags |= X86_FLAG_FIXED;
    s->rip = s->lstar;
    bt_update_mode(c);
}
BT_HANDLER(SYSCALL, op_syscall);

static void op_sysret(struct bt_cpu *c, const struct bt_insn *i)
{
    if (!(c->s.efer & X86_EFER_SCE) || c->code_bits != 64) bt_ud(c);
    need_cpl0(c);
    struct x86_state *s = &c->s;
    uint16_t base = (uint16_t)(s->star >> 48);
    bool to64 = i->opsize == 64;
    if (to64 && !x86_is_canonical(s->gpr[RCX])) bt_gp0(c);
    if (to64)
        flat_seg(&s->seg[SEG_CS], (uint16_t)((base + 16) | 3), 0xb, 3, true, false);
    else
        flat_seg(&s->seg[SEG_CS], (uint16_t)(base | 3), 0xb, 3, false, true);
    /* SS: only the selector changes architecturally; the hidden part is the flat ring-3 one. */
    flat_seg(&s->seg[SEG_SS], (uint16_t)((base + 8) | 3), 0x3, 3, false, true);
    s->rflags = (s->gpr[R11] & 0x3c7fd7ull) | X86_FLAG_FIXED;
    s->rip = to64 ? s->gpr[RCX] : (uint32_t)s->gpr[RCX];
    bt_update_mode(c);
}
BT_HANDLER(SYSRET, op_sysret);

static void op_sysenter(struct bt_cpu *c, const struct bt_insn *i)
{
    struct x86_state *s = &c->s;
    if (!(s->cr0 & X86_CR0_PE)) bt_gp0(c);
    uint16_t sel = (uint16_t)s->sysenter_cs & 0xfffc;
    if (sel == 0) bt_gp0(c);
    if (c->cpl == 3) c->ustat.syscalls++;
    bool lm = c->long_mode;
    s->rflags &= ~(uint64_t)(X86_FLAG_VM | X86_FLAG_IF | X86_FLAG_RF);
    flat_seg(&s->seg[SEG_CS], sel, 0xb, 0, lm, !lm);
    flat_seg(&s->seg[SEG_SS], (uint16_t)(sel + 8), 0x3, 0, false, true);
    s->gpr[RSP] = lm ? s->sysenter_esp : (uint32_t)s->sysenter_esp;
    s->rip = lm ? s->sysenter_eip : (uint32_t)s->sysenter_eip;
    bt_update_mode(c);
}
BT_HANDLER(SYSENTER, op_sysenter);

static void op_sysexit(struct bt_cpu *c, const struct bt_insn *i)
{
    struct x86_state *s = &c->s;
    if (!(s->cr0 & X86_CR0_PE) || c->cpl != 0) bt_gp0(c);
    uint16_t base = (uint16_t)s->sysenter_cs & 0xfffc;
    if (base == 0) bt_gp0(c);
    bool to64 = i->opsize == 64;
    if (to64) {
        if (!x86_is_canonical(s->gpr[RDX]) || !x86_is_canonical(s->gpr[RCX])) bt_gp0(c);
        flat_seg(&s->seg[SEG_CS], (uint16_t)((base + 32) | 3), 0xb, 3, true, false);
        flat_seg(&s->seg[SEG_SS], (uint16_t)((base + 40) | 3), 0x3, 3, false, true);
        s->rip = s->gpr[RDX];
        s->gpr[RSP] = s->gpr[RCX];
    } else {
        flat_seg(&s->seg[SEG_CS], (uint16_t)((base + 16) | 3), 0xb, 3, false, true);
        flat_seg(&s->seg[SEG_SS], (uint16_t)((base + 24) | 3), 0x3, 3, false, true);
        s->rip = (uint32_t)s->gpr[RDX];
        s->gpr[RSP] = (uint32_t)s->gpr[RCX];
    }
    bt_update_mode(c);
}
BT_HANDLER(SYSEXIT, op_sysexit);

/* ---- port I/O ------------------------------------------------------------------------------- */

/* CPL > IOPL (or virtual-8086 mode): every port of the access must be allowed by the TSS bitmap. */
static void io_check(struct bt_cpu *c, uint16_t port, unsigned size)
{
    if (!(c->s.cr0 & X86_CR0_PE)) return;
    if (!bt_vm86(c) && c->cpl <= iopl_of(c)) return;
    const struct x86_seg *tr = &c->s.seg[SEG_TR];
    if (tr->unusable || !tr->present || (tr->type != 9 && tr->type != 0xb) || tr->limit < 0x67)
        bt_gp0(c);
    uint64_t m = c->long_mode ? ~0ull : 0xffffffffull;
    uint16_t iomap = (uint16_t)bt_read(c, (tr->base + 0x66) & m, 2, BT_ACC_READ | BT_ACC_IMPLICIT);
    uint64_t off = (uint64_t)iomap + port / 8;
    if (off + 1 > tr->limit) bt_gp0(c);
    uint16_t bits = (uint16_t)bt_read(c, (tr->base + off) & m, 2, BT_ACC_READ | BT_ACC_IMPLICIT);
    if ((bits >> (port & 7)) & ((1u << size) - 1)) bt_gp0(c);
}

static void pio(struct bt_cpu *c, uint16_t port, uint8_t *data, unsigned size, bool write)
{
    if (c->vm)
        vm_pio(c->vm, port, data, size, write);
    else if (!write)
        memset(data, 0xff, size);
}

static uint16_t io_port(struct bt_cpu *c, const struct bt_insn *i, int n)
{
    const struct bt_operand *o = &i->op[n];
    if (o->kind == BT_OPK_IMM) return (uint16_t)(o->disp & 0xff);
    return (uint16_t)c->s.gpr[RDX];
}

static void op_in(struct bt_cpu *c, const struct bt_insn *i)
{
    unsigned size = i->op[0].size;
    uint16_t port = io_port(c, i, 1);
    io_check(c, port, size);
    uint64_t v = 0;
    pio(c, port, (uint8_t *)&v, size, false);
    bt_gpr_write(c, RAX, size, v);
    next(c);
}
BT_HANDLER(IN, op_in);

static void op_out(struct bt_cpu *c, const struct bt_insn *i)
{
    unsigned size = i->op[1].size;
    uint16_t port = io_port(c, i, 0);
    io_check(c, port, size);
    uint64_t v = bt_gpr_read(c, RAX, size);
    pio(c, port, (uint8_t *)&v, size, true);
    next(c);
}
BT_HANDLER(OUT, op_out);

/* INS/OUTS with and without REP.  A long REP stops after a bounded number of iterations with RIP
 * left on the instruction (registers updated per iteration, as an interrupted REP does), so
 * interrupts and kicks are taken in between. */
#define IO_REP_CHUNK 4096

static unsigned str_size(const struct bt_insn *i)
{
    switch (i->mnemonic) {
    case ZYDIS_MNEMONIC_INSB:
    case ZYDIS_MNEMONIC_OUTSB: return 1;
    case ZYDIS_MNEMONIC_INSW:
    case ZYDIS_MNEMONIC_OUTSW: return 2;
    default: return 4;
    }
}

static void op_ins_outs(struct bt_cpu *c, const struct bt_insn *i)
{
    bool in = i->mnemonic == ZYDIS_MNEMONIC_INSB || i->mnemonic == ZYDIS_MNEMONIC_INSW ||
              i->mnemonic == ZYDIS_MNEMONIC_INSD;
    unsigned size = str_size(i);
    uint16_t port = (uint16_t)c->s.gpr[RDX];
    io_check(c, port, size);
    uint64_t am = bt_bits_mask(i->addrsize);
    bool rep = (i->pfx & (BT_PFX_REP | BT_PFX_REPNE)) != 0;
    int idx = in ? RDI : RSI;
    int seg = SEG_ES;
    if (!in) {
        seg = SEG_DS;
        for (unsigned k = 0; k < i->nops; k++)
            if (i->op[k].kind == BT_OPK_MEM) seg = i->op[k].seg;
    }
    int64_t step = (c->s.rflags & X86_FLAG_DF) ? -(int64_t)size : (int64_t)size;
    for (unsigned n = 0;; n++) {
        if (rep && (c->s.gpr[RCX] & am) == 0) break;
        if (n == IO_REP_CHUNK) {
            c->s.rip = c->insn_rip;
            return;
        }
        uint64_t off = c->s.gpr[idx] & am;
        uint64_t v = 0;
        if (in) {
            uint64_t lin = bt_seg_linear(c, seg, off, size, BT_ACC_WRITE);
            bt_probe_write(c, lin, size, BT_ACC_WRITE);
            pio(c, port, (uint8_t *)&v, size, false);
            bt_write(c, lin, size, v, BT_ACC_WRITE);
        } else {
            uint64_t lin = bt_seg_linear(c, seg, off, size, BT_ACC_READ);
            v = bt_read(c, lin, size, BT_ACC_READ);
            pio(c, port, (uint8_t *)&v, size, true);
        }
        c->s.gpr[idx] = (c->s.gpr[idx] & ~am) | ((c->s.gpr[idx] + (uint64_t)step) & am);
        if (i->addrsize == 32) c->s.gpr[idx] &= 0xffffffffull;
        if (!rep) break;
        uint64_t rcx = (c->s.gpr[RCX] - 1) & am;
        c->s.gpr[RCX] = i->addrsize == 32 ? rcx : ((c->s.gpr[RCX] & ~am) | rcx);
    }
    next(c);
}
BT_HANDLER(INSB, op_ins_outs);
BT_HANDLER(INSW, op_ins_outs);
BT_HANDLER(INSD, op_ins_outs);
BT_HANDLER(OUTSB, op_ins_outs);
BT_HANDLER(OUTSW, op_ins_outs);
BT_HANDLER(OUTSD, op_ins_outs);
