package livepatch

import (
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"

	"klp-kvm/internal/poll"
	"klp-kvm/kvm/engine"
)

// budget is the SysfsBudget of these tests (the real one is 15 s), and
// slack what the test allows beyond it on a loaded machine.
const (
	budget = 300 * time.Millisecond
	slack  = 500 * time.Millisecond
)

func withBudget(c *Config) { c.SysfsBudget = budget; c.CallbackTimeout = 10 * time.Second }

// timedWrite is a guest's write to <patch>/enabled; it must be answered
// within the budget.
func timedWrite(t *testing.T, m *Manager, name, value string) (error, time.Duration) {
	t.Helper()
	t0 := time.Now()
	err := m.SysfsWrite(name+"/enabled", value)
	d := time.Since(t0)
	if d > budget+slack {
		t.Fatalf("the write of %s to %s/enabled took %v, budget %v: %v", value, name, d, budget, err)
	}
	return err, d
}

// TestSysfsWriteBudget: a guest's sysfs write is answered within
// SysfsBudget (the guest gives up after klp.sysfs_timeout_ms, and would
// then report ETIMEDOUT whatever the host did), however long the
// callbacks (CallbackTimeout 10 s here) or the transition (5 s by
// default) would take, and its errno is the state reached.
func TestSysfsWriteBudget(t *testing.T) {
	// post_patch never returns: the switch is made, the write succeeds
	// within the budget, and the log says what did not run.
	rec := &cbRecorder{hang: map[string]bool{"post_patch": true}}
	_, m, p, log := newCallbacksManager(t, rec, withBudget)
	err, d := timedWrite(t, m, p.Name, "1")
	if err != nil || !m.Status().Patches[0].Enabled || !strings.Contains(log.String(), "post_patch callback of object vmlinux") ||
		!strings.Contains(m.Status().Last.CallbackErr, "post_patch") {
		t.Fatalf("write with a hanging post_patch: %v; enabled %v; log %q", err, m.Status().Patches[0].Enabled, log.String())
	}
	t.Logf("enable, post_patch hanging: answered 0 in %v", d.Round(time.Millisecond))

	// pre_patch never returns: EIO within the budget, nothing enabled.
	rec = &cbRecorder{hang: map[string]bool{"pre_patch": true}}
	_, m, p, _ = newCallbacksManager(t, rec, withBudget)
	err, d = timedWrite(t, m, p.Name, "1")
	if !errors.Is(err, syscall.EIO) || m.Status().Patches[0].Enabled || m.Status().Quarantined == 0 {
		t.Fatalf("write with a hanging pre_patch: %v; status %+v", err, m.Status())
	}
	t.Logf("enable, pre_patch hanging: answered EIO in %v", d.Round(time.Millisecond))

	// A transition that cannot complete (a vCPU in the old function):
	// EBUSY within the budget, not after DefaultDeadline; the callbacks
	// after it (post_unpatch of the cancelled enable) got their time.
	rec = &cbRecorder{}
	g, m, p, _ := newCallbacksManager(t, rec, withBudget)
	idle := g.regs(1)
	g.setRegs(1, engine.Regs{RIP: g.sym(t, "cmdline_proc_show") + 9, RSP: idle.RSP})
	err, d = timedWrite(t, m, p.Name, "1")
	if !errors.Is(err, syscall.EBUSY) || m.Status().Patches[0].Enabled {
		t.Fatalf("write with a blocked transition: %v", err)
	}
	if got := rec.called(); len(got) != 2 || got[1] != "post_unpatch" {
		t.Fatalf("blocked enable called %v", got)
	}
	t.Logf("enable, transition blocked: answered EBUSY in %v: %v", d.Round(time.Millisecond), err)
	g.setRegs(1, idle)
}

// TestSysfsWriteDuringOperation: a guest's write while another operation
// holds the lock. During a transition it is answered at once, as in
// Linux: EBUSY (another patch is in transition, or the opposite of the
// transition's target), EINVAL (the transition's own target: enabled
// already shows it). While an operation's callback runs it waits for the
// lock as long as the budget lets it, then EBUSY naming what is in
// progress.
func TestSysfsWriteDuringOperation(t *testing.T) {
	rec := &cbRecorder{}
	g, m, p, _ := newCallbacksManager(t, rec, withBudget)
	if _, err := m.Register(patchObj(t, "livepatch-sample"), "livepatch-sample.o"); err != nil {
		t.Fatal(err)
	}
	idle := g.regs(1)
	g.setRegs(1, engine.Regs{RIP: g.sym(t, "cmdline_proc_show") + 9, RSP: idle.RSP})
	done := make(chan error, 1)
	go func() { _, err := m.Enable(p.Name, Options{Deadline: 3 * time.Second}); done <- err }()
	poll.Until(t, "the enable to show its transition", func() bool { return m.Status().InTransition == p.Name })
	for _, c := range []struct {
		name, value string
		want        syscall.Errno
		says        string
	}{
		{p.Name, "1", syscall.EINVAL, "already being enabled"},
		{p.Name, "0", syscall.EBUSY, "livepatch_callbacks is in transition"},
		{sample, "1", syscall.EBUSY, "livepatch_callbacks is in transition"},
	} {
		err, d := timedWrite(t, m, c.name, c.value)
		if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.says) || d > 50*time.Millisecond {
			t.Fatalf("write of %s to %s during the transition: want %v at once, got %v after %v", c.value, c.name, c.want, err, d)
		}
	}
	g.setRegs(1, idle)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := m.Disable(p.Name, Options{}); err != nil {
		t.Fatal(err)
	}

	// The enable is in its pre_patch, which does not return for a second:
	// the write waits for the budget, then EBUSY naming it.
	rec.hang = map[string]bool{"pre_patch": true}
	m.cbTO = time.Second
	go func() { _, err := m.Enable(p.Name, Options{}); done <- err }()
	poll.Until(t, "the enable to run pre_patch", func() bool {
		st := m.Status()
		return st.InProgress != nil && st.InProgress.Phase == "pre_patch"
	})
	err, d := timedWrite(t, m, sample, "1")
	if !errors.Is(err, syscall.EBUSY) || !strings.Contains(err.Error(), "enable livepatch_callbacks (pre_patch") || d < budget {
		t.Fatalf("write while pre_patch runs: want EBUSY after the budget, got %v after %v", err, d)
	}
	t.Logf("write while pre_patch runs: %v after %v", err, d.Round(time.Millisecond))
	if err := <-done; !errors.Is(err, syscall.EIO) {
		t.Fatalf("enable with a hanging pre_patch: %v", err)
	}
	// The lock came back: the next write goes through.
	rec.hang = nil
	if err := m.SysfsWrite(p.Name+"/enabled", "1"); err != nil || !m.Status().Patches[0].Enabled {
		t.Fatalf("write after the operation: %v", err)
	}
}
