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
for t in "${bins[@]}"; do
  [ -x "$t" ] && [ -f "$t" ] || continue
  case $t in *.d | *.o) continue ;; esac
  echo "-- $t"
  if timeout "${LOOKOUT_UNIT_TIMEOUT:-300}" "$t"; then
    unit_pass=$((unit_pass + 1))
  else
    rc=$?
    echo "!! $t failed (exit $rc)"
    unit_fail=$((unit_fail + 1))
    failed+=("$t")
  fi
done
# The software CPU's tests ran above with the translator (LOOKOUT_BT_JIT unset = on); run them
# again on the interpreter alone, the reference the translator is compared with.
for t in "${bins[@]}"; do
  case $t in *test_bt_*) ;; *) continue ;; esac
  [ -x "$t" ] && [ -f "$t" ] || continue
  echo "-- LOOKOUT_BT_JIT=0 $t"
  if LOOKOUT_BT_JIT=0 timeout "${LOOKOUT_UNIT_TIMEOUT:-300}" "$t"; then
    unit_pass=$((unit_pass + 1))
  else
    rc=$?
    echo "!! LOOKOUT_BT_JIT=0 $t failed (exit $rc)"
    unit_fail=$((unit_fail + 1))
    failed+=("LOOKOUT_BT_JIT=0:$t")
  fi
done
# The translator's tests once more as it translates for any x86-64 host (no BMI2, the guest's
# flags loaded before shifts and IMUL: LOOKOUT_BT_GENERIC, see bt_jit.pure_flags in jit.c).
for t in build-san/tests/test_bt_jit; do
  [ -x "$t" ] || continue
  echo "-- LOOKOUT_BT_GENERIC=1 $t"
  if LOOKOUT_BT_GENERIC=1 timeout "${LOOKOUT_UNIT_TIMEOUT:-300}" "$t"; then
    unit_pass=$((unit_pass + 1))
  else
    rc=$?
    echo "!! LOOKOUT_BT_GENERIC=1 $t failed (exit $rc)"
    unit_fail=$((unit_fail + 1))
    failed+=("LOOKOUT_BT_GENERIC=1:$t")
  fi
done
echo "== unit tests: $unit_pass binaries passed, $unit_fail failed${failed[*]:+: ${failed[*]}}"

echo "== integration tests (pytest, tests/integration/)"
eval "extra=(${PYTEST_ARGS:-})"
"$PY" -m pytest tests/integration -v ${extra[@]+"${extra[@]}"}
prc=$?
if [ "$prc" -eq 5 ]; then
  echo "pytest collected no tests: tests/integration is empty or the selection matched nothing" >&2
fi

[ "$unit_fail" -eq 0 ] && [ "$prc" -eq 0 ]
