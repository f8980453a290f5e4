package api

import (
	"errors"
	"net/http"
	"path"
	"strings"

	"golang.org/x/sys/unix"

	"klp-kvm/kvm/agent"
)

// ExecRequest is the body of POST /guest/exec.
type ExecRequest struct {
	Cmd string `json:"cmd"`
}

// FileRequest is the body of POST /guest/file/read and /guest/file/write.
type FileRequest struct {
	Path string `json:"path"`
	Data string `json:"data,omitempty"`
}

// FileReply is the reply of POST /guest/file/read.
type FileReply struct {
	Path      string `json:"path"`
	Content   string `json:"content"`
	Truncated bool   `json:"truncated"`
}

// SysfsRoot is where relative `klp-kvm sysfs` paths live in the guest.
const SysfsRoot = "/sys/kernel/livepatch"

// SysfsPath makes p absolute under SysfsRoot unless it already is
// absolute, and cleans it.
func SysfsPath(p string) string {
	if !strings.HasPrefix(p, "/") {
		p = SysfsRoot + "/" + p
	}
	return path.Clean(p)
}

// GuestRoutes registers the routes served through the guest agent:
//
//	GET  /guest/info         guest-info
//	POST /guest/exec         {"cmd"} -> {"output","status","truncated"}
//	POST /guest/file/read    {"path"} -> {"path","content","truncated"}
//	POST /guest/file/write   {"path","data"} -> {} or an error with the guest's errno
func GuestRoutes(mux *http.ServeMux, c *agent.Client) {
	mux.HandleFunc(RouteGuestInfo.String(), func(w http.ResponseWriter, r *http.Request) {
		info, err := c.Info(r.Context())
		if err != nil {
			writeAgentError(w, err)
			return
		}
		WriteJSON(w, http.StatusOK, info)
	})
	mux.HandleFunc(RouteGuestExec.String(), func(w http.ResponseWriter, r *http.Request) {
		var req ExecRequest
		if err := DecodeBody(r, &req); err != nil {
			WriteError(w, http.StatusBadRequest, "EINVAL", err)
			return
		}
		res, err := c.Exec(r.Context(), req.Cmd)
		if err != nil {
			writeAgentError(w, err)
			return
		}
		WriteJSON(w, http.StatusOK, res)
	})
	mux.HandleFunc(RouteGuestFileRead.String(), func(w http.ResponseWriter, r *http.Request) {
		var req FileRequest
		if err := DecodeBody(r, &req); err != nil {
			WriteError(w, http.StatusBadRequest, "EINVAL", err)
			return
		}
		content, trunc, err := c.FileRead(r.Context(), req.Path)
		if err != nil {
			writeAgentError(w, err)
			return
		}
		WriteJSON(w, http.StatusOK, FileReply{Path: req.Path, Content: content, Truncated: trunc})
	})
	mux.HandleFunc(RouteGuestFileWrite.String(), func(w http.ResponseWriter, r *http.Request) {
		var req FileRequest
		if err := DecodeBody(r, &req); err != nil {
			WriteError(w, http.StatusBadRequest, "EINVAL", err)
			return
		}
		if err := c.FileWrite(r.Context(), req.Path, req.Data); err != nil {
			writeAgentError(w, err)
			return
		}
		WriteJSON(w, http.StatusOK, struct{}{})
	})
}

// writeAgentError maps an agent failure: a guest-side errno is a refused
// operation (409, errno name); a timeout or broken channel is 502/504.
func writeAgentError(w http.ResponseWriter, err error) {
	var ae *agent.Error
	switch {
	case errors.As(err, &ae) && ae.Errno > 0:
		WriteError(w, http.StatusConflict, unix.ErrnoName(unix.Errno(ae.Errno)), err)
	case errors.Is(err, agent.ErrGuest):
		WriteError(w, http.StatusConflict, "EINVAL", err)
	case errors.Is(err, agent.ErrTimeout):
		WriteError(w, http.StatusGatewayTimeout, "ETIMEDOUT", err)
	case errors.Is(err, agent.ErrTooLarge), errors.Is(err, agent.ErrInvalid):
		WriteError(w, http.StatusBadRequest, "EINVAL", err)
	default:
		WriteError(w, http.StatusBadGateway, "EIO", err)
	}
}
