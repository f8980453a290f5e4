package emu

import (
	"sync/atomic"
	"unsafe"
)

// ramMem is guest RAM as raw memory. Every accessor takes a guest-physical
// offset that the caller has already bounds-checked against size (the TLB
// only holds RAM pages; slow paths check explicitly).
//
// Plain accesses are //go:norace: guest RAM is shared by all vCPUs and the
// host, and races between them are the guest's business (x86 TSO is what
// amd64 gives us). Locked guest operations use sync/atomic.
type ramMem struct {
	base unsafe.Pointer
	size uint64
}

func newRAM(mem []byte) ramMem {
	return ramMem{base: unsafe.Pointer(unsafe.SliceData(mem)), size: uint64(len(mem))}
}

//go:norace
func (m ramMem) load(off uint64, size uint8) uint64 {
	p := unsafe.Add(m.base, off)
	switch size {
	case 8:
		return *(*uint64)(p)
	case 4:
		return uint64(*(*uint32)(p))
	case 2:
		return uint64(*(*uint16)(p))
	}
	return uint64(*(*uint8)(p))
}

//go:norace
func (m ramMem) load64(off uint64) uint64 { return *(*uint64)(unsafe.Add(m.base, off)) }

//go:norace
func (m ramMem) store64(off uint64, v uint64) { *(*uint64)(unsafe.Add(m.base, off)) = v }

//go:norace
func (m ramMem) store32(off uint64, v uint32) { *(*uint32)(unsafe.Add(m.base, off)) = v }

//go:norace
func (m ramMem) store(off uint64, size uint8, v uint64) {
	p := unsafe.Add(m.base, off)
	switch size {
	case 8:
		*(*uint64)(p) = v
	case 4:
		*(*uint32)(p) = uint32(v)
	case 2:
		*(*uint16)(p) = uint16(v)
	default:
		*(*uint8)(p) = uint8(v)
	}
}

// copyOut copies guest RAM [off, off+len(dst)) into dst.
//
//go:norace
func (m ramMem) copyOut(dst []byte, off uint64) {
	copy(dst, unsafe.Slice((*byte)(unsafe.Add(m.base, off)), len(dst)))
}

// copyIn copies src into guest RAM at off.
//
//go:norace
func (m ramMem) copyIn(off uint64, src []byte) {
	copy(unsafe.Slice((*byte)(unsafe.Add(m.base, off)), len(src)), src)
}

// sizeMaskOf is the value mask for an access of size bytes.
func sizeMaskOf(size uint8) uint64 { return ^uint64(0) >> (64 - 8*uint(size)) }

// atomicOK reports whether a locked access of size bytes at off can use a
// host atomic: naturally aligned for 4/8 bytes, or 1/2 bytes inside one
// aligned 32-bit word (RAM sizes are multiples of 4096, so the word is in RAM).
func atomicOK(off uint64, size uint8) bool {
	switch size {
	case 8:
		return off&7 == 0
	case 4:
		return off&3 == 0
	case 2:
		return off&3 != 3
	}
	return true
}

// atomicLoad reads with a host atomic; atomicOK(off, size) must hold.
func (m ramMem) atomicLoad(off uint64, size uint8) uint64 {
	switch size {
	case 8:
		return atomic.LoadUint64((*uint64)(unsafe.Add(m.base, off)))
	case 4:
		return uint64(atomic.LoadUint32((*uint32)(unsafe.Add(m.base, off))))
	}
	w := atomic.LoadUint32((*uint32)(unsafe.Add(m.base, off&^3)))
	return uint64(w>>(8*(off&3))) & sizeMaskOf(size)
}

// cas is a compare-and-swap of size bytes at off; atomicOK(off, size) must
// hold. It returns whether the swap happened and the value found. For 1/2
// byte accesses it retries while only the neighbouring bytes change, so a
// failure always means the value itself differed (CMPXCHG semantics).
func (m ramMem) cas(off uint64, size uint8, old, new uint64) (bool, uint64) {
	switch size {
	case 8:
		p := (*uint64)(unsafe.Add(m.base, off))
		for {
			if atomic.CompareAndSwapUint64(p, old, new) {
				return true, old
			}
			if cur := atomic.LoadUint64(p); cur != old {
				return false, cur
			}
		}
	case 4:
		p := (*uint32)(unsafe.Add(m.base, off))
		for {
			if atomic.CompareAndSwapUint32(p, uint32(old), uint32(new)) {
				return true, old
			}
			if cur := atomic.LoadUint32(p); cur != uint32(old) {
				return false, uint64(cur)
			}
		}
	}
	p := (*uint32)(unsafe.Add(m.base, off&^3))
	shift := 8 * (off & 3)
	mask := uint32(sizeMaskOf(size)) << shift
	for {
		w := atomic.LoadUint32(p)
		cur := uint64((w & mask) >> shift)
		if cur != old&sizeMaskOf(size) {
			return false, cur
		}
		nw := w&^mask | uint32(new<<shift)&mask
		if atomic.CompareAndSwapUint32(p, w, nw) {
			return true, cur
		}
	}
}

// swap exchanges size bytes at off atomically; atomicOK(off, size) must hold.
func (m ramMem) swap(off uint64, size uint8, v uint64) uint64 {
	switch size {
	case 8:
		return atomic.SwapUint64((*uint64)(unsafe.Add(m.base, off)), v)
	case 4:
		return uint64(atomic.SwapUint32((*uint32)(unsafe.Add(m.base, off)), uint32(v)))
	}
	for {
		old := m.atomicLoad(off, size)
		if ok, _ := m.cas(off, size, old, v); ok {
			return old
		}
	}
}

// or64 atomically ORs bits into the aligned 64-bit word at off (page-table
// accessed/dirty bits, which other vCPUs may be setting too).
func (m ramMem) or64(off uint64, bits uint64) {
	atomic.OrUint64((*uint64)(unsafe.Add(m.base, off)), bits)
}

// moveElems copies n elements of size bytes from src to dst one element
// at a time in ascending order, which is what a forward REP MOVS does even
// when the ranges overlap; non-overlapping or downward copies use memmove.
//
//go:norace
func (m ramMem) moveElems(dst, src, n uint64, size uint8) {
	bytes := n * uint64(size)
	if dst <= src || dst >= src+bytes {
		copy(unsafe.Slice((*byte)(unsafe.Add(m.base, dst)), bytes), unsafe.Slice((*byte)(unsafe.Add(m.base, src)), bytes))
		return
	}
	for i := uint64(0); i < n; i++ {
		m.store(dst+i*uint64(size), size, m.load(src+i*uint64(size), size))
	}
}

// fillElems stores v (size bytes) n times from dst upwards.
//
//go:norace
func (m ramMem) fillElems(dst, n uint64, size uint8, v uint64) {
	if size == 1 {
		b := unsafe.Slice((*byte)(unsafe.Add(m.base, dst)), n)
		for i := range b {
			b[i] = byte(v)
		}
		return
	}
	for i := uint64(0); i < n; i++ {
		m.store(dst+i*uint64(size), size, v)
	}
}
