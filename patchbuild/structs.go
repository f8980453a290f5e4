package patchbuild

import (
	"debug/dwarf"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"

	"klp-kvm/elfpatch"
)

// Struct layouts, read from the DWARF that both builds carry (-g): a
// struct or union whose size or member offsets changed cannot be live
// patched, since the running kernel's objects keep the old layout (kpatch
// and klp-build refuse it too; the way out is a shadow variable).

type structLayout struct {
	size    int64
	members []member
}

type member struct {
	name      string
	off, size int64
	bits      string
}

func (l *structLayout) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d:", l.size)
	for _, m := range l.members {
		fmt.Fprintf(&b, "%s@%d/%d%s;", m.name, m.off, m.size, m.bits)
	}
	return b.String()
}

// dwarfOf reads a unit's DWARF, with the object's relocations applied to
// the debug sections (in an ET_REL their cross-section offsets are
// relocations against section symbols).
func dwarfOf(u *unit) (*dwarf.Data, error) {
	secs := map[string][]byte{}
	for i, s := range u.secs {
		if !strings.HasPrefix(s.Name, ".debug_") || s.Type == elfpatch.SHT_NOBITS {
			continue
		}
		data := slices.Clone(u.obj.SectionData(i))
		for _, r := range u.obj.Relocs(i) {
			sym := u.syms[r.Symbol]
			v := uint64(int64(sym.Value) + r.Addend)
			switch r.Type {
			case elfpatch.R_X86_64_32, elfpatch.R_X86_64_32S:
				if r.Offset+4 <= uint64(len(data)) {
					binary.LittleEndian.PutUint32(data[r.Offset:], uint32(v))
				}
			case elfpatch.R_X86_64_64:
				if r.Offset+8 <= uint64(len(data)) {
					binary.LittleEndian.PutUint64(data[r.Offset:], v)
				}
			}
		}
		secs[s.Name] = data
	}
	if secs[".debug_info"] == nil {
		return nil, fmt.Errorf("%s: no DWARF (compiled without -g?)", u.path)
	}
	d, err := dwarf.New(secs[".debug_abbrev"], nil, nil, secs[".debug_info"], secs[".debug_line"], nil, secs[".debug_ranges"], secs[".debug_str"])
	if err != nil {
		return nil, fmt.Errorf("%s: DWARF: %v", u.path, err)
	}
	for _, n := range []string{".debug_addr", ".debug_line_str", ".debug_str_offsets", ".debug_rnglists"} {
		if secs[n] != nil {
			if err := d.AddSection(n, secs[n]); err != nil {
				return nil, fmt.Errorf("%s: DWARF %s: %v", u.path, n, err)
			}
		}
	}
	return d, nil
}

