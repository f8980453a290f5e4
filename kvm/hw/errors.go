package hw

import (
	"errors"
	"syscall"

	"klp-kvm/klperr"
)

// Kinds of failure, matched with errors.Is. The kernel's own errno is
// matched the same way (errors.Is(err, syscall.EINVAL)).
var (
	// ErrUnavailable: /dev/kvm cannot be opened (absent, no permission, or
	// no KVM in this kernel). Callers fall back to the software engine.
	ErrUnavailable = errors.New("/dev/kvm unavailable")
	// ErrUnsupported: the host kernel's KVM lacks a capability we need.
	ErrUnsupported = errors.New("unsupported by this KVM")
	// ErrInvalid: the caller passed something KVM cannot take (RAM not
	// page-aligned, negative vCPU id, ...).
	ErrInvalid = errors.New("invalid argument")
	// ErrClosed: the VM or vCPU was closed.
	ErrClosed = errors.New("closed")
	// ErrABI: kvm_run holds values outside what the ABI allows (an I/O
	// data offset beyond the mapping, an MMIO length over 8). Never
	// trusted, never a panic.
	ErrABI = errors.New("kvm_run out of range")
)

// Error is the one error type of package hw, by the convention of package
// klperr: the operation (usually the ioctl's kernel name), the kind, and
// the kernel's errno where there is one.
type Error struct {
	Op     string        // e.g. "KVM_RUN", "open /dev/kvm"
	Kind   error         // one of the Err* kinds above, or nil
	Errno  syscall.Errno // the kernel's answer, 0 if none
	Detail string        // extra context, may be empty
	Err    error         // underlying cause, if any
}

func (e *Error) Error() string {
	return klperr.Format("kvm/hw", e.Op, "", e.Kind, e.Errno, e.Detail, e.Err)
}

// Is matches the kind or the kernel's errno.
func (e *Error) Is(target error) bool { return klperr.Match(target, e.Kind, e.Errno) }

// As gives the errno to errors.As(err, &errno).
func (e *Error) As(target any) bool { return klperr.AsErrno(target, e.Errno) }

func (e *Error) Unwrap() error { return e.Err }

// ioctlErr wraps a failed ioctl. err is what the syscall layer returned.
func ioctlErr(op string, err error) error {
	if err == nil {
		return nil
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return &Error{Op: op, Errno: errno}
	}
	return &Error{Op: op, Err: err}
}
