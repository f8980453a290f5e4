package vmm

import (
	"klp-kvm/api"
	"klp-kvm/kvm"
	kvmengine "klp-kvm/kvm/engine"
	"klp-kvm/linuxkernel"
)

// LinuxKernelInspector is the live view of a Linux guest's kernel that
// POST /kernel serves (VMM.Kernel): package linuxkernel over the machine's
// RAM and paused vCPUs, with no help from the guest.
func LinuxKernelInspector(m *kvm.Machine, opt linuxkernel.Options) api.KernelInspector {
	return &linuxkernel.Inspector{Live: machineLive{m}, Options: opt}
}

// msrLSTAR is IA32_LSTAR, the 64-bit SYSCALL entry point.
const msrLSTAR = 0xc0000082

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
		// MSR_LSTAR places System.map symbols when there is no
		// vmcoreinfo; an engine that cannot read it leaves it 0.
		lstar := []kvmengine.MSR{{Index: msrLSTAR}}
		if l.m.OnVCPU(i, func(c kvmengine.VCPU) error { return c.GetMSRs(lstar) }) != nil {
			lstar[0].Data = 0
		}
		cpus[i] = linuxkernel.CPU{CR3: s.CR3, CR4: s.CR4, LSTAR: lstar[0].Data, RIP: r.RIP, RSP: r.RSP, GSBase: s.GS.Base}
	}
	return cpus, nil
}
