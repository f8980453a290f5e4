package emu

import "math/bits"

func hNop(c *cpu, in *inst) {}

func hUD(c *cpu, in *inst) { c.ud() }

// --- binary ALU (ADD OR ADC SBB AND SUB XOR) ---

// hAluRRw: 4/8-byte register forms; the ALU truncates (zero-extends) the
// result, which is exactly a 32/64-bit register write.
func hAluRRw(c *cpu, in *inst) {
	c.regs[in.r1] = in.alu(&c.flags, in.size, c.regs[in.r1], c.regs[in.r2])
}

func hAluRR(c *cpu, in *inst) {
	c.setReg(in.r1, in.size, in.alu(&c.flags, in.size, c.reg(in.r1, in.size), c.reg(in.r2, in.size)))
}

func hAluRIw(c *cpu, in *inst) {
	c.regs[in.r1] = in.alu(&c.flags, in.size, c.regs[in.r1], in.imm)
}

func hAluRI(c *cpu, in *inst) {
	c.setReg(in.r1, in.size, in.alu(&c.flags, in.size, c.reg(in.r1, in.size), in.imm))
}

func hAluRM(c *cpu, in *inst) {
	v := c.read(c.ea(in), in.size)
	c.setReg(in.r1, in.size, in.alu(&c.flags, in.size, c.reg(in.r1, in.size), v))
}

func hAluMR(c *cpu, in *inst) {
	lin := c.ea(in)
	old := c.rmwLoad(lin, in.size)
	c.write(lin, in.size, in.alu(&c.flags, in.size, old, c.reg(in.r2, in.size)))
}

func hAluMI(c *cpu, in *inst) {
	lin := c.ea(in)
	old := c.rmwLoad(lin, in.size)
	c.write(lin, in.size, in.alu(&c.flags, in.size, old, in.imm))
}

func hAluMRLock(c *cpu, in *inst) { c.lockedRMW(in, c.reg(in.r2, in.size)) }

func hAluMILock(c *cpu, in *inst) { c.lockedRMW(in, in.imm) }

// lockedRMW performs a LOCKed binary ALU op on memory. The flags are
// computed on a copy per attempt so a retried CAS (ADC/SBB read CF) sees
// the original flags.
func (c *cpu) lockedRMW(in *inst, src uint64) {
	lin := c.ea(in)
	c.atomicUpdate(lin, in.size, func(f *Flags, old uint64) uint64 {
		return in.alu(f, in.size, old, src)
	})
}

// atomicUpdate applies op to the size bytes at lin atomically with respect
// to other vCPUs' locked operations, and returns the old value.
func (c *cpu) atomicUpdate(lin uint64, size uint8, op func(f *Flags, old uint64) uint64) uint64 {
	off, direct := c.physRMW(lin, size)
	if direct && atomicOK(off, size) {
		for {
			old := c.ram.atomicLoad(off, size)
			f := c.flags
			nv := op(&f, old)
			if ok, _ := c.ram.cas(off, size, old, nv); ok {
				c.flags = f
				c.codeStore(off, uint64(size))
				return old
			}
		}
	}
	c.vm.lockedMu.Lock()
	defer c.vm.lockedMu.Unlock()
	old := c.read(lin, size)
	f := c.flags
	nv := op(&f, old)
	c.write(lin, size, nv)
	c.flags = f
	return old
}

// rmwLoad reads the destination of a read-modify-write instruction after
// checking it is writable, so no state (flags) changes before a #PF.
func (c *cpu) rmwLoad(lin uint64, size uint8) uint64 {
	vpn := lin >> 12
	e := &c.tlbW[vpn&tlbMask]
	if e.tag == vpn && lin&0xfff <= 0x1000-uint64(size) {
		return c.ram.load(e.phys|lin&0xfff, size)
	}
	c.translate(lin, accWrite)
	if lin&0xfff > 0x1000-uint64(size) {
		c.translate(lin+(0x1000-lin&0xfff), accWrite)
	}
	return c.read(lin, size)
}

// --- CMP / TEST: ALU without write-back ---

func hCmpRR(c *cpu, in *inst) {
	in.alu(&c.flags, in.size, c.reg(in.r1, in.size), c.reg(in.r2, in.size))
}
func hCmpRI(c *cpu, in *inst) { in.alu(&c.flags, in.size, c.reg(in.r1, in.size), in.imm) }
func hCmpRM(c *cpu, in *inst) {
	v := c.read(c.ea(in), in.size)
	in.alu(&c.flags, in.size, c.reg(in.r1, in.size), v)
}
func hCmpMR(c *cpu, in *inst) {
	v := c.read(c.ea(in), in.size)
	in.alu(&c.flags, in.size, v, c.reg(in.r2, in.size))
}
func hCmpMI(c *cpu, in *inst) { in.alu(&c.flags, in.size, c.read(c.ea(in), in.size), in.imm) }

