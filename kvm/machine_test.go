package kvm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"klp-kvm/guestkernel/layout"
	"klp-kvm/internal/poll"
	"klp-kvm/kvm/engine"
)

// testELF builds a minimal ELF64 x86-64 executable with one PT_LOAD segment
// at paddr 16 MiB holding code, and a symbol table naming one function.
func testELF(t testing.TB, mutate func(hdr []byte)) []byte {
	t.Helper()
	le := binary.LittleEndian
	code := []byte{0xf4, 0xeb, 0xfd} // hlt; jmp .-3
	const vaddr, paddr = 0xffffffff81000000, 0x1000000
	// Layout: ehdr(64) phdr(56) code strtab symtab shstrtab shdrs.
	var b bytes.Buffer
	b.Write(make([]byte, 64+56))
	codeOff := b.Len()
	b.Write(code)
	strOff := b.Len()
	b.Write([]byte("\x00boot_entry\x00"))
	for b.Len()%8 != 0 {
		b.WriteByte(0)
	}
	symOff := b.Len()
	sym := make([]byte, 48)
	le.PutUint32(sym[24:], 1)       // st_name
	sym[24+4] = 0x12                // STB_GLOBAL, STT_FUNC
	le.PutUint16(sym[24+6:], 1)     // st_shndx: .text
	le.PutUint64(sym[24+8:], vaddr) // st_value
	le.PutUint64(sym[24+16:], 3)    // st_size
	b.Write(sym)
	shstrOff := b.Len()
	b.Write([]byte("\x00.text\x00.strtab\x00.symtab\x00.shstrtab\x00"))
	for b.Len()%8 != 0 {
		b.WriteByte(0)
	}
	shOff := b.Len()
	sh := func(name, typ uint32, flags, addr, off, size uint64, link, info uint32, align, entsize uint64) {
		s := make([]byte, 64)
		le.PutUint32(s[0:], name)
		le.PutUint32(s[4:], typ)
		le.PutUint64(s[8:], flags)
		le.PutUint64(s[16:], addr)
		le.PutUint64(s[24:], off)
		le.PutUint64(s[32:], size)
		le.PutUint32(s[40:], link)
		le.PutUint32(s[44:], info)
		le.PutUint64(s[48:], align)
		le.PutUint64(s[56:], entsize)
		b.Write(s)
	}
	sh(0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
	sh(1, 1, 6, vaddr, uint64(codeOff), uint64(len(code)), 0, 0, 16, 0)
	sh(7, 3, 0, 0, uint64(strOff), 12, 0, 0, 1, 0)
	sh(15, 2, 0, 0, uint64(symOff), 48, 2, 1, 8, 24)
	sh(23, 3, 0, 0, uint64(shstrOff), 33, 0, 0, 1, 0)
	out := b.Bytes()
	h := out[:64]
	copy(h, "\x7fELF\x02\x01\x01")
	le.PutUint16(h[16:], 2)  // ET_EXEC
	le.PutUint16(h[18:], 62) // EM_X86_64
	le.PutUint32(h[20:], 1)
	le.PutUint64(h[24:], vaddr)
	le.PutUint64(h[32:], 64) // phoff
	le.PutUint64(h[40:], uint64(shOff))
	le.PutUint16(h[52:], 64)
	le.PutUint16(h[54:], 56)
	le.PutUint16(h[56:], 1)
	le.PutUint16(h[58:], 64)
	le.PutUint16(h[60:], 5)
	le.PutUint16(h[62:], 4)
	p := out[64:120]
	le.PutUint32(p[0:], 1) // PT_LOAD
	le.PutUint32(p[4:], 5)
	le.PutUint64(p[8:], uint64(codeOff))
	le.PutUint64(p[16:], vaddr)
	le.PutUint64(p[24:], paddr)
	le.PutUint64(p[32:], uint64(len(code)))
	le.PutUint64(p[40:], 0x1000)
	le.PutUint64(p[48:], 0x1000)
	if mutate != nil {
		mutate(out)
	}
	return out
}

func newFakeMachine(t *testing.T, cpus int, script func(id, step int) *engine.Exit, console *bytes.Buffer) *Machine {
	t.Helper()
	cfg := Config{Engine: &fakeEngine{script: script}, CPUs: cpus, Kernel: testELF(t, nil), Cmdline: "console=ttyS0 klp.test=1"}
	if console != nil {
		cfg.Console = console
	}
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func startMachine(t *testing.T, m *Machine) (wait func() (int, error)) {
	t.Helper()
	type res struct {
		code int
		err  error
	}
	ch := make(chan res, 1)
	go func() { c, e := m.Run(); ch <- res{c, e} }()
	poll.Until(t, "the machine to start", func() bool { return m.Info().UptimeNS != 0 })
	return func() (int, error) {
		select {
		case r := <-ch:
			return r.code, r.err
		case <-time.After(10 * time.Second):
			t.Fatal("machine did not stop")
			return 0, nil
		}
	}
}

// waitRunning waits until every listed vCPU has made progress from its
// counter value in from (nil: from 0).
func (m *Machine) waitRunning(t testing.TB, from map[int]uint64, ids ...int) {
	t.Helper()
	for _, id := range ids {
		poll.Until(t, fmt.Sprintf("vCPU %d to run", id), func() bool { return m.counter(id) > from[id] })
	}
}

func (m *Machine) counter(id int) uint64 {
	return binary.LittleEndian.Uint64(m.ram[counterBase+8*id:])
}

func TestBootState(t *testing.T) {
	m := newFakeMachine(t, 2, nil, nil)
	// boot_info is where RDI points, with the command line and layout.
	bi := m.ram[layout.BootInfoPhys:]
	if got := binary.LittleEndian.Uint64(bi); got != BootInfoMagic {
		t.Fatalf("boot_info magic %#x", got)
	}
	if n := binary.LittleEndian.Uint32(bi[16:]); n != 2 {
		t.Errorf("nr_cpus = %d, want 2", n)
	}
	if got := string(bi[80 : 80+len("console=ttyS0 klp.test=1")]); got != "console=ttyS0 klp.test=1" {
		t.Errorf("cmdline %q", got)
	}
	for id, v := range m.vcpus {
		r, _ := v.cpu.Regs()
		if r.RIP != layout.KernelLinkVirt || r.RDI != layout.BootInfoPhys || r.RSI != uint64(id) || r.RFLAGS != 2 {
			t.Errorf("vCPU %d entry regs %+v", id, r)
		}
		s, _ := v.cpu.Sregs()
		if s.CR3 != pml4Addr || s.EFER&0x500 != 0x500 || s.CS.L != 1 {
			t.Errorf("vCPU %d not in long mode: %+v", id, s)
		}
	}
	// The kernel image is loaded at its paddr and reachable through the
	// high map; the patch area through its own mapping.
	var code [3]byte
	if err := m.ReadVirt(0xffffffff81000000, code[:]); err != nil || code != [3]byte{0xf4, 0xeb, 0xfd} {
		t.Fatalf("kernel via high map: %x %v", code, err)
	}
	tr, err := m.Translate(layout.PatchAreaVirt + 0x1234)
	if err != nil || tr.Phys != m.layout.PatchAreaPhys+0x1234 {
		t.Fatalf("patch area translation %+v %v", tr, err)
	}
	if tr, err := m.Translate(0x5000); err != nil || tr.Phys != 0x5000 || tr.PageSize != 2<<20 {
		t.Fatalf("identity map %+v %v", tr, err)
	}
	if _, err := m.Translate(0x7fff_0000_0000); !errors.Is(err, ErrFault) {
		t.Fatalf("unmapped address: %v", err)
	}
	if got := m.kernel.Symbolize(0xffffffff81000001); got != "boot_entry+0x1" {
		t.Errorf("Symbolize = %q", got)
	}
}

func TestPauseResume(t *testing.T) {
	m := newFakeMachine(t, 2, nil, nil)
	wait := startMachine(t, m)
	m.waitRunning(t, nil, 0, 1)
	if err := m.Pause(); err != nil {
		t.Fatal(err)
	}
	c0, c1 := m.counter(0), m.counter(1)
	// Nothing may happen while paused: no condition to wait for, so look
	// again after a while.
	time.Sleep(5 * time.Millisecond)
	if m.counter(0) != c0 || m.counter(1) != c1 {
		t.Fatalf("vCPUs ran while paused")
	}
	for i := range 2 {
		if st := m.vcpus[i].State(); st != StatePaused {
			t.Errorf("vCPU %d state %v while paused", i, st)
		}
	}
	r, err := m.Regs(1)
	if err != nil || r.RIP < 0xffffffff81000000 {
		t.Fatalf("Regs while paused: %+v %v", r, err)
	}
	all, err := m.PausedRegs()
	if err != nil || len(all) != 2 || all[1] != r {
		t.Fatalf("PausedRegs %+v %v, want vCPU 1 = %+v", all, err, r)
	}
	// Nested pause: needs two resumes.
	if err := m.Pause(); err != nil {
		t.Fatal(err)
	}
	if err := m.Resume(); err != nil {
		t.Fatal(err)
	}
	if !m.Paused() {
		t.Fatal("inner Resume unpaused the machine")
	}
	if err := m.Resume(); err != nil {
		t.Fatal(err)
	}
	m.waitRunning(t, map[int]uint64{0: c0, 1: c1}, 0, 1)
	if err := m.Resume(); !errors.Is(err, ErrNotPaused) {
		t.Fatalf("Resume without Pause: %v", err)
	}
	if _, err := m.PausedRegs(); !errors.Is(err, ErrNotPaused) {
		t.Fatalf("PausedRegs while running: %v", err)
	}
	if _, err := m.Regs(0); !errors.Is(err, ErrNotPaused) {
		t.Fatalf("Regs while running: %v", err)
	}
	m.Stop()
	if code, err := wait(); code != 0 || err != nil {
		t.Fatalf("Stop: %d %v", code, err)
	}
	if err := m.Pause(); !errors.Is(err, ErrStopped) {
		t.Fatalf("Pause after stop: %v", err)
	}
}

// Concurrent Pause/Resume pairs from many goroutines: every caller sees the
// machine paused between its Pause and Resume (run with -race).
func TestPauseConcurrent(t *testing.T) {
	m := newFakeMachine(t, 4, nil, nil)
	wait := startMachine(t, m)
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				if err := m.Pause(); err != nil {
					t.Error(err)
					return
				}
				c := m.counter(i % 4)
				// "the counter does not move" has no condition to
				// wait for: look again after a moment
				time.Sleep(10 * time.Microsecond)
				if m.counter(i%4) != c {
					t.Error("counter moved while paused")
				}
				if err := m.Resume(); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	m.Stop()
	wait()
}

func TestPowerOffAndConsole(t *testing.T) {
	var console bytes.Buffer
	script := func(id, step int) *engine.Exit {
		if id != 0 {
			return nil
		}
		out := func(port uint16, size uint8, data ...byte) *engine.Exit {
			return &engine.Exit{Reason: engine.ExitIO, IO: engine.IOExit{Port: port, Size: size, Out: true, Count: 1, Data: data}}
		}
		switch step {
		case 0:
			return out(PortCOM1, 1, 'h')
		case 1:
			return out(PortCOM1, 1, 'i')
		case 2:
			return out(0x80, 1, 0) // unknown port: counted, not fatal
		case 3:
			return out(PortPowerOff, 4, 7, 0, 0, 0)
		}
		return nil
	}
	m := newFakeMachine(t, 2, script, &console)
	code, err := startMachine(t, m)()
	if err != nil || code != 7 {
		t.Fatalf("Run = %d, %v; want 7, nil", code, err)
	}
	if console.String() != "hi" {
		t.Fatalf("console %q", console.String())
	}
	if n := m.Info().UnknownPorts; n != 1 {
		t.Fatalf("unknown port accesses %d", n)
	}
}

func TestShutdownNamesSymbol(t *testing.T) {
	script := func(id, step int) *engine.Exit {
		if id == 1 && step == 0 {
			return &engine.Exit{Reason: engine.ExitShutdown, RIP: 0xffffffff81000002, Message: "#GP during #DF"}
		}
		return nil
	}
	m := newFakeMachine(t, 2, script, nil)
	_, err := startMachine(t, m)()
	if !errors.Is(err, ErrGuest) || !strings.Contains(err.Error(), "boot_entry+0x2") || !strings.Contains(err.Error(), "0xffffffff81000002") {
		t.Fatalf("shutdown error %v", err)
	}
}

func TestAllHalted(t *testing.T) {
	script := func(id, step int) *engine.Exit {
		if step == 0 {
			return &engine.Exit{Reason: engine.ExitHLT}
		}
		return nil
	}
	m := newFakeMachine(t, 2, script, nil)
	_, err := startMachine(t, m)()
	if !errors.Is(err, ErrGuest) || !strings.Contains(err.Error(), "halted") {
		t.Fatalf("all halted: %v", err)
	}
}

func TestBadKernels(t *testing.T) {
	le := binary.LittleEndian
	cases := []struct {
		name   string
		image  []byte
		memMiB int
		want   string
	}{
		{"not ELF", []byte("MZ this is not an ELF file at all........................................"), 0, "not an ELF"},
		{"empty", nil, 0, "not an ELF"},
		{"32-bit", testELF(t, func(b []byte) { b[4] = 1 }), 0, ""},
		{"wrong machine", testELF(t, func(b []byte) { le.PutUint16(b[18:], 3) }), 0, "EM_X86_64"},
		{"relocatable", testELF(t, func(b []byte) { le.PutUint16(b[16:], 1) }), 0, "ET_EXEC"},
		{"truncated", testELF(t, nil)[:0x79], 0, ""},
		{"segment beyond file", testELF(t, func(b []byte) { le.PutUint64(b[64+32:], 1<<20); le.PutUint64(b[64+40:], 1<<20) }), 0, "beyond"},
		{"segment outside RAM", testELF(t, func(b []byte) { le.PutUint64(b[64+24:], 200<<20) }), 64, "outside"},
		{"segment in boot area", testELF(t, func(b []byte) { le.PutUint64(b[64+24:], 0x2000) }), 0, "boot area"},
		{"segment in patch area", testELF(t, func(b []byte) { le.PutUint64(b[64+24:], 120<<20) }), 0, "patch area"},
		{"filesz > memsz", testELF(t, func(b []byte) { le.PutUint64(b[64+40:], 1) }), 0, "filesz"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m, err := New(Config{Engine: &fakeEngine{}, Kernel: c.image, MemMiB: c.memMiB})
			if err == nil {
				m.Close()
				t.Fatal("accepted")
			}
			if !errors.Is(err, ErrBadKernel) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want ErrBadKernel containing %q", err, c.want)
			}
		})
	}
}

