package bzimage

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// synthetic builds a minimal valid bzImage: 4 setup sectors plus the boot
// sector, and a protected-mode part of kernelLen bytes.
func synthetic(kernelLen int) []byte {
	const sects = 4
	b := make([]byte, (sects+1)*SectorSize+kernelLen)
	h := SetupHeader{
		SetupSects: sects, Syssize: uint32(kernelLen / 16), BootFlag: BootFlag, Jump: 0x66eb,
		Header: Magic, Version: 0x020f, KernelVersion: 0x100, Loadflags: LoadedHigh,
		Code32Start: 0x100000, InitrdAddrMax: 0x7fffffff, KernelAlignment: 0x200000,
		RelocatableKernel: 1, MinAlignment: 21, Xloadflags: XLFKernel64 | XLFCanBeLoadedAbove4G,
		CmdlineSize: 2047, PayloadOffset: 0x300, PayloadLength: 0x100,
		PrefAddress: 0x1000000, InitSize: uint32(kernelLen) * 4,
	}
	var buf bytes.Buffer
	if err := binary.Write(&buf, binary.LittleEndian, &h); err != nil {
		panic(err)
	}
	copy(b[HeaderOffset:], buf.Bytes())
	copy(b[0x300:], "6.1.0-test (synthetic)\x00")
	return b
}

func TestHeaderSize(t *testing.T) {
	if n := binary.Size(SetupHeader{}); n != SetupHeaderSize {
		t.Fatalf("SetupHeader is %d bytes, struct setup_header is %d", n, SetupHeaderSize)
	}
}

func TestParseSynthetic(t *testing.T) {
	b := synthetic(0x4000)
	if !IsBzImage(b) {
		t.Fatal("IsBzImage = false")
	}
	img, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(img.Kernel) != 0x4000 || &img.Kernel[0] != &b[5*SectorSize] {
		t.Errorf("kernel: %d bytes at the wrong place", len(img.Kernel))
	}
	if img.Version != "6.1.0-test (synthetic)" {
		t.Errorf("version %q", img.Version)
	}
	if got := img.LoadAddr(0x100000); got != 0x1000000 {
		t.Errorf("LoadAddr(1M) = %#x, want pref_address", got)
	}
	if got := img.LoadAddr(0x1000001); got != 0x1200000 {
		t.Errorf("LoadAddr above pref = %#x, want next 2 MiB boundary 0x1200000", got)
	}
}

// TestParseRejects changes one field at a time and checks the error's
// kind and offset.
func TestParseRejects(t *testing.T) {
	put16 := func(off int, v uint16) func([]byte) {
		return func(b []byte) { binary.LittleEndian.PutUint16(b[off:], v) }
	}
	put32 := func(off int, v uint32) func([]byte) {
		return func(b []byte) { binary.LittleEndian.PutUint32(b[off:], v) }
	}
	put8 := func(off int, v uint8) func([]byte) { return func(b []byte) { b[off] = v } }
	for _, c := range []struct {
		name string
		mod  func([]byte)
		kind error
		off  int64
	}{
		{"boot flag", put16(offBootFlag, 0), ErrFormat, offBootFlag},
		{"magic", put32(MagicOffset, 0x12345678), ErrFormat, MagicOffset},
		{"old protocol", put16(offVersion, 0x020a), ErrUnsupported, offVersion},
		{"32-bit only", put16(offXloadflags, 0), ErrUnsupported, offXloadflags},
		{"zImage", put8(offLoadflags, 0), ErrFormat, offLoadflags},
		{"setup sects huge", put8(offSetupSects, 200), ErrFormat, offSetupSects},
		{"syssize beyond file", put32(offSyssize, 0x10000), ErrFormat, offSyssize},
		{"payload beyond", put32(offPayloadOffset, 0x3fff), ErrFormat, offPayloadOffset},
		{"relocatable 7", put8(offRelocatable, 7), ErrFormat, offRelocatable},
		{"alignment not pow2", put32(offKernelAlign, 0x300000), ErrFormat, offKernelAlign},
		{"pref below 1M", put32(offPrefAddress, 0x1000), ErrFormat, offPrefAddress},
		{"init_size small", put32(offInitSize, 0x100), ErrFormat, offInitSize},
		{"cmdline_size 0", put32(offCmdlineSize, 0), ErrFormat, offCmdlineSize},
		{"initrd max low", put32(offInitrdAddrMax, 0x1000), ErrFormat, offInitrdAddrMax},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := synthetic(0x4000)
			c.mod(b)
			_, err := Parse(b)
			var e *Error
			if !errors.As(err, &e) || !errors.Is(err, c.kind) || e.Offset != c.off {
				t.Fatalf("Parse = %v, want kind %v at offset %#x", err, c.kind, c.off)
			}
		})
	}
	if _, err := Parse(synthetic(0x4000)[:0x200]); !errors.Is(err, ErrFormat) {
		t.Errorf("truncated: %v", err)
	}
	b := synthetic(0x4000)
	b[offSetupSects] = 0 // 0 means 4: still valid
	if _, err := Parse(b); err != nil {
		t.Errorf("setup_sects 0: %v", err)
	}
}

