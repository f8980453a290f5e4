package linuxkernel

import (
	"encoding/binary"
	"fmt"
)

// The host's copy of Linux 6.1's ORC unwinder (arch/x86/kernel/
// unwind_orc.c: unwind_next_frame, __unwind_start; arch/x86/kernel/
// stacktrace.c: arch_stack_walk and arch_stack_walk_reliable), run over
// guest memory. It differs from the kernel's only where the host cannot
// do what the kernel does, and each difference makes the result
// unreliable rather than wrong: an IP without an ORC entry (BPF, ftrace
// trampolines; modules' tables are read, orc_modules.go) stops the
// unwind (the kernel guesses a frame pointer), and a return address
// replaced by the function-graph tracer or a kretprobe
// (return_to_handler, arch_rethook_trampoline) is reported as such (the
// kernel recovers the original from the task). One difference goes the
// other way: init text counts as text, so the boot CPU's idle task is
// unwound to its end where the kernel stops at start_kernel's freed
// frames.
// Every stack read is checked against the stacks the unwind may use,
// each stack is visited once (get_stack_info's visit mask), the stack
// pointer must grow within a stack, and the frame count is bounded, so
// a hostile stack or table ends the walk with an error, never a loop.

// StackKind is enum stack_type (arch/x86/include/asm/stacktrace.h).
type StackKind uint8

// Stack kinds. StackException is ESTACK_DF; the other IST stacks follow
// (NMI, #DB, #MC, #VC, #VC2).
const (
	StackUnknown StackKind = iota
	StackTask
	StackIRQ
	StackSoftIRQ
	StackEntry
	StackException
	stackKinds = StackException + nExceptionStacks
)

// nExceptionStacks is N_EXCEPTION_STACKS (asm/cpu_entry_area.h).
const nExceptionStacks = 6

var stackKindNames = [stackKinds]string{"unknown", "task", "IRQ", "softirq", "entry", "#DF", "NMI", "#DB", "#MC", "#VC", "#VC2"}

func (k StackKind) String() string {
	if k < stackKinds {
		return stackKindNames[k]
	}
	return fmt.Sprintf("stack(%d)", uint8(k))
}

// StackRange is one stack an unwind may use: [Start, End).
type StackRange struct {
	Kind  StackKind `json:"kind"`
	Start uint64    `json:"start"`
	End   uint64    `json:"end"`
}

// maxStackBytes bounds one stack (x86-64's largest is a 32 KiB KASAN
// task stack).
const maxStackBytes = 1 << 20

// PtRegs is struct pt_regs of x86-64 (arch/x86/include/asm/ptrace.h),
// field for field: the registers the entry code saves on the stack, and
// the register set of a running vCPU.
type PtRegs struct {
	R15, R14, R13, R12, BP, BX           uint64
	R11, R10, R9, R8, AX, CX, DX, SI, DI uint64
	OrigAX                               uint64
	IP, CS, Flags, SP, SS                uint64 // the iret frame
}

// Offsets in struct pt_regs (checked against the guest's BTF).
const (
	ptRegsBP        = 4 * 8
	ptRegsR10       = 7 * 8
	ptRegsR13       = 2 * 8
	ptRegsDX        = 12 * 8
	ptRegsDI        = 14 * 8
	ptRegsSize      = 21 * 8
	iretFrameOffset = 16 * 8                       // IRET_FRAME_OFFSET, offsetof(ip)
	iretFrameSize   = ptRegsSize - iretFrameOffset // IRET_FRAME_SIZE
)

func decodePtRegs(b []byte) PtRegs {
	var w [21]uint64
	for i := range w {
		w[i] = binary.LittleEndian.Uint64(b[8*i:])
	}
	return PtRegs{w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7], w[8], w[9], w[10], w[11], w[12], w[13], w[14], w[15], w[16], w[17], w[18], w[19], w[20]}
}

// decodeIretRegs fills the iret frame (ip, cs, flags, sp, ss) only: what
// an UNWIND_HINT_REGS_PARTIAL frame has.
func decodeIretRegs(b []byte) PtRegs {
	u := func(i int) uint64 { return binary.LittleEndian.Uint64(b[8*i:]) }
	return PtRegs{IP: u(0), CS: u(1), Flags: u(2), SP: u(3), SS: u(4)}
}

