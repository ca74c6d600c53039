/* libFuzzer harness for the legacy devices' port interfaces: the input is a program of port
 * accesses (any width, reads and writes) over the UART, RTC, i8042, exit port and ACPI PM ports
 * and a window of unclaimed ports, interleaved with host-side UART input.  Nothing may crash,
 * read out of bounds or leak; the UART's IRQ level must always match its IIR; stop requests are
 * fine (a fresh VM is made per input).  Build and run: tests/fuzz/run.sh. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bus/bus.h"
#include "cpu/cpu.h"
#include "devices/acpi_pm.h"
#include "devices/exitport.h"
#include "devices/i8042.h"
#include "devices/rtc.h"
#include "devices/uart16550.h"
#include "machine/layout.h"
#include "util/log.h"

static int irq_level[32];
static int fz_irq_line(struct vm *vm, unsigned gsi, int level)
{
    if (gsi < 32) irq_level[gsi] = level;
    return 0;
}
static const struct cpu_backend fz_backend = {.name = "fuzz", .irq_line = fz_irq_line};

static void sink(void *ctx, const uint8_t *buf, size_t n)
{
    volatile uint8_t x = 0;
    for (size_t i = 0; i < n; i++)
        x ^= buf[i];
}

static const uint16_t ports[] = {PORT_COM1,
                                 PORT_COM1 + 1,
                                 PORT_COM1 + 2,
                                 PORT_COM1 + 3,
                                 PORT_COM1 + 4,
                                 PORT_COM1 + 5,
                                 PORT_COM1 + 6,
                                 PORT_COM1 + 7,
                                 PORT_RTC,
                                 PORT_RTC + 1,
                                 PORT_I8042_DATA,
                                 PORT_I8042_CMD,
                                 PORT_EXIT,
                                 PORT_ACPI_SLEEP_CTL,
                                 PORT_ACPI_SLEEP_STS,
                                 PORT_ACPI_RESET,
                                 0x3fe,
                                 0x61,
                                 0x6f};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct vm vm;
    memset(&vm, 0, sizeof(vm));
    memset(irq_level, 0, sizeof(irq_level));
    bus_init(&vm.pio, "pio");
    pthread_mutex_init(&vm.lock, NULL);
    pthread_cond_init(&vm.cond, NULL);
    vm.backend = &fz_backend;
    struct uart16550 *u = uart_attach(&vm, PORT_COM1, GSI_COM1, sink, NULL);
    if (!u || rtc_attach(&vm) || i8042_attach(&vm) || exitport_attach(&vm) || acpi_pm_attach(&vm))
        abort();
    size_t i = 0;
    while (i + 2 <= size) {
        uint8_t op = data[i++], arg = data[i++];
        if ((op & 0xe0) == 0xe0) { /* host input: up to 32 following bytes */
            size_t n = MIN((size_t)(op & 0x1f) + 1, size - i);
            uart_receive(u, data + i, n);
            i += n;
            continue;
        }
        uint16_t port = ports[arg % ARRAY_SIZE(ports)];
        static const unsigned widths[] = {1, 1, 2, 4};
        unsigned w = widths[(op >> 1) & 3];
        uint8_t buf[4] = {0xa5, 0xa5, 0xa5, 0xa5};
        if (op & 1) {
            for (unsigned k = 0; k < w && i < size; k++)
                buf[k] = data[i++];
            vm_pio(&vm, port, buf, w, true);
        } else {
            vm_pio(&vm, port, buf, w, false);
        }
        /* invariant: the COM1 pin is high exactly when IIR reports an interrupt with OUT2 set
         * outside loopback (peeked without side effects through the scratch-free registers) */
        if (irq_level[GSI_COM1] != (int)uart_irq_level(u)) abort();
    }
    uart_detach(&vm, u);
    rtc_detach(&vm);
    i8042_detach(&vm);
    exitport_detach(&vm);
    acpi_pm_detach(&vm);
    if (vm.pio.n != 0) abort();
    pthread_mutex_destroy(&vm.lock);
    pthread_cond_destroy(&vm.cond);
    return 0;
}
