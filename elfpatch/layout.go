package elfpatch

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/arch/x86/x86asm"
)

// PlacedSection is an allocated section of the patch in the image.
type PlacedSection struct {
	Index int    `json:"-"`
	Name  string `json:"name"`
	Addr  uint64 `json:"addr"`
	Size  uint64 `json:"size"`
	Align uint64 `json:"align"`
	Exec  bool   `json:"exec,omitempty"`
	Write bool   `json:"write,omitempty"`
	off   uint64 // in the image
}

// Relocation sources (Reloc.Source): where the symbol was found.
const (
	SourcePatch  = "patch"   // defined in the patch object
	SourceKernel = "kernel"  // a plain undefined symbol, from the kernel's globals
	SourceKlpSym = "klp.sym" // .klp.sym.<obj>.<name>,<sympos>
	SourceAbs    = "abs"     // an absolute symbol of the patch
	SourceWeak   = "weak"    // an unresolved weak reference, 0
)

// Reloc is one entry of the relocation plan: what was written where.
type Reloc struct {
	Section  string `json:"section"` // the section patched
	Offset   uint64 `json:"offset"`  // in that section
	Place    uint64 `json:"place"`   // P: virtual address patched
	Type     uint32 `json:"type"`
	TypeName string `json:"type_name"`
	Symbol   string `json:"symbol"`
	Addend   int64  `json:"addend"`
	Target   uint64 `json:"target"` // S: the symbol's address
	Value    uint64 `json:"value"`  // what was written (width bytes, little-endian)
	Width    int    `json:"width"`
	Source   string `json:"source"`
	Resolved bool   `json:"resolved"` // false only in a plan made without a kernel
}

// ImageFunc is a func with both ends resolved.
type ImageFunc struct {
	OldName   string `json:"old_name"`
	OldSympos int    `json:"old_sympos"`
	OldAddr   uint64 `json:"old_addr"` // the old function's entry
	OldSize   uint64 `json:"old_size"`
	Site      Site   `json:"site"` // its fentry site (the place to redirect)
	NewAddr   uint64 `json:"new_addr"`
	NewName   string `json:"new_name,omitempty"`
}

// ImageObject is an object of the laid-out patch.
type ImageObject struct {
	Name      string      `json:"name"`
	Addr      uint64      `json:"addr"` // its struct klp_object in the image (the callbacks' argument)
	Funcs     []ImageFunc `json:"funcs"`
	Callbacks [4]uint64   `json:"callbacks"` // CallbackNames order; 0 = none
}

// ImageState is a struct klp_state of the laid-out patch.
type ImageState struct {
	ID      uint64 `json:"id"`
	Version uint32 `json:"version"`
	Addr    uint64 `json:"addr"` // the struct klp_state in the image
}

// Image is a patch laid out at a virtual base with every relocation
// applied: Bytes go to Base in the guest's patch area as they are.
type Image struct {
	Base        uint64          `json:"base"`
	Bytes       []byte          `json:"-"`
	Sections    []PlacedSection `json:"sections"`
	PatchAddr   uint64          `json:"patch_addr"`            // the struct klp_patch
	StatesAddr  uint64          `json:"states_addr,omitempty"` // its klp_state array (klp_patch.states), 0 if none
	States      []ImageState    `json:"states,omitempty"`
	Objects     []ImageObject   `json:"objects"`
	FentrySites []Site          `json:"fentry_sites"` // the patch's own functions' sites
	Relocs      []Reloc         `json:"relocs"`
	symbols     map[string]uint64
	funcs       []imageSym // the patch's function symbols, by address
}

type imageSym struct {
	name       string
	addr, size uint64
}

// Addr2Sym names the patch function holding addr (for stack walks that
// meet the patch's code): its name and the offset into it.
func (im *Image) Addr2Sym(addr uint64) (name string, off uint64, ok bool) {
	i, _ := slices.BinarySearchFunc(im.funcs, addr+1, func(s imageSym, a uint64) int { return cmp.Compare(s.addr, a) })
	for i--; i >= 0; i-- {
		s := &im.funcs[i]
		if addr-s.addr < s.size {
			return s.name, addr - s.addr, true
		}
		if s.size > 0 {
			break
		}
	}
	return "", 0, false
}

// Size is the image's length in the patch area.
func (im *Image) Size() uint64 { return uint64(len(im.Bytes)) }

