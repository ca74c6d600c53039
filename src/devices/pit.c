/* i8254 PIT (see pit.h).  Trusts nothing: port writes are guest input and every value they set is
 * bounded (counts 1..65536, modes 0-5); restored state is validated before use. */
#include "devices/pit.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/cpu.h"
#include "devices/vclock.h"
#include "util/log.h"

struct pit {
    pthread_mutex_t lock;
    struct pit_state st;
    struct irq_line irq0;
    uint64_t next_tick;         /* channel 0: input clocks after load of the next IRQ, or MAX */
    _Atomic int64_t next_event; /* the same in virtual ns */
    struct vm *vm;
};

/* ---- counting ---- */

static uint64_t ticks_since(const struct pit_channel_state *c, int64_t now)
{
    if (now <= c->count_load_time) return 0;
    unsigned __int128 t =
        (unsigned __int128)(uint64_t)(now - c->count_load_time) * PIT_FREQ_HZ / 1000000000u;
    return t > UINT64_MAX ? UINT64_MAX : (uint64_t)t;
}

/* Virtual time at which `ticks` input clocks have elapsed since the load (rounded up). */
static int64_t tick_time(const struct pit_channel_state *c, uint64_t ticks)
{
    unsigned __int128 ns = ((unsigned __int128)ticks * 1000000000u + PIT_FREQ_HZ - 1) / PIT_FREQ_HZ;
    if (ns > (unsigned __int128)INT64_MAX) return INT64_MAX;
    int64_t n = (int64_t)ns;
    return c->count_load_time > INT64_MAX - n ? INT64_MAX : c->count_load_time + n;
}

static unsigned from_bcd(uint32_t v)
{
    return ((v >> 12) & 0xf) * 1000 + ((v >> 8) & 0xf) * 100 + ((v >> 4) & 0xf) * 10 + (v & 0xf);
}
static uint32_t to_bcd(unsigned v)
{
    return ((v / 1000) % 10) << 12 | ((v / 100) % 10) << 8 | ((v / 10) % 10) << 4 | (v % 10);
}

/* The reload value N in input clocks: the raw count, 0 meaning the maximum (2^16 or 10^4). */
static uint64_t period_ticks(const struct pit_channel_state *c)
{
    if (c->bcd) {
        unsigned n = c->count == 0x10000 ? 0 : from_bcd(c->count);
        return n ? n : 10000;
    }
    return c->count ? c->count : 0x10000;
}

static uint32_t get_count(const struct pit_channel_state *c, int64_t now)
{
    uint64_t d = ticks_since(c, now), n = period_ticks(c), mod = c->bcd ? 10000 : 0x10000;
    uint64_t v;
    switch (c->mode) {
    case 2: v = n - d % n; break;
    case 3: v = n - (2 * (d % n)) % n; break;
    default: v = (n + mod - d % mod) % mod; break; /* 0, 1, 4, 5: counts down and wraps */
    }
    v %= mod; /* N itself reads as 0 when N is the maximum */
    return c->bcd ? to_bcd((unsigned)v) : (uint32_t)v;
}

static int get_out(const struct pit_channel_state *c, int64_t now)
{
    uint64_t d = ticks_since(c, now), n = period_ticks(c);
    switch (c->mode) {
    case 0:
    case 1: return d >= n;
    case 2:
        if (!c->gate) return 1;
        return n < 2 || d % n != n - 1; /* low for the one clock before reload */
    case 3:
        if (!c->gate) return 1;
        return d % n < (n + 1) / 2; /* high for the first half (the longer one if N is odd) */
    case 4:
    case 5: return d != n; /* a one-clock low strobe at terminal count */
    default: return 0;
    }
}

/* ---- channel 0 schedule ---- */

static void set_next_locked(struct pit *p)
{
    const struct pit_channel_state *c = &p->st.channels[0];
    int64_t t = p->next_tick == UINT64_MAX ? INT64_MAX : tick_time(c, p->next_tick);
    atomic_store_explicit(&p->next_event, t, memory_order_release);
}

