"""Snapshots: `lookout ctl SOCK snapshot PATH`, `lookout run --restore PATH`, `lookout ctl SOCK
rollback PATH`, under each backend and across them, with the `counter` test kernel (it prints
"count N ok" every 20 ms and checks that RAM and XMM7 still hold the previous count, so a restore
that mixes up memory and registers prints "BAD").  Bad snapshots must be refused with a message
naming the part, and a refused rollback must leave the running VM untouched.  Virtio devices:
configurations that disagree and tampered sections are refused, snapshots of the hostile
driver's campaign all restore, and the Debian guest with a disk, NIC and entropy device survives
a rollback in place and a (lazy) restore in a new process.
"""
import hashlib
import json
import os
import re
import struct
import subprocess
import time

import pytest

from conftest import GUESTS, assert_error, kvm_usable, run_lookout
from test_virtio import http_dir  # noqa: F401 (fixture)

pytestmark = [pytest.mark.api]

COUNT = re.compile(r"count (\d+) (ok|BAD)")


def backends():
    return [pytest.param("bt", marks=pytest.mark.bt), pytest.param("kvm", marks=pytest.mark.kvm)]


def wait_for(pred, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


class VM:
    """A lookout process with a control socket, its output collected in files."""

    def __init__(self, binary, tmp, name, args, stdin=None):
        self.bin, self.sock = binary, tmp / f"{name}.sock"
        self.outp, self.errp = tmp / f"{name}.out", tmp / f"{name}.err"
        self.out, self.err = open(self.outp, "w+b"), open(self.errp, "w+b")
        self.p = subprocess.Popen([str(binary), "run", *map(str, args), "--api", str(self.sock)],
                                  stdin=subprocess.PIPE, stdout=self.out, stderr=self.err)
        wait_for(lambda: self.sock.exists() or self.p.poll() is not None, 20, "the socket")
        assert self.p.poll() is None, f"lookout exited: {self.diag()}"

    def text(self):
        self.out.flush()
        return self.outp.read_bytes().decode(errors="replace")

    def counts(self):
        return [(int(n), s) for n, s in COUNT.findall(self.text())]

    def last(self):
        c = self.counts()
        return c[-1][0] if c else -1

    def wait_count(self, n, timeout=30):
        wait_for(lambda: self.last() >= n or self.p.poll() is not None, timeout, f"count {n}")
        assert self.p.poll() is None, f"lookout exited: {self.diag()}"

    def ctl(self, *cmd, ok=True):
        r = run_lookout(self.bin, "ctl", self.sock, *cmd, timeout=120)
        if ok:
            assert r.rc == 0, f"ctl {cmd} failed: {r!r}{self.diag()}"
            return json.loads(r.out.strip().splitlines()[-1])
        return r

    def diag(self):
        return (f"\n--- stdout ---\n{self.text()[-1500:]}\n--- stderr ---\n"
                f"{self.errp.read_bytes().decode(errors='replace')[-1500:]}")

    def close(self):
        if self.p.poll() is None:
            try:
                run_lookout(self.bin, "ctl", self.sock, "quit", timeout=10)
                self.p.wait(timeout=10)
            except Exception:
                self.p.kill()
                self.p.wait()
        self.p.stdin.close()
        self.out.close()
        self.err.close()
        assert "Sanitizer" not in self.errp.read_bytes().decode(errors="replace"), self.diag()


@pytest.fixture
def counter():
    k = GUESTS / "counter.elf"
    if not k.exists():
        pytest.fail(f"{k} is missing: run `make guests`")
    return k


@pytest.fixture
def vms():
    made = []
    yield made
    for v in made:
        v.close()


def start(vms, binary, tmp, name, *args):
    v = VM(binary, tmp, name, args)
    vms.append(v)
    return v


def take(vm, path, *flags):
    """snapshot --stop, returns the last count printed before it; the VM stays paused."""
    r = vm.ctl("snapshot", path, "--stop", *flags)
    assert r["ok"] and r["state"] == "paused", r
    # the console thread drains what the guest printed before the pause: wait until it is quiet
    prev, end = None, time.monotonic() + 5
    while time.monotonic() < end:
        cur = vm.text()
        if cur == prev:
            break
        prev = cur
        time.sleep(0.3)
    # the pause may split a line ("count 6 o"): the guest finishes it after the restore, so the
    # first whole line it prints then is the one after
    c = vm.last()
    tail = vm.text()[vm.text().rfind("count"):]
    if tail and not tail.endswith("\n") and not COUNT.fullmatch(tail.rstrip("\r")):
        c += 1
    return c, r


def check_continues(res, from_count, until):
    counts = [(int(n), s) for n, s in COUNT.findall(res.out)]
    assert counts, f"no count after the restore: {res!r}"
    assert counts[0][0] == from_count + 1, f"resumed at {counts[0]}, expected {from_count + 1}"
    assert all(s == "ok" for _, s in counts), f"inconsistent state after restore: {res!r}"
    nums = [n for n, _ in counts]
    assert nums == list(range(from_count + 1, until + 1)), f"gaps or repeats: {nums[:20]}..."


def restore_run(binary, path, backend, *extra, timeout=60):
    return run_lookout(binary, "run", "--restore", path, "--cpu", backend, *extra,
                       timeout=timeout)


@pytest.mark.parametrize("backend", backends())
def test_snapshot_and_restore(lookout_any, counter, tmp_path, vms, backend):
    vm = start(vms, lookout_any, tmp_path, "a", "--kernel", counter, "--mem", "64M",
               "--cpu", backend, "--append", "stop=250")
    vm.wait_count(5)
    snap = tmp_path / "s"
    c, r = take(vm, snap)
    assert r["state_bytes"] > 0 and r["mem_pages"] > 0, r
    # sparse: a 64 MiB guest that touched a few pages takes a few pages on disk
    assert os.stat(str(snap) + ".mem").st_blocks * 512 < 4 << 20
    vm.ctl("resume")
    vm.wait_count(c + 5)
    vm.close()
    res = restore_run(lookout_any, snap, backend)
    assert res.rc == 1, res  # counter's stop=250 survives in RAM: value 0 -> status 1
    check_continues(res, c, 250)


@pytest.mark.bt
def test_restore_eager_and_zstd(lookout_any, counter, tmp_path, vms):
    vm = start(vms, lookout_any, tmp_path, "a", "--kernel", counter, "--mem", "64M",
               "--cpu", "bt", "--append", "stop=250")
    vm.wait_count(3)
    c, _ = take(vm, tmp_path / "raw")
    c2, r = take(vm, tmp_path / "z", "--zstd")
    assert c2 == c
    assert r["mem_bytes"] < 64 << 10, r  # compressed: a few KiB
    res = restore_run(lookout_any, tmp_path / "raw", "bt", "--restore-eager")
    assert res.rc == 1, res
    check_continues(res, c, 250)
    res = restore_run(lookout_any, tmp_path / "z", "bt")
    assert res.rc == 1, res
    check_continues(res, c, 250)
    # lazy (userfaultfd): the raw layout only
    res = restore_run(lookout_any, tmp_path / "raw", "bt", "--restore-lazy")
    assert res.rc == 1, res
    check_continues(res, c, 250)
    assert_error(restore_run(lookout_any, tmp_path / "z", "bt", "--restore-lazy"), "lazy",
                 "raw memory layout")


@pytest.mark.kvm
def test_cross_backend(lookout_any, counter, tmp_path, vms):
    """kvm -> bt -> kvm: the neutral state carries the vCPU, LAPIC, IOAPIC, PIT and devices."""
    vm = start(vms, lookout_any, tmp_path, "k", "--kernel", counter, "--mem", "64M",
               "--cpu", "kvm", "--append", "stop=300")
    vm.wait_count(5)
    c, _ = take(vm, tmp_path / "k1")
    vm.close()
    vb = start(vms, lookout_any, tmp_path, "b", "--restore", tmp_path / "k1", "--cpu", "bt")
    vb.wait_count(c + 10)
    counts = vb.counts()
    assert counts[0][0] == c + 1 and all(s == "ok" for _, s in counts), vb.diag()
    c2, _ = take(vb, tmp_path / "b1")
    vb.close()
    res = restore_run(lookout_any, tmp_path / "b1", "kvm")
    assert res.rc == 1, res
    check_continues(res, c2, 300)


@pytest.mark.kvm
def test_cpu_model_the_target_cannot_present(lookout_any, counter, tmp_path, vms):
    """lookout-v1 under the software CPU has RDTSCP, which kvm_pvm cannot present: refused (on a
    host whose KVM can present it, the restore must simply work)."""
    vm = start(vms, lookout_any, tmp_path, "b", "--kernel", counter, "--mem", "64M",
               "--cpu", "bt", "--append", "stop=250")
    vm.wait_count(2)
    c, _ = take(vm, tmp_path / "b")
    vm.close()
    res = restore_run(lookout_any, tmp_path / "b", "kvm")
    if res.rc == 1:
        check_continues(res, c, 250)
    else:
        assert_error(res, "cannot be presented")
        assert "CPUID" in res.err, res


@pytest.mark.parametrize("backend", backends())
def test_rollback_in_place(lookout_any, counter, tmp_path, vms, backend):
    vm = start(vms, lookout_any, tmp_path, "a", "--kernel", counter, "--mem", "64M",
               "--cpu", backend)
    vm.wait_count(5)
    snap = tmp_path / "s"
    c, _ = take(vm, snap)
    vm.ctl("resume")
    for rounds, mode in ((1, []), (2, ["--eager"]), (3, ["--lazy"])):
        vm.wait_count(c + 10)
        r = vm.ctl("rollback", snap, *mode)
        assert r["state"] == "running" and r["mapped"] == (mode == []), r

        def jumps():
            nums = [x for x, _ in vm.counts()]
            return [(a, b) for a, b in zip(nums, nums[1:]) if b != a + 1]
        # each rollback shows as one jump back to c + 1 (console output may lag the reply)
        wait_for(lambda: len(jumps()) >= rounds and vm.last() > c + 3, 20,
                 "counting after the rollback")
        # (c + 2: a line split by the pause at the rollback can hide the first one)
        assert all(c + 1 <= b <= c + 2 and a > c for a, b in jumps()), \
            f"jumps {jumps()}, snapshot at {c}{vm.diag()}"
        assert all(s == "ok" for _, s in vm.counts()), vm.diag()


@pytest.mark.bt
def test_console_input_after_restore(lookout_any, test_kernel, tmp_path, vms):
    """uartirq echoes COM1 input through IOAPIC interrupts: after a restore the console still
    delivers input and the guest still gets its interrupts."""
    k = test_kernel("uartirq")
    vm = start(vms, lookout_any, tmp_path, "u", "--kernel", k, "--cpu", "bt", "--mem", "64M")
    wait_for(lambda: "uartirq: ready" in vm.text(), 20, "uartirq ready")
    vm.ctl("snapshot", tmp_path / "u", "--stop")
    vm.close()
    res = run_lookout(lookout_any, "run", "--restore", tmp_path / "u", "--cpu", "bt",
                      stdin_data="xyq", timeout=30)
    assert res.rc == 1, res
    assert "<x>" in res.out and "<y>" in res.out, res


# --------------------------------------------------------------------------- bad input
def reseal(data):
    return data[:-32] + hashlib.sha256(data[:-32]).digest()


def section_offset(data, name):
    off = 146 + struct.unpack_from("<H", data, 144)[0]
    for _ in range(struct.unpack_from("<I", data, 140)[0]):
        n = data[off:off + 24].rstrip(b"\0").decode()
        ln = struct.unpack_from("<Q", data, off + 32)[0]
        if n == name:
            return off
        off += 40 + ln
    raise KeyError(name)


@pytest.fixture
def good_snapshot(lookout_bin, counter, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("good")
    vm = VM(lookout_bin, tmp, "g", ["--kernel", counter, "--mem", "64M", "--cpu", "bt",
                                    "--append", "stop=250"])
    try:
        vm.wait_count(2)
        c, _ = take(vm, tmp / "good")
    finally:
        vm.close()
    return tmp / "good", c


def variant(tmp, good, name, state=None, mem=None):
    p = tmp / name
    p.write_bytes(state if state is not None else good.read_bytes())
    m = pathlib_mem(good)
    (tmp / (name + ".mem")).write_bytes(mem if mem is not None else m.read_bytes())
    return p


def pathlib_mem(p):
    return p.with_name(p.name + ".mem")


@pytest.mark.bt
def test_bad_snapshots_refused(lookout_any, good_snapshot, tmp_path):
    good, _ = good_snapshot
    data = good.read_bytes()
    cases = []
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x40
    cases.append(("flipped", bytes(flipped), None, ["checksum"]))
    cases.append(("truncated", data[:len(data) - 100], None, ["checksum", "truncated"]))
    v2 = bytearray(data)
    v2[8] = 2
    cases.append(("version", reseal(bytes(v2)), None, ["version 2"]))
    big = bytearray(data)
    struct.pack_into("<Q", big, section_offset(data, "pit") + 32, (4 << 20) + 1)
    cases.append(("oversized", reseal(bytes(big)), None, ["section pit", "cap"]))
    # a section this lookout does not know, not flagged optional: appended, count bumped
    body = bytearray(data[:-32])
    struct.pack_into("<I", body, 140, struct.unpack_from("<I", body, 140)[0] + 1)
    body += b"future_dev".ljust(24, b"\0") + struct.pack("<IIQ", 1, 0, 4) + b"abcd"
    cases.append(("unknown", reseal(bytes(body) + bytes(32)), None,
                  ["section future_dev", "not optional"]))
    # the same flagged optional is skipped: the restore works
    opt = bytearray(body)
    struct.pack_into("<I", opt, len(opt) - 4 - 16 + 4, 1)
    p = variant(tmp_path, good, "optional", reseal(bytes(opt) + bytes(32)))
    res = restore_run(lookout_any, p, "bt", timeout=30)
    assert res.rc == 1, res
    ver = bytearray(data)
    struct.pack_into("<I", ver, section_offset(data, "com1") + 24, 7)
    cases.append(("secversion", reseal(bytes(ver)), None, ["section com1", "version 7"]))
    mem = bytearray(pathlib_mem(good).read_bytes())
    mem[24] ^= 1  # the snapshot id in the memory header
    cases.append(("othermem", None, bytes(mem), ["memory file", "does not match"]))
    for name, state, memdata, words in cases:
        p = variant(tmp_path, good, name, state, memdata)
        res = restore_run(lookout_any, p, "bt", timeout=30)
        assert_error(res, *words)
        assert "count" not in res.out, f"{name}: the guest ran: {res!r}"
    # a corrupted page is caught by the digest when memory is read (eager)
    mem = bytearray(pathlib_mem(good).read_bytes())
    first_data = next(i for i in range(4096, len(mem), 4096) if any(mem[i:i + 4096]))
    mem[first_data + 5] ^= 0xff
    p = variant(tmp_path, good, "badpage", None, bytes(mem))
    assert_error(restore_run(lookout_any, p, "bt", "--restore-eager", timeout=30),
                 "digest", "corrupted")
    # missing memory file
    p = tmp_path / "nomem"
    p.write_bytes(data)
    assert_error(restore_run(lookout_any, p, "bt", timeout=30), "nomem.mem")
    # configuration that disagrees with the command line
    assert_error(run_lookout(lookout_any, "run", "--restore", good, "--mem", "128M"),
                 "disagrees")
    assert_error(run_lookout(lookout_any, "run", "--restore", good, "--smp", "2"), "disagrees")
    assert_error(run_lookout(lookout_any, "run", "--restore", good, "--kernel", good),
                 "does not apply", "do not apply")


@pytest.mark.bt
def test_refused_rollback_changes_nothing(lookout_any, good_snapshot, counter, tmp_path, vms):
    good, c = good_snapshot
    # the VM comes from the good snapshot itself, so it presents the same CPU model (a VM booted
    # here would measure the host TSC itself; on a loaded host that can differ by a MHz, and the
    # CPUID check would refuse before the part this test is about)
    vm = start(vms, lookout_any, tmp_path, "r", "--restore", good, "--cpu", "bt")
    vm.wait_count(c + 20)
    # cpu0 parses but carries a CR0 no CPU accepts: refused in the apply phase, after the
    # devices' checks passed; the state saved just before is put back
    data = bytearray(good.read_bytes())
    o = section_offset(bytes(data), "cpu0") + 40 + 16 * 8 + 16 + 8 * 23 + 20  # cr0
    struct.pack_into("<Q", data, o, struct.unpack_from("<Q", data, o)[0] | 1 << 40)
    bad = variant(tmp_path, good, "cr0", reseal(bytes(data)))
    flipped = bytearray(good.read_bytes())
    flipped[200] ^= 1
    corrupt = variant(tmp_path, good, "flip", bytes(flipped))
    for b, words in ((bad, ["nothing was restored", "CR0"]), (corrupt, ["checksum"])):
        r = vm.ctl("rollback", b, ok=False)
        assert r.rc != 0 and all(w in r.out for w in words), r
    n = vm.last()
    vm.wait_count(n + 5)
    counts = [x for x, _ in vm.counts()]
    assert counts == list(range(counts[0], counts[-1] + 1)), "the VM jumped after a refusal"
    assert vm.ctl("status")["state"] == "running"


def virtio_payload(data, name):
    return section_offset(data, name) + 40


def patch_queue0(data, name, size=8, ready=1, desc=0x200000, avail=0x201000, used=0x202000,
                 last=0, used_idx=0):
    """A virtio section made to claim a negotiated device with queue 0 set up as given."""
    b = bytearray(data)
    p = virtio_payload(data, name)
    struct.pack_into("<I", b, p + 4, 0x0f)         # status: ... FEATURES_OK | DRIVER_OK
    struct.pack_into("<Q", b, p + 28, 1 << 32)     # driver features: VERSION_1
    struct.pack_into("<HBQQQHH", b, p + 37, size, ready, desc, avail, used, last, used_idx)
    return reseal(bytes(b))


@pytest.mark.bt
def test_virtio_snapshot_config_and_tampering(lookout_any, counter, tmp_path, vms):
    """A VM with a disk, an entropy device and a NIC (the counter kernel leaves them in reset):
    the restore needs the same devices (a missing disk, a disk of another size, another NIC
    count are refused, naming what differs), an image changed since the snapshot is refused
    unless --restore-force, and tampered virtio sections (ring outside RAM, a queue size that is
    not a power of two, requests in flight, another device's state) are refused naming the
    section and the field, before the guest runs."""
    img = tmp_path / "d.img"
    with open(img, "wb") as f:
        f.truncate(8 << 20)
    vm = start(vms, lookout_any, tmp_path, "v", "--kernel", counter, "--mem", "64M", "--cpu", "bt",
               "--append", "stop=60", "--disk", img, "--rng", "--net", "user")
    vm.wait_count(3)
    snap = tmp_path / "s"
    c, _ = take(vm, snap)
    vm.close()
    data = snap.read_bytes()
    for n in ("virtio0-blk", "virtio1-rng", "virtio2-net"):
        section_offset(data, n)  # one section per device
    devs = ["--disk", img, "--rng", "--net", "user"]
    res = restore_run(lookout_any, snap, "bt", *devs)
    assert res.rc == 1, res
    check_continues(res, c, 60)
    # configuration that disagrees
    assert_error(restore_run(lookout_any, snap, "bt", "--rng", "--net", "user"), "devices are",
                 "virtio0-blk", "--disk")
    assert_error(restore_run(lookout_any, snap, "bt", *devs, "--net", "user"), "devices are",
                 "virtio3-net")
    other = tmp_path / "e.img"
    with open(other, "wb") as f:
        f.truncate(16 << 20)
    assert_error(restore_run(lookout_any, snap, "bt", "--disk", other, "--rng", "--net", "user"),
                 "section virtio0-blk", "16384 sectors", "32768")
    # the image written (its mtime moves): refused unless forced
    st = os.stat(img)
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert_error(restore_run(lookout_any, snap, "bt", *devs), "section virtio0-blk",
                 "not in the state", "--restore-force")
    res = restore_run(lookout_any, snap, "bt", *devs, "--restore-force")
    assert res.rc == 1, res
    check_continues(res, c, 60)
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns))
    # tampered sections (re-sealed, so the checksum passes and the device's check must refuse)
    cases = [
        ("ring", patch_queue0(data, "virtio0-blk", desc=1 << 40),
         ["section virtio0-blk", "queue 0", "outside guest RAM"]),
        ("size", patch_queue0(data, "virtio1-rng", size=12),
         ["section virtio1-rng", "queue 0", "power of two"]),
        ("inflight", patch_queue0(data, "virtio2-net", last=3, used_idx=1),
         ["section virtio2-net", "queue 0", "in flight"]),
        ("kind", reseal(data[:virtio_payload(data, "virtio1-rng")] + b"\x02" +
                        data[virtio_payload(data, "virtio1-rng") + 1:]),
         ["section virtio1-rng"]),
    ]
    ver = bytearray(data)
    struct.pack_into("<I", ver, section_offset(data, "virtio2-net") + 24, 2)
    cases.append(("version", reseal(bytes(ver)), ["section virtio2-net", "version 2"]))
    for name, state, words in cases:
        p = variant(tmp_path, snap, name, state)
        res = restore_run(lookout_any, p, "bt", *devs, timeout=30)
        assert_error(res, *words)
        assert "count" not in res.out, f"{name}: the guest ran: {res!r}"


