package emu

import (
	"math/rand/v2"
	"testing"
)

// aluRefCond is the SDM's definition of the 16 condition codes on materialised flags.
func aluRefCond(v uint64, cc uint8) bool {
	cf, zf := v&FlagCF != 0, v&FlagZF != 0
	sf, of, pf := v&FlagSF != 0, v&FlagOF != 0, v&FlagPF != 0
	var r bool
	switch cc >> 1 {
	case 0:
		r = of
	case 1:
		r = cf
	case 2:
		r = zf
	case 3:
		r = cf || zf
	case 4:
		r = sf
	case 5:
		r = pf
	case 6:
		r = sf != of
	case 7:
		r = zf || sf != of
	}
	if cc&1 != 0 {
		r = !r
	}
	return r
}

// aluGetters reads the six flags one by one, for comparison with Get.
func aluGetters(f *Flags) uint64 {
	var v uint64
	for _, x := range []struct {
		b   bool
		bit uint64
	}{{f.CF(), FlagCF}, {f.PF(), FlagPF}, {f.AF(), FlagAF}, {f.ZF(), FlagZF}, {f.SF(), FlagSF}, {f.OF(), FlagOF}} {
		if x.b {
			v |= x.bit
		}
	}
	return v
}

// aluAllFlagValues enumerates the 64 combinations of the six arithmetic flags.
func aluAllFlagValues() []uint64 {
	bitsList := []uint64{FlagCF, FlagPF, FlagAF, FlagZF, FlagSF, FlagOF}
	var vs []uint64
	for i := 0; i < 64; i++ {
		var v uint64
		for j, b := range bitsList {
			if i&(1<<j) != 0 {
				v |= b
			}
		}
		vs = append(vs, v)
	}
	return vs
}

func TestFlagsZeroValue(t *testing.T) {
	var f Flags
	if g := f.Get(); g != 0 {
		t.Fatalf("zero Flags: Get() = %#x, want 0", g)
	}
	if f.CF() || f.PF() || f.AF() || f.ZF() || f.SF() || f.OF() {
		t.Fatalf("zero Flags: some getter is true")
	}
	for cc := uint8(0); cc < 16; cc++ {
		if got, want := f.Cond(cc), aluRefCond(0, cc); got != want {
			t.Errorf("zero Flags: Cond(%d) = %v, want %v", cc, got, want)
		}
	}
}

func TestFlagsSetGetRoundTrip(t *testing.T) {
	const others = FlagTF | FlagIF | FlagDF | 1<<1 | 1<<18 | 0xffff_0000_0000_0000
	for _, v := range aluAllFlagValues() {
		var f Flags
		f.Set(v | others) // non-arithmetic bits must be ignored
		if g := f.Get(); g != v {
			t.Errorf("Set(%#x): Get() = %#x", v, g)
		}
		if g := aluGetters(&f); g != v {
			t.Errorf("Set(%#x): aluGetters = %#x", v, g)
		}
		for cc := uint8(0); cc < 16; cc++ {
			if got, want := f.Cond(cc), aluRefCond(v, cc); got != want {
				t.Errorf("Set(%#x): Cond(%d) = %v, want %v", v, cc, got, want)
			}
		}
		for _, cf := range []bool{false, true} {
			g := f
			g.SetCF(cf)
			want := v &^ FlagCF
			if cf {
				want |= FlagCF
			}
			if got := g.Get(); got != want {
				t.Errorf("Set(%#x).SetCF(%v): Get() = %#x, want %#x", v, cf, got, want)
			}
		}
	}
}

// aluLazyStates produces Flags states the way the interpreter does: from real operations,
// so every encoding path (carry vectors, logic, shifts, deltas) is exercised.
func aluLazyStates(n int) []Flags {
	r := rand.New(rand.NewPCG(1, 2))
	sizes := []uint8{1, 2, 4, 8}
	var out []Flags
	var f Flags
	for len(out) < n {
		size := sizes[r.IntN(4)]
		a, b := r.Uint64()>>r.UintN(64), r.Uint64()>>r.UintN(64)
		if r.IntN(4) == 0 {
			b = a
		}
		switch r.IntN(10) {
		case 0:
			Add(&f, size, a, b)
		case 1:
			Sub(&f, size, a, b)
		case 2:
			Adc(&f, size, a, b)
		case 3:
			And(&f, size, a, b)
		case 4:
			Inc(&f, size, a)
		case 5:
			Shl(&f, size, a, uint8(b))
		case 6:
			Rol(&f, size, a, uint8(b))
		case 7:
			Imul(&f, size, a, b)
		case 8:
			f.Set(a)
		case 9:
			Popcnt(&f, size, a)
		}
		out = append(out, f)
	}
	return out
}

// TestFlagsLazyConsistency: on states made by real operations, Get agrees with the
// individual aluGetters, Cond agrees with the SDM formula on Get, Set(Get()) reproduces
// the state, and SetCF changes CF alone.
func TestFlagsLazyConsistency(t *testing.T) {
	for i, f := range aluLazyStates(20000) {
		v := f.Get()
		if g := aluGetters(&f); g != v {
			t.Fatalf("state %d: Get()=%#x aluGetters=%#x", i, v, g)
		}
		for cc := uint8(0); cc < 16; cc++ {
			if got, want := f.Cond(cc), aluRefCond(v, cc); got != want {
				t.Fatalf("state %d (%#x): Cond(%d) = %v, want %v", i, v, cc, got, want)
			}
		}
		var g Flags
		g.Set(v)
		if g.Get() != v {
			t.Fatalf("state %d: Set(Get()) = %#x, want %#x", i, g.Get(), v)
		}
		h := f
		h.SetCF(!h.CF())
		if h.Get() != v^FlagCF {
			t.Fatalf("state %d: CMC gives %#x from %#x", i, h.Get(), v)
		}
	}
}

// TestFlagsSetCFCMCSequence: STC/CLC/CMC interleaved with INC (which must keep CF).
func TestFlagsSetCFCMCSequence(t *testing.T) {
	var f Flags
	f.SetCF(true)
	Inc(&f, 4, 0xffffffff) // result 0: ZF, CF kept
	if !f.CF() || !f.ZF() || f.OF() {
		t.Fatalf("after STC; INC 0xffffffff: flags %#x", f.Get())
	}
	Inc(&f, 1, 0x7f) // OF set, CF still kept
	if !f.CF() || !f.OF() || !f.SF() || f.ZF() || !f.AF() {
		t.Fatalf("after INC 0x7f: flags %#x", f.Get())
	}
	f.SetCF(false)
	if f.CF() || !f.OF() || !f.SF() {
		t.Fatalf("after CLC: flags %#x", f.Get())
	}
	Dec(&f, 2, 0) // 0xffff: CF kept clear, SF, no OF
	if f.CF() || f.OF() || !f.SF() || !f.PF() || !f.AF() {
		t.Fatalf("after DEC 0: flags %#x", f.Get())
	}
}

func BenchmarkFlagsGet(b *testing.B) {
	var f Flags
	Sub(&f, 8, 3, 5)
	var s uint64
	for i := 0; i < b.N; i++ {
		s += f.Get()
	}
	aluSinkU64 = s
}

var aluSinkU64 uint64
var aluSinkBool bool
