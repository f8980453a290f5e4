package linuxpatch

import (
	"bytes"
	"errors"
	"os"
	"strings"
	"testing"

	"golang.org/x/arch/x86/x86asm"

	"klp-kvm/linuxkernel"
)

// realKallsyms is the real guest's kallsyms for the symbols the test
// modules use (testdata/README.md says how it was captured), moved by a
// KASLR offset.
func realKallsyms(t *testing.T, kaslr uint64) *linuxkernel.Symbols {
	t.Helper()
	f, err := os.ReadFile("testdata/kallsyms-6.1.0-57-amd64-nokaslr.txt")
	if err != nil {
		t.Fatal(err)
	}
	syms, err := linuxkernel.ParseSystemMap(bytes.NewReader(f), kaslr)
	if err != nil {
		t.Fatal(err)
	}
	return linuxkernel.NewSymbols(syms)
}

// TestRealKallsyms links both modules against Debian 6.1.0-57's own
// symbol addresses, with Linux's export rule, at the start of the module
// area (MODULES_VADDR, 0xffffffffc0000000), with KASLR off and on.
func TestRealKallsyms(t *testing.T) {
	for _, kaslr := range []uint64{0, 0x2a000000} {
		syms := realKallsyms(t, kaslr)
		addr := func(name string) uint64 {
			a, err := syms.Addr(name)
			if err != nil {
				t.Fatal(err)
			}
			return a
		}
		cfg := Config{Base: 0xffffffffc0000000 + kaslr&0x3fff000, Resolve: VmlinuxResolver(syms), Exported: VmlinuxExports(syms), KernelRelease: "6.1.0-57-amd64"}
		im, err := parseSample(t).Link(cfg)
		if err != nil {
			t.Fatalf("kaslr %#x: %v", kaslr, err)
		}
		targets := map[uint64]bool{}
		for _, r := range im.Relocs {
			if r.Source == VmlinuxObject {
				targets[r.Target] = true
			}
		}
		for _, n := range []string{"seq_printf", "__x86_return_thunk", "klp_enable_patch"} {
			if !targets[addr(n)] {
				t.Errorf("kaslr %#x: nothing relocated against %s %#x", kaslr, n, addr(n))
			}
		}
		// klp-static: its plain reference to the static cmdline_proc_show
		// is refused (no __ksymtab_cmdline_proc_show in the real kernel),
		// the .klp.sym one lands on it.
		m, err := Parse(readKo(t, staticKo), testSpec(t))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := m.Link(cfg); !errors.Is(err, ErrSymbol) || !strings.Contains(err.Error(), "not exported") {
			t.Errorf("kaslr %#x: plain static reference: %v", kaslr, err)
		}
		m, err = Parse(staticKlp(t, ".klp.sym.vmlinux.cmdline_proc_show,0", VmlinuxObject), testSpec(t))
		if err != nil {
			t.Fatal(err)
		}
		im, err = m.Link(cfg)
		if err != nil {
			t.Fatalf("kaslr %#x: %v", kaslr, err)
		}
		fn := im.Objects[0].Funcs[0].NewAddr
		inst, err := x86asm.Decode(readImage(t, im, fn+0x21, 5), 64)
		if err != nil || inst.Op != x86asm.JMP {
			t.Fatalf("tail call: %v %v", inst, err)
		}
		if got := fn + 0x26 + uint64(int64(inst.Args[0].(x86asm.Rel))); got != addr("cmdline_proc_show") {
			t.Errorf("kaslr %#x: tail call to %#x, cmdline_proc_show is %#x", kaslr, got, addr("cmdline_proc_show"))
		}
	}
}
