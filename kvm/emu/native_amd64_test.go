package emu

// Differential tests: every ALU form runs on the host CPU (through the stubs generated
// by gen_native.go into native_amd64.s) and through alu.go/flags.go, and results plus
// the SDM-defined arithmetic flags must match.

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

type nativeKey struct {
	op   string
	size uint8
}

// nativeFn runs one instruction with AX=a, BX=b, CX=c, DX=d and RFLAGS=fl and returns
// AX, DX and the RFLAGS after it.
type nativeFn func(a, b, c, d, fl uint64) (ax, dx, flo uint64)

// aluIn is one test vector. a, b are the operands (a is the destination: AX), h the
// high half of a DIV dividend (DX or AH), c the raw shift count, fl the arithmetic flags
// before the instruction (RFLAGS layout).
type aluIn struct {
	a, b, h uint64
	c       uint8
	fl      uint64
}

// aluOut is what an instruction produced: the destination, the second result (MUL
// high half, DIV remainder) and the arithmetic flags.
type aluOut struct {
	r, r2 uint64
	fl    uint64
}

// aluSpec describes one instruction for the differential test.
type aluSpec struct {
	op    string
	sizes []uint8
	// emu runs the instruction through our ALU on f (already holding in.fl).
	emu func(f *Flags, size uint8, in aluIn) aluOut
	// nat runs the native stub; nil means the default register convention
	// (AX=a, BX=b, CL=c; result in AX).
	nat func(fn nativeFn, size uint8, in aluIn) aluOut
	// undef returns the flags the SDM leaves undefined for this input, and whether the
	// destination itself is undefined. nil means everything is defined.
	undef func(size uint8, in aluIn) (flags uint64, res bool)
	// valid says whether the input may run natively (DIV: only non-#DE operands).
	valid func(size uint8, in aluIn) bool
	r2    bool // compare aluOut.r2 too

	stubs [16]nativeFn // cache for stub()
}

// stub returns the native stub for size, looked up once per spec (the map lookup
// hashes a string and would dominate the per-vector cost).
func (s *aluSpec) stub(size uint8) nativeFn {
	if fn := s.stubs[size&15]; fn != nil {
		return fn
	}
	fn := nativeStubs[nativeKey{s.op, size}]
	s.stubs[size&15] = fn
	return fn
}

// nativeHostFlags is the part of RFLAGS we hand to POPFQ besides the arithmetic flags:
// reserved bit 1 and IF (user mode cannot change IF; TF, DF, AC must stay clear).
const nativeHostFlags = 0x202

func nativeDefault(fn nativeFn, size uint8, in aluIn) aluOut {
	ax, dx, fl := fn(in.a, in.b, uint64(in.c), 0, in.fl&ArithFlags|nativeHostFlags)
	return aluOut{r: ax & sizeMask(size), r2: dx & sizeMask(size), fl: fl & ArithFlags}
}

// nativeMul: size 1 leaves the product in AX (AL, AH); wider sizes in DX:AX.
func nativeMul(fn nativeFn, size uint8, in aluIn) aluOut {
	ax, dx, fl := fn(in.a, in.b, 0, 0, in.fl&ArithFlags|nativeHostFlags)
	if size == 1 {
		return aluOut{r: ax & 0xff, r2: ax >> 8 & 0xff, fl: fl & ArithFlags}
	}
	m := sizeMask(size)
	return aluOut{r: ax & m, r2: dx & m, fl: fl & ArithFlags}
}

// nativeDiv: size 1 divides AX = h:a (AH:AL) and leaves AL=q, AH=r; wider sizes DX:AX.
func nativeDiv(fn nativeFn, size uint8, in aluIn) aluOut {
	if size == 1 {
		ax, _, fl := fn(in.h&0xff<<8|in.a&0xff, in.b, 0, 0, in.fl&ArithFlags|nativeHostFlags)
		return aluOut{r: ax & 0xff, r2: ax >> 8 & 0xff, fl: fl & ArithFlags}
	}
	ax, dx, fl := fn(in.a, in.b, 0, in.h, in.fl&ArithFlags|nativeHostFlags)
	m := sizeMask(size)
	return aluOut{r: ax & m, r2: dx & m, fl: fl & ArithFlags}
}

func aluMaskedCount(size uint8, c uint8) uint8 {
	if size == 8 {
		return c & 0x3f
	}
	return c & 0x1f
}

// Undefined-flag table, per the Intel SDM vol. 2 instruction pages ("Flags Affected").
// Anything not listed here is compared bit for bit against the host CPU. aluUndefTable
// (below) is this table as data, and TestALUUndefinedFlags holds the functions to it.
//
//	op                      undefined after the instruction
//	add adc sub sbb cmp     -
//	inc dec neg             -
//	and or xor test         AF
//	shl shr (count c>0)     AF; OF if c>1; CF if c >= width (8/16-bit only)
//	sar (c>0)               AF; OF if c>1
//	rol ror (c>0)           OF if c>1 (SF ZF AF PF are unaffected and compared)
//	rcl rcr                 OF if masked count != 1 (CF compared; unchanged when
//	                        the count mod 9/17 is 0)
//	shld shrd (c>0)         AF; OF if c>1; for c > width (16-bit, 17..31) the
//	                        result and all flags
//	mul imul imul2          SF ZF AF PF
//	div idiv                all six (our Div/Idiv do not touch Flags)
//	bt bts btr btc          OF SF AF PF (ZF is unaffected and compared)
//	bsf bsr                 CF OF SF AF PF (dst when src==0 is compared: AMD
//	                        documents "unchanged", Intel parts behave so)
//	tzcnt lzcnt             OF SF AF PF
//	popcnt cmc stc clc      -
//	setcc (Cond)            - (flags unchanged, compared)
func aluUndefLogic(uint8, aluIn) (uint64, bool) { return FlagAF, false }

