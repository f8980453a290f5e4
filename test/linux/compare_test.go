package linux

// TestLinuxCompare: klp-kvm next to Linux's own livepatch in the same
// Linux guest, in the same boot (test/compare-linux's run.sh
// --linux-guest drives it through the nested tier and prints the
// table; README.md there). Skipped unless KLP_E2E_LINUX_COMPARE=1, so the
// default nested tier does not spend minutes on it.
//
// Inside the guest, the timing is done by this test binary itself, put
// into the guest's initramfs as /bin/klp-lcmp (init below dispatches on
// that name): it loads livepatch-sample.ko with finit_module, times the
// transitions as user space sees them (test/compare-linux's invm_test.go
// does the same in its VM) and reads Linux's own view from the kernel
// log's timestamps. The host drives it through the agent, one cycle per
// command, and switches the same function with klp-kvm through the API.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"klp-kvm/api"
	"klp-kvm/guestagent/initrd"
	"klp-kvm/vmm"
)

// compareMarker starts each result line; test/compare-linux parses them
// out of the nested tier's log (its guest_test.go has the same struct).
const compareMarker = "@@klp-compare-guest "

// The helper's name in the guest and the module's place there.
const (
	lcmpHelper = "klp-lcmp"
	lcmpKO     = "/root/livepatch-sample.ko"
	lcmpDir    = "/sys/kernel/livepatch/" + sampleName
)

// init runs the in-guest helper when this binary is started as
// /bin/klp-lcmp (before the testing package sees the arguments).
func init() {
	if filepath.Base(os.Args[0]) == lcmpHelper {
		os.Exit(lcmpMain(os.Args[1:]))
	}
}

// lcmpCycle is what the helper's "cycle" prints.
type lcmpCycle struct {
	Load, Enable, Disable, Rmmod int64
	KEnable, KDisable            int64 // 0: not in the kernel log
}

// lcmpMain is the helper: setup (dynamic debug for livepatch's
// transition messages), enable KO / disable (Linux's patch on or off,
// untimed), cycle KO (one timed insmod, enable transition, disable,
// rmmod; a JSON line), hogs N (N detached readers of /proc/cmdline; their
// PIDs), hog (one such reader).
func lcmpMain(args []string) int {
	fail := func(err error) int {
		fmt.Fprintf(os.Stderr, "%s: %v\n", lcmpHelper, err)
		return 1
	}
	if len(args) == 0 {
		return fail(errors.New("usage: setup | enable KO | disable | cycle KO | hogs N | hog"))
	}
	switch args[0] {
	case "setup":
		// livepatch's "initializing" and "completing" lines are pr_debug.
		unix.Mount("debugfs", "/sys/kernel/debug", "debugfs", 0, "")
		var last error
		for _, ctl := range []string{"/proc/dynamic_debug/control", "/sys/kernel/debug/dynamic_debug/control"} {
			if last = os.WriteFile(ctl, []byte("file kernel/livepatch/transition.c +p\n"), 0); last == nil {
				fmt.Println("dynamic debug on for kernel/livepatch/transition.c")
				return 0
			}
		}
		return fail(fmt.Errorf("dynamic debug: %w", last))
	case "enable":
		if len(args) != 2 {
			return fail(errors.New("usage: enable KO"))
		}
		if err := lcmpInsmod(args[1]); err != nil {
			return fail(err)
		}
		return 0
	case "disable":
		if err := lcmpDisable(); err != nil {
			return fail(err)
		}
		return 0
	case "cycle":
		if len(args) != 2 {
			return fail(errors.New("usage: cycle KO"))
		}
		c, err := lcmpOneCycle(args[1])
		if err != nil {
			return fail(err)
		}
		b, _ := json.Marshal(c)
		fmt.Println(string(b))
		return 0
	case "hogs":
		n, err := strconv.Atoi(args[len(args)-1])
		if len(args) != 2 || err != nil || n < 1 || n > 64 {
			return fail(errors.New("usage: hogs N (1..64)"))
		}
		for range n {
			cmd := exec.Command("/bin/"+lcmpHelper, "hog") // comm klp-lcmp in ps and the kernel's log
			cmd.Env = append(os.Environ(), "GOMAXPROCS=1")
			cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true} // outlives this command; PID 1 reaps it
			if err := cmd.Start(); err != nil {
				return fail(err)
			}
			fmt.Println(cmd.Process.Pid)
		}
		return 0
	case "hog":
		for {
			os.ReadFile("/proc/cmdline") // cmdline_proc_show, the patched function
		}
	}
	return fail(fmt.Errorf("unknown command %q", args[0]))
}

