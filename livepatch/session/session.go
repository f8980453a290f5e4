// Package session wires a running guest together for live patching: a
// kvm.Machine booted with the embedded guest kernel, its guest agent, and
// a livepatch.Manager whose sysfs writes the agent forwards. `klp-kvm
// demo`, the end-to-end tests and the benchmarks use it; `klp-kvm run`
// does the same wiring in its own way around the API server.
package session

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"syscall"
	"time"

	"klp-kvm/guestkernel"
	"klp-kvm/guestkernel/layout"
	"klp-kvm/kvm"
	"klp-kvm/kvm/agent"
	"klp-kvm/livepatch"
)

// Config describes the guest to boot.
type Config struct {
	Engine      string // auto, kvm or emu
	CPUs        int
	MemMiB      int
	Cmdline     string
	Console     io.Writer     // COM1; nil discards
	BootTimeout time.Duration // until the agent answers; default 120 s
}

// Session is a booted guest, its agent and its livepatch manager.
type Session struct {
	Machine   *kvm.Machine
	Agent     *agent.Client
	Manager   *livepatch.Manager
	EngineWhy string
	Boot      time.Duration // from Run to the first agent answer

	mgr    atomic.Pointer[livepatch.Manager]
	runErr chan error
}

// Start boots the guest and waits for its agent.
func Start(cfg Config) (*Session, error) {
	if cfg.Engine == "" {
		cfg.Engine = "auto"
	}
	if cfg.BootTimeout <= 0 {
		cfg.BootTimeout = 120 * time.Second
	}
	eng, why, err := kvm.SelectEngine(cfg.Engine)
	if err != nil {
		return nil, err
	}
	m, err := kvm.New(kvm.Config{Engine: eng, CPUs: cfg.CPUs, MemMiB: cfg.MemMiB, Kernel: guestkernel.Vmlinux(),
		Cmdline: cfg.Cmdline, Console: cfg.Console})
	if err != nil {
		return nil, err
	}
	s := &Session{Machine: m, EngineWhy: why, runErr: make(chan error, 1)}
	s.Agent = agent.New(m.AgentPort(), agent.Options{OnEvent: s.event})
	t0 := time.Now()
	go func() {
		code, err := m.Run()
		if err == nil && code != 0 {
			err = fmt.Errorf("guest powered off with code %d", code)
		}
		s.runErr <- err
	}()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err = s.Agent.Ping(ctx)
		cancel()
		if err == nil {
			break
		}
		select {
		case rerr := <-s.runErr:
			s.runErr <- rerr
			s.Close()
			return nil, fmt.Errorf("guest stopped while booting: %v", rerr)
		default:
		}
		if time.Since(t0) > cfg.BootTimeout {
			s.Close()
			return nil, fmt.Errorf("guest agent did not answer within %v: %w", cfg.BootTimeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	s.Boot = time.Since(t0)
	lm, err := livepatch.New(livepatch.Config{Guest: m, Vmlinux: guestkernel.Vmlinux(), PatchArea: layout.PatchAreaVirt,
		PatchAreaSize: m.Layout().PatchAreaSize, Callbacks: Callbacks(s.Agent)})
	if err != nil {
		s.Close()
		return nil, err
	}
	s.Manager = lm
	s.mgr.Store(lm)
	return s, nil
}

// Callbacks runs livepatch callbacks through the agent's guest-call.
// Callbacks return int: the low 32 bits of RAX, sign-extended.
func Callbacks(c *agent.Client) livepatch.CallbackRunner {
	return func(ctx context.Context, addr, arg uint64) (int64, error) {
		v, err := c.GuestCall(ctx, addr, arg)
		return int64(int32(uint32(v))), err
	}
}

// event answers the guest's sysfs writes with the manager's errno.
func (s *Session) event(ev agent.Event) {
	w, err := agent.ParseSysfsWrite(ev)
	if err != nil {
		return
	}
	errno := syscall.ENODEV
	if lm := s.mgr.Load(); lm != nil {
		errno = 0
		if err := lm.SysfsWrite(w.Path, w.Value); err != nil {
			errno = syscall.EIO
			errors.As(err, &errno)
		}
	}
	_ = s.Agent.SysfsReply(w.ID, int(errno))
}

// Exec runs a guest shell command and returns its output.
func (s *Session) Exec(cmd string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := s.Agent.Exec(ctx, cmd)
	if err != nil {
		return "", err
	}
	if r.Status != 0 {
		return r.Output, fmt.Errorf("guest command %q exited with %d: %s", cmd, r.Status, r.Output)
	}
	return r.Output, nil
}

// Close stops the guest and releases everything.
func (s *Session) Close() error {
	s.Machine.Stop()
	var err error
	select {
	case err = <-s.runErr:
	case <-time.After(10 * time.Second):
		err = errors.New("guest did not stop within 10 s")
	}
	s.Agent.Close()
	s.Machine.Close()
	return err
}
