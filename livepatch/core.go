// Package livepatch carries out Linux's livepatch operations
// (klp_register_patch, klp_enable_patch, klp_disable_patch,
// klp_unregister_patch) on a running guest from the host. Its files follow
// Linux's split: core.go is kernel/livepatch/core.c (object model, API,
// sysfs state mirror, relocation through elfpatch), patch.go is patch.c
// (klp_ops and func_stack: which function each patched site runs),
// transition.go is transition.c (the stop_machine-style switch with its
// consistency check, retries, rollback and force), state.go is state.c
// (the system states: klp_is_patch_compatible at enable, and the list of
// installed patches the guest's klp_get_prev_state walks).
package livepatch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log"
	"path"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"klp-kvm/elfpatch"
	"klp-kvm/ftrace"
	"klp-kvm/guestkernel"
	"klp-kvm/kvm/engine"
)

// Guest is what the livepatch core needs of the machine; kvm.Machine
// satisfies it, unit tests use a fake over a byte slice.
type Guest interface {
	ReadVirt(va uint64, b []byte) error
	WriteVirt(va uint64, b []byte) error
	Pause() error
	Resume() error
	Paused() bool
	NumCPUs() int
	Regs(id int) (engine.Regs, error)
}

// PausedRegser is optionally implemented by a Guest that records every
// vCPU's registers as it stops (one snapshot per pause, in vCPU order):
// the consistency check then needs no round trip to each vCPU's thread,
// which is most of its cost in the pause window.
type PausedRegser interface {
	PausedRegs() ([]engine.Regs, error)
}

// Stepper is optionally implemented by a Guest that can let some vCPUs
// run while the others stay paused (kvm.Machine.RunUntil): each listed
// vCPU runs until it reaches one of its addresses or the budget is spent.
// It is what makes the progress guarantee possible: a vCPU running inside
// a changing function is let out of it inside the same pause.
type Stepper interface {
	RunUntil(stops map[int][]uint64, budget time.Duration) (reached int, err error)
}

// CallbackRunner calls a function in the guest with one argument (the
// pre/post (un)patch callbacks, which take the struct klp_object) and
// returns its return value; the guest agent's guest-call.
type CallbackRunner func(ctx context.Context, addr, arg uint64) (int64, error)

// Config sets up a Manager.
type Config struct {
	Guest         Guest
	Vmlinux       []byte // the guest kernel's ELF image (not needed when Kernel is set)
	PatchArea     uint64 // virtual base of the patch area
	PatchAreaSize uint64
	Callbacks     CallbackRunner // nil: patches with callbacks are refused (ENODEV)
	// CallbackTimeout bounds each callback; default 10 s.
	CallbackTimeout time.Duration
	// SysfsBudget bounds each guest sysfs write (SysfsWrite); default
	// SysfsBudget. It must stay below the guest's klp.sysfs_timeout_ms.
	SysfsBudget time.Duration
	// Logf reports what no caller receives: a guest's sysfs write that
	// succeeded although a callback did not run (the write returns 0:
	// the switch was made). Nil: the standard logger (log.Printf).
	Logf func(format string, args ...any)
	// Kernel is the guest kernel already parsed, typically the machine's
	// (kvm.Machine.Kernel), so that one parse serves the machine and the
	// Manager. When it is set New does not parse Vmlinux, which may then be
	// nil (if not, it must hold the same image, or New fails with EINVAL).
	// Nil: New parses Vmlinux.
	Kernel *elfpatch.Kernel
}

// Options tune one enable or disable.
type Options struct {
	Force        bool          // skip the consistency check (Linux's force)
	Deadline     time.Duration // how long to retry a blocked transition; default 5 s
	Conservative bool          // scan every stack word (Ksplice) instead of the frame-pointer chain
	// NoProgress turns off the progress guarantee (blocking vCPUs let run
	// out of the changing code inside the pause): every blocked attempt
	// then resumes the guest and retries, as Linux and kpatch do. For
	// comparisons and benchmarks.
	NoProgress bool
}

// DefaultDeadline is how long a blocked transition is retried.
const DefaultDeadline = 5 * time.Second

// SysfsBudget is how long a guest's write to a livepatch sysfs file
// (SysfsWrite) may take in all, by default: waiting for the operation in
// progress, the callbacks (each also bounded by CallbackTimeout) and the
// transition (DefaultDeadline, cut short so that the callbacks after it
// keep time: transitionDeadline). The guest's writer waits
// klp.sysfs_timeout_ms for the answer (20 s by default,
// guestkernel/kernel/sysfs.c) and then fails with ETIMEDOUT whatever the
// host did; the host answers first, with the errno of the state it
// reached, and 5 s to spare for the reply's way to the guest.
const SysfsBudget = 15 * time.Second

