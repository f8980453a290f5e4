package emu

import (
	"bytes"
	"errors"
	"strings"
	"syscall"
	"testing"

	"klp-kvm/internal/poll"
	"klp-kvm/kvm/engine"
)

func TestEngineAPI(t *testing.T) {
	e := New()
	if e.Name() != "emu" {
		t.Fatalf("name %q", e.Name())
	}
	if _, err := e.NewVM(make([]byte, 100)); !errors.Is(err, ErrInvalid) || !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("odd RAM size: %v", err)
	}
	vm, err := e.NewVM(make([]byte, 1<<20))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := vm.NewVCPU(-1); !errors.Is(err, ErrInvalid) {
		t.Fatalf("vCPU -1: %v", err)
	}
	c, err := vm.NewVCPU(0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := vm.NewVCPU(0); !errors.Is(err, ErrBusy) {
		t.Fatalf("duplicate vCPU: %v", err)
	}
	// Not in long mode yet: Run says so instead of guessing.
	ex, err := c.Run()
	if err != nil || ex.Reason != engine.ExitInternalError || !strings.Contains(ex.Message, "long mode") {
		t.Fatalf("run in reset state: %+v %v", ex, err)
	}
	msrs := []engine.MSR{{Index: engine.MSRX2APICID}, {Index: engine.MSRApicBase}, {Index: engine.MSREFER}}
	if err := c.GetMSRs(msrs); err != nil {
		t.Fatal(err)
	}
	if msrs[0].Data != 0 || msrs[1].Data&(apicBaseEN|apicBaseEXTD|apicBaseBSP) != apicBaseEN|apicBaseEXTD|apicBaseBSP {
		t.Fatalf("MSRs %+v", msrs)
	}
	if err := c.GetMSRs([]engine.MSR{{Index: 0xdead}}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("unknown MSR: %v", err)
	}
	if err := c.SetMSRs([]engine.MSR{{Index: engine.MSRLSTAR, Data: 0x8000_0000_0000_0000}}); err == nil {
		t.Fatal("non-canonical LSTAR accepted")
	}
	vm.Close()
	if _, err := vm.NewVCPU(1); !errors.Is(err, ErrClosed) {
		t.Fatalf("after close: %v", err)
	}
}

func TestRegsWhileRunningIsBusy(t *testing.T) {
	m := newMachine(t, "_start:\n1: jmp 1b\n", 1)
	c := m.cpus[0]
	type res struct {
		ex  *engine.Exit
		err error
	}
	done := make(chan res, 1)
	go func() { ex, err := c.Run(); done <- res{ex, err} }()
	t.Cleanup(c.Kick) // should the test stop before its own kick
	poll.Until(t, "Run to be executing", c.(*cpu).running.Load)
	if _, err := c.Regs(); !errors.Is(err, ErrBusy) {
		t.Errorf("Regs during Run: %v", err)
	}
	if _, err := c.Run(); !errors.Is(err, ErrBusy) {
		t.Errorf("concurrent Run: %v", err)
	}
	c.Kick()
	if r := <-done; r.err != nil || r.ex.Reason != engine.ExitIntr {
		t.Fatalf("exit %v %v", r.ex, r.err)
	}
}

func TestTrace(t *testing.T) {
	var buf bytes.Buffer
	m := newMachine(t, `
_start:
	int3
	mov $5, %eax
	`+done+`
vec_3:
	iretq
	`, 1, WithTrace(&buf), WithMaxBlock(1))
	if got := m.run(0); got != 5 {
		t.Fatal(got)
	}
	out := buf.String()
	for _, w := range []string{"cpu0 0x0000000000100000 int3", "cpu0 event INT 0x3 at RIP 0x100001",
		"cpu0 0x0000000000100001 mov $0x5,%eax", "iretq", "out %eax,(%dx)"} {
		if !strings.Contains(out, w) {
			t.Errorf("trace lacks %q:\n%s", w, out)
		}
	}
}

func TestImplemented(t *testing.T) {
	for _, tc := range []struct {
		code []byte
		n    int
		ok   bool
	}{
		{[]byte{0xf3, 0x0f, 0x1e, 0xfa}, 4, true},       // endbr64
		{[]byte{0x0f, 0x1f, 0x44, 0x00, 0x00}, 5, true}, // fentry NOP
		{[]byte{0xe8, 0, 0, 0, 0}, 5, true},             // call rel32 (a patched fentry site)
		{[]byte{0xff, 0x25, 0, 0, 0, 0}, 6, true},       // jmp *slot(%rip): klp_ops trampoline
		{[]byte{0x0f, 0x0b}, 2, true},                   // ud2
		{[]byte{0x0f, 0x28, 0xc1}, 3, false},            // movaps: no SSE
		{[]byte{0xd9, 0xe8}, 2, false},                  // fld1: no x87
		{[]byte{0xf0, 0x01, 0xc0}, 3, false},            // lock add to a register: invalid
		{[]byte{0x06}, 0, false},                        // push %es: invalid in 64-bit mode
		{[]byte{0x6c}, 1, true},                         // insb
	} {
		n, err := Implemented(tc.code)
		if (err == nil) != tc.ok || tc.ok && n != tc.n {
			t.Errorf("% x: n=%d err=%v, want n=%d ok=%v", tc.code, n, err, tc.n, tc.ok)
		}
	}
}

func TestUnimplementedRaisesUD(t *testing.T) {
	m := newMachine(t, `
_start:
	lea 1f(%rip), %r15
	movaps %xmm1, %xmm0          # no SSE: #UD, never a host panic
1:	mov count, %eax
	`+done+`
vec_6:
	incl count
	mov %r15, (%rsp)
	iretq
count: .long 0
	`, 1)
	if got := m.run(0); got != 1 {
		t.Fatalf("#UD count %d", got)
	}
}

// TestCompileNeverPanics decodes and compiles every 2-byte opcode
// combination (and 0f-prefixed 3-byte ones) under common prefixes.
func TestCompileNeverPanics(t *testing.T) {
	tail := []byte{0x44, 0x25, 0x08, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x11, 0x22}
	prefixes := [][]byte{nil, {0x48}, {0x66}, {0xf0}, {0xf3}, {0xf2}, {0x65}, {0x67}, {0x0f}, {0x48, 0x0f}, {0xf0, 0x0f}}
	n := 0
	for _, p := range prefixes {
		for b0 := 0; b0 < 256; b0++ {
			for b1 := 0; b1 < 256; b1 += 3 {
				code := append(append(append([]byte{}, p...), byte(b0), byte(b1)), tail...)
				if _, err := Implemented(code); err != nil && strings.Contains(err.Error(), "internal error") {
					t.Fatalf("% x: %v", code, err)
				}
				n++
			}
		}
	}
	t.Logf("%d encodings", n)
}
