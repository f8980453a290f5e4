package patchbuild

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"klp-kvm/elfpatch"
)

const corpusDir = "../guestkernel/fixes"

func corpus(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(corpusDir, "*.diff"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no corpus in %s (%v)", corpusDir, err)
	}
	return files
}

// TestCorpus builds every fix of guestkernel/fixes and checks what its
// trailers expect: the changed, new and carried functions and data, the
// refusals and warnings (with their messages), and errors. The e2e test
// (test/e2e/build_test.go) loads the same objects into a guest.
func TestCorpus(t *testing.T) {
	for _, path := range corpus(t) {
		t.Run(strings.TrimSuffix(filepath.Base(path), ".diff"), func(t *testing.T) {
			diff, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			spec, err := ParseFixSpec(diff)
			if err != nil {
				t.Fatal(err)
			}
			plan, obj, err := buildDiff(t, path, diff)
			checkSpec(t, spec, plan, obj, err)
		})
	}
}

func checkSpec(t *testing.T, spec *FixSpec, plan *Plan, obj []byte, err error) {
	t.Helper()
	var text strings.Builder
	if plan != nil {
		plan.WriteText(&text)
	}
	defer func() {
		if t.Failed() {
			t.Logf("plan:\n%s", text.String())
		}
	}()
	switch {
	case len(spec.Errors) > 0:
		if err == nil {
			t.Fatal("built; want an error")
		}
		for _, re := range spec.Errors {
			if !re.MatchString(err.Error()) {
				t.Errorf("error %q does not match %q", err, re)
			}
		}
	case len(spec.Refused) > 0:
		if !errors.Is(err, ErrRefused) {
			t.Fatalf("want a refusal, got %v", err)
		}
		for _, e := range spec.Refused {
			if !slices.ContainsFunc(plan.Refused, e.Matches) {
				t.Errorf("no refusal %s %s ~ %v in %v", e.Kind, e.Symbol, e.Message, plan.Refused)
			}
		}
	default:
		if err != nil {
			t.Fatal(err)
		}
		var changed []string
		for _, f := range plan.Changed {
			name := f.Name
			if slices.Contains(spec.Changed, fmt.Sprintf("%s,%d", f.Name, f.Sympos)) {
				name = fmt.Sprintf("%s,%d", f.Name, f.Sympos)
			}
			changed = append(changed, name)
		}
		want := slices.Clone(spec.Changed)
		slices.Sort(changed)
		slices.Sort(want)
		if !slices.Equal(changed, want) {
			t.Errorf("changed %v, want %v", changed, want)
		}
		for _, n := range spec.New {
			if !slices.ContainsFunc(plan.New, func(f PlanFunc) bool { return normName(f.Name) == normName(n) }) {
				t.Errorf("new function %s not carried (new: %v)", n, plan.New)
			}
		}
		for _, n := range spec.Data {
			if !slices.ContainsFunc(plan.Data, func(d PlanData) bool { return d.Name == n }) {
				t.Errorf("data %s not carried (data: %v)", n, plan.Data)
			}
		}
	}
	if err != nil && obj != nil {
		t.Error("an object came with an error")
	}
	for _, e := range spec.Warnings {
		if !slices.ContainsFunc(plan.Warnings, e.Matches) {
			t.Errorf("no warning %s %s ~ %v in %v", e.Kind, e.Symbol, e.Message, plan.Warnings)
		}
	}
}

// TestStaticLocalIsTheKernels: the patched cmd_dispatch uses the kernel's
// static local eo (through .klp.sym.vmlinux.eo.N,POS), never a copy.
func TestStaticLocalIsTheKernels(t *testing.T) {
	diff := readCorpus(t, "07-exec-output-newline.diff")
	plan, obj := mustBuild(t, "07.diff", diff)
	if len(plan.Data) != 0 {
		t.Fatalf("the patch carries data: %+v", plan.Data)
	}
	p, err := elfpatch.ParsePatch(obj)
	if err != nil {
		t.Fatal(err)
	}
	im, err := p.Layout(0xffffffffa0000000, guestKernel(t))
	if err != nil {
		t.Fatal(err)
	}
	eo := guestKernel(t).LookupAll("eo.0")
	if len(eo) != 1 {
		t.Fatalf("kernel eo.0: %v", eo)
	}
	n := 0
	for _, r := range im.Relocs {
		if strings.HasPrefix(r.Symbol, ".klp.sym.vmlinux.eo.") {
			if r.Target != eo[0].Value {
				t.Errorf("%+v does not reach the kernel's eo at %#x", r, eo[0].Value)
			}
			n++
		}
	}
	if n == 0 {
		t.Fatal("no reference to the kernel's eo")
	}
}

