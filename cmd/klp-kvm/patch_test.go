package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"klp-kvm/api"
	"klp-kvm/api/apitest"
	"klp-kvm/livepatch"
)

// patchServer serves the livepatch API on a unix socket over a fake guest.
func patchServer(t *testing.T) string {
	t.Helper()
	sock, _ := apitest.ServeLivepatch(t)
	return sock
}

func runPatch(sock string, args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	rc := cmdPatch(append([]string{"--api", sock}, args...), &out, &errb)
	return rc, out.String(), errb.String()
}

func TestPatchCommand(t *testing.T) {
	sock := patchServer(t)
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
	for _, key := range []string{`"redirected_sites": [`, `"addr":`, `"func": "cmdline_proc_show"`, `"func_off":`} {
		if !strings.Contains(out, key) {
			t.Errorf("list --json lacks %s:\n%s", key, out)
		}
	}
	rc, _, errs = runPatch(sock, "--force", "unload", "livepatch_sample")
	if rc != 0 {
		t.Fatalf("unload: %d %q", rc, errs)
	}
	if rc, out, _ = runPatch(sock, "list", "--json"); rc != 0 || !strings.Contains(out, `"patches": []`) || !strings.Contains(out, `"redirected_sites": []`) {
		t.Errorf("empty list --json: %d %s", rc, out)
	}
	if rc, _, errs = runPatch(sock, "register", "no-such-sample"); rc != 1 || !strings.Contains(errs, "livepatch-sample") {
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
	if rc, _, errs = runPatch(filepath.Join(t.TempDir(), "none.sock"), "list"); rc != 1 || !strings.Contains(errs, "cannot reach klp-kvm") || !strings.Contains(errs, "ENOENT") {
		t.Fatalf("unreachable API: %d %q", rc, errs)
	}
}

// Flags may follow the operation and its argument, as README shows.
// patch list shows the system states a patch declares, in its text and,
// only for a patch that has some, in its JSON.
func TestPatchListStates(t *testing.T) {
	sock := patchServer(t)
	for _, obj := range []string{"livepatch-sample", "test_klp_state2"} {
		if rc, out, errs := runPatch(sock, "register", obj); rc != 0 {
			t.Fatalf("register %s: %d %q %q", obj, rc, out, errs)
		}
	}
	rc, out, _ := runPatch(sock, "list")
	want := "1 livepatch_sample: disabled\n    vmlinux/cmdline_proc_show,1 -> livepatch_cmdline_proc_show\n" +
		"2 test_klp_state2: disabled [replace]\n    state 1 version 2\n"
	if rc != 0 || !strings.HasPrefix(out, want) {
		t.Fatalf("list: %d\n%s\nwant it to start with\n%s", rc, out, want)
	}
	rc, out, _ = runPatch(sock, "list", "--json")
	var st struct {
		Patches []map[string]json.RawMessage `json:"patches"`
	}
	if rc != 0 || json.Unmarshal([]byte(out), &st) != nil || len(st.Patches) != 2 {
		t.Fatalf("list --json: %d %q", rc, out)
	}
	if _, ok := st.Patches[0]["states"]; ok {
		t.Errorf("states for a patch without any: %s", st.Patches[0]["states"])
	}
	if got := string(st.Patches[1]["states"]); strings.Join(strings.Fields(got), "") != `[{"id":1,"version":2}]` {
		t.Errorf("states %s", got)
	}
}

func TestPatchFlagsAnywhere(t *testing.T) {
	sock := patchServer(t)
	steps := [][]string{
		{"register", "livepatch-sample", "--json"},
		{"enable", "livepatch_sample", "--force", "--deadline", "3s"},
		{"disable", "livepatch_sample", "--deadline", "3s", "--conservative"},
		{"--deadline=1s", "enable", "--force", "livepatch_sample"},
		{"disable", "livepatch_sample"},
	}
	for _, args := range steps {
		if rc, out, errs := runPatch(sock, args...); rc != 0 {
			t.Fatalf("%q: %d %q %q", args, rc, out, errs)
		}
	}
	// Unloading a disabled patch only unregisters it: no switch to report.
	if rc, out, errs := runPatch(sock, "unload", "livepatch_sample", "--deadline", "3s"); rc != 0 || out != "unload livepatch_sample: ok\n" {
		t.Fatalf("unload: %d %q %q", rc, out, errs)
	}
	if rc, out, _ := runPatch(sock, "list", "--json"); rc != 0 || !strings.Contains(out, `"patches": []`) {
		t.Fatalf("after: %d %s", rc, out)
	}
	// "--" ends the flags: a name that looks like one is a name.
	if rc, _, errs := runPatch(sock, "enable", "--", "--force"); rc != 1 || !containsAll(errs, []string{"enable --force: ", "ENOENT"}) {
		t.Errorf("enable -- --force: %d %q", rc, errs)
	}
}

// What the user reads when something is refused or fails: the errno named
// once, no API route, the operation asked for, and exit statuses as README
// says (1 refused or failed, 2 usage).
func TestPatchMessages(t *testing.T) {
	sock := patchServer(t)
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty.o")
	os.WriteFile(empty, nil, 0o644)
	junk := filepath.Join(dir, "junk.o")
	os.WriteFile(junk, []byte("not an ELF file"), 0o644)
	unreadable := filepath.Join(dir, "secret.o")
	os.WriteFile(unreadable, []byte("x"), 0o644)
	if rc, _, _ := runPatch(sock, "load", "livepatch-sample"); rc != 0 {
		t.Fatal("load failed")
	}
	cases := []struct {
		args  []string
		rc    int
		errno string   // named exactly once
		want  []string // the message contains each
	}{
		{[]string{"load", "livepatch-sample"}, 1, "EEXIST", []string{"register livepatch_sample: ", "is registered"}},
		{[]string{"enable", "livepatch_sample"}, 1, "EINVAL", []string{"enable livepatch_sample: ", "already enabled"}},
		{[]string{"unload", "nosuch"}, 1, "ENOENT", []string{"unload nosuch: ", "no such patch"}},
		{[]string{"disable", "nosuch", "--deadline", "3s"}, 1, "ENOENT", []string{"disable nosuch: ", "no such patch"}},
		{[]string{"unregister", "nosuch"}, 1, "ENOENT", []string{"unregister nosuch: ", "no such patch"}},
		{[]string{"enable", strings.Repeat("x", 300)}, 1, "ENOENT", []string{"enable " + strings.Repeat("x", api.MaxEcho) + "...: "}},
		{[]string{"load", filepath.Join(dir, "missing.o")}, 1, "ENOENT", []string{"klp-kvm patch: load ", "missing.o: no such file or directory (ENOENT)"}},
		{[]string{"load", "missing.o"}, 1, "ENOENT", []string{"load missing.o: no such file, and no embedded sample of that name"}},
		{[]string{"load", empty}, 1, "EINVAL", []string{"empty.o: empty file, not a patch object: invalid argument (EINVAL)"}},
		{[]string{"load", dir}, 1, "EISDIR", []string{"a directory, not a patch object"}},
		{[]string{"register", junk}, 1, "EINVAL", []string{"register junk.o: "}},
		{[]string{"load"}, 2, "", []string{"load takes one patch object"}},
		{[]string{"enable"}, 2, "", []string{"enable takes one patch name"}},
		{[]string{"list", "extra"}, 2, "", []string{"list takes no argument"}},
		{[]string{"enable", "x", "--deadline", "-1s"}, 2, "", []string{"--deadline -1s"}},
		{[]string{"enable", "x", "--bogus"}, 2, "", []string{"flag provided but not defined: -bogus"}},
	}
	for _, c := range cases {
		rc, out, errs := runPatch(sock, c.args...)
		if c.rc == 1 {
			t.Logf("patch %s -> %d: %s", strings.Join(c.args, " "), rc, strings.TrimSpace(errs))
		}
		if rc != c.rc || !containsAll(errs, c.want) || out != "" {
			t.Errorf("patch %q: %d %q %q, want %d and %q", c.args, rc, out, errs, c.rc, c.want)
		}
		if c.errno != "" && strings.Count(errs, c.errno) != 1 {
			t.Errorf("patch %q: %q names %s %d times", c.args, errs, c.errno, strings.Count(errs, c.errno))
		}
		for _, bad := range []string{"/patches", "POST", "api:", "http://"} {
			if strings.Contains(errs, bad) {
				t.Errorf("patch %q: message shows %q: %q", c.args, bad, errs)
			}
		}
		if c.rc == 1 && len(errs) > 600 {
			t.Errorf("patch %q: %d-byte message", c.args, len(errs))
		}
	}
	if rc, out, _ := runPatch(sock, "-h"); rc != 0 || out != "" {
		t.Errorf("-h: %d", rc)
	}
}

func containsAll(s string, subs []string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}
