package patchbuild

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"slices"
	"strings"

	"klp-kvm/elfpatch"
)

// A minimal ELF64 x86-64 relocatable writer: the patch object is
// assembled here from the pieces the emitter chose, with no binutils
// (objcopy/ld -r would need the pieces in files first, and their output
// is harder to keep byte-for-byte reproducible across versions).

type outSec struct {
	name   string
	typ    uint32
	flags  uint64
	align  uint64
	data   []byte
	size   uint64 // for SHT_NOBITS
	relocs []outRel
	secSym *outSym
	index  int
}

type outRel struct {
	off    uint64
	typ    uint32
	sym    *outSym
	addend int64
}

type outSym struct {
	name  string
	bind  elfpatch.SymBind
	typ   elfpatch.SymType
	sec   *outSec // nil: undefined
	value uint64
	size  uint64
	index int
}

type objWriter struct {
	secs   []*outSec
	locals []*outSym
	und    map[string]*outSym
}

func newObjWriter() *objWriter { return &objWriter{und: map[string]*outSym{}} }

func (w *objWriter) section(name string, typ uint32, flags, align uint64) *outSec {
	s := &outSec{name: name, typ: typ, flags: flags, align: max(align, 1)}
	w.secs = append(w.secs, s)
	return s
}

func (w *objWriter) sectionSym(s *outSec) *outSym {
	if s.secSym == nil {
		s.secSym = &outSym{bind: elfpatch.BindLocal, typ: elfpatch.TypeSection, sec: s}
		w.locals = append(w.locals, s.secSym)
	}
	return s.secSym
}

func (w *objWriter) local(name string, typ elfpatch.SymType, s *outSec, value, size uint64) *outSym {
	sym := &outSym{name: name, bind: elfpatch.BindLocal, typ: typ, sec: s, value: value, size: size}
	w.locals = append(w.locals, sym)
	return sym
}

func (w *objWriter) undef(name string) *outSym {
	if s := w.und[name]; s != nil {
		return s
	}
	s := &outSym{name: name, bind: elfpatch.BindGlobal, typ: elfpatch.TypeNoType}
	w.und[name] = s
	return s
}

