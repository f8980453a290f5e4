package nested

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"klp-kvm/initramfs"
	"klp-kvm/test/nested/manifest"
)

// The packages whose tests run on real KVM. ./test/e2e joins once it
// exists and has tests; its tests select the KVM engine from
// KLP_KVM_ENGINE=kvm.
var (
	basePackages     = []string{"./kvm/hw"}
	optionalPackages = []string{"./test/e2e", "./test/guest", "./test/linux"}
)

// extraArgs are flags for one package's binary in the VM: kvm/hw also runs
// its benchmarks briefly, which gives the exit cost under nested KVM.
var extraArgs = map[string][]string{
	"./kvm/hw": {"-test.bench=KVM", "-test.benchtime=200x"},
}

// defaultTimeout bounds the VM run; below go test's own 10-minute default so
// that a hang is reported by this test, with the console, not by a panic.
const defaultTimeout = 8 * time.Minute

// linuxBinTimeout and linuxVMTimeout are the per-binary and whole-run
// bounds of the VM that runs test/linux (its Linux guests take longer).
const (
	linuxBinTimeout = 12 * time.Minute
	linuxVMTimeout  = 14 * time.Minute
)

// TestNestedKVM runs the KVM-engine test binaries on every KVM tier this
// machine has (see tiers_test.go): "direct" on the host's own /dev/kvm,
// "nested" on the kvm_amd of a QEMU-TCG VM. Each tier's subtests carry the
// KVM flavour they ran on: TestNestedKVM/direct/kvm_pvm/kvm-hw/TestKVMKick,
// TestNestedKVM/nested/kvm_amd/test-e2e/TestBoot, ...
func TestNestedKVM(t *testing.T) {
	// CI sets KLP_KVM_NESTED_REQUIRE=1 after prepare.sh: there a missing
	// prerequisite is a failure, not a skip that would hide a broken kvm/hw.
	require := os.Getenv("KLP_KVM_NESTED_REQUIRE") == "1"
	if os.Getenv("KLP_KVM_NESTED") == "0" && !require {
		t.Skip("KVM tiers: disabled by KLP_KVM_NESTED=0")
	}
	if testing.Short() && !require {
		t.Skip("KVM tiers: skipped in -short mode")
	}
	facts := hostFacts{Only: os.Getenv("KLP_KVM_NESTED_DIRECT"), Require: require}
	facts.DevKVM, facts.KVMErr = probeKVM()
	kernel, why := findPrerequisites()
	facts.NestedWhy = why
	plan := planTiers(facts)
	if msg, fail, none := plan.summary(); none {
		if fail {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}

	root := moduleRoot(t)
	work := t.TempDir()
	t0 := time.Now()
	bins := buildTestBinaries(t, root, work)
	klp := buildKlpKvm(t, root, work)
	t.Logf("built %d test binaries%s in %v", len(bins), map[bool]string{true: " and klp-kvm", false: ""}[klp != ""], time.Since(t0).Round(time.Millisecond))

	parallel := tiersParallel()
	for _, tp := range plan {
		tp := tp
		t.Run(tp.Name, func(t *testing.T) {
			switch {
			case tp.Fail:
				t.Fatal(tp.Why)
			case !tp.Run:
				t.Skip(tp.Why)
			}
			if parallel {
				t.Parallel()
			}
			start := time.Now()
			defer func() { t.Logf("%s tier took %v", tp.Name, time.Since(start).Round(time.Millisecond)) }()
			switch tp.Name {
			case tierDirect:
				runDirect(t, root, bins, klp, kernel)
			case tierNested:
				runNested(t, root, work, kernel, bins, klp)
			}
		})
	}
}

// testBinary is one `go test -c` output.
type testBinary struct {
	Pkg     string // ./kvm/hw
	ImportP string // klp-kvm/kvm/hw
	Name    string // kvm-hw.test
	Path    string // on the host
}

func moduleRoot(t *testing.T) string {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		t.Fatal("not inside the klp-kvm module")
	}
	return filepath.Dir(gomod)
}

