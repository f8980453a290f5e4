package hw

import (
	"encoding/binary"
	"fmt"

	"github.com/bobuhiro11/gokvm/kvm"

	"klp-kvm/kvm/engine"
)

// This file mirrors the parts of the kernel's KVM ABI (include/uapi/linux/
// kvm.h) that gokvm's kvm package does not cover, or covers in a way we
// cannot use: KVM_RUN (gokvm swallows EINTR, which is our pause point),
// KVM_KVMCLOCK_CTRL, KVM_GET/SET_MSRS (gokvm drops the processed count), and
// the layout of the mmap'd struct kvm_run. Tests check every number here
// against the kernel's values.

// Sizes of the kernel structs whose size is encoded in an ioctl number.
// abi_unsafe_test.go checks the Go mirrors (ours and gokvm's) against them.
const (
	sizeofKvmRegs     = 144 // struct kvm_regs
	sizeofKvmSregs    = 312 // struct kvm_sregs
	sizeofKvmMsrs     = 8   // struct kvm_msrs header (nmsrs, pad); entries follow
	sizeofKvmMsrEntry = 16  // struct kvm_msr_entry
	sizeofVCPUEvents  = 64  // struct kvm_vcpu_events (x86)
	sizeofTranslation = 24  // struct kvm_translation
	sizeofPITConfig   = 64  // struct kvm_pit_config
)

// The ioctls we issue ourselves, built with gokvm's _IO/_IOWR helpers from
// the request number and argument size of the kernel header. The others go
// through gokvm's wrappers.
var (
	ioctlRun          = kvm.IIO(0x80)                      // KVM_RUN
	ioctlGetMSRs      = kvm.IIOWR(0x88, sizeofKvmMsrs)     // KVM_GET_MSRS
	ioctlSetMSRs      = kvm.IIOW(0x89, sizeofKvmMsrs)      // KVM_SET_MSRS
	ioctlKVMClockCtrl = kvm.IIO(0xad)                      // KVM_KVMCLOCK_CTRL
	ioctlSetTSCKHz    = kvm.IIO(0xa2)                      // KVM_SET_TSC_KHZ (vCPU)
	ioctlGetTSCKHz    = kvm.IIO(0xa3)                      // KVM_GET_TSC_KHZ (vCPU)
	ioctlGetStatsFD   = kvm.IIO(0xce)                      // KVM_GET_STATS_FD (vCPU)
	ioctlTranslate    = kvm.IIOWR(0x85, sizeofTranslation) // KVM_TRANSLATE
	ioctlGetVCPUEvts  = kvm.IIOR(0x9f, sizeofVCPUEvents)   // KVM_GET_VCPU_EVENTS
	ioctlSetVCPUEvts  = kvm.IIOW(0xa0, sizeofVCPUEvents)   // KVM_SET_VCPU_EVENTS
	ioctlCreatePIT2   = kvm.IIOW(0x77, sizeofPITConfig)    // KVM_CREATE_PIT2 (VM)
)

// pitConfig mirrors struct kvm_pit_config (64 bytes). gokvm's CreatePIT2
// passes flags 0, which leaves port 0x61 (the PIT's channel-2 gate and
// output, which Linux's PIT calibration polls) to user space;
// KVM_PIT_SPEAKER_DUMMY makes KVM serve it.
type pitConfig struct {
	Flags uint32
	Pad   [15]uint32
}

// KVM_PIT_SPEAKER_DUMMY: KVM emulates the speaker port 0x61 itself.
const kvmPITSpeakerDummy = 1

// vcpuEvents mirrors struct kvm_vcpu_events (arch/x86/include/uapi/asm/
// kvm.h) field for field, 64 bytes; abi_unsafe_test.go checks the size and
// offsets. Only the exception is ever changed: the rest is read with
// KVM_GET_VCPU_EVENTS and written back as read, and flags stays 0 so that
// KVM leaves the NMI-pending, SIPI, shadow, SMM and payload state alone.
type vcpuEvents struct {
	Exception struct {
		Injected     uint8
		Nr           uint8
		HasErrorCode uint8
		Pending      uint8
		ErrorCode    uint32
	}
	Interrupt struct {
		Injected uint8
		Nr       uint8
		Soft     uint8
		Shadow   uint8
	}
	NMI struct {
		Injected uint8
		Pending  uint8
		Masked   uint8
		Pad      uint8
	}
	SIPIVector uint32
	Flags      uint32
	SMI        struct {
		SMM          uint8
		Pending      uint8
		SMMInsideNMI uint8
		LatchedInit  uint8
	}
	TripleFault struct {
		Pending uint8
	}
	Reserved            [26]uint8
	ExceptionHasPayload uint8
	ExceptionPayload    uint64
}