// reg is the register at pt_regs offset off, for the ORC bases.
func (r *PtRegs) reg(off int) uint64 {
	switch off {
	case ptRegsBP:
		return r.BP
	case ptRegsR10:
		return r.R10
	case ptRegsR13:
		return r.R13
	case ptRegsDX:
		return r.DX
	case ptRegsDI:
		return r.DI
	}
	return 0 // not reached: callers pass the constants above
}

// UserMode is user_mode(regs): CS's RPL is 3.
func (r *PtRegs) UserMode() bool { return r.CS&3 == 3 }

// StopReason says how an unwind ended.
type StopReason uint8

// Stop reasons. StopUserRegs and StopEnd are the two successful ends
// (arch_stack_walk_reliable returns 0 for them).
const (
	StopError    StopReason = iota // the unwind failed: see Stack.Err
	StopUserRegs                   // reached the pt_regs of an entry from user mode
	StopEnd                        // an ORC end-of-stack entry: the bottom of a kernel thread's or idle task's stack
	StopUserMode                   // the vCPU runs in user mode: nothing on its kernel stack
)

func (s StopReason) String() string {
	switch s {
	case StopUserRegs:
		return "user pt_regs"
	case StopEnd:
		return "end of stack"
	case StopUserMode:
		return "user mode"
	}
	return "error"
}

// Frame is one address found on a stack.
type Frame struct {
	// Addr is a return address (for the first frame of a running vCPU,
	// its RIP; for a scan, a word that is a kernel text address).
	Addr uint64 `json:"addr"`
	// SP is the stack pointer just above the return address (the
	// caller's SP); for a scan, where the word was found.
	SP uint64 `json:"sp"`
	// Interrupted: Addr is the instruction a vCPU or an entry's pt_regs
	// was stopped at (to be executed next), not a return address.
	Interrupted bool `json:"interrupted,omitempty"`
	// Func and Offset name the code: the symbol containing Addr-1 for a
	// return address (as %pB prints it), Addr for an interrupted one.
	Func   string `json:"func,omitempty"`
	Offset uint64 `json:"offset"`
}

// String prints the frame as /proc/<pid>/stack does (without the size).
func (f Frame) String() string {
	if f.Func == "" {
		return fmt.Sprintf("%#x", f.Addr)
	}
	return fmt.Sprintf("%s+%#x", f.Func, f.Offset)
}

// Stack is the result of unwinding one stack.
type Stack struct {
	// Frames are the return addresses the ORC unwind found, innermost
	// first, as arch_stack_walk lists them (/proc/<pid>/stack).
	Frames []Frame `json:"frames"`
	// Reliable: the ORC unwind reached user pt_regs or an end-of-stack
	// entry with no error and every address was kernel text (the test of
	// arch_stack_walk_reliable, which Linux's livepatch trusts). Frames
	// are then exactly the functions the stack can return into.
	Reliable bool       `json:"reliable"`
	Stop     StopReason `json:"stop"`
	// Why says how the unwind ended, or what went wrong.
	Why string `json:"why"`
	// Err is the failure when !Reliable (an *Error).
	Err error `json:"-"`
	// Scan, when !Reliable, is the conservative answer (Ksplice's): every
	// 8-byte aligned word of the stacks, from the stack pointer up on the
	// stack it started on and whole on the vCPU's other stacks, that is a
	// kernel text address. Any function the stack might return into is
	// among them (the kernel is built -mno-red-zone: nothing live lies
	// below the stack pointer).
	Scan []Frame `json:"scan,omitempty"`
}

// VirtReader reads guest-virtual memory; *AddressSpace is one.
type VirtReader interface {
	Read(va uint64, b []byte) error
}

// TaskFrameLayout is struct inactive_task_frame (asm/switch_to.h):
// x86-64's r15, r14, r13, r12, bx, bp, ret_addr, which __switch_to_asm
// pushes and whose address it saves in task->thread.sp.
type TaskFrameLayout struct {
	Size, BP, RetAddr uint64
}

