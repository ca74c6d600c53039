/* Unit tests of the software CPU's soft MMU (cpu/bt/mmu.c) and segment checks: page walks in
 * every paging mode, permissions (U/S, R/W, WP, NX), Accessed/Dirty updates, reserved bits,
 * #PF error codes and CR2, TLB flushing, page-crossing writes, MMIO routing, dirty logging and
 * the code-page write-watch. */
#include "bt_testenv.h"

#define PF_P 1
#define PF_W 2
#define PF_U 4
#define PF_R 8
#define PF_I 0x10

#define LIN 0x400000ull /* PD[2] -> PT at T_PT */

static void map4k(struct tenv *t, unsigned idx, uint64_t phys, uint64_t flags)
{
    put64(t, T_PT + 8 * idx, phys | flags);
}

static struct tenv *setup(void)
{
    struct tenv *t = tenv_new(false);
    t_setup_long(t);
    put64(t, T_PD + 16, T_PT | 7);
    map4k(t, 0, 0x100000, 7);                /* user RW */
    map4k(t, 1, 0x101000, 5);                /* user RO */
    map4k(t, 2, 0x102000, 3);                /* supervisor RW */
    map4k(t, 3, 0x103000, 7 | (1ull << 63)); /* NX */
    /* 4: not present */
    map4k(t, 5, 0x105000 | (1ull << 50), 7); /* reserved bit (MAXPHYADDR 36) */
    put64(t, T_PD + 24, 0x800000 | 0x87);    /* 2 MiB page at 0x600000 -> 0x800000 */
    return t;
}

static void walk_4level_and_ad_bits(void **state)
{
    struct tenv *t = setup();
    struct bt_cpu *c = t->c;
    put64(t, 0x100010, 0x1122334455667788ull);
    volatile uint64_t v = 0;
    assert_int_equal(T_TRY(c, v = bt_read(c, LIN + 0x10, 8, BT_ACC_READ)), -1);
    assert_int_equal(v, 0x1122334455667788ull);
    assert_true(get64(t, T_PT) & 0x20);  /* A */
    assert_false(get64(t, T_PT) & 0x40); /* not D yet */
    assert_true(get64(t, T_PD + 16) & 0x20);
    assert_true(get64(t, T_PDPT) & 0x20);
    assert_true(get64(t, T_PML4) & 0x20);
    /* a write through the cached read-only-dirty translation must walk again and set D */
    assert_int_equal(T_TRY(c, bt_write(c, LIN + 0x18, 4, 0xdeadbeef, BT_ACC_WRITE)), -1);
    assert_int_equal(get32(t, 0x100018), 0xdeadbeef);
    assert_true(get64(t, T_PT) & 0x40);
    uint64_t gpa;
    assert_int_equal(bt_translate(c, LIN + 0x123, BT_ACC_READ, &gpa), 0);
    assert_int_equal(gpa, 0x100123);
    tenv_free(t);
}

static void large_pages(void **state)
{
    struct tenv *t = setup();
    struct bt_cpu *c = t->c;
    uint64_t gpa;
    assert_int_equal(bt_translate(c, 0x600000 + 0x1234, BT_ACC_READ, &gpa), 0);
    assert_int_equal(gpa, 0x801234);
    assert_int_equal(bt_translate(c, 0x7fffff, BT_ACC_READ, &gpa), 0);
    assert_int_equal(gpa, 0x9fffff);
    /* 1 GiB pages are not in the model: PS in a PDPTE is reserved */
    put64(t, T_PDPT + 8, 0x40000000 | 0x87);
    uint32_t e = bt_translate(c, 0x40000000, BT_ACC_READ, &gpa);
    assert_int_equal(e & ~BT_XLATE_FAULT, PF_P | PF_R);
    /* reserved bits 20:13 of a 2 MiB PDE */
    put64(t, T_PD + 32, 0x802000 | 0x87);
    e = bt_translate(c, 0x800000, BT_ACC_READ, &gpa);
    assert_int_equal(e & ~BT_XLATE_FAULT, PF_P | PF_R);
    tenv_free(t);
}

