package linuxkernel

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
)

// Report is what `klp-kvm inspect --live` prints: a snapshot of the live
// kernel (the reply of the API's POST /kernel).
type Report struct {
	Release        string       `json:"release"`
	KASLROffset    uint64       `json:"kaslr_offset"`
	KASLRSource    string       `json:"kaslr_source"`
	SymbolSource   string       `json:"symbol_source"` // SourceKallsyms or SourceSystemMap
	VMCoreInfoPhys uint64       `json:"vmcoreinfo_phys,omitempty"`
	PageTableRoot  uint64       `json:"page_table_root"`
	Symbols        int          `json:"symbols"`
	BTFTypes       int          `json:"btf_types"`
	BTFError       string       `json:"btf_error,omitempty"`
	ThreadSize     uint64       `json:"thread_size"`
	Tasks          []Task       `json:"tasks"`
	Threads        int          `json:"threads"` // every thread of every task
	TasksError     string       `json:"tasks_error,omitempty"`
	Fentry         []FentrySite `json:"fentry"`
	FentryErrors   []string     `json:"fentry_errors,omitempty"`
}

// Report reads the task list and the fentry sites of funcs now. A part
// that fails is reported in its *Error field; the rest still is.
func (k *Kernel) Report(funcs []string) *Report {
	r := &Report{
		Release: k.Release, KASLROffset: k.KASLROffset, KASLRSource: k.KASLRSource, SymbolSource: k.Source,
		PageTableRoot: k.AS.Root, Symbols: k.Symbols.Len(), BTFTypes: k.BTFTypes,
		ThreadSize: k.ThreadSize, Tasks: []Task{}, Fentry: []FentrySite{},
	}
	if k.VMCoreInfo != nil {
		r.VMCoreInfoPhys = k.VMCoreInfo.Phys
	}
	if k.BTFErr != nil {
		r.BTFError = k.BTFErr.Error()
	}
	if tasks, err := k.Tasks(); err != nil {
		r.TasksError = err.Error()
	} else {
		r.Tasks = tasks
		if th, err := k.Threads(); err != nil {
			r.TasksError = err.Error()
		} else {
			r.Threads = len(th)
		}
	}
	for _, f := range funcs {
		sites, err := k.Fentry(f)
		if err != nil {
			r.FentryErrors = append(r.FentryErrors, err.Error())
			continue
		}
		r.Fentry = append(r.Fentry, sites...)
	}
	return r
}

// Live is a running guest as the Inspector needs it: its memory, its
// vCPUs' registers (read while paused) and pause/resume, so that a walk
// sees a kernel that does not change under it. Pause must nest (one
// Resume undoes one Pause), as kvm.Machine's does; the VMM's kvm.Machine
// provides all of it (PhysSize is its RAM size, CPUs its Sregs/Regs).
type Live interface {
	PhysMem
	Pause() error
	Resume() error
	CPUs() ([]CPU, error)
}

// Inspector serves reports of one live guest: it opens the kernel once
// (symbols, BTF and the KASLR offset do not change while it runs) and
// reads tasks and fentry sites afresh for each report, with the guest
// paused. It implements api.KernelInspector.
type Inspector struct {
	Live    Live
	Options Options

	mu sync.Mutex
	k  *Kernel
}

// InspectKernel pauses the guest, reports, and undoes its pause (a guest
// its user paused stays paused: pauses nest).
func (in *Inspector) InspectKernel(ctx context.Context, funcs []string) (*Report, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if err := in.Live.Pause(); err != nil {
		return nil, wrap("inspect", ErrInvalid, err, "pausing the guest")
	}
	defer in.Live.Resume()
	// A kernel opened before is reused; if its tasks no longer read (the
	// guest rebooted: new KASLR offset, new tables), it is opened again.
	if in.k != nil {
		if r := in.k.Report(funcs); r.TasksError == "" {
			return r, nil
		}
		in.k = nil
	}
	opt := in.Options
	if cpus, err := in.Live.CPUs(); err == nil {
		opt.CPUs = cpus
	}
	k, err := Open(in.Live, opt)
	if err != nil {
		return nil, err
	}
	in.k = k
	return k.Report(funcs), nil
}

// OK reports whether every part of the report was read.
func (r *Report) OK() bool {
	return r.BTFError == "" && r.TasksError == "" && len(r.FentryErrors) == 0
}

// WriteText prints the report for people (`klp-kvm inspect --live`).
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "kernel %s\n", r.Release)
	fmt.Fprintf(&b, "KASLR offset %#x (%s)\n", r.KASLROffset, r.KASLRSource)
	fmt.Fprintf(&b, "symbols: %d from %s", r.Symbols, r.SymbolSource)
	if r.VMCoreInfoPhys != 0 {
		fmt.Fprintf(&b, " (vmcoreinfo at phys %#x)", r.VMCoreInfoPhys)
	}
	fmt.Fprintf(&b, "\npage tables at phys %#x\n", r.PageTableRoot)
	if r.BTFError != "" {
		fmt.Fprintf(&b, "BTF: %s\n", r.BTFError)
	} else {
		fmt.Fprintf(&b, "BTF: %d types\n", r.BTFTypes)
	}
	if r.TasksError != "" {
		fmt.Fprintf(&b, "tasks: %s\n", r.TasksError)
	} else {
		fmt.Fprintf(&b, "tasks: %d, threads: %d (kernel stacks of %d KiB)\n", len(r.Tasks), r.Threads, r.ThreadSize>>10)
		fmt.Fprintf(&b, "  %7s %7s %-16s %s %4s %-7s %s\n", "PID", "TGID", "COMM", "S", "CPU", "RUNNING", "STACK")
		for _, t := range r.Tasks {
			running := "-"
			if t.RunningOn >= 0 {
				running = fmt.Sprintf("cpu%d", t.RunningOn)
			}
			fmt.Fprintf(&b, "  %7d %7d %-16s %s %4d %-7s %#x-%#x\n", t.Pid, t.Tgid, t.Comm, t.State, t.CPU, running, t.StackBase, t.StackTop)
		}
	}
	for _, f := range r.Fentry {
		fmt.Fprintf(&b, "fentry %s at %#x: %s (%s", f.Func, f.Site, f.Kind, f.Bytes)
		if f.Endbr {
			b.WriteString(", after ENDBR64")
		}
		if f.Kind == FentryCall {
			fmt.Fprintf(&b, ", call %#x", f.Target)
			if f.TargetSym != "" {
				fmt.Fprintf(&b, " %s", f.TargetSym)
			} else {
				b.WriteString(", outside the kernel image: an ftrace trampoline?")
			}
		}
		b.WriteString(")\n")
	}
	for _, e := range r.FentryErrors {
		fmt.Fprintf(&b, "fentry: %s\n", e)
	}
	_, err := io.WriteString(w, b.String())
	return err
}
