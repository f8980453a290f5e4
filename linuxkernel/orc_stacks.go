package linuxkernel

import "github.com/cilium/ebpf/btf"

// Where unwinds start in a live guest: a sleeping task's saved frame,
// or a running vCPU's registers over its task's stack and the CPU's
// IRQ, exception (IST) and entry stacks, found through per-CPU
// variables as dumpstack_64.c's get_stack_info finds them.

// percpuStacks are the per-CPU variables and layouts that locate a
// CPU's other stacks; a zero symbol address: the kernel has none.
type percpuStacks struct {
	perCPUOffset uint64 // __per_cpu_offset
	nrCPUs       uint32
	// hardirq_stack_ptr: the top-most word of the IRQ stack (its end -
	// 8), which holds the interrupted stack's pointer.
	hardirqStackPtr uint64
	irqStackSize    uint64 // IRQ_STACK_SIZE = THREAD_SIZE on x86-64
	// cea_exception_stacks: the IST stacks in the cpu_entry_area, each
	// behind a guard page; offsets and sizes of DF_stack .. VC2_stack.
	ceaExceptionStacks uint64
	estack             [nExceptionStacks]AddrRange
	// cpu_entry_area: entry_stack_page, one page.
	cpuEntryArea   uint64
	entryStackOff  uint64
	entryStackSize uint64
}

// NewUnwinder reads the guest's ORC tables and what an unwind needs
// besides them (text range, ret_from_fork, per-CPU stack variables, the
// layouts of inactive_task_frame and pt_regs from BTF when the kernel
// has it).
func (k *Kernel) NewUnwinder() (*Unwinder, error) {
	orc, err := k.ReadORC()
	if err != nil {
		return nil, err
	}
	u := &Unwinder{ORC: orc, Mem: k.AS, Symbols: k.Symbols, k: k, TaskFrame: defaultTaskFrame}
	// The text a return address may point into: the kernel's, and its
	// init text. Linux's __kernel_text_address stops accepting init text
	// once it is freed, which ends its unwind of the boot CPU's idle task
	// at start_kernel's frames (unreliable); the ORC table still covers
	// them and nothing can be patched there, so the host continues to
	// the end of that stack instead.
	u.Text = orc.Covered // [_stext, _etext), [_sinittext, _einittext)
	if a, err := k.Symbols.Addr("ret_from_fork"); err == nil {
		u.RetFromFork = a
	}
	for _, name := range []string{"return_to_handler", "arch_rethook_trampoline"} {
		if a, err := k.Symbols.Addr(name); err == nil {
			u.Replaced = append(u.Replaced, a)
		}
	}
	if k.BTF != nil {
		if err := u.btfLayouts(k); err != nil {
			return nil, err
		}
	}
	u.ModulesErr = u.RefreshModules()
	u.initPerCPU(k)
	return u, nil
}

// initPerCPU finds the per-CPU variables and layouts that locate each
// CPU's IRQ, exception and entry stacks.
func (u *Unwinder) initPerCPU(k *Kernel) {
	p := &u.percpu
	p.irqStackSize = k.ThreadSize
	p.entryStackOff, p.entryStackSize = pageSize, pageSize // after the GDT page
	// EXCEPTION_STKSZ is THREAD_SIZE/2; each stack follows a guard page.
	es := k.ThreadSize / 2
	for i := range p.estack {
		start := pageSize + uint64(i)*(pageSize+es)
		p.estack[i] = AddrRange{start, start + es}
	}
	if k.BTF != nil {
		names := [nExceptionStacks]string{"DF_stack", "NMI_stack", "DB_stack", "MCE_stack", "VC_stack", "VC2_stack"}
		for i, n := range names {
			o, err1 := memberOffset(k.BTF, "cea_exception_stacks", n)
			s, err2 := memberSize(k.BTF, "cea_exception_stacks", n)
			if err1 == nil && err2 == nil && s <= maxStackBytes {
				p.estack[i] = AddrRange{o, o + s}
			}
		}
		if o, err := memberOffset(k.BTF, "cpu_entry_area", "entry_stack_page"); err == nil {
			p.entryStackOff = o
		}
	}
	p.perCPUOffset, _ = k.Symbols.Addr("__per_cpu_offset")
	p.hardirqStackPtr, _ = k.Symbols.Addr("hardirq_stack_ptr")
	p.ceaExceptionStacks, _ = k.Symbols.Addr("cea_exception_stacks")
	p.cpuEntryArea, _ = k.Symbols.Addr("cpu_entry_area")
	if a, err := k.Symbols.Addr("nr_cpu_ids"); err == nil {
		if n, err := k.AS.U32(a); err == nil && n <= maxCPUs {
			p.nrCPUs = n
		}
	}
}

