package guestagent

import (
	"context"
	"testing"
)

// BenchmarkPing is one request/reply round trip through the agent's loop
// and the host's client over a pipe: the protocol's own cost, no UART.
func BenchmarkPing(b *testing.B) {
	c := client(b, Options{})
	ctx := context.Background()
	for b.Loop() {
		if err := c.Ping(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkExecPipeline is guest-exec of a two-applet pipeline.
func BenchmarkExecPipeline(b *testing.B) {
	c := client(b, Options{})
	ctx := context.Background()
	for b.Loop() {
		r, err := c.Exec(ctx, "echo hi | grep -c h")
		if err != nil || r.Output != "1\n" {
			b.Fatal(r, err)
		}
	}
}
