package linuxkernel

import "bytes"

// Loadable modules' ORC tables. A module's .orc_unwind_ip/.orc_unwind
// are sorted when it loads (unwind_module_init) and hang off its struct
// module (x86-64's mod_arch_specific: num_orcs, orc_unwind_ip,
// orc_unwind); the kernel's orc_find looks an IP up in the module whose
// memory holds it (orc_module_find). The host walks the kernel's
// `modules` list with struct module's layout from BTF (Linux 6.1:
// core_layout and init_layout with base and text_size) and reads each
// formed module's table, validated like vmlinux's.

const (
	maxModules       = 4096
	maxModuleORCs    = 1 << 20
	moduleStateUnfmd = 3  // MODULE_STATE_UNFORMED: still being set up
	moduleNameLen    = 56 // MODULE_NAME_LEN on 64-bit
)

// ModuleORC is one module's text and ORC table.
type ModuleORC struct {
	Name string
	// Text is the module's core text (core_layout.base, text_size); Init
	// its init text while it has one.
	Text, Init AddrRange
	ORC        *ORC
	label      string // "[name]", a frame's Func in the module
	addr       uint64 // the struct module
	ipVA, n    uint64 // where its table was read from, for reuse
}

// moduleLayout is where ReadModuleORC reads struct module.
type moduleLayout struct {
	list, name, state, coreBase, coreText, initBase, initText, numORCs, orcIP, orcUnwind uint64
}

func (k *Kernel) moduleLayout() (*moduleLayout, error) {
	if k.BTF == nil {
		return nil, wrap("modules", ErrNotFound, k.BTFErr, "no BTF for struct module")
	}
	l := &moduleLayout{}
	for _, f := range []struct {
		dst  *uint64
		path string
	}{
		{&l.list, "list"}, {&l.name, "name"}, {&l.state, "state"},
		{&l.coreBase, "core_layout.base"}, {&l.coreText, "core_layout.text_size"},
		{&l.initBase, "init_layout.base"}, {&l.initText, "init_layout.text_size"},
		{&l.numORCs, "arch.num_orcs"}, {&l.orcIP, "arch.orc_unwind_ip"}, {&l.orcUnwind, "arch.orc_unwind"},
	} {
		o, err := memberOffset(k.BTF, "module", f.path)
		if err != nil {
			return nil, err
		}
		*f.dst = o
	}
	return l, nil
}