// probeKVM says whether /dev/kvm exists and, if it does, why it cannot be
// opened (nil: usable).
func probeKVM() (exists bool, err error) {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return !errors.Is(err, os.ErrNotExist), err
	}
	f.Close()
	return true, nil
}

// kernelCache is what prepare.sh leaves in the cache.
type kernelCache struct {
	Dir     string
	Version string
	Vmlinuz string
	Modules []string // file names under Dir/modules, load order
	QEMU    string
}

func cacheDir() string {
	if d := os.Getenv("KLP_KVM_NESTED_CACHE"); d != "" {
		return d
	}
	base := os.Getenv("XDG_CACHE_HOME")
	if base == "" {
		home, _ := os.UserHomeDir()
		base = filepath.Join(home, ".cache")
	}
	return filepath.Join(base, "klp-kvm", "nested")
}

// findPrerequisites returns the cached kernel and QEMU, or why not.
func findPrerequisites() (*kernelCache, string) {
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		return nil, "no qemu-system-x86_64 in PATH"
	}
	dir := filepath.Join(cacheDir(), "current")
	if _, err := os.Stat(filepath.Join(dir, ".complete")); err != nil {
		return nil, "no kernel in " + dir
	}
	load, err := os.ReadFile(filepath.Join(dir, "modules.load"))
	if err != nil {
		return nil, "no modules.load in " + dir
	}
	k := &kernelCache{Dir: dir, Vmlinuz: filepath.Join(dir, "vmlinuz"), QEMU: qemu}
	if v, err := os.ReadFile(filepath.Join(dir, "version")); err == nil {
		k.Version = strings.TrimSpace(string(v))
	}
	for _, m := range strings.Fields(string(load)) {
		if strings.Contains(m, "/") || !strings.HasSuffix(m, ".ko") {
			return nil, fmt.Sprintf("bad module name %q in modules.load", m)
		}
		if _, err := os.Stat(filepath.Join(dir, "modules", m)); err != nil {
			return nil, "missing module " + m
		}
		k.Modules = append(k.Modules, m)
	}
	if _, err := os.Stat(k.Vmlinuz); err != nil || len(k.Modules) == 0 {
		return nil, "incomplete kernel cache in " + dir
	}
	return k, ""
}

func goCmd(root string, args ...string) *exec.Cmd {
	cmd := exec.Command("go", args...)
	cmd.Dir = root
	// Static binaries: the initramfs has no libc.
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	return cmd
}

func hasTests(dir string) bool {
	m, _ := filepath.Glob(filepath.Join(dir, "*_test.go"))
	return len(m) > 0
}

func buildTestBinaries(t *testing.T, root, work string) []testBinary {
	pkgs := append([]string(nil), basePackages...)
	for _, p := range optionalPackages {
		if hasTests(filepath.Join(root, p)) {
			pkgs = append(pkgs, p)
		}
	}
	if s := os.Getenv("KLP_KVM_NESTED_PKGS"); s != "" {
		pkgs = strings.Fields(s)
	}
	var bins []testBinary
	for _, p := range pkgs {
		name := strings.ReplaceAll(strings.TrimPrefix(p, "./"), "/", "-") + ".test"
		out := filepath.Join(work, name)
		// -s -w: no symbol table or DWARF (tracebacks use pclntab), a
		// third less to load into the VM under TCG.
		cmd := goCmd(root, "test", "-c", "-ldflags=-s -w", "-o", out, p)
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go test -c %s: %v\n%s", p, err, b)
		}
		bins = append(bins, testBinary{Pkg: p, ImportP: "klp-kvm/" + strings.TrimPrefix(p, "./"), Name: name, Path: out})
	}
	return bins
}

