package emu

import (
	"fmt"
	"runtime/debug"
	"sync/atomic"

	"klp-kvm/kvm/engine"
)

// Register numbers in regs: the x86 encoding order, then RIP and a
// register that is always zero (the base/index of a memory operand without
// one), then the legacy high-byte registers AH, CH, DH, BH as 18..21.
const (
	rAX = iota
	rCX
	rDX
	rBX
	rSP
	rBP
	rSI
	rDI
	rIP   = 16
	rZero = 17
	rAH   = 18
)

// attn bits: why the block loop must stop and look at the world.
const (
	attnKick uint32 = 1 << iota
	attnIRQ
)

const (
	tlbBits = 8
	tlbSize = 1 << tlbBits
	tlbMask = tlbSize - 1
	// tagInvalid never equals a page number (lin>>12 has 12 zero top bits).
	tagInvalid = ^uint64(0)
)

type tlbEntry struct{ tag, phys uint64 }

// tlbWEntry is a write TLB entry: mark is the page's translated-code mark
// (vm.mark), which every store must test.
type tlbWEntry struct {
	tlbEntry
	mark *uint32
}

// pending says what the next Run must finish before executing: an IN or an
// MMIO read whose data the VMM has put in the exit.
type pendingKind uint8

const (
	pendNone pendingKind = iota
	pendIn
	pendMMIORead
	pendIns // INS: the data waits in insVal for the instruction to store it
)

// cpu is one vCPU. Only its own Run goroutine touches the fields above the
// "shared" comment while Run executes; the rest are atomics or belong to the
// lapic (own mutex).
type cpu struct {
	// regs is indexed by the uint8 register numbers above; 256 entries
	// (only 22 are used) let the compiler drop the bounds check of every
	// register access without masking the number.
	regs  [256]uint64
	flags Flags
	rf    uint64 // RFLAGS except the six arithmetic flags; bit 1 always set
	// curRIP is the address of the instruction being executed: the RIP a
	// fault pushes. regs[rIP] already points past it.
	curRIP uint64
	stop   bool // end the current block after this instruction
	// retryWith: the fast handler that set stop hands its instruction to
	// this generic handler (ops_fast.go).
	retryWith uint8
	ram       ramMem
	mark      []uint32
	gen       []uint32
	tlbR      [tlbSize]tlbEntry
	tlbW      [tlbSize]tlbWEntry
	tlbX      [tlbSize]tlbEntry
	sr        engine.Sregs
	cpl       uint8
	cur       *block // block being executed, for self-modifying-code detection
	// blockRIP is the address cur was entered at (runChain).
	blockRIP uint64
	// chainUntil: runChain returns to exec at a block end once icount
	// reaches it.
	chainUntil uint64
	// noBlock is the block exec starts from: it has no links.
	noBlock block
	vm      *vm
	id      int
	trace   bool
	// bps are the armed breakpoints (engine.Breakpointer), checked at
	// every block entry; set only between Runs, by the Run goroutine.
	bps []uint64

	exit      engine.Exit
	exitReady bool
	halted    bool
	// shadow: the next instruction runs with interrupts blocked (after STI
	// or a load of SS); shadowArm is set by those instructions and turns
	// into shadow when their block ends.
	shadow, shadowArm bool
	shutdown          string // set after a triple fault: every Run repeats it

	pend     pendingKind
	pendReg  uint8
	pendSize uint8
	pendNext uint64
	insReady bool
	insRIP   uint64
	insVal   uint64
	ioBuf    [16]byte

	excPending bool
	exc        event
	fatalMsg   string

	// MSRs without a home in Sregs.
	star, lstar, cstar, fmask, kernelGSBase, tscAux, pat, miscEnable uint64
	tscOffset                                                        int64
	dr                                                               [8]uint64

	blocks map[uint64]*block
	bcache [bcacheSize]*block

	icount, nextPoll uint64
	translations     uint64         // blocks translated (tests check invalidation precision)
	tlbEpoch         uint64         // bumped by every TLB flush; invalidates block links
	codeEpoch        *atomic.Uint64 // the VM's (vm.codeEpoch)

	// shared
	attn     atomic.Uint32
	wake     chan struct{}
	running  atomic.Bool
	closed   atomic.Bool
	nInstr   atomic.Uint64
	nExits   atomic.Uint64
	byReason engine.ExitCounters
	apic     lapic
	traceBuf []byte
}

