package kvm

import (
	"fmt"
	"sync/atomic"
	"time"

	"klp-kvm/kvm/engine"
)

// runReq is an evRun request: run until one of addrs or until expired.
type runReq struct {
	addrs   []uint64
	expired atomic.Bool // set (then the vCPU kicked) when the budget is spent
	reached bool        // it stopped at one of addrs (written by the vCPU thread before its reply)
}

// RunUntil lets only the vCPUs in stops run, each until it reaches one of
// its addresses (an execution breakpoint where the engine has them) or
// until budget has passed, while every other vCPU stays stopped. An empty
// address list runs that vCPU for the budget alone. The machine must be
// paused and stays paused: when RunUntil returns, every vCPU is stopped
// again and PausedRegs has their new registers.
//
// It is the livepatch transition's progress guarantee: a vCPU running
// inside a function whose meaning changes is let out of it (to the return
// address of the changing frame) inside the same pause, instead of the
// whole guest being resumed and the switch retried from scratch.
//
// It reports how many of the vCPUs reached one of their addresses; where
// each stopped is in PausedRegs.
func (m *Machine) RunUntil(stops map[int][]uint64, budget time.Duration) (reached int, err error) {
	m.pauseMu.Lock()
	defer m.pauseMu.Unlock()
	if m.depth == 0 {
		return 0, errorf("run until", ErrNotPaused, "pause the machine first")
	}
	reqs := make(map[int]*runReq, len(stops))
	replies := make(map[int]chan error, len(stops))
	for id, addrs := range stops {
		if id < 0 || id >= len(m.vcpus) {
			return 0, errorf("run until", ErrConfig, "no vCPU %d", id)
		}
		if len(addrs) > engine.MaxBreakpoints {
			return 0, errorf("run until", ErrConfig, "vCPU %d: %d stop addresses, at most %d", id, len(addrs), engine.MaxBreakpoints)
		}
	}
	for id, addrs := range stops {
		v := m.vcpus[id]
		r := &runReq{addrs: addrs}
		ch := make(chan error, 1)
		select {
		case v.events <- event{kind: evRun, run: r, reply: ch}:
		case <-v.done:
			ch <- nil
		}
		reqs[id], replies[id] = r, ch
	}
	expire := time.AfterFunc(budget, func() {
		for id, r := range reqs {
			r.expired.Store(true)
			m.vcpus[id].cpu.Kick()
		}
	})
	var first error
	for id, ch := range replies {
		if err := <-ch; err != nil && first == nil {
			first = fmt.Errorf("vCPU %d: %w", id, err)
		}
	}
	// A kick that fires after every vCPU answered stays pending until the
	// next Run, which then returns ExitIntr at once: harmless.
	expire.Stop()
	for _, r := range reqs {
		if r.reached {
			reached++
		}
	}
	if first != nil {
		return reached, &Error{Op: "run until", Kind: ErrGuest, Err: first}
	}
	return reached, nil
}

// runUntil serves an evRun on the vCPU's own thread: it arms the
// breakpoints (when the engine has them), runs and serves exits until a
// breakpoint, a halt or the budget's kick, disarms and captures the
// registers. The machine going down meanwhile is recorded as usual.
func (v *vcpu) runUntil(r *runReq) error {
	bp, _ := v.cpu.(engine.Breakpointer)
	armed := false
	if bp != nil && len(r.addrs) > 0 {
		if err := bp.SetBreakpoints(r.addrs); err == nil {
			armed = true
		}
	}
	var err error
	for !r.expired.Load() {
		ex, rerr := v.cpu.Run()
		if rerr != nil {
			err = rerr
			break
		}
		if ex.Reason == engine.ExitDebug {
			r.reached = true
			break
		}
		act, code, herr := handleExit(&v.m.bus, ex, v.m.kernel.Symbolize)
		if act == actPowerOff {
			v.m.powerOff(code)
			break
		}
		if act == actReset {
			v.m.reset(herr)
			break
		}
		if act == actFail {
			v.m.fail(fmt.Errorf("vCPU %d: %w", v.id, herr))
			err = herr
			break
		}
		if act == actHalt {
			break // idle for good: it will not reach anything
		}
		// actContinue, or actPause (a kick: the budget, or a stale one
		// from before the pause, which the loop condition tells apart)
	}
	if armed {
		if derr := bp.SetBreakpoints(nil); derr != nil && err == nil {
			err = derr
		}
	}
	v.capture()
	return err
}
