package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var updateGolden = flag.Bool("update", false, "rewrite testdata/inspect golden files")

const (
	fixtureKernel = "../../elfpatch/testdata/kernel/vmlinux"
	patchDir      = "../../guestkernel/prebuilt/patches/"
)

func TestInspectGolden(t *testing.T) {
	old := inspectDefaultKernel
	inspectDefaultKernel = func() (string, []byte) { return "", nil }
	defer func() { inspectDefaultKernel = old }()

	cases := []struct {
		golden string
		args   []string
		code   int
	}{
		{"kernel.txt", []string{fixtureKernel}, 0},
		{"kernel-symbol.txt", []string{fixtureKernel, "--symbol", "klp_dup_fn"}, 0},
		{"kernel-symbol.json", []string{"--json", fixtureKernel, "--symbol=klp_dup_fn"}, 0},
		{"kernel-nosymbol.txt", []string{fixtureKernel, "--symbol", "no_such_symbol"}, 1},
		{"sample.txt", []string{patchDir + "livepatch-sample.o", "--kernel", fixtureKernel}, 0},
		{"sample.json", []string{patchDir + "livepatch-sample.o", "--kernel", fixtureKernel, "--json"}, 0},
		{"sample-nokernel.txt", []string{patchDir + "livepatch-sample.o"}, 0},
		{"sample2.txt", []string{patchDir + "livepatch-sample2.o", "--kernel", fixtureKernel}, 0},
		{"sympos.txt", []string{patchDir + "livepatch-sympos.o", "--kernel", fixtureKernel}, 0},
		{"callbacks.txt", []string{patchDir + "livepatch-callbacks.o", "--kernel", fixtureKernel}, 0},
		{"replace.txt", []string{patchDir + "livepatch-replace.o", "--kernel", fixtureKernel}, 0},
		{"bad-unknown-reloc.txt", []string{patchDir + "bad-unknown-reloc.o", "--kernel", fixtureKernel}, 1},
		{"bad-duplicate.txt", []string{patchDir + "bad-duplicate.o", "--kernel", fixtureKernel}, 1},
		{"bad-notpatchable.txt", []string{patchDir + "bad-notpatchable.o", "--kernel", fixtureKernel}, 1},
		{"bad-unresolved.json", []string{"--json", patchDir + "bad-unresolved.o", "--kernel", fixtureKernel}, 1},
		{"module-obj.txt", []string{"../../elfpatch/testdata/patches/module-obj.o", "--kernel", fixtureKernel}, 1},
		{"states.txt", []string{"../../elfpatch/testdata/patches/states.o", "--kernel", fixtureKernel}, 0},
		{"states.json", []string{"--json", "../../elfpatch/testdata/patches/states.o", "--kernel", fixtureKernel}, 0},
		{"abi1.txt", []string{"../../elfpatch/testdata/patches/abi1.o", "--kernel", fixtureKernel}, 0},
		{"range.txt", []string{patchDir + "livepatch-sample.o", "--kernel", fixtureKernel, "--base", "0x100000000000"}, 1},
	}
	for _, c := range cases {
		t.Run(c.golden, func(t *testing.T) {
			var out, errb bytes.Buffer
			code := cmdInspect(c.args, &out, &errb)
			if code != c.code {
				t.Fatalf("exit %d, want %d; stderr: %s", code, c.code, errb.String())
			}
			if strings.HasSuffix(c.golden, ".json") && !json.Valid(out.Bytes()) {
				t.Fatalf("output is not JSON:\n%s", out.String())
			}
			path := filepath.Join("testdata", "inspect", c.golden)
			if *updateGolden {
				if err := os.WriteFile(path, out.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test -run TestInspectGolden -update)", err)
			}
			if !bytes.Equal(out.Bytes(), want) {
				t.Errorf("output differs from %s:\n--- got\n%s\n--- want\n%s", path, out.String(), want)
			}
		})
	}
}

func TestInspectUsage(t *testing.T) {
	for _, args := range [][]string{
		nil,
		{"a", "b"},
		{"--nope", fixtureKernel},
		{fixtureKernel, "--kernel", fixtureKernel},
		{patchDir + "livepatch-sample.o", "--symbol", "x"},
		{"--base", "notanumber", fixtureKernel},
	} {
		var out, errb bytes.Buffer
		if code := cmdInspect(args, &out, &errb); code != 2 {
			t.Errorf("%q: exit %d, want 2 (stderr %q)", args, code, errb.String())
		}
		if errb.Len() == 0 {
			t.Errorf("%q: no usage message", args)
		}
	}
	var out, errb bytes.Buffer
	if code := cmdInspect([]string{"--help"}, &out, &errb); code != 0 || !strings.Contains(out.String(), "usage:") {
		t.Errorf("--help: exit %d, output %q", code, out.String())
	}
}

func TestInspectBadInput(t *testing.T) {
	dir := t.TempDir()
	junk := filepath.Join(dir, "junk")
	if err := os.WriteFile(junk, []byte("\x7fELF not really"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{junk}, {filepath.Join(dir, "missing")}, {dir}} {
		var out, errb bytes.Buffer
		if code := cmdInspect(args, &out, &errb); code != 1 || errb.Len() == 0 {
			t.Errorf("%q: exit %d stderr %q, want 1 with a message", args, code, errb.String())
		}
	}
}

func TestInspectDefaultKernel(t *testing.T) {
	// From inside the repository the default is the prebuilt vmlinux file
	// when it exists, else the embedded image.
	name, data := inspectDefaultKernel()
	if st, err := os.Stat("../../guestkernel/prebuilt/vmlinux"); err == nil && st.Mode().IsRegular() {
		if !strings.HasSuffix(name, "guestkernel/prebuilt/vmlinux") || int64(len(data)) != st.Size() {
			t.Errorf("default kernel %q (%d bytes)", name, len(data))
		}
	} else if name != "embedded guest kernel" && name != "" {
		t.Errorf("default kernel %q", name)
	}
	// And a patch inspected without --kernel resolves against it.
	if name == "" {
		t.Skip("no guest kernel at all")
	}
	old := inspectDefaultKernel
	defer func() { inspectDefaultKernel = old }()
	inspectDefaultKernel = func() (string, []byte) { return "test kernel", data }
	var out, errb bytes.Buffer
	if code := cmdInspect([]string{patchDir + "livepatch-sample.o"}, &out, &errb); code != 0 ||
		!strings.Contains(out.String(), "kernel: test kernel") || strings.Contains(out.String(), "unresolved") {
		t.Errorf("exit %d:\n%s%s", code, out.String(), errb.String())
	}
}
