package guestkernel

import (
	"encoding/binary"
	"fmt"
)

// Go mirrors of include/klp_abi.h (boot_info.h is mirrored, written and
// layout-checked by package kvm, which is what writes it). The layouts are
// little-endian byte offsets; TestCLayout compiles the headers with gcc and
// checks every size and offset below against the C compiler's.

// cstring returns p up to its first NUL (all of p if there is none).
func cstring(p []byte) string {
	for i, c := range p {
		if c == 0 {
			return string(p[:i])
		}
	}
	return string(p)
}

// klp_abi.h
const (
	GuestABIMagic   = 0x31304942414c504b // "KLPABI01"
	GuestABIVersion = 1
	GuestABISize    = 144

	SysfsMagic       = 0x53465359534c504b // "KLPSYSFS"
	SysfsVersion     = 1
	SysfsMaxPatches  = 32
	SysfsMaxObjs     = 64
	SysfsMaxFuncs    = 2048
	SysfsNameLen     = 64
	SysfsFuncNameLen = 56

	SysfsHeaderSize = 48
	SysfsPatchSize  = 80
	SysfsObjSize    = 80
	SysfsFuncSize   = 64
	SysfsStateSize  = SysfsHeaderSize + SysfsMaxPatches*SysfsPatchSize + SysfsMaxObjs*SysfsObjSize + SysfsMaxFuncs*SysfsFuncSize

	PatchListMagic     = 0x5453494c50504c4b // "KLPPLIST"
	PatchListVersion   = 1
	PatchListHeader    = 32
	PatchListEntrySize = 16
	PatchListMax       = SysfsMaxPatches
	PatchListSize      = PatchListHeader + PatchListMax*PatchListEntrySize

	IRQRegsSize = 22 * 8

	MaxCPUs     = 16
	MaxTasks    = 128
	TaskNameLen = 16
	StackSize   = 16384
)

// Task states (the state field of a guest task).
const (
	TaskUnused   = 0
	TaskRunning  = 1
	TaskSleeping = 2
	TaskDead     = 3
)

// Offsets within struct klp_guest_abi.
const (
	offABIMagic        = 0
	offABIVersion      = 8
	offABISize         = 12
	offABITaskTable    = 16
	offABITaskStride   = 24
	offABITaskCapacity = 28
	offABINrTasks      = 32
	offABINameLen      = 36
	offABIOffState     = 40
	offABIOffPid       = 44
	offABIOffName      = 48
	offABIOffSavedRSP  = 52
	offABIOffSavedRBP  = 56
	offABIOffSavedRIP  = 60
	offABIOffStackBase = 64
	offABIOffStackSize = 68
	offABIOffOnCPU     = 72
	offABIOffCPU       = 76
	offABICPUCurrent   = 80
	offABINrCPUs       = 88
	offABIMaxCPUs      = 92
	offABIIRQFrameRet  = 96
	offABIIRQRegsOff   = 104
	offABIIRQRegsSize  = 108
	offABISwitchTo     = 112
	offABISwitchToSize = 120
	offABIBootNS       = 128
	offABITicks        = 136
)

// Offsets within struct klp_sysfs_state and its entries.
const (
	offSSMagic      = 0
	offSSVersion    = 8
	offSSSize       = 12
	offSSSeq        = 16
	offSSMaxPatches = 20
	offSSMaxObjs    = 24
	offSSMaxFuncs   = 28
	offSSNrPatches  = 32
	offSSNrObjs     = 36
	offSSNrFuncs    = 40
	offSSGeneration = 44
	offSSPatches    = SysfsHeaderSize
	offSSObjs       = offSSPatches + SysfsMaxPatches*SysfsPatchSize
	offSSFuncs      = offSSObjs + SysfsMaxObjs*SysfsObjSize

	offSPName       = 0
	offSPEnabled    = 64
	offSPTransition = 65
	offSPForce      = 66
	offSPReplace    = 67
	offSPStackOrder = 68
	offSPFirstObj   = 72
	offSPNrObjs     = 76

	offSOName      = 0
	offSOPatched   = 64
	offSOFirstFunc = 68
	offSONrFuncs   = 72

	offSFName   = 0
	offSFSympos = 56
)

