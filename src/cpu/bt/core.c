/* The software CPU's core: Zydis decoding into struct bt_insn, the handler dispatch table, the
 * decoded-block cache and the interpreter loop, plus the operand helpers every handler uses.
 *
 * Trust: instruction bytes, registers and addresses come from the guest.  Bytes are fetched only
 * through the soft MMU (bt_fetch), decoded by Zydis in the mode the guest is in, and anything Zydis
 * rejects or no handler implements becomes the exception hardware raises (#UD, or #GP for a
 * too-long instruction).  Effective addresses wrap at the address size; every memory access goes
 * through bt_seg_linear() and the MMU, which apply the segment and paging checks.
 *
 * Decoded blocks are keyed by the guest-physical address of their first byte and the decoding mode;
 * they never cross a page, so one watched page covers a block, and a write to it
 * (bt_watch_code_page
 * -> bt_cache_invalidate_page) drops every block of the page before the next instruction runs. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/bt/bt.h"
#include "cpu/bt/cfi.h"
#include "cpu/bt/intops.h"
#include "cpu/bt/jit.h"
#include "util/log.h"

/* ---- decoder and dispatch table ---------------------------------------------------------- */

static ZydisDecoder decoders[3][3]; /* [code 16/32/64][stack 16/32/64] */
static bt_handler dispatch[BT_MNEM_COUNT];
static pthread_once_t core_once = PTHREAD_ONCE_INIT;
/* Mnemonics that end a decoded block: control transfers and anything that may change the mode
 * bits the block was decoded for (CS, SS, CR0, EFER) or the interrupt state. */
static uint8_t ends_block[BT_MNEM_COUNT];

extern const struct bt_handler_def __start_bt_handlers[] __attribute__((weak));
extern const struct bt_handler_def __stop_bt_handlers[] __attribute__((weak));
extern const struct bt_handler_def __start_bt_handlers_dflt[] __attribute__((weak));
extern const struct bt_handler_def __stop_bt_handlers_dflt[] __attribute__((weak));

static void handler_ud(struct bt_cpu *c, const struct bt_insn *i)
{
    c->ud_unhandled++;
    log_debug("software CPU: no handler for %s at %#llx, raising #UD",
              i->mnemonic <= ZYDIS_MNEMONIC_MAX_VALUE
                  ? ZydisMnemonicGetString((ZydisMnemonic)i->mnemonic)
                  : "pseudo",
              (unsigned long long)c->insn_rip);
    bt_ud(c);
}

/* A decodable but invalid encoding (LOCK on a register destination, VEX without AVX, ...). */
static void handler_invalid(struct bt_cpu *c, const struct bt_insn *i)
{
    bt_ud(c);
}

static void handler_too_long(struct bt_cpu *c, const struct bt_insn *i)
{
    bt_gp0(c);
}

static void register_section(const struct bt_handler_def *a, const struct bt_handler_def *b,
                             bool is_default)
{
    for (const struct bt_handler_def *d = a; d && d < b; d++) {
        if (d->mnemonic >= BT_MNEM_COUNT || !d->fn) {
            log_err("software CPU: bad handler registration (mnemonic %u)", d->mnemonic);
            continue;
        }
        if (is_default) {
            if (!dispatch[d->mnemonic]) dispatch[d->mnemonic] = d->fn;
            continue;
        }
        if (dispatch[d->mnemonic] && dispatch[d->mnemonic] != d->fn)
            log_err("software CPU: two handlers for mnemonic %u (%s); keeping the first",
                    d->mnemonic,
                    d->mnemonic <= ZYDIS_MNEMONIC_MAX_VALUE
                        ? ZydisMnemonicGetString((ZydisMnemonic)d->mnemonic)
                        : "pseudo");
        else
            dispatch[d->mnemonic] = d->fn;
    }
}

