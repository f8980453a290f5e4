package emu

import (
	"fmt"
	"syscall"
)

// Kind classifies an Error; each Kind maps to the errno a KVM ioctl would
// return for the same situation, so callers can treat both engines alike.
type Kind int

const (
	// KindInvalid: a bad argument (EINVAL).
	KindInvalid Kind = iota + 1
	// KindBusy: the vCPU is running, or the id is taken (EBUSY).
	KindBusy
	// KindClosed: the VM or vCPU was closed (EBADF).
	KindClosed
	// KindUnsupported: a state the interpreter cannot run (ENOTSUP).
	KindUnsupported
)

var kindErrno = map[Kind]syscall.Errno{
	KindInvalid:     syscall.EINVAL,
	KindBusy:        syscall.EBUSY,
	KindClosed:      syscall.EBADF,
	KindUnsupported: syscall.ENOTSUP,
}

// Error is the one error type of package emu. It names the operation and a
// Kind; errors.Is matches it against another *Error with the same Kind (the
// Err* sentinels below) or against the Kind's syscall.Errno.
type Error struct {
	Op   string
	Kind Kind
	Msg  string
}

// Sentinels for errors.Is.
var (
	ErrInvalid     = &Error{Kind: KindInvalid}
	ErrBusy        = &Error{Kind: KindBusy}
	ErrClosed      = &Error{Kind: KindClosed}
	ErrUnsupported = &Error{Kind: KindUnsupported}
)

func (e *Error) Error() string {
	s := "emu"
	if e.Op != "" {
		s += ": " + e.Op
	}
	if e.Msg != "" {
		s += ": " + e.Msg
	}
	return s + " (" + e.Errno().Error() + ")"
}

// Errno is the errno equivalent of the error's Kind.
func (e *Error) Errno() syscall.Errno { return kindErrno[e.Kind] }

// Is reports whether target is an *Error of the same Kind, or its errno.
func (e *Error) Is(target error) bool {
	switch t := target.(type) {
	case *Error:
		return t.Kind == e.Kind
	case syscall.Errno:
		return t == e.Errno()
	}
	return false
}

func errorf(op string, k Kind, format string, args ...any) error {
	return &Error{Op: op, Kind: k, Msg: fmt.Sprintf(format, args...)}
}
