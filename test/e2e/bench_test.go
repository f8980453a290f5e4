package e2e

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
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
// Patch sizes: livepatch-bench (1024 functions) cut down to 1, 10 and 100
// by truncatePatch, and whole.
func BenchmarkLivepatch(b *testing.B) {
	full := obj(b, "livepatch-bench")
	sizes := []int{1, 10, 100, 1024}
	for _, cpus := range []int{1, 2, 4} {
		b.Run(fmt.Sprintf("cpus=%d", cpus), func(b *testing.B) {
			s := boot(b, cpus)
			for _, n := range sizes {
				b.Run(fmt.Sprintf("funcs=%d", n), func(b *testing.B) {
					o, err := truncatePatch(full, n)
					if err != nil {
						b.Fatal(err)
					}
					p, err := s.Manager.Register(o, "livepatch-bench.o")
					if err != nil {
						b.Fatal(err)
					}
					if got := len(p.Objects[0].Funcs); got != n {
						b.Fatalf("truncated patch has %d functions, want %d", got, n)
					}
					defer s.Manager.Unregister(p.Name)
					var windows, totals, bare, stops, checks, pokes []time.Duration
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
						stops = append(stops, res.Stop)
						checks = append(checks, res.Check)
						pokes = append(pokes, res.Poke)
						totals = append(totals, res.Total)
						if _, err := s.Manager.Disable(p.Name, livepatch.Options{}); err != nil {
							b.Fatal(err)
						}
					}
					w, tt, br := median(windows), median(totals), median(bare)
					b.ReportMetric(float64(w.Nanoseconds()), "window-ns")
					b.ReportMetric(float64(tt.Nanoseconds()), "e2e-ns")
					b.ReportMetric(float64(br.Nanoseconds()), "bare-ns")
					b.ReportMetric(float64(median(stops).Nanoseconds()), "stop-ns")
					b.ReportMetric(float64(median(checks).Nanoseconds()), "check-ns")
					b.ReportMetric(float64(median(pokes).Nanoseconds()), "poke-ns")
					if br > 0 {
						b.ReportMetric(float64(w)/float64(br), "window/bare")
					}
				})
			}
		})
	}
}

// truncatePatch keeps the first n entries of a patch object's funcs[]
// array: the relocation section of the array is cut after the
// relocations of entry n-1 (they come in offset order), so entry n reads
// as the all-zero terminator. The other new functions stay in the object
// (laid out, never reached). This gives the benchmark any function count
// from the one prebuilt 1024-function patch.
func truncatePatch(obj []byte, n int) ([]byte, error) {
	const klpFuncSize = 24 // struct klp_func: old_name, new_func, old_sympos
	f, err := elf.NewFile(bytes.NewReader(obj))
	if err != nil {
		return nil, err
	}
	syms, err := f.Symbols()
	if err != nil {
		return nil, err
	}
	var arr *elf.Symbol
	for i := range syms {
		if syms[i].Name == "funcs" && elf.ST_TYPE(syms[i].Info) == elf.STT_OBJECT {
			arr = &syms[i]
		}
	}
	if arr == nil || arr.Size < uint64(n+1)*klpFuncSize {
		return nil, fmt.Errorf("no funcs[] array of more than %d entries", n)
	}
	cut := arr.Value + uint64(n)*klpFuncSize
	le := binary.LittleEndian
	shoff, shentsize := le.Uint64(obj[0x28:]), uint64(le.Uint16(obj[0x3a:]))
	for i, sec := range f.Sections {
		if sec.Type != elf.SHT_RELA || int(sec.Info) != int(arr.Section) || sec.Entsize != 24 {
			continue
		}
		keep := uint64(0)
		for off := sec.Offset; off+24 <= sec.Offset+sec.Size; off += 24 {
			at := le.Uint64(obj[off:])
			if at < cut {
				if keep != off-sec.Offset {
					return nil, fmt.Errorf("%s: relocations out of order", sec.Name)
				}
				keep += 24
			}
		}
		out := append([]byte(nil), obj...)
		le.PutUint64(out[shoff+uint64(i)*shentsize+32:], keep) // sh_size
		return out, nil
	}
	return nil, fmt.Errorf("no relocation section for funcs[]")
}
