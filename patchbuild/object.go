package patchbuild

import (
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"golang.org/x/arch/x86/x86asm"

	"klp-kvm/elfpatch"
)

// The model of one compiled translation unit: its functions and data
// objects, each with its bytes and its relocations resolved to what they
// mean (a function, a data object, a string, an anonymous piece of
// read-only data, an external name), never to a section offset. Two builds
// are compared, and the patch written, on this model.

// unit is one translation unit compiled on one side (before or after).
type unit struct {
	path  string // "kernel/vfs.c"
	obj   *elfpatch.ObjectFile
	secs  []elfpatch.Section
	syms  []elfpatch.Symbol
	funcs []*fn   // by name
	data  []*dobj // by name
	bySec [][]int // section -> FUNC/OBJECT symbol indices, by value
	fnAt  map[int]*fn
	obAt  map[int]*dobj
	fentr map[[2]uint64]bool // (section, offset) of __mcount_loc entries
	anon  map[[2]uint64]*piece
	err   []string // problems found while modelling (undecodable code...)
}

// fn is a function of a unit.
type fn struct {
	u           *unit
	name        string
	sym         int
	sec         int
	value, size uint64
	global      bool
	code        []byte
	relocs      []*nreloc
	decoded     bool // every instruction decoded
	returns     bool // has a ret, or a tail call
	fentry      bool // starts with a recorded fentry site
	sharedSec   bool // its section holds other symbols
	pair        *fn  // the other side's function
	key         string
}

// dobj is a data object (STT_OBJECT) of a unit.
type dobj struct {
	u           *unit
	name        string
	sym         int
	sec         int
	value, size uint64
	global      bool
	writable    bool
	nobits      bool
	bytes       []byte
	relocs      []*nreloc
	pair        *dobj
	key         string
}

// piece is anonymous read-only data: one string of a string section, one
// entry of a mergeable-constant section, or a whole section without
// symbols (jump tables).
type piece struct {
	u          *unit
	sec        int
	start, end uint64
	str        bool
	bytes      []byte
	relocs     []*nreloc
	key        string
}

// target kinds
const (
	tExtern = iota // an undefined symbol: a name resolved at load time
	tFunc
	tData
	tPiece
)

// nreloc is a relocation resolved by meaning: it asks for target + toff
// (minus the place, for PC-relative types). Its ELF addend is toff - delta,
// delta being the distance from the relocated field to the end of its
// instruction (0 for absolute types and in data).
type nreloc struct {
	off    uint64 // in the function, object or piece
	typ    uint32
	delta  int64
	branch bool // the field is the target of a call or jmp
	kind   int
	name   string // tExtern
	fn     *fn
	ob     *dobj
	pc     *piece
	toff   int64
	synth  bool // made from an assembler-resolved branch within a shared section
	width  int
}

func (r *nreloc) addend() int64 { return r.toff - r.delta }

var cloneRE = regexp.MustCompile(`^(.+?)\.(isra|constprop|part|cold|lto_priv|localalias)\.\d+((\.(isra|constprop|part|cold|lto_priv)\.\d+)*)$`)
var numSuffixRE = regexp.MustCompile(`^(.+)\.\d+$`)

// normName removes the numbers gcc appends to clones and static locals:
// foo.isra.0 -> foo.isra, snap.1 -> snap. Two builds of one source may
// number them differently.
func normName(name string) string {
	if m := cloneRE.FindStringSubmatch(name); m != nil {
		out := m[1] + "." + m[2]
		for _, p := range strings.Split(strings.TrimPrefix(m[3], "."), ".") {
			if p != "" && (p[0] < '0' || p[0] > '9') {
				out += "." + p
			}
		}
		return out
	}
	if m := numSuffixRE.FindStringSubmatch(name); m != nil {
		return m[1]
	}
	return name
}

func isClone(name string) bool { return elfpatch.CloneKind(name) != "" }

