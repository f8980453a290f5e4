package linuxpatch

import (
	"bytes"
	"fmt"
	"strings"
	"syscall"

	"klp-kvm/elfpatch"
)

// ptr is the value of a pointer field of a klp struct in the module: NULL,
// or a place in the module (through an R_X86_64_64 relocation, which is
// how a relocatable object holds a pointer).
type ptr struct {
	null bool
	sec  int
	off  uint64
	sym  string // the relocation's symbol, for messages
}

// readPtr reads the 8-byte pointer field at (sec, off). The field's own
// bytes must be zero (Linux refuses to relocate over a nonzero value);
// without a relocation it is NULL.
func (m *Module) readPtr(sec int, off uint64, what string) (ptr, error) {
	data := m.obj.SectionData(sec)
	if off > uint64(len(data)) || uint64(len(data))-off < 8 {
		return ptr{}, errf("klp", ErrFormat, "%s runs past the end of the section", what).at(m.secName(sec), off)
	}
	if le64(data[off:]) != 0 {
		return ptr{}, errf("klp", ErrFormat, "%s holds %#x: a relocatable module holds pointers as relocations", what, le64(data[off:])).at(m.secName(sec), off)
	}
	r, err := m.normalAt(sec, off)
	if err != nil {
		return ptr{}, err
	}
	if r == nil {
		if m.klpRelaAt(sec, off) {
			return ptr{}, errf("klp", ErrUnsupported, "%s is set by a .klp.rela relocation; the livepatch core reads it before those are applied", what).at(m.secName(sec), off)
		}
		return ptr{null: true}, nil
	}
	name := m.symName(r.Symbol)
	if r.Type != elfpatch.R_X86_64_64 {
		return ptr{}, errf("klp", ErrFormat, "%s is relocated by %s, not R_X86_64_64", what, elfpatch.RelocTypeName(r.Type)).at(m.secName(sec), off).sym(name)
	}
	s := &m.obj.Symbols()[r.Symbol]
	if s.Section <= 0 || s.Section >= len(m.classes) {
		return ptr{}, errf("klp", ErrFormat, "%s points outside the module", what).at(m.secName(sec), off).sym(name)
	}
	target := s.Value + uint64(r.Addend)
	return ptr{sec: s.Section, off: target, sym: name}, nil
}

func (m *Module) klpRelaAt(sec int, off uint64) bool {
	for _, r := range m.obj.Relocs(sec) {
		if _, klp := m.isKlpRela[r.RelaSection]; klp && r.Offset < off+8 && r.Offset+8 > off {
			return true
		}
	}
	return false
}

// readString reads the C string p points to, shorter than limit bytes.
func (m *Module) readString(p ptr, limit int, what string) (string, error) {
	if !m.placed(p.sec) || m.classes[p.sec] == classBSS || m.classes[p.sec] == classThisModule {
		return "", errf("klp", ErrFormat, "%s points into %s, which holds no loaded data", what, m.secName(p.sec)).sym(p.sym)
	}
	data := m.obj.SectionData(p.sec)
	if p.off >= uint64(len(data)) {
		return "", errf("klp", ErrFormat, "%s points past the end of its section", what).at(m.secName(p.sec), p.off).sym(p.sym)
	}
	rest := data[p.off:]
	if len(rest) > limit {
		rest = rest[:limit]
	}
	n := bytes.IndexByte(rest, 0)
	if n < 0 {
		return "", errf("klp", ErrFormat, "%s is not a NUL-terminated string shorter than %d bytes", what, limit).at(m.secName(p.sec), p.off).sym(p.sym).errno(syscall.EINVAL)
	}
	return string(rest[:n]), nil
}

