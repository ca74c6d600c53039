"""The Debian guest (guest/build.sh) under the backend `--cpu auto` picks: slow, marked `guest`.

`lookout run [options] -- CMD ARGS...` passes the command to the guest's /init as
lookout.run=<base64>; /init runs it with its output on COM2 (copied to lookout's stdout) and
reports its exit status through port 0xf4, which lookout turns into its own exit status."""
import re
import subprocess
import threading
import time

import pytest

from conftest import (auto_backend, guest_hung_check, guest_hung_mark, guest_timeout,
                      summarize)

pytestmark = pytest.mark.guest

READY_RE = re.compile(r"^lookout-guest: ready \(uptime [0-9]+\.[0-9]+\)", re.M)


def test_auto_backend_rule():
    """Documents which backend the guest tests below use here."""
    assert auto_backend() in ("kvm", "bt")


def test_uname(run_guest, debian_guest):
    """The kernel release, and (same boot) the TSC flags that make Linux trust the TSC without a
    watchdog against jiffies: without them a busy host made the guest switch to refined-jiffies."""
    r = run_guest(cmd=["sh", "-c", "grep -m1 ^flags /proc/cpuinfo; uname -r"])
    assert r.rc == 0, r
    lines = r.out.strip().splitlines()
    assert lines[-1:] == [debian_guest["RELEASE"]], r
    if auto_backend() == "bt":
        flags = set(lines[-2].split())
        assert {"constant_tsc", "nonstop_tsc", "tsc_adjust"} <= flags, lines[-2]


def test_exit_status_and_exact_output(run_guest):
    """The command's status becomes lookout's; its bytes come through unchanged (no CR added,
    stderr included, arguments with spaces and quotes preserved).  One boot for both."""
    r = run_guest(cmd=["sh", "-c", "printf 'a b\\n'; echo \"it's\" >&2; printf '%s\\n' \"$0\"; exit 7",
                       "x y"])
    assert r.rc == 7, r
    assert "a b\nit's\nx y\n" in r.out, r


def test_smp2_nproc(run_guest):
    r = run_guest("--smp", "2", cmd=["nproc"])
    assert r.rc == 0, r
    assert r.out.strip().splitlines()[-1:] == ["2"], r


def test_command_that_powers_off(run_guest):
    """`-- CMD` where CMD powers the guest off before /init can report its status: lookout
    says so and exits with 118 (EXIT_NO_STATUS), not with a made-up status."""
    r = run_guest(cmd=["poweroff", "-f"])
    assert r.rc == 118, r
    assert "without reporting" in r.err, r