static void core_global_init(void)
{
    static const ZydisMachineMode mm[3] = {
        ZYDIS_MACHINE_MODE_LEGACY_16, ZYDIS_MACHINE_MODE_LEGACY_32, ZYDIS_MACHINE_MODE_LONG_64};
    static const ZydisStackWidth sw[3] = {ZYDIS_STACK_WIDTH_16, ZYDIS_STACK_WIDTH_32,
                                          ZYDIS_STACK_WIDTH_64};
    for (int m = 0; m < 3; m++) {
        for (int s = 0; s < 3; s++) {
            ZydisDecoder *d = &decoders[m][s];
            /* 64-bit code always has a 64-bit stack; the others take SS.B */
            ZydisDecoderInit(d, mm[m], m == 2 ? ZYDIS_STACK_WIDTH_64 : sw[s]);
            /* The CPU model (x86/cpuid.h) has none of these extensions: their encodings must
             * decode as what pre-extension hardware executes (F3 0F BC is BSF, ENDBR64 a NOP). */
            ZydisDecoderEnableMode(d, ZYDIS_DECODER_MODE_MPX, ZYAN_FALSE);
            ZydisDecoderEnableMode(d, ZYDIS_DECODER_MODE_CET, ZYAN_FALSE);
            ZydisDecoderEnableMode(d, ZYDIS_DECODER_MODE_LZCNT, ZYAN_FALSE);
            ZydisDecoderEnableMode(d, ZYDIS_DECODER_MODE_TZCNT, ZYAN_FALSE);
            ZydisDecoderEnableMode(d, ZYDIS_DECODER_MODE_CLDEMOTE, ZYAN_FALSE);
            ZydisDecoderEnableMode(d, ZYDIS_DECODER_MODE_WBNOINVD, ZYAN_FALSE);
        }
    }
    register_section(__start_bt_handlers, __stop_bt_handlers, false);
    register_section(__start_bt_handlers_dflt, __stop_bt_handlers_dflt, true);

    static const uint16_t enders[] = {
        ZYDIS_MNEMONIC_JMP,      ZYDIS_MNEMONIC_CALL,    ZYDIS_MNEMONIC_RET,
        ZYDIS_MNEMONIC_IRET,     ZYDIS_MNEMONIC_IRETD,   ZYDIS_MNEMONIC_IRETQ,
        ZYDIS_MNEMONIC_INT,      ZYDIS_MNEMONIC_INT1,    ZYDIS_MNEMONIC_INT3,
        ZYDIS_MNEMONIC_INTO,     ZYDIS_MNEMONIC_SYSCALL, ZYDIS_MNEMONIC_SYSRET,
        ZYDIS_MNEMONIC_SYSENTER, ZYDIS_MNEMONIC_SYSEXIT, ZYDIS_MNEMONIC_HLT,
        ZYDIS_MNEMONIC_LOOP,     ZYDIS_MNEMONIC_LOOPE,   ZYDIS_MNEMONIC_LOOPNE,
        ZYDIS_MNEMONIC_JCXZ,     ZYDIS_MNEMONIC_JECXZ,   ZYDIS_MNEMONIC_JRCXZ,
        ZYDIS_MNEMONIC_JB,       ZYDIS_MNEMONIC_JBE,     ZYDIS_MNEMONIC_JL,
        ZYDIS_MNEMONIC_JLE,      ZYDIS_MNEMONIC_JNB,     ZYDIS_MNEMONIC_JNBE,
        ZYDIS_MNEMONIC_JNL,      ZYDIS_MNEMONIC_JNLE,    ZYDIS_MNEMONIC_JNO,
        ZYDIS_MNEMONIC_JNP,      ZYDIS_MNEMONIC_JNS,     ZYDIS_MNEMONIC_JNZ,
        ZYDIS_MNEMONIC_JO,       ZYDIS_MNEMONIC_JP,      ZYDIS_MNEMONIC_JS,
        ZYDIS_MNEMONIC_JZ,       ZYDIS_MNEMONIC_POPF,    ZYDIS_MNEMONIC_POPFD,
        ZYDIS_MNEMONIC_POPFQ,    ZYDIS_MNEMONIC_STI,     ZYDIS_MNEMONIC_LMSW,
        ZYDIS_MNEMONIC_CLTS,     ZYDIS_MNEMONIC_WRMSR,   ZYDIS_MNEMONIC_RSM,
        ZYDIS_MNEMONIC_LSS,      ZYDIS_MNEMONIC_UD0,     ZYDIS_MNEMONIC_UD1,
        ZYDIS_MNEMONIC_UD2,      ZYDIS_MNEMONIC_INVLPG,  ZYDIS_MNEMONIC_MOV, /* see below */
        ZYDIS_MNEMONIC_POP,      ZYDIS_MNEMONIC_XSETBV,  ZYDIS_MNEMONIC_LIDT,
        ZYDIS_MNEMONIC_LGDT,     ZYDIS_MNEMONIC_LTR,     ZYDIS_MNEMONIC_LLDT,
        ZYDIS_MNEMONIC_SWAPGS,   ZYDIS_MNEMONIC_PAUSE,   ZYDIS_MNEMONIC_IN,
        ZYDIS_MNEMONIC_OUT,      ZYDIS_MNEMONIC_INSB,    ZYDIS_MNEMONIC_INSW,
        ZYDIS_MNEMONIC_INSD,     ZYDIS_MNEMONIC_OUTSB,   ZYDIS_MNEMONIC_OUTSW,
        ZYDIS_MNEMONIC_OUTSD,    ZYDIS_MNEMONIC_CPUID,
    };
    for (size_t k = 0; k < ARRAY_SIZE(enders); k++)
        ends_block[enders[k]] = 1;
    /* MOV and POP end a block only in their segment / control register forms (decided at decode
     * time: ends_block 1 means "ends", 2 means "ends if the destination is not a GPR/memory") */
    ends_block[ZYDIS_MNEMONIC_MOV] = 0;
    ends_block[ZYDIS_MNEMONIC_POP] = 2;
    for (int k = BT_MNEM_MOV_CR; k < BT_MNEM_COUNT; k++)
        ends_block[k] = 1;
}

bool bt_has_handler(unsigned mnemonic)
{
    pthread_once(&core_once, core_global_init);
    return mnemonic < BT_MNEM_COUNT && dispatch[mnemonic] != NULL;
}

/* ---- decoding ----------------------------------------------------------------------------- */

static void map_reg(ZydisRegister r, uint8_t *rclass, uint8_t *idx)
{
    if (r >= ZYDIS_REGISTER_AL && r <= ZYDIS_REGISTER_BL) {
        *rclass = BT_RC_GPR, *idx = r - ZYDIS_REGISTER_AL;
    } else if (r >= ZYDIS_REGISTER_AH && r <= ZYDIS_REGISTER_BH) {
        *rclass = BT_RC_GPR8H, *idx = r - ZYDIS_REGISTER_AH;
    } else if (r >= ZYDIS_REGISTER_SPL && r <= ZYDIS_REGISTER_R15B) {
        *rclass = BT_RC_GPR, *idx = 4 + r - ZYDIS_REGISTER_SPL;
    } else if (r >= ZYDIS_REGISTER_AX && r <= ZYDIS_REGISTER_R15W) {
        *rclass = BT_RC_GPR, *idx = r - ZYDIS_REGISTER_AX;
    } else if (r >= ZYDIS_REGISTER_EAX && r <= ZYDIS_REGISTER_R15D) {
        *rclass = BT_RC_GPR, *idx = r - ZYDIS_REGISTER_EAX;
    } else if (r >= ZYDIS_REGISTER_RAX && r <= ZYDIS_REGISTER_R15) {
        *rclass = BT_RC_GPR, *idx = r - ZYDIS_REGISTER_RAX;
    } else if (r >= ZYDIS_REGISTER_ES && r <= ZYDIS_REGISTER_GS) {
        *rclass = BT_RC_SEG, *idx = r - ZYDIS_REGISTER_ES;
    } else if (r >= ZYDIS_REGISTER_CR0 && r <= ZYDIS_REGISTER_CR15) {
        *rclass = BT_RC_CR, *idx = r - ZYDIS_REGISTER_CR0;
    } else if (r >= ZYDIS_REGISTER_DR0 && r <= ZYDIS_REGISTER_DR15) {
        *rclass = BT_RC_DR, *idx = r - ZYDIS_REGISTER_DR0;
    } else if (r >= ZYDIS_REGISTER_XMM0 && r <= ZYDIS_REGISTER_XMM31) {
        *rclass = BT_RC_XMM, *idx = r - ZYDIS_REGISTER_XMM0;
    } else if (r >= ZYDIS_REGISTER_MM0 && r <= ZYDIS_REGISTER_MM7) {
        *rclass = BT_RC_MMX, *idx = r - ZYDIS_REGISTER_MM0;
    } else if (r >= ZYDIS_REGISTER_ST0 && r <= ZYDIS_REGISTER_ST7) {
        *rclass = BT_RC_ST, *idx = r - ZYDIS_REGISTER_ST0;
    } else {
        *rclass = BT_RC_OTHER, *idx = 0;
    }
}

