// Package api is klp-kvm's control API: HTTP/JSON on a unix socket (mode
// 0600), served by `klp-kvm run` and used by the other CLI commands. It is
// curl-able:
//
//	curl --unix-socket klp-kvm.sock http://klp/machine
//
// Errors are JSON objects {"error": "...", "errno": "EBUSY"} with an HTTP
// status: 4xx for a refused operation or a bad request, 5xx otherwise.
//
// Its input is untrusted (docs/architecture.md): every connection's peer
// credentials are checked (Listen), every request body is capped per route
// (Route.MaxBody) and decoded strictly (unknown or duplicate fields,
// trailing data, null values and NUL bytes are refused), and the server
// bounds time and concurrency (NewServer, Harden).
package api

import (
	"encoding/json"
	"net/http"
	"os"
	"strings"
	"syscall"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"klp-kvm/klperr"
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

// Error is what the client returns for an error reply or a transport
// failure, by the convention of package klperr: Op (the request, for
// programs and logs: never part of the message), Errno (the errno the
// server named, so errors.Is(err, syscall.EBUSY) works on a client error
// too), Detail (the server's message, already in the convention's form)
// and Err (a transport failure); Status is the HTTP status (0 for a
// transport failure). Its message is meant for users: it names the errno
// once and never the route.
type Error struct {
	Op     string // the request, "POST /patches/livepatch_sample/enable"
	Kind   error  // nil: the errno says what went wrong
	Errno  syscall.Errno
	Detail string
	Err    error
	Status int
}

func (e *Error) Error() string {
	if e.Err != nil {
		return e.Err.Error()
	}
	if name := e.ErrnoName(); name != "" && !hasWord(e.Detail, name) {
		return e.Detail + " (" + name + ")"
	}
	return e.Detail
}

// Is matches the errno (or the kind).
func (e *Error) Is(target error) bool { return klperr.Match(target, e.Kind, e.Errno) }

// As gives the errno to errors.As(err, &errno).
func (e *Error) As(target any) bool { return klperr.AsErrno(target, e.Errno) }

func (e *Error) Unwrap() error { return e.Err }

// ErrnoName is the errno's Linux name ("EBUSY"), "" for none.
func (e *Error) ErrnoName() string {
	if e.Errno == 0 {
		return ""
	}
	return unix.ErrnoName(e.Errno)
}

// errnoOf is the errno a reply names ("EBUSY"), 0 for none or an unknown
// name (the server is not trusted to send a real one).
func errnoOf(name string) syscall.Errno {
	if name == "" {
		return 0
	}
	return klperr.ErrnoByName(name)
}

// Refused reports whether the server refused the operation (as opposed to
// the API being unreachable): the CLI's exit status 1.
func (e *Error) Refused() bool { return e.Status >= 400 && e.Status < 500 }

// hasWord reports whether w occurs in s as a whole word (an errno name
// such as EBUSY, not part of a longer identifier).
func hasWord(s, w string) bool {
	for i := 0; ; {
		j := strings.Index(s[i:], w)
		if j < 0 {
			return false
		}
		j += i
		end := j + len(w)
		if (j == 0 || !isIdent(s[j-1])) && (end == len(s) || !isIdent(s[end])) {
			return true
		}
		i = j + 1
	}
}

func isIdent(c byte) bool {
	return c == '_' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

// MaxEcho is how much of a client-supplied name an error message repeats;
// a longer one is cut there and marked "...".
const MaxEcho = 64

// clip shortens s to at most MaxEcho bytes (on a UTF-8 boundary) plus
// "...", for error messages that name something a client sent.
func clip(s string) string {
	if len(s) <= MaxEcho {
		return s
	}
	n := MaxEcho
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "..."
}

// WriteJSON writes v with status.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// WriteError writes an ErrorReply.
func WriteError(w http.ResponseWriter, status int, errno string, err error) {
	WriteJSON(w, status, ErrorReply{Error: err.Error(), Errno: errno})
}
