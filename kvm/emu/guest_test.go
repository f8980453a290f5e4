package emu

import (
	"strings"
	"sync"
	"testing"
	"time"

	"klp-kvm/kvm/engine"
)

// done is the epilogue every test program uses: OUT EAX to the done port.
const done = `
	mov $0xf4, %dx
	out %eax, %dx
	hlt
`

// report writes EAX to I/O port n (logged by the harness).
func report(n int) string {
	return "\tmov $" + itoa(n) + ", %dx\n\tout %eax, %dx\n"
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	s := ""
	neg := n < 0
	if neg {
		n = -n
	}
	for n > 0 {
		s = string(rune('0'+n%10)) + s
		n /= 10
	}
	if neg {
		s = "-" + s
	}
	return s
}

// x2apic MSR write helper: wrmsr(msr, value32).
func wrmsr(msr, val uint32) string {
	return "\tmov $" + itoa(int(msr)) + ", %ecx\n\tmov $" + itoa(int(val)) + ", %eax\n\txor %edx, %edx\n\twrmsr\n"
}

func (m *machine) logged(port uint16) []uint64 {
	var v []uint64
	for _, r := range m.ioLog {
		if r.port == port {
			v = append(v, r.val)
		}
	}
	return v
}

func TestSimpleArith(t *testing.T) {
	m := newMachine(t, `
_start:
	mov $10, %ecx
	xor %eax, %eax
1:	add %ecx, %eax
	dec %ecx
	jnz 1b
	`+done, 1)
	if got := m.run(0); got != 55 {
		t.Fatalf("sum = %d, want 55", got)
	}
	if s := m.cpus[0].Stats(); s.Instructions < 30 || s.Exits == 0 {
		t.Fatalf("stats %+v", s)
	}
}

func TestPagingLargePages(t *testing.T) {
	m := newMachine(t, `
_start:
	movabs $0x1122334455667788, %rax
	mov %rax, 0x200008          # through the 2 MiB identity map
	mov 0x40200008, %rbx        # the same PA through the 1 GiB page
	cmp %rax, %rbx
	jne fail
	# 4 KiB page: map VA 0x3fe05000 -> PA 0x300000 and read through it.
	movq $0x300003, 0x4000+5*8
	movl $0xcafe, 0x300010
	mov 0x3fe05010, %eax
	`+done+`
fail:
	mov $1, %eax
	`+done, 1)
	if got := m.run(0); got != 0xcafe {
		t.Fatalf("got %#x", got)
	}
	// The walk set accessed bits; the 2 MiB write set the dirty bit.
	if pde := m.u64(tPD + 8); pde&(pteA|pteD) != pteA|pteD {
		t.Fatalf("PDE[1] = %#x, want A and D set", pde)
	}
	if pte := m.u64(tPT + 5*8); pte&pteA == 0 || pte&pteD != 0 {
		t.Fatalf("PTE[5] = %#x, want A set and D clear", pte)
	}
}

func TestPageFaultFixup(t *testing.T) {
	m := newMachine(t, `
_start:
	movl $77, 0x301000
	mov 0x3fe07000, %eax        # not present: #PF, handler maps it, retry
	`+report(1)+`
	# write to a read-only mapping
	movq $0x302001, 0x4000+8*8  # present, read-only
	movl $5, 0x3fe08004          # #PF with P|W; handler makes it writable
	mov 0x302004, %eax
	`+report(2)+`
	mov count, %eax
	`+done+`
vec_14:
	mov %cr2, %rax
	`+report(3)+`
	mov (%rsp), %rax             # error code
	`+report(4)+`
	mov %cr2, %rax
	sub $0x3fe00000, %rax
	shr $12, %rax
	lea 0x4000(,%rax,8), %rbx
	mov (%rbx), %rcx
	test %rcx, %rcx
	jnz 1f
	movq $0x301003, (%rbx)       # map the missing page
	jmp 2f
1:	orq $2, (%rbx)               # make it writable
	invlpg (%rbx)
2:	incl count
	add $8, %rsp                 # drop the error code
	iretq
.align 8
count: .quad 0
	`, 1)
	if got := m.run(0); got != 2 {
		t.Fatalf("handler ran %d times, want 2", got)
	}
	want := map[uint16][]uint64{1: {77}, 2: {5}, 3: {0x3fe07000, 0x3fe08004}, 4: {0, 3}}
	for port, w := range want {
		if got := m.logged(port); !equalU64(got, w) {
			t.Errorf("port %d: got %#x want %#x", port, got, w)
		}
	}
}

