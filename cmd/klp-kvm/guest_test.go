package main

import (
	"bytes"
	"context"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"klp-kvm/api"
	"klp-kvm/kvm/agent"
)

// fakeAgent is an api.Agent without a guest: exec echoes, files live in a
// map, and a missing file is the guest's ENOENT.
type fakeAgent struct {
	mu    sync.Mutex
	files map[string]string
}

func (a *fakeAgent) Info(context.Context) (agent.Info, error) {
	return agent.Info{Version: "fake"}, nil
}

func (a *fakeAgent) Exec(_ context.Context, cmd string) (agent.ExecResult, error) {
	if cmd == "false" {
		return agent.ExecResult{Status: 1}, nil
	}
	return agent.ExecResult{Output: "ran " + cmd + "\n"}, nil
}

func (a *fakeAgent) FileRead(_ context.Context, path string) (string, bool, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	v, ok := a.files[path]
	if !ok {
		return "", false, &agent.Error{Op: "guest-file-read", Kind: agent.ErrGuest, Class: "GenericError",
			Desc: "open " + path + ": ENOENT", Errno: 2, ErrnoName: "ENOENT"}
	}
	return v, false, nil
}

func (a *fakeAgent) FileWrite(_ context.Context, path, data string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.files[path] = data
	return nil
}

func guestServer(t *testing.T) (string, *fakeAgent) {
	t.Helper()
	ag := &fakeAgent{files: map[string]string{}}
	sock := filepath.Join(t.TempDir(), "api.sock")
	l, err := api.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	api.GuestRoutes(mux, ag)
	srv := api.NewServer(mux)
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return sock, ag
}

func TestGuestCommands(t *testing.T) {
	sock, ag := guestServer(t)
	run := func(f func([]string, *bytes.Buffer, *bytes.Buffer) int, args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		rc := f(args, &out, &errb)
		return rc, out.String(), errb.String()
	}
	exec := func(args []string, o, e *bytes.Buffer) int { return cmdExec(args, o, e) }
	sysfs := func(args []string, o, e *bytes.Buffer) int { return cmdSysfs(args, o, e) }
	if rc, out, errs := run(exec, "--api", sock, "--", "cat", "/proc/cmdline"); rc != 0 || out != "ran cat /proc/cmdline\n" {
		t.Errorf("exec: %d %q %q", rc, out, errs)
	}
	if rc, _, errs := run(exec, "--api", sock, "false"); rc != 1 || !strings.Contains(errs, "status 1") {
		t.Errorf("exec false: %d %q", rc, errs)
	}
	// Flags after the arguments, and "--" before a value that looks like one.
	if rc, _, errs := run(sysfs, "write", "p/enabled", "0", "--api", sock); rc != 0 {
		t.Errorf("sysfs write: %d %q", rc, errs)
	}
	if rc, _, errs := run(sysfs, "--api", sock, "write", "p/force", "--", "-1"); rc != 0 || ag.files["/sys/kernel/livepatch/p/force"] != "-1" {
		t.Errorf("sysfs write -- -1: %d %q %q", rc, errs, ag.files)
	}
	if rc, out, errs := run(sysfs, "cat", "p/enabled", "--api", sock); rc != 0 || out != "0" {
		t.Errorf("sysfs cat: %d %q %q", rc, out, errs)
	}
	rc, _, errs := run(sysfs, "cat", "nosuch/enabled", "--api", sock)
	t.Logf("sysfs cat of a missing file: %s", errs)
	if rc != 1 || strings.Count(errs, "ENOENT") != 1 || strings.Contains(errs, "/guest/") || strings.Contains(errs, "api:") {
		t.Errorf("sysfs cat of a missing file: %d %q", rc, errs)
	}
	if rc, _, _ := run(sysfs, "cat", "--api", sock); rc != 2 {
		t.Errorf("sysfs cat without a path: %d", rc)
	}
	if rc, _, _ := run(exec, "-h"); rc != 0 {
		t.Errorf("exec -h: %d", rc)
	}
}
