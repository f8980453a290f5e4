package vmm

import (
	"klp-kvm/api"
	"klp-kvm/kvm"
	"klp-kvm/linuxkernel"
)

// LinuxKernelInspector is the live view of a Linux guest's kernel that
// POST /kernel serves (VMM.Kernel): package linuxkernel over the machine's
// RAM and paused vCPUs, with no help from the guest.
func LinuxKernelInspector(m *kvm.Machine, opt linuxkernel.Options) api.KernelInspector {
	return &linuxkernel.Inspector{Live: machineLive{m}, Options: opt}
}

// machineLive is a kvm.Machine as linuxkernel.Live.
type machineLive struct{ m *kvm.Machine }

func (l machineLive) ReadPhys(pa uint64, b []byte) error { return l.m.ReadPhys(pa, b) }
func (l machineLive) PhysSize() uint64                   { return l.m.Layout().RAMSize }
func (l machineLive) Pause() error                       { return l.m.Pause() }
func (l machineLive) Resume() error                      { return l.m.Resume() }

// CPUs reads each vCPU's registers; the machine is paused (Inspector
// pauses it first).
func (l machineLive) CPUs() ([]linuxkernel.CPU, error) {
	regs, err := l.m.PausedRegs()
	if err != nil {
		return nil, err
	}
	cpus := make([]linuxkernel.CPU, len(regs))
	for i, r := range regs {
		s, err := l.m.Sregs(i)
		if err != nil {
			return nil, err
		}
		cpus[i] = linuxkernel.CPU{CR3: s.CR3, CR4: s.CR4, RIP: r.RIP, RSP: r.RSP, GSBase: s.GS.Base}
	}
	return cpus, nil
}
