/* TEMPORARY: weak placeholders for every function of bt.h, so each part of the software CPU
 * (core, mmu/seg/event/system/backend, fpu/sse) links and can be tested while the others are
 * being written.  A strong definition in the owning file replaces each one.  This file is deleted
 * once all parts have landed; nothing here is a behaviour. */
#include <errno.h>
#include <stdlib.h>

#include "cpu/bt/bt.h"
#include "util/log.h"

#define WEAK __attribute__((weak))

static _Noreturn void missing(const char *what)
{
    log_err("software CPU: %s is not implemented yet", what);
    abort();
}

WEAK int bt_core_init(struct bt_cpu *c) { return 0; }
WEAK void bt_core_destroy(struct bt_cpu *c) {}
WEAK uint64_t bt_exec(struct bt_cpu *c, uint64_t budget) { missing("bt_exec"); }
WEAK void bt_decode_at(struct bt_cpu *c, uint64_t lin, struct bt_insn *out) { missing("bt_decode_at"); }
WEAK int bt_decode_bytes(const uint8_t *b, size_t n, unsigned bits, struct bt_insn *out) { return -ENOSYS; }
WEAK void bt_cache_invalidate_page(struct bt_cpu *c, uint64_t gpa_page) {}
WEAK void bt_cache_flush(struct bt_cpu *c) {}
WEAK uint64_t bt_op_ea(struct bt_cpu *c, const struct bt_insn *i, int n) { missing("bt_op_ea"); }
WEAK uint64_t bt_op_lin(struct bt_cpu *c, const struct bt_insn *i, int n, unsigned size, int acc) { missing("bt_op_lin"); }
WEAK uint64_t bt_op_read(struct bt_cpu *c, const struct bt_insn *i, int n) { missing("bt_op_read"); }
WEAK void bt_op_write(struct bt_cpu *c, const struct bt_insn *i, int n, uint64_t v) { missing("bt_op_write"); }
WEAK uint64_t bt_gpr_read(const struct bt_cpu *c, unsigned reg, unsigned size) { missing("bt_gpr_read"); }
WEAK void bt_gpr_write(struct bt_cpu *c, unsigned reg, unsigned size, uint64_t v) { missing("bt_gpr_write"); }
WEAK void bt_push(struct bt_cpu *c, unsigned size, uint64_t v) { missing("bt_push"); }
WEAK uint64_t bt_pop(struct bt_cpu *c, unsigned size) { missing("bt_pop"); }

WEAK int bt_mmu_init(struct bt_cpu *c) { return 0; }
WEAK void bt_mmu_destroy(struct bt_cpu *c) {}
WEAK void bt_tlb_flush(struct bt_cpu *c, bool g) {}
WEAK void bt_tlb_flush_page(struct bt_cpu *c, uint64_t lin) {}
WEAK uint64_t bt_seg_linear(struct bt_cpu *c, int seg, uint64_t off, unsigned size, int acc) { missing("bt_seg_linear"); }
WEAK uint64_t bt_read(struct bt_cpu *c, uint64_t lin, unsigned size, int acc) { missing("bt_read"); }
WEAK void bt_write(struct bt_cpu *c, uint64_t lin, unsigned size, uint64_t v, int acc) { missing("bt_write"); }
WEAK void bt_read_buf(struct bt_cpu *c, uint64_t lin, void *buf, size_t n, int acc) { missing("bt_read_buf"); }
WEAK void bt_write_buf(struct bt_cpu *c, uint64_t lin, const void *buf, size_t n, int acc) { missing("bt_write_buf"); }
WEAK void bt_probe_write(struct bt_cpu *c, uint64_t lin, unsigned size, int acc) { missing("bt_probe_write"); }
WEAK void *bt_host_ptr(struct bt_cpu *c, uint64_t lin, unsigned size, int acc) { missing("bt_host_ptr"); }
WEAK size_t bt_fetch(struct bt_cpu *c, uint64_t lin, uint8_t *buf, size_t max, uint64_t *gpa) { missing("bt_fetch"); }
WEAK void bt_watch_code_page(struct bt_cpu *c, uint64_t gpa_page) {}
WEAK uint64_t bt_phys_read(struct bt_cpu *c, uint64_t gpa, unsigned size) { missing("bt_phys_read"); }
WEAK void bt_phys_write(struct bt_cpu *c, uint64_t gpa, unsigned size, uint64_t v) { missing("bt_phys_write"); }

WEAK _Noreturn void bt_raise(struct bt_cpu *c, int vector, uint32_t errcode) { missing("bt_raise"); }
WEAK _Noreturn void bt_raise_pf(struct bt_cpu *c, uint64_t lin, uint32_t errcode) { missing("bt_raise_pf"); }
WEAK void bt_deliver(struct bt_cpu *c, enum bt_event_kind kind, int vector, uint32_t errcode) { missing("bt_deliver"); }
WEAK bool bt_check_interrupts(struct bt_cpu *c) { return false; }

WEAK void bt_update_mode(struct bt_cpu *c) { missing("bt_update_mode"); }
WEAK void bt_load_seg(struct bt_cpu *c, int seg, uint16_t sel) { missing("bt_load_seg"); }
WEAK void bt_far_jump(struct bt_cpu *c, uint16_t sel, uint64_t off, bool is_call, unsigned opsize) { missing("bt_far_jump"); }
WEAK void bt_far_return(struct bt_cpu *c, unsigned opsize, uint16_t pop_extra) { missing("bt_far_return"); }

WEAK void bt_write_cr(struct bt_cpu *c, int n, uint64_t v) { missing("bt_write_cr"); }
WEAK uint64_t bt_rdmsr(struct bt_cpu *c, uint32_t msr) { missing("bt_rdmsr"); }
WEAK void bt_wrmsr(struct bt_cpu *c, uint32_t msr, uint64_t v) { missing("bt_wrmsr"); }
WEAK uint64_t bt_rdtsc(struct bt_cpu *c) { missing("bt_rdtsc"); }
WEAK void bt_write_rflags(struct bt_cpu *c, uint64_t v, unsigned size) { missing("bt_write_rflags"); }

WEAK void bt_fpu_reset(struct bt_cpu *c) {}
WEAK void bt_fpu_check(struct bt_cpu *c) { missing("bt_fpu_check"); }
WEAK void bt_sse_check(struct bt_cpu *c) { missing("bt_sse_check"); }
WEAK int bt_emulate_one(struct vm *vm, unsigned cpu_index, struct x86_state *s) { return -ENOSYS; }
