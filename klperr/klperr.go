// Package klperr is klp-kvm's one error convention, written down once and
// implemented once; every package's Error type follows it.
//
// Each package has exactly one error type, named Error, with these fields
// (a package adds fields that locate the problem, such as elfpatch's
// Section and Offset or ftrace's Site, but never renames these):
//
//	Op     string        // the operation that failed: "enable", "KVM_RUN", "parse patch"
//	Kind   error         // one of the package's Err* sentinels, or nil
//	Errno  syscall.Errno // the Linux errno, where one applies, or 0
//	Detail string        // what exactly, for people
//	Err    error         // the underlying cause, or nil
//
// and the same four methods, which delegate here:
//
//	Error() string          // Format: "pkg: op[ subject][: kind][: detail][: text (ERRNO)][: cause]"
//	Is(target error) bool   // Match: the Kind sentinel or the Errno, as in errors.Is(err, syscall.EBUSY)
//	As(target any) bool     // AsErrno: errors.As(err, &errno) finds the Errno
//	Unwrap() error          // the cause
//
// Callers test errors only with errors.Is (a kind, an errno) and
// errors.As (the package's *Error, for its location fields); never by
// comparing strings. An errno travels unchanged from the package that
// knows it (the kernel's for kvm/hw, Linux livepatch's for livepatch, the
// guest's for kvm/agent) to the API and the guest's sysfs write.
package klperr

import (
	"errors"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Format renders an error of the convention:
//
//	pkg: op[ subject][: kind][: detail][: errno text (ERRNO)][: cause]
//
// Empty parts are left out; the errno is named once, by its Linux name.
func Format(pkg, op, subject string, kind error, errno syscall.Errno, detail string, cause error) string {
	var b strings.Builder
	b.WriteString(pkg)
	if op != "" {
		b.WriteString(": ")
		b.WriteString(op)
	}
	if subject != "" {
		b.WriteString(" ")
		b.WriteString(subject)
	}
	sep := ": "
	if kind != nil {
		b.WriteString(sep)
		b.WriteString(kind.Error())
	}
	if detail != "" {
		b.WriteString(sep)
		b.WriteString(detail)
	}
	if errno != 0 {
		b.WriteString(sep)
		b.WriteString(errno.Error())
		b.WriteString(" (")
		b.WriteString(unix.ErrnoName(errno))
		b.WriteString(")")
	}
	if cause != nil {
		b.WriteString(sep)
		b.WriteString(cause.Error())
	}
	return b.String()
}

// Match is the Is method of the convention: target is the error's kind
// sentinel, or its errno.
func Match(target, kind error, errno syscall.Errno) bool {
	if kind != nil && target == kind {
		return true
	}
	if en, ok := target.(syscall.Errno); ok && errno != 0 {
		return en == errno
	}
	return false
}

// AsErrno is the As method of the convention: it gives the error's errno
// to errors.As(err, &errno) when there is one.
func AsErrno(target any, errno syscall.Errno) bool {
	if p, ok := target.(*syscall.Errno); ok && errno != 0 {
		*p = errno
		return true
	}
	return false
}

// Errno is the Linux errno err carries anywhere in its chain: 0 for nil,
// EIO for an error that carries none. It is what a guest's sysfs write
// returns and what the API names.
func Errno(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	var en syscall.Errno
	if errors.As(err, &en) {
		return en
	}
	return syscall.EIO
}

// errnoByName maps Linux errno names ("EBUSY") to their values.
var errnoByName = func() map[string]syscall.Errno {
	m := map[string]syscall.Errno{}
	for e := syscall.Errno(1); e < 4096; e++ {
		if name := unix.ErrnoName(e); name != "" {
			if _, dup := m[name]; !dup { // aliases (EWOULDBLOCK) keep the first
				m[name] = e
			}
		}
	}
	return m
}()

// ErrnoByName is the errno a Linux name stands for ("EBUSY" -> EBUSY), 0
// for a name it does not know: what a client makes of the errno name in a
// server's reply.
func ErrnoByName(name string) syscall.Errno { return errnoByName[name] }
