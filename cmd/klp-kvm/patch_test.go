package main

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"klp-kvm/api/apitest"
	"klp-kvm/livepatch"
)

func runPatch(sock string, args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	rc := cmdPatch(append([]string{"--api", sock}, args...), &out, &errb)
	return rc, out.String(), errb.String()
}

func TestPatchCommand(t *testing.T) {
	sock, _ := apitest.ServeLivepatch(t)
	rc, out, errs := runPatch(sock, "load", "livepatch-sample")
	if rc != 0 || !strings.Contains(out, "load livepatch_sample: ok (1 functions switched") {
		t.Fatalf("load: %d %q %q", rc, out, errs)
	}
	rc, _, errs = runPatch(sock, "enable", "livepatch_sample")
	if rc != 1 || !strings.Contains(errs, "EINVAL") {
		t.Fatalf("enable twice: %d %q", rc, errs)
	}
	rc, _, errs = runPatch(sock, "unregister", "livepatch_sample")
	if rc != 1 || !strings.Contains(errs, "EBUSY") {
		t.Fatalf("unregister enabled: %d %q", rc, errs)
	}
	rc, out, _ = runPatch(sock, "list")
	if rc != 0 || !strings.Contains(out, "1 livepatch_sample: enabled") || !strings.Contains(out, "vmlinux/cmdline_proc_show,1") {
		t.Fatalf("list: %d %q", rc, out)
	}
	rc, out, _ = runPatch(sock, "list", "--json")
	var st livepatch.Status
	if rc != 0 || json.Unmarshal([]byte(out), &st) != nil || len(st.Patches) != 1 {
		t.Fatalf("list --json: %d %q", rc, out)
	}
	rc, _, errs = runPatch(sock, "--force", "unload", "livepatch_sample")
	if rc != 0 {
		t.Fatalf("unload: %d %q", rc, errs)
	}
	if rc, _, errs = runPatch(sock, "register", "no-such-sample"); rc != 2 || !strings.Contains(errs, "livepatch-sample.o") {
		t.Fatalf("unknown object: %d %q", rc, errs)
	}
	// Names travel path-escaped: one with '/' or '%' reaches the livepatch
	// core unchanged and is refused there by name; one that cannot be a
	// path segment is refused by the client.
	for _, name := range []string{"a/b", "50%", "../livepatch_sample"} {
		if rc, _, errs = runPatch(sock, "disable", name); rc != 1 || !strings.Contains(errs, "ENOENT") || !strings.Contains(errs, "disable "+name+":") {
			t.Errorf("disable %q: %d %q", name, rc, errs)
		}
	}
	if rc, _, errs = runPatch(sock, "enable", ".."); rc != 1 || !strings.Contains(errs, "EINVAL") {
		t.Errorf("enable ..: %d %q", rc, errs)
	}
	if rc, _, _ = runPatch(sock, "frobnicate", "x"); rc != 2 {
		t.Fatalf("unknown op: %d", rc)
	}
	if rc, _, _ = runPatch(sock); rc != 2 {
		t.Fatalf("no op: %d", rc)
	}
	if rc, _, errs = runPatch(filepath.Join(t.TempDir(), "none.sock"), "list"); rc != 1 {
		t.Fatalf("unreachable API: %d %q", rc, errs)
	}
}
