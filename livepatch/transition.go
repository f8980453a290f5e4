package livepatch

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"sync"
	"syscall"
	"time"

	"klp-kvm/elfpatch"
	"klp-kvm/ftrace"
	"klp-kvm/guestkernel"
	"klp-kvm/kvm/engine"
)

// Callback indices (elfpatch.CallbackNames order).
const (
	cbPrePatch = iota
	cbPostPatch
	cbPreUnpatch
	cbPostUnpatch
)

// Backoff between attempts of a blocked transition: short at first (most
// blockers are workers that leave within microseconds), growing so that a
// long-parked task does not cost the guest a pause every millisecond.
const (
	backoffMin = time.Millisecond
	backoffMax = 20 * time.Millisecond
)

// maxVCPUStack is how far above RSP a vCPU's stack is assumed to reach
// when the running task's stack bounds are unknown.
const maxVCPUStack = guestkernel.StackSize

func (m *Manager) enable(name string, o Options) (*Result, error) {
	const op = "enable"
	start := time.Now()
	idx, p := m.find(name)
	if p == nil {
		return nil, errorf(op, name, syscall.ENOENT, "no such patch")
	}
	if p.Enabled {
		return nil, errorf(op, name, syscall.EINVAL, "the patch is already enabled")
	}
	// Stacking rule: enabled patches form a prefix of the stack, and only
	// the first disabled one may join it.
	for i, q := range m.patches {
		if i < idx && !q.Enabled {
			return nil, errorf(op, name, syscall.EBUSY, "patch %s below it in the stack is disabled", q.Name)
		}
	}
	if err := m.checkCallbacks(op, p); err != nil {
		return nil, err
	}
	loaded, err := m.loadImage(op, p)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*Result, error) {
		if loaded {
			m.dropImage(p)
		}
		return nil, err
	}
	// klp_pre_patch_callback: a non-zero return aborts the enable; the
	// objects whose pre_patch succeeded get their post_unpatch (Linux's
	// klp_cancel_transition).
	var preDone []*Object
	cancel := func() {
		for _, ob := range preDone {
			m.runCallback(ob, cbPostUnpatch)
		}
	}
	for _, ob := range p.Objects {
		if ob.Callbacks[cbPrePatch] == 0 {
			preDone = append(preDone, ob)
			continue
		}
		ret, err := m.runCallback(ob, cbPrePatch)
		if err != nil || ret != 0 {
			cancel()
			if err == nil {
				errno := syscall.EINVAL
				if ret < 0 && ret > -4096 {
					errno = syscall.Errno(-ret)
				}
				return fail(errorf(op, name, errno, "pre_patch callback of object %s returned %d", ob.Name, ret))
			}
			return fail(&Error{Op: op, Patch: name, Errno: syscall.EIO, Detail: "pre_patch callback of object " + ob.Name, Err: err})
		}
		preDone = append(preDone, ob)
	}
	pl := m.planEnable(p)
	res, x, err := m.transition(op, p, pl, o)
	if err != nil {
		cancel()
		return fail(err)
	}
	// Switched: commit the bookkeeping, then tell the guest.
	prevOps, prevPatches := m.ops, m.patches
	prevForced := p.Forced
	m.ops = pl.next
	p.Enabled = true
	p.Forced = p.Forced || res.Forced
	prevReplForced := make([]bool, len(pl.replaced))
	for i, q := range pl.replaced {
		prevReplForced[i] = q.Forced
		q.Enabled = false
		if res.Forced {
			// Tasks may still run in the replaced patches' code.
			q.Forced = true
		}
		res.Replaced = append(res.Replaced, q.Name)
	}
	if len(pl.replaced) > 0 {
		var keep []*Patch
		for _, q := range m.patches {
			if !contains(pl.replaced, q) {
				keep = append(keep, q)
			}
		}
		m.patches = keep
	}
	if err := m.writeSysfs(); err != nil {
		// Undo the switch: nothing may stay half-applied.
		m.ops, m.patches = prevOps, prevPatches
		p.Enabled, p.Forced = false, prevForced
		for i, q := range pl.replaced {
			q.Enabled, q.Forced = true, prevReplForced[i]
		}
		rerr := m.undo(x)
		_ = m.writeSysfs()
		cancel()
		if rerr != nil {
			return nil, &Error{Op: op, Patch: name, Errno: syscall.EIO, Detail: "guest sysfs update failed, and so did the rollback: " + rerr.Error(), Err: err}
		}
		return fail(&Error{Op: op, Patch: name, Errno: syscall.EIO, Detail: "guest sysfs", Err: err})
	}
	x.Finish()
	for _, q := range pl.replaced {
		m.dropImage(q)
	}
	for _, ob := range p.Objects {
		m.runCallback(ob, cbPostPatch)
	}
	res.Total = time.Since(start)
	m.last = res
	return res, nil
}

