package patchbuild

import (
	"fmt"
	"io"
	"strings"
)

// Plan is what a build found and decided: `klp-kvm build --dry-run`
// prints it, --json gives it to scripts. A plan with Refused entries
// writes nothing.
type Plan struct {
	Name     string      `json:"name"`
	Src      string      `json:"src"`
	Kernel   string      `json:"kernel"`
	Files    []PlanFile  `json:"files"`
	Units    []string    `json:"units"` // translation units compiled before and after
	Changed  []PlanFunc  `json:"changed"`
	New      []PlanFunc  `json:"new"`
	Data     []PlanData  `json:"data"`
	Refused  []Problem   `json:"refused"`
	Warnings []Problem   `json:"warnings"`
	Notes    []string    `json:"notes"`
	Output   *PlanOutput `json:"output,omitempty"`
	Timing   PlanTiming  `json:"timing"`
}

// PlanFile is one file of the diff.
type PlanFile struct {
	Path  string `json:"path"` // relative to the source tree
	Kind  string `json:"kind"` // "modified", "new"
	Hunks int    `json:"hunks"`
}

// PlanFunc is a function of the patch: a changed kernel function (one
// klp_func each) or new code the changed ones call.
type PlanFunc struct {
	Name   string `json:"name"`
	Unit   string `json:"unit"`
	Sympos int    `json:"sympos,omitempty"` // old_sympos of a changed function
	Size   uint64 `json:"size"`
	Reason string `json:"reason"`
}

// PlanData is data the patch carries: a copy of read-only data whose
// content changed, or a new variable.
type PlanData struct {
	Name   string `json:"name"`
	Unit   string `json:"unit"`
	Size   uint64 `json:"size"`
	Reason string `json:"reason"`
}

// Problem is a refusal or a warning, naming the symbol and why.
type Problem struct {
	Symbol string `json:"symbol"`
	Unit   string `json:"unit,omitempty"`
	Kind   string `json:"kind"`
	Reason string `json:"reason"`
}

func (p Problem) String() string {
	var b strings.Builder
	b.WriteString(p.Symbol)
	if p.Unit != "" {
		fmt.Fprintf(&b, " (%s)", p.Unit)
	}
	fmt.Fprintf(&b, ": %s", p.Reason)
	return b.String()
}

// Problem kinds.
const (
	KindDataChanged   = "data-changed"  // a global or static variable's initializer or size changed
	KindNewGlobalData = "new-data-used" // new data used by code the patch does not replace
	KindStructLayout  = "struct-layout" // a struct or union's layout changed
	KindNoFentry      = "not-patchable" // a changed function without an fentry site (notrace, asm, ...)
	KindNeverReturns  = "never-returns" // warning: a task in it never leaves, the switch cannot complete
	KindNotInKernel   = "not-in-kernel" // a reference the kernel cannot resolve
	KindUnsupported   = "unsupported"   // a file or construct the builder does not handle
	KindNoChange      = "no-change"     // the diff changes no code
)

// PlanOutput is the written object.
type PlanOutput struct {
	Path   string `json:"path,omitempty"`
	Size   int    `json:"size"`
	SHA256 string `json:"sha256"`
}

// PlanTiming is where the time went, in milliseconds.
type PlanTiming struct {
	CompileMS int64 `json:"compile_ms"`
	TotalMS   int64 `json:"total_ms"`
}

// OK reports whether the plan can be built.
func (p *Plan) OK() bool { return len(p.Refused) == 0 }

func (p *Plan) refuse(kind, unit, sym, format string, args ...any) {
	p.Refused = append(p.Refused, Problem{Symbol: sym, Unit: unit, Kind: kind, Reason: fmt.Sprintf(format, args...)})
}

func (p *Plan) warn(kind, unit, sym, format string, args ...any) {
	p.Warnings = append(p.Warnings, Problem{Symbol: sym, Unit: unit, Kind: kind, Reason: fmt.Sprintf(format, args...)})
}

// WriteText prints the plan for people.
func (p *Plan) WriteText(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "patch %s\n", p.Name)
	fmt.Fprintf(&b, "  source: %s\n  kernel: %s\n", p.Src, p.Kernel)
	for _, f := range p.Files {
		fmt.Fprintf(&b, "  file %s (%s, %d hunks)\n", f.Path, f.Kind, f.Hunks)
	}
	if len(p.Units) > 0 {
		fmt.Fprintf(&b, "  compiled before and after: %s\n", strings.Join(p.Units, " "))
	}
	section := func(title string, n int) {
		if n > 0 {
			fmt.Fprintf(&b, "%s (%d):\n", title, n)
		}
	}
	section("changed functions, each redirected by a klp_func", len(p.Changed))
	for _, f := range p.Changed {
		pos := ""
		if f.Sympos > 0 {
			pos = fmt.Sprintf(",%d", f.Sympos)
		}
		fmt.Fprintf(&b, "  %s%s (%s, %d bytes): %s\n", f.Name, pos, f.Unit, f.Size, f.Reason)
	}
	section("new functions carried by the patch", len(p.New))
	for _, f := range p.New {
		fmt.Fprintf(&b, "  %s (%s, %d bytes): %s\n", f.Name, f.Unit, f.Size, f.Reason)
	}
	section("data carried by the patch", len(p.Data))
	for _, d := range p.Data {
		fmt.Fprintf(&b, "  %s (%s, %d bytes): %s\n", d.Name, d.Unit, d.Size, d.Reason)
	}
	section("refused", len(p.Refused))
	for _, r := range p.Refused {
		fmt.Fprintf(&b, "  %s\n", r)
	}
	section("warnings", len(p.Warnings))
	for _, r := range p.Warnings {
		fmt.Fprintf(&b, "  %s\n", r)
	}
	for _, n := range p.Notes {
		fmt.Fprintf(&b, "note: %s\n", n)
	}
	if p.Output != nil {
		if p.Output.Path != "" {
			fmt.Fprintf(&b, "wrote %s (%d bytes, sha256 %s)\n", p.Output.Path, p.Output.Size, p.Output.SHA256[:16])
		} else {
			fmt.Fprintf(&b, "object: %d bytes, sha256 %s (not written: dry run)\n", p.Output.Size, p.Output.SHA256[:16])
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}
