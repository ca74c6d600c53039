"""build/direct-costs (bench/direct_costs.c): a short measurement prints every event's mean, and
a bad ROUNDS argument is refused with the reason."""
import subprocess

from conftest import ROOT

TOOL = ROOT / "build" / "direct-costs"


def test_prints_every_event():
    p = subprocess.run([str(TOOL), "256"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    for event in ("plain system call", "trap (SIGSYS)", "reflect (futex)", "reflect (spinning)",
                  "fault (SIGSEGV+map)", "unmap (per page)"):
        line = next((l for l in p.stdout.splitlines() if l.strip().startswith(event)), None)
        assert line is not None, p.stdout
        assert float(line.split()[-1]) > 0, line


def test_bad_rounds_refused():
    for bad in (["5"], ["abc"], ["100x"], ["1000", "2"]):
        p = subprocess.run([str(TOOL), *bad], capture_output=True, text=True, timeout=30)
        assert p.returncode == 2, (bad, p.stdout, p.stderr)
        assert "ROUNDS must be one whole number from 64" in p.stderr, p.stderr