func aluUndefShlShr(size uint8, in aluIn) (uint64, bool) {
	c := aluMaskedCount(size, in.c)
	var u uint64
	if c > 0 {
		u |= FlagAF
	}
	if c > 1 {
		u |= FlagOF
	}
	if uint(c) >= uint(size)*8 {
		u |= FlagCF
	}
	return u, false
}

func aluUndefSar(size uint8, in aluIn) (uint64, bool) {
	c := aluMaskedCount(size, in.c)
	var u uint64
	if c > 0 {
		u |= FlagAF
	}
	if c > 1 {
		u |= FlagOF
	}
	return u, false
}

func aluUndefRot(size uint8, in aluIn) (uint64, bool) {
	if aluMaskedCount(size, in.c) > 1 {
		return FlagOF, false
	}
	return 0, false
}

func aluUndefRc(size uint8, in aluIn) (uint64, bool) {
	if aluMaskedCount(size, in.c) != 1 {
		return FlagOF, false
	}
	return 0, false
}

func aluUndefShxd(size uint8, in aluIn) (uint64, bool) {
	c := aluMaskedCount(size, in.c)
	if uint(c) > uint(size)*8 {
		return ArithFlags, true
	}
	u, _ := aluUndefSar(size, in)
	return u, false
}

func aluUndefMul(uint8, aluIn) (uint64, bool) { return FlagSF | FlagZF | FlagAF | FlagPF, false }
func aluUndefAll(uint8, aluIn) (uint64, bool) { return ArithFlags, false }
func aluUndefBt(uint8, aluIn) (uint64, bool)  { return FlagOF | FlagSF | FlagAF | FlagPF, false }
func aluUndefBsx(uint8, aluIn) (uint64, bool) {
	return FlagCF | FlagOF | FlagSF | FlagAF | FlagPF, false
}

var (
	aluSizes     = []uint8{1, 2, 4, 8}
	aluWideSizes = []uint8{2, 4, 8}
)

func aluBinSpec(op string, fn func(*Flags, uint8, uint64, uint64) uint64, undef func(uint8, aluIn) (uint64, bool)) aluSpec {
	return aluSpec{op: op, sizes: aluSizes, undef: undef,
		emu: func(f *Flags, size uint8, in aluIn) aluOut {
			return aluOut{r: fn(f, size, in.a, in.b)}
		}}
}

func aluUnSpec(op string, fn func(*Flags, uint8, uint64) uint64) aluSpec {
	return aluSpec{op: op, sizes: aluSizes,
		emu: func(f *Flags, size uint8, in aluIn) aluOut {
			return aluOut{r: fn(f, size, in.a)}
		}}
}

func aluShiftSpec(op string, fn func(*Flags, uint8, uint64, uint8) uint64, undef func(uint8, aluIn) (uint64, bool)) aluSpec {
	return aluSpec{op: op, sizes: aluSizes, undef: undef,
		emu: func(f *Flags, size uint8, in aluIn) aluOut {
			return aluOut{r: fn(f, size, in.a, in.c)}
		}}
}

// aluShift1Spec is the by-one encoding: the count in the vector is ignored.
func aluShift1Spec(op string, fn func(*Flags, uint8, uint64, uint8) uint64) aluSpec {
	return aluSpec{op: op, sizes: aluSizes,
		undef: func(size uint8, in aluIn) (uint64, bool) { return FlagAF, false },
		emu: func(f *Flags, size uint8, in aluIn) aluOut {
			return aluOut{r: fn(f, size, in.a, 1)}
		}}
}

func aluShxdSpec(op string, fn func(*Flags, uint8, uint64, uint64, uint8) uint64) aluSpec {
	return aluSpec{op: op, sizes: aluWideSizes, undef: aluUndefShxd,
		emu: func(f *Flags, size uint8, in aluIn) aluOut {
			return aluOut{r: fn(f, size, in.a, in.b, in.c)}
		}}
}

func aluMulSpec(op string, fn func(*Flags, uint8, uint64, uint64) (uint64, uint64)) aluSpec {
	return aluSpec{op: op, sizes: aluSizes, undef: aluUndefMul, nat: nativeMul, r2: true,
		emu: func(f *Flags, size uint8, in aluIn) aluOut {
			lo, hi := fn(f, size, in.a, in.b)
			return aluOut{r: lo, r2: hi}
		}}
}

