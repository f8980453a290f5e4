// Package hw is klp-kvm's execution engine over /dev/kvm.
//
// It is deliberately thin (every decision lives in package kvm): gokvm's kvm
// package issues most ioctls; this package adds what gokvm lacks or gets in
// our way: KVM_RUN with EINTR as the pause point, the kick (immediate_exit +
// tgkill), KVM_KVMCLOCK_CTRL, KVM_GET/SET_MSRS with the processed count
// checked, and the decoding of the mmap'd struct kvm_run into engine.Exit.
//
// Machine set-up done here, once per VM or vCPU, so that every caller gets
// the same machine: an in-kernel irqchip (LAPIC, IOAPIC, PIC), the TSS and
// identity-map pages Intel needs, RAM as memory slot 0, and on every vCPU
// the supported CPUID with x2APIC advertised and the APIC in x2APIC mode.
package hw

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bobuhiro11/gokvm/kvm"
	"golang.org/x/sys/unix"

	"klp-kvm/kvm/engine"
)

// DevicePath is the KVM device New opens.
const DevicePath = "/dev/kvm"

// APICBusHz is the LAPIC timer's input clock under KVM: the kernel's
// APIC_BUS_CYCLE_NS is 1, i.e. 1 GHz, before the TDCR divider.
const APICBusHz = 1_000_000_000

// kickSignal interrupts KVM_RUN on a vCPU thread. SIGURG is the Go
// runtime's own preemption signal: it always has a handler installed (a
// signal without one would kill the process or be ignored without
// interrupting the ioctl), it is never blocked on Go threads, and a stray
// one is harmless by design.
const kickSignal = unix.SIGURG

type kvmEngine struct {
	fd        int               // /dev/kvm, kept for the life of the process
	mmapSize  int               // KVM_GET_VCPU_MMAP_SIZE
	cpuid     []kvm.CPUIDEntry2 // KVM_GET_SUPPORTED_CPUID
	syncRegs  bool              // KVM_CAP_SYNC_REGS has KVM_SYNC_X86_REGS
	clockCtrl bool              // KVM_CAP_KVMCLOCK_CTRL
	// softExcSkips: the vendor code computes the return RIP of an injected
	// soft exception itself (VT-x/SVM); false on kvm_pvm (see bpEntryRIP).
	softExcSkips bool
	getTSCKHz    bool // KVM_CAP_GET_TSC_KHZ
	tscControl   bool // KVM_CAP_TSC_CONTROL
	debug        bool // KVM_CAP_SET_GUEST_DEBUG
}

// shared is the engine New returns once /dev/kvm has been opened: the
// engine holds only the device fd and what was probed through it, so one
// per process is enough and repeated New calls do not leak descriptors.
var shared struct {
	sync.Mutex
	e *kvmEngine
}

// New opens /dev/kvm and checks that this KVM has what klp-kvm needs.
// Where /dev/kvm cannot be opened the error matches ErrUnavailable.
func New() (engine.Engine, error) {
	shared.Lock()
	defer shared.Unlock()
	if shared.e != nil {
		return shared.e, nil
	}
	fd, err := unix.Open(DevicePath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		e := &Error{Op: "open " + DevicePath, Kind: ErrUnavailable}
		errors.As(err, &e.Errno)
		return nil, e
	}
	e := &kvmEngine{fd: fd}
	if err := e.probe(); err != nil {
		unix.Close(fd)
		return nil, err
	}
	shared.e = e
	return e, nil
}

