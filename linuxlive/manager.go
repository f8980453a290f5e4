// Package linuxlive live-patches a running, unmodified Linux x86-64 guest
// from the host with an ordinary Linux livepatch module (.ko): the guest's
// kernel is read from guest memory (package linuxkernel), the module is
// linked against the guest's own kallsyms (package linuxpatch), its
// regions go into RAM the guest does not own (the patch area the VMM
// keeps out of the e820 map) and are mapped at module-area addresses by
// entries the host adds to the guest kernel's page tables, and each old
// function's fentry NOP becomes a jmp to its replacement while every vCPU
// is paused, after an ORC unwind of every task and vCPU found none of the
// changing functions on a stack. Nothing read from the guest is trusted.
//
// Manager has the same operations as livepatch.Manager (register, enable,
// disable, unregister, load, unload, status) and returns its types, so
// the control API's patch routes and the CLI drive both.
package linuxlive

import (
	"encoding/binary"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"klp-kvm/linuxkernel"
	"klp-kvm/linuxpatch"
	"klp-kvm/livepatch"
)

// The x86-64 module area of Linux 6.1 (Documentation/x86/x86_64/mm.rst):
// MODULES_VADDR = __START_KERNEL_map + KERNEL_IMAGE_SIZE (1 GiB with
// KASLR), MODULES_END, 4- and 5-level paging alike. module_alloc fills it
// from the bottom (plus a random offset of at most 4 MiB); the host takes
// the top Window bytes, so the two meet only when the guest has ~1 GiB of
// modules, and every address is within ±2 GiB of kernel text (a rel32
// reaches both ways).
const (
	ModulesVaddr = 0xffff_ffff_c000_0000
	ModulesEnd   = 0xffff_ffff_ff00_0000
	// Window is the top of the module area the host places patches in.
	Window = 64 << 20
)

// fentryNop is the 5-byte NOP the kernel's ftrace leaves at each
// function's fentry site (ideal_nops' P6_NOP5).
var fentryNop = [5]byte{0x0f, 0x1f, 0x44, 0x00, 0x00}

// DefaultDeadline bounds the retries of a blocked transition.
const DefaultDeadline = 5 * time.Second

// CPU is one paused vCPU: what linuxkernel needs and its registers as an
// interrupt frame (for the ORC unwind).
type CPU struct {
	linuxkernel.CPU
	Regs linuxkernel.PtRegs
}

// Machine is the guest as this package needs it: physical memory, the
// whole-machine pause, and the paused vCPUs' registers. vmm implements it
// over kvm.Machine. A Machine that is also a livepatch.Stepper (some
// vCPUs run while the others stay paused) gets the progress guarantee.
type Machine interface {
	PhysMem
	Pause() error
	Resume() error
	// CPUs reads every vCPU's registers; the machine is paused.
	CPUs() ([]CPU, error)
}

// Config is what a Manager works with.
type Config struct {
	Machine Machine
	// AreaBase and AreaSize are the patch area: guest-physical RAM the
	// guest does not own (kvm.Machine.LinuxPatchArea).
	AreaBase, AreaSize uint64
	// Kernel opens the live kernel (default linuxkernel.Open over
	// Machine with linuxkernel.Options{}); called once, at the first
	// operation that needs it.
	Kernel func() (*linuxkernel.Kernel, error)
	// Logf, when set, receives one line per transition attempt that
	// blocked.
	Logf func(format string, args ...any)
}

// Manager live-patches one Linux guest. Operations are serialised;
// Status answers from a snapshot without waiting.
type Manager struct {
	mu     sync.Mutex
	cfg    Config
	area   *area
	vaNext uint64 // the next patch goes below this (the window is used top down, never reused: see register)

	open    func() (kernelView, error) // nil: openLive (the unit tests give a fake)
	kv      kernelView
	pt      *pageTables
	nx      bool // the guest maps data NX
	linkCfg linuxpatch.Config

	patches []*patch        // registration order (Linux's klp_patches)
	ops     map[uint64]*ops // by old function address
	ftHeld  map[uint64]bool // sites whose ftrace record the host disabled (ftrace.go)
	last    *livepatch.Result

	snapMu sync.Mutex
	snap   livepatch.Status

	// inTransition is the name of the patch whose transition is retrying
	// (Linux's klp_transition_patch), nil between transitions; set and
	// cleared by transition with m.mu held, read without it by a guest's
	// write to force. forceReq is that write: the transition's next
	// attempt skips the check (Linux's klp_force_transition).
	inTransition atomic.Pointer[string]
	forceReq     atomic.Bool
}

