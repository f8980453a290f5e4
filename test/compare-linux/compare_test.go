//go:build comparelinux

package comparelinux

// The host half: TestCompareLinux builds the VM's initramfs with the
// nested tier's machinery (its /init, test/nested/vminit; its initramfs
// and manifest packages; prepare.sh's kernel cache), boots it, and
// prints Linux's livepatch next to klp-kvm's.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"text/tabwriter"
	"time"

	"klp-kvm/initramfs"
	"klp-kvm/latency"
	"klp-kvm/test/nested/manifest"
)

// cpuCounts is KLP_COMPARE_CPUS: the VM sizes to measure, one VM each
// (default "1 2").
func cpuCounts(t *testing.T) []int {
	v := strings.Fields(strings.ReplaceAll(os.Getenv("KLP_COMPARE_CPUS"), ",", " "))
	if len(v) == 0 {
		return []int{1, 2}
	}
	var out []int
	for _, f := range v {
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 || n > 8 {
			t.Fatalf("KLP_COMPARE_CPUS=%q: want CPU counts from 1 to 8", os.Getenv("KLP_COMPARE_CPUS"))
		}
		out = append(out, n)
	}
	return out
}

// TestCompareLinux needs KLP_COMPARE_MODULE, the livepatch-sample.ko
// built against the headers of the cached kernel (run.sh builds it).
// KLP_COMPARE_OUT is where compare.txt and compare.json go (default: a
// temporary directory, named in the log); KLP_COMPARE_TIMEOUT bounds the
// VM (default 30m); KLP_COMPARE_CYCLES, KLP_COMPARE_ITERATIONS and
// KLP_COMPARE_COLD and KLP_COMPARE_SIDES reach the VM (see the TestInVM*
// tests); KLP_COMPARE_CPUS is the VM sizes, one VM each (cpuCounts).
func TestCompareLinux(t *testing.T) {
	if os.Getenv("KLP_COMPARE_INVM") == "1" {
		t.Skip("the host half")
	}
	mod := os.Getenv("KLP_COMPARE_MODULE")
	if mod == "" {
		t.Fatal("KLP_COMPARE_MODULE is not set: the livepatch-sample.ko built against the VM kernel's headers; test/compare-linux/run.sh builds it")
	}
	k, err := cachedKernel()
	if err != nil {
		t.Fatalf("%v: run test/nested/prepare.sh (run.sh does)", err)
	}
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Fatal("no qemu-system-x86_64: run test/nested/prepare.sh (run.sh does)")
	}
	root := moduleRoot(t)
	work := t.TempDir()
	out := os.Getenv("KLP_COMPARE_OUT")
	if out == "" {
		out = work
	}

	t0 := time.Now()
	self := filepath.Join(work, "compare-linux.test")
	gobuild(t, root, "test", "-c", "-tags", "comparelinux", "-ldflags=-s -w", "-o", self, "./test/compare-linux")
	klp := filepath.Join(work, "klp-kvm")
	gobuild(t, root, "build", "-ldflags=-s -w", "-o", klp, "./cmd/klp-kvm")
	initBin := filepath.Join(work, "init")
	gobuild(t, root, "build", "-ldflags=-s -w", "-o", initBin, "./test/nested/vminit")
	initrd := filepath.Join(work, "initrd.cpio")
	buildInitramfs(t, k, initBin, self, klp, mod, initrd)
	t.Logf("built the test binary, klp-kvm, /init and the initramfs in %v (kernel %s)", time.Since(t0).Round(time.Millisecond), k.version)

	timeout := 30 * time.Minute
	if s := os.Getenv("KLP_COMPARE_TIMEOUT"); s != "" {
		if timeout, err = time.ParseDuration(s); err != nil {
			t.Fatalf("KLP_COMPARE_TIMEOUT=%q: %v", s, err)
		}
	}
	if dl, ok := t.Deadline(); ok && time.Until(dl)-30*time.Second < timeout {
		timeout = max(time.Until(dl)-30*time.Second, time.Minute)
	}
	all := &collected{}
	flavour := ""
	for _, n := range cpuCounts(t) {
		resultsPath := filepath.Join(work, fmt.Sprintf("results-%d.txt", n))
		start := time.Now()
		why := bootVM(t, qemu, k, initrd, resultsPath, n, timeout)
		t.Logf("the %s VM ran for %v", plural(n, "CPU", "CPUs"), time.Since(start).Round(time.Second))
		raw, err := os.ReadFile(resultsPath)
		if err != nil {
			t.Fatalf("result channel: %v", err)
		}
		res, fl, err := collect(raw)
		if err != nil {
			t.Fatalf("%d CPUs: %v (%s)", n, err, why)
		}
		if why != "" {
			t.Fatal(why)
		}
		flavour = fl
		all.Info = append(all.Info, res.Info...)
		all.Linux = append(all.Linux, res.Linux...)
		all.KlpKvm = append(all.KlpKvm, res.KlpKvm...)
		all.Files = append(all.Files, res.Files...)
	}
	var txt bytes.Buffer
	report(&txt, all, k, flavour)
	t.Logf("\n%s", txt.String())
	fmt.Print(txt.String())
	js, _ := json.MarshalIndent(all, "", "  ")
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{"compare.txt": txt.Bytes(), "compare.json": append(js, '\n')}
	for _, f := range all.Files {
		files[filepath.Base(f.Info)] = f.Data
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(out, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("wrote compare.txt and compare.json to %s", out)
}

// kernel is what test/nested/prepare.sh leaves in its cache.
type kernel struct {
	dir, version, vmlinuz string
	modules               []string // under dir/modules, load order
}

func cachedKernel() (*kernel, error) {
	base := os.Getenv("KLP_KVM_NESTED_CACHE")
	if base == "" {
		c := os.Getenv("XDG_CACHE_HOME")
		if c == "" {
			home, _ := os.UserHomeDir()
			c = filepath.Join(home, ".cache")
		}
		base = filepath.Join(c, "klp-kvm", "nested")
	}
	dir := filepath.Join(base, "current")
	if _, err := os.Stat(filepath.Join(dir, ".complete")); err != nil {
		return nil, fmt.Errorf("no kernel in %s", dir)
	}
	v, _ := os.ReadFile(filepath.Join(dir, "version"))
	load, err := os.ReadFile(filepath.Join(dir, "modules.load"))
	if err != nil {
		return nil, err
	}
	return &kernel{dir: dir, version: strings.TrimSpace(string(v)), vmlinuz: filepath.Join(dir, "vmlinuz"),
		modules: strings.Fields(string(load))}, nil
}

func moduleRoot(t *testing.T) string {
	b, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	return filepath.Dir(strings.TrimSpace(string(b)))
}

// gobuild runs go with args, statically linked (the initramfs has no libc).
func gobuild(t *testing.T, root string, args ...string) {
	cmd := exec.Command("go", args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, b)
	}
}

