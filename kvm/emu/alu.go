package emu

import "math/bits"

// The differential tests run every ALU op on the host CPU through generated stubs.
//go:generate go run gen_native.go

// ALU operations on operand sizes of 1, 2, 4 or 8 bytes. Inputs may carry garbage above
// the operand size; results are truncated (zero-extended) to it. Every function sets the
// arithmetic flags exactly like the CPU where the SDM defines them; where the SDM leaves
// a flag undefined the value chosen here is documented at the function and in
// the table in native_amd64_test.go (never something a correct guest relies on).
//
// A size other than 1, 2, 4 or 8 is a bug in the caller; it yields meaningless values
// but never panics (all shifts below are by unsigned counts, which Go defines for any
// amount).
//
// The shift amounts derived from size are masked to 0..63 (sizeShift; sizeMask keeps
// 0 for size 0, which the differential tests use for "no result"): for the valid
// sizes that changes nothing, and it tells the compiler the shift is in range, so a
// variable shift is one instruction instead of a shift plus the masking Go otherwise
// adds for counts >= 64. With a constant size (the fast handlers) the shifts vanish.

// SignExtend sign-extends the low size bytes of v to 64 bits.
func SignExtend(v uint64, size uint8) uint64 {
	s := sizeShift(size)
	return uint64(int64(v<<s) >> s)
}

// Truncate keeps the low size bytes of v.
func Truncate(v uint64, size uint8) uint64 {
	return v & sizeMask(size)
}

func sizeMask(size uint8) uint64 { return ^uint64(0) >> (64 - uint(size)*8) }

// sizeShift is 64 minus the operand width in bits: x<<s>>s truncates, and
// int64(x<<s)>>s sign-extends, without a per-size switch. It is computed
// as (-8*size) mod 64 in uint8 arithmetic, the same for the valid sizes,
// because that costs the inliner a node less than the obvious form: Inc,
// Dec and Sbb are at its budget.
func sizeShift(size uint8) uint { return uint(-size*8) & 63 }

// setArith records the result of an add/sub-like op and its carry (or borrow) vector:
// cv bit i is the carry out of bit i. Only bits 3 (AF), n-2 and n-1 are kept, which
// is why garbage above the operand size in the inputs does not matter: cv<<s puts
// bits n-1 and n-2 at 63 and 62, and >>32 moves them to CF and PO (bits 31, 30).
// Written with s precomputed so that Add/Sub/Cmp/... stay within the inliner budget.
func (f *Flags) setArith(s uint, cv, r uint64) {
	f.res = uint64(int64(r<<s)>>s) ^ resBias
	f.aux = cv&auxAF | cv<<s>>32&(auxCF|auxPO)
}

// setLogic records a result with CF=OF=AF=0 (logic ops; AF is undefined there, the
// CPUs we compared against clear it).
func (f *Flags) setLogic(size uint8, r uint64) {
	f.res = SignExtend(r, size) ^ resBias
	f.aux = 0
}

// setShift records a result with explicit CF and OF (0/1) and AF=0.
func (f *Flags) setShift(size uint8, r, cf, of uint64) {
	f.res = SignExtend(r, size) ^ resBias
	f.aux = cf<<31 | (cf^of)<<30
}

// setIncDec records INC/DEC: CF keeps its old value c, so PO = c ^ OF (OF = CF ^ PO).
// The sign bit of ov is OF: ov<<s moves it to bit 63 and >>33 to PO's bit 30. AF is
// the carry into bit 4, i.e. bit 4 of a^r (the other operand is 1), moved to bit 3.
func (f *Flags) setIncDec(s uint, a, r, ov uint64) {
	c := f.aux & auxCF
	f.res = uint64(int64(r<<s)>>s) ^ resBias
	f.aux = (a^r)>>1&auxAF | c | (c>>1 ^ ov<<s>>33&auxPO)
}

func addCarries(a, b, r uint64) uint64 { return a&b | (a|b)&^r }
func subBorrows(a, b, r uint64) uint64 { return ^a&b | ^(a^b)&r }

func (f *Flags) cfBit() uint64 { return f.aux >> 31 }

// Add returns a+b.
func Add(f *Flags, size uint8, a, b uint64) uint64 {
	s := sizeShift(size)
	r := a + b
	f.setArith(s, addCarries(a, b, r), r)
	return r << s >> s
}

