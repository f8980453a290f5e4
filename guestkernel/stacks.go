package guestkernel

import (
	"encoding/binary"
	"errors"
	"strconv"
)

// CPURegs returns the registers of a paused vCPU that the walks need.
type CPURegs func(cpu int) (rip, rsp, rbp uint64, err error)

// TaskStack is one task's stack as the host sees it.
type TaskStack struct {
	Task   Task
	Live   bool    // walked from the vCPU's registers (the task was running)
	Frames []Frame // innermost first
}

// AllStacks walks every live task of a paused guest: switched-out tasks
// from their saved registers, running ones from their vCPU's registers
// (regs). It fails with ErrBusy when a CPU is in the middle of a context
// switch (retry after resuming briefly), and with the walk's error for a
// chain that does not end cleanly: the caller must then treat the guest
// as unsafe to patch, not as idle.
func (g *Guest) AllStacks(regs CPURegs, maxDepth int) ([]TaskStack, error) {
	const op = "walk all stacks"
	tasks, err := g.Tasks()
	if err != nil {
		return nil, err
	}
	cur, err := g.CPUCurrent()
	if err != nil {
		return nil, err
	}
	// every CPU's current task must be a live task marked as running there
	running := map[uint64]int{}
	for cpu, addr := range cur {
		running[addr] = cpu
	}
	out := make([]TaskStack, 0, len(tasks))
	seen := map[int]bool{}
	// Every task is checked for a switch in progress before any stack is
	// walked: schedule() makes next the CPU's current task a few
	// instructions before klp_switch_to moves RSP/RBP, and a CPU paused
	// there runs on prev's stack while next is current. prev (still
	// marked on that CPU) shows it; found only after walking next with
	// next's stack bounds, it would come too late, as a frame pointer
	// outside the stack instead of ErrBusy.
	for _, t := range tasks {
		cpu, isCur := running[t.Addr]
		switch {
		case t.OnCPU >= 0 && (!isCur || cpu != int(t.OnCPU)):
			return nil, errorf(op, ErrBusy, t.Addr, "task %d (%s) on CPU %d is not that CPU's current task: switch in progress", t.PID, t.Name, t.OnCPU)
		case t.OnCPU < 0 && isCur:
			return nil, errorf(op, ErrBusy, t.Addr, "task %d (%s) is CPU %d's current task but switched out: switch in progress", t.PID, t.Name, cpu)
		}
	}
	for _, t := range tasks {
		if t.OnCPU < 0 {
			frames, err := g.WalkTask(t, maxDepth)
			if err != nil {
				return nil, err
			}
			out = append(out, TaskStack{Task: t, Frames: frames})
			continue
		}
		rip, _, rbp, err := regs(int(t.OnCPU))
		if err != nil {
			return nil, &Error{Op: op, Kind: ErrMemory, Detail: "registers of CPU " + strconv.Itoa(int(t.OnCPU)), Err: err}
		}
		if g.InSwitch(rip) {
			return nil, errorf(op, ErrBusy, rip, "CPU %d is inside klp_switch_to", t.OnCPU)
		}
		lo, hi, err := stackBounds(t)
		if err != nil {
			return nil, err
		}
		frames, err := g.WalkFrom(rip, rbp, lo, hi, maxDepth)
		if err != nil {
			return nil, err
		}
		seen[int(t.OnCPU)] = true
		out = append(out, TaskStack{Task: t, Live: true, Frames: frames})
	}
	for cpu := range cur {
		if !seen[cpu] {
			return nil, errorf(op, ErrBusy, cur[cpu], "CPU %d's current task is not a live task", cpu)
		}
	}
	return out, nil
}

// ScanStack is the conservative alternative to a frame walk (Ksplice
// style, for code without frame pointers): every 8-byte word from sp up to
// the top of the task's stack that points into a known function, as
// Conservative frames. sp is the saved RSP of a switched-out task or the
// RSP of the vCPU running it.
func (g *Guest) ScanStack(t Task, sp uint64) ([]Frame, error) {
	const op = "scan stack"
	lo, hi, err := stackBounds(t)
	if err != nil {
		return nil, err
	}
	if sp < lo || sp >= hi {
		return nil, errorf(op, ErrBounds, sp, "stack pointer outside the stack [%#x, %#x)", lo, hi)
	}
	sp &^= 7
	buf := make([]byte, hi-sp)
	if err := g.mem.ReadVirt(sp, buf); err != nil {
		return nil, &Error{Op: op, Kind: ErrMemory, Addr: sp, Err: err}
	}
	var out []Frame
	for off := 0; off+8 <= len(buf); off += 8 {
		v := binary.LittleEndian.Uint64(buf[off:])
		if _, _, ok := g.syms.Addr2Func(v); ok {
			out = append(out, Frame{PC: v, FP: sp + uint64(off), Conservative: true})
		}
	}
	return out, nil
}

// IsBusy reports whether err says "retry later" (a CPU mid-switch).
func IsBusy(err error) bool { return errors.Is(err, ErrBusy) }