// loadUnit models a compiled object.
func loadUnit(path string, data []byte) (*unit, error) {
	o, err := elfpatch.ParseObjectFile(data)
	if err != nil {
		return nil, err
	}
	u := &unit{path: path, obj: o, secs: o.Sections(), syms: o.Symbols(), fnAt: map[int]*fn{}, obAt: map[int]*dobj{},
		fentr: map[[2]uint64]bool{}, anon: map[[2]uint64]*piece{}}
	u.bySec = make([][]int, len(u.secs))
	for i, s := range u.syms {
		if s.Section <= 0 || s.Section >= len(u.secs) || (s.Type != elfpatch.TypeFunc && s.Type != elfpatch.TypeObject) || s.Name == "" {
			continue
		}
		u.bySec[s.Section] = append(u.bySec[s.Section], i)
	}
	for sec := range u.bySec {
		slices.SortFunc(u.bySec[sec], func(a, b int) int {
			return cmp.Or(cmp.Compare(u.syms[a].Value, u.syms[b].Value), cmp.Compare(a, b))
		})
	}
	for i, s := range u.secs {
		if s.Name != "__mcount_loc" {
			continue
		}
		for _, r := range o.Relocs(i) {
			if r.Type != elfpatch.R_X86_64_64 {
				continue
			}
			sym := u.syms[r.Symbol]
			u.fentr[[2]uint64{uint64(sym.Section), sym.Value + uint64(r.Addend)}] = true
		}
	}
	for i, s := range u.syms {
		if s.Section <= 0 || s.Section >= len(u.secs) || s.Name == "" {
			continue
		}
		sec := u.secs[s.Section]
		switch {
		case s.Type == elfpatch.TypeFunc && sec.Exec():
			f := &fn{u: u, name: s.Name, sym: i, sec: s.Section, value: s.Value, size: s.Size,
				global: s.Bind != elfpatch.BindLocal, sharedSec: len(u.bySec[s.Section]) > 1,
				fentry: u.fentr[[2]uint64{uint64(s.Section), s.Value}]}
			d := o.SectionData(s.Section)
			if s.Value > uint64(len(d)) || s.Size > uint64(len(d))-s.Value {
				return nil, fmt.Errorf("%s: function %s lies outside its section", path, s.Name)
			}
			f.code = d[s.Value : s.Value+s.Size]
			u.funcs = append(u.funcs, f)
			u.fnAt[i] = f
		case s.Type == elfpatch.TypeObject && sec.Alloc():
			ob := &dobj{u: u, name: s.Name, sym: i, sec: s.Section, value: s.Value, size: s.Size,
				global: s.Bind != elfpatch.BindLocal, writable: sec.Flags&elfpatch.SHF_WRITE != 0,
				nobits: sec.Type == elfpatch.SHT_NOBITS}
			if !ob.nobits {
				d := o.SectionData(s.Section)
				if s.Value > uint64(len(d)) || s.Size > uint64(len(d))-s.Value {
					return nil, fmt.Errorf("%s: object %s lies outside its section", path, s.Name)
				}
				ob.bytes = d[s.Value : s.Value+s.Size]
			}
			u.data = append(u.data, ob)
			u.obAt[i] = ob
		}
	}
	slices.SortFunc(u.funcs, func(a, b *fn) int { return cmp.Or(strings.Compare(a.name, b.name), cmp.Compare(a.sym, b.sym)) })
	slices.SortFunc(u.data, func(a, b *dobj) int { return cmp.Or(strings.Compare(a.name, b.name), cmp.Compare(a.sym, b.sym)) })
	for _, f := range u.funcs {
		if err := u.resolveFn(f); err != nil {
			return nil, err
		}
	}
	for _, ob := range u.data {
		rs, err := u.resolveRange(ob.sec, ob.value, ob.size, nil)
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %v", path, ob.name, err)
		}
		ob.relocs = rs
	}
	return u, nil
}

// instruction facts needed by the resolution of a function's relocations.
type instInfo struct {
	start, end uint64
	branch     bool
	pcrelOff   int
	pcrelLen   int
}

