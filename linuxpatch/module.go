package linuxpatch

import (
	"bytes"
	"cmp"
	"fmt"
	"slices"
	"strings"
	"syscall"

	"github.com/cilium/ebpf/btf"

	"klp-kvm/elfpatch"
)

// Limits on what a module may contain (untrusted input).
const (
	maxObjects   = 64
	maxFuncs     = 4096 // per object
	maxAllFuncs  = 16384
	maxStates    = 256
	maxModinfo   = 1024 // entries
	maxBSS       = 64 << 20
	maxAlign     = 4096
	ksymNameLen  = 512 // KSYM_NAME_LEN: old_name and symbol names are shorter
	moduleNameLn = 56  // MODULE_NAME_LEN on x86-64: object names are shorter
	maxSympos    = 1 << 20
)

// VmlinuxObject is the name of the kernel object (klp_object.name NULL).
const VmlinuxObject = "vmlinux"

// Module is a Linux livepatch module (.ko) read and checked, not yet
// placed: its klp structures, its sections and what becomes of each. It
// keeps the input bytes; do not modify them.
type Module struct {
	obj    *elfpatch.ObjectFile
	layout *Layout

	// Name is the module's name, modinfo "name" (modpost writes it; the
	// guest's livepatch would call the patch that).
	Name string
	// Vermagic is modinfo "vermagic": the kernel release it was built for,
	// then its build features ("6.1.0-57-amd64 SMP preempt mod_unload
	// modversions ").
	Vermagic string
	// Modinfo is every key=value of .modinfo, in order.
	Modinfo []KeyValue
	// Patch is the module's struct klp_patch.
	Patch Loc
	// Replace is klp_patch.replace (an atomic-replace patch).
	Replace bool
	// Objects are klp_patch.objs[] up to its sentinel.
	Objects []Object
	// States are klp_patch.states[] up to the entry with id 0.
	States []State
	// Sections are the module's sections and what becomes of each.
	Sections []SectionUse
	// OwnBTF: the module has a .BTF section (split BTF over the kernel's;
	// the layouts still come from the kernel's).
	OwnBTF bool

	classes   []class
	fentry    []Loc             // call __fentry__ sites in placed code
	fentryRel map[relKey]bool   // the relocations those NOPs replace
	returns   []Loc             // jmp __x86_return_thunk sites in placed code (.return_sites)
	returnRel map[relKey]bool   // their relocations
	isKlpRela map[int]string    // .klp.rela section index -> its object
	normal    map[int][]relocK  // per target section, normal relocations (not .klp.rela)
	names     map[relKey]string // symbols by the place they start
	sizes     map[relKey]uint64 // their sizes
}

type relKey struct {
	sec int
	off uint64
}

type relocK = elfpatch.ObjectReloc

// KeyValue is one .modinfo entry.
type KeyValue struct{ Key, Value string }

// Loc is a place in the module: a section and an offset in it.
type Loc struct {
	Section     int    `json:"-"`
	SectionName string `json:"section"`
	Offset      uint64 `json:"offset"`
	Symbol      string `json:"symbol,omitempty"` // a symbol defined exactly there, when there is one
}

func (l Loc) String() string {
	if l.Symbol != "" {
		return fmt.Sprintf("%s (%s+%#x)", l.Symbol, l.SectionName, l.Offset)
	}
	return fmt.Sprintf("%s+%#x", l.SectionName, l.Offset)
}

// Object is one struct klp_object.
type Object struct {
	Name      string  // "vmlinux" for klp_object.name NULL
	Loc       Loc     // the struct klp_object
	Funcs     []Func  // funcs[] up to the sentinel
	Callbacks [4]*Loc // CallbackNames order; nil = none
}

// Func is one struct klp_func.
type Func struct {
	OldName   string
	OldSympos int    // 0: the name must be unique in its object
	NewFunc   Loc    // the replacement, in the module's code
	NewSize   uint64 // its symbol's size, 0 if no function symbol starts there
	Loc       Loc    // the struct klp_func
}

// State is one struct klp_state.
type State struct {
	ID      uint64
	Version uint32
	Loc     Loc
}

// SectionUse says what becomes of one allocatable section.
type SectionUse struct {
	Name string
	Size uint64
	Use  string // "text", "rodata", "data", "bss", "zeroed", "skipped"
	Why  string // for skipped sections
}

