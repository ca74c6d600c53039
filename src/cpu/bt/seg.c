/* Segmentation for the software CPU: mode derivation (CPL, code/stack size), descriptor-table
 * reads, segment-register loads with every protected-mode check, far JMP/CALL/RET through code
 * segments and call gates, and the segment instructions (MOV/PUSH/POP Sreg, LDS..LSS,
 * LAR/LSL/VERR/VERW).
 *
 * Trust: selectors, descriptors and stack contents are guest data; each check below is the one
 * the SDM (Vol.2 instruction pages, Vol.3 ch. 5) specifies, and a failed check raises the
 * architectural fault with the selector error code.  Architectural state is changed only after
 * the last check that can fault. */
#include <stdatomic.h>
#include <string.h>

#include "cpu/bt/sys.h"
#include "util/log.h"

void bt_log_unsupported(const char *what)
{
    /* A handful of kinds; a per-call-site static would need one flag each, so a small table. */
    static const char *seen[16];
    static _Atomic unsigned nseen;
    unsigned n = atomic_load(&nseen);
    for (unsigned i = 0; i < n && i < 16; i++)
        if (seen[i] == what) return;
    if (n < 16) {
        seen[n] = what;
        atomic_store(&nseen, n + 1);
    }
    log_warn("software CPU: the guest used %s, which is not supported", what);
}

void bt_update_mode(struct bt_cpu *c)
{
    const struct x86_state *s = &c->s;
    unsigned was = c->cpl;
    c->paging = (s->cr0 & X86_CR0_PG) != 0;
    c->long_mode = (s->efer & X86_EFER_LMA) != 0;
    if (!(s->cr0 & X86_CR0_PE)) {
        c->cpl = 0;
        c->code_bits = s->seg[SEG_CS].db ? 32 : 16;
        c->stack_bits = s->seg[SEG_SS].db ? 32 : 16;
    } else if (s->rflags & X86_FLAG_VM) {
        c->cpl = 3;
        c->code_bits = 16;
        c->stack_bits = 16;
    } else {
        /* CPL is SS.DPL (as Intel keeps it): right even between setting CR0.PE and the far jump
         * that reloads CS, and with a null SS in 64-bit mode (its DPL is set to the CPL). */
        c->cpl = s->seg[SEG_SS].dpl & 3;
        if (c->long_mode && s->seg[SEG_CS].l) {
            c->code_bits = 64;
            c->stack_bits = 64;
        } else {
            c->code_bits = s->seg[SEG_CS].db ? 32 : 16;
            c->stack_bits = s->seg[SEG_SS].db ? 32 : 16;
        }
    }
    if (was != 3 && c->cpl == 3) {
        c->ustat.since = c->icount;
    } else if (was == 3 && c->cpl != 3) {
        c->ustat.icount += c->icount - c->ustat.since;
        c->ustat.entries++;
    }
}

/* ---- descriptor tables ---------------------------------------------------------------------- */

static bool table_lin(struct bt_cpu *c, uint16_t sel, unsigned off, uint64_t *lin)
{
    uint64_t base;
    uint32_t limit;
    if (sel & 4) {
        const struct x86_seg *l = &c->s.seg[SEG_LDTR];
        if (l->unusable || !l->present || (l->sel & ~3) == 0) return false;
        base = l->base;
        limit = l->limit;
    } else {
        base = c->s.gdtr.base;
        limit = c->s.gdtr.limit;
    }
    uint64_t idx = sel & ~7u;
    if (idx + off + 7 > limit) return false;
    *lin = base + idx + off;
    if (!c->long_mode) *lin &= 0xffffffffull;
    return true;
}

bool bt_desc_read(struct bt_cpu *c, uint16_t sel, uint64_t *d)
{
    uint64_t lin;
    if (!table_lin(c, sel, 0, &lin)) return false;
    *d = bt_read(c, lin, 8, BT_ACC_READ | BT_ACC_IMPLICIT);
    return true;
}

