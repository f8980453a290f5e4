package api

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"klp-kvm/kvm"
	"klp-kvm/livepatch"
)

// PatchRequest is the body of POST /patches: the patch object itself, as
// bytes (base64 in JSON). The server never opens a file for a client: the
// CLI reads the object and uploads it.
type PatchRequest struct {
	Op           string `json:"op,omitempty"` // "load" (default) or "register"
	Object       []byte `json:"object" api:"required"`
	Name         string `json:"name,omitempty"` // the object's file name, its name when it has no KLP_MODULE_NAME
	Force        bool   `json:"force,omitempty"`
	DeadlineMS   int64  `json:"deadline_ms,omitempty"`
	Conservative bool   `json:"conservative,omitempty"`
}

// OpRequest is the (optional) body of POST /patches/{name}/{op}.
type OpRequest struct {
	Force        bool  `json:"force,omitempty"`
	DeadlineMS   int64 `json:"deadline_ms,omitempty"`
	Conservative bool  `json:"conservative,omitempty"`
}

func (o OpRequest) options() livepatch.Options {
	return livepatch.Options{Force: o.Force, Deadline: time.Duration(o.DeadlineMS) * time.Millisecond, Conservative: o.Conservative}
}

func (o OpRequest) check() error {
	if o.DeadlineMS < 0 || o.DeadlineMS > MaxDeadlineMS {
		return fmt.Errorf(`request body: field "deadline_ms": %d is not in 0..%d`, o.DeadlineMS, MaxDeadlineMS)
	}
	return nil
}

// OpReply is the reply of a successful livepatch operation.
type OpReply struct {
	Op     string            `json:"op"`
	Patch  string            `json:"patch"`
	Result *livepatch.Result `json:"result,omitempty"`
	// CallbackError is set when the switch happened (Result says so) but
	// a post_patch, pre_unpatch or post_unpatch callback could not run
	// (livepatch.ErrSwitched, errno EREMOTEIO): the state reached is the
	// one asked for, and the failure is not hidden. The CLI exits 1.
	CallbackError string `json:"callback_error,omitempty"`
}

// StatusReply is GET /status: the machine and the livepatch state.
type StatusReply struct {
	Machine   kvm.Info         `json:"machine"`
	Livepatch livepatch.Status `json:"livepatch"`
}

// MaxPatchName is the longest patch name there can be (a sysfs directory
// name in the guest is shorter than 64 bytes): a longer {name} names no
// patch, and is refused before it reaches the livepatch core.
const MaxPatchName = 63

// MaxFileName caps PatchRequest.Name (a file name, NAME_MAX).
const MaxFileName = 255

// Patcher is what the livepatch routes drive: *livepatch.Manager for
// klp-kvm's own kernel, linuxlive.Manager for a Linux guest. Its errors
// carry a Linux errno (klperr), which the routes answer with.
type Patcher interface {
	Register(data []byte, nameHint string) (*livepatch.Patch, error)
	Load(data []byte, nameHint string, o livepatch.Options) (*livepatch.Patch, *livepatch.Result, error)
	Enable(name string, o livepatch.Options) (*livepatch.Result, error)
	Disable(name string, o livepatch.Options) (*livepatch.Result, error)
	Unload(name string, o livepatch.Options) (*livepatch.Result, error)
	Unregister(name string) error
	Status() livepatch.Status
}

// AfterReplier is a Patcher with work to do once a changing operation's
// reply has been sent: vmm's push of a Linux guest's livepatch tree, which,
// begun before the reply, shares the host's CPU with it (under nested
// KVM, where that CPU is emulated, it added ~3 ms to a 10 ms enable).
type AfterReplier interface{ AfterReply() }

