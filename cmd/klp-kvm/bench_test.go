package main

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"klp-kvm/latency"
)

func TestBenchCommand(t *testing.T) {
	dir := t.TempDir()
	var out, errb bytes.Buffer
	code := dispatch([]string{"bench", "--engine", "emu", "--cpus", "1", "--funcs", "1,10", "--iterations", "3", "--out", dir, "--json"}, &out, &errb)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	var rows []latency.Row
	if err := json.Unmarshal(out.Bytes(), &rows); err != nil {
		t.Fatalf("--json: %v\n%s", err, out.String())
	}
	if len(rows) != 2 || rows[0].Funcs != 1 || rows[1].Funcs != 10 || rows[0].CPUs != 1 || rows[0].Engine != "emu" {
		t.Fatalf("rows %+v", rows)
	}
	for _, r := range rows {
		if r.Window <= 0 || r.Bare <= 0 || r.Total < r.Window || r.Iterations != 3 {
			t.Errorf("implausible row %+v", r)
		}
		for _, q := range [][3]time.Duration{{r.Bare, r.BareP99, r.BareMax}, {r.Window, r.WindowP99, r.WindowMax},
			{r.Total, r.TotalP99, r.TotalMax}, {r.Disable, r.DisableP99, r.DisableMax}} {
			if q[0] <= 0 || q[1] < q[0] || q[2] < q[1] {
				t.Errorf("p50 %v, p99 %v, max %v: not 0 < p50 <= p99 <= max in %+v", q[0], q[1], q[2], r)
			}
		}
		if r.FirstEnable < r.FirstWindow || r.FirstWindow <= 0 || r.Register <= 0 {
			t.Errorf("first enable %v (window %v), register %v in %+v", r.FirstEnable, r.FirstWindow, r.Register, r)
		}
	}
	// Not a terminal: a plain line per boot and point.
	for _, want := range []string{"klp-kvm bench: booting 1 vCPU\n", "point 1/2: 1 vCPU, 1 function, 1+3 cycles\n", "point 2/2: 1 vCPU, 10 functions"} {
		if !strings.Contains(errb.String(), want) {
			t.Errorf("stderr has no %q:\n%s", want, errb.String())
		}
	}
	if strings.Contains(errb.String(), "\r") {
		t.Errorf("progress redrawn on a non-terminal:\n%q", errb.String())
	}
	txt, err := os.ReadFile(filepath.Join(dir, "bench.txt"))
	if err != nil || !strings.Contains(string(txt), "window/bare") || !strings.Contains(string(txt), "p50 / p99 / max") {
		t.Fatalf("bench.txt: %v\n%s", err, txt)
	}
	if _, err := os.Stat(filepath.Join(dir, "bench.json")); err != nil {
		t.Fatal(err)
	}
	// bench.svg: well-formed, with the series of the one vCPU count.
	svg, err := os.ReadFile(filepath.Join(dir, "bench.svg"))
	if err != nil {
		t.Fatal(err)
	}
	series := map[string]bool{}
	d := xml.NewDecoder(bytes.NewReader(svg))
	for {
		tok, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("bench.svg is not well-formed: %v", err)
		}
		if se, ok := tok.(xml.StartElement); ok {
			attr := map[string]string{}
			for _, a := range se.Attr {
				attr[a.Name.Local] = a.Value
			}
			if attr["class"] == "series" {
				series[attr["data-quantity"]+"/"+attr["data-stat"]+"/"+attr["data-cpus"]] = true
			}
		}
	}
	for _, k := range []string{"pause_window/p50/1", "bare_pause_resume/p50/1", "enable/p50/1", "enable/max/1", "first_enable/first/1"} {
		if !series[k] {
			t.Errorf("bench.svg has no series %s (has %v)", k, series)
		}
	}
	for _, bad := range [][]string{{"bench", "--cpus", "0"}, {"bench", "--funcs", "2000"}, {"bench", "--iterations", "0"}} {
		if code := dispatch(bad, &out, &errb); code != 2 {
			t.Errorf("%v: exit %d, want 2", bad, code)
		}
	}
}

// TestBenchProgressTTY: on a terminal the progress is one bar redrawn in
// place (carriage return, erase line), cleared at the end.
func TestBenchProgressTTY(t *testing.T) {
	master, slave, err := openPTY()
	if err != nil {
		t.Skipf("no pseudo-terminal: %v", err)
	}
	defer master.Close()
	got := make(chan string)
	go func() {
		b, _ := io.ReadAll(master) // ends with EIO once the slave is closed
		got <- string(b)
	}()
	var out bytes.Buffer
	code := cmdBench([]string{"--engine", "emu", "--cpus", "1", "--funcs", "1", "--iterations", "2"}, &out, slave)
	slave.Close()
	screen := <-got
	if code != 0 {
		t.Fatalf("exit %d: %q", code, screen)
	}
	for _, want := range []string{"\r\x1b[K[", "booting 1 vCPU", "point 1/1: 1 vCPU, 1 function", "%"} {
		if !strings.Contains(screen, want) {
			t.Errorf("terminal output has no %q: %q", want, screen)
		}
	}
	if !strings.HasSuffix(screen, "\r\x1b[K") {
		t.Errorf("the bar is not cleared at the end: %q", screen)
	}
	if strings.Contains(screen, "klp-kvm bench: point") {
		t.Errorf("plain progress lines on a terminal: %q", screen)
	}
}

// openPTY opens a pseudo-terminal pair (posix_openpt, unlockpt, ptsname).
func openPTY() (master, slave *os.File, err error) {
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, nil, err
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		m.Close()
		return nil, nil, err
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		m.Close()
		return nil, nil, err
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		m.Close()
		return nil, nil, err
	}
	return m, s, nil
}

func TestProgressLine(t *testing.T) {
	s := latency.Progress{Point: 2, Points: 4, CPUs: 2, Funcs: 100, Phase: latency.PhaseCycles, Cycle: 5, Cycles: 11}
	line := progressLine(s, 75*time.Second, 120)
	// 2*11+5 of 44 cycles: 61%
	for _, want := range []string{"[", "]", " 61%", "point 3/4: 2 vCPUs, 100 functions, cycle 5/11", "1:15"} {
		if !strings.Contains(line, want) {
			t.Errorf("%q has no %q", line, want)
		}
	}
	if n := strings.Count(line, "#"); n != 24 { // 61% of a 40-column bar
		t.Errorf("%d of 40 columns filled in %q", n, line)
	}
	for _, w := range []int{20, 40, 60, 200} {
		if l := progressLine(s, time.Second, w); len([]rune(l)) > w {
			t.Errorf("width %d: %d columns: %q", w, len([]rune(l)), l)
		}
	}
	done := progressLine(latency.Progress{Point: 4, Points: 4, Phase: latency.PhaseDone, Cycles: 11}, time.Second, 80)
	if !strings.Contains(done, "100%") || strings.Contains(done, ".]") {
		t.Errorf("done: %q", done)
	}
	boot := progressLine(latency.Progress{Points: 4, CPUs: 1, Phase: latency.PhaseBoot, Cycles: 11}, 0, 80)
	if !strings.Contains(boot, "  0%") || !strings.Contains(boot, "booting 1 vCPU") {
		t.Errorf("boot: %q", boot)
	}
}
