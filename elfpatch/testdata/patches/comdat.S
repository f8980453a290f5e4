/* Test patch: code in a COMDAT group (SHT_GROUP). There is no linker to pick
 * one copy of a group, so a patch with groups is refused (ErrFormat). */
	.section .text.grp_fn,"axG",@progbits,grp_fn,comdat
	.globl grp_fn
	.type grp_fn, @function
grp_fn:
	.byte 0x0f, 0x1f, 0x44, 0x00, 0x00	/* fentry NOP */
	ret
	.size grp_fn, .-grp_fn
	.section .rodata.str1.1,"aMS",@progbits,1
.Lold:	.string "klp_park_fn"
	.section .data.klp,"aw",@progbits
	.p2align 3
funcs:	.quad .Lold, grp_fn, 0
	.quad 0, 0, 0
objs:	.quad 0, funcs, 0, 0, 0, 0
	.quad 0, 0, 0, 0, 0, 0
patch:	.quad 0, objs, 0
	.section .klp.patch,"aw",@progbits
	.p2align 3
	.quad patch
	.section .note.GNU-stack,"",@progbits