/* GPR index of a base/index register, BT_REG_RIP, or BT_NOREG */
static uint8_t map_addr_reg(ZydisRegister r)
{
    uint8_t rc, idx;
    if (r == ZYDIS_REGISTER_NONE) return BT_NOREG;
    if (r == ZYDIS_REGISTER_RIP || r == ZYDIS_REGISTER_EIP || r == ZYDIS_REGISTER_IP)
        return BT_REG_RIP;
    map_reg(r, &rc, &idx);
    return rc == BT_RC_GPR ? idx : BT_NOREG;
}

static uint8_t map_seg(ZydisRegister r)
{
    if (r >= ZYDIS_REGISTER_ES && r <= ZYDIS_REGISTER_GS) return (uint8_t)(r - ZYDIS_REGISTER_ES);
    return SEG_DS;
}

static uint64_t size_mask(unsigned bits)
{
    return bits >= 64 ? ~0ull : (1ull << bits) - 1;
}

/* Converts Zydis's result into the compact form.  Returns 0 or -EINVAL (not an instruction). */
static int convert(const ZydisDecodedInstruction *z, const ZydisDecodedOperand *zo,
                   unsigned code_bits, struct bt_insn *out)
{
    memset(out, 0, sizeof(*out));
    out->mnemonic = (uint16_t)z->mnemonic;
    out->len = z->length;
    out->opsize = z->operand_width;
    out->addrsize = z->address_width;
    out->opcode = z->opcode;
    out->opcode_map = (uint8_t)z->opcode_map;
    out->modrm_reg = z->raw.modrm.reg;
    out->attr_lo = (uint16_t)z->attributes;
    if (z->attributes & ZYDIS_ATTRIB_HAS_LOCK) out->pfx |= BT_PFX_LOCK;
    if (z->attributes & (ZYDIS_ATTRIB_HAS_REP | ZYDIS_ATTRIB_HAS_REPE)) out->pfx |= BT_PFX_REP;
    if (z->attributes & ZYDIS_ATTRIB_HAS_REPNE) out->pfx |= BT_PFX_REPNE;
    if (z->attributes & ZYDIS_ATTRIB_HAS_SEGMENT) out->pfx |= BT_PFX_SEG;

    out->dseg = SEG_DS;
    if (z->attributes & ZYDIS_ATTRIB_HAS_SEGMENT_FS)
        out->dseg = SEG_FS;
    else if (z->attributes & ZYDIS_ATTRIB_HAS_SEGMENT_GS)
        out->dseg = SEG_GS;
    else if (code_bits != 64) {
        if (z->attributes & ZYDIS_ATTRIB_HAS_SEGMENT_ES)
            out->dseg = SEG_ES;
        else if (z->attributes & ZYDIS_ATTRIB_HAS_SEGMENT_CS)
            out->dseg = SEG_CS;
        else if (z->attributes & ZYDIS_ATTRIB_HAS_SEGMENT_SS)
            out->dseg = SEG_SS;
    }

    unsigned n = MIN(z->operand_count_visible, 4u);
    out->nops = (uint8_t)n;
    bool mov_special = false;
    for (unsigned k = 0; k < n; k++) {
        const ZydisDecodedOperand *o = &zo[k];
        struct bt_operand *b = &out->op[k];
        b->size = o->size / 8 > 255 ? 0 : (uint8_t)(o->size / 8);
        b->base = b->index = BT_NOREG;
        switch (o->type) {
        case ZYDIS_OPERAND_TYPE_REGISTER:
            b->kind = BT_OPK_REG;
            b->zreg = (uint16_t)o->reg.value;
            map_reg(o->reg.value, &b->rclass, &b->reg);
            if (b->rclass == BT_RC_CR || b->rclass == BT_RC_DR || b->rclass == BT_RC_SEG)
                mov_special = true;
            break;
        case ZYDIS_OPERAND_TYPE_MEMORY:
            b->kind = o->mem.type == ZYDIS_MEMOP_TYPE_AGEN ? BT_OPK_AGEN : BT_OPK_MEM;
            if (b->kind == BT_OPK_AGEN) b->size = 0;
            b->seg = map_seg(o->mem.segment);
            b->base = map_addr_reg(o->mem.base);
            b->index = map_addr_reg(o->mem.index);
            b->scale = o->mem.scale ? o->mem.scale : 1;
            b->disp = o->mem.disp.value;
            if (b->base == BT_REG_RIP) b->disp += z->length;
            break;
        case ZYDIS_OPERAND_TYPE_IMMEDIATE:
            b->kind = BT_OPK_IMM;
            if (o->imm.is_relative)
                b->disp = o->imm.value.s;
            else if (o->imm.is_signed)
                b->disp = (int64_t)(o->imm.value.u & size_mask(z->operand_width));
            else
                b->disp = (int64_t)o->imm.value.u;
            break;
        case ZYDIS_OPERAND_TYPE_POINTER:
            b->kind = BT_OPK_PTR;
            b->sel = o->ptr.segment;
            b->disp = o->ptr.offset;
            break;
        default: b->kind = BT_OPK_NONE; break;
        }
    }

    /* Route encodings that share a Zydis mnemonic with another family (bt.h pseudo mnemonics) */
    switch (z->mnemonic) {
    case ZYDIS_MNEMONIC_MOVSD:
        if (z->opcode_map == ZYDIS_OPCODE_MAP_DEFAULT) out->mnemonic = BT_MNEM_MOVSD_STR;
        break;
    case ZYDIS_MNEMONIC_CMPSD:
        if (z->opcode_map == ZYDIS_OPCODE_MAP_DEFAULT) out->mnemonic = BT_MNEM_CMPSD_STR;
        break;
    case ZYDIS_MNEMONIC_MOV:
        if (mov_special) {
            if (out->op[0].rclass == BT_RC_CR || out->op[1].rclass == BT_RC_CR)
                out->mnemonic = BT_MNEM_MOV_CR;
            else if (out->op[0].rclass == BT_RC_DR || out->op[1].rclass == BT_RC_DR)
                out->mnemonic = BT_MNEM_MOV_DR;
            else
                out->mnemonic = BT_MNEM_MOV_SEG;
        }
        break;
    case ZYDIS_MNEMONIC_JMP:
        if (z->opcode_map == ZYDIS_OPCODE_MAP_DEFAULT &&
            (z->opcode == 0xea || (z->opcode == 0xff && z->raw.modrm.reg == 5)))
            out->mnemonic = BT_MNEM_JMP_FAR;
        break;
    case ZYDIS_MNEMONIC_CALL:
        if (z->opcode_map == ZYDIS_OPCODE_MAP_DEFAULT &&
            (z->opcode == 0x9a || (z->opcode == 0xff && z->raw.modrm.reg == 3)))
            out->mnemonic = BT_MNEM_CALL_FAR;
        break;
    case ZYDIS_MNEMONIC_RET:
        if (z->opcode == 0xca || z->opcode == 0xcb) out->mnemonic = BT_MNEM_RET_FAR;
        break;
    default: break;
    }

    if (z->attributes & (ZYDIS_ATTRIB_HAS_VEX | ZYDIS_ATTRIB_HAS_EVEX | ZYDIS_ATTRIB_HAS_XOP |
                         ZYDIS_ATTRIB_HAS_MVEX))
        out->fn = handler_invalid; /* no AVX/XOP in the CPU model */
    else
        out->fn = dispatch[out->mnemonic] ? dispatch[out->mnemonic] : handler_ud;
    return 0;
}

