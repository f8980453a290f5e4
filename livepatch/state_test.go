package livepatch

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"

	"klp-kvm/elfpatch"
	"klp-kvm/guestkernel"
)

// The test_klp_state patches (guestkernel/patches, after Linux's
// lib/livepatch/test_klp_state*.c): state 1 (console_loglevel), version 1
// in test_klp_state, 2 in test_klp_state2 and test_klp_state3; all three
// atomic replace, callbacks only.
const (
	state1 = "test_klp_state"
	state2 = "test_klp_state2"
	state3 = "test_klp_state3"
)

// listRecorder runs callbacks "in the guest" and records, at each call,
// the callback and klp_patch_list as the guest would read it then, named
// by the Manager's patches (by image address), the one in transition
// marked with a '*', and checks that every states array listed lies in
// guest memory as a klp_state array (what the guest's
// klp_get_prev_state reads).
type listRecorder struct {
	t   *testing.T
	g   *fakeGuest
	m   *Manager
	mu  sync.Mutex
	log []string
	ret map[string]int64 // by "patch/callback": what it returns
	// every patch registered: replaced ones leave m.patches at the
	// switch, before the replacing patch's post_patch is called
	seen []*Patch
}

func (r *listRecorder) run(ctx context.Context, addr, arg uint64) (int64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	who := fmt.Sprintf("%#x", addr)
	names := map[uint64]string{}
	// The call comes from the operation, which holds the Manager's lock.
	for _, p := range r.seen {
		if p.image != nil {
			names[p.image.PatchAddr] = p.Name
		}
		for _, ob := range p.Objects {
			for i, cb := range ob.Callbacks {
				if cb == addr {
					who = p.Name + "/" + elfpatch.CallbackNames[i]
				}
			}
		}
	}
	l, err := r.g.PatchList()
	if err != nil {
		r.t.Errorf("%s: %v", who, err)
	}
	var list []string
	for i, e := range l.Patches {
		n, ok := names[e.Patch]
		if !ok {
			n = fmt.Sprintf("%#x", e.Patch)
		}
		if i == l.Transition {
			n += "*"
		}
		if e.States != 0 {
			// The array the guest would walk: state 1 first, then the
			// terminator.
			var b [2 * 24]byte
			if err := r.g.ReadVirt(e.States, b[:]); err != nil || binary.LittleEndian.Uint64(b[0:]) != 1 ||
				binary.LittleEndian.Uint64(b[24:]) != 0 {
				r.t.Errorf("%s: %s's states at %#x: % x %v", who, n, e.States, b, err)
			}
			n += fmt.Sprintf("(v%d)", binary.LittleEndian.Uint32(b[8:]))
		}
		list = append(list, n)
	}
	r.log = append(r.log, who+" ["+strings.Join(list, " ")+"]")
	return r.ret[who], nil
}

func (r *listRecorder) remember() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range r.m.patches {
		if !slices.Contains(r.seen, p) {
			r.seen = append(r.seen, p)
		}
	}
}

func (r *listRecorder) took() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.log
	r.log = nil
	return out
}

func newStateManager(t *testing.T) (*fakeGuest, *Manager, *listRecorder) {
	t.Helper()
	g := newFakeGuest(t, 2)
	r := &listRecorder{t: t, g: g, ret: map[string]int64{}}
	m, err := newChecked(Config{Guest: g, Vmlinux: vmlinuxForTest(), PatchArea: patchVirt, PatchAreaSize: fakePatch, Callbacks: r.run})
	if err != nil {
		t.Fatal(err)
	}
	r.m = m
	return g, m, r
}

// load registers and enables a prebuilt patch (its name is its file's).
func (r *listRecorder) load(name string) (*Result, error) {
	r.t.Helper()
	m := r.m
	p, err := m.Register(patchObj(r.t, name), name+".o")
	if err != nil {
		r.t.Fatal(err)
	}
	r.remember()
	res, err := m.Enable(p.Name, Options{})
	if err != nil {
		if uerr := m.Unregister(p.Name); uerr != nil {
			r.t.Fatal(uerr)
		}
	}
	return res, err
}

// listed is what klp_patch_list holds now, as names.
func (r *listRecorder) listed() string {
	r.t.Helper()
	l, err := r.g.PatchList()
	if err != nil {
		r.t.Fatal(err)
	}
	var out []string
	for _, e := range l.Patches {
		n := fmt.Sprintf("%#x", e.Patch)
		for _, p := range r.m.Status().Patches {
			if p.ImageAddr != 0 && e.Patch >= p.ImageAddr && e.Patch < p.ImageAddr+p.ImageSize {
				n = p.Name
			}
		}
		out = append(out, n)
	}
	if l.Transition >= 0 {
		out = append(out, fmt.Sprintf("transition %d", l.Transition))
	}
	return "[" + strings.Join(out, " ") + "]"
}

