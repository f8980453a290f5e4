package elfpatch

import (
	"bytes"
	"errors"
	"io"
	"os"
	"strings"
	"testing"
)

func TestKernelFixtureSymbols(t *testing.T) {
	k := fixtureKernel(t)
	if k.Entry != 0xffffffff82000000 {
		t.Errorf("entry %#x", k.Entry)
	}
	cps := mustLookup(t, k, "cmdline_proc_show", 0)
	if cps.Type != TypeFunc || cps.Bind != BindGlobal || cps.Size == 0 || cps.Value < 0xffffffff82000000 {
		t.Errorf("cmdline_proc_show: %+v", cps)
	}
	if s1 := mustLookup(t, k, "cmdline_proc_show", 1); s1.Value != cps.Value {
		t.Errorf("sympos 1 of a unique name: %#x, want %#x", s1.Value, cps.Value)
	}
	if _, err := k.Lookup("cmdline_proc_show", 2); !errors.Is(err, ErrUnresolved) {
		t.Errorf("sympos 2 of a unique name: %v", err)
	}

	// klp_dup_fn: a static function in main.c and in dup.c.
	all := k.LookupAll("klp_dup_fn")
	if len(all) != 2 || all[0].Value >= all[1].Value {
		t.Fatalf("klp_dup_fn: %+v", all)
	}
	for i, s := range all {
		if s.Bind != BindLocal || s.Type != TypeFunc {
			t.Errorf("klp_dup_fn %d: %+v", i, s)
		}
		got := mustLookup(t, k, "klp_dup_fn", i+1)
		if got.Value != s.Value {
			t.Errorf("sympos %d: %#x, want %#x", i+1, got.Value, s.Value)
		}
		if pos, n := k.Sympos(got.Index); pos != i+1 || n != 2 {
			t.Errorf("Sympos(%d) = %d, %d", got.Index, pos, n)
		}
	}
	_, err := k.Lookup("klp_dup_fn", 0)
	if !errors.Is(err, ErrAmbiguous) {
		t.Errorf("sympos 0 of a duplicate: %v", err)
	}
	var e *Error
	if !errors.As(err, &e) || e.Symbol != "klp_dup_fn" || e.Op != "lookup" {
		t.Errorf("error fields: %#v", err)
	}
	if _, err := k.Lookup("klp_dup_fn", 3); !errors.Is(err, ErrUnresolved) {
		t.Errorf("sympos 3: %v", err)
	}
	if _, err := k.Lookup("klp_dup_fn", -1); !errors.Is(err, ErrRange) {
		t.Errorf("sympos -1: %v", err)
	}
	if _, err := k.Lookup("no_such_symbol", 0); !errors.Is(err, ErrUnresolved) {
		t.Errorf("missing: %v", err)
	}
	// Three sink_local objects (main.c has none: dup.c and dup2.c).
	if n := len(k.LookupAll("sink_local")); n != 2 {
		t.Errorf("sink_local: %d symbols, want 2", n)
	}

	// Plain references see only globals.
	if _, err := k.LookupGlobal("klp_dup_fn"); !errors.Is(err, ErrUnresolved) || !strings.Contains(err.Error(), ".klp.sym.vmlinux.klp_dup_fn") {
		t.Errorf("LookupGlobal(local): %v", err)
	}
	if s, err := k.LookupGlobal("seq_printf"); err != nil || s.Type != TypeFunc {
		t.Errorf("LookupGlobal(seq_printf): %+v %v", s, err)
	}
	if s, err := k.LookupGlobal("fixture_abs_small"); err != nil || s.Value != 0x1234 || s.Section != shnAbs {
		t.Errorf("absolute symbol: %+v %v", s, err)
	}

	if p, ok := k.Phys(cps.Value); !ok || p != cps.Value-0xffffffff80000000 {
		t.Errorf("Phys(%#x) = %#x %v", cps.Value, p, ok)
	}
	if _, ok := k.Phys(0x1000); ok {
		t.Error("Phys of an unmapped address succeeded")
	}
}