// SymbolAddr returns the address of a symbol defined in the patch.
func (im *Image) SymbolAddr(name string) (uint64, bool) {
	a, ok := im.symbols[name]
	return a, ok
}

// maxBSS caps the zero-filled (SHT_NOBITS) part of an image, whose size
// costs nothing in the file.
const maxBSS = 64 << 20

// maxSectionAlign caps section alignment: more than a page is never needed
// by patch code and would waste the patch area.
const maxSectionAlign = 4096

// plan is the base-independent placement of the allocated sections.
type plan struct {
	sections []PlacedSection
	byIndex  map[int]int // section index -> sections[i]
	size     uint64
	align    uint64
}

func (p *Patch) plan() (*plan, error) {
	f := p.f
	pl := &plan{byIndex: map[int]int{}, align: 1}
	class := func(s *Section) int {
		switch {
		case s.Exec():
			return 0
		case s.Flags&SHF_WRITE == 0 && s.Type != SHT_NOBITS:
			return 1
		case s.Type != SHT_NOBITS:
			return 2
		}
		return 3
	}
	var idx []int
	for i := range f.sections {
		s := &f.sections[i]
		if s.Alloc() && (s.Type == SHT_PROGBITS || s.Type == SHT_NOBITS) {
			idx = append(idx, i)
		} else if s.Alloc() && s.Type != SHT_NULL && s.Type != shtNote && s.Size > 0 {
			// Notes (.note.gnu.property of CET builds) are not needed at
			// run time; anything else allocated would be silently lost.
			return nil, &Error{Op: "layout", Section: s.Name, Kind: ErrFormat, Detail: fmt.Sprintf("allocated section of type %d is not supported", s.Type)}
		}
	}
	// Text, then read-only data, then data, then bss: keeps code apart from
	// writable data, and zero-fill at the end.
	slices.SortStableFunc(idx, func(a, b int) int { return cmp.Compare(class(&f.sections[a]), class(&f.sections[b])) })
	var off, bss uint64
	for _, i := range idx {
		s := &f.sections[i]
		al := s.Align
		if al == 0 {
			al = 1
		}
		if al&(al-1) != 0 || al > maxSectionAlign {
			return nil, &Error{Op: "layout", Section: s.Name, Kind: ErrFormat, Detail: fmt.Sprintf("alignment %d (want a power of two <= %d)", s.Align, maxSectionAlign)}
		}
		if s.Type == SHT_NOBITS {
			bss += s.Size
			if s.Size > maxBSS || bss > maxBSS {
				return nil, &Error{Op: "layout", Section: s.Name, Kind: ErrRange, Detail: fmt.Sprintf("zero-filled sections exceed %d bytes", maxBSS)}
			}
		}
		off = (off + al - 1) &^ (al - 1)
		pl.byIndex[i] = len(pl.sections)
		pl.sections = append(pl.sections, PlacedSection{Index: i, Name: s.Name, Size: s.Size, Align: al,
			Exec: s.Exec(), Write: s.Flags&SHF_WRITE != 0, off: off})
		off += s.Size
		pl.align = max(pl.align, al)
	}
	pl.size = off
	return pl, nil
}

// Size returns the bytes the patch occupies in the patch area.
func (p *Patch) Size() (uint64, error) {
	pl, err := p.plan()
	if err != nil {
		return 0, err
	}
	return pl.size, nil
}

// Align returns the alignment Layout needs of its base.
func (p *Patch) Align() (uint64, error) {
	pl, err := p.plan()
	if err != nil {
		return 0, err
	}
	return pl.align, nil
}

// Layout places the patch at virtual address base and applies every
// relocation against the patch itself and the kernel k: the host side of
// klp_enable_patch's "symbol lookups and code relocations". It also
// resolves every func's old function (which must be patchable) and the
// callbacks. The first problem found is returned as an *Error.
func (p *Patch) Layout(base uint64, k *Kernel) (*Image, error) {
	if k == nil {
		return nil, errorf("layout", ErrUnresolved, "no kernel to resolve the patch against")
	}
	im, errs := p.layout(base, k, false)
	if len(errs) > 0 {
		return nil, errs[0]
	}
	return im, nil
}

// Check is Layout that keeps going: it returns the image as far as it could
// be built and every problem found (capped), for reports. With a nil
// kernel it plans without one: kernel symbols and old functions stay
// unresolved (Reloc.Resolved false) and are not reported as problems.
func (p *Patch) Check(base uint64, k *Kernel) (*Image, []error) {
	return p.layout(base, k, true)
}

