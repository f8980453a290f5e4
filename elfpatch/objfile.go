package elfpatch

import (
	"cmp"
	"slices"
)

// ObjectFile is a relocatable object (ET_REL) read as it is: its sections,
// their bytes, its symbols and its RELA relocations, with none of the klp
// structures a Patch needs. It is what tools that compare and rewrite
// compiler output read (patchbuild, behind `klp-kvm build`): the same
// checked parser as patches and kernels, so elfpatch stays the only ELF
// reader of the project. Like the other parsers it never panics on
// malformed input (FuzzParseObjectFile).
type ObjectFile struct {
	f      *elfFile
	relocs map[int][]ObjectReloc // by target section, sorted by offset
}

// ObjectReloc is one RELA entry of an ObjectFile.
type ObjectReloc struct {
	Offset uint64 // in the target section
	Type   uint32
	Symbol int // index into Symbols()
	Addend int64
	// RelaSection is the SHT_RELA section the entry came from: a target
	// can have several (Linux's .rela.text and .klp.rela.vmlinux.text),
	// which a module loader applies at different times.
	RelaSection int
}

// ParseObjectFile parses a relocatable object held in data (kept by the
// ObjectFile; do not modify it). It needs a symbol table; SHT_REL
// sections are refused (x86-64 uses RELA).
func ParseObjectFile(data []byte) (*ObjectFile, error) {
	f, err := parseELF("parse object", data, etRel)
	if err != nil {
		return nil, err
	}
	if err := f.parseSymbols(); err != nil {
		return nil, err
	}
	o := &ObjectFile{f: f, relocs: map[int][]ObjectReloc{}}
	for i := range f.sections {
		s := &f.sections[i]
		switch s.Type {
		case SHT_REL:
			return nil, &Error{Op: f.op, Section: s.Name, Err: kindf(ErrFormat, "SHT_REL relocations (no addend) are not used on x86-64")}
		case SHT_RELA:
		default:
			continue
		}
		if s.EntSize != relaSize || s.Size%relaSize != 0 {
			return nil, &Error{Op: f.op, Section: s.Name, Err: kindf(ErrFormat, "entry size %d / size %#x, want multiples of %d", s.EntSize, s.Size, relaSize)}
		}
		if int(s.Link) != f.symtab {
			return nil, &Error{Op: f.op, Section: s.Name, Err: kindf(ErrFormat, "sh_link %d is not the symbol table (%d)", s.Link, f.symtab)}
		}
		if s.Info == 0 || uint64(s.Info) >= uint64(len(f.sections)) {
			return nil, &Error{Op: f.op, Section: s.Name, Err: kindf(ErrFormat, "sh_info %d: no such target section", s.Info)}
		}
		target := &f.sections[s.Info]
		data := f.sectionData(i)
		for j := 0; j+relaSize <= len(data); j += relaSize {
			r := decodeRela(data[j:])
			sym := r.Info >> 32
			if sym >= uint64(len(f.symbols)) {
				return nil, &Error{Op: f.op, Section: s.Name, Offset: uint64(j),
					Err: kindf(ErrFormat, "symbol index %d out of range (%d symbols)", sym, len(f.symbols))}
			}
			if r.Off >= target.Size {
				return nil, &Error{Op: f.op, Section: target.Name, Offset: r.Off,
					Err: kindf(ErrFormat, "relocation from %s beyond the end of its section (%#x bytes)", s.Name, target.Size)}
			}
			o.relocs[int(s.Info)] = append(o.relocs[int(s.Info)], ObjectReloc{Offset: r.Off, Type: uint32(r.Info), Symbol: int(sym), Addend: r.Addend, RelaSection: i})
		}
	}
	for t, list := range o.relocs {
		slices.SortStableFunc(list, func(a, b ObjectReloc) int { return cmp.Compare(a.Offset, b.Offset) })
		o.relocs[t] = list
	}
	return o, nil
}

// Sections returns the section headers (index 0 included). Shared: do not
// modify.
func (o *ObjectFile) Sections() []Section { return o.f.sections }

// Symbols returns the symbol table (index 0 included). Shared: do not
// modify.
func (o *ObjectFile) Symbols() []Symbol { return o.f.symbols }

// SectionData returns section i's bytes (nil for SHT_NOBITS, SHT_NULL or
// an index out of range). Shared: do not modify.
func (o *ObjectFile) SectionData(i int) []byte {
	if i <= 0 || i >= len(o.f.sections) {
		return nil
	}
	return o.f.sectionData(i)
}

// Relocs returns the relocations applied to section i, sorted by offset.
// Shared: do not modify.
func (o *ObjectFile) Relocs(i int) []ObjectReloc { return o.relocs[i] }

// SectionName names a symbol's section index (UND, ABS, COMMON, ... for
// the reserved ones).
func (o *ObjectFile) SectionName(idx int) string { return o.f.sectionName(idx) }
