package emu

import (
	x "golang.org/x/arch/x86/x86asm"
)

// gpr maps an x86asm general-purpose register to (regs index, size).
func gpr(r x.Reg) (uint8, uint8, bool) {
	switch {
	case r >= x.AL && r <= x.BL:
		return uint8(r - x.AL), 1, true
	case r >= x.AH && r <= x.BH:
		return rAH + uint8(r-x.AH), 1, true
	case r >= x.SPB && r <= x.R15B:
		return 4 + uint8(r-x.SPB), 1, true
	case r >= x.AX && r <= x.R15W:
		return uint8(r - x.AX), 2, true
	case r >= x.EAX && r <= x.R15L:
		return uint8(r - x.EAX), 4, true
	case r >= x.RAX && r <= x.R15:
		return uint8(r - x.RAX), 8, true
	}
	return 0, 0, false
}

// gprArg is gpr for an operand that may not be a register at all.
func gprArg(a x.Arg) (uint8, uint8, bool) {
	r, ok := a.(x.Reg)
	if !ok {
		return 0, 0, false
	}
	return gpr(r)
}

// setMem fills the memory-operand fields of in from m.
func setMem(in *inst, m x.Mem) bool {
	in.mem = true
	in.base, in.index = rZero, rZero
	switch {
	case m.Base == 0:
	case m.Base == x.RIP:
		in.base = rIP
	case m.Base == x.EIP:
		in.base = rIP
		in.eaf |= ea32
	default:
		r, sz, ok := gpr(m.Base)
		if !ok || sz < 4 {
			return false
		}
		if sz == 4 {
			in.eaf |= ea32
		}
		in.base = r
	}
	// A SIB byte without an index decodes as Scale 1, Index 0.
	if m.Scale != 0 && m.Index != 0 {
		r, sz, ok := gpr(m.Index)
		if !ok || sz < 4 {
			return false
		}
		if sz == 4 {
			in.eaf |= ea32
		}
		in.index = r
		switch m.Scale {
		case 1:
			in.scale = 0
		case 2:
			in.scale = 1
		case 4:
			in.scale = 2
		case 8:
			in.scale = 3
		default:
			return false
		}
	}
	in.disp = uint64(m.Disp)
	switch m.Segment {
	case x.FS:
		in.eaf |= eaFS
	case x.GS:
		in.eaf |= eaGS
	}
	return true
}

// form classifies a two-operand instruction.
type form uint8

const (
	fBad form = iota
	fRR       // reg, reg
	fRI       // reg, imm
	fRM       // reg, mem
	fMR       // mem, reg
	fMI       // mem, imm
)

// operands2 decodes a dst, src pair into in (r1/r2/mem/imm, size).
func operands2(in *inst, xi *x.Inst) form {
	a0, a1 := xi.Args[0], xi.Args[1]
	switch d := a0.(type) {
	case x.Reg:
		r, sz, ok := gpr(d)
		if !ok {
			return fBad
		}
		in.r1, in.size = r, sz
		switch s := a1.(type) {
		case x.Reg:
			r2, _, ok := gpr(s)
			if !ok {
				return fBad
			}
			in.r2 = r2
			return fRR
		case x.Imm:
			in.imm = uint64(s)
			return fRI
		case x.Mem:
			if !setMem(in, s) {
				return fBad
			}
			return fRM
		}
	case x.Mem:
		if !setMem(in, d) {
			return fBad
		}
		in.size = uint8(xi.MemBytes)
		switch s := a1.(type) {
		case x.Reg:
			r2, sz, ok := gpr(s)
			if !ok {
				return fBad
			}
			in.r2, in.size = r2, sz
			return fMR
		case x.Imm:
			in.imm = uint64(s)
			return fMI
		}
	}
	return fBad
}

