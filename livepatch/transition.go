package livepatch

// transition.go is Linux's kernel/livepatch/transition.c, with the parts
// of core.c that drive it (__klp_enable_patch, __klp_disable_patch). A
// transition here is one stop_machine-style switch of every changing
// fentry site, retried until no vCPU and no task is inside a changing
// function; Linux instead switches task by task. The map, transition.c ->
// this package:
//
//	klp_init_transition          (*Manager).initTransition: the switch prepared, trampolines staged, spans indexed
//	klp_start_transition         (*Manager).startTransition: transition=1 in sysfs, once an attempt was blocked
//	klp_try_complete_transition  (*Manager).tryCompleteTransition: one attempt: stop the guest, check, switch
//	klp_transition_work_fn       (*Manager).runTransition and waitTransition: retry with backoff until the deadline
//	klp_complete_transition      (*Manager).commitOrUndo, then completeTransition: replaced images out, post callbacks
//	                             (one that cannot run is reported: ErrSwitched)
//	klp_reverse_transition       (*Manager).reverseTransition: back to where the transition started (as kpatch does on a timeout)
//	klp_cancel_transition        (*Manager).cancelTransition: an enable that did not complete: post_unpatch, image out
//	klp_force_transition         (*Manager).forceTransition: a guest's write to <patch>/force
//	klp_check_stack, klp_check_and_switch_task, klp_try_switch_task
//	                             check.go: (*Manager).check and its helpers
//	klp_synchronize_transition   Guest.Pause: every vCPU stopped at an instruction boundary
//	klp_send_signals             none; (*Manager).progress is this package's own way to move a
//	                             blocker: a running vCPU runs on alone, inside the pause, out of the changing code
//	klp_transition_patch, klp_target_state
//	                             transition.p, transition.target
//
// and core.c -> this package: __klp_enable_patch is (*Manager).enable,
// __klp_disable_patch is (*Manager).disable, klp_pre_patch_callback is
// (*Manager).prePatch.
//
// Locking: every unexported method of Manager here runs with m.mu held
// (Linux's klp_mutex) and says so, except forceTransition, which a guest's
// sysfs write calls while a transition holds m.mu. The transition in
// progress is also published in m.cur (klp_transition_patch) for what
// runs without m.mu: forceTransition, a guest's enabled write (EBUSY at
// once during a transition) and Status (its attempts).
//
// Time: an operation started by a guest's sysfs write runs within
// SysfsBudget (a context): its wait for m.mu, its callbacks and its
// transition's deadline are cut to fit, so that the guest gets the
// answer, with the errno of the state reached, before it gives up.

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
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

// maxErrno is Linux's MAX_ERRNO: a pre_patch callback's return value in
// [-maxErrno, -1] is an errno, which the enable fails with; any other
// non-zero value fails it with EINVAL.
const maxErrno = 4095

// Backoff between attempts of a blocked transition: short at first (most
// blockers are workers that leave within microseconds), growing so that a
// long-parked task does not cost the guest a pause every millisecond.
const (
	backoffMin = time.Millisecond
	backoffMax = 20 * time.Millisecond
)

// The progress guarantee: when only running vCPUs block a switch, they
// alone run on, inside the same pause, until they return out of the
// changing code (a breakpoint on the return address) or until StepBudget
// is spent; a vCPU whose way out is not known (mid context switch, in the
// interrupt entry) runs in slices of StepSlice.
// A round with breakpoints armed is capped at StepRound too: where they do
// not fire (QEMU TCG's nested SVM), progress degrades to short bounded
// resumes with a check after each, instead of one long run.
// linuxlive's progress for Linux guests uses the same values and
// RoundBudget.
const (
	StepBudget = 2 * time.Millisecond
	StepRound  = 500 * time.Microsecond
	StepSlice  = 100 * time.Microsecond
)

// RoundBudget is how long one progress round may run the blocking vCPUs:
// what is left of the budget, at most StepRound, and only StepSlice when
// one of them has no stop address (its way out is unknown).
func RoundBudget(left time.Duration, running map[int][]uint64) time.Duration {
	budget := min(left, StepRound)
	for _, stops := range running {
		if len(stops) == 0 {
			budget = min(budget, StepSlice)
		}
	}
	return budget
}

