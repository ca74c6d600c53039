"""The default guest itself (guest/build.sh, guest/init), checked without lookout: the archive's
contents, the cache, --add, and — when QEMU happens to be installed (bench/boot installs it) —
the /init contract on a reference VMM, so a failure of the lookout guest tests can be told apart
from a broken guest.  Builds need the Debian packages: skipped with the reason when offline."""
import base64
import gzip
import pathlib
import re
import shlex
import shutil
import subprocess
import time

import pytest

from conftest import GUEST_BUILD

pytestmark = pytest.mark.guest


def cpio_names(path):
    data = gzip.decompress(pathlib.Path(path).read_bytes())
    r = subprocess.run(["cpio", "-t", "--quiet"], input=data, capture_output=True, check=True)
    return set(r.stdout.decode().split("\n"))


def test_initramfs_contents(debian_guest):
    names = cpio_names(debian_guest["INITRD"])
    rel = debian_guest["RELEASE"]
    for must in ("init", "bin/busybox", "bin/sh", "sbin/lookout-exit", "bin/mount",
                 "sbin/insmod", "etc/lookout/modules",
                 f"lib/modules/{rel}/modules.dep",
                 f"lib/modules/{rel}/kernel/drivers/virtio/virtio_mmio.ko",
                 f"lib/modules/{rel}/kernel/drivers/virtio/virtio_ring.ko",
                 f"lib/modules/{rel}/kernel/drivers/net/virtio_net.ko"):
        assert must in names, f"{must} missing from the initramfs"


def test_kernel_is_the_package_bzimage(debian_guest):
    k = pathlib.Path(debian_guest["KERNEL"]).read_bytes()
    assert k[0x1fe:0x200] == b"\x55\xaa" and k[0x202:0x206] == b"HdrS", "not a bzImage"
    assert re.fullmatch(r"\d+\.\d+\.\d+-\d+-cloud-amd64", debian_guest["RELEASE"])
    assert "console=ttyS0" in debian_guest["APPEND"]


def test_cached_rerun_is_fast(debian_guest):
    t0 = time.monotonic()
    r = subprocess.run(["bash", str(GUEST_BUILD), "--print-paths", "-q"], capture_output=True,
                       text=True, timeout=60)
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    assert f"KERNEL={debian_guest['KERNEL']}" in r.stdout
    assert took < 3, f"a cached guest/build.sh took {took:.1f} s"


def test_add_program(debian_guest, tmp_path):
    xz = shutil.which("xz")
    if not xz:
        pytest.skip("xz is not installed on this host")
    r = subprocess.run(["bash", str(GUEST_BUILD), "--print-paths", "-q", "--add", "xz",
                        "--output", str(tmp_path / "g")], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    paths = dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)
    names = cpio_names(paths["INITRD"])
    assert xz.lstrip("/") in names or "usr/bin/xz" in names
    assert any(n.startswith("lib64/ld-linux") for n in names), "dynamic loader missing"
    assert any("liblzma.so" in n for n in names), "xz's shared library missing"


def test_add_program_at_a_guest_path(debian_guest, tmp_path):
    """--add SRC=DEST puts SRC at DEST in the guest; a file under a directory the guest's init
    mounts over (/tmp: a checkout there, say) is refused with the way out."""
    src = tmp_path / "tool.sh"
    src.write_text("#!/bin/sh\necho tool\n")
    r = subprocess.run(["bash", str(GUEST_BUILD), "--print-paths", "-q", "--add",
                        f"{src}=/usr/local/bin/tool.sh", "--output", str(tmp_path / "g")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    paths = dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)
    assert "usr/local/bin/tool.sh" in cpio_names(paths["INITRD"])
    r = subprocess.run(["bash", str(GUEST_BUILD), "--print-paths", "-q", "--add", "/tmp/x=/tmp/x",
                        "--output", str(tmp_path / "h")], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != 0
    r = subprocess.run(["bash", str(GUEST_BUILD), "--print-paths", "-q", "--add",
                        f"{src}=/tmp/tool.sh", "--output", str(tmp_path / "h")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "mounts over /tmp" in r.stderr and "/usr/local/bin" in r.stderr


def test_unknown_option_fails():
    r = subprocess.run(["bash", str(GUEST_BUILD), "--frobnicate"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode != 0 and "frobnicate" in r.stderr


# ---------------------------------------------------------------- the /init contract under QEMU
QEMU = shutil.which("qemu-system-x86_64")
needs_qemu = pytest.mark.skipif(not QEMU, reason="qemu-system-x86_64 not installed "
                                "(bench/boot installs it); the reference check is optional")


def tsc_khz():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("cpu MHz"):
                return int(float(line.split(":")[1]) * 1000)
    return 2000000


def qemu_run(guest, tmp_path, argv):
    """Boots the guest under QEMU TCG with COM1, COM2 (to a file) and isa-debug-exit at 0xf4,
    passing argv the way `lookout run -- argv` does."""
    com2 = tmp_path / "com2"
    append = guest["APPEND"] + f" tsc_early_khz={tsc_khz()}"
    if argv:
        append += " lookout.run=" + base64.b64encode(shlex.join(argv).encode()).decode()
    r = subprocess.run([QEMU, "-M", "microvm", "-accel", "tcg", "-m", "512", "-nographic",
                        "-no-reboot", "-nodefaults",
                        "-chardev", "stdio,id=c0", "-device", "isa-serial,chardev=c0,iobase=0x3f8,irq=4",
                        "-chardev", f"file,id=c1,path={com2}",
                        "-device", "isa-serial,chardev=c1,iobase=0x2f8,irq=3",
                        "-device", "isa-debug-exit,iobase=0xf4,iosize=1",
                        "-kernel", guest["KERNEL"], "-initrd", guest["INITRD"], "-append", append],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
    return r.returncode, r.stdout.decode(errors="replace"), \
        com2.read_bytes().decode(errors="replace") if com2.exists() else ""


@needs_qemu
def test_init_run_mode_under_qemu(debian_guest, tmp_path):
    rc, console, out = qemu_run(debian_guest, tmp_path, [
        "sh", "-c", "uname -r; echo \"it's\" >&2; printf '%s\\n' \"$0\"; exit 7", "x y"])
    assert re.search(r"^lookout-guest: ready \(uptime [0-9.]+\)", console, re.M), console
    assert rc == (7 << 1) | 1, f"isa-debug-exit status {rc}: {console[-2000:]}"
    assert out == f"{debian_guest['RELEASE']}\nit's\nx y\n", repr(out)


@needs_qemu
def test_init_loads_virtio_modules_under_qemu(debian_guest, tmp_path):
    rc, console, out = qemu_run(debian_guest, tmp_path, ["cut", "-d", " ", "-f1", "/proc/modules"])
    assert rc == 1, console[-2000:]
    for m in ("virtio", "virtio_ring", "virtio_mmio", "virtio_blk", "virtio_net", "virtio_rng"):
        assert m in out.split(), f"{m} not loaded: {out!r}"
