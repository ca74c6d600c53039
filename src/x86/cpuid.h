/* The virtual CPU model: one CPUID table that the VM presents whichever backend runs it.
 *
 * The default model "lookout-v1" is a baseline x86-64 that the software CPU implements in full:
 *   leaf 1 EDX: FPU PSE TSC MSR PAE CX8 APIC SEP PGE CMOV PAT CLFSH MMX FXSR SSE SSE2
 *   leaf 1 ECX: CX16 TSC_DEADLINE HYPERVISOR (no SSE3+, no XSAVE, no x2APIC)
 *   leaf 6 EAX: ARAT (the LAPIC timer keeps running in idle);  leaf 0xb: one package, ncpus cores
 *   leaf 7: none;  0x80000001 EDX: SYSCALL NX RDTSCP LM, ECX: LAHF_LM
 *   leaves 0x15/0x16: TSC and crystal frequency, so Linux needs no calibration.  The crystal is
 *     1 GHz because Linux also programs the LAPIC timer from it: the LAPIC timer of both backends
 *     counts at 1 GHz (KVM's in-kernel LAPIC does); the ratio EBX/EAX = tsc_khz/1000000.
 *   leaf 0x40000000: max 0x40000010, signature "Lookout LKOT"; 0x40000010: EAX TSC kHz,
 *     EBX LAPIC bus kHz (1000000);  0x80000002-4: "lookout virtual CPU";  0x80000008: 40/48 bits
 *   vendor "GenuineIntel" (Linux reads leaf 0x15 only on Intel), family 6 model 0x2f stepping 1.
 * Under KVM the model is intersected with KVM_GET_SUPPORTED_CPUID; the result is what both
 * backends present, so a snapshot taken under one restores under the other.  "host" passes
 * through what KVM supports (KVM only).  Per-vCPU fields (APIC ID in leaves 1/0xb) are filled
 * by cpuid_query(). */
#pragma once
#include <stdbool.h>
#include <stdint.h>

#define CPUID_MAX_ENTRIES 80

struct cpuid_entry {
    uint32_t function, index;
    uint32_t flags; /* CPUID_FLAG_INDEXED: the index (ECX) selects among subleaves */
    uint32_t eax, ebx, ecx, edx;
};
#define CPUID_FLAG_INDEXED 1u

struct cpuid_model {
    char name[32];
    unsigned n;
    struct cpuid_entry e[CPUID_MAX_ENTRIES];
};

/* Builds `name` ("lookout-v1" or "host").  supported/nsupported: what the backend can present
 * (KVM_GET_SUPPORTED_CPUID), or NULL for the software CPU.  Fails with a clear message when the
 * backend lacks a feature the model requires. */
int cpuid_model_build(struct cpuid_model *m, const char *name, const struct cpuid_entry *supported,
                      unsigned nsupported, unsigned ncpus, uint64_t tsc_khz);
/* What CPUID(fn, idx) returns on the vCPU whose APIC ID is apic_id (out: eax, ebx, ecx, edx).
 * Leaves beyond the maximum return the highest basic leaf's values, as Intel CPUs do. */
void cpuid_query(const struct cpuid_model *m, uint32_t fn, uint32_t idx, unsigned apic_id,
                 uint32_t out[4]);
const struct cpuid_entry *cpuid_find(const struct cpuid_model *m, uint32_t fn, uint32_t idx);
