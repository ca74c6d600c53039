#!/usr/bin/env bash
# Builds and runs the libFuzzer harnesses in tests/fuzz/ for a bounded time.
#   tests/fuzz/run.sh [SECONDS [HARNESS...]]   (default 30 s per harness; all harnesses, or the
#   named ones: api, pio, snap, virtq, vmmio)
# Needs clang and libclang-rt (scripts/setup.sh installs both).
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-30}
only=("${@:2}")
want() { [ ${#only[@]} -eq 0 ] || printf '%s\n' "${only[@]}" | grep -qx "$1"; }
out=build-san/fuzz  # inside an ignored build directory
flags=(-std=gnu11 -g -O1 -D_GNU_SOURCE -Isrc -Werror -fsanitize=fuzzer,address,undefined)
if want api; then
mkdir -p "$out/corpus-api"
clang "${flags[@]}" -o "$out/fuzz_api" tests/fuzz/fuzz_api.c src/api/protocol.c \
  src/api/machine_stubs_weak.c src/cpu/vm.c src/util/log.c -lcjson -lpthread
printf '{"cmd":"status","id":1}' >"$out/corpus-api/status"
printf '{"cmd":"quit"}' >"$out/corpus-api/quit"
"$out/fuzz_api" -max_total_time="$secs" -max_len=5000 "$out/corpus-api"
fi

if want pio; then

mkdir -p "$out/corpus-pio"
clang "${flags[@]}" -o "$out/fuzz_legacy_pio" tests/fuzz/fuzz_legacy_pio.c \
  src/devices/uart16550.c src/devices/rtc.c src/devices/i8042.c src/devices/exitport.c \
  src/devices/acpi_pm.c src/bus/bus.c src/cpu/vm.c src/util/log.c -lpthread
# a seed: Linux's 8250 probe-ish sequence (IER/LCR/FCR/MCR writes, IIR/LSR reads)
printf '\x03\x01\x0f\x01\x02\x01\x03\x03\x83\x01\x04\x03\x07\x02\x09\x04\x0b\x00\x02\x00\x05\xe3abcd\x00\x00' \
  >"$out/corpus-pio/probe"
LOOKOUT_LOG=error "$out/fuzz_legacy_pio" -max_total_time="$secs" -max_len=4096 "$out/corpus-pio"
fi

if want snap; then
  # the snapshot state parser and section decoders; seed: a minimal valid header
  mkdir -p "$out/corpus-snap"
  clang "${flags[@]}" -o "$out/fuzz_snapshot" tests/fuzz/fuzz_snapshot.c src/snapshot/format.c \
    src/snapshot/hash.c src/snapshot/codec.c src/x86/cpuid.c src/util/log.c -lsodium -lxxhash \
    -lpthread
python3 - "$out/corpus-snap/min" <<'PY'
import hashlib, struct, sys
h = b"LOOKSNAP" + struct.pack("<IIQII", 1, 146, 64 << 20, 1, 0) + b"lookout-v1".ljust(32, b"\0")
h += bytes(32) + b"bt".ljust(16, b"\0") + struct.pack("<Q", 2000000) + bytes(16)
h += struct.pack("<IIH", 0, 1, 0)
h += b"acpi_pm".ljust(24, b"\0") + struct.pack("<IIQ", 1, 0, 1) + b"\x80"
open(sys.argv[1], "wb").write(h + hashlib.sha256(h).digest())
PY
python3 tests/fuzz/snapshot_seeds.py "$out/corpus-snap"
  LOOKOUT_LOG=error "$out/fuzz_snapshot" -max_total_time="$secs" -max_len=65536 "$out/corpus-snap"
fi

# virtio: the split-virtqueue walker with the blk/rng/net parsers, and the MMIO register interface
vsrc=(src/devices/virtio/virtq.c src/devices/virtio/mmio.c src/devices/virtio/blk.c
  src/devices/virtio/rng.c src/devices/virtio/net.c src/mem/guest.c src/util/log.c)
mkdir -p "$out/corpus-virtq" "$out/corpus-vmmio"
if want virtq || want vmmio; then
  clang "${flags[@]}" -o "$out/fuzz_virtq" tests/fuzz/fuzz_virtq.c "${vsrc[@]}" -lslirp -lpthread
  clang "${flags[@]}" -o "$out/fuzz_virtio_mmio" tests/fuzz/fuzz_virtio_mmio.c "${vsrc[@]}" \
    -lslirp -lpthread
  python3 tests/fuzz/virtio_seeds.py "$out/corpus-virtq" "$out/corpus-vmmio"
fi
if want virtq; then
  LOOKOUT_LOG=error "$out/fuzz_virtq" -max_total_time="$secs" -max_len=8192 "$out/corpus-virtq"
fi
if want vmmio; then
  LOOKOUT_LOG=error "$out/fuzz_virtio_mmio" -max_total_time="$secs" -max_len=8192 \
    "$out/corpus-vmmio"
fi
