// Package linuxkernel reads a live, unmodified Linux x86-64 kernel from the
// host through guest-physical memory alone: vmcoreinfo found by scanning
// RAM, the page tables, the kernel's own kallsyms tables (or a System.map),
// its BTF, the task list and fentry sites. Nothing in the guest helps, and
// everything read from it is untrusted: every read is bounds-checked,
// every table size and list length is limited, and a bad value is an
// *Error naming the address and what was wrong, never a panic.
package linuxkernel

import (
	"io"

	"github.com/cilium/ebpf/btf"
)

// startKernelMap is x86-64's __START_KERNEL_map: the kernel image's
// virtual base before the KASLR offset; the image's physical address is
// va - startKernelMap + phys_base.
const startKernelMap = 0xffff_ffff_8000_0000

// Options say where to look besides guest memory.
type Options struct {
	// CPUs are the paused vCPUs' registers (optional). Their CR3 is the
	// page-table root when vmcoreinfo has no init_top_pgt.
	CPUs []CPU
	// SystemMap is the fallback symbol source when vmcoreinfo has no
	// kallsyms tables (Linux < 6.0) or none is found: Debian's
	// /boot/System.map-<release>.
	SystemMap io.Reader
	// KASLROffset is used with SystemMap when vmcoreinfo (KERNELOFFSET)
	// is absent and no vCPU's LSTAR is known; 0 is right for a kernel
	// booted with nokaslr.
	KASLROffset uint64
	// ThreadSize overrides x86-64's 16 KiB THREAD_SIZE (32 KiB with
	// CONFIG_KASAN).
	ThreadSize uint64
	// NotAbsolutePercpu: the kernel was built without
	// CONFIG_KALLSYMS_ABSOLUTE_PERCPU (x86-64 SMP kernels have it).
	NotAbsolutePercpu bool
}

// Symbol sources.
const (
	SourceKallsyms  = "vmcoreinfo+kallsyms"
	SourceSystemMap = "System.map"
)

// Kernel is a live Linux kernel seen from the host.
type Kernel struct {
	Mem         PhysMem
	VMCoreInfo  *VMCoreInfo // nil when none was found
	AS          *AddressSpace
	Release     string
	KASLROffset uint64
	Source      string // SourceKallsyms or SourceSystemMap
	KASLRSource string // where KASLROffset came from
	Symbols     *Symbols
	BTF         *btf.Spec   // nil if BTFErr
	BTFTypes    int         // number of BTF types
	BTFErr      error       // why there is no BTF (tasks need it)
	Layout      *TaskLayout // from BTF
	ThreadSize  uint64
}

// Open finds everything that does not change while the kernel runs:
// vmcoreinfo, the page tables, the KASLR offset, the symbols, BTF.
func Open(mem PhysMem, opt Options) (*Kernel, error) {
	if mem == nil || mem.PhysSize() < pageSize {
		return nil, errf("open", ErrInvalid, "no guest memory")
	}
	k := &Kernel{Mem: mem, ThreadSize: defaultThreadSize}
	if opt.ThreadSize != 0 {
		if opt.ThreadSize%pageSize != 0 || opt.ThreadSize > 1<<20 {
			return nil, errf("open", ErrInvalid, "ThreadSize %#x", opt.ThreadSize)
		}
		k.ThreadSize = opt.ThreadSize
	}
	vi, viErr := FindVMCoreInfo(mem)
	if viErr == nil {
		k.VMCoreInfo = vi
		k.Release = vi.Release()
	}
	if err := k.pageTables(opt); err != nil {
		return nil, err
	}
	// Symbols: the kernel's own kallsyms tables when vmcoreinfo names
	// them, else System.map.
	var symErr error
	if vi != nil {
		off, err := vi.KernelOffset()
		if err != nil {
			return nil, err
		}
		k.KASLROffset, k.KASLRSource = off, "vmcoreinfo KERNELOFFSET"
		var t *KallsymsTables
		if t, symErr = readKallsyms(k.AS, vi, !opt.NotAbsolutePercpu); symErr == nil {
			var syms []Symbol
			if syms, symErr = DecodeKallsyms(t); symErr == nil {
				k.Symbols, k.Source = NewSymbols(syms), SourceKallsyms
			}
		}
	} else {
		symErr = viErr
		k.KASLROffset, k.KASLRSource = opt.KASLROffset, "option"
	}
	if k.Symbols == nil {
		if opt.SystemMap == nil {
			return nil, wrap("open", ErrNotFound, symErr, "no kallsyms from vmcoreinfo and no System.map")
		}
		syms, err := ParseSystemMap(opt.SystemMap, 0)
		if err != nil {
			return nil, err
		}
		if vi == nil {
			if err := k.offsetFromLSTAR(syms, opt.CPUs); err != nil {
				return nil, err
			}
		}
		for i := range syms {
			if t := syms[i].Type; t != 'A' && t != 'a' {
				syms[i].Addr += k.KASLROffset
			}
		}
		k.Symbols, k.Source = NewSymbols(syms), SourceSystemMap
	}
	// A sanity check of the symbols against memory: _text must be mapped.
	text, err := k.Symbols.Addr("_text")
	if err != nil {
		return nil, err
	}
	if _, _, err := k.AS.Translate(text); err != nil {
		return nil, wrap("open", ErrFormat, err, "_text at %#x is not mapped: wrong KASLR offset or page tables", text)
	}
	k.BTF, k.BTFTypes, k.BTFErr = readBTF(k.AS, k.Symbols)
	if k.BTFErr == nil {
		k.Layout, k.BTFErr = taskLayout(k.BTF)
	}
	return k, nil
}

