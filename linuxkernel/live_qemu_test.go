package linuxkernel

// The whole pipeline against a real, unmodified Debian kernel running
// under QEMU TCG (no KVM needed), its RAM shared with the test as a file:
// the guest's /init is this test binary, which prints what the guest
// itself sees (/proc/kallsyms, /proc/<pid>/stat) on the serial console;
// the host stops the VM and reads everything from RAM alone.
//
// Needs qemu-system-x86_64 and the nested tier's kernel cache
// (test/nested/prepare.sh); skipped otherwise. Each boot is a few tens of
// seconds of TCG, so it runs only with KLP_KVM_LIVE_QEMU=1.

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const liveMarker = "KLPLIVE"

// kallsymsProbe are the symbols the guest reports from /proc/kallsyms.
var kallsymsProbe = []string{"_text", "_stext", "cmdline_proc_show", "init_task", "schedule", "__per_cpu_offset", "current_task", "__start_BTF", "nr_cpu_ids", "ftrace_caller"}

// tracedFunc is traced by the guest's function tracer during the test.
const tracedFunc = "version_proc_show"

func TestMain(m *testing.M) {
	if os.Getpid() == 1 && os.Getenv("KLP_LIVE_GUEST") == "1" {
		guestInit()
	}
	if c := os.Getenv("KLP_LIVE_CHILD"); c != "" && os.Getenv("KLP_LIVE_GUEST") == "1" {
		liveChild(c) // a process /init starts in the guest: blocks in a syscall
	}
	os.Exit(m.Run())
}

// guestInit runs as PID 1 inside the guest: it reports and then sleeps
// (the host stops the VM while it sleeps).
func guestInit() {
	out := os.Stdout
	if err := syscall.Mount("proc", "/proc", "proc", 0, ""); err != nil {
		fmt.Fprintf(out, "%s error mount /proc: %v\n", liveMarker, err)
	}
	startLiveChildren(out)
	loadLiveModule(out)
	// Trace one function, so that its fentry site is a call (ftrace's
	// trampoline) while cmdline_proc_show's stays a NOP.
	trace := func() error {
		if err := syscall.Mount("sysfs", "/sys", "sysfs", 0, ""); err != nil {
			return err
		}
		if err := syscall.Mount("tracefs", "/sys/kernel/tracing", "tracefs", 0, ""); err != nil {
			return err
		}
		if err := os.WriteFile("/sys/kernel/tracing/set_ftrace_filter", []byte(tracedFunc+"\n"), 0); err != nil {
			return err
		}
		return os.WriteFile("/sys/kernel/tracing/current_tracer", []byte("function\n"), 0)
	}
	if err := trace(); err != nil {
		fmt.Fprintf(out, "%s error tracing %s: %v\n", liveMarker, tracedFunc, err)
	}
	if f, err := os.Open("/proc/kallsyms"); err == nil {
		want := map[string]bool{}
		for _, s := range kallsymsProbe {
			want[s] = true
		}
		sc := bufio.NewScanner(f)
		n := 0
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) == 3 {
				n++
				if want[f[2]] || n%20000 == 0 {
					fmt.Fprintf(out, "%s sym %s %s %s\n", liveMarker, f[0], f[1], f[2])
				}
			}
		}
		f.Close()
		fmt.Fprintf(out, "%s nsyms %d\n", liveMarker, n)
	}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ...; comm may hold spaces and parentheses.
		s := string(b)
		l, r := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if l < 0 || r < l || r+3 > len(s) {
			continue
		}
		fmt.Fprintf(out, "%s task %s %s %q\n", liveMarker, strings.TrimSpace(s[:l]), s[r+2:r+3], s[l+1:r])
	}
	if ents, err := os.ReadDir("/proc/1/task"); err == nil {
		for _, e := range ents {
			fmt.Fprintf(out, "%s thread %s\n", liveMarker, e.Name())
		}
	}
	dumpStacks(out, 1)
	fmt.Fprintf(out, "%s ready\n", liveMarker)
	// The host asks for more dumps of the kernel stacks over the console
	// ("stacks N"), to tell tasks that did not move from those that did.
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		var gen int
		if _, err := fmt.Sscanf(sc.Text(), "stacks %d", &gen); err == nil {
			dumpStacks(out, gen)
			fmt.Fprintf(out, "%s stacksdone %d\n", liveMarker, gen)
		}
	}
	for {
		time.Sleep(time.Hour)
	}
}

