/* The translator: decoded blocks become host x86-64 code in a per-vCPU code cache (see jit.h for
 * the contract with core.c).
 *
 * Form of a translation.  On entry RBX holds the struct bt_cpu pointer (pinned for the whole
 * block) and R12 gets s.rip, the linear RIP the block was entered at: blocks are keyed by
 * guest-physical address, so the same translation serves every virtual alias of its page and
 * every instruction's RIP is R12 plus its offset in the block.  (A chained jump sets R12 itself
 * and enters after that load, JIT_ENTRY2; s.rip is written for C code and on the way out.)
 * Each guest instruction becomes either
 *   - native code: register/immediate forms (MOV, the ALU group, shifts and rotates, IMUL,
 *     MOVZX/MOVSX, SETcc, CMOVcc, ...), the direct JMP/Jcc/CALL and RET that end a block, and
 *     forms with one guest memory operand in 64-bit code (loads, stores, read-modify-write,
 *     PUSH/POP, SSE moves); MUL/DIV, BSF/BSR, BT*, LOCK CMPXCHG/XADD/XCHG, indirect JMP/CALL
 *     (native_forms, native_indirect: each checks on the host what its handler would fault on
 *     and leaves those cases to the handler).  They load the guest registers from c->s.gpr, run the
 * same host instruction, store the result with the x86 write rules, and take the six arithmetic
 * flags from the host's RFLAGS (PUSHFQ), exactly as alu.c computes them.  A memory operand is
 *     reached through an inline probe that does bt_read's/bt_write's TLB fast path (probe_emit)
 *     and leaves what makes the host address; anything else (TLB miss, MMIO, a watched code
 *     page, dirty logging, a fault) takes the instruction's slow path, its handler; or
 *   - a call to the interpreter's handler with the decoded struct bt_insn baked in as an immediate
 *     (call-threaded), after recording insn_rip/next_rip/s.rip as the interpreter loop does.
 *     After the call the code leaves the block, as the interpreter would, when the handler
 *     branched (s.rip != next_rip), asked for an exit, set an interrupt shadow, or queued a
 *     code-cache invalidation (a store into a code page: self-modifying code).
 * icount (in ICOUNT_REG while translated code runs, c->icount for C code: sync_out/sync_in)
 * counts completed instructions exactly as the interpreter does before any handler runs,
 * so a fault (bt_raise longjmps from the handler through the translated frame to bt_exec's
 * setjmp, which restores the callee-saved registers) sees the same state as interpreted.
 *
 * The code cache: one memfd, mapped read-write for emitting and read-execute for running, never
 * both.  Bounded (JIT_CACHE_BYTES); when it is full the caller flushes the decoded-block cache and
 * with it every translation.
 *
 * Chaining: an exit to a direct successor on the same page (JMP/Jcc targets, the fall-through of
 * a block cut at its size limit) ends in a patchable jump.  The first time it is taken unpatched
 * the block returns to the interpreter loop, and if the loop's next block is that successor
 * (nothing else happened in between), bt_jit_run patches the jump to it.  Before a chained jump
 * the code checks what the loop checks between blocks (budget, exit requests, kicks, queued
 * invalidations, pending events).  Other exits (indirect branches, returns, anything a handler
 * decides) go back to the loop, which looks the next block up by hash.  When core.c drops a block
 * (its page was written) every jump chained into its translation is unpatched (bt_jit_drop).
 *
 * Trust: the emitted code operates on guest register values and on guest RAM only through a
 * host address the soft TLB holds for a whole 4 KiB page (from guest_ptr(), see mmu.c), with an
 * in-page offset and no page crossing, and only where bt_read/bt_write would touch it without
 * further checks; control registers and everything that can fault are reached through the
 * handlers.  Instruction forms are emitted with Zydis's encoder; a form the encoder refuses
 * takes the handler path instead, never a wrong encoding. */
#include "cpu/bt/jit.h"

#include <errno.h>
#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "cpu/bt/bt.h"
#include "cpu/bt/cfi.h"
#include "devices/lapic.h"
#include "util/log.h"

#define JIT_CACHE_BYTES                                                                            \
    (64u << 20) /* inline TLB checks made code bigger; 16 MiB filled ~2x a shell loop */
/* room that must be left before translating a block: 64 instructions at the longest handler
 * path (~110 bytes) and the tail, with margin */
#define JIT_BLOCK_RESERVE  (32u << 10)
#define JIT_UNTRANSLATABLE ((void *)1)
/* A block is interpreted on its first JIT_HOT_RUNS entries from the loop (the slot counts them:
 * small integers 2..JIT_HOT_MAX+1) and translated on the next.  Most of a kernel boot runs once,
 * and translating that code would cost more than interpreting it (Zydis decoding and encoding
 * dominate translation).  16 rather than 4: the Debian boot ~2.8 s of CPU against ~3.0 s, the
 * shell loop and a gzip | sha256sum run the same within the noise (measured 1, 4, 8, 16, 32). */
#define JIT_HOT_RUNS 16u
#define JIT_HOT_MAX  64u

/* A translation starts with MOV R12, [RBX + s.rip] (REX.W 8B /r, disp32: 7 bytes): the loop and
 * the inline lookup enter there; chained jumps set R12 themselves and enter after it. */
#define JIT_ENTRY2 7u

#define JIT_MAX_TBS   65536u  /* core.c's block count */
#define JIT_MAX_LINKS 262144u /* full: flushed like a full cache (chaining would stop) */
#define JIT_BLOCK_MAX 64u     /* core.c's longest block: the chain check leaves room for one */
/* the constants {n, 0} for n < JIT_KCONST_N (icount_op), 16-byte aligned in the cache after the
 * trampoline */
#define JIT_KCONST_N (2u * JIT_BLOCK_MAX + 2u)

/* One translation.  A block's slot in core.c points here. */
struct jit_tb {
    uint64_t gpa;      /* guest-physical address of the block's first byte */
    uint32_t entry;    /* offset of the code in the cache */
    uint32_t links_in; /* exits of other translations patched to jump here: index+1 in links */
    uint8_t code_bits, stack_bits;
    bool user; /* made for CPL 3 (its memory probes test the user fast tags), else CPL 0-2 */
};

/* The inline lookup table (indirect branches, returns, handler-decided exits in 64-bit code):
 * direct-mapped by linear RIP, probed by the emitted code.  An entry is used only if the linear
 * RIP, CR3 and the mode word (CPL, code and stack size, paging: the 4 bytes at bt_cpu.cpl) match
 * and either no TLB flush or INVLPG that could drop RIP's page has happened since the entry was
 * validated (bt_cpu.tlb_gen) or the soft TLB maps RIP's page, executable at the current CPL, to
 * the guest-physical page the translation was made from (which validates it again).  The loop
 * validates an entry when it fills it, right after fetching from the page through the TLB.  So a
 * remapped page or another address space never runs a stale translation, exactly as a TLB entry
 * the guest has not flushed may still be used.  Entries die with their translation (bt_jit_drop,
 * bt_jit_flush). */
#define JIT_LOOKUP_SIZE 16384u
#define JIT_DROP_PAGES  16u
struct jit_lent {
    uint64_t rip, cr3; /* rip ~0: empty */
    /* bt_cpu.tlb_gen[gen & 1] when the entry was last validated ([1] for a global page) */
    uint64_t gen;
    uint64_t gpa;        /* the page (low 12 bits clear) */
    uint32_t mode, code; /* mode word; code offset in the cache */
    uint64_t pad[3];     /* one cache line */
};
_Static_assert(sizeof(struct jit_lent) == 64, "the lookup probe scales the index by 64");
_Static_assert(offsetof(struct bt_cpu, code_bits) == offsetof(struct bt_cpu, cpl) + 1 &&
                   offsetof(struct bt_cpu, stack_bits) == offsetof(struct bt_cpu, cpl) + 2 &&
                   offsetof(struct bt_cpu, paging) == offsetof(struct bt_cpu, cpl) + 3,
               "the mode word is the 4 bytes cpl, code_bits, stack_bits, paging");
/* placeholder guest-physical page of an unpatched cross-page chain: never a page address */
#define JIT_NO_GPA 0x8000000000000001ull

/* A patched exit: the rel32 of a chain jump ending at patch_end now points at a translation. */
struct jit_link {
    uint32_t patch_end, next;
};

struct bt_jit {
    bool enabled;
    unsigned hot_runs; /* interpreted entries before a block is translated */
    _Atomic bool *pending;
    const _Atomic bool *attention; /* the vCPU's LAPIC attention flag, NULL without a LAPIC */
    int fd;
    uint8_t *rw, *rx; /* the two views of the cache (NULL until the first translation) */
    size_t size, used, base_end;
    size_t exit_off;        /* the trampoline's return path */
    size_t reval_off;       /* lookup_revalidate's shared code */
    size_t cfi_hook_off[2]; /* cfi_hook_stub for bt_cfi_call, bt_cfi_ret */
    size_t handler_off;     /* handler_stub: a handler call and the checks after it, shared */
    size_t kconst_off;      /* the icount constants (JIT_KCONST_N of 16 bytes; 0 until made) */
    /* The inline access check, encoded once per [write][size 1, 2, 4, 8, 16] (it depends on
     * nothing else) and copied: encoding its ~15 instructions per memory operand showed in
     * translation time.  tpl_slow: offsets just after its jumps to the slow path (rel32). */
    uint8_t tpl[2][2][5][128]; /* [user][write][size] */
    uint8_t tpl_len[2][2][5], tpl_slow[2][2][5][4], tpl_nslow[2][2][5];
    /* Host properties the emitted code may use, unless LOOKOUT_BT_GENERIC=1 says to translate as
     * for any x86-64 host (a test run does): BMI2 (RORX in the probes); pure_flags: the host's
     * SHL/SHR/SAR by a non-zero count set the six arithmetic flags, the ones the SDM leaves
     * undefined included, regardless of the incoming ones (host_flags_pure), so the guest's
     * need not be loaded before them to get what the interpreter gets; pure_imul: the same for
     * IMUL (true on the Intel hosts measured; an AMD EPYC keeps the incoming SF/ZF/AF/PF, which
     * the SDM leaves undefined, so there the guest's are loaded before IMUL only). */
    bool bmi2, pure_flags, pure_imul;
    /* the host's arithmetic flags are read by LAHF and SETO rather than PUSHFQ (capture_flags):
     * on an AMD EPYC host PUSHFQ + POP took ~1.1 ns each in a loop of dependent ALU operations,
     * the LAHF form ~0.26 ns; on Intel PUSHFQ is a few uops and stays */
    bool lahf_flags;
    bool pure_imm; /* and their immediate forms give what the CL forms give (host_shift_imm_same) */
    bool user;     /* the block being translated runs at CPL 3 (translations are per CPL class) */
    /* probe groups in user blocks (LOOKOUT_BT_GROUPS=0 turns them off, for measurements; =all
     * puts them in kernel blocks too, as the unit tests do) */
    bool groups, groups_all;
    const uint8_t *xbytes; /* ... and crosses into the next page with these bytes (bt_jit_run) */
    unsigned xlen;
    void (*enter)(struct bt_cpu *c, const void *code, struct bt_jit *j);
    struct jit_tb *tbs;
    struct jit_link *links;
    struct enc_cached *enc_cache; /* NULL if it could not be allocated (encodes every time) */
    uint32_t ntbs, nlinks;

    /* written by the translated code (an absolute address) */
    uint64_t last_exit; /* set by a chainable exit: its chain jump's patch_end (0: none) */

    /* the state at the last chainable exit, to validate the next block as its successor */
    uint64_t exit_rip, exit_icount, exit_cr3;
    uint8_t exit_cpl, exit_code_bits, exit_stack_bits;
    bool exit_valid;
    struct bt_jit_stats st;

    /* guest-physical pages whose translations were dropped since the last run: their lookup
     * entries are cleared before translated code runs again (ndrop > JIT_DROP_PAGES: all) */
    uint64_t drop_pages[JIT_DROP_PAGES];
    unsigned ndrop;
    /* while translating a block of 64-bit code: the jumps of REP string instructions in its
     * middle that re-run themselves (a chunk done), to one inline lookup after the block's end */
    bool mid_lookup;
    unsigned nmid;
    size_t mid_jumps[JIT_BLOCK_MAX];
    struct jit_lent ltab[JIT_LOOKUP_SIZE]; /* read by the translated code (absolute address) */
    struct jit_prof_state *prof;           /* LOOKOUT_BT_PROFILE=1, else NULL (jit_prof_*) */
};

/* ---- emitter --------------------------------------------------------------------------- */

/* Zydis's encoder costs about a microsecond per instruction, and a translation repeats the
 * same requests (state loads and stores, flag merges, probe calls' neighbours) over and over:
 * encoded bytes are remembered by request in a direct-mapped table.  The key is the request
 * packed into words (enc_key: every field the operand constructors below set, nothing else),
 * compared in full; packing instead of keeping whole ZydisEncoderRequests (~350 bytes each)
 * keeps the table in the L2 cache and spares building a request on a hit. */
#define ENC_CACHE_SIZE 2048u
#define ENC_KEY_OPS    4u                      /* requests with more operands are not cached */
#define ENC_KEY_WORDS  (2u + 2u * ENC_KEY_OPS) /* header, prefixes, two words per operand */
struct enc_cached {
    uint64_t key[ENC_KEY_WORDS];
    uint8_t len; /* 0: empty */
    uint8_t bytes[ZYDIS_MAX_INSTRUCTION_LENGTH];
};

struct emit {
    uint8_t *buf;
    size_t pos, cap;
    bool fail;
    struct enc_cached *cache;            /* may be NULL */
    ZydisInstructionAttributes prefixes; /* for the next request only (LOCK), then cleared */
    const struct bt_jit *jit; /* the cache emitted into (NULL: a template, no cache offsets) */
    /* The host's arithmetic flags are the guest's: the instruction just emitted was a native
     * register form that set all six and nothing after it touched the host flags (a Jcc right
     * after it tests them directly).  translate() clears it before each instruction. */
    bool hflags;
    /* The host's arithmetic flags were just set by the previous instruction, a native
     * register-form ALU operation, whether or not it also stored them in FLAGS_REG (it does not
     * when translate() found that only this instruction reads them: host_reader).  A CMOVcc or
     * SETcc here then runs on the host's flags.  translate() moves it to hfresh_prev and
     * clears it before each instruction. */
    bool hfresh, hfresh_prev;
    /* sse_usable's checks passed earlier in this block and no handler has run since (only a
     * handler changes CR0 or CR4), so they need not be repeated.  translate() clears it at every
     * instruction that takes its handler. */
    bool sse_ok;
    /* The instruction being translated is a memory ADD/SUB/AND/OR/XOR/CMP/TEST (mem_flag_writer)
     * whose flags nothing reads or can see before they are overwritten: its fast path need not
     * store them (its slow path's handler does).  Set by translate() per instruction. */
    bool mflags_dead;
    /* Guest GPRs kept in c->s.gpr whose upper 32 bits are known to be zero there (bit per
     * register): the last write in this block was a 32-bit one (hz_after).  A 32-bit operation
     * may then work on the slot's low dword in place (`and dword [slot], r15d`) instead of
     * through a host register and a zero-extending 64-bit store.  0 at the block's start and
     * after anything but the plain register writers hz_after knows. */
    uint16_t hz;
    /* the block's probe groups (grp_plan) while the grouped body is emitted, else NULL; and the
     * index of the instruction being emitted */
    const struct grp_plan *grp;
    unsigned grp_k;
    unsigned grp_used; /* accesses that took their group's host address (mem_probe) */
    /* PROBED (probed()) is [RSI + member_disp]: mem_probe found a group member and left RSI at
     * its group's lowest byte on the host, RDX unset */
    bool member_at;
    int64_t member_disp;
    /* RSI held group rsi_grp's host address at code offset rsi_at (-1: none known); a member
     * of that group reuses it if nothing emitted since can have changed RSI (rsi_kept) */
    int rsi_grp;
    size_t rsi_at;
};

static ZydisEncoderOperand R(ZydisRegister r)
{
    ZydisEncoderOperand o;
    memset(&o, 0, sizeof(o));
    o.type = ZYDIS_OPERAND_TYPE_REGISTER;
    o.reg.value = r;
    return o;
}

static ZydisEncoderOperand I(int64_t v)
{
    ZydisEncoderOperand o;
    memset(&o, 0, sizeof(o));
    o.type = ZYDIS_OPERAND_TYPE_IMMEDIATE;
    o.imm.s = v;
    return o;
}

static ZydisEncoderOperand MX(ZydisRegister base, ZydisRegister index, unsigned scale, int64_t disp,
                              unsigned size)
{
    ZydisEncoderOperand o;
    memset(&o, 0, sizeof(o));
    o.type = ZYDIS_OPERAND_TYPE_MEMORY;
    o.mem.base = base;
    o.mem.index = index;
    o.mem.scale = (ZyanU8)(index == ZYDIS_REGISTER_NONE ? 0 : scale);
    o.mem.displacement = disp;
    o.mem.size = (ZyanU16)size;
    return o;
}

static ZydisEncoderOperand M(ZydisRegister base, int64_t disp, unsigned size)
{
    return MX(base, ZYDIS_REGISTER_NONE, 0, disp, size);
}

/* Packs a request into key words; returns how many (0: not cacheable).  Only the fields R(),
 * I(), M() and MX() set are read, and each operand is canonical (those constructors zero the
 * rest), so equal keys mean equal requests. */
static unsigned enc_key(uint64_t *key, ZydisMnemonic m, ZydisInstructionAttributes prefixes,
                        unsigned n, const ZydisEncoderOperand *ops)
{
    if (n > ENC_KEY_OPS) return 0;
    key[0] = (uint64_t)m | (uint64_t)n << 32;
    key[1] = (uint64_t)prefixes;
    for (unsigned k = 0; k < n; k++) {
        const ZydisEncoderOperand *o = &ops[k];
        uint64_t w = (uint64_t)o->type, v = 0;
        switch (o->type) {
        case ZYDIS_OPERAND_TYPE_REGISTER:
            if (o->reg.is4) return 0;
            w |= (uint64_t)o->reg.value << 8;
            break;
        case ZYDIS_OPERAND_TYPE_MEMORY:
            w |= (uint64_t)o->mem.size << 8 | (uint64_t)o->mem.base << 24 |
                 (uint64_t)o->mem.index << 40 | (uint64_t)o->mem.scale << 56;
            v = (uint64_t)o->mem.displacement;
            break;
        case ZYDIS_OPERAND_TYPE_IMMEDIATE: v = o->imm.u; break;
        default: return 0;
        }
        key[2 + 2 * k] = w;
        key[3 + 2 * k] = v;
    }
    return 2 + 2 * n;
}

static void enc(struct emit *e, ZydisMnemonic m, unsigned n, const ZydisEncoderOperand *ops)
{
    if (e->fail) return;
    ZydisInstructionAttributes prefixes = e->prefixes;
    e->prefixes = 0;
    if (e->cap - e->pos < ZYDIS_MAX_INSTRUCTION_LENGTH) {
        e->fail = true;
        return;
    }
    struct enc_cached *slot = NULL;
    uint64_t key[ENC_KEY_WORDS];
    unsigned nk = e->cache ? enc_key(key, m, prefixes, n, ops) : 0;
    if (nk) {
        uint64_t h = 0xcbf29ce484222325ull;
        for (unsigned k = 0; k < nk; k++)
            h = (h ^ key[k]) * 0x100000001b3ull;
        slot = &e->cache[(h ^ (h >> 29) ^ (h >> 47)) & (ENC_CACHE_SIZE - 1)];
        if (slot->len && memcmp(slot->key, key, nk * 8) == 0) { /* key[0] holds n */
            memcpy(e->buf + e->pos, slot->bytes, slot->len);
            e->pos += slot->len;
            return;
        }
    }
    ZydisEncoderRequest r;
    memset(&r, 0, sizeof(r));
    r.machine_mode = ZYDIS_MACHINE_MODE_LONG_64;
    r.mnemonic = m;
    r.prefixes = prefixes;
    r.operand_count = (ZyanU8)n;
    for (unsigned k = 0; k < n; k++)
        r.operands[k] = ops[k];
    ZyanUSize len = e->cap - e->pos;
    ZyanStatus st = ZydisEncoderEncodeInstruction(&r, e->buf + e->pos, &len);
    if (!ZYAN_SUCCESS(st)) {
        log_debug("translator: cannot encode %s/%u (status %#x)", ZydisMnemonicGetString(m), n,
                  (unsigned)st);
        e->fail = true;
        return;
    }
    if (slot && len <= sizeof(slot->bytes)) {
        memset(slot->key, 0, sizeof(slot->key));
        memcpy(slot->key, key, nk * 8);
        slot->len = (uint8_t)len;
        memcpy(slot->bytes, e->buf + e->pos, len);
    }
    e->pos += len;
}

#define E0(e, m)          enc((e), ZYDIS_MNEMONIC_##m, 0, NULL)
#define E1(e, m, a)       enc((e), ZYDIS_MNEMONIC_##m, 1, (ZydisEncoderOperand[]){a})
#define E2(e, m, a, b)    enc((e), ZYDIS_MNEMONIC_##m, 2, (ZydisEncoderOperand[]){a, b})
#define E3(e, m, a, b, c) enc((e), ZYDIS_MNEMONIC_##m, 3, (ZydisEncoderOperand[]){a, b, c})

/* A near branch with a 32-bit displacement through Zydis's encoder (jrel's fallback). */
static size_t jrel_zydis(struct emit *e, ZydisMnemonic m)
{
    if (e->fail) return e->pos;
    ZydisEncoderRequest r;
    memset(&r, 0, sizeof(r));
    r.machine_mode = ZYDIS_MACHINE_MODE_LONG_64;
    r.mnemonic = m;
    r.branch_type = ZYDIS_BRANCH_TYPE_NEAR;
    r.branch_width = ZYDIS_BRANCH_WIDTH_32;
    r.operand_count = 1;
    r.operands[0] = I(0);
    ZyanUSize len = e->cap - e->pos;
    if (len < ZYDIS_MAX_INSTRUCTION_LENGTH ||
        !ZYAN_SUCCESS(ZydisEncoderEncodeInstruction(&r, e->buf + e->pos, &len)) || len < 5) {
        e->fail = true;
        return e->pos;
    }
    e->pos += len;
    return e->pos;
}

/* A near branch with a 32-bit displacement to be patched; returns the offset just after it. */
static size_t jrel(struct emit *e, ZydisMnemonic m)
{
    if (e->fail) return e->pos;
    /* JMP, CALL and the sixteen Jcc with a 32-bit displacement: fixed opcodes (SDM vol. 2),
     * written directly (this ran the encoder on every branch: 1 % of a boot's CPU); anything
     * else goes through Zydis */
    static const ZydisMnemonic jcc[16] = {
        ZYDIS_MNEMONIC_JO, ZYDIS_MNEMONIC_JNO, ZYDIS_MNEMONIC_JB,  ZYDIS_MNEMONIC_JNB,
        ZYDIS_MNEMONIC_JZ, ZYDIS_MNEMONIC_JNZ, ZYDIS_MNEMONIC_JBE, ZYDIS_MNEMONIC_JNBE,
        ZYDIS_MNEMONIC_JS, ZYDIS_MNEMONIC_JNS, ZYDIS_MNEMONIC_JP,  ZYDIS_MNEMONIC_JNP,
        ZYDIS_MNEMONIC_JL, ZYDIS_MNEMONIC_JNL, ZYDIS_MNEMONIC_JLE, ZYDIS_MNEMONIC_JNLE};
    if (e->cap - e->pos < ZYDIS_MAX_INSTRUCTION_LENGTH) {
        e->fail = true;
        return e->pos;
    }
    uint8_t *p = e->buf + e->pos;
    size_t op = 0;
    if (m == ZYDIS_MNEMONIC_JMP || m == ZYDIS_MNEMONIC_CALL) {
        p[op++] = m == ZYDIS_MNEMONIC_JMP ? 0xe9 : 0xe8;
    } else {
        for (unsigned cc = 0; cc < 16 && !op; cc++)
            if (jcc[cc] == m) {
                p[op++] = 0x0f;
                p[op++] = (uint8_t)(0x80 + cc);
            }
    }
    if (op) {
        memset(p + op, 0, 4);
        e->pos += op + 4;
        return e->pos;
    }
    return jrel_zydis(e, m);
}

static void patch(struct emit *e, size_t after, size_t target)
{
    if (e->fail) return;
    int32_t rel = (int32_t)((int64_t)target - (int64_t)after);
    memcpy(e->buf + after - 4, &rel, 4);
}

/* a branch to an already known offset */
static void jto(struct emit *e, ZydisMnemonic m, size_t target)
{
    patch(e, jrel(e, m), target);
}

/* One operand for bt_jit_enc_selftest: a register, memory or immediate operand from small sets
 * (so that many requests share a cache slot or differ in a single field). */
static ZydisEncoderOperand enc_test_operand(uint64_t *x)
{
    static const ZydisRegister regs[] = {
        ZYDIS_REGISTER_RAX, ZYDIS_REGISTER_RCX, ZYDIS_REGISTER_RSP, ZYDIS_REGISTER_RBP,
        ZYDIS_REGISTER_R12, ZYDIS_REGISTER_R13, ZYDIS_REGISTER_EAX, ZYDIS_REGISTER_R9D,
        ZYDIS_REGISTER_CX,  ZYDIS_REGISTER_AL,  ZYDIS_REGISTER_SIL, ZYDIS_REGISTER_R15B};
    static const int64_t vals[] = {0,    1,     -1,     8,           0x7f,
                                   0x80, -0x80, 0x1000, -0x12345678, 0x123456789a};
    *x = *x * 6364136223846793005ull + 1442695040888963407ull;
    uint64_t r = *x >> 20;
    const unsigned nregs = sizeof(regs) / sizeof(regs[0]);
    switch (r % 3) {
    case 0: return R(regs[(r >> 2) % nregs]);
    case 1: {
        static const ZydisRegister index[] = {ZYDIS_REGISTER_NONE, ZYDIS_REGISTER_RCX,
                                              ZYDIS_REGISTER_R13, ZYDIS_REGISTER_RAX};
        return MX(regs[(r >> 2) % 6], index[(r >> 6) % 4], 1u << ((r >> 10) & 3),
                  vals[(r >> 12) % 10], 1u << ((r >> 16) % 4));
    }
    default: return I(vals[(r >> 2) % 10]);
    }
}

unsigned bt_jit_enc_selftest(unsigned rounds, uint64_t seed)
{
    static const ZydisMnemonic ms[] = {ZYDIS_MNEMONIC_MOV,  ZYDIS_MNEMONIC_ADD, ZYDIS_MNEMONIC_LEA,
                                       ZYDIS_MNEMONIC_CMP,  ZYDIS_MNEMONIC_SHL, ZYDIS_MNEMONIC_IMUL,
                                       ZYDIS_MNEMONIC_PUSH, ZYDIS_MNEMONIC_XCHG};
    struct enc_cached *cache = calloc(ENC_CACHE_SIZE, sizeof(*cache));
    if (!cache) return rounds ? 1 : 0;
    unsigned bad = 0;
    uint64_t x = seed;
    for (unsigned k = 0; k < rounds; k++) {
        ZydisEncoderOperand ops[3];
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        ZydisMnemonic m = ms[(x >> 33) % 8];
        unsigned n = 1 + (unsigned)(x >> 40) % 3;
        bool lock = ((x >> 50) & 7) == 0;
        for (unsigned o = 0; o < n; o++)
            ops[o] = enc_test_operand(&x);
        for (int pass = 0; pass < 2; pass++) {
            if (pass == 1) { /* the twin: one field changed */
                ZydisEncoderOperand *o = &ops[(x >> 13) % n];
                switch ((x >> 17) % 5) {
                case 0:
                    o->reg.value = o->reg.value == ZYDIS_REGISTER_RDX ? ZYDIS_REGISTER_RBX
                                                                      : ZYDIS_REGISTER_RDX;
                    break;
                case 1: o->mem.displacement += 8; break;
                case 2: o->mem.size = (ZyanU16)(o->mem.size == 8 ? 4 : 8); break;
                case 3: o->imm.s ^= 0x100; break;
                default:
                    if (o->mem.index != ZYDIS_REGISTER_NONE)
                        o->mem.scale = (ZyanU8)(o->mem.scale == 1 ? 4 : 1);
                    else
                        o->mem.base = ZYDIS_REGISTER_RDI;
                    break;
                }
            }
            uint8_t a[32], b[32];
            struct emit ea = {.buf = a, .cap = sizeof(a)}, eb = ea;
            eb.buf = b;
            eb.cache = cache;
            for (int rep = 0; rep < 2; rep++) { /* the second one can only be a hit */
                ea.pos = eb.pos = 0;
                ea.fail = eb.fail = false;
                ea.prefixes = eb.prefixes = lock ? ZYDIS_ATTRIB_HAS_LOCK : 0;
                enc(&ea, m, n, ops);
                enc(&eb, m, n, ops);
                if (ea.fail != eb.fail || ea.pos != eb.pos || memcmp(a, b, ea.pos) != 0) bad++;
            }
        }
    }
    free(cache);
    /* jrel's own bytes against the encoder's, for every branch it writes itself */
    static const ZydisMnemonic br[] = {
        ZYDIS_MNEMONIC_JMP, ZYDIS_MNEMONIC_CALL, ZYDIS_MNEMONIC_JO, ZYDIS_MNEMONIC_JNO,
        ZYDIS_MNEMONIC_JB,  ZYDIS_MNEMONIC_JNB,  ZYDIS_MNEMONIC_JZ, ZYDIS_MNEMONIC_JNZ,
        ZYDIS_MNEMONIC_JBE, ZYDIS_MNEMONIC_JNBE, ZYDIS_MNEMONIC_JS, ZYDIS_MNEMONIC_JNS,
        ZYDIS_MNEMONIC_JP,  ZYDIS_MNEMONIC_JNP,  ZYDIS_MNEMONIC_JL, ZYDIS_MNEMONIC_JNL,
        ZYDIS_MNEMONIC_JLE, ZYDIS_MNEMONIC_JNLE};
    for (size_t k = 0; k < sizeof(br) / sizeof(br[0]) && rounds; k++) {
        uint8_t a[32], b[32];
        struct emit ea = {.buf = a, .cap = sizeof(a)}, eb = {.buf = b, .cap = sizeof(b)};
        size_t la = jrel(&ea, br[k]), lb = jrel_zydis(&eb, br[k]);
        if (ea.fail || eb.fail || la != lb || memcmp(a, b, la) != 0) bad++;
    }
    return bad;
}

/* ---- state layout ---------------------------------------------------------------------- */

/* Appends `len` bytes encoded earlier (a template); false (and e->fail) if they do not fit. */
static bool emit_copy(struct emit *e, const uint8_t *bytes, size_t len)
{
    if (e->fail) return false;
    if (e->cap - e->pos < len) {
        e->fail = true;
        return false;
    }
    memcpy(e->buf + e->pos, bytes, len);
    e->pos += len;
    return true;
}

#define C_GPR(r)    ((int64_t)offsetof(struct bt_cpu, s.gpr) + 8 * (int64_t)(r))
#define C_RIP       ((int64_t)offsetof(struct bt_cpu, s.rip))
#define C_FLAGS     ((int64_t)offsetof(struct bt_cpu, s.rflags))
#define C_INSN_RIP  ((int64_t)offsetof(struct bt_cpu, insn_rip))
#define C_NEXT_RIP  ((int64_t)offsetof(struct bt_cpu, next_rip))
#define C_ICOUNT    ((int64_t)offsetof(struct bt_cpu, icount))
#define C_EXIT_NOW  ((int64_t)offsetof(struct bt_cpu, exit_now))
#define C_SHADOW    ((int64_t)offsetof(struct bt_cpu, s.ev.interrupt_shadow))
#define C_KICKED    ((int64_t)offsetof(struct bt_cpu, kicked))
#define C_INTR_PEND ((int64_t)offsetof(struct bt_cpu, s.ev.interrupt_pending))
#define C_NMI_PEND  ((int64_t)offsetof(struct bt_cpu, s.ev.nmi_pending))
#define C_CHAIN_END ((int64_t)offsetof(struct bt_cpu, jit_chain_end))
#define C_CR3       ((int64_t)offsetof(struct bt_cpu, s.cr3))
#define C_HALTED    ((int64_t)offsetof(struct bt_cpu, halted))
#define L_RIP       ((int64_t)offsetof(struct jit_lent, rip))
#define L_CR3       ((int64_t)offsetof(struct jit_lent, cr3))
#define L_GEN       ((int64_t)offsetof(struct jit_lent, gen))
#define L_GPA       ((int64_t)offsetof(struct jit_lent, gpa))
#define C_TLBGEN    ((int64_t)offsetof(struct bt_cpu, tlb_gen))
#define L_MODE      ((int64_t)offsetof(struct jit_lent, mode))
#define L_CODE      ((int64_t)offsetof(struct jit_lent, code))

