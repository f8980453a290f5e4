package latency

// svg.go draws a campaign's rows as one SVG picture (bench.svg). It is a
// small writer of its own rather than gonum.org/v1/plot: that library
// resolves here (v0.17.0) but brings eight modules (a PDF writer, a LaTeX
// renderer, a rasterizer, embedded fonts) and makes the klp-kvm binary
// 61% larger (10.1 -> 16.2 MB stripped) for two log-scale panels of lines,
// bands and markers.

import (
	"bufio"
	"encoding/xml"
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"time"
)

// The picture's geometry, in SVG user units (px).
const (
	svgWidth   = 1000
	svgHeight  = 470
	panelW     = 500
	plotLeft   = 70  // from the panel's left edge to the plot area
	plotRight  = 20  // from the plot area to the panel's right edge
	plotTop    = 70  // from the picture's top to the plot area
	plotBottom = 120 // from the plot area to the picture's bottom
)

// palette colours the vCPU counts, in the order they first appear.
var palette = []string{"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f"}

// quantity is one measured quantity of a Row as the picture shows it.
type quantity struct {
	name          string // data-quantity: pause_window, bare_pause_resume, enable, first_enable
	p50, p99, max func(Row) time.Duration
	dashed        bool // bare pause+resume: the reference, dashed and fainter
}

var (
	qWindow = quantity{name: "pause_window",
		p50: func(r Row) time.Duration { return r.Window }, p99: func(r Row) time.Duration { return r.WindowP99 },
		max: func(r Row) time.Duration { return r.WindowMax }}
	qBare = quantity{name: "bare_pause_resume", dashed: true,
		p50: func(r Row) time.Duration { return r.Bare }, p99: func(r Row) time.Duration { return r.BareP99 },
		max: func(r Row) time.Duration { return r.BareMax }}
	qEnable = quantity{name: "enable",
		p50: func(r Row) time.Duration { return r.Total }, p99: func(r Row) time.Duration { return r.TotalP99 },
		max: func(r Row) time.Duration { return r.TotalMax }}
	firstEnable = func(r Row) time.Duration { return r.FirstEnable }
)

// panel is one plot: its quantities, whether it shows the first enable.
type panel struct {
	id, title string
	qs        []quantity
	first     bool
}

var panels = []panel{
	{id: "window", title: "Pause window (solid) and bare pause+resume (dashed)", qs: []quantity{qBare, qWindow}},
	{id: "enable", title: "Enable, end to end (o: the first, cold enable)", qs: []quantity{qEnable}, first: true},
}

