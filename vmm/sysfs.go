package vmm

import (
	"context"
	"errors"
	"fmt"
	"path"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"klp-kvm/api"
	"klp-kvm/klperr"
	"klp-kvm/kvm/agent"
	"klp-kvm/linuxlive"
	"klp-kvm/livepatch"
)

// The livepatch sysfs of a Linux guest. klp-kvm's own guest kernel
// renders /sys/kernel/livepatch itself from klp_sysfs_state and blocks a
// writer until the host answers; a Linux guest's patches are the host's,
// so its agent (guestagent) shows them as plain files under
// agent.LinuxLivepatchRoot, the tree LivepatchTree builds from the
// manager's state, and forwards writes to them as the same sysfs-write
// event. Here:
//
//   - treePusher sends the whole tree after every change: each patch
//     operation of the API (linuxPatcher; the push starts once the
//     operation's reply is sent), each guest write (whatever its
//     outcome: a refused one is undone in the file), and each agent-ready
//     (a restarted agent starts with an empty tree);
//   - VMM.sysfsWrite carries out a write for either guest kind, for the
//     event loop and for the API's file writes under the root
//     (linuxAgent), so `klp-kvm sysfs write` gets the errno on both;
//   - linuxAgent waits for the push in flight before each guest request,
//     so a request made after an API reply sees the tree as of that reply.

// LivepatchTree renders a livepatch state as the tree of Linux's
// /sys/kernel/livepatch, the files and values klp-kvm's own guest shows
// (guestkernel/kernel/sysfs.c): <patch>/{enabled (0644), force (0200),
// replace, stack_order, transition (0444)}, <patch>/<object>/patched
// (0444) and a directory <patch>/<object>/<function>,<sympos> per
// function (sympos 0 shown as 1, as Linux names the kobject). During a
// transition enabled shows the target state, as in Linux.
func LivepatchTree(st livepatch.Status) agent.Tree {
	t := agent.Tree{Dirs: []string{}, Files: []agent.TreeFile{}}
	b := func(v bool) string {
		if v {
			return "1\n"
		}
		return "0\n"
	}
	for i, p := range st.Patches {
		order := p.StackOrder
		if order == 0 {
			order = i + 1
		}
		trans := p.Transition || st.InTransition == p.Name
		t.Dirs = append(t.Dirs, p.Name)
		t.Files = append(t.Files,
			agent.TreeFile{Path: p.Name + "/enabled", Data: b(p.Enabled), Mode: 0o644},
			agent.TreeFile{Path: p.Name + "/force", Data: b(p.Forced), Mode: 0o200},
			agent.TreeFile{Path: p.Name + "/replace", Data: b(p.Replace), Mode: 0o444},
			agent.TreeFile{Path: p.Name + "/stack_order", Data: strconv.Itoa(order) + "\n", Mode: 0o444},
			agent.TreeFile{Path: p.Name + "/transition", Data: b(trans), Mode: 0o444})
		for _, o := range p.Objects {
			od := p.Name + "/" + o.Name
			t.Dirs = append(t.Dirs, od)
			t.Files = append(t.Files, agent.TreeFile{Path: od + "/patched", Data: b(p.Enabled || trans), Mode: 0o444})
			for _, f := range o.Funcs {
				pos := f.OldSympos
				if pos == 0 {
					pos = 1
				}
				t.Dirs = append(t.Dirs, od+"/"+f.OldName+","+strconv.Itoa(pos))
			}
		}
	}
	return t
}

// treePusher sends the livepatch tree to the guest's agent after each
// Kick, one push at a time, coalescing kicks that come while one is in
// flight (the newest state is what is sent). Flush waits for the pushes
// asked for so far.
type treePusher struct {
	status func() livepatch.Status
	push   func(ctx context.Context, t agent.Tree) error
	logf   func(format string, args ...any)

	mu       sync.Mutex
	want     uint64        // kicks so far
	started  uint64        // the kicks the push in progress (or the last) covers
	done     uint64        // the kicks the last finished push covered
	finished chan struct{} // closed and replaced when done moves
	kick     chan struct{}
	stop     chan struct{}
	stopOnce sync.Once
	exited   chan struct{}
}

