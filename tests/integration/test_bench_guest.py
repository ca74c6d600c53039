"""bench/guest: a smoke run (--quick, one run, lookout --cpu bt and native) and its result check.

The smoke run boots the Debian guest once under the software CPU (~30 s of CPU) and checks that
every workload was timed and that the guest computed what the host did.  The comparison itself is
checked without booting: a made-up differing result must be reported."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT, load_script

BENCH = ROOT / "bench" / "guest"


def load_bench():
    return load_script(BENCH, "bench_guest")


def _run(work):
    return {"error": None, "work": {k: {"s": 0.1, "guest_s": 0.1, "result": v}
                                    for k, v in work.items()}}


def test_compare_results_reports_mismatch():
    bench = load_bench()
    same = {"make": "aa", "loop": "42", "xz": "cc:10:roundtrip-ok"}
    results = {"native": {"runs": [_run(same)]},
               "lookout --cpu bt": {"runs": [_run(same), _run(dict(same, loop="43"))]},
               "qemu tcg microvm": {"skipped": "not selected", "runs": []}}
    problems = bench.compare_results(results, ["loop", "xz"])
    assert len(problems) == 1 and problems[0].startswith("loop:"), problems
    assert "lookout --cpu bt #2" in problems[0], problems
    results["native"]["runs"].append(_run(dict(same, xz="cc:10:roundtrip-BAD")))
    problems = bench.compare_results(results, ["loop", "xz"])
    assert any("did not give the file back" in p for p in problems), problems
    # failed runs are not compared
    results = {"native": {"runs": [_run(same)]},
               "lookout --cpu bt": {"runs": [dict(_run(dict(same, loop="1")), error="boom")]}}
    assert bench.compare_results(results, ["loop", "xz"]) == []


def test_rounds_rotate():
    bench = load_bench()
    assert bench.rounds_order(["a", "b", "c"], 4) == [
        (0, "a"), (0, "b"), (0, "c"), (1, "b"), (1, "c"), (1, "a"),
        (2, "c"), (2, "a"), (2, "b"), (3, "a"), (3, "b"), (3, "c")]
    assert bench.rounds_order(["a"], 2) == [(0, "a"), (1, "a")]
    assert bench.rounds_order([], 3) == []


@pytest.mark.bt
@pytest.mark.guest
def test_quick_run_bt_and_native(lookout_bin, debian_guest, tmp_path):
    out = tmp_path / "bench.json"
    p = subprocess.run([sys.executable, str(BENCH), "--quick", "--runs", "1", "--only",
                        "bt,native", "--lookout", str(lookout_bin), "--json", str(out)],
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "results identical across lookout --cpu bt, native" in p.stdout, p.stdout
    data = json.loads(out.read_text())
    assert data["mismatches"] == [] and data["mib"] == 1, data
    for name in ("lookout --cpu bt", "native"):
        runs = data["systems"][name]["runs"]
        assert len(runs) == 1 and not runs[0]["error"], runs
        for w in ("loop", "sha256", "gzip", "xz"):
            assert runs[0]["work"][w]["s"] > 0, runs[0]
    assert data["systems"]["lookout --cpu bt"]["runs"][0]["ready_s"] > 0
    assert "boot to ready (s)" in p.stdout and "bt/native" in p.stdout, p.stdout
