package livepatch

import (
	"encoding/binary"
	"fmt"
	"sort"
	"sync"

	"klp-kvm/guestkernel"
	"klp-kvm/kvm/engine"
)

// The consistency check (Linux's klp_check_stack and friends in
// transition.c): with every vCPU paused, no task and no vCPU may be inside
// a function whose meaning the switch changes. The map, transition.c ->
// this file:
//
//	klp_try_switch_task (every task)  (*Manager).check: one verdict for the whole paused guest
//	klp_check_and_switch_task         (*Manager).checkTasks (sleeping tasks), checkVCPU (running vCPUs)
//	klp_check_stack                   scanChain over a walked chain; scanTask and scanWords when conservative
//	klp_check_stack_func              (*spanIndex).hit over the spans of a stackPlan
//
// Everything here runs inside a transition, with the guest paused and
// m.mu held.

// maxVCPUStack is how far above RSP a vCPU's stack is assumed to reach
// when the running task's stack bounds are unknown.
const maxVCPUStack = guestkernel.StackSize

// maxTaskStack bounds a task's stack size as read from the guest: a larger
// one is not believed (the guest is untrusted). The guest's stacks are
// guestkernel.StackSize (16 KiB, as on x86-64 Linux); 1 MiB is 64 times
// that, room for any stack a kernel could believably have, while it
// bounds what one corrupt task_struct can make the host read and
// allocate inside the pause window. guestkernel's walker uses the same
// bound.
const maxTaskStack = 1 << 20

// maxScanBytes bounds one conservative scan (scanWords), which reads the
// range into one host buffer: one task stack at most.
const maxScanBytes = maxTaskStack

// blocker is what stopped a transition attempt.
type blocker struct {
	who  string // "pid 7 (parker)" or "CPU 1 (pid 3 worker0)"
	what string // the function, or why the stack could not be trusted
	pc   uint64
}

func (b *blocker) String() string {
	if b.pc != 0 {
		return fmt.Sprintf("%s is in %s (pc %#x)", b.who, b.what, b.pc)
	}
	return fmt.Sprintf("%s: %s", b.who, b.what)
}

// key identifies a blocker across attempts (the pc moves).
func (b *blocker) key() string { return b.who + ": " + b.what }

// verdict is the outcome of one check of a paused guest.
type verdict struct {
	// first is the first thing found inside a changing function; nil
	// when the switch is safe.
	first *blocker
	// sleeping: a task that is not running on a vCPU blocks. Only time
	// can move it (Linux's rule for a sleeping task): resume and retry.
	sleeping bool
	// running holds the vCPUs that block while running, each with the
	// address where it leaves the changing code (the return address of
	// its outermost frame inside it), or none where that is not known
	// (a context switch, the interrupt entry, an unreliable stack).
	running map[int][]uint64
}

// check walks every vCPU's live stack and every sleeping task's saved
// stack (the guest is paused). Sleeping tasks are checked first: when one
// blocks, the running vCPUs do not matter for this attempt. It runs
// inside a transition: m.mu must be held.
func (m *Manager) check(idx *spanIndex, conservative bool) *verdict {
	m.mustHold()
	v := &verdict{}
	if len(idx.spans) == 0 {
		return v
	}
	regs, errs := m.vcpuRegs()
	tasks, current, b := m.guestTasks()
	if b != nil {
		v.first, v.sleeping = b, true
		return v
	}
	stacks, live := liveStacks(regs, errs, tasks)
	switching := switchingTasks(tasks, live, len(regs))
	if b := m.checkTasks(tasks, live, conservative, idx.hit); b != nil {
		v.first, v.sleeping = b, true
		return v
	}
	for cpu := range regs {
		if b, stop := m.checkVCPU(cpu, regs[cpu], errs[cpu], stacks[cpu], vcpuName(cpu, tasks, current), idx, conservative); b != nil {
			v.blockRunning(cpu, b, stop)
		}
	}
	// A switch in flight blocks too (next's saved frames may be inside a
	// changing function): that vCPU runs a slice (its way out is not
	// known) and the check repeats.
	for cpu := range regs {
		if b := switching[cpu]; b != nil {
			if _, seen := v.running[cpu]; !seen {
				v.blockRunning(cpu, b, nil)
			}
		}
	}
	return v
}

// guestTasks reads the guest's tasks and the task each vCPU runs (none
// without klp_guest_abi). A task table that cannot be read blocks like a
// sleeping task (only time can change it); a failed read of the vCPUs'
// current tasks does not, as they only name the vCPUs in a blocker
// (vcpuName). m.mu must be held.
func (m *Manager) guestTasks() ([]guestkernel.Task, []uint64, *blocker) {
	if m.intro == nil {
		return nil, nil, nil
	}
	tasks, err := m.intro.Tasks()
	if err != nil {
		return nil, nil, &blocker{who: "guest task table", what: "unreadable: " + err.Error()}
	}
	current, _ := m.intro.CPUCurrent()
	return tasks, current, nil
}