// patch is one registered module.
type patch struct {
	name    string
	img     *linuxpatch.Image
	orc     linuxkernel.ModuleORC // its code for the unwinder (patchORC)
	funcs   []*fn
	pages   []mapping
	tables  []created
	enabled bool
	forced  bool
	size    uint64
}

// mapping is one page of a patch: where the guest sees it, where it is.
type mapping struct{ va, pa uint64 }

// fn is one klp_func, resolved against the guest.
type fn struct {
	object, name     string
	sympos           int
	old, oldSize     uint64
	site             uint64 // the 5 bytes (after ENDBR64)
	sitePA           uint64
	newAddr, newSize uint64
	newName          string
	p                *patch
	rec              ftraceRec // the guest ftrace's record of site
}

// ops is klp_ops: the functions redirected at one old address, newest
// last; the site jumps to the top one.
type ops struct {
	old   uint64
	stack []*fn
}

// New makes a Manager. The kernel is opened at the first operation.
func New(cfg Config) (*Manager, error) {
	if cfg.Machine == nil {
		return nil, errf("new", "", ErrGuest, "no machine")
	}
	if cfg.AreaSize < 16*pageSize || cfg.AreaBase%pageSize != 0 || cfg.AreaSize%pageSize != 0 ||
		cfg.AreaBase+cfg.AreaSize > cfg.Machine.PhysSize() || cfg.AreaBase+cfg.AreaSize < cfg.AreaBase {
		return nil, errf("new", "", ErrNoSpace, "patch area [%#x, +%#x) is not page-aligned RAM of at least 64 KiB", cfg.AreaBase, cfg.AreaSize)
	}
	m := &Manager{cfg: cfg, area: newArea(cfg.AreaBase, cfg.AreaSize), vaNext: ModulesEnd, ops: map[uint64]*ops{}, ftHeld: map[uint64]bool{}}
	m.publish()
	return m, nil
}

// kernel opens the live kernel once (kernelView); m.mu must be held.
func (m *Manager) kernel() error {
	if m.kv != nil {
		return nil
	}
	open := m.open
	if open == nil {
		open = func() (kernelView, error) { return openLive(m.cfg) }
	}
	kv, err := open()
	if err != nil {
		return err
	}
	root, levels, nx := kv.Tables()
	m.kv, m.nx = kv, nx
	m.pt = &pageTables{mem: m.cfg.Machine, root: root, levels: levels}
	m.linkCfg = kv.LinkConfig()
	return nil
}

func (m *Manager) find(name string) (int, *patch) {
	for i, p := range m.patches {
		if p.name == name {
			return i, p
		}
	}
	return -1, nil
}

// Register reads, links and maps a module: its code is in the guest,
// mapped, and nothing jumps to it yet.
func (m *Manager) Register(data []byte, nameHint string) (*livepatch.Patch, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p, err := m.register(data, nameHint)
	if err != nil {
		return nil, err
	}
	m.publish()
	return m.info(p), nil
}