// --- generic r/m helpers (operand 1 is register r1 or memory) ---

func (c *cpu) rm1Read(in *inst) uint64 {
	if in.mem {
		return c.read(c.ea(in), in.size)
	}
	return c.reg(in.r1, in.size)
}

// src2Read reads the second operand (register r2 or memory) as size bytes.
func (c *cpu) src2Read(in *inst, size uint8) uint64 {
	if in.mem {
		return c.read(c.ea(in), size)
	}
	return c.reg(in.r2, size)
}

// --- unary ---

const (
	unNot = iota
	unNeg
	unInc
	unDec
)

func unaryOp(f *Flags, op, size uint8, v uint64) uint64 {
	switch op {
	case unNot:
		return Truncate(^v, size)
	case unNeg:
		return Neg(f, size, v)
	case unInc:
		return Inc(f, size, v)
	}
	return Dec(f, size, v)
}

func hUnary(c *cpu, in *inst) {
	if !in.mem {
		c.setReg(in.r1, in.size, unaryOp(&c.flags, in.cc, in.size, c.reg(in.r1, in.size)))
		return
	}
	lin := c.ea(in)
	old := c.rmwLoad(lin, in.size)
	c.write(lin, in.size, unaryOp(&c.flags, in.cc, in.size, old))
}

func hUnaryLock(c *cpu, in *inst) {
	c.atomicUpdate(c.ea(in), in.size, func(f *Flags, old uint64) uint64 {
		return unaryOp(f, in.cc, in.size, old)
	})
}

// --- shifts and rotates ---

func (c *cpu) count(in *inst) uint8 {
	if in.cc&1 != 0 {
		return uint8(c.regs[rCX])
	}
	return uint8(in.imm)
}

func hShift(c *cpu, in *inst) {
	n := c.count(in)
	if !in.mem {
		c.setReg(in.r1, in.size, in.sh(&c.flags, in.size, c.reg(in.r1, in.size), n))
		return
	}
	lin := c.ea(in)
	old := c.rmwLoad(lin, in.size)
	c.write(lin, in.size, in.sh(&c.flags, in.size, old, n))
}

func hShxd(c *cpu, in *inst) {
	n := c.count(in)
	f := Shld
	if in.cc&2 != 0 {
		f = Shrd
	}
	src := c.reg(in.r2, in.size)
	if !in.mem {
		c.setReg(in.r1, in.size, f(&c.flags, in.size, c.reg(in.r1, in.size), src, n))
		return
	}
	lin := c.ea(in)
	old := c.rmwLoad(lin, in.size)
	c.write(lin, in.size, f(&c.flags, in.size, old, src, n))
}

// --- multiply / divide ---

func hMulDiv(c *cpu, in *inst) {
	s := in.size
	src := c.rm1Read(in)
	switch in.cc {
	case 0, 1:
		var lo, hi uint64
		if in.cc == 0 {
			lo, hi = Mul(&c.flags, s, c.reg(rAX, s), src)
		} else {
			lo, hi = Imul(&c.flags, s, c.reg(rAX, s), src)
		}
		if s == 1 {
			c.setReg(rAX, 2, hi<<8|lo)
		} else {
			c.setReg(rAX, s, lo)
			c.setReg(rDX, s, hi)
		}
	default:
		var hi, lo uint64
		if s == 1 {
			hi, lo = c.reg(rAH, 1), c.reg(rAX, 1)
		} else {
			hi, lo = c.reg(rDX, s), c.reg(rAX, s)
		}
		var q, r uint64
		var ok bool
		if in.cc == 2 {
			q, r, ok = Div(s, hi, lo, src)
		} else {
			q, r, ok = Idiv(s, hi, lo, src)
		}
		if !ok {
			c.fault(vecDE)
		}
		if s == 1 {
			c.setReg(rAX, 2, r<<8|q&0xff)
		} else {
			c.setReg(rAX, s, q)
			c.setReg(rDX, s, r)
		}
	}
}

