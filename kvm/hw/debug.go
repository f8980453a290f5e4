package hw

import (
	"fmt"

	"github.com/bobuhiro11/gokvm/kvm"

	"klp-kvm/kvm/engine"
)

// struct kvm_guest_debug (include/uapi/linux/kvm.h) with x86's
// struct kvm_guest_debug_arch { __u64 debugreg[8]; }.
type kvmGuestDebug struct {
	Control  uint32    // control: KVM_GUESTDBG_*
	Pad      uint32    // pad
	Debugreg [8]uint64 // arch.debugreg: DR0-DR3 addresses, DR6, DR7
}

const sizeofKvmGuestDebug = 72

// KVM_SET_GUEST_DEBUG = _IOW(KVMIO, 0x9b, struct kvm_guest_debug).
var ioctlSetGuestDebug = kvm.IIOW(0x9b, sizeofKvmGuestDebug)

// KVM_GUESTDBG_* control bits.
const (
	kvmGuestdbgEnable   = 0x00000001 // KVM_GUESTDBG_ENABLE
	kvmGuestdbgUseHWBP  = 0x00020000 // KVM_GUESTDBG_USE_HW_BP
	capSetGuestDebug    = 23         // KVM_CAP_SET_GUEST_DEBUG
	dr7GlobalEnableBits = 2          // G0 is bit 1, G1 bit 3, ...: Gn = 1 << (2n+1)
	dr7GE               = 1 << 9     // GE: exact breakpoint detection (recommended with any enable)
	dr7Reserved1        = 1 << 10    // bit 10 reads as 1
)

// KVM_EXIT_DEBUG's struct kvm_debug_exit_arch in kvm_run's exit union:
// { __u32 exception; __u32 pad; __u64 pc; __u64 dr6; __u64 dr7; }.
const (
	runDebugException = 32
	runDebugPC        = 40
	runDebugDR6       = 48
)

// guestDebug builds the KVM_SET_GUEST_DEBUG argument for execution
// breakpoints at addrs (none: debugging off). DR7 gets Gn for each
// address with R/Wn = 00 (instruction execution) and LENn = 00 (1 byte),
// which is what an instruction breakpoint requires.
func guestDebug(addrs []uint64) (kvmGuestDebug, error) {
	var d kvmGuestDebug
	if len(addrs) > engine.MaxBreakpoints {
		return d, &Error{Op: "KVM_SET_GUEST_DEBUG", Kind: ErrInvalid, Detail: fmt.Sprintf("%d breakpoints, at most %d", len(addrs), engine.MaxBreakpoints)}
	}
	if len(addrs) == 0 {
		return d, nil
	}
	d.Control = kvmGuestdbgEnable | kvmGuestdbgUseHWBP
	dr7 := uint64(dr7GE | dr7Reserved1)
	for i, a := range addrs {
		d.Debugreg[i] = a
		dr7 |= 1 << (dr7GlobalEnableBits*i + 1)
	}
	d.Debugreg[7] = dr7
	return d, nil
}

// SetBreakpoints arms hardware execution breakpoints through
// KVM_SET_GUEST_DEBUG (engine.Breakpointer). The guest's own debug
// registers are untouched by design of that ioctl (KVM swaps them in and
// out around our breakpoints).
func (c *vcpu) SetBreakpoints(addrs []uint64) error {
	d, err := guestDebug(addrs)
	if err != nil {
		return err
	}
	if !c.guestDebug {
		return &Error{Op: "KVM_SET_GUEST_DEBUG", Kind: ErrUnsupported, Detail: "KVM_CAP_SET_GUEST_DEBUG is missing"}
	}
	c.syncFresh = false // KVM may rewrite RFLAGS as KVM_GET_REGS shows it (kvm_set_rflags)
	return ioctlErr("KVM_SET_GUEST_DEBUG", setGuestDebug(c.fd, &d))
}