func aluDivSpec(op string, fn func(uint8, uint64, uint64, uint64) (uint64, uint64, bool)) aluSpec {
	return aluSpec{op: op, sizes: aluSizes, undef: aluUndefAll, nat: nativeDiv, r2: true,
		valid: func(size uint8, in aluIn) bool {
			_, _, ok := fn(size, in.h, in.a, in.b)
			return ok
		},
		emu: func(f *Flags, size uint8, in aluIn) aluOut {
			q, r, _ := fn(size, in.h, in.a, in.b)
			return aluOut{r: q, r2: r}
		}}
}

// aluBtSpec: the register form reduces the bit offset modulo the width; that reduction
// is the interpreter's job, so the test does it before calling our function.
func aluBtSpec(op string, fn func(*Flags, uint8, uint64, uint) uint64) aluSpec {
	return aluSpec{op: op, sizes: aluWideSizes, undef: aluUndefBt,
		emu: func(f *Flags, size uint8, in aluIn) aluOut {
			return aluOut{r: fn(f, size, in.a, uint(in.b%(uint64(size)*8)))}
		}}
}

func aluBsxSpec(op string, fn func(*Flags, uint8, uint64, uint64) uint64) aluSpec {
	return aluSpec{op: op, sizes: aluWideSizes, undef: aluUndefBsx,
		emu: func(f *Flags, size uint8, in aluIn) aluOut {
			return aluOut{r: fn(f, size, in.b, in.a)}
		}}
}

func aluCntSpec(op string, fn func(*Flags, uint8, uint64) uint64, undef func(uint8, aluIn) (uint64, bool)) aluSpec {
	return aluSpec{op: op, sizes: aluWideSizes, undef: undef,
		emu: func(f *Flags, size uint8, in aluIn) aluOut {
			return aluOut{r: fn(f, size, in.b)}
		}}
}

func aluCfSpec(op string, fn func(f *Flags)) aluSpec {
	return aluSpec{op: op, sizes: []uint8{0},
		emu: func(f *Flags, size uint8, in aluIn) aluOut {
			fn(f)
			return aluOut{}
		}}
}

func aluSetccSpec(cc uint8) aluSpec {
	return aluSpec{op: fmt.Sprintf("set%d", cc), sizes: []uint8{1},
		emu: func(f *Flags, size uint8, in aluIn) aluOut {
			if f.Cond(cc) {
				return aluOut{r: 1}
			}
			return aluOut{}
		}}
}

func aluSpecs() []aluSpec {
	specs := []aluSpec{
		aluBinSpec("add", Add, nil),
		aluBinSpec("adc", Adc, nil),
		aluBinSpec("sub", Sub, nil),
		aluBinSpec("sbb", Sbb, nil),
		aluBinSpec("and", And, aluUndefLogic),
		aluBinSpec("or", Or, aluUndefLogic),
		aluBinSpec("xor", Xor, aluUndefLogic),
		aluBinSpec("cmp", func(f *Flags, size uint8, a, b uint64) uint64 {
			Cmp(f, size, a, b)
			return a & sizeMask(size)
		}, nil),
		aluBinSpec("test", func(f *Flags, size uint8, a, b uint64) uint64 {
			Test(f, size, a, b)
			return a & sizeMask(size)
		}, aluUndefLogic),
		aluUnSpec("inc", Inc),
		aluUnSpec("dec", Dec),
		aluUnSpec("neg", Neg),
		aluShiftSpec("shl", Shl, aluUndefShlShr),
		aluShiftSpec("shr", Shr, aluUndefShlShr),
		aluShiftSpec("sar", Sar, aluUndefSar),
		aluShiftSpec("rol", Rol, aluUndefRot),
		aluShiftSpec("ror", Ror, aluUndefRot),
		aluShiftSpec("rcl", Rcl, aluUndefRc),
		aluShiftSpec("rcr", Rcr, aluUndefRc),
		aluShift1Spec("shl1", Shl),
		aluShift1Spec("shr1", Shr),
		aluShift1Spec("sar1", Sar),
		aluShxdSpec("shld", Shld),
		aluShxdSpec("shrd", Shrd),
		aluMulSpec("mul", Mul),
		aluMulSpec("imul", Imul),
		{op: "imul2", sizes: aluWideSizes, undef: aluUndefMul,
			emu: func(f *Flags, size uint8, in aluIn) aluOut {
				lo, _ := Imul(f, size, in.a, in.b)
				return aluOut{r: lo}
			}},
		aluDivSpec("div", Div),
		aluDivSpec("idiv", Idiv),
		{op: "bt", sizes: aluWideSizes, undef: aluUndefBt,
			emu: func(f *Flags, size uint8, in aluIn) aluOut {
				Bt(f, size, in.a, uint(in.b%(uint64(size)*8)))
				return aluOut{r: in.a & sizeMask(size)}
			}},
		aluBtSpec("bts", Bts),
		aluBtSpec("btr", Btr),
		aluBtSpec("btc", Btc),
		aluBsxSpec("bsf", Bsf),
		aluBsxSpec("bsr", Bsr),
		aluCntSpec("tzcnt", Tzcnt, aluUndefBt),
		aluCntSpec("popcnt", Popcnt, nil),
		aluCfSpec("cmc", func(f *Flags) { f.SetCF(!f.CF()) }),
		aluCfSpec("stc", func(f *Flags) { f.SetCF(true) }),
		aluCfSpec("clc", func(f *Flags) { f.SetCF(false) }),
	}
	if hostHasLZCNT() {
		specs = append(specs, aluCntSpec("lzcnt", Lzcnt, aluUndefBt))
	}
	for cc := uint8(0); cc < 16; cc++ {
		specs = append(specs, aluSetccSpec(cc))
	}
	return specs
}

