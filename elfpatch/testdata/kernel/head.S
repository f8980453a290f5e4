/* Fixture kernel entry: an asm function with .type/.size and no fentry NOP. */
	.section .head.text,"ax",@progbits
	.globl _start
	.type _start, @function
_start:
	call start_kernel
1:	hlt
	jmp 1b
	.size _start, .-_start
	.section .note.GNU-stack,"",@progbits
