// Package applets is the command set of the Linux guest's initramfs: one
// multi-call binary (klp-agent) answers to every name in /bin, so the
// initramfs needs no busybox and no second download. Each applet is a Go
// function over an explicit environment (stdio, working directory), so the
// agent's shell runs them in-process (pipelines are goroutines) and the
// host's tests run them without a guest.
//
// File commands (cat, ls, cp, mkdir, mv, rm, chmod, touch) are u-root's
// importable pkg/core commands; the rest (ps, dmesg, uname, grep, head,
// kill, mount, sleep, echo, tail, wc, poweroff, reboot, ...) are small here, written
// for the flags people type: u-root ships those only as main packages.
package applets

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"sort"
)

// Env is what an applet runs with.
type Env struct {
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
	Dir    string // working directory: relative paths are resolved against it
	// Getenv looks up an environment variable (nil: none set).
	Getenv func(string) (string, bool)
	// Proc is the procfs mount ("/proc" when empty); tests point it elsewhere.
	Proc string
}

// Func runs one applet; args[0] is the name it was called by. It returns
// the exit status.
type Func func(ctx context.Context, env *Env, args []string) int

var registry = map[string]Func{}

func register(f Func, names ...string) {
	for _, n := range names {
		registry[n] = f
	}
}

// Lookup returns the applet called name (a path's base name counts).
func Lookup(name string) (Func, bool) {
	f, ok := registry[filepath.Base(name)]
	return f, ok
}

// Names lists every applet name, sorted (the initramfs links each one).
func Names() []string {
	n := make([]string, 0, len(registry))
	for k := range registry {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}

func (e *Env) path(p string) string {
	if filepath.IsAbs(p) || e.Dir == "" {
		return p
	}
	return filepath.Join(e.Dir, p)
}

func (e *Env) proc() string {
	if e.Proc == "" {
		return "/proc"
	}
	return e.Proc
}

func (e *Env) errorf(name, format string, args ...any) int {
	fmt.Fprintf(e.Stderr, "%s: %s\n", name, fmt.Sprintf(format, args...))
	return 1
}

// usage reports a usage error (status 2, as coreutils does).
func (e *Env) usage(name, format string, args ...any) int {
	e.errorf(name, format, args...)
	return 2
}
