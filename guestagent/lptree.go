package guestagent

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"klp-kvm/klperr"
	"klp-kvm/kvm/agent"
)

// The live patches of a Linux guest are the host's (package linuxlive
// writes them into the guest from outside), so no livepatch code in the
// guest knows them and Linux's own /sys/kernel/livepatch stays empty. The
// agent shows them instead, as the same tree, under a root of its own
// (Options.LivepatchRoot, /run/klp-kvm/livepatch in the initramfs):
//
//   - the host sends the whole tree after every change
//     (guest-livepatch-tree, agent.Tree); the agent builds it in a
//     staging directory next to the root and swaps the two in one
//     renameat2(RENAME_EXCHANGE), so a reader sees the old tree or the
//     new one and nothing stale remains;
//   - a write by a guest process (echo 0 > .../enabled) is noticed with
//     inotify (IN_CLOSE_WRITE on every file of the tree; the agent writes
//     a file before it watches it, so its own writes raise nothing) and
//     forwarded as the event klp-kvm's own guest kernel sends,
//     {"event":"sysfs-write","data":{"id","path","value"}};
//   - the host carries it out, answers sysfs-reply {"id","errno"[,"desc"]}
//     and sends the tree again, so a refused write is undone in the file;
//     the agent logs the outcome in the kernel log (/dev/kmsg), since a
//     plain file cannot hand the errno to the writer.

// Bounds of the write forwarding.
const (
	lpMaxPending   = 16               // writes awaiting the host's answer
	lpReplyTimeout = 60 * time.Second // then the write is given up and the file restored
	lpValueMax     = 64               // a longer value is EINVAL (as klp-kvm's guest kernel: value[64])
	lpDescMax      = 240              // of the host's description, in the log line
)

// lpTree is the tree under one root, its inotify watches and the writes
// in flight.
type lpTree struct {
	root  string
	stage string // the staging directory, a hidden sibling of root
	event func(name string, data any)
	kmsg  io.Writer // one kernel-log record per Write; nil logs nowhere
	log   func(format string, args ...any)

	mu     sync.Mutex // serialises replace and the watch table
	closed bool       // close was called: ifd is no longer ours
	ifd    int
	inf    *os.File
	wds    map[int32]string // inotify watch -> file path relative to root
	last   agent.Tree       // the tree shown (restored after a refused write)

	partMu   sync.Mutex // the tree being received in parts
	parts    agent.Tree
	nextPart int

	pmu     sync.Mutex
	nextID  uint64
	pending map[uint64]*lpWrite
	logMu   sync.Mutex
}

// lpWrite is a forwarded write awaiting the host's sysfs-reply.
type lpWrite struct {
	rel, value string
	timer      *time.Timer
}

// newLPTree creates root (and its parent) with an empty tree and starts
// watching; close stops it.
func newLPTree(root string, event func(string, any), kmsg io.Writer, log func(string, ...any)) (*lpTree, error) {
	root = filepath.Clean(root)
	if !filepath.IsAbs(root) || root == "/" {
		return nil, &Error{Op: "livepatch tree", Kind: ErrInvalid, Detail: fmt.Sprintf("root %q: an absolute directory below /", root)}
	}
	if err := os.MkdirAll(filepath.Dir(root), 0o755); err != nil {
		return nil, wrap("livepatch tree", ErrSetup, "create "+filepath.Dir(root), err)
	}
	// Non-blocking, so the Go poller waits for events and Close ends the
	// reader.
	ifd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, wrap("livepatch tree", ErrSetup, "inotify_init1", err)
	}
	l := &lpTree{root: root, stage: filepath.Join(filepath.Dir(root), "."+filepath.Base(root)+".new"),
		event: event, kmsg: kmsg, log: log, ifd: ifd, inf: os.NewFile(uintptr(ifd), "inotify"),
		wds: map[int32]string{}, pending: map[uint64]*lpWrite{}}
	// Whatever a previous agent left is replaced: the host sends its
	// tree again when it sees this agent's agent-ready.
	if err := l.replace(agent.Tree{}); err != nil {
		l.inf.Close()
		return nil, err
	}
	go l.watch()
	return l, nil
}

