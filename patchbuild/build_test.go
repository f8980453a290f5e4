package patchbuild

import (
	"os"
	"sync"
	"testing"

	"klp-kvm/elfpatch"
)

var (
	kernelOnce sync.Once
	testKernel *elfpatch.Kernel
	testCache  = &Cache{}
)

func guestKernel(t testing.TB) *elfpatch.Kernel {
	t.Helper()
	kernelOnce.Do(func() {
		data, err := os.ReadFile("../guestkernel/prebuilt/vmlinux")
		if err != nil {
			return
		}
		testKernel, _ = elfpatch.ParseKernel(data)
	})
	if testKernel == nil {
		t.Skip("no guestkernel/prebuilt/vmlinux")
	}
	return testKernel
}

func buildDiff(t testing.TB, name string, diff []byte) (*Plan, []byte, error) {
	t.Helper()
	return Build(diff, Options{Src: "../guestkernel", Kernel: guestKernel(t), KernelName: "guestkernel/prebuilt/vmlinux",
		DiffName: name, Cache: testCache})
}

func TestBuildOne(t *testing.T) {
	d, err := os.ReadFile(os.Getenv("KLP_DIFF"))
	if err != nil {
		t.Skip(err)
	}
	p, obj, err := buildDiff(t, os.Getenv("KLP_DIFF"), d)
	if p != nil {
		p.WriteText(os.Stderr)
	}
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile("/tmp/pbt/out.o", obj, 0o644)
}