// Func is a struct klp_func: the old function and its replacement.
type Func struct {
	OldName   string `json:"old_name"`
	OldSympos int    `json:"old_sympos"`
	OldAddr   uint64 `json:"old_addr"`
	OldSize   uint64 `json:"old_size"`
	Site      uint64 `json:"site"`
	NewName   string `json:"new_name,omitempty"`
	NewAddr   uint64 `json:"new_addr,omitempty"` // 0 until the patch is laid out
	NewSize   uint64 `json:"new_size,omitempty"`
	newOff    uint64 // NewAddr - image base: the same for every base
}

// Object is a struct klp_object; the guest has no modules, so it is
// always vmlinux.
type Object struct {
	Name      string    `json:"name"`
	Funcs     []*Func   `json:"funcs"`
	Callbacks [4]uint64 `json:"callbacks,omitempty"` // addresses once laid out; 0 = none
	Addr      uint64    `json:"addr,omitempty"`      // its struct klp_object (the callbacks' argument)
	hasCB     [4]bool
}

// Patch is a struct klp_patch and its state.
type Patch struct {
	Name       string    `json:"name"`
	Replace    bool      `json:"replace"`
	Enabled    bool      `json:"enabled"`
	Transition bool      `json:"transition"`
	Forced     bool      `json:"forced"` // a forced transition touched it (sticky, as in Linux)
	Objects    []*Object `json:"objects"`
	// States are the system states the patch declares (klp_patch.states):
	// what the enable's compatibility check compares. Not in the guest's
	// sysfs, as in Linux; in the JSON only when there are some.
	States    []State `json:"states,omitempty"`
	ImageAddr uint64  `json:"image_addr,omitempty"` // 0 while not in the patch area
	ImageSize uint64  `json:"image_size"`

	parsed *elfpatch.Patch
	image  *elfpatch.Image
	// dry is register's layout at the start of the patch area. Layout is
	// deterministic in the base and an Image is never modified, so an
	// enable that gets the same address uses it instead of laying the
	// patch out again (the cost behind the slow first enable: 2-3 ms at
	// 1024 functions).
	dry    *elfpatch.Image
	saved  []byte // patch-area bytes the image overwrote (restored on failure)
	target bool   // while Transition: the state the transition goes to (klp_target_state)
	// cbPending: a callback call into this image failed (it timed out,
	// the agent went away): the guest may still run it.
	cbPending bool
	// shown is the copy of Objects that published snapshots share, made
	// again only after bindImage or dropImage changed an address (nil):
	// copying 1024 functions on every publish, three per enable, was
	// a tenth of a 1024-function enable's garbage. Snapshots are never
	// changed; Status hands out a copy.
	shown []*Object
}

// shownEnabled is the patch's enabled attribute as Linux shows it: the
// target state while the patch is in transition (__klp_enable_patch sets
// patch->enabled before the transition completes, __klp_disable_patch
// clears it), else its state.
func (p *Patch) shownEnabled() bool {
	if p.Transition {
		return p.target
	}
	return p.Enabled
}

// hasPostCallbacks reports whether an object of p has a post_patch or
// post_unpatch callback (what runs after a transition, or after a
// cancelled one).
func (p *Patch) hasPostCallbacks() bool {
	for _, o := range p.Objects {
		if o.hasCB[cbPostPatch] || o.hasCB[cbPostUnpatch] {
			return true
		}
	}
	return false
}

func (p *Patch) funcs() []*Func {
	var out []*Func
	for _, o := range p.Objects {
		out = append(out, o.Funcs...)
	}
	return out
}

// Result describes a completed enable or disable.
type Result struct {
	Op          string        `json:"op"`
	Patch       string        `json:"patch"`
	Attempts    int           `json:"attempts"`
	Forced      bool          `json:"forced"`
	Funcs       int           `json:"funcs"`
	PauseWindow time.Duration `json:"pause_window_ns"`          // Pause..Resume of the switching attempt
	Stop        time.Duration `json:"stop_ns"`                  // in the window: stopping every vCPU (Pause)
	Check       time.Duration `json:"check_ns"`                 // in the window: the stack checks
	Poke        time.Duration `json:"poke_ns"`                  // in the window: the verified text pokes
	Resume      time.Duration `json:"resume_ns"`                // in the window: restarting every vCPU (Resume)
	Steps       int           `json:"steps,omitempty"`          // progress rounds: blocking vCPUs let run out of the changing code
	StepTime    time.Duration `json:"step_ns,omitempty"`        // time spent in them (inside pause windows)
	ResumeErr   string        `json:"resume_error,omitempty"`   // the guest did not restart after the switch (which stands)
	CallbackErr string        `json:"callback_error,omitempty"` // a callback that did not run to completion (the switch stands; the operation returned ErrSwitched)
	Total       time.Duration `json:"total_ns"`
	Replaced    []string      `json:"replaced,omitempty"` // patches an atomic replace removed
}

