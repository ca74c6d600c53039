/* Glue between the software CPU and the user-space interrupt controllers and PIT (see
 * irqglue.h).  Trusts nothing from the guest: values are passed to the device models, which
 * check them. */
#include "cpu/bt/irqglue.h"

#include <errno.h>
#include <string.h>

#include "cpu/bt/btvm.h"
#include "devices/ioapic.h"
#include "devices/lapic.h"
#include "devices/pit.h"
#include "devices/vclock.h"
#include "util/log.h"

int64_t bt_glue_now(void)
{
    return vclock_ns();
}

static void kick_cb(void *ctx)
{
    bt_vcpu_wake(ctx);
}

int bt_glue_lapic_create(struct bt_cpu *c)
{
    struct bt_vm *bv = bt_vm_of(c->vm);
    c->lapic = NULL;
    if (!bv || !c->vcpu) return 0;
    c->lapic = lapic_create(c->vm, &bv->bus, c->vcpu->id, c->vcpu->id == 0, kick_cb, c->vcpu);
    if (!c->lapic) return -ENOMEM;
    c->s.apic_base = lapic_get_base(c->lapic);
    return 0;
}

void bt_glue_lapic_destroy(struct bt_cpu *c)
{
    lapic_destroy(c->lapic);
    c->lapic = NULL;
}

bool bt_glue_is_lapic_page(struct bt_cpu *c, uint64_t gpa)
{
    return c->lapic && (gpa & ~0xfffull) == lapic_mmio_base(c->lapic);
}

void bt_glue_lapic_read(struct bt_cpu *c, uint32_t off, uint8_t *data, unsigned size)
{
    lapic_mmio_read(c->lapic, off, data, size, vclock_ns());
}

void bt_glue_lapic_write(struct bt_cpu *c, uint32_t off, const uint8_t *data, unsigned size)
{
    lapic_mmio_write(c->lapic, off, data, size, vclock_ns());
}

int bt_glue_lapic_pending(struct bt_cpu *c)
{
    return c->lapic ? lapic_pending_vector(c->lapic) : -1;
}

void bt_glue_lapic_accept(struct bt_cpu *c, int vector)
{
    if (c->lapic) lapic_accept(c->lapic, vector);
}

uint64_t bt_glue_get_cr8(struct bt_cpu *c)
{
    if (!c->lapic) return c->s.cr8 & 0xf;
    return (lapic_reg_read(c->lapic, APIC_TPR, vclock_ns()) >> 4) & 0xf;
}

void bt_glue_set_cr8(struct bt_cpu *c, uint64_t v)
{
    c->s.cr8 = v & 0xf;
    if (c->lapic) lapic_reg_write(c->lapic, APIC_TPR, (uint32_t)(v & 0xf) << 4, vclock_ns());
}

bool bt_glue_set_apic_base(struct bt_cpu *c, uint64_t v, unsigned maxphy)
{
    if (!c->lapic) return true;
    return lapic_set_base(c->lapic, v, maxphy) >= 0;
}

uint64_t bt_glue_tsc(struct bt_cpu *c)
{
    return (c->vm ? vclock_tsc(c->vm) : vclock_ns_to_ticks(0, vclock_ns())) + c->tsc_offset;
}

uint64_t bt_glue_get_tsc_deadline(struct bt_cpu *c)
{
    return c->lapic ? lapic_get_tsc_deadline(c->lapic) : c->s.tsc_deadline;
}

void bt_glue_set_tsc_deadline(struct bt_cpu *c, uint64_t tsc)
{
    c->s.tsc_deadline = tsc;
    if (!c->lapic) return;
    int64_t now = vclock_ns();
    uint64_t tsc_now =
        (c->vm ? vclock_tsc_at(c->vm, now) : vclock_ns_to_ticks(0, now)) + c->tsc_offset;
    lapic_set_tsc_deadline(c->lapic, tsc, now, tsc_now);
}

int64_t bt_glue_next_event_ns(struct bt_cpu *c)
{
    int64_t t = c->lapic ? lapic_next_event_ns(c->lapic) : INT64_MAX;
    struct bt_vm *bv = bt_vm_of(c->vm);
    if (c->index == 0 && bv && bv->pit) {
        int64_t p = pit_next_event_ns(bv->pit);
        if (p < t) t = p;
    }
    return t;
}

void bt_glue_timers(struct bt_cpu *c)
{
    int64_t now = vclock_ns();
    if (c->lapic && lapic_next_event_ns(c->lapic) <= now) lapic_update_timer(c->lapic, now);
    struct bt_vm *bv = bt_vm_of(c->vm);
    /* The PIT is the VM's: vCPU 0 drives it (its halt wait includes the PIT's deadline). */
    if (c->index == 0 && bv && bv->pit && pit_next_event_ns(bv->pit) <= now)
        pit_update(bv->pit, now);
}

