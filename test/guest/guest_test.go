package guest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"klp-kvm/kvm/agent"
)

// TestSelftest boots with 1, 2 and 4 vCPUs in self-test mode: the guest
// runs its own checks (SMP, sleep, preemption, consistency pair, duplicate
// symbols, the bench set, parking, VFS, kallsyms, fentry, the shadow
// variable API) and powers off with 0.
func TestSelftest(t *testing.T) {
	for _, cpus := range []int{1, 2, 4} {
		t.Run(fmt.Sprintf("cpus=%d", cpus), func(t *testing.T) {
			g := boot(t, cpus, "klp.selftest", false)
			if code := g.waitExit(120 * time.Second); code != 0 {
				t.Fatalf("self-test exit code %d\n%s", code, tail(g.console.String(), 3000))
			}
			out := g.console.String()
			if !strings.Contains(out, "selftest: PASS") || !strings.Contains(out, fmt.Sprintf("smp: ok %d/%d CPUs", cpus, cpus)) ||
				!strings.Contains(out, "selftest: shadow: ok") || !strings.Contains(out, "selftest: shadow-smp: ok") {
				t.Fatalf("console:\n%s", out)
			}
		})
	}
}

// TestShellAndAgent: the console shell answers, the agent answers every
// command, /proc/cmdline shows the command line given.
func TestShellAndAgent(t *testing.T) {
	const cmdline = "console=ttyS0 klp.test=1 quiet"
	g := boot(t, 2, cmdline, true)
	g.shell("echo hello-console > /tmp/c", "# ", 10*time.Second)
	g.shell("cat /tmp/c", "hello-console", 10*time.Second)
	g.shell("cat /proc/cmdline", cmdline, 10*time.Second)
	g.shell("nosuchcmd", "sh: nosuchcmd: command not found", 10*time.Second)
	g.shell("help", "poweroff", 10*time.Second)

	ctx := context.Background()
	a := g.agent
	if err := a.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if err := a.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	in, err := a.Info(ctx)
	if err != nil || in.CPUs != 2 || in.Tasks < 6 || !strings.Contains(in.Version, "klp-kvm") || len(in.SupportedCommands) < 6 {
		t.Fatalf("guest-info %+v %v", in, err)
	}
	if s := g.read("/proc/cmdline"); s != cmdline+"\n" {
		t.Fatalf("/proc/cmdline %q", s)
	}
	if r := g.exec("cat /proc/cmdline"); r.Output != cmdline+"\n" || r.Status != 0 {
		t.Fatalf("exec cat: %+v", r)
	}
	if err := a.FileWrite(ctx, "/tmp/agent", "written by the host\n"); err != nil {
		t.Fatal(err)
	}
	if s := g.read("/tmp/agent"); s != "written by the host\n" {
		t.Fatalf("/tmp/agent %q", s)
	}
	var ae *agent.Error
	if _, _, err := a.FileRead(ctx, "/nope"); !errors.As(err, &ae) || ae.Errno != 2 {
		t.Fatalf("missing file: %v", err)
	}
	if err := a.FileWrite(ctx, "/proc/version", "x"); !errors.As(err, &ae) || ae.Errno != 13 {
		t.Fatalf("read-only file: %v", err)
	}
	if err := a.Call(ctx, "guest-frobnicate", nil, nil); !errors.As(err, &ae) || ae.Class != "CommandNotFound" {
		t.Fatalf("unknown command: %v", err)
	}
	if err := a.Call(ctx, "guest-file-read", map[string]int{"path": 3}, nil); !errors.As(err, &ae) || ae.Errno != 22 {
		t.Fatalf("wrong argument type: %v", err)
	}
	r := g.exec("ls /proc")
	for _, f := range []string{"cmdline", "version", "uptime", "stat", "klp_selftest", "klp_park"} {
		if !strings.Contains(r.Output, f+"\n") {
			t.Errorf("ls /proc lacks %s: %q", f, r.Output)
		}
	}
	if r := g.exec("dmesg"); !strings.Contains(r.Output, "klp-kvm guest up") {
		t.Errorf("dmesg: %q", tail(r.Output, 300))
	}
	if r := g.exec("false"); r.Status != 1 {
		t.Errorf("false: status %d", r.Status)
	}
	for _, f := range []string{"/proc/version", "/proc/uptime", "/proc/stat", "/proc/klp_selftest", "/proc/tasks"} {
		if s := g.read(f); len(s) == 0 {
			t.Errorf("%s empty", f)
		}
	}
	st := g.read("/proc/stat")
	if !strings.Contains(st, "cpu0 ") || !strings.Contains(st, "cpu1 ") || !strings.Contains(st, "ctxt ") {
		t.Errorf("/proc/stat: %q", st)
	}
	sel := g.read("/proc/klp_selftest")
	if !strings.Contains(sel, "pair_violations: 0\n") || !strings.Contains(sel, "dup_fn_1: 1001\n") || !strings.Contains(sel, "dup_fn_2: 2002\n") {
		t.Errorf("/proc/klp_selftest: %q", sel)
	}
}