// transition is one transition in progress: Linux's klp_transition_patch
// and klp_target_state, with the prepared switch and the retry state. It
// lives for one enable or disable, under m.mu.
type transition struct {
	op     string // "enable" or "disable"
	target bool   // klp_target_state: true is KLP_PATCHED (enable)
	p      *Patch
	pl     *stackPlan
	o      Options
	x      *ftrace.Txn // the site updates: prepared, staged, then committed
	idx    *spanIndex  // what no stack may be inside at the switch
	res    *Result

	busySince time.Time // when this goroutine last slept (napBeforePause)

	deadline time.Duration // how long blocked attempts are retried
	end      time.Time     // when that time is up
	backoff  time.Duration // the wait before the next attempt
	tally    *blockerTally // what blocked the attempts so far
	started  bool          // startTransition ran: transition=1 in sysfs

	// Used without m.mu: a guest's write to <patch>/force
	// (forceTransition) arrives while this transition holds the lock,
	// and Status reads the attempts so far.
	forceReq atomic.Bool
	attempts atomic.Int32
}

// enable is core.c's __klp_enable_patch: the checks, the image into the
// patch area, the pre_patch callbacks, then the transition and its
// completion. Whatever fails before the switch is committed is taken
// back (cancelTransition), and the error says what failed. Once the
// switch is committed the patch is enabled: a post_patch callback that
// could not run then gives the Result with an ErrSwitched error. ctx
// bounds the callbacks. m.mu must be held.
func (m *Manager) enable(ctx context.Context, name string, o Options) (*Result, error) {
	const op = "enable"
	m.mustHold()
	start := time.Now()
	p, err := m.enableTarget(op, name)
	if err != nil {
		return nil, err
	}
	loaded, err := m.loadImage(op, p)
	if err != nil {
		return nil, err
	}
	// p is on Linux's klp_patches, in transition, until its callbacks
	// are over (completeTransition, cancelTransition end it).
	defer m.endPatchList()
	if err := m.beginPatchList(op, p); err != nil {
		return nil, m.cancelTransition(ctx, err, p, nil, loaded)
	}
	pre, err := m.prePatch(ctx, op, p)
	if err != nil {
		return nil, m.cancelTransition(ctx, err, p, pre, loaded)
	}
	t, err := m.runTransition(ctx, op, true, p, m.planEnable(p), o)
	if err != nil {
		return nil, m.cancelTransition(ctx, err, p, pre, loaded)
	}
	if undone, err := m.commitOrUndo(t); err != nil {
		// An undo that failed may leave sites jumping into the image:
		// it stays.
		return nil, m.cancelTransition(ctx, err, p, pre, loaded && undone)
	}
	return t.res, m.completeTransition(ctx, t, start, nil)
}

// disable is core.c's __klp_disable_patch: the checks, the pre_unpatch
// callbacks, then the transition and its completion. When the switch is
// not committed (the transition timed out, or it was undone because the
// guest's sysfs could not show it) the patch stays enabled and, as when
// Linux reverses an unpatch transition (klp_reverse_transition, then
// klp_complete_transition towards KLP_PATCHED), post_patch runs again:
// every pre_unpatch is followed by a post_patch or a post_unpatch. The
// callbacks are void, as in Linux: one that could not run does not stop
// the disable; once the switch is committed it gives the Result with an
// ErrSwitched error. ctx bounds the callbacks. m.mu must be held.
func (m *Manager) disable(ctx context.Context, name string, o Options) (*Result, error) {
	const op = "disable"
	m.mustHold()
	start := time.Now()
	p, err := m.disableTarget(op, name)
	if err != nil {
		return nil, err
	}
	defer m.endPatchList()
	if err := m.beginPatchList(op, p); err != nil {
		return nil, err
	}
	preErr := m.runCallbacks(ctx, p, cbPreUnpatch)
	t, err := m.runTransition(ctx, op, false, p, m.planDisable(p), o)
	if err == nil {
		_, err = m.commitOrUndo(t)
	}
	if err != nil {
		err = alsoFailed(err, "the pre_unpatch callback", preErr)
		return nil, alsoFailed(err, "post_patch after the reversed disable", m.runCallbacks(ctx, p, cbPostPatch))
	}
	return t.res, m.completeTransition(ctx, t, start, preErr)
}

// enableTarget finds the patch an enable acts on and checks that it may
// be enabled: registered, disabled, the first disabled patch of the stack
// (enabled patches form a prefix of the stack, and only the first
// disabled one may join it), compatible with the system states of the
// enabled ones (klp_is_patch_compatible, state.go), its callbacks
// runnable. m.mu must be held.
func (m *Manager) enableTarget(op, name string) (*Patch, error) {
	idx, p := m.find(name)
	if p == nil {
		return nil, errorf(op, name, syscall.ENOENT, "no such patch")
	}
	if p.Enabled {
		return nil, errorf(op, name, syscall.EINVAL, "the patch is already enabled")
	}
	for _, q := range m.patches[:idx] {
		if !q.Enabled {
			return nil, errorf(op, name, syscall.EBUSY, "patch %s below it in the stack is disabled", q.Name)
		}
	}
	if err := m.isPatchCompatible(op, p); err != nil {
		return nil, err
	}
	if err := m.checkCallbacks(op, p); err != nil {
		return nil, err
	}
	return p, nil
}

