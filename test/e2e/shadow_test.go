package e2e

import (
	"bytes"
	"io"
	"klp-kvm/internal/poll"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"

	"klp-kvm/livepatch"
	"klp-kvm/vmm"
)

// Shadow variables end to end: the guest's shadow-variable API
// (kernel/shadow.c) through its in-guest self-test, and Linux's
// shadow-variable story (samples/livepatch/livepatch-shadow-*.c) ported to
// the guest: the leaking demo subsystem (kernel/shadow_mod.c), fixed by
// livepatch-shadow-fix1, extended by livepatch-shadow-fix2, both disabled
// again in Linux's order. docs/shadow-variables.md tells the story.

// consoleBuf collects the guest console (written from every vCPU).
type consoleBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (c *consoleBuf) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.b.Write(p)
}

func (c *consoleBuf) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.b.String()
}

// bootConsole is boot with the guest console collected.
func bootConsole(t testing.TB, cpus int) (*vmm.VMM, *consoleBuf) {
	t.Helper()
	con := &consoleBuf{}
	cfg := vmm.Config{Engine: EngineName(), CPUs: cpus, Console: con,
		Cmdline: strings.TrimSpace("console=ttyS0 " + os.Getenv("KLP_E2E_CMDLINE"))}
	if os.Getenv("KLP_E2E_CONSOLE") != "" {
		cfg.Console = io.MultiWriter(con, os.Stderr)
	}
	s, err := vmm.Boot(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, con
}

// shadowStats is /proc/klp_shadow: "key: number" lines (the selftest line
// is kept as text).
type shadowStats map[string]uint64

var shadowLineRE = regexp.MustCompile(`(?m)^(\w+): (\d+)$`)

func readShadow(t testing.TB, s *vmm.VMM) shadowStats {
	t.Helper()
	out := sh(t, s, "cat /proc/klp_shadow")
	st := shadowStats{}
	for _, m := range shadowLineRE.FindAllStringSubmatch(out, -1) {
		n, err := strconv.ParseUint(m[2], 10, 64)
		if err != nil {
			t.Fatalf("/proc/klp_shadow: %q: %v", m[0], err)
		}
		st[m[1]] = n
	}
	for _, k := range []string{"running", "allocated", "freed", "live", "leaked", "shadow_vars", "kmalloc_objects", "warnings"} {
		if _, ok := st[k]; !ok {
			t.Fatalf("/proc/klp_shadow has no %s:\n%s", k, out)
		}
	}
	return st
}

func (st shadowStats) String() string {
	return "allocated " + strconv.FormatUint(st["allocated"], 10) + " freed " + strconv.FormatUint(st["freed"], 10) +
		" live " + strconv.FormatUint(st["live"], 10) + " leaked " + strconv.FormatUint(st["leaked"], 10) +
		" shadow_vars " + strconv.FormatUint(st["shadow_vars"], 10) + " (SV_LEAK " + strconv.FormatUint(st["shadow_id_1"], 10) +
		", SV_COUNTER " + strconv.FormatUint(st["shadow_id_2"], 10) + ") kmalloc_objects " + strconv.FormatUint(st["kmalloc_objects"], 10)
}

// accounted checks that every kmalloc object the demo made is accounted
// for, read in one instant (see kernel/shadow_mod.c): each live dummy,
// each buffer the buggy dummy_alloc leaked, each shadow variable, and the
// buffer each SV_LEAK variable holds. base is what kmalloc held before.
func (st shadowStats) accounted(t testing.TB, when string, base uint64) {
	t.Helper()
	want := base + st["live"] + st["leaked"] + st["shadow_vars"] + st["shadow_id_1"]
	if st["kmalloc_objects"] != want {
		t.Fatalf("%s: %d kmalloc objects, want %d: something leaked or was freed twice (%v)", when, st["kmalloc_objects"], want, st)
	}
	if st["kmalloc_bad_frees"] != 0 {
		t.Fatalf("%s: %d bad kfrees", when, st["kmalloc_bad_frees"])
	}
}

var (
	fix1LeakedRE    = regexp.MustCompile(`livepatch_shadow_fix1: livepatch_fix1_dummy_free: dummy @ 0x[0-9a-f]+ leaked!`)
	fix1PreventedRE = regexp.MustCompile(`livepatch_shadow_fix1: livepatch_fix1_dummy_leak_dtor: dummy @ 0x[0-9a-f]+, prevented leak @ 0x[0-9a-f]+`)
	fix2PreventedRE = regexp.MustCompile(`livepatch_shadow_fix2: livepatch_fix2_dummy_leak_dtor: dummy @ 0x[0-9a-f]+, prevented leak @ 0x[0-9a-f]+`)
	fix2CounterRE   = regexp.MustCompile(`livepatch_shadow_fix2: livepatch_fix2_dummy_free: dummy @ 0x[0-9a-f]+, check counter = (\d+)`)
	origFreeRE      = regexp.MustCompile(`(?m)^dummy_free: dummy @ 0x[0-9a-f]+, expired = [0-9a-f]+`)
)

// TestShadowSelftest runs the guest's own test of the shadow-variable API
// (kernel/shadow_selftest.c, after Linux's test_klp_shadow_vars.c) on
// demand, on 2 vCPUs: every check passes and it leaves nothing behind.
func TestShadowSelftest(t *testing.T) {
	s, con := bootConsole(t, 2)
	before := readShadow(t, s)
	sh(t, s, "echo selftest > /proc/klp_shadow") // starts it in a guest thread
	var proc string
	poll.Until(t, "the shadow self-test to finish", func() bool {
		proc = sh(t, s, "cat /proc/klp_shadow")
		return !strings.Contains(proc, "selftest: running")
	})
	after := readShadow(t, s)
	out := con.String()
	if !strings.Contains(out, "selftest: shadow: PASS (0 failures)") || !strings.Contains(proc, "selftest: PASS (0 failures)") {
		t.Fatalf("shadow selftest did not pass:\n%s\n%s", proc, tailOf(out, 4000))
	}
	for _, name := range []string{"get-empty", "alloc", "get", "get-or-alloc", "alloc-exists", "zeroed", "ctor-fails", "nomem",
		"race", "nested", "free", "free-keeps-others", "free-all", "shared-buckets", "smp", "nothing-left"} {
		if !strings.Contains(out, "selftest: shadow-"+name+": ok") {
			t.Errorf("no ok for shadow-%s", name)
		}
	}
	for _, m := range regexp.MustCompile(`selftest: shadow(-smp|-shared-buckets)?: (ok|PASS) .*`).FindAllString(out, -1) {
		t.Log(m)
	}
	// The test's variables are all gone, and their memory: the API leaks nothing.
	if after["shadow_vars"] != before["shadow_vars"] || after["kmalloc_objects"] != before["kmalloc_objects"] {
		t.Fatalf("after the self-test: %d shadow variables, %d kmalloc objects; before %d, %d",
			after["shadow_vars"], after["kmalloc_objects"], before["shadow_vars"], before["kmalloc_objects"])
	}
	// Three WARNs are expected: the duplicate alloc, the alloc that lost
	// the race, the alloc from a ctor.
	if w := after["warnings"] - before["warnings"]; w != 3 || after["shadow_duplicates"] != before["shadow_duplicates"]+2 {
		t.Fatalf("%d warnings, %d duplicates: want 3 and 2", w, after["shadow_duplicates"]-before["shadow_duplicates"])
	}
}

// TestShadowFixes is Linux's shadow-variable sample, in its order: the
// leaking demo runs; fix1 stops the leak (its dummy_alloc attaches the
// buffer to the dummy as an SV_LEAK shadow variable, its dummy_free frees
// it); fix2 adds a per-dummy check counter (SV_COUNTER) and frees SV_LEAK
// variables that fix1 made; fix2 is disabled (its post_unpatch frees every
// SV_COUNTER), then fix1 (its post_unpatch frees every SV_LEAK: no shadow
// data is left), and the original leak comes back. At every step every
// kmalloc object is accounted for.
func TestShadowFixes(t *testing.T) {
	s, con := bootConsole(t, 2)
	lm := s.Manager
	st := readShadow(t, s)
	if st["running"] != 0 || st["allocated"] != 0 {
		t.Fatalf("the demo runs before it is started: %v", st)
	}
	base := st["kmalloc_objects"]
	warnings := st["warnings"]

	// The buggy demo: every dummy leaks a buffer.
	sh(t, s, "echo 1 > /proc/klp_shadow")
	poll.Until(t, "the demo to leak", func() bool { st = readShadow(t, s); return st["leaked"] >= 5 })
	if st["leaked"] != st["allocated"] || st["shadow_vars"] != 0 {
		t.Fatalf("before fix1: %v", st)
	}
	st.accounted(t, "before fix1", base)
	t.Logf("before fix1: %v", st)

	// fix1: the leak stops.
	p1, res, err := lm.Load(obj(t, "livepatch-shadow-fix1"), "livepatch-shadow-fix1.o", livepatch.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("fix1 enabled: %d functions, %d attempts", res.Funcs, res.Attempts)
	st1 := readShadow(t, s)
	leaked := st1["leaked"] // the original dummy_alloc runs no more
	poll.Until(t, "fix1 to free a dummy from before it (leaked!) and one of its own (prevented leak)", func() bool {
		out := con.String()
		return fix1LeakedRE.MatchString(out) && fix1PreventedRE.MatchString(out)
	})
	poll.Until(t, "fix1 to allocate more dummies", func() bool { st = readShadow(t, s); return st["allocated"] >= st1["allocated"]+5 })
	if st["leaked"] != leaked {
		t.Fatalf("fix1 did not stop the leak: leaked %d -> %d (%v)", leaked, st["leaked"], st)
	}
	if st["shadow_id_1"] == 0 || st["shadow_id_1"] != st["shadow_vars"] {
		t.Fatalf("fix1: want live SV_LEAK variables only: %v", st)
	}
	st.accounted(t, "fix1", base)
	t.Logf("fix1: %v", st)

	// fix2 on top: a check counter per dummy, reported when the dummy is freed.
	p2, res, err := lm.Load(obj(t, "livepatch-shadow-fix2"), "livepatch-shadow-fix2.o", livepatch.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("fix2 enabled: %d functions, %d attempts", res.Funcs, res.Attempts)
	// A dummy checked more than once under fix2 shows that its counter
	// persisted from call to call in the shadow variable.
	var counter string
	poll.Until(t, "fix2 to report a check counter above 1 and free an SV_LEAK variable fix1 made", func() bool {
		out := con.String()
		for _, m := range fix2CounterRE.FindAllStringSubmatch(out, -1) {
			if n, _ := strconv.Atoi(m[1]); n > 1 {
				counter = m[0]
			}
		}
		return counter != "" && fix2PreventedRE.MatchString(out)
	})
	t.Logf("fix2: %s", counter)
	st = readShadow(t, s)
	if st["leaked"] != leaked || st["shadow_id_2"] == 0 || st["shadow_id_1"] == 0 {
		t.Fatalf("fix2: leaked %d (want %d), want SV_LEAK and SV_COUNTER variables: %v", st["leaked"], leaked, st)
	}
	st.accounted(t, "fix2", base)
	t.Logf("fix2: %v", st)

	// Disable fix2: its post_unpatch frees every SV_COUNTER variable.
	if _, err := lm.Disable(p2.Name, livepatch.Options{}); err != nil {
		t.Fatal(err)
	}
	st = readShadow(t, s)
	if st["shadow_id_2"] != 0 || st["leaked"] != leaked {
		t.Fatalf("fix2 disabled: %d SV_COUNTER variables left, leaked %d (want %d)", st["shadow_id_2"], st["leaked"], leaked)
	}
	st.accounted(t, "fix2 disabled", base)
	t.Logf("fix2 disabled: %v", st)

	// Disable fix1: its post_unpatch frees every SV_LEAK variable and the
	// buffer it holds: no shadow data is left.
	if _, err := lm.Disable(p1.Name, livepatch.Options{}); err != nil {
		t.Fatal(err)
	}
	st = readShadow(t, s)
	if st["shadow_vars"] != 0 {
		t.Fatalf("fix1 disabled: %d shadow variables left (%v)", st["shadow_vars"], st)
	}
	st.accounted(t, "fix1 disabled", base)
	t.Logf("fix1 disabled: %v", st)

	// The bug is back: the original functions run again.
	n := len(origFreeRE.FindAllString(con.String(), -1))
	poll.Until(t, "the original dummy_alloc and dummy_free to run again", func() bool {
		st = readShadow(t, s)
		return st["leaked"] > leaked && len(origFreeRE.FindAllString(con.String(), -1)) > n
	})
	if st["shadow_vars"] != 0 {
		t.Fatalf("unpatched: %d shadow variables", st["shadow_vars"])
	}

	// Stop the demo (Linux's rmmod of livepatch-shadow-mod): what is left
	// in kmalloc is exactly what the unpatched code leaked.
	sh(t, s, "echo 0 > /proc/klp_shadow")
	st = readShadow(t, s)
	if st["running"] != 0 || st["live"] != 0 || st["allocated"] != st["freed"] || st["shadow_vars"] != 0 ||
		st["kmalloc_objects"] != base+st["leaked"] {
		t.Fatalf("stopped: %v", st)
	}
	if st["warnings"] != warnings || st["alloc_failures"] != 0 {
		t.Fatalf("%d WARNs, %d failed allocations during the demo", st["warnings"]-warnings, st["alloc_failures"])
	}
	t.Logf("stopped: %v", st)

	for _, name := range []string{p2.Name, p1.Name} {
		if err := lm.Unregister(name); err != nil {
			t.Fatal(err)
		}
	}
	if lm.Status().PatchAreaInUse != 0 {
		t.Fatal("patch area leaked")
	}
}

// tailOf is the last n bytes of s.
func tailOf(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
