package guestkernel

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// Memory reads guest memory by kernel virtual address. kvm.Machine
// implements it; tests use a fake. Reads of a running guest may see torn
// data: callers pause the guest, and everything read is validated anyway.
type Memory interface {
	ReadVirt(addr uint64, b []byte) error
}

// Guest is the host's view of a running guest kernel's tasks, through the
// klp_guest_abi structure (include/klp_abi.h).
type Guest struct {
	mem  Memory
	syms *Symbols
	abi  *GuestABI
	// [entryLo, entryHi) is the interrupt entry and exit code (the isr_N
	// stubs and isr_common); zero if the kernel has no such symbols.
	entryLo, entryHi uint64
	// [extraLo, extraHi) is code outside the kernel image that return
	// addresses may point into (the patch area's new functions); zero if
	// none was declared.
	extraLo, extraHi uint64

	// Set only in a View's copy of the Guest (see view.go): the view's
	// reusable buffers, nil in a Guest shared by callers.
	view *View
}

// AddText declares [lo, hi) as code outside the kernel's symbols (the
// patch area): a word at an interrupted RSP pointing there is a caller's
// return address like one into the kernel. Without it a task preempted at
// the first instruction of a function called from a patch's new function
// loses that caller from its walk (the cause of the consistency
// violations seen on kvm_pvm; see docs/design-notes.md).
func (g *Guest) AddText(lo, hi uint64) { g.extraLo, g.extraHi = lo, hi }

// isText reports whether pc lies in a kernel function or declared text.
func (g *Guest) isText(pc uint64) bool {
	if pc >= g.extraLo && pc < g.extraHi {
		return true
	}
	_, _, ok := g.syms.Addr2Func(pc)
	return ok
}

// Task is one guest task as read from the task table.
type Task struct {
	Slot      int
	Addr      uint64 // kernel virtual address of the task struct
	PID       uint32
	Name      string
	State     uint32 // TaskRunning or TaskSleeping
	OnCPU     int32  // CPU it is running on, -1 if switched out
	CPU       uint32 // CPU whose run queue owns it
	SavedRSP  uint64
	SavedRBP  uint64
	SavedRIP  uint64
	StackBase uint64
	StackSize uint64
}

// Frame is one entry of a stack trace.
type Frame struct {
	PC uint64 // exact for the first frame and interrupted code, else a return address
	FP uint64 // frame pointer at which the PC was found (0 for the first)
	// Interrupted: PC is the RIP of code an interrupt stopped; Regs holds
	// the registers the interrupt entry saved.
	Interrupted bool
	Regs        *IRQRegs
	// Conservative: a word read from the interrupted stack that points into
	// a function: a function interrupted before it set up its frame has its
	// caller's return address there and nowhere on the frame chain.
	Conservative bool
}

// Limits for walking guest stacks.
const (
	DefaultMaxDepth = 64
	maxStackSize    = 1 << 20
)

// Open finds klp_guest_abi through syms and reads it.
func Open(mem Memory, syms *Symbols) (*Guest, error) {
	sym, err := syms.Lookup("klp_guest_abi")
	if err != nil {
		return nil, err
	}
	g := &Guest{mem: mem, syms: syms}
	if err := g.readABI(sym.Addr); err != nil {
		return nil, err
	}
	if common, err := syms.Lookup("isr_common"); err == nil && common.Size > 0 {
		g.entryLo, g.entryHi = common.Addr, common.Addr+common.Size
		if first, err := syms.Lookup("isr_0"); err == nil && first.Addr < common.Addr {
			g.entryLo = first.Addr
		}
	}
	return g, nil
}

func (g *Guest) readABI(addr uint64) error {
	if v := g.view; v != nil {
		// a View's copy: into its own buffer and value
		if err := g.mem.ReadVirt(addr, v.abiBuf[:]); err != nil {
			return &Error{Op: "read klp_guest_abi", Kind: ErrMemory, Addr: addr, Err: err}
		}
		if err := decodeGuestABI(v.abiBuf[:], addr, &v.abi); err != nil {
			return err
		}
		g.abi = &v.abi
		return nil
	}
	buf := make([]byte, GuestABISize)
	if err := g.mem.ReadVirt(addr, buf); err != nil {
		return &Error{Op: "read klp_guest_abi", Kind: ErrMemory, Addr: addr, Err: err}
	}
	abi, err := DecodeGuestABI(buf, addr)
	if err != nil {
		return err
	}
	g.abi = abi
	return nil
}

// Refresh re-reads klp_guest_abi (its live fields: task count, CPUs, ticks).
func (g *Guest) Refresh() error { return g.readABI(g.abi.Addr) }

// ABI returns the last decoded klp_guest_abi.
func (g *Guest) ABI() *GuestABI { return g.abi }

// Symbols returns the symbol table the Guest was opened with.
func (g *Guest) Symbols() *Symbols { return g.syms }

