package hw

import (
	"fmt"

	"github.com/bobuhiro11/gokvm/kvm"
)

// EnablePCPlatform implements engine.PCPlatform: a PIT (KVM_CREATE_PIT2,
// its counter 0 wired to GSI 0 by KVM, the speaker port 0x61 served by KVM
// too), and vCPUs created from now on keep
// the LAPIC's reset state, with every vCPU but 0 waiting for INIT/SIPI.
// klp-kvm's own guest does not get a PIT: it keeps time with the x2APIC
// timer, and an unused PIT would only add a device to every VM.
func (v *vm) EnablePCPlatform() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	switch {
	case v.closed:
		return &Error{Op: "EnablePCPlatform", Kind: ErrClosed}
	case len(v.vcpus) > 0:
		return &Error{Op: "EnablePCPlatform", Kind: ErrInvalid, Detail: "vCPUs already exist"}
	case v.pc:
		return nil
	}
	cfg := pitConfig{Flags: kvmPITSpeakerDummy}
	if err := retryIntr0(func() error {
		if errno := createPIT2(v.fd, &cfg); errno != 0 {
			return errno
		}
		return nil
	}); err != nil {
		return ioctlErr("KVM_CREATE_PIT2", err)
	}
	v.pc = true
	return nil
}

// SetIRQLine implements engine.PCPlatform with KVM_IRQ_LINE_STATUS: GSI
// irq of KVM's default routing is the PIC's input and IOAPIC pin irq.
func (v *vm) SetIRQLine(irq int, level bool) error {
	if irq < 0 || irq > 15 {
		return &Error{Op: "KVM_IRQ_LINE_STATUS", Kind: ErrInvalid, Detail: fmt.Sprintf("ISA IRQ %d", irq)}
	}
	var l uint32
	if level {
		l = 1
	}
	return ioctlErr("KVM_IRQ_LINE_STATUS", retryIntr0(func() error { return kvm.IRQLineStatus(uintptr(v.fd), uint32(irq), l) }))
}

// cpuidHypervisor is leaf 1 ECX bit 31: "running under a hypervisor".
// KVM_GET_SUPPORTED_CPUID leaves it clear (the VMM decides), and without
// it Linux never reads KVM's leaves at 0x40000000 ("KVMKVMKVM"): no
// kvmclock, no paravirt features, and it calibrates the TSC against the
// PIT ("Booting paravirtualized kernel on bare hardware").
const cpuidHypervisor = 1 << 31

// pcCPUID adjusts a vCPU's CPUID table for the PC platform: the
// hypervisor bit set, so that Linux finds KVM's paravirt leaves.
func pcCPUID(entries []kvm.CPUIDEntry2) {
	for i := range entries {
		if entries[i].Function == 1 {
			entries[i].Ecx |= cpuidHypervisor
		}
	}
}
