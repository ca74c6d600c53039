"""Seed corpus for the snapshot state parser fuzzer (tests/fuzz/fuzz_snapshot.c): whole state
files with virtio device sections, valid and hostile (rings outside RAM, sizes that are not powers
of two, requests in flight, oversized counts and strings, truncated payloads), each sealed with
its SHA-256 so the parser reaches the section decoders.  Usage: snapshot_seeds.py OUTDIR."""
import hashlib
import os
import struct
import sys


def header(devices, nsec):
    dl = devices.encode()
    h = b"LOOKSNAP" + struct.pack("<IIQII", 1, 146 + len(dl), 64 << 20, 1, 0)
    h += b"lookout-v1".ljust(32, b"\0") + bytes(32) + b"bt".ljust(16, b"\0")
    h += struct.pack("<Q", 2000000) + bytes(16) + struct.pack("<IIH", 0, nsec, len(dl)) + dl
    return h


def section(name, payload, version=1, flags=0):
    return name.encode().ljust(24, b"\0") + struct.pack("<IIQ", version, flags, len(payload)) + payload


def queue(size=256, ready=1, desc=0x200000, avail=0x201000, used=0x202000, last=7, used_idx=7):
    return struct.pack("<HBQQQHH", size, ready, desc, avail, used, last, used_idx)


def virtio(dev_id, queues, config=b"", buckets=(), tail=b"", status=0x0f, feats=1 << 32,
           nq=None):
    p = struct.pack("<IIIIIIIQ", dev_id, status, 0, 1, 0, 1, 3, feats)
    p += struct.pack("<B", len(queues) if nq is None else nq) + b"".join(queues)
    p += struct.pack("<H", len(config)) + config
    p += struct.pack("<B", len(buckets)) + b"".join(struct.pack("<Qq", r, m) for r, m in buckets)
    return p + tail


def blk_tail(path=b"/var/lib/img/disk.img", ro=0, sectors=16384):
    return struct.pack("<BQQq", ro, sectors, sectors * 512, 1795391223938715731) + \
        struct.pack("<H", len(path)) + path


def net_tail(backend=0, ifname=b""):
    return struct.pack("<BH", backend, len(ifname)) + ifname


BLKCFG = struct.pack("<Q", 16384) + bytes(52)
NETCFG = bytes([0x52, 0x54, 0, 0x12, 0x34, 0x58, 1, 0, 0, 0])


def seal(secs):
    names = ",".join(["com1,com2,i8042,rtc,acpi_pm,exitport,ioapic,pit"] + [n for n, _ in secs])
    body = header(names, len(secs)) + b"".join(section(n, p) for n, p in secs)
    return body + hashlib.sha256(body).digest()


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    good_blk = virtio(2, [queue()], BLKCFG, [(10 << 20, 5000), (0, 0)], blk_tail())
    good_rng = virtio(4, [queue(size=8, last=2, used_idx=2)], b"", [(1 << 20, -300)])
    good_net = virtio(1, [queue(), queue(desc=0x300000, avail=0x301000, used=0x302000)], NETCFG,
                      (), net_tail())
    seeds = {
        "virtio-good": [("virtio0-blk", good_blk), ("virtio1-rng", good_rng),
                        ("virtio2-net", good_net)],
        "virtio-tap": [("virtio0-net", virtio(1, [queue(), queue()], NETCFG, (),
                                               net_tail(1, b"tap0")))],
        "virtio-ring-outside": [("virtio0-blk", virtio(2, [queue(desc=1 << 40)], BLKCFG,
                                                       [(0, 0), (0, 0)], blk_tail()))],
        "virtio-size-12": [("virtio0-rng", virtio(4, [queue(size=12)], b"", [(0, 0)]))],
        "virtio-inflight": [("virtio0-rng", virtio(4, [queue(last=9, used_idx=1)], b"", [(0, 0)]))],
        "virtio-nq-9": [("virtio0-rng", virtio(4, [queue()] * 4, b"", [(0, 0)], nq=9))],
        "virtio-config-big": [("virtio0-net", virtio(1, [queue(), queue()], bytes(65), (),
                                                     net_tail()))],
        "virtio-path-ctrl": [("virtio0-blk", virtio(2, [queue()], BLKCFG, [(0, 0), (0, 0)],
                                                    blk_tail(path=b"/tmp/a\nb")))],
        "virtio-path-long": [("virtio0-blk", virtio(2, [queue()], BLKCFG, [(0, 0), (0, 0)],
                                                    blk_tail(path=b"x" * 1025)))],
        "virtio-truncated": [("virtio0-blk", good_blk[:-5])],
        "virtio-trailing": [("virtio0-rng", good_rng + b"\0")],
        "virtio-unknown-id": [("virtio0-blk", struct.pack("<I", 3) + good_blk[4:])],
        "virtio-bad-status": [("virtio0-rng", virtio(4, [queue()], b"", [(0, 0)], status=4,
                                                     feats=0))],
    }
    for name, secs in seeds.items():
        data = seal(secs)
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