// rm1 decodes a single r/m operand (register into r1, or memory).
func rm1(in *inst, a x.Arg, memBytes int) bool {
	switch d := a.(type) {
	case x.Reg:
		r, sz, ok := gpr(d)
		if !ok {
			return false
		}
		in.r1, in.size = r, sz
		return true
	case x.Mem:
		in.size = uint8(memBytes)
		return setMem(in, d)
	}
	return false
}

// src2 decodes the second operand as a register (r2) or memory.
func src2(in *inst, a x.Arg) (size uint8, ok bool) {
	switch s := a.(type) {
	case x.Reg:
		r, sz, ok := gpr(s)
		in.r2 = r
		return sz, ok
	case x.Mem:
		return 0, setMem(in, s)
	}
	return 0, false
}

func validSize(s uint8) bool { return s == 1 || s == 2 || s == 4 || s == 8 }

var binALU = map[x.Op]aluFn{
	x.ADD: Add, x.OR: Or, x.ADC: Adc, x.SBB: Sbb, x.AND: And, x.SUB: Sub, x.XOR: Xor,
}

var shifts = map[x.Op]shiftFn{
	x.SHL: Shl, x.SHR: Shr, x.SAR: Sar, x.ROL: Rol, x.ROR: Ror, x.RCL: Rcl, x.RCR: Rcr,
}

var ccOf = map[x.Op]uint8{}

func init() {
	jcc := []x.Op{x.JO, x.JNO, x.JB, x.JAE, x.JE, x.JNE, x.JBE, x.JA, x.JS, x.JNS, x.JP, x.JNP, x.JL, x.JGE, x.JLE, x.JG}
	cmov := []x.Op{x.CMOVO, x.CMOVNO, x.CMOVB, x.CMOVAE, x.CMOVE, x.CMOVNE, x.CMOVBE, x.CMOVA, x.CMOVS, x.CMOVNS, x.CMOVP, x.CMOVNP, x.CMOVL, x.CMOVGE, x.CMOVLE, x.CMOVG}
	setcc := []x.Op{x.SETO, x.SETNO, x.SETB, x.SETAE, x.SETE, x.SETNE, x.SETBE, x.SETA, x.SETS, x.SETNS, x.SETP, x.SETNP, x.SETL, x.SETGE, x.SETLE, x.SETG}
	for i := range 16 {
		ccOf[jcc[i]] = uint8(i)
		ccOf[cmov[i]] = uint8(i)
		ccOf[setcc[i]] = uint8(i)
	}
}

// lockable lists the instructions that accept LOCK (with a memory destination).
var lockable = map[x.Op]bool{
	x.ADD: true, x.ADC: true, x.AND: true, x.BTC: true, x.BTR: true, x.BTS: true, x.CMPXCHG: true,
	x.CMPXCHG8B: true, x.CMPXCHG16B: true, x.DEC: true, x.INC: true, x.NEG: true, x.NOT: true,
	x.OR: true, x.SBB: true, x.SUB: true, x.XOR: true, x.XADD: true, x.XCHG: true,
}

// String instruction element sizes.
var stringOps = map[x.Op]struct {
	fn   handler
	size uint8
}{
	x.MOVSB: {hMovs, 1}, x.MOVSW: {hMovs, 2}, x.MOVSD: {hMovs, 4}, x.MOVSQ: {hMovs, 8},
	x.STOSB: {hStos, 1}, x.STOSW: {hStos, 2}, x.STOSD: {hStos, 4}, x.STOSQ: {hStos, 8},
	x.LODSB: {hLods, 1}, x.LODSW: {hLods, 2}, x.LODSD: {hLods, 4}, x.LODSQ: {hLods, 8},
	x.CMPSB: {hCmps, 1}, x.CMPSW: {hCmps, 2}, x.CMPSD: {hCmps, 4}, x.CMPSQ: {hCmps, 8},
	x.SCASB: {hScas, 1}, x.SCASW: {hScas, 2}, x.SCASD: {hScas, 4}, x.SCASQ: {hScas, 8},
	x.OUTSB: {hOuts, 1}, x.OUTSW: {hOuts, 2}, x.OUTSD: {hOuts, 4},
	x.INSB: {hIns, 1}, x.INSW: {hIns, 2}, x.INSD: {hIns, 4},
}