func wantLog(t *testing.T, what string, got []string, want ...string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Fatalf("%s: callbacks and klp_patch_list\n got %q\nwant %q", what, got, want)
	}
}

// klp_patch_list follows Linux's klp_patches and klp_transition_patch
// through test-state.sh's "taking over" and "compatible cumulative
// livepatches": the patch in transition is listed, above the installed
// ones, from its pre_patch to its post_unpatch; a replaced patch stays
// listed, its states readable, until the replacing patch's post_patch
// ran (test_klp_state2 takes the state over there), and its image goes
// only then.
func TestStatePatchList(t *testing.T) {
	_, m, r := newStateManager(t)
	if got := r.listed(); got != "[]" {
		t.Fatalf("initial list %s", got)
	}
	if _, err := r.load(state1); err != nil {
		t.Fatal(err)
	}
	wantLog(t, "enable test_klp_state", r.took(),
		"test_klp_state/pre_patch [test_klp_state*(v1)]",
		"test_klp_state/post_patch [test_klp_state*(v1)]")
	if got := r.listed(); got != "[test_klp_state]" {
		t.Fatalf("after the enable: %s", got)
	}
	res, err := r.load(state2)
	if err != nil {
		t.Fatal(err)
	}
	wantLog(t, "enable test_klp_state2 over test_klp_state", r.took(),
		"test_klp_state2/pre_patch [test_klp_state(v1) test_klp_state2*(v2)]",
		"test_klp_state2/post_patch [test_klp_state(v1) test_klp_state2*(v2)]")
	if !slices.Equal(res.Replaced, []string{state1}) || r.listed() != "[test_klp_state2]" {
		t.Fatalf("replaced %v, list %s", res.Replaced, r.listed())
	}
	// The replaced image is gone now: the replacing one is all the patch
	// area holds (no function, no trampoline).
	if st := m.Status(); len(st.Patches) != 1 || st.PatchAreaInUse != st.Patches[0].ImageSize {
		t.Fatalf("patch area: %+v", st)
	}
	if _, err := r.load(state3); err != nil {
		t.Fatal(err)
	}
	wantLog(t, "enable test_klp_state3 over test_klp_state2", r.took(),
		"test_klp_state3/pre_patch [test_klp_state2(v2) test_klp_state3*(v2)]",
		"test_klp_state3/post_patch [test_klp_state2(v2) test_klp_state3*(v2)]")
	if _, err := m.Disable(state3, Options{}); err != nil {
		t.Fatal(err)
	}
	wantLog(t, "disable test_klp_state3", r.took(),
		"test_klp_state3/pre_unpatch [test_klp_state3*(v2)]",
		"test_klp_state3/post_unpatch [test_klp_state3*(v2)]")
	if got := r.listed(); got != "[]" {
		t.Fatalf("after the disable: %s", got)
	}
	if err := m.Unregister(state3); err != nil {
		t.Fatal(err)
	}
	// A non-cumulative patch without states on top of a state patch:
	// listed, with no states array.
	if _, err := r.load(state2); err != nil {
		t.Fatal(err)
	}
	r.took()
	if _, err := r.load("livepatch-callbacks"); err != nil {
		t.Fatal(err)
	}
	wantLog(t, "enable livepatch_callbacks over test_klp_state2", r.took(),
		"livepatch_callbacks/pre_patch [test_klp_state2(v2) livepatch_callbacks*]",
		"livepatch_callbacks/post_patch [test_klp_state2(v2) livepatch_callbacks*]")
	// Disabling the top one lists only what is below it, and it.
	if _, err := m.Disable("livepatch_callbacks", Options{}); err != nil {
		t.Fatal(err)
	}
	wantLog(t, "disable livepatch_callbacks", r.took(),
		"livepatch_callbacks/pre_unpatch [test_klp_state2(v2) livepatch_callbacks*]",
		"livepatch_callbacks/post_unpatch [test_klp_state2(v2) livepatch_callbacks*]")
	// An enable cancelled by its pre_patch: listed during its callbacks,
	// gone after, with its image.
	r.ret["livepatch_callbacks/pre_patch"] = -int64(syscall.EPERM)
	if _, err := m.Enable("livepatch_callbacks", Options{}); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("want EPERM from pre_patch, got %v", err)
	}
	wantLog(t, "cancelled enable", r.took(),
		"livepatch_callbacks/pre_patch [test_klp_state2(v2) livepatch_callbacks*]")
	if got := r.listed(); got != "[test_klp_state2]" {
		t.Fatalf("after the cancelled enable: %s", got)
	}
}