@pytest.mark.bt
def test_hostile_driver_snapshots_restore(lookout_any, test_kernel, tmp_path, vms):
    """Snapshots taken while tests/guests/virtiohostile.c attacks every virtio device (random
    register values, bad rings, half-negotiated features, broken and reset devices, requests in
    flight) must all restore and run the campaign to its end: the load-time validation accepts
    every state a device can reach, and quiescing leaves no request half done."""
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    for d in (a, b):
        with open(d, "wb") as f:
            f.truncate(1 << 20)
    devs = ["--disk", a, "--disk", f"{b},ro", "--rng", "--net", "user"]
    vm = start(vms, lookout_any, tmp_path, "h", "--kernel", test_kernel("virtiohostile"),
               "--cpu", "bt", "--append", "seed=3 iters=60000", *devs)
    snaps = []
    for i in range(4):  # the campaign runs ~1.5 s with the translator on an idle host
        time.sleep(0.1)
        if vm.p.poll() is not None:
            break
        r = vm.ctl("snapshot", tmp_path / f"h{i}", ok=False)
        if r.rc == 0:
            snaps.append(tmp_path / f"h{i}")
    vm.p.wait(timeout=120)
    assert "all devices still answer" in vm.text(), vm.diag()
    assert len(snaps) >= 2, f"only {len(snaps)} snapshots before the campaign ended{vm.diag()}"
    for s in snaps:
        # the campaign wrote to the disk after the snapshot: forced (what the guest reads back
        # from a.img does not matter to it)
        res = restore_run(lookout_any, s, "bt", *devs, "--restore-force", timeout=120)
        assert res.rc == 1 and "all devices still answer" in res.out, (s.name, res)
        assert "Sanitizer" not in res.err, res


