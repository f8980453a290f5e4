package guestagent

import (
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"klp-kvm/guestagent/applets"
)

// OpenPort opens the agent's serial port (/dev/ttyS1) and puts it in raw
// mode: 115200 baud 8N1, no echo (the host would read its own requests
// back), no CR/NL translation either way (ICRNL would turn a request's
// \r into \n, ONLCR would add \r to every reply), no signals from
// control characters, no flow control; reads return as soon as a byte is
// there (VMIN 1, VTIME 0).
func OpenPort(path string) (*os.File, error) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, wrap("tty", ErrSetup, "open "+path, err)
	}
	if err := MakeRaw(fd); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), path), nil
}

// MakeRaw sets the terminal on fd as OpenPort describes.
func MakeRaw(fd int) error {
	t, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return wrap("tty", ErrSetup, "TCGETS", err)
	}
	t.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL |
		unix.IXON | unix.IXOFF | unix.IXANY
	t.Oflag &^= unix.OPOST | unix.ONLCR
	t.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	t.Cflag &^= unix.CSIZE | unix.PARENB | unix.CSTOPB | unix.CRTSCTS | unix.CBAUD
	t.Cflag |= unix.CS8 | unix.CREAD | unix.CLOCAL | unix.B115200
	t.Ispeed, t.Ospeed = unix.B115200, unix.B115200
	t.Cc[unix.VMIN], t.Cc[unix.VTIME] = 1, 0
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, t); err != nil {
		return wrap("tty", ErrSetup, "TCSETS", err)
	}
	return nil
}

// mounts are what /init mounts before anything else; an initramfs has
// only its unpacked files.
var mounts = []struct{ src, dir, fstype, data string }{
	{"proc", "/proc", "proc", ""},
	{"sysfs", "/sys", "sysfs", ""},
	{"devtmpfs", "/dev", "devtmpfs", ""},
	{"tmpfs", "/run", "tmpfs", "mode=0755"},
	{"tmpfs", "/tmp", "tmpfs", "mode=1777"},
}

// SetupInit does PID 1's first work: the pseudo filesystems (a mount
// that is already there, e.g. devtmpfs with CONFIG_DEVTMPFS_MOUNT, is
// fine) and /dev/console as stdin, stdout and stderr. It returns the
// first failure but tries every step.
func SetupInit() error {
	var first error
	for _, m := range mounts {
		os.MkdirAll(m.dir, 0o755)
		if err := unix.Mount(m.src, m.dir, m.fstype, unix.MS_NOSUID, m.data); err != nil && err != unix.EBUSY &&
			first == nil {
			first = wrap("init", ErrSetup, "mount "+m.dir, err)
		}
	}
	if b, err := os.ReadFile("/etc/hostname"); err == nil {
		if h := strings.TrimSpace(string(b)); h != "" {
			unix.Sethostname([]byte(h))
		}
	}
	if fd, err := unix.Open("/dev/console", unix.O_RDWR|unix.O_NOCTTY, 0); err == nil {
		for _, to := range []int{0, 1, 2} {
			unix.Dup2(fd, to)
		}
		if fd > 2 {
			unix.Close(fd)
		}
	} else if first == nil {
		first = wrap("init", ErrSetup, "open /dev/console", err)
	}
	return first
}

// RunInit is PID 1's loop after SetupInit. The agent itself runs as a
// child (argv, normally "/init serve ..."): PID 1 inherits every orphan
// and must wait for it, and a wait4(-1) in the agent's own process would
// steal the exit status of the programs its shell runs. So PID 1 only
// reaps, restarts the agent if it dies (once a second at most), and turns
// ShutdownSignals (poweroff, reboot, halt, or a SIGTERM from the kernel's
// ctrl-alt-del) into Shutdown. It does not return unless reboot(2) fails.
func RunInit(argv []string, logf func(string, ...any)) error {
	sigs := make(chan os.Signal, 8)
	NotifyShutdown(sigs)
	signal.Notify(sigs, syscall.SIGCHLD)
	var agentPID int
	var started time.Time
	// by its own path (/init), not /proc/self/exe: ps shows the name the
	// kernel took from the path
	exe, err := os.Executable()
	if err != nil {
		exe = "/proc/self/exe"
	}
	spawn := func() {
		if d := time.Second - time.Since(started); d > 0 {
			time.Sleep(d)
		}
		started = time.Now()
		p, err := os.StartProcess(exe, argv, &os.ProcAttr{Files: []*os.File{os.Stdin, os.Stdout, os.Stderr}})
		if err != nil {
			logf("klp-agent: start agent: %v", err)
			agentPID = 0
			return
		}
		agentPID = p.Pid
		p.Release() // this loop waits for it with wait4(-1)
	}
	spawn()
	// a failed start raises no SIGCHLD: retry on a timer too
	retry := time.NewTicker(5 * time.Second)
	defer retry.Stop()
	for {
		var s os.Signal
		select {
		case s = <-sigs:
		case <-retry.C:
			if agentPID == 0 {
				spawn()
			}
			continue
		}
		if mode, ok := ShutdownSignals[s]; ok {
			logf("klp-agent: %v: %s", s, mode)
			return Shutdown(mode)
		}
		for {
			var ws unix.WaitStatus
			pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
			if err != nil || pid <= 0 {
				break
			}
			if pid == agentPID {
				logf("klp-agent: agent exited (%v), restarting", exitString(ws))
				spawn()
			}
		}
		if agentPID == 0 {
			spawn()
		}
	}
}

func exitString(ws unix.WaitStatus) string {
	if ws.Signaled() {
		return "signal " + ws.Signal().String()
	}
	return "status " + strconv.Itoa(ws.ExitStatus())
}

// ShutdownSignals are the signals PID 1 takes as requests to stop.
var ShutdownSignals = map[os.Signal]string{applets.SigPoweroff: "poweroff", applets.SigReboot: "reboot",
	applets.SigHalt: "halt", syscall.SIGINT: "reboot"}

// Shutdown stops the machine: signal every other process, sync, and
// reboot(2) with mode's command. The VMM sees the reset or power-off as
// the guest stopping. It returns only if reboot(2) fails.
func Shutdown(mode string) error {
	unix.Kill(-1, unix.SIGTERM)
	unix.Sync()
	cmd := unix.LINUX_REBOOT_CMD_POWER_OFF
	switch mode {
	case "reboot":
		cmd = unix.LINUX_REBOOT_CMD_RESTART
	case "halt":
		cmd = unix.LINUX_REBOOT_CMD_HALT
	}
	return wrap("shutdown", ErrSetup, mode, unix.Reboot(cmd))
}

// NotifyShutdown relays ShutdownSignals to c.
func NotifyShutdown(c chan<- os.Signal) {
	for s := range ShutdownSignals {
		signal.Notify(c, s)
	}
}
