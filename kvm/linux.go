package kvm

import (
	"encoding/binary"
	"time"

	"klp-kvm/kvm/bzimage"
	"klp-kvm/kvm/engine"
	"klp-kvm/kvm/mptable"
)

// Linux guests: an unmodified x86-64 Linux bzImage booted through Linux's
// 64-bit boot protocol (Documentation/arch/x86/boot.rst) on the PC platform
// of engine.PCPlatform. The guest-physical layout below 1 MiB:
//
//	0x00500  GDT: null, null, __BOOT_CS (0x10), __BOOT_DS (0x18), TSS (0x20)
//	0x00580  TSS (104 bytes; only so that TR is valid on VT-x)
//	0x07000  boot_params (the zero page)
//	0x09000  PML4, 0x0a000 PDPT, 0x0b000.. 4 PDs: 0-4 GiB identity, 2 MiB pages
//	0x20000  command line
//	0x9fc00  reserved to 1 MiB; the MP table at 0xf0000 (in the BIOS
//	         area Linux scans for the floating pointer)
//
// The protected-mode kernel goes to its pref_address (16 MiB for Debian's)
// with init_size free above it; the initrd to the top of RAM.
const (
	linuxGDT       = 0x500
	linuxTSS       = 0x580
	linuxZeroPage  = 0x7000
	linuxPML4      = 0x9000
	linuxPDPT      = 0xa000
	linuxPD        = 0xb000 // 4 pages
	linuxCmdline   = 0x20000
	linuxCmdMax    = 0x10000 // our bound on top of the kernel's cmdline_size
	linuxLowRAMEnd = 0x9fc00 // end of conventional memory (639 KiB)
	linuxMPTable   = 0xf0000
	linuxHighRAM   = 1 << 20
	// LinuxMaxRAM keeps RAM below the PCI hole: the IOAPIC (0xfec00000),
	// the LAPIC (0xfee00000) and KVM's own pages (kvm/hw's
	// identityMapAddr, 0xfffbc000) live under 4 GiB.
	LinuxMaxRAM = 3 << 30
	// LinuxDefaultMemMiB holds Debian's kernel (its init_size is ~64 MiB
	// above 16 MiB) plus a modest initramfs, unpacked.
	LinuxDefaultMemMiB = 512
	// LinuxDefaultPatchAreaMiB is the RAM at the top of a Linux guest's
	// memory that the guest does not own (Config.PatchAreaMiB): the e820
	// map calls it reserved, so Linux neither allocates nor direct-maps
	// it, and the host puts live patches and their page-table pages
	// there (package linuxlive). 16 MiB holds hundreds of small patches.
	LinuxDefaultPatchAreaMiB = 16

	linuxSelCode = 0x10 // __BOOT_CS
	linuxSelData = 0x18 // __BOOT_DS
	linuxSelTSS  = 0x20

	// ISA IRQs of the UARTs (PC convention).
	irqCOM1 = 4
	irqCOM2 = 3
)

// DefaultLinuxCmdline is the command line a Linux guest gets when
// Config.Cmdline is empty: the console on COM1; panic=-1 turns a panic
// into a reboot and reboot=k makes every reboot (and the poweroff that
// falls back to it without ACPI) go through the i8042 reset line, which
// stops the machine; see docs/linux-guests.md for the measured rest.
const DefaultLinuxCmdline = "console=ttyS0 reboot=k panic=-1 pci=off"

// ErrEngineNoLinux is the detail of the error New returns for a bzImage on
// an engine without engine.PCPlatform (emu).
const errEngineNoLinux = "the emu engine runs only klp-kvm's own kernel; use --engine kvm for a Linux bzImage"

// IsLinuxKernel reports whether image is a Linux bzImage (as opposed to
// klp-kvm's own ELF guest kernel): the kernel kind New detects.
func IsLinuxKernel(image []byte) bool { return bzimage.IsBzImage(image) }

// linuxPlan is where everything of a Linux boot goes: pure, so that the
// layout is tested without a VM.
type linuxPlan struct {
	img        *bzimage.Image
	load       uint64 // protected-mode kernel
	initrd     uint64 // 0 without one
	initrdSize uint64
	cmdline    []byte // NUL-terminated
	patchArea  uint64 // start of the host's patch area (its end is the end of RAM)
	e820       []bzimage.E820Entry
	zeroPage   [bzimage.ZeroPageSize]byte
}

