// Package fakeguest is a stand-in for a running klp-kvm guest in unit
// tests of the livepatch core, its API and its CLI: guest memory over a
// byte slice with the kvm boot mappings (guestkernel/layout: the kernel
// map at layout.KernelMapVirt -> 0 and the patch area at
// layout.PatchAreaVirt -> the top of its RAM) holding the real guest kernel's loaded image, and vCPUs whose registers
// the test sets. Nothing executes; tests place vCPUs and tasks where they
// want them. It is locked: tests read it while an operation runs.
package fakeguest

import (
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"slices"
	"sync"
	"time"

	"klp-kvm/elfpatch"
	"klp-kvm/guestkernel"
	"klp-kvm/guestkernel/layout"
	"klp-kvm/kvm/engine"
)

// Sizes of the fake; its addresses are the machine's (guestkernel/layout).
const (
	RAMSize   = 24 << 20
	PatchSize = 4 << 20 // the patch area at layout.PatchAreaVirt
	// TaskStacks is where FakeTask puts task stacks (64 KiB apart).
	TaskStacks = layout.KernelMapVirt + 0x1200000
	// VCPUStacks is the top of vCPU 0's stack (vCPU i: 64 KiB lower each).
	VCPUStacks = layout.KernelMapVirt + 0x1300000
)

// patchPhys is where the patch area lies in the fake's RAM, as on a
// machine of RAMSize bytes.
var patchPhys = layout.PatchAreaPhys(RAMSize, PatchSize)

// Guest is the fake.
type Guest struct {
	mu     sync.Mutex
	ram    []byte
	depth  int
	pauses int
	regs   []engine.Regs
	// PauseHook, if set, runs at every Pause before the vCPUs "stop".
	PauseHook func()
	// PauseErr, if set, may make a Pause fail (a vCPU that does not stop).
	PauseErr func() error
	// WriteErr, if set, may make a WriteVirt fail (before anything is
	// written). Called without the lock.
	WriteErr func(va uint64, n int) error
	// Step, if set, plays the vCPUs that RunUntil lets run (the test
	// moves their registers); without it RunUntil fails, like a machine
	// that cannot run some vCPUs alone.
	Step func(stops map[int][]uint64) (reached int)
	// Steps counts RunUntil calls.
	Steps int
	syms  *guestkernel.Symbols
}

// New loads the embedded guest kernel into a fake with cpus vCPUs, all
// idle at _start with a stack.
func New(cpus int) (*Guest, error) {
	img := guestkernel.Vmlinux()
	k, err := elfpatch.ParseKernel(img)
	if err != nil {
		return nil, err
	}
	syms := guestkernel.NewSymbols(k) // the same parse: no second reader
	g := &Guest{ram: make([]byte, RAMSize), regs: make([]engine.Regs, cpus), syms: syms}
	for _, s := range k.Segments {
		if s.Paddr+s.Memsz > patchPhys || s.Offset+s.Filesz > uint64(len(img)) {
			return nil, fmt.Errorf("fakeguest: segment %#x+%#x does not fit", s.Paddr, s.Memsz)
		}
		copy(g.ram[s.Paddr:s.Paddr+s.Filesz], img[s.Offset:s.Offset+s.Filesz])
	}
	start, err := syms.Lookup("_start")
	if err != nil {
		return nil, err
	}
	for i := range g.regs {
		g.regs[i] = engine.Regs{RIP: start.Addr, RSP: VCPUStacks - uint64(i)*0x10000}
	}
	return g, nil
}

// Sym is a kernel symbol's address (0 if absent).
func (g *Guest) Sym(name string) uint64 {
	s, err := g.syms.Lookup(name)
	if err != nil {
		return 0
	}
	return s.Addr
}

func (g *Guest) phys(va uint64, n int) (uint64, error) {
	end := va + uint64(n)
	switch {
	case end < va:
	case va >= layout.PatchAreaVirt && end <= layout.PatchAreaVirt+PatchSize:
		return patchPhys + va - layout.PatchAreaVirt, nil
	case va >= layout.KernelMapVirt && end <= layout.KernelMapVirt+patchPhys:
		return va - layout.KernelMapVirt, nil
	}
	return 0, fmt.Errorf("fakeguest: %#x+%d not mapped", va, n)
}

// ReadVirt reads guest-virtual memory.
func (g *Guest) ReadVirt(va uint64, b []byte) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	pa, err := g.phys(va, len(b))
	if err != nil {
		return err
	}
	copy(b, g.ram[pa:])
	return nil
}

