/* exit42: the smallest test kernel.  Prints a greeting on COM1 and writes 42 to the exit port,
 * so lookout exits with status (42 << 1) | 1 = 85. */
#include "lib.h"

int kmain(struct mb_info *mbi)
{
    (void)mbi;
    kprintf("hello from exit42\n");
    return 42;
}
