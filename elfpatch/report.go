package elfpatch

import (
	"cmp"
	"fmt"
	"io"
	"slices"
	"strings"
)

// Hex is an address in a report: JSON carries it as a "0x..." string,
// because kernel addresses do not survive a float64 (jq, JavaScript).
type Hex uint64

// MarshalJSON implements json.Marshaler.
func (h Hex) MarshalJSON() ([]byte, error) {
	return []byte(fmt.Sprintf("\"%#x\"", uint64(h))), nil
}

// ReportSite is a Site in a report.
type ReportSite struct {
	Addr   Hex    `json:"addr"`
	Func   string `json:"func,omitempty"`
	Offset uint64 `json:"offset"`
	Kind   string `json:"kind"`
}

func reportSite(s *Site) *ReportSite {
	if s == nil {
		return nil
	}
	return &ReportSite{Addr: Hex(s.Addr), Func: s.Func, Offset: s.Offset, Kind: s.Kind.String()}
}

// ReportSection is a PlacedSection in a report.
type ReportSection struct {
	Name  string `json:"name"`
	Addr  Hex    `json:"addr"`
	Size  uint64 `json:"size"`
	Align uint64 `json:"align"`
	Exec  bool   `json:"exec"`
	Write bool   `json:"write"`
}

// ReportReloc is a Reloc in a report.
type ReportReloc struct {
	Section  string `json:"section"`
	Offset   uint64 `json:"offset"`
	Place    Hex    `json:"place"`
	Type     string `json:"type"`
	Symbol   string `json:"symbol"`
	Addend   int64  `json:"addend"`
	Source   string `json:"source"`
	Resolved bool   `json:"resolved"`
	Target   Hex    `json:"target"`
	Value    Hex    `json:"value"`
	Width    int    `json:"width"`
}

// ReportSiteProblem is a SiteProblem in a report.
type ReportSiteProblem struct {
	Addr   Hex    `json:"addr"`
	Reason string `json:"reason"`
}

// KernelReport is what `klp-kvm inspect KERNEL` shows: the kernel's
// patchability summary and, on request, one symbol's details.
type KernelReport struct {
	Kind         string              `json:"kind"` // "kernel"
	Path         string              `json:"path,omitempty"`
	Entry        Hex                 `json:"entry"`
	Sections     int                 `json:"sections"`
	Symbols      int                 `json:"symbols"`
	Functions    int                 `json:"functions"`
	FentrySites  int                 `json:"fentry_sites"`
	McountSource string              `json:"mcount_source"`
	Patchable    int                 `json:"patchable"`
	NotPatchable []FuncEntry         `json:"not_patchable"`
	Reasons      []ReasonCount       `json:"reasons"`
	SiteProblems []ReportSiteProblem `json:"site_problems"`
	Symbol       *SymbolReport       `json:"symbol,omitempty"`
	Problems     []string            `json:"problems"`
}

// FuncEntry is one function of a report.
type FuncEntry struct {
	Name       string `json:"name"`
	Sympos     int    `json:"sympos"`
	Addr       Hex    `json:"addr"`
	Size       uint64 `json:"size"`
	ReasonKind string `json:"reason_kind,omitempty"`
	Reason     string `json:"reason,omitempty"`
}

// ReasonCount counts not-patchable functions by reason kind.
type ReasonCount struct {
	Kind  string `json:"kind"`
	Count int    `json:"count"`
}

// SymbolReport lists every symbol of one name, in sympos order.
type SymbolReport struct {
	Name    string        `json:"name"`
	Matches []SymbolMatch `json:"matches"`
}

// SymbolMatch is one symbol of a SymbolReport.
type SymbolMatch struct {
	Sympos    int         `json:"sympos"`
	Addr      Hex         `json:"addr"`
	Size      uint64      `json:"size"`
	Bind      string      `json:"bind"`
	Type      string      `json:"type"`
	Section   string      `json:"section"`
	Phys      Hex         `json:"phys,omitempty"`
	Patchable bool        `json:"patchable"`
	Reason    string      `json:"reason,omitempty"`
	Site      *ReportSite `json:"fentry_site,omitempty"`
}