// compile turns a decoded instruction into an inst. fn == nil means the
// interpreter does not implement it (the caller substitutes #UD). end says
// the block must end after it (control flow, or state that affects
// translation or interrupts).
func compile(xi *x.Inst) (in inst, end bool) {
	in.len = uint8(xi.Len)
	in.base, in.index = rZero, rZero
	var lock bool
	for _, p := range xi.Prefix {
		if p == 0 {
			break
		}
		if p&x.PrefixInvalid != 0 {
			return inst{len: in.len}, true
		}
		if p&(x.PrefixImplicit|x.PrefixIgnored) != 0 {
			continue
		}
		switch p & 0xff {
		case 0xf0:
			lock = true
		case 0xf3:
			in.rep = repE
		case 0xf2:
			in.rep = repNE
		}
	}
	if lock {
		_, isMem := xi.Args[0].(x.Mem)
		if !lockable[xi.Op] || !isMem {
			return inst{len: in.len}, true
		}
	}
	fail := func() (inst, bool) { return inst{len: in.len}, true }
	op := xi.Op

	if f, ok := binALU[op]; ok {
		in.alu = f
		switch operands2(&in, xi) {
		case fRR:
			in.fn = pick(in.size, hAluRRw, hAluRR)
		case fRI:
			in.fn = pick(in.size, hAluRIw, hAluRI)
		case fRM:
			in.fn = hAluRM
		case fMR:
			in.fn = pickLock(lock, hAluMR, hAluMRLock)
		case fMI:
			in.fn = pickLock(lock, hAluMI, hAluMILock)
		default:
			return fail()
		}
		return in, false
	}
	if f, ok := shifts[op]; ok {
		in.sh = f
		if !rm1(&in, xi.Args[0], xi.MemBytes) {
			return fail()
		}
		switch c := xi.Args[1].(type) {
		case x.Imm:
			in.imm = uint64(c)
		case x.Reg:
			if c != x.CL {
				return fail()
			}
			in.cc = 1
		default:
			return fail()
		}
		in.fn = hShift
		return in, false
	}
	if cc, ok := ccOf[op]; ok {
		in.cc = cc
		switch {
		case op >= x.JA && op <= x.JS && op != x.JECXZ && op != x.JRCXZ && op != x.JMP:
			rel, ok := xi.Args[0].(x.Rel)
			if !ok {
				return fail()
			}
			in.imm = uint64(int64(rel))
			in.fn = hJcc
			return in, true
		case op >= x.CMOVA && op <= x.CMOVS:
			r, sz, ok := gprArg(xi.Args[0])
			if !ok {
				return fail()
			}
			in.r1, in.size = r, sz
			if _, ok := src2(&in, xi.Args[1]); !ok {
				return fail()
			}
			in.fn = hCmov
			return in, false
		default:
			if !rm1(&in, xi.Args[0], 1) {
				return fail()
			}
			in.size = 1
			in.fn = hSetcc
			return in, false
		}
	}
	if s, ok := stringOps[op]; ok {
		in.size = s.size
		in.fn = s.fn
		// The source segment may be overridden (FS/GS matter in 64-bit mode).
		for _, a := range xi.Args {
			if m, ok := a.(x.Mem); ok && (m.Base == x.RSI || m.Base == x.ESI) {
				switch m.Segment {
				case x.FS:
					in.eaf |= eaFS
				case x.GS:
					in.eaf |= eaGS
				}
			}
		}
		if xi.AddrSize == 32 {
			in.eaf |= ea32
		}
		return in, op == x.OUTSB || op == x.OUTSW || op == x.OUTSD || op == x.INSB || op == x.INSW || op == x.INSD
	}

	switch op {
	case x.NOP, x.PAUSE, x.LFENCE, x.SFENCE, x.MFENCE, x.PREFETCHNTA, x.PREFETCHT0, x.PREFETCHT1,
		x.PREFETCHT2, x.PREFETCHW, x.CLFLUSH:
		// Fences: every access here is already sequentially consistent
		// with respect to this vCPU, and the Go atomics used for locked
		// operations are full barriers.
		in.fn = hNop
		return in, false
	case x.CMP, x.TEST:
		in.alu = Sub
		if op == x.TEST {
			in.alu = And
		}
		switch operands2(&in, xi) {
		case fRR:
			in.fn = hCmpRR
		case fRI:
			in.fn = hCmpRI
		case fRM:
			in.fn = hCmpRM
		case fMR:
			in.fn = hCmpMR
		case fMI:
			in.fn = hCmpMI
		default:
			return fail()
		}
		return in, false
	case x.MOV:
		return compileMov(in, xi)
	case x.MOVZX, x.MOVSX, x.MOVSXD:
		r, sz, ok := gprArg(xi.Args[0])
		if !ok {
			return fail()
		}
		in.r1, in.size = r, sz
		ssz, ok := src2(&in, xi.Args[1])
		if !ok {
			return fail()
		}
		if in.mem {
			ssz = uint8(xi.MemBytes)
		}
		in.sz2 = ssz
		if op == x.MOVZX {
			in.fn = hMovzx
		} else {
			in.fn = hMovsx
		}
		return in, false
	case x.LEA:
		r, sz, ok := gprArg(xi.Args[0])
		m, isMem := xi.Args[1].(x.Mem)
		if !ok || !isMem || !setMem(&in, m) {
			return fail()
		}
		in.r1, in.size = r, sz
		in.eaf &^= eaFS | eaGS // LEA ignores segments
		if xi.AddrSize == 32 {
			in.eaf |= ea32
		}
		in.fn = hLea
		return in, false
	case x.XCHG:
		switch operands2(&in, xi) {
		case fRR:
			in.fn = hXchgRR
		case fMR:
			in.fn = hXchgM
		case fRM:
			// xchg reg, mem: same operation with the roles swapped.
			in.r2 = in.r1
			in.fn = hXchgM
		default:
			return fail()
		}
		return in, false
	case x.XADD, x.CMPXCHG:
		switch operands2(&in, xi) {
		case fRR:
			in.fn = pickOp(op == x.XADD, hXaddRR, hCmpxchgRR)
		case fMR:
			in.fn = pickOp(op == x.XADD, hXaddM, hCmpxchgM)
		default:
			return fail()
		}
		return in, false
	case x.CMPXCHG8B, x.CMPXCHG16B:
		m, ok := xi.Args[0].(x.Mem)
		if !ok || !setMem(&in, m) {
			return fail()
		}
		in.size = 4
		if op == x.CMPXCHG16B {
			in.size = 8
		}
		in.fn = hCmpxchgDouble
		return in, false
	case x.NOT, x.NEG, x.INC, x.DEC:
		if !rm1(&in, xi.Args[0], xi.MemBytes) || !validSize(in.size) {
			return fail()
		}
		in.cc = map[x.Op]uint8{x.NOT: unNot, x.NEG: unNeg, x.INC: unInc, x.DEC: unDec}[op]
		in.fn = pickLock(lock, hUnary, hUnaryLock)
		return in, false
	case x.SHLD, x.SHRD:
		if !rm1(&in, xi.Args[0], xi.MemBytes) {
			return fail()
		}
		r2, _, ok := gprArg(xi.Args[1])
		if !ok {
			return fail()
		}
		in.r2 = r2
		switch c := xi.Args[2].(type) {
		case x.Imm:
			in.imm = uint64(c)
		case x.Reg:
			in.cc = 1
		}
		if op == x.SHRD {
			in.cc |= 2
		}
		in.fn = hShxd
		return in, false
	case x.MUL, x.IMUL, x.DIV, x.IDIV:
		if op == x.IMUL && xi.Args[1] != nil {
			r, sz, ok := gprArg(xi.Args[0])
			if !ok {
				return fail()
			}
			in.r1, in.size = r, sz
			if _, ok := src2(&in, xi.Args[1]); !ok {
				return fail()
			}
			if im, ok := xi.Args[2].(x.Imm); ok {
				in.imm = uint64(im)
				in.fn = hImul3
			} else {
				in.fn = hImul2
			}
			return in, false
		}
		if !rm1(&in, xi.Args[0], xi.MemBytes) {
			return fail()
		}
		in.cc = map[x.Op]uint8{x.MUL: 0, x.IMUL: 1, x.DIV: 2, x.IDIV: 3}[op]
		in.fn = hMulDiv
		return in, false
	case x.BT, x.BTS, x.BTR, x.BTC:
		if !rm1(&in, xi.Args[0], xi.MemBytes) {
			return fail()
		}
		switch b := xi.Args[1].(type) {
		case x.Imm:
			in.imm = uint64(b)
			in.sz2 = 0
		case x.Reg:
			r2, _, ok := gpr(b)
			if !ok {
				return fail()
			}
			in.r2 = r2
			in.sz2 = 1
		default:
			return fail()
		}
		in.cc = map[x.Op]uint8{x.BT: 0, x.BTS: 1, x.BTR: 2, x.BTC: 3}[op]
		in.fn = pickLock(lock, hBt, hBtLock)
		return in, false
	case x.BSF, x.BSR, x.TZCNT, x.LZCNT, x.POPCNT:
		r, sz, ok := gprArg(xi.Args[0])
		if !ok {
			return fail()
		}
		in.r1, in.size = r, sz
		if _, ok := src2(&in, xi.Args[1]); !ok {
			return fail()
		}
		in.cc = map[x.Op]uint8{x.BSF: 0, x.BSR: 1, x.TZCNT: 2, x.LZCNT: 3, x.POPCNT: 4}[op]
		in.fn = hBitScan
		return in, false
	case x.BSWAP:
		r, sz, ok := gprArg(xi.Args[0])
		if !ok {
			return fail()
		}
		in.r1, in.size = r, sz
		in.fn = hBswap
		return in, false
	case x.CBW, x.CWDE, x.CDQE:
		in.size = uint8(xi.DataSize / 8)
		in.fn = hCbw
		return in, false
	case x.CWD, x.CDQ, x.CQO:
		in.size = uint8(xi.DataSize / 8)
		in.fn = hCwd
		return in, false
	case x.PUSH, x.POP:
		return compilePushPop(in, xi)
	case x.PUSHFQ:
		in.fn = hPushf
		return in, false
	case x.POPFQ:
		in.fn = hPopf
		return in, true
	case x.LEAVE:
		in.fn = hLeave
		return in, false
	case x.JMP, x.CALL:
		switch t := xi.Args[0].(type) {
		case x.Rel:
			in.imm = uint64(int64(t))
			in.fn = pickOp(op == x.JMP, hJmpRel, hCallRel)
		case x.Reg:
			r, sz, ok := gpr(t)
			if !ok || sz != 8 {
				return fail()
			}
			in.r1 = r
			in.fn = pickOp(op == x.JMP, hJmpR, hCallR)
		case x.Mem:
			if !setMem(&in, t) || xi.MemBytes != 8 {
				return fail() // far forms are not supported
			}
			in.fn = pickOp(op == x.JMP, hJmpM, hCallM)
		default:
			return fail()
		}
		return in, true
	case x.LJMP:
		m, ok := xi.Args[0].(x.Mem)
		// x86asm reports MemBytes 0 for the REX.W form: use the data size.
		in.size = uint8(xi.DataSize / 8)
		if !ok || !setMem(&in, m) || in.size != 4 && in.size != 8 {
			return fail()
		}
		in.fn = hLjmp
		return in, true
	case x.JRCXZ, x.JECXZ, x.LOOP, x.LOOPE, x.LOOPNE:
		rel, ok := xi.Args[0].(x.Rel)
		if !ok {
			return fail()
		}
		in.imm = uint64(int64(rel))
		in.cc = map[x.Op]uint8{x.JRCXZ: 0, x.JECXZ: 1, x.LOOP: 2, x.LOOPE: 3, x.LOOPNE: 4}[op]
		if xi.AddrSize == 32 {
			in.eaf |= ea32
		}
		in.fn = hLoop
		return in, true
	case x.RET:
		if im, ok := xi.Args[0].(x.Imm); ok {
			in.imm = uint64(im)
		}
		in.fn = hRet
		return in, true
	case x.LRET, x.IRETQ, x.IRETD:
		in.size = uint8(xi.DataSize / 8)
		if in.size != 4 && in.size != 8 {
			return fail()
		}
		in.fn = pickOp(op == x.LRET, hLret, hIret)
		return in, true
	case x.INT:
		im, ok := xi.Args[0].(x.Imm)
		if !ok {
			return fail()
		}
		in.imm = uint64(im)
		in.fn = hInt
		return in, true
	case x.UD0, x.UD1, x.UD2:
		in.fn = hUD
		return in, true
	case x.HLT:
		in.fn = hHlt
		return in, true
	case x.CLI, x.STI, x.CLD, x.STD, x.CLC, x.STC, x.CMC, x.LAHF, x.SAHF:
		in.cc = map[x.Op]uint8{x.CLI: 0, x.STI: 1, x.CLD: 2, x.STD: 3, x.CLC: 4, x.STC: 5, x.CMC: 6, x.LAHF: 7, x.SAHF: 8}[op]
		in.fn = hFlagOp
		return in, op == x.STI
	case x.CPUID:
		in.fn = hCpuid
		return in, false
	case x.RDTSC, x.RDTSCP:
		if op == x.RDTSCP {
			in.cc = 1
		}
		in.fn = hRdtsc
		return in, false
	case x.RDMSR:
		in.fn = hRdmsr
		return in, false
	case x.WRMSR:
		in.fn = hWrmsr
		return in, true
	case x.LGDT, x.LIDT, x.SGDT, x.SIDT:
		m, ok := xi.Args[0].(x.Mem)
		if !ok || !setMem(&in, m) {
			return fail()
		}
		in.cc = map[x.Op]uint8{x.LGDT: 0, x.LIDT: 1, x.SGDT: 2, x.SIDT: 3}[op]
		in.fn = hDescTable
		return in, in.cc < 2
	case x.LTR, x.LLDT, x.STR, x.SLDT:
		if !rm1(&in, xi.Args[0], 2) {
			return fail()
		}
		if in.mem {
			in.size = 2
		}
		in.cc = map[x.Op]uint8{x.LTR: 0, x.LLDT: 1, x.STR: 2, x.SLDT: 3}[op]
		in.fn = hTaskReg
		return in, false
	case x.INVLPG:
		m, ok := xi.Args[0].(x.Mem)
		if !ok || !setMem(&in, m) {
			return fail()
		}
		in.fn = hInvlpg
		return in, true
	case x.SWAPGS:
		in.fn = hSwapgs
		return in, false
	case x.WBINVD, x.INVD:
		in.fn = hPrivNop
		return in, false
	case x.CLTS:
		in.fn = hClts
		return in, false
	case x.IN, x.OUT:
		port, data := xi.Args[1], xi.Args[0]
		if op == x.OUT {
			port, data = xi.Args[0], xi.Args[1]
		}
		_, sz, ok := gprArg(data)
		if !ok || sz == 8 {
			return fail()
		}
		in.size = sz
		switch p := port.(type) {
		case x.Imm:
			in.imm = uint64(p) & 0xff
		case x.Reg:
			in.cc = 1 // port in DX
		}
		in.fn = pickOp(op == x.IN, hIn, hOut)
		return in, true
	}
	return fail()
}

