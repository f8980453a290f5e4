package linux

import (
	"bytes"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"klp-kvm/api"
	"klp-kvm/kvm"
	"klp-kvm/linuxlive"
	"klp-kvm/livepatch"
	"klp-kvm/vmm"
)

// The modules, embedded: a VM test binary has no source tree.
var (
	//go:embed testdata/livepatch-sample.ko
	sampleKO []byte
	//go:embed testdata/klp-static.ko
	staticKO []byte
)

const (
	sampleName = "livepatch_sample"
	patchedMsg = "this has been live patched"
)

// variant is the sample with its name, message and (optionally) old
// function changed, byte for byte at equal lengths: a second module for
// stacking, or one whose function the guest does not have.
func variant(t *testing.T, pairs ...string) []byte {
	t.Helper()
	b := bytes.Clone(sampleKO)
	for i := 0; i < len(pairs); i += 2 {
		if len(pairs[i]) != len(pairs[i+1]) || !bytes.Contains(b, []byte(pairs[i])) {
			t.Fatalf("variant: %q -> %q", pairs[i], pairs[i+1])
		}
		b = bytes.ReplaceAll(b, []byte(pairs[i]), []byte(pairs[i+1]))
	}
	return b
}

// TestLinuxLivepatch live-patches Debian's running kernel from the host
// with Linux's own livepatch-sample.ko through the control API (what
// `klp-kvm patch load/enable/disable/unload` sends): /proc/cmdline reads
// "this has been live patched" while it is enabled and the original
// otherwise, through 20 disable/enable cycles, more with the guest busy
// running the function, a second patch stacked on the first, and patches
// the host must refuse (an unknown function, callbacks and replace),
// which leave the guest as it was; the guest's dmesg stays free of
// warnings and oopses. One vCPU, and two (every vCPU paused and unwound).
func TestLinuxLivepatch(t *testing.T) {
	for _, cpus := range []int{1, 2} {
		t.Run(fmt.Sprintf("%dcpu", cpus), func(t *testing.T) { testLinuxLivepatch(t, cpus) })
	}
}

// guestMemMiB is the patch tests' guest RAM: 256 MiB, half the default,
// to leave the nested tier's L1 VM (1 GiB) memory to spare.
const guestMemMiB = 256

// patchGuest is a booted Linux guest with its control API.
type patchGuest struct {
	t        *testing.T
	v        *vmm.VMM
	c        *api.Client
	ctx      context.Context
	con      *syncBuffer
	original string // /proc/cmdline
}

// bootPatchGuest boots Debian's kernel with cpus vCPUs through vmm and
// serves its control API on a unix socket, as `klp-kvm run` does.
func bootPatchGuest(t *testing.T, cpus int) *patchGuest {
	t.Helper()
	return bootPatchGuestWith(t, cpus, nil)
}

// bootPatchGuestWith is bootPatchGuest with the vmm.Config adjusted by
// edit (another initramfs, an events writer) before the guest is built.
func bootPatchGuestWith(t *testing.T, cpus int, edit func(*vmm.Config)) *patchGuest {
	t.Helper()
	skipNested(t)
	kernel := kernelImage(t)
	cmdline := kvm.DefaultLinuxCmdline + " quiet klp.token=livepatch" + platformArgs()
	con := &syncBuffer{log: t.Logf}
	cfg := vmm.Config{Engine: engineName(), CPUs: cpus, MemMiB: guestMemMiB, Kernel: kernel, Cmdline: cmdline,
		Console: con, BootTimeout: bootTimeout}
	if edit != nil {
		edit(&cfg)
	}
	v := startReady(t, cfg, con)
	if v.Linux == nil {
		t.Fatalf("no Linux live-patch manager: %v", v.NoLivepatch)
	}
	sock := filepath.Join(t.TempDir(), "api.sock")
	l, err := api.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: v.Handler()}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	t.Cleanup(cancel)
	t.Logf("%s: boot to agent-ready %v", v.EngineWhy, v.BootTime().Round(time.Millisecond))
	g := &patchGuest{t: t, v: v, c: api.NewClient(sock), ctx: ctx, con: con}
	if g.original = g.exec("cat /proc/cmdline"); g.original != cmdline {
		t.Fatalf("guest /proc/cmdline %q, want %q", g.original, cmdline)
	}
	return g
}