const bcacheSize = 4096

func newCPU(v *vm, id int) *cpu {
	c := &cpu{
		vm:        v,
		id:        id,
		ram:       v.ram,
		mark:      v.mark,
		gen:       v.gen,
		wake:      make(chan struct{}, 1),
		blocks:    make(map[uint64]*block),
		codeEpoch: &v.codeEpoch,
		trace:     v.cfg.trace != nil,
	}
	c.rf = 2
	c.flushTLB()
	c.apic.init(c)
	// Power-on-like state; the VMM overwrites it with SetSregs/SetRegs.
	c.sr.CR0 = 0x60000010
	c.sr.APICBase = apicBaseDefault | apicBaseEXTD
	if id == 0 {
		c.sr.APICBase |= apicBaseBSP
	}
	c.pat = 0x0007040600070406
	return c
}

func (c *cpu) ID() int { return c.id }

func (c *cpu) busy(op string) error {
	if c.closed.Load() {
		return errorf(op, ErrClosed, "vCPU %d closed", c.id)
	}
	if c.running.Load() {
		return errorf(op, ErrBusy, "vCPU %d is running", c.id)
	}
	return nil
}

var gprOrder = [16]int{rAX, rBX, rCX, rDX, rSI, rDI, rSP, rBP, 8, 9, 10, 11, 12, 13, 14, 15}

func (c *cpu) Regs() (engine.Regs, error) {
	if err := c.busy("Regs"); err != nil {
		return engine.Regs{}, err
	}
	var r engine.Regs
	p := []*uint64{&r.RAX, &r.RBX, &r.RCX, &r.RDX, &r.RSI, &r.RDI, &r.RSP, &r.RBP,
		&r.R8, &r.R9, &r.R10, &r.R11, &r.R12, &r.R13, &r.R14, &r.R15}
	for i, q := range p {
		*q = c.regs[gprOrder[i]]
	}
	r.RIP = c.regs[rIP]
	r.RFLAGS = c.rflags()
	return r, nil
}

func (c *cpu) SetRegs(r engine.Regs) error {
	if err := c.busy("SetRegs"); err != nil {
		return err
	}
	v := []uint64{r.RAX, r.RBX, r.RCX, r.RDX, r.RSI, r.RDI, r.RSP, r.RBP,
		r.R8, r.R9, r.R10, r.R11, r.R12, r.R13, r.R14, r.R15}
	for i, x := range v {
		c.regs[gprOrder[i]] = x
	}
	c.regs[rIP] = r.RIP
	c.flags.Set(r.RFLAGS)
	c.rf = r.RFLAGS&^ArithFlags&rflagsSettable | 2
	// Like KVM_SET_REGS this leaves a halted vCPU halted (that is run
	// state, not register state); new registers do end a shutdown.
	c.shutdown = ""
	return nil
}

func (c *cpu) Sregs() (engine.Sregs, error) {
	if err := c.busy("Sregs"); err != nil {
		return engine.Sregs{}, err
	}
	s := c.sr
	s.CR8 = uint64(c.apic.tpr()) >> 4
	return s, nil
}

func (c *cpu) SetSregs(s engine.Sregs) error {
	if err := c.busy("SetSregs"); err != nil {
		return err
	}
	if s.APICBase == 0 {
		s.APICBase = c.sr.APICBase
	}
	s.InterruptBitmap = [4]uint64{}
	c.sr = s
	c.cpl = s.CS.DPL & 3
	c.apic.setTPR(uint32(s.CR8&15) << 4)
	c.flushTLB()
	c.shutdown = ""
	return nil
}

