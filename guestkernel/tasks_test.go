package guestkernel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"testing"
)

// fakeMem is guest memory made of regions at virtual addresses.
type fakeMem struct {
	regions map[uint64][]byte
	writes  []string // "addr:len" log for WriteVirt
}

func newFakeMem() *fakeMem { return &fakeMem{regions: map[uint64][]byte{}} }

func (m *fakeMem) add(addr uint64, b []byte) { m.regions[addr] = b }

func (m *fakeMem) find(addr uint64, n int) ([]byte, error) {
	for base, r := range m.regions {
		if addr >= base && addr-base <= uint64(len(r)) && uint64(n) <= uint64(len(r))-(addr-base) {
			return r[addr-base : addr-base+uint64(n)], nil
		}
	}
	return nil, fmt.Errorf("fault at %#x+%d", addr, n)
}

func (m *fakeMem) ReadVirt(addr uint64, b []byte) error {
	r, err := m.find(addr, len(b))
	if err != nil {
		return err
	}
	copy(b, r)
	return nil
}

func (m *fakeMem) WriteVirt(addr uint64, b []byte) error {
	r, err := m.find(addr, len(b))
	if err != nil {
		return err
	}
	copy(r, b)
	m.writes = append(m.writes, fmt.Sprintf("%#x:%d", addr, len(b)))
	return nil
}

// A fake guest, laid out like the real one: the walker is checked against
// the real image's symbols and ABI.
type fakeGuest struct {
	mem   *fakeMem
	syms  *Symbols
	abi   *GuestABI
	table []byte
	le    binary.ByteOrder
}

func loadReal(t testing.TB) (*Symbols, *GuestABI) {
	t.Helper()
	syms, err := KernelSymbols()
	if err != nil {
		t.Fatal(err)
	}
	im := openImage(t, Vmlinux())
	a, err := DecodeGuestABI(im.read(t, "klp_guest_abi", GuestABISize), im.addr(t, "klp_guest_abi"))
	if err != nil {
		t.Fatal(err)
	}
	return syms, a
}

func fnAddr(t testing.TB, s *Symbols, name string, off uint64) uint64 {
	t.Helper()
	sym, err := s.Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	if off >= sym.Size {
		t.Fatalf("%s+%#x beyond its size %#x", name, off, sym.Size)
	}
	return sym.Addr + off
}

const stackBase = 0xffffffff82000000

// buildStack writes a frame chain: frames[i] = return address pushed by
// the i-th caller (innermost first); returns the saved RBP.
func buildStack(stack []byte, base uint64, rets []uint64) uint64 {
	le := binary.LittleEndian
	fp := base + uint64(len(stack)) - 64
	var first uint64
	// innermost frame lowest
	fps := make([]uint64, len(rets))
	for i := range rets {
		fps[len(rets)-1-i] = fp
		fp -= 64
	}
	for i, ret := range rets {
		next := uint64(0)
		if i+1 < len(rets) {
			next = fps[i+1]
		}
		le.PutUint64(stack[fps[i]-base:], next)
		le.PutUint64(stack[fps[i]-base+8:], ret)
	}
	first = fps[0]
	return first
}

