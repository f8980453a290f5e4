package manifest

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLineRoundTrip(t *testing.T) {
	for _, e := range []Event{
		{Event: EventEnd, Name: "kvm-hw.test", Pkg: "klp-kvm/kvm/hw", Exit: 1, ElapsedMS: 1234, Error: "killed"},
		{Event: EventKVM, OK: true, Flavour: "kvm_amd"},
	} {
		got, err := ParseLine(e.Line() + "\r\n")
		if err != nil {
			t.Fatal(err)
		}
		if got != e {
			t.Errorf("round trip %+v, want %+v", got, e)
		}
	}
}

func TestFlavour(t *testing.T) {
	for _, c := range []struct {
		mods []string
		want string
	}{
		{[]string{"irqbypass", "kvm", "kvm_amd", "ccp"}, "kvm_amd"},
		{[]string{"kvm", "kvm_intel", "vfio"}, "kvm_intel"},
		{[]string{"kvm", "kvm_pvm"}, "kvm_pvm"},
		{[]string{"kvm-amd"}, "kvm_amd"},                                      // file-name spelling
		{[]string{"kvm_pvm", "kvm_intel", "kvm"}, "kvm_intel+kvm_pvm"},        // fixed order
		{[]string{"kvm"}, UnknownFlavour},                                     // vendor module built in, no parameters
		{nil, UnknownFlavour},                                                 // no /sys/module
		{[]string{"kvm_amdx", "xkvm_intel", "kvm_pvm_extra"}, UnknownFlavour}, // whole names only
	} {
		if got := Flavour(c.mods); got != c.want {
			t.Errorf("Flavour(%q) = %q, want %q", c.mods, got, c.want)
		}
	}
}

func TestLoadedModules(t *testing.T) {
	dir := t.TempDir()
	for _, m := range []string{"kvm_pvm", "kvm", "irqbypass"} {
		if err := os.Mkdir(filepath.Join(dir, m), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	mods, err := LoadedModules(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(mods, " "); got != "irqbypass kvm kvm_pvm" {
		t.Errorf("LoadedModules = %q", got)
	}
	if f := Flavour(mods); f != "kvm_pvm" {
		t.Errorf("flavour %q", f)
	}
	if _, err := LoadedModules(filepath.Join(dir, "none")); err == nil {
		t.Error("no error for a missing directory")
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