// offsetFromLSTAR takes the KASLR offset from a vCPU's MSR_LSTAR, which
// Linux points at entry_SYSCALL_64 (syscall_init), against System.map's
// link-time address of it. The offset must be a multiple of
// CONFIG_PHYSICAL_ALIGN's 2 MiB (x86-64 KASLR's granularity).
func (k *Kernel) offsetFromLSTAR(syms []Symbol, cpus []CPU) error {
	var lstar uint64
	for _, c := range cpus {
		if c.LSTAR != 0 {
			lstar = c.LSTAR
			break
		}
	}
	if lstar == 0 {
		return nil
	}
	var entry uint64
	for _, s := range syms {
		if s.Name == "entry_SYSCALL_64" {
			entry = s.Addr
			break
		}
	}
	if entry == 0 {
		return errf("open", ErrNotFound, "System.map has no entry_SYSCALL_64 to place MSR_LSTAR %#x", lstar)
	}
	off := lstar - entry
	if lstar < entry || off%(2<<20) != 0 || off >= 1<<30 {
		return errf("open", ErrFormat, "MSR_LSTAR %#x against entry_SYSCALL_64 %#x: offset %#x is not a KASLR offset", lstar, entry, off)
	}
	k.KASLROffset, k.KASLRSource = off, "MSR_LSTAR vs System.map entry_SYSCALL_64"
	return nil
}

// pageTables picks the page-table root: the kernel's own init_top_pgt
// (swapper_pg_dir) from vmcoreinfo, translated with phys_base, else the
// first vCPU's CR3 (with PTI a CR3 loaded in user mode is the user half of
// an 8 KiB pair, so the kernel half, CR3 with bit 12 clear, is tried too).
func (k *Kernel) pageTables(opt Options) error {
	if vi := k.VMCoreInfo; vi != nil {
		pgt, err1 := vi.Symbol("init_top_pgt")
		pb, err2 := vi.Number("phys_base")
		l5, _ := vi.Number("pgtable_l5_enabled")
		if err1 == nil && err2 == nil && pgt >= startKernelMap {
			root := pgt - startKernelMap + uint64(pb)
			if root < k.Mem.PhysSize() {
				k.AS = &AddressSpace{Mem: k.Mem, Root: root, LA57: l5 == 1}
				return nil
			}
		}
	}
	for _, c := range opt.CPUs {
		if c.CR3 == 0 {
			continue
		}
		as := &AddressSpace{Mem: k.Mem, Root: c.CR3, LA57: c.CR4&cr4LA57 != 0}
		probe := uint64(startKernelMap + 0x1000000 + opt.KASLROffset) // _text of the default build
		if _, _, err := as.Translate(probe); err != nil {
			as.Root &^= 0x1000
		}
		k.AS = as
		return nil
	}
	return errf("open", ErrNotFound, "no page-table root: no init_top_pgt in vmcoreinfo and no vCPU CR3")
}
