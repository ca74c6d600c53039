/* User-space I/O APIC (see ioapic.h).  Trusts nothing: the guest picks any register index and
 * value (masked to the defined bits), devices any pin number (bounds-checked), and restored state
 * is validated before use. */
#include "devices/ioapic.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/cpu.h"
#include "machine/layout.h"
#include "util/log.h"

struct ioapic {
    pthread_mutex_t lock;
    struct ioapic_state st; /* irr is recomputed from `line` when read */
    uint32_t line;          /* asserted input pins */
    ioapic_deliver_fn deliver;
    void *deliver_ctx;
    struct vm *vm;
};

static uint32_t level_pins(const struct ioapic *io)
{
    uint32_t m = 0;
    for (unsigned i = 0; i < IOAPIC_NUM_PINS; i++)
        if (io->st.redirtbl[i] & IOAPIC_RTE_LEVEL) m |= 1u << i;
    return m;
}

/* Sends pin's interrupt if its entry and line allow it (lock held). */
static void service_locked(struct ioapic *io, unsigned pin)
{
    uint64_t *e = &io->st.redirtbl[pin];
    if (*e & IOAPIC_RTE_MASKED) return;
    bool level = *e & IOAPIC_RTE_LEVEL;
    if (level && (!(io->line & (1u << pin)) || (*e & IOAPIC_RTE_REMOTE_IRR))) return;
    struct apic_irq irq = {
        .vector = (uint8_t)*e,
        .delivery_mode = (*e >> 8) & 7,
        .logical = (*e & IOAPIC_RTE_LOGICAL) != 0,
        .level = true,
        .level_trig = level,
        .dest = (uint8_t)(*e >> 56),
    };
    if (irq.delivery_mode == APIC_DM_SIPI || irq.delivery_mode == 3) {
        log_debug("ioapic: pin %u has reserved delivery mode %u; not delivered", pin,
                  irq.delivery_mode);
        return;
    }
    int n = io->deliver ? io->deliver(io->deliver_ctx, &irq) : 0;
    if (level && n > 0) *e |= IOAPIC_RTE_REMOTE_IRR;
}

static void reset_locked(struct ioapic *io)
{
    memset(&io->st, 0, sizeof(io->st));
    io->st.base_address = LAYOUT_IOAPIC_BASE;
    for (unsigned i = 0; i < IOAPIC_NUM_PINS; i++)
        io->st.redirtbl[i] = IOAPIC_RTE_MASKED;
    io->line = 0;
}

struct ioapic *ioapic_create(struct vm *vm, ioapic_deliver_fn deliver, void *deliver_ctx)
{
    struct ioapic *io = calloc(1, sizeof(*io));
    if (!io) {
        err_set(ENOMEM, "IOAPIC: out of memory");
        return NULL;
    }
    pthread_mutex_init(&io->lock, NULL);
    io->vm = vm;
    io->deliver = deliver;
    io->deliver_ctx = deliver_ctx;
    reset_locked(io);
    return io;
}

void ioapic_destroy(struct ioapic *io)
{
    if (!io) return;
    pthread_mutex_destroy(&io->lock);
    free(io);
}

/* ---- registers ---- */

static uint32_t reg_read_locked(struct ioapic *io, uint32_t idx)
{
    switch (idx) {
    case IOAPIC_REG_ID:
    case IOAPIC_REG_ARB: return (io->st.id & 0xf) << 24; /* arbitration ID follows the ID */
    case IOAPIC_REG_VER: return IOAPIC_VERSION | ((IOAPIC_NUM_PINS - 1) << 16);
    }
    if (idx >= IOAPIC_REG_REDTBL && idx < IOAPIC_REG_REDTBL + 2 * IOAPIC_NUM_PINS) {
        uint64_t e = io->st.redirtbl[(idx - IOAPIC_REG_REDTBL) / 2];
        return (idx & 1) ? (uint32_t)(e >> 32) : (uint32_t)e;
    }
    return idx >= IOAPIC_REG_REDTBL ? 0xffffffffu : 0;
}

