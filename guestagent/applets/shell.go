package applets

import (
	"context"
	"errors"
	"io"
	"os"
	"strings"
	"time"

	"mvdan.cc/sh/v3/expand"
	"mvdan.cc/sh/v3/interp"
	"mvdan.cc/sh/v3/syntax"
)

func init() { register(shApplet, "sh") }

// abandonAfter is how long a script whose context ended still waits for
// an in-process applet (the grace an external program gets is a second).
const abandonAfter = 200 * time.Millisecond

// DefaultPath is the shell's PATH in the guest.
const DefaultPath = "/bin:/sbin:/usr/bin:/usr/sbin"

// Shell runs script with mvdan.cc/sh's POSIX interpreter. A command that
// names an applet runs in-process (so a pipeline of applets is a few
// goroutines, and the host's tests need no guest); anything else is
// executed from PATH. ctx ends the script: running applets see it, and
// external programs are killed (SIGINT, then SIGKILL after a second).
// The result is the exit status; a parse error is status 2, as in sh.
func Shell(ctx context.Context, env *Env, script string, params ...string) int {
	f, err := syntax.NewParser().Parse(strings.NewReader(script), "")
	if err != nil {
		env.errorf("sh", "%v", err)
		return 2
	}
	vars := []string{"PATH=" + DefaultPath, "HOME=/", "TERM=dumb"}
	if env.Getenv != nil {
		if p, ok := env.Getenv("PATH"); ok {
			vars[0] = "PATH=" + p
		}
	}
	opts := []interp.RunnerOption{
		interp.StdIO(env.Stdin, env.Stdout, env.Stderr),
		interp.Env(expand.ListEnviron(vars...)),
		interp.ExecHandlers(appletHandler(env.Proc), interpTimeoutKill),
		interp.CallHandler(overrideBuiltins),
	}
	if env.Dir != "" {
		opts = append(opts, interp.Dir(env.Dir))
	}
	if len(params) > 0 {
		opts = append(opts, interp.Params(append([]string{"--"}, params...)...))
	}
	r, err := interp.New(opts...)
	if err != nil {
		env.errorf("sh", "%v", err)
		return 2
	}
	err = r.Run(ctx, f)
	var es interp.ExitStatus
	switch {
	case err == nil:
		return 0
	case errors.As(err, &es):
		return int(es)
	case ctx.Err() != nil:
		return 124
	}
	env.errorf("sh", "%v", err)
	return 1
}

// overrideBuiltins sends the interpreter's builtins that it does not
// implement on Linux (kill) to the applet instead: a path is never a
// builtin name, so the call goes to the exec handlers.
func overrideBuiltins(_ context.Context, args []string) ([]string, error) {
	if len(args) > 0 && args[0] == "kill" {
		args = append([]string{"/bin/kill"}, args[1:]...)
	}
	return args, nil
}

// appletHandler runs applets in-process with the shell's current
// directory, environment and stdio.
func appletHandler(proc string) func(interp.ExecHandlerFunc) interp.ExecHandlerFunc {
	return func(next interp.ExecHandlerFunc) interp.ExecHandlerFunc {
		return func(ctx context.Context, args []string) error {
			f, ok := Lookup(args[0])
			if !ok || (strings.Contains(args[0], "/") && !strings.HasPrefix(args[0], "/bin/") &&
				!strings.HasPrefix(args[0], "/sbin/")) {
				return next(ctx, args)
			}
			hc := interp.HandlerCtx(ctx)
			in := hc.Stdin
			if in == nil {
				in = strings.NewReader("")
			}
			env := &Env{Stdin: in, Stdout: hc.Stdout, Stderr: hc.Stderr, Dir: hc.Dir, Proc: proc,
				Getenv: func(k string) (string, bool) {
					v := hc.Env.Get(k)
					return v.String(), v.IsSet()
				}}
			// An applet runs in this process, so it cannot be killed: one
			// blocked in a read or open that ignores ctx (cat of a FIFO
			// nobody writes) would hold the script, and the agent's reply,
			// forever. So the script stops waiting for it when ctx ends;
			// the goroutine is left to finish (or stay blocked) alone.
			done := make(chan int, 1)
			go func() { done <- f(ctx, env, args) }()
			var st int
			select {
			case st = <-done:
			case <-ctx.Done():
				select {
				case st = <-done:
				case <-time.After(abandonAfter):
					return ctx.Err()
				}
			}
			if st != 0 {
				return interp.ExitStatus(uint8(st))
			}
			return nil
		}
	}
}

// interpTimeoutKill is the default exec handler for programs outside the
// applet set, which is killed a second after the context ends.
func interpTimeoutKill(interp.ExecHandlerFunc) interp.ExecHandlerFunc {
	return interp.DefaultExecHandler(time.Second)
}

// sh -c SCRIPT [NAME [ARG...]] | sh FILE [ARG...] | sh (script on stdin)
func shApplet(ctx context.Context, env *Env, args []string) int {
	switch {
	case len(args) >= 3 && args[1] == "-c":
		var params []string
		if len(args) > 4 {
			params = args[4:]
		}
		return Shell(ctx, env, args[2], params...)
	case len(args) >= 2 && args[1] != "-c" && !strings.HasPrefix(args[1], "-"):
		b, err := os.ReadFile(env.path(args[1]))
		if err != nil {
			return env.errorf("sh", "%s: %v", args[1], unwrapPath(err))
		}
		return Shell(ctx, env, string(b), args[2:]...)
	case len(args) == 1 || args[1] == "-s":
		b, err := io.ReadAll(io.LimitReader(env.Stdin, 16<<20))
		if err != nil {
			return env.errorf("sh", "stdin: %v", err)
		}
		return Shell(ctx, env, string(b))
	}
	return env.usage("sh", "usage: sh [-c SCRIPT [NAME [ARG...]] | FILE [ARG...]]")
}
