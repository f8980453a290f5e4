package patchbuild

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const sampleFile = `line 1
line 2
line 3
line 4
line 5
line 6
line 7
line 8
line 9
line 10
`

func mustParse(t *testing.T, d string) *Diff {
	t.Helper()
	p, err := ParseDiff([]byte(d))
	if err != nil {
		t.Fatalf("parse: %v\n%s", err, d)
	}
	return p
}

func TestParseDiffForms(t *testing.T) {
	cases := []struct {
		name, diff   string
		old, new     string
		newFile, del bool
		rename, bin  bool
		modeOnly     bool
		hunks        int
	}{
		{"git", "diff --git a/k/x.c b/k/x.c\nindex 1..2 100644\n--- a/k/x.c\n+++ b/k/x.c\n@@ -1,2 +1,2 @@ f(void)\n-a\n+b\n c\n",
			"a/k/x.c", "b/k/x.c", false, false, false, false, false, 1},
		{"diff -u with timestamps", "--- x.c\t2024-01-01 00:00:00.000000000 +0000\n+++ x.c\t2024-01-02 00:00:00.000000000 +0000\n@@ -1 +1 @@\n-a\n+b\n",
			"x.c", "x.c", false, false, false, false, false, 1},
		{"format-patch", "From abc Mon Sep 17 00:00:00 2001\nSubject: [PATCH] fix\n\nbody\n---\n x.c | 2 +-\n\ndiff --git a/x.c b/x.c\n--- a/x.c\n+++ b/x.c\n@@ -1 +1 @@\n-a\n+b\n-- \n2.39.2\n",
			"a/x.c", "b/x.c", false, false, false, false, false, 1},
		{"new file", "diff --git a/n.c b/n.c\nnew file mode 100644\nindex 0000000..1\n--- /dev/null\n+++ b/n.c\n@@ -0,0 +1,2 @@\n+int x;\n+int y;\n",
			"/dev/null", "b/n.c", true, false, false, false, false, 1},
		{"deleted", "diff --git a/d.c b/d.c\ndeleted file mode 100644\n--- a/d.c\n+++ /dev/null\n@@ -1 +0,0 @@\n-int x;\n",
			"a/d.c", "/dev/null", false, true, false, false, false, 1},
		{"rename", "diff --git a/r.c b/s.c\nsimilarity index 100%\nrename from r.c\nrename to s.c\n",
			"a/r.c", "b/s.c", false, false, true, false, false, 0},
		{"binary", "diff --git a/b.bin b/b.bin\nindex 1..2 100644\nBinary files a/b.bin and b/b.bin differ\n",
			"a/b.bin", "b/b.bin", false, false, false, true, false, 0},
		{"mode only", "diff --git a/m.sh b/m.sh\nold mode 100644\nnew mode 100755\n",
			"a/m.sh", "b/m.sh", false, false, false, false, true, 0},
		{"empty context line without its space", "--- a/x.c\n+++ b/x.c\n@@ -1,3 +1,3 @@\n a\n\n-b\n+c\n",
			"a/x.c", "b/x.c", false, false, false, false, false, 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := mustParse(t, c.diff)
			if len(d.Files) != 1 {
				t.Fatalf("%d files", len(d.Files))
			}
			f := d.Files[0]
			if f.OldPath != c.old || f.NewPath != c.new || f.NewFile != c.newFile || f.Deleted != c.del ||
				f.Rename != c.rename || f.Binary != c.bin || f.ModeOnly != c.modeOnly || len(f.Hunks) != c.hunks {
				t.Fatalf("got %+v", f)
			}
		})
	}
}

func TestParseDiffErrors(t *testing.T) {
	for _, c := range []struct{ diff, want string }{
		{"", "no file changes found"},
		{"just some text\n", "no file changes found"},
		{"@@ -1 +1 @@\n-a\n+b\n", "hunk before any file header"},
		{"--- a/x\n+++ b/x\n@@ -1,2 +1,2 @@\n-a\n+b\n", "truncated"},
		{"--- a/x\n+++ b/x\n@@ -1,3 +1,3 @@\n-a\n+b\n?c\n", "ends early"},
		{"--- a/x\n+++ b/x\n@@ -x +1 @@\n-a\n+b\n", "malformed hunk header"},
		{"--- a/x\n+++ b/x\n@@ -1 +1\n-a\n+b\n", "malformed hunk header"},
	} {
		_, err := ParseDiff([]byte(c.diff))
		var de *Error
		if err == nil || !errors.As(err, &de) || !errors.Is(err, ErrDiff) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: got %v, want %q", c.diff, err, c.want)
		}
	}
}

func apply(t *testing.T, diff, old string) (*Applied, error) {
	t.Helper()
	d := mustParse(t, diff)
	return d.Files[0].Apply([]byte(old))
}

