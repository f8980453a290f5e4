package layering

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

const module = "klp-kvm"

// universal packages may be imported by any package: the error convention.
var universal = map[string]bool{"klperr": true}

type row struct {
	pkgs    []string // the package (or packages) the row is about
	allowed []string // what they may import of ours; nil with everything set
	below   bool     // "everything below"
	all     bool     // "everything" (tests)
	none    bool     // "nothing of the product"
}

var codeRE = regexp.MustCompile("`([^`]+)`")

// packageMap parses the package-map table of docs/architecture.md.
func packageMap(t *testing.T, root string) []row {
	f, err := os.Open(filepath.Join(root, "docs", "architecture.md"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var rows []row
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "| package | job |"):
			in = true
			continue
		case in && strings.HasPrefix(line, "|---"):
			continue
		case in && !strings.HasPrefix(line, "|"):
			in = false
		}
		if !in {
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		if len(cells) != 3 {
			t.Fatalf("package map row with %d cells: %q", len(cells), line)
		}
		var r row
		for _, m := range codeRE.FindAllStringSubmatch(cells[0], -1) {
			r.pkgs = append(r.pkgs, strings.TrimSuffix(m[1], "/..."))
		}
		may := strings.TrimSpace(cells[2])
		switch {
		case strings.HasPrefix(may, "everything below"):
			r.below = true
		case strings.HasPrefix(may, "everything"):
			r.all = true
		case strings.HasPrefix(may, "nothing"):
			r.none = true
		default:
			for _, m := range codeRE.FindAllStringSubmatch(may, -1) {
				r.allowed = append(r.allowed, m[1])
			}
		}
		rows = append(rows, r)
	}
	if len(rows) < 10 {
		t.Fatalf("package map has %d rows: not found?", len(rows))
	}
	return rows
}

type goPackage struct {
	ImportPath string
	Imports    []string
}

// imports lists every package of the module with its imports of ours
// (non-test files: `go list` without -test).
func imports(t *testing.T, root string) map[string][]string {
	cmd := exec.Command("go", "list", "-json", "./...")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Skipf("go list: %v", err)
	}
	got := map[string][]string{}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for dec.More() {
		var p goPackage
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		rel := strings.TrimPrefix(strings.TrimPrefix(p.ImportPath, module), "/")
		var ours []string
		for _, i := range p.Imports {
			if i == module || strings.HasPrefix(i, module+"/") {
				ours = append(ours, strings.TrimPrefix(i, module+"/"))
			}
		}
		got[rel] = ours
	}
	return got
}

// TestImportGraphMatchesPackageMap: every package of the module is in the
// package map, and imports only what its row allows — so the map in the
// docs is the graph, and nothing climbs back up.
func TestImportGraphMatchesPackageMap(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	rows := packageMap(t, root)
	graph := imports(t, root)
	rowOf := func(pkg string) int {
		best, bestLen := -1, -1
		for i, r := range rows {
			for _, p := range r.pkgs {
				if (pkg == p || strings.HasPrefix(pkg, p+"/")) && len(p) > bestLen {
					best, bestLen = i, len(p)
				}
			}
		}
		return best
	}
	var pkgs []string
	for p := range graph {
		pkgs = append(pkgs, p)
	}
	sort.Strings(pkgs)
	checked := 0
	for _, pkg := range pkgs {
		if pkg == "" {
			continue
		}
		i := rowOf(pkg)
		if i < 0 {
			t.Errorf("package %s is not in docs/architecture.md's package map", pkg)
			continue
		}
		r := rows[i]
		for _, imp := range graph[pkg] {
			j := rowOf(imp)
			ok := universal[imp] || r.all || imp == pkg
			switch {
			case ok:
			case r.none:
				ok = j == i // test/nested/... among themselves
			case r.below:
				ok = j > i
			default:
				for _, a := range r.allowed {
					if imp == a {
						ok = true
					}
				}
			}
			if !ok {
				t.Errorf("%s imports %s, which its row of the package map does not allow", pkg, imp)
			}
			if j >= 0 && j < i && !r.all && !universal[imp] {
				t.Errorf("%s imports %s, which is above it in the package map", pkg, imp)
			}
		}
		checked++
	}
	t.Logf("%d packages checked against %d rows of the package map", checked, len(rows))
}
