/*
 * bootguest: the VMM's boot test guest (klp-kvm boot protocol, see
 * guestkernel/include/boot_info.h). Every vCPU:
 *   1. prints "cpu N up" on COM1 (lines serialised by a lock cmpxchg spinlock),
 *   2. meets the others at a barrier,
 *   3. does `loops` (cmdline "loops=N", default 1000000) iterations of
 *      lock incq counter, also bumping its own slot in percpu[],
 *   4. meets the others again.
 * Then cpu 0 computes a checksum over a generated memory pattern with a
 * mix of ALU/mul/div/rotate/bit ops (mirrored in Go by e2e.Checksum),
 * prints "counter <hex>" and "checksum <hex>", and powers off with 42 if
 * counter == loops * nr_cpus, else 3. The other vCPUs cli; hlt.
 * Build: testdata/build.sh (reproducible; the e2e test checks it).
 */
	.set COM1, 0x3f8
	.set POWEROFF, 0xf4
	.set NR_CPUS_OFF, 16
	.set CMDLINE_OFF, 80
	.set PATTERN_QWORDS, 4096

	.text
	.globl _start
	.type _start, @function
_start:
	cli
	/* stack: stacks + (cpu+1)*4096 */
	lea stacks(%rip), %rsp
	mov %rsi, %rax
	inc %rax
	shl $12, %rax
	add %rax, %rsp
	mov %rdi, %r12          /* boot_info */
	mov %rsi, %r13          /* cpu index */
	mov NR_CPUS_OFF(%r12), %r14d

	test %r13, %r13
	jnz 1f
	call parse_loops
	movq %rax, loops(%rip)
	movl $1, loops_ready(%rip)
1:	cmpl $0, loops_ready(%rip)
	pause
	je 1b

	/* "cpu N up" */
	call lock_print
	lea msg_cpu(%rip), %rsi
	call puts
	mov %r13, %rax
	call putdec
	lea msg_up(%rip), %rsi
	call puts
	call unlock_print

	lea barrier1(%rip), %rdi
	call barrier

	/* the counter loop */
	movq loops(%rip), %rcx
	lea percpu(%rip), %rbx
2:	lock incq counter(%rip)
	incq (%rbx,%r13,8)
	dec %rcx
	jnz 2b

	lea barrier2(%rip), %rdi
	call barrier

	test %r13, %r13
	jz cpu0_finish
3:	cli
	hlt
	jmp 3b

cpu0_finish:
	call checksum
	mov %rax, %r15
	lea msg_counter(%rip), %rsi
	call puts
	movq counter(%rip), %rax
	call puthex
	lea msg_checksum(%rip), %rsi
	call puts
	mov %r15, %rax
	call puthex
	lea msg_nl(%rip), %rsi
	call puts
	/* exit code: 42 if counter == loops * nr_cpus */
	movq loops(%rip), %rax
	imul %r14, %rax
	mov $3, %edx
	mov $42, %ecx
	cmp counter(%rip), %rax
	cmove %ecx, %edx
	mov %edx, %eax
	mov $POWEROFF, %dx
	outl %eax, %dx
4:	hlt
	jmp 4b
	.size _start, .-_start

/* barrier(rdi = counter): lock incl, then wait until it reaches nr_cpus */
	.type barrier, @function
barrier:
	lock incl (%rdi)
1:	cmp (%rdi), %r14d
	je 2f
	pause
	jmp 1b
2:	ret
	.size barrier, .-barrier

	.type lock_print, @function
lock_print:
	push %rax
	push %rcx
1:	xor %eax, %eax
	mov $1, %ecx
	lock cmpxchg %ecx, print_lock(%rip)
	jz 2f
	pause
	jmp 1b
2:	pop %rcx
	pop %rax
	ret
	.size lock_print, .-lock_print

	.type unlock_print, @function
unlock_print:
	movl $0, print_lock(%rip)
	ret
	.size unlock_print, .-unlock_print

/* putc(al): wait for THRE, write */
	.type putc, @function
putc:
	push %rdx
	push %rax
1:	mov $COM1+5, %dx
	in %dx, %al
	test $0x20, %al
	jz 1b
	pop %rax
	mov $COM1, %dx
	out %al, %dx
	pop %rdx
	ret
	.size putc, .-putc

/* puts(rsi = NUL-terminated string) */
	.type puts, @function
puts:
	push %rax
1:	movzbl (%rsi), %eax
	test %al, %al
	jz 2f
	call putc
	inc %rsi
	jmp 1b
2:	pop %rax
	ret
	.size puts, .-puts

/* putdec(rax) */
	.type putdec, @function
putdec:
	push %rbx
	push %rcx
	push %rdx
	sub $32, %rsp
	mov %rsp, %rbx
	add $31, %rbx
	movb $0, (%rbx)
	mov $10, %ecx