// hostHasLZCNT probes the instruction itself: without ABM, F3 0F BD executes as BSR
// (no fault), which returns 0 for an input of 1 where LZCNT returns width-1.
func hostHasLZCNT() bool {
	ax, _, _ := native_lzcnt_4(0, 1, 0, 0, nativeHostFlags)
	return ax&0xffffffff == 31
}

// aluPrep describes how the Flags under test got their input state: a plain Set, or a
// real lazy-flags operation (so that preservation is tested against every encoding).
type aluPrep struct {
	kind uint8 // 0: Set(fl); 1..: an operation, see apply
	size uint8
	a, b uint64
	c    uint8
}

func (p aluPrep) String() string {
	if p.kind == 0 {
		return "Set"
	}
	return fmt.Sprintf("prep%d/size%d(%#x,%#x,c=%d)", p.kind, p.size, p.a, p.b, p.c)
}

const aluPrepKinds = 12

// apply establishes the input flags on f and returns them in RFLAGS layout.
func (p aluPrep) apply(f *Flags, fl uint64) uint64 {
	switch p.kind % aluPrepKinds {
	case 0:
		f.Set(fl)
	case 1:
		Add(f, p.size, p.a, p.b)
	case 2:
		Sbb(f, p.size, p.a, p.b)
	case 3:
		Xor(f, p.size, p.a, p.b)
	case 4:
		f.Set(fl)
		Rcl(f, p.size, p.a, p.c)
	case 5:
		f.Set(fl)
		Inc(f, p.size, p.a)
	case 6:
		Imul(f, p.size, p.a, p.b)
	case 7:
		f.Set(fl)
		Bt(f, p.size, p.a, uint(p.c)&63)
		Tzcnt(f, p.size, p.b)
		f.SetCF(p.c&1 != 0)
	case 8:
		Popcnt(f, p.size, p.a) // PF via the parity delta byte
	case 9:
		Shr(f, p.size, p.a, p.c)
	case 10:
		f.Set(fl)
		Dec(f, p.size, p.a)
	case 11:
		f.Set(fl)
		Rol(f, p.size, p.a, p.c) // SF/PF deltas from Set survive
	}
	return f.Get()
}

// aluDiff compares the emulated and native outcome of one vector; "" means equal.
func aluDiff(s *aluSpec, size uint8, in aluIn, emu, nat aluOut) string {
	var uf uint64
	var ur bool
	if s.undef != nil {
		uf, ur = s.undef(size, in)
	}
	m := sizeMask(size)
	var msg string
	if !ur && emu.r&m != nat.r&m {
		msg += fmt.Sprintf(" result emu=%#x cpu=%#x", emu.r&m, nat.r&m)
	}
	if s.r2 && emu.r2&m != nat.r2&m {
		msg += fmt.Sprintf(" r2 emu=%#x cpu=%#x", emu.r2&m, nat.r2&m)
	}
	cmp := ArithFlags &^ uf
	if d := (emu.fl ^ nat.fl) & cmp; d != 0 {
		msg += fmt.Sprintf(" flags emu=%s cpu=%s differ in %s", aluFlagNames(emu.fl), aluFlagNames(nat.fl), aluFlagNames(d))
	}
	return msg
}

func aluFlagNames(v uint64) string {
	s := ""
	for _, x := range []struct {
		bit  uint64
		name string
	}{{FlagOF, "O"}, {FlagSF, "S"}, {FlagZF, "Z"}, {FlagAF, "A"}, {FlagPF, "P"}, {FlagCF, "C"}} {
		if v&x.bit != 0 {
			s += x.name
		} else {
			s += "-"
		}
	}
	return s
}

// aluRunCase runs one vector through both sides. ok=false when the vector is not valid for
// the native side (a DIV that would raise #DE). in.fl is replaced by the flags that p
// establishes.
func aluRunCase(s *aluSpec, size uint8, in aluIn, p aluPrep) (emu, nat aluOut, out aluIn, ok bool) {
	var f Flags
	in.fl = p.apply(&f, in.fl&ArithFlags)
	if s.valid != nil && !s.valid(size, in) {
		return aluOut{}, aluOut{}, in, false
	}
	emu = s.emu(&f, size, in)
	emu.fl = f.Get()
	fn := s.stub(size)
	if s.nat != nil {
		nat = s.nat(fn, size, in)
	} else {
		nat = nativeDefault(fn, size, in)
	}
	return emu, nat, in, true
}

// aluChecker counts vectors and reports the first few mismatches of a test.
type aluChecker struct {
	t      testing.TB
	n      int
	failed int
}

func (c *aluChecker) check(s *aluSpec, size uint8, in aluIn, p aluPrep) {
	emu, nat, in, ok := aluRunCase(s, size, in, p)
	if !ok {
		return
	}
	c.n++
	if msg := aluDiff(s, size, in, emu, nat); msg != "" {
		c.failed++
		if c.failed <= 10 {
			c.t.Errorf("%s/%d a=%#x b=%#x h=%#x c=%d flags-in=%s (%v):%s",
				s.op, size*8, in.a, in.b, in.h, in.c, aluFlagNames(in.fl), p, msg)
		}
	}
}