// ReadModuleORC reads the ORC table of every loaded module. prev, the
// result of an earlier call, lets an unchanged module (same struct
// module, table address and size) keep its parsed table: the list is
// walked at each consistency check, the tables are read only when new.
func (k *Kernel) ReadModuleORC(prev []ModuleORC) ([]ModuleORC, error) {
	format, err := ORCFormatOf(k.Release)
	if err != nil {
		return nil, err
	}
	l, err := k.moduleLayout()
	if err != nil {
		return nil, err
	}
	head, err := k.Symbols.Addr("modules")
	if err != nil {
		return nil, err
	}
	old := map[uint64]ModuleORC{}
	for _, m := range prev {
		old[m.addr] = m
	}
	var out []ModuleORC
	seen := map[uint64]bool{}
	next, err := k.AS.U64(head)
	if err != nil {
		return nil, wrap("modules", ErrBounds, err, "modules list head at %#x", head)
	}
	for next != head {
		if len(seen) >= maxModules {
			return nil, errf("modules", ErrLimit, "more than %d modules", maxModules)
		}
		if next < l.list {
			return nil, errf("modules", ErrFormat, "module list entry %#x", next)
		}
		mod := next - l.list
		if seen[mod] {
			return nil, errf("modules", ErrFormat, "module list cycles at %#x", mod)
		}
		seen[mod] = true
		var raw [8]byte
		u64 := func(off uint64, what string) (uint64, error) {
			if err := k.AS.Read(mod+off, raw[:]); err != nil {
				return 0, wrap("modules", ErrBounds, err, "%s of module %#x", what, mod)
			}
			return le64(raw[:]), nil
		}
		u32 := func(off uint64, what string) (uint64, error) {
			if err := k.AS.Read(mod+off, raw[:4]); err != nil {
				return 0, wrap("modules", ErrBounds, err, "%s of module %#x", what, mod)
			}
			return uint64(le32(raw[:4])), nil
		}
		var v [8]uint64
		for i, f := range []struct {
			off  uint64
			what string
			wide bool
		}{{l.state, "state", false}, {l.coreBase, "core_layout.base", true}, {l.coreText, "core_layout.text_size", false},
			{l.initBase, "init_layout.base", true}, {l.initText, "init_layout.text_size", false},
			{l.numORCs, "arch.num_orcs", false}, {l.orcIP, "arch.orc_unwind_ip", true}, {l.orcUnwind, "arch.orc_unwind", true}} {
			get := u32
			if f.wide {
				get = u64
			}
			if v[i], err = get(f.off, f.what); err != nil {
				return nil, err
			}
		}
		state, coreBase, coreText, initBase, initText, n, ipVA, entVA := v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]
		if next, err = u64(l.list, "list.next"); err != nil {
			return nil, err
		}
		if state == moduleStateUnfmd {
			continue // still loading: its text runs nothing yet
		}
		name := make([]byte, moduleNameLen)
		if err := k.AS.Read(mod+l.name, name); err != nil {
			return nil, wrap("modules", ErrBounds, err, "name of module %#x", mod)
		}
		if i := bytes.IndexByte(name, 0); i >= 0 {
			name = name[:i]
		}
		m := ModuleORC{Name: string(bytes.ToValidUTF8(name, []byte("?"))), addr: mod, ipVA: ipVA, n: n,
			Text: AddrRange{coreBase, coreBase + coreText}}
		m.label = "[" + m.Name + "]"
		if initBase != 0 {
			m.Init = AddrRange{initBase, initBase + initText}
		}
		if m.Text.End < m.Text.Start || m.Init.End < m.Init.Start {
			return nil, errf("modules", ErrFormat, "module %s: text [%#x, +%#x), init [%#x, +%#x)", m.Name, coreBase, coreText, initBase, initText)
		}
		if o, ok := old[mod]; ok && o.ipVA == ipVA && o.n == n && o.ORC != nil {
			m.ORC = o.ORC
		} else if n > 0 {
			if n > maxModuleORCs {
				return nil, errf("modules", ErrLimit, "module %s: %d ORC entries (max %d)", m.Name, n, maxModuleORCs)
			}
			ipRaw := make([]byte, 4*n)
			if err := k.AS.Read(ipVA, ipRaw); err != nil {
				return nil, wrap("modules", ErrBounds, err, "module %s: orc_unwind_ip at %#x", m.Name, ipVA)
			}
			entRaw := make([]byte, orcEntrySize*n)
			if err := k.AS.Read(entVA, entRaw); err != nil {
				return nil, wrap("modules", ErrBounds, err, "module %s: orc_unwind at %#x", m.Name, entVA)
			}
			if m.ORC, err = ParseORC(ipVA, ipRaw, entRaw, format); err != nil {
				return nil, wrap("modules", ErrFormat, err, "module %s", m.Name)
			}
		}
		if m.ORC != nil {
			m.ORC.Covered = []AddrRange{m.Text}
			if m.Init.End > m.Init.Start {
				m.ORC.Covered = append(m.ORC.Covered, m.Init)
			}
		}
		out = append(out, m)
	}
	return out, nil
}

// RefreshModules re-reads the module list (with every vCPU paused, at
// each consistency check: modules come and go) and makes the modules'
// text and ORC tables part of the unwind.
func (u *Unwinder) RefreshModules() error {
	if u.k == nil {
		return errf("modules", ErrInvalid, "no kernel")
	}
	mods, err := u.k.ReadModuleORC(u.Modules)
	if err != nil {
		return err
	}
	u.Modules = mods
	return nil
}

// moduleOf is the module whose text holds a, or nil.
func (u *Unwinder) moduleOf(a uint64) *ModuleORC {
	for i := range u.Modules {
		m := &u.Modules[i]
		if m.Text.Contains(a) || m.Init.Contains(a) {
			return m
		}
	}
	return nil
}

// find is orc_find: vmlinux's table, then the module holding ip.
func (u *Unwinder) find(ip uint64) (ORCEntry, bool) {
	if e, ok := u.ORC.Find(ip); ok {
		return e, true
	}
	if m := u.moduleOf(ip); m != nil && m.ORC != nil {
		return m.ORC.Find(ip)
	}
	return ORCEntry{}, false
}
