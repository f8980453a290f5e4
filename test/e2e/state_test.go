package e2e

import (
	"context"
	"embed"
	"errors"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"klp-kvm/api"
	"klp-kvm/api/apitest"
	"klp-kvm/livepatch"
	"klp-kvm/vmm"
)

// System states end to end: Linux's tools/testing/selftests/livepatch/
// test-state.sh with its modules lib/livepatch/test_klp_state*.c, ported
// to the guest (guestkernel/patches/test_klp_state*.c). The patches change
// console_loglevel (/proc/sys/kernel/printk) in their callbacks, keep the
// value they replaced in their state's data, and take the change over from
// one another with klp_get_prev_state (guestkernel/kernel/state.c, over
// the klp_patch_list the host publishes); the host refuses a cumulative
// patch that knows the state in an older version (klp_is_patch_compatible,
// livepatch/state.go). Each test checks the patches' messages, in Linux's
// order (test-state.sh's expected dmesg, without the livepatch core's own
// lines, which the host does not print into the guest), and what the
// guest shows: console_loglevel and the kmalloc objects the states hold.
// docs/states.md tells the story.

// The console_loglevel the tests set before loading anything: not the
// default (7), so that a restore to the default would be caught.
const stateLoglevel = 5

var stateMsgRE = regexp.MustCompile(`(?m)^test_klp_state\d?: .*$`)

// stateGuest boots a guest for a test-state.sh scenario.
func stateGuest(t *testing.T) *vmm.VMM {
	t.Helper()
	s := boot(t, 2)
	sh(t, s, "echo "+strconv.Itoa(stateLoglevel)+" > /proc/sys/kernel/printk")
	return s
}

// loglevel is console_loglevel, the first field of /proc/sys/kernel/printk.
func loglevel(t *testing.T, s *vmm.VMM) int {
	t.Helper()
	out := sh(t, s, "cat /proc/sys/kernel/printk")
	f := strings.Fields(out)
	if len(f) != 4 {
		t.Fatalf("/proc/sys/kernel/printk: %q", out)
	}
	n, err := strconv.Atoi(f[0])
	if err != nil {
		t.Fatalf("/proc/sys/kernel/printk: %q", out)
	}
	return n
}

// kmallocObjects is the guest heap's live object count (/proc/klp_shadow).
func kmallocObjects(t *testing.T, s *vmm.VMM) uint64 {
	t.Helper()
	return readShadow(t, s)["kmalloc_objects"]
}

// statePatched is what patch p's callbacks print when it is enabled: it saves
// and changes console_loglevel, or, with takeOver, takes over the change
// an earlier patch made (test_klp_state*.c, as in Linux).
func statePatched(p string, takeOver bool) []string {
	alloc, fix := "allocating space to store console_loglevel", "fixing console_loglevel"
	if takeOver {
		alloc, fix = "space to store console_loglevel already allocated", "taking over the console_loglevel change"
	}
	return []string{p + ": pre_patch_callback: vmlinux", p + ": allocate_loglevel_state: " + alloc,
		p + ": post_patch_callback: vmlinux", p + ": fix_console_loglevel: " + fix}
}

// stateUnpatched is what patch p's callbacks print when it is disabled and
// restores console_loglevel.
func stateUnpatched(p string) []string {
	return []string{p + ": pre_unpatch_callback: vmlinux", p + ": restore_console_loglevel: restoring console_loglevel",
		p + ": post_unpatch_callback: vmlinux", p + ": free_loglevel_state: freeing space for the stored console_loglevel"}
}

// stateMessages are the test patches' lines of the guest's kernel log.
func stateMessages(t *testing.T, s *vmm.VMM) []string {
	t.Helper()
	return stateMsgRE.FindAllString(sh(t, s, "dmesg"), -1)
}