func TestConfigErrors(t *testing.T) {
	for _, cfg := range []Config{
		{CPUs: 1},
		{Engine: &fakeEngine{}, CPUs: 65},
		{Engine: &fakeEngine{}, MemMiB: 16},
		{Engine: &fakeEngine{}, PatchAreaMiB: 3},
		{Engine: &fakeEngine{}, Cmdline: strings.Repeat("x", 2000)},
	} {
		cfg.Kernel = testELF(t, nil)
		if m, err := New(cfg); !errors.Is(err, ErrConfig) {
			if m != nil {
				m.Close()
			}
			t.Errorf("config %+v: %v", cfg, err)
		}
	}
}

func TestWriteVirtAllOrNothing(t *testing.T) {
	m := newFakeMachine(t, 1, nil, nil)
	// A write whose tail runs off the end of the patch area mapping must
	// write nothing at all.
	end := layout.PatchAreaVirt + m.layout.PatchAreaSize
	buf := bytes.Repeat([]byte{0xcc}, 16)
	if err := m.WriteVirt(end-8, buf); !errors.Is(err, ErrFault) {
		t.Fatalf("write across the end: %v", err)
	}
	var got [8]byte
	m.ReadPhys(m.layout.PatchAreaPhys+m.layout.PatchAreaSize-8, got[:])
	if got != [8]byte{} {
		t.Fatalf("partial write happened: %x", got)
	}
	if err := m.WriteVirt(end-8, buf[:8]); err != nil {
		t.Fatal(err)
	}
	if m.vm.(*fakeVM).changed.Load() != 8 {
		t.Fatal("engine not told about the write")
	}
}

