/* The VM and vCPU objects as the CPU backends see them, and the backend interface.
 *
 * A backend ("kvm", "bt") is an ops table.  Everything else — RAM, buses, devices, the CPUID
 * model, loaders and the exit loop in machine/ — is shared and never knows which backend runs.
 *
 * Exits: vcpu_run() returns when the vCPU needs the machine: port I/O or MMIO the backend did not
 * dispatch itself, HLT with nothing to wake it, a triple fault, an internal error, or a kick.
 * The software backend dispatches port I/O and MMIO inline through vm_pio()/vm_mmio() (an exit is
 * a function call); KVM returns them, and the exit loop calls the same two functions.  Both paths
 * reach the same device handlers. */
#pragma once
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bus/bus.h"
#include "mem/guest.h"
#include "x86/cpuid.h"
#include "x86/irqchip.h"
#include "x86/state.h"

#define VM_MAX_CPUS 64

struct vm;
struct vcpu;

enum vcpu_exit_reason {
    VCPU_EXIT_NONE,     /* kicked, or a time slice ended: the loop checks the VM state */
    VCPU_EXIT_IO,       /* port I/O, see exit.io */
    VCPU_EXIT_MMIO,     /* MMIO, see exit.mmio */
    VCPU_EXIT_HLT,      /* halted and the backend cannot wait for interrupts itself */
    VCPU_EXIT_SHUTDOWN, /* triple fault */
    VCPU_EXIT_INTERNAL, /* the backend could not continue; err_msg() says why */
    VCPU_EXIT_DEBUG,    /* single step / breakpoint requested by the VMM */
};

struct vcpu_exit {
    enum vcpu_exit_reason reason;
    struct {
        uint16_t port;
        uint8_t size; /* 1, 2, 4 */
        bool is_write;
        uint32_t count; /* > 1 for string I/O */
        uint8_t *data;  /* count * size bytes; filled by the loop for reads */
    } io;
    struct {
        uint64_t gpa;
        uint8_t *data; /* len bytes; filled by the loop for reads */
        uint8_t len;
        bool is_write;
    } mmio;
};

/* Software breakpoint / single-step requests for introspection and debugging. */
struct vcpu_debug {
    bool single_step;
    unsigned nbp;
    uint64_t bp[4]; /* linear addresses */
};

struct cpu_backend {
    const char *name;
    /* 0 if the backend can run on this host; otherwise -errno with err_set() explaining why and
     * what to do instead. */
    int (*probe)(void);
    int (*vm_create)(struct vm *vm); /* after vm->mem is mapped and vm->cpuid is built */
    void (*vm_destroy)(struct vm *vm);
    int (*vcpu_create)(struct vcpu *cpu);
    void (*vcpu_destroy)(struct vcpu *cpu);
    int (*vcpu_run)(struct vcpu *cpu, struct vcpu_exit *exit);
    /* Any thread: make vcpu_run() of `cpu` return VCPU_EXIT_NONE soon. */
    void (*vcpu_kick)(struct vcpu *cpu);
    int (*get_state)(struct vcpu *cpu, struct x86_state *s);
    int (*set_state)(struct vcpu *cpu, const struct x86_state *s);
    /* Level of a GSI at the IOAPIC (and the legacy PIC for GSI < 16). */
    int (*irq_line)(struct vm *vm, unsigned gsi, int level);
    /* ORs pages written since the last call into bitmap (bit n = RAM page n), then clears. */
    int (*dirty_log)(struct vm *vm, uint64_t *bitmap, size_t nwords);
    int (*get_lapic)(struct vcpu *cpu, struct lapic_state *s);
    int (*set_lapic)(struct vcpu *cpu, const struct lapic_state *s);
    int (*get_ioapic)(struct vm *vm, struct ioapic_state *s);
    int (*set_ioapic)(struct vm *vm, const struct ioapic_state *s);
    int (*get_pit)(struct vm *vm, struct pit_state *s);
    int (*set_pit)(struct vm *vm, const struct pit_state *s);
    int (*set_debug)(struct vcpu *cpu, const struct vcpu_debug *d);
};

extern const struct cpu_backend cpu_backend_kvm;
extern const struct cpu_backend cpu_backend_bt;

/* Why the VM stopped; cli/ maps each to a distinct exit status. */
enum vm_stop_reason {
    VM_STOP_NONE,
    VM_STOP_POWEROFF,      /* ACPI S5 or equivalent */
    VM_STOP_RESET,         /* i8042 / ACPI reset: lookout exits (no reboot loop) */
    VM_STOP_EXIT_PORT,     /* test exit port 0xf4: exit_code = v as written (cli exits (v << 1) | 1) */
    VM_STOP_TRIPLE_FAULT,
    VM_STOP_INTERNAL_ERROR, /* the backend could not run the guest */
    VM_STOP_VMM_ERROR,      /* lookout itself failed */
    VM_STOP_QUIT,           /* console escape or control socket quit */
    VM_STOP_CFI,            /* --cfi enforce: a return whose address was overwritten (bt) */
};

enum vm_run_state { VM_STATE_CREATED, VM_STATE_RUNNING, VM_STATE_PAUSED, VM_STATE_STOPPED };

struct vcpu {
    struct vm *vm;
    unsigned id; /* also the APIC ID */
    pthread_t thread;
    void *bk; /* backend private */
    _Atomic bool parked; /* acknowledged a pause */
};

/* Board-level hooks the machine installs: who handles I/O and stop requests. */
struct vm {
    uint64_t mem_size;
    unsigned ncpus;
    uint64_t tsc_khz;
    struct guest_mem mem;
    struct bus pio, mmio;
    struct cpuid_model cpuid;
    const struct cpu_backend *backend;
    void *bk; /* backend private */
    struct vcpu *vcpu[VM_MAX_CPUS];

    pthread_mutex_t lock;
    pthread_cond_t cond;
    _Atomic int state;       /* enum vm_run_state */
    _Atomic int stop_reason; /* enum vm_stop_reason, first one wins */
    int exit_code;
    _Atomic bool pause_requested;

    void *board; /* machine/ private */
};

/* Port I/O and MMIO on behalf of a vCPU: the single dispatch path for both backends. */
static inline void vm_pio(struct vm *vm, uint16_t port, uint8_t *data, unsigned size, bool write)
{
    bus_access(&vm->pio, port, data, size, write);
}
static inline void vm_mmio(struct vm *vm, uint64_t gpa, uint8_t *data, unsigned size, bool write)
{
    bus_access(&vm->mmio, gpa, data, size, write);
}
static inline int vm_irq_line(struct vm *vm, unsigned gsi, int level)
{
    return vm->backend->irq_line(vm, gsi, level);
}

/* Any thread: records why the VM stops (first reason wins) and kicks every vCPU. */
void vm_request_stop(struct vm *vm, enum vm_stop_reason why, int exit_code);
bool vm_stopping(const struct vm *vm);
/* An irq_line adapter for devices: ctx is the struct vm. */
void vm_irq_set(void *vm, unsigned gsi, int level);
