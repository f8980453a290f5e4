package guest

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"strings"
	"sync"
	"testing"
	"time"

	"klp-kvm/guestkernel"
	"klp-kvm/guestkernel/layout"
	"klp-kvm/internal/poll"
	"klp-kvm/kvm/agent"
)

// guestStackNames parses /proc/<pid>/stack ("[<addr>] name+0x../0x..").
func guestStackNames(s string) []string {
	var out []string
	for _, l := range strings.Split(strings.TrimSpace(s), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		out = append(out, strings.SplitN(f[1], "+", 2)[0])
	}
	return out
}

// TestIntrospection: with the guest paused, the host enumerates every task
// through klp_guest_abi and walks each one's stack to symbol names; the
// parked task's walk goes through klp_park_fn and matches what the guest
// itself reports in /proc/<pid>/stack.
func TestIntrospection(t *testing.T) {
	g := boot(t, 2, "klp.park", true)
	syms, err := guestkernel.KernelSymbols()
	if err != nil {
		t.Fatal(err)
	}
	gst, err := guestkernel.Open(g.m, syms)
	if err != nil {
		t.Fatal(err)
	}
	poll.Until(t, "the parker to sleep inside klp_park_fn", func() bool {
		return strings.Contains(g.read("/proc/klp_selftest"), "parked: 1\n")
	})
	var parkerPID uint32
	sel := g.read("/proc/klp_selftest")
	if i := strings.Index(sel, "parker_pid: "); i < 0 {
		t.Fatalf("no parker_pid in %q", sel)
	} else if _, err := fmt.Sscanf(sel[i:], "parker_pid: %d", &parkerPID); err != nil || parkerPID == 0 {
		t.Fatalf("parker_pid in %q: %v", sel, err)
	}

	// hostWalk pauses the guest, walks every task and vCPU, checks the
	// chains, and returns the parker's frames once it finds it switched
	// out. A walk that finds the guest's task table busy (a context
	// switch in flight) is retried; so is one that saw the parker running.
	hostWalk := func() []string {
		var hostParker []string
		poll.Until(t, fmt.Sprintf("a host walk of every task that sees the parker (pid %d) switched out", parkerPID), func() bool {
			all, err := g.allStacks(t, gst)
			if guestkernel.IsBusy(err) {
				return false
			}
			if err != nil {
				t.Fatalf("host walk: %v", err)
			}
			names := map[string]bool{}
			live := 0
			for _, ts := range all {
				names[strings.SplitN(ts.Task.Name, "/", 2)[0]] = true
				fn := gst.FuncNames(ts.Frames)
				if ts.Live {
					live++
				} else if fn[0] != "klp_switch_to" {
					t.Fatalf("%v: switched out but first frame is %v", ts.Task, gst.FrameNames(ts.Frames))
				}
				// every chain ends in a thread's or a CPU's entry code
				if last := fn[len(fn)-1]; last != "klp_task_start" && last != "_start" {
					t.Fatalf("%v: chain ends in %q: %v", ts.Task, last, gst.FrameNames(ts.Frames))
				}
				if ts.Task.PID == parkerPID && !ts.Live {
					hostParker = fn
					if !strings.Contains(strings.Join(fn, " "), "klp_park_fn") {
						t.Logf("parker task %+v frames:", ts.Task)
						for _, f := range ts.Frames {
							t.Logf("  pc %#x fp %#x %s", f.PC, f.FP, gst.Symbols().Format(f.PC))
						}
					}
				}
			}
			if live != 2 {
				t.Fatalf("%d tasks walked from vCPU registers, want one per CPU", live)
			}
			for _, want := range []string{"idle", "worker", "parker", "shell", "agent_reader", "agent_worker"} {
				if !names[want] {
					t.Fatalf("task %s not found among %d tasks", want, len(all))
				}
			}
			return hostParker != nil
		})
		joined := strings.Join(hostParker, " ")
		if !strings.Contains(joined, "klp_park_fn parker_thread klp_task_start") {
			t.Fatalf("host walk of the parker: %v", hostParker)
		}
		return hostParker
	}
	// The guest's own view of the same task must match the host's. The
	// two are taken at different times and the parker wakes every
	// 100 ms, so a pair that differs is taken again (up to five times):
	// nested CI runs caught the parker preempted by the timer inside
	// sleep_until between the host walk and the guest read, and the
	// guest's task_stack, a plain frame-pointer walk that does not stop
	// the parker, skips a caller when the interrupt came before
	// sleep_until pushed its frame ("isr_common sleep_until
	// parker_thread"), or reads a chain torn by the running parker.
	var joined string
	for try := 1; ; try++ {
		joined = strings.Join(hostWalk(), " ")
		guestView := guestStackNames(g.read(fmt.Sprintf("/proc/%d/stack", parkerPID)))
		if strings.Join(guestView, " ") == joined {
			break
		}
		if try == 5 {
			t.Fatalf("host walk [%s] != guest's /proc/%d/stack %v (5 pairs)", joined, parkerPID, guestView)
		}
		t.Logf("pair %d: host walk [%s], guest's /proc/%d/stack %v: taking both again", try, joined, parkerPID, guestView)
	}
	t.Logf("parker pid %d: %s", parkerPID, joined)
}

