// Package klpbin gives end-to-end tests a klp-kvm binary to run as a user
// would: the one test/nested ships into its VM ($KLP_KVM_BIN; the VM has
// no Go toolchain and no source tree), else one built from this tree
// once per test.
package klpbin

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// Path returns the klp-kvm binary's path; the test is skipped when there
// is neither $KLP_KVM_BIN nor a go toolchain to build one.
func Path(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("KLP_KVM_BIN"); p != "" {
		return p
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go toolchain and no $KLP_KVM_BIN: cannot get a klp-kvm binary")
	}
	bin := filepath.Join(t.TempDir(), "klp-kvm")
	if out, err := exec.Command(goBin, "build", "-o", bin, "klp-kvm/cmd/klp-kvm").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}
