package ftrace

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"klp-kvm/elfpatch"
)

// State is what an fentry site holds.
type State uint8

const (
	// StateNop: the compiler's 5-byte NOP; the function runs as built.
	StateNop State = iota
	// StateJmp: `jmp rel32` to the site's klp_ops trampoline.
	StateJmp
)

func (s State) String() string {
	if s == StateJmp {
		return "jmp"
	}
	return "nop"
}

// Trampoline layout: `ff 25 02 00 00 00` (jmp *2(%rip), i.e. the slot),
// `cc cc` (int3 padding, never reached), then the 8-byte slot holding the
// new function. 16 bytes, 16-aligned, so the slot is 8-aligned and its
// update is a single aligned store.
const (
	TrampSize    = 16
	TrampAlign   = 16
	TrampSlotOff = 8
)

// TrampBytes returns a trampoline whose slot holds target.
func TrampBytes(target uint64) [TrampSize]byte {
	var b [TrampSize]byte
	copy(b[:], []byte{0xff, 0x25, 0x02, 0x00, 0x00, 0x00, 0xcc, 0xcc})
	binary.LittleEndian.PutUint64(b[TrampSlotOff:], target)
	return b
}

// JmpRel32 encodes `jmp rel32` at from to to.
func JmpRel32(from, to uint64) ([elfpatch.FentrySize]byte, error) {
	var b [elfpatch.FentrySize]byte
	rel := int64(to - (from + elfpatch.FentrySize))
	if rel != int64(int32(rel)) {
		return b, errorf("encode jmp", ErrRange, from, "target %#x is %d bytes away", to, rel)
	}
	b[0] = 0xe9
	binary.LittleEndian.PutUint32(b[1:], uint32(int32(rel)))
	return b, nil
}

// Site is one fentry site and its state.
type Site struct {
	Addr    uint64                    `json:"addr"`
	Func    string                    `json:"func"`
	FuncOff uint64                    `json:"func_off"`
	Nop     [elfpatch.FentrySize]byte `json:"nop"`    // the site's bytes when not redirected
	State   State                     `json:"state"`  // 0 nop, 1 jmp
	Tramp   uint64                    `json:"tramp"`  // the klp_ops trampoline while State == StateJmp
	Target  uint64                    `json:"target"` // the trampoline's slot while State == StateJmp
}

// Where names the site for messages: symbol+offset.
func (s *Site) Where() string {
	if s.Func == "" {
		return fmt.Sprintf("%#x", s.Addr)
	}
	return fmt.Sprintf("%s+%#x", s.Func, s.FuncOff)
}

// Tracer owns the site table, the patch-area allocator and every text
// poke. It is not locked: its user (livepatch.Manager) serialises.
type Tracer struct {
	mem   Memory
	alloc *Allocator
	sites map[uint64]*Site
	// order is the site table by address, built once (the kernel's
	// sites never change): Redirected walks it instead of sorting the
	// redirected sites on every call (a reflection sort of 1024 sites
	// was a sixth of a 1024-function enable's host time).
	order []*Site
	// unsettled lists the transactions committed since their sites'
	// states were last brought up to date (settle): a Commit inside the
	// pause only writes the guest's text and appends here, and the site
	// table (1024 Site copies at 1024 functions, cache misses included)
	// is updated after the guest runs again, before anything reads it.
	unsettled []*Txn
}

// settle brings the site table up to date with the commits since the
// last call, in commit order. Every method that reads a site's state
// calls it first.
func (t *Tracer) settle() {
	for _, x := range t.unsettled {
		for i, s := range x.after {
			*x.live[i] = s
		}
	}
	clear(t.unsettled)
	t.unsettled = t.unsettled[:0]
}

// New builds the site table from the kernel's fentry sites (all NOP).
func New(mem Memory, alloc *Allocator, sites []elfpatch.Site) *Tracer {
	t := &Tracer{mem: mem, alloc: alloc, sites: make(map[uint64]*Site, len(sites))}
	all := make([]Site, len(sites))
	for i, s := range sites {
		all[i] = Site{Addr: s.Addr, Func: s.Func, FuncOff: s.Offset, Nop: s.Bytes}
		if _, dup := t.sites[s.Addr]; !dup {
			t.sites[s.Addr] = &all[i]
			t.order = append(t.order, &all[i])
		}
	}
	slices.SortFunc(t.order, func(a, b *Site) int { return cmp.Compare(a.Addr, b.Addr) })
	return t
}