#define HCPU ZYDIS_REGISTER_RBX /* the struct bt_cpu pointer */
#define R12  ZYDIS_REGISTER_R12

/* host scratch registers by size: 0 = RAX family, 1 = RCX, 2 = RDX */
static ZydisRegister hreg(int which, unsigned size)
{
    static const ZydisRegister t[3][4] = {
        {ZYDIS_REGISTER_AL, ZYDIS_REGISTER_AX, ZYDIS_REGISTER_EAX, ZYDIS_REGISTER_RAX},
        {ZYDIS_REGISTER_CL, ZYDIS_REGISTER_CX, ZYDIS_REGISTER_ECX, ZYDIS_REGISTER_RCX},
        {ZYDIS_REGISTER_DL, ZYDIS_REGISTER_DX, ZYDIS_REGISTER_EDX, ZYDIS_REGISTER_RDX}};
    unsigned k = size == 1 ? 0 : size == 2 ? 1 : size == 4 ? 2 : 3;
    return t[which][k];
}

/* ---- guest state in host registers ---------------------------------------------------------
 *
 * Inside translated code (from the trampoline's entry to its exit, across chained jumps and
 * inline lookups) the guest GPRs used most (counted in the shell loop, sha256sum, gzip and xz:
 * RCX, RAX, RDX, RSI, RDI, R8, RSP for every PUSH, POP, CALL and RET, and R11, used much by xz)
 * live in host registers (RBP, R8-R11, R15, R13, RDI), and the guest's six arithmetic flags
 * in R14 (its other bits mean nothing); c->s.gpr[] and the arithmetic bits of c->s.rflags are
 * stale for them.  Every way out to C writes them back first (sync_out) and reads them again
 * afterwards (sync_in): the handler calls, the --cfi hooks and the trampoline's exit; a fault
 * longjmps out of a handler, after its sync_out.  Emitted code reaches a guest GPR only through
 * G() (a register or the memory slot), the flags only through FLAGS_REG. */
#define FLAGS_REG ZYDIS_REGISTER_R14
/* c->icount, the instructions completed, while translated code runs: a counter in a register
 * rather than c->icount itself, whose add-and-reload at every block end was a chain through
 * memory (~6 cycles a block in tight loops).  XMM15: no GPR is free, and translated SSE code
 * uses XMM0/XMM1 only. */
#define ICOUNT_REG ZYDIS_REGISTER_XMM15
#define NPIN       8
static const unsigned pin_guest[NPIN] = {RAX, RCX, RDX, RSI, RDI, R8, RSP, R11};
static const ZydisRegister pin_host[NPIN][4] = {
    {ZYDIS_REGISTER_BPL, ZYDIS_REGISTER_BP, ZYDIS_REGISTER_EBP, ZYDIS_REGISTER_RBP},
    {ZYDIS_REGISTER_R8B, ZYDIS_REGISTER_R8W, ZYDIS_REGISTER_R8D, ZYDIS_REGISTER_R8},
    {ZYDIS_REGISTER_R9B, ZYDIS_REGISTER_R9W, ZYDIS_REGISTER_R9D, ZYDIS_REGISTER_R9},
    {ZYDIS_REGISTER_R10B, ZYDIS_REGISTER_R10W, ZYDIS_REGISTER_R10D, ZYDIS_REGISTER_R10},
    {ZYDIS_REGISTER_R11B, ZYDIS_REGISTER_R11W, ZYDIS_REGISTER_R11D, ZYDIS_REGISTER_R11},
    {ZYDIS_REGISTER_R15B, ZYDIS_REGISTER_R15W, ZYDIS_REGISTER_R15D, ZYDIS_REGISTER_R15},
    {ZYDIS_REGISTER_R13B, ZYDIS_REGISTER_R13W, ZYDIS_REGISTER_R13D, ZYDIS_REGISTER_R13},
    {ZYDIS_REGISTER_DIL, ZYDIS_REGISTER_DI, ZYDIS_REGISTER_EDI, ZYDIS_REGISTER_RDI}};

/* the host register holding guest GPR `reg` at `size` bytes, or ZYDIS_REGISTER_NONE */
static ZydisRegister pinned(unsigned reg, unsigned size)
{
    unsigned k = size == 1 ? 0 : size == 2 ? 1 : size == 4 ? 2 : 3;
    for (unsigned p = 0; p < NPIN; p++)
        if (pin_guest[p] == reg) return pin_host[p][k];
    return ZYDIS_REGISTER_NONE;
}

/* guest GPR `reg` as an operand of `size` bytes: its host register or its slot in c->s.gpr.  A
 * 32-bit write zero-extends only in the register: writers use 8 bytes for 32-bit results. */
static ZydisEncoderOperand G(unsigned reg, unsigned size)
{
    ZydisRegister h = pinned(reg, size);
    return h != ZYDIS_REGISTER_NONE ? R(h) : M(HCPU, C_GPR(reg), size);
}

/* The layout of the guest's six flags in FLAGS_REG.  With PUSHFQ reads (capture_flags) their
 * RFLAGS positions.  With LAHF reads (bt_jit.lahf_flags) what `lahf; seto al` leaves in AX:
 * RFLAGS[7:0] (SF ZF AF PF CF) in bits 15:8 and OF in bit 0, so a read needs no moving of bits
 * (4 instructions instead of 7, and no partial-register merge).  Either way the other bits mean
 * nothing and every reader masks. */
static bool lahf_layout(const struct emit *e)
{
    return e->jit && e->jit->lahf_flags;
}

/* RFLAGS mask `m` (arithmetic flags) at their FLAGS_REG positions in layout `lahf` */
static uint32_t fl_bits_lay(bool lahf, uint32_t m)
{
    if (!lahf) return m;
    return (m & (BT_ARITH_FLAGS & ~X86_FLAG_OF)) << 8 | ((m & X86_FLAG_OF) ? 1u : 0u);
}

static uint32_t fl_bits(const struct emit *e, uint32_t m)
{
    return fl_bits_lay(lahf_layout(e), m);
}

/* the bit of FLAGS_REG that holds RFLAGS flag `f` (one bit) */
static unsigned fl_bit(const struct emit *e, uint32_t f)
{
    return (unsigned)__builtin_ctz(fl_bits(e, f));
}

/* `dst` (a 32-bit register, not `tmp`) |= the six flags of FLAGS_REG at their RFLAGS positions.
 * Clobbers `tmp` and the host flags. */
static void flags_to_rflags(struct emit *e, bool lahf, ZydisRegister dst, ZydisRegister tmp)
{
    E2(e, MOV, R(tmp), R(ZYDIS_REGISTER_R14D));
    if (!lahf) {
        E2(e, AND, R(tmp), I(BT_ARITH_FLAGS));
        E2(e, OR, R(dst), R(tmp));
        return;
    }
    E2(e, SHR, R(tmp), I(8));
    E2(e, AND, R(tmp), I(BT_ARITH_FLAGS & ~X86_FLAG_OF)); /* SF ZF AF PF CF */
    E2(e, OR, R(dst), R(tmp));
    E2(e, MOV, R(tmp), R(ZYDIS_REGISTER_R14D));
    E2(e, AND, R(tmp), I(1));
    E2(e, SHL, R(tmp), I(11)); /* OF */
    E2(e, OR, R(dst), R(tmp));
}

/* c->s.gpr[] and c->s.rflags take the guest state held in host registers (FLAGS_REG in layout
 * `lahf`).  Clobbers RCX, RDX. */
static void sync_out_emit(struct emit *e, bool lahf)
{
    for (unsigned p = 0; p < NPIN; p++)
        E2(e, MOV, M(HCPU, C_GPR(pin_guest[p]), 8), R(pin_host[p][3]));
    E2(e, MOV, R(ZYDIS_REGISTER_RCX), M(HCPU, C_FLAGS, 8));
    E2(e, AND, R(ZYDIS_REGISTER_RCX), I(~(int64_t)BT_ARITH_FLAGS));
    flags_to_rflags(e, lahf, ZYDIS_REGISTER_ECX, ZYDIS_REGISTER_EDX);
    E2(e, MOV, M(HCPU, C_FLAGS, 8), R(ZYDIS_REGISTER_RCX));
    E2(e, MOVQ, M(HCPU, C_ICOUNT, 8), R(ICOUNT_REG));
}

/* the host registers take the guest state from c->s (after C code may have changed it).  In the
 * LAHF layout FLAGS_REG = RFLAGS << 8 with OF copied to bit 0 (BT + ADC: no scratch register).
 * Clobbers the host flags. */
static void sync_in_emit(struct emit *e, bool lahf)
{
    for (unsigned p = 0; p < NPIN; p++)
        E2(e, MOV, R(pin_host[p][3]), M(HCPU, C_GPR(pin_guest[p]), 8));
    if (lahf) {
        E2(e, MOV, R(ZYDIS_REGISTER_R14D), M(HCPU, C_FLAGS, 4));
        E2(e, SHL, R(ZYDIS_REGISTER_R14D), I(8));
        E2(e, BT, R(ZYDIS_REGISTER_R14D), I(11 + 8));
        E2(e, ADC, R(ZYDIS_REGISTER_R14D), I(0));
    } else {
        E2(e, MOV, R(FLAGS_REG), M(HCPU, C_FLAGS, 8));
    }
    E2(e, MOVQ, R(ICOUNT_REG), M(HCPU, C_ICOUNT, 8));
}

/* sync_out / sync_in are the same bytes everywhere (RBX-relative, no addresses): encoded once
 * (sync_templates, before the first translation) and copied, like the memory probes */
static uint8_t sync_tpl[2][2][128]; /* [FLAGS_REG layout: lahf][out, in] */
static size_t sync_len[2][2];
static pthread_once_t sync_once = PTHREAD_ONCE_INIT;

static void sync_templates(void)
{
    for (int l = 0; l < 2; l++)
        for (int k = 0; k < 2; k++) {
            struct emit t = {.buf = sync_tpl[l][k], .cap = sizeof(sync_tpl[l][k])};
            if (k == 0)
                sync_out_emit(&t, l);
            else
                sync_in_emit(&t, l);
            sync_len[l][k] = t.fail ? 0 : t.pos; /* 0: encode at each use */
        }
}

static void sync_copy(struct emit *e, int k)
{
    bool l = lahf_layout(e);
    if (!sync_len[l][k]) {
        if (k == 0)
            sync_out_emit(e, l);
        else
            sync_in_emit(e, l);
        return;
    }
    emit_copy(e, sync_tpl[l][k], sync_len[l][k]);
}

static void sync_out(struct emit *e)
{
    sync_copy(e, 0);
}

static void sync_in(struct emit *e)
{
    sync_copy(e, 1);
}

/* Around a call into C code that neither reads nor writes guest registers or flags and never
 * faults (the --cfi hooks): only the caller-saved host registers among the pinned ones need
 * keeping (RBP, R13, R15 and R14 are callee-saved).  Six pushes (RDI twice): the host stack
 * stays 16-byte aligned. */
static const ZydisRegister pin_volatile[6] = {ZYDIS_REGISTER_R8,  ZYDIS_REGISTER_R9,
                                              ZYDIS_REGISTER_R10, ZYDIS_REGISTER_R11,
                                              ZYDIS_REGISTER_RDI, ZYDIS_REGISTER_RDI};
static void save_volatile(struct emit *e)
{
    for (unsigned k = 0; k < 6; k++)
        E1(e, PUSH, R(pin_volatile[k]));
    E2(e, MOVQ, M(HCPU, C_ICOUNT, 8), R(ICOUNT_REG)); /* all XMM registers are caller-saved */
}
static void restore_volatile(struct emit *e)
{
    E2(e, MOVQ, R(ICOUNT_REG), M(HCPU, C_ICOUNT, 8));
    for (unsigned k = 6; k-- > 0;)
        E1(e, POP, R(pin_volatile[k]));
}

/* host register `which` = guest GPR `reg`, zero-extended from `size` bytes */
static void load_gpr(struct emit *e, int which, unsigned reg, unsigned size)
{
    if (size == 1 || size == 2)
        E2(e, MOVZX, R(hreg(which, 4)), G(reg, size));
    else
        E2(e, MOV, R(hreg(which, size)), G(reg, size));
}

/* guest GPR `reg` = host register `which` with the x86 write rules (8/16 merge, 32 zero-extends;
 * the caller guarantees the host register's upper half is zero for size 4) */
static void store_gpr(struct emit *e, int which, unsigned reg, unsigned size)
{
    unsigned s = size == 4 ? 8 : size;
    E2(e, MOV, G(reg, s), R(hreg(which, s)));
}

/* ECX = guest AH..BH (`reg` 0-3: bits 8-15 of RAX..RBX), zero-extended.  Clobbers RCX only. */
static void load_gpr_hi(struct emit *e, unsigned reg)
{
    E2(e, MOV, R(ZYDIS_REGISTER_RCX), G(reg, 8));
    E2(e, MOVZX, R(ZYDIS_REGISTER_ECX), R(ZYDIS_REGISTER_CH));
}

/* guest AH..BH (`reg` 0-3) = AL.  Clobbers RCX. */
static void store_gpr_hi_al(struct emit *e, unsigned reg)
{
    E2(e, MOV, R(ZYDIS_REGISTER_RCX), G(reg, 8));
    E2(e, MOV, R(ZYDIS_REGISTER_CH), R(ZYDIS_REGISTER_AL));
    E2(e, MOV, G(reg, 8), R(ZYDIS_REGISTER_RCX));
}

/* RAX = the linear RIP at block offset `off` (wrapped to 32 bits in 32-bit code) */
static void rip_at(struct emit *e, int64_t off, bool b32)
{
    if (b32)
        E2(e, LEA, R(ZYDIS_REGISTER_EAX), M(R12, off, 8)); /* the 32-bit result wraps */
    else
        E2(e, LEA, R(ZYDIS_REGISTER_RAX), M(R12, off, 8));
}

/* icount += n (sub: -= n) in ICOUNT_REG: PADDQ/PSUBQ xmm15, [RIP + the constant {n, 0} in the
 * cache's table] (66 44 0F D4/FB 3D disp32, encoded here: Zydis would need the length first). */
static void icount_op(struct emit *e, unsigned n, bool sub)
{
    if (!n || e->fail) return;
    if (!e->jit || !e->jit->kconst_off || n > JIT_KCONST_N - 1 || e->cap - e->pos < 9) {
        e->fail = true;
        return;
    }
    int64_t rel = (int64_t)(e->jit->kconst_off + 16 * n) - (int64_t)(e->pos + 9);
    uint8_t b[9] = {0x66, 0x44, 0x0f, sub ? 0xfb : 0xd4, 0x3d};
    int32_t r32 = (int32_t)rel;
    memcpy(b + 5, &r32, 4);
    emit_copy(e, b, sizeof(b));
}

static void icount_add(struct emit *e, unsigned n)
{
    icount_op(e, n, false);
}

static void flush_icount(struct emit *e, unsigned *pend)
{
    icount_add(e, *pend);
    *pend = 0;
}

/* `dst` (not RAX) takes the host's six arithmetic flags in FLAGS_REG's layout (lahf_layout); its
 * other bits mean nothing (every reader masks).  Changes no host flag and no other register.
 * PUSHFQ + POP (RFLAGS positions), or where that is slow (bt_jit.lahf_flags) LAHF and SETO. */
static void capture_flags(struct emit *e, ZydisRegister dst)
{
    if (!lahf_layout(e)) {
        E0(e, PUSHFQ);
        E1(e, POP, R(dst));
        return;
    }
    /* RAX parked in `dst`; the flags into AH and AL (the LAHF layout); swapped back.  RAX's full
     * value comes back from `dst` by renaming, so no chain of partial writes builds up through
     * RAX (a microbenchmark of three reads per dependent ALU loop: +0.00 ns per iteration, the
     * earlier form that moved OF to bit 11, 7 instructions: +0.69 ns) */
    E2(e, MOV, R(dst), R(ZYDIS_REGISTER_RAX));
    E0(e, LAHF);
    E1(e, SETO, R(ZYDIS_REGISTER_AL));
    E2(e, XCHG, R(dst), R(ZYDIS_REGISTER_RAX));
}

/* The guest's flags (FLAGS_REG) take `mask` of RDX, which holds the host RFLAGS.  Clobbers RDX. */
static void merge_flags(struct emit *e, uint32_t mask)
{
    if ((mask & BT_ARITH_FLAGS) == BT_ARITH_FLAGS) { /* all six: no merge */
        E2(e, MOV, R(FLAGS_REG), R(ZYDIS_REGISTER_RDX));
        return;
    }
    mask = fl_bits(e, mask);
    E2(e, AND, R(ZYDIS_REGISTER_EDX), I(mask));
    E2(e, AND, R(ZYDIS_REGISTER_R14D), I(~(int64_t)mask));
    E2(e, OR, R(ZYDIS_REGISTER_R14D), R(ZYDIS_REGISTER_EDX));
}

static void take_flags(struct emit *e, uint32_t mask);

/* ---- native forms ---------------------------------------------------------------------- */

static bool is_gpr(const struct bt_operand *o)
{
    return o->kind == BT_OPK_REG && o->rclass == BT_RC_GPR && o->reg < 16;
}

static bool fits32(int64_t v)
{
    return v >= INT32_MIN && v <= INT32_MAX;
}

/* the immediate as the host instruction of this size takes it (sign-extended forms) */
static int64_t imm_for(int64_t v, unsigned size)
{
    switch (size) {
    case 1: return (int8_t)v;
    case 2: return (int16_t)v;
    case 4: return (int32_t)v;
    default: return v;
    }
}

/* Loads the guest's six arithmetic flags (and nothing else) into the host RFLAGS, as alu.c's PRE
 * does, for operations whose result flags depend on the incoming ones (shift counts of zero
 * leave them; the undefined flags of IMUL and the shifts are what the host makes of them). */
static void load_guest_flags(struct emit *e)
{
    /* Without POPFQ (slow): OF by an 8-bit signed overflow (0x80 + 0x80 overflows, 0 + 0x80 does
     * not), then SF, ZF, AF, PF and CF by SAHF, which leaves OF alone.  Clobbers EAX and ECX.
     * (DF and AC stay clear as the host ABI keeps them; no operation here depends on them.) */
    E2(e, MOV, R(ZYDIS_REGISTER_EAX), R(ZYDIS_REGISTER_R14D));
    E2(e, MOV, R(ZYDIS_REGISTER_ECX), R(ZYDIS_REGISTER_R14D));
    if (lahf_layout(e)) {                       /* AH is the flags byte already */
        E2(e, SHL, R(ZYDIS_REGISTER_CL), I(7)); /* OF: bit 0 -> bit 7, nothing else */
    } else {
        E2(e, SHL, R(ZYDIS_REGISTER_EAX), I(8)); /* AH = the low byte (before OF is set) */
        E2(e, SHR, R(ZYDIS_REGISTER_ECX), I(4)); /* OF: bit 11 -> bit 7 */
        E2(e, AND, R(ZYDIS_REGISTER_ECX), I(0x80));
    }
    E2(e, ADD, R(ZYDIS_REGISTER_CL), I(-128));
    E0(e, SAHF);
}

/* Evaluates condition code cc (the low nibble of Jcc/SETcc/CMOVcc) on the guest's RFLAGS in
 * memory by bit tests (no POPFQ, which is slow): afterwards the host ZF is clear iff the positive
 * form of the condition (cc & ~1) holds, so the condition itself holds on JNZ/SETNZ/CMOVNZ for an
 * even cc and on JZ/SETZ/CMOVZ for an odd one (cond_true).  Clobbers EAX and ECX. */
static void emit_cond(struct emit *e, unsigned cc)
{
    E2(e, MOV, R(ZYDIS_REGISTER_EAX), R(ZYDIS_REGISTER_R14D));
    switch (cc >> 1) {
    case 0: E2(e, TEST, R(ZYDIS_REGISTER_EAX), I(fl_bits(e, X86_FLAG_OF))); break;
    case 1: E2(e, TEST, R(ZYDIS_REGISTER_EAX), I(fl_bits(e, X86_FLAG_CF))); break;
    case 2: E2(e, TEST, R(ZYDIS_REGISTER_EAX), I(fl_bits(e, X86_FLAG_ZF))); break;
    case 3: E2(e, TEST, R(ZYDIS_REGISTER_EAX), I(fl_bits(e, X86_FLAG_CF | X86_FLAG_ZF))); break;
    case 4: E2(e, TEST, R(ZYDIS_REGISTER_EAX), I(fl_bits(e, X86_FLAG_SF))); break;
    case 5: E2(e, TEST, R(ZYDIS_REGISTER_EAX), I(fl_bits(e, X86_FLAG_PF))); break;
    default: { /* L: SF != OF (the higher bit moved onto the lower one); LE: that or ZF */
        unsigned sf = fl_bit(e, X86_FLAG_SF), of = fl_bit(e, X86_FLAG_OF);
        unsigned lo = sf < of ? sf : of, hi = sf < of ? of : sf;
        E2(e, MOV, R(ZYDIS_REGISTER_ECX), R(ZYDIS_REGISTER_EAX));
        E2(e, SHR, R(ZYDIS_REGISTER_ECX), I(hi - lo));
        E2(e, XOR, R(ZYDIS_REGISTER_ECX), R(ZYDIS_REGISTER_EAX));
        E2(e, AND, R(ZYDIS_REGISTER_ECX), I(1ll << lo));
        if (cc >> 1 == 7) {
            E2(e, AND, R(ZYDIS_REGISTER_EAX), I(fl_bits(e, X86_FLAG_ZF)));
            E2(e, OR, R(ZYDIS_REGISTER_ECX), R(ZYDIS_REGISTER_EAX));
        }
        break;
    }
    }
}

/* AL = 1 if condition cc holds on the guest's flags, else 0.  Clobbers EAX and ECX. */
static void setcc_al(struct emit *e, unsigned cc)
{
    emit_cond(e, cc);
    E1(e, SETNZ, R(ZYDIS_REGISTER_AL));
    if (cc & 1) E2(e, XOR, R(ZYDIS_REGISTER_AL), I(1));
}

/* The sixteen SETcc mnemonics (0F 90+cc) */
static bool is_setcc(unsigned m)
{
    switch (m) {
    case ZYDIS_MNEMONIC_SETO:
    case ZYDIS_MNEMONIC_SETNO:
    case ZYDIS_MNEMONIC_SETB:
    case ZYDIS_MNEMONIC_SETNB:
    case ZYDIS_MNEMONIC_SETZ:
    case ZYDIS_MNEMONIC_SETNZ:
    case ZYDIS_MNEMONIC_SETBE:
    case ZYDIS_MNEMONIC_SETNBE:
    case ZYDIS_MNEMONIC_SETS:
    case ZYDIS_MNEMONIC_SETNS:
    case ZYDIS_MNEMONIC_SETP:
    case ZYDIS_MNEMONIC_SETNP:
    case ZYDIS_MNEMONIC_SETL:
    case ZYDIS_MNEMONIC_SETNL:
    case ZYDIS_MNEMONIC_SETLE:
    case ZYDIS_MNEMONIC_SETNLE: return true;
    default: return false;
    }
}

/* The host CF = the guest's (ADC and SBB read no other flag and write all six) */
static void load_guest_cf(struct emit *e)
{
    E2(e, BT, R(ZYDIS_REGISTER_R14D), I(fl_bit(e, X86_FLAG_CF)));
}

/* Dead flags.  What an instruction does to the six arithmetic flags as far as the code after it
 * can tell: FL_WRITES sets all six from its operands alone and cannot fault or leave the block
 * early (register/immediate ADD, SUB, AND, OR, XOR, CMP, TEST, NEG); FL_NONE neither reads nor
 * writes them and cannot fault (register MOV, LEA, MOVZX/MOVSX, BSWAP, NOT, NOP); FL_READS is
 * everything else, conservatively: it may read them, or fault or exit with c->s.rflags
 * visible.  A FL_WRITES instruction followed in its block by another FL_WRITES one with only
 * FL_NONE ones in between produces flags nobody can see, so its native form skips the merge
 * into c->s.rflags (the handler path, if it ends up there, still merges: harmless).  A FL_NONE
 * instruction must be native: after a handler the block may be left (after_handler_checks)
 * with dead flags unstored, so translate() starts again without the pass if one is not. */
/* FL_ROT: ROL/ROR of a register by an immediate (writes CF, and OF, from its result alone) and
 * INC/DEC of a register (the other five, CF kept): what it does not write comes from before it
 * and what it writes depends on its operand alone, so it is transparent to the liveness of
 * earlier flags (like FL_NONE) and its own flags may be dead.  FL_SHIFT: SHL/SHR/SAR of a register
 * by a non-zero immediate: writes the flags, but counts as a reader for earlier ones (its undefined
 * flags are the host's with the guest's loaded); its own may be dead, and then neither load nor
 * merge is needed. */
enum { FL_READS, FL_NONE, FL_WRITES, FL_ROT, FL_SHIFT };

/* ADD, SUB, AND, OR, XOR, CMP, TEST, NEG: with register or immediate operands the FL_WRITES
 * instructions, and the ones whose native form leaves emit.hfresh (see host_reader) */
static bool host_producer(const struct bt_insn *i)
{
    switch (i->mnemonic) {
    case ZYDIS_MNEMONIC_ADD:
    case ZYDIS_MNEMONIC_SUB:
    case ZYDIS_MNEMONIC_AND:
    case ZYDIS_MNEMONIC_OR:
    case ZYDIS_MNEMONIC_XOR:
    case ZYDIS_MNEMONIC_CMP:
    case ZYDIS_MNEMONIC_TEST:
    case ZYDIS_MNEMONIC_NEG: return true;
    default: return false;
    }
}

static int flag_effect(const struct bt_insn *i, bool pure, bool pure_imul)
{
    if (i->pfx & BT_PFX_LOCK) return FL_READS;
    for (unsigned k = 0; k < i->nops && k < 4; k++) {
        const struct bt_operand *o = &i->op[k];
        bool gpr = o->kind == BT_OPK_REG && o->rclass == BT_RC_GPR; /* AH..BH: handlers */
        if (!gpr && o->kind != BT_OPK_IMM && o->kind != BT_OPK_AGEN &&
            !(o->kind == BT_OPK_MEM && i->mnemonic == ZYDIS_MNEMONIC_NOP))
            return FL_READS;
    }
    if (host_producer(i)) return FL_WRITES;
    switch (i->mnemonic) {
    case ZYDIS_MNEMONIC_IMUL: /* the register forms native_simple runs: like a shift by an imm */
        return i->nops >= 2 && i->opsize != 8 ? (pure_imul ? FL_WRITES : FL_SHIFT) : FL_READS;
    case ZYDIS_MNEMONIC_ROL:
    case ZYDIS_MNEMONIC_ROR:
        return i->nops >= 2 && i->op[0].kind == BT_OPK_REG && i->op[1].kind == BT_OPK_IMM
                   ? FL_ROT
                   : FL_READS;
    case ZYDIS_MNEMONIC_INC: /* five flags from the result, CF kept: transparent like a rotate */
    case ZYDIS_MNEMONIC_DEC: return i->nops >= 1 && i->op[0].kind == BT_OPK_REG ? FL_ROT : FL_READS;
    case ZYDIS_MNEMONIC_SHL:
    case ZYDIS_MNEMONIC_SHR:
    case ZYDIS_MNEMONIC_SAR:
        return i->nops >= 2 && i->op[0].kind == BT_OPK_REG && i->op[1].kind == BT_OPK_IMM &&
                       ((unsigned)i->op[1].disp & (i->opsize == 64 ? 63 : 31)) != 0
                   ? (pure ? FL_WRITES : FL_SHIFT) /* pure: reads no flag (see bt_jit.pure_flags) */
                   : FL_READS;
    case ZYDIS_MNEMONIC_MOV: /* translate() re-runs without this pass if one takes a handler */
    case ZYDIS_MNEMONIC_LEA:
    case ZYDIS_MNEMONIC_MOVZX:
    case ZYDIS_MNEMONIC_MOVSX:
    case ZYDIS_MNEMONIC_MOVSXD:
    case ZYDIS_MNEMONIC_BSWAP:
    case ZYDIS_MNEMONIC_NOT:
    case ZYDIS_MNEMONIC_NOP:
    case ZYDIS_MNEMONIC_CBW:
    case ZYDIS_MNEMONIC_CWDE:
    case ZYDIS_MNEMONIC_CDQE:
    case ZYDIS_MNEMONIC_CWD:
    case ZYDIS_MNEMONIC_CDQ:
    case ZYDIS_MNEMONIC_CQO: return FL_NONE;
    default: return FL_READS;
    }
}

/* The CMOVcc and SETcc forms native_simple translates: register CMOVcc (16/32/64 bits) and SETcc
 * to a low byte register.  Right after their producer (a register-form ALU operation,
 * emit.hfresh) they run on the host's flags, so a producer whose flags only such an instruction
 * reads need not store them (translate's hdead). */
_Static_assert(ZYDIS_MNEMONIC_CMOVZ - ZYDIS_MNEMONIC_CMOVB == 15, "the CMOVcc mnemonics in a row");
static bool host_reader(const struct bt_insn *i)
{
    if (i->pfx & BT_PFX_LOCK || i->nops < 1) return false;
    const struct bt_operand *d = &i->op[0], *s = &i->op[1];
    unsigned size = i->opsize / 8;
    if (is_setcc(i->mnemonic)) return is_gpr(d) && d->size == 1 && i->opcode_map != 0;
    if (i->mnemonic < ZYDIS_MNEMONIC_CMOVB || i->mnemonic > ZYDIS_MNEMONIC_CMOVZ) return false;
    return i->nops >= 2 && is_gpr(d) && is_gpr(s) && d->size == size && s->size == size &&
           size != 1;
}

/* The rest of IMUL r, r/m(, imm) once its first factor is in RAX and the guest's flags are
 * loaded: the second (register or immediate) in RCX, the host's IMUL, its flags, the result. */
static void imul_rest(struct emit *e, const struct bt_operand *d, const struct bt_operand *b,
                      unsigned size, bool flags_dead)
{
    if (b->kind == BT_OPK_IMM)
        E2(e, MOV, R(hreg(1, size == 8 ? 8 : 4)),
           I(size == 8   ? b->disp
             : size == 4 ? (int32_t)b->disp
                         : (int64_t)(uint16_t)b->disp));
    else
        load_gpr(e, 1, b->reg, size);
    E2(e, IMUL, R(hreg(0, size)), R(hreg(1, size)));
    if (!flags_dead) take_flags(e, BT_ARITH_FLAGS);
    if (size == 4) E2(e, MOV, R(ZYDIS_REGISTER_EAX), R(ZYDIS_REGISTER_EAX));
    store_gpr(e, 0, d->reg, size);
}

/* emit.hz after instruction `i` (whichever path ran it): a register destination of one of
 * these forms (they write op[0] and no other register) gets its bit for a 32-bit write and
 * loses it for a 64-bit one (8 and 16 bits merge: unchanged); anything else clears them all. */
static uint16_t hz_after(const struct bt_insn *i, uint16_t hz)
{
    if (i->pfx & (BT_PFX_REP | BT_PFX_REPNE)) return 0;
    switch (i->mnemonic) {
    case ZYDIS_MNEMONIC_CMP:
    case ZYDIS_MNEMONIC_TEST:
    case ZYDIS_MNEMONIC_NOP: return hz;
    case ZYDIS_MNEMONIC_MOV:
    case ZYDIS_MNEMONIC_MOVZX:
    case ZYDIS_MNEMONIC_MOVSX:
    case ZYDIS_MNEMONIC_MOVSXD:
    case ZYDIS_MNEMONIC_LEA:
    case ZYDIS_MNEMONIC_ADD:
    case ZYDIS_MNEMONIC_SUB:
    case ZYDIS_MNEMONIC_AND:
    case ZYDIS_MNEMONIC_OR:
    case ZYDIS_MNEMONIC_XOR:
    case ZYDIS_MNEMONIC_ADC:
    case ZYDIS_MNEMONIC_SBB:
    case ZYDIS_MNEMONIC_NOT:
    case ZYDIS_MNEMONIC_NEG:
    case ZYDIS_MNEMONIC_INC:
    case ZYDIS_MNEMONIC_DEC:
    case ZYDIS_MNEMONIC_SHL:
    case ZYDIS_MNEMONIC_SHR:
    case ZYDIS_MNEMONIC_SAR:
    case ZYDIS_MNEMONIC_ROL:
    case ZYDIS_MNEMONIC_ROR:
    case ZYDIS_MNEMONIC_BSWAP: break;
    case ZYDIS_MNEMONIC_IMUL: /* the two- and three-operand forms only write op[0] */
        if (i->nops < 2 || i->op[0].kind != BT_OPK_REG || i->op[1].kind == BT_OPK_IMM) return 0;
        break;
    default:
        if (i->mnemonic >= ZYDIS_MNEMONIC_CMOVB && i->mnemonic <= ZYDIS_MNEMONIC_CMOVZ)
            break; /* a 32-bit CMOVcc zero-extends whether or not it moves */
        if (i->mnemonic >= ZYDIS_MNEMONIC_SETB && i->mnemonic <= ZYDIS_MNEMONIC_SETZ)
            return hz; /* a byte: the rest unchanged */
        return 0;
    }
    const struct bt_operand *d = &i->op[0];
    if (i->nops < 1 || d->kind == BT_OPK_MEM) return hz;
    if (d->kind != BT_OPK_REG || d->rclass == BT_RC_GPR8H) return hz; /* AH..BH: merged */
    if (!is_gpr(d)) return 0;
    uint16_t bit = (uint16_t)(1u << d->reg);
    if (d->size == 4) return hz | bit;
    if (d->size == 8) return hz & (uint16_t)~bit;
    return hz; /* 8 and 16 bits merge into the low bytes */
}

