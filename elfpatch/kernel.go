package elfpatch

import (
	"bytes"
	"cmp"
	"fmt"
	"io"
	"io/fs"
	"iter"
	"slices"
	"sort"
	"strings"

	"golang.org/x/arch/x86/x86asm"
)

// Segment is a PT_LOAD program header: where a part of the image is loaded
// (virtual and physical address).
type Segment struct {
	Vaddr, Paddr   uint64
	Offset, Filesz uint64
	Memsz          uint64
	Flags          uint32
}

// SiteKind says what instruction an fentry site holds in the image.
type SiteKind uint8

const (
	// SiteNop5 is the 5-byte NOP 0f 1f 44 00 00 of -mnop-mcount.
	SiteNop5 SiteKind = iota + 1
	// SiteCall is call __fentry__ (a kernel built without -mnop-mcount,
	// whose sites are turned into NOPs at boot).
	SiteCall
)

func (k SiteKind) String() string {
	switch k {
	case SiteNop5:
		return "nop5"
	case SiteCall:
		return "call __fentry__"
	}
	return "invalid"
}

// FentrySize is the length of an fentry site (NOP or call rel32).
const FentrySize = 5

// Nop5 is the canonical 5-byte NOP at an fentry site.
var Nop5 = [FentrySize]byte{0x0f, 0x1f, 0x44, 0x00, 0x00}

var endbr64 = []byte{0xf3, 0x0f, 0x1e, 0xfa}

// Site is one fentry call site recorded in __mcount_loc and checked against
// the code: the place where a function's redirection is written.
type Site struct {
	Addr     uint64           `json:"addr"`
	Func     string           `json:"func,omitempty"`
	FuncAddr uint64           `json:"func_addr,omitempty"`
	Offset   uint64           `json:"offset"` // Addr - FuncAddr
	Kind     SiteKind         `json:"-"`
	Bytes    [FentrySize]byte `json:"-"` // what the image holds at Addr (the expected bytes of a text poke)
}

// SiteProblem is an __mcount_loc entry that failed the cross-check.
type SiteProblem struct {
	Addr   uint64 `json:"addr"`
	Reason string `json:"reason"`
}

// Not-patchable reason kinds (FuncInfo.ReasonKind).
const (
	ReasonNotFunc   = "not a function"
	ReasonClone     = "compiler clone"
	ReasonNoSite    = "no fentry site"
	ReasonSiteLate  = "fentry site not at entry"
	ReasonBadSite   = "bad fentry site"
	ReasonNotText   = "not in executable text"
	ReasonEmptyFunc = "zero-size function"
)

// FuncInfo says whether one function symbol can be patched, and why not.
type FuncInfo struct {
	Symbol     Symbol `json:"-"`
	Sympos     int    `json:"sympos"`
	Site       *Site  `json:"site,omitempty"`
	ReasonKind string `json:"reason_kind,omitempty"`
	Reason     string `json:"reason,omitempty"`
}

// Patchable reports whether the function can be patched.
func (fi *FuncInfo) Patchable() bool { return fi.ReasonKind == "" }

// Kernel is a parsed guest kernel image. It is the host's only reader of
// the guest kernel's ELF: the VMM loads it from Entry and Segments, the
// introspection and livepatch code use its symbols and fentry sites, so one
// parse can serve a whole machine.
type Kernel struct {
	f        *elfFile
	Entry    uint64    // e_entry
	Segments []Segment // the PT_LOAD program headers, in file order (file ranges checked)

	byName []int32 // lookup-able symbols sorted by (name, addr, index)
	byAddr []int32 // symbols with an address in an allocated section, sorted by addr
	text   []int32 // allocated sections with file bytes, sorted by address

	sites        []Site // sorted by Addr
	siteProblems []SiteProblem
	mcountWhere  string
}

// maxKernelSize bounds OpenKernel's read (a vmlinux is tens of MB).
const maxKernelSize = 1 << 30