func (m *Manager) disable(name string, o Options) (*Result, error) {
	const op = "disable"
	start := time.Now()
	idx, p := m.find(name)
	if p == nil {
		return nil, errorf(op, name, syscall.ENOENT, "no such patch")
	}
	if !p.Enabled {
		return nil, errorf(op, name, syscall.EINVAL, "the patch is not enabled")
	}
	for _, q := range m.patches[idx+1:] {
		if q.Enabled {
			return nil, errorf(op, name, syscall.EBUSY, "patch %s above it in the stack is enabled", q.Name)
		}
	}
	if err := m.checkCallbacks(op, p); err != nil {
		return nil, err
	}
	for _, ob := range p.Objects {
		m.runCallback(ob, cbPreUnpatch)
	}
	pl := m.planDisable(p)
	res, x, err := m.transition(op, p, pl, o)
	if err != nil {
		// The patch stays enabled; Linux reruns post_patch when an unpatch
		// transition is reversed, which keeps callback pairs balanced.
		for _, ob := range p.Objects {
			m.runCallback(ob, cbPostPatch)
		}
		return nil, err
	}
	prevOps, prevForced := m.ops, p.Forced
	m.ops = pl.next
	p.Enabled = false
	p.Forced = p.Forced || res.Forced
	if err := m.writeSysfs(); err != nil {
		m.ops = prevOps
		p.Enabled, p.Forced = true, prevForced
		rerr := m.undo(x)
		_ = m.writeSysfs()
		if rerr != nil {
			return nil, &Error{Op: op, Patch: name, Errno: syscall.EIO, Detail: "guest sysfs update failed, and so did the rollback: " + rerr.Error(), Err: err}
		}
		return nil, &Error{Op: op, Patch: name, Errno: syscall.EIO, Detail: "guest sysfs", Err: err}
	}
	x.Finish()
	for _, ob := range p.Objects {
		m.runCallback(ob, cbPostUnpatch)
	}
	res.Total = time.Since(start)
	m.last = res
	return res, nil
}

func contains(ps []*Patch, p *Patch) bool {
	for _, q := range ps {
		if q == p {
			return true
		}
	}
	return false
}

// undo reverts a committed switch in one pause.
func (m *Manager) undo(x *ftrace.Txn) error {
	if err := m.g.Pause(); err != nil {
		return err
	}
	err := x.Rollback()
	if rerr := m.g.Resume(); err == nil {
		err = rerr
	}
	x.Finish()
	return err
}

// checkCallbacks refuses a patch with callbacks when nothing can run them.
func (m *Manager) checkCallbacks(op string, p *Patch) error {
	if m.cb != nil {
		return nil
	}
	for _, ob := range p.Objects {
		for i, has := range ob.hasCB {
			if has {
				return errorf(op, p.Name, syscall.ENODEV, "object %s has a %s callback and no guest agent runs callbacks",
					ob.Name, elfpatch.CallbackNames[i])
			}
		}
	}
	return nil
}

// runCallback calls one callback of ob in the guest (0, nil if it has
// none). Only pre_patch's result matters; the others are void in Linux.
func (m *Manager) runCallback(ob *Object, which int) (int64, error) {
	addr := ob.Callbacks[which]
	if addr == 0 || m.cb == nil {
		return 0, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), m.cbTO)
	defer cancel()
	return m.cb(ctx, addr, ob.Addr)
}

