/* Instructions outside the lookout-v1 model that a guest of kvm_pvm uses because it sees the
 * host's CPUID (POPCNT, CLAC/STAC for SMAP), executed only in the KVM fallback.
 *
 * Under --cpu bt the guest sees lookout-v1, which has none of these, so they raise #UD as the
 * model's hardware would (c->host_isa is false).  bt_emulate_one() sets c->host_isa: there the
 * guest's CPUID is (close to) the host's, and a kernel that patched itself for POPCNT or SMAP hands
 * these to the software CPU whenever kvm_pvm's emulator gives up on them (seen with the Debian
 * kernel: POPCNT, then CLAC at the start of the #UD entry, a #UD loop without this file).  Each
 * one also requires the host to have the feature.
 *
 * Trust: operands come from the guest and go through the normal operand helpers. */
#include <cpuid.h>

#include "cpu/bt/intops.h"

static bool host_has(unsigned leaf, unsigned sub, int reg, unsigned bit)
{
    unsigned r[4];
    if (__get_cpuid_max(leaf & 0x80000000u, NULL) < leaf) return false;
    __cpuid_count(leaf, sub, r[0], r[1], r[2], r[3]);
    return (r[reg] >> bit) & 1;
}

static void need(struct bt_cpu *c, const struct bt_insn *i, bool host_feature)
{
    if (!c->host_isa || !host_feature || (i->pfx & BT_PFX_LOCK)) bt_ud(c);
}

/* POPCNT (CPUID.1:ECX[23]): ZF = (source == 0), the other arithmetic flags cleared. */
static void op_popcnt(struct bt_cpu *c, const struct bt_insn *i)
{
    need(c, i, host_has(1, 0, 2, 23));
    unsigned size = i->op[0].size;
    uint64_t src = bt_op_read(c, i, 1) & bt_size_mask(size);
    bt_op_write(c, i, 0, (uint64_t)__builtin_popcountll(src));
    bt_commit_flags(c, src ? 0 : X86_FLAG_ZF);
}
BT_HANDLER(POPCNT, op_popcnt);

/* CLAC/STAC (SMAP, CPUID.(7,0):EBX[20]): ring 0 only. */
static void clac_stac(struct bt_cpu *c, const struct bt_insn *i, bool set)
{
    need(c, i, host_has(7, 0, 1, 20));
    if (c->cpl != 0) bt_ud(c);
    if (set)
        c->s.rflags |= X86_FLAG_AC;
    else
        c->s.rflags &= ~(uint64_t)X86_FLAG_AC;
}
static void op_clac(struct bt_cpu *c, const struct bt_insn *i)
{
    clac_stac(c, i, false);
}
static void op_stac(struct bt_cpu *c, const struct bt_insn *i)
{
    clac_stac(c, i, true);
}
BT_HANDLER(CLAC, op_clac);
BT_HANDLER(STAC, op_stac);
