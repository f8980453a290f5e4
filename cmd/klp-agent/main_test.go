package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"klp-kvm/kvm/agent"
)

// lockedBuf is the agent's stderr, read while the process still writes.
type lockedBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// build compiles klp-agent as the initramfs has it (static).
func build(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds klp-agent")
	}
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go toolchain")
	}
	out := filepath.Join(t.TempDir(), "klp-agent")
	cmd := exec.Command("go", "build", "-trimpath", "-o", out, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	return out
}

// openPTY returns a pty master and the slave's path.
func openPTY(t *testing.T) (*os.File, string) {
	fd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Skipf("no pty: %v", err)
	}
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	return os.NewFile(uintptr(fd), "ptmx"), fmt.Sprintf("/dev/pts/%d", n)
}

// TestServeOnPTY runs the built agent on a pty as if it were /dev/ttyS1
// (no PID-1 work) and drives it with the host's client through the
// master: this checks the raw mode (no echo of requests, no CR/LF
// translation) as well as the protocol.
func TestServeOnPTY(t *testing.T) {
	bin := build(t)
	master, slave := openPTY(t)
	defer master.Close()
	// the livepatch tree in a temporary directory, not the host's /run
	lpRoot := filepath.Join(t.TempDir(), "livepatch")
	cmd := exec.Command(bin, "serve", "--port", slave, "--livepatch-root", lpRoot)
	stderr := &lockedBuf{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	c := agent.New(master, agent.Options{Timeout: 20 * time.Second})
	ctx := context.Background()
	// the first request may arrive before the port is raw: retry the ping
	deadline := time.Now().Add(20 * time.Second)
	for {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		err := c.Ping(pctx)
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no ping: %v; agent stderr: %s", err, stderr.String())
		}
	}
	garbage := c.Stats().Garbage
	r, err := c.Exec(ctx, `echo one; printf 'a\r\nb\n'; uname -s`)
	if err != nil {
		t.Fatal(err)
	}
	if r.Output != "one\na\r\nb\nLinux\n" || r.Status != 0 {
		t.Errorf("exec over the pty: %+v", r)
	}
	if err := c.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	// the binary shows the host's livepatch tree where it is told
	if err := c.LivepatchTree(ctx, agent.Tree{Dirs: []string{"p"}, Files: []agent.TreeFile{{Path: "p/enabled", Data: "1\n", Mode: 0o644}}}); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(lpRoot, "p", "enabled")); err != nil || string(b) != "1\n" {
		t.Errorf("livepatch tree: %q %v", b, err)
	}
	if g := c.Stats().Garbage; g != garbage {
		t.Errorf("%d garbage lines after the port went raw (echo?)", g-garbage)
	}
	sfd, err := unix.Open(slave, unix.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(sfd)
	tio, err := unix.IoctlGetTermios(sfd, unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	if tio.Lflag&(unix.ECHO|unix.ICANON|unix.ISIG) != 0 || tio.Iflag&unix.ICRNL != 0 || tio.Oflag&unix.ONLCR != 0 ||
		tio.Cflag&unix.CSIZE != unix.CS8 || tio.Cflag&unix.PARENB != 0 || tio.Cflag&unix.CBAUD != unix.B115200 {
		t.Errorf("port not raw 8N1 115200: %+v", tio)
	}
	if !strings.Contains(stderr.String(), "ready on "+slave) {
		t.Errorf("no ready line: %q", stderr.String())
	}
}

// An applet runs by the name of the link to the binary.
func TestMultiCall(t *testing.T) {
	bin := build(t)
	dir := t.TempDir()
	for _, n := range []string{"cat", "sh", "grep"} {
		os.Symlink(bin, filepath.Join(dir, n))
	}
	os.WriteFile(filepath.Join(dir, "f"), []byte("x\ny\n"), 0o644)
	out, err := exec.Command(filepath.Join(dir, "cat"), filepath.Join(dir, "f")).Output()
	if err != nil || string(out) != "x\ny\n" {
		t.Errorf("cat by link: %q %v", out, err)
	}
	out, err = exec.Command(filepath.Join(dir, "sh"), "-c", "echo hi | grep -c h").Output()
	if err != nil || string(out) != "1\n" {
		t.Errorf("sh by link: %q %v", out, err)
	}
	out, err = exec.Command(bin, "grep", "y", filepath.Join(dir, "f")).Output()
	if err != nil || string(out) != "y\n" {
		t.Errorf("klp-agent grep: %q %v", out, err)
	}
	err = exec.Command(filepath.Join(dir, "grep"), "nomatch", filepath.Join(dir, "f")).Run()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Errorf("grep without a match: %v, want exit status 1", err)
	}
	if err := exec.Command(bin, "bogus").Run(); err == nil {
		t.Error("unknown applet succeeded")
	}
}
