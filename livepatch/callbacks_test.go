package livepatch

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"klp-kvm/elfpatch"
	"klp-kvm/guestkernel"
	"klp-kvm/kvm/engine"
)

const cbPatch = "livepatch_callbacks"

// syncLog is a log for Config.Logf that the test reads.
type syncLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *syncLog) logf(f string, a ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintf(&l.b, f+"\n", a...)
}

func (l *syncLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// newCallbacksManager is a Manager whose callbacks run on rec (each
// bounded by 50 ms, unless tune changes the Config), with the callbacks
// patch registered, and a log that the test reads.
func newCallbacksManager(t *testing.T, rec *cbRecorder, tune ...func(*Config)) (*fakeGuest, *Manager, *Patch, *syncLog) {
	t.Helper()
	g := newFakeGuest(t, 2)
	log := &syncLog{}
	cfg := Config{Guest: g, Vmlinux: vmlinuxForTest(), PatchArea: patchVirt, PatchAreaSize: fakePatch,
		Callbacks: rec.run, CallbackTimeout: 50 * time.Millisecond, Logf: log.logf}
	for _, f := range tune {
		f(&cfg)
	}
	m, err := newChecked(cfg)
	if err != nil {
		t.Fatal(err)
	}
	p, err := m.Register(patchObj(t, "livepatch-callbacks"), "")
	if err != nil {
		t.Fatal(err)
	}
	rec.m = m
	return g, m, p, log
}

// switched checks an ErrSwitched error: the switch happened (the Result
// is there, the patch is in the state asked for) and the error names the
// callback that did not run.
func switched(t *testing.T, m *Manager, res *Result, err error, enabled bool, cb string) {
	t.Helper()
	if !errors.Is(err, ErrSwitched) || !errors.Is(err, syscall.EREMOTEIO) || !strings.Contains(err.Error(), "EREMOTEIO") ||
		!strings.Contains(err.Error(), cb+" callback of object vmlinux") || !strings.Contains(err.Error(), "switched") {
		t.Fatalf("want ErrSwitched naming %s, got %v", cb, err)
	}
	if res == nil || !strings.Contains(res.CallbackErr, cb) {
		t.Fatalf("no result, or it does not name %s: %+v", cb, res)
	}
	st := m.Status()
	if len(st.Patches) > 0 && st.Patches[0].Enabled != enabled {
		t.Fatalf("enabled %v, want %v", st.Patches[0].Enabled, enabled)
	}
	if st.Last == nil || !strings.Contains(st.Last.CallbackErr, cb) {
		t.Fatalf("last_op does not name %s: %+v", cb, st.Last)
	}
}

// TestCallbackFailuresReported: a void callback (post_patch, pre_unpatch,
// post_unpatch) that cannot run does not stop the operation, as in Linux,
// but it is never a silent success: the operation returns its Result
// with an ErrSwitched error naming the callback, and Status's last_op
// records it. A guest's sysfs write gets the errno of the state reached
// (0: the switch was made), and the host log says what failed.
func TestCallbackFailuresReported(t *testing.T) {
	errDied := errors.New("agent: guest-call: agent channel closed")
	rec := &cbRecorder{fail: map[string]error{}}
	_, m, p, log := newCallbacksManager(t, rec)

	rec.fail["post_patch"] = errDied
	res, err := m.Enable(p.Name, Options{})
	switched(t, m, res, err, true, "post_patch")
	if got := rec.called(); !slices.Equal(got, []string{"pre_patch", "post_patch"}) {
		t.Fatalf("enable called %v", got)
	}
	delete(rec.fail, "post_patch")

	rec.fail["post_unpatch"] = errDied
	res, err = m.Disable(p.Name, Options{})
	switched(t, m, res, err, false, "post_unpatch")

	// pre_unpatch is void too: the disable goes on, and says so.
	rec.called()
	if _, err := m.Enable(p.Name, Options{}); err != nil {
		t.Fatal(err)
	}
	delete(rec.fail, "post_unpatch")
	rec.fail["pre_unpatch"] = errDied
	res, err = m.Disable(p.Name, Options{})
	switched(t, m, res, err, false, "pre_unpatch")
	if got := rec.called(); !slices.Equal(got, []string{"pre_patch", "post_patch", "pre_unpatch", "post_unpatch"}) {
		t.Fatalf("enable+disable called %v", got)
	}
	delete(rec.fail, "pre_unpatch")

	// Unload: disabled and unregistered, and the error says what did not
	// run (the issue: `patch unload` said ok though the guest died in
	// post_unpatch).
	if _, err := m.Enable(p.Name, Options{}); err != nil {
		t.Fatal(err)
	}
	rec.fail["post_unpatch"] = errDied
	res, err = m.Unload(p.Name, Options{})
	switched(t, m, res, err, false, "post_unpatch")
	t.Logf("unload: %v", err)
	if len(m.Patches()) != 0 {
		t.Fatalf("unload left %v", m.Patches())
	}

	// Load: loaded and enabled (not unregistered again: the switch
	// stands), with the error.
	rec.fail = map[string]error{"post_patch": errDied}
	lp, res, err := m.Load(patchObj(t, "livepatch-callbacks"), "", Options{})
	switched(t, m, res, err, true, "post_patch")
	if lp == nil || len(m.Patches()) != 1 {
		t.Fatalf("load: %v, patches %v", lp, m.Patches())
	}

	// The guest's write: 0, the state it asked for; the log has it.
	rec.fail = map[string]error{"post_unpatch": errDied}
	if err := m.SysfsWrite(cbPatch+"/enabled", "0"); err != nil {
		t.Fatalf("guest write whose switch was made: %v", err)
	}
	if m.Status().Patches[0].Enabled || !strings.Contains(log.String(), "post_unpatch callback of object vmlinux") {
		t.Fatalf("enabled after the write, or the log does not say: %q", log.String())
	}

	// A pre_patch that cannot run aborts the enable (EIO), as before.
	rec.fail = map[string]error{"pre_patch": errDied}
	_, err = m.Enable(cbPatch, Options{})
	if !errors.Is(err, syscall.EIO) || errors.Is(err, ErrSwitched) || !strings.Contains(err.Error(), "pre_patch callback") || m.Status().Patches[0].Enabled {
		t.Fatalf("failed pre_patch: %v", err)
	}
}

// TestCallbacksBalanced: every pre callback that ran is followed by the
// post callback of the state the patch ends in, also when the switch is
// not made or is undone: an enable that does not complete runs
// post_unpatch (klp_cancel_transition); a disable that does not
// complete runs post_patch again (a reversed unpatch transition
// completes towards KLP_PATCHED), whether its transition timed out or
// its committed switch was undone because the guest's sysfs could not
// show it.
func TestCallbacksBalanced(t *testing.T) {
	rec := &cbRecorder{}
	g, m, p, _ := newCallbacksManager(t, rec)
	st := g.sym(t, "klp_sysfs_state")
	sysfsFault := func(va uint64, n int) error {
		if va >= st && va < st+guestkernel.SysfsStateSize {
			return errors.New("injected sysfs write fault")
		}
		return nil
	}
	// The enable's switch is undone: post_unpatch.
	g.WriteErr = sysfsFault
	if _, err := m.Enable(p.Name, Options{}); !errors.Is(err, syscall.EIO) {
		t.Fatalf("want EIO, got %v", err)
	}
	g.WriteErr = nil
	if got := rec.called(); !slices.Equal(got, []string{"pre_patch", "post_unpatch"}) {
		t.Fatalf("undone enable called %v", got)
	}
	// The enable's transition times out: post_unpatch.
	cmd := g.sym(t, "cmdline_proc_show")
	idle := g.regs(1)
	g.setRegs(1, engine.Regs{RIP: cmd + 9, RSP: idle.RSP})
	if _, err := m.Enable(p.Name, Options{Deadline: 20 * time.Millisecond}); !errors.Is(err, syscall.EBUSY) {
		t.Fatalf("want EBUSY, got %v", err)
	}
	g.setRegs(1, idle)
	if got := rec.called(); !slices.Equal(got, []string{"pre_patch", "post_unpatch"}) {
		t.Fatalf("timed-out enable called %v", got)
	}
	if _, err := m.Enable(p.Name, Options{}); err != nil {
		t.Fatal(err)
	}
	rec.called()
	// The disable's switch is undone: post_patch again.
	g.WriteErr = sysfsFault
	if _, err := m.Disable(p.Name, Options{}); !errors.Is(err, syscall.EIO) {
		t.Fatalf("want EIO, got %v", err)
	}
	g.WriteErr = nil
	if got := rec.called(); !slices.Equal(got, []string{"pre_unpatch", "post_patch"}) {
		t.Fatalf("undone disable called %v", got)
	}
	if !m.Status().Patches[0].Enabled || len(m.Tracer().Redirected()) != 1 {
		t.Fatal("the undone disable left the patch disabled")
	}
	// The disable's transition times out: post_patch again.
	nf := m.Status().Patches[0].Objects[0].Funcs[0].NewAddr
	g.setRegs(1, engine.Regs{RIP: nf + 6, RSP: idle.RSP})
	if _, err := m.Disable(p.Name, Options{Deadline: 20 * time.Millisecond}); !errors.Is(err, syscall.EBUSY) {
		t.Fatalf("want EBUSY, got %v", err)
	}
	g.setRegs(1, idle)
	if got := rec.called(); !slices.Equal(got, []string{"pre_unpatch", "post_patch"}) {
		t.Fatalf("timed-out disable called %v", got)
	}
	if _, err := m.Disable(p.Name, Options{}); err != nil {
		t.Fatal(err)
	}
	if got := rec.called(); !slices.Equal(got, []string{"pre_unpatch", "post_unpatch"}) {
		t.Fatalf("disable called %v", got)
	}
}

// TestCallbackTimeoutQuarantines: a callback call that times out may
// still run in the guest (the guest-call is queued there), so the image
// that holds the callback is never freed, restored or reused: it stays
// reserved, counted as patch_area_quarantined, and the error says so.
func TestCallbackTimeoutQuarantines(t *testing.T) {
	rec := &cbRecorder{hang: map[string]bool{"pre_patch": true}}
	g, m, p, _ := newCallbacksManager(t, rec)
	size := p.ImageSize

	// pre_patch times out: the enable fails (EIO) and its image, which
	// pre_patch runs from, is quarantined.
	t0 := time.Now()
	_, err := m.Enable(p.Name, Options{})
	if !errors.Is(err, syscall.EIO) || !strings.Contains(err.Error(), "pre_patch callback") ||
		!strings.Contains(err.Error(), "context deadline exceeded") || !strings.Contains(err.Error(), "quarantined") {
		t.Fatalf("want EIO naming the timed-out pre_patch and the quarantine, got %v", err)
	}
	t.Logf("pre_patch timed out after %v: %v", time.Since(t0).Round(time.Millisecond), err)
	old := rec.imgs[0]
	code := make([]byte, size)
	if err := g.ReadVirt(old, code); err != nil {
		t.Fatal(err)
	}
	st := m.Status()
	if st.Quarantined != size || st.PatchAreaInUse != size || st.Patches[0].Enabled || st.Patches[0].ImageAddr != 0 {
		t.Fatalf("after the timeout: quarantined %d (image %d), in use %d, patch %+v", st.Quarantined, size, st.PatchAreaInUse, st.Patches[0].Patch)
	}
	if got := rec.called(); !slices.Equal(got, []string{"pre_patch"}) {
		t.Fatalf("called %v: the timed-out pre_patch must get no post_unpatch", got)
	}

	// The next enable gets another place; the quarantined image is not
	// touched.
	rec.hang = map[string]bool{"post_unpatch": true}
	if _, err := m.Enable(p.Name, Options{}); err != nil {
		t.Fatal(err)
	}
	img := m.Status().Patches[0].ImageAddr
	if img < old+size && old < img+size {
		t.Fatalf("the new image at %#x overlaps the quarantined one at %#x (%d bytes)", img, old, size)
	}
	// post_unpatch times out in an unload: disabled and unregistered
	// (ErrSwitched), and this image is quarantined too.
	res, err := m.Unload(p.Name, Options{})
	switched(t, m, res, err, false, "post_unpatch")
	if !strings.Contains(err.Error(), "quarantined") {
		t.Fatalf("the unload's error does not say the image is quarantined: %v", err)
	}
	st = m.Status()
	if st.Quarantined != 2*size || st.PatchAreaInUse != 2*size || len(st.Patches) != 0 || len(st.Redirected) != 0 {
		t.Fatalf("after the unload: quarantined %d, in use %d, want %d; patches %d, redirected %d", st.Quarantined, st.PatchAreaInUse,
			2*size, len(st.Patches), len(st.Redirected))
	}
	for _, a := range []uint64{old, img} {
		b := make([]byte, size)
		if err := g.ReadVirt(a, b); err != nil {
			t.Fatal(err)
		}
		if a == old && !slices.Equal(b, code) {
			t.Fatalf("the quarantined image at %#x changed", a)
		}
		if slices.Equal(b, make([]byte, size)) {
			t.Fatalf("the quarantined image at %#x was zeroed", a)
		}
	}
	// And a patch loaded now gets neither place.
	rec.hang = nil
	lp, _, err := m.Load(patchObj(t, "livepatch-callbacks"), "", Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []uint64{old, img} {
		if lp.ImageAddr < a+size && a < lp.ImageAddr+lp.ImageSize {
			t.Fatalf("a new image at %#x reuses the quarantined area at %#x", lp.ImageAddr, a)
		}
	}
	// Callbacks that returned leave nothing behind.
	if _, err := m.Unload(lp.Name, Options{}); err != nil {
		t.Fatal(err)
	}
	if st := m.Status(); st.Quarantined != 2*size || st.PatchAreaInUse != 2*size {
		t.Fatalf("a clean unload changed the quarantine: quarantined %d, in use %d", st.Quarantined, st.PatchAreaInUse)
	}
}

// noFuncs is the callbacks sample with an empty funcs[] (its klp_object's
// funcs pointer moved to the terminator): a patch of callbacks only, as
// Linux allows (test_klp_state's no_funcs).
func noFuncs(t *testing.T) []byte {
	t.Helper()
	data := bytes.Clone(patchObj(t, "livepatch-callbacks"))
	ep, err := elfpatch.ParsePatch(data)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range ep.Sections() {
		if s.Name != ".rela.data.objs" {
			continue
		}
		for off := s.Offset; off+24 <= s.Offset+s.Size; off += 24 {
			if binary.LittleEndian.Uint64(data[off:]) == 8 { // klp_object.funcs
				binary.LittleEndian.PutUint64(data[off+16:], 24) // + sizeof(struct klp_func)
				return data
			}
		}
	}
	t.Fatal("no relocation of klp_object.funcs")
	return nil
}

// A patch of no function registers, enables (its callbacks run, nothing
// is redirected) and disables, as in Linux.
func TestCallbacksOnlyPatch(t *testing.T) {
	rec := &cbRecorder{}
	g := newFakeGuest(t, 2)
	m, err := newChecked(Config{Guest: g, Vmlinux: vmlinuxForTest(), PatchArea: patchVirt, PatchAreaSize: fakePatch, Callbacks: rec.run})
	if err != nil {
		t.Fatal(err)
	}
	rec.m = m
	p, res, err := m.Load(noFuncs(t), "no-funcs.o", Options{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Funcs != 0 || len(p.funcs()) != 0 || len(m.Status().Redirected) != 0 {
		t.Fatalf("result %+v, %d funcs, %d sites redirected", res, len(p.funcs()), len(m.Status().Redirected))
	}
	if got := rec.called(); !slices.Equal(got, []string{"pre_patch", "post_patch"}) {
		t.Fatalf("callbacks %v", got)
	}
	if ps := g.sysfs(t); len(ps) != 1 || !ps[0].Enabled || len(ps[0].Objects) != 1 || len(ps[0].Objects[0].Funcs) != 0 {
		t.Fatalf("sysfs %+v", ps)
	}
	if _, err := m.Unload(p.Name, Options{}); err != nil {
		t.Fatal(err)
	}
	if got := rec.called(); !slices.Equal(got, []string{"pre_unpatch", "post_unpatch"}) {
		t.Fatalf("callbacks %v", got)
	}
	if st := m.Status(); st.PatchAreaInUse != 0 || len(st.Patches) != 0 {
		t.Fatalf("after unload: %+v", st)
	}
}
