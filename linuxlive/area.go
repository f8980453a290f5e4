package linuxlive

// area hands out the pages of the patch area (guest-physical RAM the
// guest's e820 map leaves out) one at a time: a patch's regions are mapped
// page by page, so nothing needs to be contiguous.
type area struct {
	base, size uint64
	used       []bool
	inUse      int
}

func newArea(base, size uint64) *area {
	return &area{base: base, size: size, used: make([]bool, size/pageSize)}
}

// alloc takes a free page.
func (a *area) alloc() (uint64, error) {
	for i, u := range a.used {
		if !u {
			a.used[i] = true
			a.inUse++
			return a.base + uint64(i)*pageSize, nil
		}
	}
	return 0, errf("alloc", "", ErrNoSpace, "the patch area (%d KiB at %#x) is full", a.size>>10, a.base)
}

// free gives a page back; a page not from the area is ignored.
func (a *area) free(pa uint64) {
	if pa < a.base || pa >= a.base+a.size || pa%pageSize != 0 {
		return
	}
	if i := (pa - a.base) / pageSize; a.used[i] {
		a.used[i] = false
		a.inUse--
	}
}