// liveStacks finds the stack each vCPU runs on and the tasks live on a
// vCPU. A task is live on a vCPU when that vCPU's RSP lies in its stack;
// every other task is walked from its saved state. The guest's own
// on_cpu field is not trusted for this: schedule() marks next as on_cpu
// before the stack switch, and a vCPU paused in that window runs prev
// while next's saved frames (possibly inside a changing function) would
// be skipped.
func liveStacks(regs []engine.Regs, errs []error, tasks []guestkernel.Task) ([]liveStack, map[uint64]bool) {
	live := make(map[uint64]bool)
	stacks := make([]liveStack, len(regs))
	for cpu := range regs {
		rsp := regs[cpu].RSP
		stacks[cpu] = liveStack{lo: rsp &^ 7, hi: (rsp &^ 7) + maxVCPUStack}
		if errs[cpu] != nil {
			continue
		}
		for _, t := range tasks {
			if lo, hi, ok := onTaskStack(t, rsp); ok {
				live[t.Addr] = true
				stacks[cpu] = liveStack{lo: lo, hi: hi, known: true}
			}
		}
	}
	return stacks, live
}

// switchingTasks finds, for each of the ncpu vCPUs, a task the guest
// marks running on it whose stack that vCPU is not on: it is being
// switched in or out there right now, a transient state of that running
// vCPU, not a sleeping task. Such tasks are marked in live (not walked
// as sleeping); the blocker returned for their vCPU names the first.
func switchingTasks(tasks []guestkernel.Task, live map[uint64]bool, ncpu int) map[int]*blocker {
	switching := map[int]*blocker{}
	for _, t := range tasks {
		cpu := int(t.OnCPU)
		if !live[t.Addr] && t.OnCPU >= 0 && cpu < ncpu && switching[cpu] == nil {
			live[t.Addr] = true // not walked as sleeping
			switching[cpu] = &blocker{who: fmt.Sprintf("CPU %d (pid %d %s)", cpu, t.PID, t.Name), what: "a context switch"}
		}
	}
	return switching
}

// blockRunning records a running vCPU that blocks, and where it leaves
// the changing code (nil: unknown).
func (v *verdict) blockRunning(cpu int, b *blocker, stop []uint64) {
	if v.first == nil {
		v.first = b
	}
	if v.running == nil {
		v.running = map[int][]uint64{}
	}
	v.running[cpu] = stop
}

// vcpuRegs returns every vCPU's registers: from the pause snapshot where
// the machine keeps one (no round trip to the vCPU threads), else read
// concurrently. m.mu must be held.
func (m *Manager) vcpuRegs() ([]engine.Regs, []error) {
	n := m.g.NumCPUs()
	regs := make([]engine.Regs, n)
	errs := make([]error, n)
	if snap, ok := m.g.(PausedRegser); ok {
		all, err := snap.PausedRegs()
		for cpu := 0; cpu < n; cpu++ {
			switch {
			case err != nil:
				errs[cpu] = err
			case cpu < len(all):
				regs[cpu] = all[cpu]
			default:
				errs[cpu] = fmt.Errorf("no registers of vCPU %d in the pause snapshot", cpu)
			}
		}
		return regs, errs
	}
	var wg sync.WaitGroup
	for cpu := 0; cpu < n; cpu++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			regs[cpu], errs[cpu] = m.g.Regs(cpu)
		}()
	}
	wg.Wait()
	return regs, errs
}

// taskStack returns a task's stack bounds if they are believable.
func taskStack(t guestkernel.Task) (lo, hi uint64, ok bool) {
	if t.StackSize == 0 || t.StackSize > maxTaskStack || t.StackBase+t.StackSize < t.StackBase {
		return 0, 0, false
	}
	return t.StackBase, t.StackBase + t.StackSize, true
}

// onTaskStack reports whether sp lies in t's stack, whose bounds must be
// believable (taskStack), and returns those bounds.
func onTaskStack(t guestkernel.Task, sp uint64) (lo, hi uint64, ok bool) {
	lo, hi, ok = taskStack(t)
	if !ok || sp < lo || sp >= hi {
		return 0, 0, false
	}
	return lo, hi, true
}

// liveStack is the stack a vCPU runs on: its task's, when RSP lies in
// one (known), else an assumed maxVCPUStack above RSP.
type liveStack struct {
	lo, hi uint64
	known  bool
}