func newFakeGuest(t testing.TB) *fakeGuest {
	syms, abi := loadReal(t)
	g := &fakeGuest{mem: newFakeMem(), syms: syms, abi: abi, le: binary.LittleEndian}
	ab := make([]byte, GuestABISize)
	le := binary.LittleEndian
	le.PutUint64(ab[offABIMagic:], GuestABIMagic)
	le.PutUint32(ab[offABIVersion:], GuestABIVersion)
	le.PutUint32(ab[offABISize:], GuestABISize)
	le.PutUint64(ab[offABITaskTable:], abi.TaskTable)
	le.PutUint32(ab[offABITaskStride:], abi.TaskStride)
	le.PutUint32(ab[offABITaskCapacity:], abi.TaskCapacity)
	le.PutUint32(ab[offABINrTasks:], 3)
	le.PutUint32(ab[offABINameLen:], abi.NameLen)
	for off, v := range map[int]uint32{offABIOffState: abi.OffState, offABIOffPid: abi.OffPid, offABIOffName: abi.OffName,
		offABIOffSavedRSP: abi.OffSavedRSP, offABIOffSavedRBP: abi.OffSavedRBP, offABIOffSavedRIP: abi.OffSavedRIP,
		offABIOffStackBase: abi.OffStackBase, offABIOffStackSize: abi.OffStackSize, offABIOffOnCPU: abi.OffOnCPU,
		offABIOffCPU: abi.OffCPU, offABINrCPUs: 1, offABIMaxCPUs: abi.MaxCPUs, offABIIRQRegsOff: abi.IRQRegsOff,
		offABIIRQRegsSize: abi.IRQRegsSize} {
		le.PutUint32(ab[off:], v)
	}
	le.PutUint64(ab[offABICPUCurrent:], abi.CPUCurrent)
	le.PutUint64(ab[offABIIRQFrameRet:], abi.IRQFrameRet)
	le.PutUint64(ab[offABISwitchTo:], abi.SwitchTo)
	le.PutUint64(ab[offABISwitchToSize:], 64)
	g.mem.add(abi.Addr, ab)
	g.table = make([]byte, int(abi.TaskStride)*int(abi.TaskCapacity))
	g.mem.add(abi.TaskTable, g.table)
	cur := make([]byte, 8*MaxCPUs)
	le.PutUint64(cur, abi.TaskTable) // CPU 0 runs slot 0
	g.mem.add(abi.CPUCurrent, cur)
	return g
}

func (g *fakeGuest) setTask(slot int, state, pid uint32, name string, onCPU int32, rsp, rbp, rip, base, size uint64) {
	a := g.abi
	p := g.table[slot*int(a.TaskStride):]
	le := g.le
	le.PutUint32(p[a.OffState:], state)
	le.PutUint32(p[a.OffPid:], pid)
	copy(p[a.OffName:a.OffName+a.NameLen], name)
	le.PutUint32(p[a.OffOnCPU:], uint32(onCPU))
	le.PutUint64(p[a.OffSavedRSP:], rsp)
	le.PutUint64(p[a.OffSavedRBP:], rbp)
	le.PutUint64(p[a.OffSavedRIP:], rip)
	le.PutUint64(p[a.OffStackBase:], base)
	le.PutUint64(p[a.OffStackSize:], size)
}

func TestTasksAndWalk(t *testing.T) {
	g := newFakeGuest(t)
	s := g.syms
	// task 2 parked: klp_switch_to <- schedule <- sleep_until <- klp_park_fn <- parker_thread <- klp_task_start
	stack := make([]byte, StackSize)
	g.mem.add(stackBase, stack)
	rets := []uint64{fnAddr(t, s, "schedule", 0x40), fnAddr(t, s, "sleep_until", 0x30), fnAddr(t, s, "klp_park_fn", 0x20),
		fnAddr(t, s, "parker_thread", 0x10), fnAddr(t, s, "klp_task_start", 0x9)}
	rbp := buildStack(stack, stackBase, rets)
	switchPC := fnAddr(t, s, "klp_switch_to", 0x20)
	g.setTask(0, TaskRunning, 0, "idle/0", 0, 0, 0, 0, stackBase+StackSize, StackSize)
	g.setTask(1, TaskDead, 5, "gone", -1, 0, 0, 0, 0, 0)
	g.setTask(2, TaskSleeping, 7, "parker\x01", -1, rbp-48, rbp, switchPC, stackBase, StackSize)
	gst, err := Open(g.mem, s)
	if err != nil {
		t.Fatal(err)
	}
	tasks, err := gst.Tasks()
	if err != nil {
		t.Fatal(err)
	}
	if len(tasks) != 2 || tasks[1].PID != 7 || tasks[1].Name != "parker?" || tasks[0].OnCPU != 0 {
		t.Fatalf("tasks %v", tasks)
	}
	if _, err := gst.WalkTask(tasks[0], 0); !errors.Is(err, ErrBusy) {
		t.Fatalf("walking a running task: %v", err)
	}
	frames, err := gst.WalkTask(tasks[1], 0)
	if err != nil {
		t.Fatal(err)
	}
	names := gst.FuncNames(frames)
	want := []string{"klp_switch_to", "schedule", "sleep_until", "klp_park_fn", "parker_thread", "klp_task_start"}
	if strings.Join(names, " ") != strings.Join(want, " ") {
		t.Fatalf("walk: %v\nwant %v\n%v", names, want, gst.FrameNames(frames))
	}
	cur, err := gst.CPUCurrent()
	if err != nil || len(cur) != 1 || cur[0] != g.abi.TaskTable {
		t.Fatalf("cpu current %v %v", cur, err)
	}
	if !gst.InSwitch(switchPC) || gst.InSwitch(rets[0]) {
		t.Fatal("InSwitch")
	}
}

