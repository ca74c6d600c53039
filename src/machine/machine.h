/* The board: builds a VM from a configuration, runs its vCPUs and reports why it stopped.
 * The only floor that knows which devices exist and how they are wired. */
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "cpu/cpu.h"
#include "devices/virtio/config.h"

struct machine_config {
    const char *kernel, *initrd, *cmdline;
    uint64_t mem_size;
    unsigned ncpus;
    const char *cpu;       /* "kvm", "bt" or "auto" */
    const char *cpu_model; /* "lookout-v1" (default) or "host" */
    const char *api_path;  /* control socket, or NULL */
    bool command_mode;     /* `lookout run -- CMD`: COM2 carries the command's output */
    bool verbose;          /* command mode: copy COM1 (kernel messages) to stderr as well */
    int console_in_fd, console_out_fd; /* -1 for none */
    /* Restore from a snapshot instead of booting (kernel ignored): mem_size, ncpus, cpu_model
     * and tsc_khz must be the snapshot's (cli/ takes them from its header). */
    const char *restore_path;
    bool restore_eager; /* read the memory file rather than mapping it */
    bool restore_force; /* accept disk images modified since the snapshot */
    bool restore_lazy;  /* load memory on demand through userfaultfd */
    uint64_t tsc_khz;   /* 0: the host's; restore: the snapshot's, so CPUID leaves match */
    /* restore: the snapshot's CPUID table, presented instead of the model if this backend can
     * (refused with a clear message otherwise) */
    const struct cpuid_model *restore_cpuid;
    const struct vdev_list *vdevs; /* virtio devices (NULL: none) */
};

struct vm *machine_create(const struct machine_config *cfg); /* NULL + err_msg() on failure */
/* Runs until the VM stops; returns the stop reason (exit code in vm->exit_code). */
enum vm_stop_reason machine_run(struct vm *vm);
void machine_destroy(struct vm *vm);

/* Control, from any thread (control socket, console).  Pause waits until every vCPU is parked
 * outside guest code, so state read afterwards is consistent. */
int machine_pause(struct vm *vm);
int machine_resume(struct vm *vm);
const char *machine_state_name(const struct vm *vm); /* "running", "paused", "stopped" */
/* The backend `--cpu auto` (or "kvm"/"bt") resolves to on this host, or NULL + err_msg(). */
const struct cpu_backend *machine_pick_backend(const char *cpu);
/* COM1 (idx 0) / COM2 (idx 1) of the board, NULL if absent (snapshots). */
struct uart16550 *machine_uart(struct vm *vm, unsigned idx);