bool bt_desc_read_hi(struct bt_cpu *c, uint16_t sel, uint64_t *hi)
{
    uint64_t lin;
    if (!table_lin(c, sel, 8, &lin)) return false;
    *hi = bt_read(c, lin, 8, BT_ACC_READ | BT_ACC_IMPLICIT);
    return true;
}

void bt_desc_set_accessed(struct bt_cpu *c, uint16_t sel, uint64_t d)
{
    if (!DESC_S(d) || (DESC_TYPE(d) & 1)) return;
    uint64_t lin;
    if (!table_lin(c, sel, 0, &lin)) return;
    uint8_t b = (uint8_t)(d >> 40) | 1;
    bt_write(c, lin + 5, 1, b, BT_ACC_WRITE | BT_ACC_IMPLICIT);
}

void bt_desc_to_seg(uint64_t d, uint16_t sel, struct x86_seg *s)
{
    memset(s, 0, sizeof(*s));
    s->sel = sel;
    s->base = ((d >> 16) & 0xffffff) | (((d >> 56) & 0xff) << 24);
    uint32_t limit = (uint32_t)((d & 0xffff) | (((d >> 48) & 0xf) << 16));
    s->g = (d >> 55) & 1;
    s->limit = s->g ? (limit << 12) | 0xfff : limit;
    s->type = DESC_TYPE(d);
    s->s = DESC_S(d);
    s->dpl = DESC_DPL(d);
    s->present = DESC_P(d);
    s->avl = (d >> 52) & 1;
    s->l = DESC_L(d);
    s->db = DESC_DB(d);
}

void bt_nullify_data_segs(struct bt_cpu *c)
{
    static const int segs[] = {SEG_ES, SEG_DS, SEG_FS, SEG_GS};
    for (unsigned k = 0; k < 4; k++) {
        struct x86_seg *s = &c->s.seg[segs[k]];
        if (s->unusable) continue;
        bool conforming_code = (s->type & 0xc) == 0xc;
        if (s->s && !conforming_code && s->dpl < c->cpl) {
            s->sel = 0;
            s->unusable = 1;
            s->present = 0;
        }
    }
}

void bt_set_cs(struct bt_cpu *c, uint16_t sel, uint64_t d, unsigned cpl)
{
    bt_desc_set_accessed(c, sel, d);
    bt_desc_to_seg(d | (1ull << 40), (uint16_t)((sel & ~3u) | cpl), &c->s.seg[SEG_CS]);
    if (c->long_mode && c->s.seg[SEG_CS].l) c->s.seg[SEG_CS].base = 0;
}

/* ---- stack helpers -------------------------------------------------------------------------- */

uint64_t bt_stack_mask(const struct bt_cpu *c)
{
    return bt_bits_mask(c->stack_bits);
}

uint64_t bt_stack_read(struct bt_cpu *c, uint64_t off, unsigned size)
{
    uint64_t addr = (c->s.gpr[RSP] + off) & bt_stack_mask(c);
    uint64_t lin = bt_seg_linear(c, SEG_SS, addr, size, BT_ACC_READ);
    return bt_read(c, lin, size, BT_ACC_READ);
}

uint64_t bt_stack_lin(struct bt_cpu *c, const struct x86_seg *ss, unsigned stack_bits,
                      uint64_t addr, unsigned size, uint32_t errc)
{
    if (stack_bits == 64) {
        if (!x86_is_canonical(addr) || !x86_is_canonical(addr + size - 1))
            bt_raise(c, X86_SS, errc);
        return addr;
    }
    if (bt_pmode(c) || (c->s.cr0 & X86_CR0_PE)) {
        uint64_t last = addr + size - 1;
        if (ss->type & 4) { /* expand-down */
            uint64_t upper = ss->db ? 0xffffffffull : 0xffffull;
            if (addr <= ss->limit || last > upper) bt_raise(c, X86_SS, errc);
        } else if (last > ss->limit) {
            bt_raise(c, X86_SS, errc);
        }
    } else if (addr + size - 1 > ss->limit) {
        bt_raise(c, X86_SS, errc);
    }
    return (ss->base + addr) & 0xffffffffull;
}

