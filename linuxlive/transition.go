package linuxlive

import (
	"runtime/debug"
	"time"

	"klp-kvm/linuxkernel"
	"klp-kvm/livepatch"
)

// siteSwitch is one fentry site's rewrite: the bytes it must hold, the
// bytes it gets.
type siteSwitch struct {
	f        *fn
	from, to [5]byte
}

// Backoff between blocked attempts, as livepatch's: short at first (a
// task leaves a function soon), growing.
const (
	firstBackoff = time.Millisecond
	maxBackoff   = 20 * time.Millisecond
)

// transition switches every site of sw in one pause once no task's and
// no vCPU's stack holds an address in check (Linux's klp_check_stack:
// the functions whose meaning changes), retrying until the deadline.
// When only running vCPUs block, they run on out of the changing code
// inside the same pause first (progress.go), unless o.NoProgress.
// Every site is verified before any is written; a write that fails puts
// back the sites written before it. Nothing is left half-switched.
func (m *Manager) transition(op string, p *patch, sw []siteSwitch, check []linuxkernel.AddrRange, o livepatch.Options) (*livepatch.Result, error) {
	deadline := o.Deadline
	if deadline <= 0 {
		deadline = DefaultDeadline
	}
	t0 := time.Now()
	res := &livepatch.Result{Op: op, Patch: p.name, Funcs: len(sw), Forced: o.Force}
	backoff := firstBackoff
	blockedBy := map[string]int{}
	m.forceReq.Store(false)
	m.inTransition.Store(&p.name)
	defer m.inTransition.Store(nil)
	for {
		if m.forceReq.Swap(false) {
			// A guest wrote 1 to <patch>/force while this transition
			// retried: the attempts from now on switch unchecked.
			o.Force, res.Forced = true, true
		}
		res.Attempts++
		why, done, err := m.attempt(p, sw, check, o, res)
		if err != nil {
			return nil, withPatch(err, p.name)
		}
		if done {
			res.Total = time.Since(t0)
			return res, nil
		}
		blockedBy[why]++
		if m.cfg.Logf != nil {
			m.cfg.Logf("linuxlive: %s %s: attempt %d blocked: %s", op, p.name, res.Attempts, why)
		}
		if time.Since(t0)+backoff > deadline {
			worst, n := "", 0
			for w, c := range blockedBy {
				if c > n || (c == n && w < worst) {
					worst, n = w, c
				}
			}
			return nil, errf(op, p.name, ErrBusy, "not switched after %d attempts in %v: %s (%d of them)",
				res.Attempts, time.Since(t0).Round(time.Millisecond), worst, n)
		}
		time.Sleep(backoff)
		backoff = min(2*backoff, maxBackoff)
	}
}

// attempt is one try: pause, check, verify, write, resume. It returns why
// it was blocked (done false), or done.
func (m *Manager) attempt(p *patch, sw []siteSwitch, check []linuxkernel.AddrRange, o livepatch.Options, res *livepatch.Result) (why string, done bool, err error) {
	// No Go GC cycle while the guest is stopped (the window stays the
	// guest's, not the collector's).
	old := debug.SetGCPercent(-1)
	defer debug.SetGCPercent(old)
	t0 := time.Now()
	if err := m.cfg.Machine.Pause(); err != nil {
		return "", false, wrap("pause", "", ErrGuest, err, "")
	}
	tStop := time.Now()
	resumed := false
	resume := func() error {
		if resumed {
			return nil
		}
		resumed = true
		return m.cfg.Machine.Resume()
	}
	defer func() {
		if rerr := resume(); rerr != nil && err == nil {
			err = wrap("resume", "", ErrGuest, rerr, "")
		}
	}()
	if !o.Force {
		v, err := m.blocked(check)
		if err == nil && v.why != "" && !v.sleeping && !o.NoProgress {
			v, err = m.progress(check, v, res)
		}
		if err != nil || v.why != "" {
			return v.why, false, err
		}
	}
	tCheck := time.Now()
	// Verify every site first: a site not as expected (the guest's
	// ftrace or a kprobe took it meanwhile) fails the whole switch with
	// nothing written.
	for _, s := range sw {
		var cur [5]byte
		if err := m.cfg.Machine.ReadPhys(s.f.sitePA, cur[:]); err != nil {
			return "", false, wrap("verify", "", ErrGuest, err, "%s's fentry site", s.f.name)
		}
		if cur != s.from {
			return "", false, errf("verify", "", ErrSiteInUse, "%s's fentry site %#x holds % x, expected % x: the guest changed it (ftrace, kprobe, BPF); nothing written",
				s.f.name, s.f.site, cur[:], s.from[:])
		}
	}
	// The guest ftrace's records of the sites taken or given back
	// (ftrace.go): after the verification, before the first site.
	flips, why, err := m.ftraceFlips(sw)
	if err != nil || why != "" {
		return why, false, err
	}
	if err := m.writeFlips(flips, true); err != nil {
		return "", false, err
	}
	for i, s := range sw {
		if err := m.cfg.Machine.WritePhys(s.f.sitePA, s.to[:]); err != nil {
			for _, b := range sw[:i] {
				_ = m.cfg.Machine.WritePhys(b.f.sitePA, b.from[:])
			}
			_ = m.writeFlips(flips, false)
			return "", false, wrap("poke", "", ErrGuest, err, "%s's fentry site %#x (the sites written before it were restored)", s.f.name, s.f.site)
		}
	}
	m.heldFlips(flips)
	tPoke := time.Now()
	if err := resume(); err != nil {
		res.ResumeErr = err.Error()
	}
	tEnd := time.Now()
	res.PauseWindow, res.Stop, res.Check = tEnd.Sub(t0), tStop.Sub(t0), tCheck.Sub(tStop)
	res.Poke, res.Resume = tPoke.Sub(tCheck), tEnd.Sub(tPoke)
	return "", true, nil
}

// blocked asks the kernel view whether a stack holds an address in
// check; the patches' own code counts as kernel text for the unwind, with
// its ORC tables.
func (m *Manager) blocked(check []linuxkernel.AddrRange) (verdict, error) {
	var code []linuxkernel.ModuleORC
	for _, q := range m.patches {
		if q.orc.Text.End > q.orc.Text.Start {
			code = append(code, q.orc)
		}
	}
	return m.kv.Blocked(check, code)
}