func hImul2(c *cpu, in *inst) {
	b := c.src2Read(in, in.size)
	lo, _ := Imul(&c.flags, in.size, c.reg(in.r1, in.size), b)
	c.setReg(in.r1, in.size, lo)
}

func hImul3(c *cpu, in *inst) {
	b := c.src2Read(in, in.size)
	lo, _ := Imul(&c.flags, in.size, b, in.imm)
	c.setReg(in.r1, in.size, lo)
}

// --- bit test family ---

func btOp(f *Flags, op, size uint8, v uint64, bit uint) (uint64, bool) {
	switch op {
	case 0:
		Bt(f, size, v, bit)
		return v, false
	case 1:
		return Bts(f, size, v, bit), true
	case 2:
		return Btr(f, size, v, bit), true
	}
	return Btc(f, size, v, bit), true
}

// btTarget resolves the operand of a BT-family instruction: for memory
// with a register bit offset the offset is signed and may address any
// byte, so the access moves to the operand-sized unit holding the bit.
func (c *cpu) btTarget(in *inst) (lin uint64, bit uint) {
	bits := uint64(in.size) * 8
	if in.sz2 == 0 {
		return c.ea(in), uint(in.imm % bits)
	}
	off := int64(SignExtend(c.reg(in.r2, in.size), in.size))
	unit := off >> (3 + bitsLog(in.size))
	return c.ea(in) + uint64(unit)*uint64(in.size), uint(uint64(off) & (bits - 1))
}

func bitsLog(size uint8) uint { return uint(bits.TrailingZeros8(size)) }

func hBt(c *cpu, in *inst) {
	if !in.mem {
		bit := uint(in.imm)
		if in.sz2 != 0 {
			bit = uint(c.reg(in.r2, in.size))
		}
		bit %= uint(in.size) * 8
		v, w := btOp(&c.flags, in.cc, in.size, c.reg(in.r1, in.size), bit)
		if w {
			c.setReg(in.r1, in.size, v)
		}
		return
	}
	lin, bit := c.btTarget(in)
	if in.cc == 0 {
		Bt(&c.flags, in.size, c.read(lin, in.size), bit)
		return
	}
	old := c.rmwLoad(lin, in.size)
	v, _ := btOp(&c.flags, in.cc, in.size, old, bit)
	c.write(lin, in.size, v)
}

func hBtLock(c *cpu, in *inst) {
	lin, bit := c.btTarget(in)
	c.atomicUpdate(lin, in.size, func(f *Flags, old uint64) uint64 {
		v, _ := btOp(f, in.cc, in.size, old, bit)
		return v
	})
}

func hBitScan(c *cpu, in *inst) {
	src := c.src2Read(in, in.size)
	var v uint64
	switch in.cc {
	case 0:
		v = Bsf(&c.flags, in.size, src, c.reg(in.r1, in.size))
		if src == 0 {
			return // destination unchanged (not even zero-extended)
		}
	case 1:
		v = Bsr(&c.flags, in.size, src, c.reg(in.r1, in.size))
		if src == 0 {
			return
		}
	case 2:
		v = Tzcnt(&c.flags, in.size, src)
	case 3:
		v = Lzcnt(&c.flags, in.size, src)
	default:
		v = Popcnt(&c.flags, in.size, src)
	}
	c.setReg(in.r1, in.size, v)
}

// --- conditional moves and sets ---

func hCmov(c *cpu, in *inst) {
	v := c.src2Read(in, in.size) // read (and fault) regardless of the condition
	if c.flags.Cond(in.cc) {
		c.setReg(in.r1, in.size, v)
	} else if in.size == 4 {
		c.regs[in.r1] = uint64(uint32(c.regs[in.r1])) // 32-bit CMOV always zero-extends
	}
}

func hSetcc(c *cpu, in *inst) {
	var v uint64
	if c.flags.Cond(in.cc) {
		v = 1
	}
	if in.mem {
		c.write(c.ea(in), 1, v)
		return
	}
	c.setReg(in.r1, 1, v)
}

// --- exchange family ---

func hXchgRR(c *cpu, in *inst) {
	a, b := c.reg(in.r1, in.size), c.reg(in.r2, in.size)
	c.setReg(in.r1, in.size, b)
	c.setReg(in.r2, in.size, a)
}

// hXchgM: XCHG with memory is always locked.
func hXchgM(c *cpu, in *inst) {
	lin := c.ea(in)
	v := c.reg(in.r2, in.size)
	off, direct := c.physRMW(lin, in.size)
	var old uint64
	if direct && atomicOK(off, in.size) {
		old = c.ram.swap(off, in.size, v)
		c.codeStore(off, uint64(in.size))
	} else {
		old = c.atomicUpdate(lin, in.size, func(*Flags, uint64) uint64 { return v })
	}
	c.setReg(in.r2, in.size, old)
}

