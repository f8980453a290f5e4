// Package agent is the host side of the klp-kvm guest agent: JSON lines
// over the guest's COM2 byte stream, in the style of the QEMU Guest Agent.
//
// Requests are {"execute": CMD, "arguments": {...}, "id": N}; the guest
// echoes id in its {"return": ...} or {"error": {...}} so replies are
// matched to requests, and a late reply to a timed-out request is
// discarded. Guest-initiated {"event": NAME, "data": {...}} lines go to a
// callback. Everything from the guest is untrusted: over-long lines,
// malformed JSON and unexpected replies are counted and skipped, never
// fatal; a silent guest yields ErrTimeout.
package agent

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
)

// Defaults.
const (
	DefaultTimeout    = 10 * time.Second
	DefaultMaxLine    = 1 << 20 // longest reply line accepted from the guest
	DefaultMaxRequest = 8000    // the guest's line buffer is 8192 bytes
	eventQueue        = 256
)

// Event is a guest-initiated line, e.g. {"event":"sysfs-write","data":{...}}.
type Event struct {
	Name string
	Data json.RawMessage
}

// SysfsWrite is the data of a "sysfs-write" event: a guest process wrote
// Value to Path and waits for SysfsReply(ID, errno).
type SysfsWrite struct {
	Path  string `json:"path"`
	Value string `json:"value"`
	ID    uint64 `json:"id"`
}

// Options configures a Client. Zero values pick the defaults.
type Options struct {
	// OnEvent receives guest events in order, on a goroutine of its own
	// (so it may call the Client). Events beyond a queue of 256 are
	// dropped and counted.
	OnEvent func(Event)
	// OnGarbage is told about every line that was skipped and why.
	OnGarbage func(line []byte, err error)
	// Cause, if set, explains why the channel ended (the VMM: how the
	// guest stopped, with its last console lines). It is called once the
	// byte stream has ended, and its error is the cause of every ErrClosed
	// error from then on, so each caller in flight learns why.
	Cause      func() error
	Timeout    time.Duration // per request, when the context has no deadline
	MaxLine    int
	MaxRequest int
}

// Stats counts what the client saw.
type Stats struct {
	Requests      uint64
	Replies       uint64
	Events        uint64
	EventsDropped uint64
	Garbage       uint64 // malformed or over-long lines
	Unmatched     uint64 // replies that matched no waiting request
}

type reply struct {
	id    uint64
	hasID bool
	ret   json.RawMessage
	err   *Error
}

// Client talks to one guest agent. Many requests may be in flight at once:
// each carries its own id and waits for the reply with that id. The guest
// runs guest-call on a worker of its own, so a callback the host runs while
// handling a guest event (a sysfs write of a patch with callbacks, made by
// a guest-file-write or guest-exec still in flight) is not queued behind
// the very request that waits for it.
type Client struct {
	rw   io.ReadWriter
	opts Options

	writeMu sync.Mutex // one line at a time on the wire
	nextID  atomic.Uint64
	// waitMu guards waiting: the reply channel of every request in
	// flight, by id. The reader delivers a reply to its waiter and counts
	// any other as unmatched.
	waitMu  sync.Mutex
	waiting map[uint64]chan reply
	events  chan Event
	done    chan struct{} // closed when the reader stops
	stopped atomic.Bool
	readErr error // set before done is closed

	requests, nreplies, nevents, dropped, garbage, unmatched atomic.Uint64
}

// New starts a client on rw (the Machine's agent port). Close it when done.
func New(rw io.ReadWriter, opts Options) *Client {
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.MaxLine <= 0 {
		opts.MaxLine = DefaultMaxLine
	}
	if opts.MaxRequest <= 0 {
		opts.MaxRequest = DefaultMaxRequest
	}
	c := &Client{rw: rw, opts: opts, waiting: map[uint64]chan reply{}, events: make(chan Event, eventQueue),
		done: make(chan struct{})}
	go c.readLoop()
	go c.eventLoop()
	return c
}

