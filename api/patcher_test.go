package api_test

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"syscall"
	"testing"

	"klp-kvm/api"
	"klp-kvm/livepatch"
)

// errnoErr is another Patcher's error: it carries an errno by the klperr
// convention (errors.As to syscall.Errno), not a *livepatch.Error.
type errnoErr struct{ errno syscall.Errno }

func (e errnoErr) Error() string { return fmt.Sprintf("linuxlive-like failure (%v)", e.errno) }
func (e errnoErr) As(target any) bool {
	p, ok := target.(*syscall.Errno)
	if ok {
		*p = e.errno
	}
	return ok
}

// fakePatcher fails every operation with err.
type fakePatcher struct{ err error }

func (f fakePatcher) Register([]byte, string) (*livepatch.Patch, error) { return nil, f.err }
func (f fakePatcher) Load([]byte, string, livepatch.Options) (*livepatch.Patch, *livepatch.Result, error) {
	return nil, nil, f.err
}
func (f fakePatcher) Enable(string, livepatch.Options) (*livepatch.Result, error)  { return nil, f.err }
func (f fakePatcher) Disable(string, livepatch.Options) (*livepatch.Result, error) { return nil, f.err }
func (f fakePatcher) Unload(string, livepatch.Options) (*livepatch.Result, error)  { return nil, f.err }
func (f fakePatcher) Unregister(string) error                                      { return f.err }
func (f fakePatcher) Status() livepatch.Status                                     { return livepatch.Status{} }

// TestPatcherErrno: the patch routes answer another Patcher's (a Linux
// guest's linuxlive.Manager's) errors by their errno, as livepatch's.
func TestPatcherErrno(t *testing.T) {
	for _, c := range []struct {
		err    error
		status int
		errno  string
	}{
		{errnoErr{syscall.EBUSY}, http.StatusConflict, "EBUSY"},
		{errnoErr{syscall.EINVAL}, http.StatusBadRequest, "EINVAL"},
		{errnoErr{syscall.ENOENT}, http.StatusNotFound, "ENOENT"},
		{errnoErr{syscall.EOPNOTSUPP}, http.StatusNotImplemented, "ENOTSUP"}, // unix.ErrnoName's name for 95
		{errnoErr{syscall.ENOMEM}, http.StatusConflict, "ENOMEM"},
		{errors.New("no errno"), http.StatusInternalServerError, "EIO"},
	} {
		mux := http.NewServeMux()
		api.LivepatchRoutes(mux, fakePatcher{c.err}, nil)
		srv := httptest.NewServer(mux)
		status, reply, _ := post(t, srv.URL+"/patches/p/enable", nil)
		srv.Close()
		if status != c.status || reply.Errno != c.errno {
			t.Errorf("%v: %d %+v, want %d %s", c.err, status, reply, c.status, c.errno)
		}
	}
}
