package patchbuild

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"klp-kvm/elfpatch"
	"klp-kvm/guestkernel/layout"
)

// lineDirectives keeps unchanged lines' numbers in the "after" build
// (tests turn it off to see what it prevents).
var lineDirectives = true

// Options configure a build.
type Options struct {
	// Src is the kernel source tree: a directory whose Makefile has the
	// print-cflags and print-srcs targets (the repository's guestkernel/).
	Src string
	// Kernel is the image of the running kernel (vmlinux), which the
	// "before" build must match function by function; KernelName names it
	// in messages.
	Kernel     *elfpatch.Kernel
	KernelName string
	// Name is the patch's name (KLP_MODULE_NAME); empty: from DiffName.
	Name string
	// DiffName is the diff's file name (for the default name and messages).
	DiffName string
	// CC is the C compiler (default $CC, else gcc); Make is make.
	CC, Make string
	// Jobs bounds parallel compiles (default: GOMAXPROCS, at most 4).
	Jobs int
	// TempDir is where the scratch directory is made (default os.TempDir);
	// KeepScratch leaves it for inspection (its path is in the plan's notes).
	TempDir     string
	KeepScratch bool
	// Cache, if set, keeps "before" objects between builds of one tree.
	Cache *Cache
	// Log receives progress lines (nil: none).
	Log io.Writer
}

// Cache keeps compiled "before" objects, keyed by the tree's content, the
// flags and the unit: tests build many diffs against one tree.
type Cache struct {
	mu sync.Mutex
	m  map[string][]byte
}

func (c *Cache) get(k string) []byte {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[k]
}

func (c *Cache) put(k string, b []byte) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string][]byte{}
	}
	c.m[k] = b
}

// PatchName derives a patch name from a diff's file name: the stem, with
// every character a module name cannot hold replaced by '_'
// (fix-cmdline.diff -> fix_cmdline).
func PatchName(diffName string) string {
	base := filepath.Base(diffName)
	for _, ext := range []string{".diff", ".patch"} {
		base = strings.TrimSuffix(base, ext)
	}
	var b strings.Builder
	for _, c := range base {
		if c == '_' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' {
			b.WriteRune(c)
		} else {
			b.WriteByte('_')
		}
	}
	s := b.String()
	if len(s) > 55 {
		s = s[:55]
	}
	if s == "" || s == "." {
		s = "klp_fix"
	}
	return s
}

