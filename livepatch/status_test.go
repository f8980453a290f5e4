package livepatch

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"syscall"
	"testing"
	"time"

	"klp-kvm/guestkernel"
	"klp-kvm/internal/poll"
	"klp-kvm/kvm/engine"
)

// statusWhile polls m.Status, while an operation runs in another
// goroutine (done is closed when it returns), until cond holds of it and
// of the guest's sysfs mirror. Every Status call must return at once,
// the operation being blocked in its transition: the longest call is
// returned.
func statusWhile(t *testing.T, g *fakeGuest, m *Manager, done <-chan struct{}, cond func(Status, []guestkernel.SysfsPatch) bool) (Status, []guestkernel.SysfsPatch, time.Duration) {
	t.Helper()
	var longest time.Duration
	var st Status
	var sf []guestkernel.SysfsPatch
	poll.Within(t, 5*time.Second, "Status to show the transition", func() bool {
		t0 := time.Now()
		st = m.Status()
		longest = max(longest, time.Since(t0))
		select {
		case <-done:
			t.Fatalf("the operation returned before Status showed it in transition: %+v", st)
		default:
		}
		var err error
		sf, err = g.Sysfs() // err: the seqlock is odd, a write in progress
		return err == nil && cond(st, sf)
	})
	return st, sf, longest
}

// TestStatusDuringTransition: Status answers while an operation holds
// the lock in a blocked transition, and shows what Linux's sysfs shows:
// transition=1 and, as enabled, the target state (1 during an enable, 0
// during a disable); the guest's mirror shows the same. After the
// rollback (EBUSY) both show the state the patch is really in.
func TestStatusDuringTransition(t *testing.T) {
	g, m := newManager(t, 2, nil)
	old := g.sym(t, "cmdline_proc_show")
	if _, err := m.Register(patchObj(t, "livepatch-sample"), "livepatch-sample.o"); err != nil {
		t.Fatal(err)
	}
	idle := g.regs(1)
	for _, dir := range []struct {
		op     string
		target bool
		run    func(string, Options) (*Result, error)
		block  func() // puts vCPU 1 where it blocks the transition
	}{
		{"enable", true, m.Enable, func() { g.setRegs(1, engine.Regs{RIP: old + 9, RSP: idle.RSP}) }},
		{"disable", false, m.Disable, func() {
			nf := m.Status().Patches[0].Objects[0].Funcs[0].NewAddr
			g.setRegs(1, engine.Regs{RIP: nf + 6, RSP: idle.RSP})
		}},
	} {
		dir.block()
		done := make(chan struct{})
		var err error
		t0 := time.Now()
		go func() {
			defer close(done)
			_, err = dir.run(sample, Options{Deadline: 400 * time.Millisecond})
		}()
		st, sf, longest := statusWhile(t, g, m, done, func(st Status, sf []guestkernel.SysfsPatch) bool {
			return st.InTransition == sample && sf[0].Transition
		})
		p := st.Patches[0]
		if !p.Transition || p.Enabled != dir.target || st.InProgress == nil || st.InProgress.Op != dir.op ||
			st.InProgress.Patch != sample || st.InProgress.Phase != "transition" || st.InProgress.Attempts < 1 {
			t.Fatalf("%s: Status during the transition: %+v, in progress %+v", dir.op, p.Patch, st.InProgress)
		}
		if sf[0].Enabled != dir.target || !sf[0].Objects[0].Patched {
			t.Fatalf("%s: the guest's sysfs during the transition: %+v", dir.op, sf[0])
		}
		if longest > 100*time.Millisecond {
			t.Fatalf("%s: a Status call took %v during the transition", dir.op, longest)
		}
		<-done
		took := time.Since(t0)
		if !errors.Is(err, syscall.EBUSY) {
			t.Fatalf("%s: want EBUSY, got %v", dir.op, err)
		}
		t.Logf("%s: Status answered in at most %v while the operation took %v (attempts seen %d)", dir.op, longest, took.Round(time.Millisecond), st.InProgress.Attempts)
		// Rolled back: the state the patch is in, no transition.
		st = m.Status()
		sf = g.sysfs(t)
		if p := st.Patches[0]; p.Transition || p.Enabled == dir.target || st.InTransition != "" || st.InProgress != nil {
			t.Fatalf("%s: Status after the rollback: %+v, in transition %q, in progress %+v", dir.op, p.Patch, st.InTransition, st.InProgress)
		}
		if sf[0].Transition || sf[0].Enabled == dir.target || sf[0].Objects[0].Patched == dir.target {
			t.Fatalf("%s: the guest's sysfs after the rollback: %+v", dir.op, sf[0])
		}
		// Unblocked, the operation goes through for the next round.
		g.setRegs(1, idle)
		if _, err := dir.run(sample, Options{}); err != nil {
			t.Fatal(err)
		}
	}
}

