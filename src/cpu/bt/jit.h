/* The software CPU's translator: decoded blocks (core.c) become host x86-64 code in a per-vCPU
 * code cache, run by the interpreter loop in place of the per-instruction dispatch.
 *
 * Contract with core.c (the only caller):
 *   - A translation refers to the block's struct bt_insn array (the handler path passes their
 *     addresses to the handlers), so core.c flushes the translator (bt_jit_flush) whenever it
 *     recycles its decoded-instruction arena, and a block's translation slot dies with the block.
 *   - bt_jit_run() runs a whole block: the caller guarantees that the instruction budget covers
 *     all of it, that no interrupt shadow or single step is active, and that the block was
 *     decoded for the current mode.  Faults longjmp out of the translated code to bt_exec's
 *     setjmp with insn_rip naming the faulting instruction, exactly as in the interpreter.
 *
 * Trust: the translated code does what the interpreter does for the same instructions; guest
 * values are only operated on (native forms touch guest registers in struct bt_cpu, and guest
 * RAM through the soft TLB's host addresses exactly where bt_read/bt_write's fast path would),
 * everything else (TLB misses, MMIO, faults, code-page writes, dirty logging, privileged
 * operations) goes through the interpreter's handlers.
 * The code cache is a memfd mapped twice: written through a read-write view, executed through a
 * read-execute view; no mapping is ever writable and executable. */
#pragma once
#include <stdbool.h>
#include <stdint.h>

struct bt_cpu;
struct bt_insn;

/* Sets up the translator for a vCPU if LOOKOUT_BT_JIT is unset or "1" (anything else leaves
 * c->jit NULL: the interpreter runs alone).  `pending` is core.c's invalidation flag, which the
 * translated code polls after every instruction that may write memory.  Returns 0, or -errno
 * with err_msg() (the caller may continue interpreted). */
int bt_jit_init(struct bt_cpu *c, _Atomic bool *pending);
void bt_jit_destroy(struct bt_cpu *c);
/* Tests: force the translator on or off for this vCPU (on: creates it if needed). */
int bt_jit_set_enabled(struct bt_cpu *c, _Atomic bool *pending, bool on);
/* Tests: how many times a block runs interpreted before it is translated (default 4; 0 translates
 * on first use). */
void bt_jit_set_hot_runs(struct bt_cpu *c, unsigned runs);
/* True if LOOKOUT_BT_JIT asks for the translator (unset or "1"). */
bool bt_jit_wanted(void);

/* Runs the block `insns[0..n)` (decoded for c->code_bits at guest-physical `gpa`), translating it
 * first once it is hot: *slot, the block's translation handle owned by core.c's block record,
 * starts NULL and counts interpreted entries until then.  `end` is bt_exec's instruction budget
 * limit (chained blocks run only while the count leaves room for a whole block below it).
 * Returns 0 after the block ran (c->s.rip, icount and everything else as the interpreter would
 * leave them), 1 if the caller must interpret it (still cold, or untranslatable: *slot remembers
 * which), or -ENOSPC when the code cache is full (the caller flushes its decoded-block cache,
 * which flushes this one, and looks the block up again).  xlen > 0: a one-instruction block that
 * crosses into the next page, whose first xlen bytes were xbytes when it was decoded: the
 * translation checks them (through the TLB) at every entry and leaves for the loop, which
 * decodes again, when they differ. */
int bt_jit_run(struct bt_cpu *c, const struct bt_insn *insns, unsigned n, void **slot, uint64_t gpa,
               uint64_t end, const uint8_t *xbytes, unsigned xlen);
/* The block owning this handle is gone (its page was written): jumps chained into its
 * translation are unpatched.  The code itself stays until the next flush (nothing reaches it). */
void bt_jit_drop(struct bt_cpu *c, void *handle);
/* Forgets every translation (the decoded blocks they point into are going away). */
void bt_jit_flush(struct bt_cpu *c);
/* From any thread, after setting what the loop must see (c->kicked, a queued invalidation, the
 * LAPIC's attention): translated code stops chaining at its next block end and returns to the
 * loop.  Chained exits test only the instruction budget, which this zeroes; bt_jit_run sets it
 * again and then re-reads those flags (seq_cst on both sides, so no poke is lost). */
void bt_jit_poke(struct bt_cpu *c);

/* Statistics for tests and the closing log line.  runs: block entries from the interpreter loop;
 * flushes: every flush of the code cache, flushes_full: those because it (or its link table) was
 * full (the others come with core.c recycling its decoded-block arena, or a full invalidation);
 * chains_cross: chains across pages (TLB-checked); lookups/lookup_hits: inline lookups probed by
 * translated code at handler-decided exits and how many jumped straight to a translation;
 * lookup_bails: lookup exits that went to the loop before probing (budget, exit request,
 * pending event, LAPIC attention, interrupt shadow, HLT, TF, queued invalidation);
 * lookup_revalidated: lookups whose entry a TLB flush had made stale and the soft TLB vouched
 * for again (they ran the translation too); lookup_miss_key / lookup_miss_tlb: lookups that
 * missed because the table held another key (RIP, CR3, mode) or because after a flush the TLB
 * did not map the page (yet) to the entry's physical page; lookup_clears:
 * whole-table clears of the lookup table. */
struct bt_jit_stats {
    uint64_t blocks_translated, insns_native, insns_called, flushes, runs, code_bytes, chains,
        unchains, insns_inline_mem;
    uint64_t flushes_full, chains_cross, lookups, lookup_hits, lookup_clears, lookup_miss_key,
        lookup_miss_tlb, lookup_bails, lookup_revalidated;
    uint64_t exits_unchained; /* through a chain jump's stub: not yet patched, its target page
                                 changed, or (same page) the budget spent */
    uint64_t cpl_mismatch;    /* entries interpreted: translated for the other privilege class */
    /* native forms undone because the encoder refused them (or the block's space ran out): the
     * instruction took its handler path instead (tests expect none) */
    uint64_t encode_fallbacks;
    /* LOOKOUT_BT_PROFILE=1 (else 0): runs of translated blocks, and the guest instructions and
     * the host instructions on their fall-through paths those runs stand for (jit.c) */
    uint64_t prof_runs, prof_guest, prof_host;
    /* probe groups (jit.c): blocks translated with them, the accesses translated as members, and
     * runs that took the plain body because a group's prologue probe failed */
    uint64_t grp_blocks, grp_members, grp_fallbacks;
};
void bt_jit_get_stats(const struct bt_cpu *c, struct bt_jit_stats *st);

/* For tests: encodes `rounds` pairs of pseudo-random host instructions (from `seed`; the second
 * of each pair differs from the first in one field) through the translator's encoding cache and
 * directly, and the branches it writes without the encoder (JMP, CALL, Jcc rel32) both ways;
 * returns how many came out different (bytes, length or failure). */
unsigned bt_jit_enc_selftest(unsigned rounds, uint64_t seed);
