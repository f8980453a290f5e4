package livepatch

import (
	"bytes"
	"errors"
	"syscall"
	"testing"

	"klp-kvm/elfpatch"
	"klp-kvm/guestkernel"
	"klp-kvm/guestkernel/layout"
	"klp-kvm/livepatch/fakeguest"
)

// One parse is enough: a Manager given the parsed kernel (as the machine
// hands it out, kvm.Machine.Kernel) needs no image bytes, and patches as
// one that parsed them.
func TestNewWithParsedKernel(t *testing.T) {
	k, err := elfpatch.ParseKernel(guestkernel.Vmlinux())
	if err != nil {
		t.Fatal(err)
	}
	g, err := fakeguest.New(1)
	if err != nil {
		t.Fatal(err)
	}
	m, err := New(Config{Guest: g, Kernel: k, PatchArea: layout.PatchAreaVirt, PatchAreaSize: fakeguest.PatchSize})
	if err != nil {
		t.Fatal(err)
	}
	if m.kernel != k || m.syms.Kernel() != k {
		t.Fatal("the Manager did not use the kernel it was given")
	}
	if m.intro == nil {
		t.Fatal("klp_guest_abi not found through the shared kernel")
	}
	obj, err := guestkernel.Patch("livepatch-sample")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := m.Load(obj, "livepatch-sample.o", Options{}); err != nil {
		t.Fatal(err)
	}
	site := g.Sym("cmdline_proc_show")
	var code [elfpatch.FentrySize]byte
	if err := g.ReadVirt(site, code[:]); err != nil || code[0] != 0xe9 {
		t.Fatalf("site after enable: % x %v", code, err)
	}
	if _, err := m.Unload("livepatch_sample", Options{}); err != nil {
		t.Fatal(err)
	}

	// Given both, they must be the same image (a copy is fine).
	g2, err := fakeguest.New(1)
	if err != nil {
		t.Fatal(err)
	}
	same := bytes.Clone(guestkernel.Vmlinux())
	if _, err := New(Config{Guest: g2, Kernel: k, Vmlinux: same, PatchArea: layout.PatchAreaVirt, PatchAreaSize: fakeguest.PatchSize}); err != nil {
		t.Errorf("the same image twice: %v", err)
	}
	same[len(same)-1] ^= 1
	_, err = New(Config{Guest: g2, Kernel: k, Vmlinux: same, PatchArea: layout.PatchAreaVirt, PatchAreaSize: fakeguest.PatchSize})
	if !errors.Is(err, syscall.EINVAL) {
		t.Errorf("different images: %v", err)
	}
	// Neither: the image is missing.
	if _, err := New(Config{Guest: g2, PatchArea: layout.PatchAreaVirt, PatchAreaSize: fakeguest.PatchSize}); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("no kernel: %v", err)
	}
}