func equalU64(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// Exceptions whose handler resumes at a recovery label stored in %r15.
const recoverHandler = `
	mov (%rsp), %rax             # error code
	`

func TestExceptionsGPDEUDBP(t *testing.T) {
	m := newMachine(t, `
_start:
	lea 1f(%rip), %r15
	movabs $0x8000000000000000, %rbx
	mov (%rbx), %rax             # non-canonical: #GP(0)
1:	lea 2f(%rip), %r15
	xor %ecx, %ecx
	mov $7, %eax
	xor %edx, %edx
	div %ecx                     # #DE
2:	lea 3f(%rip), %r15
	ud2                          # #UD
3:	int3                         # #BP: trap, returns after the int3
	mov $0x80000000, %eax
	cdq
	mov $-1, %ecx
	lea 4f(%rip), %r15
	idiv %ecx                    # INT_MIN / -1 overflows: #DE
4:	lea 5f(%rip), %r15
	mov $0x12345, %ecx
	rdmsr                        # unknown MSR: #GP(0)
5:	mov bp, %eax
	`+done+`
vec_13:
	mov (%rsp), %rax
	`+report(13)+`
	add $8, %rsp
	mov %r15, (%rsp)
	iretq
vec_0:
	mov $0, %eax
	`+report(10)+`
	mov %r15, (%rsp)
	iretq
vec_6:
	mov $6, %eax
	`+report(16)+`
	mov %r15, (%rsp)
	iretq
vec_3:
	mov (%rsp), %rax             # saved RIP: the instruction after int3
	`+report(3)+`
	incl bp
	iretq
bp: .long 0
	`, 1)
	if got := m.run(0); got != 1 {
		t.Fatalf("bp count %d", got)
	}
	if got := m.logged(13); !equalU64(got, []uint64{0, 0}) {
		t.Errorf("#GP error codes %#x", got)
	}
	if got := m.logged(10); len(got) != 2 {
		t.Errorf("#DE count %d, want 2", len(got))
	}
	if got := m.logged(16); len(got) != 1 {
		t.Errorf("#UD count %d", len(got))
	}
	// int3 is at label 3: find it: saved RIP must be inside the program, after int3.
	if got := m.logged(3); len(got) != 1 || got[0] <= tCode {
		t.Errorf("#BP saved RIP %#x", got)
	}
}

func TestIO(t *testing.T) {
	m := newMachine(t, `
_start:
	mov $0xab, %al
	out %al, $0x80
	mov $0x1234, %ax
	mov $0x81, %dx
	out %ax, %dx
	mov $0xdeadbeef, %eax
	out %eax, $0x82
	in $0x60, %al
	movzbl %al, %ebx
	mov $0x61, %dx
	in %dx, %ax
	movzwl %ax, %ecx
	in %dx, %eax
	shl $16, %rbx
	or %rcx, %rbx
	shl $32, %rbx
	or %rax, %rbx
	mov %rbx, result
	lea buf, %rdi
	mov $0x70, %dx
	mov $3, %ecx
	rep insw                     # three IN exits, stored in order
	mov $1, %eax
	`+done+`
.align 8
result: .quad 0
buf: .quad 0
	`, 1)
	nIns := uint32(0)
	m.inVal = func(port uint16) uint32 {
		switch port {
		case 0x60:
			return 0x5a
		case 0x70:
			nIns++
			return 0x1110 + nIns
		}
		return 0x87654321
	}
	m.run(0)
	want := []ioRecord{{0x80, 0xab, 1}, {0x81, 0x1234, 2}, {0x82, 0xdeadbeef, 4}}
	if len(m.ioLog) != 3 {
		t.Fatalf("io log %+v", m.ioLog)
	}
	for i, w := range want {
		if m.ioLog[i] != w {
			t.Errorf("out %d: %+v want %+v", i, m.ioLog[i], w)
		}
	}
	if got := m.u64(m.sym("result")); got != 0x005a4321_87654321 {
		t.Errorf("IN results %#x", got)
	}
	if got := m.u64(m.sym("buf")); got != 0x0000_1113_1112_1111 {
		t.Errorf("rep insw stored %#x", got)
	}
}

func TestMMIO(t *testing.T) {
	m := newMachine(t, `
_start:
	mov $0x30000010, %rbx
	movl $0x11223344, (%rbx)     # MMIO write
	mov 8(%rbx), %rcx            # MMIO read
	mov %rcx, %rax
	`+done, 1)
	ex := m.runExit(0)
	if ex.Reason != engine.ExitMMIO || !ex.MMIO.Write || ex.MMIO.Addr != 0x30000010 || len(ex.MMIO.Data) != 4 ||
		ex.MMIO.Data[0] != 0x44 || ex.MMIO.Data[3] != 0x11 {
		t.Fatalf("write exit %+v", ex)
	}
	ex = m.runExit(0)
	if ex.Reason != engine.ExitMMIO || ex.MMIO.Write || ex.MMIO.Addr != 0x30000018 || len(ex.MMIO.Data) != 8 {
		t.Fatalf("read exit %+v", ex)
	}
	for i := range ex.MMIO.Data {
		ex.MMIO.Data[i] = byte(0x10 + i)
	}
	if got := m.run(0); got != 0x17161514_13121110&0xffffffff {
		t.Fatalf("read value %#x", got)
	}
	if r := m.regs(0); r.RCX != 0x1716151413121110 {
		t.Fatalf("rcx %#x", r.RCX)
	}
}

const apicSetup = `
	mov $0x80f, %ecx             # SVR: enable, spurious vector 0xff
	mov $0x1ff, %eax
	xor %edx, %edx
	wrmsr
	mov $0x83e, %ecx             # divide by 1
	mov $0xb, %eax
	wrmsr
`

const timerHandler = `
vec_64:
	push %rax
	push %rcx
	push %rdx
	incl ticks
	mov $0x80b, %ecx             # EOI
	xor %eax, %eax
	xor %edx, %edx
	wrmsr
	pop %rdx
	pop %rcx
	pop %rax
	iretq
.align 8
ticks: .long 0
`

func TestLAPICTimerPeriodic(t *testing.T) {
	m := newMachine(t, `
_start:
	`+apicSetup+`
	mov $0x832, %ecx
	mov $0x20040, %eax           # periodic, vector 64
	wrmsr
	mov $0x838, %ecx
	mov $500000, %eax            # 0.5 ms
	wrmsr
	sti
1:	cmpl $5, ticks
	jb 1b
	cli
	mov $0x839, %ecx             # current count is running
	rdmsr
	`+report(1)+`
	mov ticks, %eax
	`+done+timerHandler, 1)
	start := time.Now()
	if got := m.run(0); got < 5 {
		t.Fatalf("ticks %d", got)
	}
	if el := time.Since(start); el < 2*time.Millisecond {
		t.Fatalf("5 periodic ticks of 0.5 ms took only %v", el)
	}
	if cc := m.logged(1); len(cc) != 1 || cc[0] == 0 || cc[0] > 500000 {
		t.Fatalf("current count %v", cc)
	}
}

func TestLAPICTimerOneShotHLT(t *testing.T) {
	m := newMachine(t, `
_start:
	`+apicSetup+`
	mov $0x832, %ecx
	mov $0x40, %eax              # one-shot, vector 64
	wrmsr
	mov $0x838, %ecx
	mov $2000000, %eax           # 2 ms
	wrmsr
	sti
	hlt                          # woken by the timer
	cli
	mov ticks, %eax
	`+report(1)+`
	# spin a while: a one-shot timer must not fire again
	mov $200000, %ecx
1:	dec %ecx
	jnz 1b
	mov $0x839, %ecx
	rdmsr
	`+report(2)+`
	mov ticks, %eax
	`+done+timerHandler, 1)
	start := time.Now()
	if got := m.run(0); got != 1 {
		t.Fatalf("ticks %d, want 1", got)
	}
	if el := time.Since(start); el < 2*time.Millisecond {
		t.Fatalf("HLT returned after %v, before the 2 ms timer", el)
	}
	if got := m.logged(2); !equalU64(got, []uint64{0}) {
		t.Fatalf("current count after expiry %v", got)
	}
}

func TestHLTWithIFClearExits(t *testing.T) {
	m := newMachine(t, `
_start:
	cli
	hlt
	mov $9, %eax
	`+done, 1)
	ex := m.runExit(0)
	if ex.Reason != engine.ExitHLT {
		t.Fatalf("exit %v %s", ex.Reason, ex.Message)
	}
	if got := m.run(0); got != 9 {
		t.Fatalf("resume got %d", got)
	}
}

func TestSpinlockTwoVCPUs(t *testing.T) {
	const n = 20000
	m := newMachine(t, `
_start:
	mov $`+itoa(n)+`, %r8d
1:	mov $1, %ecx
2:	xor %eax, %eax
	lock cmpxchg %ecx, lock      # take the lock
	jz 3f
	pause
	jmp 2b
3:	mov counter, %rax            # plain read-modify-write inside the lock
	inc %rax
	mov %rax, counter
	movl $0, lock                # release (a plain store is a release on x86)
	dec %r8d
	jnz 1b
	lock incq finished
	mov $1, %eax
	`+done+`
.align 64
lock: .long 0
.align 64
counter: .quad 0
finished: .quad 0
	`, 2)
	var wg sync.WaitGroup
	for id := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m.run(id)
		}()
	}
	wg.Wait()
	if got := m.u64(m.sym("counter")); got != 2*n {
		t.Fatalf("counter = %d, want %d", got, 2*n)
	}
	if got := m.u64(m.sym("finished")); got != 2 {
		t.Fatalf("finished = %d", got)
	}
}

