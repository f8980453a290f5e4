package patchbuild

import (
	"errors"
	"fmt"
	"syscall"

	"klp-kvm/klperr"
)

// Error is the one error type of package patchbuild, by the convention of
// package klperr. Op is the stage ("parse diff", "apply", "setup",
// "compile", "verify", "plan", "emit"); Path (a file of the tree or the
// diff) and Line (in the diff) locate the problem when they apply.
type Error struct {
	Op     string
	Kind   error         // one of the Err* kinds below, or nil
	Errno  syscall.Errno // none of the builder's errors has one: 0
	Detail string
	Err    error
	Path   string
	Line   int
}

// Kinds of Error, for errors.Is.
var (
	ErrNoCompiler = errors.New("no compiler")
	ErrDiff       = errors.New("not a diff the builder reads")
	ErrApply      = errors.New("the diff does not apply")
	ErrCompile    = errors.New("compile failed")
	ErrMismatch   = errors.New("the source tree does not match the running kernel")
	ErrRefused    = errors.New("refused")
)

func (e *Error) Error() string {
	subject := e.Path
	if e.Line > 0 {
		subject += fmt.Sprintf(" (diff line %d)", e.Line)
	}
	return klperr.Format("patchbuild", e.Op, subject, e.Kind, e.Errno, e.Detail, e.Err)
}

// Is matches the kind.
func (e *Error) Is(target error) bool { return klperr.Match(target, e.Kind, e.Errno) }

// As gives the errno (never set here) to errors.As(err, &errno).
func (e *Error) As(target any) bool { return klperr.AsErrno(target, e.Errno) }

func (e *Error) Unwrap() error { return e.Err }

func kindErr(op string, kind error, format string, args ...any) *Error {
	return &Error{Op: op, Kind: kind, Detail: fmt.Sprintf(format, args...)}
}

func diffErr(path string, line int, format string, args ...any) *Error {
	return &Error{Op: "parse diff", Path: path, Line: line, Kind: ErrDiff, Detail: fmt.Sprintf(format, args...)}
}
