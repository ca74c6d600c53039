/* The VM's time base: virtual nanoseconds and the guest TSC.
 *
 * Virtual time is CLOCK_MONOTONIC plus a process-wide offset, starting near 0 when the process
 * first asks.  Pausing freezes it and resuming continues from the frozen value, so LAPIC/PIT
 * deadlines (which are all kept in virtual ns) neither jump nor fire in a burst after a pause; a
 * restore sets it to the snapshot's time.  One VM per process, so the offset is global.
 *
 * The guest TSC ticks at the fixed frequency vm->tsc_khz: vclock_tsc() = ns * tsc_khz / 10^6.
 * Per-vCPU TSC offsets (IA32_TSC writes, TSC_ADJUST) are the CPU's business: it adds its own.
 * Device models never read the clock themselves in their core logic: every time-dependent
 * function takes `now` (virtual ns), so unit tests drive time explicitly. */
#pragma once
#include <stdbool.h>
#include <stdint.h>

struct vm;

#define VCLOCK_DEFAULT_TSC_KHZ 2000000ull /* when the host TSC is not invariant */

/* Current virtual time in ns (thread-safe, lock-free). */
int64_t vclock_ns(void);
/* Freezes virtual time (idempotent) / lets it run again from where it stopped. */
void vclock_pause(void);
void vclock_resume(void);
bool vclock_paused(void);
/* Makes vclock_ns() return `ns` now (restore); keeps the paused/running state. */
void vclock_set_ns(int64_t ns);

/* The guest TSC frequency to use: the host's when its TSC is invariant (from CPUID leaf 0x15, a
 * hypervisor's timing leaf 0x40000010, or a short calibration rounded to 1 MHz), else
 * VCLOCK_DEFAULT_TSC_KHZ.  The result is cached; the board stores it in vm->tsc_khz. */
uint64_t vclock_pick_tsc_khz(void);

/* Conversions (128-bit intermediate, no overflow for any int64 time).  Negative ns give 0;
 * ticks_to_ns rounds up so a deadline computed from it is never early.  khz 0 is treated as
 * VCLOCK_DEFAULT_TSC_KHZ. */
uint64_t vclock_ns_to_ticks(uint64_t khz, int64_t ns);
int64_t vclock_ticks_to_ns(uint64_t khz, uint64_t ticks); /* saturates at INT64_MAX */

/* The VM's TSC at virtual time now / at the current time (no per-vCPU offset). */
uint64_t vclock_tsc_at(const struct vm *vm, int64_t now_ns);
uint64_t vclock_tsc(const struct vm *vm);
