package e2e

import (
	"bytes"
	"context"
	"encoding/json"
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
	"klp-kvm/kvm"
)

// TestRunCLI drives `klp-kvm run` as a user would: boot the test guest,
// read its console, query and pause it through the API socket, stop it.
func TestRunCLI(t *testing.T) {
	bin := klpbin.Path(t)
	dir := t.TempDir()
	kernel := filepath.Join(dir, "bootguest")
	if err := os.WriteFile(kernel, bootGuest, 0o644); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "api.sock")

	t.Run("poweroff", func(t *testing.T) {
		var stdout, stderr bytes.Buffer
		cmd := exec.Command(bin, "run", "--engine", EngineName(), "--cpus", "2", "--kernel", kernel, "--cmdline", "loops=1000", "--api", sock)
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
			t.Fatalf("exit: %v, want status 1 for a guest code of 42; stderr:\n%s", err, stderr.String())
		}
		if !strings.Contains(stderr.String(), "guest powered off with code 42") || !strings.Contains(stderr.String(), "engine "+EngineName()) {
			t.Errorf("stderr:\n%s", stderr.String())
		}
		for _, want := range []string{"cpu 0 up\n", "cpu 1 up\n", "counter 00000000000007d0\n"} {
			if !strings.Contains(stdout.String(), want) {
				t.Errorf("console lacks %q:\n%s", want, stdout.String())
			}
		}
	})

	t.Run("api", func(t *testing.T) {
		var stderr bytes.Buffer
		cmd := exec.Command(bin, "run", "--engine", EngineName(), "--cpus", "2", "--kernel", kernel, "--cmdline", "loops=4000000000", "--api", sock, "--console", "none")
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer cmd.Process.Kill()
		if !poll.Wait(poll.Timeout, func() bool { _, err := os.Stat(sock); return err == nil }) {
			t.Fatalf("timed out after %v waiting for the API socket; stderr:\n%s", poll.Timeout, stderr.String())
		}
		if st, _ := os.Stat(sock); st.Mode().Perm() != 0o600 {
			t.Errorf("socket mode %v, want 0600", st.Mode().Perm())
		}
		out, err := exec.Command(bin, "status", "--api", sock, "--json").Output()
		if err != nil {
			t.Fatal(err)
		}
		var info kvm.Info
		if err := json.Unmarshal(out, &info); err != nil || info.Engine != EngineName() || len(info.VCPUs) != 2 {
			t.Fatalf("status --json: %v\n%s", err, out)
		}
		c := api.NewClient(sock)
		ctx := context.Background()
		info, err = c.Pause(ctx)
		if err != nil || !info.Paused {
			t.Fatalf("pause: %v %+v", err, info)
		}
		for _, v := range info.VCPUs {
			if v.State != "paused" {
				t.Errorf("vCPU %d state %q while paused", v.ID, v.State)
			}
		}
		info, err = c.Resume(ctx)
		if err != nil || info.Paused {
			t.Fatalf("resume: %v %+v", err, info)
		}
		_, err = c.Resume(ctx)
		if ae, ok := err.(*api.Error); !ok || !ae.Refused() || ae.Errno != syscall.EINVAL {
			t.Fatalf("resume while running: %v", err)
		}
		if out, err := exec.Command(bin, "stop", "--api", sock).CombinedOutput(); err != nil {
			t.Fatalf("stop: %v %s", err, out)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("run after stop: %v\n%s", err, stderr.String())
			}
		case <-time.After(20 * time.Second):
			t.Fatal("run did not exit after stop")
		}
		if _, err := os.Stat(sock); !os.IsNotExist(err) {
			t.Error("socket left behind")
		}
	})
}