static void pf_error_codes_and_cr2(void **state)
{
    struct tenv *t = setup();
    struct bt_cpu *c = t->c;
    volatile uint64_t v;
    /* not present: read, write */
    assert_int_equal(T_TRY(c, v = bt_read(c, LIN + 0x4008, 8, BT_ACC_READ)), X86_PF);
    assert_int_equal(c->pending_err, 0);
    assert_int_equal(c->s.cr2, LIN + 0x4008);
    assert_int_equal(T_TRY(c, bt_write(c, LIN + 0x4000, 1, 0, BT_ACC_WRITE)), X86_PF);
    assert_int_equal(c->pending_err, PF_W);
    /* read-only page: supervisor write with CR0.WP=1 faults, with WP=0 succeeds */
    assert_int_equal(T_TRY(c, bt_write(c, LIN + 0x1000, 4, 1, BT_ACC_WRITE)), X86_PF);
    assert_int_equal(c->pending_err, PF_P | PF_W);
    c->s.cr0 &= ~X86_CR0_WP;
    bt_tlb_flush(c, true);
    assert_int_equal(T_TRY(c, bt_write(c, LIN + 0x1000, 4, 0x55, BT_ACC_WRITE)), -1);
    assert_int_equal(get32(t, 0x101000), 0x55);
    c->s.cr0 |= X86_CR0_WP;
    bt_tlb_flush(c, true);
    /* reserved bit */
    assert_int_equal(T_TRY(c, v = bt_read(c, LIN + 0x5000, 8, BT_ACC_READ)), X86_PF);
    assert_int_equal(c->pending_err, PF_P | PF_R);
    /* NX: fetch faults with I, read is fine */
    uint8_t buf[4];
    uint64_t gpa;
    assert_int_equal(T_TRY(c, v = bt_read(c, LIN + 0x3000, 8, BT_ACC_READ)), -1);
    assert_int_equal(T_TRY(c, bt_fetch(c, LIN + 0x3000, buf, 4, &gpa)), X86_PF);
    assert_int_equal(c->pending_err, PF_P | PF_I);
    /* with EFER.NXE clear bit 63 is reserved */
    c->s.efer &= ~X86_EFER_NXE;
    bt_tlb_flush(c, true);
    assert_int_equal(T_TRY(c, v = bt_read(c, LIN + 0x3000, 8, BT_ACC_READ)), X86_PF);
    assert_int_equal(c->pending_err, PF_P | PF_R);
    (void)v;
    tenv_free(t);
}

static void user_supervisor(void **state)
{
    struct tenv *t = setup();
    struct bt_cpu *c = t->c;
    t_to_ring3(t, T_CODE3);
    assert_int_equal(c->cpl, 3);
    volatile uint64_t v;
    assert_int_equal(T_TRY(c, v = bt_read(c, LIN, 8, BT_ACC_READ)), -1);
    assert_int_equal(T_TRY(c, v = bt_read(c, LIN + 0x2000, 8, BT_ACC_READ)), X86_PF);
    assert_int_equal(c->pending_err, PF_P | PF_U);
    assert_int_equal(T_TRY(c, bt_write(c, LIN + 0x1000, 4, 1, BT_ACC_WRITE)), X86_PF);
    assert_int_equal(c->pending_err, PF_P | PF_W | PF_U);
    /* user write to RO is refused even with WP=0 */
    c->s.cr0 &= ~X86_CR0_WP;
    bt_tlb_flush(c, true);
    assert_int_equal(T_TRY(c, bt_write(c, LIN + 0x1000, 4, 1, BT_ACC_WRITE)), X86_PF);
    /* implicit supervisor accesses (descriptor tables) ignore CPL 3 */
    assert_int_equal(T_TRY(c, v = bt_read(c, LIN + 0x2000, 8, BT_ACC_READ | BT_ACC_IMPLICIT)), -1);
    /* not-present for a user read */
    assert_int_equal(T_TRY(c, v = bt_read(c, LIN + 0x4000, 1, BT_ACC_READ)), X86_PF);
    assert_int_equal(c->pending_err, PF_U);
    (void)v;
    tenv_free(t);
}

static void page_crossing_write_is_all_or_nothing(void **state)
{
    struct tenv *t = setup();
    struct bt_cpu *c = t->c;
    put32(t, 0x100ffc, 0x11111111);
    /* 0x400ffe..0x401001 crosses into the read-only page: nothing may be written */
    assert_int_equal(T_TRY(c, bt_write(c, LIN + 0xffe, 4, 0xaabbccdd, BT_ACC_WRITE)), X86_PF);
    assert_int_equal(c->s.cr2, LIN + 0x1000);
    assert_int_equal(get32(t, 0x100ffc), 0x11111111);
    /* a crossing read works and stitches both pages */
    put32(t, 0x101000, 0x44332211);
    put32(t, 0x100ffc, 0x88776655);
    volatile uint64_t v = 0;
    assert_int_equal(T_TRY(c, v = bt_read(c, LIN + 0xffe, 4, BT_ACC_READ)), -1);
    assert_int_equal(v, 0x22118877);
    tenv_free(t);
}

