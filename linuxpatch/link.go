package linuxpatch

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"klp-kvm/elfpatch"
)

// Resolver gives the guest address of a symbol of object obj ("vmlinux"
// or a module's name). sympos 0 means the name must be unique in obj;
// n > 0 is the n-th symbol of that name in kallsyms order (Linux's
// klp_find_object_symbol). A symbol that does not exist is an error
// matching ErrNotFound.
type Resolver func(obj, name string, sympos int) (uint64, error)

// Prot is what the guest may do with a placed region.
type Prot uint8

const (
	ProtRead  Prot = iota // read-only data
	ProtExec              // code: read + execute
	ProtWrite             // data: read + write
)

func (p Prot) String() string {
	switch p {
	case ProtRead:
		return "r--"
	case ProtExec:
		return "r-x"
	case ProtWrite:
		return "rw-"
	}
	return "Prot(" + strconv.Itoa(int(p)) + ")"
}

// MarshalText renders a Prot as its String ("r-x") in JSON.
func (p Prot) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// PageSize is the granularity of protections: each region starts on a
// page of its own.
const PageSize = 4096

// Config is how Link places and resolves a module.
type Config struct {
	// Base is where the regions go, one after another (text, read-only,
	// writable), each on a fresh page; it must be page-aligned. Unused
	// when Alloc is set.
	Base uint64
	// Alloc, when set, places each non-empty region itself: it returns a
	// page-aligned guest address for size bytes with the given
	// protection.
	Alloc func(prot Prot, size uint64) (uint64, error)
	// Resolve finds the guest's symbols (required).
	Resolve Resolver
	// KernelRelease, when set, must be the release vermagic names (the
	// guest's `uname -r`, e.g. "6.1.0-57-amd64", or its linux_banner).
	KernelRelease string
	// Exported, when set, is the kernel's export table: a plain undefined
	// symbol must be in it, as Linux's loader resolves those among
	// exports only (a module reaches other symbols through .klp.sym).
	// VmlinuxExports reads it from kallsyms.
	Exported func(name string) bool
	// ReturnThunk, when set, is the return thunk the guest kernel chose
	// (the value of its x86_return_thunk, where the retbleed/SRSO
	// mitigations put e.g. srso_return_thunk): the module's
	// "jmp __x86_return_thunk" returns jump there instead, as
	// apply_returns would make them. 0: __x86_return_thunk as built (a
	// plain return in 6.1, valid, but without the CPU's mitigation).
	ReturnThunk uint64
	// PlainReturns: the guest kernel runs without X86_FEATURE_RETHUNK
	// (its CPU needs no return thunk, e.g. /sys/devices/system/cpu/
	// vulnerabilities/retbleed and spec_rstack_overflow say "Not
	// affected"): each return listed in .return_sites becomes
	// "ret; int3; int3; int3; int3", as apply_returns makes it. Not with
	// ReturnThunk.
	PlainReturns bool
	// Loaded, when set, says which module objects the guest has loaded.
	// As in Linux, the .klp.rela sections of an object that is not loaded
	// are left unapplied (their places stay zero) and its functions must
	// not be redirected (ImageObject.Loaded false); Linux would apply them
	// when the module loads. nil: every object counts as loaded, and the
	// resolver decides. vmlinux is always loaded.
	Loaded func(obj string) bool
}

// Region is a run of placed sections with one protection: Bytes go to
// Addr in guest memory as they are.
type Region struct {
	Prot  Prot   `json:"prot"`
	Addr  uint64 `json:"addr"`
	Bytes []byte `json:"-"`
	Size  uint64 `json:"size"`
}

// PlacedSection is a section of the module in the guest.
type PlacedSection struct {
	Name string `json:"name"`
	Addr uint64 `json:"addr"`
	Size uint64 `json:"size"`
	Prot Prot   `json:"prot"`
	// Zeroed: the section's contents were not copied (the struct module).
	Zeroed bool `json:"zeroed,omitempty"`
}

