package initrd

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"errors"
	"io"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/u-root/u-root/pkg/cpio"

	"klp-kvm/guestagent/applets"
)

func records(t *testing.T, archive []byte) map[string]cpio.Record {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(archive))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(raw)))
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]cpio.Record{}
	for _, r := range recs {
		if _, dup := m[r.Name]; dup {
			t.Errorf("%s twice", r.Name)
		}
		m[r.Name] = r
	}
	return m
}

func TestDefaultContents(t *testing.T) {
	def, err := Default()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("default initramfs: %d bytes gzip", len(def))
	m := records(t, def)
	in, ok := m["init"]
	if !ok || in.Mode != cpio.S_IFREG|0o755 || in.UID != 0 || in.MTime != 0 {
		t.Fatalf("init record %+v", in.Info)
	}
	f, err := elf.NewFile(io.NewSectionReader(in, 0, int64(in.FileSize)))
	if err != nil {
		t.Fatalf("/init is not ELF: %v", err)
	}
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 || f.Type != elf.ET_EXEC {
		t.Errorf("/init: %v %v %v, want a 64-bit x86-64 executable", f.Class, f.Machine, f.Type)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("/init has %v: not static", p.Type)
		}
	}
	if c, ok := m["dev/console"]; !ok || c.Mode != cpio.S_IFCHR|0o600 || c.Rmajor != 5 || c.Rminor != 1 {
		t.Errorf("dev/console %+v", c.Info)
	}
	for _, d := range dirs {
		if r, ok := m[d]; !ok || r.Mode&cpio.S_IFMT != cpio.S_IFDIR {
			t.Errorf("directory %s: %+v", d, r.Info)
		}
	}
	if m["tmp"].Mode&0o7777 != 0o1777 {
		t.Errorf("tmp mode %o", m["tmp"].Mode)
	}
	for _, n := range append([]string{"sh", "cat", "ls", "ps", "dmesg", "echo", "uname", "sleep", "grep", "head",
		"kill", "mount", "poweroff", "reboot"}, applets.Names()...) {
		r, ok := m["bin/"+n]
		if !ok || r.Mode&cpio.S_IFMT != cpio.S_IFLNK {
			t.Errorf("bin/%s: %+v", n, r.Info)
			continue
		}
		if target, _ := io.ReadAll(io.NewSectionReader(r, 0, int64(r.FileSize))); string(target) != "/init" {
			t.Errorf("bin/%s -> %q", n, target)
		}
	}
}

// The embedded archive is exactly what Build makes of its own /init: the
// layout code and the committed archive agree.
func TestBuildReproducible(t *testing.T) {
	def, _ := Default()
	a, err := Build(Options{})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := Build(Options{})
	if !bytes.Equal(a, b) {
		t.Fatal("two builds differ")
	}
	if !bytes.Equal(a, def) {
		t.Fatal("Build(Options{}) differs from the prebuilt archive: run go generate ./guestagent/initrd")
	}
}

func TestBuildExtraFiles(t *testing.T) {
	a, err := Build(Options{Files: []File{{Path: "/opt/t/prog", Data: []byte("hello"), Mode: 0o755}}})
	if err != nil {
		t.Fatal(err)
	}
	m := records(t, a)
	if r, ok := m["opt/t/prog"]; !ok || r.Mode != cpio.S_IFREG|0o755 {
		t.Errorf("extra file %+v", r.Info)
	}
	if _, ok := m["opt/t"]; !ok {
		t.Error("parent directory of the extra file missing")
	}
	if got, err := ReadFile(a, "opt/t/prog"); err != nil || string(got) != "hello" {
		t.Errorf("ReadFile: %q %v", got, err)
	}
	for _, bad := range []Options{
		{Files: []File{{Path: "/init", Data: []byte("x")}}},
		{Files: []File{{Path: "/"}}},
		{Agent: []byte("#!/bin/sh")},
	} {
		if _, err := Build(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("Build(%+v): %v, want ErrInvalid", bad, err)
		}
	}
}

func TestReadFileCorrupt(t *testing.T) {
	def, _ := Default()
	for _, in := range [][]byte{nil, []byte("not gzip"), def[:len(def)/2]} {
		if _, err := ReadFile(in, "init"); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%d bytes: %v, want ErrCorrupt", len(in), err)
		}
	}
	if _, err := ReadFile(def, "nope"); !errors.Is(err, ErrCorrupt) {
		t.Errorf("missing file: %v", err)
	}
}

// TestPrebuiltUpToDate rebuilds klp-agent from this tree and compares it
// with the committed one byte for byte, when the toolchain on PATH is the
// one that built it (another Go version links different bytes).
func TestPrebuiltUpToDate(t *testing.T) {
	if testing.Short() {
		t.Skip("builds klp-agent twice")
	}
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go toolchain")
	}
	ver, err := GoVersion()
	if err != nil {
		t.Fatal(err)
	}
	if ver != strings.TrimSpace(Toolchain) {
		t.Skipf("toolchain %s, the prebuilt archive is from %s", ver, strings.TrimSpace(Toolchain))
	}
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	a, err := BuildAgent(root)
	if err != nil {
		t.Fatal(err)
	}
	b, err := BuildAgent(root)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Fatal("two builds of klp-agent differ: the build is not reproducible")
	}
	def, _ := Default()
	cur, _ := ReadFile(def, "init")
	if !bytes.Equal(a, cur) {
		t.Fatal("prebuilt /init is stale: run go generate ./guestagent/initrd and commit")
	}
}