static void tlb_flushes(void **state)
{
    struct tenv *t = setup();
    struct bt_cpu *c = t->c;
    put32(t, 0x100000, 1);
    put32(t, 0x107000, 2);
    volatile uint64_t v = 0;
    assert_int_equal(T_TRY(c, v = bt_read(c, LIN, 4, BT_ACC_READ)), -1);
    assert_int_equal(v, 1);
    map4k(t, 0, 0x107000, 7);
    T_TRY(c, v = bt_read(c, LIN, 4, BT_ACC_READ));
    assert_int_equal(v, 1); /* stale until INVLPG, as on hardware */
    bt_tlb_flush_page(c, LIN);
    T_TRY(c, v = bt_read(c, LIN, 4, BT_ACC_READ));
    assert_int_equal(v, 2);
    /* global pages survive a CR3 reload when CR4.PGE is set */
    map4k(t, 0, 0x100000, 7 | 0x100);
    bt_tlb_flush(c, true);
    c->s.cr4 |= X86_CR4_PGE;
    T_TRY(c, v = bt_read(c, LIN, 4, BT_ACC_READ));
    assert_int_equal(v, 1);
    map4k(t, 0, 0x107000, 7 | 0x100);
    bt_write_cr(c, 3, c->s.cr3);
    T_TRY(c, v = bt_read(c, LIN, 4, BT_ACC_READ));
    assert_int_equal(v, 1);
    bt_tlb_flush(c, true);
    T_TRY(c, v = bt_read(c, LIN, 4, BT_ACC_READ));
    assert_int_equal(v, 2);
    tenv_free(t);
}

static void legacy_paging_modes(void **state)
{
    struct tenv *t = tenv_new(false);
    struct bt_cpu *c = t->c;
    t_setup_long(t);
    /* 32-bit paging: PDE[1] = 4 MiB page at 0xc00000 (PSE), PDE[2] -> PT with one 4 KiB page */
    memset(gp(t, T_PML4, 0x2000), 0, 0x2000);
    put32(t, T_PML4 + 4, 0xc00000 | 0x87);
    put32(t, T_PML4 + 8, T_PDPT | 7);
    put32(t, T_PDPT + 4, 0x123000 | 7);
    c->s.efer = 0;
    c->s.cr4 = X86_CR4_PSE;
    t_seg(&c->s.seg[SEG_CS], SEL_KCODE32, 0xb, 0, false, true);
    bt_update_mode(c);
    bt_tlb_flush(c, true);
    assert_int_equal(c->code_bits, 32);
    uint64_t gpa;
    assert_int_equal(bt_translate(c, 0x400000 + 0x5678, BT_ACC_READ, &gpa), 0);
    assert_int_equal(gpa, 0xc05678);
    assert_int_equal(bt_translate(c, 0x801abc, BT_ACC_WRITE, &gpa), 0);
    assert_int_equal(gpa, 0x123abc);
    assert_true(get32(t, T_PDPT + 4) & 0x40); /* dirty */
    /* without CR4.PSE the PS bit is ignored: PDE[1] is a table pointer */
    c->s.cr4 = 0;
    bt_tlb_flush(c, true);
    assert_int_equal(bt_translate(c, 0x400000, BT_ACC_READ, &gpa), BT_XLATE_FAULT); /* PT zero */
    /* PAE: PDPT at 0x1000 (32-byte aligned), PDPTE[0] -> PD at 0x2000 with a 2 MiB page */
    memset(gp(t, T_PML4, 0x2000), 0, 0x2000);
    put64(t, T_PML4, T_PDPT | 1);
    put64(t, T_PDPT + 8, 0xa00000 | 0x87 | (1ull << 63));
    c->s.cr4 = X86_CR4_PAE;
    c->s.efer = X86_EFER_NXE;
    bt_tlb_flush(c, true);
    assert_int_equal(bt_translate(c, 0x200042, BT_ACC_READ, &gpa), 0);
    assert_int_equal(gpa, 0xa00042);
    assert_int_equal(bt_translate(c, 0x200042, BT_ACC_EXEC, &gpa) & ~BT_XLATE_FAULT, PF_P | PF_I);
    /* PDPTE reserved bits (bit 1: R/W is reserved in PAE PDPTEs) */
    put64(t, T_PML4, T_PDPT | 3);
    bt_tlb_flush(c, true);
    assert_int_equal(bt_translate(c, 0x200042, BT_ACC_READ, &gpa) & ~BT_XLATE_FAULT, PF_P | PF_R);
    /* no paging: identity */
    c->s.cr0 &= ~X86_CR0_PG;
    bt_tlb_flush(c, true);
    assert_int_equal(bt_translate(c, 0x12345678, BT_ACC_WRITE, &gpa), 0);
    assert_int_equal(gpa, 0x12345678);
    tenv_free(t);
}

