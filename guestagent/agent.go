// Package guestagent is klp-kvm's guest agent for Linux guests: the same
// JSON-lines protocol as the project's own guest kernel (guestkernel's
// agent.c; host side kvm/agent), spoken by a Go program on the guest's
// /dev/ttyS1. Serve is the protocol over any byte stream, so the host's
// tests drive it with kvm/agent.Client over a pipe; cmd/klp-agent adds
// the PID-1 and serial-port work (init.go, tty.go).
//
// Every line from the host is untrusted: lines are at most 8191 bytes (the
// rest of a longer line is dropped and answered with E2BIG, as agent.c
// does), malformed JSON gets an error reply, and no input panics the
// agent. One reader goroutine reads lines; each request runs on a
// goroutine of its own (at most MaxInFlight at once, beyond that EBUSY),
// so a long guest-exec never delays a guest-ping; replies are written
// whole, one at a time.
package guestagent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Version is the agent's own version, reported by guest-info.
const Version = "klp-agent 1"

// Limits, agent.c's where it has one.
const (
	LineMax         = 8192     // request line buffer, newline included
	FileReadMax     = 64 << 10 // guest-file-read returns at most this much
	ExecOutputMax   = 32 << 10 // guest-exec output cap (stdout+stderr)
	DefaultMaxJobs  = 32       // requests running at once
	DefaultExecTime = time.Minute
	idMax           = 64 // longest "id" echoed, as agent.c
)

// Options configures an Agent. Zero values pick the defaults.
type Options struct {
	// ExecTimeout bounds one guest-exec: the script is then stopped and
	// its status is 124, like timeout(1).
	ExecTimeout time.Duration
	MaxInFlight int
	// Proc is the procfs mount guest-info counts tasks in ("/proc").
	Proc string
	// Shutdown carries out guest-shutdown ("poweroff", "reboot" or
	// "halt") after the reply is written; nil refuses the command (tests,
	// and the agent running as a service that must not stop its machine).
	Shutdown func(mode string)
	// Ready makes Serve start with the event {"event": "agent-ready",
	// "data": {"version": RELEASE + " " + Version}}: the host learns the
	// agent is up without polling (the project's own kernel has no such
	// event; a host that does not know it just logs it).
	Ready bool
	// Log gets one line per notable event (lines dropped, write errors).
	Log func(format string, args ...any)
	// LivepatchRoot, when set, is the directory where the agent shows
	// the host's live patches of this guest (guest-livepatch-tree) and
	// whose writes it forwards to the host (lptree.go); "" leaves the
	// command refused with EOPNOTSUPP.
	LivepatchRoot string
	// Kmsg receives the outcome of each forwarded write as one kernel
	// log record per Write ("<4>klp-kvm: ..."; /dev/kmsg in the guest);
	// nil logs it through Log only.
	Kmsg io.Writer
}

// Agent answers requests. Counters are for guest-info.
type Agent struct {
	opts     Options
	start    time.Time
	writeMu  sync.Mutex
	w        io.Writer
	requests atomic.Uint64
	errors   atomic.Uint64
	jobs     chan struct{}
	wg       sync.WaitGroup
	tree     atomic.Pointer[lpTree] // set while Serve runs with Options.LivepatchRoot
}

// New returns an agent; Serve runs it on a stream.
func New(opts Options) *Agent {
	if opts.ExecTimeout <= 0 {
		opts.ExecTimeout = DefaultExecTime
	}
	if opts.MaxInFlight <= 0 {
		opts.MaxInFlight = DefaultMaxJobs
	}
	if opts.Proc == "" {
		opts.Proc = "/proc"
	}
	if opts.Log == nil {
		opts.Log = func(string, ...any) {}
	}
	return &Agent{opts: opts, start: time.Now(), jobs: make(chan struct{}, opts.MaxInFlight)}
}

