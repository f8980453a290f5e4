package patchbuild

import (
	"bytes"
	"fmt"
	"path"
	"strconv"
	"strings"
)

// A unified diff, as `git diff`, `diff -u` and `git format-patch` write it,
// parsed and applied by strict context matching: every context and removed
// line must match the file exactly (no fuzz, no whitespace folding); a hunk
// may only move (an offset, as patch(1) and git apply allow), and the
// nearest matching place wins.

// Diff is a parsed unified diff.
type Diff struct {
	Files []*FileDiff
}

// FileDiff is the part of a diff that changes one file.
type FileDiff struct {
	OldPath, NewPath string // as written, without a/ b/ stripping; "/dev/null" for none
	Git              bool   // a `diff --git` section
	NewFile, Deleted bool
	Rename, Copy     bool
	Binary           bool
	ModeOnly         bool // git: a mode change without content
	Hunks            []*Hunk
	Line             int // line of its header in the diff, for messages
	hdr              bool
}

// Hunk is one @@ block.
type Hunk struct {
	OldStart, OldLines int
	NewStart, NewLines int
	Section            string // the text after the second @@ (git: the enclosing function)
	Lines              []HunkLine
	Line               int // line of the @@ header in the diff
}

// HunkLine is one line of a hunk: Op is ' ' (context), '-' or '+'.
type HunkLine struct {
	Op        byte
	Text      string // without the op and the newline
	NoNewline bool   // followed by "\ No newline at end of file"
}

// maxDiffSize bounds the input; a kernel fix is kilobytes.
const maxDiffSize = 16 << 20

// ParseDiff parses a unified diff. Text before the first file header (a
// commit message) and after the last hunk is ignored.
func ParseDiff(data []byte) (*Diff, error) {
	if len(data) > maxDiffSize {
		return nil, diffErr("", 0, "diff of %d bytes is larger than %d", len(data), maxDiffSize)
	}
	lines := splitLines(data)
	d := &Diff{}
	var cur *FileDiff
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		switch {
		case strings.HasPrefix(l, "diff --git "):
			cur = &FileDiff{Git: true, Line: i + 1}
			a, b, ok := splitGitPaths(strings.TrimPrefix(l, "diff --git "))
			if ok {
				cur.OldPath, cur.NewPath = a, b
			}
			d.Files = append(d.Files, cur)
		case cur != nil && cur.Git && len(cur.Hunks) == 0 && gitExtHeader(cur, l):
		case strings.HasPrefix(l, "--- ") && i+1 < len(lines) && strings.HasPrefix(lines[i+1], "+++ "):
			oldp, newp := headerPath(l[4:]), headerPath(lines[i+1][4:])
			if cur == nil || !cur.Git || cur.hdr || len(cur.Hunks) > 0 {
				cur = &FileDiff{Line: i + 1}
				d.Files = append(d.Files, cur)
			}
			cur.hdr = true
			cur.OldPath, cur.NewPath = oldp, newp
			if oldp == "/dev/null" {
				cur.NewFile = true
			}
			if newp == "/dev/null" {
				cur.Deleted = true
			}
			i++
		case strings.HasPrefix(l, "@@ "):
			if cur == nil || cur.OldPath == "" {
				return nil, diffErr("", i+1, "hunk before any file header (--- / +++)")
			}
			h, next, err := parseHunk(lines, i)
			if err != nil {
				err.Path = cur.displayPath()
				return nil, err
			}
			cur.Hunks = append(cur.Hunks, h)
			i = next - 1
		}
	}
	// Drop git sections that change nothing we apply (mode only) after
	// noting them; refuse what we cannot apply.
	for _, f := range d.Files {
		if f.Git && len(f.Hunks) == 0 && !f.Binary && !f.Rename && !f.Copy && !f.NewFile && !f.Deleted {
			f.ModeOnly = true
		}
		if f.OldPath == "" && f.NewPath == "" {
			return nil, diffErr("", f.Line, "file header without paths")
		}
	}
	if len(d.Files) == 0 {
		return nil, diffErr("", 0, "no file changes found: not a unified diff (want `git diff` or `diff -u` output)")
	}
	return d, nil
}

