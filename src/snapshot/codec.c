/* Section payload encodings (see codec.h; the layouts are listed in docs/snapshot-format.md).
 * Trusts: nothing in a payload; every read is bounds-checked by snap_rd. */
#include "snapshot/codec.h"

#include <errno.h>
#include <string.h>

#include "util/log.h"

static void enc_seg(struct snap_writer *w, const struct x86_seg *g)
{
    snap_put_u64(w, g->base);
    snap_put_u32(w, g->limit);
    snap_put_u16(w, g->sel);
    uint8_t b[9] = {g->type, g->s, g->dpl, g->present, g->avl, g->l, g->db, g->g, g->unusable};
    snap_put_bytes(w, b, sizeof(b));
}

static void dec_seg(struct snap_rd *r, struct x86_seg *g)
{
    g->base = snap_get_u64(r);
    g->limit = snap_get_u32(r);
    g->sel = snap_get_u16(r);
    uint8_t b[9];
    snap_get_bytes(r, b, sizeof(b));
    g->type = b[0] & 15, g->s = b[1] & 1, g->dpl = b[2] & 3, g->present = b[3] & 1;
    g->avl = b[4] & 1, g->l = b[5] & 1, g->db = b[6] & 1, g->g = b[7] & 1, g->unusable = b[8] & 1;
}

/* The 64-bit fields of struct x86_state after the segments, in file order. */
#define CPU_U64_FIELDS(X)                                                                          \
    X(cr0)                                                                                         \
    X(cr2)                                                                                         \
    X(cr3)                                                                                         \
    X(cr4) X(cr8) X(efer) X(xcr0) X(dr[0]) X(dr[1]) X(dr[2]) X(dr[3]) X(dr6) X(dr7) X(star)        \
        X(lstar) X(cstar) X(sfmask) X(kernel_gs_base) X(sysenter_cs) X(sysenter_esp)               \
            X(sysenter_eip) X(pat) X(tsc) X(tsc_aux) X(tsc_deadline) X(misc_enable) X(apic_base)

void snap_enc_cpu(struct snap_writer *w, const struct x86_state *s)
{
    for (int i = 0; i < 16; i++)
        snap_put_u64(w, s->gpr[i]);
    snap_put_u64(w, s->rip);
    snap_put_u64(w, s->rflags);
    for (int i = 0; i < SEG_COUNT; i++)
        enc_seg(w, &s->seg[i]);
    snap_put_u64(w, s->gdtr.base);
    snap_put_u16(w, s->gdtr.limit);
    snap_put_u64(w, s->idtr.base);
    snap_put_u16(w, s->idtr.limit);
#define PUT(f) snap_put_u64(w, s->f);
    CPU_U64_FIELDS(PUT)
#undef PUT
    /* FPU/SSE: the FXSAVE image fields, each little-endian */
    const struct x86_fxsave *fx = &s->fx;
    snap_put_u16(w, fx->fcw);
    snap_put_u16(w, fx->fsw);
    snap_put_u8(w, fx->ftw);
    snap_put_u16(w, fx->fop);
    snap_put_u64(w, fx->fip);
    snap_put_u64(w, fx->fdp);
    snap_put_u32(w, fx->mxcsr);
    snap_put_u32(w, fx->mxcsr_mask);
    snap_put_bytes(w, fx->st, sizeof(fx->st));
    snap_put_bytes(w, fx->xmm, sizeof(fx->xmm));
    /* pending events */
    const struct x86_events *ev = &s->ev;
    snap_put_u8(w, ev->exception_pending);
    snap_put_u8(w, ev->exception_vector);
    snap_put_u8(w, ev->exception_has_error);
    snap_put_u32(w, ev->exception_error);
    snap_put_u8(w, ev->interrupt_pending);
    snap_put_u8(w, ev->interrupt_vector);
    snap_put_u8(w, ev->nmi_pending);
    snap_put_u8(w, ev->nmi_masked);
    snap_put_u8(w, ev->interrupt_shadow);
    snap_put_u32(w, s->mp_state);
    snap_put_u64(w, s->tsc_adjust); /* version 2 */
}