// A vCPU that does not stop in time fails Pause with an error naming it,
// and the machine goes on running (the others were resumed).
func TestPauseDeadline(t *testing.T) {
	cfg := Config{Engine: &fakeEngine{slowKick: map[int]time.Duration{1: 300 * time.Millisecond}}, CPUs: 2,
		Kernel: testELF(t, nil), PauseDeadline: 30 * time.Millisecond}
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	wait := startMachine(t, m)
	m.waitRunning(t, nil, 1) // vCPU 1 must be inside Run to be slow to stop
	err = m.Pause()
	if !errors.Is(err, ErrPauseTimeout) || !strings.Contains(err.Error(), "vCPU 1") || strings.Contains(err.Error(), "vCPU 0") {
		t.Fatalf("Pause with a slow vCPU: %v", err)
	}
	if m.Paused() {
		t.Fatal("machine left paused after a failed Pause")
	}
	m.waitRunning(t, map[int]uint64{0: m.counter(0)}, 0) // vCPU 0 was resumed after the failed Pause
	slow := m.vcpus[1].cpu.(*fakeVCPU)
	poll.Until(t, "the slow vCPU to honour its kick", slow.slowDone.Load)
	// Now every vCPU stops promptly. The deadline is short (30 ms), and a
	// loaded host may miss it for reasons of its own: a timeout is retried,
	// but a machine that never pauses again fails.
	for try := 1; ; try++ {
		err := m.Pause()
		if err == nil {
			break
		}
		if !errors.Is(err, ErrPauseTimeout) || try == 5 {
			t.Fatalf("Pause after the slow vCPU caught up (attempt %d): %v", try, err)
		}
		t.Logf("attempt %d: %v (host loaded?), again", try, err)
	}
	m.Resume()
	m.Stop()
	wait()
}