func (e *kvmEngine) probe() error {
	v, err := kvm.GetAPIVersion(uintptr(e.fd))
	if err != nil {
		return ioctlErr("KVM_GET_API_VERSION", err)
	}
	if v != kvmAPIVersion {
		return &Error{Op: "KVM_GET_API_VERSION", Kind: ErrUnsupported, Detail: fmt.Sprintf("API version %d, want %d", v, kvmAPIVersion)}
	}
	for _, c := range []struct {
		cap  kvm.Capability
		name string
	}{
		{capIRQChip, "KVM_CAP_IRQCHIP"},
		{capUserMemory, "KVM_CAP_USER_MEMORY"},
		{capSetTSSAddr, "KVM_CAP_SET_TSS_ADDR"},
		{capExtCPUID, "KVM_CAP_EXT_CPUID"},
		{capImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"},
	} {
		if r, err := kvm.CheckExtension(uintptr(e.fd), c.cap); err != nil || r == 0 {
			return &Error{Op: "KVM_CHECK_EXTENSION", Kind: ErrUnsupported, Detail: c.name}
		}
	}
	if r, err := kvm.CheckExtension(uintptr(e.fd), capSyncRegs); err == nil && r&kvmSyncX86Regs != 0 {
		e.syncRegs = true
	}
	if r, err := kvm.CheckExtension(uintptr(e.fd), capKVMClockCtrl); err == nil && r != 0 {
		e.clockCtrl = true
	}
	if r, err := kvm.CheckExtension(uintptr(e.fd), capSetGuestDebug); err == nil && r != 0 {
		e.debug = true
	}
	if r, err := kvm.CheckExtension(uintptr(e.fd), capGetTSCKHz); err == nil && r != 0 {
		e.getTSCKHz = true
	}
	if r, err := kvm.CheckExtension(uintptr(e.fd), capTSCControl); err == nil && r != 0 {
		e.tscControl = true
	}
	if _, err := os.Stat(pvmModule); err != nil {
		e.softExcSkips = true
	}
	sz, err := kvm.GetVCPUMMmapSize(uintptr(e.fd))
	if err != nil {
		return ioctlErr("KVM_GET_VCPU_MMAP_SIZE", err)
	}
	if int(sz) < runMinSize {
		return &Error{Op: "KVM_GET_VCPU_MMAP_SIZE", Kind: ErrABI, Detail: fmt.Sprintf("%d bytes", sz)}
	}
	e.mmapSize = int(sz)
	// The table's size is not known in advance: the kernel answers E2BIG
	// until nent is large enough.
	for n := 64; ; n *= 2 {
		c := &kvm.CPUID{Nent: uint32(n), Entries: make([]kvm.CPUIDEntry2, n)}
		err := retryIntr0(func() error { return kvm.GetSupportedCPUID(uintptr(e.fd), c) })
		if errors.Is(err, unix.E2BIG) && n < 4096 {
			continue
		}
		if err != nil {
			return ioctlErr("KVM_GET_SUPPORTED_CPUID", err)
		}
		if int(c.Nent) > len(c.Entries) {
			return &Error{Op: "KVM_GET_SUPPORTED_CPUID", Kind: ErrABI, Detail: fmt.Sprintf("nent %d", c.Nent)}
		}
		e.cpuid = c.Entries[:c.Nent]
		return nil
	}
}

func (e *kvmEngine) Name() string { return "kvm" }

// NewVM creates a VM with mem as guest-physical RAM from 0 (memory slot 0)
// and the in-kernel irqchip.
func (e *kvmEngine) NewVM(mem []byte) (engine.VM, error) {
	if len(mem) == 0 || len(mem)%4096 != 0 || sliceAddr(mem)%4096 != 0 {
		return nil, &Error{Op: "NewVM", Kind: ErrInvalid, Detail: fmt.Sprintf("RAM of %d bytes at %#x: must be non-empty and page-aligned", len(mem), sliceAddr(mem))}
	}
	if uint64(len(mem)) > identityMapAddr {
		return nil, &Error{Op: "NewVM", Kind: ErrInvalid, Detail: fmt.Sprintf("RAM of %d bytes overlaps KVM's pages at %#x", len(mem), identityMapAddr)}
	}
	fd, err := retryIntr(func() (uintptr, error) { return kvm.CreateVM(uintptr(e.fd)) })
	if err != nil {
		return nil, ioctlErr("KVM_CREATE_VM", err)
	}
	v := &vm{e: e, fd: int(fd), mem: mem, vcpus: map[int]*vcpu{}}
	if err := v.setup(); err != nil {
		unix.Close(v.fd)
		return nil, err
	}
	return v, nil
}

type vm struct {
	e   *kvmEngine
	fd  int
	mem []byte

	mu     sync.Mutex
	vcpus  map[int]*vcpu
	closed bool
	tscKHz uint64 // the guest TSC rate every vCPU gets; 0 until the first vCPU
	pc     bool   // EnablePCPlatform: PIT, xAPIC at reset, APs wait for SIPI
}

func (v *vm) setup() error {
	// Before any vCPU exists (KVM requires this order).
	if err := retryIntr0(func() error { return kvm.SetIdentityMapAddr(uintptr(v.fd), identityMapAddr) }); err != nil {
		return ioctlErr("KVM_SET_IDENTITY_MAP_ADDR", err)
	}
	if err := retryIntr0(func() error { return kvm.SetTSSAddr(uintptr(v.fd), tssAddr) }); err != nil {
		return ioctlErr("KVM_SET_TSS_ADDR", err)
	}
	// No PIT: the guest's clock is the x2APIC timer, and an unused PIT would
	// only add a device (and a kernel thread) to every VM.
	if err := retryIntr0(func() error { return kvm.CreateIRQChip(uintptr(v.fd)) }); err != nil {
		return ioctlErr("KVM_CREATE_IRQCHIP", err)
	}
	region := kvm.UserspaceMemoryRegion{
		Slot:          0,
		GuestPhysAddr: 0,
		MemorySize:    uint64(len(v.mem)),
		UserspaceAddr: uint64(sliceAddr(v.mem)),
	}
	if err := retryIntr0(func() error { return kvm.SetUserMemoryRegion(uintptr(v.fd), &region) }); err != nil {
		return ioctlErr("KVM_SET_USER_MEMORY_REGION", err)
	}
	return nil
}

// NewVCPU creates vCPU id with CPUID (x2APIC advertised) and its APIC in
// x2APIC mode, so the guest can use the x2APIC MSRs from its first
// instruction.
func (v *vm) NewVCPU(id int) (engine.VCPU, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return nil, &Error{Op: "NewVCPU", Kind: ErrClosed}
	}
	if id < 0 || id > 1023 {
		return nil, &Error{Op: "NewVCPU", Kind: ErrInvalid, Detail: fmt.Sprintf("vCPU id %d", id)}
	}
	if _, dup := v.vcpus[id]; dup {
		return nil, &Error{Op: "NewVCPU", Kind: ErrInvalid, Detail: fmt.Sprintf("vCPU %d exists", id)}
	}
	fd, err := retryIntr(func() (uintptr, error) { return kvm.CreateVCPU(uintptr(v.fd), id) })
	if err != nil {
		return nil, ioctlErr("KVM_CREATE_VCPU", err)
	}
	c := &vcpu{id: id, fd: int(fd), mem: v.mem, pc: v.pc, syncRegs: v.e.syncRegs, clockCtrl: v.e.clockCtrl, softExcSkips: v.e.softExcSkips, guestDebug: v.e.debug}
	if err := c.setup(v.e, id); err != nil {
		c.Close()
		return nil, err
	}
	if err := v.setupTSC(c); err != nil {
		c.Close()
		return nil, err
	}
	v.vcpus[id] = c
	return c, nil
}

