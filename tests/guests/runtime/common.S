/* Parts of the test-kernel runtime shared by every entry path (Multiboot and Linux 64-bit):
 * the interrupt stubs that hand each vector to trap_handler() in lib.c, the kernels' own GDT
 * (0x08 64-bit code, 0x10 data, 0x18 32-bit code) and static identity page tables for 0-4 GiB.
 * Trusts nothing; it is data and straight-line code. */

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
    .globl gdt, gdt_end, gdt_desc, pml4
gdt:
    .quad 0
    .quad 0x00af9a000000ffff  /* 0x08: 64-bit code */
    .quad 0x00cf92000000ffff  /* 0x10: data, 4 GiB */
    .quad 0x00cf9a000000ffff  /* 0x18: 32-bit code, 4 GiB (AP trampoline) */
gdt_end:
    .balign 8
    .word 0
gdt_desc:                     /* 6-byte form for 32-bit LGDT, 10-byte for 64-bit */
    .word gdt_end - gdt - 1
    .quad gdt


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

    .section .note.GNU-stack, "", @progbits
