package linuxpatch

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/arch/x86/x86asm"

	"klp-kvm/linuxkernel"
)

// staticKlp is klp-static.ko with its call to the static
// cmdline_proc_show rewritten as kpatch-build emits it.
func staticKlp(t testing.TB, klpName, obj string) []byte {
	return klpConvert(t, readKo(t, staticKo), "cmdline_proc_show", klpName, obj, ".text")
}

func TestStaticModule(t *testing.T) {
	m, err := Parse(staticKlp(t, ".klp.sym.vmlinux.cmdline_proc_show,1", VmlinuxObject), testSpec(t))
	if err != nil {
		t.Fatal(err)
	}
	if !m.Replace || len(m.States) != 1 || m.States[0].ID != 1 || m.States[0].Version != 2 {
		t.Errorf("replace %v states %+v", m.Replace, m.States)
	}
	if len(m.Objects) != 2 {
		t.Fatalf("objects %+v", m.Objects)
	}
	vm, nfsd := m.Objects[0], m.Objects[1]
	if vm.Name != VmlinuxObject || len(vm.Funcs) != 2 || nfsd.Name != "nfsd" || len(nfsd.Funcs) != 1 {
		t.Fatalf("objects %+v", m.Objects)
	}
	if f := vm.Funcs[0]; f.OldName != "version_proc_show" || f.OldSympos != 0 || f.NewFunc.Symbol != "livepatch_version_proc_show" {
		t.Errorf("funcs[0] %+v", f)
	}
	if f := vm.Funcs[1]; f.OldName != "loadavg_proc_show" || f.OldSympos != 1 || f.NewFunc.Symbol != "livepatch_loadavg_proc_show" {
		t.Errorf("funcs[1] %+v", f)
	}
	if f := nfsd.Funcs[0]; f.OldName != "nfsd_show" || f.NewFunc.Symbol != "livepatch_nfsd_show" {
		t.Errorf("nfsd funcs[0] %+v", f)
	}
	cb := vm.Callbacks
	if cb[0] == nil || cb[0].Symbol != "pre_patch" || cb[1] != nil || cb[2] != nil || cb[3] == nil || cb[3].Symbol != "post_unpatch" {
		t.Errorf("callbacks %v %v %v %v", cb[0], cb[1], cb[2], cb[3])
	}

	var calls []call
	im, err := m.Link(Config{Base: testBase, Resolve: mapResolver(kernelSyms, &calls)})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(calls, call{VmlinuxObject, "cmdline_proc_show", 1}) {
		t.Errorf("resolver calls %v: no cmdline_proc_show,1 from vmlinux", calls)
	}
	var klp []Reloc
	for _, r := range im.Relocs {
		if r.Source == "klp" {
			klp = append(klp, r)
		}
	}
	if len(klp) != 1 || klp[0].Symbol != ".klp.sym.vmlinux.cmdline_proc_show,1" || klp[0].Target != kernelSyms["cmdline_proc_show"] {
		t.Errorf("klp relocations %+v", klp)
	}
	// livepatch_version_proc_show ends in a tail call to the static
	// function: decode it.
	fn := im.Objects[0].Funcs[0].NewAddr
	code := readImage(t, im, fn, 0x26)
	var jmp uint64
	for off := 0; off < len(code); {
		inst, err := x86asm.Decode(code[off:], 64)
		if err != nil {
			t.Fatalf("+%#x: %v", off, err)
		}
		if inst.Op == x86asm.JMP {
			jmp = fn + uint64(off+inst.Len) + uint64(int64(inst.Args[0].(x86asm.Rel)))
		}
		off += inst.Len
	}
	if jmp != kernelSyms["cmdline_proc_show"] {
		t.Errorf("tail call lands at %#x, want cmdline_proc_show %#x", jmp, kernelSyms["cmdline_proc_show"])
	}
	if im.Objects[0].Callbacks[0] == 0 || im.Objects[0].Callbacks[3] == 0 || im.Objects[0].Callbacks[1] != 0 {
		t.Errorf("callbacks %x", im.Objects[0].Callbacks)
	}
	if len(im.FentrySites) != 7 {
		t.Errorf("%d fentry sites, want 7", len(im.FentrySites))
	}
	if !strings.Contains(im.Report(), "nfsd_show,0 -> livepatch_nfsd_show") {
		t.Errorf("report:\n%s", im.Report())
	}
}

