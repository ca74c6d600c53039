/* The CPUID model "lookout-v1" (and "host"): builds the table both backends present and answers
 * CPUID queries from it.  Trusts: the `supported` table from the backend (KVM's own report); the
 * guest only chooses which leaf to read, and every leaf/subleaf is looked up, never indexed. */
#include "x86/cpuid.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "util/log.h"

/* Feature bits by name (Intel SDM Vol.2A CPUID). */
#define F1D_FPU          (1u << 0)
#define F1D_PSE          (1u << 3)
#define F1D_TSC          (1u << 4)
#define F1D_MSR          (1u << 5)
#define F1D_PAE          (1u << 6)
#define F1D_CX8          (1u << 8)
#define F1D_APIC         (1u << 9)
#define F1D_SEP          (1u << 11)
#define F1D_PGE          (1u << 13)
#define F1D_CMOV         (1u << 15)
#define F1D_PAT          (1u << 16)
#define F1D_CLFSH        (1u << 19)
#define F1D_MMX          (1u << 23)
#define F1D_FXSR         (1u << 24)
#define F1D_SSE          (1u << 25)
#define F1D_SSE2         (1u << 26)
#define F1C_CX16         (1u << 13)
#define F1C_TSC_DEADLINE (1u << 24)
#define F1C_HYPERVISOR   (1u << 31)
#define F6A_ARAT         (1u << 2)
#define F7B_TSC_ADJUST   (1u << 1)
#define FX7D_INVTSC      (1u << 8)
#define FX1C_LAHF        (1u << 0)
#define FX1D_SYSCALL     (1u << 11)
#define FX1D_NX          (1u << 20)
#define FX1D_RDTSCP      (1u << 27)
#define FX1D_LM          (1u << 29)

#define MODEL_SIGNATURE 0x000206f1u /* family 6, model 0x2f, stepping 1 */
#define LAPIC_BUS_KHZ   1000000u    /* the LAPIC timer and the 0x15 crystal tick at 1 GHz */
#define PHYS_BITS       40u
#define VIRT_BITS       48u
#define HV_SIGNATURE    "Lookout LKOT" /* 12 bytes: EBX, ECX, EDX of leaf 0x40000000 */

/* Which register of which leaf holds feature flags (intersected with the backend's support). */
struct feature_reg {
    uint32_t fn, idx;
    int reg; /* 0 eax .. 3 edx */
};
static const struct feature_reg feature_regs[] = {
    {1, 0, 2}, {1, 0, 3},          {6, 0, 0},          {7, 0, 1},          {7, 0, 2},
    {7, 0, 3}, {0x80000001, 0, 2}, {0x80000001, 0, 3}, {0x80000007, 0, 3},
};

/* Features the guest kernel cannot boot without: a backend lacking any is refused. */
static const struct {
    uint32_t fn;
    int reg;
    uint32_t bit;
    const char *name;
} required[] = {
    {1, 3, F1D_FPU, "FPU"},
    {1, 3, F1D_TSC, "TSC"},
    {1, 3, F1D_MSR, "MSR"},
    {1, 3, F1D_PAE, "PAE"},
    {1, 3, F1D_CX8, "CX8"},
    {1, 3, F1D_APIC, "APIC"},
    {1, 3, F1D_PGE, "PGE"},
    {1, 3, F1D_CMOV, "CMOV"},
    {1, 3, F1D_PAT, "PAT"},
    {1, 3, F1D_FXSR, "FXSR"},
    {1, 3, F1D_SSE, "SSE"},
    {1, 3, F1D_SSE2, "SSE2"},
    {0x80000001, 3, FX1D_LM, "LM"},
    {0x80000001, 3, FX1D_NX, "NX"},
    {0x80000001, 3, FX1D_SYSCALL, "SYSCALL"},
};

/* Bits the VMM defines itself rather than the host CPU: never masked by the intersection. */
static uint32_t vmm_owned_bits(uint32_t fn, int reg)
{
    if (fn == 1 && reg == 2) return F1C_HYPERVISOR;
    return 0;
}

static uint32_t *reg_of(struct cpuid_entry *e, int reg)
{
    switch (reg) {
    case 0: return &e->eax;
    case 1: return &e->ebx;
    case 2: return &e->ecx;
    default: return &e->edx;
    }
}

static uint32_t reg_val(const struct cpuid_entry *e, int reg)
{
    return *reg_of((struct cpuid_entry *)e, reg);
}

static const struct cpuid_entry *find_in(const struct cpuid_entry *t, unsigned n, uint32_t fn,
                                         uint32_t idx)
{
    for (unsigned i = 0; i < n; i++) {
        if (t[i].function != fn) continue;
        if ((t[i].flags & CPUID_FLAG_INDEXED) && t[i].index != idx) continue;
        return &t[i];
    }
    return NULL;
}

