package hw

import (
	"testing"
	"unsafe"

	"github.com/bobuhiro11/gokvm/kvm"

	"klp-kvm/kvm/engine"
)

// The Go mirrors handed to the kernel must have the kernel's sizes and
// offsets exactly (values from include/uapi/linux/kvm.h on x86-64).
func TestStructSizes(t *testing.T) {
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"engine.Regs (struct kvm_regs)", unsafe.Sizeof(engine.Regs{}), sizeofKvmRegs},
		{"gokvm kvm.Regs (struct kvm_regs)", unsafe.Sizeof(kvm.Regs{}), sizeofKvmRegs},
		{"engine.Sregs (struct kvm_sregs)", unsafe.Sizeof(engine.Sregs{}), sizeofKvmSregs},
		{"gokvm kvm.Sregs (struct kvm_sregs)", unsafe.Sizeof(kvm.Sregs{}), sizeofKvmSregs},
		{"engine.Segment (struct kvm_segment)", unsafe.Sizeof(engine.Segment{}), 24},
		{"engine.DTable (struct kvm_dtable)", unsafe.Sizeof(engine.DTable{}), 16},
		{"engine.MSR (struct kvm_msr_entry)", unsafe.Sizeof(engine.MSR{}), sizeofKvmMsrEntry},
		{"gokvm kvm.UserspaceMemoryRegion", unsafe.Sizeof(kvm.UserspaceMemoryRegion{}), 32},
		{"gokvm kvm.CPUIDEntry2 (struct kvm_cpuid_entry2)", unsafe.Sizeof(kvm.CPUIDEntry2{}), 40},
		{"vcpuEvents (struct kvm_vcpu_events)", unsafe.Sizeof(vcpuEvents{}), 64},
		{"sizeofVCPUEvents", sizeofVCPUEvents, 64},
		{"translation (struct kvm_translation)", unsafe.Sizeof(translation{}), 24},
		{"sizeofTranslation", sizeofTranslation, 24},
		{"pitConfig (struct kvm_pit_config)", unsafe.Sizeof(pitConfig{}), sizeofPITConfig},
	} {
		if c.got != c.want {
			t.Errorf("sizeof %s = %d, kernel has %d", c.name, c.got, c.want)
		}
	}
}

func TestStructOffsets(t *testing.T) {
	var r engine.Regs
	var s engine.Sregs
	var seg engine.Segment
	var m engine.MSR
	var ev vcpuEvents
	var tr translation
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"kvm_regs.rip", unsafe.Offsetof(r.RIP), 128},
		{"kvm_regs.rflags", unsafe.Offsetof(r.RFLAGS), 136},
		{"kvm_sregs.tr", unsafe.Offsetof(s.TR), 144},
		{"kvm_sregs.gdt", unsafe.Offsetof(s.GDT), 192},
		{"kvm_sregs.idt", unsafe.Offsetof(s.IDT), 208},
		{"kvm_sregs.cr0", unsafe.Offsetof(s.CR0), 224},
		{"kvm_sregs.efer", unsafe.Offsetof(s.EFER), 264},
		{"kvm_sregs.apic_base", unsafe.Offsetof(s.APICBase), 272},
		{"kvm_sregs.interrupt_bitmap", unsafe.Offsetof(s.InterruptBitmap), 280},
		{"kvm_segment.type", unsafe.Offsetof(seg.Type), 14},
		{"kvm_segment.unusable", unsafe.Offsetof(seg.Unusable), 22},
		{"kvm_msr_entry.data", unsafe.Offsetof(m.Data), 8},
		{"kvm_vcpu_events.exception.nr", unsafe.Offsetof(ev.Exception) + unsafe.Offsetof(ev.Exception.Nr), 1},
		{"kvm_vcpu_events.exception.pending", unsafe.Offsetof(ev.Exception) + unsafe.Offsetof(ev.Exception.Pending), 3},
		{"kvm_vcpu_events.exception.error_code", unsafe.Offsetof(ev.Exception) + unsafe.Offsetof(ev.Exception.ErrorCode), 4},
		{"kvm_vcpu_events.interrupt", unsafe.Offsetof(ev.Interrupt), 8},
		{"kvm_vcpu_events.nmi", unsafe.Offsetof(ev.NMI), 12},
		{"kvm_vcpu_events.sipi_vector", unsafe.Offsetof(ev.SIPIVector), 16},
		{"kvm_vcpu_events.flags", unsafe.Offsetof(ev.Flags), 20},
		{"kvm_vcpu_events.smi", unsafe.Offsetof(ev.SMI), 24},
		{"kvm_vcpu_events.triple_fault", unsafe.Offsetof(ev.TripleFault), 28},
		{"kvm_vcpu_events.reserved", unsafe.Offsetof(ev.Reserved), 29},
		{"kvm_vcpu_events.exception_has_payload", unsafe.Offsetof(ev.ExceptionHasPayload), 55},
		{"kvm_vcpu_events.exception_payload", unsafe.Offsetof(ev.ExceptionPayload), 56},
		{"kvm_translation.physical_address", unsafe.Offsetof(tr.PhysicalAddress), 8},
		{"kvm_translation.valid", unsafe.Offsetof(tr.Valid), 16},
		{"kvm_translation.usermode", unsafe.Offsetof(tr.Usermode), 18},
	} {
		if c.got != c.want {
			t.Errorf("offsetof %s = %d, kernel has %d", c.name, c.got, c.want)
		}
	}
}

