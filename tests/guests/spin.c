/* spin: prints "spinning" and then counts forever, printing the count every 2^20 iterations, so
 * tests have a guest that never stops by itself (control socket, pause/resume, quit). */
#include "lib.h"

int kmain(struct mb_info *mbi)
{
    (void)mbi;
    kprintf("spinning\n");
    for (unsigned long n = 0;; n++) {
        if ((n & 0xfffff) == 0) kprintf("spin %lu\n", n >> 20);
        __asm__ volatile("" ::: "memory");
    }
    return 0;
}
