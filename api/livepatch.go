package api

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"klp-kvm/kvm"
	"klp-kvm/livepatch"
)

// PatchRequest is the body of POST /patches: the patch object as bytes
// (base64 in JSON) or a path on the server's file system.
type PatchRequest struct {
	Op           string `json:"op,omitempty"` // "load" (default) or "register"
	Object       []byte `json:"object,omitempty"`
	Path         string `json:"path,omitempty"`
	Name         string `json:"name,omitempty"` // the name when the object has no KLP_MODULE_NAME (a file name)
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

// OpReply is the reply of a successful livepatch operation.
type OpReply struct {
	Op     string            `json:"op"`
	Patch  string            `json:"patch"`
	Result *livepatch.Result `json:"result,omitempty"`
}

// StatusReply is GET /status: the machine and the livepatch state.
type StatusReply struct {
	Machine   kvm.Info         `json:"machine"`
	Livepatch livepatch.Status `json:"livepatch"`
}

// maxObject bounds a patch object read from a path (the body is bounded
// by DecodeBody).
const maxObject = 64 << 20

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
// EEXIST, ENOMEM, ENODEV; 400 for EINVAL; 404 for ENOENT.
func LivepatchRoutes(mux *http.ServeMux, lm *livepatch.Manager, m *kvm.Machine) {
	mux.HandleFunc(RoutePatches.String(), func(w http.ResponseWriter, r *http.Request) {
		WriteJSON(w, http.StatusOK, lm.Status())
	})
	mux.HandleFunc(RouteStatus.String(), func(w http.ResponseWriter, r *http.Request) {
		st := StatusReply{Livepatch: lm.Status()}
		if m != nil {
			st.Machine = m.Info()
		}
		WriteJSON(w, http.StatusOK, st)
	})
	mux.HandleFunc(RoutePatchAdd.String(), func(w http.ResponseWriter, r *http.Request) {
		var req PatchRequest
		if err := DecodeBody(r, &req); err != nil {
			WriteError(w, http.StatusBadRequest, "EINVAL", err)
			return
		}
		data, hint := req.Object, req.Name
		switch {
		case len(data) > 0 && req.Path != "":
			WriteError(w, http.StatusBadRequest, "EINVAL", errors.New("give object or path, not both"))
			return
		case req.Path != "":
			b, err := readObject(req.Path)
			if err != nil {
				WriteError(w, http.StatusBadRequest, "EINVAL", err)
				return
			}
			data = b
			if hint == "" {
				hint = filepath.Base(req.Path)
			}
		case len(data) == 0:
			WriteError(w, http.StatusBadRequest, "EINVAL", errors.New("no patch object (object or path)"))
			return
		}
		o := OpRequest{Force: req.Force, DeadlineMS: req.DeadlineMS, Conservative: req.Conservative}.options()
		switch req.Op {
		case "", "load":
			p, res, err := lm.Load(data, hint, o)
			if err != nil {
				WriteLivepatchError(w, err)
				return
			}
			WriteJSON(w, http.StatusOK, OpReply{Op: "load", Patch: p.Name, Result: res})
		case "register":
			p, err := lm.Register(data, hint)
			if err != nil {
				WriteLivepatchError(w, err)
				return
			}
			WriteJSON(w, http.StatusOK, OpReply{Op: "register", Patch: p.Name})
		default:
			WriteError(w, http.StatusBadRequest, "EINVAL", fmt.Errorf("op %q: want load or register", req.Op))
		}
	})
	patchOp := func(op string, do func(name string, o livepatch.Options) (*livepatch.Result, error)) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			name := r.PathValue("name")
			var req OpRequest
			if r.ContentLength != 0 {
				if err := DecodeBody(r, &req); err != nil {
					WriteError(w, http.StatusBadRequest, "EINVAL", err)
					return
				}
			}
			res, err := do(name, req.options())
			if err != nil {
				WriteLivepatchError(w, err)
				return
			}
			WriteJSON(w, http.StatusOK, OpReply{Op: op, Patch: name, Result: res})
		}
	}
	mux.HandleFunc(RoutePatchEnable.String(), patchOp("enable", lm.Enable))
	mux.HandleFunc(RoutePatchDisable.String(), patchOp("disable", lm.Disable))
	mux.HandleFunc(RoutePatchUnload.String(), patchOp("unload", lm.Unload))
	mux.HandleFunc(RoutePatchUnreg.String(), patchOp("unregister", func(name string, _ livepatch.Options) (*livepatch.Result, error) {
		return nil, lm.Unregister(name)
	}))
	// Any other operation: a JSON ENOENT naming it (the four routes above
	// are more specific, so the ServeMux prefers them).
	mux.HandleFunc(routePatchUnknownOp.String(), func(w http.ResponseWriter, r *http.Request) {
		WriteError(w, http.StatusNotFound, "ENOENT", fmt.Errorf("no operation %q: want enable, disable, unregister or unload", r.PathValue("op")))
	})
}

func readObject(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() || fi.Size() > maxObject {
		return nil, fmt.Errorf("%s: not a regular file of at most %d bytes", path, maxObject)
	}
	b := make([]byte, fi.Size())
	if _, err := f.ReadAt(b, 0); err != nil {
		return nil, err
	}
	return b, nil
}

// WriteLivepatchError maps a livepatch error to its HTTP status and errno.
func WriteLivepatchError(w http.ResponseWriter, err error) {
	var le *livepatch.Error
	if !errors.As(err, &le) {
		WriteError(w, http.StatusInternalServerError, "EIO", err)
		return
	}
	status := http.StatusConflict
	switch le.Errno {
	case syscall.EINVAL:
		status = http.StatusBadRequest
	case syscall.ENOENT:
		status = http.StatusNotFound
	case syscall.EIO:
		status = http.StatusInternalServerError
	}
	WriteError(w, status, unix.ErrnoName(le.Errno), err)
}