// wantMessages checks the patches' lines against groups of them, in
// order (statePatched, stateUnpatched).
func wantMessages(t *testing.T, s *vmm.VMM, groups ...[]string) {
	t.Helper()
	want := slices.Concat(groups...)
	if got := stateMessages(t, s); !slices.Equal(got, want) {
		t.Fatalf("the patches' messages:\n%s\nwant (test-state.sh):\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// state is what the guest shows of the state: console_loglevel and the
// heap objects beyond base.
func checkState(t *testing.T, s *vmm.VMM, when string, level int, base, extra uint64) {
	t.Helper()
	if got := loglevel(t, s); got != level {
		t.Fatalf("%s: console_loglevel %d, want %d", when, got, level)
	}
	if got := kmallocObjects(t, s); got != base+extra {
		t.Fatalf("%s: %d kmalloc objects, want %d (the saved console_loglevel allocated %d times)", when, got, base+extra, extra)
	}
}

func load(t *testing.T, s *vmm.VMM, name string) *livepatch.Result {
	t.Helper()
	_, res, err := s.Manager.Load(obj(t, name), name+".o", livepatch.Options{})
	if err != nil {
		t.Fatalf("load %s: %v", name, err)
	}
	return res
}

func disable(t *testing.T, s *vmm.VMM, name string) {
	t.Helper()
	if _, err := s.Manager.Disable(name, livepatch.Options{}); err != nil {
		t.Fatalf("disable %s: %v", name, err)
	}
}

func unregister(t *testing.T, s *vmm.VMM, name string) {
	t.Helper()
	if err := s.Manager.Unregister(name); err != nil {
		t.Fatalf("unregister %s: %v", name, err)
	}
}

// rmmodReplaced is test-state.sh's rmmod of a patch an atomic replace
// removed: here it left the stack with the replace, so there is nothing
// left to remove.
func rmmodReplaced(t *testing.T, s *vmm.VMM, name string) {
	t.Helper()
	if slices.Contains(s.Manager.Patches(), name) {
		t.Fatalf("%s is still registered after it was replaced: %v", name, s.Manager.Patches())
	}
}

// TEST: system state modification
func TestStateModification(t *testing.T) {
	s := stateGuest(t)
	base := kmallocObjects(t, s)
	load(t, s, "test_klp_state")
	checkState(t, s, "enabled", 15, base, 1) // CONSOLE_LOGLEVEL_MOTORMOUTH, the old value saved
	// Linux's sysfs shows no states, and neither does the guest's.
	if out := sh(t, s, "ls /sys/kernel/livepatch/test_klp_state"); strings.Contains(out, "state") {
		t.Fatalf("sysfs shows states:\n%s", out)
	}
	disable(t, s, "test_klp_state")
	unregister(t, s, "test_klp_state")
	checkState(t, s, "disabled", stateLoglevel, base, 0)
	wantMessages(t, s,
		statePatched("test_klp_state", false),
		stateUnpatched("test_klp_state"))
}

// TEST: taking over system state modification
func TestStateTakeOver(t *testing.T) {
	s := stateGuest(t)
	base := kmallocObjects(t, s)
	load(t, s, "test_klp_state")
	res := load(t, s, "test_klp_state2")
	if !slices.Equal(res.Replaced, []string{"test_klp_state"}) {
		t.Fatalf("replaced %v", res.Replaced)
	}
	// The change and its saved value are test_klp_state2's now: nothing
	// allocated again.
	checkState(t, s, "taken over", 15, base, 1)
	rmmodReplaced(t, s, "test_klp_state")
	disable(t, s, "test_klp_state2")
	unregister(t, s, "test_klp_state2")
	// Restored and freed by the patch that took it over.
	checkState(t, s, "disabled", stateLoglevel, base, 0)
	wantMessages(t, s,
		statePatched("test_klp_state", false),
		statePatched("test_klp_state2", true),
		stateUnpatched("test_klp_state2"))
}

// TEST: compatible cumulative livepatches
func TestStateCompatible(t *testing.T) {
	s := stateGuest(t)
	base := kmallocObjects(t, s)
	load(t, s, "test_klp_state2")
	load(t, s, "test_klp_state3")
	rmmodReplaced(t, s, "test_klp_state2")
	load(t, s, "test_klp_state2") // version 2 over version 2: compatible
	checkState(t, s, "test_klp_state2 again", 15, base, 1)
	disable(t, s, "test_klp_state2")
	unregister(t, s, "test_klp_state2")
	rmmodReplaced(t, s, "test_klp_state3")
	checkState(t, s, "disabled", stateLoglevel, base, 0)
	wantMessages(t, s,
		statePatched("test_klp_state2", false),
		statePatched("test_klp_state3", true),
		statePatched("test_klp_state2", true),
		stateUnpatched("test_klp_state2"))
}

// TEST: incompatible cumulative livepatches. The refusal is EINVAL, with
// the message naming the state and its versions, whichever way the
// enable comes: the Manager, the control API (what `klp-kvm patch load`
// calls), a guest's write to the sysfs enabled file.
func TestStateIncompatible(t *testing.T) {
	s := stateGuest(t)
	base := kmallocObjects(t, s)
	load(t, s, "test_klp_state2")
	const why = "not compatible with the already installed livepatches: test_klp_state2 modified system state 1 in version 2, and this patch has it in version 1, older"
	refuse(t, s, syscall.EINVAL, func() error {
		_, _, err := s.Manager.Load(obj(t, "test_klp_state"), "test_klp_state.o", livepatch.Options{})
		if err != nil && !strings.Contains(err.Error(), "livepatch: enable test_klp_state: "+why+": invalid argument (EINVAL)") {
			t.Errorf("the refusal does not say why: %v", err)
		}
		return err
	})
	// Through the API.
	c := api.NewClient(apitest.ServeUnix(t, s.Handler()))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := c.AddPatch(ctx, api.PatchRequest{Op: "load", Object: obj(t, "test_klp_state"), Name: "test_klp_state.o"})
	var ae *api.Error
	if !errors.Is(err, syscall.EINVAL) || !errors.As(err, &ae) || !strings.Contains(err.Error(), why) {
		t.Fatalf("API load: want EINVAL saying %q, got %v", why, err)
	}
	// From the guest: registered, then enabled by a write to sysfs.
	if _, err := s.Manager.Register(obj(t, "test_klp_state"), "test_klp_state.o"); err != nil {
		t.Fatal(err)
	}
	out, err := s.Exec("echo 1 > /sys/kernel/livepatch/test_klp_state/enabled")
	if err == nil || !strings.Contains(out, "Invalid argument") {
		t.Fatalf("guest sysfs enable: %q %v, want EINVAL", out, err)
	}
	unregister(t, s, "test_klp_state")
	checkState(t, s, "after the refusals", 15, base, 1)
	disable(t, s, "test_klp_state2")
	unregister(t, s, "test_klp_state2")
	checkState(t, s, "disabled", stateLoglevel, base, 0)
	// Nothing of test_klp_state ran.
	wantMessages(t, s,
		statePatched("test_klp_state2", false),
		stateUnpatched("test_klp_state2"))
}

// abi1Objects are embedded, not read from the tree: the nested tier runs
// this test binary inside a VM without the sources.
//
//go:embed testdata/abi1/*.o
var abi1Objects embed.FS

// Patch objects built before klp_state (testdata/abi1: the
// samples as committed then, the first struct klp_patch layout) load,
// run and stack in today's guest, and a state patch replaces them.
func TestStateABI1Objects(t *testing.T) {
	s := stateGuest(t)
	orig := sh(t, s, "cat /proc/cmdline")
	for _, name := range []string{"livepatch-sample", "livepatch-callbacks"} {
		b, err := abi1Objects.ReadFile("testdata/abi1/" + name + ".o")
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := s.Manager.Load(b, name+".o", livepatch.Options{}); err != nil {
			t.Fatalf("load %s (first layout): %v", name, err)
		}
	}
	// The callbacks patch is on top: its cmdline_proc_show runs, and its
	// pre_patch and post_patch did.
	if out := sh(t, s, "cat /proc/cmdline"); !strings.Contains(out, "callbacks: pre_patch=1 post_patch=1 pre_unpatch=0 post_unpatch=0") {
		t.Fatalf("/proc/cmdline with the first-layout patches: %q", out)
	}
	if st := s.Manager.Status(); len(st.Patches) != 2 || st.Patches[0].States != nil || st.Patches[1].States != nil {
		t.Fatalf("status %+v", st.Patches)
	}
	// test_klp_state2 replaces both (they have no state to hand over).
	res := load(t, s, "test_klp_state2")
	if !slices.Equal(res.Replaced, []string{"livepatch_sample", "livepatch_callbacks"}) {
		t.Fatalf("replaced %v", res.Replaced)
	}
	if out := sh(t, s, "cat /proc/cmdline"); out != orig {
		t.Fatalf("/proc/cmdline after the replace: %q, want %q", out, orig)
	}
	wantMessages(t, s,
		statePatched("test_klp_state2", false))
}