func (c *aluChecker) done() {
	if c.failed > 10 {
		c.t.Errorf("... %d mismatches in total", c.failed)
	}
}

func aluSpecByName(t testing.TB, name string) *aluSpec {
	for _, s := range aluSpecs() {
		if s.op == name {
			return &s
		}
	}
	t.Fatalf("no spec %q", name)
	return nil
}

// TestNativeStubsPresent guards the generated table against drifting from the specs.
func TestNativeStubsPresent(t *testing.T) {
	for _, s := range aluSpecs() {
		for _, size := range s.sizes {
			if nativeStubs[nativeKey{s.op, size}] == nil {
				t.Errorf("no native stub for %s/%d (re-run go generate)", s.op, size)
			}
		}
	}
}

var aluFlagPatterns = []uint64{0, FlagCF, ArithFlags, ArithFlags &^ FlagCF}

// TestALUExhaustive8 compares every 8-bit operand pair (and every count 0..255 for the
// shifts and rotates) with carry-in 0 and 1 and the other flags both clear and set.
func TestALUExhaustive8(t *testing.T) {
	c := &aluChecker{t: t}
	for _, op := range []string{"add", "adc", "sub", "sbb", "and", "or", "xor", "cmp", "test",
		"shl", "shr", "sar", "rol", "ror", "rcl", "rcr", "mul", "imul", "div", "idiv"} {
		s := aluSpecByName(t, op)
		for a := 0; a < 256; a++ {
			for b := 0; b < 256; b++ {
				for _, fl := range aluFlagPatterns {
					// garbage above the operand size must not matter
					in := aluIn{a: uint64(a) | 0xdead_beef_0000_0000, b: uint64(b) | 0x1234_5600, c: uint8(b), h: uint64(b), fl: fl}
					if op == "div" || op == "idiv" {
						in = aluIn{a: uint64(a), b: uint64(b>>4 | b<<4), h: uint64(b), fl: fl}
					}
					c.check(s, 1, in, aluPrep{})
				}
			}
		}
	}
	for _, op := range []string{"inc", "dec", "neg", "shl1", "shr1", "sar1"} {
		s := aluSpecByName(t, op)
		for a := 0; a < 256; a++ {
			for fl := uint64(0); fl < 1<<12; fl++ {
				if fl&^ArithFlags != 0 {
					continue
				}
				c.check(s, 1, aluIn{a: uint64(a) | 0xff00, fl: fl}, aluPrep{})
			}
		}
	}
	for cc := 0; cc < 16; cc++ {
		s := aluSpecByName(t, fmt.Sprintf("set%d", cc))
		for fl := uint64(0); fl < 1<<12; fl++ {
			if fl&^ArithFlags == 0 {
				c.check(s, 1, aluIn{a: 0xffff, fl: fl}, aluPrep{})
			}
		}
	}
	c.done()
	t.Logf("%d vectors", c.n)
}

var aluEdgeCache = [9][]uint64{1: aluMakeEdgeValues(1), 2: aluMakeEdgeValues(2), 4: aluMakeEdgeValues(4), 8: aluMakeEdgeValues(8)}

// aluEdgeValues returns the interesting operand values for a size, plus copies with
// garbage above the operand size.
func aluEdgeValues(size uint8) []uint64 { return aluEdgeCache[size] }

func aluMakeEdgeValues(size uint8) []uint64 {
	m := sizeMask(size)
	n := uint(size) * 8
	min := uint64(1) << (n - 1)
	base := []uint64{0, 1, 2, 3, m, m - 1, min, min - 1, min + 1, 0x7f, 0x80, 0xff, 0x100,
		0x7fff, 0x8000, 0xffff, 0x7fffffff, 0x80000000, 0xffffffff, 1 << 32, 1 << 63,
		0x0f, 0x10, 0x5555555555555555, 0xaaaaaaaaaaaaaaaa}
	var vs []uint64
	seen := map[uint64]bool{}
	for _, v := range base {
		v &= m
		if !seen[v] {
			seen[v] = true
			vs = append(vs, v)
		}
	}
	if size < 8 {
		for _, v := range vs[:8] {
			vs = append(vs, v|^m&0xf0f0_f0f0_f0f0_f0f0)
		}
	}
	return vs
}

var aluEdgeCounts = []uint8{0, 1, 2, 7, 8, 9, 15, 16, 17, 18, 31, 32, 33, 63, 64, 65, 127, 128, 255}

// TestALUEdges: every op and size on the cross product of edge operands, edge counts
// and the four carry/other-flag patterns.
func TestALUEdges(t *testing.T) {
	c := &aluChecker{t: t}
	for _, s := range aluSpecs() {
		for _, size := range s.sizes {
			vs := aluEdgeValues(max(size, 1))
			for _, a := range vs {
				for _, b := range vs {
					for _, fl := range aluFlagPatterns {
						for _, cnt := range aluEdgeCounts {
							c.check(&s, size, aluIn{a: a, b: b, h: b >> 1, c: cnt, fl: fl}, aluPrep{})
							// DIV with a small high half, so that most vectors are valid
							if s.op == "div" || s.op == "idiv" {
								c.check(&s, size, aluIn{a: a, b: b, h: uint64(cnt) & 1 * sizeMask(size), fl: fl}, aluPrep{})
								c.check(&s, size, aluIn{a: a, b: b, h: 0, fl: fl}, aluPrep{})
							}
						}
					}
				}
			}
		}
	}
	c.done()
	t.Logf("%d vectors", c.n)
}