const maxProblems = 200

type layoutState struct {
	p      *Patch
	k      *Kernel
	pl     *plan
	im     *Image
	all    bool
	errs   []error
	syms   []resolved
	noKer  bool
	funcAt map[uint64]string // patch function symbols by address
}

type resolved struct {
	done   bool
	value  uint64
	source string
	err    error
}

// fail records a problem and says whether to stop.
func (st *layoutState) fail(err error) bool {
	if len(st.errs) < maxProblems {
		st.errs = append(st.errs, err)
	}
	return !st.all || len(st.errs) >= maxProblems
}

func (p *Patch) layout(base uint64, k *Kernel, all bool) (*Image, []error) {
	pl, err := p.plan()
	if err != nil {
		return nil, []error{err}
	}
	if base&(pl.align-1) != 0 {
		return nil, []error{errorf("layout", ErrRange, "base %#x is not aligned to %d", base, pl.align)}
	}
	if base+pl.size < base {
		return nil, []error{errorf("layout", ErrRange, "base %#x + size %#x wraps the address space", base, pl.size)}
	}
	im := &Image{Base: base, Bytes: make([]byte, pl.size), symbols: map[string]uint64{}}
	for _, ps := range pl.sections {
		ps.Addr = base + ps.off
		im.Sections = append(im.Sections, ps)
		if data := p.f.sectionData(ps.Index); data != nil {
			copy(im.Bytes[ps.off:], data)
		}
	}
	pl.sections = im.Sections
	st := &layoutState{p: p, k: k, pl: pl, im: im, all: all, syms: make([]resolved, len(p.f.symbols)),
		noKer: k == nil, funcAt: map[uint64]string{}}
	for _, s := range p.f.symbols {
		if s.Type == TypeSection || s.Type == TypeFile || s.Name == "" {
			continue
		}
		if i, ok := pl.byIndex[s.Section]; ok {
			a := pl.sections[i].Addr + s.Value
			im.symbols[s.Name] = a
			if prev, dup := st.funcAt[a]; s.Type == TypeFunc && (!dup || s.Name < prev) {
				st.funcAt[a] = s.Name
			}
			if s.Type == TypeFunc {
				im.funcs = append(im.funcs, imageSym{s.Name, a, s.Size})
			}
		}
	}
	slices.SortFunc(im.funcs, func(a, b imageSym) int {
		if c := cmp.Compare(a.addr, b.addr); c != 0 {
			return c
		}
		return strings.Compare(a.name, b.name)
	})
	if st.relocate() {
		return im, st.errs
	}
	if st.patchSites() {
		return im, st.errs
	}
	st.resolveFuncs()
	return im, st.errs
}

// addr is the virtual address of a Ref into a loaded section (the parser
// only hands out such Refs; 0 otherwise).
func (st *layoutState) addr(r Ref) uint64 {
	i, ok := st.pl.byIndex[r.Section]
	if !ok {
		return 0
	}
	return st.pl.sections[i].Addr + r.Offset
}

// resolve finds a relocation symbol's address S.
func (st *layoutState) resolve(idx int) resolved {
	if st.syms[idx].done {
		return st.syms[idx]
	}
	r := st.resolveUncached(idx)
	r.done = true
	st.syms[idx] = r
	return r
}

