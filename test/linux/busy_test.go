package linux

import (
	"bytes"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"klp-kvm/api"
	"klp-kvm/guestagent/initrd"
	"klp-kvm/vmm"
)

// klp-busy.ko (linuxpatch/testdata/klp-busy, built by its build.sh): one
// kernel thread per online CPU reading /proc/cmdline through filp_open +
// kernel_read, so cmdline_proc_show runs in kernel threads on every vCPU;
// its counters are read-only module parameters.
//
//go:embed testdata/klp-busy.ko
var busyKO []byte

const (
	busyPath   = "/klp-busy.ko" // in the guest's initramfs
	busyParams = "/sys/module/klp_busy/parameters/"
	// busyCycles is issue 17's figure: 100 disable/enable cycles, 200
	// switches, under load.
	busyCycles = 100
	// userRound is how many reads one user-space loop makes per guest
	// exec (the agent bounds an exec to a minute; the loops are restarted
	// round after round until the cycles are done).
	userRound = 200
)

// TestLinuxLivepatchBusy is issue 17's stress test: livepatch-sample
// disabled and enabled 100 times (200 switches) while the guest runs the
// patched function everywhere: klp-busy.ko's kernel threads (one bound
// to each vCPU) and one user-space process per vCPU read /proc/cmdline in
// loops. Every switch must succeed within the default deadline (blocked
// attempts are retried and counted); after the switches of every tenth
// cycle (every cycle with KLP_E2E_LINUX_BUSY=all) the kernel threads
// must read the new text, no read may give anything but the two
// texts, and the guest's dmesg must stay free of warnings and oopses.
// Two vCPUs by default (the nested tier, so CI, runs it); one vCPU too
// with KLP_E2E_LINUX_BUSY=all; none with KLP_E2E_LINUX_BUSY=0. A vCPU
// count takes 1.5-3.5 minutes in the nested tier (test/nested gives the
// Linux VM's test binary 12 minutes).
func TestLinuxLivepatchBusy(t *testing.T) {
	counts := []int{2}
	switch v := os.Getenv("KLP_E2E_LINUX_BUSY"); v {
	case "0":
		t.Skip("KLP_E2E_LINUX_BUSY=0")
	case "all":
		counts = []int{2, 1}
	case "", "1":
	default:
		t.Fatalf("KLP_E2E_LINUX_BUSY=%q: want 0, 1 or all", v)
	}
	for _, cpus := range counts {
		t.Run(fmt.Sprintf("%dcpu", cpus), func(t *testing.T) { testLinuxLivepatchBusy(t, cpus) })
	}
}

// kthreadCounts are klp-busy's module parameters.
type kthreadCounts struct {
	threads, reads, original, patched, other, errors int64
}

func (k kthreadCounts) String() string {
	return fmt.Sprintf("%d reads (%d original, %d patched, %d other, %d errors) by %d threads",
		k.reads, k.original, k.patched, k.other, k.errors, k.threads)
}

// busyWait is a guest script: wait (up to about 5 s) until klp-busy's
// counter $1 exceeds $2, then print the counters. One short exec per
// check: the agent's serial line costs a VM exit or two per byte, which
// nested under QEMU TCG dominates a round trip, so the commands are kept
// short and the waiting is done in the guest.
const (
	busyWaitPath = "/tmp/w"
	busyWait     = `cd ` + busyParams + `
i=0
while [ $(cat $1) -le $2 ] && [ $i -lt 500 ]; do sleep 0.01; i=$((i+1)); done
cat threads reads_original reads_patched reads_other read_errors
`
)

// busyCounters runs busyWait: klp-busy's counters once counter (a
// parameter's name) exceeds above, or after the guest's wait.
func (g *patchGuest) busyCounters(counter string, above int64) kthreadCounts {
	g.t.Helper()
	out := g.exec(fmt.Sprintf("sh %s %s %d", busyWaitPath, counter, above))
	f := strings.Fields(out)
	if len(f) != 5 {
		g.t.Fatalf("klp_busy parameters: %q, want 5 numbers", out)
	}
	var v [5]int64
	for i, s := range f {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			g.t.Fatalf("klp_busy parameters: %q", out)
		}
		v[i] = n
	}
	// The module's own "reads" is left out: the files are read one after
	// the other while the threads run, so the total is the classes' sum.
	return kthreadCounts{threads: v[0], reads: v[1] + v[2] + v[3] + v[4], original: v[1], patched: v[2], other: v[3], errors: v[4]}
}