func compileMov(in inst, xi *x.Inst) (inst, bool) {
	fail := func() (inst, bool) { return inst{len: in.len}, true }
	// Control, debug and segment registers first.
	if r, ok := xi.Args[0].(x.Reg); ok && r >= x.ES {
		src, sz, ok := gprArg(xi.Args[1])
		if !ok {
			if m, isMem := xi.Args[1].(x.Mem); isMem && r <= x.GS && setMem(&in, m) {
				in.size = 2
				in.cc = uint8(r - x.ES)
				in.fn = hMovToSeg
				return in, true
			}
			return fail()
		}
		in.r2, in.size = src, sz
		if !sysReg(&in, r, hMovToSeg, hMovToCR, hMovToDR) {
			return fail()
		}
		return in, true
	}
	if r, ok := xi.Args[1].(x.Reg); ok && r >= x.ES {
		switch d := xi.Args[0].(type) {
		case x.Reg:
			dst, sz, ok := gpr(d)
			if !ok {
				return fail()
			}
			in.r1, in.size = dst, sz
		case x.Mem:
			if !setMem(&in, d) {
				return fail()
			}
			in.size = 2
		default:
			return fail()
		}
		if !sysReg(&in, r, hMovFromSeg, hMovFromCR, hMovFromDR) {
			return fail()
		}
		return in, false
	}
	switch operands2(&in, xi) {
	case fRR:
		in.fn = pick(in.size, hMovRRw, hMovRR)
		if in.size == 4 {
			in.fn = hMovRR32
		}
	case fRI:
		in.fn = hMovRI
	case fRM:
		in.fn = hMovLoad
	case fMR:
		in.fn = hMovStore
	case fMI:
		in.imm = Truncate(in.imm, in.size)
		in.fn = hMovStoreImm
	default:
		return fail()
	}
	return in, false
}