// Serve reads requests from r and writes replies to w until r ends or ctx
// is done, then waits for the requests still running. It returns nil at
// EOF or when ctx ends, else the read error. Requests still running at EOF
// finish and reply (a host that hung up has its replies dropped by the
// port); ctx ending stops them.
func (a *Agent) Serve(ctx context.Context, r io.Reader, w io.Writer) error {
	a.writeMu.Lock()
	a.w = w
	a.writeMu.Unlock()
	if a.opts.LivepatchRoot != "" {
		// Before agent-ready: a host that sends its tree on that event
		// finds the root in place. Closed after the requests in flight
		// (deferred before the wait below), which may be using it.
		if l, err := newLPTree(a.opts.LivepatchRoot, a.Event, a.opts.Kmsg, a.opts.Log); err != nil {
			a.opts.Log("klp-agent: no livepatch tree: %v", err)
		} else {
			a.tree.Store(l)
			defer func() { a.tree.Store(nil); l.close() }()
		}
	}
	defer a.wg.Wait()
	if a.opts.Ready {
		a.Event("agent-ready", map[string]string{"version": Release() + " " + Version})
	}
	br := bufio.NewReaderSize(r, LineMax)
	var line []byte
	tooLarge := false
	for {
		chunk, err := br.ReadSlice('\n')
		if len(chunk) > 0 {
			end := chunk[len(chunk)-1] == '\n'
			body := chunk
			if end {
				body = chunk[:len(chunk)-1]
			}
			if !tooLarge && len(line)+len(body) < LineMax {
				line = append(line, body...)
			} else {
				tooLarge, line = true, line[:0]
			}
			if end {
				a.dispatch(ctx, bytes.TrimRight(line, "\r \t"), tooLarge)
				line, tooLarge = line[:0], false
			}
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if err != nil {
			if errors.Is(err, io.EOF) || ctx.Err() != nil {
				return nil
			}
			return wrap("serve", ErrIO, "read", err)
		}
	}
}

// request is a decoded line. ID is echoed raw when it is a number or a
// short string, as agent.c does.
type request struct {
	Execute   string
	Arguments json.RawMessage
	ID        json.RawMessage
}

// reqError is a request the agent answers with an error reply.
type reqError struct {
	class string
	desc  string
	errno syscall.Errno
}

func (e *reqError) Error() string { return e.class + ": " + e.desc }

func invalid(desc string) *reqError {
	return &reqError{class: "GenericError", desc: desc, errno: syscall.EINVAL}
}

// DecodeRequest parses one request line (without its newline). The
// returned id is the raw "id" to echo, or nil. It never panics; fuzzed.
func DecodeRequest(line []byte) (request, error) {
	var req request
	var top map[string]json.RawMessage
	if err := json.Unmarshal(line, &top); err != nil {
		var syn *json.SyntaxError
		if errors.As(err, &syn) || !json.Valid(line) {
			return req, &reqError{class: "GenericError", desc: "JSON parse error", errno: syscall.EINVAL}
		}
		return req, invalid("request must be a JSON object")
	}
	if top == nil {
		return req, invalid("request must be a JSON object")
	}
	if id, ok := top["id"]; ok && len(id) > 0 && len(id) < idMax {
		switch c := id[0]; {
		case c == '"' || c == '-' || (c >= '0' && c <= '9'):
			req.ID = id
		}
	}
	ex, ok := top["execute"]
	if !ok || json.Unmarshal(ex, &req.Execute) != nil || req.Execute == "" {
		return req, invalid(`expected {"execute": "<command>", "arguments": {...}}`)
	}
	if args, ok := top["arguments"]; ok && string(args) != "null" {
		if len(args) == 0 || args[0] != '{' {
			return req, invalid(`"arguments" must be an object`)
		}
		req.Arguments = args
	}
	return req, nil
}

func (a *Agent) dispatch(ctx context.Context, line []byte, tooLarge bool) {
	if len(line) == 0 && !tooLarge {
		return
	}
	a.requests.Add(1)
	if tooLarge {
		a.sendError(nil, &reqError{class: "GenericError", desc: "request too large (limit 8191 bytes)",
			errno: syscall.E2BIG})
		return
	}
	req, err := DecodeRequest(line)
	if err != nil {
		a.sendError(req.ID, err.(*reqError))
		return
	}
	if req.Execute == "sysfs-reply" {
		// the answer to a forwarded livepatch write (no reply to it)
		if l := a.tree.Load(); l != nil {
			l.reply(req.Arguments)
		}
		return
	}
	select {
	case a.jobs <- struct{}{}:
	default:
		a.sendError(req.ID, &reqError{class: "GenericError", desc: "agent busy: request queue full",
			errno: syscall.EBUSY})
		return
	}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		defer func() { <-a.jobs }()
		ret, after, err := a.run(ctx, req)
		if err != nil {
			a.sendError(req.ID, err)
			return
		}
		a.sendReturn(req.ID, ret)
		if after != nil {
			after()
		}
	}()
}

func (a *Agent) send(v map[string]any, id json.RawMessage) {
	if id != nil {
		v["id"] = id
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil { // cannot happen for the values built here
		a.opts.Log("klp-agent: reply does not encode: %v", err)
		return
	}
	a.writeMu.Lock()
	defer a.writeMu.Unlock()
	if a.w == nil {
		return
	}
	if _, err := a.w.Write(b.Bytes()); err != nil {
		a.opts.Log("klp-agent: write reply: %v", err)
	}
}

func (a *Agent) sendReturn(id json.RawMessage, ret any) { a.send(map[string]any{"return": ret}, id) }

func (a *Agent) sendError(id json.RawMessage, e *reqError) {
	a.errors.Add(1)
	eo := map[string]any{"class": e.class, "desc": e.desc}
	if e.errno != 0 {
		eo["errno"] = int(e.errno)
		eo["errno_name"] = unix.ErrnoName(e.errno)
	}
	a.send(map[string]any{"error": eo}, id)
}

// Event sends a guest-initiated event line {"event": name, "data": data}.
func (a *Agent) Event(name string, data any) {
	a.send(map[string]any{"event": name, "data": data}, nil)
}