// loadImage allocates the patch's place in the patch area, lays it out
// there (relocations against the kernel) and writes it. The guest runs
// meanwhile: nothing executes the patch area until a site jumps there.
// Reports whether it loaded (false: already there from an earlier enable).
func (m *Manager) loadImage(op string, p *Patch) (bool, error) {
	if p.ImageAddr != 0 {
		return false, nil
	}
	align, err := p.parsed.Align()
	if err != nil {
		return false, &Error{Op: op, Patch: p.Name, Errno: syscall.EINVAL, Err: err}
	}
	size := max(p.ImageSize, 1)
	al := m.tracer.Alloc()
	addr, err := al.Alloc(size, align)
	if err != nil {
		return false, &Error{Op: op, Patch: p.Name, Errno: syscall.ENOMEM, Err: err}
	}
	im, err := p.parsed.Layout(addr, m.kernel)
	if err != nil {
		_ = al.Free(addr)
		return false, &Error{Op: op, Patch: p.Name, Errno: syscall.EINVAL, Err: err}
	}
	saved := make([]byte, len(im.Bytes))
	if err := m.g.ReadVirt(addr, saved); err != nil {
		_ = al.Free(addr)
		return false, &Error{Op: op, Patch: p.Name, Errno: syscall.EIO, Detail: "read the patch area", Err: err}
	}
	if err := m.g.WriteVirt(addr, im.Bytes); err != nil {
		_ = al.Free(addr)
		return false, &Error{Op: op, Patch: p.Name, Errno: syscall.EIO, Detail: "write the patch image", Err: err}
	}
	p.image, p.ImageAddr, p.saved = im, addr, saved
	for i, io := range im.Objects {
		if i >= len(p.Objects) {
			break
		}
		ob := p.Objects[i]
		ob.Addr, ob.Callbacks = io.Addr, io.Callbacks
		for j, f := range ob.Funcs {
			f.NewAddr = addr + f.newOff
			if j < len(io.Funcs) && io.Funcs[j].NewAddr != f.NewAddr {
				// Layout is deterministic in the base; anything else is a
				// bug worth refusing over.
				m.dropImage(p)
				return false, errorf(op, p.Name, syscall.EINVAL, "%s: new function moved between layouts", f.OldName)
			}
		}
	}
	return true, nil
}

// dropImage takes the patch's image out of the patch area: its bytes get
// what was there before (so a failed or undone operation leaves the patch
// area as it found it) and its space is freed. The image of a patch that
// went through a forced transition stays where it is, allocated, for
// good: a task may still be running its code (Linux likewise never lets
// the module of a forced patch be removed).
func (m *Manager) dropImage(p *Patch) {
	if p.ImageAddr == 0 {
		return
	}
	if p.Forced {
		m.retired += p.ImageSize
	} else {
		_ = m.g.WriteVirt(p.ImageAddr, p.saved)
		_ = m.tracer.Alloc().Free(p.ImageAddr)
	}
	p.image, p.ImageAddr, p.saved = nil, 0, nil
	for _, ob := range p.Objects {
		ob.Addr, ob.Callbacks = 0, [4]uint64{}
		for _, f := range ob.Funcs {
			f.NewAddr = 0
		}
	}
}

// blocker is what stopped a transition attempt.
type blocker struct {
	who  string // "pid 7 (parker)" or "CPU 1 (pid 3 worker0)"
	what string // the function, or why the stack could not be trusted
	pc   uint64
}

func (b *blocker) String() string {
	if b.pc != 0 {
		return fmt.Sprintf("%s is in %s (pc %#x)", b.who, b.what, b.pc)
	}
	return fmt.Sprintf("%s: %s", b.who, b.what)
}