func TestIPIWakesHLT(t *testing.T) {
	m := newMachine(t, `
_start:
	`+apicSetup+`
	test %rdi, %rdi
	jnz cpu1
	# vCPU 0: wait until vCPU 1 is about to sleep, then IPI it.
1:	cmpl $1, ready
	jne 1b
	mov $200000, %ecx            # give it time to reach HLT
2:	dec %ecx
	jnz 2b
	mov $0x830, %ecx             # ICR: fixed, vector 0x50, dest APIC ID 1
	mov $0x50, %eax
	mov $1, %edx
	wrmsr
	mov $1, %eax
	`+done+`
cpu1:
	cli
	movl $1, ready
3:	sti
	hlt
	cli
	cmpl $0, got
	je 3b
	mov got, %eax
	`+done+`
vec_80:
	movl $0x50, got
	push %rcx
	push %rax
	push %rdx
	mov $0x80b, %ecx
	xor %eax, %eax
	xor %edx, %edx
	wrmsr
	pop %rdx
	pop %rax
	pop %rcx
	iretq
.align 8
ready: .long 0
got: .long 0
	`, 2)
	var wg sync.WaitGroup
	res := make([]uint64, 2)
	for id := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res[id] = m.run(id)
		}()
	}
	wg.Wait()
	if res[1] != 0x50 {
		t.Fatalf("vCPU 1 got %#x", res[1])
	}
}

