package guestkernel

import (
	"bytes"
	"debug/elf"
	"errors"
	"reflect"
	"sort"
	"testing"

	"klp-kvm/elfpatch"
)

// legacySymbols is the table LoadSymbols built with debug/elf before it
// became a view of elfpatch.Kernel: the oracle the view must agree with.
type legacySymbols struct {
	funcs  []Symbol
	byName map[string][]Symbol
}

func loadLegacy(t *testing.T, image []byte) *legacySymbols {
	t.Helper()
	f, err := elf.NewFile(bytes.NewReader(image))
	if err != nil {
		t.Fatal(err)
	}
	syms, err := f.Symbols()
	if err != nil {
		t.Fatal(err)
	}
	s := &legacySymbols{byName: map[string][]Symbol{}}
	for _, e := range syms {
		typ := elf.ST_TYPE(e.Info)
		if e.Section == elf.SHN_UNDEF || e.Name == "" || typ == elf.STT_FILE || typ == elf.STT_SECTION {
			continue
		}
		sym := Symbol{Name: e.Name, Addr: e.Value, Size: e.Size, Global: elf.ST_BIND(e.Info) != elf.STB_LOCAL}
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
	return s
}

func TestSymbolsMatchDebugElf(t *testing.T) {
	s, err := KernelSymbols()
	if err != nil {
		t.Fatal(err)
	}
	old := loadLegacy(t, Vmlinux())
	if !reflect.DeepEqual(s.funcs, old.funcs) {
		t.Fatalf("%d function symbols, debug/elf %d", len(s.funcs), len(old.funcs))
	}
	locals, ambiguous := 0, 0
	for name, want := range old.byName {
		if got := s.All(name); !reflect.DeepEqual(got, want) {
			t.Fatalf("All(%q) = %+v, debug/elf %+v", name, got, want)
		}
		got, err := s.Lookup(name)
		wantSym, wantKind := legacyLookup(want)
		if got != wantSym || !errors.Is(err, wantKind) || (err == nil) != (wantKind == nil) {
			t.Errorf("Lookup(%q) = %+v %v, debug/elf %+v %v", name, got, err, wantSym, wantKind)
		}
		switch {
		case wantKind != nil:
			ambiguous++
		case !got.Global:
			locals++
		}
	}
	if locals == 0 || ambiguous == 0 {
		t.Errorf("the kernel has %d unique locals and %d ambiguous names: the test lost its cases", locals, ambiguous)
	}
	if _, err := s.Lookup("no_such_symbol"); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing symbol: %v", err)
	}
	// Every function's edges, and the whole of the text at a stride.
	addrs := []uint64{0, 0x1000, ^uint64(0)}
	for _, f := range old.funcs {
		addrs = append(addrs, f.Addr-1, f.Addr, f.Addr+1, f.Addr+f.Size-1, f.Addr+f.Size)
	}
	lo, hi := old.funcs[0].Addr, old.funcs[len(old.funcs)-1].Addr+old.funcs[len(old.funcs)-1].Size
	for a := lo - 64; a < hi+64; a += 7 {
		addrs = append(addrs, a)
	}
	for _, a := range addrs {
		if got, want := s.Format(a), legacyFormat(old, a); got != want {
			t.Fatalf("Format(%#x) = %s, debug/elf %s", a, got, want)
		}
	}
}

// legacyLookup is the old Lookup over the debug/elf table: the first global
// in symbol table order, else the only local; several locals: ErrInvalid.
func legacyLookup(c []Symbol) (Symbol, error) {
	for _, x := range c {
		if x.Global {
			return x, nil
		}
	}
	if len(c) == 1 {
		return c[0], nil
	}
	return Symbol{}, ErrInvalid
}

func legacyFormat(s *legacySymbols, addr uint64) string {
	return (&Symbols{funcs: s.funcs}).Format(addr)
}

func TestNewSymbolsSharesTheKernel(t *testing.T) {
	k, err := elfpatch.ParseKernel(Vmlinux())
	if err != nil {
		t.Fatal(err)
	}
	s := NewSymbols(k)
	if s.Kernel() != k {
		t.Error("Kernel() is not the kernel given")
	}
	abi, err := s.Lookup("klp_guest_abi")
	if err != nil {
		t.Fatal(err)
	}
	if e, err := k.Lookup("klp_guest_abi", 0); err != nil || e.Value != abi.Addr || e.Size != abi.Size {
		t.Errorf("klp_guest_abi: %+v, elfpatch %+v %v", abi, e, err)
	}
}

func TestLoadSymbolsErrors(t *testing.T) {
	for name, image := range map[string][]byte{
		"empty":   nil,
		"not ELF": []byte("this is not an ELF file, not even close to one........................"),
		"patch":   mustPatch(t, "livepatch-sample"),
	} {
		_, err := LoadSymbols(image)
		var ee *elfpatch.Error
		if !errors.Is(err, ErrFormat) || !errors.As(err, &ee) {
			t.Errorf("%s: %v, want ErrFormat wrapping an *elfpatch.Error", name, err)
		}
	}
}

func mustPatch(t *testing.T, name string) []byte {
	t.Helper()
	b, err := Patch(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
