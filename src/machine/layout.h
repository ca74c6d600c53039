/* The board's fixed addresses: guest-physical layout, I/O ports and interrupt lines.
 * One table so loaders, boot tables, devices and the DSDT agree. */
#pragma once

/* Low memory (below 1 MiB) used by the loaders; e820 reserves 0x9fc00-0x100000. */
#define LAYOUT_BOOT_GDT      0x00000500ull
#define LAYOUT_BOOT_IDT      0x00000520ull
#define LAYOUT_ZERO_PAGE     0x00007000ull /* Linux boot_params */
#define LAYOUT_MB_INFO       0x00007000ull /* Multiboot info (Multiboot and Linux never mix) */
#define LAYOUT_PML4          0x00009000ull /* identity page tables for 64-bit entry: 9000-efff */
#define LAYOUT_PML4_END      0x0000f000ull /* PML4, PDPT and four 2 MiB-page PDs (4 GiB) */
#define LAYOUT_BOOT_STACK    0x00008ff0ull /* initial RSP/ESP: top of the free page 8000-8fff */
#define LAYOUT_CMDLINE       0x00020000ull
#define LAYOUT_CMDLINE_MAX   0x00010000ull
#define LAYOUT_EBDA          0x0009fc00ull
#define LAYOUT_ACPI_BASE     0x000e0000ull /* RSDP and tables (BIOS area, searched by Linux) */
#define LAYOUT_ACPI_SIZE     0x0001f000ull /* e0000-fefff; the last page holds the reset stub */
#define LAYOUT_RESET_VECTOR  0x000ffff0ull /* F000:FFF0: a few bytes that ask the board to reset */
#define LAYOUT_KERNEL_MIN    0x00100000ull

/* 32-bit MMIO hole (3-4 GiB) */
#define LAYOUT_VIRTIO_BASE   0xd0000000ull /* virtio-mmio devices, 4 KiB apart */
#define LAYOUT_VIRTIO_STRIDE 0x1000ull
#define LAYOUT_VIRTIO_MAX    16
#define LAYOUT_VIRTIO_GSI    16            /* first GSI for virtio devices (16..31 need 32 pins: we use 16..23) */
#define LAYOUT_IOAPIC_BASE   0xfec00000ull
#define LAYOUT_LAPIC_BASE    0xfee00000ull

/* I/O ports */
#define PORT_COM1            0x3f8 /* IRQ 4: console */
#define PORT_COM2            0x2f8 /* IRQ 3: command output in `lookout run -- CMD` */
#define PORT_RTC             0x70  /* 0x70-0x71, IRQ 8 */
#define PORT_I8042_DATA      0x60
#define PORT_I8042_CMD       0x64
#define PORT_EXIT            0xf4  /* test exit port (isa-debug-exit compatible) */
#define PORT_ACPI_SLEEP_CTL  0x600 /* HW-reduced FADT sleep control register (8-bit) */
#define PORT_ACPI_SLEEP_STS  0x601 /* sleep status register (8-bit) */
#define PORT_ACPI_RESET      0x602 /* FADT reset register (8-bit), value ACPI_RESET_VALUE */
#define ACPI_RESET_VALUE     0x01
#define ACPI_S5_SLP_TYP      5     /* \_S5 package value; a write of (5 << 2) | SLP_EN powers off */

#define GSI_COM1 4
#define GSI_COM2 3
#define GSI_RTC  8
#define GSI_SCI  9
