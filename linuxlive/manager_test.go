package linuxlive

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf/btf"

	"klp-kvm/linuxkernel"
	"klp-kvm/linuxpatch"
	"klp-kvm/livepatch"
)

// The Manager over a fake guest: RAM in a slice with the kernel's page
// tables around the module area, one text page holding
// cmdline_proc_show's fentry site, and a patch area; the symbols and BTF
// are Debian 6.1.0-57's own (linuxpatch's test data, captured from the
// real guest), the module is Linux's livepatch-sample.ko. The stack
// check is scripted. The nested tier's TestLinuxLivepatch runs the same
// on a real guest.

const (
	memSize   = 4 << 20
	textPage  = 0x100000 // where cmdline_proc_show's page is
	areaBase  = 2 << 20
	areaSize  = 2 << 20
	pml4, pdp = 0x1000, 0x2000
	pd        = 0x3000 // PD of 0xffffffffc0000000.. (level2_fixmap_pgt)
)

// fakeGuest is Machine over fakeMem; it checks that text and page
// tables are written only while paused.
type fakeGuest struct {
	fakeMem
	t      *testing.T
	depth  int
	pauses int
}

func (g *fakeGuest) WritePhys(pa uint64, b []byte) error {
	if pa < areaBase && g.depth == 0 {
		g.t.Errorf("guest text or page tables written at %#x while the guest runs", pa)
	}
	return g.fakeMem.WritePhys(pa, b)
}
func (g *fakeGuest) Pause() error { g.depth++; g.pauses++; return nil }
func (g *fakeGuest) Resume() error {
	if g.depth == 0 {
		g.t.Error("Resume without Pause")
	}
	g.depth--
	return nil
}
func (g *fakeGuest) CPUs() ([]CPU, error) { return nil, nil }

// fakeKernel is the kernelView of the fake guest.
type fakeKernel struct {
	g       *fakeGuest
	spec    *btf.Spec
	syms    *linuxkernel.Symbols
	cmdline uint64 // cmdline_proc_show
	block   string // a sleeping task blocks with this ("": none)
	// running, when set and no task blocks, is the check of the vCPUs.
	running func(check []linuxkernel.AddrRange) verdict
	code    []linuxkernel.ModuleORC // the last check's patch code
	checks  int
	// The guest ftrace's record of the site: its flags word at
	// ftraceFlags in the text page (noFtrace: the kernel's ftrace is not
	// readable), the lock and the ops list as FtraceBusy reports them.
	noFtrace      bool
	ftLock, ftOps bool
}

// ftraceFlags is where the fake's ftrace record keeps its flags.
const ftraceFlags = textPage + 0x800

func (k *fakeKernel) FtraceRecord(site uint64) (ftraceRec, error) {
	if k.noFtrace {
		return ftraceRec{}, nil
	}
	if site != k.cmdline {
		return ftraceRec{}, linuxkernel.ErrNotFound
	}
	return ftraceRec{ok: true, flagsVA: k.cmdline&^0xfff + 0x800, flagsPA: ftraceFlags, disabled: 1 << 25, enabled: 1 << 31, refMask: 1<<23 - 1}, nil
}

func (k *fakeKernel) FtraceBusy() (bool, bool, error) {
	if k.g.depth == 0 {
		k.g.t.Error("ftrace's lock read while the guest runs")
	}
	return k.ftLock, k.ftOps, nil
}

func (k *fakeKernel) ftraceFlags() uint64 { return get(k.g.fakeMem, ftraceFlags) }

func (k *fakeKernel) BTF() *btf.Spec { return k.spec }
func (k *fakeKernel) LinkConfig() linuxpatch.Config {
	return linuxpatch.Config{Resolve: linuxpatch.VmlinuxResolver(k.syms), Exported: linuxpatch.VmlinuxExports(k.syms),
		KernelRelease: "6.1.0-57-amd64", Loaded: func(obj string) bool { return obj == linuxpatch.VmlinuxObject }}
}
func (k *fakeKernel) FuncSize(uint64) uint64 { return 0x40 }
func (k *fakeKernel) Site(addr uint64) (uint64, string, error) {
	pa, err := k.Translate(addr)
	if err != nil {
		return 0, "", err
	}
	if bytes.Equal(k.g.fakeMem[pa:pa+5], fentryNop[:]) {
		return addr, linuxkernel.FentryNop, nil
	}
	return addr, linuxkernel.FentryUnknown, nil
}
func (k *fakeKernel) Translate(va uint64) (uint64, error) {
	if va&^0xfff != k.cmdline&^0xfff {
		return 0, errors.New("not mapped in the fake")
	}
	return textPage + va&0xfff, nil
}
func (k *fakeKernel) Tables() (uint64, int, bool) { return pml4, 4, true }
func (k *fakeKernel) Blocked(check []linuxkernel.AddrRange, code []linuxkernel.ModuleORC) (verdict, error) {
	k.checks++
	if k.g.depth == 0 {
		k.g.t.Error("stack check while the guest runs")
	}
	k.code = code
	if k.block != "" {
		return verdict{why: k.block, sleeping: true}, nil
	}
	if k.running != nil {
		return k.running(check), nil
	}
	return verdict{}, nil
}

