package api

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"

	"klp-kvm/kvm"
	"klp-kvm/kvm/agent"
	"klp-kvm/livepatch"
)

// fakeMachine is a Machine without a VMM: it counts pauses.
type fakeMachine struct {
	mu      sync.Mutex
	depth   int
	stopped bool
}

func (m *fakeMachine) Info() kvm.Info {
	m.mu.Lock()
	defer m.mu.Unlock()
	return kvm.Info{Engine: "fake", MemMiB: 1, Paused: m.depth > 0, VCPUs: []kvm.VCPUInfo{{ID: 0, State: "running"}}}
}

func (m *fakeMachine) Pause() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.depth > 100 {
		return errors.New("pause: nested too deep")
	}
	m.depth++
	return nil
}

func (m *fakeMachine) Resume() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.depth == 0 {
		return errors.New("resume: not paused")
	}
	m.depth--
	return nil
}

func (m *fakeMachine) Stop() {
	m.mu.Lock()
	m.stopped = true
	m.mu.Unlock()
}

// fakeAgent is an Agent without a guest: exec echoes the command, files
// live in a map, "/fail" paths fail with the guest's ENOENT.
type fakeAgent struct {
	mu    sync.Mutex
	cmds  []string
	files map[string]string
	// With block, Exec waits for it to close (or for its context) after
	// telling started.
	block   chan struct{}
	started chan string
}

func (a *fakeAgent) Info(context.Context) (agent.Info, error) {
	return agent.Info{Version: "fake", CPUs: 1}, nil
}

func (a *fakeAgent) Exec(ctx context.Context, cmd string) (agent.ExecResult, error) {
	a.mu.Lock()
	a.cmds = append(a.cmds, cmd)
	block, started := a.block, a.started
	a.mu.Unlock()
	if block != nil {
		started <- cmd
		select {
		case <-block:
		case <-ctx.Done():
			return agent.ExecResult{}, &agent.Error{Op: "guest-exec", Kind: agent.ErrTimeout, Err: ctx.Err()}
		}
	}
	return agent.ExecResult{Output: cmd + "\n"}, nil
}

func (a *fakeAgent) FileRead(_ context.Context, path string) (string, bool, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if strings.HasPrefix(path, "/fail") {
		return "", false, &agent.Error{Op: "guest-file-read", Kind: agent.ErrGuest, Desc: "no such file", Errno: 2, ErrnoName: "ENOENT"}
	}
	return a.files[path], false, nil
}

func (a *fakeAgent) FileWrite(_ context.Context, path, data string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if strings.HasPrefix(path, "/fail") {
		return &agent.Error{Op: "guest-file-write", Kind: agent.ErrGuest, Desc: "no such file", Errno: 2, ErrnoName: "ENOENT"}
	}
	if a.files == nil {
		a.files = map[string]string{}
	}
	a.files[path] = data
	return nil
}

// fakeAPI is the whole API over fakes: a fake machine and agent, and a
// livepatch manager over a one-vCPU fake guest, behind Harden.
type fakeAPI struct {
	h     http.Handler
	mux   *http.ServeMux
	m     *fakeMachine
	agent *fakeAgent
	lm    *livepatch.Manager
}

func newFakeAPI(t testing.TB) *fakeAPI {
	t.Helper()
	f := &fakeAPI{mux: http.NewServeMux(), m: &fakeMachine{}, agent: &fakeAgent{}}
	MachineRoutes(f.mux, f.m)
	GuestRoutes(f.mux, f.agent)
	f.lm = newLivepatchManager(t)
	LivepatchRoutes(f.mux, f.lm, f.m)
	f.h = Harden(f.mux)
	return f
}