// Tasks reads the task table and returns the live tasks (running,
// runnable or sleeping), refreshing the ABI's live fields first.
func (g *Guest) Tasks() ([]Task, error) {
	return g.tasks(nil, nil, nil)
}

// tasks is Tasks appending to out[:0], reading into raw when it has room
// and taking names from names (a View's buffers; all nil: fresh ones).
func (g *Guest) tasks(out []Task, raw []byte, names map[string]string) ([]Task, error) {
	const op = "read tasks"
	if err := g.Refresh(); err != nil {
		return nil, err
	}
	a := g.abi
	n := a.NrTasks
	if n == 0 {
		return nil, nil
	}
	size := int(n) * int(a.TaskStride)
	if cap(raw) < size {
		raw = make([]byte, size)
	}
	buf := raw[:size]
	if g.view != nil {
		g.view.raw = raw
	}
	if err := g.mem.ReadVirt(a.TaskTable, buf); err != nil {
		return nil, &Error{Op: op, Kind: ErrMemory, Addr: a.TaskTable, Err: err}
	}
	le := binary.LittleEndian
	out = out[:0]
	for i := 0; i < int(n); i++ {
		p := buf[i*int(a.TaskStride) : (i+1)*int(a.TaskStride)]
		t := Task{
			Slot: i, Addr: a.TaskTable + uint64(i)*uint64(a.TaskStride),
			State: le.Uint32(p[a.OffState:]), PID: le.Uint32(p[a.OffPid:]),
			OnCPU:    int32(le.Uint32(p[a.OffOnCPU:])),
			CPU:      le.Uint32(p[a.OffCPU:]),
			SavedRSP: le.Uint64(p[a.OffSavedRSP:]), SavedRBP: le.Uint64(p[a.OffSavedRBP:]),
			SavedRIP: le.Uint64(p[a.OffSavedRIP:]), StackBase: le.Uint64(p[a.OffStackBase:]),
			StackSize: le.Uint64(p[a.OffStackSize:]),
		}
		switch t.State {
		case TaskRunning, TaskSleeping:
			t.Name = internName(names, p[a.OffName:a.OffName+a.NameLen])
			out = append(out, t)
		case TaskUnused, TaskDead:
		default:
			return nil, errorf(op, ErrFormat, t.Addr, "task slot %d: state %d", i, t.State)
		}
	}
	return out, nil
}

// maxNames bounds a View's name memo: the names come from the guest.
const maxNames = 1024

// internName is sanitizeName through the memo names (nil: none): a name
// seen before is the same string, not a new one.
func internName(names map[string]string, p []byte) string {
	if names == nil {
		return sanitizeName(p)
	}
	raw := p
	if i := bytes.IndexByte(p, 0); i >= 0 {
		raw = p[:i]
	}
	if s, ok := names[string(raw)]; ok { // no allocation for the lookup
		return s
	}
	s := sanitizeName(p)
	if len(names) >= maxNames {
		clear(names)
	}
	names[string(raw)] = s
	return s
}

// sanitizeName keeps a guest name printable: cut at NUL, non-printable
// bytes replaced.
func sanitizeName(p []byte) string {
	s := []byte(cstring(p))
	for i, c := range s {
		if c < 0x20 || c > 0x7e {
			s[i] = '?'
		}
	}
	return string(s)
}

// CPUCurrent returns the address of the task each online CPU runs now.
func (g *Guest) CPUCurrent() ([]uint64, error) {
	a := g.abi
	n := a.NrCPUs
	buf := make([]byte, 8*int(n))
	if n == 0 {
		return nil, nil
	}
	if err := g.mem.ReadVirt(a.CPUCurrent, buf); err != nil {
		return nil, &Error{Op: "read cpu_current", Kind: ErrMemory, Addr: a.CPUCurrent, Err: err}
	}
	out := make([]uint64, n)
	for i := range out {
		out[i] = binary.LittleEndian.Uint64(buf[i*8:])
	}
	return out, nil
}

// TaskByAddr returns the live task at a task-table address.
func (g *Guest) TaskByAddr(addr uint64) (Task, error) {
	ts, err := g.Tasks()
	if err != nil {
		return Task{}, err
	}
	for _, t := range ts {
		if t.Addr == addr {
			return t, nil
		}
	}
	return Task{}, errorf("find task", ErrNotFound, addr, "no live task at this address")
}

// stackBounds validates a task's stack range.
func stackBounds(t Task) (lo, hi uint64, err error) {
	if t.StackSize == 0 || t.StackSize > maxStackSize || t.StackBase+t.StackSize < t.StackBase {
		return 0, 0, errorf("walk stack", ErrBounds, t.Addr, "task %d (%s): stack %#x+%#x", t.PID, t.Name, t.StackBase, t.StackSize)
	}
	return t.StackBase, t.StackBase + t.StackSize, nil
}