// buildKlpKvm builds the CLI for the in-VM tests that drive it; it is
// optional (the e2e tests that need it find it through KLP_KVM_BIN).
func buildKlpKvm(t *testing.T, root, work string) string {
	if _, err := os.Stat(filepath.Join(root, "cmd", "klp-kvm")); err != nil {
		return ""
	}
	out := filepath.Join(work, "klp-kvm")
	if b, err := goCmd(root, "build", "-ldflags=-s -w", "-o", out, "./cmd/klp-kvm").CombinedOutput(); err != nil {
		t.Logf("klp-kvm does not build, in-VM tests run without it: %v\n%s", err, tail(string(b), 10))
		return ""
	}
	return out
}

func runArgs(p string) []string {
	args := append([]string(nil), extraArgs[p]...)
	if r := os.Getenv("KLP_KVM_NESTED_RUN"); r != "" {
		args = append(args, "-test.run="+r)
		if !strings.Contains(r, "Benchmark") {
			args = filterBench(args)
		}
	}
	if s := os.Getenv("KLP_KVM_NESTED_SKIP"); s != "" {
		args = append(args, "-test.skip="+s)
	}
	// Repeats inside one VM boot: chasing a flake costs one L1 boot
	// (minutes under TCG), not one per try.
	if n, err := strconv.Atoi(os.Getenv("KLP_KVM_NESTED_COUNT")); err == nil && n > 1 {
		args = append(args, "-test.count="+strconv.Itoa(n))
	}
	return args
}

func filterBench(args []string) []string {
	var out []string
	for _, a := range args {
		if !strings.HasPrefix(a, "-test.bench") {
			out = append(out, a)
		}
	}
	return out
}

// runDirect runs the binaries on this host's /dev/kvm, reporting exactly
// as for the VM, under a subtest named after the host's KVM flavour.
func runDirect(t *testing.T, root string, bins []testBinary, klp string, k *kernelCache) {
	flavour := manifest.HostFlavour()
	var uts unix.Utsname
	unix.Uname(&uts)
	t.Logf("direct tier: the KVM-engine tests on this host's /dev/kvm, KVM flavour %s (kernel %s)", flavour, unix.ByteSliceToString(uts.Release[:]))
	var env []string
	if k != nil {
		// test/linux boots the same Debian kernel as a klp-kvm guest.
		env = append(env, linuxKernelEnv+"="+k.Vmlinuz)
	}
	t.Run(flavour, func(t *testing.T) { runDirectBins(t, root, bins, klp, env) })
}

// linuxKernelEnv names the Linux kernel test/linux boots as a guest; both
// tiers set it to the Debian kernel the nested tier boots (in the VM, a
// copy inside its initramfs).
const (
	linuxKernelEnv  = "KLP_E2E_LINUX_KERNEL"
	linuxKernelInVM = "/klp-nested/linux/vmlinuz"
)

func runDirectBins(t *testing.T, root string, bins []testBinary, klp string, env []string) {
	for _, b := range bins {
		// Inside go test's own deadline, so that a hang is reported per
		// binary, with its stacks, not by go test's panic.
		timeout := defaultTimeout
		if dl, ok := t.Deadline(); ok {
			timeout = min(timeout, max(time.Until(dl)-20*time.Second, time.Minute))
		}
		args := append([]string{"-test.v=test2json", "-test.count=1", "-test.timeout=" + timeout.Round(time.Second).String()}, runArgs(b.Pkg)...)
		cmd := exec.Command(b.Path, args...)
		cmd.Dir = filepath.Join(root, b.Pkg)
		cmd.Env = append(append(os.Environ(), "KLP_KVM_ENGINE=kvm"), env...)
		if klp != "" {
			cmd.Env = append(cmd.Env, "KLP_KVM_BIN="+klp)
		}
		start := time.Now()
		out, err := cmd.CombinedOutput()
		r := &binResult{Name: b.Name, Pkg: b.ImportP, Output: out, Ended: true, Elapsed: time.Since(start)}
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			r.Exit = ee.ExitCode()
		} else if err != nil {
			r.Exit, r.Error = -1, err.Error()
		}
		t.Run(strings.TrimSuffix(b.Name, ".test"), func(t *testing.T) {
			t.Logf("%s ran for %v on this host", b.Name, r.Elapsed.Round(time.Millisecond))
			report(t, r, "", "on this host")
		})
	}
}

