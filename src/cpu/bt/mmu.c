/* Soft MMU of the software CPU: segment-to-linear translation with limit and canonical checks,
 * the per-vCPU TLB, page walks (no paging, 32-bit 2-level with PSE, PAE, 4-level long mode),
 * Accessed/Dirty updates, #PF error codes, RAM/MMIO/LAPIC routing, dirty logging and the
 * code-page write-watch the decoded-code cache relies on.
 *
 * Trust: linear addresses, page-table entries and physical addresses all come from the guest.
 * Guest RAM is reached only through guest_ptr() (mem/guest.h); the TLB caches the host address
 * of one whole 4 KiB RAM page obtained from guest_ptr(gpa_page, 4096), and every use adds an
 * in-page offset (< 4096) with a size that never crosses the page, so no access leaves that page.
 * Anything that is not RAM goes to the LAPIC (own page) or the MMIO bus, which returns all-ones
 * for unclaimed addresses and drops writes. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/bt/btvm.h"
#include "cpu/bt/irqglue.h"
#include "util/log.h"

/* TLB entry permissions: bits 0-2 supervisor R/W/X, 3-5 user R/W/X (BT_ACC_* shifted by 3 for
 * user), then flags. */
#define P_GLOBAL 0x40u
#define P_ALL    0x3fu

/* #PF error code bits */
#define PF_P    0x01u
#define PF_W    0x02u
#define PF_U    0x04u
#define PF_RSVD 0x08u
#define PF_I    0x10u

/* TLB slots filled since they were last flushed, by kind ([0] non-global, [1] global): a flush
 * kills only those (the TLB is large and flushed at every CR3 write), and bt_watch_code_page
 * looks only at those.  Written by the owning vCPU only; other threads read them (relaxed). */
#define TLB_WORDS (BT_TLB_SIZE / 64)
struct bt_mmu {
    uint64_t phys_mask; /* bits MAXPHYADDR-1..12 of a page-table entry's address field */
    struct bt_vm *bv;   /* NULL when no watch (bt_emulate_one under KVM, bare tests) */
    uint64_t filled[2][TLB_WORDS];
};

static inline struct bt_mmu *mmu_of(struct bt_cpu *c)
{
    return c->mmu;
}

int bt_mmu_init(struct bt_cpu *c)
{
    struct bt_mmu *m = calloc(1, sizeof(*m));
    if (!m) return err_set(ENOMEM, "software CPU: cannot allocate the soft MMU state");
    unsigned maxphy = 36;
    if (c->vm) {
        const struct cpuid_entry *e = cpuid_find(&c->vm->cpuid, 0x80000008, 0);
        if (e && (e->eax & 0xff) >= 32 && (e->eax & 0xff) <= 52) maxphy = e->eax & 0xff;
        m->bv = bt_vm_of(c->vm);
    }
    m->phys_mask = ((1ull << maxphy) - 1) & ~0xfffull;
    c->mmu = m;
    memset(c->tlb, 0, sizeof(c->tlb));
    c->tlb_gen[0] = 2;
    c->tlb_gen[1] = 3;
    return 0;
}

void bt_mmu_destroy(struct bt_cpu *c)
{
    free(c->mmu);
    c->mmu = NULL;
}

static inline bool is_lapic_page(struct bt_cpu *c, uint64_t gpa);

/* Host address of linear address `lin` in the page entry `e` maps, NULL when it is not RAM */
static inline uint8_t *hva_of(const struct bt_tlb_entry *e, uint64_t lin)
{
    return (e->perm & BT_TLB_RAM) ? (uint8_t *)(uintptr_t)(e->addend + lin) : NULL;
}

/* Fills the entry's host side: RAM pages get their addend and BT_TLB_RAM. */
static inline void set_host(struct bt_cpu *c, struct bt_tlb_entry *e, uint64_t lin, uint64_t gpa)
{
    uint8_t *h = (c->vm && !is_lapic_page(c, gpa)) ? guest_ptr(&c->vm->mem, gpa, 4096) : NULL;
    e->addend = h ? (uint64_t)(uintptr_t)h - (lin & ~0xfffull) : 0;
    if (h) e->perm |= BT_TLB_RAM;
}

/* An entry no access matches (vtag 0 is never a tag; ftag 0 never a compared value). */
static void tlb_kill(struct bt_tlb_entry *e)
{
    e->vtag = 0;
    memset(e->ftag, 0, sizeof(e->ftag));
}

static inline bool watched(struct bt_mmu *m, uint64_t gpa);