// setupTSC gives vCPU c the VM's guest TSC rate and records it for TSCHz.
// The rate is what KVM gives the first vCPU (KVM_GET_TSC_KHZ: the host's
// TSC rate unless the VM was told otherwise). Where KVM can scale the TSC
// (KVM_CAP_TSC_CONTROL), every vCPU is set to that rate explicitly with
// KVM_SET_TSC_KHZ, so they all tick alike whatever KVM's default; where it
// cannot (kvm_pvm), the vCPUs run at the host's rate and KVM_GET_TSC_KHZ
// says which. Either way the guest is told the rate read back from KVM.
func (v *vm) setupTSC(c *vcpu) error {
	if !v.e.getTSCKHz {
		return nil // TSCHz says unknown; the guest falls back to its tick
	}
	if v.tscKHz != 0 && v.e.tscControl {
		if _, errno := ioctl(c.fd, ioctlSetTSCKHz, uintptr(v.tscKHz)); errno != 0 {
			return &Error{Op: "KVM_SET_TSC_KHZ", Errno: errno, Detail: fmt.Sprintf("%d kHz on vCPU %d", v.tscKHz, c.id)}
		}
	}
	khz, errno := ioctl(c.fd, ioctlGetTSCKHz, 0)
	if errno != 0 {
		return &Error{Op: "KVM_GET_TSC_KHZ", Errno: errno, Detail: fmt.Sprintf("vCPU %d", c.id)}
	}
	if khz == 0 {
		return &Error{Op: "KVM_GET_TSC_KHZ", Kind: ErrUnsupported, Detail: fmt.Sprintf("vCPU %d: TSC rate 0", c.id)}
	}
	if v.tscKHz == 0 {
		v.tscKHz = uint64(khz)
	} else if uint64(khz) != v.tscKHz {
		return &Error{Op: "KVM_GET_TSC_KHZ", Kind: ErrUnsupported,
			Detail: fmt.Sprintf("vCPU %d runs its TSC at %d kHz, vCPU 0 at %d kHz", c.id, khz, v.tscKHz)}
	}
	c.tscKHz = uint64(khz)
	return nil
}

