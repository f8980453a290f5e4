package ftrace

import (
	"bytes"
	"cmp"
	"fmt"
	"slices"
)

// Memory is what ftrace needs of the guest: virtual-address access through
// the guest's page tables (WriteVirt all or nothing, telling the engine the
// code changed) and whether every vCPU is stopped. kvm.Machine satisfies it.
type Memory interface {
	ReadVirt(va uint64, b []byte) error
	WriteVirt(va uint64, b []byte) error
	Paused() bool
}

// equalVirt is optionally implemented by a Memory that compares guest
// memory in place (kvm.Machine): inside the pause a cluster is then
// compared with its snapshot without being copied out first.
type equalVirt interface {
	EqualVirt(va uint64, b []byte) (bool, error)
}

// Poke is one verified text write: Old must be at Addr before New is
// written.
type Poke struct {
	Addr uint64
	Old  []byte
	New  []byte
	// site and what name the place for error messages (where): the
	// name is formatted only for an error, not for each of 1024 sites.
	site *Site
	what string
}

// where names the poke's place: the site's symbol+offset and what of
// it (" slot", " trampoline"), or what alone.
func (p *Poke) where() string {
	if p.site == nil {
		return p.what
	}
	return p.site.Where() + p.what
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
//
// Pokes close to each other are read and written as one cluster (the
// bytes between them are written back unchanged, which is harmless with
// every vCPU stopped): a 1024-function patch touches a few pages, not
// 2048 separate translations, which keeps the pause window short.
func Apply(mem Memory, pokes []Poke) error {
	const op = "poke"
	if !mem.Paused() {
		return errorf(op, ErrNotPaused, 0, "text pokes need every vCPU stopped")
	}
	cl, err := clusters(pokes)
	if err != nil {
		return err
	}
	return applyClusters(mem, cl, nil)
}

// applyClusters is Apply on pokes already checked and grouped (a Txn
// groups its pokes before the pause). done is room for the undo list
// (nil: allocated as needed); with room for every poke and every
// cluster snapshotted (expect) and unchanged, it allocates nothing.
func applyClusters(mem Memory, cl []cluster, done []Poke) error {
	const op = "poke"
	if !mem.Paused() {
		return errorf(op, ErrNotPaused, 0, "text pokes need every vCPU stopped")
	}
	// Verify everything first.
	for i := range cl {
		c := &cl[i]
		if c.want != nil {
			// The snapshot taken ahead of the pause (expect): one read
			// and one compare of the whole cluster. Equal, every poke
			// finds its Old bytes and the bytes between them are as
			// read now: c.next is what the poke-by-poke path below
			// would write. Not equal (the guest changed something in
			// the cluster since), the poke-by-poke path decides.
			c.cur = c.buf[:c.hi-c.lo]
			if ev, ok := mem.(equalVirt); ok {
				if eq, err := ev.EqualVirt(c.lo, c.want); err == nil && eq {
					// c.cur (the undo's old bytes) is c.want
					c.cur = c.want
					c.fast, c.split = true, false
					continue
				}
			} else if mem.ReadVirt(c.lo, c.cur) == nil && bytes.Equal(c.cur, c.want) {
				c.fast, c.split = true, false
				continue
			}
			c.cur = c.buf[:c.hi-c.lo]
			c.fast = false
		} else {
			c.cur = make([]byte, c.hi-c.lo)
		}
		c.split = false
		if err := mem.ReadVirt(c.lo, c.cur); err != nil {
			// The cluster may span an unmapped hole: fall back to one
			// read per poke so the error names the poke that faults.
			for _, p := range c.pokes {
				if err := mem.ReadVirt(p.Addr, c.cur[p.Addr-c.lo:p.Addr-c.lo+uint64(len(p.Old))]); err != nil {
					return &Error{Op: op, Kind: ErrMemory, Addr: p.Addr, Site: p.where(), Err: err}
				}
			}
			c.split = true
		}
		for _, p := range c.pokes {
			got := c.cur[p.Addr-c.lo : p.Addr-c.lo+uint64(len(p.Old))]
			if !bytes.Equal(got, p.Old) {
				return &Error{Op: op, Kind: ErrMismatch, Addr: p.Addr, Site: p.where(),
					Detail: fmt.Sprintf("found % x, expected % x", got, p.Old)}
			}
		}
	}
	// Then write.
	done = done[:0] // what to undo if a later write fails
	for i := range cl {
		c := &cl[i]
		if !c.split {
			var buf []byte
			if c.fast {
				buf = c.next
			} else {
				buf = append([]byte(nil), c.cur...)
				for _, p := range c.pokes {
					copy(buf[p.Addr-c.lo:], p.New)
				}
			}
			if err := mem.WriteVirt(c.lo, buf); err != nil {
				undo(mem, done)
				return &Error{Op: op, Kind: ErrMemory, Addr: c.lo, Site: c.pokes[0].where(), Err: err}
			}
			done = append(done, Poke{Addr: c.lo, Old: c.cur, New: buf})
			continue
		}
		for _, p := range c.pokes {
			if err := mem.WriteVirt(p.Addr, p.New); err != nil {
				undo(mem, done)
				return &Error{Op: op, Kind: ErrMemory, Addr: p.Addr, Site: p.where(), Err: err}
			}
			done = append(done, p)
		}
	}
	return nil
}

// undo writes back the old bytes of written pokes, newest first. These
// addresses were just read and written, so it can only fail if the
// guest's memory vanished.
func undo(mem Memory, done []Poke) {
	for j := len(done) - 1; j >= 0; j-- {
		_ = mem.WriteVirt(done[j].Addr, done[j].Old)
	}
}

// clusterGap: pokes at most this far apart share one read and one write.
const clusterGap = 4096

// maxCluster bounds one cluster's read.
const maxCluster = 1 << 20

type cluster struct {
	lo, hi uint64
	pokes  []Poke
	cur    []byte
	split  bool

	// Ahead of the pause (expect): want is the cluster as read then,
	// with every poke's Old bytes in place, next the same with the New
	// bytes; buf is room for the read inside the pause. nil when the
	// cluster could not be read then. fast: the read inside the pause
	// equalled want.
	want, next, buf []byte
	fast            bool
}

// expect snapshots each cluster (the guest may be running: the snapshot
// is only a guess, checked against a fresh read inside the pause). A
// cluster that does not read in one piece gets no snapshot.
func expect(mem Memory, cl []cluster) {
	for i := range cl {
		c := &cl[i]
		n := c.hi - c.lo
		b := make([]byte, 3*n)
		want, next, buf := b[:n:n], b[n:2*n:2*n], b[2*n:]
		if mem.ReadVirt(c.lo, want) != nil {
			continue
		}
		copy(next, want)
		for _, p := range c.pokes {
			copy(want[p.Addr-c.lo:], p.Old)
			copy(next[p.Addr-c.lo:], p.New)
		}
		c.want, c.next, c.buf = want, next, buf
	}
}

// clusters checks pokes and groups them by address; overlapping pokes
// are refused (their expected bytes could not all be true at once).
func clusters(pokes []Poke) ([]cluster, error) {
	const op = "poke"
	for _, p := range pokes {
		if len(p.Old) != len(p.New) || len(p.New) == 0 || len(p.New) > maxPoke || p.Addr+uint64(len(p.New)) < p.Addr {
			return nil, &Error{Op: op, Kind: ErrInvalid, Addr: p.Addr, Site: p.where(),
				Detail: fmt.Sprintf("old %d bytes, new %d bytes", len(p.Old), len(p.New))}
		}
	}
	sorted := append([]Poke(nil), pokes...)
	slices.SortFunc(sorted, func(a, b Poke) int { return cmp.Compare(a.Addr, b.Addr) })
	// A cluster's pokes are a run of sorted: its subslice, not a copy.
	var out []cluster
	start := 0
	for i, p := range sorted {
		end := p.Addr + uint64(len(p.New))
		if i > 0 {
			if prev := sorted[i-1]; prev.Addr+uint64(len(prev.New)) > p.Addr {
				return nil, &Error{Op: op, Kind: ErrInvalid, Addr: p.Addr, Site: p.where(), Detail: "overlaps the poke at " + prev.where()}
			}
		}
		if n := len(out); n > 0 {
			c := &out[n-1]
			if p.Addr <= c.hi+clusterGap && max(end, c.hi)-c.lo <= maxCluster {
				c.hi = max(c.hi, end)
				c.pokes = sorted[start : i+1 : i+1]
				continue
			}
		}
		start = i
		out = append(out, cluster{lo: p.Addr, hi: end, pokes: sorted[i : i+1 : i+1]})
	}
	return out, nil
}

// Invert returns the pokes that undo pokes (reverse order, Old and New
// swapped).
func Invert(pokes []Poke) []Poke {
	out := make([]Poke, len(pokes))
	for i, p := range pokes {
		out[len(pokes)-1-i] = Poke{Addr: p.Addr, Old: p.New, New: p.Old, site: p.site, what: p.what}
	}
	return out
}