// array checks that p points at element i of an array of size-byte
// structs in a data section, and returns its offset.
func (m *Module) element(p ptr, i int, size uint64, what string) (uint64, error) {
	if !m.placed(p.sec) || (m.classes[p.sec] != classData && m.classes[p.sec] != classROData) {
		return 0, errf("klp", ErrFormat, "%s points into %s, not into the module's data", what, m.secName(p.sec)).sym(p.sym)
	}
	n := uint64(len(m.obj.SectionData(p.sec)))
	off := p.off + uint64(i)*size
	if off < p.off || off > n || n-off < size {
		return 0, errf("klp", ErrFormat, "%s[%d] runs past the end of %s without its sentinel", what, i, m.secName(p.sec)).at(m.secName(p.sec), p.off).sym(p.sym)
	}
	return off, nil
}

// maxCandidates bounds the places findPatch tries: a livepatch module
// holds THIS_MODULE in its klp_patch and perhaps a few file_operations.
const maxCandidates = 32

// findPatch finds the module's struct klp_patch without running code:
// a place in the module's data with an R_X86_64_64 relocation against
// the module's own struct module (THIS_MODULE) at
// offsetof(klp_patch, mod) and a pointer to the module's data at
// offsetof(klp_patch, objs), whose objs[] and funcs[] read as Linux's
// livepatch core reads them. Exactly one place must qualify.
func (m *Module) findPatch() error {
	l := m.layout
	syms := m.obj.Symbols()
	type cand struct {
		sec int
		off uint64
	}
	var cands []cand
	for t := range m.classes {
		if m.classes[t] != classData && m.classes[t] != classROData {
			continue
		}
		for _, r := range m.normal[t] {
			s := &syms[r.Symbol]
			if r.Type != elfpatch.R_X86_64_64 || s.Section <= 0 || s.Section >= len(m.classes) ||
				m.classes[s.Section] != classThisModule || s.Value+uint64(r.Addend) != 0 || r.Offset < l.PatchMod {
				continue
			}
			if len(cands) == maxCandidates {
				return errf("klp", ErrRange, "more than %d places hold THIS_MODULE", maxCandidates).at(m.secName(t), r.Offset)
			}
			cands = append(cands, cand{t, r.Offset - l.PatchMod})
		}
	}
	if len(cands) == 0 {
		return errf("klp", ErrFormat, "no struct klp_patch: no data holds THIS_MODULE at offsetof(klp_patch, mod) = %d", l.PatchMod).errno(syscall.EINVAL)
	}
	var found []*Module
	var where []string
	var firstErr error
	for _, c := range cands {
		try := *m
		try.Objects, try.States = nil, nil
		if err := try.readPatch(c.sec, c.off); err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		found = append(found, &try)
		where = append(where, try.Patch.String())
	}
	switch len(found) {
	case 0:
		if len(cands) == 1 {
			return firstErr
		}
		return &Error{Op: "klp", Kind: ErrFormat, Detail: fmt.Sprintf("none of %d places that hold THIS_MODULE is a struct klp_patch; the first", len(cands)), Err: firstErr}
	case 1:
		*m = *found[0]
		return nil
	}
	return errf("klp", ErrFormat, "%d places read as a struct klp_patch (%s): which one klp_enable_patch gets is not known without running the init", len(found), strings.Join(where, ", "))
}