// PatchFunc is a function to redirect: the old one, named as the guest's
// livepatch core would look it up, and the new one's guest address.
type PatchFunc struct {
	Object    string `json:"object"`
	OldName   string `json:"old_name"`
	OldSympos int    `json:"old_sympos"`
	NewAddr   uint64 `json:"new_addr"`
	NewSize   uint64 `json:"new_size"` // 0 if no function symbol starts at NewAddr
	NewName   string `json:"new_name,omitempty"`
}

// ImageSym is a function of the module in the guest: what a stack walk
// that meets the module's code names it by.
type ImageSym struct {
	Name string `json:"name"`
	Addr uint64 `json:"addr"`
	Size uint64 `json:"size"`
}

// ImageObject is a klp_object of the placed module.
type ImageObject struct {
	Name string `json:"name"`
	Addr uint64 `json:"addr"` // its struct klp_object (the callbacks' argument)
	// Loaded: its .klp.rela sections were applied (Config.Loaded).
	Loaded bool `json:"loaded"`
	// Callbacks are the pre_patch, post_patch, pre_unpatch, post_unpatch
	// functions' addresses (0: none). Linux runs them in the guest; the
	// caller decides what to do with them.
	Callbacks [4]uint64   `json:"callbacks"`
	Funcs     []PatchFunc `json:"funcs"`
}

// ImageState is a klp_state of the placed module.
type ImageState struct {
	ID      uint64 `json:"id"`
	Version uint32 `json:"version"`
}

// Reloc is one relocation as applied.
type Reloc struct {
	Section string `json:"section"`
	Offset  uint64 `json:"offset"`
	Place   uint64 `json:"place"`
	Type    string `json:"type"`
	Symbol  string `json:"symbol"`
	Addend  int64  `json:"addend"`
	Target  uint64 `json:"target"` // S
	Value   uint64 `json:"value"`  // what was written
	Source  string `json:"source"` // "module", "vmlinux" (plain), "klp" (.klp.sym), "abs", "weak"
}

// ORC is where the module's ORC unwind tables went (0: none): the guest's
// unwinder will not know them (the module is in no module list); a host
// unwinder can.
type ORC struct {
	UnwindIP uint64 `json:"unwind_ip"`
	Unwind   uint64 `json:"unwind"`
	Entries  int    `json:"entries"`
}

// Image is a module placed at guest addresses with every relocation
// applied and every fentry call made a NOP.
type Image struct {
	Module      string          `json:"module"`
	Vermagic    string          `json:"vermagic"`
	Replace     bool            `json:"replace"`
	PatchAddr   uint64          `json:"patch_addr"`  // struct klp_patch
	ThisModule  uint64          `json:"this_module"` // the zeroed struct module
	Regions     []Region        `json:"regions"`
	Sections    []PlacedSection `json:"sections"`
	Objects     []ImageObject   `json:"objects"`
	Funcs       []PatchFunc     `json:"funcs"` // every object's, in order
	States      []ImageState    `json:"states,omitempty"`
	FentrySites []uint64        `json:"fentry_sites"` // now 5-byte NOPs
	Functions   []ImageSym      `json:"functions"`    // the module's loaded functions, by address
	ORC         ORC             `json:"orc"`
	Relocs      []Reloc         `json:"relocs"`
	Skipped     []SectionUse    `json:"skipped"`
}

// FuncAt names the module function holding addr (for stack walks that
// meet the new code): its name and the offset into it.
func (im *Image) FuncAt(addr uint64) (name string, off uint64, ok bool) {
	i, _ := slices.BinarySearchFunc(im.Functions, addr+1, func(s ImageSym, a uint64) int { return cmp.Compare(s.Addr, a) })
	if i == 0 {
		return "", 0, false
	}
	s := im.Functions[i-1]
	if addr-s.Addr >= s.Size {
		return "", 0, false
	}
	return s.Name, addr - s.Addr, true
}

