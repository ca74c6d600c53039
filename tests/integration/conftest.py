"""Fixtures for lookout's integration tests: they drive the real binary as a user would.

What they trust: the binaries under build/ and build-san/ (built by `make`), the Multiboot test
kernels under build/guests/ (built by `make guests`), and guest/build.sh for the Debian guest.
Nothing here assumes a backend works: each test states which one it needs through a marker.

Markers (registered in pytest.ini):
  kvm    needs /dev/kvm (any KVM, kvm_pvm included); skipped with the reason when absent
  bt     runs on the software CPU (--cpu bt); select or deselect with -m
  guest  boots the Debian guest (slow: minutes under the software CPU)
  api    uses the control socket
  root   sets up host networking (a network namespace with a TAP device); skipped unless root

Environment:
  LOOKOUT_BIN=PATH          the binary for the slow (Debian guest) tests; default build/lookout
  LOOKOUT_TEST_SAN=0        do not run the fast tests against the sanitizer build as well
  LOOKOUT_GUEST_TIMEOUT=S   seconds one Debian guest boot may take (default 600); after one
                            boot timed out, the other guest tests fail at once (CI time budget)
"""

import base64
import importlib.machinery
import importlib.util
import os
import pathlib
import re
import select
import shutil
import signal
import subprocess
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BUILD = ROOT / "build" / "lookout"
BUILD_SAN = ROOT / "build-san" / "lookout"
GUESTS = ROOT / "build" / "guests"
GUEST_BUILD = ROOT / "guest" / "build.sh"
READY_PREFIX = "lookout-guest: ready"

# Exit statuses the CLI documents for `lookout run` (see README.md); tests compare with these.
EXIT_POWEROFF = 0


def guest_timeout():
    return float(os.environ.get("LOOKOUT_GUEST_TIMEOUT", "600"))


# --------------------------------------------------------------------------- host facts
def kvm_usable():
    """(True, "") when /dev/kvm can be opened read-write, else (False, why)."""
    if not os.path.exists("/dev/kvm"):
        return False, "/dev/kvm does not exist (no KVM on this host)"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is not accessible to this user (add it to the kvm group)"
    return True, ""


def kvm_is_pvm():
    """kvm_pvm is KVM without VMX/SVM: small test kernels run, a stock Linux crawls."""
    return os.path.isdir("/sys/module/kvm_pvm")


def hardware_kvm():
    """(True, "") when /dev/kvm is backed by VMX or SVM, else (False, why)."""
    ok, why = kvm_usable()
    if not ok:
        return False, why
    if kvm_is_pvm():
        return False, "/dev/kvm is kvm_pvm (no VMX/SVM): a stock kernel runs in its slow emulator"
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line
                    break
    except OSError:
        pass
    if " vmx" not in flags and " svm" not in flags:
        return False, "the CPU flags show neither vmx nor svm"
    return True, ""


def auto_backend():
    """The backend `--cpu auto` picks on this host (the CLI's rule): KVM on hardware
    virtualization, the software CPU ("bt") otherwise, kvm_pvm hosts included."""
    return "kvm" if hardware_kvm()[0] else "bt"


def kernel_backend():
    """Backend for the small Multiboot test kernels: KVM (kvm_pvm included) when usable."""
    return "kvm" if kvm_usable()[0] else "bt"


def pytest_collection_modifyitems(config, items):
    ok, why = kvm_usable()
    for item in items:
        if "kvm" in item.keywords and not ok:
            item.add_marker(pytest.mark.skip(reason=f"needs KVM: {why}"))


# --------------------------------------------------------------------------- running lookout
class Result:
    def __init__(self, argv, rc, out, err, elapsed):
        self.argv, self.rc, self.out, self.err, self.elapsed = argv, rc, out, err, elapsed

    @property
    def both(self):
        return self.out + self.err

    def __repr__(self):
        head = f"<lookout {' '.join(map(str, self.argv[1:]))}: rc={self.rc} {self.elapsed:.1f}s\n"
        if len(self.out) + len(self.err) < 3000:
            return head + f"--- stdout ---\n{self.out}\n--- stderr ---\n{self.err}>"
        return head + summarize(self.out, self.err) + ">"