// Adc returns a+b+CF. The carry-vector formula holds for any carry-in: where a and b
// differ the carry out equals the carry in, which is exactly ^r at that bit.
func Adc(f *Flags, size uint8, a, b uint64) uint64 {
	s := sizeShift(size)
	r := a + b + f.aux>>31
	f.setArith(s, addCarries(a, b, r), r)
	return r << s >> s
}

// Sub returns a-b.
func Sub(f *Flags, size uint8, a, b uint64) uint64 {
	s := sizeShift(size)
	r := a - b
	f.setArith(s, subBorrows(a, b, r), r)
	return r << s >> s
}

// Sbb returns a-b-CF.
func Sbb(f *Flags, size uint8, a, b uint64) uint64 {
	s := sizeShift(size)
	r := a - b - f.aux>>31
	f.setArith(s, subBorrows(a, b, r), r)
	return r << s >> s
}

// Cmp sets flags like Sub and discards the result.
func Cmp(f *Flags, size uint8, a, b uint64) {
	r := a - b
	f.setArith(sizeShift(size), subBorrows(a, b, r), r)
}

// And returns a&b (CF=OF=0; AF undefined, cleared).
func And(f *Flags, size uint8, a, b uint64) uint64 {
	r := a & b
	f.setLogic(size, r)
	return r & sizeMask(size)
}

// Or returns a|b.
func Or(f *Flags, size uint8, a, b uint64) uint64 {
	r := a | b
	f.setLogic(size, r)
	return r & sizeMask(size)
}

// Xor returns a^b.
func Xor(f *Flags, size uint8, a, b uint64) uint64 {
	r := a ^ b
	f.setLogic(size, r)
	return r & sizeMask(size)
}

// Test sets flags like And and discards the result.
func Test(f *Flags, size uint8, a, b uint64) {
	f.setLogic(size, a&b)
}

// Inc returns a+1; CF is preserved.
func Inc(f *Flags, size uint8, a uint64) uint64 {
	s := sizeShift(size)
	r := a + 1
	f.setIncDec(s, a, r, r&^a) // OF: positive became negative
	return r << s >> s
}

// Dec returns a-1; CF is preserved.
func Dec(f *Flags, size uint8, a uint64) uint64 {
	s := sizeShift(size)
	r := a - 1
	f.setIncDec(s, a, r, a&^r) // OF: negative became positive
	return r << s >> s
}

// Neg returns -a; flags as for 0-a (CF = a != 0).
func Neg(f *Flags, size uint8, a uint64) uint64 {
	s := sizeShift(size)
	r := -a
	f.setArith(s, subBorrows(0, a, r), r)
	return r << s >> s
}

// shiftCount masks a raw shift count like the CPU: 5 bits, 6 for 64-bit operands.
func shiftCount(size uint8, count uint8) uint {
	if size == 8 {
		return uint(count & 0x3f)
	}
	return uint(count & 0x1f)
}

// Shl returns a<<count (also SAL). CF is the last bit shifted out (0 once the count
// exceeds the operand width, which the SDM leaves undefined for sizes 1 and 2); OF is
// MSB(result)^CF, defined only for a count of 1 but computed the same way for all
// counts; AF (undefined) is cleared.
func Shl(f *Flags, size uint8, a uint64, count uint8) uint64 {
	c := shiftCount(size, count)
	m := sizeMask(size)
	a &= m
	if c == 0 {
		return a
	}
	n := uint(size) * 8
	r := a << c & m
	cf := a >> (n - c) & 1
	if c > n {
		cf = 0
	}
	f.setShift(size, r, cf, r>>(n-1)&1^cf)
	return r
}

// Shr returns a>>count (logical). CF is the last bit shifted out; OF is the MSB of the
// original operand (defined for count 1).
func Shr(f *Flags, size uint8, a uint64, count uint8) uint64 {
	c := shiftCount(size, count)
	m := sizeMask(size)
	a &= m
	if c == 0 {
		return a
	}
	n := uint(size) * 8
	r := a >> c
	f.setShift(size, r, a>>(c-1)&1, a>>(n-1)&1)
	return r
}

// Sar returns a>>count (arithmetic). CF is the last bit shifted out (the sign once the
// count reaches the width); OF is 0.
func Sar(f *Flags, size uint8, a uint64, count uint8) uint64 {
	c := shiftCount(size, count)
	m := sizeMask(size)
	if c == 0 {
		return a & m
	}
	s := int64(SignExtend(a, size))
	r := uint64(s>>c) & m
	f.setShift(size, r, uint64(s>>(c-1))&1, 0)
	return r
}

