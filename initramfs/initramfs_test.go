package initramfs

import (
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/u-root/u-root/pkg/cpio"
)

func readBack(t *testing.T, b []byte) []cpio.Record {
	t.Helper()
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(b)))
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

func TestArchiveParentsFirstAndContents(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "sub"), 0o755)
	os.WriteFile(filepath.Join(dir, "sub", "f.txt"), []byte("data"), 0o644)
	os.Symlink("/etc/passwd", filepath.Join(dir, "link"))

	a := New()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(a.AddBytes("/klp/bin/x.test", []byte("ELF"), 0o755))
	must(a.AddCharDev("dev/console", 0o600, 5, 1))
	must(a.AddTree("src/pkg/testdata", dir))
	must(a.AddBytes("init", []byte("#!"), 0o755))
	var buf bytes.Buffer
	must(a.Write(&buf))
	if !bytes.HasPrefix(buf.Bytes(), []byte("070701")) {
		t.Fatalf("not a newc archive: %q", buf.Bytes()[:6])
	}
	recs := readBack(t, buf.Bytes())
	seen := map[string]cpio.Record{}
	for _, r := range recs {
		if d := filepath.Dir(r.Name); d != "." {
			if _, ok := seen[d]; !ok {
				t.Errorf("%s written before its parent %s", r.Name, d)
			}
		}
		if _, dup := seen[r.Name]; dup {
			t.Errorf("%s written twice", r.Name)
		}
		seen[r.Name] = r
	}
	for _, want := range []string{"klp", "klp/bin", "klp/bin/x.test", "dev/console", "src/pkg/testdata/sub/f.txt", "init"} {
		if _, ok := seen[want]; !ok {
			t.Errorf("%s missing", want)
		}
	}
	if _, ok := seen["src/pkg/testdata/link"]; ok {
		t.Error("symlink from the host tree was packed")
	}
	con := seen["dev/console"]
	if con.Mode&cpio.S_IFMT != cpio.S_IFCHR || con.Rmajor != 5 || con.Rminor != 1 {
		t.Errorf("dev/console mode %o dev %d:%d", con.Mode, con.Rmajor, con.Rminor)
	}
	f := seen["src/pkg/testdata/sub/f.txt"]
	data, _ := io.ReadAll(io.NewSectionReader(f, 0, int64(f.FileSize)))
	if string(data) != "data" || f.Mode&0o777 != 0o644 {
		t.Errorf("f.txt %q mode %o", data, f.Mode)
	}
	if x := seen["klp/bin/x.test"]; x.Mode&0o777 != 0o755 || x.MTime != 0 {
		t.Errorf("x.test mode %o mtime %d", x.Mode, x.MTime)
	}

	// Same inputs, same bytes.
	var again bytes.Buffer
	must(a.Write(&again))
	if !bytes.Equal(buf.Bytes(), again.Bytes()) {
		t.Error("archive not reproducible")
	}
}

func TestArchiveRejects(t *testing.T) {
	a := New()
	if err := a.AddBytes("init", nil, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := a.AddBytes("/init", nil, 0o755); !errors.Is(err, ErrDuplicate) {
		t.Errorf("duplicate: %v", err)
	}
	for _, bad := range []string{"", ".", "..", "../etc/x"} {
		if err := a.AddBytes(bad, nil, 0o644); !errors.Is(err, ErrInvalid) {
			t.Errorf("AddBytes(%q): %v, want ErrInvalid", bad, err)
		}
	}
	var e *Error
	if err := a.AddSymlink("bin/x", ""); !errors.Is(err, ErrInvalid) {
		t.Errorf("symlink without target: %v", err)
	}
	if err := a.AddFile("x", "/nonexistent/file"); !errors.As(err, &e) || !errors.Is(err, os.ErrNotExist) ||
		!errors.Is(err, ErrIO) {
		t.Errorf("missing host file: %v", err)
	}
}

func TestSymlinkAndGzip(t *testing.T) {
	a := New()
	if err := a.AddBytes("init", []byte("ELF"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := a.AddSymlink("bin/cat", "/init"); err != nil {
		t.Fatal(err)
	}
	var plain, z1, z2 bytes.Buffer
	if err := a.Write(&plain); err != nil {
		t.Fatal(err)
	}
	if err := a.WriteGzip(&z1); err != nil {
		t.Fatal(err)
	}
	a.WriteGzip(&z2)
	if !bytes.Equal(z1.Bytes(), z2.Bytes()) {
		t.Error("two gzip writes differ")
	}
	zr, err := gzip.NewReader(&z1)
	if err != nil {
		t.Fatal(err)
	}
	if !zr.ModTime.IsZero() || zr.Name != "" {
		t.Errorf("gzip header has time %v name %q", zr.ModTime, zr.Name)
	}
	un, err := io.ReadAll(zr)
	if err != nil || !bytes.Equal(un, plain.Bytes()) {
		t.Fatalf("gzip does not unpack to the plain archive: %v", err)
	}
	recs := readBack(t, un)
	var link *cpio.Record
	for i := range recs {
		if recs[i].Name == "bin/cat" {
			link = &recs[i]
		}
	}
	if link == nil || link.Mode&cpio.S_IFMT != cpio.S_IFLNK {
		t.Fatalf("bin/cat: %+v", link)
	}
	if target, _ := io.ReadAll(io.NewSectionReader(link, 0, int64(link.FileSize))); string(target) != "/init" {
		t.Errorf("bin/cat -> %q", target)
	}
}
