/* TEMPORARY weak stand-ins for machine_pause/machine_resume/machine_state_name (machine/machine.h)
 * so the control socket links before the board (machine/machine.c) is merged.  The board's strong
 * definitions replace these at link time (objects are linked directly, not from an archive), so
 * this file is harmless afterwards; delete it once machine.c defines all three.
 * Trusts: nothing; they only report that the operation is unavailable. */
#include <errno.h>
#include <stdatomic.h>

#include "machine/machine.h"
#include "util/log.h"

__attribute__((weak)) int machine_pause(struct vm *vm)
{
    return err_set(ENOSYS, "pausing is not available in this build (no machine board linked)");
}

__attribute__((weak)) int machine_resume(struct vm *vm)
{
    return err_set(ENOSYS, "resuming is not available in this build (no machine board linked)");
}

__attribute__((weak)) const char *machine_state_name(const struct vm *vm)
{
    switch (atomic_load(&vm->state)) {
    case VM_STATE_CREATED: return "created";
    case VM_STATE_RUNNING: return "running";
    case VM_STATE_PAUSED: return "paused";
    default: return "stopped";
    }
}

/* The snapshot commands, for builds that link the protocol without src/snapshot/ (the fuzz
 * harness). */
struct snap_save_opts;
struct snap_restore_opts;
struct snap_stats;
__attribute__((weak)) int machine_snapshot(struct vm *vm, const char *path, bool stop,
                                           const struct snap_save_opts *o, struct snap_stats *st)
{
    return err_set(ENOSYS, "snapshots are not available in this build");
}

__attribute__((weak)) int machine_rollback(struct vm *vm, const char *path,
                                           const struct snap_restore_opts *o, struct snap_stats *st)
{
    return err_set(ENOSYS, "snapshots are not available in this build");
}
