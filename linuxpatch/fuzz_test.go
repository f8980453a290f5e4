package linuxpatch

import (
	"bytes"
	"errors"
	"os"
	"testing"

	"github.com/cilium/ebpf/btf"
)

// FuzzModule parses and links arbitrary bytes: an *Error or an image,
// never a panic. Run it with a short -fuzzminimizetime (e.g. 2s): a
// parse is ~0.1 ms, and the default minute spent minimising each new
// input looks like a stall. testdata/fuzz/FuzzModule holds the committed modules
// without their debug sections (objcopy --strip-debug) and the inputs
// that found bugs; the kpatch-style rewrite of klp-static is added here.
func FuzzModule(f *testing.F) {
	// The modules without debug sections: the full ones (250 KiB) stall
	// the fuzzer's mutator.
	static := fuzzSeed(f, "testdata/fuzz/FuzzModule/klp-static-stripped")
	f.Add(klpConvert(f, static, "cmdline_proc_show", ".klp.sym.vmlinux.cmdline_proc_show,1", VmlinuxObject, ".text"))
	spec := testSpec(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := Parse(data, spec)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("not an *Error: %v", err)
			}
			return
		}
		im, err := m.Link(Config{Base: testBase, Resolve: mapResolver(kernelSyms, nil)})
		if err != nil {
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("not an *Error: %v", err)
			}
			return
		}
		_ = im.Report()
		var total uint64
		for _, r := range im.Regions {
			total += r.Size
		}
		if total > m.Size() {
			t.Fatalf("regions of %d bytes, Size %d", total, m.Size())
		}
	})
}

// FuzzLayoutFromBTF: the klp layouts from arbitrary BTF (the guest's own
// is untrusted) are an *Error or a layout whose fields lie inside their
// structs, never a panic.
func FuzzLayoutFromBTF(f *testing.F) {
	raw, err := os.ReadFile(committedBTF)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(raw)
	f.Fuzz(func(t *testing.T, data []byte) {
		spec, err := btf.LoadSpecFromReader(bytes.NewReader(data))
		if err != nil {
			return
		}
		l, err := LayoutFromBTF(spec)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("not an *Error: %v", err)
			}
			return
		}
		if l.PatchMod+8 > l.PatchSize || l.PatchObjs+8 > l.PatchSize || l.PatchReplace >= l.PatchSize ||
			l.FuncOldSympos+8 > l.FuncSize || l.ObjectFuncs+8 > l.ObjectSize {
			t.Fatalf("layout outside its structs: %+v", *l)
		}
	})
}
