"""Bad input gets a clear error and nothing breaks (issue 2, item 6), and `lookout --help`.

Each case runs against the optimised and the sanitizer build: a crash, a signal or a sanitizer
report fails the test as surely as a missing message.  The useful words accepted for each case
are deliberately broad (the CLI's wording is its own), but the message must name the problem."""
import os

import pytest

from conftest import assert_error, kernel_backend, run_lookout


def test_help(lookout_any):
    r = run_lookout(lookout_any, "--help", timeout=10)
    assert r.rc == 0, r
    text = r.out.lower()
    for word in ("run", "--kernel", "--cpu", "--smp", "--mem", "ctl"):
        assert word in text, f"--help does not mention {word}: {r!r}"


def test_unknown_option(lookout_any):
    r = run_lookout(lookout_any, "run", "--frobnicate", timeout=10)
    assert_error(r, "frobnicate", "unknown", "unrecognized", "invalid option")


def test_unknown_command(lookout_any):
    r = run_lookout(lookout_any, "frobnicate", timeout=10)
    assert_error(r, "frobnicate", "unknown", "usage")


def test_no_such_kernel(lookout_any, tmp_path):
    missing = tmp_path / "no-such-kernel"
    r = run_lookout(lookout_any, "run", "--cpu", kernel_backend(), "--kernel", missing, timeout=20)
    assert_error(r, "no such file", "not found", "does not exist", "cannot open", str(missing))


def test_kernel_is_text_file(lookout_any, tmp_path):
    k = tmp_path / "notes.txt"
    k.write_text("this is not a kernel\n" * 100)
    r = run_lookout(lookout_any, "run", "--cpu", kernel_backend(), "--kernel", k, timeout=20)
    assert_error(r, "not a kernel", "unrecognized", "unknown format", "format", "magic",
                 "bzimage", "elf", "multiboot")


def test_kernel_empty_file(lookout_any, tmp_path):
    k = tmp_path / "empty"
    k.write_bytes(b"")
    r = run_lookout(lookout_any, "run", "--cpu", kernel_backend(), "--kernel", k, timeout=20)
    assert_error(r, "empty", "truncated", "too small", "too short", "format", "not a kernel")


def _bzimage_header(setup_sects=30):
    """The first KiB of a bzImage: boot sector signature and the "HdrS" setup header, claiming
    setup_sects sectors of setup code that the file then does not contain."""
    b = bytearray(1024)
    b[0x1f1] = setup_sects
    b[0x1fe:0x200] = b"\x55\xaa"
    b[0x202:0x206] = b"HdrS"
    b[0x206:0x208] = (0x020f).to_bytes(2, "little")  # boot protocol 2.15
    b[0x211] = 0x01  # loadflags: LOADED_HIGH
    return bytes(b)


def test_truncated_bzimage(lookout_any, tmp_path):
    k = tmp_path / "truncated-bzImage"
    k.write_bytes(_bzimage_header())
    r = run_lookout(lookout_any, "run", "--cpu", kernel_backend(), "--kernel", k, timeout=20)
    assert_error(r, "truncated", "too small", "too short", "short", "size", "corrupt", "invalid")


def test_truncated_elf(lookout_any, tmp_path, test_kernel):
    data = test_kernel("exit42").read_bytes()
    k = tmp_path / "truncated.elf"
    k.write_bytes(data[:100])  # ELF header intact, program headers cut off
    r = run_lookout(lookout_any, "run", "--cpu", kernel_backend(), "--kernel", k, timeout=20)
    assert_error(r, "truncated", "too small", "too short", "short", "program header", "corrupt",
                 "invalid", "outside")


@pytest.mark.parametrize("mem", ["1K", "1000G", "0", "lots"])
def test_mem_out_of_range(lookout_any, test_kernel, mem):
    r = run_lookout(lookout_any, "run", "--cpu", kernel_backend(), "--kernel",
                    test_kernel("exit42"), "--mem", mem, timeout=20)
    assert_error(r, "--mem", "memory", "mem ", "range", "too small", "too large", "invalid")


@pytest.mark.parametrize("smp", ["0", "999", "-1", "two"])
def test_smp_out_of_range(lookout_any, test_kernel, smp):
    r = run_lookout(lookout_any, "run", "--cpu", kernel_backend(), "--kernel",
                    test_kernel("exit42"), "--smp", smp, timeout=20)
    assert_error(r, "--smp", "smp", "cpu", "range", "invalid")


def test_unknown_backend(lookout_any, test_kernel):
    r = run_lookout(lookout_any, "run", "--cpu", "quantum", "--kernel", test_kernel("exit42"),
                    timeout=20)
    assert_error(r, "quantum", "--cpu", "backend", "kvm", "unknown")


def test_initrd_too_large(lookout_any, test_kernel, tmp_path):
    initrd = tmp_path / "huge-initrd"
    with open(initrd, "wb") as f:  # sparse: costs no disk
        f.truncate(96 << 20)
    r = run_lookout(lookout_any, "run", "--cpu", kernel_backend(), "--kernel",
                    test_kernel("exit42"), "--mem", "64M", "--initrd", initrd, timeout=30)
    assert_error(r, "initrd", "does not fit", "too large", "too big", "memory", "module")


def test_initrd_missing(lookout_any, test_kernel, tmp_path):
    r = run_lookout(lookout_any, "run", "--cpu", kernel_backend(), "--kernel",
                    test_kernel("exit42"), "--initrd", tmp_path / "nope", timeout=20)
    assert_error(r, "no such file", "not found", "does not exist", "cannot open", "nope")


def test_ctl_no_socket(lookout_any, tmp_path):
    r = run_lookout(lookout_any, "ctl", tmp_path / "no.sock", "status", timeout=10)
    assert_error(r, "no such file", "not found", "connect", "refused", "socket")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can open /dev/kvm whatever its mode")
def test_kvm_without_permission(lookout_any, test_kernel):
    if os.access("/dev/kvm", os.R_OK | os.W_OK) or not os.path.exists("/dev/kvm"):
        pytest.skip("needs a /dev/kvm this user may not open")
    r = run_lookout(lookout_any, "run", "--cpu", "kvm", "--kernel", test_kernel("exit42"),
                    timeout=20)
    assert_error(r, "--cpu bt", "permission")
