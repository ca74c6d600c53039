/* Integration tests of the software CPU backend (cpu_backend_bt): reset state, state validation,
 * running to an exit-port stop, triple fault as an exit, an IOAPIC interrupt and a LAPIC timer
 * waking HLT, INIT-SIPI-SIPI starting an AP, and bt_emulate_one. */
#include <errno.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>

#include "bt_testenv.h"

#define PORT_STOP 0xf4

static void stop_wr(void *o, uint64_t off, const uint8_t *d, unsigned size)
{
    struct vm *vm = o;
    uint32_t v = 0;
    memcpy(&v, d, size);
    vm_request_stop(vm, VM_STOP_EXIT_PORT, (int)v);
}
static void stop_rd(void *o, uint64_t off, uint8_t *d, unsigned size)
{
    memset(d, 0, size);
}
static const struct bus_ops stop_ops = {stop_rd, stop_wr};

struct bk {
    struct tenv *t;
    struct vcpu *cpu[2];
};

static struct bk *bk_new(unsigned ncpus)
{
    struct bk *b = calloc(1, sizeof(*b));
    b->t = tenv_new(true);
    struct vm *vm = &b->t->vm;
    vm->ncpus = ncpus;
    assert_int_equal(bus_register(&vm->pio, PORT_STOP, 4, &stop_ops, vm, "stop"), 0);
    t_setup_long(b->t); /* builds memory and a template state in the bare bt_cpu */
    for (unsigned i = 0; i < ncpus; i++) {
        b->cpu[i] = calloc(1, sizeof(struct vcpu));
        b->cpu[i]->vm = vm;
        b->cpu[i]->id = i;
        assert_int_equal(cpu_backend_bt.vcpu_create(b->cpu[i]), 0);
        vm->vcpu[i] = b->cpu[i];
    }
    return b;
}

static void bk_free(struct bk *b)
{
    struct vm *vm = &b->t->vm;
    for (unsigned i = 0; i < vm->ncpus; i++) {
        vm->vcpu[i] = NULL;
        cpu_backend_bt.vcpu_destroy(b->cpu[i]);
        free(b->cpu[i]);
    }
    tenv_free(b->t);
    free(b);
}

/* Loads the template long-mode state (from t_setup_long) into vCPU 0 at `rip`. */
static void bk_long(struct bk *b, uint64_t rip)
{
    struct x86_state s = b->t->c->s;
    s.rip = rip;
    s.apic_base = 0xfee00000ull | (1u << 11) | (1u << 8);
    s.mp_state = MP_RUNNABLE;
    assert_int_equal(cpu_backend_bt.set_state(b->cpu[0], &s), 0);
}

static void *run_thread(void *arg)
{
    struct vcpu *cpu = arg;
    struct vcpu_exit ex;
    while (!vm_stopping(cpu->vm)) {
        cpu_backend_bt.vcpu_run(cpu, &ex);
        if (ex.reason == VCPU_EXIT_SHUTDOWN) {
            vm_request_stop(cpu->vm, VM_STOP_TRIPLE_FAULT, 0);
            break;
        }
    }
    return NULL;
}

static bool wait_stop(struct vm *vm, int ms)
{
    for (int k = 0; k < ms && !vm_stopping(vm); k++)
        usleep(1000);
    return vm_stopping(vm);
}