// CodeChanged needs nothing on hardware: the CPU keeps instruction fetch
// coherent with stores, and KVM's shadow/nested paging does not cache code.
func (v *vm) CodeChanged(gpa, n uint64) {}

func (v *vm) Close() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return nil
	}
	v.closed = true
	var first error
	for _, c := range v.vcpus {
		if err := c.Close(); err != nil && first == nil {
			first = err
		}
	}
	if err := unix.Close(v.fd); err != nil && first == nil {
		first = ioctlErr("close VM", err)
	}
	return first
}

type vcpu struct {
	id  int
	fd  int
	pc  bool   // created on a PC-platform VM (EnablePCPlatform)
	mem []byte // guest RAM from physical 0 (the VM's slot 0)
	// softExcSkips: see kvmEngine.softExcSkips and bpEntryRIP.
	softExcSkips bool
	tscKHz       uint64 // guest TSC rate (setupTSC), 0 if KVM cannot say
	syncRegs     bool
	// syncFresh: kvm_run's sync area holds the registers as KVM_GET_REGS
	// would read them (set when KVM_RUN returns with syncRegs, cleared
	// when KVM_RUN is entered and by every setter). Only the thread that
	// owns the vCPU (Run and the register accessors) touches it.
	syncFresh bool
	clockCtrl bool
	// pausedAt is when the last kick stopped KVM_RUN (zero once the
	// guest was told, or when nothing stopped it): see clockResume.
	pausedAt   time.Time
	guestDebug bool // KVM_CAP_SET_GUEST_DEBUG: SetBreakpoints works

	// run is the mmap'd struct kvm_run; word points at its first word
	// (immediate_exit). mu guards them against Close while Kick runs from
	// another goroutine.
	mu     sync.RWMutex
	run    []byte
	word   *uint32
	closed bool

	tid    atomic.Int32 // thread running KVM_RUN, 0 before the first Run
	locked bool         // Run has locked its goroutine to its thread
	exits  atomic.Uint64
	exit   engine.Exit

	bpInjected atomic.Uint64 // int3s whose #BP the VMM delivered (emulationFailure)
	byReason   engine.ExitCounters
	kstats     *vcpuStats // KVM's binary stats for this vCPU, nil if none
}

func (c *vcpu) setup(e *kvmEngine, id int) error {
	run, err := unix.Mmap(c.fd, 0, e.mmapSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return ioctlErr("mmap kvm_run", err)
	}
	c.run = run
	c.word = runWord(run)
	c.kstats = openStats(c.fd)
	if c.syncRegs {
		// Ask KVM to store the registers into kvm_run at every exit, so
		// Exit.RIP costs nothing. kvm_dirty_regs stays 0: we never load
		// registers through kvm_run.
		binary.LittleEndian.PutUint64(run[runValidRegs:], kvmSyncX86Regs)
	}
	// With the in-kernel LAPIC, KVM starts every vCPU but 0 in
	// wait-for-SIPI, where KVM_RUN blocks. klp-kvm's boot protocol starts
	// every vCPU at the kernel entry, so all are made runnable; on the PC
	// platform Linux starts its APs itself with INIT/SIPI.
	if !c.pc || id == 0 {
		if err := retryIntr0(func() error { return kvm.SetMPState(uintptr(c.fd), &kvm.MPState{State: kvm.MPStateRunnable}) }); err != nil {
			return ioctlErr("KVM_SET_MP_STATE", err)
		}
	}
	cpuid := vcpuCPUID(e.cpuid, id)
	if c.pc {
		pcCPUID(cpuid)
	}
	if err := retryIntr0(func() error {
		return kvm.SetCPUID2(uintptr(c.fd), &kvm.CPUID{Nent: uint32(len(cpuid)), Entries: cpuid})
	}); err != nil {
		return ioctlErr("KVM_SET_CPUID2", err)
	}
	// After SET_CPUID2: KVM accepts EXTD only once the guest's CPUID has
	// x2APIC. A PC-platform vCPU keeps the LAPIC's reset state (xAPIC);
	// Linux switches to x2APIC itself when it wants to.
	if c.pc {
		return nil
	}
	if err := c.SetMSRs([]engine.MSR{{Index: engine.MSRApicBase, Data: x2apicBase(id)}}); err != nil {
		return err
	}
	return nil
}