// OpenKernel reads a kernel image from r (whose size is taken from a Size
// or Stat method, as *os.File, *bytes.Reader and *io.SectionReader have)
// and parses it.
func OpenKernel(r io.ReaderAt) (*Kernel, error) {
	data, err := readAllAt(r, "open kernel")
	if err != nil {
		return nil, err
	}
	return ParseKernel(data)
}

func readAllAt(r io.ReaderAt, op string) ([]byte, error) {
	var size int64 = -1
	switch s := r.(type) {
	case interface{ Size() int64 }:
		size = s.Size()
	case interface{ Stat() (fs.FileInfo, error) }:
		if fi, err := s.Stat(); err == nil && fi.Mode().IsRegular() {
			size = fi.Size()
		}
	}
	if size < 0 {
		// Unknown size: read in chunks up to the cap.
		sr := io.NewSectionReader(r, 0, maxKernelSize+1)
		data, err := io.ReadAll(sr)
		if err != nil {
			return nil, &Error{Op: op, Err: err}
		}
		if len(data) > maxKernelSize {
			return nil, errorf(op, ErrRange, "input larger than %d bytes", maxKernelSize)
		}
		return data, nil
	}
	if size > maxKernelSize {
		return nil, errorf(op, ErrRange, "input of %d bytes is larger than %d", size, maxKernelSize)
	}
	data := make([]byte, size)
	n, err := r.ReadAt(data, 0)
	if n != len(data) {
		return nil, &Error{Op: op, Err: fmt.Errorf("short read (%d of %d bytes): %w", n, size, err)}
	}
	return data, nil
}

// ParseKernel parses a kernel image held in data. The Kernel keeps data
// (it serves text bytes from it); the caller must not modify it afterwards.
func ParseKernel(data []byte) (*Kernel, error) {
	f, err := parseELF("parse kernel", data, etExec, etDyn)
	if err != nil {
		return nil, err
	}
	k := &Kernel{f: f, Entry: f.hdr.Entry}
	if err := k.parseSegments(); err != nil {
		return nil, err
	}
	if err := f.parseSymbols(); err != nil {
		return nil, err
	}
	k.index()
	k.findSites()
	return k, nil
}

func (k *Kernel) parseSegments() error {
	h := k.f.hdr
	if h.Phnum == 0 {
		return nil
	}
	if h.Phentsize != progSize {
		return k.f.errf(ErrFormat, "e_phentsize %d, want %d", h.Phentsize, progSize)
	}
	table, ok := k.f.span(h.Phoff, uint64(h.Phnum)*progSize)
	if !ok {
		return k.f.errf(ErrFormat, "program header table (%d entries at %#x) runs past the end of the file", h.Phnum, h.Phoff)
	}
	for i := 0; i < int(h.Phnum); i++ {
		p := decodeProg(table[i*progSize:])
		if p.Type != ptLoad {
			continue
		}
		if p.Filesz > p.Memsz {
			return k.f.errf(ErrFormat, "PT_LOAD %d: filesz %#x > memsz %#x", i, p.Filesz, p.Memsz)
		}
		if _, ok := k.f.span(p.Offset, p.Filesz); !ok {
			return k.f.errf(ErrFormat, "PT_LOAD %d: file range %#x+%#x runs beyond the end of the %d-byte file (truncated?)",
				i, p.Offset, p.Filesz, len(k.f.data))
		}
		k.Segments = append(k.Segments, Segment{Vaddr: p.Vaddr, Paddr: p.Paddr, Offset: p.Offset,
			Filesz: p.Filesz, Memsz: p.Memsz, Flags: p.Flags})
	}
	return nil
}

// lookupable: symbols that kallsyms would list (and absolute symbols, which
// plain undefined references may resolve to).
func lookupable(s *Symbol) bool {
	if s.Index == 0 || s.Name == "" || !s.Defined() {
		return false
	}
	return s.Type != TypeSection && s.Type != TypeFile
}

