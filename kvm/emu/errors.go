package emu

import (
	"errors"
	"fmt"
	"syscall"

	"klp-kvm/klperr"
)

// Kinds of Error. Each maps to the errno a KVM ioctl would return for the
// same situation (kindErrno), so callers can treat both engines alike:
// errors.Is(err, syscall.EBUSY) holds for an emu ErrBusy as for KVM's.
var (
	ErrInvalid     = errors.New("invalid argument")            // a bad argument (EINVAL)
	ErrBusy        = errors.New("busy")                        // the vCPU is running, or the id is taken (EBUSY)
	ErrClosed      = errors.New("closed")                      // the VM or vCPU was closed (EBADF)
	ErrUnsupported = errors.New("unsupported by the emulator") // a state the interpreter cannot run (ENOTSUP)
)

var kindErrno = map[error]syscall.Errno{
	ErrInvalid:     syscall.EINVAL,
	ErrBusy:        syscall.EBUSY,
	ErrClosed:      syscall.EBADF,
	ErrUnsupported: syscall.ENOTSUP,
}

// Error is the one error type of package emu, by the convention of
// package klperr: the operation, its kind and the kind's errno.
type Error struct {
	Op     string
	Kind   error // one of the Err* kinds
	Errno  syscall.Errno
	Detail string
	Err    error // underlying cause, if any
}

func (e *Error) Error() string {
	return klperr.Format("emu", e.Op, "", e.Kind, e.Errno, e.Detail, e.Err)
}

// Is matches the kind or its errno.
func (e *Error) Is(target error) bool { return klperr.Match(target, e.Kind, e.Errno) }

// As gives the errno to errors.As(err, &errno).
func (e *Error) As(target any) bool { return klperr.AsErrno(target, e.Errno) }

func (e *Error) Unwrap() error { return e.Err }

func errorf(op string, kind error, format string, args ...any) error {
	return &Error{Op: op, Kind: kind, Errno: kindErrno[kind], Detail: fmt.Sprintf(format, args...)}
}
