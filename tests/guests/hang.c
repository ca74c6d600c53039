/* hang: a guest that never stops by itself and never exits to the VMM: interrupts off, then a
 * tight jump-to-self loop (default) or HLT in a loop (`hlt=1` on the command line).  No port I/O,
 * no MMIO after the first line, so only the VMM's own ways out (control socket `quit`, the
 * console's Ctrl-A x, a signal) can end it.  Prints "hang: looping" or "hang: halted" first. */
#include "lib.h"

int kmain(struct mb_info *mbi)
{
    bool hlt = cmdline_value(mbi, "hlt") == 1;
    kprintf(hlt ? "hang: halted\n" : "hang: looping\n");
    __asm__ volatile("cli");
    if (hlt)
        for (;;)
            __asm__ volatile("hlt");
    __asm__ volatile("1: jmp 1b");
    return 1;
}