// Size is the total size of the regions (page-rounded each).
func (m *Module) Size() uint64 {
	var n uint64
	for _, s := range m.regionSizes() {
		n += roundUp(s, PageSize)
	}
	return n
}

func roundUp(v, a uint64) uint64 { return (v + a - 1) &^ (a - 1) }

func (m *Module) classProt(c class) (Prot, bool) {
	switch c {
	case classText:
		return ProtExec, true
	case classROData:
		return ProtRead, true
	case classData, classBSS, classThisModule:
		return ProtWrite, true
	}
	return 0, false
}

var regionOrder = [3]Prot{ProtExec, ProtRead, ProtWrite}

// sectionOrder lists the placed sections of one region in placement
// order: file order, with zero-filled ones last in the writable region.
func (m *Module) sectionOrder(p Prot) []int {
	var out, bss []int
	for i, c := range m.classes {
		if cp, ok := m.classProt(c); ok && cp == p {
			if c == classBSS {
				bss = append(bss, i)
			} else {
				out = append(out, i)
			}
		}
	}
	return append(out, bss...)
}

func (m *Module) sectionAlign(i int) uint64 {
	a := m.obj.Sections()[i].Align
	if a == 0 {
		return 1
	}
	return a
}

func (m *Module) regionSizes() [3]uint64 {
	var sizes [3]uint64
	for k, p := range regionOrder {
		var n uint64
		for _, i := range m.sectionOrder(p) {
			n = roundUp(n, m.sectionAlign(i)) + m.obj.Sections()[i].Size
		}
		sizes[k] = n
	}
	return sizes
}

type linker struct {
	m     *Module
	cfg   Config
	im    *Image
	addr  []uint64 // per section: its guest address (placed ones)
	bytes [][]byte // per section: its bytes in the image
	cache map[int]resolvedSym
}

type resolvedSym struct {
	v      uint64
	source string
	err    error
}

// Link places the module and applies its relocations: what Linux's module
// loader and livepatch core do between reading a .ko and calling its
// init, minus everything that needs the guest (see doc.go). The first
// problem is returned as an *Error naming the section, offset and symbol.
func (m *Module) Link(cfg Config) (*Image, error) {
	if cfg.Resolve == nil {
		return nil, errf("link", ErrSymbol, "no resolver")
	}
	if cfg.PlainReturns && cfg.ReturnThunk != 0 {
		return nil, errf("link", ErrRange, "PlainReturns and ReturnThunk both set: a kernel either has a return thunk or not")
	}
	if err := m.CheckRelease(cfg.KernelRelease); err != nil {
		return nil, err
	}
	lk := &linker{m: m, cfg: cfg, addr: make([]uint64, len(m.classes)), bytes: make([][]byte, len(m.classes)), cache: map[int]resolvedSym{}}
	lk.im = &Image{Module: m.Name, Vermagic: m.Vermagic, Replace: m.Replace}
	if err := lk.place(); err != nil {
		return nil, err
	}
	if err := lk.relocate(); err != nil {
		return nil, err
	}
	lk.nopFentry()
	if cfg.PlainReturns {
		for _, r := range m.returns {
			copy(lk.bytes[r.Section][r.Offset:], []byte{0xc3, 0xcc, 0xcc, 0xcc, 0xcc})
		}
	}
	lk.describe()
	return lk.im, nil
}

// CheckRelease compares vermagic's release with the kernel's: release
// is `uname -r` ("6.1.0-57-amd64") or the linux_banner ("Linux version
// 6.1.0-57-amd64 (...) ..."); "" checks nothing.
func (m *Module) CheckRelease(release string) error {
	if release == "" {
		return nil
	}
	if rest, ok := strings.CutPrefix(release, "Linux version "); ok {
		release = rest
	}
	release, _, _ = strings.Cut(strings.TrimSpace(release), " ")
	if got := m.Release(); got != release {
		return errf("modinfo", ErrVersion, "the module was built for %q (vermagic %q), the kernel is %q", got, strings.TrimSpace(m.Vermagic), release).sym("vermagic").errno(syscall.ENOEXEC)
	}
	return nil
}

