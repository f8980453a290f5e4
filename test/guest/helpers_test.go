package guest

import (
	"bytes"
	"context"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"klp-kvm/guestkernel"
	"klp-kvm/kvm"
	"klp-kvm/kvm/agent"
	"klp-kvm/kvm/engine"
)

func engineFromEnv(t testing.TB) engine.Engine {
	t.Helper()
	name := os.Getenv("KLP_KVM_ENGINE")
	if name == "" {
		name = "emu"
	}
	e, why, err := kvm.SelectEngine(name)
	if err != nil {
		if name == "kvm" {
			t.Skipf("engine kvm unavailable: %v", err)
		}
		t.Fatal(err)
	}
	t.Log(why)
	return e
}

// syncBuffer collects console output from the vCPU threads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type guestVM struct {
	t       testing.TB
	m       *kvm.Machine
	console *syncBuffer
	agent   *agent.Client
	events  chan agent.Event
	done    chan struct{}
	code    int
	err     error
}

// boot starts the embedded guest kernel. With wantUp it waits for the
// "guest up" line and opens an agent client.
func boot(t testing.TB, cpus int, cmdline string, wantUp bool) *guestVM {
	t.Helper()
	g := &guestVM{t: t, console: &syncBuffer{}, done: make(chan struct{}), events: make(chan agent.Event, 64)}
	m, err := kvm.New(kvm.Config{Engine: engineFromEnv(t), CPUs: cpus, Kernel: guestkernel.Vmlinux(),
		Cmdline: cmdline, Console: g.console})
	if err != nil {
		t.Fatal(err)
	}
	g.m = m
	go func() {
		g.code, g.err = m.Run()
		close(g.done)
	}()
	t.Cleanup(func() {
		m.Stop()
		<-g.done
		m.Close()
		if t.Failed() {
			t.Logf("console:\n%s", tail(g.console.String(), 6000))
		}
	})
	if wantUp {
		g.waitConsole("klp-kvm guest up", 60*time.Second)
		g.agent = agent.New(m.AgentPort(), agent.Options{Timeout: 20 * time.Second, OnEvent: func(ev agent.Event) {
			select {
			case g.events <- ev:
			default:
			}
		}})
		t.Cleanup(func() { g.agent.Close() })
	}
	return g
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// waitConsole waits until the console shows want; fails on timeout or if
// the machine stops first.
func (g *guestVM) waitConsole(want string, d time.Duration) {
	g.t.Helper()
	deadline := time.Now().Add(d)
	for !strings.Contains(g.console.String(), want) {
		select {
		case <-g.done:
			g.t.Fatalf("machine stopped (code %d, err %v) before the console showed %q", g.code, g.err, want)
		default:
		}
		if time.Now().After(deadline) {
			g.t.Fatalf("console did not show %q within %v", want, d)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitExit waits for the machine to power off and returns its code.
func (g *guestVM) waitExit(d time.Duration) int {
	g.t.Helper()
	select {
	case <-g.done:
		if g.err != nil {
			g.t.Fatalf("machine failed: %v", g.err)
		}
		return g.code
	case <-time.After(d):
		g.t.Fatalf("machine still running after %v", d)
	}
	return -1
}

// shell types a line on the console and waits for want in the output that follows.
func (g *guestVM) shell(line, want string, d time.Duration) string {
	g.t.Helper()
	before := len(g.console.String())
	g.m.ConsoleInput([]byte(line + "\n"))
	deadline := time.Now().Add(d)
	for {
		out := g.console.String()[before:]
		if strings.Contains(out, want) {
			return out
		}
		if time.Now().After(deadline) {
			g.t.Fatalf("shell %q: %q not seen within %v; got %q", line, want, d, out)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (g *guestVM) exec(cmd string) agent.ExecResult {
	g.t.Helper()
	r, err := g.agent.Exec(context.Background(), cmd)
	if err != nil {
		g.t.Fatalf("guest-exec %q: %v", cmd, err)
	}
	return r
}

func (g *guestVM) read(path string) string {
	g.t.Helper()
	s, _, err := g.agent.FileRead(context.Background(), path)
	if err != nil {
		g.t.Fatalf("guest-file-read %s: %v", path, err)
	}
	return s
}
