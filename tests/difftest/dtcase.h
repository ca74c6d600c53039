/* One differential case: run the bytes natively (native.h) and on the software CPU (btenv.h) from
 * the same registers, flags and scratch memory, and compare the outcome (end reached, or the
 * class of the first fault and where), all 16 GPRs, RIP, the arithmetic flags and DF, and the
 * scratch memory. */
#pragma once
#include <stdarg.h>
#include <stdbool.h>

#include <Zydis/Zydis.h>

#include "native.h"

#define DT_FLAGS (BT_ARITH_FLAGS | X86_FLAG_DF)
enum { DT_DONE = 100, DT_MEMFAULT = 101, DT_DIED = 102, DT_TIMEOUT = 103 };

static const char *const dt_regname[16] = {"rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
                                           "r8",  "r9",  "r10", "r11", "r12", "r13", "r14", "r15"};

static int dt_native_outcome(const struct native_result *r, size_t len)
{
    switch (r->sig) {
    case SIGILL: return (uint32_t)r->rip == (uint32_t)(DT_CODE + len) ? DT_DONE : X86_UD;
    case SIGFPE: return X86_DE;
    case SIGSEGV:
    case SIGBUS: return DT_MEMFAULT;
    case SIGTRAP: return X86_BP;
    default: return DT_DIED;
    }
}

static int dt_bt_outcome(struct btenv *e, int vector, size_t len)
{
    switch (vector) {
    case -1: return DT_TIMEOUT;
    case X86_UD: return e->c->s.rip == DT_CODE + len ? DT_DONE : X86_UD;
    case X86_XM:
    case X86_MF: return X86_DE; /* SIGFPE, like #DE */
    case X86_SS:
    case X86_GP:
    case X86_PF:
    case X86_AC:
    case X86_OF: /* Linux reports #OF (INTO) and #BR (BOUND) as SIGSEGV */
    case X86_BR: return DT_MEMFAULT;
    default: return vector;
    }
}

static void dt_append(char *buf, size_t n, const char *fmt, ...)
{
    size_t l = strlen(buf);
    if (l + 1 >= n) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + l, n - l, fmt, ap);
    va_end(ap);
}

/* Where the SDM leaves an arithmetic flag undefined, the software CPU sets it as Intel's
 * processors do (it matches an Intel host exactly); other vendors' processors set some of them
 * differently (seen on an AMD EPYC host: OF after DAA/AAS and multi-bit rotates and SHLD/SHRD,
 * SF/ZF/AF/PF after MUL/IMUL, ZF/PF after AAA/AAS).  On such a host the comparison leaves out the
 * flags an instruction of the case leaves undefined (ZydisAccessedFlags.undefined), and a case in
 * which a later instruction reads such a flag (ADC, SETcc, Jcc, PUSHF, ...) is not compared at
 * all: its registers may then differ too.  The walk is linear and the mask only grows, so a
 * branch can only make it leave out more. */
static bool dt_host_is_intel(void)
{
    return __builtin_cpu_is("intel"); /* as the translator tells vendors apart (jit.c) */
}

/* A decoder for the case's mode (btenv_bits) */
static void dt_decoder(ZydisDecoder *dec)
{
    if (btenv_bits == 32)
        ZydisDecoderInit(dec, ZYDIS_MACHINE_MODE_LONG_COMPAT_32, ZYDIS_STACK_WIDTH_32);
    else
        ZydisDecoderInit(dec, ZYDIS_MACHINE_MODE_LONG_64, ZYDIS_STACK_WIDTH_64);
}

/* The flags some instruction of the case leaves undefined; *read_after when an instruction reads
 * one of them after that.  0 on an Intel host. */
static uint64_t dt_vendor_flags(const uint8_t *code, size_t len, bool *read_after)
{
    *read_after = false;
    if (dt_host_is_intel()) return 0;
    ZydisDecoder dec;
    dt_decoder(&dec);
    uint64_t undef = 0;
    ZydisDecodedInstruction in;
    for (size_t off = 0; off < len; off += in.length) {
        if (ZYAN_FAILED(ZydisDecoderDecodeInstruction(&dec, NULL, code + off, len - off, &in)))
            break;
        if (!in.cpu_flags) continue;
        if (in.cpu_flags->tested & undef) *read_after = true;
        undef |= in.cpu_flags->undefined;
    }
    return undef & BT_ARITH_FLAGS;
}

/* A fault in the middle of a REP CMPS/SCAS: an Intel host shows the flags the instruction started
 * with (what the software CPU does, string.c), an AMD host those of the last iteration that
 * completed.  Returns the arithmetic flags to leave out when the instruction at `off` is one. */
static uint64_t dt_vendor_fault_flags(const uint8_t *code, size_t len, uint64_t off)
{
    if (dt_host_is_intel() || off >= len) return 0;
    ZydisDecoder dec;
    dt_decoder(&dec);
    ZydisDecodedInstruction in;
    if (ZYAN_FAILED(ZydisDecoderDecodeInstruction(&dec, NULL, code + off, len - off, &in)))
        return 0;
    bool rep = in.attributes & (ZYDIS_ATTRIB_HAS_REPE | ZYDIS_ATTRIB_HAS_REPNE);
    bool cmp = in.mnemonic == ZYDIS_MNEMONIC_CMPSB || in.mnemonic == ZYDIS_MNEMONIC_CMPSW ||
               in.mnemonic == ZYDIS_MNEMONIC_CMPSD || in.mnemonic == ZYDIS_MNEMONIC_CMPSQ ||
               in.mnemonic == ZYDIS_MNEMONIC_SCASB || in.mnemonic == ZYDIS_MNEMONIC_SCASW ||
               in.mnemonic == ZYDIS_MNEMONIC_SCASD || in.mnemonic == ZYDIS_MNEMONIC_SCASQ;
    return rep && cmp ? BT_ARITH_FLAGS : 0;
}