// LivepatchRoutes registers the livepatch routes on mux:
//
//	GET  /patches                          livepatch.Status
//	POST /patches                          PatchRequest: register or load
//	POST /patches/{name}/enable            OpRequest (optional)
//	POST /patches/{name}/disable           OpRequest (optional)
//	POST /patches/{name}/unregister
//	POST /patches/{name}/unload            OpRequest (optional)
//	GET  /status                           StatusReply
//
// A refused operation answers with the Linux errno name: 409 for EBUSY,
// EEXIST, ENOMEM, ENODEV; 400 for EINVAL; 404 for ENOENT. m may be nil
// (no machine section in /status).
func LivepatchRoutes(mux *http.ServeMux, lm Patcher, m Machine) {
	uploads := make(chan struct{}, MaxConcurrentUploads)
	// changing wraps the handler of a route that may change the state:
	// its reply is sent (flushed) before the Patcher's AfterReply runs,
	// which runs whatever the handler did, a panic included.
	changing := func(h func(http.ResponseWriter, *http.Request, []byte)) func(http.ResponseWriter, *http.Request, []byte) {
		a, ok := lm.(AfterReplier)
		if !ok {
			return h
		}
		return func(w http.ResponseWriter, r *http.Request, body []byte) {
			defer a.AfterReply()
			h(w, r, body)
			_ = http.NewResponseController(w).Flush()
		}
	}
	handle(mux, RoutePatches, nil, func(w http.ResponseWriter, r *http.Request, body []byte) {
		if noBody(w, body) {
			WriteJSON(w, http.StatusOK, StatusJSON(lm.Status()))
		}
	})
	handle(mux, RouteStatus, nil, func(w http.ResponseWriter, r *http.Request, body []byte) {
		if !noBody(w, body) {
			return
		}
		st := StatusReply{Livepatch: StatusJSON(lm.Status())}
		if m != nil {
			st.Machine = m.Info()
		}
		st.Machine = infoJSON(st.Machine)
		WriteJSON(w, http.StatusOK, st)
	})
	handle(mux, RoutePatchAdd, uploads, changing(func(w http.ResponseWriter, r *http.Request, body []byte) {
		var req PatchRequest
		if err := decodeJSON(body, &req); err != nil {
			WriteError(w, http.StatusBadRequest, "EINVAL", err)
			return
		}
		body = nil // the decoded object is all that is kept
		o := OpRequest{Force: req.Force, DeadlineMS: req.DeadlineMS, Conservative: req.Conservative}
		if err := checkPatchRequest(req, o); err != nil {
			WriteError(w, http.StatusBadRequest, "EINVAL", err)
			return
		}
		switch req.Op {
		case "", "load":
			p, res, err := lm.Load(req.Object, req.Name, o.options())
			if err != nil && !switched(err, res) {
				writeLivepatchError(w, "load", err)
				return
			}
			WriteJSON(w, http.StatusOK, OpReply{Op: "load", Patch: p.Name, Result: res, CallbackError: errText(err)})
		case "register":
			p, err := lm.Register(req.Object, req.Name)
			if err != nil {
				writeLivepatchError(w, "register", err)
				return
			}
			WriteJSON(w, http.StatusOK, OpReply{Op: "register", Patch: p.Name})
		}
	}))
	patchOp := func(op string, do func(name string, o livepatch.Options) (*livepatch.Result, error)) func(http.ResponseWriter, *http.Request, []byte) {
		return func(w http.ResponseWriter, r *http.Request, body []byte) {
			name := r.PathValue("name")
			var req OpRequest
			if len(bytes.TrimSpace(body)) != 0 { // the body is optional
				if err := decodeJSON(body, &req); err != nil {
					WriteError(w, http.StatusBadRequest, "EINVAL", err)
					return
				}
			}
			if err := req.check(); err != nil {
				WriteError(w, http.StatusBadRequest, "EINVAL", err)
				return
			}
			if len(name) > MaxPatchName {
				// No patch has such a name; the livepatch core would
				// say the same, repeating all of it.
				writeLivepatchError(w, op, &livepatch.Error{Op: op, Patch: name, Errno: syscall.ENOENT, Detail: "no such patch"})
				return
			}
			res, err := do(name, req.options())
			if err != nil && !switched(err, res) {
				writeLivepatchError(w, op, err)
				return
			}
			WriteJSON(w, http.StatusOK, OpReply{Op: op, Patch: name, Result: res, CallbackError: errText(err)})
		}
	}
	handle(mux, RoutePatchEnable, nil, changing(patchOp("enable", lm.Enable)))
	handle(mux, RoutePatchDisable, nil, changing(patchOp("disable", lm.Disable)))
	handle(mux, RoutePatchUnload, nil, changing(patchOp("unload", lm.Unload)))
	handle(mux, RoutePatchUnreg, nil, changing(patchOp("unregister", func(name string, _ livepatch.Options) (*livepatch.Result, error) {
		return nil, lm.Unregister(name)
	})))
	// Any other operation: a JSON ENOENT naming it (the four routes above
	// are more specific, so the ServeMux prefers them).
	handle(mux, routePatchUnknownOp, nil, func(w http.ResponseWriter, r *http.Request, body []byte) {
		WriteError(w, http.StatusNotFound, "ENOENT", fmt.Errorf("no operation %s: want enable, disable, unregister or unload", quote(r.PathValue("op"))))
	})
}

