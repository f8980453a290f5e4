package emu

import x "golang.org/x/arch/x86/x86asm"

// Fast handlers: specialisations of the generic handlers for the forms a
// guest executes most (32/64-bit register operands, 64-bit loads, stores
// and stack operations). Each computes exactly what its generic handler
// computes, with the ALU function and operand size known at compile time
// so that the call through inst.alu, the size switches of reg/setReg and
// the out-of-line read/write disappear. The arithmetic itself is still the
// ALU of alu.go (inlined), which the differential tests check against the
// host CPU; TestFastMatchesGeneric checks every fast handler against the
// generic one it replaces.
//
// compile picks a fast handler (fastHandler) after choosing the generic
// one; withGenericHandlers (tests only) turns that off.
//
// A fast handler of a memory access handles the TLB hit; for anything else
// (a miss, a page straddle, a store to a page holding code, MMIO, faults)
// it hands the instruction back unchanged to the generic handler with
// c.retry (see retryGeneric). It calls nothing itself, so it needs no stack
// frame: on the hot path that is a good part of its cost.

// fastHandler returns the specialisation of the generic instruction in
// (compiled from xi), or nil if there is none. It may rewrite in's
// operands into the form the fast handler expects.
func fastHandler(xi *x.Inst, in *inst) handler {
	if in.fn == nil || in.rep != 0 {
		return nil
	}
	op := xi.Op
	if f, ok := fastALU[op]; ok {
		if in.mem {
			return fastCmpMem(xi, in)
		}
		switch xi.Args[1].(type) {
		case x.Reg:
			return f.rr.of(in.size)
		case x.Imm:
			return f.ri.of(in.size)
		}
		return nil
	}
	if cc, ok := ccOf[op]; ok && op >= x.JA && op <= x.JS && op != x.JECXZ && op != x.JRCXZ && op != x.JMP {
		return jccFast[cc&15]
	}
	switch op {
	case x.CMOVA, x.CMOVAE, x.CMOVB, x.CMOVBE, x.CMOVE, x.CMOVG, x.CMOVGE, x.CMOVL, x.CMOVLE,
		x.CMOVNE, x.CMOVNO, x.CMOVNP, x.CMOVNS, x.CMOVO, x.CMOVP, x.CMOVS:
		if !in.mem {
			return sized{cmov64Fast[in.cc&15], cmov32Fast[in.cc&15]}.of(in.size)
		}
	case x.INC, x.DEC:
		if !in.mem {
			return pickSized(op == x.INC, sized{hIncR64, hIncR32}, sized{hDecR64, hDecR32}).of(in.size)
		}
	case x.IMUL:
		if !in.mem && in.size == 8 && xi.Args[1] != nil {
			if _, ok := xi.Args[2].(x.Imm); ok {
				return hImul3R64
			}
			return hImul2R64
		}
	case x.MOV:
		return fastMov(xi, in)
	case x.MOVZX:
		if in.mem && (in.size == 4 || in.size == 8) {
			switch in.sz2 {
			case 1:
				return hMovzxLoad8
			case 2:
				return hMovzxLoad16
			}
		}
	case x.LEA:
		if in.size == 8 {
			return pickEA(in, hLea64BD, hLea64)
		}
	case x.PUSH, x.POP:
		if _, sz, ok := gprArg(xi.Args[0]); ok && sz == 8 {
			return pickOp(op == x.PUSH, hPushR64, hPopR64)
		}
	case x.CALL:
		if _, ok := xi.Args[0].(x.Rel); ok {
			return hCallRelFast
		}
	case x.RET:
		return hRetFast
	}
	return nil
}

// Generic handlers a fast one can hand its instruction back to (c.retry).
const (
	retryNone uint8 = iota
	retryMovLoad
	retryMovStore
	retryPushR
	retryPopR
	retryCallRel
	retryRet
	retryMovzx
	retryCmpRM
	retryCmpMR
	retryCmpMI
)

var retryHandlers = [...]handler{
	retryMovLoad: hMovLoad, retryMovStore: hMovStore, retryPushR: hPushR, retryPopR: hPopR,
	retryCallRel: hCallRel, retryRet: hRet, retryMovzx: hMovzx,
	retryCmpRM: hCmpRM, retryCmpMR: hCmpMR, retryCmpMI: hCmpMI,
}

