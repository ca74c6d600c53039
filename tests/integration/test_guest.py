"""The Debian guest (guest/build.sh) under the backend `--cpu auto` picks: slow, marked `guest`.

`lookout run [options] -- CMD ARGS...` passes the command to the guest's /init as
lookout.run=<base64>; /init runs it with its output on COM2 (copied to lookout's stdout) and
reports its exit status through port 0xf4, which lookout turns into its own exit status."""
import re
import subprocess
import threading
import time

import pytest

from conftest import auto_backend, guest_hung_check, guest_hung_mark, guest_timeout, summarize

pytestmark = pytest.mark.guest

READY_RE = re.compile(r"^lookout-guest: ready \(uptime [0-9]+\.[0-9]+\)", re.M)


def test_auto_backend_rule():
    """Documents which backend the guest tests below use here."""
    assert auto_backend() in ("kvm", "bt")


def test_uname(run_guest, debian_guest):
    r = run_guest(cmd=["uname", "-r"])
    assert r.rc == 0, r
    assert r.out.strip().splitlines()[-1:] == [debian_guest["RELEASE"]], r


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


def test_reboot_ends_cleanly(run_guest):
    """Interactive mode: `reboot -f` typed at the shell (FADT reset register or i8042 reset)
    ends lookout with 0, as a power-off does.  Input piped before the guest is ready is held
    until the guest reads it."""
    r = run_guest(stdin_data="reboot -f\n")
    assert READY_RE.search(r.out), r
    assert r.rc == 0, r
    assert "triple fault" not in r.both.lower(), r


def wait_or_exit(p, event, timeout):
    """Waits for event; gives up early when the process has ended."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if event.wait(0.1):
            return True
        if p.poll() is not None:
            return event.wait(1)
    return False


def drain(f):
    try:
        return f.read().decode(errors="replace")[-3000:]
    except (OSError, ValueError):
        return ""


def test_ready_line_and_shell(lookout_bin, debian_guest):
    """Interactive mode with stdin a pipe (not a terminal): the ready line appears on the
    console, then the shell reads what we type and `poweroff -f` ends lookout with 0.
    stdin stays open until lookout exits (EOF on stdin is not a request to stop)."""
    guest_hung_check()
    argv = [str(lookout_bin), "run", "--kernel", debian_guest["KERNEL"], "--initrd",
            debian_guest["INITRD"], "--append", debian_guest["APPEND"], "--mem", "512M"]
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, start_new_session=True)
    lines, ready, said = [], threading.Event(), threading.Event()

    def reader():
        for raw in p.stdout:
            line = raw.decode(errors="replace")
            lines.append(line)
            if READY_RE.search(line):
                ready.set()
            if "shell-42" in line and "echo" not in line:
                said.set()
    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        if not wait_or_exit(p, ready, guest_timeout()):
            if p.poll() is None:
                guest_hung_mark("test_ready_line_and_shell")
                p.kill()
                p.wait()
            pytest.fail(f"no ready line (lookout status {p.poll()}):\n"
                        + summarize("".join(lines), drain(p.stderr)), pytrace=False)
        time.sleep(0.5)
        p.stdin.write(b"echo shell-$((6*7))\n")
        p.stdin.flush()
        assert wait_or_exit(p, said, 300), "the shell did not answer:\n" + summarize("".join(lines), "")
        p.stdin.write(b"poweroff -f\n")
        p.stdin.flush()
        rc = p.wait(timeout=300)
        assert rc == 0, f"power-off should end lookout with 0, got {rc}: " + \
            p.stderr.read().decode(errors="replace")[-2000:]
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
