package poll

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestWait(t *testing.T) {
	var n atomic.Int32
	if !Wait(Timeout, func() bool { return n.Add(1) == 5 }) {
		t.Fatal("Wait gave up on a condition that held at its fifth call")
	}
	start := time.Now()
	if Wait(30*time.Millisecond, func() bool { return false }) {
		t.Fatal("Wait reported a condition that never held")
	}
	if d := time.Since(start); d < 30*time.Millisecond {
		t.Fatalf("Wait gave up after %v, before its 30ms", d)
	}
	// The deadline's last look counts: a condition that comes true while
	// the last interval sleeps is seen.
	deadline := time.Now().Add(20 * time.Millisecond)
	if !Wait(20*time.Millisecond, func() bool { return !time.Now().Before(deadline) }) {
		t.Fatal("condition true at the deadline not seen")
	}
}

// fakeTB records Fatalf instead of stopping the test.
type fakeTB struct {
	testing.TB
	msg string
}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
}

func TestWithinNamesWhatItAwaited(t *testing.T) {
	f := &fakeTB{TB: t}
	Within(f, 10*time.Millisecond, "the moon to turn blue", func() bool { return false })
	if !strings.Contains(f.msg, "the moon to turn blue") {
		t.Fatalf("timeout message %q does not name what was awaited", f.msg)
	}
	f.msg = ""
	Until(f, "nothing", func() bool { return true })
	if f.msg != "" {
		t.Fatalf("a condition that holds failed the test: %q", f.msg)
	}
}
