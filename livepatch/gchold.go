package livepatch

import (
	"runtime/debug"
	"sync"
)

// The pause window and the Go garbage collector: an enable builds its
// switch (Prepare, Stage: trampolines, pokes, clusters, the span index)
// just before it stops the guest, and at 1024 functions that garbage
// often starts a GC cycle that then runs inside the window: its
// stop-the-world phases and mark assists delay the vCPU threads' answers
// to the pause (measured: a window with a GC cycle in it had a stop phase
// of 370-930 us, against ~100 us without). holdGC keeps the collector off
// for the length of one attempt: debug.SetGCPercent(-1) first waits for a
// cycle in progress to end (outside the window: the pause has not been
// asked for yet), and no new cycle starts until the release, after the
// guest resumed. An attempt is bounded (the check, at most StepBudget of
// progress, the pokes), so the heap grows by that attempt's allocations
// at most; GOMEMLIMIT still applies. Nested holds (several Managers in one
// process) share one: the percentage is put back by the last release.
var gcHold struct {
	mu   sync.Mutex
	n    int
	prev int
}

// holdGC turns the garbage collector off until the returned release is
// called (once).
func holdGC() (release func()) {
	gcHold.mu.Lock()
	if gcHold.n == 0 {
		gcHold.prev = debug.SetGCPercent(-1)
	}
	gcHold.n++
	gcHold.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			gcHold.mu.Lock()
			gcHold.n--
			if gcHold.n == 0 {
				debug.SetGCPercent(gcHold.prev)
			}
			gcHold.mu.Unlock()
		})
	}
}
