"""Virtio devices: option errors and device set-up/teardown (fast, both builds, a test kernel),
and the Debian guest using a virtio disk, entropy and user networking (slow: two boots in all).

Boot 1 writes files to an ext4 disk (made on the host with mkfs.ext4), syncs, unmounts it; writes
one more file to a second disk and syncs without unmounting; reads /dev/hwrng; checks a read-only
disk is read-only in the guest (VIRTIO_BLK_F_RO: /sys/block/vdc/ro is 1, a raw write fails even
after `blockdev --setrw`; the device's own IOERR for writes is covered by test_virtio.c) and its
image is unchanged; gets
an address by DHCP over `--net user` and downloads a file from an HTTP server on the host's
loopback; then prints a marker and sleeps, and the test kills lookout with SIGKILL.  Boot 2 checks
every checksum on both disks (the second disk's journal is replayed: what was synced survived the
kill) and powers off; the host's e2fsck then finds the cleanly unmounted disk consistent."""

import hashlib
import http.server
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import assert_error, guest_timeout, kernel_backend, run_lookout


def _mkfs(path, size_mb=32):
    if not shutil.which("mkfs.ext4"):
        pytest.skip("mkfs.ext4 (e2fsprogs) is not installed")
    with open(path, "wb") as f:
        f.truncate(size_mb << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(path)], check=True)


# --------------------------------------------------------------------------- fast
def test_disk_option_errors(lookout_any, test_kernel, tmp_path):
    k = test_kernel("exit42")
    r = run_lookout(lookout_any, "run", "--cpu", kernel_backend(), "--kernel", k, "--disk",
                    tmp_path / "x.img,bogus", timeout=20)
    assert r.rc == 2, r
    assert_error(r, "--disk")
    r = run_lookout(lookout_any, "run", "--cpu", kernel_backend(), "--kernel", k, "--disk",
                    tmp_path / "missing.img", timeout=20)
    assert_error(r, "cannot open disk image")
    r = run_lookout(lookout_any, "run", "--cpu", kernel_backend(), "--kernel", k, "--net",
                    "bridge", timeout=20)
    assert r.rc == 2, r
    assert_error(r, "--net")
    many = []
    for _ in range(9):
        many.append("--rng")
    r = run_lookout(lookout_any, "run", "--cpu", kernel_backend(), "--kernel", k, *many,
                    timeout=20)
    assert_error(r, "at most 8")


def test_devices_attach_and_detach(lookout_any, test_kernel, tmp_path):
    """A guest that never touches the devices: they are created, registered and torn down
    cleanly (the sanitizer build reports leaks and races in teardown)."""
    img = tmp_path / "d.img"
    img.write_bytes(b"\0" * 65536)
    r = run_lookout(lookout_any, "run", "--cpu", kernel_backend(), "--kernel",
                    test_kernel("exit42"), "--disk", f"{img},bw=1M,iops=100", "--disk",
                    f"{img},ro", "--rng", "--net", "user,hostfwd=tcp::0-:22", timeout=20)
    # hostfwd port 0 is refused by the parser
    assert_error(r, "hostfwd")
    r = run_lookout(lookout_any, "run", "--cpu", kernel_backend(), "--kernel",
                    test_kernel("exit42"), "--disk", f"{img},bw=1M,iops=100", "--rng", "--net",
                    "user", timeout=20)
    assert r.rc == (42 << 1) | 1, r
    assert "Sanitizer" not in r.err, r


def test_disk_locked_by_another_vm(lookout_any, test_kernel, tmp_path):
    img = tmp_path / "d.img"
    img.write_bytes(b"\0" * 65536)
    r = run_lookout(lookout_any, "run", "--cpu", kernel_backend(), "--kernel",
                    test_kernel("exit42"), "--disk", img, "--disk", img, timeout=20)
    assert_error(r, "in use", "locked")


# --------------------------------------------------------------------------- Debian guest
class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass


@pytest.fixture
def http_dir(tmp_path):
    d = tmp_path / "www"
    d.mkdir()
    blob = os.urandom(300_000)
    (d / "blob").write_bytes(blob)

    def handler(*a, **kw):
        return _Quiet(*a, directory=str(d), **kw)

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv.server_address[1], hashlib.sha256(blob).hexdigest()
    srv.shutdown()


