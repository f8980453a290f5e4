package nested

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"klp-kvm/test/nested/manifest"
)

// vmResults is what /init reported on the result channel.
type vmResults struct {
	Boot    string
	Modules []manifest.Event
	KVM     *manifest.Event
	Bins    []*binResult
	Done    *manifest.Event
	Bad     []string // malformed control lines (reported, never fatal)
}

// binResult is one test binary's run.
type binResult struct {
	Name, Pkg string
	Output    []byte // raw, test2json-framed
	Ended     bool   // an end event arrived
	Exit      int
	Error     string
	Elapsed   time.Duration
}

// maxOutput bounds what is kept of one binary's output: the VM is not
// trusted to be brief.
const maxOutput = 64 << 20

// parseResults reads the result channel. Lines outside a begin/end pair
// are ignored; a begin without an end leaves Ended false (the VM died or
// hung during that binary).
func parseResults(r io.Reader) (*vmResults, error) {
	res := &vmResults{}
	var cur *binResult
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		line, err := br.ReadString('\n')
		if len(line) > 0 {
			trimmed := strings.TrimRight(line, "\r\n")
			ev, perr := manifest.ParseLine(trimmed)
			switch {
			case errors.Is(perr, manifest.ErrNotEvent):
				if cur != nil && len(cur.Output) < maxOutput {
					cur.Output = append(cur.Output, trimmed...)
					cur.Output = append(cur.Output, '\n')
				}
			case perr != nil:
				res.Bad = append(res.Bad, trimmed)
			default:
				switch ev.Event {
				case manifest.EventBoot:
					res.Boot = ev.Info
				case manifest.EventModule:
					res.Modules = append(res.Modules, ev)
				case manifest.EventKVM:
					e := ev
					res.KVM = &e
				case manifest.EventBegin:
					cur = &binResult{Name: ev.Name, Pkg: ev.Pkg}
					res.Bins = append(res.Bins, cur)
				case manifest.EventEnd:
					if cur != nil && cur.Name == ev.Name {
						cur.Ended = true
						cur.Exit = ev.Exit
						cur.Error = ev.Error
						cur.Elapsed = time.Duration(ev.ElapsedMS) * time.Millisecond
					}
					cur = nil
				case manifest.EventDone:
					e := ev
					res.Done = &e
				}
			}
		}
		if err == io.EOF {
			return res, nil
		}
		if err != nil {
			return res, err
		}
	}
}

// testEvent is one line of `go tool test2json` output.
type testEvent struct {
	Action string
	Test   string
	Output string
}

// test2json converts a binary's -test.v=test2json output with the Go
// toolchain's own converter, which knows every framing rule.
func test2json(pkg string, out []byte) ([]testEvent, error) {
	cmd := exec.Command("go", "tool", "test2json", "-p", pkg)
	cmd.Stdin = bytes.NewReader(out)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("go tool test2json: %v: %s", err, stderr.Bytes())
	}
	var evs []testEvent
	dec := json.NewDecoder(&stdout)
	for {
		var e testEvent
		if err := dec.Decode(&e); err == io.EOF {
			return evs, nil
		} else if err != nil {
			return evs, fmt.Errorf("test2json output: %w", err)
		}
		evs = append(evs, e)
	}
}

// testOutcome is one top-level in-VM test.
type testOutcome struct {
	Name   string
	Action string // pass, fail, skip, or "" if it never finished
	Output string // its output and its subtests'
}

// outcomes groups test2json events by top-level test, in first-seen order,
// and returns the package-level output (not attributed to a test) apart.
func outcomes(evs []testEvent) (tests []*testOutcome, pkgOutput string) {
	byName := map[string]*testOutcome{}
	var pkgOut strings.Builder
	for _, e := range evs {
		if e.Test == "" {
			if e.Action == "output" {
				pkgOut.WriteString(e.Output)
			}
			continue
		}
		top, _, sub := strings.Cut(e.Test, "/")
		o := byName[top]
		if o == nil {
			o = &testOutcome{Name: top}
			byName[top] = o
			tests = append(tests, o)
		}
		switch e.Action {
		case "output":
			o.Output += e.Output
		case "pass", "fail", "skip":
			if !sub {
				o.Action = e.Action
			}
		}
	}
	return tests, pkgOut.String()
}

// report turns one binary's run into subtests of t (one per in-VM test).
//
// where says where it ran ("in the VM", "on this host"), for messages.
func report(t *testing.T, b *binResult, hung, where string) {
	evs, err := test2json(b.Pkg, b.Output)
	if err != nil {
		t.Errorf("%s: %v\n%s", b.Name, err, tail(string(b.Output), 40))
		return
	}
	tests, pkgOut := outcomes(evs)
	failed := 0
	for _, o := range tests {
		o := o
		t.Run(o.Name, func(t *testing.T) {
			switch o.Action {
			case "pass":
				t.Logf("passed %s:\n%s", where, strings.TrimRight(o.Output, "\n"))
			case "skip":
				t.Skipf("skipped %s:\n%s", where, strings.TrimRight(o.Output, "\n"))
			case "fail":
				t.Errorf("failed %s:\n%s", where, strings.TrimRight(o.Output, "\n"))
			default:
				// A benchmark has no pass line: it is done when the
				// binary ended well.
				if strings.HasPrefix(o.Name, "Benchmark") && b.Ended && b.Exit == 0 && b.Error == "" {
					t.Logf("benchmark %s:\n%s", where, strings.TrimRight(o.Output, "\n"))
					return
				}
				t.Errorf("never finished %s (%s):\n%s", where, hungReason(b, hung), tail(o.Output+pkgOut, 60))
			}
		})
		if o.Action == "fail" || (o.Action == "" && !(strings.HasPrefix(o.Name, "Benchmark") && b.Ended && b.Exit == 0)) {
			failed++
		}
	}
	switch {
	case !b.Ended:
		if failed == 0 {
			t.Errorf("%s: %s before it finished:\n%s", b.Name, hungReason(b, hung), tail(string(b.Output), 60))
		}
	case b.Exit != 0 || b.Error != "":
		if failed == 0 {
			t.Errorf("%s exited %d %s with no failing test:\n%s", b.Name, b.Exit, b.Error, tail(pkgOut, 60))
		}
	case len(tests) == 0 && os.Getenv("KLP_KVM_NESTED_RUN") != "":
		t.Skipf("%s: no test matches KLP_KVM_NESTED_RUN", b.Name)
	case len(tests) == 0:
		t.Errorf("%s ran no test:\n%s", b.Name, tail(pkgOut, 20))
	}
}