@pytest.mark.kvm
def test_hostile_driver_snapshot_kvm_to_bt(lookout_bin, test_kernel, tmp_path, vms):
    """Virtio device state is backend-neutral: snapshots of the hostile driver's campaign under
    KVM (interrupt lines in the in-kernel IOAPIC) resume under the software CPU and finish."""
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    for d in (a, b):
        with open(d, "wb") as f:
            f.truncate(1 << 20)
    devs = ["--disk", a, "--disk", f"{b},ro", "--rng", "--net", "user"]
    vm = start(vms, lookout_bin, tmp_path, "k", "--kernel", test_kernel("virtiohostile"),
               "--cpu", "kvm", "--append", "seed=5 iters=400", *devs)
    snaps = []
    for i in range(3):
        time.sleep(1.2)
        if vm.p.poll() is not None:
            break
        if vm.ctl("snapshot", tmp_path / f"k{i}", ok=False).rc == 0:
            snaps.append(tmp_path / f"k{i}")
    vm.p.wait(timeout=120)
    assert "all devices still answer" in vm.text(), vm.diag()
    assert snaps, f"no snapshot before the campaign ended{vm.diag()}"
    for s in snaps:
        res = restore_run(lookout_bin, s, "bt", *devs, "--restore-force", timeout=120)
        assert res.rc == 1 and "all devices still answer" in res.out, (s.name, res)