func TestKlpSymErrors(t *testing.T) {
	spec := testSpec(t)
	for _, c := range []struct {
		name, klpName, obj string
		kind               error
		errno              syscall.Errno
		msg                string
	}{
		{"no sympos", ".klp.sym.vmlinux.cmdline_proc_show", VmlinuxObject, ErrSymbol, syscall.EINVAL, "incorrectly formatted"},
		{"signed sympos", ".klp.sym.vmlinux.cmdline_proc_show,+1", VmlinuxObject, ErrSymbol, syscall.EINVAL, "sympos"},
		{"no object", ".klp.sym..cmdline_proc_show,1", VmlinuxObject, ErrSymbol, syscall.EINVAL, "object name"},
		{"vmlinux symbol from a module's section", ".klp.sym.vmlinux.cmdline_proc_show,1", "nfsd", ErrSymbol, syscall.EINVAL, "invalid access to vmlinux symbol"},
		{"sympos past the last", ".klp.sym.vmlinux.cmdline_proc_show,3", VmlinuxObject, ErrNotFound, syscall.ENOENT, "sympos 3"},
		{"module object", ".klp.sym.nfsd.nfsd_show,1", "nfsd", ErrNotFound, syscall.ENOENT, "object nfsd"},
	} {
		t.Run(c.name, func(t *testing.T) {
			m, err := Parse(staticKlp(t, c.klpName, c.obj), spec)
			if err != nil {
				t.Fatal(err)
			}
			// The kernel has two cmdline_proc_show: sympos 1 and 2 exist.
			list := map[string]uint64{}
			for k, v := range kernelSyms {
				list[k] = v
			}
			resolve := func(obj, name string, pos int) (uint64, error) {
				if obj == VmlinuxObject && name == "cmdline_proc_show" && pos > 2 {
					return 0, &Error{Op: "resolve", Kind: ErrNotFound, Detail: "sympos 3, but the kernel has 2"}
				}
				return mapResolver(list, nil)(obj, name, pos)
			}
			_, err = m.Link(Config{Base: testBase, Resolve: resolve})
			var e *Error
			if !errors.As(err, &e) || !errors.Is(err, c.kind) || !errors.Is(err, c.errno) || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("%v", err)
			}
			if e.Section != ".text" || e.Offset != 0xb2 || e.Symbol != c.klpName {
				t.Errorf("located at %s+%#x symbol %q", e.Section, e.Offset, e.Symbol)
			}
		})
	}
}

func TestKlpRelaNeedsLivepatchSymbols(t *testing.T) {
	// A .klp.rela section whose symbol is a plain undefined one: Linux's
	// klp_resolve_symbols refuses it.
	data := staticKlp(t, ".klp.sym.vmlinux.cmdline_proc_show,1", VmlinuxObject)
	o := mustObj(t, data)
	si := symbolIndex(t, o, ".klp.sym.vmlinux.cmdline_proc_show,1")
	le.PutUint16(data[o.Sections()[sectionIndex(t, o, ".symtab")].Offset+uint64(si)*24+6:], 0)
	m, err := Parse(data, testSpec(t))
	if err == nil {
		_, err = m.Link(Config{Base: testBase, Resolve: mapResolver(kernelSyms, nil)})
	}
	if !errors.Is(err, ErrSymbol) || !strings.Contains(err.Error(), "SHN_LIVEPATCH") {
		t.Errorf("%v", err)
	}
	// And the other way: the SHN_LIVEPATCH symbol in a normal section.
	data = renameSection(t, staticKlp(t, ".klp.sym.vmlinux.cmdline_proc_show,1", VmlinuxObject), ".klp.rela.vmlinux..text", ".rela.text2")
	if _, err := Parse(data, testSpec(t)); !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), "SHF_RELA_LIVEPATCH") {
		t.Errorf("flag without name: %v", err)
	}
}

func TestTwoPatches(t *testing.T) {
	// Two klp_patch (and a file_operations whose .owner is THIS_MODULE
	// at the same offset): refused, naming both.
	_, err := Parse(readKo(t, "testdata/klp-two/klp-two.ko"), testSpec(t))
	var e *Error
	if !errors.As(err, &e) || !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), "patch_a") || !strings.Contains(err.Error(), "patch_b") {
		t.Errorf("%v", err)
	}
	if strings.Contains(err.Error(), "klp_two_fops") {
		t.Errorf("file_operations taken for a klp_patch: %v", err)
	}
}