// Parse reads a livepatch module. spec is the guest kernel's BTF, which
// gives the klp struct layouts. The module is checked as Linux's module
// loader and livepatch core would check it before running anything, plus
// what the host cannot do without a loader in the guest (refused
// sections, see doc.go); the first problem is returned as an *Error.
func Parse(data []byte, spec *btf.Spec) (*Module, error) {
	obj, err := elfpatch.ParseObjectFile(data)
	if err != nil {
		return nil, &Error{Op: "parse", Kind: ErrFormat, Err: err}
	}
	layout, err := LayoutFromBTF(spec)
	if err != nil {
		return nil, err
	}
	m := &Module{obj: obj, layout: layout, fentryRel: map[relKey]bool{}, returnRel: map[relKey]bool{}, isKlpRela: map[int]string{}, normal: map[int][]relocK{}}
	m.indexSymbols()
	if err := m.classify(); err != nil {
		return nil, err
	}
	if err := m.readModinfo(); err != nil {
		return nil, err
	}
	if err := m.splitRelocs(); err != nil {
		return nil, err
	}
	if err := m.findFentry(); err != nil {
		return nil, err
	}
	if err := m.findReturns(); err != nil {
		return nil, err
	}
	if err := m.findPatch(); err != nil {
		return nil, err
	}
	return m, nil
}

func (m *Module) secName(i int) string {
	secs := m.obj.Sections()
	if i > 0 && i < len(secs) {
		return secs[i].Name
	}
	return m.obj.SectionName(i)
}

// placed reports whether section i gets memory in the guest.
func (m *Module) placed(i int) bool {
	if i <= 0 || i >= len(m.classes) {
		return false
	}
	switch m.classes[i] {
	case classText, classROData, classData, classBSS, classThisModule:
		return true
	}
	return false
}

func (m *Module) classify() error {
	secs := m.obj.Sections()
	m.classes = make([]class, len(secs))
	var bss uint64
	for i := 1; i < len(secs); i++ {
		s := &secs[i]
		c, why := classify(s)
		m.classes[i] = c
		if c == classNone {
			if s.Name == ".BTF" {
				m.OwnBTF = true
			}
			continue
		}
		use := SectionUse{Name: s.Name, Size: s.Size, Why: why}
		switch c {
		case classRefuse:
			if s.Size == 0 {
				// An empty table asks nothing of a loader.
				use.Use, use.Why = "skipped", "empty"
				m.classes[i] = classSkip
				m.Sections = append(m.Sections, use)
				continue
			}
			return errf("parse", ErrUnsupported, "%s", why).at(s.Name, 0).errno(syscall.ENOEXEC)
		case classSkip:
			use.Use = "skipped"
			if s.Name == ".BTF" {
				m.OwnBTF = true
			}
		case classText:
			use.Use = "text"
		case classROData:
			use.Use = "rodata"
		case classData:
			use.Use = "data"
		case classBSS:
			use.Use = "bss"
			if s.Size > maxBSS || bss+s.Size > maxBSS {
				return errf("parse", ErrRange, "zero-filled sections total more than %d MiB", maxBSS>>20).at(s.Name, 0)
			}
			bss += s.Size
		case classThisModule:
			use.Use = "zeroed"
			use.Why = "the module's struct module: the guest never sees it; THIS_MODULE points to zeroes of its size"
			if s.Size > 1<<20 {
				return errf("parse", ErrRange, "struct module of %d bytes", s.Size).at(s.Name, 0)
			}
			// load_module: "section size must match the kernel's built
			// struct module size at run time".
			if m.layout.ModuleSize != 0 && s.Size != m.layout.ModuleSize {
				return errf("parse", ErrVersion, "struct module is %d bytes here, %d in the kernel: built for another kernel or configuration", s.Size, m.layout.ModuleSize).at(s.Name, 0).errno(syscall.ENOEXEC)
			}
		}
		if c != classSkip {
			a := s.Align
			if a == 0 {
				a = 1
			}
			if a&(a-1) != 0 || a > maxAlign {
				return errf("parse", ErrUnsupported, "alignment %d: not a power of two up to %d", s.Align, maxAlign).at(s.Name, 0)
			}
		}
		m.Sections = append(m.Sections, use)
	}
	n := 0
	for _, c := range m.classes {
		if c == classThisModule {
			n++
		}
	}
	if n != 1 {
		// load_module: "No module found in object".
		return errf("parse", ErrFormat, "%d .gnu.linkonce.this_module sections, want 1 (the module's struct module)", n).errno(syscall.ENOEXEC)
	}
	return nil
}