uint64_t bt_frame_push(struct bt_cpu *c, const struct x86_seg *ss, unsigned stack_bits, uint64_t sp,
                       const uint64_t *vals, unsigned n, unsigned size, int acc, uint32_t errc)
{
    uint64_t mask = bt_bits_mask(stack_bits);
    uint64_t new_sp = (sp - (uint64_t)n * size) & mask;
    uint64_t lin[40]; /* at most 31 call-gate parameters + SS, SP, CS, IP */
    if (n > 40) n = 40;
    for (unsigned k = 0; k < n; k++) {
        uint64_t addr = (new_sp + (uint64_t)(n - 1 - k) * size) & mask;
        lin[k] = bt_stack_lin(c, ss, stack_bits, addr, size, errc);
        bt_probe_write(c, lin[k], size, acc | BT_ACC_WRITE);
    }
    for (unsigned k = 0; k < n; k++)
        bt_write(c, lin[k], size, vals[k], acc | BT_ACC_WRITE);
    return new_sp;
}

/* ---- segment register loads ----------------------------------------------------------------- */

static void load_real(struct bt_cpu *c, int seg, uint16_t sel)
{
    struct x86_seg *s = &c->s.seg[seg];
    s->sel = sel;
    s->base = (uint64_t)sel << 4;
    s->present = 1;
    s->unusable = 0;
    if (bt_vm86(c)) {
        s->limit = 0xffff;
        s->type = seg == SEG_CS ? 0xb : 0x3;
        s->s = 1;
        s->dpl = 3;
        s->db = 0;
        s->g = 0;
        s->l = 0;
    } else if (seg == SEG_CS) {
        /* Real-mode CS loads make the segment a 16-bit read/write/accessed one at CPL 0. */
        s->type = 0xb;
        s->s = 1;
        s->dpl = 0;
        s->db = 0;
        s->l = 0;
    }
}

void bt_load_seg(struct bt_cpu *c, int seg, uint16_t sel)
{
    if (!bt_pmode(c)) {
        load_real(c, seg, sel);
        if (seg == SEG_SS || seg == SEG_CS) bt_update_mode(c);
        return;
    }
    uint16_t errsel = sel & 0xfffc;
    unsigned rpl = sel & 3, cpl = c->cpl;
    struct x86_seg *s = &c->s.seg[seg];
    if ((sel & ~3u) == 0) {
        if (seg == SEG_SS) {
            /* 64-bit mode lets the kernel run with a null SS at CPL 0-2 (RPL must equal CPL). */
            if (c->code_bits != 64 || cpl == 3 || rpl != cpl) bt_gp0(c);
            memset(s, 0, sizeof(*s));
            s->sel = sel;
            s->unusable = 1;
            s->dpl = cpl;
            s->db = 1;
            bt_update_mode(c);
            return;
        }
        uint64_t keep_base = s->base;
        memset(s, 0, sizeof(*s));
        s->sel = sel;
        s->unusable = 1;
        if (c->code_bits == 64 && (seg == SEG_FS || seg == SEG_GS)) s->base = keep_base;
        return;
    }
    uint64_t d;
    if (!bt_desc_read(c, sel, &d)) bt_raise(c, X86_GP, errsel);
    unsigned dpl = DESC_DPL(d), type = DESC_TYPE(d);
    if (seg == SEG_SS) {
        if (rpl != cpl || !DESC_IS_DATA(d) || !(type & 2) || dpl != cpl)
            bt_raise(c, X86_GP, errsel);
        if (!DESC_P(d)) bt_raise(c, X86_SS, errsel);
    } else {
        bool readable_code = DESC_IS_CODE(d) && (type & 2);
        if (!DESC_IS_DATA(d) && !readable_code) bt_raise(c, X86_GP, errsel);
        bool conforming = DESC_IS_CODE(d) && (type & 4);
        if (!conforming && (rpl > dpl || cpl > dpl)) bt_raise(c, X86_GP, errsel);
        if (!DESC_P(d)) bt_raise(c, X86_NP, errsel);
    }
    bt_desc_set_accessed(c, sel, d);
    uint64_t keep_base = s->base;
    bt_desc_to_seg(d | (DESC_S(d) ? (1ull << 40) : 0), sel, s);
    /* In 64-bit mode the FS/GS bases come from the MSRs: a selector load sets only the low 32
     * bits (what the descriptor holds), as hardware does; other bases are ignored there. */
    (void)keep_base;
    if (seg == SEG_SS) bt_update_mode(c);
}

