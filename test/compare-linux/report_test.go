//go:build comparelinux

package comparelinux

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"klp-kvm/latency"
	"klp-kvm/test/nested/manifest"
)

// TestReport: a result channel as the VM writes it (control lines, test
// output, result lines) gives the comparison table, with the ratios of
// the medians and of the maxes; a failed binary is an error that carries
// its output.
func TestReport(t *testing.T) {
	ms := func(v ...int) []int64 {
		var out []int64
		for _, x := range v {
			out = append(out, int64(time.Duration(x)*time.Millisecond))
		}
		return out
	}
	row := latency.Row{Engine: "kvm", CPUs: 2, Funcs: 1, Iterations: 100, Total: 2 * time.Millisecond, TotalMax: 10 * time.Millisecond,
		Disable: time.Millisecond, DisableMax: 5 * time.Millisecond, Register: 90 * time.Millisecond, FirstEnable: 10 * time.Millisecond}
	var ch bytes.Buffer
	ch.WriteString(manifest.Event{Event: manifest.EventKVM, OK: true, Flavour: "kvm_amd"}.Line() + "\n")
	ch.WriteString(manifest.Event{Event: manifest.EventBegin, Name: "compare-linux.test"}.Line() + "\n")
	ch.WriteString("\x16=== RUN   TestInVMLinuxLivepatch\n")
	for _, m := range modes {
		ch.WriteString(result{Kind: "linux", Mode: m, CPUs: 2, Load: ms(5, 6), Enable: ms(1000, 1200, 1100), Transition: ms(990, 1190, 1000),
			Disable: ms(1000, 2000, 1500), Unload: ms(3, 4, 4), KTransition: ms(1000, 1190, 1010), KEnable: ms(1001, 1191, 1011),
			KDisable: ms(1000, 2000, 1500)}.line() + "\n")
		ch.WriteString(result{Kind: "klp-kvm", Mode: m, CPUs: 2, Warm: []latency.Row{row}, Cold: []latency.Row{row, row},
			SampleLoad: ms(100, 100, 50), SampleEnable: ms(3, 4, 5), SampleUnload: ms(2, 2, 4)}.line() + "\n")
	}
	good := ch.String() + manifest.Event{Event: manifest.EventEnd, Name: "compare-linux.test"}.Line() + "\n"
	c, flavour, err := collect([]byte(good))
	if err != nil || flavour != "kvm_amd" {
		t.Fatalf("collect: %v, flavour %q", err, flavour)
	}
	var out bytes.Buffer
	report(&out, c, &kernel{version: "6.1.0-57-amd64"}, flavour)
	txt := out.String()
	// pre_patch..post_patch p50 1010 ms / enable 2 ms = 505x; max 1190 /
	// 10 = 119x; insmod..0 p50 1100 / Load 100 = 11x, max 1200 / 100 =
	// 12x; disable 1500/1 = 1500x, 2000/5 = 400x; disable+rmmod p50
	// 1504 / Unload 2 = 752x, max 2004 / 4 = 501x.
	for _, want := range []string{"kvm_amd", "6.1.0-57-amd64", "505x", "119x", "11x", "12x", "1500x", "400x", "752x", "501x",
		"idle", "busy", "1.01 s", "2.00 ms"} {
		if !strings.Contains(txt, want) {
			t.Errorf("report has no %q:\n%s", want, txt)
		}
	}
	bad := ch.String() + "--- FAIL: TestInVMKlpKvmBench\n" + manifest.Event{Event: manifest.EventEnd, Name: "compare-linux.test", Exit: 1}.Line() + "\n"
	if _, _, err := collect([]byte(bad)); err == nil || !strings.Contains(err.Error(), "--- FAIL: TestInVMKlpKvmBench") {
		t.Errorf("a failed run: %v", err)
	}
}