// TestSysfsMirror: the host writes klp_sysfs_state; the guest renders
// /sys/kernel/livepatch from it; guest writes to enabled raise events
// whose answers (0, EBUSY, none) the writer sees as bash would.
func TestSysfsMirror(t *testing.T) {
	g := boot(t, 2, "klp.sysfs_timeout_ms=500", true)
	syms, err := guestkernel.KernelSymbols()
	if err != nil {
		t.Fatal(err)
	}
	w, err := guestkernel.NewSysfsWriterSym(g.m, syms)
	if err != nil {
		t.Fatal(err)
	}
	patches := []guestkernel.SysfsPatch{
		{Name: "livepatch_sample", Enabled: true, StackOrder: 1, Objects: []guestkernel.SysfsObject{
			{Name: "vmlinux", Patched: true, Funcs: []guestkernel.SysfsFunc{{Name: "cmdline_proc_show", Sympos: 1}}}}},
		{Name: "livepatch_busy", Transition: true, StackOrder: 2, Objects: []guestkernel.SysfsObject{
			{Name: "vmlinux", Funcs: []guestkernel.SysfsFunc{{Name: "klp_dup_fn", Sympos: 2}}}}},
	}
	if err := w.Write(patches); err != nil {
		t.Fatal(err)
	}
	const lp = "/sys/kernel/livepatch"
	if s := g.exec("ls " + lp).Output; s != "livepatch_sample/\nlivepatch_busy/\n" {
		t.Fatalf("ls %s: %q", lp, s)
	}
	if s := g.exec("ls " + lp + "/livepatch_sample").Output; !strings.Contains(s, "enabled\n") || !strings.Contains(s, "vmlinux/\n") || !strings.Contains(s, "stack_order\n") {
		t.Fatalf("ls patch: %q", s)
	}
	if s := g.exec("ls " + lp + "/livepatch_sample/vmlinux").Output; s != "patched\ncmdline_proc_show,1/\n" {
		t.Fatalf("ls object: %q", s)
	}
	for f, want := range map[string]string{
		"livepatch_sample/enabled": "1\n", "livepatch_sample/transition": "0\n", "livepatch_sample/stack_order": "1\n",
		"livepatch_sample/vmlinux/patched": "1\n", "livepatch_busy/transition": "1\n", "livepatch_busy/enabled": "0\n",
		"livepatch_busy/stack_order": "2\n", "livepatch_busy/replace": "0\n",
	} {
		if s := g.read(lp + "/" + f); s != want {
			t.Errorf("%s: %q, want %q", f, s, want)
		}
	}
	// write-back: the host answers each event
	answers := map[string]int{"livepatch_sample": 0, "livepatch_busy": 16}
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case ev := <-g.events:
				sw, err := agent.ParseSysfsWrite(ev)
				if err != nil {
					t.Errorf("event: %v", err)
					continue
				}
				if strings.Contains(sw.Path, "silent") {
					continue
				}
				name := strings.Split(strings.TrimPrefix(sw.Path, lp+"/"), "/")[0]
				if name == "livepatch_nobody" {
					continue // never answered: the guest times out
				}
				if err := g.agent.SysfsReply(sw.ID, answers[name]); err != nil {
					t.Errorf("reply: %v", err)
				}
			case <-stop:
				return
			}
		}
	}()
	if r := g.exec("echo 0 > " + lp + "/livepatch_sample/enabled"); r.Status != 0 || r.Output != "" {
		t.Fatalf("accepted write: %+v", r)
	}
	if r := g.exec("echo 1 > " + lp + "/livepatch_busy/enabled"); r.Status != 1 || !strings.Contains(r.Output, "write error: Device or resource busy") {
		t.Fatalf("refused write: %+v", r)
	}
	var ae *agent.Error
	if err := g.agent.FileWrite(context.Background(), lp+"/livepatch_busy/enabled", "1"); !errors.As(err, &ae) || ae.Errno != 16 {
		t.Fatalf("guest-file-write of a refused value: %v", err)
	}
	if r := g.exec("echo 1 > " + lp + "/livepatch_sample/replace"); r.Status != 1 || !strings.Contains(r.Output, "Permission denied") {
		t.Fatalf("write to a read-only attribute: %+v", r)
	}
	if r := g.exec("echo 1 > " + lp + "/nonexistent/enabled"); r.Status != 1 || !strings.Contains(r.Output, "No such file") {
		t.Fatalf("write to a missing patch: %+v", r)
	}
	// a patch the host never answers for: the write times out
	patches = append(patches, guestkernel.SysfsPatch{Name: "livepatch_nobody", StackOrder: 3})
	if err := w.Write(patches); err != nil {
		t.Fatal(err)
	}
	if r := g.exec("echo 1 > " + lp + "/livepatch_nobody/enabled"); r.Status != 1 || !strings.Contains(r.Output, "Connection timed out") {
		t.Fatalf("unanswered write: %+v", r)
	}
	// the state can shrink again
	if err := w.Write(nil); err != nil {
		t.Fatal(err)
	}
	if s := g.exec("ls " + lp).Output; s != "" {
		t.Fatalf("after clearing: %q", s)
	}
}

