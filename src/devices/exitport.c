/* Test exit port (see exitport.h).  Trusts: nothing; any value the guest writes is passed on as
 * the raw exit code (truncated to int), the CLI decides what a process status it makes. */
#include "devices/exitport.h"

#include <string.h>

#include "cpu/cpu.h"
#include "devices/devutil.h"
#include "machine/layout.h"
#include "util/log.h"

static void exit_read(void *opaque, uint64_t offset, uint8_t *data, unsigned size)
{
    memset(data, 0xff, size);
}

static void exit_write(void *opaque, uint64_t offset, const uint8_t *data, unsigned size)
{
    struct vm *vm = opaque;
    uint64_t v = dev_le_value(data, size);
    log_debug("exit port: guest wrote %#llx (%u bytes)", (unsigned long long)v, size);
    vm_request_stop(vm, VM_STOP_EXIT_PORT, (int)(uint32_t)v);
}

static const struct bus_ops exit_ops = {.read = exit_read, .write = exit_write};

int exitport_attach(struct vm *vm)
{
    /* 4 ports so that a 32-bit outl at 0xf4 is one access to this device (not split by byte). */
    int r = bus_register(&vm->pio, PORT_EXIT, 4, &exit_ops, vm, "exit-port");
    return r < 0 ? err_wrap(r, "test exit port") : 0;
}

void exitport_detach(struct vm *vm)
{
    for (unsigned i = 0; i < vm->pio.n; i++)
        if (vm->pio.r[i].ops == &exit_ops) {
            dev_unregister(&vm->pio, &exit_ops, vm);
            return;
        }
}
