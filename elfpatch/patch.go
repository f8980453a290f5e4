package elfpatch

import (
	"cmp"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Ref is a location inside the patch object: a section and an offset. For
// a pointer to something outside the patch, Section is -1 and Symbol names
// the undefined symbol (Offset is then the addend).
type Ref struct {
	Section     int    `json:"-"`
	SectionName string `json:"section"`
	Offset      uint64 `json:"offset"`
	Symbol      string `json:"symbol,omitempty"`
}

func (r Ref) String() string {
	if r.Section < 0 {
		return fmt.Sprintf("%s%+d", r.Symbol, int64(r.Offset))
	}
	if r.Symbol != "" && r.Offset == 0 {
		return r.Symbol
	}
	return fmt.Sprintf("%s+%#x", r.SectionName, r.Offset)
}

// Func is one struct klp_func of the patch.
type Func struct {
	OldName   string `json:"old_name"`
	OldSympos int    `json:"old_sympos"`
	NewFunc   Ref    `json:"new_func"`
	Loc       Ref    `json:"-"` // the klp_func entry itself
}

// Callbacks holds the object's pre/post (un)patch callbacks; nil = none.
type Callbacks struct {
	PrePatch    *Ref `json:"pre_patch,omitempty"`
	PostPatch   *Ref `json:"post_patch,omitempty"`
	PreUnpatch  *Ref `json:"pre_unpatch,omitempty"`
	PostUnpatch *Ref `json:"post_unpatch,omitempty"`
}

func (c *Callbacks) list() []*Ref {
	return []*Ref{c.PrePatch, c.PostPatch, c.PreUnpatch, c.PostUnpatch}
}

// CallbackNames are the callbacks in struct order.
var CallbackNames = [4]string{"pre_patch", "post_patch", "pre_unpatch", "post_unpatch"}

// Object is one struct klp_object of the patch.
type Object struct {
	Name      string    `json:"name"` // VmlinuxObject when the C name is NULL
	Funcs     []Func    `json:"funcs"`
	Callbacks Callbacks `json:"callbacks"`
	Loc       Ref       `json:"-"`
}

// State is one struct klp_state of the patch: a system state the patch
// modifies (Linux's kernel/livepatch/state.c). Data is the pointer's
// static initializer, if any (callbacks usually set it at run time).
type State struct {
	ID      uint64 `json:"id"`
	Version uint32 `json:"version"`
	Data    *Ref   `json:"data,omitempty"`
	Loc     Ref    `json:"-"` // the klp_state entry itself
}

// Name sources (Patch.NameSource).
const (
	NameFromModname = "KLP_MODULE_NAME"
	NameFromFile    = "file name"
)

// Patch is a parsed livepatch object.
type Patch struct {
	Name       string
	NameSource string // NameFromModname, NameFromFile, or "" when unnamed
	Replace    bool
	Objects    []Object
	States     []State // klp_patch.states up to its zero id; none for PatchABI1
	ABI        int     // the layout of struct klp_patch: PatchABI1 or PatchABI2
	Loc        Ref     // the struct klp_patch
	StatesLoc  *Ref    // the klp_state array, nil if none

	f         *elfFile
	relas     map[int][]rela // by target section index, sorted by offset
	funcNames map[secOff]string
}

type rela struct {
	off    uint64
	typ    uint32
	sym    int
	addend int64
	relSec int // the SHT_RELA section it came from
}

// Sections returns the patch object's section headers.
func (p *Patch) Sections() []Section { return p.f.sections }

// Symbols returns the patch object's symbol table (index 0 included).
func (p *Patch) Symbols() []Symbol { return p.f.symbols }

// Funcs returns every func of every object, in order.
func (p *Patch) Funcs() []Func {
	var out []Func
	for _, o := range p.Objects {
		out = append(out, o.Funcs...)
	}
	return out
}

const maxPatchSize = 256 << 20

// ParsePatchFile reads and parses a patch object; without KLP_MODULE_NAME
// its name comes from the file name (ModuleNameFromFile).
func ParsePatchFile(path string) (*Patch, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, &Error{Op: "open patch", Err: err}
	}
	if !fi.Mode().IsRegular() || fi.Size() > maxPatchSize {
		return nil, errorf("open patch", ErrFormat, "%s: not a regular file of at most %d bytes", path, maxPatchSize)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, &Error{Op: "open patch", Err: err}
	}
	p, err := ParsePatch(data)
	if err != nil {
		return nil, err
	}
	if p.Name == "" {
		p.Name, p.NameSource = ModuleNameFromFile(path), NameFromFile
	}
	return p, nil
}