int snap_dec_cpu(const struct snap_section *sec, struct x86_state *s)
{
    struct snap_rd r;
    snap_rd_init(&r, sec);
    memset(s, 0, sizeof(*s));
    for (int i = 0; i < 16; i++)
        s->gpr[i] = snap_get_u64(&r);
    s->rip = snap_get_u64(&r);
    s->rflags = snap_get_u64(&r);
    for (int i = 0; i < SEG_COUNT; i++)
        dec_seg(&r, &s->seg[i]);
    s->gdtr.base = snap_get_u64(&r);
    s->gdtr.limit = snap_get_u16(&r);
    s->idtr.base = snap_get_u64(&r);
    s->idtr.limit = snap_get_u16(&r);
#define GET(f) s->f = snap_get_u64(&r);
    CPU_U64_FIELDS(GET)
#undef GET
    struct x86_fxsave *fx = &s->fx;
    fx->fcw = snap_get_u16(&r);
    fx->fsw = snap_get_u16(&r);
    fx->ftw = snap_get_u8(&r);
    fx->fop = snap_get_u16(&r);
    fx->fip = snap_get_u64(&r);
    fx->fdp = snap_get_u64(&r);
    fx->mxcsr = snap_get_u32(&r);
    fx->mxcsr_mask = snap_get_u32(&r);
    snap_get_bytes(&r, fx->st, sizeof(fx->st));
    snap_get_bytes(&r, fx->xmm, sizeof(fx->xmm));
    struct x86_events *ev = &s->ev;
    ev->exception_pending = snap_get_u8(&r);
    ev->exception_vector = snap_get_u8(&r);
    ev->exception_has_error = snap_get_u8(&r);
    ev->exception_error = snap_get_u32(&r);
    ev->interrupt_pending = snap_get_u8(&r);
    ev->interrupt_vector = snap_get_u8(&r);
    ev->nmi_pending = snap_get_u8(&r);
    ev->nmi_masked = snap_get_u8(&r);
    ev->interrupt_shadow = snap_get_u8(&r);
    s->mp_state = snap_get_u32(&r);
    s->tsc_adjust = snap_get_u64(&r);
    int rc = snap_rd_done(&r);
    if (rc) return rc;
    if (s->mp_state > MP_STOPPED)
        return err_set(EINVAL, "section %s: mp_state %u is not a CPU state", sec->name,
                       s->mp_state);
    if (ev->exception_vector > 31 || ev->interrupt_shadow > 2 ||
        (ev->interrupt_pending && ev->interrupt_vector < 16))
        return err_set(EINVAL, "section %s: impossible pending-event state", sec->name);
    if (fx->mxcsr & ~0xffffu)
        return err_set(EINVAL, "section %s: MXCSR %#x has reserved bits set", sec->name, fx->mxcsr);
    return 0;
}

void snap_enc_lapic(struct snap_writer *w, const struct lapic_state *s)
{
    for (int i = 0; i < 256; i++)
        snap_put_u32(w, s->regs[i]);
}

int snap_dec_lapic(const struct snap_section *sec, struct lapic_state *s)
{
    struct snap_rd r;
    snap_rd_init(&r, sec);
    for (int i = 0; i < 256; i++)
        s->regs[i] = snap_get_u32(&r);
    return snap_rd_done(&r);
}

void snap_enc_ioapic(struct snap_writer *w, const struct ioapic_state *s)
{
    snap_put_u64(w, s->base_address);
    snap_put_u32(w, s->ioregsel);
    snap_put_u32(w, s->id);
    snap_put_u32(w, s->irr);
    snap_put_u32(w, IOAPIC_NUM_PINS);
    for (int i = 0; i < IOAPIC_NUM_PINS; i++)
        snap_put_u64(w, s->redirtbl[i]);
}

