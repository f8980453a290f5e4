package elfpatch

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
)

// Section is a decoded section header.
type Section struct {
	Index   int
	Name    string
	Type    uint32
	Flags   uint64
	Addr    uint64
	Offset  uint64
	Size    uint64
	Link    uint32
	Info    uint32
	Align   uint64
	EntSize uint64
}

// Alloc reports whether the section occupies memory at run time.
func (s *Section) Alloc() bool { return s.Flags&SHF_ALLOC != 0 }

// Exec reports whether the section holds code.
func (s *Section) Exec() bool { return s.Flags&SHF_EXECINSTR != 0 }

// FileType is an ELF file's type (e_type).
type FileType uint16

// ELF file types.
const (
	ET_REL  FileType = etRel  // relocatable object: a patch
	ET_EXEC FileType = etExec // executable: a kernel linked at a fixed address
	ET_DYN  FileType = etDyn  // shared object (position-independent)
)

func (t FileType) String() string {
	switch t {
	case ET_REL:
		return "ET_REL"
	case ET_EXEC:
		return "ET_EXEC"
	case ET_DYN:
		return "ET_DYN"
	}
	return "ET(" + itoa(uint64(t)) + ")"
}

// SymBind is a symbol's binding (STB_*).
type SymBind uint8

// SymType is a symbol's type (STT_*).
type SymType uint8

// Symbol bindings and types.
const (
	BindLocal  SymBind = 0
	BindGlobal SymBind = 1
	BindWeak   SymBind = 2

	TypeNoType  SymType = 0
	TypeObject  SymType = 1
	TypeFunc    SymType = 2
	TypeSection SymType = 3
	TypeFile    SymType = 4
	TypeTLS     SymType = 6
)

func (b SymBind) String() string {
	switch b {
	case BindLocal:
		return "LOCAL"
	case BindGlobal:
		return "GLOBAL"
	case BindWeak:
		return "WEAK"
	}
	return "BIND(" + itoa(uint64(b)) + ")"
}

func (t SymType) String() string {
	switch t {
	case TypeNoType:
		return "NOTYPE"
	case TypeObject:
		return "OBJECT"
	case TypeFunc:
		return "FUNC"
	case TypeSection:
		return "SECTION"
	case TypeFile:
		return "FILE"
	case TypeTLS:
		return "TLS"
	}
	return "TYPE(" + itoa(uint64(t)) + ")"
}

// Symbol is a decoded symbol table entry. Section is the raw section index
// (0 = undefined; SHN_ABS etc. as in the file, extended indices resolved).
type Symbol struct {
	Index   int
	Name    string
	Value   uint64
	Size    uint64
	Bind    SymBind
	Type    SymType
	Section int
}

// Defined reports whether the symbol is defined (not SHN_UNDEF).
func (s *Symbol) Defined() bool { return s.Section != shnUndef }

// maxNameLen caps symbol and string lengths (Linux's KSYM_NAME_LEN).
const maxNameLen = 512

// elfFile is the format layer shared by kernels and patches: a validated
// header, section table and symbol table over the input bytes.
type elfFile struct {
	op       string
	data     []byte
	hdr      rawHeader
	sections []Section
	symtab   int // section index of SHT_SYMTAB, -1 if none
	symbols  []Symbol
}

func (f *elfFile) errf(kind error, format string, args ...any) *Error {
	return errorf(f.op, kind, format, args...)
}

// parseELF validates the ELF header and the section table, and decodes the
// section names. wantTypes lists the acceptable e_type values.
func parseELF(op string, data []byte, wantTypes ...uint16) (*elfFile, error) {
	f := &elfFile{op: op, data: data, symtab: -1}
	if len(data) < headerSize {
		return nil, f.errf(ErrFormat, "not an ELF file: %d bytes, shorter than an ELF header", len(data))
	}
	h := decodeHeader(data[:headerSize])
	f.hdr = h
	if !bytes.Equal(h.Ident[:4], []byte("\x7fELF")) {
		return nil, f.errf(ErrFormat, "not an ELF file (bad magic)")
	}
	if h.Ident[4] != elfClass64 || h.Ident[5] != elfData2LSB {
		return nil, f.errf(ErrFormat, "not ELF64 little-endian (class %d, data %d)", h.Ident[4], h.Ident[5])
	}
	if h.Machine != emX86_64 {
		return nil, f.errf(ErrFormat, "machine %d, want EM_X86_64 (62)", h.Machine)
	}
	if !slices.Contains(wantTypes, h.Type) {
		want := make([]string, len(wantTypes))
		for i, t := range wantTypes {
			want[i] = FileType(t).String()
		}
		return nil, f.errf(ErrFormat, "ELF type %d (%s) not accepted here (want %s)", h.Type, FileType(h.Type), strings.Join(want, " or "))
	}
	if err := f.parseSections(); err != nil {
		return nil, err
	}
	return f, nil
}