// WriteSVG draws rows as an SVG picture: left, the pause window and the
// bare Pause+Resume against the number of functions patched; right, the
// enable end to end, with the first (cold) enable of each point. Both
// axes are logarithmic; each vCPU count has a colour. Of each quantity
// the median is a line through a dot per point, a thick whisker goes up
// to the 99th percentile and a thin one on to the max, marked with an x. Every series is a <g class="series"> with
// data-panel, data-quantity, data-stat and data-cpus attributes, every
// point of it carries data-funcs and data-ns, so the picture can be
// read back (and is, by the tests).
func WriteSVG(w io.Writer, rows []Row) error {
	bw := bufio.NewWriter(w)
	s := &svg{w: bw}
	s.printf(`<?xml version="1.0" encoding="UTF-8"?>` + "\n")
	s.printf(`<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n",
		svgWidth, svgHeight, svgWidth, svgHeight)
	s.printf(`<rect width="100%%" height="100%%" fill="white"/>` + "\n")
	s.text(svgWidth/2, 24, "middle", "font-size=\"16\" font-weight=\"bold\"", title(rows))
	cpus := cpuCounts(rows)
	if len(rows) == 0 {
		s.text(svgWidth/2, svgHeight/2, "middle", "", "no measurements")
	}
	for i, p := range panels {
		if len(rows) > 0 {
			s.panel(float64(i*panelW), p, rows, cpus)
		}
	}
	s.legend(cpus)
	s.printf("</svg>\n")
	if s.err != nil {
		return s.err
	}
	return bw.Flush()
}

// title names the engines and the cycles per point.
func title(rows []Row) string {
	var engines []string
	seen := map[string]bool{}
	iters := map[int]bool{}
	for _, r := range rows {
		if !seen[r.Engine] {
			seen[r.Engine] = true
			engines = append(engines, r.Engine)
		}
		iters[r.Iterations] = true
	}
	t := "klp-kvm bench"
	if len(engines) > 0 {
		t += ": engine " + strings.Join(engines, ", ")
	}
	if len(iters) == 1 {
		for n := range iters {
			t += fmt.Sprintf(", %d cycles per point", n)
		}
	}
	return t
}

// cpuCounts lists the vCPU counts of rows in the order they first appear.
func cpuCounts(rows []Row) []int {
	var out []int
	seen := map[int]bool{}
	for _, r := range rows {
		if !seen[r.CPUs] {
			seen[r.CPUs] = true
			out = append(out, r.CPUs)
		}
	}
	return out
}

func colour(cpus []int, c int) string {
	for i, n := range cpus {
		if n == c {
			return palette[i%len(palette)]
		}
	}
	return palette[0]
}

func plural(n int, one, many string) string {
	if n == 1 {
		return fmt.Sprintf("%d %s", n, one)
	}
	return fmt.Sprintf("%d %s", n, many)
}

// svg writes elements, keeping the first write error.
type svg struct {
	w   *bufio.Writer
	err error
}

func (s *svg) printf(format string, args ...any) {
	if s.err == nil {
		_, s.err = fmt.Fprintf(s.w, format, args...)
	}
}

// text writes a text element; attrs is raw (trusted) attribute text.
func (s *svg) text(x, y float64, anchor, attrs, t string) {
	var b strings.Builder
	xml.EscapeText(&b, []byte(t))
	s.printf(`<text x="%.1f" y="%.1f" text-anchor="%s" %s>%s</text>`+"\n", x, y, anchor, attrs, b.String())
}

// logScale maps [lo, hi] (both > 0) onto [a, b] logarithmically.
type logScale struct{ lo, hi, a, b float64 }

func (l logScale) at(v float64) float64 {
	f := (math.Log10(v) - math.Log10(l.lo)) / (math.Log10(l.hi) - math.Log10(l.lo))
	return l.a + f*(l.b-l.a)
}

// pt is one point of a series: its function count and its value.
type pt struct {
	funcs int
	ns    time.Duration
}

// series returns the points of one vCPU count's f, by function count,
// leaving out values that are not positive (nothing measured).
func series(rows []Row, cpus int, f func(Row) time.Duration) []pt {
	var out []pt
	for _, r := range rows {
		if r.CPUs == cpus && f(r) > 0 {
			out = append(out, pt{r.Funcs, f(r)})
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].funcs < out[j].funcs })
	return out
}

// panel draws one plot with its left edge at x0.
func (s *svg) panel(x0 float64, p panel, rows []Row, cpus []int) {
	left, right := x0+plotLeft, x0+panelW-plotRight
	top, bottom := float64(plotTop), float64(svgHeight-plotBottom)
	s.printf(`<g class="panel" data-panel="%s">`+"\n", p.id)
	s.text((left+right)/2, 52, "middle", `font-size="13"`, p.title)

	// The ranges: every function count, every positive value shown.
	fmin, fmax := math.Inf(1), math.Inf(-1)
	vmin, vmax := math.Inf(1), math.Inf(-1)
	see := func(d time.Duration) {
		if d > 0 {
			us := float64(d) / 1e3
			vmin, vmax = math.Min(vmin, us), math.Max(vmax, us)
		}
	}
	for _, r := range rows {
		fmin, fmax = math.Min(fmin, float64(r.Funcs)), math.Max(fmax, float64(r.Funcs))
		for _, q := range p.qs {
			see(q.p50(r))
			see(q.p99(r))
			see(q.max(r))
		}
		if p.first {
			see(r.FirstEnable)
		}
	}
	if fmin == fmax {
		fmin, fmax = fmin/2, fmax*2
	}
	if math.IsInf(vmin, 1) {
		vmin, vmax = 1, 10
	}
	// Whole decades, so that the ticks fall on the ends.
	lo, hi := math.Pow(10, math.Floor(math.Log10(vmin))), math.Pow(10, math.Ceil(math.Log10(vmax)))
	if lo == hi {
		hi *= 10
	}
	// The x range gets a margin of a tenth of its decades on each side.
	pad := math.Max(0.1*(math.Log10(fmax)-math.Log10(fmin)), 0.05)
	xs := logScale{fmin / math.Pow(10, pad), fmax * math.Pow(10, pad), left, right}
	ys := logScale{lo, hi, bottom, top}

	s.axes(xs, ys, rows, left, right, top, bottom)
	// Each (quantity, vCPU count) is shifted sideways by its own dodge
	// so that their whiskers at one function count do not overlap.
	k, ks := 0, len(p.qs)*len(cpus)
	dodge := func() float64 {
		k++
		return (float64(k-1) - float64(ks-1)/2) * 7
	}
	for _, c := range cpus {
		col := colour(cpus, c)
		var dx float64
		for _, q := range p.qs {
			dx = dodge()
			s.quantity(p.id, q, rows, c, col, xs, ys, dx)
		}
		if p.first {
			pts := series(rows, c, firstEnable)
			s.printf(`<g class="series" data-panel="%s" data-quantity="first_enable" data-stat="first" data-cpus="%d" fill="white" stroke="%s" stroke-width="1.5">`+"\n", p.id, c, col)
			for _, t := range pts {
				s.printf(`<circle cx="%.1f" cy="%.1f" r="4" data-funcs="%d" data-ns="%d"><title>%s, %s: first enable %s</title></circle>`+"\n",
					xs.at(float64(t.funcs))+dx, ys.at(float64(t.ns)/1e3), t.funcs, int64(t.ns), plural(c, "vCPU", "vCPUs"), plural(t.funcs, "function", "functions"), fmtDur(t.ns))
			}
			s.printf("</g>\n")
		}
	}
	s.printf("</g>\n")
}

// axes draws the frame, the ticks and labels, and the grid.
func (s *svg) axes(xs, ys logScale, rows []Row, left, right, top, bottom float64) {
	s.printf(`<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="none" stroke="#444"/>`+"\n", left, top, right-left, bottom-top)
	// y: every decade, and 2 and 5 when there are at most two decades.
	decades := math.Round(math.Log10(ys.hi) - math.Log10(ys.lo))
	for d := ys.lo; d <= ys.hi*1.0001; d *= 10 {
		for _, m := range []float64{1, 2, 5} {
			v := d * m
			if v > ys.hi*1.0001 || (m != 1 && decades > 2) {
				continue
			}
			y := ys.at(v)
			s.printf(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", left, y, right, y)
			s.text(left-6, y+4, "end", "", fmtDur(time.Duration(v*1e3)))
		}
	}
	// x: every function count measured.
	seen := map[int]bool{}
	for _, r := range rows {
		if seen[r.Funcs] {
			continue
		}
		seen[r.Funcs] = true
		x := xs.at(float64(r.Funcs))
		s.printf(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", x, top, x, bottom)
		s.text(x, bottom+16, "middle", "", fmt.Sprint(r.Funcs))
	}
	s.text((left+right)/2, bottom+34, "middle", "", "functions patched (log scale)")
	s.text(left-56, (top+bottom)/2, "middle", fmt.Sprintf(`transform="rotate(-90 %.1f %.1f)"`, left-56, (top+bottom)/2), "time (log scale)")
}

// quantity draws one vCPU count's series of q, shifted dx to the side
// (so that the series of one function count stand apart): the p50 line
// through a dot per point; from each dot a thick whisker up to the p99,
// and from there a thin one up to the max, marked with an x.
func (s *svg) quantity(pid string, q quantity, rows []Row, cpus int, col string, xs, ys logScale, dx float64) {
	p50, p99, mx := series(rows, cpus, q.p50), series(rows, cpus, q.p99), series(rows, cpus, q.max)
	x := func(t pt) float64 { return xs.at(float64(t.funcs)) + dx }
	y := func(t pt) float64 { return ys.at(float64(t.ns) / 1e3) }
	head := func(stat, attrs string) {
		s.printf(`<g class="series" data-panel="%s" data-quantity="%s" data-stat="%s" data-cpus="%d" %s>`+"\n", pid, q.name, stat, cpus, attrs)
	}
	name := strings.ReplaceAll(q.name, "_", " ")
	tip := func(t pt, stat string) string {
		return fmt.Sprintf("<title>%s, %s: %s %s %s</title>", plural(cpus, "vCPU", "vCPUs"), plural(t.funcs, "function", "functions"), name, stat, fmtDur(t.ns))
	}
	dash, faint := "", 1.0
	if q.dashed {
		dash, faint = ` stroke-dasharray="6 4"`, 0.6
	}
	// The whiskers pair a point's p50 with its p99 and max: the three
	// series have the same points (a row has all three or, unmeasured,
	// none), so they line up; a mismatch would be a bug, drawn without
	// whiskers rather than wrong ones.
	whiskers := len(p50) == len(p99) && len(p99) == len(mx)
	if whiskers {
		head("p50-p99", fmt.Sprintf(`stroke="%s" stroke-width="4" stroke-opacity="%.2f"`, col, 0.45*faint))
		for i, t := range p99 {
			s.printf(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" data-funcs="%d" data-ns="%d">%s</line>`+"\n",
				x(t), y(p50[i]), x(t), y(t), t.funcs, int64(t.ns), tip(t, "p99"))
		}
		s.printf("</g>\n")
		head("max", fmt.Sprintf(`fill="none" stroke="%s" stroke-width="1.2" stroke-opacity="%.2f"`, col, faint))
		for i, t := range mx {
			s.printf(`<path d="M%.1f,%.1fV%.1fm-3,-3l6,6m0,-6l-6,6" data-funcs="%d" data-ns="%d">%s</path>`+"\n",
				x(t), y(p99[i]), y(t), t.funcs, int64(t.ns), tip(t, "max"))
		}
		s.printf("</g>\n")
	}
	head("p50", fmt.Sprintf(`fill="none" stroke="%s" stroke-width="2" stroke-opacity="%.2f"%s`, col, faint, dash))
	var pts []string
	for _, t := range p50 {
		pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(t), y(t)))
	}
	s.printf(`<polyline points="%s"/>`+"\n", strings.Join(pts, " "))
	for _, t := range p50 {
		s.printf(`<circle cx="%.1f" cy="%.1f" r="2.5" fill="%s" stroke="none" data-funcs="%d" data-ns="%d">%s</circle>`+"\n",
			x(t), y(t), col, t.funcs, int64(t.ns), tip(t, "p50"))
	}
	s.printf("</g>\n")
}

