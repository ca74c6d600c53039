/* Neutral state of the interrupt controllers and timer.  The KVM backend reports its in-kernel
 * LAPIC/IOAPIC/PIT in these forms (which follow KVM's own layouts), and the software backend's
 * user-space devices keep theirs in exactly these forms, so snapshots move between backends. */
#pragma once
#include <stdint.h>

/* The 1 KiB xAPIC register page, as KVM_GET_LAPIC returns it (register at offset R is
 * regs[R/4], e.g. ID at 0x20, TPR at 0x80, ISR at 0x100.., TMR 0x180.., IRR 0x200.., LVT
 * timer 0x320, initial count 0x380, current count 0x390, divide config 0x3e0). */
struct lapic_state {
    uint32_t regs[256];
};

#define IOAPIC_NUM_PINS 24
struct ioapic_state {
    uint64_t base_address;
    uint32_t ioregsel;
    uint32_t id;
    uint32_t irr;
    uint64_t redirtbl[IOAPIC_NUM_PINS];
};

/* i8254 PIT, following struct kvm_pit_channel_state. */
struct pit_channel_state {
    uint32_t count; /* can be 65536 */
    uint16_t latched_count;
    uint8_t count_latched, status_latched, status, read_state, write_state, write_latch;
    uint8_t rw_mode, mode, bcd, gate;
    int64_t count_load_time; /* ns, in the VM's clock */
};
struct pit_state {
    struct pit_channel_state channels[3];
    uint32_t flags;
};
