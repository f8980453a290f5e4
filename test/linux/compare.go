package linux

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// WaitTransition polls dir/transition (a Linux livepatch's directory
// under /sys/kernel/livepatch) until it reads 0: at once, then every
// 100 µs doubling to 2 ms (well under the transitions' times, which
// Linux's retry every second dominates). After a disable the directory
// goes when the transition completes (the patch is freed): with goneOK,
// gone counts as done, and so does ENODEV, which a read gets while the
// directory is being removed. Both comparisons time Linux's livepatch
// with it, in the L1 VM (test/compare-linux) and in a guest (here).
func WaitTransition(dir string, goneOK bool, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for wait := 100 * time.Microsecond; ; wait = min(2*wait, 2*time.Millisecond) {
		b, err := os.ReadFile(dir + "/transition")
		gone := errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ENODEV)
		switch {
		case err == nil && strings.TrimSpace(string(b)) == "0":
			return nil
		case gone && goneOK:
			return nil
		case err != nil && !gone:
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s/transition not 0 after %v (%q, %v)", dir, timeout, b, err)
		}
		time.Sleep(wait)
	}
}

// DeleteModule removes module name once its disabled patch is freed
// (until then delete_module says EBUSY or EAGAIN), within timeout.
func DeleteModule(name string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		err := unix.DeleteModule(name, unix.O_NONBLOCK)
		if err == nil {
			return nil
		}
		if !errors.Is(err, syscall.EBUSY) && !errors.Is(err, syscall.EAGAIN) || time.Now().After(deadline) {
			return fmt.Errorf("delete_module %s: %w", name, err)
		}
		time.Sleep(time.Millisecond)
	}
}

// CompareResult is one (vCPUs, mode) of TestLinuxCompare, every time in
// ns, one sample per cycle: the wire format its result lines carry to
// test/compare-linux's report (run.sh --linux-guest), which imports it.
type CompareResult struct {
	CPUs   int    `json:"cpus"`
	Mode   string `json:"mode"`   // "idle" or "busy"
	Kernel string `json:"kernel"` // the guest's uname -r
	// Linux's livepatch inside the guest (helper cycle, user space):
	// LinuxLoad is finit_module; LinuxEnable from finit_module's start
	// until transition reads 0; LinuxDisable from the write of 0 to
	// enabled until the transition is over (the patch's directory gone);
	// LinuxRmmod is delete_module.
	LinuxLoad    []int64 `json:"linux_load_ns"`
	LinuxEnable  []int64 `json:"linux_enable_ns"`
	LinuxDisable []int64 `json:"linux_disable_ns"`
	LinuxRmmod   []int64 `json:"linux_rmmod_ns"`
	// Linux's own view, the kernel log's timestamps (µs resolution):
	// KEnable from "enabling patch" to "patching complete" (the ftrace
	// registration and the transition with its retries); KDisable from
	// "initializing unpatching transition" to "unpatching complete" (the
	// transition and the ftrace unregistration); see kernelView.
	LinuxKEnable  []int64 `json:"linux_k_enable_ns,omitempty"`
	LinuxKDisable []int64 `json:"linux_k_disable_ns,omitempty"`
	// klp-kvm, from the host through the API: KlpLoad is the mode's
	// POST /patches (register and enable; the first of the boot also
	// opens the kernel); Enable and Disable are request to reply of each
	// cycle; their pause windows are linuxlive's Result.PauseWindow.
	KlpLoad          int64   `json:"klp_load_ns"`
	KlpEnable        []int64 `json:"klp_enable_ns"`
	KlpEnableWindow  []int64 `json:"klp_enable_window_ns"`
	KlpDisable       []int64 `json:"klp_disable_ns"`
	KlpDisableWindow []int64 `json:"klp_disable_window_ns"`
	KlpAttempts      int     `json:"klp_attempts"` // switch attempts over the cycles (2 per cycle when none was blocked)
	// The transitions alone (linuxlive's Result.Total: from the first
	// attempt's start to the switch, retries included), the counterpart
	// of Linux's kernel-log times, which leave out finit_module and sysfs
	// as these leave out the API's HTTP round trip.
	KlpEnableTransition  []int64 `json:"klp_enable_transition_ns,omitempty"`
	KlpDisableTransition []int64 `json:"klp_disable_transition_ns,omitempty"`
	// klp-kvm's counterpart of Linux's insmod and rmmod: load/unload
	// cycles after the disable/enable ones, POST /patches (register:
	// parse, link, map; enable) and its pause window, DELETE (disable,
	// unmap, free), request to reply.
	KlpLoads      []int64 `json:"klp_loads_ns"`
	KlpLoadWindow []int64 `json:"klp_load_window_ns"`
	KlpUnloads    []int64 `json:"klp_unloads_ns"`
}
