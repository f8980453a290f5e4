package vmm

import (
	"bytes"
	"io"
	"strings"
	"sync"
)

// tailBytes and tailLines bound what a stopped guest's error quotes of its
// console: enough for an oops report's first lines, short enough for an
// error message.
const (
	tailBytes = 4096
	tailLines = 12
)

// consoleTail passes the guest console through to w and keeps its last
// tailBytes, so an error about a guest that stopped can quote what it
// printed last (a panic, an oops).
type consoleTail struct {
	w  io.Writer // nil: discard
	mu sync.Mutex
	b  []byte // the last tailBytes written, at most
}

func (c *consoleTail) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.b = append(c.b, p...)
	if over := len(c.b) - tailBytes; over > 0 {
		c.b = append(c.b[:0], c.b[over:]...)
	}
	c.mu.Unlock()
	if c.w == nil {
		return len(p), nil
	}
	return c.w.Write(p)
}

// Lines is the console's last tailLines complete or partial lines, with
// carriage returns removed; "" if the guest printed nothing.
func (c *consoleTail) Lines() string {
	c.mu.Lock()
	b := bytes.ReplaceAll(c.b, []byte("\r"), nil)
	c.mu.Unlock()
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(c.b) >= tailBytes && len(lines) > 1 {
		lines = lines[1:] // the first may be cut
	}
	if len(lines) > tailLines {
		lines = lines[len(lines)-tailLines:]
	}
	return strings.TrimSpace(strings.Join(lines, "\n"))
}
