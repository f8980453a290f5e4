package e2e

import (
	"fmt"
	"testing"

	"klp-kvm/latency"
)

// BenchmarkLivepatch measures, on the engine of $KLP_KVM_ENGINE, the pause
// window of an enable (all vCPUs stopped .. all resumed, stack check and
// text pokes inside) and its end-to-end latency, next to the bare
// Pause+Resume round trip measured in the same run on the same guest
// (package latency, also behind `klp-kvm bench`). Metrics: window-ns,
// e2e-ns, bare-ns, window/bare, and the parts of the window.
func BenchmarkLivepatch(b *testing.B) {
	for _, cpus := range []int{1, 2, 4} {
		b.Run(fmt.Sprintf("cpus=%d", cpus), func(b *testing.B) {
			s := boot(b, cpus)
			for _, n := range []int{1, 10, 100, 1024} {
				b.Run(fmt.Sprintf("funcs=%d", n), func(b *testing.B) {
					r, err := latency.Measure(s, n, b.N)
					if err != nil {
						b.Fatal(err)
					}
					b.ReportMetric(float64(r.Window.Nanoseconds()), "window-ns")
					b.ReportMetric(float64(r.Total.Nanoseconds()), "e2e-ns")
					b.ReportMetric(float64(r.Bare.Nanoseconds()), "bare-ns")
					b.ReportMetric(float64(r.Stop.Nanoseconds()), "stop-ns")
					b.ReportMetric(float64(r.Check.Nanoseconds()), "check-ns")
					b.ReportMetric(float64(r.Poke.Nanoseconds()), "poke-ns")
					b.ReportMetric(r.Ratio, "window/bare")
				})
			}
		})
	}
}