/* guest GPR `reg` as G(reg, size) may be written in place: its host register, or a slot
 * written with 8, 16 or 64 bits, or with 32 where its upper half is zero already (emit.hz) */
static bool writable_in_place(const struct emit *e, unsigned reg, unsigned size)
{
    return pinned(reg, size) != ZYDIS_REGISTER_NONE || size != 4 ||
           (reg < 16 && (e->hz >> reg) & 1);
}

/* A two-operand ALU op (ADD/SUB/AND/OR/XOR/CMP/TEST/ADC/SBB; MOV with flags_dead ignored) run
 * on the guest registers where they are: host registers (pinned) or c->s.gpr slots, with at
 * most one memory operand, and a 32-bit write to a slot only where its upper half is known to
 * be zero already (emit.hz: the register write rule zero-extends, a memory write would not).
 * False: nothing emitted. */
static bool alu_in_place(struct emit *e, ZydisMnemonic m, const struct bt_operand *d,
                         const struct bt_operand *s, unsigned size, bool flags_dead)
{
    bool imm = s->kind == BT_OPK_IMM;
    bool dreg = pinned(d->reg, size) != ZYDIS_REGISTER_NONE;
    bool sreg = imm || pinned(s->reg, size) != ZYDIS_REGISTER_NONE;
    bool writes = m != ZYDIS_MNEMONIC_CMP && m != ZYDIS_MNEMONIC_TEST;
    if (!dreg && !sreg) return false;
    if (writes && !writable_in_place(e, d->reg, size)) return false;
    if (!dreg && imm && !fits32(s->disp) && size == 8) return false; /* no MOV m64, imm64 */
    ZydisEncoderOperand dop = G(d->reg, size);
    ZydisEncoderOperand sop = imm ? I(imm_for(s->disp, size)) : G(s->reg, size);
    if (m == ZYDIS_MNEMONIC_MOV) {
        if (imm && size == 8) sop = I(s->disp);
        enc(e, m, 2, (ZydisEncoderOperand[]){dop, sop});
        return true;
    }
    if (m == ZYDIS_MNEMONIC_ADC || m == ZYDIS_MNEMONIC_SBB) load_guest_cf(e);
    if (m == ZYDIS_MNEMONIC_TEST && !sreg) /* commutative; the host encodes TEST r/m, r */
        enc(e, m, 2, (ZydisEncoderOperand[]){sop, dop});
    else
        enc(e, m, 2, (ZydisEncoderOperand[]){dop, sop});
    if (!flags_dead) take_flags(e, BT_ARITH_FLAGS);
    e->hflags = !flags_dead;
    e->hfresh = m != ZYDIS_MNEMONIC_ADC && m != ZYDIS_MNEMONIC_SBB; /* see native_simple */
    return true;
}

/* Emits a native form of `i` if it has one; returns false (nothing emitted) otherwise.
 * flags_dead: the flags it writes are dead (see flag_effect), so they need not be stored. */
static bool native_simple(struct emit *e, const struct bt_insn *i, int64_t off, bool flags_dead)
{
    if (i->pfx & BT_PFX_LOCK) return false;
    unsigned size = i->opsize / 8;
    if (size != 1 && size != 2 && size != 4 && size != 8) return false;
    const struct bt_operand *d = &i->op[0], *s = &i->op[1];
    ZydisMnemonic m = (ZydisMnemonic)i->mnemonic;
    if (is_setcc(m)) { /* to a low byte register; memory and AH..BH: native_setcc_more */
        if (!host_reader(i)) return false;
        if (e->hfresh_prev) /* right after its producer: the host's SETcc on the host flags */
            enc(e, m, 1, (ZydisEncoderOperand[]){R(ZYDIS_REGISTER_AL)});
        else
            setcc_al(e, i->opcode & 0xf);
        store_gpr(e, 0, d->reg, 1);
        return true;
    }
    switch (i->mnemonic) {
    case ZYDIS_MNEMONIC_ADD:
    case ZYDIS_MNEMONIC_SUB:
    case ZYDIS_MNEMONIC_AND:
    case ZYDIS_MNEMONIC_OR:
    case ZYDIS_MNEMONIC_XOR:
    case ZYDIS_MNEMONIC_CMP:
    case ZYDIS_MNEMONIC_TEST: {
        if (i->nops < 2 || !is_gpr(d) || d->size != size) return false;
        bool imm = s->kind == BT_OPK_IMM;
        if (!imm && !(is_gpr(s) && s->size == size)) return false;
        if (imm && size == 8 && !fits32(s->disp)) return false;
        if (alu_in_place(e, m, d, s, size, flags_dead)) return true;
        load_gpr(e, 0, d->reg, size);
        if (imm) {
            enc(e, m, 2, (ZydisEncoderOperand[]){R(hreg(0, size)), I(imm_for(s->disp, size))});
        } else if (size == 4 && m == ZYDIS_MNEMONIC_TEST) { /* commutative; TEST r/m, r only */
            enc(e, m, 2, (ZydisEncoderOperand[]){G(s->reg, size), R(hreg(0, size))});
        } else if (size == 4) { /* the source as it is: a pinned register or its slot */
            enc(e, m, 2, (ZydisEncoderOperand[]){R(hreg(0, size)), G(s->reg, size)});
        } else {
            load_gpr(e, 1, s->reg, size);
            enc(e, m, 2, (ZydisEncoderOperand[]){R(hreg(0, size)), R(hreg(1, size))});
        }
        /* all six flags straight into FLAGS_REG: the store after it leaves the host flags */
        if (!flags_dead) take_flags(e, BT_ARITH_FLAGS);
        if (m != ZYDIS_MNEMONIC_CMP && m != ZYDIS_MNEMONIC_TEST) store_gpr(e, 0, d->reg, size);
        e->hflags = !flags_dead; /* MOVs leave the host flags alone */
        e->hfresh = true;
        return true;
    }
    case ZYDIS_MNEMONIC_INC:
    case ZYDIS_MNEMONIC_DEC:
        if (i->nops < 1 || !is_gpr(d) || d->size != size) return false;
        if (flags_dead) { /* FL_ROT: the value alone */
            if (writable_in_place(e, d->reg, size)) {
                enc(e, m, 1, (ZydisEncoderOperand[]){G(d->reg, size)});
            } else { /* a 32-bit slot: zero-extended through a host register */
                load_gpr(e, 0, d->reg, 4);
                enc(e, m, 1, (ZydisEncoderOperand[]){R(ZYDIS_REGISTER_EAX)});
                store_gpr(e, 0, d->reg, 4);
            }
            return true;
        }
        if (pinned(d->reg, size) != ZYDIS_REGISTER_NONE) {
            /* CF is preserved: with the guest's CF in the host's first, all six flags after
             * the host's INC/DEC are the guest's (and a Jcc after it may test them) */
            load_guest_cf(e);
            enc(e, m, 1, (ZydisEncoderOperand[]){G(d->reg, size)});
            take_flags(e, BT_ARITH_FLAGS);
            e->hflags = true;
            return true;
        }
        load_gpr(e, 0, d->reg, size);
        enc(e, m, 1, (ZydisEncoderOperand[]){R(hreg(0, size))});
        capture_flags(e, ZYDIS_REGISTER_RDX);
        store_gpr(e, 0, d->reg, size);
        merge_flags(e, BT_ARITH_FLAGS & ~(uint32_t)X86_FLAG_CF); /* CF is preserved */
        return true;
    case ZYDIS_MNEMONIC_SHL:
    case ZYDIS_MNEMONIC_SHR:
    case ZYDIS_MNEMONIC_SAR:
    case ZYDIS_MNEMONIC_ROL:
    case ZYDIS_MNEMONIC_ROR: {
        /* register destination; count an immediate or CL: the host's CL form, as shift.c runs
         * (which keeps the incoming OF for ROL/ROR by an immediate whose masked count is above
         * 1, as Intel's immediate register forms do) */
        if (i->nops < 2 || !is_gpr(d) || d->size != size) return false;
        bool cl = s->kind == BT_OPK_REG && s->rclass == BT_RC_GPR && s->reg == RCX && s->size == 1;
        if (!cl && s->kind != BT_OPK_IMM) return false;
        /* A rotate by an immediate touches CF and OF only, both functions of the result (OF for
         * a masked count of 1; above 1 the guest's OF stays): the incoming flags are not needed
         * and only those bits are merged.  Everything else runs with the guest's flags loaded. */
        if (flags_dead && !cl) { /* flags dead (FL_ROT / FL_SHIFT): the value alone */
            if (writable_in_place(e, d->reg, size)) {
                enc(e, m, 2, (ZydisEncoderOperand[]){G(d->reg, size), I((uint8_t)s->disp)});
            } else { /* a 32-bit slot: zero-extended through a host register */
                load_gpr(e, 0, d->reg, 4);
                enc(e, m, 2, (ZydisEncoderOperand[]){R(ZYDIS_REGISTER_EAX), I((uint8_t)s->disp)});
                store_gpr(e, 0, d->reg, 4);
            }
            return true;
        }
        bool rot_imm = (m == ZYDIS_MNEMONIC_ROL || m == ZYDIS_MNEMONIC_ROR) && !cl;
        unsigned masked = (unsigned)s->disp & (size == 8 ? 63 : 31);
        uint32_t mask = !rot_imm      ? BT_ARITH_FLAGS
                        : masked == 0 ? 0
                        : masked == 1 ? X86_FLAG_CF | X86_FLAG_OF
                                      : X86_FLAG_CF;
        /* a non-zero count on a host whose shifts ignore the incoming flags: none to load */
        bool pure = !rot_imm && !cl && masked != 0 && e->jit && e->jit->pure_flags;
        if (pure && e->jit->pure_imm) { /* and where the immediate form is the same: itself */
            bool direct = writable_in_place(e, d->reg, size);
            if (!direct) load_gpr(e, 0, d->reg, 4);
            enc(e, m, 2,
                (ZydisEncoderOperand[]){direct ? G(d->reg, size) : R(ZYDIS_REGISTER_EAX),
                                        I((uint8_t)s->disp)});
            take_flags(e, BT_ARITH_FLAGS); /* all six, straight into FLAGS_REG */
            if (!direct) store_gpr(e, 0, d->reg, 4);
            return true;
        }
        if (!rot_imm && !pure) load_guest_flags(e);
        load_gpr(e, 0, d->reg, size);
        if (cl)
            E2(e, MOVZX, R(ZYDIS_REGISTER_ECX), G(RCX, 1));
        else
            E2(e, MOV, R(ZYDIS_REGISTER_ECX), I((uint8_t)s->disp));
        /* The host's CL form merges the incoming flags (a count of 0 would keep them): without
         * the load, give it flags that wait for nothing rather than whatever the last flag
         * writer left (often a compare on a load that misses: xz was 4 % slower). */
        if (pure) E2(e, TEST, R(ZYDIS_REGISTER_ECX), R(ZYDIS_REGISTER_ECX));
        enc(e, m, 2, (ZydisEncoderOperand[]){R(hreg(0, size)), R(ZYDIS_REGISTER_CL)});
        if (mask) {
            capture_flags(e, ZYDIS_REGISTER_RDX);
        }
        store_gpr(e, 0, d->reg, size);
        if (mask) merge_flags(e, mask);
        return true;
    }
    case ZYDIS_MNEMONIC_IMUL: {
        /* IMUL r, r and IMUL r, r, imm (16/32/64): the host's two-operand register form */
        if (i->nops < 2 || size == 1 || !is_gpr(d) || d->size != size) return false;
        const struct bt_operand *a = &i->op[1], *b = i->nops >= 3 ? &i->op[2] : &i->op[0];
        if (!is_gpr(a) || a->size != size) return false;
        if (!(is_gpr(b) && b->size == size) && b->kind != BT_OPK_IMM) return false;
        if (b->kind == BT_OPK_IMM && size == 8 && !fits32(b->disp)) return false;
        /* dead flags (FL_SHIFT or FL_WRITES in flag_effect): neither load nor capture */
        if (!flags_dead && !(e->jit && e->jit->pure_imul)) load_guest_flags(e);
        load_gpr(e, 0, a->reg, size);
        imul_rest(e, d, b, size, flags_dead);
        return true;
    }
    case ZYDIS_MNEMONIC_NOP: /* every form, hint NOPs with a memory operand too: no access */
    case ZYDIS_MNEMONIC_PREFETCHNTA: /* prefetches never fault (sse.c) */
    case ZYDIS_MNEMONIC_PREFETCHT0:
    case ZYDIS_MNEMONIC_PREFETCHT1:
    case ZYDIS_MNEMONIC_PREFETCHT2: return true;
    case ZYDIS_MNEMONIC_CBW:
    case ZYDIS_MNEMONIC_CWDE:
    case ZYDIS_MNEMONIC_CDQE:
        /* rAX = the sign extension of its lower half */
        if (size == 2) {
            E2(e, MOVSX, R(ZYDIS_REGISTER_AX), G(RAX, 1));
        } else if (size == 4) {
            E2(e, MOVSX, R(ZYDIS_REGISTER_EAX), G(RAX, 2));
        } else {
            E2(e, MOVSXD, R(ZYDIS_REGISTER_RAX), G(RAX, 4));
        }
        store_gpr(e, 0, RAX, size);
        return true;
    case ZYDIS_MNEMONIC_CWD:
    case ZYDIS_MNEMONIC_CDQ:
    case ZYDIS_MNEMONIC_CQO:
        /* rDX = the sign of rAX, replicated (flags untouched: the host's SAR is not merged) */
        if (size == 2)
            E2(e, MOVSX, R(ZYDIS_REGISTER_RAX), G(RAX, 2));
        else if (size == 4)
            E2(e, MOVSXD, R(ZYDIS_REGISTER_RAX), G(RAX, 4));
        else if (size == 8)
            E2(e, MOV, R(ZYDIS_REGISTER_RAX), G(RAX, 8));
        else
            return false;
        E2(e, SAR, R(ZYDIS_REGISTER_RAX), I(63));
        if (size == 4) E2(e, MOV, R(ZYDIS_REGISTER_EAX), R(ZYDIS_REGISTER_EAX));
        store_gpr(e, 0, RDX, size);
        return true;
    case ZYDIS_MNEMONIC_ADC:
    case ZYDIS_MNEMONIC_SBB: {
        if (i->nops < 2 || !is_gpr(d) || d->size != size) return false;
        bool imm = s->kind == BT_OPK_IMM;
        if (!imm && !(is_gpr(s) && s->size == size)) return false;
        if (imm && size == 8 && !fits32(s->disp)) return false;
        if (alu_in_place(e, m, d, s, size, false)) return true;
        load_gpr(e, 0, d->reg, size);
        if (!imm) load_gpr(e, 1, s->reg, size);
        load_guest_cf(e);
        if (imm)
            enc(e, m, 2, (ZydisEncoderOperand[]){R(hreg(0, size)), I(imm_for(s->disp, size))});
        else
            enc(e, m, 2, (ZydisEncoderOperand[]){R(hreg(0, size)), R(hreg(1, size))});
        capture_flags(e, ZYDIS_REGISTER_RDX);
        store_gpr(e, 0, d->reg, size);
        merge_flags(e, BT_ARITH_FLAGS);
        return true;
    }
    case ZYDIS_MNEMONIC_NEG:
    case ZYDIS_MNEMONIC_NOT:
        if (i->nops < 1 || !is_gpr(d) || d->size != size) return false;
        if (pinned(d->reg, size) != ZYDIS_REGISTER_NONE) {
            enc(e, m, 1, (ZydisEncoderOperand[]){G(d->reg, size)});
            if (m == ZYDIS_MNEMONIC_NEG && !flags_dead) take_flags(e, BT_ARITH_FLAGS);
            e->hfresh = m == ZYDIS_MNEMONIC_NEG;
            return true;
        }
        load_gpr(e, 0, d->reg, size);
        enc(e, m, 1, (ZydisEncoderOperand[]){R(hreg(0, size))});
        bool merge = m == ZYDIS_MNEMONIC_NEG && !flags_dead;
        if (merge) {
            capture_flags(e, ZYDIS_REGISTER_RDX);
        }
        store_gpr(e, 0, d->reg, size);
        if (merge) merge_flags(e, BT_ARITH_FLAGS); /* all six: a MOV */
        e->hfresh = m == ZYDIS_MNEMONIC_NEG;
        return true;
    case ZYDIS_MNEMONIC_MOVZX:
    case ZYDIS_MNEMONIC_MOVSX:
    case ZYDIS_MNEMONIC_MOVSXD: {
        /* from AH..BH (CRC table lookups: movzx esi, dh): ECX = the byte, then as below */
        if (m != ZYDIS_MNEMONIC_MOVSXD && i->nops >= 2 && is_gpr(d) && s->kind == BT_OPK_REG &&
            s->rclass == BT_RC_GPR8H && s->reg < 4 &&
            (d->size == 2 || d->size == 4 || d->size == 8)) {
            load_gpr_hi(e, s->reg);
            if (m == ZYDIS_MNEMONIC_MOVZX) {
                store_gpr(e, 1, d->reg, d->size); /* RCX: zero-extended already */
            } else {
                E2(e, MOVSX, R(hreg(0, d->size)), R(ZYDIS_REGISTER_CL));
                store_gpr(e, 0, d->reg, d->size);
            }
            return true;
        }
        if (i->nops < 2 || !is_gpr(d) || !is_gpr(s)) return false;
        unsigned ds = d->size, ss = s->size;
        if (ds != 2 && ds != 4 && ds != 8) return false;
        if (m == ZYDIS_MNEMONIC_MOVSXD ? (ds != 8 || ss != 4) : (ss != 1 && ss != 2) || ss >= ds)
            return false;
        ZydisRegister hd = pinned(d->reg, ds);
        if (hd != ZYDIS_REGISTER_NONE) { /* into its host register directly (32 bits zero-extend) */
            enc(e, m, 2, (ZydisEncoderOperand[]){R(hd), G(s->reg, ss)});
            return true;
        }
        if (m == ZYDIS_MNEMONIC_MOVZX)
            E2(e, MOVZX, R(ZYDIS_REGISTER_EAX), G(s->reg, ss));
        else if (m == ZYDIS_MNEMONIC_MOVSXD)
            E2(e, MOVSXD, R(ZYDIS_REGISTER_RAX), G(s->reg, 4));
        else
            E2(e, MOVSX,
               R(ds == 8   ? ZYDIS_REGISTER_RAX
                 : ds == 4 ? ZYDIS_REGISTER_EAX
                           : ZYDIS_REGISTER_AX),
               G(s->reg, ss));
        store_gpr(e, 0, d->reg, ds);
        return true;
    }
    case ZYDIS_MNEMONIC_BSWAP:
        if (i->nops < 1 || !is_gpr(d) || (d->size != 4 && d->size != 8)) return false;
        load_gpr(e, 0, d->reg, d->size);
        E1(e, BSWAP, R(hreg(0, d->size)));
        store_gpr(e, 0, d->reg, d->size);
        return true;
    case ZYDIS_MNEMONIC_CMOVO:
    case ZYDIS_MNEMONIC_CMOVNO:
    case ZYDIS_MNEMONIC_CMOVB:
    case ZYDIS_MNEMONIC_CMOVNB:
    case ZYDIS_MNEMONIC_CMOVZ:
    case ZYDIS_MNEMONIC_CMOVNZ:
    case ZYDIS_MNEMONIC_CMOVBE:
    case ZYDIS_MNEMONIC_CMOVNBE:
    case ZYDIS_MNEMONIC_CMOVS:
    case ZYDIS_MNEMONIC_CMOVNS:
    case ZYDIS_MNEMONIC_CMOVP:
    case ZYDIS_MNEMONIC_CMOVNP:
    case ZYDIS_MNEMONIC_CMOVL:
    case ZYDIS_MNEMONIC_CMOVNL:
    case ZYDIS_MNEMONIC_CMOVLE:
    case ZYDIS_MNEMONIC_CMOVNLE: {
        /* the register form: dest = cond ? src : dest, zero-extended from 32 bits either way */
        if (!host_reader(i)) return false;
        unsigned cc = i->opcode & 0xf;
        if (e->hfresh_prev) { /* right after its producer: the host's CMOVcc on the host flags */
            if (pinned(d->reg, size) != ZYDIS_REGISTER_NONE) { /* 32 bits zero-extend always */
                enc(e, m, 2, (ZydisEncoderOperand[]){G(d->reg, size), G(s->reg, size)});
                return true;
            }
            load_gpr(e, 0, d->reg, size);
            enc(e, m, 2, (ZydisEncoderOperand[]){R(hreg(0, size)), G(s->reg, size)});
            store_gpr(e, 0, d->reg, size);
            return true;
        }
        emit_cond(e, cc);
        load_gpr(e, 0, d->reg, size);
        load_gpr(e, 2, s->reg, size);
        enc(e, (cc & 1) ? ZYDIS_MNEMONIC_CMOVZ : ZYDIS_MNEMONIC_CMOVNZ, 2,
            (ZydisEncoderOperand[]){R(ZYDIS_REGISTER_RAX), R(ZYDIS_REGISTER_RDX)});
        store_gpr(e, 0, d->reg, size);
        return true;
    }
    case ZYDIS_MNEMONIC_MOV:
        if (i->nops < 2 || !is_gpr(d) || d->size != size) return false;
        if ((s->kind == BT_OPK_IMM || (is_gpr(s) && s->size == size)) &&
            alu_in_place(e, m, d, s, size, true))
            return true;
        if (s->kind == BT_OPK_IMM) {
            if (size == 8)
                E2(e, MOV, R(ZYDIS_REGISTER_RAX), I(s->disp));
            else if (size == 4)
                E2(e, MOV, R(ZYDIS_REGISTER_EAX), I((int32_t)s->disp));
            else
                E2(e, MOV, R(hreg(0, size)), I(imm_for(s->disp, size)));
        } else if (is_gpr(s) && s->size == size) {
            load_gpr(e, 0, s->reg, size);
        } else {
            return false;
        }
        store_gpr(e, 0, d->reg, size);
        return true;
    case ZYDIS_MNEMONIC_LEA: {
        if (i->nops < 2 || !is_gpr(d) || d->size != size || size == 1 || s->kind != BT_OPK_AGEN)
            return false;
        if (s->base != BT_REG_RIP && s->base != BT_NOREG && s->base >= 16) return false;
        if (s->index != BT_NOREG && s->index >= 16) return false;
        if (s->scale != 1 && s->scale != 2 && s->scale != 4 && s->scale != 8) return false;
        int64_t disp = s->disp;
        if (s->base != BT_REG_RIP && fits32(disp) && i->addrsize == 64 && size >= 4) {
            /* 64-bit addressing: base and index from their host registers when pinned, the
             * result straight into the destination's (a 32-bit LEA truncates and zero-extends
             * as the guest's does) */
            ZydisRegister b = s->base != BT_NOREG ? pinned(s->base, 8) : ZYDIS_REGISTER_NONE;
            ZydisRegister x = s->index != BT_NOREG ? pinned(s->index, 8) : ZYDIS_REGISTER_NONE;
            if (s->base != BT_NOREG && b == ZYDIS_REGISTER_NONE) {
                E2(e, MOV, R(ZYDIS_REGISTER_RAX), G(s->base, 8));
                b = ZYDIS_REGISTER_RAX;
            }
            if (s->index != BT_NOREG && x == ZYDIS_REGISTER_NONE) {
                E2(e, MOV, R(ZYDIS_REGISTER_RCX), G(s->index, 8));
                x = ZYDIS_REGISTER_RCX;
            }
            ZydisRegister dst = pinned(d->reg, size);
            bool direct = dst != ZYDIS_REGISTER_NONE;
            if (!direct) dst = hreg(0, size);
            ZydisEncoderOperand a;
            if (b == ZYDIS_REGISTER_NONE && x == ZYDIS_REGISTER_NONE) {
                E2(e, MOV, R(dst), I(size == 8 ? disp : (int64_t)(uint32_t)disp));
            } else {
                if (x != ZYDIS_REGISTER_NONE)
                    a = MX(b, x, s->scale, disp, 8);
                else
                    a = M(b, disp, 8);
                E2(e, LEA, R(dst), a);
            }
            if (!direct) store_gpr(e, 0, d->reg, size); /* 32-bit: EAX, zero-extended */
            return true;
        }
        if (s->base == BT_REG_RIP) {
            if (s->index != BT_NOREG || !fits32(disp + off)) return false;
            ZydisRegister dst =
                i->addrsize == 64 && size >= 4 ? pinned(d->reg, size) : ZYDIS_REGISTER_NONE;
            if (dst != ZYDIS_REGISTER_NONE) { /* straight into it (32 bits: zero-extended) */
                E2(e, LEA, R(dst), M(R12, disp + off, 8));
                return true;
            }
            E2(e, LEA, R(ZYDIS_REGISTER_RAX), M(R12, disp + off, 8));
        } else {
            if (!fits32(disp)) return false;
            if (s->base != BT_NOREG)
                E2(e, MOV, R(ZYDIS_REGISTER_RAX), G(s->base, 8));
            else
                E2(e, XOR, R(ZYDIS_REGISTER_EAX), R(ZYDIS_REGISTER_EAX));
            if (s->index != BT_NOREG) {
                E2(e, MOV, R(ZYDIS_REGISTER_RCX), G(s->index, 8));
                E2(e, LEA, R(ZYDIS_REGISTER_RAX),
                   MX(ZYDIS_REGISTER_RAX, ZYDIS_REGISTER_RCX, s->scale, disp, 8));
            } else if (disp) {
                E2(e, LEA, R(ZYDIS_REGISTER_RAX), M(ZYDIS_REGISTER_RAX, disp, 8));
            }
        }
        /* the address wraps at the address size, then is truncated to the operand size */
        if (i->addrsize == 32 || size == 4)
            E2(e, MOV, R(ZYDIS_REGISTER_EAX), R(ZYDIS_REGISTER_EAX));
        if (i->addrsize == 16) E2(e, MOVZX, R(ZYDIS_REGISTER_EAX), R(ZYDIS_REGISTER_AX));
        store_gpr(e, 0, d->reg, size);
        return true;
    }
    default: return false;
    }
}

/* ---- the handler path -------------------------------------------------------------------- */

/* Debug statistic: handler calls from translated code by mnemonic, counted at run time when
 * LOOKOUT_BT_HSTATS=1 (an INC per call, emitted only then), the top 20 logged at exit.  [m]:
 * the instruction's own handler path, [ZYDIS_MNEMONIC_MAX_VALUE + 1 + m]: the slow path of a
 * native memory form (TLB miss, MMIO, ...).  Process-wide, not atomic: approximate with several
 * vCPUs. */
#define HSTAT_N (2u * (ZYDIS_MNEMONIC_MAX_VALUE + 1u))
static uint64_t *hstat;
static int hstat_on = -1;

static void hstat_count(struct emit *e, const struct bt_insn *i, bool slow)
{
    if (hstat_on < 0) {
        const char *v = getenv("LOOKOUT_BT_HSTATS");
        hstat_on = v && v[0] == '1' && (hstat = calloc(HSTAT_N, sizeof(*hstat))) != NULL;
    }
    if (!hstat_on || i->mnemonic > ZYDIS_MNEMONIC_MAX_VALUE) return;
    uint64_t *ctr = &hstat[(slow ? ZYDIS_MNEMONIC_MAX_VALUE + 1u : 0u) + i->mnemonic];
    E2(e, MOV, R(ZYDIS_REGISTER_RAX), I((int64_t)(uintptr_t)ctr));
    E1(e, INC, M(ZYDIS_REGISTER_RAX, 0, 8));
}

static void hstat_report(void)
{
    if (!hstat) return;
    uint64_t total = 0;
    for (unsigned k = 0; k < HSTAT_N; k++)
        total += hstat[k];
    log_info("translator: %llu handler calls from translated code; the top 20:",
             (unsigned long long)total);
    for (int r = 0; r < 20; r++) {
        unsigned best = 0;
        for (unsigned k = 1; k < HSTAT_N; k++)
            if (hstat[k] > hstat[best]) best = k;
        if (!hstat[best]) break;
        bool slow = best > ZYDIS_MNEMONIC_MAX_VALUE;
        unsigned m = slow ? best - ZYDIS_MNEMONIC_MAX_VALUE - 1 : best;
        log_info("  %12llu %s%s", (unsigned long long)hstat[best],
                 ZydisMnemonicGetString((ZydisMnemonic)m), slow ? " (slow path)" : "");
        hstat[best] = 0;
    }
    free(hstat);
    hstat = NULL;
}

static void call_handler(struct emit *e, const struct bt_insn *i, int64_t off, bool b32,
                         unsigned *pend)
{
    flush_icount(e, pend);
    rip_at(e, off, b32);
    E2(e, MOV, M(HCPU, C_INSN_RIP, 8), R(ZYDIS_REGISTER_RAX));
    rip_at(e, off + i->len, b32);
    E2(e, MOV, M(HCPU, C_NEXT_RIP, 8), R(ZYDIS_REGISTER_RAX));
    E2(e, MOV, M(HCPU, C_RIP, 8), R(ZYDIS_REGISTER_RAX));
    sync_out(e);
    E2(e, MOV, R(ZYDIS_REGISTER_RDI), R(HCPU));
    E2(e, MOV, R(ZYDIS_REGISTER_RSI), I((int64_t)(uintptr_t)i));
    E2(e, MOV, R(ZYDIS_REGISTER_RAX), I((int64_t)(uintptr_t)i->fn));
    E1(e, CALL, R(ZYDIS_REGISTER_RAX));
    sync_in(e);
    icount_add(e, 1);
}

/* After a handler in the middle of a block: leave when the interpreter loop would stop.  With
 * `leave` (handler_stub), each way out is a rel32 jump recorded there for the caller to patch
 * and the LAPIC's attention flag is read through j; else they go to the block's exit (or, for
 * j->mid_lookup, its lookup) and the flag's address is a constant. */
static void handler_checks(struct emit *e, struct bt_jit *j, size_t *leave, unsigned *nl)
{
#define LEAVE(to_exit)                                                                             \
    do {                                                                                           \
        if (leave)                                                                                 \
            leave[(*nl)++] = jrel(e, ZYDIS_MNEMONIC_JNZ);                                          \
        else                                                                                       \
            to_exit;                                                                               \
    } while (0)
    E2(e, MOV, R(ZYDIS_REGISTER_RAX), M(HCPU, C_NEXT_RIP, 8));
    E2(e, CMP, M(HCPU, C_RIP, 8), R(ZYDIS_REGISTER_RAX));
    if (!leave && j->mid_lookup && j->nmid < ARRAY_SIZE(j->mid_jumps))
        j->mid_jumps[j->nmid++] = jrel(e, ZYDIS_MNEMONIC_JNZ); /* to the block's lookup exit */
    else
        LEAVE(jto(e, ZYDIS_MNEMONIC_JNZ, j->exit_off));
    E2(e, CMP, M(HCPU, C_EXIT_NOW, 1), I(0));
    LEAVE(jto(e, ZYDIS_MNEMONIC_JNZ, j->exit_off));
    E2(e, CMP, M(HCPU, C_SHADOW, 1), I(0));
    LEAVE(jto(e, ZYDIS_MNEMONIC_JNZ, j->exit_off));
    E2(e, MOV, R(ZYDIS_REGISTER_RAX), I((int64_t)(uintptr_t)j->pending));
    E2(e, CMP, M(ZYDIS_REGISTER_RAX, 0, 1), I(0));
    LEAVE(jto(e, ZYDIS_MNEMONIC_JNZ, j->exit_off));
    /* what the handler may have raised on this thread without a poke (an EOI or TPR write
     * unmasking an interrupt, a self-IPI): the chained exits no longer test it */
    E2(e, MOV, R(ZYDIS_REGISTER_EAX), I(0));
    E2(e, OR, R(ZYDIS_REGISTER_AL), M(HCPU, C_KICKED, 1));
    E2(e, OR, R(ZYDIS_REGISTER_AL), M(HCPU, C_INTR_PEND, 1));
    E2(e, OR, R(ZYDIS_REGISTER_AL), M(HCPU, C_NMI_PEND, 1));
    if (leave) {
        LEAVE((void)0);
        E2(e, MOV, R(ZYDIS_REGISTER_RCX), I((int64_t)(uintptr_t)&j->attention));
        E2(e, MOV, R(ZYDIS_REGISTER_RCX), M(ZYDIS_REGISTER_RCX, 0, 8));
        E2(e, TEST, R(ZYDIS_REGISTER_RCX), R(ZYDIS_REGISTER_RCX));
        size_t none = jrel(e, ZYDIS_MNEMONIC_JZ);
        E2(e, OR, R(ZYDIS_REGISTER_AL), M(ZYDIS_REGISTER_RCX, 0, 1));
        LEAVE((void)0);
        patch(e, none, e->pos);
        return;
    }
    if (j->attention) {
        E2(e, MOV, R(ZYDIS_REGISTER_RCX), I((int64_t)(uintptr_t)j->attention));
        E2(e, OR, R(ZYDIS_REGISTER_AL), M(ZYDIS_REGISTER_RCX, 0, 1));
    }
    jto(e, ZYDIS_MNEMONIC_JNZ, j->exit_off);
#undef LEAVE
}