// pushTimeout bounds one push (the agent answers within milliseconds;
// a guest that does not is stopped or stuck).
const pushTimeout = 10 * time.Second

func newTreePusher(status func() livepatch.Status, push func(context.Context, agent.Tree) error, logf func(string, ...any)) *treePusher {
	return &treePusher{status: status, push: push, logf: logf, finished: make(chan struct{}),
		kick: make(chan struct{}, 1), stop: make(chan struct{}), exited: make(chan struct{})}
}

// Kick asks for a push of the current state.
func (p *treePusher) Kick() {
	p.Want()
	p.Start()
}

// Want asks for a push without starting it: Flush waits for it from now
// on, and starts it if nobody has (Start). An API operation wants the
// push before its reply and starts it after (api.AfterReplier), so that
// the push does not share the CPU with the reply, while a guest request
// sent after the reply still sees the tree as of it.
func (p *treePusher) Want() {
	p.mu.Lock()
	p.want++
	p.mu.Unlock()
}

// Start lets run push what has been asked for.
func (p *treePusher) Start() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// run pushes until Stop.
func (p *treePusher) run() {
	defer close(p.exited)
	for {
		select {
		case <-p.kick:
		case <-p.stop:
			return
		}
		p.mu.Lock()
		gen := p.want
		if gen == p.started { // a second Start for what is pushed already
			p.mu.Unlock()
			continue
		}
		p.started = gen
		p.mu.Unlock()
		t := LivepatchTree(p.status())
		ctx, cancel := context.WithTimeout(context.Background(), pushTimeout)
		err := p.push(ctx, t)
		cancel()
		if err != nil && !errors.Is(err, agent.ErrClosed) {
			p.logf("guest livepatch tree not updated: %v", err)
		}
		p.mu.Lock()
		if gen > p.done {
			p.done = gen
			close(p.finished)
			p.finished = make(chan struct{})
		}
		p.mu.Unlock()
	}
}

// Flush waits until every push asked for before the call has been made
// (or failed), or ctx ends.
func (p *treePusher) Flush(ctx context.Context) error {
	p.mu.Lock()
	want := p.want
	for p.done < want {
		ch, unstarted := p.finished, p.started < want
		p.mu.Unlock()
		if unstarted {
			p.Start() // wanted (Want), and nobody started it yet
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-p.exited:
			return nil
		}
		p.mu.Lock()
	}
	p.mu.Unlock()
	return nil
}

// Stop ends run.
func (p *treePusher) Stop() { p.stopOnce.Do(func() { close(p.stop) }) }

// sysfsWrite carries out a write to the guest's livepatch sysfs, for
// either guest kind: the event a guest process's write raises, and the
// API's file writes under a Linux guest's root. A Linux guest's tree is
// pushed again afterwards, whatever the outcome, so the file shows the
// state reached. The error's errno is what the write returns.
func (v *VMM) sysfsWrite(p, value string) error {
	switch {
	case v.draining.Load():
		return fmt.Errorf("the VMM is stopping: %w", syscall.ESHUTDOWN)
	case v.Manager != nil:
		return v.Manager.SysfsWrite(p, value)
	case v.Linux != nil:
		defer v.tree.Kick()
		rel, ok := linuxSysfsRel(p)
		if !ok {
			return fmt.Errorf("%q is not under %s: %w", clip(p), agent.LinuxLivepatchRoot, syscall.EPERM)
		}
		return v.Linux.SysfsWrite(rel, value)
	}
	if v.NoLivepatch != nil {
		return fmt.Errorf("%v: %w", v.NoLivepatch, syscall.ENODEV)
	}
	return fmt.Errorf("this guest cannot be live patched: %w", syscall.ENODEV)
}

// linuxSysfsRel is p relative to a Linux guest's livepatch root.
func linuxSysfsRel(p string) (string, bool) {
	p = path.Clean(p)
	if p == agent.LinuxLivepatchRoot {
		return "", true
	}
	return strings.CutPrefix(p, agent.LinuxLivepatchRoot+"/")
}

