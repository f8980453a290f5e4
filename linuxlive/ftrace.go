package linuxlive

import (
	"encoding/binary"
	"errors"
	"fmt"

	"klp-kvm/linuxkernel"
)

// The guest's own ftrace and the sites the host owns.
//
// Linux's ftrace keeps a record (struct dyn_ftrace) of every fentry site
// and, before it changes one, verifies that the site holds what ftrace
// left there; a jmp the host wrote fails that check, and ftrace reports
// an "ftrace bug" and turns itself off until the guest reboots (the
// function tracer over all functions, or a livepatch, kprobe or BPF
// program on the host's function, would do that). So while the host
// owns a site it marks the site's record FTRACE_FL_DISABLED, the flag
// Linux itself gives records ftrace must never touch (weak functions'):
// the guest's ftrace skips the function (set_ftrace_filter refuses it,
// the function tracer leaves it out) and keeps working for every other
// one. The flag is set in the pause that takes the site from the NOP
// and cleared in the pause that gives the NOP back, and only while the
// guest's ftrace_lock is free (no update of records or text half done).
//
// It is cleared only when no ftrace_ops is registered: an ops registered
// meanwhile did not count the disabled record, and would find its count
// at zero when it unregisters (ftrace's "FTRACE_WARN_ON", which kills
// ftrace as surely). Then the record stays disabled, the site holds the
// NOP again, and the function stays untraceable by the guest until the
// host gives it back at a later disable, or the guest reboots.

// ftraceRec is the guest ftrace's record of one fentry site.
type ftraceRec struct {
	ok               bool   // the guest's ftrace was read: the record exists
	flagsVA, flagsPA uint64 // the record's flags word
	// disabled, enabled and refMask are FTRACE_FL_DISABLED,
	// FTRACE_FL_ENABLED and the ops count's mask.
	disabled, enabled, refMask uint64
}

// ftraceFlip is one record's flags word to write in the pause.
type ftraceFlip struct {
	site     uint64
	pa       uint64
	old, new uint64
	hold     bool // the host now owns the record (false: gives it back)
}

// siteFtrace finds f's ftrace record (at register): a guest whose ftrace
// cannot be read gets its sites switched without one, as before.
func (m *Manager) siteFtrace(f *fn) error {
	r, err := m.kv.FtraceRecord(f.site)
	if errors.Is(err, linuxkernel.ErrNotFound) {
		// No record: the guest's ftrace does not know the site and
		// never touches it.
		return nil
	}
	if err != nil {
		return err
	}
	if r.ok && (r.flagsPA&7 != 0 || r.flagsVA&7 != 0) {
		return fmt.Errorf("ftrace record's flags of %s at %#x (phys %#x) not 8-byte aligned", f.name, r.flagsVA, r.flagsPA)
	}
	f.rec = r
	return nil
}

// ftraceFlips is, with every vCPU paused, the record flags to write with
// sw: why is not empty when the guest's ftrace is mid-update (retry).
func (m *Manager) ftraceFlips(sw []siteSwitch) (flips []ftraceFlip, why string, err error) {
	var busyRead, lockHeld, opsOn bool
	for _, s := range sw {
		take, give := s.from == fentryNop && s.to != fentryNop, s.to == fentryNop && s.from != fentryNop
		r := s.f.rec
		if !r.ok || (!take && !give) || (give && !m.ftHeld[s.f.site]) {
			continue
		}
		if !busyRead {
			if lockHeld, opsOn, err = m.kv.FtraceBusy(); err != nil {
				return nil, "", wrap("verify", "", ErrGuest, err, "the guest's ftrace")
			}
			busyRead = true
			if lockHeld {
				return nil, "the guest's ftrace is updating (ftrace_lock held)", nil
			}
		}
		var b [8]byte
		if err := m.cfg.Machine.ReadPhys(r.flagsPA, b[:]); err != nil {
			return nil, "", wrap("verify", "", ErrGuest, err, "%s's ftrace record", s.f.name)
		}
		old := binary.LittleEndian.Uint64(b[:])
		switch {
		case take && old&(r.enabled|r.refMask) != 0:
			return nil, "", errf("verify", "", ErrSiteInUse, "the guest's ftrace counts %d users of %s (record flags %#x) though its site holds the NOP; nothing written",
				old&r.refMask, s.f.name, old)
		case take && old&r.disabled != 0:
			// The guest disabled it itself: not the host's to give back.
		case take:
			flips = append(flips, ftraceFlip{site: s.f.site, pa: r.flagsPA, old: old, new: old | r.disabled, hold: true})
		case opsOn:
			if m.cfg.Logf != nil {
				m.cfg.Logf("linuxlive: %s stays hidden from the guest's ftrace: ftrace_ops were registered while it was patched", s.f.name)
			}
		case old&r.disabled == 0:
			delete(m.ftHeld, s.f.site) // not ours any more
		default:
			flips = append(flips, ftraceFlip{site: s.f.site, pa: r.flagsPA, old: old, new: old &^ r.disabled})
		}
	}
	return flips, "", nil
}

// writeFlips writes the flags; on a failure the ones written are put back.
func (m *Manager) writeFlips(flips []ftraceFlip, new bool) error {
	for i, f := range flips {
		v := f.old
		if new {
			v = f.new
		}
		if err := m.cfg.Machine.WritePhys(f.pa, binary.LittleEndian.AppendUint64(nil, v)); err != nil {
			if new {
				_ = m.writeFlips(flips[:i], false)
			}
			return wrap("poke", "", ErrGuest, err, "the guest's ftrace record of %#x", f.site)
		}
	}
	return nil
}

// heldFlips records which records the host owns after a switch.
func (m *Manager) heldFlips(flips []ftraceFlip) {
	for _, f := range flips {
		if f.hold {
			m.ftHeld[f.site] = true
		} else {
			delete(m.ftHeld, f.site)
		}
	}
}

// FtraceRecord reads the guest ftrace's record of the site; a kernel
// whose ftrace layout could not be read (ftErr) has none to keep.
func (lk *liveKernel) FtraceRecord(site uint64) (ftraceRec, error) {
	if lk.ft == nil {
		return ftraceRec{}, nil
	}
	va, err := lk.ft.Record(site)
	if err != nil {
		return ftraceRec{}, err
	}
	pa, err := lk.Translate(va)
	if err != nil {
		return ftraceRec{}, err
	}
	return ftraceRec{ok: true, flagsVA: va, flagsPA: pa, disabled: lk.ft.Disabled, enabled: lk.ft.Enabled, refMask: lk.ft.RefMask}, nil
}

func (lk *liveKernel) FtraceBusy() (bool, bool, error) {
	if lk.ft == nil {
		return false, false, nil
	}
	return lk.ft.Busy()
}