// decodeTree decodes guest-livepatch-tree's arguments strictly (no
// unknown field); Tree.Check comes when the tree is whole.
func decodeTree(args json.RawMessage) (agent.TreePart, *reqError) {
	var t agent.TreePart
	if args == nil {
		return t, invalid(`guest-livepatch-tree: "dirs" and "files" required`)
	}
	dec := json.NewDecoder(bytes.NewReader(args))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&t); err != nil {
		return t, invalid("guest-livepatch-tree: " + err.Error())
	}
	return t, nil
}

// livepatchTree is guest-livepatch-tree: the tree shown becomes exactly
// the one sent, or stays as it was (EINVAL for a tree that breaks
// agent.Tree's bounds or parts out of order, the errno of the failing
// call else). A tree in parts is kept aside until its last part.
func (a *Agent) livepatchTree(args json.RawMessage) (any, func(), *reqError) {
	l := a.tree.Load()
	if l == nil {
		return nil, nil, &reqError{class: "GenericError", errno: syscall.EOPNOTSUPP,
			desc: "guest-livepatch-tree: this agent shows no livepatch tree"}
	}
	tp, rerr := decodeTree(args)
	if rerr != nil {
		return nil, nil, rerr
	}
	t, whole, rerr := l.addPart(tp)
	if rerr != nil || !whole {
		return struct{}{}, nil, rerr
	}
	if err := l.replace(t); err != nil {
		errno := syscall.EIO
		if errors.Is(err, agent.ErrInvalid) {
			errno = syscall.EINVAL
		} else if en := klperr.Errno(err); en != 0 {
			errno = en
		}
		return nil, nil, &reqError{class: "GenericError", desc: "guest-livepatch-tree: " + err.Error(), errno: errno}
	}
	return struct{}{}, nil, nil
}

// addPart adds a part to the tree being received: the whole tree once its
// last part came (whole), nothing before. Part 0 starts afresh; a part
// out of order, or parts beyond the bounds, drop what was kept.
func (l *lpTree) addPart(tp agent.TreePart) (agent.Tree, bool, *reqError) {
	l.partMu.Lock()
	defer l.partMu.Unlock()
	if tp.Part == 0 {
		l.parts, l.nextPart = agent.Tree{}, 0
	}
	if tp.Part != l.nextPart || tp.Part >= agent.TreeMaxParts {
		want := l.nextPart
		l.parts, l.nextPart = agent.Tree{}, 0
		return agent.Tree{}, false, invalid(fmt.Sprintf("guest-livepatch-tree: part %d, expected %d (at most %d parts)", tp.Part, want, agent.TreeMaxParts))
	}
	if len(l.parts.Dirs)+len(l.parts.Files)+len(tp.Dirs)+len(tp.Files) > agent.TreeMaxEntries {
		l.parts, l.nextPart = agent.Tree{}, 0
		return agent.Tree{}, false, invalid(fmt.Sprintf("guest-livepatch-tree: more than %d entries", agent.TreeMaxEntries))
	}
	l.parts.Dirs = append(l.parts.Dirs, tp.Dirs...)
	l.parts.Files = append(l.parts.Files, tp.Files...)
	l.nextPart++
	if tp.More {
		return agent.Tree{}, false, nil
	}
	t := l.parts
	l.parts, l.nextPart = agent.Tree{}, 0
	return t, true, nil
}

// close stops the watcher and gives up the writes in flight.
func (l *lpTree) close() {
	l.mu.Lock()
	l.closed = true
	l.inf.Close()
	l.mu.Unlock()
	l.pmu.Lock()
	for id, w := range l.pending {
		w.timer.Stop()
		delete(l.pending, id)
	}
	l.pmu.Unlock()
}

