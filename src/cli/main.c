/* lookout command-line entry point (placeholder until the cli lands). */
#include <stdio.h>
int main(void)
{
    fprintf(stderr, "lookout: not built yet\n");
    return 1;
}
