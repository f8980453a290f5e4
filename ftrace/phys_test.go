package ftrace

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
)

// physFake is fakeMem with the physical access of kvm.Machine: region i
// is at guest-physical (i+1)<<32, mapped by 4 KiB pages; walks counts
// the translations.
type physFake struct {
	*fakeMem
	walks  int
	pwrite int
}

func (m *physFake) VirtPhys(va uint64) (uint64, uint64, error) {
	m.walks++
	for i, r := range m.regions {
		if va >= r.base && va-r.base < uint64(len(r.b)) {
			off := va - r.base
			n := min(4096-va&4095, uint64(len(r.b))-off)
			return uint64(i+1)<<32 + off, n, nil
		}
	}
	return 0, 0, fmt.Errorf("no memory at %#x", va)
}

func (m *physFake) phys(pa uint64, n int) ([]byte, error) {
	i := int(pa>>32) - 1
	if i < 0 || i >= len(m.regions) || pa&0xffffffff+uint64(n) > uint64(len(m.regions[i].b)) {
		return nil, fmt.Errorf("no physical memory at %#x+%d", pa, n)
	}
	off := pa & 0xffffffff
	return m.regions[i].b[off : off+uint64(n)], nil
}

func (m *physFake) ReadPhys(pa uint64, b []byte) error {
	p, err := m.phys(pa, len(b))
	if err != nil {
		return err
	}
	copy(b, p)
	return nil
}

func (m *physFake) WritePhys(pa uint64, b []byte) error {
	p, err := m.phys(pa, len(b))
	if err != nil {
		return err
	}
	m.pwrite++
	copy(p, b)
	return nil
}

// setupAs is setup, the tracer poking through physFake when phys.
func setupAs(t *testing.T, nsites int, phys bool) (*fakeMem, *Tracer, *physFake) {
	t.Helper()
	m, tr := setup(t, nsites)
	if !phys {
		return m, tr, nil
	}
	pm := &physFake{fakeMem: m}
	tr.mem = pm
	return m, tr, pm
}

// Through physical memory a commit walks the page tables once per page
// of text (64 sites in one page: one walk), writes only the sites (no
// cluster write through the virtual path) and leaves the gaps' bytes as
// the guest has them.
func TestCommitPhysWalksOncePerPage(t *testing.T) {
	m, tr, pm := setupAs(t, 64, true)
	var ups []Update
	for i := 0; i < 64; i++ {
		ups = append(ups, Update{textBase + uint64(i*64), 0xffffffffa0000100})
	}
	x, err := tr.Prepare(ups)
	if err != nil {
		t.Fatal(err)
	}
	if err := x.Stage(); err != nil {
		t.Fatal(err)
	}
	text := m.regions[0].b
	text[64*10+20] = 0x77 // a gap byte the guest changed after Stage
	m.paused = true
	pm.walks, pm.pwrite, m.writes = 0, 0, 0
	if err := x.Commit(); err != nil {
		t.Fatal(err)
	}
	if pm.walks != 1 || pm.pwrite != 64 || m.writes != 0 {
		t.Fatalf("commit of 64 sites in one page: %d walks, %d physical writes, %d virtual writes; want 1, 64, 0", pm.walks, pm.pwrite, m.writes)
	}
	if text[64*10+20] != 0x77 {
		t.Fatal("the commit rewrote a byte between sites")
	}
	for i := 0; i < 64; i++ {
		a := uint64(textBase) + uint64(i*64)
		s, _ := tr.Site(a)
		jmp, _ := JmpRel32(a, s.Tramp)
		if !bytes.Equal(text[i*64:i*64+5], jmp[:]) {
			t.Fatalf("site %d: % x, want % x", i, text[i*64:i*64+5], jmp[:])
		}
	}
	x.Finish()
}

// A site the physical path cannot reach in one piece (here: not mapped
// at all) makes it give way to the virtual path, which names the site.
func TestCommitPhysUnmappedFallsBack(t *testing.T) {
	m, tr, _ := setupAs(t, 2, true)
	x, err := tr.Prepare([]Update{{textBase, 0x1234}, {textBase + 64, 0x5678}})
	if err != nil {
		t.Fatal(err)
	}
	if err := x.Stage(); err != nil {
		t.Fatal(err)
	}
	text := m.regions[0].b
	before := append([]byte(nil), text...)
	m.regions[0].base += 64 // the first site is no longer mapped
	m.paused = true
	err = x.Commit()
	m.regions[0].base -= 64
	var e *Error
	if !errors.As(err, &e) || e.Addr != textBase {
		t.Fatalf("want an error naming the unmapped site, got %v", err)
	}
	if !bytes.Equal(text, before) {
		t.Fatal("a failed commit wrote the text")
	}
	x.Abort()
}
