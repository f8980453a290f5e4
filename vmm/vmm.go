// Package vmm is klp-kvm's composition root: the one place where a running
// guest is put together from its parts — a kvm.Machine booted with a guest
// kernel, the guest agent client on its COM2 port, a livepatch.Manager
// whose guest-side sysfs writes the agent forwards, and the control API's
// routes over all three. `klp-kvm run`, `demo` and `bench` and the
// end-to-end tests all build their guest here, so they all run the same
// wiring; the commands themselves only parse flags and print.
//
// Import rule: vmm sits above kvm, kvm/agent, livepatch and api and below
// cmd/klp-kvm and the tests; nothing under it imports it.
//
// Lifecycle: New builds everything without running the guest; Start runs
// it in the background and begins the agent handshake; Ready is closed when
// the agent first answers; Wait returns when the guest stops; Close stops
// and releases everything. Boot is New + Start + WaitReady.
package vmm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"klp-kvm/api"
	"klp-kvm/guestagent/initrd"
	"klp-kvm/guestkernel"
	"klp-kvm/guestkernel/layout"
	"klp-kvm/kvm"
	"klp-kvm/kvm/agent"
	"klp-kvm/linuxkernel"
	"klp-kvm/linuxlive"
	"klp-kvm/livepatch"
)

// DefaultBootTimeout bounds WaitReady when Config.BootTimeout is 0: the
// slowest platform we run on (nested QEMU TCG) boots the guest in seconds;
// two minutes means the guest is not coming up.
const DefaultBootTimeout = 120 * time.Second

// stopTimeout bounds how long Close waits for a stopped guest's vCPUs.
const stopTimeout = 10 * time.Second

// ErrLinuxNoLivepatch is NoLivepatch for a Linux bzImage guest whose
// live-patch manager could not be made (no patch area: PatchAreaMiB
// negative): the patch routes answer it (501, EOPNOTSUPP).
var ErrLinuxNoLivepatch = errors.New("live patching this Linux guest is not possible")

// Config describes the guest to build.
type Config struct {
	Engine string // auto, kvm or emu ("" is auto)
	CPUs   int    // vCPUs; 0 is kvm's default
	MemMiB int    // guest RAM; 0 is kvm's default
	// PatchAreaMiB is the RAM at the top kept for live patches (kvm's
	// default when 0; for a Linux guest, negative keeps none and turns
	// live patching off).
	PatchAreaMiB int
	Kernel       []byte    // guest kernel: ELF, or a Linux bzImage; nil is the embedded guest kernel
	Initrd       []byte    // initial ramdisk of a Linux guest; nil is the embedded agent initramfs (guestagent/initrd)
	Cmdline      string    // guest kernel command line
	Console      io.Writer // COM1 output; nil discards
	ConsoleIn    io.Reader // COM1 input; nil for none
	// Events receives one line per guest event the VMM does not handle
	// itself (everything but sysfs-write); nil discards them.
	Events io.Writer
	// BootTimeout bounds WaitReady; 0 is DefaultBootTimeout.
	BootTimeout time.Duration
}

// VMM is one guest with its agent, its livepatch manager and its API.
type VMM struct {
	Machine *kvm.Machine
	Agent   *agent.Client
	// Manager live-patches the guest; nil when its kernel cannot be live
	// patched (a test guest without klp_guest_abi, a Linux guest), and
	// NoLivepatch says why.
	Manager *livepatch.Manager
	// Linux live-patches a Linux guest (package linuxlive); nil for
	// klp-kvm's own kernel.
	Linux       *linuxlive.Manager
	NoLivepatch error
	// Kernel serves POST /kernel for a Linux guest
	// (LinuxKernelInspector); nil otherwise (the route answers ENOENT).
	Kernel api.KernelInspector
	// EngineWhy says which engine runs the guest and why it was chosen.
	EngineWhy string

	cfg     Config
	events  io.Writer
	console *consoleTail
	started atomic.Bool
	t0      time.Time // Start; written before the handshake goroutine starts

	ready     chan struct{} // closed when the agent first answered
	bootTime  atomic.Int64  // ns from Start to ready
	stopped   chan struct{} // closed when the guest has stopped (run returned)
	runCode   int           // written before stopped is closed
	runErr    error         // written before stopped is closed
	closeOnce sync.Once
	closeErr  error

	// draining refuses new guest sysfs writes (ESHUTDOWN); inEvents
	// counts the ones being carried out (Drain waits for them).
	draining atomic.Bool
	inEvents sync.WaitGroup

	// tree pushes a Linux guest's livepatch tree to its agent (sysfs.go);
	// nil for klp-kvm's own guest and a Linux guest without live patching.
	tree *treePusher

	// linuxWrites carries a Linux guest's sysfs writes but force, in
	// order, to one worker (linuxWriter, from Start): linuxlive runs a
	// transition within the write that started it, up to its deadline,
	// and the agent's event loop must stay free meanwhile for a write
	// of 1 to force, which only flags the transition in progress. Nil
	// for klp-kvm's own guest.
	linuxWrites chan agent.SysfsWrite
}