func (k *Kernel) index() {
	syms := k.f.symbols
	secs := k.f.sections
	for i := range syms {
		s := &syms[i]
		if !lookupable(s) {
			continue
		}
		k.byName = append(k.byName, int32(i))
		if s.Section > 0 && s.Section < len(secs) && secs[s.Section].Alloc() {
			k.byAddr = append(k.byAddr, int32(i))
		}
	}
	slices.SortFunc(k.byName, func(a, b int32) int {
		sa, sb := &syms[a], &syms[b]
		if c := strings.Compare(sa.Name, sb.Name); c != 0 {
			return c
		}
		if c := cmp.Compare(sa.Value, sb.Value); c != 0 {
			return c
		}
		return cmp.Compare(a, b)
	})
	slices.SortFunc(k.byAddr, func(a, b int32) int {
		if c := cmp.Compare(syms[a].Value, syms[b].Value); c != 0 {
			return c
		}
		return cmp.Compare(a, b)
	})
	for i := range secs {
		s := &secs[i]
		if s.Alloc() && s.Type != SHT_NOBITS && s.Type != SHT_NULL && s.Size > 0 {
			k.text = append(k.text, int32(i))
		}
	}
	slices.SortFunc(k.text, func(a, b int32) int { return cmp.Compare(secs[a].Addr, secs[b].Addr) })
}

// Data returns the image bytes the kernel was parsed from (ParseKernel's
// data). The slice is shared: do not modify it.
func (k *Kernel) Data() []byte { return k.f.data }

// Type is the image's ELF type: ET_EXEC (linked at a fixed address, as a
// vmlinux is) or ET_DYN (ParseKernel accepts nothing else).
func (k *Kernel) Type() FileType { return FileType(k.f.hdr.Type) }

// SegmentBytes returns the file bytes of a segment: its first Filesz bytes
// in memory (the rest, up to Memsz, is zero). It is false if s does not lie
// inside the image (every segment of k.Segments does). The slice is
// shared: do not modify it.
func (k *Kernel) SegmentBytes(s Segment) ([]byte, bool) { return k.f.span(s.Offset, s.Filesz) }

// Sections returns the section headers.
func (k *Kernel) Sections() []Section { return k.f.sections }

// Symbols returns the whole symbol table in file order (index 0 included).
// The slice is shared: do not modify it.
func (k *Kernel) Symbols() []Symbol { return k.f.symbols }

// SectionName names a symbol's section index.
func (k *Kernel) SectionName(idx int) string { return k.f.sectionName(idx) }

// nameRange returns the byName slice of symbols called name.
func (k *Kernel) nameRange(name string) []int32 {
	syms := k.f.symbols
	lo, _ := slices.BinarySearchFunc(k.byName, name, func(i int32, n string) int {
		return strings.Compare(syms[i].Name, n)
	})
	// Upper bound by binary search too: a name may repeat many times.
	hi := lo + sort.Search(len(k.byName)-lo, func(i int) bool { return syms[k.byName[lo+i]].Name != name })
	return k.byName[lo:hi]
}

// LookupAll returns every symbol called name in sympos order (ascending
// address, as /proc/kallsyms lists them): element i has sympos i+1.
func (k *Kernel) LookupAll(name string) []Symbol {
	r := k.nameRange(name)
	out := make([]Symbol, len(r))
	for i, idx := range r {
		out[i] = k.f.symbols[idx]
	}
	return out
}

