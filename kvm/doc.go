// Package kvm is klp-kvm's VMM. A Machine is guest RAM, one vCPU per
// goroutine on an engine (kvm/hw over /dev/kvm, or kvm/emu in software,
// both behind kvm/engine's interface), the boot of the klp-kvm guest
// kernel, and the devices the guest uses: COM1 (console), COM2 (the guest
// agent's channel) and the power-off port.
//
// The boot is done by the host before the guest's first instruction
// (boot.go): the kernel's PT_LOAD segments at their physical addresses,
// page tables for the identity map, the kernel map and the patch area, a
// GDT, long mode, and struct boot_info (guestkernel/include/boot_info.h is
// its C half). Every decision lives here rather than in the engines, so that
// almost nothing is untested where there is no /dev/kvm.
//
// For the live patcher the Machine offers whole-machine Pause/Resume (each
// vCPU records its registers as it stops: PausedRegs), RunUntil (let some
// vCPUs run to a breakpoint while the others stay paused: the progress
// guarantee of a transition), and guest-virtual and physical memory access
// for text pokes. It knows nothing about live patching: the livepatch
// package reaches it only through its livepatch.Guest interface.
//
// docs/architecture.md ("Machine", "Guest boot protocol and ABI") is the
// contract.
package kvm
