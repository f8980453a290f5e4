package applets

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/u-root/u-root/pkg/core"
	"github.com/u-root/u-root/pkg/core/cat"
	"github.com/u-root/u-root/pkg/core/chmod"
	"github.com/u-root/u-root/pkg/core/cp"
	"github.com/u-root/u-root/pkg/core/ls"
	"github.com/u-root/u-root/pkg/core/mkdir"
	"github.com/u-root/u-root/pkg/core/mv"
	"github.com/u-root/u-root/pkg/core/rm"
	"github.com/u-root/u-root/pkg/core/touch"
)

// u-root's pkg/core commands take their stdio, directory and environment
// through core.Command, which is exactly what an in-process applet needs.
func init() {
	for name, mk := range map[string]func() core.Command{
		"cat": cat.New, "chmod": chmod.New, "cp": cp.New,
		"mkdir": mkdir.New, "mv": mv.New, "rm": rm.New, "touch": touch.New,
	} {
		register(coreApplet(mk), name)
	}
	register(lsApplet, "ls")
}

// lsApplet checks ls's operands first: u-root's ls prints a missing one's
// error on stdout and exits 0, where GNU ls says so on stderr and exits 2.
func lsApplet(ctx context.Context, env *Env, args []string) int {
	keep := []string{args[0]}
	operands, missing := 0, 0
	for i, a := range args[1:] {
		if a == "--" || (strings.HasPrefix(a, "-") && a != "-") {
			if a == "--" {
				keep = append(keep, args[i+1:]...)
				break
			}
			keep = append(keep, a)
			continue
		}
		operands++
		if _, err := os.Lstat(env.path(a)); err != nil {
			env.errorf("ls", "cannot access '%s': %v", a, unwrapPath(err))
			missing++
			continue
		}
		keep = append(keep, a)
	}
	st := 0
	if operands == 0 || missing < operands {
		st = coreApplet(ls.New)(ctx, env, keep)
	}
	if missing > 0 {
		return 2
	}
	return st
}

func coreApplet(mk func() core.Command) Func {
	return func(ctx context.Context, env *Env, args []string) int {
		c := mk()
		// Some of them (ls) report a missing operand on stderr and still
		// return nil; coreutils exits non-zero then, and scripts test it.
		stderr := &countingWriter{w: env.Stderr}
		c.SetIO(env.Stdin, env.Stdout, stderr)
		if env.Dir != "" {
			c.SetWorkingDir(env.Dir)
		}
		if env.Getenv != nil {
			c.SetLookupEnv(env.Getenv)
		}
		if err := c.RunContext(ctx, args[1:]...); err != nil {
			// some commands report "help" or usage as an error; all say what
			if !errors.Is(err, context.Canceled) {
				env.errorf(filepath.Base(args[0]), "%v", err)
			}
			return 1
		}
		if stderr.n > 0 {
			if filepath.Base(args[0]) == "ls" {
				return 2 // GNU ls: "serious trouble", e.g. a missing operand
			}
			return 1
		}
		return 0
	}
}

type countingWriter struct {
	w io.Writer
	n int
}

func (c *countingWriter) Write(p []byte) (int, error) {
	c.n += len(p)
	return c.w.Write(p)
}
