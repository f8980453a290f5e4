package linuxlive

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"klp-kvm/livepatch"
)

const ftDisabled = 1 << 25

// TestFtraceRecordHeld: the pause that takes the site from the NOP
// disables the guest ftrace's record of it, the pause that gives the NOP
// back enables it again; a stacked patch's switches leave it alone.
func TestFtraceRecordHeld(t *testing.T) {
	m, g, k := newTestManager(t)
	put(g.fakeMem, ftraceFlags, 1<<30) // FTRACE_FL_REGS: another flag of the record, kept
	before := guestPart(g)
	ko := testdata(t, "livepatch-sample/livepatch-sample.ko")
	p, _, err := m.Load(ko, "s.ko", livepatch.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if got := k.ftraceFlags(); got != 1<<30|ftDisabled {
		t.Fatalf("enabled: record flags %#x, want %#x", got, 1<<30|ftDisabled)
	}
	second := bytes.ReplaceAll(ko, []byte("name=livepatch_sample"), []byte("name=livepatch_stack2"))
	p2, _, err := m.Load(second, "2.ko", livepatch.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Unload(p2.Name, livepatch.Options{}); err != nil {
		t.Fatal(err)
	}
	if got := k.ftraceFlags(); got != 1<<30|ftDisabled {
		t.Errorf("after the stacked patch: record flags %#x, want it still disabled", got)
	}
	if _, err := m.Disable(p.Name, livepatch.Options{}); err != nil {
		t.Fatal(err)
	}
	if got := k.ftraceFlags(); got != 1<<30 {
		t.Errorf("disabled: record flags %#x, want %#x", got, 1<<30)
	}
	if _, err := m.Enable(p.Name, livepatch.Options{}); err != nil || k.ftraceFlags() != 1<<30|ftDisabled {
		t.Fatalf("enabled again: %v, flags %#x", err, k.ftraceFlags())
	}
	if _, err := m.Unload(p.Name, livepatch.Options{}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(guestPart(g), before) {
		t.Error("after the unload the guest differs from before")
	}
}

// TestFtraceRecordInUse: a record the guest's ftrace counts users of, or
// has enabled, refuses the switch with nothing written.
func TestFtraceRecordInUse(t *testing.T) {
	for _, flags := range []uint64{1, 1 << 31} {
		m, g, _ := newTestManager(t)
		put(g.fakeMem, ftraceFlags, flags)
		before := guestPart(g)
		_, _, err := m.Load(testdata(t, "livepatch-sample/livepatch-sample.ko"), "s.ko", livepatch.Options{Force: true})
		if !errors.Is(err, ErrSiteInUse) || !strings.Contains(err.Error(), "ftrace") {
			t.Errorf("flags %#x: %v, want ErrSiteInUse naming ftrace", flags, err)
		}
		if !bytes.Equal(guestPart(g), before) || len(m.Status().Patches) != 0 || m.Status().PatchAreaInUse != 0 {
			t.Errorf("flags %#x: the refused load left something behind", flags)
		}
	}
}

// TestFtraceLockHeld: while the guest's ftrace_lock is held the switch
// waits (even forced: it is not a stack check), and fails at the
// deadline with the reason; once the lock is free it goes through.
func TestFtraceLockHeld(t *testing.T) {
	m, g, k := newTestManager(t)
	p, err := m.Register(testdata(t, "livepatch-sample/livepatch-sample.ko"), "s.ko")
	if err != nil {
		t.Fatal(err)
	}
	k.ftLock = true
	before := guestPart(g)
	_, err = m.Enable(p.Name, livepatch.Options{Deadline: 30 * time.Millisecond, Force: true})
	if !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "ftrace_lock held") {
		t.Fatalf("enable under ftrace_lock: %v", err)
	}
	if !bytes.Equal(guestPart(g), before) {
		t.Error("the blocked enable wrote the guest")
	}
	k.ftLock = false
	if _, err := m.Enable(p.Name, livepatch.Options{}); err != nil || k.ftraceFlags() != ftDisabled {
		t.Fatalf("enable: %v, flags %#x", err, k.ftraceFlags())
	}
}

// TestFtraceOpsRegistered: an ftrace_ops registered while the host held
// the record did not count it, so the record stays disabled when the NOP
// goes back, until a later give-back finds no ops.
func TestFtraceOpsRegistered(t *testing.T) {
	m, _, k := newTestManager(t)
	var logged []string
	m.cfg.Logf = func(f string, a ...any) { logged = append(logged, f) }
	p, _, err := m.Load(testdata(t, "livepatch-sample/livepatch-sample.ko"), "s.ko", livepatch.Options{})
	if err != nil {
		t.Fatal(err)
	}
	k.ftOps = true
	if _, err := m.Disable(p.Name, livepatch.Options{}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(k.site(), fentryNop[:]) || k.ftraceFlags() != ftDisabled || len(logged) != 1 {
		t.Errorf("disabled with ops registered: site % x, flags %#x, log %q", k.site(), k.ftraceFlags(), logged)
	}
	// Enabled again: the record is still the host's.
	if _, err := m.Enable(p.Name, livepatch.Options{}); err != nil {
		t.Fatal(err)
	}
	k.ftOps = false
	if _, err := m.Unload(p.Name, livepatch.Options{}); err != nil {
		t.Fatal(err)
	}
	if k.ftraceFlags() != 0 {
		t.Errorf("unloaded with no ops: flags %#x, want 0", k.ftraceFlags())
	}
}

// TestFtraceRecordGuestDisabled: a record the guest disabled itself is
// left disabled; a kernel whose ftrace is unreadable is switched without.
func TestFtraceRecordGuestDisabled(t *testing.T) {
	m, g, k := newTestManager(t)
	put(g.fakeMem, ftraceFlags, ftDisabled)
	if _, _, err := m.Load(testdata(t, "livepatch-sample/livepatch-sample.ko"), "s.ko", livepatch.Options{}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Unload("livepatch_sample", livepatch.Options{}); err != nil || k.ftraceFlags() != ftDisabled {
		t.Errorf("guest-disabled record: %v, flags %#x", err, k.ftraceFlags())
	}
	m, _, k = newTestManager(t)
	k.noFtrace = true
	if _, _, err := m.Load(testdata(t, "livepatch-sample/livepatch-sample.ko"), "s.ko", livepatch.Options{}); err != nil || k.ftraceFlags() != 0 {
		t.Errorf("no ftrace: %v, flags %#x", err, k.ftraceFlags())
	}
}