var defaultTaskFrame = TaskFrameLayout{Size: 56, BP: 40, RetAddr: 48}

// UnwindStart is where an unwind begins.
type UnwindStart struct {
	// TaskFrame, when not 0, is a sleeping task's thread.sp: the
	// inactive_task_frame whose ret_addr is the first IP and whose bp is
	// the first BP; the stack pointer is just above it.
	TaskFrame uint64
	// Regs, when not nil, is a running vCPU's register set, unwound as
	// unwind_start(regs) does: its RIP is the first frame.
	Regs *PtRegs
	// IP, SP, BP, Signal start an unwind from anything else (Signal: IP
	// is not a return address, look it up as is).
	IP, SP, BP uint64
	Signal     bool
	// Stacks are the stacks the unwind may use: a sleeping task's own;
	// for a running vCPU, its task's and the CPU's IRQ, exception and
	// entry stacks. Each is visited at most once.
	Stacks []StackRange
}

// Unwinder unwinds guest kernel stacks with the guest's ORC table. It
// reuses its buffers: one Unwinder serves one goroutine.
type Unwinder struct {
	ORC     *ORC
	Mem     VirtReader
	Symbols *Symbols // names frames (optional)
	// Text is the kernel text a return address may point into (besides
	// Modules'): NewUnwinder sets [_stext, _etext) and the init text
	// (see docs/linux-guests.md on why init text counts).
	Text []AddrRange
	// RetFromFork is ret_from_fork: a new task's first IP, looked up as
	// is (state->signal).
	RetFromFork uint64
	// Replaced are return_to_handler and arch_rethook_trampoline: a
	// return address the function-graph tracer or a kretprobe swapped
	// for its trampoline (the original is kept off the stack).
	Replaced []uint64
	// Modules are the loaded modules' text and ORC tables
	// (RefreshModules); their text counts as kernel text.
	Modules []ModuleORC
	// ModulesErr is why the module list could not be read (then a
	// return address in a module stops the unwind: unreliable).
	ModulesErr error
	TaskFrame  TaskFrameLayout
	// MaxFrames bounds an unwind (default 256; /proc/<pid>/stack shows
	// 64).
	MaxFrames int

	k       *Kernel // per-CPU stacks; nil outside a Kernel
	percpu  percpuStacks
	stacks  [2 + stackKinds]stackBuf
	nstacks int
	scratch [ptRegsSize]byte
	pte     [8]byte // page-table entries, when Mem is an *AddressSpace
	one     [1]StackRange
}

type stackBuf struct {
	r    StackRange
	data []byte // r's bytes; those from lo up are read
	lo   uint64 // r.End: nothing read yet
}

// unwindState is struct unwind_state's ORC part.
type unwindState struct {
	ip, sp, bp       uint64
	signal, fullRegs bool
	regs, prevRegs   PtRegs
	hasRegs, hasPrev bool
	cur              int // index of stack_info in u.stacks, -1: STACK_TYPE_UNKNOWN
	visited          uint32
	done             bool
	stop             StopReason
}

func (u *Unwinder) setStacks(rs []StackRange) error {
	if len(rs) > len(u.stacks) {
		return errf("unwind", ErrLimit, "%d stacks (max %d)", len(rs), len(u.stacks))
	}
	u.nstacks = len(rs)
	for i, r := range rs {
		if r.End <= r.Start || r.End-r.Start > maxStackBytes || r.Start%8 != 0 || r.Kind == StackUnknown || r.Kind >= stackKinds {
			return errf("unwind", ErrInvalid, "%s stack [%#x, %#x)", r.Kind, r.Start, r.End)
		}
		b := &u.stacks[i]
		b.r, b.lo = r, r.End
	}
	return nil
}

