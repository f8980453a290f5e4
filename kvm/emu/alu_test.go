package emu

import (
	"math/big"
	"math/rand/v2"
	"testing"
)

// Portable known-answer tests; the exhaustive comparison with the host CPU lives in
// native_amd64_test.go.

func TestALUKnownAnswers(t *testing.T) {
	const (
		O = FlagOF
		S = FlagSF
		Z = FlagZF
		A = FlagAF
		P = FlagPF
		C = FlagCF
	)
	type tc struct {
		name    string
		flIn    uint64
		run     func(f *Flags) uint64
		want    uint64
		wantFl  uint64
		checkFl uint64 // flags to compare (the defined ones)
	}
	all := ArithFlags
	cases := []tc{
		{"add8 ff+1", 0, func(f *Flags) uint64 { return Add(f, 1, 0xff, 1) }, 0, Z | A | P | C, all},
		{"add8 7f+1", 0, func(f *Flags) uint64 { return Add(f, 1, 0x7f, 1) }, 0x80, O | S | A, all},
		{"add16 garbage", 0, func(f *Flags) uint64 { return Add(f, 2, 0xabcd_ffff, 0x1_0001) }, 0, Z | A | P | C, all},
		{"add64 max+max", 0, func(f *Flags) uint64 { return Add(f, 8, ^uint64(0), ^uint64(0)) }, ^uint64(1), S | A | C, all},
		{"adc32 cf", C, func(f *Flags) uint64 { return Adc(f, 4, 0xffffffff, 0) }, 0, Z | A | P | C, all},
		{"adc32 nocf", 0, func(f *Flags) uint64 { return Adc(f, 4, 0xffffffff, 0) }, 0xffffffff, S | P, all},
		{"sub8 0-1", 0, func(f *Flags) uint64 { return Sub(f, 1, 0, 1) }, 0xff, S | A | P | C, all},
		{"sub8 80-1", 0, func(f *Flags) uint64 { return Sub(f, 1, 0x80, 1) }, 0x7f, O | A, all},
		{"sbb64 cf", C, func(f *Flags) uint64 { return Sbb(f, 8, 5, 5) }, ^uint64(0), S | A | P | C, all},
		{"cmp eq", 0, func(f *Flags) uint64 { Cmp(f, 4, 7, 7); return 0 }, 0, Z | P, all},
		{"neg 0", C, func(f *Flags) uint64 { return Neg(f, 4, 0) }, 0, Z | P, all},
		{"neg min", 0, func(f *Flags) uint64 { return Neg(f, 1, 0x80) }, 0x80, O | S | C, all},
		{"inc keeps cf", C, func(f *Flags) uint64 { return Inc(f, 8, 1<<63-1) }, 1 << 63, O | S | A | P | C, all},
		{"dec keeps nocf", 0, func(f *Flags) uint64 { return Dec(f, 1, 1) }, 0, Z | P, all},
		{"xor self", all, func(f *Flags) uint64 { return Xor(f, 4, 0x1234, 0x1234) }, 0, Z | P, all &^ A},
		{"test sign", 0, func(f *Flags) uint64 { Test(f, 2, 0x8001, 0x8000); return 0 }, 0, S | P, all &^ A},
		{"or", C | O, func(f *Flags) uint64 { return Or(f, 1, 0x0f, 0xf0) }, 0xff, S | P, all &^ A},
		{"and", 0, func(f *Flags) uint64 { return And(f, 8, 1<<63|3, 1<<63|1) }, 1<<63 | 1, S, all &^ A},
		{"shl1 of", 0, func(f *Flags) uint64 { return Shl(f, 1, 0x40, 1) }, 0x80, O | S, all &^ A},
		{"shl count0 keeps", O | C | Z, func(f *Flags) uint64 { return Shl(f, 1, 0x40, 0x20) }, 0x40, O | C | Z, all},
		{"shl64 count64 masks", S, func(f *Flags) uint64 { return Shl(f, 8, 5, 64) }, 5, S, all},
		{"shl8 count8", 0, func(f *Flags) uint64 { return Shl(f, 1, 0x81, 8) }, 0, Z | P | C, Z | P | C | S},
		{"shr1", 0, func(f *Flags) uint64 { return Shr(f, 2, 0x8001, 1) }, 0x4000, O | P | C, all &^ A},
		{"sar1", 0, func(f *Flags) uint64 { return Sar(f, 4, 0x80000001, 1) }, 0xc0000000, S | P | C, all &^ A},
		{"sar8 count31", 0, func(f *Flags) uint64 { return Sar(f, 1, 0x80, 31) }, 0xff, S | P | C, S | Z | P | C},
		{"rol keeps szap", S | Z | A | P, func(f *Flags) uint64 { return Rol(f, 1, 0x81, 1) }, 0x03, S | Z | A | P | C | O, all},
		{"ror", 0, func(f *Flags) uint64 { return Ror(f, 2, 1, 1) }, 0x8000, C | O, all},
		{"rol8 count8", O, func(f *Flags) uint64 { return Rol(f, 1, 0x81, 8) }, 0x81, C, C},
		{"rcl9 no-op", C | O, func(f *Flags) uint64 { return Rcl(f, 1, 0x81, 9) }, 0x81, C | O, all},
		{"rcl1", C, func(f *Flags) uint64 { return Rcl(f, 1, 0x80, 1) }, 0x01, C | O, C | O},
		{"rcr1", C, func(f *Flags) uint64 { return Rcr(f, 8, 1, 1) }, 1 << 63, C | O, C | O},
		{"rcl64 count63", C, func(f *Flags) uint64 { return Rcl(f, 8, 2, 63) }, 1 << 62, C, C},
		{"shld16", 0, func(f *Flags) uint64 { return Shld(f, 2, 0x1234, 0xabcd, 4) }, 0x234a, C, C | Z | S},
		{"shrd32", 0, func(f *Flags) uint64 { return Shrd(f, 4, 0x12345678, 0x9, 8) }, 0x09123456, 0, C | Z | S},
		{"shrd64 cf", 0, func(f *Flags) uint64 { return Shrd(f, 8, 0x80, 0, 8) }, 0, Z | C | P, C | Z | S | P},
		{"mul8", 0, func(f *Flags) uint64 { lo, hi := Mul(f, 1, 0x80, 2); return hi<<8 | lo }, 0x100, O | C, O | C},
		{"mul16 fits", O | C, func(f *Flags) uint64 { lo, hi := Mul(f, 2, 0xff, 0xff); return hi<<16 | lo }, 0xfe01, 0, O | C},
		{"imul8 -1*-1", 0, func(f *Flags) uint64 { lo, hi := Imul(f, 1, 0xff, 0xff); return hi<<8 | lo }, 1, 0, O | C},
		{"imul8 -128*-1", 0, func(f *Flags) uint64 { lo, hi := Imul(f, 1, 0x80, 0xff); return hi<<8 | lo }, 0x80, O | C, O | C},
		{"imul64 hi", 0, func(f *Flags) uint64 { _, hi := Imul(f, 8, 1<<63, 2); return hi }, ^uint64(0), O | C, O | C},
		{"imul64 -1*-1", 0, func(f *Flags) uint64 { lo, _ := Imul(f, 8, ^uint64(0), ^uint64(0)); return lo }, 1, 0, O | C},
		{"mul64", 0, func(f *Flags) uint64 { _, hi := Mul(f, 8, ^uint64(0), ^uint64(0)); return hi }, ^uint64(1), O | C, O | C},
		{"bt keeps zf", Z | O, func(f *Flags) uint64 { Bt(f, 4, 0x10, 4); return 0 }, 0, Z | C, Z | C},
		{"bts", C, func(f *Flags) uint64 { return Bts(f, 8, 0, 63) }, 1 << 63, 0, C},
		{"btr", 0, func(f *Flags) uint64 { return Btr(f, 2, 0xffff, 15) }, 0x7fff, C, C},
		{"btc", 0, func(f *Flags) uint64 { return Btc(f, 4, 1, 0) }, 0, C, C},
		{"bsf", Z, func(f *Flags) uint64 { return Bsf(f, 4, 0x80, 77) }, 7, 0, Z},
		{"bsf zero keeps dst", 0, func(f *Flags) uint64 { return Bsf(f, 4, 0, 77) }, 77, Z, Z},
		{"bsr", 0, func(f *Flags) uint64 { return Bsr(f, 8, 1<<40|1, 0) }, 40, 0, Z},
		{"bsr16 garbage", 0, func(f *Flags) uint64 { return Bsr(f, 2, 0xf0000, 5) }, 5, Z, Z},
		{"tzcnt 0", 0, func(f *Flags) uint64 { return Tzcnt(f, 2, 0) }, 16, C, C | Z},
		{"tzcnt bit0", C, func(f *Flags) uint64 { return Tzcnt(f, 8, 1) }, 0, Z, C | Z},
		{"lzcnt 0", 0, func(f *Flags) uint64 { return Lzcnt(f, 4, 0) }, 32, C, C | Z},
		{"lzcnt msb", 0, func(f *Flags) uint64 { return Lzcnt(f, 2, 0x8000) }, 0, Z, C | Z},
		{"lzcnt16 1", 0, func(f *Flags) uint64 { return Lzcnt(f, 2, 1) }, 15, 0, C | Z},
		{"popcnt", all, func(f *Flags) uint64 { return Popcnt(f, 8, 0xff00ff) }, 16, 0, all},
		{"popcnt 0", all, func(f *Flags) uint64 { return Popcnt(f, 4, 1<<40) }, 0, Z, all},
	}
	for _, c := range cases {
		var f Flags
		f.Set(c.flIn)
		got := c.run(&f)
		if got != c.want {
			t.Errorf("%s: result %#x, want %#x", c.name, got, c.want)
		}
		if d := (f.Get() ^ c.wantFl) & c.checkFl; d != 0 {
			t.Errorf("%s: flags %#x, want %#x (differ in %#x)", c.name, f.Get(), c.wantFl, d)
		}
	}
}

