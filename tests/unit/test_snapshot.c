/* Unit tests for the snapshot state format (src/snapshot/format.c, codec.c, hash.c): hash test
 * vectors, round trips of every section codec, and each kind of bad input — truncation at every
 * length, a flipped byte anywhere, a wrong version, an oversized or overlong section, duplicate
 * and malformed sections, a CPU model the target cannot present. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "snapshot/codec.h"
#include "snapshot/format.h"
#include "snapshot/snapshot.h"
#include "util/log.h"

static void hex(const uint8_t *d, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        sprintf(out + 2 * i, "%02x", d[i]);
}

static void test_sha256_vectors(void **st)
{
    uint8_t d[32];
    char h[65];
    sha256("", 0, d);
    hex(d, 32, h);
    assert_string_equal(h, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    sha256("abc", 3, d);
    hex(d, 32, h);
    assert_string_equal(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    /* two blocks, and incremental updates across block boundaries give the same digest */
    const char *m = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    sha256(m, strlen(m), d);
    hex(d, 32, h);
    assert_string_equal(h, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    struct sha256 c;
    sha256_init(&c);
    for (size_t i = 0; i < strlen(m); i++)
        sha256_update(&c, m + i, 1);
    uint8_t d2[32];
    sha256_final(&c, d2);
    assert_memory_equal(d, d2, 32);
}

static void test_xxh64(void **st)
{
    assert_true(xxh64("", 0, 0) == 0xEF46DB3751D8E999ull);
    uint8_t page[4096];
    memset(page, 0x5a, sizeof(page));
    uint64_t a = xxh64(page, sizeof(page), 0);
    page[4095] ^= 1;
    assert_true(a != xxh64(page, sizeof(page), 0));
    assert_true(xxh64(page, 37, 1) != xxh64(page, 37, 2));
}

static void fill_cpu(struct x86_state *s)
{
    memset(s, 0, sizeof(*s));
    uint8_t *p = (uint8_t *)s;
    for (size_t i = 0; i < sizeof(*s); i++)
        p[i] = (uint8_t)(i * 7 + 3);
    /* fields whose encoding masks bits: keep them in range so the round trip is exact */
    for (int k = 0; k < SEG_COUNT; k++) {
        struct x86_seg *g = &s->seg[k];
        g->type &= 15, g->s &= 1, g->dpl &= 3, g->present &= 1, g->avl &= 1, g->l &= 1;
        g->db &= 1, g->g &= 1, g->unusable &= 1;
    }
    s->mp_state = MP_HALTED;
    s->ev.exception_vector = 14;
    s->ev.interrupt_shadow = 1;
    s->ev.interrupt_vector = 0x40;
    s->fx.mxcsr = 0x1f80;
    memset(s->fx.rsvd2, 0, sizeof(s->fx.rsvd2));
    s->fx.rsvd1 = 0;
}