// disableTarget finds the patch a disable acts on and checks that it may
// be disabled: registered, enabled, the top enabled patch of the stack,
// its callbacks runnable. m.mu must be held.
func (m *Manager) disableTarget(op, name string) (*Patch, error) {
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
	return p, nil
}

// prePatch is klp_pre_patch_callback for each object: a non-zero return
// (or a call that fails) aborts the enable. It returns the objects whose
// pre_patch succeeded or that have none: if the enable does not complete,
// they get their post_unpatch (cancelTransition). m.mu must be held.
func (m *Manager) prePatch(ctx context.Context, op string, p *Patch) ([]*Object, error) {
	var done []*Object
	for _, ob := range p.Objects {
		if ob.Callbacks[cbPrePatch] == 0 {
			done = append(done, ob)
			continue
		}
		ret, err := m.runCallback(ctx, p, ob, cbPrePatch)
		if err != nil {
			return done, &Error{Op: op, Patch: p.Name, Errno: syscall.EIO, Detail: "a pre_patch callback did not run to completion", Err: err}
		}
		if ret != 0 {
			errno := syscall.EINVAL
			if ret < 0 && ret >= -maxErrno {
				errno = syscall.Errno(-ret)
			}
			return done, errorf(op, p.Name, errno, "pre_patch callback of object %s returned %d", ob.Name, ret)
		}
		done = append(done, ob)
	}
	return done, nil
}

// runTransition carries a transition from init to a switch: it checks
// that no vCPU and no task is inside a function whose meaning changes
// and switches the sites of pl in one pause. When only running vCPUs
// block, they alone run on out of the changing code inside the same
// pause and the check is repeated (progress). When a sleeping task
// blocks, or progress ran out of budget, the guest resumes, transition=1
// is mirrored into sysfs, and the attempt is retried with backoff; at
// the deadline everything is rolled back and the error is EBUSY naming
// what blocked the most attempts. The deadline is Options.Deadline, cut
// short by ctx's (transitionDeadline). The returned transition's switch
// is committed; the caller completes it (commitOrUndo,
// completeTransition). m.mu must be held.
func (m *Manager) runTransition(ctx context.Context, op string, target bool, p *Patch, pl *stackPlan, o Options) (*transition, error) {
	m.mustHold()
	t, err := m.initTransition(ctx, op, target, p, pl, o)
	if err != nil {
		return nil, err
	}
	m.cur.Store(t)
	defer m.cur.Store(nil)
	m.setBusy(p.Name, "transition")
	for {
		blk, err := m.tryCompleteTransition(t)
		if err == nil && blk != nil {
			err = m.waitTransition(t, blk)
		}
		if err != nil {
			return nil, m.reverseTransition(t, err)
		}
		if blk == nil {
			if t.started {
				t.p.Transition = false // completeTransition's sysfs write shows it
			}
			return t, nil
		}
	}
}

// initTransition is klp_init_transition: all that can be done before the
// guest is stopped. The site updates are prepared, the fresh trampolines
// are written while the guest runs (nothing reaches them before the sites
// are poked: a shorter pause), and the changing spans are indexed for the
// check. m.mu must be held.
func (m *Manager) initTransition(ctx context.Context, op string, target bool, p *Patch, pl *stackPlan, o Options) (*transition, error) {
	busySince := time.Now()
	x, err := m.tracer.Prepare(pl.updates)
	if err != nil {
		errno := syscall.EINVAL
		if errors.Is(err, ftrace.ErrNoMem) {
			errno = syscall.ENOMEM
		}
		return nil, &Error{Op: op, Patch: p.Name, Errno: errno, Err: err}
	}
	if err := x.Stage(); err != nil {
		x.Abort()
		return nil, &Error{Op: op, Patch: p.Name, Errno: syscall.EIO, Detail: "write trampolines", Err: err}
	}
	t := &transition{op: op, target: target, p: p, pl: pl, o: o, x: x, idx: newSpanIndex(pl.spans),
		res: &Result{Op: op, Patch: p.Name, Funcs: len(pl.updates)}, deadline: m.transitionDeadline(ctx, p, o),
		backoff: backoffMin, tally: newBlockerTally(), busySince: busySince}
	t.end = time.Now().Add(t.deadline)
	return t, nil
}

