package vmm

import (
	"time"

	"klp-kvm/kvm"
	"klp-kvm/linuxkernel"
	"klp-kvm/linuxlive"
	"klp-kvm/livepatch"
)

// LinuxPatcher is the live-patch manager of a Linux guest: package
// linuxlive over the machine's RAM, its patch area (the top of RAM the
// e820 map leaves out) and its paused vCPUs.
func LinuxPatcher(m *kvm.Machine, logf func(format string, args ...any)) (*linuxlive.Manager, error) {
	base, size := m.LinuxPatchArea()
	return linuxlive.New(linuxlive.Config{Machine: liveMachine{machineLive{m}}, AreaBase: base, AreaSize: size, Logf: logf})
}

// liveMachine is a kvm.Machine as linuxlive.Machine.
type liveMachine struct{ machineLive }

func (l liveMachine) WritePhys(pa uint64, b []byte) error { return l.m.WritePhys(pa, b) }

// RunUntil makes liveMachine a livepatch.Stepper: linuxlive's progress
// guarantee lets the vCPUs that block a switch run out of the changing
// code while the others stay paused (kvm.Machine.RunUntil: hardware
// breakpoints on the kvm engine, bounded slices where they do not fire).
var _ livepatch.Stepper = liveMachine{}

func (l liveMachine) RunUntil(stops map[int][]uint64, budget time.Duration) (int, error) {
	return l.m.RunUntil(stops, budget)
}

// CPUs reads each paused vCPU's registers, as an interrupt frame for
// the ORC unwind (CS and SS from the segment registers: CS's RPL says
// user or kernel mode).
func (l liveMachine) CPUs() ([]linuxlive.CPU, error) {
	regs, err := l.m.PausedRegs()
	if err != nil {
		return nil, err
	}
	out := make([]linuxlive.CPU, len(regs))
	for i, r := range regs {
		s, err := l.m.Sregs(i)
		if err != nil {
			return nil, err
		}
		out[i] = linuxlive.CPU{
			CPU: linuxkernel.CPU{CR3: s.CR3, CR4: s.CR4, RIP: r.RIP, RSP: r.RSP, GSBase: s.GS.Base},
			Regs: linuxkernel.PtRegs{R15: r.R15, R14: r.R14, R13: r.R13, R12: r.R12, BP: r.RBP, BX: r.RBX,
				R11: r.R11, R10: r.R10, R9: r.R9, R8: r.R8, AX: r.RAX, CX: r.RCX, DX: r.RDX, SI: r.RSI, DI: r.RDI,
				IP: r.RIP, CS: uint64(s.CS.Selector), Flags: r.RFLAGS, SP: r.RSP, SS: uint64(s.SS.Selector)},
		}
	}
	return out, nil
}