static void after_handler_checks(struct emit *e, struct bt_jit *j)
{
    handler_checks(e, j, NULL, NULL);
}

/* The shared tail of call_handler + after_handler_checks, emitted once per cache (in the
 * trampoline's area) instead of in every slow path and mid-block handler call: ~45 host
 * instructions each, which were a good part of translation time and of the code cache.
 * Called (host CALL, so the host stack is 8 bytes off its block-level alignment) with RAX = the
 * instruction's RIP, RDX = the next one, RSI = its struct bt_insn; the pending instruction
 * count already added.  Returns to the caller when the block may go on; otherwise drops the
 * return address and leaves through the trampoline's exit. */
static void handler_stub(struct emit *e, struct bt_jit *j)
{
    E2(e, MOV, M(HCPU, C_INSN_RIP, 8), R(ZYDIS_REGISTER_RAX));
    E2(e, MOV, M(HCPU, C_NEXT_RIP, 8), R(ZYDIS_REGISTER_RDX));
    E2(e, MOV, M(HCPU, C_RIP, 8), R(ZYDIS_REGISTER_RDX));
    sync_out(e); /* RCX and RDX only */
    E2(e, SUB, R(ZYDIS_REGISTER_RSP), I(8));
    E2(e, MOV, R(ZYDIS_REGISTER_RDI), R(HCPU));
    E1(e, CALL, M(ZYDIS_REGISTER_RSI, (int64_t)offsetof(struct bt_insn, fn), 8));
    E2(e, ADD, R(ZYDIS_REGISTER_RSP), I(8));
    sync_in(e);
    icount_add(e, 1);
    size_t leave[8];
    unsigned nl = 0;
    handler_checks(e, j, leave, &nl);
    E0(e, RET);
    for (unsigned k = 0; k < nl; k++)
        patch(e, leave[k], e->pos);
    E2(e, ADD, R(ZYDIS_REGISTER_RSP), I(8)); /* the return address */
    jto(e, ZYDIS_MNEMONIC_JMP, j->exit_off);
}

/* call_handler + after_handler_checks through handler_stub (not for a block's last
 * instruction, nor where a mid-block branch needs the block's lookup: j->mid_lookup) */
static void call_handler_shared(struct emit *e, struct bt_jit *j, const struct bt_insn *i,
                                int64_t off, bool b32, unsigned *pend)
{
    flush_icount(e, pend);
    if (b32) { /* the 32-bit results wrap */
        E2(e, LEA, R(ZYDIS_REGISTER_EAX), M(R12, off, 8));
        E2(e, LEA, R(ZYDIS_REGISTER_EDX), M(R12, off + i->len, 8));
    } else {
        E2(e, LEA, R(ZYDIS_REGISTER_RAX), M(R12, off, 8));
        E2(e, LEA, R(ZYDIS_REGISTER_RDX), M(R12, off + i->len, 8));
    }
    E2(e, MOV, R(ZYDIS_REGISTER_RSI), I((int64_t)(uintptr_t)i));
    jto(e, ZYDIS_MNEMONIC_CALL, j->handler_off);
}

static bool same_page(unsigned page_off, int64_t off)
{
    return (int64_t)page_off + off >= 0 && (int64_t)page_off + off < 4096;
}

/* What the interpreter loop checks between blocks, before the code goes on to another block
 * without it: the budget (room for a whole block), exit requests, kicks, pending events, queued
 * invalidations and the LAPIC's attention.  `full` adds what only an exit decided by a handler can
 * change (an interrupt shadow, HLT, TF from POPF/IRET): a direct branch changes none of them.
 * Each failing check jumps to a fails[] entry the caller patches.  Clobbers the caller-saved
 * registers. */
/* The budget test: the host flags "below or equal" while icount leaves room for a whole block
 * below c->jit_chain_end.  Clobbers RCX (RAX kept for lookup_exit). */
static void budget_test(struct emit *e)
{
    E2(e, MOVQ, R(ZYDIS_REGISTER_RCX), R(ICOUNT_REG));
    E2(e, CMP, R(ZYDIS_REGISTER_RCX), M(HCPU, C_CHAIN_END, 8));
}

static void between_blocks(struct emit *e, struct bt_jit *j, size_t *fails, int *nf, bool full)
{
    budget_test(e);
    fails[(*nf)++] = jrel(e, ZYDIS_MNEMONIC_JNBE);
    /* Exit requests, kicks, queued invalidations and the LAPIC's attention from other threads
     * poke chain_end to 0 (bt_jit_poke), and whatever a handler raises on this thread is seen
     * by after_handler_checks, so a branch that ran no handler needs the budget test alone. */
    if (!full) return;
    E2(e, MOV, R(ZYDIS_REGISTER_EAX), I(0));
    E2(e, OR, R(ZYDIS_REGISTER_AL), M(HCPU, C_EXIT_NOW, 1));
    E2(e, OR, R(ZYDIS_REGISTER_AL), M(HCPU, C_KICKED, 1));
    E2(e, OR, R(ZYDIS_REGISTER_AL), M(HCPU, C_INTR_PEND, 1));
    E2(e, OR, R(ZYDIS_REGISTER_AL), M(HCPU, C_NMI_PEND, 1));
    E2(e, OR, R(ZYDIS_REGISTER_AL), M(HCPU, C_SHADOW, 1));
    E2(e, OR, R(ZYDIS_REGISTER_AL), M(HCPU, C_HALTED, 1));
    fails[(*nf)++] = jrel(e, ZYDIS_MNEMONIC_JNZ);
    /* TF: the loop single-steps */
    E2(e, TEST, M(HCPU, C_FLAGS + 1, 1), I(X86_FLAG_TF >> 8));
    fails[(*nf)++] = jrel(e, ZYDIS_MNEMONIC_JNZ);
    E2(e, MOV, R(ZYDIS_REGISTER_RAX), I((int64_t)(uintptr_t)j->pending));
    E2(e, CMP, M(ZYDIS_REGISTER_RAX, 0, 1), I(0));
    fails[(*nf)++] = jrel(e, ZYDIS_MNEMONIC_JNZ);
    /* a LAPIC with something to say (interrupt, NMI, INIT, SIPI): the loop decides.  Its
     * attention flag is read in place (what bt_glue_attention does, without two calls) */
    if (j->attention) {
        E2(e, MOV, R(ZYDIS_REGISTER_RAX), I((int64_t)(uintptr_t)j->attention));
        E2(e, CMP, M(ZYDIS_REGISTER_RAX, 0, 1), I(0));
        fails[(*nf)++] = jrel(e, ZYDIS_MNEMONIC_JNZ);
    }
}

#define C_TLB ((int64_t)offsetof(struct bt_cpu, tlb))
#define C_CPL ((int64_t)offsetof(struct bt_cpu, cpl))
#define C_SEGBASE(sg)                                                                              \
    ((int64_t)offsetof(struct bt_cpu, s.seg) + (int64_t)(sg) * (int64_t)sizeof(struct x86_seg))
#define T_VTAG     ((int64_t)offsetof(struct bt_tlb_entry, vtag))
#define T_GPA      ((int64_t)offsetof(struct bt_tlb_entry, gpa))
#define T_ADDEND   ((int64_t)offsetof(struct bt_tlb_entry, addend))
#define T_PERM     ((int64_t)offsetof(struct bt_tlb_entry, perm))
#define T_FTAG     ((int64_t)offsetof(struct bt_tlb_entry, ftag))
#define TLB_ESHIFT 6
_Static_assert(sizeof(struct bt_tlb_entry) == 1 << TLB_ESHIFT, "the TLB probes scale the index");
_Static_assert(offsetof(struct x86_seg, base) == 0, "segment base first");

/* ECX = the offset in bt_cpu.tlb of the entry for the address in `src`: bits 12.. of it,
 * scaled by the entry size (RORX, where the host has BMI2, does MOV and SHR in one; the bits
 * either brings in below the page number are masked off).  Clobbers the host flags. */
static void tlb_offset(struct emit *e, bool bmi2, ZydisRegister src)
{
    if (bmi2) {
        E3(e, RORX, R(ZYDIS_REGISTER_RCX), R(src), I(12 - TLB_ESHIFT));
    } else {
        E2(e, MOV, R(ZYDIS_REGISTER_RCX), R(src));
        E2(e, SHR, R(ZYDIS_REGISTER_RCX), I(12 - TLB_ESHIFT));
    }
    E2(e, AND, R(ZYDIS_REGISTER_ECX), I((BT_TLB_SIZE - 1) << TLB_ESHIFT));
}

/* RAX holds a linear code address (64-bit code): RCX = its soft-TLB entry if that maps the page
 * executable at the current CPL, else a jump to a fails[] entry.  The same test bt_fetch's fast
 * path makes, so a hit means the interpreter would fetch from the page the entry names.
 * Clobbers RDX. */
static void tlb_exec_probe(struct emit *e, size_t *fails, int *nf, int user)
{
    tlb_offset(e, e->jit && e->jit->bmi2, ZYDIS_REGISTER_RAX);
    E2(e, LEA, R(ZYDIS_REGISTER_RCX), MX(HCPU, ZYDIS_REGISTER_RCX, 1, C_TLB, 8));
    E2(e, MOV, R(ZYDIS_REGISTER_RDX), R(ZYDIS_REGISTER_RAX));
    E2(e, AND, R(ZYDIS_REGISTER_RDX), I(~(int64_t)0xfff));
    E2(e, OR, R(ZYDIS_REGISTER_RDX), I(1));
    E2(e, CMP, R(ZYDIS_REGISTER_RDX), M(ZYDIS_REGISTER_RCX, T_VTAG, 8));
    fails[(*nf)++] = jrel(e, ZYDIS_MNEMONIC_JNZ);
    /* execute permission: supervisor bit 2, user bit 5 (mmu.c).  Known when the code is
     * translated for one privilege class (user: 1 for CPL 3, 0 for CPL 0-2; chained code runs
     * in its own class), else (-1, the shared stubs) tested at run time. */
    if (user >= 0) {
        E2(e, TEST, M(ZYDIS_REGISTER_RCX, T_PERM, 4), I(user ? BT_ACC_EXEC << 3 : BT_ACC_EXEC));
        fails[(*nf)++] = jrel(e, ZYDIS_MNEMONIC_JZ);
        return;
    }
    E2(e, MOV, R(ZYDIS_REGISTER_EDX), I(BT_ACC_EXEC));
    E2(e, CMP, M(HCPU, C_CPL, 1), I(3));
    size_t sup = jrel(e, ZYDIS_MNEMONIC_JNZ);
    E2(e, MOV, R(ZYDIS_REGISTER_EDX), I(BT_ACC_EXEC << 3));
    patch(e, sup, e->pos);
    E2(e, TEST, M(ZYDIS_REGISTER_RCX, T_PERM, 4), R(ZYDIS_REGISTER_EDX));
    fails[(*nf)++] = jrel(e, ZYDIS_MNEMONIC_JZ);
}

/* ++*ctr (a statistic of this vCPU's translator).  Clobbers RDX. */
static void count(struct emit *e, uint64_t *ctr)
{
    E2(e, MOV, R(ZYDIS_REGISTER_RDX), I((int64_t)(uintptr_t)ctr));
    E1(e, INC, M(ZYDIS_REGISTER_RDX, 0, 8));
}

/* A lookup hit: RAX = the linear RIP, RSI = its entry.  The translation is entered after its
 * load of R12 (JIT_ENTRY2) with R12 = RIP, as a chained jump enters, so s.rip need not be
 * written.  Clobbers RAX, RCX. */
static void lookup_enter(struct emit *e, const struct bt_jit *j)
{
    E2(e, MOV, R(R12), R(ZYDIS_REGISTER_RAX));
    E2(e, MOV, R(ZYDIS_REGISTER_EAX), M(ZYDIS_REGISTER_RSI, L_CODE, 4));
    E2(e, MOV, R(ZYDIS_REGISTER_RCX), I((int64_t)(uintptr_t)(j->rx + JIT_ENTRY2)));
    E2(e, ADD, R(ZYDIS_REGISTER_RAX), R(ZYDIS_REGISTER_RCX));
    E1(e, JMP, R(ZYDIS_REGISTER_RAX));
}

/* The end of a block whose successor a handler decided (indirect JMP/CALL, RET, direct CALL and
 * every other handler-ended block) in 64-bit code: after the loop's checks, the inline lookup of
 * the RIP (s.rip, or RAX with rip_in_rax) in the per-vCPU table (see struct jit_lent), validated
 * by CR3, the mode word and the TLB generation (else lookup_revalidate); a hit jumps straight to
 * the translation, a miss returns to the loop. */
static void lookup_exit(struct emit *e, struct bt_jit *j, bool after_handler, bool rip_in_rax)
{
    size_t fails[12], kfails[4], tfails[8];
    int nf = 0, nk = 0, nt = 0;
    between_blocks(e, j, fails, &nf, after_handler);
    if (!rip_in_rax) E2(e, MOV, R(ZYDIS_REGISTER_RAX), M(HCPU, C_RIP, 8));
    E2(e, MOV, R(ZYDIS_REGISTER_RCX), R(ZYDIS_REGISTER_RAX));
    E2(e, SHR, R(ZYDIS_REGISTER_RCX), I(12));
    E2(e, XOR, R(ZYDIS_REGISTER_RCX), R(ZYDIS_REGISTER_RAX));
    E2(e, AND, R(ZYDIS_REGISTER_ECX), I(JIT_LOOKUP_SIZE - 1));
    E2(e, SHL, R(ZYDIS_REGISTER_ECX), I(6));
    E2(e, MOV, R(ZYDIS_REGISTER_RSI), I((int64_t)(uintptr_t)j->ltab));
    E2(e, ADD, R(ZYDIS_REGISTER_RSI), R(ZYDIS_REGISTER_RCX));
    E2(e, CMP, R(ZYDIS_REGISTER_RAX), M(ZYDIS_REGISTER_RSI, L_RIP, 8));
    kfails[nk++] = jrel(e, ZYDIS_MNEMONIC_JNZ);
    E2(e, MOV, R(ZYDIS_REGISTER_RDX), M(HCPU, C_CR3, 8));
    E2(e, CMP, R(ZYDIS_REGISTER_RDX), M(ZYDIS_REGISTER_RSI, L_CR3, 8));
    size_t other_cr3 = jrel(e, ZYDIS_MNEMONIC_JNZ);
    size_t mode_at = e->pos;
    E2(e, MOV, R(ZYDIS_REGISTER_EDX), M(HCPU, C_CPL, 4));
    E2(e, CMP, R(ZYDIS_REGISTER_EDX), M(ZYDIS_REGISTER_RSI, L_MODE, 4));
    kfails[nk++] = jrel(e, ZYDIS_MNEMONIC_JNZ);
    /* no flush since: tlb_gen[gen & 1] still gen */
    E2(e, MOV, R(ZYDIS_REGISTER_RDX), M(ZYDIS_REGISTER_RSI, L_GEN, 8));
    E2(e, MOV, R(ZYDIS_REGISTER_ECX), R(ZYDIS_REGISTER_EDX));
    E2(e, AND, R(ZYDIS_REGISTER_ECX), I(1));
    E2(e, CMP, R(ZYDIS_REGISTER_RDX), MX(HCPU, ZYDIS_REGISTER_RCX, 8, C_TLBGEN, 8));
    tfails[nt++] = jrel(e, ZYDIS_MNEMONIC_JNZ);
    count(e, &j->st.lookup_hits);
    lookup_enter(e, j);
    /* Another CR3: an entry validated on a global page (an odd generation) holds for every
     * address space while no flush has dropped global pages (tlb_gen[1]), as the soft TLB's
     * global entries do; the rest of the key and the generation are tested as for any.  The
     * kernel's code runs under every process's CR3: a pipe between two processes had made 2.5 M
     * of the sha256 run's lookups miss (and return to the loop) for kernel code alone. */
    patch(e, other_cr3, e->pos);
    E2(e, TEST, M(ZYDIS_REGISTER_RSI, L_GEN, 1), I(1));
    kfails[nk++] = jrel(e, ZYDIS_MNEMONIC_JZ);
    jto(e, ZYDIS_MNEMONIC_JMP, mode_at);
    /* misses by kind (statistics), then back to the loop */
    for (int k = 0; k < nk; k++)
        patch(e, kfails[k], e->pos);
    if (rip_in_rax) E2(e, MOV, M(HCPU, C_RIP, 8), R(ZYDIS_REGISTER_RAX));
    count(e, &j->st.lookup_miss_key);
    jto(e, ZYDIS_MNEMONIC_JMP, j->exit_off);
    for (int k = 0; k < nt; k++)
        patch(e, tfails[k], e->pos);
    jto(e, ZYDIS_MNEMONIC_JMP, j->reval_off); /* RAX, RSI as they are */
    for (int k = 0; k < nf; k++)
        patch(e, fails[k], e->pos);
    if (rip_in_rax) E2(e, MOV, M(HCPU, C_RIP, 8), R(ZYDIS_REGISTER_RAX));
    count(e, &j->st.lookup_bails); /* the loop has something to do first */
    jto(e, ZYDIS_MNEMONIC_JMP, j->exit_off);
}

/* The stub of an unpatched chain jump: j->last_exit = `what` (its patch_end, and for a cross-page
 * exit the offset of its page immediate in the high half), for bt_jit_run to patch it.
 * Clobbers RAX, RCX. */
static void record_exit(struct emit *e, struct bt_jit *j, uint64_t what)
{
    E2(e, MOV, R(ZYDIS_REGISTER_RAX), I((int64_t)what));
    E2(e, MOV, R(ZYDIS_REGISTER_RCX), I((int64_t)(uintptr_t)&j->last_exit));
    E2(e, MOV, M(ZYDIS_REGISTER_RCX, 0, 8), R(ZYDIS_REGISTER_RAX));
}

/* RAX canonical, or a jump appended to slow[] (RCX clobbered) */
static void check_canonical_rax(struct emit *e, size_t *slow, int *nslow)
{
    E2(e, MOV, R(ZYDIS_REGISTER_RCX), R(ZYDIS_REGISTER_RAX));
    E2(e, SHL, R(ZYDIS_REGISTER_RCX), I(16));
    E2(e, SAR, R(ZYDIS_REGISTER_RCX), I(16));
    E2(e, CMP, R(ZYDIS_REGISTER_RCX), R(ZYDIS_REGISTER_RAX));
    slow[(*nslow)++] = jrel(e, ZYDIS_MNEMONIC_JNZ);
}

/* A direct successor on another page (64-bit code): chainable too, but the page's mapping may
 * differ from run to run (another address space, a remapped page), so before the chain jump the
 * TLB must map the target's page, executable, to the guest-physical page the chained translation
 * was made from: a 64-bit immediate patched together with the jump (JIT_NO_GPA until then).  A
 * TLB miss returns to the loop; a different physical page goes to the stub, which records the exit
 * so the jump is patched again to what the page now holds. */
static void leave_far(struct emit *e, struct bt_jit *j, size_t *canon, int *ncanon)
{
    size_t fails[12];
    int nf = 0;
    between_blocks(e, j, fails, &nf, false); /* RAX (the successor's RIP) kept */
    tlb_exec_probe(e, fails, &nf, j->user);
    size_t before = e->pos;
    E2(e, MOV, R(ZYDIS_REGISTER_RDX), I((int64_t)JIT_NO_GPA));
    if (!e->fail && e->pos - before != 10) e->fail = true; /* want REX.W B8+r imm64 */
    size_t imm_off = e->pos - 8;
    E2(e, CMP, R(ZYDIS_REGISTER_RDX), M(ZYDIS_REGISTER_RCX, T_GPA, 8));
    size_t other = jrel(e, ZYDIS_MNEMONIC_JNZ);
    E2(e, MOV, R(R12), R(ZYDIS_REGISTER_RAX));  /* the successor's entry RIP (JIT_ENTRY2) */
    size_t chain = jrel(e, ZYDIS_MNEMONIC_JMP); /* rel32 0: falls through until patched */
    patch(e, other, e->pos);
    record_exit(e, j, chain | (uint64_t)imm_off << 32); /* clobbers RAX: its own way out */
    jto(e, ZYDIS_MNEMONIC_JMP, j->exit_off);
    for (int k = 0; k < nf; k++)
        patch(e, fails[k], e->pos);
    /* A branch's target checked for canonical form only here, off the chained path: the TLB
     * holds canonical pages only, so a non-canonical one always ends up here (RAX intact; the
     * record_exit path above, reached only through a TLB hit, never needs it) */
    if (canon) check_canonical_rax(e, canon, ncanon);
    jto(e, ZYDIS_MNEMONIC_JMP, j->exit_off);
}

/* Leaves toward the direct successor at block offset `off` after `count` more instructions
 * (added to icount).  On the same page (so the same guest-physical page whatever linear alias
 * the block runs at) the exit is chainable: R12 moves to the successor's RIP and, if
 * between_blocks finds nothing for the loop to do, the chain jump goes to the successor's
 * translation after its load of R12 (JIT_ENTRY2), s.rip unwritten: translated code keeps the
 * entry RIP in R12 and writes s.rip only for C code (call_handler) and on the way out.  The
 * chain jump falls through until bt_jit_run patches it (try_chain) to the stub that records this
 * exit for patching, writes s.rip and returns to the loop.  Across pages in 64-bit code: chained
 * with the TLB check (leave_far); else back to the loop. */
static void leave_direct_c(struct emit *e, struct bt_jit *j, unsigned page_off, int64_t off,
                           bool b32, unsigned count, size_t *canon, int *ncanon)
{
    if (!same_page(page_off, off)) {
        rip_at(e, off, b32);
        E2(e, MOV, M(HCPU, C_RIP, 8), R(ZYDIS_REGISTER_RAX));
        icount_add(e, count);
        if (!b32)
            leave_far(e, j, canon, ncanon);
        else
            jto(e, ZYDIS_MNEMONIC_JMP, j->exit_off);
        return;
    }
    icount_add(e, count);
    if (off) {
        if (b32)
            E2(e, LEA, R(ZYDIS_REGISTER_R12D), M(R12, off, 8));
        else
            E2(e, LEA, R(R12), M(R12, off, 8));
    }
    /* between_blocks' budget test with the chain jump as its branch: within the budget, a
     * patched JBE goes straight to the successor (one host branch, no JMP after a JNBE); an
     * unpatched one (rel32 0), or the budget spent, falls through to the stub, which records
     * the exit (try_chain ignores a site already patched to that translation) and leaves */
    budget_test(e);
    size_t chain = jrel(e, ZYDIS_MNEMONIC_JBE); /* rel32 0: falls through until patched */
    record_exit(e, j, chain);
    E2(e, MOV, M(HCPU, C_RIP, 8), R(R12));
    jto(e, ZYDIS_MNEMONIC_JMP, j->exit_off);
}

/* A direct successor at block offset `off`, `count` instructions pending.  leave_direct_c:
 * with `canon`, a successor on another page that is not canonical jumps there (the icount
 * added, s.rip = the successor) for the caller to raise #GP at the branch. */
static void leave_direct(struct emit *e, struct bt_jit *j, unsigned page_off, int64_t off, bool b32,
                         unsigned count)
{
    leave_direct_c(e, j, page_off, off, b32, count, NULL, NULL);
}

/* host Jcc for condition code cc (the low nibble of the guest opcode) */
static const ZydisMnemonic jcc_host[16] = {
    ZYDIS_MNEMONIC_JO, ZYDIS_MNEMONIC_JNO, ZYDIS_MNEMONIC_JB,  ZYDIS_MNEMONIC_JNB,
    ZYDIS_MNEMONIC_JZ, ZYDIS_MNEMONIC_JNZ, ZYDIS_MNEMONIC_JBE, ZYDIS_MNEMONIC_JNBE,
    ZYDIS_MNEMONIC_JS, ZYDIS_MNEMONIC_JNS, ZYDIS_MNEMONIC_JP,  ZYDIS_MNEMONIC_JNP,
    ZYDIS_MNEMONIC_JL, ZYDIS_MNEMONIC_JNL, ZYDIS_MNEMONIC_JLE, ZYDIS_MNEMONIC_JNLE};

static bool is_jcc(unsigned m)
{
    for (int k = 0; k < 16; k++)
        if (jcc_host[k] == m) return true;
    return false;
}

/* A direct JMP or Jcc ending the block, natively: the condition is evaluated on the host with the
 * guest's arithmetic flags loaded, the target checked (canonical in 64-bit code; a flat 32-bit
 * code segment has no limit to check) and the block left with s.rip set.  A target that fails the
 * check goes to the handler, which raises the #GP precisely. */

static bool native_branch(struct emit *e, struct bt_jit *j, const struct bt_insn *i, int64_t off,
                          bool b32, unsigned *pend, unsigned page_off)
{
    bool jmp = i->mnemonic == ZYDIS_MNEMONIC_JMP;
    if (!jmp && !is_jcc(i->mnemonic)) return false;
    if (i->op[0].kind != BT_OPK_IMM || !(i->attr_lo & BT_ATTR_RELATIVE) ||
        i->opsize != (b32 ? 32 : 64))
        return false;
    int64_t end = off + i->len, target = end + i->op[0].disp;
    if (!fits32(target)) return false;
    size_t not_taken = 0;
    if (!jmp) {
        unsigned cc = i->opcode & 0xf;
        if (e->hflags) { /* right after its flag producer: the host's Jcc on the host flags */
            not_taken = jrel(e, jcc_host[cc ^ 1]);
        } else {
            emit_cond(e, cc);
            not_taken = jrel(e, (cc & 1) ? ZYDIS_MNEMONIC_JNZ : ZYDIS_MNEMONIC_JZ);
        }
    }
    /* a target on the block's own page is canonical like the block (no check); one on another
     * page is checked where leave_far leaves without chaining (all a non-canonical one can do) */
    size_t slow[1];
    int ns = 0;
    bool check = !b32 && !same_page(page_off, target);
    leave_direct_c(e, j, page_off, target, b32, *pend + 1, check ? slow : NULL, &ns);
    if (!jmp) {
        patch(e, not_taken, e->pos);
        leave_direct(e, j, page_off, end, b32, *pend + 1);
    }
    if (ns) {
        patch(e, slow[0], e->pos);
        icount_op(e, *pend + 1, true);      /* leave_direct_c counted the branch */
        call_handler(e, i, off, b32, pend); /* raises #GP */
        jto(e, ZYDIS_MNEMONIC_JMP, j->exit_off);
    }
    *pend = 0;
    return true;
}

/* ---- inline guest-memory access (64-bit code) ------------------------------------------------ */

#define HRAX ZYDIS_REGISTER_RAX
#define HEAX ZYDIS_REGISTER_EAX
#define HRCX ZYDIS_REGISTER_RCX
#define HECX ZYDIS_REGISTER_ECX
#define HRDX ZYDIS_REGISTER_RDX
#define HEDX ZYDIS_REGISTER_EDX
#define HRSI ZYDIS_REGISTER_RSI
#define HESI ZYDIS_REGISTER_ESI
#define HRDI ZYDIS_REGISTER_RDI
#define HEDI ZYDIS_REGISTER_EDI

/* True if operand `o` of `i` is a memory operand the inline access below handles. */
static bool inline_mem_ok(const struct bt_insn *i, const struct bt_operand *o, int64_t off,
                          bool b32)
{
    if (b32 || o->kind != BT_OPK_MEM || i->addrsize != 64) return false;
    if (o->size != 1 && o->size != 2 && o->size != 4 && o->size != 8) return false;
    if (o->base != BT_REG_RIP && o->base != BT_NOREG && o->base >= 16) return false;
    if (o->index != BT_NOREG && o->index >= 16) return false;
    if (o->index != BT_NOREG && o->scale != 1 && o->scale != 2 && o->scale != 4 && o->scale != 8)
        return false;
    if (o->base == BT_REG_RIP) return o->index == BT_NOREG && fits32(o->disp + off);
    return fits32(o->disp);
}

/* inline_mem_ok for a 16-byte operand */
static bool inline_mem_ok16(const struct bt_insn *i, const struct bt_operand *o, int64_t off)
{
    struct bt_operand t = *o;
    t.size = 8; /* the other checks are the same */
    return o->size == 16 && inline_mem_ok(i, &t, off, false);
}

/* ---- probe groups -----------------------------------------------------------------------
 *
 * Accesses through one base register whose value is known relative to the block's start (not
 * written in the block, or moved only by constants: PUSH, POP, ADD/SUB/INC/DEC, LEA r,[r+d]), or
 * RIP-relative ones, fall in a range [base + lo, base + hi) known at translation time.  When a
 * block has two or more such accesses with the range under GRP_SPAN bytes, its prologue probes
 * the whole range once (one page, the access kind the strongest member needs) and keeps the host
 * address of the range's lowest byte in bt_cpu.grp_host; each member then loads it and reaches
 * its operand at a constant distance from it, instead of probing.
 * If any prologue probe fails (a miss, a range across pages, no permission, a watched page, MMIO)
 * the block runs a second translation made without groups, from its start, so nothing else
 * changes: the same code as before, with its own slow paths.  Scanning stops at the first
 * instruction that could change a translation (anything but the plain data forms below), so the
 * host addresses stay as valid for the block as a probe's is for its access. */
#define GRP_MAX  4
#define GRP_SPAN 2048
struct grp_plan {
    int8_t member[JIT_BLOCK_MAX]; /* group of instruction k's access, -1 if none */
    int64_t mdisp[JIT_BLOCK_MAX]; /* the displacement its operand has (a check) */
    int64_t maddr[JIT_BLOCK_MAX]; /* its address relative to its base's value at the start */
    uint8_t msize[JIT_BLOCK_MAX];
    unsigned ng;
    struct {
        uint8_t base; /* GPR or BT_REG_RIP */
        int64_t lo, hi;
        bool write;
    } g[GRP_MAX];
};
#define C_GRPH(g) ((int64_t)offsetof(struct bt_cpu, grp_host) + 8 * (int64_t)(g))
_Static_assert(BT_REG_RIP == 16, "a group's base indexes counts of 17: the GPRs, then RIP");
_Static_assert(GRP_MAX <= sizeof(((struct bt_cpu *)0)->grp_host) / 8, "a host address per group");

/* Instructions the plan may look past: they change no translation and write at most op[0] (and
 * RSP for PUSH/POP); with `mem` their memory operand may be a member. */
static bool is_xmm(const struct bt_operand *o);

/* MOVAPS/MOVAPD/MOVDQA/MOVUPS/MOVUPD/MOVDQU (native_sse_move's forms) */
static bool is_sse_move(unsigned m)
{
    return m == ZYDIS_MNEMONIC_MOVAPS || m == ZYDIS_MNEMONIC_MOVAPD || m == ZYDIS_MNEMONIC_MOVDQA ||
           m == ZYDIS_MNEMONIC_MOVUPS || m == ZYDIS_MNEMONIC_MOVUPD || m == ZYDIS_MNEMONIC_MOVDQU;
}

