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
	// (once the body is read, handle lifts it, so a long operation is
	// not cut short); IdleTimeout how long a kept-alive connection may
	// wait for its next request. There is no write timeout: a transition
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

// Harden wraps the API's handler: at most MaxConcurrent requests are
// served at once (one more is answered 503, EAGAIN, before its body is
// read), and when h is a *http.ServeMux a request no route matches is
// answered with a JSON error (404 ENOENT, or 405 naming the allowed
// methods) instead of the mux's plain text, and a path that is not clean
// ("//machine", "/a/../machine") with 404 instead of a redirect.
func Harden(h http.Handler) http.Handler { return harden(h, MaxConcurrent) }

func harden(h http.Handler, n int) http.Handler {
	sem := make(chan struct{}, n)
	mux, _ := h.(*http.ServeMux)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case sem <- struct{}{}:
			defer func() { <-sem }()
		default:
			WriteError(w, http.StatusServiceUnavailable, "EAGAIN", fmt.Errorf("server busy: %d requests in progress; retry", n))
			return
		}
		if p := r.URL.EscapedPath(); p == "" || path.Clean(p) != p && path.Clean(p)+"/" != p {
			// The mux would redirect to the cleaned path: the API
			// answers in JSON, and takes no detours.
			WriteError(w, http.StatusNotFound, "ENOENT", fmt.Errorf("no such route: %s %s (not a canonical path)", clip(r.Method), clip(r.URL.EscapedPath())))
			return
		}
		if mux != nil {
			if _, pattern := mux.Handler(r); pattern == "" {
				noRoute(w, r, mux)
				return
			}
		}
		h.ServeHTTP(w, r)
	})
}

// noRoute answers a request no pattern of mux matches: 405 if the path is
// served with another method, else 404.
func noRoute(w http.ResponseWriter, r *http.Request, mux *http.ServeMux) {
	var allow []string
	for _, m := range []string{"GET", "POST", "PUT", "DELETE", "PATCH"} {
		if m == r.Method {
			continue
		}
		r2 := r.Clone(r.Context())
		r2.Method = m
		if _, p := mux.Handler(r2); p != "" {
			allow = append(allow, m)
		}
	}
	path := clip(r.URL.EscapedPath())
	if len(allow) > 0 {
		w.Header().Set("Allow", strings.Join(allow, ", "))
		WriteError(w, http.StatusMethodNotAllowed, "EINVAL", fmt.Errorf("%s %s: method not allowed (use %s)", clip(r.Method), path, strings.Join(allow, " or ")))
		return
	}
	WriteError(w, http.StatusNotFound, "ENOENT", fmt.Errorf("no such route: %s %s", clip(r.Method), path))
}

// handle registers h for route rt on mux behind the route's body cap. The
// body is read whole before h runs: a declared length over rt.MaxBody is
// answered 413 (EMSGSIZE) unread, and so is a body that grows past it.
// With sem, the request also needs one of its tokens (else 503, EAGAIN)
// while it is read and handled. Once the body is in, the connection's read
// deadline (NewServer's ReadTimeout) is lifted, so an operation may
// outlast it without its context being cancelled.
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
		_ = http.NewResponseController(w).SetReadDeadline(time.Time{})
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
