/* The board's virtio-mmio slots: creates the devices of a vdev_list, registers slot n at
 * LAYOUT_VIRTIO_BASE + n * LAYOUT_VIRTIO_STRIDE with GSI LAYOUT_VIRTIO_GSI + n, and describes
 * them for the DSDT.  Trusts the list (parsed and checked by devices/virtio/config.c). */
#pragma once
#include "devices/virtio/config.h"
#include "machine/acpi.h"

struct vm;
struct virtio_board;

/* NULL + err_set on failure (nothing left attached). */
struct virtio_board *virtio_board_attach(struct vm *vm, const struct vdev_list *l);
/* Fills cfg->nvirtio and cfg->virtio[]. */
void virtio_board_acpi(const struct virtio_board *vb, struct acpi_config *cfg);
/* No vCPU may run: unregisters and destroys every device. */
void virtio_board_detach(struct vm *vm, struct virtio_board *vb);

/* Snapshot access: slot count, and the device behind a slot (kind + handle). */
unsigned virtio_board_count(const struct virtio_board *vb);
void *virtio_board_device(const struct virtio_board *vb, unsigned slot, enum vdev_kind *kind);