BOOT1 = r"""
set -x
mount /dev/vda /mnt || exit 10
dd if=/dev/urandom of=/mnt/a bs=4096 count=64 2>/dev/null
dd if=/dev/urandom of=/mnt/b bs=1000 count=333 2>/dev/null
mkdir -p /mnt/dir && echo hello >/mnt/dir/c
sha256sum /mnt/a /mnt/b /mnt/dir/c >/mnt/SUMS
sync
umount /mnt || exit 11
mkdir -p /m2 && mount /dev/vdb /m2 || exit 12
dd if=/dev/urandom of=/m2/k bs=4096 count=16 2>/dev/null
(cd /m2 && sha256sum k >SUMS)
sync
echo "HWRNG $(head -c 64 /dev/hwrng | wc -c) $(cat /sys/class/misc/hw_random/rng_current)"
echo "RO $(cat /sys/block/vdc/ro)"
mkdir -p /m3 && mount -o ro /dev/vdc /m3 && echo "RO-READ $(cat /m3/hello)" && umount /m3
blockdev --setrw /dev/vdc
if dd if=/dev/zero of=/dev/vdc bs=4096 count=1 oflag=direct 2>/dev/null; then
    echo RO-WRITE-ACCEPTED; else echo RO-WRITE-REFUSED; fi
ip link set eth0 up
printf '#!/bin/sh\n[ "$1" = bound ] && ip addr add $ip/$mask dev $interface && ip route add default via $router\nexit 0\n' >/tmp/dhcp
chmod +x /tmp/dhcp
udhcpc -i eth0 -s /tmp/dhcp -q -n -t 5 >/dev/null 2>&1
echo "ADDR $(ip -4 addr show eth0 | grep -o 'inet [0-9.]*')"
wget -q -O /tmp/blob http://10.0.2.2:PORT/blob && echo "NET $(sha256sum /tmp/blob)"
echo SYNCED-AND-WAITING
sleep 1000
"""

BOOT2 = r"""
mount /dev/vda /mnt || exit 20
(cd / && sha256sum -c /mnt/SUMS) && echo DISK1-OK
umount /mnt
mount /dev/vdb /m2 2>/dev/null || { mkdir -p /m2 && mount /dev/vdb /m2; } || exit 21
(cd /m2 && sha256sum -c SUMS) && echo DISK2-OK
umount /m2
"""