func (m *Manager) register(data []byte, nameHint string) (*patch, error) {
	const op = "register"
	if err := m.kernel(); err != nil {
		return nil, err
	}
	mod, err := linuxpatch.Parse(data, m.kv.BTF())
	if err != nil {
		return nil, wrap(op, nameHint, ErrModule, err, "")
	}
	name := mod.Name
	if _, q := m.find(name); q != nil {
		return nil, errf(op, name, ErrExists, "a patch of that name is registered")
	}
	if mod.Replace {
		return nil, errf(op, name, ErrUnsupported, "atomic replace (klp_patch.replace)")
	}
	if len(mod.States) > 0 {
		return nil, errf(op, name, ErrUnsupported, "system states (klp_patch.states)")
	}
	for _, o := range mod.Objects {
		if o.Name != linuxpatch.VmlinuxObject {
			return nil, errf(op, name, ErrUnsupported, "object %q: only vmlinux functions can be patched (the guest's modules are not read yet)", o.Name)
		}
		for i, cb := range o.Callbacks {
			if cb != nil {
				return nil, errf(op, name, ErrUnsupported, "a %s callback (callbacks would run in the guest)", linuxpatch.CallbackNames[i])
			}
		}
	}
	// Place: the regions go below m.vaNext, each page-rounded, a guard
	// page under the lowest. The window is used top down and an address
	// is never reused: a vCPU may still hold a TLB entry for an address
	// the host unmapped (the host cannot flush the guest's TLBs), and
	// that entry must never translate code that is not there any more.
	cfg := m.linkCfg
	va := m.vaNext
	cfg.Alloc = func(prot linuxpatch.Prot, size uint64) (uint64, error) {
		size = (size + pageSize - 1) &^ (pageSize - 1)
		if va-size < ModulesEnd-Window || size > Window {
			return 0, errf("place", name, ErrNoSpace, "the module-area window [%#x, %#x) is used up", uint64(ModulesEnd-Window), uint64(ModulesEnd))
		}
		va -= size
		return va, nil
	}
	img, err := mod.Link(cfg)
	if err != nil {
		return nil, wrap(op, name, ErrModule, err, "")
	}
	p := &patch{name: name, img: img}
	if p.orc, err = patchORC(name, img, cfg.KernelRelease); err != nil {
		return nil, wrap(op, name, ErrModule, err, "its ORC tables")
	}
	// Resolve each old function as klp_find_object_symbol does, and
	// check its fentry site: it must be the NOP, or our own jump (a
	// patch stacked on another).
	for _, f := range img.Funcs {
		if f.Object != linuxpatch.VmlinuxObject {
			continue
		}
		old, err := cfg.Resolve(f.Object, f.OldName, f.OldSympos)
		if err != nil {
			return nil, wrap(op, name, ErrModule, err, "old function %s", f.OldName)
		}
		x := &fn{object: f.Object, name: f.OldName, sympos: f.OldSympos, old: old, newAddr: f.NewAddr, newSize: f.NewSize, newName: f.NewName, p: p}
		x.oldSize = m.kv.FuncSize(old)
		site, kind, err := m.kv.Site(old)
		if err != nil {
			return nil, wrap(op, name, ErrGuest, err, "fentry site of %s", f.OldName)
		}
		x.site = site
		pa, err := m.kv.Translate(x.site)
		if err != nil || (pa&0xfff) > pageSize-5 {
			// a site across a page boundary would need two writes
			return nil, wrap(op, name, ErrGuest, err, "fentry site of %s at %#x", f.OldName, x.site)
		}
		x.sitePA = pa
		if err := m.siteFtrace(x); err != nil {
			return nil, wrap(op, name, ErrGuest, err, "the guest's ftrace record of %s", f.OldName)
		}
		if x.newSize == 0 {
			x.newSize = 1
		}
		if _, ok := rel32(x.site, x.newAddr); !ok {
			return nil, errf(op, name, ErrModule, "%s at %#x is beyond a rel32 jump from %s's site %#x", f.NewName, f.NewAddr, f.OldName, x.site)
		}
		want := fentryNop
		if o := m.ops[old]; o != nil && len(o.stack) > 0 {
			want = jmpBytes(x.site, o.stack[len(o.stack)-1].newAddr)
		}
		var cur [5]byte
		if err := m.cfg.Machine.ReadPhys(x.sitePA, cur[:]); err != nil {
			return nil, wrap(op, name, ErrGuest, err, "fentry site of %s", f.OldName)
		}
		if cur != want && cur != fentryNop {
			return nil, errf(op, name, ErrSiteInUse, "%s's fentry site %#x holds % x (%s), not the NOP: the guest's ftrace, a kprobe or BPF uses it",
				f.OldName, x.site, cur[:], kind)
		}
		if cur != want {
			return nil, errf(op, name, ErrSiteInUse, "%s's fentry site %#x holds % x, not the jump to the patch below it", f.OldName, x.site, cur[:])
		}
		for _, y := range p.funcs {
			if y.old == old {
				return nil, errf(op, name, ErrModule, "%s patched twice", f.OldName)
			}
		}
		p.funcs = append(p.funcs, x)
	}
	if len(p.funcs) == 0 {
		return nil, errf(op, name, ErrModule, "no vmlinux function to patch")
	}
	if err := m.mapImage(p); err != nil {
		return nil, err
	}
	m.vaNext = va - pageSize // a guard page below
	m.patches = append(m.patches, p)
	return p, nil
}

