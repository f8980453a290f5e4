package guestagent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"klp-kvm/guestagent/applets"
)

// Commands is what guest-info reports as supported_commands.
var Commands = []string{"guest-ping", "guest-sync", "guest-info", "guest-file-read", "guest-file-write",
	"guest-exec", "guest-shutdown", "guest-livepatch-tree", "sysfs-reply"}

func (a *Agent) args(req request, v any) *reqError {
	if req.Arguments == nil {
		return invalid(req.Execute + ": arguments required")
	}
	if err := json.Unmarshal(req.Arguments, v); err != nil {
		return invalid(req.Execute + ": " + err.Error())
	}
	return nil
}

// run executes one request: its return value, an action to take once the
// reply is written (guest-shutdown), or the error to answer with.
func (a *Agent) run(ctx context.Context, req request) (any, func(), *reqError) {
	switch req.Execute {
	case "guest-ping":
		return struct{}{}, nil, nil
	case "guest-sync":
		var arg struct {
			ID *json.Number `json:"id"`
		}
		if a.args(req, &arg) != nil || arg.ID == nil {
			return nil, nil, invalid(`guest-sync: "id" (integer) required`)
		}
		if _, err := arg.ID.Int64(); err != nil {
			return nil, nil, invalid(`guest-sync: "id" (integer) required`)
		}
		return arg.ID, nil, nil
	case "guest-info":
		return a.info(), nil, nil
	case "guest-file-read":
		var arg struct {
			Path *string `json:"path"`
		}
		if a.args(req, &arg) != nil || arg.Path == nil {
			return nil, nil, invalid(`guest-file-read: "path" (string) required`)
		}
		return fileRead(*arg.Path)
	case "guest-file-write":
		var arg struct {
			Path *string `json:"path"`
			Data *string `json:"data"`
		}
		if a.args(req, &arg) != nil || arg.Path == nil || arg.Data == nil {
			return nil, nil, invalid(`guest-file-write: "path" and "data" (strings) required`)
		}
		return fileWrite(*arg.Path, *arg.Data)
	case "guest-exec":
		var arg struct {
			Cmd *string `json:"cmd"`
		}
		if a.args(req, &arg) != nil || arg.Cmd == nil {
			return nil, nil, invalid(`guest-exec: "cmd" (string) required`)
		}
		return a.exec(ctx, *arg.Cmd), nil, nil
	case "guest-shutdown":
		var arg struct {
			Mode string `json:"mode"`
		}
		if req.Arguments != nil {
			if err := a.args(req, &arg); err != nil {
				return nil, nil, err
			}
		}
		switch arg.Mode {
		case "":
			arg.Mode = "poweroff"
		case "poweroff", "reboot", "halt":
		default:
			return nil, nil, invalid(`guest-shutdown: "mode" is poweroff, reboot or halt`)
		}
		if a.opts.Shutdown == nil {
			return nil, nil, &reqError{class: "GenericError", desc: "guest-shutdown: this agent does not stop its machine",
				errno: syscall.EPERM}
		}
		mode := arg.Mode
		return struct{}{}, func() { a.opts.Shutdown(mode) }, nil
	case "guest-livepatch-tree":
		return a.livepatchTree(req.Arguments)
	case "guest-call":
		return nil, nil, &reqError{class: "GenericError", errno: syscall.EOPNOTSUPP,
			desc: "guest-call: a Linux guest has no klp-kvm patch area; patch callbacks run inside its own livepatch"}
	}
	return nil, nil, &reqError{class: "CommandNotFound", desc: fmt.Sprintf("The command %s has not been found", req.Execute)}
}

// Info is guest-info's return value (kvm/agent.Info's fields).
type Info struct {
	Version           string   `json:"version"`
	CPUs              int      `json:"cpus"`
	UptimeMS          uint64   `json:"uptime_ms"`
	Tasks             int      `json:"tasks"`
	Requests          uint64   `json:"requests"`
	Errors            uint64   `json:"errors"`
	SupportedCommands []string `json:"supported_commands"`
}