@pytest.mark.guest
def test_guest_disk_rng_net_and_kill(lookout_bin, debian_guest, tmp_path, http_dir):
    port, blob_sum = http_dir
    d1, d2, d3 = tmp_path / "d1.img", tmp_path / "d2.img", tmp_path / "ro.img"
    for d in (d1, d2, d3):
        _mkfs(d)
    # put one file on the read-only disk from the host (debugfs, no mount needed)
    hello = tmp_path / "hello"
    hello.write_text("from-the-host\n")
    subprocess.run(["debugfs", "-w", "-R", f"write {hello} hello", str(d3)], check=True,
                   capture_output=True)
    ro_before = hashlib.sha256(d3.read_bytes()).hexdigest()
    base = ["run", "--kernel", debian_guest["KERNEL"], "--initrd", debian_guest["INITRD"],
            "--append", debian_guest["APPEND"], "--mem", "512M", "--cpu", "auto"]

    # boot 1: write, sync, other checks, then SIGKILL while the guest sleeps
    argv = [str(lookout_bin), *base, "--disk", str(d1), "--disk", str(d2), "--disk",
            f"{d3},ro", "--rng", "--net", "user", "--", "sh", "-c",
            BOOT1.replace("PORT", str(port))]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         stdin=subprocess.DEVNULL, start_new_session=True)
    out = b""
    deadline = time.monotonic() + guest_timeout()
    os.set_blocking(p.stdout.fileno(), False)
    while b"SYNCED-AND-WAITING" not in out and time.monotonic() < deadline and p.poll() is None:
        chunk = p.stdout.read()
        if chunk:
            out += chunk
        else:
            time.sleep(0.2)
    os.killpg(p.pid, signal.SIGKILL)
    _, err = p.communicate()
    text = out.decode(errors="replace")
    assert "SYNCED-AND-WAITING" in text, f"{text[-3000:]}\n--- stderr ---\n{err.decode()[-3000:]}"
    assert "HWRNG 64 virtio_rng" in text, text
    assert "RO 1" in text, text
    assert "RO-READ from-the-host" in text, text
    assert "RO-WRITE-REFUSED" in text, text
    assert "ADDR inet 10.0.2.15" in text, text
    assert f"NET {blob_sum}" in text, text
    assert hashlib.sha256(d3.read_bytes()).hexdigest() == ro_before, "the ro image changed"
    # the first disk was unmounted before the kill: consistent on the host
    fsck = subprocess.run(["e2fsck", "-fn", str(d1)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr

    # boot 2: everything that was synced is there
    r = run_lookout(lookout_bin, *base, "--disk", str(d1), "--disk", str(d2), "--", "sh", "-c",
                    BOOT2, timeout=guest_timeout())
    assert r.rc == 0, r
    assert "DISK1-OK" in r.out and "DISK2-OK" in r.out, r
    fsck = subprocess.run(["e2fsck", "-fn", str(d1)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def test_tap_backend_opens(lookout_any, test_kernel):
    """`--net tap:IF` as root: the TAP device is created/attached and released at exit."""
    if os.geteuid() != 0 or not os.path.exists("/dev/net/tun"):
        pytest.skip("needs root and /dev/net/tun")
    r = run_lookout(lookout_any, "run", "--cpu", kernel_backend(), "--kernel",
                    test_kernel("exit42"), "--net", "tap:lkvtest0", timeout=20)
    assert r.rc == (42 << 1) | 1, r
    assert "Sanitizer" not in r.err, r


@pytest.mark.parametrize("cpu,iters", [pytest.param("kvm", 300, marks=pytest.mark.kvm),
                                       pytest.param("bt", 2000, marks=pytest.mark.bt)])
def test_hostile_driver(lookout_any, test_kernel, tmp_path, cpu, iters):
    """tests/guests/virtiohostile.c attacks every virtio device (random and boundary register
    values, malformed rings, resets) and the whole port space; the VMM must survive (the
    sanitizer build reports any memory error) and every device must still answer.  The second
    NIC is rate-limited, so the throttled transmit path and its timer re-kick are attacked too."""
    d1, d2 = tmp_path / "a.img", tmp_path / "b.img"
    for d in (d1, d2):
        d.write_bytes(b"\0" * (1 << 20))
    for seed in (1, 7):
        r = run_lookout(lookout_any, "run", "--cpu", cpu, "--kernel",
                        test_kernel("virtiohostile"), "--append", f"seed={seed} iters={iters}",
                        "--disk", d1, "--disk", f"{d2},ro", "--rng", "--net", "user",
                        "--net", "user,bw=64K,pps=200,burst=50", timeout=300)
        assert r.rc == 1, r  # exit value 0
        assert "all devices still answer" in r.out, r
        assert "Sanitizer" not in r.err, r


# --------------------------------------------------------------------------- NIC rate limits
DHCP = r"""
ip link set eth0 up
printf '#!/bin/sh\n[ "$1" = bound ] && ip addr add $ip/$mask dev $interface && ip route add default via $router\nexit 0\n' >/tmp/dhcp
chmod +x /tmp/dhcp
udhcpc -i eth0 -s /tmp/dhcp -q -n -t 5 >/dev/null 2>&1
"""


def _run_marked(argv, timeout):
    """Runs lookout; returns ({marker: host time}, text, stderr, rc) for the M:NAME lines the
    guest prints (the guest's clock is not trusted under the software CPU)."""
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         stdin=subprocess.DEVNULL, start_new_session=True)
    marks, text = {}, ""
    deadline = time.monotonic() + timeout
    try:
        for raw in p.stdout:
            line = raw.decode(errors="replace")
            text += line
            if line.startswith("M:"):
                marks[line[2:].split()[0]] = time.monotonic()
            if time.monotonic() > deadline:
                break
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        _, err = p.communicate()
    return marks, text, err.decode(errors="replace"), p.returncode


@pytest.mark.guest
def test_guest_net_rate_limits(lookout_bin, debian_guest, http_dir_big):
    """`--net user,rx-bw=256K,tx-bw=256K`: a 1 MiB download and a 1 MiB upload each take at
    least (1 MiB - the 256 KiB burst) / 256 KiB/s = 3 s (checked with a margin for the marker
    lines' latency: >= 2.5 s; unlimited it took 0.8 s under the software CPU on a loaded host),
    and both arrive whole (transmit throttling waits, it never drops)."""
    port, blob_sum, sink = http_dir_big
    script = DHCP + f"""
echo M:R0; wget -q -O /tmp/blob http://10.0.2.2:{port}/blob; echo M:R1
echo "SUM $(sha256sum /tmp/blob)"
echo M:T0; dd if=/tmp/blob bs=65536 2>/dev/null | nc 10.0.2.2 {sink.port}; echo M:T1
"""
    argv = [str(lookout_bin), "run", "--kernel", debian_guest["KERNEL"], "--initrd",
            debian_guest["INITRD"], "--append", debian_guest["APPEND"], "--mem", "512M", "--cpu",
            "auto", "--net", "user,rx-bw=256K,tx-bw=256K", "--", "sh", "-c", script]
    marks, text, err, rc = _run_marked(argv, guest_timeout())
    assert rc == 0, f"{text[-2000:]}\n--- stderr ---\n{err[-2000:]}"
    assert f"SUM {blob_sum}" in text, text
    rx = marks["R1"] - marks["R0"]
    assert rx >= 2.5, f"1 MiB arrived in {rx:.2f} s: the 256 KiB/s receive limit was not applied"
    assert rx < 60, f"1 MiB took {rx:.2f} s at a 256 KiB/s limit: throttling stalls"
    sink.done.wait(30)
    assert sink.sha256 == blob_sum, "the upload arrived damaged or short (throttling dropped?)"
    assert sink.seconds >= 2.5, f"1 MiB left in {sink.seconds:.2f} s: the 256 KiB/s transmit " \
                                "limit was not applied"
    assert sink.seconds < 60, f"upload took {sink.seconds:.2f} s: throttling stalls"


class _Sink:
    """A TCP server on the host's loopback that hashes one connection's bytes and times it from
    accept to EOF."""

    def __init__(self):
        import socket
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.port = self.sock.getsockname()[1]
        self.done = threading.Event()
        self.sha256, self.seconds = None, None
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        try:
            c, _ = self.sock.accept()
        except OSError:
            return
        t0, h = time.monotonic(), hashlib.sha256()
        with c:
            while True:
                b = c.recv(1 << 16)
                if not b:
                    break
                h.update(b)
        self.seconds, self.sha256 = time.monotonic() - t0, h.hexdigest()
        self.done.set()

    def close(self):
        self.sock.close()


@pytest.fixture
def http_dir_big(tmp_path):
    d = tmp_path / "www"
    d.mkdir()
    blob = os.urandom(1 << 20)
    (d / "blob").write_bytes(blob)

    def handler(*a, **kw):
        return _Quiet(*a, directory=str(d), **kw)

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    sink = _Sink()
    yield srv.server_address[1], hashlib.sha256(blob).hexdigest(), sink
    srv.shutdown()
    sink.close()


# --------------------------------------------------------------------------- TAP in a netns
TAP_NET = "192.168.77"


def _ip(*args):
    return subprocess.run(["ip", *args], capture_output=True, text=True)


@pytest.fixture
def tap_netns(tmp_path):
    """A private network namespace holding a TAP device with address .1 and an HTTP server on
    it; yields (netns, ifname, port, sha256 of /blob).  Everything goes with the namespace."""
    if os.geteuid() != 0:
        pytest.skip("needs root: creates a network namespace and a TAP device")
    if not shutil.which("ip"):
        pytest.skip("needs the ip command (iproute2)")
    if not os.path.exists("/dev/net/tun"):
        pytest.skip("needs /dev/net/tun (the tun module)")
    ns, tap, port = f"lookout-t{os.getpid()}", "lktap0", 8077
    r = _ip("netns", "add", ns)
    if r.returncode:
        pytest.skip(f"cannot create a network namespace: {r.stderr.strip()}")
    srv = None
    try:
        for cmd in (["link", "set", "lo", "up"], ["tuntap", "add", tap, "mode", "tap"],
                    ["addr", "add", f"{TAP_NET}.1/24", "dev", tap], ["link", "set", tap, "up"]):
            r = _ip("-n", ns, *cmd)
            if r.returncode:
                pytest.skip(f"ip -n {ns} {' '.join(cmd)} failed: {r.stderr.strip()}")
        www = tmp_path / "tapwww"
        www.mkdir()
        blob = os.urandom(200_000)
        (www / "blob").write_bytes(blob)
        srv = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "http.server",
                                "-b", f"{TAP_NET}.1", "-d", str(www), str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        yield ns, tap, port, hashlib.sha256(blob).hexdigest()
    finally:
        if srv:
            srv.kill()
            srv.wait()
        _ip("netns", "del", ns)
        assert ns not in _ip("netns", "list").stdout, f"network namespace {ns} was left behind"


@pytest.mark.guest
@pytest.mark.root
def test_guest_tap_in_netns(lookout_bin, debian_guest, tap_netns):
    """`--net tap:IF` with lookout inside a network namespace: the guest takes a static address
    on the TAP's subnet, pings the host side and downloads a file from it (checksum verified)."""
    ns, tap, port, blob_sum = tap_netns
    script = f"""
ip addr add {TAP_NET}.2/24 dev eth0 && ip link set eth0 up
ping -c 2 -W 5 {TAP_NET}.1 >/dev/null && echo PING-OK
for i in 1 2 3 4 5; do
    wget -q -O /tmp/blob http://{TAP_NET}.1:{port}/blob && break; sleep 1
done
echo "SUM $(sha256sum /tmp/blob)"
"""
    r = subprocess.run(["ip", "netns", "exec", ns, str(lookout_bin), "run", "--kernel",
                        debian_guest["KERNEL"], "--initrd", debian_guest["INITRD"], "--append",
                        debian_guest["APPEND"], "--mem", "512M", "--cpu", "auto", "--net",
                        f"tap:{tap}", "--", "sh", "-c", script],
                       capture_output=True, text=True, timeout=guest_timeout(),
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, f"{r.stdout[-2000:]}\n--- stderr ---\n{r.stderr[-2000:]}"
    assert "PING-OK" in r.stdout, r.stdout
    assert f"SUM {blob_sum}" in r.stdout, r.stdout
