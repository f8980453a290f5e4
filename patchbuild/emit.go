package patchbuild

import (
	"encoding/binary"
	"fmt"
	"slices"

	"klp-kvm/elfpatch"
)

// The emitter writes the patch object: the changed functions' new code,
// the new code and data they need, and the klp_func/klp_object/klp_patch
// structures of guestkernel/include/livepatch.h, every reference to
// unchanged kernel code and data going through a plain symbol (globals)
// or .klp.sym.vmlinux.NAME,POS (statics and ambiguous names). It follows
// references from what it writes: what it reaches is either the kernel's
// (and referenced) or the patch's (and written).

type emitter struct {
	an      *analysis
	w       *objWriter
	fnSym   map[*fn]*outSym
	obSym   map[*dobj]*outSym
	pcLoc   map[*piece]pieceLoc
	strSec  *outSec
	strOff  map[string]uint64
	work    []func()
	emitted map[*fn]bool
	newData []*dobj
	mcount  []*outSym
	refused map[string]bool
}

type pieceLoc struct {
	sym  *outSym
	base uint64
}

func newEmitter(an *analysis) *emitter {
	return &emitter{an: an, w: newObjWriter(), fnSym: map[*fn]*outSym{}, obSym: map[*dobj]*outSym{},
		pcLoc: map[*piece]pieceLoc{}, strOff: map[string]uint64{}, emitted: map[*fn]bool{}, refused: map[string]bool{}}
}

func (e *emitter) refuseOnce(kind, unit, sym, format string, args ...any) {
	k := kind + "\x00" + unit + "\x00" + sym
	if e.refused[k] {
		return
	}
	e.refused[k] = true
	e.an.plan.refuse(kind, unit, sym, format, args...)
}

// emit builds the object; name is the patch name.
func (e *emitter) emit(name string) []byte {
	an := e.an
	for _, t := range an.klp {
		e.function(t.f)
	}
	// carried clones (changed, not redirected) are reached through their
	// callers; nothing to start from here.
	for len(e.work) > 0 {
		job := e.work[0]
		e.work = e.work[1:]
		job()
	}
	e.klpStructs(name)
	return e.w.bytes()
}

// function returns the patch's symbol for f, writing f on first use.
func (e *emitter) function(f *fn) *outSym {
	if s := e.fnSym[f]; s != nil {
		return s
	}
	align := f.u.secs[f.sec].Align
	sec := e.w.section(".text."+f.name, elfpatch.SHT_PROGBITS, elfpatch.SHF_ALLOC|elfpatch.SHF_EXECINSTR, max(align, 16))
	sec.data = slices.Clone(f.code)
	sym := e.w.local(f.name, elfpatch.TypeFunc, sec, 0, f.size)
	e.fnSym[f] = sym
	if f.fentry {
		e.mcount = append(e.mcount, sym)
	}
	if _, isChanged := e.an.changed[f]; !isChanged || isClone(f.pair.name) {
		reason := "new code called by the changed functions"
		switch {
		case isChanged:
			reason = "compiler clone whose code changed: carried by the patch, called by the replaced functions"
		case isClone(f.name):
			reason = "new compiler clone, called by the replaced functions"
		}
		e.an.plan.New = append(e.an.plan.New, PlanFunc{Name: f.name, Unit: f.u.path, Size: f.size, Reason: reason})
	}
	e.work = append(e.work, func() {
		for _, r := range f.relocs {
			for k := 0; k < r.width; k++ {
				sec.data[int(r.off)+k] = 0
			}
			if r.kind == tFunc && r.fn == f && r.toff != 0 {
				// inside itself (rare: a computed address)
				sec.relocs = append(sec.relocs, outRel{off: r.off, typ: r.typ, sym: sym, addend: r.addend()})
				continue
			}
			ts, add, ok := e.target(f.u, r, f.name)
			if !ok {
				continue
			}
			sec.relocs = append(sec.relocs, outRel{off: r.off, typ: r.typ, sym: ts, addend: add})
		}
	})
	return sym
}

