package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/term"

	"klp-kvm/latency"
)

const benchUsage = "usage: klp-kvm bench [--engine E] [--cpus LIST] [--funcs LIST] [--iterations N] [--cmdline S] [--out DIR] [--json]"

// cmdBench measures patch switch latency on the embedded guest:
// klp-kvm bench [--engine E] [--cpus LIST] [--funcs LIST] [--iterations N] [--cmdline S] [--out DIR] [--json]
func cmdBench(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	engineName := fs.String("engine", "auto", "execution engine: auto, kvm or emu")
	cpuList := fs.String("cpus", "1,2,4", "comma-separated vCPU counts")
	funcList := fs.String("funcs", "1,10,100,1024", "comma-separated patch sizes (1..1024 functions)")
	iters := fs.Int("iterations", 100, "measured enable/disable cycles per point, after the first (cold) one")
	cmdline := fs.String("cmdline", "", "guest kernel command line (klp.workers=0: idle workers; klp.worker_sleep_ms=0: busy ones)")
	out := fs.String("out", "", "directory to write bench.json, bench.txt and bench.svg to")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cpus, err := intList(*cpuList, 1, 64)
	if err != nil {
		fmt.Fprintf(stderr, "klp-kvm bench: --cpus: %v\n", err)
		return 2
	}
	funcs, err := intList(*funcList, 1, 1024)
	if err != nil {
		fmt.Fprintf(stderr, "klp-kvm bench: --funcs: %v\n", err)
		return 2
	}
	if *iters < 1 || fs.NArg() != 0 {
		fmt.Fprintln(stderr, benchUsage)
		return 2
	}
	prog := newBenchProgress(stderr)
	rows, err := latency.Run(latency.Config{Engine: *engineName, CPUs: cpus, Funcs: funcs, Iterations: *iters,
		Cmdline: *cmdline, Progress: prog.update})
	prog.finish()
	if err != nil {
		fmt.Fprintf(stderr, "klp-kvm bench: %v\n", err)
		return 1
	}
	if *out != "" {
		if err := writeBench(*out, rows); err != nil {
			fmt.Fprintf(stderr, "klp-kvm bench: %v\n", err)
			return 1
		}
	}
	if *asJSON {
		return printJSON(stdout, rows)
	}
	benchTable(stdout, rows)
	return 0
}

func intList(s string, lo, hi int) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < lo || n > hi {
			return nil, fmt.Errorf("%q: want numbers from %d to %d", f, lo, hi)
		}
		out = append(out, n)
	}
	return out, nil
}

// benchTable prints one line per point: of each quantity the median, the
// p99 and the max (µs), then the first (cold) enable and the register.
func benchTable(w io.Writer, rows []latency.Row) {
	fmt.Fprintln(w, "µs; each cell p50 / p99 / max over the measured cycles (p99 is the max below 100 cycles); first enable: the cold one before them, which loads the image")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "engine\tvCPUs\tfuncs\tbare pause+resume\tpause window\twindow/bare\tstop\tcheck\tpoke\tenable (end to end)\tdisable (end to end)\tfirst enable\tregister\t")
	us := func(d time.Duration) int64 { return d.Microseconds() }
	three := func(p50, p99, max time.Duration) string {
		return fmt.Sprintf("%d / %d / %d", us(p50), us(p99), us(max))
	}
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%.2f\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t\n", r.Engine, r.CPUs, r.Funcs,
			three(r.Bare, r.BareP99, r.BareMax), three(r.Window, r.WindowP99, r.WindowMax), r.Ratio,
			three(r.Stop, r.StopP99, r.StopMax), three(r.Check, r.CheckP99, r.CheckMax), three(r.Poke, r.PokeP99, r.PokeMax),
			three(r.Total, r.TotalP99, r.TotalMax), three(r.Disable, r.DisableP99, r.DisableMax), us(r.FirstEnable), us(r.Register))
	}
	tw.Flush()
}

