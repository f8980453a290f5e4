package linuxlive

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"syscall"
	"testing"
	"time"

	"klp-kvm/linuxkernel"
	"klp-kvm/linuxpatch"
	"klp-kvm/livepatch"
)

// stepGuest is the fake guest as a livepatch.Stepper: step plays the
// vCPUs RunUntil lets run (the test moves their state); every call is
// recorded.
type stepGuest struct {
	*fakeGuest
	step    func(stops map[int][]uint64, budget time.Duration) (int, error)
	calls   []map[int][]uint64
	budgets []time.Duration
}

func (s *stepGuest) RunUntil(stops map[int][]uint64, budget time.Duration) (int, error) {
	if s.depth == 0 {
		s.t.Error("RunUntil while the guest runs")
	}
	c := map[int][]uint64{}
	for cpu, a := range stops {
		c[cpu] = slices.Clone(a)
	}
	s.calls = append(s.calls, c)
	s.budgets = append(s.budgets, budget)
	return s.step(stops, budget)
}

func inRanges(rs []linuxkernel.AddrRange, a uint64) bool {
	for _, r := range rs {
		if r.Contains(a) {
			return true
		}
	}
	return false
}

// oneVCPU is a guest of one vCPU at *rip, which blocks while *rip is in
// the changing code; stops is where it would say it leaves (nil: not
// known, as after the conservative scan).
func oneVCPU(rip *uint64, stops []uint64) func([]linuxkernel.AddrRange) verdict {
	return func(check []linuxkernel.AddrRange) verdict {
		var v verdict
		if inRanges(check, *rip) {
			v.blockRunning(0, fmt.Sprintf("vCPU 0 at %#x", *rip), stops)
		}
		return v
	}
}

// callerRet is a return address in the old function's caller (outside
// every changing function).
const callerRet = 0xffffffff81400123