static const ZydisDecoder *decoder_for(unsigned code_bits, unsigned stack_bits)
{
    int m = code_bits == 64 ? 2 : code_bits == 32 ? 1 : 0;
    int s = stack_bits == 64 ? 2 : stack_bits == 32 ? 1 : 0;
    return &decoders[m][s];
}

/* Decodes; returns the Zydis status.  On failure other than NO_MORE_DATA, *out becomes an
 * instruction that raises the right exception (#UD, or #GP for more than 15 bytes). */
static ZyanStatus decode(const ZydisDecoder *d, unsigned code_bits, const uint8_t *bytes, size_t n,
                         struct bt_insn *out)
{
    ZydisDecodedInstruction z;
    ZydisDecodedOperand zo[ZYDIS_MAX_OPERAND_COUNT];
    ZyanStatus st = ZydisDecoderDecodeFull(d, bytes, n, &z, zo);
    if (ZYAN_SUCCESS(st)) {
        convert(&z, zo, code_bits, out);
        return st;
    }
    memset(out, 0, sizeof(*out));
    out->len = 1;
    out->fn = st == ZYDIS_STATUS_INSTRUCTION_TOO_LONG ? handler_too_long : handler_invalid;
    out->mnemonic = ZYDIS_MNEMONIC_INVALID;
    return st;
}

int bt_decode_bytes(const uint8_t *bytes, size_t n, unsigned code_bits, struct bt_insn *out)
{
    pthread_once(&core_once, core_global_init);
    if (code_bits != 16 && code_bits != 32 && code_bits != 64) return -EINVAL;
    ZyanStatus st = decode(decoder_for(code_bits, code_bits), code_bits, bytes, n, out);
    return ZYAN_SUCCESS(st) ? 0 : -EINVAL;
}

static uint64_t rip_mask(const struct bt_cpu *c)
{
    return c->code_bits == 64 ? ~0ull : c->code_bits == 32 ? 0xffffffffull : 0xffffull;
}

/* Decodes one instruction at CS:rip without the cache (also the path for instructions that
 * cross a page and for code segments with a limit). */
static void decode_uncached(struct bt_cpu *c, uint64_t rip, struct bt_insn *out)
{
    uint64_t lin = bt_seg_linear(c, SEG_CS, rip, 1, BT_ACC_EXEC);
    bt_decode_at(c, lin, out);
    if (c->code_bits != 64)
        bt_seg_linear(c, SEG_CS, rip, out->len, BT_ACC_EXEC); /* CS limit covers every byte */
}

static bool memo_get(struct bt_cpu *c, uint64_t lin, const uint8_t *buf, size_t n,
                     struct bt_insn *out);
static void memo_put(struct bt_cpu *c, uint64_t lin, const uint8_t *buf, size_t n,
                     const struct bt_insn *insn);

void bt_decode_at(struct bt_cpu *c, uint64_t lin, struct bt_insn *out)
{
    pthread_once(&core_once, core_global_init);
    uint8_t buf[ZYDIS_MAX_INSTRUCTION_LENGTH];
    uint64_t gpa;
    size_t n = bt_fetch(c, lin, buf, sizeof(buf), &gpa);
    if (n == 0) {
        bt_read(c, lin, 1, BT_ACC_EXEC); /* raises the #PF of the fetch */
        bt_gp0(c);                       /* not reached unless the MMU disagrees with itself */
    }
    if (memo_get(c, lin, buf, n, out)) return;
    ZyanStatus st = decode(decoder_for(c->code_bits, c->stack_bits), c->code_bits, buf, n, out);
    if (st != ZYDIS_STATUS_NO_MORE_DATA) memo_put(c, lin, buf, n, out);
    if (st == ZYDIS_STATUS_NO_MORE_DATA) {
        if (n < sizeof(buf)) {
            bt_read(c, lin + n, 1,
                    BT_ACC_EXEC); /* the instruction runs into a page we cannot fetch */
        }
        out->fn = handler_invalid;
    }
}

/* ---- decoded-block cache ------------------------------------------------------------------ */

#define CACHE_INSNS   262144u
#define CACHE_BLOCKS  65536u
#define CACHE_BUCKETS 65536u /* lookup hash (gpa, mode) */
#define PAGE_BUCKETS  4096u  /* invalidation hash (page) */
#define BLOCK_MAX     64u    /* instructions per block */
#define INVAL_QUEUE   64u