// linuxWriteQueue is how many of a Linux guest's sysfs writes may wait
// for the one in progress; beyond, a write is refused (EBUSY).
const linuxWriteQueue = 64

// New builds the machine, the agent client and the livepatch manager. The
// guest does not run until Start.
func New(cfg Config) (*VMM, error) {
	if cfg.Engine == "" {
		cfg.Engine = "auto"
	}
	if cfg.BootTimeout <= 0 {
		cfg.BootTimeout = DefaultBootTimeout
	}
	if cfg.Kernel == nil {
		cfg.Kernel = guestkernel.Vmlinux()
	}
	if cfg.Initrd == nil && kvm.IsLinuxKernel(cfg.Kernel) {
		// A Linux guest's agent lives in its initramfs: klp-kvm's own.
		rd, err := initrd.Default()
		if err != nil {
			return nil, err
		}
		cfg.Initrd = rd
	}
	eng, why, err := kvm.SelectEngine(cfg.Engine)
	if err != nil {
		return nil, err
	}
	console := &consoleTail{w: cfg.Console}
	m, err := kvm.New(kvm.Config{Engine: eng, CPUs: cfg.CPUs, MemMiB: cfg.MemMiB, PatchAreaMiB: cfg.PatchAreaMiB, Kernel: cfg.Kernel, Initrd: cfg.Initrd,
		Cmdline: cfg.Cmdline, Console: console, ConsoleIn: cfg.ConsoleIn})
	if err != nil {
		return nil, err
	}
	v := &VMM{Machine: m, EngineWhy: why, cfg: cfg, events: cfg.Events, console: console,
		ready: make(chan struct{}), stopped: make(chan struct{})}
	if v.events == nil {
		v.events = io.Discard
	}
	// The manager must exist before the agent can deliver an event that
	// needs it, and the agent before the manager's callbacks can run: the
	// event handler reads v.Manager, which is set before Start lets the
	// guest run and so before any event can arrive.
	v.Agent = agent.New(m.AgentPort(), agent.Options{OnEvent: v.event, Cause: v.GuestStopped})
	logf := func(format string, args ...any) {
		fmt.Fprintf(v.events, "klp-kvm: "+strings.TrimSuffix(format, "\n")+"\n", args...)
	}
	if m.IsLinux() {
		// The agent routes work through the same COM2 protocol; live
		// patches go in from the host with linuxlive (the livepatch
		// manager needs klp-kvm's own kernel's ABI).
		if lm, err := LinuxPatcher(m, logf); err != nil {
			v.NoLivepatch = fmt.Errorf("%w: %v", ErrLinuxNoLivepatch, err)
		} else {
			v.Linux = lm
			// The guest sees the patches as a tree its agent shows
			// (sysfs.go), pushed after every change.
			v.tree = newTreePusher(lm.Status, v.Agent.LivepatchTree, logf)
			v.linuxWrites = make(chan agent.SysfsWrite, linuxWriteQueue)
		}
		// Its kernel is read from the host, with no help from the guest
		// (POST /kernel, klp-kvm inspect --live).
		v.Kernel = LinuxKernelInspector(m, linuxkernel.Options{})
		return v, nil
	}
	lm, err := livepatch.New(livepatch.Config{Guest: m, Kernel: m.Kernel(), PatchArea: layout.PatchAreaVirt,
		PatchAreaSize: m.Layout().PatchAreaSize, Callbacks: Callbacks(v.Agent),
		SysfsBudget: sysfsBudget(cfg.Cmdline), Logf: logf})
	if err != nil {
		v.NoLivepatch = err
	} else {
		v.Manager = lm
	}
	return v, nil
}

// guestSysfsTimeout is how long the guest kernel's sysfs writer waits for
// the host by default (guestkernel/kernel/sysfs.c); klp.sysfs_timeout_ms
// on its command line changes it.
const guestSysfsTimeout = 20 * time.Second