func TestZeroPage(t *testing.T) {
	img, err := Parse(synthetic(0x4000))
	if err != nil {
		t.Fatal(err)
	}
	e820 := []E820Entry{{0, 0x9fc00, E820RAM}, {0x9fc00, 0x60400, E820Reserved}, {0x100000, 0x1ff00000, E820RAM}}
	zp, err := img.ZeroPage(BootParams{CmdLinePtr: 0x20000, RamdiskImage: 0x1f000000, RamdiskSize: 0x123456, E820: e820})
	if err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	for _, c := range []struct {
		name string
		off  int
		size int
		want uint64
	}{
		{"type_of_loader", 0x210, 1, 0xff},
		{"loadflags", 0x211, 1, LoadedHigh | CanUseHeap},
		{"cmd_line_ptr", 0x228, 4, 0x20000},
		{"ramdisk_image", 0x218, 4, 0x1f000000},
		{"ramdisk_size", 0x21c, 4, 0x123456},
		{"header", 0x202, 4, Magic},
		{"version", 0x206, 2, 0x020f},
		{"e820_entries", ZPE820Entries, 1, 3},
		{"e820[1].addr", ZPE820Table + 20, 8, 0x9fc00},
		{"e820[1].type", ZPE820Table + 20 + 16, 4, E820Reserved},
		{"e820[2].size", ZPE820Table + 40 + 8, 8, 0x1ff00000},
		{"ext_ramdisk_image", ZPExtRamdiskImage, 4, 0},
	} {
		var got uint64
		switch c.size {
		case 1:
			got = uint64(zp[c.off])
		case 2:
			got = uint64(le.Uint16(zp[c.off:]))
		case 4:
			got = uint64(le.Uint32(zp[c.off:]))
		case 8:
			got = le.Uint64(zp[c.off:])
		}
		if got != c.want {
			t.Errorf("%s at %#x = %#x, want %#x", c.name, c.off, got, c.want)
		}
	}
	// High bits go to the ext_ fields.
	zp, err = img.ZeroPage(BootParams{CmdLinePtr: 0x1_0000_2000, RamdiskImage: 0x1_2000_0000, RamdiskSize: 0x1000, E820: e820})
	if err != nil {
		t.Fatal(err)
	}
	if le.Uint32(zp[ZPExtCmdLinePtr:]) != 1 || le.Uint32(zp[0x228:]) != 0x2000 || le.Uint32(zp[ZPExtRamdiskImage:]) != 1 {
		t.Errorf("ext_ fields: cmd %#x/%#x ramdisk %#x", le.Uint32(zp[ZPExtCmdLinePtr:]), le.Uint32(zp[0x228:]), le.Uint32(zp[ZPExtRamdiskImage:]))
	}
	for _, bad := range []BootParams{
		{CmdLinePtr: 0x20000},
		{CmdLinePtr: 0, E820: e820},
		{CmdLinePtr: 0x20000, E820: make([]E820Entry, 129)},
	} {
		if _, err := img.ZeroPage(bad); !errors.Is(err, ErrLayout) {
			t.Errorf("ZeroPage(%d entries, cmd %#x) = %v, want ErrLayout", len(bad.E820), bad.CmdLinePtr, err)
		}
	}
	img.Header.Xloadflags &^= XLFCanBeLoadedAbove4G
	if _, err := img.ZeroPage(BootParams{CmdLinePtr: 0x20000, RamdiskImage: 0x7fff0000, RamdiskSize: 0x20000, E820: e820}); !errors.Is(err, ErrLayout) {
		t.Errorf("initrd above initrd_addr_max: %v", err)
	}
}

// TestDebianKernel parses the kernel the nested tier boots (Debian 12's
// bzImage) when test/nested/prepare.sh has cached it.
func TestDebianKernel(t *testing.T) {
	home, _ := os.UserHomeDir()
	p := filepath.Join(home, ".cache/klp-kvm/nested/current/vmlinuz")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Skipf("no cached Debian kernel (%v); test/nested/prepare.sh fetches it", err)
	}
	if !IsBzImage(b) {
		t.Fatal("IsBzImage = false")
	}
	img, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	h := img.Header
	t.Logf("%s: protocol %#x, setup_sects %d, pref %#x, align %#x, init_size %#x, xloadflags %#x, cmdline_size %d, initrd_addr_max %#x",
		img.Version, h.Version, h.SetupSects, h.PrefAddress, h.KernelAlignment, h.InitSize, h.Xloadflags, h.CmdlineSize, h.InitrdAddrMax)
	if h.RelocatableKernel != 1 || h.Xloadflags&XLFKernel64 == 0 || img.Version == "" {
		t.Errorf("Debian's kernel: relocatable %d, xloadflags %#x, version %q", h.RelocatableKernel, h.Xloadflags, img.Version)
	}
	// The payload is xz (Debian's CONFIG_KERNEL_XZ): magic FD 37 7A 58 5A 00.
	pl := img.Kernel[h.PayloadOffset : h.PayloadOffset+6]
	if !bytes.Equal(pl, []byte{0xfd, '7', 'z', 'X', 'Z', 0}) {
		t.Errorf("payload starts % x, want the xz magic", pl)
	}
}
