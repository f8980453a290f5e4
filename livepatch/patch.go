package livepatch

import (
	"slices"

	"klp-kvm/ftrace"
)

// Ops is struct klp_ops: one per patched old function, shared by every
// enabled patch that replaces it. The top of Stack (its last element) is
// the function that runs; its new_func is in the site's trampoline slot.
type Ops struct {
	OldAddr uint64
	Site    uint64
	Stack   []*Func
}

func (o *Ops) top() *Func {
	if o == nil || len(o.Stack) == 0 {
		return nil
	}
	return o.Stack[len(o.Stack)-1]
}

// span is a code range whose meaning is about to change: no task may be
// inside it when the switch happens.
type span struct {
	lo, hi  uint64
	name    string
	entryOK bool // an exact PC at lo has not started the function yet (old function's fentry site)
	tramp   bool // the klp_ops trampoline of the function name: named only for a blocker
}

// label names the span in a blocker's message.
func (s *span) label() string {
	if s.tramp {
		return s.name + " trampoline"
	}
	return s.name
}

// stackPlan is the outcome of an operation on the func_stacks, computed
// on a copy so that nothing changes until the switch succeeds.
type stackPlan struct {
	next     map[uint64]*Ops
	updates  []ftrace.Update
	spans    []span
	replaced []*Patch
}

// cloneOps copies the func_stacks for a plan to change. m.mu must be
// held.
func (m *Manager) cloneOps() map[uint64]*Ops {
	m.mustHold()
	next := make(map[uint64]*Ops, len(m.ops))
	for k, o := range m.ops {
		c := *o
		c.Stack = append([]*Func(nil), o.Stack...)
		next[k] = &c
	}
	return next
}

// implSpan is what currently runs for ops o (the current top's new
// function, or the old function when nothing is stacked).
func implSpan(f *Func, o *Ops) span {
	if t := o.top(); t != nil {
		return span{lo: t.NewAddr, hi: t.NewAddr + max(t.NewSize, 1), name: t.NewName}
	}
	return span{lo: f.OldAddr, hi: f.OldAddr + max(f.OldSize, 1), name: f.OldName, entryOK: true}
}

// planEnable pushes p's funcs on their stacks (klp_patch_func); an atomic
// replace patch first takes every other enabled patch's funcs off (the
// functions it does not patch get their original code back: Linux's nop
// funcs, discarded when the transition completes). m.mu must be held.
func (m *Manager) planEnable(p *Patch) *stackPlan {
	pl := &stackPlan{next: m.cloneOps()}
	touched := map[uint64]*Func{}
	var order []uint64
	touch := func(f *Func) {
		if _, ok := touched[f.OldAddr]; !ok {
			touched[f.OldAddr] = f
			order = append(order, f.OldAddr)
		}
	}
	if p.Replace {
		for _, q := range m.patches {
			if q == p || !q.Enabled {
				continue
			}
			pl.replaced = append(pl.replaced, q)
			for _, f := range q.funcs() {
				touch(f)
				removeFunc(pl.next, f)
			}
		}
	}
	for _, f := range p.funcs() {
		touch(f)
		o := pl.next[f.OldAddr]
		if o == nil {
			o = &Ops{OldAddr: f.OldAddr, Site: f.Site}
			pl.next[f.OldAddr] = o
		}
		o.Stack = append(o.Stack, f)
	}
	m.finishPlan(pl, touched, order)
	return pl
}

// planDisable pops p's funcs (klp_unpatch_func): the previous top, if
// any, runs again; an empty stack puts the NOP back. m.mu must be held.
func (m *Manager) planDisable(p *Patch) *stackPlan {
	pl := &stackPlan{next: m.cloneOps()}
	touched := map[uint64]*Func{}
	var order []uint64
	for _, f := range p.funcs() {
		if _, ok := touched[f.OldAddr]; !ok {
			touched[f.OldAddr] = f
			order = append(order, f.OldAddr)
		}
		removeFunc(pl.next, f)
	}
	m.finishPlan(pl, touched, order)
	return pl
}

func removeFunc(ops map[uint64]*Ops, f *Func) {
	o := ops[f.OldAddr]
	if o == nil {
		return
	}
	for i := len(o.Stack) - 1; i >= 0; i-- {
		if o.Stack[i] == f {
			o.Stack = append(o.Stack[:i:i], o.Stack[i+1:]...)
			break
		}
	}
	if len(o.Stack) == 0 {
		delete(ops, f.OldAddr)
	}
}

// finishPlan derives the site updates (the new top's new_func, or 0 for
// the NOP) and the spans whose meaning changes, for every touched site
// whose target actually changes. m.mu must be held.
func (m *Manager) finishPlan(pl *stackPlan, touched map[uint64]*Func, order []uint64) {
	// At most one update and two spans per function: room for them at
	// once (growing them by appends was 11% of a 1024-function enable's
	// bytes).
	pl.updates = slices.Grow(pl.updates, len(order))
	pl.spans = slices.Grow(pl.spans, 2*len(order))
	// The trampolines' spans go after the functions': each list is in
	// the patch's order, mostly by address already, and the check's
	// index merges two sorted runs without sorting (newSpanIndex).
	var tramps []span
	for _, addr := range order {
		f := touched[addr]
		cur, nxt := m.ops[addr], pl.next[addr]
		var curT, nxtT uint64
		if t := cur.top(); t != nil {
			curT = t.NewAddr
		}
		if t := nxt.top(); t != nil {
			nxtT = t.NewAddr
		}
		if curT == nxtT {
			continue
		}
		pl.updates = append(pl.updates, m.siteUpdate(f.Site, nxtT))
		pl.spans = append(pl.spans, implSpan(f, cur))
		if s, ok := m.tracer.Site(f.Site); ok && s.State == ftrace.StateJmp {
			// A vCPU about to execute the trampoline's jmp would still
			// read the slot: treat it as inside the current function.
			if tramps == nil {
				tramps = make([]span, 0, len(order))
			}
			tramps = append(tramps, span{lo: s.Tramp, hi: s.Tramp + ftrace.TrampSize, name: f.OldName, tramp: true})
		}
	}
	pl.spans = append(pl.spans, tramps...)
}

// siteUpdate is the ftrace update that points site at target (0: the
// NOP). It needs no lock.
func (m *Manager) siteUpdate(site, target uint64) ftrace.Update {
	return ftrace.Update{Site: site, Target: target}
}