struct bt_block {
    uint64_t gpa; /* of the first byte; ~0 once invalidated */
    struct bt_block *hnext, *pnext;
    uint32_t first; /* index of the first instruction in the arena */
    uint16_t ninsn;
    uint8_t mode;
    /* A block of one instruction that crosses into the next page (xlen > 0): the bytes it took
     * from that page.  Only its first page is watched; the second page's bytes are compared at
     * every entry instead (lookup, and the translation's entry check), so a write to that page
     * or another mapping of it is seen without watching it. */
    uint8_t xlen;
    uint8_t xbytes[15];
    void *jit; /* the translator's handle for this block (jit.h), NULL until translated */
};

struct bt_cache {
    struct bt_insn *insns;
    struct bt_block *blocks;
    struct bt_block **hash, **page_hash;
    uint32_t ninsns, nblocks;
    uint64_t flushes, lookups, misses;

    /* invalidations may come from other vCPU threads: queued, applied by the owner between
     * instructions */
    pthread_mutex_t lock;
    _Atomic bool pending;
    bool flush_all;
    unsigned nqueue;
    uint64_t queue[INVAL_QUEUE];

    /* direct-mapped front of the lookup hash: most lookups hit here in one probe */
    struct bt_block *fast[4096];
    /* a one-instruction block for code the cache does not hold */
    struct bt_insn scratch;
    /* the last decodings of such code (instructions crossing a page: a shell loop runs some
     * 10^6 times), keyed by their bytes and mode: decode() is a function of nothing else */
    struct uc_memo {
        uint8_t bytes[ZYDIS_MAX_INSTRUCTION_LENGTH];
        uint8_t n, code_bits, stack_bits;
        struct bt_insn insn;
    } memo[16];
    unsigned fault_depth;
    struct bt_cpu *cpu; /* owner, for the translator hooks */
};

static struct uc_memo *memo_of(struct bt_cpu *c, uint64_t lin)
{
    struct bt_cache *k = c->cache;
    return k ? &k->memo[(lin ^ (lin >> 4)) & (ARRAY_SIZE(k->memo) - 1)] : NULL;
}

static bool memo_get(struct bt_cpu *c, uint64_t lin, const uint8_t *buf, size_t n,
                     struct bt_insn *out)
{
    struct uc_memo *m = memo_of(c, lin);
    if (!m || m->n != n || m->code_bits != c->code_bits || m->stack_bits != c->stack_bits ||
        memcmp(m->bytes, buf, n) != 0)
        return false;
    *out = m->insn;
    return true;
}

static void memo_put(struct bt_cpu *c, uint64_t lin, const uint8_t *buf, size_t n,
                     const struct bt_insn *insn)
{
    struct uc_memo *m = memo_of(c, lin);
    if (!m || n == 0 || n > sizeof(m->bytes)) return;
    memcpy(m->bytes, buf, n);
    m->n = (uint8_t)n;
    m->code_bits = c->code_bits;
    m->stack_bits = c->stack_bits;
    m->insn = *insn;
}

static unsigned mode_of(const struct bt_cpu *c)
{
    return (c->code_bits >> 4) | (c->stack_bits >> 1); /* distinct for every combination */
}

static uint32_t hash_key(uint64_t gpa, unsigned mode)
{
    uint64_t h = (gpa ^ ((uint64_t)mode << 40)) * 0x9e3779b97f4a7c15ull;
    return (uint32_t)(h >> 40) & (CACHE_BUCKETS - 1);
}

static uint32_t hash_page(uint64_t page)
{
    return (uint32_t)((page * 0x9e3779b97f4a7c15ull) >> 40) & (PAGE_BUCKETS - 1);
}

static void cache_reset(struct bt_cache *k)
{
    memset(k->hash, 0, CACHE_BUCKETS * sizeof(*k->hash));
    memset(k->page_hash, 0, PAGE_BUCKETS * sizeof(*k->page_hash));
    memset(k->fast, 0, sizeof(k->fast));
    k->ninsns = k->nblocks = 0;
    k->flushes++;
    bt_jit_flush(k->cpu); /* translations point into the arena being recycled */
}

/* Drops block b: unlinked lazily (dead blocks never match and go at the next reset); jumps the
 * translator chained into its code are unchained. */
static void block_kill(struct bt_cache *k, struct bt_block *b)
{
    b->gpa = ~0ull;
    bt_jit_drop(k->cpu, b->jit);
    b->jit = NULL;
}

static void cache_drop_page(struct bt_cache *k, uint64_t page)
{
    for (struct bt_block *b = k->page_hash[hash_page(page)]; b; b = b->pnext)
        if (b->gpa != ~0ull && (b->gpa >> 12) == page) block_kill(k, b);
}

/* Applies queued invalidations.  Returns true if anything was dropped. */
static bool cache_apply_pending(struct bt_cache *k)
{
    if (!atomic_load_explicit(&k->pending, memory_order_acquire)) return false;
    pthread_mutex_lock(&k->lock);
    atomic_store_explicit(&k->pending, false, memory_order_relaxed);
    if (k->flush_all) {
        cache_reset(k);
    } else {
        for (unsigned q = 0; q < k->nqueue; q++)
            cache_drop_page(k, k->queue[q]);
    }
    k->flush_all = false;
    k->nqueue = 0;
    pthread_mutex_unlock(&k->lock);
    return true;
}

void bt_cache_invalidate_page(struct bt_cpu *c, uint64_t gpa_page)
{
    struct bt_cache *k = c->cache;
    if (!k) return;
    pthread_mutex_lock(&k->lock);
    if (k->nqueue < INVAL_QUEUE)
        k->queue[k->nqueue++] = gpa_page >> 12;
    else
        k->flush_all = true;
    atomic_store_explicit(&k->pending, true, memory_order_seq_cst);
    pthread_mutex_unlock(&k->lock);
    bt_jit_poke(c);
}

void bt_cache_flush(struct bt_cpu *c)
{
    struct bt_cache *k = c->cache;
    if (!k) return;
    pthread_mutex_lock(&k->lock);
    k->flush_all = true;
    atomic_store_explicit(&k->pending, true, memory_order_release);
    pthread_mutex_unlock(&k->lock);
}