@pytest.mark.bt
def test_save_never_corrupts_previous(lookout_any, counter, tmp_path, vms):
    vm = start(vms, lookout_any, tmp_path, "a", "--kernel", counter, "--mem", "64M",
               "--cpu", "bt", "--append", "stop=250")
    vm.wait_count(3)
    snap = tmp_path / "s"
    c, _ = take(vm, snap)
    before = snap.read_bytes()
    # make the next save fail midway: its temporary memory file cannot be created
    os.mkdir(str(snap) + ".mem.tmp")
    r = vm.ctl("snapshot", snap, ok=False)
    assert r.rc != 0 and "s.mem.tmp" in r.out, r
    assert snap.read_bytes() == before
    vm.close()
    res = restore_run(lookout_any, snap, "bt")
    assert res.rc == 1, res
    check_continues(res, c, 250)


# --------------------------------------------------------------------------- the Debian guest
class Shell:
    """The Debian guest's console as a line reader on top of a VM (stdin is a pipe)."""

    def __init__(self, vm):
        self.vm = vm

    def send(self, line):
        self.vm.p.stdin.write(line.encode() + b"\n")
        self.vm.p.stdin.flush()

    def wait_text(self, pattern, start=0, timeout=60):
        rx = re.compile(pattern)
        wait_for(lambda: rx.search(self.vm.text(), start) or self.vm.p.poll() is not None,
                 timeout, repr(pattern))
        m = rx.search(self.vm.text(), start)
        assert m, f"no {pattern!r}{self.vm.diag()}"
        return m