func clip(s string) string {
	if len(s) > api.MaxEcho {
		return s[:api.MaxEcho] + "..."
	}
	return s
}

// linuxPatcher is the API's Patcher of a Linux guest: linuxlive's
// operations, each followed by a push of the tree (also after a failure:
// a failed load may have registered and unregistered), wanted before the
// reply and started after it (AfterReply).
type linuxPatcher struct {
	*linuxlive.Manager
	tree *treePusher
}

func (l linuxPatcher) Register(data []byte, nameHint string) (*livepatch.Patch, error) {
	defer l.tree.Want()
	return l.Manager.Register(data, nameHint)
}

func (l linuxPatcher) Load(data []byte, nameHint string, o livepatch.Options) (*livepatch.Patch, *livepatch.Result, error) {
	defer l.tree.Want()
	return l.Manager.Load(data, nameHint, o)
}

func (l linuxPatcher) Enable(name string, o livepatch.Options) (*livepatch.Result, error) {
	defer l.tree.Want()
	return l.Manager.Enable(name, o)
}

func (l linuxPatcher) Disable(name string, o livepatch.Options) (*livepatch.Result, error) {
	defer l.tree.Want()
	return l.Manager.Disable(name, o)
}

func (l linuxPatcher) Unload(name string, o livepatch.Options) (*livepatch.Result, error) {
	defer l.tree.Want()
	return l.Manager.Unload(name, o)
}

func (l linuxPatcher) Unregister(name string) error {
	defer l.tree.Want()
	return l.Manager.Unregister(name)
}

// AfterReply starts the push the operation wanted, its reply sent.
func (l linuxPatcher) AfterReply() { l.tree.Start() }

// flushWait bounds how long a guest request waits for the tree push in
// flight; past it the request goes ahead (the push is logged if it fails).
const flushWait = 5 * time.Second

// linuxAgent is the API's agent of a Linux guest: the tree's root for
// `klp-kvm sysfs`, writes under the root carried out by the host (with
// their errno, as klp-kvm's own guest returns it), and every request
// after the pushes asked for before it.
type linuxAgent struct {
	api.Agent
	v *VMM
}

// Sysfs names the root (api.SysfsRooter); u-root's ls marks directories
// with -F as klp-kvm's own guest's ls does.
func (linuxAgent) Sysfs() api.SysfsInfo {
	return api.SysfsInfo{Root: agent.LinuxLivepatchRoot, List: "ls -F"}
}

func (a linuxAgent) flush(ctx context.Context) {
	if a.v.tree == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, flushWait)
	defer cancel()
	a.v.tree.Flush(ctx)
}

func (a linuxAgent) Info(ctx context.Context) (agent.Info, error) {
	a.flush(ctx)
	return a.Agent.Info(ctx)
}

func (a linuxAgent) Exec(ctx context.Context, cmd string) (agent.ExecResult, error) {
	a.flush(ctx)
	return a.Agent.Exec(ctx, cmd)
}

func (a linuxAgent) FileRead(ctx context.Context, p string) (string, bool, error) {
	a.flush(ctx)
	return a.Agent.FileRead(ctx, p)
}

func (a linuxAgent) FileWrite(ctx context.Context, p, data string) error {
	if _, ok := linuxSysfsRel(p); ok && a.v.Linux != nil {
		err := a.v.sysfsWrite(p, data)
		a.flush(ctx) // the reply comes with the file showing the state reached
		return err
	}
	a.flush(ctx)
	return a.Agent.FileWrite(ctx, p, data)
}

// sysfsReply answers a sysfs-write event. A Linux guest's agent logs the
// outcome in the guest's kernel log, so it gets the error's text too
// (klp-kvm's own guest kernel takes id and errno only).
func (v *VMM) sysfsReply(id uint64, err error) error {
	errno := 0
	if err != nil {
		errno = int(klperr.Errno(err))
	}
	if v.Linux == nil {
		return v.Agent.SysfsReply(id, errno)
	}
	args := map[string]any{"id": id, "errno": errno}
	if err != nil {
		args["desc"] = err.Error()
	}
	return v.Agent.Notify("sysfs-reply", args)
}
