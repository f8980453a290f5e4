//go:build comparelinux

// Package comparelinux compares klp-kvm's switch with Linux's own
// livepatch, both measured inside the nested tier's VM (QEMU TCG, 2
// vCPUs, Debian's kernel): Linux live-patching its own
// cmdline_proc_show() with livepatch-sample.ko, and `klp-kvm bench
// --engine kvm` live-patching its guest on the VM's nested kvm_amd.
// run.sh prepares everything and runs TestCompareLinux; README.md says
// what is measured and how long it takes.
//
// Behind the build tag comparelinux, so `go test ./...` leaves it out.
// The same test binary runs on both sides: TestCompareLinux on the host
// builds it, boots the VM and prints the comparison; in the VM (where
// KLP_COMPARE_INVM=1) the TestInVM* tests measure and print their
// samples as result lines.
package comparelinux

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"

	"klp-kvm/latency"
)

// marker starts every result line the in-VM tests print.
const marker = "@@klp-compare "

// The two loads measured on each side.
const (
	modeIdle = "idle" // Linux: nothing else runs; klp-kvm: guest workers off (klp.workers=0)
	modeBusy = "busy" // Linux: a task per CPU reads /proc/cmdline in a loop; klp-kvm: workers that never sleep (klp.worker_sleep_ms=0)
)

// modes are the modes measured: KLP_COMPARE_MODES (default "idle busy").
var modes = func() []string {
	if v := strings.Fields(os.Getenv("KLP_COMPARE_MODES")); len(v) > 0 {
		return v
	}
	return []string{modeIdle, modeBusy}
}()

// benchCmdline is the klp-kvm guest's command line for each mode.
var benchCmdline = map[string]string{modeIdle: "klp.workers=0", modeBusy: "klp.worker_sleep_ms=0"}

// result is one result line: a mode's samples of one side.
type result struct {
	Kind string `json:"kind"` // "linux", "klp-kvm" or "info"
	Mode string `json:"mode,omitempty"`
	Info string `json:"info,omitempty"`
	CPUs int    `json:"cpus,omitempty"` // the VM's CPUs (Linux) = the guest's vCPUs (klp-kvm)
	// Kind "file": a file the host writes into its output directory
	// (Info is its name): TestInVMTrace's profiles.
	Data []byte `json:"data,omitempty"`

	// Linux, one sample per cycle (ns): Load is finit_module's duration
	// (load, relocate, klp_enable_patch up to the first try of the
	// transition); Enable is from finit_module to transition=0;
	// Transition from finit_module's return to transition=0 (the 1->0
	// of the brief, as user space sees it); Disable from the write of 0
	// to enabled to transition=0; Unload, from there to delete_module
	// done.
	Load       []int64 `json:"load_ns,omitempty"`
	Enable     []int64 `json:"enable_ns,omitempty"`
	Transition []int64 `json:"transition_ns,omitempty"`
	Disable    []int64 `json:"disable_ns,omitempty"`
	Unload     []int64 `json:"unload_ns,omitempty"`

	// Linux, timed inside the kernel by the module's callbacks
	// (module/livepatch-sample.c): KTransition from pre_patch (before
	// klp_patch_object, the ftrace registration) to post_patch
	// (klp_complete_transition), the enable transition with its text
	// change; KEnable from the module's init (before klp_enable_patch:
	// klp_init_patch's sysfs and symbol lookup too) to post_patch;
	// KDisable from pre_unpatch to post_unpatch.
	KTransition []int64 `json:"k_transition_ns,omitempty"`
	KEnable     []int64 `json:"k_enable_ns,omitempty"`
	KDisable    []int64 `json:"k_disable_ns,omitempty"`

	// klp-kvm: `klp-kvm bench --json` rows: Warm, one point of the
	// measured cycles; Cold, more points of one cycle each, for their
	// first enables (every row's FirstEnable and Register count).
	Warm []latency.Row `json:"warm,omitempty"`
	Cold []latency.Row `json:"cold,omitempty"`

	// klp-kvm, one sample per cycle of livepatch-sample, the counterpart
	// of Linux's cycle (TestInVMKlpKvmSample): SampleLoad is
	// Manager.Load (register: parse, symbols, dry layout; then the
	// enable, which lays the image out and writes it: Linux's
	// finit_module to transition 0); SampleEnable its enable's Result.Total;
	// SampleUnload is Manager.Unload (disable and unregister).
	SampleLoad   []int64 `json:"sample_load_ns,omitempty"`
	SampleEnable []int64 `json:"sample_enable_ns,omitempty"`
	SampleUnload []int64 `json:"sample_unload_ns,omitempty"`
}

func (r result) line() string {
	b, err := json.Marshal(r)
	if err != nil {
		return marker + `{"kind":"info","info":"unmarshallable result"}`
	}
	return marker + string(b)
}

// parseResult reads a result line anywhere in line (test2json framing
// may precede it); ok is false for other lines.
func parseResult(line string) (r result, ok bool, err error) {
	i := strings.Index(line, marker)
	if i < 0 {
		return result{}, false, nil
	}
	err = json.Unmarshal([]byte(strings.TrimSpace(line[i+len(marker):])), &r)
	return r, err == nil, err
}

// sides are the sides KLP_COMPARE_SIDES asks for (default both: "linux
// klp-kvm"); one side alone is for working on it, the comparison needs both.
func sides() map[string]bool {
	v := strings.Fields(os.Getenv("KLP_COMPARE_SIDES"))
	if len(v) == 0 {
		v = []string{"linux", "klp-kvm"}
	}
	m := map[string]bool{}
	for _, s := range v {
		m[s] = true
	}
	return m
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}
