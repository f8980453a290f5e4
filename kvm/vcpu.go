package kvm

import (
	"fmt"
	"runtime"
	"sync/atomic"

	"klp-kvm/kvm/engine"
)

// VCPUState is the lifecycle state of a vCPU thread (Firecracker style).
type VCPUState int32

const (
	StateCreated VCPUState = iota // not started
	StateRunning                  // in or around engine Run
	StatePaused                   // parked at an instruction boundary by Pause
	StateHalted                   // halted for good (HLT with interrupts off); still answers events
	StateExited                   // thread gone
)

func (s VCPUState) String() string {
	return [...]string{"created", "running", "paused", "halted", "exited"}[s]
}

type eventKind int

const (
	evPause eventKind = iota
	evResume
	evFinish
	evDo
	evRun // paused vCPUs only: run until a stop address (RunUntil)
)

// event is a typed request to a vCPU thread; the thread answers on reply.
type event struct {
	kind  eventKind
	fn    func(engine.VCPU) error // evDo: runs on the vCPU's own thread
	run   *runReq                 // evRun
	reply chan<- error
}

// vcpu owns one engine VCPU. Only its own goroutine calls cpu.Run and the
// register accessors (the vCPU thread owns its fd); others talk to it
// through events and may call cpu.Kick.
type vcpu struct {
	id     int
	cpu    engine.VCPU   // immutable after creation
	m      *Machine      // immutable
	state  atomic.Int32  // VCPUState; written by the vCPU goroutine
	events chan event    // requests from Pause/Resume/Do/finish
	done   chan struct{} // closed when the goroutine returns
	// regs/regsErr are the registers captured by the vCPU thread when it
	// acknowledged the current pause; written by the vCPU goroutine before
	// its reply, read by the pauser after receiving it (the channel orders
	// them).
	regs    engine.Regs
	regsErr error
}

// capture records the registers at the pause point, on the vCPU's own
// thread, so that a paused machine's registers cost no further round trip.
func (v *vcpu) capture() { v.regs, v.regsErr = v.cpu.Regs() }

type stateFn func() stateFn

func (v *vcpu) setState(s VCPUState) { v.state.Store(int32(s)) }

// State returns the vCPU's current lifecycle state.
func (v *vcpu) State() VCPUState { return VCPUState(v.state.Load()) }

// loop is the vCPU thread: it runs state functions until one returns nil.
func (v *vcpu) loop() {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	defer close(v.done)
	defer v.setState(StateExited)
	for st := v.running; st != nil; {
		st = st()
	}
}

// running calls Run until an event or an exit asks for another state.
func (v *vcpu) running() stateFn {
	v.setState(StateRunning)
	for {
		select {
		case ev := <-v.events:
			if next, leave := v.eventWhileRunning(ev); leave {
				return next
			}
			continue
		default:
		}
		ex, err := v.cpu.Run()
		if err != nil {
			v.m.fail(&Error{Op: "run", Kind: ErrGuest, Detail: "vCPU " + itoa(v.id), Err: err})
			return v.stopped
		}
		act, code, err := handleExit(&v.m.bus, ex, v.m.kernel.Symbolize)
		switch act {
		case actPowerOff:
			v.m.powerOff(code)
			return v.stopped
		case actReset:
			v.m.reset(err)
			return v.stopped
		case actHalt:
			v.m.halted(v.id)
			return v.halted
		case actFail:
			v.m.fail(fmt.Errorf("vCPU %d: %w", v.id, err))
			return v.stopped
		}
		// actContinue, or actPause: the select above sees the event (a
		// kick without an event is stale and harmless).
	}
}

// eventWhileRunning answers an event received while running; leave says
// whether to leave the running state for next (nil: the thread ends).
func (v *vcpu) eventWhileRunning(ev event) (next stateFn, leave bool) {
	switch ev.kind {
	case evPause:
		v.setState(StatePaused)
		v.capture()
		ev.reply <- nil
		return v.paused, true
	case evFinish:
		ev.reply <- nil
		return nil, true
	case evDo, evRun:
		ev.reply <- errorf("vcpu", ErrNotPaused, "vCPU %d is running", v.id)
	default: // evResume while running: nothing to do
		ev.reply <- nil
	}
	return nil, false
}

// parked serves events while the vCPU is not running guest code; resume
// is the state to return to on evResume.
func (v *vcpu) parked(self VCPUState, resume stateFn) stateFn {
	v.setState(self)
	for ev := range v.events {
		switch ev.kind {
		case evResume:
			ev.reply <- nil
			return resume
		case evFinish:
			ev.reply <- nil
			return nil
		case evDo:
			ev.reply <- ev.fn(v.cpu)
		case evRun:
			if self != StatePaused {
				ev.reply <- errorf("vcpu", ErrStopped, "vCPU %d is %s", v.id, self)
				continue
			}
			ev.reply <- v.runUntil(ev.run)
		default: // evPause: already parked
			v.capture()
			ev.reply <- nil
		}
	}
	return nil
}

func (v *vcpu) paused() stateFn { return v.parked(StatePaused, v.running) }

// halted: nothing can wake the vCPU, but the host may still pause the
// machine and read its registers.
func (v *vcpu) halted() stateFn { return v.parked(StateHalted, v.halted) }

// stopped: the machine is going down; answer events until finished.
func (v *vcpu) stopped() stateFn { return v.parked(StateHalted, v.stopped) }

func itoa(i int) string {
	if i < 0 {
		return "-" + itoa(-i)
	}
	if i < 10 {
		return string(rune('0' + i))
	}
	return itoa(i/10) + string(rune('0'+i%10))
}
