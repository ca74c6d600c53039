/* Reset state and register dumps for the neutral vCPU state.  Pure functions: no guest input. */
#include "x86/state.h"

#include <cpuid.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "util/log.h"

static void seg_reset(struct x86_seg *sg, uint16_t sel, uint64_t base, uint8_t type, uint8_t s)
{
    memset(sg, 0, sizeof(*sg));
    sg->sel = sel;
    sg->base = base;
    sg->limit = 0xffff;
    sg->type = type;
    sg->s = s;
    sg->present = 1;
}

void x86_state_reset(struct x86_state *s, unsigned apic_id, bool bsp)
{
    memset(s, 0, sizeof(*s));
    s->rip = 0xfff0;
    s->rflags = X86_FLAG_FIXED;
    s->gpr[RDX] = 0x600; /* family/model/stepping signature, as at RESET */
    seg_reset(&s->seg[SEG_CS], 0xf000, 0xffff0000, 0xb, 1);
    for (int i = 0; i < SEG_COUNT; i++) {
        if (i == SEG_CS) continue;
        if (i == SEG_LDTR)
            seg_reset(&s->seg[i], 0, 0, 0x2, 0);
        else if (i == SEG_TR)
            seg_reset(&s->seg[i], 0, 0, 0xb, 0);
        else
            seg_reset(&s->seg[i], 0, 0, 0x3, 1);
    }
    s->gdtr.limit = 0xffff;
    s->idtr.limit = 0xffff;
    s->cr0 = X86_CR0_ET | X86_CR0_NW | X86_CR0_CD;
    s->dr6 = 0xffff0ff0;
    s->dr7 = 0x400;
    s->xcr0 = 1;
    s->pat = 0x0007040600070406ull;
    s->apic_base = 0xfee00000ull | (1u << 11) | (bsp ? (1u << 8) : 0);
    s->fx.fcw = 0x37f;
    s->fx.mxcsr = 0x1f80;
    s->fx.mxcsr_mask = 0xffff;
    s->mp_state = bsp ? MP_RUNNABLE : MP_WAIT_FOR_SIPI;
    (void)apic_id;
}

void x86_state_dump(const struct x86_state *s, int fd)
{
    static const char *gn[16] = {"rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
                                 "r8",  "r9",  "r10", "r11", "r12", "r13", "r14", "r15"};
    static const char *sn[SEG_COUNT] = {"es", "cs", "ss", "ds", "fs", "gs", "ldtr", "tr"};
    dprintf(fd, "  rip=%016llx rflags=%08llx\r\n", (unsigned long long)s->rip,
            (unsigned long long)s->rflags);
    for (int i = 0; i < 16; i += 4)
        dprintf(fd, "  %-3s=%016llx %-3s=%016llx %-3s=%016llx %-3s=%016llx\r\n", gn[i],
                (unsigned long long)s->gpr[i], gn[i + 1], (unsigned long long)s->gpr[i + 1],
                gn[i + 2], (unsigned long long)s->gpr[i + 2], gn[i + 3],
                (unsigned long long)s->gpr[i + 3]);
    for (int i = 0; i < SEG_COUNT; i++) {
        const struct x86_seg *g = &s->seg[i];
        dprintf(fd,
                "  %-4s sel=%04x base=%016llx limit=%08x type=%x s=%u dpl=%u p=%u l=%u db=%u\r\n",
                sn[i], g->sel, (unsigned long long)g->base, g->limit, g->type, g->s, g->dpl,
                g->present, g->l, g->db);
    }
    dprintf(fd, "  gdt=%016llx/%04x idt=%016llx/%04x\r\n", (unsigned long long)s->gdtr.base,
            s->gdtr.limit, (unsigned long long)s->idtr.base, s->idtr.limit);
    dprintf(fd, "  cr0=%016llx cr2=%016llx cr3=%016llx cr4=%016llx efer=%llx\r\n",
            (unsigned long long)s->cr0, (unsigned long long)s->cr2, (unsigned long long)s->cr3,
            (unsigned long long)s->cr4, (unsigned long long)s->efer);
}

const struct x86_xcomp x86_xcomps[4] = {
    {2, 576, 256, 128, offsetof(struct x86_state, ymmh)},
    {5, 1088, 64, 64, offsetof(struct x86_state, opmask)},
    {6, 1152, 512, 256, offsetof(struct x86_state, zmmh)},
    {7, 1664, 1024, 0, offsetof(struct x86_state, zmm16)},
};

static unsigned host_std_off[ARRAY_SIZE(x86_xcomps)];
static pthread_once_t host_std_once = PTHREAD_ONCE_INIT;
static void host_std_probe(void)
{
    unsigned max = __get_cpuid_max(0, NULL);
    for (unsigned k = 0; k < ARRAY_SIZE(x86_xcomps); k++) {
        const struct x86_xcomp *x = &x86_xcomps[k];
        unsigned a = 0, b = 0, c = 0, d = 0;
        if (max >= 0xd) __cpuid_count(0xd, x->bit, a, b, c, d);
        /* a host that enumerates the component with its architectural size and a standard
         * offset past the legacy region and header: that offset; otherwise Intel's */
        host_std_off[k] = (a == x->size && b >= 576 && b + a <= 4096) ? b : x->std_off;
    }
}

unsigned x86_xcomp_std_off(const struct x86_xcomp *x)
{
    pthread_once(&host_std_once, host_std_probe);
    return host_std_off[x - x86_xcomps];
}