func (c *cpu) GetMSRs(m []engine.MSR) error {
	if err := c.busy("GetMSRs"); err != nil {
		return err
	}
	for i := range m {
		v, ok := c.rdmsr(m[i].Index)
		if !ok {
			return errorf("GetMSRs", ErrInvalid, "MSR %#x not supported", m[i].Index)
		}
		m[i].Data = v
	}
	return nil
}

func (c *cpu) SetMSRs(m []engine.MSR) error {
	if err := c.busy("SetMSRs"); err != nil {
		return err
	}
	for i := range m {
		if !c.wrmsr(m[i].Index, m[i].Data, true) {
			return errorf("SetMSRs", ErrInvalid, "MSR %#x: value %#x not accepted", m[i].Index, m[i].Data)
		}
	}
	return nil
}

// Kick makes Run return ExitIntr at the next instruction boundary; it is
// sticky until consumed by that exit.
func (c *cpu) Kick() {
	c.attn.Or(attnKick)
	c.wakeUp()
}

func (c *cpu) wakeUp() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

func (c *cpu) Stats() engine.Stats {
	return engine.Stats{Instructions: c.nInstr.Load(), Exits: c.nExits.Load(), ByReason: c.byReason.Snapshot()}
}

func (c *cpu) Close() error {
	c.closed.Store(true)
	c.apic.stopTimer()
	return nil
}

// rflags materialises RFLAGS.
func (c *cpu) rflags() uint64 { return c.rf | c.flags.Get() }

// RFLAGS bits beyond the arithmetic ones.
const (
	flagIOPL uint64 = 3 << 12
	flagNT   uint64 = 1 << 14
	flagRF   uint64 = 1 << 16
	flagVM   uint64 = 1 << 17
	flagAC   uint64 = 1 << 18
	flagID   uint64 = 1 << 21
	// rflagsSettable: what POPFQ/IRETQ may change at CPL 0 (no VM/VIF/VIP).
	rflagsSettable = ArithFlags | FlagTF | FlagIF | FlagDF | flagIOPL | flagNT | flagRF | flagAC | flagID
)

// setRFLAGS loads RFLAGS like POPFQ does at the current CPL.
func (c *cpu) setRFLAGS(v uint64) {
	mask := rflagsSettable
	if c.cpl != 0 {
		mask &^= flagIOPL
		if uint64(c.cpl) > (c.rf&flagIOPL)>>12 {
			mask &^= FlagIF
		}
	}
	oldIF := c.rf & FlagIF
	nv := c.rf&^mask | v&mask
	c.flags.Set(nv)
	c.rf = nv&^ArithFlags | 2
	if oldIF == 0 && c.rf&FlagIF != 0 {
		c.recheckIRQ()
	}
}

// recheckIRQ raises attnIRQ if the APIC holds a requested interrupt, so the
// run loop looks at it at the next block boundary. Called whenever IF or
// the APIC priority may have made one deliverable.
func (c *cpu) recheckIRQ() {
	if c.apic.pending.Load() != 0 {
		c.attn.Or(attnIRQ)
	}
}

func (c *cpu) setExit(r engine.ExitReason, msg string) {
	c.exit.Reason = r
	c.exit.Message = msg
	c.exit.RIP = c.curRIP
	c.exitReady = true
	c.stop = true
}

// Run runs the vCPU until an exit.
func (c *cpu) Run() (*engine.Exit, error) {
	if c.closed.Load() {
		return nil, errorf("Run", ErrClosed, "vCPU %d closed", c.id)
	}
	if !c.running.CompareAndSwap(false, true) {
		return nil, errorf("Run", ErrBusy, "vCPU %d is already running", c.id)
	}
	defer c.running.Store(false)
	c.exit = engine.Exit{}
	c.exitReady = false
	c.apic.pollTimer() // VMMs with frequent exits would otherwise starve it
	ex := c.run()
	c.nExits.Add(1)
	c.byReason.Count(ex.Reason)
	c.nInstr.Store(c.icount)
	return ex, nil
}