func (lk *linker) place() error {
	m := lk.m
	sizes := m.regionSizes()
	next := lk.cfg.Base
	if lk.cfg.Alloc == nil && next%PageSize != 0 {
		return errf("layout", ErrRange, "base %#x is not page-aligned", next)
	}
	for k, p := range regionOrder {
		if sizes[k] == 0 {
			continue
		}
		var base uint64
		if lk.cfg.Alloc != nil {
			a, err := lk.cfg.Alloc(p, sizes[k])
			if err != nil {
				return &Error{Op: "layout", Kind: ErrRange, Detail: fmt.Sprintf("allocating %d bytes %s", sizes[k], p), Err: err}
			}
			if a%PageSize != 0 {
				return errf("layout", ErrRange, "the allocator gave %#x for %s, not page-aligned", a, p)
			}
			base = a
		} else {
			base = next
			next += roundUp(sizes[k], PageSize)
		}
		if base+sizes[k] < base || (lk.cfg.Alloc == nil && next < base) {
			return errf("layout", ErrRange, "%s region at %#x + %#x wraps the address space", p, base, sizes[k])
		}
		reg := Region{Prot: p, Addr: base, Bytes: make([]byte, sizes[k]), Size: sizes[k]}
		var off uint64
		for _, i := range m.sectionOrder(p) {
			s := &m.obj.Sections()[i]
			off = roundUp(off, m.sectionAlign(i))
			lk.addr[i] = base + off
			lk.bytes[i] = reg.Bytes[off : off+s.Size : off+s.Size]
			zeroed := m.classes[i] == classThisModule
			if !zeroed {
				copy(lk.bytes[i], m.obj.SectionData(i)) // nil for NOBITS: stays zero
			}
			lk.im.Sections = append(lk.im.Sections, PlacedSection{Name: s.Name, Addr: base + off, Size: s.Size, Prot: p, Zeroed: zeroed})
			if zeroed {
				lk.im.ThisModule = base + off
			}
			off += s.Size
		}
		lk.im.Regions = append(lk.im.Regions, reg)
	}
	return nil
}

// relocate applies the relocations of every placed section, normal and
// .klp.rela alike, in section then offset order.
func (lk *linker) relocate() error {
	m := lk.m
	for t := range m.classes {
		if !m.placed(t) || m.classes[t] == classThisModule {
			continue // the struct module's own relocations (init/exit) are dropped with its contents
		}
		list := m.obj.Relocs(t)
		if len(list) > 0 && m.classes[t] == classBSS {
			return errf("relocate", ErrFormat, "relocations against a zero-filled section").at(m.secName(t), list[0].Offset).errno(syscall.ENOEXEC)
		}
		for _, r := range list {
			if err := lk.apply(t, r); err != nil {
				return err
			}
		}
	}
	return nil
}

