/* Saving and restoring a whole VM: the state file (format.h) plus the guest memory file PATH.mem,
 * and the per-device section registry that devices outside the board (virtio, ...) join.
 *
 * Restore is two-phase: every section is parsed and validated, the configuration compared with
 * the VM's and the memory file's header checked before anything in the VM changes.  The apply
 * phase then sets vCPUs and devices; if one of them still refuses its state, the state saved just
 * before is put back, and memory is switched only after everything else succeeded.  Nothing is
 * half-restored.  See docs/snapshot-format.md.
 * Trusts: nothing in the files; the VM object and its backend. */
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "cpu/cpu.h"
#include "snapshot/format.h"

struct snap_stats {
    uint64_t state_bytes; /* size of the state file */
    uint64_t mem_bytes;   /* bytes of the memory file (allocated for raw, compressed for zstd) */
    uint64_t mem_pages;   /* non-zero pages saved / restored */
    double ms;            /* wall time of the save or restore (excluding pause/resume) */
    bool mapped;          /* restore: memory mapped copy-on-write rather than read */
};

struct snap_save_opts {
    bool zstd; /* compress memory (zstd) instead of the raw mappable layout */
    /* incremental: only pages written since this snapshot (the VM's last snapshot or restore,
     * tracked with the backend's dirty log); restoring needs the parent files too */
    const char *parent;
    int level; /* zstd level, 0 = default (3) */
};

struct snap_restore_opts {
    bool eager;  /* read memory instead of mapping it (raw layout) */
    bool verify; /* mapped restore: check the memory digest too (always done when reading) */
    bool force;  /* accept disk images modified since the snapshot (see docs/snapshot-format.md) */
    bool lazy;   /* raw full snapshots: pages loaded on demand through userfaultfd (+ prefetch) */
};

/* The VM must be paused (or not started).  Writes PATH.tmp and PATH.mem.tmp, syncs, then renames
 * both into place, so a snapshot already at PATH stays intact until the new one is complete. */
int snapshot_save(struct vm *vm, const char *path, const struct snap_save_opts *o,
                  struct snap_stats *st);
#define SNAP_CHAIN_MAX 64 /* parents an incremental snapshot may have */

/* Loads PATH into a paused (or not yet started) VM created with the snapshot's configuration. */
int snapshot_restore(struct vm *vm, const char *path, const struct snap_restore_opts *o,
                     struct snap_stats *st);
/* Before the VM's memory is freed: stops a lazy restore's loader thread (if any). */
void snapshot_release(struct vm *vm);
/* Reads and verifies PATH's state file and returns its header and CPUID table (for
 * `run --restore`: the new VM is built with them). */
int snapshot_peek(const char *path, struct snap_header *h, struct cpuid_model *cpuid);

/* pause -> save -> resume (unless stop) / pause -> restore -> resume; for the control socket. */
int machine_snapshot(struct vm *vm, const char *path, bool stop, const struct snap_save_opts *o,
                     struct snap_stats *st);
int machine_rollback(struct vm *vm, const char *path, const struct snap_restore_opts *o,
                     struct snap_stats *st);

/* ---- device section registry -------------------------------------------------------------
 * A device that is not one of the board's built-in parts registers one section per instance
 * when it attaches and unregisters before it detaches.  Its name must be unique in the VM (e.g.
 * "virtio-blk0"); the name is also added to the header's device list, so a snapshot only
 * restores into a VM with the same devices.  check() decodes and validates a payload without side
 * effects (phase one); load() applies it (phase two) and should not fail after check() passed. */
struct snap_device_ops {
    const char *name;
    uint32_t version; /* of the payload layout; check() gets the file's and refuses unknown ones */
    uint32_t flags;   /* SNAP_SEC_OPTIONAL: an older lookout may restore without this section */
    int (*save)(void *opaque, struct snap_writer *w);
    int (*check)(void *opaque, const struct snap_section *sec);
    int (*load)(void *opaque, const struct snap_section *sec);
    /* Optional.  on=true before save (and before a restore replaces the device): finish the
     * requests in flight and start no new ones, so no back-end thread writes guest memory or the
     * device's state meanwhile; on=false afterwards (also after a failed save or restore). */
    void (*quiesce)(void *opaque, bool on);
};
/* Inside check(): whether the restore was forced (snap_restore_opts.force).  Restores of one
 * process run one at a time (the VM is paused), so this is the running restore's flag. */
bool snap_restore_forced(void);
#define SNAP_MAX_DEVICES 32
int snap_register_device(struct vm *vm, const struct snap_device_ops *ops, void *opaque);
void snap_unregister_device(struct vm *vm, void *opaque);
