// Package engine is the contract between klp-kvm's VMM (package kvm) and its
// two execution engines: kvm/hw over /dev/kvm and kvm/emu in software.
//
// The Engine interface mirrors the KVM API (VM, VCPU, KVM_RUN -> exit)
// closely enough that kvm/hw is a thin wrapper over /dev/kvm, while kvm/emu
// implements the same contract in software. It lives in its own package so
// that kvm can import both engines while they import only this.
package engine

import "sync/atomic"

// Regs mirrors struct kvm_regs field for field (144 bytes), so the hw engine
// can pass it straight to KVM_GET_REGS/KVM_SET_REGS.
type Regs struct {
	RAX, RBX, RCX, RDX uint64
	RSI, RDI, RSP, RBP uint64
	R8, R9, R10, R11   uint64
	R12, R13, R14, R15 uint64
	RIP, RFLAGS        uint64
}

// Segment mirrors struct kvm_segment (24 bytes).
type Segment struct {
	Base                           uint64
	Limit                          uint32
	Selector                       uint16
	Type                           uint8
	Present, DPL, DB, S, L, G, AVL uint8
	Unusable                       uint8
	_                              uint8 // padding
}

// DTable mirrors struct kvm_dtable (16 bytes).
type DTable struct {
	Base  uint64
	Limit uint16
	_     [3]uint16 // padding
}

// Sregs mirrors struct kvm_sregs (312 bytes).
type Sregs struct {
	CS, DS, ES, FS, GS, SS Segment
	TR, LDT                Segment
	GDT, IDT               DTable
	CR0, CR2, CR3, CR4     uint64
	CR8                    uint64
	EFER                   uint64
	APICBase               uint64
	InterruptBitmap        [4]uint64 // KVM_NR_INTERRUPTS/64
}

// MSR is one model-specific register, as in struct kvm_msr_entry.
type MSR struct {
	Index uint32
	_     uint32
	Data  uint64
}

// ExitReason says why Run returned.
type ExitReason int

const (
	// ExitIO: the guest executed IN or OUT. For IN the VMM fills IO.Data
	// before the next Run, which completes the instruction (as KVM does).
	ExitIO ExitReason = iota + 1
	// ExitMMIO: the guest accessed guest-physical memory outside RAM.
	// For a read the VMM fills MMIO.Data before the next Run.
	ExitMMIO
	// ExitHLT: the guest halted with nothing to wake it (IF=0, or an engine
	// without an in-kernel interrupt controller). Engines with an interrupt
	// controller sleep inside Run instead and never return ExitHLT for a
	// halt that an interrupt can end.
	ExitHLT
	// ExitShutdown: triple fault or other shutdown condition. Exit.RIP and
	// Exit.Message say where and why.
	ExitShutdown
	// ExitInternalError: the engine could not continue (emulation failure,
	// KVM internal error). Exit.Message says what happened.
	ExitInternalError
	// ExitIntr: Run was interrupted by Kick (KVM's immediate_exit/EINTR).
	// The vCPU stopped at an instruction boundary.
	ExitIntr
	// ExitDebug: the vCPU reached an armed breakpoint (Breakpointer);
	// Exit.RIP is its address, not yet executed.
	ExitDebug
)

func (r ExitReason) String() string {
	switch r {
	case ExitIO:
		return "io"
	case ExitMMIO:
		return "mmio"
	case ExitHLT:
		return "hlt"
	case ExitShutdown:
		return "shutdown"
	case ExitInternalError:
		return "internal-error"
	case ExitIntr:
		return "intr"
	case ExitDebug:
		return "debug"
	}
	return "unknown"
}

// IOExit describes a port access. Data has Size*Count bytes; for Out it
// holds what the guest wrote, for In the VMM writes the value there.
type IOExit struct {
	Port  uint16
	Size  uint8 // 1, 2 or 4
	Out   bool
	Count uint32 // >1 only for string I/O
	Data  []byte // engine-owned, valid until the next Run
}

// MMIOExit describes an access to guest-physical memory not backed by RAM.
type MMIOExit struct {
	Addr  uint64
	Write bool
	Data  []byte // len is the access size; engine-owned, valid until the next Run
}

// Exit is what Run returns. The pointed-to value is owned by the vCPU and is
// valid until the next call to Run.
type Exit struct {
	Reason  ExitReason
	IO      IOExit
	MMIO    MMIOExit
	RIP     uint64 // guest RIP at the exit (best effort for ExitIO/ExitMMIO)
	Message string // for ExitShutdown and ExitInternalError
}

// Stats are engine counters for benchmarks and `GET /machine`.
type Stats struct {
	Instructions uint64 // emulated instructions (0 on hardware)
	Exits        uint64 // exits returned from Run
	// ByReason splits Exits by ExitReason.String() ("io", "mmio", "hlt",
	// "intr", ...); reasons never seen are absent.
	ByReason map[string]uint64
	// Handled counts exits the engine dealt with itself without returning
	// from Run (kvm/hw: int3 emulation failures turned into #BP), by what
	// it did.
	Handled map[string]uint64
	// Kernel holds the hypervisor's own per-vCPU counters where it has
	// them (KVM's binary statistics: exits handled in the kernel, halts,
	// interrupt injections...), nil elsewhere.
	Kernel map[string]uint64
}

// ExitCounters counts exits by reason for Stats.ByReason. Safe for one
// writer (the vCPU thread) and any number of readers.
type ExitCounters struct {
	n [ExitIntr + 1]atomic.Uint64
}

