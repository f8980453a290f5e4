package e2e

import (
	"testing"
	"time"

	"klp-kvm/guestkernel"
)

// TestRunUntil checks the primitive behind the livepatch progress
// guarantee on the engine under test: with the machine paused, one vCPU
// runs until it reaches an address (a breakpoint on KVM, a block-entry
// check on emu) while the other stays stopped; the machine is still paused
// afterwards and runs on normally once resumed.
func TestRunUntil(t *testing.T) {
	s := boot(t, 2)
	m := s.Machine
	syms, err := guestkernel.LoadSymbols(guestkernel.Vmlinux())
	if err != nil {
		t.Fatal(err)
	}
	// the timer tick: every vCPU enters it every millisecond
	tick, err := syms.Lookup("sched_tick")
	if err != nil {
		t.Fatal(err)
	}
	for round := 0; round < 20; round++ {
		if err := m.Pause(); err != nil {
			t.Fatal(err)
		}
		before, err := m.PausedRegs()
		if err != nil {
			t.Fatal(err)
		}
		cpu := round % 2
		reached, err := m.RunUntil(map[int][]uint64{cpu: {tick.Addr}}, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		after, err := m.PausedRegs()
		if err != nil {
			t.Fatal(err)
		}
		if reached != 1 || after[cpu].RIP != tick.Addr {
			t.Fatalf("round %d: vCPU %d did not stop at sched_tick (%#x): reached %d, RIP %#x", round, cpu, tick.Addr, reached, after[cpu].RIP)
		}
		if other := 1 - cpu; after[other] != before[other] {
			t.Fatalf("round %d: vCPU %d ran while vCPU %d was let run", round, other, cpu)
		}
		if !m.Paused() {
			t.Fatal("RunUntil left the machine running")
		}
		// An empty stop list runs for the budget alone and stops again.
		if _, err := m.RunUntil(map[int][]uint64{cpu: nil}, 200*time.Microsecond); err != nil {
			t.Fatal(err)
		}
		if err := m.Resume(); err != nil {
			t.Fatal(err)
		}
	}
	// The guest is healthy: the breakpoints are gone (no stray debug exits
	// would let it run on otherwise) and the agent answers.
	if out := sh(t, s, "echo alive"); out != "alive\n" {
		t.Fatalf("guest after RunUntil: %q", out)
	}
	if _, err := m.RunUntil(map[int][]uint64{0: nil}, time.Millisecond); err == nil {
		t.Fatal("RunUntil on a running machine must fail")
	}
}