int bt_core_init(struct bt_cpu *c)
{
    pthread_once(&core_once, core_global_init);
    struct bt_cache *k = calloc(1, sizeof(*k));
    if (!k) return err_set(ENOMEM, "software CPU: no memory for the decoded-code cache");
    k->insns = calloc(CACHE_INSNS, sizeof(*k->insns));
    k->blocks = calloc(CACHE_BLOCKS, sizeof(*k->blocks));
    k->hash = calloc(CACHE_BUCKETS, sizeof(*k->hash));
    k->page_hash = calloc(PAGE_BUCKETS, sizeof(*k->page_hash));
    if (!k->insns || !k->blocks || !k->hash || !k->page_hash) {
        free(k->insns), free(k->blocks), free(k->hash), free(k->page_hash), free(k);
        return err_set(ENOMEM, "software CPU: no memory for the decoded-code cache (%zu KiB)",
                       (size_t)(CACHE_INSNS * sizeof(struct bt_insn)) >> 10);
    }
    pthread_mutex_init(&k->lock, NULL);
    k->cpu = c;
    c->cache = k;
    if (bt_jit_init(c, &k->pending) < 0) /* the interpreter alone still works */
        log_warn("%s; the software CPU runs interpreted", err_msg());
    return 0;
}

void bt_core_destroy(struct bt_cpu *c)
{
    struct bt_cache *k = c->cache;
    if (!k) return;
    log_debug("software CPU %u: %llu block lookups, %llu decoded, %llu cache flushes, "
              "%llu unhandled #UD",
              c->index, (unsigned long long)k->lookups, (unsigned long long)k->misses,
              (unsigned long long)k->flushes, (unsigned long long)c->ud_unhandled);
    const struct bt_user_stats *u = &c->ustat;
    uint64_t user = u->icount + (c->cpl == 3 ? c->icount - u->since : 0);
    if (c->icount)
        log_info("software CPU %u: %llu guest instructions, %llu of them at CPL 3 (%.1f%%, %llu "
                 "per stay); %llu entries into the kernel from CPL 3: %llu system calls, %llu "
                 "software interrupts, %llu exceptions (%llu page faults), %llu interrupts; %llu "
                 "CR3 loads",
                 c->index, (unsigned long long)c->icount, (unsigned long long)user,
                 100.0 * (double)user / (double)c->icount,
                 (unsigned long long)(u->entries ? user / u->entries : user),
                 (unsigned long long)u->entries, (unsigned long long)u->syscalls,
                 (unsigned long long)u->softints, (unsigned long long)u->faults,
                 (unsigned long long)u->page_faults, (unsigned long long)u->irqs,
                 (unsigned long long)u->cr3_loads);
    bt_jit_destroy(c);
    bt_cfi_destroy(c);
    pthread_mutex_destroy(&k->lock);
    free(k->insns), free(k->blocks), free(k->hash), free(k->page_hash), free(k);
    c->cache = NULL;
}

/* True if the code segment lets the cache work on linear addresses without limit checks. */
static bool cs_flat(const struct bt_cpu *c)
{
    return c->code_bits == 64 || (c->code_bits == 32 && c->s.seg[SEG_CS].limit == 0xffffffffu);
}

static bool insn_ends_block(const struct bt_insn *in)
{
    uint8_t e = ends_block[in->mnemonic];
    if (e == 2) /* POP: only POP SS/DS/... (mode or SS.B may change) */
        return in->op[0].kind == BT_OPK_REG && in->op[0].rclass == BT_RC_SEG;
    return e != 0 || in->fn == handler_invalid || in->fn == handler_ud ||
           in->fn == handler_too_long;
}

/* Decodes a block at linear `lin` (physical `gpa`) into the arena.  Returns NULL when the first
 * instruction crosses the page (the caller decodes it uncached). */
static struct bt_block *build_block(struct bt_cpu *c, struct bt_cache *k, uint64_t lin,
                                    uint64_t gpa, unsigned mode)
{
    if (k->ninsns + BLOCK_MAX > CACHE_INSNS || k->nblocks >= CACHE_BLOCKS) cache_reset(k);
    /* watch before reading the bytes, so a write racing with decoding invalidates the block */
    bt_watch_code_page(c, gpa & ~0xfffull);

    const ZydisDecoder *d = decoder_for(c->code_bits, c->stack_bits);
    struct bt_insn *arena = &k->insns[k->ninsns];
    uint8_t page[4096];
    unsigned off = (unsigned)(lin & 0xfff), avail = 4096 - off;
    uint64_t g;
    /* everything up to the page end: one MMU call instead of one per instruction */
    size_t got = bt_fetch(c, lin, page, avail, &g);
    unsigned pos = 0, n = 0;
    uint8_t x[15];
    unsigned xlen = 0;
    while (n < BLOCK_MAX && pos < got) {
        ZyanStatus st = decode(d, c->code_bits, page + pos, got - pos, &arena[n]);
        if (st == ZYDIS_STATUS_NO_MORE_DATA) {
            /* crosses the page: the next block takes it, alone (below) */
            if (n > 0) break;
            /* the first instruction crosses: a one-instruction block with the bytes it takes
             * from the next page remembered (bt_block.xlen); if that page faults, the
             * uncached path raises the fault */
            size_t all = bt_fetch(c, lin, x, sizeof(x), &g);
            if (all <= avail || !ZYAN_SUCCESS(decode(d, c->code_bits, x, all, &arena[0])) ||
                arena[0].len <= avail)
                return NULL;
            xlen = arena[0].len - avail;
            n = 1;
            break;
        }
        if (!ZYAN_SUCCESS(st) && n > 0)
            break; /* let the bad encoding start its own block so its fault is precise */
        pos += arena[n].len;
        if (insn_ends_block(&arena[n++])) break;
    }
    if (n == 0) return NULL;
    struct bt_block *b = &k->blocks[k->nblocks++];
    b->xlen = (uint8_t)xlen;
    if (xlen) memcpy(b->xbytes, x + avail, xlen);
    b->gpa = gpa;
    b->mode = (uint8_t)mode;
    b->first = k->ninsns;
    b->ninsn = (uint16_t)n;
    b->jit = NULL;
    k->ninsns += n;
    uint32_t h = hash_key(gpa, mode);
    b->hnext = k->hash[h];
    k->hash[h] = b;
    uint32_t p = hash_page(gpa >> 12);
    b->pnext = k->page_hash[p];
    k->page_hash[p] = b;
    k->misses++;
    return b;
}