bool bt_glue_attention(struct bt_cpu *c)
{
    return c->lapic && lapic_attention(c->lapic);
}
bool bt_glue_take_nmi(struct bt_cpu *c)
{
    return c->lapic && lapic_take_nmi(c->lapic);
}
bool bt_glue_take_init(struct bt_cpu *c)
{
    return c->lapic && lapic_take_init(c->lapic);
}
int bt_glue_take_sipi(struct bt_cpu *c)
{
    return c->lapic ? lapic_take_sipi(c->lapic) : -1;
}
void bt_glue_set_wait_for_sipi(struct bt_cpu *c, bool wait)
{
    if (c->lapic) lapic_set_wait_for_sipi(c->lapic, wait);
}

int bt_glue_vm_create(struct vm *vm)
{
    struct bt_vm *bv = bt_vm_of(vm);
    if (!bv) return err_set(EINVAL, "software CPU: no VM state for the interrupt controllers");
    bv->ioapic = ioapic_create(vm, lapic_bus_deliver_cb, &bv->bus);
    if (!bv->ioapic) return -ENOMEM;
    lapic_bus_init(&bv->bus, ioapic_eoi_cb, bv->ioapic);
    int r = ioapic_attach(vm, bv->ioapic);
    if (r < 0) goto fail;
    /* PIT channel 0 drives IOAPIC pin 2 (the ISA IRQ 0 override every PC board has). */
    struct irq_line irq0 = {.set = ioapic_irq_line_cb, .ctx = bv->ioapic, .gsi = 2};
    bv->pit = pit_create(vm, &irq0);
    if (!bv->pit) {
        r = -ENOMEM;
        goto fail;
    }
    r = pit_attach(vm, bv->pit);
    if (r < 0) goto fail;
    return 0;
fail:
    bt_glue_vm_destroy(vm);
    return r;
}

void bt_glue_vm_destroy(struct vm *vm)
{
    struct bt_vm *bv = bt_vm_of(vm);
    if (!bv) return;
    pit_destroy(bv->pit);
    ioapic_destroy(bv->ioapic);
    bv->pit = NULL;
    bv->ioapic = NULL;
}

int bt_glue_irq_line(struct vm *vm, unsigned gsi, int level)
{
    struct bt_vm *bv = bt_vm_of(vm);
    if (!bv || !bv->ioapic) return err_set(ENODEV, "software CPU: no IOAPIC");
    if (gsi >= IOAPIC_NUM_PINS) return err_set(EINVAL, "GSI %u has no IOAPIC pin", gsi);
    ioapic_set_irq(bv->ioapic, gsi == 0 ? 2 : gsi, level);
    return 0;
}

int bt_glue_get_lapic(struct bt_cpu *c, struct lapic_state *s)
{
    if (!c->lapic) return err_set(ENODEV, "software CPU: this vCPU has no LAPIC");
    lapic_get_state(c->lapic, s, vclock_ns());
    return 0;
}
int bt_glue_set_lapic(struct bt_cpu *c, const struct lapic_state *s)
{
    if (!c->lapic) return err_set(ENODEV, "software CPU: this vCPU has no LAPIC");
    return lapic_set_state(c->lapic, s, vclock_ns());
}
int bt_glue_get_ioapic(struct vm *vm, struct ioapic_state *s)
{
    struct bt_vm *bv = bt_vm_of(vm);
    if (!bv || !bv->ioapic) return err_set(ENODEV, "software CPU: no IOAPIC");
    ioapic_get_state(bv->ioapic, s);
    return 0;
}
int bt_glue_set_ioapic(struct vm *vm, const struct ioapic_state *s)
{
    struct bt_vm *bv = bt_vm_of(vm);
    if (!bv || !bv->ioapic) return err_set(ENODEV, "software CPU: no IOAPIC");
    return ioapic_set_state(bv->ioapic, s);
}
int bt_glue_get_pit(struct vm *vm, struct pit_state *s)
{
    struct bt_vm *bv = bt_vm_of(vm);
    if (!bv || !bv->pit) return err_set(ENODEV, "software CPU: no PIT");
    pit_get_state(bv->pit, s);
    return 0;
}
int bt_glue_set_pit(struct vm *vm, const struct pit_state *s)
{
    struct bt_vm *bv = bt_vm_of(vm);
    if (!bv || !bv->pit) return err_set(ENODEV, "software CPU: no PIT");
    return pit_set_state(bv->pit, s, vclock_ns());
}
