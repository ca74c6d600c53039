/* TEMPORARY (delete at merge): the functions the board calls from the helpers "boot", "dev" and
 * "lapic", declared here until their real headers (machine/boot.h, machine/acpi.h,
 * devices/{uart16550,i8042,rtc,exitport,acpi_pm,vclock}.h, machine/console.h, api/server.h,
 * api/client.h) are on this branch.  Declared weak so this branch links without
 * them; machine.c checks each for presence with BOARD_HAVE() and fails clearly when one is absent.
 * At merge: replace the include of this file in machine.c and cli/main.c with the real headers
 * and delete this file (BOARD_HAVE() keeps working on strong symbols). */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cpu/cpu.h"
#include "machine/layout.h"

#define BOARD_WEAK __attribute__((weak))

/* helper "boot": machine/boot.h, machine/acpi.h */
BOARD_WEAK int boot_load(struct vm *vm, const char *kernel, const char *initrd, const char *cmdline,
                         struct x86_state *bsp);
struct acpi_config {
    unsigned ncpus;
    unsigned nvirtio;
    struct {
        uint64_t base, size;
        unsigned gsi;
    } virtio[LAYOUT_VIRTIO_MAX];
};
BOARD_WEAK int acpi_build(struct vm *vm, const struct acpi_config *cfg);

/* helper "dev": devices, console, control socket */
struct uart16550;
struct console;
struct api_server;
BOARD_WEAK struct uart16550 *uart_attach(struct vm *vm, uint16_t port, unsigned gsi,
                                         void (*out)(void *ctx, const uint8_t *buf, size_t n),
                                         void *ctx);
BOARD_WEAK size_t uart_receive(struct uart16550 *u, const uint8_t *buf, size_t n);
BOARD_WEAK void uart_detach(struct vm *vm, struct uart16550 *u);
BOARD_WEAK int i8042_attach(struct vm *vm);
BOARD_WEAK void i8042_detach(struct vm *vm);
BOARD_WEAK int rtc_attach(struct vm *vm);
BOARD_WEAK void rtc_detach(struct vm *vm);
BOARD_WEAK int exitport_attach(struct vm *vm);
BOARD_WEAK void exitport_detach(struct vm *vm);
BOARD_WEAK int acpi_pm_attach(struct vm *vm);
BOARD_WEAK void acpi_pm_detach(struct vm *vm);
BOARD_WEAK struct console *console_start(struct vm *vm, struct uart16550 *com1, int in_fd,
                                         int out_fd, bool interactive);
BOARD_WEAK void console_stop(struct console *c);
BOARD_WEAK void console_output(void *console, const uint8_t *buf, size_t n);
BOARD_WEAK void console_restore_terminal(void);
BOARD_WEAK struct api_server *api_start(struct vm *vm, const char *path);
BOARD_WEAK void api_stop(struct api_server *s);
BOARD_WEAK int ctl_main(int argc, char **argv);

/* helper "lapic": devices/vclock.h (the software backend's time base) */
BOARD_WEAK uint64_t vclock_pick_tsc_khz(void);
BOARD_WEAK void vclock_pause(void);
BOARD_WEAK void vclock_resume(void);