// lcmpInsmod loads the module and waits for its enable transition.
func lcmpInsmod(ko string) error {
	f, err := os.Open(ko)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.FinitModule(int(f.Fd()), "", 0); err != nil {
		return fmt.Errorf("finit_module %s: %w", ko, err)
	}
	return WaitTransition(lcmpDir, false, 20*time.Second)
}

// lcmpDisable writes 0 to enabled, waits for the transition and removes
// the module.
func lcmpDisable() error {
	if err := os.WriteFile(lcmpDir+"/enabled", []byte("0"), 0); err != nil {
		return fmt.Errorf("disable: %w", err)
	}
	if err := WaitTransition(lcmpDir, true, 20*time.Second); err != nil {
		return err
	}
	return DeleteModule(sampleName, 20*time.Second)
}

// lcmpOneCycle is one timed cycle; the kernel log's records of it come
// from /dev/kmsg, read from where it ended before the cycle.
func lcmpOneCycle(ko string) (lcmpCycle, error) {
	var c lcmpCycle
	orig, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return c, err
	}
	if string(orig) == patchedMsg+"\n" {
		return c, errors.New("/proc/cmdline is patched before the cycle")
	}
	// A raw descriptor: os.File would put the character device into
	// Go's poller, which turns the EAGAIN at the end of the log into a
	// wait for the next record.
	kmsg, err := unix.Open("/dev/kmsg", unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return c, fmt.Errorf("/dev/kmsg: %w", err)
	}
	defer unix.Close(kmsg)
	if _, err := unix.Seek(kmsg, 0, unix.SEEK_END); err != nil {
		return c, fmt.Errorf("/dev/kmsg: %w", err)
	}
	f, err := os.Open(ko)
	if err != nil {
		return c, err
	}
	defer f.Close()
	t0 := time.Now()
	if err := unix.FinitModule(int(f.Fd()), "", 0); err != nil {
		return c, fmt.Errorf("finit_module %s: %w", ko, err)
	}
	t1 := time.Now()
	if err := WaitTransition(lcmpDir, false, 20*time.Second); err != nil {
		return c, fmt.Errorf("enable: %w", err)
	}
	t2 := time.Now()
	if got, _ := os.ReadFile("/proc/cmdline"); string(got) != patchedMsg+"\n" {
		return c, fmt.Errorf("enabled, but /proc/cmdline reads %q", got)
	}
	t3 := time.Now()
	if err := os.WriteFile(lcmpDir+"/enabled", []byte("0"), 0); err != nil {
		return c, fmt.Errorf("disable: %w", err)
	}
	if err := WaitTransition(lcmpDir, true, 20*time.Second); err != nil {
		return c, fmt.Errorf("disable: %w", err)
	}
	t4 := time.Now()
	if got, _ := os.ReadFile("/proc/cmdline"); !bytes.Equal(got, orig) {
		return c, fmt.Errorf("disabled, but /proc/cmdline reads %q", got)
	}
	if err := DeleteModule(sampleName, 20*time.Second); err != nil {
		return c, err
	}
	t5 := time.Now()
	c.Load, c.Enable, c.Disable, c.Rmmod = int64(t1.Sub(t0)), int64(t2.Sub(t0)), int64(t4.Sub(t3)), int64(t5.Sub(t4))
	c.KEnable, c.KDisable = kernelView(readKmsg(kmsg))
	return c, nil
}

// kmsgRecord is one /dev/kmsg record: "prio,seq,usec,flags;text".
type kmsgRecord struct {
	usec int64
	text string
}

// readKmsg reads the records available without blocking from fd, a
// non-blocking /dev/kmsg (at most 4096; one read(2) is one record).
func readKmsg(fd int) []kmsgRecord {
	var out []kmsgRecord
	buf := make([]byte, 8192)
	for range 4096 {
		n, err := unix.Read(fd, buf)
		if errors.Is(err, syscall.EPIPE) {
			continue // overwritten records: the next read goes on
		}
		if err != nil || n <= 0 {
			break // EAGAIN: the end of the log
		}
		out = append(out, parseKmsg(string(buf[:n]))...)
	}
	return out
}

