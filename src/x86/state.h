/* The neutral architectural state of one x86-64 vCPU.
 *
 * Both CPU backends translate to and from this structure (cpu_backend.get_state/set_state), and
 * snapshots, migration and introspection read and write only this.  It holds architectural facts,
 * never backend artefacts, so a vCPU saved under KVM resumes under the software CPU and back.
 * Nothing here is trusted when it comes from a snapshot file: snapshot/ validates before set_state,
 * and set_state itself rejects values hardware would reject (reserved CR bits, non-canonical
 * bases). */
#pragma once
#include <stdbool.h>
#include <stdint.h>

enum x86_gpr { RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8, R9, R10, R11, R12, R13, R14, R15 };
enum x86_sreg { SEG_ES, SEG_CS, SEG_SS, SEG_DS, SEG_FS, SEG_GS, SEG_LDTR, SEG_TR, SEG_COUNT };

/* A segment register with its hidden part, in the same split form as KVM's kvm_segment. */
struct x86_seg {
    uint64_t base;
    uint32_t limit; /* byte granular: already expanded when G=1 */
    uint16_t sel;
    uint8_t type; /* 4-bit descriptor type */
    uint8_t s, dpl, present, avl, l, db, g;
    uint8_t unusable; /* null selector loaded: the hidden part is not usable */
};

struct x86_dtable {
    uint64_t base;
    uint16_t limit;
};

/* FXSAVE image layout (Intel SDM Vol.1 10.5.1): x87, MMX and SSE state, 512 bytes. */
struct x86_fxsave {
    uint16_t fcw, fsw;
    uint8_t ftw; /* abridged tag word: 1 bit per register, 1 = valid */
    uint8_t rsvd1;
    uint16_t fop;
    uint64_t fip; /* 64-bit form */
    uint64_t fdp;
    uint32_t mxcsr, mxcsr_mask;
    uint8_t st[8][16]; /* 80-bit values in the low 10 bytes of each slot */
    uint8_t xmm[16][16];
    uint8_t rsvd2[96];
} __attribute__((packed, aligned(16)));
_Static_assert(sizeof(struct x86_fxsave) == 512, "fxsave image is 512 bytes");

/* Pending and in-flight events, in architectural terms (cf. KVM's kvm_vcpu_events). */
struct x86_events {
    uint8_t exception_pending; /* an exception raised but not yet delivered */
    uint8_t exception_vector;
    uint8_t exception_has_error;
    uint32_t exception_error;
    uint8_t
        interrupt_pending; /* an external interrupt accepted from the LAPIC/PIC, not delivered */
    uint8_t interrupt_vector;
    uint8_t nmi_pending;
    uint8_t nmi_masked;       /* inside an NMI handler until IRET */
    uint8_t interrupt_shadow; /* 1: after STI, 2: after MOV SS/POP SS */
};

enum x86_mp_state { MP_RUNNABLE, MP_HALTED, MP_WAIT_FOR_SIPI, MP_STOPPED };

struct x86_state {
    uint64_t gpr[16];
    uint64_t rip, rflags;
    struct x86_seg seg[SEG_COUNT];
    struct x86_dtable gdtr, idtr;
    uint64_t cr0, cr2, cr3, cr4, cr8;
    uint64_t efer;
    uint64_t xcr0;
    uint64_t dr[4], dr6, dr7;

    /* MSRs that are architectural state (the rest live in the devices that own them) */
    uint64_t star, lstar, cstar, sfmask, kernel_gs_base;
    uint64_t sysenter_cs, sysenter_esp, sysenter_eip;
    uint64_t pat, tsc, tsc_aux, tsc_deadline, misc_enable, apic_base;
    uint64_t tsc_adjust; /* IA32_TSC_ADJUST: moves with every write to the TSC (SDM 17.17.3) */

    struct x86_fxsave fx;
    struct x86_events ev;
    uint32_t mp_state; /* enum x86_mp_state */

