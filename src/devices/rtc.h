/* MC146818 real-time clock and CMOS memory at ports 0x70 (index, bit 7 = NMI disable) and 0x71.
 *
 * The time registers are computed from the host's clock (UTC) at each read, plus an offset the
 * guest changes by setting the time (register B SET bit, or writing a time register directly),
 * rendered in BCD or binary and 12- or 24-hour mode as register B asks.  Register A's UIP bit is
 * set during the last 244 us of each second, as the chip does before an update, so Linux's
 * mc146818_get_time() sees what it expects; the time read is always consistent anyway.  Register D
 * reads 0x80 (VRT: battery good).  The century is at 0x32.  The other CMOS bytes are plain memory.
 * Register C latches the periodic (rate from register A), update-ended and alarm events; IRQ 8
 * (GSI_RTC) is asserted while a latched event is enabled in register B and released when the
 * guest reads C.  Events are evaluated at each register C read and, only while some RTC interrupt
 * is enabled, by a timer thread started on first use that sleeps until the next event. */
#pragma once
#include <stdint.h>

struct vm;

int rtc_attach(struct vm *vm);
void rtc_detach(struct vm *vm);

/* The guest-visible state, for snapshots and migration.  The clock is stored as an offset from
 * the host's UTC clock, so a restored guest's RTC keeps telling real time (as a battery-backed
 * chip would after a power-off), plus what the guest set relative to it. */
struct rtc_state {
    uint8_t cmos[128]; /* time registers: the frozen copy while register B's SET bit is on */
    uint8_t index, c_flags, nmi_disabled;
    int64_t offset_s;
};
/* -ENODEV with err_set() if the VM has no RTC; set refuses impossible states with -EINVAL. */
int rtc_get_state(struct vm *vm, struct rtc_state *s);
int rtc_set_state(struct vm *vm, const struct rtc_state *s);

/* The host clock the RTC reads (nanoseconds since the Unix epoch, UTC).  Defaults to
 * CLOCK_REALTIME; unit tests replace it. */
extern int64_t (*rtc_host_clock_ns)(void);
