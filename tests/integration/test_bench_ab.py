"""bench/ab: the statistics it reports (no guest booted: the pairs are made up)."""
import subprocess

from conftest import ROOT, load_script

AB = ROOT / "bench" / "ab"


def load_ab():
    return load_script(AB, "bench_ab")


def test_sign_test():
    ab = load_ab()
    assert ab.sign_test_p(0, 0) == 1.0
    assert ab.sign_test_p(3, 3) == 1.0
    # 6 of 6 one way: 2 * (1/64)
    assert abs(ab.sign_test_p(6, 0) - 2 / 64) < 1e-12
    assert abs(ab.sign_test_p(0, 6) - 2 / 64) < 1e-12
    # 5 of 6: 2 * (1 + 6) / 64
    assert abs(ab.sign_test_p(5, 1) - 14 / 64) < 1e-12


def test_summarize():
    ab = load_ab()
    pairs = {"xz": [(10.0, 9.0), (10.4, 9.5), (9.8, 10.1), (10.2, 9.6)],
             "ready": [(1.8, 1.8), (1.7, 1.9)]}
    s = {r["row"]: r for r in ab.summarize(pairs)}
    assert s["xz"]["rounds"] == 4
    assert s["xz"]["new_faster"] == 3 and s["xz"]["new_slower"] == 1
    assert abs(s["xz"]["old"] - 10.1) < 1e-9 and abs(s["xz"]["new"] - 9.55) < 1e-9
    assert abs(s["xz"]["ratio"] - 9.55 / 10.1) < 1e-9
    assert (s["xz"]["old_min"], s["xz"]["old_max"]) == (9.8, 10.4)
    assert abs(s["xz"]["p"] - 2 * 5 / 16) < 1e-12
    # a tie counts for neither side
    assert s["ready"]["new_faster"] == 0 and s["ready"]["new_slower"] == 1


def test_refuses_a_missing_binary(tmp_path):
    p = subprocess.run([str(AB), str(tmp_path / "nope"), str(tmp_path / "nope2")],
                       capture_output=True, text=True)
    assert p.returncode != 0
    assert "not an executable lookout binary" in p.stderr