// Manager holds the livepatch state of one guest; the package has no
// other state. Every operation takes its mutex: operations are
// serialised, as under Linux's klp_mutex. Every unexported method that
// needs m.mu held says so ("m.mu must be held") and the main ones check
// it (mustHold). Readers of the state (Status, Patches) do not take it:
// they read the snapshot published at each change (publish), so they
// answer while an operation, and its transition, is in progress.
type Manager struct {
	mu sync.Mutex

	// Set by New, then only read.
	g      Guest
	kernel *elfpatch.Kernel
	syms   *guestkernel.Symbols
	intro  *guestkernel.Guest // nil if the guest has no klp_guest_abi
	cb     CallbackRunner
	cbTO   time.Duration
	logf   func(format string, args ...any)
	budget time.Duration // SysfsWrite's

	// Guarded by mu (and the tracer's sites, the guest's sysfs mirror and
	// the patches' fields with them).
	tracer  *ftrace.Tracer
	scratch checkScratch // the consistency check's working memory (check.go)
	sysfs   *guestkernel.SysfsWriter
	// klp_patch_list, the guest's view of Linux's klp_patches and
	// klp_transition_patch for the state API (state.go); nil for a guest
	// kernel from before klp_state. plistOpen: a transition published it
	// (beginPatchList) and has not ended it yet.
	plist     *guestkernel.PatchListWriter
	plistOpen bool
	patches   []*Patch        // registration order: the stack
	ops       map[uint64]*Ops // by old_addr
	last      *Result
	retired   uint64 // patch-area bytes of forced patches' images, never freed
	// patch-area bytes of images a callback call into failed (the guest
	// may still run it), never freed
	quarantined uint64
	// The redirected sites as last published, recomputed only after a
	// commit or rollback of site changes (sitesChanged): a sorted walk of
	// every fentry site is most of publish's cost.
	redirected   []ftrace.Site
	sitesChanged bool

	// Atomics, used without mu: a guest's write to <patch>/force arrives
	// while the transition in progress holds mu (forceTransition).
	cur atomic.Pointer[transition] // the transition in progress (Linux's klp_transition_patch), nil if none
	// What Status reads without mu: the state as of its last change
	// (written under mu by publish, immutable once stored) and the
	// operation holding mu (lock, setBusy, unlock).
	snap atomic.Pointer[Status]
	busy atomic.Pointer[Progress]

	// lockChecks turns mustHold's check on; the package's tests set it
	// on every Manager they build.
	lockChecks bool
}

// mustHold is a debug assertion: with lockChecks on it panics when m.mu
// is not held. TryLock cannot tell who holds the mutex, only that someone
// does, so it catches the bug that matters (a method that needs the lock
// reached without it), not a lock held by another goroutine.
func (m *Manager) mustHold() {
	if m.lockChecks && m.mu.TryLock() {
		m.mu.Unlock()
		panic("livepatch: m.mu must be held")
	}
}

// lock takes m.mu for the public operation op on patch name (a file name
// until a register knows the patch's), which Status shows as in
// progress until unlock.
func (m *Manager) lock(op, name string) {
	m.mu.Lock()
	m.busy.Store(&Progress{Op: op, Patch: name, Phase: op, Since: time.Now()})
}

// lockCtx is lock, giving up when ctx ends first: an error then names
// the operation that holds m.mu.
func (m *Manager) lockCtx(ctx context.Context, op, name string) error {
	if !m.mu.TryLock() {
		got := make(chan struct{})
		go func() {
			m.mu.Lock()
			close(got)
		}()
		select {
		case <-got:
		case <-ctx.Done():
			go func() { // the lock is taken some day: give it back
				<-got
				m.mu.Unlock()
			}()
			held := "another operation"
			if b := m.busy.Load(); b != nil {
				held = fmt.Sprintf("%s %s (%s, for %v)", b.Op, b.Patch, b.Phase, time.Since(b.Since).Round(time.Millisecond))
			}
			return fmt.Errorf("%s is in progress and did not end in time", held)
		}
	}
	m.busy.Store(&Progress{Op: op, Patch: name, Phase: op, Since: time.Now()})
	return nil
}

// unlock publishes the state the operation leaves and releases m.mu.
func (m *Manager) unlock() {
	m.publish()
	m.busy.Store(nil)
	m.mu.Unlock()
}

// setBusy shows the operation in progress entering phase (and, when
// patch is not "", acting on patch). m.mu must be held.
func (m *Manager) setBusy(patch, phase string) {
	m.mustHold()
	b := m.busy.Load()
	if b == nil {
		return
	}
	c := *b
	if patch != "" {
		c.Patch = patch
	}
	c.Phase = phase
	m.busy.Store(&c)
}

