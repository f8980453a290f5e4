package linux

import (
	"context"
	"strings"
	"testing"
	"time"

	"klp-kvm/kvm"
	"klp-kvm/vmm"
)

// TestLinuxGuestFtraceProbe (temporary diagnostic): the guest's own
// function tracer on one function, with no live patch at all.
func TestLinuxGuestFtraceProbe(t *testing.T) {
	skipNested(t)
	kernel := kernelImage(t)
	cmdline := kvm.DefaultLinuxCmdline + " quiet" + platformArgs()
	con := &syncBuffer{log: t.Logf}
	v, err := vmm.New(vmm.Config{Engine: engineName(), CPUs: 1, Kernel: kernel, Cmdline: cmdline, Console: con, BootTimeout: bootTimeout})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	v.Start()
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	if err := v.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []string{"mount -t tracefs tracefs /sys/kernel/tracing",
		"echo cmdline_proc_show > /sys/kernel/tracing/set_ftrace_filter",
		"echo function > /sys/kernel/tracing/current_tracer",
		"cat /proc/cmdline", "cat /sys/kernel/tracing/trace", "echo nop > /sys/kernel/tracing/current_tracer", "cat /proc/cmdline"} {
		t0 := time.Now()
		t.Logf("exec %q", cmd)
		out, err := v.Exec(cmd)
		t.Logf("-> %v %v: %s", time.Since(t0), err, tail(strings.TrimSpace(out), 5))
	}
}
