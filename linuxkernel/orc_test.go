package linuxkernel

// The unwinder on hand-built ORC tables and stacks: each register base
// and entry type, the end marker, pt_regs and iret frames, a switch from
// the IRQ stack to the task stack, and hostile tables and stacks.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
)

const (
	tT     = 0xffffffff81000000 // text
	tFA    = tT + 0x100         // push rbx; push rbp
	tFB    = tT + 0x200         // frame pointer
	tFC    = tT + 0x300         // 48 bytes of locals
	tRFF   = tT + 0x400         // ret_from_fork: end of stack
	tEntry = tT + 0x500         // entry code: pt_regs at sp
	tIret  = tT + 0x600         // iret frame at sp
	tIRQ   = tT + 0x700         // call_on_irqstack's caller
	tR10   = tT + 0x800         // sp in r10
	tLoop  = tT + 0x900         // corrupt: sp+0
	tUndef = tT + 0xa00         // corrupt: undefined sp, no end
	tBadSP = tT + 0xb00         // corrupt: unknown sp base 12
	tBadTy = tT + 0xc00         // corrupt: type 3
	tFar   = tT + 0xd00         // corrupt: sp far beyond the stack
	tRecur = tT + 0xe00         // recursion: sp+16
	tTramp = tT + 0xf00         // return_to_handler
	tDI    = tT + 0x1000        // sp in rdi
	tEnd   = tT + 0x2000        // end of text and of ORC coverage

	tStack = 0xffffc90000010000 // task stack
	tIRQS  = 0xffffc90000100000 // IRQ stack
	tNoORC = tEnd + 0x100       // text without ORC (module-like)
)

type orcAt struct {
	ip uint64
	e  ORCEntry
}

func encodeORCEntry(e ORCEntry) []byte {
	b := binary.LittleEndian.AppendUint16(nil, uint16(e.SPOffset))
	b = binary.LittleEndian.AppendUint16(b, uint16(e.BPOffset))
	bits := uint16(e.SPReg) | uint16(e.BPReg)<<4 | uint16(e.Type)<<8
	if e.End {
		bits |= 1 << 10
	}
	return binary.LittleEndian.AppendUint16(b, bits)
}

// encodeORC writes the two sections for entries placed at ipBase.
func encodeORC(ipBase uint64, entries []orcAt) (ipRaw, entRaw []byte) {
	for i, e := range entries {
		ipRaw = binary.LittleEndian.AppendUint32(ipRaw, uint32(int32(int64(e.ip-(ipBase+4*uint64(i))))))
		entRaw = append(entRaw, encodeORCEntry(e.e)...)
	}
	return
}

func call(sp int16) ORCEntry { return ORCEntry{SPReg: ORCRegSP, SPOffset: sp, Type: ORCTypeCall} }

var testORCEntries = []orcAt{
	{tT, call(8)},
	{tFA, call(8)},
	{tFA + 4, ORCEntry{SPReg: ORCRegSP, SPOffset: 24, BPReg: ORCRegPrevSP, BPOffset: -24, Type: ORCTypeCall}},
	{tFB, call(8)},
	{tFB + 1, ORCEntry{SPReg: ORCRegSP, SPOffset: 16, BPReg: ORCRegPrevSP, BPOffset: -16, Type: ORCTypeCall}},
	{tFB + 4, ORCEntry{SPReg: ORCRegBP, SPOffset: 16, BPReg: ORCRegPrevSP, BPOffset: -16, Type: ORCTypeCall}},
	{tFC, call(8)},
	{tFC + 4, call(56)},
	{tRFF, ORCEntry{End: true}},
	{tEntry, ORCEntry{SPReg: ORCRegSP, Type: ORCTypeRegs}},
	{tIret, ORCEntry{SPReg: ORCRegSP, Type: ORCTypeRegsPartial}},
	{tIRQ, call(8)},
	{tIRQ + 8, ORCEntry{SPReg: ORCRegSPIndirect, SPOffset: 16, Type: ORCTypeCall}},
	{tR10, ORCEntry{SPReg: ORCRegR10, Type: ORCTypeCall}},
	{tLoop, call(0)},
	{tUndef, ORCEntry{}},
	{tBadSP, ORCEntry{SPReg: 12, SPOffset: 8}},
	{tBadTy, ORCEntry{SPReg: ORCRegSP, SPOffset: 8, Type: 3}},
	{tFar, call(0x7000)},
	{tRecur, call(16)},
	{tTramp, call(8)},
	{tDI, ORCEntry{SPReg: ORCRegDI, Type: ORCTypeCall}},
	{tEnd, ORCEntry{}}, // section terminator
}

func testORC(t testing.TB) *ORC {
	const ipBase = tT + 0x100000
	ipRaw, entRaw := encodeORC(ipBase, testORCEntries)
	o, err := ParseORC(ipBase, ipRaw, entRaw, ORCFormat1)
	if err != nil {
		t.Fatal(err)
	}
	o.Covered = []AddrRange{{tT, tEnd}}
	return o
}