// mapImage writes the image's regions to patch-area pages and maps them
// at their addresses, every vCPU paused. On any failure nothing stays:
// the PTEs and tables written are taken out and the pages freed.
func (m *Manager) mapImage(p *patch) (err error) {
	const op = "map"
	// Pages and contents first: nothing maps them yet.
	defer func() {
		if err != nil {
			for _, pg := range p.pages {
				m.area.free(pg.pa)
			}
			p.pages = nil
		}
	}()
	type leaf struct {
		mapping
		bits uint64
	}
	var leaves []leaf
	for _, r := range p.img.Regions {
		bits := uint64(pteKernelROX)
		switch r.Prot {
		case linuxpatch.ProtRead:
			bits = pteKernelRO
		case linuxpatch.ProtWrite:
			bits = pteKernelRW
		}
		if r.Prot != linuxpatch.ProtExec && m.nx {
			bits |= pteNX
		}
		size := (r.Size + pageSize - 1) &^ (pageSize - 1)
		for off := uint64(0); off < size; off += pageSize {
			pa, err := m.area.alloc()
			if err != nil {
				return &Error{Op: op, Patch: p.name, Kind: ErrNoSpace, Errno: errnoOf(ErrNoSpace), Err: err}
			}
			pg := make([]byte, pageSize)
			if off < uint64(len(r.Bytes)) {
				copy(pg, r.Bytes[off:])
			}
			if err := m.cfg.Machine.WritePhys(pa, pg); err != nil {
				m.area.free(pa)
				return wrap(op, p.name, ErrGuest, err, "patch-area page %#x", pa)
			}
			mp := mapping{va: r.Addr + off, pa: pa}
			p.pages = append(p.pages, mp)
			leaves = append(leaves, leaf{mp, bits})
			p.size += pageSize
		}
	}
	if err := m.cfg.Machine.Pause(); err != nil {
		return wrap(op, p.name, ErrGuest, err, "pause")
	}
	defer func() {
		if rerr := m.cfg.Machine.Resume(); rerr != nil && err == nil {
			err = wrap(op, p.name, ErrGuest, rerr, "resume")
		}
	}()
	for _, l := range leaves {
		if err := m.pt.checkFree(l.va); err != nil {
			return withPatch(err, p.name)
		}
	}
	for i, l := range leaves {
		if err := m.pt.mapPage(l.va, l.pa, l.bits, m.area.alloc, &p.tables); err != nil {
			m.unmapPages(p, i)
			return withPatch(err, p.name)
		}
	}
	return nil
}

// unmapPages takes out the first n PTEs of p and the tables the host
// created that are empty then; the machine is paused.
func (m *Manager) unmapPages(p *patch, n int) error {
	var first error
	for _, pg := range p.pages[:n] {
		if err := m.pt.unmapPage(pg.va, pg.pa); err != nil && first == nil {
			first = err
		}
	}
	freed, kept, err := m.pt.dropEmpty(p.tables)
	for _, pa := range freed {
		m.area.free(pa)
	}
	p.tables = kept
	if first == nil {
		first = err
	}
	return first
}

func withPatch(err error, name string) error {
	if e, ok := err.(*Error); ok && e.Patch == "" {
		c := *e
		c.Patch = name
		return &c
	}
	return err
}

// Unregister unmaps a disabled patch and frees its pages.
func (m *Manager) Unregister(name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	err := m.unregister(name)
	m.publish()
	return err
}