// vcpuName names a vCPU by the task the guest says it runs.
func vcpuName(cpu int, tasks []guestkernel.Task, current []uint64) string {
	for _, t := range tasks {
		if cpu < len(current) && t.Addr == current[cpu] {
			return fmt.Sprintf("CPU %d (pid %d %s)", cpu, t.PID, t.Name)
		}
	}
	return fmt.Sprintf("CPU %d", cpu)
}

// checkVCPU checks the live stack of one vCPU. It returns the innermost
// blocker and the address where the vCPU leaves the changing code: the
// return address of the outermost frame inside a changing function (nil
// when not known). m.mu must be held.
func (m *Manager) checkVCPU(cpu int, r engine.Regs, rerr error, st liveStack, who string,
	idx *spanIndex, conservative bool) (*blocker, []uint64) {
	if rerr != nil {
		return &blocker{who: who, what: "registers unreadable: " + rerr.Error()}, nil
	}
	lo, hi := st.lo, st.hi
	if m.intro != nil && m.intro.InSwitch(r.RIP) {
		return &blocker{who: who, what: "a context switch", pc: r.RIP}, nil
	}
	if m.intro != nil && m.intro.InEntry(r.RIP) {
		// Between the hardware interrupt frame and the frame record
		// isr_common pushes (or after it is popped), the interrupted
		// function is missing from the RBP chain.
		return &blocker{who: who, what: "interrupt entry", pc: r.RIP}, nil
	}
	if conservative || m.intro == nil {
		if s := idx.hit(r.RIP, true); s != nil {
			return &blocker{who: who, what: s.name, pc: r.RIP}, nil
		}
		return m.scanWords(r.RSP&^7, hi, who, idx.hit), nil
	}
	frames, err := m.intro.WalkLive(r.RIP, r.RSP, r.RBP, lo, hi, 0)
	if len(frames) == 0 {
		frames = []guestkernel.Frame{{PC: r.RIP}}
	}
	// The top function's frame may not be pushed yet (at its entry, right
	// after push %rbp, or at its ret): the words at RSP name its caller,
	// which the chain skips. They go in right after the top frame.
	chain := append([]guestkernel.Frame{frames[0]}, m.rawWords(r.RSP)...)
	chain = append(chain, frames[1:]...)
	first, outer := scanChain(chain, idx.hit)
	if first == nil {
		if err != nil && st.known {
			return &blocker{who: who, what: "unreliable stack: " + err.Error()}, nil
		}
		return nil, nil
	}
	first.who = who
	return first, exitAddrs(chain, outer)
}

// exitAddrs returns where a vCPU leaves the changing code whose outermost
// frame is chain[outer]: the return address of the next frame on the
// chain, and before it any word that may be the changing function's own
// return address (the words at RSP when it has not pushed its frame yet:
// they are only guesses, but arming a breakpoint on a word that is no
// return address costs nothing). At most engine.MaxBreakpoints.
func exitAddrs(chain []guestkernel.Frame, outer int) []uint64 {
	var stops []uint64
	for _, f := range chain[outer+1:] {
		if f.PC != 0 && len(stops) < engine.MaxBreakpoints {
			stops = append(stops, f.PC)
		}
		if !f.Conservative {
			return stops
		}
	}
	return stops
}

// rawWords returns the two words at sp as conservative frames, whatever
// they point to: the check compares them with the changing spans itself
// and does not depend on them being known kernel text (a return address
// into a patch's new function is not). m.mu must be held.
func (m *Manager) rawWords(sp uint64) []guestkernel.Frame {
	var w [16]byte
	sp &^= 7
	if sp == 0 || m.g.ReadVirt(sp, w[:]) != nil {
		return nil
	}
	return []guestkernel.Frame{
		{PC: binary.LittleEndian.Uint64(w[0:]), FP: sp, Conservative: true},
		{PC: binary.LittleEndian.Uint64(w[8:]), FP: sp + 8, Conservative: true},
	}
}

// scanChain checks a walked chain (innermost first): the top frame and
// interrupted frames exactly, return addresses at PC-1. The words at an
// interrupted RSP (the caller of a function interrupted before it pushed
// its frame) are already in the chain: the walker adds them as
// conservative frames, patch-area addresses included (Guest.AddText). It
// returns the innermost blocker and the index in chain of the outermost
// frame inside a changing function.
func scanChain(chain []guestkernel.Frame, hit func(uint64, bool) *span) (*blocker, int) {
	var first *blocker
	outer := -1
	for i, f := range chain {
		exact := (i == 0 || f.Interrupted) && !f.Conservative
		s := hit(f.PC, exact)
		if s == nil {
			continue
		}
		if first == nil {
			what := s.name
			if f.Conservative {
				what += " (stack word)"
			}
			first = &blocker{what: what, pc: f.PC}
		}
		outer = i
	}
	return first, outer
}

