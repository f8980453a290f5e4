package kvm

import (
	"sync"
	"sync/atomic"
	"time"
)

// The legacy PC ports a Linux guest touches besides the UARTs. Everything
// else reads all-ones and ignores writes, counted in Info.UnknownPorts, as
// on a bus where nobody answers.
const (
	portI8042Data   = 0x60
	portI8042Status = 0x64
	portPOSTDelay   = 0x80 // Linux's io_delay: a write nobody reads
	portCMOSIndex   = 0x70
	portCMOSData    = 0x71

	i8042CmdReset = 0xfe // pulse the reset line (Linux's reboot=k)
)

// pcDevices are the devices of a Linux guest's PC platform.
type pcDevices struct {
	rtc       *rtc
	postDelay atomic.Uint64 // port 0x80 writes

	mu      sync.Mutex
	unknown map[uint16]uint64 // accesses to ports nobody serves, by port
}

// noteUnknown counts an access to a port nobody serves: what a Linux guest
// probes and finds absent (docs/linux-guests.md lists the usual ones).
func (p *pcDevices) noteUnknown(port uint16) {
	p.mu.Lock()
	if p.unknown == nil {
		p.unknown = map[uint16]uint64{}
	}
	p.unknown[port]++
	p.mu.Unlock()
}

// UnknownPorts returns, for a Linux guest, how often each port nobody
// serves was accessed; nil for klp-kvm's own guest.
func (m *Machine) UnknownPorts() map[uint16]uint64 {
	p := m.bus.pc
	if p == nil {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[uint16]uint64, len(p.unknown))
	for k, v := range p.unknown {
		out[k] = v
	}
	return out
}

// pcAction is what a PC device access asks of the machine.
type pcAction int

const (
	pcNone   pcAction = iota // the access was served
	pcReset                  // the guest pulsed the reset line
	pcUnused                 // no device at this port
)

// io serves one access of d (1, 2 or 4 bytes) to port.
func (p *pcDevices) io(port uint16, out bool, d []byte) pcAction {
	switch port {
	case portI8042Status:
		if out {
			if d[0] == i8042CmdReset {
				return pcReset
			}
			return pcNone
		}
		// Input and output buffers empty: Linux's kb_wait before the
		// reset command returns at once. No keyboard or aux device
		// ever answers, so the i8042 driver finds nothing to probe.
		fill(d, 0)
		return pcNone
	case portI8042Data:
		if !out {
			fill(d, 0)
		}
		return pcNone
	case portPOSTDelay:
		if out {
			p.postDelay.Add(1)
		} else {
			fill(d, 0xff)
		}
		return pcNone
	case portCMOSIndex:
		if out {
			p.rtc.setIndex(d[0])
		} else {
			fill(d, 0xff)
		}
		return pcNone
	case portCMOSData:
		if out {
			p.rtc.write(d[0])
		} else {
			fill(d, 0xff)
			d[0] = p.rtc.read()
		}
		return pcNone
	}
	return pcUnused
}

func fill(d []byte, v byte) {
	for i := range d {
		d[i] = v
	}
}

// rtc is a minimal MC146818 CMOS clock: the time registers read the host's
// UTC time in BCD, 24-hour mode, never an update in progress, and the
// battery is good. Writes to the time registers are ignored (the guest
// cannot set the host's clock) but status registers A/B keep what the
// guest writes. The other 114 bytes of CMOS RAM read 0.
type rtc struct {
	mu    sync.Mutex
	index byte
	regA  byte
	regB  byte
	now   func() time.Time
}

// MC146818 registers.
const (
	rtcSeconds = 0x00
	rtcMinutes = 0x02
	rtcHours   = 0x04
	rtcWeekday = 0x06
	rtcDay     = 0x07
	rtcMonth   = 0x08
	rtcYear    = 0x09
	rtcRegA    = 0x0a
	rtcRegB    = 0x0b
	rtcRegC    = 0x0c
	rtcRegD    = 0x0d
	rtcCentury = 0x32

	rtcRegBDefault = 0x02 // 24-hour, BCD, no interrupts
	rtcRegDVRT     = 0x80 // valid RAM and time (battery good)
	rtcRegADefault = 0x26 // 32.768 kHz base, 1024 Hz rate; UIP (bit 7) never set
)

func newRTC(now func() time.Time) *rtc {
	return &rtc{now: now, regA: rtcRegADefault, regB: rtcRegBDefault}
}

func (r *rtc) setIndex(v byte) {
	r.mu.Lock()
	r.index = v & 0x7f // bit 7 is the NMI mask
	r.mu.Unlock()
}

func bcd(v int) byte { return byte(v/10<<4 | v%10) }

func (r *rtc) read() byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	t := r.now().UTC()
	conv := func(v int) byte {
		if r.regB&0x04 != 0 { // DM: binary
			return byte(v)
		}
		return bcd(v)
	}
	switch r.index {
	case rtcSeconds:
		return conv(t.Second())
	case rtcMinutes:
		return conv(t.Minute())
	case rtcHours:
		return conv(t.Hour())
	case rtcWeekday:
		return conv(int(t.Weekday()) + 1)
	case rtcDay:
		return conv(t.Day())
	case rtcMonth:
		return conv(int(t.Month()))
	case rtcYear:
		return conv(t.Year() % 100)
	case rtcCentury:
		return conv(t.Year() / 100)
	case rtcRegA:
		return r.regA &^ 0x80
	case rtcRegB:
		return r.regB
	case rtcRegC:
		return 0
	case rtcRegD:
		return rtcRegDVRT
	}
	return 0
}

func (r *rtc) write(v byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch r.index {
	case rtcRegA:
		r.regA = v &^ 0x80
	case rtcRegB:
		// Keep 24-hour mode: a 12-hour clock would need AM/PM encoding
		// this model does not do.
		r.regB = v | 0x02
	}
}

// countErr counts failures and keeps the first.
type countErr struct {
	mu    sync.Mutex
	n     uint64
	first error
}

func (c *countErr) add(err error) {
	c.mu.Lock()
	c.n++
	if c.first == nil {
		c.first = err
	}
	c.mu.Unlock()
}