func (f *FileDiff) displayPath() string {
	if f.NewPath != "" && f.NewPath != "/dev/null" {
		return f.NewPath
	}
	return f.OldPath
}

// splitLines splits on \n, keeping a final unterminated line.
func splitLines(data []byte) []string {
	s := string(data)
	s = strings.TrimSuffix(s, "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

// headerPath takes the path of a ---/+++ line: up to a tab (diff -u puts a
// timestamp there), unquoted when git quoted it.
func headerPath(s string) string {
	if i := strings.IndexByte(s, '\t'); i >= 0 {
		s = s[:i]
	}
	s = strings.TrimRight(s, " \r")
	if strings.HasPrefix(s, `"`) {
		if u, err := strconv.Unquote(s); err == nil {
			return u
		}
	}
	return s
}

// splitGitPaths splits "a/x b/x" (the paths of a `diff --git` line).
func splitGitPaths(s string) (string, string, bool) {
	if strings.HasPrefix(s, `"`) {
		return "", "", false // quoted names: the ---/+++ lines have them
	}
	// Same name twice is the common case; find the split that makes them equal.
	for i := 0; i < len(s); i++ {
		if s[i] != ' ' {
			continue
		}
		a, b := s[:i], s[i+1:]
		if stripComponents(a, 1) == stripComponents(b, 1) {
			return a, b, true
		}
	}
	if i := strings.IndexByte(s, ' '); i > 0 {
		return s[:i], s[i+1:], true
	}
	return "", "", false
}

func gitExtHeader(f *FileDiff, l string) bool {
	switch {
	case strings.HasPrefix(l, "new file mode "):
		f.NewFile = true
	case strings.HasPrefix(l, "deleted file mode "):
		f.Deleted = true
	case strings.HasPrefix(l, "rename from "), strings.HasPrefix(l, "rename to "):
		f.Rename = true
	case strings.HasPrefix(l, "copy from "), strings.HasPrefix(l, "copy to "):
		f.Copy = true
	case strings.HasPrefix(l, "Binary files "), l == "GIT binary patch":
		f.Binary = true
	case strings.HasPrefix(l, "index "), strings.HasPrefix(l, "old mode "), strings.HasPrefix(l, "new mode "),
		strings.HasPrefix(l, "similarity index "), strings.HasPrefix(l, "dissimilarity index "):
	default:
		return false
	}
	return true
}

func parseHunk(lines []string, i int) (*Hunk, int, *Error) {
	hdr := lines[i]
	h := &Hunk{Line: i + 1}
	bad := func(msg string) (*Hunk, int, *Error) { return nil, 0, diffErr("", i+1, "%s", msg) }
	rest := strings.TrimPrefix(hdr, "@@ ")
	end := strings.Index(rest, " @@")
	if end < 0 {
		return bad("malformed hunk header " + strconv.Quote(hdr))
	}
	h.Section = strings.TrimSpace(rest[end+3:])
	ranges := strings.Fields(rest[:end])
	if len(ranges) != 2 || !strings.HasPrefix(ranges[0], "-") || !strings.HasPrefix(ranges[1], "+") {
		return bad("malformed hunk header " + strconv.Quote(hdr))
	}
	var ok1, ok2 bool
	h.OldStart, h.OldLines, ok1 = parseRange(ranges[0][1:])
	h.NewStart, h.NewLines, ok2 = parseRange(ranges[1][1:])
	if !ok1 || !ok2 {
		return bad("malformed hunk header " + strconv.Quote(hdr))
	}
	oldN, newN := 0, 0
	j := i + 1
	for ; j < len(lines) && (oldN < h.OldLines || newN < h.NewLines); j++ {
		l := lines[j]
		op := byte(' ')
		text := ""
		if l != "" {
			op, text = l[0], l[1:]
		}
		switch op {
		case ' ':
			oldN++
			newN++
		case '-':
			oldN++
		case '+':
			newN++
		case '\\':
			if len(h.Lines) == 0 {
				return bad("\"\\ No newline\" marker before any line")
			}
			h.Lines[len(h.Lines)-1].NoNewline = true
			continue
		default:
			return nil, 0, diffErr("", j+1, "hunk %q ends early: %d of %d old and %d of %d new lines", hdr, oldN, h.OldLines, newN, h.NewLines)
		}
		h.Lines = append(h.Lines, HunkLine{Op: op, Text: strings.TrimSuffix(text, "\r")})
		if strings.HasSuffix(text, "\r") {
			return nil, 0, diffErr("", j+1, "CRLF line endings in a hunk are not supported")
		}
	}
	if oldN != h.OldLines || newN != h.NewLines {
		return nil, 0, diffErr("", j, "hunk %q is truncated: %d of %d old and %d of %d new lines", hdr, oldN, h.OldLines, newN, h.NewLines)
	}
	if j < len(lines) && strings.HasPrefix(lines[j], `\`) {
		h.Lines[len(h.Lines)-1].NoNewline = true
		j++
	}
	return h, j, nil
}

func parseRange(s string) (start, n int, ok bool) {
	a, b, has := strings.Cut(s, ",")
	start, err := strconv.Atoi(a)
	if err != nil || start < 0 || start > 1<<24 {
		return 0, 0, false
	}
	n = 1
	if has {
		if n, err = strconv.Atoi(b); err != nil || n < 0 || n > 1<<24 {
			return 0, 0, false
		}
	}
	return start, n, true
}

// stripComponents removes n leading path components ("a/b/c", 1 -> "b/c");
// "" if there are not enough.
func stripComponents(p string, n int) string {
	for ; n > 0; n-- {
		i := strings.IndexByte(p, '/')
		if i < 0 {
			return ""
		}
		p = p[i+1:]
	}
	return p
}

// cleanRel checks that p is a clean relative path inside a tree.
func cleanRel(p string) (string, bool) {
	if p == "" || strings.HasPrefix(p, "/") || strings.ContainsRune(p, 0) {
		return "", false
	}
	c := path.Clean(p)
	if c == "." || c == ".." || strings.HasPrefix(c, "../") {
		return "", false
	}
	return c, true
}

// SourceLine is one line of a patched file: its text, and the line number
// it had in the original file (0 for an added line).
type SourceLine struct {
	Text string
	Orig int
}

// Applied is a file after a FileDiff: its lines and where they came from.
type Applied struct {
	Lines       []SourceLine
	NoEOL       bool     // the last line has no newline
	Offsets     []string // "hunk 2 applied at offset +3" notes
	ChangedOrig []int    // original line numbers removed or next to an insertion
}

// Apply applies the file's hunks to old (nil for a new file).
func (f *FileDiff) Apply(old []byte) (*Applied, error) { return f.ApplyAs(old, f.displayPath()) }

// ApplyAs is Apply with the file's name for messages.
func (f *FileDiff) ApplyAs(old []byte, name string) (*Applied, error) {
	oldLines := splitLines(old)
	oldNoEOL := len(old) > 0 && old[len(old)-1] != '\n'
	out := &Applied{NoEOL: oldNoEOL}
	pos := 0
	for hi, h := range f.Hunks {
		var seq []string
		for _, l := range h.Lines {
			if l.Op != '+' {
				seq = append(seq, l.Text)
			}
		}
		want := h.OldStart - 1
		if h.OldLines == 0 {
			want = h.OldStart // pure insertion after line OldStart
		}
		p := findSeq(oldLines, seq, pos, want)
		if p < 0 {
			return nil, &Error{Op: "apply", Path: name, Line: h.Line, Kind: ErrApply, Detail: fmt.Sprintf("hunk #%d (@@ -%d,%d +%d,%d @@ %s): %s",
				hi+1, h.OldStart, h.OldLines, h.NewStart, h.NewLines, h.Section, mismatch(oldLines, seq, want))}
		}
		if p != want {
			out.Offsets = append(out.Offsets, fmt.Sprintf("%s: hunk #%d applied at offset %+d", name, hi+1, p-want))
		}
		for k := pos; k < p; k++ {
			out.Lines = append(out.Lines, SourceLine{oldLines[k], k + 1})
		}
		o := p
		for _, l := range h.Lines {
			switch l.Op {
			case ' ':
				out.Lines = append(out.Lines, SourceLine{oldLines[o], o + 1})
				o++
			case '-':
				out.ChangedOrig = append(out.ChangedOrig, o+1)
				o++
			case '+':
				out.Lines = append(out.Lines, SourceLine{l.Text, 0})
				out.ChangedOrig = append(out.ChangedOrig, o+1)
			}
		}
		pos = o
		// A "\ No newline" marker on the hunk's last new-side line.
		for k := len(h.Lines) - 1; k >= 0; k-- {
			if h.Lines[k].Op != '-' {
				if pos == len(oldLines) {
					out.NoEOL = h.Lines[k].NoNewline
				}
				break
			}
		}
	}
	for k := pos; k < len(oldLines); k++ {
		out.Lines = append(out.Lines, SourceLine{oldLines[k], k + 1})
	}
	return out, nil
}

// findSeq finds seq in lines at or after min, nearest to want.
func findSeq(lines, seq []string, min, want int) int {
	match := func(p int) bool {
		if p < min || p+len(seq) > len(lines) {
			return false
		}
		for k, s := range seq {
			if lines[p+k] != s {
				return false
			}
		}
		return true
	}
	if want < min {
		want = min
	}
	for d := 0; d <= len(lines); d++ {
		if match(want - d) {
			return want - d
		}
		if d > 0 && match(want+d) {
			return want + d
		}
	}
	return -1
}

// mismatch explains why seq does not match at want.
func mismatch(lines, seq []string, want int) string {
	for k, s := range seq {
		at := want + k
		if at < 0 || at >= len(lines) {
			return fmt.Sprintf("the file has %d lines, the hunk expects %q at line %d (and the context matches nowhere else)", len(lines), s, at+1)
		}
		if lines[at] != s {
			return fmt.Sprintf("line %d is %q, the hunk expects %q (and the context matches nowhere else)", at+1, lines[at], s)
		}
	}
	return "its context matches only before an earlier hunk"
}

// Text renders the applied file.
func (a *Applied) Text() []byte {
	var b bytes.Buffer
	for i, l := range a.Lines {
		b.WriteString(l.Text)
		if i < len(a.Lines)-1 || !a.NoEOL {
			b.WriteByte('\n')
		}
	}
	return b.Bytes()
}

// TextWithLineDirectives renders the applied file with `#line N` directives
// that give every unchanged line its original line number, so __LINE__ in
// code the diff did not touch is what it was (the idea of klp-build's
// fix-patch-lines). A directive goes only where one is safe: outside
// comments and parentheses, and not after a line continued by a backslash;
// otherwise it moves down to the next such line.
func (a *Applied) TextWithLineDirectives() []byte {
	var b bytes.Buffer
	var lx cLexer
	expect := 1 // the number the compiler gives the next line
	for i, l := range a.Lines {
		if l.Orig != 0 && l.Orig != expect && lx.safe() {
			fmt.Fprintf(&b, "#line %d\n", l.Orig)
			expect = l.Orig
		}
		b.WriteString(l.Text)
		if i < len(a.Lines)-1 || !a.NoEOL {
			b.WriteByte('\n')
		}
		lx.line(l.Text)
		expect++
	}
	return b.Bytes()
}

// cLexer tracks just enough of C to know whether a line boundary is a
// safe place for a directive.
type cLexer struct {
	inComment bool
	parens    int
	cont      bool // the last line ended with a backslash
}

func (lx *cLexer) safe() bool { return !lx.inComment && lx.parens == 0 && !lx.cont }

func (lx *cLexer) line(s string) {
	lx.cont = strings.HasSuffix(s, `\`)
	directive := !lx.inComment && strings.HasPrefix(strings.TrimSpace(s), "#")
	var quote byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case lx.inComment:
			if c == '*' && i+1 < len(s) && s[i+1] == '/' {
				lx.inComment = false
				i++
			}
		case quote != 0:
			if c == '\\' {
				i++
			} else if c == quote {
				quote = 0
			}
		case c == '"' || c == '\'':
			quote = c
		case c == '/' && i+1 < len(s) && s[i+1] == '*':
			lx.inComment = true
			i++
		case c == '/' && i+1 < len(s) && s[i+1] == '/':
			return
		case directive:
		case c == '(':
			lx.parens++
		case c == ')':
			if lx.parens > 0 {
				lx.parens--
			}
		}
	}
}