static void reset_state_and_validation(void **state)
{
    struct bk *b = bk_new(2);
    struct x86_state s;
    assert_int_equal(cpu_backend_bt.get_state(b->cpu[1], &s), 0);
    assert_int_equal(s.mp_state, MP_WAIT_FOR_SIPI);
    assert_int_equal(cpu_backend_bt.get_state(b->cpu[0], &s), 0);
    assert_int_equal(s.rip, 0xfff0);
    assert_int_equal(s.seg[SEG_CS].base, 0xffff0000);
    assert_int_equal(s.mp_state, MP_RUNNABLE);
    assert_true(s.apic_base & (1u << 8));
    struct x86_state bad = s;
    bad.cr4 |= X86_CR4_LA57;
    assert_int_equal(cpu_backend_bt.set_state(b->cpu[0], &bad), -EINVAL);
    bad = s;
    bad.efer = X86_EFER_LMA; /* LMA without LME/PG */
    assert_int_equal(cpu_backend_bt.set_state(b->cpu[0], &bad), -EINVAL);
    bad = s;
    bad.seg[SEG_FS].base = 0x0000800000000000ull;
    assert_int_equal(cpu_backend_bt.set_state(b->cpu[0], &bad), -EINVAL);
    /* the TSC survives a get/set round trip (monotonic, close) */
    s.tsc = 1000000000000ull;
    assert_int_equal(cpu_backend_bt.set_state(b->cpu[0], &s), 0);
    assert_int_equal(cpu_backend_bt.get_state(b->cpu[0], &s), 0);
    assert_true(s.tsc >= 1000000000000ull && s.tsc < 1000000000000ull + 1000000000ull);
    bk_free(b);
}

static void run_to_exit_port_and_triple_fault(void **state)
{
    struct bk *b = bk_new(1);
    struct vm *vm = &b->t->vm;
    /* mov eax, 42; out 0xf4, eax; jmp $ */
    put_bytes(b->t, T_CODE0, (uint8_t[]){0xb8, 42, 0, 0, 0, 0xe7, 0xf4, 0xeb, 0xfe}, 9);
    bk_long(b, T_CODE0);
    struct vcpu_exit ex;
    assert_int_equal(cpu_backend_bt.vcpu_run(b->cpu[0], &ex), 0);
    assert_int_equal(ex.reason, VCPU_EXIT_NONE);
    assert_int_equal(atomic_load(&vm->stop_reason), VM_STOP_EXIT_PORT);
    assert_int_equal(vm->exit_code, 42);

    /* an IDT with no entries: ud2 -> #GP -> #DF -> shutdown */
    atomic_store(&vm->stop_reason, VM_STOP_NONE);
    b->t->c->s.idtr.limit = 0;
    put_bytes(b->t, T_CODE0, (uint8_t[]){0x0f, 0x0b}, 2);
    bk_long(b, T_CODE0);
    assert_int_equal(cpu_backend_bt.vcpu_run(b->cpu[0], &ex), 0);
    assert_int_equal(ex.reason, VCPU_EXIT_SHUTDOWN);
    bk_free(b);
}

/* Maps the 2 MiB pages holding the IOAPIC and LAPIC (uncached identity). */
static void map_apics(struct tenv *t)
{
    const uint64_t pd = 0xc000;
    memset(gp(t, pd, 4096), 0, 4096);
    put64(t, T_PDPT + 3 * 8, pd | 3);
    put64(t, pd + 8 * 0x1f6, 0xfec00000ull | 0x9b);
    put64(t, pd + 8 * 0x1f7, 0xfee00000ull | 0x9b);
}

static size_t emit_mov_rbx(uint8_t *p, uint64_t v)
{
    p[0] = 0x48, p[1] = 0xbb;
    memcpy(p + 2, &v, 8);
    return 10;
}
static size_t emit_store(uint8_t *p, uint8_t disp8, uint32_t v) /* mov dword [rbx+disp8], v */
{
    p[0] = 0xc7, p[1] = 0x43, p[2] = disp8;
    memcpy(p + 3, &v, 4);
    return 7;
}

static void handler_stops(struct tenv *t, int vector)
{
    uint8_t h[] = {0xb8, (uint8_t)vector, 0, 0, 0, 0xe7, 0xf4, 0xf4};
    put_bytes(t, T_HAND + 16 * (uint64_t)vector, h, sizeof(h));
}

