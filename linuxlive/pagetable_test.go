package linuxlive

import (
	"bytes"
	"encoding/binary"
	"errors"
	"syscall"
	"testing"
)

// fakeMem is guest RAM in a slice.
type fakeMem []byte

func (m fakeMem) ReadPhys(pa uint64, b []byte) error {
	if pa > uint64(len(m)) || uint64(len(b)) > uint64(len(m))-pa {
		return errors.New("outside RAM")
	}
	copy(b, m[pa:])
	return nil
}

func (m fakeMem) WritePhys(pa uint64, b []byte) error {
	if pa > uint64(len(m)) || uint64(len(b)) > uint64(len(m))-pa {
		return errors.New("outside RAM")
	}
	copy(m[pa:], b)
	return nil
}

func (m fakeMem) PhysSize() uint64 { return uint64(len(m)) }

func put(m fakeMem, pa, v uint64)     { binary.LittleEndian.PutUint64(m[pa:], v) }
func get(m fakeMem, pa uint64) uint64 { return binary.LittleEndian.Uint64(m[pa:]) }

// guestTables builds what a 4-level Linux kernel has around the module
// area: PML4 (0x1000)[511] -> PDPT (0x2000)[511] -> PD (0x3000), whose
// entry 0 is a 2 MiB page (the guest's) and entry 1 a page table
// (0x4000) with one PTE (the guest's module).
func guestTables() fakeMem {
	m := make(fakeMem, 1<<20)
	put(m, 0x1000+511*8, 0x2000|pteTable)
	put(m, 0x2000+511*8, 0x3000|pteTable)
	put(m, 0x3000+0*8, 0x200000|ptePresent|ptePS)
	put(m, 0x3000+1*8, 0x4000|pteTable)
	put(m, 0x4000+7*8, 0x9000|pteKernelRW)
	return m
}

const pdBase = 0xffff_ffff_c000_0000 // PML4 511, PDPT 511, PD 0

// pageAlloc hands out pages from 0x80000 up, counting.
type pageAlloc struct{ next, n uint64 }

func (a *pageAlloc) alloc() (uint64, error) {
	a.n++
	a.next += pageSize
	return 0x80000 + a.next - pageSize, nil
}

// TestPageTablesMapUnmap: a page mapped where the guest has no table gets
// a table page from the host's allocator; unmapping it and dropping the
// empty table leaves the guest's page tables byte for byte as before.
func TestPageTablesMapUnmap(t *testing.T) {
	m := guestTables()
	before := bytes.Clone(m[:0x10000])
	pt := &pageTables{mem: m, root: 0x1000, levels: 4}
	va := uint64(pdBase + 5<<21 + 3*pageSize)
	if err := pt.checkFree(va); err != nil {
		t.Fatalf("checkFree of an unmapped address: %v", err)
	}
	a := &pageAlloc{}
	var made []created
	if err := pt.mapPage(va, 0xabc000, pteKernelROX, a.alloc, &made); err != nil {
		t.Fatal(err)
	}
	if len(made) != 1 || a.n != 1 || get(m, 0x3000+5*8) != 0x80000|pteTable {
		t.Fatalf("created %+v, PD[5] %#x", made, get(m, 0x3000+5*8))
	}
	if got := get(m, 0x80000+3*8); got != 0xabc000|pteKernelROX {
		t.Errorf("PTE %#x", got)
	}
	if err := pt.checkFree(va); !errors.Is(err, ErrCollision) || !errors.Is(err, syscall.EEXIST) {
		t.Errorf("checkFree of a mapped page: %v, want ErrCollision (EEXIST)", err)
	}
	// A second page under the same table uses it.
	if err := pt.mapPage(va+pageSize, 0xabd000, pteKernelRO|pteNX, a.alloc, &made); err != nil || a.n != 1 {
		t.Fatalf("second page: %v, %d tables", err, a.n)
	}
	// unmapPage refuses a PTE that is not the host's page.
	if err := pt.unmapPage(va, 0x123000); !errors.Is(err, ErrGuest) {
		t.Errorf("unmap of a page that is not ours: %v", err)
	}
	for i, pa := range []uint64{0xabc000, 0xabd000} {
		if err := pt.unmapPage(va+uint64(i)*pageSize, pa); err != nil {
			t.Fatal(err)
		}
	}
	freed, kept, err := pt.dropEmpty(made)
	if err != nil || len(freed) != 1 || freed[0] != 0x80000 || len(kept) != 0 {
		t.Fatalf("dropEmpty: freed %v kept %v, %v", freed, kept, err)
	}
	if !bytes.Equal(m[:0x10000], before) {
		t.Error("the guest's page tables differ from before")
	}
}

// TestPageTablesCollisions: the guest's own mappings are never written.
func TestPageTablesCollisions(t *testing.T) {
	m := guestTables()
	pt := &pageTables{mem: m, root: 0x1000, levels: 4}
	a := &pageAlloc{}
	var made []created
	for _, c := range []struct {
		name string
		va   uint64
	}{
		{"inside the guest's 2 MiB page", pdBase + 0x5000},
		{"the guest's PTE", pdBase + 1<<21 + 7*pageSize},
	} {
		if err := pt.checkFree(c.va); !errors.Is(err, ErrCollision) {
			t.Errorf("%s: checkFree %v, want ErrCollision", c.name, err)
		}
		if err := pt.mapPage(c.va, 0x5000, pteKernelRW, a.alloc, &made); !errors.Is(err, ErrCollision) {
			t.Errorf("%s: mapPage %v, want ErrCollision", c.name, err)
		}
	}
	if get(m, 0x4000+7*8) != 0x9000|pteKernelRW || a.n != 0 {
		t.Error("the guest's mapping was changed, or a table allocated")
	}
	// A free slot next to the guest's PTE: mapped in the guest's table,
	// no table of ours.
	if err := pt.mapPage(pdBase+1<<21+8*pageSize, 0x5000, pteKernelRW, a.alloc, &made); err != nil || len(made) != 0 {
		t.Errorf("map beside the guest's page: %v, made %v", err, made)
	}
}

