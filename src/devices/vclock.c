/* Virtual time and the guest TSC (see vclock.h).  Trusts nothing from the guest: nothing here
 * takes guest input; conversions are total (no overflow, no division by zero). */
#include "devices/vclock.h"

#include <cpuid.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

#include "cpu/cpu.h"
#include "util/log.h"

#define NS_PER_S 1000000000ll

static pthread_once_t epoch_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t clock_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic int64_t offset_ns;             /* virtual = host + offset */
static _Atomic int64_t frozen_ns = INT64_MIN; /* != INT64_MIN while paused */

static int64_t host_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * NS_PER_S + ts.tv_nsec;
}

/* Virtual time starts near zero, as a freshly reset machine's TSC does. */
static void epoch_init(void)
{
    atomic_store(&offset_ns, -host_ns());
}

int64_t vclock_ns(void)
{
    pthread_once(&epoch_once, epoch_init);
    int64_t f = atomic_load_explicit(&frozen_ns, memory_order_acquire);
    if (f != INT64_MIN) return f;
    return host_ns() + atomic_load_explicit(&offset_ns, memory_order_relaxed);
}

void vclock_pause(void)
{
    pthread_once(&epoch_once, epoch_init);
    pthread_mutex_lock(&clock_lock);
    if (atomic_load(&frozen_ns) == INT64_MIN)
        atomic_store(&frozen_ns, host_ns() + atomic_load(&offset_ns));
    pthread_mutex_unlock(&clock_lock);
}

void vclock_resume(void)
{
    pthread_once(&epoch_once, epoch_init);
    pthread_mutex_lock(&clock_lock);
    int64_t f = atomic_load(&frozen_ns);
    if (f != INT64_MIN) {
        atomic_store(&offset_ns, f - host_ns());
        atomic_store(&frozen_ns, INT64_MIN);
    }
    pthread_mutex_unlock(&clock_lock);
}

bool vclock_paused(void)
{
    return atomic_load(&frozen_ns) != INT64_MIN;
}

void vclock_set_ns(int64_t ns)
{
    pthread_once(&epoch_once, epoch_init);
    if (ns == INT64_MIN) ns++; /* INT64_MIN is the "running" marker */
    pthread_mutex_lock(&clock_lock);
    if (atomic_load(&frozen_ns) != INT64_MIN)
        atomic_store(&frozen_ns, ns);
    else
        atomic_store(&offset_ns, ns - host_ns());
    pthread_mutex_unlock(&clock_lock);
}

uint64_t vclock_ns_to_ticks(uint64_t khz, int64_t ns)
{
    if (!khz) khz = VCLOCK_DEFAULT_TSC_KHZ;
    if (ns <= 0) return 0;
    unsigned __int128 t = (unsigned __int128)(uint64_t)ns * khz / 1000000u;
    return t > UINT64_MAX ? UINT64_MAX : (uint64_t)t;
}

int64_t vclock_ticks_to_ns(uint64_t khz, uint64_t ticks)
{
    if (!khz) khz = VCLOCK_DEFAULT_TSC_KHZ;
    unsigned __int128 n = ((unsigned __int128)ticks * 1000000u + khz - 1) / khz;
    return n > INT64_MAX ? INT64_MAX : (int64_t)n;
}

uint64_t vclock_tsc_at(const struct vm *vm, int64_t now_ns)
{
    return vclock_ns_to_ticks(vm ? vm->tsc_khz : 0, now_ns);
}

uint64_t vclock_tsc(const struct vm *vm)
{
    return vclock_tsc_at(vm, vclock_ns());
}

static uint64_t rdtsc_now(void)
{
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

/* The host clock now and the TSC at the same instant (the middle of the tightest of 8 tries). */
static int64_t tsc_bracket(uint64_t *tsc)
{
    uint64_t best = UINT64_MAX;
    int64_t t = 0;
    for (int i = 0; i < 8; i++) {
        uint64_t a = rdtsc_now();
        int64_t ns = host_ns();
        uint64_t b = rdtsc_now();
        if (b - a < best) best = b - a, t = ns, *tsc = a + (b - a) / 2;
    }
    return t;
}

/* Host TSC frequency: only meaningful when the TSC is invariant (CPUID 0x80000007 EDX[8]). */
static uint64_t host_tsc_khz(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(0x80000000, &a, &b, &c, &d) || a < 0x80000007) return 0;
    __cpuid(0x80000007, a, b, c, d);
    if (!(d & (1u << 8))) return 0;

    /* Leaf 0x15: TSC = crystal * EBX / EAX. */
    __cpuid(0, a, b, c, d);
    unsigned maxleaf = a;
    if (maxleaf >= 0x15) {
        __cpuid_count(0x15, 0, a, b, c, d);
        if (a && b && c) return (uint64_t)c * b / a / 1000;
    }
    /* A hypervisor's generic timing leaf (VMware/KVM convention): EAX = TSC kHz. */
    __cpuid(1, a, b, c, d);
    if (c & (1u << 31)) {
        __cpuid(0x40000000, a, b, c, d);
        if (a >= 0x40000010 && a < 0x40000100) {
            __cpuid(0x40000010, a, b, c, d);
            if (a) return a;
        }
    }
    /* Calibrate against CLOCK_MONOTONIC over ~3 ms and round to 1 MHz.  Each end is the
     * tightest of several (TSC, clock, TSC) brackets, so a preemption between reading the clock
     * and the TSC cannot skew the rate (it once did by a MHz on a loaded host, and a snapshot then
     * failed its CPU-model check against a VM calibrated on an idle one); with ends known to tens
     * of ns, 3 ms is ample for 1 MHz, and it is spent asleep (this delays the first guest
     * instruction: a 20 ms busy wait cost 20 ms of it). */
    uint64_t c0, c1;
    int64_t t0 = tsc_bracket(&c0), t1;
    struct timespec nap = {0, 3000000};
    while (nanosleep(&nap, &nap) != 0) {
    }
    t1 = tsc_bracket(&c1);
    uint64_t khz = (c1 - c0) * 1000000ull / (uint64_t)(t1 - t0);
    return (khz + 500) / 1000 * 1000;
}

uint64_t vclock_pick_tsc_khz(void)
{
    static _Atomic uint64_t cached;
    uint64_t k = atomic_load(&cached);
    if (k) return k;
    k = host_tsc_khz();
    if (k < 100000 || k > 10000000) { /* not invariant, or implausible: 100 MHz .. 10 GHz */
        log_debug("vclock: host TSC not invariant or unknown; guest TSC runs at %llu kHz",
                  (unsigned long long)VCLOCK_DEFAULT_TSC_KHZ);
        k = VCLOCK_DEFAULT_TSC_KHZ;
    } else
        log_debug("vclock: guest TSC runs at the host's rate, %llu kHz", (unsigned long long)k);
    atomic_store(&cached, k);
    return k;
}
