package linuxpatch

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/arch/x86/x86asm"

	"klp-kvm/linuxkernel"
)

func parseSample(t testing.TB) *Module {
	t.Helper()
	m, err := Parse(readKo(t, sampleKo), testSpec(t))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// readImage reads n bytes at guest address addr from the image's regions.
func readImage(t testing.TB, im *Image, addr uint64, n int) []byte {
	t.Helper()
	for _, r := range im.Regions {
		if addr >= r.Addr && addr-r.Addr+uint64(n) <= uint64(len(r.Bytes)) {
			return r.Bytes[addr-r.Addr : addr-r.Addr+uint64(n)]
		}
	}
	t.Fatalf("%#x+%d is in no region", addr, n)
	return nil
}

func cString(t testing.TB, im *Image, addr uint64) string {
	t.Helper()
	for _, r := range im.Regions {
		if addr >= r.Addr && addr-r.Addr < uint64(len(r.Bytes)) {
			b := r.Bytes[addr-r.Addr:]
			if i := bytes.IndexByte(b, 0); i >= 0 {
				return string(b[:i])
			}
		}
	}
	t.Fatalf("no string at %#x", addr)
	return ""
}

func TestSampleModule(t *testing.T) {
	m := parseSample(t)
	if m.Name != "livepatch_sample" || m.Release() != "6.1.0-57-amd64" || m.Replace || m.OwnBTF {
		t.Errorf("name %q release %q replace %v ownBTF %v", m.Name, m.Release(), m.Replace, m.OwnBTF)
	}
	if len(m.Objects) != 1 || m.Objects[0].Name != VmlinuxObject || len(m.Objects[0].Funcs) != 1 {
		t.Fatalf("objects %+v", m.Objects)
	}
	f := m.Objects[0].Funcs[0]
	if f.OldName != "cmdline_proc_show" || f.OldSympos != 0 || f.NewFunc.Symbol != "livepatch_cmdline_proc_show" {
		t.Errorf("func %+v", f)
	}
	if m.Patch.Symbol != "patch" || m.Patch.SectionName != ".data" {
		t.Errorf("klp_patch found at %v", m.Patch)
	}
	if len(m.FentrySites()) != 3 {
		t.Errorf("fentry sites %v, want cleanup_module, init_module, livepatch_cmdline_proc_show", m.FentrySites())
	}
}

func TestSampleLink(t *testing.T) {
	m := parseSample(t)
	var calls []call
	im, err := m.Link(Config{Base: testBase, Resolve: mapResolver(kernelSyms, &calls), KernelRelease: "6.1.0-57-amd64"})
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Funcs) != 1 {
		t.Fatalf("funcs %+v", im.Funcs)
	}
	pf := im.Funcs[0]
	if pf.Object != VmlinuxObject || pf.OldName != "cmdline_proc_show" || pf.NewName != "livepatch_cmdline_proc_show" {
		t.Errorf("func %+v", pf)
	}
	// The regions: code at the base, then read-only data, then data, each
	// on its own page, with the protections a module loader would give.
	wantProt := []Prot{ProtExec, ProtRead, ProtWrite}
	if len(im.Regions) != 3 {
		t.Fatalf("regions %+v", im.Regions)
	}
	for i, r := range im.Regions {
		if r.Prot != wantProt[i] || r.Addr%PageSize != 0 || (i == 0 && r.Addr != testBase) {
			t.Errorf("region %d: %v at %#x", i, r.Prot, r.Addr)
		}
	}
	if !(pf.NewAddr >= im.Regions[0].Addr && pf.NewAddr < im.Regions[0].Addr+im.Regions[0].Size) {
		t.Errorf("new function %#x is not in the code region", pf.NewAddr)
	}
	if m.Size() != 3*PageSize {
		t.Errorf("size %#x", m.Size())
	}

	// The new function, decoded: a NOP where the fentry call was, the two
	// string arguments, the call to seq_printf and the return thunk.
	code := readImage(t, im, pf.NewAddr, 0x1f)
	if !bytes.Equal(code[:5], nop5[:]) {
		t.Errorf("fentry site holds % x, want a 5-byte NOP", code[:5])
	}
	var ops []string
	var movs []uint64
	var callTarget, jmpTarget uint64
	pc := pf.NewAddr
	for off := 0; off < len(code); {
		inst, err := x86asm.Decode(code[off:], 64)
		if err != nil {
			t.Fatalf("decode at +%#x: %v", off, err)
		}
		next := pc + uint64(inst.Len)
		ops = append(ops, inst.Op.String())
		switch inst.Op {
		case x86asm.MOV:
			if imm, ok := inst.Args[1].(x86asm.Imm); ok {
				movs = append(movs, uint64(int64(imm)))
			}
		case x86asm.CALL:
			callTarget = next + uint64(int64(inst.Args[0].(x86asm.Rel)))
		case x86asm.JMP:
			jmpTarget = next + uint64(int64(inst.Args[0].(x86asm.Rel)))
		}
		off += inst.Len
		pc = next
	}
	if strings.Join(ops, " ") != "NOP MOV MOV CALL XOR JMP" {
		t.Errorf("instructions %v", ops)
	}
	if callTarget != kernelSyms["seq_printf"] {
		t.Errorf("call rel32 lands at %#x, want seq_printf %#x", callTarget, kernelSyms["seq_printf"])
	}
	if jmpTarget != kernelSyms["__x86_return_thunk"] {
		t.Errorf("jmp lands at %#x, want __x86_return_thunk", jmpTarget)
	}
	if len(movs) != 2 {
		t.Fatalf("movs %x", movs)
	}
	// seq_printf(m, "%s\n", "this has been live patched"): rdx then rsi.
	if s := cString(t, im, movs[0]); s != "this has been live patched" {
		t.Errorf("rdx points at %q", s)
	}
	if s := cString(t, im, movs[1]); s != "%s\n" {
		t.Errorf("rsi points at %q", s)
	}
	if movs[0] < im.Regions[1].Addr || movs[0] >= im.Regions[1].Addr+im.Regions[1].Size {
		t.Errorf("the string %#x is not in the read-only region", movs[0])
	}

	// Every fentry call is a NOP now, and none was resolved.
	if len(im.FentrySites) != 3 {
		t.Errorf("fentry sites %x", im.FentrySites)
	}
	for _, s := range im.FentrySites {
		if b := readImage(t, im, s, 5); !bytes.Equal(b, nop5[:]) {
			t.Errorf("site %#x holds % x", s, b)
		}
	}
	for _, c := range calls {
		if c.name == "__fentry__" {
			t.Errorf("__fentry__ was resolved")
		}
		if c.obj != VmlinuxObject || c.pos != 0 {
			t.Errorf("plain symbol resolved as %+v", c)
		}
	}

	// klp_patch.mod points at the zeroed struct module, objs at objs[0].
	patch := readImage(t, im, im.PatchAddr, 16)
	if le.Uint64(patch) != im.ThisModule || le.Uint64(patch[8:]) != im.Objects[0].Addr {
		t.Errorf("klp_patch {mod %#x, objs %#x}, want {%#x, %#x}", le.Uint64(patch), le.Uint64(patch[8:]), im.ThisModule, im.Objects[0].Addr)
	}
	if tm := readImage(t, im, im.ThisModule, 0x380); !bytes.Equal(tm, make([]byte, 0x380)) {
		t.Error("the struct module area is not zero")
	}
	// objs[0].funcs -> funcs[0]: its old_name and new_func as relocated.
	fn := readImage(t, im, le.Uint64(readImage(t, im, im.Objects[0].Addr+8, 8)), 16)
	if cString(t, im, le.Uint64(fn)) != "cmdline_proc_show" || le.Uint64(fn[8:]) != pf.NewAddr {
		t.Errorf("funcs[0] = {%#x, %#x}", le.Uint64(fn), le.Uint64(fn[8:]))
	}
	if im.ORC.Entries != 6 || im.ORC.UnwindIP == 0 || im.ORC.Unwind == 0 {
		t.Errorf("orc %+v", im.ORC)
	}
	skipped := map[string]bool{}
	for _, s := range im.Skipped {
		skipped[s.Name] = true
	}
	for _, n := range []string{".modinfo", "__versions", "__mcount_loc", ".return_sites", ".init.data", ".exit.data", ".note.Linux"} {
		if !skipped[n] {
			t.Errorf("%s not reported as skipped (%v)", n, im.Skipped)
		}
	}
	rep := im.Report()
	for _, want := range []string{"livepatch_sample", "cmdline_proc_show,0 -> livepatch_cmdline_proc_show", "r-x", "vermagic 6.1.0-57-amd64", "__mcount_loc"} {
		if !strings.Contains(rep, want) {
			t.Errorf("report lacks %q:\n%s", want, rep)
		}
	}
	t.Log("\n" + rep)
}

