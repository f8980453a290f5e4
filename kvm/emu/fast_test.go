package emu

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	x "golang.org/x/arch/x86/x86asm"

	"klp-kvm/kvm/engine"
)

// The fast handlers (ops_fast.go) replace generic ones on the hot path.
// These tests hold them to the generic handlers they replace: the same
// instruction, compiled both ways, runs from identical random states on
// two machines, and everything architectural (registers, RIP, flags,
// memory, exceptions, exits, code invalidation) must come out the same.

// fastCases lists instructions that must all get a fast handler.
func fastCases() []string {
	var s []string
	regs64 := [][2]string{{"%rax", "%rbx"}, {"%rcx", "%rcx"}, {"%r8", "%r15"}, {"%rsp", "%rdi"}, {"%r13", "%rsi"}}
	regs32 := [][2]string{{"%eax", "%ebx"}, {"%ecx", "%ecx"}, {"%r8d", "%r15d"}, {"%esp", "%edi"}, {"%r13d", "%esi"}}
	for _, op := range []string{"add", "or", "adc", "sbb", "and", "sub", "xor", "cmp", "test"} {
		for i := range regs64 {
			s = append(s,
				fmt.Sprintf("%sq %s, %s", op, regs64[i][0], regs64[i][1]),
				fmt.Sprintf("%sl %s, %s", op, regs32[i][0], regs32[i][1]))
		}
		for _, imm := range []string{"$1", "$-1", "$0x7f", "$-0x80", "$0x12345678", "$-0x7fffffff"} {
			s = append(s, fmt.Sprintf("%sq %s, %%rdx", op, imm), fmt.Sprintf("%sl %s, %%r9d", op, imm))
		}
		s = append(s, fmt.Sprintf("%sl $0xfedcba98, %%eax", op), fmt.Sprintf("%sq $-2, %%rax", op))
	}
	for _, op := range []string{"inc", "dec"} {
		s = append(s, op+"q %rax", op+"q %r11", op+"l %ecx", op+"l %r14d")
	}
	s = append(s, "imul %rbx, %rax", "imul %r9, %r9", "imul $3, %rbx, %rax", "imul $-100000, %r9, %r10",
		"imul $0x7fffffff, %rcx, %rcx")
	for _, cc := range []string{"o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l", "ge", "le", "g"} {
		s = append(s, "cmov"+cc+" %rbx, %rax", "cmov"+cc+" %r10d, %ecx",
			"j"+cc+" .+0x10", "j"+cc+" .+0x1000", "j"+cc+" .-0x20")
	}
	s = append(s, "movq $-1, %rax", "movq $0x12345678, %r8", "movabs $0x123456789abcdef0, %rdx",
		"movl $0xffffffff, %ecx", "movl $-5, %r12d", "movl $7, %esp")
	for _, m := range []string{"(%rsi)", "8(%rsi)", "-8(%rdi)", "0x7ff8(%rbx)", "(%rsp)", "data(%rip)",
		"(%rsi,%rcx,8)", "16(%rdi,%rbx,2)", "%fs:8(%rsi)", "%gs:(%rdi)", "0x200100", "(%esi)", "4(%edi,%ecx,4)"} {
		s = append(s, "mov "+m+", %rax", "mov "+m+", %r13", "mov %rdx, "+m, "mov %rsp, "+m, "lea "+m+", %rbx",
			"movl "+m+", %eax", "movl "+m+", %r13d", "movl %edx, "+m, "movl %esp, "+m,
			"movzbl "+m+", %ecx", "movzwl "+m+", %ecx", "movzbq "+m+", %r9", "movzwq "+m+", %r9",
			"cmpq $5, "+m, "cmpl $-1, "+m, "cmpq %rax, "+m, "cmpl %r8d, "+m, "cmpq "+m+", %r8", "cmpl "+m+", %ecx",
			"testq %rax, "+m, "testl %r9d, "+m, "testq $0x80, "+m, "testl $-2, "+m)
	}
	s = append(s, "push %rax", "push %rsp", "push %r12", "pop %rbx", "pop %rsp", "pop %r15",
		"call .+0x100", "call .-0x1000", "ret", "ret $16")
	return s
}

// fastPair is the same instruction compiled generic and fast.
type fastPair struct {
	text      string
	rip       uint64
	generic   inst
	fast      inst
	fastFound bool
}

func compilePairs(t *testing.T, m *machine, n int) []fastPair {
	var pairs []fastPair
	for i := range n {
		rip := m.sym(fmt.Sprintf("i%d", i))
		xi, err := decodeInst(m.ram[rip : rip+15])
		if err != nil {
			t.Fatalf("i%d: %v", i, err)
		}
		g, _ := safeCompile(&xi, false)
		f, _ := safeCompile(&xi, true)
		if g.fn == nil || f.fn == nil {
			t.Fatalf("%s: not compiled", x.GNUSyntax(xi, rip, nil))
		}
		found := reflect.ValueOf(g.fn).Pointer() != reflect.ValueOf(f.fn).Pointer()
		pairs = append(pairs, fastPair{text: x.GNUSyntax(xi, rip, nil), rip: rip, generic: g, fast: f, fastFound: found})
	}
	return pairs
}

