package vmm

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"klp-kvm/api"
	"klp-kvm/internal/poll"
	"klp-kvm/kvm"
	"klp-kvm/kvm/agent"
	"klp-kvm/livepatch"
)

// The tree is the layout of klp-kvm's own guest's /sys/kernel/livepatch,
// and a valid agent.Tree.
func TestLivepatchTree(t *testing.T) {
	st := livepatch.Status{
		InTransition: "second",
		Patches: []livepatch.PatchInfo{
			{Patch: livepatch.Patch{Name: "livepatch_sample", Enabled: true, Forced: true, Objects: []*livepatch.Object{
				{Name: "vmlinux", Funcs: []*livepatch.Func{{OldName: "cmdline_proc_show"}, {OldName: "dup", OldSympos: 2}}}}}, StackOrder: 1},
			{Patch: livepatch.Patch{Name: "second", Replace: true, Objects: []*livepatch.Object{{Name: "vmlinux"}}}, StackOrder: 2},
		},
	}
	tr := LivepatchTree(st)
	if err := tr.Check(); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range tr.Dirs {
		got = append(got, d+"/")
	}
	for _, f := range tr.Files {
		got = append(got, fmt.Sprintf("%s %o %q", f.Path, f.Mode, f.Data))
	}
	want := []string{
		"livepatch_sample/", "livepatch_sample/vmlinux/", "livepatch_sample/vmlinux/cmdline_proc_show,1/", "livepatch_sample/vmlinux/dup,2/",
		"second/", "second/vmlinux/",
		`livepatch_sample/enabled 644 "1\n"`, `livepatch_sample/force 200 "1\n"`, `livepatch_sample/replace 444 "0\n"`,
		`livepatch_sample/stack_order 444 "1\n"`, `livepatch_sample/transition 444 "0\n"`, `livepatch_sample/vmlinux/patched 444 "1\n"`,
		`second/enabled 644 "0\n"`, `second/force 200 "0\n"`, `second/replace 444 "1\n"`,
		`second/stack_order 444 "2\n"`, `second/transition 444 "1\n"`, `second/vmlinux/patched 444 "1\n"`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("tree:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if e := LivepatchTree(livepatch.Status{}); len(e.Dirs) != 0 || len(e.Files) != 0 || e.Dirs == nil || e.Files == nil {
		t.Errorf("no patches: %+v, want empty lists", e)
	}
}

// pushes records the trees a treePusher sends.
type pushes struct {
	mu      sync.Mutex
	trees   []agent.Tree
	block   chan struct{} // when set, each push waits for it
	entered chan struct{} // when set, told of each push as it starts
	fail    error
}

func (p *pushes) push(ctx context.Context, t agent.Tree) error {
	if p.entered != nil {
		p.entered <- struct{}{}
	}
	if p.block != nil {
		<-p.block
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.trees = append(p.trees, t)
	return p.fail
}

func (p *pushes) n() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.trees)
}

// Kicks during a push coalesce into one more push of the newest state;
// Flush returns once the pushes asked for before it are made.
func TestTreePusher(t *testing.T) {
	var mu sync.Mutex
	patches := 0
	status := func() livepatch.Status {
		mu.Lock()
		defer mu.Unlock()
		var st livepatch.Status
		for i := 0; i < patches; i++ {
			st.Patches = append(st.Patches, livepatch.PatchInfo{Patch: livepatch.Patch{Name: fmt.Sprintf("p%d", i)}})
		}
		return st
	}
	pu := &pushes{block: make(chan struct{}), entered: make(chan struct{}, 16)}
	var logged []string
	var logMu sync.Mutex
	p := newTreePusher(status, pu.push, func(f string, a ...any) {
		logMu.Lock()
		logged = append(logged, fmt.Sprintf(f, a...))
		logMu.Unlock()
	})
	go p.run()
	defer p.Stop()
	if err := p.Flush(context.Background()); err != nil {
		t.Fatalf("Flush with nothing asked: %v", err)
	}
	p.Kick() // the first push starts and blocks
	<-pu.entered
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	if err := p.Flush(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Flush during a blocked push: %v, want the context's deadline", err)
	}
	cancel()
	mu.Lock()
	patches = 3
	mu.Unlock()
	p.Kick()
	p.Kick()
	p.Kick()
	done := make(chan error, 1)
	go func() { done <- p.Flush(context.Background()) }()
	close(pu.block) // let every push through
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := pu.n(); n != 2 {
		t.Errorf("%d pushes for 4 kicks (1 then 3 during it), want 2", n)
	}
	pu.mu.Lock()
	last := pu.trees[len(pu.trees)-1]
	pu.mu.Unlock()
	if len(last.Dirs) != 3 {
		t.Errorf("the last push has %d patches, want the newest state's 3", len(last.Dirs))
	}
	// a failed push is logged, and still ends the wait
	pu.mu.Lock()
	pu.fail = errors.New("agent gone")
	pu.mu.Unlock()
	p.Kick()
	if err := p.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	logMu.Lock()
	if len(logged) != 1 || !strings.Contains(logged[0], "agent gone") {
		t.Errorf("log %q", logged)
	}
	logMu.Unlock()
	pu.mu.Lock()
	pu.fail = nil
	pu.mu.Unlock()
	// Want without Start (an API operation before its reply): nothing is
	// pushed until a Flush (a guest request) starts it and waits for it;
	// Starts with nothing new wanted push nothing.
	before := pu.n()
	p.Want()
	time.Sleep(20 * time.Millisecond)
	if n := pu.n(); n != before {
		t.Errorf("%d pushes after Want alone, want none", n-before)
	}
	if err := p.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := pu.n(); n != before+1 {
		t.Errorf("%d pushes for Want then Flush, want 1", n-before)
	}
	p.Start()
	p.Start()
	time.Sleep(20 * time.Millisecond)
	if n := pu.n(); n != before+1 {
		t.Errorf("%d pushes after two Starts with nothing wanted, want none more", n-before-1)
	}
}