func TestKickTightLoop(t *testing.T) {
	m := newMachine(t, `
_start:
	xor %eax, %eax
1:	inc %rax
	jmp 1b
	`, 1)
	c := m.cpus[0]
	var last uint64
	for i := range 3 {
		cancel := kickRunning(c, 5*time.Millisecond)
		ex, err := c.Run()
		cancel()
		if err != nil || ex.Reason != engine.ExitIntr {
			t.Fatalf("round %d: %v %v", i, ex, err)
		}
		r := m.regs(0)
		if r.RAX <= last {
			t.Fatalf("round %d: rax %d did not advance from %d", i, r.RAX, last)
		}
		if r.RIP < tCode || r.RIP > tCode+16 {
			t.Fatalf("RIP %#x outside the loop", r.RIP)
		}
		last = r.RAX
	}
	// A kick while not running is pending: the next Run exits at once.
	c.Kick()
	ex, _ := c.Run()
	if ex.Reason != engine.ExitIntr || m.regs(0).RAX != last {
		t.Fatalf("pending kick: %v rax %d want %d", ex.Reason, m.regs(0).RAX, last)
	}
}

func TestKickDuringHLT(t *testing.T) {
	m := newMachine(t, `
_start:
	sti
	hlt
	mov $3, %eax
	`+done, 1)
	c := m.cpus[0]
	for i := range 2 {
		timer := time.AfterFunc(5*time.Millisecond, c.Kick)
		start := time.Now()
		ex, err := c.Run()
		timer.Stop()
		if err != nil || ex.Reason != engine.ExitIntr {
			t.Fatalf("round %d: %+v %v", i, ex, err)
		}
		if el := time.Since(start); el < 4*time.Millisecond {
			t.Fatalf("HLT returned after %v before the kick", el)
		}
	}
	// Still halted after the kicks: the program has not proceeded.
	if r := m.regs(0); r.RAX == 3 {
		t.Fatal("program ran past HLT without an interrupt")
	}
}

func TestSelfModifyingCode(t *testing.T) {
	m := newMachine(t, `
_start:
	# Patch the immediate of the next instruction in the same block.
	movl $42, patch+1
patch:
	mov $1, %eax
	`+report(1)+`
	# Write a whole new instruction sequence (mov $7,%eax; ret) and call it.
	movl $0x07b8, target         # b8 07 00 00
	movb $0x00, target+4
	movb $0xc3, target+5
	call target
	`+report(2)+`
	# Store straddling a page boundary into code that then runs.
	lea pageend-2(%rip), %rbx
	movl $0x000009b8, (%rbx)     # b8 09 00 | 00 ... across the boundary
	movw $0xc300, 4(%rbx)
	call *%rbx
	`+done+`
target:
	mov $1, %eax
	ret
	nop
.balign 4096
	.skip 4090
pageend:
	.skip 16, 0x90
	`, 1)
	if got := m.run(0); got != 9 {
		t.Fatalf("straddling SMC result %d", got)
	}
	if got := m.logged(1); !equalU64(got, []uint64{42}) {
		t.Errorf("same-block SMC: %v", got)
	}
	if got := m.logged(2); !equalU64(got, []uint64{7}) {
		t.Errorf("call into rewritten code: %v", got)
	}
}

