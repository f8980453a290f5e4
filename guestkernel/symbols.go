package guestkernel

import (
	"bytes"
	"debug/elf"
	"fmt"
	"sort"
)

// Symbol is a function symbol of the guest kernel.
type Symbol struct {
	Name   string
	Addr   uint64
	Size   uint64
	Global bool
}

// Symbols is a minimal symbol table of the guest kernel: every symbol by
// name (for data such as klp_guest_abi) and the function symbols sorted by
// address (for stack traces). Package elfpatch has the complete view
// (sympos, fentry sites); this one only serves introspection.
type Symbols struct {
	funcs  []Symbol            // STT_FUNC, sorted by Addr then Name
	byName map[string][]Symbol // all defined symbols, in symbol table order
}

// maxSymbols bounds what a (possibly hostile) ELF can make us allocate.
const maxSymbols = 1 << 20

// LoadSymbols reads the symbol table of an ELF image.
func LoadSymbols(image []byte) (s *Symbols, err error) {
	const op = "load symbols"
	defer func() {
		// debug/elf is not hardened against every malformed input
		if r := recover(); r != nil {
			s, err = nil, errorf(op, ErrFormat, 0, "malformed ELF: %v", r)
		}
	}()
	f, err := elf.NewFile(bytes.NewReader(image))
	if err != nil {
		return nil, &Error{Op: op, Kind: ErrFormat, Detail: "not an ELF file", Err: err}
	}
	defer f.Close()
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 {
		return nil, errorf(op, ErrFormat, 0, "%v %v, want ELFCLASS64 EM_X86_64", f.Class, f.Machine)
	}
	syms, err := f.Symbols()
	if err != nil {
		return nil, &Error{Op: op, Kind: ErrFormat, Detail: "no symbol table", Err: err}
	}
	if len(syms) > maxSymbols {
		return nil, errorf(op, ErrFormat, 0, "%d symbols, max %d", len(syms), maxSymbols)
	}
	s = &Symbols{byName: make(map[string][]Symbol)}
	for _, e := range syms {
		if e.Section == elf.SHN_UNDEF || e.Name == "" {
			continue
		}
		typ := elf.ST_TYPE(e.Info)
		sym := Symbol{Name: e.Name, Addr: e.Value, Size: e.Size, Global: elf.ST_BIND(e.Info) != elf.STB_LOCAL}
		if typ == elf.STT_FILE || typ == elf.STT_SECTION {
			continue
		}
		s.byName[e.Name] = append(s.byName[e.Name], sym)
		if typ == elf.STT_FUNC {
			s.funcs = append(s.funcs, sym)
		}
	}
	sort.Slice(s.funcs, func(i, j int) bool {
		if s.funcs[i].Addr != s.funcs[j].Addr {
			return s.funcs[i].Addr < s.funcs[j].Addr
		}
		return s.funcs[i].Name < s.funcs[j].Name
	})
	return s, nil
}

// Lookup returns the symbol called name: the global one if there is one,
// else the only local one. Several locals of that name are ambiguous.
func (s *Symbols) Lookup(name string) (Symbol, error) {
	c := s.byName[name]
	for _, x := range c {
		if x.Global {
			return x, nil
		}
	}
	switch len(c) {
	case 0:
		return Symbol{}, errorf("lookup symbol", ErrNotFound, 0, "%q", name)
	case 1:
		return c[0], nil
	}
	return Symbol{}, errorf("lookup symbol", ErrInvalid, 0, "%q is ambiguous (%d local symbols)", name, len(c))
}

// All returns every defined symbol called name, in symbol table order.
func (s *Symbols) All(name string) []Symbol { return append([]Symbol(nil), s.byName[name]...) }

// Addr2Func returns the function containing addr and the offset into it.
func (s *Symbols) Addr2Func(addr uint64) (Symbol, uint64, bool) {
	i := sort.Search(len(s.funcs), func(i int) bool { return s.funcs[i].Addr > addr })
	for i > 0 {
		f := s.funcs[i-1]
		if addr-f.Addr < max(f.Size, 1) {
			return f, addr - f.Addr, true
		}
		// an alias or a zero-sized symbol at the same address may hide the real one
		if i > 1 && s.funcs[i-2].Addr == f.Addr {
			i--
			continue
		}
		break
	}
	return Symbol{}, 0, false
}

// Format renders addr as "name+0xoff/0xsize", or as a bare hex address.
func (s *Symbols) Format(addr uint64) string {
	if f, off, ok := s.Addr2Func(addr); ok {
		return fmt.Sprintf("%s+%#x/%#x", f.Name, off, f.Size)
	}
	return fmt.Sprintf("%#x", addr)
}