// span checks that [off, off+size) lies inside the input and returns it.
func (f *elfFile) span(off, size uint64) ([]byte, bool) {
	n := uint64(len(f.data))
	if off > n || size > n-off {
		return nil, false
	}
	return f.data[off : off+size], true
}

func (f *elfFile) parseSections() error {
	h := f.hdr
	if h.Shoff == 0 {
		return f.errf(ErrFormat, "no section header table")
	}
	if h.Shentsize != sectionSize {
		return f.errf(ErrFormat, "e_shentsize %d, want %d", h.Shentsize, sectionSize)
	}
	first, ok := f.span(h.Shoff, sectionSize)
	if !ok {
		return f.errf(ErrFormat, "section header table at %#x outside the file", h.Shoff)
	}
	s0 := decodeSection(first)
	// Extended numbering: e_shnum == 0 puts the count in section 0's
	// sh_size, e_shstrndx == SHN_XINDEX puts the index in its sh_link.
	shnum := uint64(h.Shnum)
	if shnum == 0 {
		shnum = s0.Size
	}
	shstrndx := uint64(h.Shstrndx)
	if shstrndx == shnXindex {
		shstrndx = uint64(s0.Link)
	}
	// The count is bounded by the file size before anything is allocated.
	if shnum == 0 || shnum > uint64(len(f.data))/sectionSize {
		return f.errf(ErrFormat, "section count %d does not fit the file", shnum)
	}
	table, ok := f.span(h.Shoff, shnum*sectionSize)
	if !ok {
		return f.errf(ErrFormat, "section header table (%d entries at %#x) runs past the end of the file", shnum, h.Shoff)
	}
	if shstrndx >= shnum {
		return f.errf(ErrFormat, "e_shstrndx %d out of range (%d sections)", shstrndx, shnum)
	}
	raws := make([]rawSection, shnum)
	for i := range raws {
		raws[i] = decodeSection(table[i*sectionSize : (i+1)*sectionSize])
	}
	strs := raws[shstrndx]
	var names []byte
	if strs.Type == SHT_STRTAB {
		names, ok = f.span(strs.Offset, strs.Size)
		if !ok {
			return f.errf(ErrFormat, "section name table outside the file")
		}
	} else {
		return f.errf(ErrFormat, "e_shstrndx %d is not a string table", shstrndx)
	}
	f.sections = make([]Section, shnum)
	for i, r := range raws {
		name, err := cstring(names, uint64(r.Name))
		if err != nil && i != 0 {
			return f.errf(ErrFormat, "section %d name: %v", i, err)
		}
		s := Section{Index: i, Name: name, Type: r.Type, Flags: r.Flags, Addr: r.Addr,
			Offset: r.Offset, Size: r.Size, Link: r.Link, Info: r.Info, Align: r.Addralign,
			EntSize: r.Entsize}
		if i != 0 && s.Type != SHT_NOBITS && s.Type != SHT_NULL {
			if _, ok := f.span(s.Offset, s.Size); !ok {
				return f.errf(ErrFormat, "section %d (%s): %#x bytes at %#x run past the end of the file (%#x bytes)",
					i, name, s.Size, s.Offset, len(f.data))
			}
		}
		if s.Type == SHT_SYMTAB {
			if f.symtab >= 0 {
				return f.errf(ErrFormat, "more than one symbol table")
			}
			f.symtab = i
		}
		f.sections[i] = s
	}
	return nil
}

// sectionData returns the file bytes of section i (nil for NOBITS).
func (f *elfFile) sectionData(i int) []byte {
	s := &f.sections[i]
	if s.Type == SHT_NOBITS || s.Type == SHT_NULL {
		return nil
	}
	b, _ := f.span(s.Offset, s.Size) // checked in parseSections
	return b
}

