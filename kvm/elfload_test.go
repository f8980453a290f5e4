package kvm

import (
	"encoding/binary"
	"errors"
	"os"
	"strings"
	"testing"

	"klp-kvm/elfpatch"
	"klp-kvm/guestkernel/layout"
)

// The loader reads the kernel through elfpatch: its errors are ErrBadKernel
// wrapping the *elfpatch.Error that says what is wrong.
func TestParseKernelErrors(t *testing.T) {
	le := binary.LittleEndian
	cases := []struct {
		name  string
		image []byte
		want  string
		elf   bool // the cause is an *elfpatch.Error
	}{
		{"empty", nil, "not an ELF file", true},
		{"shared object", testELF(t, func(b []byte) { le.PutUint16(b[16:], 3) }), "type ET_DYN, want ET_EXEC", false},
		{"stripped", testELF(t, func(b []byte) { le.PutUint32(b[len(b)-2*64+4:], 1) }), "no symbol table", true},
		{"segment beyond file", testELF(t, func(b []byte) { le.PutUint64(b[64+8:], uint64(len(b))) }), "beyond the end", true},
		{"no PT_LOAD", testELF(t, func(b []byte) { le.PutUint32(b[64:], 4) }), "no PT_LOAD", false},
		{"paddr wraps", testELF(t, func(b []byte) { le.PutUint64(b[64+24:], ^uint64(0)-0x10) }), "wraps", false},
	}
	for _, c := range cases {
		_, err := ParseKernel(c.image)
		if !errors.Is(err, ErrBadKernel) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want ErrBadKernel containing %q", c.name, err, c.want)
		}
		var ee *elfpatch.Error
		if errors.As(err, &ee) != c.elf {
			t.Errorf("%s: %v: wraps an *elfpatch.Error: %v, want %v", c.name, err, !c.elf, c.elf)
		}
	}
	k, err := ParseKernel(testELF(t, nil))
	if err != nil {
		t.Fatal(err)
	}
	if k.Entry != 0xffffffff81000000 || len(k.Segments) != 1 || k.Segments[0].Paddr != 0x1000000 {
		t.Errorf("kernel %#x %+v", k.Entry, k.Segments)
	}
}

// checkKernel does not trust a parsed kernel's exported Segments either.
func TestCheckKernelSegments(t *testing.T) {
	base, err := elfpatch.ParseKernel(testELF(t, nil))
	if err != nil {
		t.Fatal(err)
	}
	s0 := base.Segments[0]
	seg := func(paddr, memsz uint64) elfpatch.Segment {
		s := s0
		s.Paddr, s.Memsz = paddr, memsz
		return s
	}
	cases := []struct {
		name string
		segs []elfpatch.Segment
		want string
	}{
		{"overlap", []elfpatch.Segment{seg(0x1001000, 0x1000), seg(0x1000000, 0x1001)}, "overlap"},
		{"filesz > memsz", []elfpatch.Segment{seg(0x1000000, 1)}, "filesz"},
		{"outside the file", []elfpatch.Segment{{Paddr: 0x1000000, Offset: 1 << 40, Filesz: 1, Memsz: 1}}, "beyond the file"},
		{"only empty", []elfpatch.Segment{seg(0x1000000, 0)}, "no PT_LOAD"},
	}
	for _, c := range cases {
		k := *base
		k.Segments = c.segs
		if _, err := checkKernel(&k); !errors.Is(err, ErrBadKernel) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want ErrBadKernel containing %q", c.name, err, c.want)
		}
	}
	// Disjoint segments in any order are loaded in paddr order; an empty one
	// is skipped.
	k := *base
	k.Segments = []elfpatch.Segment{seg(0x1002000, 0x1000), seg(0x1000000, 0), seg(0x1000000, 0x1000)}
	b, err := checkKernel(&k)
	if err != nil || len(b.segs) != 2 || b.segs[0].Paddr != 0x1000000 || b.segs[1].Paddr != 0x1002000 {
		t.Fatalf("%+v %v", b, err)
	}
	ram := make([]byte, 32<<20)
	for i := range ram[0x1000000:0x1003000] {
		ram[0x1000000+i] = 0xaa
	}
	l := Layout{RAMSize: uint64(len(ram)), PatchAreaPhys: layout.PatchAreaPhys(uint64(len(ram)), 2<<20), PatchAreaSize: 2 << 20}
	if err := b.load(ram, l); err != nil {
		t.Fatal(err)
	}
	for _, p := range []uint64{0x1000000, 0x1002000} {
		if got := ram[p : p+4]; got[0] != 0xf4 || got[1] != 0xeb || got[2] != 0xfd || got[3] != 0 {
			t.Errorf("at %#x: % x", p, got)
		}
	}
	if ram[0x1001000] != 0xaa {
		t.Error("the gap between segments was written")
	}
}

