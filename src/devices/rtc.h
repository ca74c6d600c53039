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

/* The host clock the RTC reads (nanoseconds since the Unix epoch, UTC).  Defaults to
 * CLOCK_REALTIME; unit tests replace it. */
extern int64_t (*rtc_host_clock_ns)(void);
