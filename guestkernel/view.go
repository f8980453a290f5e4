package guestkernel

// PhysMemory is optionally implemented by a Memory that reaches
// guest-physical memory (kvm.Machine): VirtPhys translates va through the
// page tables and gives the bytes left in its page, ReadPhys reads there.
type PhysMemory interface {
	VirtPhys(va uint64) (pa, n uint64, err error)
	ReadPhys(pa uint64, b []byte) error
}

// View is a Guest for the reads of one consistency check of a paused
// guest, kept by its owner from one check to the next (not safe for
// concurrent use). Between Reset calls it remembers the translation of
// every 4 KiB page it read through (a stack walk reads 16 bytes per
// frame: one page-table walk per stack page instead of one per frame),
// and it reuses its buffers: its task table read allocates nothing once
// the names are known. Reset must be called whenever the guest may have
// run since the last reads (its page tables may have changed): at the
// start of each check. Slices it returns (tasks, frames) are valid until
// the next call of the same method.
type View struct {
	g     Guest // a copy of the Guest reading through memo
	memo  pageMemo
	tasks []Task
	raw   []byte
	names map[string]string
	// frames is the walks' room: a walk's frames are valid until the
	// next walk
	frames []Frame
	word   [16]byte // a frame record's read
	abiBuf [GuestABISize]byte
	abi    GuestABI
}

// NewView returns a View of g.
func (g *Guest) NewView() *View {
	v := &View{names: map[string]string{}}
	v.g = *g
	v.abi = *g.abi
	v.g.abi = &v.abi
	v.g.view = v
	v.memo.mem = g.mem
	v.memo.phys, _ = g.mem.(PhysMemory)
	v.g.mem = &v.memo
	return v
}

// Reset forgets the translations (call it before each check).
func (v *View) Reset() { v.memo.n, v.memo.next = 0, 0 }

// Walks is the number of page-table walks made through the view since
// it was made (tests).
func (v *View) Walks() int { return v.memo.walks }

// Guest is the view as a Guest: its walks (WalkTask, WalkLive, ...) read
// through the view's memo and return frames in the view's room.
func (v *View) Guest() *Guest { return &v.g }

// ReadVirt reads guest memory through the view's memo.
func (v *View) ReadVirt(va uint64, b []byte) error { return v.memo.ReadVirt(va, b) }

// Tasks is Guest.Tasks into the view's buffers.
func (v *View) Tasks() ([]Task, error) {
	ts, err := v.g.tasks(v.tasks, v.raw, v.names)
	if ts != nil {
		v.tasks = ts
	}
	return ts, err
}

// firstFrame is the start of a walk's frames: the view's room in a View,
// a new slice otherwise.
func (g *Guest) firstFrame(pc uint64) []Frame {
	if g.view == nil {
		return []Frame{{PC: pc}}
	}
	return append(g.view.frames[:0], Frame{PC: pc})
}

// keepFrames gives a View back its (maybe grown) room.
func (g *Guest) keepFrames(f []Frame) {
	if g.view != nil && cap(f) > cap(g.view.frames) {
		g.view.frames = f[:0]
	}
}

// memoPages bounds the memo: a check reads a task table and about a
// dozen stacks of a page or two each.
const memoPages = 32

// pageMemo is a Memory that remembers 4 KiB page translations (see
// View). Reads within one page go to guest-physical memory at the
// remembered place; others (the task table, a whole stack) through mem.
type pageMemo struct {
	mem   Memory
	phys  PhysMemory // nil: every read through mem
	n     int
	va    [memoPages]uint64 // page-aligned virtual address
	pa    [memoPages]uint64 // its guest-physical address
	next  int               // the entry to replace when full
	walks int
}

func (p *pageMemo) ReadVirt(va uint64, b []byte) error {
	off := va & 0xfff
	if p.phys == nil || len(b) == 0 || off+uint64(len(b)) > 0x1000 {
		return p.mem.ReadVirt(va, b)
	}
	page := va &^ 0xfff
	for i := 0; i < p.n; i++ {
		if p.va[i] == page {
			return p.phys.ReadPhys(p.pa[i]+off, b)
		}
	}
	p.walks++
	pa, n, err := p.phys.VirtPhys(va)
	if err != nil {
		return err
	}
	if n < uint64(len(b)) {
		// the mapping ends inside the read: let the virtual path decide
		return p.mem.ReadVirt(va, b)
	}
	i := p.n
	if i < memoPages {
		p.n++
	} else {
		i = p.next
		p.next = (p.next + 1) % memoPages
	}
	p.va[i], p.pa[i] = page, pa-off
	return p.phys.ReadPhys(pa, b)
}

// word16 is room for a 16-byte read: the View's (a Guest passes it to
// Memory, an interface, so its own would be a heap allocation per walk).
// Each user reads and decodes it before the next read.
func (g *Guest) word16() []byte {
	if g.view != nil {
		return g.view.word[:]
	}
	return make([]byte, 16)
}
