/* Unit tests of segmentation in the software CPU (cpu/bt/seg.c, system.c): far CALL through a
 * 64-bit call gate to ring 0 and far RET back to ring 3, far JMP checks, LAR/LSL/VERR/VERW,
 * LTR/LLDT checks, SGDT/SIDT, segment loads with their error codes, the MOV SS shadow. */
#include "bt_testenv.h"

#define SEL_GATE 0x48 /* 16-byte call gate at 0x48..0x57 */

static struct tenv *setup(void)
{
    struct tenv *t = tenv_new(false);
    t_setup_long(t);
    return t;
}

static uint64_t frame(struct tenv *t, int k)
{
    return get64(t, t->c->s.gpr[RSP] + 8 * (uint64_t)k);
}

/* Runs exactly one instruction at rip (written there first). */
static void step(struct tenv *t, const void *code, size_t n)
{
    put_bytes(t, t->c->s.rip, code, n);
    bt_cache_flush(t->c);
    t->c->halted = false;
    t->c->exit_now = false;
    bt_exec(t->c, 1);
}

static void call_gate_to_ring0_and_back(void **state)
{
    struct tenv *t = setup();
    struct bt_cpu *c = t->c;
    uint64_t target = T_CODE0 + 0x300;
    /* 64-bit call gate, DPL 3, to kernel code */
    put64(t, T_GDT + SEL_GATE,
          (target & 0xffff) | ((uint64_t)SEL_KCODE << 16) | (0xecull << 40) |
              ((target >> 16 & 0xffff) << 48));
    put64(t, T_GDT + SEL_GATE + 8, target >> 32);
    c->s.gdtr.limit = 0x5f;
    put_bytes(t, target, (uint8_t[]){0xf4, 0x48, 0xcb}, 3); /* hlt; retfq */
    /* far pointer at T_CODE3+0x100: offset (ignored for gates), selector */
    put64(t, T_CODE3 + 0x100, 0);
    uint16_t sel = SEL_GATE | 3;
    put_bytes(t, T_CODE3 + 0x108, &sel, 2);
    put_bytes(t, T_CODE3 + 8, (uint8_t[]){0xf4}, 1); /* back in ring 3: hlt -> #GP */
    t_to_ring3(t, T_CODE3);
    uint64_t rsp3 = c->s.gpr[RSP];
    /* call far qword [T_CODE3+0x100] */
    uint32_t abs = (uint32_t)(T_CODE3 + 0x100);
    uint8_t call[8] = {0x48, 0xff, 0x1c, 0x25};
    memcpy(call + 4, &abs, 4);
    t_run(t, call, 8, 10);
    assert_true(c->halted);
    assert_int_equal(c->s.rip, target + 1);
    assert_int_equal(c->cpl, 0);
    assert_int_equal(c->s.gpr[RSP], T_STACK0 - 32);
    assert_int_equal(frame(t, 0), T_CODE3 + 8);
    assert_int_equal(frame(t, 1), SEL_UCODE);
    assert_int_equal(frame(t, 2), rsp3);
    assert_int_equal(frame(t, 3), SEL_UDATA);
    /* retfq to ring 3, which then faults on its HLT */
    c->halted = false;
    c->exit_now = false;
    bt_exec(c, 10);
    assert_int_equal(t_handler_vector(t), X86_GP);
    assert_int_equal(frame(t, 1), T_CODE3 + 8);
    assert_int_equal(frame(t, 2), SEL_UCODE);
    assert_int_equal(frame(t, 4), rsp3);
    tenv_free(t);
}

static void far_jump_checks(void **state)
{
    struct tenv *t = setup();
    struct bt_cpu *c = t->c;
    /* jmp far [abs]: m16:32 in 64-bit mode without REX.W */
    uint32_t abs = (uint32_t)(T_CODE0 + 0x100);
    uint8_t jmp[7] = {0xff, 0x2c, 0x25};
    memcpy(jmp + 3, &abs, 4);
    struct {
        uint32_t off;
        uint16_t sel;
    } __attribute__((packed)) ptr = {(uint32_t)(T_CODE0 + 0x200), SEL_KDATA};
    put_bytes(t, T_CODE0 + 0x100, &ptr, sizeof(ptr));
    t_run(t, jmp, sizeof(jmp), 3); /* to a data segment: #GP(selector) */
    assert_int_equal(t_handler_vector(t), X86_GP);
    assert_int_equal(frame(t, 0), SEL_KDATA);
    /* not-present code segment: #NP(selector) */
    t_setup_long(t);
    put64(t, T_GDT + 0x08, 0x00af9a000000ffffull & ~(1ull << 47));
    ptr.sel = SEL_KCODE;
    put_bytes(t, T_CODE0 + 0x100, &ptr, sizeof(ptr));
    t_run(t, jmp, sizeof(jmp), 3);
    /* the #NP handler itself lives in the (now not present) kernel code segment: #NP -> #DF
     * -> triple fault is what hardware does */
    assert_true(c->shutdown);
    /* to 32-bit compatibility code at the same privilege works */
    t_setup_long(t);
    ptr.sel = SEL_KCODE32;
    put_bytes(t, T_CODE0 + 0x100, &ptr, sizeof(ptr));
    put_bytes(t, T_CODE0 + 0x200, (uint8_t[]){0xf4}, 1);
    t_run(t, jmp, sizeof(jmp), 3);
    assert_true(c->halted);
    assert_int_equal(c->s.rip, T_CODE0 + 0x201);
    assert_int_equal(c->code_bits, 32);
    assert_int_equal(c->s.seg[SEG_CS].sel, SEL_KCODE32);
    tenv_free(t);
}

