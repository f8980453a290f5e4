package linuxkernel

import (
	"bytes"
	"math/bits"
)

const (
	maxTasks = 1 << 16 // PID_MAX_DEFAULT is 32768
	maxCPUs  = 8192    // NR_CPUS of distribution kernels
	// defaultThreadSize is x86-64's THREAD_SIZE: PAGE_SIZE <<
	// THREAD_SIZE_ORDER, where THREAD_SIZE_ORDER = 2 + KASAN_STACK_ORDER
	// (arch/x86/include/asm/page_64_types.h): 16 KiB, 32 KiB with
	// CONFIG_KASAN. Options.ThreadSize (e.g. from the kernel's config)
	// overrides it.
	defaultThreadSize = 16 << 10
)

// Task is one task on the kernel's task list.
type Task struct {
	Addr      uint64 `json:"addr"` // the task_struct
	Pid       int32  `json:"pid"`
	Tgid      int32  `json:"tgid"`
	Comm      string `json:"comm"`
	State     string `json:"state"` // /proc letter: R S D T t X Z P I
	RawState  uint32 `json:"raw_state"`
	CPU       int    `json:"cpu"`         // the CPU it runs or last ran on (task->cpu)
	RunningOn int    `json:"running_on"`  // the CPU whose current task it is, -1 if none
	StackBase uint64 `json:"stack_base"`  // task->stack
	StackTop  uint64 `json:"stack_top"`   // task->stack + THREAD_SIZE
	SavedSP   uint64 `json:"saved_sp"`    // thread.sp (switch_to's saved RSP)
	SPInStack bool   `json:"sp_in_stack"` // SavedSP within [StackBase, StackTop)
}

// stateLetter is task_state_index (include/linux/sched.h, 6.1) mapped to
// the /proc letters "RSDTtXZPI".
func stateLetter(state, exitState uint32) string {
	const (
		taskReport      = 0x7f
		taskUninterrupt = 0x2
		taskNoload      = 0x400
		taskIdle        = taskUninterrupt | taskNoload
		taskRTLockWait  = 0x1000
		taskReportIdle  = taskReport + 1
	)
	s := (state | exitState) & taskReport
	if state&taskIdle == taskIdle {
		s = taskReportIdle
	}
	if state == taskRTLockWait {
		s = taskUninterrupt
	}
	return string("RSDTtXZPI"[bits.Len32(s)])
}

// currentTasks gives each CPU's current task: the per-CPU variable
// current_task (or pcpu_hot.current_task) at __per_cpu_offset[cpu].
func (k *Kernel) currentTasks() ([]uint64, error) {
	nrVA, err := k.Symbols.Addr("nr_cpu_ids")
	if err != nil {
		return nil, err
	}
	nr, err := k.AS.U32(nrVA)
	if err != nil {
		return nil, wrap("per-cpu", ErrBounds, err, "nr_cpu_ids at %#x", nrVA)
	}
	if nr == 0 || nr > maxCPUs {
		return nil, errf("per-cpu", ErrLimit, "nr_cpu_ids=%d (1..%d)", nr, maxCPUs)
	}
	offVA, err := k.Symbols.Addr("__per_cpu_offset")
	if err != nil {
		return nil, err
	}
	var cur uint64
	if a, err := k.Symbols.Addr("current_task"); err == nil {
		cur = a
	} else if k.Layout.PcpuHotCurrent >= 0 {
		a, err := k.Symbols.Addr("pcpu_hot")
		if err != nil {
			return nil, err
		}
		cur = a + uint64(k.Layout.PcpuHotCurrent)
	} else {
		return nil, errf("per-cpu", ErrNotFound, "neither current_task nor pcpu_hot")
	}
	out := make([]uint64, nr)
	for cpu := range out {
		base, err := k.AS.U64(offVA + 8*uint64(cpu))
		if err != nil {
			return nil, wrap("per-cpu", ErrBounds, err, "__per_cpu_offset[%d]", cpu)
		}
		t, err := k.AS.U64(base + cur)
		if err != nil {
			continue // a possible but never-onlined CPU may have no area mapped
		}
		out[cpu] = t
	}
	return out, nil
}

// Tasks walks the task list from init_task over task_struct.tasks, with
// a length limit and cycle detection; each task's fields are read
// through the BTF layout.
func (k *Kernel) Tasks() ([]Task, error) {
	l := k.Layout
	if l == nil {
		return nil, errf("tasks", ErrNotFound, "no BTF task layout")
	}
	initVA, err := k.Symbols.Addr("init_task")
	if err != nil {
		return nil, err
	}
	current, err := k.currentTasks()
	if err != nil {
		return nil, err
	}
	head := initVA + l.Tasks
	seen := map[uint64]bool{}
	var out []Task
	for t := initVA; ; {
		if len(out) >= maxTasks {
			return nil, errf("tasks", ErrLimit, "more than %d tasks", maxTasks)
		}
		if seen[t] {
			return nil, errf("tasks", ErrFormat, "task list cycles at %#x without returning to init_task", t)
		}
		seen[t] = true
		r := newObjReader(k.AS, t)
		task, err := k.readTask(&r, current)
		if err != nil {
			return nil, err
		}
		out = append(out, task)
		next, err := r.u64(l.Tasks)
		if err != nil {
			return nil, wrap("tasks", ErrBounds, err, "tasks.next of task %#x", t)
		}
		if next == head {
			return out, nil
		}
		if next < l.Tasks {
			return nil, errf("tasks", ErrFormat, "tasks.next %#x of task %#x", next, t)
		}
		t = next - l.Tasks
	}
}