// readCorpus reads one diff of the corpus.
func readCorpus(t *testing.T, name string) []byte {
	t.Helper()
	diff, err := os.ReadFile(filepath.Join(corpusDir, name))
	if err != nil {
		t.Fatal(err)
	}
	return diff
}

// mustBuild is buildDiff that fails the test on an error.
func mustBuild(t *testing.T, name string, diff []byte) (*Plan, []byte) {
	t.Helper()
	plan, obj, err := buildDiff(t, name, diff)
	if err != nil {
		t.Fatal(err)
	}
	return plan, obj
}

// TestReproducible: one diff built twice gives the same bytes.
func TestReproducible(t *testing.T) {
	diff := readCorpus(t, "13-proc-loadavg.diff")
	_, a := mustBuild(t, "13.diff", diff)
	_, b, err := Build(diff, Options{Src: "../guestkernel", Kernel: guestKernel(t), KernelName: "k", DiffName: "13.diff"})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Fatal("two builds differ")
	}
}

// TestJumpTableIntoNewCode: json_str's switch is a jump table in
// .rodata.json_str; the patch's copy of it must send every case into the
// new json_str, never into the kernel's.
func TestJumpTableIntoNewCode(t *testing.T) {
	diff := readCorpus(t, "15-json-reject-nul.diff")
	_, obj := mustBuild(t, "15.diff", diff)
	p, err := elfpatch.ParsePatch(obj)
	if err != nil {
		t.Fatal(err)
	}
	im, err := p.Layout(0xffffffffa0000000, guestKernel(t))
	if err != nil {
		t.Fatal(err)
	}
	start, ok := im.SymbolAddr("json_str")
	if !ok {
		t.Fatal("no json_str in the patch")
	}
	n := 0
	for _, r := range im.Relocs {
		if !strings.HasPrefix(r.Section, ".rodata.json_str") {
			continue
		}
		n++
		if name, _, ok := im.Addr2Sym(r.Target + uint64(r.Addend)); r.Source != elfpatch.SourcePatch || !ok || name != "json_str" {
			t.Errorf("jump table entry %+v does not lead into the new json_str (at %#x)", r, start)
		}
	}
	if n == 0 {
		t.Fatal("no jump table carried")
	}
}

// TestPathForms: one fix written as git diff writes it in the repository
// (a/guestkernel/kernel/x.c), relative to the tree with a prefix to strip
// (a/kernel/x.c, patch -p1) or without (kernel/x.c, -p0), builds the same
// object; a file outside the tree is refused by name.
func TestPathForms(t *testing.T) {
	repo := string(readCorpus(t, "06-ps-header-command.diff"))
	p1 := strings.NewReplacer("a/guestkernel/", "a/", "b/guestkernel/", "b/").Replace(repo)
	p0 := strings.NewReplacer("diff --git a/guestkernel/kernel/vfs.c b/guestkernel/kernel/vfs.c\n", "",
		"a/guestkernel/", "", "b/guestkernel/", "").Replace(repo)
	var objs [][]byte
	for _, d := range []string{repo, p1, p0} {
		_, obj, err := buildDiff(t, "06-ps-header-command.diff", []byte(d))
		if err != nil {
			t.Fatalf("%v\n%s", err, d)
		}
		objs = append(objs, obj)
	}
	if !bytes.Equal(objs[0], objs[1]) || !bytes.Equal(objs[0], objs[2]) {
		t.Fatal("the path forms build different objects")
	}
	outside := repo + "diff --git a/docs/x.md b/docs/x.md\n--- a/docs/x.md\n+++ b/docs/x.md\n@@ -1 +1 @@\n-a\n+b\n"
	plan, _, err := buildDiff(t, "outside.diff", []byte(outside))
	if !errors.Is(err, ErrRefused) || len(plan.Refused) != 1 || plan.Refused[0].Kind != KindUnsupported || !strings.Contains(plan.Refused[0].Symbol, "docs/x.md") {
		t.Fatalf("got %v, %+v", err, plan.Refused)
	}
}
