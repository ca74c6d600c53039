/* Linux 64-bit boot protocol entry of the linux64 test kernel (an ELF64 "vmlinux"): records the
 * state the loader entered with (segment selectors, RFLAGS, RSI = zero page) for linux64.c to
 * check, then loads the runtime's own GDT (whose 0x08 is the 64-bit code segment the IDT uses),
 * a stack, and calls linux_start(zero_page).  Trusts nothing it has not recorded first. */

#define SEL_CODE64 0x08
#define SEL_DATA   0x10

    .text
    .code64
    .globl linux_entry
linux_entry:
    mov %rsi, entry_rsi(%rip)
    mov %cs, %ax
    mov %ax, entry_cs(%rip)
    mov %ds, %ax
    mov %ax, entry_ds(%rip)
    mov %ss, %ax
    mov %ax, entry_ss(%rip)
    pushfq
    pop %rax
    mov %rax, entry_rflags(%rip)
    lgdt gdt_desc(%rip)
    lea linux_stack_top(%rip), %rsp
    pushq $SEL_CODE64
    lea 1f(%rip), %rax
    pushq %rax
    lretq                     /* reload CS from our GDT */
1:  mov $SEL_DATA, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %ax, %fs
    mov %ax, %gs
    call runtime_init
    mov entry_rsi(%rip), %rdi
    call linux_start
    mov %eax, %edi
    call exit_vm

    .data
    .balign 8
    .globl entry_rsi, entry_rflags, entry_cs, entry_ds, entry_ss
entry_rsi:    .quad 0
entry_rflags: .quad 0
entry_cs:     .word 0
entry_ds:     .word 0
entry_ss:     .word 0

    .bss
    .balign 4096
    .skip 16384
linux_stack_top:

    .section .note.GNU-stack, "", @progbits
