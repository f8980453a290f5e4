package livepatch

import (
	"encoding/binary"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"klp-kvm/elfpatch"
	"klp-kvm/ftrace"
	"klp-kvm/guestkernel"
	"klp-kvm/kvm/engine"
)

const sample = "livepatch_sample"

func fentryBytes(t *testing.T, g *fakeGuest, addr uint64) [5]byte {
	var b [5]byte
	if err := g.ReadVirt(addr, b[:]); err != nil {
		t.Fatal(err)
	}
	return b
}

// target returns where the site at addr leads: 0 for the NOP, else the
// slot of the trampoline its jmp reaches.
func target(t *testing.T, g *fakeGuest, addr uint64) uint64 {
	t.Helper()
	b := fentryBytes(t, g, addr)
	if b == elfpatch.Nop5 {
		return 0
	}
	if b[0] != 0xe9 {
		t.Fatalf("site %#x holds % x", addr, b)
	}
	tramp := addr + 5 + uint64(int64(int32(binary.LittleEndian.Uint32(b[1:]))))
	var tb [16]byte
	if err := g.ReadVirt(tramp, tb[:]); err != nil {
		t.Fatal(err)
	}
	if tb[0] != 0xff || tb[1] != 0x25 {
		t.Fatalf("trampoline %#x holds % x", tramp, tb)
	}
	return binary.LittleEndian.Uint64(tb[8:])
}