static void reg_write_locked(struct ioapic *io, uint32_t idx, uint32_t val)
{
    if (idx == IOAPIC_REG_ID) {
        io->st.id = (val >> 24) & 0xf;
        return;
    }
    if (idx < IOAPIC_REG_REDTBL || idx >= IOAPIC_REG_REDTBL + 2 * IOAPIC_NUM_PINS) {
        log_debug("ioapic: write %#x to read-only or reserved register %#x ignored", val, idx);
        return;
    }
    unsigned pin = (idx - IOAPIC_REG_REDTBL) / 2;
    uint64_t *e = &io->st.redirtbl[pin];
    if (idx & 1) {
        *e = (*e & 0xffffffffull) | (((uint64_t)val << 32) & IOAPIC_RTE_WRITABLE);
        return;
    }
    uint64_t ro = *e & (IOAPIC_RTE_REMOTE_IRR | IOAPIC_RTE_DS);
    *e = (*e & 0xffffffff00000000ull) | ((uint64_t)val & IOAPIC_RTE_WRITABLE & 0xffffffffull) | ro;
    /* Remote IRR only has a meaning for level-triggered entries */
    if (!(*e & IOAPIC_RTE_LEVEL)) *e &= ~IOAPIC_RTE_REMOTE_IRR;
    /* an asserted level line that is (now) unmasked is noticed */
    if ((*e & IOAPIC_RTE_LEVEL) && (io->line & (1u << pin))) service_locked(io, pin);
}

void ioapic_mmio_read(struct ioapic *io, uint64_t offset, uint8_t *data, unsigned size)
{
    memset(data, 0, size);
    unsigned within = offset & 3;
    uint64_t reg = offset & ~3ull;
    if ((reg != 0x00 && reg != 0x10) || within + size > 4) {
        log_debug("ioapic: %u-byte read at %#llx not supported; reads 0", size,
                  (unsigned long long)offset);
        return;
    }
    pthread_mutex_lock(&io->lock);
    uint32_t v = reg == 0 ? io->st.ioregsel : reg_read_locked(io, io->st.ioregsel);
    pthread_mutex_unlock(&io->lock);
    v >>= within * 8;
    for (unsigned i = 0; i < size; i++)
        data[i] = (uint8_t)(v >> (i * 8));
}

void ioapic_mmio_write(struct ioapic *io, uint64_t offset, const uint8_t *data, unsigned size)
{
    if (offset == 0x00 && size >= 1 && size <= 4) {
        pthread_mutex_lock(&io->lock);
        io->st.ioregsel = data[0]; /* IOREGSEL is 8 bits; the upper bytes are reserved */
        pthread_mutex_unlock(&io->lock);
        return;
    }
    if (offset == 0x10 && size == 4) {
        uint32_t v = (uint32_t)data[0] | (uint32_t)data[1] << 8 | (uint32_t)data[2] << 16 |
                     (uint32_t)data[3] << 24;
        pthread_mutex_lock(&io->lock);
        reg_write_locked(io, io->st.ioregsel, v);
        pthread_mutex_unlock(&io->lock);
        return;
    }
    log_debug("ioapic: %u-byte write at %#llx not supported; ignored", size,
              (unsigned long long)offset);
}

static void bus_read(void *opaque, uint64_t offset, uint8_t *data, unsigned size)
{
    ioapic_mmio_read(opaque, offset, data, size);
}
static void bus_write(void *opaque, uint64_t offset, const uint8_t *data, unsigned size)
{
    ioapic_mmio_write(opaque, offset, data, size);
}
static const struct bus_ops ioapic_bus_ops = {.read = bus_read, .write = bus_write};

int ioapic_attach(struct vm *vm, struct ioapic *io)
{
    int r = bus_register(&vm->mmio, LAYOUT_IOAPIC_BASE, IOAPIC_MMIO_SIZE, &ioapic_bus_ops, io,
                         "ioapic");
    if (r < 0)
        return err_set(-r, "IOAPIC: cannot claim MMIO %#llx-%#llx (%s); another device overlaps it",
                       LAYOUT_IOAPIC_BASE, LAYOUT_IOAPIC_BASE + IOAPIC_MMIO_SIZE - 1,
                       r == -EBUSY ? "range busy" : "bus full");
    return 0;
}

