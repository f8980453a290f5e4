package guestkernel

import (
	"fmt"
	"testing"
)

// BenchmarkWalkTask: one switched-out task's frame walk (6 frames) through
// the Memory interface, the per-task cost of a consistency check.
func BenchmarkWalkTask(b *testing.B) {
	t := testing.TB(b)
	g := newFakeGuest(t)
	s := g.syms
	stack := make([]byte, StackSize)
	g.mem.add(stackBase, stack)
	rets := []uint64{fnAddr(t, s, "schedule", 0x40), fnAddr(t, s, "sleep_until", 0x30), fnAddr(t, s, "klp_park_fn", 0x20),
		fnAddr(t, s, "parker_thread", 0x10), fnAddr(t, s, "klp_task_start", 0x9)}
	rbp := buildStack(stack, stackBase, rets)
	g.setTask(2, TaskSleeping, 7, "parker", -1, rbp-48, rbp, fnAddr(t, s, "klp_switch_to", 0x20), stackBase, StackSize)
	gst, err := Open(g.mem, s)
	if err != nil {
		b.Fatal(err)
	}
	tasks, err := gst.Tasks()
	if err != nil {
		b.Fatal(err)
	}
	task := tasks[len(tasks)-1]
	b.ResetTimer()
	frames := 0
	for i := 0; i < b.N; i++ {
		f, err := gst.WalkTask(task, 0)
		if err != nil {
			b.Fatal(err)
		}
		frames += len(f)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(frames), "ns/frame")
}

// BenchmarkSysfsWrite1024: the host's update of /sys/kernel/livepatch for
// a 1024-function patch (encode + seqlocked write).
func BenchmarkSysfsWrite1024(b *testing.B) {
	mem, addr := newSysfsMem(b)
	w, err := NewSysfsWriter(mem, addr)
	if err != nil {
		b.Fatal(err)
	}
	funcs := make([]SysfsFunc, 1024)
	for i := range funcs {
		funcs[i] = SysfsFunc{Name: fmt.Sprintf("bench_fn_%04d", i)}
	}
	ps := []SysfsPatch{{Name: "livepatch_bench", Enabled: true, StackOrder: 1,
		Objects: []SysfsObject{{Name: "vmlinux", Patched: true, Funcs: funcs}}}}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		mem.writes = mem.writes[:0]
		if err := w.Write(ps); err != nil {
			b.Fatal(err)
		}
	}
}
