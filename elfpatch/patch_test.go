package elfpatch

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"testing"

	"golang.org/x/arch/x86/x86asm"
)

func TestParseSamples(t *testing.T) {
	cases := []struct {
		file, name, source string
		replace            bool
		funcs              []string
		callbacks          bool
	}{
		{"livepatch-sample", "livepatch_sample", NameFromModname, false, []string{"cmdline_proc_show,0"}, false},
		{"livepatch-sample2", "livepatch_sample2", NameFromModname, false, []string{"cmdline_proc_show,0"}, false},
		{"livepatch-sympos", "livepatch_sympos", NameFromModname, false, []string{"klp_dup_fn,2"}, false},
		{"livepatch-pair", "livepatch_pair", NameFromModname, false, []string{"klp_pair_a,0", "klp_pair_b,0"}, false},
		{"livepatch-park", "livepatch_park", NameFromModname, false, []string{"klp_park_fn,0"}, false},
		{"livepatch-callbacks", "livepatch_callbacks", NameFromModname, false, []string{"cmdline_proc_show,0"}, true},
		{"livepatch-replace", "livepatch_replace", NameFromModname, true, []string{"cmdline_proc_show,0"}, false},
	}
	for _, c := range cases {
		p := loadSample(t, c.file)
		if p.Name != c.name || p.NameSource != c.source || p.Replace != c.replace {
			t.Errorf("%s: name %q (%s) replace %v", c.file, p.Name, p.NameSource, p.Replace)
		}
		if len(p.Objects) != 1 || p.Objects[0].Name != VmlinuxObject {
			t.Fatalf("%s: objects %+v", c.file, p.Objects)
		}
		var got []string
		for _, f := range p.Funcs() {
			got = append(got, f.OldName+","+itoa(uint64(f.OldSympos)))
			if f.NewFunc.Section <= 0 || !p.Sections()[f.NewFunc.Section].Exec() || f.NewFunc.Symbol == "" {
				t.Errorf("%s: new_func %+v", c.file, f.NewFunc)
			}
		}
		if strings.Join(got, " ") != strings.Join(c.funcs, " ") {
			t.Errorf("%s: funcs %v, want %v", c.file, got, c.funcs)
		}
		cb := p.Objects[0].Callbacks
		has := cb.PrePatch != nil && cb.PostPatch != nil && cb.PreUnpatch != nil && cb.PostUnpatch != nil
		none := cb.PrePatch == nil && cb.PostPatch == nil && cb.PreUnpatch == nil && cb.PostUnpatch == nil
		if c.callbacks && !has || !c.callbacks && !none {
			t.Errorf("%s: callbacks %+v", c.file, cb)
		}
	}
	bench := loadSample(t, "livepatch-bench")
	if fs := bench.Funcs(); len(fs) != 1024 || fs[0].OldName != "bench_fn_0000" || fs[1023].OldName != "bench_fn_1023" {
		t.Errorf("bench: %d funcs", len(fs))
	}
	// Without KLP_MODULE_NAME: ParsePatch has no file name to fall back
	// on, ParsePatchFile uses the stem.
	p, err := ParsePatch(readFile(t, testPatchesDir+"/module-obj.o"))
	if err != nil || p.Name != "" || p.NameSource != "" {
		t.Errorf("ParsePatch without modname: %q %q %v", p.Name, p.NameSource, err)
	}
	p, err = ParsePatchFile(testPatchesDir + "/module-obj.o")
	if err != nil || p.Name != "module_obj" || p.NameSource != NameFromFile {
		t.Errorf("ParsePatchFile without modname: %q %q %v", p.Name, p.NameSource, err)
	}
	if n := ModuleNameFromFile("/x/y/livepatch-foo-bar.ko"); n != "livepatch_foo_bar" {
		t.Errorf("ModuleNameFromFile: %q", n)
	}
	if n := ModuleNameFromFile(""); n != "" {
		t.Errorf("ModuleNameFromFile(\"\"): %q", n)
	}
}

// decodeAt decodes the instruction at virtual address va of the image.
func decodeAt(t *testing.T, im *Image, va uint64) x86asm.Inst {
	t.Helper()
	off := va - im.Base
	inst, err := x86asm.Decode(im.Bytes[off:min(off+15, uint64(len(im.Bytes)))], 64)
	if err != nil {
		t.Fatalf("decode at %#x: %v", va, err)
	}
	return inst
}