/* ---- lines and EOI ---- */

void ioapic_set_irq(struct ioapic *io, unsigned pin, int level)
{
    if (pin >= IOAPIC_NUM_PINS) {
        log_debug("ioapic: set_irq on pin %u beyond %d pins ignored", pin, IOAPIC_NUM_PINS);
        return;
    }
    uint32_t bit = 1u << pin;
    pthread_mutex_lock(&io->lock);
    bool was = io->line & bit;
    if (level)
        io->line |= bit;
    else
        io->line &= ~bit;
    if (level) {
        if (io->st.redirtbl[pin] & IOAPIC_RTE_LEVEL)
            service_locked(io, pin);
        else if (!was)
            service_locked(io, pin); /* rising edge */
    }
    pthread_mutex_unlock(&io->lock);
}

void ioapic_irq_line_cb(void *ctx, unsigned gsi, int level)
{
    ioapic_set_irq(ctx, gsi, level);
}

void ioapic_eoi(struct ioapic *io, int vector)
{
    pthread_mutex_lock(&io->lock);
    for (unsigned pin = 0; pin < IOAPIC_NUM_PINS; pin++) {
        uint64_t *e = &io->st.redirtbl[pin];
        if ((*e & 0xff) != (uint64_t)(vector & 0xff) || !(*e & IOAPIC_RTE_LEVEL) ||
            !(*e & IOAPIC_RTE_REMOTE_IRR))
            continue;
        *e &= ~IOAPIC_RTE_REMOTE_IRR;
        service_locked(io, pin); /* still asserted: the interrupt comes again */
    }
    pthread_mutex_unlock(&io->lock);
}

void ioapic_eoi_cb(void *ctx, int vector)
{
    ioapic_eoi(ctx, vector);
}

/* ---- state ---- */

void ioapic_get_state(struct ioapic *io, struct ioapic_state *s)
{
    pthread_mutex_lock(&io->lock);
    *s = io->st;
    s->irr = io->line & level_pins(io);
    pthread_mutex_unlock(&io->lock);
}

int ioapic_set_state(struct ioapic *io, const struct ioapic_state *s)
{
    if (s->base_address != LAYOUT_IOAPIC_BASE)
        return err_set(EINVAL,
                       "IOAPIC state: base %#llx is not %#llx; relocation is not "
                       "supported",
                       (unsigned long long)s->base_address, LAYOUT_IOAPIC_BASE);
    if (s->id > 0xf) return err_set(EINVAL, "IOAPIC state: ID %u does not fit 4 bits", s->id);
    if (s->ioregsel > 0xff)
        return err_set(EINVAL, "IOAPIC state: IOREGSEL %#x does not fit 8 bits", s->ioregsel);
    if (s->irr >> IOAPIC_NUM_PINS)
        return err_set(EINVAL, "IOAPIC state: IRR %#x has bits beyond pin %d", s->irr,
                       IOAPIC_NUM_PINS - 1);
    for (unsigned i = 0; i < IOAPIC_NUM_PINS; i++) {
        uint64_t e = s->redirtbl[i];
        if (e & ~(IOAPIC_RTE_WRITABLE | IOAPIC_RTE_REMOTE_IRR | IOAPIC_RTE_DS))
            return err_set(EINVAL, "IOAPIC state: pin %u entry %#llx sets reserved bits", i,
                           (unsigned long long)e);
        if ((e & IOAPIC_RTE_REMOTE_IRR) && !(e & IOAPIC_RTE_LEVEL))
            return err_set(EINVAL, "IOAPIC state: pin %u has Remote IRR on an edge entry", i);
    }
    pthread_mutex_lock(&io->lock);
    io->st = *s;
    for (unsigned i = 0; i < IOAPIC_NUM_PINS; i++)
        io->st.redirtbl[i] &= ~IOAPIC_RTE_DS;
    io->line = s->irr & level_pins(io);
    io->st.irr = 0;
    pthread_mutex_unlock(&io->lock);
    return 0;
}
