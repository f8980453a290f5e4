package elfpatch

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestTestdataReproducible rebuilds the fixture kernel and the test-only
// patch objects from their sources (testdata/kernel/build.sh, into a
// temporary directory) and compares them with the committed ones byte for
// byte, so that a source changed without rebuilding, or an object changed
// without its source, fails. It needs gcc and ld and skips only without
// them; the committed objects come from Debian 12's gcc 12.2 and binutils
// 2.40, and another version may generate other code (the failure names it).
func TestTestdataReproducible(t *testing.T) {
	for _, tool := range []string{"gcc", "ld"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("no %s: testdata objects not rebuilt", tool)
		}
	}
	out := t.TempDir()
	if b, err := exec.Command("sh", "testdata/kernel/build.sh", out).CombinedOutput(); err != nil {
		t.Fatalf("testdata/kernel/build.sh: %v\n%s", err, b)
	}
	srcs, err := filepath.Glob(filepath.Join(testPatchesDir, "*.[cS]"))
	if err != nil || len(srcs) == 0 {
		t.Fatalf("no patch sources in %s (%v)", testPatchesDir, err)
	}
	objs := []string{"kernel/vmlinux"}
	for _, src := range srcs {
		objs = append(objs, "patches/"+strings.TrimSuffix(filepath.Base(src), filepath.Ext(src))+".o")
	}
	var stale []string
	for _, o := range objs {
		got, err := os.ReadFile(filepath.Join(out, o))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, readFile(t, filepath.Join("testdata", o))) {
			stale = append(stale, "testdata/"+o)
		}
	}
	// Every committed object has its source.
	committed, _ := filepath.Glob(filepath.Join(testPatchesDir, "*.o"))
	if len(committed) != len(srcs) {
		t.Errorf("%d objects in %s for %d sources", len(committed), testPatchesDir, len(srcs))
	}
	if len(stale) > 0 {
		ver, _ := exec.Command("gcc", "--version").Output()
		first, _, _ := strings.Cut(string(ver), "\n")
		t.Fatalf("%s: not what the sources build to with this toolchain (%s; the committed objects are Debian 12's gcc 12.2 and binutils 2.40): rebuild with sh elfpatch/testdata/kernel/build.sh",
			strings.Join(stale, ", "), first)
	}
	t.Logf("%d objects rebuilt, identical", len(objs))
}
