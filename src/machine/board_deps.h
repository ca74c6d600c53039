/* The functions the board calls from the parts written by the helpers "boot" (loaders, ACPI),
 * "dev" (devices, console, control socket) and "lapic" (the software backend's time base).
 *
 * TEMPORARY shape: while a part is not merged, its functions are declared here weak, so the board
 * links without it and machine.c fails clearly (BOARD_HAVE()) when one is missing.  Once a part's
 * real headers exist they are included instead (per part, with __has_include), so a merge needs
 * no edit here.  When all parts are merged the lead may replace this file by its include lines. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cpu/cpu.h"
#include "machine/layout.h"

#define BOARD_WEAK __attribute__((weak))

/* helper "boot" */
#if __has_include("machine/boot.h") && __has_include("machine/acpi.h")
#include "machine/acpi.h"
#include "machine/boot.h"
#else
BOARD_WEAK int boot_load(struct vm *vm, const char *kernel, const char *initrd, const char *cmdline,
                         struct x86_state *bsp);
struct acpi_config {
    unsigned ncpus;
    unsigned nvirtio;
    struct {
        uint64_t base;
        uint32_t size;
        uint32_t gsi;
    } virtio[LAYOUT_VIRTIO_MAX];
};
BOARD_WEAK int acpi_build(struct vm *vm, const struct acpi_config *cfg);
#endif

/* helper "dev" */
#if __has_include("devices/uart16550.h") && __has_include("machine/console.h") &&                  \
                                                          __has_include("api/server.h")
#include "api/client.h"
#include "api/server.h"
#include "devices/acpi_pm.h"
#include "devices/exitport.h"
#include "devices/i8042.h"
#include "devices/rtc.h"
#include "devices/uart16550.h"
#include "machine/console.h"
#else
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
#endif

/* helper "lapic" */
#if __has_include("devices/vclock.h")
#include "devices/vclock.h"
#else
BOARD_WEAK uint64_t vclock_pick_tsc_khz(void);
BOARD_WEAK void vclock_pause(void);
BOARD_WEAK void vclock_resume(void);
#endif
