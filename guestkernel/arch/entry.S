/* SPDX-License-Identifier: GPL-2.0 */
/*
 * entry.S: boot entry, GDT, interrupt entry stubs, context switch.
 * Everything here is in .text.entry: no fentry sites, not patchable.
 */
#include "boot_info.h"
#include "klp_abi.h"
#include "offsets.h"

	.section .text.entry, "ax"

/*
 * _start: every vCPU arrives here in long mode with RDI = &boot_info
 * (physical == identity-mapped virtual), RSI = cpu index, RSP = 0.
 * CPU 0 clears .bss before it has a stack (its stack lives there), then
 * releases the others, which wait on ap_release (in .data) without
 * touching memory they would share with it. The host's GDT (CS 0x08,
 * data 0x10, boot_info.h) stays in use: the IDT gates name selector 0x08.
 */
	.globl _start
	.type _start, @function
_start:
	cli
	cld
	movq %rdi, %r12
	movq %rsi, %r13
	testq %rsi, %rsi
	jnz .Lap_wait

	/*
	 * Clear .bss 8 bytes per iteration: where string instructions are
	 * emulated one iteration at a time (kvm_pvm), rep stosb over the
	 * ~1.1 MiB of .bss took ~4 s of every boot. Then the tail, if any.
	 */
	leaq __bss_start(%rip), %rdi
	leaq __bss_end(%rip), %rcx
	subq %rdi, %rcx
	movq %rcx, %rdx
	shrq $3, %rcx
	xorl %eax, %eax
	rep stosq
	movq %rdx, %rcx
	andq $7, %rcx
	rep stosb

	leaq boot_stacks+BOOT_STACK_SIZE(%rip), %rsp
	xorl %ebp, %ebp
	movq %r12, %rdi
	movq %r13, %rsi
	call kernel_main_bsp
	jmp .Lhalt_forever

.Lap_wait:
	cmpq $KLP_MAX_CPUS, %r13
	jae .Lhalt_forever
.Lap_spin:
	pause
	cmpl $0, ap_release(%rip)
	je .Lap_spin
	movq %r13, %rax
	incq %rax
	shlq $14, %rax	/* (cpu + 1) * BOOT_STACK_SIZE */
	leaq boot_stacks(%rip), %rsp
	addq %rax, %rsp
	xorl %ebp, %ebp
	movq %r12, %rdi
	movq %r13, %rsi
	call kernel_main_ap
.Lhalt_forever:
	cli
	hlt
	jmp .Lhalt_forever
	.size _start, . - _start


/*
 * Interrupt and exception entry. Each stub pushes an error code (0 if the
 * CPU did not push one) and its vector, then jumps to isr_common, which
 * saves the registers as struct klp_irq_regs, pushes a frame record
 * {interrupted RBP, interrupted RIP} so that a frame-pointer walk goes
 * from the handler into the interrupted code, and calls irq_dispatch.
 * The return address of that call, irq_frame_ret, marks the frame for the
 * host (klp_guest_abi.irq_frame_ret).
 */
.macro ISR vec, err
	.type isr_\vec, @function
isr_\vec:
	.if \err == 0
	pushq $0
	.endif
	pushq $\vec
	jmp isr_common
	.size isr_\vec, . - isr_\vec
.endm

/* vectors with a CPU-pushed error code: 8 10 11 12 13 14 17 21 29 30 */
ISR 0,0
ISR 1,0
ISR 2,0
ISR 3,0
ISR 4,0
ISR 5,0
ISR 6,0
ISR 7,0
ISR 8,1
ISR 9,0
ISR 10,1
ISR 11,1
ISR 12,1
ISR 13,1
ISR 14,1
ISR 15,0
ISR 16,0
ISR 17,1
ISR 18,0
ISR 19,0
ISR 20,0
ISR 21,1
ISR 22,0
ISR 23,0
ISR 24,0
ISR 25,0
ISR 26,0
ISR 27,0
ISR 28,0
ISR 29,1
ISR 30,1
ISR 31,0
ISR 32,0
ISR 240,0
ISR 255,0

	.globl isr_common
	.type isr_common, @function