// readModinfo parses .modinfo (NUL-separated key=value strings) and checks
// what Linux checks before loading a livepatch module: livepatch=Y
// (is_livepatch_module) and a vermagic.
func (m *Module) readModinfo() error {
	secs := m.obj.Sections()
	idx := -1
	for i := range secs {
		if secs[i].Name == ".modinfo" {
			if idx >= 0 {
				return errf("modinfo", ErrFormat, "two .modinfo sections")
			}
			idx = i
		}
	}
	if idx < 0 {
		return errf("modinfo", ErrFormat, "no .modinfo section: not a kernel module").errno(syscall.ENOEXEC)
	}
	data := m.obj.SectionData(idx)
	for off := 0; off < len(data); {
		end := bytes.IndexByte(data[off:], 0)
		if end < 0 {
			return errf("modinfo", ErrFormat, "entry not NUL-terminated").at(".modinfo", uint64(off))
		}
		entry := string(data[off : off+end])
		if entry != "" {
			if len(m.Modinfo) >= maxModinfo {
				return errf("modinfo", ErrRange, "more than %d entries", maxModinfo).at(".modinfo", uint64(off))
			}
			k, v, ok := strings.Cut(entry, "=")
			if !ok {
				return errf("modinfo", ErrFormat, "entry %q is not key=value", entry).at(".modinfo", uint64(off))
			}
			m.Modinfo = append(m.Modinfo, KeyValue{k, v})
		}
		off += end + 1
	}
	m.Vermagic, _ = m.Info("vermagic")
	m.Name, _ = m.Info("name")
	if lp, _ := m.Info("livepatch"); lp != "Y" {
		return errf("modinfo", ErrFormat, "no MODULE_INFO(livepatch, \"Y\"): not a livepatch module").errno(syscall.EINVAL)
	}
	if m.Name == "" || len(m.Name) >= moduleNameLn || strings.ContainsAny(m.Name, "/ ") {
		return errf("modinfo", ErrFormat, "module name %q: want modpost's name=, 1..%d characters", m.Name, moduleNameLn-1).errno(syscall.ENOEXEC)
	}
	if m.Vermagic == "" {
		return errf("modinfo", ErrFormat, "no vermagic").errno(syscall.ENOEXEC)
	}
	return nil
}

// Info is the first .modinfo value of key.
func (m *Module) Info(key string) (string, bool) {
	for _, kv := range m.Modinfo {
		if kv.Key == key {
			return kv.Value, true
		}
	}
	return "", false
}

// Release is the kernel release vermagic names (its first word).
func (m *Module) Release() string {
	r, _, _ := strings.Cut(strings.TrimSpace(m.Vermagic), " ")
	return r
}

// splitRelocs sorts relocations into the loader's normal ones and
// Linux's .klp.rela.<object>.<section> ones, which must be marked
// SHF_RELA_LIVEPATCH (and the other way round).
func (m *Module) splitRelocs() error {
	secs := m.obj.Sections()
	for i := range secs {
		s := &secs[i]
		if s.Type != elfpatch.SHT_RELA {
			continue
		}
		klpName := strings.HasPrefix(s.Name, ".klp.rela.")
		klpFlag := s.Flags&elfpatch.SHF_RELA_LIVEPATCH != 0
		if klpName != klpFlag {
			return errf("parse", ErrFormat, "a .klp.rela.<object>.<section> name and the SHF_RELA_LIVEPATCH flag go together").at(s.Name, 0).errno(syscall.EINVAL)
		}
		if !klpName {
			continue
		}
		// Linux: sscanf(".klp.rela.%55[^.]") — the object name is up to
		// 55 characters without a dot, followed by the section's name.
		rest := strings.TrimPrefix(s.Name, ".klp.rela.")
		objName, _, ok := strings.Cut(rest, ".")
		if !ok || objName == "" || len(objName) >= moduleNameLn {
			return errf("parse", ErrFormat, "incorrectly formatted name, want .klp.rela.<object>.<section> with an object name of 1..%d characters", moduleNameLn-1).at(s.Name, 0).errno(syscall.EINVAL)
		}
		m.isKlpRela[i] = objName
	}
	for t := range secs {
		for _, r := range m.obj.Relocs(t) {
			if _, klp := m.isKlpRela[r.RelaSection]; !klp {
				m.normal[t] = append(m.normal[t], r)
			}
		}
	}
	return nil
}