// Count records one exit of reason r.
func (c *ExitCounters) Count(r ExitReason) {
	if r < 0 || int(r) >= len(c.n) {
		r = 0 // "unknown"
	}
	c.n[r].Add(1)
}

// Snapshot returns the counts by reason name, nil when there are none.
func (c *ExitCounters) Snapshot() map[string]uint64 {
	var m map[string]uint64
	for r := range c.n {
		if v := c.n[r].Load(); v != 0 {
			if m == nil {
				m = map[string]uint64{}
			}
			m[ExitReason(r).String()] += v
		}
	}
	return m
}

// Engine creates VMs. An engine is stateless apart from its device handle.
type Engine interface {
	// Name is "kvm" or "emu".
	Name() string
	// NewVM creates a VM whose guest-physical RAM starting at 0 is mem.
	// mem must stay valid (and is shared with the caller) until Close.
	NewVM(mem []byte) (VM, error)
}

// VM is one virtual machine: RAM and its vCPUs.
type VM interface {
	// NewVCPU creates vCPU id (0-based, dense). On KVM the returned VCPU's
	// Run must be called from one locked OS thread.
	NewVCPU(id int) (VCPU, error)
	// CodeChanged tells the engine that the host wrote guest-physical bytes
	// [gpa, gpa+n). Engines that cache decoded code drop what overlaps.
	// Safe to call from any goroutine.
	CodeChanged(gpa, n uint64)
	Close() error
}

// VCPU is one virtual CPU. Regs/Sregs/MSR accessors may only be used while
// Run is not executing (the vCPU is paused or not started). Kick may be
// called from any goroutine at any time.
type VCPU interface {
	ID() int
	Regs() (Regs, error)
	SetRegs(Regs) error
	Sregs() (Sregs, error)
	SetSregs(Sregs) error
	// GetMSRs fills Data for each entry's Index.
	GetMSRs([]MSR) error
	SetMSRs([]MSR) error
	// Run runs the vCPU until the next exit.
	Run() (*Exit, error)
	// Kick makes a Run in progress return ExitIntr promptly, at an
	// instruction boundary. A kick that arrives while Run is not executing
	// stays pending and makes the next Run return ExitIntr at once; the
	// ExitIntr consumes it (KVM immediate_exit semantics, cleared by the
	// engine so the caller never has to).
	Kick()
	// Stats returns the vCPU's counters. Safe from any goroutine.
	Stats() Stats
	Close() error
}

// MaxBreakpoints is how many breakpoints a Breakpointer arms at once: the
// four address registers DR0-DR3 of x86 debug hardware.
const MaxBreakpoints = 4

// Breakpointer is implemented by VCPUs that can stop at instruction
// addresses: hardware breakpoints through KVM_SET_GUEST_DEBUG on KVM, a
// check at every basic-block entry on emu. The livepatch transition uses
// it to let a vCPU that blocks a switch run just until it returns out of
// the changing function, while the other vCPUs stay paused.
//
// Like the register accessors it may only be called while Run is not
// executing. Run returns ExitDebug at an armed address before executing
// the instruction there; the caller disarms (SetBreakpoints(nil)) before
// running on, or the vCPU stops there again.
type Breakpointer interface {
	SetBreakpoints(addrs []uint64) error
}

// TSCClock is implemented by a VCPU that knows the rate at which the TSC
// its guest reads (RDTSC, MSR 0x10) advances against host time. The VMM
// tells the guest this rate at boot (boot_info.tsc_hz); a VCPU without it
// leaves the guest to find its own.
type TSCClock interface {
	// TSCHz is the guest TSC rate in Hz, 0 if the engine cannot tell.
	// Every vCPU of a VM has the same.
	TSCHz() (uint64, error)
}

// Well-known MSR indices used by the boot protocol and the engines.
const (
	MSRApicBase      = 0x1b
	MSREFER          = 0xc0000080
	MSRSTAR          = 0xc0000081
	MSRLSTAR         = 0xc0000082
	MSRFSBase        = 0xc0000100
	MSRGSBase        = 0xc0000101
	MSRKernelGSBase  = 0xc0000102
	MSRTSCAux        = 0xc0000103
	MSRX2APICID      = 0x802
	MSRX2APICEOI     = 0x80b
	MSRX2APICSVR     = 0x80f
	MSRX2APICICR     = 0x830
	MSRX2APICLVTT    = 0x832
	MSRX2APICTMICT   = 0x838
	MSRX2APICTMCCT   = 0x839
	MSRX2APICTDCR    = 0x83e
	MSRX2APICSelfIPI = 0x83f
)

// PCPlatform is implemented by a VM that can present the PC platform an
// unmodified Linux kernel expects, next to klp-kvm's own boot protocol:
//
//   - a PIT (Linux calibrates against it and checks the IOAPIC timer);
//   - vCPUs created after EnablePCPlatform start with their LAPIC at its
//     reset state (xAPIC mode at the default base, BSP on vCPU 0), and
//     every vCPU but 0 waits for INIT/SIPI from the bootstrap processor
//     (KVM_MP_STATE_UNINITIALIZED; Run blocks until then, a Kick still
//     interrupts it);
//   - ISA interrupt lines the VMM's devices drive (SetIRQLine).
type PCPlatform interface {
	// EnablePCPlatform must be called before the first NewVCPU.
	EnablePCPlatform() error
	// SetIRQLine drives ISA interrupt line irq (0-15: the PIC input and
	// the IOAPIC pin of that number) to level. Safe from any goroutine.
	SetIRQLine(irq int, level bool) error
}