isr_common:
	pushq %rax
	pushq %rbx
	pushq %rcx
	pushq %rdx
	pushq %rsi
	pushq %rdi
	pushq %rbp
	pushq %r8
	pushq %r9
	pushq %r10
	pushq %r11
	pushq %r12
	pushq %r13
	pushq %r14
	pushq %r15
	movq %rsp, %rbx		/* struct klp_irq_regs * (callee-saved) */
	pushq 17*8(%rbx)	/* interrupted RIP */
	pushq 8*8(%rbx)		/* interrupted RBP */
	movq %rsp, %rbp
	movq %rbx, %rdi
	call irq_dispatch
	.globl irq_frame_ret
irq_frame_ret:
	movq %rbx, %rsp
	popq %r15
	popq %r14
	popq %r13
	popq %r12
	popq %r11
	popq %r10
	popq %r9
	popq %r8
	popq %rbp
	popq %rdi
	popq %rsi
	popq %rdx
	popq %rcx
	popq %rbx
	popq %rax
	addq $16, %rsp
	iretq
	.size isr_common, . - isr_common

/*
 * void klp_switch_to(struct task *prev, struct task *next)
 * Saves prev's callee-saved registers on its stack and RSP/RBP/RIP in the
 * task (the frame chain stays walkable from saved_rbp), marks prev
 * switched out, then resumes next where it last saved itself.
 * Called with interrupts off and the run queue locked.
 */
	.globl klp_switch_to
	.type klp_switch_to, @function
klp_switch_to:
	pushq %rbp
	movq %rsp, %rbp
	pushq %rbx
	pushq %r12
	pushq %r13
	pushq %r14
	pushq %r15
	movq %rsp, TASK_SAVED_RSP(%rdi)
	movq %rbp, TASK_SAVED_RBP(%rdi)
	leaq klp_switch_resume(%rip), %rax
	movq %rax, TASK_SAVED_RIP(%rdi)
	movl $-1, TASK_ON_CPU(%rdi)
	movq TASK_SAVED_RSP(%rsi), %rsp
	jmp *TASK_SAVED_RIP(%rsi)
	.globl klp_switch_resume
klp_switch_resume:
	popq %r15
	popq %r14
	popq %r13
	popq %r12
	popq %rbx
	popq %rbp
	ret
	.globl klp_switch_to_end
klp_switch_to_end:
	.size klp_switch_to, . - klp_switch_to

/*
 * First code of a new task, entered by klp_switch_to's "ret" with
 * RBX = function, R12 = argument, RBP = 0 (ends the frame chain).
 */
	.globl klp_task_start
	.type klp_task_start, @function
klp_task_start:
	call schedule_tail
	movq %r12, %rdi
	call *%rbx
	call kthread_exit
	ud2
	.size klp_task_start, . - klp_task_start

/* stub addresses for the IDT, vector order as in idt_vectors[] (trap.c) */
	.section .rodata
	.balign 8
	.globl isr_stub_table
isr_stub_table:
	.quad isr_0, isr_1, isr_2, isr_3, isr_4, isr_5, isr_6, isr_7
	.quad isr_8, isr_9, isr_10, isr_11, isr_12, isr_13, isr_14, isr_15
	.quad isr_16, isr_17, isr_18, isr_19, isr_20, isr_21, isr_22, isr_23
	.quad isr_24, isr_25, isr_26, isr_27, isr_28, isr_29, isr_30, isr_31
	.quad isr_32, isr_240, isr_255


	.data
	.balign 4
	.globl ap_release
ap_release:
	.long 0

	.section .bss
	.balign 4096
	.globl boot_stacks
boot_stacks:
	.skip BOOT_STACK_SIZE * (KLP_MAX_CPUS + 1)

	.section .note.GNU-stack, "", @progbits
