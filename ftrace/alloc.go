package ftrace

import (
	"fmt"
	"sort"
)

// Allocator hands out ranges of the patch area: first fit with alignment.
// The patch area is small (MiBs) and blocks are few (one image per patch,
// one trampoline per patched function), so a sorted slice of used blocks
// is simpler and fast enough; it also makes leak checks trivial (InUse).
type Allocator struct {
	base, size uint64
	used       []block // sorted by addr, non-overlapping
}

type block struct{ addr, size uint64 }

// NewAllocator manages [base, base+size).
func NewAllocator(base, size uint64) (*Allocator, error) {
	if size == 0 || base+size < base {
		return nil, errorf("new allocator", ErrInvalid, base, "size %#x", size)
	}
	return &Allocator{base: base, size: size}, nil
}

// Base and Size describe the managed range.
func (a *Allocator) Base() uint64 { return a.base }
func (a *Allocator) Size() uint64 { return a.size }

// Alloc returns the lowest address of a free range of size bytes aligned
// to align (a power of two; 0 means 1). ENOMEM-kind error when nothing fits.
func (a *Allocator) Alloc(size, align uint64) (uint64, error) {
	if align == 0 {
		align = 1
	}
	if size == 0 || align&(align-1) != 0 || size > a.size {
		if size > a.size && size != 0 && align&(align-1) == 0 {
			return 0, errorf("alloc", ErrNoMem, 0, "%d bytes requested, the patch area has %d", size, a.size)
		}
		return 0, errorf("alloc", ErrInvalid, 0, "size %d align %d", size, align)
	}
	cur := a.base
	end := a.base + a.size
	try := func(lo, hi uint64) (uint64, bool) {
		at := (lo + align - 1) &^ (align - 1)
		if at < lo || at > hi || hi-at < size {
			return 0, false
		}
		return at, true
	}
	for i, b := range a.used {
		if at, ok := try(cur, b.addr); ok {
			a.insert(i, block{at, size})
			return at, nil
		}
		cur = b.addr + b.size
	}
	if at, ok := try(cur, end); ok {
		a.insert(len(a.used), block{at, size})
		return at, nil
	}
	return 0, errorf("alloc", ErrNoMem, 0, "no free range of %d bytes aligned to %d (%d of %d bytes in use)",
		size, align, a.InUse(), a.size)
}

// AllocN allocates n blocks of size bytes aligned to align, each where n
// successive Allocs would put it (lowest address first), in one walk of
// the used blocks rather than one per block. All or nothing: if the n
// blocks do not fit, nothing is allocated (ENOMEM-kind error).
func (a *Allocator) AllocN(n int, size, align uint64) ([]uint64, error) {
	if n <= 0 {
		return nil, nil
	}
	if n == 1 {
		at, err := a.Alloc(size, align)
		if err != nil {
			return nil, err
		}
		return []uint64{at}, nil
	}
	if align == 0 {
		align = 1
	}
	if size == 0 || align&(align-1) != 0 || size > a.size {
		_, err := a.Alloc(size, align) // the same checks, the same errors; allocates nothing
		return nil, err
	}
	out := make([]uint64, 0, n)
	merged := make([]block, 0, len(a.used)+n)
	cur := a.base
	end := a.base + a.size
	// fill fills the gap [cur, hi) from its start, as successive first-fit
	// Allocs would: a gap that could not take a block before cannot
	// later, and alignment padding left before a block is shorter than
	// align, so it can hold no aligned block.
	fill := func(hi uint64) {
		for len(out) < n {
			at := (cur + align - 1) &^ (align - 1)
			if at < cur || at > hi || hi-at < size {
				return
			}
			out = append(out, at)
			merged = append(merged, block{at, size})
			cur = at + size
		}
	}
	i := 0
	for ; i < len(a.used) && len(out) < n; i++ {
		fill(a.used[i].addr)
		merged = append(merged, a.used[i])
		cur = a.used[i].addr + a.used[i].size
	}
	fill(end)
	if len(out) < n {
		return nil, errorf("alloc", ErrNoMem, 0, "no room for %d blocks of %d bytes aligned to %d (%d of %d bytes in use)",
			n, size, align, a.InUse(), a.size)
	}
	a.used = append(merged, a.used[i:]...)
	return out, nil
}

func (a *Allocator) insert(i int, b block) {
	a.used = append(a.used, block{})
	copy(a.used[i+1:], a.used[i:])
	a.used[i] = b
}

// Free releases the block that starts at addr.
func (a *Allocator) Free(addr uint64) error {
	i := sort.Search(len(a.used), func(i int) bool { return a.used[i].addr >= addr })
	if i == len(a.used) || a.used[i].addr != addr {
		return errorf("free", ErrInvalid, addr, "no block allocated at this address")
	}
	a.used = append(a.used[:i], a.used[i+1:]...)
	return nil
}

// SizeOf returns the size of the block at addr, 0 if none.
func (a *Allocator) SizeOf(addr uint64) uint64 {
	i := sort.Search(len(a.used), func(i int) bool { return a.used[i].addr >= addr })
	if i == len(a.used) || a.used[i].addr != addr {
		return 0
	}
	return a.used[i].size
}

// InUse is the number of bytes allocated.
func (a *Allocator) InUse() uint64 {
	var n uint64
	for _, b := range a.used {
		n += b.size
	}
	return n
}

// Blocks is the number of live allocations.
func (a *Allocator) Blocks() int { return len(a.used) }

func (a *Allocator) String() string {
	return fmt.Sprintf("patch area %#x+%#x: %d blocks, %d bytes in use", a.base, a.size, len(a.used), a.InUse())
}