// transitionDeadline is how long a transition of p may retry: the
// Options' deadline (default DefaultDeadline), but, when ctx has a
// deadline (a guest's sysfs write: SysfsBudget), no later than that less
// a reserve for the callbacks that follow the transition (post_patch or
// post_unpatch, when p has them): CallbackTimeout, or half of what is
// left if that is less. Never negative: with nothing left, one attempt
// is made.
func (m *Manager) transitionDeadline(ctx context.Context, p *Patch, o Options) time.Duration {
	d := o.Deadline
	if d <= 0 {
		d = DefaultDeadline
	}
	end, ok := ctx.Deadline()
	if !ok {
		return d
	}
	left := time.Until(end)
	if m.cb != nil && p.hasPostCallbacks() {
		left -= min(m.cbTO, left/2)
	}
	return max(min(d, left), 0)
}

// startTransition is klp_start_transition: the transition becomes visible
// as transition=1 in the patch's sysfs directory. It runs only once an
// attempt was blocked (a switch at the first attempt is never seen in
// transition). The mirror's write error is not reported here: it only
// shows transition=0 for a while, and the write that ends the transition
// (completeTransition's or reverseTransition's) reports a mirror that
// still fails. m.mu must be held.
func (m *Manager) startTransition(t *transition) {
	t.started = true
	t.p.Transition, t.p.target = true, t.target
	_ = m.writeSysfs()
}

// tryCompleteTransition is klp_try_complete_transition: one attempt. It
// stops the guest, checks it (unless forced), and switches when nothing
// blocks; the guest runs again when it returns. It returns what blocked
// the attempt (nil: switched), or an error that ends the transition. A
// guest that could not be stopped blocks like anything else: the
// attempt is retried (the Machine resumed the vCPUs that did stop).
// m.mu must be held.
func (m *Manager) tryCompleteTransition(t *transition) (*blocker, error) {
	t.res.Attempts++
	t.attempts.Store(int32(t.res.Attempts))
	force := t.o.Force || t.forceReq.Load()
	// No GC cycle inside the pause window (gchold.go): the hold waits
	// for one in progress before the pause is asked for, and ends once
	// the guest runs again (every return below follows a Resume, or a
	// Pause that failed).
	defer holdGC()()
	napBeforePause(t)
	t0 := time.Now()
	if err := m.g.Pause(); err != nil {
		return &blocker{who: "the guest", what: "could not be stopped: " + err.Error()}, nil
	}
	tp := time.Now()
	if !force {
		if blk := m.checkPaused(t); blk != nil {
			if err := m.g.Resume(); err != nil {
				return nil, &Error{Op: t.op, Patch: t.p.Name, Errno: syscall.EIO, Detail: "resume", Err: err}
			}
			return blk, nil
		}
	}
	return nil, m.switchPaused(t, force, t0, tp)
}

// A pause asked for right after the host computed for a long time (the
// preparation of a 1024-function switch: Prepare, Stage, the span index,
// 1-2 ms) took longer to stop the guest than one asked for after a sleep,
// as the bare Pause+Resume is: measured on emu (2-core host, 1024
// functions, medians of 80 cycles) the window's stop phase was 33-83 us
// at 1 vCPU against a bare Pause of 20-30 us, and a bare Pause preceded by
// 1.5 ms of host work took 33-67 us; 20 us of sleep before it brought it
// back to 17-29 us. What the sleep lets happen first is the Go runtime's
// and the host's: timers that came due meanwhile on this goroutine's P
// (emu's APIC ticks are Go timers) and the OS scheduler's view of a
// thread that has been running for milliseconds. So an attempt whose
// goroutine has not slept for napAfter sleeps napFor before the pause.
// The sleep is longer than asked: Go's timers on this host wake a sleeping
// goroutine after ~1.1 ms median when nothing else runs (200 sleeps of
// 20 us), less when the vCPU goroutines keep the scheduler busy; measured
// at 1024 functions on emu (3 interleaved runs against runtime.Gosched()
// in its place) the enable took ~0.3 ms longer at the median (1.55-2.0 ms
// against 1.25-1.6 ms) and the window/bare went 1.75-2.12 -> 1.44-1.68.
// It trades host-side latency for a shorter stop of the guest, which is
// what the guest feels. Measured
// with and without it, alternating (emu, 1024 functions, 5-6 runs each):
// the stop phase 25 -> 17 us at 1 vCPU, 54-73 -> 38-54 us at 2, neutral at
// 4 (where the stop is the vCPU threads waiting for a host core).
const (
	napAfter = 200 * time.Microsecond
	napFor   = 20 * time.Microsecond
)

// napBeforePause sleeps napFor before a pause when the transition's
// goroutine has been busy for napAfter or longer (see napAfter).
func napBeforePause(t *transition) {
	if time.Since(t.busySince) >= napAfter {
		time.Sleep(napFor)
		t.busySince = time.Now()
	}
}

