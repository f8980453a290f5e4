package linux

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// Console lines the guest init prints (through /dev/kmsg, so they reach
// the console by the kernel's polled console write whatever the UART's
// interrupts do). The host test matches them.
const (
	markerStart = "KLP-LINUX-INIT start"
	markerEnd   = "KLP-LINUX-INIT end"
	keyCmdline  = "KLP-LINUX-INIT cmdline="
	keyCPUs     = "KLP-LINUX-INIT cpus-online="
	keyText     = "KLP-LINUX-INIT text="
	keyKernel   = "KLP-LINUX-INIT kernel-code="
)

func TestMain(m *testing.M) {
	if os.Getpid() == 1 {
		guestInit()
		return
	}
	os.Exit(m.Run())
}

// guestInit is /init inside the guest: mount /proc and /sys, print the
// markers and what the host asserts on, and reboot (reboot=k: the i8042
// reset line, which stops the machine).
func guestInit() {
	kmsg, err := os.OpenFile("/dev/kmsg", os.O_WRONLY, 0)
	if err != nil {
		kmsg = os.Stdout // /dev/console
	}
	// KERN_ERR ("<3>"): the boots run with "quiet", whose console shows
	// only levels below 4, and a /dev/kmsg line without a level has the
	// default, 4.
	say := func(format string, args ...any) {
		fmt.Fprintf(kmsg, "<3>"+format+"\n", args...)
	}
	say("%s pid %d", markerStart, os.Getpid())
	for _, m := range []struct{ dir, fs string }{{"/proc", "proc"}, {"/sys", "sysfs"}} {
		os.MkdirAll(m.dir, 0o755)
		if err := unix.Mount(m.fs, m.dir, m.fs, 0, ""); err != nil {
			say("KLP-LINUX-INIT mount %s: %v", m.dir, err)
		}
	}
	read := func(p string) string {
		b, err := os.ReadFile(p)
		if err != nil {
			return "error: " + err.Error()
		}
		return strings.TrimSpace(string(b))
	}
	say("%s%s", keyCmdline, read("/proc/cmdline"))
	say("%s%s", keyCPUs, read("/sys/devices/system/cpu/online"))
	say("%s%s", keyText, kallsym(read("/proc/kallsyms"), "_text"))
	say("%s%s", keyKernel, iomemStart(read("/proc/iomem"), "Kernel code"))
	say(markerEnd)
	unix.Sync()
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART); err != nil {
		say("KLP-LINUX-INIT reboot: %v", err)
	}
	select {}
}

// kallsym returns the address of symbol name in /proc/kallsyms text.
func kallsym(kallsyms, name string) string {
	for _, l := range strings.Split(kallsyms, "\n") {
		f := strings.Fields(l)
		if len(f) >= 3 && f[2] == name {
			return f[0]
		}
	}
	return "none"
}

// iomemStart returns the start address of the /proc/iomem range named
// name (e.g. "  01000000-01e02d4f : Kernel code").
func iomemStart(iomem, name string) string {
	for _, l := range strings.Split(iomem, "\n") {
		rng, what, ok := strings.Cut(strings.TrimSpace(l), " : ")
		if ok && what == name {
			start, _, _ := strings.Cut(rng, "-")
			return start
		}
	}
	return "none"
}
