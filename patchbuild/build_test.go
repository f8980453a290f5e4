package patchbuild

import (
	"os"
	"os/exec"
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
	for _, tool := range []string{"gcc", "make"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("no %s: klp-kvm build needs the kernel's compiler (CI installs build-essential)", tool)
		}
	}
	return Build(diff, Options{Src: "../guestkernel", Kernel: guestKernel(t), KernelName: "guestkernel/prebuilt/vmlinux",
		DiffName: name, Cache: testCache})
}

// TestBuildDiffEnv builds the diff named by $KLP_DIFF and prints its
// plan (a development aid: KLP_DIFF=x.diff go test -run TestBuildDiffEnv
// -v ./patchbuild); $KLP_OUT, if set, receives the object.
func TestBuildDiffEnv(t *testing.T) {
	path := os.Getenv("KLP_DIFF")
	if path == "" {
		t.Skip("$KLP_DIFF not set")
	}
	d, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	p, obj, err := buildDiff(t, path, d)
	if p != nil {
		p.WriteText(os.Stderr)
	}
	if err != nil {
		t.Fatal(err)
	}
	if out := os.Getenv("KLP_OUT"); out != "" {
		if err := os.WriteFile(out, obj, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