// dumpStacks prints every thread's /proc/<pid>/task/<tid>/stack (the
// guest's own ORC unwind, as root) as "stack <gen> <tid> f1;f2;...",
// each frame "sym+0xoff/0xsize". The thread doing the dump is left out
// (its stack is this very read).
func dumpStacks(out *os.File, gen int) {
	self := strconv.Itoa(syscall.Gettid())
	pids, _ := os.ReadDir("/proc")
	for _, p := range pids {
		if _, err := strconv.Atoi(p.Name()); err != nil {
			continue
		}
		tids, _ := os.ReadDir("/proc/" + p.Name() + "/task")
		for _, tid := range tids {
			if tid.Name() == self {
				continue
			}
			b, err := os.ReadFile("/proc/" + p.Name() + "/task/" + tid.Name() + "/stack")
			if err != nil {
				continue // the thread exited
			}
			var frames []string
			for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
				l = strings.TrimSpace(strings.TrimPrefix(l, "[<0>]"))
				if l != "" {
					frames = append(frames, strings.ReplaceAll(l, " ", "_"))
				}
			}
			fmt.Fprintf(out, "%s stack %d %s %s\n", liveMarker, gen, tid.Name(), strings.Join(frames, ";"))
		}
	}
}

type guestReport struct {
	// stacks[gen][tid] are the guest's /proc/<pid>/task/<tid>/stack
	// frames of dump gen (guarded by mu: the console reader adds dumps
	// while the test runs); stacksDone gets gen when a dump is complete.
	mu         sync.Mutex
	stacks     map[int]map[int32][]string
	stacksDone chan int

	syms    map[string][2]string // name -> address, type
	nsyms   int
	tasks   map[int32]string // pid -> comm
	state   map[int32]string
	threads []int32 // /proc/1/task
	errors  []string
}

func liveKernelCache(t *testing.T) string {
	if os.Getenv("KLP_KVM_LIVE_QEMU") != "1" {
		t.Skip("set KLP_KVM_LIVE_QEMU=1 to boot the Debian kernel under QEMU TCG")
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("no qemu-system-x86_64 (test/nested/prepare.sh installs it)")
	}
	dir := nestedKernelDir()
	if _, err := os.Stat(filepath.Join(dir, "vmlinuz")); err != nil {
		t.Skipf("no kernel cache (%v): run test/nested/prepare.sh", err)
	}
	return dir
}

func selfStatic(t *testing.T) string {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	f, err := elf.Open(exe)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Skip("test binary is dynamically linked; run with CGO_ENABLED=0")
		}
	}
	return exe
}