// transition switches the sites of pl in one pause, after checking that no
// vCPU and no task is inside a function whose meaning changes. While
// blocked it resumes the guest, mirrors transition=1 into sysfs, backs off
// and retries; at the deadline everything is rolled back and the error is
// EBUSY naming the blocker. The returned transaction is committed; the
// caller Finishes it (or rolls it back).
func (m *Manager) transition(op string, p *Patch, pl *stackPlan, o Options) (*Result, *ftrace.Txn, error) {
	x, err := m.tracer.Prepare(pl.updates)
	if err != nil {
		errno := syscall.EINVAL
		if errors.Is(err, ftrace.ErrNoMem) {
			errno = syscall.ENOMEM
		}
		return nil, nil, &Error{Op: op, Patch: p.Name, Errno: errno, Err: err}
	}
	// Fresh trampolines go in while the guest runs (nothing reaches them
	// before the sites are poked): a shorter pause.
	if err := x.Stage(); err != nil {
		x.Abort()
		return nil, nil, &Error{Op: op, Patch: p.Name, Errno: syscall.EIO, Detail: "write trampolines", Err: err}
	}
	idx := newSpanIndex(pl.spans)
	deadline := o.Deadline
	if deadline <= 0 {
		deadline = DefaultDeadline
	}
	end := time.Now().Add(deadline)
	backoff := backoffMin
	res := &Result{Op: op, Patch: p.Name, Funcs: len(pl.updates)}
	m.forceReq.Store(false)
	m.inTrans.Store(true)
	defer m.inTrans.Store(false)
	inTransition := false
	finish := func() {
		if inTransition {
			p.Transition = false
			_ = m.writeSysfs()
		}
	}
	var last *blocker
	for {
		res.Attempts++
		force := o.Force || m.forceReq.Load()
		t0 := time.Now()
		var blk *blocker
		paused := true
		err := m.g.Pause()
		tp := time.Now()
		if err != nil {
			// A vCPU that does not stop in time is a blocker like any
			// other: retry until the deadline (the Machine resumed the
			// others).
			paused = false
			blk = &blocker{who: "the guest", what: "could not be stopped: " + err.Error()}
		} else if !force {
			blk = m.check(idx, o.Conservative)
		}
		if blk == nil {
			t1 := time.Now()
			err := x.Commit()
			t2 := time.Now()
			rerr := m.g.Resume()
			res.PauseWindow = time.Since(t0)
			res.Stop, res.Check, res.Poke = tp.Sub(t0), t1.Sub(tp), t2.Sub(t1)
			if err == nil && rerr != nil {
				// The text is switched but the guest did not restart:
				// report it; the state is consistent (the switch happened).
				err = nil
			}
			if err != nil {
				x.Abort()
				finish()
				errno := syscall.EIO
				if errors.Is(err, ftrace.ErrMismatch) {
					errno = syscall.EINVAL
				}
				return nil, nil, &Error{Op: op, Patch: p.Name, Errno: errno, Detail: "text poke", Err: err}
			}
			res.Forced = force
			if inTransition {
				p.Transition = false // the caller's sysfs write shows it
			}
			return res, x, nil
		}
		last = blk
		if paused {
			if err := m.g.Resume(); err != nil {
				x.Abort()
				finish()
				return nil, nil, &Error{Op: op, Patch: p.Name, Errno: syscall.EIO, Detail: "resume", Err: err}
			}
		}
		if !inTransition {
			inTransition = true
			p.Transition = true
			_ = m.writeSysfs()
		}
		if time.Now().Add(backoff).After(end) {
			x.Abort()
			finish()
			return nil, nil, errorf(op, p.Name, syscall.EBUSY, "transition not complete after %v (%d attempts), rolled back: %s",
				deadline, res.Attempts, last)
		}
		time.Sleep(backoff)
		backoff = min(backoff*2, backoffMax)
	}
}