func (u *unit) resolveFn(f *fn) error {
	// Decode every instruction: PC-relative fields need the distance to
	// the end of their instruction, and calls and jumps are told apart
	// from address-taking.
	var insts []instInfo
	code := slices.Clone(f.code)
	for _, r := range u.obj.Relocs(f.sec) {
		if r.Offset >= f.value && r.Offset < f.value+f.size {
			w := relocWidth(r.Type)
			for k := 0; k < w && r.Offset-f.value+uint64(k) < f.size; k++ {
				code[r.Offset-f.value+uint64(k)] = 0
			}
		}
	}
	f.decoded = true
	for off := 0; off < len(code); {
		in, err := x86asm.Decode(code[off:], 64)
		if err != nil || in.Len == 0 {
			f.decoded = false
			u.err = append(u.err, fmt.Sprintf("%s: %s+%#x: cannot decode % x", u.path, f.name, off, code[off:min(off+8, len(code))]))
			break
		}
		ii := instInfo{start: uint64(off), end: uint64(off + in.Len), pcrelOff: in.PCRelOff, pcrelLen: in.PCRel}
		switch in.Op {
		case x86asm.CALL, x86asm.JMP, x86asm.JA, x86asm.JAE, x86asm.JB, x86asm.JBE, x86asm.JE, x86asm.JG, x86asm.JGE,
			x86asm.JL, x86asm.JLE, x86asm.JNE, x86asm.JNO, x86asm.JNP, x86asm.JNS, x86asm.JO, x86asm.JP, x86asm.JS:
			ii.branch = true
		case x86asm.RET:
			f.returns = true
		}
		insts = append(insts, ii)
		off += in.Len
	}
	rs, err := u.resolveRange(f.sec, f.value, f.size, insts)
	if err != nil {
		return fmt.Errorf("%s: %s: %v", u.path, f.name, err)
	}
	f.relocs = rs
	// Branches the assembler resolved inside a shared section (no
	// relocation) that leave the function: made explicit, so that the
	// comparison and the patch see their targets.
	if f.sharedSec && f.decoded {
		have := map[uint64]bool{}
		for _, r := range rs {
			have[r.off] = true
		}
		for _, ii := range insts {
			if !ii.branch || ii.pcrelLen != 4 || have[ii.start+uint64(ii.pcrelOff)] {
				continue
			}
			at := ii.start + uint64(ii.pcrelOff)
			rel := int64(int32(binary.LittleEndian.Uint32(f.code[at:])))
			tgt := int64(f.value) + int64(ii.end) + rel
			if tgt >= int64(f.value) && tgt < int64(f.value+f.size) {
				continue
			}
			r := &nreloc{off: at, typ: elfpatch.R_X86_64_PC32, delta: int64(ii.end - at), branch: true, synth: true, width: 4}
			if err := u.resolveSectionTarget(r, f.sec, tgt); err != nil {
				return fmt.Errorf("%s: %s+%#x: %v", u.path, f.name, at, err)
			}
			f.relocs = append(f.relocs, r)
		}
		slices.SortFunc(f.relocs, func(a, b *nreloc) int { return cmp.Compare(a.off, b.off) })
	}
	for _, r := range f.relocs {
		if r.branch && r.kind != tPiece && !(r.kind == tFunc && r.fn == f) && r.typ != elfpatch.R_X86_64_64 {
			// a jump out of the function is a tail call: it returns through the callee
			for _, ii := range insts {
				if r.off >= ii.start && r.off < ii.end && f.code[ii.start] == 0xe9 {
					f.returns = true
				}
			}
		}
	}
	return nil
}

func relocWidth(t uint32) int {
	switch t {
	case elfpatch.R_X86_64_64, 24 /* PC64 */ :
		return 8
	case elfpatch.R_X86_64_NONE:
		return 0
	}
	return 4
}

func pcRelative(t uint32) bool {
	return t == elfpatch.R_X86_64_PC32 || t == elfpatch.R_X86_64_PLT32 || t == 24
}