// hostEnd is the guest's side of an agent client: the lines the host
// sends.
type hostEnd struct {
	io.Reader // nothing from the guest
	io.Writer
}

// linuxVMM builds a Linux guest's VMM that never runs: its agent client
// writes to lines, its tree goes to pu.
func linuxVMM(t *testing.T, events io.Writer) (*VMM, *bufio.Reader, *pushes) {
	t.Helper()
	v, err := New(Config{Engine: "kvm", Kernel: tinyBzImage(), Events: events})
	if errors.Is(err, kvm.ErrConfig) {
		t.Skipf("no kvm engine here: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	toGuestR, toGuestW := io.Pipe()
	silentR, silentW := io.Pipe()
	t.Cleanup(func() { silentW.Close(); toGuestR.Close() })
	v.Agent.Close()
	v.Agent = agent.New(hostEnd{silentR, toGuestW}, agent.Options{})
	pu := &pushes{}
	v.tree = newTreePusher(v.Linux.Status, pu.push, t.Logf)
	go v.tree.run()
	t.Cleanup(v.tree.Stop)
	go v.linuxWriter() // as Start does
	close(v.ready)     // as if the agent had answered
	return v, bufio.NewReader(toGuestR), pu
}

// A Linux guest's sysfs-write event goes through the same handler as
// klp-kvm's own guest's: carried out by linuxlive, answered with the
// errno and its text, logged on the host, and the tree pushed again.
func TestLinuxSysfsEvent(t *testing.T) {
	var events syncBuf
	v, lines, pu := linuxVMM(t, &events)
	for _, c := range []struct {
		path  string
		errno syscall.Errno
	}{
		{agent.LinuxLivepatchRoot + "/livepatch_sample/enabled", syscall.ENOENT},
		{agent.LinuxLivepatchRoot + "/livepatch_sample/force", syscall.EINVAL}, // 0: handled at once, not queued
		{agent.LinuxLivepatchRoot + "/../../sys/kernel/livepatch/p/enabled", syscall.EPERM},
		{"/sys/kernel/livepatch/livepatch_sample/enabled", syscall.EPERM}, // Linux's own: never ours
	} {
		before := pu.n()
		data, _ := json.Marshal(map[string]any{"id": 7, "path": c.path, "value": "0"})
		go v.event(agent.Event{Name: "sysfs-write", Data: data})
		line, err := lines.ReadBytes('\n')
		if err != nil {
			t.Fatal(err)
		}
		var req struct {
			Execute   string `json:"execute"`
			Arguments struct {
				ID    uint64 `json:"id"`
				Errno int    `json:"errno"`
				Desc  string `json:"desc"`
			} `json:"arguments"`
		}
		if err := json.Unmarshal(line, &req); err != nil || req.Execute != "sysfs-reply" || req.Arguments.ID != 7 ||
			syscall.Errno(req.Arguments.Errno) != c.errno || req.Arguments.Desc == "" {
			t.Errorf("%s: reply %s, want sysfs-reply id 7 errno %d with a description", c.path, line, c.errno)
		}
		poll.Until(t, "the tree pushed after the write", func() bool { return pu.n() > before })
	}
	if !strings.Contains(events.String(), `guest sysfs write "`+agent.LinuxLivepatchRoot+`/livepatch_sample/enabled"="0": linuxlive: sysfs write`) {
		t.Errorf("host events: %q", events.String())
	}
	// a restarted agent gets the tree again
	before := pu.n()
	v.event(agent.Event{Name: "agent-ready", Data: json.RawMessage(`{"version":"x"}`)})
	poll.Until(t, "the tree pushed at agent-ready", func() bool { return pu.n() > before })
}

// The API of a Linux guest: `klp-kvm sysfs` finds the root under
// /run/klp-kvm/livepatch, and a file write there is carried out by the
// host and refused with its errno (no guest involved).
func TestLinuxSysfsAPI(t *testing.T) {
	v, _, pu := linuxVMM(t, nil)
	h := v.Handler()
	rec := do(t, h, api.RouteGuestSysfs, nil)
	var info api.SysfsInfo
	if err := json.NewDecoder(rec.Body).Decode(&info); err != nil || rec.Code != http.StatusOK ||
		info.Root != agent.LinuxLivepatchRoot || info.List != "ls -F" {
		t.Errorf("GET /guest/sysfs = %d %+v %v", rec.Code, info, err)
	}
	before := pu.n()
	rec = do(t, h, api.RouteGuestFileWrite, api.FileRequest{Path: agent.LinuxLivepatchRoot + "/nosuch/enabled", Data: "1"})
	var er api.ErrorReply
	json.NewDecoder(rec.Body).Decode(&er)
	if rec.Code != http.StatusConflict || er.Errno != "ENOENT" || !strings.Contains(er.Error, "nosuch") {
		t.Errorf("write of an unknown patch's enabled = %d %+v, want 409 ENOENT", rec.Code, er)
	}
	if pu.n() <= before {
		t.Error("no push after the write (the reply waits for it)")
	}
	// a patch operation pushes the tree too, even when it fails
	before = pu.n()
	if rec := do(t, h, api.Route{Method: "POST", Pattern: "/patches/nosuch/disable"}, nil); rec.Code != http.StatusNotFound {
		t.Errorf("disable of an unknown patch = %d", rec.Code)
	}
	poll.Until(t, "the tree pushed after a patch operation", func() bool { return pu.n() > before })
}

// syncBuf is a bytes.Buffer for concurrent writers.
type syncBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
