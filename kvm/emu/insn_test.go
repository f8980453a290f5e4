package emu

import (
	"fmt"
	"testing"

	"klp-kvm/kvm/engine"
)

// regByName reads a register from engine.Regs by its AT&T name.
func regByName(r engine.Regs, name string) uint64 {
	m := map[string]uint64{
		"rax": r.RAX, "rbx": r.RBX, "rcx": r.RCX, "rdx": r.RDX, "rsi": r.RSI, "rdi": r.RDI,
		"rsp": r.RSP, "rbp": r.RBP, "r8": r.R8, "r9": r.R9, "r10": r.R10, "r11": r.R11,
		"r12": r.R12, "r13": r.R13, "r14": r.R14, "r15": r.R15, "rflags": r.RFLAGS,
	}
	v, ok := m[name]
	if !ok {
		panic("no register " + name)
	}
	return v
}

// insnCase is a snippet run from a fresh machine; want lists register
// values at the end (the snippet must not touch %dx/%eax after setting
// them if they are checked: the epilogue writes EAX to port 0xf4 via DX,
// so checks of rdx see 0xf4). Data lives in the `data` area (64 bytes,
// 16-aligned) and mem lists expected quadwords at data+offset.
type insnCase struct {
	name string
	code string
	want map[string]uint64
	mem  map[int]uint64
}

const epilogue = `
	mov %rdx, %r15               # keep RDX visible to the checks
	mov $0xf4, %dx
	out %eax, %dx
	hlt
.balign 16
data:	.quad 0x0706050403020100, 0x0f0e0d0c0b0a0908, 0x1716151413121110, 0x1f1e1d1c1b1a1918
	.quad 0x2726252423222120, 0x2f2e2d2c2b2a2928, 0x3736353433323130, 0x3f3e3d3c3b3a3938
	.skip 64
`