// Alloc is the patch-area allocator (images are allocated from it too).
func (t *Tracer) Alloc() *Allocator { return t.alloc }

// Memory is the guest memory the tracer pokes.
func (t *Tracer) Memory() Memory { return t.mem }

// Site returns a copy of the site at addr.
func (t *Tracer) Site(addr uint64) (Site, bool) {
	t.settle()
	s, ok := t.sites[addr]
	if !ok {
		return Site{}, false
	}
	return *s, true
}

// NumSites is the size of the site table.
func (t *Tracer) NumSites() int { return len(t.sites) }

// Redirected returns the sites in StateJmp, by address.
func (t *Tracer) Redirected() []Site {
	t.settle()
	n := 0
	for _, s := range t.order {
		if s.State == StateJmp {
			n++
		}
	}
	if n == 0 {
		return nil
	}
	out := make([]Site, 0, n)
	for _, s := range t.order {
		if s.State == StateJmp {
			out = append(out, *s)
		}
	}
	return out
}

// Update asks for a site's new target: a function address, or 0 to put
// the NOP back.
type Update struct {
	Site   uint64
	Target uint64
}

// Txn is a prepared batch of site changes: trampolines allocated, pokes
// computed. Commit applies it in one pause; Rollback undoes a committed
// one; Finish frees the trampolines of sites that went back to NOP; Abort
// drops an uncommitted one. Exactly one of Abort or Finish (after an
// optional Rollback) ends a Txn.
type Txn struct {
	t         *Tracer
	pokes     []Poke    // slots and sites (and trampolines unless staged)
	tramps    []Poke    // fresh trampolines
	staged    bool      // tramps written ahead of the pause
	cl        []cluster // the pokes grouped for Apply, ahead of the pause
	clErr     error
	newTramps []uint64 // allocated by Prepare
	oldTramps []uint64 // released by sites going back to NOP (freed by Finish)
	before    []Site   // the changed sites' states before
	after     []Site
	live      []*Site // the site table's entries of before/after, resolved ahead of the pause
	undoBuf   []Poke  // room for applyClusters' undo list, allocated ahead of the pause
	committed bool
	done      bool
}