// translation mirrors struct kvm_translation (24 bytes): KVM_TRANSLATE
// walks the vCPU's current page tables for a linear address.
type translation struct {
	LinearAddress   uint64
	PhysicalAddress uint64
	Valid           uint8
	Writeable       uint8
	Usermode        uint8
	Pad             [5]uint8
}

// KVM_API_VERSION: the only version the kernel has returned since 2.6.22.
const kvmAPIVersion = 12

// Capabilities we check (KVM_CAP_*).
const (
	capIRQChip       = 0   // KVM_CAP_IRQCHIP
	capUserMemory    = 3   // KVM_CAP_USER_MEMORY
	capSetTSSAddr    = 4   // KVM_CAP_SET_TSS_ADDR
	capExtCPUID      = 7   // KVM_CAP_EXT_CPUID
	capTSCControl    = 60  // KVM_CAP_TSC_CONTROL: KVM_SET_TSC_KHZ works (TSC scaling)
	capGetTSCKHz     = 61  // KVM_CAP_GET_TSC_KHZ
	capSyncRegs      = 74  // KVM_CAP_SYNC_REGS (returns the KVM_SYNC_X86_* mask)
	capKVMClockCtrl  = 76  // KVM_CAP_KVMCLOCK_CTRL
	capImmediateExit = 136 // KVM_CAP_IMMEDIATE_EXIT
)

// KVM_SYNC_X86_REGS: kvm_run.s.regs is filled at every exit when set in
// kvm_run.kvm_valid_regs, which gives Exit.RIP without a KVM_GET_REGS.
const kvmSyncX86Regs = 1

// Exit reasons (KVM_EXIT_*) found in kvm_run.exit_reason.
const (
	kvmExitUnknown       = 0
	kvmExitException     = 1
	kvmExitIO            = 2
	kvmExitHypercall     = 3
	kvmExitDebug         = 4
	kvmExitHLT           = 5
	kvmExitMMIO          = 6
	kvmExitIRQWindowOpen = 7
	kvmExitShutdown      = 8
	kvmExitFailEntry     = 9
	kvmExitIntr          = 10
	kvmExitInternalError = 17
	kvmExitSystemEvent   = 24
)

// kvm_run.io.direction values.
const (
	kvmExitIOIn  = 0 // KVM_EXIT_IO_IN
	kvmExitIOOut = 1 // KVM_EXIT_IO_OUT
)

// syncedRegs reads struct kvm_regs from kvm_run's sync area (s.regs,
// which KVM fills at each exit when kvm_valid_regs has KVM_SYNC_X86_REGS);
// ok is false for a mapping too small to hold it.
func syncedRegs(run []byte) (r engine.Regs, ok bool) {
	if len(run) < runSyncRegs+sizeofKvmRegs {
		return r, false
	}
	le := binary.LittleEndian
	f := []*uint64{&r.RAX, &r.RBX, &r.RCX, &r.RDX, &r.RSI, &r.RDI, &r.RSP, &r.RBP,
		&r.R8, &r.R9, &r.R10, &r.R11, &r.R12, &r.R13, &r.R14, &r.R15, &r.RIP, &r.RFLAGS}
	for i, p := range f {
		*p = le.Uint64(run[runSyncRegs+8*i:])
	}
	return r, true
}