// bootLive boots the cached kernel with this binary as /init and RAM in a
// shared file, waits for the report, stops the VM and returns the RAM
// file, the vCPUs' registers and the report.
func bootLive(t *testing.T, cache, extraCmdline string) (*qemuLive, []CPU, *guestReport) {
	exe := selfStatic(t)
	tmp := t.TempDir()
	self, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	ird := newcArchive(append([]newcEntry{
		{name: "dev", mode: 0o40755},
		{name: "proc", mode: 0o40755},
		{name: "sys", mode: 0o40755},
		{name: "dev/console", mode: 0o20600, rdev: [2]uint32{5, 1}},
		{name: "init", mode: 0o100755, data: self},
	}, liveModuleEntry(cache)...))
	initrd := filepath.Join(tmp, "initrd")
	if err := os.WriteFile(initrd, ird, 0o644); err != nil {
		t.Fatal(err)
	}
	const ramSize = 512 << 20
	ramFile := filepath.Join("/dev/shm", fmt.Sprintf("klp-linuxkernel-%d-%d", os.Getpid(), time.Now().UnixNano()))
	t.Cleanup(func() { os.Remove(ramFile) })
	mon := filepath.Join(tmp, "mon")
	cmd := exec.Command("qemu-system-x86_64",
		"-accel", "tcg", "-m", "512M", "-smp", "2", "-cpu", "max",
		"-object", "memory-backend-file,id=mem,size=512M,mem-path="+ramFile+",share=on",
		"-machine", "memory-backend=mem",
		"-kernel", filepath.Join(cache, "vmlinuz"), "-initrd", initrd,
		"-append", "console=ttyS0 panic=-1 quiet KLP_LIVE_GUEST=1 "+extraCmdline,
		"-display", "none", "-serial", "stdio", "-no-reboot",
		"-monitor", "unix:"+mon+",server,nowait")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	console, err := cmd.StdinPipe() // the guest's console input (-serial stdio)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	rep := &guestReport{syms: map[string][2]string{}, tasks: map[int32]string{}, state: map[int32]string{},
		stacks: map[int]map[int32][]string{}, stacksDone: make(chan int, 8)}
	ready := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		var tail []string
		for sc.Scan() {
			line := strings.TrimRight(sc.Text(), "\r")
			tail = append(tail, line)
			if len(tail) > 30 {
				tail = tail[1:]
			}
			i := strings.Index(line, liveMarker+" ")
			if i < 0 {
				continue
			}
			f := strings.Fields(line[i+len(liveMarker)+1:])
			switch {
			case len(f) == 4 && f[0] == "sym":
				rep.syms[f[3]] = [2]string{f[1], f[2]}
			case len(f) == 2 && f[0] == "nsyms":
				rep.nsyms, _ = strconv.Atoi(f[1])
			case len(f) >= 4 && f[0] == "task":
				pid, _ := strconv.Atoi(f[1])
				comm, _ := strconv.Unquote(strings.Join(f[3:], " "))
				rep.tasks[int32(pid)] = comm
				rep.state[int32(pid)] = f[2]
			case len(f) == 2 && f[0] == "thread":
				tid, _ := strconv.Atoi(f[1])
				rep.threads = append(rep.threads, int32(tid))
			case len(f) >= 3 && f[0] == "stack":
				gen, _ := strconv.Atoi(f[1])
				tid, _ := strconv.Atoi(f[2])
				var frames []string
				if len(f) >= 4 {
					frames = strings.Split(f[3], ";")
				}
				rep.mu.Lock()
				if rep.stacks[gen] == nil {
					rep.stacks[gen] = map[int32][]string{}
				}
				rep.stacks[gen][int32(tid)] = frames
				rep.mu.Unlock()
			case len(f) == 2 && f[0] == "stacksdone":
				gen, _ := strconv.Atoi(f[1])
				rep.stacksDone <- gen
			case len(f) >= 1 && f[0] == "error":
				rep.mu.Lock()
				rep.errors = append(rep.errors, strings.Join(f[1:], " "))
				rep.mu.Unlock()
			case len(f) == 1 && f[0] == "ready":
				ready <- nil
			}
		}
		select {
		case ready <- fmt.Errorf("console ended before %s ready; last lines:\n%s", liveMarker, strings.Join(tail, "\n")):
		default:
		}
	}()
	select {
	case err := <-ready:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Minute):
		t.Fatal("guest did not report within 5 minutes")
	}
	t.Logf("boot to report: %v", time.Since(start).Round(time.Millisecond))
	regs := monitor(t, mon, "stop", "info registers -a")
	var cpus []CPU
	re := regexp.MustCompile(`CR3=([0-9a-f]+) CR4=([0-9a-f]+)`)
	for _, m := range re.FindAllStringSubmatch(regs, -1) {
		cr3, _ := strconv.ParseUint(m[1], 16, 64)
		cr4, _ := strconv.ParseUint(m[2], 16, 64)
		cpus = append(cpus, CPU{CR3: cr3, CR4: cr4})
	}
	f, err := os.Open(ramFile)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return &qemuLive{ReaderAtMem: ReaderAtMem{R: f, Size: ramSize}, t: t, mon: mon, regs: regs, console: console}, cpus, rep
}

