package kvm

import (
	"fmt"
	"io"
	"runtime"
	"strings"
	"sync"
	"time"

	"klp-kvm/elfpatch"
	"klp-kvm/guestkernel/layout"
	"klp-kvm/kvm/engine"
)

// Config describes a machine.
type Config struct {
	Engine        engine.Engine
	CPUs          int           // default 1
	MemMiB        int           // default 128
	PatchAreaMiB  int           // default layout.DefaultPatchAreaSize (a Linux guest: LinuxDefaultPatchAreaMiB, negative for none); reserved at the top of RAM
	Kernel        []byte        // ELF64 x86-64 image
	Cmdline       string        // copied into boot_info
	Console       io.Writer     // COM1 output; nil discards
	ConsoleIn     io.Reader     // COM1 input; nil for none
	PauseDeadline time.Duration // default 1 s
	// Initrd is the initial ramdisk of a Linux guest (Kernel a bzImage);
	// nil for none. klp-kvm's own kernel takes none.
	Initrd []byte

	// ParsedKernel is the kernel already parsed (by elfpatch.ParseKernel,
	// ParseKernel or another Machine's Kernel), so that one parse serves the
	// machine and the livepatch Manager. When it is set New does not parse
	// Kernel, which may then be nil (if not, it must hold the same image, or
	// New fails with ErrConfig). Nil: New parses Kernel.
	ParsedKernel *elfpatch.Kernel
}

// Machine is guest RAM, vCPUs, devices, and the whole-machine Pause/Resume.
type Machine struct {
	cfg    Config
	ram    []byte
	layout Layout
	kernel *bootImage
	vm     engine.VM
	vcpus  []*vcpu
	bus    bus
	agentQ *byteQueue
	start  time.Time
	linux  *linuxInfo // a Linux bzImage guest (linux.go); nil for klp-kvm's own kernel

	// pauseMu serialises Pause/Resume; depth and window fields are
	// guarded by it.
	pauseMu    sync.Mutex
	depth      int
	pauseStart time.Time
	lastWindow time.Duration // last first-stopped..last-resumed window
	pauseCount uint64

	// mu guards the run outcome below.
	mu       sync.Mutex
	started  bool
	finished bool
	exitCode int
	exitErr  error
	resetErr error // the guest reset the machine (Linux guests): how
	nHalted  int
	doneCh   chan struct{} // closed when the outcome is decided
	ranCh    chan struct{} // closed when Run has returned (Close waits for it)
}

// New builds a machine: RAM, kernel, boot structures, VM and vCPUs. It does
// not start the vCPUs (see Run).
func New(cfg Config) (*Machine, error) {
	const op = "new machine"
	if cfg.Engine == nil {
		return nil, errorf(op, ErrConfig, "no engine")
	}
	if cfg.CPUs == 0 {
		cfg.CPUs = 1
	}
	if cfg.PauseDeadline == 0 {
		cfg.PauseDeadline = time.Second
	}
	if cfg.ParsedKernel == nil && IsLinuxKernel(cfg.Kernel) {
		return newLinux(cfg)
	}
	if len(cfg.Initrd) > 0 {
		return nil, errorf(op, ErrConfig, "an initrd is for a Linux bzImage kernel; klp-kvm's own kernel takes none")
	}
	if cfg.MemMiB == 0 {
		cfg.MemMiB = 128
	}
	if cfg.PatchAreaMiB == 0 {
		cfg.PatchAreaMiB = layout.DefaultPatchAreaSize >> 20
	}
	switch {
	case cfg.CPUs < 1 || cfg.CPUs > 64:
		return nil, errorf(op, ErrConfig, "%d vCPUs: want 1..64", cfg.CPUs)
	case cfg.MemMiB < 32 || uint64(cfg.MemMiB)<<20 > maxRAM:
		return nil, errorf(op, ErrConfig, "%d MiB of RAM: want 32..%d", cfg.MemMiB, maxRAM>>20)
	case cfg.PatchAreaMiB%2 != 0 || cfg.PatchAreaMiB < 2 || cfg.PatchAreaMiB > 256 || cfg.PatchAreaMiB > cfg.MemMiB/4:
		return nil, errorf(op, ErrConfig, "patch area %d MiB: want an even size from 2 to min(256, RAM/4)", cfg.PatchAreaMiB)
	}
	k, err := openKernel(cfg.Kernel, cfg.ParsedKernel)
	if err != nil {
		return nil, err
	}
	size := uint64(cfg.MemMiB) << 20
	pa := uint64(cfg.PatchAreaMiB) << 20
	l := Layout{RAMSize: size, PatchAreaPhys: layout.PatchAreaPhys(size, pa), PatchAreaSize: pa, CR3: pml4Addr}
	ram, err := allocRAM(size)
	if err != nil {
		return nil, err
	}
	m := &Machine{cfg: cfg, ram: ram, layout: l, kernel: k, doneCh: make(chan struct{}), ranCh: make(chan struct{})}
	fail := func(err error) (*Machine, error) {
		m.Close()
		return nil, err
	}
	if err := k.load(ram, l); err != nil {
		return fail(err)
	}
	if err := m.newVM(op); err != nil {
		return fail(err)
	}
	if err := m.newVCPUs(op); err != nil {
		return fail(err)
	}
	for i, v := range m.vcpus {
		if err := initVCPU(v.cpu, k.elf.Entry, i); err != nil {
			return fail(&Error{Op: op, Kind: ErrConfig, Detail: "set up vCPU " + itoa(i), Err: err})
		}
	}
	// After the vCPUs: the guest's TSC rate is the engine's, known per vCPU.
	tscHz, err := guestTSCHz(m.vcpus[0].cpu)
	if err != nil {
		return fail(&Error{Op: op, Kind: ErrConfig, Detail: "guest TSC rate", Err: err})
	}
	if err := setupBoot(ram, l, cfg.CPUs, cfg.Cmdline, tscHz); err != nil {
		return fail(err)
	}
	return m, nil
}