func (c *cpu) run() *engine.Exit {
	if c.shutdown != "" {
		c.exit = engine.Exit{Reason: engine.ExitShutdown, RIP: c.regs[rIP], Message: c.shutdown}
		return &c.exit
	}
	if msg := c.modeError(); msg != "" {
		c.exit = engine.Exit{Reason: engine.ExitInternalError, RIP: c.regs[rIP], Message: msg}
		return &c.exit
	}
	c.complete()
	for {
		// Order matters. A pending exception belongs to the instruction
		// that raised it and is delivered before anything else; a ready
		// exit (I/O, MMIO) must reach the VMM before a kick or interrupt
		// is considered, or an IN would be completed inside an interrupt
		// handler. Kicks and interrupts are then taken at this boundary.
		if c.excPending {
			c.excPending = false
			c.raise(c.exc)
		}
		if c.exitReady {
			return &c.exit
		}
		if a := c.attn.Load(); a != 0 {
			if a&attnKick != 0 {
				c.attn.And(^attnKick)
				c.exit = engine.Exit{Reason: engine.ExitIntr, RIP: c.regs[rIP]}
				return &c.exit
			}
			if a&attnIRQ != 0 {
				c.attn.And(^attnIRQ)
				c.tryInterrupt()
				if c.exitReady { // delivery ended in a triple fault or internal error
					return &c.exit
				}
			}
		}
		if c.halted {
			if c.rf&FlagIF == 0 {
				c.halted = false
				c.exit = engine.Exit{Reason: engine.ExitHLT, RIP: c.regs[rIP]}
				return &c.exit
			}
			c.waitHalt()
			continue
		}
		c.exec()
	}
}

// modeError says why the current state is one the interpreter cannot run.
func (c *cpu) modeError() string {
	const cr0PEPG = cr0PE | cr0PG
	if c.sr.CR0&cr0PEPG != cr0PEPG || c.sr.EFER&eferLMA == 0 || c.sr.CS.L != 1 || c.sr.CR4&cr4PAE == 0 {
		return fmt.Sprintf("emu runs only 64-bit long mode (CR0=%#x CR4=%#x EFER=%#x CS.L=%d)",
			c.sr.CR0, c.sr.CR4, c.sr.EFER, c.sr.CS.L)
	}
	return ""
}

// waitHalt sleeps until a kick or an interrupt request arrives.
func (c *cpu) waitHalt() {
	for c.attn.Load() == 0 {
		<-c.wake
	}
}

// tryInterrupt delivers the highest-priority requested interrupt if the
// guest accepts interrupts now.
func (c *cpu) tryInterrupt() {
	if c.rf&FlagIF == 0 || c.shadow {
		return // re-raised by STI/POPFQ/IRETQ or when the shadow ends
	}
	vec, ok := c.apic.ack()
	if !ok {
		return
	}
	c.halted = false
	c.raise(event{vec: vec, kind: evExternal, rip: c.regs[rIP]})
	c.recheckIRQ()
}

