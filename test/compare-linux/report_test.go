//go:build comparelinux

package comparelinux

import (
	"bytes"
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