// snapshot is klp-busy's counters as the guest prints them, or why not,
// for a failure message.
func (g *patchGuest) snapshot() string {
	out, err := g.v.Exec("sh " + busyWaitPath + " threads 0")
	if err != nil {
		return err.Error()
	}
	return strings.Join(strings.Fields(out), " ") + " (threads, original, patched, other, errors)"
}

// waitKthreads waits until klp-busy's counter (reads_original or
// reads_patched) exceeds above: the kernel threads have read that text
// since. Any read that gave neither text fails the test.
func (g *patchGuest) waitKthreads(what, counter string, above int64) kthreadCounts {
	g.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		k := g.busyCounters(counter, above)
		if k.other != 0 || k.errors != 0 {
			g.t.Fatalf("%s: klp_busy threads: %v", what, k)
		}
		if (counter == "reads_original" && k.original > above) || (counter == "reads_patched" && k.patched > above) {
			return k
		}
		if time.Now().After(deadline) {
			g.t.Fatalf("%s: klp_busy threads did not read %s in 60 s: %v", what, counter, k)
		}
	}
}

// userLoops are user-space processes in the guest, one per vCPU, each
// reading /proc/cmdline in a shell loop (a separate klp-agent process:
// /init is not an in-process applet path) and counting the texts it saw,
// restarted round after round until stop.
type userLoops struct {
	stop   atomic.Bool
	wg     sync.WaitGroup
	cancel context.CancelFunc // ends the rounds in flight (a failed test)

	mu                                      sync.Mutex
	rounds, reads, original, patched, other int
	failures                                []string
}

func (u *userLoops) counts() (rounds, reads, original, patched, other int) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.rounds, u.reads, u.original, u.patched, u.other
}

// userScript reads /proc/cmdline userRound times and prints how many
// reads gave $1 (the original), $2 (the patched text) and anything else.
const userScript = `n=0; o=0; p=0; x=0
while [ $n -lt ` + "%d" + ` ]; do
	t=$(cat /proc/cmdline)
	case "$t" in
	"$1") o=$((o+1)) ;;
	"$2") p=$((p+1)) ;;
	*) x=$((x+1)) ;;
	esac
	n=$((n+1))
done
echo "busy $n $o $p $x"`

var userLine = regexp.MustCompile(`busy (\d+) (\d+) (\d+) (\d+)`)

func startUserLoops(g *patchGuest, n int) *userLoops {
	lctx, cancel := context.WithCancel(g.ctx)
	u := &userLoops{cancel: cancel}
	cmd := "/init sh -c " + shellQuote(fmt.Sprintf(userScript, userRound)) + " busy " + shellQuote(g.original) + " " + shellQuote(patchedMsg)
	for i := range n {
		u.wg.Add(1)
		go func() {
			defer u.wg.Done()
			for !u.stop.Load() {
				ctx, cancel := context.WithTimeout(lctx, 90*time.Second)
				r, err := g.v.Agent.Exec(ctx, cmd)
				cancel()
				m := userLine.FindStringSubmatch(r.Output)
				u.mu.Lock()
				if err != nil || r.Status != 0 || m == nil {
					u.failures = append(u.failures, fmt.Sprintf("loop %d: status %d, %v: %q", i, r.Status, err, tail(r.Output, 3)))
					u.mu.Unlock()
					if len(u.failures) > 5 {
						return
					}
					continue
				}
				var v [4]int
				for j := range v {
					v[j], _ = strconv.Atoi(m[j+1])
				}
				u.rounds++
				u.reads += v[0]
				u.original += v[1]
				u.patched += v[2]
				u.other += v[3]
				u.mu.Unlock()
			}
		}()
	}
	return u
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// blockLog collects linuxlive's "attempt N blocked: WHY" lines from the
// VMM's events: what a retried switch found on a stack.
type blockLog struct {
	mu      sync.Mutex
	line    []byte
	reasons map[string]int
}

var blockedLine = regexp.MustCompile(`attempt \d+ blocked: (.*)$`)

func (b *blockLog) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, c := range p {
		if c != '\n' {
			b.line = append(b.line, c)
			continue
		}
		if m := blockedLine.FindSubmatch(b.line); m != nil {
			if b.reasons == nil {
				b.reasons = map[string]int{}
			}
			b.reasons[string(m[1])]++
		}
		b.line = b.line[:0]
	}
	return len(p), nil
}

