package hw

import (
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"klp-kvm/kvm/engine"
)

// emulPage is a kvm_run page holding an emulation failure as Linux 5.15+
// reports it: flags, insn_size + insn_bytes, then 5 words of exit info.
func emulPage(insn []byte) []byte {
	p := runPage(kvmExitInternalError)
	le := binary.LittleEndian
	le.PutUint32(p[runIntSuberror:], kvmInternalErrorEmulation)
	if insn == nil {
		le.PutUint32(p[runIntNdata:], 0)
		return p
	}
	le.PutUint32(p[runIntNdata:], 8)
	le.PutUint64(p[runEmulFlags:], kvmEmulFlagInsnBytes)
	p[runEmulInsnSize] = byte(len(insn))
	for i := 0; i < maxInsnLen; i++ {
		p[runEmulInsnBytes+i] = 0x90 // KVM pads with NOPs
	}
	copy(p[runEmulInsnBytes:], insn)
	le.PutUint64(p[runIntData+3*8:], 0x1000)
	return p
}

func TestEmulationInsn(t *testing.T) {
	// The page kvm_pvm produced for the guest's int3 (data words as logged).
	p := runPage(kvmExitInternalError)
	le := binary.LittleEndian
	le.PutUint32(p[runIntSuberror:], 1)
	le.PutUint32(p[runIntNdata:], 8)
	for i, w := range []uint64{0x1, 0x89fffff4fde9cc0f, 0xd7e9ffffdf7ee8c7, 0x1000, 0, 0, 0, 0} {
		le.PutUint64(p[runIntData+8*i:], w)
	}
	if !isEmulationFailure(p) {
		t.Fatal("not recognised as an emulation failure")
	}
	insn := emulationInsn(p)
	if len(insn) != 15 || insn[0] != 0xcc || insn[1] != 0xe9 {
		t.Fatalf("insn % x", insn)
	}
	if cap(insn) != 15 {
		t.Errorf("insn capacity %d reaches past insn_bytes", cap(insn))
	}
	if decideEmulationFailure(insn) != emulInjectBP {
		t.Error("int3 not turned into #BP")
	}

	for _, c := range []struct {
		name string
		p    []byte
	}{
		{"no bytes (ndata 0)", emulPage(nil)},
		{"flag clear", func() []byte { p := emulPage([]byte{0xcc}); le.PutUint64(p[runEmulFlags:], 0); return p }()},
		{"ndata too small", func() []byte { p := emulPage([]byte{0xcc}); le.PutUint32(p[runIntNdata:], 2); return p }()},
		{"insn_size 0", func() []byte { p := emulPage([]byte{0xcc}); p[runEmulInsnSize] = 0; return p }()},
		{"insn_size 16", func() []byte { p := emulPage([]byte{0xcc}); p[runEmulInsnSize] = 16; return p }()},
		{"other suberror", func() []byte { p := emulPage([]byte{0xcc}); le.PutUint32(p[runIntSuberror:], 3); return p }()},
		{"other exit", func() []byte { p := emulPage([]byte{0xcc}); le.PutUint32(p[runExitReason:], kvmExitIO); return p }()},
	} {
		if got := emulationInsn(c.p); got != nil {
			t.Errorf("%s: insn % x, want none", c.name, got)
		}
	}
	if isEmulationFailure(emulPage(nil)) != true || isEmulationFailure(runPage(kvmExitHLT)) {
		t.Error("isEmulationFailure")
	}
}

func TestDecideEmulationFailure(t *testing.T) {
	for _, c := range []struct {
		insn []byte
		want emulAction
	}{
		{[]byte{0xcc}, emulInjectBP},
		{[]byte{0xcc, 0x90, 0x90}, emulInjectBP},
		{nil, emulFail},
		{[]byte{}, emulFail},
		{[]byte{0x0f, 0x0b}, emulFail},       // ud2
		{[]byte{0xcd, 0x03}, emulFail},       // int $3 is not int3: two bytes, and not ours to fake
		{[]byte{0x66, 0xcc}, emulFail},       // a prefixed int3 is not what KVM fails on
		{[]byte{0xf3, 0x0f, 0x1e}, emulFail}, // endbr64 fragment
	} {
		if got := decideEmulationFailure(c.insn); got != c.want {
			t.Errorf("% x: %v, want %v", c.insn, got, c.want)
		}
	}
}

func TestBPEntryRIP(t *testing.T) {
	// kvm_pvm pushes the vCPU's RIP: move it past the int3.
	if got := bpEntryRIP(0xffffffff81011bd5, false); got != 0xffffffff81011bd6 {
		t.Errorf("pvm convention: %#x", got)
	}
	// SVM decodes the int3 at RIP itself: leave RIP there.
	if got := bpEntryRIP(0xffffffff81011bd5, true); got != 0xffffffff81011bd5 {
		t.Errorf("vendor-skips convention: %#x", got)
	}
}

func TestEmulationFailureMessage(t *testing.T) {
	m := emulationFailureMessage(0xffffffff81000010, []byte{0x0f, 0x0b}, nil, "KVM_EXIT_INTERNAL_ERROR: suberror 1 (emulation failure), data 0x1")
	for _, want := range []string{"emulation failure at RIP 0xffffffff81000010", "instruction bytes 0f 0b", "data 0x1"} {
		if !strings.Contains(m, want) {
			t.Errorf("%q lacks %q", m, want)
		}
	}
	m = emulationFailureMessage(0x1000, nil, errors.New("0x1000 not mapped"), "")
	if !strings.Contains(m, "RIP 0x1000") || !strings.Contains(m, "unreadable: 0x1000 not mapped") {
		t.Errorf("%q", m)
	}
	if m = emulationFailureMessage(0x1000, nil, nil, ""); !strings.Contains(m, "no instruction bytes") {
		t.Errorf("%q", m)
	}
	// decodeExit alone still says what KVM said.
	var ex engine.Exit
	if err := decodeExit(emulPage([]byte{0x0f, 0x0b}), true, &ex); err != nil || ex.Reason != engine.ExitInternalError ||
		!strings.Contains(ex.Message, "emulation failure") {
		t.Errorf("decodeExit: %v %+v", err, ex)
	}
}
