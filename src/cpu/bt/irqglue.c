/* TEMPORARY: see irqglue.h.  Placeholder behaviour until the LAPIC/IOAPIC/PIT devices land:
 * the LAPIC page reads all-ones, nothing is ever pending, TPR is stored for CR8 only.
 * Trusts nothing from the guest (nothing is interpreted). */
#include "cpu/bt/irqglue.h"

#include <string.h>

int bt_glue_lapic_create(struct bt_cpu *c)
{
    c->lapic = NULL;
    return 0;
}
void bt_glue_lapic_destroy(struct bt_cpu *c) {}
void bt_glue_lapic_read(struct bt_cpu *c, uint32_t off, uint8_t *data, unsigned size)
{
    memset(data, 0xff, size);
}
void bt_glue_lapic_write(struct bt_cpu *c, uint32_t off, const uint8_t *data, unsigned size) {}
int bt_glue_lapic_pending(struct bt_cpu *c) { return -1; }
void bt_glue_lapic_accept(struct bt_cpu *c, int vector) {}
uint64_t bt_glue_get_cr8(struct bt_cpu *c) { return c->s.cr8 & 0xf; }
void bt_glue_set_cr8(struct bt_cpu *c, uint64_t v) { c->s.cr8 = v & 0xf; }
void bt_glue_set_tsc_deadline(struct bt_cpu *c, uint64_t tsc) { c->s.tsc_deadline = tsc; }
int64_t bt_glue_next_event_ns(struct bt_cpu *c) { return -1; }
void bt_glue_timers(struct bt_cpu *c) {}
bool bt_glue_take_nmi(struct bt_cpu *c) { return false; }
bool bt_glue_take_init(struct bt_cpu *c) { return false; }
int bt_glue_take_sipi(struct bt_cpu *c) { return -1; }
int bt_glue_vm_create(struct vm *vm) { return 0; }
void bt_glue_vm_destroy(struct vm *vm) {}
int bt_glue_irq_line(struct vm *vm, unsigned gsi, int level) { return 0; }

/* TEMPORARY weak fallbacks for the CPUID model (x86/cpuid.c is another helper's, not on main
 * yet): an empty model answers zeros.  The real definitions replace these at link time. */
__attribute__((weak)) const struct cpuid_entry *cpuid_find(const struct cpuid_model *m,
                                                           uint32_t fn, uint32_t idx)
{
    for (unsigned k = 0; k < m->n && k < CPUID_MAX_ENTRIES; k++)
        if (m->e[k].function == fn && (!(m->e[k].flags & CPUID_FLAG_INDEXED) || m->e[k].index == idx))
            return &m->e[k];
    return NULL;
}
__attribute__((weak)) void cpuid_query(const struct cpuid_model *m, uint32_t fn, uint32_t idx,
                                       unsigned apic_id, uint32_t out[4])
{
    const struct cpuid_entry *e = cpuid_find(m, fn, idx);
    out[0] = e ? e->eax : 0;
    out[1] = e ? e->ebx : 0;
    out[2] = e ? e->ecx : 0;
    out[3] = e ? e->edx : 0;
}
