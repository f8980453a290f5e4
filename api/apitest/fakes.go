package apitest

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"

	"klp-kvm/api"
	"klp-kvm/kvm"
	"klp-kvm/kvm/agent"
	"klp-kvm/livepatch"
)

// Machine is an api.Machine without a VMM: one vCPU, pauses counted.
type Machine struct {
	mu      sync.Mutex
	depth   int
	stopped bool
}

// Info is a one-vCPU machine of engine "fake".
func (m *Machine) Info() kvm.Info {
	m.mu.Lock()
	defer m.mu.Unlock()
	return kvm.Info{Engine: "fake", MemMiB: 1, Paused: m.depth > 0, VCPUs: []kvm.VCPUInfo{{ID: 0, State: "running"}}}
}

// Pause nests, up to 100 deep.
func (m *Machine) Pause() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.depth > 100 {
		return errors.New("pause: nested too deep")
	}
	m.depth++
	return nil
}

// Resume undoes one Pause.
func (m *Machine) Resume() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.depth == 0 {
		return errors.New("resume: not paused")
	}
	m.depth--
	return nil
}

// Stop records that it was asked to stop.
func (m *Machine) Stop() {
	m.mu.Lock()
	m.stopped = true
	m.mu.Unlock()
}

// Reset undoes pauses and stops.
func (m *Machine) Reset() {
	m.mu.Lock()
	m.depth, m.stopped = 0, false
	m.mu.Unlock()
}

// Agent is an api.Agent without a guest: Exec answers "ran CMD" (and
// status 1 for "false"), files live in a map, and a missing file is the
// guest's ENOENT.
type Agent struct {
	mu    sync.Mutex
	cmds  []string
	files map[string]string
	// With Block set, Exec tells Started its command and waits for Block
	// to close (or for its context). Set both before serving.
	Block   chan struct{}
	Started chan string
}

// Info is a guest-info of version "fake".
func (a *Agent) Info(context.Context) (agent.Info, error) {
	return agent.Info{Version: "fake", CPUs: 1}, nil
}

// Exec records cmd and answers "ran CMD\n".
func (a *Agent) Exec(ctx context.Context, cmd string) (agent.ExecResult, error) {
	a.mu.Lock()
	a.cmds = append(a.cmds, cmd)
	a.mu.Unlock()
	if a.Block != nil {
		a.Started <- cmd
		select {
		case <-a.Block:
		case <-ctx.Done():
			return agent.ExecResult{}, &agent.Error{Op: "guest-exec", Kind: agent.ErrTimeout, Err: ctx.Err()}
		}
	}
	if cmd == "false" {
		return agent.ExecResult{Status: 1}, nil
	}
	return agent.ExecResult{Output: "ran " + cmd + "\n"}, nil
}

// FileRead reads a file FileWrite wrote; any other is the guest's ENOENT.
func (a *Agent) FileRead(_ context.Context, path string) (string, bool, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	v, ok := a.files[path]
	if !ok {
		return "", false, &agent.Error{Op: "guest-file-read", Kind: agent.ErrGuest, Class: "GenericError",
			Detail: "open " + path, Errno: syscall.ENOENT, ErrnoName: "ENOENT"}
	}
	return v, false, nil
}

// FileWrite keeps data as path's content; a path under /fail is the
// guest's EACCES.
func (a *Agent) FileWrite(_ context.Context, path, data string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if strings.HasPrefix(path, "/fail") {
		return &agent.Error{Op: "guest-file-write", Kind: agent.ErrGuest, Class: "GenericError",
			Detail: "open " + path, Errno: syscall.EACCES, ErrnoName: "EACCES"}
	}
	if a.files == nil {
		a.files = map[string]string{}
	}
	a.files[path] = data
	return nil
}

// Cmds is what Exec was asked to run, in order.
func (a *Agent) Cmds() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.cmds...)
}

// File is path's content, and whether it was written.
func (a *Agent) File(path string) (string, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	v, ok := a.files[path]
	return v, ok
}

// Reset forgets the commands and the files.
func (a *Agent) Reset() {
	a.mu.Lock()
	a.cmds, a.files = nil, nil
	a.mu.Unlock()
}

// API is the whole control API over fakes: every route of api.Routes on
// Mux (Machine, Agent, and a livepatch Manager over NewManager(tb, 1)),
// and Handler, the Mux behind api.Harden, as api.NewServer serves it.
type API struct {
	Handler http.Handler
	Mux     *http.ServeMux
	Machine *Machine
	Agent   *Agent
	Manager *livepatch.Manager
}

// NewAPI builds an API.
func NewAPI(tb testing.TB) *API {
	tb.Helper()
	f := &API{Mux: http.NewServeMux(), Machine: &Machine{}, Agent: &Agent{}}
	f.Manager, _ = NewManager(tb, 1)
	api.MachineRoutes(f.Mux, f.Machine)
	api.GuestRoutes(f.Mux, f.Agent)
	api.LivepatchRoutes(f.Mux, f.Manager, f.Machine)
	f.Handler = api.Harden(f.Mux)
	return f
}

// Reset undoes what requests did: patches disabled (without force) and
// unregistered, the machine resumed, the agent's log and files cleared.
// It reports false if state remains that it cannot undo (a patch that
// does not disable, or a forced patch's image, retired for good).
func (f *API) Reset() bool {
	st := f.Manager.Status()
	for i := len(st.Patches) - 1; i >= 0; i-- {
		p := st.Patches[i]
		if p.Enabled {
			if _, err := f.Manager.Disable(p.Name, livepatch.Options{}); err != nil {
				return false
			}
		}
		if err := f.Manager.Unregister(p.Name); err != nil {
			return false
		}
	}
	f.Machine.Reset()
	f.Agent.Reset()
	return f.Manager.Status().Retired == 0
}
