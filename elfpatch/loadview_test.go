package elfpatch

import (
	"bytes"
	"debug/elf"
	"errors"
	"slices"
	"testing"
)

// The accessors a loader needs (Type, Segments, SegmentBytes) agree with
// debug/elf on the fixture kernel.
func TestKernelLoadView(t *testing.T) {
	data := readFile(t, fixtureKernelPath)
	k := fixtureKernel(t)
	if k.Type() != ET_EXEC || k.Type().String() != "ET_EXEC" {
		t.Errorf("type %v", k.Type())
	}
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(k.Data(), data) {
		t.Error("Data differs from the parsed bytes")
	}
	if k.Entry != f.Entry {
		t.Errorf("entry %#x, debug/elf %#x", k.Entry, f.Entry)
	}
	var want []Segment
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD {
			want = append(want, Segment{Vaddr: p.Vaddr, Paddr: p.Paddr, Offset: p.Off, Filesz: p.Filesz,
				Memsz: p.Memsz, Flags: uint32(p.Flags)})
		}
	}
	if !slices.Equal(k.Segments, want) || len(want) != 3 {
		t.Fatalf("segments %+v, debug/elf %+v", k.Segments, want)
	}
	for i, s := range k.Segments {
		b, ok := k.SegmentBytes(s)
		if !ok || !bytes.Equal(b, data[s.Offset:s.Offset+s.Filesz]) {
			t.Errorf("segment %d bytes: %d %v", i, len(b), ok)
		}
	}
	if _, ok := k.SegmentBytes(Segment{Offset: uint64(len(data)) - 4, Filesz: 8}); ok {
		t.Error("SegmentBytes past the end succeeded")
	}
	if _, ok := k.SegmentBytes(Segment{Offset: ^uint64(0) - 2, Filesz: 8}); ok {
		t.Error("SegmentBytes with a wrapping range succeeded")
	}
	if b, ok := k.SegmentBytes(Segment{Offset: uint64(len(data))}); !ok || len(b) != 0 {
		t.Error("empty SegmentBytes at the end failed")
	}
}

func TestKernelFuncSymbols(t *testing.T) {
	k := fixtureKernel(t)
	var funcs []Symbol
	for s := range k.FuncSymbols() {
		funcs = append(funcs, s)
	}
	n := 0
	for _, s := range k.Symbols() {
		if s.Type == TypeFunc && s.Defined() && s.Section < len(k.Sections()) && k.Sections()[s.Section].Alloc() && s.Name != "" {
			n++
		}
	}
	if len(funcs) != n || n < 1024 {
		t.Fatalf("%d function symbols, want %d", len(funcs), n)
	}
	for i, s := range funcs {
		if s.Type != TypeFunc {
			t.Fatalf("%s is %v", s.Name, s.Type)
		}
		if i > 0 && funcs[i-1].Value > s.Value {
			t.Fatalf("not in address order at %s", s.Name)
		}
	}
	// Stopping early stops the iteration.
	m := 0
	for range k.FuncSymbols() {
		if m++; m == 3 {
			break
		}
	}
	// Addr2Func names code by its function and never by a data symbol.
	cps := mustLookup(t, k, "cmdline_proc_show", 0)
	if s, off, ok := k.Addr2Func(cps.Value + 3); !ok || s.Name != "cmdline_proc_show" || off != 3 {
		t.Errorf("Addr2Func(cmdline_proc_show+3) = %s+%d %v", s.Name, off, ok)
	}
	abi := mustLookup(t, k, "klp_guest_abi", 0)
	if s, _, ok := k.Addr2Func(abi.Value); ok && s.Type != TypeFunc {
		t.Errorf("Addr2Func(klp_guest_abi) = %+v", s)
	} else if s, _, ok := k.Addr2Sym(abi.Value); !ok || s.Name != "klp_guest_abi" {
		t.Errorf("Addr2Sym(klp_guest_abi) = %+v %v", s, ok)
	}
	if _, _, ok := k.Addr2Func(0x1000); ok {
		t.Error("Addr2Func below every symbol succeeded")
	}
}

// Malformed program headers and types are named in the error, as a loader
// reports them.
func TestMalformedKernelSegments(t *testing.T) {
	phdr := func(e *elfEdit, i, off int) int { return int(le.Uint64(e.data[32:])) + i*progSize + off }
	cases := []struct {
		name, detail string
		edit         func(e *elfEdit)
	}{
		{"filesz > memsz", "filesz 0x7d16 > memsz 0x10", func(e *elfEdit) { e.put64(phdr(e, 0, 40), 0x10) }},
		{"beyond the file", "beyond the end", func(e *elfEdit) { e.put64(phdr(e, 2, 8), uint64(len(e.data))-8) }},
		{"offset wraps", "beyond the end", func(e *elfEdit) { e.put64(phdr(e, 1, 8), ^uint64(0)-1) }},
		{"relocatable", "type 1 (ET_REL) not accepted here (want ET_EXEC or ET_DYN)", func(e *elfEdit) { e.put16(16, etRel) }},
		{"core", "(ET(4))", func(e *elfEdit) { e.put16(16, 4) }},
		{"machine", "want EM_X86_64", func(e *elfEdit) { e.put16(18, 3) }},
		{"empty", "not an ELF file", func(e *elfEdit) { e.data = nil }},
	}
	for _, c := range cases {
		e := newEdit(t, fixtureKernelPath)
		c.edit(e)
		_, err := ParseKernel(e.data)
		wantError(t, c.name, err, ErrFormat, c.detail)
	}
	// An ET_DYN image parses and says so.
	e := newEdit(t, fixtureKernelPath)
	e.put16(16, etDyn)
	k, err := ParseKernel(e.data)
	if err != nil || k.Type() != ET_DYN {
		t.Errorf("ET_DYN: %v", err)
	}
	if _, err := ParsePatch(readFile(t, fixtureKernelPath)); err == nil || !errors.Is(err, ErrFormat) {
		t.Errorf("kernel as a patch: %v", err)
	}
}