// Lookup finds a symbol by name with Linux's sympos semantics (as
// klp_find_object_symbol): sympos 0 means the only symbol of that name
// (ErrAmbiguous if there are several), n >= 1 the nth in ascending address
// order (ErrUnresolved if there are fewer).
func (k *Kernel) Lookup(name string, sympos int) (Symbol, error) {
	r := k.nameRange(name)
	switch {
	case len(r) == 0:
		return Symbol{}, &Error{Op: "lookup", Symbol: name, Kind: ErrUnresolved, Detail: fmt.Sprintf("no symbol %q in the kernel", name)}
	case sympos < 0:
		return Symbol{}, &Error{Op: "lookup", Symbol: name, Kind: ErrRange, Detail: fmt.Sprintf("negative sympos %d", sympos)}
	case sympos == 0 && len(r) > 1:
		return Symbol{}, &Error{Op: "lookup", Symbol: name,
			Kind: ErrAmbiguous, Detail: fmt.Sprintf("%d symbols named %q: give sympos 1..%d", len(r), name, len(r))}
	case sympos > len(r):
		return Symbol{}, &Error{Op: "lookup", Symbol: name,
			Kind: ErrUnresolved, Detail: fmt.Sprintf("sympos %d of %q, but only %d exist", sympos, name, len(r))}
	}
	if sympos == 0 {
		sympos = 1
	}
	return k.f.symbols[r[sympos-1]], nil
}

// LookupGlobal resolves a plain undefined reference as a module loader
// would: the global (or weak) symbol of that name. Local symbols are not
// visible this way (use .klp.sym.vmlinux.<name>,<sympos>).
func (k *Kernel) LookupGlobal(name string) (Symbol, error) {
	var found []int32
	locals := 0
	for _, idx := range k.nameRange(name) {
		s := &k.f.symbols[idx]
		if s.Bind == BindGlobal || s.Bind == BindWeak {
			found = append(found, idx)
		} else {
			locals++
		}
	}
	switch {
	case len(found) == 1:
		return k.f.symbols[found[0]], nil
	case len(found) > 1:
		return Symbol{}, &Error{Op: "lookup", Symbol: name, Kind: ErrAmbiguous, Detail: fmt.Sprintf("%d global symbols named %q", len(found), name)}
	case locals > 0:
		return Symbol{}, &Error{Op: "lookup", Symbol: name,
			Kind: ErrUnresolved, Detail: fmt.Sprintf("%q is local to the kernel (%d symbols): reference it as .klp.sym.vmlinux.%s,<sympos>", name, locals, name)}
	}
	return Symbol{}, &Error{Op: "lookup", Symbol: name, Kind: ErrUnresolved, Detail: fmt.Sprintf("no symbol %q in the kernel", name)}
}

// Sympos returns the sympos (1-based) of symbol table entry index among
// the symbols of its name, and how many share the name; (0, 0) if the
// entry is not a lookup-able symbol.
func (k *Kernel) Sympos(index int) (pos, count int) {
	if index <= 0 || index >= len(k.f.symbols) {
		return 0, 0
	}
	syms := k.f.symbols
	target := &syms[index]
	r := k.nameRange(target.Name)
	// r is sorted by (address, index): binary search, so that a hostile
	// image with one name repeated 100k times stays fast.
	i, found := slices.BinarySearchFunc(r, int32(index), func(idx, want int32) int {
		if c := cmp.Compare(syms[idx].Value, target.Value); c != 0 {
			return c
		}
		return cmp.Compare(idx, want)
	})
	if !found {
		return 0, 0
	}
	return i + 1, len(r)
}

// Addr2Sym finds the symbol containing addr and the offset into it (like
// kallsyms_lookup): the symbol whose [value, value+size) holds addr,
// preferring functions and global bindings among aliases; a zero-size
// symbol covers up to the next symbol. ok is false outside every symbol.
func (k *Kernel) Addr2Sym(addr uint64) (sym Symbol, off uint64, ok bool) {
	return k.addr2sym(addr, false)
}

// Addr2Func is Addr2Sym among function symbols only (STT_FUNC): the
// function a code address belongs to, for naming guest addresses.
func (k *Kernel) Addr2Func(addr uint64) (sym Symbol, off uint64, ok bool) {
	return k.addr2sym(addr, true)
}

