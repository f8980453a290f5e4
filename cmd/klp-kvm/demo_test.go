package main

import (
	"bytes"
	"os"
	"strings"
	"testing"
)

// TestDemo runs `klp-kvm demo` on the engine of $KLP_KVM_ENGINE (emu by
// default) and checks the story it tells: original, patched, original.
func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a guest")
	}
	engine := os.Getenv("KLP_KVM_ENGINE")
	if engine == "" {
		engine = "emu"
	}
	if engine == "kvm" {
		if _, err := os.Stat("/dev/kvm"); err != nil {
			t.Skip("no /dev/kvm")
		}
	}
	var out, errb bytes.Buffer
	if rc := cmdDemo([]string{"--engine", engine, "--cpus", "2"}, &out, &errb); rc != 0 {
		t.Fatalf("demo exited %d: %s\n%s", rc, errb.String(), out.String())
	}
	s := out.String()
	first := strings.Index(s, "guest$ cat /proc/cmdline")
	patched := strings.Index(s, "this has been live patched")
	last := strings.LastIndex(s, "guest$ cat /proc/cmdline")
	if first < 0 || patched < first || last < patched {
		t.Fatalf("demo output does not show original, patched, original:\n%s", s)
	}
	if strings.Contains(s[last:], "live patched") {
		t.Fatalf("still patched after unload:\n%s", s[last:])
	}
	for _, want := range []string{"pause window", "enable livepatch_sample", "disable livepatch_sample",
		"/sys/kernel/livepatch/livepatch_sample/enabled\n  1"} {
		if !strings.Contains(s, want) {
			t.Errorf("demo output lacks %q:\n%s", want, s)
		}
	}
	if rc := cmdDemo([]string{"extra"}, &out, &errb); rc != 2 {
		t.Errorf("demo with an argument exited %d, want 2", rc)
	}
}
