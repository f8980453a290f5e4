// Package emu is klp-kvm's software x86-64 engine: an interpreter that runs
// a 64-bit long-mode guest (ring 0, integer instructions, 4-level paging,
// exceptions through the IDT, an x2APIC with timer and IPIs) behind the same
// engine.Engine contract as /dev/kvm.
//
// Instructions are decoded with golang.org/x/arch/x86/x86asm once, into
// basic blocks of predecoded handlers cached per guest-physical address and
// validated by a per-page generation counter, so that guest stores, host
// writes (VM.CodeChanged) and self-modifying code all invalidate stale code.
// Code marks are kept per 128-byte chunk, so data sharing a page with code
// does not cause re-translation. Arithmetic flags are lazy (see flags.go).
//
// The hot path: a block remembers the blocks that followed it (links,
// valid while neither the TLB nor any translated code changed), and the
// run loop (cpu.runChain) goes from block to block along them until a
// kick, an interrupt, a breakpoint or the periodic poll needs attention.
// The instruction forms a guest runs most have fast handlers (ops_fast.go)
// with the operation and size fixed and the TLB hit path inlined; anything
// unusual goes to the generic handler, which the tests hold them to.
//
// Exceptions unwind out of a handler with a panic of a sentinel value
// (never on the fast path) and are delivered through the 64-bit IDT with
// the SDM's double/triple-fault rules. Any other panic is a bug in the
// interpreter and ends Run with ExitInternalError, never a host crash.
//
// Deliberately not modelled: modes other than 64-bit long mode, x87, SSE
// and AVX (#UD, and not in CPUID), single-stepping (TF) and debug-register
// breakpoints, NMI/INIT/SIPI, SYSCALL/SYSRET, LDTs (only a null LDT), call
// gates and far CALL, the TSS I/O bitmap (IOPL only), SMAP, PCID, the
// TSC-deadline timer. CPL 3 works (IRETQ to it, U/S checks, the RSP0 stack
// switch) but the guest kernel runs in ring 0 only.
//
// Atomicity: LOCKed operations and XCHG on naturally aligned operands use
// host atomics; misaligned or page-straddling ones and CMPXCHG16B use one
// VM-wide mutex, so they are atomic with respect to each other but not to
// plain stores racing with them. A vCPU that modifies code another vCPU is
// translating at that very moment may leave the other with the old bytes
// (cross-modifying code needs guest synchronisation on hardware too); host
// writes through VM.CodeChanged while vCPUs are paused are always exact.
package emu

import (
	"io"
	"sync"
	"sync/atomic"
	"time"

	"klp-kvm/kvm/engine"
)

// Option configures the engine.
type Option func(*config)

type config struct {
	trace    io.Writer
	maxBlock int
	generic  bool // only the generic handlers (withGenericHandlers)
}

// WithTrace writes one line per executed instruction (vCPU, RIP,
// disassembly) to w. It slows the interpreter down by orders of magnitude:
// debugging only. Writes from several vCPUs are serialised.
func WithTrace(w io.Writer) Option { return func(c *config) { c.trace = w } }

// WithMaxBlock caps the number of instructions in one translated block,
// which bounds how many instructions run between two checks for Kick and
// pending interrupts. Values outside 1..1024 are clamped.
func WithMaxBlock(n int) Option {
	return func(c *config) {
		c.maxBlock = min(max(n, 1), 1024)
	}
}

// withGenericHandlers makes the engine use only the generic handlers, not
// their fast specialisations (ops_fast.go): the reference the tests
// compare the fast ones with.
func withGenericHandlers() Option { return func(c *config) { c.generic = true } }

const defaultMaxBlock = 64

type emuEngine struct{ cfg config }

// New returns the software engine.
func New(opts ...Option) engine.Engine {
	e := &emuEngine{cfg: config{maxBlock: defaultMaxBlock}}
	for _, o := range opts {
		o(&e.cfg)
	}
	return e
}

func (e *emuEngine) Name() string { return "emu" }

// maxVCPUs bounds vCPU ids; the x2APIC ICR broadcast walks them all.
const maxVCPUs = 256

// vm is one guest: RAM, the per-page code bookkeeping, and the vCPUs.
type vm struct {
	cfg   config
	ram   ramMem
	epoch time.Time // RDTSC and the APIC timer count from here

	// Per 4 KiB physical page. mark has a bit per 128-byte chunk from
	// which some vCPU holds translated code; gen is bumped whenever a
	// marked chunk is written, which invalidates every block translated
	// from the page (and clears mark until code is translated again).
	mark []uint32
	gen  []uint32
	// codeEpoch counts invalidations of translated code (any page): block
	// links are valid only while it is unchanged.
	codeEpoch atomic.Uint64

	mu     sync.Mutex // guards vcpus and closed
	vcpus  [maxVCPUs]atomic.Pointer[cpu]
	closed bool

	traceMu sync.Mutex

	// lockedMu serialises the rare locked accesses that cannot use a
	// host atomic (misaligned, page-straddling, CMPXCHG16B).
	lockedMu sync.Mutex
}

func (e *emuEngine) NewVM(mem []byte) (engine.VM, error) {
	if len(mem) == 0 || len(mem)%4096 != 0 {
		return nil, errorf("NewVM", ErrInvalid, "guest RAM size %d is not a nonzero multiple of 4096", len(mem))
	}
	pages := len(mem) / 4096
	v := &vm{
		cfg:   e.cfg,
		ram:   newRAM(mem),
		epoch: time.Now(),
		mark:  make([]uint32, pages),
		gen:   make([]uint32, pages),
	}
	return v, nil
}

func (v *vm) NewVCPU(id int) (engine.VCPU, error) {
	if id < 0 || id >= maxVCPUs {
		return nil, errorf("NewVCPU", ErrInvalid, "vCPU id %d out of range 0..%d", id, maxVCPUs-1)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return nil, errorf("NewVCPU", ErrClosed, "VM closed")
	}
	if v.vcpus[id].Load() != nil {
		return nil, errorf("NewVCPU", ErrBusy, "vCPU %d exists", id)
	}
	c := newCPU(v, id)
	v.vcpus[id].Store(c)
	return c, nil
}

// CodeChanged invalidates translated code overlapping [gpa, gpa+n).
func (v *vm) CodeChanged(gpa, n uint64) {
	if n == 0 {
		return
	}
	end := gpa + n
	if end < gpa || end > v.ram.size {
		end = v.ram.size
	}
	for p := gpa >> 12; p<<12 < end; p++ {
		lo, hi := max(gpa, p<<12), min(end, (p+1)<<12)
		if atomic.LoadUint32(&v.mark[p])&chunkBits(lo&0xfff, hi-lo) != 0 {
			v.invalidatePage(p)
		}
	}
}

// invalidatePage drops all code translated from physical page pfn.
func (v *vm) invalidatePage(pfn uint64) bool {
	if pfn >= uint64(len(v.gen)) {
		return false
	}
	if atomic.SwapUint32(&v.mark[pfn], 0) != 0 {
		atomic.AddUint32(&v.gen[pfn], 1)
		v.codeEpoch.Add(1) // after gen: see cpu.nextBlock
		return true
	}
	return false
}

func (v *vm) Close() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return nil
	}
	v.closed = true
	for i := range v.vcpus {
		if c := v.vcpus[i].Load(); c != nil {
			c.apic.stopTimer()
		}
	}
	return nil
}