// aluRandOperand draws from a mix of distributions: uniform, small, sparse, edge values.
func aluRandOperand(r *rand.Rand, size uint8) uint64 {
	switch r.IntN(6) {
	case 0:
		return uint64(r.IntN(5)) - 2
	case 1:
		vs := aluEdgeValues(size)
		return vs[r.IntN(len(vs))]
	case 2:
		return r.Uint64() & r.Uint64() & r.Uint64()
	case 3:
		return r.Uint64() >> r.UintN(64)
	}
	return r.Uint64()
}

func aluRandIn(r *rand.Rand, s *aluSpec, size uint8) (aluIn, aluPrep) {
	sz := max(size, 1)
	in := aluIn{a: aluRandOperand(r, sz), b: aluRandOperand(r, sz), h: aluRandOperand(r, sz),
		c: uint8(r.UintN(256)), fl: r.Uint64() & ArithFlags}
	if r.IntN(2) == 0 {
		in.c = aluEdgeCounts[r.IntN(len(aluEdgeCounts))]
	}
	if s.op == "div" || s.op == "idiv" {
		// Keep the high half small relative to the divisor often enough to be valid.
		switch r.IntN(3) {
		case 0:
			in.h = 0
		case 1:
			in.h = in.h % (in.b&sizeMask(sz) | 1)
		case 2:
			if SignExtend(in.a, sz)>>63 != 0 {
				in.h = ^uint64(0)
			} else {
				in.h = 0
			}
		}
	}
	var p aluPrep
	if r.IntN(2) == 0 {
		p = aluPrep{kind: uint8(r.IntN(aluPrepKinds)), size: aluSizes[r.IntN(4)],
			a: aluRandOperand(r, 8), b: aluRandOperand(r, 8), c: uint8(r.UintN(256))}
	}
	return in, p
}

// TestALURandom: 20000 vectors per op and size (fixed seed), half of them with the
// input flags coming from a preceding lazy operation instead of Set.
func TestALURandom(t *testing.T) {
	const perOp = 20000
	c := &aluChecker{t: t}
	r := rand.New(rand.NewPCG(2026, 11))
	for _, s := range aluSpecs() {
		for _, size := range s.sizes {
			before := c.n
			for i := 0; c.n-before < perOp && i < 20*perOp; i++ {
				in, p := aluRandIn(r, &s, size)
				c.check(&s, size, in, p)
			}
			if c.n-before < perOp {
				t.Errorf("%s/%d: only %d valid vectors", s.op, size, c.n-before)
			}
		}
	}
	c.done()
	t.Logf("%d vectors", c.n)
}

// TestComparatorCatchesErrors proves the harness can fail: a deliberately wrong flag,
// result or second result must be reported, also on ops with undefined flags as long
// as the corrupted flag is a defined one.
func TestComparatorCatchesErrors(t *testing.T) {
	for _, tc := range []struct {
		op      string
		size    uint8
		in      aluIn
		corrupt func(*aluOut)
	}{
		{"add", 1, aluIn{a: 0xff, b: 1}, func(o *aluOut) { o.fl ^= FlagCF }},
		{"add", 8, aluIn{a: 1, b: 2}, func(o *aluOut) { o.fl ^= FlagPF }},
		{"sub", 4, aluIn{a: 5, b: 5}, func(o *aluOut) { o.fl ^= FlagZF }},
		{"adc", 2, aluIn{a: 0x7fff, b: 0}, func(o *aluOut) { o.fl ^= FlagAF }},
		{"and", 8, aluIn{a: 1 << 63, b: 1 << 63}, func(o *aluOut) { o.fl ^= FlagSF }},
		{"shl", 4, aluIn{a: 3, c: 1}, func(o *aluOut) { o.fl ^= FlagOF }},
		{"rol", 1, aluIn{a: 3, c: 3}, func(o *aluOut) { o.fl ^= FlagZF }}, // preserved flag
		{"mul", 8, aluIn{a: 1 << 40, b: 1 << 40}, func(o *aluOut) { o.r2++ }},
		{"div", 4, aluIn{a: 100, b: 7}, func(o *aluOut) { o.r2++ }},
		{"xor", 2, aluIn{a: 1, b: 2}, func(o *aluOut) { o.r ^= 0x8000 }},
		{"set4", 1, aluIn{}, func(o *aluOut) { o.r ^= 1 }},
	} {
		s := aluSpecByName(t, tc.op)
		emu, nat, in, ok := aluRunCase(s, tc.size, tc.in, aluPrep{})
		if !ok {
			t.Fatalf("%s: vector not valid", tc.op)
		}
		if msg := aluDiff(s, tc.size, in, emu, nat); msg != "" {
			t.Fatalf("%s/%d: uncorrupted vector already differs:%s", tc.op, tc.size, msg)
		}
		tc.corrupt(&emu)
		if aluDiff(s, tc.size, in, emu, nat) == "" {
			t.Errorf("%s/%d: corrupted output not detected", tc.op, tc.size)
		}
	}
}

