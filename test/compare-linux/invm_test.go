//go:build comparelinux

package comparelinux

// The in-VM half: run by the nested tier's /init (test/nested/vminit) as
// one of its test binaries, with -test.run=^TestInVM.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"runtime/trace"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"klp-kvm/guestkernel"
	"klp-kvm/latency"
	"klp-kvm/livepatch"
	"klp-kvm/test/linux"
	"klp-kvm/vmm"
)

// Where the host's initramfs puts the module, and what Linux calls it.
const (
	modulePath = "/klp-compare/livepatch-sample.ko"
	moduleName = "livepatch_sample"
	patchDir   = "/sys/kernel/livepatch/" + moduleName
	patched    = "this has been live patched\n"
)

func inVM(t *testing.T) {
	if os.Getenv("KLP_COMPARE_INVM") != "1" {
		t.Skip("runs in the VM that TestCompareLinux boots (KLP_COMPARE_INVM=1)")
	}
}

func emit(r result) { fmt.Println(r.line()) }

// TestInVMLinuxLivepatch loads, enables, disables and unloads
// livepatch-sample.ko KLP_COMPARE_CYCLES times (default 20) idle, then
// as many times busy (a task per CPU reading /proc/cmdline, the patched
// function, in a loop), and prints the samples.
func TestInVMLinuxLivepatch(t *testing.T) {
	inVM(t)
	if !sides()["linux"] {
		t.Skip("KLP_COMPARE_SIDES leaves Linux out")
	}
	cycles := envInt("KLP_COMPARE_CYCLES", 20)
	orig, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	var uts unix.Utsname
	unix.Uname(&uts)
	emit(result{Kind: "info", Info: fmt.Sprintf("Linux %s, %d CPUs, livepatch-sample.ko, %d cycles per mode",
		unix.ByteSliceToString(uts.Release[:]), runtime.NumCPU(), cycles)})
	for _, mode := range modes {
		r := result{Kind: "linux", Mode: mode, CPUs: runtime.NumCPU()}
		var stop func()
		if mode == modeBusy {
			stop = startHogs(t, runtime.NumCPU())
		}
		for i := -warmup(); i < cycles; i++ {
			if i < 0 {
				// A warm-up, as on klp-kvm's side (sampleCycles): not counted.
				var w result
				if err := linuxCycle(&w, orig); err != nil {
					t.Fatalf("%s warm-up cycle: %v", mode, err)
				}
				continue
			}
			if err := linuxCycle(&r, orig); err != nil {
				if stop != nil {
					stop()
				}
				t.Fatalf("%s cycle %d: %v", mode, i, err)
			}
		}
		if stop != nil {
			stop()
		}
		emit(r)
	}
}

// linuxCycle is one insmod, enable transition, disable transition and
// rmmod, timed (see result).
func linuxCycle(r *result, orig []byte) error {
	f, err := os.Open(modulePath)
	if err != nil {
		return err
	}
	defer f.Close()
	t0 := time.Now()
	if err := unix.FinitModule(int(f.Fd()), "", 0); err != nil {
		return fmt.Errorf("finit_module %s: %w", modulePath, err)
	}
	t1 := time.Now()
	if err := linux.WaitTransition(patchDir, false, 60*time.Second); err != nil {
		return fmt.Errorf("enable: %w", err)
	}
	t2 := time.Now()
	if got, _ := os.ReadFile("/proc/cmdline"); string(got) != patched {
		return fmt.Errorf("enabled, but /proc/cmdline reads %q", got)
	}
	t3 := time.Now()
	if err := os.WriteFile(patchDir+"/enabled", []byte("0"), 0); err != nil {
		return fmt.Errorf("disable: %w", err)
	}
	if err := linux.WaitTransition(patchDir, true, 60*time.Second); err != nil {
		return fmt.Errorf("disable: %w", err)
	}
	t4 := time.Now()
	if got, _ := os.ReadFile("/proc/cmdline"); !bytes.Equal(got, orig) {
		return fmt.Errorf("disabled, but /proc/cmdline reads %q", got)
	}
	var k [5]int64
	for i, name := range []string{"t_init", "t_pre_patch", "t_post_patch", "t_pre_unpatch", "t_post_unpatch"} {
		if k[i], err = moduleParam(name); err != nil {
			return err
		}
	}
	if !(k[0] <= k[1] && k[1] <= k[2] && k[2] <= k[3] && k[3] <= k[4]) || k[0] == 0 {
		return fmt.Errorf("the module's timestamps are out of order (init, pre_patch, post_patch, pre_unpatch, post_unpatch: %v): not our livepatch-sample.ko?", k)
	}
	if err := linux.DeleteModule(moduleName, 30*time.Second); err != nil {
		return err
	}
	t5 := time.Now()
	r.Load = append(r.Load, int64(t1.Sub(t0)))
	r.Enable = append(r.Enable, int64(t2.Sub(t0)))
	r.Transition = append(r.Transition, int64(t2.Sub(t1)))
	r.Disable = append(r.Disable, int64(t4.Sub(t3)))
	r.Unload = append(r.Unload, int64(t5.Sub(t4)))
	r.KEnable = append(r.KEnable, k[2]-k[0])
	r.KTransition = append(r.KTransition, k[2]-k[1])
	r.KDisable = append(r.KDisable, k[4]-k[3])
	return nil
}