/* A complete small state file: header + cpu0 + lapic0 + pit + com1 + cpuid. */
static void build(struct snap_writer *w, const struct x86_state *cpu, struct cpuid_model *m)
{
    struct snap_header h;
    memset(&h, 0, sizeof(h));
    h.mem_size = 64ull << 20;
    h.ncpus = 1;
    strcpy(h.cpu_model, "lookout-v1");
    strcpy(h.backend, "bt");
    h.tsc_khz = 2000000;
    strcpy(h.devices, "com1,com2");
    memset(h.id, 0xab, sizeof(h.id));
    assert_int_equal(cpuid_model_build(m, "lookout-v1", NULL, 0, 1, 2000000), 0);
    snap_cpuid_hash(m, h.cpuid_hash);
    assert_int_equal(snap_writer_begin(w, &h), 0);
    snap_section_begin(w, "cpu0", SNAP_V_CPU, 0);
    snap_enc_cpu(w, cpu);
    assert_int_equal(snap_section_end(w), 0);
    struct lapic_state l;
    for (int i = 0; i < 256; i++)
        l.regs[i] = (uint32_t)i * 0x01010101u;
    snap_section_begin(w, "lapic0", SNAP_V_LAPIC, 0);
    snap_enc_lapic(w, &l);
    assert_int_equal(snap_section_end(w), 0);
    struct pit_state pit;
    memset(&pit, 0, sizeof(pit));
    pit.channels[0].count = 65536;
    pit.channels[0].mode = 2;
    pit.channels[0].count_load_time = 1000;
    snap_section_begin(w, "pit", SNAP_V_PIT, 0);
    snap_enc_pit(w, &pit, 5000); /* age -4000 ns */
    assert_int_equal(snap_section_end(w), 0);
    struct uart_state u = {.ier = 3, .lcr = 3, .divisor = 1, .rx_count = 2, .rx = {'h', 'i'}};
    snap_section_begin(w, "com1", SNAP_V_UART, 0);
    snap_enc_uart(w, &u);
    assert_int_equal(snap_section_end(w), 0);
    snap_section_begin(w, "cpuid", SNAP_V_CPUID, SNAP_SEC_OPTIONAL);
    snap_enc_cpuid(w, m);
    assert_int_equal(snap_section_end(w), 0);
    assert_int_equal(snap_writer_finish(w), 0);
}

static struct snap_file f;

static void test_round_trip(void **st)
{
    struct x86_state cpu, back;
    static struct cpuid_model m, m2;
    struct snap_writer w;
    fill_cpu(&cpu);
    build(&w, &cpu, &m);
    assert_int_equal(snap_parse(w.buf, w.len, &f), 0);
    assert_int_equal(f.nsec, 5);
    assert_int_equal(f.h.mem_size, 64ull << 20);
    assert_string_equal(f.h.cpu_model, "lookout-v1");
    assert_string_equal(f.h.backend, "bt");
    assert_string_equal(f.h.devices, "com1,com2");
    assert_int_equal(f.h.tsc_khz, 2000000);
    const struct snap_section *s = snap_find(&f, "cpu0");
    assert_non_null(s);
    assert_int_equal(snap_dec_cpu(s, &back), 0);
    /* struct padding is not part of the format: compare fields and re-encodings */
    assert_memory_equal(cpu.gpr, back.gpr, sizeof(cpu.gpr));
    assert_int_equal(cpu.rip, back.rip);
    assert_int_equal(cpu.apic_base, back.apic_base);
    assert_int_equal(cpu.tsc_deadline, back.tsc_deadline);
    assert_int_equal(cpu.seg[SEG_TR].base, back.seg[SEG_TR].base);
    assert_int_equal(cpu.seg[SEG_CS].l, back.seg[SEG_CS].l);
    assert_int_equal(cpu.idtr.limit, back.idtr.limit);
    assert_memory_equal(cpu.fx.xmm, back.fx.xmm, sizeof(cpu.fx.xmm));
    assert_memory_equal(cpu.fx.st, back.fx.st, sizeof(cpu.fx.st));
    assert_int_equal(cpu.fx.fip, back.fx.fip);
    assert_int_equal(cpu.ev.exception_error, back.ev.exception_error);
    assert_int_equal(cpu.mp_state, back.mp_state);
    struct snap_writer e1, e2;
    struct snap_header eh;
    memset(&eh, 0, sizeof(eh));
    strcpy(eh.cpu_model, "x");
    snap_writer_begin(&e1, &eh);
    snap_enc_cpu(&e1, &cpu);
    snap_writer_begin(&e2, &eh);
    snap_enc_cpu(&e2, &back);
    assert_int_equal(e1.len, e2.len);
    assert_memory_equal(e1.buf, e2.buf, e1.len);
    snap_writer_free(&e1);
    snap_writer_free(&e2);
    struct lapic_state l;
    assert_int_equal(snap_dec_lapic(snap_find(&f, "lapic0"), &l), 0);
    assert_int_equal(l.regs[0x20 / 4], 8u * 0x01010101u);
    struct pit_state pit;
    assert_int_equal(snap_dec_pit(snap_find(&f, "pit"), &pit, 100000), 0);
    assert_int_equal(pit.channels[0].count_load_time, 100000 - 4000); /* rebased */
    assert_int_equal(pit.channels[0].count, 65536);
    struct uart_state u;
    assert_int_equal(snap_dec_uart(snap_find(&f, "com1"), &u), 0);
    assert_int_equal(u.rx_count, 2);
    assert_int_equal(u.rx[1], 'i');
    assert_int_equal(snap_dec_cpuid(snap_find(&f, "cpuid"), &m2), 0);
    assert_int_equal(m2.n, m.n);
    uint8_t h1[32], h2[32];
    snap_cpuid_hash(&m, h1);
    snap_cpuid_hash(&m2, h2);
    assert_memory_equal(h1, h2, 32);
    assert_memory_equal(h1, f.h.cpuid_hash, 32);
    assert_null(snap_find(&f, "nope"));
    /* a decoder handed the wrong section refuses it, naming the section */
    assert_int_equal(snap_dec_lapic(snap_find(&f, "com1"), &l), -EINVAL);
    assert_non_null(strstr(err_msg(), "com1"));
    assert_int_equal(snap_dec_uart(snap_find(&f, "lapic0"), &u), -EINVAL);
    assert_non_null(strstr(err_msg(), "left over"));
    snap_writer_free(&w);
}