func TestHostCodeChanged(t *testing.T) {
	m := newMachine(t, `
_start:
	call f
	`+done+`
f:	mov $1, %eax
	ret
	`, 1)
	if got := m.run(0); got != 1 {
		t.Fatalf("first run %d", got)
	}
	f := m.sym("f")
	m.ram[f+1] = 2 // mov $2, %eax
	m.vm.CodeChanged(f, 5)
	r := m.regs(0)
	r.RIP = m.sym("_start")
	m.cpus[0].SetRegs(r)
	if got := m.run(0); got != 2 {
		t.Fatalf("after CodeChanged got %d, want 2", got)
	}
}

func TestTripleFault(t *testing.T) {
	m := newMachine(t, `
_start:
	lidt idtr
boom:
	int3
	`+done+`
idtr: .word 0
	.quad 0
	`, 1)
	ex := m.runExit(0)
	if ex.Reason != engine.ExitShutdown {
		t.Fatalf("exit %v %s", ex.Reason, ex.Message)
	}
	if ex.RIP != m.sym("boom") {
		t.Errorf("RIP %#x, want %#x", ex.RIP, m.sym("boom"))
	}
	for _, w := range []string{"triple fault", "#GP", "#DF"} {
		if !strings.Contains(ex.Message, w) {
			t.Errorf("message %q lacks %q", ex.Message, w)
		}
	}
	// The vCPU stays shut down.
	if ex2 := m.runExit(0); ex2.Reason != engine.ExitShutdown {
		t.Errorf("second run %v", ex2.Reason)
	}
}

func TestDoubleFaultOnIST(t *testing.T) {
	m := newMachine(t, `
_start:
	mov $0x3fe0f000, %rsp        # unmapped stack: #PF delivery faults -> #DF
	mov (%rsp), %rax
	`+done+`
vec_14:
	mov $14, %eax
	`+done+`
vec_8:
	mov (%rsp), %rax             # #DF error code (0)
	`+report(8)+`
	mov %rsp, %rax
	`+done, 1)
	got := m.run(0)
	if got&^0xfff != tISTTop-0x1000 && got>>12 != (tISTTop-1)>>12 {
		t.Fatalf("#DF handler RSP %#x, want on the IST1 stack below %#x", got, tISTTop)
	}
	if cr := m.logged(8); !equalU64(cr, []uint64{0}) {
		t.Fatalf("#DF error code %v", cr)
	}
}

func TestDataStoresNearCodeKeepTranslations(t *testing.T) {
	m := newMachine(t, `
_start:
	mov $100000, %ecx
1:	incq counter                 # same 4 KiB page as this loop, another chunk
	dec %ecx
	jnz 1b
	mov counter, %eax
	`+done+`
.balign 1024
counter: .quad 0
	`, 1)
	if got := m.run(0); got != 100000 {
		t.Fatalf("counter %d", got)
	}
	if n := m.cpus[0].(*cpu).translations; n > 10 {
		t.Fatalf("%d block translations: data stores invalidated code", n)
	}
}

func TestKickDuringRepStos(t *testing.T) {
	m := newMachine(t, `
_start:
	mov $0x6fffff, %rdi
	mov $0x300000, %rcx          # 3 MiB, one byte at a time, downwards
	mov $0x5a, %al
	std                          # (the element-wise path, not the page-wise one)
repinsn:
	rep stosb
	cld
	mov %rcx, %rax
	`+done, 1)
	c := m.cpus[0]
	cancel := kickRunning(c, time.Millisecond)
	ex, err := c.Run()
	cancel()
	if err != nil || ex.Reason != engine.ExitIntr {
		t.Fatalf("%+v %v", ex, err)
	}
	r := m.regs(0)
	if r.RCX == 0 || r.RCX == 0x300000 || r.RDI != 0x400000+r.RCX-1 {
		t.Fatalf("REP not interrupted mid-way: rcx %#x rdi %#x", r.RCX, r.RDI)
	}
	if r.RIP != m.sym("repinsn") {
		t.Fatalf("RIP %#x, want the rep stosb at %#x", r.RIP, m.sym("repinsn"))
	}
	if got := m.run(0); got != 0 {
		t.Fatalf("rcx after resume %d", got)
	}
	if m.ram[0x400000] != 0x5a || m.ram[0x6fffff] != 0x5a || m.ram[0x700000] != 0 {
		t.Fatal("memory not filled exactly")
	}
}

