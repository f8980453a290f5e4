package api

import (
	"errors"
	"fmt"
	"io/fs"
	"log"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// MaxConns caps the API's open connections: one beyond it is closed as
// soon as it is accepted (each open connection costs the server a
// goroutine and its buffers until a timeout of NewServer ends it).
const MaxConns = 64

// Listener is the API's unix socket (from Listen). Before a connection is
// handed to the HTTP server its peer credentials are read (SO_PEERCRED):
// a peer whose uid is neither the server's nor root's is closed at once,
// before a byte of it is read, and logged. Connections beyond MaxConns are
// closed the same way. Closing the Listener removes the socket file.
type Listener struct {
	*net.UnixListener
	path  string
	uid   int // the uid whose peers are served, besides root
	allow func(uid uint32) bool
	fi    os.FileInfo   // the socket file as created, so Close removes only it
	conns chan struct{} // one token per open connection

	// Logf reports refused connections (nil: the standard logger). Set it
	// before serving.
	Logf func(format string, args ...any)

	refused atomic.Uint64
	logMu   sync.Mutex
	lastLog time.Time
	quiet   uint64 // refusals not logged since lastLog (rate limit)
	once    sync.Once
}

// Listen creates the API's unix socket at path, mode 0600 whatever the
// umask, and returns its Listener.
//
// An existing socket file is replaced only if it is provably stale: a
// connection to it is refused (ECONNREFUSED, nobody listens). If a
// connection succeeds, or fails any other way (a full backlog, a timeout,
// a permission error), something may still own it and Listen refuses to
// start. A path that is not a socket (a regular file, a symlink, a
// directory) is never deleted.
func Listen(path string) (*Listener, error) {
	if fi, err := os.Lstat(path); err == nil {
		// Only a socket is ever replaced: --api pointing at a regular
		// file (or anything else) must not delete it.
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("api: %s exists and is not a socket; refusing to replace it", path)
		}
		if err := probeStale(path); err != nil {
			return nil, err
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("api: remove stale socket: %w", err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("api: %w", err)
	}
	// The socket is born inside a fresh 0700 directory, made 0600 there,
	// and only then linked into place: it is never reachable with the
	// umask's looser mode (net.Listen creates it 0777 &^ umask). A link,
	// unlike a rename, never replaces a socket another server created
	// meanwhile.
	dir, err := os.MkdirTemp(filepath.Dir(path), ".klp-kvm-sock-")
	if err != nil {
		return nil, fmt.Errorf("api: listen: %w", err)
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, "s")
	nl, err := net.Listen("unix", tmp)
	if err != nil {
		return nil, fmt.Errorf("api: listen: %w", err)
	}
	ul := nl.(*net.UnixListener)
	ul.SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, 0o600); err != nil {
		ul.Close()
		return nil, fmt.Errorf("api: chmod socket: %w", err)
	}
	if err := placeNoReplace(tmp, path); err != nil {
		ul.Close()
		if errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("api: %s: created by someone else while this server started; refusing to replace it", path)
		}
		return nil, fmt.Errorf("api: listen: %w", err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		ul.Close()
		return nil, fmt.Errorf("api: listen: %w", err)
	}
	l := &Listener{UnixListener: ul, path: path, uid: os.Geteuid(), fi: fi, conns: make(chan struct{}, MaxConns)}
	l.allow = func(uid uint32) bool { return uid == 0 || int(uid) == l.uid }
	return l, nil
}

// placeNoReplace gives the socket at tmp the name path, failing with
// EEXIST rather than replacing a file there: a hard link, or where the
// file system has none, a rename with RENAME_NOREPLACE.
func placeNoReplace(tmp, path string) error {
	err := os.Link(tmp, path)
	if err == nil || errors.Is(err, fs.ErrExist) {
		return err
	}
	if rerr := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, path, unix.RENAME_NOREPLACE); rerr != nil {
		if errors.Is(rerr, unix.EEXIST) {
			return fs.ErrExist
		}
		return err
	}
	return nil
}

// probeStale returns nil if the socket at path is stale (nobody listens),
// else why it must not be replaced.
func probeStale(path string) error {
	c, err := net.DialTimeout("unix", path, 500*time.Millisecond)
	switch {
	case err == nil:
		c.Close()
		return fmt.Errorf("api: %s: another klp-kvm is serving this socket", path)
	case errors.Is(err, syscall.ECONNREFUSED):
		return nil
	case errors.Is(err, syscall.EAGAIN):
		return fmt.Errorf("api: %s: another klp-kvm is serving this socket (its backlog is full)", path)
	}
	return fmt.Errorf("api: %s: cannot tell whether a server still owns this socket (%v); remove it by hand if none does", path, err)
}

// Path is the socket's path.
func (l *Listener) Path() string { return l.path }

// Refused is how many connections were closed unserved (wrong uid,
// unreadable credentials, too many open).
func (l *Listener) Refused() uint64 { return l.refused.Load() }

// Accept returns the next connection whose peer may use the API.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.UnixListener.AcceptUnix()
		if err != nil {
			return nil, err
		}
		cred, err := peerCred(c)
		switch {
		case err != nil:
			l.refuse(c, "peer credentials unreadable: %v", err)
			continue
		case !l.allow(cred.Uid):
			l.refuse(c, "uid %d (pid %d) is neither uid %d nor root", cred.Uid, cred.Pid, l.uid)
			continue
		}
		select {
		case l.conns <- struct{}{}:
		default:
			l.refuse(c, "pid %d: %d connections already open", cred.Pid, MaxConns)
			continue
		}
		return &conn{UnixConn: c, release: func() { <-l.conns }}, nil
	}
}

// refuse closes c unserved and logs why, at most once a second (the rest
// are counted into the next message).
func (l *Listener) refuse(c *net.UnixConn, format string, args ...any) {
	l.refused.Add(1) // before the close: whoever sees the close sees the count
	c.Close()
	l.logMu.Lock()
	now := time.Now()
	if now.Sub(l.lastLog) < time.Second {
		l.quiet++
		l.logMu.Unlock()
		return
	}
	quiet := l.quiet
	l.lastLog, l.quiet = now, 0
	l.logMu.Unlock()
	msg := fmt.Sprintf(format, args...)
	if quiet > 0 {
		msg += fmt.Sprintf(" (and %d more refused)", quiet)
	}
	logf := l.Logf
	if logf == nil {
		logf = log.Printf
	}
	logf("klp-kvm api: refused a connection on %s: %s", l.path, msg)
}

// Close stops accepting and removes the socket file, unless the path now
// names another file (a later server's socket).
func (l *Listener) Close() error {
	err := l.UnixListener.Close()
	l.once.Do(func() {
		if fi, err := os.Lstat(l.path); err == nil && os.SameFile(fi, l.fi) {
			_ = os.Remove(l.path)
		}
	})
	return err
}

// peerCred reads the connecting process's credentials (SO_PEERCRED, as
// the kernel recorded them at connect time).
func peerCred(c *net.UnixConn) (*unix.Ucred, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	return cred, cerr
}

// conn gives its MaxConns token back when closed.
type conn struct {
	*net.UnixConn
	release func()
	once    sync.Once
}

func (c *conn) Close() error {
	err := c.UnixConn.Close()
	c.once.Do(c.release)
	return err
}