TICK = re.compile(r"tick=(\d+)")


def cp_image(src, dst):
    """The user's side of a disk snapshot: a sparse copy that keeps the mtime (cp -p), which is
    what lookout compares (with the size) to tell the image is as the snapshot saw it."""
    subprocess.run(["cp", "-p", "--sparse=always", str(src), str(dst)], check=True)


NETUP = ("ip link set eth0 up && printf '#!/bin/sh\\n[ \"$1\" = bound ] && ip addr add $ip/$mask "
         "dev $interface && ip route add default via $router\\nexit 0\\n' >/tmp/dhcp && "
         "chmod +x /tmp/dhcp && udhcpc -i eth0 -s /tmp/dhcp -q -n -t 5 >/dev/null 2>&1; "
         "echo ADDR=$(ip -4 addr show eth0 | grep -o 'inet [0-9.]*' | tr ' ' _)")


def wget_line(port, tag):
    return (f"wget -q -O /tmp/blob http://10.0.2.2:{port}/blob; "
            f"echo {tag}=$(sha256sum </tmp/blob | cut -c1-64)")


@pytest.mark.guest
def test_debian_counter_survives_restore_and_rollback(lookout_bin, debian_guest, tmp_path, vms,
                                                      http_dir):
    """One boot with a virtio disk (ext4), entropy device and user network.  A shell loop counts
    in a tmpfs file, in a file on the disk (synced) and on the console; snapshot (the image is
    copied with cp -p while the VM is paused).  Then, in place: the image changed since the
    snapshot, so a rollback is refused naming the disk; with the image put back (cp -p) the
    rollback works: the counter continues from the snapshot's value, a tmpfs file deleted after
    the snapshot is back, and a disk file rewritten after it reads (page cache dropped) as it
    was.  Then a new process `run --restore --restore-lazy` (memory through userfaultfd) from
    the same snapshot: the console takes commands, the counter continues, the entropy device
    delivers, the network downloads from the host (DHCP lease and ARP survive, libslirp's state
    is not needed, and a new lease is granted), the disk counter equals the tmpfs counter after
    the page cache is dropped, and the host's e2fsck finds the unmounted image clean."""
    from conftest import guest_timeout
    from test_virtio import _mkfs
    port, blob_sum = http_dir
    img, saved = tmp_path / "d.img", tmp_path / "d.snap.img"
    _mkfs(img)
    devs = ["--disk", img, "--rng", "--net", "user"]
    vm = start(vms, lookout_bin, tmp_path, "deb", "--kernel", debian_guest["KERNEL"],
               "--initrd", debian_guest["INITRD"], "--append", debian_guest["APPEND"],
               "--mem", "512M", "--cpu", "auto", *devs)
    sh = Shell(vm)
    sh.wait_text(r"lookout-guest: ready", timeout=guest_timeout())
    sh.send("mkdir -p /run/t /mnt && mount -t tmpfs tmpfs /run/t && mount /dev/vda /mnt && "
            "echo keep > /run/t/keep && echo before > /mnt/marker && sync && echo MOUNTED")
    sh.wait_text(r"MOUNTED")
    sh.send(NETUP)
    sh.wait_text(r"ADDR=inet_10\.0\.2\.15")
    sh.send(wget_line(port, "PRE"))
    sh.wait_text(rf"PRE={blob_sum}")
    sh.send("(i=0; while :; do i=$((i+1)); echo $i > /run/t/c; echo $i > /mnt/c; sync; "
            "echo tick=$i; sleep 0.3; done) &")
    sh.wait_text(r"tick=3\b")
    snap = tmp_path / "deb"
    vm.ctl("snapshot", snap, "--stop")
    cp_image(img, saved)  # paused, devices idle: the image as the snapshot saw it
    time.sleep(0.3)
    at = int(TICK.findall(vm.text())[-1])
    mem_on_disk = os.stat(str(snap) + ".mem").st_blocks * 512
    assert mem_on_disk < 400 << 20, f"sparse memory file expected, {mem_on_disk} bytes"
    vm.ctl("resume")
    sh.send("rm /run/t/keep; echo after > /mnt/marker; sync")
    sh.wait_text(rf"tick={at + 5}\b")

    # the image has been written since the snapshot: refused, naming the disk, VM untouched
    r = vm.ctl("rollback", snap, ok=False)
    assert r.rc != 0 and "virtio0-blk" in r.out and "not in the state" in r.out, r
    assert vm.ctl("status")["state"] == "running"
    # put the image back while the VM is paused, then roll back
    vm.ctl("pause")
    cp_image(saved, img)
    mark = len(vm.text())
    r = vm.ctl("rollback", snap)
    assert r["state"] == "paused", r
    vm.ctl("resume")
    sh.wait_text(r"tick=(\d+)", start=mark)
    wait_for(lambda: len(TICK.findall(vm.text()[mark:])) >= 2, 30, "ticks after the rollback")
    after = [int(x) for x in TICK.findall(vm.text()[mark:])]
    assert after[0] in (at + 1, at + 2) and after == list(range(after[0], after[-1] + 1)), \
        f"after the rollback: {after}, snapshot at {at}{vm.diag()}"
    sh.send("echo 3 > /proc/sys/vm/drop_caches; "
            "echo k=$(cat /run/t/keep) m=$(cat /mnt/marker) file=$(cat /run/t/c)")
    m = sh.wait_text(r"k=(\w*) m=(\w*) file=(\d+)", start=mark, timeout=60)
    assert m.group(1) == "keep" and m.group(2) == "before" and int(m.group(3)) > at, m.group(0)
    vm.close()

    # a new process from the same snapshot (the image put back again: the loop wrote to it)
    cp_image(saved, img)
    # lazily (userfaultfd): the devices' I/O into guest memory faults pages in too
    v2 = start(vms, lookout_bin, tmp_path, "deb2", "--restore", snap, "--cpu", "auto",
               "--restore-lazy", *devs)
    sh2 = Shell(v2)
    sh2.wait_text(rf"tick={at + 2}\b", timeout=30)
    first = [int(x) for x in TICK.findall(v2.text())][0]
    assert first in (at + 1, at + 2), f"resumed at tick={first}, expected {at + 1}"
    sh2.send("echo sum=$((40+2)) rng=$(head -c 64 /dev/hwrng | wc -c)")
    sh2.wait_text(r"sum=42 rng=64\b", timeout=60)
    sh2.send(wget_line(port, "POST"))
    sh2.wait_text(rf"POST={blob_sum}", timeout=90)
    # and the new process's DHCP server hands out a lease again
    sh2.send("udhcpc -i eth0 -s /tmp/dhcp -q -n -t 5 >/dev/null 2>&1 && echo RENEW=ok")
    sh2.wait_text(r"RENEW=ok", timeout=60)
    sh2.send("kill $!; sleep 0.5; sync; echo 3 > /proc/sys/vm/drop_caches; "
             "echo disk=$(cat /mnt/c) tmp=$(cat /run/t/c) m=$(cat /mnt/marker); umount /mnt && "
             "echo UNMOUNTED")
    m = sh2.wait_text(r"disk=(\d+) tmp=(\d+) m=(\w+)", timeout=60)
    assert m.group(1) == m.group(2) and int(m.group(1)) > at and m.group(3) == "before", \
        m.group(0)
    sh2.wait_text(r"UNMOUNTED")
    sh2.send("poweroff -f")
    v2.p.wait(timeout=60)
    assert v2.p.returncode == 0, v2.diag()
    fsck = subprocess.run(["e2fsck", "-fn", str(img)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


@pytest.mark.parametrize("backend", backends())
def test_incremental_chain(lookout_any, counter, tmp_path, vms, backend):
    """full -> incremental -> incremental: the increments hold only the pages written since
    their parent, the chain restores (mapped and eager), and a broken chain is refused."""
    vm = start(vms, lookout_any, tmp_path, "a", "--kernel", counter, "--mem", "64M",
               "--cpu", backend, "--append", "stop=300")
    vm.wait_count(3)
    full = vm.ctl("snapshot", tmp_path / "s0")
    vm.wait_count(vm.last() + 5)
    i1 = vm.ctl("snapshot", tmp_path / "s1", "--parent", tmp_path / "s0")
    assert i1["mem_pages"] < full["mem_pages"], (full, i1)
    vm.wait_count(vm.last() + 5)
    c, i2 = take(vm, tmp_path / "s2", "--parent", tmp_path / "s1")
    # only the VM's last snapshot can be a parent
    r = vm.ctl("snapshot", tmp_path / "bad", "--parent", tmp_path / "s0", ok=False)
    assert r.rc != 0 and "not this VM's last snapshot" in r.out, r
    vm.close()
    for extra in ([], ["--restore-eager"]):
        res = restore_run(lookout_any, tmp_path / "s2", backend, *extra)
        assert res.rc == 1, res
        check_continues(res, c, 300)
    # a parent replaced by another snapshot: refused, naming it
    (tmp_path / "s1").rename(tmp_path / "s1.orig")
    (tmp_path / "s1.mem").rename(tmp_path / "s1.orig.mem")
    (tmp_path / "s1").write_bytes((tmp_path / "s0").read_bytes())
    (tmp_path / "s1.mem").write_bytes((tmp_path / "s0.mem").read_bytes())
    assert_error(restore_run(lookout_any, tmp_path / "s2", backend), "parent snapshot")
    (tmp_path / "s1").unlink()
    assert_error(restore_run(lookout_any, tmp_path / "s2", backend), "s1")