// cstring returns the NUL-terminated string at off in tab, at most
// maxNameLen bytes.
func cstring(tab []byte, off uint64) (string, error) {
	if off >= uint64(len(tab)) {
		if off == 0 && len(tab) == 0 {
			return "", nil
		}
		return "", kindf(ErrFormat, "string offset %#x outside its table (%#x bytes)", off, len(tab))
	}
	rest := tab[off:]
	if len(rest) > maxNameLen+1 {
		rest = rest[:maxNameLen+1]
	}
	n := bytes.IndexByte(rest, 0)
	if n < 0 {
		return "", kindf(ErrFormat, "string at %#x is not NUL-terminated within %d bytes", off, maxNameLen)
	}
	return string(rest[:n]), nil
}

// parseSymbols decodes the symbol table (required).
func (f *elfFile) parseSymbols() error {
	if f.symtab < 0 {
		return f.errf(ErrFormat, "no symbol table (stripped?)")
	}
	st := &f.sections[f.symtab]
	if st.EntSize != symSize {
		return f.errf(ErrFormat, "symbol table entry size %d, want %d", st.EntSize, symSize)
	}
	if st.Size%symSize != 0 {
		return f.errf(ErrFormat, "symbol table size %#x is not a multiple of %d", st.Size, symSize)
	}
	if st.Link == 0 || uint64(st.Link) >= uint64(len(f.sections)) || f.sections[st.Link].Type != SHT_STRTAB {
		return f.errf(ErrFormat, "symbol table's string table (section %d) is missing or not a string table", st.Link)
	}
	strtab := f.sectionData(int(st.Link))
	data := f.sectionData(f.symtab)
	n := len(data) / symSize
	var xindex []byte
	for i := range f.sections {
		s := &f.sections[i]
		if s.Type == SHT_SYMTAB_SHNDX && int(s.Link) == f.symtab {
			xindex = f.sectionData(i)
			if uint64(len(xindex)) < uint64(n)*4 {
				return f.errf(ErrFormat, "SHT_SYMTAB_SHNDX shorter than the symbol table")
			}
		}
	}
	f.symbols = make([]Symbol, n)
	// Names are sliced out of one string conversion of the table, so 100k
	// symbols cost one allocation for their names instead of 100k.
	strs := string(strtab)
	for i := 0; i < n; i++ {
		r := decodeSym(data[i*symSize : (i+1)*symSize])
		name, err := tableString(strs, r.Name)
		if err != nil {
			return &Error{Op: f.op, Section: st.Name, Offset: uint64(i) * symSize, Kind: ErrFormat, Detail: fmt.Sprintf("symbol %d name: %v", i, err)}
		}
		shndx := int(r.Shndx)
		if r.Shndx == shnXindex {
			if xindex == nil {
				return f.errf(ErrFormat, "symbol %d (%s) uses SHN_XINDEX without SHT_SYMTAB_SHNDX", i, name)
			}
			shndx = int(le.Uint32(xindex[i*4:]))
		}
		if shndx != shnUndef && shndx < shnLoReserve && shndx >= len(f.sections) {
			return f.errf(ErrFormat, "symbol %d (%s) in section %d of %d", i, name, shndx, len(f.sections))
		}
		f.symbols[i] = Symbol{Index: i, Name: name, Value: r.Value, Size: r.Size,
			Bind: SymBind(r.Info >> 4), Type: SymType(r.Info & 0xf), Section: shndx}
	}
	return nil
}

// tableString is cstring over a string (substrings share its memory).
func tableString(tab string, off uint32) (string, error) {
	if uint64(off) >= uint64(len(tab)) {
		if off == 0 {
			return "", nil
		}
		return "", kindf(ErrFormat, "string offset %#x outside its table (%#x bytes)", off, len(tab))
	}
	rest := tab[off:]
	if len(rest) > maxNameLen+1 {
		rest = rest[:maxNameLen+1]
	}
	n := strings.IndexByte(rest, 0)
	if n < 0 {
		return "", kindf(ErrFormat, "string at %#x is not NUL-terminated within %d bytes", off, maxNameLen)
	}
	return rest[:n], nil
}

// sectionName returns a printable name for a symbol's section index.
func (f *elfFile) sectionName(idx int) string {
	switch {
	case idx == shnUndef:
		return "UND"
	case idx == shnAbs:
		return "ABS"
	case idx == shnCommon:
		return "COMMON"
	case idx == shnLivepatch:
		return "LIVEPATCH"
	case idx >= 0 && idx < len(f.sections):
		return f.sections[idx].Name
	}
	return "SHN(" + itoa(uint64(idx)) + ")"
}