func (g *patchGuest) exec(cmd string) string {
	g.t.Helper()
	out, err := g.v.Exec(cmd)
	if err != nil {
		g.t.Fatalf("exec %q: %v", cmd, err)
	}
	return strings.TrimSpace(out)
}

// untouched checks that the guest is as it was before any patch: its
// /proc/cmdline, no patch, nothing of the patch area in use.
func (g *patchGuest) untouched(what string) {
	g.t.Helper()
	if got := g.exec("cat /proc/cmdline"); got != g.original {
		g.t.Errorf("after %s: /proc/cmdline %q, want the original", what, got)
	}
	st := g.v.Linux.Status()
	if len(st.Patches) != 0 || st.PatchAreaInUse != 0 {
		g.t.Errorf("after %s: %d patches, %d bytes of the patch area in use, want none", what, len(st.Patches), st.PatchAreaInUse)
	}
}

// cleanDmesg checks the guest's kernel log for warnings and oopses.
func (g *patchGuest) cleanDmesg() {
	g.t.Helper()
	dmesg := g.exec("dmesg")
	for _, bad := range []string{"WARNING:", "BUG:", "Oops", "general protection", "Call Trace"} {
		if strings.Contains(dmesg, bad) {
			g.t.Errorf("guest dmesg has %q:\n%s", bad, tail(dmesg, 60))
		}
	}
}

