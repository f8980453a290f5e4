package api

import (
	"context"
	"errors"
	"net/http"
	"path"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"klp-kvm/kvm/agent"
)

// ExecRequest is the body of POST /guest/exec.
type ExecRequest struct {
	Cmd string `json:"cmd" api:"required"`
}

// FileRequest is the body of POST /guest/file/read and /guest/file/write.
type FileRequest struct {
	Path string `json:"path" api:"required"`
	Data string `json:"data,omitempty"`
}

// FileReply is the reply of POST /guest/file/read.
type FileReply struct {
	Path      string `json:"path"`
	Content   string `json:"content"`
	Truncated bool   `json:"truncated"`
}

// SysfsRoot is where klp-kvm's own guest kernel shows its live patches:
// Linux's /sys/kernel/livepatch. A guest whose agent shows them elsewhere
// (a Linux guest: agent.LinuxLivepatchRoot) says so through SysfsRooter.
const SysfsRoot = "/sys/kernel/livepatch"

// SysfsInfo is the reply of GET /guest/sysfs: where the guest shows its
// live patches, and the guest shell command that lists a directory of
// them the way /sys/kernel/livepatch lists in klp-kvm's own guest
// (directories marked with a trailing '/').
type SysfsInfo struct {
	Root string `json:"root"`
	List string `json:"list"`
}

// SysfsRooter is an Agent that shows the live patches somewhere else
// than SysfsRoot (vmm's agent of a Linux guest).
type SysfsRooter interface {
	Sysfs() SysfsInfo
}

// SysfsPath makes p absolute under SysfsRoot unless it already is
// absolute, and cleans it.
func SysfsPath(p string) string { return SysfsPathUnder(SysfsRoot, p) }

// SysfsPathUnder makes p absolute under root unless it already is
// absolute, and cleans it.
func SysfsPathUnder(root, p string) string {
	if !strings.HasPrefix(p, "/") {
		p = root + "/" + p
	}
	return path.Clean(p)
}

// Agent is what the guest routes need of the guest agent; *agent.Client
// is one.
type Agent interface {
	Info(ctx context.Context) (agent.Info, error)
	Exec(ctx context.Context, cmd string) (agent.ExecResult, error)
	FileRead(ctx context.Context, path string) (content string, truncated bool, err error)
	FileWrite(ctx context.Context, path, data string) error
}

// GuestRoutes registers the routes served through the guest agent:
//
//	GET  /guest/info         guest-info
//	POST /guest/exec         {"cmd"} -> {"output","status","truncated"}
//	POST /guest/file/read    {"path"} -> {"path","content","truncated"}
//	POST /guest/file/write   {"path","data"} -> {} or an error with the guest's errno
//	GET  /guest/sysfs        SysfsInfo: SysfsRoot and "ls", unless c is a SysfsRooter
func GuestRoutes(mux *http.ServeMux, c Agent) {
	handle(mux, RouteGuestSysfs, nil, func(w http.ResponseWriter, r *http.Request, body []byte) {
		if !noBody(w, body) {
			return
		}
		info := SysfsInfo{Root: SysfsRoot, List: "ls"}
		if sr, ok := c.(SysfsRooter); ok {
			info = sr.Sysfs()
		}
		WriteJSON(w, http.StatusOK, info)
	})
	handle(mux, RouteGuestInfo, nil, func(w http.ResponseWriter, r *http.Request, body []byte) {
		if !noBody(w, body) {
			return
		}
		info, err := c.Info(r.Context())
		if err != nil {
			writeAgentError(w, err)
			return
		}
		info.SupportedCommands = emptyList(info.SupportedCommands)
		WriteJSON(w, http.StatusOK, info)
	})
	handle(mux, RouteGuestExec, nil, func(w http.ResponseWriter, r *http.Request, body []byte) {
		var req ExecRequest
		if err := decodeJSON(body, &req); err != nil {
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
	handle(mux, RouteGuestFileRead, nil, func(w http.ResponseWriter, r *http.Request, body []byte) {
		var req FileRequest
		if err := decodeJSON(body, &req); err != nil {
			WriteError(w, http.StatusBadRequest, "EINVAL", err)
			return
		}
		if req.Data != "" {
			WriteError(w, http.StatusBadRequest, "EINVAL", errors.New(`request body: field "data": a read takes none`))
			return
		}
		content, trunc, err := c.FileRead(r.Context(), req.Path)
		if err != nil {
			writeAgentError(w, err)
			return
		}
		WriteJSON(w, http.StatusOK, FileReply{Path: req.Path, Content: content, Truncated: trunc})
	})
	handle(mux, RouteGuestFileWrite, nil, func(w http.ResponseWriter, r *http.Request, body []byte) {
		var req FileRequest
		if err := decodeJSON(body, &req); err != nil {
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
// An error of another package carrying an errno (klperr: a Linux guest's
// livepatch write, which the host carries out itself) is refused the
// same way.
func writeAgentError(w http.ResponseWriter, err error) {
	var ae *agent.Error
	var errno syscall.Errno
	switch {
	case !errors.As(err, &ae) && errors.As(err, &errno) && errno > 0:
		WriteError(w, http.StatusConflict, unix.ErrnoName(errno), err)
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
