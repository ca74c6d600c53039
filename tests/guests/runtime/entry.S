/* Multiboot entry of the test kernels: the Multiboot header, the 32-bit entry that switches to
 * long mode on the static identity page tables of common.S (4 GiB, 2 MiB pages), the 64-bit
 * start that calls mb_start() (lib.c), and the application-processor trampoline
 * (real mode -> long mode).
 * Trusts the Multiboot loader only for what the spec promises (EAX magic, EBX info, flat
 * 32-bit segments); everything else (GDT, stack, paging) it sets up itself. */

#define MB_MAGIC  0x1BADB002
#define MB_FLAGS  0x00000003 /* page-aligned modules, memory information */

#define SEL_CODE64 0x08
#define SEL_DATA   0x10
#define SEL_CODE32 0x18

#define STACK_SIZE 16384
#define AP_STACK   4096
#define MAX_APS    63

    .section .multiboot, "a"
    .balign 4
    .long MB_MAGIC, MB_FLAGS, -(MB_MAGIC + MB_FLAGS)

/* Loads CR3/PAE/LME/PG and far-jumps into 64-bit code at \target (32-bit code). */
.macro ENTER_LONG target
    lgdt gdt_desc
    mov $pml4, %eax
    mov %eax, %cr3
    mov %cr4, %eax
    or $0x20, %eax            /* PAE */
    mov %eax, %cr4
    mov $0xC0000080, %ecx     /* EFER */
    rdmsr
    or $0x100, %eax           /* LME */
    wrmsr
    mov %cr0, %eax
    or $0x80000001, %eax      /* PG | PE */
    mov %eax, %cr0
    ljmp $SEL_CODE64, $\target
.endm

    .text
    .code32
    .globl mb_entry
mb_entry:
    cli
    cld
    mov %eax, mb_magic
    mov %ebx, mb_info
    mov $bsp_stack_top, %esp
    ENTER_LONG bsp_long

    .code64
bsp_long:
    mov $SEL_DATA, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %ax, %fs
    mov %ax, %gs
    mov $bsp_stack_top, %rsp
    xor %ebp, %ebp
    call runtime_init
    mov mb_magic, %edi
    mov mb_info, %esi
    call mb_start             /* never returns */
1:  cli
    hlt
    jmp 1b

/* ---- application processors ---- */

/* Copied below 1 MiB by smp_copy_trampoline(); entered in real mode at CS:0 after SIPI. */
    .code16
    .globl ap_tramp, ap_tramp_end
ap_tramp:
    cli
    cld
    mov %cs, %ax
    mov %ax, %ds
    lgdtl (ap_gdt_desc - ap_tramp)
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl $SEL_CODE32, $ap_entry32
    .balign 4
ap_gdt_desc:
    .word 4 * 8 - 1           /* the four entries of gdt in common.S */
    .long gdt
ap_tramp_end:

    .code32
ap_entry32:
    mov $SEL_DATA, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $1, %eax
    lock xadd %eax, ap_next   /* each AP takes its own stack */
    cmp $MAX_APS, %eax
    jae 2f
    inc %eax
    shl $12, %eax
    add $ap_stacks, %eax
    mov %eax, %esp
    ENTER_LONG ap_long
2:  cli
    hlt
    jmp 2b

    .code64
ap_long:
    mov $SEL_DATA, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %esp, %esp            /* zero-extend: upper halves are undefined after the switch */
    call ap_main              /* never returns */
3:  cli
    hlt
    jmp 3b

    .data
    .globl mb_magic, mb_info, ap_next
mb_magic: .long 0
mb_info:  .long 0
ap_next:  .long 0

    .bss
    .balign 4096
bsp_stack:
    .skip STACK_SIZE
bsp_stack_top:
    .globl ap_stacks
ap_stacks:
    .skip AP_STACK * (MAX_APS + 1)

    .section .note.GNU-stack, "", @progbits
