/* Internal interface of the software CPU (the `bt` backend): decoder front end, interpreter core,
 * soft MMU, exceptions/interrupts, and the instruction handlers.  Not used outside src/cpu/bt/
 * except bt_emulate_one() (the KVM backend's fallback for instructions kvm_pvm cannot emulate).
 *
 * Trust: everything the guest controls — instruction bytes, registers, page tables, descriptor
 * tables — is checked here exactly as the hardware checks it; a violation becomes the guest
 * exception the SDM specifies, never a host fault.  Guest RAM is reached only through the soft
 * MMU, which uses mem/guest.h; MMIO goes to vm_mmio().
 *
 * Files and owners (one family per file, blink style):
 *   core.c     decode (Zydis -> struct bt_insn), decoded-block cache, the interpreter loop,
 *              operand access helpers
 *   alu.c, shift.c, muldiv.c, bitop.c, string.c, branch.c, datamov.c, atomic.c
 *              the general-purpose integer ISA
 *   mmu.c      TLB, page walk, linear/virtual memory access, write-watch, MMIO routing
 *   seg.c      segmentation: descriptor loads and checks, far transfers
 *   event.c    exception and interrupt delivery (IDT, stack switch, IST, #DF, triple fault),
 *              IRET, INT n
 *   system.c   privileged and sensitive instructions (CR/DR/MSR, descriptor table regs, CPUID,
 *              RDTSC, HLT, port I/O, SYSCALL/SYSRET, SWAPGS, flags control, ...)
 *   backend.c  struct cpu_backend cpu_backend_bt, vCPU run/kick/HLT wait, LAPIC/IOAPIC/PIT wiring,
 *              bt_emulate_one()
 *   fpu.c, sse.c  x87, MMX, SSE/SSE2, FXSAVE/FXRSTOR, MXCSR
 *   xsave.c, hostisa.c  the XSAVE feature set and POPCNT/CLAC/STAC: only in the KVM fallback,
 *              for guests that see the host's CPUID (kvm_pvm); #UD under the model
 *
 * Execution model: the architectural state lives in `struct bt_cpu.s` (the neutral x86_state:
 * get_state/set_state are copies).  An instruction handler reads operands, computes, and writes
 * results; it must not change architectural state before the last point at which it can fault,
 * except where the SDM says partial effects are visible.  A fault anywhere (memory access, a
 * privilege check) calls bt_raise(), which longjmps back to the interpreter loop; the loop rolls
 * RIP back to the faulting instruction and delivers the exception.  Arithmetic flags come from
 * running the same operation on the host CPU (see bt_alu_* in alu.c), so even the "undefined" flags
 * match the host. */
#pragma once
#include <setjmp.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <Zydis/Zydis.h>

#include "cpu/cpu.h"

struct lapic;
struct bt_cpu;
struct bt_insn;

/* ---- decoded instruction: the engine's compact form ------------------------------------- */

enum bt_opkind { BT_OPK_NONE, BT_OPK_REG, BT_OPK_MEM, BT_OPK_IMM, BT_OPK_PTR, BT_OPK_AGEN };

/* Register classes for BT_OPK_REG */
enum bt_regclass {
    BT_RC_GPR,
    BT_RC_GPR8H,
    BT_RC_SEG,
    BT_RC_CR,
    BT_RC_DR,
    BT_RC_XMM,
    BT_RC_MMX,
    BT_RC_ST,
    BT_RC_OTHER
};

#define BT_NOREG 0xff
/* Base register meaning RIP-relative.  The decoder folds the instruction length into disp, so the
 * effective address is insn_rip + disp (== next_rip + the encoded displacement). */
#define BT_REG_RIP 16