// TestGuestReport: result lines inside a nested-tier log (t.Log's
// indentation, other output around them) give the Linux-guest table
// with the ratios of the medians and the maxes; a log without them, or
// with a broken one, is an error naming the problem.
func TestGuestReport(t *testing.T) {
	ms := func(v ...int) []int64 {
		var out []int64
		for _, x := range v {
			out = append(out, int64(time.Duration(x)*time.Millisecond))
		}
		return out
	}
	var log strings.Builder
	var summary []string
	log.WriteString("=== RUN   TestNestedKVM\n    nested_test.go:611: no heartbeat for 16s: nudging the VM's serial line (1)\n")
	for _, cpus := range []int{2, 1} {
		for _, mode := range []string{"idle", "busy"} {
			g := guestResult{CPUs: cpus, Mode: mode, Kernel: "6.1.0-57-amd64",
				LinuxEnable: ms(1000, 1200, 1100), LinuxDisable: ms(900, 2000, 1000), LinuxRmmod: ms(3, 3, 4),
				LinuxKEnable: ms(990, 1190, 1090), LinuxKDisable: ms(800, 1900, 990),
				LinuxLoad: ms(5, 6, 7),
				KlpLoad:   int64(80 * time.Millisecond), KlpEnable: ms(10, 20, 12), KlpEnableWindow: ms(5, 9, 6),
				KlpDisable: ms(8, 40, 10), KlpDisableWindow: ms(4, 8, 5), KlpAttempts: 6,
				KlpLoads: ms(50, 60, 100), KlpLoadWindow: ms(5, 5, 5), KlpUnloads: ms(20, 30, 25)}
			if cpus == 1 && mode == "idle" {
				g.LinuxKDisable = ms(2, 1, 3) // Linux faster: 2/10 = 0.20x, 3/40 = 0.07x
			}
			b, _ := json.Marshal(g)
			fmt.Fprintf(&log, "    nested_test.go:641: [vm 46.28s]     compare_test.go:510: %s%s\n", guestMarker, b)
			summary = append(summary, fmt.Sprintf("            compare_test.go:510: %s%s\n", guestMarker, b))
		}
	}
	// The in-VM test's summary repeats every line.
	log.WriteString(strings.Join(summary, ""))
	log.WriteString("    nested_test.go:641: [vm 328.63s]     boot_test.go:99: console: [  202.137742] watchdog: BUG: soft lockup - CPU#1 stuck for 27s! [klp-lcmp:196]\n")
	log.WriteString("            [  202.137742] watchdog: BUG: soft lockup - CPU#1 stuck for 27s! [klp-lcmp:196]\n") // the same, from the guest's dmesg
	log.WriteString("        --- PASS: TestNestedKVM/nested/kvm_amd_1cpu/test-linux/TestLinuxCompare (300.00s)\n")
	run, err := parseGuestLog("run 1", []byte(log.String()))
	if err != nil {
		t.Fatal(err)
	}
	if len(run.Results) != 4 || !run.Passed || run.Nudges != 1 || len(run.Lockups) != 1 {
		t.Fatalf("parsed %d results, passed %v, %d nudges, lockups %q; want 4, true, 1, one", len(run.Results), run.Passed, run.Nudges, run.Lockups)
	}
	var out bytes.Buffer
	reportGuest(&out, run)
	txt := out.String()
	// enable: kernel's log 1090/12 = 91x, max 1190/20 = 60x; user space
	// (enable - load: 995, 1194, 1093) 1093/12 = 91x, 1194/20 = 60x;
	// disable 1000/10 = 100x, max 2000/40 = 50x; kernel's 990/10 = 99x,
	// 1900/40 = 48x; load 1100/60 = 18x, 1200/100 = 12x; unload
	// (disable + rmmod: 903, 2003, 1004) 1004/25 = 40x, 2003/30 = 67x.
	for _, want := range []string{"6.1.0-57-amd64", "91x", "60x", "100x", "50x", "99x", "48x", "18x", "12x", "40x", "67x",
		"1.09 s", "12.0 ms", "2.00 s", "0.20x", "0.07x", "pause window enable 6.00 ms (max 9.00 ms)", "load 5.00 ms", "1 nudge line(s)", "passed: true",
		"the guest's watchdog: [  202.137742] watchdog: BUG: soft lockup - CPU#1 stuck for 27s! [klp-lcmp:196]"} {
		if !strings.Contains(txt, want) {
			t.Errorf("report has no %q:\n%s", want, txt)
		}
	}
	if i, j := strings.Index(txt, " 1  idle "), strings.Index(txt, " 2  idle "); i < 0 || j < 0 || i > j {
		t.Errorf("the 1-vCPU rows do not come first:\n%s", txt)
	}
	// Over runs: the second run's klp-kvm enables twice as long; the
	// median of two runs is the upper one (latency.Median).
	run2 := run
	run2.Results = nil
	for _, g := range run.Results {
		g.KlpEnable = append([]int64(nil), g.KlpEnable...)
		for i := range g.KlpEnable {
			g.KlpEnable[i] *= 2
		}
		run2.Results = append(run2.Results, g)
	}
	out.Reset()
	reportGuestRuns(&out, []guestRun{run, run2})
	txt = out.String()
	// enable, kernel's log: Linux 1.09 s; klp-kvm 24 ms: 45x, per run
	// 91x 45x; max 1.19 s / 40 ms: 30x, per run 60x 30x.
	for _, want := range []string{"Over 2 runs", "24.0 ms", "45x", "91x 45x", "30x", "60x 30x"} {
		if !strings.Contains(txt, want) {
			t.Errorf("the runs' report has no %q:\n%s", want, txt)
		}
	}
	out.Reset()
	if reportGuestRuns(&out, []guestRun{run}); out.Len() != 0 {
		t.Errorf("one run has a runs' report:\n%s", out.String())
	}
	if _, err := parseGuestLog("empty", []byte("=== RUN TestNestedKVM\n--- FAIL\n")); err == nil || !strings.Contains(err.Error(), "no result lines") {
		t.Errorf("a log without results: %v", err)
	}
	if _, err := parseGuestLog("broken", []byte("x: "+guestMarker+"{\"cpus\":1,\n")); err == nil || !strings.Contains(err.Error(), "result line") {
		t.Errorf("a broken result line: %v", err)
	}
	if _, err := parseGuestLog("partial", []byte(guestMarker+`{"cpus":1,"mode":"idle"}`+"\n")); err == nil || !strings.Contains(err.Error(), "incomplete") {
		t.Errorf("a result without samples: %v", err)
	}
}