const (
	fastData    = 0x200000 // 4 pages of data the address registers point into
	fastDataLen = 0x4000
)

// fastValue is a register value that makes interesting addresses and
// operands: RAM near page ends, unmapped pages (#PF), MMIO, non-canonical.
func fastValue(r *rand.Rand) uint64 {
	switch r.IntN(10) {
	case 0, 1, 2:
		return fastData + r.Uint64N(fastDataLen)
	case 3:
		return fastData + 0xff8 + r.Uint64N(8) // 8-byte accesses straddle
	case 4:
		return 0x3fe00000 + r.Uint64N(0x1000)*8 // empty page table: #PF
	case 5:
		return 0x900000 + r.Uint64N(0x1000) // beyond RAM: MMIO
	case 6:
		return 0x8000000000000000 + r.Uint64N(16) // non-canonical
	case 7:
		return r.Uint64N(16)
	case 8:
		return ^r.Uint64N(16)
	}
	return r.Uint64()
}

// fastFlags puts f into a random state: loaded from bits, or left by an ALU op.
func fastFlags(r *rand.Rand, f *Flags) {
	a, b, size := r.Uint64(), fastValue(r), []uint8{1, 2, 4, 8}[r.IntN(4)]
	switch r.IntN(8) {
	case 0:
		f.Set(r.Uint64())
	case 1:
		Add(f, size, a, b)
	case 2:
		Sub(f, size, a, a)
	case 3:
		Sub(f, size, a, b)
	case 4:
		Inc(f, size, a)
	case 5:
		Shl(f, size, a, uint8(r.IntN(70)))
	case 6:
		Popcnt(f, size, a)
	default:
		Xor(f, size, a, b)
	}
	if r.IntN(4) == 0 {
		f.SetCF(r.IntN(2) == 0)
	}
}

// cpuState is everything a single instruction can change, for comparison.
type cpuState struct {
	Regs              [18]uint64
	Flags, RF, CR2    uint64
	Stop, ExitReady   bool
	Reason            string
	MMIOAddr          uint64
	MMIOData          string
	MMIOWrite         bool
	Pend              pendingKind
	PendReg, PendSize uint8
	PendNext          uint64
	Panic             string
	Exc               event
	Gen               uint32
}

// execOne runs in as runBlock would, recovering an exception's unwind.
func execOne(c *cpu, in *inst, rip uint64) (p any) {
	defer func() { p = recover() }()
	c.curRIP = rip
	c.regs[rIP] = rip + uint64(in.len)
	in.fn(c, in)
	if c.stop && c.retryWith != retryNone {
		c.retryGeneric(in)
	}
	return nil
}

func snapshot(c *cpu, p any) cpuState {
	s := cpuState{Flags: c.flags.Get(), RF: c.rf, CR2: c.sr.CR2, Stop: c.stop, ExitReady: c.exitReady,
		Pend: c.pend, PendReg: c.pendReg, PendSize: c.pendSize, PendNext: c.pendNext, Exc: c.exc,
		Gen: atomic.LoadUint32(&c.gen[fastData>>12])}
	copy(s.Regs[:], c.regs[:18])
	if c.exitReady {
		s.Reason = c.exit.Reason.String()
		s.MMIOAddr, s.MMIOData, s.MMIOWrite = c.exit.MMIO.Addr, fmt.Sprintf("% x", c.exit.MMIO.Data), c.exit.MMIO.Write
	}
	if p != nil {
		s.Panic = fmt.Sprint(p)
	}
	return s
}

// fastPatterns are the contents the data pages start with (made on first
// use, not at every test binary's start).
var fastPatterns = sync.OnceValue(func() (p [4][]byte) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := range p {
		p[i] = make([]byte, fastDataLen)
		for j := range p[i] {
			p[i][j] = byte(r.Uint32())
		}
	}
	return p
})

// setState gives c the state drawn from seed; the data pages of ram get
// the same pattern, and with codeMark a translated-code mark.
func setState(c *cpu, ram []byte, seed uint64, codeMark bool) {
	r := rand.New(rand.NewPCG(seed, 7))
	for i := range 16 {
		c.regs[i] = fastValue(r)
	}
	c.regs[rSP] = fastData + 0x800 + r.Uint64N(0x2000)&^7
	if r.IntN(8) == 0 {
		c.regs[rSP] = fastValue(r)
	}
	c.flags = Flags{}
	fastFlags(r, &c.flags)
	c.rf = 2 | FlagIF
	c.sr.FS.Base = []uint64{0, fastData, 0x3fe00000}[r.IntN(3)]
	c.sr.GS.Base = []uint64{0, fastData + 0x1000}[r.IntN(2)]
	c.sr.CR2 = 0
	c.stop, c.exitReady, c.pend, c.pendReg, c.pendSize, c.pendNext = false, false, pendNone, 0, 0, 0
	c.exc = event{}
	c.exit = engine.Exit{}
	patterns := fastPatterns()
	copy(ram[fastData:fastData+fastDataLen], patterns[r.IntN(len(patterns))])
	atomic.StoreUint32(&c.mark[fastData>>12], 0)
	if codeMark {
		atomic.StoreUint32(&c.mark[fastData>>12], ^uint32(0))
	}
}

