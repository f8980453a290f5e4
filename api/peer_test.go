package api_test

import (
	"context"
	"errors"
	"fmt"
	"io"
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

	"klp-kvm/api"
	"klp-kvm/api/apitest"
)

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
	if _, err := api.Listen(path); err == nil || !strings.Contains(err.Error(), "another klp-kvm is serving") {
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
	l, err := api.Listen(filepath.Join(dir, "real.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	link := filepath.Join(dir, "link.sock")
	if err := os.Symlink(filepath.Join(dir, "real.sock"), link); err != nil {
		t.Fatal(err)
	}
	if _, err := api.Listen(link); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("Listen on a symlink: %v", err)
	}
	if _, err := api.Listen(dir); err == nil {
		t.Errorf("Listen on a directory: no error")
	}
	// Someone replaced the socket file: Close leaves the newcomer alone.
	p := filepath.Join(dir, "moved.sock")
	l2, err := api.Listen(p)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(p)
	l3, err := api.Listen(p)
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
	l, err := api.Listen(filepath.Join(t.TempDir(), "api.sock"))
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
	api.SetAllow(l, func(uint32) bool { return false }) // as if we were another uid
	srv := api.NewServer(apitest.NewAPI(t).Mux)
	go srv.Serve(l)
	defer srv.Close()
	_, err = api.NewClient(l.Path()).Machine(context.Background())
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
	l, err := api.Listen(filepath.Join(dir, "api.sock"))
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
	srv := api.NewServer(apitest.NewAPI(t).Mux)
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
	if _, err := api.NewClient(l.Path()).Machine(context.Background()); err != nil {
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
