package emu

import "klp-kvm/kvm/engine"

// String instructions. RSI/RDI/RCX are updated after every element, so a
// fault or an interruption (Kick, interrupt) in the middle of a REP leaves
// the instruction restartable exactly where it stopped, as on the CPU.

// repChunk is how many elements run between checks for Kick/interrupts.
const repChunk = 256

func (c *cpu) strMask(in *inst) uint64 {
	if in.eaf&ea32 != 0 {
		return 0xffffffff
	}
	return ^uint64(0)
}

func (c *cpu) strDelta(size uint8) uint64 {
	if c.rf&FlagDF != 0 {
		return -uint64(size)
	}
	return uint64(size)
}

func (c *cpu) srcBase(in *inst) uint64 {
	switch {
	case in.eaf&eaFS != 0:
		return c.sr.FS.Base
	case in.eaf&eaGS != 0:
		return c.sr.GS.Base
	}
	return 0
}

// addReg adds d to register r within the address-size mask.
func (c *cpu) addReg(r uint8, d, mask uint64) {
	c.regs[r] = c.regs[r]&^mask | (c.regs[r]+d)&mask
}

// repStep decides whether a REP instruction runs another element. It
// stops at RCX == 0 and, every repChunk elements, yields to pending
// Kicks/interrupts by rewinding RIP so the instruction resumes later.
func (c *cpu) repStep(in *inst, n int, mask uint64) bool {
	if c.regs[rCX]&mask == 0 {
		return false
	}
	if n > 0 && n%repChunk == 0 && (c.attn.Load() != 0 || c.stop) {
		c.regs[rIP] = c.curRIP
		c.stop = true
		return false
	}
	return true
}

// ramRun returns the RAM offset for linear address lin (translated for
// acc) and how many size-byte elements fit from there to the page end, or
// ok=false when the fast path does not apply (not RAM, element straddles).
func (c *cpu) ramRun(lin uint64, acc access, size uint8) (off, elems uint64, ok bool) {
	room := (0x1000 - lin&0xfff) / uint64(size)
	if room == 0 {
		return 0, 0, false
	}
	vpn := lin >> 12
	e := &c.tlbR[vpn&tlbMask]
	if acc == accWrite {
		e = &c.tlbW[vpn&tlbMask].tlbEntry
	}
	if e.tag == vpn {
		return e.phys | lin&0xfff, room, true
	}
	p := c.translate(lin, acc)
	if p&^0xfff+0x1000 > c.ram.size {
		return 0, 0, false
	}
	return p, room, true
}

// repFast reports whether a REP string instruction can move whole pages
// at a time: ascending, 64-bit addressing.
func (c *cpu) repFast(in *inst) bool { return c.rf&FlagDF == 0 && in.eaf&ea32 == 0 }

func hMovs(c *cpu, in *inst) {
	mask, d, s := c.strMask(in), c.strDelta(in.size), in.size
	base := c.srcBase(in)
	if in.rep == 0 {
		v := c.read(base+c.regs[rSI]&mask, s)
		c.write(c.regs[rDI]&mask, s, v)
		c.addReg(rSI, d, mask)
		c.addReg(rDI, d, mask)
		return
	}
	fast := c.repFast(in)
	for n := 0; c.repStep(in, n, mask); n++ {
		if fast {
			// Up to a page of elements at once; the element loop below
			// handles what does not fit (straddling elements, MMIO).
			ps, ns, ok1 := c.ramRun(base+c.regs[rSI], accRead, s)
			if ok1 {
				pd, nd, ok2 := c.ramRun(c.regs[rDI], accWrite, s)
				if ok2 {
					k := min(ns, nd, c.regs[rCX], repChunk)
					c.ram.moveElems(pd, ps, k, s)
					c.codeStore(pd, k*uint64(s))
					c.regs[rSI] += k * uint64(s)
					c.regs[rDI] += k * uint64(s)
					c.regs[rCX] -= k
					continue
				}
			}
		}
		v := c.read(base+c.regs[rSI]&mask, s)
		c.write(c.regs[rDI]&mask, s, v)
		c.addReg(rSI, d, mask)
		c.addReg(rDI, d, mask)
		c.addReg(rCX, ^uint64(0), mask)
	}
}

func hStos(c *cpu, in *inst) {
	mask, d, s := c.strMask(in), c.strDelta(in.size), in.size
	v := c.reg(rAX, s)
	if in.rep == 0 {
		c.write(c.regs[rDI]&mask, s, v)
		c.addReg(rDI, d, mask)
		return
	}
	fast := c.repFast(in)
	for n := 0; c.repStep(in, n, mask); n++ {
		if fast {
			if pd, nd, ok := c.ramRun(c.regs[rDI], accWrite, s); ok {
				k := min(nd, c.regs[rCX], repChunk)
				c.ram.fillElems(pd, k, s, v)
				c.codeStore(pd, k*uint64(s))
				c.regs[rDI] += k * uint64(s)
				c.regs[rCX] -= k
				continue
			}
		}
		c.write(c.regs[rDI]&mask, s, v)
		c.addReg(rDI, d, mask)
		c.addReg(rCX, ^uint64(0), mask)
	}
}

