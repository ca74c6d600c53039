/* triple: ends in a triple fault on purpose.  Loads an IDT with limit 0, so the #UD of a UD2
 * cannot be delivered (#GP), nor can that #GP (#DF), nor the #DF: the CPU shuts down, which
 * lookout reports as a triple fault with exit status 124 and the vCPU's registers.  Prints
 * "triple: faulting" first; anything printed after it (or an exit port value) is a failure. */
#include "lib.h"

int kmain(struct mb_info *mbi)
{
    (void)mbi;
    struct {
        uint16_t limit;
        uint64_t base;
    } __attribute__((packed)) empty = {0, 0};
    kprintf("triple: faulting\n");
    __asm__ volatile("lidt %0\n\tud2" ::"m"(empty));
    kprintf("triple: still running after the fault\n");
    return 1;
}