// resolveRange resolves the relocations in [value, value+size) of sec;
// insts (nil for data) gives instruction boundaries.
func (u *unit) resolveRange(sec int, value, size uint64, insts []instInfo) ([]*nreloc, error) {
	var out []*nreloc
	for _, r := range u.obj.Relocs(sec) {
		if r.Offset < value || r.Offset >= value+size {
			continue
		}
		nr := &nreloc{off: r.Offset - value, typ: r.Type, width: relocWidth(r.Type)}
		switch r.Type {
		case elfpatch.R_X86_64_64, elfpatch.R_X86_64_PC32, elfpatch.R_X86_64_PLT32, elfpatch.R_X86_64_32, elfpatch.R_X86_64_32S:
		default:
			return nil, fmt.Errorf("relocation %s at +%#x is not one a patch can carry", elfpatch.RelocTypeName(r.Type), nr.off)
		}
		if pcRelative(r.Type) {
			nr.delta = 4
			for _, ii := range insts {
				if nr.off >= ii.start && nr.off < ii.end {
					nr.delta = int64(ii.end - nr.off)
					nr.branch = ii.branch
					break
				}
			}
		}
		sym := u.syms[r.Symbol]
		switch {
		case r.Symbol == 0:
			return nil, fmt.Errorf("relocation at +%#x against no symbol", nr.off)
		case sym.Section == 0:
			nr.kind, nr.name, nr.toff = tExtern, sym.Name, r.Addend+nr.delta
		case sym.Section >= len(u.secs):
			return nil, fmt.Errorf("relocation at +%#x against %s in section %s", nr.off, sym.Name, u.obj.SectionName(sym.Section))
		case sym.Type == elfpatch.TypeSection:
			if err := u.resolveSectionTarget(nr, sym.Section, int64(sym.Value)+r.Addend+nr.delta); err != nil {
				return nil, fmt.Errorf("relocation at +%#x: %v", nr.off, err)
			}
		default:
			if f := u.fnAt[r.Symbol]; f != nil {
				nr.kind, nr.fn, nr.toff = tFunc, f, r.Addend+nr.delta
			} else if ob := u.obAt[r.Symbol]; ob != nil {
				nr.kind, nr.ob, nr.toff = tData, ob, r.Addend+nr.delta
			} else if err := u.resolveSectionTarget(nr, sym.Section, int64(sym.Value)+r.Addend+nr.delta); err != nil {
				return nil, fmt.Errorf("relocation at +%#x: %v", nr.off, err)
			}
		}
		out = append(out, nr)
	}
	return out, nil
}

// resolveSectionTarget finds what offset t of section sec is: the function
// or object holding it, else an anonymous piece.
func (u *unit) resolveSectionTarget(nr *nreloc, sec int, t int64) error {
	syms := u.bySec[sec]
	var best = -1
	for _, i := range syms {
		s := u.syms[i]
		if t >= int64(s.Value) && (t < int64(s.Value+s.Size) || (s.Size == 0 && t == int64(s.Value))) {
			best = i
			break
		}
	}
	if best < 0 {
		// one past the end of an object (&a[N])
		for _, i := range syms {
			if s := u.syms[i]; s.Size > 0 && t == int64(s.Value+s.Size) {
				best = i
			}
		}
	}
	if best < 0 && len(syms) == 1 {
		best = syms[0]
	}
	if best >= 0 {
		s := u.syms[best]
		if f := u.fnAt[best]; f != nil {
			nr.kind, nr.fn, nr.toff = tFunc, f, t-int64(s.Value)
			return nil
		}
		if ob := u.obAt[best]; ob != nil {
			nr.kind, nr.ob, nr.toff = tData, ob, t-int64(s.Value)
			return nil
		}
	}
	if len(syms) > 0 {
		return fmt.Errorf("offset %#x of %s is in none of its symbols", t, u.secs[sec].Name)
	}
	p, err := u.piece(sec, t)
	if err != nil {
		return err
	}
	nr.kind, nr.pc, nr.toff = tPiece, p, t-int64(p.start)
	return nil
}