func runNested(t *testing.T, root, work string, k *kernelCache, bins []testBinary, klp string) {
	// Linux guests get a VM of their own with one CPU. Measured on this
	// platform (QEMU 7.2 and 10.0 TCG, Debian 6.1's kvm_amd in L1): with
	// two L1 CPUs an L2 Linux boot stalls at a random point with an
	// interrupt delivered inside an interrupts-off section, QEMU's own
	// VMM as the L2's VMM as much as ours (4 of 8 QEMU boots stalled, none
	// of ours reached init); with one L1 CPU, 3 of 3 QEMU boots and every
	// one of ours reached init (docs/linux-guests.md). klp-kvm's own
	// guest keeps two L1 CPUs, so its multi-vCPU pauses stay real.
	var own, linux []testBinary
	for _, b := range bins {
		if usesLinuxKernel([]testBinary{b}) {
			linux = append(linux, b)
		} else {
			own = append(own, b)
		}
	}
	if len(own) > 0 {
		runNestedVM(t, root, work, k, own, klp, 2, "")
	}
	if len(linux) > 0 {
		runNestedVM(t, root, work, k, linux, klp, 1, "_1cpu")
	}
}

// runNestedVM boots one VM with smp CPUs, runs bins in it and reports
// them under the KVM flavour's subtest (+ suffix).
func runNestedVM(t *testing.T, root, work string, k *kernelCache, bins []testBinary, klp string, smp int, suffix string) {
	initrd := filepath.Join(work, "initrd"+suffix+".cpio")
	t0 := time.Now()
	size := buildInitramfs(t, root, work, k, bins, klp, initrd)
	t.Logf("initramfs %.1f MiB built in %v (kernel %s)", float64(size)/(1<<20), time.Since(t0).Round(time.Millisecond), k.Version)

	timeout := defaultTimeout
	if usesLinuxKernel(bins) {
		timeout = linuxVMTimeout
	}
	if s := os.Getenv("KLP_KVM_NESTED_TIMEOUT"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("KLP_KVM_NESTED_TIMEOUT=%q: %v", s, err)
		}
		timeout = d
	}
	// Within go test's own -timeout (10m by default, and the direct tier
	// may have used part of it): a hang is then reported here, with the
	// console, rather than by go test's panic.
	if dl, ok := t.Deadline(); ok {
		if left := time.Until(dl) - 20*time.Second; left < timeout {
			timeout = max(left, time.Minute)
			t.Logf("VM run bounded by go test's -timeout: %v (use -timeout 30m for both tiers)", timeout.Round(time.Second))
		}
	}
	// A VM that freezes (no heartbeat: the L1 kernel or QEMU's TCG stuck,
	// seen about once in ten runs on a loaded machine) is booted once more;
	// a second freeze fails. A hang of the tests themselves is not a
	// freeze: the heartbeat goes on and the in-VM timeouts report it.
	var resultsPath, hung string
	for attempt := 1; ; attempt++ {
		resultsPath = filepath.Join(work, fmt.Sprintf("results%s-%d.txt", suffix, attempt))
		var frozen bool
		var elapsed time.Duration
		hung, frozen, elapsed = bootVM(t, k, smp, initrd, resultsPath, timeout)
		t.Logf("VM ran for %v", elapsed.Round(time.Millisecond))
		if !frozen || attempt == 2 {
			break
		}
		t.Logf("%s: booting the VM once more", hung)
	}

	raw, err := os.ReadFile(resultsPath)
	if err != nil {
		t.Fatalf("result channel: %v", err)
	}
	res, err := parseResults(bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("result channel: %v", err)
	}
	for _, l := range res.Bad {
		t.Logf("malformed control line from the VM: %q", l)
	}
	if res.Boot == "" {
		t.Fatalf("the VM's /init never reported (%s); see the console above", hungReason(&binResult{}, hung))
	}
	t.Logf("VM: %s", res.Boot)
	for _, m := range res.Modules {
		if m.Error != "" {
			t.Errorf("module %s: %s", m.Name, m.Error)
		}
	}
	if res.KVM == nil || !res.KVM.OK {
		msg := "not checked"
		if res.KVM != nil {
			msg = res.KVM.Error
		}
		t.Fatalf("no working /dev/kvm in the VM: %s", msg)
	}
	flavour := res.KVM.Flavour
	if flavour == "" {
		flavour = manifest.UnknownFlavour
	}
	t.Logf("nested tier: the KVM-engine tests in the VM, KVM flavour %s", flavour)
	t.Run(flavour+suffix, func(t *testing.T) { reportNested(t, res, bins, hung) })
}