// retry hands the instruction to the generic handler r: it runs when the
// fast handler returns (retryGeneric), as if it had been the handler.
func (c *cpu) retry(r uint8) {
	c.retryWith = r
	c.stop = true
}

// retryGeneric runs the generic handler a fast one handed its instruction
// to, and reports whether the block goes on (the generic handler did not
// set c.stop). The run loops call it when c.stop is set and retryWith is.
func (c *cpu) retryGeneric(in *inst) bool {
	h := retryHandlers[c.retryWith]
	c.retryWith, c.stop = retryNone, false
	h(c, in)
	return !c.stop
}

// fastMov specialises the plain MOV forms (not those of system registers).
func fastMov(xi *x.Inst, in *inst) handler {
	for _, a := range xi.Args[:2] {
		if r, ok := a.(x.Reg); ok && r >= x.ES {
			return nil
		}
	}
	_, dstReg := xi.Args[0].(x.Reg)
	_, srcReg := xi.Args[1].(x.Reg)
	_, srcImm := xi.Args[1].(x.Imm)
	switch {
	case dstReg && srcImm && (in.size == 4 || in.size == 8):
		// The immediate is truncated here (the generic handler truncates
		// it at run time), so the handler is a plain store.
		in.imm = Truncate(in.imm, in.size)
		return hMovRIw
	case dstReg && in.mem && in.size == 8:
		return pickEA(in, hMovLoad64BD, hMovLoad64)
	case srcReg && in.mem && in.size == 8:
		return pickEA(in, hMovStore64BD, hMovStore64)
	case dstReg && in.mem && in.size == 4:
		return pickEA(in, hMovLoad32BD, hMovLoad32)
	case srcReg && in.mem && in.size == 4:
		return pickEA(in, hMovStore32BD, hMovStore32)
	}
	return nil
}

// fastCmpMem specialises CMP and TEST with a 32/64-bit memory operand.
func fastCmpMem(xi *x.Inst, in *inst) handler {
	if xi.Op != x.CMP && xi.Op != x.TEST {
		return nil
	}
	_, regFirst := xi.Args[0].(x.Reg)
	_, imm := xi.Args[1].(x.Imm)
	var h sized
	switch {
	case xi.Op == x.CMP && regFirst:
		h = sized{hCmpRM64, hCmpRM32}
	case xi.Op == x.CMP && imm:
		h = sized{hCmpMI64, hCmpMI32}
	case xi.Op == x.CMP:
		h = sized{hCmpMR64, hCmpMR32}
	case imm:
		h = sized{hTestMI64, hTestMI32}
	case !regFirst:
		h = sized{hTestMR64, hTestMR32}
	}
	return h.of(in.size)
}

// sized holds the 64- and 32-bit forms of a handler.
type sized struct{ h64, h32 handler }

func (s sized) of(size uint8) handler {
	switch size {
	case 8:
		return s.h64
	case 4:
		return s.h32
	}
	return nil
}

func pickSized(first bool, a, b sized) sized {
	if first {
		return a
	}
	return b
}

// pickEA picks the handler for a base+displacement operand (no index, no
// segment base, 64-bit addressing: most memory operands) or the general one.
func pickEA(in *inst, bd, general handler) handler {
	if in.index == rZero && in.eaf == 0 {
		return bd
	}
	return general
}

// eaBD is ea for the operands pickEA gives a bd handler.
func (c *cpu) eaBD(in *inst) uint64 { return c.regs[in.base] + in.disp }

type aluForms struct{ rr, ri sized }

