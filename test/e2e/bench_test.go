package e2e

import (
	"fmt"
	"testing"
	"time"

	"klp-kvm/livepatch"
)

// BenchmarkLivepatch measures, on the engine of $KLP_KVM_ENGINE, the pause
// window of an enable (all vCPUs stopped .. all resumed, stack check and
// text pokes inside) and its end-to-end latency, next to the bare
// Pause+Resume round trip measured in the same run on the same guest.
// Metrics: window-ns, e2e-ns, bare-ns, window/bare.
//
// Patch sizes: the prebuilt samples give 1 (livepatch-sample), 2
// (livepatch-pair) and 1024 (livepatch-bench) functions.
func BenchmarkLivepatch(b *testing.B) {
	sizes := []struct {
		funcs int
		obj   string
	}{{1, "livepatch-sample"}, {2, "livepatch-pair"}, {1024, "livepatch-bench"}}
	for _, cpus := range []int{1, 2, 4} {
		b.Run(fmt.Sprintf("cpus=%d", cpus), func(b *testing.B) {
			s := boot(b, cpus)
			for _, sz := range sizes {
				b.Run(fmt.Sprintf("funcs=%d", sz.funcs), func(b *testing.B) {
					p, err := s.Manager.Register(obj(b, sz.obj), sz.obj+".o")
					if err != nil {
						b.Fatal(err)
					}
					defer s.Manager.Unregister(p.Name)
					var windows, totals, bare []time.Duration
					for i := 0; i < b.N; i++ {
						t0 := time.Now()
						if err := s.Machine.Pause(); err != nil {
							b.Fatal(err)
						}
						if err := s.Machine.Resume(); err != nil {
							b.Fatal(err)
						}
						bare = append(bare, time.Since(t0))
						res, err := s.Manager.Enable(p.Name, livepatch.Options{})
						if err != nil {
							b.Fatal(err)
						}
						windows = append(windows, res.PauseWindow)
						totals = append(totals, res.Total)
						if _, err := s.Manager.Disable(p.Name, livepatch.Options{}); err != nil {
							b.Fatal(err)
						}
					}
					w, tt, br := median(windows), median(totals), median(bare)
					b.ReportMetric(float64(w.Nanoseconds()), "window-ns")
					b.ReportMetric(float64(tt.Nanoseconds()), "e2e-ns")
					b.ReportMetric(float64(br.Nanoseconds()), "bare-ns")
					if br > 0 {
						b.ReportMetric(float64(w)/float64(br), "window/bare")
					}
				})
			}
		})
	}
}
