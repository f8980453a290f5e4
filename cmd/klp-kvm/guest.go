package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"klp-kvm/api"
	"klp-kvm/kvm/agent"
)

// cmdExec runs a guest shell command line through the agent:
// klp-kvm exec [--api SOCK] [--json] -- CMD...
func cmdExec(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("exec", flag.ContinueOnError)
	fs.SetOutput(stderr)
	sock := fs.String("api", "", "control API socket")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args); errors.Is(err, flag.ErrHelp) {
		return 0
	} else if err != nil {
		return 2
	}
	if fs.NArg() == 0 {
		fmt.Fprintln(stderr, "usage: klp-kvm exec [--api SOCK] [--json] -- CMD...")
		return 2
	}
	var res agent.ExecResult
	if code := call(stderr, *sock, func(ctx context.Context, c *api.Client) (err error) {
		res, err = c.Exec(ctx, strings.Join(fs.Args(), " "))
		return err
	}); code != 0 {
		return code
	}
	if *asJSON {
		return printJSON(stdout, res)
	}
	io.WriteString(stdout, res.Output)
	if res.Truncated {
		fmt.Fprintln(stderr, "klp-kvm: output truncated by the guest agent")
	}
	if res.Status != 0 {
		fmt.Fprintf(stderr, "klp-kvm: guest command exited with status %d\n", res.Status)
		return 1
	}
	return 0
}

// cmdSysfs reads and writes the guest's livepatch sysfs tree:
// klp-kvm sysfs ls [PATH] | cat PATH | write PATH VALUE [--api SOCK]
// A relative PATH is taken under the tree's root, which the server names
// (GET /guest/sysfs): /sys/kernel/livepatch in klp-kvm's own guest,
// /run/klp-kvm/livepatch in a Linux guest. Flags may stand anywhere;
// after "--" everything is an argument.
func cmdSysfs(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("sysfs", flag.ContinueOnError)
	fs.SetOutput(stderr)
	sock := fs.String("api", "", "control API socket")
	a, err := parseInterleaved(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		return 2
	}
	usage := func() int {
		fmt.Fprintln(stderr, "usage: klp-kvm sysfs [--api SOCK] ls [PATH] | cat PATH | write PATH VALUE")
		return 2
	}
	if len(a) == 0 {
		return usage()
	}
	switch {
	case a[0] == "ls" && len(a) <= 2:
		var res agent.ExecResult
		if code := call(stderr, *sock, func(ctx context.Context, c *api.Client) error {
			where, err := c.Sysfs(ctx)
			if err != nil {
				return err
			}
			p := where.Root
			if len(a) == 2 {
				p = api.SysfsPathUnder(where.Root, a[1])
			}
			res, err = c.Exec(ctx, where.List+" "+p)
			return err
		}); code != 0 {
			return code
		}
		io.WriteString(stdout, res.Output)
		if res.Status != 0 {
			return 1
		}
		return 0
	case a[0] == "cat" && len(a) == 2:
		var res api.FileReply
		if code := call(stderr, *sock, func(ctx context.Context, c *api.Client) error {
			where, err := c.Sysfs(ctx)
			if err != nil {
				return err
			}
			res, err = c.FileRead(ctx, api.SysfsPathUnder(where.Root, a[1]))
			return err
		}); code != 0 {
			return code
		}
		io.WriteString(stdout, res.Content)
		return 0
	case a[0] == "write" && len(a) == 3:
		return call(stderr, *sock, func(ctx context.Context, c *api.Client) error {
			where, err := c.Sysfs(ctx)
			if err != nil {
				return err
			}
			return c.FileWrite(ctx, api.SysfsPathUnder(where.Root, a[1]), a[2])
		})
	}
	return usage()
}
