package emu

import (
	"math/bits"
	"sync"
	"sync/atomic"
	"time"
)

const (
	apicBaseDefault uint64 = 0xfee00000 | apicBaseEN
	apicBaseBSP     uint64 = 1 << 8
	apicBaseEXTD    uint64 = 1 << 10
	apicBaseEN      uint64 = 1 << 11

	svrEnable = 1 << 8
	lvtMasked = 1 << 16

	// minTimerPeriod bounds the periodic LAPIC timer like KVM's
	// min_timer_period_us, so a tiny initial count cannot flood the host
	// with timer callbacks.
	minTimerPeriod = 100 * time.Microsecond
)

// lapic is a vCPU's x2APIC: IRR/ISR, TPR, the timer and IPIs. Other vCPUs
// (IPIs) and timer callbacks post interrupts concurrently, hence the mutex.
type lapic struct {
	c  *cpu
	mu sync.Mutex
	// pending is nonzero while irr has a bit set; read without the mutex
	// by the owning vCPU's fast checks.
	pending atomic.Uint32

	irr, isr [4]uint64
	tprV     uint32
	svr      uint32
	lvtTimer uint32
	lvt      [7]uint32 // 0x82f CMCI, 0x833..0x837 thermal, perf, LINT0, LINT1, error
	tdcr     uint32
	tmict    uint32
	esr      uint32
	icr      uint64

	timer   *time.Timer
	tStart  int64 // ns since the VM epoch at which the count started
	tPeriod int64 // ns for one full count (tmict * divisor)
	// nextAt is the armed expiry (ns since the epoch), 0 when disarmed.
	// Both the host timer and the vCPU's own polling (pollTimer) may
	// fire it; whoever takes the mutex first with a matching nextAt does.
	nextAt atomic.Int64
}

func (a *lapic) init(c *cpu) {
	a.c = c
	a.svr = 0xff
	a.lvtTimer = lvtMasked
	for i := range a.lvt {
		a.lvt[i] = lvtMasked
	}
}

func (a *lapic) now() int64 { return int64(time.Since(a.c.vm.epoch)) }

func (a *lapic) tpr() uint32 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.tprV
}

func (a *lapic) setTPR(v uint32) {
	a.mu.Lock()
	a.tprV = v & 0xff
	a.mu.Unlock()
	a.c.recheckIRQ()
}

func highest(v *[4]uint64) int {
	for i := 3; i >= 0; i-- {
		if v[i] != 0 {
			return i*64 + 63 - bits.LeadingZeros64(v[i])
		}
	}
	return -1
}

func (a *lapic) updatePending() {
	if a.irr != [4]uint64{} {
		a.pending.Store(1)
	} else {
		a.pending.Store(0)
	}
}

// ppr is the processor priority: the TPR or the in-service class.
func (a *lapic) ppr() uint32 {
	p := a.tprV
	if s := highest(&a.isr); s >= 0 && uint32(s)&0xf0 > p&0xf0 {
		p = uint32(s) & 0xf0
	}
	return p
}

// ack moves the highest requested interrupt whose priority class beats the
// PPR into service and returns its vector.
func (a *lapic) ack() (uint8, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	v := highest(&a.irr)
	if v < 0 || uint32(v)&0xf0 <= a.ppr()&0xf0 {
		return 0, false
	}
	a.irr[v/64] &^= 1 << (v % 64)
	a.isr[v/64] |= 1 << (v % 64)
	a.updatePending()
	return uint8(v), true
}

// post requests vector vec (from an IPI or the timer) and wakes the vCPU.
// Like KVM, a software-disabled APIC drops fixed interrupts.
func (a *lapic) post(vec uint8) {
	if vec < 16 {
		return
	}
	a.mu.Lock()
	if a.svr&svrEnable == 0 {
		a.mu.Unlock()
		return
	}
	a.irr[vec/64] |= 1 << (vec % 64)
	a.pending.Store(1)
	a.mu.Unlock()
	a.c.attn.Or(attnIRQ)
	a.c.wakeUp()
}

func (a *lapic) eoi() {
	a.mu.Lock()
	if s := highest(&a.isr); s >= 0 {
		a.isr[s/64] &^= 1 << (s % 64)
	}
	a.mu.Unlock()
	a.c.recheckIRQ()
}