// readPatch reads the klp_patch at (sec, off) and everything it points
// to, with the checks of Linux's klp_enable_patch and klp_init_*_early.
func (m *Module) readPatch(sec int, off uint64) error {
	l := m.layout
	data := m.obj.SectionData(sec)
	if off > uint64(len(data)) || uint64(len(data))-off < l.PatchSize {
		return errf("klp", ErrFormat, "struct klp_patch (%d bytes) runs past the end of the section", l.PatchSize).at(m.secName(sec), off)
	}
	m.Patch = m.loc(sec, off)
	switch data[off+l.PatchReplace] {
	case 0:
	case 1:
		m.Replace = true
	default:
		return errf("klp", ErrFormat, "klp_patch.replace is %d, not a bool", data[off+l.PatchReplace]).at(m.secName(sec), off+l.PatchReplace)
	}
	objs, err := m.readPtr(sec, off+l.PatchObjs, "klp_patch.objs")
	if err != nil {
		return err
	}
	if objs.null {
		return errf("klp", ErrFormat, "klp_patch.objs is NULL").at(m.secName(sec), off+l.PatchObjs).errno(syscall.EINVAL)
	}
	total := 0
	names := map[string]bool{}
	for i := 0; ; i++ {
		if i > maxObjects {
			return errf("klp", ErrRange, "more than %d objects", maxObjects).at(m.secName(objs.sec), objs.off)
		}
		eo, err := m.element(objs, i, l.ObjectSize, "klp_patch.objs")
		if err != nil {
			return err
		}
		name, err := m.readPtr(objs.sec, eo+l.ObjectName, fmt.Sprintf("objs[%d].name", i))
		if err != nil {
			return err
		}
		funcs, err := m.readPtr(objs.sec, eo+l.ObjectFuncs, fmt.Sprintf("objs[%d].funcs", i))
		if err != nil {
			return err
		}
		if name.null && funcs.null {
			break // klp_for_each_object_static's sentinel
		}
		o := Object{Name: VmlinuxObject, Loc: m.loc(objs.sec, eo)}
		if !name.null {
			if o.Name, err = m.readString(name, moduleNameLn, fmt.Sprintf("objs[%d].name", i)); err != nil {
				return err
			}
			if o.Name == "" || o.Name == VmlinuxObject {
				// Linux would take "vmlinux" for a module of that name.
				return errf("klp", ErrFormat, "objs[%d].name is %q: the kernel object is named by NULL", i, o.Name).at(m.secName(objs.sec), eo+l.ObjectName).errno(syscall.EINVAL)
			}
		}
		if names[o.Name] {
			return errf("klp", ErrFormat, "object %s given twice", o.Name).at(m.secName(objs.sec), eo).errno(syscall.EEXIST)
		}
		names[o.Name] = true
		if funcs.null {
			return errf("klp", ErrFormat, "objs[%d] (%s) has no funcs", i, o.Name).at(m.secName(objs.sec), eo+l.ObjectFuncs).errno(syscall.EINVAL)
		}
		for k, cbOff := range l.ObjectCallbacks {
			cb, err := m.readPtr(objs.sec, eo+cbOff, fmt.Sprintf("objs[%d].callbacks.%s", i, CallbackNames[k]))
			if err != nil {
				return err
			}
			if cb.null {
				continue
			}
			if !m.placed(cb.sec) || m.classes[cb.sec] != classText {
				return errf("klp", ErrFormat, "objs[%d].callbacks.%s points into %s, not the module's loaded code", i, CallbackNames[k], m.secName(cb.sec)).sym(cb.sym)
			}
			loc := m.loc(cb.sec, cb.off)
			o.Callbacks[k] = &loc
		}
		if err := m.readFuncs(&o, funcs, i, &total); err != nil {
			return err
		}
		m.Objects = append(m.Objects, o)
	}
	if l.PatchStates >= 0 {
		if err := m.readStates(sec, off+uint64(l.PatchStates)); err != nil {
			return err
		}
	}
	return nil
}

