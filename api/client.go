package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"klp-kvm/kvm"
	"klp-kvm/kvm/agent"
	"klp-kvm/livepatch"
)

// Client talks to a server over its unix socket: one method per route
// (Routes), each building its request from the route table, so a caller
// never writes a path. Errors are *Error.
type Client struct {
	Socket string
	hc     *http.Client
}

// NewClient returns a client for the socket at path.
func NewClient(path string) *Client {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}}
	return &Client{Socket: path, hc: &http.Client{Transport: tr}}
}

// Machine is GET /machine.
func (c *Client) Machine(ctx context.Context) (kvm.Info, error) {
	var info kvm.Info
	return info, c.do(ctx, RouteMachine, nil, nil, &info)
}

// Pause is POST /machine/pause: every vCPU stops (pauses nest).
func (c *Client) Pause(ctx context.Context) (kvm.Info, error) {
	var info kvm.Info
	return info, c.do(ctx, RouteMachinePause, nil, nil, &info)
}

// Resume is POST /machine/resume: undo one Pause.
func (c *Client) Resume(ctx context.Context) (kvm.Info, error) {
	var info kvm.Info
	return info, c.do(ctx, RouteMachineResume, nil, nil, &info)
}

// Stop is POST /machine/stop: the machine stops and `klp-kvm run` exits.
func (c *Client) Stop(ctx context.Context) error {
	return c.do(ctx, RouteMachineStop, nil, nil, nil)
}

// GuestInfo is GET /guest/info (the agent's guest-info).
func (c *Client) GuestInfo(ctx context.Context) (agent.Info, error) {
	var info agent.Info
	return info, c.do(ctx, RouteGuestInfo, nil, nil, &info)
}

// Exec is POST /guest/exec: a guest shell command line through the agent.
func (c *Client) Exec(ctx context.Context, cmd string) (agent.ExecResult, error) {
	var res agent.ExecResult
	return res, c.do(ctx, RouteGuestExec, nil, ExecRequest{Cmd: cmd}, &res)
}

// FileRead is POST /guest/file/read.
func (c *Client) FileRead(ctx context.Context, path string) (FileReply, error) {
	var res FileReply
	return res, c.do(ctx, RouteGuestFileRead, nil, FileRequest{Path: path}, &res)
}

// FileWrite is POST /guest/file/write; a refusal carries the guest's errno.
func (c *Client) FileWrite(ctx context.Context, path, data string) error {
	return c.do(ctx, RouteGuestFileWrite, nil, FileRequest{Path: path, Data: data}, nil)
}

// Sysfs is GET /guest/sysfs: where this guest shows its live patches
// (the root relative `klp-kvm sysfs` paths are taken under).
func (c *Client) Sysfs(ctx context.Context) (SysfsInfo, error) {
	var res SysfsInfo
	return res, c.do(ctx, RouteGuestSysfs, nil, nil, &res)
}

// Patches is GET /patches: the livepatch state.
func (c *Client) Patches(ctx context.Context) (livepatch.Status, error) {
	var st livepatch.Status
	err := c.do(ctx, RoutePatches, nil, nil, &st)
	return StatusJSON(st), err
}

// AddPatch is POST /patches: load (register and enable) or register a patch
// object, as req.Op says.
func (c *Client) AddPatch(ctx context.Context, req PatchRequest) (OpReply, error) {
	var rep OpReply
	if len(req.Object) == 0 {
		return rep, &Error{Op: RoutePatchAdd.String(), Status: http.StatusBadRequest, Errno: syscall.EINVAL, Detail: "empty patch object"}
	}
	if len(req.Object) > MaxPatchObject {
		return rep, &Error{Op: RoutePatchAdd.String(), Status: http.StatusRequestEntityTooLarge, Errno: syscall.EMSGSIZE,
			Detail: fmt.Sprintf("patch object of %d bytes is larger than the %d MiB the server takes", len(req.Object), MaxPatchObject>>20)}
	}
	return rep, c.do(ctx, RoutePatchAdd, nil, req, &rep)
}

// Enable is POST /patches/{name}/enable.
func (c *Client) Enable(ctx context.Context, name string, o OpRequest) (OpReply, error) {
	return c.patchOp(ctx, RoutePatchEnable, name, o)
}