// TestWalkInterruptFrame: a task preempted in bench_fn_0001 before its
// frame was set up: the frame chain skips its caller, the conservative
// frames from the interrupted RSP do not.
func TestWalkInterruptFrame(t *testing.T) {
	g := newFakeGuest(t)
	s := g.syms
	stack := make([]byte, StackSize)
	g.mem.add(stackBase, stack)
	le := binary.LittleEndian
	top := uint64(stackBase + StackSize)
	// worker frame (caller of bench_fn_0001) near the top
	workerFP := top - 64
	le.PutUint64(stack[workerFP-stackBase:], 0)
	le.PutUint64(stack[workerFP-stackBase+8:], fnAddr(t, s, "klp_task_start", 9))
	// interrupted at bench_fn_0001+0 (before push rbp): [rsp] = return into worker
	intRSP := workerFP - 32
	le.PutUint64(stack[intRSP-stackBase:], fnAddr(t, s, "worker", 0x50))
	// irq regs below, then the record {rbp, rip}
	regsAt := intRSP - 256
	regs := make([]byte, IRQRegsSize)
	le.PutUint64(regs[8*8:], workerFP)                          // rbp
	le.PutUint64(regs[17*8:], fnAddr(t, s, "bench_fn_0001", 0)) // rip
	le.PutUint64(regs[20*8:], intRSP)                           // rsp
	copy(stack[regsAt-stackBase:], regs)
	rec := regsAt - uint64(g.abi.IRQRegsOff)
	le.PutUint64(stack[rec-stackBase:], workerFP)
	le.PutUint64(stack[rec-stackBase+8:], fnAddr(t, s, "bench_fn_0001", 0))
	// handler frames: irq_dispatch's frame returns to irq_frame_ret, its saved rbp = rec
	hFP := rec - 64
	le.PutUint64(stack[hFP-stackBase:], rec)
	le.PutUint64(stack[hFP-stackBase+8:], g.abi.IRQFrameRet)
	sFP := hFP - 64
	le.PutUint64(stack[sFP-stackBase:], hFP)
	le.PutUint64(stack[sFP-stackBase+8:], fnAddr(t, s, "sched_tick", 0x30))
	gst, err := Open(g.mem, s)
	if err != nil {
		t.Fatal(err)
	}
	frames, err := gst.WalkFrom(fnAddr(t, s, "klp_switch_to", 0x20), sFP, stackBase, top, 0)
	if err != nil {
		t.Fatal(err)
	}
	names := gst.FuncNames(frames)
	want := "klp_switch_to sched_tick isr_common bench_fn_0001 worker klp_task_start"
	if strings.Join(names, " ") != want {
		t.Fatalf("walk: %v\nwant %v", names, want)
	}
	if !frames[3].Interrupted || frames[3].Regs == nil || frames[3].Regs.RSP != intRSP || !frames[4].Conservative {
		t.Fatalf("interrupt frame flags wrong: %+v %+v", frames[3], frames[4])
	}
}