// NewKernelReport summarises k; symbol, if not empty, adds its details.
func NewKernelReport(k *Kernel, symbol string) *KernelReport {
	r := &KernelReport{Kind: "kernel", Entry: Hex(k.Entry), Sections: len(k.Sections()),
		Symbols: len(k.byName), FentrySites: len(k.FentrySites()), McountSource: k.McountSource(),
		SiteProblems: []ReportSiteProblem{}, NotPatchable: []FuncEntry{}, Reasons: []ReasonCount{}, Problems: []string{}}
	for _, p := range k.SiteProblems() {
		r.SiteProblems = append(r.SiteProblems, ReportSiteProblem{Hex(p.Addr), p.Reason})
	}
	if r.McountSource == "" {
		r.Problems = append(r.Problems, "no __mcount_loc table: the kernel was not built with -mfentry -mrecord-mcount, nothing is patchable")
	}
	counts := map[string]int{}
	for _, fi := range k.Functions() {
		r.Functions++
		if fi.Patchable() {
			r.Patchable++
			continue
		}
		counts[fi.ReasonKind]++
		r.NotPatchable = append(r.NotPatchable, FuncEntry{Name: fi.Symbol.Name, Sympos: fi.Sympos,
			Addr: Hex(fi.Symbol.Value), Size: fi.Symbol.Size, ReasonKind: fi.ReasonKind, Reason: fi.Reason})
	}
	for kind, n := range counts {
		r.Reasons = append(r.Reasons, ReasonCount{kind, n})
	}
	slices.SortFunc(r.Reasons, func(a, b ReasonCount) int {
		if c := cmp.Compare(b.Count, a.Count); c != 0 {
			return c
		}
		return cmp.Compare(a.Kind, b.Kind)
	})
	for _, p := range r.SiteProblems {
		r.Problems = append(r.Problems, fmt.Sprintf("__mcount_loc entry %#x: %s", p.Addr, p.Reason))
	}
	if symbol != "" {
		r.Symbol = &SymbolReport{Name: symbol, Matches: []SymbolMatch{}}
		for i, s := range k.LookupAll(symbol) {
			m := SymbolMatch{Sympos: i + 1, Addr: Hex(s.Value), Size: s.Size, Bind: s.Bind.String(),
				Type: s.Type.String(), Section: k.SectionName(s.Section)}
			phys, _ := k.Phys(s.Value)
			m.Phys = Hex(phys)
			if s.Type == TypeFunc {
				fi := k.checkFunc(s)
				m.Patchable, m.Reason, m.Site = fi.Patchable(), fi.Reason, reportSite(fi.Site)
			} else {
				m.Reason = fmt.Sprintf("%s is not a function (symbol type %s)", s.Name, s.Type)
			}
			r.Symbol.Matches = append(r.Symbol.Matches, m)
		}
		if len(r.Symbol.Matches) == 0 {
			r.Problems = append(r.Problems, fmt.Sprintf("no symbol %q", symbol))
		}
	}
	return r
}

// OK reports whether the report found no problems.
func (r *KernelReport) OK() bool { return len(r.Problems) == 0 }

// WriteText prints the report for people.
func (r *KernelReport) WriteText(w io.Writer) error {
	var b strings.Builder
	if r.Path != "" {
		fmt.Fprintf(&b, "kernel: %s\n", r.Path)
	}
	fmt.Fprintf(&b, "entry %#x, %d sections, %d symbols\n", uint64(r.Entry), r.Sections, r.Symbols)
	src := r.McountSource
	if src == "" {
		src = "none"
	}
	fmt.Fprintf(&b, "fentry sites: %d (from %s), %d rejected\n", r.FentrySites, src, len(r.SiteProblems))
	fmt.Fprintf(&b, "functions: %d, patchable %d, not patchable %d\n", r.Functions, r.Patchable, len(r.NotPatchable))
	for _, rc := range r.Reasons {
		fmt.Fprintf(&b, "  %-26s %d\n", rc.Kind+":", rc.Count)
	}
	if len(r.NotPatchable) > 0 {
		b.WriteString("not patchable:\n")
		for _, f := range r.NotPatchable {
			fmt.Fprintf(&b, "  %#x %s (sympos %d): %s\n", uint64(f.Addr), f.Name, f.Sympos, f.Reason)
		}
	}
	if s := r.Symbol; s != nil {
		fmt.Fprintf(&b, "symbol %s: %d match(es)\n", s.Name, len(s.Matches))
		for _, m := range s.Matches {
			fmt.Fprintf(&b, "  sympos %d: %#x size %d %s %s in %s", m.Sympos, uint64(m.Addr), m.Size, m.Bind, m.Type, m.Section)
			if m.Phys != 0 {
				fmt.Fprintf(&b, " (phys %#x)", uint64(m.Phys))
			}
			if m.Patchable {
				fmt.Fprintf(&b, ": patchable, fentry site %#x (%s, +%d)\n", uint64(m.Site.Addr), m.Site.Kind, m.Site.Offset)
			} else {
				fmt.Fprintf(&b, ": not patchable: %s\n", m.Reason)
			}
		}
	}
	writeProblems(&b, r.Problems)
	_, err := io.WriteString(w, b.String())
	return err
}