static bool grp_plain(const struct bt_insn *i, bool *mem)
{
    *mem = true;
    if (i->pfx & (BT_PFX_LOCK | BT_PFX_REP | BT_PFX_REPNE)) return false;
    /* 16-byte SSE moves between an XMM register and memory (memset, memcpy, stack spills):
     * they write no GPR */
    if (is_sse_move(i->mnemonic))
        return i->nops == 2 && (is_xmm(&i->op[0]) || is_xmm(&i->op[1])) &&
               (i->op[0].kind == BT_OPK_MEM || i->op[1].kind == BT_OPK_MEM);
    /* an operation on XMM registers alone (PXOR xmm0, xmm0 before a memset's stores): it
     * touches neither memory nor a GPR, and can only fault (#NM, #UD, #XM), which leaves.
     * Not MASKMOVDQU (a store through RDI with two XMM operands). */
    bool xmm_only = i->nops >= 1 && i->mnemonic != ZYDIS_MNEMONIC_MASKMOVDQU;
    for (unsigned k = 0; k < i->nops && k < 4; k++)
        xmm_only &= is_xmm(&i->op[k]);
    if (xmm_only) {
        *mem = false;
        return true;
    }
    for (unsigned k = 0; k < i->nops && k < 4; k++) {
        const struct bt_operand *o = &i->op[k];
        if (o->kind == BT_OPK_REG && o->rclass != BT_RC_GPR) return false; /* AH, CRn, SREG... */
        if (o->kind == BT_OPK_PTR) return false;
    }
    switch (i->mnemonic) {
    case ZYDIS_MNEMONIC_MOV:
    case ZYDIS_MNEMONIC_MOVZX:
    case ZYDIS_MNEMONIC_MOVSX:
    case ZYDIS_MNEMONIC_MOVSXD:
    case ZYDIS_MNEMONIC_ADD:
    case ZYDIS_MNEMONIC_SUB:
    case ZYDIS_MNEMONIC_AND:
    case ZYDIS_MNEMONIC_OR:
    case ZYDIS_MNEMONIC_XOR:
    case ZYDIS_MNEMONIC_ADC:
    case ZYDIS_MNEMONIC_SBB:
    case ZYDIS_MNEMONIC_CMP:
    case ZYDIS_MNEMONIC_TEST:
    case ZYDIS_MNEMONIC_INC:
    case ZYDIS_MNEMONIC_DEC:
    case ZYDIS_MNEMONIC_NEG:
    case ZYDIS_MNEMONIC_NOT:
    case ZYDIS_MNEMONIC_SHL:
    case ZYDIS_MNEMONIC_SHR:
    case ZYDIS_MNEMONIC_SAR:
    case ZYDIS_MNEMONIC_ROL:
    case ZYDIS_MNEMONIC_ROR:
    case ZYDIS_MNEMONIC_PUSH:
    case ZYDIS_MNEMONIC_POP: return true;
    case ZYDIS_MNEMONIC_IMUL: return i->nops >= 2 && i->op[0].kind == BT_OPK_REG;
    case ZYDIS_MNEMONIC_LEA:
    case ZYDIS_MNEMONIC_BSWAP:
    case ZYDIS_MNEMONIC_NOP: *mem = false; return true;
    default:
        *mem = false;
        return i->nops >= 1 && i->op[0].kind == BT_OPK_REG &&
               ((i->mnemonic >= ZYDIS_MNEMONIC_CMOVB && i->mnemonic <= ZYDIS_MNEMONIC_CMOVZ) ||
                (i->mnemonic >= ZYDIS_MNEMONIC_SETB && i->mnemonic <= ZYDIS_MNEMONIC_SETZ));
    }
}

/* The groups of a block of 64-bit code (false: none worth a prologue). */
static bool grp_plan_make(const struct bt_insn *ins, unsigned n, unsigned stack_bits,
                          struct grp_plan *gp)
{
    int64_t delta[16] = {0};
    bool known[16];
    for (unsigned r = 0; r < 16; r++)
        known[r] = true;
    int8_t cbase[JIT_BLOCK_MAX];
    int64_t caddr[JIT_BLOCK_MAX];
    bool cwrite[JIT_BLOCK_MAX];
    unsigned count[17] = {0};
    int64_t off = 0;
    unsigned m = n < JIT_BLOCK_MAX ? n : JIT_BLOCK_MAX;
    for (unsigned k = 0; k < m; k++)
        gp->member[k] = cbase[k] = -1;
    for (unsigned k = 0; k < m; off += ins[k].len, k++) {
        const struct bt_insn *i = &ins[k];
        bool mem;
        if (!grp_plain(i, &mem)) break;
        const struct bt_operand *d = &i->op[0];
        ZydisMnemonic mn = (ZydisMnemonic)i->mnemonic;
        bool push = mn == ZYDIS_MNEMONIC_PUSH, pop = mn == ZYDIS_MNEMONIC_POP;
        if (push || pop) {
            if (stack_bits != 64 || i->opsize != 64 || i->nops < 1 || d->kind == BT_OPK_MEM)
                break; /* PUSH/POP m, 16-bit forms: the handler's */
            if (known[RSP]) {
                cbase[k] = RSP;
                caddr[k] = delta[RSP] + (push ? -8 : 0);
                gp->mdisp[k] = push ? -8 : 0;
                gp->msize[k] = 8;
                cwrite[k] = push;
                delta[RSP] += push ? -8 : 8;
            }
            if (pop && d->kind == BT_OPK_REG) known[d->reg & 15] = false;
            continue;
        }
        for (unsigned q = 0; mem && q < i->nops && q < 4; q++) {
            const struct bt_operand *o = &i->op[q];
            if (o->kind != BT_OPK_MEM) continue;
            bool ok = is_sse_move(i->mnemonic) ? inline_mem_ok16(i, o, off)
                                               : inline_mem_ok(i, o, off, false);
            if (!ok || o->index != BT_NOREG || o->base == BT_NOREG || o->seg == SEG_FS ||
                o->seg == SEG_GS)
                break;
            bool rip = o->base == BT_REG_RIP;
            if (!rip && !known[o->base]) break;
            cbase[k] = (int8_t)o->base;
            caddr[k] = rip ? o->disp + off : delta[o->base] + o->disp;
            gp->mdisp[k] = o->disp;
            gp->msize[k] = (uint8_t)o->size;
            cwrite[k] = q == 0 && mn != ZYDIS_MNEMONIC_CMP && mn != ZYDIS_MNEMONIC_TEST;
            break;
        }
        /* what it writes: op[0] (a constant step keeps the register known) */
        if (d->kind == BT_OPK_REG && d->rclass == BT_RC_GPR && mn != ZYDIS_MNEMONIC_CMP &&
            mn != ZYDIS_MNEMONIC_TEST) {
            unsigned r = d->reg & 15;
            const struct bt_operand *s1 = &i->op[1];
            bool full = d->size == 8;
            if (full && (mn == ZYDIS_MNEMONIC_ADD || mn == ZYDIS_MNEMONIC_SUB) && i->nops >= 2 &&
                s1->kind == BT_OPK_IMM)
                delta[r] += mn == ZYDIS_MNEMONIC_ADD ? s1->disp : -s1->disp;
            else if (full && (mn == ZYDIS_MNEMONIC_INC || mn == ZYDIS_MNEMONIC_DEC))
                delta[r] += mn == ZYDIS_MNEMONIC_INC ? 1 : -1;
            else if (full && mn == ZYDIS_MNEMONIC_LEA && i->nops >= 2 && s1->kind == BT_OPK_AGEN &&
                     s1->base == d->reg && s1->index == BT_NOREG && i->addrsize == 64)
                delta[r] += s1->disp;
            else
                known[r] = false;
        }
    }
    /* a group per base with two members or more, within GRP_SPAN bytes, the busiest first */
    for (unsigned k = 0; k < m; k++)
        if (cbase[k] >= 0) count[cbase[k]]++; /* GPRs 0-15, BT_REG_RIP 16 */
    gp->ng = 0;
    while (gp->ng < GRP_MAX) {
        unsigned best = 17;
        for (unsigned b = 0; b < 17; b++)
            if (count[b] >= 2 && (best == 17 || count[b] > count[best])) best = b;
        if (best == 17) break;
        count[best] = 0;
        uint8_t base = (uint8_t)best;
        int64_t lo = INT64_MAX, hi = INT64_MIN;
        bool write = false;
        for (unsigned k = 0; k < m; k++)
            if (cbase[k] == (int8_t)base) {
                lo = MIN(lo, caddr[k]);
                hi = MAX(hi, caddr[k] + gp->msize[k]);
                write |= cwrite[k];
            }
        if (hi - lo > GRP_SPAN) continue;
        unsigned g = gp->ng++;
        gp->g[g].base = base;
        gp->g[g].lo = lo;
        gp->g[g].hi = hi;
        gp->g[g].write = write;
        for (unsigned k = 0; k < m; k++)
            if (cbase[k] == (int8_t)base) {
                gp->member[k] = (int8_t)g;
                gp->maddr[k] = caddr[k];
            }
    }
    unsigned members = 0;
    for (unsigned k = 0; k < m; k++)
        members += gp->member[k] >= 0;
    return gp->ng > 0 && members >= gp->ng + 2; /* two probes saved at least */
}

/* The group instruction e->grp_k's operand `o` belongs to, if it is the access the plan saw and
 * the group was probed for it (a write needs a write group); else -1. */
static int grp_member(const struct emit *e, const struct bt_operand *o, bool write)
{
    const struct grp_plan *gp = e->grp;
    if (!gp || e->grp_k >= JIT_BLOCK_MAX) return -1;
    int g = gp->member[e->grp_k];
    if (g < 0 || o->base != gp->g[g].base || o->index != BT_NOREG ||
        o->disp != gp->mdisp[e->grp_k] || o->size > gp->msize[e->grp_k] || o->seg == SEG_FS ||
        o->seg == SEG_GS || (write && !gp->g[g].write))
        return -1;
    return g;
}

static void mem_lin(struct emit *e, const struct bt_operand *o, int64_t off);
static void probe_call(struct emit *e, const struct bt_jit *j, unsigned size, bool write,
                       size_t *slow, int *nslow);
/* the operand of `size` bytes a probe (probe_emit) found: [RSI + RDX], or for a group member
 * whose address mem_probe did not compute [RSI + its distance from the group's lowest byte] */
#define PROBED(size) probed(e, (size))
static ZydisEncoderOperand probed(const struct emit *e, unsigned size)
{
    return e->member_at ? M(HRSI, e->member_disp, size) : MX(HRSI, HRDX, 1, 0, size);
}

/* True if the host code emitted from `from` to now leaves RSI as it was at `from` and runs
 * straight through: no branch, call or return (a slow path that rejoins is reached through a
 * branch in this range, and could come back with RSI changed), no instruction that writes RSI,
 * explicitly or not.  Decoded, so it holds whatever emitted the code. */
static bool rsi_kept(const struct emit *e, size_t from)
{
    if (e->fail || from > e->pos) return false;
    ZydisDecoder d;
    ZydisDecoderInit(&d, ZYDIS_MACHINE_MODE_LONG_64, ZYDIS_STACK_WIDTH_64);
    ZydisDecodedInstruction in;
    ZydisDecodedOperand ops[ZYDIS_MAX_OPERAND_COUNT];
    for (size_t pos = from; pos < e->pos; pos += in.length) {
        if (!ZYAN_SUCCESS(ZydisDecoderDecodeFull(&d, e->buf + pos, e->pos - pos, &in, ops)))
            return false;
        if (in.meta.branch_type != ZYDIS_BRANCH_TYPE_NONE ||
            in.meta.category == ZYDIS_CATEGORY_COND_BR ||
            in.meta.category == ZYDIS_CATEGORY_UNCOND_BR ||
            in.meta.category == ZYDIS_CATEGORY_CALL || in.meta.category == ZYDIS_CATEGORY_RET ||
            in.meta.category == ZYDIS_CATEGORY_SYSTEM)
            return false;
        for (unsigned k = 0; k < in.operand_count; k++)
            if (ops[k].type == ZYDIS_OPERAND_TYPE_REGISTER &&
                (ops[k].actions & ZYDIS_OPERAND_ACTION_MASK_WRITE) &&
                ZydisRegisterGetLargestEnclosing(ZYDIS_MACHINE_MODE_LONG_64, ops[k].reg.value) ==
                    HRSI)
                return false;
    }
    return true;
}

/* PROBED(o->size) = memory operand `o` (probed for a read or a write of its size; RDX its
 * linear address, RSI the addend; for a group member RSI its group's host address, RDX unset),
 * or a jump to the slow path (appended to slow[]).  Clobbers RCX and the host flags. */
static void mem_probe(struct emit *e, const struct bt_jit *j, const struct bt_operand *o,
                      int64_t off, bool write, size_t *slow, int *nslow)
{
    int g = grp_member(e, o, write);
    if (g >= 0) { /* RSI = the group's lowest byte on the host; no linear address (RDX) */
        if (e->rsi_grp != g || !rsi_kept(e, e->rsi_at)) E2(e, MOV, R(HRSI), M(HCPU, C_GRPH(g), 8));
        e->rsi_grp = g;
        e->rsi_at = e->pos;
        e->member_at = true;
        e->member_disp = e->grp->maddr[e->grp_k] - e->grp->g[g].lo;
        e->grp_used++;
        return;
    }
    e->member_at = false;
    mem_lin(e, o, off);
    probe_call(e, j, o->size, write, slow, nslow);
}

/* RDX = the linear address of memory operand `o` (64-bit code: the effective address plus the
 * FS/GS base).  Clobbers RSI. */
static void mem_lin(struct emit *e, const struct bt_operand *o, int64_t off)
{
    /* RDX = effective address (+ the FS/GS base): the linear address in 64-bit code */
    if (o->base == BT_REG_RIP) {
        E2(e, LEA, R(HRDX), M(R12, o->disp + off, 8));
    } else {
        /* base and index straight from their host registers when pinned */
        ZydisRegister b = o->base != BT_NOREG ? pinned(o->base, 8) : ZYDIS_REGISTER_NONE;
        ZydisRegister x = o->index != BT_NOREG ? pinned(o->index, 8) : ZYDIS_REGISTER_NONE;
        if (o->base == BT_NOREG) {
            E2(e, XOR, R(HEDX), R(HEDX));
            b = HRDX;
        } else if (b == ZYDIS_REGISTER_NONE) {
            E2(e, MOV, R(HRDX), G(o->base, 8));
            b = HRDX;
        }
        if (o->index != BT_NOREG) {
            if (x == ZYDIS_REGISTER_NONE) {
                E2(e, MOV, R(HRSI), G(o->index, 8));
                x = HRSI;
            }
            E2(e, LEA, R(HRDX), MX(b, x, o->scale, o->disp, 8));
        } else if (o->disp || b != HRDX) {
            E2(e, LEA, R(HRDX), M(b, o->disp, 8));
        }
    }
    if (o->seg == SEG_FS || o->seg == SEG_GS) E2(e, ADD, R(HRDX), M(HCPU, C_SEGBASE(o->seg), 8));
}

/* RSI = the host address of guest RAM minus the guest linear address in RDX (the TLB entry's
 * addend), so that PROBED(size), [RSI + RDX], is the operand of `size` bytes at RDX; or a jump to
 * the slow path (the instruction's handler, which fills the TLB, faults or does MMIO precisely).
 * Clobbers RCX and the host flags; RDX must be kept until the last PROBED access.  The fast path is
 * exactly bt_read's / bt_write's, in one compare: the entry's ftag for this privilege and kind
 * (struct bt_tlb_entry) is the page | 0xfff only when the page is mapped to RAM with the permission
 * (a write bit only once the PTE is dirty), and the compared value is the last byte's address |
 * 0xfff, so a page crossing or a non-canonical address (the TLB holds only canonical pages) misses
 * too.  A write also needs what ram_written() would otherwise do to be nothing: dirty logging off
 * and the guest-physical page out of the code-watch bitmap, which the write tag already says (mmu.c
 * sets it only then, and clears it in every vCPU's TLB when a page becomes watched or logging
 * starts: tlb_set_ftags, bt_watch_code_page, bt_mmu_dirty_started). */
static void probe_emit(struct emit *e, unsigned size, bool write, bool user, bool bmi2,
                       size_t *slow, int *nslow)
{
    tlb_offset(e, bmi2, HRDX);
    if (size > 1)
        E2(e, LEA, R(HRSI), M(HRDX, size - 1, 8));
    else
        E2(e, MOV, R(HRSI), R(HRDX));
    E2(e, OR, R(HRSI), I(0xfff));
    /* the fast tag for the block's privilege (translations are made per CPL class) */
    E2(e, CMP, R(HRSI), MX(HCPU, HRCX, 1, C_TLB + T_FTAG + 8 * (2 * user + write), 8));
    slow[(*nslow)++] = jrel(e, ZYDIS_MNEMONIC_JNZ);
    E2(e, MOV, R(HRSI), MX(HCPU, HRCX, 1, C_TLB + T_ADDEND, 8));
}

static unsigned size_index(unsigned size)
{
    return size == 1 ? 0 : size == 2 ? 1 : size == 4 ? 2 : size == 8 ? 3 : 4;
}

/* Encodes probe_emit's sequences once (bt_jit_init's trampoline time) */
static void probe_templates(struct bt_jit *j)
{
    for (int u = 0; u < 2; u++) {
        for (int wr = 0; wr < 2; wr++) {
            for (unsigned k = 0; k < 5; k++) {
                struct emit t = {.buf = j->tpl[u][wr][k], .cap = sizeof(j->tpl[u][wr][k])};
                size_t slow[8];
                int ns = 0;
                probe_emit(&t, 1u << k, wr, u, j->bmi2, slow, &ns);
                j->tpl_len[u][wr][k] = 0; /* 0: encode at each use */
                if (t.fail || ns > 4 || t.pos > 255) continue;
                for (int n = 0; n < ns; n++)
                    j->tpl_slow[u][wr][k][n] = (uint8_t)slow[n];
                j->tpl_nslow[u][wr][k] = (uint8_t)ns;
                j->tpl_len[u][wr][k] = (uint8_t)t.pos;
            }
        }
    }
}

/* PROBED(size) = the access of `size` bytes at RDX (probe_emit's code) */
static void probe_call(struct emit *e, const struct bt_jit *j, unsigned size, bool write,
                       size_t *slow, int *nslow)
{
    unsigned k = size_index(size), u = j->user;
    size_t len = j->tpl_len[u][write][k];
    if (!len) {
        probe_emit(e, size, write, u, j->bmi2, slow, nslow);
        return;
    }
    size_t at = e->pos;
    if (!emit_copy(e, j->tpl[u][write][k], len)) return;
    for (unsigned n = 0; n < j->tpl_nslow[u][write][k]; n++)
        slow[(*nslow)++] = at + j->tpl_slow[u][write][k][n];
}

/* host register `which` = the probed operand of `size` bytes, zero-extended */
static void load_mem(struct emit *e, int which, unsigned size)
{
    if (size == 1 || size == 2)
        E2(e, MOVZX, R(hreg(which, 4)), PROBED(size));
    else
        E2(e, MOV, R(hreg(which, size)), PROBED(size));
}

static bool imm_ok(const struct bt_operand *s, unsigned size)
{
    return s->kind == BT_OPK_IMM && (size < 8 || fits32(s->disp));
}

/* The stack slot a 64-bit PUSH (disp -8) or POP (disp 0) touches, as a memory operand. */
static struct bt_operand stack_slot(int64_t disp)
{
    return (struct bt_operand){.kind = BT_OPK_MEM,
                               .size = 8,
                               .seg = SEG_SS,
                               .base = RSP,
                               .index = BT_NOREG,
                               .scale = 1,
                               .disp = disp};
}

/* c->s.rflags takes the host's RFLAGS for `mask` (after the native operation) */
static void take_flags(struct emit *e, uint32_t mask)
{
    if ((mask & BT_ARITH_FLAGS) == BT_ARITH_FLAGS) {
        capture_flags(e, FLAGS_REG);
        return;
    }
    capture_flags(e, ZYDIS_REGISTER_RDX);
    merge_flags(e, mask);
}

#define C_CR0    ((int64_t)offsetof(struct bt_cpu, s.cr0))
#define C_CR4    ((int64_t)offsetof(struct bt_cpu, s.cr4))
#define C_XMM(n) ((int64_t)offsetof(struct bt_cpu, s.fx.xmm) + 16 * (int64_t)(n))

static bool is_xmm(const struct bt_operand *o)
{
    return o->kind == BT_OPK_REG && o->rclass == BT_RC_XMM && o->zreg >= ZYDIS_REGISTER_XMM0 &&
           o->zreg <= ZYDIS_REGISTER_XMM15;
}

/* SSE checks of sse.c's check_for: CR0.EM and CR0.TS clear, CR4.OSFXSR set (else the handler
 * raises #UD or #NM) */
static void sse_usable(struct emit *e, size_t *slow, int *nslow)
{
    if (e->sse_ok) return;
    e->sse_ok = true;
    E2(e, TEST, M(HCPU, C_CR0, 4), I(X86_CR0_EM | X86_CR0_TS));
    slow[(*nslow)++] = jrel(e, ZYDIS_MNEMONIC_JNZ);
    E2(e, TEST, M(HCPU, C_CR4, 4), I(X86_CR4_OSFXSR));
    slow[(*nslow)++] = jrel(e, ZYDIS_MNEMONIC_JZ);
}

/* SSE2 integer operations on XMM registers that the C string functions use (sse.c's binop with
 * a host operation and no MXCSR): XMM op= XMM/m128 (a 16-byte aligned memory operand, else the
 * handler's #GP), and PMOVMSKB r, XMM. */
static bool native_sse_int(struct emit *e, const struct bt_jit *j, const struct bt_insn *i,
                           int64_t off, size_t *slow, int *nslow)
{
    if (i->nops < 2) return false;
    const struct bt_operand *d = &i->op[0], *s = &i->op[1];
    if (i->mnemonic == ZYDIS_MNEMONIC_PMOVMSKB) {
        if (!is_gpr(d) || (d->size != 4 && d->size != 8) || !is_xmm(s)) return false;
        sse_usable(e, slow, nslow);
        E2(e, MOVDQU, R(ZYDIS_REGISTER_XMM0), M(HCPU, C_XMM(s->zreg - ZYDIS_REGISTER_XMM0), 16));
        E2(e, PMOVMSKB, R(ZYDIS_REGISTER_EAX), R(ZYDIS_REGISTER_XMM0));
        store_gpr(e, 0, d->reg, 4); /* zero-extended */
        return true;
    }
    switch (i->mnemonic) {
    case ZYDIS_MNEMONIC_PCMPEQB:
    case ZYDIS_MNEMONIC_PCMPEQW:
    case ZYDIS_MNEMONIC_PCMPEQD:
    case ZYDIS_MNEMONIC_PXOR:
    case ZYDIS_MNEMONIC_POR:
    case ZYDIS_MNEMONIC_PAND:
    case ZYDIS_MNEMONIC_PANDN:
    case ZYDIS_MNEMONIC_PADDB:
    case ZYDIS_MNEMONIC_PADDW:
    case ZYDIS_MNEMONIC_PADDD:
    case ZYDIS_MNEMONIC_PADDQ:
    case ZYDIS_MNEMONIC_PSUBB:
    case ZYDIS_MNEMONIC_PSUBW:
    case ZYDIS_MNEMONIC_PSUBD:
    case ZYDIS_MNEMONIC_PSUBQ:
    case ZYDIS_MNEMONIC_PMINUB:
    case ZYDIS_MNEMONIC_PMAXUB: break;
    default: return false;
    }
    if (!is_xmm(d) || !(is_xmm(s) || (s->kind == BT_OPK_MEM && inline_mem_ok16(i, s, off))))
        return false;
    sse_usable(e, slow, nslow);
    if (is_xmm(s)) {
        E2(e, MOVDQU, R(ZYDIS_REGISTER_XMM1), M(HCPU, C_XMM(s->zreg - ZYDIS_REGISTER_XMM0), 16));
    } else {
        mem_lin(e, s, off);
        E2(e, TEST, R(ZYDIS_REGISTER_DL), I(15));
        slow[(*nslow)++] = jrel(e, ZYDIS_MNEMONIC_JNZ);
        probe_call(e, j, 16, false, slow, nslow);
        E2(e, MOVDQU, R(ZYDIS_REGISTER_XMM1), PROBED(16));
    }
    E2(e, MOVDQU, R(ZYDIS_REGISTER_XMM0), M(HCPU, C_XMM(d->zreg - ZYDIS_REGISTER_XMM0), 16));
    enc(e, (ZydisMnemonic)i->mnemonic, 2,
        (ZydisEncoderOperand[]){R(ZYDIS_REGISTER_XMM0), R(ZYDIS_REGISTER_XMM1)});
    E2(e, MOVDQU, M(HCPU, C_XMM(d->zreg - ZYDIS_REGISTER_XMM0), 16), R(ZYDIS_REGISTER_XMM0));
    return true;
}

/* Full 16-byte SSE moves (MOVAPS/MOVAPD/MOVDQA, MOVUPS/MOVUPD/MOVDQU): XMM <- XMM/m128 and
 * m128 <- XMM, as sse.c's mov_full: SSE usable (CR0.EM and CR0.TS clear, CR4.OSFXSR set; else
 * the handler raises #UD/#NM), the aligned forms' 16-byte alignment (else the handler's #GP),
 * then the access through the probe. */
static bool native_sse_move(struct emit *e, const struct bt_jit *j, const struct bt_insn *i,
                            int64_t off, size_t *slow, int *nslow)
{
    bool aligned;
    switch (i->mnemonic) {
    case ZYDIS_MNEMONIC_MOVAPS:
    case ZYDIS_MNEMONIC_MOVAPD:
    case ZYDIS_MNEMONIC_MOVDQA: aligned = true; break;
    case ZYDIS_MNEMONIC_MOVUPS:
    case ZYDIS_MNEMONIC_MOVUPD:
    case ZYDIS_MNEMONIC_MOVDQU: aligned = false; break;
    default: return native_sse_int(e, j, i, off, slow, nslow);
    }
    if (i->nops < 2) return false;
    const struct bt_operand *d = &i->op[0], *s = &i->op[1];
    bool load =
        is_xmm(d) &&
        (is_xmm(s) || (s->kind == BT_OPK_MEM && s->size == 16 && inline_mem_ok16(i, s, off)));
    bool store = is_xmm(s) && d->kind == BT_OPK_MEM && d->size == 16 && inline_mem_ok16(i, d, off);
    if (!load && !store) return false;
    sse_usable(e, slow, nslow);
    const struct bt_operand *m = load ? s : d;
    if (m->kind == BT_OPK_MEM) {
        mem_probe(e, j, m, off, store, slow, nslow);
        if (aligned) {
            /* RDX, its linear address; a member's host address instead (the TLB addend is a
             * multiple of the page size: the low 12 bits are the same) */
            if (e->member_at) E2(e, LEA, R(HRDX), M(HRSI, e->member_disp, 8));
            E2(e, TEST, R(ZYDIS_REGISTER_DL), I(15));
            slow[(*nslow)++] = jrel(e, ZYDIS_MNEMONIC_JNZ);
        }
    }
    if (load) {
        if (is_xmm(s))
            E2(e, MOVDQU, R(ZYDIS_REGISTER_XMM0),
               M(HCPU, C_XMM(s->zreg - ZYDIS_REGISTER_XMM0), 16));
        else
            E2(e, MOVDQU, R(ZYDIS_REGISTER_XMM0), PROBED(16));
        E2(e, MOVDQU, M(HCPU, C_XMM(d->zreg - ZYDIS_REGISTER_XMM0), 16), R(ZYDIS_REGISTER_XMM0));
    } else {
        E2(e, MOVDQU, R(ZYDIS_REGISTER_XMM0), M(HCPU, C_XMM(s->zreg - ZYDIS_REGISTER_XMM0), 16));
        E2(e, MOVDQU, PROBED(16), R(ZYDIS_REGISTER_XMM0));
    }
    return true;
}

/* Native forms with one memory operand (64-bit code, flat addressing): MOV r,m / m,r / m,imm;
 * ADD/SUB/AND/OR/XOR/ADC/SBB/CMP/TEST in both directions; INC/DEC/NEG/NOT m; SHL/SHR/SAR/ROL/
 * ROR m; MOVZX/MOVSX/MOVSXD r,m; IMUL r,m(,imm); PUSH r/imm, POP r.  The probe comes first and
 * nothing guest-visible changes before it succeeded, so the slow path may run the handler for
 * the whole instruction.  Returns false (nothing emitted) if `i` is not one of them. */