func (st *layoutState) resolveUncached(idx int) resolved {
	p := st.p
	sym := &p.f.symbols[idx]
	switch {
	case idx == 0:
		return resolved{value: 0, source: SourceAbs}
	case sym.Section > 0 && sym.Section < len(p.f.sections):
		i, ok := st.pl.byIndex[sym.Section]
		if !ok {
			return resolved{err: kindf(ErrFormat, "symbol lies in section %s, which is not loaded", p.f.sections[sym.Section].Name)}
		}
		return resolved{value: st.pl.sections[i].Addr + sym.Value, source: SourcePatch}
	case sym.Section == shnAbs:
		return resolved{value: sym.Value, source: SourceAbs}
	case sym.Section == shnCommon:
		return resolved{err: kindf(ErrFormat, "common symbol (build with -fno-common)")}
	case sym.Section != shnUndef && sym.Section != shnLivepatch:
		return resolved{err: kindf(ErrFormat, "symbol in reserved section %#x", sym.Section)}
	}
	if obj, name, pos, ok, err := parseKlpSym(sym.Name); ok || err != nil {
		if err != nil {
			return resolved{err: err}
		}
		if obj != VmlinuxObject {
			return resolved{err: kindf(ErrUnresolved, "object %s is not loaded: the guest kernel has no modules", obj), source: SourceKlpSym}
		}
		if st.k == nil {
			return resolved{err: kindf(ErrUnresolved, "no kernel to resolve against"), source: SourceKlpSym}
		}
		ks, err := st.k.Lookup(name, pos)
		if err != nil {
			return resolved{err: inner(err), source: SourceKlpSym}
		}
		return resolved{value: ks.Value, source: SourceKlpSym}
	}
	if st.k == nil {
		return resolved{err: kindf(ErrUnresolved, "no kernel to resolve against"), source: SourceKernel}
	}
	ks, err := st.k.LookupGlobal(sym.Name)
	if err != nil {
		if sym.Bind == BindWeak && errors.Is(err, ErrUnresolved) {
			return resolved{value: 0, source: SourceWeak}
		}
		return resolved{err: inner(err), source: SourceKernel}
	}
	return resolved{value: ks.Value, source: SourceKernel}
}

// inner is what err says, without where: an Error's kind and detail (or
// its cause), to be placed into another Error with set.
func inner(err error) error {
	var e *Error
	switch {
	case !errors.As(err, &e):
		return err
	case e.Kind != nil:
		return &kindErr{kind: e.Kind, detail: e.Detail}
	case e.Err != nil:
		return e.Err
	}
	return err
}

// parseKlpSym splits Linux's ".klp.sym.<obj>.<name>,<sympos>". ok is false
// for ordinary names.
func parseKlpSym(s string) (obj, name string, pos int, ok bool, err error) {
	const prefix = ".klp.sym."
	rest, found := strings.CutPrefix(s, prefix)
	if !found {
		return "", "", 0, false, nil
	}
	obj, rest, found = strings.Cut(rest, ".")
	if !found || obj == "" {
		return "", "", 0, false, kindf(ErrFormat, "%q: want .klp.sym.<object>.<name>,<sympos>", s)
	}
	comma := strings.LastIndexByte(rest, ',')
	if comma <= 0 {
		return "", "", 0, false, kindf(ErrFormat, "%q: want .klp.sym.<object>.<name>,<sympos>", s)
	}
	name = rest[:comma]
	n, perr := strconv.ParseUint(rest[comma+1:], 10, 20)
	if perr != nil {
		return "", "", 0, false, kindf(ErrFormat, "%q: bad sympos", s)
	}
	return obj, name, int(n), true, nil
}

// relocate applies every relocation whose target section is loaded, in
// section order (deterministic plans).
func (st *layoutState) relocate() bool {
	p := st.p
	targets := make([]int, 0, len(p.relas))
	total := 0
	for t, list := range p.relas {
		targets = append(targets, t)
		total += len(list)
	}
	st.im.Relocs = make([]Reloc, 0, total)
	slices.Sort(targets)
	for _, t := range targets {
		pi, ok := st.pl.byIndex[t]
		if !ok {
			continue // relocations of debug or other unloaded sections
		}
		ps := &st.pl.sections[pi]
		tsec := &p.f.sections[t]
		if tsec.Type == SHT_NOBITS {
			if st.fail(&Error{Op: "relocate", Section: tsec.Name, Kind: ErrFormat, Detail: fmt.Sprintf("relocations against a zero-filled section")}) {
				return true
			}
			continue
		}
		for _, r := range p.relas[t] {
			if st.apply(ps, tsec, r) {
				return true
			}
		}
	}
	return false
}