// fastALU: the 32/64-bit register forms of the binary ALU ops, CMP and TEST.
var fastALU = map[x.Op]aluForms{
	x.ADD:  {sized{hAddRR64, hAddRR32}, sized{hAddRI64, hAddRI32}},
	x.OR:   {sized{hOrRR64, hOrRR32}, sized{hOrRI64, hOrRI32}},
	x.ADC:  {sized{hAdcRR64, hAdcRR32}, sized{hAdcRI64, hAdcRI32}},
	x.SBB:  {sized{hSbbRR64, hSbbRR32}, sized{hSbbRI64, hSbbRI32}},
	x.AND:  {sized{hAndRR64, hAndRR32}, sized{hAndRI64, hAndRI32}},
	x.SUB:  {sized{hSubRR64, hSubRR32}, sized{hSubRI64, hSubRI32}},
	x.XOR:  {sized{hXorRR64, hXorRR32}, sized{hXorRI64, hXorRI32}},
	x.CMP:  {sized{hCmpRR64, hCmpRR32}, sized{hCmpRI64, hCmpRI32}},
	x.TEST: {sized{hTestRR64, hTestRR32}, sized{hTestRI64, hTestRI32}},
}

// aluRR and aluRI are hAluRRw and hAluRIw with the operation and the size
// constants at every call site: inlined, the ALU function is inlined too
// and its size arithmetic folds away. The ALU truncates (zero-extends)
// the result, which is exactly a 32/64-bit register write.
func aluRR(c *cpu, in *inst, op aluFn, size uint8) {
	c.regs[in.r1] = op(&c.flags, size, c.regs[in.r1], c.regs[in.r2])
}

func aluRI(c *cpu, in *inst, op aluFn, size uint8) {
	c.regs[in.r1] = op(&c.flags, size, c.regs[in.r1], in.imm)
}

func hAddRR64(c *cpu, in *inst) { aluRR(c, in, Add, 8) }
func hAddRR32(c *cpu, in *inst) { aluRR(c, in, Add, 4) }
func hOrRR64(c *cpu, in *inst)  { aluRR(c, in, Or, 8) }
func hOrRR32(c *cpu, in *inst)  { aluRR(c, in, Or, 4) }
func hAdcRR64(c *cpu, in *inst) { aluRR(c, in, Adc, 8) }
func hAdcRR32(c *cpu, in *inst) { aluRR(c, in, Adc, 4) }
func hSbbRR64(c *cpu, in *inst) { aluRR(c, in, Sbb, 8) }
func hSbbRR32(c *cpu, in *inst) { aluRR(c, in, Sbb, 4) }
func hAndRR64(c *cpu, in *inst) { aluRR(c, in, And, 8) }
func hAndRR32(c *cpu, in *inst) { aluRR(c, in, And, 4) }
func hSubRR64(c *cpu, in *inst) { aluRR(c, in, Sub, 8) }
func hSubRR32(c *cpu, in *inst) { aluRR(c, in, Sub, 4) }
func hXorRR64(c *cpu, in *inst) { aluRR(c, in, Xor, 8) }
func hXorRR32(c *cpu, in *inst) { aluRR(c, in, Xor, 4) }
func hAddRI64(c *cpu, in *inst) { aluRI(c, in, Add, 8) }
func hAddRI32(c *cpu, in *inst) { aluRI(c, in, Add, 4) }
func hOrRI64(c *cpu, in *inst)  { aluRI(c, in, Or, 8) }
func hOrRI32(c *cpu, in *inst)  { aluRI(c, in, Or, 4) }
func hAdcRI64(c *cpu, in *inst) { aluRI(c, in, Adc, 8) }
func hAdcRI32(c *cpu, in *inst) { aluRI(c, in, Adc, 4) }
func hSbbRI64(c *cpu, in *inst) { aluRI(c, in, Sbb, 8) }
func hSbbRI32(c *cpu, in *inst) { aluRI(c, in, Sbb, 4) }
func hAndRI64(c *cpu, in *inst) { aluRI(c, in, And, 8) }
func hAndRI32(c *cpu, in *inst) { aluRI(c, in, And, 4) }
func hSubRI64(c *cpu, in *inst) { aluRI(c, in, Sub, 8) }
func hSubRI32(c *cpu, in *inst) { aluRI(c, in, Sub, 4) }
func hXorRI64(c *cpu, in *inst) { aluRI(c, in, Xor, 8) }
func hXorRI32(c *cpu, in *inst) { aluRI(c, in, Xor, 4) }