// bytes lays the object out.
func (w *objWriter) bytes() []byte {
	le := binary.LittleEndian
	type hdr struct {
		name           string
		typ            uint32
		flags          uint64
		off, size      uint64
		link, info     uint32
		align, entsize uint64
		data           []byte
	}
	var hs []*hdr
	hs = append(hs, &hdr{}) // SHT_NULL
	// content sections, each followed by its relocations
	type relaFor struct {
		h   *hdr
		sec *outSec
	}
	var relas []relaFor
	for _, s := range w.secs {
		h := &hdr{name: s.name, typ: s.typ, flags: s.flags, align: s.align, data: s.data, size: uint64(len(s.data))}
		if s.typ == elfpatch.SHT_NOBITS {
			h.data, h.size = nil, s.size
		}
		s.index = len(hs)
		hs = append(hs, h)
		if len(s.relocs) > 0 {
			rh := &hdr{name: ".rela" + s.name, typ: elfpatch.SHT_RELA, flags: 0x40 /* SHF_INFO_LINK */, align: 8, entsize: 24, info: uint32(s.index)}
			hs = append(hs, rh)
			relas = append(relas, relaFor{rh, s})
		}
	}
	stack := &hdr{name: ".note.GNU-stack", typ: elfpatch.SHT_PROGBITS, align: 1}
	hs = append(hs, stack)
	symtabIdx := len(hs)
	symtab := &hdr{name: ".symtab", typ: elfpatch.SHT_SYMTAB, align: 8, entsize: 24}
	hs = append(hs, symtab)
	strtab := &hdr{name: ".strtab", typ: elfpatch.SHT_STRTAB, align: 1}
	hs = append(hs, strtab)
	shstrtab := &hdr{name: ".shstrtab", typ: elfpatch.SHT_STRTAB, align: 1}
	hs = append(hs, shstrtab)
	symtab.link = uint32(symtabIdx + 1)

	// symbols: locals in creation order, then globals by name
	var syms []*outSym
	syms = append(syms, &outSym{})
	syms = append(syms, w.locals...)
	nlocal := len(syms)
	var globals []*outSym
	for _, s := range w.und {
		globals = append(globals, s)
	}
	slices.SortFunc(globals, func(a, b *outSym) int { return strings.Compare(a.name, b.name) })
	syms = append(syms, globals...)
	for i, s := range syms {
		s.index = i
	}
	symtab.info = uint32(nlocal)
	var strs bytes.Buffer
	strs.WriteByte(0)
	strOff := map[string]uint32{"": 0}
	addStr := func(buf *bytes.Buffer, m map[string]uint32, s string) uint32 {
		if o, ok := m[s]; ok {
			return o
		}
		o := uint32(buf.Len())
		buf.WriteString(s)
		buf.WriteByte(0)
		m[s] = o
		return o
	}
	var symData bytes.Buffer
	for _, s := range syms {
		var e [24]byte
		if s.typ != elfpatch.TypeSection {
			le.PutUint32(e[0:], addStr(&strs, strOff, s.name))
		}
		e[4] = byte(s.bind)<<4 | byte(s.typ)
		if s.sec != nil {
			le.PutUint16(e[6:], uint16(s.sec.index))
		}
		le.PutUint64(e[8:], s.value)
		le.PutUint64(e[16:], s.size)
		symData.Write(e[:])
	}
	symtab.data, symtab.size = symData.Bytes(), uint64(symData.Len())
	strtab.data, strtab.size = strs.Bytes(), uint64(strs.Len())
	for _, r := range relas {
		var b bytes.Buffer
		rs := slices.Clone(r.sec.relocs)
		slices.SortStableFunc(rs, func(a, b outRel) int { return cmp.Compare(a.off, b.off) })
		for _, x := range rs {
			var e [24]byte
			le.PutUint64(e[0:], x.off)
			le.PutUint64(e[8:], uint64(x.sym.index)<<32|uint64(x.typ))
			le.PutUint64(e[16:], uint64(x.addend))
			b.Write(e[:])
		}
		r.h.data, r.h.size, r.h.link = b.Bytes(), uint64(b.Len()), uint32(symtabIdx)
	}
	var shs bytes.Buffer
	shs.WriteByte(0)
	shOff := map[string]uint32{"": 0}
	names := make([]uint32, len(hs))
	for i, h := range hs {
		if i > 0 {
			names[i] = addStr(&shs, shOff, h.name)
		}
	}
	shstrtab.data, shstrtab.size = shs.Bytes(), uint64(shs.Len())

	var out bytes.Buffer
	out.Write(make([]byte, 64))
	for _, h := range hs[1:] {
		if h.typ == elfpatch.SHT_NOBITS {
			h.off = uint64(out.Len())
			continue
		}
		a := max(h.align, 1)
		for uint64(out.Len())%a != 0 {
			out.WriteByte(0)
		}
		h.off = uint64(out.Len())
		out.Write(h.data)
	}
	for out.Len()%8 != 0 {
		out.WriteByte(0)
	}
	shoff := uint64(out.Len())
	for i, h := range hs {
		var e [64]byte
		le.PutUint32(e[0:], names[i])
		le.PutUint32(e[4:], h.typ)
		le.PutUint64(e[8:], h.flags)
		le.PutUint64(e[24:], h.off)
		le.PutUint64(e[32:], h.size)
		le.PutUint32(e[40:], h.link)
		le.PutUint32(e[44:], h.info)
		le.PutUint64(e[48:], h.align)
		le.PutUint64(e[56:], h.entsize)
		out.Write(e[:])
	}
	b := out.Bytes()
	copy(b[0:], "\x7fELF")
	b[4], b[5], b[6] = 2, 1, 1 // ELFCLASS64, little-endian, EV_CURRENT
	le.PutUint16(b[16:], 1)    // ET_REL
	le.PutUint16(b[18:], 62)   // EM_X86_64
	le.PutUint32(b[20:], 1)
	le.PutUint64(b[40:], shoff)
	le.PutUint16(b[52:], 64)
	le.PutUint16(b[58:], 64)
	le.PutUint16(b[60:], uint16(len(hs)))
	le.PutUint16(b[62:], uint16(len(hs)-1))
	return b
}