static bool native_mem(struct emit *e, const struct bt_jit *j, const struct bt_insn *i, int64_t off,
                       bool b32, unsigned stack_bits, size_t *slow, int *nslow)
{
    if (b32 || (i->pfx & BT_PFX_LOCK) || i->nops < 1) return false;
    if (native_sse_move(e, j, i, off, slow, nslow)) return true;
    unsigned size = i->opsize / 8;
    if (size != 1 && size != 2 && size != 4 && size != 8) return false;
    const struct bt_operand *d = &i->op[0], *s = &i->op[1];
    ZydisMnemonic m = (ZydisMnemonic)i->mnemonic;
    bool two = i->nops >= 2;
#define MEMOK(o) inline_mem_ok(i, (o), off, b32)
    switch (m) {
    case ZYDIS_MNEMONIC_MOV:
        if (!two) return false;
        if (is_gpr(d) && d->size == size && s->size == size && MEMOK(s)) {
            mem_probe(e, j, s, off, false, slow, nslow);
            if (pinned(d->reg, size) != ZYDIS_REGISTER_NONE) { /* the x86 write rules alike */
                E2(e, MOV, G(d->reg, size), PROBED(size));
                return true;
            }
            load_mem(e, 0, size);
            store_gpr(e, 0, d->reg, size);
            return true;
        }
        if (MEMOK(d) && d->size == size && ((is_gpr(s) && s->size == size) || imm_ok(s, size))) {
            mem_probe(e, j, d, off, true, slow, nslow);
            if (is_gpr(s) && pinned(s->reg, size) != ZYDIS_REGISTER_NONE) {
                E2(e, MOV, PROBED(size), G(s->reg, size));
            } else if (is_gpr(s)) {
                load_gpr(e, 0, s->reg, size);
                E2(e, MOV, PROBED(size), R(hreg(0, size)));
            } else {
                E2(e, MOV, PROBED(size), I(imm_for(s->disp, size)));
            }
            return true;
        }
        return false;
    case ZYDIS_MNEMONIC_ADD:
    case ZYDIS_MNEMONIC_SUB:
    case ZYDIS_MNEMONIC_AND:
    case ZYDIS_MNEMONIC_OR:
    case ZYDIS_MNEMONIC_XOR:
    case ZYDIS_MNEMONIC_ADC:
    case ZYDIS_MNEMONIC_SBB:
    case ZYDIS_MNEMONIC_CMP:
    case ZYDIS_MNEMONIC_TEST: {
        if (!two) return false;
        bool ro = m == ZYDIS_MNEMONIC_CMP || m == ZYDIS_MNEMONIC_TEST;
        bool cf_in = m == ZYDIS_MNEMONIC_ADC || m == ZYDIS_MNEMONIC_SBB;
        bool dead = e->mflags_dead && !cf_in; /* its flags unseen: not stored */
        if (is_gpr(d) && d->size == size && s->size == size && MEMOK(s)) {
            /* register destination, memory source */
            mem_probe(e, j, s, off, false, slow, nslow);
            if (cf_in) load_guest_cf(e);
            if (pinned(d->reg, size) != ZYDIS_REGISTER_NONE) { /* on the host register */
                if (m == ZYDIS_MNEMONIC_TEST)
                    E2(e, TEST, PROBED(size), G(d->reg, size));
                else
                    enc(e, m, 2, (ZydisEncoderOperand[]){G(d->reg, size), PROBED(size)});
                if (!dead) take_flags(e, BT_ARITH_FLAGS);
                e->hflags = !dead;
                return true;
            }
            load_gpr(e, 0, d->reg, size);
            if (m == ZYDIS_MNEMONIC_TEST) /* commutative; the host encodes TEST m, r */
                E2(e, TEST, PROBED(size), R(hreg(0, size)));
            else
                enc(e, m, 2, (ZydisEncoderOperand[]){R(hreg(0, size)), PROBED(size)});
            if (!dead) capture_flags(e, ZYDIS_REGISTER_RDX);
            if (!ro) store_gpr(e, 0, d->reg, size);
            if (!dead) merge_flags(e, BT_ARITH_FLAGS);
            e->hflags = !dead;
            return true;
        }
        if (MEMOK(d) && d->size == size && ((is_gpr(s) && s->size == size) || imm_ok(s, size))) {
            /* memory destination (read-modify-write, or read only for CMP/TEST) */
            mem_probe(e, j, d, off, !ro, slow, nslow);
            if (cf_in) load_guest_cf(e);
            if (is_gpr(s) && pinned(s->reg, size) != ZYDIS_REGISTER_NONE) {
                enc(e, m, 2, (ZydisEncoderOperand[]){PROBED(size), G(s->reg, size)});
            } else if (is_gpr(s)) {
                load_gpr(e, 1, s->reg, size);
                enc(e, m, 2, (ZydisEncoderOperand[]){PROBED(size), R(hreg(1, size))});
            } else {
                enc(e, m, 2, (ZydisEncoderOperand[]){PROBED(size), I(imm_for(s->disp, size))});
            }
            if (!dead) take_flags(e, BT_ARITH_FLAGS);
            e->hflags = !dead;
            return true;
        }
        return false;
    }
    case ZYDIS_MNEMONIC_INC:
    case ZYDIS_MNEMONIC_DEC:
    case ZYDIS_MNEMONIC_NEG:
    case ZYDIS_MNEMONIC_NOT:
        if (!MEMOK(d) || d->size != size) return false;
        mem_probe(e, j, d, off, true, slow, nslow);
        if (m == ZYDIS_MNEMONIC_INC || m == ZYDIS_MNEMONIC_DEC) load_guest_cf(e); /* kept */
        enc(e, m, 1, (ZydisEncoderOperand[]){PROBED(size)});
        if (m == ZYDIS_MNEMONIC_NOT) return true; /* no flags */
        take_flags(e, BT_ARITH_FLAGS);
        e->hflags = true;
        return true;
    case ZYDIS_MNEMONIC_SHL:
    case ZYDIS_MNEMONIC_SHR:
    case ZYDIS_MNEMONIC_SAR:
    case ZYDIS_MNEMONIC_ROL:
    case ZYDIS_MNEMONIC_ROR: {
        /* the host's CL form on the memory operand with the guest's flags loaded, as shift.c
         * runs it (a masked count of 0 leaves the flags and the value alone) */
        if (!two || !MEMOK(d) || d->size != size) return false;
        bool cl = s->kind == BT_OPK_REG && s->rclass == BT_RC_GPR && s->reg == RCX && s->size == 1;
        if (!cl && s->kind != BT_OPK_IMM) return false;
        mem_probe(e, j, d, off, true, slow, nslow);
        bool shift = m == ZYDIS_MNEMONIC_SHL || m == ZYDIS_MNEMONIC_SHR || m == ZYDIS_MNEMONIC_SAR;
        bool pure = shift && !cl && ((unsigned)s->disp & (size == 8 ? 63 : 31)) && j->pure_flags;
        if (!pure) load_guest_flags(e); /* else a non-zero count ignores them (pure_flags) */
        if (cl)
            E2(e, MOVZX, R(HECX), G(RCX, 1));
        else
            E2(e, MOV, R(HECX), I((uint8_t)s->disp));
        if (pure) E2(e, TEST, R(HECX), R(HECX)); /* fresh flags to merge, as native_simple */
        enc(e, m, 2, (ZydisEncoderOperand[]){PROBED(size), R(ZYDIS_REGISTER_CL)});
        take_flags(e, BT_ARITH_FLAGS);
        return true;
    }
    case ZYDIS_MNEMONIC_MOVZX:
    case ZYDIS_MNEMONIC_MOVSX:
    case ZYDIS_MNEMONIC_MOVSXD: {
        if (!two || !is_gpr(d) || !MEMOK(s)) return false;
        unsigned ds = d->size, ss = s->size;
        if (ds != 2 && ds != 4 && ds != 8) return false;
        if (m == ZYDIS_MNEMONIC_MOVSXD ? (ds != 8 || ss != 4) : (ss != 1 && ss != 2) || ss >= ds)
            return false;
        mem_probe(e, j, s, off, false, slow, nslow);
        if (pinned(d->reg, ds) != ZYDIS_REGISTER_NONE) { /* into the host register, same rules */
            enc(e, m, 2, (ZydisEncoderOperand[]){G(d->reg, ds), PROBED(ss)});
            return true;
        }
        if (m == ZYDIS_MNEMONIC_MOVZX)
            E2(e, MOVZX, R(HEAX), PROBED(ss));
        else if (m == ZYDIS_MNEMONIC_MOVSXD)
            E2(e, MOVSXD, R(HRAX), PROBED(4));
        else
            E2(e, MOVSX, R(ds == 8 ? HRAX : ds == 4 ? HEAX : ZYDIS_REGISTER_AX), PROBED(ss));
        store_gpr(e, 0, d->reg, ds);
        return true;
    }
    case ZYDIS_MNEMONIC_IMUL: {
        /* IMUL r, m and IMUL r, m, imm (16/32/64), as the register forms in native_simple */
        if (!two || size == 1 || !is_gpr(d) || d->size != size) return false;
        const struct bt_operand *a = &i->op[1], *b = i->nops >= 3 ? &i->op[2] : &i->op[0];
        if (!MEMOK(a) || a->size != size) return false;
        if (!(is_gpr(b) && b->size == size) && b->kind != BT_OPK_IMM) return false;
        if (b->kind == BT_OPK_IMM && size == 8 && !fits32(b->disp)) return false;
        mem_probe(e, j, a, off, false, slow, nslow);
        if (!j->pure_imul) load_guest_flags(e);
        load_mem(e, 0, size);
        imul_rest(e, d, b, size, false);
        return true;
    }
    case ZYDIS_MNEMONIC_PUSH: {
        if (stack_bits != 64 || size != 8 || !((is_gpr(d) && d->size == 8) || imm_ok(d, 8)))
            return false;
        struct bt_operand slot = stack_slot(-8);
        mem_probe(e, j, &slot, off, true, slow, nslow);
        if (is_gpr(d)) {
            load_gpr(e, 0, d->reg, 8); /* PUSH RSP pushes the old value */
            E2(e, MOV, PROBED(8), R(HRAX));
        } else {
            E2(e, MOV, PROBED(8), I(d->disp));
        }
        E2(e, SUB, G(RSP, 8), I(8));
        return true;
    }
    case ZYDIS_MNEMONIC_POP: {
        if (stack_bits != 64 || size != 8 || !is_gpr(d) || d->size != 8) return false;
        struct bt_operand slot = stack_slot(0);
        mem_probe(e, j, &slot, off, false, slow, nslow);
        E2(e, MOV, R(HRAX), PROBED(8));
        E2(e, ADD, G(RSP, 8), I(8));
        store_gpr(e, 0, d->reg, 8); /* POP RSP: the popped value wins */
        return true;
    }
    default: return false;
    }
#undef MEMOK
}

/* The common cases of the --cfi hooks inline (cfi.h lays the shadow stacks out): a CALL that
 * drops no dead record and a RET whose return address matches the newest record; anything else
 * (no shadow stack yet, another user address space, dead records, a mismatch or an empty
 * stack) jumps to `slow`, where the C hook runs.  The stack slot is the
 * guest RSP (R13), the return address or target is in RAX (kept).  Clobbers RCX, RDX, RSI. */
#define C_CFI ((int64_t)offsetof(struct bt_cpu, cfi))
#define K_ST(u)                                                                                    \
    ((int64_t)offsetof(struct bt_cfi_cpu, st) + (int64_t)(u) * (int64_t)sizeof(struct bt_cfi_stack))
#define K_CALLS     ((int64_t)offsetof(struct bt_cfi_cpu, calls))
#define K_CHECKED   ((int64_t)offsetof(struct bt_cfi_cpu, checked))
#define S_SPACE_CR3 ((int64_t)offsetof(struct bt_cfi_stack, space_cr3))
#define S_TOP       ((int64_t)offsetof(struct bt_cfi_stack, top))
#define S_F         ((int64_t)offsetof(struct bt_cfi_stack, f))
_Static_assert(sizeof(struct bt_cfi_frame) == 16 && BT_CFI_DEPTH == 64, "the inline ring index");

static void cfi_inline(struct emit *e, bool user, bool call, size_t *slow, int *nslow)
{
    ZydisRegister slot = pinned(RSP, 8);
    const int64_t st = K_ST(user ? 1 : 0);
    const int64_t ring = (int64_t)BT_CFI_DEPTH * 16 - 16; /* masks a byte offset of a record */
    E2(e, MOV, R(HRSI), M(HCPU, C_CFI, 8));
    E2(e, TEST, R(HRSI), R(HRSI));
    slow[(*nslow)++] = jrel(e, ZYDIS_MNEMONIC_JZ);
    if (user) { /* the user stack belongs to this address space (else the hook resets it) */
        E2(e, MOV, R(HRDX), M(HCPU, C_CR3, 8));
        E2(e, CMP, R(HRDX), M(HRSI, st + S_SPACE_CR3, 8));
        slow[(*nslow)++] = jrel(e, ZYDIS_MNEMONIC_JNZ);
    }
    E2(e, MOV, R(HEDX), M(HRSI, st + S_TOP, 4)); /* EDX = the next push's offset */
    E2(e, LEA, R(HRCX), M(HRDX, -16, 8));
    E2(e, AND, R(HECX), I(ring)); /* ECX = the newest record's (BT_CFI_EMPTY: none) */
    E2(e, CMP, MX(HRSI, HRCX, 1, st + S_F, 8), R(slot));
    if (call) {
        /* a dead record to drop first (at or below the slot; an empty one is above any) */
        slow[(*nslow)++] = jrel(e, ZYDIS_MNEMONIC_JBE);
        E2(e, MOV, MX(HRSI, HRDX, 1, st + S_F, 8), R(slot));
        E2(e, MOV, MX(HRSI, HRDX, 1, st + S_F + 8, 8), R(HRAX));
        E2(e, ADD, R(HEDX), I(16));
        E2(e, AND, R(HEDX), I(ring));
        E2(e, MOV, M(HRSI, st + S_TOP, 4), R(HEDX));
        E1(e, INC, M(HRSI, K_CALLS, 8));
    } else {
        slow[(*nslow)++] = jrel(e, ZYDIS_MNEMONIC_JNZ); /* no record for this slot (or none) */
        E2(e, CMP, MX(HRSI, HRCX, 1, st + S_F + 8, 8), R(HRAX));
        slow[(*nslow)++] = jrel(e, ZYDIS_MNEMONIC_JNZ); /* a mismatch: the hook decides */
        _Static_assert(BT_CFI_EMPTY == ~0ull, "the pop stores it as a sign-extended -1");
        E2(e, MOV, MX(HRSI, HRCX, 1, st + S_F, 8), I(-1)); /* popped */
        E2(e, MOV, M(HRSI, st + S_TOP, 4), R(HECX));
        E1(e, INC, M(HRSI, K_CHECKED, 8));
    }
}

/* hook(c, guest RSP, RAX) in C: bt_cfi_call or bt_cfi_ret, which touch no guest register or
 * flag, so only the caller-saved pinned registers are kept.  The result is in AL.  Shared code
 * (cfi_hook_stub), called: the inline fast path is all a CALL or RET site carries. */
static void cfi_c_hook(struct emit *e, const struct bt_jit *j, bool ret)
{
    jto(e, ZYDIS_MNEMONIC_CALL, j->cfi_hook_off[ret]);
}

/* Whether the host's SHL/SHR/SAR (CL form, every operand size, non-zero counts), or with `imul`
 * its IMUL r, r, leave the same six arithmetic flags whatever flags come in: run on sample
 * operands with all six clear and all six set.  Shifts: true on the Intel and AMD hosts measured
 * (the undefined AF and OF are functions of the operands).  IMUL: true on Intel (SF/ZF/AF/PF,
 * undefined, from the result), false on an AMD EPYC (it keeps the incoming ones).  False means
 * load the guest's first. */
/* Operands and incoming flags (all six clear, all set) the host's flag behaviour is probed with
 * (host_flags_pure, host_shift_imm_same) */
static const uint64_t flag_probe_vals[] = {0,
                                           1,
                                           3,
                                           0x10,
                                           0x80,
                                           0x8000,
                                           0x80000000ull,
                                           0x7fffffffffffffffull,
                                           0x8000000000000000ull,
                                           0x123456789abcdef0ull,
                                           ~0ull};
static const uint64_t flag_probe_fin[2] = {0x2, 0x2 | BT_ARITH_FLAGS};

/* Whether the host's SHL/SHR/SAR by an immediate give the flags and result its CL forms give
 * for the same non-zero count (so a shift by an immediate can run as itself where the guest's
 * flags need not be loaded first: host_flags_pure).  Checked at a few counts per size, on the
 * values host_flags_pure uses, with all six flags clear and all set. */
static bool host_shift_imm_same(void)
{
    const uint64_t *vals = flag_probe_vals, *fin = flag_probe_fin;
    for (size_t v = 0; v < ARRAY_SIZE(flag_probe_vals); v++) {
        for (int k = 0; k < 2; k++) {
            uint64_t out[2], res[2];
/* the flags and result of `imm` and of `cl` (count `n` in CL) on vals[v] with fin[k] in */
#define SAME(imm, cl, n)                                                                           \
    for (int f = 0; f < 2; f++) {                                                                  \
        uint64_t x = vals[v];                                                                      \
        if (f == 0)                                                                                \
            __asm__ volatile("lea -128(%%rsp), %%rsp; push %2; popfq; " imm "; pushfq; pop %1; "   \
                             "lea 128(%%rsp), %%rsp"                                               \
                             : "+r"(x), "=r"(out[f])                                               \
                             : "r"(fin[k])                                                         \
                             : "cc");                                                              \
        else                                                                                       \
            __asm__ volatile("lea -128(%%rsp), %%rsp; push %2; popfq; " cl "; pushfq; pop %1; "    \
                             "lea 128(%%rsp), %%rsp"                                               \
                             : "+r"(x), "=r"(out[f])                                               \
                             : "r"(fin[k]), "c"(n)                                                 \
                             : "cc");                                                              \
        res[f] = x;                                                                                \
    }                                                                                              \
    if (res[0] != res[1] || ((out[0] ^ out[1]) & BT_ARITH_FLAGS)) return false
            SAME("shlq $1, %q0", "shlq %%cl, %q0", 1);
            SAME("shlq $7, %q0", "shlq %%cl, %q0", 7);
            SAME("shrq $33, %q0", "shrq %%cl, %q0", 33);
            SAME("sarq $63, %q0", "sarq %%cl, %q0", 63);
            SAME("shll $1, %k0", "shll %%cl, %k0", 1);
            SAME("shll $5, %k0", "shll %%cl, %k0", 5);
            SAME("shrl $13, %k0", "shrl %%cl, %k0", 13);
            SAME("sarl $31, %k0", "sarl %%cl, %k0", 31);
            SAME("shrw $1, %w0", "shrw %%cl, %w0", 1);
            SAME("sarw $9, %w0", "sarw %%cl, %w0", 9);
            SAME("shlb $1, %b0", "shlb %%cl, %b0", 1);
            SAME("shrb $3, %b0", "shrb %%cl, %b0", 3);
#undef SAME
        }
    }
    return true;
}

static bool host_flags_pure(bool imul)
{
    const uint64_t *vals = flag_probe_vals, *fin = flag_probe_fin;
    for (size_t v = 0; v < ARRAY_SIZE(flag_probe_vals); v++) {
        for (unsigned cnt = 1; cnt < 64; cnt++) {
            uint64_t out[2][9];
            for (int k = 0; k < 2; k++) {
                uint64_t x;
/* out[k][slot] = the flags after `insn` on x = vals[v] with fin[k] in (operand 3: src) */
#define FLAGS_OF(insn, slot, con, src)                                                             \
    x = vals[v];                                                                                   \
    __asm__ volatile("lea -128(%%rsp), %%rsp; push %2; popfq; " insn "; pushfq; pop %1; "          \
                     "lea 128(%%rsp), %%rsp" /* past the red zone */                               \
                     : "+r"(x), "=r"(out[k][slot])                                                 \
                     : "r"(fin[k]), con(src)                                                       \
                     : "cc")
                /* the count as the host masks it for 8/16/32 bits: non-zero (0 keeps the flags) */
                unsigned c32 = cnt & 31 ? cnt : 1;
                const uint64_t y = vals[(v + cnt) % ARRAY_SIZE(flag_probe_vals)];
                FLAGS_OF("shlq %%cl, %q0", 0, "c", cnt);
                FLAGS_OF("shrq %%cl, %q0", 1, "c", cnt);
                FLAGS_OF("sarq %%cl, %q0", 2, "c", cnt);
                FLAGS_OF("shll %%cl, %k0", 3, "c", c32);
                FLAGS_OF("sarw %%cl, %w0", 4, "c", c32);
                FLAGS_OF("shlb %%cl, %b0", 5, "c", c32);
                FLAGS_OF("imulq %q3, %q0", 6, "r", y);
                FLAGS_OF("imull %k3, %k0", 7, "r", y);
                FLAGS_OF("imulw %w3, %w0", 8, "r", y);
#undef FLAGS_OF
            }
            for (int n = imul ? 6 : 0; n < (imul ? 9 : 6); n++)
                if ((out[0][n] ^ out[1][n]) & BT_ARITH_FLAGS) return false;
        }
    }
    return true;
}

/* The body cfi_c_hook calls, once per cache (bt_cfi_call or bt_cfi_ret): entered by a host CALL
 * from a 16-byte aligned stack, so 8 more bytes keep the C call aligned. */
static void cfi_hook_stub(struct emit *e, const void *hook)
{
    save_volatile(e);
    E2(e, SUB, R(ZYDIS_REGISTER_RSP), I(8));
    E2(e, MOV, R(ZYDIS_REGISTER_RDX), R(HRAX));
    E2(e, MOV, R(ZYDIS_REGISTER_RSI), G(RSP, 8));
    E2(e, MOV, R(ZYDIS_REGISTER_RDI), R(HCPU));
    E2(e, MOV, R(HRAX), I((int64_t)(uintptr_t)hook));
    E1(e, CALL, R(HRAX));
    E2(e, ADD, R(ZYDIS_REGISTER_RSP), I(8));
    restore_volatile(e);
    E0(e, RET);
}

/* bt_cfi_call(c, new RSP, return address in RAX), inline when it can be */
static void cfi_call_hook(struct emit *e, const struct bt_jit *j)
{
    size_t cs[8];
    int ncs = 0;
    cfi_inline(e, j->user, true, cs, &ncs);
    size_t done = jrel(e, ZYDIS_MNEMONIC_JMP);
    for (int k = 0; k < ncs; k++)
        patch(e, cs[k], e->pos);
    cfi_c_hook(e, j, false);
    patch(e, done, e->pos);
}

/* A direct CALL or a RET (imm16 too) ending a 64-bit block: the return address pushed or popped
 * inline, then the block left as a JMP would (CALL: a chainable exit when the target is on the
 * same page; RET: the exit path of indirect branches).  Anything the fast path cannot do (TLB
 * miss, a non-canonical target, ...) runs the handler and leaves. */
static bool native_callret(struct emit *e, struct bt_jit *j, const struct bt_insn *i, int64_t off,
                           bool b32, unsigned stack_bits, unsigned cpl, unsigned *pend,
                           unsigned page_off)
{
    if (b32 || stack_bits != 64 || i->opsize != 64) return false;
    /* --cfi watching this privilege level: the native forms call the shadow-stack hooks as the
     * handlers do (the block is keyed by CPL; the policy is set once at start, before any
     * translation). */
    const bool cfi = bt_cfi_active(cpl);
    size_t slow[8];
    int nslow = 0;
    int64_t end = off + i->len;
    if (i->mnemonic == ZYDIS_MNEMONIC_CALL) {
        if (i->nops < 1 || i->op[0].kind != BT_OPK_IMM || !(i->attr_lo & BT_ATTR_RELATIVE))
            return false;
        int64_t target = end + i->op[0].disp;
        if (!fits32(target)) return false;
        rip_at(e, target, false);
        check_canonical_rax(e, slow, &nslow);
        struct bt_operand slot = stack_slot(-8);
        mem_probe(e, j, &slot, off, true, slow, &nslow);
        rip_at(e, end, false);
        E2(e, MOV, PROBED(8), R(HRAX));
        E2(e, SUB, G(RSP, 8), I(8));
        if (cfi) cfi_call_hook(e, j);
        leave_direct(e, j, page_off, target, false, *pend + 1); /* chained, across pages too */
    } else if (i->mnemonic == ZYDIS_MNEMONIC_RET) {
        int64_t extra = 0;
        if (i->nops >= 1) {
            if (i->op[0].kind != BT_OPK_IMM) return false;
            extra = i->op[0].disp & 0xffff;
        }
        struct bt_operand slot = stack_slot(0);
        mem_probe(e, j, &slot, off, false, slow, &nslow);
        E2(e, MOV, R(HRAX), PROBED(8));
        check_canonical_rax(e, slow, &nslow);
        size_t stopped = 0;
        size_t ret_done = 0;
        if (cfi) { /* bt_cfi_ret(c, RSP, target); false: --cfi enforce stops before the RET */
            size_t cs[8];
            int ncs = 0;
            cfi_inline(e, j->user, false, cs, &ncs); /* the matching case, inline */
            ret_done = jrel(e, ZYDIS_MNEMONIC_JMP);
            for (int k = 0; k < ncs; k++)
                patch(e, cs[k], e->pos);
            E2(e, LEA, R(HRCX), M(R12, off, 8));
            E2(e, MOV, M(HCPU, C_INSN_RIP, 8), R(HRCX)); /* for its message */
            E1(e, PUSH, R(HRAX)); /* twice: the host stack stays 16-byte aligned for the call */
            E1(e, PUSH, R(HRAX));
            cfi_c_hook(e, j, true); /* a stop: the exit writes c->s back */
            E1(e, POP, R(HRCX));
            E1(e, POP, R(HRCX));
            E2(e, TEST, R(ZYDIS_REGISTER_AL), R(ZYDIS_REGISTER_AL));
            stopped = jrel(e, ZYDIS_MNEMONIC_JZ);
            E2(e, MOV, R(HRAX), R(HRCX));
            patch(e, ret_done, e->pos);
        }
        E2(e, ADD, G(RSP, 8), I(8 + extra));
        icount_add(e, *pend + 1);
        lookup_exit(e, j, false, true); /* the return target (RAX) through the inline lookup */
        if (cfi) { /* stopped: the RET has not run; s.rip at it, exit_now set */
            patch(e, stopped, e->pos);
            rip_at(e, off, false);
            E2(e, MOV, M(HCPU, C_RIP, 8), R(HRAX));
            icount_add(e, *pend);
            jto(e, ZYDIS_MNEMONIC_JMP, j->exit_off);
        }
    } else {
        return false;
    }
    for (int k = 0; k < nslow; k++)
        patch(e, slow[k], e->pos);
    call_handler(e, i, off, b32, pend);
    jto(e, ZYDIS_MNEMONIC_JMP, j->exit_off);
    *pend = 0;
    return true;
}

/* ---- more native forms: DIV/MUL, BSF/BSR, LOCK CMPXCHG/XADD, XCHG m, indirect JMP/CALL -------
 *
 * Each runs the same host instruction as its handler on the same inputs (the guest's flags
 * loaded where the handler loads them), so results and the flags the SDM leaves undefined are
 * the host's in both.  Whatever the handler would fault on (#DE, a non-canonical target) or
 * treat specially (a split-line LOCK) takes the slow path: the handler runs the whole
 * instruction. */

/* RSI by size */
static ZydisRegister rsi_sz(unsigned size)
{
    return size == 1   ? ZYDIS_REGISTER_SIL
           : size == 2 ? ZYDIS_REGISTER_SI
           : size == 4 ? ZYDIS_REGISTER_ESI
                       : ZYDIS_REGISTER_RSI;
}

/* RSI = the source operand (a GPR, not AH..BH, or an inline memory operand), zero-extended */
static bool load_src_rsi(struct emit *e, const struct bt_jit *j, const struct bt_insn *i,
                         const struct bt_operand *o, int64_t off, size_t *slow, int *nslow)
{
    unsigned size = o->size;
    if (is_gpr(o)) {
        if (size < 4)
            E2(e, MOVZX, R(HESI), G(o->reg, size));
        else
            E2(e, MOV, R(rsi_sz(size)), G(o->reg, size));
        return true;
    }
    if (!inline_mem_ok(i, o, off, false)) return false;
    mem_probe(e, j, o, off, false, slow, nslow);
    if (size < 4)
        E2(e, MOVZX, R(HESI), PROBED(size));
    else
        E2(e, MOV, R(rsi_sz(size)), PROBED(size));
    return true;
}

/* One-operand MUL/IMUL/DIV/IDIV (muldiv.c's oneop).  DIV goes to the handler (#DE) when the
 * divisor is zero or the high half of the dividend is not below it (the quotient would not fit);
 * IDIV when the divisor is 0 or -1 or the dividend is not the sign extension of its low half
 * (then |quotient| <= |dividend| / 2 fits): the common `cqo; idiv` never leaves. */
static bool native_muldiv(struct emit *e, const struct bt_jit *j, const struct bt_insn *i,
                          int64_t off, size_t *slow, int *nslow)
{
    ZydisMnemonic m = (ZydisMnemonic)i->mnemonic;
    if (m != ZYDIS_MNEMONIC_MUL && m != ZYDIS_MNEMONIC_DIV && m != ZYDIS_MNEMONIC_IDIV &&
        !(m == ZYDIS_MNEMONIC_IMUL && i->nops == 1))
        return false;
    if (i->nops < 1) return false;
    const struct bt_operand *o = &i->op[0];
    unsigned size = o->size;
    if (size != 1 && size != 2 && size != 4 && size != 8) return false;
    if (!load_src_rsi(e, j, i, o, off, slow, nslow)) return false;
    ZydisRegister d = rsi_sz(size);
    if (m == ZYDIS_MNEMONIC_DIV || m == ZYDIS_MNEMONIC_IDIV) {
        E2(e, TEST, R(d), R(d));
        slow[(*nslow)++] = jrel(e, ZYDIS_MNEMONIC_JZ);
    }
    if (m == ZYDIS_MNEMONIC_DIV) {
        if (size == 1)
            load_gpr_hi(e, RAX); /* AH */
        else
            E2(e, MOV, R(hreg(1, size)), G(RDX, size));
        E2(e, CMP, R(hreg(1, size)), R(d));
        slow[(*nslow)++] = jrel(e, ZYDIS_MNEMONIC_JNB);
    } else if (m == ZYDIS_MNEMONIC_IDIV) {
        E2(e, CMP, R(d), I(-1));
        slow[(*nslow)++] = jrel(e, ZYDIS_MNEMONIC_JZ);
        if (size == 1) {
            E2(e, MOVSX, R(ZYDIS_REGISTER_CX), G(RAX, 1));
            E2(e, CMP, R(ZYDIS_REGISTER_CX), G(RAX, 2));
        } else {
            E2(e, MOV, R(hreg(1, size)), G(RAX, size));
            E2(e, SAR, R(hreg(1, size)), I(size * 8 - 1));
            E2(e, CMP, R(hreg(1, size)), G(RDX, size));
        }
        slow[(*nslow)++] = jrel(e, ZYDIS_MNEMONIC_JNZ);
    }
    load_guest_flags(e); /* clobbers EAX, ECX */
    E2(e, MOV, R(HRAX), G(RAX, 8));
    E2(e, MOV, R(HRDX), G(RDX, 8));
    enc(e, m, 1, (ZydisEncoderOperand[]){R(d)});
    if (size == 1) {
        E2(e, MOV, G(RAX, 2), R(ZYDIS_REGISTER_AX));
    } else {
        unsigned w = size == 4 ? 8 : size; /* the host zero-extended the 32-bit results */
        E2(e, MOV, G(RAX, w), R(hreg(0, w)));
        E2(e, MOV, G(RDX, w), R(hreg(2, w)));
    }
    take_flags(e, BT_ARITH_FLAGS);
    return true;
}

/* BSF/BSR r, r/m (bitop.c's bitscan): the host instruction on the whole 64-bit destination with
 * the guest's flags loaded, so a zero source leaves what the host leaves. */
static bool native_bitscan(struct emit *e, const struct bt_jit *j, const struct bt_insn *i,
                           int64_t off, size_t *slow, int *nslow)
{
    ZydisMnemonic m = (ZydisMnemonic)i->mnemonic;
    if ((m != ZYDIS_MNEMONIC_BSF && m != ZYDIS_MNEMONIC_BSR) || i->nops < 2) return false;
    const struct bt_operand *d = &i->op[0], *s = &i->op[1];
    unsigned size = d->size;
    if (!is_gpr(d) || (size != 2 && size != 4 && size != 8) || s->size != size) return false;
    if (!load_src_rsi(e, j, i, s, off, slow, nslow)) return false;
    load_guest_flags(e);
    E2(e, MOV, R(HRAX), G(d->reg, 8));
    enc(e, m, 2, (ZydisEncoderOperand[]){R(hreg(0, size)), R(rsi_sz(size))});
    E2(e, MOV, G(d->reg, 8), R(HRAX));
    take_flags(e, BT_ARITH_FLAGS);
    return true;
}

/* CMPXCHG m, r and XADD m, r (LOCK or not) and XCHG m, r (always locked) on the host address
 * after a write probe (atomic.c): the host's locked instruction on the guest page as the handler
 * runs it; an operand that splits a cache line goes to the handler (bt_lock_ptr). */
static bool native_atomic(struct emit *e, const struct bt_jit *j, const struct bt_insn *i,
                          int64_t off, size_t *slow, int *nslow)
{
    ZydisMnemonic m = (ZydisMnemonic)i->mnemonic;
    if (m != ZYDIS_MNEMONIC_CMPXCHG && m != ZYDIS_MNEMONIC_XADD && m != ZYDIS_MNEMONIC_XCHG)
        return false;
    if (i->nops < 2) return false;
    const struct bt_operand *d = &i->op[0], *s = &i->op[1];
    unsigned size = d->size;
    if (!is_gpr(s) || s->size != size || !inline_mem_ok(i, d, off, false)) return false;
    bool locked = m == ZYDIS_MNEMONIC_XCHG || (i->pfx & BT_PFX_LOCK);
    mem_probe(e, j, d, off, true, slow, nslow);
    if (locked && size > 1) { /* a split-line lock: the handler emulates it */
        E2(e, MOV, R(HEAX), R(HEDX));
        E2(e, AND, R(HEAX), I(63));
        E2(e, CMP, R(HEAX), I(64 - size));
        slow[(*nslow)++] = jrel(e, ZYDIS_MNEMONIC_JNBE);
    }
    E2(e, MOV, R(HRCX), G(s->reg, 8));
    if (m == ZYDIS_MNEMONIC_XCHG) {
        E2(e, XCHG, PROBED(size), R(hreg(1, size)));
        store_gpr(e, 1, s->reg, size);
        return true;
    }
    if (m == ZYDIS_MNEMONIC_XADD) {
        load_guest_flags(e); /* as the handler (PRE); clobbers EAX, ECX: reload */
        E2(e, MOV, R(HRCX), G(s->reg, 8));
        if (locked) e->prefixes = ZYDIS_ATTRIB_HAS_LOCK;
        E2(e, XADD, PROBED(size), R(hreg(1, size)));
        capture_flags(e, ZYDIS_REGISTER_RDX);
        store_gpr(e, 1, s->reg, size);
        merge_flags(e, BT_ARITH_FLAGS);
        return true;
    }
    E2(e, MOV, R(HRAX), G(RAX, 8));
    if (locked) e->prefixes = ZYDIS_ATTRIB_HAS_LOCK;
    E2(e, CMPXCHG, PROBED(size), R(hreg(1, size)));
    capture_flags(e, ZYDIS_REGISTER_RDX);
    /* the handler writes the whole RAX the host left (a 32-bit failure zero-extends) */
    E2(e, MOV, G(RAX, 8), R(HRAX));
    merge_flags(e, BT_ARITH_FLAGS);
    return true;
}

/* SSE2 register forms memset/strchr-style code uses to broadcast a byte (sse.c's binop, pshufd
 * and op_movdq): PUNPCKL/H* and PSHUFD XMM, XMM(, imm8); MOVD/MOVQ between an XMM register and a
 * GPR (a write to XMM zeroes its upper bits; to a 32-bit GPR zero-extends). */
