package guestkernel

import (
	"errors"
	"fmt"
)

// Error is the one error type of this package: what was being done (Op),
// what went wrong (Kind, checkable with errors.Is), and where.
type Error struct {
	Op     string // "open abi", "read task", "walk stack", "write sysfs state", ...
	Kind   error  // one of the Err* sentinels below
	Addr   uint64 // guest virtual address involved, if any
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
	s := "guestkernel: " + e.Op + ": " + e.Kind.Error()
	if e.Detail != "" {
		s += ": " + e.Detail
	}
	if e.Addr != 0 {
		s += fmt.Sprintf(" (at %#x)", e.Addr)
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Is makes errors.Is(err, ErrX) match the Kind.
func (e *Error) Is(target error) bool { return target == e.Kind }

func (e *Error) Unwrap() error { return e.Err }

func errorf(op string, kind error, addr uint64, format string, args ...any) *Error {
	return &Error{Op: op, Kind: kind, Addr: addr, Detail: fmt.Sprintf(format, args...)}
}