// normalAt is the normal relocation at exactly (sec, off), or nil; two
// there are ErrFormat (Linux refuses a relocation over a nonzero value).
func (m *Module) normalAt(sec int, off uint64) (*relocK, error) {
	list := m.normal[sec]
	i, found := slices.BinarySearchFunc(list, off, func(r relocK, o uint64) int { return cmp.Compare(r.Offset, o) })
	if !found {
		return nil, nil
	}
	if i+1 < len(list) && list[i+1].Offset == off {
		return nil, errf("parse", ErrFormat, "two relocations at the same place").at(m.secName(sec), off).errno(syscall.ENOEXEC)
	}
	return &list[i], nil
}

// symName names relocation symbol i (a section symbol by its section).
func (m *Module) symName(i int) string {
	syms := m.obj.Symbols()
	if i < 0 || i >= len(syms) {
		return "?"
	}
	s := &syms[i]
	if s.Type == elfpatch.TypeSection && s.Name == "" {
		return m.secName(s.Section)
	}
	return s.Name
}

// findFentry finds every call to __fentry__ in placed code: the
// __mcount_loc entries (each must point at one) and any other
// relocation against __fentry__ (each must be the operand of a call).
// Link turns them into 5-byte NOPs.
func (m *Module) findFentry() error {
	syms := m.obj.Symbols()
	secs := m.obj.Sections()
	seen := map[relKey]bool{}
	addSite := func(sec int, site uint64, from string) error {
		if !m.placed(sec) {
			return nil // in init code or another section that is not loaded
		}
		if m.classes[sec] != classText {
			return errf("fentry", ErrFormat, "%s: fentry site in a section that is not code", from).at(m.secName(sec), site)
		}
		code := m.obj.SectionData(sec)
		if site > uint64(len(code)) || uint64(len(code))-site < 5 {
			return errf("fentry", ErrFormat, "%s: fentry site runs past the end of its section", from).at(m.secName(sec), site)
		}
		if !bytes.Equal(code[site:site+5], []byte{0xe8, 0, 0, 0, 0}) {
			return errf("fentry", ErrFormat, "%s: % x is not a call to __fentry__ (e8 00 00 00 00)", from, code[site:site+5]).at(m.secName(sec), site)
		}
		r, err := m.normalAt(sec, site+1)
		if err != nil {
			return err
		}
		if r == nil || (r.Type != elfpatch.R_X86_64_PLT32 && r.Type != elfpatch.R_X86_64_PC32) || r.Addend != -4 ||
			syms[r.Symbol].Name != "__fentry__" || syms[r.Symbol].Section != shnUndef {
			return errf("fentry", ErrFormat, "%s: the call at this site is not relocated against __fentry__", from).at(m.secName(sec), site)
		}
		k := relKey{sec, site}
		if !seen[k] {
			seen[k] = true
			m.fentry = append(m.fentry, Loc{Section: sec, SectionName: m.secName(sec), Offset: site, Symbol: m.funcAt(sec, site)})
			m.fentryRel[relKey{sec, site + 1}] = true
		}
		return nil
	}
	for i := range secs {
		if secs[i].Name != "__mcount_loc" {
			continue
		}
		if secs[i].Size%8 != 0 {
			return errf("fentry", ErrFormat, "size %#x is not a multiple of 8", secs[i].Size).at("__mcount_loc", 0)
		}
		data := m.obj.SectionData(i)
		for off := uint64(0); off+8 <= secs[i].Size; off += 8 {
			r, err := m.normalAt(i, off)
			if err != nil {
				return err
			}
			if r == nil || r.Type != elfpatch.R_X86_64_64 || (data != nil && le64(data[off:]) != 0) {
				return errf("fentry", ErrFormat, "entry is not an R_X86_64_64 relocation").at("__mcount_loc", off)
			}
			s := &syms[r.Symbol]
			if s.Section <= 0 || s.Section >= len(secs) {
				return errf("fentry", ErrFormat, "entry points outside the module").at("__mcount_loc", off).sym(m.symName(r.Symbol))
			}
			site := s.Value + uint64(r.Addend)
			if err := addSite(s.Section, site, fmt.Sprintf("__mcount_loc+%#x", off)); err != nil {
				return err
			}
		}
	}
	// Calls to __fentry__ that __mcount_loc does not list get the same
	// treatment: the new code must not call into the guest's ftrace.
	for t := range secs {
		if !m.placed(t) {
			continue
		}
		for _, r := range m.normal[t] {
			if syms[r.Symbol].Name != "__fentry__" || r.Offset == 0 || seen[relKey{t, r.Offset - 1}] {
				continue
			}
			if err := addSite(t, r.Offset-1, "relocation against __fentry__"); err != nil {
				return err
			}
		}
	}
	slices.SortFunc(m.fentry, func(a, b Loc) int {
		return cmp.Or(cmp.Compare(a.Section, b.Section), cmp.Compare(a.Offset, b.Offset))
	})
	return nil
}

