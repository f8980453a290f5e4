package hw

import (
	"encoding/binary"
	"errors"
	"strings"
	"syscall"
	"testing"

	"github.com/bobuhiro11/gokvm/kvm"

	"klp-kvm/kvm/engine"
)

func runPage(reason uint32) []byte {
	p := make([]byte, 4096)
	binary.LittleEndian.PutUint32(p[runExitReason:], reason)
	binary.LittleEndian.PutUint64(p[runSyncRIP:], 0xffffffff81000010)
	return p
}

func TestDecodeIOAliasesPage(t *testing.T) {
	p := runPage(kvmExitIO)
	le := binary.LittleEndian
	p[runIODirection] = kvmExitIOIn
	p[runIOSize] = 4
	le.PutUint16(p[runIOPort:], 0x3f8)
	le.PutUint32(p[runIOCount:], 1)
	le.PutUint64(p[runIODataOffset:], 0x1000-8)
	var ex engine.Exit
	if err := decodeExit(p, true, &ex); err != nil {
		t.Fatal(err)
	}
	if ex.Reason != engine.ExitIO || ex.IO.Port != 0x3f8 || ex.IO.Size != 4 || ex.IO.Out || ex.IO.Count != 1 || len(ex.IO.Data) != 4 {
		t.Fatalf("decoded %+v", ex)
	}
	if ex.RIP != 0xffffffff81000010 {
		t.Errorf("RIP %#x from s.regs", ex.RIP)
	}
	le.PutUint32(ex.IO.Data, 0x12345678) // the VMM's answer to IN
	if got := le.Uint32(p[0x1000-8:]); got != 0x12345678 {
		t.Errorf("IN data does not alias kvm_run: page holds %#x", got)
	}
	if cap(ex.IO.Data) != 4 {
		t.Errorf("IO.Data capacity %d lets the VMM write past the data", cap(ex.IO.Data))
	}
	// Without sync regs the RIP is not known here.
	if err := decodeExit(p, false, &ex); err != nil || ex.RIP != 0 {
		t.Errorf("no sync regs: RIP %#x err %v", ex.RIP, err)
	}
}

func TestDecodeRejectsBadKvmRun(t *testing.T) {
	le := binary.LittleEndian
	for _, c := range []struct {
		name string
		set  func(p []byte)
	}{
		{"data beyond page", func(p []byte) { le.PutUint64(p[runIODataOffset:], 4094) }},
		{"huge offset", func(p []byte) { le.PutUint64(p[runIODataOffset:], 1<<63) }},
		{"count overflows page", func(p []byte) { le.PutUint32(p[runIOCount:], 0xffffffff) }},
		{"size 3", func(p []byte) { p[runIOSize] = 3 }},
		{"count 0", func(p []byte) { le.PutUint32(p[runIOCount:], 0) }},
	} {
		p := runPage(kvmExitIO)
		p[runIOSize] = 4
		le.PutUint32(p[runIOCount:], 1)
		le.PutUint64(p[runIODataOffset:], 0x100)
		c.set(p)
		var ex engine.Exit
		if err := decodeExit(p, true, &ex); !errors.Is(err, ErrABI) {
			t.Errorf("%s: err %v, want ErrABI", c.name, err)
		}
	}
	p := runPage(kvmExitMMIO)
	le.PutUint32(p[runMMIOLen:], 9)
	var ex engine.Exit
	if err := decodeExit(p, true, &ex); !errors.Is(err, ErrABI) {
		t.Errorf("MMIO len 9: err %v, want ErrABI", err)
	}
	if err := decodeExit(make([]byte, 100), true, &ex); !errors.Is(err, ErrABI) {
		t.Errorf("short page: err %v, want ErrABI", err)
	}
}

