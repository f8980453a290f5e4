package kvm

import (
	"errors"
	"fmt"
	"syscall"

	"klp-kvm/klperr"
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
	// ErrReset: a Linux guest reset the machine (reboot, or a panic with
	// panic=-1); the machine stops as on klp-kvm's power-off port, and
	// StopReason says which reset it was.
	ErrReset = errors.New("guest reset")
)

// Error is the error type of package kvm, by the convention of package
// klperr: the operation, a kind (one of the Err* values), the errno where
// one applies, details and the underlying cause.
type Error struct {
	Op     string // e.g. "load kernel", "pause", "read guest memory"
	Kind   error
	Errno  syscall.Errno
	Detail string
	Err    error // underlying cause, if any
}

func (e *Error) Error() string {
	return klperr.Format("kvm", e.Op, "", e.Kind, e.Errno, e.Detail, e.Err)
}

// Is matches the kind or the errno.
func (e *Error) Is(target error) bool { return klperr.Match(target, e.Kind, e.Errno) }

// As gives the errno to errors.As(err, &errno).
func (e *Error) As(target any) bool { return klperr.AsErrno(target, e.Errno) }

func (e *Error) Unwrap() error { return e.Err }

func errorf(op string, kind error, format string, args ...any) *Error {
	return &Error{Op: op, Kind: kind, Detail: fmt.Sprintf(format, args...)}
}