func hungReason(b *binResult, hung string) string {
	if hung != "" {
		return hung
	}
	return "the VM stopped"
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("[... %d lines ...]", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}

// A transcript as /init writes it: control lines around raw test2json
// output, with a bogus control line and noise outside any binary.
const sampleResults = "noise before\n" +
	manifest.Marker + `{"event":"boot","info":"kernel 6.1.0-56-amd64, 2 cpus, svm=true vmx=false"}` + "\n" +
	manifest.Marker + `{"event":"module","name":"kvm.ko"}` + "\n" +
	manifest.Marker + `{"event":"kvm","ok":true}` + "\n" +
	manifest.Marker + `{broken` + "\n" +
	manifest.Marker + `{"event":"begin","name":"kvm-hw.test","pkg":"klp-kvm/kvm/hw"}` + "\n" +
	// Real -test.v=test2json output of a pass, a failing subtest and a skip.
	"\x16=== RUN   TestA\n" +
	"    a_test.go:3: hello from A\n" +
	"\x16--- PASS: TestA (0.00s)\n" +
	"\x16=== NAME  \n" +
	"\x16=== RUN   TestB\n" +
	"\x16=== RUN   TestB/sub\n" +
	"    a_test.go:4: boom\n" +
	"\x16--- FAIL: TestB/sub (0.00s)\n" +
	"\x16=== NAME  TestB\n" +
	"\x16--- FAIL: TestB (0.00s)\n" +
	"\x16=== NAME  \n" +
	"\x16=== RUN   TestC\n" +
	"    a_test.go:5: no kvm\n" +
	"\x16--- SKIP: TestC (0.00s)\n" +
	"\x16=== NAME  \n" +
	"\x16FAIL\n" +
	manifest.Marker + `{"event":"end","name":"kvm-hw.test","pkg":"klp-kvm/kvm/hw","exit":1,"elapsed_ms":1500}` + "\n" +
	manifest.Marker + `{"event":"begin","name":"test-e2e.test","pkg":"klp-kvm/test/e2e"}` + "\n" +
	"\x16=== RUN   TestHang\n" +
	"    hang_test.go:9: waiting\n"

func TestParseResults(t *testing.T) {
	res, err := parseResults(strings.NewReader(sampleResults))
	if err != nil {
		t.Fatal(err)
	}
	if res.Boot == "" || len(res.Modules) != 1 || res.KVM == nil || !res.KVM.OK || res.Done != nil {
		t.Fatalf("control events: %+v", res)
	}
	if len(res.Bad) != 1 {
		t.Errorf("bad lines %q, want the broken one", res.Bad)
	}
	if len(res.Bins) != 2 {
		t.Fatalf("%d binaries", len(res.Bins))
	}
	hw, e2e := res.Bins[0], res.Bins[1]
	if !hw.Ended || hw.Exit != 1 || hw.Elapsed != 1500*time.Millisecond || bytes.Contains(hw.Output, []byte("noise")) {
		t.Errorf("hw: %+v", hw)
	}
	if e2e.Ended {
		t.Error("e2e ended without an end event")
	}

	evs, err := test2json(hw.Pkg, hw.Output)
	if err != nil {
		t.Fatal(err)
	}
	tests, _ := outcomes(evs)
	got := map[string]string{}
	for _, o := range tests {
		got[o.Name] = o.Action
	}
	want := map[string]string{"TestA": "pass", "TestB": "fail", "TestC": "skip"}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %q, want %q (all: %v)", k, got[k], v, got)
		}
	}
	for _, o := range tests {
		if o.Name == "TestB" && !strings.Contains(o.Output, "boom") {
			t.Errorf("TestB output lacks its subtest's: %q", o.Output)
		}
	}
	evs, err = test2json(e2e.Pkg, e2e.Output)
	if err != nil {
		t.Fatal(err)
	}
	tests, _ = outcomes(evs)
	if len(tests) != 1 || tests[0].Action != "" {
		t.Errorf("hung binary: %+v", tests)
	}
}

func FuzzParseResults(f *testing.F) {
	f.Add(sampleResults)
	f.Add(manifest.Marker + `{"event":"end","name":"x"}` + "\n")
	f.Fuzz(func(t *testing.T, s string) {
		res, err := parseResults(strings.NewReader(s))
		if err != nil || res == nil {
			t.Fatalf("parseResults: %v", err)
		}
		for _, b := range res.Bins {
			if len(b.Output) > maxOutput+len(s) {
				t.Fatal("output unbounded")
			}
		}
	})
}
