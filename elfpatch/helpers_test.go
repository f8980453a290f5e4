package elfpatch

import (
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"klp-kvm/guestkernel/layout"
)

const (
	fixtureKernelPath = "testdata/kernel/vmlinux"
	samplesDir        = "../guestkernel/prebuilt/patches"
	testPatchesDir    = "testdata/patches"
	patchBase         = layout.PatchAreaVirt
)

func readFile(t testing.TB, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

var (
	fixtureOnce sync.Once
	fixtureK    *Kernel
	fixtureErr  error
)

// fixtureKernel is the independently built kernel-like ELF of testdata/kernel.
func fixtureKernel(t testing.TB) *Kernel {
	t.Helper()
	fixtureOnce.Do(func() {
		var data []byte
		data, fixtureErr = os.ReadFile(fixtureKernelPath)
		if fixtureErr == nil {
			fixtureK, fixtureErr = ParseKernel(data)
		}
	})
	if fixtureErr != nil {
		t.Fatal(fixtureErr)
	}
	return fixtureK
}

func samplePath(name string) string { return filepath.Join(samplesDir, name+".o") }

func loadSample(t testing.TB, name string) *Patch {
	t.Helper()
	p, err := ParsePatchFile(samplePath(name))
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return p
}

func mustLookup(t testing.TB, k *Kernel, name string, pos int) Symbol {
	t.Helper()
	s, err := k.Lookup(name, pos)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func bytesReaderAt(b, p []byte, off int64) (int, error) {
	if off >= int64(len(b)) {
		return 0, io.EOF
	}
	n := copy(p, b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}