class Console:
    """`lookout run` of the Debian guest in interactive mode, stdin and stdout pipes (not a
    terminal): what it prints is collected by threads, so neither pipe can fill up."""

    def __init__(self, lookout_bin, guest, name):
        guest_hung_check()
        self.name = name
        argv = [str(lookout_bin), "run", "--kernel", guest["KERNEL"], "--initrd",
                guest["INITRD"], "--append", guest["APPEND"], "--mem", "512M", "--cpu", "auto"]
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, start_new_session=True)
        self.out, self.err = [], []
        self.changed = threading.Condition()
        self.threads = [threading.Thread(target=self._pump, args=(f, buf), daemon=True)
                        for f, buf in ((self.p.stdout, self.out), (self.p.stderr, self.err))]
        for t in self.threads:
            t.start()

    def _pump(self, f, buf):
        while True:
            chunk = f.read1(4096)
            if not chunk:
                break
            with self.changed:
                buf.append(chunk.decode(errors="replace"))
                self.changed.notify_all()

    def text(self):
        with self.changed:
            return "".join(self.out)

    def wait_for(self, regex, timeout):
        """True once stdout matches regex; False on timeout or when lookout has exited."""
        end = time.monotonic() + timeout
        with self.changed:
            while not regex.search("".join(self.out)):
                if self.p.poll() is not None or time.monotonic() >= end:
                    return bool(regex.search("".join(self.out)))
                self.changed.wait(0.2)
        return True

    def type(self, text):
        self.p.stdin.write(text.encode())
        self.p.stdin.flush()

    def report(self):
        with self.changed:
            return summarize("".join(self.out), "".join(self.err))

    def boot(self):
        if not self.wait_for(READY_RE, guest_timeout()):
            hung = self.p.poll() is None
            self.close()
            if hung:
                guest_hung_mark(self.name)
            pytest.fail(f"no ready line (lookout status {self.p.returncode}):\n" + self.report(),
                        pytrace=False)
        time.sleep(0.5)

    def wait_exit(self, timeout):
        try:
            return self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.close()
            pytest.fail(f"lookout still runs {timeout} s later:\n" + self.report(), pytrace=False)

    def close(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()
        for t in self.threads:
            t.join(5)
        self.p.stdin.close()


@pytest.fixture
def console(lookout_bin, debian_guest, request):
    c = Console(lookout_bin, debian_guest, request.node.name)
    yield c
    c.close()


def test_ready_line_and_shell(console):
    """The ready line appears on the console, the shell reads what we type, and `poweroff -f`
    ends lookout with 0.  stdin stays open until lookout exits."""
    console.boot()
    console.type("echo shell-$((6*7))\n")
    assert console.wait_for(re.compile(r"^shell-42\r?$", re.M), 300), \
        "the shell did not answer:\n" + console.report()
    console.type("poweroff -f\n")
    rc = console.wait_exit(300)
    assert rc == 0, f"power-off should end lookout with 0, got {rc}:\n" + console.report()


def test_reboot_ends_cleanly(console):
    """`reboot -f` typed at the shell (FADT reset register or i8042 reset) ends lookout with 0,
    as a power-off does, and is not reported as a triple fault."""
    console.boot()
    console.type("reboot -f\n")
    rc = console.wait_exit(300)
    assert rc == 0, f"reboot should end lookout with 0, got {rc}:\n" + console.report()
    assert "triple fault" not in console.report().lower()


# The same busybox (busybox-static, the package the guest is built from; scripts/setup.sh installs
# it on the host too) runs this script natively and in the guest: the software CPU must produce
# byte-identical results (hashing, compression, shell arithmetic).  Every applet is named through
# `busybox` so the host side does not pick up coreutils.
SAME_AS_HOST_SCRIPT = r"""
b=busybox
$b mkdir -p /tmp 2>/dev/null
f=$($b mktemp)
$b seq 1 150000 > "$f"
$b sha256sum < "$f"
$b md5sum < "$f"
$b gzip -6 -c "$f" | $b sha256sum
$b gzip -1 -c "$f" | $b gunzip -c | $b sha256sum
i=0; s=0
while [ $i -lt 30000 ]; do s=$(( (s * 31 + i * i) % 1000003 )); i=$((i + 1)); done
echo "loop $s"
echo "arith $((0x7fffffff * 3 / 7)) $(( -17 % 5 )) $(( 1 << 40 )) $(( -9223372036854775807 - 1 ))"
$b rm -f "$f"
"""


def test_same_results_as_host(run_guest):
    import shutil
    bb = shutil.which("busybox") or "/bin/busybox"
    native = subprocess.run([bb, "sh", "-c", SAME_AS_HOST_SCRIPT], capture_output=True,
                            text=True, timeout=120)
    assert native.returncode == 0, native.stderr
    assert native.stdout.count("\n") == 6, native.stdout
    r = run_guest(cmd=["sh", "-c", SAME_AS_HOST_SCRIPT])
    assert r.rc == 0, r
    assert r.out.replace("\r\n", "\n").strip().splitlines()[-6:] == \
        native.stdout.strip().splitlines(), r


# xz (the host's, copied into the guest with its libraries by guest/build.sh --add xz) compresses
# and decompresses, and busybox sh runs the 200 000-iteration loop of bench/guest: the guest's
# output must be byte-identical to the same binaries' on the host.  xz is named by its full path
# ($XZ, where build.sh puts it: the host's PATH location): busybox sh runs its own decompress-only
# xz applet for a bare `xz`.
XZ_AND_LOOP_SCRIPT = r"""
b=busybox
xz() { "$XZ" "$@"; }
f=$($b mktemp)
$b seq 1 120000 | $b sed 's/$/ lookout/' > "$f"
$b sha256sum < "$f"
xz -3 -T1 -c "$f" > "$f.xz"
$b sha256sum < "$f.xz"
$b stat -c %s "$f.xz"
xz -d -c "$f.xz" | $b sha256sum
i=0; s=0
while [ $i -lt 200000 ]; do s=$(( (s * 31 + i * i) % 1000003 )); i=$((i + 1)); done
echo "loop $s"
$b rm -f "$f" "$f.xz"
"""


@pytest.fixture(scope="session")
def debian_guest_xz(debian_guest):
    """The Debian guest with the host's xz and its libraries in it (guest/build.sh --add xz)."""
    import shutil
    from conftest import GUEST_BUILD
    if not shutil.which("xz"):
        pytest.skip("xz is not installed on the host (xz-utils)")
    p = subprocess.run(["bash", str(GUEST_BUILD), "--print-paths", "-q", "--add", "xz"],
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr
    return dict(line.split("=", 1) for line in p.stdout.splitlines() if "=" in line)


@pytest.mark.parametrize("cpu", ["bt", pytest.param("kvm", marks=pytest.mark.kvm)])
def test_xz_and_long_loop_same_as_host(lookout_bin, debian_guest_xz, request, cpu):
    """Also under --cpu kvm, where KVM boots the guest in reasonable time: hardware KVM only
    (on kvm_pvm a stock kernel runs in its instruction emulator: skipped with the reason)."""
    import shutil
    from conftest import hardware_kvm, run_lookout
    if cpu == "kvm":
        ok, why = hardware_kvm()
        if not ok:
            pytest.skip(f"--cpu kvm boots the Debian guest only on hardware KVM: {why}")
    bb = shutil.which("busybox") or "/bin/busybox"
    script = f"XZ={shutil.which('xz')}\n" + XZ_AND_LOOP_SCRIPT
    native = subprocess.run([bb, "sh", "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert native.returncode == 0, native.stderr
    want = native.stdout.strip().splitlines()
    assert len(want) == 5 and want[-1].startswith("loop "), native.stdout
    # the input's hash comes back from the round trip, and the .xz is a real (smaller) file
    assert want[3] == want[0] and 1000 < int(want[2]) < 1000000, native.stdout
    guest_hung_check()
    g = debian_guest_xz
    try:
        r = run_lookout(lookout_bin, "run", "--kernel", g["KERNEL"], "--initrd", g["INITRD"],
                        "--append", g["APPEND"], "--mem", "512M", "--cpu", cpu, "--", "sh",
                        "-c", script, timeout=guest_timeout())
    except pytest.fail.Exception:
        guest_hung_mark(request.node.name)
        raise
    assert r.rc == 0, r
    assert r.out.replace("\r\n", "\n").strip().splitlines()[-5:] == want, r