/* A crossing block (xlen > 0) at linear `lin`: true if the next page still holds the bytes it
 * was decoded from (through the current mapping).  Else it is dropped (a new one is built). */
static bool crossing_ok(struct bt_cpu *c, struct bt_cache *k, struct bt_block *b, uint64_t lin)
{
    uint64_t next = (lin | 0xfff) + 1, g;
    if (c->code_bits != 64) next &= 0xffffffffull;
    uint8_t now[15];
    if (bt_fetch(c, next, now, b->xlen, &g) == b->xlen && !memcmp(now, b->xbytes, b->xlen))
        return true;
    block_kill(k, b);
    return false;
}

/* The instructions to run at s.rip: a cached block, or one uncached instruction. */
static const struct bt_insn *lookup(struct bt_cpu *c, struct bt_cache *k, unsigned *count,
                                    struct bt_block **blk)
{
    *blk = NULL;
    uint64_t rip = c->s.rip;
    if (cs_flat(c)) {
        uint64_t lin = c->code_bits == 64 ? rip : (c->s.seg[SEG_CS].base + rip) & 0xffffffffull;
        uint8_t b0;
        uint64_t gpa;
        if (bt_fetch(c, lin, &b0, 1, &gpa) == 1) {
            unsigned mode = mode_of(c);
            k->lookups++;
            struct bt_block **slot = &k->fast[(gpa ^ (gpa >> 12)) & (ARRAY_SIZE(k->fast) - 1)];
            struct bt_block *b = *slot;
            if (b && b->gpa == gpa && b->mode == mode && (!b->xlen || crossing_ok(c, k, b, lin))) {
                /* dead blocks have gpa ~0 */
                *count = b->ninsn;
                *blk = b;
                return &k->insns[b->first];
            }
            for (b = k->hash[hash_key(gpa, mode)]; b; b = b->hnext) {
                if (b->gpa == gpa && b->mode == mode && (!b->xlen || crossing_ok(c, k, b, lin))) {
                    *slot = b;
                    *count = b->ninsn;
                    *blk = b;
                    return &k->insns[b->first];
                }
            }
            b = build_block(c, k, lin, gpa, mode);
            if (b) {
                *slot = b;
                *count = b->ninsn;
                *blk = b;
                return &k->insns[b->first];
            }
        }
    }
    decode_uncached(c, rip, &k->scratch);
    *count = 1;
    return &k->scratch;
}

/* ---- the interpreter loop ------------------------------------------------------------------ */

bool (*bt_fault_observer)(struct bt_cpu *c, int vector, uint32_t errcode);

static bool must_stop(struct bt_cpu *c)
{
    return c->exit_now || atomic_load_explicit(&c->kicked, memory_order_relaxed);
}

/* Runs until the budget is spent or a stop is requested.  Faults longjmp out of here. */
static void run(struct bt_cpu *c, struct bt_cache *k, uint64_t end)
{
    while (c->icount < end && !must_stop(c)) {
        cache_apply_pending(k);
        c->insn_rip = c->s.rip; /* a fault while delivering an interrupt restarts here */
        bool shadow = c->s.ev.interrupt_shadow != 0;
        if (!shadow) {
            if (bt_check_interrupts(c)) {
                c->halted = false;
                continue;
            }
            if (c->halted) return;
        }
        bool single_step = (c->s.rflags & X86_FLAG_TF) != 0;

        unsigned count = 1;
        const struct bt_insn *in;
        struct bt_block *blk = NULL;
        if (end - c->icount == 1) {
            /* one instruction (the KVM fallback, single steps): no block worth decoding */
            decode_uncached(c, c->s.rip, &k->scratch);
            in = &k->scratch;
        } else {
            in = lookup(c, k, &count, &blk);
        }
        /* With an interrupt shadow or TF only one instruction runs before the next check */
        if (shadow || single_step) count = 1;
        /* ---- translator hook (jit.h): a whole block in translated code ---- */
        else if (blk && c->jit && end - c->icount >= count) {
            int r = bt_jit_run(c, in, count, &blk->jit, blk->gpa, end, blk->xbytes, blk->xlen);
            if (r == 0) {
                k->fault_depth = 0;
                continue;
            }
            if (r < 0) { /* code cache full: flush it with the decoded blocks, look up again */
                cache_reset(k);
                continue;
            }
        }
        /* ---- end of translator hook ---- */
        uint64_t mask = rip_mask(c);
        for (unsigned n = 0; n < count; n++, in++) {
            uint64_t rip = c->s.rip;
            c->insn_rip = rip;
            c->next_rip = (rip + in->len) & mask;
            c->s.rip = c->next_rip;
            if (shadow) c->s.ev.interrupt_shadow = 0; /* this instruction is the shadowed one */
            in->fn(c, in);
            c->icount++;
            k->fault_depth = 0;
            if (c->s.rip != c->next_rip || c->exit_now || c->s.ev.interrupt_shadow ||
                atomic_load_explicit(&k->pending, memory_order_relaxed) || c->icount >= end)
                break;
        }
        if (single_step && !c->exit_now) {
            /* TF was set when the instruction began: a single-step trap after it */
            c->s.dr6 |= 1ull << 14; /* BS */
            c->insn_rip = c->s.rip;
            bt_deliver(c, BT_EV_EXCEPTION, X86_DB, BT_NO_ERRCODE);
        }
    }
}

