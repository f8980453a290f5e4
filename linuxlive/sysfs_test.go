package linuxlive

import (
	"bytes"
	"errors"
	"syscall"
	"testing"
	"time"

	"klp-kvm/livepatch"
)

// TestSysfsWrite: writes to the guest's livepatch tree, carried out on
// the fake guest with Linux's semantics: the site follows each accepted
// write, every refused one leaves guest and state as they were.
func TestSysfsWrite(t *testing.T) {
	m, _, k := newTestManager(t)
	ko := testdata(t, "livepatch-sample/livepatch-sample.ko")
	p, _, err := m.Load(ko, "livepatch-sample.ko", livepatch.Options{})
	if err != nil {
		t.Fatal(err)
	}
	jmp := jmpBytes(k.cmdline, p.Objects[0].Funcs[0].NewAddr)
	enabled := func() bool { return m.Status().Patches[0].Enabled }

	if err := m.SysfsWrite("livepatch_sample/enabled", "0\n"); err != nil {
		t.Fatal(err)
	}
	if enabled() || !bytes.Equal(k.site(), fentryNop[:]) {
		t.Fatalf("after enabled=0: enabled %v, site % x", enabled(), k.site())
	}
	if m.Status().Last == nil || m.Status().Last.Op != "disable" {
		t.Errorf("last op %+v, want the disable", m.Status().Last)
	}
	if err := m.SysfsWrite("/livepatch_sample/./enabled", "Y"); err != nil {
		t.Fatal(err)
	}
	if !enabled() || !bytes.Equal(k.site(), jmp[:]) {
		t.Fatalf("after enabled=Y: enabled %v, site % x", enabled(), k.site())
	}

	for _, c := range []struct {
		rel, value string
		errno      syscall.Errno
	}{
		{"livepatch_sample/enabled", "1", syscall.EINVAL}, // the state it is in (Linux's enabled_store)
		{"livepatch_sample/enabled", "2", syscall.EINVAL},
		{"livepatch_sample/enabled", "", syscall.EINVAL},
		{"livepatch_sample/force", "1", syscall.EINVAL}, // no transition in progress
		{"livepatch_sample/force", "0", syscall.EINVAL},
		{"livepatch_sample/transition", "1", syscall.EPERM},
		{"livepatch_sample/stack_order", "1", syscall.EPERM},
		{"livepatch_sample/replace", "1", syscall.EPERM},
		{"livepatch_sample/vmlinux/patched", "0", syscall.EPERM},
		{"livepatch_sample/vmlinux", "0", syscall.EISDIR},
		{"livepatch_sample", "0", syscall.EISDIR},
		{"", "0", syscall.EISDIR},
		{"livepatch_sample/bogus", "0", syscall.ENOENT},
		{"nosuch/enabled", "0", syscall.ENOENT},
		{"nosuch/force", "1", syscall.ENOENT},
		{"nosuch/transition", "1", syscall.ENOENT},
	} {
		err := m.SysfsWrite(c.rel, c.value)
		if !errors.Is(err, c.errno) {
			t.Errorf("%s=%q: %v, want %v", c.rel, c.value, err, c.errno)
		}
		var e *Error
		if !errors.As(err, &e) {
			t.Errorf("%s=%q: %T is not a *linuxlive.Error", c.rel, c.value, err)
		}
	}
	if !enabled() || !bytes.Equal(k.site(), jmp[:]) {
		t.Errorf("refused writes changed the state: enabled %v, site % x", enabled(), k.site())
	}

	// A stacked patch: the first cannot be disabled under it, and once
	// both are disabled the second cannot be enabled above the first
	// (EBUSY, the stacking rules).
	second := bytes.ReplaceAll(ko, []byte("name=livepatch_sample"), []byte("name=livepatch_stack2"))
	if _, _, err := m.Load(second, "2.ko", livepatch.Options{}); err != nil {
		t.Fatal(err)
	}
	if err := m.SysfsWrite("livepatch_sample/enabled", "0"); !errors.Is(err, syscall.EBUSY) {
		t.Errorf("disable under a stacked patch: %v, want EBUSY", err)
	}
	if err := m.SysfsWrite("livepatch_stack2/enabled", "0"); err != nil {
		t.Fatal(err)
	}
	if err := m.SysfsWrite("livepatch_sample/enabled", "0"); err != nil {
		t.Fatal(err)
	}
	if err := m.SysfsWrite("livepatch_stack2/enabled", "1"); !errors.Is(err, syscall.EBUSY) {
		t.Errorf("enable above a disabled patch: %v, want EBUSY", err)
	}
	if !bytes.Equal(k.site(), fentryNop[:]) {
		t.Errorf("site % x, want the NOP", k.site())
	}

	// A blocked stack: the write fails with the transition's EBUSY and
	// the patch stays disabled.
	k.block = "task 1 (init) at cmdline_proc_show+0x8"
	err = m.SysfsWrite("livepatch_sample/enabled", "1")
	if !errors.Is(err, syscall.EBUSY) || !errors.Is(err, ErrBusy) {
		t.Errorf("blocked enable: %v, want EBUSY", err)
	}
	if enabled() || !bytes.Equal(k.site(), fentryNop[:]) {
		t.Errorf("after a blocked enable: enabled %v, site % x", enabled(), k.site())
	}
}

// TestSysfsForceInTransition: a guest's 1 to <patch>/force while the
// patch's enable retries a blocked check makes the next attempt switch
// unchecked (Linux's force_store on klp_transition_patch); a write for
// another patch is EINVAL, and once the transition ended so is the same
// write again.
func TestSysfsForceInTransition(t *testing.T) {
	m, _, k := newTestManager(t)
	if _, _, err := m.Load(testdata(t, "livepatch-sample/livepatch-sample.ko"), "s.ko", livepatch.Options{}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Disable("livepatch_sample", livepatch.Options{}); err != nil {
		t.Fatal(err)
	}
	k.block = "task 1 (init) in cmdline_proc_show"
	type out struct {
		res *livepatch.Result
		err error
	}
	done := make(chan out, 1)
	go func() {
		res, err := m.Enable("livepatch_sample", livepatch.Options{Deadline: time.Minute})
		done <- out{res, err}
	}()
	for m.inTransition.Load() == nil {
		time.Sleep(time.Millisecond)
	}
	if err := m.SysfsWrite("other_patch/force", "1"); !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
		t.Errorf("force of a patch not in transition: %v", err)
	}
	if err := m.SysfsWrite("livepatch_sample/force", "1"); err != nil {
		t.Fatalf("force during the transition: %v", err)
	}
	var o out
	select {
	case o = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the forced transition did not end")
	}
	if o.err != nil || !o.res.Forced || o.res.Attempts < 2 || !m.Status().Patches[0].Enabled {
		t.Fatalf("enable after a guest's force: %v %+v", o.err, o.res)
	}
	if k.site()[0] != 0xe9 {
		t.Errorf("site % x, want the jmp", k.site())
	}
	if err := m.SysfsWrite("livepatch_sample/force", "1"); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("force after the transition: %v, want EINVAL", err)
	}
}
