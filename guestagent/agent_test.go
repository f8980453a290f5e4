package guestagent

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"klp-kvm/kvm/agent"
)

type pipeRW struct {
	io.Reader
	io.Writer
	closers []io.Closer
}

func (p *pipeRW) Close() error {
	for _, c := range p.closers {
		c.Close()
	}
	return nil
}

// start runs an Agent on a pipe pair and returns the host's client on the
// other end, plus the raw host-side ends for tests that write bytes.
func start(t *testing.T, opts Options) (*agent.Client, io.Writer, *bufio.Reader) {
	t.Helper()
	toGuestR, toGuestW := io.Pipe()
	toHostR, toHostW := io.Pipe()
	a := New(opts)
	done := make(chan error, 1)
	go func() { done <- a.Serve(context.Background(), toGuestR, toHostW); toHostW.Close() }()
	t.Cleanup(func() {
		toGuestW.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return nil, toGuestW, bufio.NewReader(toHostR)
}

func client(t testing.TB, opts Options) *agent.Client {
	toGuestR, toGuestW := io.Pipe()
	toHostR, toHostW := io.Pipe()
	a := New(opts)
	done := make(chan error, 1)
	go func() { done <- a.Serve(context.Background(), toGuestR, toHostW); toHostW.Close() }()
	c := agent.New(&pipeRW{Reader: toHostR, Writer: toGuestW, closers: []io.Closer{toGuestW}},
		agent.Options{Timeout: 20 * time.Second})
	t.Cleanup(func() {
		c.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return c
}

func TestClientPingSyncInfo(t *testing.T) {
	c := client(t, Options{})
	ctx := context.Background()
	if err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	in, err := c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(in.Version, " "+Version) || in.CPUs < 1 || in.Tasks < 1 || in.UptimeMS == 0 {
		t.Errorf("info %+v", in)
	}
	if in.Requests != 3 { // ping, sync, info itself
		t.Errorf("requests %d, want 3", in.Requests)
	}
	for _, want := range []string{"guest-exec", "guest-file-read", "guest-ping"} {
		found := false
		for _, s := range in.SupportedCommands {
			found = found || s == want
		}
		if !found {
			t.Errorf("supported_commands %v lacks %s", in.SupportedCommands, want)
		}
	}
}

func TestClientFiles(t *testing.T) {
	c := client(t, Options{})
	ctx := context.Background()
	p := filepath.Join(t.TempDir(), "f")
	if err := c.FileWrite(ctx, p, "hello\n\x01\"quoted\""); err != nil {
		t.Fatal(err)
	}
	got, trunc, err := c.FileRead(ctx, p)
	if err != nil || trunc || got != "hello\n\x01\"quoted\"" {
		t.Fatalf("read back %q %v %v", got, trunc, err)
	}
	big := strings.Repeat("x", FileReadMax+100)
	os.WriteFile(p, []byte(big), 0o644)
	got, trunc, err = c.FileRead(ctx, p)
	if err != nil || !trunc || len(got) != FileReadMax {
		t.Fatalf("big file: %d bytes, truncated %v, %v", len(got), trunc, err)
	}
	_, _, err = c.FileRead(ctx, filepath.Join(t.TempDir(), "missing"))
	if !errors.Is(err, syscall.ENOENT) || !errors.Is(err, agent.ErrGuest) {
		t.Errorf("missing file: %v, want a guest ENOENT", err)
	}
	if err := c.FileWrite(ctx, filepath.Join(t.TempDir(), "no", "dir"), "x"); !errors.Is(err, syscall.ENOENT) {
		t.Errorf("write into a missing dir: %v", err)
	}
}

func TestClientExec(t *testing.T) {
	c := client(t, Options{})
	ctx := context.Background()
	p := filepath.Join(t.TempDir(), "f")
	os.WriteFile(p, []byte("one\ntwo\nthree\n"), 0o644)
	for _, tc := range []struct {
		cmd, out string
		status   int
	}{
		{"cat " + p, "one\ntwo\nthree\n", 0},
		{"echo hi | cat", "hi\n", 0},
		{"cat " + p + " | grep -n t | head -n 1", "2:two\n", 0},
		{"exit 3", "", 3},
		{"false; echo $?", "1\n", 0},
		{"grep nothing " + p, "", 1},
		{"echo err >&2; echo out", "err\nout\n", 0},
		{"for i in 1 2 3; do echo $i; done | head -2", "1\n2\n", 0},
		{"if then", "", 2},
	} {
		r, err := c.Exec(ctx, tc.cmd)
		if err != nil {
			t.Fatalf("%q: %v", tc.cmd, err)
		}
		if r.Status != tc.status || (tc.out != "" || tc.status == 0) && r.Output != tc.out {
			t.Errorf("%q: status %d output %q; want %d %q", tc.cmd, r.Status, r.Output, tc.status, tc.out)
		}
	}
	r, err := c.Exec(ctx, "cat "+p+" "+p+" "+p+"; i=0; while [ $i -lt 4000 ]; do echo 0123456789; i=$((i+1)); done")
	if err != nil || !r.Truncated || len(r.Output) != ExecOutputMax || !strings.HasPrefix(r.Output, "one\n") {
		t.Errorf("big output: %d bytes truncated %v %v", len(r.Output), r.Truncated, err)
	}
}

// A long guest-exec must not delay a ping: requests run side by side.
func TestClientExecAlongsidePing(t *testing.T) {
	c := client(t, Options{})
	ctx := context.Background()
	done := make(chan agent.ExecResult, 1)
	go func() {
		r, err := c.Exec(ctx, "sleep 3; echo slept")
		if err != nil {
			t.Error(err)
		}
		done <- r
	}()
	time.Sleep(100 * time.Millisecond) // let the exec start first
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := c.Ping(pctx); err != nil {
		t.Fatalf("ping behind a 3 s exec: %v", err)
	}
	select {
	case <-done:
		t.Fatal("the exec finished before the ping was answered")
	default:
	}
	if r := <-done; r.Output != "slept\n" {
		t.Errorf("exec output %q", r.Output)
	}
}

func TestExecTimeout(t *testing.T) {
	c := client(t, Options{ExecTimeout: 200 * time.Millisecond})
	r, err := c.Exec(context.Background(), "echo before; sleep 30; echo later")
	if err != nil {
		t.Fatal(err)
	}
	if r.Status != 124 || !strings.HasPrefix(r.Output, "before\n") || strings.Contains(r.Output, "later") ||
		!strings.Contains(r.Output, "timed out") {
		t.Errorf("timed-out exec: %+v", r)
	}
}

func TestClientErrors(t *testing.T) {
	c := client(t, Options{})
	ctx := context.Background()
	err := c.Call(ctx, "guest-frobnicate", nil, nil)
	var ae *agent.Error
	if !errors.As(err, &ae) || ae.Class != "CommandNotFound" {
		t.Errorf("unknown command: %v", err)
	}
	_, err = c.GuestCall(ctx, 0x1000, 0)
	if !errors.Is(err, syscall.EOPNOTSUPP) {
		t.Errorf("guest-call: %v", err)
	}
	if err := c.Call(ctx, "guest-exec", map[string]int{"cmd": 1}, nil); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("bad arguments: %v", err)
	}
	if err := c.Call(ctx, "guest-shutdown", nil, nil); !errors.Is(err, syscall.EPERM) {
		t.Errorf("shutdown without a Shutdown hook: %v", err)
	}
}

func TestShutdownAfterReply(t *testing.T) {
	got := make(chan string, 1)
	c := client(t, Options{Shutdown: func(m string) { got <- m }})
	if err := c.Call(context.Background(), "guest-shutdown", map[string]string{"mode": "reboot"}, nil); err != nil {
		t.Fatal(err)
	}
	if m := <-got; m != "reboot" {
		t.Errorf("mode %q", m)
	}
}

type wireReply struct {
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
		Errno int    `json:"errno"`
	} `json:"error"`
	ID json.RawMessage `json:"id"`
}

// Raw lines: oversize, malformed, not an object, ids echoed verbatim.
func TestRawLines(t *testing.T) {
	_, w, r := start(t, Options{})
	read := func() wireReply {
		t.Helper()
		l, err := r.ReadBytes('\n')
		if err != nil {
			t.Fatal(err)
		}
		var rep wireReply
		if err := json.Unmarshal(l, &rep); err != nil {
			t.Fatalf("reply %q: %v", l, err)
		}
		return rep
	}
	for _, tc := range []struct {
		line  string
		errno syscall.Errno
		id    string
	}{
		{`{"execute":"guest-ping","id":"abc"}`, 0, `"abc"`},
		{`{"execute":"guest-ping","id":-7}`, 0, `-7`},
		{strings.Repeat("x", 20000), syscall.E2BIG, ""},
		{`{"execute":`, syscall.EINVAL, ""},
		{`[1,2]`, syscall.EINVAL, ""},
		{`null`, syscall.EINVAL, ""},
		{`{"execute":"guest-ping","arguments":[1],"id":5}`, syscall.EINVAL, "5"},
		{`{"arguments":{},"id":6}`, syscall.EINVAL, "6"},
		{`{"execute":"guest-sync","arguments":{"id":"x"},"id":{"obj":1}}`, syscall.EINVAL, ""},
		{"{\"execute\":\"guest-ping\",\"id\":8}\r", 0, "8"},
	} {
		io.WriteString(w, tc.line+"\n")
		rep := read()
		if tc.errno == 0 && (rep.Error != nil || rep.Return == nil) ||
			tc.errno != 0 && (rep.Error == nil || syscall.Errno(rep.Error.Errno) != tc.errno) {
			t.Errorf("%.40q: reply %+v, want errno %v", tc.line, rep, tc.errno)
		}
		if string(rep.ID) != tc.id {
			t.Errorf("%.40q: id %s, want %q", tc.line, rep.ID, tc.id)
		}
	}
	// the channel is still in step after all that
	io.WriteString(w, `{"execute":"guest-sync","arguments":{"id":42},"id":1}`+"\n")
	if rep := read(); string(rep.Return) != "42" {
		t.Errorf("sync after garbage: %+v", rep)
	}
}

func TestBusy(t *testing.T) {
	_, w, r := start(t, Options{MaxInFlight: 1})
	io.WriteString(w, `{"execute":"guest-exec","arguments":{"cmd":"sleep 1"},"id":1}`+"\n")
	io.WriteString(w, `{"execute":"guest-ping","id":2}`+"\n")
	var reps []wireReply
	for range 2 {
		l, err := r.ReadBytes('\n')
		if err != nil {
			t.Fatal(err)
		}
		var rep wireReply
		json.Unmarshal(l, &rep)
		reps = append(reps, rep)
	}
	if string(reps[0].ID) != "2" || reps[0].Error == nil || syscall.Errno(reps[0].Error.Errno) != syscall.EBUSY {
		t.Errorf("second request with one slot: %+v, want EBUSY for id 2", reps[0])
	}
	if string(reps[1].ID) != "1" || reps[1].Error != nil {
		t.Errorf("first request: %+v", reps[1])
	}
}

func TestReadyEvent(t *testing.T) {
	toGuestR, toGuestW := io.Pipe()
	toHostR, toHostW := io.Pipe()
	events := make(chan agent.Event, 4)
	c := agent.New(&pipeRW{Reader: toHostR, Writer: toGuestW, closers: []io.Closer{toGuestW}},
		agent.Options{OnEvent: func(ev agent.Event) { events <- ev }})
	done := make(chan error, 1)
	go func() {
		done <- New(Options{Ready: true}).Serve(context.Background(), toGuestR, toHostW)
		toHostW.Close()
	}()
	defer func() { c.Close(); <-done }()
	ev := <-events
	var data struct{ Version string }
	if err := json.Unmarshal(ev.Data, &data); err != nil || ev.Name != "agent-ready" ||
		!strings.HasSuffix(data.Version, " "+Version) {
		t.Errorf("event %s %s (%v)", ev.Name, ev.Data, err)
	}
	if err := c.Ping(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// An in-process applet blocked where ctx cannot reach it (opening a FIFO
// nobody writes) must not hold the reply past the timeout, nor stop
// the agent answering.
func TestExecTimeoutBlockedApplet(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Skip(err)
	}
	c := client(t, Options{ExecTimeout: 300 * time.Millisecond})
	r, err := c.Exec(context.Background(), "echo start; cat "+fifo)
	if err != nil {
		t.Fatal(err)
	}
	if r.Status != 124 || !strings.HasPrefix(r.Output, "start\n") {
		t.Errorf("blocked applet: %+v", r)
	}
	if err := c.Ping(context.Background()); err != nil {
		t.Fatal(err)
	}
	// release the abandoned cat so the test leaves no blocked goroutine
	if f, err := os.OpenFile(fifo, os.O_WRONLY, 0); err == nil {
		f.Close()
	}
}