// exec runs blocks until something needs the run loop's attention.
func (c *cpu) exec() {
	defer c.recoverExec()
	b := &c.noBlock
	for c.attn.Load() == 0 {
		rip := c.regs[rIP]
		c.curRIP = rip // for a fault while fetching the block
		if len(c.bps) != 0 && c.atBreakpoint(rip) {
			c.exit = engine.Exit{Reason: engine.ExitDebug, RIP: rip}
			c.exitReady = true
			return
		}
		if next := c.linked(b, rip); next != nil {
			b = next
		} else {
			b = c.nextBlock(b)
		}
		c.cur = b
		if c.shadow || c.trace {
			c.icount += c.runBlockCareful(b)
			if c.shadow {
				c.shadow = false
				c.recheckIRQ()
			}
		} else {
			// Chaining stops at the next poll, or at once with
			// breakpoints armed: they are checked here.
			c.chainUntil = c.nextPoll
			if len(c.bps) != 0 {
				c.chainUntil = 0
			}
			c.runChain()
			b = c.cur
		}
		if c.icount >= c.nextPoll {
			// Every few thousand instructions: publish the counter and
			// fire an overdue LAPIC timer ourselves.
			c.nextPoll = c.icount + 1<<12
			c.nInstr.Store(c.icount)
			c.apic.pollTimer()
		}
		if c.stop {
			// Every instruction that arms the interrupt shadow (STI, a
			// load of SS) also ends the block with c.stop.
			c.stop = false
			if c.shadowArm {
				c.shadowArm = false
				c.shadow = true
			}
			if c.exitReady || c.halted {
				return
			}
		}
	}
}

// runChain runs block c.cur and then the blocks it is linked to, for as
// long as nothing needs exec's attention (c.stop, a kick or interrupt, the
// poll, armed breakpoints, a block without a valid link). It is the
// interpreter's innermost loop.
//
// Go keeps nothing in registers across the handler call, so the loop keeps
// only c and in live across it (the block is c.cur, its address
// c.blockRIP), and carries no dependency through memory from one
// instruction to the next: RIP and curRIP are computed from the block's
// address and the instruction's offset, not by adding its length to
// regs[rIP] (a store-to-load round trip per instruction). An instruction
// that changes RIP either ends its block or sets c.stop.
func (c *cpu) runChain() {
	in := c.cur.first
	c.blockRIP = c.regs[rIP]
	for {
		rip := c.blockRIP + uint64(in.off)
		c.curRIP = rip
		c.regs[rIP] = rip + uint64(in.len)
		in.fn(c, in)
		if c.stop && (c.retryWith == retryNone || !c.retryGeneric(in)) {
			c.icount += uint64(in.idx) + 1
			return
		}
		if in.next != nil {
			in = in.next
			continue
		}
		// End of the block: go on to the linked one.
		c.icount += uint64(in.idx) + 1
		rip = c.regs[rIP]
		next := c.linked(c.cur, rip)
		if next == nil {
			return
		}
		if c.attn.Load() != 0 {
			return
		}
		if c.icount >= c.chainUntil {
			return
		}
		c.cur = next
		c.blockRIP = rip
		in = next.first
	}
}

// runBlockCareful is runBlock for tracing, and for the instruction after
// STI or a load of SS (c.shadow), which runs alone so that interrupts are
// looked at right after it.
func (c *cpu) runBlockCareful(b *block) uint64 {
	insts := b.insts
	if c.shadow {
		insts = insts[:1]
	}
	start := c.regs[rIP]
	for i := range insts {
		in := &insts[i]
		if c.trace {
			c.traceInst(b, i)
		}
		c.curRIP = start + uint64(in.off)
		c.regs[rIP] = c.curRIP + uint64(in.len)
		in.fn(c, in)
		if c.stop && (c.retryWith == retryNone || !c.retryGeneric(in)) {
			return uint64(i) + 1
		}
	}
	return uint64(len(insts))
}

// SetBreakpoints arms execution breakpoints (engine.Breakpointer). They
// are checked where a block starts, which is every place a breakpoint can
// be reached by a jump, call, return or interrupt (a return address always
// starts a block: RET ends the one before it); an address reached only by
// falling through the middle of a cached block is not seen. The livepatch
// transition arms return addresses only.
func (c *cpu) SetBreakpoints(addrs []uint64) error {
	if len(addrs) > engine.MaxBreakpoints {
		return errorf("SetBreakpoints", ErrInvalid, "%d breakpoints, at most %d", len(addrs), engine.MaxBreakpoints)
	}
	if c.running.Load() {
		return errorf("SetBreakpoints", ErrBusy, "vCPU %d is running", c.id)
	}
	c.bps = append(c.bps[:0], addrs...)
	return nil
}