// qemuLive is the QEMU guest as Live: its RAM file, paused and resumed
// through the monitor (QEMU's stop/cont do not nest; the test pauses only
// through the Inspector).
type qemuLive struct {
	ReaderAtMem
	t       *testing.T
	mon     string
	regs    string         // "info registers -a" when the VM stopped after the report
	console io.WriteCloser // the guest's console input
}

func (q *qemuLive) Pause() error         { monitor(q.t, q.mon, "stop"); return nil }
func (q *qemuLive) Resume() error        { monitor(q.t, q.mon, "cont"); return nil }
func (q *qemuLive) CPUs() ([]CPU, error) { return nil, nil }

// monitor sends commands to the QEMU human monitor and returns what the
// last one printed. The socket is opened with syscall rather than package
// net so that the test binary stays static with cgo enabled (it is the
// guest's /init).
func monitor(t *testing.T, sock string, cmds ...string) string {
	var c *os.File
	for i := 0; i < 50 && c == nil; i++ {
		fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := syscall.Connect(fd, &syscall.SockaddrUnix{Name: sock}); err != nil {
			syscall.Close(fd)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		syscall.SetNonblock(fd, true) // pollable: read deadlines work
		c = os.NewFile(uintptr(fd), sock)
	}
	if c == nil {
		t.Fatalf("cannot connect to the QEMU monitor at %s", sock)
	}
	defer c.Close()
	var out bytes.Buffer
	buf := make([]byte, 1<<16)
	readPrompt := func() {
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		for !bytes.HasSuffix(out.Bytes(), []byte("(qemu) ")) {
			n, err := c.Read(buf)
			out.Write(buf[:n])
			if err != nil {
				t.Fatalf("monitor: %v after %q", err, out.String())
			}
		}
	}
	readPrompt()
	for _, cmd := range cmds {
		out.Reset()
		fmt.Fprintf(c, "%s\n", cmd)
		readPrompt()
	}
	return out.String()
}

func testLive(t *testing.T, nokaslr bool) {
	cache := liveKernelCache(t)
	extra := ""
	if nokaslr {
		extra = "nokaslr"
	}
	mem, cpus, rep := bootLive(t, cache, extra)
	start := time.Now()
	k, err := Open(mem, Options{CPUs: cpus})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Open: %v; release %s, KASLR offset %#x, %d symbols (%s), %d BTF types, vmcoreinfo at %#x, 5-level paging %v",
		time.Since(start).Round(time.Millisecond), k.Release, k.KASLROffset, k.Symbols.Len(), k.Source, k.BTFTypes, k.VMCoreInfo.Phys, k.AS.LA57)
	if k.BTFErr != nil {
		t.Fatal(k.BTFErr)
	}
	ver, _ := os.ReadFile(filepath.Join(cache, "version"))
	if k.Release != strings.TrimSpace(string(ver)) {
		t.Errorf("release %q, cache has %q", k.Release, ver)
	}
	if k.Source != SourceKallsyms {
		t.Errorf("source %s", k.Source)
	}
	// KASLR: the guest's own _text against the default link address.
	gt, ok := rep.syms["_text"]
	if !ok {
		t.Fatalf("guest reported no _text: %+v", rep.syms)
	}
	text, _ := strconv.ParseUint(gt[0], 16, 64)
	if want := text - 0xffffffff81000000; k.KASLROffset != want {
		t.Errorf("KASLR offset %#x, guest's _text %#x says %#x", k.KASLROffset, text, want)
	}
	if nokaslr != (k.KASLROffset == 0) {
		t.Errorf("nokaslr=%v but offset %#x", nokaslr, k.KASLROffset)
	}
	// Symbols: each the guest printed is ours, same address and type.
	for name, at := range rep.syms {
		addr, _ := strconv.ParseUint(at[0], 16, 64)
		found := false
		for _, s := range k.Symbols.Lookup(name) {
			if s.Addr == addr && string(s.Type) == at[1] {
				found = true
			}
		}
		if !found {
			t.Errorf("guest has %s %s %s; we have %+v", at[0], at[1], name, k.Symbols.Lookup(name))
		}
	}
	if len(rep.syms) < len(kallsymsProbe) {
		t.Errorf("guest reported %d symbols", len(rep.syms))
	}
	t.Logf("guest /proc/kallsyms: %d lines; kallsyms_num_syms %d", rep.nsyms, k.Symbols.Len())
	// fentry: cmdline_proc_show's site is the 5-byte NOP.
	fs, err := k.Fentry("cmdline_proc_show")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fs {
		if f.Kind != FentryNop {
			t.Errorf("cmdline_proc_show fentry %+v", f)
		}
	}
	// The traced function's site calls into ftrace.
	if len(rep.errors) != 0 {
		t.Fatalf("guest errors: %q", rep.errors)
	}
	fs, err = k.Fentry(tracedFunc)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fs {
		if f.Kind != FentryCall || f.Target == 0 {
			t.Errorf("%s (traced) fentry %+v, want a call", tracedFunc, f)
		}
		t.Logf("%s (traced): %s -> %#x %q", tracedFunc, f.Bytes, f.Target, f.TargetSym)
	}
	// Tasks: the walk matches /proc (kernel workers may come and go).
	tasks, err := k.Tasks()
	if err != nil {
		t.Fatal(err)
	}
	byPid := map[int32]Task{}
	running := map[int]bool{}
	for _, ts := range tasks {
		byPid[ts.Pid] = ts
		if ts.RunningOn >= 0 {
			if running[ts.RunningOn] {
				t.Errorf("two tasks running on CPU %d", ts.RunningOn)
			}
			running[ts.RunningOn] = true
		} else if !ts.SPInStack {
			t.Errorf("task %d %s: saved sp %#x outside its stack [%#x, %#x)", ts.Pid, ts.Comm, ts.SavedSP, ts.StackBase, ts.StackTop)
		}
	}
	cur, err := k.currentTasks()
	if err != nil || len(cur) != 2 {
		t.Fatalf("per-CPU current tasks %#x, %v; want 2 CPUs", cur, err)
	}
	for cpu, c := range cur {
		if c == 0 {
			t.Errorf("CPU %d: no current task", cpu)
		}
	}
	if byPid[0].Comm != "swapper/0" {
		t.Errorf("first task %+v, want init_task swapper/0", tasks[0])
	}
	for pid, comm := range rep.tasks {
		got, ok := byPid[pid]
		// /proc shows a kernel thread's full name (task->comm is cut at
		// 15 bytes) and a worker's workqueue after a '-' (its last) or a
		// '+' (the one it is running now: wq_worker_comm).
		sameComm := comm == got.Comm || got.Comm != "" && strings.HasPrefix(comm, got.Comm) &&
			(len(got.Comm) == int(k.Layout.CommLen)-1 || (comm[len(got.Comm)] == '-' || comm[len(got.Comm)] == '+'))
		if !ok || !sameComm {
			t.Errorf("guest /proc has %d %q; walk has %+v", pid, comm, got)
		}
	}
	for pid, ts := range byPid {
		if _, ok := rep.tasks[pid]; !ok && pid != 0 && !strings.HasPrefix(ts.Comm, "kworker") {
			t.Errorf("walk has %d %q, guest /proc does not", pid, ts.Comm)
		}
	}
	// PID 1 is this binary (its Go runtime may still be running or
	// sleeping when the VM stops).
	if got := byPid[1]; got.Comm != "init" || got.Tgid != 1 || (got.State != "S" && got.State != "R") {
		t.Errorf("pid 1 (/init) is %+v", got)
	}
	t.Logf("%d tasks walked, %d in the guest's /proc; running: %v", len(tasks), len(rep.tasks), running)
	// Threads: /init's (the Go runtime's) as /proc/1/task lists them.
	threads, err := k.Threads()
	if err != nil {
		t.Fatal(err)
	}
	ofInit := map[int32]bool{}
	for _, th := range threads {
		if th.Tgid == 1 {
			ofInit[th.Pid] = true
		}
	}
	if len(rep.threads) < 2 {
		t.Errorf("guest reported threads %v of /init", rep.threads)
	}
	for _, tid := range rep.threads {
		if !ofInit[tid] {
			t.Errorf("/proc/1/task has %d; walked threads of pid 1: %v", tid, ofInit)
		}
	}
	t.Logf("%d threads in all; /init's: %d walked, %d in /proc/1/task", len(threads), len(ofInit), len(rep.threads))
	// Every thread's kernel stack unwound with the guest's ORC tables
	// while the VM is stopped; compared with the guest's own
	// /proc/<pid>/stack at the end.
	host := orcUnwindLive(t, k, mem, threads)

	// The Inspector (what POST /kernel serves) on the running guest: it
	// pauses the VM, opens the kernel from scratch, reports, resumes. The
	// guest ran in between, so tasks are compared loosely here (exactly
	// above, on the stopped VM).
	mem.Resume()
	in := &Inspector{Live: mem}
	r, err := in.InspectKernel(context.Background(), []string{"cmdline_proc_show", tracedFunc})
	if err != nil {
		t.Fatal(err)
	}
	if !r.OK() || r.KASLROffset != k.KASLROffset || r.Symbols != k.Symbols.Len() || len(r.Tasks) < len(tasks)/2 || r.Threads < len(r.Tasks) ||
		len(r.Fentry) != 2 || r.Fentry[0].Kind != FentryNop || r.Fentry[1].Kind != FentryCall {
		t.Errorf("Inspector report %+v", r)
	}
	var printed strings.Builder
	r.WriteText(&printed)
	t.Logf("klp-kvm inspect --live would print:\n%s", printed.String())
	orcCompareLive(t, k, mem, rep, host)
}