// TestPageTablesHostile: a guest table pointing outside RAM, or a
// non-present entry with bits set, is an error, never a panic or a write.
func TestPageTablesHostile(t *testing.T) {
	m := guestTables()
	put(m, 0x3000+2*8, 0x7fff_ffff_f000|pteTable) // outside RAM
	put(m, 0x3000+3*8, 0x1234_0000)               // not present, not empty
	pt := &pageTables{mem: m, root: 0x1000, levels: 4}
	a := &pageAlloc{}
	var made []created
	if err := pt.mapPage(pdBase+2<<21, 0x5000, pteKernelRW, a.alloc, &made); !errors.Is(err, ErrGuest) {
		t.Errorf("table outside RAM: %v, want ErrGuest", err)
	}
	if err := pt.mapPage(pdBase+3<<21, 0x5000, pteKernelRW, a.alloc, &made); !errors.Is(err, ErrCollision) {
		t.Errorf("not-present entry with bits: %v, want ErrCollision", err)
	}
	// A root outside RAM.
	bad := &pageTables{mem: m, root: 1 << 40, levels: 4}
	if err := bad.checkFree(pdBase); !errors.Is(err, ErrGuest) {
		t.Errorf("root outside RAM: %v", err)
	}
}

// TestPageTables5Level: with LA57 the walk has one more level.
func TestPageTables5Level(t *testing.T) {
	m := make(fakeMem, 1<<20)
	put(m, 0x1000+511*8, 0x2000|pteTable) // PML5
	pt := &pageTables{mem: m, root: 0x1000, levels: 5}
	a := &pageAlloc{}
	var made []created
	if err := pt.mapPage(pdBase, 0x5000, pteKernelROX, a.alloc, &made); err != nil {
		t.Fatal(err)
	}
	if len(made) != 3 || get(m, 0x2000+511*8) != 0x80000|pteTable {
		t.Fatalf("made %+v", made)
	}
	if err := pt.unmapPage(pdBase, 0x5000); err != nil {
		t.Fatal(err)
	}
	freed, _, err := pt.dropEmpty(made)
	if err != nil || len(freed) != 3 || get(m, 0x2000+511*8) != 0 {
		t.Errorf("dropEmpty: %v, %v", freed, err)
	}
}

func TestJmp(t *testing.T) {
	const site = 0xffff_ffff_8110_0004
	b := jmpBytes(site, site+5+0x100)
	if b != [5]byte{0xe9, 0, 1, 0, 0} {
		t.Errorf("jmp forward % x", b[:])
	}
	b = jmpBytes(site, site)
	if b != [5]byte{0xe9, 0xfb, 0xff, 0xff, 0xff} {
		t.Errorf("jmp to itself % x", b[:])
	}
	if _, ok := rel32(site, ModulesEnd-pageSize); !ok {
		t.Error("the module area's top is out of a rel32's reach from kernel text")
	}
	if _, ok := rel32(site, site-3<<30); ok {
		t.Error("3 GiB away is in reach")
	}
}

func TestArea(t *testing.T) {
	a := newArea(0x100000, 4*pageSize)
	var got []uint64
	for range 4 {
		pa, err := a.alloc()
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, pa)
	}
	if _, err := a.alloc(); !errors.Is(err, ErrNoSpace) || !errors.Is(err, syscall.ENOMEM) {
		t.Errorf("full area: %v, want ErrNoSpace (ENOMEM)", err)
	}
	a.free(got[2])
	a.free(0x12345000) // not ours: ignored
	if pa, err := a.alloc(); err != nil || pa != got[2] || a.inUse != 4 {
		t.Errorf("realloc %#x %v, in use %d", pa, err, a.inUse)
	}
}

// FuzzPageTables walks and edits arbitrary "page tables": errors, never
// a panic, and never a write outside RAM.
func FuzzPageTables(f *testing.F) {
	f.Add(bytes.Clone(guestTables()[:0x5000]), uint64(pdBase+5<<21))
	f.Fuzz(func(t *testing.T, data []byte, va uint64) {
		m := make(fakeMem, 0x8000)
		copy(m, data)
		pt := &pageTables{mem: m, root: 0, levels: 4 + int(va&1)}
		_ = pt.checkFree(va)
		n := uint64(0)
		alloc := func() (uint64, error) {
			if n == 3 {
				return 0, errf("alloc", "", ErrNoSpace, "full")
			}
			n++
			return 0x4000 + n*pageSize, nil
		}
		var made []created
		if pt.mapPage(va, 0x1000, pteKernelRW, alloc, &made) == nil {
			_ = pt.unmapPage(va, 0x1000)
		}
		_, _, _ = pt.dropEmpty(made)
	})
}