/* ---- far transfers -------------------------------------------------------------------------- */

static void far_real(struct bt_cpu *c, uint16_t sel, uint64_t off, bool is_call, unsigned opsize)
{
    unsigned sz = opsize / 8;
    if (is_call) {
        uint64_t vals[2] = {c->s.seg[SEG_CS].sel, c->next_rip};
        uint64_t sp =
            bt_frame_push(c, &c->s.seg[SEG_SS], c->stack_bits, c->s.gpr[RSP], vals, 2, sz, 0, 0);
        /* Check the target before committing (CS limit applies to the new IP). */
        c->s.gpr[RSP] = (c->s.gpr[RSP] & ~bt_stack_mask(c)) | sp;
    }
    load_real(c, SEG_CS, sel);
    c->s.rip = off & bt_bits_mask(opsize == 64 ? 32 : opsize);
    bt_update_mode(c);
}

static void check_target_code(struct bt_cpu *c, uint16_t sel, uint64_t d)
{
    if (c->long_mode && DESC_L(d) && DESC_DB(d)) bt_raise(c, X86_GP, sel & 0xfffc);
}

/* Far CALL/JMP to a code segment of the same privilege (conforming or DPL == CPL). */
static void far_direct(struct bt_cpu *c, uint16_t sel, uint64_t d, uint64_t off, bool is_call,
                       unsigned opsize)
{
    unsigned cpl = c->cpl, rpl = sel & 3, dpl = DESC_DPL(d);
    uint16_t errsel = sel & 0xfffc;
    if (DESC_TYPE(d) & 4) {
        if (dpl > cpl) bt_raise(c, X86_GP, errsel);
    } else if (rpl > cpl || dpl != cpl) {
        bt_raise(c, X86_GP, errsel);
    }
    if (!DESC_P(d)) bt_raise(c, X86_NP, errsel);
    check_target_code(c, sel, d);
    struct x86_seg ncs;
    bt_desc_to_seg(d, sel, &ncs);
    bool to64 = c->long_mode && ncs.l;
    if (!to64) {
        off &= opsize == 16 ? 0xffff : 0xffffffffull;
        if (off > ncs.limit) bt_gp0(c);
    } else if (!x86_is_canonical(off)) {
        bt_gp0(c);
    }
    uint64_t sp = c->s.gpr[RSP];
    if (is_call) {
        uint64_t vals[2] = {c->s.seg[SEG_CS].sel, c->next_rip};
        sp = bt_frame_push(c, &c->s.seg[SEG_SS], c->stack_bits, sp, vals, 2, opsize / 8, 0, 0);
    }
    uint64_t m = bt_stack_mask(c);
    c->s.gpr[RSP] = (c->s.gpr[RSP] & ~m) | (sp & m);
    bt_set_cs(c, sel, d, cpl);
    c->s.rip = off;
    bt_update_mode(c);
}

