package elfpatch

import (
	"errors"
	"fmt"
	"strings"
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

// Error is the one error type of the package. Op names the operation
// ("parse kernel", "parse patch", "relocate", "resolve", ...); Section,
// Offset and Symbol locate the problem when they apply; Err wraps one of the
// sentinel kinds, with detail.
type Error struct {
	Op      string
	Section string
	Offset  uint64
	Symbol  string
	Err     error
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("elfpatch: ")
	b.WriteString(e.Op)
	if e.Section != "" {
		fmt.Fprintf(&b, ": section %s+%#x", e.Section, e.Offset)
	}
	if e.Symbol != "" {
		fmt.Fprintf(&b, ": symbol %s", e.Symbol)
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// kindf wraps a sentinel kind with a formatted detail.
func kindf(kind error, format string, args ...any) error {
	return fmt.Errorf("%w: %s", kind, fmt.Sprintf(format, args...))
}

func errorf(op string, kind error, format string, args ...any) *Error {
	return &Error{Op: op, Err: kindf(kind, format, args...)}
}
