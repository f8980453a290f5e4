package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"klp-kvm/internal/poll"
)

// fakeGuest is the guest end of the agent channel: it reads request lines
// and answers through handle, which may write anything (garbage included).
type fakeGuest struct {
	toGuest   *io.PipeReader
	fromHost  *io.PipeWriter
	toHost    *io.PipeWriter
	fromGuest *io.PipeReader
	mu        sync.Mutex
	seen      []map[string]any
}

type pipeRW struct {
	r io.Reader
	w io.Writer
	c []io.Closer
}

func (p *pipeRW) Read(b []byte) (int, error)  { return p.r.Read(b) }
func (p *pipeRW) Write(b []byte) (int, error) { return p.w.Write(b) }
func (p *pipeRW) Close() error {
	for _, c := range p.c {
		c.Close()
	}
	return nil
}

// newFake starts a fake guest; handle gets each request and the writer to the host.
func newFake(t *testing.T, handle func(req map[string]any, w io.Writer)) (*fakeGuest, *pipeRW) {
	g := &fakeGuest{}
	g.toGuest, g.fromHost = io.Pipe()
	g.fromGuest, g.toHost = io.Pipe()
	host := &pipeRW{r: g.fromGuest, w: g.fromHost, c: []io.Closer{g.fromGuest, g.fromHost}}
	go func() {
		sc := bufio.NewScanner(g.toGuest)
		sc.Buffer(make([]byte, 1<<16), 1<<20)
		for sc.Scan() {
			var req map[string]any
			if err := json.Unmarshal(sc.Bytes(), &req); err != nil {
				fmt.Fprintf(g.toHost, `{"error":{"class":"GenericError","desc":"JSON parse error"}}`+"\n")
				continue
			}
			g.mu.Lock()
			g.seen = append(g.seen, req)
			g.mu.Unlock()
			handle(req, g.toHost)
		}
	}()
	t.Cleanup(func() { host.Close(); g.toHost.Close(); g.toGuest.Close() })
	return g, host
}

func sendReturn(w io.Writer, req map[string]any, ret string) {
	fmt.Fprintf(w, `{"return":%s,"id":%v}`+"\n", ret, idOf(req))
}

func idOf(req map[string]any) string {
	b, _ := json.Marshal(req["id"])
	return string(b)
}

func arg(req map[string]any, k string) string {
	a, _ := req["arguments"].(map[string]any)
	s, _ := a[k].(string)
	return s
}

// standard answers like the guest's agent
func standard(req map[string]any, w io.Writer) {
	switch req["execute"] {
	case "guest-ping":
		sendReturn(w, req, "{}")
	case "guest-sync":
		a := req["arguments"].(map[string]any)
		sendReturn(w, req, fmt.Sprintf("%.0f", a["id"].(float64)))
	case "guest-call":
		a := req["arguments"].(map[string]any)
		addr := a["addr"].(float64)
		if addr < 0xffffffffa0000000 {
			fmt.Fprintf(w, `{"error":{"class":"GenericError","desc":"outside","errno":14},"id":%s}`+"\n", idOf(req))
			return
		}
		sendReturn(w, req, fmt.Sprintf(`{"value":%.0f}`, a["arg"].(float64)+1))
	case "guest-info":
		sendReturn(w, req, `{"version":"v","cpus":2,"uptime_ms":5,"tasks":9,"supported_commands":["guest-ping"]}`)
	case "guest-exec":
		out, _ := json.Marshal("ran " + arg(req, "cmd") + "\n")
		sendReturn(w, req, fmt.Sprintf(`{"output":%s,"status":0}`, out))
	case "guest-file-read":
		if arg(req, "path") == "/proc/cmdline" {
			sendReturn(w, req, `{"content":"console=ttyS0\n","count":14,"truncated":false}`)
			return
		}
		fmt.Fprintf(w, `{"error":{"class":"GenericError","desc":"%s: No such file or directory","errno":2,"errno_name":"ENOENT"},"id":%s}`+"\n",
			arg(req, "path"), idOf(req))
	default:
		fmt.Fprintf(w, `{"error":{"class":"CommandNotFound","desc":"The command %s has not been found"},"id":%s}`+"\n",
			req["execute"], idOf(req))
	}
}