func (m *Manager) unregister(name string) error {
	const op = "unregister"
	i, p := m.find(name)
	if p == nil {
		return errf(op, name, ErrNotFound, "")
	}
	if p.enabled {
		return errf(op, name, ErrBusy, "the patch is enabled: disable it first")
	}
	if err := m.cfg.Machine.Pause(); err != nil {
		return wrap(op, name, ErrGuest, err, "pause")
	}
	uerr := m.unmapPages(p, len(p.pages))
	if err := m.cfg.Machine.Resume(); err != nil && uerr == nil {
		uerr = wrap(op, name, ErrGuest, err, "resume")
	}
	if uerr != nil {
		// The pages stay allocated: a PTE the host could not clear may
		// still map one of them.
		return withPatch(uerr, name)
	}
	for _, pg := range p.pages {
		m.area.free(pg.pa)
	}
	m.patches = append(m.patches[:i], m.patches[i+1:]...)
	return nil
}

// Load registers and enables; an enable that fails unregisters again.
func (m *Manager) Load(data []byte, nameHint string, o livepatch.Options) (*livepatch.Patch, *livepatch.Result, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	defer m.publish()
	t0 := time.Now()
	p, err := m.register(data, nameHint)
	if err != nil {
		return nil, nil, err
	}
	res, err := m.enable(p.name, o)
	if err != nil {
		if uerr := m.unregister(p.name); uerr != nil {
			return nil, nil, fmt.Errorf("%w (and undoing the register: %v)", err, uerr)
		}
		return nil, nil, err
	}
	res.Op, res.Total = "load", time.Since(t0)
	m.last = res
	return m.info(p), res, nil
}

// Unload disables (if enabled) and unregisters.
func (m *Manager) Unload(name string, o livepatch.Options) (*livepatch.Result, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	defer m.publish()
	t0 := time.Now()
	_, p := m.find(name)
	if p == nil {
		return nil, errf("unload", name, ErrNotFound, "")
	}
	res := &livepatch.Result{Op: "unload", Patch: name}
	if p.enabled {
		r, err := m.disable(name, o)
		if err != nil {
			return nil, err
		}
		res = r
		res.Op = "unload"
	}
	if err := m.unregister(name); err != nil {
		return nil, err
	}
	res.Total = time.Since(t0)
	m.last = res
	return res, nil
}

// Enable switches the patch's functions in (Linux's stacking rule: only
// the first disabled patch after all enabled ones).
func (m *Manager) Enable(name string, o livepatch.Options) (*livepatch.Result, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	defer m.publish()
	res, err := m.enable(name, o)
	if err == nil {
		m.last = res
	}
	return res, err
}

func (m *Manager) enable(name string, o livepatch.Options) (*livepatch.Result, error) {
	const op = "enable"
	i, p := m.find(name)
	if p == nil {
		return nil, errf(op, name, ErrNotFound, "")
	}
	if p.enabled {
		return nil, errf(op, name, ErrBusy, "already enabled")
	}
	if i > 0 && !m.patches[i-1].enabled {
		return nil, errf(op, name, ErrBusy, "%q, registered before it, is disabled: enable patches in order", m.patches[i-1].name)
	}
	for _, q := range m.patches[i+1:] {
		if q.enabled {
			return nil, errf(op, name, ErrBusy, "%q, registered after it, is enabled", q.name)
		}
	}
	var sw []siteSwitch
	var check []linuxkernel.AddrRange
	for _, f := range p.funcs {
		o := m.ops[f.old]
		from := fentryNop
		if o != nil && len(o.stack) > 0 {
			top := o.stack[len(o.stack)-1]
			from = jmpBytes(f.site, top.newAddr)
			check = append(check, linuxkernel.AddrRange{Start: top.newAddr, End: top.newAddr + top.newSize})
		} else {
			check = append(check, linuxkernel.AddrRange{Start: f.old, End: f.old + f.oldSize})
		}
		sw = append(sw, siteSwitch{f: f, from: from, to: jmpBytes(f.site, f.newAddr)})
	}
	res, err := m.transition(op, p, sw, check, o)
	if err != nil {
		return nil, err
	}
	for _, f := range p.funcs {
		x := m.ops[f.old]
		if x == nil {
			x = &ops{old: f.old}
			m.ops[f.old] = x
		}
		x.stack = append(x.stack, f)
	}
	p.enabled = true
	p.forced = p.forced || o.Force
	return res, nil
}

