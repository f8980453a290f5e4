package linuxkernel

import (
	"errors"
	"fmt"
	"syscall"

	"klp-kvm/klperr"
)

// Kinds of failure, matched with errors.Is. Everything this package reads
// comes from an untrusted guest, so most errors are ErrBounds, ErrFormat
// or ErrLimit naming the guest address or offset that was wrong.
var (
	// ErrBounds: a guest-physical read outside RAM, or a virtual address
	// the guest's page tables do not map.
	ErrBounds = errors.New("outside guest memory")
	// ErrFormat: guest data (vmcoreinfo, kallsyms tables, BTF, a task)
	// does not have the shape the kernel writes.
	ErrFormat = errors.New("malformed guest data")
	// ErrLimit: a bound was hit (page-walk depth, table size, list length,
	// a cycle in a list).
	ErrLimit = errors.New("limit exceeded")
	// ErrNotFound: a symbol, a BTF type or member, or vmcoreinfo itself
	// is absent.
	ErrNotFound = errors.New("not found")
	// ErrInvalid: the caller passed something unusable (no memory, a bad
	// option).
	ErrInvalid = errors.New("invalid argument")
	// ErrUnsupported: the guest kernel uses a format this package does
	// not know (e.g. the ORC entry layout of Linux >= 6.3).
	ErrUnsupported = errors.New("unsupported kernel format")
)

// Error is the one error type of package linuxkernel, by the convention of
// package klperr: Op names the step ("page walk", "kallsyms", "btf",
// "tasks", ...), Detail the guest address/offset and what was wrong.
type Error struct {
	Op     string
	Kind   error
	Errno  syscall.Errno
	Detail string
	Err    error
}

func (e *Error) Error() string {
	return klperr.Format("linuxkernel", e.Op, "", e.Kind, e.Errno, e.Detail, e.Err)
}

// Is matches the kind or the errno.
func (e *Error) Is(target error) bool { return klperr.Match(target, e.Kind, e.Errno) }

// As gives the errno to errors.As(err, &errno).
func (e *Error) As(target any) bool { return klperr.AsErrno(target, e.Errno) }

func (e *Error) Unwrap() error { return e.Err }

func errf(op string, kind error, format string, args ...any) error {
	return &Error{Op: op, Kind: kind, Detail: fmt.Sprintf(format, args...)}
}

func wrap(op string, kind error, err error, format string, args ...any) error {
	return &Error{Op: op, Kind: kind, Detail: fmt.Sprintf(format, args...), Err: err}
}