static void reseal(uint8_t *buf, size_t len)
{
    sha256(buf, len - 32, buf + len - 32);
}

static void test_truncated(void **st)
{
    struct x86_state cpu;
    static struct cpuid_model m;
    struct snap_writer w;
    fill_cpu(&cpu);
    build(&w, &cpu, &m);
    for (size_t n = 0; n < w.len; n++) {
        uint8_t *b = malloc(n ? n : 1);
        memcpy(b, w.buf, n);
        assert_true(snap_parse(b, n, &f) < 0);
        /* even re-sealed (an attacker recomputing the checksum), a cut file is refused */
        if (n > 32 + 12) {
            reseal(b, n);
            assert_true(snap_parse(b, n, &f) < 0);
        }
        free(b);
    }
    snap_writer_free(&w);
}

static void test_flipped_byte(void **st)
{
    struct x86_state cpu;
    static struct cpuid_model m;
    struct snap_writer w;
    fill_cpu(&cpu);
    build(&w, &cpu, &m);
    for (size_t i = 0; i < w.len; i++) {
        w.buf[i] ^= 0x10;
        int r = snap_parse(w.buf, w.len, &f);
        assert_true(r < 0);
        if (i >= 12) assert_non_null(strstr(err_msg(), "checksum"));
        w.buf[i] ^= 0x10;
    }
    assert_int_equal(snap_parse(w.buf, w.len, &f), 0);
    snap_writer_free(&w);
}

static void test_wrong_version(void **st)
{
    struct x86_state cpu;
    static struct cpuid_model m;
    struct snap_writer w;
    fill_cpu(&cpu);
    build(&w, &cpu, &m);
    w.buf[8] = 2;
    reseal(w.buf, w.len);
    assert_int_equal(snap_parse(w.buf, w.len, &f), -EINVAL);
    assert_non_null(strstr(err_msg(), "version 2"));
    w.buf[8] = 1;
    memcpy(w.buf, "NOTASNAP", 8);
    assert_int_equal(snap_parse(w.buf, w.len, &f), -EINVAL);
    assert_non_null(strstr(err_msg(), "magic"));
    snap_writer_free(&w);
}

/* Finds the section header of `name` in a built file. */
static size_t sec_off(const struct snap_writer *w, const char *name)
{
    for (size_t i = SNAP_HEADER_FIXED; i + 24 < w->len; i++)
        if (!memcmp(w->buf + i, name, strlen(name) + 1)) return i;
    fail();
    return 0;
}

