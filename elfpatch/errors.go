package elfpatch

import (
	"errors"
	"fmt"
	"strings"
	"syscall"

	"klp-kvm/klperr"
)

// Sentinel kinds of Error, checkable with errors.Is.
var (
	// ErrFormat: the input is not a well-formed ELF64 x86-64 file of the
	// expected type, or a header, table or klp structure lies.
	ErrFormat = errors.New("malformed input")
	// ErrUnknownReloc: a relocation type the loader does not implement.
	ErrUnknownReloc = errors.New("unsupported relocation type")
	// ErrUnresolved: a symbol (or old function, or object) that cannot be found.
	ErrUnresolved = errors.New("unresolved symbol")
	// ErrAmbiguous: a name with several matches and sympos 0.
	ErrAmbiguous = errors.New("ambiguous symbol")
	// ErrRange: a relocated value, address or size out of range.
	ErrRange = errors.New("out of range")
	// ErrNotPatchable: the old function exists but cannot be redirected.
	ErrNotPatchable = errors.New("not patchable")
	// ErrDuplicate: the same function or object given twice.
	ErrDuplicate = errors.New("duplicate")
)

// Error is the one error type of the package, by the convention of package
// klperr. Op names the operation ("parse kernel", "parse patch",
// "relocate", "resolve", ...); Section, Offset and Symbol locate the
// problem when they apply; Kind is one of the sentinel kinds, Detail says
// what exactly, Err is an underlying cause (an I/O error).
type Error struct {
	Op      string
	Kind    error
	Errno   syscall.Errno // 0: input-format errors have no errno of their own
	Detail  string
	Err     error
	Section string
	Offset  uint64
	Symbol  string
}

func (e *Error) Error() string {
	var where []string
	if e.Section != "" {
		where = append(where, fmt.Sprintf("section %s+%#x", e.Section, e.Offset))
	}
	if e.Symbol != "" {
		where = append(where, "symbol "+e.Symbol)
	}
	op := e.Op
	if len(where) > 0 {
		op += ": " + strings.Join(where, ": ")
	}
	return klperr.Format("elfpatch", op, "", e.Kind, e.Errno, e.Detail, e.Err)
}

// Is matches the kind or the errno.
func (e *Error) Is(target error) bool { return klperr.Match(target, e.Kind, e.Errno) }

// As gives the errno to errors.As(err, &errno).
func (e *Error) As(target any) bool { return klperr.AsErrno(target, e.Errno) }

func (e *Error) Unwrap() error { return e.Err }

// set places what err says into e: a kind with its detail (kindf, inner),
// or else a cause. It returns e.
func (e *Error) set(err error) *Error {
	if k, ok := err.(*kindErr); ok {
		e.Kind, e.Detail = k.kind, k.detail
	} else {
		e.Err = err
	}
	return e
}

// kindErr is a kind with its detail, not yet placed: helpers that do not
// know where they are return one (kindf), and the caller puts it into an
// Error with set.
type kindErr struct {
	kind   error
	detail string
}

func (k *kindErr) Error() string { return k.kind.Error() + ": " + k.detail }
func (k *kindErr) Unwrap() error { return k.kind }

// kindf is a kind with a formatted detail.
func kindf(kind error, format string, args ...any) error {
	return &kindErr{kind: kind, detail: fmt.Sprintf(format, args...)}
}

func errorf(op string, kind error, format string, args ...any) *Error {
	return &Error{Op: op, Kind: kind, Detail: fmt.Sprintf(format, args...)}
}