// Byte offsets into struct kvm_run (the mmap'd vCPU page). The exit union
// starts at 32; the members we read are listed individually because the
// page is parsed from bytes rather than cast, so a wrong kernel value can
// be bounds-checked instead of trusted.
const (
	runImmediateExit = 1     // __u8 immediate_exit: KVM_RUN returns -EINTR at once while set
	runExitReason    = 8     // __u32 exit_reason: KVM_EXIT_*
	runIODirection   = 32    // io.direction: KVM_EXIT_IO_IN/OUT
	runIOSize        = 33    // io.size: 1, 2 or 4 bytes per element
	runIOPort        = 34    // io.port (__u16)
	runIOCount       = 36    // io.count (__u32): elements, >1 for string I/O
	runIODataOffset  = 40    // io.data_offset (__u64): data, from the start of kvm_run
	runMMIOPhysAddr  = 32    // mmio.phys_addr (__u64)
	runMMIOData      = 40    // mmio.data[8]
	runMMIOLen       = 48    // mmio.len (__u32)
	runMMIOIsWrite   = 52    // mmio.is_write (__u8)
	runFailReason    = 32    // fail_entry.hardware_entry_failure_reason (__u64)
	runFailCPU       = 40    // fail_entry.cpu (__u32)
	runIntSuberror   = 32    // internal.suberror (__u32): KVM_INTERNAL_ERROR_*
	runIntNdata      = 36    // internal.ndata (__u32)
	runIntData       = 40    // internal.data[16] (__u64)
	runHWExitReason  = 32    // hw.hardware_exit_reason (__u64), KVM_EXIT_UNKNOWN
	runExceptionNr   = 32    // ex.exception (__u32), KVM_EXIT_EXCEPTION
	runExceptionErr  = 36    // ex.error_code (__u32)
	runSystemType    = 32    // system_event.type (__u32)
	runValidRegs     = 0x120 // __u64 kvm_valid_regs: KVM_SYNC_X86_* the kernel stores at exit
	runDirtyRegs     = 0x128 // __u64 kvm_dirty_regs: must stay 0 (we never sync regs in)
	runSyncRegs      = 0x130 // s.regs: struct kvm_regs, when kvm_valid_regs has KVM_SYNC_X86_REGS
	runSyncRIP       = runSyncRegs + 16*8
	runMinSize       = runSyncRegs + sizeofKvmRegs // a smaller mapping cannot be a kvm_run
)

// KVM_INTERNAL_ERROR_EMULATION and its kvm_run layout (the emulation_failure
// member of the exit union): data[0] is flags; with
// KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES, data[1..2] hold
// insn_size (one byte) and insn_bytes[15].
const (
	kvmInternalErrorEmulation = 1
	kvmEmulFlagInsnBytes      = 1
	runEmulFlags              = runIntData     // emulation_failure.flags (__u64)
	runEmulInsnSize           = runIntData + 8 // emulation_failure.insn_size (__u8)
	runEmulInsnBytes          = runIntData + 9 // emulation_failure.insn_bytes[15]
	maxInsnLen                = 15
)

// KVM_INTERNAL_ERROR_* suberrors, named in messages.
var internalSuberrors = map[uint32]string{
	1: "emulation failure",
	2: "exception while delivering an exception (simultaneous #PF/#GP)",
	3: "exit during event delivery",
	4: "unexpected exit reason",
}

