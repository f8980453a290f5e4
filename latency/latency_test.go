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