// warmup is KLP_COMPARE_WARMUP, the cycles each side runs before the
// counted ones, in each mode (default 1; 0 is allowed). QEMU's TCG
// translates guest code the first time it runs: klp-kvm's first Load in
// a fresh process took 123-149 ms in the VM where the next ones took
// 2-7 ms, its code not yet translated; Linux's first insmod runs kernel
// code the boot already ran. The warm-up keeps that emulator artefact
// out of both sides' max; the bench's cold enables (register+first
// enable, below the table) still show first-use costs.
func warmup() int {
	if v, err := strconv.Atoi(os.Getenv("KLP_COMPARE_WARMUP")); err == nil && v >= 0 {
		return v
	}
	return 1
}

// moduleParam reads one of the module's timestamps (ns of ktime_get_ns).
func moduleParam(name string) (int64, error) {
	b, err := os.ReadFile("/sys/module/" + moduleName + "/parameters/" + name)
	if err != nil {
		return 0, fmt.Errorf("the module's timestamp %s: %w", name, err)
	}
	v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("the module's timestamp %s: %q: %w", name, b, err)
	}
	return v, nil
}

// startHogs starts n processes (this binary again, TestInVMHog) that
// read /proc/cmdline in a loop, and returns what stops them.
func startHogs(t *testing.T, n int) func() {
	var cmds []*exec.Cmd
	for i := 0; i < n; i++ {
		cmd := exec.Command(os.Args[0], "-test.run=^TestInVMHog$", "-test.timeout=0")
		cmd.Env = append(os.Environ(), "KLP_COMPARE_HOG=1", "GOMAXPROCS=1")
		if err := cmd.Start(); err != nil {
			t.Fatalf("start hog: %v", err)
		}
		cmds = append(cmds, cmd)
	}
	// The hogs are running once they have read the file a few times:
	// their own start costs ~100 ms under TCG; a second is ample.
	time.Sleep(time.Second)
	return func() {
		for _, c := range cmds {
			c.Process.Kill()
			c.Wait()
		}
	}
}

// TestInVMHog is a busy task of the busy mode: it reads /proc/cmdline
// (cmdline_proc_show, the function patched) until it is killed.
func TestInVMHog(t *testing.T) {
	if os.Getenv("KLP_COMPARE_HOG") != "1" {
		t.Skip("a hog of TestInVMLinuxLivepatch's busy mode (KLP_COMPARE_HOG=1)")
	}
	for {
		os.ReadFile("/proc/cmdline")
	}
}

// TestInVMKlpKvmBench runs `klp-kvm bench --engine kvm --cpus N --funcs
// 1`, N the VM's CPU count (its guest has as many vCPUs as the VM that
// Linux's side ran in), in each mode: once with KLP_COMPARE_ITERATIONS
// measured cycles (default KLP_COMPARE_CYCLES, Linux's count: a max is
// compared with a max over as many samples), once with KLP_COMPARE_COLD
// points of one cycle (default 4) for more first enables; then Linux's
// cycle with livepatch-sample (sampleCycles); and prints the rows.
func TestInVMKlpKvmBench(t *testing.T) {
	inVM(t)
	if !sides()["klp-kvm"] {
		t.Skip("KLP_COMPARE_SIDES leaves klp-kvm out")
	}
	bin := os.Getenv("KLP_KVM_BIN")
	if bin == "" {
		t.Fatal("no KLP_KVM_BIN: the host did not put klp-kvm into the VM")
	}
	cycles := envInt("KLP_COMPARE_CYCLES", 20)
	iters := envInt("KLP_COMPARE_ITERATIONS", cycles)
	cold := envInt("KLP_COMPARE_COLD", 4)
	cpus := fmt.Sprint(runtime.NumCPU())
	for _, mode := range modes {
		if _, ok := benchCmdline[mode]; !ok {
			t.Fatalf("KLP_COMPARE_MODES: no mode %q (idle, busy)", mode)
		}
		r := result{Kind: "klp-kvm", Mode: mode, CPUs: runtime.NumCPU()}
		r.Warm = bench(t, bin, "--cpus", cpus, "--funcs", "1", "--iterations", fmt.Sprint(iters), "--cmdline", benchCmdline[mode])
		r.Cold = bench(t, bin, "--cpus", cpus, "--funcs", strings.TrimSuffix(strings.Repeat("1,", cold), ","), "--iterations", "1", "--cmdline", benchCmdline[mode])
		sampleCycles(t, &r, mode, cycles)
		emit(r)
	}
}

