package engine

import "testing"

func TestExitCounters(t *testing.T) {
	var c ExitCounters
	if c.Snapshot() != nil {
		t.Error("empty counters give a map")
	}
	c.Count(ExitIO)
	c.Count(ExitIO)
	c.Count(ExitHLT)
	c.Count(ExitReason(99)) // out of range: counted as unknown, no panic
	m := c.Snapshot()
	if m["io"] != 2 || m["hlt"] != 1 || m["unknown"] != 1 || len(m) != 3 {
		t.Errorf("snapshot %v", m)
	}
}