// objReader reads the fields of one guest object (a task_struct): the
// object is translated once and a field inside the same page is read
// straight from guest-physical memory, one read instead of a page walk
// and a read per field. A field past the page (or an object that does not
// translate) goes through the address space as before, with its errors.
// On the check's path, with the host itself emulated (the nested tier),
// the walks were most of reading ~100 tasks twice.
type objReader struct {
	as   *AddressSpace
	va   uint64
	pa   uint64
	room uint64 // bytes from va to the end of its page; 0: not translated
}

func newObjReader(as *AddressSpace, va uint64) objReader {
	r := objReader{as: as, va: va}
	if pa, size, err := as.Translate(va); err == nil {
		r.pa, r.room = pa, size-(pa&(size-1))
	}
	return r
}

func (r *objReader) read(off uint64, b []byte) error {
	if n := uint64(len(b)); off < r.room && n <= r.room-off {
		return readPhys(r.as.Mem, r.pa+off, b)
	}
	return r.as.Read(r.va+off, b)
}

func (r *objReader) u32(off uint64) (uint32, error) {
	var b [4]byte
	err := r.read(off, b[:])
	return le32(b[:]), err
}

func (r *objReader) u64(off uint64) (uint64, error) {
	var b [8]byte
	err := r.read(off, b[:])
	return le64(b[:]), err
}

// readTask reads the task_struct at r.va.
func (k *Kernel) readTask(r *objReader, current []uint64) (Task, error) {
	l := k.Layout
	t := r.va
	task := Task{Addr: t, RunningOn: -1}
	var vals [6]uint32
	for i, f := range []struct {
		off  uint64
		what string
	}{{l.Pid, "pid"}, {l.Tgid, "tgid"}, {l.State, "__state"}, {l.ExitState, "exit_state"}, {l.CPU, "cpu"}, {l.OnCPU, "on_cpu"}} {
		v, err := r.u32(f.off)
		if err != nil {
			return task, wrap("tasks", ErrBounds, err, "%s of task %#x", f.what, t)
		}
		vals[i] = v
	}
	task.Pid, task.Tgid = int32(vals[0]), int32(vals[1])
	task.RawState = vals[2]
	task.State = stateLetter(vals[2], vals[3])
	task.CPU = int(vals[4])
	comm := make([]byte, l.CommLen)
	if err := r.read(l.Comm, comm); err != nil {
		return task, wrap("tasks", ErrBounds, err, "comm of task %#x", t)
	}
	if i := bytes.IndexByte(comm, 0); i >= 0 {
		comm = comm[:i]
	}
	task.Comm = string(bytes.ToValidUTF8(comm, []byte("?")))
	var err error
	if task.StackBase, err = r.u64(l.Stack); err != nil {
		return task, wrap("tasks", ErrBounds, err, "stack of task %#x", t)
	}
	task.StackTop = task.StackBase + k.ThreadSize
	if task.SavedSP, err = r.u64(l.ThreadSP); err != nil {
		return task, wrap("tasks", ErrBounds, err, "thread.sp of task %#x", t)
	}
	task.SPInStack = task.SavedSP >= task.StackBase && task.SavedSP < task.StackTop
	for cpu, c := range current {
		if c == t {
			task.RunningOn = cpu
			break
		}
	}
	return task, nil
}

// Threads walks every thread of every process: the task list gives the
// processes (thread-group leaders, as /proc lists them), and each one's
// signal_struct.thread_head list (over task_struct.thread_node) its
// threads, leader included. Bounded by maxTasks in all, cycles detected.
func (k *Kernel) Threads() ([]Task, error) {
	procs, err := k.Tasks()
	if err != nil {
		return nil, err
	}
	current, err := k.currentTasks()
	if err != nil {
		return nil, err
	}
	l := k.Layout
	seen := map[uint64]bool{}
	var out []Task
	for _, p := range procs {
		sig, err := k.AS.U64(p.Addr + l.Signal)
		if err != nil {
			return nil, wrap("threads", ErrBounds, err, "signal of task %#x", p.Addr)
		}
		if sig == 0 { // init_task's is set; a dead task's may not be
			out = append(out, p)
			continue
		}
		head := sig + l.SignalThreadHead
		next, err := k.AS.U64(head)
		if err != nil {
			return nil, wrap("threads", ErrBounds, err, "signal_struct.thread_head at %#x", head)
		}
		for next != head {
			if len(out) >= maxTasks {
				return nil, errf("threads", ErrLimit, "more than %d threads", maxTasks)
			}
			if next < l.ThreadNode {
				return nil, errf("threads", ErrFormat, "thread_node %#x in the threads of %#x", next, p.Addr)
			}
			t := next - l.ThreadNode
			if seen[t] {
				return nil, errf("threads", ErrFormat, "thread list of task %#x cycles at %#x", p.Addr, t)
			}
			seen[t] = true
			r := newObjReader(k.AS, t)
			task := p // the leader, read by Tasks a moment ago
			if t != p.Addr {
				if task, err = k.readTask(&r, current); err != nil {
					return nil, err
				}
			}
			out = append(out, task)
			if next, err = r.u64(l.ThreadNode); err != nil {
				return nil, wrap("threads", ErrBounds, err, "thread_node.next of task %#x", t)
			}
		}
	}
	return out, nil
}
