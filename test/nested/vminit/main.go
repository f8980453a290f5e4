//go:build linux

// Command vminit is /init of the nested tier's initramfs. Inside a Linux
// guest booted under QEMU TCG (which emulates AMD SVM) it loads the kvm
// modules, checks /dev/kvm and reports its KVM flavour (kvm_amd), runs each
// test binary of the manifest with KLP_KVM_ENGINE=kvm and
// -test.v=test2json, and powers the VM off.
//
// Output goes two ways: everything, readable, to the console (ttyS0, which
// the host streams into its test log), and the raw test output framed by
// manifest control lines to the result channel (ttyS1), which the host
// parses. As PID 1 it must never exit: whatever happens, it powers off.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"klp-kvm/test/nested/manifest"
)

const resultTTY = "/dev/ttyS1"

func main() {
	defer poweroff()
	defer func() {
		if r := recover(); r != nil {
			logf("vminit: panic: %v", r)
		}
	}()
	mountAll()
	go heartbeat()
	res := openResults()
	ok := run(res)
	emit(res, manifest.Event{Event: manifest.EventDone, OK: ok})
	logf("klp-nested: done, ok=%v", ok)
	drain(res)
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stdout, format+"\n", args...)
}

var resMu sync.Mutex

func emit(w io.Writer, e manifest.Event) {
	resMu.Lock()
	defer resMu.Unlock()
	fmt.Fprintln(w, e.Line())
}

// heartbeat tells the host the VM is alive, whatever the tests print.
func heartbeat() {
	line := manifest.Event{Event: manifest.EventAlive}.Line() + "\n"
	for {
		os.Stdout.WriteString(line)
		time.Sleep(manifest.HeartbeatInterval)
	}
}

func mountAll() {
	for _, m := range []struct{ src, dst, fstype string }{
		{"proc", "/proc", "proc"},
		{"sysfs", "/sys", "sysfs"},
		{"devtmpfs", "/dev", "devtmpfs"},
		{"tmpfs", "/tmp", "tmpfs"},
	} {
		os.MkdirAll(m.dst, 0o755)
		if err := unix.Mount(m.src, m.dst, m.fstype, 0, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			logf("vminit: mount %s: %v", m.dst, err)
		}
	}
}

// openResults opens ttyS1 with output post-processing off, so "\n" is not
// turned into "\r\n" and the bytes arrive as written. Without ttyS1 the
// console carries the control lines too (the host then finds none in its
// result file and says so).
func openResults() *os.File {
	f, err := os.OpenFile(resultTTY, os.O_WRONLY|unix.O_NOCTTY, 0)
	if err != nil {
		logf("vminit: %s: %v; results go to the console", resultTTY, err)
		return os.Stdout
	}
	if t, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS); err == nil {
		t.Oflag &^= unix.OPOST
		unix.IoctlSetTermios(int(f.Fd()), unix.TCSETS, t)
	}
	return f
}

// drain waits until the UART has sent everything (tcdrain).
func drain(f *os.File) {
	unix.IoctlSetInt(int(f.Fd()), unix.TCSBRK, 1)
}

func poweroff() {
	unix.Sync()
	// LINUX_REBOOT_CMD_POWER_OFF: QEMU exits (ACPI). Should it fail,
	// panic=-1 and -no-reboot end QEMU when PID 1 exits.
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
		logf("vminit: power off: %v", err)
	}
	os.Exit(1)
}

func run(res *os.File) bool {
	uname := unix.Utsname{}
	unix.Uname(&uname)
	flags := cpuFlags()
	emit(res, manifest.Event{Event: manifest.EventBoot, Info: fmt.Sprintf("kernel %s, %d cpus, svm=%v vmx=%v",
		unix.ByteSliceToString(uname.Release[:]), runtime.NumCPU(), flags["svm"], flags["vmx"])})
	logf("klp-nested: kernel %s, %d cpus, svm=%v vmx=%v", unix.ByteSliceToString(uname.Release[:]), runtime.NumCPU(), flags["svm"], flags["vmx"])

	raw, err := os.ReadFile(manifest.Path)
	if err != nil {
		emit(res, manifest.Event{Event: manifest.EventKVM, Error: "manifest: " + err.Error()})
		return false
	}
	var m manifest.Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		emit(res, manifest.Event{Event: manifest.EventKVM, Error: "manifest: " + err.Error()})
		return false
	}
	for _, name := range m.Modules {
		base := strings.TrimSuffix(name, ".ko")
		if (base == "kvm-intel" && !flags["vmx"]) || (base == "kvm-amd" && !flags["svm"]) {
			continue // would fail with ENODEV/EIO: no such virtualization extension here
		}
		err := loadModule(filepath.Join(m.ModulesDir, name))
		e := manifest.Event{Event: manifest.EventModule, Name: name}
		if err != nil {
			e.Error = err.Error()
			logf("klp-nested: module %s: %v", name, err)
		}
		emit(res, e)
	}
	if err := checkKVM(); err != nil {
		emit(res, manifest.Event{Event: manifest.EventKVM, Error: err.Error()})
		logf("klp-nested: %v", err)
		return false
	}
	// The KVM flavour: which vendor module /dev/kvm is (kvm_amd under
	// QEMU's emulated SVM), so the host names the tier after it.
	flavour := manifest.HostFlavour()
	emit(res, manifest.Event{Event: manifest.EventKVM, OK: true, Flavour: flavour})
	logf("klp-nested: /dev/kvm ok, KVM flavour %s", flavour)
	ok := true
	for _, b := range m.Tests {
		if !runBinary(res, &m, b) {
			ok = false
		}
	}
	return ok
}