/* 0: same; 1: mismatch (described in msg); -1: the native run failed; 2: not compared, the
 * outcome depends on the host's vendor (dt_vendor_flags) */
static int dt_check(struct btenv *e, struct native_result *nr, const uint8_t *code, size_t len,
                    const uint8_t *scratch, const uint64_t gpr[16], uint64_t rflags, char *msg,
                    size_t msglen)
{
    static uint8_t btmem[DT_SCRATCH_N];
    msg[0] = 0;
    bool vendor_read;
    uint64_t vendor_flags = dt_vendor_flags(code, len, &vendor_read);
    if (vendor_read) return 2;
    if (native_run(nr, code, len, scratch, gpr, rflags) < 0) return -1;
    btenv_load(e, code, len, scratch, gpr, rflags);
    int v = btenv_run(e, 1000000);
    int no = dt_native_outcome(nr, len), bo = dt_bt_outcome(e, v, len);
    if (no == DT_DIED) return -1;
    const struct x86_state *s = &e->c->s;
    if (no != bo) dt_append(msg, msglen, " outcome native %d bt %d (vector %d);", no, bo, v);
    /* in 32-bit code only the low halves of the eight legacy registers are architectural */
    uint64_t m = btenv_bits == 32 ? 0xffffffffull : ~0ull;
    int nregs = btenv_bits == 32 ? 8 : 16;
    if ((nr->rip ^ s->rip) & m)
        dt_append(msg, msglen, " rip native +%#llx bt +%#llx;",
                  (unsigned long long)(nr->rip - DT_CODE), (unsigned long long)(s->rip - DT_CODE));
    for (int k = 0; k < nregs; k++)
        if ((nr->gpr[k] ^ s->gpr[k]) & m)
            dt_append(msg, msglen, " %s native %#llx bt %#llx;", dt_regname[k],
                      (unsigned long long)nr->gpr[k], (unsigned long long)s->gpr[k]);
    if (no == bo && no != DT_DONE && nr->rip == s->rip)
        vendor_flags |= dt_vendor_fault_flags(code, len, s->rip - DT_CODE);
    if ((nr->rflags ^ s->rflags) & DT_FLAGS & ~vendor_flags)
        dt_append(msg, msglen, " flags native %#llx bt %#llx;",
                  (unsigned long long)(nr->rflags & DT_FLAGS),
                  (unsigned long long)(s->rflags & DT_FLAGS));
    /* x87/MMX/SSE: control and status words, tags, the eight ST/MM registers, MXCSR, the XMM
     * registers (not FOP/FIP/FDP, which the software CPU keeps in its own form) */
    const struct x86_fxsave *a = &nr->fx, *b = &s->fx;
    if (a->fcw != b->fcw || a->fsw != b->fsw || a->ftw != b->ftw)
        dt_append(msg, msglen, " fcw/fsw/ftw native %04x/%04x/%02x bt %04x/%04x/%02x;", a->fcw,
                  a->fsw, a->ftw, b->fcw, b->fsw, b->ftw);
    if (a->mxcsr != b->mxcsr)
        dt_append(msg, msglen, " mxcsr native %08x bt %08x;", a->mxcsr, b->mxcsr);
    for (int r = 0; r < 8; r++)
        if (memcmp(a->st[r], b->st[r], 10))
            dt_append(
                msg, msglen, " st%d/mm%d native %016llx:%04x bt %016llx:%04x;", r, r,
                (unsigned long long)*(const uint64_t *)a->st[r], *(const uint16_t *)(a->st[r] + 8),
                (unsigned long long)*(const uint64_t *)b->st[r], *(const uint16_t *)(b->st[r] + 8));
    for (int r = 0; r < nregs; r++)
        if (memcmp(a->xmm[r], b->xmm[r], 16))
            dt_append(msg, msglen, " xmm%d native %016llx%016llx bt %016llx%016llx;", r,
                      (unsigned long long)*(const uint64_t *)(a->xmm[r] + 8),
                      (unsigned long long)*(const uint64_t *)a->xmm[r],
                      (unsigned long long)*(const uint64_t *)(b->xmm[r] + 8),
                      (unsigned long long)*(const uint64_t *)b->xmm[r]);
    btenv_scratch(e, btmem);
    for (unsigned k = 0; k < DT_SCRATCH_N; k++) {
        if (btmem[k] != nr->scratch[k]) {
            dt_append(msg, msglen, " memory +%#x native %02x bt %02x;", k, nr->scratch[k],
                      btmem[k]);
            break;
        }
    }
    return msg[0] ? 1 : 0;
}

static void dt_hex(const uint8_t *b, size_t n, char *out, size_t outlen)
{
    out[0] = 0;
    for (size_t k = 0; k < n && 3 * k + 3 < outlen; k++)
        snprintf(out + 3 * k, outlen - 3 * k, "%02x ", b[k]);
}
