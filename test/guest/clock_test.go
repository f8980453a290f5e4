package guest

import (
	"context"
	"testing"
	"time"

	"klp-kvm/kvm/agent"
)

// clockSample is one guest-info answer bracketed by host time: the guest
// read its clock somewhere in [before, after].
type clockSample struct {
	before, after time.Time
	info          agent.Info
}

func (g *guestVM) clockSample() clockSample {
	g.t.Helper()
	var s clockSample
	s.before = time.Now()
	in, err := g.agent.Info(context.Background())
	s.after = time.Now()
	if err != nil {
		g.t.Fatalf("guest-info: %v", err)
	}
	s.info = in
	return s
}

// TestGuestClock: the guest's clocks run at host speed. The guest's
// ktime (uptime, msleep, every deadline) comes from RDTSC scaled by the
// TSC rate the host tells it at boot; its tick from the x2APIC timer. A
// wrong rate (the kvm engine once told the guest 1 GHz on a 2.6 GHz
// host) makes the guest clock run fast or slow by that ratio.
//
// No timing target: every guest reading is bracketed by host time, so the
// host interval it can correspond to is known exactly, and the guest's
// must fall within it widened by tolClock. A 2x error is caught once the
// bracketing slack is small against the interval, which the loop waits
// for (up to ~10 s of host time if the machine is very loaded).
func TestGuestClock(t *testing.T) {
	const (
		tolClock = 0.10 // guest/host rate may differ by this much (real error: ppm)
		minSpan  = 2 * time.Second
		maxSpan  = 12 * time.Second
		hz       = 1000 // guestkernel HZ
	)
	g := boot(t, 2, "", true)
	a := g.clockSample()
	var b clockSample
	for {
		// time itself is under test: let some pass between samples
		// (the loop's condition decides when the span is enough)
		time.Sleep(minSpan / 4)
		b = g.clockSample()
		lo, hi := b.before.Sub(a.after), b.after.Sub(a.before)
		// Enough when the bracketing slack is under a tenth of the
		// interval: then a 2x error cannot hide in it.
		if lo >= minSpan && hi-lo < lo/10 || hi > maxSpan {
			break
		}
	}
	lo, hi := b.before.Sub(a.after), b.after.Sub(a.before)
	guest := time.Duration(b.info.UptimeMS-a.info.UptimeMS) * time.Millisecond
	t.Logf("guest uptime advanced %v over host %v..%v (ratio %.4f..%.4f)", guest, lo, hi,
		float64(guest)/float64(hi), float64(guest)/float64(lo))
	// uptime_ms truncates to whole milliseconds: allow one either side.
	if min := time.Duration(float64(lo)*(1-tolClock)) - time.Millisecond; guest < min {
		t.Errorf("guest clock slow: %v of guest time over at least %v of host time", guest, lo)
	}
	if max := time.Duration(float64(hi)*(1+tolClock)) + time.Millisecond; guest > max {
		t.Errorf("guest clock fast: %v of guest time over at most %v of host time", guest, hi)
	}
	// The x2APIC tick may lose periods (a late host timer merges them),
	// never gain any: only its upper bound is firm.
	ticks := b.info.Ticks - a.info.Ticks
	if max := uint64(hi.Seconds()*hz*(1+tolClock)) + 2; ticks > max {
		t.Errorf("timer tick fast: %d ticks over at most %v of host time (HZ %d)", ticks, hi, hz)
	}
	t.Logf("%d ticks (%.0f/s of host time)", ticks, float64(ticks)/hi.Seconds())

	// msleep against host time: never short.
	const ms = 1500
	start := time.Now()
	if r := g.exec("sleep 1500"); r.Status != 0 {
		t.Fatalf("sleep: %+v", r)
	}
	took := time.Since(start)
	t.Logf("guest sleep %d ms took %v of host time", ms, took)
	if took < time.Duration(float64(ms*time.Millisecond)*(1-tolClock)) {
		t.Errorf("guest sleep %d ms returned after %v of host time", ms, took)
	}
}
