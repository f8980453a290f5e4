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

	"klp-kvm/latency"
)

// cmdBench measures patch switch latency on the embedded guest:
// klp-kvm bench [--engine E] [--cpus LIST] [--funcs LIST] [--iterations N] [--out DIR] [--json]
func cmdBench(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	engineName := fs.String("engine", "auto", "execution engine: auto, kvm or emu")
	cpuList := fs.String("cpus", "1,2,4", "comma-separated vCPU counts")
	funcList := fs.String("funcs", "1,10,100,1024", "comma-separated patch sizes (1..1024 functions)")
	iters := fs.Int("iterations", 50, "enable/disable cycles per point (medians are reported)")
	out := fs.String("out", "", "directory to write bench.json and bench.txt to")
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
		fmt.Fprintln(stderr, "usage: klp-kvm bench [--engine E] [--cpus LIST] [--funcs LIST] [--iterations N] [--out DIR] [--json]")
		return 2
	}
	rows, err := latency.Run(latency.Config{Engine: *engineName, CPUs: cpus, Funcs: funcs, Iterations: *iters,
		Progress: func(c, f int) {
			fmt.Fprintf(stderr, "klp-kvm bench: %d vCPU(s), %d function(s), %d cycles\n", c, f, *iters)
		}})
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

func benchTable(w io.Writer, rows []latency.Row) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "engine\tvCPUs\tfuncs\tbare pause+resume\tpause window\twindow/bare\tstop\tcheck\tpoke\tenable (end to end)\t")
	us := func(d interface{ Microseconds() int64 }) string { return fmt.Sprintf("%d µs", d.Microseconds()) }
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%.2f\t%s\t%s\t%s\t%s\t\n", r.Engine, r.CPUs, r.Funcs,
			us(r.Bare), us(r.Window), r.Ratio, us(r.Stop), us(r.Check), us(r.Poke), us(r.Total))
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
	f, err := os.Create(filepath.Join(dir, "bench.txt"))
	if err != nil {
		return err
	}
	benchTable(f, rows)
	return f.Close()
}