// New builds a manager for a guest whose kernel is vmlinux. The guest must
// have klp_sysfs_state (the sysfs mirror); klp_guest_abi (task stacks) is
// used when present.
func New(cfg Config) (*Manager, error) {
	const op = "init"
	if cfg.Guest == nil {
		return nil, errorf(op, "", syscall.EINVAL, "no guest")
	}
	k := cfg.Kernel
	if k == nil {
		var err error
		if k, err = elfpatch.ParseKernel(cfg.Vmlinux); err != nil {
			return nil, &Error{Op: op, Errno: syscall.EINVAL, Detail: "guest kernel", Err: err}
		}
	} else if v, d := cfg.Vmlinux, k.Data(); len(v) > 0 && (len(v) != len(d) || (&v[0] != &d[0] && !bytes.Equal(v, d))) {
		return nil, errorf(op, "", syscall.EINVAL, "Vmlinux and Kernel are different images")
	}
	syms := guestkernel.NewSymbols(k)
	al, err := ftrace.NewAllocator(cfg.PatchArea, cfg.PatchAreaSize)
	if err != nil {
		return nil, &Error{Op: op, Errno: syscall.EINVAL, Detail: "patch area", Err: err}
	}
	sw, err := guestkernel.NewSysfsWriterSym(cfg.Guest, syms)
	if err != nil {
		return nil, &Error{Op: op, Errno: syscall.ENODEV, Detail: "klp_sysfs_state", Err: err}
	}
	pl, err := guestkernel.NewPatchListWriterSym(cfg.Guest, syms)
	switch {
	case errors.Is(err, guestkernel.ErrNotFound):
		pl = nil // a guest kernel from before klp_state: no state API in it
	case err != nil:
		return nil, &Error{Op: op, Errno: syscall.ENODEV, Detail: "klp_patch_list", Err: err}
	}
	m := &Manager{g: cfg.Guest, kernel: k, syms: syms, tracer: ftrace.New(cfg.Guest, al, k.FentrySites()),
		sysfs: sw, plist: pl, cb: cfg.Callbacks, cbTO: cfg.CallbackTimeout, logf: cfg.Logf, budget: cfg.SysfsBudget, ops: map[uint64]*Ops{},
		sitesChanged: true}
	if m.budget <= 0 {
		m.budget = SysfsBudget
	}
	if m.logf == nil {
		m.logf = log.Printf
	}
	if m.cbTO <= 0 {
		m.cbTO = 10 * time.Second
	}
	if g, err := guestkernel.Open(cfg.Guest, syms); err == nil {
		g.AddText(cfg.PatchArea, cfg.PatchArea+cfg.PatchAreaSize)
		m.intro = g
	}
	if err := m.writeSysfs(); err != nil {
		return nil, &Error{Op: op, Errno: syscall.EIO, Detail: "klp_sysfs_state", Err: err}
	}
	if m.plist != nil {
		if err := m.writePatchList(); err != nil {
			return nil, &Error{Op: op, Errno: syscall.EIO, Err: err}
		}
	}
	return m, nil
}

// Tracer exposes the fentry sites and the patch-area allocator (for
// status and leak checks).
func (m *Manager) Tracer() *ftrace.Tracer { return m.tracer }

// find returns a patch and its place in the stack (-1, nil: none of that
// name). m.mu must be held.
func (m *Manager) find(name string) (int, *Patch) {
	m.mustHold()
	for i, p := range m.patches {
		if p.Name == name {
			return i, p
		}
	}
	return -1, nil
}

// Register parses a patch object and checks it against the kernel with a
// dry-run layout (the relocation and symbol checks of klp_enable_patch, so
// a bad patch is refused here with EINVAL and the elfpatch error), then
// adds it, disabled, to the end of the stack and to the guest's sysfs.
// nameHint names the patch when the object has no KLP_MODULE_NAME (a file
// name, as insmod would).
func (m *Manager) Register(data []byte, nameHint string) (*Patch, error) {
	m.lock("register", nameHint)
	defer m.unlock()
	return m.register(data, nameHint)
}

// register is Register's work. m.mu must be held.
func (m *Manager) register(data []byte, nameHint string) (*Patch, error) {
	const op = "register"
	m.mustHold()
	ep, err := elfpatch.ParsePatch(data)
	if err != nil {
		return nil, &Error{Op: op, Patch: nameHint, Errno: syscall.EINVAL, Err: err}
	}
	name, err := m.patchName(op, ep, nameHint)
	if err != nil {
		return nil, err
	}
	im, err := m.dryLayout(op, name, ep)
	if err != nil {
		return nil, err
	}
	p := newPatch(name, ep, im)
	if err := m.checkFuncs(op, p); err != nil {
		return nil, err
	}
	m.patches = append(m.patches, p)
	if err := m.writeSysfs(); err != nil {
		m.patches = m.patches[:len(m.patches)-1]
		return nil, alsoFailed(&Error{Op: op, Patch: name, Errno: syscall.ENOMEM, Detail: "guest sysfs", Err: err},
			"restoring the guest sysfs", m.writeSysfs())
	}
	return p, nil
}

