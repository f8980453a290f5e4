package kvm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"klp-kvm/kvm/bzimage"
	"klp-kvm/kvm/engine"
)

// fakeBzImage is a minimal bzImage: 4 setup sectors, then a protected-mode
// kernel of n bytes filled with a pattern.
func fakeBzImage(n int) []byte {
	b := make([]byte, 5*512+n)
	h := bzimage.SetupHeader{
		SetupSects: 4, Syssize: uint32(n / 16), BootFlag: bzimage.BootFlag, Header: bzimage.Magic, Version: 0x020f,
		Loadflags: bzimage.LoadedHigh, InitrdAddrMax: 0x7fffffff, KernelAlignment: 0x200000, RelocatableKernel: 1,
		MinAlignment: 21, Xloadflags: bzimage.XLFKernel64 | bzimage.XLFCanBeLoadedAbove4G, CmdlineSize: 2047,
		PrefAddress: 0x1000000, InitSize: 0x4000000,
	}
	var buf bytes.Buffer
	binary.Write(&buf, binary.LittleEndian, &h)
	copy(b[bzimage.HeaderOffset:], buf.Bytes())
	for i := 5 * 512; i < len(b); i++ {
		b[i] = byte(i * 7)
	}
	return b
}

func TestPlanLinux(t *testing.T) {
	img, err := bzimage.Parse(fakeBzImage(0x10000))
	if err != nil {
		t.Fatal(err)
	}
	const ram = 512 << 20
	p, err := planLinux(img, ram, 0, "console=ttyS0", 0x123456)
	if err != nil {
		t.Fatal(err)
	}
	if p.load != 0x1000000 {
		t.Errorf("load %#x, want pref_address", p.load)
	}
	if p.initrd%4096 != 0 || p.initrd+0x123456 > ram || ram-(p.initrd+0x123456) >= 4096 {
		t.Errorf("initrd at %#x: want page-aligned at the top of RAM", p.initrd)
	}
	if string(p.cmdline) != "console=ttyS0\x00" {
		t.Errorf("cmdline %q", p.cmdline)
	}
	want := []bzimage.E820Entry{{Addr: 0, Size: 0x9fc00, Type: 1}, {Addr: 0x9fc00, Size: 0x60400, Type: 2}, {Addr: 0x100000, Size: ram - 0x100000, Type: 1}}
	if len(p.e820) != len(want) {
		t.Fatalf("e820 %v", p.e820)
	}
	for i := range want {
		if p.e820[i] != want[i] {
			t.Errorf("e820[%d] = %+v, want %+v", i, p.e820[i], want[i])
		}
	}
	le := binary.LittleEndian
	if le.Uint32(p.zeroPage[0x228:]) != linuxCmdline || le.Uint32(p.zeroPage[0x218:]) != uint32(p.initrd) || p.zeroPage[0x210] != 0xff {
		t.Errorf("zero page: cmd_line_ptr %#x ramdisk_image %#x type_of_loader %#x", le.Uint32(p.zeroPage[0x228:]), le.Uint32(p.zeroPage[0x218:]), p.zeroPage[0x210])
	}

	// The initrd goes under initrd_addr_max when RAM reaches above it.
	img.Header.InitrdAddrMax = 0x0fffffff
	if p, err = planLinux(img, ram, 0, "x", 0x1000); err != nil || p.initrd != 0x0ffff000 {
		t.Errorf("initrd under initrd_addr_max: %#x, %v", p.initrd, err)
	}
	img.Header.InitrdAddrMax = 0x7fffffff

	for _, c := range []struct {
		name    string
		ram     uint64
		patch   uint64
		cmdline string
		initrd  uint64
	}{
		{"kernel beyond RAM", 64 << 20, 0, "x", 0},
		{"initrd over the kernel", 128 << 20, 0, "x", 100 << 20},
		{"long cmdline", ram, 0, string(make([]byte, 2048)), 0},
		{"patch area not 2 MiB aligned", ram, 3 << 20, "x", 0},
		{"patch area over a quarter of RAM", ram, 130 << 20, "x", 0},
		{"kernel in the patch area", 96 << 20, 24 << 20, "x", 0},
	} {
		if _, err := planLinux(img, c.ram, c.patch, c.cmdline, c.initrd); !errors.Is(err, ErrConfig) {
			t.Errorf("%s: %v, want ErrConfig", c.name, err)
		}
	}
}