func TestApply(t *testing.T) {
	// exact place
	a, err := apply(t, "--- a/f\n+++ b/f\n@@ -2,3 +2,4 @@\n line 2\n-line 3\n+line three\n+line 3.5\n line 4\n", sampleFile)
	if err != nil {
		t.Fatal(err)
	}
	want := strings.Replace(sampleFile, "line 3\n", "line three\nline 3.5\n", 1)
	if string(a.Text()) != want || len(a.Offsets) != 0 {
		t.Fatalf("got %q offsets %v", a.Text(), a.Offsets)
	}
	// moved by 3 lines: applied at an offset, said so
	a, err = apply(t, "--- a/f\n+++ b/f\n@@ -2,3 +2,3 @@\n line 5\n-line 6\n+line six\n line 7\n", sampleFile)
	if err != nil || len(a.Offsets) != 1 || !strings.Contains(a.Offsets[0], "offset +3") {
		t.Fatalf("err %v offsets %v", err, a.Offsets)
	}
	// context that matches nowhere: the message names the hunk and the line
	_, err = apply(t, "--- a/f\n+++ b/f\n@@ -2,3 +2,3 @@ fn\n line 2\n-line 3 \n+line 3\n line 4\n", sampleFile)
	if !errors.Is(err, ErrApply) || !strings.Contains(err.Error(), `f (diff line 3): the diff does not apply: hunk #1 (@@ -2,3 +2,3 @@ fn): line 3 is "line 3", the hunk expects "line 3 "`) {
		t.Fatalf("got %v", err)
	}
	// insertion at the very start, append at the end, no newline at the end
	a, err = apply(t, "--- a/f\n+++ b/f\n@@ -0,0 +1 @@\n+line 0\n@@ -10 +11,2 @@\n line 10\n+line 11\n\\ No newline at end of file\n", sampleFile)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(a.Text()); got != "line 0\n"+sampleFile+"line 11" {
		t.Fatalf("got %q", got)
	}
	// a new file
	a, err = apply(t, "--- /dev/null\n+++ b/n.c\n@@ -0,0 +1,2 @@\n+int x;\n+int y;\n", "")
	if err != nil || string(a.Text()) != "int x;\nint y;\n" {
		t.Fatalf("got %q, %v", a.Text(), err)
	}
	// two hunks, the second relative to the first's changes
	a, err = apply(t, "--- a/f\n+++ b/f\n@@ -1,2 +1,3 @@\n line 1\n+line 1.5\n line 2\n@@ -8,2 +9,2 @@\n line 8\n-line 9\n+line nine\n", sampleFile)
	if err != nil || !strings.Contains(string(a.Text()), "line 1\nline 1.5\nline 2\n") || !strings.Contains(string(a.Text()), "line 8\nline nine\nline 10\n") {
		t.Fatalf("got %q, %v", a.Text(), err)
	}
}

// TestLineDirectives: after a change, unchanged lines keep their original
// numbers through #line, except where a directive would break the code
// (inside a comment, parentheses, or a continued macro), where it waits.
func TestLineDirectives(t *testing.T) {
	a := &Applied{Lines: []SourceLine{
		{"int a;", 1},
		{"int added;", 0},
		{"int b;", 2}, // #line 2 before it
		{"/* comment", 3},
		{"int c2;", 0},
		{"   end */", 4}, // in a comment: waits
		{"int d;", 5},    // #line 5
		{"#define M(x) \\", 6},
		{"  (x)", 8},  // continues the macro: waits
		{"int e;", 9}, // #line 9
		{"int f = g(1,", 10},
		{"          2);", 12}, // inside parentheses: waits
		{"int h;", 13},        // #line 13
	}}
	got := string(a.TextWithLineDirectives())
	want := "int a;\nint added;\n#line 2\nint b;\n/* comment\nint c2;\n   end */\n#line 5\nint d;\n#define M(x) \\\n  (x)\n#line 9\nint e;\nint f = g(1,\n          2);\n#line 13\nint h;\n"
	if got != want {
		t.Fatalf("got:\n%s\nwant:\n%s", got, want)
	}
}

// TestLineDirectivesCompile checks with the compiler that __LINE__ in code
// below a hunk keeps its value.
func TestLineDirectivesCompile(t *testing.T) {
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Skip("no gcc")
	}
	old := "int f0(void)\n{\n\treturn 0;\n}\n\nint f1(void)\n{\n\treturn __LINE__;\n}\n"
	a, err := apply(t, "--- a/x.c\n+++ b/x.c\n@@ -1,4 +1,6 @@\n int f0(void)\n {\n+\tint x = 1;\n+\tx++;\n-\treturn 0;\n+\treturn x;\n }\n", old)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	p := filepath.Join(dir, "x.c")
	if err := os.WriteFile(p, a.TextWithLineDirectives(), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("gcc", "-E", "-P", p).Output()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "return 8;") {
		t.Fatalf("__LINE__ moved:\n%s", out)
	}
}

func FuzzParseDiff(f *testing.F) {
	files, _ := filepath.Glob("../guestkernel/fixes/*.diff")
	for _, p := range files {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte("--- a/f\n+++ b/f\n@@ -0,0 +1 @@\n+x\n\\ No newline at end of file\n"))
	f.Add([]byte("diff --git a/x b/x\nnew file mode 100644\n--- /dev/null\n+++ b/x\n@@ -0,0 +1,2 @@\n+a\n+b\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := ParseDiff(data)
		if err != nil {
			var de *Error
			if !errors.As(err, &de) {
				t.Fatalf("error of type %T: %v", err, err)
			}
			return
		}
		for _, fd := range d.Files {
			for _, h := range fd.Hunks {
				o, n := 0, 0
				for _, l := range h.Lines {
					switch l.Op {
					case ' ':
						o++
						n++
					case '-':
						o++
					case '+':
						n++
					default:
						t.Fatalf("op %q", l.Op)
					}
				}
				if o != h.OldLines || n != h.NewLines {
					t.Fatalf("hunk counts %d/%d, header %d/%d", o, n, h.OldLines, h.NewLines)
				}
			}
			for _, old := range []string{"", sampleFile} {
				a, err := fd.Apply([]byte(old))
				if err != nil {
					continue
				}
				a.Text()
				a.TextWithLineDirectives()
			}
		}
	})
}