/* Records slot `e` as filled (before its tags are stored: see tlb_set_ftags). */
static inline void mark_filled(struct bt_cpu *c, const struct bt_tlb_entry *e)
{
    struct bt_mmu *m = mmu_of(c);
    if (!m) return;
    size_t k = (size_t)(e - c->tlb);
    unsigned g = (e->perm & P_GLOBAL) != 0;
    uint64_t bit = 1ull << (k % 64);
    uint64_t *w = &m->filled[g][k / 64], *o = &m->filled[!g][k / 64];
    uint64_t wv = __atomic_load_n(w, __ATOMIC_RELAXED), ov = __atomic_load_n(o, __ATOMIC_RELAXED);
    if (!(wv & bit)) __atomic_store_n(w, wv | bit, __ATOMIC_RELAXED);
    if (ov & bit) __atomic_store_n(o, ov & ~bit, __ATOMIC_RELAXED);
}

/* Loops k over the filled slots of kind g (0 non-global, 1 global) of the vCPU whose mmu is m */
#define FOR_FILLED(m, g, k)                                                                        \
    for (unsigned w_ = 0; w_ < TLB_WORDS; w_++)                                                    \
        for (uint64_t b_ = __atomic_load_n(&(m)->filled[g][w_], __ATOMIC_RELAXED); b_;             \
             b_ &= b_ - 1)                                                                         \
            for (unsigned k = w_ * 64 + (unsigned)__builtin_ctzll(b_), once_ = 1; once_; once_ = 0)

static inline bool dirty_logging(const struct bt_cpu *c)
{
    return c->vm && __atomic_load_n(&c->vm->mem.dirty_enabled, __ATOMIC_SEQ_CST);
}

/* The translator's one-compare tags of a freshly filled entry (see struct bt_tlb_entry): the
 * same conditions its probes tested one by one (a host address, the permission bit for the
 * privilege: supervisor bits 0-2, user bits 3-5), and for writes also a page that holds no
 * decoded code (not write-watched), so a translated store never needs to look at the watch
 * bitmap.  Against bt_watch_code_page on another thread (Dekker): the slot is marked filled and
 * the tags stored before a full fence, then the watch bit is read again; that side sets the
 * watch bit, fences, then reads the filled slots and clears matching tags.  One of the two sees
 * the other.  Dirty logging works the same way: no write tag while it is on (every store must be
 * logged), and bt_mmu_dirty_started clears them all in every vCPU's TLB when it starts. */
static void tlb_set_ftags(struct bt_cpu *c, struct bt_tlb_entry *e, uint64_t lin)
{
    struct bt_mmu *m = mmu_of(c);
    uint64_t f = lin | 0xfff;
    bool code = (m && watched(m, e->gpa)) || dirty_logging(c);
    bool wr = false;
    mark_filled(c, e); /* before any write tag */
    for (unsigned k = 0; k < 4; k++) {
        uint32_t bit = (k & 1 ? BT_ACC_WRITE : BT_ACC_READ) << (k & 2 ? 3 : 0);
        bool ok = (e->perm & BT_TLB_RAM) && (e->perm & bit) && !((k & 1) && code);
        wr |= ok && (k & 1);
        e->ftag[k] = ok ? f : 0;
    }
    if (wr && m) {
        atomic_thread_fence(memory_order_seq_cst);
        if (watched(m, e->gpa) || dirty_logging(c)) e->ftag[1] = e->ftag[3] = 0;
    }
}

void bt_tlb_flush(struct bt_cpu *c, bool include_global)
{
    bool keep_global = !include_global && (c->s.cr4 & X86_CR4_PGE);
    struct bt_mmu *m = mmu_of(c);
    c->tlb_gen[0] += 2;
    if (!keep_global) c->tlb_gen[1] += 2;
    if (!m) { /* no record of the filled slots: all of them */
        for (unsigned i = 0; i < BT_TLB_SIZE; i++)
            if (!keep_global || !(c->tlb[i].perm & P_GLOBAL)) tlb_kill(&c->tlb[i]);
        return;
    }
    for (unsigned g = 0; g < (keep_global ? 1u : 2u); g++) {
        FOR_FILLED(m, g, k) tlb_kill(&c->tlb[k]);
        for (unsigned w = 0; w < TLB_WORDS; w++)
            __atomic_store_n(&m->filled[g][w], 0, __ATOMIC_RELAXED);
    }
}