func TestCommands(t *testing.T) {
	_, host := newFake(t, standard)
	c := New(host, Options{Timeout: 2 * time.Second})
	defer c.Close()
	ctx := context.Background()
	if err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	in, err := c.Info(ctx)
	if err != nil || in.CPUs != 2 || in.Tasks != 9 || in.Version != "v" {
		t.Fatalf("info %+v %v", in, err)
	}
	r, err := c.Exec(ctx, "ps")
	if err != nil || r.Output != "ran ps\n" || r.Status != 0 {
		t.Fatalf("exec %+v %v", r, err)
	}
	s, trunc, err := c.FileRead(ctx, "/proc/cmdline")
	if err != nil || s != "console=ttyS0\n" || trunc {
		t.Fatalf("file-read %q %v %v", s, trunc, err)
	}
	_, _, err = c.FileRead(ctx, "/nope")
	var ae *Error
	if !errors.Is(err, ErrGuest) || !errors.As(err, &ae) || ae.Errno != 2 || ae.ErrnoName != "ENOENT" || !strings.Contains(ae.Detail, "No such file") ||
		ae.Op != "guest-file-read" {
		t.Fatalf("file-read /nope: %v", err)
	}
	err = c.Call(ctx, "guest-bogus", nil, nil)
	if !errors.As(err, &ae) || ae.Class != "CommandNotFound" {
		t.Fatalf("unknown command: %v", err)
	}
	if v, err := c.GuestCall(ctx, 0xffffffffa0001000, 41); err != nil || v != 42 {
		t.Fatalf("guest-call: %d %v", v, err)
	}
	if _, err := c.GuestCall(ctx, 0xffffffff81000000, 1); !errors.As(err, &ae) || ae.Errno != 14 {
		t.Fatalf("guest-call outside the patch area: %v", err)
	}
	if st := c.Stats(); st.Requests != 9 || st.Replies != 9 || st.Garbage != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestEventsAndSysfsReply(t *testing.T) {
	var g *fakeGuest
	replied := make(chan map[string]any, 1)
	g, host := newFake(t, func(req map[string]any, w io.Writer) {
		switch req["execute"] {
		case "guest-file-write":
			// the guest raises an event and answers the request only
			// after the host has replied to the event, as a sysfs write does
			fmt.Fprintf(w, `{"event":"sysfs-write","data":{"path":%q,"value":"1","id":7}}`+"\n", arg(req, "path"))
			go func() {
				r := <-replied
				a := r["arguments"].(map[string]any)
				if a["errno"].(float64) != 0 {
					fmt.Fprintf(w, `{"error":{"class":"GenericError","desc":"write error","errno":%v},"id":%s}`+"\n", a["errno"], idOf(req))
					return
				}
				sendReturn(w, req, `{"count":1}`)
			}()
		case "sysfs-reply":
			replied <- req
		default:
			standard(req, w)
		}
	})
	_ = g
	var c *Client
	var events []SysfsWrite
	var mu sync.Mutex
	c = New(host, Options{Timeout: 2 * time.Second, OnEvent: func(ev Event) {
		w, err := ParseSysfsWrite(ev)
		if err != nil {
			t.Errorf("event: %v", err)
			return
		}
		mu.Lock()
		events = append(events, w)
		mu.Unlock()
		errno := 0
		if strings.Contains(w.Path, "busy") {
			errno = 16
		}
		if err := c.SysfsReply(w.ID, errno); err != nil {
			t.Errorf("reply: %v", err)
		}
	}})
	defer c.Close()
	if err := c.FileWrite(context.Background(), "/sys/kernel/livepatch/p/enabled", "1"); err != nil {
		t.Fatal(err)
	}
	err := c.FileWrite(context.Background(), "/sys/kernel/livepatch/busy/enabled", "1")
	var ae *Error
	if !errors.As(err, &ae) || ae.Errno != 16 {
		t.Fatalf("busy write: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(events) != 2 || events[0].Path != "/sys/kernel/livepatch/p/enabled" || events[0].Value != "1" || events[0].ID != 7 {
		t.Fatalf("events %+v", events)
	}
	if err := c.SysfsReply(1, -1); !errors.Is(err, ErrInvalid) {
		t.Fatalf("bad errno accepted: %v", err)
	}
}

// TestGarbageFromGuest: malformed, huge, unexpected lines are skipped and
// the next real reply still arrives.
func TestGarbageFromGuest(t *testing.T) {
	_, host := newFake(t, func(req map[string]any, w io.Writer) {
		io.WriteString(w, "not json at all\n")
		io.WriteString(w, "{\"return\": \n")
		io.WriteString(w, strings.Repeat("A", 3<<20)+"\n")
		io.WriteString(w, "\x00\xff\xfe\n\n\r\n")
		io.WriteString(w, `{"return":{},"id":999999}`+"\n")                     // nobody asked
		io.WriteString(w, `{"error":{"class":"GenericError","desc":"x"}}`+"\n") // id-less
		io.WriteString(w, `{"neither":1}`+"\n")
		io.WriteString(w, `{"error":"not an object","id":1}`+"\n")
		standard(req, w)
	})
	var garbage int
	var mu sync.Mutex
	c := New(host, Options{Timeout: 5 * time.Second, MaxLine: 1 << 20, OnGarbage: func([]byte, error) {
		mu.Lock()
		garbage++
		mu.Unlock()
	}})
	defer c.Close()
	if err := c.Ping(context.Background()); err != nil {
		t.Fatal(err)
	}
	st := c.Stats()
	mu.Lock()
	defer mu.Unlock()
	if st.Garbage != 6 || garbage != 6 || st.Unmatched != 2 {
		t.Fatalf("stats %+v (callback saw %d)", st, garbage)
	}
}

func TestSilentGuestTimesOut(t *testing.T) {
	release := make(chan struct{})
	var once sync.Once
	_, host := newFake(t, func(req map[string]any, w io.Writer) {
		if req["execute"] == "guest-exec" && arg(req, "cmd") == "slow" {
			go func() { <-release; sendReturn(w, req, `{"output":"late","status":0}`) }()
			return
		}
		standard(req, w)
	})
	c := New(host, Options{Timeout: 100 * time.Millisecond})
	defer c.Close()
	start := time.Now()
	_, err := c.Exec(context.Background(), "slow")
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("want timeout, got %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("timeout took %v", d)
	}
	// The late reply must have arrived before the next request, or the
	// check below would pass without testing anything.
	before := c.Stats()
	once.Do(func() { close(release) })
	poll.Until(t, "the late reply to be read", func() bool { return c.Stats().Replies != before.Replies })
	r, err := c.Exec(context.Background(), "ps")
	if err != nil || r.Output != "ran ps\n" {
		t.Fatalf("after timeout: %+v %v (the late reply must not be taken for this one)", r, err)
	}
	if st := c.Stats(); st.Unmatched != before.Unmatched+1 || st.Replies != before.Replies+2 {
		t.Fatalf("stats %+v after a late reply and one more call (before: %+v): want it counted as unmatched", st, before)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := c.Ping(ctx); !errors.Is(err, ErrTimeout) {
		t.Fatalf("cancelled context: %v", err)
	}
}

func TestClosedAndTooLarge(t *testing.T) {
	_, host := newFake(t, standard)
	c := New(host, Options{Timeout: time.Second})
	if err := c.Call(context.Background(), "guest-exec", map[string]string{"cmd": strings.Repeat("x", 9000)}, nil); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("too large: %v", err)
	}
	if err := c.Call(context.Background(), "", nil, nil); !errors.Is(err, ErrInvalid) {
		t.Fatalf("empty command: %v", err)
	}
	c.Close()
	<-c.done
	if err := c.Ping(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("after close: %v", err)
	}
}

// FuzzGuestOutput: arbitrary guest output never panics the client, and a
// well-formed reply after it is still matched.
func FuzzGuestOutput(f *testing.F) {
	f.Add([]byte("garbage\n"))
	f.Add([]byte(`{"event":"sysfs-write","data":{"path":1}}` + "\n"))
	f.Add([]byte(`{"return":[1,2,{"id":3}],"id":-1}` + "\n" + `{"error":{"class":5},"id":"x"}` + "\n"))
	f.Add([]byte("{\"event\":null}\n{\"return\":null}\n"))
	f.Fuzz(func(t *testing.T, junk []byte) {
		_, host := newFake(t, func(req map[string]any, w io.Writer) {
			w.Write(junk)
			w.Write([]byte("\n"))
			standard(req, w)
		})
		c := New(host, Options{Timeout: 2 * time.Second, OnEvent: func(ev Event) { ParseSysfsWrite(ev) }})
		defer c.Close()
		// junk that happens to be a reply with the ping's id is a legitimate answer
		if err := c.Ping(context.Background()); err != nil && !errors.Is(err, ErrGuest) {
			t.Fatalf("ping after %q: %v", junk, err)
		}
	})
}