func (c *vcpu) ID() int { return c.id }

// TSCHz implements engine.TSCClock: the rate KVM_GET_TSC_KHZ reported when
// the vCPU was created (kHz precision: a few ppm at most), or 0 where KVM
// has no KVM_CAP_GET_TSC_KHZ.
func (c *vcpu) TSCHz() (uint64, error) { return c.tscKHz * 1000, nil }

// Regs returns the registers. Right after an exit (until SetRegs, or
// anything else that may change what KVM_GET_REGS reads) they are the
// copy KVM stored into kvm_run's sync area at that exit (store_regs, on
// every return of KVM_RUN when kvm_valid_regs asks for the registers,
// the -EINTR of a kick included): the same __get_regs() as
// KVM_GET_REGS, without the ioctl. The pause reads every vCPU's
// registers at the pause point, and on nested KVM each ioctl is a
// vcpu_load/vcpu_put in an emulated L1.
func (c *vcpu) Regs() (engine.Regs, error) {
	if c.syncFresh {
		c.mu.RLock()
		r, ok := syncedRegs(c.run)
		c.mu.RUnlock()
		if ok {
			return r, nil
		}
	}
	r, err := kvm.GetRegs(uintptr(c.fd))
	if err != nil {
		return engine.Regs{}, ioctlErr("KVM_GET_REGS", err)
	}
	// engine.Regs and gokvm's kvm.Regs are both struct kvm_regs with the
	// same field names, so Go converts one into the other directly.
	return engine.Regs(*r), nil
}

func (c *vcpu) SetRegs(r engine.Regs) error {
	c.syncFresh = false
	k := kvm.Regs(r)
	return ioctlErr("KVM_SET_REGS", kvm.SetRegs(uintptr(c.fd), &k))
}

func (c *vcpu) Sregs() (engine.Sregs, error) {
	s, err := kvm.GetSregs(uintptr(c.fd))
	if err != nil {
		return engine.Sregs{}, ioctlErr("KVM_GET_SREGS", err)
	}
	return fromKvmSregs(s), nil
}

func (c *vcpu) SetSregs(s engine.Sregs) error {
	c.syncFresh = false // conservatively: only KVM_SET_REGS changes what Regs reads
	k := toKvmSregs(&s)
	return ioctlErr("KVM_SET_SREGS", kvm.SetSregs(uintptr(c.fd), &k))
}

func (c *vcpu) GetMSRs(m []engine.MSR) error { return c.msrs("KVM_GET_MSRS", ioctlGetMSRs, m) }
func (c *vcpu) SetMSRs(m []engine.MSR) error { return c.msrs("KVM_SET_MSRS", ioctlSetMSRs, m) }

// msrs checks the processed count, which KVM returns instead of an error:
// it stops at the first MSR it does not know or refuses.
func (c *vcpu) msrs(op string, req uintptr, m []engine.MSR) error {
	c.syncFresh = false // conservatively, as SetSregs
	if len(m) == 0 {
		return nil
	}
	n, errno := msrIoctl(c.fd, req, m)
	if errno != 0 {
		return &Error{Op: op, Errno: errno}
	}
	if n < len(m) {
		return &Error{Op: op, Kind: ErrInvalid, Detail: fmt.Sprintf("MSR %#x refused (%d of %d processed)", m[n].Index, n, len(m))}
	}
	return nil
}