void bt_tlb_flush_page(struct bt_cpu *c, uint64_t lin)
{
    /* A large page is cached as 4 KiB pieces; INVLPG of any address in it must drop them all, so
     * drop every entry whose translation came from the same 2 MiB/4 MiB region (simpler than
     * remembering which entries came from large pages). */
    uint64_t big = lin & ~0x3fffffull;
    c->tlb_gen[0] += 2;
    c->tlb_gen[1] += 2;
    /* the 1024 pages of that 4 MiB region sit in 1024 consecutive slots (mod the TLB size) */
    _Static_assert(BT_TLB_SIZE >= 1024, "a 4 MiB region's pages in distinct slots");
    for (unsigned k = 0; k < 1024; k++) {
        struct bt_tlb_entry *e = &c->tlb[((big >> 12) + k) & (BT_TLB_SIZE - 1)];
        uint64_t v = e->vtag & ~1ull;
        if (e->vtag && (v & ~0x3fffffull) == big) tlb_kill(e);
    }
}

/* ---- segmentation -------------------------------------------------------------------------- */

static _Noreturn void seg_fault(struct bt_cpu *c, int seg)
{
    bt_raise(c, seg == SEG_SS ? X86_SS : X86_GP, 0);
}

uint64_t bt_seg_linear(struct bt_cpu *c, int seg, uint64_t off, unsigned size, int acc)
{
    if (size == 0) size = 1;
    if (c->code_bits == 64) {
        uint64_t lin = off;
        if (seg == SEG_FS || seg == SEG_GS) lin += c->s.seg[seg].base;
        if (!x86_is_canonical(lin) || !x86_is_canonical(lin + size - 1)) seg_fault(c, seg);
        return lin;
    }
    const struct x86_seg *s = &c->s.seg[seg];
    bool pmode = (c->s.cr0 & X86_CR0_PE) && !(c->s.rflags & X86_FLAG_VM);
    if (pmode) {
        if (s->unusable || !s->present) seg_fault(c, seg);
        if (s->s && seg != SEG_CS) {
            if ((acc & BT_ACC_WRITE) && ((s->type & 8) || !(s->type & 2))) seg_fault(c, seg);
            if ((acc & BT_ACC_READ) && (s->type & 8) && !(s->type & 2)) seg_fault(c, seg);
        }
    }
    uint64_t o = off & 0xffffffffull;
    uint64_t last = o + size - 1;
    if (s->s && !(s->type & 8) && (s->type & 4)) {
        /* expand-down data segment: valid offsets are limit+1 .. 0xffff or 0xffffffff */
        uint64_t upper = s->db ? 0xffffffffull : 0xffffull;
        if (o <= s->limit || last > upper) seg_fault(c, seg);
    } else if (last > s->limit) {
        seg_fault(c, seg);
    }
    return (s->base + o) & 0xffffffffull;
}

/* ---- physical accesses ---------------------------------------------------------------------- */

static inline bool is_lapic_page(struct bt_cpu *c, uint64_t gpa)
{
    return c->lapic && bt_glue_is_lapic_page(c, gpa);
}

/* MMIO (or the LAPIC) for an access inside one page; size 1..8. */
static void mmio_access(struct bt_cpu *c, uint64_t gpa, uint8_t *data, unsigned size, bool write)
{
    if (is_lapic_page(c, gpa)) {
        if (write)
            bt_glue_lapic_write(c, (uint32_t)(gpa & 0xfff), data, size);
        else
            bt_glue_lapic_read(c, (uint32_t)(gpa & 0xfff), data, size);
        return;
    }
    if (!c->vm) {
        if (!write) memset(data, 0xff, size);
        return;
    }
    if (size == 1 || size == 2 || size == 4 || size == 8) {
        vm_mmio(c->vm, gpa, data, size, write);
    } else {
        for (unsigned k = 0; k < size; k++)
            vm_mmio(c->vm, gpa + k, data + k, 1, write);
    }
}

static void watch_hit(struct bt_cpu *c, uint64_t gpa_page);

static inline bool watched(struct bt_mmu *m, uint64_t gpa)
{
    if (!m->bv || !m->bv->watch) return false;
    uint64_t pg = gpa >> 12;
    if (pg >= m->bv->watch_pages) return false;
    return (atomic_load_explicit(&m->bv->watch[pg / 64], memory_order_relaxed) >> (pg % 64)) & 1;
}

/* RAM write bookkeeping: dirty log and code watch. */
static inline void ram_written(struct bt_cpu *c, uint64_t gpa, unsigned size)
{
    if (c->vm && c->vm->mem.dirty_enabled) guest_log_dirty(&c->vm->mem, gpa, size);
    struct bt_mmu *m = mmu_of(c);
    if (watched(m, gpa)) watch_hit(c, gpa & ~0xfffull);
}