/* First IRQ tick after a load, or after tick `after` for the periodic modes. */
static uint64_t first_tick_after(const struct pit_channel_state *c, uint64_t after)
{
    uint64_t n = period_ticks(c);
    switch (c->mode) {
    case 0:
    case 4: return after < n ? n : UINT64_MAX;
    case 2:
    case 3: {
        uint64_t min_ticks = (uint64_t)PIT_MIN_IRQ_PERIOD_NS * PIT_FREQ_HZ / 1000000000u + 1;
        if (n < min_ticks && after) after += min_ticks; /* stretch tiny periods (not the first) */
        return after / n >= UINT64_MAX / n - 1 ? UINT64_MAX : (after / n + 1) * n;
    }
    default: return UINT64_MAX; /* 1 and 5 need a gate, which channel 0 does not have */
    }
}

static void load_count_locked(struct pit *p, unsigned ch, uint32_t raw, int64_t now)
{
    struct pit_channel_state *c = &p->st.channels[ch];
    c->count = raw ? raw : 0x10000;
    c->count_load_time = now;
    if (ch == 0) {
        p->next_tick = (c->mode == 1 || c->mode == 5) ? UINT64_MAX : first_tick_after(c, 0);
        set_next_locked(p);
    }
}

/* Only channel 2's gate is wired (port 0x61 bit 0); channels 0 and 1 are tied high. */
static void set_gate_locked(struct pit *p, unsigned ch, int gate, int64_t now)
{
    struct pit_channel_state *c = &p->st.channels[ch];
    /* a rising gate (re)triggers modes 1 and 5 and restarts modes 2 and 3 */
    if (gate && !c->gate && (c->mode == 1 || c->mode == 2 || c->mode == 3 || c->mode == 5))
        c->count_load_time = now;
    c->gate = gate ? 1 : 0;
}

/* ---- lifecycle ---- */

static void reset_locked(struct pit *p)
{
    memset(&p->st, 0, sizeof(p->st));
    for (unsigned i = 0; i < 3; i++) {
        struct pit_channel_state *c = &p->st.channels[i];
        c->mode = PIT_MODE_UNPROGRAMMED;
        c->gate = i != 2;
        c->count = 0x10000;
    }
    p->next_tick = UINT64_MAX;
    set_next_locked(p);
}

struct pit *pit_create(struct vm *vm, const struct irq_line *irq0)
{
    struct pit *p = calloc(1, sizeof(*p));
    if (!p) {
        err_set(ENOMEM, "PIT: out of memory");
        return NULL;
    }
    pthread_mutex_init(&p->lock, NULL);
    p->vm = vm;
    if (irq0) p->irq0 = *irq0;
    reset_locked(p);
    return p;
}

void pit_destroy(struct pit *p)
{
    if (!p) return;
    pthread_mutex_destroy(&p->lock);
    free(p);
}

/* ---- ports ---- */

static void latch_count_locked(struct pit_channel_state *c, int64_t now)
{
    if (c->count_latched) return; /* a second latch before the read is ignored */
    c->latched_count = (uint16_t)get_count(c, now);
    c->count_latched = c->rw_mode ? c->rw_mode : PIT_RW_WORD0;
}

static void control_word_locked(struct pit *p, uint8_t val, int64_t now)
{
    unsigned ch = val >> 6;
    if (ch == 3) { /* read-back: bit 5 = !COUNT, bit 4 = !STATUS, bits 3:1 select 2..0 */
        for (unsigned i = 0; i < 3; i++) {
            if (!(val & (2u << i))) continue;
            struct pit_channel_state *c = &p->st.channels[i];
            if (!(val & 0x20)) latch_count_locked(c, now);
            if (!(val & 0x10) && !c->status_latched) {
                c->status = (uint8_t)(get_out(c, now) << 7 | (c->rw_mode & 3) << 4 |
                                      (c->mode & 7) << 1 | (c->bcd & 1));
                c->status_latched = 1;
            }
        }
        return;
    }
    struct pit_channel_state *c = &p->st.channels[ch];
    unsigned access = (val >> 4) & 3;
    if (!access) {
        latch_count_locked(c, now);
        return;
    }
    c->rw_mode = (uint8_t)access;
    c->read_state = c->write_state = (uint8_t)access;
    unsigned mode = (val >> 1) & 7;
    c->mode = (uint8_t)(mode > 5 ? mode - 4 : mode); /* 6 and 7 are 2 and 3 */
    c->bcd = val & 1;
    if (ch == 0) { /* counting stops until the new count is written */
        p->next_tick = UINT64_MAX;
        set_next_locked(p);
    }
}