// klp_is_patch_compatible, at enable (test-state.sh's "incompatible
// cumulative livepatches" and the rules around it): EINVAL naming the
// state, the patch that modified it and both versions; nothing runs,
// nothing changes.
func TestStateCompatibility(t *testing.T) {
	g, m, r := newStateManager(t)
	if _, err := r.load(state2); err != nil {
		t.Fatal(err)
	}
	r.took()
	// Version 1 may not replace version 2.
	p1, err := m.Register(patchObj(t, state1), "")
	if err != nil {
		t.Fatal(err)
	}
	refused(t, g, m, syscall.EINVAL, func() error { _, err := m.Enable(p1.Name, Options{}); return err })
	_, err = m.Enable(p1.Name, Options{})
	for _, s := range []string{"livepatch: enable test_klp_state: not compatible with the already installed livepatches",
		"test_klp_state2 modified system state 1 in version 2", "this patch has it in version 1, older", "(EINVAL)"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("%q does not say %q", err, s)
		}
	}
	if got := r.took(); len(got) != 0 {
		t.Fatalf("callbacks ran for a refused patch: %q", got)
	}
	if err := m.Unregister(p1.Name); err != nil {
		t.Fatal(err)
	}
	// An atomic replace patch without the state may not replace it either.
	pr, err := m.Register(patchObj(t, "livepatch-replace"), "")
	if err != nil {
		t.Fatal(err)
	}
	refused(t, g, m, syscall.EINVAL, func() error { _, err := m.Enable(pr.Name, Options{}); return err })
	if _, err = m.Enable(pr.Name, Options{}); !strings.Contains(fmt.Sprint(err), "this atomic replace patch does not handle it") {
		t.Errorf("replace without the state: %v", err)
	}
	if err := m.Unregister(pr.Name); err != nil {
		t.Fatal(err)
	}
	// Load refuses the same way and leaves nothing registered (its
	// register and unregister did write the sysfs mirror).
	inUse := m.Status().PatchAreaInUse
	if _, _, err := m.Load(patchObj(t, state1), "", Options{}); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("load: want EINVAL, got %v", err)
	}
	if names := m.Patches(); !slices.Equal(names, []string{state2}) || m.Status().PatchAreaInUse != inUse {
		t.Fatalf("after a refused load: %v, %d bytes in use", names, m.Status().PatchAreaInUse)
	}
	// A non-cumulative patch needs no state: it goes on top.
	if _, err := r.load("livepatch-sample"); err != nil {
		t.Fatal(err)
	}
	// ... and a cumulative one must handle its states too: here there
	// are none, so test_klp_state3 (version 2, replace) may replace both.
	if _, err := r.load(state3); err != nil {
		t.Fatal(err)
	}
	if names := m.Patches(); !slices.Equal(names, []string{state3}) {
		t.Fatalf("patches %v", names)
	}
	// Only installed patches count: test_klp_state (version 1) may be
	// enabled once the version 2 one is gone.
	if _, err := m.Unload(state3, Options{}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.load(state1); err != nil {
		t.Fatal(err)
	}
}

// Linux's klp_is_state_compatible, case by case.
func TestIsStateCompatible(t *testing.T) {
	old := State{ID: 1, Version: 2}
	for _, c := range []struct {
		replace bool
		states  []State
		want    bool
	}{
		{false, nil, true},                           // non-cumulative, does not touch it
		{true, nil, false},                           // cumulative, must handle it
		{false, []State{{ID: 1, Version: 1}}, false}, // touches it, in an older version
		{true, []State{{ID: 1, Version: 1}}, false},
		{false, []State{{ID: 1, Version: 2}}, true},
		{true, []State{{ID: 2, Version: 9}, {ID: 1, Version: 3}}, true},
		{true, []State{{ID: 2, Version: 9}}, false}, // another state is not this one
	} {
		p := &Patch{Name: "p", Replace: c.replace, States: c.states}
		if got := isStateCompatible(p, old); got != c.want {
			t.Errorf("replace %v states %v: compatible %v, want %v", c.replace, c.states, got, c.want)
		}
	}
}

// Status shows a patch's states, and only when it has some: the JSON of
// a patch without states is what it was (no "states" key), and the
// guest's sysfs mirror has none (Linux's sysfs shows no states).
func TestStateStatus(t *testing.T) {
	g, m, r := newStateManager(t)
	if _, err := r.load(state2); err != nil {
		t.Fatal(err)
	}
	if _, err := r.load("livepatch-sample"); err != nil {
		t.Fatal(err)
	}
	st := m.Status()
	if !slices.Equal(st.Patches[0].States, []State{{ID: 1, Version: 2}}) || st.Patches[1].States != nil {
		t.Fatalf("states %+v, %+v", st.Patches[0].States, st.Patches[1].States)
	}
	b, err := json.Marshal(st.Patches)
	if err != nil {
		t.Fatal(err)
	}
	var raw []map[string]any
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	if _, ok := raw[0]["states"]; !ok {
		t.Errorf("no states in %s", b)
	}
	if _, ok := raw[1]["states"]; ok {
		t.Errorf("states of a patch without any in %s", b)
	}
	for _, sp := range g.sysfs(t) {
		if sp.Name == state2 && (len(sp.Objects) != 1 || len(sp.Objects[0].Funcs) != 0) {
			t.Errorf("sysfs %+v", sp)
		}
	}
}