// check walks every vCPU's live stack and every sleeping task's saved
// stack (the guest is paused) and returns the first frame inside a span,
// or an unreliable stack, or nil when the switch is safe.
func (m *Manager) check(idx *spanIndex, conservative bool) *blocker {
	if len(idx.spans) == 0 {
		return nil
	}
	// Fetch every vCPU's registers concurrently (each is a round trip to
	// that vCPU's thread) while the task table is read and the sleeping
	// tasks' stacks are walked.
	n := m.g.NumCPUs()
	regs := make([]engine.Regs, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	if snap, ok := m.g.(PausedRegser); ok {
		// The machine kept the registers each vCPU had when it stopped:
		// no round trips at all.
		all, err := snap.PausedRegs()
		for cpu := 0; cpu < n; cpu++ {
			switch {
			case err != nil:
				errs[cpu] = err
			case cpu < len(all):
				regs[cpu] = all[cpu]
			default:
				errs[cpu] = fmt.Errorf("no registers of vCPU %d in the pause snapshot", cpu)
			}
		}
	} else {
		for cpu := 0; cpu < n; cpu++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				regs[cpu], errs[cpu] = m.g.Regs(cpu)
			}()
		}
	}
	var tasks []guestkernel.Task
	var current []uint64
	if m.intro != nil {
		var err error
		if tasks, err = m.intro.Tasks(); err != nil {
			wg.Wait()
			return &blocker{who: "guest task table", what: "unreadable: " + err.Error()}
		}
		current, _ = m.intro.CPUCurrent()
	}
	hit := idx.hit
	wg.Wait()
	// A task is live on a vCPU when that vCPU's RSP lies in its stack; every
	// other task is walked from its saved state. The guest's own on_cpu
	// field is not trusted for this: schedule() marks next as on_cpu before
	// the stack switch, and a vCPU paused in that window runs prev while
	// next's saved frames (possibly inside a changing function) would be
	// skipped.
	live := make(map[uint64]bool)
	for cpu := 0; cpu < n; cpu++ {
		if errs[cpu] != nil {
			continue
		}
		for _, t := range tasks {
			if t.StackSize > 0 && t.StackSize <= 1<<20 && regs[cpu].RSP >= t.StackBase && regs[cpu].RSP < t.StackBase+t.StackSize {
				live[t.Addr] = true
			}
		}
	}
	if b := m.checkTasks(tasks, live, conservative, hit); b != nil {
		return b
	}
	for cpu := 0; cpu < n; cpu++ {
		r, err := regs[cpu], errs[cpu]
		who := fmt.Sprintf("CPU %d", cpu)
		if err != nil {
			return &blocker{who: who, what: "registers unreadable: " + err.Error()}
		}
		lo, hi := r.RSP&^7, (r.RSP&^7)+maxVCPUStack
		known := false
		for _, t := range tasks {
			if cpu < len(current) && t.Addr == current[cpu] {
				who = fmt.Sprintf("CPU %d (pid %d %s)", cpu, t.PID, t.Name)
			}
			if t.StackSize > 0 && t.StackSize <= 1<<20 && r.RSP >= t.StackBase && r.RSP < t.StackBase+t.StackSize {
				lo, hi, known = t.StackBase, t.StackBase+t.StackSize, true
			}
		}
		if m.intro != nil && m.intro.InSwitch(r.RIP) {
			return &blocker{who: who, what: "a context switch", pc: r.RIP}
		}
		if m.intro != nil && m.intro.InEntry(r.RIP) {
			// Between the hardware interrupt frame and the frame record
			// isr_common pushes (or after it is popped), the interrupted
			// function is missing from the RBP chain: retry shortly.
			return &blocker{who: who, what: "interrupt entry", pc: r.RIP}
		}
		if s := hit(r.RIP, true); s != nil {
			return &blocker{who: who, what: s.name, pc: r.RIP}
		}
		// The callee's frame may not be pushed yet (at entry or right after
		// push %rbp): the words at RSP name its caller.
		if b := m.scanWords(r.RSP&^7, min(hi, (r.RSP&^7)+16), who, hit); b != nil {
			return b
		}
		if conservative || m.intro == nil {
			if b := m.scanWords(r.RSP&^7, hi, who, hit); b != nil {
				return b
			}
			continue
		}
		frames, err := m.intro.WalkFrom(r.RIP, r.RBP, lo, hi, 0)
		if b := checkFrames(frames, who, hit); b != nil {
			return b
		}
		if err != nil && known {
			return &blocker{who: who, what: "unreliable stack: " + err.Error()}
		}
	}
	return nil
}