func TestWalkRejectsBadChains(t *testing.T) {
	g := newFakeGuest(t)
	gst, err := Open(g.mem, g.syms)
	if err != nil {
		t.Fatal(err)
	}
	stack := make([]byte, 4096)
	g.mem.add(stackBase, stack)
	le := binary.LittleEndian
	ret := fnAddr(t, g.syms, "schedule", 1)
	top := uint64(stackBase + 4096)
	cases := map[string]func() (uint64, error){
		"loop": func() (uint64, error) {
			le.PutUint64(stack[0x100:], stackBase+0x100)
			le.PutUint64(stack[0x108:], ret)
			return stackBase + 0x100, ErrBounds
		},
		"downward": func() (uint64, error) {
			le.PutUint64(stack[0x200:], stackBase+0x100)
			le.PutUint64(stack[0x208:], ret)
			return stackBase + 0x200, ErrBounds
		},
		"outside": func() (uint64, error) { return stackBase + 0x10000, ErrBounds },
		"misaligned": func() (uint64, error) {
			return stackBase + 0x103, ErrBounds
		},
		"top edge": func() (uint64, error) { return top - 8, ErrBounds },
		"deep": func() (uint64, error) {
			for i := 0; i < 200; i++ {
				fp := uint64(16 * i)
				le.PutUint64(stack[fp:], stackBase+fp+16)
				le.PutUint64(stack[fp+8:], ret)
			}
			return stackBase, ErrBounds
		},
	}
	for name, setup := range cases {
		clear(stack)
		fp, want := setup()
		_, err := gst.WalkFrom(ret, fp, stackBase, top, 0)
		if !errors.Is(err, want) {
			t.Errorf("%s: got %v, want %v", name, err, want)
		}
	}
	if _, err := gst.WalkFrom(ret, 0, stackBase, stackBase+(2<<20), 0); !errors.Is(err, ErrBounds) {
		t.Errorf("huge stack accepted: %v", err)
	}
	// a bad task state is a format error, not a silent skip
	g.setTask(0, 77, 1, "x", -1, 0, 0, 0, 0, 0)
	if _, err := gst.Tasks(); !errors.Is(err, ErrFormat) {
		t.Errorf("bad state: %v", err)
	}
}

func TestDecodeGuestABIRejects(t *testing.T) {
	g := newFakeGuest(t)
	good := append([]byte(nil), g.mem.regions[g.abi.Addr]...)
	mut := map[string]func(b []byte){
		"magic":    func(b []byte) { b[0] ^= 1 },
		"version":  func(b []byte) { binary.LittleEndian.PutUint32(b[offABIVersion:], 2) },
		"stride":   func(b []byte) { binary.LittleEndian.PutUint32(b[offABITaskStride:], 8) },
		"capacity": func(b []byte) { binary.LittleEndian.PutUint32(b[offABITaskCapacity:], 0) },
		"huge table": func(b []byte) {
			binary.LittleEndian.PutUint32(b[offABITaskCapacity:], 60000)
			binary.LittleEndian.PutUint32(b[offABITaskStride:], 60000)
		},
		"wrap":    func(b []byte) { binary.LittleEndian.PutUint64(b[offABITaskTable:], ^uint64(0)-16) },
		"namelen": func(b []byte) { binary.LittleEndian.PutUint32(b[offABINameLen:], 100000) },
		"irqregs": func(b []byte) { binary.LittleEndian.PutUint32(b[offABIIRQRegsSize:], 8) },
	}
	for name, m := range mut {
		b := append([]byte(nil), good...)
		m(b)
		if _, err := DecodeGuestABI(b, 1); !errors.Is(err, ErrFormat) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := DecodeGuestABI(good[:20], 1); !errors.Is(err, ErrFormat) {
		t.Errorf("short: %v", err)
	}
	if _, err := DecodeGuestABI(good, 1); err != nil {
		t.Errorf("good: %v", err)
	}
}

// FuzzWalk: arbitrary stack contents and start registers never panic and
// never yield more frames than the depth limit allows.
func FuzzWalk(f *testing.F) {
	f.Add([]byte{}, uint64(0), uint64(0))
	f.Add(make([]byte, 512), uint64(stackBase+8), uint64(0xffffffff81000000))
	syms, err := KernelSymbols()
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte, rbp, rip uint64) {
		mem := newFakeMem()
		stack := make([]byte, 4096)
		copy(stack, data)
		mem.add(stackBase, stack)
		g := &Guest{mem: mem, syms: syms, abi: &GuestABI{IRQFrameRet: binary.LittleEndian.Uint64(append(data, make([]byte, 8)...)[:8]), IRQRegsOff: 16, IRQRegsSize: IRQRegsSize}}
		frames, _ := g.WalkFrom(rip, stackBase+rbp%4200, stackBase, stackBase+4096, 16)
		if len(frames) > 16+3 {
			t.Fatalf("%d frames beyond the depth limit", len(frames))
		}
	})
}

