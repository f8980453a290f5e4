package elfpatch

import (
	"bytes"
	"errors"
	"math/rand"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

// elfEdit edits a copy of an ELF file's headers by hand, to build the
// malformed inputs below from real gcc/ld output.
type elfEdit struct {
	t    *testing.T
	data []byte
}

func newEdit(t *testing.T, path string) *elfEdit {
	return &elfEdit{t, bytes.Clone(readFile(t, path))}
}

func (e *elfEdit) shoff() uint64 { return le.Uint64(e.data[40:]) }

func (e *elfEdit) section(name string) int {
	f, err := parseELF("test", e.data, etRel, etExec)
	if err != nil {
		e.t.Fatal(err)
	}
	for i, s := range f.sections {
		if s.Name == name {
			return i
		}
	}
	e.t.Fatalf("no section %s", name)
	return 0
}

// field returns the file offset of a section header field.
func (e *elfEdit) field(sec int, off int) int { return int(e.shoff()) + sec*sectionSize + off }

func (e *elfEdit) put64(at int, v uint64) *elfEdit { le.PutUint64(e.data[at:], v); return e }
func (e *elfEdit) put32(at int, v uint32) *elfEdit { le.PutUint32(e.data[at:], v); return e }
func (e *elfEdit) put16(at int, v uint16) *elfEdit { le.PutUint16(e.data[at:], v); return e }

const (
	shType    = 4
	shOffset  = 24
	shSize    = 32
	shLink    = 40
	shInfo    = 44
	shAlign   = 48
	shEntsize = 56
)

// sectionBytes returns the file bytes of a named section (to edit them).
func (e *elfEdit) sectionBytes(name string) []byte {
	i := e.section(name)
	off := le.Uint64(e.data[e.field(i, shOffset):])
	size := le.Uint64(e.data[e.field(i, shSize):])
	return e.data[off : off+size]
}

func wantError(t *testing.T, what string, err error, kind error, detail string) {
	t.Helper()
	var e *Error
	if err == nil || !errors.Is(err, kind) || !errors.As(err, &e) || !strings.Contains(err.Error(), detail) {
		t.Errorf("%s: %v, want %v containing %q", what, err, kind, detail)
	}
}

func TestMalformedKernel(t *testing.T) {
	good := readFile(t, fixtureKernelPath)
	shoff := le.Uint64(good[40:])
	for _, n := range []int{0, 4, 63, 64, 100, int(shoff), int(shoff) + 70, len(good) - 1} {
		_, err := ParseKernel(good[:n])
		wantError(t, "truncated", err, ErrFormat, "")
	}
	edits := []struct {
		name   string
		edit   func(e *elfEdit)
		detail string
	}{
		{"magic", func(e *elfEdit) { e.data[1] = 'X' }, "bad magic"},
		{"class", func(e *elfEdit) { e.data[4] = 1 }, "ELF64"},
		{"endian", func(e *elfEdit) { e.data[5] = 2 }, "little-endian"},
		{"machine", func(e *elfEdit) { e.put16(18, 3) }, "machine 3"},
		{"type", func(e *elfEdit) { e.put16(16, etRel) }, "type 1"},
		{"shoff", func(e *elfEdit) { e.put64(40, 1<<62) }, "outside the file"},
		{"shnum", func(e *elfEdit) { e.put16(60, 0xfff0) }, "does not fit"},
		{"shentsize", func(e *elfEdit) { e.put16(58, 40) }, "e_shentsize"},
		{"shstrndx", func(e *elfEdit) { e.put16(62, 0xfff0) }, "e_shstrndx"},
		{"phentsize", func(e *elfEdit) { e.put16(54, 3) }, "e_phentsize"},
		{"phoff", func(e *elfEdit) { e.put64(32, 1<<40) }, "program header"},
		{"section size", func(e *elfEdit) { e.put64(e.field(e.section(".text"), shSize), 1<<50) }, "past the end"},
		{"symtab entsize", func(e *elfEdit) { e.put64(e.field(e.section(".symtab"), shEntsize), 16) }, "entry size"},
		{"symtab size", func(e *elfEdit) { e.put64(e.field(e.section(".symtab"), shSize), 25) }, "multiple"},
		{"symtab link", func(e *elfEdit) { e.put32(e.field(e.section(".symtab"), shLink), 999) }, "string table"},
		{"no symtab", func(e *elfEdit) { e.put32(e.field(e.section(".symtab"), shType), SHT_PROGBITS) }, "no symbol table"},
		{"symbol name", func(e *elfEdit) {
			e.put32(int(le.Uint64(e.data[e.field(e.section(".symtab"), shOffset):]))+symSize, 1<<30)
		}, "name"},
		{"symbol shndx", func(e *elfEdit) {
			e.put16(int(le.Uint64(e.data[e.field(e.section(".symtab"), shOffset):]))+symSize+6, 0x9000)
		}, "section"},
		{"strtab unterminated", func(e *elfEdit) {
			b := e.sectionBytes(".strtab")
			for i := range b {
				b[i] = 'a'
			}
		}, "NUL-terminated"},
	}
	for _, c := range edits {
		e := newEdit(t, fixtureKernelPath)
		c.edit(e)
		_, err := ParseKernel(e.data)
		wantError(t, c.name, err, ErrFormat, c.detail)
	}
	// A kernel without __mcount_loc parses; nothing is patchable, and the
	// report says why.
	e := newEdit(t, fixtureKernelPath)
	for _, name := range []string{"__start_mcount_loc", "__stop_mcount_loc"} {
		k := fixtureKernel(t)
		s := mustLookup(t, k, name, 0)
		symoff := int(le.Uint64(e.data[e.field(e.section(".symtab"), shOffset):])) + s.Index*symSize
		e.data[symoff+4] = byte(BindLocal<<4) | byte(TypeNoType) // hide from LookupGlobal
	}
	k, err := ParseKernel(e.data)
	if err != nil {
		t.Fatal(err)
	}
	if len(k.FentrySites()) != 0 || k.McountSource() != "" {
		t.Errorf("sites without __mcount_loc: %d (%s)", len(k.FentrySites()), k.McountSource())
	}
	if _, err := k.Patchable("cmdline_proc_show", 0); !errors.Is(err, ErrNotPatchable) {
		t.Errorf("patchable without sites: %v", err)
	}
	if r := NewKernelReport(k, ""); r.OK() {
		t.Error("report without __mcount_loc is OK")
	}
}

func TestMalformedPatch(t *testing.T) {
	sample := samplePath("livepatch-sample")
	good := readFile(t, sample)
	for n := 0; n < len(good); n += 97 {
		if _, err := ParsePatch(good[:n]); err == nil {
			t.Errorf("truncated to %d bytes: parsed", n)
		}
	}
	if _, err := ParsePatch(readFile(t, fixtureKernelPath)); !errors.Is(err, ErrFormat) {
		t.Errorf("kernel as patch: %v", err)
	}
	edits := []struct {
		name   string
		edit   func(e *elfEdit)
		kind   error
		detail string
	}{
		{"rela entsize", func(e *elfEdit) { e.put64(e.field(e.section(".rela.data.funcs"), shEntsize), 16) }, ErrFormat, "entry size"},
		{"rela link", func(e *elfEdit) { e.put32(e.field(e.section(".rela.data.funcs"), shLink), 1) }, ErrFormat, "sh_link"},
		{"rela info", func(e *elfEdit) { e.put32(e.field(e.section(".rela.data.funcs"), shInfo), 9999) }, ErrFormat, "sh_info"},
		{"rela symbol", func(e *elfEdit) {
			b := e.sectionBytes(".rela.data.funcs")
			le.PutUint64(b[8:], uint64(1)<<40|R_X86_64_64)
		}, ErrFormat, "symbol index"},
		{"rela offset", func(e *elfEdit) { le.PutUint64(e.sectionBytes(".rela.data.funcs"), 1<<40) }, ErrFormat, "beyond the end"},
		{"rela type in struct", func(e *elfEdit) {
			b := e.sectionBytes(".rela.data.funcs")
			le.PutUint64(b[8:], le.Uint64(b[8:])&^0xffffffff|R_X86_64_PC32)
		}, ErrFormat, "want R_X86_64_64"},
		{"no .klp.patch", func(e *elfEdit) { e.sectionBytes(".shstrtab"); renameSection(e, ".klp.patch", ".klp.xxxxx") }, ErrFormat, "KLP_PATCH"},
		{".klp.patch size", func(e *elfEdit) { e.put64(e.field(e.section(".klp.patch"), shSize), 4) }, ErrFormat, "one KLP_PATCH per object"},
		{"KLP_PATCH_ABI unknown", func(e *elfEdit) { le.PutUint64(e.sectionBytes(".klp.patch")[klpPatchRefABI:], 3) }, ErrFormat, "KLP_PATCH_ABI 3"},
		// A klp_patch of 32 bytes read as the first layout (24): refused
		// by the size of its symbol, not misread.
		{"KLP_PATCH layout mismatch", func(e *elfEdit) { e.put64(e.field(e.section(".klp.patch"), shSize), 8) }, ErrFormat, "is 32 bytes, but its KLP_PATCH says layout 1"},
		{"funcs unterminated", func(e *elfEdit) { e.put64(e.field(e.section(".data.funcs"), shSize), klpFuncSize) }, ErrFormat, "not terminated"},
		{"objs unterminated", func(e *elfEdit) { e.put64(e.field(e.section(".data.objs"), shSize), klpObjectSize) }, ErrFormat, "not terminated"},
		{"old_name unterminated", func(e *elfEdit) {
			b := e.sectionBytes(".rodata.str1.1")
			for i := range b {
				b[i] = 'x'
			}
		}, ErrFormat, "NUL-terminated"},
		{"absolute pointer", func(e *elfEdit) { le.PutUint64(e.sectionBytes(".data.funcs")[klpFuncSize+8:], 0xffffffff81000000) }, ErrFormat, "absolute address"},
		{"modname", func(e *elfEdit) { e.sectionBytes(".klp.modname")[3] = ' ' }, ErrFormat, "module name"},
		{"sympos", func(e *elfEdit) { le.PutUint64(e.sectionBytes(".data.funcs")[klpFuncOldSympos:], 1<<40) }, ErrRange, "implausible"},
		{"data in bss", func(e *elfEdit) { e.put32(e.field(e.section(".data.funcs"), shType), SHT_NOBITS) }, ErrFormat, "zero-filled"},
		{"struct in a note", func(e *elfEdit) { e.put32(e.field(e.section(".data.funcs"), shType), shtNote) }, ErrFormat, "without file data"},
		{"SHT_REL", func(e *elfEdit) { e.put32(e.field(e.section(".rela.data.funcs"), shType), SHT_REL) }, ErrFormat, "SHT_REL"},
		// issue 12: a nonsense type used to make the loader skip the
		// section, its relocations never applied (the guest hit #UD).
		{"rela nonsense type", func(e *elfEdit) { e.put32(e.field(e.section(".rela.data.funcs"), shType), 0x7fffffff) }, ErrFormat, "section .rela.data.funcs+0x0: malformed input: relocation section of type 0x7fffffff"},
		{"rela as progbits", func(e *elfEdit) { e.put32(e.field(e.section(".rela.data.funcs"), shType), SHT_PROGBITS) }, ErrFormat, "want SHT_RELA"},
		{"alloc unknown type", func(e *elfEdit) { e.put32(e.field(e.section(".data.objs"), shType), 0x6fffffff) }, ErrFormat, "only SHT_PROGBITS and SHT_NOBITS"},
		{"struct not loaded", func(e *elfEdit) {
			at := e.field(e.section(".data.objs"), 8)
			e.put64(at, le.Uint64(e.data[at:])&^SHF_ALLOC)
		}, ErrFormat, "not loaded"},
		{"group flag", func(e *elfEdit) {
			at := e.field(e.section(".data.funcs"), 8)
			e.put64(at, le.Uint64(e.data[at:])|SHF_GROUP)
		}, ErrFormat, "COMDAT"},
	}
	for _, c := range edits {
		e := newEdit(t, sample)
		c.edit(e)
		_, err := ParsePatch(e.data)
		wantError(t, c.name, err, c.kind, c.detail)
	}
	// klp_patch.states (testdata/patches/states.c: ids 7 and 1<<40|1).
	states := testPatchesDir + "/states.o"
	stateEdits := []struct {
		name   string
		edit   func(e *elfEdit)
		kind   error
		detail string
	}{
		{"states unterminated", func(e *elfEdit) { e.put64(e.field(e.section(".data.states"), shSize), 2*klpStateSize) }, ErrFormat, "states[] not terminated"},
		{"state id twice", func(e *elfEdit) { le.PutUint64(e.sectionBytes(".data.states")[klpStateSize+klpStateID:], 7) }, ErrDuplicate, "state 7 given twice"},
		{"state id relocated", func(e *elfEdit) {
			b := e.sectionBytes(".rela.data.states")
			le.PutUint64(b, klpStateSize+klpStateVersion) // the first data pointer's relocation, moved onto a version
		}, ErrFormat, "klp_state.id or .version is relocated"},
		{"states outside the patch", func(e *elfEdit) {
			// klp_patch.states relocated against sink, a kernel symbol
			sink := e.symbolIndex("sink")
			b := e.sectionBytes(".rela.data.patch")
			for i := 0; i+relaSize <= len(b); i += relaSize {
				if le.Uint64(b[i:]) == klpPatchStates {
					le.PutUint64(b[i+8:], sink<<32|R_X86_64_64)
				}
			}
		}, ErrFormat, "klp_patch.states points outside the patch (sink)"},
		{"state data absolute", func(e *elfEdit) {
			e.put64(e.field(e.section(".rela.data.states"), shSize), relaSize) // drop the second one's relocation
			le.PutUint64(e.sectionBytes(".data.states")[klpStateSize+klpStateData:], 0xffffffff81000000)
		}, ErrFormat, "klp_state.data holds an absolute address"},
	}
	for _, c := range stateEdits {
		e := newEdit(t, states)
		c.edit(e)
		_, err := ParsePatch(e.data)
		wantError(t, c.name, err, c.kind, c.detail)
	}
}

// symbolIndex is the index of a named symbol in the object's symbol table.
func (e *elfEdit) symbolIndex(name string) uint64 {
	f, err := parseELF("test", e.data, etRel)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := f.parseSymbols(); err != nil {
		e.t.Fatal(err)
	}
	for i, s := range f.symbols {
		if s.Name == name {
			return uint64(i)
		}
	}
	e.t.Fatalf("no symbol %s", name)
	return 0
}

// renameSection overwrites a section's name in .shstrtab (same length).
func renameSection(e *elfEdit, from, to string) {
	tab := e.sectionBytes(".shstrtab")
	i := bytes.Index(tab, []byte(from+"\x00"))
	if i < 0 || len(from) != len(to) {
		e.t.Fatalf("rename %s", from)
	}
	copy(tab[i:], to)
}

// Layout-time lies: alignment, huge .bss (must not be allocated), and a
// relocation that overruns its section.
func TestMalformedLayout(t *testing.T) {
	k := fixtureKernel(t)
	e := newEdit(t, samplePath("livepatch-callbacks"))
	e.put64(e.field(e.section(".bss.klp_callbacks_counts"), shSize), 1<<45)
	p, err := ParsePatch(e.data)
	if err != nil {
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err = p.Layout(patchBase, k)
	runtime.ReadMemStats(&after)
	wantError(t, "huge bss", err, ErrRange, "zero-filled")
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 16<<20 {
		t.Errorf("huge .bss allocated %d bytes", grew)
	}

	e = newEdit(t, samplePath("livepatch-sample"))
	e.put64(e.field(e.section(".data.funcs"), shAlign), 3)
	p, err = ParsePatch(e.data)
	if err != nil {
		t.Fatal(err)
	}
	_, err = p.Layout(patchBase, k)
	wantError(t, "alignment 3", err, ErrFormat, "alignment")

	// The call's PLT32 relocation moved to the last 2 bytes of its section.
	e = newEdit(t, samplePath("livepatch-sample"))
	textSize := le.Uint64(e.data[e.field(e.section(".text.livepatch_cmdline_proc_show"), shSize):])
	rel := e.sectionBytes(".rela.text.livepatch_cmdline_proc_show")
	le.PutUint64(rel[2*relaSize:], textSize-2)
	p, err = ParsePatch(e.data)
	if err != nil {
		t.Fatal(err)
	}
	_, err = p.Layout(patchBase, k)
	wantError(t, "overrun", err, ErrFormat, "past the end")
}

// A deterministic mini-fuzz over real inputs: random byte edits in the
// headers and tables must give an *Error or a result, never a panic.
func TestMutationsNoPanic(t *testing.T) {
	k := fixtureKernel(t)
	rng := rand.New(rand.NewSource(1))
	inputs := [][]byte{readFile(t, samplePath("livepatch-callbacks")), readFile(t, testPatchesDir+"/allrelocs.o")}
	rounds := 1500
	if n := os.Getenv("ELFPATCH_MUTATIONS"); n != "" {
		rounds, _ = strconv.Atoi(n)
	}
	for _, in := range inputs {
		shoff := int(le.Uint64(in[40:]))
		for i := 0; i < rounds; i++ {
			d := bytes.Clone(in)
			for j := rng.Intn(4) + 1; j > 0; j-- {
				at := rng.Intn(len(d))
				if rng.Intn(2) == 0 { // the section header table
					at = shoff + rng.Intn(len(d)-shoff)
				}
				d[at] = byte(rng.Intn(256))
			}
			p, err := ParsePatch(d)
			if err != nil {
				var e *Error
				if !errors.As(err, &e) {
					t.Fatalf("not an *Error: %v", err)
				}
				continue
			}
			if _, errs := p.Check(patchBase, k); len(errs) > 0 {
				var e *Error
				if !errors.As(errs[0], &e) {
					t.Fatalf("not an *Error: %v", errs[0])
				}
			}
		}
	}
	kin := readFile(t, fixtureKernelPath)
	shoff := le.Uint64(kin[40:])
	for i := 0; i < 300; i++ {
		d := bytes.Clone(kin)
		for j := rng.Intn(4) + 1; j > 0; j-- {
			// Aim at the headers, the section table and the symbol table.
			var at int
			switch rng.Intn(3) {
			case 0:
				at = rng.Intn(headerSize)
			case 1:
				at = int(shoff) + rng.Intn(len(d)-int(shoff))
			default:
				at = rng.Intn(len(d))
			}
			d[at] = byte(rng.Intn(256))
		}
		if k, err := ParseKernel(d); err == nil {
			NewKernelReport(k, "klp_dup_fn")
		}
	}
}
