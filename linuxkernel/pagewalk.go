package linuxkernel

// Guest page-table walker, x86-64 4-level and 5-level (CR4.LA57), with
// 1 GiB and 2 MiB pages. Permission bits (NX, U/S, R/W) are ignored: the
// host reads what the kernel could. Every table read is bounds-checked
// against RAM, and the walk is at most 5 levels deep by construction.

const (
	pteP      = 1 << 0
	ptePS     = 1 << 7
	pteAddr   = 0x000f_ffff_ffff_f000 // bits 51:12
	pageSize  = 4096
	maxLevels = 5
)

// AddressSpace translates guest-virtual addresses through one set of page
// tables.
type AddressSpace struct {
	Mem  PhysMem
	Root uint64 // CR3 (its low 12 bits and PCID are ignored)
	LA57 bool   // 5-level paging
}

// Translate gives the guest-physical address of va and the size of the
// page that maps it.
func (as *AddressSpace) Translate(va uint64) (pa, size uint64, err error) {
	var e [8]byte
	return as.translate(va, e[:])
}

// translate is Translate with the caller's 8-byte buffer for the table
// entries (they escape through PhysMem's ReadPhys: a buffer on the
// caller's heap object keeps a hot path, the unwinder's, from
// allocating one per walk).
func (as *AddressSpace) translate(va uint64, e []byte) (pa, size uint64, err error) {
	levels := 4
	if as.LA57 {
		levels = 5
	}
	// A canonical address: bits above the top bit of the walk copy it.
	top := uint(12 + 9*levels - 1)
	if s := int64(va) >> top; s != 0 && s != -1 {
		return 0, 0, errf("page walk", ErrBounds, "%#x is not canonical for %d-level paging", va, levels)
	}
	table := as.Root & pteAddr
	e = e[:8]
	for level := levels; level >= 1; level-- {
		shift := uint(12 + 9*(level-1))
		idx := (va >> shift) & 0x1ff
		if err := readPhys(as.Mem, table+idx*8, e); err != nil {
			return 0, 0, wrap("page walk", ErrBounds, err, "level-%d table at %#x for %#x", level, table, va)
		}
		pte := le64(e)
		if pte&pteP == 0 {
			return 0, 0, errf("page walk", ErrBounds, "%#x not mapped (level-%d entry %#x at %#x)", va, level, pte, table+idx*8)
		}
		if level == 1 || (pte&ptePS != 0 && (level == 2 || level == 3)) {
			size := uint64(1) << shift
			base := pte & pteAddr &^ (size - 1)
			pa := base | va&(size-1)
			if pa >= as.Mem.PhysSize() {
				return 0, 0, errf("page walk", ErrBounds, "%#x maps to %#x, outside RAM", va, pa)
			}
			return pa, size, nil
		}
		if pte&ptePS != 0 {
			return 0, 0, errf("page walk", ErrFormat, "PS bit in level-%d entry %#x for %#x", level, pte, va)
		}
		table = pte & pteAddr
	}
	return 0, 0, errf("page walk", ErrLimit, "%#x: walk deeper than %d levels", va, maxLevels)
}

// Read copies guest-virtual [va, va+len(b)) into b, page by page (the
// range may cross pages mapped anywhere in RAM).
func (as *AddressSpace) Read(va uint64, b []byte) error {
	var e [8]byte
	return as.read(va, b, e[:])
}

// read is Read with the caller's buffer for page-table entries.
func (as *AddressSpace) read(va uint64, b, e []byte) error {
	if uint64(len(b)) > 0 && va+uint64(len(b))-1 < va {
		return errf("read virt", ErrBounds, "[%#x, +%#x) wraps around", va, len(b))
	}
	for off := 0; off < len(b); {
		pa, size, err := as.translate(va+uint64(off), e)
		if err != nil {
			return err
		}
		n := int(min(uint64(len(b)-off), size-(pa&(size-1))))
		if err := readPhys(as.Mem, pa, b[off:off+n]); err != nil {
			return wrap("read virt", ErrBounds, err, "%#x", va+uint64(off))
		}
		off += n
	}
	return nil
}

// U64 reads a little-endian 64-bit value at va.
func (as *AddressSpace) U64(va uint64) (uint64, error) {
	var b [8]byte
	if err := as.Read(va, b[:]); err != nil {
		return 0, err
	}
	return le64(b[:]), nil
}

// U32 reads a little-endian 32-bit value at va.
func (as *AddressSpace) U32(va uint64) (uint32, error) {
	var b [4]byte
	if err := as.Read(va, b[:]); err != nil {
		return 0, err
	}
	return le32(b[:]), nil
}
