#!/usr/bin/env bash
# Builds and runs the libFuzzer harnesses in tests/fuzz/ for a bounded time.
#   tests/fuzz/run.sh [SECONDS]   (default 30 per harness)
# Needs clang and libclang-rt (scripts/setup.sh installs both).
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-30}
out=build-san/fuzz  # inside an ignored build directory
mkdir -p "$out/corpus-api"
flags=(-std=gnu11 -g -O1 -D_GNU_SOURCE -Isrc -fsanitize=fuzzer,address,undefined)
clang "${flags[@]}" -o "$out/fuzz_api" tests/fuzz/fuzz_api.c src/api/protocol.c \
  src/api/machine_stubs_weak.c src/cpu/vm.c src/util/log.c -lcjson -lpthread
printf '{"cmd":"status","id":1}' >"$out/corpus-api/status"
printf '{"cmd":"quit"}' >"$out/corpus-api/quit"
"$out/fuzz_api" -max_total_time="$secs" -max_len=5000 "$out/corpus-api"