// Stats returns the client's counters.
func (c *Client) Stats() Stats {
	return Stats{Requests: c.requests.Load(), Replies: c.nreplies.Load(), Events: c.nevents.Load(),
		EventsDropped: c.dropped.Load(), Garbage: c.garbage.Load(), Unmatched: c.unmatched.Load()}
}

// Close stops the client. If rw is an io.Closer it is closed too, which
// ends the reader; otherwise the reader ends when rw's Read returns an error.
func (c *Client) Close() error {
	c.stopped.Store(true)
	if cl, ok := c.rw.(io.Closer); ok {
		return cl.Close()
	}
	return nil
}

func (c *Client) skip(line []byte, err error) {
	c.garbage.Add(1)
	if c.opts.OnGarbage != nil {
		c.opts.OnGarbage(line, err)
	}
}

// wire is a line from the guest: a reply or an event.
type wire struct {
	Event  *string          `json:"event"`
	Data   json.RawMessage  `json:"data"`
	Return json.RawMessage  `json:"return"`
	Error  *json.RawMessage `json:"error"`
	ID     json.RawMessage  `json:"id"`
}

type wireError struct {
	Class     string `json:"class"`
	Desc      string `json:"desc"`
	Errno     int    `json:"errno"`
	ErrnoName string `json:"errno_name"`
}

