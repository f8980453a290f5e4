package manifest

import (
	"errors"
	"testing"
)

func TestLineRoundTrip(t *testing.T) {
	e := Event{Event: EventEnd, Name: "kvm-hw.test", Pkg: "klp-kvm/kvm/hw", Exit: 1, ElapsedMS: 1234, Error: "killed"}
	got, err := ParseLine(e.Line() + "\r\n")
	if err != nil {
		t.Fatal(err)
	}
	if got != e {
		t.Errorf("round trip %+v, want %+v", got, e)
	}
}

func TestParseLineRejects(t *testing.T) {
	for _, l := range []string{"", "=== RUN   TestX", "x" + Marker + "{}", Marker + "{", Marker + "{}", Marker + `{"event":5}`, Marker + "null"} {
		if _, err := ParseLine(l); err == nil {
			t.Errorf("ParseLine(%q) accepted", l)
		}
	}
	if _, err := ParseLine("plain output"); !errors.Is(err, ErrNotEvent) {
		t.Errorf("plain line: %v, want ErrNotEvent", err)
	}
}

func FuzzParseLine(f *testing.F) {
	f.Add(Event{Event: EventBegin, Name: "a"}.Line())
	f.Add(Marker + `{"event":"done","ok":true}`)
	f.Fuzz(func(t *testing.T, s string) {
		e, err := ParseLine(s)
		if err == nil && e.Event == "" {
			t.Errorf("accepted %q without an event", s)
		}
	})
}
