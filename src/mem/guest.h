/* Guest RAM: the one place where a guest-physical address becomes a host pointer.
 *
 * Guest-physical addresses come from the guest and are never trusted.  Every access from device
 * code, loaders and the software CPU goes through guest_ptr()/guest_read()/guest_write(), which
 * check the whole range [gpa, gpa+len) lies inside one RAM slot (with overflow checks) and return
 * NULL / -EFAULT otherwise.  Nobody else does pointer arithmetic on guest RAM.
 *
 * Layout: RAM below the 32-bit MMIO hole (slot 0, gpa 0 .. low_size) and the rest above 4 GiB
 * (slot 1, gpa 4 GiB .. 4 GiB + high_size), both backed by one anonymous host mapping. */
#pragma once
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef uint64_t gpa_t;

#define GUEST_PAGE_SIZE   4096ull
#define GUEST_PAGE_SHIFT  12
#define GUEST_MMIO_HOLE   0xc0000000ull /* RAM below 3 GiB; 3-4 GiB is devices, LAPIC, IOAPIC */
#define GUEST_HIGH_BASE   0x100000000ull
#define GUEST_MEM_MIN     (16ull << 20)
#define GUEST_MEM_MAX     (64ull << 30)

struct guest_slot {
    gpa_t gpa;
    uint64_t size;
    uint8_t *hva;
};

struct guest_mem {
    uint8_t *base;   /* host mapping of all RAM */
    uint64_t size;   /* total RAM bytes */
    struct guest_slot slot[2];
    unsigned nslots;
    /* Dirty-page log, one bit per page of `size` (indexed by RAM offset, not gpa), set by writers
     * that bypass the CPU backend's own tracking (device DMA, the software CPU). */
    _Atomic uint64_t *dirty;
    bool dirty_enabled;
    /* Told of every write that bypasses the CPU backend (device DMA, loaders, restore): the
     * software CPU drops decoded code of those pages.  Set once before the vCPUs start. */
    void (*write_hook)(void *ctx, gpa_t gpa, uint64_t len);
    void *write_hook_ctx;
};

/* Maps `size` bytes (a multiple of 4 KiB within GUEST_MEM_MIN..MAX) of zeroed RAM. */
int guest_mem_init(struct guest_mem *m, uint64_t size);
void guest_mem_destroy(struct guest_mem *m);

/* Host pointer for [gpa, gpa+len) if the range is wholly RAM, else NULL.  len 0 is rejected. */
void *guest_ptr(const struct guest_mem *m, gpa_t gpa, uint64_t len);
/* Copies to/from guest RAM; -EFAULT (with err_set) if any byte is outside RAM. */
int guest_read(const struct guest_mem *m, gpa_t gpa, void *buf, uint64_t len);
int guest_write(struct guest_mem *m, gpa_t gpa, const void *buf, uint64_t len);
/* Writes that went through guest_ptr() must report what they changed: dirty log and the
 * write hook (decoded-code invalidation).  guest_write() does this itself. */
void guest_mark_dirty(struct guest_mem *m, gpa_t gpa, uint64_t len);
/* Dirty log only, for a CPU backend's own writes: it tracks its decoded code itself, so the write
 * hook (meant for writes behind the CPU's back) would only repeat that work on the hot path. */
void guest_log_dirty(struct guest_mem *m, gpa_t gpa, uint64_t len);
/* RAM offset (index into base) of a gpa, or -1 if not RAM. */
int64_t guest_ram_offset(const struct guest_mem *m, gpa_t gpa);
bool guest_is_ram(const struct guest_mem *m, gpa_t gpa);

/* Dirty log: enable allocates the bitmap; collect ORs the bits into out (nwords = pages/64
 * rounded up) and clears them. */
int guest_dirty_enable(struct guest_mem *m);
void guest_dirty_collect(struct guest_mem *m, uint64_t *out, size_t nwords);