func TestFarJumpReloadsCS(t *testing.T) {
	m := newMachine(t, `
_start:
	.byte 0x48, 0xff, 0x2c, 0x25  # rex.W ljmp *target (m16:64)
	.long target
1:	mov %cs, %eax
	`+done+`
.balign 8
target: .quad 1b
	.word 0x08
	`, 1)
	if got := m.run(0); got != 8 {
		t.Fatalf("cs %#x", got)
	}
}

// TestUserMode enters CPL 3 with IRETQ and checks the U/S protection,
// the #PF error code's U bit, the stack switch to TSS.RSP0 and #GP for a
// privileged instruction at CPL 3.
func TestUserMode(t *testing.T) {
	m := newMachine(t, `
_start:
	mov %rsp, %rbp
	pushq $0x33                  # SS: user data, RPL 3
	pushq $0x80000               # user RSP
	pushq $0x202                 # RFLAGS: IF
	pushq $0x2b                  # CS: user code, RPL 3
	lea user(%rip), %rax
	push %rax
	iretq
user:
	mov 0x400000, %rax           # supervisor page: #PF P|U
	hlt                          # privileged at CPL 3: #GP(0)
vec_14:
	mov (%rsp), %rax             # error code
	`+report(1)+`
	mov %cr2, %rax
	`+report(2)+`
	mov 16(%rsp), %rax           # saved CS
	`+report(3)+`
	mov %rsp, %rax
	`+report(4)+`
	cmpl $0, faults
	jne 1f
	orq $4, 0x3000               # let user mode run from PD[0] (code, stack)
	orq $4, 0x3000+2*8           # make 0x400000 user-readable only after the second #PF
	andq $~4, 0x3000+2*8
	jmp 2f
1:	orq $4, 0x3000+2*8
2:	incl faults
	mov %cr3, %rax
	mov %rax, %cr3               # flush the TLB
	add $8, %rsp
	iretq
vec_13:
	mov (%rsp), %rax
	`+report(13)+`
	mov 16(%rsp), %rax
	`+report(14)+`
	mov faults, %eax
	`+done+`
.align 8
faults: .long 0
	`, 1)
	if got := m.run(0); got != 2 {
		t.Fatalf("page faults %d, want 2", got)
	}
	user := m.sym("user")
	// 1st: fetch of a supervisor page at CPL 3 (P|U|I); 2nd: read of a
	// supervisor page (P|U).
	if got := m.logged(1); !equalU64(got, []uint64{0x15, 0x5}) {
		t.Errorf("#PF error codes %#x", got)
	}
	if got := m.logged(2); !equalU64(got, []uint64{user, 0x400000}) {
		t.Errorf("CR2 %#x", got)
	}
	if got := m.logged(3); !equalU64(got, []uint64{0x2b, 0x2b}) {
		t.Errorf("saved CS %#x", got)
	}
	for _, sp := range m.logged(4) {
		if sp >= tStackTop || sp < tStackTop-0x100 {
			t.Errorf("handler RSP %#x not on TSS.RSP0's stack", sp)
		}
	}
	if got := m.logged(13); !equalU64(got, []uint64{0}) {
		t.Errorf("#GP error code %v", got)
	}
	if got := m.logged(14); !equalU64(got, []uint64{0x2b}) {
		t.Errorf("#GP saved CS %#x", got)
	}
}

