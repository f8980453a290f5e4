/* Test patch: an R_X86_64_32 against a patch-internal symbol, whose address
 * (0xffffffffa0xxxxxx) cannot be zero-extended from 32 bits: ErrRange. */
	.section .text.range_fn,"ax",@progbits
	.type range_fn, @function
range_fn:
	.byte 0x0f, 0x1f, 0x44, 0x00, 0x00	/* fentry NOP */
	movl $range_fn, %eax
	ret
	.size range_fn, .-range_fn
	.section __mcount_loc,"a",@progbits
	.quad range_fn
	.section .rodata.str1.1,"aMS",@progbits,1
.Lold:	.string "klp_park_fn"
	.section .data.klp,"aw",@progbits
	.p2align 3
funcs:	.quad .Lold, range_fn, 0
	.quad 0, 0, 0
objs:	.quad 0, funcs, 0, 0, 0, 0
	.quad 0, 0, 0, 0, 0, 0
patch:	.quad 0, objs, 0
	.section .klp.patch,"aw",@progbits
	.p2align 3
	.quad patch
	.section .note.GNU-stack,"",@progbits