    /* XSAVE-managed state beyond FXSAVE's (additive; components x87/SSE live in fx above), each
     * in the layout of its XSAVE state component (SDM Vol.1 13.5), all zero when initial:
     *   ymmh   YMM0-15 bits 255:128         component 2 (AVX)
     *   opmask k0-k7                        component 5 (AVX-512)
     *   zmmh   ZMM0-15 bits 511:256         component 6 (ZMM_Hi256)
     *   zmm16  ZMM16-31, all 512 bits       component 7 (Hi16_ZMM)
     * xss: IA32_XSS, the supervisor components XSAVES/XRSTORS manage (none carried here: a
     * backend that sees one in use stops rather than losing it). */
    uint8_t ymmh[16][16];
    uint64_t opmask[8];
    uint8_t zmmh[16][32];
    uint8_t zmm16[16][64];
    uint64_t xss;
};

/* RFLAGS bits */
#define X86_FLAG_CF    (1u << 0)
#define X86_FLAG_FIXED (1u << 1)
#define X86_FLAG_PF    (1u << 2)
#define X86_FLAG_AF    (1u << 4)
#define X86_FLAG_ZF    (1u << 6)
#define X86_FLAG_SF    (1u << 7)
#define X86_FLAG_TF    (1u << 8)
#define X86_FLAG_IF    (1u << 9)
#define X86_FLAG_DF    (1u << 10)
#define X86_FLAG_OF    (1u << 11)
#define X86_FLAG_IOPL  (3u << 12)
#define X86_FLAG_NT    (1u << 14)
#define X86_FLAG_RF    (1u << 16)
#define X86_FLAG_VM    (1u << 17)
#define X86_FLAG_AC    (1u << 18)
#define X86_FLAG_VIF   (1u << 19)
#define X86_FLAG_VIP   (1u << 20)
#define X86_FLAG_ID    (1u << 21)

/* CR0 */
#define X86_CR0_PE (1ull << 0)
#define X86_CR0_MP (1ull << 1)
#define X86_CR0_EM (1ull << 2)
#define X86_CR0_TS (1ull << 3)
#define X86_CR0_ET (1ull << 4)
#define X86_CR0_NE (1ull << 5)
#define X86_CR0_WP (1ull << 16)
#define X86_CR0_AM (1ull << 18)
#define X86_CR0_NW (1ull << 29)
#define X86_CR0_CD (1ull << 30)
#define X86_CR0_PG (1ull << 31)
/* CR4 */
#define X86_CR4_VME        (1ull << 0)
#define X86_CR4_PVI        (1ull << 1)
#define X86_CR4_TSD        (1ull << 2)
#define X86_CR4_DE         (1ull << 3)
#define X86_CR4_PSE        (1ull << 4)
#define X86_CR4_PAE        (1ull << 5)
#define X86_CR4_MCE        (1ull << 6)
#define X86_CR4_PGE        (1ull << 7)
#define X86_CR4_PCE        (1ull << 8)
#define X86_CR4_OSFXSR     (1ull << 9)
#define X86_CR4_OSXMMEXCPT (1ull << 10)
#define X86_CR4_UMIP       (1ull << 11)
#define X86_CR4_LA57       (1ull << 12)
#define X86_CR4_FSGSBASE   (1ull << 16)
#define X86_CR4_PCIDE      (1ull << 17)
#define X86_CR4_OSXSAVE    (1ull << 18)
#define X86_CR4_SMEP       (1ull << 20)
#define X86_CR4_SMAP       (1ull << 21)
/* XCR0 / XSAVE state-component bits */
#define X86_XFEATURE_X87       (1ull << 0)
#define X86_XFEATURE_SSE       (1ull << 1)
#define X86_XFEATURE_AVX       (1ull << 2)
#define X86_XFEATURE_OPMASK    (1ull << 5)
#define X86_XFEATURE_ZMM_HI256 (1ull << 6)
#define X86_XFEATURE_HI16_ZMM  (1ull << 7)
#define X86_XFEATURE_AVX512    (X86_XFEATURE_OPMASK | X86_XFEATURE_ZMM_HI256 | X86_XFEATURE_HI16_ZMM)
/* The XSAVE components struct x86_state carries.  Where each one (i >= 2) sits in the
 * standard-format XSAVE area is CPUID.(0xD,i).EBX, which is not the same on every CPU: Intel
 * puts AVX-512 after MPX's components (opmask at 1088), AMD, without MPX, right after AVX
 * (opmask at 832).  x86_xcomp_std_off() gives the host's; std_off is Intel's, used when the
 * host does not enumerate the component. */