def load_script(path, name):
    """A Python script without a .py suffix (bench/guest, bench/ab) imported as module `name`."""
    loader = importlib.machinery.SourceFileLoader(name, str(path))
    spec = importlib.util.spec_from_loader(name, loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def run_lookout(binary, *args, timeout=60, stdin_data=None, env=None):
    """Runs `binary args...`, stdin from stdin_data (or /dev/null), and returns a Result.
    On timeout the process group is killed and the test fails with what it printed so far."""
    argv = [str(binary)] + [str(a) for a in args]
    e = dict(os.environ)
    e.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
    e.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
    if env:
        e.update(env)
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin_data is not None else subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=e,
                         start_new_session=True)
    try:
        out, err = p.communicate(input=stdin_data.encode() if isinstance(stdin_data, str)
                                 else stdin_data, timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        pytest.fail(f"timed out after {timeout}s: {' '.join(argv)}\n"
                    + summarize(out.decode(errors="replace"), err.decode(errors="replace")),
                    pytrace=False)
    return Result(argv, p.returncode, out.decode(errors="replace"), err.decode(errors="replace"),
                  time.monotonic() - t0)


KMSG_RE = re.compile(r"^\[\s*\d+\.\d+\] ")


def summarize(out, err):
    """What a failed boot printed, readable: whether the ready line came, the lines that are not
    kernel log messages (those can be thousands of soft-lockup reports), then the raw tails."""
    def own(text):
        return "\n".join(line for line in text.splitlines() if not KMSG_RE.match(line))[-1500:]
    return (f"ready line seen: {'yes' if READY_PREFIX in out else 'no'}\n"
            f"--- stdout, without kernel messages ---\n{own(out)}\n"
            f"--- stdout tail ---\n{out[-1500:]}\n"
            f"--- stderr, without kernel messages ---\n{own(err)}\n"
            f"--- stderr tail ---\n{err[-1500:]}")


def assert_error(res, *words):
    """A bad input: lookout must exit non-zero, say something containing one of `words`
    (case-insensitive), and not crash (a signal, or a sanitizer report)."""
    assert res.rc != 0, f"expected failure, got success: {res!r}"
    assert res.rc > 0, f"killed by signal {-res.rc}: {res!r}"
    assert "Sanitizer" not in res.err, f"sanitizer report: {res!r}"
    text = res.both.lower()
    assert any(w.lower() in text for w in words), f"no message with any of {words}: {res!r}"


# --------------------------------------------------------------------------- fixtures
def _need(path, what):
    if not path.exists():
        pytest.fail(f"{path} is missing: {what}")
    return path


@pytest.fixture(scope="session")
def lookout_bin():
    """The optimised binary (build/lookout, or $LOOKOUT_BIN): used for slow boots."""
    override = os.environ.get("LOOKOUT_BIN")
    if override:
        return _need(pathlib.Path(override).resolve(), "LOOKOUT_BIN names no file")
    return _need(BUILD, "run `make` first")


def _fast_bins():
    bins = [("opt", BUILD)]
    if os.environ.get("LOOKOUT_TEST_SAN", "1") != "0":
        bins.append(("san", BUILD_SAN))
    return bins


@pytest.fixture(params=[b[0] for b in _fast_bins()])
def lookout_any(request):
    """Both builds (build/lookout and the ASan+UBSan build-san/lookout) for fast tests."""
    path = dict(_fast_bins())[request.param]
    return _need(path, "run `make` and `make san` first")


@pytest.fixture(scope="session")
def test_kernel():
    """Path of a Multiboot test kernel built by `make guests` (build/guests/NAME.elf)."""
    def get(name):
        return _need(GUESTS / f"{name}.elf", "run `make guests` (tests/guests/)")
    return get


@pytest.fixture(scope="session")
def debian_guest():
    """The default Debian guest, built once per session: dict with KERNEL, INITRD, APPEND.
    Skips (with the reason) when the packages cannot be fetched."""
    if not shutil.which("apt-get"):
        pytest.skip("no apt-get: the default guest is built from Debian packages")
    try:
        p = subprocess.run(["bash", str(GUEST_BUILD), "--print-paths", "-q"], capture_output=True,
                           text=True, timeout=900)
    except subprocess.TimeoutExpired:
        pytest.skip("guest/build.sh took over 15 minutes (network?)")
    if p.returncode != 0:
        pytest.skip(f"cannot build the Debian guest (network or apt unavailable?): "
                    f"{p.stderr.strip()[-500:]}")
    paths = dict(line.split("=", 1) for line in p.stdout.splitlines() if "=" in line)
    for k in ("KERNEL", "INITRD", "APPEND"):
        assert k in paths, f"guest/build.sh --print-paths printed no {k}=: {p.stdout!r}"
    paths["RELEASE"] = (pathlib.Path(paths["KERNEL"]).parent / "kernel-release").read_text().strip()
    return paths


_GUEST_HUNG = []


def guest_hung_check():
    """One hung boot costs LOOKOUT_GUEST_TIMEOUT; the next ones would only repeat it."""
    if _GUEST_HUNG:
        pytest.fail(f"not run: the Debian guest boot in {_GUEST_HUNG[0]} timed out")


def guest_hung_mark(name):
    _GUEST_HUNG.append(name)


@pytest.fixture
def run_guest(request, lookout_bin, debian_guest):
    """run_guest(*lookout_run_args, cmd=[...]) boots the Debian guest with the backend
    `--cpu auto` picks and returns a Result; cmd, when given, follows `--`."""
    def run(*args, cmd=None, stdin_data=None, timeout=None):
        guest_hung_check()
        argv = ["run", "--kernel", debian_guest["KERNEL"], "--initrd", debian_guest["INITRD"],
                "--append", debian_guest["APPEND"], "--mem", "512M", "--cpu", "auto", *args]
        if cmd is not None:
            argv += ["--", *cmd]
        try:
            return run_lookout(lookout_bin, *argv, timeout=timeout or guest_timeout(),
                               stdin_data=stdin_data)
        except pytest.fail.Exception:
            guest_hung_mark(request.node.name)
            raise
    return run


def b64(s):
    return base64.b64encode(s.encode()).decode()


def read_until(fd, pattern, timeout):
    """Bytes read from fd (a pty) until pattern appears, EOF, or timeout seconds."""
    out = b""
    end = time.monotonic() + timeout
    while time.monotonic() < end and pattern not in out:
        r, _, _ = select.select([fd], [], [], 0.1)
        if r:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    return out