// patchName is the name a patch registers under: its KLP_MODULE_NAME, else
// the module name nameHint gives. It must be usable as a sysfs directory
// and not registered yet. m.mu must be held.
func (m *Manager) patchName(op string, ep *elfpatch.Patch, nameHint string) (string, error) {
	name := ep.Name
	if name == "" {
		name = elfpatch.ModuleNameFromFile(nameHint)
	}
	if name == "" || len(name) >= guestkernel.SysfsNameLen || strings.ContainsAny(name, "/\x00\n") || name == "." || name == ".." {
		return "", errorf(op, name, syscall.EINVAL, "bad patch name %q", name)
	}
	if _, dup := m.find(name); dup != nil {
		return "", errorf(op, name, syscall.EEXIST, "a patch of this name is registered")
	}
	return name, nil
}

// dryLayout lays the patch out at the start of the patch area without
// writing it anywhere: the relocation and symbol checks of
// klp_enable_patch, done at register time. m.mu must be held.
func (m *Manager) dryLayout(op, name string, ep *elfpatch.Patch) (*elfpatch.Image, error) {
	align, err := ep.Align()
	if err != nil {
		return nil, &Error{Op: op, Patch: name, Errno: syscall.EINVAL, Err: err}
	}
	base := (m.tracer.Alloc().Base() + align - 1) &^ (align - 1)
	im, err := ep.Layout(base, m.kernel)
	if err != nil {
		return nil, &Error{Op: op, Patch: name, Errno: syscall.EINVAL, Err: err}
	}
	return im, nil
}

// newPatch builds the struct klp_patch of a parsed patch from its dry-run
// layout im (the funcs' offsets in the image hold for any base).
func newPatch(name string, ep *elfpatch.Patch, im *elfpatch.Image) *Patch {
	p := &Patch{Name: name, Replace: ep.Replace, parsed: ep, ImageSize: im.Size(), dry: im}
	for _, st := range ep.States {
		p.States = append(p.States, State{ID: st.ID, Version: st.Version})
	}
	sizes := funcSizes(ep)
	for _, io := range im.Objects {
		o := &Object{Name: io.Name}
		for i, cb := range io.Callbacks {
			o.hasCB[i] = cb != 0
		}
		for _, f := range io.Funcs {
			o.Funcs = append(o.Funcs, &Func{OldName: f.OldName, OldSympos: f.OldSympos, OldAddr: f.OldAddr,
				OldSize: f.OldSize, Site: f.Site.Addr, NewName: f.NewName, NewSize: sizes[f.NewName],
				newOff: f.NewAddr - im.Base})
		}
		p.Objects = append(p.Objects, o)
	}
	return p
}

// checkFuncs refuses a function whose site is not one of the kernel's
// fentry sites. A patch of no function is fine, as in Linux: its
// callbacks and states are the point (test_klp_state), or, with replace,
// it reverts every other patch. m.mu must be held.
func (m *Manager) checkFuncs(op string, p *Patch) error {
	for _, f := range p.funcs() {
		if _, ok := m.tracer.Site(f.Site); !ok {
			return errorf(op, p.Name, syscall.EINVAL, "%s: %#x is not an fentry site of the kernel", f.OldName, f.Site)
		}
	}
	return nil
}

// funcSizes maps the patch's function symbols to their sizes (for the
// consistency check's ranges of new functions).
func funcSizes(ep *elfpatch.Patch) map[string]uint64 {
	out := map[string]uint64{}
	for _, s := range ep.Symbols() {
		if s.Type == elfpatch.TypeFunc && s.Defined() && s.Size > out[s.Name] {
			out[s.Name] = s.Size
		}
	}
	return out
}

// Unregister removes a disabled patch: its image leaves the patch area and
// its sysfs entries go (klp_unregister_patch). EBUSY while enabled.
func (m *Manager) Unregister(name string) error {
	m.lock("unregister", name)
	defer m.unlock()
	return m.unregister(name)
}

