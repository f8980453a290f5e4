package hw

import (
	"fmt"

	"github.com/bobuhiro11/gokvm/kvm"
)

// EnablePCPlatform implements engine.PCPlatform: a PIT (KVM_CREATE_PIT2,
// its counter 0 wired to GSI 0 by KVM), and vCPUs created from now on keep
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
	if err := retryIntr0(func() error { return kvm.CreatePIT2(uintptr(v.fd)) }); err != nil {
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