const struct cpuid_entry *cpuid_find(const struct cpuid_model *m, uint32_t fn, uint32_t idx)
{
    return find_in(m->e, m->n, fn, idx);
}

static int add(struct cpuid_model *m, uint32_t fn, uint32_t idx, uint32_t flags, uint32_t a,
               uint32_t b, uint32_t c, uint32_t d)
{
    for (unsigned i = 0; i < m->n; i++)
        if (m->e[i].function == fn && m->e[i].index == idx) {
            m->e[i] = (struct cpuid_entry){fn, idx, flags, a, b, c, d};
            return 0;
        }
    if (m->n >= CPUID_MAX_ENTRIES)
        return err_set(ENOSPC, "CPUID model %s has more than %d entries", m->name,
                       CPUID_MAX_ENTRIES);
    m->e[m->n++] = (struct cpuid_entry){fn, idx, flags, a, b, c, d};
    return 0;
}

static uint32_t str4(const char *s)
{
    return (uint32_t)(uint8_t)s[0] | (uint32_t)(uint8_t)s[1] << 8 | (uint32_t)(uint8_t)s[2] << 16 |
           (uint32_t)(uint8_t)s[3] << 24;
}

static unsigned ceil_log2(unsigned n)
{
    unsigned s = 0;
    while ((1u << s) < n)
        s++;
    return s;
}

/* Leaves that describe the VM rather than the CPU: topology, frequencies, hypervisor, brand. */
/* The 0x15 ratio EBX/EAX = tsc_khz / LAPIC_BUS_KHZ.  Linux computes (ECX / 1000) * EBX in 32 bits,
 * so EBX must stay at or below 2^32 / crystal_khz (4294): with EBX = tsc_khz it overflowed and the
 * guest saw a 1.5 MHz TSC (timer storms).  The ratio is the best rational approximation with that
 * bound (continued fractions): exact for whole-MHz rates, within about 1e-7 otherwise. */
static void tsc_ratio(uint64_t tsc_khz, uint32_t *num, uint32_t *den)
{
    const uint64_t nmax = 0xffffffffull / LAPIC_BUS_KHZ;
    uint64_t p0 = 0, q0 = 1, p1 = 1, q1 = 0; /* convergents p/q of tsc_khz / LAPIC_BUS_KHZ */
    uint64_t x = tsc_khz, y = LAPIC_BUS_KHZ;
    while (y) {
        uint64_t a = x / y, t = x % y;
        if (a * p1 + p0 > nmax) {
            uint64_t k = p1 ? (nmax - p0) / p1 : 0; /* best semiconvergent within the bound */
            if (k && 2 * k >= a) p1 = k * p1 + p0, q1 = k * q1 + q0;
            break;
        }
        uint64_t p2 = a * p1 + p0, q2 = a * q1 + q0;
        p0 = p1, q0 = q1, p1 = p2, q1 = q2;
        x = y;
        y = t;
    }
    *num = (uint32_t)(p1 ? p1 : 1);
    *den = (uint32_t)(q1 ? q1 : 1);
}

static int add_vm_leaves(struct cpuid_model *m, unsigned ncpus, uint64_t tsc_khz)
{
    int r = 0;
    unsigned shift = ceil_log2(ncpus ? ncpus : 1);
    /* 0xb: one package of ncpus cores, one thread each; EDX (x2APIC ID) is per vCPU */
    r |= add(m, 0xb, 0, CPUID_FLAG_INDEXED, 0, 1, 0x100, 0);
    r |= add(m, 0xb, 1, CPUID_FLAG_INDEXED, shift, ncpus, 0x201, 0);
    r |= add(m, 0xb, 2, CPUID_FLAG_INDEXED, 0, 0, 2, 0);
    /* 0x15: TSC = crystal * EBX / EAX.  The crystal is the LAPIC timer clock (Linux programs the
     * LAPIC timer from it), so it runs at the LAPIC bus rate and the ratio carries the TSC rate. */
    uint32_t num, den;
    tsc_ratio(tsc_khz, &num, &den);
    r |= add(m, 0x15, 0, 0, den, num, LAPIC_BUS_KHZ * 1000u, 0);
    r |= add(m, 0x16, 0, 0, (uint32_t)(tsc_khz / 1000), (uint32_t)(tsc_khz / 1000),
             LAPIC_BUS_KHZ / 1000, 0);
    char sig[13] = HV_SIGNATURE;
    r |= add(m, 0x40000000, 0, 0, 0x40000010, str4(sig), str4(sig + 4), str4(sig + 8));
    r |= add(m, 0x40000010, 0, 0, (uint32_t)tsc_khz, LAPIC_BUS_KHZ, 0, 0);
    char brand[48] = "lookout virtual CPU";
    for (unsigned i = 0; i < 3; i++)
        r |= add(m, 0x80000002 + i, 0, 0, str4(brand + 16 * i), str4(brand + 16 * i + 4),
                 str4(brand + 16 * i + 8), str4(brand + 16 * i + 12));
    return r;
}