// checkTasks walks the saved stacks of the tasks not live on a vCPU.
func (m *Manager) checkTasks(tasks []guestkernel.Task, live map[uint64]bool, conservative bool, hit func(uint64, bool) *span) *blocker {
	for _, t := range tasks {
		if live[t.Addr] {
			continue // its live stack is walked with its vCPU
		}
		who := fmt.Sprintf("pid %d (%s)", t.PID, t.Name)
		if conservative {
			if hit(t.SavedRIP, true) != nil {
				return &blocker{who: who, what: hit(t.SavedRIP, true).name, pc: t.SavedRIP}
			}
			if t.StackSize == 0 || t.StackSize > 1<<20 || t.SavedRSP < t.StackBase || t.SavedRSP >= t.StackBase+t.StackSize {
				return &blocker{who: who, what: "unreliable stack: saved RSP outside its stack"}
			}
			if b := m.scanWords(t.SavedRSP&^7, t.StackBase+t.StackSize, who, hit); b != nil {
				return b
			}
			continue
		}
		frames, err := m.intro.WalkTask(t, 0)
		if b := checkFrames(frames, who, hit); b != nil {
			return b
		}
		if err != nil {
			return &blocker{who: who, what: "unreliable stack: " + err.Error()}
		}
	}
	return nil
}

func checkFrames(frames []guestkernel.Frame, who string, hit func(uint64, bool) *span) *blocker {
	for i, f := range frames {
		exact := i == 0 || f.Interrupted
		if s := hit(f.PC, exact); s != nil {
			return &blocker{who: who, what: s.name, pc: f.PC}
		}
	}
	return nil
}

// scanWords checks every 8-byte word of [lo, hi) as a return address (the
// conservative, Ksplice-style check: any word that looks like a pointer
// into a changing function blocks).
func (m *Manager) scanWords(lo, hi uint64, who string, hit func(uint64, bool) *span) *blocker {
	if hi <= lo || hi-lo > 1<<20 {
		return nil
	}
	buf := make([]byte, hi-lo)
	if err := m.g.ReadVirt(lo, buf); err != nil {
		// Part of the assumed range may be unmapped: scan what reads.
		for n := uint64(len(buf)) / 2; n >= 8; n /= 2 {
			if m.g.ReadVirt(lo, buf[:n&^7]) == nil {
				buf = buf[:n&^7]
				err = nil
				break
			}
		}
		if err != nil {
			return nil
		}
	}
	for off := 0; off+8 <= len(buf); off += 8 {
		v := binary.LittleEndian.Uint64(buf[off:])
		if s := hit(v, false); s != nil {
			return &blocker{who: who, what: s.name + " (stack word)", pc: v}
		}
	}
	return nil
}

// spanIndex holds spans sorted by start with a running maximum of their
// ends: a lookup is a binary search plus a short walk back (a
// 1024-function patch checks every frame of every stack against 2048
// spans). Built once per transition, outside the pause.
type spanIndex struct {
	spans []span
	maxHi []uint64
}

func newSpanIndex(spans []span) *spanIndex {
	x := &spanIndex{spans: append([]span(nil), spans...)}
	sort.Slice(x.spans, func(i, j int) bool { return x.spans[i].lo < x.spans[j].lo })
	x.maxHi = make([]uint64, len(x.spans))
	for i, s := range x.spans {
		x.maxHi[i] = s.hi
		if i > 0 {
			x.maxHi[i] = max(x.maxHi[i-1], s.hi)
		}
	}
	return x
}

// hit returns the span holding pc: an exact PC (a vCPU's RIP, an
// interrupted frame), or a return address, which belongs to the call
// before it.
func (x *spanIndex) hit(pc uint64, exact bool) *span {
	if !exact {
		pc--
	}
	i := sort.Search(len(x.spans), func(i int) bool { return x.spans[i].lo > pc })
	for j := i - 1; j >= 0 && x.maxHi[j] > pc; j-- {
		s := &x.spans[j]
		if pc >= s.lo && pc < s.hi && !(exact && s.entryOK && pc == s.lo) {
			return s
		}
	}
	return nil
}