func (c *Client) readLoop() {
	defer close(c.events)
	defer close(c.done)
	r := bufio.NewReaderSize(c.rw, 64<<10)
	var line []byte
	tooLong := false
	for {
		chunk, err := r.ReadSlice('\n')
		if len(chunk) > 0 {
			if !tooLong && len(line)+len(chunk) <= c.opts.MaxLine+1 {
				line = append(line, chunk...)
			} else if !tooLong {
				tooLong = true
				line = line[:0]
			}
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if len(chunk) > 0 && chunk[len(chunk)-1] == '\n' {
			if tooLong {
				c.skip(nil, errorf("read", ErrProtocol, "line longer than %d bytes", c.opts.MaxLine))
			} else {
				c.handleLine(bytes.TrimSpace(line))
			}
			line, tooLong = line[:0], false
		}
		if err != nil {
			var cause error
			if c.opts.Cause != nil {
				cause = c.opts.Cause()
			}
			switch {
			case cause != nil:
				c.readErr = cause
			case errors.Is(err, io.EOF) || c.stopped.Load():
				c.readErr = errorf("read", ErrClosed, "agent channel ended")
			default:
				c.readErr = &Error{Op: "read", Kind: ErrClosed, Err: err}
			}
			return
		}
	}
}

func (c *Client) handleLine(line []byte) {
	if len(line) == 0 {
		return
	}
	var w wire
	if err := json.Unmarshal(line, &w); err != nil {
		c.skip(line, &Error{Op: "read", Kind: ErrProtocol, Detail: "not JSON", Err: err})
		return
	}
	switch {
	case w.Event != nil:
		c.nevents.Add(1)
		select {
		case c.events <- Event{Name: *w.Event, Data: append(json.RawMessage(nil), w.Data...)}:
		default:
			c.dropped.Add(1)
		}
		return
	case w.Return == nil && w.Error == nil:
		c.skip(line, errorf("read", ErrProtocol, "neither return, error nor event"))
		return
	}
	rp := reply{}
	if len(w.ID) > 0 {
		var id uint64
		if err := json.Unmarshal(w.ID, &id); err == nil {
			rp.id, rp.hasID = id, true
		}
	}
	if w.Error != nil {
		var we wireError
		if err := json.Unmarshal(*w.Error, &we); err != nil {
			c.skip(line, &Error{Op: "read", Kind: ErrProtocol, Detail: "malformed error object", Err: err})
			return
		}
		errno := syscall.Errno(0)
		if we.Errno > 0 && we.Errno < 4096 { // the guest's word, bounded
			errno = syscall.Errno(we.Errno)
		}
		rp.err = &Error{Kind: ErrGuest, Class: we.Class, Detail: we.Desc, Errno: errno, ErrnoName: we.ErrnoName}
	} else {
		rp.ret = append(json.RawMessage(nil), w.Return...)
	}
	c.nreplies.Add(1)
	if !rp.hasID {
		// the guest answers id-less only to lines it could not parse,
		// which this client never sends: someone else's garbage
		c.unmatched.Add(1)
		return
	}
	c.waitMu.Lock()
	ch, ok := c.waiting[rp.id]
	delete(c.waiting, rp.id)
	c.waitMu.Unlock()
	if !ok {
		c.unmatched.Add(1) // a late reply to an abandoned request
		return
	}
	ch <- rp // buffered: never blocks the reader
}

func (c *Client) eventLoop() {
	for ev := range c.events {
		if c.opts.OnEvent != nil {
			c.opts.OnEvent(ev)
		}
	}
}

type request struct {
	Execute   string `json:"execute"`
	Arguments any    `json:"arguments,omitempty"`
	ID        uint64 `json:"id,omitempty"`
}

func (c *Client) send(op string, req request) error {
	b, err := json.Marshal(req)
	if err != nil {
		return &Error{Op: op, Kind: ErrInvalid, Detail: "arguments do not marshal", Err: err}
	}
	if len(b) > c.opts.MaxRequest {
		return errorf(op, ErrTooLarge, "%d bytes, the guest takes %d", len(b), c.opts.MaxRequest)
	}
	b = append(b, '\n')
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	select {
	case <-c.done:
		return c.closedErr(op)
	default:
	}
	if _, err := c.rw.Write(b); err != nil {
		return &Error{Op: op, Kind: ErrClosed, Detail: "write", Err: err}
	}
	return nil
}

func (c *Client) closedErr(op string) error {
	e := &Error{Op: op, Kind: ErrClosed}
	if c.readErr != nil {
		e.Err = c.readErr
	}
	return e
}

// Call sends cmd with args (nil for none) and decodes the "return" value
// into result (if non-nil). It waits until ctx is done or, without a
// deadline, for the client's Timeout. A guest error is an *Error of kind
// ErrGuest carrying the agent's class, description and errno.
func (c *Client) Call(ctx context.Context, cmd string, args any, result any) error {
	if cmd == "" {
		return errorf("call", ErrInvalid, "empty command")
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.opts.Timeout)
		defer cancel()
	}
	if err := ctx.Err(); err != nil { // do not send what nobody will wait for
		return &Error{Op: cmd, Kind: ErrTimeout, Err: err}
	}
	id := c.nextID.Add(1)
	ch := make(chan reply, 1)
	c.waitMu.Lock()
	c.waiting[id] = ch
	c.waitMu.Unlock()
	defer func() { // abandoned: a late reply is then counted as unmatched
		c.waitMu.Lock()
		delete(c.waiting, id)
		c.waitMu.Unlock()
	}()
	c.requests.Add(1)
	if err := c.send(cmd, request{Execute: cmd, Arguments: args, ID: id}); err != nil {
		return err
	}
	select {
	case rp := <-ch:
		if rp.err != nil {
			rp.err.Op = cmd
			return rp.err
		}
		if result != nil {
			if err := json.Unmarshal(rp.ret, result); err != nil {
				return &Error{Op: cmd, Kind: ErrProtocol, Detail: "unexpected return value " + truncate(rp.ret), Err: err}
			}
		}
		return nil
	case <-c.done:
		return c.closedErr(cmd)
	case <-ctx.Done():
		return &Error{Op: cmd, Kind: ErrTimeout, Err: ctx.Err()}
	}
}

func truncate(b []byte) string {
	if len(b) > 80 {
		return string(b[:80]) + "..."
	}
	return string(b)
}

// Notify sends cmd without waiting for a reply (the guest sends none for
// sysfs-reply).
func (c *Client) Notify(cmd string, args any) error {
	if cmd == "" {
		return errorf("notify", ErrInvalid, "empty command")
	}
	return c.send(cmd, request{Execute: cmd, Arguments: args})
}

// Ping is guest-ping.
func (c *Client) Ping(ctx context.Context) error { return c.Call(ctx, "guest-ping", nil, nil) }