func (b *blockLog) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	type kv struct {
		why string
		n   int
	}
	var l []kv
	for w, n := range b.reasons {
		l = append(l, kv{w, n})
	}
	sort.Slice(l, func(i, j int) bool { return l[i].n > l[j].n || (l[i].n == l[j].n && l[i].why < l[j].why) })
	var s []string
	for _, e := range l {
		s = append(s, fmt.Sprintf("%dx %s", e.n, e.why))
	}
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, "; ")
}

// percentile is the p-th percentile (nearest rank) of d.
func percentile(d []time.Duration, p float64) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(p*float64(len(s))+0.999999) - 1
	return s[min(max(i, 0), len(s)-1)]
}

func spread(d []time.Duration) string {
	return fmt.Sprintf("median %v, p90 %v, max %v", percentile(d, 0.5).Round(10*time.Microsecond),
		percentile(d, 0.9).Round(10*time.Microsecond), slicesMax(d).Round(10*time.Microsecond))
}

// badDmesg are the kernel log's marks of a warning, a bug, an oops, a
// lockup or a stall.
var badDmesg = []string{"WARNING:", "BUG:", "Oops", "general protection", "unable to handle", "Unable to handle",
	"Call Trace", "soft lockup", "hard LOCKUP", "detected stall", "blocked for more than"}

