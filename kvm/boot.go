package kvm

import (
	"encoding/binary"

	"klp-kvm/guestkernel/layout"
	"klp-kvm/kvm/engine"
)

// Boot protocol constants; guestkernel/include/boot_info.h is the other half
// of this contract (bootinfo_test.go checks the two agree). The address
// layout (kernel map, patch area, boot_info's place, BOOT_LOW_END) is
// package guestkernel/layout's.
const (
	BootInfoMagic      = 0x31544f4f42504c4b // "KLPBOOT1"
	BootInfoVersion    = 1
	BootInfoCmdlineMax = 1024

	PortCOM1     = 0x3f8
	PortCOM2     = 0x2f8
	PortPowerOff = 0xf4

	// APICBusHz is the x2APIC timer's input clock on both engines (KVM's
	// emulated APIC bus runs at 1 GHz, and emu matches it).
	APICBusHz = 1_000_000_000
)

// Low-memory layout of the host's boot structures.
const (
	gdtAddr      = 0x3000
	tssAddr      = 0x4000
	pml4Addr     = 0x10000
	pdptLowAddr  = 0x11000
	pdptHighAddr = 0x12000
	pdHighAddr   = 0x13000
	pdLowAddr    = 0x20000 // one page per GiB of RAM identity-mapped
	maxRAM       = 64 << 30
)

// Segment selectors of the boot GDT.
const (
	selCode = 0x08
	selData = 0x10
	selTSS  = 0x18
)

// BootInfo mirrors struct boot_info in guestkernel/include/boot_info.h.
type BootInfo struct {
	Magic         uint64
	Version       uint32
	Size          uint32
	NrCPUs        uint32
	Flags         uint32
	RAMSize       uint64
	PatchAreaPhys uint64
	PatchAreaSize uint64
	PatchAreaVirt uint64
	APICBusHz     uint64
	TSCHz         uint64
	CmdlineLen    uint32
	Reserved      uint32
	Cmdline       [BootInfoCmdlineMax]byte
}

// bootInfoSize is sizeof(struct boot_info).
const bootInfoSize = 8 + 4*4 + 8*6 + 4*2 + BootInfoCmdlineMax

// Layout is the guest-physical layout of a machine.
type Layout struct {
	RAMSize       uint64
	PatchAreaPhys uint64
	PatchAreaSize uint64
	CR3           uint64
}

// encode writes b in the C layout (little endian, no padding: every field
// is naturally aligned).
func (b *BootInfo) encode(dst []byte) {
	le := binary.LittleEndian
	le.PutUint64(dst[0:], b.Magic)
	le.PutUint32(dst[8:], b.Version)
	le.PutUint32(dst[12:], b.Size)
	le.PutUint32(dst[16:], b.NrCPUs)
	le.PutUint32(dst[20:], b.Flags)
	le.PutUint64(dst[24:], b.RAMSize)
	le.PutUint64(dst[32:], b.PatchAreaPhys)
	le.PutUint64(dst[40:], b.PatchAreaSize)
	le.PutUint64(dst[48:], b.PatchAreaVirt)
	le.PutUint64(dst[56:], b.APICBusHz)
	le.PutUint64(dst[64:], b.TSCHz)
	le.PutUint32(dst[72:], b.CmdlineLen)
	le.PutUint32(dst[76:], b.Reserved)
	copy(dst[80:80+BootInfoCmdlineMax], b.Cmdline[:])
}

// guestTSCHz is the TSC rate the guest is told (boot_info.tsc_hz): the
// engine's, or 0 ("unknown": the guest keeps time by its timer tick) for
// an engine that cannot say. Telling a guest a wrong rate makes every
// TSC-based clock in it run fast or slow by the ratio.
func guestTSCHz(c engine.VCPU) (uint64, error) {
	tc, ok := c.(engine.TSCClock)
	if !ok {
		return 0, nil
	}
	return tc.TSCHz()
}