static bool native_sse_more(struct emit *e, const struct bt_insn *i, size_t *slow, int *nslow)
{
    if (i->nops < 2) return false;
    const struct bt_operand *d = &i->op[0], *s = &i->op[1];
    ZydisMnemonic m = (ZydisMnemonic)i->mnemonic;
    switch (m) {
    case ZYDIS_MNEMONIC_PUNPCKLBW:
    case ZYDIS_MNEMONIC_PUNPCKLWD:
    case ZYDIS_MNEMONIC_PUNPCKLDQ:
    case ZYDIS_MNEMONIC_PUNPCKLQDQ:
    case ZYDIS_MNEMONIC_PUNPCKHBW:
    case ZYDIS_MNEMONIC_PUNPCKHWD:
    case ZYDIS_MNEMONIC_PUNPCKHDQ:
    case ZYDIS_MNEMONIC_PSHUFD: {
        bool shuf = m == ZYDIS_MNEMONIC_PSHUFD;
        if (!is_xmm(d) || !is_xmm(s)) return false;
        if (shuf && (i->nops < 3 || i->op[2].kind != BT_OPK_IMM)) return false;
        sse_usable(e, slow, nslow);
        E2(e, MOVDQU, R(ZYDIS_REGISTER_XMM1), M(HCPU, C_XMM(s->zreg - ZYDIS_REGISTER_XMM0), 16));
        if (shuf) {
            enc(e, m, 3,
                (ZydisEncoderOperand[]){R(ZYDIS_REGISTER_XMM0), R(ZYDIS_REGISTER_XMM1),
                                        I(i->op[2].disp & 0xff)});
        } else {
            E2(e, MOVDQU, R(ZYDIS_REGISTER_XMM0),
               M(HCPU, C_XMM(d->zreg - ZYDIS_REGISTER_XMM0), 16));
            enc(e, m, 2, (ZydisEncoderOperand[]){R(ZYDIS_REGISTER_XMM0), R(ZYDIS_REGISTER_XMM1)});
        }
        E2(e, MOVDQU, M(HCPU, C_XMM(d->zreg - ZYDIS_REGISTER_XMM0), 16), R(ZYDIS_REGISTER_XMM0));
        return true;
    }
    case ZYDIS_MNEMONIC_MOVD:
    case ZYDIS_MNEMONIC_MOVQ: {
        unsigned n = m == ZYDIS_MNEMONIC_MOVD ? 4 : 8;
        if (is_xmm(d) && is_gpr(s) && s->size == n) {
            sse_usable(e, slow, nslow);
            E2(e, MOV, R(hreg(0, n)), G(s->reg, n));
            E2(e, MOV, M(HCPU, C_XMM(d->zreg - ZYDIS_REGISTER_XMM0), 8), R(HRAX));
            E2(e, MOV, M(HCPU, C_XMM(d->zreg - ZYDIS_REGISTER_XMM0) + 8, 8), I(0));
            return true;
        }
        if (is_gpr(d) && d->size == n && is_xmm(s)) {
            sse_usable(e, slow, nslow);
            E2(e, MOV, R(hreg(0, n)), M(HCPU, C_XMM(s->zreg - ZYDIS_REGISTER_XMM0), n));
            store_gpr(e, 0, d->reg, n);
            return true;
        }
        return false;
    }
    default: return false;
    }
}

/* BT/BTS/BTR/BTC with a register destination (register or immediate bit offset), and with a
 * memory destination and an immediate offset (no LOCK: the handler's read-modify-write), as
 * bitop.c runs them: the host instruction with the guest's flags loaded (the offset masked by
 * the host exactly as the handler's host instruction or its `off &= bits - 1` does). */
static bool native_bittest(struct emit *e, const struct bt_jit *j, const struct bt_insn *i,
                           int64_t off, size_t *slow, int *nslow)
{
    ZydisMnemonic m = (ZydisMnemonic)i->mnemonic;
    if (m != ZYDIS_MNEMONIC_BT && m != ZYDIS_MNEMONIC_BTS && m != ZYDIS_MNEMONIC_BTR &&
        m != ZYDIS_MNEMONIC_BTC)
        return false;
    if (i->nops < 2 || (i->pfx & BT_PFX_LOCK)) return false;
    const struct bt_operand *d = &i->op[0], *s = &i->op[1];
    unsigned size = d->size;
    if (size != 2 && size != 4 && size != 8) return false;
    bool imm = s->kind == BT_OPK_IMM;
    if (!imm && !(is_gpr(s) && s->size == size)) return false;
    ZydisEncoderOperand src = imm ? I(s->disp & 0xff) : R(hreg(2, size));
    if (is_gpr(d)) {
        load_guest_flags(e); /* clobbers EAX, ECX */
        load_gpr(e, 0, d->reg, size);
        if (!imm) load_gpr(e, 2, s->reg, size);
        enc(e, m, 2, (ZydisEncoderOperand[]){R(hreg(0, size)), src});
        capture_flags(e, ZYDIS_REGISTER_RDX);
        if (m != ZYDIS_MNEMONIC_BT) store_gpr(e, 0, d->reg, size);
        merge_flags(e, BT_ARITH_FLAGS);
        return true;
    }
    if (!imm || !inline_mem_ok(i, d, off, false)) return false;
    mem_probe(e, j, d, off, m != ZYDIS_MNEMONIC_BT, slow, nslow);
    load_guest_flags(e);
    enc(e, m, 2, (ZydisEncoderOperand[]){PROBED(size), src});
    take_flags(e, BT_ARITH_FLAGS);
    return true;
}

/* SETcc to a byte in memory (write probe) or to AH..BH */
static bool native_setcc_more(struct emit *e, const struct bt_jit *j, const struct bt_insn *i,
                              int64_t off, size_t *slow, int *nslow)
{
    if (!is_setcc(i->mnemonic)) return false;
    const struct bt_operand *d = &i->op[0];
    if (i->nops < 1 || d->size != 1 || i->opcode_map == 0) return false;
    bool hi = d->kind == BT_OPK_REG && d->rclass == BT_RC_GPR8H && d->reg < 4;
    if (!hi && !inline_mem_ok(i, d, off, false)) return false;
    if (!hi) mem_probe(e, j, d, off, true, slow, nslow);
    setcc_al(e, i->opcode & 0xf); /* clobbers EAX, ECX only */
    if (hi)
        store_gpr_hi_al(e, d->reg);
    else
        E2(e, MOV, PROBED(1), R(ZYDIS_REGISTER_AL));
    return true;
}

/* PUSHFQ with a 64-bit stack (system.c's op_pushf: RFLAGS without VM and RF; no virtual-8086
 * mode in 64-bit code) and CLI (op_cli_sti: #GP, through the handler, when IOPL < CPL). */
static bool native_flags_ops(struct emit *e, const struct bt_jit *j, const struct bt_insn *i,
                             int64_t off, unsigned stack_bits, size_t *slow, int *nslow)
{
    if (i->mnemonic == ZYDIS_MNEMONIC_PUSHFQ) {
        if (stack_bits != 64 || i->opsize != 64) return false;
        struct bt_operand slot = stack_slot(-8);
        mem_probe(e, j, &slot, off, true, slow, nslow);
        E2(e, MOV, R(HRAX), M(HCPU, C_FLAGS, 8)); /* the other bits from memory */
        E2(e, AND, R(HRAX), I(~(int64_t)(X86_FLAG_VM | X86_FLAG_RF | BT_ARITH_FLAGS)));
        flags_to_rflags(e, lahf_layout(e), HEAX, HECX); /* RDX and RSI hold the probe's */
        E2(e, MOV, PROBED(8), R(HRAX));
        E2(e, SUB, G(RSP, 8), I(8));
        return true;
    }
    if (i->mnemonic == ZYDIS_MNEMONIC_CLI) {
        E2(e, MOV, R(HEAX), M(HCPU, C_FLAGS, 4));
        E2(e, SHR, R(HEAX), I(12));
        E2(e, AND, R(HEAX), I(3));
        E2(e, CMP, R(ZYDIS_REGISTER_AL), M(HCPU, C_CPL, 1));
        slow[(*nslow)++] = jrel(e, ZYDIS_MNEMONIC_JB);
        E2(e, AND, M(HCPU, C_FLAGS, 8), I(~(int64_t)X86_FLAG_IF));
        return true;
    }
    return false;
}

/* The forms above (fast path, with slow-path jumps like native_mem), 64-bit code only. */
static bool native_forms(struct emit *e, const struct bt_jit *j, const struct bt_insn *i,
                         int64_t off, bool b32, unsigned stack_bits, size_t *slow, int *nslow)
{
    if (b32) return false;
    if ((i->pfx & BT_PFX_LOCK) && i->mnemonic != ZYDIS_MNEMONIC_CMPXCHG &&
        i->mnemonic != ZYDIS_MNEMONIC_XADD && i->mnemonic != ZYDIS_MNEMONIC_XCHG)
        return false;
    return native_muldiv(e, j, i, off, slow, nslow) || native_bitscan(e, j, i, off, slow, nslow) ||
           native_atomic(e, j, i, off, slow, nslow) || native_sse_more(e, i, slow, nslow) ||
           native_bittest(e, j, i, off, slow, nslow) ||
           native_setcc_more(e, j, i, off, slow, nslow) ||
           native_flags_ops(e, j, i, off, stack_bits, slow, nslow);
}

/* Indirect JMP/CALL r/m64 ending a 64-bit block: the target read (register or inline memory
 * operand), checked canonical, the return address pushed inline (CALL, with the --cfi hook as
 * native_callret), then the inline lookup.  Any failing check: the handler, then the loop. */
static bool native_indirect(struct emit *e, struct bt_jit *j, const struct bt_insn *i, int64_t off,
                            bool b32, unsigned stack_bits, unsigned cpl, unsigned *pend)
{
    bool call = i->mnemonic == ZYDIS_MNEMONIC_CALL;
    if (!call && i->mnemonic != ZYDIS_MNEMONIC_JMP) return false;
    if (b32 || stack_bits != 64 || i->opsize != 64 || i->nops < 1) return false;
    const struct bt_operand *o = &i->op[0];
    if (o->kind == BT_OPK_IMM || o->size != 8) return false;
    const bool cfi = call && bt_cfi_active(cpl);
    size_t slow[8];
    int nslow = 0;
    if (is_gpr(o)) {
        E2(e, MOV, R(HRAX), G(o->reg, 8));
    } else {
        if (!inline_mem_ok(i, o, off, false)) return false;
        mem_probe(e, j, o, off, false, slow, &nslow);
        E2(e, MOV, R(HRAX), PROBED(8));
    }
    check_canonical_rax(e, slow, &nslow);
    /* s.rip = the target now (a slow path below rewrites it before the handler runs) */
    E2(e, MOV, M(HCPU, C_RIP, 8), R(HRAX));
    if (call) {
        struct bt_operand slot = stack_slot(-8);
        mem_probe(e, j, &slot, off, true, slow, &nslow);
        rip_at(e, off + i->len, false);
        E2(e, MOV, PROBED(8), R(HRAX));
        E2(e, SUB, G(RSP, 8), I(8));
        if (cfi) cfi_call_hook(e, j);
    }
    icount_add(e, *pend + 1);
    lookup_exit(e, j, false, false); /* no handler ran */
    for (int k = 0; k < nslow; k++)
        patch(e, slow[k], e->pos);
    call_handler(e, i, off, b32, pend);
    jto(e, ZYDIS_MNEMONIC_JMP, j->exit_off);
    *pend = 0;
    return true;
}

/* ---- code cache ------------------------------------------------------------------------ */

/* ---- LOOKOUT_BT_PROFILE=1: how many host instructions translated code runs per guest one ------
 *
 * Each translation counts its runs (an INC at its entry, both entries); its static facts are its
 * guest instruction count and the host instructions on its fall-through path (from the entry to the
 * first unconditional jump or return, skipping every forward branch to cold code: what one run
 * executes when no slow path is taken and the block ends where its last instruction falls
 * through).  Counts move into a table keyed by the block when the cache is flushed; the vCPU's
 * teardown reports totals and the blocks that ran the most host instructions.  Wall-clock noise is
 * +-5 % on the benchmark machines; these counts do not move between runs of the same workload
 * (interrupts land at other points, a few blocks more or less), so they show changes to the code
 * the translator emits that timing cannot.  Off by default: the INC costs a few percent. */
#define PROF_SLOTS 65536u /* accumulated blocks (a power of two) */
struct jit_prof {
    uint64_t gpa, rip, runs;
    uint32_t guest, host; /* guest instructions; host instructions on the fall-through path */
    uint32_t entry;       /* its code's offset in the cache ... */
    uint64_t gen;         /* ... while the cache's flush count is this */
    uint8_t bits;         /* code size */
    bool user;
};
struct jit_prof_state {
    int level;                       /* LOOKOUT_BT_PROFILE: 1 counts, 2 also shows code */
    uint32_t stub_n;                 /* handler_stub's instructions to its RET (0: not yet) */
    uint64_t runs[JIT_MAX_TBS];      /* by translation slot, written by the translated code */
    struct jit_prof tb[JIT_MAX_TBS]; /* by translation slot: its static facts */
    struct jit_prof acc[PROF_SLOTS]; /* accumulated by block (gpa, privilege, size) */
    uint64_t lost;                   /* runs of blocks the full table could not take */
};

static int prof_wanted(void)
{
    const char *v = getenv("LOOKOUT_BT_PROFILE");
    if (!v || !*v || strcmp(v, "0") == 0) return 0;
    if ((v[0] == '1' || v[0] == '2') && !v[1]) return v[0] - '0';
    log_warn("LOOKOUT_BT_PROFILE=%s is not 0, 1 (count) or 2 (count and show code): not profiling",
             v);
    return 0;
}

/* Host instructions on the fall-through path of the code at `code` (at most `len` bytes); with
 * `show`, each is logged (LOOKOUT_BT_PROFILE=2).  A CALL to `stub` (handler_stub, in the same
 * view of the cache) counts as the stub's `stub_n` instructions besides itself, as when that
 * code was emitted in line. */
static uint32_t prof_path(const uint8_t *code, size_t len, bool show, const uint8_t *stub,
                          uint32_t stub_n)
{
    ZydisDecoder d;
    ZydisDecoderInit(&d, ZYDIS_MACHINE_MODE_LONG_64, ZYDIS_STACK_WIDTH_64);
    ZydisFormatter f;
    ZydisFormatterInit(&f, ZYDIS_FORMATTER_STYLE_INTEL);
    ZydisDecodedInstruction in;
    ZydisDecodedOperand ops[ZYDIS_MAX_OPERAND_COUNT];
    uint32_t n = 0;
    bool budget = false; /* the last instruction was the chain exit's budget compare */
    for (size_t pos = 0; pos < len && n < 100000;) {
        if (!ZYAN_SUCCESS(ZydisDecoderDecodeFull(&d, code + pos, len - pos, &in, ops))) break;
        n++;
        char text[96];
        if (show && ZYAN_SUCCESS(ZydisFormatterFormatInstruction(
                        &f, &in, ops, in.operand_count_visible, text, sizeof(text), pos, NULL)))
            log_info("        host %4zx  %s", pos, text);
        if (in.mnemonic == ZYDIS_MNEMONIC_JMP || in.mnemonic == ZYDIS_MNEMONIC_RET) break;
        /* a same-page chain exit (leave_direct_c): within the budget its JBE is the way on */
        if (budget && in.mnemonic == ZYDIS_MNEMONIC_JBE) break;
        budget = in.mnemonic == ZYDIS_MNEMONIC_CMP && ops[1].type == ZYDIS_OPERAND_TYPE_MEMORY &&
                 ops[1].mem.base == HCPU && ops[1].mem.disp.value == C_CHAIN_END;
        if (stub && in.mnemonic == ZYDIS_MNEMONIC_CALL &&
            ops[0].type == ZYDIS_OPERAND_TYPE_IMMEDIATE &&
            code + pos + in.length + ops[0].imm.value.s == stub)
            n += stub_n;
        pos += in.length;
    }
    return n;
}

/* prof_path for the code at `code` in the view `base` of j's cache */
static uint32_t prof_count(const struct bt_jit *j, const uint8_t *base, size_t at, size_t len,
                           bool show)
{
    if (!j->prof->stub_n)
        j->prof->stub_n =
            prof_path(base + j->handler_off, j->base_end - j->handler_off, false, NULL, 0);
    return prof_path(base + at, len, show, base + j->handler_off, j->prof->stub_n);
}

/* Logs the guest instructions of a reported block still in the cache, then its host code. */
static void prof_show(struct bt_cpu *c, const struct bt_jit *j, const struct jit_prof *a)
{
    const uint8_t *g = c->vm ? guest_ptr(&c->vm->mem, a->gpa, 1) : NULL;
    if (!g) return;
    size_t avail = 4096 - (a->gpa & 0xfff);
    ZydisDecoder d;
    ZydisDecoderInit(&d, a->bits == 64 ? ZYDIS_MACHINE_MODE_LONG_64 : ZYDIS_MACHINE_MODE_LEGACY_32,
                     a->bits == 64 ? ZYDIS_STACK_WIDTH_64 : ZYDIS_STACK_WIDTH_32);
    ZydisFormatter f;
    ZydisFormatterInit(&f, ZYDIS_FORMATTER_STYLE_INTEL);
    ZydisDecodedInstruction in;
    ZydisDecodedOperand ops[ZYDIS_MAX_OPERAND_COUNT];
    size_t pos = 0;
    for (uint32_t k = 0; k < a->guest && pos < avail; k++) {
        if (!ZYAN_SUCCESS(ZydisDecoderDecodeFull(&d, g + pos, avail - pos, &in, ops))) break;
        char text[96];
        if (ZYAN_SUCCESS(ZydisFormatterFormatInstruction(&f, &in, ops, in.operand_count_visible,
                                                         text, sizeof(text), a->rip + pos, NULL)))
            log_info("        guest %llx  %s", (unsigned long long)(a->rip + pos), text);
        pos += in.length;
    }
    prof_count(j, j->rx, a->entry, j->used - a->entry, true);
}

/* Moves the run counts of the cache's translations into the accumulated table. */
static void prof_merge(struct bt_jit *j)
{
    struct jit_prof_state *p = j->prof;
    if (!p) return;
    for (uint32_t k = 0; k < j->ntbs; k++) {
        uint64_t runs = p->runs[k];
        if (!runs) continue;
        p->runs[k] = 0;
        const struct jit_prof *t = &p->tb[k];
        uint64_t h = (t->gpa ^ (t->gpa >> 17) ^ ((uint64_t)t->guest << 40) ^ t->user) *
                     0x9e3779b97f4a7c15ull;
        bool placed = false;
        for (uint32_t probe = 0; probe < 64 && !placed; probe++) {
            struct jit_prof *a = &p->acc[((h >> 40) + probe) & (PROF_SLOTS - 1)];
            if (!a->runs) *a = *t; /* empty slot: this block from now on */
            if (a->gpa == t->gpa && a->user == t->user && a->guest == t->guest) {
                a->runs += runs;
                a->entry = t->entry; /* the latest translation, to show it */
                a->gen = t->gen;
                placed = true;
            }
        }
        if (!placed) p->lost += runs;
    }
}

/* Runs, guest and host instructions so far: the accumulated blocks and the cache's. */
/* Totals over every block (only_user -1), user blocks (1) or kernel blocks (0). */
static void prof_totals(const struct bt_jit *j, int only_user, uint64_t *runs, uint64_t *guest,
                        uint64_t *host)
{
    const struct jit_prof_state *p = j->prof;
    *runs = *guest = *host = 0;
    for (uint32_t k = 0; k < PROF_SLOTS + j->ntbs; k++) {
        const struct jit_prof *a = k < PROF_SLOTS ? &p->acc[k] : &p->tb[k - PROF_SLOTS];
        uint64_t n = k < PROF_SLOTS ? a->runs : p->runs[k - PROF_SLOTS];
        if (only_user >= 0 && a->user != (only_user == 1)) continue;
        *runs += n;
        *guest += n * a->guest;
        *host += n * a->host;
    }
}

static void prof_report(struct bt_cpu *c, struct bt_jit *j)
{
    struct jit_prof_state *p = j->prof;
    prof_merge(j);
    uint64_t runs, guest, host, uruns, uguest, uhost;
    prof_totals(j, -1, &runs, &guest, &host);
    if (!runs) return;
    prof_totals(j, 1, &uruns, &uguest, &uhost);
    log_info("translator %u profile: %llu runs of translated blocks, %llu guest and %llu host "
             "instructions in them: %.2f host instructions per guest instruction (%llu runs of "
             "blocks the table could not hold); user blocks: %.1f%% of the guest and %.1f%% of "
             "the host instructions (%.2f per guest instruction), kernel blocks %.2f",
             c->index, (unsigned long long)runs, (unsigned long long)guest,
             (unsigned long long)host, (double)host / (double)(guest ? guest : 1),
             (unsigned long long)p->lost, 100.0 * (double)uguest / (double)(guest ? guest : 1),
             100.0 * (double)uhost / (double)(host ? host : 1),
             (double)uhost / (double)(uguest ? uguest : 1),
             (double)(host - uhost) / (double)(guest - uguest ? guest - uguest : 1));
    for (int r = 0; r < 12; r++) {
        struct jit_prof *best = NULL;
        for (uint32_t k = 0; k < PROF_SLOTS; k++) {
            struct jit_prof *a = &p->acc[k];
            if (a->runs && (!best || a->runs * a->host > best->runs * best->host)) best = a;
        }
        if (!best) break;
        log_info("  %5.1f%% of host instructions: %s block at %#llx (gpa %#llx), %llu runs, %u "
                 "guest -> %u host instructions (%.2f)",
                 100.0 * (double)(best->runs * best->host) / (double)host,
                 best->user ? "user" : "kernel", (unsigned long long)best->rip,
                 (unsigned long long)best->gpa, (unsigned long long)best->runs, best->guest,
                 best->host, (double)best->host / (double)(best->guest ? best->guest : 1));
        if (p->level >= 2 && best->gen == j->st.flushes) prof_show(c, j, best);
        best->runs = 0; /* reported */
    }
}

static bool env_wants(void)
{
    const char *v = getenv("LOOKOUT_BT_JIT");
    return !v || !*v || strcmp(v, "1") == 0;
}

bool bt_jit_wanted(void)
{
    return env_wants();
}

/* The trampoline at the start of the cache: enter(c, code, j) saves the callee-saved registers,
 * pins c in RBX, loads the guest state kept in host registers and jumps to the block; blocks
 * leave through exit_off, which writes that state back. */
/* The inline lookup's way on when an entry's TLB generation is stale (a flush since it was
 * validated): RAX = the linear RIP, RSI = the entry (its key matched).  If the soft TLB maps the
 * page, executable at the current CPL, to the entry's guest-physical page, the entry is valid
 * again in this generation ([0], the one every flush advances) and its translation runs; else
 * back to the loop (which refills the TLB by fetching).  Shared by every lookup exit. */
static void lookup_revalidate(struct emit *e, struct bt_jit *j)
{
    size_t fails[8];
    int nf = 0;
    tlb_exec_probe(e, fails, &nf, -1); /* RCX = the TLB entry */
    E2(e, MOV, R(ZYDIS_REGISTER_RDX), M(ZYDIS_REGISTER_RCX, T_GPA, 8));
    E2(e, CMP, R(ZYDIS_REGISTER_RDX), M(ZYDIS_REGISTER_RSI, L_GPA, 8));
    fails[nf++] = jrel(e, ZYDIS_MNEMONIC_JNZ);
    E2(e, MOV, R(ZYDIS_REGISTER_RDX), M(HCPU, C_TLBGEN, 8));
    E2(e, MOV, M(ZYDIS_REGISTER_RSI, L_GEN, 8), R(ZYDIS_REGISTER_RDX));
    /* validated under this CR3 (a global entry may come here from another one) */
    E2(e, MOV, R(ZYDIS_REGISTER_RDX), M(HCPU, C_CR3, 8));
    E2(e, MOV, M(ZYDIS_REGISTER_RSI, L_CR3, 8), R(ZYDIS_REGISTER_RDX));
    count(e, &j->st.lookup_revalidated);
    lookup_enter(e, j);
    for (int k = 0; k < nf; k++)
        patch(e, fails[k], e->pos);
    E2(e, MOV, M(HCPU, C_RIP, 8), R(ZYDIS_REGISTER_RAX)); /* where the loop goes on */
    count(e, &j->st.lookup_miss_tlb);
    jto(e, ZYDIS_MNEMONIC_JMP, j->exit_off);
}

static int emit_trampoline(struct bt_jit *j, struct bt_cpu *c)
{
    const char *generic = getenv("LOOKOUT_BT_GENERIC");
    bool host_specific = !(generic && strcmp(generic, "0") != 0);
    j->bmi2 = host_specific && __builtin_cpu_supports("bmi2");
    const char *grp = getenv("LOOKOUT_BT_GROUPS");
    j->groups = !(grp && strcmp(grp, "0") == 0);
    j->groups_all = grp && strcmp(grp, "all") == 0;
    if (grp && *grp && strcmp(grp, "0") && strcmp(grp, "1") && !j->groups_all)
        log_warn("LOOKOUT_BT_GROUPS=%s is not 0 (off), 1 (user blocks, the default) or all: "
                 "probe groups in user blocks",
                 grp);
    j->pure_flags = host_specific && host_flags_pure(false);
    j->pure_imul = host_specific && host_flags_pure(true);
    /* LOOKOUT_BT_FLAGS_READ=pushfq|lahf chooses the form (the tests run both on every host) */
    const char *fr = getenv("LOOKOUT_BT_FLAGS_READ");
    if (fr && !strcmp(fr, "lahf"))
        j->lahf_flags = true;
    else if (fr && !strcmp(fr, "pushfq"))
        j->lahf_flags = false;
    else {
        if (fr && *fr)
            log_warn("LOOKOUT_BT_FLAGS_READ=%s is not pushfq or lahf: the host's default (%s)", fr,
                     __builtin_cpu_is("amd") ? "lahf" : "pushfq");
        j->lahf_flags = host_specific && __builtin_cpu_is("amd");
    }
    j->pure_imm = j->pure_flags && host_shift_imm_same();
    /* (decided first: sync_in/sync_out below depend on lahf_flags, the layout of FLAGS_REG) */
    struct emit e = {.buf = j->rw, .pos = 0, .cap = j->size, .jit = j, .rsi_grp = -1};
    static const ZydisRegister saved[] = {ZYDIS_REGISTER_RBP, ZYDIS_REGISTER_RBX,
                                          ZYDIS_REGISTER_R12, ZYDIS_REGISTER_R13,
                                          ZYDIS_REGISTER_R14, ZYDIS_REGISTER_R15};
    for (size_t k = 0; k < ARRAY_SIZE(saved); k++)
        E1(&e, PUSH, R(saved[k]));
    E2(&e, SUB, R(ZYDIS_REGISTER_RSP), I(8)); /* 16-byte alignment for the handler calls */
    E2(&e, MOV, R(HCPU), R(ZYDIS_REGISTER_RDI));
    sync_in(&e); /* the guest state translated code keeps in host registers */
    E1(&e, JMP, R(ZYDIS_REGISTER_RSI));
    j->exit_off = e.pos;
    sync_out(&e);
    E2(&e, ADD, R(ZYDIS_REGISTER_RSP), I(8));
    for (size_t k = ARRAY_SIZE(saved); k-- > 0;)
        E1(&e, POP, R(saved[k]));
    E0(&e, RET);
    j->reval_off = e.pos;
    lookup_revalidate(&e, j);
    j->cfi_hook_off[0] = e.pos;
    cfi_hook_stub(&e, (const void *)bt_cfi_call);
    j->cfi_hook_off[1] = e.pos;
    cfi_hook_stub(&e, (const void *)bt_cfi_ret);
    log_debug("translator: %s BMI2 (RORX), %s the guest's flags before shifts, %s before IMUL, "
              "shifts by an immediate as %s, the host's flags read by %s",
              j->bmi2 ? "with" : "without", j->pure_flags ? "without loading" : "loading",
              j->pure_imul ? "not" : "loading them", j->pure_imm ? "themselves" : "CL forms",
              j->lahf_flags ? "LAHF and SETO" : "PUSHFQ");
    probe_templates(j);
    if (e.fail) return err_set(EINVAL, "translator: Zydis cannot encode the trampoline");
    size_t k0 = ALIGN_UP(e.pos, 16);
    if (k0 + 16 * JIT_KCONST_N > j->size) return err_set(ENOSPC, "translator: cache too small");
    for (unsigned n = 0; n < JIT_KCONST_N; n++) {
        uint64_t q[2] = {n, 0};
        memcpy(j->rw + k0 + 16 * n, q, 16);
    }
    j->kconst_off = k0;
    e.pos = j->handler_off = k0 + 16 * JIT_KCONST_N; /* it adds a constant */
    handler_stub(&e, j);
    if (e.fail) return err_set(EINVAL, "translator: Zydis cannot encode the handler stub");
    j->base_end = j->used = ALIGN_UP(e.pos, 64);
    j->enter = (void (*)(struct bt_cpu *, const void *, struct bt_jit *))(void *)j->rx;
    return 0;
}

static void cache_unmap(struct bt_jit *j);

static int cache_map(struct bt_jit *j, struct bt_cpu *c)
{
    j->size = JIT_CACHE_BYTES;
    if (!j->tbs) j->tbs = calloc(JIT_MAX_TBS, sizeof(*j->tbs));
    if (!j->links) j->links = calloc(JIT_MAX_LINKS, sizeof(*j->links));
    if (!j->tbs || !j->links) return err_set(ENOMEM, "translator: no memory for its block tables");
    if (!j->enc_cache) j->enc_cache = calloc(ENC_CACHE_SIZE, sizeof(*j->enc_cache));
    j->fd = memfd_create("lookout-jit", MFD_CLOEXEC);
    if (j->fd < 0)
        return err_set(errno, "translator: memfd_create for the code cache failed: %s",
                       strerror(errno));
    if (ftruncate(j->fd, (off_t)j->size) < 0) {
        int e = errno;
        close(j->fd), j->fd = -1;
        return err_set(e, "translator: cannot size the %zu MiB code cache: %s", j->size >> 20,
                       strerror(e));
    }
    j->rw = mmap(NULL, j->size, PROT_READ | PROT_WRITE, MAP_SHARED, j->fd, 0);
    j->rx = mmap(NULL, j->size, PROT_READ | PROT_EXEC, MAP_SHARED, j->fd, 0);
    if (j->rw == MAP_FAILED || j->rx == MAP_FAILED) {
        int e = errno;
        if (j->rw != MAP_FAILED) munmap(j->rw, j->size);
        if (j->rx != MAP_FAILED) munmap(j->rx, j->size);
        j->rw = j->rx = NULL;
        close(j->fd), j->fd = -1;
        return err_set(e,
                       "translator: cannot map the code cache twice (RW + RX): %s; a system "
                       "that forbids executable shared mappings needs LOOKOUT_BT_JIT=0",
                       strerror(e));
    }
    pthread_once(&sync_once, sync_templates);
    int r = emit_trampoline(j, c);
    if (r < 0) cache_unmap(j); /* no half-made cache: the caller runs interpreted */
    return r;
}

static void cache_unmap(struct bt_jit *j)
{
    if (j->rw) munmap(j->rw, j->size);
    if (j->rx) munmap(j->rx, j->size);
    if (j->fd >= 0) close(j->fd);
    j->rw = j->rx = NULL;
    j->fd = -1;
}

static void lookup_clear_all(struct bt_jit *j)
{
    for (unsigned k = 0; k < JIT_LOOKUP_SIZE; k++)
        j->ltab[k].rip = ~0ull; /* never a RIP the probe compares (not canonical) */
    j->ndrop = 0;
    j->st.lookup_clears++;
}

/* Clears the lookup entries of translations dropped since the last run. */
static void lookup_apply_drops(struct bt_jit *j)
{
    if (j->ndrop > JIT_DROP_PAGES) {
        lookup_clear_all(j);
        return;
    }
    for (unsigned k = 0; k < JIT_LOOKUP_SIZE; k++) {
        struct jit_lent *l = &j->ltab[k];
        for (unsigned d = 0; d < j->ndrop; d++)
            if (l->gpa == j->drop_pages[d]) l->rip = ~0ull;
    }
    j->ndrop = 0;
}

static inline uint32_t lookup_index(uint64_t rip)
{
    return (uint32_t)((rip >> 12) ^ rip) & (JIT_LOOKUP_SIZE - 1);
}

/* Records the translation about to run at s.rip (64-bit code) for the inline lookup. */
static void lookup_fill(struct bt_jit *j, struct bt_cpu *c, const struct jit_tb *tb)
{
    uint32_t k = lookup_index(c->s.rip);
    struct jit_lent *l = &j->ltab[k];
    l->rip = c->s.rip;
    l->cr3 = c->s.cr3;
    /* the loop has just fetched from the page through the TLB */
    l->gen = c->tlb_gen[bt_tlb_page_global(c, c->s.rip)];
    l->gpa = tb->gpa & ~0xfffull;
    memcpy(&l->mode, &c->cpl, 4);
    l->code = tb->entry;
}

int bt_jit_set_enabled(struct bt_cpu *c, _Atomic bool *pending, bool on)
{
    struct bt_jit *j = c->jit;
    if (!j) {
        if (!on) return 0;
        j = calloc(1, sizeof(*j));
        if (!j) return err_set(ENOMEM, "translator: no memory for its state");
        j->fd = -1;
        j->hot_runs = JIT_HOT_RUNS;
        int level = prof_wanted();
        if (level && !(j->prof = calloc(1, sizeof(*j->prof))))
            log_warn("translator: no memory for LOOKOUT_BT_PROFILE's tables: not profiling");
        if (j->prof) j->prof->level = level;
        lookup_clear_all(j);
        j->st.lookup_clears = 0;
        c->jit = j;
    }
    if (pending) j->pending = pending;
    j->enabled = on;
    /* translations made before are not trusted across a switch: the caller's decoded blocks
     * may hold slots from an earlier cache */
    bt_cache_flush(c);
    return 0;
}

void bt_jit_set_hot_runs(struct bt_cpu *c, unsigned runs)
{
    struct bt_jit *j = c->jit;
    if (j) j->hot_runs = MIN(runs, JIT_HOT_MAX);
}

