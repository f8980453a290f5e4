package emu

func hJmpRel(c *cpu, in *inst) { c.regs[rIP] += in.imm }

func hJcc(c *cpu, in *inst) {
	if c.flags.Cond(in.cc) {
		c.regs[rIP] += in.imm
	}
}

func (c *cpu) jumpTo(target uint64) {
	if !canonical(target) {
		c.gp0()
	}
	c.regs[rIP] = target
}

func hJmpR(c *cpu, in *inst) { c.jumpTo(c.regs[in.r1]) }
func hJmpM(c *cpu, in *inst) { c.jumpTo(c.read(c.ea(in), 8)) }

func hCallRel(c *cpu, in *inst) {
	c.push(8, c.regs[rIP])
	c.regs[rIP] += in.imm
}

func hCallR(c *cpu, in *inst) {
	t := c.regs[in.r1]
	if !canonical(t) {
		c.gp0()
	}
	c.push(8, c.regs[rIP])
	c.regs[rIP] = t
}

func hCallM(c *cpu, in *inst) {
	t := c.read(c.ea(in), 8)
	if !canonical(t) {
		c.gp0()
	}
	c.push(8, c.regs[rIP])
	c.regs[rIP] = t
}

func hRet(c *cpu, in *inst) {
	t := c.read(c.regs[rSP], 8)
	if !canonical(t) {
		c.gp0()
	}
	c.regs[rSP] += 8 + in.imm
	c.regs[rIP] = t
}

// hLoop: JRCXZ/JECXZ (cc 0/1) and LOOP/LOOPE/LOOPNE (2/3/4).
func hLoop(c *cpu, in *inst) {
	mask := ^uint64(0)
	if in.eaf&ea32 != 0 {
		mask = 0xffffffff
	}
	var take bool
	switch in.cc {
	case 0:
		take = c.regs[rCX] == 0
	case 1:
		take = uint32(c.regs[rCX]) == 0
	default:
		n := (c.regs[rCX] - 1) & mask
		if mask == 0xffffffff {
			c.regs[rCX] = c.regs[rCX]&^mask | n
		} else {
			c.regs[rCX] = n
		}
		take = n != 0
		if in.cc == 3 {
			take = take && c.flags.ZF()
		} else if in.cc == 4 {
			take = take && !c.flags.ZF()
		}
	}
	if take {
		c.regs[rIP] += in.imm
	}
}

func hLret(c *cpu, in *inst) { c.farReturn(in.size, false) }

// hLjmp: jmp far through memory (m16:32 or m16:64), used to reload CS.
// Only same-privilege targets are supported (no call gates).
func hLjmp(c *cpu, in *inst) {
	lin := c.ea(in)
	off := c.read(lin, in.size)
	sel := uint16(c.read(lin+uint64(in.size), 2))
	cs := c.codeDescriptor(sel, 0)
	if cs.DPL != c.cpl && cs.Type&4 == 0 || !canonical(off) {
		c.faultCode(vecGP, uint32(sel&^3))
	}
	cs.Selector = sel&^3 | uint16(c.cpl)
	c.sr.CS = cs
	c.regs[rIP] = off
}
func hIret(c *cpu, in *inst) { c.farReturn(in.size, true) }

// hInt: INT n and INT3 are software interrupts: the gate's DPL is
// checked and the frame saves the next instruction.
func hInt(c *cpu, in *inst) { c.trap(uint8(in.imm), evSoft) }

func hHlt(c *cpu, in *inst) {
	if c.cpl != 0 {
		c.gp0()
	}
	c.halted = true
	c.stop = true
}

// hFlagOp: CLI STI CLD STD CLC STC CMC LAHF SAHF.
func hFlagOp(c *cpu, in *inst) {
	switch in.cc {
	case 0, 1:
		if uint64(c.cpl) > (c.rf&flagIOPL)>>12 {
			c.gp0()
		}
		if in.cc == 0 {
			c.rf &^= FlagIF
			return
		}
		if c.rf&FlagIF == 0 {
			c.rf |= FlagIF
			c.shadowArm = true // interrupts wait for the next instruction
			c.stop = true
			c.recheckIRQ()
		}
	case 2:
		c.rf &^= FlagDF
	case 3:
		c.rf |= FlagDF
	case 4:
		c.flags.SetCF(false)
	case 5:
		c.flags.SetCF(true)
	case 6:
		c.flags.SetCF(!c.flags.CF())
	case 7:
		c.setReg(rAH, 1, c.flags.Get()&0xd5|2)
	case 8:
		fl := c.flags.Get()&^0xd5 | c.reg(rAH, 1)&0xd5
		c.flags.Set(fl)
	}
}
