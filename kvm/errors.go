package kvm

import (
	"errors"
	"fmt"
)

// Error kinds, checked with errors.Is.
var (
	ErrBadKernel    = errors.New("bad kernel image")
	ErrConfig       = errors.New("bad machine configuration")
	ErrNotPaused    = errors.New("machine is not paused")
	ErrPauseTimeout = errors.New("vCPU did not stop in time")
	ErrFault        = errors.New("guest memory access fault")
	ErrGuest        = errors.New("guest stopped abnormally")
	ErrStopped      = errors.New("machine is not running")
)

// Error is the error type of package kvm: the operation that failed, a
// kind (one of the Err* values, for errors.Is) and details.
type Error struct {
	Op     string // e.g. "load kernel", "pause", "read guest memory"
	Kind   error
	Detail string
	Err    error // underlying cause, if any
}

func (e *Error) Error() string {
	s := "kvm: " + e.Op + ": " + e.Kind.Error()
	if e.Detail != "" {
		s += ": " + e.Detail
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Is reports whether target is this error's kind.
func (e *Error) Is(target error) bool { return target == e.Kind }

func (e *Error) Unwrap() error { return e.Err }

func errorf(op string, kind error, format string, args ...any) *Error {
	return &Error{Op: op, Kind: kind, Detail: fmt.Sprintf(format, args...)}
}
