package linuxkernel

import (
	"encoding/binary"
	"io"
)

// PhysMem is the narrow view of a guest this package needs: reads of
// guest-physical memory and its size. kvm.Machine implements ReadPhys;
// PhysSize is its RAM size. Implementations must fail reads outside RAM;
// this package checks ranges against PhysSize before it calls anyway.
type PhysMem interface {
	ReadPhys(pa uint64, b []byte) error
	PhysSize() uint64
}

// CPU is what this package wants of one paused vCPU. CR3 and CR4 are
// optional (the kernel's own init_top_pgt from vmcoreinfo serves when CR3
// is 0, and is preferred: with PTI a vCPU in user mode has a CR3 that
// maps almost none of the kernel). LSTAR (MSR 0xc0000082, the kernel's
// entry_SYSCALL_64) gives the KASLR offset when symbols come from a
// System.map. RIP, RSP and GSBase are reported.
type CPU struct {
	CR3, CR4         uint64
	LSTAR            uint64
	RIP, RSP, GSBase uint64
}

// cr4LA57 is CR4 bit 12: 5-level paging.
const cr4LA57 = 1 << 12

// ReaderAtMem adapts an io.ReaderAt of Size bytes (a RAM file such as
// QEMU's memory-backend-file, a core dump's RAM) to PhysMem.
type ReaderAtMem struct {
	R    io.ReaderAt
	Size uint64
}

// ReadPhys reads [pa, pa+len(b)), which must lie inside Size.
func (m ReaderAtMem) ReadPhys(pa uint64, b []byte) error {
	if err := physCheck(m.Size, pa, uint64(len(b))); err != nil {
		return err
	}
	n, err := m.R.ReadAt(b, int64(pa))
	if n == len(b) {
		return nil
	}
	return wrap("read phys", ErrBounds, err, "%d of %d bytes at %#x", n, len(b), pa)
}

// PhysSize is Size.
func (m ReaderAtMem) PhysSize() uint64 { return m.Size }

// BytesMem is guest RAM held in a byte slice (tests, fuzzing).
type BytesMem []byte

// ReadPhys copies [pa, pa+len(b)).
func (m BytesMem) ReadPhys(pa uint64, b []byte) error {
	if err := physCheck(uint64(len(m)), pa, uint64(len(b))); err != nil {
		return err
	}
	copy(b, m[pa:])
	return nil
}

// PhysSize is len(m).
func (m BytesMem) PhysSize() uint64 { return uint64(len(m)) }

func physCheck(size, pa, n uint64) error {
	if pa > size || n > size-pa {
		return errf("read phys", ErrBounds, "[%#x, +%#x) outside RAM of %#x bytes", pa, n, size)
	}
	return nil
}

func readPhys(m PhysMem, pa uint64, b []byte) error {
	if err := physCheck(m.PhysSize(), pa, uint64(len(b))); err != nil {
		return err
	}
	return m.ReadPhys(pa, b)
}

func le64(b []byte) uint64 { return binary.LittleEndian.Uint64(b) }
func le32(b []byte) uint32 { return binary.LittleEndian.Uint32(b) }