func TestKernelAddr2Sym(t *testing.T) {
	k := fixtureKernel(t)
	cps := mustLookup(t, k, "cmdline_proc_show", 0)
	for _, off := range []uint64{0, 1, cps.Size - 1} {
		s, o, ok := k.Addr2Sym(cps.Value + off)
		if !ok || s.Name != "cmdline_proc_show" || o != off {
			t.Errorf("Addr2Sym(+%d) = %s+%d %v", off, s.Name, o, ok)
		}
	}
	// Past the end of the last function of .text: padding belongs to no symbol.
	syms := k.Symbols()
	var last Symbol
	for _, s := range syms {
		if s.Type == TypeFunc && s.Value > last.Value {
			last = s
		}
	}
	if s, _, ok := k.Addr2Sym(last.Value + last.Size); ok && s.Type == TypeFunc && s.Name == last.Name {
		t.Errorf("address after %s resolved into it", last.Name)
	}
	if _, _, ok := k.Addr2Sym(0x1000); ok {
		t.Error("Addr2Sym below every symbol succeeded")
	}
	if _, _, ok := k.Addr2Sym(^uint64(0)); ok {
		t.Error("Addr2Sym(max) succeeded")
	}
	// Every function resolves to itself at each of its bytes' start.
	for _, s := range syms {
		if s.Type != TypeFunc || s.Size == 0 {
			continue
		}
		got, off, ok := k.Addr2Sym(s.Value + s.Size/2)
		if !ok || got.Value != s.Value || off != s.Size/2 {
			t.Fatalf("Addr2Sym(%s+%d) = %s+%d %v", s.Name, s.Size/2, got.Name, off, ok)
		}
	}
}

func TestKernelFentrySites(t *testing.T) {
	k := fixtureKernel(t)
	sites := k.FentrySites()
	if k.McountSource() != "__start_mcount_loc..__stop_mcount_loc" {
		t.Errorf("mcount source %q", k.McountSource())
	}
	start := mustLookup(t, k, "__start_mcount_loc", 0)
	stop := mustLookup(t, k, "__stop_mcount_loc", 0)
	if want := int(stop.Value-start.Value) / 8; len(sites) != want || len(k.SiteProblems()) != 0 {
		t.Fatalf("%d sites, %d problems; want %d sites", len(sites), len(k.SiteProblems()), want)
	}
	for i, s := range sites {
		if i > 0 && sites[i-1].Addr >= s.Addr {
			t.Fatal("sites not sorted")
		}
		if s.Kind != SiteNop5 || s.Bytes != Nop5 || s.Offset != 0 || s.Addr != s.FuncAddr {
			t.Fatalf("site %+v", s)
		}
	}
	// 1024 bench functions, all patchable.
	for _, name := range []string{"bench_fn_0000", "bench_fn_0511", "bench_fn_1023", "cmdline_proc_show", "klp_pair_a", "klp_pair_b", "klp_park_fn", "seq_printf"} {
		site, err := k.Patchable(name, 0)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if s := mustLookup(t, k, name, 0); site.Addr != s.Value {
			t.Errorf("%s: site %#x, function %#x", name, site.Addr, s.Value)
		}
	}
	if _, err := k.Patchable("klp_dup_fn", 2); err != nil {
		t.Errorf("klp_dup_fn,2: %v", err)
	}
}

func TestKernelNotPatchable(t *testing.T) {
	k := fixtureKernel(t)
	cases := []struct {
		name   string
		kind   error
		reason string
	}{
		{"sum_count.isra.0", ErrNotPatchable, ".isra clone"},
		{"scale.constprop.0", ErrNotPatchable, ".constprop clone"},
		{"slow_path.part.0", ErrNotPatchable, ".part clone"},
		{"fixture_check.cold", ErrNotPatchable, ".cold clone"},
		{"fixture_notrace_fn", ErrNotPatchable, "no fentry site"},
		{"_start", ErrNotPatchable, "no fentry site"},
		{"klp_guest_abi", ErrNotPatchable, "not a function"},
		{"klp_dup_fn", ErrAmbiguous, "give sympos"},
		{"nope", ErrUnresolved, "no symbol"},
	}
	for _, c := range cases {
		_, err := k.Patchable(c.name, 0)
		if !errors.Is(err, c.kind) || !strings.Contains(err.Error(), c.reason) {
			t.Errorf("%s: %v, want %v with %q", c.name, err, c.kind, c.reason)
		}
	}
	counts := map[string]int{}
	for _, fi := range k.Functions() {
		counts[fi.ReasonKind]++
	}
	if counts[ReasonClone] != 5 || counts[ReasonNoSite] != 3 || counts[""] < 1024 {
		t.Errorf("reason counts %v", counts)
	}
}

