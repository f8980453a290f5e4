package linuxlive

import (
	"fmt"
	"time"

	"klp-kvm/linuxkernel"
	"klp-kvm/linuxpatch"
	"klp-kvm/livepatch"
)

// The progress guarantee for a Linux guest, as package livepatch has it
// for klp-kvm's own (livepatch/transition.go, progress): when only
// running vCPUs block a switch, they alone run on inside the same pause,
// each until it reaches the return address of its outermost frame inside
// the changing code (a breakpoint there: kvm.Machine.RunUntil, which the
// Machine offers as livepatch.Stepper), then the check is repeated. A
// vCPU whose way out is not known (its unwind was not reliable: no ORC
// entry, an interrupt entry, BPF or trampoline code) runs a short slice
// instead. A sleeping task that blocks cannot be moved that way (only
// time moves it): the guest resumes and the attempt is retried, as
// before.

// The budget of one attempt's progress, livepatch's (StepBudget,
// StepRound, StepSlice, its RoundBudget): the time the blocking vCPUs may run in all, each
// round capped at StepRound (where breakpoints do not fire, as on nested
// SVM under QEMU TCG, a round runs until its budget: bounded resumes with
// a check after each instead of one long run), a slice for a vCPU with no
// stop address. Unlike livepatch's, the budget counts only the time the
// vCPUs run, not the checks between rounds: a Linux guest's check (every
// task unwound with ORC, ~100 tasks) takes milliseconds in the nested
// tier, more than the whole of livepatch's budget, which would leave one
// round. The checks are bounded by maxStepRounds instead, which bounds
// what progress adds to a pause window: rounds x (round + check).
const maxStepRounds = 4

// orcEntrySize is sizeof(struct orc_entry) (__packed), Linux 6.1's.
const orcEntrySize = 6

// verdict is one consistency check's answer: what blocks, and whether
// progress can move it (livepatch's verdict).
type verdict struct {
	// why names the first thing found inside the changing code; "" when
	// the switch is safe.
	why string
	// sleeping: a task not running on a vCPU blocks (or a vCPU's stack
	// could not be found at all): only time moves it.
	sleeping bool
	// running holds the vCPUs that block while running, each with where
	// it leaves the changing code (the return address of its outermost
	// frame inside it), or nil where that is not known.
	running map[int][]uint64
}

// blockRunning records a running vCPU that blocks and where it leaves
// the changing code (nil: unknown).
func (v *verdict) blockRunning(cpu int, why string, stops []uint64) {
	if v.why == "" {
		v.why = why
	}
	if v.running == nil {
		v.running = map[int][]uint64{}
	}
	v.running[cpu] = stops
}

// exitStops is where a vCPU whose stack st holds an address in check
// leaves the changing code: the return address of the frame above the
// outermost frame inside check. Only an exact unwind knows it; after the
// conservative scan (or when the outermost frame is the stack's last),
// nil: the vCPU runs a slice.
func exitStops(st *linuxkernel.Stack, check []linuxkernel.AddrRange) []uint64 {
	if !st.Reliable {
		return nil
	}
	outer := -1
	for i, f := range st.Frames {
		for _, r := range check {
			if r.Contains(f.Addr) {
				outer = i
				break
			}
		}
	}
	if outer < 0 || outer+1 >= len(st.Frames) || st.Frames[outer+1].Addr == 0 {
		return nil
	}
	return []uint64{st.Frames[outer+1].Addr}
}

// progress lets the vCPUs that block v run on alone, the rest of the
// guest still paused, until they leave the changing code, checking again
// after each round; it ends when the switch is safe, a sleeping task
// blocks, the Machine cannot do it (not a livepatch.Stepper), the budget
// or the rounds are spent, or a RunUntil fails (then with the last
// verdict: the attempt resumes the guest and retries, as without a
// Stepper). The guest is paused. Steps and StepTime go into res.
func (m *Manager) progress(check []linuxkernel.AddrRange, v verdict, res *livepatch.Result) (verdict, error) {
	st, ok := m.cfg.Machine.(livepatch.Stepper)
	if !ok {
		return v, nil
	}
	t0 := time.Now()
	defer func() { res.StepTime += time.Since(t0) }()
	var ran time.Duration
	for round := 0; v.why != "" && !v.sleeping && len(v.running) > 0 && round < maxStepRounds; round++ {
		left := livepatch.StepBudget - ran
		if left <= 0 {
			break
		}
		res.Steps++
		t := time.Now()
		_, err := st.RunUntil(v.running, livepatch.RoundBudget(left, v.running))
		ran += time.Since(t)
		if err != nil {
			if m.cfg.Logf != nil {
				m.cfg.Logf("linuxlive: progress: %v", err)
			}
			break
		}
		var cerr error
		if v, cerr = m.blocked(check); cerr != nil {
			return v, cerr
		}
	}
	return v, nil
}

// patchORC is the unwinder's view of a linked patch's code: its text and,
// when the .ko has them (objtool writes them for every Debian-built
// module), its ORC tables as linuxpatch placed and relocated them, read
// from the image the host built (not from the guest). A module whose code
// is in more than one region, or none, gets its text alone (an unwind
// through it falls back to the conservative scan).
func patchORC(name string, img *linuxpatch.Image, release string) (linuxkernel.ModuleORC, error) {
	var text []linuxkernel.AddrRange
	for _, r := range img.Regions {
		if r.Prot == linuxpatch.ProtExec {
			text = append(text, linuxkernel.AddrRange{Start: r.Addr, End: r.Addr + r.Size})
		}
	}
	label := "klp-kvm patch " + name
	if len(text) != 1 {
		if len(text) == 0 {
			return linuxkernel.ModuleORC{}, nil
		}
		return linuxkernel.ModuleORC{Name: label, Text: text[0]}, nil
	}
	if img.ORC.Entries == 0 {
		return linuxkernel.ModuleORC{Name: label, Text: text[0]}, nil
	}
	format, err := linuxkernel.ORCFormatOf(release)
	if err != nil {
		return linuxkernel.ModuleORC{}, err
	}
	n := uint64(img.ORC.Entries)
	ipRaw, err := imageBytes(img, img.ORC.UnwindIP, 4*n)
	if err != nil {
		return linuxkernel.ModuleORC{}, fmt.Errorf(".orc_unwind_ip: %w", err)
	}
	entRaw, err := imageBytes(img, img.ORC.Unwind, orcEntrySize*n)
	if err != nil {
		return linuxkernel.ModuleORC{}, fmt.Errorf(".orc_unwind: %w", err)
	}
	return linuxkernel.HostORC(label, text[0], img.ORC.UnwindIP, ipRaw, entRaw, format)
}

// imageBytes is the image's n bytes at guest address a, which must lie
// within one region's contents.
func imageBytes(img *linuxpatch.Image, a, n uint64) ([]byte, error) {
	for _, r := range img.Regions {
		if a >= r.Addr && a-r.Addr <= uint64(len(r.Bytes)) && n <= uint64(len(r.Bytes))-(a-r.Addr) {
			return r.Bytes[a-r.Addr : a-r.Addr+n], nil
		}
	}
	return nil, fmt.Errorf("%d bytes at %#x are in none of the image's regions", n, a)
}