// target maps a reference made by code or data the patch carries.
func (e *emitter) target(u *unit, r *nreloc, from string) (*outSym, int64, bool) {
	an := e.an
	switch r.kind {
	case tFunc:
		f := r.fn
		if _, ch := an.changed[f]; ch {
			// A call, a clone, or a place inside the function (a jump
			// table's entry, a computed label) is the new code.
			if r.branch || isClone(f.pair.name) || r.toff != 0 {
				return e.function(f), r.addend(), true
			}
			// Its address: the kernel's function, whose entry is redirected
			// (a function pointer compares equal to the kernel's own).
			return e.kernelRef(f.pair.u.path, f.pair.name, f.pair.global, from), r.addend(), true
		}
		if f.pair == nil {
			return e.function(f), r.addend(), true
		}
		return e.kernelRef(f.pair.u.path, f.pair.name, f.pair.global, from), r.addend(), true
	case tExtern:
		if g := an.afterGlob[r.name]; g != nil && g.u != u {
			if _, ch := an.changed[g]; (ch && r.branch) || g.pair == nil {
				return e.function(g), r.addend(), true
			}
		}
		if d := an.afterGData[r.name]; d != nil && d.u != u && d.pair == nil {
			return e.object(d), r.addend(), true
		}
		if _, err := an.ki.k.LookupGlobal(r.name); err != nil {
			e.refuseOnce(KindNotInKernel, u.path, r.name, "used by %s, but the kernel has no global symbol of that name", from)
			return nil, 0, false
		}
		return e.w.undef(r.name), r.addend(), true
	case tData:
		ob := r.ob
		if ob.pair != nil && (ob.pair.writable || ob.pair.global) {
			return e.kernelRef(ob.pair.u.path, ob.pair.name, ob.pair.global, from), r.addend(), true
		}
		if ob.pair != nil && an.k.dataKey(ob.pair) == an.k.dataKey(ob) {
			return e.kernelRef(ob.pair.u.path, ob.pair.name, ob.pair.global, from), r.addend(), true
		}
		return e.object(ob), r.addend(), true
	case tPiece:
		loc := e.piece(r.pc)
		return loc.sym, int64(loc.base) + r.addend(), true
	}
	return nil, 0, false
}

func (e *emitter) kernelRef(unit, name string, global bool, from string) *outSym {
	ks, err := e.an.ki.symbol(unit, name, global)
	if err != nil {
		e.refuseOnce(KindNotInKernel, unit, name, "used by %s: %v", from, err)
		return e.w.undef(name)
	}
	return e.w.undef(e.an.ki.refName(ks))
}

// object writes a data object the patch carries: read-only data whose
// content changed, or a new variable.
func (e *emitter) object(ob *dobj) *outSym {
	if s := e.obSym[ob]; s != nil {
		return s
	}
	src := ob.u.secs[ob.sec]
	var sec *outSec
	prefix := ".rodata."
	if ob.writable {
		prefix = ".data."
		if ob.nobits {
			prefix = ".bss."
		}
	}
	flags := uint64(elfpatch.SHF_ALLOC)
	if ob.writable {
		flags |= elfpatch.SHF_WRITE
	}
	if ob.nobits {
		sec = e.w.section(prefix+ob.name, elfpatch.SHT_NOBITS, flags, src.Align)
		sec.size = ob.size
	} else {
		sec = e.w.section(prefix+ob.name, elfpatch.SHT_PROGBITS, flags, src.Align)
		sec.data = slices.Clone(ob.bytes)
	}
	sym := e.w.local(ob.name, elfpatch.TypeObject, sec, 0, ob.size)
	e.obSym[ob] = sym
	reason := "read-only data whose content changed: the patch's copy"
	switch {
	case ob.pair == nil && ob.writable:
		reason = "new variable: lives in the patch (starts at its initializer when the patch is loaded; gone when it is unloaded)"
		e.newData = append(e.newData, ob)
	case ob.pair == nil:
		reason = "new read-only data"
	}
	e.an.plan.Data = append(e.an.plan.Data, PlanData{Name: ob.name, Unit: ob.u.path, Size: ob.size, Reason: reason})
	e.work = append(e.work, func() {
		for _, r := range ob.relocs {
			for k := 0; k < r.width; k++ {
				sec.data[int(r.off)+k] = 0
			}
			ts, add, ok := e.target(ob.u, r, ob.name)
			if ok {
				sec.relocs = append(sec.relocs, outRel{off: r.off, typ: r.typ, sym: ts, addend: add})
			}
		}
	})
	return sym
}

// piece places anonymous read-only data: strings in one pool, other pieces
// in sections of their own.
func (e *emitter) piece(p *piece) pieceLoc {
	if loc, ok := e.pcLoc[p]; ok {
		return loc
	}
	if p.str {
		if e.strSec == nil {
			e.strSec = e.w.section(".rodata.str.klp", elfpatch.SHT_PROGBITS, elfpatch.SHF_ALLOC, 8)
		}
		// each string at its section's alignment (str1.8: gcc may copy
		// such strings with aligned 8-byte moves)
		al := max(min(p.u.secs[p.sec].Align, 8), 1)
		s := fmt.Sprintf("%d:%s", al, p.bytes)
		off, ok := e.strOff[s]
		if !ok {
			for uint64(len(e.strSec.data))%al != 0 {
				e.strSec.data = append(e.strSec.data, 0)
			}
			off = uint64(len(e.strSec.data))
			e.strSec.data = append(e.strSec.data, p.bytes...)
			e.strOff[s] = off
		}
		loc := pieceLoc{e.w.sectionSym(e.strSec), off}
		e.pcLoc[p] = loc
		return loc
	}
	src := p.u.secs[p.sec]
	sec := e.w.section(src.Name+".klp", elfpatch.SHT_PROGBITS, elfpatch.SHF_ALLOC, src.Align)
	sec.data = slices.Clone(p.bytes)
	loc := pieceLoc{e.w.sectionSym(sec), 0}
	e.pcLoc[p] = loc
	e.work = append(e.work, func() {
		for _, r := range p.relocs {
			for k := 0; k < r.width; k++ {
				sec.data[int(r.off)+k] = 0
			}
			ts, add, ok := e.target(p.u, r, src.Name)
			if ok {
				sec.relocs = append(sec.relocs, outRel{off: r.off, typ: r.typ, sym: ts, addend: add})
			}
		}
	})
	return loc
}