static void test_bad_sections(void **st)
{
    struct x86_state cpu;
    static struct cpuid_model m;
    struct snap_writer w;
    fill_cpu(&cpu);
    build(&w, &cpu, &m);
    size_t o = sec_off(&w, "pit");
    uint8_t save[8];
    memcpy(save, w.buf + o + 32, 8);
    /* oversized: a length over the per-section cap */
    uint64_t big = (uint64_t)SNAP_SECTION_MAX + 1;
    memcpy(w.buf + o + 32, &big, 8);
    reseal(w.buf, w.len);
    assert_int_equal(snap_parse(w.buf, w.len, &f), -E2BIG);
    assert_non_null(strstr(err_msg(), "section pit"));
    /* overlong: past the end of the file */
    uint64_t past = w.len;
    memcpy(w.buf + o + 32, &past, 8);
    reseal(w.buf, w.len);
    assert_int_equal(snap_parse(w.buf, w.len, &f), -EINVAL);
    assert_non_null(strstr(err_msg(), "section pit"));
    memcpy(w.buf + o + 32, save, 8);
    /* unknown flags */
    w.buf[o + 28] = 0x80;
    reseal(w.buf, w.len);
    assert_int_equal(snap_parse(w.buf, w.len, &f), -EINVAL);
    assert_non_null(strstr(err_msg(), "flags"));
    w.buf[o + 28] = 0;
    /* duplicate: rename com1 to pit */
    size_t c = sec_off(&w, "com1");
    memcpy(w.buf + c, "pit\0", 4);
    reseal(w.buf, w.len);
    assert_int_equal(snap_parse(w.buf, w.len, &f), -EINVAL);
    assert_non_null(strstr(err_msg(), "twice"));
    /* a name that is not text */
    memcpy(w.buf + c, "c\x01m1", 4);
    reseal(w.buf, w.len);
    assert_int_equal(snap_parse(w.buf, w.len, &f), -EINVAL);
    memcpy(w.buf + c, "com1", 4);
    reseal(w.buf, w.len);
    assert_int_equal(snap_parse(w.buf, w.len, &f), 0);
    /* header: impossible config values */
    uint32_t ncpus = 65;
    memcpy(w.buf + 24, &ncpus, 4);
    reseal(w.buf, w.len);
    assert_int_equal(snap_parse(w.buf, w.len, &f), -EINVAL);
    assert_non_null(strstr(err_msg(), "vCPUs"));
    snap_writer_free(&w);

    /* the writer refuses a section over the cap */
    struct snap_header h;
    memset(&h, 0, sizeof(h));
    strcpy(h.cpu_model, "x");
    assert_int_equal(snap_writer_begin(&w, &h), 0);
    snap_section_begin(&w, "huge", 1, 0);
    uint8_t *junk = calloc(1, SNAP_SECTION_MAX + 1);
    snap_put_bytes(&w, junk, SNAP_SECTION_MAX + 1);
    free(junk);
    assert_int_equal(snap_section_end(&w), -E2BIG);
    assert_non_null(strstr(err_msg(), "huge"));
    assert_int_equal(snap_writer_finish(&w), -E2BIG);
    snap_writer_free(&w);
}

static void test_bad_payloads(void **st)
{
    /* impossible vCPU states are refused by the decoder with the section's name */
    struct x86_state cpu;
    static struct cpuid_model m;
    struct snap_writer w;
    fill_cpu(&cpu);
    cpu.mp_state = 9;
    build(&w, &cpu, &m);
    assert_int_equal(snap_parse(w.buf, w.len, &f), 0);
    struct x86_state back;
    assert_int_equal(snap_dec_cpu(snap_find(&f, "cpu0"), &back), -EINVAL);
    assert_non_null(strstr(err_msg(), "cpu0"));
    snap_writer_free(&w);
}

