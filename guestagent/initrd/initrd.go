// Package initrd is the initramfs klp-kvm boots Linux guests with when the
// user gives no --initrd: /init is klp-agent (cmd/klp-agent: PID 1, the
// guest agent on /dev/ttyS1, a shell and the commands of
// guestagent/applets, linked from /bin), gzip-compressed newc cpio built
// by package initramfs.
//
// The archive is committed (prebuilt/initramfs.cpio.gz) and embedded, so a
// fresh clone, and a klp-kvm binary inside the nested tier's VM, has it
// with no toolchain and no download. `go generate ./guestagent/initrd`
// rebuilds it; TestPrebuiltUpToDate rebuilds and compares byte for byte
// when the Go toolchain is the one that built it (prebuilt/TOOLCHAIN).
// The build is reproducible: -trimpath, -buildvcs=false, no build id,
// fixed mtimes and owners, sorted records, a gzip header without time.
package initrd

//go:generate go run ./gen

import (
	"bytes"
	"compress/gzip"
	_ "embed"
	"errors"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"

	"github.com/u-root/u-root/pkg/cpio"

	"klp-kvm/guestagent/applets"
	"klp-kvm/initramfs"
	"klp-kvm/klperr"
)

//go:embed prebuilt/initramfs.cpio.gz
var prebuilt []byte

// Toolchain is the Go version that built the prebuilt archive.
//
//go:embed prebuilt/TOOLCHAIN
var Toolchain string

// Error is the one error type of package initrd, by the convention of
// package klperr.
type Error struct {
	Op     string // "default", "build", "agent"
	Kind   error
	Detail string
	Err    error
}

// Kinds of Error.
var (
	ErrCorrupt = errors.New("archive corrupt")    // the embedded or given archive does not read
	ErrInvalid = errors.New("invalid argument")   // bad Options
	ErrBuild   = errors.New("agent build failed") // the go toolchain failed
)

func (e *Error) Error() string { return klperr.Format("initrd", e.Op, "", e.Kind, 0, e.Detail, e.Err) }

// Is matches the kind.
func (e *Error) Is(target error) bool { return klperr.Match(target, e.Kind, 0) }

func (e *Error) Unwrap() error { return e.Err }

// Default returns the embedded archive (a copy: callers may keep it).
func Default() ([]byte, error) {
	if len(prebuilt) < 18 || prebuilt[0] != 0x1f || prebuilt[1] != 0x8b {
		return nil, &Error{Op: "default", Kind: ErrCorrupt, Detail: "embedded archive is not gzip (run go generate ./guestagent/initrd)"}
	}
	return bytes.Clone(prebuilt), nil
}

// File is an extra file for Build.
type File struct {
	Path string // in the guest, e.g. "/opt/test/prog"
	Data []byte
	Mode uint64 // permission bits, e.g. 0o755
}

// Options configures Build.
type Options struct {
	// Agent is the static klp-agent binary for /init; nil takes the one in
	// the embedded archive (no toolchain needed).
	Agent []byte
	// Files are added as they are; a path the base layout has is an error.
	Files []File
}

// Layout: the directories /init mounts on, and the console device the
// kernel opens for /init before devtmpfs is mounted.
var dirs = []string{"bin", "dev", "etc", "proc", "root", "run", "sys", "tmp"}