// Prepare computes the pokes for updates. Nothing in the guest changes.
// Fresh trampolines are allocated and their current bytes (the patch
// area, which no guest code executes yet) become the pokes' expected old
// bytes.
func (t *Tracer) Prepare(updates []Update) (*Txn, error) {
	const op = "prepare"
	t.settle()
	x := &Txn{t: t, before: make([]Site, 0, len(updates)), after: make([]Site, 0, len(updates)),
		live: make([]*Site, 0, len(updates))}
	seen := make(map[uint64]bool, len(updates))
	// The fresh trampolines' expected bytes, one allocation for all.
	curs := make([]byte, 0, TrampSize*len(updates))
	// The fresh trampolines, allocated in one walk of the patch area (at
	// the addresses one Alloc each would give). They are x.newTramps from
	// the start, so any error below frees them all. If they do not all
	// fit, each is allocated in turn, so the error is the one it would be.
	nNew := 0
	for _, u := range updates {
		if s, ok := t.sites[u.Site]; ok && u.Target != 0 && s.State == StateNop {
			nNew++
		}
	}
	// The pokes, each kind in its own part of one array, put together in
	// order at the end with no new allocation: a fresh trampoline for
	// each of the nNew sites going from NOP to a jmp, a slot for at most
	// each other site, a site poke for at most every update (2n in all,
	// where a third for each kind was 3n: the array is a Prepare's
	// largest allocation).
	n := len(updates)
	all := make([]Poke, 2*n)
	trampPokes, slotPokes, sitePokes := all[:0:nNew], all[nNew:nNew:n], all[n:n:2*n]
	pool, err := t.alloc.AllocN(nNew, TrampSize, TrampAlign)
	if err != nil {
		pool = nil
	}
	x.newTramps = pool
	// The pool's current bytes, read a run of adjacent trampolines at a
	// time (AllocN hands out mostly one run) instead of one page walk
	// per trampoline.
	poolCur := curs[:TrampSize*len(pool)]
	for i := 0; i < len(pool); {
		j := i + 1
		for j < len(pool) && pool[j] == pool[j-1]+TrampSize {
			j++
		}
		if err := t.mem.ReadVirt(pool[i], poolCur[i*TrampSize:j*TrampSize]); err != nil {
			x.Abort()
			return nil, &Error{Op: op, Kind: ErrMemory, Addr: pool[i], Err: err}
		}
		i = j
	}
	curs = curs[len(poolCur):len(poolCur)]
	// The pokes' new (and a disable's old) bytes, in one allocation.
	arena := make([]byte, 0, len(updates)*(elfpatch.FentrySize+TrampSize))
	keep := func(b []byte) []byte {
		n := len(arena)
		arena = append(arena, b...)
		return arena[n:len(arena):len(arena)]
	}
	for _, u := range updates {
		s, ok := t.sites[u.Site]
		if !ok {
			x.Abort()
			return nil, errorf(op, ErrInvalid, u.Site, "not an fentry site")
		}
		if seen[u.Site] {
			x.Abort()
			return nil, &Error{Op: op, Kind: ErrInvalid, Addr: u.Site, Site: s.Where(), Detail: "updated twice in one batch"}
		}
		seen[u.Site] = true
		nu := *s
		switch {
		case u.Target == 0 && s.State == StateNop:
			continue
		case u.Target == 0:
			jmp, err := JmpRel32(s.Addr, s.Tramp)
			if err != nil {
				x.Abort()
				return nil, err
			}
			sitePokes = append(sitePokes, Poke{Addr: s.Addr, Old: keep(jmp[:]), New: s.Nop[:], site: s})
			x.oldTramps = append(x.oldTramps, s.Tramp)
			nu.State, nu.Tramp, nu.Target = StateNop, 0, 0
		case s.State == StateJmp:
			if s.Target == u.Target {
				continue
			}
			var o, n [8]byte
			binary.LittleEndian.PutUint64(o[:], s.Target)
			binary.LittleEndian.PutUint64(n[:], u.Target)
			slotPokes = append(slotPokes, Poke{Addr: s.Tramp + TrampSlotOff, Old: keep(o[:]), New: keep(n[:]), site: s, what: " slot"})
			nu.Target = u.Target
		default:
			var tr uint64
			var cur []byte
			if len(pool) > 0 {
				tr, pool = pool[0], pool[1:]
				cur, poolCur = poolCur[:TrampSize:TrampSize], poolCur[TrampSize:]
			} else {
				var err error
				if tr, err = t.alloc.Alloc(TrampSize, TrampAlign); err != nil {
					x.Abort()
					return nil, err
				}
				x.newTramps = append(x.newTramps, tr)
			}
			jmp, err := JmpRel32(s.Addr, tr)
			if err != nil {
				x.Abort()
				return nil, &Error{Op: op, Kind: ErrRange, Addr: s.Addr, Site: s.Where(), Err: err}
			}
			if cur == nil {
				cur = curs[len(curs) : len(curs)+TrampSize : len(curs)+TrampSize]
				curs = curs[:len(curs)+TrampSize]
				if err := t.mem.ReadVirt(tr, cur); err != nil {
					x.Abort()
					return nil, &Error{Op: op, Kind: ErrMemory, Addr: tr, Site: s.Where(), Err: err}
				}
			}
			tb := TrampBytes(u.Target)
			trampPokes = append(trampPokes, Poke{Addr: tr, Old: cur, New: keep(tb[:]), site: s, what: " trampoline"})
			sitePokes = append(sitePokes, Poke{Addr: s.Addr, Old: s.Nop[:], New: keep(jmp[:]), site: s})
			nu.State, nu.Tramp, nu.Target = StateJmp, tr, u.Target
		}
		x.before = append(x.before, *s)
		x.after = append(x.after, nu)
		x.live = append(x.live, s)
	}
	// Trampolines and slots before the sites that jump to them (all under
	// one pause, but a consistent order costs nothing).
	nt := len(trampPokes)
	ns := nt + copy(all[nt:], slotPokes)
	x.pokes = all[:ns+copy(all[ns:], sitePokes)]
	x.tramps = x.pokes[:nt]
	return x, nil // grouped by Stage, or else by Commit
}

