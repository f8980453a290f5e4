package latency

import (
	"testing"
	"time"

	"klp-kvm/elfpatch"
	"klp-kvm/guestkernel"
)

func TestTruncatePatch(t *testing.T) {
	full, err := guestkernel.Patch("livepatch-bench")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{1, 7, 1024} {
		o, err := TruncatePatch(full, n)
		if err != nil {
			t.Fatalf("%d: %v", n, err)
		}
		p, err := elfpatch.ParsePatch(o)
		if err != nil {
			t.Fatalf("%d: truncated object does not parse: %v", n, err)
		}
		if got := len(p.Funcs()); got != n {
			t.Fatalf("truncated to %d: %d functions", n, got)
		}
	}
	if _, err := TruncatePatch(full, 1025); err == nil {
		t.Fatal("truncating past the 1024 entries succeeded")
	}
	if _, err := TruncatePatch([]byte("not an object"), 1); err == nil {
		t.Fatal("garbage accepted")
	}
}

func TestMedian(t *testing.T) {
	if m := Median([]time.Duration{5, 1, 3}); m != 3 {
		t.Fatalf("median %v", m)
	}
	if m := Median(nil); m != 0 {
		t.Fatalf("median of none %v", m)
	}
}

func TestPercentile(t *testing.T) {
	var d []time.Duration
	for i := 100; i >= 1; i-- {
		d = append(d, time.Duration(i))
	}
	for p, want := range map[float64]time.Duration{99: 99, 100: 100, 50: 50, 1: 1, 0: 1} {
		if got := Percentile(d, p); got != want {
			t.Errorf("p%v of 1..100 = %v, want %v", p, got, want)
		}
	}
	fifty := d[50:] // 50..1
	if got := Percentile(fifty, 99); got != 50 {
		t.Errorf("p99 of 50 values = %v, want their max", got)
	}
	if got := Percentile(nil, 99); got != 0 {
		t.Errorf("p99 of none = %v", got)
	}
	p50, p99, mx := stats([]time.Duration{3, 1, 2})
	if p50 != 2 || p99 != 3 || mx != 3 {
		t.Errorf("stats: %v %v %v", p50, p99, mx)
	}
}