func TestDecodeMMIOAndOthers(t *testing.T) {
	le := binary.LittleEndian
	p := runPage(kvmExitMMIO)
	le.PutUint64(p[runMMIOPhysAddr:], 0xfee00030)
	le.PutUint32(p[runMMIOLen:], 2)
	p[runMMIOIsWrite] = 1
	p[runMMIOData], p[runMMIOData+1] = 0x34, 0x12
	var ex engine.Exit
	if err := decodeExit(p, true, &ex); err != nil {
		t.Fatal(err)
	}
	if ex.Reason != engine.ExitMMIO || ex.MMIO.Addr != 0xfee00030 || !ex.MMIO.Write || le.Uint16(ex.MMIO.Data) != 0x1234 || len(ex.MMIO.Data) != 2 {
		t.Fatalf("decoded %+v", ex.MMIO)
	}

	for _, c := range []struct {
		reason uint32
		set    func(p []byte)
		want   engine.ExitReason
		msg    string
	}{
		{kvmExitHLT, nil, engine.ExitHLT, ""},
		{kvmExitShutdown, nil, engine.ExitShutdown, "triple fault"},
		{kvmExitIntr, nil, engine.ExitIntr, ""},
		{kvmExitFailEntry, func(p []byte) { le.PutUint64(p[runFailReason:], 0x21); le.PutUint32(p[runFailCPU:], 3) }, engine.ExitInternalError, "reason 0x21 on host cpu 3"},
		{kvmExitInternalError, func(p []byte) {
			le.PutUint32(p[runIntSuberror:], 1)
			le.PutUint32(p[runIntNdata:], 2)
			le.PutUint64(p[runIntData:], 0xaa)
			le.PutUint64(p[runIntData+8:], 0xbb)
		}, engine.ExitInternalError, "suberror 1 (emulation failure), data 0xaa 0xbb"},
		// ndata is capped at the array's 16 entries, whatever the page says.
		{kvmExitInternalError, func(p []byte) { le.PutUint32(p[runIntNdata:], 0xffffffff) }, engine.ExitInternalError, "suberror 0 (unknown)"},
		{kvmExitUnknown, func(p []byte) { le.PutUint64(p[runHWExitReason:], 0x7b) }, engine.ExitInternalError, "hardware exit reason 0x7b"},
		{kvmExitException, func(p []byte) { le.PutUint32(p[runExceptionNr:], 13) }, engine.ExitInternalError, "exception 13"},
		{kvmExitSystemEvent, nil, engine.ExitShutdown, "SYSTEM_EVENT"},
		{999, nil, engine.ExitInternalError, "exit reason 999"},
	} {
		p := runPage(c.reason)
		if c.set != nil {
			c.set(p)
		}
		if err := decodeExit(p, true, &ex); err != nil {
			t.Fatalf("reason %d: %v", c.reason, err)
		}
		if ex.Reason != c.want || !strings.Contains(ex.Message, c.msg) {
			t.Errorf("reason %d: %v %q, want %v containing %q", c.reason, ex.Reason, ex.Message, c.want, c.msg)
		}
	}
}

func TestSregsConversionRoundTrip(t *testing.T) {
	var s engine.Sregs
	segs := []*engine.Segment{&s.CS, &s.DS, &s.ES, &s.FS, &s.GS, &s.SS, &s.TR, &s.LDT}
	for i, p := range segs {
		b := uint8(i*16 + 1)
		*p = engine.Segment{Base: uint64(i) << 40, Limit: uint32(i) + 0x1000, Selector: uint16(i*8 + 3),
			Type: b, Present: b + 1, DPL: b + 2, DB: b + 3, S: b + 4, L: b + 5, G: b + 6, AVL: b + 7, Unusable: b + 8}
	}
	s.GDT = engine.DTable{Base: 0x1234, Limit: 0x17}
	s.IDT = engine.DTable{Base: 0x5678, Limit: 0xfff}
	s.CR0, s.CR2, s.CR3, s.CR4, s.CR8 = 1, 2, 3, 4, 8
	s.EFER, s.APICBase = 0x500, 0xfee00d00
	s.InterruptBitmap = [4]uint64{1, 2, 3, 4}
	k := toKvmSregs(&s)
	if k.TR.Typ != s.TR.Type || k.LDT.Unusable != s.LDT.Unusable || k.ApicBase != s.APICBase || k.GDT.Limit != 0x17 {
		t.Errorf("toKvmSregs lost fields: %+v", k)
	}
	if back := fromKvmSregs(&k); back != s {
		t.Errorf("round trip changed sregs:\n got %+v\nwant %+v", back, s)
	}
	r := engine.Regs{RAX: 1, R15: 15, RIP: 0x1000, RFLAGS: 2}
	if kr := kvm.Regs(r); kr.R15 != 15 || kr.RIP != 0x1000 || engine.Regs(kr) != r {
		t.Errorf("regs conversion: %+v", kr)
	}
}

func TestVCPUCPUID(t *testing.T) {
	sup := []kvm.CPUIDEntry2{
		{Function: 0, Eax: 0x1f},
		{Function: 1, Ebx: 0xff000800, Ecx: 0x1},
		{Function: 0xb, Index: 1, Edx: 0},
		{Function: 0x1f, Index: 0, Edx: 0},
	}
	got := vcpuCPUID(sup, 3)
	if got[1].Ecx != 0x1|cpuidX2APIC || got[1].Ebx != 0x03000800 {
		t.Errorf("leaf 1 ECX %#x EBX %#x", got[1].Ecx, got[1].Ebx)
	}
	if got[2].Edx != 3 || got[3].Edx != 3 {
		t.Errorf("x2APIC ids %d %d, want 3", got[2].Edx, got[3].Edx)
	}
	if sup[1].Ecx != 0x1 {
		t.Error("vcpuCPUID modified the shared supported table")
	}
	if x2apicBase(0) != 0xfee00d00 || x2apicBase(1) != 0xfee00c00 {
		t.Errorf("APIC base %#x %#x", x2apicBase(0), x2apicBase(1))
	}
}