// WriteVirt writes guest-virtual memory, all or nothing.
func (g *Guest) WriteVirt(va uint64, b []byte) error {
	if f := g.WriteErr; f != nil {
		if err := f(va, len(b)); err != nil {
			return err
		}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	pa, err := g.phys(va, len(b))
	if err != nil {
		return err
	}
	copy(g.ram[pa:], b)
	return nil
}

// Pause "stops" every vCPU (nests).
func (g *Guest) Pause() error {
	if h := g.PauseHook; h != nil {
		h()
	}
	if f := g.PauseErr; f != nil {
		if err := f(); err != nil {
			return err
		}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.depth++
	g.pauses++
	return nil
}

// Resume undoes one Pause.
func (g *Guest) Resume() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.depth == 0 {
		return fmt.Errorf("fakeguest: resume without pause")
	}
	g.depth--
	return nil
}

// RunUntil "runs" the listed vCPUs while the others stay paused
// (livepatch.Stepper) through the Step hook.
func (g *Guest) RunUntil(stops map[int][]uint64, budget time.Duration) (int, error) {
	g.mu.Lock()
	step, paused := g.Step, g.depth > 0
	g.Steps++
	g.mu.Unlock()
	if !paused {
		return 0, fmt.Errorf("fakeguest: RunUntil while running")
	}
	if step == nil {
		return 0, fmt.Errorf("fakeguest: no Step hook")
	}
	return step(stops), nil
}

// Paused reports whether the fake is paused.
func (g *Guest) Paused() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.depth > 0
}

// Pauses counts Pause calls.
func (g *Guest) Pauses() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.pauses
}

// NumCPUs is the number of vCPUs.
func (g *Guest) NumCPUs() int { return len(g.regs) }

// Regs returns a paused vCPU's registers.
func (g *Guest) Regs(id int) (engine.Regs, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.depth == 0 {
		return engine.Regs{}, fmt.Errorf("fakeguest: registers of a running vCPU")
	}
	if id < 0 || id >= len(g.regs) {
		return engine.Regs{}, fmt.Errorf("fakeguest: no vCPU %d", id)
	}
	return g.regs[id], nil
}

// SetRegs places vCPU id.
func (g *Guest) SetRegs(id int, r engine.Regs) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.regs[id] = r
}

// RegsOf returns vCPU id's registers without pausing (test bookkeeping).
func (g *Guest) RegsOf(id int) engine.Regs {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.regs[id]
}

// Hash covers the loaded kernel image (text and data) and the patch area,
// all but the seqlock counters of klp_sysfs_state and klp_patch_list and
// the sysfs generation: a rolled-back transition showed transition=1 (and
// listed its patch for klp_get_prev_state) and must move them so that
// guest readers notice.
func (g *Guest) Hash() [32]byte {
	type span struct{ lo, hi uint64 }
	st := g.Sym("klp_sysfs_state") - layout.KernelMapVirt
	skip := []span{{st + 16, st + 20}, {st + 44, st + 48}} // seq, generation
	if pl := g.Sym("klp_patch_list"); pl != 0 {
		pl -= layout.KernelMapVirt
		skip = append(skip, span{pl + 16, pl + 20}) // seq
	}
	slices.SortFunc(skip, func(a, b span) int { return cmp.Compare(a.lo, b.lo) })
	g.mu.Lock()
	defer g.mu.Unlock()
	h := sha256.New()
	at := uint64(0x1000000) // the kernel image, then everything above it
	for _, s := range skip {
		h.Write(g.ram[at:s.lo])
		at = s.hi
	}
	h.Write(g.ram[at:])
	var out [32]byte
	copy(out[:], h.Sum(nil))
	return out
}

// PatchList decodes klp_patch_list: the installed patches the guest's
// klp_get_prev_state would walk, and the one in transition.
func (g *Guest) PatchList() (guestkernel.PatchList, error) {
	buf := make([]byte, guestkernel.PatchListSize)
	if err := g.ReadVirt(g.Sym("klp_patch_list"), buf); err != nil {
		return guestkernel.PatchList{}, err
	}
	l, seq, err := guestkernel.DecodePatchList(buf)
	if err == nil && seq%2 != 0 {
		err = fmt.Errorf("klp_patch_list: seq %d is odd (a write in progress)", seq)
	}
	return l, err
}

// Sysfs decodes what the guest would show in /sys/kernel/livepatch.
func (g *Guest) Sysfs() ([]guestkernel.SysfsPatch, error) {
	buf := make([]byte, guestkernel.SysfsStateSize)
	if err := g.ReadVirt(g.Sym("klp_sysfs_state"), buf); err != nil {
		return nil, err
	}
	ps, seq, err := guestkernel.DecodeSysfsState(buf)
	if err != nil {
		return nil, err
	}
	if seq&1 != 0 {
		return nil, fmt.Errorf("fakeguest: sysfs seqlock left odd (%d)", seq)
	}
	return ps, nil
}