// aluUndefRow is one row of aluUndefTable: for the listed operand sizes and raw
// counts (CL, before masking), the flags the SDM leaves undefined and whether the
// destination is undefined too.
type aluUndefRow struct {
	sizes  []uint8 // nil: every size the op has
	counts []uint8 // nil: every count 0..255
	flags  uint64
	res    bool
}

// aluUndefTable is the undefined-flag table above as data, written out vector by
// vector rather than computed, so that a change to an aluUndef* function (which
// widens or narrows what the differential tests compare) must also be made here.
// Count-dependent ops list the boundaries: 0, 1, 2, the width, and the counts that
// the 5- or 6-bit mask wraps. set0..set15 are looked up as "setcc".
var aluUndefTable = func() map[string][]aluUndefRow {
	const (
		A, O, C = FlagAF, FlagOF, FlagCF
		mulU    = FlagSF | FlagZF | FlagAF | FlagPF
		btU     = FlagOF | FlagSF | FlagAF | FlagPF
		bsxU    = FlagCF | btU
	)
	none := []aluUndefRow{{}}
	all := func(f uint64) []aluUndefRow { return []aluUndefRow{{flags: f}} }
	at := func(size uint8, f uint64, counts ...uint8) aluUndefRow {
		return aluUndefRow{sizes: []uint8{size}, counts: counts, flags: f}
	}
	shlShr := []aluUndefRow{
		at(1, 0, 0, 32, 64), at(1, A, 1, 33), at(1, A|O, 2, 7), at(1, A|O|C, 8, 31),
		at(2, 0, 0, 32), at(2, A, 1), at(2, A|O, 2, 15), at(2, A|O|C, 16, 31),
		at(4, 0, 0, 32), at(4, A, 1), at(4, A|O, 2, 31, 63),
		at(8, 0, 0, 64), at(8, A, 1, 65), at(8, A|O, 2, 32, 63),
	}
	sar := []aluUndefRow{
		at(1, 0, 0, 32), at(1, A, 1), at(1, A|O, 2, 8, 31),
		at(2, 0, 0), at(2, A|O, 16, 31),
		at(4, 0, 0), at(4, A, 1, 33), at(4, A|O, 31),
		at(8, 0, 0, 64), at(8, A|O, 32, 63),
	}
	rot := []aluUndefRow{
		at(1, 0, 0, 1, 32, 33), at(1, O, 2, 8, 9),
		at(2, 0, 0, 1), at(2, O, 16, 17),
		at(4, 0, 0, 1), at(4, O, 2, 31),
		at(8, 0, 0, 1, 64, 65), at(8, O, 32, 63),
	}
	rc := []aluUndefRow{
		at(1, O, 0, 2, 9, 32), at(1, 0, 1, 33),
		at(2, O, 0, 17), at(2, 0, 1),
		at(4, O, 0, 31), at(4, 0, 1, 33),
		at(8, O, 0, 33, 64), at(8, 0, 1, 65),
	}
	shxd := []aluUndefRow{
		at(2, 0, 0, 32), at(2, A, 1), at(2, A|O, 2, 15, 16),
		{sizes: []uint8{2}, counts: []uint8{17, 31}, flags: ArithFlags, res: true},
		at(4, 0, 0, 32), at(4, A, 1), at(4, A|O, 2, 31),
		at(8, 0, 0, 64), at(8, A, 1), at(8, A|O, 2, 32, 63),
	}
	return map[string][]aluUndefRow{
		"add": none, "adc": none, "sub": none, "sbb": none, "cmp": none,
		"inc": none, "dec": none, "neg": none,
		"and": all(A), "or": all(A), "xor": all(A), "test": all(A),
		"shl": shlShr, "shr": shlShr, "sar": sar,
		"rol": rot, "ror": rot, "rcl": rc, "rcr": rc,
		"shl1": all(A), "shr1": all(A), "sar1": all(A),
		"shld": shxd, "shrd": shxd,
		"mul": all(mulU), "imul": all(mulU), "imul2": all(mulU),
		"div": all(ArithFlags), "idiv": all(ArithFlags),
		"bt": all(btU), "bts": all(btU), "btr": all(btU), "btc": all(btU),
		"bsf": all(bsxU), "bsr": all(bsxU),
		"tzcnt": all(btU), "lzcnt": all(btU),
		"popcnt": none, "cmc": none, "stc": none, "clc": none, "setcc": none,
	}
}()