// reportNested turns the VM's results into one subtest per binary.
func reportNested(t *testing.T, res *vmResults, bins []testBinary, hung string) {
	ran := map[string]bool{}
	for _, b := range res.Bins {
		b := b
		ran[b.Name] = true
		t.Run(strings.TrimSuffix(b.Name, ".test"), func(t *testing.T) {
			if b.Ended {
				t.Logf("%s ran for %v in the VM", b.Name, b.Elapsed)
			}
			report(t, b, hung, "in the VM")
		})
	}
	for _, b := range bins {
		if !ran[b.Name] {
			t.Errorf("%s never started in the VM (%s)", b.Name, hungReason(&binResult{}, hung))
		}
	}
	if res.Done == nil && hung == "" {
		t.Error("the VM stopped before /init reported done")
	}
}

func buildInitramfs(t *testing.T, root, work string, k *kernelCache, bins []testBinary, klp, out string) int64 {
	initBin := filepath.Join(work, "init")
	if b, err := goCmd(root, "build", "-ldflags=-s -w", "-o", initBin, "./test/nested/vminit").CombinedOutput(); err != nil {
		t.Fatalf("build vminit: %v\n%s", err, b)
	}
	a := initramfs.New()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(a.AddFile("init", initBin))
	must(a.AddCharDev("dev/console", 0o600, 5, 1))
	const modDir = "/klp-nested/modules"
	for _, m := range k.Modules {
		must(a.AddFile(path.Join(modDir, m), filepath.Join(k.Dir, "modules", m)))
	}
	// Each binary's -test.timeout in the VM: 5 minutes, or
	// KLP_KVM_NESTED_BIN_TIMEOUT (a Go duration) for longer runs
	// (test/compare-linux's --linux-guest mode).
	binTimeout := 5 * time.Minute
	if usesLinuxKernel(bins) {
		// test/linux boots a dozen Linux guests and switches patches
		// hundreds of times (TestLinuxLivepatchBusy): 5-8 minutes.
		binTimeout = linuxBinTimeout
	}
	if d, err := time.ParseDuration(os.Getenv("KLP_KVM_NESTED_BIN_TIMEOUT")); err == nil && d > 0 {
		binTimeout = d
	}
	man := manifest.Manifest{Modules: k.Modules, ModulesDir: modDir, TimeoutSecs: int(binTimeout.Seconds())}
	if klp != "" {
		must(a.AddFile("klp-nested/bin/klp-kvm", klp))
		man.Env = append(man.Env, "KLP_KVM_BIN=/klp-nested/bin/klp-kvm")
	}
	if usesLinuxKernel(bins) {
		must(a.AddFile(strings.TrimPrefix(linuxKernelInVM, "/"), k.Vmlinuz))
		man.Env = append(man.Env, linuxKernelEnv+"="+linuxKernelInVM)
	}
	// The e2e suites' own knobs (e.g. KLP_E2E_PAIR_CYCLES) reach the VM.
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "KLP_E2E_") {
			man.Env = append(man.Env, kv)
		}
	}
	for _, b := range bins {
		must(a.AddFile(path.Join("klp-nested/bin", b.Name), b.Path))
		dir := path.Join("/src", strings.TrimPrefix(b.Pkg, "./"))
		// Tests read testdata relative to their package directory.
		if td := filepath.Join(root, b.Pkg, "testdata"); isDir(td) {
			must(a.AddTree(path.Join(dir, "testdata"), td))
		}
		man.Tests = append(man.Tests, manifest.Binary{Name: b.Name, Pkg: b.ImportP, Dir: dir, Args: runArgs(b.Pkg)})
	}
	mj, err := json.MarshalIndent(man, "", "  ")
	must(err)
	must(a.AddBytes(manifest.Path, mj, 0o644))
	f, err := os.Create(out)
	must(err)
	w := bufio.NewWriterSize(f, 1<<20)
	must(a.Write(w))
	must(w.Flush())
	st, err := f.Stat()
	must(err)
	must(f.Close())
	return st.Size()
}