// decodeExit turns the kvm_run page after a KVM_RUN into ex. IO and MMIO
// data alias the page, so filling them for IN/MMIO-read completes the
// instruction on the next KVM_RUN. Every offset and length taken from the
// page is bounds-checked.
func decodeExit(run []byte, syncRegs bool, ex *engine.Exit) error {
	if len(run) < runMinSize {
		return &Error{Op: "decode kvm_run", Kind: ErrABI, Detail: fmt.Sprintf("mapping of %d bytes", len(run))}
	}
	le := binary.LittleEndian
	*ex = engine.Exit{}
	if syncRegs {
		ex.RIP = le.Uint64(run[runSyncRIP:])
	}
	reason := le.Uint32(run[runExitReason:])
	switch reason {
	case kvmExitIO:
		size := uint64(run[runIOSize])
		count := uint64(le.Uint32(run[runIOCount:]))
		off := le.Uint64(run[runIODataOffset:])
		if size != 1 && size != 2 && size != 4 {
			return &Error{Op: "decode KVM_EXIT_IO", Kind: ErrABI, Detail: fmt.Sprintf("size %d", size)}
		}
		n := size * count
		if count == 0 || off > uint64(len(run)) || n > uint64(len(run))-off {
			return &Error{Op: "decode KVM_EXIT_IO", Kind: ErrABI,
				Detail: fmt.Sprintf("%d x %d bytes at offset %#x in a %d-byte kvm_run", count, size, off, len(run))}
		}
		ex.Reason = engine.ExitIO
		ex.IO = engine.IOExit{
			Port:  le.Uint16(run[runIOPort:]),
			Size:  uint8(size),
			Out:   run[runIODirection] == kvmExitIOOut,
			Count: uint32(count),
			Data:  run[off : off+n : off+n],
		}
	case kvmExitMMIO:
		n := le.Uint32(run[runMMIOLen:])
		if n == 0 || n > 8 {
			return &Error{Op: "decode KVM_EXIT_MMIO", Kind: ErrABI, Detail: fmt.Sprintf("len %d", n)}
		}
		ex.Reason = engine.ExitMMIO
		ex.MMIO = engine.MMIOExit{
			Addr:  le.Uint64(run[runMMIOPhysAddr:]),
			Write: run[runMMIOIsWrite] != 0,
			Data:  run[runMMIOData : runMMIOData+int(n) : runMMIOData+int(n)],
		}
	case kvmExitHLT:
		ex.Reason = engine.ExitHLT
	case kvmExitShutdown:
		ex.Reason = engine.ExitShutdown
		ex.Message = "KVM_EXIT_SHUTDOWN: triple fault or shutdown condition"
	case kvmExitIntr:
		ex.Reason = engine.ExitIntr
	case kvmExitDebug:
		// A breakpoint armed by SetBreakpoints (#DB, vector 1): the
		// instruction at pc has not run.
		ex.Reason = engine.ExitDebug
		ex.RIP = le.Uint64(run[runDebugPC:])
		if exc := le.Uint32(run[runDebugException:]); exc != 1 {
			ex.Reason = engine.ExitInternalError
			ex.Message = fmt.Sprintf("KVM_EXIT_DEBUG: exception %d at %#x (dr6 %#x)", exc, ex.RIP, le.Uint64(run[runDebugDR6:]))
		}
	case kvmExitFailEntry:
		ex.Reason = engine.ExitInternalError
		ex.Message = fmt.Sprintf("KVM_EXIT_FAIL_ENTRY: hardware entry failure reason %#x on host cpu %d (invalid guest state: check CR0/CR4/EFER and the segments)",
			le.Uint64(run[runFailReason:]), le.Uint32(run[runFailCPU:]))
	case kvmExitInternalError:
		sub := le.Uint32(run[runIntSuberror:])
		nd := le.Uint32(run[runIntNdata:])
		name := internalSuberrors[sub]
		if name == "" {
			name = "unknown"
		}
		msg := fmt.Sprintf("KVM_EXIT_INTERNAL_ERROR: suberror %d (%s)", sub, name)
		if nd > 16 {
			nd = 16 // the array has 16 entries, whatever ndata says
		}
		for i := uint32(0); i < nd; i++ {
			if i == 0 {
				msg += ", data"
			}
			msg += fmt.Sprintf(" %#x", le.Uint64(run[runIntData+8*int(i):]))
		}
		ex.Reason = engine.ExitInternalError
		ex.Message = msg
	case kvmExitException:
		ex.Reason = engine.ExitInternalError
		ex.Message = fmt.Sprintf("KVM_EXIT_EXCEPTION: exception %d, error code %#x",
			le.Uint32(run[runExceptionNr:]), le.Uint32(run[runExceptionErr:]))
	case kvmExitUnknown:
		ex.Reason = engine.ExitInternalError
		ex.Message = fmt.Sprintf("KVM_EXIT_UNKNOWN: hardware exit reason %#x", le.Uint64(run[runHWExitReason:]))
	case kvmExitSystemEvent:
		ex.Reason = engine.ExitShutdown
		ex.Message = fmt.Sprintf("KVM_EXIT_SYSTEM_EVENT: type %d", le.Uint32(run[runSystemType:]))
	default:
		ex.Reason = engine.ExitInternalError
		ex.Message = fmt.Sprintf("unhandled KVM exit reason %d", reason)
	}
	return nil
}

