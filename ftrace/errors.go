// Package ftrace is the host side of the guest's function tracing hooks:
// the table of fentry sites and their states (5-byte NOP or jmp to a
// trampoline), the patch-area allocator, klp_ops trampolines
// (`jmp *slot(%rip)` + an 8-byte slot) and the one routine that writes
// guest text: a verified batch of pokes, applied only while the guest is
// paused and only if every expected old byte is still there.
package ftrace

import (
	"errors"
	"fmt"
	"strings"
	"syscall"

	"klp-kvm/klperr"
)

// Error kinds, checked with errors.Is.
var (
	ErrNoMem     = errors.New("patch area exhausted")              // ENOMEM
	ErrMismatch  = errors.New("unexpected bytes at a text poke")   // like ftrace_verify_code's -EINVAL
	ErrNotPaused = errors.New("guest is not paused")               // text pokes need a paused guest
	ErrInvalid   = errors.New("invalid argument")                  // bad address, size, alignment
	ErrMemory    = errors.New("guest memory access failed")        // the Memory interface failed
	ErrRange     = errors.New("jump target out of rel32 range")    // site and trampoline too far apart
	ErrState     = errors.New("site is not in the expected state") // bookkeeping misuse
)

// Error is the error type of package ftrace, by the convention of package
// klperr; Addr and Site locate the problem.
type Error struct {
	Op     string        // "alloc", "free", "poke", "redirect", ...
	Kind   error         // one of the Err* values
	Errno  syscall.Errno // 0: ftrace errors map to errnos in livepatch
	Addr   uint64        // guest address involved, if any
	Site   string        // symbol+offset of the site, if known
	Detail string
	Err    error // underlying cause
}

func (e *Error) Error() string {
	subject := e.Site
	if e.Addr != 0 {
		subject = strings.TrimSpace(fmt.Sprintf("%s (%#x)", e.Site, e.Addr))
	}
	return klperr.Format("ftrace", e.Op, subject, e.Kind, e.Errno, e.Detail, e.Err)
}

// Is matches the kind or the errno.
func (e *Error) Is(target error) bool { return klperr.Match(target, e.Kind, e.Errno) }

// As gives the errno to errors.As(err, &errno).
func (e *Error) As(target any) bool { return klperr.AsErrno(target, e.Errno) }

func (e *Error) Unwrap() error { return e.Err }

func errorf(op string, kind error, addr uint64, format string, args ...any) *Error {
	return &Error{Op: op, Kind: kind, Addr: addr, Detail: fmt.Sprintf(format, args...)}
}
