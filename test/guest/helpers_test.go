package guest

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"klp-kvm/guestkernel"
	"klp-kvm/internal/poll"
	"klp-kvm/kvm"
	"klp-kvm/kvm/agent"
	"klp-kvm/test/e2e"
)

type guestVM struct {
	t       testing.TB
	m       *kvm.Machine
	console *e2e.Console
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
	g := &guestVM{t: t, console: &e2e.Console{}, done: make(chan struct{}), events: make(chan agent.Event, 64)}
	m := e2e.NewMachine(t, kvm.Config{CPUs: cpus, Kernel: guestkernel.Vmlinux(), Cmdline: cmdline, Console: g.console})
	g.m = m
	go func() {
		g.code, g.err = m.Run()
		close(g.done)
	}()
	t.Cleanup(func() { // before NewMachine's Close
		m.Stop()
		<-g.done
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

// running fails the test if the machine has stopped, naming what the test
// was waiting for.
func (g *guestVM) running(what string) {
	g.t.Helper()
	select {
	case <-g.done:
		g.t.Fatalf("machine stopped (code %d, err %v) before %s", g.code, g.err, what)
	default:
	}
}

// waitConsole waits until the console shows want; fails on timeout or if
// the machine stops first.
func (g *guestVM) waitConsole(want string, d time.Duration) {
	g.t.Helper()
	what := fmt.Sprintf("the console to show %q", want)
	poll.Within(g.t, d, what, func() bool {
		if strings.Contains(g.console.String(), want) {
			return true
		}
		g.running(what)
		return false
	})
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
	var out string
	if !poll.Wait(d, func() bool {
		out = g.console.String()[before:]
		return strings.Contains(out, want)
	}) {
		g.t.Fatalf("shell %q: %q not seen within %v; got %q", line, want, d, out)
	}
	return out
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

// allStacks pauses the guest, walks every task's and vCPU's stack with
// gst from the vCPUs' registers (what a consistency check does), and
// resumes it; the walk's error is the caller's (a busy task table is
// retried).
func (g *guestVM) allStacks(tb testing.TB, gst *guestkernel.Guest) ([]guestkernel.TaskStack, error) {
	tb.Helper()
	if err := g.m.Pause(); err != nil {
		tb.Fatal(err)
	}
	all, err := gst.AllStacks(func(cpu int) (uint64, uint64, uint64, error) {
		r, err := g.m.Regs(cpu)
		return r.RIP, r.RSP, r.RBP, err
	}, 0)
	if rerr := g.m.Resume(); rerr != nil {
		tb.Fatal(rerr)
	}
	return all, err
}