// TestSelfIPIAndGates: a self-IPI through the ICR shorthand arrives
// through an interrupt gate (IF clear in the handler); INT3 through a trap
// gate keeps IF set; all-but-self with one vCPU delivers nothing.
func TestSelfIPIAndGates(t *testing.T) {
	m := newMachine(t, `
_start:
	`+apicSetup+`
	sti
	mov $0x830, %ecx
	mov $0xc0061, %eax           # all-but-self, vector 0x61: nobody
	xor %edx, %edx
	wrmsr
	mov $0x40060, %eax           # self, vector 0x60
	wrmsr
	nop
	nop
	int3
	mov $0x83f, %ecx             # SELF IPI register, vector 0x62
	mov $0x62, %eax
	wrmsr
	nop
	mov seen, %eax
	`+done+`
vec_96:
	push %rax
	push %rcx
	push %rdx
	pushfq
	pop %rax
	and $0x200, %eax
	`+report(1)+`
	orl $1, seen
	jmp eoi
vec_97:
	push %rax
	push %rcx
	push %rdx
	orl $4, seen
	jmp eoi
vec_98:
	push %rax
	push %rcx
	push %rdx
	orl $8, seen
eoi:
	mov $0x80b, %ecx
	xor %eax, %eax
	xor %edx, %edx
	wrmsr
	pop %rdx
	pop %rcx
	pop %rax
	iretq
trap_3:
	push %rax
	push %rdx
	pushfq
	pop %rax
	and $0x200, %eax
	`+report(2)+`
	orl $2, seen
	pop %rdx
	pop %rax
	iretq
.align 4
seen: .long 0
	`, 1)
	if got := m.run(0); got != 1|2|8 {
		t.Fatalf("handlers seen %#b, want %#b", got, 1|2|8)
	}
	if got := m.logged(1); !equalU64(got, []uint64{0}) {
		t.Errorf("IF in interrupt-gate handler: %#x", got)
	}
	if got := m.logged(2); !equalU64(got, []uint64{0x200}) {
		t.Errorf("IF in trap-gate handler: %#x", got)
	}
}

// TestHaltSurvivesRegsRoundTrip: pausing a halted vCPU (Kick), reading and
// writing back its registers, and resuming must not end the HLT.
func TestHaltSurvivesRegsRoundTrip(t *testing.T) {
	m := newMachine(t, `
_start:
	sti
	hlt
	mov $1, %eax
	`+done, 1)
	c := m.cpus[0]
	cancel := kickRunning(c, 2*time.Millisecond) // in HLT by then
	ex, _ := c.Run()
	cancel()
	if ex.Reason != engine.ExitIntr {
		t.Fatalf("exit %v", ex.Reason)
	}
	r := m.regs(0)
	if err := c.SetRegs(r); err != nil {
		t.Fatal(err)
	}
	timer := time.AfterFunc(5*time.Millisecond, c.Kick)
	start := time.Now()
	ex, _ = c.Run()
	timer.Stop()
	if ex.Reason != engine.ExitIntr || time.Since(start) < 4*time.Millisecond {
		t.Fatalf("vCPU left HLT after SetRegs: %v after %v", ex.Reason, time.Since(start))
	}
}

// TestSMPStress: two vCPUs with periodic timers contend a spinlock and
// IPI each other; the counter must be exact and both interrupt kinds seen.
func TestSMPStress(t *testing.T) {
	const n = 30000
	m := newMachine(t, `
_start:
	mov %rdi, %r13               # my id, which the handlers index by
	`+apicSetup+`
	mov $0x832, %ecx
	mov $0x20040, %eax           # periodic timer, vector 0x40
	xor %edx, %edx
	wrmsr
	mov $0x838, %ecx
	mov $200000, %eax            # 0.2 ms
	wrmsr
	sti
	lock incq started            # IPIs to a software-disabled APIC are dropped:
0:	cmpq $2, started             # wait until both have enabled theirs
	jne 0b
	xor $1, %rdi                 # the other's APIC ID
	mov $`+itoa(n)+`, %r8d
1:	mov $1, %ecx
2:	xor %eax, %eax
	lock cmpxchg %ecx, lock
	jz 3f
	pause
	jmp 2b
3:	incq counter
	movl $0, lock
	test $1023, %r8d
	jnz 4f
	mov $0x830, %ecx             # IPI the other vCPU, vector 0x50
	mov $0x50, %eax
	mov %edi, %edx
	wrmsr
4:	dec %r8d
	jnz 1b
	lock incq finished
5:	cmpq $2, finished            # wait for the other, still taking interrupts
	jne 5b
	cli
	mov $1, %eax
	`+done+`
vec_64:
	push %rax
	push %rcx
	push %rdx
	lock incq ticks(,%r13,8)
	jmp eoi
vec_80:
	push %rax
	push %rcx
	push %rdx
	lock incq ipis(,%r13,8)
eoi:
	mov $0x80b, %ecx
	xor %eax, %eax
	xor %edx, %edx
	wrmsr
	pop %rdx
	pop %rcx
	pop %rax
	iretq
.align 64
lock: .long 0
.align 64
counter: .quad 0
finished: .quad 0
started: .quad 0
ticks: .quad 0, 0
ipis: .quad 0, 0
	`, 2)
	var wg sync.WaitGroup
	for id := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m.run(id)
		}()
	}
	wg.Wait()
	if got := m.u64(m.sym("counter")); got != 2*n {
		t.Fatalf("counter = %d, want %d", got, 2*n)
	}
	for id := uint64(0); id < 2; id++ {
		ticks, ipis := m.u64(m.sym("ticks")+8*id), m.u64(m.sym("ipis")+8*id)
		if ticks == 0 || ipis == 0 {
			ms := []engine.MSR{{Index: 0x812}, {Index: 0x822}, {Index: 0x80f}}
			m.cpus[id].GetMSRs(ms)
			t.Errorf("vCPU %d: %d timer ticks, %d IPIs (ISR %#x IRR %#x SVR %#x)", id, ticks, ipis, ms[0].Data, ms[1].Data, ms[2].Data)
		}
	}
}

