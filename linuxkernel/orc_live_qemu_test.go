package linuxkernel

// The ORC unwinder on the live Debian guest of live_qemu_test.go: every
// thread's kernel stack unwound from the host while QEMU is stopped,
// compared with what the guest's own unwinder prints in
// /proc/<pid>/task/<tid>/stack. The guest dumps its stacks once before
// the host stops it and once after; a thread whose two dumps agree did
// not move in between (the host's view lies between them), and only
// those are compared: a mismatch there fails the test.

import (
	"bytes"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// parseQEMURegs parses the monitor's "info registers -a": one register
// set per CPU, in CPU order.
func parseQEMURegs(text string) []PtRegs {
	reg := regexp.MustCompile(`\b(R[A-Z0-9]+)\s*=([0-9a-f]+)`)
	cs := regexp.MustCompile(`\bCS\s*=([0-9a-f]{4})`)
	var out []PtRegs
	for _, block := range strings.Split(text, "CPU#")[1:] {
		v := map[string]uint64{}
		for _, m := range reg.FindAllStringSubmatch(block, -1) {
			n, _ := strconv.ParseUint(m[2], 16, 64)
			v[m[1]] = n
		}
		r := PtRegs{R15: v["R15"], R14: v["R14"], R13: v["R13"], R12: v["R12"], BP: v["RBP"], BX: v["RBX"],
			R11: v["R11"], R10: v["R10"], R9: v["R9"], R8: v["R8"], AX: v["RAX"], CX: v["RCX"], DX: v["RDX"],
			SI: v["RSI"], DI: v["RDI"], IP: v["RIP"], Flags: v["RFL"], SP: v["RSP"]}
		if m := cs.FindStringSubmatch(block); m != nil {
			c, _ := strconv.ParseUint(m[1], 16, 16)
			r.CS = c
		}
		out = append(out, r)
	}
	return out
}

type liveUnwinds struct {
	u       *Unwinder
	stacks  map[int32]Stack
	running map[int32]int // tid -> CPU
	comm    map[int32]string
	tgid    map[int32]int32
}

// orcUnwindLive unwinds every thread of the stopped guest and measures
// what the consistency check's pause would cost.
func orcUnwindLive(t *testing.T, k *Kernel, mem *qemuLive, threads []Task) liveUnwinds {
	start := time.Now()
	u, err := k.NewUnwinder()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("ORC: %d entries and orc_lookup read from guest memory and validated in %v", len(u.ORC.IPs), time.Since(start).Round(time.Millisecond))
	checkLiveModule(t, u)
	regs := parseQEMURegs(mem.regs)
	res := liveUnwinds{u: u, stacks: map[int32]Stack{}, running: map[int32]int{}, comm: map[int32]string{}, tgid: map[int32]int32{}}
	stops := map[string]int{}
	for _, th := range threads {
		var st Stack
		if th.RunningOn >= 0 {
			res.running[th.Pid] = th.RunningOn // unwound below, from its vCPU
			continue
		}
		u.UnwindTask(th, &st)
		if !st.Reliable {
			t.Errorf("sleeping thread %d %q: %s; frames %v; scan has %d text addresses", th.Pid, th.Comm, st.Why, st.Frames, len(st.Scan))
		}
		stops[st.Stop.String()]++
		res.stacks[th.Pid] = st
		res.comm[th.Pid] = th.Comm
		res.tgid[th.Pid] = th.Tgid
	}
	// Every vCPU, from its registers: its current task may be an idle
	// task that no task list holds.
	for cpu, r := range regs {
		var st Stack
		if err := u.UnwindCPU(cpu, r, &st); err != nil {
			t.Fatal(err)
		}
		t.Logf("CPU %d (RIP %#x CS %#x): %s, %v", cpu, r.IP, r.CS, st.Why, st.Frames)
		if !st.Reliable {
			t.Errorf("running vCPU %d: unreliable unwind: %s", cpu, st.Why)
		}
		stops[st.Stop.String()]++
	}
	t.Logf("%d sleeping threads and %d vCPUs unwound from the host: %v", len(threads)-len(res.running), len(regs), stops)

	// The pause budget: all threads unwound again and again with one
	// Unwinder, over the QEMU RAM file (a pread per page-table level) and
	// over the same RAM mapped into this process (memory copies, as
	// kvm.Machine's ReadPhys), the median of 21 rounds.
	f := mem.R.(*os.File)
	mapped, err := syscall.Mmap(int(f.Fd()), 0, int(mem.Size), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Munmap(mapped)
	asMapped := &AddressSpace{Mem: BytesMem(mapped), Root: k.AS.Root, LA57: k.AS.LA57}
	var sleeping []Task
	for _, th := range threads {
		if th.RunningOn < 0 {
			sleeping = append(sleeping, th)
		}
	}
	for _, m := range []struct {
		name string
		mem  VirtReader
	}{{"QEMU RAM file (pread)", k.AS}, {"RAM mapped (memcpy)", asMapped}} {
		u.Mem = m.mem
		var st Stack
		var per []time.Duration
		for range 21 {
			t0 := time.Now()
			for _, th := range sleeping {
				u.UnwindTask(th, &st)
			}
			per = append(per, time.Since(t0)/time.Duration(len(sleeping)))
		}
		slices.Sort(per)
		allocs := testing.AllocsPerRun(5, func() {
			for _, th := range sleeping {
				u.UnwindTask(th, &st)
			}
		})
		t.Logf("unwinding %d sleeping threads, %s: median %v per thread (min %v, max %v), %.1f allocations per thread",
			len(sleeping), m.name, per[len(per)/2], per[0], per[len(per)-1], allocs/float64(len(sleeping)))
	}
	u.Mem = k.AS
	// What a check adds besides the unwinds: re-walking the module list
	// (tables of unchanged modules are kept).
	var per []time.Duration
	for range 21 {
		t0 := time.Now()
		if err := u.RefreshModules(); err != nil {
			t.Fatal(err)
		}
		per = append(per, time.Since(t0))
	}
	slices.Sort(per)
	t.Logf("RefreshModules (%d modules, over the RAM file): median %v", len(u.Modules), per[len(per)/2])
	return res
}

// guestFrameMatches: the guest printed name+0xoff/0xsize (%pB) for
// addr.
func guestFrameMatches(syms *Symbols, guest string, addr uint64) bool {
	plus := strings.LastIndexByte(guest, '+')
	slash := strings.LastIndexByte(guest, '/')
	if plus <= 0 || slash < plus {
		return false
	}
	off, err := strconv.ParseUint(strings.TrimPrefix(guest[plus+1:slash], "0x"), 16, 64)
	if err != nil {
		return false
	}
	for _, s := range syms.Lookup(guest[:plus]) {
		if s.Addr+off == addr {
			return true
		}
	}
	return false
}

// firstDiff is "" when the host's frames are the guest's, else the
// first difference. /proc/<pid>/stack of another task leaves out the
// scheduler's own functions (stack_trace_consume_entry_nosched: the
// .sched.text section, __schedule, schedule, do_nanosleep, ...) and
// prints at most MAX_STACK_TRACE_DEPTH (64) frames; the host's list is
// filtered the same way here (the consistency check uses all of it).
func firstDiff(syms *Symbols, sched AddrRange, host Stack, guest []string) string {
	var frames []Frame
	for _, f := range host.Frames {
		if !sched.Contains(f.Addr) {
			frames = append(frames, f)
		}
	}
	host.Frames = frames
	n := min(len(host.Frames), 64)
	for i := 0; i < max(n, len(guest)); i++ {
		switch {
		case i >= n:
			return fmt.Sprintf("frame %d: host ends (%s), guest has %s", i, host.Why, guest[i])
		case i >= len(guest):
			return fmt.Sprintf("frame %d: guest ends, host has %v", i, host.Frames[i])
		case !guestFrameMatches(syms, guest[i], host.Frames[i].Addr):
			return fmt.Sprintf("frame %d: host %v (%#x), guest %s", i, host.Frames[i], host.Frames[i].Addr, guest[i])
		}
	}
	return ""
}

// orcCompareLive asks the running guest for its second dump and
// compares the stable threads.
func orcCompareLive(t *testing.T, k *Kernel, mem *qemuLive, rep *guestReport, host liveUnwinds) {
	if _, err := fmt.Fprintf(mem.console, "stacks 2\n"); err != nil {
		t.Fatal(err)
	}
	select {
	case gen := <-rep.stacksDone:
		if gen != 2 {
			t.Fatalf("guest finished stack dump %d, want 2", gen)
		}
	case <-time.After(3 * time.Minute):
		t.Fatal("the guest did not dump its stacks a second time within 3 minutes")
	}
	rep.mu.Lock()
	g1, g2 := rep.stacks[1], rep.stacks[2]
	rep.mu.Unlock()
	var sched AddrRange
	var err error
	if sched.Start, err = k.Symbols.Addr("__sched_text_start"); err != nil {
		t.Fatal(err)
	}
	if sched.End, err = k.Symbols.Addr("__sched_text_end"); err != nil {
		t.Fatal(err)
	}
	var compared, exact, unstable, absent, empty, userEnd, kthreadEnd int
	var mismatches []string
	// /init (tgid 1) is the process that dumps the stacks and reads the
	// console: the Go scheduler moves its goroutines between its threads,
	// so one of its threads can sit in the same place in both dumps and
	// elsewhere when the host stopped the VM. Its threads are compared
	// and reported, but do not fail the test; every other thread does.
	var initCompared, initExact int
	var initDiffs []string
	tids := make([]int32, 0, len(host.stacks))
	for tid := range host.stacks {
		tids = append(tids, tid)
	}
	sort.Slice(tids, func(i, j int) bool { return tids[i] < tids[j] })
	for _, tid := range tids {
		hs := host.stacks[tid]
		if _, ok := host.running[tid]; ok {
			continue
		}
		a, ok1 := g1[tid]
		b, ok2 := g2[tid]
		switch {
		case !ok1 || !ok2:
			absent++ // swapper (pid 0 has no /proc entry), the dumping thread, threads born or gone
			continue
		case !slices.Equal(a, b):
			unstable++
			continue
		case len(a) == 0:
			empty++ // the guest's unwind gave nothing: the thread ran on another CPU as it read
			continue
		}
		if host.tgid[tid] == 1 {
			initCompared++
			if d := firstDiff(host.u.Symbols, sched, hs, a); d == "" {
				initExact++
			} else {
				initDiffs = append(initDiffs, fmt.Sprintf("thread %d: %s", tid, d))
			}
			continue
		}
		compared++
		if d := firstDiff(host.u.Symbols, sched, hs, a); d == "" {
			exact++
			switch hs.Stop {
			case StopUserRegs:
				userEnd++
			case StopEnd:
				kthreadEnd++
			}
		} else {
			mismatches = append(mismatches, fmt.Sprintf("thread %d %q: %s\n\thost:  %v\n\tguest: %v", tid, host.comm[tid], d, hs.Frames, a))
		}
	}
	t.Logf("host ORC unwind vs the guest's /proc/<pid>/task/<tid>/stack: %d threads compared (stable across both guest dumps), %d exact (%d ending at user pt_regs, %d at an end-of-stack entry), %d mismatches; skipped: %d running on a vCPU, %d moved between the dumps, %d not in both dumps, %d empty in the guest",
		compared, exact, userEnd, kthreadEnd, len(mismatches), len(host.running), unstable, absent, empty)
	t.Logf("/init's own threads: %d compared, %d exact, differing (a goroutine moved): %q", initCompared, initExact, initDiffs)
	for _, m := range mismatches {
		t.Errorf("mismatch: %s", m)
	}
	if compared < 20 || userEnd == 0 || kthreadEnd == 0 {
		t.Errorf("too little compared: %d threads (%d user, %d kernel threads)", compared, userEnd, kthreadEnd)
	}
}

// liveChildKinds are the processes /init starts so that the guest has
// user tasks asleep in different system calls (each a Go program, so
// also with runtime threads in futex and epoll waits).
var liveChildKinds = []string{"nanosleep", "pipe", "pause", "wait"}

// startLiveChildren starts one child of each kind and gives them time
// to block.
func startLiveChildren(out *os.File) {
	// The guest has no /dev/null: every child gets the console for output
	// and a pipe that is held open and never written for input (the
	// "pipe" child's read blocks on it).
	r, w, err := os.Pipe()
	if err != nil {
		fmt.Fprintf(out, "%s error pipe: %v\n", liveMarker, err)
		return
	}
	liveChildPipe = w
	for _, kind := range liveChildKinds {
		cmd := exec.Command("/init")
		cmd.Env = append(os.Environ(), "KLP_LIVE_CHILD="+kind)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = r, out, out
		if err := cmd.Start(); err != nil {
			fmt.Fprintf(out, "%s error starting child %s: %v\n", liveMarker, kind, err)
		}
	}
	time.Sleep(2 * time.Second)
}

var liveChildPipe *os.File

// liveChild blocks forever in the system call its kind names.
func liveChild(kind string) {
	switch kind {
	case "nanosleep":
		for {
			ts := syscall.Timespec{Sec: 1 << 30}
			syscall.Nanosleep(&ts, nil)
		}
	case "pipe":
		var b [1]byte
		for {
			os.Stdin.Read(b[:])
		}
	case "pause":
		for {
			syscall.Syscall(syscall.SYS_PAUSE, 0, 0, 0)
		}
	case "wait":
		cmd := exec.Command("/init")
		cmd.Env = append(os.Environ()[:0:0], "KLP_LIVE_GUEST=1", "KLP_LIVE_CHILD=pause")
		cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
		if cmd.Start() == nil {
			cmd.Wait()
		}
	}
	for {
		time.Sleep(time.Hour)
	}
}

// liveModule is a small module of the cached kernel (no dependencies)
// that /init loads, so that the host reads a module's ORC table.
const liveModule = "irqbypass.ko"

// liveModuleEntry puts the module into the initramfs when the cache has
// it.
func liveModuleEntry(cache string) []newcEntry {
	b, err := os.ReadFile(filepath.Join(cache, "modules", liveModule))
	if err != nil {
		return nil
	}
	return []newcEntry{{name: liveModule, mode: 0o100644, data: b}}
}

// loadLiveModule loads it with finit_module(2).
func loadLiveModule(out *os.File) {
	f, err := os.Open("/" + liveModule)
	if err != nil {
		return // not in this initramfs
	}
	defer f.Close()
	if err := unix.FinitModule(int(f.Fd()), "", 0); err != nil {
		fmt.Fprintf(out, "%s error finit_module %s: %v\n", liveMarker, liveModule, err)
	}
}

// checkLiveModule: the host found the loaded module and its table has
// the .ko's number of ORC entries.
func checkLiveModule(t *testing.T, u *Unwinder) {
	b, err := os.ReadFile(filepath.Join(nestedKernelDir(), "modules", liveModule))
	if err != nil {
		t.Logf("no %s in the cache: module ORC not checked", liveModule)
		return
	}
	if u.ModulesErr != nil {
		t.Fatalf("module list: %v", u.ModulesErr)
	}
	ko, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	sec := ko.Section(".orc_unwind_ip")
	if sec == nil {
		t.Fatalf("%s has no .orc_unwind_ip", liveModule)
	}
	name := strings.TrimSuffix(liveModule, ".ko")
	for _, m := range u.Modules {
		if m.Name != name {
			continue
		}
		t.Logf("module %s: text %#x-%#x, %d ORC entries (the .ko has %d)", m.Name, m.Text.Start, m.Text.End, len(m.ORC.IPs), sec.Size/4)
		if m.ORC == nil || uint64(len(m.ORC.IPs)) != sec.Size/4 {
			t.Errorf("module %s: %d ORC entries read, the .ko has %d", m.Name, len(m.ORC.IPs), sec.Size/4)
		}
		for _, ip := range m.ORC.IPs {
			if !m.Text.Contains(ip) && !m.Init.Contains(ip) && ip != m.Text.End {
				t.Errorf("module %s: ORC IP %#x outside its text %+v and init %+v", m.Name, ip, m.Text, m.Init)
				break
			}
		}
		return
	}
	t.Errorf("loaded module %s not among %+v", name, u.Modules)
}
