package emu

func hMovRRw(c *cpu, in *inst)  { c.regs[in.r1] = c.regs[in.r2] }
func hMovRR32(c *cpu, in *inst) { c.regs[in.r1] = uint64(uint32(c.regs[in.r2])) }
func hMovRR(c *cpu, in *inst)   { c.setReg(in.r1, in.size, c.reg(in.r2, in.size)) }
func hMovRI(c *cpu, in *inst)   { c.setReg(in.r1, in.size, in.imm) }

// hMovLoad is a MOV from memory; outside RAM it becomes an MMIO read exit.
func hMovLoad(c *cpu, in *inst) {
	lin := c.ea(in)
	vpn := lin >> 12
	e := &c.tlbR[vpn&tlbMask]
	var v uint64
	if e.tag == vpn && lin&0xfff <= 0x1000-uint64(in.size) {
		v = c.ram.load(e.phys|lin&0xfff, in.size)
	} else {
		v = c.readSlow(lin, in.size, in)
		if c.exitReady {
			c.pendReg, c.pendSize = in.r1, in.size
			return
		}
	}
	c.setReg(in.r1, in.size, v)
}

// hMovStore is a MOV to memory; outside RAM it becomes an MMIO write exit.
func hMovStore(c *cpu, in *inst) { c.movStore(in, c.reg(in.r2, in.size)) }

func hMovStoreImm(c *cpu, in *inst) { c.movStore(in, in.imm) }

func (c *cpu) movStore(in *inst, v uint64) {
	lin := c.ea(in)
	vpn := lin >> 12
	e := &c.tlbW[vpn&tlbMask]
	if e.tag == vpn && lin&0xfff <= 0x1000-uint64(in.size) {
		p := e.phys | lin&0xfff
		c.ram.store(p, in.size, v)
		c.codeStore(p, uint64(in.size))
		return
	}
	c.writeSlow(lin, in.size, v, in)
}

func hMovzx(c *cpu, in *inst) { c.setReg(in.r1, in.size, c.src2Read(in, in.sz2)) }

func hMovsx(c *cpu, in *inst) {
	c.setReg(in.r1, in.size, SignExtend(c.src2Read(in, in.sz2), in.sz2))
}

func hLea(c *cpu, in *inst) { c.setReg(in.r1, in.size, c.ea(in)) }

// --- stack ---

func (c *cpu) push(size uint8, v uint64) {
	sp := c.regs[rSP] - uint64(size)
	c.write(sp, size, v)
	c.regs[rSP] = sp
}

func (c *cpu) pop(size uint8) uint64 {
	v := c.read(c.regs[rSP], size)
	c.regs[rSP] += uint64(size)
	return v
}

func hPushR(c *cpu, in *inst) { c.push(in.size, c.reg(in.r1, in.size)) }
func hPushI(c *cpu, in *inst) { c.push(in.size, in.imm) }
func hPushM(c *cpu, in *inst) { c.push(in.size, c.read(c.ea(in), in.size)) }

func hPopR(c *cpu, in *inst) {
	v := c.read(c.regs[rSP], in.size)
	c.regs[rSP] += uint64(in.size)
	c.setReg(in.r1, in.size, v) // after the RSP update: pop %rsp loads the popped value
}

// hPopM: the address is computed with RSP already incremented, as on the CPU.
func hPopM(c *cpu, in *inst) {
	sp := c.regs[rSP]
	v := c.read(sp, in.size)
	c.regs[rSP] = sp + uint64(in.size)
	lin := c.ea(in)
	c.regs[rSP] = sp
	c.write(lin, in.size, v)
	c.regs[rSP] = sp + uint64(in.size)
}

func hLeave(c *cpu, in *inst) {
	v := c.read(c.regs[rBP], 8)
	c.regs[rSP] = c.regs[rBP] + 8
	c.regs[rBP] = v
}

func hPushf(c *cpu, in *inst) { c.push(8, c.rflags()&^(flagVM|flagRF)) }

func hPopf(c *cpu, in *inst) {
	v := c.read(c.regs[rSP], 8)
	c.regs[rSP] += 8
	c.setRFLAGS(v)
}

func hPushSeg(c *cpu, in *inst) { c.push(in.size, uint64(c.segment(int(in.cc)).Selector)) }

func hPopSeg(c *cpu, in *inst) {
	v := c.read(c.regs[rSP], in.size)
	c.loadDataSeg(int(in.cc), uint16(v))
	c.regs[rSP] += uint64(in.size)
}

// --- sign extension of the accumulator ---

func hCbw(c *cpu, in *inst) {
	h := in.size / 2
	c.setReg(rAX, in.size, SignExtend(c.reg(rAX, h), h))
}

func hCwd(c *cpu, in *inst) {
	var v uint64
	if int64(SignExtend(c.reg(rAX, in.size), in.size)) < 0 {
		v = ^uint64(0)
	}
	c.setReg(rDX, in.size, v)
}

func hBswap(c *cpu, in *inst) {
	v := c.regs[in.r1]
	switch in.size {
	case 8:
		c.regs[in.r1] = bswap64(v)
	case 4:
		c.regs[in.r1] = uint64(bswap64(v) >> 32)
	default:
		c.setReg(in.r1, 2, 0) // BSWAP r16 is undefined; CPUs clear it
	}
}

func bswap64(v uint64) uint64 {
	v = v>>8&0x00ff00ff00ff00ff | v&0x00ff00ff00ff00ff<<8
	v = v>>16&0x0000ffff0000ffff | v&0x0000ffff0000ffff<<16
	return v>>32 | v<<32
}
