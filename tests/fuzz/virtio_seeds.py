#!/usr/bin/env python3
"""Seed corpora for the virtio fuzz harnesses (tests/fuzz/fuzz_virtq.c, fuzz_virtio_mmio.c):
well-formed queues and a driver's bring-up sequence, so the fuzzer starts from real requests.
Usage: virtio_seeds.py VIRTQ_DIR MMIO_DIR"""
import struct
import sys

W, N, IND = 2, 1, 4


def desc(addr, length, flags, nxt):
    return struct.pack("<QIHH", addr, length, flags, nxt)


def virtq_seed(mode, chains, indirect=False):
    """Queue of 8 at gpa 0x1000 (input offset 0); buffers from gpa 0x2000 (offset 0x1000)."""
    ring = bytearray(0x3000)
    descs = []
    heads = []
    for ch in chains:
        heads.append(len(descs))
        for i, (addr, length, flags) in enumerate(ch):
            last = i == len(ch) - 1
            descs.append((addr, length, flags | (0 if last else N), len(descs) + 1))
    for i, d in enumerate(descs[:8]):
        ring[16 * i:16 * i + 16] = desc(*d)
    avail = 128
    struct.pack_into("<HH", ring, avail, 0, len(heads))
    for i, h in enumerate(heads):
        struct.pack_into("<H", ring, avail + 4 + 2 * i, h)
    ctl = 3 | (0x08 if indirect else 0) | (mode << 6)
    return bytes([ctl]) + bytes(ring)


def blk_hdr(ring, off, typ, sector):
    struct.pack_into("<IIQ", ring, off, typ, 0, sector)


def main():
    vq, mm = sys.argv[1], sys.argv[2]
    seeds = {}
    # blk read: header, 512 data (writable), status
    s = bytearray(virtq_seed(0, [[(0x2000, 16, 0), (0x2100, 512, W), (0x2400, 1, W)]]))
    blk_hdr(s, 1 + 0x1000, 0, 3)
    seeds["blk-read"] = s
    s = bytearray(virtq_seed(0, [[(0x2000, 16, 0), (0x2100, 512, 0), (0x2400, 1, W)]]))
    blk_hdr(s, 1 + 0x1000, 1, 5)
    seeds["blk-write"] = s
    s = bytearray(virtq_seed(0, [[(0x2000, 16, 0), (0x2400, 1, W)]]))
    blk_hdr(s, 1 + 0x1000, 4, 0)
    seeds["blk-flush"] = s
    s = bytearray(virtq_seed(0, [[(0x2000, 16, 0), (0x2100, 20, W), (0x2400, 1, W)]]))
    blk_hdr(s, 1 + 0x1000, 8, 0)
    seeds["blk-getid"] = s
    s = bytearray(virtq_seed(0, [[(0x2000, 16, 0), (0x2100, 16, 0), (0x2400, 1, W)]]))
    blk_hdr(s, 1 + 0x1000, 13, 0)
    struct.pack_into("<QII", s, 1 + 0x1100, 2, 4, 0)
    seeds["blk-wzeroes"] = s
    # indirect: one descriptor pointing at a 3-entry table at 0x2800
    s = bytearray(virtq_seed(0, [[(0x2800, 48, IND)]], indirect=True))
    t = 1 + 0x1800
    s[t:t + 48] = desc(0x2000, 16, N, 1) + desc(0x2100, 512, W | N, 2) + desc(0x2400, 1, W, 0)
    blk_hdr(s, 1 + 0x1000, 0, 1)
    seeds["blk-indirect"] = s
    seeds["rng"] = virtq_seed(1, [[(0x2000, 64, W)], [(0x2100, 16, W)]])
    s = bytearray(virtq_seed(2, [[(0x2000, 12, 0), (0x2100, 60, 0)]]))
    seeds["net-tx"] = s
    seeds["net-rx"] = virtq_seed(3, [[(0x2000, 1526, W)]])
    seeds["loop"] = virtq_seed(0, [[(0x2000, 16, 0)]])[:1] + desc(0x2000, 16, N, 0) + bytes(0x100)
    for name, data in seeds.items():
        with open(f"{vq}/{name}", "wb") as f:
            f.write(bytes(data))

    # MMIO: a driver bringing up queue 0 of the rng (dev 0) and the disk (dev 1), then notifying.
    ram = bytearray(4096)  # gpa 0x1000..: desc 0x1000, avail 0x1080, used 0x10c0, bufs 0x1400
    ram[0:16] = desc(0x1400, 16, N, 1)
    ram[16:32] = desc(0x1500, 512, W | N, 2)
    ram[32:48] = desc(0x1800, 1, W, 0)
    struct.pack_into("<HHH", ram, 0x80, 0, 1, 0)
    struct.pack_into("<IIQ", ram, 0x400, 0, 0, 1)

    def op(dev, write, off, val):
        return struct.pack("<BHBI", dev | (2 << 1) | (0x08 if write else 0), off, 0, val)

    prog = b""
    for dev in (0, 1):
        prog += op(dev, 0, 0x000, 0) + op(dev, 0, 0x004, 0) + op(dev, 0, 0x008, 0)
        prog += op(dev, 1, 0x070, 1) + op(dev, 1, 0x070, 3)
        prog += op(dev, 1, 0x014, 1) + op(dev, 0, 0x010, 0)
        prog += op(dev, 1, 0x024, 1) + op(dev, 1, 0x020, 1) + op(dev, 1, 0x070, 0xb)
        prog += op(dev, 1, 0x030, 0) + op(dev, 1, 0x038, 8)
        prog += op(dev, 1, 0x080, 0x1000) + op(dev, 1, 0x090, 0x1080) + op(dev, 1, 0x0a0, 0x10c0)
        prog += op(dev, 1, 0x044, 1) + op(dev, 1, 0x070, 0xf) + op(dev, 1, 0x050, 0)
        prog += op(dev, 0, 0x060, 0) + op(dev, 1, 0x064, 1) + op(dev, 0, 0x100, 0)
        prog += op(dev, 1, 0x070, 0)
    with open(f"{mm}/bringup", "wb") as f:
        f.write(bytes(ram) + prog)


if __name__ == "__main__":
    main()
