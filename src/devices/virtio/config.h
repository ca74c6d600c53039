/* The virtio devices a VM gets, as parsed from `--disk`, `--net` and `--rng`: a pure data list
 * (parsing is separate from device creation so the CLI can reject bad options before anything
 * starts, and unit tests can call it).  Trusts nothing: every value is checked with a message
 * naming the option. */
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "machine/layout.h"

enum vdev_kind { VDEV_BLK, VDEV_NET, VDEV_RNG };
enum vnet_backend { VNET_USER, VNET_TAP };

#define VNET_MAX_FWD 8

struct vnet_fwd {
    bool udp;
    uint32_t host_addr; /* host byte order; 0 = any (we bind 127.0.0.1 unless given) */
    uint16_t host_port, guest_port;
};

struct vdev_spec {
    enum vdev_kind kind;
    /* disk */
    char path[1024];
    bool ro;
    uint64_t bw, iops; /* rate limits: bytes/s, ops/s (0 = unlimited) */
    uint32_t burst_ms; /* disk and NIC buckets hold this many ms of their rate (0: 1000) */
    /* net */
    enum vnet_backend net;
    char ifname[16];
    unsigned nfwd;
    struct vnet_fwd fwd[VNET_MAX_FWD];
    /* NIC rate limits per direction, 0 = unlimited; rx = to the guest, tx = from the guest */
    uint64_t rx_bw, tx_bw, rx_pps, tx_pps;
};

/* GSIs LAYOUT_VIRTIO_GSI.. must stay below the IOAPIC's 24 pins: 8 devices. */
#define VDEV_MAX 8

struct vdev_list {
    unsigned n;
    struct vdev_spec d[VDEV_MAX];
};

/* Adds one device from option `opt` ("--disk", "--net" or "--rng") with value `val` (may be NULL
 * for --rng).  The strings must outlive the list (argv does).  0 or -EINVAL (err_set). */
int vdev_parse(struct vdev_list *l, const char *opt, const char *val);

/* "10M", "1G", "4096", "1.5M"? no: integer with optional K/M/G (powers of 1024).  0 or -EINVAL */
int vdev_parse_rate(const char *s, uint64_t *out);