// Offsets within struct klp_patch_list and its entries.
const (
	offPLMagic      = 0
	offPLVersion    = 8
	offPLSize       = 12
	offPLSeq        = 16
	offPLMaxPatches = 20
	offPLNrPatches  = 24
	offPLTransition = 28
	offPLPatches    = PatchListHeader

	offPLEPatch  = 0
	offPLEStates = 8
)

// IRQRegs is struct klp_irq_regs: what the interrupt entry saved.
type IRQRegs struct {
	R15, R14, R13, R12, R11, R10, R9, R8 uint64
	RBP, RDI, RSI, RDX, RCX, RBX, RAX    uint64
	Vector, ErrorCode                    uint64
	RIP, CS, RFLAGS, RSP, SS             uint64
}

func decodeIRQRegs(p []byte) IRQRegs {
	var w [22]uint64
	for i := range w {
		w[i] = binary.LittleEndian.Uint64(p[i*8:])
	}
	return IRQRegs{w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7], w[8], w[9], w[10], w[11], w[12], w[13], w[14],
		w[15], w[16], w[17], w[18], w[19], w[20], w[21]}
}

// GuestABI is a decoded, validated struct klp_guest_abi.
type GuestABI struct {
	Addr         uint64 // where it was read from
	Version      uint32
	TaskTable    uint64
	TaskStride   uint32
	TaskCapacity uint32
	NrTasks      uint32 // clamped to TaskCapacity
	NameLen      uint32
	OffState     uint32
	OffPid       uint32
	OffName      uint32
	OffSavedRSP  uint32
	OffSavedRBP  uint32
	OffSavedRIP  uint32
	OffStackBase uint32
	OffStackSize uint32
	OffOnCPU     uint32
	OffCPU       uint32
	CPUCurrent   uint64
	NrCPUs       uint32 // clamped to MaxCPUs
	MaxCPUs      uint32
	IRQFrameRet  uint64
	IRQRegsOff   uint32
	IRQRegsSize  uint32
	SwitchTo     uint64
	SwitchToSize uint64
	BootNS       uint64
	Ticks        uint64
}

// Limits the host applies to guest-provided ABI values, whatever the guest says.
const (
	maxTaskStride   = 1 << 16
	maxTaskCapacity = 1 << 16
	maxNameLen      = 256
	maxABICPUs      = 1024
	maxTaskTable    = 16 << 20 // bytes the host reads for one task enumeration
)

// DecodeGuestABI parses and validates a klp_guest_abi image read at addr.
func DecodeGuestABI(p []byte, addr uint64) (*GuestABI, error) {
	a := new(GuestABI)
	if err := decodeGuestABI(p, addr, a); err != nil {
		return nil, err
	}
	return a, nil
}

