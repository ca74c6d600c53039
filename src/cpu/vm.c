/* VM-wide helpers shared by both backends: stop requests and the device IRQ adapter. */
#include "cpu/cpu.h"

void vm_request_stop(struct vm *vm, enum vm_stop_reason why, int exit_code)
{
    int none = VM_STOP_NONE;
    if (atomic_compare_exchange_strong(&vm->stop_reason, &none, (int)why)) vm->exit_code = exit_code;
    for (unsigned i = 0; i < vm->ncpus; i++)
        if (vm->vcpu[i] && vm->backend && vm->backend->vcpu_kick) vm->backend->vcpu_kick(vm->vcpu[i]);
    pthread_mutex_lock(&vm->lock);
    pthread_cond_broadcast(&vm->cond);
    pthread_mutex_unlock(&vm->lock);
}

bool vm_stopping(const struct vm *vm)
{
    return atomic_load(&vm->stop_reason) != VM_STOP_NONE;
}

void vm_irq_set(void *opaque, unsigned gsi, int level)
{
    struct vm *vm = opaque;
    vm_irq_line(vm, gsi, level);
}