/* virtio device sections through a whole file: round trip, and the decoder's refusals named
 * with the section (layout-level; value checks are the device's, see test_virtio.c). */
static void test_virtio_sections(void **st)
{
    static struct virtio_dev_state blk, back;
    memset(&blk, 0, sizeof(blk));
    blk.device_id = 2;
    blk.nqueues = 1;
    blk.mmio.status = 0x0f;
    blk.mmio.drv_features = 1ull << 32;
    blk.mmio.vq[0].size = 128;
    blk.mmio.vq[0].ready = 1;
    blk.mmio.vq[0].desc = 0x200000;
    blk.mmio.vq[0].avail = 0x201000;
    blk.mmio.vq[0].used = 0x202000;
    blk.mmio.vq[0].last_avail = blk.mmio.vq[0].used_idx = 65535;
    blk.config_len = 60;
    blk.config[0] = 0x40;
    blk.nbuckets = 2;
    blk.bucket[0].rate = 10 << 20;
    blk.bucket[0].milli = -5000;
    blk.blk.sectors = 16384;
    blk.blk.image_size = 16384 * 512;
    blk.blk.image_mtime_ns = 1795391223938715731ll;
    strcpy(blk.blk.path, "/var/lib/images/d.img");
    static struct virtio_dev_state net;
    memset(&net, 0, sizeof(net));
    net.device_id = 1;
    net.nqueues = 2;
    net.config_len = 10;
    net.net.backend = 1;
    strcpy(net.net.ifname, "tap0");

    struct snap_header h;
    memset(&h, 0, sizeof(h));
    h.mem_size = 64ull << 20;
    h.ncpus = 1;
    strcpy(h.cpu_model, "lookout-v1");
    strcpy(h.devices, "virtio0-blk,virtio1-net");
    struct snap_writer w;
    memset(&w, 0, sizeof(w));
    assert_int_equal(snap_writer_begin(&w, &h), 0);
    snap_section_begin(&w, "virtio0-blk", SNAP_V_VIRTIO, 0);
    snap_enc_virtio(&w, &blk);
    assert_int_equal(snap_section_end(&w), 0);
    snap_section_begin(&w, "virtio1-net", SNAP_V_VIRTIO, 0);
    snap_enc_virtio(&w, &net);
    assert_int_equal(snap_section_end(&w), 0);
    assert_int_equal(snap_writer_finish(&w), 0);
    assert_int_equal(snap_parse(w.buf, w.len, &f), 0);
    assert_int_equal(snap_dec_virtio(snap_find(&f, "virtio0-blk"), &back), 0);
    assert_memory_equal(&blk, &back, sizeof(blk));
    assert_int_equal(snap_dec_virtio(snap_find(&f, "virtio1-net"), &back), 0);
    assert_memory_equal(&net, &back, sizeof(net));
    /* a section of another kind is not a virtio device */
    struct snap_section sec = *snap_find(&f, "virtio1-net");
    uint8_t buf[512];
    memcpy(buf, sec.data, sec.len);
    sec.data = buf;
    buf[0] = 7;
    assert_int_equal(snap_dec_virtio(&sec, &back), -EINVAL);
    assert_non_null(strstr(err_msg(), "virtio1-net"));
    buf[0] = 1;
    buf[36] = 5; /* queues */
    assert_int_equal(snap_dec_virtio(&sec, &back), -EINVAL);
    assert_non_null(strstr(err_msg(), "5 queues"));
    buf[36] = 2;
    uint64_t len = sec.len;
    sec.len = len - 1; /* the interface name cut short */
    assert_int_equal(snap_dec_virtio(&sec, &back), -EINVAL);
    assert_non_null(strstr(err_msg(), "virtio1-net"));
    sec.len = len;
    buf[len - 6] = 17; /* interface name length (u16 before "tap0") over 16 */
    assert_int_equal(snap_dec_virtio(&sec, &back), -EINVAL);
    assert_non_null(strstr(err_msg(), "interface name"));
    snap_writer_free(&w);
}