// TestNXFault: executing from a no-execute page faults with P|I and CR2 at
// the target; the handler clears NX and the call is retried.
func TestNXFault(t *testing.T) {
	m := newMachine(t, `
_start:
	movb $0xc3, 0x303000         # ret
	movabs $0x8000000000303003, %rax
	mov %rax, 0x4000+9*8         # VA 0x3fe09000 -> PA 0x303000, NX
	mov $0x3fe09000, %rbx
	call *%rbx
	mov $1, %eax
	`+done+`
vec_14:
	mov (%rsp), %rax
	`+report(1)+`
	mov %cr2, %rax
	`+report(2)+`
	btrq $63, 0x4000+9*8
	invlpg 0x3fe09000
	add $8, %rsp
	iretq
	`, 1)
	if got := m.run(0); got != 1 {
		t.Fatal(got)
	}
	if got := m.logged(1); !equalU64(got, []uint64{uint64(pfP | pfI)}) {
		t.Errorf("error code %#x", got)
	}
	if got := m.logged(2); !equalU64(got, []uint64{0x3fe09000}) {
		t.Errorf("CR2 %#x", got)
	}
}

// TestInterruptsDoNotSplitIOExits: with a fast periodic timer, interrupts
// keep arriving while IN exits are out with the VMM. The IN must complete
// into the interrupted code, never into an interrupt handler.
func TestInterruptsDoNotSplitIOExits(t *testing.T) {
	m := newMachine(t, `
_start:
	`+apicSetup+`
	mov $0x832, %ecx
	mov $0x20040, %eax           # periodic, vector 64, the minimum period
	xor %edx, %edx
	wrmsr
	mov $0x838, %ecx
	mov $1, %eax
	wrmsr
	sti
	mov %rsp, %r12
	mov $1, %r8d                 # the value the next IN must return
	mov $20000, %r9d
1:	.rept 50                     # a long block ending in the IN: timer
	inc %r10                     # interrupts often arrive while it runs
	.endr
	in $0x70, %eax
	cmp %r8d, %eax
	jne bad
	cmp %rsp, %r12               # no interrupt frame left behind
	jne bad
	inc %r8d
	dec %r9d
	jnz 1b
	cli
	mov ticks, %eax
	`+done+`
bad:
	cli
	mov $0xbad, %eax
	`+done+timerHandler, 1)
	var n uint32
	m.inVal = func(uint16) uint32 {
		n++
		return n
	}
	got := m.run(0)
	if got == 0xbad {
		t.Fatalf("an IN returned the wrong value or left the stack changed (after %d INs)", n)
	}
	if got == 0 {
		t.Fatal("no timer interrupt arrived: the test did not overlap anything")
	}
	t.Logf("%d INs, %d timer interrupts", n, got)
}

// TestInterruptsAndINT3: a fast periodic timer while the guest executes
// INT3 in a loop; the timer often fires while the INT3 block runs, so the
// trap and an interrupt are pending together. The trap must be delivered
// first, with the right return address, or the stack comes apart.
func TestInterruptsAndINT3(t *testing.T) {
	m := newMachine(t, `
_start:
	`+apicSetup+`
	mov $0x832, %ecx
	mov $0x20040, %eax
	xor %edx, %edx
	wrmsr
	mov $0x838, %ecx
	mov $1, %eax
	wrmsr
	sti
	mov %rsp, %r12
	mov $20000, %ecx
1:	int3
	dec %ecx
	jnz 1b
	cli
	cmp %rsp, %r12
	jne bad
	mov bps, %eax
	`+done+`
bad:
	mov $0xbad, %eax
	`+done+`
vec_3:
	incl bps
	iretq
.align 4
bps: .long 0
	`+timerHandler, 1)
	got := m.run(0)
	if got != 20000 {
		t.Fatalf("breakpoints counted %d (0xbad: stack pointer changed), want 20000", got)
	}
	if ticks := m.u64(m.sym("ticks")) & 0xffffffff; ticks == 0 {
		t.Fatal("no timer interrupts: the test did not overlap anything")
	} else {
		t.Logf("%d timer interrupts", ticks)
	}
}