// rotl rotates the low n bits of a (already truncated) left by c (c < n).
func rotl(size uint8, a uint64, c uint) uint64 {
	switch size {
	case 1:
		return uint64(bits.RotateLeft8(uint8(a), int(c)))
	case 2:
		return uint64(bits.RotateLeft16(uint16(a), int(c)))
	case 4:
		return uint64(bits.RotateLeft32(uint32(a), int(c)))
	}
	return bits.RotateLeft64(a, int(c))
}

// Rol rotates left. Only CF (= LSB of the result) and OF (= MSB^CF, defined for count
// 1) change; SF, ZF, PF and AF are preserved.
func Rol(f *Flags, size uint8, a uint64, count uint8) uint64 {
	c := shiftCount(size, count)
	a &= sizeMask(size)
	if c == 0 {
		return a
	}
	n := uint(size) * 8
	r := rotl(size, a, c%n)
	cf := r & 1
	f.setCFOF(cf, r>>(n-1)&1^cf)
	return r
}

// Ror rotates right. CF = MSB of the result, OF = the two top bits XORed (count 1).
func Ror(f *Flags, size uint8, a uint64, count uint8) uint64 {
	c := shiftCount(size, count)
	a &= sizeMask(size)
	if c == 0 {
		return a
	}
	n := uint(size) * 8
	r := rotl(size, a, (n-c%n)%n)
	f.setCFOF(r>>(n-1)&1, (r>>(n-1)^r>>(n-2))&1)
	return r
}

// rcCount reduces a rotate-through-carry count: masked like shifts, then modulo
// width+1 for 8- and 16-bit operands (the 9- and 17-bit rotations).
func rcCount(size uint8, count uint8) uint {
	c := shiftCount(size, count)
	switch size {
	case 1:
		c %= 9
	case 2:
		c %= 17
	}
	return c
}

// Rcl rotates the (width+1)-bit quantity CF:a left. A reduced count of 0 changes
// nothing (also when the masked count was 9 or 17). OF = MSB(result)^CF (count 1).
func Rcl(f *Flags, size uint8, a uint64, count uint8) uint64 {
	m := sizeMask(size)
	a &= m
	c := rcCount(size, count)
	if c == 0 {
		return a
	}
	n := uint(size) * 8
	r := (a<<c | f.cfBit()<<(c-1) | a>>(n+1-c)) & m
	cf := a >> (n - c) & 1
	f.setCFOF(cf, r>>(n-1)&1^cf)
	return r
}

// Rcr rotates the (width+1)-bit quantity a:CF right. OF = the two top result bits
// XORed, i.e. MSB(original)^CF(original) (count 1).
func Rcr(f *Flags, size uint8, a uint64, count uint8) uint64 {
	m := sizeMask(size)
	a &= m
	c := rcCount(size, count)
	if c == 0 {
		return a
	}
	n := uint(size) * 8
	r := (a>>c | f.cfBit()<<(n-c) | a<<(n+1-c)) & m
	f.setCFOF(a>>(c-1)&1, (r>>(n-1)^r>>(n-2))&1)
	return r
}

// Shld shifts dst left by count, filling from the top of src (sizes 2, 4, 8). CF is the
// last bit shifted out of dst, OF the sign change (count 1), AF cleared. A 16-bit count
// of 17..31 is undefined in the SDM; it is computed as a shift of the 48-bit
// dst:src:src, which is what the AMD EPYC host of the differential test does (and
// what Bochs emulates).
func Shld(f *Flags, size uint8, dst, src uint64, count uint8) uint64 {
	c := shiftCount(size, count)
	m := sizeMask(size)
	dst &= m
	if c == 0 {
		return dst
	}
	src &= m
	n := uint(size) * 8
	var r, cf uint64
	if size == 2 && c > 16 {
		w := dst<<32 | src<<16 | src // 48-bit dst:src:src
		r = w >> (32 - c) & m
		cf = w >> (48 - c) & 1
	} else {
		r = (dst<<c | src>>(n-c)) & m
		cf = dst >> (n - c) & 1
	}
	f.setShift(size, r, cf, (r^dst)>>(n-1)&1)
	return r
}

