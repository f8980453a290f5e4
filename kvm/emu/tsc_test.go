package emu

import (
	"testing"
	"time"

	"klp-kvm/kvm/engine"
)

// The guest TSC advances at TSCHz against host time, exactly: every
// reading lies between host readings taken around it.
func TestTSCRate(t *testing.T) {
	vm, err := New().NewVM(make([]byte, 4096))
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	v, err := vm.NewVCPU(0)
	if err != nil {
		t.Fatal(err)
	}
	c := v.(*cpu)
	hz, err := v.(engine.TSCClock).TSCHz()
	if err != nil || hz != TSCHz || TSCHz != 1_000_000_000 {
		t.Fatalf("TSCHz %d, %v", hz, err)
	}
	epoch := c.vm.epoch
	for i := 0; i < 3; i++ {
		h0 := time.Since(epoch)
		tsc := c.tsc()
		h1 := time.Since(epoch)
		// At 1 GHz, TSC ticks are host nanoseconds.
		if tsc < uint64(h0) || tsc > uint64(h1) {
			t.Fatalf("TSC %d outside host time [%d, %d] ns", tsc, h0, h1)
		}
		// spread the samples over host time (the rate, not an event,
		// is under test: nothing to wait for)
		time.Sleep(10 * time.Millisecond)
	}
}
