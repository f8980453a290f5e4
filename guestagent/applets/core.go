package applets

import (
	"context"
	"errors"
	"path/filepath"

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
		"cat": cat.New, "chmod": chmod.New, "cp": cp.New, "ls": ls.New,
		"mkdir": mkdir.New, "mv": mv.New, "rm": rm.New, "touch": touch.New,
	} {
		register(coreApplet(mk), name)
	}
}

func coreApplet(mk func() core.Command) Func {
	return func(ctx context.Context, env *Env, args []string) int {
		c := mk()
		c.SetIO(env.Stdin, env.Stdout, env.Stderr)
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
		return 0
	}
}