func (lk *linker) apply(t int, r relocK) error {
	m := lk.m
	name := m.symName(r.Symbol)
	secName := m.secName(t)
	klpObj, klp := m.isKlpRela[r.RelaSection]
	fail := func(kind error, format string, args ...any) error {
		return errf("relocate", kind, format, args...).at(secName, r.Offset).sym(name).errno(syscall.ENOEXEC)
	}
	if lk.cfg.PlainReturns && m.returnRel[relKey{t, r.Offset}] && !klp {
		return nil // the jmp becomes a ret
	}
	if m.fentryRel[relKey{t, r.Offset}] && !klp {
		return nil // the call becomes a NOP
	}
	if klp && !lk.loaded(klpObj) {
		return nil // applied by Linux when that module loads; here never
	}
	var width uint64
	switch r.Type {
	case elfpatch.R_X86_64_NONE:
		return nil
	case elfpatch.R_X86_64_64, rX86_64_PC64:
		width = 8
	case elfpatch.R_X86_64_32, elfpatch.R_X86_64_32S, elfpatch.R_X86_64_PC32, elfpatch.R_X86_64_PLT32:
		width = 4
	default:
		return fail(ErrUnsupported, "relocation type %s (%d): Linux's x86-64 module loader implements R_X86_64_64, 32, 32S, PC32, PLT32 and PC64 only", elfpatch.RelocTypeName(r.Type), r.Type)
	}
	b := lk.bytes[t]
	if r.Offset > uint64(len(b)) || uint64(len(b))-r.Offset < width {
		return fail(ErrFormat, "%d-byte relocation runs past the end of the section", width)
	}
	loc := b[r.Offset : r.Offset+width]
	for _, x := range loc {
		if x != 0 {
			// Linux: "Skipping invalid relocation target, existing value
			// is nonzero".
			return fail(ErrFormat, "%s over a nonzero value % x", elfpatch.RelocTypeName(r.Type), loc)
		}
	}
	res := lk.resolve(r.Symbol, klp, klpObj)
	if res.err != nil {
		var e *Error
		if errors.As(res.err, &e) && e.Section == "" {
			e.Section, e.Offset = secName, r.Offset
			if e.Symbol == "" {
				e.Symbol = name
			}
			return e
		}
		return &Error{Op: "relocate", Kind: ErrSymbol, Err: res.err, Section: secName, Offset: r.Offset, Symbol: name, Errno: syscall.ENOENT}
	}
	S, A, P := res.v, uint64(r.Addend), lk.addr[t]+r.Offset
	var v uint64
	switch r.Type {
	case elfpatch.R_X86_64_64:
		v = S + A
	case rX86_64_PC64:
		v = S + A - P
	case elfpatch.R_X86_64_32:
		v = S + A
		if v > math.MaxUint32 {
			return fail(ErrRange, "R_X86_64_32: %#x does not zero-extend from 32 bits", v)
		}
	case elfpatch.R_X86_64_32S:
		v = S + A
		if int64(v) != int64(int32(v)) {
			return fail(ErrRange, "R_X86_64_32S: %#x does not sign-extend from 32 bits", v)
		}
	case elfpatch.R_X86_64_PC32, elfpatch.R_X86_64_PLT32:
		v = S + A - P
		if int64(v) != int64(int32(v)) {
			return fail(ErrRange, "%s: %#x is %d bytes from %#x, beyond ±2 GiB", elfpatch.RelocTypeName(r.Type), S+A, int64(v), P)
		}
	}
	for i := range loc {
		loc[i] = byte(v >> (8 * i))
	}
	if width == 4 {
		v &= math.MaxUint32
	}
	lk.im.Relocs = append(lk.im.Relocs, Reloc{Section: secName, Offset: r.Offset, Place: P, Type: elfpatch.RelocTypeName(r.Type),
		Symbol: name, Addend: r.Addend, Target: S, Value: v, Source: res.source})
	return nil
}

const rX86_64_PC64 = 24

func (lk *linker) loaded(obj string) bool {
	return obj == VmlinuxObject || lk.cfg.Loaded == nil || lk.cfg.Loaded(obj)
}

// resolve gives a relocation symbol's address S: Linux's simplify_symbols
// for normal relocations, klp_resolve_symbols for .klp.rela ones.
func (lk *linker) resolve(idx int, klp bool, secObj string) resolvedSym {
	key := idx
	if klp {
		key = -idx - 1 // the same symbol may be read both ways; the answers differ
	}
	if r, ok := lk.cache[key]; ok {
		return r
	}
	r := lk.resolveUncached(idx, klp, secObj)
	lk.cache[key] = r
	return r
}