func (c *cpu) atBreakpoint(rip uint64) bool {
	for _, a := range c.bps {
		if a == rip {
			return true
		}
	}
	return false
}

// Panic values used to unwind out of an instruction.
type unwind int

const (
	sigException unwind = iota + 1 // c.exc holds the event to deliver
	sigFatal                       // c.fatalMsg says why the engine must stop
)

func (c *cpu) recoverExec() {
	r := recover()
	if r == nil {
		return
	}
	c.stop = false
	c.retryWith = retryNone
	c.shadowArm = false
	switch r {
	case sigException:
		c.excPending = true
	case sigFatal:
		c.setExit(engine.ExitInternalError, c.fatalMsg)
	default:
		// A bug in the interpreter must not take the host down: stop this
		// vCPU with everything needed to find it.
		c.setExit(engine.ExitInternalError, fmt.Sprintf("emu: interpreter bug at RIP %#x: %v\n%s", c.curRIP, r, debug.Stack()))
	}
}

// fatal stops the vCPU with an internal-error exit.
func (c *cpu) fatal(format string, args ...any) {
	c.fatalMsg = fmt.Sprintf("emu: vCPU %d at RIP %#x: ", c.id, c.curRIP) + fmt.Sprintf(format, args...)
	panic(sigFatal)
}

// complete finishes an IN or MMIO read with the data the VMM supplied.
func (c *cpu) complete() {
	switch c.pend {
	case pendIn, pendMMIORead:
		var v uint64
		for i := int(c.pendSize) - 1; i >= 0; i-- {
			v = v<<8 | uint64(c.ioBuf[i])
		}
		c.setReg(c.pendReg, c.pendSize, v)
		c.regs[rIP] = c.pendNext
	case pendIns:
		var v uint64
		for i := int(c.pendSize) - 1; i >= 0; i-- {
			v = v<<8 | uint64(c.ioBuf[i])
		}
		c.insVal, c.insReady, c.insRIP = v, true, c.regs[rIP]
	}
	c.pend = pendNone
}

func (c *cpu) traceLine(s string) {
	c.vm.traceMu.Lock()
	defer c.vm.traceMu.Unlock()
	c.traceBuf = append(append(c.traceBuf[:0], s...), '\n')
	c.vm.cfg.trace.Write(c.traceBuf)
}

func (c *cpu) traceInst(b *block, i int) {
	c.vm.traceMu.Lock()
	defer c.vm.traceMu.Unlock()
	text := ""
	if i < len(b.texts) {
		text = b.texts[i]
	}
	c.traceBuf = fmt.Appendf(c.traceBuf[:0], "cpu%d %#016x %s\n", c.id, c.regs[rIP], text)
	c.vm.cfg.trace.Write(c.traceBuf)
}

// reg reads register r as size bytes (zero-extended).
func (c *cpu) reg(r, size uint8) uint64 {
	switch size {
	case 8:
		return c.regs[r]
	case 4:
		return uint64(uint32(c.regs[r]))
	case 2:
		return uint64(uint16(c.regs[r]))
	}
	if r >= rAH {
		return uint64(uint8(c.regs[(r-rAH)] >> 8))
	}
	return uint64(uint8(c.regs[r]))
}

// setReg writes size bytes of register r: 32-bit writes zero the upper
// half, 8/16-bit writes merge, as on the CPU. Branch-free apart from the
// high-byte registers, and small enough to be inlined into every handler.
func (c *cpu) setReg(r, size uint8, v uint64) {
	var sh uint
	if r >= rAH {
		r, sh = r-rAH, 8
	}
	m := ^uint64(0) >> sizeShift(size) << sh
	keep := ^m
	if size >= 4 {
		keep = 0
	}
	p := &c.regs[r]
	*p = *p&keep | v<<sh&m
}