func planLinux(img *bzimage.Image, ramSize, patchArea uint64, cmdline string, initrdSize uint64) (*linuxPlan, error) {
	const op = "boot linux"
	p := &linuxPlan{img: img, initrdSize: initrdSize}
	if patchArea%(2<<20) != 0 || patchArea > ramSize/4 {
		return nil, errorf(op, ErrConfig, "patch area of %#x bytes: want a multiple of 2 MiB, at most a quarter of RAM", patchArea)
	}
	// The guest's RAM ends where the host's patch area starts; 2 MiB
	// aligned, so Linux's direct map of its RAM never reaches into it.
	guestRAM := ramSize - patchArea
	p.patchArea = guestRAM
	max := uint64(img.Header.CmdlineSize)
	if max > linuxCmdMax-1 {
		max = linuxCmdMax - 1
	}
	if uint64(len(cmdline)) > max {
		return nil, errorf(op, ErrConfig, "command line is %d bytes, the kernel takes at most %d", len(cmdline), max)
	}
	p.cmdline = append([]byte(cmdline), 0)
	p.load = img.LoadAddr(linuxHighRAM)
	kend := p.load + uint64(img.Header.InitSize)
	if p.load < linuxHighRAM || kend > guestRAM {
		return nil, errorf(op, ErrConfig, "the kernel needs %#x-%#x (init_size %d MiB at %#x) inside the %d MiB of guest RAM",
			p.load, kend, img.Header.InitSize>>20, p.load, guestRAM>>20)
	}
	if initrdSize > 0 {
		top := guestRAM
		if lim := uint64(img.Header.InitrdAddrMax) + 1; lim < top {
			top = lim
		}
		if initrdSize > top {
			return nil, errorf(op, ErrConfig, "initrd of %d MiB does not fit below %#x", initrdSize>>20, top)
		}
		p.initrd = (top - initrdSize) &^ 0xfff
		if p.initrd < kend {
			return nil, errorf(op, ErrConfig, "initrd of %d MiB does not fit between the kernel's end %#x and %#x: give the guest more RAM",
				initrdSize>>20, kend, top)
		}
	}
	p.e820 = []bzimage.E820Entry{
		{Addr: 0, Size: linuxLowRAMEnd, Type: bzimage.E820RAM},
		{Addr: linuxLowRAMEnd, Size: linuxHighRAM - linuxLowRAMEnd, Type: bzimage.E820Reserved},
		{Addr: linuxHighRAM, Size: guestRAM - linuxHighRAM, Type: bzimage.E820RAM},
	}
	if patchArea > 0 {
		p.e820 = append(p.e820, bzimage.E820Entry{Addr: guestRAM, Size: patchArea, Type: bzimage.E820Reserved})
	}
	zp, err := img.ZeroPage(bzimage.BootParams{CmdLinePtr: linuxCmdline, RamdiskImage: p.initrd, RamdiskSize: initrdSize, E820: p.e820})
	if err != nil {
		return nil, &Error{Op: op, Kind: ErrConfig, Err: err}
	}
	p.zeroPage = zp
	return p, nil
}

// write puts the plan into RAM (zeroed below 1 MiB): kernel, initrd,
// zero page, command line, MP table, page tables and GDT.
func (p *linuxPlan) write(ram []byte, cpus int, initrd []byte) error {
	copy(ram[p.load:], p.img.Kernel)
	if p.initrdSize > 0 {
		copy(ram[p.initrd:], initrd)
	}
	copy(ram[linuxZeroPage:], p.zeroPage[:])
	copy(ram[linuxCmdline:], p.cmdline)
	if _, err := mptable.Build(ram[linuxMPTable:linuxHighRAM], linuxMPTable, cpus); err != nil {
		return &Error{Op: "boot linux", Kind: ErrConfig, Err: err}
	}
	writeLinuxPageTables(ram)
	writeLinuxGDT(ram)
	return nil
}