func TestAllStacksAndScan(t *testing.T) {
	g := newFakeGuest(t)
	s := g.syms
	stack := make([]byte, StackSize)
	g.mem.add(stackBase, stack)
	rets := []uint64{fnAddr(t, s, "schedule", 0x40), fnAddr(t, s, "klp_park_fn", 0x20),
		fnAddr(t, s, "parker_thread", 0x10), fnAddr(t, s, "klp_task_start", 0x9)}
	rbp := buildStack(stack, stackBase, rets)
	g.setTask(2, TaskSleeping, 7, "parker", -1, rbp-48, rbp, fnAddr(t, s, "klp_switch_to", 0x20), stackBase, StackSize)
	// task 0 runs on CPU 0: a live stack of its own
	live := make([]byte, StackSize)
	const liveBase = stackBase + 0x100000
	g.mem.add(liveBase, live)
	lrbp := buildStack(live, liveBase, []uint64{fnAddr(t, s, "kernel_main_bsp", 0x30)})
	g.setTask(0, TaskRunning, 0, "idle/0", 0, 0, 0, 0, liveBase, StackSize)
	idleRIP := fnAddr(t, s, "cpu_idle_loop", 0x10)
	regs := func(cpu int) (uint64, uint64, uint64, error) {
		if cpu != 0 {
			return 0, 0, 0, fmt.Errorf("no CPU %d", cpu)
		}
		return idleRIP, lrbp - 32, lrbp, nil
	}
	gst, err := Open(g.mem, s)
	if err != nil {
		t.Fatal(err)
	}
	all, err := gst.AllStacks(regs, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 2 || !all[0].Live || all[1].Live {
		t.Fatalf("stacks %+v", all)
	}
	if got := strings.Join(gst.FuncNames(all[0].Frames), " "); got != "cpu_idle_loop kernel_main_bsp" {
		t.Fatalf("live walk %s", got)
	}
	if got := strings.Join(gst.FuncNames(all[1].Frames), " "); got != "klp_switch_to schedule klp_park_fn parker_thread klp_task_start" {
		t.Fatalf("parked walk %s", got)
	}
	// conservative scan of the parked task finds the same return addresses
	words, err := gst.ScanStack(all[1].Task, rbp-48)
	if err != nil {
		t.Fatal(err)
	}
	if len(words) != len(rets) || words[0].PC != rets[0] || !words[0].Conservative {
		t.Fatalf("scan %v", gst.FrameNames(words))
	}
	if _, err := gst.ScanStack(all[1].Task, stackBase-8); !errors.Is(err, ErrBounds) {
		t.Fatalf("scan below the stack: %v", err)
	}
	// a CPU inside klp_switch_to: busy
	busyRegs := func(int) (uint64, uint64, uint64, error) { return g.abi.SwitchTo + 4, 0, 0, nil }
	if _, err := gst.AllStacks(busyRegs, 0); !IsBusy(err) {
		t.Fatalf("mid-switch CPU: %v", err)
	}
	// on_cpu and cpu_current disagree: busy
	g.setTask(2, TaskSleeping, 7, "parker", 0, rbp-48, rbp, 0, stackBase, StackSize)
	if _, err := gst.AllStacks(regs, 0); !IsBusy(err) {
		t.Fatalf("inconsistent on_cpu: %v", err)
	}
	// CPU 0 paused in schedule() after it made task 0 current but before
	// klp_switch_to moved RSP/RBP: its registers are on the parker's
	// stack, and the parker is still marked on CPU 0. A switch in
	// progress (busy), although task 0, listed first, would fail its
	// stack bounds with these registers (the CI flake of
	// test/guest's TestIntrospection on kvm_pvm).
	midSwitch := func(int) (uint64, uint64, uint64, error) { return fnAddr(t, s, "schedule", 0x40), rbp - 48, rbp, nil }
	if _, err := gst.AllStacks(midSwitch, 0); !IsBusy(err) {
		t.Fatalf("CPU between making next current and klp_switch_to: %v", err)
	}
	// a broken chain is an error, not an idle task
	g.setTask(2, TaskSleeping, 7, "parker", -1, rbp-48, stackBase+3, 0, stackBase, StackSize)
	if _, err := gst.AllStacks(regs, 0); !errors.Is(err, ErrBounds) {
		t.Fatalf("broken chain: %v", err)
	}
}

// FuzzGuestABI: an arbitrary klp_guest_abi and task table never panic
// Open/Tasks/AllStacks, and whatever they accept respects the limits.
func FuzzGuestABI(f *testing.F) {
	syms, abi := loadReal(f)
	good := make([]byte, GuestABISize)
	{
		g := newFakeGuest(f)
		copy(good, g.mem.regions[abi.Addr])
	}
	f.Add(good, []byte{1, 0, 0, 0, 7})
	f.Add(make([]byte, GuestABISize), []byte{})
	f.Fuzz(func(t *testing.T, ab, table []byte) {
		mem := newFakeMem()
		hdr := make([]byte, GuestABISize)
		copy(hdr, ab)
		mem.add(abi.Addr, hdr)
		tb := make([]byte, 64<<10)
		copy(tb, table)
		mem.add(binary.LittleEndian.Uint64(hdr[offABITaskTable:]), tb)
		cur := make([]byte, 8*MaxCPUs)
		mem.add(binary.LittleEndian.Uint64(hdr[offABICPUCurrent:]), cur)
		g, err := Open(mem, syms)
		if err != nil {
			return
		}
		a := g.ABI()
		if a.NrTasks > a.TaskCapacity || a.TaskStride == 0 || a.TaskStride > maxTaskStride {
			t.Fatalf("accepted ABI out of limits: %+v", a)
		}
		tasks, err := g.Tasks()
		if err != nil {
			return
		}
		for _, tk := range tasks {
			g.WalkTask(tk, 16)
			g.ScanStack(tk, tk.SavedRSP)
		}
		g.AllStacks(func(int) (uint64, uint64, uint64, error) { return 0, 0, 0, nil }, 16)
	})
}

// InEntry covers the vector stubs and isr_common through its iretq, and
// nothing around them.
func TestInEntry(t *testing.T) {
	g := newFakeGuest(t)
	gst, err := Open(g.mem, g.syms)
	if err != nil {
		t.Fatal(err)
	}
	first, err1 := g.syms.Lookup("isr_0")
	common, err2 := g.syms.Lookup("isr_common")
	if err1 != nil || err2 != nil || common.Size == 0 {
		t.Fatalf("kernel lacks isr_0/isr_common: %v %v", err1, err2)
	}
	for pc, want := range map[uint64]bool{
		first.Addr:                       true,
		common.Addr:                      true,
		common.Addr + common.Size - 1:    true, // the iretq
		first.Addr - 1:                   false,
		common.Addr + common.Size:        false,
		fnAddr(t, g.syms, "schedule", 1): false,
	} {
		if got := gst.InEntry(pc); got != want {
			t.Errorf("InEntry(%#x) = %v, want %v", pc, got, want)
		}
	}
}