// unregister is Unregister's work. m.mu must be held.
func (m *Manager) unregister(name string) error {
	const op = "unregister"
	m.mustHold()
	i, p := m.find(name)
	if p == nil {
		return errorf(op, name, syscall.ENOENT, "no such patch")
	}
	if p.Enabled {
		return errorf(op, name, syscall.EBUSY, "the patch is enabled: disable it first")
	}
	m.patches = append(m.patches[:i:i], m.patches[i+1:]...)
	if err := m.writeSysfs(); err != nil {
		m.patches = append(m.patches[:i:i], append([]*Patch{p}, m.patches[i:]...)...)
		return alsoFailed(&Error{Op: op, Patch: name, Errno: syscall.EIO, Detail: "guest sysfs", Err: err},
			"restoring the guest sysfs", m.writeSysfs())
	}
	m.dropImage(p)
	return nil
}

// Load is Register then Enable; a failed enable unregisters again.
func (m *Manager) Load(data []byte, nameHint string, o Options) (*Patch, *Result, error) {
	m.lock("load", nameHint)
	defer m.unlock()
	p, err := m.register(data, nameHint)
	if err != nil {
		return nil, nil, err
	}
	m.setBusy(p.Name, "enable")
	res, err := m.enable(context.Background(), p.Name, o)
	if errors.Is(err, ErrSwitched) {
		return p, res, err // loaded and enabled; a callback did not run
	}
	if err != nil {
		if uerr := m.unregister(p.Name); uerr != nil {
			errno := syscall.EIO
			errors.As(err, &errno)
			return nil, nil, &Error{Op: "load", Patch: p.Name, Errno: errno, Err: err,
				Detail: "and unregistering it again failed: " + uerr.Error()}
		}
		return nil, nil, err
	}
	return p, res, nil
}

// Unload is Disable then Unregister.
func (m *Manager) Unload(name string, o Options) (*Result, error) {
	m.lock("unload", name)
	defer m.unlock()
	// Unload means "make it gone": a patch already disabled (say by a
	// guest-side write to its enabled file) is just unregistered.
	if _, p := m.find(name); p != nil && !p.Enabled {
		return &Result{Op: "unload", Patch: name}, m.unregister(name)
	}
	res, err := m.disable(context.Background(), name, o)
	if err != nil && !errors.Is(err, ErrSwitched) {
		return nil, err
	}
	_, p := m.find(name)
	quarantine := p.cbPending && !p.Forced
	// Disabled: unregistered, even when a callback did not run (err is
	// then ErrSwitched and says which).
	if uerr := m.unregister(name); uerr != nil {
		if err == nil {
			return res, uerr
		}
		return res, alsoFailed(err, "unregistering it", uerr)
	}
	var e *Error
	if errors.As(err, &e) {
		e.Op, e.Detail = "unload", "switched, the patch is disabled and unregistered; but a callback did not run to completion"
		if quarantine {
			e.Detail += ", and its image is quarantined, not freed: the guest may still run it (patch_area_quarantined)"
		}
	}
	return res, err
}

// Enable enables a registered patch (klp_enable_patch).
func (m *Manager) Enable(name string, o Options) (*Result, error) {
	m.lock("enable", name)
	defer m.unlock()
	return m.enable(context.Background(), name, o)
}

// Disable disables an enabled patch (klp_disable_patch).
func (m *Manager) Disable(name string, o Options) (*Result, error) {
	m.lock("disable", name)
	defer m.unlock()
	return m.disable(context.Background(), name, o)
}

// PatchInfo is a snapshot of one patch for the API.
type PatchInfo struct {
	Patch
	StackOrder int `json:"stack_order"`
}

// Status is a snapshot of the livepatch state. A patch in transition
// shows, as in Linux's sysfs, transition=true and, as enabled, the state
// the transition goes to (true during an enable, false during a
// disable); InTransition names it.
type Status struct {
	Patches        []PatchInfo   `json:"patches"`
	Redirected     []ftrace.Site `json:"redirected_sites"`
	PatchAreaBase  uint64        `json:"patch_area_base"`
	PatchAreaSize  uint64        `json:"patch_area_size"`
	PatchAreaInUse uint64        `json:"patch_area_in_use"`
	Retired        uint64        `json:"patch_area_retired"`      // images of forced patches, kept for good
	Quarantined    uint64        `json:"patch_area_quarantined"`  // images a callback did not return from (the guest may still run it), kept for good
	InTransition   string        `json:"in_transition,omitempty"` // the patch in transition (klp_transition_patch), once visible
	InProgress     *Progress     `json:"in_progress,omitempty"`   // the operation being carried out, if any
	Last           *Result       `json:"last_op,omitempty"`
}

// Progress is the operation being carried out (the one holding the
// Manager's lock), as Status shows it.
type Progress struct {
	Op       string    `json:"op"`    // enable, disable, load, unload, register, unregister
	Patch    string    `json:"patch"` // the patch (the file name, until a register knows the patch's)
	Phase    string    `json:"phase"` // what it is doing: its op, pre_patch, transition, post_patch, ...
	Since    time.Time `json:"since"`
	Attempts int       `json:"attempts,omitempty"` // attempts of its transition so far
}