// decodeGuestABI is DecodeGuestABI into *out (a View's, reused: no
// allocation); *out is written only when the image is valid.
func decodeGuestABI(p []byte, addr uint64, out *GuestABI) error {
	const op = "decode klp_guest_abi"
	if len(p) < GuestABISize {
		return errorf(op, ErrFormat, addr, "%d bytes, want %d", len(p), GuestABISize)
	}
	le := binary.LittleEndian
	u32 := func(o int) uint32 { return le.Uint32(p[o:]) }
	u64 := func(o int) uint64 { return le.Uint64(p[o:]) }
	if m := u64(offABIMagic); m != GuestABIMagic {
		return errorf(op, ErrFormat, addr, "magic %#x, want %#x", m, uint64(GuestABIMagic))
	}
	if v := u32(offABIVersion); v != GuestABIVersion {
		return errorf(op, ErrFormat, addr, "version %d, this host knows %d", v, GuestABIVersion)
	}
	if s := u32(offABISize); s < GuestABISize {
		return errorf(op, ErrFormat, addr, "size %d, want >= %d", s, GuestABISize)
	}
	a := GuestABI{
		Addr: addr, Version: u32(offABIVersion), TaskTable: u64(offABITaskTable), TaskStride: u32(offABITaskStride),
		TaskCapacity: u32(offABITaskCapacity), NrTasks: u32(offABINrTasks), NameLen: u32(offABINameLen),
		OffState: u32(offABIOffState), OffPid: u32(offABIOffPid), OffName: u32(offABIOffName),
		OffSavedRSP: u32(offABIOffSavedRSP), OffSavedRBP: u32(offABIOffSavedRBP), OffSavedRIP: u32(offABIOffSavedRIP),
		OffStackBase: u32(offABIOffStackBase), OffStackSize: u32(offABIOffStackSize), OffOnCPU: u32(offABIOffOnCPU),
		OffCPU: u32(offABIOffCPU), CPUCurrent: u64(offABICPUCurrent), NrCPUs: u32(offABINrCPUs),
		MaxCPUs: u32(offABIMaxCPUs), IRQFrameRet: u64(offABIIRQFrameRet), IRQRegsOff: u32(offABIIRQRegsOff),
		IRQRegsSize: u32(offABIIRQRegsSize), SwitchTo: u64(offABISwitchTo), SwitchToSize: u64(offABISwitchToSize),
		BootNS: u64(offABIBootNS), Ticks: u64(offABITicks),
	}
	if err := a.validate(); err != nil {
		return &Error{Op: op, Kind: ErrFormat, Addr: addr, Detail: err.Error()}
	}
	if a.NrTasks > a.TaskCapacity {
		a.NrTasks = a.TaskCapacity
	}
	if a.NrCPUs > a.MaxCPUs {
		a.NrCPUs = a.MaxCPUs
	}
	*out = a
	return nil
}

func (a *GuestABI) validate() error {
	if a.TaskStride == 0 || a.TaskStride > maxTaskStride {
		return fmt.Errorf("task stride %d", a.TaskStride)
	}
	if a.TaskCapacity == 0 || a.TaskCapacity > maxTaskCapacity {
		return fmt.Errorf("task capacity %d", a.TaskCapacity)
	}
	if uint64(a.TaskStride)*uint64(a.TaskCapacity) > maxTaskTable {
		return fmt.Errorf("task table of %d x %d bytes exceeds %d", a.TaskCapacity, a.TaskStride, maxTaskTable)
	}
	if a.TaskTable+uint64(a.TaskStride)*uint64(a.TaskCapacity) < a.TaskTable {
		return fmt.Errorf("task table %#x wraps", a.TaskTable)
	}
	if a.NameLen == 0 || a.NameLen > maxNameLen {
		return fmt.Errorf("name length %d", a.NameLen)
	}
	fields := []struct {
		name string
		off  uint32
		size uint32
	}{
		{"state", a.OffState, 4}, {"pid", a.OffPid, 4}, {"name", a.OffName, a.NameLen},
		{"saved_rsp", a.OffSavedRSP, 8}, {"saved_rbp", a.OffSavedRBP, 8}, {"saved_rip", a.OffSavedRIP, 8},
		{"stack_base", a.OffStackBase, 8}, {"stack_size", a.OffStackSize, 8}, {"on_cpu", a.OffOnCPU, 4},
		{"cpu", a.OffCPU, 4},
	}
	for _, f := range fields {
		if uint64(f.off)+uint64(f.size) > uint64(a.TaskStride) {
			return fmt.Errorf("task field %s at %d+%d beyond stride %d", f.name, f.off, f.size, a.TaskStride)
		}
	}
	if a.MaxCPUs == 0 || a.MaxCPUs > maxABICPUs {
		return fmt.Errorf("max cpus %d", a.MaxCPUs)
	}
	if a.IRQRegsSize != IRQRegsSize {
		return fmt.Errorf("irq regs size %d, want %d", a.IRQRegsSize, IRQRegsSize)
	}
	return nil
}