// piece returns the anonymous piece of sec holding offset t.
func (u *unit) piece(sec int, t int64) (*piece, error) {
	s := &u.secs[sec]
	if !s.Alloc() || s.Exec() || s.Type != elfpatch.SHT_PROGBITS {
		return nil, fmt.Errorf("reference into %s, which has no symbols and is not read-only data", s.Name)
	}
	if s.Flags&elfpatch.SHF_WRITE != 0 {
		return nil, fmt.Errorf("reference into writable section %s, which has no symbols", s.Name)
	}
	data := u.obj.SectionData(sec)
	if t < 0 || t > int64(len(data)) {
		return nil, fmt.Errorf("offset %#x outside %s (%#x bytes)", t, s.Name, len(data))
	}
	const shfMerge, shfStrings = 0x10, 0x20
	start, end := uint64(0), uint64(len(data))
	str := false
	switch {
	case s.Flags&shfStrings != 0 && s.EntSize == 1:
		str = true
		i := int(t)
		for i > 0 && data[i-1] != 0 {
			i--
		}
		j := int(t)
		for j < len(data) && data[j] != 0 {
			j++
		}
		if j < len(data) {
			j++ // the NUL
		}
		start, end = uint64(i), uint64(j)
	case s.Flags&shfMerge != 0 && s.EntSize > 0:
		start = uint64(t) - uint64(t)%s.EntSize
		end = min(start+s.EntSize, uint64(len(data)))
	}
	k := [2]uint64{uint64(sec), start}
	if p := u.anon[k]; p != nil {
		return p, nil
	}
	p := &piece{u: u, sec: sec, start: start, end: end, str: str, bytes: data[start:end]}
	u.anon[k] = p
	rs, err := u.resolveRange(sec, start, end-start, nil)
	if err != nil {
		return nil, err
	}
	p.relocs = rs
	return p, nil
}

// ---- keys: what makes two builds' code the same ----

// identity keys are set after pairing (pair.go): a function or writable
// object is named by its "before" identity; read-only local data and
// anonymous pieces by their content.

func masked(b []byte, rs []*nreloc) []byte {
	out := slices.Clone(b)
	for _, r := range rs {
		if r.synth {
			continue
		}
		for k := 0; k < r.width && int(r.off)+k < len(out); k++ {
			out[int(r.off)+k] = 0
		}
	}
	return out
}

// synthMasked also masks assembler-resolved branches (their bytes depend
// on the section's layout, which other functions change).
func synthMasked(b []byte, rs []*nreloc) []byte {
	out := masked(b, rs)
	for _, r := range rs {
		if r.synth {
			for k := 0; k < 4; k++ {
				out[int(r.off)+k] = 0
			}
		}
	}
	return out
}

type keyer struct {
	busy map[any]bool
}

func (k *keyer) relocKey(r *nreloc) string {
	var t string
	switch r.kind {
	case tExtern:
		t = "x:" + r.name
	case tFunc:
		t = r.fn.key
	case tData:
		t = k.dataKey(r.ob)
	case tPiece:
		t = k.pieceKey(r.pc)
	}
	return fmt.Sprintf("%#x/%d/%s%+d", r.off, r.typ, t, r.toff)
}

func (k *keyer) dataKey(ob *dobj) string {
	if ob.key != "" {
		return ob.key
	}
	if k.busy[ob] {
		return "cycle:" + ob.name
	}
	k.busy[ob] = true
	defer delete(k.busy, ob)
	return "ro:" + k.content(ob.bytes, ob.relocs, ob.size)
}

func (k *keyer) pieceKey(p *piece) string {
	if p.key != "" {
		return p.key
	}
	if p.str {
		p.key = fmt.Sprintf("s:%q", p.bytes)
		return p.key
	}
	if k.busy[p] {
		return "cycle"
	}
	k.busy[p] = true
	defer delete(k.busy, p)
	p.key = "anon:" + k.content(p.bytes, p.relocs, uint64(len(p.bytes)))
	return p.key
}

func (k *keyer) content(b []byte, rs []*nreloc, size uint64) string {
	h := sha256.New()
	fmt.Fprintf(h, "%d:", size)
	h.Write(masked(b, rs))
	for _, r := range rs {
		h.Write([]byte(k.relocKey(r)))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil)[:12])
}
