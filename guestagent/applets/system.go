package applets

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

func init() {
	register(ps, "ps")
	register(dmesg, "dmesg")
	register(kill, "kill")
	register(mount, "mount")
	register(umount, "umount")
	register(halt, "poweroff", "reboot", "halt")
}

// Proc is one process as ps lists it, read from /proc/PID/stat and cmdline.
type Proc struct {
	PID, PPID int
	State     string
	Comm      string // the kernel's task name (stat's second field)
	Args      string // the command line, or [comm] for kernel threads
	Time      uint64 // utime+stime in clock ticks
	TTY       int
}

// ReadProcs lists the processes under proc (a procfs mount), by PID.
// Processes that exit while being read are skipped.
func ReadProcs(proc string) ([]Proc, error) {
	ents, err := os.ReadDir(proc)
	if err != nil {
		return nil, err
	}
	var out []Proc
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= 0 {
			continue
		}
		p, err := readProc(proc, pid)
		if err != nil {
			continue
		}
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].PID < out[j].PID })
	return out, nil
}

func readProc(proc string, pid int) (Proc, error) {
	dir := filepath.Join(proc, strconv.Itoa(pid))
	b, err := os.ReadFile(filepath.Join(dir, "stat"))
	if err != nil {
		return Proc{}, err
	}
	// comm is in parentheses and may itself contain ") ": split at the last
	s := string(b)
	l, r := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if l < 0 || r < l {
		return Proc{}, fmt.Errorf("%s/stat: malformed", dir)
	}
	p := Proc{PID: pid, Comm: s[l+1 : r]}
	f := strings.Fields(s[r+1:])
	if len(f) < 13 {
		return Proc{}, fmt.Errorf("%s/stat: %d fields", dir, len(f))
	}
	p.State = f[0]
	p.PPID, _ = strconv.Atoi(f[1])
	p.TTY, _ = strconv.Atoi(f[4])
	ut, _ := strconv.ParseUint(f[11], 10, 64)
	st, _ := strconv.ParseUint(f[12], 10, 64)
	p.Time = ut + st
	cl, _ := os.ReadFile(filepath.Join(dir, "cmdline"))
	cl = bytes.TrimRight(cl, "\x00")
	if len(cl) == 0 {
		p.Args = "[" + p.Comm + "]"
	} else {
		p.Args = string(bytes.ReplaceAll(cl, []byte{0}, []byte{' '}))
	}
	return p, nil
}

const clkTck = 100 // USER_HZ: what /proc reports times in on every Linux architecture

func cputime(t uint64) string {
	s := t / clkTck
	return fmt.Sprintf("%02d:%02d:%02d", s/3600, s/60%60, s%60)
}

func tty(nr int) string {
	if nr == 0 {
		return "?"
	}
	major, minor := (nr>>8)&0xfff, (nr&0xff)|((nr>>12)&0xfff00)
	switch major {
	case 4:
		if minor >= 64 {
			return fmt.Sprintf("ttyS%d", minor-64)
		}
		return fmt.Sprintf("tty%d", minor)
	case 136:
		return fmt.Sprintf("pts/%d", minor)
	case 5:
		return "console"
	}
	return fmt.Sprintf("%d,%d", major, minor)
}

// ps [-e|-A|ax|aux] [-f] [-o pid,ppid,stat,comm,args,time,tty]: every
// process is always listed (the guest has no login sessions to filter by);
// the default columns are procps' PID TTY TIME CMD, CMD being comm.
func ps(_ context.Context, env *Env, args []string) int {
	cols := []string{"pid", "tty", "time", "comm"}
	for i := 1; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "-e" || a == "-A" || a == "ax" || a == "-ax" || a == "aux" || a == "-aux":
			if strings.Contains(a, "u") {
				cols = []string{"user", "pid", "ppid", "stat", "tty", "time", "args"}
			}
		case a == "-f" || a == "-ef" || a == "-eF" || a == "-Af":
			cols = []string{"user", "pid", "ppid", "tty", "time", "args"}
		case a == "-o" && i+1 < len(args):
			i++
			cols = nil
			for _, c := range strings.Split(args[i], ",") {
				c = strings.TrimSpace(c)
				if c == "cmd" || c == "command" {
					c = "args"
				}
				if c == "ucomm" {
					c = "comm"
				}
				if _, ok := psHeader[c]; !ok {
					return env.usage("ps", "unknown output format %q (pid,ppid,user,stat,tty,time,comm,args)", c)
				}
				cols = append(cols, c)
			}
		default:
			return env.usage("ps", "unsupported option %q (-e, -f, -o LIST, aux)", a)
		}
	}
	procs, err := ReadProcs(env.proc())
	if err != nil {
		return env.errorf("ps", "%v", err)
	}
	var hdr []string
	for _, c := range cols {
		hdr = append(hdr, psHeader[c])
	}
	fmt.Fprintln(env.Stdout, strings.TrimRight(strings.Join(hdr, " "), " "))
	for _, p := range procs {
		var f []string
		for _, c := range cols {
			f = append(f, psField(p, c))
		}
		fmt.Fprintln(env.Stdout, strings.TrimRight(strings.Join(f, " "), " "))
	}
	return 0
}

