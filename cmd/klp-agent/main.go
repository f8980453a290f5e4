// Command klp-agent is the Linux guest's side of klp-kvm: the guest agent
// (package guestagent) and, as one multi-call binary, the initramfs's
// /init, its shell and its commands (package guestagent/applets).
//
//	/init                          PID 1: mounts, console, reaping; runs "serve" as a child
//	klp-agent serve [--port PATH]  the agent on a serial port (default /dev/ttyS1),
//	                               showing the host's live patches under /run/klp-kvm/livepatch
//	                               (--livepatch-root DIR, "" for none)
//	klp-agent serve --stdio        the agent on stdin/stdout (tests)
//	klp-agent APPLET [ARG...]      an applet; /bin/NAME links call it by name
//
// One binary, not one per command: the Go runtime and the shell would be
// in every one of them (about 2 MB each), and the initramfs stays one
// small file plus links.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"klp-kvm/guestagent"
	"klp-kvm/guestagent/applets"
	"klp-kvm/kvm/agent"
)

func main() { os.Exit(run(os.Args)) }

func run(args []string) int {
	name := filepath.Base(args[0])
	if os.Getpid() == 1 && (name == "init" || name == "klp-agent") {
		return initMain()
	}
	if name == "klp-agent" || name == "init" {
		if len(args) < 2 {
			fmt.Fprintln(os.Stderr, "usage: klp-agent serve [--port PATH | --stdio] [--init-child] | klp-agent APPLET [ARG...]")
			return 2
		}
		args = args[1:]
		name = args[0]
	}
	if name == "serve" {
		return serve(args[1:])
	}
	f, ok := applets.Lookup(name)
	if !ok {
		fmt.Fprintf(os.Stderr, "klp-agent: %s: no such applet\n", name)
		return 127
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	wd, _ := os.Getwd()
	return f(ctx, &applets.Env{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr, Dir: wd, Getenv: os.LookupEnv}, args)
}

func logf(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }

func initMain() int {
	if err := guestagent.SetupInit(); err != nil {
		logf("klp-agent: %v", err) // carry on: the agent may still work
	}
	os.Setenv("PATH", applets.DefaultPath)
	err := guestagent.RunInit([]string{"klp-agent", "serve", "--init-child"}, logf)
	logf("klp-agent: %v", err)
	return 1
}

func serve(args []string) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	port := fs.String("port", "/dev/ttyS1", "the agent's serial port")
	stdio := fs.Bool("stdio", false, "serve on stdin/stdout instead of a port")
	initChild := fs.Bool("init-child", false, "run under klp-agent's PID 1: guest-shutdown stops the machine")
	lpRoot := fs.String("livepatch-root", agent.LinuxLivepatchRoot, `where to show the host's live patches ("" for nowhere)`)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	opts := guestagent.Options{Log: logf, Ready: !*stdio, LivepatchRoot: *lpRoot}
	if *lpRoot != "" {
		// the outcome of each forwarded write goes to the kernel log
		if k, err := os.OpenFile("/dev/kmsg", os.O_WRONLY, 0); err == nil {
			defer k.Close()
			opts.Kmsg = k
		} else {
			logf("klp-agent: %v (livepatch writes are logged on the console only)", err)
		}
	}
	if *initChild {
		opts.Shutdown = func(mode string) {
			logf("klp-agent: guest-shutdown: %s", mode)
			if err := guestagent.Shutdown(mode); err != nil {
				logf("klp-agent: %v", err)
			}
		}
	}
	a := guestagent.New(opts)
	in, out := os.Stdin, os.Stdout
	where := "stdin/stdout"
	if !*stdio {
		f, err := guestagent.OpenPort(*port)
		if err != nil {
			logf("klp-agent: %v", err)
			return 1
		}
		defer f.Close()
		in, out, where = f, f, *port
	}
	logf("klp-agent: ready on %s (%s, %s)", where, guestagent.Release(), guestagent.Version)
	if err := a.Serve(context.Background(), in, out); err != nil {
		logf("klp-agent: %v", err)
		return 1
	}
	return 0
}
