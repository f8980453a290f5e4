package emu

import "math/bits"

// RFLAGS bits.
const (
	FlagCF uint64 = 1 << 0
	FlagPF uint64 = 1 << 2
	FlagAF uint64 = 1 << 4
	FlagZF uint64 = 1 << 6
	FlagSF uint64 = 1 << 7
	FlagTF uint64 = 1 << 8
	FlagIF uint64 = 1 << 9
	FlagDF uint64 = 1 << 10
	FlagOF uint64 = 1 << 11

	ArithFlags = FlagCF | FlagPF | FlagAF | FlagZF | FlagSF | FlagOF
)

// Flags holds the six arithmetic flags lazily (Bochs style: keep the result and the
// operands/carry vector of the last flag-setting op, compute a flag only when read).
// The zero value is all flags clear. Not safe for concurrent use (one per vCPU).
//
// Encoding (after Bochs' lazy_flags.h), chosen so that every flag-setting operation
// is two stores and every flag read is a couple of integer ops with no switch on the
// operation kind:
//
//	res = result sign-extended to 64 bits, XOR resBias
//	ZF  = (res == resBias)                    i.e. result == 0
//	SF  = bit 63 of res XOR aux.SD
//	PF  = even parity of (low byte of res XOR 1 XOR aux.PDB)
//	AF  = aux bit 3 (the carry/borrow out of bit 3, straight from the carry vector)
//	CF  = aux bit 31 (carry out of the most significant bit)
//	OF  = aux bit 31 XOR aux bit 30 (PO: the carry out of the bit below the MSB)
//
// The bias exists only so that the zero value means "all flags clear": without it
// res==0 would read as ZF=1 and PF=1. Bit 8 makes a zero Flags read ZF=0 and bit 0
// makes its low byte odd so PF=0; neither bit touches SF.
//
// SD and PDB are deltas that let Set/SetCF and friends force SF and PF to any value
// independently of the stored result; ordinary arithmetic leaves them zero.
type Flags struct {
	res uint64
	aux uint64
}

const (
	resBias = 0x101

	auxSD       uint64 = 1 << 0 // sign delta: SF = sign(result) ^ SD
	auxAF       uint64 = 1 << 3 // adjust flag, same position as in the carry vector
	auxPDBShift        = 8      // parity delta byte at bits 8..15
	auxPDB      uint64 = 0xff << auxPDBShift
	auxPO       uint64 = 1 << 30 // partial overflow: OF = CF ^ PO
	auxCF       uint64 = 1 << 31
)

// CF returns the carry flag.
func (f *Flags) CF() bool { return f.aux&auxCF != 0 }

// OF returns the overflow flag. Adding 1<<30 to the (CF,PO) pair leaves bit 31 set
// exactly when CF != PO, which is the XOR without two shifts.
func (f *Flags) OF() bool { return (f.aux+auxPO)&auxCF != 0 }

// AF returns the auxiliary (BCD adjust) flag.
func (f *Flags) AF() bool { return f.aux&auxAF != 0 }

// ZF returns the zero flag.
func (f *Flags) ZF() bool { return f.res == resBias }

// SF returns the sign flag.
func (f *Flags) SF() bool { return (f.res>>63^f.aux&auxSD)&1 != 0 }

// PF returns the parity flag (set when the low result byte has an even number of ones).
func (f *Flags) PF() bool { return f.parityOdd() == 0 }

// parityOdd is !PF as 0/1.
func (f *Flags) parityOdd() int {
	return bits.OnesCount8(uint8(f.res)^1^uint8(f.aux>>auxPDBShift)) & 1
}

