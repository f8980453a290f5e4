package elfpatch

import (
	"errors"
	"testing"
)

// The synthetic generator doubles as a test of a kernel laid out unlike
// gcc/ld output (one huge .text, sites in .init.data).
func TestSynthKernel(t *testing.T) {
	data := synthKernel(2000, 64)
	k, err := ParseKernel(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(k.FentrySites()) != 2000 || len(k.SiteProblems()) != 0 {
		t.Fatalf("%d sites, problems %v", len(k.FentrySites()), k.SiteProblems())
	}
	// synth_fn_000016 is both a local and (for i%16 != 0 only) ... here
	// only local: globals of multiples of 16 are named synth_gfn_.
	if _, err := k.Patchable("synth_fn_000016", 0); err != nil {
		t.Errorf("synth_fn_000016: %v", err)
	}
	if _, err := k.LookupGlobal("synth_fn_000016"); !errors.Is(err, ErrUnresolved) {
		t.Errorf("local visible as global: %v", err)
	}
	s, off, ok := k.Addr2Sym(0xffffffff81000000 + 1999*64 + 7)
	if !ok || off != 7 || s.Name != "synth_fn_001999" {
		t.Errorf("Addr2Sym: %s+%d %v", s.Name, off, ok)
	}
	r := NewKernelReport(k, "")
	if r.Patchable != 2000+125 || !r.OK() {
		t.Errorf("report: %d patchable, problems %v", r.Patchable, r.Problems)
	}
}
