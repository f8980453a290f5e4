package e2e

import (
	"fmt"
	"testing"
	"time"

	"klp-kvm/internal/poll"
	"klp-kvm/kvm"
	"klp-kvm/latency"
)

// firstByte signals the first console byte.
type firstByte struct {
	ch   chan time.Time
	sent bool
}

func (f *firstByte) Write(p []byte) (int, error) {
	if !f.sent && len(p) > 0 {
		f.sent = true
		f.ch <- time.Now()
	}
	return len(p), nil
}

// BenchmarkBoot measures machine creation to the first console byte of the
// boot-test guest (kernel load, boot structures, vCPU setup, first OUT).
func BenchmarkBoot(b *testing.B) {
	eng, _, err := kvm.SelectEngine(EngineName())
	if err != nil {
		b.Skip(err)
	}
	var total time.Duration
	for i := 0; i < b.N; i++ {
		fb := &firstByte{ch: make(chan time.Time, 1)}
		t0 := time.Now()
		m, err := kvm.New(kvm.Config{Engine: eng, CPUs: 1, Kernel: bootGuest, Cmdline: "loops=1", Console: fb})
		if err != nil {
			b.Fatal(err)
		}
		done := start(m)
		t1 := <-fb.ch
		total += t1.Sub(t0)
		<-done
		m.Close()
	}
	b.ReportMetric(float64(total.Microseconds())/float64(b.N), "us/first-byte")
}

// BenchmarkPauseResume measures how long Pause takes to stop every vCPU
// (all spinning in the guest's lock incq loop) and the Pause+Resume round
// trip, for 1, 2, 4 and 8 vCPUs; medians are reported as metrics.
func BenchmarkPauseResume(b *testing.B) {
	eng, _, err := kvm.SelectEngine(EngineName())
	if err != nil {
		b.Skip(err)
	}
	for _, cpus := range []int{1, 2, 4, 8} {
		b.Run(fmt.Sprintf("cpus=%d", cpus), func(b *testing.B) {
			m, err := kvm.New(kvm.Config{Engine: eng, CPUs: cpus, Kernel: bootGuest, Cmdline: "loops=4000000000"})
			if err != nil {
				b.Fatal(err)
			}
			defer m.Close()
			done := start(m)
			defer func() { m.Stop(); <-done }()
			// every vCPU in the counter loop: each has bumped its slot
			percpu := symbol(b, "percpu")
			poll.Until(b, "every vCPU to reach the counter loop", func() bool {
				slots := make([]byte, 8*cpus)
				if err := m.ReadVirt(percpu, slots); err != nil {
					b.Fatal(err)
				}
				for i := 0; i < cpus; i++ {
					if le64(slots[8*i:]) == 0 {
						return false
					}
				}
				return true
			})
			pause := make([]time.Duration, 0, b.N)
			round := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				t0 := time.Now()
				if err := m.Pause(); err != nil {
					b.Fatal(err)
				}
				t1 := time.Now()
				if err := m.Resume(); err != nil {
					b.Fatal(err)
				}
				t2 := time.Now()
				pause = append(pause, t1.Sub(t0))
				round = append(round, t2.Sub(t0))
				// timing, not synchronisation: the vCPUs run between
				// pauses, as they would between livepatch switches
				time.Sleep(100 * time.Microsecond)
			}
			b.StopTimer()
			b.ReportMetric(float64(latency.Median(pause).Nanoseconds())/1e3, "us/pause-median")
			b.ReportMetric(float64(latency.Median(round).Nanoseconds())/1e3, "us/roundtrip-median")
		})
	}
}