// indexSymbols names the places symbols start at: for each (section,
// offset) a local function (livepatch_x rather than its module alias
// init_module), else a global one, else a data object.
func (m *Module) indexSymbols() {
	rank := map[relKey]int{}
	m.names = map[relKey]string{}
	m.sizes = map[relKey]uint64{}
	for _, s := range m.obj.Symbols() {
		if s.Name == "" || s.Section <= 0 || s.Section >= len(m.obj.Sections()) {
			continue
		}
		r := 0
		switch {
		case s.Type == elfpatch.TypeFunc && s.Bind == elfpatch.BindLocal:
			r = 3
		case s.Type == elfpatch.TypeFunc:
			r = 2
		case s.Type == elfpatch.TypeObject:
			r = 1
		default:
			continue
		}
		k := relKey{s.Section, s.Value}
		if r > rank[k] {
			rank[k], m.names[k], m.sizes[k] = r, s.Name, s.Size
		}
	}
}

// funcAt names the function symbol that starts at (sec, off), if any.
func (m *Module) funcAt(sec int, off uint64) string {
	return m.names[relKey{sec, off}]
}

func (m *Module) loc(sec int, off uint64) Loc {
	return Loc{Section: sec, SectionName: m.secName(sec), Offset: off, Symbol: m.names[relKey{sec, off}]}
}

// FentrySites are the module's calls to __fentry__ that Link makes NOPs.
func (m *Module) FentrySites() []Loc { return slices.Clone(m.fentry) }

// Layout is the klp struct layout the module was read with.
func (m *Module) Layout() Layout { return *m.layout }

func le64(b []byte) uint64 {
	return uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 |
		uint64(b[4])<<32 | uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56
}

// findReturns reads .return_sites: each entry (an R_X86_64_PC32 to the
// site) must be a "jmp __x86_return_thunk" in code, which Link leaves as
// built, points at Config.ReturnThunk or makes a plain return
// (Config.PlainReturns), as apply_returns would.
func (m *Module) findReturns() error {
	syms := m.obj.Symbols()
	secs := m.obj.Sections()
	for i := range secs {
		if secs[i].Name != ".return_sites" {
			continue
		}
		if secs[i].Size%4 != 0 {
			return errf("returns", ErrFormat, "size %#x is not a multiple of 4", secs[i].Size).at(".return_sites", 0)
		}
		for off := uint64(0); off+4 <= secs[i].Size; off += 4 {
			r, err := m.normalAt(i, off)
			if err != nil {
				return err
			}
			if r == nil || r.Type != elfpatch.R_X86_64_PC32 {
				return errf("returns", ErrFormat, "entry is not an R_X86_64_PC32 relocation").at(".return_sites", off)
			}
			s := &syms[r.Symbol]
			if s.Section <= 0 || s.Section >= len(secs) {
				return errf("returns", ErrFormat, "entry points outside the module").at(".return_sites", off).sym(m.symName(r.Symbol))
			}
			sec, site := s.Section, s.Value+uint64(r.Addend)
			if !m.placed(sec) {
				continue // init or exit code
			}
			code := m.obj.SectionData(sec)
			if m.classes[sec] != classText || site > uint64(len(code)) || uint64(len(code))-site < 5 || code[site] != 0xe9 {
				return errf("returns", ErrFormat, ".return_sites+%#x: not a 5-byte jmp in the module's code", off).at(m.secName(sec), site)
			}
			jr, err := m.normalAt(sec, site+1)
			if err != nil {
				return err
			}
			if jr == nil || (jr.Type != elfpatch.R_X86_64_PLT32 && jr.Type != elfpatch.R_X86_64_PC32) || jr.Addend != -4 ||
				syms[jr.Symbol].Name != "__x86_return_thunk" || syms[jr.Symbol].Section != shnUndef {
				return errf("returns", ErrFormat, ".return_sites+%#x: the jmp is not relocated against __x86_return_thunk", off).at(m.secName(sec), site)
			}
			if k := (relKey{sec, site + 1}); !m.returnRel[k] {
				m.returnRel[k] = true
				m.returns = append(m.returns, Loc{Section: sec, SectionName: m.secName(sec), Offset: site})
			}
		}
	}
	return nil
}