// Build returns the gzip-compressed cpio archive of opts: /init, a /bin
// link (-> /init) per applet, the mount points, /dev/console, /etc/hostname,
// and opts.Files.
func Build(opts Options) ([]byte, error) {
	agent := opts.Agent
	if agent == nil {
		def, err := Default()
		if err != nil {
			return nil, err
		}
		if agent, err = ReadFile(def, "init"); err != nil {
			return nil, err
		}
	}
	if len(agent) < 4 || string(agent[:4]) != "\x7fELF" {
		return nil, &Error{Op: "build", Kind: ErrInvalid, Detail: "agent is not an ELF executable"}
	}
	a := initramfs.New()
	steps := []func() error{
		func() error { return a.AddBytes("init", agent, 0o755) },
		func() error { return a.AddCharDev("dev/console", 0o600, 5, 1) },
		func() error { return a.AddBytes("etc/hostname", []byte("klp-guest\n"), 0o644) },
	}
	for _, d := range dirs {
		perm := uint64(0o755)
		if d == "tmp" {
			perm = 0o1777
		}
		steps = append(steps, func() error { return a.AddDir(d, perm) })
	}
	for _, n := range applets.Names() {
		steps = append(steps, func() error { return a.AddSymlink("bin/"+n, "/init") })
	}
	for _, f := range opts.Files {
		steps = append(steps, func() error {
			p := path.Clean("/" + f.Path)
			if p == "/" {
				return &Error{Op: "build", Kind: ErrInvalid, Detail: "file path " + f.Path}
			}
			return a.AddBytes(p[1:], f.Data, f.Mode)
		})
	}
	for _, s := range steps {
		if err := s(); err != nil {
			return nil, &Error{Op: "build", Kind: ErrInvalid, Err: err}
		}
	}
	var buf bytes.Buffer
	if err := a.WriteGzip(&buf); err != nil {
		return nil, &Error{Op: "build", Kind: ErrInvalid, Err: err}
	}
	return buf.Bytes(), nil
}

// maxFile bounds what ReadFile unpacks from an archive.
const maxFile = 64 << 20

// ReadFile returns the contents of the regular file name ("init") in a
// gzip-compressed newc archive.
func ReadFile(archive []byte, name string) ([]byte, error) {
	zr, err := gzip.NewReader(bytes.NewReader(archive))
	if err != nil {
		return nil, &Error{Op: "read", Kind: ErrCorrupt, Err: err}
	}
	// the cpio reader wants ReaderAt: unpack (bounded) first
	raw, err := io.ReadAll(io.LimitReader(zr, 4*maxFile))
	if err != nil {
		return nil, &Error{Op: "read", Kind: ErrCorrupt, Err: err}
	}
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(raw)))
	if err != nil {
		return nil, &Error{Op: "read", Kind: ErrCorrupt, Err: err}
	}
	for _, r := range recs {
		if cpio.Normalize(r.Name) == name && r.Mode&cpio.S_IFMT == cpio.S_IFREG {
			if r.FileSize > maxFile {
				return nil, &Error{Op: "read", Kind: ErrCorrupt, Detail: name + " too large"}
			}
			b, err := io.ReadAll(io.NewSectionReader(r, 0, int64(r.FileSize)))
			if err != nil {
				return nil, &Error{Op: "read", Kind: ErrCorrupt, Err: err}
			}
			return b, nil
		}
	}
	return nil, &Error{Op: "read", Kind: ErrCorrupt, Detail: "no file " + name}
}

// BuildAgent compiles cmd/klp-agent of the module at moduleRoot with the
// go toolchain on PATH: static (CGO_ENABLED=0), linux/amd64, and
// reproducible (-trimpath -buildvcs=false, no build id, stripped).
func BuildAgent(moduleRoot string) ([]byte, error) {
	dir, err := os.MkdirTemp("", "klp-agent-build")
	if err != nil {
		return nil, &Error{Op: "agent", Kind: ErrBuild, Err: err}
	}
	defer os.RemoveAll(dir)
	out := filepath.Join(dir, "klp-agent")
	cmd := exec.Command("go", "build", "-trimpath", "-buildvcs=false", "-ldflags=-s -w -buildid=", "-o", out, "./cmd/klp-agent")
	cmd.Dir = moduleRoot
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64", "GOFLAGS=", "GOEXPERIMENT=")
	if msg, err := cmd.CombinedOutput(); err != nil {
		return nil, &Error{Op: "agent", Kind: ErrBuild, Detail: strings.TrimSpace(string(msg)), Err: err}
	}
	b, err := os.ReadFile(out)
	if err != nil {
		return nil, &Error{Op: "agent", Kind: ErrBuild, Err: err}
	}
	return b, nil
}

// GoVersion is `go env GOVERSION` of the toolchain on PATH (prebuilt's
// TOOLCHAIN records it).
func GoVersion() (string, error) {
	out, err := exec.Command("go", "env", "GOVERSION").Output()
	if err != nil {
		return "", &Error{Op: "agent", Kind: ErrBuild, Detail: "go env GOVERSION", Err: err}
	}
	return strings.TrimSpace(string(out)), nil
}
