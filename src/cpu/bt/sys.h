/* Helpers shared by the system parts of the software CPU (seg.c, event.c, system.c): descriptor
 * table access, stack access that does not change RSP until the caller commits, and small
 * queries.  Private to src/cpu/bt/.
 *
 * Trust: selectors and descriptors come from the guest; every table index is checked against the
 * table limit before the read, and reads go through the soft MMU as supervisor (IMPLICIT). */
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "cpu/bt/bt.h"

/* Descriptor fields */
#define DESC_TYPE(d)    ((unsigned)((d) >> 40) & 0xf)
#define DESC_S(d)       ((unsigned)((d) >> 44) & 1)
#define DESC_DPL(d)     ((unsigned)((d) >> 45) & 3)
#define DESC_P(d)       ((unsigned)((d) >> 47) & 1)
#define DESC_L(d)       ((unsigned)((d) >> 53) & 1)
#define DESC_DB(d)      ((unsigned)((d) >> 54) & 1)
#define DESC_IS_CODE(d) (DESC_S(d) && (DESC_TYPE(d) & 8))
#define DESC_IS_DATA(d) (DESC_S(d) && !(DESC_TYPE(d) & 8))

static inline bool bt_pmode(const struct bt_cpu *c)
{
    return (c->s.cr0 & X86_CR0_PE) && !(c->s.rflags & X86_FLAG_VM);
}
static inline bool bt_vm86(const struct bt_cpu *c)
{
    return (c->s.cr0 & X86_CR0_PE) && (c->s.rflags & X86_FLAG_VM);
}

/* Reads the 8-byte descriptor for `sel` from the GDT or LDT; false if the index is outside the
 * table (or the LDT is unusable), the caller then raises its fault with the selector. */
bool bt_desc_read(struct bt_cpu *c, uint16_t sel, uint64_t *d);
/* The upper 8 bytes of a 16-byte system descriptor (long mode), same checks. */
bool bt_desc_read_hi(struct bt_cpu *c, uint16_t sel, uint64_t *hi);
void bt_desc_set_accessed(struct bt_cpu *c, uint16_t sel, uint64_t d);
void bt_desc_to_seg(uint64_t d, uint16_t sel, struct x86_seg *s);
/* Marks segment registers whose DPL is below the new CPL unusable (returns to outer rings). */
void bt_nullify_data_segs(struct bt_cpu *c);

/* Stack access at RSP+off without changing RSP (size 2/4/8); address size from SS. */
uint64_t bt_stack_mask(const struct bt_cpu *c);
uint64_t bt_stack_read(struct bt_cpu *c, uint64_t off, unsigned size);

/* Loads CS from a checked descriptor and updates the mode. */
void bt_set_cs(struct bt_cpu *c, uint16_t sel, uint64_t d, unsigned cpl);

/* TSS stack pointer for privilege level `dpl` (RSP0-2, or ISTn when ist != 0 in long mode). */
void bt_tss_stack(struct bt_cpu *c, unsigned dpl, unsigned ist, uint32_t ext, uint16_t *ss,
                  uint64_t *sp);

/* Linear address of a stack access through segment *ss (which need not be loaded yet), with
 * limit (legacy) or canonical (64-bit) checks raising #SS(errc). */
uint64_t bt_stack_lin(struct bt_cpu *c, const struct x86_seg *ss, unsigned stack_bits,
                      uint64_t addr, unsigned size, uint32_t errc);
/* Pushes vals[0..n-1] (vals[0] first, so at the highest address) of `size` bytes each below sp on
 * the stack *ss; every slot is checked writable before any is written.  Returns the new SP. */
uint64_t bt_frame_push(struct bt_cpu *c, const struct x86_seg *ss, unsigned stack_bits, uint64_t sp,
                       const uint64_t *vals, unsigned n, unsigned size, int acc, uint32_t errc);
static inline uint64_t bt_bits_mask(unsigned bits)
{
    return bits == 64 ? ~0ull : bits == 32 ? 0xffffffffull : 0xffffull;
}
/* Logs an unsupported feature the guest used, once per kind. */
void bt_log_unsupported(const char *what);