func TestLiveQEMUKASLR(t *testing.T)   { testLive(t, false) }
func TestLiveQEMUNoKASLR(t *testing.T) { testLive(t, true) }

// nestedKernelDir is the nested tier's current cached kernel, where
// test/nested/prepare.sh puts it (the same rules as test/nested's
// cacheDir: $KLP_KVM_NESTED_CACHE, else $XDG_CACHE_HOME or ~/.cache,
// then klp-kvm/nested).
func nestedKernelDir() string {
	base := os.Getenv("KLP_KVM_NESTED_CACHE")
	if base == "" {
		xdg := os.Getenv("XDG_CACHE_HOME")
		if xdg == "" {
			home, _ := os.UserHomeDir()
			xdg = filepath.Join(home, ".cache")
		}
		base = filepath.Join(xdg, "klp-kvm", "nested")
	}
	return filepath.Join(base, "current")
}

// newcEntry is one file of an initramfs.
type newcEntry struct {
	name string
	mode uint32    // S_IF* | permissions
	rdev [2]uint32 // major, minor of a device node
	data []byte
}

// newcArchive writes a cpio "newc" archive, the initramfs format
// (Documentation/driver-api/early-userspace/buffer-format.rst). The test
// writes its own rather than use test/nested/initramfs: that package's
// u-root cpio pulls in os/user, which links with cgo, and this binary
// must be static to run as the guest's /init under a plain `go test`.
func newcArchive(entries []newcEntry) []byte {
	var b bytes.Buffer
	pad := func() {
		for b.Len()%4 != 0 {
			b.WriteByte(0)
		}
	}
	write := func(ino int, e newcEntry) {
		fmt.Fprintf(&b, "070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
			ino, e.mode, 0, 0, 1, 0, len(e.data), 0, 0, e.rdev[0], e.rdev[1], len(e.name)+1, 0)
		b.WriteString(e.name)
		b.WriteByte(0)
		pad()
		b.Write(e.data)
		pad()
	}
	for i, e := range entries {
		write(i+1, e)
	}
	write(0, newcEntry{name: "TRAILER!!!"})
	return b.Bytes()
}
