package e2e

import (
	"bytes"
	"debug/elf"
	_ "embed"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"klp-kvm/kvm"
)

//go:embed testdata/bootguest
var bootGuest []byte

func newMachine(t *testing.T, cpus int, cmdline string, console *Console) *kvm.Machine {
	t.Helper()
	return NewMachine(t, kvm.Config{CPUs: cpus, Kernel: bootGuest, Cmdline: cmdline, Console: console})
}

type result struct {
	code int
	err  error
}

func start(m *kvm.Machine) <-chan result {
	ch := make(chan result, 1)
	go func() { c, e := m.Run(); ch <- result{c, e} }()
	return ch
}

func waitResult(t *testing.T, ch <-chan result, m *kvm.Machine) result {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(120 * time.Second):
		m.Stop()
		t.Fatal("guest did not power off within 120 s")
		return result{}
	}
}

func symbol(t testing.TB, name string) uint64 {
	t.Helper()
	f, err := elf.NewFile(bytes.NewReader(bootGuest))
	if err != nil {
		t.Fatal(err)
	}
	syms, err := f.Symbols()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range syms {
		if s.Name == name {
			return s.Value
		}
	}
	t.Fatalf("no symbol %s in bootguest", name)
	return 0
}

// TestBoot boots the test guest on 1, 2 and 4 vCPUs: every vCPU comes up
// at the entry with its index, they meet at barriers, count with lock incq
// without losing an increment, and cpu 0 powers off with 42 after printing
// a checksum that must equal the host CPU's (the engine cross-check).
func TestBoot(t *testing.T) {
	for _, cpus := range []int{1, 2, 4} {
		t.Run(fmt.Sprintf("cpus=%d", cpus), func(t *testing.T) {
			var con Console
			m := newMachine(t, cpus, "loops=20000", &con)
			r := waitResult(t, start(m), m)
			if r.err != nil || r.code != 42 {
				t.Fatalf("Run = %d, %v; want 42 (console:\n%s)", r.code, r.err, con.String())
			}
			out := con.String()
			for i := 0; i < cpus; i++ {
				if !strings.Contains(out, fmt.Sprintf("cpu %d up\n", i)) {
					t.Errorf("no 'cpu %d up' line in console:\n%s", i, out)
				}
			}
			if want := fmt.Sprintf("counter %016x\n", 20000*cpus); !strings.Contains(out, want) {
				t.Errorf("console lacks %q:\n%s", want, out)
			}
			if want := fmt.Sprintf("checksum %016x\n", Checksum()); !strings.Contains(out, want) {
				t.Errorf("engine %s computed a different checksum: want %q in\n%s", m.EngineName(), want, out)
			}
		})
	}
}

// TestPauseResumeUnderLoad pauses the machine again and again while every
// vCPU hammers a shared counter: while paused the counter must not move
// and every vCPU's RIP must be inside the guest; at the end no increment
// may be lost.
func TestPauseResumeUnderLoad(t *testing.T) {
	var con Console
	const loops = 400000
	m := newMachine(t, 2, fmt.Sprintf("loops=%d", loops), &con)
	counter := symbol(t, "counter")
	loopsSym := symbol(t, "loops")
	ch := start(m)
	var seen []uint64
	for i := 0; i < 20; i++ {
		// Timing, not synchronisation: the vCPUs count between two
		// pauses, so that each pause lands somewhere else in the loop.
		time.Sleep(2 * time.Millisecond)
		if err := m.Pause(); err != nil {
			if errors.Is(err, kvm.ErrStopped) {
				break // the guest finished first
			}
			t.Fatal(err)
		}
		var a, b [8]byte
		if err := m.ReadVirt(counter, a[:]); err != nil {
			t.Fatal(err)
		}
		for id := 0; id < 2; id++ {
			r, err := m.Regs(id)
			if err != nil {
				t.Fatal(err)
			}
			if r.RIP < 0xffffffff81000000 || r.RIP >= 0xffffffff81001000 {
				t.Errorf("vCPU %d paused at RIP %#x, outside the guest text", id, r.RIP)
			}
		}
		// "the counter does not move while paused" has no condition
		// to wait for: look again after a while
		time.Sleep(time.Millisecond)
		m.ReadVirt(counter, b[:])
		if a != b {
			t.Fatalf("counter moved while paused: %x -> %x", a, b)
		}
		var l [8]byte
		m.ReadVirt(loopsSym, l[:])
		if v := le64(l[:]); v != 0 && v != loops {
			t.Fatalf("guest's parsed loops = %d, want %d", v, loops)
		}
		seen = append(seen, le64(a[:]))
		if err := m.Resume(); err != nil {
			t.Fatal(err)
		}
	}
	r := waitResult(t, ch, m)
	if r.err != nil || r.code != 42 {
		t.Fatalf("Run = %d, %v; want 42 (no lost increments); console:\n%s", r.code, r.err, con.String())
	}
	t.Logf("counter samples while paused: %v", seen)
	if info := m.Info(); info.Pauses == 0 {
		t.Error("no pause happened")
	}
}

func le64(b []byte) uint64 {
	var v uint64
	for i := 7; i >= 0; i-- {
		v = v<<8 | uint64(b[i])
	}
	return v
}

// TestBootGuestReproducible checks that the committed guest binary is what
// its source builds to, where binutils is installed.
func TestBootGuestReproducible(t *testing.T) {
	_, err1 := exec.LookPath("as")
	_, err2 := exec.LookPath("ld")
	if err1 != nil || err2 != nil {
		t.Skip("binutils (as, ld) not installed: cannot rebuild testdata/bootguest")
	}
	bin := filepath.Join(t.TempDir(), "bootguest")
	if out, err := exec.Command("testdata/build.sh", bin).CombinedOutput(); err != nil {
		t.Fatalf("testdata/build.sh: %v\n%s", err, out)
	}
	got, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, bootGuest) {
		t.Fatal("testdata/bootguest is stale: rebuild it (see the header of bootguest.S)")
	}
}