static void far_gate(struct bt_cpu *c, uint16_t sel, uint64_t gate, bool is_call, unsigned opsize)
{
    unsigned cpl = c->cpl, rpl = sel & 3, gdpl = DESC_DPL(gate), gtype = DESC_TYPE(gate);
    uint16_t errsel = sel & 0xfffc;
    if (gdpl < cpl || gdpl < rpl) bt_raise(c, X86_GP, errsel);
    if (!DESC_P(gate)) bt_raise(c, X86_NP, errsel);
    uint16_t tsel = (uint16_t)(gate >> 16);
    uint64_t off = (gate & 0xffff) | ((gate >> 32) & 0xffff0000ull);
    unsigned gsize = (gtype == 0xc) ? 4 : 2, nparams = (gate >> 32) & 0x1f;
    if (c->long_mode) {
        uint64_t hi;
        if (!bt_desc_read_hi(c, sel, &hi)) bt_raise(c, X86_GP, errsel);
        if (((hi >> 8) & 0x1f) != 0) bt_raise(c, X86_GP, errsel);
        off |= (hi & 0xffffffffull) << 32;
        gsize = 8;
        nparams = 0;
    }
    uint16_t terr = tsel & 0xfffc;
    if (terr == 0) bt_gp0(c);
    uint64_t d;
    if (!bt_desc_read(c, tsel, &d)) bt_raise(c, X86_GP, terr);
    unsigned dpl = DESC_DPL(d);
    if (!DESC_IS_CODE(d) || dpl > cpl) bt_raise(c, X86_GP, terr);
    if (c->long_mode && !(DESC_L(d) && !DESC_DB(d))) bt_raise(c, X86_GP, terr);
    if (!DESC_P(d)) bt_raise(c, X86_NP, terr);
    bool conforming = DESC_TYPE(d) & 4;
    struct x86_seg ncs;
    bt_desc_to_seg(d, tsel, &ncs);
    bool to64 = c->long_mode;
    if (!to64) {
        if (gsize == 2) off &= 0xffff;
        if (off > ncs.limit) bt_gp0(c);
    } else if (!x86_is_canonical(off)) {
        bt_gp0(c);
    }
    if (!is_call) {
        if (!conforming && dpl != cpl) bt_raise(c, X86_GP, terr);
        bt_set_cs(c, tsel, d, cpl);
        c->s.rip = off;
        bt_update_mode(c);
        return;
    }
    if (!conforming && dpl < cpl) {
        /* Call to an inner ring: new stack from the TSS, parameters copied from the old one. */
        uint16_t nss_sel;
        uint64_t nsp;
        bt_tss_stack(c, dpl, 0, 0, &nss_sel, &nsp);
        struct x86_seg nss;
        unsigned nbits;
        if (c->long_mode) {
            memset(&nss, 0, sizeof(nss));
            nss.sel = (uint16_t)dpl;
            nss.unusable = 1;
            nss.dpl = dpl;
            nss.db = 1;
            nbits = 64;
            nss_sel = (uint16_t)dpl;
        } else {
            uint16_t e = nss_sel & 0xfffc;
            uint64_t sd;
            if (e == 0) bt_raise(c, X86_TS, 0);
            if (!bt_desc_read(c, nss_sel, &sd)) bt_raise(c, X86_TS, e);
            if ((nss_sel & 3) != dpl || DESC_DPL(sd) != dpl || !DESC_IS_DATA(sd) ||
                !(DESC_TYPE(sd) & 2))
                bt_raise(c, X86_TS, e);
            if (!DESC_P(sd)) bt_raise(c, X86_SS, e);
            bt_desc_to_seg(sd | (1ull << 40), nss_sel, &nss);
            nbits = nss.db ? 32 : 16;
        }
        uint64_t vals[4 + 32];
        unsigned n = 0;
        vals[n++] = c->s.seg[SEG_SS].sel;
        vals[n++] = c->s.gpr[RSP] & bt_stack_mask(c);
        for (unsigned p = 0; p < nparams; p++)
            vals[n++] = bt_stack_read(c, (uint64_t)(nparams - 1 - p) * gsize, gsize);
        vals[n++] = c->s.seg[SEG_CS].sel;
        vals[n++] = c->next_rip;
        if (nbits == 64) nsp &= ~0ull;
        uint64_t sp =
            bt_frame_push(c, &nss, nbits, nsp, vals, n, gsize, BT_ACC_IMPLICIT, nss_sel & 0xfffc);
        if (!c->long_mode) {
            uint64_t sd;
            bt_desc_read(c, nss_sel, &sd);
            bt_desc_set_accessed(c, nss_sel, sd);
        }
        c->s.seg[SEG_SS] = nss;
        c->s.gpr[RSP] = nbits == 16 ? ((c->s.gpr[RSP] & ~0xffffull) | sp) : sp;
        bt_set_cs(c, tsel, d, dpl);
        c->s.rip = off;
        bt_update_mode(c);
        return;
    }
    uint64_t vals[2] = {c->s.seg[SEG_CS].sel, c->next_rip};
    uint64_t sp =
        bt_frame_push(c, &c->s.seg[SEG_SS], c->stack_bits, c->s.gpr[RSP], vals, 2, gsize, 0, 0);
    uint64_t m = bt_stack_mask(c);
    c->s.gpr[RSP] = (c->s.gpr[RSP] & ~m) | (sp & m);
    bt_set_cs(c, tsel, d, cpl);
    c->s.rip = off;
    bt_update_mode(c);
}