// checkPaused is one attempt's consistency check of the paused guest,
// with the progress guarantee: when only running vCPUs block, they are
// let out of the changing code and the guest is checked again. It
// returns the first blocker left (nil: the switch is safe). m.mu must be
// held.
func (m *Manager) checkPaused(t *transition) *blocker {
	v := m.check(t.idx, t.o.Conservative)
	if v.first != nil && !v.sleeping && !t.o.NoProgress {
		v = m.progress(t.idx, t.o.Conservative, v, t.res)
	}
	return v.first
}

// switchPaused pokes every changing site while the guest is paused (the
// switch itself) and resumes the guest, recording the pause window's
// parts from t0 (before the Pause) and tp (after it). A failed poke is an
// error: nothing was switched, and a Resume that failed after it is
// joined to it. After a poke that succeeded the switch stands, because
// the state is consistent: a Resume that fails then does not fail the
// operation, it is reported in Result.ResumeErr. m.mu must be held.
func (m *Manager) switchPaused(t *transition, force bool, t0, tp time.Time) error {
	t1 := time.Now()
	err := t.x.Commit()
	m.sitesChanged = true
	t2 := time.Now()
	rerr := m.g.Resume()
	t3 := time.Now()
	t.res.PauseWindow = t3.Sub(t0)
	t.res.Stop, t.res.Check, t.res.Poke, t.res.Resume = tp.Sub(t0), t1.Sub(tp), t2.Sub(t1), t3.Sub(t2)
	if err != nil {
		errno := syscall.EIO
		if errors.Is(err, ftrace.ErrMismatch) {
			errno = syscall.EINVAL
		}
		return &Error{Op: t.op, Patch: t.p.Name, Errno: errno, Detail: "text poke",
			Err: alsoFailed(err, "resuming the guest", rerr)}
	}
	t.res.ResumeErr = errString(rerr)
	t.res.Forced = force
	return nil
}

// waitTransition is the wait between attempts (Linux retries from
// klp_transition_work_fn): it records what blocked, shows the transition
// in sysfs the first time (startTransition) and sleeps the backoff; when
// the deadline would pass first it gives up with EBUSY naming what
// blocked the most attempts. m.mu must be held.
func (m *Manager) waitTransition(t *transition, blk *blocker) error {
	t.tally.add(blk)
	if !t.started {
		m.startTransition(t)
	}
	if time.Now().Add(t.backoff).After(t.end) {
		return errorf(t.op, t.p.Name, syscall.EBUSY, "transition not complete after %v (%d attempts), rolled back: %s",
			t.deadline, t.res.Attempts, t.tally.summary(t.res.Attempts))
	}
	time.Sleep(t.backoff)
	t.busySince = time.Now()
	t.backoff = min(t.backoff*2, backoffMax)
	return nil
}

// reverseTransition is klp_reverse_transition as the kpatch tool uses it
// when a transition times out: the transition goes back to where it
// started. Nothing was switched (the switch is one commit), so that is
// dropping the prepared switch and clearing transition=1. It returns
// cause, the reason for reversing, with a failed sysfs write added
// (alsoFailed). The callbacks that balance the ones already run are the
// caller's (cancelTransition for an enable, post_patch again for a
// disable), as after a switch that commitOrUndo undid. m.mu must be
// held.
func (m *Manager) reverseTransition(t *transition, cause error) error {
	t.x.Abort()
	if !t.started {
		return cause
	}
	t.p.Transition = false
	return alsoFailed(cause, "clearing transition in the guest sysfs", m.writeSysfs())
}

// cancelTransition is klp_cancel_transition: an enable that did not
// complete, because of err, is taken back. The objects whose pre_patch
// succeeded (pre) get their post_unpatch, as Linux keeps callback pairs
// balanced, then, with drop, the image leaves the patch area: drop is
// false when this enable did not load it, or when sites may still jump
// into it. It returns err with what else happened added: the
// post_unpatch calls that failed, and the image's quarantine. m.mu must
// be held.
func (m *Manager) cancelTransition(ctx context.Context, err error, p *Patch, pre []*Object, drop bool) error {
	var errs []error
	for _, ob := range pre {
		if _, cerr := m.runCallback(ctx, p, ob, cbPostUnpatch); cerr != nil {
			errs = append(errs, cerr)
		}
	}
	err = alsoFailed(err, "post_unpatch of the cancelled enable", joinErrors(errs...))
	m.endPatchList() // before p's image, which it lists, goes
	if drop {
		err = withNote(err, m.dropImage(p))
	}
	return err
}