func TestSignExtendTruncate(t *testing.T) {
	for _, c := range []struct {
		v          uint64
		size       uint8
		sext, trnc uint64
	}{
		{0x80, 1, 0xffffffffffffff80, 0x80},
		{0x17f, 1, 0x7f, 0x7f},
		{0xffff_8000, 2, 0xffffffffffff8000, 0x8000},
		{0x1_7fff_ffff, 4, 0x7fffffff, 0x7fffffff},
		{0x8000_0000, 4, 0xffffffff80000000, 0x80000000},
		{1 << 63, 8, 1 << 63, 1 << 63},
	} {
		if g := SignExtend(c.v, c.size); g != c.sext {
			t.Errorf("SignExtend(%#x, %d) = %#x, want %#x", c.v, c.size, g, c.sext)
		}
		if g := Truncate(c.v, c.size); g != c.trnc {
			t.Errorf("Truncate(%#x, %d) = %#x, want %#x", c.v, c.size, g, c.trnc)
		}
	}
}

// aluRefDiv is the SDM's DIV/IDIV rule on unbounded integers: #DE for a zero divisor or
// a quotient (truncated toward zero) outside the destination's range.
func aluRefDiv(signed bool, size uint8, hi, lo, divisor uint64) (q, r uint64, ok bool) {
	n := uint(size) * 8
	m := sizeMask(size)
	x := new(big.Int).Lsh(new(big.Int).SetUint64(hi&m), n)
	x.Or(x, new(big.Int).SetUint64(lo&m))
	d := new(big.Int).SetUint64(divisor & m)
	if signed {
		if hi&m>>(n-1) != 0 { // negative 2n-bit dividend
			x.Sub(x, new(big.Int).Lsh(big.NewInt(1), 2*n))
		}
		if divisor&m>>(n-1) != 0 {
			d.Sub(d, new(big.Int).Lsh(big.NewInt(1), n))
		}
	}
	if d.Sign() == 0 {
		return 0, 0, false
	}
	qq, rr := new(big.Int).QuoRem(x, d, new(big.Int))
	lo2, hi2 := new(big.Int), new(big.Int).Lsh(big.NewInt(1), n)
	if signed {
		lo2.Neg(new(big.Int).Lsh(big.NewInt(1), n-1))
		hi2.Lsh(big.NewInt(1), n-1)
	}
	if qq.Cmp(lo2) < 0 || qq.Cmp(hi2) >= 0 {
		return 0, 0, false
	}
	mask := new(big.Int).SetUint64(m)
	toU := func(v *big.Int) uint64 {
		if v.Sign() < 0 {
			v = new(big.Int).Add(v, new(big.Int).Lsh(big.NewInt(1), 64))
		}
		return new(big.Int).And(v, mask).Uint64()
	}
	return toU(qq), toU(rr), true
}