static void lar_lsl_verr_verw(void **state)
{
    struct tenv *t = setup();
    struct bt_cpu *c = t->c;
    t_to_ring3(t, T_CODE3);
    const uint8_t lar[] = {0x0f, 0x02, 0xc1}, lsl[] = {0x0f, 0x03, 0xc1},
                  verr[] = {0x0f, 0x00, 0xe1}, verw[] = {0x0f, 0x00, 0xe9};
    c->s.gpr[RCX] = SEL_UDATA;
    c->s.gpr[RAX] = 0;
    step(t, lar, 3);
    assert_true(c->s.rflags & X86_FLAG_ZF);
    assert_int_equal(c->s.gpr[RAX], 0x00c0f200);
    t_to_ring3(t, T_CODE3);
    step(t, lsl, 3);
    assert_true(c->s.rflags & X86_FLAG_ZF);
    assert_int_equal(c->s.gpr[RAX], 0xffffffff);
    /* kernel data from ring 3: not visible */
    t_to_ring3(t, T_CODE3);
    c->s.gpr[RCX] = SEL_KDATA;
    c->s.gpr[RAX] = 0x1234;
    step(t, lar, 3);
    assert_false(c->s.rflags & X86_FLAG_ZF);
    assert_int_equal(c->s.gpr[RAX], 0x1234);
    t_to_ring3(t, T_CODE3);
    step(t, verr, 3);
    assert_false(c->s.rflags & X86_FLAG_ZF);
    /* user code: readable but not writable */
    t_to_ring3(t, T_CODE3);
    c->s.gpr[RCX] = SEL_UCODE;
    step(t, verr, 3);
    assert_true(c->s.rflags & X86_FLAG_ZF);
    t_to_ring3(t, T_CODE3);
    step(t, verw, 3);
    assert_false(c->s.rflags & X86_FLAG_ZF);
    /* null selector and beyond the GDT limit: ZF=0, no fault */
    t_to_ring3(t, T_CODE3);
    c->s.gpr[RCX] = 0x3f8;
    step(t, lar, 3);
    assert_false(c->s.rflags & X86_FLAG_ZF);
    assert_int_equal(c->s.rip, T_CODE3 + 3);
    tenv_free(t);
}

static void ltr_lldt_sgdt(void **state)
{
    struct tenv *t = setup();
    struct bt_cpu *c = t->c;
    const uint8_t ltr_ax[] = {0x0f, 0x00, 0xd8}, lldt_ax[] = {0x0f, 0x00, 0xd0};
    /* LTR of a data segment: #GP(sel) */
    c->s.gpr[RAX] = SEL_KDATA;
    t_run(t, ltr_ax, 3, 2);
    assert_int_equal(t_handler_vector(t), X86_GP);
    assert_int_equal(frame(t, 0), SEL_KDATA);
    /* LTR of the busy TSS (type 0xb in t_setup_long? it is 0x9 available): works, marks busy */
    t_setup_long(t);
    c->s.gpr[RAX] = SEL_TSS;
    put_bytes(t, T_CODE0 + 3, (uint8_t[]){0xf4}, 1);
    t_run(t, ltr_ax, 3, 3);
    assert_int_equal(c->s.rip, T_CODE0 + 4);
    assert_int_equal((get64(t, T_GDT + SEL_TSS) >> 40) & 0xf, 0xb);
    assert_int_equal(c->s.seg[SEG_TR].base, T_TSS);
    /* again: busy -> #GP */
    c->s.rip = T_CODE0;
    t_run(t, ltr_ax, 3, 3);
    assert_int_equal(t_handler_vector(t), X86_GP);
    /* LLDT null: LDTR unusable; LLDT from ring 3: #GP(0) */
    t_setup_long(t);
    c->s.gpr[RAX] = 0;
    put_bytes(t, T_CODE0 + 3, (uint8_t[]){0xf4}, 1);
    t_run(t, lldt_ax, 3, 3);
    assert_true(c->s.seg[SEG_LDTR].unusable);
    t_to_ring3(t, T_CODE3);
    t_run(t, lldt_ax, 3, 3);
    assert_int_equal(t_handler_vector(t), X86_GP);
    /* SGDT from ring 3 works (no UMIP): sgdt [rbx] */
    t_setup_long(t);
    t_to_ring3(t, T_CODE3);
    c->s.gpr[RBX] = T_CODE3 + 0x800;
    put_bytes(t, T_CODE3 + 3, (uint8_t[]){0xcd, 0x80}, 2);
    t_run(t, (uint8_t[]){0x0f, 0x01, 0x03}, 3, 5);
    assert_int_equal(t_handler_vector(t), 0x80);
    uint16_t lim;
    memcpy(&lim, gp(t, T_CODE3 + 0x800, 2), 2);
    assert_int_equal(lim, 0x4f);
    assert_int_equal(get64(t, T_CODE3 + 0x802), T_GDT);
    tenv_free(t);
}