// One parse serves several users: a Machine can be given the parsed kernel
// instead of the image, and hands it out again.
func TestParsedKernel(t *testing.T) {
	image := testELF(t, nil)
	k, err := ParseKernel(image)
	if err != nil {
		t.Fatal(err)
	}
	for name, cfg := range map[string]Config{
		"parsed only":     {Engine: &fakeEngine{}, ParsedKernel: k},
		"parsed and same": {Engine: &fakeEngine{}, ParsedKernel: k, Kernel: append([]byte(nil), image...)},
	} {
		m, err := New(cfg)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if m.Kernel() != k {
			t.Errorf("%s: Kernel() is not the parsed kernel given", name)
		}
		if got := m.kernel.Symbolize(0xffffffff81000002); got != "boot_entry+0x2" {
			t.Errorf("%s: Symbolize = %q", name, got)
		}
		var code [3]byte
		if err := m.ReadVirt(0xffffffff81000000, code[:]); err != nil || code != [3]byte{0xf4, 0xeb, 0xfd} {
			t.Errorf("%s: kernel text % x %v", name, code, err)
		}
		m.Close()
	}
	other := testELF(t, func(b []byte) { b[len(b)-1] ^= 1 })
	if m, err := New(Config{Engine: &fakeEngine{}, ParsedKernel: k, Kernel: other}); !errors.Is(err, ErrConfig) {
		if m != nil {
			m.Close()
		}
		t.Errorf("different Kernel and ParsedKernel: %v", err)
	}
	dyn, err := elfpatch.ParseKernel(testELF(t, func(b []byte) { binary.LittleEndian.PutUint16(b[16:], 3) }))
	if err != nil {
		t.Fatal(err)
	}
	if m, err := New(Config{Engine: &fakeEngine{}, ParsedKernel: dyn}); !errors.Is(err, ErrBadKernel) {
		if m != nil {
			m.Close()
		}
		t.Errorf("parsed ET_DYN kernel: %v", err)
	}
	// A machine built from bytes parses them once and shares the result.
	m := newFakeMachine(t, 1, nil, nil)
	if m.Kernel() == nil || m.Kernel().Entry != k.Entry {
		t.Errorf("Kernel() of a machine built from bytes: %+v", m.Kernel())
	}
}

func TestSymbolize(t *testing.T) {
	b, err := openKernel(testELF(t, nil), nil)
	if err != nil {
		t.Fatal(err)
	}
	for addr, want := range map[uint64]string{
		0xffffffff81000000: "boot_entry+0x0",
		0xffffffff81000002: "boot_entry+0x2",
		0xffffffff81000003: "", // past its size
		0x1000:             "",
	} {
		if got := b.Symbolize(addr); got != want {
			t.Errorf("Symbolize(%#x) = %q, want %q", addr, got, want)
		}
	}
	if got := (*bootImage)(nil).Symbolize(0xffffffff81000000); got != "" {
		t.Errorf("nil Symbolize = %q", got)
	}
}

// FuzzLoadKernel: whatever the image, the loader returns an ErrBadKernel or
// loads it into RAM without touching the boot area or the patch area.
//
//	go test ./kvm -run XXX -fuzz FuzzLoadKernel -fuzztime 30s -fuzzminimizetime 2s
func FuzzLoadKernel(f *testing.F) {
	f.Add(testELF(f, nil))
	if b, err := os.ReadFile("../test/e2e/testdata/bootguest"); err == nil {
		f.Add(b)
	}
	if b, err := os.ReadFile("../elfpatch/testdata/kernel/vmlinux"); err == nil {
		f.Add(b)
	}
	const size, pa = 64 << 20, 2 << 20
	ram := make([]byte, size)
	l := Layout{RAMSize: size, PatchAreaPhys: layout.PatchAreaPhys(size, pa), PatchAreaSize: pa}
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := openKernel(data, nil)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || !errors.Is(err, ErrBadKernel) {
				t.Fatalf("error %T %v", err, err)
			}
			return
		}
		ram[0], ram[l.PatchAreaPhys] = 0x5a, 0x5a
		if err := b.load(ram, l); err != nil {
			if !errors.Is(err, ErrBadKernel) {
				t.Fatalf("load: %v", err)
			}
			return
		}
		if ram[0] != 0x5a || ram[l.PatchAreaPhys] != 0x5a {
			t.Fatal("a segment was loaded over the boot area or the patch area")
		}
		b.Symbolize(b.elf.Entry)
	})
}
