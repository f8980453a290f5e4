// Package manifest is the contract between the nested tier's host side
// (package nested's test) and its in-VM /init (test/nested/vminit): what to
// run, and the control lines /init writes on its result channel.
//
// The result channel is the VM's second serial port (ttyS1), so that
// kernel messages on the console can never split or fake a result line.
// On it, /init writes control lines (Marker + one JSON Event) around the raw
// output of each test binary, which runs with -test.v=test2json.
package manifest

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"
)

// Path is where the manifest sits in the initramfs.
const Path = "/klp-nested/manifest.json"

// Marker starts every control line on the result channel.
const Marker = "@@klp-nested "

// Manifest says what /init runs, in order.
type Manifest struct {
	Modules     []string `json:"modules"`      // .ko files under ModulesDir, dependencies first
	ModulesDir  string   `json:"modules_dir"`  // e.g. /klp-nested/modules
	Tests       []Binary `json:"tests"`        // test binaries
	Env         []string `json:"env"`          // KEY=VALUE added for every binary
	TimeoutSecs int      `json:"timeout_secs"` // per binary: -test.timeout, then SIGKILL a bit later
}

// Binary is one `go test -c` binary.
type Binary struct {
	Name string   `json:"name"` // file under /klp-nested/bin, e.g. "kvm-hw.test"
	Pkg  string   `json:"pkg"`  // import path, for test2json -p and messages
	Dir  string   `json:"dir"`  // working directory in the VM (the package's testdata sits below it)
	Args []string `json:"args"` // extra flags, e.g. -test.run
}

// Event kinds on the result channel.
const (
	EventBoot   = "boot"   // /init started: kernel and CPU facts
	EventModule = "module" // one module loaded (or failed: Error set)
	EventKVM    = "kvm"    // /dev/kvm checked: OK or Error
	EventBegin  = "begin"  // a binary starts; its raw output follows
	EventEnd    = "end"    // a binary ended: Exit, ElapsedMS, Error (start failure, kill)
	EventDone   = "done"   // all ran: OK = every binary exited 0
	// EventAlive is /init's heartbeat on the console, every
	// HeartbeatInterval: a VM that stops sending it has frozen (the L1
	// kernel or QEMU itself), which no test inside can report.
	EventAlive = "alive"
)

// HeartbeatInterval is how often /init sends EventAlive.
const HeartbeatInterval = time.Second

// Event is one control line.
type Event struct {
	Event     string `json:"event"`
	Name      string `json:"name,omitempty"`
	Pkg       string `json:"pkg,omitempty"`
	Exit      int    `json:"exit"`
	ElapsedMS int64  `json:"elapsed_ms,omitempty"`
	OK        bool   `json:"ok,omitempty"`
	Error     string `json:"error,omitempty"`
	Info      string `json:"info,omitempty"`
	Flavour   string `json:"flavour,omitempty"` // EventKVM: which KVM (see Flavour)
}

// Line renders e as one control line (without the newline).
func (e Event) Line() string {
	b, err := json.Marshal(e)
	if err != nil { // cannot happen for this struct; keep the channel parseable anyway
		return Marker + `{"event":"error"}`
	}
	return Marker + string(b)
}

// ErrNotEvent: a line that is not a control line.
var ErrNotEvent = errors.New("not a control line")

// ParseLine reads a control line. Anything read from the VM is untrusted:
// malformed lines are errors, never panics.
func ParseLine(line string) (Event, error) {
	line = strings.TrimRight(line, "\r\n")
	if !strings.HasPrefix(line, Marker) {
		return Event{}, ErrNotEvent
	}
	var e Event
	if err := json.Unmarshal([]byte(line[len(Marker):]), &e); err != nil {
		return Event{}, fmt.Errorf("control line %q: %w", line, err)
	}
	if e.Event == "" {
		return Event{}, fmt.Errorf("control line %q: no event", line)
	}
	return e, nil
}

// The KVM flavours: the vendor module behind /dev/kvm, as it is named
// under /sys/module. kvm_intel (VT-x) and kvm_amd (SVM) are the hardware
// ones, what users have; kvm_pvm is PVM, KVM on a paravirtual "CPU" with
// no VT-x or SVM at all (the nested tier's VM always has kvm_amd: QEMU's
// TCG emulates SVM).
var flavours = []string{"kvm_intel", "kvm_amd", "kvm_pvm"}

// UnknownFlavour is the flavour of a /dev/kvm with no known vendor module
// loaded (e.g. one built into the kernel without parameters).
const UnknownFlavour = "kvm_unknown"

// Flavour names the KVM flavour from the module names under /sys/module:
// the known vendor modules present, in a fixed order and joined with "+"
// should there be more than one (a PVM host may have kvm_intel too), else
// UnknownFlavour. Names use "_" as /sys/module does; "-" is accepted.
func Flavour(modules []string) string {
	have := map[string]bool{}
	for _, m := range modules {
		have[strings.ReplaceAll(m, "-", "_")] = true
	}
	var got []string
	for _, f := range flavours {
		if have[f] {
			got = append(got, f)
		}
	}
	if len(got) == 0 {
		return UnknownFlavour
	}
	return strings.Join(got, "+")
}

// LoadedModules lists the module names under dir (normally /sys/module),
// sorted.
func LoadedModules(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(ents))
	for _, e := range ents {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return names, nil
}

// HostFlavour is Flavour of this machine's /sys/module.
func HostFlavour() string {
	mods, _ := LoadedModules("/sys/module")
	return Flavour(mods)
}
