package e2e

import (
	"context"
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"

	"klp-kvm/internal/poll"
	"klp-kvm/kvm/agent"
	"klp-kvm/livepatch"
	"klp-kvm/vmm"
)

// Issue 12, "honest state": what the host and the guest show during a
// transition, and the errno a guest's sysfs write gets, are the state the
// patch is in.

// guestAttrs reads a patch's enabled and transition files in the guest.
func guestAttrs(t *testing.T, s *vmm.VMM, name string) string {
	t.Helper()
	dir := "/sys/kernel/livepatch/" + name
	return strings.Join(strings.Fields(sh(t, s, "cat "+dir+"/enabled "+dir+"/transition")), " ")
}

// guestWrite writes a livepatch sysfs file from the host through the
// guest agent (the guest's vfs_write, forwarded back to the host as a
// sysfs-write event) and returns the errno the guest's write got.
func guestWrite(t *testing.T, s *vmm.VMM, path, value string) syscall.Errno {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	err := s.Agent.FileWrite(ctx, path, value)
	if err == nil {
		return 0
	}
	var ae *agent.Error
	if !errors.As(err, &ae) || !errors.Is(err, agent.ErrGuest) || ae.Errno == 0 {
		t.Fatalf("write %q to %s: %v", value, path, err)
	}
	return syscall.Errno(ae.Errno)
}

// TestHonestTransition: an enable blocked by a parked task keeps its
// transition retrying. Meanwhile Status answers at once (it does not wait
// for the operation) and shows the patch in transition with enabled=true,
// the target state, as Linux does; the guest reads enabled=1
// transition=1; a write to another patch's force file is EINVAL. After the
// rollback (EBUSY) both show enabled=0 transition=0. A guest's own write
// to enabled, with the task still parked, gets EBUSY, the state it left,
// within the host's budget.
func TestHonestTransition(t *testing.T) {
	s := boot(t, 2)
	lm := s.Manager
	p, err := lm.Register(obj(t, "livepatch-park"), "livepatch-park.o")
	if err != nil {
		t.Fatal(err)
	}
	other, err := lm.Register(obj(t, "livepatch-sample"), "livepatch-sample.o")
	if err != nil {
		t.Fatal(err)
	}
	sh(t, s, "park on")
	defer sh(t, s, "park off")
	poll.Until(t, "the parker to park", func() bool {
		return strings.Contains(sh(t, s, "cat /proc/klp_selftest"), "parked: 1\n")
	})

	done := make(chan error, 1)
	var enableEnd time.Time
	t0 := time.Now()
	go func() {
		_, err := lm.Enable(p.Name, livepatch.Options{Deadline: livepatch.DefaultDeadline})
		enableEnd = time.Now()
		done <- err
	}()
	var st livepatch.Status
	var longest time.Duration
	calls := 0
	poll.Until(t, "Status to show the transition", func() bool {
		c0 := time.Now()
		st = lm.Status()
		longest = max(longest, time.Since(c0))
		calls++
		return st.InTransition == p.Name
	})
	statusAt := time.Now()
	ps := st.Patches[0]
	if !ps.Transition || !ps.Enabled || st.InProgress == nil || st.InProgress.Phase != "transition" {
		t.Fatalf("Status during the enable's transition: enabled %v transition %v, in progress %+v", ps.Enabled, ps.Transition, st.InProgress)
	}
	if got := guestAttrs(t, s, p.Name); got != "1 1" {
		t.Fatalf("the guest reads enabled transition = %q during the enable, want \"1 1\"", got)
	}
	if en := guestWrite(t, s, "/sys/kernel/livepatch/"+other.Name+"/force", "1"); en != syscall.EINVAL {
		t.Fatalf("force written to a patch not in transition: errno %v, want EINVAL", en)
	}
	select {
	case err := <-done:
		t.Fatalf("the enable ended (%v) before the guest's reads were done: inconclusive", err)
	default:
	}
	err = <-done
	if !errors.Is(err, syscall.EBUSY) || !strings.Contains(err.Error(), "klp_park_fn") {
		t.Fatalf("want EBUSY naming klp_park_fn, got %v", err)
	}
	if !statusAt.Before(enableEnd) {
		t.Fatal("Status answered only after the enable")
	}
	t.Logf("%d Status calls during the enable, the longest %v; Status showed the transition %v after the start, the enable ended (EBUSY) after %v",
		calls, longest, statusAt.Sub(t0).Round(time.Millisecond), enableEnd.Sub(t0).Round(time.Millisecond))
	if longest > time.Second {
		t.Fatalf("a Status call took %v during the transition", longest)
	}
	st = lm.Status()
	if ps := st.Patches[0]; ps.Enabled || ps.Transition || st.InTransition != "" || st.InProgress != nil || ps.Forced {
		t.Fatalf("Status after the rollback: enabled %v transition %v forced %v, in transition %q, in progress %+v",
			ps.Enabled, ps.Transition, ps.Forced, st.InTransition, st.InProgress)
	}
	if got := guestAttrs(t, s, p.Name); got != "0 0" {
		t.Fatalf("the guest reads enabled transition = %q after the rollback, want \"0 0\"", got)
	}

	// The guest's own write: answered within the budget with the errno
	// of the state reached (EBUSY: still disabled), not ETIMEDOUT.
	t1 := time.Now()
	en := guestWrite(t, s, "/sys/kernel/livepatch/"+p.Name+"/enabled", "1")
	took := time.Since(t1)
	if en != syscall.EBUSY || lm.Status().Patches[0].Enabled || took > livepatch.SysfsBudget {
		t.Fatalf("guest write with the task parked: errno %v after %v, enabled %v; want EBUSY, disabled, within %v",
			en, took, lm.Status().Patches[0].Enabled, livepatch.SysfsBudget)
	}
	t.Logf("the guest's enable write with the task parked: EBUSY after %v", took.Round(time.Millisecond))
	if got := guestAttrs(t, s, p.Name); got != "0 0" {
		t.Fatalf("the guest reads enabled transition = %q after its write, want \"0 0\"", got)
	}
}
