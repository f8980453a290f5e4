package livepatch

import (
	"fmt"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"klp-kvm/klperr"
)

// Error is the error type of package livepatch, by the convention of
// package klperr: the operation, the patch and the Linux errno the kernel's
// livepatch core would return, so callers test it with
// errors.Is(err, syscall.EBUSY) and the guest's sysfs write returns the
// same errno as the API. The errno is the kind: Kind stays nil.
type Error struct {
	Op     string // "register", "enable", "disable", "unregister", "sysfs write", ...
	Kind   error  // nil: the errno says what went wrong
	Errno  syscall.Errno
	Detail string
	Err    error  // underlying cause (elfpatch, ftrace, guestkernel errors)
	Patch  string // the patch operated on, if any
}

func (e *Error) Error() string {
	return klperr.Format("livepatch", e.Op, e.Patch, e.Kind, e.Errno, e.Detail, e.Err)
}

// Is matches the errno (errors.Is(err, syscall.EBUSY)) or the kind.
func (e *Error) Is(target error) bool { return klperr.Match(target, e.Kind, e.Errno) }

// As lets errors.As(err, &errno) find the errno (what a guest's sysfs
// write is answered with).
func (e *Error) As(target any) bool { return klperr.AsErrno(target, e.Errno) }

func (e *Error) Unwrap() error { return e.Err }

// ErrnoName is the errno's Linux name ("EBUSY").
func (e *Error) ErrnoName() string { return unix.ErrnoName(e.Errno) }

// ErrSwitched is the errno (EREMOTEIO) of an operation whose switch
// happened — the patch is enabled or disabled as asked, and the Result
// returned with the error says so — but one of its void callbacks
// (post_patch, pre_unpatch, post_unpatch) did not run to completion: the
// call into the guest failed or timed out. errors.Is(err, ErrSwitched)
// tells it from a failed operation, which left the state as it was. A
// pre_patch that fails is not this: it aborts the enable.
const ErrSwitched = syscall.EREMOTEIO

func errorf(op, patch string, errno syscall.Errno, format string, args ...any) *Error {
	return &Error{Op: op, Patch: patch, Errno: errno, Detail: fmt.Sprintf(format, args...)}
}

// alsoFailed reports cerr, an error met while cleaning up after err (a
// Resume of the guest, putting the sysfs mirror back), together with err:
// nothing is dropped. err stays first and keeps deciding the errno and
// the error's type: a *Error gets cerr appended to its cause (Err), any
// other error is wrapped. errors.Is and errors.As see both. what names
// the cleanup step ("resuming the guest"). A nil cerr returns err as it
// is; a nil err returns cerr alone, wrapped.
func alsoFailed(err error, what string, cerr error) error {
	switch {
	case cerr == nil:
		return err
	case err == nil:
		return fmt.Errorf("%s failed: %w", what, cerr)
	}
	if e, ok := err.(*Error); ok {
		if e.Err == nil {
			e.Err = fmt.Errorf("%s also failed: %w", what, cerr)
		} else {
			e.Err = fmt.Errorf("%w; %s also failed: %w", e.Err, what, cerr)
		}
		return e
	}
	return fmt.Errorf("%w; %s also failed: %w", err, what, cerr)
}

// withNote adds note (if not "") to err's detail: something the caller
// must know about the outcome that is not a failure of its own (an image
// kept in the patch area). A nil err stays nil.
func withNote(err error, note string) error {
	if err == nil || note == "" {
		return err
	}
	if e, ok := err.(*Error); ok {
		if e.Detail != "" {
			e.Detail += "; "
		}
		e.Detail += note
		return e
	}
	return fmt.Errorf("%w; %s", err, note)
}

// joinErrors is errors.Join on one line: the errors that are not nil,
// separated by "; " (nil if there are none). errors.Is and errors.As see
// each of them.
func joinErrors(errs ...error) error {
	var l errorList
	for _, err := range errs {
		if err != nil {
			l = append(l, err)
		}
	}
	if len(l) == 0 {
		return nil
	}
	if len(l) == 1 {
		return l[0]
	}
	return l
}

type errorList []error

func (l errorList) Error() string {
	s := make([]string, len(l))
	for i, err := range l {
		s[i] = err.Error()
	}
	return strings.Join(s, "; ")
}

func (l errorList) Unwrap() []error { return l }
