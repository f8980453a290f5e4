package elfpatch

import (
	"bytes"
	"errors"
	"strings"
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

// IBT-style entries (endbr64, then the fentry NOP at +4) are patchable; a
// site elsewhere inside a function is not.
func TestSiteOffsets(t *testing.T) {
	const fnSize = 64
	data := synthKernel(8, fnSize)
	f, err := parseELF("test", data, etExec)
	if err != nil {
		t.Fatal(err)
	}
	text := f.sections[1]
	mc := f.sections[2]
	fn := func(i int) []byte { return data[text.Offset+uint64(i*fnSize):][:fnSize] }
	setSite := func(i int, off uint64) {
		le.PutUint64(data[mc.Offset+uint64(8*i):], text.Addr+uint64(i*fnSize)+off)
	}
	// Function 1: endbr64; nop5 at +4.
	copy(fn(1), append(append([]byte{}, endbr64...), Nop5[:]...))
	setSite(1, 4)
	// Function 2: push %rbp; nop5 at +1 (valid NOP, wrong place).
	copy(fn(2), append([]byte{0x55}, Nop5[:]...))
	setSite(2, 1)
	// Function 3: a site whose bytes are a different 5-byte instruction.
	copy(fn(3), []byte{0xb8, 1, 0, 0, 0}) // mov $1, %eax
	// Functions 4 and 6: call rel32 sites (a kernel built without
	// -mnop-mcount), to __fentry__ (function 5, renamed) and to function 7.
	strtab := f.sectionData(4)
	i := bytes.Index(strtab, []byte("synth_fn_000005\x00"))
	copy(strtab[i:], "__fentry__\x00")
	call := func(from, to int) {
		rel := int32(to*fnSize - (from*fnSize + 5))
		b := []byte{0xe8, 0, 0, 0, 0}
		le.PutUint32(b[1:], uint32(rel))
		copy(fn(from), b)
	}
	call(4, 5)
	call(6, 7)
	k, err := ParseKernel(data)
	if err != nil {
		t.Fatal(err)
	}
	if site, err := k.Patchable("synth_fn_000004", 0); err != nil || site.Kind != SiteCall || site.Offset != 0 {
		t.Errorf("call __fentry__ site: %+v %v", site, err)
	}
	if _, err := k.Patchable("synth_fn_000006", 0); !errors.Is(err, ErrNotPatchable) || !strings.Contains(err.Error(), "not __fentry__") {
		t.Errorf("call elsewhere: %v", err)
	}
	site, err := k.Patchable("synth_fn_000001", 0)
	if err != nil || site.Offset != 4 || site.Addr != text.Addr+fnSize+4 {
		t.Errorf("endbr64 entry: %+v %v", site, err)
	}
	if _, err := k.Patchable("synth_fn_000002", 0); !errors.Is(err, ErrNotPatchable) || !strings.Contains(err.Error(), "not at the function's entry") {
		t.Errorf("site at +1: %v", err)
	}
	if _, err := k.Patchable("synth_fn_000003", 0); !errors.Is(err, ErrNotPatchable) || !strings.Contains(err.Error(), "not a 5-byte NOP") {
		t.Errorf("mov at the site: %v", err)
	}
}

// One name repeated for every function (a hostile or just odd image) must
// not make the per-function work quadratic.
func TestSynthKernelRepeatedName(t *testing.T) {
	const n = 20000
	data := synthKernel(n, 16)
	f, err := parseELF("test", data, etExec)
	if err != nil {
		t.Fatal(err)
	}
	strtab := f.sectionData(4)
	// Rename every synth_fn_/synth_gfn_ symbol to the same 15-byte name by
	// rewriting the string table in place (names keep their offsets).
	for i := 0; i+15 <= len(strtab); i++ {
		if string(strtab[i:i+9]) == "synth_fn_" || string(strtab[i:i+10]) == "synth_gfn_" {
			end := i
			for end < len(strtab) && strtab[end] != 0 {
				end++
			}
			copy(strtab[i:end], strings.Repeat("x", end-i))
			i = end
		}
	}
	k, err := ParseKernel(data)
	if err != nil {
		t.Fatal(err)
	}
	// x*15: the n-n/16 plain globals and the n/16 locals; x*16: synth_gfn_.
	r := NewKernelReport(k, "xxxxxxxxxxxxxxx")
	if len(r.Symbol.Matches) != n {
		t.Errorf("%d symbols of the repeated name, want %d", len(r.Symbol.Matches), n)
	}
	if r.Patchable != n+n/16 {
		t.Errorf("patchable %d, want %d", r.Patchable, n+n/16)
	}
}