// InSwitch reports whether pc lies inside klp_switch_to, where a CPU's
// current task and the tasks' on_cpu fields may be in flux.
func (g *Guest) InSwitch(pc uint64) bool {
	return pc >= g.abi.SwitchTo && pc-g.abi.SwitchTo < g.abi.SwitchToSize
}

// InEntry reports whether pc lies in the interrupt entry or exit code: from
// the vector stubs to isr_common's iretq. There the interrupted function is
// in the hardware interrupt frame but not (yet, or any more) in the frame
// chain, so a stack walked from a CPU stopped there is incomplete.
func (g *Guest) InEntry(pc uint64) bool {
	return pc >= g.entryLo && pc < g.entryHi
}

// WalkTask walks a switched-out task's frame chain from its saved
// registers. A task running on a CPU must be walked from that vCPU's
// registers (WalkFrom), and is refused here with ErrBusy.
func (g *Guest) WalkTask(t Task, maxDepth int) ([]Frame, error) {
	if t.OnCPU != -1 {
		return nil, errorf("walk stack", ErrBusy, t.Addr, "task %d (%s) is running on CPU %d", t.PID, t.Name, t.OnCPU)
	}
	lo, hi, err := stackBounds(t)
	if err != nil {
		return nil, err
	}
	return g.WalkFrom(t.SavedRIP, t.SavedRBP, lo, hi, maxDepth)
}

// WalkFrom walks the frame chain starting at (rip, rbp) within the stack
// [lo, hi). It stops at rbp == 0 or a zero return address (the end of a
// thread's chain), and fails on a frame pointer outside the stack, not
// increasing, or misaligned, or after maxDepth frames (DefaultMaxDepth if
// maxDepth <= 0): a chain that does not end cleanly is not trusted.
func (g *Guest) WalkFrom(rip, rbp, lo, hi uint64, maxDepth int) ([]Frame, error) {
	if hi <= lo || hi-lo > maxStackSize {
		return nil, errorf("walk stack", ErrBounds, lo, "stack [%#x, %#x)", lo, hi)
	}
	return g.walkChain(g.firstFrame(rip), rbp, lo, hi, maxDepth)
}

// WalkLive walks a running vCPU's stack from its registers. It is WalkFrom
// plus the one place where the chain alone is wrong: the interrupt
// handler's first and last instructions. isr_common calls the handler
// with RBP at the frame record {interrupted rbp, interrupted rip}; until
// the handler pushes its own frame (and again at its ret) the marker
// return address irq_frame_ret is at RSP (or at RSP+8 right after push
// %rbp), not on the chain, and a plain walk would read the record as an
// ordinary frame: the interrupted function's registers, and the caller
// whose return address is at the interrupted RSP, would be lost.
func (g *Guest) WalkLive(rip, rsp, rbp, lo, hi uint64, maxDepth int) ([]Frame, error) {
	const op = "walk stack"
	if hi <= lo || hi-lo > maxStackSize {
		return nil, errorf(op, ErrBounds, lo, "stack [%#x, %#x)", lo, hi)
	}
	marker := g.abi.IRQFrameRet
	if marker != 0 && rsp >= lo && rsp <= hi-16 && rsp&7 == 0 && rbp != 0 {
		w := g.word16()
		if err := g.mem.ReadVirt(rsp, w); err == nil {
			w0, w1 := binary.LittleEndian.Uint64(w[0:]), binary.LittleEndian.Uint64(w[8:])
			at := rsp
			if w0 != marker && w1 == marker && w0 == rbp {
				at = rsp + 8
			}
			if w0 == marker || at != rsp {
				frames := append(g.firstFrame(rip), Frame{PC: marker, FP: at})
				f, extra, err := g.irqFrame(rbp, lo, hi)
				if err != nil {
					g.keepFrames(frames)
					return frames, err
				}
				frames = append(frames, f)
				frames = append(frames, extra...)
				fp := f.Regs.RBP
				if fp != 0 && fp <= rbp {
					g.keepFrames(frames)
					return frames, errorf(op, ErrBounds, fp, "interrupted frame pointer below the interrupt frame")
				}
				return g.walkChain(frames, fp, lo, hi, maxDepth)
			}
		}
	}
	return g.walkChain(g.firstFrame(rip), rbp, lo, hi, maxDepth)
}

// walkChain follows the frame pointers from fp, appending to frames.
func (g *Guest) walkChain(frames []Frame, fp, lo, hi uint64, maxDepth int) ([]Frame, error) {
	frames, err := g.followChain(frames, fp, lo, hi, maxDepth)
	g.keepFrames(frames)
	return frames, err
}