// TestDivRule checks Div/Idiv, including every #DE case, against the SDM rule:
// exhaustively for 8-bit (every 16-bit dividend and divisor), on edge values and on
// 20000 random vectors per size for wider operands.
func TestDivRule(t *testing.T) {
	fails := 0
	check := func(size uint8, hi, lo, d uint64) {
		for _, signed := range []bool{false, true} {
			var q, r uint64
			var ok bool
			if signed {
				q, r, ok = Idiv(size, hi, lo, d)
			} else {
				q, r, ok = Div(size, hi, lo, d)
			}
			wq, wr, wok := aluRefDiv(signed, size, hi, lo, d)
			if ok != wok || q != wq || r != wr {
				fails++
				if fails < 10 {
					t.Errorf("div signed=%v size=%d %#x:%#x / %#x = (%#x,%#x,%v), want (%#x,%#x,%v)",
						signed, size, hi, lo, d, q, r, ok, wq, wr, wok)
				}
			}
		}
	}
	// 8-bit: exhaustive, with a fast reference for the 16/8 case.
	for x := 0; x < 1<<16; x++ {
		for d := 0; d < 256; d++ {
			hi, lo := uint64(x>>8), uint64(x&0xff)
			q, r, ok := Div(1, hi, lo, uint64(d))
			wok := d != 0 && x/d <= 0xff
			if ok != wok || ok && (q != uint64(x/d) || r != uint64(x%d)) {
				t.Fatalf("Div(1, %#x, %#x, %#x) = %#x %#x %v", hi, lo, d, q, r, ok)
			}
			sx, sd := int(int16(x)), int(int8(d))
			q, r, ok = Idiv(1, hi, lo, uint64(d))
			wok = sd != 0 && sx/sd >= -128 && sx/sd <= 127
			if ok != wok || ok && (q != uint64(sx/sd)&0xff || r != uint64(sx%sd)&0xff) {
				t.Fatalf("Idiv(1, %#x, %#x, %#x) = %#x %#x %v", hi, lo, d, q, r, ok)
			}
		}
	}
	rng := rand.New(rand.NewPCG(3, 4))
	for _, size := range []uint8{2, 4, 8} {
		vs := []uint64{0, 1, 2, 3, sizeMask(size), sizeMask(size) - 1, 1 << (size*8 - 1), 1<<(size*8-1) - 1, 1<<(size*8-1) + 1}
		for _, hi := range vs {
			for _, lo := range vs {
				for _, d := range vs {
					check(size, hi, lo, d)
				}
			}
		}
		for i := 0; i < 20000; i++ {
			hi, lo, d := rng.Uint64(), rng.Uint64(), rng.Uint64()>>rng.UintN(64)
			switch i % 4 {
			case 0:
				hi = 0
			case 1:
				hi = ^uint64(0)
			case 2:
				hi %= d | 1
			}
			check(size, hi, lo, d)
		}
	}
}

