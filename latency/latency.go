// Package latency measures what a live-patch switch costs on a running
// guest: the pause window of an enable (every vCPU stopped until every vCPU
// resumed, with the stack check and the text pokes inside it) and its end-to-
// end latency, next to the bare Pause+Resume round trip measured in the same
// run on the same guest. `klp-kvm bench` and the e2e benchmarks use it.
package latency

import (
	"encoding/binary"
	"fmt"
	"sort"
	"time"

	"klp-kvm/elfpatch"
	"klp-kvm/guestkernel"
	"klp-kvm/livepatch"
	"klp-kvm/vmm"
)

// Config is one measurement campaign.
type Config struct {
	Engine     string // auto, kvm or emu
	CPUs       []int  // vCPU counts, one booted guest each
	Funcs      []int  // patch sizes, 1..1024 (livepatch-bench cut down)
	Iterations int    // enable/disable cycles per point
	// Progress, if set, is told about each point as it starts.
	Progress func(cpus, funcs int)
}

// Row is the medians of one (vCPUs, functions) point.
type Row struct {
	Engine     string        `json:"engine"`
	CPUs       int           `json:"cpus"`
	Funcs      int           `json:"funcs"`
	Iterations int           `json:"iterations"`
	Bare       time.Duration `json:"bare_pause_resume_ns"`
	Window     time.Duration `json:"pause_window_ns"`
	Stop       time.Duration `json:"stop_ns"`
	Check      time.Duration `json:"check_ns"`
	Poke       time.Duration `json:"poke_ns"`
	Total      time.Duration `json:"enable_ns"`
	Ratio      float64       `json:"window_over_bare"`
}

// Run boots a guest per vCPU count and measures every patch size on it.
func Run(cfg Config) ([]Row, error) {
	if cfg.Iterations <= 0 {
		cfg.Iterations = 50
	}
	var rows []Row
	for _, cpus := range cfg.CPUs {
		s, err := vmm.Boot(vmm.Config{Engine: cfg.Engine, CPUs: cpus})
		if err != nil {
			return rows, fmt.Errorf("boot %d vCPUs: %w", cpus, err)
		}
		for _, n := range cfg.Funcs {
			if cfg.Progress != nil {
				cfg.Progress(cpus, n)
			}
			r, err := Measure(s, n, cfg.Iterations)
			if err != nil {
				s.Close()
				return rows, fmt.Errorf("%d vCPUs, %d functions: %w", cpus, n, err)
			}
			rows = append(rows, r)
		}
		s.Close()
	}
	return rows, nil
}

// Measure enables and disables livepatch-bench cut down to n functions
// iters times on a booted guest, with a bare Pause+Resume before each
// enable, and returns the medians.
func Measure(s *vmm.VMM, n, iters int) (Row, error) {
	full, err := guestkernel.Patch("livepatch-bench")
	if err != nil {
		return Row{}, err
	}
	o, err := TruncatePatch(full, n)
	if err != nil {
		return Row{}, err
	}
	p, err := s.Manager.Register(o, "livepatch-bench.o")
	if err != nil {
		return Row{}, err
	}
	defer s.Manager.Unregister(p.Name)
	if got := len(p.Objects[0].Funcs); got != n {
		return Row{}, fmt.Errorf("truncated patch has %d functions, want %d", got, n)
	}
	var windows, totals, bare, stops, checks, pokes []time.Duration
	for i := 0; i < iters; i++ {
		t0 := time.Now()
		if err := s.Machine.Pause(); err != nil {
			return Row{}, err
		}
		if err := s.Machine.Resume(); err != nil {
			return Row{}, err
		}
		bare = append(bare, time.Since(t0))
		res, err := s.Manager.Enable(p.Name, livepatch.Options{})
		if err != nil {
			return Row{}, err
		}
		windows = append(windows, res.PauseWindow)
		stops = append(stops, res.Stop)
		checks = append(checks, res.Check)
		pokes = append(pokes, res.Poke)
		totals = append(totals, res.Total)
		if _, err := s.Manager.Disable(p.Name, livepatch.Options{}); err != nil {
			return Row{}, err
		}
	}
	r := Row{Engine: s.Machine.EngineName(), CPUs: s.Machine.NumCPUs(), Funcs: n, Iterations: iters, Bare: Median(bare), Window: Median(windows), Stop: Median(stops),
		Check: Median(checks), Poke: Median(pokes), Total: Median(totals)}
	if r.Bare > 0 {
		r.Ratio = float64(r.Window) / float64(r.Bare)
	}
	return r, nil
}

// Median returns the median of d (0 for none).
func Median(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

// TruncatePatch keeps the first n entries of a patch object's funcs[]
// array: the relocation section of the array is cut after the
// relocations of entry n-1 (they come in offset order), so entry n reads
// as the all-zero terminator. The other new functions stay in the object
// (laid out, never reached). This gives the benchmark any function count
// from the one prebuilt 1024-function patch.
func TruncatePatch(obj []byte, n int) ([]byte, error) {
	const klpFuncSize = 24             // struct klp_func: old_name, new_func, old_sympos
	const relaSize = 24                // Elf64_Rela
	p, err := elfpatch.ParsePatch(obj) // validated: every offset below is in bounds
	if err != nil {
		return nil, err
	}
	var arr *elfpatch.Symbol
	for _, s := range p.Symbols() {
		if s.Name == "funcs" && s.Type == elfpatch.TypeObject {
			arr = &s
		}
	}
	if arr == nil || arr.Size < uint64(n+1)*klpFuncSize {
		return nil, fmt.Errorf("no funcs[] array of more than %d entries", n)
	}
	cut := arr.Value + uint64(n)*klpFuncSize
	le := binary.LittleEndian
	shoff, shentsize := le.Uint64(obj[0x28:]), uint64(le.Uint16(obj[0x3a:]))
	for _, sec := range p.Sections() {
		if sec.Type != elfpatch.SHT_RELA || int(sec.Info) != arr.Section || sec.EntSize != relaSize {
			continue
		}
		keep := uint64(0)
		for off := sec.Offset; off+relaSize <= sec.Offset+sec.Size; off += relaSize {
			if le.Uint64(obj[off:]) < cut { // r_offset
				if keep != off-sec.Offset {
					return nil, fmt.Errorf("%s: relocations out of order", sec.Name)
				}
				keep += relaSize
			}
		}
		out := append([]byte(nil), obj...)
		le.PutUint64(out[shoff+uint64(sec.Index)*shentsize+32:], keep) // sh_size
		return out, nil
	}
	return nil, fmt.Errorf("no relocation section for funcs[]")
}
