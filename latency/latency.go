// Package latency measures what a live-patch switch costs on a running
// guest: the pause window of an enable (every vCPU stopped until every vCPU
// resumed, with the stack check and the text pokes inside it), its end-to-
// end latency and the disable's, next to the bare Pause+Resume round trip
// measured in the same run on the same guest; of each the median, the
// 99th percentile and the max; and, apart from those cycles, the patch's
// first enable, which also loads its image (see Measure). `klp-kvm bench`
// and the e2e benchmarks use it; WriteSVG draws the rows.
package latency

import (
	"encoding/binary"
	"fmt"
	"math"
	"runtime"
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
	Iterations int    // measured enable/disable cycles per point
	// Cmdline is the guest kernel's command line: e.g. klp.workers=0 for
	// a guest whose workers stay idle, klp.worker_sleep_ms=0 for workers
	// that never sleep (they call the patched functions all the time).
	Cmdline string
	// Progress, if set, is told where the campaign is: at each boot, at
	// the start of each point and after each cycle.
	Progress func(Progress)
}

// Progress is where a campaign is, for a progress display.
type Progress struct {
	Point  int    // the point being measured, from 0
	Points int    // points in the campaign: len(CPUs) * len(Funcs)
	CPUs   int    // the point's vCPU count
	Funcs  int    // the point's function count
	Phase  string // PhaseBoot, PhaseRegister, PhaseCycles or PhaseDone
	Cycle  int    // cycles done at this point (the first, cold enable is one)
	Cycles int    // cycles per point: Iterations + 1
}

// The phases of a point, in order.
const (
	PhaseBoot     = "boot"     // booting the guest for the point's vCPU count
	PhaseRegister = "register" // registering the patch
	PhaseCycles   = "cycles"   // the first (cold) enable and the measured cycles
	PhaseDone     = "done"     // the whole campaign
)

// Row is one (vCPUs, functions) point: of each measured quantity the
// median (the fields without a suffix, as before p99 and max were
// added), the 99th percentile (nearest rank: with fewer than 100 cycles
// it is the max) and the max over the measured cycles; and, apart from
// them, the patch's register and its first, cold enable.
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
	Resume     time.Duration `json:"resume_ns"` // the window's last part: restarting every vCPU
	Total      time.Duration `json:"enable_ns"`
	Ratio      float64       `json:"window_over_bare"` // of the medians

	BareP99    time.Duration `json:"bare_pause_resume_p99_ns"`
	BareMax    time.Duration `json:"bare_pause_resume_max_ns"`
	WindowP99  time.Duration `json:"pause_window_p99_ns"`
	WindowMax  time.Duration `json:"pause_window_max_ns"`
	StopP99    time.Duration `json:"stop_p99_ns"`
	StopMax    time.Duration `json:"stop_max_ns"`
	CheckP99   time.Duration `json:"check_p99_ns"`
	CheckMax   time.Duration `json:"check_max_ns"`
	PokeP99    time.Duration `json:"poke_p99_ns"`
	PokeMax    time.Duration `json:"poke_max_ns"`
	TotalP99   time.Duration `json:"enable_p99_ns"`
	TotalMax   time.Duration `json:"enable_max_ns"`
	Disable    time.Duration `json:"disable_ns"` // end to end, like Total
	DisableP99 time.Duration `json:"disable_p99_ns"`
	DisableMax time.Duration `json:"disable_max_ns"`
	ResumeP99  time.Duration `json:"resume_p99_ns"`
	ResumeMax  time.Duration `json:"resume_max_ns"`
	// The bare Pause+Resume's two parts (medians), to set against the
	// window's stop and resume: the same two calls.
	BarePause  time.Duration `json:"bare_pause_ns"`
	BareResume time.Duration `json:"bare_resume_ns"`

	// Register is the patch's register (parse, dry-run layout, sysfs).
	Register time.Duration `json:"register_ns"`
	// FirstEnable is the patch's first enable, end to end, measured
	// apart from the cycles: it also loads the image into the patch area
	// (lays it out against the kernel and writes it), which later enables
	// find there. FirstWindow is its pause window.
	FirstEnable time.Duration `json:"first_enable_ns"`
	FirstWindow time.Duration `json:"first_pause_window_ns"`
}

// Run boots a guest per vCPU count and measures every patch size on it.
func Run(cfg Config) ([]Row, error) {
	if cfg.Iterations <= 0 {
		cfg.Iterations = 50
	}
	pr := Progress{Points: len(cfg.CPUs) * len(cfg.Funcs), Cycles: cfg.Iterations + 1}
	tell := func(phase string, cycle int) {
		if cfg.Progress != nil {
			pr.Phase, pr.Cycle = phase, cycle
			cfg.Progress(pr)
		}
	}
	var rows []Row
	for _, cpus := range cfg.CPUs {
		pr.CPUs, pr.Funcs = cpus, 0
		tell(PhaseBoot, 0)
		s, err := vmm.Boot(vmm.Config{Engine: cfg.Engine, CPUs: cpus, Cmdline: cfg.Cmdline})
		if err != nil {
			return rows, fmt.Errorf("boot %d vCPUs: %w", cpus, err)
		}
		for _, n := range cfg.Funcs {
			pr.Funcs = n
			tell(PhaseRegister, 0)
			r, err := measure(s, n, cfg.Iterations, func(cycle int) { tell(PhaseCycles, cycle) })
			if err != nil {
				s.Close()
				return rows, fmt.Errorf("%d vCPUs, %d functions: %w", cpus, n, err)
			}
			rows = append(rows, r)
			pr.Point++
		}
		s.Close()
	}
	pr.Point = pr.Points
	tell(PhaseDone, 0)
	return rows, nil
}