// newVM gives the machine its devices (COM1 to cfg.Console, COM2 to the
// agent queue) and creates its VM on cfg.Engine over m.ram: what both
// kinds of guest, klp-kvm's own and Linux, share before their vCPUs.
func (m *Machine) newVM(op string) error {
	console := m.cfg.Console
	if console == nil {
		console = io.Discard
	}
	var one [1]byte
	m.bus.com1 = NewUART(func(c byte) { one[0] = c; console.Write(one[:]) }, 4096)
	m.agentQ = newByteQueue(1 << 20)
	m.bus.com2 = NewUART(m.agentQ.put, 64<<10)

	// A software vCPU occupies a Go P for as long as it runs guest code.
	// With only NumCPU Ps, busy vCPUs would starve the VMM's own goroutines
	// (Pause, the API, device I/O) until the runtime's 10 ms preemption;
	// give every vCPU a P of its own on top of the host's, and let the OS
	// scheduler share the cores. Harmless on KVM, where KVM_RUN releases
	// its P.
	if want := runtime.NumCPU() + m.cfg.CPUs; runtime.GOMAXPROCS(0) < want {
		runtime.GOMAXPROCS(want)
	}
	vm, err := m.cfg.Engine.NewVM(m.ram)
	if err != nil {
		return &Error{Op: op, Kind: ErrConfig, Detail: "create VM on " + m.cfg.Engine.Name(), Err: err}
	}
	m.vm = vm
	return nil
}

// newVCPUs creates the machine's cfg.CPUs vCPUs, without any state: the
// boot of each kind of guest sets what its protocol needs.
func (m *Machine) newVCPUs(op string) error {
	for i := 0; i < m.cfg.CPUs; i++ {
		c, err := m.vm.NewVCPU(i)
		if err != nil {
			return &Error{Op: op, Kind: ErrConfig, Detail: "create vCPU " + itoa(i), Err: err}
		}
		m.vcpus = append(m.vcpus, &vcpu{id: i, cpu: c, m: m, events: make(chan event, 8), done: make(chan struct{})})
	}
	return nil
}

// initVCPU puts a vCPU in the boot protocol's entry state.
func initVCPU(c engine.VCPU, entry uint64, id int) error {
	s, err := c.Sregs()
	if err != nil {
		return err
	}
	bootSregs(&s)
	if err := c.SetSregs(s); err != nil {
		return err
	}
	if err := c.SetMSRs([]engine.MSR{{Index: engine.MSRApicBase, Data: apicBaseMSR(id)}}); err != nil {
		return err
	}
	return c.SetRegs(bootRegs(entry, id))
}

