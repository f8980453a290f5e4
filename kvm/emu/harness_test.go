package emu

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"klp-kvm/internal/poll"
	"klp-kvm/kvm/engine"
)

// Guest memory layout of the test machine.
const (
	tPML4     = 0x1000
	tPDPT     = 0x2000
	tPD       = 0x3000
	tPT       = 0x4000 // 4 KiB page table for VA 0x3fe00000..0x40000000, initially empty
	tGDT      = 0x5000
	tTSS      = 0x6000
	tIDT      = 0x7000
	tStackTop = 0x90000 // vCPU n's stack top is tStackTop - n*0x4000
	tISTTop   = 0x98000 // IST1 stack (for #DF)
	tCode     = 0x100000
	tRAM      = 8 << 20
	tPortDone = 0xf4 // OUT here ends the test program with EAX as result
)

// guestProg is an assembled test program.
type guestProg struct {
	code []byte
	syms map[string]uint64
}

var asmCache = map[string]*guestProg{}

// assemble builds AT&T-syntax source with GNU as/ld, linked at tCode.
func assemble(t testing.TB, src string) *guestProg {
	t.Helper()
	if p := asmCache[src]; p != nil {
		return p
	}
	if _, err := exec.LookPath("as"); err != nil {
		t.Skip("GNU as not installed")
	}
	if _, err := exec.LookPath("ld"); err != nil {
		t.Skip("GNU ld not installed")
	}
	dir := t.TempDir()
	s := filepath.Join(dir, "p.S")
	full := ".code64\n.text\n.globl _start\n" + src + "\n"
	if err := os.WriteFile(s, []byte(full), 0o644); err != nil {
		t.Fatal(err)
	}
	run := func(name string, args ...string) {
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s\nsource:\n%s", name, err, out, numbered(full))
		}
	}
	run("as", "--64", "-o", filepath.Join(dir, "p.o"), s)
	run("ld", "-m", "elf_x86_64", "-static", "-nostdlib", "-N", "-Ttext", fmt.Sprintf("%#x", tCode), "-e", "_start",
		"-o", filepath.Join(dir, "p.elf"), filepath.Join(dir, "p.o"))
	f, err := elf.Open(filepath.Join(dir, "p.elf"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p := &guestProg{syms: map[string]uint64{}}
	for _, prog := range f.Progs {
		if prog.Type != elf.PT_LOAD || prog.Filesz == 0 {
			continue
		}
		if prog.Vaddr < tCode {
			t.Fatalf("segment at %#x below %#x", prog.Vaddr, tCode)
		}
		b := make([]byte, prog.Filesz)
		if _, err := prog.ReadAt(b, 0); err != nil {
			t.Fatal(err)
		}
		end := prog.Vaddr - tCode + uint64(len(b))
		for uint64(len(p.code)) < end {
			p.code = append(p.code, 0)
		}
		copy(p.code[prog.Vaddr-tCode:], b)
	}
	syms, _ := f.Symbols()
	for _, sy := range syms {
		p.syms[sy.Name] = sy.Value
	}
	asmCache[src] = p
	return p
}

func numbered(s string) string {
	var b strings.Builder
	for i, l := range strings.Split(s, "\n") {
		fmt.Fprintf(&b, "%3d %s\n", i+1, l)
	}
	return b.String()
}

// machine is a test VM: RAM with page tables, GDT, TSS, IDT and a program.
type machine struct {
	t     testing.TB
	ram   []byte
	vm    engine.VM
	cpus  []engine.VCPU
	prog  *guestProg
	ioLog []ioRecord
	inVal func(port uint16) uint32 // value for IN, nil = 0

	timedOut atomic.Bool
}

type ioRecord struct {
	port uint16
	val  uint64
	size uint8
}

func put64(b []byte, off uint64, v uint64) { binary.LittleEndian.PutUint64(b[off:], v) }

// newMachine builds a long-mode machine running src on ncpu vCPUs.
// Symbols named vec_N become IDT handlers for vector N (interrupt gates;
// vec_8 uses IST1), trap_N trap gates. Every vCPU starts at _start with RDI = its id.
func newMachine(t testing.TB, src string, ncpu int, opts ...Option) *machine {
	t.Helper()
	return newMachineProg(t, assemble(t, src), ncpu, opts...)
}

func newMachineProg(t testing.TB, p *guestProg, ncpu int, opts ...Option) *machine {
	t.Helper()
	return newMachineRAM(t, p, ncpu, tRAM, opts...)
}

func newMachineRAM(t testing.TB, p *guestProg, ncpu int, ramSize int, opts ...Option) *machine {
	t.Helper()
	m := &machine{t: t, ram: make([]byte, ramSize), prog: p}
	copy(m.ram[tCode:], p.code)
	// Identity map of the first GiB with 2 MiB pages; the last 2 MiB of it
	// through a 4 KiB table that starts empty (for #PF tests).
	put64(m.ram, tPML4, tPDPT|7)
	put64(m.ram, tPDPT, tPD|7)
	put64(m.ram, tPDPT+8, 0x83) // VA 1 GiB..2 GiB -> PA 0 with one 1 GiB page
	for i := uint64(0); i < 511; i++ {
		put64(m.ram, tPD+i*8, i<<21|0x83)
	}
	put64(m.ram, tPD+511*8, tPT|3)
	// GDT: null, 64-bit code 0x08, data 0x10, TSS 0x18 (16 bytes).
	put64(m.ram, tGDT, 0)
	put64(m.ram, tGDT+8, 0x00af9a000000ffff)
	put64(m.ram, tGDT+16, 0x00cf92000000ffff)
	tss := uint64(tTSS)
	put64(m.ram, tGDT+24, 0x67|(tss&0xffffff)<<16|0x89<<40|(tss>>24&0xff)<<56)
	put64(m.ram, tGDT+32, tss>>32)
	put64(m.ram, tGDT+40, 0x00affa000000ffff) // 0x28: user code (DPL 3)
	put64(m.ram, tGDT+48, 0x00cff2000000ffff) // 0x30: user data (DPL 3)
	put64(m.ram, tTSS+4, tStackTop)           // RSP0
	put64(m.ram, tTSS+0x24, tISTTop)          // IST1
	for name, addr := range p.syms {
		var vec int
		gateType := uint64(0x8e) // present, DPL 0, 64-bit interrupt gate
		if _, err := fmt.Sscanf(name, "trap_%d", &vec); err == nil {
			gateType = 0x8f // trap gate: IF stays set
		} else if _, err := fmt.Sscanf(name, "vec_%d", &vec); err != nil {
			continue
		}
		if vec < 0 || vec > 255 {
			continue
		}
		ist := uint64(0)
		if vec == 8 {
			ist = 1
		}
		lo := addr&0xffff | 8<<16 | ist<<32 | gateType<<40 | (addr>>16&0xffff)<<48
		put64(m.ram, tIDT+uint64(vec)*16, lo)
		put64(m.ram, tIDT+uint64(vec)*16+8, addr>>32)
	}
	eng := New(opts...)
	vm, err := eng.NewVM(m.ram)
	if err != nil {
		t.Fatal(err)
	}
	m.vm = vm
	code := engine.Segment{Selector: 8, Type: 11, Present: 1, S: 1, L: 1, G: 1, Limit: 0xffffffff}
	data := engine.Segment{Selector: 0x10, Type: 3, Present: 1, S: 1, DB: 1, G: 1, Limit: 0xffffffff}
	for id := 0; id < ncpu; id++ {
		c, err := vm.NewVCPU(id)
		if err != nil {
			t.Fatal(err)
		}
		sr := engine.Sregs{CS: code, DS: data, ES: data, SS: data, FS: data, GS: data,
			TR:   engine.Segment{Selector: 0x18, Base: tTSS, Limit: 0x67, Type: 11, Present: 1},
			LDT:  engine.Segment{Unusable: 1},
			GDT:  engine.DTable{Base: tGDT, Limit: 55},
			IDT:  engine.DTable{Base: tIDT, Limit: 0xfff},
			CR0:  0x80050033,
			CR3:  tPML4,
			CR4:  0x220,
			EFER: 0xd00,
		}
		if err := c.SetSregs(sr); err != nil {
			t.Fatal(err)
		}
		if err := c.SetRegs(engine.Regs{RIP: p.syms["_start"], RSP: tStackTop - uint64(id)*0x4000, RFLAGS: 2, RDI: uint64(id)}); err != nil {
			t.Fatal(err)
		}
		m.cpus = append(m.cpus, c)
	}
	t.Cleanup(func() { vm.Close() })
	return m
}

func (m *machine) sym(name string) uint64 {
	v, ok := m.prog.syms[name]
	if !ok {
		m.t.Fatalf("no symbol %q", name)
	}
	return v
}

// run runs vCPU id until the program writes the done port, and returns
// the value written. Other OUTs are logged; INs get m.inVal.
func (m *machine) run(id int) uint64 {
	m.t.Helper()
	c := m.cpus[id]
	watchdog := time.AfterFunc(20*time.Second, func() { m.timedOut.Store(true); c.Kick() })
	defer watchdog.Stop()
	for i := 0; i < 1_000_000; i++ {
		if m.timedOut.Load() {
			r, _ := c.Regs()
			m.t.Fatalf("vCPU %d: program did not finish in 20 s (regs %+v)", id, r)
		}
		ex, err := c.Run()
		if err != nil {
			m.t.Fatalf("Run: %v", err)
		}
		switch ex.Reason {
		case engine.ExitIO:
			var v uint64
			for j := len(ex.IO.Data) - 1; j >= 0; j-- {
				v = v<<8 | uint64(ex.IO.Data[j])
			}
			if !ex.IO.Out {
				var in uint32
				if m.inVal != nil {
					in = m.inVal(ex.IO.Port)
				}
				for j := range ex.IO.Data {
					ex.IO.Data[j] = byte(in >> (8 * j))
				}
				continue
			}
			if ex.IO.Port == tPortDone {
				return v
			}
			m.ioLog = append(m.ioLog, ioRecord{ex.IO.Port, v, ex.IO.Size})
		case engine.ExitIntr:
		default:
			r, _ := c.Regs()
			m.t.Fatalf("vCPU %d: unexpected exit %v at %#x: %s (regs %+v)", id, ex.Reason, ex.RIP, ex.Message, r)
		}
	}
	m.t.Fatal("program did not finish")
	return 0
}

// runExit runs until an exit other than Intr and returns it.
func (m *machine) runExit(id int) *engine.Exit {
	m.t.Helper()
	c := m.cpus[id]
	watchdog := time.AfterFunc(20*time.Second, func() { m.timedOut.Store(true); c.Kick() })
	defer watchdog.Stop()
	for {
		if m.timedOut.Load() {
			m.t.Fatalf("vCPU %d: no exit in 20 s", id)
		}
		ex, err := m.cpus[id].Run()
		if err != nil {
			m.t.Fatalf("Run: %v", err)
		}
		if ex.Reason != engine.ExitIntr {
			return ex
		}
	}
}

func (m *machine) regs(id int) engine.Regs {
	r, err := m.cpus[id].Regs()
	if err != nil {
		m.t.Fatal(err)
	}
	return r
}

func (m *machine) u64(addr uint64) uint64 { return binary.LittleEndian.Uint64(m.ram[addr:]) }

var _ = bytes.Equal

// kickRunning kicks c once its Run has been executing for d, and returns a
// function that cancels the kick if it has not happened (call it after Run
// returned). A timer started before Run, as the kick tests had, may fire
// before Run executes on a loaded host: the kick is then left pending and
// the next Run returns at once having run nothing, which those tests took
// for a kick mid-loop, mid-REP or in HLT. d itself is timing, not
// synchronisation: how far the guest gets before the kick.
func kickRunning(c engine.VCPU, d time.Duration) (cancel func()) {
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		executing := poll.Wait(poll.Timeout, func() bool {
			select {
			case <-stop:
				return true
			default:
				return c.(*cpu).running.Load()
			}
		})
		if !executing {
			return
		}
		select {
		case <-stop:
		case <-time.After(d):
			c.Kick()
		}
	}()
	return func() { close(stop); <-done }
}
