package emu

import (
	"time"

	"klp-kvm/kvm/engine"
)

func (c *cpu) priv() {
	if c.cpl != 0 {
		c.gp0()
	}
}

func hPrivNop(c *cpu, in *inst) { c.priv() }

func hClts(c *cpu, in *inst) {
	c.priv()
	c.sr.CR0 &^= cr0TS
}

func (c *cpu) segment(n int) *engine.Segment {
	switch n {
	case 0:
		return &c.sr.ES
	case 1:
		return &c.sr.CS
	case 2:
		return &c.sr.SS
	case 3:
		return &c.sr.DS
	case 4:
		return &c.sr.FS
	}
	return &c.sr.GS
}

func hMovToSeg(c *cpu, in *inst) {
	if in.cc == 1 || in.cc > 5 {
		c.ud() // MOV to CS is invalid
	}
	var sel uint64
	if in.mem {
		sel = c.read(c.ea(in), 2)
	} else {
		sel = c.reg(in.r2, 2)
	}
	c.loadDataSeg(int(in.cc), uint16(sel))
}

func hMovFromSeg(c *cpu, in *inst) {
	if in.cc > 5 {
		c.ud()
	}
	sel := uint64(c.segment(int(in.cc)).Selector)
	if in.mem {
		c.write(c.ea(in), 2, sel)
		return
	}
	c.setReg(in.r1, in.size, sel) // zero-extends for 32/64-bit destinations
}

const cr0Valid = 0xe005003f // PE MP EM TS ET NE WP AM NW CD PG

func hMovFromCR(c *cpu, in *inst) {
	c.priv()
	var v uint64
	switch in.cc {
	case 0:
		v = c.sr.CR0
	case 2:
		v = c.sr.CR2
	case 3:
		v = c.sr.CR3
	case 4:
		v = c.sr.CR4
	case 8:
		v = uint64(c.apic.tpr() >> 4)
	default:
		c.ud()
	}
	c.regs[in.r1] = v
}

func hMovToCR(c *cpu, in *inst) {
	c.priv()
	v := c.regs[in.r2]
	switch in.cc {
	case 0:
		if v>>32 != 0 || v&^cr0Valid != 0 || v&cr0PG != 0 && v&cr0PE == 0 {
			c.gp0()
		}
		if v&cr0PG == 0 {
			c.fatal("leaving long mode (CR0.PG=0) is not supported")
		}
		c.sr.CR0 = v | 0x10 // ET is hardwired
		c.flushTLB()
	case 2:
		c.sr.CR2 = v
	case 3:
		if v>>52 != 0 {
			c.gp0()
		}
		c.sr.CR3 = v
		c.flushTLB()
	case 4:
		// Accepted: VME..PCE, OSFXSR, OSXMMEXCPT, UMIP and SMEP. Features the
		// interpreter does not implement (LA57, PCIDE, FSGSBASE, OSXSAVE,
		// SMAP, ...) are not in CPUID either, so setting them is #GP.
		const cr4Valid = 0xfff | 1<<20
		if v&^uint64(cr4Valid) != 0 || v&cr4PAE == 0 {
			c.gp0()
		}
		c.sr.CR4 = v
		c.flushTLB()
	case 8:
		if v > 15 {
			c.gp0()
		}
		c.apic.setTPR(uint32(v) << 4)
	default:
		c.ud()
	}
	c.stop = true
}

func hMovFromDR(c *cpu, in *inst) {
	c.priv()
	n := in.cc
	if n == 4 || n == 5 {
		n += 2
	}
	if n > 7 {
		c.ud()
	}
	c.regs[in.r1] = c.dr[n]
}

// hMovToDR stores debug registers; breakpoints are not implemented.
func hMovToDR(c *cpu, in *inst) {
	c.priv()
	n := in.cc
	if n == 4 || n == 5 {
		n += 2
	}
	if n > 7 {
		c.ud()
	}
	c.dr[n] = c.regs[in.r2]
}

// hDescTable: LGDT LIDT SGDT SIDT (cc 0..3) with a 2+8 byte operand.
func hDescTable(c *cpu, in *inst) {
	lin := c.ea(in)
	if in.cc >= 2 {
		t := c.sr.GDT
		if in.cc == 3 {
			t = c.sr.IDT
		}
		c.rmwLoad(lin, 2)
		c.rmwLoad(lin+2, 8)
		c.write(lin, 2, uint64(t.Limit))
		c.write(lin+2, 8, t.Base)
		return
	}
	c.priv()
	limit := c.read(lin, 2)
	base := c.read(lin+2, 8)
	if !canonical(base) {
		c.gp0()
	}
	if in.cc == 0 {
		c.sr.GDT.Base, c.sr.GDT.Limit = base, uint16(limit)
	} else {
		c.sr.IDT.Base, c.sr.IDT.Limit = base, uint16(limit)
	}
}