// Run starts every vCPU and blocks until the guest powers off (returning
// its exit code), fails (returning an error that says what and where), or
// Stop is called (returning 0, nil).
func (m *Machine) Run() (int, error) {
	m.mu.Lock()
	if m.started {
		m.mu.Unlock()
		return 0, errorf("run", ErrConfig, "machine already started")
	}
	m.started = true
	m.start = time.Now()
	m.mu.Unlock()
	defer close(m.ranCh)
	if m.cfg.ConsoleIn != nil {
		go func() {
			buf := make([]byte, 256)
			for {
				n, err := m.cfg.ConsoleIn.Read(buf)
				if n > 0 && m.bus.com1.Push(buf[:n]) < n {
					return
				}
				if err != nil {
					return
				}
			}
		}()
	}
	for _, v := range m.vcpus {
		go v.loop()
	}
	<-m.doneCh
	// Stop every vCPU thread; a paused or halted one answers at once, a
	// running one after its kick.
	for _, v := range m.vcpus {
		m.send(v, event{kind: evFinish})
	}
	for _, v := range m.vcpus {
		<-v.done
	}
	m.bus.com1.Close()
	m.bus.com2.Close()
	m.agentQ.close()
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.exitCode, m.exitErr
}

// send delivers an event to a vCPU and waits for its answer; a vCPU that
// has exited answers nothing, which is reported as ErrStopped.
func (m *Machine) send(v *vcpu, ev event) error {
	reply := make(chan error, 1)
	ev.reply = reply
	select {
	case v.events <- ev:
	case <-v.done:
		return errorf("vcpu", ErrStopped, "vCPU %d has exited", v.id)
	}
	v.cpu.Kick()
	select {
	case err := <-reply:
		return err
	case <-v.done:
		return errorf("vcpu", ErrStopped, "vCPU %d has exited", v.id)
	}
}

func (m *Machine) finish(code int, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.finished {
		return
	}
	m.finished = true
	m.exitCode, m.exitErr = code, err
	close(m.doneCh)
}

func (m *Machine) powerOff(code int) { m.finish(code, nil) }

// reset ends the machine after a Linux guest's reset, like a power-off
// with code 0; StopReason returns how (an ErrReset error).
func (m *Machine) reset(how error) {
	m.mu.Lock()
	if !m.finished {
		m.resetErr = how
	}
	m.mu.Unlock()
	m.finish(0, nil)
}
func (m *Machine) fail(err error) { m.finish(-1, err) }

// halted records a vCPU halted for good; when all are, the machine is dead.
func (m *Machine) halted(id int) {
	m.mu.Lock()
	m.nHalted++
	all := m.nHalted == len(m.vcpus)
	m.mu.Unlock()
	if all {
		m.finish(-1, errorf("run", ErrGuest, "every vCPU halted with interrupts disabled (last: vCPU %d)", id))
	}
}

// Stop ends Run: every vCPU stops and Run returns 0 and no error.
func (m *Machine) Stop() { m.finish(0, nil) }

// Done is closed when the machine has stopped for any reason.
func (m *Machine) Done() <-chan struct{} { return m.doneCh }

// StopReason says how the machine stopped: nil while it runs, else its
// error (a guest fault, every vCPU halted) or its power-off code. Stop and
// a guest power-off with code 0 read alike.
func (m *Machine) StopReason() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case !m.finished:
		return nil
	case m.exitErr != nil:
		return m.exitErr
	case m.resetErr != nil:
		return m.resetErr
	case m.exitCode != 0:
		return errorf("run", ErrGuest, "guest powered off with code %d", m.exitCode)
	}
	return errorf("run", ErrStopped, "guest powered off or stopped by the host")
}

// Close releases the VM and guest RAM. Call it after Run has returned (or
// instead of Run).
func (m *Machine) Close() error {
	// vCPU threads use RAM until they exit: stop them first if a Run is
	// still going (a caller that gave up on it, e.g. a failed test).
	m.mu.Lock()
	started := m.started
	m.mu.Unlock()
	if started {
		// Run reads m.vcpus until it returns: wait for Run itself, not
		// only for the vCPU threads (a race the detector caught when a
		// failed test's deferred Close met a Run still finishing).
		m.Stop()
		<-m.ranCh
	}
	var err error
	for _, v := range m.vcpus {
		if e := v.cpu.Close(); e != nil && err == nil {
			err = e
		}
	}
	m.vcpus = nil
	if m.vm != nil {
		if e := m.vm.Close(); e != nil && err == nil {
			err = e
		}
		m.vm = nil
	}
	freeRAM(m.ram)
	m.ram = nil
	return err
}

// pauseSpin is how long Pause polls for the vCPUs' answers before it
// blocks on them.
const pauseSpin = 50 * time.Microsecond