// btfLayouts takes inactive_task_frame from the kernel's BTF and checks
// that its pt_regs is the one this package mirrors.
func (u *Unwinder) btfLayouts(k *Kernel) error {
	if size, err := btfStructSize(k, "inactive_task_frame"); err == nil {
		bp, err1 := memberOffset(k.BTF, "inactive_task_frame", "bp")
		ret, err2 := memberOffset(k.BTF, "inactive_task_frame", "ret_addr")
		if err1 != nil || err2 != nil || size > 256 || bp+8 > size || ret+8 > size {
			return errf("unwind", ErrFormat, "BTF struct inactive_task_frame: size %d, bp at %d, ret_addr at %d", size, bp, ret)
		}
		u.TaskFrame = TaskFrameLayout{Size: size, BP: bp, RetAddr: ret}
	}
	if size, err := btfStructSize(k, "pt_regs"); err == nil {
		for _, m := range []struct {
			name string
			off  uint64
		}{{"bp", ptRegsBP}, {"r10", ptRegsR10}, {"r13", ptRegsR13}, {"dx", ptRegsDX}, {"di", ptRegsDI}, {"ip", iretFrameOffset}, {"ss", ptRegsSize - 8}} {
			if o, err := memberOffset(k.BTF, "pt_regs", m.name); err != nil || o != m.off {
				return errf("unwind", ErrUnsupported, "BTF struct pt_regs: %s at %d, this package reads it at %d", m.name, o, m.off)
			}
		}
		if size != ptRegsSize {
			return errf("unwind", ErrUnsupported, "BTF struct pt_regs is %d bytes, not x86-64's %d", size, ptRegsSize)
		}
	}
	return nil
}

func btfStructSize(k *Kernel, name string) (uint64, error) {
	var s *btf.Struct
	if err := k.BTF.TypeByName(name, &s); err != nil {
		return 0, wrap("btf", ErrNotFound, err, "struct %s", name)
	}
	return uint64(s.Size), nil
}

// UnwindTask unwinds a task that is not running: from the
// inactive_task_frame at its saved thread.sp, on its own stack only (a
// task that is not current has no other, get_stack_info).
func (u *Unwinder) UnwindTask(t Task, out *Stack) {
	u.one[0] = StackRange{Kind: StackTask, Start: t.StackBase, End: t.StackTop}
	u.Unwind(UnwindStart{TaskFrame: t.SavedSP, Stacks: u.one[:]}, out)
}