// hTaskReg: LTR LLDT STR SLDT (cc 0..3).
func hTaskReg(c *cpu, in *inst) {
	if in.cc >= 2 {
		sel := uint64(c.sr.TR.Selector)
		if in.cc == 3 {
			sel = uint64(c.sr.LDT.Selector)
		}
		if in.mem {
			c.write(c.ea(in), 2, sel)
		} else {
			c.setReg(in.r1, in.size, sel)
		}
		return
	}
	c.priv()
	sel := uint16(c.rm1Read(in))
	if in.cc == 1 {
		// Only a null LDT is supported; the interpreter has no LDT lookups.
		if sel&^3 != 0 {
			c.faultCode(vecGP, uint32(sel&^3))
		}
		c.sr.LDT = engine.Segment{Selector: sel, Unusable: 1}
		return
	}
	if sel&^3 == 0 {
		c.gp0()
	}
	if sel&4 != 0 || uint32(sel|7)+8 > uint32(c.sr.GDT.Limit) {
		c.faultCode(vecGP, uint32(sel&^3))
	}
	da := c.sr.GDT.Base + uint64(sel&^7)
	lo := c.read(da, 8)
	hi := c.read(da+8, 8)
	s := segmentFrom(sel, lo)
	if s.S != 0 || s.Type != 9 {
		c.faultCode(vecGP, uint32(sel&^3))
	}
	if s.Present == 0 {
		c.faultCode(vecNP, uint32(sel&^3))
	}
	s.Base |= (hi & 0xffffffff) << 32
	c.write(da, 8, lo|1<<41) // mark the TSS busy
	s.Type = 11
	c.sr.TR = s
}

func hInvlpg(c *cpu, in *inst) {
	c.priv()
	// The TLB caches 4 KiB pieces of large pages too; flushing it all is
	// simpler than finding them and still cheap.
	c.flushTLB()
}

func hSwapgs(c *cpu, in *inst) {
	c.priv()
	c.sr.GS.Base, c.kernelGSBase = c.kernelGSBase, c.sr.GS.Base
}

// TSCHz is the rate of emu's guest TSC: it counts nanoseconds of host
// monotonic time, so 1 GHz exactly, whatever the host CPU's own TSC does.
const TSCHz = 1_000_000_000

// TSCHz implements engine.TSCClock.
func (c *cpu) TSCHz() (uint64, error) { return TSCHz, nil }

// tsc is the guest TSC: nanoseconds since VM creation (TSCHz, from the
// host's monotonic clock), plus the offset a TSC MSR write sets.
func (c *cpu) tsc() uint64 { return uint64(int64(time.Since(c.vm.epoch)) + c.tscOffset) }

func hRdtsc(c *cpu, in *inst) {
	t := c.tsc()
	c.regs[rAX] = t & 0xffffffff
	c.regs[rDX] = t >> 32
	if in.cc != 0 {
		c.regs[rCX] = c.tscAux & 0xffffffff
	}
}

func hRdmsr(c *cpu, in *inst) {
	c.priv()
	v, ok := c.rdmsr(uint32(c.regs[rCX]))
	if !ok {
		c.gp0()
	}
	c.regs[rAX] = v & 0xffffffff
	c.regs[rDX] = v >> 32
}

func hWrmsr(c *cpu, in *inst) {
	c.priv()
	v := c.regs[rDX]<<32 | c.regs[rAX]&0xffffffff
	if !c.wrmsr(uint32(c.regs[rCX]), v, false) {
		c.gp0()
	}
	c.stop = true
}

const (
	msrTSC        = 0x10
	msrMiscEnable = 0x1a0
	msrPAT        = 0x277
	msrCSTAR      = 0xc0000083
	msrFMASK      = 0xc0000084
)

func (c *cpu) x2apicOn() bool {
	return c.sr.APICBase&(apicBaseEN|apicBaseEXTD) == apicBaseEN|apicBaseEXTD
}

// rdmsr reads an MSR; ok=false means #GP.
func (c *cpu) rdmsr(idx uint32) (uint64, bool) {
	switch idx {
	case msrTSC:
		return c.tsc(), true
	case engine.MSRApicBase:
		return c.sr.APICBase, true
	case msrMiscEnable:
		return c.miscEnable, true
	case msrPAT:
		return c.pat, true
	case engine.MSREFER:
		return c.sr.EFER, true
	case engine.MSRSTAR:
		return c.star, true
	case engine.MSRLSTAR:
		return c.lstar, true
	case msrCSTAR:
		return c.cstar, true
	case msrFMASK:
		return c.fmask, true
	case engine.MSRFSBase:
		return c.sr.FS.Base, true
	case engine.MSRGSBase:
		return c.sr.GS.Base, true
	case engine.MSRKernelGSBase:
		return c.kernelGSBase, true
	case engine.MSRTSCAux:
		return c.tscAux, true
	}
	if idx >= 0x800 && idx <= 0x8ff && c.x2apicOn() {
		return c.apic.readMSR(idx)
	}
	return 0, false
}

