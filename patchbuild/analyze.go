package patchbuild

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strings"

	"klp-kvm/elfpatch"
)

// analysis compares the two builds and decides what the patch holds.
type analysis struct {
	plan   *Plan
	ki     *kernelIndex
	units  []string // paths, in build order
	before map[string]*unit
	after  map[string]*unit
	hunks  map[string][]*Hunk // unit path -> the hunks of its file

	changed    map[*fn]string // after functions whose kernel copy (or clone) is replaced
	klp        []*klpTarget   // the klp_funcs, in order
	afterGlob  map[string]*fn
	afterGData map[string]*dobj
	k          *keyer
}

type klpTarget struct {
	f      *fn // the after function
	old    elfpatch.Symbol
	sympos int
}

func newAnalysis(plan *Plan, ki *kernelIndex, units []string, before, after map[string]*unit, hunks map[string][]*Hunk) *analysis {
	return &analysis{plan: plan, ki: ki, units: units, before: before, after: after, hunks: hunks,
		changed: map[*fn]string{}, afterGlob: map[string]*fn{}, afterGData: map[string]*dobj{}, k: &keyer{busy: map[any]bool{}}}
}

// run pairs, compares and fills the plan's changed functions, refusals and
// warnings.
func (an *analysis) run() {
	for _, p := range an.units {
		b, a := an.before[p], an.after[p]
		if a != nil {
			for _, f := range a.funcs {
				if f.global {
					an.afterGlob[f.name] = f
				}
			}
			for _, ob := range a.data {
				if ob.global {
					an.afterGData[ob.name] = ob
				}
			}
		}
		if b != nil && a != nil {
			pairUnits(b, a)
		}
		setKeys(b, a)
	}
	for _, p := range an.units {
		b, a := an.before[p], an.after[p]
		if b == nil || a == nil {
			continue
		}
		an.compareData(b, a)
		for _, f := range a.funcs {
			if f.pair == nil {
				continue
			}
			if d := an.fnDiff(f.pair, f); d != "" {
				an.changed[f] = an.reason(p, f, d)
			}
		}
	}
	an.propagateClones()
	an.pickTargets()
	an.checkNewData()
	if len(an.changed) == 0 && len(an.plan.Refused) == 0 {
		an.plan.refuse(KindNoChange, "", "(diff)", "the diff changes no function's code (comments, unused declarations or code that compiles to the same bytes)")
	}
}

// reason says why f changed, and whether the diff touches it directly.
func (an *analysis) reason(unit string, f *fn, d string) string {
	name := f.name
	if isClone(name) {
		return "compiler clone: " + d
	}
	for _, h := range an.hunks[unit] {
		if strings.Contains(h.Section, name+"(") {
			return d
		}
		for _, l := range h.Lines {
			if strings.Contains(l.Text, name+"(") {
				return d
			}
		}
	}
	return d + " (no hunk of its own: code inlined into it, or a callee's clone, changed)"
}

// pairUnits pairs the before and after functions and objects of one unit.
func pairUnits(b, a *unit) {
	pairFns(b.funcs, a.funcs)
	refs := func(u *unit) map[*dobj]map[string]bool {
		m := map[*dobj]map[string]bool{}
		for _, f := range u.funcs {
			for _, r := range f.relocs {
				if r.kind == tData {
					if m[r.ob] == nil {
						m[r.ob] = map[string]bool{}
					}
					m[r.ob][normName(f.name)] = true
				}
			}
		}
		return m
	}
	rb, ra := refs(b), refs(a)
	gb, ga := map[string][]*dobj{}, map[string][]*dobj{}
	for _, ob := range b.data {
		gb[normName(ob.name)] = append(gb[normName(ob.name)], ob)
	}
	for _, ob := range a.data {
		ga[normName(ob.name)] = append(ga[normName(ob.name)], ob)
	}
	for norm, la := range ga {
		lb := gb[norm]
		if len(lb) == 1 && len(la) == 1 {
			la[0].pair, lb[0].pair = lb[0], la[0]
			continue
		}
		// Static locals of the same name in several functions (count.0,
		// count.1): the one used by the same functions is the same one,
		// whatever number gcc gave it this time.
		for _, x := range la {
			var cand *dobj
			n := 0
			for _, y := range lb {
				if y.pair != nil {
					continue
				}
				for fname := range ra[x] {
					if rb[y][fname] {
						cand = y
						n++
						break
					}
				}
			}
			if n == 1 {
				x.pair, cand.pair = cand, x
			}
		}
		for _, x := range la {
			for _, y := range lb {
				if x.pair == nil && y.pair == nil && x.name == y.name {
					x.pair, y.pair = y, x
				}
			}
		}
	}
}