// CMP and TEST: the ALU ignores bits above the operand size, so the
// registers are passed untruncated.
func hCmpRR64(c *cpu, in *inst)  { Cmp(&c.flags, 8, c.regs[in.r1], c.regs[in.r2]) }
func hCmpRR32(c *cpu, in *inst)  { Cmp(&c.flags, 4, c.regs[in.r1], c.regs[in.r2]) }
func hCmpRI64(c *cpu, in *inst)  { Cmp(&c.flags, 8, c.regs[in.r1], in.imm) }
func hCmpRI32(c *cpu, in *inst)  { Cmp(&c.flags, 4, c.regs[in.r1], in.imm) }
func hTestRR64(c *cpu, in *inst) { Test(&c.flags, 8, c.regs[in.r1], c.regs[in.r2]) }
func hTestRR32(c *cpu, in *inst) { Test(&c.flags, 4, c.regs[in.r1], c.regs[in.r2]) }
func hTestRI64(c *cpu, in *inst) { Test(&c.flags, 8, c.regs[in.r1], in.imm) }
func hTestRI32(c *cpu, in *inst) { Test(&c.flags, 4, c.regs[in.r1], in.imm) }

// Inc and Dec truncate the result, which is the zero extension of a
// 32-bit register write.
func hIncR64(c *cpu, in *inst) { c.regs[in.r1] = Inc(&c.flags, 8, c.regs[in.r1]) }
func hIncR32(c *cpu, in *inst) { c.regs[in.r1] = Inc(&c.flags, 4, c.regs[in.r1]) }
func hDecR64(c *cpu, in *inst) { c.regs[in.r1] = Dec(&c.flags, 8, c.regs[in.r1]) }
func hDecR32(c *cpu, in *inst) { c.regs[in.r1] = Dec(&c.flags, 4, c.regs[in.r1]) }

// hImul2R64 and hImul3R64: two- and three-operand IMUL of 64-bit registers.
func hImul2R64(c *cpu, in *inst) {
	c.regs[in.r1], _ = imul64(&c.flags, c.regs[in.r1], c.regs[in.r2])
}

func hImul3R64(c *cpu, in *inst) {
	c.regs[in.r1], _ = imul64(&c.flags, c.regs[in.r2], in.imm)
}

func hMovRIw(c *cpu, in *inst) { c.regs[in.r1] = in.imm }

func hLea64(c *cpu, in *inst)   { c.regs[in.r1] = c.ea(in) }
func hLea64BD(c *cpu, in *inst) { c.regs[in.r1] = c.eaBD(in) }

// The 64-bit MOV loads and stores.
func hMovLoad64(c *cpu, in *inst) {
	if v, ok := c.tryRead64(c.ea(in)); ok {
		c.regs[in.r1] = v
		return
	}
	c.retry(retryMovLoad)
}

func hMovLoad64BD(c *cpu, in *inst) {
	if v, ok := c.tryRead64(c.eaBD(in)); ok {
		c.regs[in.r1] = v
		return
	}
	c.retry(retryMovLoad)
}

func hMovStore64(c *cpu, in *inst) {
	if !c.tryWrite64(c.ea(in), c.regs[in.r2]) {
		c.retry(retryMovStore)
	}
}

func hMovStore64BD(c *cpu, in *inst) {
	if !c.tryWrite64(c.eaBD(in), c.regs[in.r2]) {
		c.retry(retryMovStore)
	}
}

func hMovLoad32(c *cpu, in *inst) {
	if v, ok := c.tryRead(c.ea(in), 4); ok {
		c.regs[in.r1] = v // a 32-bit register write zero-extends
		return
	}
	c.retry(retryMovLoad)
}

func hMovLoad32BD(c *cpu, in *inst) {
	if v, ok := c.tryRead(c.eaBD(in), 4); ok {
		c.regs[in.r1] = v
		return
	}
	c.retry(retryMovLoad)
}

func hMovStore32(c *cpu, in *inst) {
	if !c.tryWrite32(c.ea(in), c.regs[in.r2]) {
		c.retry(retryMovStore)
	}
}

func hMovStore32BD(c *cpu, in *inst) {
	if !c.tryWrite32(c.eaBD(in), c.regs[in.r2]) {
		c.retry(retryMovStore)
	}
}

