/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * bad-unknown-reloc.S - deliberately bad, hand-written: a patch whose new
 * function loads seq_printf's address through the GOT
 * (R_X86_64_REX_GOTPCRELX). klp-kvm has no GOT, so the patch must be refused
 * with an unknown-relocation error naming the type, section and offset.
 * The klp structures are spelled out by hand with the livepatch.h layout.
 */
	.section .text.bad_got_fn,"ax",@progbits
	.p2align 4
	.type bad_got_fn, @function
bad_got_fn:
	.byte 0x0f, 0x1f, 0x44, 0x00, 0x00	/* the fentry NOP (gas would shorten nopl 0(%rax,%rax,1)) */
	movq seq_printf@GOTPCREL(%rip), %rax
	xorl %eax, %eax
	ret
	.size bad_got_fn, .-bad_got_fn

	.section __mcount_loc,"a",@progbits
	.quad bad_got_fn

	.section .rodata.str1.1,"aMS",@progbits,1
.Lold_name:
	.string "cmdline_proc_show"

	.section .data.funcs,"aw",@progbits
	.p2align 3
funcs:	/* struct klp_func[2] */
	.quad .Lold_name, bad_got_fn, 0
	.quad 0, 0, 0
objs:	/* struct klp_object[2] */
	.quad 0, funcs, 0, 0, 0, 0
	.quad 0, 0, 0, 0, 0, 0
patch:	/* struct klp_patch */
	.quad 0, objs, 0

	.section .klp.patch,"aw",@progbits
	.p2align 3
	.quad patch

	.section .klp.modname,"a",@progbits
	.string "bad_unknown_reloc"

	.section .note.GNU-stack,"",@progbits