uint64_t bt_exec(struct bt_cpu *c, uint64_t budget)
{
    if (!c->cache && bt_core_init(c) < 0) {
        log_err("%s", err_msg());
        c->exit_now = true;
        return 0;
    }
    struct bt_cache *const k = c->cache;
    const uint64_t start = c->icount;
    const uint64_t end = budget > UINT64_MAX - start ? UINT64_MAX : start + budget;
    k->fault_depth = 0;
    if (setjmp(c->fault_jmp)) {
        /* An instruction (or an event delivery) faulted: bt_raise() recorded the exception.
         * Nothing the instruction did is committed except what the SDM makes visible. */
        c->s.rip = c->insn_rip;
        if (bt_fault_observer && bt_fault_observer(c, c->pending_vector, c->pending_err)) {
            c->exit_now = true;
            return c->icount - start;
        }
        if (++k->fault_depth > 8) {
            /* event.c turns nested faults into #DF and a triple fault into an exit; this only
             * guards the loop against a delivery path that keeps faulting */
            log_err("software CPU %u: exception %d keeps recurring at %#llx; stopping the vCPU",
                    c->index, c->pending_vector, (unsigned long long)c->insn_rip);
            if (c->exit) c->exit->reason = VCPU_EXIT_SHUTDOWN;
            c->exit_now = true;
            return c->icount - start;
        }
        bt_deliver(c, BT_EV_EXCEPTION, c->pending_vector, c->pending_err);
    }
    run(c, k, end);
    return c->icount - start;
}

/* ---- operand helpers ------------------------------------------------------------------------ */

uint64_t bt_gpr_read(const struct bt_cpu *c, unsigned reg, unsigned size)
{
    uint64_t v = c->s.gpr[reg & 15];
    switch (size) {
    case 1: return v & 0xff;
    case 2: return v & 0xffff;
    case 4: return v & 0xffffffff;
    default: return v;
    }
}

void bt_gpr_write(struct bt_cpu *c, unsigned reg, unsigned size, uint64_t v)
{
    uint64_t *r = &c->s.gpr[reg & 15];
    switch (size) {
    case 1: *r = (*r & ~0xffull) | (v & 0xff); break;
    case 2: *r = (*r & ~0xffffull) | (v & 0xffff); break;
    case 4: *r = v & 0xffffffff; break;
    default: *r = v; break;
    }
}

uint64_t bt_op_ea(struct bt_cpu *c, const struct bt_insn *i, int n)
{
    const struct bt_operand *o = &i->op[n];
    uint64_t ea = (uint64_t)o->disp;
    if (o->base == BT_REG_RIP)
        ea += c->insn_rip;
    else if (o->base != BT_NOREG)
        ea += c->s.gpr[o->base];
    if (o->index != BT_NOREG) ea += c->s.gpr[o->index] * o->scale;
    return ea & size_mask(i->addrsize);
}

uint64_t bt_op_lin(struct bt_cpu *c, const struct bt_insn *i, int n, unsigned size, int acc)
{
    return bt_seg_linear(c, i->op[n].seg, bt_op_ea(c, i, n), size, acc);
}

uint64_t bt_op_read(struct bt_cpu *c, const struct bt_insn *i, int n)
{
    const struct bt_operand *o = &i->op[n];
    switch (o->kind) {
    case BT_OPK_REG:
        if (o->rclass == BT_RC_GPR) return bt_gpr_read(c, o->reg, o->size);
        if (o->rclass == BT_RC_GPR8H) return (c->s.gpr[o->reg] >> 8) & 0xff;
        if (o->rclass == BT_RC_SEG) return c->s.seg[o->reg].sel;
        bt_ud(c); /* other register classes have their own accessors */
    case BT_OPK_MEM: {
        unsigned size = o->size;
        if (size != 1 && size != 2 && size != 4 && size != 8) bt_ud(c);
        uint64_t lin = bt_seg_linear(c, o->seg, bt_op_ea(c, i, n), size, BT_ACC_READ);
        return bt_read(c, lin, size, BT_ACC_READ);
    }
    case BT_OPK_IMM:
    case BT_OPK_PTR: return (uint64_t)o->disp;
    case BT_OPK_AGEN: return bt_op_ea(c, i, n);
    default: bt_ud(c);
    }
}

void bt_op_write(struct bt_cpu *c, const struct bt_insn *i, int n, uint64_t v)
{
    const struct bt_operand *o = &i->op[n];
    switch (o->kind) {
    case BT_OPK_REG:
        if (o->rclass == BT_RC_GPR) {
            bt_gpr_write(c, o->reg, o->size, v);
            return;
        }
        if (o->rclass == BT_RC_GPR8H) {
            uint64_t *r = &c->s.gpr[o->reg];
            *r = (*r & ~0xff00ull) | ((v & 0xff) << 8);
            return;
        }
        bt_ud(c);
    case BT_OPK_MEM: {
        unsigned size = o->size;
        if (size != 1 && size != 2 && size != 4 && size != 8) bt_ud(c);
        uint64_t lin = bt_seg_linear(c, o->seg, bt_op_ea(c, i, n), size, BT_ACC_WRITE);
        bt_write(c, lin, size, v, BT_ACC_WRITE);
        return;
    }
    default: bt_ud(c);
    }
}

static uint64_t stack_mask(const struct bt_cpu *c)
{
    return c->stack_bits == 64 ? ~0ull : c->stack_bits == 32 ? 0xffffffffull : 0xffffull;
}

void bt_push(struct bt_cpu *c, unsigned size, uint64_t v)
{
    uint64_t mask = stack_mask(c);
    uint64_t rsp = (c->s.gpr[RSP] - size) & mask;
    uint64_t lin = bt_seg_linear(c, SEG_SS, rsp, size, BT_ACC_WRITE);
    bt_write(c, lin, size, v, BT_ACC_WRITE);
    /* only the stack-width part of RSP changes (SP in a 16-bit stack segment) */
    c->s.gpr[RSP] = (c->s.gpr[RSP] & ~mask) | rsp;
}

uint64_t bt_pop(struct bt_cpu *c, unsigned size)
{
    uint64_t mask = stack_mask(c);
    uint64_t rsp = c->s.gpr[RSP] & mask;
    uint64_t lin = bt_seg_linear(c, SEG_SS, rsp, size, BT_ACC_READ);
    uint64_t v = bt_read(c, lin, size, BT_ACC_READ);
    c->s.gpr[RSP] = (c->s.gpr[RSP] & ~mask) | ((rsp + size) & mask);
    return v;
}