int snap_dec_ioapic(const struct snap_section *sec, struct ioapic_state *s)
{
    struct snap_rd r;
    snap_rd_init(&r, sec);
    memset(s, 0, sizeof(*s));
    s->base_address = snap_get_u64(&r);
    s->ioregsel = snap_get_u32(&r);
    s->id = snap_get_u32(&r);
    s->irr = snap_get_u32(&r);
    uint32_t n = snap_get_u32(&r);
    if (!r.bad && n != IOAPIC_NUM_PINS)
        return err_set(EINVAL, "section %s: %u IOAPIC pins, this machine has %d", sec->name, n,
                       IOAPIC_NUM_PINS);
    for (int i = 0; i < IOAPIC_NUM_PINS; i++)
        s->redirtbl[i] = snap_get_u64(&r);
    return snap_rd_done(&r);
}

void snap_enc_pit(struct snap_writer *w, const struct pit_state *s, int64_t now_ns)
{
    for (int i = 0; i < 3; i++) {
        const struct pit_channel_state *c = &s->channels[i];
        snap_put_u32(w, c->count);
        snap_put_u16(w, c->latched_count);
        uint8_t b[11] = {c->count_latched, c->status_latched, c->status,  c->read_state,
                         c->write_state,   c->write_latch,    c->rw_mode, c->mode,
                         c->bcd,           c->gate,           0};
        snap_put_bytes(w, b, sizeof(b));
        snap_put_u64(w, (uint64_t)(c->count_load_time - now_ns)); /* age, usually <= 0 */
    }
    snap_put_u32(w, s->flags);
}

int snap_dec_pit(const struct snap_section *sec, struct pit_state *s, int64_t now_ns)
{
    struct snap_rd r;
    snap_rd_init(&r, sec);
    memset(s, 0, sizeof(*s));
    for (int i = 0; i < 3; i++) {
        struct pit_channel_state *c = &s->channels[i];
        c->count = snap_get_u32(&r);
        c->latched_count = snap_get_u16(&r);
        uint8_t b[11];
        snap_get_bytes(&r, b, sizeof(b));
        c->count_latched = b[0], c->status_latched = b[1], c->status = b[2], c->read_state = b[3];
        c->write_state = b[4], c->write_latch = b[5], c->rw_mode = b[6], c->mode = b[7];
        c->bcd = b[8], c->gate = b[9];
        int64_t rel = (int64_t)snap_get_u64(&r);
        if (rel < -(1ll << 62) || rel > (1ll << 62))
            return err_set(EINVAL, "section %s: channel %d load time out of range", sec->name, i);
        c->count_load_time = now_ns + rel; /* modes and counts: pit_set_state validates */
    }
    s->flags = snap_get_u32(&r);
    return snap_rd_done(&r);
}

void snap_enc_uart(struct snap_writer *w, const struct uart_state *s)
{
    uint8_t b[8] = {s->ier, s->lcr, s->mcr, s->lsr, s->msr, s->scr, s->fcr, s->thre_pending};
    snap_put_bytes(w, b, 8);
    snap_put_u16(w, s->divisor);
    snap_put_u8(w, s->rx_count);
    snap_put_bytes(w, s->rx, 16);
}

int snap_dec_uart(const struct snap_section *sec, struct uart_state *s)
{
    struct snap_rd r;
    snap_rd_init(&r, sec);
    uint8_t b[8];
    snap_get_bytes(&r, b, 8);
    s->ier = b[0], s->lcr = b[1], s->mcr = b[2], s->lsr = b[3], s->msr = b[4], s->scr = b[5];
    s->fcr = b[6], s->thre_pending = b[7];
    s->divisor = snap_get_u16(&r);
    s->rx_count = snap_get_u8(&r);
    snap_get_bytes(&r, s->rx, 16);
    return snap_rd_done(&r);
}

void snap_enc_rtc(struct snap_writer *w, const struct rtc_state *s)
{
    snap_put_bytes(w, s->cmos, 128);
    snap_put_u8(w, s->index);
    snap_put_u8(w, s->c_flags);
    snap_put_u8(w, s->nmi_disabled);
    snap_put_u64(w, (uint64_t)s->offset_s);
}

int snap_dec_rtc(const struct snap_section *sec, struct rtc_state *s)
{
    struct snap_rd r;
    snap_rd_init(&r, sec);
    snap_get_bytes(&r, s->cmos, 128);
    s->index = snap_get_u8(&r);
    s->c_flags = snap_get_u8(&r);
    s->nmi_disabled = snap_get_u8(&r);
    s->offset_s = (int64_t)snap_get_u64(&r);
    return snap_rd_done(&r);
}