// TestALUGarbageAboveSize: results and flags do not depend on input bits above size.
func TestALUGarbageAboveSize(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	type op2 func(*Flags, uint8, uint64, uint64) uint64
	type opc func(*Flags, uint8, uint64, uint8) uint64
	bin := map[string]op2{"add": Add, "adc": Adc, "sub": Sub, "sbb": Sbb, "and": And, "or": Or, "xor": Xor,
		"bsf": Bsf, "bsr": Bsr}
	sh := map[string]opc{"shl": Shl, "shr": Shr, "sar": Sar, "rol": Rol, "ror": Ror, "rcl": Rcl, "rcr": Rcr}
	for i := 0; i < 5000; i++ {
		for _, size := range []uint8{1, 2, 4} {
			m := sizeMask(size)
			a, b := rng.Uint64(), rng.Uint64()
			c := uint8(rng.UintN(256))
			fl := rng.Uint64() & ArithFlags
			var f1, f2 Flags
			for name, fn := range bin {
				f1.Set(fl)
				f2.Set(fl)
				r1, r2 := fn(&f1, size, a, b), fn(&f2, size, a&m, b&m)
				if name == "bsf" || name == "bsr" {
					r1, r2 = r1&m, r2&m
				}
				if r1 != r2 || f1.Get() != f2.Get() || r1&^m != 0 {
					t.Fatalf("%s/%d %#x %#x: garbage changes result %#x vs %#x or flags %#x vs %#x",
						name, size, a, b, r1, r2, f1.Get(), f2.Get())
				}
			}
			for name, fn := range sh {
				f1.Set(fl)
				f2.Set(fl)
				r1, r2 := fn(&f1, size, a, c), fn(&f2, size, a&m, c)
				if r1 != r2 || f1.Get() != f2.Get() || r1&^m != 0 {
					t.Fatalf("%s/%d %#x c=%d: garbage changes result %#x vs %#x or flags %#x vs %#x",
						name, size, a, c, r1, r2, f1.Get(), f2.Get())
				}
			}
		}
	}
}

