package klperr

import (
	"errors"
	"fmt"
	"syscall"
	"testing"
)

var errKind = errors.New("thing is broken")

// testError is a package Error written by the convention.
type testError struct {
	Op     string
	Kind   error
	Errno  syscall.Errno
	Detail string
	Err    error
}

func (e *testError) Error() string {
	return Format("pkg", e.Op, "", e.Kind, e.Errno, e.Detail, e.Err)
}
func (e *testError) Is(t error) bool { return Match(t, e.Kind, e.Errno) }
func (e *testError) As(t any) bool   { return AsErrno(t, e.Errno) }
func (e *testError) Unwrap() error   { return e.Err }

func TestFormat(t *testing.T) {
	for _, c := range []struct {
		e    *testError
		want string
	}{
		{&testError{Op: "op"}, "pkg: op"},
		{&testError{Op: "op", Kind: errKind}, "pkg: op: thing is broken"},
		{&testError{Op: "op", Kind: errKind, Detail: "at 3"}, "pkg: op: thing is broken: at 3"},
		{&testError{Op: "op", Errno: syscall.EBUSY}, "pkg: op: device or resource busy (EBUSY)"},
		{&testError{Op: "op", Errno: syscall.EBUSY, Detail: "task 1"}, "pkg: op: task 1: device or resource busy (EBUSY)"},
		{&testError{Op: "op", Kind: errKind, Errno: syscall.EINVAL, Detail: "x", Err: errors.New("cause")}, "pkg: op: thing is broken: x: invalid argument (EINVAL): cause"},
	} {
		if got := c.e.Error(); got != c.want {
			t.Errorf("got %q, want %q", got, c.want)
		}
	}
	if got := Format("pkg", "enable", "p1", nil, syscall.ENOENT, "no such patch", nil); got != "pkg: enable p1: no such patch: no such file or directory (ENOENT)" {
		t.Errorf("with subject: %q", got)
	}
}

func TestIsAsErrno(t *testing.T) {
	inner := &testError{Op: "inner", Kind: errKind, Errno: syscall.EBUSY}
	outer := fmt.Errorf("wrapped: %w", &testError{Op: "outer", Err: inner})
	if !errors.Is(outer, errKind) || !errors.Is(outer, syscall.EBUSY) || errors.Is(outer, syscall.EINVAL) {
		t.Fatal("Is through the chain")
	}
	if got := Errno(outer); got != syscall.EBUSY {
		t.Fatalf("Errno %v", got)
	}
	if got := Errno(errors.New("plain")); got != syscall.EIO {
		t.Fatalf("Errno of a plain error %v", got)
	}
	if got := Errno(nil); got != 0 {
		t.Fatalf("Errno(nil) %v", got)
	}
	// An Error without errno does not stop the search for one below it.
	if got := Errno(&testError{Op: "top", Err: syscall.ENOENT}); got != syscall.ENOENT {
		t.Fatalf("Errno below an errno-less error: %v", got)
	}
	var e *testError
	if !errors.As(outer, &e) || e.Op != "outer" {
		t.Fatal("As *testError")
	}
}

func TestErrnoByName(t *testing.T) {
	for name, want := range map[string]syscall.Errno{"EBUSY": syscall.EBUSY, "ENOENT": syscall.ENOENT, "EREMOTEIO": syscall.EREMOTEIO, "": 0, "EFROB": 0} {
		if got := ErrnoByName(name); got != want {
			t.Errorf("ErrnoByName(%q) = %v, want %v", name, got, want)
		}
	}
}