// Status returns the state as of its last change, without waiting for
// the operation in progress: during a transition it shows the patch in
// transition and the operation's phase and attempts so far. The copy is
// the caller's (it may be changed or marshalled while operations go on).
func (m *Manager) Status() Status {
	st := m.snap.Load().clone()
	if b := m.busy.Load(); b != nil {
		c := *b
		if t := m.cur.Load(); t != nil && t.p.Name == c.Patch {
			c.Attempts = int(t.attempts.Load())
		}
		st.InProgress = &c
	}
	return st
}

// Patches returns the names in stack order, as of the last change.
func (m *Manager) Patches() []string {
	var out []string
	for _, p := range m.snap.Load().Patches {
		out = append(out, p.Name)
	}
	return out
}

// publish stores the current state as the snapshot that Status reads.
// Every change is published: by the mirror's write (writeSysfs), which
// follows each change of the patches' state, and at the end of each
// operation (unlock), for the rest (images, the patch area, the last
// result). m.mu must be held (New's own call comes before the Manager is
// shared).
func (m *Manager) publish() {
	m.mustHold()
	al := m.tracer.Alloc()
	if m.sitesChanged {
		m.redirected, m.sitesChanged = m.tracer.Redirected(), false
	}
	st := &Status{Redirected: m.redirected, PatchAreaBase: al.Base(), PatchAreaSize: al.Size(),
		PatchAreaInUse: al.InUse(), Retired: m.retired, Quarantined: m.quarantined}
	for i, p := range m.patches {
		if p.shown == nil {
			p.shown = copyObjects(p.Objects)
		}
		c := *p
		c.parsed, c.image, c.saved, c.dry, c.shown = nil, nil, nil, nil, nil
		c.Enabled = p.shownEnabled()
		c.Objects = p.shown
		if p.Transition {
			st.InTransition = p.Name
		}
		st.Patches = append(st.Patches, PatchInfo{Patch: c, StackOrder: i + 1})
	}
	if m.last != nil {
		l := *m.last
		l.Replaced = append([]string(nil), m.last.Replaced...)
		st.Last = &l
	}
	m.snap.Store(st)
}

// copyObjects copies a patch's objects and their functions.
func copyObjects(objs []*Object) []*Object {
	out := make([]*Object, 0, len(objs))
	for _, o := range objs {
		oc := *o
		fs := make([]Func, len(o.Funcs))
		oc.Funcs = make([]*Func, len(o.Funcs))
		for i, f := range o.Funcs {
			fs[i] = *f
			oc.Funcs[i] = &fs[i]
		}
		out = append(out, &oc)
	}
	return out
}

// clone copies st deeply enough that nothing of the copy is shared with
// st: a published snapshot stays as it was stored.
func (st *Status) clone() Status {
	c := *st
	c.Redirected = append([]ftrace.Site(nil), st.Redirected...)
	c.Patches = make([]PatchInfo, len(st.Patches))
	for i, pi := range st.Patches {
		c.Patches[i] = pi
		c.Patches[i].Objects = copyObjects(pi.Objects)
	}
	if st.Last != nil {
		l := *st.Last
		l.Replaced = append([]string(nil), st.Last.Replaced...)
		c.Last = &l
	}
	if st.InProgress != nil {
		b := *st.InProgress
		c.InProgress = &b
	}
	return c
}

// sysfsState renders the state as the guest's /sys/kernel/livepatch.
// m.mu must be held.
func (m *Manager) sysfsState() []guestkernel.SysfsPatch {
	var out []guestkernel.SysfsPatch
	for i, p := range m.patches {
		// enabled shows the target state during a transition; an object
		// is patched from the start of an enable's transition to the
		// end of a disable's (Linux's klp_patch_object and
		// klp_unpatch_objects, at klp_init and klp_complete_transition).
		sp := guestkernel.SysfsPatch{Name: p.Name, Enabled: p.shownEnabled(), Transition: p.Transition, Force: p.Forced,
			Replace: p.Replace, StackOrder: uint32(i + 1)}
		for _, o := range p.Objects {
			so := guestkernel.SysfsObject{Name: o.Name, Patched: p.Enabled || p.Transition}
			for _, f := range o.Funcs {
				pos := f.OldSympos
				if pos == 0 {
					pos = 1 // Linux shows sympos 0 as 1 (klp_init_func's kobject name)
				}
				so.Funcs = append(so.Funcs, guestkernel.SysfsFunc{Name: f.OldName, Sympos: uint32(pos)})
			}
			sp.Objects = append(sp.Objects, so)
		}
		out = append(out, sp)
	}
	return out
}