// Disable is POST /patches/{name}/disable.
func (c *Client) Disable(ctx context.Context, name string, o OpRequest) (OpReply, error) {
	return c.patchOp(ctx, RoutePatchDisable, name, o)
}

// Unload is POST /patches/{name}/unload: disable if enabled, then
// unregister.
func (c *Client) Unload(ctx context.Context, name string, o OpRequest) (OpReply, error) {
	return c.patchOp(ctx, RoutePatchUnload, name, o)
}

// Unregister is POST /patches/{name}/unregister.
func (c *Client) Unregister(ctx context.Context, name string) (OpReply, error) {
	var rep OpReply
	return rep, c.do(ctx, RoutePatchUnreg, []string{name}, nil, &rep)
}

func (c *Client) patchOp(ctx context.Context, r Route, name string, o OpRequest) (OpReply, error) {
	var rep OpReply
	return rep, c.do(ctx, r, []string{name}, o, &rep)
}

// Status is GET /status: the machine and the livepatch state.
func (c *Client) Status(ctx context.Context) (StatusReply, error) {
	var st StatusReply
	err := c.do(ctx, RouteStatus, nil, nil, &st)
	st.Livepatch, st.Machine = StatusJSON(st.Livepatch), infoJSON(st.Machine)
	return st, err
}

// maxReply caps a reply body read by the client.
const maxReply = 64 << 20

// do sends a request for route r (its wildcards filled from args) with an
// optional JSON body and decodes the JSON reply into out (if non-nil).
// Its errors are *Error, their messages free of the route.
func (c *Client) do(ctx context.Context, r Route, args []string, in, out any) error {
	path, err := r.Path(args...)
	if err != nil {
		// Refused before anything was sent: the argument cannot name
		// anything on the server, as EINVAL.
		return &Error{Op: r.String(), Status: http.StatusBadRequest, Errno: syscall.EINVAL, Detail: err.Error()}
	}
	op := r.Method + " " + path
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return &Error{Op: op, Err: err}
		}
		if int64(len(b)) > r.MaxBody {
			return &Error{Op: op, Status: http.StatusRequestEntityTooLarge, Errno: syscall.EMSGSIZE,
				Detail: fmt.Sprintf("request of %d bytes is larger than the %d the server takes", len(b), r.MaxBody)}
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, r.Method, "http://klp-kvm"+path, body)
	if err != nil {
		return &Error{Op: op, Err: err}
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return &Error{Op: op, Err: c.transportError(ctx, err)}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxReply))
	if err != nil {
		return &Error{Op: op, Err: c.transportError(ctx, err)}
	}
	if resp.StatusCode >= 300 {
		var er ErrorReply
		if json.Unmarshal(data, &er) != nil || er.Error == "" {
			er.Error = fmt.Sprintf("HTTP %d: %s", resp.StatusCode, clip(string(bytes.TrimSpace(data))))
		}
		return &Error{Op: op, Status: resp.StatusCode, Errno: errnoOf(er.Errno), Detail: er.Error}
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return &Error{Op: op, Err: fmt.Errorf("klp-kvm at %s: bad reply: %v", c.Socket, err)}
		}
	}
	return nil
}

// closedEarly reports whether err is the connection ending before a
// reply, in any of the ways net/http reports it.
func closedEarly(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		strings.Contains(err.Error(), "server closed idle connection") // net/http's error for a close before any byte
}

// transportError says what went wrong on the way to the server, in the
// user's terms: the socket, the errno, never the request's URL.
func (c *Client) transportError(ctx context.Context, err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	var ne *net.OpError
	var en syscall.Errno
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("klp-kvm at %s: no reply in time (ETIMEDOUT): %v", c.Socket, ctx.Err())
	case errors.As(err, &ne) && ne.Op == "dial":
		why := ne.Err.Error()
		if errors.As(err, &en) {
			why = unix.ErrnoName(en) + ": " + en.Error()
		}
		return fmt.Errorf("cannot reach klp-kvm at %s: %s (is `klp-kvm run` running? set --api or $KLP_KVM_API)", c.Socket, why)
	case closedEarly(err):
		return fmt.Errorf("klp-kvm at %s closed the connection without a reply (it serves only its own uid and root, or it stopped)", c.Socket)
	case errors.As(err, &ne):
		err = ne.Err // its addresses would name the socket's birthplace
	}
	return fmt.Errorf("klp-kvm at %s: %v", c.Socket, err)
}