func (lk *linker) resolveUncached(idx int, klp bool, secObj string) resolvedSym {
	m := lk.m
	s := &m.obj.Symbols()[idx]
	bad := func(kind error, format string, args ...any) resolvedSym {
		return resolvedSym{err: errf("relocate", kind, format, args...).errno(syscall.EINVAL)}
	}
	if klp {
		// klp_resolve_symbols: every symbol of a .klp.rela section is a
		// SHN_LIVEPATCH .klp.sym.<object>.<name>,<sympos>.
		if s.Section != shnLivepatch {
			return bad(ErrSymbol, "symbol in a .klp.rela section is not marked as a livepatch symbol (SHN_LIVEPATCH)")
		}
		obj, name, pos, err := parseKlpSym(s.Name)
		if err != nil {
			return resolvedSym{err: err}
		}
		if secObj != VmlinuxObject && obj == VmlinuxObject {
			return bad(ErrSymbol, "invalid access to vmlinux symbol %q from the module-specific section for %s", name, secObj)
		}
		v, rerr := lk.cfg.Resolve(obj, name, pos)
		if rerr != nil {
			return resolvedSym{err: &Error{Op: "relocate", Kind: ErrSymbol, Detail: fmt.Sprintf("%s in %s, sympos %d", name, obj, pos), Err: rerr, Errno: syscall.ENOENT}}
		}
		return resolvedSym{v: v, source: "klp"}
	}
	switch {
	case idx == 0:
		return resolvedSym{v: 0, source: "abs"}
	case s.Section == shnLivepatch:
		return bad(ErrSymbol, "livepatch symbol used outside a .klp.rela section")
	case s.Section == shnAbs:
		return resolvedSym{v: s.Value, source: "abs"}
	case s.Section == shnCommon:
		return bad(ErrFormat, "common symbol (build with -fno-common)")
	case s.Section > 0 && s.Section < len(m.classes):
		if !m.placed(s.Section) {
			_, why := classify(&m.obj.Sections()[s.Section])
			return bad(ErrUnsupported, "refers to section %s, which is not loaded (%s)", m.secName(s.Section), why)
		}
		return resolvedSym{v: lk.addr[s.Section] + s.Value, source: "module"}
	case s.Section != shnUndef:
		return bad(ErrFormat, "symbol in reserved section %#x", s.Section)
	}
	if strings.HasPrefix(s.Name, ".klp.sym.") {
		return bad(ErrSymbol, "undefined .klp.sym symbol used outside a .klp.rela section")
	}
	if s.Name == "__x86_return_thunk" && lk.cfg.ReturnThunk != 0 {
		return resolvedSym{v: lk.cfg.ReturnThunk, source: VmlinuxObject}
	}
	if lk.cfg.Exported != nil && !lk.cfg.Exported(s.Name) {
		if s.Bind == elfpatch.BindWeak {
			return resolvedSym{v: 0, source: "weak"}
		}
		return resolvedSym{err: &Error{Op: "relocate", Kind: ErrSymbol, Errno: syscall.ENOENT,
			Detail: "not exported by the kernel: Linux's loader would refuse it (a .klp.sym relocation reaches unexported symbols)"}}
	}
	v, err := lk.cfg.Resolve(VmlinuxObject, s.Name, 0)
	if err != nil {
		if s.Bind == elfpatch.BindWeak && errors.Is(err, ErrNotFound) {
			return resolvedSym{v: 0, source: "weak"}
		}
		return resolvedSym{err: &Error{Op: "relocate", Kind: ErrSymbol, Detail: "unknown symbol", Err: err, Errno: syscall.ENOENT}}
	}
	return resolvedSym{v: v, source: VmlinuxObject}
}