static void segment_loads(void **state)
{
    struct tenv *t = setup();
    struct bt_cpu *c = t->c;
    const uint8_t mov_ds_ax[] = {0x8e, 0xd8}, mov_ss_ax[] = {0x8e, 0xd0};
    /* ring 3: loading a DPL-0 data segment into DS is #GP(sel) */
    t_to_ring3(t, T_CODE3);
    c->s.gpr[RAX] = SEL_KDATA;
    t_run(t, mov_ds_ax, 2, 3);
    assert_int_equal(t_handler_vector(t), X86_GP);
    assert_int_equal(frame(t, 0), SEL_KDATA);
    /* SS with RPL != CPL: #GP(sel); not-present data segment: #NP(sel) */
    t_setup_long(t);
    c->s.gpr[RAX] = SEL_KDATA | 1;
    t_run(t, mov_ss_ax, 2, 3);
    assert_int_equal(t_handler_vector(t), X86_GP);
    assert_int_equal(frame(t, 0), SEL_KDATA);
    t_setup_long(t);
    put64(t, T_GDT + 0x30, 0x00cf12000000ffffull); /* data, not present */
    c->s.gpr[RAX] = 0x30;
    t_run(t, mov_ds_ax, 2, 3);
    assert_int_equal(t_handler_vector(t), X86_NP);
    assert_int_equal(frame(t, 0), 0x30);
    /* a good load sets the accessed bit */
    t_setup_long(t);
    c->s.gpr[RAX] = SEL_UDATA;
    put_bytes(t, T_CODE0 + 2, (uint8_t[]){0xf4}, 1);
    t_run(t, mov_ds_ax, 2, 3);
    assert_int_equal(c->s.seg[SEG_DS].sel, SEL_UDATA);
    assert_true(get64(t, T_GDT + 0x18) & (1ull << 40));
    /* 64-bit mode, CPL 0: a null SS is allowed */
    t_setup_long(t);
    c->s.gpr[RAX] = 0;
    put_bytes(t, T_CODE0 + 2, (uint8_t[]){0xf4}, 1);
    t_run(t, mov_ss_ax, 2, 3);
    assert_true(c->halted);
    assert_true(c->s.seg[SEG_SS].unusable);
    assert_int_equal(c->cpl, 0);
    /* MOV SS shadow: a pending interrupt waits one more instruction */
    t_setup_long(t);
    c->s.rflags |= X86_FLAG_IF;
    c->s.gpr[RAX] = SEL_KDATA;
    c->s.ev.interrupt_pending = 1;
    c->s.ev.interrupt_vector = 0x31;
    c->insn_rip = c->s.rip;
    /* the interrupt is taken before MOV SS if it is already pending: raise it afterwards */
    c->s.ev.interrupt_pending = 0;
    put_bytes(t, T_CODE0, mov_ss_ax, 2);
    put_bytes(t, T_CODE0 + 2, (uint8_t[]){0x90, 0x90}, 2);
    bt_cache_flush(c);
    bt_exec(c, 1);
    assert_int_equal(c->s.rip, T_CODE0 + 2);
    assert_true(c->s.ev.interrupt_shadow);
    c->s.ev.interrupt_pending = 1;
    bt_exec(c, 10);
    assert_int_equal(t_handler_vector(t), 0x31);
    assert_int_equal(frame(t, 0), T_CODE0 + 3); /* after the shadowed NOP */
    tenv_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(call_gate_to_ring0_and_back),
        cmocka_unit_test(far_jump_checks),
        cmocka_unit_test(lar_lsl_verr_verw),
        cmocka_unit_test(ltr_lldt_sgdt),
        cmocka_unit_test(segment_loads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
