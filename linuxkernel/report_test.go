package linuxkernel

import (
	"context"
	"strings"
	"testing"
)

type synLive struct {
	BytesMem
	depth           int // pauses nest
	pauses, resumes int
}

func (s *synLive) Pause() error         { s.depth++; s.pauses++; return nil }
func (s *synLive) Resume() error        { s.depth--; s.resumes++; return nil }
func (s *synLive) CPUs() ([]CPU, error) { return nil, nil }

func TestInspectorReport(t *testing.T) {
	k := newSynKernel(t)
	live := &synLive{BytesMem: k.mem}
	in := &Inspector{Live: live}
	r, err := in.InspectKernel(context.Background(), []string{"cmdline_proc_show", "missing_fn"})
	if err != nil {
		t.Fatal(err)
	}
	if live.pauses != 1 || live.resumes != 1 || live.depth != 0 {
		t.Errorf("pause/resume %d/%d", live.pauses, live.resumes)
	}
	if r.Release != "6.1.0-synthetic" || r.KASLROffset != synKASLR || r.SymbolSource != SourceKallsyms || r.Symbols != len(k.syms) ||
		len(r.Tasks) != 3 || r.TasksError != "" || len(r.Fentry) != 1 || r.Fentry[0].Kind != FentryNop || len(r.FentryErrors) != 1 {
		t.Errorf("report %+v", r)
	}
	var text strings.Builder
	if err := r.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"kernel 6.1.0-synthetic\n", "KASLR offset 0x200000 (vmcoreinfo KERNELOFFSET)\n", "symbols: 16 from vmcoreinfo+kallsyms", "tasks: 3, threads: 4 (kernel stacks of 16 KiB)",
		"       1       1 init             S    1 cpu0", "fentry cmdline_proc_show at 0xffffffff81201000: nop (0f1f440000)", `fentry: linuxkernel: fentry: not found: no symbol "missing_fn"`} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("text lacks %q:\n%s", want, text.String())
		}
	}
	if r.OK() {
		t.Error("OK with a missing function")
	}
	// A guest paused by its user stays paused; tasks are read afresh.
	live.depth = 1
	k.put(k.tasks[1]+tsComm, []byte("renamed\x00"))
	r, err = in.InspectKernel(context.Background(), nil)
	if err != nil || live.depth != 1 || r.Tasks[1].Comm != "renamed" {
		t.Errorf("second report: %+v %v (pause depth %d)", r, err, live.depth)
	}
}

// After a "reboot" (the kernel moved), the cached kernel's tasks no longer
// read and the Inspector opens the kernel again.
func TestInspectorReopens(t *testing.T) {
	k := newSynKernel(t)
	live := &synLive{BytesMem: k.mem}
	in := &Inspector{Live: live}
	if _, err := in.InspectKernel(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	first := in.k
	// Break the task list of the opened kernel: its walk now fails.
	k.put64(k.tasks[0]+tsTasks, 0xffff888700000000)
	r, err := in.InspectKernel(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if in.k == first || r.TasksError == "" {
		t.Errorf("not reopened (same kernel %v), tasks error %q", in.k == first, r.TasksError)
	}
}
