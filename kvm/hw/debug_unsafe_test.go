package hw

import (
	"testing"
	"unsafe"

	"klp-kvm/kvm/engine"
)

func TestGuestDebugABI(t *testing.T) {
	if s := unsafe.Sizeof(kvmGuestDebug{}); s != sizeofKvmGuestDebug {
		t.Fatalf("struct kvm_guest_debug is %d bytes, kernel has %d", s, sizeofKvmGuestDebug)
	}
	if off := unsafe.Offsetof(kvmGuestDebug{}.Debugreg); off != 8 {
		t.Fatalf("kvm_guest_debug.arch at %d, kernel has 8", off)
	}
	// _IOW(KVMIO, 0x9b, struct kvm_guest_debug) from linux/kvm.h
	if ioctlSetGuestDebug != 0x4048ae9b {
		t.Fatalf("KVM_SET_GUEST_DEBUG = %#x, kernel has 0x4048ae9b", ioctlSetGuestDebug)
	}
}

func TestGuestDebugEncoding(t *testing.T) {
	d, err := guestDebug([]uint64{0xffffffff81000010, 0xffffffff81000020})
	if err != nil {
		t.Fatal(err)
	}
	if d.Control != kvmGuestdbgEnable|kvmGuestdbgUseHWBP {
		t.Fatalf("control %#x", d.Control)
	}
	// G0 (bit 1) and G1 (bit 3), GE (bit 9), bit 10 reads as one; R/W and
	// LEN of both are 00: instruction execution, as the SDM requires.
	if d.Debugreg[0] != 0xffffffff81000010 || d.Debugreg[1] != 0xffffffff81000020 || d.Debugreg[7] != 0x60a {
		t.Fatalf("debugreg %#x", d.Debugreg)
	}
	if d, err := guestDebug(nil); err != nil || d != (kvmGuestDebug{}) {
		t.Fatalf("disarm: %+v %v", d, err)
	}
	if _, err := guestDebug(make([]uint64, engine.MaxBreakpoints+1)); err == nil {
		t.Fatal("five breakpoints accepted")
	}
}

func TestDecodeDebugExit(t *testing.T) {
	run := make([]byte, runMinSize)
	le32(run[runExitReason:], kvmExitDebug)
	le32(run[runDebugException:], 1)
	le64(run[runDebugPC:], 0xffffffff81000010)
	var ex engine.Exit
	if err := decodeExit(run, false, &ex); err != nil || ex.Reason != engine.ExitDebug || ex.RIP != 0xffffffff81000010 {
		t.Fatalf("%+v %v", ex, err)
	}
	le32(run[runDebugException:], 3)
	if err := decodeExit(run, false, &ex); err != nil || ex.Reason != engine.ExitInternalError {
		t.Fatalf("a #BP debug exit must not look like our breakpoint: %+v %v", ex, err)
	}
}

func le32(b []byte, v uint32) { b[0], b[1], b[2], b[3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24) }
func le64(b []byte, v uint64) { le32(b, uint32(v)); le32(b[4:], uint32(v>>32)) }