static void test_cpuid_presentable(void **st)
{
    static struct cpuid_model full, less;
    assert_int_equal(cpuid_model_build(&full, "lookout-v1", NULL, 0, 1, 2000000), 0);
    less = full;
    assert_int_equal(snap_cpuid_presentable(&full, &less), 0);
    /* a snapshot with fewer features can be presented by a fuller target, not the reverse */
    struct cpuid_entry *e = (struct cpuid_entry *)cpuid_find(&less, 0x80000001, 0);
    assert_non_null(e);
    e->edx &= ~(1u << 27); /* RDTSCP */
    assert_int_equal(snap_cpuid_presentable(&full, &less), 0);
    assert_int_equal(snap_cpuid_presentable(&less, &full), -EINVAL);
    assert_non_null(strstr(err_msg(), "0x80000001"));
    /* a different TSC frequency (a non-feature leaf) must be equal */
    static struct cpuid_model other;
    assert_int_equal(cpuid_model_build(&other, "lookout-v1", NULL, 0, 1, 3000000), 0);
    assert_int_equal(snap_cpuid_presentable(&full, &other), -EINVAL);
}

static int dev_save(void *o, struct snap_writer *w)
{
    snap_put_u32(w, *(uint32_t *)o);
    return 0;
}
static int dev_check(void *o, const struct snap_section *s)
{
    return s->len == 4 ? 0 : -EINVAL;
}
static int dev_load(void *o, const struct snap_section *s)
{
    return 0;
}

static void test_registry(void **st)
{
    static const struct snap_device_ops ops = {"virtio-test0", 1,        0,   dev_save,
                                               dev_check,      dev_load, NULL};
    static const struct snap_device_ops bad = {"", 1, 0, dev_save, dev_check, dev_load, NULL};
    struct vm *vm = (struct vm *)(uintptr_t)0x1000, *other = (struct vm *)(uintptr_t)0x2000;
    uint32_t a = 1, b = 2;
    assert_int_equal(snap_register_device(vm, &ops, &a), 0);
    assert_int_equal(snap_register_device(vm, &ops, &b), -EEXIST); /* names unique per VM */
    assert_int_equal(snap_register_device(other, &ops, &b), 0);    /* another VM may */
    assert_int_equal(snap_register_device(vm, &bad, &b), -EINVAL);
    snap_unregister_device(vm, &a);
    assert_int_equal(snap_register_device(vm, &ops, &b), 0);
    snap_unregister_device(vm, &b);
    snap_unregister_device(other, &b);
    static struct snap_device_ops many[SNAP_MAX_DEVICES];
    static char names[SNAP_MAX_DEVICES][16];
    for (unsigned i = 0; i < SNAP_MAX_DEVICES; i++) {
        snprintf(names[i], sizeof(names[i]), "dev%u", i);
        many[i] = ops;
        many[i].name = names[i];
        assert_int_equal(snap_register_device(vm, &many[i], names[i]), 0);
    }
    assert_int_equal(snap_register_device(vm, &ops, &a), -ENOSPC); /* the cap, not a crash */
    for (unsigned i = 0; i < SNAP_MAX_DEVICES; i++)
        snap_unregister_device(vm, names[i]);
    assert_int_equal(snap_register_device(vm, &ops, &a), 0);
    snap_unregister_device(vm, &a);
}

int main(void)
{
    log_init_from_env();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sha256_vectors),    cmocka_unit_test(test_xxh64),
        cmocka_unit_test(test_round_trip),        cmocka_unit_test(test_truncated),
        cmocka_unit_test(test_flipped_byte),      cmocka_unit_test(test_wrong_version),
        cmocka_unit_test(test_bad_sections),      cmocka_unit_test(test_bad_payloads),
        cmocka_unit_test(test_cpuid_presentable), cmocka_unit_test(test_registry),
        cmocka_unit_test(test_virtio_sections),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