static uint8_t data_read_locked(struct pit *p, unsigned ch, int64_t now)
{
    struct pit_channel_state *c = &p->st.channels[ch];
    if (c->status_latched) {
        c->status_latched = 0;
        return c->status;
    }
    if (c->count_latched) {
        uint8_t r;
        switch (c->count_latched) {
        case PIT_RW_MSB:
            r = (uint8_t)(c->latched_count >> 8);
            c->count_latched = 0;
            break;
        case PIT_RW_WORD0:
            r = (uint8_t)c->latched_count;
            c->count_latched = PIT_RW_MSB;
            break;
        default:
            r = (uint8_t)c->latched_count;
            c->count_latched = 0;
            break;
        }
        return r;
    }
    uint32_t count = get_count(c, now);
    switch (c->read_state) {
    case PIT_RW_MSB: return (uint8_t)(count >> 8);
    case PIT_RW_WORD0: c->read_state = PIT_RW_WORD1; return (uint8_t)count;
    case PIT_RW_WORD1: c->read_state = PIT_RW_WORD0; return (uint8_t)(count >> 8);
    default: return (uint8_t)count;
    }
}

static void data_write_locked(struct pit *p, unsigned ch, uint8_t val, int64_t now)
{
    struct pit_channel_state *c = &p->st.channels[ch];
    switch (c->write_state) {
    case PIT_RW_LSB: load_count_locked(p, ch, val, now); break;
    case PIT_RW_MSB: load_count_locked(p, ch, (uint32_t)val << 8, now); break;
    case PIT_RW_WORD0:
        c->write_latch = val;
        c->write_state = PIT_RW_WORD1;
        break;
    case PIT_RW_WORD1:
        load_count_locked(p, ch, c->write_latch | (uint32_t)val << 8, now);
        c->write_state = PIT_RW_WORD0;
        break;
    default: log_debug("pit: count written to channel %u before a control word; ignored", ch);
    }
}

uint8_t pit_port_read(struct pit *p, uint16_t port, int64_t now)
{
    uint8_t r = 0xff;
    pthread_mutex_lock(&p->lock);
    if (port >= PIT_PORT_BASE && port < PIT_PORT_CTRL) {
        r = data_read_locked(p, port - PIT_PORT_BASE, now);
    } else if (port == PIT_PORT_CTRL) {
        r = 0;
    } else if (port == PIT_PORT_61) {
        const struct pit_channel_state *c2 = &p->st.channels[2];
        /* bit 4: refresh request, toggling every 15.085 us on PCs; bit 5: OUT2 */
        int refresh = now > 0 ? (int)((now / 15085) & 1) : 0;
        uint32_t low = (p->st.flags & PIT_FLAGS_PORT61_MASK) >> PIT_FLAGS_PORT61_SHIFT;
        r = (uint8_t)((c2->gate & 1) | low | (uint32_t)refresh << 4 |
                      (uint32_t)get_out(c2, now) << 5);
    }
    pthread_mutex_unlock(&p->lock);
    return r;
}

void pit_port_write(struct pit *p, uint16_t port, uint8_t val, int64_t now)
{
    pthread_mutex_lock(&p->lock);
    if (port >= PIT_PORT_BASE && port < PIT_PORT_CTRL) {
        data_write_locked(p, port - PIT_PORT_BASE, val, now);
    } else if (port == PIT_PORT_CTRL) {
        control_word_locked(p, val, now);
    } else if (port == PIT_PORT_61) {
        p->st.flags = (p->st.flags & ~PIT_FLAGS_PORT61_MASK) |
                      (((uint32_t)val << PIT_FLAGS_PORT61_SHIFT) & PIT_FLAGS_PORT61_MASK);
        set_gate_locked(p, 2, val & 1, now);
    }
    pthread_mutex_unlock(&p->lock);
}