func testLinuxLivepatchBusy(t *testing.T, cpus int) {
	rd, err := initrd.Build(initrd.Options{Files: []initrd.File{{Path: busyPath, Data: busyKO, Mode: 0o644}}})
	if err != nil {
		t.Fatal(err)
	}
	blocks := &blockLog{}
	g := bootPatchGuestWith(t, cpus, func(c *vmm.Config) { c.Initrd, c.Events = rd, blocks })
	c, ctx := g.c, g.ctx

	// The kernel threads, before any patch: they read the original.
	if err := g.v.Agent.FileWrite(ctx, busyWaitPath, busyWait); err != nil {
		t.Fatal(err)
	}
	g.exec("insmod " + busyPath)
	k := g.waitKthreads("after insmod", "reads_original", 0)
	if k.threads != int64(cpus) {
		t.Fatalf("klp_busy runs %d threads, want one per vCPU (%d)", k.threads, cpus)
	}
	if k.patched != 0 {
		t.Fatalf("klp_busy saw the patched text before any patch: %v", k)
	}
	t.Logf("klp_busy loaded: %v; its dmesg lines: %s", k, strings.Join(strings.Split(g.exec("dmesg | grep -e klp_busy -e taint || true"), "\n"), " | "))

	// The user-space loops, one per vCPU.
	u := startUserLoops(g, cpus)
	stopLoops := func() {
		u.stop.Store(true)
		u.wg.Wait()
	}
	t.Cleanup(func() {
		// A failed test does not wait for the rounds in flight.
		u.cancel()
		stopLoops()
	})

	rep, err := c.AddPatch(ctx, api.PatchRequest{Object: sampleKO, Name: "livepatch-sample.ko"})
	if err != nil {
		t.Fatalf("load under load: %v; blocked attempts: %s", err, blocks)
	}
	t.Logf("load under load: pause window %v, %d attempt(s)", rep.Result.PauseWindow, rep.Result.Attempts)
	k = g.waitKthreads("after the load", "reads_patched", 0)
	_, ur0, _, _, _ := u.counts()

	var enableE2E, enableWin, disableE2E, disableWin []time.Duration
	attempts, retried, maxAttempts := 0, 0, 0
	count := func(r *api.OpReply) {
		attempts += r.Result.Attempts
		maxAttempts = max(maxAttempts, r.Result.Attempts)
		if r.Result.Attempts > 1 {
			retried++
		}
	}
	kStart := k
	// watch says whether the kernel threads must be seen reading the new
	// text after cycle i's switches (an exec into the busy guest, about a
	// second in the nested tier): after every cycle with
	// KLP_E2E_LINUX_BUSY=all, else after every tenth and the last (CI's
	// time); the texts and counters are checked at the end either way.
	watchAll := os.Getenv("KLP_E2E_LINUX_BUSY") == "all"
	watch := func(i int) bool { return watchAll || i%10 == 0 || i == busyCycles-1 }
	tCycles := time.Now()
	for i := range busyCycles {
		t0 := time.Now()
		r, err := c.Disable(ctx, sampleName, api.OpRequest{})
		if err != nil {
			t.Fatalf("cycle %d: disable: %v\nblocked attempts so far: %s\nkernel threads: %v", i, err, blocks, g.snapshot())
		}
		disableE2E = append(disableE2E, time.Since(t0))
		disableWin = append(disableWin, r.Result.PauseWindow)
		count(&r)
		if watch(i) {
			k = g.waitKthreads(fmt.Sprintf("cycle %d disabled", i), "reads_original", k.original)
		}

		t0 = time.Now()
		if r, err = c.Enable(ctx, sampleName, api.OpRequest{}); err != nil {
			t.Fatalf("cycle %d: enable: %v\nblocked attempts so far: %s\nkernel threads: %v", i, err, blocks, g.snapshot())
		}
		enableE2E = append(enableE2E, time.Since(t0))
		enableWin = append(enableWin, r.Result.PauseWindow)
		count(&r)
		if watch(i) {
			k = g.waitKthreads(fmt.Sprintf("cycle %d enabled", i), "reads_patched", k.patched)
		}
		if (i+1)%10 == 0 {
			t.Logf("%d cycles in %v, %d attempts; kernel threads: %v", i+1, time.Since(tCycles).Round(time.Millisecond), attempts, k)
		}
	}
	elapsed := time.Since(tCycles)
	_, ur1, _, _, _ := u.counts()
	if got := g.exec("cat /proc/cmdline"); got != patchedMsg {
		t.Errorf("after the cycles: /proc/cmdline %q, want the patched text", got)
	}
	stopLoops()

	switches := 2 * busyCycles
	t.Logf("%d vCPU(s): %d disable/enable cycles (%d switches) in %v under load, none failed", cpus, busyCycles, switches, elapsed.Round(time.Millisecond))
	t.Logf("enable end to end: %s", spread(enableE2E))
	t.Logf("enable pause window: %s", spread(enableWin))
	t.Logf("disable end to end: %s", spread(disableE2E))
	t.Logf("disable pause window: %s", spread(disableWin))
	t.Logf("attempts: %d for %d switches (%.2f per switch), %d switch(es) retried, at most %d attempts; blocked by: %s",
		attempts, switches, float64(attempts)/float64(switches), retried, maxAttempts, blocks)
	t.Logf("kernel threads during the cycles: %d reads (%d original, %d patched); in all: %v",
		k.reads-kStart.reads, k.original-kStart.original, k.patched-kStart.patched, k)
	rounds, ureads, uorig, upatched, uother := u.counts()
	t.Logf("user loops: %d rounds, %d reads (%d original, %d patched, %d other), %d during the cycles",
		rounds, ureads, uorig, upatched, uother, ur1-ur0)
	u.mu.Lock()
	failures := u.failures
	u.mu.Unlock()
	if len(failures) > 0 {
		t.Errorf("user loops failed: %s", strings.Join(failures, "; "))
	}
	// The loops started before the load: patched reads can only come
	// from the cycles.
	if uother != 0 || uorig == 0 || upatched == 0 || ur1 <= ur0 {
		t.Errorf("user loops: %d reads, %d original, %d patched, %d other, %d during the cycles: want both texts, nothing else, and reads during the cycles",
			ureads, uorig, upatched, uother, ur1-ur0)
	}

	// Unload; the threads read the original again; rmmod stops them.
	if _, err := c.Unload(ctx, sampleName, api.OpRequest{}); err != nil {
		t.Fatalf("unload: %v; blocked attempts: %s", err, blocks)
	}
	k = g.waitKthreads("after unload", "reads_original", k.original)
	g.untouched("unload")
	g.exec("rmmod klp_busy")
	if lsmod := g.exec("lsmod"); strings.Contains(lsmod, "klp_busy") {
		t.Errorf("klp_busy still loaded after rmmod:\n%s", lsmod)
	}
	if ps := g.exec("ps -e"); strings.Contains(ps, "klp_busy") {
		t.Errorf("klp_busy threads still running after rmmod:\n%s", ps)
	}
	g.checkDmesg()
}