// buildInitramfs packs /init (vminit), the kvm modules, klp-kvm, this
// test binary and the livepatch module, as the nested tier does, with a
// manifest that runs this binary's in-VM tests.
func buildInitramfs(t *testing.T, k *kernel, initBin, self, klp, mod, out string) {
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
	for _, m := range k.modules {
		must(a.AddFile(path.Join(modDir, m), filepath.Join(k.dir, "modules", m)))
	}
	must(a.AddFile("klp-nested/bin/klp-kvm", klp))
	must(a.AddFile("klp-nested/bin/compare-linux.test", self))
	must(a.AddFile(strings.TrimPrefix(modulePath, "/"), mod))
	env := []string{"KLP_KVM_BIN=/klp-nested/bin/klp-kvm", "KLP_COMPARE_INVM=1"}
	for _, kv := range os.Environ() {
		for _, p := range []string{"KLP_COMPARE_CYCLES=", "KLP_COMPARE_ITERATIONS=", "KLP_COMPARE_COLD=", "KLP_COMPARE_SIDES=", "KLP_COMPARE_MODES=", "KLP_COMPARE_TRACE=", "KLP_COMPARE_WARMUP="} {
			if strings.HasPrefix(kv, p) {
				env = append(env, kv)
			}
		}
	}
	man := manifest.Manifest{Modules: k.modules, ModulesDir: modDir, Env: env, TimeoutSecs: int((25 * time.Minute).Seconds()),
		Tests: []manifest.Binary{{Name: "compare-linux.test", Pkg: "klp-kvm/test/compare-linux", Dir: "/src/test/compare-linux",
			Args: []string{"-test.run=^TestInVM"}}}}
	mj, err := json.MarshalIndent(man, "", "  ")
	must(err)
	must(a.AddBytes(manifest.Path, mj, 0o644))
	f, err := os.Create(out)
	must(err)
	w := bufio.NewWriterSize(f, 1<<20)
	must(a.Write(w))
	must(w.Flush())
	must(f.Close())
}

// qemuArgs are the nested tier's (test/nested's qemuArgs, which lives in
// that package's test file): TCG with SVM emulated, single-threaded, 1
// GiB; but cpus vCPUs; console on stdio, the result channel in a file. The
// nested tier's KLP_KVM_NESTED_CPU and KLP_KVM_NESTED_ACCEL apply.
func qemuArgs(k *kernel, initrd, results string, cpus int) []string {
	accel, cpu := "tcg,thread=single", "max"
	if a := os.Getenv("KLP_KVM_NESTED_ACCEL"); a != "" {
		accel = a
	}
	if c := os.Getenv("KLP_KVM_NESTED_CPU"); c != "" {
		cpu = c
	}
	return []string{"-accel", accel, "-cpu", cpu, "-smp", strconv.Itoa(cpus), "-m", "1024", "-display", "none", "-monitor", "none",
		"-serial", "stdio", "-serial", "file:" + results, "-nic", "none", "-no-reboot",
		"-kernel", k.vmlinuz, "-initrd", initrd, "-append", "console=ttyS0 quiet panic=-1"}
}

// bootVM runs QEMU until it powers off, streaming the console into the
// log; it returns why it was stopped early ("" if it was not): the
// timeout, or no heartbeat from /init for two minutes (a frozen VM).
func bootVM(t *testing.T, qemu string, k *kernel, initrd, results string, cpus int, timeout time.Duration) string {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var beat atomic.Int64
	beat.Store(time.Now().UnixNano())
	var froze atomic.Bool
	done := make(chan struct{})
	defer close(done)
	go func() {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				if time.Since(time.Unix(0, beat.Load())) > 2*time.Minute {
					froze.Store(true)
					cancel()
					return
				}
			}
		}
	}()
	args := qemuArgs(k, initrd, results, cpus)
	cmd := exec.CommandContext(ctx, qemu, args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	t.Logf("booting: %s %s", qemu, strings.Join(args, " "))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		if ev, err := manifest.ParseLine(line); err == nil && ev.Event == manifest.EventAlive {
			beat.Store(time.Now().UnixNano())
			continue
		}
		if strings.Contains(line, marker) {
			continue // in the results, below
		}
		t.Logf("[vm %6.1fs] %s", time.Since(start).Seconds(), strings.Map(func(r rune) rune {
			if r < 0x20 && r != '\t' {
				return -1
			}
			return r
		}, line))
	}
	err = cmd.Wait()
	switch {
	case froze.Load():
		return "the VM froze: no heartbeat from /init for 2 minutes"
	case ctx.Err() == context.DeadlineExceeded:
		return fmt.Sprintf("the VM did not finish within %v", timeout)
	case err != nil:
		return fmt.Sprintf("qemu: %v\n%s", err, stderr.String())
	}
	return ""
}

// collected is everything the VM reported.
type collected struct {
	Info   []string `json:"info"`
	Linux  []result `json:"linux"`
	KlpKvm []result `json:"klp_kvm"`
	Files  []result `json:"-"` // written into the output directory
}

// collect reads the result channel: the control lines of vminit (the KVM
// flavour, each binary's end) and the in-VM tests' result lines. A test
// that failed, or a side without results, is an error carrying the
// binary's output.
func collect(raw []byte) (*collected, string, error) {
	c := &collected{}
	flavour := ""
	var failed []string
	var output strings.Builder
	sc := bufio.NewScanner(bytes.NewReader(raw))
	sc.Buffer(make([]byte, 64<<10), 64<<20) // TestInVMTrace's files
	for sc.Scan() {
		line := sc.Text()
		if ev, err := manifest.ParseLine(line); err == nil {
			switch ev.Event {
			case manifest.EventBoot:
				c.Info = append(c.Info, "VM: "+ev.Info)
			case manifest.EventKVM:
				if ev.OK {
					flavour = ev.Flavour
				} else {
					failed = append(failed, "no /dev/kvm in the VM: "+ev.Error)
				}
			case manifest.EventModule:
				if ev.Error != "" {
					failed = append(failed, "module "+ev.Name+": "+ev.Error)
				}
			case manifest.EventEnd:
				if ev.Exit != 0 || ev.Error != "" {
					failed = append(failed, fmt.Sprintf("%s: exit %d %s", ev.Name, ev.Exit, ev.Error))
				}
			}
			continue
		}
		r, ok, err := parseResult(line)
		if err != nil {
			return nil, "", fmt.Errorf("result line %q: %v", line, err)
		}
		if !ok {
			output.WriteString(strings.ReplaceAll(line, "\x16", "") + "\n")
			continue
		}
		switch r.Kind {
		case "info":
			c.Info = append(c.Info, r.Info)
		case "linux":
			c.Linux = append(c.Linux, r)
		case "klp-kvm":
			c.KlpKvm = append(c.KlpKvm, r)
		case "file":
			c.Files = append(c.Files, r)
		}
	}
	want := func(side string) int {
		if sides()[side] {
			return len(modes)
		}
		return 0
	}
	if len(failed) > 0 || len(c.Linux) != want("linux") || len(c.KlpKvm) != want("klp-kvm") {
		return nil, "", fmt.Errorf("the VM's run failed (%s; %d Linux and %d klp-kvm results of %d modes); its output:\n%s",
			strings.Join(failed, "; "), len(c.Linux), len(c.KlpKvm), len(modes), output.String())
	}
	return c, flavour, nil
}

// dist is a sample's median and max.
type dist struct{ p50, max time.Duration }

func distOf(ns []int64) dist {
	d := make([]time.Duration, len(ns))
	for i, v := range ns {
		d[i] = time.Duration(v)
	}
	return dist{latency.Median(d), latency.Percentile(d, 100)}
}

