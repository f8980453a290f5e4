package emu

import (
	"slices"
	"syscall"
	"testing"
	"time"

	"klp-kvm/internal/poll"
	"klp-kvm/kvm/engine"
)

// mixedWorkload: loads, stores, ALU, multiply, a call and branches; the
// outer loop count comes in RDI... set by the benchmark through memory.
const mixedWorkload = `
_start:
	mov iterations, %r12
outer:
	lea data(%rip), %rsi
	mov $16, %ecx
	xor %eax, %eax
inner:
	mov (%rsi), %rdx
	add %rdx, %rax
	imul $3, %rax, %rax
	xor %rcx, %rdx
	mov %rdx, 8(%rsi)
	add $8, %rsi
	call leaf
	dec %ecx
	jnz inner
	dec %r12
	jnz outer
	` + done + `
leaf:
	lea 1(%rax), %rbx
	cmp %rbx, %rax
	cmovb %rbx, %rax
	ret
.balign 8
iterations: .quad 0
.balign 4096
data: .skip 4096
`

// BenchmarkMIPS reports guest instructions per second on one vCPU.
func BenchmarkMIPS(b *testing.B) {
	m := newMachine(b, mixedWorkload, 1)
	put64(m.ram, m.sym("iterations"), uint64(max(b.N/200, 1)))
	b.ResetTimer()
	start, cpu0 := time.Now(), cpuTime()
	m.run(0)
	el, cpuEl := time.Since(start), cpuTime()-cpu0
	n := m.cpus[0].Stats().Instructions
	b.ReportMetric(float64(n)/el.Seconds()/1e6, "MIPS")
	// The same per CPU second of this process: what the interpreter does
	// when it has a core, independent of other load on the machine.
	b.ReportMetric(float64(n)/cpuEl.Seconds()/1e6, "MIPS-cpu")
	b.ReportMetric(float64(el.Nanoseconds())/float64(n), "ns/guest-insn")
}

// cpuTime is the CPU time (user+system) used by this process so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// kickLatency measures the time from Kick to Run returning ExitIntr.
func kickLatency(b *testing.B, src string) {
	m := newMachine(b, src, 1)
	c := m.cpus[0]
	running := c.(*cpu).running.Load
	exits := make(chan time.Time)
	stop := make(chan struct{})
	go func() {
		for {
			ex, err := c.Run()
			if err != nil || ex.Reason != engine.ExitIntr {
				b.Errorf("exit %v %v", ex, err)
				close(exits)
				return
			}
			t := time.Now()
			select {
			case exits <- t:
			case <-stop:
				return
			}
		}
	}()
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// A kick before Run is executing again would only be left
		// pending and measure nothing: wait for that. Then let the
		// guest run on (or reach its HLT) for a while, which is timing,
		// not synchronisation: that state is what is measured.
		poll.Until(b, "Run to be executing again", running)
		time.Sleep(100 * time.Microsecond)
		t0 := time.Now()
		c.Kick()
		t1, ok := <-exits
		if !ok {
			return
		}
		lat = append(lat, t1.Sub(t0))
	}
	b.StopTimer()
	close(stop)
	c.Kick()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds())/1e3, "us-median")
	b.ReportMetric(float64(lat[len(lat)*9/10].Nanoseconds())/1e3, "us-p90")
}

func BenchmarkKickLatencyLoop(b *testing.B) {
	kickLatency(b, `
_start:
1:	inc %rax
	add %rax, %rbx
	jmp 1b
`)
}

func BenchmarkKickLatencyHLT(b *testing.B) {
	kickLatency(b, `
_start:
	sti
1:	hlt
	jmp 1b
`)
}