// sysfsBudget is the host's budget for a guest sysfs write: the default
// (livepatch.SysfsBudget, 15 s) under the guest's default 20 s wait, or
// three quarters of the wait the command line sets, so the host always
// answers before the guest gives up and the errno the writer gets is the
// state reached.
func sysfsBudget(cmdline string) time.Duration {
	for _, f := range strings.Fields(cmdline) {
		v, ok := strings.CutPrefix(f, "klp.sysfs_timeout_ms=")
		if !ok {
			continue
		}
		// the guest's own rule: 1..3599999 ms, else its default
		if ms, err := strconv.ParseUint(v, 10, 64); err == nil && ms > 0 && ms < 3600000 {
			return min(livepatch.SysfsBudget, time.Duration(ms)*time.Millisecond*3/4)
		}
	}
	return min(livepatch.SysfsBudget, guestSysfsTimeout*3/4)
}

// Boot builds the guest, runs it and waits for its agent: what demo,
// bench and the tests need before their first request.
func Boot(cfg Config) (*VMM, error) {
	v, err := New(cfg)
	if err != nil {
		return nil, err
	}
	if err := v.Start(); err != nil {
		v.Close()
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), v.cfg.BootTimeout)
	defer cancel()
	if err := v.WaitReady(ctx); err != nil {
		v.Close()
		return nil, err
	}
	return v, nil
}

// Start runs the guest in the background and starts the agent handshake.
func (v *VMM) Start() error {
	if !v.started.CompareAndSwap(false, true) {
		return errors.New("vmm: guest already started")
	}
	v.t0 = time.Now()
	if v.tree != nil {
		go v.tree.run()
	}
	if v.linuxWrites != nil {
		go v.linuxWriter()
	}
	go func() {
		code, err := v.Machine.Run()
		v.runCode, v.runErr = code, err
		close(v.stopped)
	}()
	go v.handshake()
	return nil
}

// handshake pings the agent until it answers. The guest agent starts
// listening some time after boot, and a request sent before that is lost,
// so the pings start with a short timeout (a lost one costs little) that
// doubles up to a second (a slow guest — kvm_pvm, nested TCG — still gets
// time to answer).
func (v *VMM) handshake() {
	const first, most = 10 * time.Millisecond, time.Second
	for wait := first; ; wait = min(2*wait, most) {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		err := v.Agent.Ping(ctx)
		cancel()
		if err == nil {
			v.bootTime.Store(int64(time.Since(v.t0)))
			close(v.ready)
			return
		}
		if errors.Is(err, agent.ErrClosed) {
			return
		}
		select {
		case <-v.stopped:
			return
		default:
		}
	}
}

// Ready is closed when the guest agent has first answered.
func (v *VMM) Ready() <-chan struct{} { return v.ready }

// BootTime is the time from Start to the agent's first answer (0 before).
func (v *VMM) BootTime() time.Duration { return time.Duration(v.bootTime.Load()) }

// Stopped is closed when the guest has stopped for any reason.
func (v *VMM) Stopped() <-chan struct{} { return v.stopped }

// WaitReady waits until the agent answers, the guest stops (an error
// saying how) or ctx ends.
func (v *VMM) WaitReady(ctx context.Context) error {
	if !v.started.Load() {
		return errors.New("vmm: guest not started")
	}
	select {
	case <-v.ready:
		return nil
	case <-v.stopped:
		return fmt.Errorf("guest stopped while booting: %w", v.stopError())
	case <-ctx.Done():
		return fmt.Errorf("guest agent did not answer within %v: %w", time.Since(v.t0).Round(time.Millisecond), ctx.Err())
	}
}

// GuestStopped is nil while the guest runs; once it has stopped, an error
// saying how (its power-off code or the machine's
// error) with the last lines of its console. The agent gives it to every
// request in flight when the channel ends, so each caller learns why.
func (v *VMM) GuestStopped() error {
	why := v.Machine.StopReason()
	if why == nil {
		return nil
	}
	if tail := v.console.Lines(); tail != "" {
		return fmt.Errorf("the guest stopped: %w; last console lines:\n%s", why, tail)
	}
	return fmt.Errorf("the guest stopped: %w", why)
}

// stopError describes how the guest stopped; v.stopped must be closed.
func (v *VMM) stopError() error {
	switch {
	case v.runErr != nil:
		return v.runErr
	case v.runCode != 0:
		return fmt.Errorf("guest powered off with code %d", v.runCode)
	}
	return errors.New("guest powered off")
}

// Wait waits for the guest to stop and returns its power-off code and the
// machine's error, as kvm.Machine.Run does.
func (v *VMM) Wait() (int, error) {
	<-v.stopped
	return v.runCode, v.runErr
}