uint64_t bt_phys_read(struct bt_cpu *c, uint64_t gpa, unsigned size)
{
    uint64_t v = 0;
    void *p = c->vm ? guest_ptr(&c->vm->mem, gpa, size) : NULL;
    if (p && !is_lapic_page(c, gpa))
        memcpy(&v, p, size);
    else
        mmio_access(c, gpa, (uint8_t *)&v, size, false);
    return v;
}

void bt_phys_write(struct bt_cpu *c, uint64_t gpa, unsigned size, uint64_t v)
{
    void *p = c->vm ? guest_ptr(&c->vm->mem, gpa, size) : NULL;
    if (p && !is_lapic_page(c, gpa)) {
        memcpy(p, &v, size);
        ram_written(c, gpa, size);
    } else {
        mmio_access(c, gpa, (uint8_t *)&v, size, true);
    }
}

/* Reads a paging-structure entry (8 or 4 bytes); returns the host pointer when in RAM so the
 * walker can set A/D bits atomically. */
static uint64_t pte_read(struct bt_cpu *c, uint64_t gpa, unsigned size, void **hp)
{
    *hp = c->vm ? guest_ptr(&c->vm->mem, gpa, size) : NULL;
    if (*hp) {
        if (size == 8) return atomic_load_explicit((_Atomic uint64_t *)*hp, memory_order_relaxed);
        return atomic_load_explicit((_Atomic uint32_t *)*hp, memory_order_relaxed);
    }
    return bt_phys_read(c, gpa, size);
}

/* Sets bits in a paging-structure entry like the hardware: an atomic OR on RAM (a page-table
 * entry outside RAM is left alone, the all-ones it reads already carry A and D). */
static void pte_set(struct bt_cpu *c, void *hp, uint64_t gpa, unsigned size, uint64_t bits)
{
    if (!hp) return;
    if (size == 8)
        atomic_fetch_or_explicit((_Atomic uint64_t *)hp, bits, memory_order_relaxed);
    else
        atomic_fetch_or_explicit((_Atomic uint32_t *)hp, (uint32_t)bits, memory_order_relaxed);
    ram_written(c, gpa, size);
}

/* ---- page walk ------------------------------------------------------------------------------ */

struct walk_level {
    void *hp;
    uint64_t gpa;
    uint64_t val;
    unsigned size;
};

/* Translates lin for the access `acc` (BT_ACC_* with IMPLICIT meaning supervisor).  On success
 * returns 0 with *gpa and *perm (both privilege sets, with write bits only if the entry is
 * dirty) and sets A (and D for writes).  On failure returns the #PF error code | BT_XLATE_FAULT. */