// The kvm_run offsets we parse, against the kernel header's values
// (offsetof(struct kvm_run, ...) printed by a C program on x86-64).
func TestKvmRunOffsets(t *testing.T) {
	for _, c := range []struct {
		name      string
		got, want int
	}{
		{"immediate_exit", runImmediateExit, 0x1},
		{"exit_reason", runExitReason, 0x8},
		{"io.direction", runIODirection, 0x20},
		{"io.size", runIOSize, 0x21},
		{"io.port", runIOPort, 0x22},
		{"io.count", runIOCount, 0x24},
		{"io.data_offset", runIODataOffset, 0x28},
		{"mmio.phys_addr", runMMIOPhysAddr, 0x20},
		{"mmio.data", runMMIOData, 0x28},
		{"mmio.len", runMMIOLen, 0x30},
		{"mmio.is_write", runMMIOIsWrite, 0x34},
		{"fail_entry.hardware_entry_failure_reason", runFailReason, 0x20},
		{"fail_entry.cpu", runFailCPU, 0x28},
		{"internal.suberror", runIntSuberror, 0x20},
		{"internal.ndata", runIntNdata, 0x24},
		{"internal.data", runIntData, 0x28},
		{"hw.hardware_exit_reason", runHWExitReason, 0x20},
		{"kvm_valid_regs", runValidRegs, 0x120},
		{"kvm_dirty_regs", runDirtyRegs, 0x128},
		{"s.regs", runSyncRegs, 0x130},
		{"emulation_failure.flags", runEmulFlags, 0x28},
		{"emulation_failure.insn_size", runEmulInsnSize, 0x30},
		{"emulation_failure.insn_bytes", runEmulInsnBytes, 0x31},
		{"s.regs.rip", runSyncRIP, 0x130 + int(unsafe.Offsetof(engine.Regs{}.RIP))},
	} {
		if c.got != c.want {
			t.Errorf("offsetof(struct kvm_run, %s) = %#x, kernel has %#x", c.name, c.got, c.want)
		}
	}
}

// The ioctl numbers: ours, and the ones gokvm computes from the sizes of its
// structs, against the kernel's values.
func TestIoctlNumbers(t *testing.T) {
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"KVM_RUN", ioctlRun, 0xae80},
		{"KVM_CREATE_PIT2", ioctlCreatePIT2, 0x4040ae77},
		{"KVM_GET_MSRS", ioctlGetMSRs, 0xc008ae88},
		{"KVM_SET_MSRS", ioctlSetMSRs, 0x4008ae89},
		{"KVM_KVMCLOCK_CTRL", ioctlKVMClockCtrl, 0xaead},
		{"KVM_TRANSLATE", ioctlTranslate, 0xc018ae85},
		{"KVM_SET_TSC_KHZ", ioctlSetTSCKHz, 0xaea2},
		{"KVM_GET_STATS_FD", ioctlGetStatsFD, 0xaece},
		{"KVM_GET_TSC_KHZ", ioctlGetTSCKHz, 0xaea3},
		{"KVM_GET_VCPU_EVENTS", ioctlGetVCPUEvts, 0x8040ae9f},
		{"KVM_SET_VCPU_EVENTS", ioctlSetVCPUEvts, 0x4040aea0},
		// gokvm builds these as _IOx(nr, unsafe.Sizeof(its struct)).
		{"KVM_GET_REGS", kvm.IIOR(0x81, unsafe.Sizeof(kvm.Regs{})), 0x8090ae81},
		{"KVM_SET_REGS", kvm.IIOW(0x82, unsafe.Sizeof(kvm.Regs{})), 0x4090ae82},
		{"KVM_GET_SREGS", kvm.IIOR(0x83, unsafe.Sizeof(kvm.Sregs{})), 0x8138ae83},
		{"KVM_SET_SREGS", kvm.IIOW(0x84, unsafe.Sizeof(kvm.Sregs{})), 0x4138ae84},
		{"KVM_SET_USER_MEMORY_REGION", kvm.IIOW(0x46, unsafe.Sizeof(kvm.UserspaceMemoryRegion{})), 0x4020ae46},
		{"KVM_CREATE_VM", kvm.IIO(0x01), 0xae01},
		{"KVM_CREATE_VCPU", kvm.IIO(0x41), 0xae41},
		{"KVM_SET_TSS_ADDR", kvm.IIO(0x47), 0xae47},
		{"KVM_CREATE_IRQCHIP", kvm.IIO(0x60), 0xae60},
		{"KVM_SET_MP_STATE", kvm.IIOW(0x99, unsafe.Sizeof(kvm.MPState{})), 0x4004ae99},
	} {
		if c.got != c.want {
			t.Errorf("%s = %#x, kernel has %#x", c.name, c.got, c.want)
		}
	}
}

func TestImmediateExitAtomics(t *testing.T) {
	page := make([]byte, 4096)
	page[0] = 1 // request_interrupt_window must survive
	w := runWord(page)
	if clearImmediateExit(w) {
		t.Fatal("clear reported a kick that was never set")
	}
	setImmediateExit(w)
	if page[runImmediateExit] != 1 || page[0] != 1 {
		t.Fatalf("after set: bytes %v, want immediate_exit=1 and byte 0 untouched", page[:4])
	}
	if !clearImmediateExit(w) {
		t.Fatal("clear did not report the kick")
	}
	if page[runImmediateExit] != 0 || page[0] != 1 {
		t.Fatalf("after clear: bytes %v", page[:4])
	}
}
