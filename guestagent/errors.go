package guestagent

import (
	"errors"
	"syscall"

	"klp-kvm/klperr"
)

// Error is the one error type of package guestagent, by the convention of
// package klperr.
type Error struct {
	Op     string        // "serve", "tty", "init"
	Kind   error         // one of the Err* sentinels
	Errno  syscall.Errno // the failing system call's errno, if any
	Detail string
	Err    error
}

// Kinds of Error.
var (
	ErrIO      = errors.New("i/o error")        // the port failed
	ErrSetup   = errors.New("setup failed")     // mounting, opening or configuring the port
	ErrInvalid = errors.New("invalid argument") // bad options
)

func (e *Error) Error() string {
	return klperr.Format("guestagent", e.Op, "", e.Kind, e.Errno, e.Detail, e.Err)
}

// Is matches the kind or the errno.
func (e *Error) Is(target error) bool { return klperr.Match(target, e.Kind, e.Errno) }

// As gives the errno to errors.As(err, &errno).
func (e *Error) As(target any) bool { return klperr.AsErrno(target, e.Errno) }

func (e *Error) Unwrap() error { return e.Err }

func wrap(op string, kind error, detail string, err error) *Error {
	return &Error{Op: op, Kind: kind, Detail: detail, Errno: klperr.Errno(err), Err: err}
}
