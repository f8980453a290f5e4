package bzimage

import (
	"errors"
	"fmt"
	"syscall"

	"klp-kvm/klperr"
)

// Kinds of failure, matched with errors.Is.
var (
	// ErrFormat: the file is not a bzImage this loader can boot (a
	// header field out of range, sizes beyond the file); Error.Offset
	// says where.
	ErrFormat = errors.New("malformed bzImage")
	// ErrUnsupported: a well-formed bzImage that cannot be booted through
	// the 64-bit boot protocol (too old, no 64-bit entry).
	ErrUnsupported = errors.New("unsupported bzImage")
	// ErrLayout: the boot parameters do not fit (command line too long,
	// too many e820 entries, an initrd above what the kernel can reach).
	ErrLayout = errors.New("boot parameters do not fit")
)

// Error is the one error type of package bzimage, by the convention of
// package klperr, with the file offset of the offending field (-1 when
// the problem is not at one place in the file).
type Error struct {
	Op     string
	Kind   error
	Errno  syscall.Errno
	Offset int64
	Detail string
	Err    error
}

func (e *Error) Error() string {
	subject := ""
	if e.Offset >= 0 {
		subject = fmt.Sprintf("at offset %#x", e.Offset)
	}
	return klperr.Format("bzimage", e.Op, subject, e.Kind, e.Errno, e.Detail, e.Err)
}

// Is matches the kind or the errno.
func (e *Error) Is(target error) bool { return klperr.Match(target, e.Kind, e.Errno) }

// As gives the errno to errors.As(err, &errno).
func (e *Error) As(target any) bool { return klperr.AsErrno(target, e.Errno) }

func (e *Error) Unwrap() error { return e.Err }

func formatErr(off int64, format string, args ...any) *Error {
	return &Error{Op: "parse", Kind: ErrFormat, Offset: off, Detail: fmt.Sprintf(format, args...)}
}