// regionMem is guest-virtual memory made of a few regions.
type regionMem map[uint64][]byte

func (m regionMem) Read(va uint64, b []byte) error {
	for base, r := range m {
		if va >= base && va-base <= uint64(len(r)) && uint64(len(b)) <= uint64(len(r))-(va-base) {
			copy(b, r[va-base:])
			return nil
		}
	}
	return errf("read virt", ErrBounds, "%#x not mapped", va)
}

func (m regionMem) put(va, v uint64) {
	for base, r := range m {
		if va >= base && va+8 <= base+uint64(len(r)) {
			binary.LittleEndian.PutUint64(r[va-base:], v)
			return
		}
	}
	panic("test: put outside the regions")
}

func (m regionMem) putRegs(va uint64, r PtRegs) {
	for i, v := range []uint64{r.R15, r.R14, r.R13, r.R12, r.BP, r.BX, r.R11, r.R10, r.R9, r.R8, r.AX, r.CX, r.DX, r.SI, r.DI, r.OrigAX, r.IP, r.CS, r.Flags, r.SP, r.SS} {
		m.put(va+8*uint64(i), v)
	}
}

func testSymbols() *Symbols {
	var syms []Symbol
	for _, s := range []struct {
		n string
		a uint64
	}{{"_stext", tT}, {"fa", tFA}, {"fb", tFB}, {"fc", tFC}, {"ret_from_fork", tRFF}, {"entry_code", tEntry}, {"iret_code", tIret},
		{"irq_caller", tIRQ}, {"r10_fn", tR10}, {"loop_fn", tLoop}, {"undef_fn", tUndef}, {"badsp_fn", tBadSP}, {"badtype_fn", tBadTy},
		{"far_fn", tFar}, {"recur_fn", tRecur}, {"return_to_handler", tTramp}, {"di_fn", tDI}, {"_etext", tEnd + 0x1000}} {
		syms = append(syms, Symbol{Name: s.n, Addr: s.a, Type: 'T'})
	}
	return NewSymbols(syms)
}

type unwindFixture struct {
	u   *Unwinder
	mem regionMem
	top uint64 // task stack top
}

func newUnwindFixture(t testing.TB) *unwindFixture {
	mem := regionMem{tStack: make([]byte, 16<<10), tIRQS: make([]byte, 16<<10)}
	u := &Unwinder{ORC: testORC(t), Mem: mem, Symbols: testSymbols(), Text: []AddrRange{{tT, tEnd + 0x1000}}, RetFromFork: tRFF, Replaced: []uint64{tTramp}}
	return &unwindFixture{u: u, mem: mem, top: tStack + 16<<10}
}

func (f *unwindFixture) task() Task {
	return Task{Pid: 7, StackBase: tStack, StackTop: f.top, RunningOn: -1}
}

// kthreadChain writes, from sp up: fA's frame, fB's (frame pointer),
// fC's, and a return into ret_from_fork; the sleeping task's
// inactive_task_frame is at sp-56. It returns the frames' SPs.
func (f *unwindFixture) kthreadChain(sp uint64, last uint64) []uint64 {
	m := f.mem
	frame := sp - 56
	m.put(frame+40, 0xdead) // bp: fA does not use it
	m.put(frame+48, tFA+0x10)
	sp1 := sp
	sp2 := sp1 + 24
	bpB := sp2 + 32
	m.put(sp1, bpB) // fA saved rbp = fB's frame pointer
	m.put(sp1+16, tFB+0x10)
	sp3 := sp2 + 48
	m.put(bpB, 0xbeef) // fB's saved rbp
	m.put(bpB+8, tFC+0x10)
	sp4 := sp3 + 56
	m.put(sp4-8, last)
	return []uint64{sp1, sp2, sp3, sp4}
}

func frameAddrs(fs []Frame) []uint64 {
	var out []uint64
	for _, f := range fs {
		out = append(out, f.Addr)
	}
	return out
}