// load makes stack i's bytes from addr (rounded down to its page) to the
// stack's end readable: an unwind goes up a stack from its stack
// pointer, so what lies below is not read. A sleeping task's frames are
// in the top page or two of its 16 KiB stack; reading stacks whole was
// most of the check's copying, which costs the most where the host is
// itself emulated (the nested tier). A read below what is loaded loads
// the pages in between. A few page walks per stack, not one per word.
func (u *Unwinder) load(i int, addr uint64) error {
	b := &u.stacks[i]
	from := max(addr&^(pageSize-1), b.r.Start)
	if from >= b.lo {
		return nil
	}
	if n := int(b.r.End - b.r.Start); cap(b.data) < n {
		b.data = make([]byte, n)
	} else {
		b.data = b.data[:n]
	}
	dst := b.data[from-b.r.Start : b.lo-b.r.Start]
	var err error
	if as, ok := u.Mem.(*AddressSpace); ok {
		err = as.read(from, dst, u.pte[:])
	} else {
		err = u.Mem.Read(from, dst)
	}
	if err != nil {
		return wrap("unwind", ErrBounds, err, "%s stack [%#x, %#x)", b.r.Kind, from, b.lo)
	}
	b.lo = from
	return nil
}

func (u *Unwinder) kind(i int) StackKind {
	if i < 0 {
		return StackUnknown
	}
	return u.stacks[i].r.Kind
}

// onStack is on_stack(info, addr, n).
func (u *Unwinder) onStack(i int, addr, n uint64) bool {
	if i < 0 {
		return false
	}
	r := u.stacks[i].r
	return addr >= r.Start && addr < r.End && n <= r.End-addr
}

// getStackInfo is get_stack_info with the visit mask: which of the
// unwind's stacks holds addr, each kind entered once.
func (u *Unwinder) getStackInfo(st *unwindState, addr uint64) bool {
	for i := 0; i < u.nstacks; i++ {
		r := u.stacks[i].r
		if addr < r.Start || addr >= r.End {
			continue
		}
		bit := uint32(1) << r.Kind
		if st.visited&bit != 0 {
			break
		}
		st.visited |= bit
		st.cur = i
		return true
	}
	st.cur = -1
	return false
}

// accessOK is stack_access_ok: [addr, addr+n) on the current stack, or
// on another stack not visited yet (which becomes current).
func (u *Unwinder) accessOK(st *unwindState, addr, n uint64) bool {
	if u.onStack(st.cur, addr, n) {
		return true
	}
	return u.getStackInfo(st, addr) && u.onStack(st.cur, addr, n)
}

// read copies [addr, addr+len(b)) from the current stack, which
// accessOK has just checked holds it.
func (u *Unwinder) read(st *unwindState, addr uint64, b []byte) error {
	if !u.onStack(st.cur, addr, uint64(len(b))) {
		return errf("unwind", ErrBounds, "[%#x, +%d) is not on the %s stack", addr, len(b), u.kind(st.cur))
	}
	if err := u.load(st.cur, addr); err != nil {
		return err
	}
	s := &u.stacks[st.cur]
	copy(b, s.data[addr-s.r.Start:])
	return nil
}

// deref is deref_stack_reg.
func (u *Unwinder) deref(st *unwindState, addr uint64, what string) (uint64, error) {
	if !u.accessOK(st, addr, 8) {
		return 0, errf("unwind", ErrBounds, "%s at %#x is on none of the stacks (ip %#x)", what, addr, st.ip)
	}
	var b [8]byte
	if err := u.read(st, addr, b[:]); err != nil {
		return 0, err
	}
	return le64(b[:]), nil
}

// getReg is get_reg: a register from the last full pt_regs.
func (st *unwindState) getReg(off int) (uint64, bool) {
	if !st.hasRegs {
		return 0, false
	}
	if st.fullRegs {
		return st.regs.reg(off), true
	}
	if st.hasPrev {
		return st.prevRegs.reg(off), true
	}
	return 0, false
}

// nullORC is null_orc_entry: IP 0 (a call through a NULL pointer).
var nullORC = ORCEntry{SPOffset: 8, SPReg: ORCRegSP, BPReg: ORCRegUndefined, Type: ORCTypeCall}

var orcRegNames = [...]string{"undefined", "prev_sp", "dx", "di", "bp", "sp", "r10", "r13", "bp(ind)", "sp(ind)"}

