// Package bzimage reads a Linux x86 bzImage and writes the zero page
// (struct boot_params) for Linux's 64-bit boot protocol
// (Documentation/arch/x86/boot.rst). It is pure: no VM, no I/O.
//
// A kernel image is untrusted input: Parse checks every header field the
// loader relies on against the file and the protocol, and fails with an
// *Error naming the field's offset, never a panic.
package bzimage

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// Offsets and values of the boot protocol.
const (
	HeaderOffset  = 0x1f1      // struct setup_header within the file and the zero page
	MagicOffset   = 0x202      // setup_header.header
	Magic         = 0x53726448 // "HdrS"
	BootFlag      = 0xaa55     // setup_header.boot_flag
	MinVersion    = 0x020c     // 2.12: xloadflags, the 64-bit entry is declared
	Entry64Offset = 0x200      // the 64-bit entry point, from the protected-mode kernel's start
	SectorSize    = 512
	ZeroPageSize  = 4096 // sizeof(struct boot_params)

	// LOADED_HIGH in loadflags: the protected-mode kernel runs at 1 MiB or above.
	LoadedHigh = 1 << 0
	// CAN_USE_HEAP in loadflags.
	CanUseHeap = 1 << 7

	// xloadflags bits.
	XLFKernel64           = 1 << 0 // XLF_KERNEL_64: the 64-bit entry at +0x200 exists
	XLFCanBeLoadedAbove4G = 1 << 1 // XLF_CAN_BE_LOADED_ABOVE_4G

	// TypeOfLoaderUndefined is the type_of_loader of a boot loader without
	// an assigned id (boot.rst: 0xff).
	TypeOfLoaderUndefined = 0xff

	maxSetupSects = 64 // the real-mode part is at most 32 KiB (boot.rst: setup code < 0x8000)
)

// SetupHeader mirrors struct setup_header of
// arch/x86/include/uapi/asm/bootparam.h field for field (packed, 123 bytes
// up to kernel_info_offset, protocol 2.15), as it sits at HeaderOffset in
// the file and in the zero page.
type SetupHeader struct {
	SetupSects          uint8
	RootFlags           uint16
	Syssize             uint32
	RAMSize             uint16
	VidMode             uint16
	RootDev             uint16
	BootFlag            uint16
	Jump                uint16
	Header              uint32
	Version             uint16
	RealmodeSwtch       uint32
	StartSysSeg         uint16
	KernelVersion       uint16
	TypeOfLoader        uint8
	Loadflags           uint8
	SetupMoveSize       uint16
	Code32Start         uint32
	RamdiskImage        uint32
	RamdiskSize         uint32
	BootsectKludge      uint32
	HeapEndPtr          uint16
	ExtLoaderVer        uint8
	ExtLoaderType       uint8
	CmdLinePtr          uint32
	InitrdAddrMax       uint32
	KernelAlignment     uint32
	RelocatableKernel   uint8
	MinAlignment        uint8
	Xloadflags          uint16
	CmdlineSize         uint32
	HardwareSubarch     uint32
	HardwareSubarchData uint64
	PayloadOffset       uint32
	PayloadLength       uint32
	SetupData           uint64
	PrefAddress         uint64
	InitSize            uint32
	HandoverOffset      uint32
	KernelInfoOffset    uint32
}

// SetupHeaderSize is the packed size of SetupHeader.
const SetupHeaderSize = 0x26c - HeaderOffset

// Offsets of the fields the validation names, for errors.
const (
	offSetupSects    = 0x1f1
	offSyssize       = 0x1f4
	offBootFlag      = 0x1fe
	offVersion       = 0x206
	offLoadflags     = 0x211
	offInitrdAddrMax = 0x22c
	offKernelAlign   = 0x230
	offRelocatable   = 0x234
	offXloadflags    = 0x236
	offCmdlineSize   = 0x238
	offPayloadOffset = 0x248
	offPrefAddress   = 0x258
	offInitSize      = 0x260
)

// Image is a parsed bzImage.
type Image struct {
	Header SetupHeader
	// Kernel is the protected-mode kernel: the file after the real-mode
	// setup sectors. It is loaded as is at LoadAddr (it decompresses
	// itself).
	Kernel []byte
	// Version is the kernel_version string of the real-mode header, "" if
	// the image has none.
	Version string
}

// IsBzImage reports whether b looks like a bzImage (boot_flag and "HdrS"),
// without validating it: the loader's kind detection (ELF or bzImage).
func IsBzImage(b []byte) bool {
	return len(b) >= MagicOffset+4 &&
		binary.LittleEndian.Uint16(b[offBootFlag:]) == BootFlag &&
		binary.LittleEndian.Uint32(b[MagicOffset:]) == Magic
}

