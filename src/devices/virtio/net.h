/* virtio-net (device id 1): one receive and one transmit queue, checksum offloads only (no
 * segmentation), optional per-direction rate limits (token buckets), with two back ends:
 * `user` (libslirp: DHCP at 10.0.2.15, the host at 10.0.2.2 including its loopback, DNS at
 * 10.0.2.3, outbound TCP/UDP, host port forwarding) and `tap:IFNAME` (/dev/net/tun, IFF_TAP |
 * IFF_NO_PI).  A poll thread per NIC feeds received frames to the guest; transmitted frames are
 * handed to the back end on the notifying vCPU thread (bounded work, non-blocking writes).
 *
 * Trusts nothing in guest chains: the 12-byte virtio_net_hdr_v1 is required and may ask for a
 * checksum only (its position checked against the frame), never GSO; frames are
 * 14..VNET_MAX_FRAME bytes, receive chains must be wholly device-writable and large enough, or
 * the frame is dropped. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bus/bus.h"
#include "devices/virtio/config.h"
#include "devices/virtio/mmio.h"
#include "mem/guest.h"

#define VIRTIO_ID_NET           1
#define VIRTIO_NET_F_CSUM       0 /* the guest may leave transmit checksums to us */
#define VIRTIO_NET_F_GUEST_CSUM 1 /* we may tell the guest a received checksum is valid */
#define VIRTIO_NET_F_MAC        5
#define VIRTIO_NET_F_STATUS     16
#define VNET_HDR_F_NEEDS_CSUM   1
#define VNET_HDR_F_DATA_VALID   2
#define VNET_HDR_LEN            12 /* struct virtio_net_hdr_v1 (VERSION_1 always has num_buffers) */
#define VNET_MAX_FRAME          65536 /* largest frame we accept or deliver */

/* Parses a transmit chain: copies the frame (without the header) to buf (VNET_MAX_FRAME bytes).
 * A header with NEEDS_CSUM gets its checksum computed here: the ones'-complement sum of
 * frame[csum_start..end) stored at csum_start + csum_offset (which must lie in the frame).
 * Returns the frame length, or -1 for a malformed request (dropped). */
long vnet_tx_parse(const struct guest_mem *m, const struct vq_chain *c, uint8_t *buf);
/* Writes header + frame into a receive chain: bytes written (for the used ring), or -1 if the
 * chain cannot hold it.  vnet_rx_fill_flags sets the header's flags byte (DATA_VALID). */
long vnet_rx_fill(struct guest_mem *m, const struct vq_chain *c, const uint8_t *frame, size_t len);
long vnet_rx_fill_flags(struct guest_mem *m, const struct vq_chain *c, const uint8_t *frame,
                        size_t len, uint8_t flags);
/* true if frame is an unfragmented IPv4 TCP or UDP packet whose transport checksum verifies
 * (a UDP checksum of 0, "none", counts as valid): the device may then tell the guest so. */
bool vnet_l4_csum_valid(const uint8_t *frame, size_t len);

struct virtio_net;
struct virtio_net *virtio_net_create(struct guest_mem *mem, struct irq_line irq,
                                     const struct vdev_spec *spec, unsigned slot);
struct virtio_mmio *virtio_net_transport(struct virtio_net *d);
void virtio_net_destroy(struct virtio_net *d);

/* Snapshot state (struct virtio_dev_state): transport, config space (MAC, link status) and the
 * back end's kind.  Connections inside the user back end and frames waiting for receive buffers
 * are not saved: a restored guest sees its connections reset, as after a cable pull, and opens
 * new ones (DHCP lease, ARP and addresses stay valid: the user network is always the same).  A
 * different back end (user vs tap) is allowed: the guest cannot tell. */
void virtio_net_get_state(struct virtio_net *d, struct virtio_dev_state *s);
int virtio_net_check_state(struct virtio_net *d, const struct virtio_dev_state *s);
int virtio_net_set_state(struct virtio_net *d, const struct virtio_dev_state *s);