#define X86_XFEATURE_CARRIED                                                                       \
    (X86_XFEATURE_X87 | X86_XFEATURE_SSE | X86_XFEATURE_AVX | X86_XFEATURE_AVX512)
struct x86_xcomp {
    unsigned bit, std_off, size;
    unsigned size_legacy; /* bytes XSAVE/XRSTOR touch outside 64-bit mode (registers 0-7) */
    unsigned field;       /* offsetof(struct x86_state, ...) */
};
extern const struct x86_xcomp x86_xcomps[4]; /* components 2, 5, 6, 7 */
/* The component's offset in the host's standard-format XSAVE area: what KVM_GET/SET_XSAVE use,
 * and what a guest shown the host's CPUID leaf 0xD expects of XSAVE. */
unsigned x86_xcomp_std_off(const struct x86_xcomp *x);
/* EFER */
#define X86_EFER_SCE (1ull << 0)
#define X86_EFER_LME (1ull << 8)
#define X86_EFER_LMA (1ull << 10)
#define X86_EFER_NXE (1ull << 11)

/* MSR numbers */
#define MSR_IA32_TSC               0x10
#define MSR_IA32_APIC_BASE         0x1b
#define MSR_IA32_FEATURE_CONTROL   0x3a
#define MSR_IA32_TSC_ADJUST        0x3b
#define MSR_IA32_SPEC_CTRL         0x48
#define MSR_IA32_BIOS_SIGN_ID      0x8b
#define MSR_IA32_MTRRCAP           0xfe
#define MSR_IA32_ARCH_CAPABILITIES 0x10a
#define MSR_IA32_SYSENTER_CS       0x174
#define MSR_IA32_SYSENTER_ESP      0x175
#define MSR_IA32_SYSENTER_EIP      0x176
#define MSR_IA32_MCG_CAP           0x179
#define MSR_IA32_MCG_STATUS        0x17a
#define MSR_IA32_MISC_ENABLE       0x1a0
#define MSR_IA32_PAT               0x277
#define MSR_IA32_XSS               0xda0
#define MSR_MTRR_DEF_TYPE          0x2ff
#define MSR_IA32_TSC_DEADLINE      0x6e0
#define MSR_EFER                   0xc0000080
#define MSR_STAR                   0xc0000081
#define MSR_LSTAR                  0xc0000082
#define MSR_CSTAR                  0xc0000083
#define MSR_SFMASK                 0xc0000084
#define MSR_FS_BASE                0xc0000100
#define MSR_GS_BASE                0xc0000101
#define MSR_KERNEL_GS_BASE         0xc0000102
#define MSR_TSC_AUX                0xc0000103

/* Exception vectors */
enum x86_vector {
    X86_DE = 0,
    X86_DB = 1,
    X86_NMI = 2,
    X86_BP = 3,
    X86_OF = 4,
    X86_BR = 5,
    X86_UD = 6,
    X86_NM = 7,
    X86_DF = 8,
    X86_TS = 10,
    X86_NP = 11,
    X86_SS = 12,
    X86_GP = 13,
    X86_PF = 14,
    X86_MF = 16,
    X86_AC = 17,
    X86_MC = 18,
    X86_XM = 19,
};

static inline bool x86_is_canonical(uint64_t va)
{
    return (uint64_t)((int64_t)(va << 16) >> 16) == va;
}

/* Fills *s with the architectural reset state (SDM Vol.3 9.1.1), for vCPU `apic_id`.
 * The bootstrap processor is runnable; application processors wait for SIPI. */
void x86_state_reset(struct x86_state *s, unsigned apic_id, bool bsp);
/* Prints the registers in a compact form (for triple faults and internal errors). */
void x86_state_dump(const struct x86_state *s, int fd);