// Parse decodes and validates a bzImage.
func Parse(b []byte) (*Image, error) {
	if len(b) < HeaderOffset+SetupHeaderSize {
		return nil, formatErr(0, "file of %d bytes is shorter than the setup header (%d)", len(b), HeaderOffset+SetupHeaderSize)
	}
	var h SetupHeader
	if err := binary.Read(bytes.NewReader(b[HeaderOffset:HeaderOffset+SetupHeaderSize]), binary.LittleEndian, &h); err != nil {
		return nil, formatErr(HeaderOffset, "setup header: %v", err)
	}
	if h.BootFlag != BootFlag {
		return nil, formatErr(offBootFlag, "boot_flag %#x, want %#x", h.BootFlag, BootFlag)
	}
	if h.Header != Magic {
		return nil, formatErr(MagicOffset, "header magic %#x, want \"HdrS\"", h.Header)
	}
	if h.Version < MinVersion {
		return nil, &Error{Op: "parse", Kind: ErrUnsupported, Offset: offVersion,
			Detail: fmt.Sprintf("boot protocol %d.%02d, want at least 2.12", h.Version>>8, h.Version&0xff)}
	}
	if h.Xloadflags&XLFKernel64 == 0 {
		return nil, &Error{Op: "parse", Kind: ErrUnsupported, Offset: offXloadflags,
			Detail: fmt.Sprintf("xloadflags %#x: no 64-bit entry (XLF_KERNEL_64)", h.Xloadflags)}
	}
	if h.Loadflags&LoadedHigh == 0 {
		return nil, formatErr(offLoadflags, "loadflags %#x: not LOADED_HIGH (a zImage)", h.Loadflags)
	}
	sects := int(h.SetupSects)
	if sects == 0 {
		sects = 4 // boot.rst: 0 means 4
	}
	if sects > maxSetupSects {
		return nil, formatErr(offSetupSects, "setup_sects %d, at most %d", sects, maxSetupSects)
	}
	setupEnd := (sects + 1) * SectorSize
	if setupEnd >= len(b) {
		return nil, formatErr(offSetupSects, "setup_sects %d: the setup code (%d bytes) leaves no kernel in a %d-byte file", sects, setupEnd, len(b))
	}
	kernel := b[setupEnd:]
	// syssize is the protected-mode code's size in 16-byte paragraphs;
	// the file may be padded (signatures), never shorter.
	if sys := uint64(h.Syssize) * 16; sys > uint64(len(kernel)) {
		return nil, formatErr(offSyssize, "syssize %d paragraphs (%d bytes) beyond the %d bytes after the setup code", h.Syssize, sys, len(kernel))
	}
	if uint64(len(kernel)) < Entry64Offset+16 {
		return nil, formatErr(offSyssize, "protected-mode kernel of %d bytes has no 64-bit entry at %#x", len(kernel), Entry64Offset)
	}
	if h.PayloadLength != 0 {
		end := uint64(h.PayloadOffset) + uint64(h.PayloadLength)
		if end > uint64(len(kernel)) {
			return nil, formatErr(offPayloadOffset, "payload %#x+%#x beyond the %d-byte protected-mode kernel", h.PayloadOffset, h.PayloadLength, len(kernel))
		}
	}
	if h.RelocatableKernel > 1 {
		return nil, formatErr(offRelocatable, "relocatable_kernel %d, want 0 or 1", h.RelocatableKernel)
	}
	if a := h.KernelAlignment; a < 4096 || a&(a-1) != 0 || a > 1<<30 {
		return nil, formatErr(offKernelAlign, "kernel_alignment %#x: want a power of two from 4 KiB to 1 GiB", a)
	}
	if h.MinAlignment < 12 || h.MinAlignment > 30 || uint32(1)<<h.MinAlignment > h.KernelAlignment {
		return nil, formatErr(offKernelAlign+5, "min_alignment 2^%d against kernel_alignment %#x", h.MinAlignment, h.KernelAlignment)
	}
	if p := h.PrefAddress; p < 1<<20 || p > 1<<32 || p%uint64(uint32(1)<<h.MinAlignment) != 0 {
		return nil, formatErr(offPrefAddress, "pref_address %#x: want an aligned address from 1 MiB to 4 GiB", p)
	}
	if uint64(h.InitSize) < uint64(len(kernel)) || h.InitSize > 1<<30 {
		return nil, formatErr(offInitSize, "init_size %#x: want at least the protected-mode kernel's %#x bytes and at most 1 GiB", h.InitSize, len(kernel))
	}
	if h.CmdlineSize == 0 || h.CmdlineSize > 1<<20 {
		return nil, formatErr(offCmdlineSize, "cmdline_size %d", h.CmdlineSize)
	}
	if h.InitrdAddrMax < 1<<20 {
		return nil, formatErr(offInitrdAddrMax, "initrd_addr_max %#x below 1 MiB", h.InitrdAddrMax)
	}
	img := &Image{Header: h, Kernel: kernel}
	img.Version = kernelVersion(b, h, setupEnd)
	return img, nil
}

// kernelVersion reads the NUL-terminated version string kernel_version
// points at (offset + 0x200 in the file), bounded to the setup code.
func kernelVersion(b []byte, h SetupHeader, setupEnd int) string {
	if h.KernelVersion == 0 {
		return ""
	}
	off := int(h.KernelVersion) + 0x200
	if off >= setupEnd {
		return ""
	}
	s := b[off:setupEnd]
	if i := bytes.IndexByte(s, 0); i >= 0 {
		s = s[:i]
	}
	if len(s) > 256 {
		s = s[:256]
	}
	for _, c := range s {
		if c < 0x20 || c > 0x7e {
			return ""
		}
	}
	return string(s)
}

// LoadAddr is where the protected-mode kernel goes: pref_address, which
// a relocatable kernel may leave for any kernel_alignment-aligned address
// at or above minAddr. The kernel needs InitSize bytes free from there.
func (img *Image) LoadAddr(minAddr uint64) uint64 {
	h := img.Header
	if h.PrefAddress >= minAddr || h.RelocatableKernel == 0 {
		return h.PrefAddress
	}
	a := uint64(h.KernelAlignment)
	return (minAddr + a - 1) &^ (a - 1)
}
