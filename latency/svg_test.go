package latency

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"io"
	"strconv"
	"strings"
	"testing"
	"time"
)

// node is an XML element read back from the picture.
type node struct {
	XMLName xml.Name
	Attrs   []xml.Attr `xml:",any,attr"`
	Nodes   []node     `xml:",any"`
	Text    string     `xml:",chardata"`
}

func (n *node) attr(name string) string {
	for _, a := range n.Attrs {
		if a.Name.Local == name {
			return a.Value
		}
	}
	return ""
}

func (n *node) walk(f func(*node)) {
	f(n)
	for i := range n.Nodes {
		n.Nodes[i].walk(f)
	}
}

// fixedRows is a campaign of 2 vCPU counts by 4 function counts whose
// values grow with both, the p99 above the median, the max above that.
func fixedRows() []Row {
	var rows []Row
	for _, c := range []int{1, 2} {
		for _, f := range []int{1, 10, 100, 1024} {
			base := time.Duration(c*f+10) * time.Microsecond
			rows = append(rows, Row{Engine: "emu", CPUs: c, Funcs: f, Iterations: 50,
				Bare: 20 * time.Microsecond, BareP99: 40 * time.Microsecond, BareMax: 90 * time.Microsecond,
				Window: base, WindowP99: 2 * base, WindowMax: 3 * base,
				Total: 4 * base, TotalP99: 6 * base, TotalMax: 9 * base,
				FirstEnable: 40 * base})
		}
	}
	return rows
}

func parseSVG(t *testing.T, b []byte) node {
	t.Helper()
	// Well-formed: every token decodes.
	d := xml.NewDecoder(bytes.NewReader(b))
	for {
		_, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("not well-formed XML: %v\n%s", err, b)
		}
	}
	var root node
	if err := xml.Unmarshal(b, &root); err != nil {
		t.Fatal(err)
	}
	if root.XMLName.Local != "svg" || root.XMLName.Space != "http://www.w3.org/2000/svg" {
		t.Fatalf("root element %v", root.XMLName)
	}
	return root
}

// TestWriteSVG: the picture of a fixed campaign is well-formed SVG with,
// for each vCPU count, the median line, the p50..p99 band and the max
// markers of the pause window, the bare pause+resume and the enable, and
// the first enables; every point where its value puts it.
func TestWriteSVG(t *testing.T) {
	rows := fixedRows()
	var buf bytes.Buffer
	if err := WriteSVG(&buf, rows); err != nil {
		t.Fatal(err)
	}
	root := parseSVG(t, buf.Bytes())
	if root.attr("width") == "" || root.attr("viewBox") == "" {
		t.Errorf("svg without a size: %v", root.Attrs)
	}
	series := map[string]*node{}
	var texts []string
	root.walk(func(n *node) {
		if n.XMLName.Local == "text" {
			texts = append(texts, n.Text)
		}
		if n.attr("class") != "series" {
			return
		}
		key := fmt.Sprintf("%s/%s/%s/%s", n.attr("data-panel"), n.attr("data-quantity"), n.attr("data-stat"), n.attr("data-cpus"))
		if series[key] != nil {
			t.Errorf("series %s twice", key)
		}
		series[key] = n
	})
	want := []string{}
	for _, c := range []string{"1", "2"} {
		for _, q := range []string{"window/pause_window", "window/bare_pause_resume", "enable/enable"} {
			for _, st := range []string{"p50", "p50-p99", "max"} {
				want = append(want, q+"/"+st+"/"+c)
			}
		}
		want = append(want, "enable/first_enable/first/"+c)
	}
	if len(series) != len(want) {
		t.Errorf("%d series, want %d: %v", len(series), len(want), keys(series))
	}
	for _, k := range want {
		n := series[k]
		if n == nil {
			t.Errorf("no series %s", k)
			continue
		}
		switch stat := strings.Split(k, "/")[2]; stat {
		case "p50":
			var line *node
			for i := range n.Nodes {
				if n.Nodes[i].XMLName.Local == "polyline" {
					line = &n.Nodes[i]
				}
			}
			if line == nil || len(strings.Fields(line.attr("points"))) != 4 {
				t.Errorf("%s: want a polyline of 4 points, got %+v", k, line)
			}
			checkPoints(t, k, n, 4)
		case "p50-p99", "max", "first":
			checkPoints(t, k, n, 4)
		}
	}
	// Each whisker starts where the one below it ends, the max is drawn
	// above the p99 and that above the median (SVG's y grows downwards),
	// at the x of its dot; x grows with the function count.
	for _, q := range []string{"window/pause_window", "window/bare_pause_resume", "enable/enable"} {
		for _, c := range []string{"1", "2"} {
			p50 := points(series[q+"/p50/"+c])
			p99 := points(series[q+"/p50-p99/"+c])
			mx := points(series[q+"/max/"+c])
			for i := range p50 {
				if !(mx[i].y < p99[i].y && p99[i].y < p50[i].y) {
					t.Errorf("%s, vCPUs %s, %d funcs: y of max %.1f, p99 %.1f, p50 %.1f", q, c, p50[i].funcs, mx[i].y, p99[i].y, p50[i].y)
				}
				if p99[i].from != p50[i].y || mx[i].from != p99[i].y || p99[i].x != p50[i].x || mx[i].x != p50[i].x {
					t.Errorf("%s, vCPUs %s, %d funcs: whiskers %+v and %+v do not start at the dot %+v", q, c, p50[i].funcs, p99[i], mx[i], p50[i])
				}
				if i > 0 && !(p50[i].x > p50[i-1].x) {
					t.Errorf("%s, vCPUs %s: x does not grow with the function count: %+v", q, c, p50)
				}
			}
		}
	}
	// The same function count's series stand apart.
	if a, b := points(series["window/pause_window/p50/1"]), points(series["window/pause_window/p50/2"]); a[0].x == b[0].x {
		t.Errorf("1 and 2 vCPUs drawn at the same x: %.1f", a[0].x)
	}
	all := strings.Join(texts, "|")
	for _, s := range []string{"1 vCPU", "2 vCPUs", "1024", "engine emu", "50 cycles per point"} {
		if !strings.Contains(all, s) {
			t.Errorf("no text %q in %q", s, all)
		}
	}
}