func checkPatchRequest(req PatchRequest, o OpRequest) error {
	switch {
	case req.Op != "" && req.Op != "load" && req.Op != "register":
		return fmt.Errorf(`request body: field "op": %s: want load or register`, quote(req.Op))
	case len(req.Object) == 0:
		return errors.New(`request body: field "object": empty: want the patch object's bytes`)
	case len(req.Object) > MaxPatchObject:
		return fmt.Errorf(`request body: field "object": %d bytes, more than %d`, len(req.Object), MaxPatchObject)
	case len(req.Name) > MaxFileName:
		return fmt.Errorf(`request body: field "name": %d bytes, more than %d`, len(req.Name), MaxFileName)
	case strings.Contains(req.Name, "/"):
		return fmt.Errorf(`request body: field "name": %s: a file name, not a path`, quote(req.Name))
	}
	return o.check()
}

// StatusJSON gives the livepatch state's lists as [] rather than null.
func StatusJSON(st livepatch.Status) livepatch.Status {
	st.Patches = emptyList(st.Patches)
	st.Redirected = emptyList(st.Redirected)
	return st
}

// emptyList is s, or an empty list for nil: JSON [] rather than null.
func emptyList[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// switched reports whether err is a livepatch.ErrSwitched with its
// Result: the operation reached the state asked for and only a void
// callback failed, which the reply tells beside the result.
func switched(err error, res *livepatch.Result) bool {
	return res != nil && errors.Is(err, livepatch.ErrSwitched)
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// WriteLivepatchError maps a livepatch error to its HTTP status and errno.
func WriteLivepatchError(w http.ResponseWriter, err error) { writeLivepatchError(w, "", err) }

// writeLivepatchError maps a livepatch error to its HTTP status and errno.
// With op, the error is told as that operation's (an unload that failed at
// its disable step is an unload failure), and a patch name a client sent
// is repeated only clipped.
func writeLivepatchError(w http.ResponseWriter, op string, err error) {
	var le *livepatch.Error
	if !errors.As(err, &le) {
		// Another Patcher's error (linuxlive's): its errno decides, as
		// for livepatch's own.
		var errno syscall.Errno
		if !errors.As(err, &errno) || errno == 0 {
			WriteError(w, http.StatusInternalServerError, "EIO", err)
			return
		}
		WriteError(w, errnoStatus(errno), unix.ErrnoName(errno), err)
		return
	}
	status := errnoStatus(le.Errno)
	c := *le
	if op == "unload" {
		c.Op = op
	}
	msg := c.Error()
	if len(c.Patch) > MaxEcho {
		msg = strings.ReplaceAll(msg, strconv.Quote(c.Patch), strconv.Quote(clip(c.Patch)))
		msg = strings.ReplaceAll(msg, c.Patch, clip(c.Patch))
	}
	WriteError(w, status, unix.ErrnoName(le.Errno), errors.New(msg))
}

// errnoStatus is the HTTP status of a refused livepatch operation.
func errnoStatus(errno syscall.Errno) int {
	switch errno {
	case syscall.EINVAL:
		return http.StatusBadRequest
	case syscall.ENOENT:
		return http.StatusNotFound
	case syscall.EIO:
		return http.StatusInternalServerError
	case syscall.EOPNOTSUPP:
		return http.StatusNotImplemented
	}
	return http.StatusConflict
}
