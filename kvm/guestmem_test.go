package kvm

import (
	"bytes"
	"errors"
	"testing"

	"klp-kvm/guestkernel/layout"
)

// VirtPhys gives the physical place of a virtual address and the bytes
// left in its page; past the mapping it is a fault.
func TestVirtPhys(t *testing.T) {
	m := newFakeMachine(t, 1, nil, nil)
	va := uint64(layout.PatchAreaVirt) + 0x1234
	pa, n, err := m.VirtPhys(va)
	if err != nil || pa != m.layout.PatchAreaPhys+0x1234 || n == 0 || (pa+n)&0xfff != 0 {
		t.Fatalf("VirtPhys(%#x) = %#x, %#x, %v", va, pa, n, err)
	}
	if _, _, err := m.VirtPhys(layout.PatchAreaVirt + m.layout.PatchAreaSize); !errors.Is(err, ErrFault) {
		t.Fatalf("past the patch area: %v", err)
	}
}

// EqualVirt compares in place across pages and faults on unmapped bytes.
func TestEqualVirt(t *testing.T) {
	m := newFakeMachine(t, 1, nil, nil)
	va := uint64(layout.PatchAreaVirt) + 0xff8 // across a page boundary
	b := bytes.Repeat([]byte{0x5a}, 32)
	if err := m.WriteVirt(va, b); err != nil {
		t.Fatal(err)
	}
	if eq, err := m.EqualVirt(va, b); !eq || err != nil {
		t.Fatalf("same bytes: %v %v", eq, err)
	}
	b[20] = 0
	if eq, err := m.EqualVirt(va, b); eq || err != nil {
		t.Fatalf("one byte differs: %v %v", eq, err)
	}
	end := layout.PatchAreaVirt + m.layout.PatchAreaSize
	if _, err := m.EqualVirt(end-8, make([]byte, 16)); !errors.Is(err, ErrFault) {
		t.Fatalf("across the end: %v", err)
	}
}
