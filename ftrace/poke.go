package ftrace

import (
	"bytes"
	"fmt"
)

// Memory is what ftrace needs of the guest: virtual-address access through
// the guest's page tables (WriteVirt all or nothing, telling the engine the
// code changed) and whether every vCPU is stopped. kvm.Machine satisfies it.
type Memory interface {
	ReadVirt(va uint64, b []byte) error
	WriteVirt(va uint64, b []byte) error
	Paused() bool
}

// Poke is one verified text write: Old must be at Addr before New is
// written. Where names the place for error messages (symbol+offset).
type Poke struct {
	Addr  uint64
	Old   []byte
	New   []byte
	Where string
}

// maxPoke bounds a single poke: text pokes are instructions and slots,
// never bulk data.
const maxPoke = 64

// Apply is the one routine that writes guest text. It refuses unless the
// guest is paused; it first reads every poke's bytes and compares them
// with Old (on any mismatch nothing is written and the error names the
// site and the bytes found); then it writes all of them. A write that
// fails half way through the batch undoes the ones already written, so a
// batch is all or nothing.
func Apply(mem Memory, pokes []Poke) error {
	const op = "poke"
	if !mem.Paused() {
		return errorf(op, ErrNotPaused, 0, "text pokes need every vCPU stopped")
	}
	buf := make([]byte, maxPoke)
	for _, p := range pokes {
		if len(p.Old) != len(p.New) || len(p.New) == 0 || len(p.New) > maxPoke {
			return &Error{Op: op, Kind: ErrInvalid, Addr: p.Addr, Site: p.Where,
				Detail: fmt.Sprintf("old %d bytes, new %d bytes", len(p.Old), len(p.New))}
		}
		got := buf[:len(p.Old)]
		if err := mem.ReadVirt(p.Addr, got); err != nil {
			return &Error{Op: op, Kind: ErrMemory, Addr: p.Addr, Site: p.Where, Err: err}
		}
		if !bytes.Equal(got, p.Old) {
			return &Error{Op: op, Kind: ErrMismatch, Addr: p.Addr, Site: p.Where,
				Detail: fmt.Sprintf("found % x, expected % x", got, p.Old)}
		}
	}
	for i, p := range pokes {
		if err := mem.WriteVirt(p.Addr, p.New); err != nil {
			// Undo in reverse; these addresses were just read and written,
			// so the undo can only fail if the guest's memory vanished.
			for j := i - 1; j >= 0; j-- {
				_ = mem.WriteVirt(pokes[j].Addr, pokes[j].Old)
			}
			return &Error{Op: op, Kind: ErrMemory, Addr: p.Addr, Site: p.Where, Err: err}
		}
	}
	return nil
}

// Invert returns the pokes that undo pokes (reverse order, Old and New
// swapped).
func Invert(pokes []Poke) []Poke {
	out := make([]Poke, len(pokes))
	for i, p := range pokes {
		out[len(pokes)-1-i] = Poke{Addr: p.Addr, Old: p.New, New: p.Old, Where: p.Where}
	}
	return out
}
