package elfpatch

import (
	"os"
	"path/filepath"
	"testing"
)

// Fuzz bodies assert what matters on hostile input: no panic, errors of
// the package's type, and images bounded by the input size (allocations
// are bounded by construction, see Security in the package doc).
//
//	go test ./elfpatch -run XXX -fuzz FuzzParsePatch -fuzztime 30s -fuzzminimizetime 2s
//
// (-fuzzminimizetime: minimizing a multi-KB ELF input with the default 60 s
// stalls the fuzzer for minutes at every new coverage.)

func addSeeds(f *testing.F, globs ...string) {
	for _, g := range globs {
		files, _ := filepath.Glob(g)
		for _, p := range files {
			if filepath.Base(p) == "livepatch-bench.o" {
				continue // 300 KB: mutating it is slow and adds nothing
			}
			if data, err := os.ReadFile(p); err == nil {
				f.Add(data)
			}
		}
	}
}

func FuzzParseKernel(f *testing.F) {
	addSeeds(f, fixtureKernelPath)
	f.Add(synthKernel(40, 32))
	f.Add([]byte("\x7fELF\x02\x01\x01"))
	f.Fuzz(func(t *testing.T, data []byte) {
		k, err := ParseKernel(data)
		if err != nil {
			if _, ok := err.(*Error); !ok {
				t.Fatalf("error of type %T: %v", err, err)
			}
			return
		}
		for _, s := range k.FentrySites() {
			if _, _, ok := k.Addr2Sym(s.Addr); !ok {
				t.Fatalf("site %#x outside every symbol", s.Addr)
			}
		}
		// What a loader reads: the type, and every segment's bytes.
		if typ := k.Type(); typ != ET_EXEC && typ != ET_DYN {
			t.Fatalf("accepted type %v", typ)
		}
		for i, s := range k.Segments {
			if b, ok := k.SegmentBytes(s); !ok || uint64(len(b)) != s.Filesz || s.Filesz > s.Memsz {
				t.Fatalf("segment %d %+v: %d bytes %v", i, s, len(b), ok)
			}
		}
		prev := uint64(0)
		for s := range k.FuncSymbols() {
			if s.Type != TypeFunc || s.Value < prev {
				t.Fatalf("function symbol %+v out of order", s)
			}
			prev = s.Value
			// (not necessarily ok: the backward walk is bounded)
			if f, _, ok := k.Addr2Func(s.Value); ok && f.Type != TypeFunc {
				t.Fatalf("Addr2Func(%#x) = %+v %v", s.Value, f, ok)
			}
		}
		k.Functions()
		NewKernelReport(k, "klp_dup_fn")
		k.Patchable("cmdline_proc_show", 0)
	})
}

func FuzzParsePatch(f *testing.F) {
	addSeeds(f, samplesDir+"/*.o", testPatchesDir+"/*.o")
	k, err := ParseKernel(readFile(f, fixtureKernelPath))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := ParsePatch(data)
		if err != nil {
			if _, ok := err.(*Error); !ok {
				t.Fatalf("error of type %T: %v", err, err)
			}
			return
		}
		if p.ABI != PatchABI1 && p.ABI != PatchABI2 || p.ABI == PatchABI1 && (p.States != nil || p.StatesLoc != nil) {
			t.Fatalf("layout %d with states %v at %v", p.ABI, p.States, p.StatesLoc)
		}
		ids := map[uint64]bool{}
		for _, st := range p.States {
			if st.ID == 0 || ids[st.ID] {
				t.Fatalf("state id %d: zero or twice", st.ID)
			}
			ids[st.ID] = true
		}
		im, errs := p.Check(patchBase, k)
		for _, e := range errs {
			if _, ok := e.(*Error); !ok {
				t.Fatalf("error of type %T: %v", e, e)
			}
		}
		if im != nil && len(errs) == 0 && len(im.States) != len(p.States) {
			t.Fatalf("%d states laid out of %d", len(im.States), len(p.States))
		}
		if im != nil && uint64(len(im.Bytes)) > uint64(len(data))+maxBSS+uint64(len(p.Sections()))*maxSectionAlign {
			t.Fatalf("image of %d bytes from %d bytes of input", len(im.Bytes), len(data))
		}
		NewPatchReport(p, nil, patchBase)
	})
}
