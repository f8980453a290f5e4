package linuxlive

import (
	"errors"
	"fmt"
	"syscall"

	"klp-kvm/klperr"
)

// Kinds of failure, matched with errors.Is; each comes with the errno
// Linux's livepatch core (or its module loader) answers in the same case.
var (
	// ErrBusy: a consistency check kept failing until the deadline, or
	// the stacking rules forbid the operation now (EBUSY).
	ErrBusy = errors.New("busy")
	// ErrSiteInUse: an old function's fentry site is not the 5-byte NOP
	// and not our own jump: the guest's ftrace, a kprobe or BPF uses it
	// (EBUSY, as ftrace refuses a second owner).
	ErrSiteInUse = errors.New("fentry site in use by the guest")
	// ErrExists: a patch of that name is registered (EEXIST).
	ErrExists = errors.New("already registered")
	// ErrNotFound: no patch of that name (ENOENT).
	ErrNotFound = errors.New("no such patch")
	// ErrUnsupported: the module asks for something this first path does
	// not do (callbacks, states, atomic replace, module objects)
	// (EOPNOTSUPP).
	ErrUnsupported = errors.New("not supported for Linux guests yet")
	// ErrNoSpace: the patch area or the module-area window is full
	// (ENOMEM).
	ErrNoSpace = errors.New("no space")
	// ErrCollision: the guest maps something where the host would map
	// the patch (EEXIST): nothing is written.
	ErrCollision = errors.New("address range in use by the guest")
	// ErrGuest: the guest's memory or page tables are not what they must
	// be (unreadable, malformed: untrusted input), or a write failed (EIO).
	ErrGuest = errors.New("guest state")
	// ErrModule: the .ko was refused by linuxpatch (its error is the
	// cause, with its errno when it has one, else EINVAL).
	ErrModule = errors.New("module refused")
)

// Error is the one error type of package linuxlive, by the convention of
// package klperr: Op is the operation ("load", "enable", "map", ...),
// Patch the patch it concerns.
type Error struct {
	Op     string
	Kind   error
	Errno  syscall.Errno
	Detail string
	Err    error
	Patch  string
}

func (e *Error) Error() string {
	subject := ""
	if e.Patch != "" {
		subject = fmt.Sprintf("%q", e.Patch)
	}
	return klperr.Format("linuxlive", e.Op, subject, e.Kind, e.Errno, e.Detail, e.Err)
}

// Is matches the kind or the errno.
func (e *Error) Is(target error) bool { return klperr.Match(target, e.Kind, e.Errno) }

// As gives the errno to errors.As(err, &errno).
func (e *Error) As(target any) bool { return klperr.AsErrno(target, e.Errno) }

func (e *Error) Unwrap() error { return e.Err }

// errnoOf is each kind's errno.
func errnoOf(kind error) syscall.Errno {
	switch kind {
	case ErrBusy, ErrSiteInUse:
		return syscall.EBUSY
	case ErrExists, ErrCollision:
		return syscall.EEXIST
	case ErrNotFound:
		return syscall.ENOENT
	case ErrUnsupported:
		return syscall.EOPNOTSUPP
	case ErrNoSpace:
		return syscall.ENOMEM
	case ErrModule:
		return syscall.EINVAL
	}
	return syscall.EIO
}

func errf(op, patch string, kind error, format string, args ...any) *Error {
	return &Error{Op: op, Patch: patch, Kind: kind, Errno: errnoOf(kind), Detail: fmt.Sprintf(format, args...)}
}

func wrap(op, patch string, kind error, err error, format string, args ...any) *Error {
	e := errf(op, patch, kind, format, args...)
	e.Err = err
	if kind == ErrModule {
		// linuxpatch's own errno (ENOEXEC, ...) where it has one.
		var errno syscall.Errno
		if errors.As(err, &errno) && errno != 0 {
			e.Errno = errno
		}
	}
	return e
}