// replace shows t: built in the staging directory, every file written
// and then watched, swapped with the root in one step, the old tree
// removed. On failure the old tree stays as it was.
func (l *lpTree) replace(t agent.Tree) (err error) {
	const op = "livepatch tree"
	if err := t.Check(); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return &Error{Op: op, Kind: ErrIO, Detail: "the agent is stopping"}
	}
	if err := os.RemoveAll(l.stage); err != nil {
		return wrap(op, ErrIO, "remove "+l.stage, err)
	}
	newWds := map[int32]string{}
	defer func() {
		if err != nil {
			for wd := range newWds {
				unix.InotifyRmWatch(l.ifd, uint32(wd))
			}
			os.RemoveAll(l.stage)
		}
	}()
	if err := os.Mkdir(l.stage, 0o755); err != nil {
		return wrap(op, ErrIO, "create "+l.stage, err)
	}
	for _, d := range t.Dirs {
		if err := os.Mkdir(filepath.Join(l.stage, d), 0o755); err != nil {
			return wrap(op, ErrIO, "create directory "+d, err)
		}
	}
	for _, f := range t.Files {
		p := filepath.Join(l.stage, f.Path)
		if err := os.WriteFile(p, []byte(f.Data), 0o600); err != nil {
			return wrap(op, ErrIO, "write "+f.Path, err)
		}
		if err := os.Chmod(p, os.FileMode(f.Mode)); err != nil { // exact, whatever the umask
			return wrap(op, ErrIO, "chmod "+f.Path, err)
		}
	}
	// Watched only now: the writes above raised no event.
	for _, f := range t.Files {
		wd, err := unix.InotifyAddWatch(l.ifd, filepath.Join(l.stage, f.Path), unix.IN_CLOSE_WRITE)
		if err != nil {
			return wrap(op, ErrIO, "inotify_add_watch "+f.Path, err)
		}
		newWds[int32(wd)] = f.Path
	}
	err = unix.Renameat2(unix.AT_FDCWD, l.stage, unix.AT_FDCWD, l.root, unix.RENAME_EXCHANGE)
	if errors.Is(err, unix.ENOENT) {
		err = os.Rename(l.stage, l.root) // no tree yet
	} else if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		// a filesystem without RENAME_EXCHANGE: not atomic, but complete
		if err = os.RemoveAll(l.root); err == nil {
			err = os.Rename(l.stage, l.root)
		}
	}
	if err != nil {
		return wrap(op, ErrIO, "swap "+l.stage+" and "+l.root, err)
	}
	for wd := range l.wds {
		unix.InotifyRmWatch(l.ifd, uint32(wd))
	}
	l.wds, l.last = newWds, t
	if rerr := os.RemoveAll(l.stage); rerr != nil { // the old tree, now
		l.log("klp-agent: removing the old livepatch tree: %v", rerr)
	}
	return nil
}

// restore shows the last tree again (after a write the agent refused
// itself or the host never answered).
func (l *lpTree) restore() {
	l.mu.Lock()
	t := l.last
	l.mu.Unlock()
	if err := l.replace(t); err != nil {
		l.log("klp-agent: restoring the livepatch tree: %v", err)
	}
}

// watch reads inotify events until close.
func (l *lpTree) watch() {
	buf := make([]byte, 64*(unix.SizeofInotifyEvent+unix.NAME_MAX+1))
	for {
		n, err := l.inf.Read(buf)
		if err != nil {
			if !errors.Is(err, os.ErrClosed) {
				l.log("klp-agent: livepatch tree: inotify: %v", err)
			}
			return
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			wd := int32(nativeU32(buf[off:]))
			mask := nativeU32(buf[off+4:])
			nameLen := int(nativeU32(buf[off+12:]))
			off += unix.SizeofInotifyEvent + nameLen
			if mask&unix.IN_CLOSE_WRITE == 0 {
				continue // IN_IGNORED of a removed tree's files, ...
			}
			l.mu.Lock()
			rel, ok := l.wds[wd]
			l.mu.Unlock()
			if ok {
				l.written(rel)
			}
		}
	}
}

// nativeU32 reads a field of struct inotify_event (host byte order:
// the agent runs on x86-64).
func nativeU32(b []byte) uint32 {
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}

