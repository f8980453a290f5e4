package guestkernel

import (
	"errors"
	"fmt"
	"strings"
	"syscall"

	"klp-kvm/klperr"
)

// Error is the one error type of this package, by the convention of
// package klperr: what was being done (Op), what went wrong (Kind,
// checkable with errors.Is), where (Addr), and the cause.
type Error struct {
	Op     string        // "open abi", "read task", "walk stack", "write sysfs state", ...
	Kind   error         // one of the Err* sentinels below
	Errno  syscall.Errno // 0 unless the guest reported one
	Addr   uint64        // guest virtual address involved, if any
	Detail string
	Err    error // underlying error (e.g. from Memory), if any
}

// Kinds of Error.
var (
	ErrFormat   = errors.New("malformed guest data")       // bad magic, version, size, layout
	ErrBounds   = errors.New("out of bounds")              // a guest value points outside what it may
	ErrMemory   = errors.New("guest memory access failed") // the Memory interface returned an error
	ErrNotFound = errors.New("not found")                  // symbol, task or entry missing
	ErrCapacity = errors.New("capacity exceeded")          // more entries than the guest buffer holds
	ErrInvalid  = errors.New("invalid argument")           // caller error: bad name, bad value
	ErrBusy     = errors.New("guest busy, retry")          // e.g. a CPU inside klp_switch_to
)

func (e *Error) Error() string {
	detail := e.Detail
	if e.Addr != 0 {
		detail = strings.TrimSpace(fmt.Sprintf("%s (at %#x)", detail, e.Addr))
	}
	return klperr.Format("guestkernel", e.Op, "", e.Kind, e.Errno, detail, e.Err)
}

// Is matches the kind or the errno.
func (e *Error) Is(target error) bool { return klperr.Match(target, e.Kind, e.Errno) }

// As gives the errno to errors.As(err, &errno).
func (e *Error) As(target any) bool { return klperr.AsErrno(target, e.Errno) }

func (e *Error) Unwrap() error { return e.Err }

func errorf(op string, kind error, addr uint64, format string, args ...any) *Error {
	return &Error{Op: op, Kind: kind, Addr: addr, Detail: fmt.Sprintf(format, args...)}
}