func pairFns(bs, as []*fn) {
	gb, ga := map[string][]*fn{}, map[string][]*fn{}
	for _, f := range bs {
		gb[normName(f.name)] = append(gb[normName(f.name)], f)
	}
	for _, f := range as {
		ga[normName(f.name)] = append(ga[normName(f.name)], f)
	}
	for norm, la := range ga {
		lb := gb[norm]
		for _, x := range la {
			for _, y := range lb {
				if x.pair == nil && y.pair == nil && x.name == y.name {
					x.pair, y.pair = y, x
				}
			}
		}
		var rb, ra []*fn
		for _, y := range lb {
			if y.pair == nil {
				rb = append(rb, y)
			}
		}
		for _, x := range la {
			if x.pair == nil {
				ra = append(ra, x)
			}
		}
		if len(ra) == 1 && len(rb) == 1 {
			ra[0].pair, rb[0].pair = rb[0], ra[0]
		}
	}
}

// setKeys names functions and writable or global objects by their
// "before" identity, so a reference compares equal across the builds when
// it reaches the same thing.
func setKeys(b, a *unit) {
	if b != nil {
		for _, f := range b.funcs {
			f.key = "f:" + f.name
		}
		for _, ob := range b.data {
			if ob.writable || ob.global {
				ob.key = "d:" + ob.name
			}
		}
	}
	if a != nil {
		for _, f := range a.funcs {
			if f.pair != nil {
				f.key = "f:" + f.pair.name
			} else {
				f.key = "new-f:" + f.name
			}
		}
		for _, ob := range a.data {
			switch {
			case ob.pair != nil && (ob.pair.writable || ob.pair.global):
				ob.key = "d:" + ob.pair.name
			case ob.pair == nil && (ob.writable || ob.global):
				ob.key = "new-d:" + ob.name
			}
		}
	}
}

// fnDiff says how two functions differ ("" if they do not).
func (an *analysis) fnDiff(b, a *fn) string {
	if b.size != a.size {
		return fmt.Sprintf("size %d -> %d bytes", b.size, a.size)
	}
	mb, ma := synthMasked(b.code, b.relocs), synthMasked(a.code, a.relocs)
	if !bytes.Equal(mb, ma) {
		at := 0
		for at < len(mb) && mb[at] == ma[at] {
			at++
		}
		return fmt.Sprintf("code differs at +%#x", at)
	}
	if len(b.relocs) != len(a.relocs) {
		return fmt.Sprintf("%d -> %d relocations", len(b.relocs), len(a.relocs))
	}
	for i := range b.relocs {
		rb, ra := b.relocs[i], a.relocs[i]
		if an.k.relocKey(rb) != an.k.relocKey(ra) {
			db, da := describe(rb), describe(ra)
			if db == da {
				return fmt.Sprintf("reference at +%#x: %s, whose content changed", ra.off, da)
			}
			return fmt.Sprintf("reference at +%#x: %s -> %s", ra.off, db, da)
		}
	}
	return ""
}

// describe names a relocation's target for people.
func describe(r *nreloc) string {
	off := ""
	if r.toff != 0 {
		off = fmt.Sprintf("%+#x", r.toff)
	}
	switch r.kind {
	case tExtern:
		return r.name + off
	case tFunc:
		return r.fn.name + off
	case tData:
		return r.ob.name + off
	case tPiece:
		if r.pc.str {
			s := strings.TrimSuffix(string(r.pc.bytes), "\x00")
			if len(s) > 40 {
				s = s[:40] + "..."
			}
			return fmt.Sprintf("string %q%s", s, off)
		}
		return fmt.Sprintf("read-only data in %s%s", r.pc.u.secs[r.pc.sec].Name, off)
	}
	return "?"
}

// compareData refuses changed initializers of global or writable data.
func (an *analysis) compareData(b, a *unit) {
	for _, ob := range a.data {
		old := ob.pair
		if old == nil || (!old.writable && !old.global) {
			continue
		}
		what := "static variable"
		if old.global {
			what = "global variable"
		}
		if !old.writable {
			what = "global constant"
		}
		switch {
		case old.size != ob.size:
			an.plan.refuse(KindDataChanged, a.path, ob.name, "%s changed size from %d to %d bytes (an array bound or a struct layout changed); the running kernel's copy cannot be resized", what, old.size, ob.size)
		case old.nobits != ob.nobits:
			an.plan.refuse(KindDataChanged, a.path, ob.name, "%s's initializer changed (zero-filled before, initialized now or the reverse); a patch cannot re-initialize data the running kernel already uses", what)
		case !bytes.Equal(masked(old.bytes, old.relocs), masked(ob.bytes, ob.relocs)) || an.relocsDiffer(old.relocs, ob.relocs):
			an.plan.refuse(KindDataChanged, a.path, ob.name, "%s's initializer changed; a patch cannot re-initialize data the running kernel already uses (change it from code, e.g. in a function the patch replaces)", what)
		}
	}
}

func (an *analysis) relocsDiffer(x, y []*nreloc) bool {
	if len(x) != len(y) {
		return true
	}
	for i := range x {
		if an.k.relocKey(x[i]) != an.k.relocKey(y[i]) {
			return true
		}
	}
	return false
}