// usesLinuxKernel: one of the binaries boots Linux guests (test/linux), so
// the VM needs the kernel (8 MiB more to load under TCG otherwise).
func usesLinuxKernel(bins []testBinary) bool {
	for _, b := range bins {
		if b.Pkg == "./test/linux" {
			return true
		}
	}
	return false
}

func isDir(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}

// qemuArgs is the VM: TCG with SVM emulated, 2 vCPUs (so multi-vCPU pause
// is real), the console on stdio, the result channel on a file.
func qemuArgs(k *kernelCache, smp int, initrd, results string) []string {
	return []string{
		"-accel", qemuAccel(),
		"-cpu", qemuCPU(),
		"-smp", strconv.Itoa(smp),
		"-m", "1024",
		"-display", "none",
		"-monitor", "none",
		"-serial", "stdio",
		"-serial", "file:" + results,
		"-nic", "none",
		"-no-reboot",
		"-kernel", k.Vmlinuz,
		"-initrd", initrd,
		"-append", "console=ttyS0 quiet panic=-1",
	}
}

// qemuAccel is single-threaded TCG: both L1 vCPUs on one host thread,
// still two CPUs to the L1 kernel (so two L2 vCPUs really run at once from
// KVM's point of view). Measured on a loaded 2-core machine: no slower than
// thread=multi (VM 71-138 s against 126-165 s for the whole suite), and no
// freeze in its runs, where thread=multi froze twice in about twenty (see
// docs/testing.md). KLP_KVM_NESTED_ACCEL overrides it.
func qemuAccel() string {
	if a := os.Getenv("KLP_KVM_NESTED_ACCEL"); a != "" {
		return a
	}
	return "tcg,thread=single"
}

// qemuCPU is the emulated CPU: "max" has SVM under TCG; EPYC,+svm is the
// alternative measured too (docs/testing.md).
func qemuCPU() string {
	if c := os.Getenv("KLP_KVM_NESTED_CPU"); c != "" {
		return c
	}
	return "max"
}