func (g *Guest) followChain(frames []Frame, fp, lo, hi uint64, maxDepth int) ([]Frame, error) {
	const op = "walk stack"
	if maxDepth <= 0 {
		maxDepth = DefaultMaxDepth
	}
	w := g.word16()
	for fp != 0 {
		if len(frames) >= maxDepth {
			return frames, errorf(op, ErrBounds, fp, "more than %d frames", maxDepth)
		}
		if fp < lo || fp > hi-16 || fp&7 != 0 {
			return frames, errorf(op, ErrBounds, fp, "frame pointer outside the stack [%#x, %#x) or misaligned", lo, hi)
		}
		if err := g.mem.ReadVirt(fp, w); err != nil {
			return frames, &Error{Op: op, Kind: ErrMemory, Addr: fp, Err: err}
		}
		next := binary.LittleEndian.Uint64(w[0:])
		ret := binary.LittleEndian.Uint64(w[8:])
		if ret == 0 {
			break
		}
		frames = append(frames, Frame{PC: ret, FP: fp})
		if ret == g.abi.IRQFrameRet && next != 0 {
			// next is the record {interrupted rbp, interrupted rip}, the
			// saved registers follow it
			f, extra, err := g.irqFrame(next, lo, hi)
			if err != nil {
				return frames, err
			}
			frames = append(frames, f)
			frames = append(frames, extra...)
			fp = f.Regs.RBP
			if fp != 0 && fp <= next {
				return frames, errorf(op, ErrBounds, fp, "interrupted frame pointer below the interrupt frame")
			}
			continue
		}
		if next != 0 && next <= fp {
			return frames, errorf(op, ErrBounds, next, "frame pointer does not increase (from %#x)", fp)
		}
		fp = next
	}
	return frames, nil
}

// irqFrame decodes the interrupt frame whose record is at rec.
func (g *Guest) irqFrame(rec, lo, hi uint64) (Frame, []Frame, error) {
	const op = "walk interrupt frame"
	regsAt := rec + uint64(g.abi.IRQRegsOff)
	if rec < lo || regsAt < rec || regsAt+IRQRegsSize > hi {
		return Frame{}, nil, errorf(op, ErrBounds, rec, "interrupt frame outside the stack [%#x, %#x)", lo, hi)
	}
	buf := make([]byte, IRQRegsSize)
	if err := g.mem.ReadVirt(regsAt, buf); err != nil {
		return Frame{}, nil, &Error{Op: op, Kind: ErrMemory, Addr: regsAt, Err: err}
	}
	r := decodeIRQRegs(buf)
	f := Frame{PC: r.RIP, FP: rec, Interrupted: true, Regs: &r}
	// the two words at the interrupted RSP: a caller's return address if
	// the function had not pushed its frame yet
	var extra []Frame
	if r.RSP >= lo && r.RSP <= hi-16 && r.RSP&7 == 0 {
		w := g.word16()
		if err := g.mem.ReadVirt(r.RSP, w); err == nil {
			for i := 0; i < 2; i++ {
				v := binary.LittleEndian.Uint64(w[i*8:])
				if g.isText(v) {
					extra = append(extra, Frame{PC: v, FP: r.RSP + uint64(i*8), Conservative: true})
				}
			}
		}
	}
	return f, extra, nil
}

// CallPC is the address to symbolize a frame by: a return address (any
// frame but the first, an interrupted one or a conservative one) points
// after its call, which may be past the end of a noreturn caller, so it is
// looked up at PC-1, as Linux's %pB does.
func (f Frame) CallPC(i int) uint64 {
	if i == 0 || f.Interrupted || f.Conservative || f.PC == 0 {
		return f.PC
	}
	return f.PC - 1
}

// FrameNames symbolizes frames ("name+0xoff/0xsize"; "? " marks
// conservative ones).
func (g *Guest) FrameNames(frames []Frame) []string {
	out := make([]string, len(frames))
	for i, f := range frames {
		if s, _, ok := g.syms.Addr2Func(f.CallPC(i)); ok {
			out[i] = fmt.Sprintf("%s+%#x/%#x", s.Name, f.PC-s.Addr, s.Size)
		} else {
			out[i] = fmt.Sprintf("%#x", f.PC)
		}
		if f.Conservative {
			out[i] = "? " + out[i]
		}
	}
	return out
}

// FuncNames returns the function of each frame ("" if unknown).
func (g *Guest) FuncNames(frames []Frame) []string {
	out := make([]string, len(frames))
	for i, f := range frames {
		if s, _, ok := g.syms.Addr2Func(f.CallPC(i)); ok {
			out[i] = s.Name
		}
	}
	return out
}

// String renders a task for logs.
func (t Task) String() string {
	st := map[uint32]string{TaskRunning: "R", TaskSleeping: "S"}[t.State]
	return fmt.Sprintf("pid %d %s cpu %d on_cpu %d %s", t.PID, t.Name, t.CPU, t.OnCPU, st)
}