// FuncSymbols yields the function symbols (STT_FUNC) defined in allocated
// sections, in ascending address order (aliases in symbol table order).
func (k *Kernel) FuncSymbols() iter.Seq[Symbol] {
	return func(yield func(Symbol) bool) {
		for _, idx := range k.byAddr {
			if s := k.f.symbols[idx]; s.Type == TypeFunc && !yield(s) {
				return
			}
		}
	}
}

func (k *Kernel) addr2sym(addr uint64, funcsOnly bool) (Symbol, uint64, bool) {
	syms := k.f.symbols
	// First entry with Value > addr.
	i, _ := slices.BinarySearchFunc(k.byAddr, addr+1, func(idx int32, a uint64) int {
		return cmp.Compare(syms[idx].Value, a)
	})
	if addr == ^uint64(0) {
		i = len(k.byAddr)
	}
	contain, label := -1, -1
	blocked := false // a sized symbol ending before addr hides older labels
	// Walk back over a bounded window: symbols nest rarely and shallowly.
	for j, n := i-1, 0; j >= 0 && n < 64; j, n = j-1, n+1 {
		idx := int(k.byAddr[j])
		s := &syms[idx]
		if contain >= 0 && s.Value < syms[contain].Value {
			break // the innermost containing symbol wins
		}
		if funcsOnly && s.Type != TypeFunc {
			continue
		}
		switch {
		case s.Size > 0 && addr-s.Value < s.Size:
			if contain < 0 || rank(s) > rank(&syms[contain]) {
				contain = idx
			}
		case s.Size > 0:
			if label < 0 {
				blocked = true
			}
		case !blocked && (label < 0 || (s.Value == syms[label].Value && rank(s) > rank(&syms[label]))):
			label = idx
		}
	}
	best := contain
	if best < 0 {
		best = label // a zero-size symbol covers up to the next one
	}
	if best < 0 {
		return Symbol{}, 0, false
	}
	s := syms[best]
	return s, addr - s.Value, true
}

// rank orders aliases at one address: sized, then functions, then global.
func rank(s *Symbol) int {
	r := 0
	if s.Size > 0 {
		r += 4
	}
	if s.Type == TypeFunc {
		r += 2
	}
	if s.Bind != BindLocal {
		r++
	}
	return r
}

// ReadVA returns n bytes of the image at virtual address addr, from the
// allocated section that holds them (no NOBITS).
func (k *Kernel) ReadVA(addr uint64, n int) ([]byte, bool) {
	secs := k.f.sections
	i, _ := slices.BinarySearchFunc(k.text, addr+1, func(idx int32, a uint64) int {
		return cmp.Compare(secs[idx].Addr, a)
	})
	if i == 0 || n < 0 {
		return nil, false
	}
	s := &secs[k.text[i-1]]
	off := addr - s.Addr
	if off >= s.Size || uint64(n) > s.Size-off {
		return nil, false
	}
	return k.f.sectionData(s.Index)[off : off+uint64(n)], true
}

// Phys translates a virtual address through the PT_LOAD segments.
func (k *Kernel) Phys(vaddr uint64) (uint64, bool) {
	for _, s := range k.Segments {
		if vaddr >= s.Vaddr && vaddr-s.Vaddr < s.Memsz {
			return s.Paddr + (vaddr - s.Vaddr), true
		}
	}
	return 0, false
}

// mcountTable finds the __mcount_loc array: the range between the
// __start_mcount_loc and __stop_mcount_loc symbols (Linux's vmlinux, and
// ours), else a section named __mcount_loc.
func (k *Kernel) mcountTable() ([]byte, string) {
	start, e1 := k.LookupGlobal("__start_mcount_loc")
	stop, e2 := k.LookupGlobal("__stop_mcount_loc")
	if e1 == nil && e2 == nil && stop.Value >= start.Value {
		n := stop.Value - start.Value
		if n > uint64(len(k.f.data)) {
			return nil, "__start_mcount_loc..__stop_mcount_loc (outside the image)"
		}
		if n == 0 {
			return nil, "__start_mcount_loc..__stop_mcount_loc (empty)"
		}
		b, ok := k.ReadVA(start.Value, int(n))
		if !ok {
			return nil, "__start_mcount_loc..__stop_mcount_loc (outside the image)"
		}
		return b, "__start_mcount_loc..__stop_mcount_loc"
	}
	for i := range k.f.sections {
		if k.f.sections[i].Name == "__mcount_loc" {
			return k.f.sectionData(i), "section __mcount_loc"
		}
	}
	return nil, ""
}