func parseKmsg(s string) []kmsgRecord {
	head, text, ok := strings.Cut(s, ";")
	f := strings.Split(head, ",")
	if !ok || len(f) < 3 {
		return nil
	}
	us, err := strconv.ParseInt(f[2], 10, 64)
	if err != nil {
		return nil
	}
	text, _, _ = strings.Cut(text, "\n") // continuation lines follow
	return []kmsgRecord{{us, text}}
}

// kernelView is Linux's own timing of a cycle from its log (6.1's
// kernel/livepatch): the enable from pr_notice "enabling patch"
// (klp_enable_patch, before the ftrace registration) to pr_notice
// "patching complete" (the end of klp_complete_transition); the disable
// from pr_debug "initializing unpatching transition" (or, without
// dynamic debug, pr_notice "starting unpatching transition", a few µs
// later) to "unpatching complete", which comes after the ftrace
// unregistration (klp_unpatch_objects runs in klp_complete_transition,
// after its "completing" line). 0 where a line is missing.
func kernelView(recs []kmsgRecord) (enable, disable int64) {
	q := "'" + sampleName + "': "
	keys := []string{"enabling patch '" + sampleName + "'", q + "patching complete",
		q + "initializing unpatching transition", q + "starting unpatching transition", q + "unpatching complete"}
	at := map[string]int64{}
	for _, r := range recs {
		for _, k := range keys {
			if _, seen := at[k]; !seen && strings.Contains(r.text, k) {
				at[k] = r.usec
			}
		}
	}
	span := func(a, b string) int64 {
		ta, oka := at[a]
		tb, okb := at[b]
		if !oka || !okb || tb < ta {
			return 0
		}
		return (tb - ta) * 1000
	}
	disStart := keys[2]
	if _, ok := at[disStart]; !ok {
		disStart = keys[3]
	}
	return span(keys[0], keys[1]), span(disStart, keys[4])
}

// compareCycles is KLP_E2E_LINUX_COMPARE_CYCLES (default 15): counted
// cycles per side and mode, after one warm-up cycle each.
func compareCycles() int {
	if n, err := strconv.Atoi(os.Getenv("KLP_E2E_LINUX_COMPARE_CYCLES")); err == nil && n > 0 {
		return n
	}
	return 15
}

// TestLinuxCompare boots a Debian guest with 1 and with 2 vCPUs (256
// MiB) and, in each boot, idle and then busy (a process per vCPU reading
// /proc/cmdline in a loop):
//
//   - Linux's own livepatch: the guest loads livepatch-sample.ko (the
//     same file the host patches with), timed in the guest by the helper;
//   - klp-kvm: the host loads the same .ko through the API and switches
//     it off and on, timed at the API (request to reply) and by
//     linuxlive's pause window;
//
// and prints a result line per mode. It also checks both orders of the
// two on the same function: with Linux's patch on, klp-kvm refuses
// (EBUSY: the fentry site is ftrace's call, not the NOP) and writes
// nothing; with klp-kvm's on, Linux's ftrace skips the function (the
// host disabled its record), so Linux's insmod loads without taking it,
// klp-kvm's patch stays, and once both are gone Linux's own livepatch
// of the function works again.
func TestLinuxCompare(t *testing.T) {
	if os.Getenv("KLP_E2E_LINUX_COMPARE") != "1" {
		t.Skip("KLP_E2E_LINUX_COMPARE=1 runs it (test/compare-linux/run.sh --linux-guest)")
	}
	for _, cpus := range []int{1, 2} {
		t.Run(fmt.Sprintf("%dcpu", cpus), func(t *testing.T) { testLinuxCompare(t, cpus) })
	}
}