static void bus_read(void *opaque, uint64_t offset, uint8_t *data, unsigned size)
{
    int64_t now = vclock_ns();
    /* the bus splits accesses at the range end, so offset + i < 4 */
    for (unsigned i = 0; i < size; i++)
        data[i] = pit_port_read(opaque, (uint16_t)(PIT_PORT_BASE + offset + i), now);
}
static void bus_write(void *opaque, uint64_t offset, const uint8_t *data, unsigned size)
{
    int64_t now = vclock_ns();
    for (unsigned i = 0; i < size; i++)
        pit_port_write(opaque, (uint16_t)(PIT_PORT_BASE + offset + i), data[i], now);
}
static void bus61_read(void *opaque, uint64_t offset, uint8_t *data, unsigned size)
{
    uint8_t v = pit_port_read(opaque, PIT_PORT_61, vclock_ns());
    for (unsigned i = 0; i < size; i++)
        data[i] = i ? 0xff : v;
}
static void bus61_write(void *opaque, uint64_t offset, const uint8_t *data, unsigned size)
{
    pit_port_write(opaque, PIT_PORT_61, data[0], vclock_ns());
}
static const struct bus_ops pit_ops = {.read = bus_read, .write = bus_write};
static const struct bus_ops port61_ops = {.read = bus61_read, .write = bus61_write};

int pit_attach(struct vm *vm, struct pit *p)
{
    int r = bus_register(&vm->pio, PIT_PORT_BASE, 4, &pit_ops, p, "pit");
    if (r < 0) return err_set(-r, "PIT: cannot claim ports 0x40-0x43; another device has them");
    r = bus_register(&vm->pio, PIT_PORT_61, 1, &port61_ops, p, "port61");
    if (r < 0) return err_set(-r, "PIT: cannot claim port 0x61; another device has it");
    return 0;
}

/* ---- timer entry points ---- */

int64_t pit_next_event_ns(struct pit *p)
{
    return atomic_load_explicit(&p->next_event, memory_order_acquire);
}

void pit_update(struct pit *p, int64_t now)
{
    if (now < pit_next_event_ns(p)) return;
    bool fire = false;
    pthread_mutex_lock(&p->lock);
    const struct pit_channel_state *c = &p->st.channels[0];
    if (p->next_tick != UINT64_MAX && tick_time(c, p->next_tick) <= now) {
        fire = true;
        uint64_t d = ticks_since(c, now);
        p->next_tick = first_tick_after(c, MAX(d, p->next_tick));
        set_next_locked(p);
    }
    pthread_mutex_unlock(&p->lock);
    if (fire) { /* a pulse: the IOAPIC pin is edge-triggered */
        irq_line_set(&p->irq0, 1);
        irq_line_set(&p->irq0, 0);
    }
}

/* ---- state ---- */

void pit_get_state(struct pit *p, struct pit_state *s)
{
    pthread_mutex_lock(&p->lock);
    *s = p->st;
    pthread_mutex_unlock(&p->lock);
}

int pit_set_state(struct pit *p, const struct pit_state *s, int64_t now)
{
    for (unsigned i = 0; i < 3; i++) {
        const struct pit_channel_state *c = &s->channels[i];
        const char *bad = NULL;
        if (c->count < 1 || c->count > 0x10000)
            bad = "count outside 1..65536";
        else if (c->mode > 5 && c->mode != PIT_MODE_UNPROGRAMMED)
            bad = "mode is not 0-5";
        else if (c->rw_mode > 3)
            bad = "access mode is not 0-3";
        else if (c->read_state > 4 || c->write_state > 4 || c->count_latched > 4)
            bad = "read/write/latch state is not 0-4";
        else if (c->status_latched > 1 || c->bcd > 1 || c->gate > 1)
            bad = "a flag is not 0 or 1";
        if (bad) return err_set(EINVAL, "PIT state: channel %u: %s; the state is corrupt", i, bad);
    }
    if (s->flags & ~PIT_FLAGS_PORT61_MASK)
        return err_set(EINVAL, "PIT state: flags %#x not supported (no HPET legacy routing)",
                       s->flags);
    pthread_mutex_lock(&p->lock);
    p->st = *s;
    const struct pit_channel_state *c = &p->st.channels[0];
    p->next_tick = first_tick_after(c, ticks_since(c, now));
    set_next_locked(p);
    pthread_mutex_unlock(&p->lock);
    return 0;
}