func writeProblems(b *strings.Builder, problems []string) {
	if len(problems) == 0 {
		b.WriteString("problems: none\n")
		return
	}
	fmt.Fprintf(b, "problems (%d):\n", len(problems))
	for _, p := range problems {
		fmt.Fprintf(b, "  %s\n", p)
	}
}

// PatchReport is what `klp-kvm inspect PATCH.o` shows: the patch, its
// funcs resolved against a kernel, its layout and relocation plan, and
// every problem found.
type PatchReport struct {
	Kind        string          `json:"kind"` // "patch"
	Path        string          `json:"path,omitempty"`
	Kernel      string          `json:"kernel,omitempty"`
	Name        string          `json:"name"`
	NameSource  string          `json:"name_source"`
	Replace     bool            `json:"replace"`
	ABI         int             `json:"abi"`    // the layout of struct klp_patch (PatchABI1, PatchABI2); 0 if unparsed
	States      []ReportState   `json:"states"` // klp_patch.states
	Base        Hex             `json:"base"`
	Size        uint64          `json:"size"`
	Objects     []ReportObject  `json:"objects"`
	Sections    []ReportSection `json:"sections"`
	FentrySites []ReportSite    `json:"fentry_sites"`
	Relocs      []ReportReloc   `json:"relocs"`
	Problems    []string        `json:"problems"`
}

// ReportObject is one object of a PatchReport.
type ReportObject struct {
	Name      string         `json:"name"`
	Addr      Hex            `json:"addr"`
	Callbacks map[string]Hex `json:"callbacks,omitempty"`
	Funcs     []ReportFunc   `json:"funcs"`
}

// ReportState is one struct klp_state of a PatchReport.
type ReportState struct {
	ID      uint64 `json:"id"`
	Version uint32 `json:"version"`
	Addr    Hex    `json:"addr"`           // the struct klp_state in the layout
	Data    string `json:"data,omitempty"` // the data pointer's static initializer, if any
}

// ReportFunc is one func of a PatchReport; Old* are zero when unresolved.
type ReportFunc struct {
	OldName   string `json:"old_name"`
	OldSympos int    `json:"old_sympos"`
	OldAddr   Hex    `json:"old_addr"`
	OldSize   uint64 `json:"old_size"`
	Site      Hex    `json:"fentry_site"`
	NewFunc   string `json:"new_func"`
	NewAddr   Hex    `json:"new_addr"`
}

// NewPatchReport lays p out at base against k (nil: no kernel, so kernel
// symbols and old functions stay unresolved and are not problems).
func NewPatchReport(p *Patch, k *Kernel, base uint64) *PatchReport {
	r := &PatchReport{Kind: "patch", Name: p.Name, NameSource: p.NameSource, Replace: p.Replace, ABI: p.ABI, Base: Hex(base),
		States: []ReportState{}, Objects: []ReportObject{}, Sections: []ReportSection{}, FentrySites: []ReportSite{},
		Relocs: []ReportReloc{}, Problems: []string{}}
	im, errs := p.Check(base, k)
	for _, e := range errs {
		r.Problems = append(r.Problems, e.Error())
	}
	for i, st := range p.States {
		rs := ReportState{ID: st.ID, Version: st.Version}
		if st.Data != nil {
			rs.Data = st.Data.String()
		}
		if im != nil && i < len(im.States) {
			rs.Addr = Hex(im.States[i].Addr)
		}
		r.States = append(r.States, rs)
	}
	if im == nil {
		return r
	}
	r.Size = im.Size()
	for _, s := range im.Sections {
		if s.Size > 0 { // empty .text/.data/.bss take no room
			r.Sections = append(r.Sections, ReportSection{s.Name, Hex(s.Addr), s.Size, s.Align, s.Exec, s.Write})
		}
	}
	for i := range im.FentrySites {
		r.FentrySites = append(r.FentrySites, *reportSite(&im.FentrySites[i]))
	}
	for _, rl := range im.Relocs {
		r.Relocs = append(r.Relocs, ReportReloc{Section: rl.Section, Offset: rl.Offset, Place: Hex(rl.Place),
			Type: rl.TypeName, Symbol: rl.Symbol, Addend: rl.Addend, Source: rl.Source, Resolved: rl.Resolved,
			Target: Hex(rl.Target), Value: Hex(rl.Value), Width: rl.Width})
	}
	for oi, obj := range p.Objects {
		ro := ReportObject{Name: obj.Name, Funcs: []ReportFunc{}}
		var iobj *ImageObject
		if oi < len(im.Objects) {
			iobj = &im.Objects[oi]
			ro.Addr = Hex(iobj.Addr)
			for i, a := range iobj.Callbacks {
				if a != 0 {
					if ro.Callbacks == nil {
						ro.Callbacks = map[string]Hex{}
					}
					ro.Callbacks[CallbackNames[i]] = Hex(a)
				}
			}
		}
		for fi, fn := range obj.Funcs {
			rf := ReportFunc{OldName: fn.OldName, OldSympos: fn.OldSympos, NewFunc: fn.NewFunc.String()}
			if iobj != nil && fi < len(iobj.Funcs) {
				f := iobj.Funcs[fi]
				rf.OldAddr, rf.OldSize, rf.Site, rf.NewAddr = Hex(f.OldAddr), f.OldSize, Hex(f.Site.Addr), Hex(f.NewAddr)
			}
			ro.Funcs = append(ro.Funcs, rf)
		}
		r.Objects = append(r.Objects, ro)
	}
	return r
}