// next is unwind_next_frame. A nil error with st.done set is the_end.
func (u *Unwinder) next(st *unwindState) error {
	if st.done {
		return nil
	}
	if st.hasRegs && st.regs.UserMode() {
		st.done, st.stop = true, StopUserRegs
		return nil
	}
	prevSP, prevKind, origIP := st.sp, u.kind(st.cur), st.ip
	lookup := st.ip - 1
	if st.signal {
		lookup = st.ip
	}
	var orc ORCEntry
	if lookup == 0 {
		orc = nullORC
	} else if e, ok := u.find(lookup); ok {
		orc = e
	} else {
		return errf("unwind", ErrNotFound, "no ORC entry for %s (BPF or trampoline code, or a module not read?)", u.name(st.ip, !st.signal))
	}
	if orc.SPReg == ORCRegUndefined {
		if !orc.End {
			return errf("unwind", ErrFormat, "ORC entry of %s has no stack pointer and is not an end of stack", u.name(origIP, !st.signal))
		}
		st.done, st.stop = true, StopEnd
		return nil
	}
	off := uint64(int64(orc.SPOffset))
	var sp uint64
	indirect := false
	switch orc.SPReg {
	case ORCRegSP:
		sp = st.sp + off
	case ORCRegBP:
		sp = st.bp + off
	case ORCRegSPIndirect:
		sp, indirect = st.sp, true
	case ORCRegBPIndirect:
		sp, indirect = st.bp+off, true
	case ORCRegR10, ORCRegR13, ORCRegDI, ORCRegDX:
		regOff := ptRegsR10
		switch orc.SPReg {
		case ORCRegR13:
			regOff = ptRegsR13
		case ORCRegDI:
			regOff = ptRegsDI
		case ORCRegDX:
			regOff = ptRegsDX
		}
		v, ok := st.getReg(regOff)
		if !ok {
			return errf("unwind", ErrFormat, "missing %s value at %s (no full pt_regs)", orcRegNames[orc.SPReg], u.name(origIP, !st.signal))
		}
		sp = v
	default:
		return errf("unwind", ErrFormat, "unknown SP base register %d at %s", orc.SPReg, u.name(origIP, !st.signal))
	}
	if indirect {
		v, err := u.deref(st, sp, "indirect stack pointer")
		if err != nil {
			return err
		}
		sp = v
		if orc.SPReg == ORCRegSPIndirect {
			sp += off
		}
	}
	switch orc.Type {
	case ORCTypeCall:
		ip, err := u.deref(st, sp-8, "return address")
		if err != nil {
			return err
		}
		st.ip, st.sp = ip, sp
		st.hasRegs, st.hasPrev, st.signal = false, false, false
	case ORCTypeRegs:
		if !u.accessOK(st, sp, ptRegsSize) {
			return errf("unwind", ErrBounds, "pt_regs at %#x (for %s) is on none of the stacks", sp, u.name(origIP, !st.signal))
		}
		if err := u.read(st, sp, u.scratch[:ptRegsSize]); err != nil {
			return err
		}
		st.regs = decodePtRegs(u.scratch[:])
		st.ip, st.sp = st.regs.IP, st.regs.SP
		st.hasRegs, st.hasPrev, st.fullRegs, st.signal = true, false, true, true
	case ORCTypeRegsPartial:
		if !u.accessOK(st, sp, iretFrameSize) {
			return errf("unwind", ErrBounds, "iret frame at %#x (for %s) is on none of the stacks", sp, u.name(origIP, !st.signal))
		}
		if err := u.read(st, sp, u.scratch[:iretFrameSize]); err != nil {
			return err
		}
		if st.fullRegs {
			st.prevRegs, st.hasPrev = st.regs, st.hasRegs
		}
		st.regs = decodeIretRegs(u.scratch[:])
		st.ip, st.sp = st.regs.IP, st.regs.SP
		st.hasRegs, st.fullRegs, st.signal = true, false, true
	default:
		return errf("unwind", ErrFormat, "unknown ORC entry type %d at %s", orc.Type, u.name(origIP, true))
	}
	bpOff := uint64(int64(orc.BPOffset))
	switch orc.BPReg {
	case ORCRegUndefined:
		if v, ok := st.getReg(ptRegsBP); ok {
			st.bp = v
		}
	case ORCRegPrevSP:
		v, err := u.deref(st, sp+bpOff, "saved frame pointer")
		if err != nil {
			return err
		}
		st.bp = v
	case ORCRegBP:
		v, err := u.deref(st, st.bp+bpOff, "saved frame pointer")
		if err != nil {
			return err
		}
		st.bp = v
	default:
		return errf("unwind", ErrFormat, "unknown BP base register %d at %s", orc.BPReg, u.name(origIP, true))
	}
	// Prevent a recursive loop due to bad ORC data.
	if u.kind(st.cur) == prevKind && u.onStack(st.cur, st.sp, 8) && st.sp <= prevSP {
		return errf("unwind", ErrFormat, "stack going in the wrong direction at %s: sp %#x after %#x", u.name(origIP, true), st.sp, prevSP)
	}
	return nil
}

