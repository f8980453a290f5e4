package guestkernel

import (
	"cmp"
	"fmt"
	"slices"
	"sort"
	"strings"

	"klp-kvm/elfpatch"
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
// address (for stack traces). It is a view of an *elfpatch.Kernel, the
// project's one ELF reader, which has the complete picture (sympos, fentry
// sites); this one only serves introspection.
type Symbols struct {
	k     *elfpatch.Kernel
	funcs []Symbol // STT_FUNC, sorted by Addr then Name
}

// LoadSymbols parses an ELF image (elfpatch.ParseKernel) and returns its
// symbol table. Given the kernel already parsed, use NewSymbols instead.
func LoadSymbols(image []byte) (*Symbols, error) {
	k, err := elfpatch.ParseKernel(image)
	if err != nil {
		return nil, &Error{Op: "load symbols", Kind: ErrFormat, Detail: "guest kernel ELF", Err: err}
	}
	return NewSymbols(k), nil
}

// NewSymbols is the symbol table of an already parsed kernel; it shares k
// (which is never modified) and copies only the function symbols' index.
func NewSymbols(k *elfpatch.Kernel) *Symbols {
	s := &Symbols{k: k}
	for e := range k.FuncSymbols() {
		s.funcs = append(s.funcs, symbolOf(e))
	}
	slices.SortStableFunc(s.funcs, func(a, b Symbol) int {
		if c := cmp.Compare(a.Addr, b.Addr); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	return s
}

// Kernel is the parsed kernel the table is a view of.
func (s *Symbols) Kernel() *elfpatch.Kernel { return s.k }

func symbolOf(e elfpatch.Symbol) Symbol {
	return Symbol{Name: e.Name, Addr: e.Value, Size: e.Size, Global: e.Bind != elfpatch.BindLocal}
}

// named returns every defined symbol called name (not sections or files),
// in symbol table order.
func (s *Symbols) named(name string) []Symbol {
	all := s.k.LookupAll(name) // in address order
	slices.SortFunc(all, func(a, b elfpatch.Symbol) int { return cmp.Compare(a.Index, b.Index) })
	out := make([]Symbol, len(all))
	for i, e := range all {
		out[i] = symbolOf(e)
	}
	return out
}

// Lookup returns the symbol called name: the global one if there is one,
// else the only local one. Several locals of that name are ambiguous.
func (s *Symbols) Lookup(name string) (Symbol, error) {
	c := s.named(name)
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
func (s *Symbols) All(name string) []Symbol { return s.named(name) }

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