// group sorts and clusters the pokes ahead of the pause (Stage; a Txn
// that is not staged is grouped by its Commit), which then pays
// only for reads, compares and writes, and snapshots each cluster's
// bytes as the commit expects to find them and as it will write them
// (expect), so that a commit whose clusters are unchanged since pays one
// compare and one write per cluster.
func (x *Txn) group() {
	x.cl, x.clErr = clusters(x.pokes)
	if x.clErr == nil {
		expect(x.t.mem, x.cl)
	}
	// Room for what Commit records inside the pause.
	x.undoBuf = make([]Poke, 0, len(x.pokes))
	x.t.unsettled = slices.Grow(x.t.unsettled, 1)
}

// Stage writes the fresh trampolines now, while the guest runs: no site
// jumps to them before Commit, so nothing can execute them, and the pause
// is left with only the slot and site pokes. Their expected old bytes are
// checked as in Apply. Abort, Rollback and Finish without a commit put
// the old bytes back.
func (x *Txn) Stage() error {
	if x.staged || x.committed || x.done {
		return errorf("stage", ErrState, 0, "transaction already staged, committed or ended")
	}
	var buf [TrampSize]byte // one buffer for all: 1024 reads, no garbage
	for i, p := range x.tramps {
		got := buf[:]
		if len(p.Old) != TrampSize {
			got = make([]byte, len(p.Old))
		}
		err := x.t.mem.ReadVirt(p.Addr, got)
		if err == nil && !bytes.Equal(got, p.Old) {
			err = &Error{Op: "stage", Kind: ErrMismatch, Addr: p.Addr, Site: p.where(),
				Detail: fmt.Sprintf("found % x, expected % x", got, p.Old)}
		}
		if err == nil {
			err = x.t.mem.WriteVirt(p.Addr, p.New)
		}
		if err != nil {
			undo(x.t.mem, x.tramps[:i])
			var fe *Error
			if errors.As(err, &fe) {
				return fe
			}
			return &Error{Op: "stage", Kind: ErrMemory, Addr: p.Addr, Site: p.where(), Err: err}
		}
	}
	x.staged = true
	x.pokes = x.pokes[len(x.tramps):]
	x.group()
	return nil
}

func (x *Txn) unstage() {
	if x.staged {
		undo(x.t.mem, x.tramps)
		x.staged = false
		x.pokes = append(append([]Poke(nil), x.tramps...), x.pokes...)
		x.group()
	}
}

// Pokes returns the batch (for inspection and tests).
func (x *Txn) Pokes() []Poke { return x.pokes }

// Empty reports whether the batch changes nothing.
func (x *Txn) Empty() bool { return len(x.pokes) == 0 }

// Commit applies the batch (the guest must be paused) and records the new
// site states. On error nothing changed.
func (x *Txn) Commit() error {
	if x.done || x.committed {
		return errorf("commit", ErrState, 0, "transaction already committed or ended")
	}
	if x.cl == nil && x.clErr == nil {
		x.cl, x.clErr = clusters(x.pokes) // not staged: no snapshot (expect) to take now
		x.undoBuf = make([]Poke, 0, len(x.pokes))
	}
	if x.clErr != nil {
		return x.clErr
	}
	if err := applyClusters(x.t.mem, x.cl, x.undoBuf); err != nil {
		return err
	}
	// The sites' states follow outside the pause (settle); both lists
	// have room reserved ahead of it (Stage), so this allocates nothing.
	x.t.unsettled = append(x.t.unsettled, x)
	x.committed = true
	return nil
}

// Rollback undoes a committed batch (the guest must be paused): the sites
// get their old bytes and states back.
func (x *Txn) Rollback() error {
	if !x.committed || x.done {
		return errorf("rollback", ErrState, 0, "transaction not committed")
	}
	x.t.settle()
	if err := Apply(x.t.mem, Invert(x.pokes)); err != nil {
		return err
	}
	for i, s := range x.before {
		*x.live[i] = s
	}
	x.committed = false
	x.unstage()
	return nil
}

// Finish ends the transaction: after a Commit the trampolines of sites
// back at NOP are freed; without one (or after a Rollback) the fresh
// trampolines are.
func (x *Txn) Finish() {
	if x.done {
		return
	}
	x.done = true
	free := x.newTramps
	if x.committed {
		free = x.oldTramps
	} else {
		x.unstage()
	}
	for _, a := range free {
		_ = x.t.alloc.Free(a)
	}
}

// Abort ends an uncommitted transaction.
func (x *Txn) Abort() {
	if x.committed {
		return
	}
	x.Finish()
}