// wrmsr writes an MSR; ok=false means #GP. host relaxes the checks that
// only make sense for the guest (the VMM restores state in any order).
func (c *cpu) wrmsr(idx uint32, v uint64, host bool) bool {
	switch idx {
	case msrTSC:
		c.tscOffset = int64(v) - int64(time.Since(c.vm.epoch))
	case engine.MSRApicBase:
		if v&^(0xfffff000|apicBaseBSP|apicBaseEN|apicBaseEXTD) != 0 || v&apicBaseEXTD != 0 && v&apicBaseEN == 0 {
			return false
		}
		c.sr.APICBase = v
	case msrMiscEnable:
		c.miscEnable = v
	case msrPAT:
		c.pat = v
	case engine.MSREFER:
		if v&^(eferSCE|eferLME|eferLMA|eferNXE) != 0 {
			return false
		}
		if !host {
			if v&eferLME != c.sr.EFER&eferLME {
				return false // toggling LME with paging on is #GP
			}
			v = v&^eferLMA | c.sr.EFER&eferLMA
		}
		c.sr.EFER = v
		c.flushTLB()
	case engine.MSRSTAR:
		c.star = v
	case engine.MSRLSTAR, msrCSTAR, engine.MSRFSBase, engine.MSRGSBase, engine.MSRKernelGSBase:
		if !canonical(v) {
			return false
		}
		switch idx {
		case engine.MSRLSTAR:
			c.lstar = v
		case msrCSTAR:
			c.cstar = v
		case engine.MSRFSBase:
			c.sr.FS.Base = v
		case engine.MSRGSBase:
			c.sr.GS.Base = v
		default:
			c.kernelGSBase = v
		}
	case msrFMASK:
		c.fmask = v & 0xffffffff
	case engine.MSRTSCAux:
		if v>>32 != 0 {
			return false
		}
		c.tscAux = v
	default:
		if idx >= 0x800 && idx <= 0x8ff && (host || c.x2apicOn()) {
			return c.apic.writeMSR(idx, v)
		}
		return false
	}
	return true
}

func (v *vm) nrVCPUs() uint32 {
	var n uint32
	for i := range v.vcpus {
		if v.vcpus[i].Load() != nil {
			n = uint32(i) + 1
		}
	}
	return max(n, 1)
}

func str4(s string) uint64 {
	var v uint64
	for i := 3; i >= 0; i-- {
		v = v<<8 | uint64(s[i])
	}
	return v
}

const brand = "klp-kvm emu x86-64 interpreter\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"

// cpuid answers what the interpreter implements: no FPU/SSE, x2APIC,
// CMPXCHG16B, POPCNT, LZCNT, NX, 1 GiB pages, RDTSCP, long mode.
func (c *cpu) cpuid(leaf, sub uint32) (a, b, cx, d uint64) {
	const vendor = "KLPKVMEMUx86"
	switch leaf {
	case 0:
		return 0xb, str4(vendor[0:]), str4(vendor[8:]), str4(vendor[4:])
	case 1:
		a = 0x000606a6 // family 6
		b = uint64(c.id)<<24 | uint64(c.vm.nrVCPUs()&0xff)<<16 | 8<<8
		cx = 1<<13 | 1<<21 | 1<<23 | 1<<31 // CX16, x2APIC, POPCNT, hypervisor
		d = 1<<3 | 1<<4 | 1<<5 | 1<<6 | 1<<8 | 1<<9 | 1<<13 | 1<<15 | 1<<19
		// PSE TSC MSR PAE CX8 APIC PGE CMOV CLFSH
		return
	case 7:
		if sub == 0 {
			b = 1<<7 | 1<<9 // SMEP, ERMS
		}
		return
	case 0xb:
		n := c.vm.nrVCPUs()
		shift := uint64(0)
		for 1<<shift < n {
			shift++
		}
		d = uint64(c.id)
		switch sub {
		case 0:
			return 0, 1, 1 << 8, d
		case 1:
			return shift, uint64(n), 1 | 2<<8, d
		}
		return 0, 0, uint64(sub & 0xff), d
	case 0x40000000:
		return 0x40000000, str4("KLPK"), str4("VMEM"), str4("U\x00\x00\x00")
	case 0x80000000:
		return 0x80000008, 0, 0, 0
	case 0x80000001:
		cx = 1<<0 | 1<<5                  // LAHF/SAHF, LZCNT
		d = 1<<20 | 1<<26 | 1<<27 | 1<<29 // NX, 1 GiB pages, RDTSCP, LM
		return
	case 0x80000002, 0x80000003, 0x80000004:
		o := int(leaf-0x80000002) * 16
		return str4(brand[o:]), str4(brand[o+4:]), str4(brand[o+8:]), str4(brand[o+12:])
	case 0x80000008:
		return 0x3028, 0, 0, 0 // 40 physical, 48 linear address bits
	}
	return 0, 0, 0, 0
}

func hCpuid(c *cpu, in *inst) {
	a, b, cx, d := c.cpuid(uint32(c.regs[rAX]), uint32(c.regs[rCX]))
	c.regs[rAX], c.regs[rBX], c.regs[rCX], c.regs[rDX] = a, b, cx, d
}
