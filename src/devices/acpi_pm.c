/* HW-reduced ACPI sleep/reset registers (see acpi_pm.h).  Trusts: nothing; only the exact
 * S5 request and the exact reset value have an effect.  Single-byte registers: wider accesses
 * are split by the bus only at range ends, so each byte of a wider access is handled in turn. */
#include "devices/acpi_pm.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/cpu.h"
#include "devices/devutil.h"
#include "machine/layout.h"
#include "util/log.h"

#define SLP_EN     0x20
#define SLP_TYP(v) (((v) >> 2) & 7)
#define WAK_STS    0x80

struct acpi_pm {
    struct vm *vm;
    _Atomic uint8_t sleep_sts;
};

static void pm_byte_write(struct acpi_pm *pm, unsigned reg, uint8_t v)
{
    switch (reg) {
    case 0: /* sleep control */
        if (!(v & SLP_EN)) return;
        if (SLP_TYP(v) == ACPI_S5_SLP_TYP) {
            log_info("acpi: guest requested power-off (S5)");
            vm_request_stop(pm->vm, VM_STOP_POWEROFF, 0);
        } else {
            /* S1-S4 are not offered in the DSDT; a guest asking anyway just "wakes" at once. */
            log_warn("acpi: guest requested sleep type %u, not supported: ignored", SLP_TYP(v));
            atomic_fetch_or(&pm->sleep_sts, WAK_STS);
        }
        return;
    case 1: /* sleep status: write 1 to clear */
        atomic_fetch_and(&pm->sleep_sts, (uint8_t) ~(v & WAK_STS));
        return;
    case 2: /* reset register */
        if (v == ACPI_RESET_VALUE) {
            log_info("acpi: guest requested reset");
            vm_request_stop(pm->vm, VM_STOP_RESET, 0);
        }
        return;
    }
}

static void pm_read(void *opaque, uint64_t offset, uint8_t *data, unsigned size)
{
    struct acpi_pm *pm = opaque;
    for (unsigned i = 0; i < size; i++)
        data[i] = (offset + i == 1) ? atomic_load(&pm->sleep_sts) : 0;
}

static void pm_write(void *opaque, uint64_t offset, const uint8_t *data, unsigned size)
{
    for (unsigned i = 0; i < size; i++)
        pm_byte_write(opaque, (unsigned)(offset + i), data[i]);
}

static const struct bus_ops pm_ops = {.read = pm_read, .write = pm_write};

_Static_assert(PORT_ACPI_SLEEP_STS == PORT_ACPI_SLEEP_CTL + 1 &&
                   PORT_ACPI_RESET == PORT_ACPI_SLEEP_CTL + 2,
               "acpi_pm expects its three registers to be consecutive ports");

int acpi_pm_attach(struct vm *vm)
{
    struct acpi_pm *pm = calloc(1, sizeof(*pm));
    if (!pm) return err_set(ENOMEM, "acpi pm: out of memory");
    pm->vm = vm;
    int r = bus_register(&vm->pio, PORT_ACPI_SLEEP_CTL, 3, &pm_ops, pm, "acpi-pm");
    if (r < 0) {
        free(pm);
        return err_wrap(r, "acpi pm registers");
    }
    return 0;
}

static struct acpi_pm *find_pm(struct vm *vm)
{
    for (unsigned i = 0; i < vm->pio.n; i++)
        if (vm->pio.r[i].ops == &pm_ops) return vm->pio.r[i].opaque;
    err_set(ENODEV, "this VM has no ACPI PM registers");
    return NULL;
}

int acpi_pm_get_state(struct vm *vm, struct acpi_pm_state *s)
{
    struct acpi_pm *pm = find_pm(vm);
    if (!pm) return -ENODEV;
    s->sleep_sts = atomic_load(&pm->sleep_sts);
    return 0;
}

int acpi_pm_set_state(struct vm *vm, const struct acpi_pm_state *s)
{
    struct acpi_pm *pm = find_pm(vm);
    if (!pm) return -ENODEV;
    if (s->sleep_sts & ~WAK_STS)
        return err_set(EINVAL, "acpi pm state: sleep status %#x has undefined bits", s->sleep_sts);
    atomic_store(&pm->sleep_sts, s->sleep_sts);
    return 0;
}

void acpi_pm_detach(struct vm *vm)
{
    for (unsigned i = 0; i < vm->pio.n; i++)
        if (vm->pio.r[i].ops == &pm_ops) {
            void *pm = vm->pio.r[i].opaque;
            dev_unregister(&vm->pio, &pm_ops, pm);
            free(pm);
            return;
        }
}