// sampleCycles is Linux's cycle on klp-kvm, in this process: on a guest
// of the mode with as many vCPUs as the VM has CPUs, after warmup()
// cycles that are not counted, cycles times load
// livepatch-sample (register and enable: Linux's insmod), check that the
// guest's /proc/cmdline reads patched, unload it (disable and
// unregister: Linux's disable and rmmod), check /proc/cmdline again.
func sampleCycles(t *testing.T, r *result, mode string, cycles int) {
	obj, err := guestkernel.Patch("livepatch-sample")
	if err != nil {
		t.Fatal(err)
	}
	s, err := vmm.Boot(vmm.Config{Engine: "kvm", CPUs: runtime.NumCPU(), Cmdline: benchCmdline[mode]})
	if err != nil {
		t.Fatalf("%s: boot: %v", mode, err)
	}
	defer s.Close()
	orig, err := s.Exec("cat /proc/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	runtime.GC()
	for i := -warmup(); i < cycles; i++ {
		t0 := time.Now()
		p, res, err := s.Manager.Load(obj, "livepatch-sample.o", livepatch.Options{})
		if err != nil {
			t.Fatalf("%s: cycle %d: load livepatch-sample: %v", mode, i, err)
		}
		t1 := time.Now()
		if got, err := s.Exec("cat /proc/cmdline"); err != nil || got != patched {
			t.Fatalf("%s: cycle %d: enabled, but /proc/cmdline reads %q (%v)", mode, i, got, err)
		}
		t2 := time.Now()
		if _, err := s.Manager.Unload(p.Name, livepatch.Options{}); err != nil {
			t.Fatalf("%s: cycle %d: unload: %v", mode, i, err)
		}
		t3 := time.Now()
		if got, err := s.Exec("cat /proc/cmdline"); err != nil || got != orig {
			t.Fatalf("%s: cycle %d: unloaded, but /proc/cmdline reads %q, want %q (%v)", mode, i, got, orig, err)
		}
		if i < 0 {
			continue // a warm-up cycle
		}
		r.SampleLoad = append(r.SampleLoad, int64(t1.Sub(t0)))
		r.SampleEnable = append(r.SampleEnable, int64(res.Total))
		r.SampleUnload = append(r.SampleUnload, int64(t3.Sub(t2)))
	}
}

func bench(t *testing.T, bin string, args ...string) []latency.Row {
	args = append([]string{"bench", "--engine", "kvm", "--json"}, args...)
	cmd := exec.Command(bin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Run()
	fmt.Printf("klp-kvm %s: %v\n%s", strings.Join(args, " "), time.Since(start).Round(time.Millisecond), errb.String())
	if err != nil {
		t.Fatalf("klp-kvm %s: %v\n%s", strings.Join(args, " "), err, errb.String())
	}
	var rows []latency.Row
	if err := json.Unmarshal(out.Bytes(), &rows); err != nil {
		t.Fatalf("klp-kvm bench --json: %v\n%s", err, out.String())
	}
	return rows
}

// TestInVMTrace, with KLP_COMPARE_TRACE=1, runs klp-kvm's benchmark in
// this process (latency.Run, as `klp-kvm bench --engine kvm --funcs 1`
// does, on a guest with as many vCPUs as the VM has CPUs, in each mode)
// under Go's execution tracer and CPU profiler, and sends both to the
// host (trace-<CPUs>cpu-<mode>.out, cpu-<CPUs>cpu-<mode>.prof in the
// output directory; go tool trace / go tool pprof read them). It is how
// to see where an enable's time goes on this platform: the vCPU
// threads' syscalls, their wake-ups and the VMM's goroutines, with their
// times, around each pause.
func TestInVMTrace(t *testing.T) {
	inVM(t)
	if os.Getenv("KLP_COMPARE_TRACE") != "1" {
		t.Skip("KLP_COMPARE_TRACE=1 asks for it")
	}
	iters := envInt("KLP_COMPARE_ITERATIONS", 100)
	for _, mode := range modes {
		var tr, prof bytes.Buffer
		if err := trace.Start(&tr); err != nil {
			t.Fatal(err)
		}
		if err := pprof.StartCPUProfile(&prof); err != nil {
			t.Fatal(err)
		}
		rows, err := latency.Run(latency.Config{Engine: "kvm", CPUs: []int{runtime.NumCPU()}, Funcs: []int{1}, Iterations: iters,
			Cmdline: benchCmdline[mode]})
		pprof.StopCPUProfile()
		trace.Stop()
		if err != nil {
			t.Fatalf("%s: %v", mode, err)
		}
		b, _ := json.Marshal(rows)
		fmt.Printf("traced %s: %s\n", mode, b)
		emit(result{Kind: "file", Info: fmt.Sprintf("trace-%dcpu-%s.out", runtime.NumCPU(), mode), Data: tr.Bytes()})
		emit(result{Kind: "file", Info: fmt.Sprintf("cpu-%dcpu-%s.prof", runtime.NumCPU(), mode), Data: prof.Bytes()})
	}
}
