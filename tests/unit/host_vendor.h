/* Where an FXSAVE/XSAVE image from the host may differ from the software CPU's for a reason of
 * the host's vendor, not of the software CPU.  The software CPU behaves as Intel documents; the
 * differential tests compare with whatever host they run on, and on an AMD host step around two
 * documented AMD behaviours (AMD64 APM vol. 2 11.4.4 and vol. 5 FXSAVE; seen on an AMD EPYC
 * host, Zen 4 with AVX-512):
 *  - the x87 error pointers: AMD processors save FOP, FIP and FDP only while an unmasked x87
 *    exception is pending (FSW.ES = 1), zeros otherwise, and FXRSTOR/XRSTOR leave them alone
 *    likewise, where Intel's always save and restore them;
 *  - MXCSR_MASK bit 17, AMD's misaligned-exception mask (MXCSR.MM): the software CPU does not
 *    implement that mode, so its MXCSR_MASK is FFFFh where such a host reports 2FFFFh.
 * On an Intel host nothing is stepped around. */
#ifndef LOOKOUT_TESTS_HOST_VENDOR_H
#define LOOKOUT_TESTS_HOST_VENDOR_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

static inline bool host_is_amd(void)
{
    return __builtin_cpu_is("amd"); /* as the translator tells vendors apart (jit.c) */
}

/* On an AMD host, the legacy-region bytes that may differ for the reasons above (FOP, FIP and
 * FDP at 6-23; MXCSR_MASK at 28-31) are copied from the host's image into the software CPU's,
 * so the comparison that follows covers everything else. */
static inline void fx_vendor_align(uint8_t *soft, const uint8_t *host)
{
    if (!host_is_amd()) return;
    memcpy(soft + 6, host + 6, 18);
    memcpy(soft + 28, host + 28, 4);
}

#endif
