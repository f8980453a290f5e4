package linuxpatch

import (
	"errors"
	"fmt"
	"strings"
	"syscall"

	"klp-kvm/klperr"
)

// Kinds of failure, matched with errors.Is. A module is untrusted input:
// nearly every error names the section, offset and symbol concerned.
var (
	// ErrFormat: the .ko is not a well-formed relocatable x86-64 ELF
	// object, or its klp structures do not have the shape Linux's
	// livepatch core accepts (the checks of klp_init_patch_early and
	// friends).
	ErrFormat = errors.New("malformed module")
	// ErrUnsupported: well formed, but it needs something the host cannot
	// do without a module loader in the guest (jump labels, an exception
	// table, alternatives, constructors, ...) or a relocation type Linux's
	// x86-64 module loader does not implement.
	ErrUnsupported = errors.New("unsupported")
	// ErrSymbol: a symbol cannot be resolved (unknown, ambiguous, a
	// .klp.sym name Linux would reject); the resolver's own error is the
	// cause.
	ErrSymbol = errors.New("symbol")
	// ErrNotFound: the symbol does not exist. Resolvers return an error
	// matching it for "no such symbol", so that a weak reference resolves
	// to 0 as in Linux's simplify_symbols.
	ErrNotFound = errors.New("no such symbol")
	// ErrRange: a relocated value does not fit its field (PC32 beyond
	// ±2 GiB, 32/32S truncation), or an address, size or alignment is out
	// of range.
	ErrRange = errors.New("out of range")
	// ErrVersion: the module's vermagic does not name the kernel's
	// release.
	ErrVersion = errors.New("version mismatch")
)

// Error is the one error type of package linuxpatch, by the convention of
// package klperr. Op names the step ("parse", "modinfo", "btf", "klp",
// "layout", "relocate", "fentry"); Section, Offset and Symbol locate the
// problem when they apply.
type Error struct {
	Op      string
	Kind    error
	Errno   syscall.Errno // Linux's answer where the loader has one (ENOEXEC, EINVAL), else 0
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
	return klperr.Format("linuxpatch", e.Op, strings.Join(where, " "), e.Kind, e.Errno, e.Detail, e.Err)
}

// Is matches the kind or the errno.
func (e *Error) Is(target error) bool { return klperr.Match(target, e.Kind, e.Errno) }

// As gives the errno to errors.As(err, &errno).
func (e *Error) As(target any) bool { return klperr.AsErrno(target, e.Errno) }

func (e *Error) Unwrap() error { return e.Err }

func errf(op string, kind error, format string, args ...any) *Error {
	return &Error{Op: op, Kind: kind, Detail: fmt.Sprintf(format, args...)}
}

// at places e in a section at an offset.
func (e *Error) at(section string, off uint64) *Error {
	e.Section, e.Offset = section, off
	return e
}

// sym names the symbol concerned.
func (e *Error) sym(name string) *Error {
	e.Symbol = name
	return e
}

// errno sets Linux's errno for the same refusal.
func (e *Error) errno(en syscall.Errno) *Error {
	e.Errno = en
	return e
}