// name formats an address for an error: symbol+offset when known.
// ret: a return address (named by the instruction before it).
func (u *Unwinder) name(addr uint64, ret bool) string {
	f := u.symbolize(Frame{Addr: addr}, ret)
	if f.Func == "" {
		return fmt.Sprintf("%#x", addr)
	}
	return fmt.Sprintf("%#x (%s)", addr, f)
}

func (u *Unwinder) symbolize(f Frame, ret bool) Frame {
	a := f.Addr
	if ret && a > 0 {
		a--
	}
	if m := u.moduleOf(a); m != nil {
		// Module symbols live in the module's own kallsyms, not read:
		// named by the module and the offset in its text.
		base := m.Text.Start
		if !m.Text.Contains(a) {
			base = m.Init.Start
		}
		f.Func, f.Offset = m.label, f.Addr-base
		if f.Func == "" {
			f.Func = "[" + m.Name + "]"
		}
		return f
	}
	if u.Symbols == nil {
		return f
	}
	if s, _, ok := u.Symbols.At(a); ok {
		f.Func, f.Offset = s.Name, f.Addr-s.Addr
	}
	return f
}

func (u *Unwinder) isText(a uint64) bool {
	for _, r := range u.Text {
		if r.Contains(a) {
			return true
		}
	}
	return u.moduleOf(a) != nil
}

func (u *Unwinder) maxFrames() int {
	if u.MaxFrames > 0 {
		return u.MaxFrames
	}
	return 256
}

// Unwind unwinds one stack into out, reusing out's slices. It never
// fails: a failure is out.Err with out.Reliable false and the
// conservative out.Scan.
func (u *Unwinder) Unwind(start UnwindStart, out *Stack) {
	out.Frames, out.Scan = out.Frames[:0], out.Scan[:0]
	out.Reliable, out.Stop, out.Why, out.Err = false, StopError, "", nil
	err := u.unwind(start, out)
	if err == nil {
		out.Reliable = true
		out.Why = out.Stop.String()
	} else {
		out.Err, out.Stop = err, StopError
		out.Why = err.Error()
		if serr := u.scan(start, out); serr != nil {
			out.Why += "; conservative scan incomplete: " + serr.Error()
		}
	}
	for i := range out.Frames {
		out.Frames[i] = u.symbolize(out.Frames[i], !out.Frames[i].Interrupted)
	}
	for i := range out.Scan {
		out.Scan[i] = u.symbolize(out.Scan[i], !out.Scan[i].Interrupted)
	}
}

