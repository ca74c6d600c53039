"""A broken or hostile guest never hangs or crashes the VMM, under the software CPU (--cpu bt).

  triple   (tests/guests/triple.c) an empty IDT and UD2: a triple fault -> status 124, registers
  hang     (tests/guests/hang.c) interrupts off, then `jmp .` forever (hlt=1: HLT forever); it
           never exits to the VMM, so only the control socket's `quit` or the console's Ctrl-A x
           can end it, with status 0
  Debian   `echo c > /proc/sysrq-trigger` panics the kernel; with the default panic=-1 it reboots,
           which ends lookout; with `-- CMD` the status is 118 (no status reported)
Also: `--cpu auto` says which backend it picked and why (LOOKOUT_LOG=info), which on a kvm_pvm
host is the software CPU.  Every test checks lookout ended by itself (no signal, no sanitizer
report) within a bound."""
import os
import pty
import re
import subprocess
import time

import pytest

from conftest import auto_backend, kvm_is_pvm, kvm_usable, read_until as _read_until, run_lookout

pytestmark = pytest.mark.bt


def no_crash(rc, err):
    assert rc is not None and rc >= 0, f"lookout was killed by signal {-rc}:\n{err[-2000:]}"
    assert "Sanitizer" not in err, f"sanitizer report:\n{err[-3000:]}"


def test_triple_fault_status_124(lookout_any, test_kernel):
    r = run_lookout(lookout_any, "run", "--cpu", "bt", "--kernel", test_kernel("triple"),
                    timeout=30)
    no_crash(r.rc, r.err)
    assert "triple: faulting" in r.out, r
    assert "still running" not in r.out, r
    assert r.rc == 124, r
    assert "triple fault" in r.err and "rip=" in r.err, r


class Running:
    """lookout running a test kernel in the background, output in files (nothing can block)."""

    def __init__(self, binary, tmp_path, *args):
        self.out = open(tmp_path / "stdout", "w+b")
        self.err = open(tmp_path / "stderr", "w+b")
        self.paths = (tmp_path / "stdout", tmp_path / "stderr")
        self.p = subprocess.Popen([str(binary), "run", "--cpu", "bt", *map(str, args)],
                                  stdin=subprocess.PIPE, stdout=self.out, stderr=self.err,
                                  start_new_session=True)

    def text(self, which=0):
        return self.paths[which].read_bytes().decode(errors="replace")

    def wait_for(self, what, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end and self.p.poll() is None:
            if what in self.text():
                return True
            time.sleep(0.05)
        return what in self.text()

    def diag(self):
        return f"\n--- stdout ---\n{self.text()[-2000:]}\n--- stderr ---\n{self.text(1)[-2000:]}"

    def close(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()
        self.p.stdin.close()
        self.out.close()
        self.err.close()


@pytest.mark.api
@pytest.mark.parametrize("mode", ["loop", "hlt"])
def test_hung_guest_quits_from_control_socket(lookout_any, test_kernel, tmp_path, mode):
    sock = tmp_path / "api.sock"
    args = ["--kernel", test_kernel("hang"), "--api", sock]
    if mode == "hlt":
        args += ["--append", "hlt=1"]
    vm = Running(lookout_any, tmp_path, *args)
    try:
        banner = "hang: halted" if mode == "hlt" else "hang: looping"
        assert vm.wait_for(banner, 30), f"no {banner!r}" + vm.diag()
        time.sleep(0.5)  # well inside the loop (or HLT) by now
        assert vm.p.poll() is None, f"lookout exited with {vm.p.returncode}" + vm.diag()
        r = run_lookout(lookout_any, "ctl", sock, "status", timeout=10)
        assert r.rc == 0 and "running" in r.out, r
        r = run_lookout(lookout_any, "ctl", sock, "quit", timeout=10)
        assert r.rc == 0, r
        try:
            rc = vm.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pytest.fail("lookout still runs 10 s after `ctl quit`" + vm.diag())
        no_crash(rc, vm.text(1))
        assert rc == 0, f"quit should end lookout with 0, got {rc}" + vm.diag()
    finally:
        vm.close()


def test_hung_guest_quits_from_console_escape(lookout_any, test_kernel):
    pid, fd = pty.fork()
    if pid == 0:
        os.execv(str(lookout_any), ["lookout", "run", "--cpu", "bt", "--kernel",
                                    str(test_kernel("hang"))])
    try:
        out = _read_until(fd, b"hang: looping", 30)
        assert b"hang: looping" in out, out
        time.sleep(0.5)
        os.write(fd, b"\x01x")
        out += _read_until(fd, b"[lookout: quit]", 10)
        assert b"[lookout: quit]" in out, out
        end = time.monotonic() + 10
        while time.monotonic() < end:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            out += _read_until(fd, b"\0", 0.1)
        else:
            pytest.fail(f"lookout did not exit within 10 s of Ctrl-A x:\n{out[-2000:]!r}")
        assert os.WIFEXITED(status), f"lookout died: wait status {status:#x}"
        assert os.WEXITSTATUS(status) == 0, out[-2000:]
        assert b"Sanitizer" not in out, out[-3000:]
    finally:
        try:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(fd)


def test_auto_says_which_backend(lookout_any, test_kernel):
    """`--cpu auto` names its choice at info level; on kvm_pvm (or without KVM) it is bt."""
    r = run_lookout(lookout_any, "run", "--cpu", "auto", "--kernel", test_kernel("exit42"),
                    timeout=60, env={"LOOKOUT_LOG": "info"})
    no_crash(r.rc, r.err)
    assert r.rc == 85, r
    m = re.search(r"^lookout: info: --cpu auto: (.*)$", r.err, re.M)
    assert m, r
    if auto_backend() == "bt":
        assert "software CPU (bt)" in m.group(1), r
        if kvm_usable()[0] and kvm_is_pvm():
            assert "kvm_pvm" in m.group(1), r
        else:
            assert "not usable" in m.group(1), r
    else:
        assert "KVM on hardware virtualization" in m.group(1), r


@pytest.mark.guest
def test_debian_kernel_panic_ends_lookout(lookout_bin, debian_guest):
    """A panicking guest kernel (sysrq crash) reboots at once (panic=-1), which ends lookout;
    /init never reports the command's status, so the status is 118, not a hang."""
    r = run_lookout(lookout_bin, "run", "--cpu", "bt", "--kernel", debian_guest["KERNEL"],
                    "--initrd", debian_guest["INITRD"], "--append", debian_guest["APPEND"],
                    "--mem", "512M", "-v", "--", "sh", "-c",
                    "echo c > /proc/sysrq-trigger; sleep 600", timeout=600)
    no_crash(r.rc, r.err)
    assert "Kernel panic" in r.err, r
    assert r.rc == 118, r
    assert "triple fault" not in r.err.lower(), r