// legend explains the colours and the marks, under the panels.
func (s *svg) legend(cpus []int) {
	y := float64(svgHeight - 48)
	x := float64(plotLeft)
	s.printf(`<g class="legend">` + "\n")
	for _, c := range cpus {
		col := colour(cpus, c)
		s.printf(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="3"/>`+"\n", x, y-4, x+24, y-4, col)
		s.text(x+30, y, "start", "", plural(c, "vCPU", "vCPUs"))
		x += 110
	}
	y += 24
	x = plotLeft
	s.printf(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#444" stroke-width="2"/>`+"\n", x, y-4, x+24, y-4)
	s.text(x+30, y, "start", "", "median")
	x += 100
	s.printf(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#444" stroke-width="4" stroke-opacity="0.45"/>`+"\n", x+12, y+2, x+12, y-12)
	s.text(x+24, y, "start", "", "median to p99")
	x += 130
	s.printf(`<path d="M%.1f,%.1fV%.1fm-3,-3l6,6m0,-6l-6,6" fill="none" stroke="#444" stroke-width="1.2"/>`+"\n", x+12, y+2, y-9)
	s.text(x+24, y, "start", "", "p99 to max (x)")
	x += 130
	s.printf(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#444" stroke-width="2" stroke-dasharray="6 4"/>`+"\n", x, y-4, x+24, y-4)
	s.text(x+30, y, "start", "", "bare pause+resume")
	x += 180
	s.printf(`<circle cx="%.1f" cy="%.1f" r="4" fill="white" stroke="#444" stroke-width="1.5"/>`+"\n", x+12, y-4)
	s.text(x+30, y, "start", "", "first (cold) enable: loads the image")
	s.printf("</g>\n")
}

// fmtDur is a duration for a label: 1 µs, 20 µs, 1.5 ms, 2 s.
func fmtDur(d time.Duration) string {
	us := float64(d) / 1e3
	switch {
	case us < 1000:
		return trim(us) + " µs"
	case us < 1e6:
		return trim(us/1e3) + " ms"
	default:
		return trim(us/1e6) + " s"
	}
}

// trim prints v with at most three significant digits.
func trim(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return strings.TrimSuffix(fmt.Sprintf("%.1f", v), ".0")
	default:
		return strings.TrimRight(strings.TrimRight(fmt.Sprintf("%.2f", v), "0"), ".")
	}
}
