package linuxpatch

import (
	"fmt"
	"strings"
)

// Report is the image in words: what goes where, what is patched, what
// was left out and why.
func (im *Image) Report() string {
	var b strings.Builder
	fmt.Fprintf(&b, "module %s, vermagic %s\n", im.Module, strings.TrimSpace(im.Vermagic))
	fmt.Fprintf(&b, "struct klp_patch at %#x, replace %v; THIS_MODULE -> %#x (zeroed)\n", im.PatchAddr, im.Replace, im.ThisModule)
	b.WriteString("regions:\n")
	for _, r := range im.Regions {
		fmt.Fprintf(&b, "  %s %#x +%#x\n", r.Prot, r.Addr, r.Size)
	}
	b.WriteString("sections:\n")
	for _, s := range im.Sections {
		z := ""
		if s.Zeroed {
			z = " (zeroed)"
		}
		fmt.Fprintf(&b, "  %s %#x +%#x %s%s\n", s.Prot, s.Addr, s.Size, s.Name, z)
	}
	b.WriteString("objects:\n")
	for _, o := range im.Objects {
		nl := ""
		if !o.Loaded {
			nl = ", not loaded in the guest: its .klp.rela relocations are not applied"
		}
		fmt.Fprintf(&b, "  %s (struct klp_object at %#x%s)\n", o.Name, o.Addr, nl)
		for k, cb := range o.Callbacks {
			if cb != 0 {
				fmt.Fprintf(&b, "    callback %s %#x\n", CallbackNames[k], cb)
			}
		}
		for _, f := range o.Funcs {
			fmt.Fprintf(&b, "    %s,%d -> %s %#x\n", f.OldName, f.OldSympos, f.NewName, f.NewAddr)
		}
	}
	for _, s := range im.States {
		fmt.Fprintf(&b, "state id %d version %d\n", s.ID, s.Version)
	}
	fmt.Fprintf(&b, "fentry calls made NOPs: %d\n", len(im.FentrySites))
	if im.ORC.Entries > 0 {
		fmt.Fprintf(&b, "ORC: %d entries, .orc_unwind_ip %#x, .orc_unwind %#x (unsorted, unknown to the guest's unwinder)\n", im.ORC.Entries, im.ORC.UnwindIP, im.ORC.Unwind)
	}
	bySource := map[string]int{}
	for _, r := range im.Relocs {
		bySource[r.Source]++
	}
	fmt.Fprintf(&b, "relocations applied: %d (module %d, vmlinux %d, klp %d)\n", len(im.Relocs), bySource["module"], bySource[VmlinuxObject], bySource["klp"])
	if len(im.Skipped) > 0 {
		b.WriteString("not loaded:\n")
		for _, s := range im.Skipped {
			fmt.Fprintf(&b, "  %s (%d bytes): %s\n", s.Name, s.Size, s.Why)
		}
	}
	return b.String()
}

// Report is the module in words before it is placed: what it patches,
// where its klp structures are, and what becomes of each section.
func (m *Module) Report() string {
	var b strings.Builder
	fmt.Fprintf(&b, "module %s, vermagic %s\n", m.Name, strings.TrimSpace(m.Vermagic))
	fmt.Fprintf(&b, "struct klp_patch at %s, replace %v\n", m.Patch, m.Replace)
	for _, o := range m.Objects {
		fmt.Fprintf(&b, "object %s (struct klp_object at %s)\n", o.Name, o.Loc)
		for k, cb := range o.Callbacks {
			if cb != nil {
				fmt.Fprintf(&b, "  callback %s %s\n", CallbackNames[k], cb)
			}
		}
		for _, f := range o.Funcs {
			fmt.Fprintf(&b, "  %s,%d -> %s (%d bytes)\n", f.OldName, f.OldSympos, f.NewFunc, f.NewSize)
		}
	}
	for _, s := range m.States {
		fmt.Fprintf(&b, "state id %d version %d\n", s.ID, s.Version)
	}
	fmt.Fprintf(&b, "fentry calls to make NOPs: %d; size when placed: %#x\n", len(m.fentry), m.Size())
	b.WriteString("sections:\n")
	for _, s := range m.Sections {
		why := ""
		if s.Why != "" {
			why = ": " + s.Why
		}
		fmt.Fprintf(&b, "  %-8s %s (%d bytes)%s\n", s.Use, s.Name, s.Size, why)
	}
	return b.String()
}
