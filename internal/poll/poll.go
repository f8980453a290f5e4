// Package poll is how klp-kvm's tests wait: for a condition, checked again and
// again until it holds or a deadline passes, never for a fixed time that a
// loaded machine (2 cores shared by several test runs, a nested VM) may not
// honour. A timeout fails the test naming what it waited for.
//
// Fixed sleeps are left only where a test means time itself: pacing a load
// generator, letting time pass between clock samples, or looking again after
// a while that nothing happened (there is no condition for "never").
package poll

import (
	"testing"
	"time"
)

// Timeout is how long Until waits: long enough for a guest to boot on the
// emu engine under load, short enough to fail well inside go test's timeout.
const Timeout = 20 * time.Second

// Until calls cond until it returns true. If it has not after Timeout, it
// fails tb with "timed out after 20s waiting for <what>". cond runs on the
// caller's goroutine, so it may itself call tb.Fatal (e.g. when the machine
// it waits on stopped).
func Until(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	Within(tb, Timeout, what, cond)
}

// Within is Until with its own timeout d.
func Within(tb testing.TB, d time.Duration, what string, cond func() bool) {
	tb.Helper()
	if !Wait(d, cond) {
		tb.Fatalf("timed out after %v waiting for %s", d, what)
	}
}

// Wait calls cond until it returns true (true) or d has passed (false): for
// callers that handle the timeout themselves, e.g. off the test goroutine.
// The interval starts at 50 µs and doubles up to 10 ms, so a condition that
// holds quickly is seen quickly and a slow one (an agent round trip into the
// guest) is not asked more than a hundred times a second.
func Wait(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	interval := 50 * time.Microsecond
	for !cond() {
		if time.Now().After(deadline) {
			return cond()
		}
		time.Sleep(interval)
		interval = min(2*interval, 10*time.Millisecond)
	}
	return true
}