func sameAddrs(a, b []uint64) bool {
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

func TestUnwindSleepingKthread(t *testing.T) {
	f := newUnwindFixture(t)
	sp := f.top - 0x400
	sps := f.kthreadChain(sp, tRFF+0x10)
	var st Stack
	f.u.UnwindTask(Task{StackBase: tStack, StackTop: f.top, SavedSP: sp - 56}, &st)
	want := []uint64{tFA + 0x10, tFB + 0x10, tFC + 0x10, tRFF + 0x10}
	if !st.Reliable || st.Stop != StopEnd || !sameAddrs(frameAddrs(st.Frames), want) || st.Scan != nil && len(st.Scan) != 0 {
		t.Fatalf("stack %+v, want frames %#x ending at the end marker", st, want)
	}
	for i, fr := range st.Frames {
		if fr.SP != sps[i] {
			t.Errorf("frame %d sp %#x, want %#x", i, fr.SP, sps[i])
		}
	}
	if got := st.Frames[1].String(); got != "fb+0x10" {
		t.Errorf("frame 1 is %q", got)
	}
	if st.Frames[3].Func != "ret_from_fork" {
		t.Errorf("last frame %+v", st.Frames[3])
	}
}

func TestUnwindUserRegs(t *testing.T) {
	f := newUnwindFixture(t)
	sp := f.top - 0x400
	sps := f.kthreadChain(sp, tEntry+0x10)
	// do_syscall_64 (fC here) returns into the entry code, whose pt_regs
	// are at sp: a user-mode CS ends the unwind.
	f.mem.putRegs(sps[3], PtRegs{IP: 0x401000, CS: 0x33, SP: 0x7ffc0000, SS: 0x2b})
	var st Stack
	f.u.UnwindTask(Task{StackBase: tStack, StackTop: f.top, SavedSP: sp - 56}, &st)
	want := []uint64{tFA + 0x10, tFB + 0x10, tFC + 0x10, tEntry + 0x10}
	if !st.Reliable || st.Stop != StopUserRegs || !sameAddrs(frameAddrs(st.Frames), want) {
		t.Fatalf("stack %+v, want %#x then user pt_regs", st, want)
	}
}

// A kernel-mode pt_regs (an interrupt in the kernel) is followed, and
// so is an iret frame (REGS_PARTIAL): their IP is looked up as is.
func TestUnwindKernelRegsAndIret(t *testing.T) {
	f := newUnwindFixture(t)
	m := f.mem
	sp := f.top - 0x800
	frame := sp - 56
	m.put(frame+48, tEntry+0x10) // the task was interrupted, then switched out
	// pt_regs at sp: interrupted in fC's body (after its sub), with
	// sp = regs.SP.
	rsp := sp + ptRegsSize + 0x40
	m.putRegs(sp, PtRegs{IP: tFC + 0x8, CS: 0x10, SP: rsp, BP: 0x1234})
	m.put(rsp+48, tIret+0x10) // fC returns into code with an iret frame at sp
	ir := rsp + 56
	last := ir + iretFrameSize + 0x10
	m.put(ir, tFC+0x8) // the iret frame: ip, cs, flags, sp, ss
	m.put(ir+8, 0x10)
	m.put(ir+24, last)
	m.put(last+48, tRFF+0x10)
	var st Stack
	f.u.UnwindTask(Task{StackBase: tStack, StackTop: f.top, SavedSP: frame}, &st)
	want := []uint64{tEntry + 0x10, tFC + 0x8, tIret + 0x10, tFC + 0x8, tRFF + 0x10}
	if !st.Reliable || st.Stop != StopEnd || !sameAddrs(frameAddrs(st.Frames), want) {
		t.Fatalf("stack %+v\nwant %#x", st, want)
	}
	// pt_regs IPs are named as themselves, not by the byte before.
	if st.Frames[1].String() != "fc+0x8" || !st.Frames[1].Interrupted || !st.Frames[3].Interrupted || st.Frames[2].Interrupted {
		t.Errorf("frames %+v", st.Frames)
	}
}

// A running vCPU on the IRQ stack: its RIP is the first frame, fC
// returns into the function that switched stacks, whose SP_INDIRECT
// entry finds the task stack's pointer saved at the IRQ stack's top.
func TestUnwindRunningIRQStackSwitch(t *testing.T) {
	f := newUnwindFixture(t)
	m := f.mem
	irqEnd := uint64(tIRQS + 16<<10)
	tos := irqEnd - 8
	x := f.top - 0x600 // the interrupted task's rsp, saved at the top of the IRQ stack
	m.put(tos, x)
	irqSP := tos - 56 // fC's frame ends at the top of stack word
	m.put(irqSP+48, tIRQ+0x10)
	m.put(x+8, tFA+0x10) // [x + 16 - 8]: irq_caller's return address
	sp1 := x + 16
	m.put(sp1+16, tRFF+0x10) // fA's frame: ret at CFA-8
	m.put(sp1, 0)
	stacks := []StackRange{{StackTask, tStack, f.top}, {StackIRQ, tIRQS, irqEnd}}
	var st Stack
	f.u.Unwind(UnwindStart{Regs: &PtRegs{IP: tFC + 0x20, SP: irqSP, CS: 0x10}, Stacks: stacks}, &st)
	want := []uint64{tFC + 0x20, tIRQ + 0x10, tFA + 0x10, tRFF + 0x10}
	if !st.Reliable || st.Stop != StopEnd || !sameAddrs(frameAddrs(st.Frames), want) {
		t.Fatalf("stack %+v\nwant %#x", st, want)
	}
	if st.Frames[0].String() != "fc+0x20" || st.Frames[2].SP != sp1 {
		t.Errorf("frames %+v", st.Frames)
	}
	// Without the IRQ stack among the allowed ones the unwind cannot
	// start; with the IRQ stack's saved pointer aimed back at the IRQ
	// stack, the second visit is refused.
	f.u.Unwind(UnwindStart{Regs: &PtRegs{IP: tFC + 0x20, SP: irqSP, CS: 0x10}, Stacks: stacks[:1]}, &st)
	if st.Reliable || !isKind(st.Err, ErrBounds) {
		t.Errorf("IRQ stack not allowed: %+v", st)
	}
	// Its scan (the stack pointer on none of the allowed stacks, as for
	// a vCPU in a context switch): the RIP, then the whole task stack.
	if got := frameAddrs(st.Scan); !sameAddrs(got, []uint64{tFC + 0x20, tFA + 0x10, tRFF + 0x10}) || !st.Scan[0].Interrupted {
		t.Errorf("scan %#x", got)
	}
	m.put(tos, tIRQS+0x100)
	m.put(tIRQS+0x108, tFA+0x10)
	f.u.Unwind(UnwindStart{Regs: &PtRegs{IP: tFC + 0x20, SP: irqSP, CS: 0x10}, Stacks: stacks}, &st)
	if st.Reliable || st.Err == nil {
		t.Errorf("IRQ stack pointing into itself: %+v", st)
	}
	t.Log(st.Why)
}

func TestUnwindRunningUserMode(t *testing.T) {
	f := newUnwindFixture(t)
	var st Stack
	f.u.Unwind(UnwindStart{Regs: &PtRegs{IP: 0x401000, SP: 0x7ffc0000, CS: 0x33}, Stacks: []StackRange{{StackTask, tStack, f.top}}}, &st)
	if !st.Reliable || st.Stop != StopUserMode || len(st.Frames) != 0 {
		t.Fatalf("user mode: %+v", st)
	}
}

// R10 and DI bases need a full pt_regs: a running vCPU's registers
// have them, a sleeping task's saved frame does not.
func TestUnwindRegisterBases(t *testing.T) {
	for _, c := range []struct {
		name string
		fn   uint64
		regs func(sp uint64) PtRegs
	}{
		{"r10", tR10, func(sp uint64) PtRegs { return PtRegs{R10: sp} }},
		{"di", tDI, func(sp uint64) PtRegs { return PtRegs{DI: sp} }},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newUnwindFixture(t)
			prev := f.top - 0x300
			f.mem.put(prev-8, tRFF+0x10)
			r := c.regs(prev)
			r.IP, r.SP, r.CS = c.fn+4, f.top-0x500, 0x10
			var st Stack
			f.u.Unwind(UnwindStart{Regs: &r, Stacks: []StackRange{{StackTask, tStack, f.top}}}, &st)
			if want := []uint64{c.fn + 4, tRFF + 0x10}; !st.Reliable || !sameAddrs(frameAddrs(st.Frames), want) {
				t.Fatalf("stack %+v, want %#x", st, want)
			}
			// A sleeping task returning into the function: no registers.
			sp := f.top - 0x500
			f.mem.put(sp-56+48, c.fn+0x10)
			f.u.UnwindTask(Task{StackBase: tStack, StackTop: f.top, SavedSP: sp - 56}, &st)
			if st.Reliable || !isKind(st.Err, ErrFormat) || !strings.Contains(st.Why, "missing "+c.name) {
				t.Fatalf("without pt_regs: %+v", st)
			}
		})
	}
}

