/* Field-by-field encodings of the neutral state structures (x86/state.h, x86/irqchip.h, the
 * legacy devices' get/set state structs, the CPUID table) into snapshot section payloads.
 * Decoders read through a bounds-checked snap_rd and end with snap_rd_done(), so a short or long
 * payload is refused with the section's name; value checks beyond the encoding (reserved bits,
 * impossible states) are the job of each part's set_state, which the restore runs on a backup
 * first-fail basis (see snapshot.c).  Section versions are defined here. */
#pragma once
#include "devices/acpi_pm.h"
#include "devices/i8042.h"
#include "devices/rtc.h"
#include "devices/uart16550.h"
#include "devices/virtio/mmio.h"
#include "snapshot/format.h"
#include "x86/cpuid.h"
#include "x86/irqchip.h"
#include "x86/state.h"

#define SNAP_V_CPU    2 /* 2: IA32_TSC_ADJUST */
#define SNAP_V_LAPIC  1
#define SNAP_V_IOAPIC 1
#define SNAP_V_PIT    1
#define SNAP_V_UART   1
#define SNAP_V_RTC    1
#define SNAP_V_I8042  1
#define SNAP_V_ACPIPM 1
#define SNAP_V_CPUID  1
#define SNAP_V_CLOCK  1
#define SNAP_V_MEMORY 1
#define SNAP_V_VIRTIO 1 /* every virtioN-KIND section */

void snap_enc_cpu(struct snap_writer *w, const struct x86_state *s);
int snap_dec_cpu(const struct snap_section *sec, struct x86_state *s);
void snap_enc_lapic(struct snap_writer *w, const struct lapic_state *s);
int snap_dec_lapic(const struct snap_section *sec, struct lapic_state *s);
void snap_enc_ioapic(struct snap_writer *w, const struct ioapic_state *s);
int snap_dec_ioapic(const struct snap_section *sec, struct ioapic_state *s);
/* PIT load times are stored relative to the snapshot's VM clock (now_ns), so they can be rebased
 * onto whichever clock the restoring backend keeps. */
void snap_enc_pit(struct snap_writer *w, const struct pit_state *s, int64_t now_ns);
int snap_dec_pit(const struct snap_section *sec, struct pit_state *s, int64_t now_ns);
void snap_enc_uart(struct snap_writer *w, const struct uart_state *s);
int snap_dec_uart(const struct snap_section *sec, struct uart_state *s);
void snap_enc_rtc(struct snap_writer *w, const struct rtc_state *s);
int snap_dec_rtc(const struct snap_section *sec, struct rtc_state *s);
void snap_enc_i8042(struct snap_writer *w, const struct i8042_state *s);
int snap_dec_i8042(const struct snap_section *sec, struct i8042_state *s);
void snap_enc_acpi_pm(struct snap_writer *w, const struct acpi_pm_state *s);
int snap_dec_acpi_pm(const struct snap_section *sec, struct acpi_pm_state *s);
/* A virtio device (virtioN-blk/-net/-rng).  The decoder checks the layout and everything that
 * needs no device: known device id, queue count <= VIRTIO_MAX_QUEUES, config <= 64 bytes,
 * buckets <= 2, printable NUL-free path and interface name, the part of the device id and
 * nothing after it; the device's check then validates the values against itself and RAM. */
void snap_enc_virtio(struct snap_writer *w, const struct virtio_dev_state *s);
int snap_dec_virtio(const struct snap_section *sec, struct virtio_dev_state *s);
void snap_enc_cpuid(struct snap_writer *w, const struct cpuid_model *m);
int snap_dec_cpuid(const struct snap_section *sec, struct cpuid_model *m);
/* Whether a VM whose backend builds `target` for the model can present the snapshot's table
 * `snap` instead: every leaf of snap exists in target, feature-flag registers are subsets of the
 * target's, the physical address width is not larger, everything else is equal.  0, or -EINVAL
 * with err_set() naming the leaf, register and bits. */
int snap_cpuid_presentable(const struct cpuid_model *target, const struct cpuid_model *snap);
/* SHA-256 of the CPUID table's canonical encoding (name excluded): what the header carries. */
void snap_cpuid_hash(const struct cpuid_model *m, uint8_t out[SHA256_LEN]);