func writeBench(dir string, rows []latency.Row) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(rows, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "bench.json"), append(b, '\n'), 0o644); err != nil {
		return err
	}
	for name, write := range map[string]func(io.Writer) error{
		"bench.txt": func(w io.Writer) error { benchTable(w, rows); return nil },
		"bench.svg": func(w io.Writer) error { return latency.WriteSVG(w, rows) },
	} {
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			return err
		}
		err = write(f)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	return nil
}

// benchProgress shows a campaign's progress on stderr: a bar redrawn in
// place when stderr is a terminal, else a plain line per boot and point.
type benchProgress struct {
	w     io.Writer
	tty   bool
	width int // the terminal's columns
	start time.Time
	last  time.Time // the bar's last redraw
	drawn bool      // a bar is on the screen
}

func newBenchProgress(w io.Writer) *benchProgress {
	p := &benchProgress{w: w, start: time.Now(), width: 80}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		p.tty = true
		if cols, _, err := term.GetSize(int(f.Fd())); err == nil && cols > 20 {
			p.width = cols
		}
	}
	return p
}

// update is latency.Config.Progress.
func (p *benchProgress) update(s latency.Progress) {
	if !p.tty {
		switch s.Phase {
		case latency.PhaseBoot:
			fmt.Fprintf(p.w, "klp-kvm bench: booting %s\n", plural(s.CPUs, "vCPU", "vCPUs"))
		case latency.PhaseRegister:
			fmt.Fprintf(p.w, "klp-kvm bench: point %d/%d: %s, %s, 1+%d cycles\n", s.Point+1, s.Points,
				plural(s.CPUs, "vCPU", "vCPUs"), plural(s.Funcs, "function", "functions"), s.Cycles-1)
		}
		return
	}
	// Redraw at most 20 times a second, and at every change of phase.
	if s.Phase == latency.PhaseCycles && time.Since(p.last) < 50*time.Millisecond {
		return
	}
	p.last = time.Now()
	fmt.Fprintf(p.w, "\r\x1b[K%s", progressLine(s, time.Since(p.start), p.width))
	p.drawn = true
}

// finish clears the bar.
func (p *benchProgress) finish() {
	if p.drawn {
		fmt.Fprint(p.w, "\r\x1b[K")
	}
}

// progressLine is the bar's text, at most width columns:
// [#######.............]  35%  point 3/12: 2 vCPUs, 100 functions, cycle 17/51  0:12
func progressLine(s latency.Progress, elapsed time.Duration, width int) string {
	total := s.Points * s.Cycles
	done := s.Point*s.Cycles + s.Cycle
	if total <= 0 || s.Phase == latency.PhaseDone {
		done, total = 1, 1
	}
	frac := float64(min(done, total)) / float64(total)
	what := fmt.Sprintf("point %d/%d: %s, %s", min(s.Point+1, s.Points), s.Points,
		plural(s.CPUs, "vCPU", "vCPUs"), plural(s.Funcs, "function", "functions"))
	switch s.Phase {
	case latency.PhaseBoot:
		what = "booting " + plural(s.CPUs, "vCPU", "vCPUs")
	case latency.PhaseRegister:
		what += ", register"
	case latency.PhaseCycles:
		what += fmt.Sprintf(", cycle %d/%d", s.Cycle, s.Cycles)
	case latency.PhaseDone:
		what = "done"
	}
	clock := fmt.Sprintf("%d:%02d", int(elapsed.Minutes()), int(elapsed.Seconds())%60)
	tail := fmt.Sprintf(" %3.0f%%  %s  %s", 100*frac, what, clock)
	barW := min(40, width-len([]rune(tail))-3)
	if barW < 5 {
		line := []rune(strings.TrimSpace(tail))
		return string(line[:min(len(line), max(width-1, 0))])
	}
	fill := int(frac * float64(barW))
	return "[" + strings.Repeat("#", fill) + strings.Repeat(".", barW-fill) + "]" + tail
}

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}