// TestPlanLinuxPatchArea: the patch area is the top of RAM, reserved in
// the e820 map (the guest never allocates or direct-maps it), and the
// initrd goes below it.
func TestPlanLinuxPatchArea(t *testing.T) {
	img, err := bzimage.Parse(fakeBzImage(0x10000))
	if err != nil {
		t.Fatal(err)
	}
	const ram, area = 512 << 20, 16 << 20
	p, err := planLinux(img, ram, area, "x", 0x5000)
	if err != nil {
		t.Fatal(err)
	}
	if p.patchArea != ram-area {
		t.Errorf("patch area at %#x, want %#x", p.patchArea, ram-area)
	}
	want := []bzimage.E820Entry{{Addr: 0, Size: 0x9fc00, Type: 1}, {Addr: 0x9fc00, Size: 0x60400, Type: 2},
		{Addr: 0x100000, Size: ram - area - 0x100000, Type: 1}, {Addr: ram - area, Size: area, Type: 2}}
	if fmt.Sprint(p.e820) != fmt.Sprint(want) {
		t.Errorf("e820 %+v, want %+v", p.e820, want)
	}
	for _, e := range p.e820 {
		if e.Type == bzimage.E820RAM && e.Addr+e.Size > ram-area {
			t.Errorf("RAM entry %+v reaches into the patch area", e)
		}
	}
	if p.initrd+0x5000 > ram-area || ram-area-(p.initrd+0x5000) >= 4096 {
		t.Errorf("initrd at %#x: want page-aligned just below the patch area %#x", p.initrd, ram-area)
	}
	if le := binary.LittleEndian; le.Uint32(p.zeroPage[0x218:]) != uint32(p.initrd) {
		t.Errorf("zero page ramdisk_image %#x, want %#x", le.Uint32(p.zeroPage[0x218:]), p.initrd)
	}
	// The zero page's e820 table is what Linux reads: count and last entry.
	if n := p.zeroPage[0x1e8]; n != 4 {
		t.Errorf("e820_entries %d, want 4", n)
	}
}

func TestLinuxWrite(t *testing.T) {
	img, err := bzimage.Parse(fakeBzImage(0x10000))
	if err != nil {
		t.Fatal(err)
	}
	ram := make([]byte, 128<<20)
	initrd := bytes.Repeat([]byte{0xa5}, 5000)
	p, err := planLinux(img, uint64(len(ram)), 0, "quiet", uint64(len(initrd)))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.write(ram, 2, initrd); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ram[p.load:p.load+0x10000], img.Kernel) || !bytes.Equal(ram[p.initrd:p.initrd+5000], initrd) {
		t.Error("kernel or initrd not where planned")
	}
	if string(ram[linuxCmdline:linuxCmdline+6]) != "quiet\x00" || ram[linuxZeroPage+0x210] != 0xff {
		t.Error("command line or zero page missing")
	}
	if string(ram[linuxMPTable:linuxMPTable+4]) != "_MP_" {
		t.Error("no MP floating pointer at 0xf0000")
	}
	// The identity map translates the kernel, the zero page and high
	// addresses to themselves.
	for _, va := range []uint64{p.load + 0x200, linuxZeroPage, 0xfee00000, 0xfffff000} {
		tr, err := Walk(ram, linuxPML4, va)
		if err != nil || tr.Phys != va || tr.PageSize != 2<<20 {
			t.Errorf("walk %#x = %+v, %v", va, tr, err)
		}
	}
	var s engine.Sregs
	linuxSregs(&s)
	gdt := func(sel uint16) uint64 { return binary.LittleEndian.Uint64(ram[linuxGDT+uint64(sel):]) }
	if s.CS.Selector != 0x10 || s.DS.Selector != 0x18 || gdt(0x10)>>53&1 != 1 || gdt(0x18)>>47&1 != 1 {
		t.Errorf("boot segments: CS %#x DS %#x, GDT code %#x data %#x", s.CS.Selector, s.DS.Selector, gdt(0x10), gdt(0x18))
	}
	if r := linuxRegs(p.load); r.RIP != p.load+0x200 || r.RSI != linuxZeroPage || r.RFLAGS&0x200 != 0 {
		t.Errorf("entry regs %+v", r)
	}
}

