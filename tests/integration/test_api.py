"""The control socket (--api PATH): line-delimited JSON, `lookout ctl PATH CMD` as its client.

Assumed contract (documented in docs/testing.md and docs/console-and-control.md):
  - a test kernel that runs until told otherwise: `uartirq` (tests/guests/uartirq.c, prints
    "uartirq: ready" and runs until it reads 'q' on the console), or `spin` if one is added
    (prints "spinning", loops forever);
  - the socket exists once lookout has set up the VM;
  - `lookout ctl PATH status` prints the reply, which contains "running" or "paused";
    `pause`, `resume` and `quit` succeed with status 0; after `quit` lookout exits 0;
  - a malformed or oversized request gets a reply containing "error" and the VM keeps running."""
import json
import os
import socket
import subprocess
import time

import pytest

from conftest import GUESTS, kernel_backend, run_lookout

pytestmark = [pytest.mark.api, pytest.mark.kvm]


def wait_for(pred, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


LONG_RUNNING = [("spin", "spinning"), ("uartirq", "uartirq: ready")]


@pytest.fixture
def spinning_vm(lookout_any, test_kernel, tmp_path):
    for name, marker in LONG_RUNNING:
        if (GUESTS / f"{name}.elf").exists():
            break
    else:
        pytest.fail("no long-running test kernel: run `make guests` (needs "
                    + " or ".join(f"build/guests/{n}.elf" for n, _ in LONG_RUNNING) + ")")
    sock = tmp_path / "api.sock"
    out = open(tmp_path / "stdout", "w+b")
    err = open(tmp_path / "stderr", "w+b")
    # stdin stays an open pipe with nothing in it: uartirq would stop on a 'q'.
    p = subprocess.Popen([str(lookout_any), "run", "--cpu", kernel_backend(), "--kernel",
                          str(test_kernel(name)), "--api", str(sock)],
                         stdin=subprocess.PIPE, stdout=out, stderr=err)

    def printed():
        out.flush()
        return (tmp_path / "stdout").read_bytes().decode(errors="replace")

    def diag():
        return f"\n--- stdout ---\n{printed()[-2000:]}\n--- stderr ---\n" + \
            (tmp_path / "stderr").read_bytes().decode(errors="replace")[-2000:]

    try:
        wait_for(lambda: os.path.exists(sock) or p.poll() is not None, 20, "the control socket")
        assert p.poll() is None, f"lookout exited with {p.returncode} before the socket" + diag()
        wait_for(lambda: marker in printed() or p.poll() is not None, 20, repr(marker))
        assert p.poll() is None, f"lookout exited with {p.returncode}" + diag()
        yield p, sock, lookout_any, diag
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdin.close()
        out.close()
        err.close()


def ctl(binary, sock, *cmd):
    return run_lookout(binary, "ctl", sock, *cmd, timeout=10)


def raw_request(sock, data, timeout=5):
    """Sends bytes on a fresh connection and returns the first reply line (b"" if closed)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(sock))
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may refuse an oversized request before reading all of it
        reply = b""
        while not reply.endswith(b"\n"):
            try:
                chunk = s.recv(4096)
            except ConnectionResetError:
                break
            if not chunk:
                break
            reply += chunk
        return reply
    finally:
        s.close()


def test_status_pause_resume_quit(spinning_vm):
    p, sock, binary, diag = spinning_vm
    r = ctl(binary, sock, "status")
    assert r.rc == 0 and "running" in r.out, r
    r = ctl(binary, sock, "pause")
    assert r.rc == 0, r
    r = ctl(binary, sock, "status")
    assert r.rc == 0 and "paused" in r.out, r
    r = ctl(binary, sock, "resume")
    assert r.rc == 0, r
    r = ctl(binary, sock, "status")
    assert r.rc == 0 and "running" in r.out, r
    r = ctl(binary, sock, "quit")
    assert r.rc == 0, r
    try:
        rc = p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail("lookout still runs 10 s after quit" + diag())
    assert rc == 0, f"quit should end lookout with 0, got {rc}" + diag()


def test_status_reply_is_json(spinning_vm):
    p, sock, binary, diag = spinning_vm
    r = ctl(binary, sock, "status")
    assert r.rc == 0, r
    reply = json.loads(r.out.strip().splitlines()[-1])
    assert isinstance(reply, dict), r
    cfi = reply.get("cfi")  # --cfi policy and return-integrity counts (software CPU)
    assert isinstance(cfi, dict) and cfi.get("violations") == 0, r
    assert cfi.get("policy") in ("off", "log", "enforce") and cfi.get("scope") == "user", r


@pytest.mark.parametrize("bad", [b"{this is not json\n", b"[1,2,3]\n", b"\"status\"\n",
                                 b"{}\n", b"{\"cmd\": 42}\n", b"\x00\xff\xfe garbage\n"])
def test_malformed_request(spinning_vm, bad):
    p, sock, binary, diag = spinning_vm
    reply = raw_request(sock, bad)
    assert b"error" in reply.lower(), f"no error reply to {bad!r}: {reply!r}" + diag()
    assert p.poll() is None, "lookout died on a malformed request" + diag()
    r = ctl(binary, sock, "status")
    assert r.rc == 0 and "running" in r.out, r


def test_oversized_request(spinning_vm):
    p, sock, binary, diag = spinning_vm
    reply = raw_request(sock, b"{\"cmd\": \"" + b"A" * (4 << 20) + b"\"}\n", timeout=10)
    # An error reply, or the connection closed without one: either way the VM goes on.
    assert reply == b"" or b"error" in reply.lower(), reply[:200]
    assert p.poll() is None, "lookout died on an oversized request" + diag()
    r = ctl(binary, sock, "status")
    assert r.rc == 0 and "running" in r.out, r


def test_silent_client_does_not_stall(spinning_vm):
    """A client that connects and says nothing must not stop others from being served."""
    p, sock, binary, diag = spinning_vm
    idle = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    idle.connect(str(sock))
    idle.sendall(b"{\"cmd\": ")  # half a request, never finished
    try:
        r = ctl(binary, sock, "status")
        assert r.rc == 0 and "running" in r.out, r
    finally:
        idle.close()