// writeLinuxPageTables identity-maps 0-4 GiB with 2 MiB pages: the boot
// protocol asks for the kernel, the zero page and the command line to be
// mapped; Linux builds its own tables right after entry.
func writeLinuxPageTables(ram []byte) {
	le := binary.LittleEndian
	const rw = ptePresent | pteWrite
	le.PutUint64(ram[linuxPML4:], linuxPDPT|rw)
	for g := uint64(0); g < 4; g++ {
		pd := linuxPD + g*0x1000
		le.PutUint64(ram[linuxPDPT+g*8:], pd|rw)
		for i := uint64(0); i < 512; i++ {
			le.PutUint64(ram[pd+i*8:], (g<<30|i<<21)|rw|pteHuge)
		}
	}
}

// writeLinuxGDT writes the boot GDT: flat 64-bit code at __BOOT_CS, flat
// data at __BOOT_DS, and a TSS.
func writeLinuxGDT(ram []byte) {
	le := binary.LittleEndian
	le.PutUint64(ram[linuxGDT+linuxSelCode:], 0x00af9b000000ffff) // present, DPL0, code exec/read accessed, L, G
	le.PutUint64(ram[linuxGDT+linuxSelData:], 0x00cf93000000ffff) // present, DPL0, data r/w accessed, D/B, G
	le.PutUint64(ram[linuxGDT+linuxSelTSS:], tssDescLow(linuxTSS, 103))
	le.PutUint16(ram[linuxTSS+102:], 104) // no I/O bitmap
}

// linuxSregs is vCPU 0's state at the 64-bit entry: long mode, paging on
// the identity map, __BOOT_CS/__BOOT_DS.
func linuxSregs(s *engine.Sregs) {
	code := engine.Segment{Limit: 0xffffffff, Selector: linuxSelCode, Type: 11, Present: 1, S: 1, L: 1, G: 1}
	data := engine.Segment{Limit: 0xffffffff, Selector: linuxSelData, Type: 3, Present: 1, S: 1, DB: 1, G: 1}
	s.CS = code
	s.DS, s.ES, s.FS, s.GS, s.SS = data, data, data, data, data
	s.TR = engine.Segment{Base: linuxTSS, Limit: 103, Selector: linuxSelTSS, Type: 11, Present: 1}
	s.LDT = engine.Segment{Type: 2, Present: 1, Unusable: 1}
	s.GDT = engine.DTable{Base: linuxGDT, Limit: linuxSelTSS + 16 - 1}
	s.IDT = engine.DTable{}
	s.CR0 = 0x80000011 // PG | ET | PE
	s.CR3 = linuxPML4
	s.CR4 = 0x20   // PAE
	s.EFER = 0x500 // LMA | LME
}

// linuxRegs: RIP at the 64-bit entry, RSI the zero page, interrupts off.
func linuxRegs(load uint64) engine.Regs {
	return engine.Regs{RIP: load + bzimage.Entry64Offset, RSI: linuxZeroPage, RFLAGS: 0x2}
}

