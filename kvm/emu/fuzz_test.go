package emu

import (
	"strings"
	"testing"
	"time"

	"klp-kvm/kvm/engine"
)

// fuzzHandler is what every IDT vector points to in FuzzExec:
// mov $0xf4,%dx; out %eax,%dx; hlt.
var fuzzHandler = []byte{0x66, 0xba, 0xf4, 0x00, 0xef, 0xf4}

const fuzzHandlerAddr = 0x8000

// FuzzExec runs random bytes as guest code. Whatever the bytes do (fault,
// triple-fault, loop, rewrite page tables or themselves, do I/O), the host
// must not crash or hang, and the interpreter must not hit an internal bug
// (a recovered Go panic is reported as "interpreter bug").
func FuzzExec(f *testing.F) {
	f.Add([]byte{0x90, 0xeb, 0xfe})                            // nop; jmp .
	f.Add([]byte{0x0f, 0x0b})                                  // ud2
	f.Add([]byte{0x48, 0x31, 0xc0, 0x48, 0xf7, 0xf0})          // div by zero
	f.Add([]byte{0xfb, 0xf4})                                  // sti; hlt
	f.Add([]byte{0xf3, 0x48, 0xab, 0xc3})                      // rep stosq; ret
	f.Add([]byte{0x0f, 0x01, 0x18, 0xcc})                      // lidt (%rax); int3
	f.Add([]byte{0x48, 0x8b, 0x04, 0x25, 0, 0, 0, 0x40, 0xc3}) // load from the MMIO range
	f.Fuzz(func(t *testing.T, code []byte) {
		if len(code) > 4096 {
			code = code[:4096]
		}
		p := &guestProg{code: code, syms: map[string]uint64{"_start": tCode}}
		m := newMachineRAM(t, p, 1, 2<<20) // small RAM: cheap to allocate per run
		copy(m.ram[fuzzHandlerAddr:], fuzzHandler)
		for v := uint64(0); v < 256; v++ {
			put64(m.ram, tIDT+v*16, fuzzHandlerAddr&0xffff|8<<16|0x8e<<40|(fuzzHandlerAddr>>16)<<48)
			put64(m.ram, tIDT+v*16+8, 0)
		}
		// Make registers point at RAM so memory operands often hit it.
		c := m.cpus[0]
		r, _ := c.Regs()
		r.RAX, r.RBX, r.RCX, r.RSI, r.RDI, r.RBP = 0x180000, 0x181000, 16, 0x182000, 0x183000, 0x184000
		c.SetRegs(r)
		kick := time.AfterFunc(2*time.Millisecond, c.Kick)
		defer kick.Stop()
		deadline := time.Now().Add(5 * time.Second)
		for i := 0; i < 10000; i++ {
			if time.Now().After(deadline) {
				t.Fatal("Run did not honour the kick within 5 s")
			}
			ex, err := c.Run()
			if err != nil {
				t.Fatal(err)
			}
			switch ex.Reason {
			case engine.ExitIO, engine.ExitMMIO:
				continue
			case engine.ExitInternalError:
				if strings.Contains(ex.Message, "interpreter bug") {
					t.Fatalf("code % x: %s", code, ex.Message)
				}
			}
			return
		}
	})
}
