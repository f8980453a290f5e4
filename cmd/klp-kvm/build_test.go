package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"klp-kvm/elfpatch"
)

const fixes = "../../guestkernel/fixes/"

func needGCC(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Skip("no gcc")
	}
}

func runBuild(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = dispatch(append([]string{"build"}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

// TestBuildCLI: a fix built twice gives the same bytes, a patch object that
// inspect accepts; --dry-run --json prints the plan and writes nothing.
func TestBuildCLI(t *testing.T) {
	needGCC(t)
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.o"), filepath.Join(dir, "b.o")
	fix := fixes + "02-status-state-name.diff"
	for _, out := range []string{a, b} {
		code, stdout, stderr := runBuild(t, "--src", "../../guestkernel", "-o", out, fix)
		if code != 0 {
			t.Fatalf("exit %d: %s%s", code, stdout, stderr)
		}
		if !strings.Contains(stdout, "pid_file_show (kernel/vfs.c") || !strings.Contains(stdout, "wrote "+out) {
			t.Fatalf("plan:\n%s", stdout)
		}
	}
	da, _ := os.ReadFile(a)
	db, _ := os.ReadFile(b)
	if len(da) == 0 || !bytes.Equal(da, db) {
		t.Fatalf("two builds of one diff differ (%d and %d bytes)", len(da), len(db))
	}
	p, err := elfpatch.ParsePatchFile(a)
	if err != nil {
		t.Fatal(err)
	}
	if p.Name != "02_status_state_name" || len(p.Funcs()) != 1 || p.Funcs()[0].OldName != "pid_file_show" {
		t.Fatalf("patch %s funcs %+v", p.Name, p.Funcs())
	}
	var out, errb bytes.Buffer
	if code := dispatch([]string{"inspect", a, "--kernel", "../../guestkernel/prebuilt/vmlinux"}, &out, &errb); code != 0 {
		t.Fatalf("inspect: exit %d: %s%s", code, out.String(), errb.String())
	}

	dry := filepath.Join(dir, "dry.o")
	code, stdout, stderr := runBuild(t, "--dry-run", "--json", "--name", "my-fix", "-o", dry, fixes+"13-proc-loadavg.diff")
	if code != 0 {
		t.Fatalf("dry run: exit %d: %s", code, stderr)
	}
	var plan struct {
		Name    string `json:"name"`
		Changed []struct{ Name string }
		New     []struct{ Name string }
		Data    []struct{ Name string }
		Output  struct{ Path string }
	}
	if err := json.Unmarshal([]byte(stdout), &plan); err != nil {
		t.Fatalf("%v:\n%s", err, stdout)
	}
	if plan.Name != "my-fix" || len(plan.Changed) != 3 || len(plan.New) != 1 || len(plan.Data) != 1 || plan.Output.Path != "" {
		t.Fatalf("plan %+v", plan)
	}
	if _, err := os.Stat(dry); err == nil {
		t.Fatal("--dry-run wrote the object")
	}
}

// TestBuildCLIRefused: a refusal names the symbol and the reason, exits 1
// and writes nothing; so do a diff that does not apply and a missing
// compiler.
func TestBuildCLIRefused(t *testing.T) {
	needGCC(t)
	dir := t.TempDir()
	out := filepath.Join(dir, "x.o")
	cases := []struct {
		fix, want string
		env       string
	}{
		{"20-refuse-data-initializer.diff", "worker_sleep_ms (kernel/workload.c): static variable's initializer changed", ""},
		{"22-refuse-notrace.diff", "memcmp (kernel/lib.c): changed, but the kernel cannot redirect it", ""},
		{"24-refuse-does-not-apply.diff", "apply kernel/cmdline.c (diff line 14): the diff does not apply: hunk #1", ""},
		{"01-stat-procs-running.diff", `C compiler "/nonexistent/cc" not found`, "/nonexistent/cc"},
	}
	for _, c := range cases {
		t.Run(c.fix, func(t *testing.T) {
			if c.env != "" {
				t.Setenv("CC", c.env)
			}
			code, stdout, stderr := runBuild(t, "--src", "../../guestkernel", "-o", out, fixes+c.fix)
			if code != 1 || !strings.Contains(stdout+stderr, c.want) {
				t.Fatalf("exit %d, want 1 and %q:\n%s%s", code, c.want, stdout, stderr)
			}
			if _, err := os.Stat(out); err == nil {
				t.Fatal("a refused build wrote its object")
			}
		})
	}
	if code, _, _ := runBuild(t); code != 2 {
		t.Errorf("no diff: exit %d, want 2", code)
	}
	if code, _, _ := runBuild(t, "--name", "bad name", fixes+"01-stat-procs-running.diff"); code != 2 {
		t.Errorf("bad name: exit %d, want 2", code)
	}
}