func TestFastMatchesGeneric(t *testing.T) {
	cases := fastCases()
	var src strings.Builder
	src.WriteString("_start:\n")
	for i, s := range cases {
		fmt.Fprintf(&src, "i%d:\t%s\n", i, s)
	}
	src.WriteString(".balign 64\ndata: .quad 0\n")
	p := assemble(t, src.String())
	mg, mf := newMachineProg(t, p, 1), newMachineProg(t, p, 1)
	cg, cf := mg.cpus[0].(*cpu), mf.cpus[0].(*cpu)
	trials := 300
	if testing.Short() {
		trials = 40
	}
	for i, pair := range compilePairs(t, mg, len(cases)) {
		if !pair.fastFound {
			t.Errorf("%s (%s): no fast handler", cases[i], pair.text)
			continue
		}
		bad := 0
		for trial := range trials {
			seed := uint64(i)<<32 | uint64(trial)
			mark := trial%8 == 7
			// Twice from the same state: the first run fills the TLB, the
			// second takes the fast handler's TLB hit path.
			for run := range 2 {
				setState(cg, mg.ram, seed, mark)
				setState(cf, mf.ram, seed, mark)
				gi, fi := pair.generic, pair.fast
				sg := snapshot(cg, execOne(cg, &gi, pair.rip))
				sf := snapshot(cf, execOne(cf, &fi, pair.rip))
				if sg != sf || !bytes.Equal(mg.ram[fastData:fastData+fastDataLen], mf.ram[fastData:fastData+fastDataLen]) {
					if bad++; bad <= 3 {
						t.Errorf("%s, seed %#x run %d:\ngeneric %+v\nfast    %+v", pair.text, seed, run, sg, sf)
					}
				}
			}
		}
	}
}

// TestFastEngineMatchesGeneric runs whole programs on an engine with and
// one without the fast handlers and compares the results.
func TestFastEngineMatchesGeneric(t *testing.T) {
	progs := map[string]string{"mixed": mixedWorkload}
	for _, tc := range insnCases {
		if !strings.Contains(tc.code, "rdtsc") { // the TSC differs between runs
			progs[tc.name] = "_start:\n" + tc.code + epilogue
		}
	}
	for name, src := range progs {
		t.Run(name, func(t *testing.T) {
			var regs [2]string
			var mem [2][]byte
			for k, opts := range [][]Option{{withGenericHandlers()}, nil} {
				m := newMachine(t, src, 1, opts...)
				if name == "mixed" {
					put64(m.ram, m.sym("iterations"), 3)
				}
				m.run(0)
				regs[k] = fmt.Sprintf("%+v", m.regs(0))
				mem[k] = m.ram
			}
			if regs[0] != regs[1] {
				t.Errorf("registers differ:\ngeneric %s\nfast    %s", regs[0], regs[1])
			}
			if !bytes.Equal(mem[0], mem[1]) {
				t.Error("memory differs")
			}
		})
	}
}

// TestCondMethods holds the per-condition methods of the fast Jcc and
// CMOVcc handlers to Cond, over every combination of the six flags and
// over states left by ALU operations (sign and parity deltas included).
func TestCondMethods(t *testing.T) {
	conds := [16]func(*Flags) bool{(*Flags).condO, (*Flags).condNO, (*Flags).condB, (*Flags).condAE,
		(*Flags).condE, (*Flags).condNE, (*Flags).condBE, (*Flags).condA, (*Flags).condS, (*Flags).condNS,
		(*Flags).condP, (*Flags).condNP, (*Flags).condL, (*Flags).condGE, (*Flags).condLE, (*Flags).condG}
	check := func(f *Flags, what string) {
		for cc, cond := range conds {
			if got, want := cond(f), f.Cond(uint8(cc)); got != want {
				t.Fatalf("%s (flags %#x): cond %d = %v, Cond says %v", what, f.Get(), cc, got, want)
			}
		}
	}
	bitsOf := []uint64{FlagCF, FlagPF, FlagAF, FlagZF, FlagSF, FlagOF}
	for m := range 64 {
		var v uint64
		for i, b := range bitsOf {
			if m>>i&1 != 0 {
				v |= b
			}
		}
		var f Flags
		f.Set(v)
		check(&f, fmt.Sprintf("Set(%#x)", v))
	}
	r := rand.New(rand.NewPCG(3, 4))
	for i := range 20000 {
		var f Flags
		fastFlags(r, &f)
		check(&f, fmt.Sprintf("random state %d", i))
	}
}