// forceTransition is klp_force_transition, asked for by a guest's write
// of 1 to <patch>/force: the next attempt of the transition in progress
// skips the consistency check. As in Linux's force_store, only the force
// file of the patch in transition may be written: any other patch's is
// EINVAL. It runs without m.mu (the transition in progress holds it, and
// polls its forceReq at each attempt), so it touches only the atomics.
func (m *Manager) forceTransition(op, name string) error {
	t := m.cur.Load()
	if t == nil {
		return errorf(op, name, syscall.EINVAL, "no transition in progress")
	}
	if t.p.Name != name {
		return errorf(op, name, syscall.EINVAL, "the patch in transition is %s, not this one", t.p.Name)
	}
	t.forceReq.Store(true)
	return nil
}

// completeTransition is klp_complete_transition after a switch that
// commitOrUndo committed: the post_patch (enable) or post_unpatch
// (disable) callbacks run, the transition leaves klp_patch_list, then
// the images of patches an atomic replace removed leave the patch area
// (Linux frees them after klp_complete_transition: a post_patch may
// still read their states, klp_get_prev_state), and the result is
// recorded. The switch stands whatever happens here: a callback that
// could not run (or earlier, cbErr: a disable's pre_unpatch) is recorded
// in the result and returned as an ErrSwitched error, never dropped.
// m.mu must be held.
func (m *Manager) completeTransition(ctx context.Context, t *transition, start time.Time, cbErr error) error {
	which := cbPostUnpatch
	if t.target {
		which = cbPostPatch
	}
	cbErr = joinErrors(cbErr, m.runCallbacks(ctx, t.p, which))
	m.endPatchList()
	for _, q := range t.pl.replaced {
		m.dropImage(q)
	}
	t.res.Total = time.Since(start)
	t.res.CallbackErr = errString(cbErr)
	m.last = t.res
	if cbErr == nil {
		return nil
	}
	state := "disabled"
	if t.target {
		state = "enabled"
	}
	return &Error{Op: t.op, Patch: t.p.Name, Errno: ErrSwitched, Err: cbErr,
		Detail: "switched, the patch is " + state + "; but a callback did not run to completion"}
}

// commitOrUndo is the one step that makes a switch final, for enable and
// disable alike: the bookkeeping is committed (commitSwitch) and mirrored
// into the guest's sysfs, and the switch's transaction is finished. When
// the mirror cannot be written, nothing may stay half-applied: the
// bookkeeping is put back, the switch undone in one pause and the mirror
// written again. It returns nil when committed, else the EIO error and
// whether the undo succeeded (false: the guest's sites may still point
// at the new code, which must then not be freed). m.mu must be held.
func (m *Manager) commitOrUndo(t *transition) (undone bool, err error) {
	m.mustHold()
	saved := m.saveSwitch(t)
	m.commitSwitch(t)
	werr := m.writeSysfs()
	if werr == nil {
		t.x.Finish()
		return false, nil
	}
	m.restoreSwitch(t, saved)
	rerr := m.undo(t.x)
	e := &Error{Op: t.op, Patch: t.p.Name, Errno: syscall.EIO, Detail: "guest sysfs", Err: werr}
	if rerr != nil {
		e.Detail = "guest sysfs update failed, and so did the rollback: " + rerr.Error()
	}
	return rerr == nil, alsoFailed(e, "restoring the guest sysfs", m.writeSysfs())
}

// switchState is what commitSwitch changes, saved so that an undo puts
// every bit of it back: the func_stacks, the patch stack, and the
// Enabled and Forced flags of the patches the switch touches (touched's
// order).
type switchState struct {
	ops     map[uint64]*Ops
	patches []*Patch
	enabled []bool
	forced  []bool
}

// touched returns the patches whose flags a switch changes: the
// transition's patch, then those an atomic replace removes.
func (t *transition) touched() []*Patch {
	return append([]*Patch{t.p}, t.pl.replaced...)
}

// saveSwitch records the state commitSwitch changes. m.mu must be held.
func (m *Manager) saveSwitch(t *transition) switchState {
	s := switchState{ops: m.ops, patches: m.patches}
	for _, q := range t.touched() {
		s.enabled = append(s.enabled, q.Enabled)
		s.forced = append(s.forced, q.Forced)
	}
	return s
}

// restoreSwitch puts back what saveSwitch recorded. m.mu must be held.
func (m *Manager) restoreSwitch(t *transition, s switchState) {
	m.ops, m.patches = s.ops, s.patches
	for i, q := range t.touched() {
		q.Enabled, q.Forced = s.enabled[i], s.forced[i]
	}
}

