package api_test

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"klp-kvm/api"
)

func TestListenSocketSafety(t *testing.T) {
	dir := t.TempDir()
	// Even with umask 000 the socket is never reachable with a looser mode.
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	path := filepath.Join(dir, "klp.sock")
	l, err := api.Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket %v mode %v", err, fi.Mode())
	}
	// A second server refuses while the first answers.
	if _, err := api.Listen(path); err == nil || !strings.Contains(err.Error(), "another klp-kvm") {
		t.Fatalf("second listener: %v", err)
	}
	l.Close()
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Fatalf("socket left after Close: %v", err)
	}
	// A stale socket (nobody answers) is replaced.
	stale, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()
	l, err = api.Listen(path)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	l.Close()
	// A regular file is never deleted.
	file := filepath.Join(dir, "precious.txt")
	if err := os.WriteFile(file, []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := api.Listen(file); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("Listen on a regular file: %v", err)
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "keep" {
		t.Fatalf("regular file changed: %q %v", b, err)
	}
	// No temporary directory is left behind.
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".klp-kvm-sock-") {
			t.Fatalf("left %s", e.Name())
		}
	}
}