func hXaddRR(c *cpu, in *inst) {
	a, b := c.reg(in.r1, in.size), c.reg(in.r2, in.size)
	sum := Add(&c.flags, in.size, a, b)
	c.setReg(in.r2, in.size, a)
	c.setReg(in.r1, in.size, sum)
}

// hXaddM is atomic whether or not LOCK was given: harmless, and simpler.
func hXaddM(c *cpu, in *inst) {
	src := c.reg(in.r2, in.size)
	old := c.atomicUpdate(c.ea(in), in.size, func(f *Flags, old uint64) uint64 {
		return Add(f, in.size, old, src)
	})
	c.setReg(in.r2, in.size, old)
}

func hCmpxchgRR(c *cpu, in *inst) {
	dst := c.reg(in.r1, in.size)
	Cmp(&c.flags, in.size, c.reg(rAX, in.size), dst)
	if c.flags.ZF() {
		c.setReg(in.r1, in.size, c.reg(in.r2, in.size))
	} else {
		c.setReg(rAX, in.size, dst)
	}
}

// hCmpxchgM compares the accumulator with memory and stores the source if
// equal, atomically; on failure the accumulator gets the memory value.
// Like the CPU, the destination is written (with its old value) on failure
// too, so a read-only page faults either way.
func hCmpxchgM(c *cpu, in *inst) {
	lin := c.ea(in)
	acc := c.reg(rAX, in.size)
	src := c.reg(in.r2, in.size)
	off, direct := c.physRMW(lin, in.size)
	var cur uint64
	if direct && atomicOK(off, in.size) {
		var swapped bool
		swapped, cur = c.ram.cas(off, in.size, acc, src)
		if swapped {
			cur = acc
			c.codeStore(off, uint64(in.size))
		}
	} else {
		cur = c.atomicUpdate(lin, in.size, func(f *Flags, old uint64) uint64 {
			if old == acc {
				return src
			}
			return old
		})
	}
	Cmp(&c.flags, in.size, acc, cur)
	if cur != acc {
		c.setReg(rAX, in.size, cur)
	}
}

// hCmpxchgDouble: CMPXCHG8B (size 4: EDX:EAX vs m64) and CMPXCHG16B
// (size 8: RDX:RAX vs m128, which must be 16-byte aligned). Only ZF changes.
func hCmpxchgDouble(c *cpu, in *inst) {
	lin := c.ea(in)
	s := in.size
	if s == 8 && lin&15 != 0 {
		c.gp0()
	}
	lo0, hi0 := c.reg(rAX, s), c.reg(rDX, s)
	newLo, newHi := c.reg(rBX, s), c.reg(rCX, s)
	// Probe both halves for write first (they may straddle a page).
	c.rmwLoad(lin, s)
	c.rmwLoad(lin+uint64(s), s)
	var lo, hi uint64
	var eq bool
	if s == 4 {
		off, direct := c.physRMW(lin, 8)
		if direct && atomicOK(off, 8) {
			old := lo0 | hi0<<32
			var cur uint64
			eq, cur = c.ram.cas(off, 8, old, newLo|newHi<<32)
			if eq {
				cur = old
				c.codeStore(off, uint64(in.size))
			}
			lo, hi = cur&0xffffffff, cur>>32
			goto done
		}
	}
	lo, hi, eq = c.cmpxchgDoubleLocked(lin, s, lo0, hi0, newLo, newHi)
done:
	fl := c.flags.Get()
	if eq {
		fl |= FlagZF
	} else {
		fl &^= FlagZF
		c.setReg(rAX, s, lo)
		c.setReg(rDX, s, hi)
	}
	c.flags.Set(fl)
}

func (c *cpu) cmpxchgDoubleLocked(lin uint64, s uint8, lo0, hi0, newLo, newHi uint64) (lo, hi uint64, eq bool) {
	c.vm.lockedMu.Lock()
	defer c.vm.lockedMu.Unlock()
	lo, hi = c.read(lin, s), c.read(lin+uint64(s), s)
	eq = lo == lo0 && hi == hi0
	if eq {
		c.write(lin, s, newLo)
		c.write(lin+uint64(s), s, newHi)
	}
	return lo, hi, eq
}
