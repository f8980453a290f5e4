package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strings"
	"syscall"
	"testing"

	"klp-kvm/api"
	"klp-kvm/api/apitest"
)

func guestServer(t *testing.T) (string, *apitest.Agent) {
	t.Helper()
	ag := &apitest.Agent{}
	mux := http.NewServeMux()
	api.GuestRoutes(mux, ag)
	return apitest.ServeUnix(t, mux), ag
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
	if rc, _, errs := run(sysfs, "--api", sock, "write", "p/force", "--", "-1"); rc != 0 || !hasFile(ag, "/sys/kernel/livepatch/p/force", "-1") {
		t.Errorf("sysfs write -- -1: %d %q", rc, errs)
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

func hasFile(a *apitest.Agent, path, want string) bool {
	v, ok := a.File(path)
	return ok && v == want
}

// linuxAgent is the agent of a Linux guest as vmm serves it: its tree
// lives under /run/klp-kvm/livepatch, and a write there is carried out
// by the host, whose refusal carries an errno of another package.
type linuxAgent struct{ *apitest.Agent }

func (linuxAgent) Sysfs() api.SysfsInfo {
	return api.SysfsInfo{Root: "/run/klp-kvm/livepatch", List: "ls -F"}
}

func (a linuxAgent) FileWrite(ctx context.Context, path, data string) error {
	if path == "/run/klp-kvm/livepatch/p/enabled" && data == "1" {
		return fmt.Errorf("linuxlive: the patch is already enabled: %w", syscall.EINVAL)
	}
	return a.Agent.FileWrite(ctx, path, data)
}

// Against a Linux guest, relative paths are under the root the server
// names, and a refused write exits 1 naming the errno.
func TestSysfsLinuxGuest(t *testing.T) {
	ag := linuxAgent{&apitest.Agent{}}
	mux := http.NewServeMux()
	api.GuestRoutes(mux, ag)
	sock := apitest.ServeUnix(t, mux)
	var out, errb bytes.Buffer
	if rc := cmdSysfs([]string{"--api", sock, "write", "p/enabled", "0"}, &out, &errb); rc != 0 || !hasFile(ag.Agent, "/run/klp-kvm/livepatch/p/enabled", "0") {
		t.Errorf("sysfs write: %d %q", rc, errb.String())
	}
	out.Reset()
	if rc := cmdSysfs([]string{"--api", sock, "cat", "p/enabled"}, &out, &errb); rc != 0 || out.String() != "0" {
		t.Errorf("sysfs cat: %d %q %q", rc, out.String(), errb.String())
	}
	out.Reset()
	if rc := cmdSysfs([]string{"--api", sock, "ls", "p"}, &out, &errb); rc != 0 || out.String() != "ran ls -F /run/klp-kvm/livepatch/p\n" {
		t.Errorf("sysfs ls: %d %q", rc, out.String())
	}
	out.Reset()
	if rc := cmdSysfs([]string{"--api", sock, "ls"}, &out, &errb); rc != 0 || out.String() != "ran ls -F /run/klp-kvm/livepatch\n" {
		t.Errorf("sysfs ls of the root: %d %q", rc, out.String())
	}
	errb.Reset()
	if rc := cmdSysfs([]string{"--api", sock, "write", "p/enabled", "1"}, &out, &errb); rc != 1 || !strings.Contains(errb.String(), "EINVAL") {
		t.Errorf("refused sysfs write: %d %q", rc, errb.String())
	}
	// Absolute paths stay as given: /sys/kernel/livepatch is Linux's own.
	if rc := cmdSysfs([]string{"--api", sock, "write", "/sys/kernel/livepatch/x", "1"}, &out, &errb); rc != 0 || !hasFile(ag.Agent, "/sys/kernel/livepatch/x", "1") {
		t.Errorf("absolute path: %d", rc)
	}
}