// structLayouts lists a unit's named structs and unions ("struct task",
// "union u", and anonymous ones by typedef: "spinlock_t").
func structLayouts(u *unit) (map[string]*structLayout, error) {
	d, err := dwarfOf(u)
	if err != nil {
		return nil, err
	}
	r := d.Reader()
	byOff := map[dwarf.Offset]*structLayout{}
	names := map[string]dwarf.Offset{}
	typedefs := map[string]dwarf.Offset{}
	for {
		e, err := r.Next()
		if err != nil {
			return nil, fmt.Errorf("%s: DWARF: %v", u.path, err)
		}
		if e == nil {
			break
		}
		switch e.Tag {
		case dwarf.TagStructType, dwarf.TagUnionType:
			if decl, _ := e.Val(dwarf.AttrDeclaration).(bool); decl {
				if e.Children {
					r.SkipChildren()
				}
				continue
			}
			l := &structLayout{}
			l.size, _ = e.Val(dwarf.AttrByteSize).(int64)
			if e.Children {
				for {
					c, err := r.Next()
					if err != nil {
						return nil, fmt.Errorf("%s: DWARF: %v", u.path, err)
					}
					if c == nil || c.Tag == 0 {
						break
					}
					if c.Tag != dwarf.TagMember {
						if c.Children {
							r.SkipChildren()
						}
						continue
					}
					m := member{}
					m.name, _ = c.Val(dwarf.AttrName).(string)
					m.off, _ = c.Val(dwarf.AttrDataMemberLoc).(int64)
					if t, ok := c.Val(dwarf.AttrType).(dwarf.Offset); ok {
						if ty, err := d.Type(t); err == nil {
							m.size = ty.Size()
						}
					}
					if bs, ok := c.Val(dwarf.AttrBitSize).(int64); ok {
						bo, _ := c.Val(dwarf.AttrDataBitOffset).(int64)
						m.bits = fmt.Sprintf(":%d@%d", bs, bo)
					}
					l.members = append(l.members, m)
					if c.Children {
						r.SkipChildren()
					}
				}
			}
			byOff[e.Offset] = l
			if n, ok := e.Val(dwarf.AttrName).(string); ok {
				kw := "struct "
				if e.Tag == dwarf.TagUnionType {
					kw = "union "
				}
				names[kw+n] = e.Offset
			}
		case dwarf.TagTypedef:
			if n, ok := e.Val(dwarf.AttrName).(string); ok {
				if t, ok := e.Val(dwarf.AttrType).(dwarf.Offset); ok {
					typedefs[n] = t
				}
			}
			if e.Children {
				r.SkipChildren()
			}
		default:
			if e.Children && e.Tag != dwarf.TagCompileUnit {
				r.SkipChildren()
			}
		}
	}
	out := map[string]*structLayout{}
	named := map[dwarf.Offset]bool{}
	for n, off := range names {
		out[n] = byOff[off]
		named[off] = true
	}
	for n, off := range typedefs {
		if l := byOff[off]; l != nil && !named[off] {
			out[n] = l
		}
	}
	return out, nil
}

// checkStructs refuses layout changes of structs and unions that both
// builds of a unit know.
func (b *builder) checkStructs(units []string, before, after map[string]*unit) {
	seen := map[string]bool{}
	for _, p := range units {
		bu, au := before[p], after[p]
		if bu == nil || au == nil {
			continue
		}
		lb, err := structLayouts(bu)
		if err != nil {
			b.plan.Notes = append(b.plan.Notes, "struct layouts not checked: "+err.Error())
			continue
		}
		la, err := structLayouts(au)
		if err != nil {
			b.plan.Notes = append(b.plan.Notes, "struct layouts not checked: "+err.Error())
			continue
		}
		var names []string
		for n := range la {
			names = append(names, n)
		}
		slices.Sort(names)
		for _, n := range names {
			x, y := lb[n], la[n]
			if x == nil || y == nil || x.String() == y.String() || seen[n] {
				continue
			}
			seen[n] = true
			b.plan.refuse(KindStructLayout, p, n, "layout changed (%s): the running kernel's objects keep the old layout, so no code can be switched to the new one (keep the layout; new state goes in a separate variable)", layoutDiff(x, y))
		}
	}
}

func layoutDiff(x, y *structLayout) string {
	var parts []string
	if x.size != y.size {
		parts = append(parts, fmt.Sprintf("size %d -> %d bytes", x.size, y.size))
	}
	old := map[string]member{}
	for _, m := range x.members {
		old[m.name] = m
	}
	nw := map[string]bool{}
	for _, m := range y.members {
		nw[m.name] = true
		o, ok := old[m.name]
		switch {
		case !ok:
			parts = append(parts, fmt.Sprintf("member %s added at +%d", m.name, m.off))
		case o.off != m.off || o.size != m.size || o.bits != m.bits:
			parts = append(parts, fmt.Sprintf("member %s moved or resized (+%d/%d -> +%d/%d)", m.name, o.off, o.size, m.off, m.size))
		}
	}
	for _, m := range x.members {
		if !nw[m.name] {
			parts = append(parts, fmt.Sprintf("member %s removed", m.name))
		}
	}
	if len(parts) == 0 {
		parts = append(parts, "members reordered or retyped")
	}
	if len(parts) > 3 {
		parts = append(parts[:3], "...")
	}
	return strings.Join(parts, "; ")
}