// Run enters the guest until the next exit user space must handle.
//
// The pause protocol: Kick sets kvm_run.immediate_exit, then signals the
// thread. KVM_RUN returns -EINTR either at entry (immediate_exit) or when
// the signal arrives mid-run; both are the pause point and end Run with
// ExitIntr, after immediate_exit is cleared. An EINTR with immediate_exit
// clear came from a signal that is not a kick (the Go runtime's own
// preemption signal): the guest asked for nothing, so KVM_RUN is entered
// again. No kick is lost: Kick sets the flag before signalling, and the
// check-and-clear is atomic, so a kick is either seen here or makes the
// next KVM_RUN return at once.
func (c *vcpu) Run() (*engine.Exit, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		return nil, &Error{Op: "KVM_RUN", Kind: ErrClosed}
	}
	if !c.locked {
		// The tid Kick signals must stay this goroutine's: lock once, for
		// the vCPU's life (the contract asks callers to be locked already;
		// this makes it so).
		runtime.LockOSThread()
		c.locked = true
	}
	c.tid.Store(int32(unix.Gettid()))
	c.clockResume()
	for {
		c.syncFresh = false
		errno := runIoctl(c.fd)
		c.syncFresh = c.syncRegs && (errno == 0 || errno == unix.EINTR)
		if errno == unix.EINTR || (errno == 0 && binary.LittleEndian.Uint32(c.run[runExitReason:]) == kvmExitIntr) {
			if !clearImmediateExit(c.word) {
				continue
			}
			if c.clockCtrl {
				c.pausedAt = time.Now()
			}
			c.exits.Add(1)
			c.byReason.Count(engine.ExitIntr)
			c.exit = engine.Exit{Reason: engine.ExitIntr}
			if c.syncRegs {
				c.exit.RIP = binary.LittleEndian.Uint64(c.run[runSyncRIP:])
			}
			return &c.exit, nil
		}
		if errno == unix.EAGAIN {
			continue // KVM asks for a retry (e.g. a memslot update raced the entry)
		}
		if errno != 0 {
			return nil, &Error{Op: "KVM_RUN", Errno: errno, Detail: fmt.Sprintf("vCPU %d", c.id)}
		}
		if err := decodeExit(c.run, c.syncRegs, &c.exit); err != nil {
			return nil, err
		}
		if isEmulationFailure(c.run) {
			injected, err := c.emulationFailure()
			if err != nil {
				return nil, err
			}
			if injected {
				continue // counted in Stats.Handled, not an exit of Run
			}
		}
		if c.exit.Reason == engine.ExitShutdown && !c.syncRegs {
			if r, err := c.Regs(); err == nil {
				c.exit.RIP = r.RIP
			}
		}
		c.exits.Add(1)
		c.byReason.Count(c.exit.Reason)
		return &c.exit, nil
	}
}

// emulationFailure handles KVM_INTERNAL_ERROR_EMULATION: an int3 at RIP
// gets its #BP delivered (injected true: re-enter the guest); anything
// else is left in c.exit as an internal error naming RIP and the
// instruction bytes. The decision is decideEmulationFailure's.
func (c *vcpu) emulationFailure() (injected bool, err error) {
	r, err := c.Regs()
	if err != nil {
		return false, err
	}
	insn := emulationInsn(c.run)
	var fetchErr error
	if insn == nil {
		insn, fetchErr = c.fetch(r.RIP, maxInsnLen)
	}
	if decideEmulationFailure(insn) == emulInjectBP {
		if err := c.injectBP(r); err != nil {
			return false, err
		}
		return true, nil
	}
	c.exit.RIP = r.RIP
	c.exit.Message = emulationFailureMessage(r.RIP, insn, fetchErr, c.exit.Message)
	return false, nil
}

// injectBP delivers #BP for the int3 at r.RIP. KVM_SET_REGS comes first:
// it drops any pending exception, so the other order would lose the #BP.
func (c *vcpu) injectBP(r engine.Regs) error {
	var ev vcpuEvents
	if errno := vcpuEventsIoctl(c.fd, ioctlGetVCPUEvts, &ev); errno != 0 {
		return &Error{Op: "KVM_GET_VCPU_EVENTS", Errno: errno}
	}
	if ev.Exception.Injected != 0 || ev.Exception.Pending != 0 {
		return &Error{Op: "inject #BP", Kind: ErrInvalid,
			Detail: fmt.Sprintf("int3 at RIP %#x while exception %d is already pending", r.RIP, ev.Exception.Nr)}
	}
	r.RIP = bpEntryRIP(r.RIP, c.softExcSkips)
	if err := c.SetRegs(r); err != nil {
		return err
	}
	ev.Exception.Injected, ev.Exception.Nr = 1, vectorBP
	ev.Exception.HasErrorCode, ev.Exception.ErrorCode = 0, 0
	ev.Flags = 0 // leave NMI pending, SIPI, shadow, SMM and payload state as they are
	if errno := vcpuEventsIoctl(c.fd, ioctlSetVCPUEvts, &ev); errno != 0 {
		return &Error{Op: "KVM_SET_VCPU_EVENTS", Errno: errno, Detail: "inject #BP"}
	}
	c.bpInjected.Add(1)
	return nil
}