// Measure registers livepatch-bench cut down to n functions on a booted
// guest, enables and disables it once (the first, cold enable, which
// loads the image: Row.FirstEnable), then iters times more with a bare
// Pause+Resume before each enable, and returns the statistics of those
// iters cycles. A GC runs before the first enable and before the cycles,
// as the testing package does before a benchmark: the garbage of the
// register and of the image's layout is not collected inside them.
func Measure(s *vmm.VMM, n, iters int) (Row, error) {
	return measure(s, n, iters, nil)
}

// measure is Measure, telling cycle (if set) how many cycles are done.
func measure(s *vmm.VMM, n, iters int, cycle func(int)) (Row, error) {
	full, err := guestkernel.Patch("livepatch-bench")
	if err != nil {
		return Row{}, err
	}
	o, err := TruncatePatch(full, n)
	if err != nil {
		return Row{}, err
	}
	t0 := time.Now()
	p, err := s.Manager.Register(o, "livepatch-bench.o")
	if err != nil {
		return Row{}, err
	}
	register := time.Since(t0)
	defer s.Manager.Unregister(p.Name)
	if got := len(p.Objects[0].Funcs); got != n {
		return Row{}, fmt.Errorf("truncated patch has %d functions, want %d", got, n)
	}
	r := Row{Engine: s.Machine.EngineName(), CPUs: s.Machine.NumCPUs(), Funcs: n, Iterations: iters, Register: register}
	runtime.GC()
	first, err := s.Manager.Enable(p.Name, livepatch.Options{})
	if err != nil {
		return Row{}, fmt.Errorf("first enable: %w", err)
	}
	r.FirstEnable, r.FirstWindow = first.Total, first.PauseWindow
	if _, err := s.Manager.Disable(p.Name, livepatch.Options{}); err != nil {
		return Row{}, fmt.Errorf("first disable: %w", err)
	}
	if cycle != nil {
		cycle(1)
	}
	runtime.GC()
	var windows, totals, bare, barePauses, bareResumes, stops, checks, pokes, resumes, disables []time.Duration
	for i := 0; i < iters; i++ {
		time.Sleep(settle)
		t0 := time.Now()
		if err := s.Machine.Pause(); err != nil {
			return Row{}, err
		}
		t1 := time.Now()
		if err := s.Machine.Resume(); err != nil {
			return Row{}, err
		}
		t2 := time.Now()
		bare, barePauses, bareResumes = append(bare, t2.Sub(t0)), append(barePauses, t1.Sub(t0)), append(bareResumes, t2.Sub(t1))
		time.Sleep(settle)
		res, err := s.Manager.Enable(p.Name, livepatch.Options{})
		if err != nil {
			return Row{}, err
		}
		windows = append(windows, res.PauseWindow)
		stops = append(stops, res.Stop)
		checks = append(checks, res.Check)
		pokes = append(pokes, res.Poke)
		resumes = append(resumes, res.Resume)
		totals = append(totals, res.Total)
		dis, err := s.Manager.Disable(p.Name, livepatch.Options{})
		if err != nil {
			return Row{}, err
		}
		disables = append(disables, dis.Total)
		if cycle != nil {
			cycle(i + 2)
		}
	}
	r.Bare, r.BareP99, r.BareMax = stats(bare)
	r.Window, r.WindowP99, r.WindowMax = stats(windows)
	r.Stop, r.StopP99, r.StopMax = stats(stops)
	r.Check, r.CheckP99, r.CheckMax = stats(checks)
	r.Poke, r.PokeP99, r.PokeMax = stats(pokes)
	r.Resume, r.ResumeP99, r.ResumeMax = stats(resumes)
	r.BarePause, r.BareResume = Median(barePauses), Median(bareResumes)
	r.Total, r.TotalP99, r.TotalMax = stats(totals)
	r.Disable, r.DisableP99, r.DisableMax = stats(disables)
	if r.Bare > 0 {
		r.Ratio = float64(r.Window) / float64(r.Bare)
	}
	return r, nil
}

// settle is how long the guest runs before each measured pause (the
// bare Pause+Resume and the enable): long enough for every vCPU thread,
// woken by the previous Resume, to be back in the guest, so that every
// measured pause stops running vCPUs. Without it a pause that follows the
// previous Resume within a few tens of microseconds (the bare round trip
// right before a 1-function enable) finds the vCPU threads not yet back
// in the guest, and its stop phase is only a goroutine wake-up: the stop
// phase then seemed to grow with the function count (measured: the vCPU
// was found outside the guest at 51 of 62 1-function enables, at 1 of 62
// 1024-function ones, whose enable spends milliseconds before its pause).
const settle = time.Millisecond

// stats returns the median, the 99th percentile and the max of d.
func stats(d []time.Duration) (p50, p99, max time.Duration) {
	return Median(d), Percentile(d, 99), Percentile(d, 100)
}

// Median returns the median of d (0 for none); of an even count, the
// upper of the two middle values.
func Median(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := sorted(d)
	return s[len(s)/2]
}

// Percentile returns the p-th percentile of d by nearest rank (the
// smallest value with at least p% of d at or below it; 0 for none):
// Percentile(d, 100) is the max, and with fewer than 100 values
// Percentile(d, 99) is the max too.
func Percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := sorted(d)
	i := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[min(max(i, 0), len(s)-1)]
}

func sorted(d []time.Duration) []time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s
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
