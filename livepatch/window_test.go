package livepatch

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

// The consistency check inside the pause window allocates nothing of its
// own on the way to a switch: its working memory is the Manager's
// (checkScratch), and names (pid 7 (worker), CPU 1 ...) are formatted
// only for a blocker. What it still allocates is the guest's reads
// (guestkernel's task table and stack walks, the machine's register
// snapshot): the check may allocate at most one more object than those
// reads alone (the verdict).
func TestCheckAllocatesOnlyGuestReads(t *testing.T) {
	fg := newFakeGuest(t, 2)
	g := &snapGuest{fakeGuest: fg}
	m, err := newChecked(Config{Guest: g, Vmlinux: vmlinuxForTest(), PatchArea: patchVirt, PatchAreaSize: fakePatch})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 6; i++ {
		fg.fakeTask(t, m, i, uint32(10+i), "worker", fg.sym(t, "_start")+1)
	}
	p, err := m.Register(patchObj(t, "livepatch-bench"), "livepatch-bench.o")
	if err != nil {
		t.Fatal(err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, err := m.loadImage("enable", p); err != nil {
		t.Fatal(err)
	}
	idx := newSpanIndex(m.planEnable(p).spans)
	if len(idx.spans) != 1024 {
		t.Fatalf("%d spans, want the 1024 functions' old code", len(idx.spans))
	}
	if err := g.Pause(); err != nil {
		t.Fatal(err)
	}
	defer g.Resume()
	if v := m.check(idx, false); v.first != nil {
		t.Fatalf("the fake guest blocks: %v", v.first)
	}
	reads := testing.AllocsPerRun(50, func() {
		regs, errs := m.vcpuRegs()
		tasks, _ := m.guestTasks()
		stacks, live := m.scratch.liveStacks(regs, errs, tasks)
		for i, tk := range tasks {
			if !live[i] {
				_, _ = m.intro.WalkTask(tk, 0)
			}
		}
		for cpu, r := range regs {
			_, _ = m.intro.WalkLive(r.RIP, r.RSP, r.RBP, stacks[cpu].lo, stacks[cpu].hi, 0)
		}
	})
	check := testing.AllocsPerRun(50, func() { m.check(idx, false) })
	t.Logf("check: %.0f allocations, the guest's reads alone: %.0f", check, reads)
	if check > reads+1 {
		t.Fatalf("the check allocates %.0f times, the guest's reads %.0f: more than the verdict of its own", check, reads)
	}
	// The guest's reads go through the Manager's guestkernel.View (task
	// table, names, ABI, frame records into its buffers): what is left
	// is the verdict and the fake guest's register snapshot.
	if check > 2 {
		t.Fatalf("the check allocates %.0f times, want at most 2 (the verdict, the registers)", check)
	}
}

// TestSortedSpans: the check's index orders any spans by lo as a sort
// would, whether they come as one run, the two runs a plan makes (its
// functions', then their trampolines'), or in no order at all; equal
// starts keep their input order.
func TestSortedSpans(t *testing.T) {
	mk := func(los ...uint64) []span {
		var out []span
		for i, lo := range los {
			out = append(out, span{lo: lo, hi: lo + 8, name: fmt.Sprint(i)})
		}
		return out
	}
	rng := rand.New(rand.NewPCG(1, 2))
	cases := map[string][]span{
		"empty":      nil,
		"one":        mk(5),
		"sorted":     mk(1, 2, 3, 10),
		"two runs":   mk(10, 20, 30, 5, 15, 25, 35),
		"ties":       mk(10, 20, 10, 20),
		"three runs": mk(10, 20, 5, 15, 1, 2),
		"reversed":   mk(9, 7, 5, 3, 1),
	}
	for i := range 200 {
		var los []uint64
		for range rng.IntN(40) {
			los = append(los, uint64(rng.IntN(30)))
		}
		if i%2 == 0 { // two sorted runs, as a plan makes
			h := len(los) / 2
			slices.Sort(los[:h])
			slices.Sort(los[h:])
		}
		cases[fmt.Sprintf("random %d", i)] = mk(los...)
	}
	for name, in := range cases {
		orig := slices.Clone(in)
		want := slices.Clone(in)
		slices.SortStableFunc(want, func(a, b span) int { return cmp.Compare(a.lo, b.lo) })
		got := sortedSpans(in)
		if !slices.Equal(got, want) {
			t.Errorf("%s: sortedSpans(%v) = %v, want %v", name, in, got, want)
		}
		if !slices.Equal(in, orig) {
			t.Errorf("%s: the input changed", name)
		}
	}
}
