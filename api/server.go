package api

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path"
	"strings"
	"time"
)

// Limits of the server (NewServer, Harden, Route.MaxBody). Input is
// untrusted: these bound what any client can make the server hold.
const (
	// MaxControlBody caps the body of the control routes: nothing, or an
	// OpRequest.
	MaxControlBody = 1 << 10
	// MaxGuestBody caps the guest routes' bodies (exec, file read and
	// write): the guest agent takes requests of at most 8000 bytes.
	MaxGuestBody = 16 << 10
	// MaxPatchObject caps a patch object uploaded to POST /patches (the
	// samples are a few KiB; the default patch area is 16 MiB).
	MaxPatchObject = 8 << 20
	// MaxPatchBody caps POST /patches: the object in base64 and the
	// other fields.
	MaxPatchBody = (MaxPatchObject+2)/3*4 + MaxControlBody

	// MaxConcurrent bounds the requests being served at once (Harden);
	// one more is answered 503 (EAGAIN) at once, its body unread.
	MaxConcurrent = 16
	// MaxConcurrentUploads bounds the patch uploads being read or
	// processed at once, so parallel large bodies cannot add up: with
	// MaxPatchBody each, this is the server's peak for bodies.
	MaxConcurrentUploads = 2

	// ReadHeaderTimeout is how long a client has to send its request
	// line and headers; ReadTimeout the whole request with its body
	// (counted afresh when a route starts reading its body; lifted by
	// net/http once the body is read, so a long operation is not cut
	// short); IdleTimeout how long a kept-alive connection may wait for
	// its next request. There is no write timeout: a transition
	// may retry up to its deadline, and the client bounds its own wait.
	ReadHeaderTimeout = 5 * time.Second
	ReadTimeout       = 10 * time.Second
	IdleTimeout       = 60 * time.Second
	// MaxHeaderBytes caps the request line and headers.
	MaxHeaderBytes = 8 << 10

	// MaxDeadlineMS caps deadline_ms (10 minutes).
	MaxDeadlineMS = 10 * 60 * 1000
)

// NewServer is the http.Server for the control API: h (the ServeMux the
// *Routes functions registered on) behind Harden, with the timeouts and
// header cap above. Serve it on the Listener from Listen:
//
//	srv := api.NewServer(mux)
//	go srv.Serve(l)
//	defer srv.Close()
func NewServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           Harden(h),
		ReadHeaderTimeout: ReadHeaderTimeout,
		ReadTimeout:       ReadTimeout,
		IdleTimeout:       IdleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
	}
}

// Harden wraps the API's handler (the ServeMux the *Routes functions
// registered on, or any handler that passes requests on to it):
//
//   - at most MaxConcurrent requests are served at once; one more is
//     answered 503 (EAGAIN) before its body is read;
//   - a path that is not clean ("//machine", "/a/../machine") is a 404,
//     not a redirect;
//   - the plain-text 404 and 405 of a ServeMux, however deep, become JSON
//     errors (ENOENT; EINVAL naming the allowed methods).
//
// h may hold a request before its route reads the body (the composition
// root holds the guest routes until the agent answers): the route then
// gets a fresh ReadTimeout for its body (handle), and once a body is read
// (or when there is none) net/http lifts the read deadline, so a long wait
// or operation does not cancel the request.
func Harden(h http.Handler) http.Handler { return harden(h, MaxConcurrent) }

func harden(h http.Handler, n int) http.Handler {
	sem := make(chan struct{}, n)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case sem <- struct{}{}:
			defer func() { <-sem }()
		default:
			WriteError(w, http.StatusServiceUnavailable, "EAGAIN", fmt.Errorf("server busy: %d requests in progress; retry", n))
			return
		}
		if !cleanPath(r.URL.EscapedPath()) {
			// A ServeMux would redirect to the cleaned path: the API
			// answers in JSON, and takes no detours.
			WriteError(w, http.StatusNotFound, "ENOENT", fmt.Errorf("no such route: %s %s (not a canonical path)", clip(r.Method), clip(r.URL.EscapedPath())))
			return
		}
		jw := &jsonErrors{ResponseWriter: w}
		h.ServeHTTP(jw, r)
		switch jw.held {
		case http.StatusNotFound:
			WriteError(w, http.StatusNotFound, "ENOENT", fmt.Errorf("no such route: %s %s", clip(r.Method), clip(r.URL.EscapedPath())))
		case http.StatusMethodNotAllowed:
			allow := w.Header().Get("Allow")
			WriteError(w, http.StatusMethodNotAllowed, "EINVAL", fmt.Errorf("%s %s: method not allowed (use %s)", clip(r.Method), clip(r.URL.EscapedPath()), allow))
		}
	})
}