// writeSysfs mirrors the state into the guest's klp_sysfs_state and
// publishes it for Status: the guest and the host show each change at
// the same time. m.mu must be held (New's own call comes before the
// Manager is shared).
func (m *Manager) writeSysfs() error {
	m.mustHold()
	err := m.sysfs.Write(m.sysfsState())
	m.publish()
	return err
}

// SysfsWrite carries out a guest process's write to a
// /sys/kernel/livepatch file (forwarded by the agent) with the same code
// path as the API; the returned error carries the errno the guest's
// write() returns. Writable, as in Linux: <patch>/enabled (0/1) and
// <patch>/force (1, only during a transition).
//
// The answer comes within the SysfsBudget (Config.SysfsBudget), before
// the guest's writer gives up, and its errno is always the state
// reached: 0 when the patch is enabled or disabled as asked, even if a
// callback did not run (the host log and Status's last_op say which);
// an errno when it is not (the operation failed or was never started:
// EBUSY while another patch is in transition, as in Linux, or when the
// operation in progress does not end within the budget).
func (m *Manager) SysfsWrite(p, value string) error {
	const op = "sysfs write"
	ctx, cancel := context.WithTimeout(context.Background(), m.budget)
	defer cancel()
	rel := strings.TrimPrefix(path.Clean("/"+strings.TrimPrefix(p, "/sys/kernel/livepatch")), "/")
	parts := strings.Split(rel, "/")
	if len(parts) != 2 || parts[0] == "" {
		if len(parts) > 2 || rel == "" {
			return errorf(op, "", syscall.EPERM, "%s is not writable", p)
		}
		return errorf(op, "", syscall.ENOENT, "%s", p)
	}
	name, attr := parts[0], parts[1]
	on, err := parseBool(value)
	switch attr {
	case "enabled":
		if err != nil {
			return errorf(op, name, syscall.EINVAL, "%q is not a boolean", strings.TrimSpace(value))
		}
		return m.setEnabled(ctx, op, name, on)
	case "force":
		if err != nil || !on {
			return errorf(op, name, syscall.EINVAL, "write 1 to force a transition")
		}
		// No lock: the transition in progress holds it and polls this flag.
		return m.forceTransition(op, name)
	case "transition", "replace", "stack_order":
		return errorf(op, name, syscall.EPERM, "%s is read-only", attr)
	}
	return errorf(op, name, syscall.ENOENT, "%s", p)
}

// setEnabled is a guest's write to <patch>/enabled (Linux's
// enabled_store), within ctx. A write during a transition is answered at
// once: EINVAL for the patch in transition when it asks for the state
// the transition goes to (enabled already shows it), else EBUSY (Linux's
// __klp_enable_patch and __klp_disable_patch refuse while
// klp_transition_patch is set; Linux would reverse the transition for
// the opposite write to its own patch, which this host does not do).
// Otherwise it waits for m.mu as long as ctx lets it (EBUSY after). It
// takes m.mu.
func (m *Manager) setEnabled(ctx context.Context, op, name string, on bool) error {
	if t := m.cur.Load(); t != nil {
		if t.p.Name == name && t.target == on {
			return errorf(op, name, syscall.EINVAL, "the patch is already being %s", map[bool]string{true: "enabled", false: "disabled"}[on])
		}
		return errorf(op, name, syscall.EBUSY, "patch %s is in transition", t.p.Name)
	}
	what := map[bool]string{true: "enable", false: "disable"}[on]
	if err := m.lockCtx(ctx, what, name); err != nil {
		return errorf(op, name, syscall.EBUSY, "%v", err)
	}
	defer m.unlock()
	_, pt := m.find(name)
	if pt == nil {
		return errorf(op, name, syscall.ENOENT, "no such patch")
	}
	if pt.Enabled == on {
		// Linux's enabled_store: writing the current state is EINVAL.
		return errorf(op, name, syscall.EINVAL, "the patch is already %s", map[bool]string{true: "enabled", false: "disabled"}[on])
	}
	var err error
	if on {
		_, err = m.enable(ctx, name, Options{})
	} else {
		_, err = m.disable(ctx, name, Options{})
	}
	if errors.Is(err, ErrSwitched) {
		// The write's errno is the state it leaves: the switch was
		// made, so the write succeeded (Linux's callbacks are void). The
		// callback that did not run is in the host's log and in
		// Status's last_op.callback_error.
		m.logf("livepatch: guest write of %s/enabled: %v", name, err)
		return nil
	}
	return err
}

// parseBool is the kernel's kstrtobool for the common spellings.
func parseBool(s string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "1", "y", "yes", "on", "true":
		return true, nil
	case "0", "n", "no", "off", "false":
		return false, nil
	}
	_, err := strconv.ParseBool(strings.TrimSpace(s))
	if err == nil {
		err = syscall.EINVAL
	}
	return false, err
}
