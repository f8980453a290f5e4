package guest

import (
	"context"
	"testing"

	"klp-kvm/guestkernel"
)

// BenchmarkAgentPing: one guest-ping round trip over COM2 (host client ->
// guest agent reader -> worker -> reply), the floor of every agent command.
func BenchmarkAgentPing(b *testing.B) {
	g := boot(b, 2, "", true)
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := g.agent.Ping(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkGuestExecCat: guest-exec "cat /proc/cmdline" through the shell.
func BenchmarkGuestExecCat(b *testing.B) {
	g := boot(b, 2, "console=ttyS0", true)
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := g.agent.Exec(ctx, "cat /proc/cmdline"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAllStacks: pause, read the task table and walk every task's
// stack (what a consistency check does), resume.
func BenchmarkAllStacks(b *testing.B) {
	g := boot(b, 2, "klp.park", true)
	syms, err := guestkernel.KernelSymbols()
	if err != nil {
		b.Fatal(err)
	}
	gst, err := guestkernel.Open(g.m, syms)
	if err != nil {
		b.Fatal(err)
	}
	frames, busy := 0, 0
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		all, err := g.allStacks(b, gst)
		if guestkernel.IsBusy(err) {
			busy++
			continue
		}
		if err != nil {
			b.Fatal(err)
		}
		for _, s := range all {
			frames += len(s.Frames)
		}
	}
	b.ReportMetric(float64(frames)/float64(b.N), "frames/op")
	b.ReportMetric(float64(busy)/float64(b.N), "busy/op")
}