func (m *Module) readFuncs(o *Object, funcs ptr, oi int, total *int) error {
	l := m.layout
	seen := map[string]bool{}
	for j := 0; ; j++ {
		if j > maxFuncs || *total > maxAllFuncs {
			return errf("klp", ErrRange, "more than %d functions", min(maxFuncs, maxAllFuncs)).at(m.secName(funcs.sec), funcs.off)
		}
		ef, err := m.element(funcs, j, l.FuncSize, fmt.Sprintf("objs[%d].funcs", oi))
		if err != nil {
			return err
		}
		what := fmt.Sprintf("objs[%d].funcs[%d]", oi, j)
		oldName, err := m.readPtr(funcs.sec, ef+l.FuncOldName, what+".old_name")
		if err != nil {
			return err
		}
		newFunc, err := m.readPtr(funcs.sec, ef+l.FuncNewFunc, what+".new_func")
		if err != nil {
			return err
		}
		if r, err := m.normalAt(funcs.sec, ef+l.FuncOldSympos); err != nil || r != nil {
			if err == nil {
				err = errf("klp", ErrFormat, "%s.old_sympos is relocated", what).at(m.secName(funcs.sec), ef+l.FuncOldSympos)
			}
			return err
		}
		sympos := le64(m.obj.SectionData(funcs.sec)[ef+l.FuncOldSympos:])
		if oldName.null && newFunc.null && sympos == 0 {
			break // klp_for_each_func_static's sentinel
		}
		if oldName.null || newFunc.null {
			return errf("klp", ErrFormat, "%s has a NULL old_name or new_func", what).at(m.secName(funcs.sec), ef).errno(syscall.EINVAL)
		}
		if sympos > maxSympos {
			return errf("klp", ErrRange, "%s.old_sympos %d", what, sympos).at(m.secName(funcs.sec), ef+l.FuncOldSympos)
		}
		f := Func{OldSympos: int(sympos), Loc: m.loc(funcs.sec, ef)}
		if f.OldName, err = m.readString(oldName, ksymNameLen, what+".old_name"); err != nil {
			return err
		}
		if f.OldName == "" {
			return errf("klp", ErrFormat, "%s.old_name is empty", what).at(m.secName(funcs.sec), ef).errno(syscall.EINVAL)
		}
		if !m.placed(newFunc.sec) || m.classes[newFunc.sec] != classText {
			return errf("klp", ErrFormat, "%s.new_func points into %s, not the module's loaded code", what, m.secName(newFunc.sec)).at(m.secName(funcs.sec), ef+l.FuncNewFunc).sym(newFunc.sym)
		}
		if newFunc.off >= uint64(len(m.obj.SectionData(newFunc.sec))) {
			return errf("klp", ErrFormat, "%s.new_func points past the end of %s", what, m.secName(newFunc.sec)).at(m.secName(funcs.sec), ef+l.FuncNewFunc).sym(newFunc.sym)
		}
		f.NewFunc = m.loc(newFunc.sec, newFunc.off)
		f.NewSize = m.sizes[relKey{newFunc.sec, newFunc.off}]
		// The func's sysfs directory is "<old_name>,<sympos or 1>": a
		// second one of the same name fails kobject_add with EEXIST.
		key := fmt.Sprintf("%s,%d", f.OldName, max(f.OldSympos, 1))
		if seen[key] {
			return errf("klp", ErrFormat, "%s patches %s in %s a second time", what, key, o.Name).at(m.secName(funcs.sec), ef).errno(syscall.EEXIST)
		}
		seen[key] = true
		o.Funcs = append(o.Funcs, f)
		*total++
	}
	return nil
}

// readStates reads klp_patch.states: NULL, or an array ended by id 0
// (klp_for_each_state_static).
func (m *Module) readStates(sec int, off uint64) error {
	l := m.layout
	p, err := m.readPtr(sec, off, "klp_patch.states")
	if err != nil || p.null {
		return err
	}
	ids := map[uint64]bool{}
	for i := 0; ; i++ {
		if i > maxStates {
			return errf("klp", ErrRange, "more than %d states", maxStates).at(m.secName(p.sec), p.off)
		}
		e, err := m.element(p, i, l.StateSize, "klp_patch.states")
		if err != nil {
			return err
		}
		d := m.obj.SectionData(p.sec)
		id := le64(d[e+l.StateID:])
		if id == 0 {
			return nil
		}
		if ids[id] {
			return errf("klp", ErrFormat, "state id %d given twice", id).at(m.secName(p.sec), e)
		}
		ids[id] = true
		v := uint32(d[e+l.StateVersion]) | uint32(d[e+l.StateVersion+1])<<8 | uint32(d[e+l.StateVersion+2])<<16 | uint32(d[e+l.StateVersion+3])<<24
		m.States = append(m.States, State{ID: id, Version: v, Loc: m.loc(p.sec, e)})
	}
}