// TestStatusIsACopy: what Status returns is the caller's; changing it
// changes neither the Manager's state nor the next Status. Its
// redirected sites (cached between switches) are the tracer's.
func TestStatusIsACopy(t *testing.T) {
	g, m := newManager(t, 1, nil)
	// sites: Status shows the tracer's redirected sites and every
	// patch's objects as they are (the snapshots share one copy of a
	// patch's objects until an image is bound or dropped: never stale).
	sites := func(when string) {
		t.Helper()
		m.mu.Lock()
		want := fmt.Sprint(m.Tracer().Redirected())
		var wantObjs []string
		for _, p := range m.patches {
			b, _ := json.Marshal(p.Objects)
			wantObjs = append(wantObjs, string(b))
		}
		m.mu.Unlock()
		st := m.Status()
		if got := fmt.Sprint(st.Redirected); got != want {
			t.Fatalf("%s: Status shows redirected %s, the tracer %s", when, got, want)
		}
		var gotObjs []string
		for _, p := range st.Patches {
			b, _ := json.Marshal(p.Objects)
			gotObjs = append(gotObjs, string(b))
		}
		if !slices.Equal(gotObjs, wantObjs) {
			t.Fatalf("%s: Status shows objects %s, the patches have %s", when, gotObjs, wantObjs)
		}
	}
	sites("new")
	if _, _, err := m.Load(patchObj(t, "livepatch-sample"), "livepatch-sample.o", Options{}); err != nil {
		t.Fatal(err)
	}
	sites("enabled")
	if _, err := m.Disable(sample, Options{}); err != nil {
		t.Fatal(err)
	}
	sites("disabled")
	st := g.sym(t, "klp_sysfs_state")
	g.WriteErr = func(va uint64, n int) error {
		if va >= st && va < st+guestkernel.SysfsStateSize {
			return errors.New("injected sysfs write fault")
		}
		return nil
	}
	if _, err := m.Enable(sample, Options{}); !errors.Is(err, syscall.EIO) {
		t.Fatalf("want EIO, got %v", err)
	}
	g.WriteErr = nil
	sites("enable undone")
	if _, err := m.Enable(sample, Options{}); err != nil {
		t.Fatal(err)
	}
	sites("enabled again")
	s := m.Status()
	s.Patches[0].Name = "x"
	s.Patches[0].Objects[0].Funcs[0].NewAddr = 1
	s.Redirected[0].Target = 1
	s.Last.Op = "x"
	st2 := m.Status()
	if st2.Patches[0].Name != sample || st2.Patches[0].Objects[0].Funcs[0].NewAddr == 1 || st2.Redirected[0].Target == 1 || st2.Last.Op != "enable" {
		t.Fatalf("a caller's change reached the snapshot: %+v", st2)
	}
	// The image dropped and laid out again: the addresses Status shows
	// follow (0 while unregistered, the new layout's after).
	if _, err := m.Disable(sample, Options{}); err != nil {
		t.Fatal(err)
	}
	sites("disabled again")
	if err := m.Unregister(sample); err != nil {
		t.Fatal(err)
	}
	sites("unregistered")
	if _, _, err := m.Load(patchObj(t, "livepatch-sample"), "livepatch-sample.o", Options{}); err != nil {
		t.Fatal(err)
	}
	sites("loaded again")
	if a := m.Status().Patches[0].Objects[0].Funcs[0].NewAddr; a == 0 {
		t.Fatalf("loaded again, Status shows new_addr 0")
	}
}