// bootVM runs QEMU until it exits or the timeout, streaming the console to
// the test log line by line. It returns why the VM was stopped early ("" if
// it powered off by itself) and how long it ran.
func bootVM(t *testing.T, k *kernelCache, smp int, initrd, results string, timeout time.Duration) (hung string, frozen bool, elapsed time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	// Freeze watchdog: /init's heartbeat must arrive every freezeAfter; the
	// kernel boots before /init starts it, which is why the window is much
	// longer than the heartbeat.
	var lastLine atomic.Int64
	lastLine.Store(time.Now().UnixNano())
	var alive atomic.Bool // a first heartbeat came: /init runs
	var froze atomic.Bool
	stopWatch := make(chan struct{})
	defer close(stopWatch)
	cmd := exec.CommandContext(ctx, k.QEMU, qemuArgs(k, smp, initrd, results)...)
	// The console's input, for the nudge below.
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	var nudges atomic.Int32
	go func() {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		var nudged time.Time
		for {
			select {
			case <-stopWatch:
				return
			case <-tick.C:
				late := time.Since(time.Unix(0, lastLine.Load()))
				if late > freezeAfter {
					froze.Store(true)
					cancel()
					return
				}
				// QEMU TCG sometimes loses the wake-up of a halted L1
				// CPU: caught with its monitor, the CPU sat in HLT with
				// IF=1 and the LAPIC timer's vector pending in IRR
				// (deliverable: PPR 0x10), forever. Any new interrupt
				// re-evaluates the APIC and wakes it: a byte on the
				// console's serial line is one (docs/testing.md).
				if alive.Load() && late > nudgeAfter && time.Since(nudged) > nudgeAfter {
					nudged = time.Now()
					n := nudges.Add(1)
					t.Logf("no heartbeat for %v: nudging the VM's serial line (%d)", late.Round(time.Second), n)
					stdin.Write([]byte("\r"))
				}
			}
		}
	}()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", k.QEMU, err)
	}
	t.Logf("booting: %s %s", k.QEMU, strings.Join(qemuArgs(k, smp, initrd, results), " "))
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		if ev, err := manifest.ParseLine(line); err == nil && ev.Event == manifest.EventAlive {
			// Only the heartbeat counts: a frozen L1 kernel still prints
			// its soft-lockup reports.
			lastLine.Store(time.Now().UnixNano())
			alive.Store(true)
			continue
		}
		if line = stripControl(line); line != "" {
			t.Logf("[vm %6.2fs] %s", time.Since(start).Seconds(), line)
		}
	}
	err = cmd.Wait()
	elapsed = time.Since(start)
	if froze.Load() {
		return fmt.Sprintf("the VM froze: no heartbeat from /init for %v, killed", freezeAfter), true, elapsed
	}
	if ctx.Err() == context.DeadlineExceeded {
		return fmt.Sprintf("the VM hung: killed after %v", timeout), false, elapsed
	}
	if err != nil {
		t.Errorf("qemu: %v\n%s", err, tail(stderr.String(), 20))
		return "QEMU failed: " + err.Error(), false, elapsed
	}
	if s := strings.TrimSpace(stderr.String()); s != "" {
		t.Logf("qemu stderr:\n%s", tail(s, 20))
	}
	return "", false, elapsed
}

// nudgeAfter is how long the heartbeat may stay away before the console
// line gets a byte (three heartbeats missed). It was 15 s with a 5 s
// heartbeat: every lost wake-up then cost 15 s, most of TestLinuxSysfs's
// 138 s in CI; a byte on the line is harmless, so it is sent early.
const nudgeAfter = 3 * manifest.HeartbeatInterval

// freezeAfter is how long the heartbeat may stay away: longer than a
// loaded machine needs to boot the kernel to /init under TCG (10-25 s
// measured), far longer than the heartbeat's interval.
const freezeAfter = 90 * time.Second

// stripControl drops terminal escape sequences and control bytes the
// firmware and the kernel write to the console.
func stripControl(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == 0x1b: // ESC [ ... final byte, or ESC x
			if i+1 < len(s) && s[i+1] == '[' {
				i += 2
				for i < len(s) && (s[i] < 0x40 || s[i] > 0x7e) {
					i++
				}
			} else {
				i++
			}
		case c == '\t' || c >= 0x20:
			b.WriteByte(c)
		}
	}
	return b.String()
}