// Hostile stacks and tables end with a clear error, a conservative
// scan, and never a loop.
func TestUnwindHostile(t *testing.T) {
	for _, c := range []struct {
		name  string
		setup func(f *unwindFixture, sp uint64) // sp: just above the task frame
		kind  error
		why   string
	}{
		{"loop", func(f *unwindFixture, sp uint64) { f.mem.put(sp-8, tLoop+0x10) }, ErrFormat, "wrong direction"},
		{"recursion without end", func(f *unwindFixture, sp uint64) {
			f.mem.put(sp-8, tRecur+0x10)
			for a := sp; a+32 <= f.top; a += 16 {
				f.mem.put(a+8, tRecur+0x10)
			}
		}, ErrBounds, "return address"},
		{"undefined sp", func(f *unwindFixture, sp uint64) { f.mem.put(sp-8, tUndef+0x10) }, ErrFormat, "not an end of stack"},
		{"unknown sp register", func(f *unwindFixture, sp uint64) { f.mem.put(sp-8, tBadSP+0x10) }, ErrFormat, "unknown SP base register 12"},
		{"unknown type", func(f *unwindFixture, sp uint64) { f.mem.put(sp-8, tBadTy+0x10) }, ErrFormat, "unknown ORC entry type 3"},
		{"sp beyond the stack", func(f *unwindFixture, sp uint64) { f.mem.put(sp-8, tFar+0x10) }, ErrBounds, "on none of the stacks"},
		{"no ORC entry", func(f *unwindFixture, sp uint64) { f.mem.put(sp-8, tNoORC+0x10) }, ErrNotFound, "no ORC entry"},
		{"not text", func(f *unwindFixture, sp uint64) { f.mem.put(sp-8, 0xffff888012345678) }, ErrFormat, "not kernel text"},
		{"tracer trampoline", func(f *unwindFixture, sp uint64) { f.mem.put(sp-8, tTramp) }, ErrUnsupported, "replaced"},
		{"pt_regs past the top", func(f *unwindFixture, sp uint64) {
			f.mem.put(sp-8, tFC+0x10)
			f.mem.put(sp+48, tEntry+0x10) // pt_regs at sp+56: runs off the stack
		}, ErrBounds, "pt_regs"},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newUnwindFixture(t)
			sp := f.top - 0x100
			if c.name == "pt_regs past the top" {
				sp = f.top - 0x80
			}
			f.mem.put(sp-16, 0) // bp
			// A text address below the saved frame, dead, and one above it.
			f.mem.put(sp-0x200, tFB+0x33)
			f.mem.put(f.top-8, tFC+0x44)
			c.setup(f, sp)
			var st Stack
			f.u.UnwindTask(Task{StackBase: tStack, StackTop: f.top, SavedSP: sp - 56}, &st)
			if st.Reliable || st.Stop != StopError || !isKind(st.Err, c.kind) || !strings.Contains(st.Why, c.why) {
				t.Fatalf("got %+v (err %v), want kind %v mentioning %q", st, st.Err, c.kind, c.why)
			}
			var sawAbove bool
			for _, s := range st.Scan {
				if s.SP < sp-56 {
					t.Errorf("scan found %v at %#x, below the saved stack pointer %#x", s, s.SP, sp-56)
				}
				sawAbove = sawAbove || s.Addr == tFC+0x44
			}
			if !sawAbove {
				t.Errorf("scan %v misses the text address at the top of the stack", st.Scan)
			}
			t.Log(st.Why)
		})
	}
	f := newUnwindFixture(t)
	var st Stack
	f.u.UnwindTask(Task{StackBase: tStack, StackTop: f.top, SavedSP: f.top - 8}, &st)
	if st.Reliable || !isKind(st.Err, ErrBounds) {
		t.Errorf("inactive_task_frame past the stack top: %+v", st)
	}
	// A caller's frame layout whose fields lie outside the frame.
	f.u.TaskFrame = TaskFrameLayout{Size: 16, BP: 40, RetAddr: 48}
	f.u.UnwindTask(Task{StackBase: tStack, StackTop: f.top, SavedSP: f.top - 16}, &st)
	if st.Reliable || !isKind(st.Err, ErrBounds) {
		t.Errorf("TaskFrame fields beyond its size: %+v", st)
	}
	f.u.TaskFrame = TaskFrameLayout{}
	f.u.MaxFrames = 3
	sp := f.top - 0x400
	f.kthreadChain(sp, tRFF+0x10)
	f.u.UnwindTask(Task{StackBase: tStack, StackTop: f.top, SavedSP: sp - 56}, &st)
	if st.Reliable || !isKind(st.Err, ErrLimit) || len(st.Frames) != 3 {
		t.Errorf("MaxFrames 3: %+v", st)
	}
}