// Sync is guest-sync: it proves the channel is in step (every earlier
// reply has been consumed) and the guest is alive.
func (c *Client) Sync(ctx context.Context) error {
	id := uint64(time.Now().UnixNano()) & (1<<53 - 1)
	var got uint64
	if err := c.Call(ctx, "guest-sync", map[string]uint64{"id": id}, &got); err != nil {
		return err
	}
	if got != id {
		return errorf("guest-sync", ErrProtocol, "returned %d, sent %d", got, id)
	}
	return nil
}

// Info is the return value of guest-info.
type Info struct {
	Version           string   `json:"version"`
	CPUs              int      `json:"cpus"`
	UptimeMS          uint64   `json:"uptime_ms"`
	Tasks             int      `json:"tasks"`
	Ticks             uint64   `json:"ticks"`
	Requests          uint64   `json:"requests"`
	Errors            uint64   `json:"errors"`
	SupportedCommands []string `json:"supported_commands"`
}

// Info is guest-info.
func (c *Client) Info(ctx context.Context) (Info, error) {
	var in Info
	err := c.Call(ctx, "guest-info", nil, &in)
	return in, err
}

// FileRead is guest-file-read: the whole file (the guest caps it at 64 KiB
// and says so with truncated).
func (c *Client) FileRead(ctx context.Context, path string) (content string, truncated bool, err error) {
	var r struct {
		Content   string `json:"content"`
		Count     int    `json:"count"`
		Truncated bool   `json:"truncated"`
	}
	if err := c.Call(ctx, "guest-file-read", map[string]string{"path": path}, &r); err != nil {
		return "", false, err
	}
	return r.Content, r.Truncated, nil
}

// FileWrite is guest-file-write (a sysfs file write may take as long as
// the host's own answer to the event it raises).
func (c *Client) FileWrite(ctx context.Context, path, data string) error {
	return c.Call(ctx, "guest-file-write", map[string]string{"path": path, "data": data}, nil)
}

// ExecResult is the return value of guest-exec.
type ExecResult struct {
	Output    string `json:"output"`
	Status    int    `json:"status"`
	Truncated bool   `json:"truncated"`
}

// Exec is guest-exec: one shell command line, its output and exit status.
func (c *Client) Exec(ctx context.Context, cmd string) (ExecResult, error) {
	var r ExecResult
	err := c.Call(ctx, "guest-exec", map[string]string{"cmd": cmd}, &r)
	return r, err
}

// GuestCall is guest-call: the guest calls the function at addr (which
// must lie in the patch area) with arg and returns its return value. The
// livepatch package runs patch callbacks this way.
func (c *Client) GuestCall(ctx context.Context, addr, arg uint64) (uint64, error) {
	var r struct {
		Value uint64 `json:"value"`
	}
	err := c.Call(ctx, "guest-call", map[string]uint64{"addr": addr, "arg": arg}, &r)
	return r.Value, err
}

// SysfsReply answers a sysfs-write event: errno 0 for success, else a
// positive Linux errno that the guest's write() returns.
func (c *Client) SysfsReply(id uint64, errno int) error {
	if errno < 0 || errno > 4095 {
		return errorf("sysfs-reply", ErrInvalid, "errno %d", errno)
	}
	return c.Notify("sysfs-reply", map[string]any{"id": id, "errno": errno})
}

// ParseSysfsWrite decodes the data of a "sysfs-write" event.
func ParseSysfsWrite(ev Event) (SysfsWrite, error) {
	var w SysfsWrite
	if ev.Name != "sysfs-write" {
		return w, errorf("event", ErrInvalid, "event %q is not sysfs-write", ev.Name)
	}
	if err := json.Unmarshal(ev.Data, &w); err != nil {
		return w, &Error{Op: "event", Kind: ErrProtocol, Detail: "sysfs-write data", Err: err}
	}
	if w.Path == "" || w.ID == 0 {
		return w, errorf("event", ErrProtocol, "sysfs-write without path or id")
	}
	return w, nil
}