// hMovzxLoad8 and hMovzxLoad16: MOVZX from memory into a 32/64-bit
// register (both zero-extend to 64 bits).
func hMovzxLoad8(c *cpu, in *inst) {
	if v, ok := c.tryRead(c.ea(in), 1); ok {
		c.regs[in.r1] = v
		return
	}
	c.retry(retryMovzx)
}

func hMovzxLoad16(c *cpu, in *inst) {
	if v, ok := c.tryRead(c.ea(in), 2); ok {
		c.regs[in.r1] = v
		return
	}
	c.retry(retryMovzx)
}

// CMP and TEST with a memory operand read it and set the flags; nothing
// is written, so a retry finds the state unchanged. (Written out: the
// memory read and the flag function do not fit one inlined helper.)

func hCmpRM64(c *cpu, in *inst) {
	v, ok := c.tryRead(c.ea(in), 8)
	if !ok {
		c.retry(retryCmpRM)
		return
	}
	Cmp(&c.flags, 8, c.regs[in.r1], v)
}

func hCmpRM32(c *cpu, in *inst) {
	v, ok := c.tryRead(c.ea(in), 4)
	if !ok {
		c.retry(retryCmpRM)
		return
	}
	Cmp(&c.flags, 4, c.regs[in.r1], v)
}

func hCmpMR64(c *cpu, in *inst) {
	v, ok := c.tryRead(c.ea(in), 8)
	if !ok {
		c.retry(retryCmpMR)
		return
	}
	Cmp(&c.flags, 8, v, c.regs[in.r2])
}

func hCmpMR32(c *cpu, in *inst) {
	v, ok := c.tryRead(c.ea(in), 4)
	if !ok {
		c.retry(retryCmpMR)
		return
	}
	Cmp(&c.flags, 4, v, c.regs[in.r2])
}

func hCmpMI64(c *cpu, in *inst) {
	v, ok := c.tryRead(c.ea(in), 8)
	if !ok {
		c.retry(retryCmpMI)
		return
	}
	Cmp(&c.flags, 8, v, in.imm)
}

func hCmpMI32(c *cpu, in *inst) {
	v, ok := c.tryRead(c.ea(in), 4)
	if !ok {
		c.retry(retryCmpMI)
		return
	}
	Cmp(&c.flags, 4, v, in.imm)
}

func hTestMR64(c *cpu, in *inst) {
	v, ok := c.tryRead(c.ea(in), 8)
	if !ok {
		c.retry(retryCmpMR)
		return
	}
	Test(&c.flags, 8, v, c.regs[in.r2])
}

func hTestMR32(c *cpu, in *inst) {
	v, ok := c.tryRead(c.ea(in), 4)
	if !ok {
		c.retry(retryCmpMR)
		return
	}
	Test(&c.flags, 4, v, c.regs[in.r2])
}

func hTestMI64(c *cpu, in *inst) {
	v, ok := c.tryRead(c.ea(in), 8)
	if !ok {
		c.retry(retryCmpMI)
		return
	}
	Test(&c.flags, 8, v, in.imm)
}

func hTestMI32(c *cpu, in *inst) {
	v, ok := c.tryRead(c.ea(in), 4)
	if !ok {
		c.retry(retryCmpMI)
		return
	}
	Test(&c.flags, 4, v, in.imm)
}

// --- stack ---

func hPushR64(c *cpu, in *inst) {
	sp := c.regs[rSP] - 8
	if !c.tryWrite64(sp, c.regs[in.r1]) {
		c.retry(retryPushR)
		return
	}
	c.regs[rSP] = sp
}

// hPopR64 writes the register after the RSP update: pop %rsp loads the
// popped value.
func hPopR64(c *cpu, in *inst) {
	sp := c.regs[rSP]
	v, ok := c.tryRead64(sp)
	if !ok {
		c.retry(retryPopR)
		return
	}
	c.regs[rSP] = sp + 8
	c.regs[in.r1] = v
}

func hCallRelFast(c *cpu, in *inst) {
	sp := c.regs[rSP] - 8
	if !c.tryWrite64(sp, c.regs[rIP]) {
		c.retry(retryCallRel)
		return
	}
	c.regs[rSP] = sp
	c.regs[rIP] += in.imm
}