// Disable switches the patch's functions out (only the last enabled
// patch): each site goes back to the patch below it, or the NOP.
func (m *Manager) Disable(name string, o livepatch.Options) (*livepatch.Result, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	defer m.publish()
	res, err := m.disable(name, o)
	if err == nil {
		m.last = res
	}
	return res, err
}

func (m *Manager) disable(name string, o livepatch.Options) (*livepatch.Result, error) {
	const op = "disable"
	i, p := m.find(name)
	if p == nil {
		return nil, errf(op, name, ErrNotFound, "")
	}
	if !p.enabled {
		return nil, errf(op, name, ErrBusy, "not enabled")
	}
	for _, q := range m.patches[i+1:] {
		if q.enabled {
			return nil, errf(op, name, ErrBusy, "%q, stacked on it, is enabled: disable it first", q.name)
		}
	}
	var sw []siteSwitch
	var check []linuxkernel.AddrRange
	for _, f := range p.funcs {
		x := m.ops[f.old]
		if x == nil || len(x.stack) == 0 || x.stack[len(x.stack)-1] != f {
			return nil, errf(op, name, ErrGuest, "%s is not the top of its function stack", f.name)
		}
		to := fentryNop
		if len(x.stack) > 1 {
			to = jmpBytes(f.site, x.stack[len(x.stack)-2].newAddr)
		}
		sw = append(sw, siteSwitch{f: f, from: jmpBytes(f.site, f.newAddr), to: to})
		check = append(check, linuxkernel.AddrRange{Start: f.newAddr, End: f.newAddr + f.newSize})
	}
	res, err := m.transition(op, p, sw, check, o)
	if err != nil {
		return nil, err
	}
	for _, f := range p.funcs {
		x := m.ops[f.old]
		x.stack = x.stack[:len(x.stack)-1]
		if len(x.stack) == 0 {
			delete(m.ops, f.old)
		}
	}
	p.enabled = false
	p.forced = p.forced || o.Force
	return res, nil
}

// rel32 is the displacement of a 5-byte jmp at site to target.
func rel32(site, target uint64) (int32, bool) {
	d := int64(target - (site + 5))
	return int32(d), d == int64(int32(d))
}

// jmpBytes is "jmp rel32" from site to target (in range: checked at
// register).
func jmpBytes(site, target uint64) [5]byte {
	d, _ := rel32(site, target)
	var b [5]byte
	b[0] = 0xe9
	binary.LittleEndian.PutUint32(b[1:], uint32(d))
	return b
}

// Status is the state as of the last operation (no waiting).
func (m *Manager) Status() livepatch.Status {
	m.snapMu.Lock()
	defer m.snapMu.Unlock()
	st := m.snap
	st.Patches = append([]livepatch.PatchInfo(nil), st.Patches...)
	return st
}

// publish snapshots the state for Status; m.mu must be held (or the
// Manager not yet shared).
func (m *Manager) publish() {
	st := livepatch.Status{PatchAreaBase: m.area.base, PatchAreaSize: m.area.size,
		PatchAreaInUse: uint64(m.area.inUse) * pageSize, Last: m.last}
	for i, p := range m.patches {
		st.Patches = append(st.Patches, livepatch.PatchInfo{Patch: *m.info(p), StackOrder: i + 1})
	}
	m.snapMu.Lock()
	m.snap = st
	m.snapMu.Unlock()
}

// info is p as livepatch.Patch (what the API and CLI print).
func (m *Manager) info(p *patch) *livepatch.Patch {
	o := &livepatch.Object{Name: linuxpatch.VmlinuxObject}
	for _, f := range p.funcs {
		o.Funcs = append(o.Funcs, &livepatch.Func{OldName: f.name, OldSympos: f.sympos, OldAddr: f.old, OldSize: f.oldSize,
			Site: f.site, NewName: f.newName, NewAddr: f.newAddr, NewSize: f.newSize})
	}
	lp := &livepatch.Patch{Name: p.name, Enabled: p.enabled, Forced: p.forced, Objects: []*livepatch.Object{o}, ImageSize: p.size}
	if len(p.pages) > 0 {
		lp.ImageAddr = p.pages[len(p.pages)-1].va
		for _, pg := range p.pages {
			lp.ImageAddr = min(lp.ImageAddr, pg.va)
		}
	}
	return lp
}