struct bt_operand {
    uint8_t kind;   /* enum bt_opkind */
    uint8_t size;   /* bytes: 1, 2, 4, 8, 10, 16, or 0 for none/agen */
    uint8_t rclass; /* enum bt_regclass, for REG */
    uint8_t reg;    /* GPR index 0-15 (AH..BH: rclass GPR8H, reg 0-3), SEG (enum x86_sreg), CR/DR n,
                       XMM/MMX/ST n */
    uint8_t seg;    /* MEM: effective segment (enum x86_sreg), overrides applied */
    uint8_t base;   /* MEM: GPR index, BT_REG_RIP, or BT_NOREG */
    uint8_t index;  /* MEM: GPR index or BT_NOREG */
    uint8_t scale;  /* MEM: 1, 2, 4, 8 */
    uint16_t zreg;  /* the ZydisRegister, for handlers that want it */
    uint16_t sel;   /* PTR: far pointer selector */
    int64_t disp;   /* MEM: displacement; IMM: the immediate, sign-extended (if the encoding
                       says so) to the operand size and zero above it; relative branch IMM
                       (BT_ATTR_RELATIVE): the signed displacement, target = next_rip + disp;
                       PTR: offset */
};
/* MEM/AGEN size is the access size in bytes (6 for m16:32, 10 for m80, 16 for m128), 0 when the
 * operand is larger than 255 bytes (FXSAVE area) or an address only (LEA). */

#define BT_PFX_LOCK  0x01
#define BT_PFX_REP   0x02 /* REP / REPE / REPZ */
#define BT_PFX_REPNE 0x04
#define BT_PFX_SEG   0x08 /* explicit segment override present */

/* Zydis attribute bits kept in bt_insn.attr_lo (the low 16 bits of ZydisInstructionAttributes) */
#define BT_ATTR_MODRM 0x0001 /* ZYDIS_ATTRIB_HAS_MODRM */
#define BT_ATTR_REX   0x0004 /* ZYDIS_ATTRIB_HAS_REX */
#define BT_ATTR_RELATIVE                                                                           \
    0x0080 /* ZYDIS_ATTRIB_IS_RELATIVE: IMM operand is a branch displacement                       \
            */

typedef void (*bt_handler)(struct bt_cpu *c, const struct bt_insn *i);

struct bt_insn {
    bt_handler fn;
    uint16_t mnemonic; /* ZydisMnemonic */
    uint8_t len;       /* bytes */
    uint8_t opsize;    /* effective operand size in bits: 8, 16, 32, 64 (Zydis operand_width) */
    uint8_t addrsize;  /* effective address size in bits: 16, 32, 64 */
    uint8_t pfx;       /* BT_PFX_* */
    uint8_t nops;      /* visible operands */
    uint8_t opcode;    /* Zydis opcode byte and map, for handlers sharing a mnemonic */
    uint8_t opcode_map;
    uint8_t modrm_reg; /* ModRM.reg field (for group opcodes) */
    uint16_t attr_lo;  /* low bits of Zydis attributes the handlers care about */
    uint8_t dseg;      /* segment of DS-default implicit memory operands (string source, XLAT,
                          OUTS): DS or the override prefix (enum x86_sreg) */
    struct bt_operand op[4];
};

/* Handlers register themselves: BT_HANDLER(ADD, op_add) puts {ZYDIS_MNEMONIC_ADD, op_add} in the
 * linker section "bt_handlers"; core.c builds its dispatch table from the section at start-up.
 * A mnemonic without a handler raises #UD (and is counted so coverage gaps are visible). */