static uint32_t walk(struct bt_cpu *c, uint64_t lin, int acc, uint64_t *gpa, uint32_t *perm)
{
    const uint64_t cr0 = c->s.cr0, cr4 = c->s.cr4, efer = c->s.efer;
    bool user = c->cpl == 3 && !(acc & BT_ACC_IMPLICIT);
    bool write = acc & BT_ACC_WRITE, exec = acc & BT_ACC_EXEC;
    uint32_t err = (write ? PF_W : 0) | (user ? PF_U : 0);

    if (!(cr0 & X86_CR0_PG)) {
        *gpa = lin & ~0xfffull & 0xffffffffull;
        *perm = P_ALL;
        return 0;
    }

    struct bt_mmu *m = mmu_of(c);
    struct walk_level lv[4];
    unsigned n = 0;
    bool nxe = (efer & X86_EFER_NXE) != 0;
    bool pae = (cr4 & X86_CR4_PAE) != 0;
    uint64_t rsvd_hi = ~m->phys_mask & 0x000ffffffffff000ull; /* bits 51:MAXPHYADDR */
    uint64_t nx_bit = 1ull << 63;
    uint64_t page_base = 0, page_mask = 0xfff; /* offset bits within the final page */
    bool rw = true, us = true, nx = false, global = false;

    if (pae) {
        if (exec && nxe) err |= PF_I;
        uint64_t table;
        int level;
        if (c->long_mode) {
            table = c->s.cr3 & m->phys_mask;
            level = 4;
        } else {
            /* PAE PDPTEs: hardware loads them at MOV CR3; reading them at walk time is the same
             * unless the guest edits a PDPTE without reloading CR3 (documented difference). */
            uint64_t pdpte_gpa = (c->s.cr3 & 0xffffffe0ull) + ((lin >> 30) & 3) * 8;
            void *hp;
            uint64_t e = pte_read(c, pdpte_gpa, 8, &hp);
            if (!(e & 1)) return BT_XLATE_FAULT | err;
            if (e & (rsvd_hi | 0x1e6ull | nx_bit)) return BT_XLATE_FAULT | err | PF_P | PF_RSVD;
            table = e & m->phys_mask;
            level = 2;
        }
        for (; level >= 1; level--) {
            unsigned shift = 12 + 9 * (level - 1);
            uint64_t egpa = table + ((lin >> shift) & 0x1ff) * 8;
            void *hp;
            uint64_t e = pte_read(c, egpa, 8, &hp);
            if (!(e & 1)) return BT_XLATE_FAULT | err;
            uint64_t rsvd = rsvd_hi | (nxe ? 0 : nx_bit);
            bool ps = (e & 0x80) && (level == 2);
            if (level == 4) rsvd |= 0x80; /* PS reserved in PML4E */
            if (level == 3) rsvd |= 0x80; /* no 1 GiB pages in the model */
            if (ps) rsvd |= 0x1fe000ull;  /* 2 MiB page: bits 20:13 */
            if (e & rsvd) return BT_XLATE_FAULT | err | PF_P | PF_RSVD;
            lv[n++] = (struct walk_level){hp, egpa, e, 8};
            rw &= (e >> 1) & 1;
            us &= (e >> 2) & 1;
            nx |= nxe && (e & nx_bit);
            if (ps || level == 1) {
                page_mask = ps ? 0x1fffffull : 0xfffull;
                page_base = e & m->phys_mask & ~page_mask;
                global = (e >> 8) & 1;
                break;
            }
            table = e & m->phys_mask;
        }
    } else {
        /* 32-bit paging: 4-byte entries, 4 MiB pages with CR4.PSE, no NX and no reserved bits
         * except those of a 4 MiB PDE (21:13 without PSE-36). */
        uint64_t pde_gpa = (c->s.cr3 & 0xfffff000ull) + ((lin >> 22) & 0x3ff) * 4;
        void *hp;
        uint64_t e = pte_read(c, pde_gpa, 4, &hp);
        if (!(e & 1)) return BT_XLATE_FAULT | err;
        lv[n++] = (struct walk_level){hp, pde_gpa, e, 4};
        rw &= (e >> 1) & 1;
        us &= (e >> 2) & 1;
        if ((e & 0x80) && (cr4 & X86_CR4_PSE)) {
            if (e & 0x3fe000ull) return BT_XLATE_FAULT | err | PF_P | PF_RSVD;
            page_mask = 0x3fffffull;
            page_base = e & 0xffc00000ull;
            global = (e >> 8) & 1;
        } else {
            uint64_t pte_gpa = (e & 0xfffff000ull) + ((lin >> 12) & 0x3ff) * 4;
            e = pte_read(c, pte_gpa, 4, &hp);
            if (!(e & 1)) return BT_XLATE_FAULT | err;
            lv[n++] = (struct walk_level){hp, pte_gpa, e, 4};
            rw &= (e >> 1) & 1;
            us &= (e >> 2) & 1;
            page_mask = 0xfff;
            page_base = e & 0xfffff000ull;
            global = (e >> 8) & 1;
        }
    }

    /* Permissions of the translation, for both privilege levels. */
    bool wp = (cr0 & X86_CR0_WP) != 0;
    uint32_t p = BT_ACC_READ;
    if (rw || !wp) p |= BT_ACC_WRITE;
    if (!nx) p |= BT_ACC_EXEC;
    if (us) {
        uint32_t u = BT_ACC_READ | (rw ? BT_ACC_WRITE : 0) | (nx ? 0 : BT_ACC_EXEC);
        p |= u << 3;
    }
    uint32_t need = (acc & (BT_ACC_READ | BT_ACC_WRITE | BT_ACC_EXEC)) ?: BT_ACC_READ;
    if (user) need <<= 3;
    if ((p & need) != need) return BT_XLATE_FAULT | err | PF_P;

    /* Success: Accessed on every level, Dirty on the leaf for a write. */
    for (unsigned k = 0; k < n; k++)
        if (!(lv[k].val & 0x20)) pte_set(c, lv[k].hp, lv[k].gpa, lv[k].size, 0x20);
    struct walk_level *leaf = &lv[n - 1];
    bool dirty = (leaf->val & 0x40) != 0;
    if (write && !dirty) {
        pte_set(c, leaf->hp, leaf->gpa, leaf->size, 0x40);
        dirty = true;
    }
    if (!dirty) p &= ~(uint32_t)(BT_ACC_WRITE | (BT_ACC_WRITE << 3));
    if (global && (cr4 & X86_CR4_PGE)) p |= P_GLOBAL;
    *gpa = (page_base | (lin & page_mask)) & ~0xfffull;
    *perm = p;
    return 0;
}

