package kvm

import (
	"bytes"
	"testing"
	"time"

	"klp-kvm/internal/poll"
	"klp-kvm/kvm/engine"
)

func TestUARTRegisters(t *testing.T) {
	var out []byte
	u := NewUART(func(c byte) { out = append(out, c) }, 4)
	if lsr := u.Read(uartLSR); lsr&lsrTHRE == 0 || lsr&lsrDR != 0 {
		t.Fatalf("idle LSR %#x", lsr)
	}
	u.Write(uartRBR, 'A')
	if string(out) != "A" {
		t.Fatalf("THR write: %q", out)
	}
	// DLAB switches offsets 0/1 to the divisor latch.
	u.Write(uartLCR, 0x83)
	u.Write(uartRBR, 0x01)
	u.Write(uartIER, 0x00)
	if u.Read(uartRBR) != 0x01 || string(out) != "A" {
		t.Fatal("divisor latch")
	}
	u.Write(uartLCR, 0x03)
	if u.Push([]byte("xy")) != 2 {
		t.Fatal("push")
	}
	if u.Read(uartLSR)&lsrDR == 0 || u.Read(uartRBR) != 'x' || u.Read(uartRBR) != 'y' {
		t.Fatal("receive")
	}
	if u.Read(uartLSR)&lsrDR != 0 {
		t.Fatal("DR after drain")
	}
	u.Write(uartSCR, 0x5a)
	if u.Read(uartSCR) != 0x5a {
		t.Fatal("scratch")
	}
	// Loopback (MCR bit 4) feeds THR back to RBR, which drivers use to probe.
	u.Write(uartMCR, 0x10)
	u.Write(uartRBR, 0x42)
	if u.Read(uartRBR) != 0x42 || string(out) != "A" {
		t.Fatal("loopback")
	}
}

func TestUARTBackpressure(t *testing.T) {
	u := NewUART(nil, 2)
	done := make(chan int)
	go func() { done <- u.Push([]byte("abcd")) }()
	// Once Push has filled the buffer it must block on the rest.
	poll.Until(t, "Push to fill the buffer", func() bool {
		u.mu.Lock()
		defer u.mu.Unlock()
		return len(u.rx) == 2
	})
	select {
	case <-done:
		t.Fatal("Push did not block on a full buffer")
	case <-time.After(10 * time.Millisecond):
		// a negative check ("Push has not returned"): no condition
		// to wait for, so look once after a while
	}
	var got []byte
	for len(got) < 4 {
		if u.Read(uartLSR)&lsrDR != 0 {
			got = append(got, u.Read(uartRBR))
		}
	}
	if n := <-done; n != 4 || string(got) != "abcd" {
		t.Fatalf("got %q n=%d", got, n)
	}
	go func() { done <- u.Push([]byte("xyz")) }()
	// Close only once Push has filled the buffer and blocks on the rest:
	// closing earlier would make it queue less than the 2 bytes checked.
	poll.Until(t, "Push to fill the buffer", func() bool {
		u.mu.Lock()
		defer u.mu.Unlock()
		return len(u.rx) == 2
	})
	u.Close()
	if n := <-done; n != 2 {
		t.Fatalf("Push after close queued %d", n)
	}
}

func TestHandleExitIO(t *testing.T) {
	var out bytes.Buffer
	b := &bus{com1: NewUART(func(c byte) { out.WriteByte(c) }, 16), com2: NewUART(nil, 16)}
	b.com2.Push([]byte{'z'})
	// IN from COM2 data register fills the data buffer.
	ex := &engine.Exit{Reason: engine.ExitIO, IO: engine.IOExit{Port: PortCOM2, Size: 1, Count: 1, Data: make([]byte, 1)}}
	if act, _, err := handleExit(b, ex, nil); act != actContinue || err != nil || ex.IO.Data[0] != 'z' {
		t.Fatalf("IN: %v %v %q", act, err, ex.IO.Data)
	}
	// IN from an unknown port reads all-ones.
	ex = &engine.Exit{Reason: engine.ExitIO, IO: engine.IOExit{Port: 0x60, Size: 2, Count: 1, Data: make([]byte, 2)}}
	handleExit(b, ex, nil)
	if ex.IO.Data[0] != 0xff || ex.IO.Data[1] != 0xff || b.unknownPorts.Load() != 1 {
		t.Fatal("unknown port")
	}
	// String OUT (rep outsb) of 3 bytes.
	ex = &engine.Exit{Reason: engine.ExitIO, IO: engine.IOExit{Port: PortCOM1, Size: 1, Out: true, Count: 3, Data: []byte("abc")}}
	handleExit(b, ex, nil)
	if out.String() != "abc" {
		t.Fatalf("string out %q", out.String())
	}
	// Power-off with a negative code.
	ex = &engine.Exit{Reason: engine.ExitIO, IO: engine.IOExit{Port: PortPowerOff, Size: 4, Out: true, Count: 1, Data: []byte{0xff, 0xff, 0xff, 0xff}}}
	if act, code, _ := handleExit(b, ex, nil); act != actPowerOff || code != -1 {
		t.Fatalf("poweroff %v %d", act, code)
	}
	// A malformed exit from an engine is an error, not a panic.
	ex = &engine.Exit{Reason: engine.ExitIO, IO: engine.IOExit{Port: PortCOM1, Size: 4, Data: []byte{1}}}
	if act, _, err := handleExit(b, ex, nil); act != actFail || err == nil {
		t.Fatal("malformed I/O exit accepted")
	}
	if act, _, _ := handleExit(b, &engine.Exit{Reason: engine.ExitIntr}, nil); act != actPause {
		t.Fatal("intr")
	}
}