static void segment_limits_and_canonical(void **state)
{
    struct tenv *t = tenv_new(false);
    struct bt_cpu *c = t->c;
    t_setup_long(t);
    volatile uint64_t lin = 0;
    /* 64-bit: canonical checks, #SS for SS */
    assert_int_equal(
        T_TRY(c, lin = bt_seg_linear(c, SEG_DS, 0x00007ffffffffffcull, 8, BT_ACC_READ)), X86_GP);
    assert_int_equal(c->pending_err, 0);
    assert_int_equal(
        T_TRY(c, lin = bt_seg_linear(c, SEG_SS, 0x8000000000000000ull, 8, BT_ACC_READ)), X86_SS);
    c->s.seg[SEG_FS].base = 0xffff800000000000ull;
    assert_int_equal(T_TRY(c, lin = bt_seg_linear(c, SEG_FS, 0x10, 8, BT_ACC_READ)), -1);
    assert_int_equal(lin, 0xffff800000000010ull);
    /* 32-bit protected mode: limits, expand-down, read-only, execute-only */
    c->s.efer = 0;
    c->s.cr0 &= ~X86_CR0_PG;
    c->s.cr4 = 0;
    t_seg(&c->s.seg[SEG_CS], SEL_KCODE32, 0xb, 0, false, true);
    bt_update_mode(c);
    c->s.seg[SEG_DS].limit = 0xfff;
    c->s.seg[SEG_DS].base = 0x10000;
    assert_int_equal(T_TRY(c, lin = bt_seg_linear(c, SEG_DS, 0xffc, 4, BT_ACC_READ)), -1);
    assert_int_equal(lin, 0x10ffc);
    assert_int_equal(T_TRY(c, lin = bt_seg_linear(c, SEG_DS, 0xffd, 4, BT_ACC_READ)), X86_GP);
    c->s.seg[SEG_SS].limit = 0xfff;
    assert_int_equal(T_TRY(c, lin = bt_seg_linear(c, SEG_SS, 0x1000, 1, BT_ACC_WRITE)), X86_SS);
    /* expand-down: offsets above the limit are valid */
    c->s.seg[SEG_ES].type = 0x7; /* data, expand-down, writable */
    c->s.seg[SEG_ES].limit = 0xfff;
    c->s.seg[SEG_ES].base = 0;
    assert_int_equal(T_TRY(c, lin = bt_seg_linear(c, SEG_ES, 0xfff, 1, BT_ACC_READ)), X86_GP);
    assert_int_equal(T_TRY(c, lin = bt_seg_linear(c, SEG_ES, 0x1000, 4, BT_ACC_READ)), -1);
    c->s.seg[SEG_ES].db = 0;
    assert_int_equal(T_TRY(c, lin = bt_seg_linear(c, SEG_ES, 0xfffe, 4, BT_ACC_READ)), X86_GP);
    /* read-only data refuses writes; null (unusable) segment refuses everything */
    c->s.seg[SEG_GS].type = 0x1;
    assert_int_equal(T_TRY(c, lin = bt_seg_linear(c, SEG_GS, 0, 1, BT_ACC_WRITE)), X86_GP);
    c->s.seg[SEG_FS].unusable = 1;
    assert_int_equal(T_TRY(c, lin = bt_seg_linear(c, SEG_FS, 0, 1, BT_ACC_READ)), X86_GP);
    tenv_free(t);
}

static uint8_t mmio_last_write;
static void mmio_rd(void *o, uint64_t off, uint8_t *d, unsigned size)
{
    for (unsigned k = 0; k < size; k++)
        d[k] = (uint8_t)(0xa0 + off + k);
}
static void mmio_wr(void *o, uint64_t off, const uint8_t *d, unsigned size)
{
    mmio_last_write = d[0];
}
static const struct bus_ops mmio_ops = {mmio_rd, mmio_wr};