// A vCPU stopped inside the old function, its return address known from
// the unwind: the check blocks, progress runs that vCPU alone with a
// stop there, the fake moves it there, and the switch happens in the
// same attempt, in one pause.
func TestProgressRunsBlockingVCPUOut(t *testing.T) {
	m, g, k := newTestManager(t)
	sg := &stepGuest{fakeGuest: g}
	m.cfg.Machine = sg
	p, err := m.Register(testdata(t, "livepatch-sample/livepatch-sample.ko"), "s.ko")
	if err != nil {
		t.Fatal(err)
	}
	rip := k.cmdline + 8
	k.running = oneVCPU(&rip, []uint64{callerRet})
	sg.step = func(stops map[int][]uint64, budget time.Duration) (int, error) {
		if slices.Contains(stops[0], callerRet) {
			rip = callerRet
			return 1, nil
		}
		return 0, nil
	}
	pauses := g.pauses
	res, err := m.Enable(p.Name, livepatch.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Attempts != 1 || res.Steps != 1 || res.StepTime <= 0 || g.pauses-pauses != 1 {
		t.Errorf("result %+v, %d pauses: want one attempt, one step, one pause", res, g.pauses-pauses)
	}
	if len(sg.calls) != 1 || !slices.Equal(sg.calls[0][0], []uint64{callerRet}) || len(sg.calls[0]) != 1 || sg.budgets[0] != livepatch.StepRound {
		t.Errorf("RunUntil calls %x budgets %v: want vCPU 0 alone to %#x for %v", sg.calls, sg.budgets, uint64(callerRet), livepatch.StepRound)
	}
	if k.site()[0] != 0xe9 || k.checks != 2 {
		t.Errorf("site % x after %d checks: want the jmp after two", k.site(), k.checks)
	}

	// Disable: the vCPU is in the new function now; the same.
	f := m.patches[0].funcs[0]
	rip = f.newAddr + 0x10
	sg.calls = nil
	res, err = m.Disable(p.Name, livepatch.Options{})
	if err != nil || res.Attempts != 1 || res.Steps != 1 || len(sg.calls) != 1 {
		t.Fatalf("disable: %v, %+v, %d RunUntil calls", err, res, len(sg.calls))
	}
	if !bytes.Equal(k.site(), fentryNop[:]) {
		t.Errorf("disabled: site % x", k.site())
	}
}

// A vCPU whose way out is not known (no ORC entry: the conservative
// scan) runs in slices until it is out.
func TestProgressSlicesUnknownExit(t *testing.T) {
	m, g, k := newTestManager(t)
	sg := &stepGuest{fakeGuest: g}
	m.cfg.Machine = sg
	rip := k.cmdline + 8
	k.running = oneVCPU(&rip, nil)
	sg.step = func(stops map[int][]uint64, budget time.Duration) (int, error) {
		if len(sg.calls) == 2 {
			rip = callerRet // out after the second slice
		}
		return 0, nil
	}
	_, res, err := m.Load(testdata(t, "livepatch-sample/livepatch-sample.ko"), "s.ko", livepatch.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Attempts != 1 || res.Steps != 2 {
		t.Errorf("result %+v: want one attempt, two steps", res)
	}
	for i, c := range sg.calls {
		if a, ok := c[0]; !ok || len(a) != 0 || sg.budgets[i] != livepatch.StepSlice {
			t.Errorf("call %d: stops %x budget %v: want a slice of %v for vCPU 0", i, c, sg.budgets[i], livepatch.StepSlice)
		}
	}
}

// NoProgress keeps the behaviour without the guarantee: a vCPU that
// stays in the function is never run alone, the attempts retry until the
// deadline. With it, the vCPU that never leaves costs each attempt at
// most maxStepRounds rounds, then the attempt resumes the guest as
// before. A sleeping task that blocks is never stepped; nor is anything
// on a Machine that is no Stepper.
func TestProgressBounds(t *testing.T) {
	ko := testdata(t, "livepatch-sample/livepatch-sample.ko")
	for _, c := range []struct {
		name      string
		o         livepatch.Options
		sleeping  bool
		noStepper bool
		steps     bool
	}{
		{"NoProgress", livepatch.Options{NoProgress: true}, false, false, false},
		{"never leaves", livepatch.Options{}, false, false, true},
		{"sleeping task", livepatch.Options{}, true, false, false},
		{"no Stepper", livepatch.Options{}, false, true, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			m, g, k := newTestManager(t)
			sg := &stepGuest{fakeGuest: g, step: func(map[int][]uint64, time.Duration) (int, error) { return 0, nil }}
			if !c.noStepper {
				m.cfg.Machine = sg
			}
			p, err := m.Register(ko, "s.ko")
			if err != nil {
				t.Fatal(err)
			}
			rip := k.cmdline + 8
			k.running = oneVCPU(&rip, []uint64{callerRet})
			if c.sleeping {
				k.block = "task 1 (init) at cmdline_proc_show+0x4"
			}
			before, pauses := guestPart(g), g.pauses
			c.o.Deadline = 30 * time.Millisecond
			_, err = m.Enable(p.Name, c.o)
			if !errors.Is(err, ErrBusy) || !errors.Is(err, syscall.EBUSY) {
				t.Fatalf("enable: %v, want ErrBusy", err)
			}
			attempts := g.pauses - pauses
			if attempts < 2 || !bytes.Equal(guestPart(g), before) || g.depth != 0 {
				t.Errorf("%d attempts, guest changed %v, depth %d", attempts, !bytes.Equal(guestPart(g), before), g.depth)
			}
			if c.steps != (len(sg.calls) > 0) || len(sg.calls) > maxStepRounds*attempts {
				t.Errorf("%d RunUntil calls over %d attempts (steps wanted: %v, at most %d per attempt)", len(sg.calls), attempts, c.steps, maxStepRounds)
			}
			t.Logf("%v", err)
		})
	}
}

// A RunUntil that fails ends progress: the attempt resumes the guest and
// the next one switches.
func TestProgressRunUntilFails(t *testing.T) {
	m, g, k := newTestManager(t)
	sg := &stepGuest{fakeGuest: g}
	m.cfg.Machine = sg
	var logged []string
	m.cfg.Logf = func(format string, args ...any) { logged = append(logged, fmt.Sprintf(format, args...)) }
	rip := k.cmdline + 8
	k.running = oneVCPU(&rip, []uint64{callerRet})
	sg.step = func(map[int][]uint64, time.Duration) (int, error) {
		rip = callerRet // it ran meanwhile; the next attempt sees it out
		return 0, errors.New("vCPU 0: the machine went down")
	}
	_, res, err := m.Load(testdata(t, "livepatch-sample/livepatch-sample.ko"), "s.ko", livepatch.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Attempts != 2 || res.Steps != 1 {
		t.Errorf("result %+v: want two attempts, one step", res)
	}
	if len(logged) < 2 || !bytes.Contains([]byte(logged[0]), []byte("went down")) {
		t.Errorf("log %q: want the RunUntil error and the blocked attempt", logged)
	}
}

// exitStops: the return address above the outermost frame inside the
// changing code, from an exact unwind only.
func TestExitStops(t *testing.T) {
	check := []linuxkernel.AddrRange{{Start: 0x1000, End: 0x1100}, {Start: 0x3000, End: 0x3100}}
	frames := func(addrs ...uint64) []linuxkernel.Frame {
		var fs []linuxkernel.Frame
		for i, a := range addrs {
			fs = append(fs, linuxkernel.Frame{Addr: a, Interrupted: i == 0})
		}
		return fs
	}
	for _, c := range []struct {
		name     string
		st       linuxkernel.Stack
		want     []uint64
		reliable bool
	}{
		{"interrupted inside", linuxkernel.Stack{Reliable: true, Frames: frames(0x1010, 0x2020, 0x5000)}, []uint64{0x2020}, true},
		{"nested changes: the outermost", linuxkernel.Stack{Reliable: true, Frames: frames(0x1010, 0x2020, 0x3030, 0x4040)}, []uint64{0x4040}, true},
		{"in a callee", linuxkernel.Stack{Reliable: true, Frames: frames(0x9000, 0x1010, 0x2020)}, []uint64{0x2020}, true},
		{"bottom frame", linuxkernel.Stack{Reliable: true, Frames: frames(0x2000, 0x1010)}, nil, true},
		{"conservative scan", linuxkernel.Stack{Reliable: false, Frames: frames(0x1010, 0x2020), Scan: frames(0x1010, 0x2020)}, nil, false},
		{"none", linuxkernel.Stack{Reliable: true, Frames: frames(0x2000, 0x2020)}, nil, true},
	} {
		if got := exitStops(&c.st, check); !slices.Equal(got, c.want) {
			t.Errorf("%s: %x, want %x", c.name, got, c.want)
		}
	}
}

// The patch's own ORC tables (the sample .ko's .orc_unwind_ip and
// .orc_unwind, placed and relocated by linuxpatch) reach the unwinder:
// a sleeping task inside livepatch_cmdline_proc_show's callee (its
// return address after the call to seq_printf) unwinds exactly through
// the new function into its caller, where with the patch's text alone it
// falls back to the conservative scan; and the vCPU's way out is known.
func TestPatchORCUnwindsExactly(t *testing.T) {
	m, _, k := newTestManager(t)
	if _, _, err := m.Load(testdata(t, "livepatch-sample/livepatch-sample.ko"), "s.ko", livepatch.Options{}); err != nil {
		t.Fatal(err)
	}
	q := m.patches[0]
	f := q.funcs[0]
	if len(k.code) != 1 || k.code[0].ORC == nil || k.code[0].Text != q.orc.Text {
		t.Fatalf("the check's patch code %+v, want the patch's text and ORC", k.code)
	}
	if !q.orc.Text.Contains(f.newAddr) || q.orc.Text.End-q.orc.Text.Start != 0x4f {
		t.Errorf("patch text %+v, new function at %#x", q.orc.Text, f.newAddr)
	}
	// livepatch_cmdline_proc_show: call __fentry__ (a NOP), two movs,
	// call seq_printf at +0x13, returning to +0x18.
	ret := f.newAddr + 0x18
	if e, ok := q.orc.ORC.Find(ret - 1); !ok || e.SPReg != linuxkernel.ORCRegSP || e.SPOffset != 8 || e.Type != linuxkernel.ORCTypeCall {
		t.Fatalf("ORC at %s+0x17: %+v %v, want sp+8, call", f.newName, e, ok)
	}

	// A task asleep in seq_printf: its inactive_task_frame's ret_addr
	// is the new function's, whose own return address is in a fake
	// vmlinux caller (an end-of-stack entry, as a kthread's bottom).
	const (
		stackBase = 0xffffc90000010000
		stackTop  = stackBase + 16<<10
		text      = 0xffffffff81000000
		caller    = text + 0x10
		ipBase    = 0xffffffff82000000
	)
	textAt := uint64(text) // the entry is relative to its own address: -16 MiB
	stack := make(stackMem, 16<<10)
	sp := uint64(stackTop - 0x100)
	frame := sp - 56 // r15 r14 r13 r12 bx bp ret_addr
	stack.put(frame+48, ret)
	stack.put(sp, caller)
	vm, err := linuxkernel.ParseORC(ipBase, le32(uint32(textAt-ipBase)), []byte{0, 0, 0, 0, 0, 4}, linuxkernel.ORCFormat1)
	if err != nil {
		t.Fatal(err)
	}
	vm.Covered = []linuxkernel.AddrRange{{Start: text, End: text + 0x1000}}
	u := &linuxkernel.Unwinder{ORC: vm, Mem: stack, Text: vm.Covered}
	task := linuxkernel.Task{Pid: 9, StackBase: stackBase, StackTop: stackTop, SavedSP: frame, RunningOn: -1}
	changing := []linuxkernel.AddrRange{{Start: f.newAddr, End: f.newAddr + f.newSize}}
	var st linuxkernel.Stack

	u.Modules = []linuxkernel.ModuleORC{{Name: "text only", Text: q.orc.Text}}
	u.UnwindTask(task, &st)
	if st.Reliable {
		t.Fatalf("with the text alone: %+v, want the scan", st)
	}
	u.Modules = k.code
	u.UnwindTask(task, &st)
	if !st.Reliable || len(st.Frames) != 2 || st.Frames[0].Addr != ret || st.Frames[1].Addr != caller {
		t.Fatalf("with the patch's ORC: %+v", st)
	}
	if got := exitStops(&st, changing); !slices.Equal(got, []uint64{caller}) {
		t.Errorf("way out %x, want %#x", got, uint64(caller))
	}
	if fr, ok := st.Hit(changing); !ok || fr.Addr != ret {
		t.Errorf("Hit %+v %v", fr, ok)
	}
}

// A patch whose ORC says its code is the bottom of a stack would end an
// unwind there and hide the frames under it: refused, nothing written.
func TestPatchORCRefused(t *testing.T) {
	ko := testdata(t, "livepatch-sample/livepatch-sample.ko")
	ef, err := elf.NewFile(bytes.NewReader(ko))
	if err != nil {
		t.Fatal(err)
	}
	s := ef.Section(".orc_unwind")
	if s == nil {
		t.Fatal("no .orc_unwind")
	}
	bad := bytes.Clone(ko)
	bad[s.Offset+5] |= 4 // entry 0's flags: end of stack
	m, g, _ := newTestManager(t)
	before := guestPart(g)
	_, _, err = m.Load(bad, "bad.ko", livepatch.Options{})
	if !errors.Is(err, ErrModule) || !errors.Is(err, linuxkernel.ErrFormat) {
		t.Fatalf("load: %v, want ErrModule from an ORC ErrFormat", err)
	}
	t.Log(err)
	if !bytes.Equal(guestPart(g), before) || m.Status().PatchAreaInUse != 0 {
		t.Error("the refused load changed the guest")
	}
}

// patchORC reads the tables from the image's regions, bounds-checked.
func TestPatchORCOutsideImage(t *testing.T) {
	img := &linuxpatch.Image{
		Regions: []linuxpatch.Region{{Prot: linuxpatch.ProtExec, Addr: 0x1000, Size: 0x100, Bytes: make([]byte, 0x100)},
			{Prot: linuxpatch.ProtRead, Addr: 0x3000, Size: 0x1000, Bytes: make([]byte, 0x20)}},
		ORC: linuxpatch.ORC{UnwindIP: 0x3010, Unwind: 0x3000, Entries: 4},
	}
	if _, err := patchORC("p", img, "6.1.0-57-amd64"); err == nil {
		t.Error("tables beyond the region's bytes accepted")
	}
	img.ORC.Entries = 0
	o, err := patchORC("p", img, "6.1.0-57-amd64")
	if err != nil || o.ORC != nil || o.Text != (linuxkernel.AddrRange{Start: 0x1000, End: 0x1100}) {
		t.Errorf("no ORC: %+v, %v: want the text alone", o, err)
	}
}

// stackMem is a task stack as linuxkernel.VirtReader.
type stackMem []byte

const stackMemBase = 0xffffc90000010000

func (s stackMem) put(va, v uint64) { binary.LittleEndian.PutUint64(s[va-stackMemBase:], v) }
func (s stackMem) Read(va uint64, b []byte) error {
	if va < stackMemBase || va-stackMemBase > uint64(len(s)) || uint64(len(b)) > uint64(len(s))-(va-stackMemBase) {
		return fmt.Errorf("%#x: not mapped", va)
	}
	copy(b, s[va-stackMemBase:])
	return nil
}

func le32(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }
