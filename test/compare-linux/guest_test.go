//go:build comparelinux

package comparelinux

// The Linux-guest comparison (run.sh --linux-guest): Linux's own
// livepatch and klp-kvm on the same function of the same Debian guest,
// in the same boot, on the nested tier's kvm_amd. The measuring is
// test/linux's TestLinuxCompare, which the nested tier runs in its
// 1-CPU VM for Linux guests; this side runs the nested tier (or reads
// logs of earlier runs), takes the result lines out of its log and
// prints them side by side.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"klp-kvm/latency"
	"klp-kvm/test/linux"
)

// guestMarker starts TestLinuxCompare's result lines (test/linux's
// compareMarker).
const guestMarker = "@@klp-compare-guest "

// guestResult is one result line of test/linux's TestLinuxCompare.
type guestResult = linux.CompareResult

// linuxSwitch is Linux's enable as user space sees it, without the
// module's load: from finit_module's return until transition reads 0
// (with one CPU Linux completes the transition inside finit_module, so
// this is the read that finds it done).
func linuxSwitch(g guestResult) []int64 {
	var out []int64
	for i := range min(len(g.LinuxEnable), len(g.LinuxLoad)) {
		out = append(out, g.LinuxEnable[i]-g.LinuxLoad[i])
	}
	return out
}

// linuxUnload is Linux's disable and rmmod: from the write of 0 to
// enabled until delete_module returns.
func linuxUnload(g guestResult) []int64 {
	var out []int64
	for i := range min(len(g.LinuxDisable), len(g.LinuxRmmod)) {
		out = append(out, g.LinuxDisable[i]+g.LinuxRmmod[i])
	}
	return out
}

// guestRun is one nested-tier run: its results and what the runner said
// about the L1 VM.
type guestRun struct {
	Name    string        `json:"name"`
	Results []guestResult `json:"results"`
	Nudges  int           `json:"nudges"`  // the runner nudged the 1-CPU VM
	Reboots int           `json:"reboots"` // it froze and was booted again
	Passed  bool          `json:"passed"`  // TestLinuxCompare passed in it
	// The guests' watchdog reports ("soft lockup - CPU#1 stuck for 27s!"),
	// each once: a vCPU that did not run for over 20 s (README.md).
	Lockups []string `json:"lockups,omitempty"`
}

// parseGuestLog reads a nested-tier log (go test -v of test/nested):
// the result lines wherever they sit in it (t.Log indentation), the
// runner's nudges and reboots, and whether the test passed.
func parseGuestLog(name string, raw []byte) (guestRun, error) {
	r := guestRun{Name: name}
	seen := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(raw))
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.Contains(line, "nudging the VM's serial line") {
			r.Nudges++
		}
		if strings.Contains(line, "booting the VM once more") {
			r.Reboots++
		}
		if i := strings.Index(line, "soft lockup - "); i >= 0 {
			// The guest's timestamp makes each report unique.
			j := strings.LastIndex(line[:i], "[")
			if l := strings.TrimSpace(line[max(j, 0):]); !seen[l] {
				seen[l] = true
				r.Lockups = append(r.Lockups, l)
			}
		}
		if strings.Contains(line, "--- PASS: TestNestedKVM/") && strings.Contains(line, "/TestLinuxCompare ") {
			r.Passed = true
		}
		i := strings.Index(line, guestMarker)
		if i < 0 {
			continue
		}
		// The nested tier's log has each line twice: streamed from the
		// VM's console, and again in the in-VM test's summary.
		js := strings.TrimSpace(line[i+len(guestMarker):])
		if seen[js] {
			continue
		}
		seen[js] = true
		var g guestResult
		if err := json.Unmarshal([]byte(js), &g); err != nil {
			return r, fmt.Errorf("%s: result line %.80q...: %v", name, line[i:], err)
		}
		if g.CPUs < 1 || g.Mode == "" || len(g.LinuxEnable) == 0 || len(g.KlpEnable) == 0 {
			return r, fmt.Errorf("%s: incomplete result line (%d vCPUs, mode %q, %d Linux and %d klp-kvm samples)",
				name, g.CPUs, g.Mode, len(g.LinuxEnable), len(g.KlpEnable))
		}
		r.Results = append(r.Results, g)
	}
	if err := sc.Err(); err != nil {
		return r, fmt.Errorf("%s: %v", name, err)
	}
	if len(r.Results) == 0 {
		return r, fmt.Errorf("%s: no result lines (%s... in the log): did TestLinuxCompare run?", name, strings.TrimSpace(guestMarker))
	}
	return r, nil
}

// guestRow is one line of the table: a Linux quantity, klp-kvm's
// counterpart.
type guestRow struct {
	what       string
	linux, klp func(guestResult) []int64
}

var guestRows = []guestRow{
	{"enable, kernel's log: enabling patch..patching complete | enable (API request..reply)",
		func(g guestResult) []int64 { return g.LinuxKEnable }, func(g guestResult) []int64 { return g.KlpEnable }},
	{"enable, kernel's log | the transition (Result.Total)",
		func(g guestResult) []int64 { return g.LinuxKEnable }, func(g guestResult) []int64 { return g.KlpEnableTransition }},
	{"enable, user space: finit_module's return..transition 0 | enable (API)",
		linuxSwitch, func(g guestResult) []int64 { return g.KlpEnable }},
	{"disable, kernel's log: initializing..unpatching complete | disable (API)",
		func(g guestResult) []int64 { return g.LinuxKDisable }, func(g guestResult) []int64 { return g.KlpDisable }},
	{"disable, kernel's log | the transition (Result.Total)",
		func(g guestResult) []int64 { return g.LinuxKDisable }, func(g guestResult) []int64 { return g.KlpDisableTransition }},
	{"disable, user space: enabled=0..transition done | disable (API)",
		func(g guestResult) []int64 { return g.LinuxDisable }, func(g guestResult) []int64 { return g.KlpDisable }},
	{"load: insmod..transition 0 | load (POST /patches)",
		func(g guestResult) []int64 { return g.LinuxEnable }, func(g guestResult) []int64 { return g.KlpLoads }},
	{"unload: enabled=0..rmmod done | unload (API)",
		linuxUnload, func(g guestResult) []int64 { return g.KlpUnloads }},
}

// reportGuest prints one run's table: per vCPU count and mode, each
// Linux quantity next to klp-kvm's, and the ratios (Linux's time over
// klp-kvm's) of the medians and of the maxes; then the pause windows
// and the rest.
func reportGuest(w io.Writer, run guestRun) {
	res := append([]guestResult(nil), run.Results...)
	sort.SliceStable(res, func(i, j int) bool { return res[i].CPUs < res[j].CPUs })
	kernel := "?"
	if len(res) > 0 {
		kernel = res[0].Kernel
	}
	fmt.Fprintf(w, "%s: Linux livepatch vs klp-kvm on the same function of the same Debian guest (%s, 256 MiB), one boot per vCPU count, on nested kvm_amd in the nested tier's 1-CPU QEMU TCG VM\n",
		run.Name, kernel)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "vCPUs\tmode\tquantity: Linux | klp-kvm\tLinux p50\tLinux max\tn\tklp-kvm p50\tklp-kvm max\tn\tratio p50\tratio max\t")
	for _, g := range res {
		for _, row := range guestRows {
			l, k := row.linux(g), row.klp(g)
			if len(l) == 0 || len(k) == 0 {
				continue // no kernel-log view in that boot, or no load cycles in that run
			}
			ld, kd := distOf(l), distOf(k)
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%d\t%s\t%s\t\n", g.CPUs, g.Mode, row.what,
				fmtDur(ld.p50), fmtDur(ld.max), len(l), fmtDur(kd.p50), fmtDur(kd.max), len(k), guestRatio(ld.p50, kd.p50), guestRatio(ld.max, kd.max))
		}
	}
	tw.Flush()
	fmt.Fprintln(w, "ratio: Linux's time / klp-kvm's (>1: klp-kvm is faster). Linux: livepatch-sample.ko loaded inside the guest, timed there")
	fmt.Fprintln(w, "(user space) and by its kernel log; klp-kvm: the same .ko loaded by the host through the API, disabled and enabled. Also:")
	for _, g := range res {
		ew, dw, lw := distOf(g.KlpEnableWindow), distOf(g.KlpDisableWindow), distOf(g.KlpLoadWindow)
		ll, lr := distOf(g.LinuxLoad), distOf(g.LinuxRmmod)
		fmt.Fprintf(w, "  %s, %s: klp-kvm pause window enable %s (max %s), disable %s (max %s), load %s (max %s); %d switch attempts for %d switches; the mode's first load %s. Linux finit_module %s (max %s), rmmod %s (max %s)\n",
			plural(g.CPUs, "vCPU", "vCPUs"), g.Mode, fmtDur(ew.p50), fmtDur(ew.max), fmtDur(dw.p50), fmtDur(dw.max), fmtDur(lw.p50), fmtDur(lw.max),
			g.KlpAttempts, len(g.KlpEnable)+len(g.KlpDisable), fmtDur(time.Duration(g.KlpLoad)), fmtDur(ll.p50), fmtDur(ll.max), fmtDur(lr.p50), fmtDur(lr.max))
	}
	fmt.Fprintf(w, "  the L1 VM: %d nudge line(s), %d reboot(s) after a freeze; TestLinuxCompare passed: %v\n", run.Nudges, run.Reboots, run.Passed)
	for _, l := range run.Lockups {
		fmt.Fprintf(w, "  the guest's watchdog: %s\n", l)
	}
}

// reportGuestRuns prints, for more than one run, each row over the runs:
// the median of the runs' medians and of their maxes (latency.Median:
// the upper of two), the ratio of
// those, and each run's own ratios.
func reportGuestRuns(w io.Writer, runs []guestRun) {
	if len(runs) < 2 {
		return
	}
	type key struct {
		cpus int
		mode string
	}
	var keys []key
	seen := map[key]bool{}
	for _, r := range runs {
		for _, g := range r.Results {
			if k := (key{g.CPUs, g.Mode}); !seen[k] {
				seen[k] = true
				keys = append(keys, k)
			}
		}
	}
	sort.SliceStable(keys, func(i, j int) bool { return keys[i].cpus < keys[j].cpus })
	fmt.Fprintf(w, "Over %d runs: the median of the runs' medians (p50) and of their maxes; the ratios of those, then each run's own\n", len(runs))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "vCPUs\tmode\tquantity: Linux | klp-kvm\tLinux p50\tLinux max\tklp-kvm p50\tklp-kvm max\tratio p50\tratio max\tratio p50 per run\tratio max per run\t")
	for _, k := range keys {
		for _, row := range guestRows {
			var lp, lm, kp, km []time.Duration
			var rp, rm []string
			for _, r := range runs {
				for _, g := range r.Results {
					l, kk := row.linux(g), row.klp(g)
					if g.CPUs != k.cpus || g.Mode != k.mode || len(l) == 0 || len(kk) == 0 {
						continue
					}
					ld, kd := distOf(l), distOf(kk)
					lp, lm, kp, km = append(lp, ld.p50), append(lm, ld.max), append(kp, kd.p50), append(km, kd.max)
					rp, rm = append(rp, guestRatio(ld.p50, kd.p50)), append(rm, guestRatio(ld.max, kd.max))
				}
			}
			if len(lp) == 0 {
				continue
			}
			med := func(d []time.Duration) time.Duration { return latency.Median(d) }
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", k.cpus, k.mode, row.what,
				fmtDur(med(lp)), fmtDur(med(lm)), fmtDur(med(kp)), fmtDur(med(km)),
				guestRatio(med(lp), med(kp)), guestRatio(med(lm), med(km)), strings.Join(rp, " "), strings.Join(rm, " "))
		}
	}
	tw.Flush()
}

// TestCompareLinuxGuest runs the nested tier's TestLinuxCompare
// KLP_COMPARE_RUNS times (default 1), each a fresh L1 VM, and prints each
// run's comparison (OUT/guest-compare.txt, the samples in
// guest-compare.json, each run's log in guest-run-N.log). With
// KLP_COMPARE_GUEST_LOGS (paths of such logs, space-separated) it only
// reads them. KLP_E2E_LINUX_COMPARE_CYCLES (default 15) reaches the VM.
func TestCompareLinuxGuest(t *testing.T) {
	if os.Getenv("KLP_COMPARE_INVM") == "1" {
		t.Skip("the host half")
	}
	out := os.Getenv("KLP_COMPARE_OUT")
	if out == "" {
		out = t.TempDir()
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	var runs []guestRun
	if logs := strings.Fields(os.Getenv("KLP_COMPARE_GUEST_LOGS")); len(logs) > 0 {
		for _, p := range logs {
			raw, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			r, err := parseGuestLog(p, raw)
			if err != nil {
				t.Fatal(err)
			}
			runs = append(runs, r)
		}
	} else {
		root := moduleRoot(t)
		for i := 1; i <= envInt("KLP_COMPARE_RUNS", 1); i++ {
			logPath := filepath.Join(out, fmt.Sprintf("guest-run-%d.log", i))
			start := time.Now()
			err := runNestedCompare(root, logPath)
			raw, rerr := os.ReadFile(logPath)
			if rerr != nil {
				t.Fatal(rerr)
			}
			t.Logf("run %d: the nested tier ran for %v (log %s)", i, time.Since(start).Round(time.Second), logPath)
			if err != nil {
				t.Fatalf("run %d: the nested tier failed: %v\n%s", i, err, tailLines(string(raw), 80))
			}
			r, err := parseGuestLog(fmt.Sprintf("run %d", i), raw)
			if err != nil {
				t.Fatal(err)
			}
			runs = append(runs, r)
		}
	}
	var txt bytes.Buffer
	for _, r := range runs {
		reportGuest(&txt, r)
		txt.WriteString("\n")
	}
	reportGuestRuns(&txt, runs)
	fmt.Print(txt.String())
	js, _ := json.MarshalIndent(runs, "", "  ")
	for name, b := range map[string][]byte{"guest-compare.txt": txt.Bytes(), "guest-compare.json": append(js, '\n')} {
		if err := os.WriteFile(filepath.Join(out, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("wrote guest-compare.txt and guest-compare.json to %s", out)
}

// runNestedCompare runs the nested tier for TestLinuxCompare alone: only
// the nested tier, only test/linux (its 1-CPU VM), with the comparison
// turned on and the time limits it needs.
func runNestedCompare(root, logPath string) error {
	f, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer f.Close()
	cmd := exec.Command("go", "test", "-v", "-count=1", "-timeout", "60m", "-run", "^TestNestedKVM$", "./test/nested/")
	cmd.Dir = root
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), "KLP_KVM_NESTED_DIRECT=0", "KLP_KVM_NESTED_PKGS=./test/linux", "KLP_KVM_NESTED_RUN=^TestLinuxCompare$",
		"KLP_E2E_LINUX_COMPARE=1", "KLP_KVM_NESTED_TIMEOUT=50m", "KLP_KVM_NESTED_BIN_TIMEOUT=45m")
	return cmd.Run()
}

func tailLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// guestRatio is ratio with two digits below 1 (klp-kvm slower), where
// ratio's one would print 0.0x.
func guestRatio(a, b time.Duration) string {
	if b > 0 && a < b {
		return fmt.Sprintf("%.2fx", float64(a)/float64(b))
	}
	return ratio(a, b)
}