func (st *layoutState) apply(ps *PlacedSection, tsec *Section, r rela) bool {
	sym := &st.p.f.symbols[r.sym]
	symName := sym.Name
	if sym.Type == TypeSection && sym.Section > 0 && sym.Section < len(st.p.f.sections) {
		symName = st.p.f.sections[sym.Section].Name
	}
	fail := func(kind error, format string, args ...any) bool {
		return st.fail(&Error{Op: "relocate", Section: tsec.Name, Offset: r.off, Symbol: symName, Kind: kind, Detail: fmt.Sprintf(format, args...)})
	}
	var width int
	switch r.typ {
	case R_X86_64_NONE:
		return false
	case R_X86_64_64:
		width = 8
	case R_X86_64_PC32, R_X86_64_PLT32, R_X86_64_32, R_X86_64_32S:
		width = 4
	default:
		return fail(ErrUnknownReloc, "%s (type %d)", RelocTypeName(r.typ), r.typ)
	}
	if r.off > tsec.Size || uint64(width) > tsec.Size-r.off {
		return fail(ErrFormat, "%d-byte relocation runs past the end of the section", width)
	}
	res := st.resolve(r.sym)
	if res.err != nil {
		if st.noKer && (res.source == SourceKernel || res.source == SourceKlpSym) && errors.Is(res.err, ErrUnresolved) {
			// Without a kernel, plan the relocation without a value.
			st.im.Relocs = append(st.im.Relocs, Reloc{Section: tsec.Name, Offset: r.off, Place: ps.Addr + r.off,
				Type: r.typ, TypeName: RelocTypeName(r.typ), Symbol: symName, Addend: r.addend, Width: width, Source: res.source})
			return false
		}
		return st.fail((&Error{Op: "relocate", Section: tsec.Name, Offset: r.off, Symbol: symName}).set(res.err))
	}
	S, A, P := res.value, uint64(r.addend), ps.Addr+r.off
	var v uint64
	switch r.typ {
	case R_X86_64_64:
		v = S + A
	case R_X86_64_PC32, R_X86_64_PLT32:
		v = S + A - P
		if int64(v) != int64(int32(v)) {
			return fail(ErrRange, "%s: %#x is %d bytes from %#x, beyond ±2 GiB", RelocTypeName(r.typ), S+A, int64(v), P)
		}
	case R_X86_64_32:
		v = S + A
		if v > math.MaxUint32 {
			return fail(ErrRange, "R_X86_64_32: %#x does not zero-extend from 32 bits", v)
		}
	case R_X86_64_32S:
		v = S + A
		if int64(v) != int64(int32(v)) {
			return fail(ErrRange, "R_X86_64_32S: %#x does not sign-extend from 32 bits", v)
		}
	}
	at := ps.off + r.off
	if width == 8 {
		le.PutUint64(st.im.Bytes[at:], v)
	} else {
		v &= math.MaxUint32
		le.PutUint32(st.im.Bytes[at:], uint32(v))
	}
	st.im.Relocs = append(st.im.Relocs, Reloc{Section: tsec.Name, Offset: r.off, Place: P, Type: r.typ,
		TypeName: RelocTypeName(r.typ), Symbol: symName, Addend: r.addend, Target: S, Value: v, Width: width, Source: res.source, Resolved: true})
	return false
}

// patchSites reads the patch's own __mcount_loc (relocated above): its
// functions are patchable too, by a later patch.
func (st *layoutState) patchSites() bool {
	p := st.p
	for _, ps := range st.pl.sections {
		if p.f.sections[ps.Index].Name != "__mcount_loc" {
			continue
		}
		if ps.Size%8 != 0 {
			if st.fail(&Error{Op: "fentry", Section: ps.Name, Kind: ErrFormat, Detail: fmt.Sprintf("size %#x is not a multiple of 8", ps.Size)}) {
				return true
			}
		}
		for off := uint64(0); off+8 <= ps.Size; off += 8 {
			if st.noKer && !st.relocated(ps.Index, off) {
				continue
			}
			addr := le.Uint64(st.im.Bytes[ps.off+off:])
			site, err := st.checkSite(addr)
			if err != nil {
				if st.fail((&Error{Op: "fentry", Section: ps.Name, Offset: off}).set(err)) {
					return true
				}
				continue
			}
			st.im.FentrySites = append(st.im.FentrySites, site)
		}
	}
	slices.SortFunc(st.im.FentrySites, func(a, b Site) int { return cmp.Compare(a.Addr, b.Addr) })
	return false
}

// relocated reports whether the image slot got a value (the plan without a
// kernel leaves kernel-symbol slots empty).
func (st *layoutState) relocated(sec int, off uint64) bool {
	r := st.p.relaAt(sec, off)
	if r == nil {
		return true
	}
	return st.resolve(r.sym).err == nil
}

