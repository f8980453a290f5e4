package patchbuild

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"klp-kvm/elfpatch"
)

// A synthetic kernel for what the guest kernel does not have: a compiler
// clone present in the running kernel, and __LINE__ in code below a hunk.
// The tree is compiled with the guest kernel's flags and linked at the
// kernel's address with ld's default script (its __mcount_loc section is
// what elfpatch reads).

const synthA = `#include "h.h"
#define noinline __attribute__((noinline))
struct pair { int a; int b; long pad[4]; };

int changed_first(int x)
{
	return x + 1;
}

int uses_line(void)
{
	return __LINE__;
}

static noinline int scale(struct pair *p, int k)
{
	return p->a * k + 1;
}

int use_scale1(struct pair *p) { return scale(p, 3); }
int use_scale2(struct pair *p) { return scale(p, 3) + 1; }

int uses_header(int x) { return twice(x); }
`

const synthH = `static inline int twice(int x)
{
	return 2 * x;
}
`

type synthTree struct {
	dir    string
	kernel *elfpatch.Kernel
}

func newSynthTree(t *testing.T) *synthTree {
	t.Helper()
	return newSynthTreeOf(t, map[string]string{"a.c": synthA, "h.h": synthH})
}

// newSynthTreeOf builds a synthetic kernel from the given files (a.c is
// the only unit).
func newSynthTreeOf(t *testing.T, files map[string]string) *synthTree {
	t.Helper()
	for _, tool := range []string{"gcc", "ld", "make"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("no %s", tool)
		}
	}
	out, err := exec.Command("make", "-s", "--no-print-directory", "-C", "../guestkernel", "print-cflags").Output()
	if err != nil {
		t.Fatal(err)
	}
	var flags []string
	for _, f := range strings.Fields(string(out)) {
		if !strings.HasPrefix(f, "-I") && !strings.HasPrefix(f, "-ffile-prefix-map") {
			flags = append(flags, f)
		}
	}
	dir := t.TempDir()
	mk := "CFLAGS := " + strings.Join(flags, " ") + " -ffile-prefix-map=$(CURDIR)/=\n" +
		"print-cflags:\n\t@echo $(CFLAGS)\nprint-srcs:\n\t@echo $(sort $(wildcard *.c))\n"
	write := func(name, s string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("Makefile", mk)
	for name, text := range files {
		write(name, text)
	}
	run := func(name string, args ...string) {
		cmd := exec.Command(name, args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
	}
	run("gcc", append(append([]string{}, flags...), "-ffile-prefix-map="+dir+"/=", "-c", "a.c", "-o", "a.o")...)
	run("ld", "-m", "elf_x86_64", "-nostdlib", "-static", "-Ttext=0xffffffff81000000", "-e", "0", "--build-id=none",
		"-z", "noexecstack", "-o", "vmlinux", "a.o")
	data, err := os.ReadFile(filepath.Join(dir, "vmlinux"))
	if err != nil {
		t.Fatal(err)
	}
	k, err := elfpatch.ParseKernel(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(k.FentrySites()) == 0 {
		t.Fatal("the synthetic kernel has no fentry sites")
	}
	os.Remove(filepath.Join(dir, "a.o"))
	return &synthTree{dir: dir, kernel: k}
}

func (s *synthTree) build(t *testing.T, diff string) (*Plan, []byte, error) {
	t.Helper()
	return Build([]byte(diff), Options{Src: s.dir, Kernel: s.kernel, KernelName: "synthetic vmlinux", DiffName: "synth.diff"})
}

func changedNames(p *Plan) []string {
	var out []string
	for _, f := range p.Changed {
		out = append(out, f.Name)
	}
	slices.Sort(out)
	return out
}

func TestSynthCloneInKernel(t *testing.T) {
	s := newSynthTree(t)
	if _, err := s.kernel.Lookup("scale.constprop.0.isra.0", 0); err != nil {
		t.Skipf("gcc made no clone of scale here: %v", err)
	}
	diff := "--- a/a.c\n+++ b/a.c\n@@ -17,3 +17,3 @@ static noinline int scale(struct pair *p, int k)\n {\n-\treturn p->a * k + 1;\n+\treturn p->a * k + 2;\n }\n"
	plan, obj, err := s.build(t, diff)
	if err != nil {
		t.Fatal(err)
	}
	// The clone cannot be redirected: its callers are, and they call the
	// patch's copy of the clone.
	if got := changedNames(plan); !slices.Equal(got, []string{"use_scale1", "use_scale2"}) {
		t.Fatalf("changed %v", got)
	}
	if len(plan.New) != 1 || normName(plan.New[0].Name) != "scale.constprop.isra" {
		t.Fatalf("new %+v", plan.New)
	}
	for _, f := range plan.Changed {
		if !strings.Contains(f.Reason, "compiler clone") {
			t.Errorf("%s: reason %q", f.Name, f.Reason)
		}
	}
	p, err := elfpatch.ParsePatch(obj)
	if err != nil {
		t.Fatal(err)
	}
	im, err := p.Layout(0xffffffffa0000000, s.kernel)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range im.Relocs {
		if strings.HasPrefix(r.Symbol, "scale") && r.Source != elfpatch.SourcePatch {
			t.Errorf("a call to the clone goes to the kernel's: %+v", r)
		}
	}
}

func TestSynthLineNumbers(t *testing.T) {
	s := newSynthTree(t)
	diff := "--- a/a.c\n+++ b/a.c\n@@ -5,4 +5,6 @@\n int changed_first(int x)\n {\n-\treturn x + 1;\n+\tif (x < 0)\n+\t\treturn 0;\n+\treturn x + 1;\n }\n"
	plan, _, err := s.build(t, diff)
	if err != nil {
		t.Fatal(err)
	}
	if got := changedNames(plan); !slices.Equal(got, []string{"changed_first"}) {
		t.Fatalf("changed %v: uses_line's __LINE__ moved", got)
	}
	// Without the #line directives uses_line would change too.
	lineDirectives = false
	defer func() { lineDirectives = true }()
	plan, _, err = s.build(t, diff)
	if err != nil {
		t.Fatal(err)
	}
	if got := changedNames(plan); !slices.Equal(got, []string{"changed_first", "uses_line"}) {
		t.Fatalf("without #line: changed %v", got)
	}
}

func TestSynthMismatchAndNoChange(t *testing.T) {
	s := newSynthTree(t)
	plan, _, err := s.build(t, "--- a/a.c\n+++ b/a.c\n@@ -2,2 +2,3 @@\n #define noinline __attribute__((noinline))\n+/* a comment */\n struct pair { int a; int b; long pad[4]; };\n")
	if !errors.Is(err, ErrRefused) || len(plan.Refused) != 1 || plan.Refused[0].Kind != KindNoChange {
		t.Fatalf("comment only: %v %+v", err, plan)
	}
	// The tree no longer is what the kernel was built from.
	src := filepath.Join(s.dir, "a.c")
	if err := os.WriteFile(src, []byte(strings.Replace(synthA, "return x + 1;", "return x + 3;", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	_, _, err = s.build(t, "--- a/a.c\n+++ b/a.c\n@@ -11,3 +11,3 @@\n {\n-\treturn __LINE__;\n+\treturn __LINE__ + 1;\n }\n")
	if !errors.Is(err, ErrMismatch) || !strings.Contains(err.Error(), "changed_first (a.c): code differs from the kernel's") {
		t.Fatalf("got %v", err)
	}
}

func TestNoCompiler(t *testing.T) {
	_, _, err := Build([]byte("--- a/x.c\n+++ b/x.c\n@@ -1 +1 @@\n-a\n+b\n"), Options{Src: "../guestkernel", Kernel: guestKernel(t), CC: "/nonexistent/gcc"})
	if !errors.Is(err, ErrNoCompiler) || !strings.Contains(err.Error(), "build-essential") {
		t.Fatalf("got %v", err)
	}
}

// TestSynthNewFile: a diff that adds a source file; the changed function
// calls a global function of the new file, which the patch carries.
func TestSynthNewFile(t *testing.T) {
	s := newSynthTree(t)
	diff := "diff --git a/b.c b/b.c\nnew file mode 100644\n--- /dev/null\n+++ b/b.c\n@@ -0,0 +1,4 @@\n+int clamp_nonneg(int x)\n+{\n+\treturn x < 0 ? 0 : x;\n+}\n" +
		"diff --git a/a.c b/a.c\n--- a/a.c\n+++ b/a.c\n@@ -2,8 +2,9 @@\n #define noinline __attribute__((noinline))\n struct pair { int a; int b; long pad[4]; };\n+int clamp_nonneg(int x);\n \n int changed_first(int x)\n {\n-\treturn x + 1;\n+\treturn clamp_nonneg(x) + 1;\n }\n \n"
	plan, obj, err := s.build(t, diff)
	if err != nil {
		t.Fatal(err)
	}
	if got := changedNames(plan); !slices.Equal(got, []string{"changed_first"}) {
		t.Fatalf("changed %v", got)
	}
	if len(plan.New) != 1 || plan.New[0].Name != "clamp_nonneg" || plan.New[0].Unit != "b.c" {
		t.Fatalf("new %+v", plan.New)
	}
	if len(plan.Files) != 2 || plan.Files[0].Kind != "new" {
		t.Fatalf("files %+v", plan.Files)
	}
	p, err := elfpatch.ParsePatch(obj)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Layout(0xffffffffa0000000, s.kernel); err != nil {
		t.Fatal(err)
	}
}

// TestSynthHeader: a changed static inline in a header changes the
// functions of the units that include it.
func TestSynthHeader(t *testing.T) {
	s := newSynthTree(t)
	plan, _, err := s.build(t, "--- a/h.h\n+++ b/h.h\n@@ -1,4 +1,4 @@\n static inline int twice(int x)\n {\n-\treturn 2 * x;\n+\treturn x + x + 1;\n }\n")
	if err != nil {
		t.Fatal(err)
	}
	if got := changedNames(plan); !slices.Equal(got, []string{"uses_header"}) || !slices.Equal(plan.Units, []string{"a.c"}) {
		t.Fatalf("changed %v, units %v", got, plan.Units)
	}
}

// TestSynthStaticLocalRenumbered: gcc numbers static locals per unit
// (count.0, count.1); a new one in an earlier function renumbers the
// others. They are paired by the functions that use them, so only the
// function the diff changes is patched, and it uses the kernel's variable.
func TestSynthStaticLocalRenumbered(t *testing.T) {
	src := `int first(int x)
{
	return x;
}

int second(void)
{
	static int count;
	return ++count;
}

int third(void)
{
	static int count = 10;
	return ++count;
}
`
	s := newSynthTreeOf(t, map[string]string{"a.c": src})
	if len(s.kernel.LookupAll("count.0")) != 1 || len(s.kernel.LookupAll("count.1")) != 1 {
		t.Skip("gcc numbered the static locals differently")
	}
	diff := "--- a/a.c\n+++ b/a.c\n@@ -1,4 +1,5 @@\n int first(int x)\n {\n-\treturn x;\n+\tstatic int count;\n+\treturn x + count++;\n }\n"
	plan, obj, err := s.build(t, diff)
	if err != nil {
		t.Fatal(err)
	}
	if got := changedNames(plan); !slices.Equal(got, []string{"first"}) {
		t.Fatalf("changed %v", got)
	}
	if len(plan.Data) != 1 || !strings.HasPrefix(plan.Data[0].Name, "count.") {
		t.Fatalf("data %+v: want first's new count", plan.Data)
	}
	if _, err := elfpatch.ParsePatch(obj); err != nil {
		t.Fatal(err)
	}
}