func TestPCDevices(t *testing.T) {
	now := time.Date(2026, 11, 30, 18, 7, 9, 0, time.UTC)
	b := &bus{com1: NewUART(func(byte) {}, 16), com2: NewUART(func(byte) {}, 16), pc: &pcDevices{rtc: newRTC(func() time.Time { return now })}}
	io := func(port uint16, out bool, v byte) (exitAction, byte, error) {
		ex := &engine.Exit{Reason: engine.ExitIO, IO: engine.IOExit{Port: port, Size: 1, Out: out, Count: 1, Data: []byte{v}}}
		act, _, err := handleExit(b, ex, nil)
		return act, ex.IO.Data[0], err
	}
	cmos := func(reg byte) byte {
		io(portCMOSIndex, true, reg)
		_, v, _ := io(portCMOSData, false, 0)
		return v
	}
	for reg, want := range map[byte]byte{rtcSeconds: 0x09, rtcMinutes: 0x07, rtcHours: 0x18, rtcDay: 0x30, rtcMonth: 0x11, rtcYear: 0x26, rtcCentury: 0x20, rtcRegD: 0x80} {
		if got := cmos(reg); got != want {
			t.Errorf("CMOS %#x = %#x, want %#x", reg, got, want)
		}
	}
	if cmos(rtcRegA)&0x80 != 0 {
		t.Error("RTC update in progress")
	}
	if _, v, _ := io(portI8042Status, false, 0); v != 0 {
		t.Errorf("i8042 status %#x, want empty buffers", v)
	}
	if act, _, _ := io(portPOSTDelay, true, 0); act != actContinue || b.unknownPorts.Load() != 0 {
		t.Errorf("port 0x80: %v, unknown %d", act, b.unknownPorts.Load())
	}
	if _, v, _ := io(0x3e8, false, 0); v != 0xff || b.unknownPorts.Load() != 1 {
		t.Errorf("unknown port read %#x, counted %d", v, b.unknownPorts.Load())
	}
	act, _, err := io(portI8042Status, true, 0xfe)
	if act != actReset || !errors.Is(err, ErrReset) {
		t.Errorf("i8042 0xfe: %v %v, want a reset", act, err)
	}
	act, _, err = handleExit(b, &engine.Exit{Reason: engine.ExitShutdown, RIP: 0x1234}, nil)
	if act != actReset || !errors.Is(err, ErrReset) {
		t.Errorf("shutdown of a Linux guest: %v %v, want a reset", act, err)
	}
	// klp-kvm's own guest: a shutdown is a failure, port 0x64 unknown.
	own := &bus{com1: b.com1, com2: b.com2}
	if act, _, _ := handleExit(own, &engine.Exit{Reason: engine.ExitShutdown}, nil); act != actFail {
		t.Errorf("own guest shutdown: %v", act)
	}
}

// TestLinuxOnEmuRefused: emu has no engine.PCPlatform, and says to use kvm.
func TestLinuxOnEmuRefused(t *testing.T) {
	eng, _, err := SelectEngine("emu")
	if err != nil {
		t.Fatal(err)
	}
	_, err = New(Config{Engine: eng, Kernel: fakeBzImage(0x10000), MemMiB: 128})
	if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), errEngineNoLinux) {
		t.Fatalf("New(bzImage) on emu = %v, want %q", err, errEngineNoLinux)
	}
	// An initrd is refused for klp-kvm's own kernel.
	if _, err := New(Config{Engine: eng, Kernel: []byte("\x7fELF"), Initrd: []byte{1}}); !errors.Is(err, ErrConfig) {
		t.Errorf("initrd with an ELF kernel: %v", err)
	}
	// Too much RAM for a Linux guest.
	if _, err := New(Config{Engine: eng, Kernel: fakeBzImage(0x10000), MemMiB: 4096}); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "PCI hole") {
		t.Errorf("4 GiB Linux guest: %v", err)
	}
}