// Shrd shifts dst right by count, filling from the bottom of src (sizes 2, 4, 8).
// A 16-bit count of 17..31 is computed as a right shift of the 48-bit src:src:dst
// (as the AMD EPYC host does).
func Shrd(f *Flags, size uint8, dst, src uint64, count uint8) uint64 {
	c := shiftCount(size, count)
	m := sizeMask(size)
	dst &= m
	if c == 0 {
		return dst
	}
	src &= m
	n := uint(size) * 8
	var r, cf uint64
	if size == 2 && c > 16 {
		w := src<<32 | src<<16 | dst // 48-bit src:src:dst
		r = w >> c & m
		cf = w >> (c - 1) & 1
	} else {
		r = (dst>>c | src<<(n-c)) & m
		cf = dst >> (c - 1) & 1
	}
	f.setShift(size, r, cf, (r^dst)>>(n-1)&1)
	return r
}

// Mul is the one-operand unsigned MUL: the full product of a and b as (lo, hi), each
// truncated to size (size 1: lo=AL, hi=AH). CF=OF=(hi != 0); SF, ZF, PF and AF are
// undefined and set from lo here.
func Mul(f *Flags, size uint8, a, b uint64) (lo, hi uint64) {
	m := sizeMask(size)
	a &= m
	b &= m
	if size == 8 {
		hi, lo = bits.Mul64(a, b)
	} else {
		p := a * b
		n := uint(size) * 8
		lo, hi = p&m, p>>n
	}
	var of uint64
	if hi != 0 {
		of = 1
	}
	f.setShift(size, lo, of, of)
	return lo, hi
}

// Imul is the signed multiply: full product as (lo, hi), each truncated to size.
// CF=OF=(the product does not fit in size, i.e. hi is not the sign extension of lo).
// Two- and three-operand IMUL use lo with the same flags.
func Imul(f *Flags, size uint8, a, b uint64) (lo, hi uint64) {
	if size == 8 {
		return imul64(f, a, b)
	}
	m := sizeMask(size)
	sa, sb := SignExtend(a, size), SignExtend(b, size)
	var of uint64
	p := int64(sa) * int64(sb) // |p| < 2^62 for size <= 4
	n := uint(size) * 8
	lo, hi = uint64(p)&m, uint64(p>>n)&m
	if uint64(p) != SignExtend(lo, size) {
		of = 1
	}
	f.setShift(size, lo, of, of)
	return lo, hi
}

// imul64 is Imul for size 8, on its own for the fast IMUL handlers.
func imul64(f *Flags, a, b uint64) (lo, hi uint64) {
	hi, lo = bits.Mul64(a, b)
	// Signed correction of the unsigned 128-bit product.
	if int64(a) < 0 {
		hi -= b
	}
	if int64(b) < 0 {
		hi -= a
	}
	var of uint64
	if hi != uint64(int64(lo)>>63) {
		of = auxCF
	}
	// setShift(8, lo, of, of) written out (CF = OF, so PO = 0) to stay
	// within the inliner's budget.
	f.res = lo ^ resBias
	f.aux = of
	return lo, hi
}

// Div is the unsigned DIV of hi:lo (for size 1, AH:AL) by divisor. ok=false means the
// CPU raises #DE: a zero divisor or a quotient wider than size.
func Div(size uint8, hi, lo, divisor uint64) (q, r uint64, ok bool) {
	m := sizeMask(size)
	d := divisor & m
	if d == 0 {
		return 0, 0, false
	}
	hi &= m
	lo &= m
	if size == 8 {
		if hi >= d { // quotient >= 2^64
			return 0, 0, false
		}
		q, r = bits.Div64(hi, lo, d)
		return q, r, true
	}
	n := uint(size) * 8
	x := hi<<n | lo
	q = x / d
	if q > m {
		return 0, 0, false
	}
	return q, x % d, true
}

// Idiv is the signed IDIV of hi:lo by divisor, truncating toward zero; the remainder
// has the dividend's sign. ok=false for a zero divisor or a quotient outside the
// signed range of size (the most negative value itself is allowed).
func Idiv(size uint8, hi, lo, divisor uint64) (q, r uint64, ok bool) {
	m := sizeMask(size)
	d := int64(SignExtend(divisor, size))
	if d == 0 {
		return 0, 0, false
	}
	n := uint(size) * 8
	if size == 8 {
		return idiv128(hi, lo, d)
	}
	// The 2n-bit dividend fits in an int64 for n <= 32.
	x := hi&m<<n | lo&m
	s := 64 - 2*n
	sx := int64(x<<s) >> s
	// Go defines MinInt64 / -1 as MinInt64 (no trap); the range check rejects it.
	qq := sx / d
	lim := int64(1) << (n - 1)
	if qq < -lim || qq >= lim {
		return 0, 0, false
	}
	return uint64(qq) & m, uint64(sx%d) & m, true
}