static void mmio_and_unclaimed(void **state)
{
    struct tenv *t = tenv_new(false);
    struct bt_cpu *c = t->c;
    t_setup_long(t);
    assert_int_equal(bus_register(&t->vm.mmio, 0xd0000000, 0x1000, &mmio_ops, NULL, "t"), 0);
    /* map 0xd0000000 at lin 0x600000 with a 2 MiB page */
    put64(t, T_PD + 24, 0xd0000000 | 0x87);
    volatile uint64_t v = 0;
    assert_int_equal(T_TRY(c, v = bt_read(c, 0x600004, 2, BT_ACC_READ)), -1);
    assert_int_equal(v, 0xa5a4);
    assert_int_equal(T_TRY(c, bt_write(c, 0x600000, 1, 0x5a, BT_ACC_WRITE)), -1);
    assert_int_equal(mmio_last_write, 0x5a);
    /* nothing there: all ones */
    assert_int_equal(T_TRY(c, v = bt_read(c, 0x601000, 8, BT_ACC_READ)), -1);
    assert_int_equal(v, ~0ull);
    assert_int_equal(bt_phys_read(c, 0xe0000000, 4), 0xffffffffu);
    /* beyond RAM above 4 GiB, too */
    assert_int_equal(bt_phys_read(c, 0x200000000ull, 8), ~0ull);
    bt_phys_write(c, 0x200000000ull, 8, 0); /* dropped */
    tenv_free(t);
}

static void dirty_log_and_code_watch(void **state)
{
    struct tenv *t = tenv_new(true);
    struct bt_cpu *c = t->c;
    t_setup_long(t);
    assert_int_equal(guest_dirty_enable(&t->vm.mem), 0);
    uint64_t bm[(16 << 20) / 4096 / 64];
    memset(bm, 0, sizeof(bm));
    guest_dirty_collect(&t->vm.mem, bm, ARRAY_SIZE(bm));
    memset(bm, 0, sizeof(bm));
    assert_int_equal(T_TRY(c, bt_write(c, 0x345678, 4, 1, BT_ACC_WRITE)), -1);
    guest_dirty_collect(&t->vm.mem, bm, ARRAY_SIZE(bm));
    assert_true(bm[0x345 / 64] & (1ull << (0x345 % 64)));
    assert_false(bm[0x346 / 64] & (1ull << (0x346 % 64)));
    /* write-watch: a write to a watched page clears the watch (and drops decoded code) */
    struct bt_vm *bv = bt_vm_of(&t->vm);
    assert_non_null(bv);
    bt_watch_code_page(c, 0x346000);
    assert_true(bv->watch[0x346 / 64] & (1ull << (0x346 % 64)));
    volatile uint64_t v;
    assert_int_equal(T_TRY(c, v = bt_read(c, 0x346000, 4, BT_ACC_READ)), -1);
    assert_true(bv->watch[0x346 / 64] & (1ull << (0x346 % 64))); /* reads do not */
    assert_int_equal(T_TRY(c, bt_write(c, 0x346010, 4, 1, BT_ACC_WRITE)), -1);
    assert_false(bv->watch[0x346 / 64] & (1ull << (0x346 % 64)));
    /* bt_host_ptr for LOCKed RMW: RAM gives a pointer, crossing/MMIO gives NULL */
    void *volatile p = NULL;
    assert_int_equal(T_TRY(c, p = bt_host_ptr(c, 0x347000, 8, BT_ACC_READ | BT_ACC_WRITE)), -1);
    assert_ptr_equal(p, gp(t, 0x347000, 8));
    assert_int_equal(T_TRY(c, p = bt_host_ptr(c, 0x347ffc, 8, BT_ACC_READ | BT_ACC_WRITE)), -1);
    assert_null(p);
    (void)v;
    tenv_free(t);
}

static void self_modifying_code(void **state)
{
    /* mov byte [rip+1], 0xf4 ; nop ; int 0x80  -- the store turns the INT into HLT, which must run
     */
    struct tenv *t = tenv_new(true);
    struct bt_cpu *c = t->c;
    t_setup_long(t);
    const uint8_t code[] = {0xc6, 0x05, 0x01, 0x00, 0x00, 0x00, 0xf4, 0x90, 0xcd, 0x80, 0xf4};
    put_bytes(t, T_CODE0, code, sizeof(code));
    c->halted = false;
    c->exit_now = false;
    bt_exec(c, 10);
    assert_true(c->halted);
    assert_int_equal(c->s.rip, T_CODE0 + 9);
    tenv_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(walk_4level_and_ad_bits),
        cmocka_unit_test(large_pages),
        cmocka_unit_test(pf_error_codes_and_cr2),
        cmocka_unit_test(user_supervisor),
        cmocka_unit_test(page_crossing_write_is_all_or_nothing),
        cmocka_unit_test(tlb_flushes),
        cmocka_unit_test(legacy_paging_modes),
        cmocka_unit_test(segment_limits_and_canonical),
        cmocka_unit_test(mmio_and_unclaimed),
        cmocka_unit_test(dirty_log_and_code_watch),
        cmocka_unit_test(self_modifying_code),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
