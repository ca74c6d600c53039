/* Per-VM and per-vCPU private state of the software CPU backend, shared by mmu.c (write-watch,
 * cross-vCPU invalidation), event.c (INIT/SIPI, LAPIC), system.c and backend.c.
 *
 * Trust: nothing here comes from the guest directly; guest-physical page numbers are range-checked
 * against the watch bitmap's size before use. */
#pragma once
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "cpu/bt/bt.h"
#include "devices/lapic.h"

struct ioapic;
struct pit;

struct bt_vm {
    struct vm *vm;
    /* code-page write-watch: bit n = guest-physical page n holds decoded code */
    _Atomic uint64_t *watch;
    uint64_t watch_pages;
    struct bt_cpu *cpu[VM_MAX_CPUS];
    struct lapic_bus bus; /* routes IPIs and IOAPIC messages to the vCPUs' LAPICs */
    struct ioapic *ioapic;
    struct pit *pit;
};

/* The VM's bt state when the VM is run by the bt backend, else NULL (bt_emulate_one under KVM). */
struct bt_vm *bt_vm_of(const struct vm *vm);
/* Wakes vCPU `cpu` if it sleeps in HLT (the LAPIC calls it when something becomes pending; a
 * running vCPU sees new interrupts by itself between instructions). */
void bt_vcpu_wake(struct vcpu *cpu);
/* Allocates / frees the watch bitmap for all of the VM's guest-physical space. */
int bt_watch_init(struct bt_vm *bv);
void bt_watch_destroy(struct bt_vm *bv);
/* Dirty logging has just been switched on (guest_mem.dirty_enabled set): no vCPU's translated
 * stores may skip the log any more (clears every write fast tag; any thread). */
void bt_mmu_dirty_started(struct bt_vm *bv);
/* guest_mem write hook (ctx = struct bt_vm): writes by devices and loaders invalidate code. */
void bt_watch_external_write(void *ctx, gpa_t gpa, uint64_t len);