// hRetFast checks the target before RSP changes, so a #GP (raised by the
// generic handler) leaves the stack as it was.
func hRetFast(c *cpu, in *inst) {
	sp := c.regs[rSP]
	t, ok := c.tryRead64(sp)
	if !ok || !canonical(t) {
		c.retry(retryRet)
		return
	}
	c.regs[rSP] = sp + 8 + in.imm
	c.regs[rIP] = t
}

// --- Jcc and CMOVcc, one handler per condition: no condition-code dispatch ---

// The sixteen conditions as methods, for the per-condition handlers
// (Cond computes any of them from a table; the tests hold them to it).
func (f *Flags) condO() bool  { return f.OF() }
func (f *Flags) condNO() bool { return !f.OF() }
func (f *Flags) condB() bool  { return f.CF() }
func (f *Flags) condAE() bool { return !f.CF() }
func (f *Flags) condE() bool  { return f.ZF() }
func (f *Flags) condNE() bool { return !f.ZF() }
func (f *Flags) condBE() bool { return f.CF() || f.ZF() }
func (f *Flags) condA() bool  { return !f.CF() && !f.ZF() }
func (f *Flags) condS() bool  { return f.SF() }
func (f *Flags) condNS() bool { return !f.SF() }
func (f *Flags) condP() bool  { return f.PF() }
func (f *Flags) condNP() bool { return !f.PF() }
func (f *Flags) condL() bool  { return f.SF() != f.OF() }
func (f *Flags) condGE() bool { return f.SF() == f.OF() }
func (f *Flags) condLE() bool { return f.ZF() || f.SF() != f.OF() }
func (f *Flags) condG() bool  { return !f.ZF() && f.SF() == f.OF() }

func jcc(c *cpu, in *inst, cond func(*Flags) bool) {
	if cond(&c.flags) {
		c.regs[rIP] += in.imm
	}
}

func cmov64(c *cpu, in *inst, cond func(*Flags) bool) {
	if cond(&c.flags) {
		c.regs[in.r1] = c.regs[in.r2]
	}
}

// cmov32: a 32-bit CMOV zero-extends the destination even when the
// condition is false.
func cmov32(c *cpu, in *inst, cond func(*Flags) bool) {
	v := c.regs[in.r1]
	if cond(&c.flags) {
		v = c.regs[in.r2]
	}
	c.regs[in.r1] = uint64(uint32(v))
}

var jccFast = [16]handler{hJO, hJNO, hJB, hJAE, hJE, hJNE, hJBE, hJA, hJS, hJNS, hJP, hJNP, hJL, hJGE, hJLE, hJG}

func hJO(c *cpu, in *inst)  { jcc(c, in, (*Flags).condO) }
func hJNO(c *cpu, in *inst) { jcc(c, in, (*Flags).condNO) }
func hJB(c *cpu, in *inst)  { jcc(c, in, (*Flags).condB) }
func hJAE(c *cpu, in *inst) { jcc(c, in, (*Flags).condAE) }
func hJE(c *cpu, in *inst)  { jcc(c, in, (*Flags).condE) }
func hJNE(c *cpu, in *inst) { jcc(c, in, (*Flags).condNE) }
func hJBE(c *cpu, in *inst) { jcc(c, in, (*Flags).condBE) }
func hJA(c *cpu, in *inst)  { jcc(c, in, (*Flags).condA) }
func hJS(c *cpu, in *inst)  { jcc(c, in, (*Flags).condS) }
func hJNS(c *cpu, in *inst) { jcc(c, in, (*Flags).condNS) }
func hJP(c *cpu, in *inst)  { jcc(c, in, (*Flags).condP) }
func hJNP(c *cpu, in *inst) { jcc(c, in, (*Flags).condNP) }
func hJL(c *cpu, in *inst)  { jcc(c, in, (*Flags).condL) }
func hJGE(c *cpu, in *inst) { jcc(c, in, (*Flags).condGE) }
func hJLE(c *cpu, in *inst) { jcc(c, in, (*Flags).condLE) }
func hJG(c *cpu, in *inst)  { jcc(c, in, (*Flags).condG) }

