package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestListenSocketSafety(t *testing.T) {
	dir := t.TempDir()
	// Even with umask 000 the socket is never reachable with a looser mode.
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	path := filepath.Join(dir, "klp.sock")
	l, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket %v mode %v", err, fi.Mode())
	}
	// A second server refuses while the first answers.
	if _, err := Listen(path); err == nil || !strings.Contains(err.Error(), "another klp-kvm") {
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
	l, err = Listen(path)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	l.Close()
	// A regular file is never deleted.
	file := filepath.Join(dir, "precious.txt")
	if err := os.WriteFile(file, []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(file); err == nil || !strings.Contains(err.Error(), "not a socket") {
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

// A socket whose server does not accept (its backlog full: a connect
// fails with EAGAIN, not ECONNREFUSED) is live, and is never replaced.
func TestListenRefusesBusySocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "busy.sock")
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	var lastErr error
	for i := 0; i < 16; i++ { // fill the backlog with connections never accepted
		c, err := net.DialTimeout("unix", path, 200*time.Millisecond)
		if err != nil {
			lastErr = err
			break
		}
		defer c.Close()
	}
	if !errors.Is(lastErr, syscall.EAGAIN) {
		t.Skipf("could not fill the backlog (last dial: %v)", lastErr)
	}
	if _, err := Listen(path); err == nil || !strings.Contains(err.Error(), "another klp-kvm is serving") {
		t.Fatalf("Listen on a busy socket: %v", err)
	}
	if fi, err := os.Lstat(path); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("busy socket replaced: %v", err)
	}
}

// Listen on a symlink to a socket, or on a directory, refuses and leaves
// it; Close does not remove a socket file that is no longer its own.
func TestListenPathKinds(t *testing.T) {
	dir := t.TempDir()
	l, err := Listen(filepath.Join(dir, "real.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	link := filepath.Join(dir, "link.sock")
	if err := os.Symlink(filepath.Join(dir, "real.sock"), link); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(link); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("Listen on a symlink: %v", err)
	}
	if _, err := Listen(dir); err == nil {
		t.Errorf("Listen on a directory: no error")
	}
	// Someone replaced the socket file: Close leaves the newcomer alone.
	p := filepath.Join(dir, "moved.sock")
	l2, err := Listen(p)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(p)
	l3, err := Listen(p)
	if err != nil {
		t.Fatal(err)
	}
	defer l3.Close()
	l2.Close()
	if _, err := os.Lstat(p); err != nil {
		t.Errorf("Close of the first listener removed the second's socket: %v", err)
	}
}

// Every connection's peer credentials are checked: a peer the listener
// does not allow is closed before anything is read, and logged.
func TestPeerCredRefused(t *testing.T) {
	l, err := Listen(filepath.Join(t.TempDir(), "api.sock"))
	if err != nil {
		t.Fatal(err)
	}
	var logged []string
	var mu sync.Mutex
	l.Logf = func(format string, args ...any) {
		mu.Lock()
		logged = append(logged, fmt.Sprintf(format, args...))
		mu.Unlock()
	}
	l.allow = func(uid uint32) bool { return false } // as if we were another uid
	srv := NewServer(newFakeAPI(t).mux)
	go srv.Serve(l)
	defer srv.Close()
	_, err = NewClient(l.Path()).Machine(context.Background())
	if err == nil || !strings.Contains(err.Error(), "closed the connection without a reply") {
		t.Fatalf("refused peer got: %v", err)
	}
	if strings.Contains(err.Error(), "/machine") {
		t.Errorf("message names the route: %v", err)
	}
	waitFor(t, func() bool { mu.Lock(); defer mu.Unlock(); return len(logged) >= 1 })
	mu.Lock()
	defer mu.Unlock()
	if len(logged) == 0 || !strings.Contains(logged[0], fmt.Sprintf("uid %d", os.Getuid())) {
		t.Errorf("logged %q", logged)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 5s")
		}
	}
}