int bt_jit_init(struct bt_cpu *c, _Atomic bool *pending)
{
    if (!env_wants()) return 0;
    return bt_jit_set_enabled(c, pending, true);
}

void bt_jit_destroy(struct bt_cpu *c)
{
    struct bt_jit *j = c->jit;
    if (!j) return;
    struct bt_jit_stats st;
    bt_jit_get_stats(c, &st);
    if (st.blocks_translated)
        log_info(
            "translator %u: %llu blocks translated (%llu native, %llu called instructions; "
            "%llu with inline memory access), %llu flushes (%llu because the code cache was full), "
            "%llu block entries from the loop, %llu chains (%llu across pages), %llu unchained, "
            "%llu exits through unpatched chain jumps, "
            "%llu inline lookups (%llu hits, %llu more after checking the TLB since a flush; "
            "misses: %llu not in the table, %llu TLB; %llu exits to the loop before the lookup: "
            "budget, events), "
            "%llu lookup-table clears, %llu entries interpreted for a CPL the translation was "
            "not made for, %llu native forms the encoder refused (handler path instead)",
            c->index, (unsigned long long)st.blocks_translated, (unsigned long long)st.insns_native,
            (unsigned long long)st.insns_called, (unsigned long long)st.insns_inline_mem,
            (unsigned long long)st.flushes, (unsigned long long)st.flushes_full,
            (unsigned long long)st.runs, (unsigned long long)st.chains,
            (unsigned long long)st.chains_cross, (unsigned long long)st.unchains,
            (unsigned long long)st.exits_unchained, (unsigned long long)st.lookups,
            (unsigned long long)st.lookup_hits, (unsigned long long)st.lookup_revalidated,
            (unsigned long long)st.lookup_miss_key, (unsigned long long)st.lookup_miss_tlb,
            (unsigned long long)st.lookup_bails, (unsigned long long)st.lookup_clears,
            (unsigned long long)st.cpl_mismatch, (unsigned long long)st.encode_fallbacks);
    hstat_report();
    if (j->prof) prof_report(c, j);
    free(j->prof);
    cache_unmap(j);
    free(j->tbs);
    free(j->links);
    free(j->enc_cache);
    free(j);
    c->jit = NULL;
}

void bt_jit_flush(struct bt_cpu *c)
{
    struct bt_jit *j = c->jit;
    if (!j || !j->rw) return;
    prof_merge(j);
    j->used = j->base_end;
    j->ntbs = j->nlinks = 0;
    j->exit_valid = false;
    lookup_clear_all(j);
    j->st.flushes++;
}

void bt_jit_drop(struct bt_cpu *c, void *handle)
{
    struct bt_jit *j = c->jit;
    if (!j || !j->rw || (uintptr_t)handle < 2 + JIT_HOT_MAX)
        return; /* not translated (cold, or untranslatable) */
    struct jit_tb *tb = handle;
    /* every exit chained here falls through to its unchained stub again */
    for (uint32_t l = tb->links_in; l; l = j->links[l - 1].next) {
        static const int32_t zero = 0;
        memcpy(j->rw + j->links[l - 1].patch_end - 4, &zero, 4);
        j->st.unchains++;
    }
    tb->links_in = 0;
    j->exit_valid = false;
    /* its lookup entries go before translated code runs again (bt_jit_run) */
    uint64_t page = tb->gpa & ~0xfffull;
    if (j->ndrop <= JIT_DROP_PAGES && (j->ndrop == 0 || j->drop_pages[j->ndrop - 1] != page)) {
        if (j->ndrop < JIT_DROP_PAGES) j->drop_pages[j->ndrop] = page;
        j->ndrop++;
    }
}

void bt_jit_poke(struct bt_cpu *c)
{
    if (c) __atomic_store_n(&c->jit_chain_end, 0, __ATOMIC_SEQ_CST);
}

void bt_jit_get_stats(const struct bt_cpu *c, struct bt_jit_stats *st)
{
    const struct bt_jit *j = c->jit;
    memset(st, 0, sizeof(*st));
    if (j) {
        *st = j->st;
        st->lookups = st->lookup_hits + st->lookup_revalidated + st->lookup_miss_key +
                      st->lookup_miss_tlb + st->lookup_bails;
        st->code_bytes = j->used;
        if (j->prof) prof_totals(j, -1, &st->prof_runs, &st->prof_guest, &st->prof_host);
    }
}

/* The entry of a block whose one instruction crosses into the next page (64-bit code): the
 * next page (at R12 + `avail`) must map, executable at the current CPL, to RAM holding the
 * j->xlen bytes the instruction was decoded from (another mapping of the page is fine if the
 * bytes are the same: they decode alike).  Else back to the loop before anything ran (core.c
 * compares them too and decodes the block again). */
static void crossing_check(struct emit *e, struct bt_jit *j, unsigned avail)
{
    size_t fails[8];
    int nf = 0;
    E2(e, LEA, R(ZYDIS_REGISTER_RAX), M(R12, avail, 8));
    tlb_exec_probe(e, fails, &nf, j->user); /* RCX = the entry */
    E2(e, TEST, M(ZYDIS_REGISTER_RCX, T_PERM, 4), I(BT_TLB_RAM));
    fails[nf++] = jrel(e, ZYDIS_MNEMONIC_JZ);
    E2(e, MOV, R(ZYDIS_REGISTER_RDX), M(ZYDIS_REGISTER_RCX, T_ADDEND, 8));
    E2(e, ADD, R(ZYDIS_REGISTER_RDX), R(ZYDIS_REGISTER_RAX)); /* host address of its byte 0 */
    for (unsigned at = 0; at < j->xlen; at += 8) {
        unsigned nb = j->xlen - at < 8 ? j->xlen - at : 8;
        uint64_t want = 0;
        memcpy(&want, j->xbytes + at, nb);
        E2(e, MOV, R(ZYDIS_REGISTER_RCX), M(ZYDIS_REGISTER_RDX, at, 8)); /* within the page */
        E2(e, MOV, R(ZYDIS_REGISTER_RSI), I((int64_t)want));
        E2(e, XOR, R(ZYDIS_REGISTER_RCX), R(ZYDIS_REGISTER_RSI));
        if (nb < 8)
            E2(e, SHL, R(ZYDIS_REGISTER_RCX), I(64 - 8 * nb)); /* the first nb bytes */
        else
            E2(e, TEST, R(ZYDIS_REGISTER_RCX), R(ZYDIS_REGISTER_RCX));
        fails[nf++] = jrel(e, ZYDIS_MNEMONIC_JNZ);
    }
    size_t ok = jrel(e, ZYDIS_MNEMONIC_JMP);
    for (int k = 0; k < nf; k++)
        patch(e, fails[k], e->pos);
    E2(e, MOV, M(HCPU, C_RIP, 8), R(R12));   /* a chained entry did not write it */
    jto(e, ZYDIS_MNEMONIC_JMP, j->exit_off); /* icount untouched */
    patch(e, ok, e->pos);
}

/* Deferred flags.  A register-form producer right before a memory operation that writes all six
 * flags (CMP [m], imm; ADD r, [m]; ...) makes flags that only that operation's fault can show:
 * its fast path overwrites them.  When the producer's flags can be made again from the registers
 * after it (recomputable), its native form leaves them out (as dead ones) and the operation's
 * slow path makes them again before its handler runs (recompute_flags).  A strlen-like loop
 * (INC r; CMP byte [r], 0; JNZ) saves the CF load and the capture after the INC. */
static bool recomputable(const struct bt_insn *i)
{
    if (i->pfx & BT_PFX_LOCK) return false;
    unsigned size = i->opsize / 8;
    if (size != 1 && size != 2 && size != 4 && size != 8) return false;
    const struct bt_operand *d = &i->op[0], *s = &i->op[1];
    if (i->nops < 1 || !is_gpr(d) || d->size != size) return false;
    switch (i->mnemonic) {
    case ZYDIS_MNEMONIC_INC:
    case ZYDIS_MNEMONIC_DEC: return true; /* the value before is the value after, -/+ 1 */
    case ZYDIS_MNEMONIC_ADD:
    case ZYDIS_MNEMONIC_SUB:
    case ZYDIS_MNEMONIC_XOR:
        /* by an immediate or another register: the value before is the value after -/+/^ it;
         * SUB and XOR of a register with itself give the same flags whatever it held */
        if (i->nops < 2) return false;
        if (s->kind == BT_OPK_IMM) return size != 8 || fits32(s->disp);
        return is_gpr(s) && s->size == size &&
               (s->reg != d->reg || i->mnemonic != ZYDIS_MNEMONIC_ADD);
    case ZYDIS_MNEMONIC_CMP:
    case ZYDIS_MNEMONIC_TEST: /* write no register: the same operands again */
        return i->nops >= 2 && ((s->kind == BT_OPK_IMM && (size != 8 || fits32(s->disp))) ||
                                (is_gpr(s) && s->size == size));
    default: return false;
    }
}

/* ADD, SUB, AND, OR, XOR, CMP or TEST (host_producer's, but NEG) with a memory operand, not
 * LOCK'd: writes all six flags */
static bool mem_flag_writer(const struct bt_insn *i)
{
    if (i->pfx & BT_PFX_LOCK || i->nops < 2 || i->mnemonic == ZYDIS_MNEMONIC_NEG) return false;
    return host_producer(i) && (i->op[0].kind == BT_OPK_MEM || i->op[1].kind == BT_OPK_MEM);
}

/* FLAGS_REG takes the flags the recomputable producer `p` made (it ran; its registers hold what
 * it left): its operation again on the values before it.  Clobbers RAX, RCX, RDX. */
static void recompute_flags(struct emit *e, const struct bt_insn *p)
{
    unsigned size = p->opsize / 8;
    const struct bt_operand *d = &p->op[0], *s = &p->op[1];
    ZydisMnemonic m = (ZydisMnemonic)p->mnemonic;
    load_gpr(e, 0, d->reg, size);
    ZydisEncoderOperand a = R(hreg(0, size));
    switch (m) {
    case ZYDIS_MNEMONIC_INC:
    case ZYDIS_MNEMONIC_DEC: /* CF is not theirs: the guest's stays */
        enc(e, m == ZYDIS_MNEMONIC_INC ? ZYDIS_MNEMONIC_DEC : ZYDIS_MNEMONIC_INC, 1,
            (ZydisEncoderOperand[]){a});
        enc(e, m, 1, (ZydisEncoderOperand[]){a});
        take_flags(e, BT_ARITH_FLAGS & ~X86_FLAG_CF);
        return;
    case ZYDIS_MNEMONIC_ADD:
    case ZYDIS_MNEMONIC_SUB:
    case ZYDIS_MNEMONIC_XOR: {
        ZydisMnemonic inv = m == ZYDIS_MNEMONIC_ADD   ? ZYDIS_MNEMONIC_SUB
                            : m == ZYDIS_MNEMONIC_SUB ? ZYDIS_MNEMONIC_ADD
                                                      : ZYDIS_MNEMONIC_XOR;
        ZydisEncoderOperand b;
        if (s->kind == BT_OPK_IMM) {
            b = I(imm_for(s->disp, size));
        } else if (s->reg == d->reg) { /* SUB/XOR r, r: the operation alone */
            enc(e, m, 2, (ZydisEncoderOperand[]){a, a});
            break;
        } else {
            load_gpr(e, 1, s->reg, size);
            b = R(hreg(1, size));
        }
        enc(e, inv, 2, (ZydisEncoderOperand[]){a, b});
        enc(e, m, 2, (ZydisEncoderOperand[]){a, b});
        break;
    }
    default: /* CMP, TEST */
        if (s->kind == BT_OPK_IMM) {
            enc(e, m, 2, (ZydisEncoderOperand[]){a, I(imm_for(s->disp, size))});
        } else {
            load_gpr(e, 1, s->reg, size);
            enc(e, m, 2, (ZydisEncoderOperand[]){a, R(hreg(1, size))});
        }
        break;
    }
    take_flags(e, BT_ARITH_FLAGS);
}

/* What a planned group member (its access in the grouped body cannot fault: the prologue probed
 * its group's whole range) does to the flags: a MOV, MOVZX/MOVSX/MOVSXD or SSE move none, a
 * memory flag writer writes all six; anything else counts as a reader, as in flag_effect. */
static int member_effect(const struct bt_insn *i)
{
    if (i->pfx & BT_PFX_LOCK) return FL_READS; /* as in flag_effect */
    switch (i->mnemonic) {
    case ZYDIS_MNEMONIC_MOV:
    case ZYDIS_MNEMONIC_MOVZX:
    case ZYDIS_MNEMONIC_MOVSX:
    case ZYDIS_MNEMONIC_MOVSXD: return FL_NONE;
    default:
        if (is_sse_move(i->mnemonic)) return FL_NONE;
        return mem_flag_writer(i) ? FL_WRITES : FL_READS;
    }
}

/* The dead-flag pass: a backward scan (the block's end reads the flags: they must be in
 * c->s.rflags there).  `gp`: the grouped body's plan, whose members cannot fault (member_effect);
 * NULL for the plain body. */
static void flag_liveness(const struct bt_jit *j, const struct bt_insn *ins, unsigned n,
                          bool use_dead, const struct grp_plan *gp, bool *dead, bool *hdead,
                          bool *defer, bool *mdead)
{
    bool live = true, live_after_next = true;
    for (unsigned k = n; k-- > 0;) {
        bool member = gp && k < JIT_BLOCK_MAX && gp->member[k] >= 0;
        int fe =
            member ? member_effect(&ins[k]) : flag_effect(&ins[k], j->pure_flags, j->pure_imul);
        bool writer = fe == FL_WRITES || fe == FL_ROT || fe == FL_SHIFT;
        if (k < JIT_BLOCK_MAX) {
            dead[k] = use_dead && writer && !live;
            /* read only by the next instruction, a CMOVcc/SETcc that takes them from the host */
            hdead[k] = use_dead && !member && fe == FL_WRITES && !dead[k] && k + 1 < n &&
                       host_producer(&ins[k]) && host_reader(&ins[k + 1]) && !live_after_next;
            defer[k] = use_dead && !dead[k] && !hdead[k] && k + 1 < n && recomputable(&ins[k]) &&
                       mem_flag_writer(&ins[k + 1]);
            /* a memory flag writer counts as a reader (its fault shows the flags before it),
             * but its own flags may be dead; a member's always may */
            mdead[k] = use_dead && !live && mem_flag_writer(&ins[k]) && (fe == FL_READS || member);
        }
        live_after_next = live;
        if (fe == FL_WRITES)
            live = false;
        else if (fe == FL_READS || fe == FL_SHIFT)
            live = true;
    }
}

static int translate(struct bt_jit *j, struct bt_cpu *c, const struct bt_insn *ins, unsigned n,
                     void **slot, uint64_t gpa, bool use_dead, bool use_groups)
{
    if (j->size - j->used < JIT_BLOCK_RESERVE || j->ntbs >= JIT_MAX_TBS) return -ENOSPC;
    struct emit e = {.buf = j->rw,
                     .pos = j->used,
                     .cap = j->used + JIT_BLOCK_RESERVE,
                     .cache = j->enc_cache,
                     .jit = j,
                     .rsi_grp = -1};
    const size_t start = e.pos;
    const unsigned page_off = (unsigned)(gpa & 0xfff);
    const bool b32 = c->code_bits != 64;
    unsigned pend = 0, native = 0, inline_mem = 0;
    bool ended = false;
    int64_t off = 0;
    j->attention = c->lapic ? lapic_attention_flag(c->lapic) : NULL;
    j->user = c->cpl == 3;
    j->mid_lookup = false;
    j->nmid = 0;
    /* dead flags (flag_liveness, per body) */
    bool dead[JIT_BLOCK_MAX] = {false}, hdead[JIT_BLOCK_MAX] = {false};
    bool defer[JIT_BLOCK_MAX] = {false}; /* deferred flags (recomputable) */
    bool mdead[JIT_BLOCK_MAX] = {false}; /* a memory flag writer's flags unseen (mflags_dead) */
    /* the slow paths of inline memory accesses, emitted after the block */
    struct slow_path {
        const struct bt_insn *i;
        int64_t off;
        unsigned pend, n;
        size_t back, jumps[8];
        bool hflags;                  /* the fast path ends with the guest's flags in the host's */
        const struct bt_insn *recomp; /* deferred flags: their producer, right before */
    } sps[JIT_BLOCK_MAX];
    unsigned nsp = 0;
    if (n > JIT_BLOCK_MAX) return (*slot = JIT_UNTRANSLATABLE), 1;
    if (j->xlen && (b32 || j->xlen > 15 || n != 1)) return (*slot = JIT_UNTRANSLATABLE), 1;
    E2(&e, MOV, R(R12), M(HCPU, C_RIP, 8));
    if (e.pos - start != JIT_ENTRY2) e.fail = true; /* chained jumps enter after it */
    if (j->prof) { /* this translation's run count (the host flags are not the guest's here) */
        E2(&e, MOV, R(HRAX), I((int64_t)(uintptr_t)&j->prof->runs[j->ntbs]));
        E1(&e, INC, M(HRAX, 0, 8));
    }
    /* probe groups: a prologue, the grouped body, then the plain body its failures run */
    struct grp_plan gp;
    /* user code only, unless LOOKOUT_BT_GROUPS=all: kernel blocks are many and most run few
     * times, and the second body doubles their translation time (boot to ready was 13 % slower
     * with groups in every block) */
    bool groups = !b32 && !j->xlen && j->groups && (j->user || j->groups_all) && use_groups &&
                  grp_plan_make(ins, n, c->stack_bits, &gp);
    size_t gfail[GRP_MAX];
    int ngf = 0;
    for (unsigned g = 0; groups && g < gp.ng; g++) {
        struct bt_operand o = {.kind = BT_OPK_MEM,
                               .size = 1,
                               .seg = SEG_DS,
                               .base = gp.g[g].base,
                               .index = BT_NOREG,
                               .scale = 1,
                               .disp = gp.g[g].lo};
        mem_lin(&e, &o, 0);
        probe_emit(&e, (unsigned)(gp.g[g].hi - gp.g[g].lo), gp.g[g].write, j->user, j->bmi2, gfail,
                   &ngf);
        E2(&e, LEA, R(HRSI), MX(HRSI, HRDX, 1, 0, 8));
        E2(&e, MOV, M(HCPU, C_GRPH(g), 8), R(HRSI));
        e.rsi_grp = (int)g; /* the last group's address stays in RSI for its first member */
        e.rsi_at = e.pos;
    }
    for (int ver = groups ? 0 : 1; ver < 2; ver++) {
        if (ver == 1) { /* the plain body, from the block's start */
            for (int q = 0; q < ngf; q++)
                patch(&e, gfail[q], e.pos);
            if (groups) { /* counted (the host flags are not the guest's here) */
                E2(&e, MOV, R(HRAX), I((int64_t)(uintptr_t)&j->st.grp_fallbacks));
                E1(&e, INC, M(HRAX, 0, 8));
            }
            pend = native = inline_mem = 0;
            ended = false;
            off = 0;
            nsp = 0;
            e.hflags = e.hfresh = e.hfresh_prev = e.sse_ok = false;
        }
        e.grp = ver == 0 ? &gp : NULL;
        if (ver == 1) e.rsi_grp = -1;
        flag_liveness(j, ins, n, use_dead, ver == 0 ? &gp : NULL, dead, hdead, defer, mdead);
        e.hz = 0; /* nothing known about the slots' upper halves at the block's start */
        j->mid_lookup = false;
        j->nmid = 0;
        if (j->xlen) crossing_check(&e, j, 4096 - page_off);
        const struct bt_insn *deferred = NULL; /* the producer before whose flags are deferred */
        for (unsigned k = 0; k < n; k++) {
            const struct bt_insn *i = &ins[k];
            bool last = k + 1 == n;
            e.grp_k = k;
            e.member_at = false;
            size_t slow[8];
            int nslow = 0;
            /* A native form Zydis cannot encode is undone (e.pos back to mark) and the instruction
             * takes the handler path; the block stays translated. */
            size_t mark = e.pos;
            unsigned pend0 = pend, nsp0 = nsp;
            bool sse_ok0 = e.sse_ok;
            bool hflags_in = e.hflags;
            e.hflags = false;
            e.hfresh_prev = e.hfresh;
            e.hfresh = false;
            enum { HANDLER, SIMPLE, MEM, BRANCH, CALLRET } how = HANDLER;
            if (k > 0 && hdead[k - 1] && !e.hfresh_prev) /* its producer did not leave them */
                return translate(j, c, ins, n, slot, gpa, false, use_groups);
            e.mflags_dead = k < JIT_BLOCK_MAX && mdead[k];
            unsigned grp_used0 = e.grp_used;
            if (native_simple(&e, i, off, k < JIT_BLOCK_MAX && (dead[k] || hdead[k] || defer[k]))) {
                how = SIMPLE;
            } else {
                if (native_mem(&e, j, i, off, b32, c->stack_bits, slow, &nslow))
                    how = MEM;
                else if (native_forms(&e, j, i, off, b32, c->stack_bits, slow, &nslow))
                    how = MEM;
                else if (last && native_indirect(&e, j, i, off, b32, c->stack_bits, c->cpl, &pend))
                    how = CALLRET;
                else if (last && (e.hflags = hflags_in, /* the producer right before it */
                                  native_branch(&e, j, i, off, b32, &pend, page_off)))
                    how = BRANCH;
                else if (last &&
                         native_callret(&e, j, i, off, b32, c->stack_bits, c->cpl, &pend, page_off))
                    how = CALLRET;
            }
            if (e.fail) {
                j->st.encode_fallbacks++;
                e.fail = false;
                e.pos = mark;
                e.rsi_grp = -1; /* its offset may be in the code undone */
                pend = pend0;
                nsp = nsp0;
                e.sse_ok = sse_ok0;
                how = HANDLER;
            }
            if (how != SIMPLE && how != MEM) e.hflags = false;
            if (how != SIMPLE) e.hfresh = false;
            /* the reader of an unstored producer's flags must have taken them from the host (only
             * native_simple's CMOVcc/SETcc do) */
            if (k > 0 && hdead[k - 1] && how != SIMPLE)
                return translate(j, c, ins, n, slot, gpa, false, use_groups);
            /* deferred flags need this operation's slow path to make them */
            if (deferred && how != MEM)
                return translate(j, c, ins, n, slot, gpa, false, use_groups);
            /* the dead-flag pass took this planned member for one that cannot fault: it must
             * have taken its group's addend */
            if (use_dead && e.grp && k < JIT_BLOCK_MAX && gp.member[k] >= 0 &&
                member_effect(i) != FL_READS && (how != MEM || e.grp_used == grp_used0))
                return translate(j, c, ins, n, slot, gpa, false, use_groups);
            switch (how) {
            case SIMPLE: pend++, native++; break;
            case MEM: {
                /* fast path done: the instruction counts like a register form (pending).  Its slow
                 * path, emitted after the block, runs the handler for the whole instruction with
                 * icount exact and comes back here with the same count pending. */
                struct slow_path *sp = &sps[nsp++];
                sp->i = i;
                sp->off = off;
                sp->pend = pend;
                sp->back = e.pos;
                sp->n = (unsigned)nslow;
                sp->hflags = e.hflags;
                sp->recomp = deferred;
                memcpy(sp->jumps, slow, sizeof(slow));
                pend++;
                native++;
                inline_mem++;
                break;
            }
            case BRANCH:
            case CALLRET:
                native++;
                inline_mem += how == CALLRET;
                ended = true;
                break;
            case HANDLER:
                /* A flag-neutral instruction (flag_effect) that ends up here can leave the block
                 * after its handler (after_handler_checks) with dead flags not stored: translate
                 * again without the dead-flag pass (an encoding Zydis refused, say). */
                int fe = flag_effect(i, j->pure_flags, j->pure_imul);
                if (use_dead && (fe == FL_NONE || fe == FL_ROT || hdead[k]))
                    return translate(j, c, ins, n, slot, gpa, false, use_groups);
                hstat_count(&e, i, false);
                e.sse_ok = false;
                if (last) {
                    call_handler(&e, i, off, b32, &pend);
                    if (b32)
                        jto(&e, ZYDIS_MNEMONIC_JMP, j->exit_off);
                    else if (i->mnemonic == ZYDIS_MNEMONIC_CALL && i->op[0].kind == BT_OPK_IMM &&
                             (i->attr_lo & BT_ATTR_RELATIVE))
                        /* a direct CALL: its handler pushed and jumped (or faulted); the target
                         * is known, so it chains like a direct JMP */
                        leave_direct(&e, j, page_off, off + i->len + i->op[0].disp, b32, 0);
                    else
                        lookup_exit(&e, j, true, false); /* the successor is known only now */
                    ended = true;
                } else {
                    /* only REP string instructions branch from the middle of a block (a chunk
                     * done, the instruction re-runs): a lookup stub for them alone */
                    j->mid_lookup = !b32 && (i->pfx & (BT_PFX_REP | BT_PFX_REPNE));
                    if (j->mid_lookup) {
                        call_handler(&e, i, off, b32, &pend);
                        after_handler_checks(&e, j);
                    } else {
                        call_handler_shared(&e, j, i, off, b32, &pend);
                    }
                    j->mid_lookup = false;
                }
                break;
            }
            e.hz = how == HANDLER ? 0 : hz_after(i, e.hz);
            /* a producer that went to its handler stored its flags */
            deferred = k < JIT_BLOCK_MAX && defer[k] && how == SIMPLE ? i : NULL;
            off += i->len;
        }
        if (!ended) {
            /* the block stopped at its size limit or a page end: continue after it */
            leave_direct(&e, j, page_off, off, b32, pend);
            pend = 0;
        }
        for (unsigned q = 0; q < nsp; q++) {
            struct slow_path *sp = &sps[q];
            for (unsigned k = 0; k < sp->n; k++)
                patch(&e, sp->jumps[k], e.pos);
            if (sp->recomp) recompute_flags(&e, sp->recomp);
            unsigned p = sp->pend;
            hstat_count(&e, sp->i, true);
            call_handler_shared(&e, j, sp->i, sp->off, b32, &p);
            icount_op(&e, sp->pend + 1, true);
            if (sp->hflags) { /* what the fast path leaves: the guest's six flags in the host's */
                if (lahf_layout(&e)) {
                    load_guest_flags(&e); /* clobbers EAX, ECX: scratch here */
                } else {
                    E2(&e, MOV, R(HRAX), R(FLAGS_REG));
                    E2(&e, AND, R(HEAX), I(BT_ARITH_FLAGS | 2)); /* nothing else (DF, TF, AC) */
                    E1(&e, PUSH, R(HRAX));
                    E0(&e, POPFQ);
                }
            }
            jto(&e, ZYDIS_MNEMONIC_JMP, sp->back);
        }
        if (j->nmid) { /* a handler in the middle branched: look its target up like a block end */
            size_t at = e.pos;
            lookup_exit(&e, j, true, false);
            for (unsigned k = 0; k < j->nmid; k++)
                patch(&e, j->mid_jumps[k], at);
        }
    } /* ver */
    e.grp = NULL;
    j->mid_lookup = false;
    if (e.fail && groups) /* the two bodies did not fit: one, without groups */
        return translate(j, c, ins, n, slot, gpa, use_dead, false);
    if (e.fail) {
        log_debug("translator: block of %u instructions at %#llx left to the interpreter", n,
                  (unsigned long long)c->s.rip);
        *slot = JIT_UNTRANSLATABLE;
        return 1;
    }
    j->used = ALIGN_UP(e.pos, 16);
    j->st.blocks_translated++;
    j->st.insns_native += native;
    j->st.insns_called += n - native;
    j->st.insns_inline_mem += inline_mem;
    if (groups) {
        j->st.grp_blocks++;
        j->st.grp_members += e.grp_used;
    }
    struct jit_tb *tb = &j->tbs[j->ntbs++];
    tb->gpa = gpa;
    tb->entry = (uint32_t)start;
    tb->links_in = 0;
    tb->code_bits = c->code_bits;
    tb->stack_bits = c->stack_bits;
    tb->user = j->user;
    if (j->prof)
        j->prof->tb[j->ntbs - 1] = (struct jit_prof){
            .gpa = gpa,
            .rip = c->s.rip,
            .guest = n,
            .host = prof_count(j, j->rw, start, e.pos - start, false),
            .entry = (uint32_t)start,
            .gen = j->st.flushes,
            .bits = c->code_bits,
            .user = j->user,
        };
    *slot = tb;
    return 0;
}

/* The block about to run is the direct successor of the last chainable exit if nothing else ran
 * or changed in between (no event delivered, same address space and privilege): patch the exit's
 * chain jump to it. */
static void try_chain(struct bt_jit *j, struct bt_cpu *c, struct jit_tb *tb)
{
    if (!j->exit_valid || j->exit_rip != c->s.rip || j->exit_icount != c->icount ||
        j->exit_cr3 != c->s.cr3 || j->exit_cpl != c->cpl || j->exit_code_bits != c->code_bits ||
        j->exit_stack_bits != c->stack_bits || tb->code_bits != c->code_bits ||
        tb->stack_bits != c->stack_bits || j->nlinks >= JIT_MAX_LINKS)
        return;
    j->exit_valid = false;
    uint32_t pe = (uint32_t)j->last_exit, imm = (uint32_t)(j->last_exit >> 32);
    int32_t now;
    memcpy(&now, j->rw + pe - 4, 4);
    /* a same-page exit already chained here, left because the budget was spent: no second link
     * (a cross-page one is patched again whenever it records: its page may have changed) */
    if (!imm && now && (int64_t)pe + now == (int64_t)tb->entry + JIT_ENTRY2) return;
    if (imm) {
        /* cross-page exit: the chained translation's page, checked against the TLB first */
        uint64_t page = tb->gpa & ~0xfffull;
        memcpy(j->rw + imm, &page, 8);
        j->st.chains_cross++;
    }
    int32_t rel = (int32_t)((int64_t)tb->entry + JIT_ENTRY2 - (int64_t)pe);
    memcpy(j->rw + pe - 4, &rel, 4);
    j->links[j->nlinks] = (struct jit_link){.patch_end = pe, .next = tb->links_in};
    tb->links_in = ++j->nlinks;
    j->st.chains++;
}

int bt_jit_run(struct bt_cpu *c, const struct bt_insn *insns, unsigned n, void **slot, uint64_t gpa,
               uint64_t end, const uint8_t *xbytes, unsigned xlen)
{
    struct bt_jit *j = c->jit;
    if (!j || !j->enabled || !j->pending || *slot == JIT_UNTRANSLATABLE || n == 0) return 1;
    if (j->nlinks >= JIT_MAX_LINKS) {
        j->st.flushes_full++;
        return -ENOSPC;
    }
    uintptr_t v = (uintptr_t)*slot;
    if (v < 2 + JIT_HOT_MAX) {
        unsigned seen = v ? (unsigned)v - 1 : 0;
        if (seen < j->hot_runs) {
            *slot = (void *)(uintptr_t)(seen + 2); /* still cold: count and interpret */
            j->exit_valid = false;
            return 1;
        }
        *slot = NULL;
        if (!j->rw && cache_map(j, c) < 0) {
            log_warn("%s; running interpreted", err_msg());
            j->enabled = false;
            return 1;
        }
        j->xbytes = xbytes;
        j->xlen = xlen;
        int r = translate(j, c, insns, n, slot, gpa, true, true);
        if (r == -ENOSPC) j->st.flushes_full++;
        if (r) return r;
    }
    struct jit_tb *tb = *slot;
    /* made for the other privilege class (its probes test the other fast tags): the same
     * physical code run at CPL 0 and 3 is rare enough to interpret at the second one */
    if (tb->user != (c->cpl == 3)) {
        j->exit_valid = false;
        j->st.cpl_mismatch++;
        return 1;
    }
    if (j->ndrop) lookup_apply_drops(j);
    try_chain(j, c, tb);
    if (c->code_bits == 64) lookup_fill(j, c, tb);
    j->st.runs++;
    __atomic_store_n(&c->jit_chain_end, end >= JIT_BLOCK_MAX ? end - JIT_BLOCK_MAX : 0,
                     __ATOMIC_SEQ_CST);
    /* a poke between the loop's checks and the store above (see bt_jit_poke) */
    if (atomic_load(&c->kicked) || atomic_load(j->pending) ||
        (j->attention && atomic_load(j->attention)))
        c->jit_chain_end = 0;
    j->last_exit = 0;
    j->enter(c, j->rx + tb->entry, j);
    j->exit_valid = j->last_exit != 0;
    if (j->exit_valid) {
        j->st.exits_unchained++;
        j->exit_rip = c->s.rip;
        j->exit_icount = c->icount;
        j->exit_cr3 = c->s.cr3;
        j->exit_cpl = c->cpl;
        j->exit_code_bits = c->code_bits;
        j->exit_stack_bits = c->stack_bits;
    }
    return 0;
}
