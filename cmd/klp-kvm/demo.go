package main

import (
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"klp-kvm/guestkernel"
	"klp-kvm/livepatch"
	"klp-kvm/vmm"
)

// cmdDemo is `klp-kvm demo`: the whole story on the embedded guest in one
// command — boot, show, patch, show, disable, show — with the pause
// window of each switch.
func cmdDemo(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	engineName := fs.String("engine", "auto", "execution engine: auto, kvm or emu")
	cpus := fs.Int("cpus", 2, "number of vCPUs")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 0 {
		fmt.Fprintf(stderr, "klp-kvm demo: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if err := runDemo(stdout, stderr, *engineName, *cpus); err != nil {
		fmt.Fprintf(stderr, "klp-kvm demo: %v\n", err)
		return 1
	}
	return 0
}

func runDemo(w, stderr io.Writer, engineName string, cpus int) error {
	step := func(format string, args ...any) { fmt.Fprintf(w, "\n==> "+format+"\n", args...) }
	step("booting the embedded guest kernel (%d vCPUs)", cpus)
	s, err := vmm.Boot(vmm.Config{Engine: engineName, CPUs: cpus, Cmdline: "console=ttyS0 klp.demo=1"})
	if err != nil {
		return err
	}
	defer s.Close()
	fmt.Fprintf(w, "%s; guest agent up after %v\n", s.EngineWhy, s.BootTime().Round(time.Millisecond))
	show := func(cmd string) error {
		out, err := s.Exec(cmd)
		fmt.Fprintf(w, "guest$ %s\n%s", cmd, indentOut(out))
		return err
	}
	if err := show("cat /proc/cmdline"); err != nil {
		return err
	}
	if err := show("ls /sys/kernel/livepatch"); err != nil {
		return err
	}
	obj, err := guestkernel.Patch("livepatch-sample")
	if err != nil {
		return err
	}
	step("loading livepatch-sample (replaces cmdline_proc_show)")
	p, res, err := s.Manager.Load(obj, "livepatch-sample.o", livepatch.Options{})
	if err != nil {
		return err
	}
	report(w, res)
	if err := show("cat /proc/cmdline"); err != nil {
		return err
	}
	dir := "/sys/kernel/livepatch/" + p.Name
	if err := show("ls " + dir); err != nil {
		return err
	}
	for _, f := range []string{"enabled", "transition", "force", "replace", "stack_order", "vmlinux/patched"} {
		if err := show("cat " + dir + "/" + f); err != nil {
			return err
		}
	}
	if err := show("ls " + dir + "/vmlinux"); err != nil {
		return err
	}
	step("disabling and unloading %s", p.Name)
	res, err = s.Manager.Disable(p.Name, livepatch.Options{})
	if err != nil {
		return err
	}
	report(w, res)
	if err := s.Manager.Unregister(p.Name); err != nil {
		return err
	}
	if err := show("cat /proc/cmdline"); err != nil {
		return err
	}
	if err := show("ls /sys/kernel/livepatch"); err != nil {
		return err
	}
	in := s.Machine.Info()
	step("done: %d pauses in all; patch area in use: %d bytes", in.Pauses, s.Manager.Status().PatchAreaInUse)
	return nil
}

func report(w io.Writer, r *livepatch.Result) {
	fmt.Fprintf(w, "%s %s: %d function(s) switched; pause window %v (all vCPUs stopped), %d attempt(s), %v end to end\n",
		r.Op, r.Patch, r.Funcs, r.PauseWindow.Round(time.Microsecond), r.Attempts, r.Total.Round(time.Microsecond))
}

func indentOut(s string) string {
	if s == "" {
		return ""
	}
	if !strings.HasSuffix(s, "\n") {
		s += "\n"
	}
	return "  " + strings.ReplaceAll(strings.TrimSuffix(s, "\n"), "\n", "\n  ") + "\n"
}
