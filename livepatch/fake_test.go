package livepatch

import (
	"context"
	"encoding/binary"
	"fmt"
	"sync"
	"testing"

	"klp-kvm/elfpatch"
	"klp-kvm/guestkernel"
	"klp-kvm/guestkernel/layout"
	"klp-kvm/kvm/engine"
	"klp-kvm/livepatch/fakeguest"
)

const (
	patchVirt = layout.PatchAreaVirt
	fakePatch = fakeguest.PatchSize
)

// fakeGuest adapts fakeguest.Guest to the tests' helpers (t.Fatal on
// errors).
type fakeGuest struct {
	*fakeguest.Guest
}

func newFakeGuest(t testing.TB, cpus int) *fakeGuest {
	t.Helper()
	g, err := fakeguest.New(cpus)
	if err != nil {
		t.Fatal(err)
	}
	return &fakeGuest{g}
}

func (g *fakeGuest) sym(t testing.TB, name string) uint64 {
	t.Helper()
	a := g.Sym(name)
	if a == 0 {
		t.Fatalf("no symbol %s", name)
	}
	return a
}

func (g *fakeGuest) setRegs(id int, r engine.Regs) { g.SetRegs(id, r) }
func (g *fakeGuest) regs(id int) engine.Regs       { return g.RegsOf(id) }
func (g *fakeGuest) hash() [32]byte                { return g.Hash() }

func (g *fakeGuest) u64(t testing.TB, va uint64) uint64 {
	var b [8]byte
	if err := g.ReadVirt(va, b[:]); err != nil {
		t.Fatal(err)
	}
	return binary.LittleEndian.Uint64(b[:])
}

func (g *fakeGuest) sysfs(t testing.TB) []guestkernel.SysfsPatch {
	t.Helper()
	ps, err := g.Sysfs()
	if err != nil {
		t.Fatal(err)
	}
	return ps
}

func (g *fakeGuest) fakeTask(t testing.TB, _ *Manager, slot int, pid uint32, name string, pc uint64) {
	t.Helper()
	if err := g.SetTask(slot, pid, name, pc); err != nil {
		t.Fatal(err)
	}
}

func (g *fakeGuest) clearTasks(t testing.TB, _ *Manager) {
	if err := g.ClearTasks(); err != nil {
		t.Fatal(err)
	}
}

// cbRecorder runs callbacks "in the guest": it records them and returns
// what the test asks for: a value (ret, by address), an error (fail, by
// callback name), or, for the callbacks in hang, nothing until the
// call's context ends (a guest-call that times out: the guest may still
// run it later). With m set, names records each call by callback name.
type cbRecorder struct {
	mu    sync.Mutex
	calls []uint64
	names []string
	imgs  []uint64 // with m set: the image address of each call's patch
	ret   map[uint64]int64
	m     *Manager
	fail  map[string]error
	hang  map[string]bool
}

func (c *cbRecorder) run(ctx context.Context, addr, arg uint64) (int64, error) {
	c.mu.Lock()
	c.calls = append(c.calls, addr)
	name, img := fmt.Sprintf("%#x", addr), uint64(0)
	if c.m != nil {
		// The call comes from the operation, which holds the
		// Manager's lock: its patches may be read.
		for _, p := range c.m.patches {
			for _, ob := range p.Objects {
				for i, cb := range ob.Callbacks {
					if cb == addr {
						name, img = elfpatch.CallbackNames[i], p.ImageAddr
					}
				}
			}
		}
	}
	c.names = append(c.names, name)
	c.imgs = append(c.imgs, img)
	ret, err, hang := c.ret[addr], c.fail[name], c.hang[name]
	c.mu.Unlock()
	if hang {
		<-ctx.Done()
		return 0, ctx.Err()
	}
	return ret, err
}

// called returns the names of the callbacks called since the last call
// of called.
func (c *cbRecorder) called() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.names
	c.names = nil
	return out
}

// newChecked is New with the lock assertions on (mustHold): every test's
// Manager checks that the methods needing m.mu are reached with it held.
func newChecked(cfg Config) (*Manager, error) {
	m, err := New(cfg)
	if err == nil {
		m.lockChecks = true
	}
	return m, err
}

func newManager(t testing.TB, cpus int, cb CallbackRunner) (*fakeGuest, *Manager) {
	t.Helper()
	g := newFakeGuest(t, cpus)
	m, err := newChecked(Config{Guest: g, Vmlinux: guestkernel.Vmlinux(), PatchArea: patchVirt, PatchAreaSize: fakePatch, Callbacks: cb})
	if err != nil {
		t.Fatal(err)
	}
	if m.intro == nil {
		t.Fatal("klp_guest_abi not found in the guest kernel")
	}
	return g, m
}

func patchObj(t testing.TB, name string) []byte {
	t.Helper()
	b, err := guestkernel.Patch(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func vmlinuxForTest() []byte { return guestkernel.Vmlinux() }