// Pause stops every vCPU at an instruction boundary and returns when all
// have stopped. Pauses nest: each Pause needs one Resume. If a vCPU does
// not stop within the deadline, the others are resumed and the error
// names the laggards.
func (m *Machine) Pause() error {
	m.pauseMu.Lock()
	defer m.pauseMu.Unlock()
	if m.depth > 0 {
		m.depth++
		return nil
	}
	if err := m.runningCheck("pause"); err != nil {
		return err
	}
	start := time.Now()
	replies := make([]chan error, len(m.vcpus))
	for i, v := range m.vcpus {
		replies[i] = make(chan error, 1)
		select {
		case v.events <- event{kind: evPause, reply: replies[i]}:
			v.cpu.Kick()
		case <-v.done:
			replies[i] <- nil
		}
	}
	// Most vCPUs answer within microseconds: poll briefly before blocking,
	// which saves the wake-up of this goroutine's thread per reply. Only
	// with a host core to spare: a poller sharing a core with a vCPU
	// thread delays the very answer it waits for (measured: 2 vCPUs on 2
	// cores, 54 -> 110 us).
	spinFor := time.Duration(0)
	if len(m.vcpus) < runtime.NumCPU() {
		spinFor = pauseSpin
	}
	for i, spin := 0, time.Now(); i < len(m.vcpus) && time.Since(spin) < spinFor; {
		select {
		case err := <-replies[i]:
			replies[i] <- err // leave it for the loop below
			i++
		default:
			runtime.Gosched()
		}
	}
	deadline := time.NewTimer(m.cfg.PauseDeadline)
	defer deadline.Stop()
	var late []string
	for i, v := range m.vcpus {
		select {
		case <-replies[i]:
		case <-v.done:
		case <-deadline.C:
			late = append(late, fmt.Sprintf("vCPU %d (%s)", i, v.State()))
			// Keep collecting the others without waiting further.
			deadline.Reset(0)
		}
	}
	if late != nil {
		for _, v := range m.vcpus {
			// Queued after the Pause event, so a late vCPU parks and
			// resumes at once; nobody waits for its answer.
			select {
			case v.events <- event{kind: evResume, reply: make(chan error, 1)}:
			case <-v.done:
			}
		}
		return errorf("pause", ErrPauseTimeout, "%s did not stop within %v", strings.Join(late, ", "), m.cfg.PauseDeadline)
	}
	m.depth = 1
	m.pauseStart = start
	m.pauseCount++
	return nil
}

// Resume undoes one Pause; the last one restarts every vCPU.
func (m *Machine) Resume() error {
	m.pauseMu.Lock()
	defer m.pauseMu.Unlock()
	if m.depth == 0 {
		return errorf("resume", ErrNotPaused, "Resume without Pause")
	}
	m.depth--
	if m.depth > 0 {
		return nil
	}
	for _, v := range m.vcpus {
		select {
		case v.events <- event{kind: evResume, reply: make(chan error, 1)}:
		case <-v.done:
		}
	}
	m.lastWindow = time.Since(m.pauseStart)
	return nil
}

func (m *Machine) runningCheck(op string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.started || m.finished {
		return errorf(op, ErrStopped, "machine is not running")
	}
	return nil
}

// Paused reports whether the machine is paused.
func (m *Machine) Paused() bool {
	m.pauseMu.Lock()
	defer m.pauseMu.Unlock()
	return m.depth > 0
}

// OnVCPU runs fn on vCPU id's own thread while the machine is paused (the
// vCPU thread owns its file descriptor).
func (m *Machine) OnVCPU(id int, fn func(engine.VCPU) error) error {
	if id < 0 || id >= len(m.vcpus) {
		return errorf("vcpu", ErrConfig, "no vCPU %d", id)
	}
	if !m.Paused() {
		return errorf("vcpu", ErrNotPaused, "vCPU %d: pause the machine first", id)
	}
	return m.send(m.vcpus[id], event{kind: evDo, fn: fn})
}

// Regs returns vCPU id's registers; the machine must be paused.
func (m *Machine) Regs(id int) (r engine.Regs, err error) {
	err = m.OnVCPU(id, func(c engine.VCPU) (e error) { r, e = c.Regs(); return })
	return
}