// fetch reads up to n bytes of guest code at linear address gva through the
// vCPU's current translation (KVM_TRANSLATE, page by page), stopping at
// the first page that is not mapped or not RAM. In 64-bit mode CS.base is
// 0, so RIP is the linear address.
func (c *vcpu) fetch(gva uint64, n int) ([]byte, error) {
	var out []byte
	for len(out) < n {
		t := translation{LinearAddress: gva}
		if errno := translateIoctl(c.fd, &t); errno != 0 {
			return out, &Error{Op: "KVM_TRANSLATE", Errno: errno, Detail: fmt.Sprintf("%#x", gva)}
		}
		if t.Valid == 0 {
			return out, &Error{Op: "KVM_TRANSLATE", Kind: ErrInvalid, Detail: fmt.Sprintf("%#x not mapped", gva)}
		}
		gpa := t.PhysicalAddress
		if gpa >= uint64(len(c.mem)) {
			return out, &Error{Op: "fetch", Kind: ErrInvalid, Detail: fmt.Sprintf("%#x maps to %#x, outside RAM", gva, gpa)}
		}
		k := min(uint64(n-len(out)), 4096-gva%4096, uint64(len(c.mem))-gpa)
		out = append(out, c.mem[gpa:gpa+k]...)
		gva += k
	}
	return out, nil
}

// clockLongPause is how long the guest must have been stopped for Run
// to tell it so (clockResume).
const clockLongPause = 100 * time.Millisecond

// clockResume runs before the guest is entered again after a kick: when
// it was stopped for clockLongPause or more, KVM_KVMCLOCK_CTRL tells a
// guest using kvmclock that the host stopped it (PVCLOCK_GUEST_STOPPED,
// which the guest sees at its next clock update), so that its
// soft-lockup watchdog does not fire; QEMU does the same when a VM is
// continued. A short pause (a live-patch switch: microseconds to
// milliseconds) is far below any watchdog and skips the ioctl, which on
// nested KVM costs a vcpu_load/vcpu_put in an emulated L1 (it was issued
// at every kick before). EINVAL means the guest has no kvmclock page:
// nothing to tell.
func (c *vcpu) clockResume() {
	if c.pausedAt.IsZero() {
		return
	}
	long := time.Since(c.pausedAt) >= clockLongPause
	c.pausedAt = time.Time{}
	if long {
		_, _ = ioctl(c.fd, ioctlKVMClockCtrl, 0) // best effort; EINVAL is the usual answer for our guest
	}
}

// Kick makes a Run in progress return ExitIntr, or the next Run if none is.
func (c *vcpu) Kick() {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		return
	}
	setImmediateExit(c.word)
	if tid := c.tid.Load(); tid != 0 {
		// ESRCH (thread gone) is fine: the flag alone stops the next Run.
		_ = unix.Tgkill(os.Getpid(), int(tid), kickSignal)
	}
}

func (c *vcpu) Stats() engine.Stats {
	s := engine.Stats{Exits: c.exits.Load(), ByReason: c.byReason.Snapshot()}
	if n := c.bpInjected.Load(); n != 0 {
		s.Handled = map[string]uint64{"int3_bp_injected": n}
	}
	c.mu.RLock()
	if !c.closed {
		s.Kernel = c.kstats.read()
	}
	c.mu.RUnlock()
	return s
}

// Close ends the vCPU. A Run in progress is kicked out first (it holds the
// read lock for the length of KVM_RUN).
func (c *vcpu) Close() error {
	c.Kick()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	var first error
	c.kstats.close()
	if c.run != nil {
		if err := unix.Munmap(c.run); err != nil {
			first = ioctlErr("munmap kvm_run", err)
		}
		c.run, c.word = nil, nil
	}
	if err := unix.Close(c.fd); err != nil && first == nil {
		first = ioctlErr("close vCPU", err)
	}
	return first
}