func TestParseORCHostile(t *testing.T) {
	const base = tT + 0x100000
	ipRaw, entRaw := encodeORC(base, testORCEntries)
	unsorted := append([]orcAt(nil), testORCEntries...)
	unsorted[3], unsorted[4] = unsorted[4], unsorted[3]
	uIP, uEnt := encodeORC(base, unsorted)
	for _, c := range []struct {
		name      string
		ip, ent   []byte
		format    int
		kind      error
		detailHas string
	}{
		{"unsorted", uIP, uEnt, ORCFormat1, ErrFormat, "not sorted"},
		{"counts differ", ipRaw, entRaw[:len(entRaw)-6], ORCFormat1, ErrFormat, "entries"},
		{"ragged", ipRaw[:5], entRaw, ORCFormat1, ErrFormat, "multiple of 4"},
		{"empty", nil, nil, ORCFormat1, ErrLimit, "0 ORC entries"},
		{"format 3", ipRaw, entRaw, 3, ErrUnsupported, "format 3"},
	} {
		_, err := ParseORC(base, c.ip, c.ent, c.format)
		if !isKind(err, c.kind) || !strings.Contains(err.Error(), c.detailHas) {
			t.Errorf("%s: %v, want %v mentioning %q", c.name, err, c.kind, c.detailHas)
		}
	}
	o := testORC(t)
	// orc_lookup for [tT, tEnd): one block per 256 bytes plus one.
	blocks := (tEnd-tT)/lookupBlockSize + 1
	good := make([]uint32, blocks)
	for i := range good {
		ip := tT + lookupBlockSize*uint64(i)
		if i == len(good)-1 {
			ip = tEnd
		}
		good[i] = uint32(max(o.find(0, len(o.IPs), ip), 0))
	}
	if err := o.SetLookup(good, tT, tEnd); err != nil {
		t.Fatal(err)
	}
	for ip := uint64(tT); ip < tEnd; ip++ {
		a, _ := o.Find(ip)
		b, _ := (&ORC{IPs: o.IPs, Entries: o.Entries}).Find(ip)
		if a != b {
			t.Fatalf("Find(%#x) with lookup %+v, without %+v", ip, a, b)
		}
	}
	bad := append([]uint32(nil), good...)
	bad[5] = 1 << 30
	if err := o.SetLookup(bad, tT, tEnd); !isKind(err, ErrFormat) || !strings.Contains(err.Error(), "orc_lookup[5]") {
		t.Errorf("corrupt lookup: %v", err)
	}
	if err := o.SetLookup(good[:3], tT, tEnd); !isKind(err, ErrFormat) {
		t.Errorf("short lookup: %v", err)
	}
	if _, ok := o.Find(tEnd + 0x10); ok {
		t.Error("Find outside coverage")
	}
}