// PatchErrorReport is the report of a patch that could not be parsed.
func PatchErrorReport(err error) *PatchReport {
	return &PatchReport{Kind: "patch", States: []ReportState{}, Objects: []ReportObject{}, Sections: []ReportSection{},
		FentrySites: []ReportSite{}, Relocs: []ReportReloc{}, Problems: []string{err.Error()}}
}

// OK reports whether the report found no problems.
func (r *PatchReport) OK() bool { return len(r.Problems) == 0 }

// WriteText prints the report for people.
func (r *PatchReport) WriteText(w io.Writer) error {
	var b strings.Builder
	if r.Path != "" {
		fmt.Fprintf(&b, "patch object: %s\n", r.Path)
	}
	kern := r.Kernel
	if kern == "" {
		kern = "none (kernel symbols and old functions not resolved)"
	}
	fmt.Fprintf(&b, "kernel: %s\n", kern)
	if r.Name != "" || len(r.Objects) > 0 {
		src := r.NameSource
		if src == "" {
			src = "unnamed"
		}
		replace := "no"
		if r.Replace {
			replace = "yes (atomic replace)"
		}
		fmt.Fprintf(&b, "patch: %s (name from %s), replace: %s\n", r.Name, src, replace)
		fmt.Fprintf(&b, "layout: base %#x, size %#x (%d bytes), %d sections, %d fentry sites of its own\n",
			uint64(r.Base), r.Size, r.Size, len(r.Sections), len(r.FentrySites))
		switch {
		case r.ABI == PatchABI1:
			b.WriteString("states: none (struct klp_patch of layout 1, from before klp_state)\n")
		case len(r.States) == 0:
			b.WriteString("states: none\n")
		default:
			fmt.Fprintf(&b, "states: %d\n", len(r.States))
			for _, st := range r.States {
				fmt.Fprintf(&b, "  state %d version %d (klp_state at %#x)", st.ID, st.Version, uint64(st.Addr))
				if st.Data != "" {
					fmt.Fprintf(&b, ", data = %s", st.Data)
				}
				b.WriteString("\n")
			}
		}
	}
	for _, o := range r.Objects {
		fmt.Fprintf(&b, "object %s (klp_object at %#x), %d func(s)\n", o.Name, uint64(o.Addr), len(o.Funcs))
		for _, f := range o.Funcs {
			old := "unresolved"
			if f.OldAddr != 0 {
				old = fmt.Sprintf("%#x size %d fentry %#x", uint64(f.OldAddr), f.OldSize, uint64(f.Site))
			}
			fmt.Fprintf(&b, "  %s sympos %d: %s -> %s at %#x\n", f.OldName, f.OldSympos, old, f.NewFunc, uint64(f.NewAddr))
		}
		for _, n := range CallbackNames {
			if a, ok := o.Callbacks[n]; ok {
				fmt.Fprintf(&b, "  callback %s at %#x\n", n, uint64(a))
			}
		}
	}
	if len(r.Sections) > 0 {
		b.WriteString("sections:\n")
		for _, s := range r.Sections {
			attr := "r"
			if s.Write {
				attr += "w"
			}
			if s.Exec {
				attr += "x"
			}
			fmt.Fprintf(&b, "  %#x %#6x %-3s align %-4d %s\n", uint64(s.Addr), s.Size, attr, s.Align, s.Name)
		}
	}
	if len(r.Relocs) > 0 {
		fmt.Fprintf(&b, "relocations (%d):\n", len(r.Relocs))
		for _, rl := range r.Relocs {
			val := "unresolved"
			if rl.Resolved {
				val = fmt.Sprintf("S=%#x -> %#0*x", uint64(rl.Target), rl.Width*2, uint64(rl.Value))
			}
			fmt.Fprintf(&b, "  %s+%#x %-14s %s%+d [%s] %s\n", rl.Section, rl.Offset, rl.Type, rl.Symbol, rl.Addend, rl.Source, val)
		}
	}
	writeProblems(&b, r.Problems)
	_, err := io.WriteString(w, b.String())
	return err
}