// A process of another uid: refused by the socket's mode (0600), and,
// where the mode would let it in, by its peer credentials. Needs root to
// start the child with another uid.
func TestPeerCredOtherUID(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to run a child process as another uid")
	}
	const nobody = 65534
	dir, err := os.MkdirTemp("", "klp-api-peer-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755) // the other uid must reach the socket file
	old := syscall.Umask(0)
	l, err := Listen(filepath.Join(dir, "api.sock"))
	syscall.Umask(old)
	if err != nil {
		t.Fatal(err)
	}
	var logged []string
	var mu sync.Mutex
	l.Logf = func(format string, args ...any) {
		mu.Lock()
		logged = append(logged, fmt.Sprintf(format, args...))
		mu.Unlock()
	}
	srv := NewServer(newFakeAPI(t).mux)
	go srv.Serve(l)
	defer srv.Close()
	child := func() string {
		cmd := exec.Command("/proc/self/exe", "-test.run=^TestPeerCredHelper$")
		cmd.Env = append(os.Environ(), "KLP_API_PEER_SOCKET="+l.Path())
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
		out, err := cmd.CombinedOutput()
		if err != nil && !strings.Contains(string(out), "peer:") {
			t.Skipf("cannot run a child as uid %d: %v %s", nobody, err, out)
		}
		t.Logf("child: %s", strings.TrimSpace(string(out)))
		return string(out)
	}
	// The socket as created (0600): the kernel refuses the connect.
	if out := child(); !strings.Contains(out, "peer: dial: EACCES") {
		t.Errorf("uid %d on the 0600 socket: %s", nobody, out)
	}
	// Opened up by mistake: the peer-credential check refuses it.
	if err := os.Chmod(l.Path(), 0o666); err != nil {
		t.Fatal(err)
	}
	if out := child(); !strings.Contains(out, "peer: closed unanswered") {
		t.Errorf("uid %d on a 0666 socket: %s", nobody, out)
	}
	waitFor(t, func() bool { mu.Lock(); defer mu.Unlock(); return len(logged) >= 1 })
	mu.Lock()
	defer mu.Unlock()
	if len(logged) != 1 || !strings.Contains(logged[0], fmt.Sprintf("uid %d", nobody)) {
		t.Errorf("logged %q", logged)
	}
	// Our own uid (root) is still served.
	if _, err := NewClient(l.Path()).Machine(context.Background()); err != nil {
		t.Errorf("own uid: %v", err)
	}
}

// TestPeerCredHelper is the child of TestPeerCredOtherUID: it tries one
// request and says what happened.
func TestPeerCredHelper(t *testing.T) {
	sock := os.Getenv("KLP_API_PEER_SOCKET")
	if sock == "" {
		t.Skip("helper process of TestPeerCredOtherUID")
	}
	c, err := net.Dial("unix", sock)
	if err != nil {
		var en syscall.Errno
		errors.As(err, &en)
		fmt.Printf("peer: dial: %s (uid %d)\n", unix.ErrnoName(en), os.Getuid())
		return
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprint(c, "GET /machine HTTP/1.1\r\nHost: klp\r\n\r\n")
	b, err := io.ReadAll(c)
	if len(b) == 0 {
		fmt.Printf("peer: closed unanswered (%v, uid %d)\n", err, os.Getuid())
		return
	}
	fmt.Printf("peer: answered: %q\n", b)
}

// The socket is put in place without ever replacing a file another
// server created meanwhile.
func TestPlaceNoReplace(t *testing.T) {
	dir := t.TempDir()
	tmp, path := filepath.Join(dir, "tmp"), filepath.Join(dir, "sock")
	os.WriteFile(tmp, []byte("new"), 0o600)
	os.WriteFile(path, []byte("theirs"), 0o600)
	if err := placeNoReplace(tmp, path); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("onto an existing file: %v", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "theirs" {
		t.Fatalf("replaced: %q", b)
	}
	os.Remove(path)
	if err := placeNoReplace(tmp, path); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); string(b) != "new" {
		t.Fatalf("placed: %q", b)
	}
}
