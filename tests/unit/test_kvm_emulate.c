/* The KVM backend's hand-off to the software CPU when KVM's emulator gives up (kvm_pvm: INT3 in
 * ring 0): the state goes out through get_state, one instruction is executed by bt_emulate_one,
 * the state comes back through set_state and KVM resumes.
 *
 * Until the software CPU is linked in, a weak stand-in plays it: it "executes" INT3 by entering
 * the #BP handler (without the stack frame, enough to prove the round trip).  The real software
 * CPU delivers #BP through the IDT; the handler reports vector 3 on the exit port either way.
 * Skips on hosts whose KVM runs INT3 itself (hardware virtualization) or has no /dev/kvm. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "cpu/cpu.h"
#include "cpu/kvm/kvm.h"
#include "util/log.h"

#define CODE    0x100000ull
#define HANDLER 0x100100ull
#define IDT     0x3000ull
#define GDT     0x2000ull

static int stub_calls;

__attribute__((weak)) int bt_emulate_one(struct vm *vm, unsigned cpu_index, struct x86_state *s)
{
    uint8_t b;
    stub_calls++;
    if (guest_read(&vm->mem, s->rip, &b, 1) || b != 0xcc)
        return err_set(ENOTSUP, "stand-in software CPU only knows INT3");
    s->gpr[RBX] = s->rip + 1; /* where the real CPU would return to */
    s->rip = HANDLER;
    return 0;
}

static void test_int3_handed_to_software_cpu(void **st)
{
    if (cpu_backend_kvm.probe() != 0) {
        print_message("skipping: %s\n", err_msg());
        skip();
    }
    if (!kvm_is_software_virt()) skip();

    static struct vm vm;
    static struct vcpu cpu;
    memset(&vm, 0, sizeof(vm));
    memset(&cpu, 0, sizeof(cpu));
    assert_int_equal(guest_mem_init(&vm.mem, 16ull << 20), 0);
    bus_init(&vm.pio, "pio");
    bus_init(&vm.mmio, "mmio");
    vm.ncpus = 1;
    vm.backend = &cpu_backend_kvm;
    pthread_mutex_init(&vm.lock, NULL);
    pthread_cond_init(&vm.cond, NULL);
    struct cpuid_entry sup[256];
    unsigned n;
    assert_int_equal(kvm_query_host(sup, 256, &n, &vm.tsc_khz), 0);
    assert_int_equal(cpuid_model_build(&vm.cpuid, "lookout-v1", sup, n, 1, vm.tsc_khz), 0);
    if (cpu_backend_kvm.vm_create(&vm)) fail_msg("%s", err_msg());
    cpu.vm = &vm;
    vm.vcpu[0] = &cpu;
    if (cpu_backend_kvm.vcpu_create(&cpu)) fail_msg("%s", err_msg());

    /* identity-mapped 16 MiB, an IDT with a #BP gate, INT3 then a spin */
    uint64_t e;
    e = 0xa003;
    guest_write(&vm.mem, 0x9000, &e, 8);
    e = 0xb003;
    guest_write(&vm.mem, 0xa000, &e, 8);
    for (uint64_t i = 0; i < 8; i++) {
        e = (i << 21) | 0x83;
        guest_write(&vm.mem, 0xb000 + 8 * i, &e, 8);
    }
    uint64_t gate[2] = {(HANDLER & 0xffff) | (8ull << 16) | (0x8eull << 40) |
                            ((HANDLER >> 16) & 0xffff) << 48,
                        HANDLER >> 32};
    guest_write(&vm.mem, IDT + 16 * 3, gate, sizeof(gate));
    /* a GDT for the real software CPU, which loads CS from it when it delivers #BP */
    uint64_t gdt[3] = {0, 0x00af9a000000ffffull, 0x00cf92000000ffffull};
    guest_write(&vm.mem, GDT, gdt, sizeof(gdt));
    static const uint8_t code[] = {0xcc, 0xeb, 0xfe};
    static const uint8_t handler[] = {0xb0, 0x03, 0xe6, 0xf4, 0xeb, 0xfe}; /* out 0xf4, 3 */
    guest_write(&vm.mem, CODE, code, sizeof(code));
    guest_write(&vm.mem, HANDLER, handler, sizeof(handler));

    struct x86_state s;
    x86_state_reset(&s, 0, true);
    s.seg[SEG_CS] = (struct x86_seg){
        .limit = 0xffffffff, .sel = 8, .type = 0xb, .s = 1, .present = 1, .l = 1, .g = 1};
    struct x86_seg data = {
        .limit = 0xffffffff, .sel = 0x10, .type = 3, .s = 1, .present = 1, .db = 1, .g = 1};
    s.seg[SEG_DS] = s.seg[SEG_ES] = s.seg[SEG_SS] = s.seg[SEG_FS] = s.seg[SEG_GS] = data;
    s.seg[SEG_TR] = (struct x86_seg){.sel = 0x18, .limit = 0x67, .type = 0xb, .present = 1};
    s.idtr = (struct x86_dtable){IDT, 16 * 32 - 1};
    s.gdtr = (struct x86_dtable){GDT, sizeof(gdt) - 1};
    s.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_NE | X86_CR0_PG;
    s.cr3 = 0x9000;
    s.cr4 = X86_CR4_PAE;
    s.efer = X86_EFER_LME | X86_EFER_LMA;
    s.rip = CODE;
    s.gpr[RSP] = 0x80000;
    if (cpu_backend_kvm.set_state(&cpu, &s)) fail_msg("%s", err_msg());

    struct vcpu_exit ex;
    int i;
    for (i = 0; i < 100; i++) {
        if (cpu_backend_kvm.vcpu_run(&cpu, &ex)) fail_msg("%s", err_msg());
        if (ex.reason != VCPU_EXIT_NONE) break;
    }
    if (ex.reason == VCPU_EXIT_INTERNAL) fail_msg("internal: %s", err_msg());
    assert_int_equal(ex.reason, VCPU_EXIT_IO);
    assert_int_equal(ex.io.port, 0xf4);
    assert_int_equal(ex.io.data[0], 3);
    print_message("INT3 handled by the %s software CPU\n", stub_calls ? "stand-in" : "real");

    cpu_backend_kvm.vcpu_destroy(&cpu);
    cpu_backend_kvm.vm_destroy(&vm);
    guest_mem_destroy(&vm.mem);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_int3_handed_to_software_cpu),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