func testLinuxLivepatch(t *testing.T, cpus int) {
	g := bootPatchGuest(t, cpus)
	v, c, ctx, exec, untouched, original := g.v, g.c, g.ctx, g.exec, g.untouched, g.original
	var err error

	// Refused by the host: the guest has no such function (the sample
	// with its old_name changed), a module with callbacks and atomic
	// replace. Nothing is written to the guest.
	_, err = c.AddPatch(ctx, api.PatchRequest{Object: variant(t, "cmdline_proc_show\x00", "cmdline_proc_shoX\x00"), Name: "unknown.ko"})
	if !errors.Is(err, syscall.EINVAL) {
		t.Errorf("load with an unknown old function: %v, want EINVAL", err)
	} else {
		t.Logf("refused as it should be: %v", err)
	}
	untouched("the unknown-symbol load")
	_, err = c.AddPatch(ctx, api.PatchRequest{Object: staticKO, Name: "klp-static.ko"})
	if !errors.Is(err, syscall.EOPNOTSUPP) {
		t.Errorf("load of klp-static (callbacks, replace): %v, want EOPNOTSUPP", err)
	} else {
		t.Logf("refused as it should be: %v", err)
	}
	untouched("the klp-static load")

	// Load = register + enable.
	t0 := time.Now()
	rep, err := c.AddPatch(ctx, api.PatchRequest{Object: sampleKO, Name: "livepatch-sample.ko"})
	if err != nil {
		t.Fatalf("load: %v\nconsole tail:\n%s", err, tail(g.con.String(), 20))
	}
	t.Logf("load: %v end to end; pause window %v (check %v), %d attempt(s)", time.Since(t0).Round(time.Microsecond),
		rep.Result.PauseWindow, rep.Result.Check, rep.Result.Attempts)
	if rep.Patch != sampleName {
		t.Errorf("patch named %q, want %q", rep.Patch, sampleName)
	}
	if got := exec("cat /proc/cmdline"); got != patchedMsg {
		t.Fatalf("patched /proc/cmdline %q, want %q", got, patchedMsg)
	}
	st, err := c.Patches(ctx)
	if err != nil || len(st.Patches) != 1 || !st.Patches[0].Enabled || st.PatchAreaInUse == 0 {
		t.Fatalf("GET /patches: %+v, %v", st, err)
	}
	f := st.Patches[0].Objects[0].Funcs[0]
	t.Logf("%s at %#x (site %#x) -> %s at %#x; image %d bytes at %#x", f.OldName, f.OldAddr, f.Site, f.NewName, f.NewAddr,
		st.Patches[0].ImageSize, st.Patches[0].ImageAddr)
	if f.NewAddr < linuxlive.ModulesEnd-linuxlive.Window || f.NewAddr >= linuxlive.ModulesEnd {
		t.Errorf("new function at %#x, outside the module-area window", f.NewAddr)
	}

	// Disable/enable cycles.
	const cycles = 20
	var windows, enables, stops, checks, pokes, totals []time.Duration
	for i := range cycles {
		if _, err := c.Disable(ctx, sampleName, api.OpRequest{}); err != nil {
			t.Fatalf("cycle %d: disable: %v", i, err)
		}
		if got := exec("cat /proc/cmdline"); got != original {
			t.Fatalf("cycle %d: disabled /proc/cmdline %q, want the original", i, got)
		}
		t1 := time.Now()
		r, err := c.Enable(ctx, sampleName, api.OpRequest{})
		if err != nil {
			t.Fatalf("cycle %d: enable: %v", i, err)
		}
		enables = append(enables, time.Since(t1))
		windows = append(windows, r.Result.PauseWindow)
		stops, checks, pokes = append(stops, r.Result.Stop), append(checks, r.Result.Check), append(pokes, r.Result.Poke)
		totals = append(totals, r.Result.Total)
		if got := exec("cat /proc/cmdline"); got != patchedMsg {
			t.Fatalf("cycle %d: enabled /proc/cmdline %q", i, got)
		}
	}
	t.Logf("%d enable/disable cycles: enable end to end median %v (min %v, max %v), pause window median %v (min %v, max %v)",
		cycles, median(enables), slicesMin(enables), slicesMax(enables), median(windows), slicesMin(windows), slicesMax(windows))
	t.Logf("in the window, medians: stop %v, check %v, poke %v; the transition (Result.Total) %v", median(stops), median(checks), median(pokes), median(totals))

	// Busy: the guest reads /proc/cmdline in a loop (its agent's task
	// runs cmdline_proc_show over and over) while the host switches: a
	// check that finds the task inside the function retries, every read
	// gives one of the two texts, none fails.
	busyDone := make(chan string, 1)
	go func() {
		out, err := v.Exec(`i=0; while [ $i -lt 150 ]; do cat /proc/cmdline; i=$((i+1)); done`)
		if err != nil {
			out = "error: " + err.Error()
		}
		busyDone <- out
	}()
	attempts, steps, busyCycles := 0, 0, 0
	var stepTime time.Duration
	// The host switches for at most busySwitching, then lets the loop
	// finish: back-to-back switches leave a one-vCPU guest on a loaded
	// machine too little time to finish its 150 reads within the
	// agent's 30 s exec timeout (a CI run did 648 cycles in 30 s).
	const busySwitching = 15 * time.Second
	busyStart := time.Now()
	for busy := true; busy; {
		select {
		case out := <-busyDone:
			busy = false
			lines := strings.Split(strings.TrimSpace(out), "\n")
			seen := map[string]int{}
			for _, l := range lines {
				seen[l]++
			}
			if len(lines) < 100 || seen[original]+seen[patchedMsg] != len(lines) {
				t.Errorf("busy loop: %d lines, %d original, %d patched; others: %q", len(lines), seen[original], seen[patchedMsg], tail(out, 5))
			}
			t.Logf("busy guest: %d reads (%d original, %d patched) during %d disable/enable cycles, %d switch attempts for %d switches, %d progress steps (%v)",
				len(lines), seen[original], seen[patchedMsg], busyCycles, attempts, 2*busyCycles, steps, stepTime)
		default:
			if time.Since(busyStart) > busySwitching {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			r, err := c.Disable(ctx, sampleName, api.OpRequest{})
			if err != nil {
				t.Fatalf("busy cycle %d: disable: %v", busyCycles, err)
			}
			attempts, steps, stepTime = attempts+r.Result.Attempts, steps+r.Result.Steps, stepTime+r.Result.StepTime
			if r, err = c.Enable(ctx, sampleName, api.OpRequest{}); err != nil {
				t.Fatalf("busy cycle %d: enable: %v", busyCycles, err)
			}
			attempts, steps, stepTime = attempts+r.Result.Attempts, steps+r.Result.Steps, stepTime+r.Result.StepTime
			busyCycles++
		}
	}
	if got := exec("cat /proc/cmdline"); got != patchedMsg {
		t.Fatalf("after the busy cycles: /proc/cmdline %q", got)
	}

	// A second patch stacked on the first: the newest wins; disabling
	// it gives the first back.
	second := variant(t, "name=livepatch_sample", "name=livepatch_stack2", patchedMsg, "this has been live patcheD")
	t.Logf("loading a second patch on the same function")
	if r, err := c.AddPatch(ctx, api.PatchRequest{Object: second, Name: "stack2.ko"}); err != nil {
		t.Fatalf("load the stacked patch: %v", err)
	} else {
		t.Logf("stacked load: pause window %v", r.Result.PauseWindow)
	}
	if got := exec("cat /proc/cmdline"); got != "this has been live patcheD" {
		t.Errorf("stacked: /proc/cmdline %q, want the second patch's", got)
	}
	if _, err := c.Disable(ctx, sampleName, api.OpRequest{}); !errors.Is(err, syscall.EBUSY) {
		t.Errorf("disable the patch under an enabled one: %v, want EBUSY", err)
	}
	if _, err := c.Unload(ctx, "livepatch_stack2", api.OpRequest{}); err != nil {
		t.Fatalf("unload the stacked patch: %v", err)
	}
	if got := exec("cat /proc/cmdline"); got != patchedMsg {
		t.Errorf("after unloading the stacked patch: /proc/cmdline %q, want the first patch's", got)
	}

	// Unload: disable + unmap + free.
	if _, err := c.Unload(ctx, sampleName, api.OpRequest{}); err != nil {
		t.Fatalf("unload: %v", err)
	}
	untouched("unload")
	if st, err := c.Patches(ctx); err != nil || len(st.Patches) != 0 {
		t.Errorf("after unload: %+v, %v", st.Patches, err)
	}
	if _, err := v.Linux.Enable(sampleName, livepatch.Options{}); !errors.Is(err, syscall.ENOENT) {
		t.Errorf("enable after unload: %v, want ENOENT", err)
	}

	g.cleanDmesg()
}

// TestLinuxLivepatchGuestFtrace: the guest's own ftrace and the host's
// patches share the fentry sites. While the guest traces
// cmdline_proc_show, the host refuses to patch it (EBUSY: the site is a
// call, not the NOP) and writes nothing; once the guest's tracer is off
// the patch goes in, and the guest's ftrace keeps working for another
// function while it is on. (Separate from TestLinuxLivepatch: the nested
// tier's one-CPU L1 VM has frozen right after the guest turned its
// tracer on, see docs/linux-guests.md.)
func TestLinuxLivepatchGuestFtrace(t *testing.T) {
	g := bootPatchGuest(t, 1)
	c, ctx, exec, untouched := g.c, g.ctx, g.exec, g.untouched
	// The guest's own ftrace on the function: its fentry site is a call
	// now, and the host refuses to take it (EBUSY), writing nothing.
	exec("mount -t tracefs tracefs /sys/kernel/tracing")
	exec("echo cmdline_proc_show > /sys/kernel/tracing/set_ftrace_filter")
	exec("echo function > /sys/kernel/tracing/current_tracer")
	if _, err := c.AddPatch(ctx, api.PatchRequest{Object: sampleKO, Name: "livepatch-sample.ko"}); !errors.Is(err, syscall.EBUSY) {
		t.Errorf("load while the guest traces cmdline_proc_show: %v, want EBUSY", err)
	} else {
		t.Logf("refused as it should be: %v", err)
	}
	untouched("the load over the guest's ftrace")
	if tr := exec("cat /sys/kernel/tracing/trace"); !strings.Contains(tr, "cmdline_proc_show") {
		t.Errorf("the guest's trace of cmdline_proc_show is empty:\n%s", tail(tr, 10))
	}
	exec("echo nop > /sys/kernel/tracing/current_tracer")

	if _, err := c.AddPatch(ctx, api.PatchRequest{Object: sampleKO, Name: "livepatch-sample.ko"}); err != nil {
		t.Fatalf("load after the guest's tracer is off: %v", err)
	}
	// traced turns the guest's function tracer on for filter, runs cmds
	// while it traces, turns it off, and returns their outputs and the
	// trace.
	traced := func(filter string, cmds ...string) (outs []string, tr string) {
		exec("echo '" + filter + "' > /sys/kernel/tracing/set_ftrace_filter")
		exec("echo > /sys/kernel/tracing/trace")
		exec("echo function > /sys/kernel/tracing/current_tracer")
		for _, c := range cmds {
			outs = append(outs, exec(c))
		}
		tr = exec("cat /sys/kernel/tracing/trace")
		exec("echo nop > /sys/kernel/tracing/current_tracer")
		return outs, tr
	}
	// The guest's ftrace keeps working for other functions while a patch
	// is on.
	outs, tr := traced("version_proc_show", "cat /proc/version", "cat /proc/cmdline")
	if outs[1] != patchedMsg {
		t.Errorf("patched while the guest traces another function: /proc/cmdline %q", outs[1])
	}
	if !strings.Contains(tr, "version_proc_show") {
		t.Errorf("the guest's trace of version_proc_show while patched is empty:\n%s", tail(tr, 10))
	}
	// ... and for a glob that takes in the patched function: ftrace skips
	// it (the host disabled its record: linuxlive/ftrace.go) instead of
	// finding the host's jmp where it expects its NOP, which would be an
	// "ftrace bug" that turns the guest's ftrace off until it reboots.
	exec("echo '*_proc_show' > /sys/kernel/tracing/set_ftrace_filter")
	if f := exec("cat /sys/kernel/tracing/set_ftrace_filter"); strings.Contains(f, "cmdline_proc_show") || !strings.Contains(f, "version_proc_show") {
		t.Errorf("set_ftrace_filter for *_proc_show while patched: %q, want version_proc_show and not cmdline_proc_show", tail(f, 10))
	}
	// (The shell's echo does not report the write's EINVAL: the filter
	// file tells.)
	exec("echo cmdline_proc_show > /sys/kernel/tracing/set_ftrace_filter")
	if f := exec("cat /sys/kernel/tracing/set_ftrace_filter"); strings.Contains(f, "cmdline_proc_show") {
		t.Errorf("the guest's ftrace took the patched function into its filter: %q", tail(f, 5))
	}
	outs, tr = traced("*_proc_show", "cat /proc/version", "cat /proc/cmdline")
	if outs[1] != patchedMsg {
		t.Errorf("patched while the guest traces *_proc_show: /proc/cmdline %q", outs[1])
	}
	if !strings.Contains(tr, "version_proc_show") {
		t.Errorf("the guest's trace of *_proc_show while patched has no version_proc_show:\n%s", tail(tr, 10))
	}
	if d := exec("dmesg | grep -c 'ftrace bug' || true"); d != "0" {
		t.Errorf("the guest's ftrace reported %s ftrace bug(s)", d)
	}

	if _, err := c.Unload(ctx, sampleName, api.OpRequest{}); err != nil {
		t.Fatalf("unload: %v", err)
	}
	untouched("unload")
	// Given back: the guest's ftrace traces cmdline_proc_show again.
	if _, tr = traced("cmdline_proc_show", "cat /proc/cmdline"); !strings.Contains(tr, "cmdline_proc_show") {
		t.Errorf("after the unload the guest's trace of cmdline_proc_show is empty:\n%s", tail(tr, 10))
	}
	g.cleanDmesg()
}

func median(d []time.Duration) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func slicesMin(d []time.Duration) time.Duration {
	m := d[0]
	for _, x := range d {
		m = min(m, x)
	}
	return m
}

func slicesMax(d []time.Duration) time.Duration {
	m := d[0]
	for _, x := range d {
		m = max(m, x)
	}
	return m
}