type point struct {
	funcs int
	ns    int64
	x, y  float64
	from  float64 // a whisker: the y it starts from
}

// points reads a series' points: circles (cx, cy), p99 whiskers (lines
// from the median's y to the p99's) or max whiskers (paths from the
// p99's y up to the max's, where the x is drawn).
func points(n *node) []point {
	var out []point
	if n == nil {
		return nil
	}
	for _, c := range n.Nodes {
		f, err1 := strconv.Atoi(c.attr("data-funcs"))
		ns, err2 := strconv.ParseInt(c.attr("data-ns"), 10, 64)
		if err1 != nil || err2 != nil {
			continue
		}
		p := point{funcs: f, ns: ns}
		switch c.XMLName.Local {
		case "circle":
			p.x, _ = strconv.ParseFloat(c.attr("cx"), 64)
			p.y, _ = strconv.ParseFloat(c.attr("cy"), 64)
		case "line":
			p.x, _ = strconv.ParseFloat(c.attr("x1"), 64)
			p.from, _ = strconv.ParseFloat(c.attr("y1"), 64)
			p.y, _ = strconv.ParseFloat(c.attr("y2"), 64)
		case "path":
			fmt.Sscanf(c.attr("d"), "M%f,%fV%f", &p.x, &p.from, &p.y)
		}
		out = append(out, p)
	}
	return out
}

func checkPoints(t *testing.T, key string, n *node, want int) {
	t.Helper()
	ps := points(n)
	if len(ps) != want {
		t.Errorf("%s: %d points, want %d", key, len(ps), want)
		return
	}
	for i, f := range []int{1, 10, 100, 1024} {
		if ps[i].funcs != f || ps[i].ns <= 0 {
			t.Errorf("%s: point %d is %+v", key, i, ps[i])
		}
	}
}

func keys(m map[string]*node) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// TestWriteSVGEdges: no rows, one point, zero values (nothing measured)
// still give well-formed SVG.
func TestWriteSVGEdges(t *testing.T) {
	one := fixedRows()[:1]
	zero := []Row{{Engine: "kvm", CPUs: 4, Funcs: 7, Iterations: 1}}
	for name, rows := range map[string][]Row{"none": nil, "one": one, "zero": zero} {
		var buf bytes.Buffer
		if err := WriteSVG(&buf, rows); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		root := parseSVG(t, buf.Bytes())
		if bytes.Contains(buf.Bytes(), []byte("NaN")) || bytes.Contains(buf.Bytes(), []byte("Inf")) {
			t.Errorf("%s: NaN or Inf in the picture:\n%s", name, buf.Bytes())
		}
		_ = root
	}
}

func TestFmtDur(t *testing.T) {
	for d, want := range map[time.Duration]string{
		time.Microsecond: "1 µs", 20 * time.Microsecond: "20 µs", 1500 * time.Microsecond: "1.5 ms",
		time.Millisecond: "1 ms", 2 * time.Second: "2 s", 500 * time.Nanosecond: "0.5 µs", 123456 * time.Microsecond: "123 ms",
	} {
		if got := fmtDur(d); got != want {
			t.Errorf("fmtDur(%v) = %q, want %q", d, got, want)
		}
	}
}
