package linuxlive

import (
	"encoding/binary"
)

// Page-table entry bits (x86-64) and the kernel's protections for them
// (arch/x86/include/asm/pgtable_types.h of Linux 6.1).
const (
	ptePresent = 1 << 0
	pteRW      = 1 << 1
	pteUser    = 1 << 2
	pteA       = 1 << 5
	pteD       = 1 << 6
	ptePS      = 1 << 7
	pteG       = 1 << 8
	pteNX      = 1 << 63
	pteAddr    = 0x000f_ffff_ffff_f000

	// pteTable is _KERNPG_TABLE: a kernel page-table page.
	pteTable = ptePresent | pteRW | pteA | pteD
	// pteKernelROX, pteKernelRO, pteKernel: __PAGE_KERNEL_ROX,
	// __PAGE_KERNEL_RO (+NX), __PAGE_KERNEL (+NX).
	pteKernelROX = ptePresent | pteA | pteD | pteG
	pteKernelRO  = ptePresent | pteA | pteD | pteG
	pteKernelRW  = ptePresent | pteRW | pteA | pteD | pteG

	pageSize = 4096
)

// PhysMem is guest-physical memory the host reads and writes.
type PhysMem interface {
	ReadPhys(pa uint64, b []byte) error
	WritePhys(pa uint64, b []byte) error
	PhysSize() uint64
}

// pageTables edits the guest kernel's own page tables (init_top_pgt,
// whose top-level kernel entries every process shares) from the host.
// Every entry read is untrusted: a table address outside RAM or a large
// page where a table must be is an error, never a panic; the walk is at
// most 5 levels by construction.
type pageTables struct {
	mem    PhysMem
	root   uint64 // the top-level table's physical address
	levels int    // 4, or 5 with LA57
}

// created is a table page the host added: where it is and the entry that
// points to it, so that it can be taken out again when empty.
type created struct {
	table, parentEntry uint64
}

func (pt *pageTables) read(pa uint64) (uint64, error) {
	var b [8]byte
	if pa+8 > pt.mem.PhysSize() || pa+8 < pa {
		return 0, errf("page walk", "", ErrGuest, "page-table entry at %#x is outside RAM", pa)
	}
	if err := pt.mem.ReadPhys(pa, b[:]); err != nil {
		return 0, wrap("page walk", "", ErrGuest, err, "page-table entry at %#x", pa)
	}
	return binary.LittleEndian.Uint64(b[:]), nil
}

func (pt *pageTables) write(pa, v uint64) error {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], v)
	if err := pt.mem.WritePhys(pa, b[:]); err != nil {
		return wrap("page tables", "", ErrGuest, err, "write entry at %#x", pa)
	}
	return nil
}

// index is va's index in the table of the given level (1 = PTE).
func index(va uint64, level int) uint64 { return (va >> (12 + 9*uint(level-1))) & 0x1ff }

// entryFor walks to va's level-1 entry. With alloc, missing tables are
// created (zeroed pages from alloc) and recorded in made; without, it
// stops at the first missing one and returns pa 0. A present large page,
// or a table outside RAM, on the way is ErrCollision/ErrGuest.
func (pt *pageTables) entryFor(va uint64, alloc func() (uint64, error), made *[]created) (uint64, error) {
	table := pt.root &^ 0xfff
	for level := pt.levels; level > 1; level-- {
		ea := table + index(va, level)*8
		e, err := pt.read(ea)
		if err != nil {
			return 0, err
		}
		switch {
		case e&ptePresent == 0:
			if alloc == nil {
				return 0, nil
			}
			if e != 0 {
				// A not-present entry with bits set (a swap entry is
				// never in kernel tables): not ours to overwrite.
				return 0, errf("map", "", ErrCollision, "level-%d entry for %#x is %#x (not present, not empty)", level, va, e)
			}
			page, err := alloc()
			if err != nil {
				return 0, err
			}
			if err := pt.write(ea, page|pteTable); err != nil {
				return 0, err
			}
			*made = append(*made, created{table: page, parentEntry: ea})
			table = page
		case e&ptePS != 0:
			return 0, errf("map", "", ErrCollision, "%#x lies in a large page the guest maps (level-%d entry %#x)", va, level, e)
		default:
			table = e & pteAddr
			if table+pageSize > pt.mem.PhysSize() {
				return 0, errf("page walk", "", ErrGuest, "level-%d entry %#x for %#x points outside RAM", level, e, va)
			}
		}
	}
	return table + index(va, 1)*8, nil
}

// checkFree verifies that the guest maps nothing at va's page.
func (pt *pageTables) checkFree(va uint64) error {
	ea, err := pt.entryFor(va, nil, nil)
	if err != nil || ea == 0 {
		return err
	}
	return pt.unused(va, ea)
}

// unused verifies that the PTE at ea, for va, is empty: the host never
// writes over an entry the guest has.
func (pt *pageTables) unused(va, ea uint64) error {
	e, err := pt.read(ea)
	if err != nil {
		return err
	}
	if e != 0 {
		return errf("map", "", ErrCollision, "%#x is mapped by the guest (PTE %#x at %#x)", va, e, ea)
	}
	return nil
}

// mapPage maps va's page to pa with the leaf bits, creating tables.
func (pt *pageTables) mapPage(va, pa, bits uint64, alloc func() (uint64, error), made *[]created) error {
	ea, err := pt.entryFor(va, alloc, made)
	if err != nil {
		return err
	}
	if err := pt.unused(va, ea); err != nil {
		return err
	}
	return pt.write(ea, pa&pteAddr|bits)
}

// unmapPage clears va's PTE if it maps pa (and only then: the guest's
// own mappings are never touched).
func (pt *pageTables) unmapPage(va, pa uint64) error {
	ea, err := pt.entryFor(va, nil, nil)
	if err != nil || ea == 0 {
		return err
	}
	e, err := pt.read(ea)
	if err != nil {
		return err
	}
	if e&ptePresent == 0 || e&pteAddr != pa&pteAddr {
		return errf("unmap", "", ErrGuest, "PTE for %#x is %#x, not the host's page %#x", va, e, pa)
	}
	return pt.write(ea, 0)
}

// dropEmpty takes out the tables the host created that are empty again,
// newest first (a table's children were created after it), and returns
// the pages freed.
func (pt *pageTables) dropEmpty(made []created) (freed []uint64, kept []created, err error) {
	buf := make([]byte, pageSize)
	for i := len(made) - 1; i >= 0; i-- {
		c := made[i]
		if err := pt.mem.ReadPhys(c.table, buf); err != nil {
			return freed, append(kept, made[:i+1]...), wrap("unmap", "", ErrGuest, err, "table page %#x", c.table)
		}
		empty := true
		for _, b := range buf {
			if b != 0 {
				empty = false
				break
			}
		}
		if !empty {
			kept = append(kept, c)
			continue
		}
		if err := pt.write(c.parentEntry, 0); err != nil {
			return freed, append(kept, made[:i+1]...), err
		}
		freed = append(freed, c.table)
	}
	return freed, kept, nil
}
