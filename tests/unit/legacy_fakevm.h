/* A fake struct vm for the legacy-device and control-socket unit tests: a real port-I/O bus, and
 * a backend whose irq_line only records the level and the rising edges of each GSI. */
#pragma once
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bus/bus.h"
#include "cpu/cpu.h"

struct fake_irq {
    int level[32];
    int rises[32];
};
static struct fake_irq fake_irq;

static int fake_irq_line(struct vm *vm, unsigned gsi, int level)
{
    if (gsi < 32) {
        if (level && !fake_irq.level[gsi]) fake_irq.rises[gsi]++;
        fake_irq.level[gsi] = level;
    }
    return 0;
}

static const struct cpu_backend fake_backend = {.name = "fake", .irq_line = fake_irq_line};

static inline void fake_vm_init(struct vm *vm)
{
    memset(vm, 0, sizeof(*vm));
    memset(&fake_irq, 0, sizeof(fake_irq));
    bus_init(&vm->pio, "pio");
    bus_init(&vm->mmio, "mmio");
    pthread_mutex_init(&vm->lock, NULL);
    pthread_cond_init(&vm->cond, NULL);
    vm->backend = &fake_backend;
    vm->ncpus = 1;
    vm->mem_size = 256ull << 20;
}

static inline uint8_t inb(struct vm *vm, uint16_t port)
{
    uint8_t v = 0;
    vm_pio(vm, port, &v, 1, false);
    return v;
}

static inline void outb(struct vm *vm, uint16_t port, uint8_t v)
{
    vm_pio(vm, port, &v, 1, true);
}

static inline void outl(struct vm *vm, uint16_t port, uint32_t v)
{
    uint8_t d[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    vm_pio(vm, port, d, 4, true);
}
