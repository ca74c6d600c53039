/* Runtime entry of the Multiboot test kernels: the Multiboot header, the 32-bit entry that
 * switches to long mode on static identity page tables (4 GiB, 2 MiB pages), the 64-bit start
 * that calls kmain(), the application-processor trampoline (real mode -> long mode), and the
 * interrupt stubs that hand every vector to trap_handler() in lib.c.
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
    call runtime_start        /* never returns */
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
    .word gdt_end - gdt - 1
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

/* ---- interrupt stubs: 256 of them, 16 bytes apart, starting at isr_stubs ---- */
    .balign 16
    .globl isr_stubs
isr_stubs:
    .set vec, 0
    .rept 256
    .balign 16
    .if (vec == 8) || ((vec >= 10) && (vec <= 14)) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
    .else
    pushq $0                  /* no CPU error code: push a dummy to keep one frame layout */
    .endif
    pushq $vec
    jmp isr_common
    .set vec, vec + 1
    .endr

isr_common:
    push %rax
    push %rcx
    push %rdx
    push %rbx
    push %rbp
    push %rsi
    push %rdi
    push %r8
    push %r9
    push %r10
    push %r11
    push %r12
    push %r13
    push %r14
    push %r15
    mov %rsp, %rdi
    cld
    call trap_handler
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rdi
    pop %rsi
    pop %rbp
    pop %rbx
    pop %rdx
    pop %rcx
    pop %rax
    add $16, %rsp             /* vector and error code */
    iretq

/* ---- data ---- */
    .data
    .balign 8
    .globl gdt
gdt:
    .quad 0
    .quad 0x00af9a000000ffff  /* 0x08: 64-bit code */
    .quad 0x00cf92000000ffff  /* 0x10: data, 4 GiB */
    .quad 0x00cf9a000000ffff  /* 0x18: 32-bit code, 4 GiB (AP trampoline) */
gdt_end:
    .balign 8
    .word 0
gdt_desc:
    .word gdt_end - gdt - 1
    .quad gdt

    .globl mb_magic, mb_info, ap_next
mb_magic: .long 0
mb_info:  .long 0
ap_next:  .long 0

/* Identity map of 0-4 GiB with 2 MiB pages: PML4 -> PDPT -> 4 page directories. */
    .balign 4096
pml4:
    .quad pdpt + 0x3
    .fill 511, 8, 0
pdpt:
    .quad pd + 0x3, pd + 0x1003, pd + 0x2003, pd + 0x3003
    .fill 508, 8, 0
pd:
    .set i, 0
    .rept 2048
    .quad (i << 21) + 0x83
    .set i, i + 1
    .endr

    .bss
    .balign 4096
bsp_stack:
    .skip STACK_SIZE
bsp_stack_top:
    .globl ap_stacks
ap_stacks:
    .skip AP_STACK * (MAX_APS + 1)

    .section .note.GNU-stack, "", @progbits