// Callbacks runs livepatch callbacks through the agent's guest-call.
// Callbacks return int: the low 32 bits of RAX, sign-extended.
func Callbacks(c *agent.Client) livepatch.CallbackRunner {
	return func(ctx context.Context, addr, arg uint64) (int64, error) {
		v, err := c.GuestCall(ctx, addr, arg)
		return int64(int32(uint32(v))), err
	}
}

// event handles one guest event: a sysfs write is carried out for
// either guest kind (sysfsWrite: the livepatch manager of klp-kvm's own
// guest, linuxlive for a Linux guest, ENODEV when the kernel cannot be
// live patched) and answered with its errno; a refused one is logged.
// A Linux guest's agent-ready gets the livepatch tree (a restarted agent
// starts with an empty one). Anything else is logged.
func (v *VMM) event(ev agent.Event) {
	if ev.Name != "sysfs-write" {
		if ev.Name == "agent-ready" && v.tree != nil {
			v.tree.Kick()
		}
		fmt.Fprintf(v.events, "klp-kvm: guest event %s: %s\n", ev.Name, ev.Data)
		return
	}
	w, err := agent.ParseSysfsWrite(ev)
	if err != nil {
		fmt.Fprintf(v.events, "klp-kvm: %v\n", err)
		return
	}
	v.inEvents.Add(1)
	if v.linuxWrites != nil && path.Base(path.Clean(w.Path)) != "force" {
		select {
		case v.linuxWrites <- w:
		default:
			v.reply(w, fmt.Errorf("%d guest sysfs writes are waiting already: %w", linuxWriteQueue, syscall.EBUSY))
			v.inEvents.Done()
		}
		return
	}
	v.carryOut(w)
}

// linuxWriter carries out a Linux guest's queued sysfs writes in order
// until the guest stops; the writes still queued then are answered
// ESHUTDOWN (nobody is left to read the reply; Drain stops waiting).
func (v *VMM) linuxWriter() {
	for {
		select {
		case w := <-v.linuxWrites:
			v.carryOut(w)
		case <-v.stopped:
			for {
				select {
				case w := <-v.linuxWrites:
					v.reply(w, fmt.Errorf("the guest stopped: %w", syscall.ESHUTDOWN))
					v.inEvents.Done()
				default:
					return
				}
			}
		}
	}
}

// carryOut does one guest sysfs write and answers it; the caller counted
// it in v.inEvents.
func (v *VMM) carryOut(w agent.SysfsWrite) {
	defer v.inEvents.Done()
	v.reply(w, v.sysfsWrite(w.Path, w.Value))
}

// reply answers a guest sysfs write with werr's errno, and logs a refusal.
func (v *VMM) reply(w agent.SysfsWrite, werr error) {
	if werr != nil {
		// the guest's words, quoted and clipped
		fmt.Fprintf(v.events, "klp-kvm: guest sysfs write %q=%q: %v\n", clip(w.Path), clip(w.Value), werr)
	}
	if err := v.sysfsReply(w.ID, werr); err != nil {
		fmt.Fprintf(v.events, "klp-kvm: sysfs-reply: %v\n", err)
	}
}

// Drain prepares a clean stop: guest sysfs writes from now on are refused
// with ESHUTDOWN, and those being carried out (a transition started from
// inside the guest, bounded by the sysfs budget) are waited for, until ctx ends. A transition finishes
// or rolls back within its own deadline, so Drain with a context longer
// than that leaves no operation half done. The API's own requests are
// drained by the HTTP server's Shutdown, before this.
func (v *VMM) Drain(ctx context.Context) error {
	v.draining.Store(true)
	done := make(chan struct{})
	go func() { v.inEvents.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("guest sysfs writes still in progress: %w", ctx.Err())
	}
}

// Exec runs a guest shell command and returns its output; a non-zero exit
// status is an error carrying the output.
func (v *VMM) Exec(cmd string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := v.Agent.Exec(ctx, cmd)
	if err != nil {
		return "", err
	}
	if r.Status != 0 {
		return r.Output, fmt.Errorf("guest command %q exited with %d: %s", cmd, r.Status, r.Output)
	}
	return r.Output, nil
}

// Close stops the guest and releases everything; it may be called more
// than once and returns the guest's stop error, if any.
func (v *VMM) Close() error {
	v.closeOnce.Do(func() {
		if v.tree != nil {
			v.tree.Stop()
		}
		v.Machine.Stop()
		if v.started.Load() {
			select {
			case <-v.stopped:
				v.closeErr = v.runErr
			case <-time.After(stopTimeout):
				v.closeErr = fmt.Errorf("guest did not stop within %v", stopTimeout)
			}
		}
		v.Agent.Close()
		v.Machine.Close()
	})
	return v.closeErr
}