void snap_enc_i8042(struct snap_writer *w, const struct i8042_state *s)
{
    uint8_t b[5] = {s->status, s->ctr, s->outport, s->out, s->pending_cmd};
    snap_put_bytes(w, b, 5);
}

int snap_dec_i8042(const struct snap_section *sec, struct i8042_state *s)
{
    struct snap_rd r;
    snap_rd_init(&r, sec);
    uint8_t b[5];
    snap_get_bytes(&r, b, 5);
    s->status = b[0], s->ctr = b[1], s->outport = b[2], s->out = b[3], s->pending_cmd = b[4];
    return snap_rd_done(&r);
}

void snap_enc_acpi_pm(struct snap_writer *w, const struct acpi_pm_state *s)
{
    snap_put_u8(w, s->sleep_sts);
}

int snap_dec_acpi_pm(const struct snap_section *sec, struct acpi_pm_state *s)
{
    struct snap_rd r;
    snap_rd_init(&r, sec);
    s->sleep_sts = snap_get_u8(&r);
    return snap_rd_done(&r);
}

void snap_enc_cpuid(struct snap_writer *w, const struct cpuid_model *m)
{
    snap_put_u32(w, m->n);
    for (unsigned i = 0; i < m->n && i < CPUID_MAX_ENTRIES; i++) {
        const struct cpuid_entry *e = &m->e[i];
        snap_put_u32(w, e->function);
        snap_put_u32(w, e->index);
        snap_put_u32(w, e->flags);
        snap_put_u32(w, e->eax);
        snap_put_u32(w, e->ebx);
        snap_put_u32(w, e->ecx);
        snap_put_u32(w, e->edx);
    }
}

int snap_dec_cpuid(const struct snap_section *sec, struct cpuid_model *m)
{
    struct snap_rd r;
    snap_rd_init(&r, sec);
    memset(m, 0, sizeof(*m));
    uint32_t n = snap_get_u32(&r);
    if (n > CPUID_MAX_ENTRIES)
        return err_set(EINVAL, "section %s: %u CPUID entries (the cap is %d)", sec->name, n,
                       CPUID_MAX_ENTRIES);
    m->n = n;
    for (unsigned i = 0; i < n; i++) {
        struct cpuid_entry *e = &m->e[i];
        e->function = snap_get_u32(&r);
        e->index = snap_get_u32(&r);
        e->flags = snap_get_u32(&r);
        e->eax = snap_get_u32(&r);
        e->ebx = snap_get_u32(&r);
        e->ecx = snap_get_u32(&r);
        e->edx = snap_get_u32(&r);
    }
    return snap_rd_done(&r);
}

void snap_cpuid_hash(const struct cpuid_model *m, uint8_t out[SHA256_LEN])
{
    struct snap_writer w;
    struct snap_header h;
    memset(&w, 0, sizeof(w));
    memset(&h, 0, sizeof(h));
    snap_enc_cpuid(&w, m);
    if (w.err)
        memset(out, 0, SHA256_LEN);
    else
        sha256(w.buf, w.len, out);
    snap_writer_free(&w);
}

/* The feature-flag registers (as in x86/cpuid.c: what the KVM intersection may clear). */
static bool feature_reg(uint32_t fn, uint32_t idx, int reg)
{
    static const struct {
        uint32_t fn, idx;
        int reg;
    } f[] = {{1, 0, 2}, {1, 0, 3}, {6, 0, 0},          {7, 0, 1},
             {7, 0, 2}, {7, 0, 3}, {0x80000001, 0, 2}, {0x80000001, 0, 3}};
    for (unsigned i = 0; i < sizeof(f) / sizeof(f[0]); i++)
        if (f[i].fn == fn && f[i].idx == idx && f[i].reg == reg) return true;
    return false;
}