static int build_v1(struct cpuid_model *m, unsigned ncpus, uint64_t tsc_khz)
{
    int r = 0;
    r |= add(m, 0, 0, 0, 0x16, str4("Genu"), str4("ntel"), str4("ineI"));
    /* EBX: CLFLUSH line size 8 qwords, logical processors per package, APIC ID (per vCPU) */
    r |=
        add(m, 1, 0, 0, MODEL_SIGNATURE, 8u << 8 | (ncpus & 0xff) << 16,
            F1C_CX16 | F1C_TSC_DEADLINE | F1C_HYPERVISOR,
            F1D_FPU | F1D_PSE | F1D_TSC | F1D_MSR | F1D_PAE | F1D_CX8 | F1D_APIC | F1D_SEP |
                F1D_PGE | F1D_CMOV | F1D_PAT | F1D_CLFSH | F1D_MMX | F1D_FXSR | F1D_SSE | F1D_SSE2);
    r |= add(m, 6, 0, 0, F6A_ARAT, 0, 0, 0);
    /* TSC_ADJUST and the invariant TSC: the TSC runs at one rate from the host's monotonic clock
     * and never stops, which is what these say.  With both (and constant TSC, which Linux infers
     * from the invariant bit on Intel) Linux trusts the TSC and runs no clocksource watchdog
     * against its jiffies, which a busy host delays: without them a loaded host made the guest
     * mark its TSC unstable and fall back to refined-jiffies, a clock that runs slow. */
    r |= add(m, 7, 0, CPUID_FLAG_INDEXED, 0, F7B_TSC_ADJUST, 0, 0);
    r |= add(m, 0x80000000, 0, 0, 0x80000008, 0, 0, 0);
    r |= add(m, 0x80000001, 0, 0, 0, 0, FX1C_LAHF, FX1D_SYSCALL | FX1D_NX | FX1D_RDTSCP | FX1D_LM);
    r |= add(m, 0x80000007, 0, 0, 0, 0, 0, FX7D_INVTSC);
    r |= add(m, 0x80000008, 0, 0, VIRT_BITS << 8 | PHYS_BITS, 0, 0, 0);
    if (r) return r;
    return add_vm_leaves(m, ncpus, tsc_khz);
}

/* "host": everything the backend supports, with the VM-describing leaves of lookout-v1. */
static int build_host(struct cpuid_model *m, const struct cpuid_entry *sup, unsigned nsup,
                      unsigned ncpus, uint64_t tsc_khz)
{
    for (unsigned i = 0; i < nsup; i++) {
        if (sup[i].function >= 0x40000000 && sup[i].function < 0x80000000) continue;
        if (sup[i].function == 0xb || sup[i].function == 0x1f) continue; /* host topology */
        int r = add(m, sup[i].function, sup[i].index, sup[i].flags, sup[i].eax, sup[i].ebx,
                    sup[i].ecx, sup[i].edx);
        if (r) return r;
    }
    struct cpuid_entry *l0 = (struct cpuid_entry *)cpuid_find(m, 0, 0);
    struct cpuid_entry *l1 = (struct cpuid_entry *)cpuid_find(m, 1, 0);
    if (!l0 || !l1) return err_set(EINVAL, "the backend reports no CPUID leaf 0 or 1");
    if (l0->eax < 0x16) l0->eax = 0x16;
    l1->ebx = (l1->ebx & 0xffff) | (ncpus & 0xff) << 16;
    l1->ecx |= F1C_HYPERVISOR;
    return add_vm_leaves(m, ncpus, tsc_khz);
}

