package livepatch

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"slices"
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
	if v := m.checkView(); v != nil {
		v.Reset() // the guest may have run since the last check
	}
	regs, errs := m.vcpuRegs()
	tasks, b := m.guestTasks()
	if b != nil {
		v.first, v.sleeping = b, true
		return v
	}
	stacks, live := m.scratch.liveStacks(regs, errs, tasks)
	switching := switchingTasks(tasks, live, len(regs))
	if b := m.checkTasks(tasks, live, conservative, idx); b != nil {
		v.first, v.sleeping = b, true
		return v
	}
	for cpu := range regs {
		if b, stop := m.checkVCPU(regs[cpu], errs[cpu], stacks[cpu], idx, conservative); b != nil {
			// Named only when it blocks: no formatting on the way to a
			// switch.
			b.who = m.vcpuName(cpu, tasks)
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

// guestTasks reads the guest's tasks (none without klp_guest_abi). A
// task table that cannot be read blocks like a sleeping task (only time
// can change it). m.mu must be held.
func (m *Manager) guestTasks() ([]guestkernel.Task, *blocker) {
	if m.intro == nil {
		return nil, nil
	}
	tasks, err := m.checkView().Tasks()
	if err != nil {
		return nil, &blocker{who: "guest task table", what: "unreadable: " + err.Error()}
	}
	return tasks, nil
}

// checkView is the check's view of the guest (nil without
// klp_guest_abi): its reads remember page translations within a check
// and reuse their buffers. m.mu must be held.
func (m *Manager) checkView() *guestkernel.View {
	if m.intro == nil {
		return nil
	}
	if m.scratch.view == nil {
		m.scratch.view = m.intro.NewView()
	}
	return m.scratch.view
}

// checkScratch is the check's working memory, kept by the Manager from
// one check to the next (every check runs under m.mu), so that a check
// in the pause window does not allocate it again.
type checkScratch struct {
	live   []bool // by index in the tasks: live on a vCPU (or being switched)
	stacks []liveStack
	chain  []guestkernel.Frame // checkVCPU's chain
	regs   []engine.Regs       // vcpuRegs'
	errs   []error
	stack  []byte   // readStack's
	words  [16]byte // rawWords'
	view   *guestkernel.View
}

// liveStacks finds the stack each vCPU runs on and the tasks live on a
// vCPU (live[i] for tasks[i]; both slices are the scratch's, valid until
// the next check). A task is live on a vCPU when that vCPU's RSP lies in its stack;
// every other task is walked from its saved state. The guest's own
// on_cpu field is not trusted for this: schedule() marks next as on_cpu
// before the stack switch, and a vCPU paused in that window runs prev
// while next's saved frames (possibly inside a changing function) would
// be skipped.
func (sc *checkScratch) liveStacks(regs []engine.Regs, errs []error, tasks []guestkernel.Task) ([]liveStack, []bool) {
	live := reuse(&sc.live, len(tasks))
	stacks := reuse(&sc.stacks, len(regs))
	for cpu := range regs {
		rsp := regs[cpu].RSP
		stacks[cpu] = liveStack{lo: rsp &^ 7, hi: (rsp &^ 7) + maxVCPUStack}
		if errs[cpu] != nil {
			continue
		}
		for i, t := range tasks {
			if lo, hi, ok := onTaskStack(t, rsp); ok {
				live[i] = true
				stacks[cpu] = liveStack{lo: lo, hi: hi, known: true}
			}
		}
	}
	return stacks, live
}

// reuse returns *buf cut or grown to n zero values.
func reuse[T any](buf *[]T, n int) []T {
	if cap(*buf) < n {
		*buf = make([]T, n)
	}
	*buf = (*buf)[:n]
	clear(*buf)
	return *buf
}

// switchingTasks finds, for each of the ncpu vCPUs, a task the guest
// marks running on it whose stack that vCPU is not on: it is being
// switched in or out there right now, a transient state of that running
// vCPU, not a sleeping task. Such tasks are marked in live (not walked
// as sleeping); the blocker returned for their vCPU names the first.
func switchingTasks(tasks []guestkernel.Task, live []bool, ncpu int) map[int]*blocker {
	var switching map[int]*blocker // nil (no allocation) while no switch is in flight
	for i, t := range tasks {
		cpu := int(t.OnCPU)
		if !live[i] && t.OnCPU >= 0 && cpu < ncpu && switching[cpu] == nil {
			live[i] = true // not walked as sleeping
			if switching == nil {
				switching = map[int]*blocker{}
			}
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
	regs := reuse(&m.scratch.regs, n)
	errs := reuse(&m.scratch.errs, n)
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

// vcpuName names a vCPU by the task the guest says it runs (its
// cpu_current, read only for a vCPU that blocks: a failed read only
// leaves the name shorter). m.mu must be held.
func (m *Manager) vcpuName(cpu int, tasks []guestkernel.Task) string {
	var current []uint64
	if m.intro != nil {
		current, _ = m.intro.CPUCurrent()
	}
	for _, t := range tasks {
		if cpu < len(current) && t.Addr == current[cpu] {
			return fmt.Sprintf("CPU %d (pid %d %s)", cpu, t.PID, t.Name)
		}
	}
	return fmt.Sprintf("CPU %d", cpu)
}

// checkVCPU checks the live stack of one vCPU. It returns the innermost
// blocker, without its who (the caller names the vCPU), and the address
// where the vCPU leaves the changing code: the return address of the
// outermost frame inside a changing function (nil when not known). m.mu
// must be held.
func (m *Manager) checkVCPU(r engine.Regs, rerr error, st liveStack, idx *spanIndex, conservative bool) (*blocker, []uint64) {
	if rerr != nil {
		return &blocker{what: "registers unreadable: " + rerr.Error()}, nil
	}
	lo, hi := st.lo, st.hi
	if m.intro != nil && m.intro.InSwitch(r.RIP) {
		return &blocker{what: "a context switch", pc: r.RIP}, nil
	}
	if m.intro != nil && m.intro.InEntry(r.RIP) {
		// Between the hardware interrupt frame and the frame record
		// isr_common pushes (or after it is popped), the interrupted
		// function is missing from the RBP chain.
		return &blocker{what: "interrupt entry", pc: r.RIP}, nil
	}
	if conservative || m.intro == nil {
		if s := idx.hit(r.RIP, true); s != nil {
			return &blocker{what: s.label(), pc: r.RIP}, nil
		}
		return m.scanWords(r.RSP&^7, hi, idx), nil
	}
	frames, err := m.checkView().Guest().WalkLive(r.RIP, r.RSP, r.RBP, lo, hi, 0)
	if len(frames) == 0 {
		frames = []guestkernel.Frame{{PC: r.RIP}}
	}
	// The top function's frame may not be pushed yet (at its entry, right
	// after push %rbp, or at its ret): the words at RSP name its caller,
	// which the chain skips. They go in right after the top frame.
	chain := append(m.scratch.chain[:0], frames[0])
	chain = m.rawWords(chain, r.RSP)
	chain = append(chain, frames[1:]...)
	m.scratch.chain = chain
	first, outer := scanChain(chain, idx)
	if first == nil {
		if err != nil && st.known {
			return &blocker{what: "unreliable stack: " + err.Error()}, nil
		}
		return nil, nil
	}
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

// rawWords appends the two words at sp to chain as conservative frames,
// whatever they point to: the check compares them with the changing spans itself
// and does not depend on them being known kernel text (a return address
// into a patch's new function is not). m.mu must be held.
func (m *Manager) rawWords(chain []guestkernel.Frame, sp uint64) []guestkernel.Frame {
	w := m.scratch.words[:] // a local array would escape through the interface call
	sp &^= 7
	var mem interface{ ReadVirt(uint64, []byte) error } = m.g
	if v := m.checkView(); v != nil {
		mem = v
	}
	if sp == 0 || mem.ReadVirt(sp, w) != nil {
		return chain
	}
	return append(chain,
		guestkernel.Frame{PC: binary.LittleEndian.Uint64(w[0:]), FP: sp, Conservative: true},
		guestkernel.Frame{PC: binary.LittleEndian.Uint64(w[8:]), FP: sp + 8, Conservative: true})
}

// scanChain checks a walked chain (innermost first): the top frame and
// interrupted frames exactly, return addresses at PC-1. The words at an
// interrupted RSP (the caller of a function interrupted before it pushed
// its frame) are already in the chain: the walker adds them as
// conservative frames, patch-area addresses included (Guest.AddText). It
// returns the innermost blocker and the index in chain of the outermost
// frame inside a changing function.
func scanChain(chain []guestkernel.Frame, idx *spanIndex) (*blocker, int) {
	var first *blocker
	outer := -1
	for i, f := range chain {
		exact := (i == 0 || f.Interrupted) && !f.Conservative
		s := idx.hit(f.PC, exact)
		if s == nil {
			continue
		}
		if first == nil {
			what := s.label()
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
func (m *Manager) checkTasks(tasks []guestkernel.Task, live []bool, conservative bool, idx *spanIndex) *blocker {
	for i, t := range tasks {
		if live[i] {
			continue // its live stack is walked with its vCPU
		}
		var b *blocker
		if conservative {
			b = m.scanTask(t, idx)
		} else {
			frames, err := m.checkView().Guest().WalkTask(t, 0)
			if b, _ = scanChain(frames, idx); b == nil && err != nil {
				b = &blocker{what: "unreliable stack: " + err.Error()}
			}
		}
		if b != nil {
			// Named only when it blocks: no formatting per task.
			b.who = fmt.Sprintf("pid %d (%s)", t.PID, t.Name)
			return b
		}
	}
	return nil
}

// scanTask is the conservative check of a sleeping task: its saved RIP
// exactly, then every word from its saved RSP to the top of its stack.
// m.mu must be held.
func (m *Manager) scanTask(t guestkernel.Task, idx *spanIndex) *blocker {
	if s := idx.hit(t.SavedRIP, true); s != nil {
		return &blocker{what: s.label(), pc: t.SavedRIP}
	}
	_, hi, ok := onTaskStack(t, t.SavedRSP)
	if !ok {
		return &blocker{what: "unreliable stack: saved RSP outside its stack"}
	}
	return m.scanWords(t.SavedRSP&^7, hi, idx)
}

// scanWords checks every 8-byte word of [lo, hi) as a return address (the
// conservative, Ksplice-style check: any word that looks like a pointer
// into a changing function blocks). m.mu must be held.
func (m *Manager) scanWords(lo, hi uint64, idx *spanIndex) *blocker {
	buf := m.readStack(lo, hi)
	for off := 0; off+8 <= len(buf); off += 8 {
		v := binary.LittleEndian.Uint64(buf[off:])
		// A word is a return address (its call is at v-1) or an
		// interrupted RIP in an interrupt frame (exactly v): the scan
		// cannot tell which, so it takes both. Matched only at v-1, a
		// task preempted on a trampoline's single instruction, or at a
		// function's first byte, slipped through.
		s := idx.hit(v, false)
		if s == nil {
			s = idx.hit(v, true)
		}
		if s != nil {
			return &blocker{what: s.label() + " (stack word)", pc: v}
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
	buf := reuse(&m.scratch.stack, int(hi-lo))
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
	x := &spanIndex{spans: sortedSpans(spans)}
	x.maxHi = make([]uint64, len(x.spans))
	for i, s := range x.spans {
		x.maxHi[i] = s.hi
		if i > 0 {
			x.maxHi[i] = max(x.maxHi[i-1], s.hi)
		}
	}
	return x
}

// sortedSpans returns a copy of spans by lo. A plan's spans are one or
// two runs already in order (its functions', then their trampolines',
// in the patch's order, which is mostly the kernel's): two runs are
// merged in one pass; anything else is sorted. Sorting the 2048 spans
// of a 1024-function disable every time was an eighth of its host time.
func sortedSpans(spans []span) []span {
	byLo := func(a, b span) int { return cmp.Compare(a.lo, b.lo) }
	out := make([]span, len(spans))
	i := min(1, len(spans))
	for i < len(spans) && spans[i-1].lo <= spans[i].lo {
		i++
	}
	a, b := spans[:i], spans[i:]
	if !slices.IsSortedFunc(b, byLo) {
		copy(out, spans)
		slices.SortStableFunc(out, byLo)
		return out
	}
	k := 0
	for len(a) > 0 && len(b) > 0 {
		if b[0].lo < a[0].lo {
			out[k], b = b[0], b[1:]
		} else {
			out[k], a = a[0], a[1:]
		}
		k++
	}
	k += copy(out[k:], a)
	copy(out[k:], b)
	return out
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