func TestORCFormatOf(t *testing.T) {
	for rel, want := range map[string]int{"6.1.0-57-amd64": ORCFormat1, "5.10.0-23-amd64": ORCFormat1, "4.14.0": ORCFormat1, "6.2.16": ORCFormat1,
		"6.3.0": 0, "6.12.9-amd64": 0, "4.9.0-19-amd64": 0, "garbage": 0, "": 0, "6": 0} {
		got, err := ORCFormatOf(rel)
		if got != want || (want == 0) != errors.Is(err, ErrUnsupported) {
			t.Errorf("ORCFormatOf(%q) = %d, %v; want %d", rel, got, err, want)
		}
	}
}

// FuzzUnwind: any stack contents over the test table end, without a
// panic, within the frame bound.
func FuzzUnwind(f *testing.F) {
	f.Add(make([]byte, 512), uint16(0x100), false)
	seed := make([]byte, 512)
	binary.LittleEndian.PutUint64(seed[0x100+48:], tFA+0x10)
	binary.LittleEndian.PutUint64(seed[0x100+56+16:], tFB+0x10)
	f.Add(seed, uint16(0x100), false)
	f.Add(seed, uint16(0x140), true)
	f.Fuzz(func(t *testing.T, stack []byte, spOff uint16, running bool) {
		if len(stack) > 1<<14 {
			return
		}
		stack = append(stack, make([]byte, (8-len(stack)%8)%8)...)
		if len(stack) == 0 {
			return
		}
		mem := regionMem{tStack: stack}
		u := &Unwinder{ORC: testORC(t), Mem: mem, Symbols: testSymbols(), Text: []AddrRange{{tT, tEnd + 0x1000}}, RetFromFork: tRFF}
		top := tStack + uint64(len(stack))
		var st Stack
		sp := tStack + uint64(spOff)
		if running {
			var r PtRegs
			if len(stack) >= ptRegsSize {
				r = decodePtRegs(stack)
			}
			r.SP, r.CS = sp, 0x10
			u.Unwind(UnwindStart{Regs: &r, Stacks: []StackRange{{StackTask, tStack, top}}}, &st)
		} else {
			u.UnwindTask(Task{StackBase: tStack, StackTop: top, SavedSP: sp}, &st)
		}
		if len(st.Frames) > 256+1 || (!st.Reliable && st.Err == nil) {
			t.Fatalf("%+v", st)
		}
	})
}

// FuzzParseORC: arbitrary sections parse or fail cleanly, and lookups in
// what parses never panic.
func FuzzParseORC(f *testing.F) {
	ipRaw, entRaw := encodeORC(tT+0x100000, testORCEntries)
	f.Add(ipRaw, entRaw, uint64(0x100))
	f.Fuzz(func(t *testing.T, ipRaw, entRaw []byte, probe uint64) {
		o, err := ParseORC(tT+0x100000, ipRaw, entRaw, ORCFormat1)
		if err != nil {
			return
		}
		o.Find(tT + probe)
		o.Find(probe)
	})
}