func (a *lapic) divisor() int64 {
	idx := a.tdcr&3 | a.tdcr>>1&4
	return 1 << ((idx + 1) & 7)
}

// armTimer (re)starts the countdown from tmict; a.mu held.
func (a *lapic) armTimer() {
	a.disarm()
	if a.tmict == 0 {
		a.tPeriod = 0
		return
	}
	a.tStart = a.now()
	a.tPeriod = int64(a.tmict) * a.divisor() // 1 GHz bus: one tick per ns
	a.schedule(a.tStart + a.effectivePeriod())
}

func (a *lapic) periodic() bool { return a.lvtTimer>>17&3 == 1 }

func (a *lapic) effectivePeriod() int64 {
	if a.periodic() && a.tPeriod < int64(minTimerPeriod) {
		return int64(minTimerPeriod)
	}
	return a.tPeriod
}

// disarm cancels the pending expiry; a.mu held.
func (a *lapic) disarm() {
	a.nextAt.Store(0)
	if a.timer != nil {
		a.timer.Stop()
		a.timer = nil
	}
}

// schedule arms the expiry at absolute time at (ns since epoch); a.mu held.
func (a *lapic) schedule(at int64) {
	if a.timer != nil {
		a.timer.Stop()
	}
	a.nextAt.Store(at)
	a.timer = time.AfterFunc(time.Duration(at-a.now()), func() { a.fire(at) })
}

// pollTimer fires an expired timer from the vCPU's own loop. Go runs
// timers late when every P is busy (e.g. one spinning vCPU per host CPU);
// polling keeps the guest's tick on time in that case.
func (a *lapic) pollTimer() {
	if at := a.nextAt.Load(); at != 0 && a.now() >= at {
		a.fire(at)
	}
}

func (a *lapic) fire(at int64) {
	a.mu.Lock()
	if at != a.nextAt.Load() || a.c.closed.Load() {
		a.mu.Unlock()
		return
	}
	vec := uint8(a.lvtTimer)
	deliver := a.lvtTimer&lvtMasked == 0 && a.svr&svrEnable != 0
	if a.periodic() {
		p := a.effectivePeriod()
		next := at + p
		if now := a.now(); next <= now {
			next = now + p - (now-at)%p // skip ticks missed while the host was busy
		}
		a.schedule(next)
	} else {
		a.disarm()
	}
	a.mu.Unlock()
	if deliver {
		a.post(vec)
	}
}

func (a *lapic) currentCount() uint32 {
	if a.tmict == 0 || a.tPeriod == 0 {
		return 0
	}
	el := a.now() - a.tStart
	p := a.effectivePeriod()
	var left int64
	if a.periodic() {
		left = p - el%p
	} else if el < p {
		left = p - el
	}
	return uint32(min(left/a.divisor(), int64(a.tmict)))
}

func (a *lapic) stopTimer() {
	a.mu.Lock()
	a.disarm()
	a.mu.Unlock()
}

// x2APIC MSR numbers (0x800 + xAPIC offset/16).
const (
	x2ID      = 0x802
	x2Version = 0x803
	x2TPR     = 0x808
	x2PPR     = 0x80a
	x2EOI     = 0x80b
	x2LDR     = 0x80d
	x2SVR     = 0x80f
	x2ISR0    = 0x810
	x2TMR0    = 0x818
	x2IRR0    = 0x820
	x2ESR     = 0x828
	x2CMCI    = 0x82f
	x2ICR     = 0x830
	x2LVTT    = 0x832
	x2LVTErr  = 0x837
	x2TMICT   = 0x838
	x2TMCCT   = 0x839
	x2TDCR    = 0x83e
	x2SelfIPI = 0x83f
)

func (a *lapic) ldr() uint32 {
	id := uint32(a.c.id)
	return (id>>4)<<16 | 1<<(id&15)
}

func chunk(v *[4]uint64, i uint32) uint64 { return v[i/2] >> (32 * (i % 2)) & 0xffffffff }