// TestPreemption: endless loops on every CPU do not starve the shell, the
// agent or the timed sleepers.
func TestPreemption(t *testing.T) {
	g := boot(t, 2, "", true)
	for cpu := 0; cpu < 2; cpu++ {
		if r := g.exec(fmt.Sprintf("hog %d", cpu)); !strings.Contains(r.Output, "hog started") {
			t.Fatalf("hog: %+v", r)
		}
	}
	start := time.Now()
	for i := 0; i < 5; i++ {
		if err := g.agent.Ping(context.Background()); err != nil {
			t.Fatalf("ping with hogs running: %v", err)
		}
	}
	r := g.exec("sleep 50")
	if r.Status != 0 {
		t.Fatalf("sleep: %+v", r)
	}
	g.shell("uptime", "up ", 20*time.Second)
	t.Logf("5 pings, a 50 ms sleep and a shell command beside two hogs: %v", time.Since(start))
	sel := g.read("/proc/klp_selftest")
	g.exec("hog stop")
	if strings.Contains(sel, "hog_loops: 0\n") {
		t.Fatalf("hogs never ran: %s", sel)
	}
}

// TestPowerOff: the shell's poweroff ends Run with its code.
func TestPowerOff(t *testing.T) {
	g := boot(t, 1, "", true)
	g.m.ConsoleInput([]byte("poweroff 7\n"))
	if code := g.waitExit(30 * time.Second); code != 7 {
		t.Fatalf("exit code %d, want 7", code)
	}
}

// TestExceptions: a breakpoint is reported and survived; an invalid
// opcode gives an oops report naming the faulting function and powers off
// with the panic code.
func TestExceptions(t *testing.T) {
	g := boot(t, 2, "", true)
	if r := g.exec("int3"); r.Status != 0 {
		t.Fatalf("int3: %+v", r)
	}
	g.waitConsole("int3 at ", 10*time.Second)
	if err := g.agent.Ping(context.Background()); err != nil {
		t.Fatalf("agent after int3: %v", err)
	}
	// One report: a #BP frame holding the int3's own address (a trap needs
	// the next one) would return to the int3 and report it forever.
	if n := strings.Count(g.console.String(), "int3 at "); n != 1 {
		t.Fatalf("int3 reported %d times, want once:\n%s", n, tail(g.console.String(), 1000))
	}
	g.m.ConsoleInput([]byte("oops\n"))
	if code := g.waitExit(30 * time.Second); code != 100 {
		t.Fatalf("exit code %d after oops, want 100", code)
	}
	out := g.console.String()
	for _, want := range []string{"Oops: invalid opcode (vector 6)", "<shell_exec+", "Call Trace:", "shell_thread+", "Kernel panic"} {
		if !strings.Contains(out, want) {
			t.Errorf("oops report lacks %q:\n%s", want, tail(out, 2000))
		}
	}
}