// newLinux builds a machine that boots a Linux bzImage.
func newLinux(cfg Config) (*Machine, error) {
	const op = "new machine"
	img, err := bzimage.Parse(cfg.Kernel)
	if err != nil {
		return nil, &Error{Op: "load kernel", Kind: ErrBadKernel, Err: err}
	}
	if cfg.MemMiB == 0 {
		cfg.MemMiB = LinuxDefaultMemMiB
	}
	if cfg.Cmdline == "" {
		cfg.Cmdline = DefaultLinuxCmdline
	}
	if cfg.PatchAreaMiB == 0 {
		cfg.PatchAreaMiB = LinuxDefaultPatchAreaMiB
	}
	switch {
	case cfg.CPUs < 1 || cfg.CPUs > 64:
		return nil, errorf(op, ErrConfig, "%d vCPUs: want 1..64", cfg.CPUs)
	case cfg.MemMiB < 64 || uint64(cfg.MemMiB)<<20 > LinuxMaxRAM:
		return nil, errorf(op, ErrConfig, "%d MiB of RAM for a Linux guest: want 64..%d (RAM must end below the PCI hole)", cfg.MemMiB, LinuxMaxRAM>>20)
	}
	if cfg.PatchAreaMiB < 0 {
		cfg.PatchAreaMiB = 0 // none: the whole RAM is the guest's
	}
	size := uint64(cfg.MemMiB) << 20
	plan, err := planLinux(img, size, uint64(cfg.PatchAreaMiB)<<20, cfg.Cmdline, uint64(len(cfg.Initrd)))
	if err != nil {
		return nil, err
	}
	ram, err := allocRAM(size)
	if err != nil {
		return nil, err
	}
	m := &Machine{cfg: cfg, ram: ram, layout: Layout{RAMSize: size, CR3: linuxPML4}, doneCh: make(chan struct{}), ranCh: make(chan struct{}),
		linux: &linuxInfo{version: img.Version, patchArea: plan.patchArea}}
	fail := func(err error) (*Machine, error) {
		m.Close()
		return nil, err
	}
	if err := plan.write(ram, cfg.CPUs, cfg.Initrd); err != nil {
		return fail(err)
	}
	m.bus.pc = &pcDevices{rtc: newRTC(time.Now)}
	if err := m.newVM(op); err != nil {
		return fail(err)
	}
	pc, ok := m.vm.(engine.PCPlatform)
	if !ok {
		return fail(errorf(op, ErrConfig, "%s", errEngineNoLinux))
	}
	if err := pc.EnablePCPlatform(); err != nil {
		return fail(&Error{Op: op, Kind: ErrConfig, Detail: "PC platform on " + cfg.Engine.Name(), Err: err})
	}
	wireIRQ(m.bus.com1, pc, irqCOM1, &m.linux.irqErrs)
	wireIRQ(m.bus.com2, pc, irqCOM2, &m.linux.irqErrs)
	if err := m.newVCPUs(op); err != nil {
		return fail(err)
	}
	// Only the bootstrap processor gets a state: the others wait for the
	// INIT/SIPI Linux sends them through the LAPIC.
	c := m.vcpus[0].cpu
	s, err := c.Sregs()
	if err == nil {
		linuxSregs(&s)
		err = c.SetSregs(s)
	}
	if err == nil {
		err = c.SetRegs(linuxRegs(plan.load))
	}
	if err != nil {
		return fail(&Error{Op: op, Kind: ErrConfig, Detail: "set up vCPU 0", Err: err})
	}
	return m, nil
}

// irqSetter is the interrupt output of a UART that has one (the 16550A
// model): it calls back with the line's level.
type irqSetter interface{ SetIRQ(func(level bool)) }

// wireIRQ connects a UART's interrupt output to ISA line irq. A UART
// without one is polled by Linux's console code and needs nothing.
func wireIRQ(u *UART, pc engine.PCPlatform, irq int, errs *countErr) {
	s, ok := any(u).(irqSetter)
	if !ok {
		return
	}
	s.SetIRQ(func(level bool) {
		if err := pc.SetIRQLine(irq, level); err != nil {
			errs.add(err)
		}
	})
}

// linuxInfo is what a Linux-guest machine knows about its kernel.
type linuxInfo struct {
	version   string
	patchArea uint64   // guest-physical start of the patch area (to the end of RAM)
	irqErrs   countErr // failed KVM_IRQ_LINE calls (none expected)
}

// LinuxVersion is the booted bzImage's kernel_version string, "" for
// klp-kvm's own guest kernel.
func (m *Machine) LinuxVersion() string {
	if m.linux == nil {
		return ""
	}
	return m.linux.version
}

// IsLinux reports whether the machine boots a Linux bzImage.
func (m *Machine) IsLinux() bool { return m.linux != nil }

// LinuxPatchArea is the guest-physical range [base, base+size) at the top
// of a Linux guest's RAM that its e820 map leaves out (reserved): the
// memslot covers it, so the host reads and writes it, but Linux never
// allocates or direct-maps it. Size 0 for klp-kvm's own kernel, or when
// Config.PatchAreaMiB was negative.
func (m *Machine) LinuxPatchArea() (base, size uint64) {
	if m.linux == nil {
		return 0, 0
	}
	return m.linux.patchArea, m.layout.RAMSize - m.linux.patchArea
}