// readMSR reads an x2APIC register; ok=false means #GP.
func (a *lapic) readMSR(idx uint32) (uint64, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case idx == x2ID:
		return uint64(a.c.id), true
	case idx == x2Version:
		return 0x50014, true // version 0x14, 6 LVT entries, like KVM
	case idx == x2TPR:
		return uint64(a.tprV), true
	case idx == x2PPR:
		return uint64(a.ppr()), true
	case idx == x2LDR:
		return uint64(a.ldr()), true
	case idx == x2SVR:
		return uint64(a.svr), true
	case idx >= x2ISR0 && idx < x2ISR0+8:
		return chunk(&a.isr, idx-x2ISR0), true
	case idx >= x2TMR0 && idx < x2TMR0+8:
		return 0, true
	case idx >= x2IRR0 && idx < x2IRR0+8:
		return chunk(&a.irr, idx-x2IRR0), true
	case idx == x2ESR:
		return uint64(a.esr), true
	case idx == x2CMCI:
		return uint64(a.lvt[0]), true
	case idx == x2ICR:
		return a.icr, true
	case idx == x2LVTT:
		return uint64(a.lvtTimer), true
	case idx > x2LVTT && idx <= x2LVTErr:
		return uint64(a.lvt[idx-x2LVTT]), true
	case idx == x2TMICT:
		return uint64(a.tmict), true
	case idx == x2TMCCT:
		return uint64(a.currentCount()), true
	case idx == x2TDCR:
		return uint64(a.tdcr), true
	}
	return 0, false
}

// writeMSR writes an x2APIC register; ok=false means #GP.
func (a *lapic) writeMSR(idx uint32, v uint64) bool {
	switch idx {
	case x2EOI:
		if v != 0 {
			return false
		}
		a.eoi()
		return true
	case x2ICR:
		a.mu.Lock()
		a.icr = v &^ (1 << 12) // delivery status always idle
		a.mu.Unlock()
		a.c.vm.sendIPI(a.c.id, v)
		return true
	case x2SelfIPI:
		if v>>8 != 0 {
			return false
		}
		a.post(uint8(v))
		return true
	case x2TPR:
		a.setTPR(uint32(v))
		return true
	}
	if v>>32 != 0 {
		return false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	w := uint32(v)
	switch {
	case idx == x2SVR:
		a.svr = w & 0x11ff
		if a.svr&svrEnable == 0 {
			// Software disable masks every LVT entry, as on hardware.
			a.lvtTimer |= lvtMasked
			for i := range a.lvt {
				a.lvt[i] |= lvtMasked
			}
		}
	case idx == x2ESR:
		a.esr = 0
	case idx == x2CMCI:
		a.lvt[0] = w & 0x117ff
	case idx == x2LVTT:
		old := a.lvtTimer
		a.lvtTimer = w & 0x700ff
		if a.svr&svrEnable == 0 {
			a.lvtTimer |= lvtMasked
		}
		if old>>17&3 != a.lvtTimer>>17&3 {
			// A mode change stops the count, like KVM.
			a.tmict = 0
			a.armTimer()
		}
	case idx > x2LVTT && idx <= x2LVTErr:
		a.lvt[idx-x2LVTT] = w & 0x117ff
	case idx == x2TMICT:
		a.tmict = w
		a.armTimer()
	case idx == x2TDCR:
		a.tdcr = w & 0xb
	default:
		return false
	}
	return true
}

// sendIPI delivers a fixed-mode IPI written to ICR by vCPU from.
// INIT/SIPI/NMI and other delivery modes are not modelled and are dropped.
func (v *vm) sendIPI(from int, icr uint64) {
	vec := uint8(icr)
	if icr>>8&7 != 0 {
		return
	}
	dest := uint32(icr >> 32)
	logical := icr&(1<<11) != 0
	shorthand := icr >> 18 & 3
	for i := range v.vcpus {
		t := v.vcpus[i].Load()
		if t == nil {
			continue
		}
		var hit bool
		switch shorthand {
		case 1:
			hit = i == from
		case 2:
			hit = true
		case 3:
			hit = i != from
		default:
			switch {
			case dest == 0xffffffff:
				hit = true
			case logical:
				l := t.apic.ldr()
				hit = l>>16 == dest>>16 && l&dest&0xffff != 0
			default:
				hit = uint32(i) == dest
			}
		}
		if hit {
			t.apic.post(vec)
		}
	}
}
