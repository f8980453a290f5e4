package patchbuild

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
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
