package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"
)

// The repository's root, from this package's directory.
const repoRoot = "../../.."

// TestCommittedFilesMatch regenerates every output into a temporary
// directory and compares it with the committed file byte for byte: a
// generator changed without regenerating, or an output edited by hand,
// fails here.
func TestCommittedFilesMatch(t *testing.T) {
	files, err := generate(benchFuncs)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := write(dir, files); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{kernelHeader, kernelSource, patchSource, elfpatchSrc} {
		got, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		want, err := os.ReadFile(filepath.Join(repoRoot, name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s differs from what guestkernel/scripts/genbench generates (%d bytes, committed %d): run go run ./guestkernel/scripts/genbench, then make -C guestkernel prebuilt and sh elfpatch/testdata/kernel/build.sh",
				name, len(got), len(want))
		}
	}
	if len(files) != 4 {
		t.Errorf("%d outputs, the test compares 4", len(files))
	}
}

// TestCount: the count is one parameter for every output.
func TestCount(t *testing.T) {
	const n = 3
	files, err := generate(n)
	if err != nil {
		t.Fatal(err)
	}
	defs := map[string]*regexp.Regexp{
		kernelHeader: regexp.MustCompile(`(?m)^unsigned long bench_fn_\d{4}\(unsigned long x\);$`),
		kernelSource: regexp.MustCompile(`(?m)^__patchable unsigned long bench_fn_\d{4}\(`),
		patchSource:  regexp.MustCompile(`(?m)^\t\{ \.old_name = "bench_fn_\d{4}"`),
		elfpatchSrc:  regexp.MustCompile(`(?m)^unsigned long bench_fn_\d{4}\(`),
	}
	for name, re := range defs {
		if got := len(re.FindAll(files[name], -1)); got != n {
			t.Errorf("%s: %d functions, want %d", name, got, n)
		}
		if want := fmt.Sprintf("bench_fn_%04d", n); bytes.Contains(files[name], []byte(want)) {
			t.Errorf("%s names %s, beyond %d functions", name, want, n)
		}
	}
	if !bytes.Contains(files[kernelHeader], []byte(fmt.Sprintf("#define BENCH_NR_FNS %d\n", n))) {
		t.Errorf("%s does not define BENCH_NR_FNS %d", kernelHeader, n)
	}
	for _, bad := range []int{0, 10000} {
		if _, err := generate(bad); err == nil {
			t.Errorf("%d functions accepted", bad)
		}
	}
}

// write leaves a file whose content is right alone (make then sees no
// change), and rewrites one that differs.
func TestWriteOnlyChanges(t *testing.T) {
	dir := t.TempDir()
	old := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	for name, b := range map[string]string{"a/same": "same\n", "a/diff": "old\n"} {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(b), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatal(err)
		}
	}
	if err := write(dir, map[string][]byte{"a/same": []byte("same\n"), "a/diff": []byte("new\n")}); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(filepath.Join(dir, "a/same")); err != nil || !st.ModTime().Equal(old) {
		t.Fatalf("unchanged file rewritten (%v)", err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "a/diff")); string(b) != "new\n" {
		t.Fatalf("changed file not rewritten: %q", b)
	}
}