// checkTasks walks the saved stacks of the tasks not live on a vCPU. It
// runs inside a transition: m.mu must be held.
func (m *Manager) checkTasks(tasks []guestkernel.Task, live map[uint64]bool, conservative bool, hit func(uint64, bool) *span) *blocker {
	for _, t := range tasks {
		if live[t.Addr] {
			continue // its live stack is walked with its vCPU
		}
		who := fmt.Sprintf("pid %d (%s)", t.PID, t.Name)
		if conservative {
			if b := m.scanTask(t, who, hit); b != nil {
				return b
			}
			continue
		}
		frames, err := m.intro.WalkTask(t, 0)
		if b, _ := scanChain(frames, hit); b != nil {
			b.who = who
			return b
		}
		if err != nil {
			return &blocker{who: who, what: "unreliable stack: " + err.Error()}
		}
	}
	return nil
}

// scanTask is the conservative check of a sleeping task: its saved RIP
// exactly, then every word from its saved RSP to the top of its stack.
// m.mu must be held.
func (m *Manager) scanTask(t guestkernel.Task, who string, hit func(uint64, bool) *span) *blocker {
	if s := hit(t.SavedRIP, true); s != nil {
		return &blocker{who: who, what: s.name, pc: t.SavedRIP}
	}
	_, hi, ok := onTaskStack(t, t.SavedRSP)
	if !ok {
		return &blocker{who: who, what: "unreliable stack: saved RSP outside its stack"}
	}
	return m.scanWords(t.SavedRSP&^7, hi, who, hit)
}

// scanWords checks every 8-byte word of [lo, hi) as a return address (the
// conservative, Ksplice-style check: any word that looks like a pointer
// into a changing function blocks). m.mu must be held.
func (m *Manager) scanWords(lo, hi uint64, who string, hit func(uint64, bool) *span) *blocker {
	buf := m.readStack(lo, hi)
	for off := 0; off+8 <= len(buf); off += 8 {
		v := binary.LittleEndian.Uint64(buf[off:])
		// A word is a return address (its call is at v-1) or an
		// interrupted RIP in an interrupt frame (exactly v): the scan
		// cannot tell which, so it takes both. Matched only at v-1, a
		// task preempted on a trampoline's single instruction, or at a
		// function's first byte, slipped through.
		s := hit(v, false)
		if s == nil {
			s = hit(v, true)
		}
		if s != nil {
			return &blocker{who: who, what: s.name + " (stack word)", pc: v}
		}
	}
	return nil
}

// readStack reads [lo, hi) for scanWords, at most maxScanBytes (nil for
// a larger or empty range). Part of an assumed range may be unmapped:
// when the whole does not read, the longest readable prefix of halving
// length is returned (nil if not even 8 bytes read). m.mu must be held.
func (m *Manager) readStack(lo, hi uint64) []byte {
	if hi <= lo || hi-lo > maxScanBytes {
		return nil
	}
	buf := make([]byte, hi-lo)
	if m.g.ReadVirt(lo, buf) == nil {
		return buf
	}
	for n := uint64(len(buf)) / 2; n >= 8; n /= 2 {
		if m.g.ReadVirt(lo, buf[:n&^7]) == nil {
			return buf[:n&^7]
		}
	}
	return nil
}

// spanIndex holds spans sorted by start with a running maximum of their
// ends: a lookup is a binary search plus a short walk back (a
// 1024-function patch checks every frame of every stack against 2048
// spans). Built once per transition, outside the pause.
type spanIndex struct {
	spans []span
	maxHi []uint64
}

func newSpanIndex(spans []span) *spanIndex {
	x := &spanIndex{spans: append([]span(nil), spans...)}
	sort.Slice(x.spans, func(i, j int) bool { return x.spans[i].lo < x.spans[j].lo })
	x.maxHi = make([]uint64, len(x.spans))
	for i, s := range x.spans {
		x.maxHi[i] = s.hi
		if i > 0 {
			x.maxHi[i] = max(x.maxHi[i-1], s.hi)
		}
	}
	return x
}

// hit returns the span holding pc: an exact PC (a vCPU's RIP, an
// interrupted frame), or a return address, which belongs to the call
// before it.
func (x *spanIndex) hit(pc uint64, exact bool) *span {
	if !exact {
		pc--
	}
	i := sort.Search(len(x.spans), func(i int) bool { return x.spans[i].lo > pc })
	for j := i - 1; j >= 0 && x.maxHi[j] > pc; j-- {
		s := &x.spans[j]
		if pc >= s.lo && pc < s.hi && !(exact && s.entryOK && pc == s.lo) {
			return s
		}
	}
	return nil
}