// PausedRegs returns every vCPU's registers as captured when it stopped
// for the current pause (one read per vCPU, done by the vCPU threads in
// parallel while acknowledging the pause).
func (m *Machine) PausedRegs() ([]engine.Regs, error) {
	m.pauseMu.Lock()
	defer m.pauseMu.Unlock()
	if m.depth == 0 {
		return nil, errorf("vcpu", ErrNotPaused, "pause the machine first")
	}
	regs := make([]engine.Regs, len(m.vcpus))
	for i, v := range m.vcpus {
		if v.regsErr != nil {
			return nil, &Error{Op: "vcpu", Kind: ErrGuest, Detail: "registers of vCPU " + itoa(i), Err: v.regsErr}
		}
		regs[i] = v.regs
	}
	return regs, nil
}

// Sregs returns vCPU id's special registers; the machine must be paused.
func (m *Machine) Sregs(id int) (s engine.Sregs, err error) {
	err = m.OnVCPU(id, func(c engine.VCPU) (e error) { s, e = c.Sregs(); return })
	return
}

// NumCPUs is the number of vCPUs.
func (m *Machine) NumCPUs() int { return m.cfg.CPUs }

// Layout returns the guest-physical layout (RAM, patch area, boot CR3).
func (m *Machine) Layout() Layout { return m.layout }

// Kernel returns the guest kernel the machine booted, as parsed by elfpatch:
// hand it to livepatch.Config.Kernel (or another machine's
// Config.ParsedKernel) instead of parsing the image again.
// It is nil for a Linux bzImage guest (IsLinux).
func (m *Machine) Kernel() *elfpatch.Kernel {
	if m.kernel == nil {
		return nil
	}
	return m.kernel.elf
}

// EngineName is the engine's name ("kvm" or "emu").
func (m *Machine) EngineName() string { return m.cfg.Engine.Name() }

// AgentPort is the host end of COM2, the agent channel, as a byte stream.
func (m *Machine) AgentPort() io.ReadWriter { return &serialPort{u: m.bus.com2, q: m.agentQ} }

// ConsoleInput queues bytes for the guest console (COM1).
func (m *Machine) ConsoleInput(b []byte) { m.bus.com1.Push(b) }

// VCPUInfo is one vCPU's state and counters.
type VCPUInfo struct {
	ID           int    `json:"id"`
	State        string `json:"state"`
	Instructions uint64 `json:"instructions"`
	Exits        uint64 `json:"exits"`
	// The engine's counters in detail (engine.Stats): exits by reason,
	// exits handled inside the engine, the hypervisor's own counters.
	ExitsByReason map[string]uint64 `json:"exits_by_reason,omitempty"`
	Handled       map[string]uint64 `json:"handled,omitempty"`
	Kernel        map[string]uint64 `json:"kernel,omitempty"`
}

// Info is a snapshot of the machine for `GET /machine`.
type Info struct {
	Engine       string     `json:"engine"`
	MemMiB       int        `json:"mem_mib"`
	UptimeNS     int64      `json:"uptime_ns"`
	VCPUs        []VCPUInfo `json:"vcpus"`
	Paused       bool       `json:"paused"`
	Pauses       uint64     `json:"pauses"`
	LastWindowNS int64      `json:"last_pause_window_ns"`
	IOExits      uint64     `json:"io_exits"`
	UnknownPorts uint64     `json:"unknown_port_accesses"`
	PatchArea    [2]uint64  `json:"patch_area"` // physical base, size
}

// Info returns a snapshot of the machine's state and counters.
func (m *Machine) Info() Info {
	m.pauseMu.Lock()
	in := Info{Engine: m.EngineName(), MemMiB: m.cfg.MemMiB, Paused: m.depth > 0, Pauses: m.pauseCount,
		LastWindowNS: int64(m.lastWindow)}
	m.pauseMu.Unlock()
	m.mu.Lock()
	if m.started {
		in.UptimeNS = int64(time.Since(m.start))
	}
	m.mu.Unlock()
	for _, v := range m.vcpus {
		s := v.cpu.Stats()
		in.VCPUs = append(in.VCPUs, VCPUInfo{ID: v.id, State: v.State().String(), Instructions: s.Instructions, Exits: s.Exits,
			ExitsByReason: s.ByReason, Handled: s.Handled, Kernel: s.Kernel})
	}
	in.IOExits = m.bus.ioExits.Load()
	in.UnknownPorts = m.bus.unknownPorts.Load()
	in.PatchArea = [2]uint64{m.layout.PatchAreaPhys, m.layout.PatchAreaSize}
	return in
}