// TestALUUndefinedFlags checks which flags each op leaves undefined (the flags the
// differential tests do not compare) against aluUndefTable: every spec has rows, every
// row matches the spec's undef function at each listed size and count, and the table
// names no op that the specs lack.
func TestALUUndefinedFlags(t *testing.T) {
	seen := map[string]bool{}
	r := rand.New(rand.NewPCG(7, 7))
	for _, s := range aluSpecs() {
		key := s.op
		if strings.HasPrefix(key, "set") {
			key = "setcc"
		}
		seen[key] = true
		rows, ok := aluUndefTable[key]
		if !ok {
			t.Errorf("%s: not in the undefined-flag table", s.op)
			continue
		}
		for _, row := range rows {
			sizes := row.sizes
			if sizes == nil {
				sizes = s.sizes
			}
			for _, size := range sizes {
				if !slices.Contains(s.sizes, size) {
					t.Errorf("%s: table row for size %d, which the op does not have", s.op, size)
					continue
				}
				counts := row.counts
				if counts == nil {
					counts = make([]uint8, 256)
					for c := range counts {
						counts[c] = uint8(c)
					}
				}
				for _, c := range counts {
					// Operands must not matter: only size and count do.
					in := aluIn{a: r.Uint64(), b: r.Uint64(), h: r.Uint64(), c: c, fl: r.Uint64() & ArithFlags}
					var gf uint64
					var gr bool
					if s.undef != nil {
						gf, gr = s.undef(size, in)
					}
					if gf != row.flags || gr != row.res {
						t.Errorf("%s/%d count %d: undefined flags %s (result undefined: %v), table says %s (%v)",
							s.op, size, c, aluFlagNames(gf), gr, aluFlagNames(row.flags), row.res)
						break // one line per row and size
					}
				}
			}
		}
	}
	for op := range aluUndefTable {
		if !seen[op] && !(op == "lzcnt" && !hostHasLZCNT()) {
			t.Errorf("table row %q names no ALU spec", op)
		}
	}
}

// nativeFaults runs a DIV/IDIV stub and reports whether it raised #DE. The kernel
// turns #DE into SIGFPE and the Go runtime turns a SIGFPE in Go or assembly code into
// an ordinary, recoverable "integer divide by zero" panic, so the process survives.
func nativeFaults(s *aluSpec, size uint8, in aluIn) (faulted bool) {
	defer func() {
		if r := recover(); r != nil {
			faulted = true
		}
	}()
	s.nat(s.stub(size), size, in)
	return false
}

// TestDivDENative cross-checks the #DE rule itself against the host CPU: for vectors
// around the fault boundary, Div/Idiv's ok must be false exactly when the CPU faults.
// Each fault costs a signal round trip (~15 us), so the count is bounded.
func TestDivDENative(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 9))
	faults := 0
	for _, op := range []string{"div", "idiv"} {
		s := aluSpecByName(t, op)
		for _, size := range aluSizes {
			m := sizeMask(size)
			for i := 0; i < 1500; i++ {
				in, _ := aluRandIn(r, s, size)
				switch i % 5 {
				case 0: // zero divisor
					in.b &^= m
				case 1: // quotient exactly at / just beyond the range
					in.b = 1
					in.h = uint64(i&1) * m
				case 2:
					in.b = m // -1 for IDIV
				case 3:
					in.h = r.Uint64()
				}
				_, _, ok := Div(size, in.h, in.a, in.b)
				if op == "idiv" {
					_, _, ok = Idiv(size, in.h, in.a, in.b)
				}
				f := nativeFaults(s, size, in)
				if f {
					faults++
				}
				if f == ok {
					t.Errorf("%s/%d %#x:%#x / %#x: ok=%v but CPU faulted=%v", op, size*8, in.h, in.a, in.b, ok, f)
				}
			}
		}
	}
	if faults < 1000 {
		t.Errorf("only %d faulting vectors: the test does not exercise #DE", faults)
	}
	t.Logf("%d #DE vectors agreed with the CPU", faults)
}

var aluFuzzSpecs = aluSpecs()

// FuzzALU compares the host CPU with our ALU on fuzzer-chosen op, size, operands,
// count and input flags; prepKind selects how the input flags were produced (Set or a
// preceding lazy operation on prepA).
func FuzzALU(f *testing.F) {
	f.Add(uint8(0), uint8(0), uint64(0xff), uint64(1), uint64(0), uint8(0), uint8(0), uint8(0), uint64(0))
	f.Add(uint8(12), uint8(3), uint64(1<<63), uint64(0), uint64(0), uint8(63), uint8(0x3f), uint8(1), uint64(7))
	f.Fuzz(func(t *testing.T, op, size uint8, a, b, h uint64, c, fl, prepKind uint8, prepA uint64) {
		s := &aluFuzzSpecs[int(op)%len(aluFuzzSpecs)]
		sz := s.sizes[int(size)%len(s.sizes)]
		var flags uint64
		for i, bit := range []uint64{FlagCF, FlagPF, FlagAF, FlagZF, FlagSF, FlagOF} {
			if fl&(1<<i) != 0 {
				flags |= bit
			}
		}
		in := aluIn{a: a, b: b, h: h, c: c, fl: flags}
		p := aluPrep{kind: prepKind % aluPrepKinds, size: aluSizes[prepKind>>4%4], a: prepA, b: b ^ prepA, c: c ^ prepKind}
		emu, nat, in, ok := aluRunCase(s, sz, in, p)
		if !ok {
			return // a #DE vector; TestDivDENative covers those
		}
		if msg := aluDiff(s, sz, in, emu, nat); msg != "" {
			t.Fatalf("%s/%d a=%#x b=%#x h=%#x c=%d flags-in=%s (%v):%s",
				s.op, sz*8, in.a, in.b, in.h, in.c, aluFlagNames(in.fl), p, msg)
		}
	})
}
