package livepatch

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"

	"klp-kvm/elfpatch"
	"klp-kvm/ftrace"
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

// The progress guarantee: when only running vCPUs block a switch, they
// alone run on, inside the same pause, until they return out of the
// changing code (a breakpoint on the return address) or until stepBudget
// is spent; a vCPU whose way out is not known (mid context switch, in the
// interrupt entry) runs in slices of stepSlice.
// A round with breakpoints armed is capped at stepRound too: where they do
// not fire (QEMU TCG's nested SVM), progress degrades to short bounded
// resumes with a check after each, instead of one long run.
const (
	stepBudget = 2 * time.Millisecond
	stepRound  = 500 * time.Microsecond
	stepSlice  = 100 * time.Microsecond
)

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

// undo reverts a committed switch in one pause. A Resume that fails is
// reported, joined to a failed Rollback's error or alone: either way the
// undo did not leave the guest as it found it.
func (m *Manager) undo(x *ftrace.Txn) error {
	if err := m.g.Pause(); err != nil {
		return err
	}
	err := x.Rollback()
	err = alsoFailed(err, "resuming the guest", m.g.Resume())
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

// transition switches the sites of pl in one pause, after checking that no
// vCPU and no task is inside a function whose meaning changes (Linux's
// klp_try_complete_transition). When only running vCPUs block, they alone
// run on out of the changing code inside the same pause and the check is
// repeated (progress). When a sleeping task blocks, or progress ran out
// of budget, the guest resumes, transition=1 is mirrored into sysfs, and
// the attempt is retried with backoff; at the deadline everything is
// rolled back and the error is EBUSY naming what blocked the most
// attempts. The returned transaction is committed; the caller Finishes it
// (or rolls it back).
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
	tally := newBlockerTally()
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
			v := m.check(idx, o.Conservative)
			if v.first != nil && !v.sleeping && !o.NoProgress {
				v = m.progress(idx, o.Conservative, v, res)
			}
			blk = v.first
		}
		if blk == nil {
			t1 := time.Now()
			err := x.Commit()
			t2 := time.Now()
			rerr := m.g.Resume()
			res.PauseWindow = time.Since(t0)
			res.Stop, res.Check, res.Poke = tp.Sub(t0), t1.Sub(tp), t2.Sub(t1)
			if err != nil {
				x.Abort()
				finish()
				errno := syscall.EIO
				if errors.Is(err, ftrace.ErrMismatch) {
					errno = syscall.EINVAL
				}
				// The poke's error decides; a guest that did not
				// restart after it is reported with it.
				return nil, nil, &Error{Op: op, Patch: p.Name, Errno: errno, Detail: "text poke",
					Err: alsoFailed(err, "resuming the guest", rerr)}
			}
			// The text is switched; a guest that did not restart is
			// reported, but the switch stands (the state is consistent).
			res.ResumeErr = errString(rerr)
			res.Forced = force
			if inTransition {
				p.Transition = false // the caller's sysfs write shows it
			}
			return res, x, nil
		}
		tally.add(blk)
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
				deadline, res.Attempts, tally.summary(res.Attempts))
		}
		time.Sleep(backoff)
		backoff = min(backoff*2, backoffMax)
	}
}

// progress lets the vCPUs that block v run on alone, the rest of the guest
// still paused, until they leave the changing code, checking again after
// each stop; it ends when the switch is safe, a sleeping task blocks,
// the guest cannot do it (no Stepper) or the budget is spent.
func (m *Manager) progress(idx *spanIndex, conservative bool, v *verdict, res *Result) *verdict {
	st, ok := m.g.(Stepper)
	if !ok {
		return v
	}
	t0 := time.Now()
	end := t0.Add(stepBudget)
	for v.first != nil && !v.sleeping && len(v.running) > 0 {
		left := time.Until(end)
		if left <= 0 {
			break
		}
		budget := min(left, stepRound)
		for _, stop := range v.running {
			if len(stop) == 0 {
				budget = min(budget, stepSlice)
			}
		}
		res.Steps++
		if _, err := st.RunUntil(v.running, budget); err != nil {
			break
		}
		v = m.check(idx, conservative)
	}
	res.StepTime += time.Since(t0)
	return v
}

// blockerTally counts what blocked each attempt, so that a transition that
// times out names what held it up most, not whatever the last attempt
// happened to see.
type blockerTally struct {
	n    map[string]int
	last *blocker
}

func newBlockerTally() *blockerTally { return &blockerTally{n: map[string]int{}} }

func (t *blockerTally) add(b *blocker) {
	t.n[b.key()]++
	t.last = b
}

func (t *blockerTally) summary(attempts int) string {
	best, bestN := "", 0
	for k, n := range t.n {
		if n > bestN || (n == bestN && k < best) {
			best, bestN = k, n
		}
	}
	if t.last != nil && t.last.key() == best {
		return fmt.Sprintf("%s (blocked %d of %d attempts)", t.last, bestN, attempts)
	}
	s := fmt.Sprintf("%s blocked %d of %d attempts", best, bestN, attempts)
	if t.last != nil {
		s += "; the last one: " + t.last.String()
	}
	return s
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