func hLods(c *cpu, in *inst) {
	mask, d, s := c.strMask(in), c.strDelta(in.size), in.size
	base := c.srcBase(in)
	if in.rep == 0 {
		c.setReg(rAX, s, c.read(base+c.regs[rSI]&mask, s))
		c.addReg(rSI, d, mask)
		return
	}
	for n := 0; c.repStep(in, n, mask); n++ {
		c.setReg(rAX, s, c.read(base+c.regs[rSI]&mask, s))
		c.addReg(rSI, d, mask)
		c.addReg(rCX, ^uint64(0), mask)
	}
}

// hCmps compares [RSI] with [RDI] (flags of [RSI] - [RDI]).
func hCmps(c *cpu, in *inst) {
	mask, d, s := c.strMask(in), c.strDelta(in.size), in.size
	base := c.srcBase(in)
	for n := 0; in.rep == 0 && n == 0 || in.rep != 0 && c.repStep(in, n, mask); n++ {
		a := c.read(base+c.regs[rSI]&mask, s)
		b := c.read(c.regs[rDI]&mask, s)
		Cmp(&c.flags, s, a, b)
		c.addReg(rSI, d, mask)
		c.addReg(rDI, d, mask)
		if in.rep == 0 {
			return
		}
		c.addReg(rCX, ^uint64(0), mask)
		if c.flags.ZF() != (in.rep == repE) {
			return
		}
	}
}

// hScas compares the accumulator with [RDI].
func hScas(c *cpu, in *inst) {
	mask, d, s := c.strMask(in), c.strDelta(in.size), in.size
	acc := c.reg(rAX, s)
	for n := 0; in.rep == 0 && n == 0 || in.rep != 0 && c.repStep(in, n, mask); n++ {
		Cmp(&c.flags, s, acc, c.read(c.regs[rDI]&mask, s))
		c.addReg(rDI, d, mask)
		if in.rep == 0 {
			return
		}
		c.addReg(rCX, ^uint64(0), mask)
		if c.flags.ZF() != (in.rep == repE) {
			return
		}
	}
}

// hOuts writes one element per I/O exit; with REP the instruction stays at
// the same RIP until RCX reaches zero.
func hOuts(c *cpu, in *inst) {
	c.ioAllowed()
	mask, d, s := c.strMask(in), c.strDelta(in.size), in.size
	if in.rep != 0 && c.regs[rCX]&mask == 0 {
		return
	}
	v := c.read(c.srcBase(in)+c.regs[rSI]&mask, s)
	c.addReg(rSI, d, mask)
	if in.rep != 0 {
		c.addReg(rCX, ^uint64(0), mask)
		if c.regs[rCX]&mask != 0 {
			defer func() { c.regs[rIP] = c.curRIP }()
		}
	}
	c.ioExit(uint16(c.regs[rDX]), s, true, v)
}

// hIns reads one element per I/O exit: the exit leaves RIP at the
// instruction, the next Run hands the data back (complete), and the
// re-executed instruction stores it and advances (or, with REP and RCX
// left, stays for the next element).
func hIns(c *cpu, in *inst) {
	c.ioAllowed()
	mask, d, s := c.strMask(in), c.strDelta(in.size), in.size
	if in.rep != 0 && c.regs[rCX]&mask == 0 {
		return
	}
	dst := c.regs[rDI] & mask
	if c.insReady && c.insRIP == c.curRIP {
		c.write(dst, s, c.insVal) // a fault keeps the data for the retry
		c.insReady = false
		c.addReg(rDI, d, mask)
		if in.rep != 0 {
			c.addReg(rCX, ^uint64(0), mask)
			if c.regs[rCX]&mask != 0 {
				c.regs[rIP] = c.curRIP
				c.stop = true
			}
		}
		return
	}
	c.rmwLoad(dst, s) // fault on the destination before reading the port
	c.ioExit(uint16(c.regs[rDX]), s, false, 0)
	c.pend = pendIns
	c.pendSize = s
	c.regs[rIP] = c.curRIP
}

// ioAllowed raises #GP for I/O above IOPL (no TSS I/O bitmap).
func (c *cpu) ioAllowed() {
	if uint64(c.cpl) > (c.rf&flagIOPL)>>12 {
		c.gp0()
	}
}

func (c *cpu) ioExit(port uint16, size uint8, out bool, v uint64) {
	c.setExit(engine.ExitIO, "")
	c.exit.IO = engine.IOExit{Port: port, Size: size, Out: out, Count: 1, Data: c.ioBuf[:size]}
	for i := range c.exit.IO.Data {
		c.ioBuf[i] = byte(v >> (8 * i))
	}
}

func hOut(c *cpu, in *inst) {
	c.ioAllowed()
	port := uint16(in.imm)
	if in.cc != 0 {
		port = uint16(c.regs[rDX])
	}
	c.ioExit(port, in.size, true, c.reg(rAX, in.size))
}

// hIn exits for the VMM to supply the data; the next Run writes it to the
// accumulator and moves RIP past the instruction (complete).
func hIn(c *cpu, in *inst) {
	c.ioAllowed()
	port := uint16(in.imm)
	if in.cc != 0 {
		port = uint16(c.regs[rDX])
	}
	c.ioExit(port, in.size, false, 0)
	c.pend = pendIn
	c.pendReg, c.pendSize = rAX, in.size
	c.pendNext = c.regs[rIP]
	c.regs[rIP] = c.curRIP
}