1:	xor %edx, %edx
	div %rcx
	add $'0', %dl
	dec %rbx
	mov %dl, (%rbx)
	test %rax, %rax
	jnz 1b
	mov %rbx, %rsi
	call puts
	add $32, %rsp
	pop %rdx
	pop %rcx
	pop %rbx
	ret
	.size putdec, .-putdec

/* puthex(rax): 16 hex digits */
	.type puthex, @function
puthex:
	push %rcx
	push %rdx
	mov %rax, %rdx
	mov $16, %ecx
1:	rol $4, %rdx
	mov %edx, %eax
	and $0xf, %eax
	lea hexdigits(%rip), %rsi
	movzbl (%rsi,%rax), %eax
	call putc
	dec %ecx
	jnz 1b
	pop %rdx
	pop %rcx
	ret
	.size puthex, .-puthex

/* parse_loops: rax = N from "loops=N" in the cmdline, else 1000000 */
	.type parse_loops, @function
parse_loops:
	lea CMDLINE_OFF(%r12), %rsi
1:	movzbl (%rsi), %eax
	test %al, %al
	jz 9f
	cmpl $0x706f6f6c, (%rsi)      /* "loop" */
	jne 2f
	cmpw $0x3d73, 4(%rsi)         /* "s=" */
	jne 2f
	add $6, %rsi
	xor %eax, %eax
3:	movzbl (%rsi), %ecx
	sub $'0', %ecx
	cmp $9, %ecx
	ja 4f
	imul $10, %rax, %rax
	add %rcx, %rax
	inc %rsi
	jmp 3b
4:	test %rax, %rax
	jz 9f
	ret
2:	inc %rsi
	jmp 1b
9:	mov $1000000, %eax
	ret
	.size parse_loops, .-parse_loops

/*
 * checksum: fill pattern[i] = i*0x0123456789abcdef + 0xfedcba9876543210,
 * then mix every word into h (see e2e.Checksum for the same in Go).
 */
	.type checksum, @function
checksum:
	push %rbx
	push %r12
	lea pattern(%rip), %rdi
	xor %ecx, %ecx
	movabs $0x0123456789abcdef, %r8
	movabs $0xfedcba9876543210, %r9
1:	mov %rcx, %rax
	imul %r8, %rax
	add %r9, %rax
	mov %rax, (%rdi,%rcx,8)
	inc %rcx
	cmp $PATTERN_QWORDS, %rcx
	jne 1b

	movabs $0x9e3779b97f4a7c15, %rbx     /* h */
	movabs $0xff51afd7ed558ccd, %r10
	xor %ecx, %ecx
2:	mov (%rdi,%rcx,8), %r11              /* x */
	xor %r11, %rbx                       /* h ^= x */
	rol $13, %rbx                        /* h = rol(h, 13) */
	mov %rbx, %rax
	mul %r10                             /* rdx:rax = h * K */
	xor %rdx, %rax                       /* h = lo ^ hi */
	mov %rax, %rbx
	mov %r11, %rax
	bswap %rax
	add %rax, %rbx                       /* h += bswap(x) */
	mov %r11, %r12
	or $1, %r12
	mov %r12d, %r12d                     /* d = (x|1) & 0xffffffff */
	mov %rbx, %rax
	xor %edx, %edx
	div %r12                             /* q = h / d, r = h % d */
	xor %rax, %rbx                       /* h ^= q */
	add %rdx, %rbx                       /* h += r */
	bsr %r12, %rax
	add %rax, %rbx                       /* h += bsr(d) */
	shld $7, %r11, %rbx                  /* h = h<<7 | x>>57 */
	mov %rbx, %rax
	sar $3, %rax
	sub %rax, %rbx                       /* h -= (int64)h >> 3 */
	mov %rbx, %rax
	neg %rax
	cmp %rbx, %r11
	cmovb %rax, %rbx                     /* if x < h: h = -h */
	setc %al                             /* al = (x < old h), after cmp above? see Go */
	movzbl %al, %eax
	adc $0, %rbx                         /* CF from cmp is still set: h += CF */
	add %rax, %rbx                       /* h += al */
	inc %rcx
	cmp $PATTERN_QWORDS, %rcx
	jne 2b
	mov %rbx, %rax
	pop %r12
	pop %rbx
	ret
	.size checksum, .-checksum

	.section .rodata
msg_cpu:	.asciz "cpu "
msg_up:		.asciz " up\n"
msg_counter:	.asciz "counter "
msg_checksum:	.asciz "\nchecksum "
msg_nl:		.asciz "\n"
hexdigits:	.ascii "0123456789abcdef"

	.data
	.balign 64
	.globl counter
counter:	.quad 0
	.balign 64
print_lock:	.long 0
	.balign 64
barrier1:	.long 0
	.balign 64
barrier2:	.long 0
loops_ready:	.long 0
	.balign 8
	.globl loops
loops:		.quad 0
	.globl percpu
	.balign 64
percpu:		.fill 64, 8, 0

	.bss
	.balign 4096
stacks:		.fill 65*4096, 1, 0
	.balign 4096
pattern:	.fill PATTERN_QWORDS*8, 1, 0