func TestObjectNotLoaded(t *testing.T) {
	// A .klp.rela.nfsd section while the guest has no nfsd: left
	// unapplied, as Linux leaves it until nfsd loads; the nfsd object is
	// marked not loaded. The same module with nfsd "loaded" asks the
	// resolver, which knows no nfsd.
	m, err := Parse(staticKlp(t, ".klp.sym.nfsd.nfsd_show,1", "nfsd"), testSpec(t))
	if err != nil {
		t.Fatal(err)
	}
	var calls []call
	im, err := m.Link(Config{Base: testBase, Resolve: mapResolver(kernelSyms, &calls), Loaded: func(obj string) bool { return obj != "nfsd" }})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range calls {
		if c.obj == "nfsd" {
			t.Errorf("resolved %+v of an object that is not loaded", c)
		}
	}
	if !im.Objects[0].Loaded || im.Objects[1].Loaded || im.Objects[1].Name != "nfsd" {
		t.Errorf("objects %+v", im.Objects)
	}
	// The jmp's rel32 stays zero (never run: nfsd's functions are not
	// redirected).
	if b := readImage(t, im, im.Objects[0].Funcs[0].NewAddr+0x22, 4); !bytes.Equal(b, []byte{0, 0, 0, 0}) {
		t.Errorf("unapplied relocation holds % x", b)
	}
	if !strings.Contains(im.Report(), "nfsd (struct klp_object at") || !strings.Contains(im.Report(), "not loaded in the guest") {
		t.Errorf("report:\n%s", im.Report())
	}
	if _, err := m.Link(Config{Base: testBase, Resolve: mapResolver(kernelSyms, nil), Loaded: func(string) bool { return true }}); !errors.Is(err, ErrNotFound) {
		t.Errorf("nfsd loaded: %v", err)
	}
}

func TestExported(t *testing.T) {
	// The kernel's kallsyms as Debian 6.1 shows it: exported functions
	// have a __ksymtab_ entry, static ones (cmdline_proc_show) do not.
	var list []linuxkernel.Symbol
	for k, v := range kernelSyms {
		list = append(list, linuxkernel.Symbol{Name: k, Addr: v, Type: 'T'})
		if k != "cmdline_proc_show" {
			list = append(list, linuxkernel.Symbol{Name: "__ksymtab_" + k, Addr: 0xffffffff82400000 + v&0xfff0, Type: 'r'})
		}
	}
	syms := linuxkernel.NewSymbols(list)
	cfg := Config{Base: testBase, Resolve: VmlinuxResolver(syms), Exported: VmlinuxExports(syms)}
	// The sample uses exported symbols only.
	if _, err := parseSample(t).Link(cfg); err != nil {
		t.Errorf("sample: %v", err)
	}
	// klp-static as built calls the static cmdline_proc_show through a
	// plain relocation: Linux's loader would refuse it.
	m, err := Parse(readKo(t, staticKo), testSpec(t))
	if err != nil {
		t.Fatal(err)
	}
	_, err = m.Link(cfg)
	var e *Error
	if !errors.As(err, &e) || !errors.Is(err, ErrSymbol) || e.Symbol != "cmdline_proc_show" || e.Offset != 0xb2 || !strings.Contains(err.Error(), "not exported") {
		t.Errorf("plain static: %v", err)
	}
	// Rewritten as kpatch-build does, it links.
	m, err = Parse(staticKlp(t, ".klp.sym.vmlinux.cmdline_proc_show,1", VmlinuxObject), testSpec(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Link(cfg); err != nil {
		t.Errorf(".klp.sym: %v", err)
	}
}

func TestModuleReport(t *testing.T) {
	m, err := Parse(staticKlp(t, ".klp.sym.vmlinux.cmdline_proc_show,1", VmlinuxObject), testSpec(t))
	if err != nil {
		t.Fatal(err)
	}
	rep := m.Report()
	for _, want := range []string{
		"module klp_static, vermagic 6.1.0-57-amd64",
		"struct klp_patch at patch (.data+",
		"replace true",
		"object nfsd",
		"callback pre_patch pre_patch (.text+",
		"loadavg_proc_show,1 -> livepatch_loadavg_proc_show (.text+0x70) (24 bytes)",
		"state id 1 version 2",
		"fentry calls to make NOPs: 7",
		"zeroed   .gnu.linkonce.this_module (896 bytes)",
		"skipped  .return_sites",
	} {
		if !strings.Contains(rep, want) {
			t.Errorf("report lacks %q:\n%s", want, rep)
		}
	}
}