int cpuid_model_build(struct cpuid_model *m, const char *name, const struct cpuid_entry *supported,
                      unsigned nsupported, unsigned ncpus, uint64_t tsc_khz)
{
    memset(m, 0, sizeof(*m));
    if (!name) name = "lookout-v1";
    snprintf(m->name, sizeof(m->name), "%s", name);
    if (ncpus == 0 || ncpus > 255)
        return err_set(EINVAL, "CPUID model: %u vCPUs is out of range (1..255)", ncpus);
    if (tsc_khz == 0 || tsc_khz > 0xffffffffu)
        return err_set(EINVAL, "CPUID model: TSC frequency %llu kHz is out of range",
                       (unsigned long long)tsc_khz);
    int r;
    if (!strcmp(name, "lookout-v1")) {
        r = build_v1(m, ncpus, tsc_khz);
    } else if (!strcmp(name, "host")) {
        if (!supported)
            return err_set(ENOTSUP, "CPU model \"host\" needs KVM (it passes through what KVM "
                                    "supports); use --cpu-model lookout-v1 with this backend");
        r = build_host(m, supported, nsupported, ncpus, tsc_khz);
    } else {
        return err_set(EINVAL, "unknown CPU model \"%s\": use lookout-v1 or host", name);
    }
    if (r) return r;

    if (supported) {
        /* Keep only the features the backend can present; the model is then the same whichever
         * backend runs the VM (the software CPU implements all of lookout-v1). */
        for (unsigned i = 0; i < ARRAY_SIZE(feature_regs); i++) {
            const struct feature_reg *f = &feature_regs[i];
            struct cpuid_entry *e = (struct cpuid_entry *)cpuid_find(m, f->fn, f->idx);
            if (!e) continue;
            const struct cpuid_entry *s = find_in(supported, nsupported, f->fn, f->idx);
            uint32_t keep = (s ? reg_val(s, f->reg) : 0) | vmm_owned_bits(f->fn, f->reg);
            uint32_t *v = reg_of(e, f->reg);
            if (*v & ~keep)
                log_info("CPUID %#x.%u reg %d: backend lacks bits %#x, not presented", f->fn,
                         f->idx, f->reg, *v & ~keep);
            *v &= keep;
        }
        /* Never claim more physical address bits than the host has. */
        struct cpuid_entry *e = (struct cpuid_entry *)cpuid_find(m, 0x80000008, 0);
        const struct cpuid_entry *s = find_in(supported, nsupported, 0x80000008, 0);
        if (e && s && (s->eax & 0xff) && (s->eax & 0xff) < (e->eax & 0xff))
            e->eax = (e->eax & ~0xffu) | (s->eax & 0xff);
    }

    char missing[256] = "";
    size_t len = 0;
    for (unsigned i = 0; i < ARRAY_SIZE(required); i++) {
        const struct cpuid_entry *e = cpuid_find(m, required[i].fn, 0);
        if (e && (reg_val(e, required[i].reg) & required[i].bit)) continue;
        len += (size_t)snprintf(missing + len, sizeof(missing) - MIN(len, sizeof(missing)), " %s",
                                required[i].name);
        if (len >= sizeof(missing)) len = sizeof(missing) - 1;
    }
    if (missing[0])
        return err_set(ENOTSUP,
                       "this CPU backend lacks CPU features the guest needs:%s (CPU model %s); "
                       "try --cpu bt, which implements them in software",
                       missing, m->name);
    return 0;
}

void cpuid_query(const struct cpuid_model *m, uint32_t fn, uint32_t idx, unsigned apic_id,
                 uint32_t out[4])
{
    out[0] = out[1] = out[2] = out[3] = 0;
    const struct cpuid_entry *l0 = cpuid_find(m, 0, 0);
    uint32_t max_basic = l0 ? l0->eax : 0;
    const struct cpuid_entry *x0 = cpuid_find(m, 0x80000000, 0);
    uint32_t max_ext = x0 ? x0->eax : 0;
    const struct cpuid_entry *h0 = cpuid_find(m, 0x40000000, 0);
    uint32_t max_hv = h0 ? h0->eax : 0;

    bool beyond;
    if (fn < 0x40000000)
        beyond = fn > max_basic;
    else if (fn < 0x80000000)
        beyond = !h0 || fn > max_hv;
    else
        beyond = fn > max_ext;
    if (beyond && fn >= 0x40000000 && fn < 0x80000000) return; /* no hypervisor leaf: zeros */
    if (beyond) {
        /* Intel: an out-of-range leaf returns the highest basic leaf (subleaf index kept). */
        fn = max_basic;
    }
    const struct cpuid_entry *e = cpuid_find(m, fn, idx);
    if (!e) {
        if (fn == 0xb) out[2] = idx & 0xff, out[3] = apic_id; /* invalid level, as hardware */
        return;
    }
    out[0] = e->eax;
    out[1] = e->ebx;
    out[2] = e->ecx;
    out[3] = e->edx;
    if (fn == 1) {
        out[1] = (out[1] & 0x00ffffffu) | (apic_id & 0xff) << 24;
    } else if (fn == 0xb) {
        out[3] = apic_id;
        out[2] = (out[2] & ~0xffu) | (idx & 0xff);
    }
}