var psHeader = map[string]string{"pid": "    PID", "ppid": "   PPID", "user": "UID ", "stat": "STAT",
	"tty": "TTY     ", "time": "    TIME", "comm": "CMD", "args": "CMD"}

func psField(p Proc, c string) string {
	switch c {
	case "pid":
		return fmt.Sprintf("%7d", p.PID)
	case "ppid":
		return fmt.Sprintf("%7d", p.PPID)
	case "user":
		return "root"
	case "stat":
		return fmt.Sprintf("%-4s", p.State)
	case "tty":
		return fmt.Sprintf("%-8s", tty(p.TTY))
	case "time":
		return cputime(p.Time)
	case "comm":
		return p.Comm
	}
	return p.Args
}

// dmesg [-r] [-c|-C]: the kernel log, without the <level> prefixes unless -r.
func dmesg(_ context.Context, env *Env, args []string) int {
	raw, action := false, unix.SYSLOG_ACTION_READ_ALL
	for _, a := range args[1:] {
		switch a {
		case "-r", "--raw":
			raw = true
		case "-c", "--read-clear":
			action = unix.SYSLOG_ACTION_READ_CLEAR
		case "-C", "--clear":
			if _, err := unix.Klogctl(unix.SYSLOG_ACTION_CLEAR, nil); err != nil {
				return env.errorf("dmesg", "clear: %v", err)
			}
			return 0
		default:
			return env.usage("dmesg", "unsupported option %q (-r, -c, -C)", a)
		}
	}
	size, err := unix.Klogctl(unix.SYSLOG_ACTION_SIZE_BUFFER, nil)
	if err != nil || size <= 0 || size > 1<<26 {
		size = 1 << 20
	}
	buf := make([]byte, size)
	n, err := unix.Klogctl(action, buf)
	if err != nil {
		return env.errorf("dmesg", "read kernel buffer failed: %v", err)
	}
	out := buf[:n]
	if !raw {
		var b bytes.Buffer
		for _, l := range bytes.SplitAfter(out, []byte("\n")) {
			if len(l) > 2 && l[0] == '<' {
				if i := bytes.IndexByte(l, '>'); i > 0 && i < 5 {
					l = l[i+1:]
				}
			}
			b.Write(l)
		}
		out = b.Bytes()
	}
	env.Stdout.Write(out)
	return 0
}

func signalByName(s string) (syscall.Signal, bool) {
	if n, err := strconv.Atoi(s); err == nil && n >= 0 && n < 65 {
		return syscall.Signal(n), true
	}
	s = strings.ToUpper(s)
	if !strings.HasPrefix(s, "SIG") {
		s = "SIG" + s
	}
	sig := unix.SignalNum(s)
	return sig, sig != 0
}

// kill [-s SIG | -SIG | -n N] PID... ; kill -l lists the signal names.
func kill(_ context.Context, env *Env, args []string) int {
	sig := syscall.SIGTERM
	args = args[1:]
	if len(args) > 0 && args[0] == "-l" {
		var n []string
		for i := 1; i < 32; i++ {
			n = append(n, strings.TrimPrefix(unix.SignalName(syscall.Signal(i)), "SIG"))
		}
		fmt.Fprintln(env.Stdout, strings.Join(n, " "))
		return 0
	}
	if len(args) > 0 && strings.HasPrefix(args[0], "-") && args[0] != "--" {
		name := args[0][1:]
		args = args[1:]
		if name == "s" || name == "n" {
			if len(args) == 0 {
				return env.usage("kill", "option requires an argument -- '%s'", name)
			}
			name, args = args[0], args[1:]
		}
		s, ok := signalByName(name)
		if !ok {
			return env.usage("kill", "unknown signal %q", name)
		}
		sig = s
	}
	if len(args) > 0 && args[0] == "--" {
		args = args[1:]
	}
	if len(args) == 0 {
		return env.usage("kill", "usage: kill [-s SIGNAL | -SIGNAL] PID...")
	}
	st := 0
	for _, a := range args {
		pid, err := strconv.Atoi(a)
		if err != nil {
			st = env.errorf("kill", "%s: arguments must be process or job IDs", a)
			continue
		}
		if err := unix.Kill(pid, sig); err != nil {
			st = env.errorf("kill", "(%d) - %v", pid, err)
		}
	}
	return st
}