struct bt_handler_def {
    uint16_t mnemonic;
    bt_handler fn;
};
#define BT_HANDLER(MNEM, FN)                                                                       \
    static const struct bt_handler_def __bt_h_##MNEM##_##FN                                        \
        __attribute__((used, section("bt_handlers"), aligned(16))) = {ZYDIS_MNEMONIC_##MNEM, FN}

/* Pseudo mnemonics: encodings that share a Zydis mnemonic with another family are routed by the
 * decoder to these ids, so each family registers its own handler (BT_HANDLER_ID). */
enum bt_pseudo_mnemonic {
    BT_MNEM_MOVSD_STR = ZYDIS_MNEMONIC_MAX_VALUE + 1, /* string MOVSD (A5), not SSE2 MOVSD */
    BT_MNEM_CMPSD_STR,                                /* string CMPSD (A7), not SSE2 CMPSD */
    BT_MNEM_MOV_CR,                                   /* MOV to/from CRn (0F 20 / 0F 22) */
    BT_MNEM_MOV_DR,                                   /* MOV to/from DRn (0F 21 / 0F 23) */
    BT_MNEM_MOV_SEG,                                  /* MOV to/from Sreg (8C / 8E) */
    BT_MNEM_JMP_FAR,                                  /* EA, FF /5 */
    BT_MNEM_CALL_FAR,                                 /* 9A, FF /3 */
    BT_MNEM_RET_FAR,                                  /* CA, CB */
    BT_MNEM_COUNT
};
#define BT_HANDLER_ID(ID, FN)                                                                      \
    static const struct bt_handler_def __bt_hid_##ID##_##FN                                        \
        __attribute__((used, section("bt_handlers"), aligned(16))) = {ID, FN}
/* A default that a BT_HANDLER/BT_HANDLER_ID of the same id in section bt_handlers replaces
 * (core.c uses it for MOV CR/DR so a privileged-instruction family can take them over). */
#define BT_HANDLER_DEFAULT(ID, FN)                                                                 \
    static const struct bt_handler_def __bt_hd_##ID##_##FN                                         \
        __attribute__((used, section("bt_handlers_dflt"), aligned(16))) = {ID, FN}

/* ---- memory access ------------------------------------------------------------------------ */

/* Access kinds for the soft MMU */
#define BT_ACC_READ     0x01
#define BT_ACC_WRITE    0x02
#define BT_ACC_EXEC     0x04
#define BT_ACC_IMPLICIT 0x08 /* supervisor access regardless of CPL (GDT/IDT/TSS reads) */

#define BT_TLB_RAM  0x80u /* perm: the page is RAM with a host address (addend valid) */
#define BT_TLB_SIZE 32768 /* direct-mapped; see docs/translator.md (Soft TLB) for the size */
struct bt_tlb_entry {
    uint64_t vtag; /* linear page number | 1 (valid) in bit 0 of a shifted form; see mmu.c */
    uint64_t gpa;  /* guest-physical page address */
    /* host address of the page minus the linear page address (so linear address + addend is
     * the host address of that byte): valid only with BT_TLB_RAM in perm (else MMIO: slow path) */
    uint64_t addend;
    uint32_t perm; /* allowed access kinds per privilege (mmu.c), BT_TLB_RAM */
    uint32_t pad;
    /* The translator's inline access check, one compare: ftag[user * 2 + write] is
     * (linear page | 0xfff) when an access of that kind at that privilege needs nothing but the
     * host address (RAM, permitted; a write bit only once the PTE is dirty), else 0.  The emitted
     * code compares it with (last byte's address | 0xfff), which also rejects a page crossing.
     * Written with vtag at every fill, zeroed with it at every flush (mmu.c). */
    uint64_t ftag[4];
};

/* ---- the vCPU -------------------------------------------------------------------------- */

struct bt_cpu {
    struct x86_state s; /* THE architectural state */
    struct vm *vm;
    struct vcpu *vcpu;
    unsigned index;

    /* derived from s, recomputed by bt_update_mode() after any change of CR0/CR4/EFER/CS/SS */
    uint8_t cpl;
    uint8_t code_bits;  /* 16, 32 or 64 */
    uint8_t stack_bits; /* 16, 32 or 64 */
    bool paging, long_mode;

    /* current instruction */
    uint64_t insn_rip; /* RIP of the instruction being executed */
    uint64_t next_rip; /* RIP after it.  The loop sets s.rip = next_rip before calling the
                          handler; a handler that branches (or repeats itself: REP) sets s.rip */
    jmp_buf fault_jmp;
    /* set by bt_raise() before it longjmps: the loop delivers this exception */
    int pending_vector;
    uint32_t pending_err;   /* BT_NO_ERRCODE if none */
    bool in_event_delivery; /* a fault now is a double fault */
    uint8_t delivering_vector;
    bool shutdown;         /* triple fault: the loop must stop (exit_now is also set) */
    bool stop_after_event; /* bt_emulate_one: stop right after delivering an exception */
    bool kvm_assist;       /* bt_emulate_one: the guest sees the host's CPUID (kvm_pvm), so CR4
                              and CR3 accept the host's features rather than the model's */

    /* The XSAVE feature set as the guest's CPUID shows it.  The software CPU's own model
     * (lookout-v1) has none, so under --cpu bt these stay zero and every XSAVE-family instruction
     * raises #UD.  bt_emulate_one() fills them (bt_xsave_guest_view): under kvm_pvm the guest's
     * CPUID is not the VM's model but close to the host's, so the guest may have enabled
     * CR4.OSXSAVE and XCR0 components, and the fallback must honour them. */
    bool host_isa;           /* bt_emulate_one: host instructions beyond the model (hostisa.c) */
    bool xsave_visible;      /* CPUID.1:ECX.XSAVE */
    uint32_t xsave_d1_eax;   /* CPUID.(0xD,1).EAX: XSAVEOPT, XSAVEC, XGETBV1, XSAVES */
    uint64_t xcr0_supported; /* CPUID.(0xD,0).EDX:EAX: bits XSETBV may set */

    /* soft MMU */
    /* TLB generations for the translator's inline lookup (a lookup entry holds the one its page
     * was validated in): [0] (even) advances at every flush and INVLPG, [1] (odd) only at those
     * that drop global pages too; each by 2 (mmu.c). */
    uint64_t tlb_gen[2];
    /* the translator's probe groups (jit.c): the host address of each group's lowest byte (its
     * base register's value at the block's start + the range's low end) that a block's prologue
     * found; a member reaches its operand at a constant distance from it */
    uint64_t grp_host[4];
    /* One cache line per entry (whatever contains the structure is allocated with
     * aligned_alloc): an inline probe reads a fast tag and the addend of one entry, which used to
     * straddle two lines for some access kinds. */
    _Alignas(64) struct bt_tlb_entry tlb[BT_TLB_SIZE];
    void *mmu; /* mmu.c private (write-watch bitmap, ...) */

    /* decoded-block cache */
    void *cache; /* core.c private */
    void *jit;   /* jit.c private: the translator, NULL when interpreting only */
    void *cfi;   /* cfi.c private: the shadow stacks of --cfi, allocated on first use */

    /* interrupts and time */
    struct lapic *lapic;
    _Atomic bool kicked;
    bool halted;
    uint64_t tsc_offset;

    /* the exit being filled for vcpu_run (when a handler needs the machine) */
    struct vcpu_exit *exit;
    bool exit_now; /* a handler asks the loop to return after this instruction */

    /* the translator's chained jumps run only while icount <= this (jit.c; 0: a poke, leave) */
    uint64_t jit_chain_end;

    /* statistics */
    uint64_t icount;
    uint64_t ud_unhandled; /* #UD raised for a decodable instruction without a handler */
    /* Where the guest's time goes between user and kernel mode (bt_core_destroy logs it at
     * info): the instructions retired at CPL 3, the entries from CPL 3 into the kernel and their
     * causes, the CR3 loads.  Each such entry is what a design running guest user code directly
     * on the host would have to reflect to the kernel (docs/translator.md, "User code run
     * directly: what it would pay"). */
    struct bt_user_stats {
        uint64_t icount;      /* instructions retired at CPL 3 up to the last change of CPL
                                 (the one that leaves, SYSCALL say, counts as the kernel's) */
        uint64_t since;       /* icount when the CPU last went to CPL 3 */
        uint64_t entries;     /* changes from CPL 3 to a lower CPL */
        uint64_t syscalls;    /* SYSCALL and SYSENTER at CPL 3 */
        uint64_t softints;    /* INT n, INT3, INTO, INT1 at CPL 3 */
        uint64_t faults;      /* exceptions raised at CPL 3 ... */
        uint64_t page_faults; /* ... of which page faults */
        uint64_t irqs;        /* external interrupts and NMIs taken at CPL 3 */
        uint64_t cr3_loads;   /* MOV to CR3 at any CPL */
    } ustat;
};

/* core.c */
int bt_core_init(struct bt_cpu *c);
void bt_core_destroy(struct bt_cpu *c);
/* Runs up to `budget` instructions or until an exit is requested; returns instructions run. */
uint64_t bt_exec(struct bt_cpu *c, uint64_t budget);
/* Decodes the instruction at linear address `lin` (fetch through the MMU; may raise #PF/#GP). */
void bt_decode_at(struct bt_cpu *c, uint64_t lin, struct bt_insn *out);
/* Decodes bytes (for tests and tools); returns 0 or -EINVAL if the bytes are not an instruction. */
int bt_decode_bytes(const uint8_t *bytes, size_t n, unsigned code_bits, struct bt_insn *out);
/* The decoded-code cache must forget translations of this guest-physical page. */
void bt_cache_invalidate_page(struct bt_cpu *c, uint64_t gpa_page);
void bt_cache_flush(struct bt_cpu *c);

/* operand helpers (core.c) */
uint64_t bt_op_ea(struct bt_cpu *c, const struct bt_insn *i, int n); /* effective offset */
uint64_t bt_op_lin(struct bt_cpu *c, const struct bt_insn *i, int n, unsigned size, int acc);
uint64_t bt_op_read(struct bt_cpu *c, const struct bt_insn *i, int n);
void bt_op_write(struct bt_cpu *c, const struct bt_insn *i, int n, uint64_t v);
uint64_t bt_gpr_read(const struct bt_cpu *c, unsigned reg, unsigned size);
/* Writes with x86 rules: 32-bit writes zero-extend to 64, 8/16-bit writes merge. */
void bt_gpr_write(struct bt_cpu *c, unsigned reg, unsigned size, uint64_t v);
void bt_push(struct bt_cpu *c, unsigned size, uint64_t v);
uint64_t bt_pop(struct bt_cpu *c, unsigned size);

/* mmu.c */
int bt_mmu_init(struct bt_cpu *c);
void bt_mmu_destroy(struct bt_cpu *c);
void bt_tlb_flush(struct bt_cpu *c, bool include_global);
void bt_tlb_flush_page(struct bt_cpu *c, uint64_t lin);
/* True if the TLB holds linear page `lin` as a global page (CR4.PGE set): only a flush that
 * includes global pages, or INVLPG, drops it. */
bool bt_tlb_page_global(const struct bt_cpu *c, uint64_t lin);
/* Linear address of seg:off for `size` bytes, with limit/canonical checks (#GP or #SS). */
uint64_t bt_seg_linear(struct bt_cpu *c, int seg, uint64_t off, unsigned size, int acc);
/* Linear-address accesses through paging with the current CPL (or supervisor if IMPLICIT). */
uint64_t bt_read(struct bt_cpu *c, uint64_t lin, unsigned size, int acc); /* size 1/2/4/8 */
void bt_write(struct bt_cpu *c, uint64_t lin, unsigned size, uint64_t v, int acc);
void bt_read_buf(struct bt_cpu *c, uint64_t lin, void *buf, size_t n, int acc);
void bt_write_buf(struct bt_cpu *c, uint64_t lin, const void *buf, size_t n, int acc);
/* Checks that [lin, lin+size) is writable now (for read-modify-write and multi-part writes). */
void bt_probe_write(struct bt_cpu *c, uint64_t lin, unsigned size, int acc);
/* Host pointer for an aligned RAM access that cannot cross a page (for LOCKed operations), or
 * NULL when the target is MMIO (the caller then emulates without host atomics). */
void *bt_host_ptr(struct bt_cpu *c, uint64_t lin, unsigned size, int acc);
/* Instruction fetch: copies up to `max` bytes at `lin`, stopping before a page that is not
 * executable/present; returns the count.  Sets *gpa to the physical address of the first byte. */
size_t bt_fetch(struct bt_cpu *c, uint64_t lin, uint8_t *buf, size_t max, uint64_t *gpa);
/* Marks a guest-physical page as holding decoded code: a write to it calls
 * bt_cache_invalidate_page() (self-modifying code) for every vCPU.  A RAM store also reports to
 * the dirty log and this watch (ram_written); the translator's inline stores (jit.c) skip both:
 * a TLB entry's write fast tag is set only for a page that is not watched while dirty logging is
 * off, and cleared in every vCPU's TLB when either changes (mmu.c: tlb_set_ftags, this function,
 * bt_mmu_dirty_started). */
void bt_watch_code_page(struct bt_cpu *c, uint64_t gpa_page);
/* Translation without side effects on failure (tools, tests): 0 and *gpa, or the #PF error code
 * (with bit 31 set so 0 is never an error).  Sets A/D bits like an access on success. */
#define BT_XLATE_FAULT 0x80000000u
uint32_t bt_translate(struct bt_cpu *c, uint64_t lin, int acc, uint64_t *gpa);
/* Physical accesses (page walks, tests): RAM or MMIO. */
uint64_t bt_phys_read(struct bt_cpu *c, uint64_t gpa, unsigned size);
void bt_phys_write(struct bt_cpu *c, uint64_t gpa, unsigned size, uint64_t v);

/* event.c */
#define BT_NO_ERRCODE 0xffffffffu
/* Raises an exception from inside an instruction: never returns (longjmp to the loop). */
_Noreturn void bt_raise(struct bt_cpu *c, int vector, uint32_t errcode);
_Noreturn void bt_raise_pf(struct bt_cpu *c, uint64_t lin, uint32_t errcode);
#define bt_ud(c)  bt_raise((c), X86_UD, BT_NO_ERRCODE)
#define bt_gp0(c) bt_raise((c), X86_GP, 0)
/* Delivers an exception or interrupt through the IDT (called by the loop, not by handlers).
 * soft: INT n/INT3/INTO (privilege check against the gate DPL, return address after the insn). */
enum bt_event_kind { BT_EV_EXCEPTION, BT_EV_EXTINT, BT_EV_NMI, BT_EV_SOFTINT };
void bt_deliver(struct bt_cpu *c, enum bt_event_kind kind, int vector, uint32_t errcode);
/* Between instructions: takes a pending NMI/external interrupt if IF/shadow allow; returns true if
 * one was delivered.  Also handles INIT/SIPI for application processors. */
bool bt_check_interrupts(struct bt_cpu *c);

/* seg.c */
void bt_update_mode(struct bt_cpu *c);
/* Loads a segment register from a selector with all protected-mode checks (MOV/POP Sreg, LDS..). */
void bt_load_seg(struct bt_cpu *c, int seg, uint16_t sel);
void bt_far_jump(struct bt_cpu *c, uint16_t sel, uint64_t off, bool is_call, unsigned opsize);
void bt_far_return(struct bt_cpu *c, unsigned opsize, uint16_t pop_extra);

/* system.c */
void bt_write_cr(struct bt_cpu *c, int n, uint64_t v); /* with all checks and side effects */
uint64_t bt_rdmsr(struct bt_cpu *c, uint32_t msr);     /* #GP for unknown MSRs */
void bt_wrmsr(struct bt_cpu *c, uint32_t msr, uint64_t v);
uint64_t bt_rdtsc(struct bt_cpu *c);
void bt_write_rflags(struct bt_cpu *c, uint64_t v, unsigned size); /* POPF/IRET rules */

/* fpu.c / sse.c */
void bt_fpu_reset(struct bt_cpu *c);
/* #NM / #UD checks shared by x87, MMX and SSE handlers */
void bt_fpu_check(struct bt_cpu *c);
void bt_sse_check(struct bt_cpu *c);

/* xsave.c: fills the xsave_* fields above with what a guest of the host's KVM sees (the host's
 * CPUID leaf 0xD, intersected with what the host OS enabled in its own XCR0). */
void bt_xsave_guest_view(struct bt_cpu *c);

/* backend.c: the KVM backend's fallback.  Executes exactly one instruction at s->rip on the
 * neutral state of vCPU cpu_index (through the guest's page tables; port I/O and MMIO go to the
 * devices) and writes the new state back; an exception the instruction raises is delivered to
 * the guest as hardware would.  Returns 0, or -errno with err_msg(). */
int bt_emulate_one(struct vm *vm, unsigned cpu_index, struct x86_state *s);

/* Host-flags helpers for ALU handlers (alu.c).  op is a small enum in alu.c. */
#define BT_ARITH_FLAGS                                                                             \
    (X86_FLAG_CF | X86_FLAG_PF | X86_FLAG_AF | X86_FLAG_ZF | X86_FLAG_SF | X86_FLAG_OF)