// checkDmesg checks the guest's whole kernel log for badDmesg, in the
// guest (an exec's output is capped at 32 KiB, which a log with a few
// warnings in it can pass; the boot's is about 16 KiB), and that
// klp_busy's exit line is there.
func (g *patchGuest) checkDmesg() {
	g.t.Helper()
	g.exec("dmesg > /tmp/dmesg.txt")
	size := g.exec("wc -c < /tmp/dmesg.txt")
	exit := g.exec("grep -F 'klp_busy: ' /tmp/dmesg.txt || true")
	if !strings.Contains(exit, " reads (") {
		g.t.Errorf("no exit line of klp_busy in dmesg: %q", exit)
	}
	g.t.Logf("guest dmesg (%s bytes), klp_busy's lines: %s", size, strings.Join(strings.Split(exit, "\n"), " | "))
	args := ""
	for _, b := range badDmesg {
		args += " -e " + shellQuote(b)
	}
	if bad := g.exec("grep -F" + args + " /tmp/dmesg.txt || true"); bad != "" {
		g.t.Errorf("guest dmesg has warnings or oopses:\n%s\nits tail:\n%s", bad, g.exec("tail -n 80 /tmp/dmesg.txt"))
	}
}

// TestBusyModuleCopy: the embedded klp-busy.ko is the one
// linuxpatch/testdata/build.sh builds (skipped where the source tree is
// absent, as in the nested tier's VM).
func TestBusyModuleCopy(t *testing.T) {
	src, err := os.ReadFile("../../linuxpatch/testdata/klp-busy/klp-busy.ko")
	if errors.Is(err, fs.ErrNotExist) {
		t.Skip("no source tree")
	}
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(src, busyKO) {
		t.Errorf("test/linux/testdata/klp-busy.ko differs from linuxpatch/testdata/klp-busy/klp-busy.ko: copy it after build.sh")
	}
}

// TestBusyHelpers checks the busy test's bookkeeping without a guest.
func TestBusyHelpers(t *testing.T) {
	ms := func(n ...int) []time.Duration {
		var d []time.Duration
		for _, x := range n {
			d = append(d, time.Duration(x)*time.Millisecond)
		}
		return d
	}
	d := ms(10, 1, 9, 2, 8, 3, 7, 4, 6, 5)
	for _, c := range []struct {
		p    float64
		want int
	}{{0.5, 5}, {0.9, 9}, {1, 10}, {0, 1}} {
		if got := percentile(d, c.p); got != time.Duration(c.want)*time.Millisecond {
			t.Errorf("percentile(%v) = %v, want %dms", c.p, got, c.want)
		}
	}
	if got := percentile(ms(7), 0.9); got != 7*time.Millisecond {
		t.Errorf("percentile of one = %v", got)
	}

	var b blockLog
	if b.String() != "none" {
		t.Errorf("empty blockLog: %q", b.String())
	}
	fmt.Fprintf(&b, "klp-kvm: linuxlive: enable livepatch_sample: attempt 1 blocked: task 77 (klp_busy/0) in cmdline_proc_show\n")
	fmt.Fprintf(&b, "klp-kvm: something else\nklp-kvm: linuxlive: disable livepatch_sample: attempt 2 blocked: ")
	fmt.Fprintf(&b, "task 77 (klp_busy/0) in cmdline_proc_show\nklp-kvm: linuxlive: enable x: attempt 1 blocked: vCPU 1 in livepatch_cmdline_proc_show\n")
	if want := "2x task 77 (klp_busy/0) in cmdline_proc_show; 1x vCPU 1 in livepatch_cmdline_proc_show"; b.String() != want {
		t.Errorf("blockLog: %q, want %q", b.String(), want)
	}

	if got := shellQuote("it's"); got != `'it'\''s'` {
		t.Errorf("shellQuote: %s", got)
	}
}
