package linux

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"klp-kvm/kvm"
	"klp-kvm/linuxkernel"
	"klp-kvm/vmm"
)

// linuxDefaultText is _text of Debian's x86-64 kernel without KASLR.
const linuxDefaultText = 0xffffffff81000000

// TestLinuxAgent boots Debian's kernel with klp-kvm's own initramfs (the
// agent as PID 1) through vmm, as `klp-kvm run --kernel vmlinuz` does,
// talks to the agent, and reads the kernel from the host with no help
// from the guest; what the host read is checked against what the guest
// itself says (/proc/kallsyms, ps). KASLR on with two vCPUs, off with one.
func TestLinuxAgent(t *testing.T) {
	for _, tc := range []struct {
		name  string
		cpus  int
		kaslr bool
	}{{"kaslr-2cpu", 2, true}, {"nokaslr-1cpu", 1, false}} {
		t.Run(tc.name, func(t *testing.T) {
			skipNested(t)
			kernel := kernelImage(t)
			cmdline := kvm.DefaultLinuxCmdline + " quiet klp.token=agent-" + tc.name + platformArgs()
			if !tc.kaslr {
				cmdline += " nokaslr"
			}
			con := &syncBuffer{log: t.Logf}
			v := startReady(t, vmm.Config{Engine: engineName(), CPUs: tc.cpus, Kernel: kernel, Cmdline: cmdline,
				Console: con, BootTimeout: bootTimeout}, con)
			ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
			defer cancel()
			t.Logf("%s: boot to agent-ready %v", v.EngineWhy, v.BootTime().Round(time.Millisecond))

			exec := func(cmd string) string {
				t.Helper()
				out, err := v.Exec(cmd)
				if err != nil {
					t.Fatalf("exec %q: %v", cmd, err)
				}
				return out
			}
			if got := strings.TrimSpace(exec("cat /proc/cmdline")); got != cmdline {
				t.Errorf("guest /proc/cmdline %q, want %q", got, cmdline)
			}
			wantCPUs := "0"
			if tc.cpus > 1 {
				wantCPUs = fmt.Sprintf("0-%d", tc.cpus-1)
			}
			if got := strings.TrimSpace(exec("cat /sys/devices/system/cpu/online")); got != wantCPUs {
				t.Errorf("guest CPUs online %q, want %q", got, wantCPUs)
			}

			// The host's reading, with the guest paused and asked nothing.
			t0 := time.Now()
			rep, err := v.Kernel.InspectKernel(ctx, []string{"cmdline_proc_show"})
			if err != nil {
				t.Fatalf("inspect: %v", err)
			}
			t.Logf("inspect --live: %v; release %s, KASLR offset %#x (%s), %d symbols (%s), %d BTF types, %d tasks, %d threads",
				time.Since(t0).Round(time.Millisecond), rep.Release, rep.KASLROffset, rep.KASLRSource, rep.Symbols,
				rep.SymbolSource, rep.BTFTypes, len(rep.Tasks), rep.Threads)

			// ... against the guest's own view.
			kallsyms := exec("grep -w -e _text -e cmdline_proc_show /proc/kallsyms")
			text, site := kallsymsAddr(t, kallsyms, "_text"), kallsymsAddr(t, kallsyms, "cmdline_proc_show")
			if want := text - linuxDefaultText; rep.KASLROffset != want {
				t.Errorf("host KASLR offset %#x, the guest's _text %#x says %#x", rep.KASLROffset, text, want)
			}
			if tc.kaslr && text == linuxDefaultText {
				t.Logf("KASLR chose the default address (about 1 boot in 500)")
			}
			if !tc.kaslr && text != linuxDefaultText {
				t.Errorf("nokaslr, yet _text is %#x", text)
			}
			if rep.SymbolSource != linuxkernel.SourceKallsyms || rep.Symbols < 10000 {
				t.Errorf("symbols: %d from %q, want the guest's kallsyms", rep.Symbols, rep.SymbolSource)
			}
			if rep.BTFTypes < 1000 || rep.BTFError != "" {
				t.Errorf("BTF: %d types, error %q", rep.BTFTypes, rep.BTFError)
			}
			if len(rep.Fentry) != 1 {
				t.Fatalf("fentry sites %+v (errors %v), want cmdline_proc_show's", rep.Fentry, rep.FentryErrors)
			}
			f := rep.Fentry[0]
			if f.Func != "cmdline_proc_show" || f.Addr != site || f.Kind != linuxkernel.FentryNop {
				t.Errorf("fentry %+v, want cmdline_proc_show at %#x (guest kallsyms) with a NOP", f, site)
			}
			checkTasks(t, rep.Tasks, exec("ps -e"))
		})
	}
}

// kallsymsAddr is name's address in /proc/kallsyms lines.
func kallsymsAddr(t *testing.T, kallsyms, name string) uint64 {
	t.Helper()
	for _, l := range strings.Split(kallsyms, "\n") {
		f := strings.Fields(l)
		if len(f) >= 3 && f[2] == name {
			a, err := strconv.ParseUint(f[0], 16, 64)
			if err != nil {
				t.Fatalf("kallsyms line %q: %v", l, err)
			}
			return a
		}
	}
	t.Fatalf("no %s in the guest's kallsyms:\n%s", name, kallsyms)
	return 0
}

// checkTasks compares the task list the host read with the guest's ps,
// run after it: every process ps lists with a pid the host had seen
// allocated must be in the host's list under the same name (ps may add a
// workqueue suffix to a kworker's), and the host's may only lack the
// processes that exited in between (none expected in an idle guest; two
// allowed).
func checkTasks(t *testing.T, tasks []linuxkernel.Task, ps string) {
	t.Helper()
	host := map[int32]string{}
	var maxPid int32
	for _, tk := range tasks {
		if tk.Pid != tk.Tgid {
			continue // a thread; ps -e lists processes
		}
		host[tk.Pid] = tk.Comm
		maxPid = max(maxPid, tk.Pid)
	}
	guest := map[int32]string{}
	for _, l := range strings.Split(ps, "\n")[1:] {
		f := strings.Fields(l)
		if len(f) < 4 {
			continue
		}
		pid, err := strconv.Atoi(f[0])
		if err != nil {
			t.Fatalf("ps line %q", l)
		}
		guest[int32(pid)] = strings.Join(f[3:], " ")
	}
	matched, gone := 0, 0
	for pid, comm := range host {
		g, ok := guest[pid]
		switch {
		case !ok && pid != 0:
			gone++
			t.Logf("host task %d (%s) not in ps (exited in between?)", pid, comm)
		case ok && !strings.HasPrefix(g, comm):
			t.Errorf("pid %d: host read comm %q, ps says %q", pid, comm, g)
		case ok:
			matched++
		}
	}
	for pid, comm := range guest {
		if _, ok := host[pid]; !ok && pid <= maxPid {
			t.Errorf("ps lists pid %d (%s), which the host's task list lacks", pid, comm)
		}
	}
	t.Logf("tasks: %d processes read by the host, %d in ps, %d matched by pid and name, %d gone", len(host), len(guest), matched, gone)
	if matched < 20 || gone > 2 {
		t.Errorf("only %d of the host's %d processes matched ps (%d gone)", matched, len(host), gone)
	}
}