static void ioapic_interrupt_wakes_hlt(void **state)
{
    struct bk *b = bk_new(1);
    struct tenv *t = b->t;
    struct vm *vm = &t->vm;
    map_apics(t);
    handler_stops(t, 0x41);
    uint8_t code[128];
    size_t n = 0;
    n += emit_mov_rbx(code + n, 0xfee000f0);
    n += emit_store(code + n, 0, 0x1ff); /* SVR: enable */
    n += emit_mov_rbx(code + n, 0xfec00000);
    n += emit_store(code + n, 0, 0x18);    /* IOREGSEL: pin 4 low */
    n += emit_store(code + n, 0x10, 0x41); /* IOWIN: vector 0x41, edge, unmasked, dest 0 */
    code[n++] = 0xfb;                      /* sti */
    code[n++] = 0xf4;                      /* hlt */
    code[n++] = 0xeb, code[n++] = 0xfd;    /* jmp hlt */
    put_bytes(t, T_CODE0, code, n);
    bk_long(b, T_CODE0);
    pthread_t th;
    pthread_create(&th, NULL, run_thread, b->cpu[0]);
    usleep(50000);
    assert_false(vm_stopping(vm)); /* halted, nothing pending */
    assert_int_equal(cpu_backend_bt.irq_line(vm, 4, 1), 0);
    assert_int_equal(cpu_backend_bt.irq_line(vm, 4, 0), 0);
    bool stopped = wait_stop(vm, 2000);
    if (!stopped) vm_request_stop(vm, VM_STOP_QUIT, 0);
    pthread_join(th, NULL);
    assert_true(stopped);
    assert_int_equal(atomic_load(&vm->stop_reason), VM_STOP_EXIT_PORT);
    assert_int_equal(vm->exit_code, 0x41);
    bk_free(b);
}

static void lapic_timer_wakes_hlt(void **state)
{
    struct bk *b = bk_new(1);
    struct tenv *t = b->t;
    struct vm *vm = &t->vm;
    map_apics(t);
    handler_stops(t, 0x42);
    uint8_t code[128];
    size_t n = 0;
    n += emit_mov_rbx(code + n, 0xfee000f0);
    n += emit_store(code + n, 0, 0x1ff); /* SVR */
    n += emit_mov_rbx(code + n, 0xfee00320);
    n += emit_store(code + n, 0, 0x42); /* LVT timer: one-shot, vector 0x42 */
    n += emit_mov_rbx(code + n, 0xfee003e0);
    n += emit_store(code + n, 0, 0xb); /* divide by 1 */
    n += emit_mov_rbx(code + n, 0xfee00380);
    n += emit_store(code + n, 0, 2000000); /* 2 ms */
    code[n++] = 0xfb;
    code[n++] = 0xf4;
    code[n++] = 0xeb, code[n++] = 0xfd;
    put_bytes(t, T_CODE0, code, n);
    bk_long(b, T_CODE0);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    pthread_t th;
    pthread_create(&th, NULL, run_thread, b->cpu[0]);
    bool stopped = wait_stop(vm, 2000);
    if (!stopped) vm_request_stop(vm, VM_STOP_QUIT, 0);
    pthread_join(th, NULL);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    assert_true(stopped);
    assert_int_equal(vm->exit_code, 0x42);
    double ms = (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6;
    assert_true(ms >= 2.0);
    bk_free(b);
}

static void init_sipi_starts_ap(void **state)
{
    struct bk *b = bk_new(2);
    struct tenv *t = b->t;
    struct vm *vm = &t->vm;
    map_apics(t);
    /* AP: real mode at 0x30000: mov al, 0x99; out 0xf4, al */
    put_bytes(t, 0x30000, (uint8_t[]){0xb0, 0x99, 0xe6, 0xf4, 0xeb, 0xfe}, 6);
    uint8_t code[128];
    size_t n = 0;
    n += emit_mov_rbx(code + n, 0xfee000f0);
    n += emit_store(code + n, 0, 0x1ff);
    n += emit_mov_rbx(code + n, 0xfee00300);
    n += emit_store(code + n, 0x10, 1u << 24); /* ICR high: APIC 1 */
    n += emit_store(code + n, 0, 0x4500);      /* INIT, assert */
    n += emit_store(code + n, 0, 0x4630);      /* SIPI, vector 0x30 */
    code[n++] = 0xf4;
    code[n++] = 0xeb, code[n++] = 0xfd;
    put_bytes(t, T_CODE0, code, n);
    bk_long(b, T_CODE0);
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&th[i], NULL, run_thread, b->cpu[i]);
    bool stopped = wait_stop(vm, 2000);
    if (!stopped) vm_request_stop(vm, VM_STOP_QUIT, 0);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    assert_true(stopped);
    assert_int_equal(vm->exit_code, 0x99);
    struct x86_state s;
    assert_int_equal(cpu_backend_bt.get_state(b->cpu[1], &s), 0);
    assert_int_equal(s.seg[SEG_CS].sel, 0x3000);
    bk_free(b);
}