uint32_t bt_translate(struct bt_cpu *c, uint64_t lin, int acc, uint64_t *gpa)
{
    uint32_t perm;
    uint64_t page;
    uint32_t r = walk(c, lin, acc, &page, &perm);
    if (r) return r;
    *gpa = page | (lin & 0xfff);
    return 0;
}

/* ---- TLB ------------------------------------------------------------------------------------ */

static inline uint32_t need_of(const struct bt_cpu *c, int acc)
{
    uint32_t need = (acc & (BT_ACC_READ | BT_ACC_WRITE | BT_ACC_EXEC)) ?: BT_ACC_READ;
    if (c->cpl == 3 && !(acc & BT_ACC_IMPLICIT)) need <<= 3;
    return need;
}

static inline uint64_t tag_of(uint64_t lin)
{
    return (lin & ~0xfffull) | 1;
}

bool bt_tlb_page_global(const struct bt_cpu *c, uint64_t lin)
{
    const struct bt_tlb_entry *e = &c->tlb[(lin >> 12) & (BT_TLB_SIZE - 1)];
    return e->vtag == tag_of(lin) && (e->perm & P_GLOBAL) && (c->s.cr4 & X86_CR4_PGE);
}

/* The TLB entry for lin valid for `acc`, filling it by a walk (raising #PF on failure). */
static struct bt_tlb_entry *tlb_get(struct bt_cpu *c, uint64_t lin, int acc)
{
    struct bt_tlb_entry *e = &c->tlb[(lin >> 12) & (BT_TLB_SIZE - 1)];
    uint32_t need = need_of(c, acc);
    if (e->vtag == tag_of(lin) && (e->perm & need) == need) return e;
    uint64_t gpa;
    uint32_t perm;
    uint32_t r = walk(c, lin, acc, &gpa, &perm);
    if (r) bt_raise_pf(c, lin, r & ~BT_XLATE_FAULT);
    e->vtag = tag_of(lin);
    e->gpa = gpa;
    e->perm = perm;
    set_host(c, e, lin, gpa);
    tlb_set_ftags(c, e, lin);
    return e;
}

static inline uint64_t lin_mask(const struct bt_cpu *c)
{
    return c->code_bits == 64 ? ~0ull : 0xffffffffull;
}

/* One access inside a single page through an entry. */
static void page_read(struct bt_cpu *c, struct bt_tlb_entry *e, uint64_t lin, void *buf, unsigned n)
{
    if (e->perm & BT_TLB_RAM)
        memcpy(buf, hva_of(e, lin), n);
    else {
        uint8_t *b = buf;
        uint64_t gpa = e->gpa | (lin & 0xfff);
        while (n) {
            unsigned k = n >= 8 && !(gpa & 7)   ? 8
                         : n >= 4 && !(gpa & 3) ? 4
                         : n >= 2 && !(gpa & 1) ? 2
                                                : 1;
            mmio_access(c, gpa, b, k, false);
            gpa += k, b += k, n -= k;
        }
    }
}

static void page_write(struct bt_cpu *c, struct bt_tlb_entry *e, uint64_t lin, const void *buf,
                       unsigned n)
{
    uint64_t gpa = e->gpa | (lin & 0xfff);
    if (e->perm & BT_TLB_RAM) {
        memcpy(hva_of(e, lin), buf, n);
        ram_written(c, gpa, n);
    } else {
        uint8_t tmp[4096];
        memcpy(tmp, buf, n);
        uint8_t *b = tmp;
        while (n) {
            unsigned k = n >= 8 && !(gpa & 7)   ? 8
                         : n >= 4 && !(gpa & 3) ? 4
                         : n >= 2 && !(gpa & 1) ? 2
                                                : 1;
            mmio_access(c, gpa, b, k, true);
            gpa += k, b += k, n -= k;
        }
    }
}

uint64_t bt_read(struct bt_cpu *c, uint64_t lin, unsigned size, int acc)
{
    struct bt_tlb_entry *e = &c->tlb[(lin >> 12) & (BT_TLB_SIZE - 1)];
    uint64_t v = 0;
    if (__builtin_expect(e->vtag == tag_of(lin) && (e->perm & BT_TLB_RAM) &&
                             (lin & 0xfff) + size <= 4096 &&
                             (e->perm & need_of(c, acc)) == need_of(c, acc),
                         1)) {
        memcpy(&v, hva_of(e, lin), size);
        return v;
    }
    bt_read_buf(c, lin, &v, size, acc);
    return v;
}