// ValidName reports whether s can be a patch name.
func ValidName(s string) bool {
	if s == "" || len(s) > 55 {
		return false
	}
	for _, c := range s {
		if !(c == '_' || c == '-' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return true
}

// Build builds a patch object from a diff of the kernel sources. It
// returns the plan in every case it got far enough to make one, and the
// object only when nothing was refused. The source tree is never
// written: both builds happen in a scratch directory.
func Build(diff []byte, o Options) (*Plan, []byte, error) {
	start := time.Now()
	b := &builder{o: o, plan: &Plan{Refused: []Problem{}, Warnings: []Problem{}, Changed: []PlanFunc{}, New: []PlanFunc{}, Data: []PlanData{}, Notes: []string{}, Files: []PlanFile{}, Units: []string{}}}
	obj, err := b.run(diff)
	b.plan.Timing.TotalMS = time.Since(start).Milliseconds()
	if b.scratch != "" {
		if o.KeepScratch {
			b.plan.Notes = append(b.plan.Notes, "scratch directory kept: "+b.scratch)
		} else {
			os.RemoveAll(b.scratch)
		}
	}
	if err != nil {
		return b.plan, nil, err
	}
	if !b.plan.OK() {
		var names []string
		for _, r := range b.plan.Refused {
			names = append(names, r.Symbol)
		}
		return b.plan, nil, &Error{Op: "plan", Kind: ErrRefused, Detail: fmt.Sprintf("%d problem(s), nothing written: %s", len(names), strings.Join(names, ", "))}
	}
	sum := sha256.Sum256(obj)
	b.plan.Output = &PlanOutput{Size: len(obj), SHA256: hex.EncodeToString(sum[:])}
	return b.plan, obj, nil
}

type builder struct {
	o       Options
	plan    *Plan
	scratch string
	cc      string
	mk      string
	cflags  []string
	srcs    []string // kernel sources (print-srcs) of the after tree
}

type fileChange struct {
	fd      *FileDiff
	rel     string
	applied *Applied
}

func (b *builder) logf(format string, args ...any) {
	if b.o.Log != nil {
		fmt.Fprintf(b.o.Log, format+"\n", args...)
	}
}

func (b *builder) run(diff []byte) ([]byte, error) {
	o := b.o
	if o.Kernel == nil {
		return nil, kindErr("setup", ErrMismatch, "no kernel image to build against")
	}
	b.plan.Kernel = o.KernelName
	src, err := filepath.Abs(o.Src)
	if err != nil {
		return nil, &Error{Op: "setup", Err: err}
	}
	b.plan.Src = src
	if st, err := os.Stat(filepath.Join(src, "Makefile")); err != nil || !st.Mode().IsRegular() {
		return nil, &Error{Op: "setup", Path: src, Detail: "not a kernel source tree (no Makefile)"}
	}
	name := o.Name
	if name == "" {
		name = PatchName(o.DiffName)
	}
	if !ValidName(name) {
		return nil, &Error{Op: "setup", Detail: fmt.Sprintf("patch name %q: want 1..55 characters of [A-Za-z0-9_-]", name)}
	}
	b.plan.Name = name
	if err := b.findTools(); err != nil {
		return nil, err
	}
	d, err := ParseDiff(diff)
	if err != nil {
		return nil, err
	}
	changes := b.resolve(d, src)
	if !b.plan.OK() {
		return nil, nil
	}
	if b.scratch, err = os.MkdirTemp(o.TempDir, "klp-build-"); err != nil {
		return nil, &Error{Op: "setup", Err: err}
	}
	beforeDir, afterDir := filepath.Join(b.scratch, "before"), filepath.Join(b.scratch, "after")
	digest, err := copyTree(src, beforeDir)
	if err != nil {
		return nil, &Error{Op: "setup", Err: err}
	}
	if _, err := copyTree(src, afterDir); err != nil {
		return nil, &Error{Op: "setup", Err: err}
	}
	hunks := map[string][]*Hunk{}
	for _, c := range changes {
		var old []byte
		if !c.fd.NewFile {
			if old, err = os.ReadFile(filepath.Join(beforeDir, c.rel)); err != nil {
				return nil, &Error{Op: "apply", Path: c.rel, Kind: ErrApply, Err: err}
			}
		}
		a, err := c.fd.ApplyAs(old, c.rel)
		if err != nil {
			return nil, err
		}
		c.applied = a
		b.plan.Notes = append(b.plan.Notes, a.Offsets...)
		dst := filepath.Join(afterDir, c.rel)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return nil, &Error{Op: "apply", Err: err}
		}
		text := a.Text()
		if lineDirectives {
			text = a.TextWithLineDirectives()
		}
		if err := os.WriteFile(dst, text, 0o644); err != nil {
			return nil, &Error{Op: "apply", Err: err}
		}
		hunks[c.rel] = append(hunks[c.rel], c.fd.Hunks...)
	}
	if b.cflags, err = b.makeVar(beforeDir, "print-cflags"); err != nil {
		return nil, err
	}
	afterFlags, err := b.makeVar(afterDir, "print-cflags")
	if err != nil {
		return nil, err
	}
	if strings.Join(relFlags(afterFlags, afterDir), " ") != strings.Join(relFlags(b.cflags, beforeDir), " ") {
		return nil, &Error{Op: "setup", Detail: "the diff changes the kernel's compiler flags: not supported"}
	}
	beforeSrcs, err := b.makeVar(beforeDir, "print-srcs")
	if err != nil {
		return nil, err
	}
	if b.srcs, err = b.makeVar(afterDir, "print-srcs"); err != nil {
		return nil, err
	}
	units, err := b.unitsToBuild(changes, beforeDir, afterDir, beforeSrcs)
	if err != nil {
		return nil, err
	}
	if !b.plan.OK() {
		return nil, nil
	}
	b.plan.Units = units
	ct := time.Now()
	before, after, err := b.compileAll(units, beforeDir, afterDir, beforeSrcs, digest)
	b.plan.Timing.CompileMS = time.Since(ct).Milliseconds()
	if err != nil {
		return nil, err
	}
	ki := newKernelIndex(o.Kernel)
	var bad []string
	for _, p := range units {
		if u := before[p]; u != nil {
			bad = append(bad, ki.verifyUnit(u)...)
		}
	}
	if len(bad) > 0 {
		more := ""
		if len(bad) > 8 {
			more = fmt.Sprintf(" (and %d more)", len(bad)-8)
			bad = bad[:8]
		}
		return nil, kindErr("verify", ErrMismatch, "%s was not built from %s (or not with these flags and compiler): %s%s",
			o.KernelName, src, strings.Join(bad, "; "), more)
	}
	b.checkStructs(units, before, after)
	an := newAnalysis(b.plan, ki, units, before, after, hunks)
	an.run()
	for _, p := range units {
		for _, u := range []*unit{before[p], after[p]} {
			if u != nil && len(u.err) > 0 {
				b.plan.Notes = append(b.plan.Notes, u.err...)
			}
		}
	}
	if !b.plan.OK() {
		// Still say what would have been patched.
		return nil, nil
	}
	e := newEmitter(an)
	obj := e.emit(name)
	if !b.plan.OK() {
		return nil, nil
	}
	if err := checkObject(obj, o.Kernel, layout.PatchAreaVirt); err != nil {
		return nil, &Error{Op: "emit", Detail: "the written object does not load (a bug of the builder)", Err: err}
	}
	return obj, nil
}

func (b *builder) findTools() error {
	cc := b.o.CC
	if cc == "" {
		cc = os.Getenv("CC")
	}
	if cc == "" {
		cc = "gcc"
	}
	p, err := exec.LookPath(cc)
	if err != nil {
		return kindErr("setup", ErrNoCompiler, "C compiler %q not found in $PATH (Debian: apt-get install build-essential)", cc)
	}
	b.cc = p
	mk := b.o.Make
	if mk == "" {
		mk = "make"
	}
	if b.mk, err = exec.LookPath(mk); err != nil {
		return kindErr("setup", ErrNoCompiler, "%q not found in $PATH: it reads the kernel's flags from its Makefile (Debian: apt-get install build-essential)", mk)
	}
	return nil
}

// resolve maps the diff's paths into the source tree, as patch -p1/-p0
// would, or relative to the repository holding it (git diff run at the
// top: a/guestkernel/kernel/cmdline.c). It refuses what cannot be patched.
func (b *builder) resolve(d *Diff, src string) []*fileChange {
	rootRel := ""
	if root := repoRoot(src); root != "" {
		if r, err := filepath.Rel(root, src); err == nil && r != "." {
			rootRel = filepath.ToSlash(r) + "/"
		}
	}
	strategies := []func(string) string{
		func(p string) string { return strings.TrimPrefix(stripComponents(p, 1), rootRel) },
		func(p string) string { return strings.TrimPrefix(p, rootRel) },
		func(p string) string { return stripComponents(p, 1) },
		func(p string) string { return p },
	}
	exists := func(rel string) bool {
		c, ok := cleanRel(rel)
		if !ok {
			return false
		}
		st, err := os.Stat(filepath.Join(src, filepath.FromSlash(c)))
		return err == nil && st.Mode().IsRegular()
	}
	dirExists := func(rel string) bool {
		c, ok := cleanRel(rel)
		if !ok {
			return false
		}
		st, err := os.Stat(filepath.Join(src, filepath.FromSlash(path.Dir(c))))
		return err == nil && st.IsDir()
	}
	// The reading under which most files exist (a new file: its directory).
	best, bestN := 0, -1
	for i, s := range strategies {
		n := 0
		for _, f := range d.Files {
			if !f.NewFile && exists(s(f.OldPath)) {
				n += 2
			} else if f.NewFile && dirExists(s(f.NewPath)) {
				n++
			}
		}
		if n > bestN {
			best, bestN = i, n
		}
	}
	strip := strategies[best]
	var out []*fileChange
	seen := map[string]bool{}
	for _, f := range d.Files {
		p := f.OldPath
		if f.NewFile {
			p = f.NewPath
		}
		rel, ok := cleanRel(strip(p))
		shown := f.displayPath()
		switch {
		case ok && seen[rel]:
			b.plan.refuse(KindUnsupported, "", rel, "appears twice in the diff (write one section per file)")
			continue
		case !ok:
			b.plan.refuse(KindUnsupported, "", shown, "path is not inside the source tree")
			continue
		case f.ModeOnly:
			b.plan.Notes = append(b.plan.Notes, rel+": mode change only, ignored")
			continue
		case f.Binary:
			b.plan.refuse(KindUnsupported, "", rel, "binary change")
			continue
		case f.Rename || f.Copy:
			b.plan.refuse(KindUnsupported, "", rel, "renamed or copied file: not supported (the kernel's symbols name the file)")
			continue
		case f.Deleted:
			b.plan.refuse(KindUnsupported, "", rel, "deleting a file cannot be live patched (its functions stay in the kernel)")
			continue
		case !f.NewFile && !exists(rel):
			b.plan.refuse(KindUnsupported, "", shown, "not found in %s (paths are taken as git diff writes them, a/... b/..., or relative to --src)", src)
			continue
		case f.NewFile && exists(rel):
			b.plan.refuse(KindUnsupported, "", rel, "the diff creates it, but it already exists")
			continue
		}
		kind := "modified"
		if f.NewFile {
			kind = "new"
		}
		switch path.Ext(rel) {
		case ".c", ".h":
		case ".S", ".s":
			b.plan.refuse(KindUnsupported, "", rel, "assembly: the builder compares compiled C functions; change the C callers, or write the patch by hand")
			continue
		default:
			b.plan.refuse(KindUnsupported, "", rel, "not a C source or header: a live patch carries compiled code only (build files, linker scripts and docs cannot change a running kernel)")
			continue
		}
		seen[rel] = true
		b.plan.Files = append(b.plan.Files, PlanFile{Path: rel, Kind: kind, Hunks: len(f.Hunks)})
		out = append(out, &fileChange{fd: f, rel: rel})
	}
	return out
}

// repoRoot finds the repository (a .git entry, or go.mod) holding dir.
func repoRoot(dir string) string {
	for d := dir; ; {
		for _, m := range []string{".git", "go.mod"} {
			if _, err := os.Stat(filepath.Join(d, m)); err == nil {
				return d
			}
		}
		parent := filepath.Dir(d)
		if parent == d {
			return ""
		}
		d = parent
	}
}

// copyTree copies the source tree (not build outputs: build/, prebuilt/,
// .git, *.o) and returns a digest of what it copied.
func copyTree(src, dst string) (string, error) {
	h := sha256.New()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if d.IsDir() {
			if rel != "." && (d.Name() == "build" || d.Name() == "prebuilt" || d.Name() == ".git") {
				return filepath.SkipDir
			}
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		if !d.Type().IsRegular() || strings.HasSuffix(p, ".o") {
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		fmt.Fprintf(h, "%s\x00%d\x00", filepath.ToSlash(rel), len(data))
		h.Write(data)
		return os.WriteFile(filepath.Join(dst, rel), data, 0o644)
	})
	return hex.EncodeToString(h.Sum(nil)), err
}

// makeVar runs `make -s TARGET` in dir and splits its output into words.
func (b *builder) makeVar(dir, target string) ([]string, error) {
	cmd := exec.Command(b.mk, "-s", "--no-print-directory", "-C", dir, target)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return nil, &Error{Op: "setup", Detail: fmt.Sprintf("`make %s` in the kernel tree failed (its Makefile needs the print-cflags and print-srcs targets): %s", target, bytes.TrimSpace(out)), Err: err}
	}
	if bytes.ContainsAny(out, `"'\`) {
		return nil, &Error{Op: "setup", Detail: fmt.Sprintf("`make %s` printed quoted words, which the builder does not split: %s", target, out)}
	}
	return strings.Fields(string(out)), nil
}

// relFlags replaces the tree's path in flags (its -ffile-prefix-map).
func relFlags(flags []string, dir string) []string {
	out := make([]string, len(flags))
	for i, f := range flags {
		out[i] = strings.ReplaceAll(f, dir, "$TREE")
	}
	return out
}

// unitsToBuild lists the translation units the diff touches: its .c
// files, and every unit that includes one of its headers.
func (b *builder) unitsToBuild(changes []*fileChange, beforeDir, afterDir string, beforeSrcs []string) ([]string, error) {
	isSrc := map[string]bool{}
	for _, s := range b.srcs {
		if strings.HasSuffix(s, ".c") {
			isSrc[s] = true
		}
	}
	units := map[string]bool{}
	var headers []string
	for _, c := range changes {
		switch path.Ext(c.rel) {
		case ".c":
			if !isSrc[c.rel] {
				included := false
				for _, s := range b.srcs {
					if strings.HasSuffix(s, ".c") {
						deps, err := b.deps(afterDir, s)
						if err != nil {
							return nil, err
						}
						if slices.Contains(deps, c.rel) {
							units[s], included = true, true
						}
					}
				}
				if !included {
					b.plan.refuse(KindUnsupported, "", c.rel, "not part of the kernel build (not a source of `make print-srcs`, not included by one)")
				}
				continue
			}
			units[c.rel] = true
		case ".h":
			headers = append(headers, c.rel)
		}
	}
	if len(headers) > 0 {
		var mu sync.Mutex
		var firstErr error
		used := map[string]bool{}
		b.parallel(len(b.srcs), func(i int) {
			s := b.srcs[i]
			if !strings.HasSuffix(s, ".c") {
				return
			}
			var deps []string
			for _, dir := range []string{beforeDir, afterDir} {
				if dir == beforeDir && !slices.Contains(beforeSrcs, s) {
					continue
				}
				d, err := b.deps(dir, s)
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
				deps = append(deps, d...)
			}
			for _, h := range headers {
				if slices.Contains(deps, h) {
					mu.Lock()
					units[s] = true
					used[h] = true
					mu.Unlock()
				}
			}
		})
		if firstErr != nil {
			return nil, firstErr
		}
		for _, h := range headers {
			if !used[h] {
				b.plan.Notes = append(b.plan.Notes, h+": no kernel source includes it")
			}
		}
	}
	var out []string
	for u := range units {
		out = append(out, u)
	}
	slices.Sort(out)
	return out, nil
}

// deps lists the files unit s includes (gcc -MM), relative to dir.
func (b *builder) deps(dir, s string) ([]string, error) {
	args := append(slices.Clone(b.cflagsFor(dir)), "-MM", "-MG", s)
	cmd := exec.Command(b.cc, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	out, err := cmd.Output()
	if err != nil {
		msg := ""
		if ee, ok := err.(*exec.ExitError); ok {
			msg = string(bytes.TrimSpace(ee.Stderr))
		}
		return nil, &Error{Op: "compile", Path: s, Kind: ErrCompile, Detail: "its dependencies (gcc -MM): " + msg, Err: err}
	}
	text := strings.ReplaceAll(string(out), "\\\n", " ")
	if i := strings.IndexByte(text, ':'); i >= 0 {
		text = text[i+1:]
	}
	var deps []string
	for _, f := range strings.Fields(text) {
		if c, ok := cleanRel(f); ok {
			deps = append(deps, c)
		}
	}
	return deps, nil
}

// cflagsFor gives the kernel's flags for a build in dir (before and after
// differ only in the tree path of -ffile-prefix-map).
func (b *builder) cflagsFor(dir string) []string {
	before := filepath.Join(b.scratch, "before")
	out := make([]string, len(b.cflags))
	for i, f := range b.cflags {
		out[i] = strings.ReplaceAll(f, before, dir)
	}
	return out
}

func (b *builder) parallel(n int, job func(i int)) {
	jobs := b.o.Jobs
	if jobs <= 0 {
		jobs = min(runtime.GOMAXPROCS(0), 4)
	}
	sem := make(chan struct{}, jobs)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			job(i)
		}()
	}
	wg.Wait()
}

// compileAll compiles every unit before and after (with -g, for the
// struct layouts: gcc's code does not depend on it, and the comparison
// with the kernel checks that).
func (b *builder) compileAll(units []string, beforeDir, afterDir string, beforeSrcs []string, digest string) (map[string]*unit, map[string]*unit, error) {
	type job struct {
		dir, rel string
		before   bool
	}
	var jobs []job
	for _, u := range units {
		if slices.Contains(beforeSrcs, u) {
			jobs = append(jobs, job{beforeDir, u, true})
		}
		jobs = append(jobs, job{afterDir, u, false})
	}
	results := make([]*unit, len(jobs))
	errs := make([]error, len(jobs))
	b.parallel(len(jobs), func(i int) {
		j := jobs[i]
		key := ""
		if j.before {
			h := sha256.Sum256([]byte(digest + "\x00" + strings.Join(relFlags(b.cflags, beforeDir), " ") + "\x00" + j.rel))
			key = hex.EncodeToString(h[:])
		}
		data := b.o.Cache.get(key)
		if data == nil || !j.before {
			var err error
			data, err = b.compile(j.dir, j.rel, j.before)
			if err != nil {
				errs[i] = err
				return
			}
			if j.before {
				b.o.Cache.put(key, data)
			}
		}
		u, err := loadUnit(j.rel, data)
		if err != nil {
			errs[i] = &Error{Op: "compile", Path: j.rel, Kind: ErrCompile, Detail: "reading the object", Err: err}
			return
		}
		results[i] = u
	})
	before, after := map[string]*unit{}, map[string]*unit{}
	for i, j := range jobs {
		if errs[i] != nil {
			return nil, nil, errs[i]
		}
		if j.before {
			before[j.rel] = results[i]
		} else {
			after[j.rel] = results[i]
		}
	}
	return before, after, nil
}

func (b *builder) compile(dir, rel string, before bool) ([]byte, error) {
	out := filepath.Join(dir, ".klp-obj", strings.ReplaceAll(rel, "/", "__")+".o")
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return nil, err
	}
	args := append(slices.Clone(b.cflagsFor(dir)), "-g", "-c", rel, "-o", out)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, b.cc, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	t := time.Now()
	msg, err := cmd.CombinedOutput()
	side := "after"
	if before {
		side = "before"
	}
	b.logf("compile %s (%s): %v", rel, side, time.Since(t).Round(time.Millisecond))
	if err != nil {
		what := "the patched source does not compile"
		if before {
			what = "the unpatched source does not compile"
		}
		return nil, &Error{Op: "compile", Path: rel, Kind: ErrCompile, Detail: what + ":\n" + string(bytes.TrimSpace(msg))}
	}
	return os.ReadFile(out)
}

// FindSource finds the default kernel source tree for a command run in
// dir: the guestkernel/ directory of the repository holding dir.
func FindSource(dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	for d := abs; ; {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			src := filepath.Join(d, "guestkernel")
			if st, err := os.Stat(filepath.Join(src, "Makefile")); err == nil && st.Mode().IsRegular() {
				return src, nil
			}
		}
		parent := filepath.Dir(d)
		if parent == d {
			return "", fmt.Errorf("no kernel source tree: %s is not inside the klp-kvm repository (give --src)", abs)
		}
		d = parent
	}
}