// toKvmSregs and fromKvmSregs convert between the engine's and gokvm's
// mirrors of struct kvm_sregs (same layout, different field names).
func toKvmSregs(s *engine.Sregs) kvm.Sregs {
	return kvm.Sregs{
		CS: toKvmSeg(s.CS), DS: toKvmSeg(s.DS), ES: toKvmSeg(s.ES), FS: toKvmSeg(s.FS),
		GS: toKvmSeg(s.GS), SS: toKvmSeg(s.SS), TR: toKvmSeg(s.TR), LDT: toKvmSeg(s.LDT),
		GDT: kvm.Descriptor{Base: s.GDT.Base, Limit: s.GDT.Limit},
		IDT: kvm.Descriptor{Base: s.IDT.Base, Limit: s.IDT.Limit},
		CR0: s.CR0, CR2: s.CR2, CR3: s.CR3, CR4: s.CR4, CR8: s.CR8,
		EFER: s.EFER, ApicBase: s.APICBase, InterruptBitmap: s.InterruptBitmap,
	}
}

func fromKvmSregs(k *kvm.Sregs) engine.Sregs {
	return engine.Sregs{
		CS: fromKvmSeg(k.CS), DS: fromKvmSeg(k.DS), ES: fromKvmSeg(k.ES), FS: fromKvmSeg(k.FS),
		GS: fromKvmSeg(k.GS), SS: fromKvmSeg(k.SS), TR: fromKvmSeg(k.TR), LDT: fromKvmSeg(k.LDT),
		GDT: engine.DTable{Base: k.GDT.Base, Limit: k.GDT.Limit},
		IDT: engine.DTable{Base: k.IDT.Base, Limit: k.IDT.Limit},
		CR0: k.CR0, CR2: k.CR2, CR3: k.CR3, CR4: k.CR4, CR8: k.CR8,
		EFER: k.EFER, APICBase: k.ApicBase, InterruptBitmap: k.InterruptBitmap,
	}
}

func toKvmSeg(s engine.Segment) kvm.Segment {
	return kvm.Segment{Base: s.Base, Limit: s.Limit, Selector: s.Selector, Typ: s.Type,
		Present: s.Present, DPL: s.DPL, DB: s.DB, S: s.S, L: s.L, G: s.G, AVL: s.AVL, Unusable: s.Unusable}
}

func fromKvmSeg(s kvm.Segment) engine.Segment {
	return engine.Segment{Base: s.Base, Limit: s.Limit, Selector: s.Selector, Type: s.Typ,
		Present: s.Present, DPL: s.DPL, DB: s.DB, S: s.S, L: s.L, G: s.G, AVL: s.AVL, Unusable: s.Unusable}
}

// CPUID bits we set on top of KVM_GET_SUPPORTED_CPUID.
const (
	cpuidX2APIC = 1 << 21 // leaf 1 ECX: x2APIC; without it KVM refuses APIC base EXTD and
	// strips the LAPIC timer's periodic mode from what the guest can program
)

// vcpuCPUID returns the supported CPUID table adjusted for vCPU id: x2APIC
// advertised, and the APIC ids in leaves 1, 0xB and 0x1F made this vCPU's
// (KVM does not fill them in; a guest reading its id from CPUID would
// otherwise see 0 on every vCPU).
func vcpuCPUID(supported []kvm.CPUIDEntry2, id int) []kvm.CPUIDEntry2 {
	out := make([]kvm.CPUIDEntry2, len(supported))
	copy(out, supported)
	for i := range out {
		e := &out[i]
		switch e.Function {
		case 1:
			e.Ecx |= cpuidX2APIC
			e.Ebx = e.Ebx&0x00ffffff | uint32(id&0xff)<<24
		case 0xb, 0x1f:
			e.Edx = uint32(id)
		}
	}
	return out
}

// x2APIC base MSR value for vCPU id: default base 0xfee00000, EN (bit 11),
// EXTD (bit 10, x2APIC mode), BSP (bit 8) on vCPU 0.
func x2apicBase(id int) uint64 {
	v := uint64(0xfee00000) | 1<<11 | 1<<10
	if id == 0 {
		v |= 1 << 8
	}
	return v
}

// Guest-physical addresses KVM needs for its own use on Intel (real-mode
// TSS, 3 pages, and the EPT identity-map page). They sit just below 4 GiB
// like QEMU's, so RAM from 0 must end below them.
const (
	identityMapAddr = 0xfffbc000
	tssAddr         = 0xfffbd000
)