void bt_write(struct bt_cpu *c, uint64_t lin, unsigned size, uint64_t v, int acc)
{
    acc |= BT_ACC_WRITE;
    acc &= ~BT_ACC_READ;
    struct bt_tlb_entry *e = &c->tlb[(lin >> 12) & (BT_TLB_SIZE - 1)];
    uint32_t need = need_of(c, acc);
    if (__builtin_expect(e->vtag == tag_of(lin) && (e->perm & BT_TLB_RAM) &&
                             (lin & 0xfff) + size <= 4096 && (e->perm & need) == need,
                         1)) {
        memcpy(hva_of(e, lin), &v, size);
        ram_written(c, e->gpa | (lin & 0xfff), size);
        /* a tag cleared while the page held code (bt_watch_code_page): the store above ended
         * the watch, so translated stores may go straight to the page again (never while dirty
         * logging is on: tlb_set_ftags would set no write tag, at every store) */
        if (!e->ftag[(c->cpl == 3) * 2 + 1] && !dirty_logging(c)) tlb_set_ftags(c, e, lin);
        return;
    }
    bt_write_buf(c, lin, &v, size, acc);
}

void bt_read_buf(struct bt_cpu *c, uint64_t lin, void *buf, size_t n, int acc)
{
    uint8_t *b = buf;
    while (n) {
        size_t in_page = 4096 - (lin & 0xfff);
        unsigned k = (unsigned)(n < in_page ? n : in_page);
        struct bt_tlb_entry *e = tlb_get(c, lin, acc);
        page_read(c, e, lin, b, k);
        b += k, n -= k;
        lin = (lin + k) & lin_mask(c);
    }
}

void bt_probe_write(struct bt_cpu *c, uint64_t lin, unsigned size, int acc)
{
    acc = (acc | BT_ACC_WRITE) & ~BT_ACC_READ;
    size_t n = size ? size : 1;
    while (n) {
        size_t in_page = 4096 - (lin & 0xfff);
        size_t k = n < in_page ? n : in_page;
        tlb_get(c, lin, acc);
        n -= k;
        lin = (lin + k) & lin_mask(c);
    }
}

void bt_write_buf(struct bt_cpu *c, uint64_t lin, const void *buf, size_t n, int acc)
{
    acc = (acc | BT_ACC_WRITE) & ~BT_ACC_READ;
    /* Check every page before writing anything, so a fault leaves memory untouched. */
    if ((lin & 0xfff) + n > 4096) bt_probe_write(c, lin, (unsigned)n, acc);
    const uint8_t *b = buf;
    while (n) {
        size_t in_page = 4096 - (lin & 0xfff);
        unsigned k = (unsigned)(n < in_page ? n : in_page);
        struct bt_tlb_entry *e = tlb_get(c, lin, acc);
        page_write(c, e, lin, b, k);
        b += k, n -= k;
        lin = (lin + k) & lin_mask(c);
    }
}

void *bt_host_ptr(struct bt_cpu *c, uint64_t lin, unsigned size, int acc)
{
    if ((lin & 0xfff) + size > 4096) {
        bt_probe_write(c, lin, size, acc); /* raise the fault a split access would raise */
        return NULL;
    }
    if (acc & BT_ACC_WRITE) acc &= ~BT_ACC_READ;
    struct bt_tlb_entry *e = tlb_get(c, lin, acc);
    if (!(e->perm & BT_TLB_RAM)) return NULL;
    if (acc & BT_ACC_WRITE) ram_written(c, e->gpa | (lin & 0xfff), size);
    return hva_of(e, lin);
}

size_t bt_fetch(struct bt_cpu *c, uint64_t lin, uint8_t *buf, size_t max, uint64_t *gpa)
{
    size_t got = 0;
    while (got < max) {
        uint64_t at = (lin + got) & lin_mask(c);
        struct bt_tlb_entry *e;
        if (got == 0) {
            e = tlb_get(c, at, BT_ACC_EXEC);
            *gpa = e->gpa | (at & 0xfff);
        } else {
            /* Later pages: stop before one that would fault; the decoder raises the fault only
             * if it really needs those bytes. */
            e = &c->tlb[(at >> 12) & (BT_TLB_SIZE - 1)];
            uint32_t need = need_of(c, BT_ACC_EXEC);
            if (e->vtag != tag_of(at) || (e->perm & need) != need) {
                uint64_t g;
                uint32_t perm;
                if (walk(c, at, BT_ACC_EXEC, &g, &perm)) break;
                e->vtag = tag_of(at);
                e->gpa = g;
                e->perm = perm;
                set_host(c, e, at, g);
                tlb_set_ftags(c, e, at);
            }
        }
        size_t in_page = 4096 - (at & 0xfff);
        size_t k = max - got < in_page ? max - got : in_page;
        page_read(c, e, at, buf + got, (unsigned)k);
        got += k;
    }
    return got;
}

