// Command klp-kvm live-patches the kernel of a running KVM guest from the
// host. This file only dispatches subcommands; each lives in its own file,
// and the logic lives in the packages they call.
//
// Exit status: 0 ok, 1 operation refused or failed (the message names the
// errno; a missing or unreadable file is a failure too), 2 usage.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
)

type command struct {
	name    string
	summary string
	run     func(args []string, stdout, stderr io.Writer) int
}

func commands() []command {
	return []command{
		{"run", "boot a guest and serve the control API", cmdRun},
		{"patch", "load, enable, disable, unload and list live patches", cmdPatch},
		{"demo", "boot the embedded guest and live-patch it, start to finish", cmdDemo},
		{"bench", "measure patch switch latency (pause window, end to end)", cmdBench},
		{"exec", "run a guest shell command through the agent", cmdExec},
		{"sysfs", "ls, cat or write the guest's livepatch sysfs (a Linux guest's under /run/klp-kvm/livepatch)", cmdSysfs},
		{"status", "show the running machine", cmdStatus},
		{"stop", "stop the running machine", cmdStop},
		{"inspect", "offline: kernel symbols, fentry sites, patch plan", cmdInspect},
		{"build", "offline: build a patch object from a fix written as a diff", cmdBuild},
	}
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: klp-kvm COMMAND [flags]")
	fmt.Fprintln(w, "\ncommands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-9s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\n'klp-kvm COMMAND -h' shows a command's flags.")
}

func main() {
	os.Exit(dispatch(os.Args[1:], os.Stdout, os.Stderr))
}

func dispatch(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	switch args[0] {
	case "-h", "--help", "help":
		usage(stdout)
		return 0
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return c.run(args[1:], stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "klp-kvm: unknown command %q\n", args[0])
	usage(stderr)
	return 2
}

// parseInterleaved parses fs's flags wherever they stand among args:
// before, between or after the positional arguments, which it returns in
// order (`patch disable NAME --deadline 3s` is `patch --deadline 3s
// disable NAME`). "--" ends the flags: everything after it is positional.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if used := len(args) - len(rest); used > 0 && args[used-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}
