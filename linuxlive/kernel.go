package linuxlive

import (
	"fmt"
	"sort"
	"strings"

	"github.com/cilium/ebpf/btf"

	"klp-kvm/linuxkernel"
	"klp-kvm/linuxpatch"
)

// kernelView is what the Manager needs of the guest kernel. liveKernel
// reads it from guest memory (linuxkernel); the unit tests give a fake.
type kernelView interface {
	// BTF gives the klp struct layouts.
	BTF() *btf.Spec
	// LinkConfig resolves against the guest (Alloc is the Manager's).
	LinkConfig() linuxpatch.Config
	// FuncSize is the extent of the function at addr.
	FuncSize(addr uint64) uint64
	// Site is the fentry site of the function at addr (after ENDBR64)
	// and what it holds now (linuxkernel.Fentry*).
	Site(addr uint64) (site uint64, kind string, err error)
	// Translate gives the guest-physical address of a kernel address.
	Translate(va uint64) (uint64, error)
	// Tables are the kernel's page tables: the root, 4 or 5 levels, and
	// whether the kernel maps its data NX.
	Tables() (root uint64, levels int, nx bool)
	// Blocked, with every vCPU paused, unwinds every task and vCPU and
	// says what holds an address in check: the first frame found, whether
	// a sleeping task blocks, and each blocking vCPU's way out (verdict);
	// code is the patches' code (text and ORC), which counts as kernel
	// text and unwinds with the patches' own ORC tables.
	Blocked(check []linuxkernel.AddrRange, code []linuxkernel.ModuleORC) (verdict, error)
	// FtraceRecord is the guest ftrace's record of the fentry site at
	// site (ok false: its ftrace could not be read; linuxkernel's
	// ErrNotFound: it has no record of the site). ftrace.go.
	FtraceRecord(site uint64) (ftraceRec, error)
	// FtraceBusy, with every vCPU paused: whether ftrace_lock is held
	// and whether any ftrace_ops is registered.
	FtraceBusy() (lockHeld, opsRegistered bool, err error)
}

// liveKernel is the kernelView of a running guest.
type liveKernel struct {
	m       Machine
	k       *linuxkernel.Kernel
	u       *linuxkernel.Unwinder
	linkCfg linuxpatch.Config
	nx      bool
	levels  int
	// ft is the guest's ftrace bookkeeping (nil when its layout could
	// not be read: sites are then switched without it, and said so).
	ft *linuxkernel.Ftrace
}

// physMem adapts Machine to linuxkernel.PhysMem.
type physMem struct{ m Machine }

func (p physMem) ReadPhys(pa uint64, b []byte) error { return p.m.ReadPhys(pa, b) }
func (p physMem) PhysSize() uint64                   { return p.m.PhysSize() }

// openLive opens the live kernel: symbols, BTF, page tables, the
// unwinder, and what linking needs (exports, release, return thunk).
func openLive(cfg Config) (*liveKernel, error) {
	open := cfg.Kernel
	if open == nil {
		open = func() (*linuxkernel.Kernel, error) {
			return linuxkernel.Open(physMem{cfg.Machine}, linuxkernel.Options{})
		}
	}
	k, err := open()
	if err != nil {
		return nil, wrap("open kernel", "", ErrGuest, err, "reading the guest kernel")
	}
	if k.BTF == nil {
		return nil, wrap("open kernel", "", ErrGuest, k.BTFErr, "the guest kernel has no BTF (the klp struct layouts come from it)")
	}
	u, err := k.NewUnwinder()
	if err != nil {
		return nil, wrap("open kernel", "", ErrGuest, err, "the guest kernel's ORC tables")
	}
	lk := &liveKernel{m: cfg.Machine, k: k, u: u, levels: 4}
	var ftErr error
	if lk.ft, ftErr = k.Ftrace(); ftErr != nil && cfg.Logf != nil {
		cfg.Logf("linuxlive: the guest's ftrace records cannot be read (%v): the functions patched stay visible to its ftrace, which must not trace them", ftErr)
	}
	if k.AS.LA57 {
		lk.levels = 5
	}
	// The guest uses NX when its own data pages carry it: init_task is in
	// .data, mapped __PAGE_KERNEL (NX) when EFER.NXE is on.
	if a, err := k.Symbols.Addr("init_task"); err == nil {
		lk.nx = leafNX(&pageTables{mem: cfg.Machine, root: k.AS.Root, levels: lk.levels}, a)
	}
	lk.linkCfg = linuxpatch.Config{
		Resolve:       linuxpatch.VmlinuxResolver(k.Symbols),
		KernelRelease: k.Release,
		Exported:      linuxpatch.VmlinuxExports(k.Symbols),
		Loaded:        func(obj string) bool { return obj == linuxpatch.VmlinuxObject },
	}
	// apply_returns' choice: the module's returns go where the kernel's
	// go, x86_return_thunk's value when it is not the plain thunk.
	if tv, err := k.Symbols.Addr("x86_return_thunk"); err == nil {
		if v, err := k.AS.U64(tv); err == nil {
			if plain, err := k.Symbols.Addr("__x86_return_thunk"); err == nil && v != plain && v != 0 {
				if s, _, ok := k.Symbols.At(v); ok && strings.Contains(s.Name, "return_thunk") {
					lk.linkCfg.ReturnThunk = v
				}
			}
		}
	}
	return lk, nil
}