/* ---- code-page write-watch ------------------------------------------------------------------ */

int bt_watch_init(struct bt_vm *bv)
{
    struct guest_mem *m = &bv->vm->mem;
    uint64_t top = 0;
    for (unsigned i = 0; i < m->nslots; i++)
        if (m->slot[i].gpa + m->slot[i].size > top) top = m->slot[i].gpa + m->slot[i].size;
    bv->watch_pages = top >> 12;
    bv->watch = calloc((bv->watch_pages + 63) / 64, sizeof(uint64_t));
    if (!bv->watch) return err_set(ENOMEM, "software CPU: cannot allocate the code-watch bitmap");
    return 0;
}

void bt_watch_destroy(struct bt_vm *bv)
{
    free((void *)bv->watch);
    bv->watch = NULL;
}

/* After a full fence, the write fast tags of every vCPU's TLB entries for guest-physical page
 * `gpa_page` (all: of every entry) are cleared: only the slots each vCPU filled since its last
 * flush can hold tags (tlb_set_ftags marks the slot first), so only those are looked at. */
static void clear_write_tags(struct bt_vm *bv, uint64_t gpa_page, bool all)
{
    atomic_thread_fence(memory_order_seq_cst);
    for (unsigned i = 0; bv && i < VM_MAX_CPUS; i++) {
        struct bt_cpu *o = bv->cpu[i];
        struct bt_mmu *om = o ? mmu_of(o) : NULL;
        if (!om) continue;
        for (unsigned g = 0; g < 2; g++) {
            FOR_FILLED(om, g, k)
            {
                struct bt_tlb_entry *e = &o->tlb[k];
                if ((all || e->gpa == gpa_page) && (e->ftag[1] || e->ftag[3]))
                    e->ftag[1] = e->ftag[3] = 0;
            }
        }
    }
}

void bt_watch_code_page(struct bt_cpu *c, uint64_t gpa_page)
{
    struct bt_mmu *m = mmu_of(c);
    if (!m || !m->bv || !m->bv->watch) return;
    uint64_t pg = gpa_page >> 12;
    if (pg >= m->bv->watch_pages) return;
    uint64_t bit = 1ull << (pg % 64);
    if (atomic_fetch_or_explicit(&m->bv->watch[pg / 64], bit, memory_order_seq_cst) & bit) return;
    /* newly watched: no vCPU's translated stores may go straight to the page any more (see
     * tlb_set_ftags for the other side) */
    clear_write_tags(m->bv, gpa_page, false);
}

void bt_mmu_dirty_started(struct bt_vm *bv)
{
    clear_write_tags(bv, 0, true); /* after dirty_enabled was set */
}

/* A write hit a page holding decoded code: stop watching it and make every vCPU drop its code.
 * bt_cache_invalidate_page() is safe from any thread (core.c queues it for the owner, which
 * applies it before its next instruction).  c is the writing vCPU, or NULL for device DMA. */
static void watch_hit_vm(struct bt_vm *bv, struct bt_cpu *c, uint64_t gpa_page)
{
    uint64_t pg = gpa_page >> 12;
    uint64_t bit = 1ull << (pg % 64);
    if (!(atomic_fetch_and_explicit(&bv->watch[pg / 64], ~bit, memory_order_relaxed) & bit)) return;
    bool self = false;
    for (unsigned i = 0; i < VM_MAX_CPUS; i++) {
        struct bt_cpu *o = bv->cpu[i];
        if (!o) continue;
        self |= o == c;
        bt_cache_invalidate_page(o, gpa_page);
    }
    if (c && !self) bt_cache_invalidate_page(c, gpa_page);
}

static void watch_hit(struct bt_cpu *c, uint64_t gpa_page)
{
    watch_hit_vm(mmu_of(c)->bv, c, gpa_page);
}

/* guest_mem write hook: a device or loader wrote guest RAM behind the CPU's back (DMA into a page
 * that once held code, e.g. the page cache reusing it). */
void bt_watch_external_write(void *ctx, gpa_t gpa, uint64_t len)
{
    struct bt_vm *bv = ctx;
    if (!bv || !bv->watch || len == 0) return;
    uint64_t first = gpa >> 12, last = (gpa + len - 1) >> 12;
    if (last < first) last = UINT64_MAX >> 12; /* wrapped: the loop stops at watch_pages */
    for (uint64_t pg = first; pg <= last && pg < bv->watch_pages; pg++)
        if ((atomic_load_explicit(&bv->watch[pg / 64], memory_order_relaxed) >> (pg % 64)) & 1)
            watch_hit_vm(bv, NULL, pg << 12);
}