// parseKlpSym reads ".klp.sym.<object>.<name>,<sympos>" as Linux's
// sscanf(".klp.sym.%55[^.].%511[^,],%lu") does, more strictly: the whole
// name must match and sympos is decimal digits.
func parseKlpSym(s string) (obj, name string, pos int, err error) {
	bad := func(why string) error {
		return errf("relocate", ErrSymbol, "%q: incorrectly formatted .klp.sym.<object>.<name>,<sympos> name: %s", s, why).errno(syscall.EINVAL)
	}
	rest, ok := strings.CutPrefix(s, ".klp.sym.")
	if !ok {
		return "", "", 0, bad("no .klp.sym. prefix")
	}
	obj, rest, ok = strings.Cut(rest, ".")
	if !ok || obj == "" || len(obj) >= moduleNameLn {
		return "", "", 0, bad(fmt.Sprintf("object name of 1..%d characters", moduleNameLn-1))
	}
	comma := strings.LastIndexByte(rest, ',')
	if comma <= 0 || comma >= ksymNameLen || strings.IndexByte(rest[:comma], ',') >= 0 {
		return "", "", 0, bad(fmt.Sprintf("symbol name of 1..%d characters", ksymNameLen-1))
	}
	digits := rest[comma+1:]
	n, perr := strconv.ParseUint(digits, 10, 32)
	if perr != nil || digits == "" || digits[0] == '+' || n > maxSympos {
		return "", "", 0, bad("sympos")
	}
	return obj, rest[:comma], int(n), nil
}

// nopFentry makes every call to __fentry__ a 5-byte NOP (0f 1f 44 00
// 00, the kernel's x86_nops[5]), as ftrace_module_init does before a
// module runs.
func (lk *linker) nopFentry() {
	for _, s := range lk.m.fentry {
		copy(lk.bytes[s.Section][s.Offset:], nop5[:])
		lk.im.FentrySites = append(lk.im.FentrySites, lk.addr[s.Section]+s.Offset)
	}
}

var nop5 = [5]byte{0x0f, 0x1f, 0x44, 0x00, 0x00}

// describe fills in the klp structures' addresses and the ORC tables.
func (lk *linker) describe() {
	m, im := lk.m, lk.im
	at := func(l Loc) uint64 { return lk.addr[l.Section] + l.Offset }
	im.PatchAddr = at(m.Patch)
	for _, o := range m.Objects {
		io := ImageObject{Name: o.Name, Addr: at(o.Loc), Funcs: []PatchFunc{}, Loaded: lk.loaded(o.Name)}
		for k, cb := range o.Callbacks {
			if cb != nil {
				io.Callbacks[k] = at(*cb)
			}
		}
		for _, f := range o.Funcs {
			pf := PatchFunc{Object: o.Name, OldName: f.OldName, OldSympos: f.OldSympos, NewAddr: at(f.NewFunc), NewSize: f.NewSize, NewName: f.NewFunc.Symbol}
			io.Funcs = append(io.Funcs, pf)
			im.Funcs = append(im.Funcs, pf)
		}
		im.Objects = append(im.Objects, io)
	}
	for _, s := range m.States {
		im.States = append(im.States, ImageState{ID: s.ID, Version: s.Version})
	}
	for _, s := range m.obj.Symbols() {
		if s.Type == elfpatch.TypeFunc && s.Name != "" && s.Section > 0 && s.Section < len(m.classes) &&
			m.classes[s.Section] == classText && m.names[relKey{s.Section, s.Value}] == s.Name {
			im.Functions = append(im.Functions, ImageSym{Name: s.Name, Addr: lk.addr[s.Section] + s.Value, Size: s.Size})
		}
	}
	slices.SortFunc(im.Functions, func(a, b ImageSym) int { return cmp.Compare(a.Addr, b.Addr) })
	for _, u := range m.Sections {
		if u.Use == "skipped" {
			im.Skipped = append(im.Skipped, u)
		}
	}
	for i := range m.classes {
		switch {
		case m.placed(i) && m.secName(i) == ".orc_unwind_ip":
			im.ORC.UnwindIP = lk.addr[i]
			im.ORC.Entries = int(m.obj.Sections()[i].Size / 4)
		case m.placed(i) && m.secName(i) == ".orc_unwind":
			im.ORC.Unwind = lk.addr[i]
		}
	}
	slices.SortStableFunc(im.Skipped, func(a, b SectionUse) int { return strings.Compare(a.Name, b.Name) })
}