func compilePushPop(in inst, xi *x.Inst) (inst, bool) {
	fail := func() (inst, bool) { return inst{len: in.len}, true }
	in.size = 8
	if xi.DataSize == 16 {
		in.size = 2
	}
	push := xi.Op == x.PUSH
	switch a := xi.Args[0].(type) {
	case x.Reg:
		if a == x.FS || a == x.GS {
			in.cc = uint8(a - x.ES)
			in.fn = pickOp(push, hPushSeg, hPopSeg)
			return in, !push
		}
		r, sz, ok := gpr(a)
		if !ok {
			return fail()
		}
		in.r1, in.size = r, sz
		in.fn = pickOp(push, hPushR, hPopR)
	case x.Imm:
		if !push {
			return fail()
		}
		in.imm = uint64(a)
		in.fn = hPushI
	case x.Mem:
		if !setMem(&in, a) {
			return fail()
		}
		in.fn = pickOp(push, hPushM, hPopM)
	default:
		return fail()
	}
	return in, false
}

// pick chooses the wide (4/8-byte) specialisation of a handler.
func pick(size uint8, wide, generic handler) handler {
	if size >= 4 {
		return wide
	}
	return generic
}

func pickLock(lock bool, plain, locked handler) handler {
	if lock {
		return locked
	}
	return plain
}

func pickOp(first bool, a, b handler) handler {
	if first {
		return a
	}
	return b
}

// sysReg picks the segment, control or debug register form of a MOV to or
// from r: in.cc is the register's number within its class.
func sysReg(in *inst, r x.Reg, seg, cr, dr handler) bool {
	switch {
	case r >= x.ES && r <= x.GS:
		in.cc, in.fn = uint8(r-x.ES), seg
	case r >= x.CR0 && r <= x.CR15:
		in.cc, in.fn = uint8(r-x.CR0), cr
	case r >= x.DR0 && r <= x.DR15:
		in.cc, in.fn = uint8(r-x.DR0), dr
	default:
		return false
	}
	return true
}