// CPUStacks are the stacks a vCPU may be on while it runs task t: t's
// stack, then the CPU's IRQ stack, its IST exception stacks and its
// entry stack (those the kernel has; each from the per-CPU variables of
// t.RunningOn).
func (u *Unwinder) CPUStacks(t Task, buf []StackRange) ([]StackRange, error) {
	out := append(buf[:0], StackRange{Kind: StackTask, Start: t.StackBase, End: t.StackTop})
	p, k := &u.percpu, u.k
	if k == nil || p.perCPUOffset == 0 {
		return out, nil
	}
	cpu := t.RunningOn
	if cpu < 0 || uint32(cpu) >= p.nrCPUs {
		return out, errf("unwind", ErrInvalid, "task %d runs on CPU %d of %d", t.Pid, cpu, p.nrCPUs)
	}
	base, err := k.AS.U64(p.perCPUOffset + 8*uint64(cpu))
	if err != nil {
		return out, wrap("unwind", ErrBounds, err, "__per_cpu_offset[%d]", cpu)
	}
	ptr := func(sym uint64, what string) (uint64, error) {
		v, err := k.AS.U64(base + sym)
		if err != nil {
			return 0, wrap("unwind", ErrBounds, err, "per-CPU %s of CPU %d", what, cpu)
		}
		return v, nil
	}
	if p.hardirqStackPtr != 0 {
		top, err := ptr(p.hardirqStackPtr, "hardirq_stack_ptr")
		if err != nil {
			return out, err
		}
		if top != 0 {
			end := top + 8
			if end < top || end < p.irqStackSize || end%8 != 0 {
				return out, errf("unwind", ErrFormat, "hardirq_stack_ptr %#x of CPU %d", top, cpu)
			}
			out = append(out, StackRange{Kind: StackIRQ, Start: end - p.irqStackSize, End: end})
		}
	}
	if p.ceaExceptionStacks != 0 {
		base, err := ptr(p.ceaExceptionStacks, "cea_exception_stacks")
		if err != nil {
			return out, err
		}
		if base != 0 {
			for i, r := range p.estack {
				// The #VC stacks are mapped only for SEV-ES guests: a
				// stack that is not mapped holds nothing.
				if r.End > r.Start && base+r.End > base {
					if _, _, err := k.AS.Translate(base + r.Start); err != nil {
						continue
					}
					out = append(out, StackRange{Kind: StackException + StackKind(i), Start: base + r.Start, End: base + r.End})
				}
			}
		}
	}
	if p.cpuEntryArea != 0 {
		cea, err := ptr(p.cpuEntryArea, "cpu_entry_area")
		if err != nil {
			return out, err
		}
		if cea != 0 && cea+p.entryStackOff+p.entryStackSize > cea {
			out = append(out, StackRange{Kind: StackEntry, Start: cea + p.entryStackOff, End: cea + p.entryStackOff + p.entryStackSize})
		}
	}
	return out, nil
}

// UnwindRunning unwinds the stack a vCPU is on: regs are its registers
// (while paused), t the task it runs (t.RunningOn its CPU). In user mode
// there is nothing to unwind. If the CPU's other stacks cannot be
// located the unwind uses the task stack alone (and fails, conservative,
// if the vCPU is elsewhere).
func (u *Unwinder) UnwindRunning(t Task, regs PtRegs, out *Stack) {
	var buf [2 + nExceptionStacks]StackRange
	stacks, err := u.CPUStacks(t, buf[:0])
	u.Unwind(UnwindStart{Regs: &regs, Stacks: stacks}, out)
	if err != nil && !out.Reliable {
		out.Why += "; the CPU's other stacks: " + err.Error()
	}
}

// UnwindCPU unwinds what vCPU cpu runs, from its registers (read while
// it is paused): its current task, found through the per-CPU
// current_task (the idle tasks of secondary CPUs are on no task list,
// so a caller walking Threads would miss them).
func (u *Unwinder) UnwindCPU(cpu int, regs PtRegs, out *Stack) error {
	if u.k == nil {
		return errf("unwind", ErrInvalid, "no kernel to find CPU %d's task in", cpu)
	}
	cur, err := u.k.currentTasks()
	if err != nil {
		return err
	}
	if cpu < 0 || cpu >= len(cur) || cur[cpu] == 0 {
		return errf("unwind", ErrInvalid, "CPU %d has no current task (%d CPUs)", cpu, len(cur))
	}
	r := newObjReader(u.k.AS, cur[cpu])
	t, err := u.k.readTask(&r, cur)
	if err != nil {
		return err
	}
	u.UnwindRunning(t, regs, out)
	return nil
}
