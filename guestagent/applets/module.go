package applets

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// Module commands: the tests load modules into a Linux guest (Linux's own
// livepatch of the same function, for the comparison with klp-kvm's; a
// module whose kernel threads call a patched function), so the
// initramfs has insmod, rmmod and lsmod as kmod spells them for those
// uses. There is no modprobe: the initramfs has no /lib/modules.
func init() {
	register(insmod, "insmod")
	register(rmmod, "rmmod")
	register(lsmod, "lsmod")
}

// insmod FILE [PARAM=VALUE ...] loads FILE with finit_module(2), the
// parameters joined by spaces as kmod does.
func insmod(_ context.Context, env *Env, args []string) int {
	if len(args) < 2 {
		return env.errorf("insmod", "usage: insmod FILE [PARAM=VALUE ...]")
	}
	f, err := os.Open(env.path(args[1]))
	if err != nil {
		return env.errorf("insmod", "%v", err)
	}
	defer f.Close()
	if err := unix.FinitModule(int(f.Fd()), strings.Join(args[2:], " "), 0); err != nil {
		return env.errorf("insmod", "ERROR: could not insert module %s: %v", args[1], err)
	}
	return 0
}

// rmmod [-f] NAME... removes modules with delete_module(2), without
// waiting for a module in use (O_NONBLOCK, kmod's default).
func rmmod(_ context.Context, env *Env, args []string) int {
	flags, status := unix.O_NONBLOCK, 0
	names := args[1:]
	if len(names) > 0 && names[0] == "-f" {
		flags |= unix.O_TRUNC
		names = names[1:]
	}
	if len(names) == 0 {
		return env.errorf("rmmod", "usage: rmmod [-f] NAME...")
	}
	for _, n := range names {
		n = strings.TrimSuffix(n, ".ko")
		if i := strings.LastIndexByte(n, '/'); i >= 0 {
			n = n[i+1:]
		}
		if err := unix.DeleteModule(n, flags); err != nil {
			status = env.errorf("rmmod", "ERROR: could not remove module %s: %v", n, err)
		}
	}
	return status
}

// lsmod lists /proc/modules as lsmod(8) does.
func lsmod(_ context.Context, env *Env, args []string) int {
	f, err := os.Open(env.proc() + "/modules")
	if err != nil {
		return env.errorf("lsmod", "%v", err)
	}
	defer f.Close()
	fmt.Fprintf(env.Stdout, "%-19s %8s  %s\n", "Module", "Size", "Used by")
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// name size refcount users,... state address
		fl := strings.Fields(sc.Text())
		if len(fl) < 4 {
			continue
		}
		users := strings.TrimSuffix(fl[3], ",")
		if users == "-" {
			users = ""
		}
		fmt.Fprintf(env.Stdout, "%-19s %8s  %s %s\n", fl[0], fl[1], fl[2], users)
	}
	if err := sc.Err(); err != nil {
		return env.errorf("lsmod", "%v", err)
	}
	return 0
}