int snap_cpuid_presentable(const struct cpuid_model *target, const struct cpuid_model *snap)
{
    static const char rn[4][4] = {"EAX", "EBX", "ECX", "EDX"};
    for (unsigned i = 0; i < snap->n; i++) {
        const struct cpuid_entry *e = &snap->e[i];
        const struct cpuid_entry *t = cpuid_find(target, e->function, e->index);
        if (!t || t->function != e->function || t->index != e->index)
            return err_set(EINVAL, "CPUID leaf %#x.%u of the snapshot does not exist here",
                           e->function, e->index);
        const uint32_t sv[4] = {e->eax, e->ebx, e->ecx, e->edx};
        const uint32_t tv[4] = {t->eax, t->ebx, t->ecx, t->edx};
        for (int r = 0; r < 4; r++) {
            if (feature_reg(e->function, e->index, r)) {
                if (sv[r] & ~tv[r])
                    return err_set(EINVAL,
                                   "CPUID leaf %#x.%u %s: the snapshot's CPU has feature bits "
                                   "%#x that this backend cannot present",
                                   e->function, e->index, rn[r], sv[r] & ~tv[r]);
            } else if (e->function == 0x80000008 && r == 0) {
                if ((sv[0] & 0xff) > (tv[0] & 0xff) || (sv[0] & ~0xffu) != (tv[0] & ~0xffu))
                    return err_set(EINVAL,
                                   "CPUID leaf 0x80000008: the snapshot's CPU has %u physical "
                                   "address bits, this backend %u",
                                   sv[0] & 0xff, tv[0] & 0xff);
            } else if (sv[r] != tv[r] && !(e->function == 1 && r == 1) &&
                       !(e->function == 0xb && r == 3)) { /* APIC IDs are per vCPU */
                return err_set(EINVAL, "CPUID leaf %#x.%u %s: %#x in the snapshot, %#x here",
                               e->function, e->index, rn[r], sv[r], tv[r]);
            }
        }
    }
    return 0;
}

/* ---- virtio devices ---- */

static void put_str16(struct snap_writer *w, const char *str)
{
    size_t n = strlen(str);
    snap_put_u16(w, (uint16_t)n);
    snap_put_bytes(w, str, n);
}

/* A length-prefixed string of printable bytes (no NUL) of at most max bytes. */
static int get_str16(struct snap_rd *r, char *out, size_t max, const char *what)
{
    uint16_t n = snap_get_u16(r);
    if (r->bad) return 0; /* snap_rd_done reports the truncation */
    if (n > max)
        return err_set(EINVAL, "section %s: %s of %u bytes (at most %zu)", r->sec->name, what, n,
                       max);
    snap_get_bytes(r, out, n);
    out[n] = 0;
    for (uint16_t i = 0; i < n && !r->bad; i++)
        if ((unsigned char)out[i] < 0x20 || (unsigned char)out[i] == 0x7f)
            return err_set(EINVAL, "section %s: %s has a control byte", r->sec->name, what);
    return 0;
}

void snap_enc_virtio(struct snap_writer *w, const struct virtio_dev_state *s)
{
    const struct virtio_mmio_state *m = &s->mmio;
    snap_put_u32(w, s->device_id);
    snap_put_u32(w, m->status);
    snap_put_u32(w, m->dev_features_sel);
    snap_put_u32(w, m->drv_features_sel);
    snap_put_u32(w, m->queue_sel);
    snap_put_u32(w, m->isr);
    snap_put_u32(w, m->config_gen);
    snap_put_u64(w, m->drv_features);
    snap_put_u8(w, s->nqueues);
    for (unsigned i = 0; i < s->nqueues && i < VIRTIO_MAX_QUEUES; i++) {
        snap_put_u16(w, m->vq[i].size);
        snap_put_u8(w, m->vq[i].ready);
        snap_put_u64(w, m->vq[i].desc);
        snap_put_u64(w, m->vq[i].avail);
        snap_put_u64(w, m->vq[i].used);
        snap_put_u16(w, m->vq[i].last_avail);
        snap_put_u16(w, m->vq[i].used_idx);
    }
    snap_put_u16(w, s->config_len);
    snap_put_bytes(w, s->config, s->config_len);
    snap_put_u8(w, s->nbuckets);
    for (unsigned i = 0; i < s->nbuckets && i < VIRTIO_SNAP_BUCKETS; i++) {
        snap_put_u64(w, s->bucket[i].rate);
        snap_put_u64(w, (uint64_t)s->bucket[i].milli);
    }
    if (s->device_id == 2) { /* blk */
        snap_put_u8(w, s->blk.ro);
        snap_put_u64(w, s->blk.sectors);
        snap_put_u64(w, s->blk.image_size);
        snap_put_u64(w, (uint64_t)s->blk.image_mtime_ns);
        put_str16(w, s->blk.path);
    } else if (s->device_id == 1) { /* net */
        snap_put_u8(w, s->net.backend);
        put_str16(w, s->net.ifname);
    }
}