func TestLifecycle(t *testing.T) {
	g, m := newManager(t, 2, nil)
	site := g.sym(t, "cmdline_proc_show")
	p, err := m.Register(patchObj(t, "livepatch-sample"), "livepatch-sample.o")
	if err != nil {
		t.Fatal(err)
	}
	if p.Name != sample {
		t.Fatalf("name %q", p.Name)
	}
	sf := g.sysfs(t)
	if len(sf) != 1 || sf[0].Name != sample || sf[0].Enabled || sf[0].Objects[0].Name != "vmlinux" ||
		sf[0].Objects[0].Funcs[0].Name != "cmdline_proc_show" || sf[0].Objects[0].Funcs[0].Sympos != 1 {
		t.Fatalf("sysfs after register: %+v", sf)
	}
	res, err := m.Enable(sample, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Attempts != 1 || res.Funcs != 1 || res.PauseWindow <= 0 {
		t.Fatalf("result %+v", res)
	}
	f := p.Objects[0].Funcs[0]
	if f.NewAddr < patchVirt || f.NewAddr >= patchVirt+fakePatch || f.NewSize == 0 {
		t.Fatalf("new func %+v", f)
	}
	if got := target(t, g, site); got != f.NewAddr {
		t.Fatalf("site leads to %#x, want %#x", got, f.NewAddr)
	}
	// The image is in the patch area: the new function starts with its own fentry NOP.
	if b := fentryBytes(t, g, f.NewAddr); b != elfpatch.Nop5 {
		t.Fatalf("new function starts with % x", b)
	}
	if sf := g.sysfs(t); !sf[0].Enabled || sf[0].Transition || !sf[0].Objects[0].Patched || sf[0].StackOrder != 1 {
		t.Fatalf("sysfs after enable: %+v", sf)
	}
	if g.Paused() {
		t.Fatal("left paused")
	}
	if _, err := m.Disable(sample, Options{}); err != nil {
		t.Fatal(err)
	}
	if got := target(t, g, site); got != 0 {
		t.Fatalf("site still leads to %#x", got)
	}
	// Re-enable is allowed, and reuses the image.
	if _, err := m.Enable(sample, Options{}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Unload(sample, Options{}); err != nil {
		t.Fatal(err)
	}
	if n := m.Tracer().Alloc().InUse(); n != 0 {
		t.Fatalf("%d bytes of the patch area leaked", n)
	}
	if sf := g.sysfs(t); len(sf) != 0 {
		t.Fatalf("sysfs after unload: %+v", sf)
	}
	if fentryBytes(t, g, site) != elfpatch.Nop5 {
		t.Fatal("site not restored")
	}
}

// errno checks an operation's error and that nothing changed in the guest.
func refused(t *testing.T, g *fakeGuest, m *Manager, want syscall.Errno, op func() error) {
	t.Helper()
	before := g.hash()
	names := strings.Join(m.Patches(), ",")
	inUse := m.Tracer().Alloc().InUse()
	err := op()
	if !errors.Is(err, want) {
		t.Fatalf("want %v, got %v", want, err)
	}
	var le *Error
	if !errors.As(err, &le) || !strings.Contains(err.Error(), le.ErrnoName()) {
		t.Fatalf("error %q does not name its errno", err)
	}
	if g.hash() != before {
		t.Fatalf("guest memory changed by a refused operation (%v)", err)
	}
	if strings.Join(m.Patches(), ",") != names || m.Tracer().Alloc().InUse() != inUse {
		t.Fatalf("state changed by a refused operation (%v)", err)
	}
}

func TestErrors(t *testing.T) {
	g, m := newManager(t, 1, nil)
	reg := func(name string) error { _, err := m.Register(patchObj(t, name), name+".o"); return err }
	if err := reg("livepatch-sample"); err != nil {
		t.Fatal(err)
	}
	if err := reg("livepatch-sample2"); err != nil {
		t.Fatal(err)
	}
	en := func(n string) func() error { return func() error { _, err := m.Enable(n, Options{}); return err } }
	dis := func(n string) func() error { return func() error { _, err := m.Disable(n, Options{}); return err } }
	unreg := func(n string) func() error { return func() error { return m.Unregister(n) } }

	refused(t, g, m, syscall.EEXIST, func() error { return reg("livepatch-sample") })
	for _, bad := range []string{"bad-ambiguous", "bad-duplicate", "bad-notpatchable", "bad-oldname", "bad-sympos",
		"bad-unknown-reloc", "bad-unresolved"} {
		refused(t, g, m, syscall.EINVAL, func() error { return reg(bad) })
	}
	refused(t, g, m, syscall.EINVAL, func() error { _, err := m.Register([]byte("not an elf"), "x.o"); return err })
	refused(t, g, m, syscall.ENOENT, en("nope"))
	refused(t, g, m, syscall.ENOENT, dis("nope"))
	refused(t, g, m, syscall.ENOENT, unreg("nope"))
	refused(t, g, m, syscall.EINVAL, dis(sample))            // not enabled
	refused(t, g, m, syscall.EBUSY, en("livepatch_sample2")) // sample below it is disabled
	if _, err := m.Enable(sample, Options{}); err != nil {
		t.Fatal(err)
	}
	refused(t, g, m, syscall.EINVAL, en(sample)) // enable twice
	refused(t, g, m, syscall.EBUSY, unreg(sample))
	if _, err := m.Enable("livepatch_sample2", Options{}); err != nil {
		t.Fatal(err)
	}
	refused(t, g, m, syscall.EBUSY, dis(sample)) // not the top of the stack
	refused(t, g, m, syscall.EBUSY, unreg("livepatch_sample2"))
	if _, err := m.Disable("livepatch_sample2", Options{}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Disable(sample, Options{}); err != nil {
		t.Fatal(err)
	}
	refused(t, g, m, syscall.EBUSY, en("livepatch_sample2")) // still: sample is disabled below it
}

func TestStacking(t *testing.T) {
	g, m := newManager(t, 1, nil)
	site := g.sym(t, "cmdline_proc_show")
	p1, _ := m.Register(patchObj(t, "livepatch-sample"), "livepatch-sample.o")
	p2, err := m.Register(patchObj(t, "livepatch-sample2"), "livepatch-sample2.o")
	if err != nil {
		t.Fatal(err)
	}
	step := func(op func() (*Result, error), want uint64) {
		t.Helper()
		if _, err := op(); err != nil {
			t.Fatal(err)
		}
		if got := target(t, g, site); got != want {
			t.Fatalf("site leads to %#x, want %#x", got, want)
		}
	}
	if _, err := m.Enable(p1.Name, Options{}); err != nil {
		t.Fatal(err)
	}
	n1 := p1.Objects[0].Funcs[0].NewAddr
	if target(t, g, site) != n1 {
		t.Fatal("first patch not active")
	}
	trampBefore := m.Tracer().Alloc().Blocks()
	if _, err := m.Enable(p2.Name, Options{}); err != nil {
		t.Fatal(err)
	}
	n2 := p2.Objects[0].Funcs[0].NewAddr
	if target(t, g, site) != n2 {
		t.Fatal("top of func_stack not active")
	}
	// One klp_ops per old_addr: the second patch only rewrote the slot
	// (one more block: its image, no second trampoline).
	if got := m.Tracer().Alloc().Blocks(); got != trampBefore+1 {
		t.Fatalf("blocks %d, want %d", got, trampBefore+1)
	}
	step(func() (*Result, error) { return m.Disable(p2.Name, Options{}) }, n1)
	step(func() (*Result, error) { return m.Disable(p1.Name, Options{}) }, 0)
	if len(m.ops) != 0 {
		t.Fatalf("ops left: %v", m.ops)
	}
}

func TestConsistencyVCPU(t *testing.T) {
	g, m := newManager(t, 2, nil)
	old := g.sym(t, "cmdline_proc_show")
	if _, err := m.Register(patchObj(t, "livepatch-sample"), "livepatch-sample.o"); err != nil {
		t.Fatal(err)
	}
	// A vCPU inside the old function blocks; one at its entry does not.
	g.setRegs(1, engine.Regs{RIP: old + 9, RSP: g.regs(1).RSP})
	before := g.hash()
	_, err := m.Enable(sample, Options{Deadline: 30 * time.Millisecond})
	if !errors.Is(err, syscall.EBUSY) || !strings.Contains(err.Error(), "CPU 1") || !strings.Contains(err.Error(), "cmdline_proc_show") {
		t.Fatalf("want EBUSY naming CPU 1 in cmdline_proc_show, got %v", err)
	}
	if g.hash() != before {
		t.Fatal("a timed-out transition left changes behind")
	}
	if m.Tracer().Alloc().InUse() != 0 || g.Paused() {
		t.Fatal("rollback incomplete")
	}
	if sf := g.sysfs(t); sf[0].Transition || sf[0].Enabled {
		t.Fatalf("sysfs after rollback: %+v", sf)
	}
	// Its caller's frame not yet pushed: the return address at RSP counts.
	rsp := g.regs(1).RSP
	var w [8]byte
	binary.LittleEndian.PutUint64(w[:], old+20)
	g.WriteVirt(rsp, w[:])
	g.setRegs(1, engine.Regs{RIP: g.sym(t, "seq_printf"), RSP: rsp})
	if _, err := m.Enable(sample, Options{Deadline: 10 * time.Millisecond}); !errors.Is(err, syscall.EBUSY) {
		t.Fatalf("return address at RSP not seen: %v", err)
	}
	binary.LittleEndian.PutUint64(w[:], 0)
	g.WriteVirt(rsp, w[:])
	g.setRegs(1, engine.Regs{RIP: old, RSP: rsp})
	res, err := m.Enable(sample, Options{Deadline: 10 * time.Millisecond})
	if err != nil {
		t.Fatalf("vCPU at the fentry site must not block: %v", err)
	}
	// Disable: a vCPU inside the new function blocks, force skips the check.
	nf := m.Status().Patches[0].Objects[0].Funcs[0].NewAddr
	g.setRegs(0, engine.Regs{RIP: nf + 6, RSP: g.regs(0).RSP})
	if _, err := m.Disable(sample, Options{Deadline: 10 * time.Millisecond}); !errors.Is(err, syscall.EBUSY) || !strings.Contains(err.Error(), "livepatch_cmdline_proc_show") {
		t.Fatalf("want EBUSY in the new function, got %v", err)
	}
	if res, err = m.Disable(sample, Options{Force: true}); err != nil || !res.Forced {
		t.Fatalf("forced disable: %+v %v", res, err)
	}
	// CPU 0 may still be in the new function: unregistering keeps the
	// image in the patch area for good.
	st := m.Status()
	img, size := st.Patches[0].ImageAddr, st.Patches[0].ImageSize
	code := fentryBytes(t, g, nf)
	if err := m.Unregister(sample); err != nil {
		t.Fatal(err)
	}
	st = m.Status()
	if st.Retired != size || st.PatchAreaInUse < size || fentryBytes(t, g, nf) != code || img == 0 {
		t.Fatalf("forced patch's image freed or changed: retired %d of %d, in use %d", st.Retired, size, st.PatchAreaInUse)
	}
}

func TestConsistencyParkedTask(t *testing.T) {
	g, m := newManager(t, 1, nil)
	park := g.sym(t, "klp_park_fn")
	if _, err := m.Register(patchObj(t, "livepatch-park"), ""); err != nil {
		t.Fatal(err)
	}
	g.fakeTask(t, m, 0, 7, "parker", park+0x30)
	// Times out and rolls back.
	before := g.hash()
	_, err := m.Enable("livepatch_park", Options{Deadline: 40 * time.Millisecond})
	if !errors.Is(err, syscall.EBUSY) || !strings.Contains(err.Error(), "pid 7 (parker)") || !strings.Contains(err.Error(), "klp_park_fn") {
		t.Fatalf("want EBUSY naming pid 7 in klp_park_fn, got %v", err)
	}
	if g.hash() != before {
		t.Fatal("rollback left changes")
	}
	// Conservative mode sees it too.
	if _, err := m.Enable("livepatch_park", Options{Deadline: 10 * time.Millisecond, Conservative: true}); !errors.Is(err, syscall.EBUSY) {
		t.Fatalf("conservative: %v", err)
	}
	// Completes once the task leaves; meanwhile transition reads 1.
	var sawTransition bool
	attempts := 0
	g.PauseHook = func() {
		attempts++
		if attempts == 3 {
			sf := g.sysfs(t)
			sawTransition = sf[0].Transition
			g.clearTasks(t, m)
		}
	}
	res, err := m.Enable("livepatch_park", Options{Deadline: 5 * time.Second})
	g.PauseHook = nil
	if err != nil {
		t.Fatal(err)
	}
	if !sawTransition || res.Attempts != 3 {
		t.Fatalf("transition seen %v, attempts %d", sawTransition, res.Attempts)
	}
	if sf := g.sysfs(t); sf[0].Transition || !sf[0].Enabled {
		t.Fatalf("sysfs after completion: %+v", sf)
	}
}

func TestSysfsWrite(t *testing.T) {
	g, m := newManager(t, 1, nil)
	if _, _, err := m.Load(patchObj(t, "livepatch-sample"), "", Options{}); err != nil {
		t.Fatal(err)
	}
	path := "/sys/kernel/livepatch/" + sample
	cases := []struct {
		path, value string
		want        syscall.Errno
	}{
		{path + "/enabled", "1\n", syscall.EINVAL}, // already enabled
		{path + "/enabled", "maybe", syscall.EINVAL},
		{path + "/transition", "1", syscall.EPERM},
		{path + "/force", "1", syscall.EINVAL}, // no transition in progress
		{"/sys/kernel/livepatch/nope/enabled", "0", syscall.ENOENT},
		{path + "/nope", "0", syscall.ENOENT},
	}
	for _, c := range cases {
		if err := m.SysfsWrite(c.path, c.value); !errors.Is(err, c.want) {
			t.Errorf("write %q to %s: want %v, got %v", c.value, c.path, c.want, err)
		}
	}
	if err := m.SysfsWrite(path+"/enabled", "0\n"); err != nil {
		t.Fatal(err)
	}
	if sf := g.sysfs(t); sf[0].Enabled {
		t.Fatal("guest write did not disable")
	}
	if err := m.SysfsWrite(sample+"/enabled", "1"); err != nil {
		t.Fatal(err)
	}
	if !m.Status().Patches[0].Enabled {
		t.Fatal("relative path write did not enable")
	}
}

// TestGuestForce: a guest's write to <patch>/force forces the transition
// in progress; as in Linux's force_store, writing the force file of a
// patch that is not the one in transition is EINVAL and forces nothing.
func TestGuestForce(t *testing.T) {
	g, m := newManager(t, 1, nil)
	for _, n := range []string{"livepatch-park", "livepatch-sample"} {
		if _, err := m.Register(patchObj(t, n), n+".o"); err != nil {
			t.Fatal(err)
		}
	}
	g.fakeTask(t, m, 0, 7, "parker", g.sym(t, "klp_park_fn")+0x30)
	n := 0
	var wrong, right error
	g.PauseHook = func() {
		n++
		switch n {
		case 2:
			wrong = m.SysfsWrite(sample+"/force", "1")
		case 4:
			right = m.SysfsWrite("livepatch_park/force", "1")
		}
	}
	res, err := m.Enable("livepatch_park", Options{Deadline: 5 * time.Second})
	g.PauseHook = nil
	if !errors.Is(wrong, syscall.EINVAL) || !strings.Contains(fmt.Sprint(wrong), "the patch in transition is livepatch_park") {
		t.Fatalf("force written to a patch not in transition: want EINVAL, got %v", wrong)
	}
	if right != nil {
		t.Fatal(right)
	}
	// The writes arrive during the pauses of attempts 2 and 4; an attempt
	// reads the force request before it pauses, so attempts 3 and 4 were
	// still checked and blocked (the wrong write forced nothing) and the
	// fifth was forced.
	if err != nil || !res.Forced || res.Attempts != 5 || !m.Status().Patches[0].Forced || m.Status().Patches[1].Forced {
		t.Fatalf("forced from the guest: %+v %v", res, err)
	}
	// No transition: EINVAL, for any patch.
	if err := m.SysfsWrite("livepatch_park/force", "1"); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("force without a transition: %v", err)
	}
}

func TestReplace(t *testing.T) {
	g, m := newManager(t, 1, nil)
	cmd, pa, pb := g.sym(t, "cmdline_proc_show"), g.sym(t, "klp_pair_a"), g.sym(t, "klp_pair_b")
	for _, n := range []string{"livepatch-sample", "livepatch-pair", "livepatch-replace"} {
		if _, err := m.Register(patchObj(t, n), n+".o"); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []string{sample, "livepatch_pair"} {
		if _, err := m.Enable(n, Options{}); err != nil {
			t.Fatal(err)
		}
	}
	if target(t, g, pa) == 0 || target(t, g, pb) == 0 {
		t.Fatal("pair patch not active")
	}
	res, err := m.Enable("livepatch_replace", Options{})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(res.Replaced, ",") != "livepatch_sample,livepatch_pair" {
		t.Fatalf("replaced %v", res.Replaced)
	}
	st := m.Status()
	if len(st.Patches) != 1 || st.Patches[0].Name != "livepatch_replace" || !st.Patches[0].Replace {
		t.Fatalf("patches after replace: %+v", st.Patches)
	}
	if target(t, g, pa) != 0 || target(t, g, pb) != 0 {
		t.Fatal("functions no longer patched did not get their original code back")
	}
	if target(t, g, cmd) != st.Patches[0].Objects[0].Funcs[0].NewAddr {
		t.Fatal("replace patch not active")
	}
	if sf := g.sysfs(t); len(sf) != 1 || !sf[0].Replace {
		t.Fatalf("sysfs %+v", sf)
	}
	if _, err := m.Unload("livepatch_replace", Options{}); err != nil {
		t.Fatal(err)
	}
	if m.Tracer().Alloc().InUse() != 0 || len(m.Tracer().Redirected()) != 0 {
		t.Fatal("leak after replace + unload")
	}
}

func TestCallbacks(t *testing.T) {
	rec := &cbRecorder{ret: map[uint64]int64{}}
	g, m := newManager(t, 1, rec.run)
	p, err := m.Register(patchObj(t, "livepatch-callbacks"), "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Enable(p.Name, Options{}); err != nil {
		t.Fatal(err)
	}
	cb := p.Objects[0].Callbacks
	if len(rec.calls) != 2 || rec.calls[0] != cb[cbPrePatch] || rec.calls[1] != cb[cbPostPatch] {
		t.Fatalf("enable ran %#x, callbacks %#x", rec.calls, cb)
	}
	if _, err := m.Disable(p.Name, Options{}); err != nil {
		t.Fatal(err)
	}
	if len(rec.calls) != 4 || rec.calls[2] != cb[cbPreUnpatch] || rec.calls[3] != cb[cbPostUnpatch] {
		t.Fatalf("disable ran %#x", rec.calls)
	}
	// pre_patch refusing aborts the enable with its errno; nothing changes.
	rec.ret[cb[cbPrePatch]] = -int64(syscall.EPERM)
	rec.calls = nil
	refused(t, g, m, syscall.EPERM, func() error { _, err := m.Enable(p.Name, Options{}); return err })
	if len(rec.calls) != 1 {
		t.Fatalf("after a refused pre_patch: %#x", rec.calls)
	}
	// Without a callback runner, a patch with callbacks is refused.
	_, m2 := newManager(t, 1, nil)
	if _, err := m2.Register(patchObj(t, "livepatch-callbacks"), ""); err != nil {
		t.Fatal(err)
	}
	if _, err := m2.Enable("livepatch_callbacks", Options{}); !errors.Is(err, syscall.ENODEV) {
		t.Fatalf("want ENODEV, got %v", err)
	}
}

func TestBenchPatch(t *testing.T) {
	g, m := newManager(t, 4, nil)
	p, err := m.Register(patchObj(t, "livepatch-bench"), "")
	if err != nil {
		t.Fatal(err)
	}
	if len(p.funcs()) != 1024 {
		t.Fatalf("%d funcs", len(p.funcs()))
	}
	res, err := m.Enable(p.Name, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Funcs != 1024 || len(m.Tracer().Redirected()) != 1024 {
		t.Fatalf("%d switched, %d redirected", res.Funcs, len(m.Tracer().Redirected()))
	}
	if g.Pauses() != 1 {
		t.Fatalf("%d pauses for one enable, want one batch", g.Pauses())
	}
	if _, err := m.Unload(p.Name, Options{}); err != nil {
		t.Fatal(err)
	}
	if m.Tracer().Alloc().InUse() != 0 {
		t.Fatal("leak")
	}
}

func TestTextMismatchRefused(t *testing.T) {
	g, m := newManager(t, 1, nil)
	site := g.sym(t, "cmdline_proc_show")
	if _, err := m.Register(patchObj(t, "livepatch-sample"), "livepatch-sample.o"); err != nil {
		t.Fatal(err)
	}
	g.WriteVirt(site+1, []byte{0x90}) // someone else changed the text
	refused(t, g, m, syscall.EINVAL, func() error { _, err := m.Enable(sample, Options{}); return err })
	var fe *ftrace.Error
	_, err := m.Enable(sample, Options{})
	if !errors.As(err, &fe) || !strings.Contains(err.Error(), "cmdline_proc_show+0x0") {
		t.Fatalf("error does not name the site: %v", err)
	}
}

func TestPatchAreaFull(t *testing.T) {
	g := newFakeGuest(t, 1)
	m, err := newChecked(Config{Guest: g, Vmlinux: vmlinuxForTest(), PatchArea: patchVirt, PatchAreaSize: 64})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Register(patchObj(t, "livepatch-sample"), "livepatch-sample.o"); err != nil {
		t.Fatal(err)
	}
	refused(t, g, m, syscall.ENOMEM, func() error { _, err := m.Enable(sample, Options{}); return err })
}

// FuzzSysfsWrite: guest writes are untrusted input; any path and value
// gets an errno, never a panic, and only enabled/force can succeed.
func FuzzSysfsWrite(f *testing.F) {
	g, m := newManager(f, 1, nil)
	if _, err := m.Register(patchObj(f, "livepatch-sample"), "livepatch-sample.o"); err != nil {
		f.Fatal(err)
	}
	_ = g
	for _, s := range []string{"/sys/kernel/livepatch/livepatch_sample/enabled", "livepatch_sample/force", "/", "", "../../x", "a/b/c"} {
		f.Add(s, "1")
	}
	f.Fuzz(func(t *testing.T, path, value string) {
		err := m.SysfsWrite(path, value)
		if err == nil {
			if !strings.HasSuffix(path, "/enabled") {
				t.Fatalf("write to %q accepted", path)
			}
			return
		}
		var le *Error
		if !errors.As(err, &le) || le.Errno == 0 {
			t.Fatalf("error without errno: %v", err)
		}
	})
}

func TestPauseFailureRetried(t *testing.T) {
	g, m := newManager(t, 2, nil)
	if _, err := m.Register(patchObj(t, "livepatch-sample"), "livepatch-sample.o"); err != nil {
		t.Fatal(err)
	}
	n := 0
	g.PauseErr = func() error {
		n++
		if n <= 2 {
			return errors.New("vCPU 1 did not stop")
		}
		return nil
	}
	res, err := m.Enable(sample, Options{})
	if err != nil || res.Attempts != 3 {
		t.Fatalf("want success on the third attempt: %+v %v", res, err)
	}
	if _, err := m.Disable(sample, Options{}); err != nil {
		t.Fatal(err)
	}
	g.PauseErr = func() error { return errors.New("vCPU 1 did not stop") }
	refused(t, g, m, syscall.EBUSY, func() error { _, err := m.Enable(sample, Options{Deadline: 20 * time.Millisecond}); return err })
	if g.Paused() {
		t.Fatal("left paused")
	}
}

// BenchmarkSwitch measures the host-side work of an enable+disable pair
// on the fake guest (no engine: the pause is free), split into the
// window's parts.
func BenchmarkSwitch(b *testing.B) {
	for _, obj := range []string{"livepatch-sample", "livepatch-bench"} {
		b.Run(obj, func(b *testing.B) {
			g, m := newManager(b, 2, nil)
			for i := 0; i < 6; i++ {
				g.fakeTask(b, m, i, uint32(10+i), "worker", g.sym(b, "_start")+1)
			}
			p, err := m.Register(patchObj(b, obj), obj+".o")
			if err != nil {
				b.Fatal(err)
			}
			var check, poke, window time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				res, err := m.Enable(p.Name, Options{})
				if err != nil {
					b.Fatal(err)
				}
				check += res.Check
				poke += res.Poke
				window += res.PauseWindow
				if _, err := m.Disable(p.Name, Options{}); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(check.Nanoseconds())/float64(b.N), "check-ns")
			b.ReportMetric(float64(poke.Nanoseconds())/float64(b.N), "poke-ns")
			b.ReportMetric(float64(window.Nanoseconds())/float64(b.N), "window-ns")
		})
	}
}

// snapGuest is a guest whose machine snapshots registers at pause time;
// Regs must not be needed then.
type snapGuest struct {
	*fakeGuest
	snaps int
}

func (s *snapGuest) PausedRegs() ([]engine.Regs, error) {
	s.snaps++
	return []engine.Regs{s.regs(0), s.regs(1)}, nil
}

func (s *snapGuest) Regs(int) (engine.Regs, error) {
	return engine.Regs{}, errors.New("Regs called although a pause snapshot exists")
}

func TestPausedRegsSnapshot(t *testing.T) {
	fg := newFakeGuest(t, 2)
	g := &snapGuest{fakeGuest: fg}
	m, err := newChecked(Config{Guest: g, Vmlinux: vmlinuxForTest(), PatchArea: patchVirt, PatchAreaSize: fakePatch})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Register(patchObj(t, "livepatch-sample"), "livepatch-sample.o"); err != nil {
		t.Fatal(err)
	}
	fg.setRegs(1, engine.Regs{RIP: fg.sym(t, "cmdline_proc_show") + 9, RSP: fg.regs(1).RSP})
	if _, err := m.Enable(sample, Options{Deadline: 10 * time.Millisecond}); !errors.Is(err, syscall.EBUSY) || !strings.Contains(err.Error(), "CPU 1") {
		t.Fatalf("want EBUSY on CPU 1 from the snapshot, got %v", err)
	}
	fg.setRegs(1, fg.regs(0))
	if _, err := m.Enable(sample, Options{}); err != nil || g.snaps == 0 {
		t.Fatalf("enable with a snapshot: %v (%d snapshots)", err, g.snaps)
	}
}

func TestVCPUInTrampolineBlocks(t *testing.T) {
	g, m := newManager(t, 1, nil)
	if _, _, err := m.Load(patchObj(t, "livepatch-sample"), "livepatch-sample.o", Options{}); err != nil {
		t.Fatal(err)
	}
	s, ok := m.Tracer().Site(g.sym(t, "cmdline_proc_show"))
	if !ok || s.Tramp == 0 {
		t.Fatalf("site %+v", s)
	}
	// About to execute `jmp *slot`: freeing the trampoline now would send
	// it through freed memory.
	g.setRegs(0, engine.Regs{RIP: s.Tramp, RSP: g.regs(0).RSP})
	_, err := m.Disable(sample, Options{Deadline: 10 * time.Millisecond})
	if !errors.Is(err, syscall.EBUSY) || !strings.Contains(err.Error(), "trampoline") {
		t.Fatalf("want EBUSY in the trampoline, got %v", err)
	}
}

// TestSysfsFailureRollsBack: the switch succeeded but the guest's sysfs
// could not be updated: the switch is undone and nothing is left behind.
func TestSysfsFailureRollsBack(t *testing.T) {
	g, m := newManager(t, 1, nil)
	if _, err := m.Register(patchObj(t, "livepatch-sample"), "livepatch-sample.o"); err != nil {
		t.Fatal(err)
	}
	st := g.sym(t, "klp_sysfs_state")
	g.WriteErr = func(va uint64, n int) error {
		if va >= st && va < st+guestkernel.SysfsStateSize {
			return errors.New("injected sysfs write fault")
		}
		return nil
	}
	refused(t, g, m, syscall.EIO, func() error { _, err := m.Enable(sample, Options{}); return err })
	if len(m.Tracer().Redirected()) != 0 || m.Tracer().Alloc().InUse() != 0 || m.Status().Patches[0].Enabled {
		t.Fatal("state left changed")
	}
	g.WriteErr = nil
	if _, err := m.Enable(sample, Options{}); err != nil {
		t.Fatal(err)
	}
	g.WriteErr = func(va uint64, n int) error {
		if va >= st && va < st+guestkernel.SysfsStateSize {
			return errors.New("injected sysfs write fault")
		}
		return nil
	}
	refused(t, g, m, syscall.EIO, func() error { _, err := m.Disable(sample, Options{}); return err })
	if len(m.Tracer().Redirected()) != 1 || !m.Status().Patches[0].Enabled {
		t.Fatal("disable not rolled back")
	}
}

func TestImageWriteFailure(t *testing.T) {
	g, m := newManager(t, 1, nil)
	if _, err := m.Register(patchObj(t, "livepatch-sample"), "livepatch-sample.o"); err != nil {
		t.Fatal(err)
	}
	g.WriteErr = func(va uint64, n int) error {
		if va >= patchVirt && n > ftrace.TrampSize {
			return errors.New("injected patch-area fault")
		}
		return nil
	}
	refused(t, g, m, syscall.EIO, func() error { _, err := m.Enable(sample, Options{}); return err })
	// Trampoline staging fails: also nothing left.
	g.WriteErr = func(va uint64, n int) error {
		if va >= patchVirt && n == ftrace.TrampSize {
			return errors.New("injected trampoline fault")
		}
		return nil
	}
	refused(t, g, m, syscall.EIO, func() error { _, err := m.Enable(sample, Options{}); return err })
	if m.Tracer().Alloc().InUse() != 0 {
		t.Fatal("leak")
	}
}

// TestConsistencyPreemptedAtCalleeEntry is the state behind the consistency
// violations first seen on kvm_pvm: a task preempted by the timer at the
// first instruction of klp_pair_b, called from the patch's new klp_pair_a.
// The caller (the new klp_pair_a, in the patch area) is only in the word at
// the interrupted RSP; the frame chain skips it. Disabling the patch then
// would return the task into the new A with the old B: a torn pair. The
// check must see it and refuse (EBUSY naming the new function).
func TestConsistencyPreemptedAtCalleeEntry(t *testing.T) {
	g, m := newManager(t, 1, nil)
	if _, _, err := m.Load(patchObj(t, "livepatch-pair"), "", Options{}); err != nil {
		t.Fatal(err)
	}
	var newA uint64
	for _, f := range m.Status().Patches[0].Objects[0].Funcs {
		if f.OldName == "klp_pair_a" {
			newA = f.NewAddr
		}
	}
	b := g.sym(t, "klp_pair_b")
	worker := g.sym(t, "worker")
	if newA == 0 || b == 0 || worker == 0 {
		t.Fatal("symbols missing")
	}
	if err := g.SetPreemptedTask(0, 1, "worker/0", b, []uint64{newA + 0xe, 0}, worker+0x55); err != nil {
		t.Fatal(err)
	}
	before := g.hash()
	_, err := m.Disable("livepatch_pair", Options{Deadline: 20 * time.Millisecond})
	if !errors.Is(err, syscall.EBUSY) || !strings.Contains(err.Error(), "pid 1 (worker/0)") || !strings.Contains(err.Error(), "klp_pair_a") {
		t.Fatalf("want EBUSY naming pid 1 in the new klp_pair_a, got %v", err)
	}
	if g.hash() != before {
		t.Fatal("refused disable changed guest memory")
	}
	// The same task returning into the old klp_pair_a blocks the enable
	// direction too (kernel text: the walker always knew it).
	if _, err := m.Disable("livepatch_pair", Options{Force: true}); err != nil {
		t.Fatal(err)
	}
	a := g.sym(t, "klp_pair_a")
	if err := g.SetPreemptedTask(0, 1, "worker/0", b, []uint64{a + 0x36, 0}, worker+0x55); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Enable("livepatch_pair", Options{Deadline: 20 * time.Millisecond}); !errors.Is(err, syscall.EBUSY) || !strings.Contains(err.Error(), "klp_pair_a") {
		t.Fatalf("want EBUSY naming klp_pair_a, got %v", err)
	}
	// Once the task is elsewhere, the switch goes through.
	if err := g.SetPreemptedTask(0, 1, "worker/0", worker+0x55, []uint64{0, 0}, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Enable("livepatch_pair", Options{Deadline: 20 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
}

// TestProgressGuarantee: a vCPU running inside a changing function is let
// run on alone, inside the same pause, to the return address of its
// outermost changing frame; the switch then completes in that one
// attempt. Without it (NoProgress) the same guest never lets the switch
// through, and the deadline error names what blocked every attempt.
func TestProgressGuarantee(t *testing.T) {
	g, m := newManager(t, 2, nil)
	if _, err := m.Register(patchObj(t, "livepatch-pair"), ""); err != nil {
		t.Fatal(err)
	}
	a := g.sym(t, "klp_pair_a")
	ret := g.sym(t, "worker") + 0x55
	// vCPU 1 in klp_pair_a's loop, its frame returning into worker
	rbp := g.regs(1).RSP - 0x100
	var w [16]byte
	binary.LittleEndian.PutUint64(w[8:], ret)
	if err := g.WriteVirt(rbp, w[:]); err != nil {
		t.Fatal(err)
	}
	inA := engine.Regs{RIP: a + 0x20, RSP: rbp - 0x10, RBP: rbp}
	g.setRegs(1, inA)
	var stopsSeen [][]uint64
	g.Step = func(stops map[int][]uint64) int {
		stopsSeen = append(stopsSeen, stops[1])
		if len(stops) != 1 || len(stops[1]) != 1 {
			return 0
		}
		// it runs until it returns into worker
		g.setRegs(1, engine.Regs{RIP: stops[1][0], RSP: rbp + 16})
		return 1
	}
	res, err := m.Enable("livepatch_pair", Options{Deadline: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if res.Attempts != 1 || res.Steps != 1 || len(stopsSeen) != 1 || stopsSeen[0][0] != ret {
		t.Fatalf("attempts %d steps %d stops %x: want one attempt, one step to %#x", res.Attempts, res.Steps, stopsSeen, ret)
	}
	// Back inside (now the new klp_pair_a blocks the disable), progress off.
	if _, err := m.Disable("livepatch_pair", Options{Force: true}); err != nil {
		t.Fatal(err)
	}
	g.setRegs(1, inA)
	g.Steps = 0
	_, err = m.Enable("livepatch_pair", Options{Deadline: 30 * time.Millisecond, NoProgress: true})
	if !errors.Is(err, syscall.EBUSY) || !strings.Contains(err.Error(), "CPU 1 is in klp_pair_a") || !regexp.MustCompile(`blocked (\d+) of (\d+) attempts`).MatchString(err.Error()) {
		t.Fatalf("want EBUSY naming CPU 1 in klp_pair_a with its count, got %v", err)
	}
	if g.Steps != 0 {
		t.Fatalf("NoProgress still stepped %d times", g.Steps)
	}
	// A sleeping task inside a changing function is not stepped over: it
	// blocks as in Linux, and the vCPUs are not run for it.
	g.setRegs(1, engine.Regs{RIP: ret, RSP: rbp + 16})
	g.fakeTask(t, m, 0, 9, "sleeper", a+0x36)
	_, err = m.Enable("livepatch_pair", Options{Deadline: 30 * time.Millisecond})
	if !errors.Is(err, syscall.EBUSY) || !strings.Contains(err.Error(), "pid 9 (sleeper)") {
		t.Fatalf("want EBUSY naming the sleeping task, got %v", err)
	}
	if g.Steps != 0 {
		t.Fatalf("stepped %d times for a sleeping task", g.Steps)
	}
}

// TestProgressBudget: a vCPU that never leaves (the hook does not move it)
// costs at most the step budget per attempt, and the transition still
// times out cleanly.
func TestProgressBudget(t *testing.T) {
	g, m := newManager(t, 1, nil)
	if _, err := m.Register(patchObj(t, "livepatch-pair"), ""); err != nil {
		t.Fatal(err)
	}
	a := g.sym(t, "klp_pair_a")
	g.setRegs(0, engine.Regs{RIP: a + 0x20, RSP: g.regs(0).RSP})
	g.Step = func(map[int][]uint64) int { time.Sleep(100 * time.Microsecond); return 0 }
	before := g.hash()
	_, err := m.Enable("livepatch_pair", Options{Deadline: 40 * time.Millisecond})
	if !errors.Is(err, syscall.EBUSY) {
		t.Fatalf("want EBUSY, got %v", err)
	}
	if g.hash() != before || g.Paused() || g.Steps == 0 {
		t.Fatalf("after a timed-out progress: changed %v, paused %v, steps %d", g.hash() != before, g.Paused(), g.Steps)
	}
}

// TestConsistencySwitchInFlight: a task the guest already marks running on
// vCPU 1 (schedule() sets next's on_cpu before the stack switch) whose
// saved frames are inside a changing function, while vCPU 1 still runs the
// previous task. It is neither live (vCPU 1 is not on its stack) nor
// switched out: it must block, as a context switch in flight on vCPU 1.
func TestConsistencySwitchInFlight(t *testing.T) {
	g, m := newManager(t, 2, nil)
	if _, err := m.Register(patchObj(t, "livepatch-pair"), ""); err != nil {
		t.Fatal(err)
	}
	g.fakeTask(t, m, 0, 2, "worker/1", g.sym(t, "klp_pair_a")+0x36)
	if err := g.SetTaskCPU(0, 1); err != nil {
		t.Fatal(err)
	}
	before := g.hash()
	_, err := m.Enable("livepatch_pair", Options{Deadline: 20 * time.Millisecond})
	if !errors.Is(err, syscall.EBUSY) || !strings.Contains(err.Error(), "CPU 1 (pid 2 worker/1): a context switch") {
		t.Fatalf("want EBUSY naming the switch in flight on CPU 1, got %v", err)
	}
	if g.hash() != before {
		t.Fatal("refused enable changed guest memory")
	}
	// The switch completes (the task is switched out again): its frames
	// are walked and still block, now as a sleeping task.
	if err := g.SetTaskCPU(0, -1); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Enable("livepatch_pair", Options{Deadline: 20 * time.Millisecond}); !errors.Is(err, syscall.EBUSY) || !strings.Contains(err.Error(), "pid 2 (worker/1) is in klp_pair_a") {
		t.Fatalf("want EBUSY naming pid 2 in klp_pair_a, got %v", err)
	}
}

// TestConservativeInterruptedInTrampoline: in conservative mode every stack
// word is taken as a return address (matched at word-1), but a word can
// also be an interrupted RIP, exact. A task preempted on the trampoline's
// single instruction (jmp *slot) has only that exact word in the
// trampoline; matched at word-1 it falls outside, and a disable would free
// the trampoline and put B back while the task is about to run the new A:
// a torn pair. Found by the stress test (1 in ~19,000 conservative cycles
// on kvm_pvm); the frame-pointer mode matches interrupted frames exactly.
func TestConservativeInterruptedInTrampoline(t *testing.T) {
	g, m := newManager(t, 1, nil)
	if _, _, err := m.Load(patchObj(t, "livepatch-pair"), "", Options{}); err != nil {
		t.Fatal(err)
	}
	var tramp uint64
	for _, f := range m.Status().Patches[0].Objects[0].Funcs {
		if f.OldName == "klp_pair_a" {
			s, ok := m.Tracer().Site(f.Site)
			if !ok || s.Tramp == 0 {
				t.Fatal("no trampoline for klp_pair_a")
			}
			tramp = s.Tramp
		}
	}
	worker := g.sym(t, "worker")
	if err := g.SetPreemptedTask(0, 1, "worker/0", tramp, []uint64{worker + 0x55, 0}, 0); err != nil {
		t.Fatal(err)
	}
	before := g.hash()
	for _, cons := range []bool{false, true} {
		_, err := m.Disable("livepatch_pair", Options{Deadline: 20 * time.Millisecond, Conservative: cons})
		if !errors.Is(err, syscall.EBUSY) || !strings.Contains(err.Error(), "trampoline") {
			t.Fatalf("conservative=%v: want EBUSY naming the trampoline, got %v", cons, err)
		}
		if g.hash() != before {
			t.Fatal("refused disable changed guest memory")
		}
	}
}

// resumeFailGuest resumes (the vCPUs do run again) but reports that
// Resume failed while fail is set.
type resumeFailGuest struct {
	*fakeGuest
	fail bool
}

var errResume = errors.New("injected resume fault")

func (g *resumeFailGuest) Resume() error {
	if err := g.fakeGuest.Resume(); err != nil {
		return err
	}
	if g.fail {
		return errResume
	}
	return nil
}

// TestResumeErrorsReported: a Resume that fails is never dropped. After a
// switch that stands it is in Result.ResumeErr (the operation
// succeeded); after a failed poke or a failed rollback it is joined to
// that error, whose errno still decides.
func TestResumeErrorsReported(t *testing.T) {
	fg := newFakeGuest(t, 1)
	g := &resumeFailGuest{fakeGuest: fg}
	m, err := newChecked(Config{Guest: g, Vmlinux: vmlinuxForTest(), PatchArea: patchVirt, PatchAreaSize: fakePatch})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Register(patchObj(t, "livepatch-sample"), "livepatch-sample.o"); err != nil {
		t.Fatal(err)
	}
	site := fg.sym(t, "cmdline_proc_show")
	onSite := func(va uint64, n int) bool { return va <= site && site < va+uint64(n) }
	g.fail = true

	// The switch stands: success, with the Resume error in the result.
	res, err := m.Enable(sample, Options{})
	if err != nil || !strings.Contains(res.ResumeErr, errResume.Error()) {
		t.Fatalf("enable with a failed resume: %+v %v", res, err)
	}
	g.fail = false
	if _, err := m.Disable(sample, Options{}); err != nil {
		t.Fatal(err)
	}

	// The poke fails, and so does the Resume after it.
	g.fail = true
	fg.WriteErr = func(va uint64, n int) error {
		if onSite(va, n) {
			return errors.New("injected poke fault")
		}
		return nil
	}
	_, err = m.Enable(sample, Options{})
	if !errors.Is(err, syscall.EIO) || !errors.Is(err, errResume) || !strings.Contains(err.Error(), "text poke") ||
		!strings.Contains(err.Error(), "resuming the guest also failed") {
		t.Fatalf("want the poke's EIO with the resume error, got %v", err)
	}

	// The sysfs update fails after the switch, the rollback's poke fails,
	// and so does the Resume after it.
	st := fg.sym(t, "klp_sysfs_state")
	sysfsFailed := false
	fg.WriteErr = func(va uint64, n int) error {
		if va >= st && va < st+guestkernel.SysfsStateSize {
			sysfsFailed = true
			return errors.New("injected sysfs write fault")
		}
		if sysfsFailed && onSite(va, n) {
			return errors.New("injected rollback fault")
		}
		return nil
	}
	_, err = m.Enable(sample, Options{})
	if !errors.Is(err, syscall.EIO) || !strings.Contains(err.Error(), "injected rollback fault") ||
		!strings.Contains(err.Error(), "resuming the guest also failed: "+errResume.Error()) {
		t.Fatalf("want the rollback's error with the resume error, got %v", err)
	}
}

// TestLockChecks: mustHold catches an unexported method reached without
// m.mu, and lets it through with the lock held.
func TestLockChecks(t *testing.T) {
	_, m := newManager(t, 1, nil)
	func() {
		defer func() {
			if r := recover(); r == nil || !strings.Contains(fmt.Sprint(r), "m.mu must be held") {
				t.Fatalf("no lock, no panic: %v", r)
			}
		}()
		m.find(sample)
	}()
	m.mu.Lock()
	m.find(sample)
	m.mu.Unlock()
}