// SetTask writes a sleeping task into the guest's task table (slot, and
// nr_tasks = slot+1) whose saved stack has one frame returning into pc.
func (g *Guest) SetTask(slot int, pid uint32, name string, pc uint64) error {
	gg, err := guestkernel.Open(g, g.syms)
	if err != nil {
		return err
	}
	a := gg.ABI()
	stackBase := TaskStacks + uint64(slot)*0x10000
	fp := stackBase + 0x3000
	var w [16]byte
	binary.LittleEndian.PutUint64(w[8:], pc)
	if err := g.WriteVirt(fp, w[:]); err != nil {
		return err
	}
	task := make([]byte, a.TaskStride)
	le := binary.LittleEndian
	le.PutUint32(task[a.OffState:], guestkernel.TaskSleeping)
	le.PutUint32(task[a.OffPid:], pid)
	copy(task[a.OffName:a.OffName+a.NameLen-1], name)
	le.PutUint64(task[a.OffSavedRSP:], fp-0x40)
	le.PutUint64(task[a.OffSavedRBP:], fp)
	le.PutUint64(task[a.OffSavedRIP:], a.SwitchTo)
	le.PutUint64(task[a.OffStackBase:], stackBase)
	le.PutUint64(task[a.OffStackSize:], 0x4000)
	le.PutUint32(task[a.OffOnCPU:], 0xffffffff)
	if err := g.WriteVirt(a.TaskTable+uint64(slot)*uint64(a.TaskStride), task); err != nil {
		return err
	}
	return g.setNrTasks(a.Addr, uint32(slot+1))
}

// ClearTasks empties the task table.
func (g *Guest) ClearTasks() error {
	gg, err := guestkernel.Open(g, g.syms)
	if err != nil {
		return err
	}
	return g.setNrTasks(gg.ABI().Addr, 0)
}

func (g *Guest) setNrTasks(abi uint64, n uint32) error {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], n)
	return g.WriteVirt(abi+32, b[:]) // klp_guest_abi.nr_tasks
}

// SetPreemptedTask writes a task into the task table (as SetTask) that a
// timer interrupt switched out at rip, before the interrupted function
// pushed its frame: its saved chain goes klp_switch_to -> the interrupt
// frame record -> {interrupted rbp, interrupted rip}, and the interrupted
// RSP holds the words atRSP (a caller's return address first). The
// interrupted RBP's frame returns into callerRet.
func (g *Guest) SetPreemptedTask(slot int, pid uint32, name string, rip uint64, atRSP []uint64, callerRet uint64) error {
	if err := g.SetTask(slot, pid, name, 0); err != nil {
		return err
	}
	gg, err := guestkernel.Open(g, g.syms)
	if err != nil {
		return err
	}
	a := gg.ABI()
	le := binary.LittleEndian
	stackBase := TaskStacks + uint64(slot)*0x10000
	top := stackBase + 0x4000
	put := func(va, v uint64) error {
		var w [8]byte
		le.PutUint64(w[:], v)
		return g.WriteVirt(va, w[:])
	}
	// from the top down: the caller's frame, the interrupted RSP's words,
	// the interrupt frame, the record, the switch frame
	callerFP := top - 0x20
	irqRSP := callerFP - 0x40
	regsAt := irqRSP - 0x100
	rec := regsAt - uint64(a.IRQRegsOff)
	switchFP := rec - 0x80
	steps := []struct{ va, v uint64 }{
		{callerFP, 0}, {callerFP + 8, callerRet},
		{switchFP, rec}, {switchFP + 8, a.IRQFrameRet},
		{rec, callerFP}, {rec + 8, rip},
		{regsAt + 8*8, callerFP}, {regsAt + 17*8, rip}, {regsAt + 18*8, 0x8},
		{regsAt + 19*8, 0x202}, {regsAt + 20*8, irqRSP}, {regsAt + 21*8, 0x10},
	}
	for i, w := range atRSP {
		steps = append(steps, struct{ va, v uint64 }{irqRSP + uint64(i)*8, w})
	}
	for _, s := range steps {
		if err := put(s.va, s.v); err != nil {
			return err
		}
	}
	ta := a.TaskTable + uint64(slot)*uint64(a.TaskStride)
	if err := put(ta+uint64(a.OffSavedRBP), switchFP); err != nil {
		return err
	}
	return put(ta+uint64(a.OffSavedRSP), switchFP-0x30)
}

// SetTaskCPU sets a task's on_cpu field (-1: switched out), as the guest's
// schedule() does for next before the stack switch.
func (g *Guest) SetTaskCPU(slot int, cpu int32) error {
	gg, err := guestkernel.Open(g, g.syms)
	if err != nil {
		return err
	}
	a := gg.ABI()
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], uint32(cpu))
	return g.WriteVirt(a.TaskTable+uint64(slot)*uint64(a.TaskStride)+uint64(a.OffOnCPU), b[:])
}

// Kernel is the guest kernel the fake was loaded from, parsed once: hand
// it to livepatch.Config.Kernel rather than parsing the image again.
func (g *Guest) Kernel() *elfpatch.Kernel { return g.syms.Kernel() }