// leafNX reads the NX bit of the (possibly large) page mapping a.
func leafNX(pt *pageTables, a uint64) bool {
	table := pt.root &^ 0xfff
	for level := pt.levels; level >= 1; level-- {
		e, err := pt.read(table + index(a, level)*8)
		if err != nil || e&ptePresent == 0 {
			return false
		}
		if level == 1 || e&ptePS != 0 {
			return e&pteNX != 0
		}
		table = e & pteAddr
		if table+pageSize > pt.mem.PhysSize() {
			return false
		}
	}
	return false
}

func (lk *liveKernel) BTF() *btf.Spec                { return lk.k.BTF }
func (lk *liveKernel) LinkConfig() linuxpatch.Config { return lk.linkCfg }
func (lk *liveKernel) Tables() (uint64, int, bool)   { return lk.k.AS.Root, lk.levels, lk.nx }

// FuncSize is the function's extent as kallsyms_lookup_size_offset
// gives it: up to the next symbol's address.
func (lk *liveKernel) FuncSize(addr uint64) uint64 {
	all := lk.k.Symbols.All()
	i := sort.Search(len(all), func(i int) bool { return all[i].Addr > addr })
	if i < len(all) {
		return all[i].Addr - addr
	}
	return 1
}

func (lk *liveKernel) Site(addr uint64) (uint64, string, error) {
	s, err := lk.k.FentryAt(addr)
	return s.Site, s.Kind, err
}

func (lk *liveKernel) Translate(va uint64) (uint64, error) {
	pa, _, err := lk.k.AS.Translate(va)
	return pa, err
}

// Blocked unwinds every task not running (UnwindTask) and every vCPU
// (UnwindCPU) with the guest's ORC tables; Stack.Hit falls back to the
// conservative scan where the unwind is not reliable. Sleeping tasks
// come first: when one blocks, the vCPUs do not matter for this attempt
// (only time moves it). A vCPU that blocks gets its way out from an exact
// unwind (exitStops), for the progress guarantee.
func (lk *liveKernel) Blocked(check []linuxkernel.AddrRange, code []linuxkernel.ModuleORC) (verdict, error) {
	u := lk.u
	if err := u.RefreshModules(); err != nil {
		u.ModulesErr = err
	}
	// The patches' code counts as module text, with its own ORC tables
	// (patchORC): a stack through it unwinds exactly.
	u.Modules = append(u.Modules, code...)
	threads, err := lk.k.Threads()
	if err != nil {
		return verdict{}, wrap("check", "", ErrGuest, err, "the guest's task list")
	}
	var st linuxkernel.Stack
	for _, t := range threads {
		if t.RunningOn >= 0 {
			continue // its vCPU's unwind covers it
		}
		u.UnwindTask(t, &st)
		if f, ok := st.Hit(check); ok {
			return verdict{why: fmt.Sprintf("task %d (%s) at %s", t.Pid, t.Comm, f), sleeping: true}, nil
		}
	}
	cpus, err := lk.m.CPUs()
	if err != nil {
		return verdict{}, wrap("check", "", ErrGuest, err, "the vCPUs' registers")
	}
	var v verdict
	for i, c := range cpus {
		if err := u.UnwindCPU(i, c.Regs, &st); err != nil {
			// Not a stack that running on would change: wait, as for a
			// sleeping task.
			return verdict{why: fmt.Sprintf("vCPU %d: no stack to check (%v)", i, err), sleeping: true}, nil
		}
		if f, ok := st.Hit(check); ok {
			v.blockRunning(i, fmt.Sprintf("vCPU %d at %s", i, f), exitStops(&st, check))
		}
	}
	return v, nil
}
