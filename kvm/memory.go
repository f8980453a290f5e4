package kvm

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/sys/unix"
)

// allocRAM maps anonymous guest RAM. The same slice is handed to either
// engine (KVM maps it with KVM_SET_USER_MEMORY_REGION, emu indexes it).
func allocRAM(size uint64) ([]byte, error) {
	b, err := unix.Mmap(-1, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil, &Error{Op: "allocate guest RAM", Kind: ErrConfig, Detail: fmt.Sprintf("%d MiB", size>>20), Err: err}
	}
	return b, nil
}

func freeRAM(b []byte) {
	if b != nil {
		_ = unix.Munmap(b)
	}
}

// Page-table entry bits (SDM vol. 3, 4.5).
const (
	ptePresent = 1 << 0
	pteWrite   = 1 << 1
	pteUser    = 1 << 2
	pteHuge    = 1 << 7 // PS: 1 GiB in a PDPTE, 2 MiB in a PDE
	pteNX      = 1 << 63
	pteAddr    = 0x000f_ffff_ffff_f000
)

// Translation is the result of a page walk.
type Translation struct {
	Phys     uint64
	PageSize uint64 // 4 KiB, 2 MiB or 1 GiB
	Writable bool
	NX       bool
}

// Walk translates a guest-virtual address through the 4-level page tables
// rooted at cr3. The tables are guest memory, hence untrusted: every entry
// address is bounds-checked against RAM and the walk is at most four reads.
func Walk(ram []byte, cr3, va uint64) (Translation, error) {
	if !canonical(va) {
		return Translation{}, errorf("page walk", ErrFault, "non-canonical address %#x", va)
	}
	table := cr3 & pteAddr
	writable, nx := true, false
	for level := 3; level >= 0; level-- {
		idx := (va >> (12 + 9*uint(level))) & 0x1ff
		ea := table + idx*8
		if ea+8 > uint64(len(ram)) || ea+8 < ea {
			return Translation{}, errorf("page walk", ErrFault, "level-%d table entry at %#x outside RAM (va %#x)", level+1, ea, va)
		}
		e := binary.LittleEndian.Uint64(ram[ea:])
		if e&ptePresent == 0 {
			return Translation{}, errorf("page walk", ErrFault, "va %#x not mapped (level-%d entry %#x at %#x)", va, level+1, e, ea)
		}
		writable = writable && e&pteWrite != 0
		nx = nx || e&pteNX != 0
		if level == 0 || (e&pteHuge != 0 && (level == 1 || level == 2)) {
			size := uint64(1) << (12 + 9*uint(level))
			base := e & pteAddr &^ (size - 1)
			return Translation{Phys: base + va&(size-1), PageSize: size, Writable: writable, NX: nx}, nil
		}
		if e&pteHuge != 0 {
			return Translation{}, errorf("page walk", ErrFault, "va %#x: PS bit in a level-4 entry", va)
		}
		table = e & pteAddr
	}
	panic("unreachable")
}

func canonical(va uint64) bool {
	top := va >> 47
	return top == 0 || top == 0x1ffff
}

// physRange checks that [pa, pa+n) lies in RAM.
func physRange(ram []byte, pa, n uint64) error {
	if pa+n < pa || pa+n > uint64(len(ram)) {
		return errorf("guest memory", ErrFault, "physical range %#x+%#x outside RAM (%#x bytes)", pa, n, len(ram))
	}
	return nil
}

// virtChunks calls fn for each physically contiguous piece of [va, va+n),
// splitting at page boundaries.
func virtChunks(ram []byte, cr3, va uint64, n int, fn func(pa uint64, off, size int) error) error {
	off := 0
	for off < n {
		t, err := Walk(ram, cr3, va+uint64(off))
		if err != nil {
			return err
		}
		size := int(t.PageSize - (t.Phys & (t.PageSize - 1)))
		if size > n-off {
			size = n - off
		}
		if err := physRange(ram, t.Phys, uint64(size)); err != nil {
			return err
		}
		if err := fn(t.Phys, off, size); err != nil {
			return err
		}
		off += size
	}
	return nil
}