func (st *layoutState) checkSite(addr uint64) (Site, error) {
	secs := st.pl.sections // in address order: placed one after another
	i, _ := slices.BinarySearchFunc(secs, addr+1, func(ps PlacedSection, a uint64) int { return cmp.Compare(ps.Addr, a) })
	// Zero-size sections share addresses with their successors: walk back
	// to the section that really holds addr.
	for i--; i >= 0 && secs[i].Size == 0; i-- {
	}
	if i < 0 || !secs[i].Exec || addr-secs[i].Addr >= secs[i].Size {
		return Site{}, kindf(ErrFormat, "fentry site %#x is not in the patch's code", addr)
	}
	ps := &secs[i]
	if ps.Size-(addr-ps.Addr) < FentrySize {
		return Site{}, kindf(ErrFormat, "fentry site %#x runs past the end of %s", addr, ps.Name)
	}
	at := ps.off + (addr - ps.Addr)
	code := st.im.Bytes[at:min(at+15, ps.off+ps.Size)]
	inst, err := x86asm.Decode(code, 64)
	if err != nil || inst.Op != x86asm.NOP || inst.Len != FentrySize {
		return Site{}, kindf(ErrFormat, "fentry site %#x holds % x, not a 5-byte NOP", addr, code[:FentrySize])
	}
	s := Site{Addr: addr, Kind: SiteNop5}
	copy(s.Bytes[:], code)
	if name, ok := st.funcAt[addr]; ok {
		s.Func, s.FuncAddr = name, addr
	}
	return s, nil
}

// resolveFuncs finds every old function and places every new one.
func (st *layoutState) resolveFuncs() {
	p := st.p
	st.im.PatchAddr = st.addr(p.Loc)
	if p.StatesLoc != nil {
		st.im.StatesAddr = st.addr(*p.StatesLoc)
	}
	for _, s := range p.States {
		st.im.States = append(st.im.States, ImageState{ID: s.ID, Version: s.Version, Addr: st.addr(s.Loc)})
	}
	owner := map[uint64]Func{}
	for _, obj := range p.Objects {
		iobj := ImageObject{Name: obj.Name, Addr: st.addr(obj.Loc)}
		for i, cb := range obj.Callbacks.list() {
			if cb != nil {
				iobj.Callbacks[i] = st.addr(*cb)
			}
		}
		if obj.Name != VmlinuxObject {
			if st.fail(&Error{Op: "resolve", Symbol: obj.Name, Err: kindf(ErrUnresolved,
				"object %s is not loaded: the guest kernel has no modules", obj.Name)}) {
				return
			}
			for _, fn := range obj.Funcs {
				iobj.Funcs = append(iobj.Funcs, ImageFunc{OldName: fn.OldName, OldSympos: fn.OldSympos,
					NewAddr: st.addr(fn.NewFunc), NewName: fn.NewFunc.Symbol})
			}
			st.im.Objects = append(st.im.Objects, iobj)
			continue
		}
		for _, fn := range obj.Funcs {
			if iobj.Funcs == nil {
				iobj.Funcs = make([]ImageFunc, 0, len(obj.Funcs))
			}
			imf := ImageFunc{OldName: fn.OldName, OldSympos: fn.OldSympos, NewAddr: st.addr(fn.NewFunc), NewName: fn.NewFunc.Symbol}
			if st.k != nil {
				loc := &Error{Op: "resolve", Section: fn.Loc.SectionName, Offset: fn.Loc.Offset, Symbol: fn.OldName}
				site, err := st.k.Patchable(fn.OldName, fn.OldSympos)
				if err != nil {
					loc.set(inner(err))
					if st.fail(loc) {
						return
					}
					iobj.Funcs = append(iobj.Funcs, imf)
					continue
				}
				sym, _ := st.k.Lookup(fn.OldName, fn.OldSympos)
				imf.OldAddr, imf.OldSize, imf.Site = sym.Value, sym.Size, site
				// Two spellings of one function (sympos 0 and 1 of a
				// unique name) are caught here, not by the parser.
				if prev, dup := owner[sym.Value]; dup {
					loc.set(kindf(ErrDuplicate, "%s,%d and %s,%d are the same function (%#x)",
						prev.OldName, prev.OldSympos, fn.OldName, fn.OldSympos, sym.Value))
					if st.fail(loc) {
						return
					}
				}
				owner[sym.Value] = fn
			}
			iobj.Funcs = append(iobj.Funcs, imf)
		}
		st.im.Objects = append(st.im.Objects, iobj)
	}
}
