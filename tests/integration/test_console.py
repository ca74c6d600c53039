"""The serial console and the legacy devices, driven like a user would.

  uartirq  (tests/guests/uartirq.c) routes COM1 through the IOAPIC, echoes every received byte as
           "<c>" from its interrupt handler, ends on 'q'; prints the RTC date and how many RX and
           THRE interrupts it got; exit value 0 when both kinds arrived -> lookout status 1.
Checked: interrupt-driven UART input and output under the backend that runs test kernels, input
piped before the guest is ready is held (not dropped) until the guest reads it, the CMOS clock
tells the host's UTC date, and on a terminal the Ctrl-A escapes work, Ctrl-C reaches the guest as
a byte, and the terminal mode is restored when lookout exits."""
import datetime
import os
import pty
import re
import termios
import time

import pytest

from conftest import kernel_backend, read_until as _read_until, run_lookout

pytestmark = [pytest.mark.kvm]


def test_uart_interrupts_and_rtc(lookout_any, test_kernel):
    before = datetime.datetime.now(datetime.timezone.utc)
    r = run_lookout(lookout_any, "run", "--cpu", kernel_backend(), "--kernel",
                    test_kernel("uartirq"), stdin_data="hello, world q", timeout=60)
    after = datetime.datetime.now(datetime.timezone.utc)
    assert r.rc == 1, r
    m = re.search(r"rx irqs (\d+), thre irqs (\d+)", r.out)
    assert m and int(m.group(1)) >= 1 and int(m.group(2)) >= 1, r
    # the tail of the input arrives intact, in order, through the RX interrupt
    assert "<w><o><r><l><d>" in r.out, r
    m = re.search(r"uartirq: rtc (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC", r.out)
    assert m, r
    t = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").replace(
        tzinfo=datetime.timezone.utc)
    assert before - datetime.timedelta(seconds=2) <= t <= after + datetime.timedelta(seconds=2), r


def test_terminal_escapes_and_restore(lookout_any, test_kernel):
    pid, fd = pty.fork()
    if pid == 0:
        os.execv(str(lookout_any), ["lookout", "run", "--cpu", kernel_backend(), "--kernel",
                                    str(test_kernel("uartirq"))])
    try:
        cooked = termios.tcgetattr(fd)
        out = _read_until(fd, b"uartirq: ready", 30)
        assert b"uartirq: ready" in out, out
        assert not termios.tcgetattr(fd)[3] & termios.ICANON, "the terminal is not in raw mode"
        os.write(fd, b"ab\x03\x01\x01")  # Ctrl-C and Ctrl-A Ctrl-A reach the guest as bytes
        out = _read_until(fd, b"<\x01>", 10)
        assert b"<a><b><\x03><\x01>" in out, out
        os.write(fd, b"\x01h")
        out = _read_until(fd, b"Ctrl-A x", 10)
        assert b"Ctrl-A x" in out, out
        os.write(fd, b"\x01x")
        out = _read_until(fd, b"[lookout: quit]", 10)
        assert b"[lookout: quit]" in out, out
        end = time.monotonic() + 10
        while time.monotonic() < end:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            _read_until(fd, b"\0", 0.1)
        else:
            pytest.fail("lookout did not exit after Ctrl-A x")
        assert os.WIFEXITED(status), f"lookout died: status {status:#x}"
        assert termios.tcgetattr(fd)[3] == cooked[3], "terminal mode not restored"
    finally:
        try:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(fd)