// findSites reads __mcount_loc and cross-checks every entry against the
// code: it must lie in a function, hold a 5-byte NOP (decoded with x86asm,
// so it is a real instruction) or a call to __fentry__.
func (k *Kernel) findSites() {
	table, where := k.mcountTable()
	k.mcountWhere = where
	n := len(table) / 8
	k.sites = make([]Site, 0, n)
	fentry, ferr := k.LookupGlobal("__fentry__")
	for i := 0; i < n; i++ {
		addr := le.Uint64(table[i*8:])
		if addr == 0 {
			continue // entries of discarded sections (Linux zeroes them)
		}
		code, ok := k.ReadVA(addr, FentrySize)
		if !ok {
			k.siteProblems = append(k.siteProblems, SiteProblem{addr, "address outside the kernel's text"})
			continue
		}
		fn, off, ok := k.addr2sym(addr, true)
		if !ok {
			k.siteProblems = append(k.siteProblems, SiteProblem{addr, "not inside any function symbol"})
			continue
		}
		s := Site{Addr: addr, Func: fn.Name, FuncAddr: fn.Value, Offset: off}
		copy(s.Bytes[:], code)
		var window []byte
		if w, ok := k.ReadVA(addr, 15); ok {
			window = w
		} else {
			window = code
		}
		inst, err := x86asm.Decode(window, 64)
		switch {
		case err == nil && inst.Op == x86asm.NOP && inst.Len == FentrySize:
			s.Kind = SiteNop5
		case code[0] == 0xe8:
			target := addr + FentrySize + uint64(int64(int32(le.Uint32(code[1:]))))
			if ferr == nil && target == fentry.Value {
				s.Kind = SiteCall
			} else {
				k.siteProblems = append(k.siteProblems, SiteProblem{addr, fmt.Sprintf("call to %#x, not __fentry__", target)})
				continue
			}
		default:
			k.siteProblems = append(k.siteProblems, SiteProblem{addr, fmt.Sprintf("bytes % x are not a 5-byte NOP", code)})
			continue
		}
		k.sites = append(k.sites, s)
	}
	slices.SortFunc(k.siteProblems, func(a, b SiteProblem) int { return cmp.Compare(a.Addr, b.Addr) })
	slices.SortFunc(k.sites, func(a, b Site) int { return cmp.Compare(a.Addr, b.Addr) })
	k.sites = slices.CompactFunc(k.sites, func(a, b Site) bool { return a.Addr == b.Addr })
}

// FentrySites returns the checked fentry sites, sorted by address.
func (k *Kernel) FentrySites() []Site { return k.sites }

// SiteProblems returns the __mcount_loc entries that failed the cross-check.
func (k *Kernel) SiteProblems() []SiteProblem { return k.siteProblems }

// McountSource says where the fentry table was found ("" if nowhere).
func (k *Kernel) McountSource() string { return k.mcountWhere }

// siteIn returns the first fentry site in [lo, hi).
func (k *Kernel) siteIn(lo, hi uint64) *Site {
	i, _ := slices.BinarySearchFunc(k.sites, lo, func(s Site, a uint64) int { return cmp.Compare(s.Addr, a) })
	if i < len(k.sites) && k.sites[i].Addr < hi {
		return &k.sites[i]
	}
	return nil
}

// cloneSuffixes are gcc's (and clang's) names for partial copies of a
// function: patching one leaves the other copies running the old code.
var cloneSuffixes = []string{".cold", ".part.", ".isra.", ".constprop.", ".lto_priv.", ".llvm.", ".specialized."}

