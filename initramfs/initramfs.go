// Package initramfs builds a Linux initramfs (a newc cpio archive) in Go,
// with u-root's cpio package: no cpio binary, no root privileges (device
// nodes are just records), and a byte-identical archive for identical
// inputs.
package initramfs

import (
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/u-root/u-root/pkg/cpio"
)

// ErrDuplicate: a path was added twice.
var ErrDuplicate = errors.New("path already in the archive")

// Error is the package's one error type: the operation, the archive path
// and the cause (ErrDuplicate, an fs error, or a cpio write error).
type Error struct {
	Op   string
	Path string
	Err  error
}

func (e *Error) Error() string { return fmt.Sprintf("initramfs: %s %s: %v", e.Op, e.Path, e.Err) }
func (e *Error) Unwrap() error { return e.Err }

// Archive collects records; Write emits them with every parent directory
// before its children (the kernel's unpacker does not create missing
// parents: a/b/c is silently dropped when a/b does not exist).
type Archive struct {
	recs  []cpio.Record
	names map[string]bool
}

// New returns an empty archive.
func New() *Archive { return &Archive{names: map[string]bool{}} }

func (a *Archive) add(op string, r cpio.Record) error {
	name := cpio.Normalize(r.Name)
	if name == "" || name == "." || strings.HasPrefix(name, "../") || name == ".." {
		return &Error{Op: op, Path: r.Name, Err: fs.ErrInvalid}
	}
	if a.names[name] {
		return &Error{Op: op, Path: name, Err: ErrDuplicate}
	}
	a.names[name] = true
	r.Name = name
	a.recs = append(a.recs, cpio.MakeReproducible(r))
	return nil
}

// AddBytes adds a regular file with the given contents and permissions.
func (a *Archive) AddBytes(name string, data []byte, perm uint64) error {
	return a.add("add file", cpio.StaticRecord(data, cpio.Info{Name: name, Mode: cpio.S_IFREG | perm&0o7777}))
}

// AddFile adds the host file hostPath at name, keeping its permission bits.
func (a *Archive) AddFile(name, hostPath string) error {
	data, err := os.ReadFile(hostPath)
	if err != nil {
		return &Error{Op: "read", Path: hostPath, Err: err}
	}
	st, err := os.Stat(hostPath)
	if err != nil {
		return &Error{Op: "stat", Path: hostPath, Err: err}
	}
	return a.AddBytes(name, data, uint64(st.Mode().Perm()))
}

// AddTree adds the regular files and directories below hostDir at name.
// Symlinks and special files are skipped: test data has no business with
// them, and following them could pull in anything on the host.
func (a *Archive) AddTree(name, hostDir string) error {
	return filepath.WalkDir(hostDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return &Error{Op: "walk", Path: p, Err: err}
		}
		rel, err := filepath.Rel(hostDir, p)
		if err != nil {
			return &Error{Op: "walk", Path: p, Err: err}
		}
		dst := path.Join(name, filepath.ToSlash(rel))
		switch {
		case d.IsDir():
			if rel == "." && a.names[cpio.Normalize(dst)] {
				return nil
			}
			return a.AddDir(dst, 0o755)
		case d.Type().IsRegular():
			return a.AddFile(dst, p)
		}
		return nil
	})
}

// AddDir adds an (empty) directory.
func (a *Archive) AddDir(name string, perm uint64) error {
	return a.add("add dir", cpio.Directory(name, perm&0o7777))
}

// AddCharDev adds a character device node, e.g. /dev/console (5, 1), which
// must exist before /init runs for it to have a stdin/stdout at all.
func (a *Archive) AddCharDev(name string, perm, major, minor uint64) error {
	return a.add("add device", cpio.CharDev(name, perm&0o7777, major, minor))
}

// AddSymlink adds a symbolic link name -> target (e.g. bin/cat -> ../init
// for a multi-call binary). The target is stored as given: the kernel does
// not resolve it when unpacking.
func (a *Archive) AddSymlink(name, target string) error {
	if target == "" {
		return &Error{Op: "add symlink", Path: name, Err: fs.ErrInvalid}
	}
	return a.add("add symlink", cpio.Symlink(name, target))
}

// WriteGzip writes the archive gzip-compressed, as the kernel unpacks it
// (CONFIG_RD_GZIP is in every distribution kernel). The gzip header has no
// name and no time, so the output still depends only on the contents.
func (a *Archive) WriteGzip(w io.Writer) error {
	zw, err := gzip.NewWriterLevel(w, gzip.BestCompression)
	if err != nil {
		return &Error{Op: "gzip", Path: "", Err: err}
	}
	if err := a.Write(zw); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return &Error{Op: "gzip", Path: "", Err: err}
	}
	return nil
}

// Write writes the archive: every path's parents first, then the path, in
// sorted order so the output depends only on the contents, then the
// trailer.
func (a *Archive) Write(w io.Writer) error {
	recs := append([]cpio.Record(nil), a.recs...)
	sort.SliceStable(recs, func(i, j int) bool { return recs[i].Name < recs[j].Name })
	rw := cpio.Newc.Writer(w)
	written := map[string]bool{}
	for _, r := range recs {
		// Parents first. A parent added explicitly keeps its own mode: it
		// sorts before its children and is written then.
		parts := strings.Split(r.Name, "/")
		for i := 1; i < len(parts); i++ {
			d := strings.Join(parts[:i], "/")
			if written[d] {
				continue
			}
			written[d] = true
			if err := rw.WriteRecord(cpio.MakeReproducible(cpio.Directory(d, 0o755))); err != nil {
				return &Error{Op: "write", Path: d, Err: err}
			}
		}
		if written[r.Name] {
			continue // an explicit directory already emitted as a parent cannot happen (sorted), but never write twice
		}
		written[r.Name] = true
		if err := rw.WriteRecord(r); err != nil {
			return &Error{Op: "write", Path: r.Name, Err: err}
		}
	}
	if err := cpio.WriteTrailer(rw); err != nil {
		return &Error{Op: "write", Path: cpio.Trailer, Err: err}
	}
	return nil
}