func testdata(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile("../linuxpatch/testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func newTestManager(t *testing.T) (*Manager, *fakeGuest, *fakeKernel) {
	t.Helper()
	spec, _, err := linuxkernel.ParseBTF(testdata(t, "klp-btf-6.1.0-57-amd64.bin"))
	if err != nil {
		t.Fatal(err)
	}
	list, err := linuxkernel.ParseSystemMap(bytes.NewReader(testdata(t, "kallsyms-6.1.0-57-amd64-nokaslr.txt")), 0)
	if err != nil {
		t.Fatal(err)
	}
	syms := linuxkernel.NewSymbols(list)
	g := &fakeGuest{fakeMem: make(fakeMem, memSize), t: t}
	put(g.fakeMem, pml4+511*8, pdp|pteTable)
	put(g.fakeMem, pdp+511*8, pd|pteTable)
	put(g.fakeMem, pd+0, 0x400000|ptePresent|ptePS) // the guest's first module page (2 MiB)
	k := &fakeKernel{g: g, spec: spec, syms: syms}
	if k.cmdline, err = syms.Addr("cmdline_proc_show"); err != nil {
		t.Fatal(err)
	}
	pa, _ := k.Translate(k.cmdline)
	copy(g.fakeMem[pa:], fentryNop[:])
	m, err := New(Config{Machine: g, AreaBase: areaBase, AreaSize: areaSize})
	if err != nil {
		t.Fatal(err)
	}
	m.open = func() (kernelView, error) { return k, nil }
	return m, g, k
}

func (k *fakeKernel) site() []byte {
	pa, _ := k.Translate(k.cmdline)
	return k.g.fakeMem[pa : pa+5]
}

// walk translates va through the fake guest's tables: the PTE.
func walk(t *testing.T, g *fakeGuest, va uint64) uint64 {
	t.Helper()
	pt := &pageTables{mem: g.fakeMem, root: pml4, levels: 4}
	ea, err := pt.entryFor(va, nil, nil)
	if err != nil || ea == 0 {
		t.Fatalf("%#x: no page table (%v)", va, err)
	}
	return get(g.fakeMem, ea)
}

// guestPart is the guest's own memory (below the patch area).
func guestPart(g *fakeGuest) []byte { return bytes.Clone(g.fakeMem[:areaBase]) }

func TestLoadEnableDisableUnload(t *testing.T) {
	m, g, k := newTestManager(t)
	before := guestPart(g)
	ko := testdata(t, "livepatch-sample/livepatch-sample.ko")
	p, res, err := m.Load(ko, "livepatch-sample.ko", livepatch.Options{})
	if err != nil {
		t.Fatal(err)
	}
	f := p.Objects[0].Funcs[0]
	if p.Name != "livepatch_sample" || !p.Enabled || f.OldName != "cmdline_proc_show" || f.OldAddr != k.cmdline || res.Attempts != 1 || k.checks != 1 {
		t.Fatalf("loaded %+v %+v, result %+v, %d checks", p, f, res, k.checks)
	}
	if want := jmpBytes(k.cmdline, f.NewAddr); !bytes.Equal(k.site(), want[:]) {
		t.Errorf("site % x, want the jmp % x", k.site(), want[:])
	}
	if f.NewAddr < ModulesEnd-Window || f.NewAddr >= ModulesEnd {
		t.Errorf("new function at %#x, outside the window", f.NewAddr)
	}
	// The new function is mapped r-x from the patch area, and its bytes
	// are there; the other regions are NX.
	pte := walk(t, g, f.NewAddr)
	if pte&pteNX != 0 || pte&pteRW != 0 || pte&ptePresent == 0 || pte&pteUser != 0 {
		t.Errorf("code PTE %#x: want present, read-only, executable, kernel", pte)
	}
	if pa := pte & pteAddr; pa < areaBase || pa >= areaBase+areaSize {
		t.Errorf("code page at %#x, outside the patch area", pa)
	} else if b := g.fakeMem[pa+f.NewAddr&0xfff:]; !bytes.Equal(b[:5], fentryNop[:]) {
		// the new function starts with its own fentry call, made a NOP
		t.Errorf("new function starts % x, want its fentry NOP", b[:5])
	}
	for _, pg := range m.patches[0].pages {
		pte := walk(t, g, pg.va)
		if code := pg.va&^0xfff == f.NewAddr&^0xfff; !code && pte&pteNX == 0 {
			t.Errorf("data page %#x mapped executable (%#x)", pg.va, pte)
		}
	}
	st := m.Status()
	if len(st.Patches) != 1 || st.PatchAreaInUse != 4*pageSize { // 3 pages and one page table
		t.Errorf("status %+v", st)
	}

	if _, err := m.Disable(p.Name, livepatch.Options{}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(k.site(), fentryNop[:]) {
		t.Errorf("disabled: site % x", k.site())
	}
	if _, err := m.Disable(p.Name, livepatch.Options{}); !errors.Is(err, ErrBusy) {
		t.Errorf("second disable: %v, want ErrBusy", err)
	}
	if _, err := m.Enable(p.Name, livepatch.Options{}); err != nil {
		t.Fatal(err)
	}
	if err := m.Unregister(p.Name); !errors.Is(err, syscall.EBUSY) {
		t.Errorf("unregister of an enabled patch: %v, want EBUSY", err)
	}
	if _, err := m.Unload(p.Name, livepatch.Options{}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(guestPart(g), before) {
		t.Error("after unload the guest's memory (text, page tables) differs from before")
	}
	if st := m.Status(); len(st.Patches) != 0 || st.PatchAreaInUse != 0 {
		t.Errorf("after unload: %+v", st)
	}
	if g.depth != 0 {
		t.Errorf("pause depth %d after the operations", g.depth)
	}
	// Loaded again: at a new place (addresses are never reused).
	p2, _, err := m.Load(ko, "again.ko", livepatch.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if a := p2.Objects[0].Funcs[0].NewAddr; a >= f.NewAddr {
		t.Errorf("reloaded at %#x, not below the first load's %#x", a, f.NewAddr)
	}
}

// TestRefusedLeavesGuestUntouched: a site the guest's ftrace uses, a
// stack check that never clears, an address the guest maps, an unknown
// function: each fails with its errno and leaves every byte of the guest
// as it was, and the patch area empty.
func TestRefusedLeavesGuestUntouched(t *testing.T) {
	ko := testdata(t, "livepatch-sample/livepatch-sample.ko")
	for _, c := range []struct {
		name  string
		setup func(*testing.T, *fakeGuest, *fakeKernel)
		ko    []byte
		kind  error
		errno syscall.Errno
	}{
		{"site in use", func(t *testing.T, g *fakeGuest, k *fakeKernel) {
			copy(k.site(), []byte{0xe8, 1, 2, 3, 4}) // call ftrace's trampoline
		}, ko, ErrSiteInUse, syscall.EBUSY},
		{"always on a stack", func(t *testing.T, g *fakeGuest, k *fakeKernel) {
			k.block = "task 1 (init) at cmdline_proc_show+0x4"
		}, ko, ErrBusy, syscall.EBUSY},
		{"address mapped by the guest", func(t *testing.T, g *fakeGuest, k *fakeKernel) {
			put(g.fakeMem, pd+503*8, 0x5000|pteTable)
			put(g.fakeMem, 0x5000+511*8, 0x6000|pteKernelRW) // 0xfffffffffefff000
		}, ko, ErrCollision, syscall.EEXIST},
		{"unknown function", nil, bytes.ReplaceAll(ko, []byte("cmdline_proc_show\x00"), []byte("cmdline_proc_shoX\x00")), ErrModule, syscall.EINVAL},
		{"callbacks and replace", nil, testdata(t, "klp-static/klp-static.ko"), ErrUnsupported, syscall.EOPNOTSUPP},
	} {
		t.Run(c.name, func(t *testing.T) {
			m, g, k := newTestManager(t)
			if c.setup != nil {
				c.setup(t, g, k)
			}
			before := bytes.Clone(g.fakeMem)
			_, _, err := m.Load(c.ko, "x.ko", livepatch.Options{Deadline: 30 * time.Millisecond})
			if !errors.Is(err, c.kind) || !errors.Is(err, c.errno) {
				t.Fatalf("load: %v, want %v (%v)", err, c.kind, c.errno)
			}
			t.Logf("refused: %v", err)
			if !bytes.Equal(guestPart(g), before[:areaBase]) {
				t.Error("the guest's memory changed")
			}
			if st := m.Status(); len(st.Patches) != 0 || st.PatchAreaInUse != 0 {
				t.Errorf("status after the refusal: %+v", st)
			}
			if g.depth != 0 {
				t.Errorf("pause depth %d", g.depth)
			}
			if c.kind == ErrBusy && k.checks < 2 {
				t.Errorf("%d stack checks: want retries", k.checks)
			}
		})
	}
}

// TestSiteChangedBeforeSwitch: the guest's ftrace takes the site between
// register and enable: the switch verifies first and writes nothing.
func TestSiteChangedBeforeSwitch(t *testing.T) {
	m, g, k := newTestManager(t)
	p, err := m.Register(testdata(t, "livepatch-sample/livepatch-sample.ko"), "s.ko")
	if err != nil {
		t.Fatal(err)
	}
	copy(k.site(), []byte{0xe8, 1, 2, 3, 4})
	before := guestPart(g)
	if _, err := m.Enable(p.Name, livepatch.Options{}); !errors.Is(err, ErrSiteInUse) {
		t.Fatalf("enable: %v, want ErrSiteInUse", err)
	}
	if !bytes.Equal(guestPart(g), before) || m.Status().Patches[0].Enabled {
		t.Error("the failed enable changed the guest or the state")
	}
}

// TestStacking: a second patch on the same function wins; the one under
// it cannot be disabled first; disabling the top gives the one under it
// back, then the NOP.
func TestStacking(t *testing.T) {
	m, g, k := newTestManager(t)
	before := guestPart(g)
	ko := testdata(t, "livepatch-sample/livepatch-sample.ko")
	second := bytes.ReplaceAll(ko, []byte("name=livepatch_sample"), []byte("name=livepatch_stack2"))
	p1, _, err := m.Load(ko, "1.ko", livepatch.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := m.Load(ko, "1.ko", livepatch.Options{}); !errors.Is(err, syscall.EEXIST) {
		t.Errorf("the same patch twice: %v, want EEXIST", err)
	}
	p2, _, err := m.Load(second, "2.ko", livepatch.Options{})
	if err != nil {
		t.Fatal(err)
	}
	new1, new2 := p1.Objects[0].Funcs[0].NewAddr, p2.Objects[0].Funcs[0].NewAddr
	jmp := func(to uint64) []byte { b := jmpBytes(k.cmdline, to); return b[:] }
	if !bytes.Equal(k.site(), jmp(new2)) {
		t.Fatalf("stacked: site % x, want the jmp to the second patch", k.site())
	}
	if _, err := m.Disable(p1.Name, livepatch.Options{}); !errors.Is(err, syscall.EBUSY) {
		t.Errorf("disable under an enabled patch: %v, want EBUSY", err)
	}
	if _, err := m.Disable(p2.Name, livepatch.Options{}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(k.site(), jmp(new1)) {
		t.Errorf("top disabled: site % x, want the jmp to the first patch", k.site())
	}
	// The second is the first disabled patch after the enabled one: it
	// can be enabled again; unloading it disables it first.
	if _, err := m.Enable(p2.Name, livepatch.Options{}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Unload(p2.Name, livepatch.Options{}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Disable(p1.Name, livepatch.Options{}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Unload(p1.Name, livepatch.Options{}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(guestPart(g), before) || m.Status().PatchAreaInUse != 0 {
		t.Error("after unloading both, the guest differs from before or the area is not empty")
	}
}

// TestForceSkipsCheck: force switches although a stack holds the
// function (Linux's force), and says so.
func TestForceSkipsCheck(t *testing.T) {
	m, _, k := newTestManager(t)
	k.block = "vCPU 0 at cmdline_proc_show+0x8"
	p, res, err := m.Load(testdata(t, "livepatch-sample/livepatch-sample.ko"), "s.ko", livepatch.Options{Force: true})
	if err != nil || !res.Forced || k.checks != 0 || !p.Forced {
		t.Fatalf("forced load: %v, %+v, %d checks", err, res, k.checks)
	}
	if k.site()[0] != 0xe9 {
		t.Errorf("site % x, want a jmp", k.site())
	}
	if binary.LittleEndian.Uint32(k.site()[1:]) == 0 {
		t.Error("jmp to the next instruction")
	}
}