// TestALUNoAllocs: the ALU never allocates, and sizes other than 1/2/4/8 (a caller
// bug) yield garbage but never panic.
func TestALUNoAllocs(t *testing.T) {
	var f Flags
	n := testing.AllocsPerRun(100, func() {
		for _, size := range []uint8{0, 1, 2, 3, 4, 8, 16, 255} {
			a := Add(&f, size, 1, 2)
			a = Sub(&f, size, a, 3)
			a = Shl(&f, size, a, 65)
			a = Rcr(&f, size, a, 200)
			a = Shld(&f, size, a, 7, 40)
			lo, hi := Imul(&f, size, a, a)
			_, _, _ = Idiv(size, hi, lo, 3)
			_, _, _ = Div(size, hi, lo, 0)
			a = Bts(&f, size, a, 99)
			a = Lzcnt(&f, size, a)
			_ = f.Cond(uint8(a))
		}
	})
	if n != 0 {
		t.Fatalf("ALU allocates: %v allocs per run", n)
	}
}

// Benchmarks: the interpreter executes one of these per guest instruction, so the
// cost per call is what limits MIPS.

func BenchmarkAdd(b *testing.B) {
	f := aluBenchFlags()
	x := uint64(1)
	for i := 0; i < b.N; i++ {
		x = Add(f, 8, x, uint64(i))
	}
	aluSinkU64 = x
}

func BenchmarkAdd32(b *testing.B) {
	f := aluBenchFlags()
	x := uint64(1)
	for i := 0; i < b.N; i++ {
		x = Add(f, 4, x, uint64(i))
	}
	aluSinkU64 = x
}

func BenchmarkCondAfterSub(b *testing.B) {
	f := aluBenchFlags()
	n := 0
	for i := 0; i < b.N; i++ {
		Cmp(f, 8, uint64(i), 1000)
		if f.Cond(0xc) { // JL
			n++
		}
	}
	aluSinkU64 = uint64(n)
}

func BenchmarkDecJnz(b *testing.B) {
	f := aluBenchFlags()
	x := uint64(b.N)
	for i := 0; i < b.N; i++ {
		x = Dec(f, 4, x)
		if !f.Cond(5) { // JNZ
			break
		}
	}
	aluSinkU64 = x
}

func BenchmarkTestJz(b *testing.B) {
	f := aluBenchFlags()
	n := 0
	for i := 0; i < b.N; i++ {
		Test(f, 4, uint64(i), 0x10)
		if f.ZF() {
			n++
		}
	}
	aluSinkU64 = uint64(n)
}

func BenchmarkAdcChain(b *testing.B) {
	f := aluBenchFlags()
	x := uint64(1)
	for i := 0; i < b.N; i++ {
		x = Adc(f, 8, x, ^uint64(i))
	}
	aluSinkU64 = x
}

func BenchmarkShl(b *testing.B) {
	f := aluBenchFlags()
	x := uint64(1)
	for i := 0; i < b.N; i++ {
		x = Shl(f, 8, x|1, uint8(i))
	}
	aluSinkU64 = x
}

func BenchmarkImul64(b *testing.B) {
	f := aluBenchFlags()
	x := uint64(3)
	for i := 0; i < b.N; i++ {
		x, _ = Imul(f, 8, x, uint64(i)|1)
	}
	aluSinkU64 = x
}

func BenchmarkDiv64(b *testing.B) {
	x := uint64(0)
	for i := 0; i < b.N; i++ {
		q, _, _ := Div(8, 0, ^uint64(i), uint64(i)|1)
		x += q
	}
	aluSinkU64 = x
}

func BenchmarkGetAfterAdd(b *testing.B) {
	f := aluBenchFlags()
	var x uint64
	for i := 0; i < b.N; i++ {
		Add(f, 8, uint64(i), 7)
		x += f.Get()
	}
	aluSinkU64 = x
}

// aluBenchFlags returns heap-allocated Flags, as the interpreter keeps them in its vCPU
// struct: with a local value the compiler would keep the lazy state in registers and
// drop the stores, measuring nothing.
func aluBenchFlags() *Flags {
	f := new(Flags)
	aluBenchSink = f
	return f
}

var aluBenchSink *Flags

// BenchmarkCondMixed evaluates unpredictable condition codes on varied lazy states,
// the interpreter's situation (every Jcc/SETcc/CMOVcc of the guest goes through Cond).
func BenchmarkCondMixed(b *testing.B) {
	states := aluLazyStates(4096)
	ccs := make([]uint8, 4096)
	x := uint32(1)
	for i := range ccs {
		x = x*1664525 + 1013904223
		ccs[i] = uint8(x >> 28)
	}
	b.ResetTimer()
	n := 0
	for i := 0; i < b.N; i++ {
		j := i & 4095
		if states[j].Cond(ccs[j]) {
			n++
		}
	}
	aluSinkU64 = uint64(n)
}