// klpStructs writes klp_func[], klp_object[], klp_patch, the KLP_PATCH
// pointer, the module name and the patch's own fentry table.
func (e *emitter) klpStructs(name string) {
	w := e.w
	le := binary.LittleEndian
	const rw = elfpatch.SHF_ALLOC | elfpatch.SHF_WRITE
	names := w.section(".rodata.klp_names", elfpatch.SHT_PROGBITS, elfpatch.SHF_ALLOC, 1)
	nameOff := map[string]uint64{}
	for _, t := range e.an.klp {
		if _, ok := nameOff[t.old.Name]; !ok {
			nameOff[t.old.Name] = uint64(len(names.data))
			names.data = append(names.data, t.old.Name...)
			names.data = append(names.data, 0)
		}
	}
	namesSym := w.sectionSym(names)
	funcs := w.section(".data.klp_funcs", elfpatch.SHT_PROGBITS, rw, 8)
	funcs.data = make([]byte, 24*(len(e.an.klp)+1))
	for i, t := range e.an.klp {
		off := uint64(24 * i)
		funcs.relocs = append(funcs.relocs,
			outRel{off: off, typ: elfpatch.R_X86_64_64, sym: namesSym, addend: int64(nameOff[t.old.Name])},
			outRel{off: off + 8, typ: elfpatch.R_X86_64_64, sym: e.fnSym[t.f]})
		le.PutUint64(funcs.data[off+16:], uint64(t.sympos))
	}
	funcsSym := w.local("klp_funcs", elfpatch.TypeObject, funcs, 0, uint64(len(funcs.data)))
	objs := w.section(".data.klp_objs", elfpatch.SHT_PROGBITS, rw, 8)
	objs.data = make([]byte, 2*48)
	objs.relocs = append(objs.relocs, outRel{off: 8, typ: elfpatch.R_X86_64_64, sym: funcsSym}) // name NULL: vmlinux
	objsSym := w.local("klp_objs", elfpatch.TypeObject, objs, 0, uint64(len(objs.data)))
	patch := w.section(".data.klp_patch", elfpatch.SHT_PROGBITS, rw, 8)
	patch.data = make([]byte, 24)
	patch.relocs = append(patch.relocs, outRel{off: 8, typ: elfpatch.R_X86_64_64, sym: objsSym})
	patchSym := w.local("klp_patch", elfpatch.TypeObject, patch, 0, 24)
	ptr := w.section(".klp.patch", elfpatch.SHT_PROGBITS, elfpatch.SHF_ALLOC, 8)
	ptr.data = make([]byte, 8)
	ptr.relocs = append(ptr.relocs, outRel{off: 0, typ: elfpatch.R_X86_64_64, sym: patchSym})
	w.local("__klp_patch_ptr", elfpatch.TypeObject, ptr, 0, 8)
	mod := w.section(".klp.modname", elfpatch.SHT_PROGBITS, elfpatch.SHF_ALLOC, 1)
	mod.data = append([]byte(name), 0)
	w.local("__klp_modname", elfpatch.TypeObject, mod, 0, uint64(len(mod.data)))
	if len(e.mcount) > 0 {
		mc := w.section("__mcount_loc", elfpatch.SHT_PROGBITS, elfpatch.SHF_ALLOC, 8)
		mc.data = make([]byte, 8*len(e.mcount))
		for i, s := range e.mcount {
			mc.relocs = append(mc.relocs, outRel{off: uint64(8 * i), typ: elfpatch.R_X86_64_64, sym: s})
		}
	}
}

// checkObject parses the written object back and lays it out against the
// kernel: what `klp-kvm patch load` will do first.
func checkObject(obj []byte, k *elfpatch.Kernel, base uint64) error {
	p, err := elfpatch.ParsePatch(obj)
	if err != nil {
		return err
	}
	_, err = p.Layout(base, k)
	return err
}