var mountFlags = map[string]uintptr{"ro": unix.MS_RDONLY, "rw": 0, "nosuid": unix.MS_NOSUID, "nodev": unix.MS_NODEV,
	"noexec": unix.MS_NOEXEC, "remount": unix.MS_REMOUNT, "bind": unix.MS_BIND, "sync": unix.MS_SYNCHRONOUS,
	"noatime": unix.MS_NOATIME, "relatime": unix.MS_RELATIME, "defaults": 0}

// mount: without operands it prints /proc/mounts; else
// mount [-t TYPE] [-o OPT,...] [--bind] SOURCE DIR. Unknown -o options are
// passed to the filesystem as data.
func mount(_ context.Context, env *Env, args []string) int {
	var fstype string
	var flags uintptr
	var data, ops []string
	for i := 1; i < len(args); i++ {
		a := args[i]
		switch {
		case (a == "-t" || a == "-o") && i+1 < len(args):
			i++
			if a == "-t" {
				fstype = args[i]
				continue
			}
			for _, o := range strings.Split(args[i], ",") {
				if f, ok := mountFlags[o]; ok {
					flags |= f
				} else if o != "" {
					data = append(data, o)
				}
			}
		case a == "--bind":
			flags |= unix.MS_BIND
		case a == "-r":
			flags |= unix.MS_RDONLY
		case strings.HasPrefix(a, "-"):
			return env.usage("mount", "unsupported option %q (-t, -o, --bind, -r)", a)
		default:
			ops = append(ops, a)
		}
	}
	switch len(ops) {
	case 0:
		b, err := os.ReadFile(filepath.Join(env.proc(), "mounts"))
		if err != nil {
			return env.errorf("mount", "%v", err)
		}
		for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			f := strings.Fields(l)
			if len(f) >= 4 {
				fmt.Fprintf(env.Stdout, "%s on %s type %s (%s)\n", f[0], f[1], f[2], f[3])
			}
		}
		return 0
	case 2:
	default:
		return env.usage("mount", "usage: mount [-t TYPE] [-o OPTIONS] SOURCE DIR")
	}
	if err := unix.Mount(ops[0], env.path(ops[1]), fstype, flags, strings.Join(data, ",")); err != nil {
		return env.errorf("mount", "mounting %s on %s failed: %v", ops[0], ops[1], err)
	}
	return 0
}

// umount DIR...
func umount(_ context.Context, env *Env, args []string) int {
	if len(args) < 2 {
		return env.usage("umount", "usage: umount DIR...")
	}
	st := 0
	for _, d := range args[1:] {
		if err := unix.Unmount(env.path(d), 0); err != nil {
			st = env.errorf("umount", "%s: %v", d, err)
		}
	}
	return st
}

// Signals init (klp-agent as PID 1) takes as poweroff, reboot and halt
// requests, busybox's convention: init then syncs and stops the machine.
const (
	SigPoweroff = syscall.SIGUSR2
	SigReboot   = syscall.SIGTERM
	SigHalt     = syscall.SIGUSR1
)

// poweroff, reboot, halt [-f]: ask init (PID 1) to stop the machine; -f
// (or being PID 1) syncs and calls reboot(2) directly.
func halt(_ context.Context, env *Env, args []string) int {
	name := filepath.Base(args[0])
	force := false
	for _, a := range args[1:] {
		if a != "-f" {
			return env.usage(name, "unsupported option %q (-f)", a)
		}
		force = true
	}
	if force || os.Getpid() == 1 {
		unix.Sync()
		cmd := map[string]int{"poweroff": unix.LINUX_REBOOT_CMD_POWER_OFF, "reboot": unix.LINUX_REBOOT_CMD_RESTART,
			"halt": unix.LINUX_REBOOT_CMD_HALT}[name]
		if err := unix.Reboot(cmd); err != nil {
			return env.errorf(name, "%v", err)
		}
		return 0
	}
	sig := map[string]syscall.Signal{"poweroff": SigPoweroff, "reboot": SigReboot, "halt": SigHalt}[name]
	if err := unix.Kill(1, sig); err != nil {
		return env.errorf(name, "signal init: %v", err)
	}
	return 0
}
