// Package initramfs builds a Linux initramfs (a newc cpio archive) in Go,
// with u-root's cpio package: no cpio binary, no root privileges (device
// nodes are just records), and a byte-identical archive for identical
// inputs.
package initramfs

import (
	"compress/gzip"
	"errors"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"github.com/u-root/u-root/pkg/cpio"

	"klp-kvm/klperr"
)

// Kinds of Error.
var (
	ErrDuplicate = errors.New("path already in the archive") // a path was added twice
	ErrInvalid   = errors.New("invalid argument")            // an empty, absolute-escaping or otherwise bad name
	ErrIO        = errors.New("i/o error")                   // reading a host file or writing the archive failed
)

// Error is the package's one error type, by the convention of package
// klperr: the operation, the kind, the archive or host path as Detail, and
// the cause.
type Error struct {
	Op     string
	Kind   error
	Errno  syscall.Errno
	Detail string // the path concerned
	Err    error
}

func (e *Error) Error() string {
	return klperr.Format("initramfs", e.Op, "", e.Kind, e.Errno, e.Detail, e.Err)
}

// Is matches the kind or the errno.
func (e *Error) Is(target error) bool { return klperr.Match(target, e.Kind, e.Errno) }

// As gives the errno to errors.As(err, &errno).
func (e *Error) As(target any) bool { return klperr.AsErrno(target, e.Errno) }

func (e *Error) Unwrap() error { return e.Err }

func fail(op string, kind error, path string, err error) *Error {
	return &Error{Op: op, Kind: kind, Detail: path, Errno: klperr.Errno(err), Err: err}
}

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
		return fail(op, ErrInvalid, r.Name, nil)
	}
	if a.names[name] {
		return fail(op, ErrDuplicate, name, nil)
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
		return fail("read", ErrIO, hostPath, err)
	}
	st, err := os.Stat(hostPath)
	if err != nil {
		return fail("stat", ErrIO, hostPath, err)
	}
	return a.AddBytes(name, data, uint64(st.Mode().Perm()))
}

// AddTree adds the regular files and directories below hostDir at name.
// Symlinks and special files are skipped: test data has no business with
// them, and following them could pull in anything on the host.
func (a *Archive) AddTree(name, hostDir string) error {
	return filepath.WalkDir(hostDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return fail("walk", ErrIO, p, err)
		}
		rel, err := filepath.Rel(hostDir, p)
		if err != nil {
			return fail("walk", ErrIO, p, err)
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
		return fail("add symlink", ErrInvalid, name, nil)
	}
	return a.add("add symlink", cpio.Symlink(name, target))
}

// WriteGzip writes the archive gzip-compressed, as the kernel unpacks it
// (CONFIG_RD_GZIP is in every distribution kernel). The gzip header has no
// name and no time, so the output still depends only on the contents.
func (a *Archive) WriteGzip(w io.Writer) error {
	zw, err := gzip.NewWriterLevel(w, gzip.BestCompression)
	if err != nil {
		return fail("gzip", ErrIO, "", err)
	}
	if err := a.Write(zw); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return fail("gzip", ErrIO, "", err)
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
				return fail("write", ErrIO, d, err)
			}
		}
		if written[r.Name] {
			continue // an explicit directory already emitted as a parent cannot happen (sorted), but never write twice
		}
		written[r.Name] = true
		if err := rw.WriteRecord(r); err != nil {
			return fail("write", ErrIO, r.Name, err)
		}
	}
	if err := cpio.WriteTrailer(rw); err != nil {
		return fail("write", ErrIO, cpio.Trailer, err)
	}
	return nil
}