// written forwards a guest process's write of rel to the host.
func (l *lpTree) written(rel string) {
	f, err := os.Open(filepath.Join(l.root, rel))
	if err != nil {
		return // replaced meanwhile: the write went to a tree no longer shown
	}
	b := make([]byte, 2*lpValueMax)
	n, rerr := io.ReadFull(f, b)
	f.Close()
	if rerr != nil && rerr != io.EOF && rerr != io.ErrUnexpectedEOF {
		l.logf(4, rel, "", "EIO: reading the value back: %v", rerr)
		l.restore()
		return
	}
	// as the guest kernel's sysfs: trailing newlines go, the rest is the value
	value := strings.TrimRight(string(b[:n]), "\r\n")
	if n == len(b) || len(value) >= lpValueMax {
		l.logf(4, rel, value, "EINVAL: at most %d bytes", lpValueMax-1)
		l.restore()
		return
	}
	l.pmu.Lock()
	if len(l.pending) >= lpMaxPending {
		l.pmu.Unlock()
		l.logf(4, rel, value, "EBUSY: %d writes await the host already", lpMaxPending)
		l.restore()
		return
	}
	l.nextID++
	id := l.nextID
	w := &lpWrite{rel: rel, value: value}
	w.timer = time.AfterFunc(lpReplyTimeout, func() {
		l.pmu.Lock()
		_, ok := l.pending[id]
		delete(l.pending, id)
		l.pmu.Unlock()
		if ok {
			l.logf(4, rel, value, "ETIMEDOUT: no answer from the host in %v", lpReplyTimeout)
			l.restore()
		}
	})
	l.pending[id] = w
	l.pmu.Unlock()
	l.event("sysfs-write", map[string]any{"id": id, "path": l.root + "/" + rel, "value": value})
}

// reply takes the host's sysfs-reply: the write it answers is done, and
// its outcome goes to the kernel log. Unknown ids are dropped (a reply
// after the timeout, or to no one).
func (l *lpTree) reply(args json.RawMessage) {
	var r struct {
		ID    uint64 `json:"id"`
		Errno int    `json:"errno"`
		Desc  string `json:"desc"`
	}
	if json.Unmarshal(args, &r) != nil || r.Errno < 0 || r.Errno > 4095 {
		l.log("klp-agent: malformed sysfs-reply dropped")
		return
	}
	l.pmu.Lock()
	w, ok := l.pending[r.ID]
	delete(l.pending, r.ID)
	l.pmu.Unlock()
	if !ok {
		return
	}
	w.timer.Stop()
	if r.Errno == 0 {
		l.logf(6, w.rel, w.value, "done")
		return
	}
	name := unix.ErrnoName(syscall.Errno(r.Errno))
	if name == "" {
		name = "errno " + strconv.Itoa(r.Errno)
	}
	if d := oneLine(r.Desc, lpDescMax); d != "" {
		l.logf(4, w.rel, w.value, "%s: %s", name, d)
	} else {
		l.logf(4, w.rel, w.value, "%s", name)
	}
}

// logf writes one kernel-log record "<level>klp-kvm: rel=value: msg".
func (l *lpTree) logf(level int, rel, value, format string, args ...any) {
	msg := fmt.Sprintf("klp-kvm: %s=%s: %s", rel, oneLine(value, lpValueMax+8), fmt.Sprintf(format, args...))
	l.log("klp-agent: %s", msg)
	if l.kmsg == nil {
		return
	}
	l.logMu.Lock()
	defer l.logMu.Unlock()
	if _, err := fmt.Fprintf(l.kmsg, "<%d>%s\n", level, msg); err != nil {
		l.log("klp-agent: kernel log: %v", err)
	}
}

// oneLine makes untrusted text fit one log line: printable ASCII kept,
// anything else escaped as Go does ("\n", "\x00", "\u00e9"), clipped to
// max bytes.
func oneLine(s string, max int) string {
	var b strings.Builder
	for _, r := range s {
		if r >= 0x20 && r <= 0x7e {
			b.WriteRune(r)
		} else {
			b.WriteString(strings.Trim(strconv.QuoteRuneToASCII(r), "'"))
		}
		if b.Len() > max {
			break
		}
	}
	out := b.String()
	if len(out) > max {
		out = out[:max] + "..."
	}
	return out
}
