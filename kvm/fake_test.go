package kvm

import (
	"encoding/binary"
	"sync"
	"sync/atomic"
	"time"

	"klp-kvm/kvm/engine"
)

// fakeEngine is a scripted engine for testing the Machine without an
// interpreter: each vCPU "executes" by incrementing a per-vCPU counter word
// in RAM (at counterBase + 8*id) in a loop, returns ExitIntr when kicked,
// and plays a script of exits first.
type fakeEngine struct {
	script   func(id int, step int) *engine.Exit // nil exit: keep counting
	slowKick map[int]time.Duration               // vCPUs that honour their first kick only this late
}

const counterBase = 0x8000

func (e *fakeEngine) Name() string { return "fake" }

func (e *fakeEngine) NewVM(mem []byte) (engine.VM, error) {
	return &fakeVM{mem: mem, e: e}, nil
}

type fakeVM struct {
	mem     []byte
	e       *fakeEngine
	changed atomic.Uint64
}

func (v *fakeVM) NewVCPU(id int) (engine.VCPU, error) {
	return &fakeVCPU{vm: v, id: id}, nil
}
func (v *fakeVM) CodeChanged(gpa, n uint64) { v.changed.Add(n) }
func (v *fakeVM) Close() error              { return nil }

type fakeVCPU struct {
	vm       *fakeVM
	id       int
	kick     atomic.Bool
	regs     engine.Regs
	sregs    engine.Sregs
	msrs     map[uint32]uint64
	step     int
	slowDone atomic.Bool // the slow first kick has been honoured
	exit     engine.Exit
	runs     atomic.Uint64
	mu       sync.Mutex // guards regs/sregs/msrs against misuse detection
}

func (c *fakeVCPU) ID() int { return c.id }
func (c *fakeVCPU) Regs() (engine.Regs, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.regs, nil
}
func (c *fakeVCPU) SetRegs(r engine.Regs) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.regs = r
	return nil
}
func (c *fakeVCPU) Sregs() (engine.Sregs, error) { return c.sregs, nil }
func (c *fakeVCPU) SetSregs(s engine.Sregs) error {
	c.sregs = s
	return nil
}
func (c *fakeVCPU) GetMSRs(m []engine.MSR) error {
	for i := range m {
		m[i].Data = c.msrs[m[i].Index]
	}
	return nil
}
func (c *fakeVCPU) SetMSRs(m []engine.MSR) error {
	if c.msrs == nil {
		c.msrs = map[uint32]uint64{}
	}
	for _, e := range m {
		c.msrs[e.Index] = e.Data
	}
	return nil
}
func (c *fakeVCPU) Kick()               { c.kick.Store(true) }
func (c *fakeVCPU) Stats() engine.Stats { return engine.Stats{Exits: c.runs.Load()} }
func (c *fakeVCPU) Close() error        { return nil }

func (c *fakeVCPU) Run() (*engine.Exit, error) {
	c.runs.Add(1)
	if c.vm.e.script != nil {
		if ex := c.vm.e.script(c.id, c.step); ex != nil {
			c.step++
			c.exit = *ex
			return &c.exit, nil
		}
	}
	word := c.vm.mem[counterBase+8*c.id:]
	for i := 0; ; i++ {
		// One Swap both sees and takes the kick: a separate Load before
		// it let a kick that landed between the two skip the delay.
		if c.kick.Swap(false) {
			if d := c.vm.e.slowKick[c.id]; d > 0 && !c.slowDone.Load() {
				// a vCPU slow to honour its kick: the delay is the
				// behaviour under test, not a wait for anything
				for kickedAt := time.Now(); time.Since(kickedAt) < d; {
					time.Sleep(time.Microsecond)
				}
				c.slowDone.Store(true)
			}
			c.exit = engine.Exit{Reason: engine.ExitIntr}
			return &c.exit, nil
		}
		binary.LittleEndian.PutUint64(word, binary.LittleEndian.Uint64(word)+1)
		c.regs.RIP++ // the "instruction pointer" advances with the work
		if i%64 == 63 {
			// "guest work" that yields the CPU now and then, so
			// that the fake's vCPUs do not starve the test on 2 cores
			time.Sleep(time.Microsecond)
		}
	}
}
