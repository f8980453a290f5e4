package e2e

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"klp-kvm/api"
	"klp-kvm/internal/klpbin"
	"klp-kvm/internal/poll"
)

// startRun starts `klp-kvm run` on the embedded guest with its API on a
// fresh socket and returns the command, its stderr and a client. The
// first request needs no wait beyond the socket: run holds it until the
// guest agent is ready.
func startRun(t *testing.T, args ...string) (*exec.Cmd, *bytes.Buffer, *api.Client) {
	t.Helper()
	bin := klpbin.Path(t)
	sock := filepath.Join(t.TempDir(), "api.sock")
	var stderr bytes.Buffer
	cmd := exec.Command(bin, append([]string{"run", "--engine", EngineName(), "--console", "none", "--api", sock}, args...)...)
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	poll.Until(t, "the API socket", func() bool { _, err := os.Stat(sock); return err == nil })
	return cmd, &stderr, api.NewClient(sock)
}

// TestRunSIGTERMDuringTransition: SIGTERM while an enable is blocked by a
// task parked in the patched function. run must let the transition end
// (here: roll back at its deadline, EBUSY to the caller) before it stops
// the guest, and the caller must get that answer, not a broken connection.
func TestRunSIGTERMDuringTransition(t *testing.T) {
	cmd, stderr, c := startRun(t)
	ctx := context.Background()
	// No sleep before the first request: it is held until the agent is up.
	if r, err := c.Exec(ctx, "park on"); err != nil || r.Status != 0 {
		t.Fatalf("park on, right after start: %+v %v\n%s", r, err, stderr)
	}
	poll.Until(t, "the parker to park", func() bool {
		r, err := c.Exec(ctx, "cat /proc/klp_selftest")
		return err == nil && strings.Contains(r.Output, "parked: 1\n")
	})
	rep, err := c.AddPatch(ctx, api.PatchRequest{Op: "register", Object: obj(t, "livepatch-park"), Name: "livepatch-park.o"})
	if err != nil {
		t.Fatal(err)
	}
	enabled := make(chan error, 1)
	go func() {
		_, err := c.Enable(ctx, rep.Patch, api.OpRequest{DeadlineMS: 3000})
		enabled <- err
	}()
	poll.Until(t, "the transition to start", func() bool {
		r, err := c.Exec(ctx, "cat /sys/kernel/livepatch/"+rep.Patch+"/transition")
		return err == nil && strings.TrimSpace(r.Output) == "1"
	})
	t0 := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	err = <-enabled
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Errno != syscall.EBUSY {
		t.Fatalf("enable interrupted by SIGTERM: %v (want the transition's own EBUSY)\n%s", err, stderr)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("run after SIGTERM: %v\n%s", err, stderr)
		}
	case <-time.After(40 * time.Second):
		t.Fatalf("run did not exit after SIGTERM\n%s", stderr)
	}
	t.Logf("enable ended with %v; run exited %v after SIGTERM", ae.Errno, time.Since(t0).Round(time.Millisecond))
	if !strings.Contains(stderr.String(), "finishing operations in progress") {
		t.Errorf("stderr does not say it drained:\n%s", stderr)
	}
}
