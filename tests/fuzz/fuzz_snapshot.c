/* libFuzzer harness for the snapshot state parser and the section decoders (src/snapshot/).
 * Input: a whole state file.  Invariants: no crash, no out-of-bounds read (ASan), and a file the
 * parser accepts has sections that lie inside the input.  Because the SHA-256 trailer would stop
 * almost every mutated input at the checksum, the harness re-seals the input with a correct
 * checksum when its first byte is odd, so the fuzzer reaches the header and section parsing. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "snapshot/codec.h"
#include "snapshot/format.h"
#include "util/log.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct snap_file f;
    if (size > SNAP_FILE_MAX) return 0;
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf) return 0;
    memcpy(buf, data, size);
    if (size > SHA256_LEN && (data[0] & 1)) {
        memcpy(buf, SNAP_MAGIC, size - SHA256_LEN < 8 ? size - SHA256_LEN : 8);
        sha256(buf, size - SHA256_LEN, buf + size - SHA256_LEN);
    }
    if (snap_parse(buf, size, &f) == 0) {
        for (unsigned i = 0; i < f.nsec; i++) {
            const struct snap_section *s = &f.sec[i];
            if (s->data < buf || s->data + s->len > buf + size) __builtin_trap();
            struct x86_state st;
            struct lapic_state l;
            struct ioapic_state io;
            struct pit_state pit;
            struct uart_state u;
            struct rtc_state rtc;
            struct i8042_state kb;
            struct acpi_pm_state pm;
            static struct cpuid_model m, t;
            static struct virtio_dev_state vs;
            /* every decoder on every section: each must refuse or accept without overreading */
            (void)snap_dec_cpu(s, &st);
            (void)snap_dec_lapic(s, &l);
            (void)snap_dec_ioapic(s, &io);
            (void)snap_dec_pit(s, &pit, 12345);
            (void)snap_dec_uart(s, &u);
            (void)snap_dec_rtc(s, &rtc);
            (void)snap_dec_i8042(s, &kb);
            (void)snap_dec_acpi_pm(s, &pm);
            if (snap_dec_virtio(s, &vs) == 0) {
                /* what decodes must re-encode to the same bytes (no field silently dropped) */
                struct snap_writer w = {0};
                snap_enc_virtio(&w, &vs);
                if (!w.err && (w.len != s->len || memcmp(w.buf, s->data, s->len))) __builtin_trap();
                snap_writer_free(&w);
            }
            if (snap_dec_cpuid(s, &m) == 0) {
                if (!t.n) cpuid_model_build(&t, "lookout-v1", NULL, 0, 1, 2000000);
                (void)snap_cpuid_presentable(&t, &m);
            }
        }
    }
    free(buf);
    return 0;
}