// BenchmarkUnwindTasks: the consistency check's cost per sleeping task
// on a synthetic guest of 256 tasks, each a 16 KiB stack with a
// kernel-thread chain (four frames, end marker), read through an
// AddressSpace (page walks over BytesMem, as over kvm.Machine's RAM).
// Reports ns per task and allocations per task.
func BenchmarkUnwindTasks(b *testing.B) {
	const n = 256
	u, tasks := synUnwindGuest(b, n)
	var st Stack
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		for _, t := range tasks {
			u.UnwindTask(t, &st)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/task")
}

// TestUnwindAllocatesNothing: the unwind runs while every vCPU is
// paused; once its buffers exist it allocates nothing (stacks are read
// whole into reused buffers, page walks use the Unwinder's scratch).
func TestUnwindAllocatesNothing(t *testing.T) {
	u, tasks := synUnwindGuest(t, 16)
	var st Stack
	u.UnwindTask(tasks[0], &st)
	if a := testing.AllocsPerRun(20, func() {
		for _, task := range tasks {
			u.UnwindTask(task, &st)
		}
	}); a != 0 || !st.Reliable {
		t.Errorf("%v allocations for %d unwinds; last %+v", a, len(tasks), st)
	}
}

// synUnwindGuest is n sleeping tasks in guest memory behind page
// tables, for the benchmark and the allocation test.
func synUnwindGuest(b testing.TB, n int) (*Unwinder, []Task) {
	// Guest memory: page tables at 0x1000.., the stacks from 1 MiB,
	// mapped at tStack in 4 KiB pages.
	const stacksPA = 1 << 20
	mem := make(BytesMem, stacksPA+uint64(n)*16<<10)
	const pml4, pdpt, pd = 0x1000, 0x2000, 0x3000
	put := func(pa, v uint64) { binary.LittleEndian.PutUint64(mem[pa:], v) }
	put(pml4+((tStack>>39)&0x1ff)*8, pdpt|3)
	put(pdpt+((tStack>>30)&0x1ff)*8, pd|3)
	for i := uint64(0); i < uint64(n)*16<<10/pageSize; i++ {
		va := uint64(tStack) + i*pageSize
		pdi := (va >> 21) & 0x1ff
		pt := uint64(0x10000) + pdi*pageSize
		put(pd+pdi*8, pt|3)
		put(pt+((va>>12)&0x1ff)*8, (stacksPA+i*pageSize)|3)
	}
	as := &AddressSpace{Mem: mem, Root: pml4}
	f := newUnwindFixture(b)
	tasks := make([]Task, n)
	for i := range tasks {
		base := uint64(tStack) + uint64(i)*16<<10
		f.mem = regionMem{base: make([]byte, 16<<10)}
		f.top = base + 16<<10
		sp := f.top - 0x400
		f.kthreadChain(sp, tRFF+0x10)
		copy(mem[stacksPA+uint64(i)*16<<10:], f.mem[base])
		tasks[i] = Task{StackBase: base, StackTop: f.top, SavedSP: sp - 56}
	}
	u := f.u
	u.Mem = as
	var st Stack
	u.UnwindTask(tasks[0], &st)
	if !st.Reliable || len(st.Frames) != 4 {
		b.Fatalf("%+v", st)
	}
	return u, tasks
}

// A vCPU stopped on a function's first instruction: the frame is that
// function (+0), and its entry's sp+8 finds the caller.
func TestUnwindRunningAtFunctionEntry(t *testing.T) {
	f := newUnwindFixture(t)
	sp := f.top - 0x200
	f.mem.put(sp, tRFF+0x10)
	var st Stack
	f.u.Unwind(UnwindStart{Regs: &PtRegs{IP: tFB, SP: sp, CS: 0x10}, Stacks: []StackRange{{StackTask, tStack, f.top}}}, &st)
	if want := []uint64{tFB, tRFF + 0x10}; !st.Reliable || !sameAddrs(frameAddrs(st.Frames), want) || st.Frames[0].String() != "fb+0x0" {
		t.Fatalf("%+v", st)
	}
}

// A vCPU in an NMI handler: it runs on the NMI (IST) stack, whose entry
// pt_regs hold the interrupted task-stack state; the unwind crosses over
// through them and finishes on the task stack.
func TestUnwindRunningOnExceptionStack(t *testing.T) {
	f := newUnwindFixture(t)
	const nmi = 0xfffffe0000010000 // an IST stack of the cpu_entry_area
	f.mem[nmi] = make([]byte, 8<<10)
	nmiSP := uint64(nmi + 8<<10 - ptRegsSize - 56)
	f.mem.put(nmiSP+48, tEntry+0x10) // fC returns into the NMI entry code
	taskSP := f.top - 0x300
	f.mem.putRegs(nmiSP+56, PtRegs{IP: tFA + 0x8, CS: 0x10, SP: taskSP})
	f.mem.put(taskSP+16, tRFF+0x10) // fA's frame on the task stack
	stacks := []StackRange{{StackTask, tStack, f.top}, {StackException + 1, nmi, nmi + 8<<10}}
	var st Stack
	f.u.Unwind(UnwindStart{Regs: &PtRegs{IP: tFC + 0x20, SP: nmiSP, CS: 0x10}, Stacks: stacks}, &st)
	want := []uint64{tFC + 0x20, tEntry + 0x10, tFA + 0x8, tRFF + 0x10}
	if !st.Reliable || !sameAddrs(frameAddrs(st.Frames), want) || st.Frames[2].SP != taskSP || StackKind(StackException+1).String() != "NMI" {
		t.Fatalf("stack %+v\nwant %#x", st, want)
	}
}

// Hit answers from the exact frames of a reliable unwind and from the
// scan of an unreliable one.
func TestStackHit(t *testing.T) {
	f := newUnwindFixture(t)
	sp := f.top - 0x400
	f.kthreadChain(sp, tRFF+0x10)
	f.mem.put(sp-0x100, tFC+0x99) // dead, below the saved frame
	var st Stack
	task := Task{StackBase: tStack, StackTop: f.top, SavedSP: sp - 56}
	f.u.UnwindTask(task, &st)
	fb := AddrRange{tFB, tFB + 0x100}
	if h, ok := st.Hit([]AddrRange{fb}); !ok || h.Addr != tFB+0x10 {
		t.Errorf("Hit(fb) = %+v %v", h, ok)
	}
	if _, ok := st.Hit([]AddrRange{{tLoop, tLoop + 0x100}}); ok {
		t.Error("Hit of a function not on the stack")
	}
	// fB's return address one past its range does not count: a return
	// address is compared as is.
	if _, ok := st.Hit([]AddrRange{{tFB, tFB + 0x10}}); ok {
		t.Error("Hit at the range's end")
	}
	// Unreliable: a word above the stack pointer that the unwind never
	// reached counts; one below it does not.
	f.mem.put(sp-8, tNoORC+0x10)
	f.mem.put(f.top-16, tIRQ+0x44)
	f.u.UnwindTask(task, &st)
	if st.Reliable {
		t.Fatal("want an unreliable unwind")
	}
	if h, ok := st.Hit([]AddrRange{{tIRQ, tIRQ + 0x100}}); !ok || h.SP != f.top-16 {
		t.Errorf("scan Hit = %+v %v", h, ok)
	}
	if _, ok := st.Hit([]AddrRange{{tFC + 0x90, tFC + 0xa0}}); ok {
		t.Error("scan Hit below the stack pointer")
	}
}

// readLog records the reads of an unwind.
type readLog struct {
	VirtReader
	reads [][2]uint64 // [addr, addr+len)
}

func (r *readLog) Read(va uint64, b []byte) error {
	r.reads = append(r.reads, [2]uint64{va, va + uint64(len(b))})
	return r.VirtReader.Read(va, b)
}

// TestUnwindReadsFromStackPointer: a sleeping task's stack is read from
// the page of its saved stack pointer up, not whole (16 KiB per task was
// most of the check's copying); the unwind is the same whether the pages
// below are readable or not, and a read below what is loaded loads the
// pages in between with the guest's bytes.
func TestUnwindReadsFromStackPointer(t *testing.T) {
	f := newUnwindFixture(t)
	sp := f.top - 0x1400 // in the stack's third page from the top
	f.kthreadChain(sp, tRFF+0x10)
	task := f.task()
	task.SavedSP = sp - 56
	log := &readLog{VirtReader: f.mem}
	f.u.Mem = log
	var whole Stack
	f.u.UnwindTask(task, &whole)
	if !whole.Reliable || len(whole.Frames) != 4 {
		t.Fatalf("unwind: %+v", whole)
	}
	low := (task.SavedSP &^ (pageSize - 1))
	for _, r := range log.reads {
		if r[0] < low {
			t.Errorf("read [%#x, %#x) below the page of the saved stack pointer %#x", r[0], r[1], task.SavedSP)
		}
	}
	// The pages below the stack pointer's are not there: same unwind.
	top := regionMem{low: f.mem[tStack][low-tStack:]}
	f.u.Mem = top
	var part Stack
	f.u.UnwindTask(task, &part)
	if !part.Reliable || !sameAddrs(frameAddrs(part.Frames), frameAddrs(whole.Frames)) {
		t.Fatalf("with only [%#x, top) readable: %+v, want %+v", low, part, whole)
	}
	// load from high, then from low: every byte from low's page up is
	// the guest's.
	for i := range f.mem[tStack] {
		f.mem[tStack][i] = byte(i * 7)
	}
	f.u.Mem = f.mem
	if err := f.u.setStacks([]StackRange{{StackTask, tStack, f.top}}); err != nil {
		t.Fatal(err)
	}
	lowest := f.top
	for _, at := range []uint64{f.top - 8, f.top - 0x2100, f.top - 0x1000, tStack + 0x10} {
		if err := f.u.load(0, at); err != nil {
			t.Fatal(err)
		}
		lowest = min(lowest, at&^(pageSize-1)) // a load above what is loaded reads nothing
		b := &f.u.stacks[0]
		if b.lo != lowest || !bytes.Equal(b.data[lowest-tStack:], f.mem[tStack][lowest-tStack:]) {
			t.Fatalf("after load(%#x): lo %#x, want %#x with the guest's bytes from there", at, b.lo, lowest)
		}
	}
	// An unreadable page below what is loaded: an error naming the
	// range, and what was loaded stays.
	f.u.Mem = top
	if err := f.u.setStacks([]StackRange{{StackTask, tStack, f.top}}); err != nil {
		t.Fatal(err)
	}
	if err := f.u.load(0, low); err != nil {
		t.Fatal(err)
	}
	if err := f.u.load(0, low-1); err == nil || !strings.Contains(err.Error(), "stack") {
		t.Fatalf("load below the readable part: %v", err)
	} else if f.u.stacks[0].lo != low {
		t.Fatalf("a failed load moved lo to %#x", f.u.stacks[0].lo)
	}
}