var insnCases = []insnCase{
	{"movsx-movzx", `
		mov $0x80, %eax
		movsbq %al, %rbx
		movswl %ax, %ecx
		mov $-5, %esi
		movslq %esi, %rsi
		movzbl %al, %edi
		movsbw %al, %r8w
		movzwq data+2, %r9
		movsbl data+0x38+7, %r10d
	`, map[string]uint64{"rbx": 0xffffffffffffff80, "rcx": 0x80, "rsi": 0xfffffffffffffffb, "rdi": 0x80,
		"r8": 0xff80, "r9": 0x0302, "r10": 0x3f}, nil},
	{"cmov", `
		mov $1, %eax
		mov $2, %ebx
		movabs $0xffffffff00000005, %rcx
		cmp %eax, %ebx
		cmovg %eax, %ecx             # taken
		movabs $0xffffffff00000007, %rsi
		cmovl %eax, %esi             # not taken: still zero-extends
		movabs $0x1111111111111111, %rdi
		cmovl %rax, %rdi             # not taken, 64-bit: unchanged
		cmovge data, %r8             # memory source
	`, map[string]uint64{"rcx": 1, "rsi": 7, "rdi": 0x1111111111111111, "r8": 0x0706050403020100}, nil},
	{"setcc", `
		xor %ebx, %ebx
		xor %ecx, %ecx
		xor %esi, %esi
		xor %edi, %edi
		mov $5, %eax
		cmp $7, %eax
		setb %bl
		setg %cl
		sete %sil
		setle %dil
		mov $-1, %r8
		add $1, %r8
		setc %r9b
		movzbq %r9b, %r9
		setz data
		setp data+1
		mov data, %r10w
	`, map[string]uint64{"rbx": 1, "rcx": 0, "rsi": 0, "rdi": 1, "r9": 1, "r10": 0x0101}, nil},
	{"lea", `
		mov $0x1000, %eax
		mov $3, %ebx
		lea 8(%rax,%rbx,4), %rcx
		lea -1(%rax), %esi
		lea 0x10(,%rbx,8), %rdi
		lea 1f(%rip), %r8
	1:	mov $0xffffffff, %r9d
		lea 2(%r9), %r10d             # 32-bit wraps
		lea 2(%r9), %r11              # 64-bit does not
		lea (%rbx,%rbx,2), %r12w
	`, map[string]uint64{"rcx": 0x1014, "rsi": 0xfff, "rdi": 0x28, "r10": 1, "r11": 0x100000001, "r12": 9}, nil},
	{"push-pop", `
		mov %rsp, %rbp
		push $-2
		pushq data+8
		push %rsp
		pop %rbx                      # value pushed = RSP before the push
		pop %rcx
		pop %rsi
		push $0x1234
		popq data+16
		mov %rbp, %rdi
		sub %rsp, %rdi
		pushw $7
		pop %r8w
	`, map[string]uint64{"rcx": 0x0f0e0d0c0b0a0908, "rsi": 0xfffffffffffffffe, "rdi": 0, "r8": 7}, map[int]uint64{16: 0x1234}},
	{"pop-rsp", `
		mov %rsp, %rbx
		pushq $0x70000
		pop %rsp
		mov %rsp, %rcx
		mov %rbx, %rsp
	`, map[string]uint64{"rcx": 0x70000}, nil},
	{"call-ret-leave", `
		mov %rsp, %rbx
		push $11
		call f
		mov %rsp, %rcx
		sub %rcx, %rbx                # ret $8 popped the argument
		jmp 2f
	f:	push %rbp
		mov %rsp, %rbp
		sub $32, %rsp
		mov 16(%rbp), %rsi
		leave
		ret $8
	2:
	`, map[string]uint64{"rbx": 0, "rsi": 11}, nil},
	{"jump-table-indirect", `
		mov $2, %eax
		jmp *table(,%rax,8)
	c0:	mov $100, %ebx
		jmp 9f
	c1:	mov $101, %ebx
		jmp 9f
	c2:	mov $102, %ebx
		lea fn(%rip), %rcx
		call *%rcx
		call *fptr(%rip)
		jmp 9f
	fn:	add $10, %ebx
		ret
	.balign 8
	table:	.quad c0, c1, c2
	fptr:	.quad fn
	9:
	`, map[string]uint64{"rbx": 122}, nil},
	{"rep-movs-forward", `
		lea data, %rsi
		lea data+64, %rdi
		mov $13, %ecx
		cld
		rep movsb
		mov %rcx, %rbx
		lea data, %r8
		sub %r8, %rsi
	`, map[string]uint64{"rbx": 0, "rsi": 13}, map[int]uint64{64: 0x0706050403020100, 72: 0x0c0b0a0908}},
	{"rep-movs-backward", `
		lea data+24, %rsi
		lea data+88, %rdi
		mov $4, %ecx
		std
		rep movsq
		cld
		lea data, %r8
		sub %r8, %rsi
		sub %r8, %rdi
	`, map[string]uint64{"rcx": 0, "rsi": 0xfffffffffffffff8, "rdi": 56},
		map[int]uint64{64: 0x0706050403020100, 88: 0x1f1e1d1c1b1a1918}},
	{"rep-movs-overlap", `
		lea data, %rsi
		lea data+1, %rdi
		mov $8, %ecx
		rep movsb                      # byte-wise forward copy replicates data[0]
		lea data+32, %rsi
		lea data+24, %rdi
		mov $2, %ecx
		rep movsq                      # downward overlap
	`, map[string]uint64{"rcx": 0}, map[int]uint64{0: 0, 8: 0x0f0e0d0c0b0a0900, 24: 0x2726252423222120, 32: 0x2f2e2d2c2b2a2928}},
	{"rep-movs-cross-page", `
		mov $0x200ff8, %rsi
		movabs $0x1122334455667788, %rax
		mov %rax, (%rsi)
		mov %rax, 8(%rsi)
		mov $0x300ffc, %rdi
		mov $4, %ecx
		rep movsl                      # both sides cross a page boundary
		mov 0x300ffc, %rbx
		mov 0x301004, %r8
	`, map[string]uint64{"rbx": 0x1122334455667788, "r8": 0x1122334455667788, "rsi": 0x201008}, nil},
	{"rep-stos", `
		lea data+64, %rdi
		mov $0x41, %eax
		mov $3, %ecx
		rep stosl
		std
		lea data+120, %rdi
		mov $-1, %rax
		mov $2, %ecx
		rep stosq
		cld
		lea data, %r8
		sub %r8, %rdi
		mov $0, %ecx
		rep stosb                      # RCX=0: nothing
	`, map[string]uint64{"rdi": 104}, map[int]uint64{64: 0x0000004100000041, 72: 0x41, 112: ^uint64(0), 120: ^uint64(0)}},
	{"lods-scas-cmps", `
		lea data, %rsi
		lodsw
		movzwl %ax, %ebx
		lea data, %rdi
		mov $5, %al
		mov $16, %ecx
		repne scasb                    # finds byte 5 at offset 5
		lea data, %r8
		mov %rdi, %r9
		sub %r8, %r9
		mov %rcx, %r10
		lea data, %rsi
		lea data, %rdi
		mov $8, %ecx
		repe cmpsb                     # all equal
		mov %rcx, %r11
		setz %r12b
		movzbl %r12b, %r12d
	`, map[string]uint64{"rbx": 0x0100, "r9": 6, "r10": 10, "r11": 0, "r12": 1}, nil},
	{"xchg", `
		mov $1, %eax
		mov $2, %ebx
		xchg %rax, %rbx
		mov $0x55, %ecx
		xchg %rcx, data
		movabs $0xffffffff12345678, %rsi
		xchg %esi, %esi                # 32-bit: zero-extends
		mov $0xaa, %dil
		xchg %dil, data+8
		movzbl %dil, %edi
	`, map[string]uint64{"rax": 2, "rbx": 1, "rcx": 0x0706050403020100, "rsi": 0x12345678, "rdi": 8},
		map[int]uint64{0: 0x55, 8: 0x0f0e0d0c0b0a09aa}},
	{"xadd", `
		mov $5, %eax
		lock xadd %rax, data
		mov %rax, %rbx
		mov $1, %ecx
		mov $-1, %esi
		xadd %esi, %ecx                 # ecx = 0, esi = 1, ZF
		setz %dil
		movzbl %dil, %edi
	`, map[string]uint64{"rbx": 0x0706050403020100, "rcx": 0, "rsi": 1, "rdi": 1},
		map[int]uint64{0: 0x0706050403020105}},
	{"cmpxchg", `
		movabs $0x0706050403020100, %rax
		mov $9, %ecx
		lock cmpxchg %rcx, data          # equal: store 9, ZF=1
		setz %bl
		mov $1, %eax
		lock cmpxchg %rcx, data+8        # differs: rax = memory, ZF=0
		setz %bh
		movzwl %bx, %ebx
		mov %rax, %rsi
		mov $3, %eax
		mov $3, %edi
		mov $4, %r8d
		cmpxchg %r8d, %edi                # register form
		mov $0x42, %al
		mov $0x7, %cl
		lock cmpxchg %cl, data+16         # byte: differs (0x10)
		movzbl %al, %r9d
	`, map[string]uint64{"rbx": 0x0001, "rsi": 0x0f0e0d0c0b0a0908, "rdi": 4, "r9": 0x10},
		map[int]uint64{0: 9, 8: 0x0f0e0d0c0b0a0908}},
	{"cmpxchg16b", `
		movabs $0x0706050403020100, %rax
		movabs $0x0f0e0d0c0b0a0908, %rdx
		mov $1, %ebx
		mov $2, %ecx
		lock cmpxchg16b data              # equal: stores RCX:RBX
		setz %sil
		xor %eax, %eax
		xor %edx, %edx
		lock cmpxchg16b data+16           # differs: loads RDX:RAX
		setz %dil
		movzbl %sil, %esi
		movzbl %dil, %edi
		mov %rax, %r8
	`, map[string]uint64{"rsi": 1, "rdi": 0, "r8": 0x1716151413121110, "r15": 0x1f1e1d1c1b1a1918},
		map[int]uint64{0: 1, 8: 2}},
	{"cmpxchg8b", `
		mov $0x03020100, %eax
		mov $0x07060504, %edx
		mov $0xaaaa, %ebx
		mov $0xbbbb, %ecx
		lock cmpxchg8b data
		setz %sil
		movzbl %sil, %esi
	`, map[string]uint64{"rsi": 1}, map[int]uint64{0: 0x0000bbbb0000aaaa}},
	{"bswap", `
		movabs $0x0102030405060708, %rax
		mov %rax, %rbx
		bswap %rbx
		mov %rax, %rcx
		bswap %ecx
	`, map[string]uint64{"rbx": 0x0807060504030201, "rcx": 0x08070605}, nil},
	{"sign-extend-acc", `
		mov $0x80, %eax
		cbw                          # ax = 0xff80
		movzwl %ax, %ebx
		mov $0x8000, %eax
		cwde
		mov %rax, %rcx
		mov $0x80000000, %eax
		cdqe
		mov %rax, %rsi
		cqo
		mov %rdx, %rdi
		mov $0x8000, %eax
		cwd
		movzwl %dx, %r8d
		mov $5, %eax
		cdq
		mov %rdx, %r9
	`, map[string]uint64{"rbx": 0xff80, "rcx": 0xffff8000, "rsi": 0xffffffff80000000, "rdi": ^uint64(0), "r8": 0xffff, "r9": 0}, nil},
	{"mul-div-128", `
		mov $-1, %rax
		mov %rax, %rbx
		mul %rbx                     # (2^64-1)^2
		mov %rax, %rcx
		mov %rdx, %rsi
		div %rbx                     # back to 2^64-1, remainder 0
		mov %rax, %rdi
		mov %rdx, %r8
		mov $-7, %rax
		cqo
		mov $2, %r9
		idiv %r9                     # -3 rem -1
		mov %rax, %r10
		mov %rdx, %r11
		mov $-3, %rax
		mov $5, %r12
		imul %r12                    # signed 128-bit: -15
		mov %rdx, %r13
		imul $-7, %r12, %r14         # 3-operand
		mov $0x12, %al
		mov $0x10, %bl
		mul %bl                      # ax = 0x120
		movzwl %ax, %ebp
	`, map[string]uint64{"rcx": 1, "rsi": 0xfffffffffffffffe, "rdi": ^uint64(0), "r8": 0,
		"r10": 0xfffffffffffffffd, "r11": ^uint64(0), "r13": ^uint64(0), "r14": 0xffffffffffffffdd, "rbp": 0x120}, nil},
	{"bitscan", `
		mov $0x50, %eax
		bsf %eax, %ebx
		bsr %eax, %ecx
		xor %edx, %edx
		mov $77, %esi
		bsf %edx, %esi               # source 0: destination unchanged, ZF=1
		setz %dil
		movzbl %dil, %edi
		tzcnt %edx, %r8d             # rep bsf = tzcnt: 32 for 0
		mov $-1, %r9
		popcnt %r9, %r9
		lzcnt %eax, %r10d
	`, map[string]uint64{"rbx": 4, "rcx": 6, "rsi": 77, "rdi": 1, "r8": 32, "r9": 64, "r10": 25}, nil},
	{"shld-shrd-bt", `
		movabs $0x8000000000000001, %rax
		mov $0xf, %ebx
		shld $4, %rax, %rbx           # rbx = 0xf8
		mov $8, %cl
		movabs $0x1122334455667788, %rsi
		mov $0xff, %edi
		shrd %cl, %rdi, %rsi          # rsi = 0xff11223344556677
		mov $67, %ecx
		bts %rcx, data                # bit 67: byte 8 bit 3
		setc %r8b
		movzbl %r8b, %r8d
		mov $-1, %r9
		btr $63, %r9
	`, map[string]uint64{"rbx": 0xf8, "rsi": 0xff11223344556677, "r8": 1, "r9": 0x7fffffffffffffff},
		map[int]uint64{8: 0x0f0e0d0c0b0a0908}},
	{"bt-negative-offset", `
		mov $-64, %rcx
		lea data+8, %rbx
		btsq %rcx, (%rbx)             # bit -64 from data+8 = bit 0 of data
		setc %sil
		movzbl %sil, %esi
	`, map[string]uint64{"rsi": 0}, map[int]uint64{0: 0x0706050403020101}},
	{"flags-lahf-pushf", `
		stc
		lahf
		movzbl %ah, %ebx
		clc
		cmc
		setc %cl
		movzbl %cl, %ecx
		pushfq
		pop %rsi
		and $0x401, %rsi
		std
		pushfq
		pop %rdi
		and $0x400, %rdi
		cld
		mov $0xc1, %ah                # SF ZF CF
		sahf
		setz %r8b
		sets %r9b
		movzbl %r8b, %r8d
		movzbl %r9b, %r9d
		push $0x8d5                   # popfq: OF SF ZF AF PF CF and bit 1
		popfq
		seto %r10b
		movzbl %r10b, %r10d
	`, map[string]uint64{"rbx": 0x03, "rcx": 1, "rsi": 1, "rdi": 0x400, "r8": 1, "r9": 1, "r10": 1}, nil},
	{"gs-swapgs", `
		mov $0xc0000101, %ecx         # GS base
		lea data, %rax
		xor %edx, %edx
		wrmsr
		mov %gs:8, %rbx
		mov $0xc0000102, %ecx         # kernel GS base
		lea data+16, %rax
		wrmsr
		swapgs
		mov %gs:0, %rsi
		mov $0xc0000101, %ecx
		rdmsr
		lea data+16, %rdi
		sub %rax, %rdi
	`, map[string]uint64{"rbx": 0x0f0e0d0c0b0a0908, "rsi": 0x1716151413121110, "rdi": 0}, nil},
	{"cpuid-rdtsc", `
		mov $1, %eax
		xor %ecx, %ecx
		cpuid
		mov %rcx, %rsi
		and $0x200000, %rsi            # x2APIC
		shr $24, %ebx                  # APIC ID
		mov %rbx, %rdi
		mov $0x80000001, %eax
		cpuid
		mov %rdx, %r8
		and $0x20100000, %r8           # LM, NX
		rdtsc
		shl $32, %rdx
		or %rax, %rdx
		mov %rdx, %r9
		rdtsc
		shl $32, %rdx
		or %rax, %rdx
		sub %r9, %rdx
		mov %rdx, %r10
		shr $40, %r10                  # small positive difference
		mov $0x802, %ecx               # x2APIC ID
		rdmsr
		mov %rax, %r11
	`, map[string]uint64{"rsi": 0x200000, "rdi": 0, "r8": 0x20100000, "r10": 0, "r11": 0}, nil},
	{"loop-jrcxz", `
		mov $5, %ecx
		xor %ebx, %ebx
	1:	inc %ebx
		loop 1b
		jrcxz 2f
		mov $99, %ebx
	2:
	`, map[string]uint64{"rbx": 5, "rcx": 0}, nil},
	{"moffs-movabs", `
		movabs data+8, %rax
		mov %rax, %rbx
		movabs $0x55, %rax
		movabs %rax, data
	`, map[string]uint64{"rbx": 0x0f0e0d0c0b0a0908}, map[int]uint64{0: 0x55}},
	{"shifts-rotates", `
		mov $0x81, %al
		rol $1, %al
		movzbl %al, %ebx
		mov $1, %rcx
		shl $63, %rcx
		sar $3, %rcx
		mov $0xf0, %esi
		mov $4, %cl
		shr %cl, %esi
		mov $-1, %rdi
		shl $1, %edi                     # 32-bit op zero-extends
		stc
		mov $0, %r8d
		rcl $1, %r8d
	`, map[string]uint64{"rbx": 0x03, "rsi": 0xf, "rdi": 0xfffffffe, "r8": 1}, nil},
	{"memory-forms", `
		lea data, %rbx
		addq $5, (%rbx)                 # MI
		subw $1, 8(%rbx)                # MI, 16-bit
		mov $3, %ecx
		xorl %ecx, 16(%rbx)             # MR, 32-bit
		cmpq $0x03020105, (%rbx)        # sign-extended imm32: not equal
		sete %r8b
		lock orq $0x2000, 24(%rbx)      # locked MI
		lock incl 32(%rbx)
		lock btsq $1, 40(%rbx)
		setc %r9b
		notq 48(%rbx)
		negb 56(%rbx)
		movabs $0x8000000000000001, %rax
		mov %rax, 64(%rbx)
		shlq $4, 64(%rbx)
		movabs $0x1122334455667788, %rax
		mov %rax, 72(%rbx)
		shrdq $8, %rcx, 72(%rbx)
		mov $7, %eax
		lock xaddl %eax, 81(%rbx)       # misaligned: the VM-wide lock path
		mov %rax, %r10
		movzbl %r8b, %r8d
		movzbl %r9b, %r9d
	`, map[string]uint64{"r8": 0, "r9": 0, "r10": 0},
		map[int]uint64{0: 0x0706050403020105, 8: 0x0f0e0d0c0b0a0907, 16: 0x1716151413121113, 24: 0x1f1e1d1c1b1a3918,
			32: 0x2726252423222121, 40: 0x2f2e2d2c2b2a292a, 48: 0xc8c9cacbcccdcecf, 56: 0x3f3e3d3c3b3a39c8,
			64: 0x10, 72: 0x0311223344556677, 80: 0x0700}},
	{"alu-narrow-and-reg-mem", `
		lea data, %rbx
		mov $1, %eax
		add 8(%rbx), %rax               # reg, mem (64-bit)
		mov %rax, %r8
		mov $0x1234, %cx
		sub 2(%rbx), %cx                # reg, mem (16-bit): 0x1234 - 0x0302
		movzwl %cx, %ecx
		mov $0x10ff, %esi
		add $1, %sil                    # carry out of the low byte only
		adc $0, %esi
		xor %eax, %eax
		mov $0x40, %ah
		add %ah, %ah                    # 0x40 + 0x40: OF
		seto %dil
		movzbl %dil, %edi
		mov %rax, %r11
		movabs $0xffffffffffffffff, %r12
		and $0xf0, %r12b                # 8-bit op merges
		or $0x1, %r12w                  # 16-bit op merges
		mov $0x12345678, %r13d
		xor %r13w, %r13w                # upper 48 bits kept
	`, map[string]uint64{"r8": 0x0f0e0d0c0b0a0909, "rcx": 0x0f32, "rsi": 0x1001, "rdi": 1, "r11": 0x8000,
		"r12": 0xfffffffffffffff1, "r13": 0x12340000}, nil},
	{"locked-straddling-page", `
		mov $0x300ffc, %rbx             # 8 bytes across a 4 KiB boundary
		movabs $0x1111111122222222, %rax
		mov %rax, (%rbx)
		mov $5, %ecx
		lock cmpxchg %rcx, (%rbx)
		sete %sil
		movzbl %sil, %esi
		mov (%rbx), %rdi
		mov $9, %r8d
		xchg %r8, (%rbx)
		mov (%rbx), %r9
		mov $0x300ffe, %r10             # 4 bytes, misaligned within a word
		movl $0x10, (%r10)
		lock addl $0x20, (%r10)
		mov (%r10), %r11d
	`, map[string]uint64{"rsi": 1, "rdi": 5, "r8": 5, "r9": 9, "r11": 0x30}, nil},
	{"endbr-nops", `
		endbr64
		nopw 0x0(%rax,%rax,1)
		nopl 0x0(%rax)
		.byte 0x66, 0x2e, 0x0f, 0x1f, 0x84, 0, 0, 0, 0, 0
		.byte 0x0f, 0x1f, 0x44, 0x00, 0x00
		pause
		mfence
		lfence
		sfence
		mov $1, %ebx
	`, map[string]uint64{"rbx": 1}, nil},
	{"partial-registers", `
		movabs $0x1122334455667788, %rax
		mov $0xaa, %ah
		mov $0xbb, %al
		mov %rax, %rbx
		mov $0xcc, %r8b
		movabs $0xffffffffffffffff, %rcx
		mov %r8b, %cl
		mov $0x1234, %cx
		mov %ah, %dh
		movzbl %dh, %esi
	`, map[string]uint64{"rbx": 0x112233445566aabb, "rcx": 0xffffffffffff1234, "rsi": 0xaa}, nil},
}

func TestInstructions(t *testing.T) {
	for _, tc := range insnCases {
		t.Run(tc.name, func(t *testing.T) {
			m := newMachine(t, "_start:\n"+tc.code+epilogue, 1)
			m.run(0)
			r := m.regs(0)
			for name, want := range tc.want {
				if got := regByName(r, name); got != want {
					t.Errorf("%s = %#x, want %#x", name, got, want)
				}
			}
			base := m.sym("data")
			for off, want := range tc.mem {
				if got := m.u64(base + uint64(off)); got != want {
					t.Errorf("data+%d = %#x, want %#x", off, got, want)
				}
			}
			if t.Failed() {
				t.Log(fmt.Sprintf("regs: %+v", r))
			}
		})
	}
}