// idiv128 divides the signed 128-bit hi:lo by d on magnitudes.
func idiv128(hi, lo uint64, d int64) (q, r uint64, ok bool) {
	neg := int64(hi) < 0
	if neg { // two's complement negate of the 128-bit dividend
		lo = -lo
		hi = ^hi
		if lo == 0 {
			hi++
		}
	}
	ad := uint64(d)
	if d < 0 {
		ad = -ad
	}
	if hi >= ad { // magnitude of the quotient >= 2^64
		return 0, 0, false
	}
	uq, ur := bits.Div64(hi, lo, ad)
	qneg := neg != (d < 0)
	if qneg {
		if uq > 1<<63 {
			return 0, 0, false
		}
		uq = -uq
	} else if uq >= 1<<63 {
		return 0, 0, false
	}
	if neg {
		ur = -ur
	}
	return uq, ur, true
}

// Bt copies bit `bit` of a to CF; ZF is unaffected and OF, SF, AF, PF (undefined) are
// preserved. bit has been reduced by the caller; a bit beyond 63 reads as 0.
func Bt(f *Flags, size uint8, a uint64, bit uint) {
	f.SetCF(a>>bit&1 != 0)
}

// Bts is Bt, then sets the bit; returns the new value.
func Bts(f *Flags, size uint8, a uint64, bit uint) uint64 {
	f.SetCF(a>>bit&1 != 0)
	return (a | 1<<bit) & sizeMask(size)
}

// Btr is Bt, then clears the bit; returns the new value.
func Btr(f *Flags, size uint8, a uint64, bit uint) uint64 {
	f.SetCF(a>>bit&1 != 0)
	return a &^ (1 << bit) & sizeMask(size)
}

// Btc is Bt, then complements the bit; returns the new value.
func Btc(f *Flags, size uint8, a uint64, bit uint) uint64 {
	f.SetCF(a>>bit&1 != 0)
	return (a ^ 1<<bit) & sizeMask(size)
}

// Bsf returns the index of the lowest set bit of src. src==0 sets ZF and returns dst
// (truncated to size) unchanged. CF, OF, SF, AF, PF are undefined: they are set as
// for a logic op on src.
func Bsf(f *Flags, size uint8, src, dst uint64) uint64 {
	src &= sizeMask(size)
	f.setLogic(size, src)
	if src == 0 {
		return dst & sizeMask(size)
	}
	return uint64(bits.TrailingZeros64(src))
}

// Bsr returns the index of the highest set bit of src; src==0 as for Bsf.
func Bsr(f *Flags, size uint8, src, dst uint64) uint64 {
	src &= sizeMask(size)
	f.setLogic(size, src)
	if src == 0 {
		return dst & sizeMask(size)
	}
	return uint64(63 - bits.LeadingZeros64(src))
}

// Tzcnt counts trailing zero bits (the width for 0). CF = (src == 0), ZF = (result ==
// 0); OF, SF, PF, AF are undefined (here OF=SF=AF=0, PF from the count).
func Tzcnt(f *Flags, size uint8, src uint64) uint64 {
	src &= sizeMask(size)
	r := uint64(uint(size) * 8)
	if src != 0 {
		r = uint64(bits.TrailingZeros64(src))
	}
	var cf uint64
	if src == 0 {
		cf = 1
	}
	f.setShift(size, r, cf, 0)
	return r
}

// Lzcnt counts leading zero bits within size (the width for 0); flags as for Tzcnt.
func Lzcnt(f *Flags, size uint8, src uint64) uint64 {
	src &= sizeMask(size)
	r := uint64(bits.LeadingZeros64(src)) - (64 - uint64(size)*8)
	var cf uint64
	if src == 0 {
		cf = 1
	}
	f.setShift(size, r, cf, 0)
	return r
}

// Popcnt counts set bits. ZF = (src == 0); OF, SF, AF, CF, PF are cleared.
func Popcnt(f *Flags, size uint8, src uint64) uint64 {
	r := uint64(bits.OnesCount64(src & sizeMask(size)))
	f.res = r ^ resBias
	// PF reads even parity of (low byte of res) ^ 1 ^ PDB = r ^ PDB; PDB = r^1 makes
	// that byte 1 (odd parity), so PF reads 0.
	f.aux = (r&0xff ^ 1) << auxPDBShift
	return r
}