// commitSwitch records a switch that happened: the func_stacks become
// the plan's, the patch is enabled or disabled, and the patches an atomic
// replace removed are disabled and leave the stack (Linux's
// klp_discard_replaced_patches). A forced transition marks every patch it
// touched as forced, for good (as in Linux): tasks may still run their
// old code. m.mu must be held.
func (m *Manager) commitSwitch(t *transition) {
	m.ops = t.pl.next
	t.p.Enabled = t.target
	t.p.Forced = t.p.Forced || t.res.Forced
	for _, q := range t.pl.replaced {
		q.Enabled = false
		q.Forced = q.Forced || t.res.Forced
		t.res.Replaced = append(t.res.Replaced, q.Name)
	}
	if len(t.pl.replaced) > 0 {
		m.patches = without(m.patches, t.pl.replaced)
	}
}

// without returns ps less the patches in drop, in a new slice (ps itself
// is left as it was: it may be a saved state).
func without(ps, drop []*Patch) []*Patch {
	var keep []*Patch
	for _, q := range ps {
		if !contains(drop, q) {
			keep = append(keep, q)
		}
	}
	return keep
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
// undo did not leave the guest as it found it. m.mu must be held.
func (m *Manager) undo(x *ftrace.Txn) error {
	if err := m.g.Pause(); err != nil {
		return err
	}
	err := x.Rollback()
	m.sitesChanged = true
	err = alsoFailed(err, "resuming the guest", m.g.Resume())
	x.Finish()
	return err
}

// progress lets the vCPUs that block v run on alone, the rest of the guest
// still paused, until they leave the changing code, checking again after
// each stop; it ends when the switch is safe, a sleeping task blocks,
// the guest cannot do it (no Stepper) or the budget is spent. A RunUntil
// that fails ends it too, with the verdict of the last check: the
// attempt then resumes the guest and retries, as without a Stepper, and
// what blocked is what the attempt reports. m.mu must be held.
func (m *Manager) progress(idx *spanIndex, conservative bool, v *verdict, res *Result) *verdict {
	st, ok := m.g.(Stepper)
	if !ok {
		return v
	}
	t0 := time.Now()
	end := t0.Add(StepBudget)
	for v.first != nil && !v.sleeping && len(v.running) > 0 {
		left := time.Until(end)
		if left <= 0 {
			break
		}
		res.Steps++
		if _, err := st.RunUntil(v.running, RoundBudget(left, v.running)); err != nil {
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

// checkCallbacks refuses a patch with callbacks when nothing can run them.
// It reads only what New and register set for good: it needs no lock.
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

// runCallback calls one callback of p's object ob in the guest (0, nil
// if it has none), bounded by CallbackTimeout and ctx (a guest's sysfs
// write: what is left of SysfsBudget; once ctx has ended the callback is
// not called, and the error says so). The error names the callback and
// the object. A call that fails may have reached the guest and may run
// there still (a guest-call that timed out is queued in the guest): the
// patch is marked, and its image, which holds the callback, is never
// freed (dropImage). m.mu must be held (loadImage and dropImage set the
// addresses).
func (m *Manager) runCallback(ctx context.Context, p *Patch, ob *Object, which int) (int64, error) {
	addr := ob.Callbacks[which]
	if addr == 0 || m.cb == nil {
		return 0, nil
	}
	name := elfpatch.CallbackNames[which]
	if err := ctx.Err(); err != nil {
		// Not sent: the guest will not run it.
		return 0, fmt.Errorf("%s callback of object %s (%#x) not called: no time left (%w)", name, ob.Name, addr, err)
	}
	m.setBusy("", name)
	cctx, cancel := context.WithTimeout(ctx, m.cbTO)
	defer cancel()
	ret, err := m.cb(cctx, addr, ob.Addr)
	if err != nil {
		p.cbPending = true
		return 0, fmt.Errorf("%s callback of object %s (%#x): %w", name, ob.Name, addr, err)
	}
	return ret, nil
}

// runCallbacks runs one of the void callbacks (all but pre_patch) of
// every object of p. Their return values are not looked at, as in
// Linux. A call that fails does not stop the others, nor the operation
// (the callbacks are the patch author's, the switch is the operation):
// the errors are returned, joined, for the operation to report. m.mu
// must be held.
func (m *Manager) runCallbacks(ctx context.Context, p *Patch, which int) error {
	var errs []error
	for _, ob := range p.Objects {
		if _, err := m.runCallback(ctx, p, ob, which); err != nil {
			errs = append(errs, err)
		}
	}
	return joinErrors(errs...)
}

// loadImage allocates the patch's place in the patch area, lays it out
// there (relocations against the kernel) and writes it. The guest runs
// meanwhile: nothing executes the patch area until a site jumps there.
// Reports whether it loaded (false: already there from an earlier enable).
// m.mu must be held.
func (m *Manager) loadImage(op string, p *Patch) (bool, error) {
	m.mustHold()
	if p.ImageAddr != 0 {
		return false, nil
	}
	addr, im, err := m.layoutImage(op, p)
	if err != nil {
		return false, err
	}
	saved := make([]byte, len(im.Bytes))
	if err := m.g.ReadVirt(addr, saved); err != nil {
		return false, m.freeSpace(addr, &Error{Op: op, Patch: p.Name, Errno: syscall.EIO, Detail: "read the patch area", Err: err})
	}
	if err := m.g.WriteVirt(addr, im.Bytes); err != nil {
		return false, m.freeSpace(addr, &Error{Op: op, Patch: p.Name, Errno: syscall.EIO, Detail: "write the patch image", Err: err})
	}
	p.image, p.ImageAddr, p.saved = im, addr, saved
	if err := bindImage(op, p); err != nil {
		m.dropImage(p)
		return false, err
	}
	return true, nil
}

// layoutImage allocates the patch's place in the patch area and lays the
// patch out there. m.mu must be held.
func (m *Manager) layoutImage(op string, p *Patch) (uint64, *elfpatch.Image, error) {
	align, err := p.parsed.Align()
	if err != nil {
		return 0, nil, &Error{Op: op, Patch: p.Name, Errno: syscall.EINVAL, Err: err}
	}
	addr, err := m.tracer.Alloc().Alloc(max(p.ImageSize, 1), align)
	if err != nil {
		return 0, nil, &Error{Op: op, Patch: p.Name, Errno: syscall.ENOMEM, Err: err}
	}
	if p.dry != nil && p.dry.Base == addr {
		return addr, p.dry, nil // register's layout, at this very address
	}
	im, err := p.parsed.Layout(addr, m.kernel)
	if err != nil {
		return 0, nil, m.freeSpace(addr, &Error{Op: op, Patch: p.Name, Errno: syscall.EINVAL, Err: err})
	}
	return addr, im, nil
}

// freeSpace gives back the patch-area space at addr after err, which it
// returns (with the Free's error, should there be one). m.mu must be
// held.
func (m *Manager) freeSpace(addr uint64, err *Error) error {
	return alsoFailed(err, "freeing its patch-area space", m.tracer.Alloc().Free(addr))
}

// bindImage gives p's objects and functions their addresses in p's
// image (callbacks, struct klp_object, new functions).
func bindImage(op string, p *Patch) error {
	for i, io := range p.image.Objects {
		if i >= len(p.Objects) {
			break
		}
		ob := p.Objects[i]
		p.shown = nil
		ob.Addr, ob.Callbacks = io.Addr, io.Callbacks
		for j, f := range ob.Funcs {
			f.NewAddr = p.ImageAddr + f.newOff
			if j < len(io.Funcs) && io.Funcs[j].NewAddr != f.NewAddr {
				// Layout is deterministic in the base; anything else is a
				// bug worth refusing over.
				return errorf(op, p.Name, syscall.EINVAL, "%s: new function moved between layouts", f.OldName)
			}
		}
	}
	return nil
}

// dropImage takes the patch's image out of the patch area: its bytes get
// what was there before (so a failed or undone operation leaves the patch
// area as it found it) and its space is freed. Two kinds of image stay
// where they are, allocated, for good, because the guest may still run
// their code: a patch that went through a forced transition (a task
// may still be in its functions; Linux likewise never lets the module
// of a forced patch be removed): retired; and one into which a callback
// call failed (cbPending: a guest-call that timed out is queued in the
// guest and may run later): quarantined. It returns the quarantined
// image's description ("" if none) for the operation's error.
// Best effort otherwise, and the one place whose errors are not
// reported: it runs after the operation's outcome is decided (an
// unregister that is done, a failure being cleaned up). A restore that
// fails leaves the image's bytes in patch area that nothing jumps to; a
// Free that fails would be an allocator bug, seen by the leak checks
// (Status.PatchAreaInUse).
// m.mu must be held.
func (m *Manager) dropImage(p *Patch) (quarantined string) {
	m.mustHold()
	if p.ImageAddr == 0 {
		return ""
	}
	switch {
	case p.Forced:
		m.retired += p.ImageSize
	case p.cbPending:
		m.quarantined += p.ImageSize
		quarantined = fmt.Sprintf("its image (%d bytes at %#x) is quarantined, not freed: the guest may still run the callback "+
			"that did not return (patch_area_quarantined)", p.ImageSize, p.ImageAddr)
	default:
		_ = m.g.WriteVirt(p.ImageAddr, p.saved)
		_ = m.tracer.Alloc().Free(p.ImageAddr)
	}
	p.image, p.ImageAddr, p.saved, p.cbPending, p.shown = nil, 0, nil, false, nil
	for _, ob := range p.Objects {
		ob.Addr, ob.Callbacks = 0, [4]uint64{}
		for _, f := range ob.Funcs {
			f.NewAddr = 0
		}
	}
	return quarantined
}