func (u *Unwinder) unwind(start UnwindStart, out *Stack) error {
	if u.ORC == nil || u.Mem == nil {
		return errf("unwind", ErrInvalid, "no ORC table or memory")
	}
	if err := u.setStacks(start.Stacks); err != nil {
		return err
	}
	st := unwindState{cur: -1}
	switch {
	case start.Regs != nil:
		r := start.Regs
		if r.UserMode() {
			out.Stop = StopUserMode
			return nil
		}
		st.ip, st.sp, st.bp = r.IP, r.SP, r.BP
		st.regs, st.hasRegs, st.fullRegs, st.signal = *r, true, true, true
	case start.TaskFrame != 0:
		f := u.TaskFrame
		if f.Size == 0 {
			f = defaultTaskFrame
		}
		if !u.getStackInfo(&st, start.TaskFrame) || !u.onStack(st.cur, start.TaskFrame, f.Size) {
			return errf("unwind", ErrBounds, "saved thread.sp %#x: its inactive_task_frame is not on the task's stack", start.TaskFrame)
		}
		var b [8]byte
		if err := u.read(&st, start.TaskFrame+f.BP, b[:]); err != nil {
			return err
		}
		st.bp = le64(b[:])
		if err := u.read(&st, start.TaskFrame+f.RetAddr, b[:]); err != nil {
			return err
		}
		st.ip, st.sp = le64(b[:]), start.TaskFrame+f.Size
		st.signal = st.ip == u.RetFromFork && u.RetFromFork != 0
		st.visited, st.cur = 0, -1 // get_stack_info(state->sp) below enters it
	default:
		st.ip, st.sp, st.bp, st.signal = start.IP, start.SP, start.BP, start.Signal
	}
	if !u.getStackInfo(&st, st.sp) {
		return errf("unwind", ErrBounds, "stack pointer %#x is on none of the %d stacks", st.sp, u.nstacks)
	}
	max := u.maxFrames()
	if start.Regs != nil {
		// arch_stack_walk reports regs->ip, then __unwind_start skips
		// the regs frame.
		out.Frames = append(out.Frames, Frame{Addr: st.ip, SP: st.sp, Interrupted: true})
		if !u.isText(st.ip) {
			return errf("unwind", ErrFormat, "vCPU RIP %#x is not kernel text", st.ip)
		}
		if err := u.next(&st); err != nil {
			return err
		}
	}
	for !st.done {
		if st.hasRegs && st.regs.UserMode() {
			st.done, st.stop = true, StopUserRegs
			break
		}
		if len(out.Frames) >= max {
			return errf("unwind", ErrLimit, "more than %d frames", max)
		}
		if !u.isText(st.ip) {
			return errf("unwind", ErrFormat, "return address %#x at sp %#x is not kernel text", st.ip, st.sp)
		}
		for _, r := range u.Replaced {
			if st.ip == r {
				return errf("unwind", ErrUnsupported, "return address %s was replaced by a tracer's trampoline (the original is kept off the stack)", u.name(st.ip, false))
			}
		}
		out.Frames = append(out.Frames, Frame{Addr: st.ip, SP: st.sp, Interrupted: st.signal})
		if err := u.next(&st); err != nil {
			return err
		}
	}
	out.Stop = st.stop
	return nil
}

// scan is the conservative fallback: every aligned text address on the
// unwind's stacks, from the starting stack pointer up on its stack.
func (u *Unwinder) scan(start UnwindStart, out *Stack) error {
	if u.nstacks != len(start.Stacks) {
		if err := u.setStacks(start.Stacks); err != nil {
			return err
		}
	}
	sp := start.SP
	switch {
	case start.Regs != nil:
		sp = start.Regs.SP
		out.Scan = append(out.Scan, Frame{Addr: start.Regs.IP, SP: sp, Interrupted: true})
	case start.TaskFrame != 0:
		sp = start.TaskFrame
	}
	var firstErr error
	for i := 0; i < u.nstacks; i++ {
		s := &u.stacks[i]
		from := s.r.Start
		if sp >= s.r.Start && sp < s.r.End {
			from = sp &^ 7
		}
		if err := u.load(i, from); err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		for a := from; a+8 <= s.r.End; a += 8 {
			if w := le64(s.data[a-s.r.Start:]); u.isText(w) {
				out.Scan = append(out.Scan, Frame{Addr: w, SP: a})
			}
		}
	}
	return firstErr
}

// Hit is the first address on the stack inside one of funcs: from
// Frames when the unwind is reliable, else from the conservative Scan.
// Addresses are compared as Linux's klp_check_stack_func compares them
// (func_addr <= address < func_addr + func_size, the raw return
// address). ok is false when none is.
func (s *Stack) Hit(funcs []AddrRange) (f Frame, ok bool) {
	list := s.Frames
	if !s.Reliable {
		list = s.Scan
	}
	for _, f := range list {
		for _, r := range funcs {
			if r.Contains(f.Addr) {
				return f, true
			}
		}
	}
	return Frame{}, false
}