// setupBoot writes the boot structures into low RAM: page tables, GDT, TSS
// and boot_info. ram must be zeroed below layout.BootLowEnd.
func setupBoot(ram []byte, l Layout, nrCPUs int, cmdline string, tscHz uint64) error {
	size := uint64(len(ram))
	if size > maxRAM {
		return errorf("set up boot", ErrConfig, "RAM %d MiB above the %d GiB the boot page tables map", size>>20, maxRAM>>30)
	}
	if len(cmdline) >= BootInfoCmdlineMax {
		return errorf("set up boot", ErrConfig, "command line is %d bytes, at most %d", len(cmdline), BootInfoCmdlineMax-1)
	}
	le := binary.LittleEndian
	pte := func(addr, val uint64) { le.PutUint64(ram[addr:], val) }
	const rw = ptePresent | pteWrite

	// Identity map of all RAM with 2 MiB pages.
	gib := (size + 1<<30 - 1) >> 30
	pte(pml4Addr+0*8, pdptLowAddr|rw)
	for g := uint64(0); g < gib; g++ {
		pd := pdLowAddr + g*0x1000
		if pd+0x1000 > layout.BootLowEnd {
			return errorf("set up boot", ErrConfig, "too much RAM for the boot page tables")
		}
		pte(pdptLowAddr+g*8, pd|rw)
		for i := uint64(0); i < 512; i++ {
			pa := g<<30 | i<<21
			if pa >= size {
				break
			}
			pte(pd+i*8, pa|rw|pteHuge)
		}
	}
	// High half: PML4[511] -> PDPT; PDPT[510] covers layout.KernelMapVirt..
	// (1 GiB): entries 0..255 map physical 0..512 MiB for the kernel
	// (layout.KernelMapSize), 256.. the patch area.
	pte(pml4Addr+511*8, pdptHighAddr|rw)
	pte(pdptHighAddr+510*8, pdHighAddr|rw)
	for i := uint64(0); i < layout.KernelMapSize>>21 && i<<21 < size; i++ {
		pte(pdHighAddr+i*8, i<<21|rw|pteHuge)
	}
	for off := uint64(0); off < l.PatchAreaSize; off += 1 << 21 {
		i := (layout.PatchAreaVirt - layout.KernelMapVirt + off) >> 21
		pte(pdHighAddr+i*8, (l.PatchAreaPhys+off)|rw|pteHuge)
	}

	// GDT: null, 64-bit code, data, 64-bit TSS (16 bytes).
	le.PutUint64(ram[gdtAddr+0x08:], 0x00af9a000000ffff)
	le.PutUint64(ram[gdtAddr+0x10:], 0x00cf92000000ffff)
	le.PutUint64(ram[gdtAddr+0x18:], tssDescLow(tssAddr, 103))
	le.PutUint64(ram[gdtAddr+0x20:], tssAddr>>32)
	le.PutUint16(ram[tssAddr+102:], 104) // I/O map base past the limit: no I/O bitmap

	bi := BootInfo{
		Magic: BootInfoMagic, Version: BootInfoVersion, Size: bootInfoSize,
		NrCPUs: uint32(nrCPUs), RAMSize: size,
		PatchAreaPhys: l.PatchAreaPhys, PatchAreaSize: l.PatchAreaSize, PatchAreaVirt: layout.PatchAreaVirt,
		APICBusHz: APICBusHz, TSCHz: tscHz, CmdlineLen: uint32(len(cmdline)),
	}
	copy(bi.Cmdline[:], cmdline)
	bi.encode(ram[layout.BootInfoPhys:])
	return nil
}

// tssDescLow is the low 8 bytes of a 64-bit available TSS descriptor.
func tssDescLow(base, limit uint64) uint64 {
	d := limit & 0xffff
	d |= (base & 0xffffff) << 16
	d |= 0x89 << 40 // present, type 9 (available 64-bit TSS)
	d |= (limit >> 16 & 0xf) << 48
	d |= (base >> 24 & 0xff) << 56
	return d
}

// bootSregs is the long-mode state every vCPU starts in.
func bootSregs(s *engine.Sregs) {
	code := engine.Segment{Base: 0, Limit: 0xffffffff, Selector: selCode, Type: 11, Present: 1, S: 1, L: 1, G: 1}
	data := engine.Segment{Base: 0, Limit: 0xffffffff, Selector: selData, Type: 3, Present: 1, S: 1, DB: 1, G: 1}
	s.CS = code
	s.DS, s.ES, s.FS, s.GS, s.SS = data, data, data, data, data
	s.TR = engine.Segment{Base: tssAddr, Limit: 103, Selector: selTSS, Type: 11, Present: 1}
	s.LDT = engine.Segment{Type: 2, Present: 1, Unusable: 1}
	s.GDT = engine.DTable{Base: gdtAddr, Limit: 0x27}
	s.IDT = engine.DTable{Base: 0, Limit: 0}
	s.CR0 = 0x80050033 // PG | AM | WP | NE | ET | MP | PE
	s.CR3 = pml4Addr
	s.CR4 = 0x20   // PAE
	s.EFER = 0xd00 // NXE | LMA | LME
}

// bootRegs is the register state of vCPU id at entry.
func bootRegs(entry uint64, id int) engine.Regs {
	return engine.Regs{RIP: entry, RDI: layout.BootInfoPhys, RSI: uint64(id), RFLAGS: 0x2}
}

// apicBaseMSR enables the LAPIC in x2APIC mode (EN | EXTD, BSP on cpu 0).
func apicBaseMSR(id int) uint64 {
	v := uint64(0xfee00000 | 1<<11 | 1<<10)
	if id == 0 {
		v |= 1 << 8
	}
	return v
}