// report prints the comparison: per VM size and mode, each Linux
// quantity next to klp-kvm's counterpart, and how many times longer
// Linux took (of the medians and of the maxes).
func report(w io.Writer, c *collected, k *kernel, flavour string) {
	fmt.Fprintf(w, "Linux livepatch vs klp-kvm, in the nested tier's QEMU TCG VM (kernel %s, klp-kvm on nested %s)\n", k.version, flavour)
	for _, s := range c.Info {
		fmt.Fprintf(w, "  %s\n", s)
	}
	type cfg struct {
		cpus int
		mode string
	}
	var cfgs []cfg
	seen := map[cfg]bool{}
	for _, r := range append(append([]result(nil), c.Linux...), c.KlpKvm...) {
		for _, m := range modes {
			if x := (cfg{r.CPUs, m}); !seen[x] {
				seen[x] = true
				cfgs = append(cfgs, x)
			}
		}
	}
	sort.SliceStable(cfgs, func(i, j int) bool { return cfgs[i].cpus < cfgs[j].cpus })
	find := func(rs []result, x cfg) result {
		for _, r := range rs {
			if r.Mode == x.mode && r.CPUs == x.cpus {
				return r
			}
		}
		return result{}
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "CPUs\tmode\tquantity: Linux | klp-kvm\tLinux p50\tLinux max\tn\tklp-kvm p50\tklp-kvm max\tn\tratio p50\tratio max\t")
	for _, x := range cfgs {
		l, kk := find(c.Linux, x), find(c.KlpKvm, x)
		var warm latency.Row
		if len(kk.Warm) > 0 {
			warm = kk.Warm[0]
		}
		line := func(what string, lin []int64, kd dist, kn int) {
			ld := distOf(lin)
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%d\t%s\t%s\t\n", x.cpus, x.mode, what, fmtDur(ld.p50), fmtDur(ld.max), len(lin),
				fmtDur(kd.p50), fmtDur(kd.max), kn, ratio(ld.p50, kd.p50), ratio(ld.max, kd.max))
		}
		var unload []int64
		for i := range min(len(l.Disable), len(l.Unload)) {
			unload = append(unload, l.Disable[i]+l.Unload[i])
		}
		line("enable: pre_patch..post_patch | enable", l.KTransition, dist{warm.Total, warm.TotalMax}, warm.Iterations)
		line("disable: pre_unpatch..post_unpatch | disable", l.KDisable, dist{warm.Disable, warm.DisableMax}, warm.Iterations)
		line("load: insmod..transition 0 | Load", l.Enable, distOf(kk.SampleLoad), len(kk.SampleLoad))
		line("unload: enabled=0..rmmod | Unload", unload, distOf(kk.SampleUnload), len(kk.SampleUnload))
	}
	tw.Flush()
	fmt.Fprintln(w, "ratio: Linux's time / klp-kvm's (>1: klp-kvm is faster). enable, disable: Linux's timed in the kernel by the")
	fmt.Fprintln(w, "module's klp callbacks, klp-kvm's end to end (livepatch.Result.Total, `klp-kvm bench --funcs 1`). load, unload:")
	fmt.Fprintln(w, "livepatch-sample on both sides, Linux's insmod and disable+rmmod, klp-kvm's Manager.Load and Unload. Also measured:")
	for _, x := range cfgs {
		l, kk := find(c.Linux, x), find(c.KlpKvm, x)
		fmt.Fprintf(w, "  %s, %s:", plural(x.cpus, "CPU", "CPUs"), x.mode)
		if len(l.Load) > 0 {
			ld, lu, lt, lk, lx := distOf(l.Load), distOf(l.Unload), distOf(l.Transition), distOf(l.KEnable), distOf(l.Disable)
			fmt.Fprintf(w, " Linux finit_module %s (max %s), init..post_patch %s (max %s), finit_module's return..transition 0 %s (max %s), enabled=0..transition 0 %s (max %s), rmmod %s (max %s);",
				fmtDur(ld.p50), fmtDur(ld.max), fmtDur(lk.p50), fmtDur(lk.max), fmtDur(lt.p50), fmtDur(lt.max), fmtDur(lx.p50), fmtDur(lx.max), fmtDur(lu.p50), fmtDur(lu.max))
		}
		if len(kk.Warm) > 0 {
			r := kk.Warm[0]
			var cold []time.Duration
			for _, c := range append(append([]latency.Row(nil), kk.Warm...), kk.Cold...) {
				cold = append(cold, c.Register+c.FirstEnable)
			}
			se := distOf(kk.SampleEnable)
			fmt.Fprintf(w, " klp-kvm pause window %s (p99 %s, max %s: stop %s, check %s, poke %s), bare pause+resume %s (max %s), livepatch-sample's enable in its Load %s (max %s), bench register+first enable %s (max %s)",
				fmtDur(r.Window), fmtDur(r.WindowP99), fmtDur(r.WindowMax), fmtDur(r.Stop), fmtDur(r.Check), fmtDur(r.Poke), fmtDur(r.Bare), fmtDur(r.BareMax),
				fmtDur(se.p50), fmtDur(se.max), fmtDur(latency.Median(cold)), fmtDur(latency.Percentile(cold, 100)))
		}
		fmt.Fprintln(w)
	}
}

func ratio(a, b time.Duration) string {
	if b <= 0 {
		return "-"
	}
	r := float64(a) / float64(b)
	if r >= 10 {
		return fmt.Sprintf("%.0fx", r)
	}
	return fmt.Sprintf("%.1fx", r)
}

// fmtDur prints d with three significant digits: 412 µs, 3.05 ms, 1.02 s.
func fmtDur(d time.Duration) string {
	v, unit := float64(d)/1e3, "µs"
	switch {
	case d >= time.Second:
		v, unit = float64(d)/1e9, "s"
	case d >= time.Millisecond:
		v, unit = float64(d)/1e6, "ms"
	}
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f %s", v, unit)
	case v >= 10:
		return fmt.Sprintf("%.1f %s", v, unit)
	}
	return fmt.Sprintf("%.2f %s", v, unit)
}