// A site whose bytes are not the NOP is rejected, and its function is not
// patchable; so is a site in the middle of a function.
func TestKernelSiteCrossCheck(t *testing.T) {
	data := bytes.Clone(readFile(t, fixtureKernelPath))
	k := fixtureKernel(t)
	fileOff := func(addr uint64) int {
		for _, s := range k.Sections() {
			if s.Alloc() && s.Type == SHT_PROGBITS && addr >= s.Addr && addr < s.Addr+s.Size {
				return int(s.Offset + addr - s.Addr)
			}
		}
		t.Fatalf("no section for %#x", addr)
		return 0
	}
	a := mustLookup(t, k, "klp_pair_a", 0)
	copy(data[fileOff(a.Value):], []byte{0x90, 0x90, 0x90, 0x90, 0x90})
	// Point klp_pair_b's __mcount_loc entry 5 bytes into the function.
	b := mustLookup(t, k, "klp_pair_b", 0)
	start := mustLookup(t, k, "__start_mcount_loc", 0)
	stop := mustLookup(t, k, "__stop_mcount_loc", 0)
	moved := false
	for va := start.Value; va < stop.Value; va += 8 {
		o := fileOff(va)
		if le.Uint64(data[o:]) == b.Value {
			le.PutUint64(data[o:], b.Value+5)
			moved = true
		}
	}
	if !moved {
		t.Fatal("klp_pair_b has no __mcount_loc entry")
	}
	k2, err := ParseKernel(data)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := k2.Patchable("klp_pair_a", 0); !errors.Is(err, ErrNotPatchable) || !strings.Contains(err.Error(), "not a 5-byte NOP") {
		t.Errorf("klp_pair_a with 5 x nop1: %v", err)
	}
	if _, err := k2.Patchable("klp_pair_b", 0); !errors.Is(err, ErrNotPatchable) {
		t.Errorf("klp_pair_b with a site at +5: %v", err)
	}
	if len(k2.SiteProblems()) != 2 {
		t.Errorf("site problems: %+v", k2.SiteProblems())
	}
}

func TestKernelReportFixture(t *testing.T) {
	k := fixtureKernel(t)
	r := NewKernelReport(k, "klp_dup_fn")
	if !r.OK() || r.Patchable < 1024 || len(r.Symbol.Matches) != 2 || !r.Symbol.Matches[1].Patchable {
		t.Errorf("report: %+v", r)
	}
	if r := NewKernelReport(k, "nope"); r.OK() {
		t.Error("report of a missing symbol is OK")
	}
}

type plainReaderAt struct{ b []byte }

func (r plainReaderAt) ReadAt(p []byte, off int64) (int, error) {
	return bytesReaderAt(r.b, p, off)
}

func TestOpenKernel(t *testing.T) {
	f, err := os.Open(fixtureKernelPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	data := readFile(t, fixtureKernelPath)
	for name, r := range map[string]io.ReaderAt{
		"file": f, "bytes.Reader": bytes.NewReader(data), "plain": plainReaderAt{data},
	} {
		k, err := OpenKernel(r)
		if err != nil || len(k.FentrySites()) != len(fixtureKernel(t).FentrySites()) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := OpenKernel(bytes.NewReader(data[:100])); !errors.Is(err, ErrFormat) {
		t.Errorf("short: %v", err)
	}
}