static void emulate_one(void **state)
{
    /* The KVM fallback path: a VM not run by bt (no bt_vm), one instruction on a copy of state */
    struct tenv *t = tenv_new(false);
    t_setup_long(t);
    struct vcpu cpu = {.vm = &t->vm, .id = 0};
    t->vm.vcpu[0] = &cpu;
    struct x86_state s = t->c->s;
    s.rip = T_CODE0;
    s.gpr[RCX] = 0x1111;
    /* lock cmpxchg16b [rsp]: RDX:RAX compared with memory */
    put_bytes(t, T_CODE0, (uint8_t[]){0xf0, 0x48, 0x0f, 0xc7, 0x0c, 0x24}, 6);
    put64(t, s.gpr[RSP], 5);
    put64(t, s.gpr[RSP] + 8, 6);
    s.gpr[RAX] = 5, s.gpr[RDX] = 6, s.gpr[RBX] = 7, s.gpr[RCX] = 8;
    assert_int_equal(bt_emulate_one(&t->vm, 0, &s), 0);
    assert_int_equal(s.rip, T_CODE0 + 6);
    assert_int_equal(get64(t, t->c->s.gpr[RSP]), 7);
    assert_int_equal(get64(t, t->c->s.gpr[RSP] + 8), 8);
    assert_true(s.rflags & X86_FLAG_ZF);
    /* int3 is delivered to the guest's IDT */
    s.rip = T_CODE0;
    put_bytes(t, T_CODE0, (uint8_t[]){0xcc}, 1);
    assert_int_equal(bt_emulate_one(&t->vm, 0, &s), 0);
    assert_int_equal(s.rip, T_HAND + 16 * 3);
    /* XSAVE with CR4.OSXSAVE (kvm_pvm guests see the host's XSAVE): x87+SSE round trip */
    s.cr4 |= X86_CR4_OSXSAVE;
    s.xcr0 = 3;
    s.rip = T_CODE0;
    s.gpr[RAX] = 3, s.gpr[RDX] = 0, s.gpr[RBX] = 0x40000;
    memset(s.fx.xmm[0], 0xab, 16);
    put_bytes(t, T_CODE0, (uint8_t[]){0x48, 0x0f, 0xae, 0x23}, 4); /* xsave64 [rbx] */
    assert_int_equal(bt_emulate_one(&t->vm, 0, &s), 0);
    assert_int_equal(get64(t, 0x40000 + 512), 2); /* XSTATE_BV: x87 initial, SSE in use */
    assert_int_equal(get64(t, 0x40000 + 160), 0xababababababababull);
    memset(s.fx.xmm[0], 0, 16);
    s.rip = T_CODE0;
    put_bytes(t, T_CODE0, (uint8_t[]){0x48, 0x0f, 0xae, 0x2b}, 4); /* xrstor64 [rbx] */
    assert_int_equal(bt_emulate_one(&t->vm, 0, &s), 0);
    assert_int_equal(s.fx.xmm[0][5], 0xab);
    /* XSETBV: AVX without SSE is #GP; x87|SSE|AVX is accepted where the host has AVX */
    s.rip = T_CODE0;
    s.gpr[RAX] = 5, s.gpr[RCX] = 0;
    put_bytes(t, T_CODE0, (uint8_t[]){0x0f, 0x01, 0xd1}, 3);
    assert_int_equal(bt_emulate_one(&t->vm, 0, &s), 0);
    assert_int_equal(s.rip, T_HAND + 16 * X86_GP);
    tenv_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(reset_state_and_validation),
        cmocka_unit_test(run_to_exit_port_and_triple_fault),
        cmocka_unit_test(ioapic_interrupt_wakes_hlt),
        cmocka_unit_test(lapic_timer_wakes_hlt),
        cmocka_unit_test(init_sipi_starts_ap),
        cmocka_unit_test(emulate_one),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
