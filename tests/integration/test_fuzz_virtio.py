"""A short libFuzzer run of each virtio harness (tests/fuzz/run.sh SECONDS virtq vmmio): the
virtqueue walker with the request parsers, and the virtio-mmio register interface, under
ASan+UBSan from the seed corpus.  A crash, leak or broken invariant fails the test.
LOOKOUT_FUZZ_SECS sets the time per harness (default 10); `make fuzz` runs longer."""

import os
import shutil
import subprocess

import pytest

from conftest import ROOT


def test_virtio_fuzz_short():
    if not shutil.which("clang"):
        pytest.skip("clang is not installed (scripts/setup.sh installs it)")
    secs = os.environ.get("LOOKOUT_FUZZ_SECS", "10")
    p = subprocess.run(["bash", str(ROOT / "tests/fuzz/run.sh"), secs, "virtq", "vmmio"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    assert p.stderr.count("Done ") == 2, p.stderr[-3000:]