func testLinuxCompare(t *testing.T, cpus int) {
	kernelImage(t) // skips without a kernel before building anything
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	self, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	rd, err := initrd.Build(initrd.Options{Files: []initrd.File{
		{Path: "/bin/" + lcmpHelper, Data: self, Mode: 0o755},
		{Path: lcmpKO, Data: sampleKO, Mode: 0o644},
	}})
	if err != nil {
		t.Fatal(err)
	}
	g := bootPatchGuestWith(t, cpus, func(c *vmm.Config) { c.Initrd = rd })
	c, ctx, run, original := g.c, g.ctx, g.exec, g.original
	kernel := run("uname -r")
	if out, err := g.v.Exec(lcmpHelper + " setup"); err != nil {
		t.Logf("no kernel-log view of Linux's transitions: %v", err)
	} else {
		t.Logf("%s", strings.TrimSpace(out))
	}

	// Order 1: Linux's patch on, then klp-kvm's load of the same
	// function: refused, and nothing of the guest changes.
	run(lcmpHelper + " enable " + lcmpKO)
	if got := run("cat /proc/cmdline"); got != patchedMsg {
		t.Fatalf("Linux's livepatch on: /proc/cmdline %q", got)
	}
	_, err = c.AddPatch(ctx, api.PatchRequest{Object: sampleKO, Name: "livepatch-sample.ko"})
	if !errors.Is(err, syscall.EBUSY) {
		t.Errorf("klp-kvm load while Linux's livepatch has the function: %v, want EBUSY", err)
	} else {
		t.Logf("Linux's patch on, klp-kvm refused as it should: %v", err)
	}
	if got := run("cat /proc/cmdline"); got != patchedMsg {
		t.Errorf("after klp-kvm's refusal: /proc/cmdline %q, want Linux's patched text", got)
	}
	if st := g.v.Linux.Status(); len(st.Patches) != 0 || st.PatchAreaInUse != 0 {
		t.Errorf("after klp-kvm's refusal: %d patches, %d bytes of the patch area in use", len(st.Patches), st.PatchAreaInUse)
	}
	run(lcmpHelper + " disable")
	g.untouched("Linux's patch on and off")

	cycles := compareCycles()
	for _, mode := range []string{"idle", "busy"} {
		r := CompareResult{CPUs: cpus, Mode: mode, Kernel: kernel}
		var hogs string
		if mode == "busy" {
			hogs = strings.Join(strings.Fields(run(fmt.Sprintf("%s hogs %d", lcmpHelper, cpus))), " ")
			time.Sleep(time.Second) // the hogs' start under TCG
		}
		// The guest's uptime at each phase, to place what its log says
		// (its watchdog's reports carry the same clock).
		phase := func(what string) {
			up, _, _ := strings.Cut(run("cat /proc/uptime"), " ")
			t.Logf("%s, %s: guest uptime %s", mode, what, up)
		}
		phase("Linux's cycles")
		// Linux: a warm-up cycle, then the counted ones.
		for i := -1; i < cycles; i++ {
			var lc lcmpCycle
			if err := json.Unmarshal([]byte(run(lcmpHelper+" cycle "+lcmpKO)), &lc); err != nil {
				t.Fatalf("%s: Linux cycle %d: %v", mode, i, err)
			}
			if i < 0 {
				continue
			}
			r.LinuxLoad = append(r.LinuxLoad, lc.Load)
			r.LinuxEnable = append(r.LinuxEnable, lc.Enable)
			r.LinuxDisable = append(r.LinuxDisable, lc.Disable)
			r.LinuxRmmod = append(r.LinuxRmmod, lc.Rmmod)
			if lc.KEnable > 0 && lc.KDisable > 0 {
				r.LinuxKEnable = append(r.LinuxKEnable, lc.KEnable)
				r.LinuxKDisable = append(r.LinuxKDisable, lc.KDisable)
			}
		}
		// klp-kvm: load, a warm-up cycle, the counted ones, unload.
		phase("klp-kvm's disable/enable cycles")
		t0 := time.Now()
		if _, err := c.AddPatch(ctx, api.PatchRequest{Object: sampleKO, Name: "livepatch-sample.ko"}); err != nil {
			t.Fatalf("%s: klp-kvm load: %v", mode, err)
		}
		r.KlpLoad = int64(time.Since(t0))
		for i := -1; i < cycles; i++ {
			t1 := time.Now()
			d, err := c.Disable(ctx, sampleName, api.OpRequest{})
			if err != nil {
				t.Fatalf("%s: klp-kvm cycle %d: disable: %v", mode, i, err)
			}
			dt := time.Since(t1)
			if got := run("cat /proc/cmdline"); got != original {
				t.Fatalf("%s: klp-kvm cycle %d: disabled, /proc/cmdline %q", mode, i, got)
			}
			t2 := time.Now()
			e, err := c.Enable(ctx, sampleName, api.OpRequest{})
			if err != nil {
				t.Fatalf("%s: klp-kvm cycle %d: enable: %v", mode, i, err)
			}
			et := time.Since(t2)
			if got := run("cat /proc/cmdline"); got != patchedMsg {
				t.Fatalf("%s: klp-kvm cycle %d: enabled, /proc/cmdline %q", mode, i, got)
			}
			if i < 0 {
				continue
			}
			r.KlpDisable = append(r.KlpDisable, int64(dt))
			r.KlpDisableWindow = append(r.KlpDisableWindow, int64(d.Result.PauseWindow))
			r.KlpEnable = append(r.KlpEnable, int64(et))
			r.KlpEnableWindow = append(r.KlpEnableWindow, int64(e.Result.PauseWindow))
			r.KlpAttempts += d.Result.Attempts + e.Result.Attempts
			r.KlpEnableTransition = append(r.KlpEnableTransition, int64(e.Result.Total))
			r.KlpDisableTransition = append(r.KlpDisableTransition, int64(d.Result.Total))
		}
		if _, err := c.Unload(ctx, sampleName, api.OpRequest{}); err != nil {
			t.Fatalf("%s: klp-kvm unload: %v", mode, err)
		}
		// klp-kvm: load/unload cycles, Linux's insmod and rmmod.
		phase("klp-kvm's load/unload cycles")
		for i := -1; i < cycles; i++ {
			t1 := time.Now()
			l, err := c.AddPatch(ctx, api.PatchRequest{Object: sampleKO, Name: "livepatch-sample.ko"})
			if err != nil {
				t.Fatalf("%s: klp-kvm load cycle %d: %v", mode, i, err)
			}
			lt := time.Since(t1)
			if got := run("cat /proc/cmdline"); got != patchedMsg {
				t.Fatalf("%s: klp-kvm load cycle %d: loaded, /proc/cmdline %q", mode, i, got)
			}
			t2 := time.Now()
			if _, err := c.Unload(ctx, sampleName, api.OpRequest{}); err != nil {
				t.Fatalf("%s: klp-kvm load cycle %d: unload: %v", mode, i, err)
			}
			ut := time.Since(t2)
			if got := run("cat /proc/cmdline"); got != original {
				t.Fatalf("%s: klp-kvm load cycle %d: unloaded, /proc/cmdline %q", mode, i, got)
			}
			if i >= 0 {
				r.KlpLoads = append(r.KlpLoads, int64(lt))
				r.KlpLoadWindow = append(r.KlpLoadWindow, int64(l.Result.PauseWindow))
				r.KlpUnloads = append(r.KlpUnloads, int64(ut))
			}
		}
		phase("done")
		if hogs != "" {
			run("kill " + hogs)
		}
		g.untouched(mode + " cycles")
		b, _ := json.Marshal(r)
		t.Logf("%s%s", compareMarker, b)
		t.Logf("%d vCPU(s), %s: Linux enable median %v (kernel's log %v), disable %v; klp-kvm enable %v (window %v), disable %v (window %v), %d attempts for %d switches",
			cpus, mode, medianNS(r.LinuxEnable), medianNS(r.LinuxKEnable), medianNS(r.LinuxDisable),
			medianNS(r.KlpEnable), medianNS(r.KlpEnableWindow), medianNS(r.KlpDisable), medianNS(r.KlpDisableWindow), r.KlpAttempts, 2*cycles)
	}
	// The guest's log is long by now (every cycle's livepatch lines), over
	// the 32 KiB an agent reply carries: the guest greps it. A soft
	// lockup is not counted: its watchdog sees one when a vCPU was not run
	// for over 20 s, which here is the L1 VM stalling (the nested runner
	// nudges it then; one run placed such a stall inside Linux's own
	// cycles, where the host paused nothing: test/compare-linux/README.md,
	// "The guest's watchdog"), not the guest's kernel; it is logged.
	if bad := run(`dmesg | grep -e "WARNING:" -e "BUG:" -e Oops -e "general protection" | grep -v "soft lockup" || true`); bad != "" {
		t.Errorf("guest dmesg after the cycles:\n%s", tail(bad, 40))
	}
	if sl := run(`dmesg | grep "soft lockup" || true`); sl != "" {
		t.Logf("the guest's watchdog saw vCPUs not run for a long time (the L1 VM stalling):\n%s", sl)
	}

	// Order 2: klp-kvm's patch on, then Linux's insmod of the same
	// function. The host disabled the guest ftrace's record of the site
	// (linuxlive/ftrace.go), so Linux's ftrace skips it, as it skips the
	// records it disables itself: the insmod goes through but its patch
	// does not take the function while klp-kvm has it, and the guest's
	// ftrace stays on (before, its ftrace found klp-kvm's jmp where it
	// expected its NOP: "ftrace bug", and ftrace off until the reboot).
	if _, err := c.AddPatch(ctx, api.PatchRequest{Object: sampleKO, Name: "livepatch-sample.ko"}); err != nil {
		t.Fatalf("klp-kvm load before Linux's insmod: %v", err)
	}
	if out, err := g.v.Exec(lcmpHelper + " enable " + lcmpKO); err != nil {
		t.Errorf("Linux's insmod while klp-kvm has the function: %v", err)
	} else {
		t.Logf("klp-kvm's patch on, Linux's insmod: %s", strings.TrimSpace(out))
	}
	if got := run("cat /proc/cmdline"); got != patchedMsg {
		t.Errorf("after Linux's insmod: /proc/cmdline %q, want klp-kvm's patched text", got)
	}
	if site := run("mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null; cat /sys/kernel/tracing/enabled_functions 2>/dev/null || true"); strings.Contains(site, "cmdline_proc_show") {
		t.Errorf("Linux's ftrace shows cmdline_proc_show as enabled while klp-kvm has it:\n%s", site)
	}
	run(lcmpHelper + " disable")
	if _, err := c.Unload(ctx, sampleName, api.OpRequest{}); err != nil {
		t.Fatalf("klp-kvm unload after Linux's insmod: %v", err)
	}
	g.untouched("klp-kvm's unload after Linux's insmod and rmmod")
	// Given back with no ftrace user left, the record is the guest's
	// again: Linux's own livepatch of the function now works.
	run(lcmpHelper + " enable " + lcmpKO)
	if got := run("cat /proc/cmdline"); got != patchedMsg {
		t.Errorf("Linux's livepatch after klp-kvm gave the function back: /proc/cmdline %q", got)
	}
	run(lcmpHelper + " disable")
	if got := run("cat /proc/cmdline"); got != original {
		t.Errorf("after Linux's rmmod: /proc/cmdline %q, want the original", got)
	}
	klog := run(`dmesg | grep -e "ftrace bug" -e "ftrace failed" -e "WARNING" | tail -n 16`)
	if klog != "" {
		t.Errorf("the guest's ftrace complained:\n%s", klog)
	}
}