// Patch objects built before klp_state (test/e2e/testdata/abi1: the
// samples as committed then) register, enable with their callbacks,
// stack, show no states, are listed without a states array, and may be
// replaced by a state patch (they have no state to hand over).
func TestABI1Objects(t *testing.T) {
	_, m, r := newStateManager(t)
	read := func(name string) []byte {
		b, err := os.ReadFile("../test/e2e/testdata/abi1/" + name + ".o")
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, name := range []string{"livepatch-sample", "livepatch-callbacks"} {
		p, err := m.Register(read(name), name+".o")
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if p.parsed.ABI != elfpatch.PatchABI1 || p.States != nil {
			t.Fatalf("%s: layout %d, states %v", name, p.parsed.ABI, p.States)
		}
		r.remember()
		if _, err := m.Enable(p.Name, Options{}); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	wantLog(t, "enable the first-layout callbacks patch", r.took(),
		"livepatch_callbacks/pre_patch [livepatch_sample livepatch_callbacks*]",
		"livepatch_callbacks/post_patch [livepatch_sample livepatch_callbacks*]")
	l, err := r.g.PatchList()
	if err != nil || len(l.Patches) != 2 || l.Patches[0].States != 0 || l.Patches[1].States != 0 || l.Transition != -1 {
		t.Fatalf("klp_patch_list %+v %v", l, err)
	}
	if _, err := r.load(state2); err != nil {
		t.Fatal(err)
	}
	if names := m.Patches(); !slices.Equal(names, []string{state2}) {
		t.Fatalf("patches %v", names)
	}
}

// A guest kernel from before klp_state has no klp_patch_list: the
// Manager works without it (no patch there can call
// klp_get_prev_state), the compatibility check included.
func TestStateNoPatchList(t *testing.T) {
	g, m, r := newStateManager(t)
	m.plist = nil
	before, err := g.PatchList()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.load(state2); err != nil {
		t.Fatal(err)
	}
	if after, _ := g.PatchList(); len(after.Patches) != len(before.Patches) {
		t.Fatalf("klp_patch_list written: %+v", after)
	}
	p1, err := m.Register(patchObj(t, state1), "")
	if err != nil {
		t.Fatal(err)
	}
	refused(t, g, m, syscall.EINVAL, func() error { _, err := m.Enable(p1.Name, Options{}); return err })
}

// klp_patch_list cannot be written: an enable fails with EIO before any
// callback runs, and leaves nothing behind; a write that fails at the end
// of a transition only is logged (the switch is made, and the next
// transition writes the list whole again).
func TestStatePatchListWriteFailure(t *testing.T) {
	g, m, r := newStateManager(t)
	log := &syncLog{}
	m.logf = log.logf
	p, err := m.Register(patchObj(t, state2), "")
	if err != nil {
		t.Fatal(err)
	}
	r.remember()
	pl := g.sym(t, "klp_patch_list")
	writes := 0
	failAfter := 0
	g.WriteErr = func(va uint64, n int) error {
		if va >= pl && va < pl+guestkernel.PatchListSize {
			if writes++; writes > failAfter {
				return errors.New("injected klp_patch_list write fault")
			}
		}
		return nil
	}
	refused(t, g, m, syscall.EIO, func() error { _, err := m.Enable(p.Name, Options{}); return err })
	if got := r.took(); len(got) != 0 || m.Status().PatchAreaInUse != 0 || m.Status().Patches[0].Enabled {
		t.Fatalf("after a failed begin: callbacks %q, status %+v", got, m.Status())
	}
	// The begin's three writes (seq, body, seq) go through, the end's fail.
	writes, failAfter = 0, 3
	if _, err := m.Enable(p.Name, Options{}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(log.String(), "injected klp_patch_list write fault") || !m.Status().Patches[0].Enabled {
		t.Fatalf("log %q, status %+v", log.String(), m.Status())
	}
	// The next transition recovers the list (its seq was left odd).
	g.WriteErr = nil
	if _, err := m.Disable(p.Name, Options{}); err != nil {
		t.Fatal(err)
	}
	if got := r.listed(); got != "[]" {
		t.Fatalf("after recovery: %s", got)
	}
}
