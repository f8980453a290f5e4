package hw

import (
	"encoding/binary"
	"fmt"
	"strings"
)

// Emulation failures, and int3 on platforms that emulate it.
//
// On VT-x and SVM an int3 in the guest never leaves the guest: KVM does not
// intercept #BP unless user space turns guest debugging on, and the CPU
// delivers it through the guest's IDT. kvm_pvm (the pagetable-based KVM,
// no VT-x/SVM) runs the guest kernel deprivileged, traps its int3 and hands
// it to KVM's instruction emulator, which does not emulate INT n outside
// real mode: KVM_RUN ends in KVM_EXIT_INTERNAL_ERROR / emulation failure
// with RIP at the int3. The VMM then does what the CPU would have done and
// delivers #BP to the guest (KVM_SET_VCPU_EVENTS), so the guest's own #BP
// handler runs, as on hardware and on emu. Every other emulation failure
// still ends the run, with RIP and the instruction bytes in the message.

// emulAction is what Run does with an emulation failure.
type emulAction int

const (
	emulFail     emulAction = iota // end the run with the failure
	emulInjectBP                   // deliver #BP to the guest and re-enter
)

const (
	opInt3   = 0xcc // INT3
	vectorBP = 3    // #BP
)

// isEmulationFailure says whether the kvm_run page holds
// KVM_EXIT_INTERNAL_ERROR with suberror KVM_INTERNAL_ERROR_EMULATION.
func isEmulationFailure(run []byte) bool {
	le := binary.LittleEndian
	return len(run) >= runMinSize && le.Uint32(run[runExitReason:]) == kvmExitInternalError &&
		le.Uint32(run[runIntSuberror:]) == kvmInternalErrorEmulation
}

// emulationInsn returns the instruction bytes KVM reported with an
// emulation failure (flag KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES,
// Linux 5.15 and later), or nil when it reported none. The slice aliases
// the page and is capped at insn_size.
func emulationInsn(run []byte) []byte {
	if !isEmulationFailure(run) {
		return nil
	}
	le := binary.LittleEndian
	// flags and the 16 bytes of insn_size + insn_bytes are data[0..2].
	if le.Uint32(run[runIntNdata:]) < 3 || le.Uint64(run[runEmulFlags:])&kvmEmulFlagInsnBytes == 0 {
		return nil
	}
	n := int(run[runEmulInsnSize])
	if n == 0 || n > maxInsnLen {
		return nil
	}
	return run[runEmulInsnBytes : runEmulInsnBytes+n : runEmulInsnBytes+n]
}

// decideEmulationFailure decides from the instruction at RIP: an int3 (no
// prefix can precede it meaningfully, and KVM reports the bytes from RIP)
// becomes a #BP for the guest; anything else, or no bytes at all, fails.
func decideEmulationFailure(insn []byte) emulAction {
	if len(insn) > 0 && insn[0] == opInt3 {
		return emulInjectBP
	}
	return emulFail
}

// bpEntryRIP is the RIP to leave in the vCPU before injecting the #BP of
// an int3 at rip. #BP from INT3 is a trap: the frame the guest's handler
// sees must hold the address after the int3, or the handler returns to the
// int3 and the guest loops on it.
//
// KVM_SET_VCPU_EVENTS takes no instruction length from user space, and how
// the vendor code derives the pushed RIP of a soft exception (#BP, #OF)
// differs. kvm_pvm builds the frame itself from the vCPU's RIP as it is
// (measured: with RIP left at the int3 the guest reported "int3 at" the
// int3's own address and looped on it), so there RIP is moved past the
// one-byte int3 first (vendorSkips false). SVM computes the next RIP
// itself by decoding the instruction at RIP (svm_update_soft_interrupt_rip),
// so there RIP must stay at the int3 (vendorSkips true). Neither VT-x nor
// SVM intercepts #BP without guest debugging, so on them this path is not
// expected to run at all.
func bpEntryRIP(rip uint64, vendorSkips bool) uint64 {
	if vendorSkips {
		return rip
	}
	return rip + 1
}

// pvmModule is present in sysfs when the KVM in use is kvm_pvm.
const pvmModule = "/sys/module/kvm_pvm"

// emulationFailureMessage is the Exit.Message of a failure that is not
// handled: the suberror, RIP and the instruction bytes (KVM's, or read
// from guest memory, or why they could not be read), then KVM's raw data.
func emulationFailureMessage(rip uint64, insn []byte, fetchErr error, raw string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "KVM_EXIT_INTERNAL_ERROR: emulation failure at RIP %#x", rip)
	switch {
	case len(insn) > 0:
		b.WriteString(", instruction bytes")
		for _, x := range insn {
			fmt.Fprintf(&b, " %02x", x)
		}
	case fetchErr != nil:
		fmt.Fprintf(&b, ", instruction bytes unreadable: %v", fetchErr)
	default:
		b.WriteString(", no instruction bytes")
	}
	if raw != "" {
		b.WriteString(" (" + raw + ")")
	}
	return b.String()
}