// Get materialises the arithmetic bits at their RFLAGS positions; all other bits are 0.
// Branch-free: PUSHF, interrupt delivery and LAHF call it with unpredictable flags.
func (f *Flags) Get() uint64 {
	aux, res := f.aux, f.res
	cf := aux >> 31 & 1
	of := (aux + auxPO) >> 31 & 1
	af := aux >> 3 & 1
	sf := (res>>63 ^ aux) & 1
	pf := uint64(bits.OnesCount8(uint8(res)^1^uint8(aux>>auxPDBShift))&1) ^ 1
	var zf uint64
	if res == resBias {
		zf = 1
	}
	return cf | pf<<2 | af<<4 | zf<<6 | sf<<7 | of<<11
}

// Set loads all six arithmetic flags from v (RFLAGS layout); other bits are ignored.
// The stored "result" is 0 (ZF=1) or 0x100 (ZF=0): its sign bit and low byte are 0,
// so SD carries SF directly and PDB carries the inverse of PF.
func (f *Flags) Set(v uint64) {
	var r uint64 = 0x100
	if v&FlagZF != 0 {
		r = 0
	}
	var aux uint64
	if v&FlagCF != 0 {
		aux |= auxCF
	}
	if (v&FlagCF != 0) != (v&FlagOF != 0) {
		aux |= auxPO
	}
	if v&FlagAF != 0 {
		aux |= auxAF
	}
	if v&FlagSF != 0 {
		aux |= auxSD
	}
	if v&FlagPF == 0 {
		aux |= 1 << auxPDBShift
	}
	f.res = r ^ resBias
	f.aux = aux
}

// SetCF sets or clears CF (CLC/STC/CMC, BT family) and keeps the other five flags.
// PO is rewritten so that OF = CF ^ PO still reads the old OF.
func (f *Flags) SetCF(b bool) {
	of := (f.aux + auxPO) & auxCF
	var cf uint64
	if b {
		cf = auxCF
	}
	f.aux = f.aux&^(auxCF|auxPO) | cf | (cf^of)>>1
}

// setCFOF sets CF and OF (given as 0/1) and keeps ZF, SF, PF and AF: what rotates do.
func (f *Flags) setCFOF(cf, of uint64) {
	f.aux = f.aux&^(auxCF|auxPO) | cf<<31 | (cf^of)<<30
}

// Cond evaluates x86 condition code cc (0..15, the low nibble of Jcc/SETcc/CMOVcc):
// O NO B AE E NE BE A S NS P NP L GE LE G. Odd codes are the negation of the even
// code below them.
//
// Branch-free: the raw lazy bits behind CF, ZF, SF, OF and PF form an index into
// condTable, whose entry has bit cc set when condition cc holds. A switch would
// compile to an indirect jump shared by every Jcc the guest executes, which the
// branch predictor handles poorly in an interpreter loop (measured: ~5x slower on
// mixed conditions). Small enough to be inlined into the CMOVcc and SETcc handlers.
func (f *Flags) Cond(cc uint8) bool {
	aux, res := f.aux, f.res
	// aux>>30 is CF<<1|PO (nothing is stored above bit 31); the table folds
	// OF = CF^PO and SF = sign^SD so that no flag is computed here. PF is the
	// parity of the low result byte ^ PDB (the ^1 of PF() flips it back).
	p := uint64(bits.OnesCount8(uint8(res)^uint8(aux>>auxPDBShift))) & 1
	i := aux>>30 | res>>63<<2 | (aux&auxSD)<<3 | p<<5
	if res == resBias {
		i |= 16
	}
	return condTable[i&63]>>(cc&15)&1 != 0
}

// condTable[po | cf<<1 | sign<<2 | sd<<3 | zf<<4 | pf<<5] has bit cc set when
// condition cc holds (OF = cf^po, SF = sign^sd).
var condTable = func() (t [64]uint16) {
	for i := range t {
		po, cf := i&1 != 0, i&2 != 0
		sf := (i&4 != 0) != (i&8 != 0)
		zf := i&16 != 0
		of := cf != po
		pf := i&32 != 0
		for cc := 0; cc < 16; cc++ {
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
			if r != (cc&1 != 0) {
				t[i] |= 1 << cc
			}
		}
	}
	return t
}()
