#!/usr/bin/env bash
# Runs lookout's whole test suite: every cmocka unit-test binary under build-san/tests/ (built
# with ASan+UBSan by `make unit`), then the pytest integration tests in tests/integration/.
# `make test` builds everything and calls this.  Exits non-zero if anything failed; pytest's
# summary line is the last line printed.
#   PYTEST_ARGS='-m "not guest"'  extra pytest arguments (e.g. a marker selection), word-split
#   LOOKOUT_UNIT_TIMEOUT=S        seconds one unit-test binary may take (default 300)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The Debian python3 has pytest (python3-pytest from scripts/setup.sh); a pyenv or venv python3
# first on PATH may not.
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3

unit_pass=0 unit_fail=0 failed=()
shopt -s nullglob
bins=(build-san/tests/test_*)
shopt -u nullglob
echo "== unit tests (${#bins[@]} binaries, build-san/tests/)"
# run_unit BINARY [VAR=VALUE]: one binary (with that environment variable), counted
run_unit() {
  local t=$1 env=${2:-} rc
  echo "-- ${env:+$env }$t"
  if env ${env:+"$env"} timeout "${LOOKOUT_UNIT_TIMEOUT:-300}" "$t"; then
    unit_pass=$((unit_pass + 1))
  else
    rc=$?
    echo "!! ${env:+$env }$t failed (exit $rc)"
    unit_fail=$((unit_fail + 1))
    failed+=("${env:+$env:}$t")
  fi
}
for t in "${bins[@]}"; do
  [ -x "$t" ] && [ -f "$t" ] || continue
  case $t in *.d | *.o) continue ;; esac
  run_unit "$t"
done
# The software CPU's tests ran above with the translator (LOOKOUT_BT_JIT unset = on); run them
# again on the interpreter alone, the reference the translator is compared with.
for t in "${bins[@]}"; do
  case $t in *test_bt_*) ;; *) continue ;; esac
  [ -x "$t" ] && [ -f "$t" ] || continue
  run_unit "$t" LOOKOUT_BT_JIT=0
done
# The translator's tests once more as it translates for any x86-64 host (no BMI2, the guest's
# flags loaded before shifts and IMUL: LOOKOUT_BT_GENERIC, see bt_jit.pure_flags in jit.c).
[ -x build-san/tests/test_bt_jit ] && run_unit build-san/tests/test_bt_jit LOOKOUT_BT_GENERIC=1
# And with the host's flags read by LAHF + SETO, the default on AMD hosts only (capture_flags in
# jit.c; the default and the LOOKOUT_BT_GENERIC run above use PUSHFQ on Intel hosts).
[ -x build-san/tests/test_bt_jit ] && run_unit build-san/tests/test_bt_jit LOOKOUT_BT_FLAGS_READ=lahf
echo "== unit tests: $unit_pass binaries passed, $unit_fail failed${failed[*]:+: ${failed[*]}}"

echo "== integration tests (pytest, tests/integration/)"
eval "extra=(${PYTEST_ARGS:-})"
"$PY" -m pytest tests/integration -v ${extra[@]+"${extra[@]}"}
prc=$?
if [ "$prc" -eq 5 ]; then
  echo "pytest collected no tests: tests/integration is empty or the selection matched nothing" >&2
fi

[ "$unit_fail" -eq 0 ] && [ "$prc" -eq 0 ]