// propagateClones: a compiler clone (.isra, .constprop, .part) cannot be
// redirected (its calling convention is private to its callers), so when
// one changes, its callers are replaced instead, and they call the new
// clone carried by the patch.
func (an *analysis) propagateClones() {
	var work []*fn
	for f := range an.changed {
		if f.pair != nil && isClone(f.pair.name) {
			work = append(work, f)
		}
	}
	slices.SortFunc(work, func(a, b *fn) int {
		return cmp.Or(strings.Compare(a.u.path, b.u.path), strings.Compare(a.name, b.name))
	})
	for len(work) > 0 {
		c := work[0]
		work = work[1:]
		old := c.pair
		for _, caller := range old.u.funcs {
			if caller == old {
				continue
			}
			calls := false
			for _, r := range caller.relocs {
				if r.kind == tFunc && r.fn == old {
					calls = true
				}
			}
			if !calls || caller.pair == nil {
				continue
			}
			nc := caller.pair
			if _, done := an.changed[nc]; done {
				continue
			}
			an.changed[nc] = fmt.Sprintf("calls %s, a compiler clone whose code changed", old.name)
			if isClone(caller.name) {
				work = append(work, nc)
			}
		}
	}
}

// pickTargets turns the changed functions into klp_funcs (clones are
// carried, not redirected), refusing those the kernel cannot redirect.
func (an *analysis) pickTargets() {
	var fs []*fn
	for f := range an.changed {
		fs = append(fs, f)
	}
	order := map[string]int{}
	for i, p := range an.units {
		order[p] = i
	}
	slices.SortFunc(fs, func(a, b *fn) int {
		return cmp.Or(cmp.Compare(order[a.u.path], order[b.u.path]), strings.Compare(a.name, b.name))
	})
	for _, f := range fs {
		old := f.pair
		if isClone(old.name) {
			continue
		}
		ks, err := an.ki.symbol(old.u.path, old.name, old.global)
		if err != nil {
			an.plan.refuse(KindNotInKernel, old.u.path, old.name, "%v", err)
			continue
		}
		pos := an.ki.sympos(ks)
		if _, err := an.ki.k.Patchable(ks.Name, pos); err != nil {
			why := err.Error()
			var ee *elfpatch.Error
			if errors.As(err, &ee) && ee.Err != nil {
				why = ee.Err.Error()
			}
			hint := ""
			if !old.fentry && !strings.Contains(why, "notrace") {
				hint = " (marked notrace, or compiled without -pg -mfentry)"
			}
			an.plan.refuse(KindNoFentry, old.u.path, old.name, "changed, but the kernel cannot redirect it: %s%s; change its callers instead, or move the fix into a traced function", why, hint)
			continue
		}
		if old.decoded && !old.returns {
			an.plan.warn(KindNeverReturns, old.u.path, old.name, "never returns (no ret, no tail call): a task running it stays inside it for good, so the consistency model can never switch that task; enabling will wait for it until the deadline and fail with EBUSY unless forced")
		}
		an.klp = append(an.klp, &klpTarget{f: f, old: ks, sympos: pos})
		an.plan.Changed = append(an.plan.Changed, PlanFunc{Name: old.name, Unit: old.u.path, Sympos: pos, Size: f.size, Reason: an.changed[f]})
	}
}

// checkNewData refuses new variables used by code the patch does not
// replace (unchanged code, or changed code it cannot redirect): that code
// would need a variable that only the patch has.
func (an *analysis) checkNewData() {
	replaced := map[*fn]bool{}
	for _, t := range an.klp {
		replaced[t.f] = true
	}
	for f := range an.changed {
		if f.pair != nil && isClone(f.pair.name) {
			replaced[f] = true
		}
	}
	for _, p := range an.units {
		a := an.after[p]
		if a == nil {
			continue
		}
		for _, ob := range a.data {
			if ob.pair != nil || !ob.writable {
				continue
			}
			uses := func(rs []*nreloc, from *unit) bool {
				for _, r := range rs {
					if (r.kind == tData && r.ob == ob) || (r.kind == tExtern && ob.global && r.name == ob.name && from != ob.u) {
						return true
					}
				}
				return false
			}
			var users []string
			for _, q := range an.units {
				u := an.after[q]
				if u == nil {
					continue
				}
				for _, f := range u.funcs {
					if uses(f.relocs, u) && f.pair != nil && !replaced[f] {
						users = append(users, f.name)
					}
				}
				for _, d := range u.data {
					if uses(d.relocs, u) && d.pair != nil && (d.pair.writable || d.pair.global) {
						users = append(users, d.name)
					}
				}
			}
			if len(users) == 0 {
				continue
			}
			what := "new static variable"
			if ob.global {
				what = "new global variable"
			}
			slices.Sort(users)
			an.plan.refuse(KindNewGlobalData, ob.u.path, ob.name, "%s used by %s, which the patch does not replace (code of the running kernel cannot reach data that lives in the patch)", what, strings.Join(slices.Compact(users), ", "))
		}
	}
}