// IsObjectFile reports whether data starts like an ELF64 relocatable
// object (a patch) rather than an executable (a kernel); a cheap sniff
// for callers that accept both, before the real parse.
func IsObjectFile(data []byte) bool {
	return len(data) >= headerSize && string(data[:4]) == "\x7fELF" && data[4] == elfClass64 &&
		data[5] == elfData2LSB && le.Uint16(data[16:]) == etRel
}

// ModuleNameFromFile derives a patch name from an object file name as
// kbuild derives a module name: the stem, with '-' replaced by '_'
// (livepatch-sample.o -> livepatch_sample).
func ModuleNameFromFile(path string) string {
	if path == "" {
		return ""
	}
	base := filepath.Base(path)
	for _, ext := range []string{".ko", ".o"} {
		base = strings.TrimSuffix(base, ext)
	}
	return strings.ReplaceAll(base, "-", "_")
}

func validModuleName(s string) bool {
	if s == "" || len(s) > maxModuleName {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c == '_' || c == '-' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return true
}

// ParsePatch parses a patch object held in data (kept by the Patch; do not
// modify it). Without KLP_MODULE_NAME, Name is "" (see ParsePatchFile).
func ParsePatch(data []byte) (*Patch, error) {
	f, err := parseELF("parse patch", data, etRel)
	if err != nil {
		return nil, err
	}
	p := &Patch{f: f}
	for i := range f.sections {
		s := &f.sections[i]
		switch {
		case s.Type == SHT_GROUP || s.Flags&SHF_GROUP != 0:
			// Without a linker nobody picks one copy of a COMDAT group,
			// and references into discarded copies would dangle.
			return nil, &Error{Op: f.op, Section: s.Name, Kind: ErrFormat, Detail: fmt.Sprintf("section groups (COMDAT) are not supported in a patch")}
		case s.Type == SHT_REL:
			return nil, &Error{Op: f.op, Section: s.Name, Kind: ErrFormat, Detail: fmt.Sprintf("SHT_REL relocations (no addend) are not used on x86-64")}
		case s.Type != SHT_RELA && (strings.HasPrefix(s.Name, ".rela") || strings.HasPrefix(s.Name, ".klp.rela")):
			// Named as relocations but typed otherwise: skipping it would
			// load code whose relocations were never applied.
			return nil, &Error{Op: f.op, Section: s.Name, Kind: ErrFormat, Detail: fmt.Sprintf("relocation section of type %#x, want SHT_RELA (%d)", s.Type, SHT_RELA)}
		case s.Alloc() && !loadableType(s.Type):
			// The loader places PROGBITS and NOBITS; anything else the
			// patch expects in memory would be silently missing.
			return nil, &Error{Op: f.op, Section: s.Name, Kind: ErrFormat, Detail: fmt.Sprintf("allocated section of type %#x: only SHT_PROGBITS and SHT_NOBITS can be loaded", s.Type)}
		}
	}
	if err := f.parseSymbols(); err != nil {
		return nil, err
	}
	if err := p.parseRelas(); err != nil {
		return nil, err
	}
	if err := p.parseName(); err != nil {
		return nil, err
	}
	if err := p.parseStructs(); err != nil {
		return nil, err
	}
	return p, nil
}

// loadableType reports whether an allocated section of type t can be
// placed in the patch area: code and data (PROGBITS), zeroed data (NOBITS),
// and the init/fini arrays and notes gcc may mark allocated, which are
// PROGBITS-like bytes.
func loadableType(t uint32) bool {
	switch t {
	case SHT_PROGBITS, SHT_NOBITS, shtNote, shtInitArray, shtFiniArray, shtX8664Unwind:
		return true
	}
	return false
}

func (p *Patch) parseRelas() error {
	f := p.f
	p.relas = map[int][]rela{}
	for i := range f.sections {
		s := &f.sections[i]
		if s.Type != SHT_RELA {
			continue
		}
		bad := func(format string, args ...any) error {
			return &Error{Op: f.op, Section: s.Name, Kind: ErrFormat, Detail: fmt.Sprintf(format, args...)}
		}
		if s.EntSize != relaSize || s.Size%relaSize != 0 {
			return bad("entry size %d / size %#x, want multiples of %d", s.EntSize, s.Size, relaSize)
		}
		if int(s.Link) != f.symtab {
			return bad("sh_link %d is not the symbol table (%d)", s.Link, f.symtab)
		}
		if s.Info == 0 || uint64(s.Info) >= uint64(len(f.sections)) {
			return bad("sh_info %d: no such target section", s.Info)
		}
		target := &f.sections[s.Info]
		if target.Type == SHT_NOBITS && s.Size > 0 {
			// Zero-filled: nothing to relocate in the image, and the
			// structures read there (field) are zeros.
			return bad("relocations against %s, a zero-filled section", target.Name)
		}
		data := f.sectionData(i)
		n := len(data) / relaSize
		list := p.relas[int(s.Info)]
		for j := 0; j < n; j++ {
			r := decodeRela(data[j*relaSize:])
			sym := r.Info >> 32
			if sym >= uint64(len(f.symbols)) {
				return &Error{Op: f.op, Section: s.Name, Offset: uint64(j) * relaSize,
					Kind: ErrFormat, Detail: fmt.Sprintf("symbol index %d out of range (%d symbols)", sym, len(f.symbols))}
			}
			if r.Off >= target.Size {
				return &Error{Op: f.op, Section: target.Name, Offset: r.Off,
					Kind: ErrFormat, Detail: fmt.Sprintf("relocation from %s beyond the end of its section (%#x bytes)", s.Name, target.Size)}
			}
			list = append(list, rela{off: r.Off, typ: uint32(r.Info), sym: int(sym), addend: r.Addend, relSec: i})
		}
		p.relas[int(s.Info)] = list
	}
	for t, list := range p.relas {
		slices.SortStableFunc(list, func(a, b rela) int { return cmp.Compare(a.off, b.off) })
		p.relas[t] = list
	}
	return nil
}

func (p *Patch) parseName() error {
	for i := range p.f.sections {
		s := &p.f.sections[i]
		if s.Name != modnameSection {
			continue
		}
		name, err := cstring(p.f.sectionData(i), 0)
		if err != nil || !validModuleName(name) {
			return &Error{Op: p.f.op, Section: s.Name, Err: kindf(ErrFormat,
				"module name must be 1..%d characters of [A-Za-z0-9_-], NUL-terminated", maxModuleName)}
		}
		p.Name, p.NameSource = name, NameFromModname
	}
	return nil
}

// relaAt returns the relocation applied exactly at (sec, off), if any.
func (p *Patch) relaAt(sec int, off uint64) *rela {
	list := p.relas[sec]
	i, found := slices.BinarySearchFunc(list, off, func(r rela, o uint64) int { return cmp.Compare(r.off, o) })
	if !found {
		return nil
	}
	return &list[i]
}

// relaIn reports whether any relocation touches [off, off+n) of sec.
func (p *Patch) relaIn(sec int, off, n uint64) bool {
	list := p.relas[sec]
	i, _ := slices.BinarySearchFunc(list, off, func(r rela, o uint64) int { return cmp.Compare(r.off, o) })
	return i < len(list) && list[i].off < off+n
}

func (p *Patch) structErr(sec int, off uint64, kind error, format string, args ...any) error {
	name := ""
	if sec >= 0 && sec < len(p.f.sections) {
		name = p.f.sections[sec].Name
	}
	return &Error{Op: p.f.op, Section: name, Offset: off, Kind: kind, Detail: fmt.Sprintf(format, args...)}
}

// field returns n bytes of section sec at off, which must lie in loaded
// data: file data, or a zero-filled section, whose bytes are zeros (gcc
// puts an all-zero array there: test_klp_state's no_funcs[] = { {} } is
// in .bss).
func (p *Patch) field(sec int, off, n uint64, what string) ([]byte, error) {
	if sec <= 0 || sec >= len(p.f.sections) {
		return nil, p.structErr(sec, off, ErrFormat, "%s: bad section index %d", what, sec)
	}
	s := &p.f.sections[sec]
	if s.Type != SHT_PROGBITS && s.Type != SHT_NOBITS {
		return nil, p.structErr(sec, off, ErrFormat, "%s lies in a section without file data", what)
	}
	if !s.Alloc() {
		// The structures are loaded with the patch (callbacks get a
		// pointer to their klp_object), so they must be in the image.
		return nil, p.structErr(sec, off, ErrFormat, "%s lies in a section that is not loaded (no SHF_ALLOC)", what)
	}
	if off > s.Size || n > s.Size-off {
		return nil, p.structErr(sec, off, ErrFormat, "%s (%d bytes) runs past the end of its section (%#x bytes)", what, n, s.Size)
	}
	if s.Type == SHT_NOBITS {
		return make([]byte, n), nil
	}
	return p.f.sectionData(sec)[off : off+n], nil
}

// pointer decodes the pointer field at (sec, off): NULL, a Ref into the
// patch, or a Ref to an undefined symbol (Section -1). In an ET_REL file a
// non-NULL pointer must be an R_X86_64_64 relocation.
func (p *Patch) pointer(sec int, off uint64, what string) (*Ref, error) {
	raw, err := p.field(sec, off, 8, what)
	if err != nil {
		return nil, err
	}
	r := p.relaAt(sec, off)
	if r == nil {
		if le.Uint64(raw) != 0 {
			return nil, p.structErr(sec, off, ErrFormat, "%s holds an absolute address %#x, not a relocated pointer", what, le.Uint64(raw))
		}
		if p.relaIn(sec, off, 8) {
			return nil, p.structErr(sec, off, ErrFormat, "%s is partly relocated", what)
		}
		return nil, nil
	}
	if r.typ != R_X86_64_64 {
		return nil, p.structErr(sec, off, ErrFormat, "%s relocated with %s, want R_X86_64_64", what, RelocTypeName(r.typ))
	}
	sym := &p.f.symbols[r.sym]
	addend := uint64(r.addend) + le.Uint64(raw) // RELA: the field should be 0, but honour it
	switch {
	case sym.Section > 0 && sym.Section < len(p.f.sections):
		name := ""
		if sym.Type != TypeSection {
			name = sym.Name
		}
		return &Ref{Section: sym.Section, SectionName: p.f.sections[sym.Section].Name,
			Offset: sym.Value + addend, Symbol: name}, nil
	case sym.Section == shnUndef || sym.Section == shnLivepatch:
		return &Ref{Section: -1, Offset: addend, Symbol: sym.Name}, nil
	}
	return nil, p.structErr(sec, off, ErrFormat, "%s points at symbol %s in section %s", what, sym.Name, p.f.sectionName(sym.Section))
}

func (p *Patch) stringAt(ref *Ref, what string) (string, error) {
	if ref.Section < 0 {
		return "", p.structErr(-1, 0, ErrFormat, "%s points outside the patch (%s)", what, ref.Symbol)
	}
	if _, err := p.field(ref.Section, ref.Offset, 1, what); err != nil {
		return "", err
	}
	s, err := cstring(p.f.sectionData(ref.Section), ref.Offset)
	if err != nil {
		return "", p.structErr(ref.Section, ref.Offset, ErrFormat, "%s: %v", what, err)
	}
	return s, nil
}

// codeRef checks that a function pointer points into the patch's code.
func (p *Patch) codeRef(ref *Ref, what string) error {
	if ref.Section < 0 {
		return p.structErr(-1, 0, ErrFormat, "%s points outside the patch (%s): it must be a function of the patch", what, ref.Symbol)
	}
	s := &p.f.sections[ref.Section]
	if !s.Exec() || !s.Alloc() || ref.Offset >= s.Size {
		return p.structErr(ref.Section, ref.Offset, ErrFormat, "%s does not point into the patch's code", what)
	}
	if ref.Symbol == "" {
		ref.Symbol = p.symbolAt(ref.Section, ref.Offset)
	}
	return nil
}

type secOff struct {
	sec int
	off uint64
}

// symbolAt names the function symbol at (sec, off). The index is built
// once: a lookup per func over all symbols would be quadratic.
func (p *Patch) symbolAt(sec int, off uint64) string {
	if p.funcNames == nil {
		p.funcNames = map[secOff]string{}
		for _, s := range p.f.symbols {
			if s.Type != TypeFunc || s.Name == "" {
				continue
			}
			k := secOff{s.Section, s.Value}
			if prev, ok := p.funcNames[k]; !ok || s.Name < prev {
				p.funcNames[k] = s.Name
			}
		}
	}
	return p.funcNames[secOff{sec, off}]
}

// objectAt names the data symbol (STT_OBJECT) at (sec, off), if any: a
// pointer relocated against its section names it so.
func (p *Patch) objectAt(sec int, off uint64) string {
	name := ""
	for _, s := range p.f.symbols {
		if s.Type == TypeObject && s.Section == sec && s.Value == off && s.Name != "" && (name == "" || s.Name < name) {
			name = s.Name
		}
	}
	return name
}

func (p *Patch) parseStructs() error {
	f := p.f
	ps := -1
	for i := range f.sections {
		if f.sections[i].Name == patchSection {
			if ps >= 0 {
				return errorf(f.op, ErrDuplicate, "two %s sections", patchSection)
			}
			ps = i
		}
	}
	if ps < 0 {
		return errorf(f.op, ErrFormat, "no %s section: the patch must name its struct klp_patch with KLP_PATCH()", patchSection)
	}
	if err := p.parseABI(ps); err != nil {
		return err
	}
	pref, err := p.pointer(ps, 0, "KLP_PATCH pointer")
	if err != nil {
		return err
	}
	if pref == nil || pref.Section < 0 {
		return p.structErr(ps, 0, ErrFormat, "KLP_PATCH pointer does not point at a struct klp_patch in the patch")
	}
	p.Loc = *pref
	size, replaceOff := uint64(klpPatchSize), uint64(klpPatchReplace)
	if p.ABI == PatchABI1 {
		size, replaceOff = klpPatch1Size, klpPatch1Replace
	}
	if _, err := p.field(pref.Section, pref.Offset, size, "struct klp_patch"); err != nil {
		return err
	}
	if err := p.checkPatchSize(pref, size); err != nil {
		return err
	}
	replace, err := p.field(pref.Section, pref.Offset+replaceOff, 1, "klp_patch.replace")
	if err != nil {
		return err
	}
	if p.relaIn(pref.Section, pref.Offset+replaceOff, 8) {
		return p.structErr(pref.Section, pref.Offset+replaceOff, ErrFormat, "klp_patch.replace is relocated")
	}
	p.Replace = replace[0] != 0
	if p.ABI >= PatchABI2 {
		if err := p.parseStates(pref); err != nil {
			return err
		}
	}
	objs, err := p.pointer(pref.Section, pref.Offset+klpPatchObjs, "klp_patch.objs")
	if err != nil {
		return err
	}
	if objs == nil || objs.Section < 0 {
		return p.structErr(pref.Section, pref.Offset+klpPatchObjs, ErrFormat, "klp_patch.objs is NULL or outside the patch")
	}
	seen := map[string]bool{}
	for off := objs.Offset; ; off += klpObjectSize {
		obj, end, err := p.parseObject(objs.Section, off)
		if err != nil {
			return err
		}
		if end {
			break
		}
		if seen[obj.Name] {
			return p.structErr(objs.Section, off, ErrDuplicate, "object %s given twice", obj.Name)
		}
		seen[obj.Name] = true
		p.Objects = append(p.Objects, obj)
	}
	if len(p.Objects) == 0 {
		return p.structErr(objs.Section, objs.Offset, ErrFormat, "klp_patch.objs is empty")
	}
	return nil
}

// parseABI reads the layout of struct klp_patch from what KLP_PATCH put in
// section ps: the pointer alone (PatchABI1, objects built before
// klp_state), or the pointer and KLP_PATCH_ABI (struct klp_patch_ref).
func (p *Patch) parseABI(ps int) error {
	switch size := p.f.sections[ps].Size; size {
	case klpPatchRef1Size:
		p.ABI = PatchABI1
		return nil
	case klpPatchRefSize:
	default:
		return p.structErr(ps, 0, ErrFormat, "%s holds %d bytes, want a struct klp_patch_ref (%d, KLP_PATCH) or, from before klp_state, one pointer (%d): one KLP_PATCH per object",
			patchSection, size, klpPatchRefSize, klpPatchRef1Size)
	}
	raw, err := p.field(ps, klpPatchRefABI, 8, "KLP_PATCH_ABI")
	if err != nil {
		return err
	}
	if p.relaIn(ps, klpPatchRefABI, 8) {
		return p.structErr(ps, klpPatchRefABI, ErrFormat, "KLP_PATCH_ABI is relocated")
	}
	switch abi := le.Uint64(raw); abi {
	case PatchABI2:
		p.ABI = int(abi)
	default:
		return p.structErr(ps, klpPatchRefABI, ErrFormat, "KLP_PATCH_ABI %d: this host reads layouts %d and %d of struct klp_patch",
			abi, PatchABI1, PatchABI2)
	}
	return nil
}

// checkPatchSize compares the size of the symbol that defines the struct
// klp_patch at ref, when the object has one (gcc's static patch), with
// the size its layout says: a mismatch is a klp_patch compiled against
// another livepatch.h than its KLP_PATCH, whose fields would be misread.
func (p *Patch) checkPatchSize(ref *Ref, size uint64) error {
	for _, s := range p.f.symbols {
		if s.Section == ref.Section && s.Value == ref.Offset && s.Type == TypeObject && s.Size != 0 && s.Size != size {
			return &Error{Op: p.f.op, Section: ref.SectionName, Offset: ref.Offset, Symbol: s.Name, Kind: ErrFormat,
				Detail: fmt.Sprintf("struct klp_patch %s is %d bytes, but its KLP_PATCH says layout %d, of %d bytes: rebuild the patch with one livepatch.h",
					s.Name, s.Size, p.ABI, size)}
		}
	}
	return nil
}

// parseStates reads klp_patch.states (PatchABI2): NULL, or an array of
// struct klp_state in the patch ended by an id of 0, as Linux's
// klp_for_each_state walks it. An id given twice is refused.
func (p *Patch) parseStates(pref *Ref) error {
	states, err := p.pointer(pref.Section, pref.Offset+klpPatchStates, "klp_patch.states")
	if err != nil || states == nil {
		return err
	}
	if states.Section < 0 {
		return p.structErr(pref.Section, pref.Offset+klpPatchStates, ErrFormat, "klp_patch.states points outside the patch (%s)", states.Symbol)
	}
	p.StatesLoc = states
	seen := map[uint64]bool{}
	for off := states.Offset; ; off += klpStateSize {
		st, end, err := p.parseState(states.Section, off)
		if err != nil {
			return err
		}
		if end {
			return nil
		}
		if seen[st.ID] {
			return p.structErr(states.Section, off, ErrDuplicate, "state %d given twice", st.ID)
		}
		seen[st.ID] = true
		p.States = append(p.States, st)
	}
}

func (p *Patch) parseState(sec int, off uint64) (State, bool, error) {
	var st State
	if _, err := p.field(sec, off, klpStateSize, "struct klp_state (states[] not terminated by { }?)"); err != nil {
		return st, false, err
	}
	if p.relaIn(sec, off+klpStateID, 8) || p.relaIn(sec, off+klpStateVersion, 8) {
		return st, false, p.structErr(sec, off, ErrFormat, "klp_state.id or .version is relocated")
	}
	raw, _ := p.field(sec, off, klpStateSize, "struct klp_state")
	st.ID, st.Version = le.Uint64(raw[klpStateID:]), le.Uint32(raw[klpStateVersion:])
	if st.ID == 0 {
		return st, true, nil // klp_for_each_state's end: state->id == 0
	}
	data, err := p.pointer(sec, off+klpStateData, "klp_state.data")
	if err != nil {
		return st, false, err
	}
	if data != nil && data.Section >= 0 && data.Symbol == "" {
		data.Symbol = p.objectAt(data.Section, data.Offset)
	}
	st.Data = data
	st.Loc = Ref{Section: sec, SectionName: p.f.sections[sec].Name, Offset: off}
	return st, false, nil
}

func (p *Patch) parseObject(sec int, off uint64) (Object, bool, error) {
	var obj Object
	if _, err := p.field(sec, off, klpObjectSize, "struct klp_object (objs[] not terminated by { }?)"); err != nil {
		return obj, false, err
	}
	nameRef, err := p.pointer(sec, off+klpObjectName, "klp_object.name")
	if err != nil {
		return obj, false, err
	}
	funcs, err := p.pointer(sec, off+klpObjectFuncs, "klp_object.funcs")
	if err != nil {
		return obj, false, err
	}
	var cbs [4]*Ref
	for i := range cbs {
		what := "klp_object.callbacks." + CallbackNames[i]
		if cbs[i], err = p.pointer(sec, off+klpObjectCallbacks+uint64(i)*8, what); err != nil {
			return obj, false, err
		}
		if cbs[i] != nil {
			if err := p.codeRef(cbs[i], what); err != nil {
				return obj, false, err
			}
		}
	}
	if nameRef == nil && funcs == nil {
		return obj, true, nil // Linux's klp_for_each_object_static terminator
	}
	obj.Name = VmlinuxObject
	if nameRef != nil {
		if obj.Name, err = p.stringAt(nameRef, "klp_object.name"); err != nil {
			return obj, false, err
		}
		if !validModuleName(obj.Name) {
			return obj, false, p.structErr(sec, off, ErrFormat, "klp_object.name %q is not a module name", obj.Name)
		}
	}
	obj.Loc = Ref{Section: sec, SectionName: p.f.sections[sec].Name, Offset: off}
	obj.Callbacks = Callbacks{cbs[0], cbs[1], cbs[2], cbs[3]}
	if funcs == nil || funcs.Section < 0 {
		return obj, false, p.structErr(sec, off+klpObjectFuncs, ErrFormat, "object %s: funcs is NULL or outside the patch", obj.Name)
	}
	seen := map[string]bool{}
	for foff := funcs.Offset; ; foff += klpFuncSize {
		fn, end, err := p.parseFunc(funcs.Section, foff)
		if err != nil {
			return obj, false, err
		}
		if end {
			break
		}
		key := fn.OldName + "," + strconv.Itoa(fn.OldSympos)
		if seen[key] {
			return obj, false, &Error{Op: p.f.op, Section: p.f.sections[funcs.Section].Name, Offset: foff, Symbol: fn.OldName,
				Kind: ErrDuplicate, Detail: fmt.Sprintf("object %s patches %s (sympos %d) twice", obj.Name, fn.OldName, fn.OldSympos)}
		}
		seen[key] = true
		obj.Funcs = append(obj.Funcs, fn)
	}
	// An empty funcs[] is fine, as in Linux (klp_enable_patch wants
	// funcs non-NULL, nothing more): a patch of callbacks and states
	// only, such as test_klp_state's no_funcs, or an empty atomic
	// replace that reverts every patch.
	return obj, false, nil
}

func (p *Patch) parseFunc(sec int, off uint64) (Func, bool, error) {
	var fn Func
	if _, err := p.field(sec, off, klpFuncSize, "struct klp_func (funcs[] not terminated by { }?)"); err != nil {
		return fn, false, err
	}
	oldName, err := p.pointer(sec, off+klpFuncOldName, "klp_func.old_name")
	if err != nil {
		return fn, false, err
	}
	newFunc, err := p.pointer(sec, off+klpFuncNewFunc, "klp_func.new_func")
	if err != nil {
		return fn, false, err
	}
	if p.relaIn(sec, off+klpFuncOldSympos, 8) {
		return fn, false, p.structErr(sec, off+klpFuncOldSympos, ErrFormat, "klp_func.old_sympos is relocated")
	}
	raw, _ := p.field(sec, off+klpFuncOldSympos, 8, "klp_func.old_sympos")
	sympos := le.Uint64(raw)
	if oldName == nil && newFunc == nil && sympos == 0 {
		return fn, true, nil
	}
	if oldName == nil || newFunc == nil {
		return fn, false, p.structErr(sec, off, ErrFormat, "klp_func needs both old_name and new_func")
	}
	if sympos > 1<<20 {
		return fn, false, p.structErr(sec, off+klpFuncOldSympos, ErrRange, "old_sympos %d is implausible", sympos)
	}
	if fn.OldName, err = p.stringAt(oldName, "klp_func.old_name"); err != nil {
		return fn, false, err
	}
	if fn.OldName == "" {
		return fn, false, p.structErr(sec, off, ErrFormat, "klp_func.old_name is empty")
	}
	if err := p.codeRef(newFunc, "klp_func.new_func of "+fn.OldName); err != nil {
		return fn, false, err
	}
	fn.OldSympos = int(sympos)
	fn.NewFunc = *newFunc
	fn.Loc = Ref{Section: sec, SectionName: p.f.sections[sec].Name, Offset: off}
	return fn, false, nil
}