// cleanPath reports whether p is a path a ServeMux serves as it is: clean,
// but for one trailing slash ("/machine/"); "//" is not.
func cleanPath(p string) bool {
	c := path.Clean(p)
	return p != "" && (p == c || c != "/" && p == c+"/")
}

// jsonErrors holds back a plain-text 404 or 405 (a ServeMux's) so that
// Harden answers it in JSON instead; everything else passes.
type jsonErrors struct {
	http.ResponseWriter
	held    int // the status held back, 0 if none
	started bool
}

func (j *jsonErrors) WriteHeader(code int) {
	if !j.started && (code == http.StatusNotFound || code == http.StatusMethodNotAllowed) &&
		!strings.HasPrefix(j.Header().Get("Content-Type"), "application/json") {
		j.started, j.held = true, code
		return
	}
	j.started = true
	j.ResponseWriter.WriteHeader(code)
}

func (j *jsonErrors) Write(b []byte) (int, error) {
	if j.held != 0 {
		return len(b), nil
	}
	j.started = true
	return j.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection.
func (j *jsonErrors) Unwrap() http.ResponseWriter { return j.ResponseWriter }

// handle registers h for route rt on mux behind the route's body cap. The
// body is read whole before h runs: a declared length over rt.MaxBody is
// answered 413 (EMSGSIZE) unread, and so is a body that grows past it.
// With sem, the request also needs one of its tokens (else 503, EAGAIN)
// while it is read and handled. The body gets a fresh ReadTimeout from
// here (the request may have waited on its way); once it is read, net/http
// lifts the read deadline, so an operation may outlast it without its
// context being cancelled.
func handle(mux *http.ServeMux, rt Route, sem chan struct{}, h func(w http.ResponseWriter, r *http.Request, body []byte)) {
	mux.HandleFunc(rt.String(), func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength > rt.MaxBody {
			writeTooLarge(w, rt)
			return
		}
		if sem != nil {
			select {
			case sem <- struct{}{}:
				defer func() { <-sem }()
			default:
				WriteError(w, http.StatusServiceUnavailable, "EAGAIN", fmt.Errorf("server busy: %d uploads in progress; retry", cap(sem)))
				return
			}
		}
		rc := http.NewResponseController(w)
		if srv, ok := r.Context().Value(http.ServerContextKey).(*http.Server); ok && srv.ReadTimeout > 0 {
			// A fresh window for the body: the request may have waited
			// before reaching its route (Harden's callers may hold it).
			_ = rc.SetReadDeadline(time.Now().Add(srv.ReadTimeout))
		}
		body, err := readBody(w, r, rt.MaxBody)
		var tooLarge *http.MaxBytesError
		switch {
		case errors.As(err, &tooLarge):
			writeTooLarge(w, rt)
			return
		case errors.Is(err, os.ErrDeadlineExceeded):
			WriteError(w, http.StatusRequestTimeout, "ETIMEDOUT", errors.New("request body not received in time"))
			return
		case err != nil:
			WriteError(w, http.StatusBadRequest, "EINVAL", fmt.Errorf("reading the request body: %v", err))
			return
		}
		h(w, r, body)
	})
}

func writeTooLarge(w http.ResponseWriter, rt Route) {
	WriteError(w, http.StatusRequestEntityTooLarge, "EMSGSIZE", fmt.Errorf("request body larger than %d bytes", rt.MaxBody))
}

// readBody reads r's body, at most max bytes (else an *http.MaxBytesError).
func readBody(w http.ResponseWriter, r *http.Request, max int64) ([]byte, error) {
	if r.Body == nil || r.Body == http.NoBody {
		return nil, nil
	}
	var buf bytes.Buffer
	if r.ContentLength > 0 {
		buf.Grow(int(r.ContentLength) + bytes.MinRead)
	}
	_, err := buf.ReadFrom(http.MaxBytesReader(w, r.Body, max))
	return buf.Bytes(), err
}

// noBody refuses a body on a route that takes none.
func noBody(w http.ResponseWriter, body []byte) bool {
	if len(bytes.TrimSpace(body)) != 0 {
		WriteError(w, http.StatusBadRequest, "EINVAL", errors.New("request body: this route takes none"))
		return false
	}
	return true
}