int snap_dec_virtio(const struct snap_section *sec, struct virtio_dev_state *s)
{
    struct snap_rd r;
    snap_rd_init(&r, sec);
    memset(s, 0, sizeof(*s));
    struct virtio_mmio_state *m = &s->mmio;
    s->device_id = snap_get_u32(&r);
    if (!r.bad && s->device_id != 1 && s->device_id != 2 && s->device_id != 4)
        return err_set(EINVAL, "section %s: device id %u is not a disk, NIC or entropy device",
                       sec->name, s->device_id);
    m->status = snap_get_u32(&r);
    m->dev_features_sel = snap_get_u32(&r);
    m->drv_features_sel = snap_get_u32(&r);
    m->queue_sel = snap_get_u32(&r);
    m->isr = snap_get_u32(&r);
    m->config_gen = snap_get_u32(&r);
    m->drv_features = snap_get_u64(&r);
    s->nqueues = snap_get_u8(&r);
    if (s->nqueues > VIRTIO_MAX_QUEUES)
        return err_set(EINVAL, "section %s: %u queues (at most %d)", sec->name, s->nqueues,
                       VIRTIO_MAX_QUEUES);
    for (unsigned i = 0; i < s->nqueues; i++) {
        m->vq[i].size = snap_get_u16(&r);
        m->vq[i].ready = snap_get_u8(&r);
        m->vq[i].desc = snap_get_u64(&r);
        m->vq[i].avail = snap_get_u64(&r);
        m->vq[i].used = snap_get_u64(&r);
        m->vq[i].last_avail = snap_get_u16(&r);
        m->vq[i].used_idx = snap_get_u16(&r);
    }
    s->config_len = snap_get_u16(&r);
    if (s->config_len > VIRTIO_CONFIG_MAX)
        return err_set(EINVAL, "section %s: config space of %u bytes (at most %d)", sec->name,
                       s->config_len, VIRTIO_CONFIG_MAX);
    snap_get_bytes(&r, s->config, s->config_len);
    s->nbuckets = snap_get_u8(&r);
    if (s->nbuckets > VIRTIO_SNAP_BUCKETS)
        return err_set(EINVAL, "section %s: %u rate buckets (at most %d)", sec->name, s->nbuckets,
                       VIRTIO_SNAP_BUCKETS);
    for (unsigned i = 0; i < s->nbuckets; i++) {
        s->bucket[i].rate = snap_get_u64(&r);
        s->bucket[i].milli = (int64_t)snap_get_u64(&r);
    }
    int rc = 0;
    if (s->device_id == 2) {
        s->blk.ro = snap_get_u8(&r);
        s->blk.sectors = snap_get_u64(&r);
        s->blk.image_size = snap_get_u64(&r);
        s->blk.image_mtime_ns = (int64_t)snap_get_u64(&r);
        rc = get_str16(&r, s->blk.path, VIRTIO_SNAP_PATH, "image path");
        if (!rc && !r.bad && s->blk.ro > 1)
            rc = err_set(EINVAL, "section %s: ro flag %u", sec->name, s->blk.ro);
    } else if (s->device_id == 1) {
        s->net.backend = snap_get_u8(&r);
        rc = get_str16(&r, s->net.ifname, sizeof(s->net.ifname) - 1, "interface name");
    }
    if (rc) return rc;
    return snap_rd_done(&r);
}