func TestErrorMatching(t *testing.T) {
	err := ioctlErr("KVM_RUN", syscall.EFAULT)
	if !errors.Is(err, syscall.EFAULT) || errors.Is(err, ErrABI) {
		t.Errorf("%v: errno not matched", err)
	}
	var e *Error
	if !errors.As(err, &e) || e.Op != "KVM_RUN" {
		t.Errorf("%v: not an *Error with the op", err)
	}
	err = &Error{Op: "open /dev/kvm", Kind: ErrUnavailable, Errno: syscall.ENOENT}
	if !errors.Is(err, ErrUnavailable) || !errors.Is(err, syscall.ENOENT) {
		t.Errorf("%v: kind or errno not matched", err)
	}
	if s := err.Error(); !strings.Contains(s, "open /dev/kvm") || !strings.Contains(s, "no such file") {
		t.Errorf("message %q", s)
	}
	if ioctlErr("x", nil) != nil {
		t.Error("ioctlErr(nil) != nil")
	}
}

// Without /dev/kvm, New fails with ErrUnavailable rather than anything
// that would stop the caller from falling back to the software engine.
func TestNewWithoutKVM(t *testing.T) {
	e, err := New()
	if err == nil {
		t.Skip("/dev/kvm is present: covered by the real-KVM tests")
	}
	if e != nil {
		t.Error("engine returned with an error")
	}
	fd, openErr := syscall.Open(DevicePath, syscall.O_RDWR, 0)
	if openErr == nil {
		syscall.Close(fd)
	}
	if openErr != nil && !errors.Is(err, ErrUnavailable) {
		t.Errorf("New() = %v, want ErrUnavailable when %s cannot be opened", err, DevicePath)
	}
}

// FuzzDecodeExit: whatever the kvm_run page holds, decoding never panics and
// never hands out data outside the page.
func FuzzDecodeExit(f *testing.F) {
	f.Add(uint32(kvmExitIO), uint8(4), uint32(1), uint64(0x100), uint32(0))
	f.Add(uint32(kvmExitMMIO), uint8(0), uint32(0), uint64(0), uint32(8))
	f.Add(uint32(kvmExitInternalError), uint8(0), uint32(0xffffffff), uint64(0), uint32(0))
	f.Fuzz(func(t *testing.T, reason uint32, size uint8, count uint32, off uint64, mmioLen uint32) {
		p := runPage(reason)
		le := binary.LittleEndian
		p[runIOSize] = size
		le.PutUint32(p[runIOCount:], count)
		le.PutUint64(p[runIODataOffset:], off)
		le.PutUint32(p[runMMIOLen:], mmioLen)
		var ex engine.Exit
		if err := decodeExit(p, true, &ex); err != nil {
			return
		}
		if ex.Reason == engine.ExitIO && len(ex.IO.Data) != int(ex.IO.Size)*int(ex.IO.Count) {
			t.Fatalf("IO data %d bytes for %d x %d", len(ex.IO.Data), ex.IO.Count, ex.IO.Size)
		}
		if ex.Reason == engine.ExitMMIO && (len(ex.MMIO.Data) == 0 || len(ex.MMIO.Data) > 8) {
			t.Fatalf("MMIO data %d bytes", len(ex.MMIO.Data))
		}
	})
}

// TestSyncedRegs: the registers come from kvm_run's s.regs in struct
// kvm_regs order; a mapping too small for them is refused.
func TestSyncedRegs(t *testing.T) {
	run := make([]byte, runMinSize)
	for i := 0; i < 18; i++ {
		binary.LittleEndian.PutUint64(run[runSyncRegs+8*i:], uint64(i+1)*0x101)
	}
	r, ok := syncedRegs(run)
	if !ok {
		t.Fatal("a kvm_run-sized mapping refused")
	}
	want := engine.Regs{RAX: 0x101, RBX: 0x202, RCX: 0x303, RDX: 0x404, RSI: 0x505, RDI: 0x606, RSP: 0x707, RBP: 0x808,
		R8: 0x909, R9: 0xa0a, R10: 0xb0b, R11: 0xc0c, R12: 0xd0d, R13: 0xe0e, R14: 0xf0f, R15: 0x1010, RIP: 0x1111, RFLAGS: 0x1212}
	if r != want {
		t.Errorf("syncedRegs %+v, want %+v", r, want)
	}
	if r.RIP != binary.LittleEndian.Uint64(run[runSyncRIP:]) {
		t.Errorf("RIP %#x is not the word at runSyncRIP", r.RIP)
	}
	if _, ok := syncedRegs(run[:runSyncRegs+sizeofKvmRegs-1]); ok {
		t.Error("a mapping one byte short of s.regs accepted")
	}
}

func TestPCCPUID(t *testing.T) {
	sup := []kvm.CPUIDEntry2{{Function: 1, Ecx: 1}, {Function: 0x40000000, Ebx: 0x4b4d564b}}
	got := vcpuCPUID(sup, 1)
	pcCPUID(got)
	if got[0].Ecx != 1|cpuidX2APIC|cpuidHypervisor || got[1] != sup[1] {
		t.Errorf("PC CPUID: leaf 1 ECX %#x, leaf 0x40000000 %+v", got[0].Ecx, got[1])
	}
}