// CloneKind returns the clone suffix in a function name (".isra", ...),
// or "" for an ordinary name.
func CloneKind(name string) string {
	for _, suf := range cloneSuffixes {
		if i := strings.Index(name, suf); i > 0 {
			return strings.TrimSuffix(suf, ".")
		}
	}
	return ""
}

// checkFunc decides whether sym can be patched.
func (k *Kernel) checkFunc(sym Symbol) FuncInfo {
	fi := FuncInfo{Symbol: sym}
	fi.Sympos, _ = k.Sympos(sym.Index)
	no := func(kind, format string, args ...any) FuncInfo {
		fi.ReasonKind, fi.Reason = kind, fmt.Sprintf(format, args...)
		return fi
	}
	if sym.Type != TypeFunc {
		return no(ReasonNotFunc, "%s is not a function (symbol type %s)", sym.Name, sym.Type)
	}
	if c := CloneKind(sym.Name); c != "" {
		return no(ReasonClone, "%s is a compiler-generated %s clone: only part of the original's callers use it; patch the original function or its callers", sym.Name, c)
	}
	if sym.Section <= 0 || sym.Section >= len(k.f.sections) || !k.f.sections[sym.Section].Exec() {
		return no(ReasonNotText, "%s is not in an executable section", sym.Name)
	}
	if sym.Size == 0 {
		return no(ReasonEmptyFunc, "%s has size 0 (an asm label without .size?)", sym.Name)
	}
	site := k.siteIn(sym.Value, sym.Value+sym.Size)
	if site == nil {
		// siteProblems is sorted by address: a binary search keeps a
		// hostile image with many bad entries linear overall.
		i, _ := slices.BinarySearchFunc(k.siteProblems, sym.Value, func(p SiteProblem, a uint64) int { return cmp.Compare(p.Addr, a) })
		if i < len(k.siteProblems) {
			if p := k.siteProblems[i]; p.Addr-sym.Value < sym.Size {
				return no(ReasonBadSite, "%s: __mcount_loc entry at %#x: %s", sym.Name, p.Addr, p.Reason)
			}
		}
		return no(ReasonNoSite, "%s has no fentry site (notrace, asm, or not built with -mfentry -mrecord-mcount)", sym.Name)
	}
	switch {
	case site.Addr == sym.Value:
	case site.Addr == sym.Value+uint64(len(endbr64)) && k.startsWithEndbr(sym.Value):
		// IBT kernels: fentry follows the function's endbr64.
	default:
		return no(ReasonSiteLate, "%s: fentry site at +%#x, not at the function's entry", sym.Name, site.Addr-sym.Value)
	}
	fi.Site = site
	return fi
}

func (k *Kernel) startsWithEndbr(addr uint64) bool {
	b, ok := k.ReadVA(addr, len(endbr64))
	return ok && bytes.Equal(b, endbr64)
}

// Patchable looks the function up (Lookup's sympos semantics) and returns
// its fentry site, or an error of kind ErrUnresolved, ErrAmbiguous or
// ErrNotPatchable that says why not.
func (k *Kernel) Patchable(name string, sympos int) (Site, error) {
	sym, err := k.Lookup(name, sympos)
	if err != nil {
		return Site{}, err
	}
	fi := k.checkFunc(sym)
	if !fi.Patchable() {
		return Site{}, &Error{Op: "patchable", Symbol: name, Kind: ErrNotPatchable, Detail: fmt.Sprintf("%s", fi.Reason)}
	}
	return *fi.Site, nil
}

// Functions returns the patchability of every function symbol defined in
// the kernel, in address order.
func (k *Kernel) Functions() []FuncInfo {
	var out []FuncInfo
	for _, idx := range k.byAddr {
		s := k.f.symbols[idx]
		if s.Type == TypeFunc {
			out = append(out, k.checkFunc(s))
		}
	}
	return out
}
