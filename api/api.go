// Package api is klp-kvm's control API: HTTP/JSON on a unix socket (mode
// 0600), served by `klp-kvm run` and used by the other CLI commands. It is
// curl-able:
//
//	curl --unix-socket klp-kvm.sock http://klp/machine
//
// Errors are JSON objects {"error": "...", "errno": "EBUSY"} with an HTTP
// status: 4xx for a refused operation or a bad request, 5xx otherwise.
package api

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// DefaultSocket is the socket path when neither --api nor $KLP_KVM_API is
// given.
const DefaultSocket = "./klp-kvm.sock"

// SocketPath resolves the --api flag value.
func SocketPath(flag string) string {
	if flag != "" {
		return flag
	}
	if env := os.Getenv("KLP_KVM_API"); env != "" {
		return env
	}
	return DefaultSocket
}

// ErrorReply is the body of every failed request.
type ErrorReply struct {
	Error string `json:"error"`
	Errno string `json:"errno,omitempty"` // Linux errno name when the operation was refused
}

// Error is what the client returns for an error reply or a transport failure.
type Error struct {
	Op     string // "GET /machine"
	Status int    // HTTP status, 0 for a transport failure
	Errno  string
	Msg    string
	Err    error
}

func (e *Error) Error() string {
	s := "api: " + e.Op + ": "
	if e.Err != nil {
		return s + e.Err.Error()
	}
	if e.Errno != "" {
		return s + e.Msg + " (" + e.Errno + ")"
	}
	return s + e.Msg
}

func (e *Error) Unwrap() error { return e.Err }

// Refused reports whether the server refused the operation (as opposed to
// the API being unreachable): the CLI's exit status 1.
func (e *Error) Refused() bool { return e.Status >= 400 && e.Status < 500 }

// Listen creates the unix socket with mode 0600. A stale socket file (no
// server behind it) is replaced; a live one is an error.
func Listen(path string) (net.Listener, error) {
	// Only a socket is ever replaced: --api pointing at a regular file (or
	// anything else) must not delete it.
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("api: %s exists and is not a socket; refusing to replace it", path)
		}
		if c, err := net.DialTimeout("unix", path, 200*time.Millisecond); err == nil {
			c.Close()
			return nil, fmt.Errorf("api: %s: another klp-kvm is serving this socket", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("api: remove stale socket: %w", err)
		}
	}
	// The socket is born inside a fresh 0700 directory, made 0600 there,
	// and only then renamed into place: it is never reachable with the
	// umask's looser mode (net.Listen creates it 0777 &^ umask).
	dir, err := os.MkdirTemp(filepath.Dir(path), ".klp-kvm-sock-")
	if err != nil {
		return nil, fmt.Errorf("api: listen: %w", err)
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, "s")
	l, err := net.Listen("unix", tmp)
	if err != nil {
		return nil, fmt.Errorf("api: listen: %w", err)
	}
	ul := l.(*net.UnixListener)
	ul.SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("api: chmod socket: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		l.Close()
		return nil, fmt.Errorf("api: listen: %w", err)
	}
	return &socketListener{UnixListener: ul, path: path}, nil
}

// socketListener removes its socket file when closed.
type socketListener struct {
	*net.UnixListener
	path string
	once sync.Once
}

func (l *socketListener) Close() error {
	err := l.UnixListener.Close()
	l.once.Do(func() { _ = os.Remove(l.path) })
	return err
}

// WriteJSON writes v with status.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// WriteError writes an ErrorReply.
func WriteError(w http.ResponseWriter, status int, errno string, err error) {
	WriteJSON(w, status, ErrorReply{Error: err.Error(), Errno: errno})
}

// maxBody bounds request bodies: API input is untrusted.
const maxBody = 64 << 20

// DecodeBody decodes a JSON request body into v, bounded in size, unknown
// fields rejected.
func DecodeBody(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("bad request body: %w", err)
	}
	return nil
}