func medianNS(ns []int64) time.Duration {
	if len(ns) == 0 {
		return 0
	}
	d := make([]time.Duration, len(ns))
	for i, v := range ns {
		d[i] = time.Duration(v)
	}
	return median(d)
}

// TestKernelView: Linux's own timing of a cycle comes from its log's
// records as /dev/kmsg gives them; a missing line gives 0, not a guess.
func TestKernelView(t *testing.T) {
	var recs []kmsgRecord
	for _, s := range []string{
		"5,100,1000000,-;livepatch: enabling patch 'livepatch_sample'\n",
		"7,101,1000100,-;livepatch: 'livepatch_sample': initializing patching transition\n",
		"5,102,1000900,-;livepatch: 'livepatch_sample': starting patching transition\n",
		"7,103,1012500,-;livepatch: 'livepatch_sample': completing patching transition\n",
		"5,104,1013000,-;livepatch: 'livepatch_sample': patching complete\n",
		"7,105,2000000,-;livepatch: 'livepatch_sample': initializing unpatching transition\n SUBSYSTEM=x\n",
		"5,106,2000100,-;livepatch: 'livepatch_sample': starting unpatching transition\n",
		"7,107,2001000,-;livepatch: 'livepatch_sample': completing unpatching transition\n",
		"5,108,3001000,-;livepatch: 'livepatch_sample': unpatching complete\n",
		"junk", "6,1,notanumber,-;x\n",
	} {
		recs = append(recs, parseKmsg(s)...)
	}
	if len(recs) != 9 {
		t.Fatalf("%d records, want 9: %+v", len(recs), recs)
	}
	en, dis := kernelView(recs)
	if en != 13_000_000 || dis != 1_001_000_000 {
		t.Errorf("enable %d ns, disable %d ns; want 13000000 and 1001000000", en, dis)
	}
	// Without dynamic debug (no pr_debug lines) the disable starts at
	// "starting unpatching transition".
	var notices []kmsgRecord
	for _, r := range recs {
		if !strings.Contains(r.text, "initializing") && !strings.Contains(r.text, "completing") {
			notices = append(notices, r)
		}
	}
	if en, dis := kernelView(notices); en != 13_000_000 || dis != 1_000_900_000 {
		t.Errorf("notices only: enable %d, disable %d; want 13000000 and 1000900000", en, dis)
	}
	if en, dis := kernelView(recs[:4]); en != 0 || dis != 0 {
		t.Errorf("without the complete lines: %d, %d; want 0, 0", en, dis)
	}
}