// TestMalformedAgentTraffic: garbage from the host does not hang or crash
// the agent; it answers with errors and keeps serving.
func TestMalformedAgentTraffic(t *testing.T) {
	g := boot(t, 1, "", true)
	port := g.m.AgentPort()
	junk := []string{
		"this is not json",
		"{\"execute\":",
		strings.Repeat("x", 20000),
		strings.Repeat("[", 200) + strings.Repeat("]", 200),
		"{\"execute\":\"guest-file-read\",\"arguments\":{\"path\":\"" + strings.Repeat("a", 1000) + "\"}}",
		"{\"execute\":\"guest-exec\",\"arguments\":[]}",
		"{\"execute\":42}",
		"\x00\x01\x02\xff\xfe",
		"{\"execute\":\"sysfs-reply\",\"arguments\":{\"id\":99999,\"errno\":5}}",
		"{\"execute\":\"sysfs-reply\",\"arguments\":{\"id\":\"x\"}}",
		"{\"execute\":\"guest-ping\",\"id\":\"" + strings.Repeat("9", 100) + "\"}",
		"\"just a string\"",
		"{\"a\":\"\\u12\"}",
	}
	for _, j := range junk {
		if _, err := port.Write([]byte(j + "\n")); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := g.agent.Sync(ctx); err != nil {
		t.Fatalf("agent unusable after garbage: %v", err)
	}
	in, err := g.agent.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if in.Errors < 8 {
		t.Fatalf("guest counted %d errors for %d bad lines", in.Errors, len(junk))
	}
	if r := g.exec("uptime"); !strings.Contains(r.Output, "up ") {
		t.Fatalf("exec after garbage: %+v", r)
	}
	t.Logf("guest-info after garbage: %+v; client stats %+v", in, g.agent.Stats())
}

// TestGuestCall: the agent calls a function the host put in the patch area,
// and refuses any address outside it.
func TestGuestCall(t *testing.T) {
	g := boot(t, 1, "", true)
	// lea 0x2a(%rdi),%rax; ret: returns arg + 42
	code := []byte{0x48, 0x8d, 0x47, 0x2a, 0xc3}
	fn := uint64(layout.PatchAreaVirt + 0x1000)
	if err := g.m.Pause(); err != nil {
		t.Fatal(err)
	}
	err := g.m.WriteVirt(fn, code)
	g.m.Resume()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	v, err := g.agent.GuestCall(ctx, fn, 100)
	if err != nil || v != 142 {
		t.Fatalf("guest-call: %d %v", v, err)
	}
	var ae *agent.Error
	for _, bad := range []uint64{0, 0xffffffff81000000, layout.PatchAreaVirt - 1, layout.PatchAreaVirt + g.m.Layout().PatchAreaSize} {
		if _, err := g.agent.GuestCall(ctx, bad, 1); !errors.As(err, &ae) || ae.Errno != 14 {
			t.Fatalf("guest-call %#x: %v", bad, err)
		}
	}
	if err := g.agent.Call(ctx, "guest-call", map[string]string{"addr": "nope"}, nil); !errors.As(err, &ae) || ae.Errno != 22 {
		t.Fatalf("guest-call with a bad address: %v", err)
	}
}

// TestSysfsSeqlock: the host rewrites klp_sysfs_state continuously while
// the guest renders /sys/kernel/livepatch; every rendering is one whole
// state, never a mix (the guest retries reads that overlap a write).
func TestSysfsSeqlock(t *testing.T) {
	g := boot(t, 2, "", true)
	syms, err := guestkernel.KernelSymbols()
	if err != nil {
		t.Fatal(err)
	}
	w, err := guestkernel.NewSysfsWriterSym(g.m, syms)
	if err != nil {
		t.Fatal(err)
	}
	// the same patches in both states, different functions: a torn read
	// would list a mix of a_fn and b_fn, or the wrong count
	mk := func(prefix string, nfuncs int) ([]guestkernel.SysfsPatch, string) {
		var ps []guestkernel.SysfsPatch
		var ls strings.Builder
		ls.WriteString("patched\n")
		for i := 0; i < 3; i++ {
			var funcs []guestkernel.SysfsFunc
			for k := 0; k < nfuncs; k++ {
				funcs = append(funcs, guestkernel.SysfsFunc{Name: fmt.Sprintf("%s_fn_%d", prefix, k), Sympos: uint32(i)})
				if i == 1 {
					fmt.Fprintf(&ls, "%s_fn_%d,%d/\n", prefix, k, i)
				}
			}
			ps = append(ps, guestkernel.SysfsPatch{Name: fmt.Sprintf("p_%d", i), StackOrder: uint32(i + 1),
				Objects: []guestkernel.SysfsObject{{Name: "vmlinux", Funcs: funcs}}})
		}
		return ps, ls.String()
	}
	a, lsA := mk("a", 300)
	b, lsB := mk("b", 250)
	// pace the writer by how long one rendering takes here (the race
	// detector slows the guest tenfold): a seqlock reader needs a quiet
	// window as long as its read, and overlaps are still frequent
	if err := w.Write(a); err != nil {
		t.Fatal(err)
	}
	quiet := time.Hour
	for i := 0; i < 4; i++ { // the fastest of a few: the first ones translate code
		start := time.Now()
		if out := g.exec("ls /sys/kernel/livepatch/p_1/vmlinux").Output; out != lsA {
			t.Fatalf("quiet rendering: %q", tail(out, 200))
		}
		quiet = min(quiet, time.Since(start))
	}
	pace := max(300*time.Microsecond, quiet)
	stop := make(chan struct{})
	writes := 0
	done := make(chan error, 1)
	var stopOnce sync.Once
	stopWriter := func() error {
		var err error
		stopOnce.Do(func() {
			close(stop)
			err = <-done
		})
		return err
	}
	// the writer must be gone before the machine (and its RAM) is
	defer stopWriter()
	go func() {
		for {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			st := a
			if writes%2 == 1 {
				st = b
			}
			if err := w.Write(st); err != nil {
				done <- err
				return
			}
			writes++
			// Load, not synchronisation: a short pause, because
			// back-to-back writes would starve the guest's readers (a
			// seqlock favours the writer), and pauses much longer than
			// a rendering would rarely overlap one
			time.Sleep(pace)
		}
	}()
	mixed := 0
	seen := map[string]int{}
	for i := 0; i < 40; i++ {
		out := g.exec("ls /sys/kernel/livepatch/p_1/vmlinux").Output
		switch out {
		case lsA:
			seen["A"]++
		case lsB:
			seen["B"]++
		default:
			mixed++
			t.Errorf("torn rendering: %q", tail(out, 200))
		}
	}
	if err := stopWriter(); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d host writes (every %v); guest saw A %d times, B %d times, torn %d", writes, pace, seen["A"], seen["B"], mixed)
	if writes < 10 {
		t.Fatalf("only %d host writes: the test did not overlap anything", writes)
	}
}

// TestAgentRandomTraffic: a few hundred mutated requests and random byte
// lines (fixed seed, so reproducible) through the agent and the shell it
// runs; the guest keeps serving and never oopses.
func TestAgentRandomTraffic(t *testing.T) {
	g := boot(t, 2, "", true)
	seeds := []string{
		`{"execute":"guest-exec","arguments":{"cmd":"cat /proc/cmdline"}}`,
		`{"execute":"guest-exec","arguments":{"cmd":"ls /sys/kernel"}}`,
		`{"execute":"guest-exec","arguments":{"cmd":"echo a b > /tmp/f"}}`,
		`{"execute":"guest-exec","arguments":{"cmd":"stack 1"}}`,
		`{"execute":"guest-file-read","arguments":{"path":"/proc/1/status"}}`,
		`{"execute":"guest-file-write","arguments":{"path":"/tmp/x","data":"y"}}`,
		`{"execute":"guest-file-read","arguments":{"path":"/sys/kernel/livepatch/p/enabled"}}`,
		`{"execute":"guest-info"}`,
		`{"execute":"guest-sync","arguments":{"id":5}}`,
	}
	alphabet := []byte("{}[]\":,\\/.>'\" \t0123456789abcdefghijklmnopqrstuvwxyz-_\x00\x01\xff")
	rng := rand.New(rand.NewSource(5))
	port := g.m.AgentPort()
	for i := 0; i < 300; i++ {
		var line []byte
		if i%5 == 4 {
			line = make([]byte, rng.Intn(300))
			for k := range line {
				line[k] = byte(rng.Intn(256))
				if line[k] == '\n' {
					line[k] = ' '
				}
			}
		} else {
			line = []byte(seeds[rng.Intn(len(seeds))])
			for k := rng.Intn(4); k >= 0; k-- {
				p := rng.Intn(len(line))
				line[p] = alphabet[rng.Intn(len(alphabet))]
			}
		}
		if _, err := port.Write(append(line, '\n')); err != nil {
			t.Fatal(err)
		}
		if i%20 == 19 {
			// let the guest drain: its queue is bounded, the port's too
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			err := g.agent.Sync(ctx)
			cancel()
			if err != nil {
				t.Fatalf("after %d random lines: %v", i+1, err)
			}
		}
	}
	if r := g.exec("uptime"); !strings.Contains(r.Output, "up ") {
		t.Fatalf("exec after random traffic: %+v", r)
	}
	if out := g.console.String(); strings.Contains(out, "Oops") || strings.Contains(out, "panic") {
		t.Fatalf("guest oopsed:\n%s", tail(out, 3000))
	}
	in, err := g.agent.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("guest-info after random traffic: requests %d errors %d; client %+v", in.Requests, in.Errors, g.agent.Stats())
}
