package klpbin

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

func TestPathFromEnv(t *testing.T) {
	t.Setenv("KLP_KVM_BIN", "/opt/klp-kvm")
	if got := Path(t); got != "/opt/klp-kvm" {
		t.Errorf("Path = %q, want $KLP_KVM_BIN", got)
	}
}

func TestPathBuilds(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the CLI")
	}
	t.Setenv("KLP_KVM_BIN", "")
	os.Unsetenv("KLP_KVM_BIN")
	bin := Path(t)
	out, err := exec.Command(bin, "--help").CombinedOutput()
	if !strings.Contains(string(out), "klp-kvm") {
		t.Errorf("%s --help: %v\n%s", bin, err, out)
	}
}