func TestAllocator(t *testing.T) {
	m := parseSample(t)
	next := map[Prot]uint64{ProtExec: 0xffffffffc0000000, ProtRead: 0xffffffffc1000000, ProtWrite: 0xffffffffc2000000}
	var asked []Prot
	im, err := m.Link(Config{Resolve: mapResolver(kernelSyms, nil), Alloc: func(p Prot, size uint64) (uint64, error) {
		asked = append(asked, p)
		if size == 0 || size > PageSize {
			t.Errorf("%v: %d bytes", p, size)
		}
		return next[p], nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range im.Regions {
		if r.Addr != next[r.Prot] {
			t.Errorf("%v region at %#x", r.Prot, r.Addr)
		}
	}
	if len(asked) != 3 {
		t.Errorf("allocator asked for %v", asked)
	}
	_, err = m.Link(Config{Resolve: mapResolver(kernelSyms, nil), Alloc: func(Prot, uint64) (uint64, error) { return 0xffffffffc0000010, nil }})
	if !errors.Is(err, ErrRange) {
		t.Errorf("unaligned allocation: %v", err)
	}
	_, err = m.Link(Config{Resolve: mapResolver(kernelSyms, nil), Alloc: func(Prot, uint64) (uint64, error) { return 0, errors.New("full") }})
	if !errors.Is(err, ErrRange) || !strings.Contains(err.Error(), "full") {
		t.Errorf("allocator failure: %v", err)
	}
	if _, err := m.Link(Config{Base: testBase + 8, Resolve: mapResolver(kernelSyms, nil)}); !errors.Is(err, ErrRange) {
		t.Errorf("unaligned base: %v", err)
	}
}

func TestVermagic(t *testing.T) {
	m := parseSample(t)
	for _, ok := range []string{"", "6.1.0-57-amd64", "Linux version 6.1.0-57-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0) #1 SMP PREEMPT_DYNAMIC Debian 6.1.158-1"} {
		if err := m.CheckRelease(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	_, err := m.Link(Config{Base: testBase, Resolve: mapResolver(kernelSyms, nil), KernelRelease: "6.1.0-58-amd64"})
	var e *Error
	if !errors.Is(err, ErrVersion) || !errors.As(err, &e) || e.Symbol != "vermagic" || !errors.Is(err, syscall.ENOEXEC) {
		t.Errorf("other release: %v", err)
	}
}

// linkErr links with resolver r and returns the *Error it must fail with.
func linkErr(t *testing.T, data []byte, r Resolver, base uint64) *Error {
	t.Helper()
	m, err := Parse(data, testSpec(t))
	if err == nil {
		_, err = m.Link(Config{Base: base, Resolve: r})
	}
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("want an *Error, got %v", err)
	}
	return e
}

func TestUnknownSymbol(t *testing.T) {
	syms := map[string]uint64{}
	for k, v := range kernelSyms {
		if k != "seq_printf" {
			syms[k] = v
		}
	}
	e := linkErr(t, readKo(t, sampleKo), mapResolver(syms, nil), testBase)
	if !errors.Is(e, ErrSymbol) || !errors.Is(e, ErrNotFound) || e.Section != ".text" || e.Offset != 0x44 || e.Symbol != "seq_printf" {
		t.Errorf("%v (section %q offset %#x symbol %q)", e, e.Section, e.Offset, e.Symbol)
	}
}

func TestAmbiguousSymbol(t *testing.T) {
	var list []linuxkernel.Symbol
	for k, v := range kernelSyms {
		list = append(list, linuxkernel.Symbol{Name: k, Addr: v, Type: 'T'})
	}
	resolve := VmlinuxResolver(linuxkernel.NewSymbols(list))
	m := parseSample(t)
	if _, err := m.Link(Config{Base: testBase, Resolve: resolve}); err != nil {
		t.Fatalf("unique symbols: %v", err)
	}
	// A second, static seq_printf elsewhere in the kernel.
	list = append(list, linuxkernel.Symbol{Name: "seq_printf", Addr: 0xffffffff81999990, Type: 't'})
	e := linkErr(t, readKo(t, sampleKo), VmlinuxResolver(linuxkernel.NewSymbols(list)), testBase)
	if !errors.Is(e, ErrSymbol) || errors.Is(e, ErrNotFound) || e.Symbol != "seq_printf" || !strings.Contains(e.Error(), "ambiguity") {
		t.Errorf("ambiguous: %v", e)
	}
}

func TestPC32Overflow(t *testing.T) {
	// The module 3 GiB below seq_printf: the call's rel32 cannot reach.
	e := linkErr(t, readKo(t, sampleKo), mapResolver(kernelSyms, nil), (0xffffffff81345670-3<<30)&^(PageSize-1))
	if !errors.Is(e, ErrRange) || e.Section != ".text" || e.Symbol == "" {
		t.Errorf("%v", e)
	}
	if !strings.Contains(e.Error(), "2 GiB") {
		t.Errorf("message: %v", e)
	}
}

func TestUnknownRelocationType(t *testing.T) {
	// seq_printf's PLT32 made R_X86_64_GOTPCREL (9): not in Linux's loader.
	data := setRelocType(t, readKo(t, sampleKo), ".text", 0x44, 9)
	e := linkErr(t, data, mapResolver(kernelSyms, nil), testBase)
	if !errors.Is(e, ErrUnsupported) || e.Section != ".text" || e.Offset != 0x44 || e.Symbol != "seq_printf" || !strings.Contains(e.Error(), "R_X86_64_GOTPCREL") {
		t.Errorf("%v", e)
	}
	// R_X86_64_32 of a kernel address does not zero-extend.
	data = setRelocType(t, readKo(t, sampleKo), ".text", 0x38, 10)
	e = linkErr(t, data, mapResolver(kernelSyms, nil), testBase)
	if !errors.Is(e, ErrRange) || e.Offset != 0x38 {
		t.Errorf("R_X86_64_32: %v", e)
	}
}

func TestRefusedSections(t *testing.T) {
	for _, name := range []string{"__ex_table", "__jump_table", "__bug_table", ".altinstructions", ".init_array", "__weird_table"} {
		data := renameSection(t, readKo(t, sampleKo), ".return_sites", name)
		_, err := Parse(data, testSpec(t))
		var e *Error
		if !errors.As(err, &e) || !errors.Is(err, ErrUnsupported) || e.Section != name {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestTruncated(t *testing.T) {
	data := readKo(t, sampleKo)
	spec := testSpec(t)
	for _, n := range []int{0, 10, 64, 0x100, 0x1000, len(data) / 2, len(data) - 1} {
		_, err := Parse(data[:n], spec)
		if !errors.Is(err, ErrFormat) {
			t.Errorf("%d bytes: %v", n, err)
		}
	}
}

func TestNotALivepatchModule(t *testing.T) {
	data := readKo(t, sampleKo)
	// livepatch=Y -> livepatch=N in .modinfo.
	i := bytes.Index(data, []byte("livepatch=Y\x00"))
	if i < 0 {
		t.Fatal("no livepatch=Y")
	}
	bad := append([]byte{}, data...)
	bad[i+len("livepatch=")] = 'N'
	if _, err := Parse(bad, testSpec(t)); !errors.Is(err, ErrFormat) || !errors.Is(err, syscall.EINVAL) {
		t.Errorf("livepatch=N: %v", err)
	}
	// THIS_MODULE no longer at klp_patch.mod: no klp_patch.
	o := mustObj(t, data)
	bad = setRelocType(t, data, ".data", 0, 0)
	_ = o
	if _, err := Parse(bad, testSpec(t)); !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), "klp_patch") {
		t.Errorf("no THIS_MODULE: %v", err)
	}
}

func TestStrippedModule(t *testing.T) {
	// Without debug sections (objcopy --strip-debug, as the fuzz seeds):
	// the same image.
	for _, path := range []string{"testdata/fuzz/FuzzModule/livepatch-sample-stripped", "testdata/fuzz/FuzzModule/klp-static-stripped"} {
		data := fuzzSeed(t, path)
		m, err := Parse(data, testSpec(t))
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if _, err := m.Link(Config{Base: testBase, Resolve: mapResolver(kernelSyms, nil)}); err != nil {
			t.Errorf("%s: %v", path, err)
		}
	}
}

func TestFentryWithoutMcountLoc(t *testing.T) {
	// With __mcount_loc made an init section (not loaded, not read), the
	// calls to __fentry__ are still found by their relocations and made
	// NOPs.
	data := renameSection(t, readKo(t, sampleKo), "__mcount_loc", ".init.mcount")
	m, err := Parse(data, testSpec(t))
	if err != nil {
		t.Fatal(err)
	}
	im, err := m.Link(Config{Base: testBase, Resolve: mapResolver(kernelSyms, nil)})
	if err != nil {
		t.Fatal(err)
	}
	if len(im.FentrySites) != 3 {
		t.Fatalf("sites %x", im.FentrySites)
	}
	for _, s := range im.FentrySites {
		if b := readImage(t, im, s, 5); !bytes.Equal(b, nop5[:]) {
			t.Errorf("%#x: % x", s, b)
		}
	}
}

func TestReferenceToUnloadedSection(t *testing.T) {
	// The strings moved to an init section: the code's relocations
	// against them cannot be applied.
	data := renameSection(t, readKo(t, sampleKo), ".rodata.str1.1", ".init.rodata")
	_, err := Parse(data, testSpec(t))
	if err == nil {
		t.Fatal("parsed")
	}
	// objs[0].funcs[0].old_name points there too: the klp walk refuses
	// first.
	if !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), ".init.rodata") {
		t.Errorf("%v", err)
	}
	// The call to seq_printf made a reference to .modinfo, which is
	// read by the host but not loaded.
	data = readKo(t, sampleKo)
	data = setRelocSym(t, data, ".text", 0x44, sectionSymbol(t, mustObj(t, data), ".modinfo"))
	e := linkErr(t, data, mapResolver(kernelSyms, nil), testBase)
	if !errors.Is(e, ErrUnsupported) || e.Section != ".text" || e.Offset != 0x44 || !strings.Contains(e.Error(), "not loaded") {
		t.Errorf("%v", e)
	}
}

func TestDuplicateFunc(t *testing.T) {
	// klp-static's loadavg_proc_show,1 renamed version_proc_show: with
	// funcs[0] (sympos 0, which names the same "version_proc_show,1"
	// sysfs directory) Linux's kobject_add fails with EEXIST.
	data := append([]byte{}, readKo(t, staticKo)...)
	i := bytes.Index(data, []byte("loadavg_proc_show\x00"))
	if i < 0 {
		t.Fatal("no loadavg_proc_show string")
	}
	copy(data[i:], "version_proc_show\x00")
	_, err := Parse(data, testSpec(t))
	if !errors.Is(err, ErrFormat) || !errors.Is(err, syscall.EEXIST) {
		t.Errorf("%v", err)
	}
}

func TestImageFunctions(t *testing.T) {
	m := parseSample(t)
	im, err := m.Link(Config{Base: testBase, Resolve: mapResolver(kernelSyms, nil)})
	if err != nil {
		t.Fatal(err)
	}
	pf := im.Funcs[0]
	if pf.NewSize != 31 {
		t.Errorf("new function size %d, want 31 (its symbol's)", pf.NewSize)
	}
	// cleanup_module and init_module are module aliases of the local
	// livepatch_exit and livepatch_init: the local names win.
	var names []string
	for _, f := range im.Functions {
		names = append(names, f.Name)
	}
	if strings.Join(names, " ") != "livepatch_exit livepatch_init livepatch_cmdline_proc_show" {
		t.Errorf("functions %v", names)
	}
	if n, off, ok := im.FuncAt(pf.NewAddr + 0x13); !ok || n != "livepatch_cmdline_proc_show" || off != 0x13 {
		t.Errorf("FuncAt: %q+%#x %v", n, off, ok)
	}
	if _, _, ok := im.FuncAt(pf.NewAddr + 31); ok {
		t.Error("FuncAt past the end of the last function")
	}
	if _, _, ok := im.FuncAt(testBase - 1); ok {
		t.Error("FuncAt below the module")
	}
}

func TestStructModuleSize(t *testing.T) {
	// .gnu.linkonce.this_module 8 bytes longer than the kernel's struct
	// module: built for another configuration, as load_module says.
	data := append([]byte{}, readKo(t, sampleKo)...)
	o := mustObj(t, data)
	h := shdr(data, sectionIndex(t, o, ".gnu.linkonce.this_module"))
	le.PutUint64(data[h+32:], le.Uint64(data[h+32:])+8)
	_, err := Parse(data, testSpec(t))
	var e *Error
	if !errors.As(err, &e) || !errors.Is(err, ErrVersion) || !errors.Is(err, syscall.ENOEXEC) || e.Section != ".gnu.linkonce.this_module" {
		t.Errorf("%v", err)
	}
}

func TestImageJSON(t *testing.T) {
	im, err := parseSample(t).Link(Config{Base: testBase, Resolve: mapResolver(kernelSyms, nil)})
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(im)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"prot":"r-x"`, `"old_name":"cmdline_proc_show"`, `"module":"livepatch_sample"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("JSON lacks %s", want)
		}
	}
}

func TestNoStructModule(t *testing.T) {
	data := renameSection(t, readKo(t, sampleKo), ".gnu.linkonce.this_module", ".data.this_module")
	if _, err := Parse(data, testSpec(t)); !errors.Is(err, ErrFormat) || !errors.Is(err, syscall.ENOEXEC) || !strings.Contains(err.Error(), "this_module") {
		t.Errorf("%v", err)
	}
}

func TestReturnThunk(t *testing.T) {
	// The guest chose another return thunk (e.g. srso_return_thunk):
	// every return of the module jumps there.
	const srso = 0xffffffff81e00400
	im, err := parseSample(t).Link(Config{Base: testBase, Resolve: mapResolver(kernelSyms, nil), ReturnThunk: srso})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, r := range im.Relocs {
		if r.Symbol == "__x86_return_thunk" {
			n++
			if r.Target != srso {
				t.Errorf("%s+%#x jumps to %#x", r.Section, r.Offset, r.Target)
			}
		}
	}
	if n != 2 {
		t.Errorf("%d returns, want 2 (.return_sites has 2)", n)
	}
	// The new function's last instruction: jmp rel32 to the thunk.
	fn := im.Funcs[0].NewAddr
	b := readImage(t, im, fn+0x1a, 5)
	if b[0] != 0xe9 || fn+0x1f+uint64(int64(int32(le.Uint32(b[1:])))) != srso {
		t.Errorf("return: % x", b)
	}
}

func TestPlainReturns(t *testing.T) {
	// A CPU that needs no return thunk: apply_returns makes each
	// "jmp __x86_return_thunk" a "ret; int3 x4"; so does PlainReturns.
	im, err := parseSample(t).Link(Config{Base: testBase, Resolve: mapResolver(kernelSyms, nil), PlainReturns: true})
	if err != nil {
		t.Fatal(err)
	}
	fn := im.Funcs[0].NewAddr
	if b := readImage(t, im, fn+0x1a, 5); !bytes.Equal(b, []byte{0xc3, 0xcc, 0xcc, 0xcc, 0xcc}) {
		t.Errorf("return: % x", b)
	}
	for _, r := range im.Relocs {
		if r.Symbol == "__x86_return_thunk" {
			t.Errorf("return thunk relocated at %s+%#x", r.Section, r.Offset)
		}
	}
	if _, err := parseSample(t).Link(Config{Base: testBase, Resolve: mapResolver(kernelSyms, nil), PlainReturns: true, ReturnThunk: 1}); !errors.Is(err, ErrRange) {
		t.Errorf("both: %v", err)
	}
}