void bt_far_jump(struct bt_cpu *c, uint16_t sel, uint64_t off, bool is_call, unsigned opsize)
{
    if (!bt_pmode(c)) {
        far_real(c, sel, off, is_call, opsize);
        return;
    }
    uint16_t errsel = sel & 0xfffc;
    if (errsel == 0) bt_gp0(c);
    uint64_t d;
    if (!bt_desc_read(c, sel, &d)) bt_raise(c, X86_GP, errsel);
    if (DESC_S(d)) {
        if (!DESC_IS_CODE(d)) bt_raise(c, X86_GP, errsel);
        far_direct(c, sel, d, off, is_call, opsize);
        return;
    }
    unsigned type = DESC_TYPE(d);
    if (type == 0xc || (!c->long_mode && type == 0x4)) {
        far_gate(c, sel, d, is_call, opsize);
        return;
    }
    if (!c->long_mode && (type == 0x5 || type == 0x1 || type == 0x9))
        bt_log_unsupported("a task switch (far JMP/CALL to a TSS or task gate)");
    bt_raise(c, X86_GP, errsel);
}

void bt_far_return(struct bt_cpu *c, unsigned opsize, uint16_t pop_extra)
{
    unsigned sz = opsize / 8;
    uint64_t off = bt_stack_read(c, 0, sz);
    uint16_t sel = (uint16_t)bt_stack_read(c, sz, sz);
    uint64_t m = bt_stack_mask(c);
    if (!bt_pmode(c)) {
        uint64_t sp = (c->s.gpr[RSP] + 2 * sz + pop_extra) & m;
        if ((off & 0xffffffffull) > c->s.seg[SEG_CS].limit && !bt_vm86(c)) bt_gp0(c);
        load_real(c, SEG_CS, sel);
        c->s.gpr[RSP] = (c->s.gpr[RSP] & ~m) | sp;
        c->s.rip = off & (sz == 2 ? 0xffff : 0xffffffffull);
        bt_update_mode(c);
        return;
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
    check_target_code(c, sel, d);
    struct x86_seg ncs;
    bt_desc_to_seg(d, sel, &ncs);
    bool to64 = c->long_mode && ncs.l;
    if (!to64) {
        off &= sz == 2 ? 0xffff : 0xffffffffull;
        if (off > ncs.limit) bt_gp0(c);
    } else if (!x86_is_canonical(off)) {
        bt_gp0(c);
    }
    if (rpl == cpl) {
        uint64_t sp = (c->s.gpr[RSP] + 2 * sz + pop_extra) & m;
        bt_set_cs(c, sel, d, cpl);
        c->s.gpr[RSP] = (c->s.gpr[RSP] & ~m) | sp;
        c->s.rip = off;
        bt_update_mode(c);
        return;
    }
    /* Return to an outer ring: SS:SP follow the parameters. */
    uint64_t nsp = bt_stack_read(c, 2 * sz + pop_extra, sz);
    uint16_t nss_sel = (uint16_t)bt_stack_read(c, 3 * sz + pop_extra, sz);
    struct x86_seg nss;
    uint16_t e = nss_sel & 0xfffc;
    if (e == 0) {
        if (!(to64 && rpl != 3)) bt_gp0(c);
        memset(&nss, 0, sizeof(nss));
        nss.sel = nss_sel;
        nss.unusable = 1;
        nss.dpl = rpl;
        nss.db = 1;
    } else {
        uint64_t sd;
        if (!bt_desc_read(c, nss_sel, &sd)) bt_raise(c, X86_GP, e);
        if ((nss_sel & 3) != rpl || DESC_DPL(sd) != rpl || !DESC_IS_DATA(sd) ||
            !(DESC_TYPE(sd) & 2))
            bt_raise(c, X86_GP, e);
        if (!DESC_P(sd)) bt_raise(c, X86_SS, e);
        bt_desc_set_accessed(c, nss_sel, sd);
        bt_desc_to_seg(sd | (1ull << 40), nss_sel, &nss);
    }
    bt_set_cs(c, sel, d, rpl);
    c->s.seg[SEG_SS] = nss;
    bt_update_mode(c);
    nsp += pop_extra;
    c->s.gpr[RSP] = c->stack_bits == 64   ? nsp
                    : c->stack_bits == 32 ? (nsp & 0xffffffffull)
                                          : ((c->s.gpr[RSP] & ~0xffffull) | (nsp & 0xffff));
    c->s.rip = off;
    bt_nullify_data_segs(c);
}

void bt_tss_stack(struct bt_cpu *c, unsigned dpl, unsigned ist, uint32_t ext, uint16_t *ss,
                  uint64_t *sp)
{
    const struct x86_seg *tr = &c->s.seg[SEG_TR];
    uint32_t terr = (tr->sel & 0xfffc) | ext;
    if (tr->unusable || !tr->present) bt_raise(c, X86_TS, terr);
    uint64_t base = tr->base;
    if (c->long_mode) {
        unsigned off = ist ? 36 + 8 * (ist - 1) : 4 + 8 * dpl;
        if (off + 7 > tr->limit) bt_raise(c, X86_TS, terr);
        *sp = bt_read(c, base + off, 8, BT_ACC_READ | BT_ACC_IMPLICIT);
        *ss = 0;
    } else if (tr->type & 8) {
        unsigned off = 4 + 8 * dpl;
        if (off + 5 > tr->limit) bt_raise(c, X86_TS, terr);
        *sp = bt_read(c, (base + off) & 0xffffffffull, 4, BT_ACC_READ | BT_ACC_IMPLICIT);
        *ss = (uint16_t)bt_read(c, (base + off + 4) & 0xffffffffull, 2,
                                BT_ACC_READ | BT_ACC_IMPLICIT);
    } else {
        unsigned off = 2 + 4 * dpl;
        if (off + 3 > tr->limit) bt_raise(c, X86_TS, terr);
        *sp = bt_read(c, (base + off) & 0xffffffffull, 2, BT_ACC_READ | BT_ACC_IMPLICIT);
        *ss = (uint16_t)bt_read(c, (base + off + 2) & 0xffffffffull, 2,
                                BT_ACC_READ | BT_ACC_IMPLICIT);
    }
}

/* ---- instruction handlers ------------------------------------------------------------------- */

static void op_lxs(struct bt_cpu *c, const struct bt_insn *i)
{
    int seg;
    switch (i->mnemonic) {
    case ZYDIS_MNEMONIC_LDS: seg = SEG_DS; break;
    case ZYDIS_MNEMONIC_LES: seg = SEG_ES; break;
    case ZYDIS_MNEMONIC_LFS: seg = SEG_FS; break;
    case ZYDIS_MNEMONIC_LGS: seg = SEG_GS; break;
    default: seg = SEG_SS; break;
    }
    if (i->op[1].kind != BT_OPK_MEM) bt_ud(c);
    unsigned sz = i->opsize / 8;
    uint64_t lin = bt_op_lin(c, i, 1, sz + 2, BT_ACC_READ);
    uint64_t off = bt_read(c, lin, sz, BT_ACC_READ);
    uint64_t m = c->code_bits == 64 ? ~0ull : 0xffffffffull;
    uint16_t sel = (uint16_t)bt_read(c, (lin + sz) & m, 2, BT_ACC_READ);
    bt_load_seg(c, seg, sel);
    bt_gpr_write(c, i->op[0].reg, sz, off); /* LSS makes no interrupt shadow (MOV/POP SS do) */
    c->s.rip = c->next_rip;
}
BT_HANDLER(LDS, op_lxs);
BT_HANDLER(LES, op_lxs);
BT_HANDLER(LFS, op_lxs);
BT_HANDLER(LGS, op_lxs);
BT_HANDLER(LSS, op_lxs);

/* LAR/LSL/VERR/VERW: checks that never fault on the selector; ZF reports the result. */
static bool visible_desc(struct bt_cpu *c, uint16_t sel, uint64_t *d)
{
    if ((sel & 0xfffc) == 0 || !bt_desc_read(c, sel, d)) return false;
    unsigned dpl = DESC_DPL(*d), rpl = sel & 3;
    bool conforming = DESC_IS_CODE(*d) && (DESC_TYPE(*d) & 4);
    if (!conforming && (dpl < c->cpl || dpl < rpl)) return false;
    return true;
}

static void set_zf(struct bt_cpu *c, bool z)
{
    if (z)
        c->s.rflags |= X86_FLAG_ZF;
    else
        c->s.rflags &= ~(uint64_t)X86_FLAG_ZF;
}

static void op_lar_lsl(struct bt_cpu *c, const struct bt_insn *i)
{
    if (!bt_pmode(c)) bt_ud(c);
    uint16_t sel = (uint16_t)bt_op_read(c, i, 1);
    uint64_t d;
    bool ok = visible_desc(c, sel, &d);
    bool lar = i->mnemonic == ZYDIS_MNEMONIC_LAR;
    if (ok && !DESC_S(d)) {
        unsigned t = DESC_TYPE(d);
        /* valid system types: LDT and available/busy TSS everywhere, call gates for LAR only
         * (legacy: also 16-bit TSS/gates, task gates) */
        bool valid;
        if (c->long_mode)
            valid = t == 2 || t == 9 || t == 0xb || (lar && t == 0xc);
        else
            valid = t == 1 || t == 2 || t == 3 || t == 9 || t == 0xb ||
                    (lar && (t == 4 || t == 5 || t == 0xc));
        ok = valid;
    }
    if (ok) {
        unsigned sz = i->opsize / 8;
        uint64_t v;
        if (lar) {
            v = d >> 32 & 0x00f0ff00ull;
        } else {
            struct x86_seg s;
            bt_desc_to_seg(d, sel, &s);
            v = s.limit;
        }
        bt_gpr_write(c, i->op[0].reg, sz, v);
    }
    set_zf(c, ok);
    c->s.rip = c->next_rip;
}
BT_HANDLER(LAR, op_lar_lsl);
BT_HANDLER(LSL, op_lar_lsl);

static void op_verr_verw(struct bt_cpu *c, const struct bt_insn *i)
{
    if (!bt_pmode(c)) bt_ud(c);
    uint16_t sel = (uint16_t)bt_op_read(c, i, 0);
    uint64_t d;
    bool ok = visible_desc(c, sel, &d) && DESC_S(d);
    if (ok) {
        unsigned t = DESC_TYPE(d);
        if (i->mnemonic == ZYDIS_MNEMONIC_VERR)
            ok = !(t & 8) || (t & 2);
        else
            ok = !(t & 8) && (t & 2);
    }
    set_zf(c, ok);
    c->s.rip = c->next_rip;
}
BT_HANDLER(VERR, op_verr_verw);
BT_HANDLER(VERW, op_verr_verw);