func cstrAt(im *Image, va uint64) string {
	off := va - im.Base
	if off >= uint64(len(im.Bytes)) {
		return ""
	}
	b := im.Bytes[off:]
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

func TestLayoutSample(t *testing.T) {
	k := fixtureKernel(t)
	p := loadSample(t, "livepatch-sample")
	im, err := p.Layout(patchBase, k)
	if err != nil {
		t.Fatal(err)
	}
	size, _ := p.Size()
	if im.Size() != size || im.Base != patchBase {
		t.Errorf("size %d / %d", im.Size(), size)
	}
	f := im.Objects[0].Funcs[0]
	cps := mustLookup(t, k, "cmdline_proc_show", 0)
	if f.OldAddr != cps.Value || f.Site.Addr != cps.Value || f.OldSize != cps.Size || f.NewName != "livepatch_cmdline_proc_show" {
		t.Errorf("func %+v", f)
	}
	if a, ok := im.SymbolAddr("livepatch_cmdline_proc_show"); !ok || a != f.NewAddr {
		t.Errorf("SymbolAddr %#x %v, NewAddr %#x", a, ok, f.NewAddr)
	}
	// Walk the new function: the fentry NOP, the two string immediates
	// (R_X86_64_32S) and the call (PLT32) must decode to the right targets.
	if inst := decodeAt(t, im, f.NewAddr); inst.Op != x86asm.NOP || inst.Len != 5 {
		t.Fatalf("new function does not start with its fentry NOP: %v", inst)
	}
	seqPrintf := mustLookup(t, k, "seq_printf", 0)
	var strs []string
	called := false
	for va := f.NewAddr; va < f.NewAddr+0x22; {
		inst := decodeAt(t, im, va)
		switch inst.Op {
		case x86asm.MOV:
			if imm, ok := inst.Args[1].(x86asm.Imm); ok {
				strs = append(strs, cstrAt(im, uint64(int64(imm))))
			}
		case x86asm.CALL:
			rel := inst.Args[0].(x86asm.Rel)
			if target := va + uint64(inst.Len) + uint64(int64(rel)); target != seqPrintf.Value {
				t.Errorf("call to %#x, want seq_printf %#x", target, seqPrintf.Value)
			}
			called = true
		}
		va += uint64(inst.Len)
	}
	slices.Sort(strs)
	if !called || strings.Join(strs, "|") != "%s\n|this has been live patched" {
		t.Errorf("called %v, strings %q", called, strs)
	}
	// The klp structs in the image are relocated too: objs->funcs->new_func.
	read64 := func(va uint64) uint64 { return le.Uint64(im.Bytes[va-im.Base:]) }
	objs := read64(im.PatchAddr + klpPatchObjs)
	if objs != im.Objects[0].Addr {
		t.Errorf("klp_patch.objs %#x, object at %#x", objs, im.Objects[0].Addr)
	}
	funcs := read64(objs + klpObjectFuncs)
	if read64(funcs+klpFuncNewFunc) != f.NewAddr || cstrAt(im, read64(funcs+klpFuncOldName)) != "cmdline_proc_show" {
		t.Error("klp_func in the image is not relocated")
	}
	if len(im.FentrySites) != 1 || im.FentrySites[0].Addr != f.NewAddr || im.FentrySites[0].Func != "livepatch_cmdline_proc_show" {
		t.Errorf("patch's own sites %+v", im.FentrySites)
	}
	// Deterministic, and base-relative.
	im2, _ := p.Layout(patchBase, k)
	if !bytes.Equal(im.Bytes, im2.Bytes) {
		t.Error("two layouts differ")
	}
	im3, err := p.Layout(patchBase+0x10000, k)
	if err != nil || im3.Objects[0].Funcs[0].NewAddr != f.NewAddr+0x10000 {
		t.Errorf("layout at another base: %v", err)
	}
}

// Every accepted relocation type, against the patch and the kernel, checked
// by recomputing each value from the plan and the image.
func TestLayoutAllRelocTypes(t *testing.T) {
	k := fixtureKernel(t)
	p, err := ParsePatchFile(testPatchesDir + "/allrelocs.o")
	if err != nil {
		t.Fatal(err)
	}
	im, err := p.Layout(patchBase, k)
	if err != nil {
		t.Fatal(err)
	}
	types := map[string]bool{}
	sources := map[string]bool{}
	for _, r := range im.Relocs {
		types[r.TypeName+"/"+r.Source] = true
		sources[r.Source] = true
		var want uint64
		switch r.Type {
		case R_X86_64_64, R_X86_64_32, R_X86_64_32S:
			want = r.Target + uint64(r.Addend)
		case R_X86_64_PC32, R_X86_64_PLT32:
			want = r.Target + uint64(r.Addend) - r.Place
		}
		var got uint64
		if r.Width == 8 {
			got = le.Uint64(im.Bytes[r.Place-im.Base:])
		} else {
			got = uint64(le.Uint32(im.Bytes[r.Place-im.Base:]))
			want &= 0xffffffff
		}
		if got != want || got != r.Value {
			t.Errorf("%+v: image holds %#x, want %#x", r, got, want)
		}
		switch r.Source {
		case SourceKernel:
			if s, err := k.LookupGlobal(r.Symbol); err != nil || s.Value != r.Target {
				t.Errorf("%s: target %#x, kernel has %#x (%v)", r.Symbol, r.Target, s.Value, err)
			}
		case SourceKlpSym:
			if s := mustLookup(t, k, "klp_dup_fn", 1); r.Target != s.Value || r.Symbol != ".klp.sym.vmlinux.klp_dup_fn,1" {
				t.Errorf("klp.sym %+v, want target %#x", r, s.Value)
			}
		case SourcePatch:
			if r.Target < im.Base || r.Target >= im.Base+im.Size() {
				t.Errorf("patch symbol outside the image: %+v", r)
			}
		}
	}
	for _, want := range []string{"R_X86_64_64/patch", "R_X86_64_64/kernel", "R_X86_64_PC32/patch", "R_X86_64_PC32/kernel",
		"R_X86_64_PLT32/kernel", "R_X86_64_PLT32/klp.sym", "R_X86_64_32S/patch", "R_X86_64_32S/kernel", "R_X86_64_32/kernel"} {
		if !types[want] {
			t.Errorf("no %s relocation in the plan (have %v)", want, types)
		}
	}
	if abs := mustLookup(t, k, "fixture_abs_small", 0); abs.Value != 0x1234 {
		t.Fatal("fixture_abs_small")
	}
	// sympos 1 given for a unique name resolves like 0.
	if f := im.Objects[0].Funcs[1]; f.OldName != "klp_pair_b" || f.OldSympos != 1 || f.OldAddr != mustLookup(t, k, "klp_pair_b", 0).Value {
		t.Errorf("klp_pair_b,1: %+v", f)
	}
}

func TestLayoutSympos(t *testing.T) {
	k := fixtureKernel(t)
	im, err := loadSample(t, "livepatch-sympos").Layout(patchBase, k)
	if err != nil {
		t.Fatal(err)
	}
	dup2 := mustLookup(t, k, "klp_dup_fn", 2)
	f := im.Objects[0].Funcs[0]
	if f.OldAddr != dup2.Value || f.OldSympos != 2 {
		t.Errorf("func %+v, want old %#x", f, dup2.Value)
	}
	// The new function calls the original body past its fentry NOP through
	// .klp.sym.vmlinux.klp_dup_fn,2 (+5).
	found := false
	for _, r := range im.Relocs {
		if r.Source == SourceKlpSym {
			found = r.Target == dup2.Value && r.Addend == KLPFentrySkip && r.Value == (dup2.Value+5)&0xffffffff
		}
	}
	if !found {
		t.Errorf("no .klp.sym relocation to klp_dup_fn,2+5 in %+v", im.Relocs)
	}
}

// KLPFentrySkip mirrors livepatch.h's KLP_FENTRY_SIZE.
const KLPFentrySkip = 5

func TestLayoutCallbacksAndReplace(t *testing.T) {
	k := fixtureKernel(t)
	p := loadSample(t, "livepatch-callbacks")
	im, err := p.Layout(patchBase, k)
	if err != nil {
		t.Fatal(err)
	}
	o := im.Objects[0]
	for i, name := range []string{"pre_patch_callback", "post_patch_callback", "pre_unpatch_callback", "post_unpatch_callback"} {
		if a, ok := im.SymbolAddr(name); !ok || o.Callbacks[i] != a {
			t.Errorf("%s: %#x, symbol at %#x", CallbackNames[i], o.Callbacks[i], a)
		}
		// And the klp_object in the image points at them.
		if got := le.Uint64(im.Bytes[o.Addr+klpObjectCallbacks+uint64(i)*8-im.Base:]); got != o.Callbacks[i] {
			t.Errorf("image callbacks[%d] = %#x", i, got)
		}
	}
	if a, ok := im.SymbolAddr("klp_callbacks_counts"); !ok || a < im.Base || a+32 > im.Base+im.Size() {
		t.Errorf("klp_callbacks_counts at %#x", a)
	}
	if len(im.FentrySites) != 5 {
		t.Errorf("%d own fentry sites, want 5", len(im.FentrySites))
	}
	if !loadSample(t, "livepatch-replace").Replace {
		t.Error("replace flag lost")
	}
}

func TestLayoutBench1024(t *testing.T) {
	k := fixtureKernel(t)
	im, err := loadSample(t, "livepatch-bench").Layout(patchBase, k)
	if err != nil {
		t.Fatal(err)
	}
	seenNew := map[uint64]bool{}
	for i, f := range im.Objects[0].Funcs {
		want := mustLookup(t, k, f.OldName, 0)
		if f.OldName != "bench_fn_"+strings.Repeat("0", 4-len(itoa(uint64(i))))+itoa(uint64(i)) || f.OldAddr != want.Value {
			t.Fatalf("func %d: %+v", i, f)
		}
		if seenNew[f.NewAddr] {
			t.Fatalf("new_func %#x twice", f.NewAddr)
		}
		seenNew[f.NewAddr] = true
	}
	if len(im.FentrySites) != 1024 {
		t.Errorf("%d own fentry sites", len(im.FentrySites))
	}
}

func TestPatchErrors(t *testing.T) {
	k := fixtureKernel(t)
	cases := []struct {
		path    string
		kind    error
		parse   bool // fails in ParsePatch (else in Layout)
		section string
		symbol  string
		detail  string
	}{
		{samplePath("bad-unknown-reloc"), ErrUnknownReloc, false, ".text.bad_got_fn", "seq_printf", "R_X86_64_REX_GOTPCRELX"},
		{samplePath("bad-unresolved"), ErrUnresolved, false, ".text.bad_cmdline_proc_show", "klp_no_such_symbol", "no symbol"},
		{samplePath("bad-oldname"), ErrUnresolved, false, ".data.funcs", "klp_no_such_function", "no symbol"},
		{samplePath("bad-duplicate"), ErrDuplicate, true, ".data.funcs", "cmdline_proc_show", "twice"},
		{samplePath("bad-notpatchable"), ErrNotPatchable, false, ".data.funcs", "klp_guest_abi", "not a function"},
		{samplePath("bad-ambiguous"), ErrAmbiguous, false, ".data.funcs", "klp_dup_fn", "give sympos 1..2"},
		{samplePath("bad-sympos"), ErrUnresolved, false, ".data.funcs", "klp_dup_fn", "only 2 exist"},
		{testPatchesDir + "/range32.o", ErrRange, false, ".text.range_fn", ".text.range_fn", "zero-extend"},
		{testPatchesDir + "/comdat.o", ErrFormat, true, ".group", "", "COMDAT"},
		{testPatchesDir + "/module-obj.o", ErrUnresolved, false, ".text.new_mod_fn", ".klp.sym.fixture_mod.mod_fn,0", "no modules"},
		{testPatchesDir + "/clone-target.o", ErrNotPatchable, false, ".data.funcs", "sum_count.isra.0", ".isra clone"},
	}
	for _, c := range cases {
		p, err := ParsePatchFile(c.path)
		if err == nil {
			if c.parse {
				t.Errorf("%s: parsed", c.path)
				continue
			}
			_, err = p.Layout(patchBase, k)
		} else if !c.parse {
			t.Errorf("%s: parse: %v", c.path, err)
			continue
		}
		var e *Error
		if !errors.Is(err, c.kind) || !errors.As(err, &e) {
			t.Errorf("%s: %v, want %v", c.path, err, c.kind)
			continue
		}
		if e.Section != c.section || e.Symbol != c.symbol || !strings.Contains(err.Error(), c.detail) {
			t.Errorf("%s: %q (section %q symbol %q), want section %q symbol %q detail %q",
				c.path, err, e.Section, e.Symbol, c.section, c.symbol, c.detail)
		}
	}
	// Check keeps going: clone-target has three unpatchable targets.
	p, _ := ParsePatchFile(testPatchesDir + "/clone-target.o")
	if _, errs := p.Check(patchBase, k); len(errs) != 3 {
		t.Errorf("clone-target: %d problems, want 3: %v", len(errs), errs)
	}
}

func TestLayoutRangeAndBase(t *testing.T) {
	k := fixtureKernel(t)
	p := loadSample(t, "livepatch-sample")
	// A base more than 2 GiB away from the kernel: the call cannot reach.
	_, err := p.Layout(0xffff800000000000, k)
	if !errors.Is(err, ErrRange) {
		t.Errorf("far base: %v", err)
	}
	if _, err := p.Layout(patchBase+1, k); !errors.Is(err, ErrRange) || !strings.Contains(err.Error(), "aligned") {
		t.Errorf("misaligned base: %v", err)
	}
	if _, err := p.Layout(0xffffffffffffff00, k); !errors.Is(err, ErrRange) || !strings.Contains(err.Error(), "wraps") {
		t.Errorf("wrapping base: %v", err)
	}
	// Without a kernel, Layout refuses kernel symbols; Check plans around them.
	if _, err := p.Layout(patchBase, nil); !errors.Is(err, ErrUnresolved) {
		t.Errorf("nil kernel: %v", err)
	}
	im, errs := p.Check(patchBase, nil)
	if len(errs) != 0 || im == nil {
		t.Fatalf("Check without kernel: %v", errs)
	}
	unresolved := 0
	for _, r := range im.Relocs {
		if !r.Resolved {
			unresolved++
		}
	}
	if unresolved != 1 {
		t.Errorf("%d unresolved relocations, want 1 (seq_printf)", unresolved)
	}
}

func TestParseKlpSym(t *testing.T) {
	cases := []struct {
		in        string
		obj, name string
		pos       int
		ok, bad   bool
	}{
		{".klp.sym.vmlinux.klp_dup_fn,2", "vmlinux", "klp_dup_fn", 2, true, false},
		{".klp.sym.mod.a.b.c,0", "mod", "a.b.c", 0, true, false},
		{"plain", "", "", 0, false, false},
		{".klp.sym.vmlinux.x", "", "", 0, false, true},
		{".klp.sym.vmlinux.x,", "", "", 0, false, true},
		{".klp.sym.vmlinux.x,-1", "", "", 0, false, true},
		{".klp.sym..x,1", "", "", 0, false, true},
		{".klp.sym.vmlinux.x,99999999999", "", "", 0, false, true},
	}
	for _, c := range cases {
		obj, name, pos, ok, err := parseKlpSym(c.in)
		if obj != c.obj || name != c.name || pos != c.pos || ok != c.ok || (err != nil) != c.bad {
			t.Errorf("%q: %q %q %d %v %v", c.in, obj, name, pos, ok, err)
		}
		if c.bad && !errors.Is(err, ErrFormat) {
			t.Errorf("%q: %v", c.in, err)
		}
	}
}

// sympos 0 and 1 of a unique name are one function: the parser cannot see
// it, the layout does.
func TestLayoutDuplicateByAddress(t *testing.T) {
	data := readFile(t, samplePath("bad-duplicate"))
	p0, err := ParsePatch(data)
	if !errors.Is(err, ErrDuplicate) || p0 != nil {
		t.Fatalf("bad-duplicate parsed: %v", err)
	}
	e := &elfEdit{t, bytes.Clone(data)}
	le.PutUint64(e.sectionBytes(".data.funcs")[klpFuncSize+klpFuncOldSympos:], 1)
	p, err := ParsePatch(e.data)
	if err != nil {
		t.Fatal(err)
	}
	_, err = p.Layout(patchBase, fixtureKernel(t))
	wantError(t, "sympos 0 and 1", err, ErrDuplicate, "cmdline_proc_show,0 and cmdline_proc_show,1 are the same function")
}

func TestImageAddr2Sym(t *testing.T) {
	im, err := loadSample(t, "livepatch-pair").Layout(patchBase, fixtureKernel(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range im.Objects[0].Funcs {
		name, off, ok := im.Addr2Sym(f.NewAddr + 3)
		if !ok || name != f.NewName || off != 3 {
			t.Errorf("Addr2Sym(%s+3) = %s+%d %v", f.NewName, name, off, ok)
		}
	}
	if _, _, ok := im.Addr2Sym(im.Base + im.Size() + 100); ok {
		t.Error("address past the image resolved")
	}
	if _, _, ok := im.Addr2Sym(im.Base - 1); ok {
		t.Error("address before the image resolved")
	}
}

// Linux's klp-convert form: the .klp.sym symbol in SHN_LIVEPATCH and its
// relocations flagged SHF_RELA_LIVEPATCH resolve like the plain form.
func TestLayoutLivepatchSectionIndex(t *testing.T) {
	e := &elfEdit{t, bytes.Clone(readFile(t, samplePath("livepatch-sympos")))}
	p0, err := ParsePatch(e.data)
	if err != nil {
		t.Fatal(err)
	}
	var idx = -1
	for _, s := range p0.Symbols() {
		if strings.HasPrefix(s.Name, ".klp.sym.") {
			idx = s.Index
		}
	}
	if idx < 0 {
		t.Fatal("no .klp.sym symbol")
	}
	symoff := int(le.Uint64(e.data[e.field(e.section(".symtab"), shOffset):])) + idx*symSize
	e.put16(symoff+6, shnLivepatch)
	at := e.field(e.section(".rela.text.livepatch_klp_dup_fn"), 8)
	e.put64(at, le.Uint64(e.data[at:])|SHF_RELA_LIVEPATCH)
	p, err := ParsePatch(e.data)
	if err != nil {
		t.Fatal(err)
	}
	k := fixtureKernel(t)
	im, err := p.Layout(patchBase, k)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := loadSample(t, "livepatch-sympos").Layout(patchBase, k)
	if !bytes.Equal(im.Bytes, want.Bytes) {
		t.Error("SHN_LIVEPATCH form laid out differently")
	}
}

func TestIsObjectFile(t *testing.T) {
	if !IsObjectFile(readFile(t, samplePath("livepatch-sample"))) {
		t.Error("patch not recognised")
	}
	if IsObjectFile(readFile(t, fixtureKernelPath)) || IsObjectFile([]byte("\x7fELF")) || IsObjectFile(nil) {
		t.Error("non-object recognised")
	}
}

// relaAddend points the relocation of section relSec at offset off to a
// new addend (to retarget a pointer of a real object).
func (e *elfEdit) relaAddend(relSec string, off uint64, addend int64) {
	b := e.sectionBytes(relSec)
	for i := 0; i+relaSize <= len(b); i += relaSize {
		if le.Uint64(b[i:]) == off {
			le.PutUint64(b[i+16:], uint64(addend))
			return
		}
	}
	e.t.Fatalf("%s: no relocation at %#x", relSec, off)
}

// An object whose funcs[] is empty (just the terminator) is a patch of
// callbacks (and states) only, as Linux allows: test_klp_state's
// no_funcs.
func TestEmptyFuncs(t *testing.T) {
	e := newEdit(t, samplePath("livepatch-callbacks"))
	// klp_object.funcs -> funcs + sizeof(struct klp_func): the terminator.
	e.relaAddend(".rela.data.objs", klpObjectFuncs, klpFuncSize)
	p, err := ParsePatch(e.data)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Objects) != 1 || len(p.Objects[0].Funcs) != 0 || p.Objects[0].Callbacks.PrePatch == nil {
		t.Fatalf("objects %+v", p.Objects)
	}
	im, err := p.Layout(patchBase, fixtureKernel(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Objects) != 1 || len(im.Objects[0].Funcs) != 0 || im.Objects[0].Callbacks[0] == 0 {
		t.Fatalf("image objects %+v", im.Objects)
	}
	// funcs itself must still be a pointer into the patch (Linux:
	// -EINVAL without it).
	e = newEdit(t, samplePath("livepatch-callbacks"))
	b := e.sectionBytes(".rela.data.objs")
	for i := 0; i+relaSize <= len(b); i += relaSize {
		if le.Uint64(b[i:]) == klpObjectFuncs {
			le.PutUint64(b[i+8:], le.Uint64(b[i+8:])&^0xffffffff) // R_X86_64_NONE
		}
	}
	_, err = ParsePatch(e.data)
	wantError(t, "funcs not a pointer", err, ErrFormat, "klp_object.funcs")
}

// klp_patch.states (KLP_PATCH_ABI 2): ids, versions and the data pointers,
// relocated into the image like every pointer (testdata/patches/states.c).
func TestParseStates(t *testing.T) {
	k := fixtureKernel(t)
	p, err := ParsePatchFile(testPatchesDir + "/states.o")
	if err != nil {
		t.Fatal(err)
	}
	if p.ABI != PatchABI2 || !p.Replace || p.StatesLoc == nil || len(p.Funcs()) != 0 {
		t.Fatalf("abi %d replace %v states at %v, %d funcs", p.ABI, p.Replace, p.StatesLoc, len(p.Funcs()))
	}
	if len(p.States) != 2 || p.States[0].ID != 7 || p.States[0].Version != 3 || p.States[1].ID != 1<<40|1 || p.States[1].Version != 1 {
		t.Fatalf("states %+v", p.States)
	}
	if d := p.States[0].Data; d == nil || d.SectionName != ".bss.saved" || d.String() != "saved" {
		t.Errorf("state 7 data %+v, want the patch's saved", d)
	}
	if d := p.States[1].Data; d == nil || d.Section != -1 || d.Symbol != "sink" {
		t.Errorf("state 1<<40|1 data %+v, want the kernel's sink", d)
	}
	im, err := p.Layout(patchBase, k)
	if err != nil {
		t.Fatal(err)
	}
	saved, ok := im.SymbolAddr("saved")
	sink := mustLookup(t, k, "sink", 0).Value
	if !ok || len(im.States) != 2 || im.StatesAddr != im.States[0].Addr || im.States[1].Addr != im.StatesAddr+klpStateSize {
		t.Fatalf("image states at %#x: %+v (saved at %#x)", im.StatesAddr, im.States, saved)
	}
	u64 := func(va uint64) uint64 { return le.Uint64(im.Bytes[va-im.Base:]) }
	if got := u64(im.PatchAddr + klpPatchStates); got != im.StatesAddr {
		t.Errorf("klp_patch.states in the image = %#x, want %#x", got, im.StatesAddr)
	}
	if got := u64(im.States[0].Addr + klpStateData); got != saved {
		t.Errorf("state 7 data in the image = %#x, want saved at %#x", got, saved)
	}
	if got := u64(im.States[1].Addr + klpStateData); got != sink {
		t.Errorf("state 1<<40|1 data in the image = %#x, want sink at %#x", got, sink)
	}
	if got := u64(im.States[1].Addr + klpStateSize + klpStateID); got != 0 {
		t.Errorf("terminator id %#x", got)
	}
	// The report shows them.
	r := NewPatchReport(p, k, patchBase)
	var b strings.Builder
	r.WriteText(&b)
	if r.ABI != PatchABI2 || len(r.States) != 2 || !strings.Contains(b.String(), "state 7 version 3 (klp_state at ") ||
		!strings.Contains(b.String(), "data = sink+0") {
		t.Errorf("report %+v:\n%s", r.States, b.String())
	}
}

// An object of the first layout (before klp_state) still loads: its
// klp_patch is 24 bytes with replace at 16, and it has no states
// (testdata/patches/abi1.c).
func TestParseABI1(t *testing.T) {
	p, err := ParsePatchFile(testPatchesDir + "/abi1.o")
	if err != nil {
		t.Fatal(err)
	}
	if p.ABI != PatchABI1 || !p.Replace || p.States != nil || p.StatesLoc != nil || p.Name != "abi1" {
		t.Fatalf("abi %d replace %v states %v name %q", p.ABI, p.Replace, p.States, p.Name)
	}
	if fs := p.Funcs(); len(fs) != 1 || fs[0].OldName != "klp_park_fn" || p.Objects[0].Callbacks.PrePatch == nil {
		t.Fatalf("objects %+v", p.Objects)
	}
	im, err := p.Layout(patchBase, fixtureKernel(t))
	if err != nil {
		t.Fatal(err)
	}
	if im.StatesAddr != 0 || im.States != nil {
		t.Errorf("image states %#x %v", im.StatesAddr, im.States)
	}
	var b strings.Builder
	NewPatchReport(p, fixtureKernel(t), patchBase).WriteText(&b)
	if !strings.Contains(b.String(), "states: none (struct klp_patch of layout 1, from before klp_state)") {
		t.Errorf("report:\n%s", b.String())
	}
	// Every sample is built with this livepatch.h: layout 2.
	for _, name := range []string{"livepatch-sample", "livepatch-replace", "livepatch-callbacks", "livepatch-bench"} {
		if p := loadSample(t, name); p.ABI != PatchABI2 || p.States != nil {
			t.Errorf("%s: layout %d, states %v", name, p.ABI, p.States)
		}
	}
}