func (a *Agent) info() Info {
	in := Info{Version: Release() + " " + Version, CPUs: onlineCPUs(), Requests: a.requests.Load(),
		Errors: a.errors.Load(), SupportedCommands: Commands}
	if b, err := os.ReadFile(a.opts.Proc + "/uptime"); err == nil {
		if f := strings.Fields(string(b)); len(f) > 0 {
			if s, err := strconv.ParseFloat(f[0], 64); err == nil && s >= 0 {
				in.UptimeMS = uint64(s * 1000)
			}
		}
	} else {
		in.UptimeMS = uint64(time.Since(a.start).Milliseconds())
	}
	if ents, err := os.ReadDir(a.opts.Proc); err == nil {
		for _, e := range ents {
			if n, err := strconv.Atoi(e.Name()); err == nil && n > 0 {
				in.Tasks++
			}
		}
	}
	return in
}

// Release is uname -r.
func Release() string {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return "unknown"
	}
	return unix.ByteSliceToString(u.Release[:])
}

// onlineCPUs counts /sys/devices/system/cpu/online ("0-3,5").
func onlineCPUs() int {
	b, err := os.ReadFile("/sys/devices/system/cpu/online")
	if err != nil {
		return runtime.NumCPU()
	}
	n := 0
	for _, r := range strings.Split(strings.TrimSpace(string(b)), ",") {
		lo, hi, ok := strings.Cut(r, "-")
		l, err1 := strconv.Atoi(lo)
		h := l
		var err2 error
		if ok {
			h, err2 = strconv.Atoi(hi)
		}
		if err1 != nil || err2 != nil || h < l || h-l > 1<<16 {
			return runtime.NumCPU()
		}
		n += h - l + 1
	}
	return n
}

func fileError(path, what string, err error) *reqError {
	errno := syscall.EIO
	var en syscall.Errno
	if errors.As(err, &en) {
		errno = en
	}
	return &reqError{class: "GenericError", desc: path + ": " + what + errno.Error(), errno: errno}
}

// FileContent is guest-file-read's return value.
type FileContent struct {
	Content   string `json:"content"`
	Count     int    `json:"count"`
	Truncated bool   `json:"truncated"`
}

// fileRead reads at most FileReadMax bytes, as agent.c; procfs and sysfs
// files have no size to trust, so it reads, not stats.
func fileRead(path string) (any, func(), *reqError) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fileError(path, "", err)
	}
	defer f.Close()
	buf := make([]byte, FileReadMax+1)
	n, err := io.ReadFull(f, buf)
	if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF {
		return nil, nil, fileError(path, "", err)
	}
	trunc := n > FileReadMax
	if trunc {
		n = FileReadMax
	}
	return FileContent{Content: string(buf[:n]), Count: n, Truncated: trunc}, nil, nil
}

// fileWrite writes data with one write(2), as a sysfs/procfs attribute
// wants, creating a regular file if needed (and truncating it).
func fileWrite(path, data string) (any, func(), *reqError) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, nil, fileError(path, "", err)
	}
	_, werr := f.Write([]byte(data))
	cerr := f.Close()
	if werr == nil {
		werr = cerr
	}
	if werr != nil {
		return nil, nil, fileError(path, "write error: ", werr)
	}
	return map[string]int{"count": len(data)}, nil, nil
}

// ExecResult is guest-exec's return value.
type ExecResult struct {
	Output    string `json:"output"`
	Status    int    `json:"status"`
	Truncated bool   `json:"truncated"`
}

// capped collects at most max bytes and says if more came; writers never
// see an error, so a chatty command is not killed by EPIPE.
//
// Once ctx ends, writes fail: an in-process applet the script abandoned
// (see applets.Shell) then stops at its next write instead of running on.
type capped struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	max   int
	trunc bool
	ctx   context.Context
}

func (c *capped) Write(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	room := c.max - c.buf.Len()
	if len(p) > room {
		c.trunc = true
		c.buf.Write(p[:max(room, 0)])
	} else {
		c.buf.Write(p)
	}
	return len(p), nil
}

func (a *Agent) exec(ctx context.Context, cmd string) ExecResult {
	ctx, cancel := context.WithTimeout(ctx, a.opts.ExecTimeout)
	defer cancel()
	out := &capped{max: ExecOutputMax, ctx: ctx}
	env := &applets.Env{Stdin: strings.NewReader(""), Stdout: out, Stderr: out, Dir: "/", Proc: a.opts.Proc}
	st := applets.Shell(ctx, env, cmd)
	out.mu.Lock()
	defer out.mu.Unlock()
	if ctx.Err() == context.DeadlineExceeded {
		fmt.Fprintf(&out.buf, "klp-agent: command timed out after %v\n", a.opts.ExecTimeout)
		st = 124
	}
	return ExecResult{Output: out.buf.String(), Status: st, Truncated: out.trunc}
}