func cpuFlags() map[string]bool {
	flags := map[string]bool{}
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return flags
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "flags" {
			for _, f := range strings.Fields(v) {
				flags[f] = true
			}
			break
		}
	}
	return flags
}

// loadModule loads a decompressed .ko with finit_module. Parameters would
// go in the second argument: the kernel command line does not reach
// modules loaded this way.
func loadModule(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.FinitModule(int(f.Fd()), "", 0); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("finit_module %s: %w", path, err)
	}
	return nil
}

func checkKVM() error {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("/dev/kvm: %w", err)
	}
	f.Close()
	return nil
}

// runBinary runs one test binary; its combined output is copied raw to the
// result channel and, without test2json's ^V framing bytes, to the console.
func runBinary(res *os.File, m *manifest.Manifest, b manifest.Binary) bool {
	timeout := time.Duration(m.TimeoutSecs) * time.Second
	if timeout <= 0 {
		timeout = 5 * time.Minute
	}
	args := append([]string{"-test.v=test2json", "-test.count=1", fmt.Sprintf("-test.timeout=%s", timeout)}, b.Args...)
	cmd := exec.Command(filepath.Join("/klp-nested/bin", b.Name), args...)
	cmd.Dir = b.Dir
	os.MkdirAll(cmd.Dir, 0o755)
	cmd.Env = append([]string{"PATH=/klp-nested/bin:/bin", "HOME=/tmp", "TMPDIR=/tmp", "KLP_KVM_ENGINE=kvm", "GOTRACEBACK=all"}, m.Env...)
	pr, pw, err := os.Pipe()
	if err != nil {
		emit(res, manifest.Event{Event: manifest.EventEnd, Name: b.Name, Pkg: b.Pkg, Exit: -1, Error: err.Error()})
		return false
	}
	cmd.Stdout, cmd.Stderr = pw, pw

	emit(res, manifest.Event{Event: manifest.EventBegin, Name: b.Name, Pkg: b.Pkg})
	logf("klp-nested: running %s (%s)", b.Name, b.Pkg)
	start := time.Now()
	if err := cmd.Start(); err != nil {
		pw.Close()
		pr.Close()
		emit(res, manifest.Event{Event: manifest.EventEnd, Name: b.Name, Pkg: b.Pkg, Exit: -1, Error: err.Error()})
		return false
	}
	pw.Close()
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		r := bufio.NewReaderSize(pr, 64<<10)
		for {
			line, err := r.ReadBytes('\n')
			if len(line) > 0 {
				if line[len(line)-1] != '\n' {
					line = append(line, '\n') // keep control lines on their own line
				}
				resMu.Lock()
				res.Write(line)
				resMu.Unlock()
				// The console copy is for people: no framing bytes, no
				// test2json "=== NAME" bookkeeping lines.
				if human := bytes.ReplaceAll(line, []byte{0x16}, nil); !bytes.HasPrefix(human, []byte("=== NAME")) {
					os.Stdout.Write(human)
				}
			}
			if err != nil {
				return
			}
		}
	}()
	// -test.timeout makes a hung test panic with all goroutines' stacks;
	// the kill is the backstop for a binary stuck where that cannot help.
	var killed atomic.Bool
	timer := time.AfterFunc(timeout+30*time.Second, func() {
		killed.Store(true)
		cmd.Process.Kill()
	})
	err = cmd.Wait()
	timer.Stop()
	<-copied
	pr.Close()
	e := manifest.Event{Event: manifest.EventEnd, Name: b.Name, Pkg: b.Pkg, ElapsedMS: time.Since(start).Milliseconds()}
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			e.Exit = ee.ExitCode()
			if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				e.Error = "killed by " + ws.Signal().String()
			}
		} else {
			e.Exit = -1
			e.Error = err.Error()
		}
	}
	if killed.Load() {
		e.Error = fmt.Sprintf("killed after %v", timeout+30*time.Second)
	}
	emit(res, e)
	logf("klp-nested: %s exit %d in %v %s", b.Name, e.Exit, time.Since(start).Round(time.Millisecond), e.Error)
	return e.Exit == 0 && e.Error == ""
}
