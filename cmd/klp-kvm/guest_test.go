package main

import (
	"bytes"
	"net/http"
	"strings"
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