var cmov64Fast = [16]handler{hCmovO64, hCmovNO64, hCmovB64, hCmovAE64, hCmovE64, hCmovNE64, hCmovBE64, hCmovA64, hCmovS64, hCmovNS64, hCmovP64, hCmovNP64, hCmovL64, hCmovGE64, hCmovLE64, hCmovG64}

func hCmovO64(c *cpu, in *inst)  { cmov64(c, in, (*Flags).condO) }
func hCmovNO64(c *cpu, in *inst) { cmov64(c, in, (*Flags).condNO) }
func hCmovB64(c *cpu, in *inst)  { cmov64(c, in, (*Flags).condB) }
func hCmovAE64(c *cpu, in *inst) { cmov64(c, in, (*Flags).condAE) }
func hCmovE64(c *cpu, in *inst)  { cmov64(c, in, (*Flags).condE) }
func hCmovNE64(c *cpu, in *inst) { cmov64(c, in, (*Flags).condNE) }
func hCmovBE64(c *cpu, in *inst) { cmov64(c, in, (*Flags).condBE) }
func hCmovA64(c *cpu, in *inst)  { cmov64(c, in, (*Flags).condA) }
func hCmovS64(c *cpu, in *inst)  { cmov64(c, in, (*Flags).condS) }
func hCmovNS64(c *cpu, in *inst) { cmov64(c, in, (*Flags).condNS) }
func hCmovP64(c *cpu, in *inst)  { cmov64(c, in, (*Flags).condP) }
func hCmovNP64(c *cpu, in *inst) { cmov64(c, in, (*Flags).condNP) }
func hCmovL64(c *cpu, in *inst)  { cmov64(c, in, (*Flags).condL) }
func hCmovGE64(c *cpu, in *inst) { cmov64(c, in, (*Flags).condGE) }
func hCmovLE64(c *cpu, in *inst) { cmov64(c, in, (*Flags).condLE) }
func hCmovG64(c *cpu, in *inst)  { cmov64(c, in, (*Flags).condG) }

var cmov32Fast = [16]handler{hCmovO32, hCmovNO32, hCmovB32, hCmovAE32, hCmovE32, hCmovNE32, hCmovBE32, hCmovA32, hCmovS32, hCmovNS32, hCmovP32, hCmovNP32, hCmovL32, hCmovGE32, hCmovLE32, hCmovG32}

func hCmovO32(c *cpu, in *inst)  { cmov32(c, in, (*Flags).condO) }
func hCmovNO32(c *cpu, in *inst) { cmov32(c, in, (*Flags).condNO) }
func hCmovB32(c *cpu, in *inst)  { cmov32(c, in, (*Flags).condB) }
func hCmovAE32(c *cpu, in *inst) { cmov32(c, in, (*Flags).condAE) }
func hCmovE32(c *cpu, in *inst)  { cmov32(c, in, (*Flags).condE) }
func hCmovNE32(c *cpu, in *inst) { cmov32(c, in, (*Flags).condNE) }
func hCmovBE32(c *cpu, in *inst) { cmov32(c, in, (*Flags).condBE) }
func hCmovA32(c *cpu, in *inst)  { cmov32(c, in, (*Flags).condA) }
func hCmovS32(c *cpu, in *inst)  { cmov32(c, in, (*Flags).condS) }
func hCmovNS32(c *cpu, in *inst) { cmov32(c, in, (*Flags).condNS) }
func hCmovP32(c *cpu, in *inst)  { cmov32(c, in, (*Flags).condP) }
func hCmovNP32(c *cpu, in *inst) { cmov32(c, in, (*Flags).condNP) }
func hCmovL32(c *cpu, in *inst)  { cmov32(c, in, (*Flags).condL) }
func hCmovGE32(c *cpu, in *inst) { cmov32(c, in, (*Flags).condGE) }
func hCmovLE32(c *cpu, in *inst) { cmov32(c, in, (*Flags).condLE) }
func hCmovG32(c *cpu, in *inst)  { cmov32(c, in, (*Flags).condG) }
