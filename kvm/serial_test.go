package kvm

import (
	"bytes"
	"runtime"
	"sync/atomic"
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

// uartOp is one step of a register-level script: a guest write, a guest
// read whose value is ignored, or host input.
type uartOp struct {
	kind byte // 'w' write, 'r' read, 'p' push, 'n' v THR writes of 0..v-1
	reg  uint16
	v    byte
	data string
}

func wr(reg uint16, v byte) uartOp { return uartOp{kind: 'w', reg: reg, v: v} }
func rd(reg uint16) uartOp         { return uartOp{kind: 'r', reg: reg} }
func push(s string) uartOp         { return uartOp{kind: 'p', data: s} }

func runOps(u *UART, ops []uartOp) {
	for _, op := range ops {
		switch op.kind {
		case 'w':
			u.Write(op.reg, op.v)
		case 'r':
			u.Read(op.reg)
		case 'p':
			u.Push([]byte(op.data))
		case 'n':
			for i := range op.v {
				u.Write(uartRBR, i)
			}
		}
	}
}

// TestUARTDatasheet checks register semantics against the TI/National
// PC16550D datasheet: reset values (table 5 "UART reset configuration"),
// which bits exist (table 2 "summary of registers"), DLAB, FCR, the
// interrupt identification codes and their reset conditions (table 4),
// LSR and MSR bits and how reading them clears them, and loopback (MCR4).
func TestUARTDatasheet(t *testing.T) {
	for _, tc := range []struct {
		name string
		ops  []uartOp
		reg  uint16
		want byte
	}{
		// Reset state. MSR's inputs read a line that is always ready.
		{"reset IER", nil, uartIER, 0x00},
		{"reset IIR: no interrupt, FIFOs off", nil, uartIIR, 0x01},
		{"reset LCR", nil, uartLCR, 0x00},
		{"reset MCR", nil, uartMCR, 0x00},
		{"reset LSR: THRE and TEMT", nil, uartLSR, 0x60},
		{"reset MSR: DCD DSR CTS, no deltas", nil, uartMSR, 0xb0},
		{"reset SCR", nil, uartSCR, 0x00},
		// Which bits exist.
		{"IER bits 7:4 are 0", []uartOp{wr(uartIER, 0xff)}, uartIER, 0x0f},
		{"MCR bits 7:5 are 0", []uartOp{wr(uartMCR, 0xef)}, uartMCR, 0x0f},
		{"LCR is read/write", []uartOp{wr(uartLCR, 0x5b)}, uartLCR, 0x5b},
		{"SCR holds a byte", []uartOp{wr(uartSCR, 0xa5)}, uartSCR, 0xa5},
		// DLAB.
		{"DLAB: offset 0 is DLL", []uartOp{wr(uartLCR, 0x80), wr(0, 0x0c), wr(1, 0x01)}, 0, 0x0c},
		{"DLAB: offset 1 is DLM", []uartOp{wr(uartLCR, 0x80), wr(0, 0x0c), wr(1, 0x01)}, 1, 0x01},
		{"DLAB: THR write is a DLL write, not a loopback byte", []uartOp{wr(uartMCR, 0x10), wr(uartLCR, 0x80), wr(0, 0x42), wr(uartLCR, 0x03)}, uartLSR, 0x60},
		{"DLAB: IER kept behind DLM", []uartOp{wr(uartIER, 0x05), wr(uartLCR, 0x80), wr(1, 0x12), wr(uartLCR, 0)}, uartIER, 0x05},
		{"DLAB: IIR still at offset 2", []uartOp{wr(uartIIR, 0x01), wr(uartLCR, 0x80)}, uartIIR, 0xc1},
		// FCR, seen through IIR bits 7:6.
		{"FCR0 enables FIFOs: IIR 7:6 = 11", []uartOp{wr(uartIIR, 0x01)}, uartIIR, 0xc1},
		{"FCR0 clear disables FIFOs", []uartOp{wr(uartIIR, 0x01), wr(uartIIR, 0x00)}, uartIIR, 0x01},
		{"other FCR bits need FCR0", []uartOp{wr(uartIIR, 0xc6)}, uartIIR, 0x01},
		{"IIR 5:4 are 0 (no 64-byte FIFO)", []uartOp{wr(uartIIR, 0x21)}, uartIIR, 0xc1},
		{"FCR1 clears the receive FIFO", []uartOp{wr(uartIIR, 0x01), push("ab"), wr(uartIIR, 0x03)}, uartLSR, 0x60},
		{"FCR2 leaves the receive FIFO", []uartOp{wr(uartIIR, 0x01), push("ab"), wr(uartIIR, 0x05)}, uartLSR, 0x61},
		{"changing FCR0 clears the FIFOs", []uartOp{push("ab"), wr(uartIIR, 0x01)}, uartLSR, 0x60},
		{"rewriting FCR0 keeps them", []uartOp{wr(uartIIR, 0x01), push("ab"), wr(uartIIR, 0xc1)}, uartLSR, 0x61},
		// LSR.
		{"LSR0: data ready", []uartOp{push("a")}, uartLSR, 0x61},
		{"LSR0 clears with the last byte", []uartOp{push("a"), rd(uartRBR)}, uartLSR, 0x60},
		{"LSR1: loopback overrun of the 16-byte FIFO", []uartOp{wr(uartIIR, 0x01), wr(uartMCR, 0x10), wr17()}, uartLSR, 0x63},
		{"LSR1 clears on read", []uartOp{wr(uartIIR, 0x01), wr(uartMCR, 0x10), wr17(), rd(uartLSR)}, uartLSR, 0x61},
		{"16450 mode: one-byte RBR overruns", []uartOp{wr(uartMCR, 0x10), wr(0, 'x'), wr(0, 'y')}, uartLSR, 0x63},
		{"16450 mode: overrun overwrites RBR", []uartOp{wr(uartMCR, 0x10), wr(0, 'x'), wr(0, 'y')}, uartRBR, 'y'},
		{"FIFO mode: overrun keeps the FIFO", []uartOp{wr(uartIIR, 0x01), wr(uartMCR, 0x10), wr17()}, uartRBR, 0},
		// MSR and loopback: CTS=RTS, DSR=DTR, RI=OUT1, DCD=OUT2.
		{"loopback RTS|OUT2 -> CTS|DCD (Linux's test)", []uartOp{wr(uartMCR, 0x1a), rd(uartMSR)}, uartMSR, 0x90},
		{"loopback DTR|OUT1 -> DSR|RI", []uartOp{wr(uartMCR, 0x15), rd(uartMSR)}, uartMSR, 0x60},
		{"entering loopback sets DCTS DDSR DDCD", []uartOp{wr(uartMCR, 0x10)}, uartMSR, 0x0b},
		{"MSR deltas clear on read", []uartOp{wr(uartMCR, 0x10), rd(uartMSR)}, uartMSR, 0x00},
		{"TERI on RI's trailing edge", []uartOp{wr(uartMCR, 0x14), rd(uartMSR), wr(uartMCR, 0x10)}, uartMSR, 0x04},
		{"no TERI on RI's leading edge", []uartOp{wr(uartMCR, 0x10), rd(uartMSR), wr(uartMCR, 0x14)}, uartMSR, 0x40},
		{"leaving loopback: line ready again", []uartOp{wr(uartMCR, 0x10), wr(uartMCR, 0x00), rd(uartMSR)}, uartMSR, 0xb0},
		{"loopback: THR comes back in RBR", []uartOp{wr(uartMCR, 0x10), wr(0, 0x42)}, uartRBR, 0x42},
		// Interrupt identification (table 4).
		{"IIR 0x04: data, 16450 mode", []uartOp{wr(uartIER, 0x01), push("a")}, uartIIR, 0x04},
		{"IIR 0xc4: data at the trigger level (1)", []uartOp{wr(uartIIR, 0x01), wr(uartIER, 0x01), push("a")}, uartIIR, 0xc4},
		{"IIR 0xcc: below the trigger level (8): timeout", []uartOp{wr(uartIIR, 0x81), wr(uartIER, 0x01), push("1234567")}, uartIIR, 0xcc},
		{"IIR 0xc4: at the trigger level (8)", []uartOp{wr(uartIIR, 0x81), wr(uartIER, 0x01), push("12345678")}, uartIIR, 0xc4},
		{"IIR 0xc4: trigger level 14", []uartOp{wr(uartIIR, 0xc1), wr(uartIER, 0x01), push("12345678901234")}, uartIIR, 0xc4},
		{"IIR 0xcc: 13 bytes under trigger 14", []uartOp{wr(uartIIR, 0xc1), wr(uartIER, 0x01), push("1234567890123")}, uartIIR, 0xcc},
		{"IIR 0xc4: trigger level 4", []uartOp{wr(uartIIR, 0x41), wr(uartIER, 0x01), push("1234")}, uartIIR, 0xc4},
		{"data without ERBFI: no interrupt", []uartOp{push("a")}, uartIIR, 0x01},
		{"IIR 0x02: ETBEI with THR empty", []uartOp{wr(uartIER, 0x02)}, uartIIR, 0x02},
		{"IIR read clears THRE", []uartOp{wr(uartIER, 0x02), rd(uartIIR)}, uartIIR, 0x01},
		{"THR write sets THRE again", []uartOp{wr(uartIER, 0x02), rd(uartIIR), wr(0, 'a')}, uartIIR, 0x02},
		{"ETBEI off and on again: THRE again", []uartOp{wr(uartIER, 0x02), rd(uartIIR), wr(uartIER, 0), wr(uartIER, 0x02)}, uartIIR, 0x02},
		{"ETBEI written again while on: no new THRE", []uartOp{wr(uartIER, 0x02), rd(uartIIR), wr(uartIER, 0x02)}, uartIIR, 0x01},
		{"IIR 0x06: line status (ELSI, OE)", []uartOp{wr(uartIER, 0x04), wr(uartMCR, 0x10), wr(0, 1), wr(0, 2)}, uartIIR, 0x06},
		{"LSR read clears the line status interrupt", []uartOp{wr(uartIER, 0x04), wr(uartMCR, 0x10), wr(0, 1), wr(0, 2), rd(uartLSR)}, uartIIR, 0x01},
		{"IIR 0x00: modem status (EDSSI, deltas)", []uartOp{wr(uartIER, 0x08), wr(uartMCR, 0x10)}, uartIIR, 0x00},
		{"MSR read clears the modem status interrupt", []uartOp{wr(uartIER, 0x08), wr(uartMCR, 0x10), rd(uartMSR)}, uartIIR, 0x01},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := NewUART(nil, 64)
			runOps(u, tc.ops)
			if got := u.Read(tc.reg); got != tc.want {
				t.Errorf("register %d = %#02x, want %#02x", tc.reg, got, tc.want)
			}
		})
	}
}

// wr17 writes the 17 THR bytes 0..16: in loopback, one more than the
// receive FIFO holds.
func wr17() uartOp { return uartOp{kind: 'n', v: 17} }

// irqLog records the interrupt output's calls. The UART calls it with its
// mutex held, so the appends are serialized; read it when no UART method
// runs, or through the UART's own ordering (tests below).
type irqLog struct{ calls []bool }

func (l *irqLog) set(level bool) { l.calls = append(l.calls, level) }

func (l *irqLog) want(t *testing.T, step string, want ...bool) {
	t.Helper()
	if len(l.calls) != len(want) {
		t.Fatalf("%s: line calls %v, want %v", step, l.calls, want)
	}
	for i := range want {
		if l.calls[i] != want[i] {
			t.Fatalf("%s: line calls %v, want %v", step, l.calls, want)
		}
	}
}

func newIRQUART(rxMax int) (*UART, *irqLog) {
	u := NewUART(nil, rxMax)
	l := &irqLog{}
	u.SetIRQ(l.set)
	return u, l
}

func TestUARTInterruptRX(t *testing.T) {
	u, l := newIRQUART(64)
	u.Write(uartMCR, mcrOUT2)
	u.Write(uartIER, ierERBFI)
	l.want(t, "enable", nil...)
	u.Push([]byte("hi"))
	l.want(t, "push", true)
	if !u.IRQLevel() {
		t.Fatal("IRQLevel false with the line raised")
	}
	if iir := u.Read(uartIIR); iir != iirRDI {
		t.Fatalf("IIR %#x", iir)
	}
	if u.Read(uartRBR) != 'h' {
		t.Fatal("first byte")
	}
	l.want(t, "one byte left", true)
	if u.Read(uartRBR) != 'i' {
		t.Fatal("second byte")
	}
	l.want(t, "RBR drained", true, false)
	// Input arriving with ERBFI off raises nothing until ERBFI is set;
	// clearing ERBFI lowers the line with the data still there.
	u.Write(uartIER, 0)
	u.Push([]byte("x"))
	l.want(t, "push, ERBFI off", true, false)
	u.Write(uartIER, ierERBFI)
	l.want(t, "ERBFI on", true, false, true)
	u.Write(uartIER, 0)
	l.want(t, "ERBFI off", true, false, true, false)
	// Clearing the receive FIFO clears the condition.
	u.Write(uartIER, ierERBFI)
	u.Write(uartIIR, fcrEnable|fcrClearRx)
	l.want(t, "FIFO clear", true, false, true, false, true, false)
	if u.Read(uartLSR)&lsrDR != 0 {
		t.Fatal("DR after FIFO clear")
	}
}

func TestUARTInterruptTHRE(t *testing.T) {
	var out []byte
	u := NewUART(func(c byte) { out = append(out, c) }, 64)
	l := &irqLog{}
	u.SetIRQ(l.set)
	u.Write(uartMCR, mcrOUT2|mcrDTR|mcrRTS)
	u.Write(uartIER, ierETBEI)
	l.want(t, "ETBEI on with THR empty", true)
	if iir := u.Read(uartIIR); iir != iirTHRI {
		t.Fatalf("IIR %#x", iir)
	}
	l.want(t, "IIR read of the THRE source", true, false)
	if iir := u.Read(uartIIR); iir != iirNoInt {
		t.Fatalf("IIR after clear %#x", iir)
	}
	// A THR write clears THRE and, the byte gone at once, sets it again:
	// a rising edge.
	u.Write(uartRBR, 'a')
	l.want(t, "THR write", true, false, true)
	// With THRE pending, the write's clear and set show as a pulse: a
	// fresh edge for an edge-triggered interrupt controller.
	u.Write(uartRBR, 'b')
	l.want(t, "THR write while pending", true, false, true, false, true)
	// No pulse while another source holds the line up.
	u.Write(uartIER, ierETBEI|ierERBFI)
	u.Push([]byte("r"))
	u.Write(uartRBR, 'c')
	l.want(t, "THR write with RX pending", true, false, true, false, true)
	u.Read(uartRBR)
	u.Write(uartIER, 0)
	l.want(t, "ETBEI off", true, false, true, false, true, false)
	if string(out) != "abc" {
		t.Fatalf("out %q", out)
	}
}

func TestUARTInterruptPriority(t *testing.T) {
	u, l := newIRQUART(64)
	// All four sources at once: 16450 mode loopback, two THR bytes into
	// the one-byte RBR (overrun: line status, and data), THRE, and the
	// modem status deltas of entering loopback.
	u.Write(uartMCR, mcrLoop)
	u.Write(uartRBR, 'a')
	u.Write(uartRBR, 'b')
	u.Write(uartIER, 0x0f)
	for i, want := range []byte{iirRLSI, iirRDI, iirTHRI, iirMSI, iirNoInt} {
		if iir := u.Read(uartIIR); iir != want {
			t.Fatalf("step %d: IIR %#x, want %#x", i, iir, want)
		}
		// Service the source IIR named, as a driver would.
		switch want {
		case iirRLSI:
			if lsr := u.Read(uartLSR); lsr != lsrOE|lsrDR|lsrTHRE|lsrTEMT {
				t.Fatalf("LSR %#x", lsr)
			}
		case iirRDI:
			if c := u.Read(uartRBR); c != 'b' {
				t.Fatalf("RBR %q after overrun", c)
			}
		case iirTHRI: // the IIR read cleared it
		case iirMSI:
			if msr := u.Read(uartMSR); msr != msrDCTS|msrDDSR|msrDDCD {
				t.Fatalf("MSR %#x", msr)
			}
		}
	}
	// Loopback keeps the line low whatever is pending (OUT2's pin is
	// forced inactive).
	l.want(t, "loopback", nil...)
}

func TestUARTInterruptOUT2(t *testing.T) {
	u, l := newIRQUART(64)
	u.Write(uartIER, ierETBEI|ierERBFI)
	u.Write(uartMCR, mcrDTR|mcrRTS) // what klp-kvm's polled guest writes
	u.Push([]byte("z"))
	if iir := u.Read(uartIIR); iir != iirRDI {
		t.Fatalf("IIR %#x: the condition is pending inside", iir)
	}
	l.want(t, "OUT2 low", nil...)
	u.Write(uartMCR, mcrOUT2)
	l.want(t, "OUT2 high", true)
	u.Write(uartMCR, mcrOUT2|mcrLoop)
	l.want(t, "loopback", true, false)
	// The loopback's modem-status deltas are not enabled (EDSSI off).
	u.Write(uartMCR, mcrOUT2)
	l.want(t, "loopback off", true, false, true)
	u.Write(uartMCR, 0)
	l.want(t, "OUT2 low again", true, false, true, false)
	// SetIRQ on a UART whose line is up reports it at once.
	u.Write(uartMCR, mcrOUT2)
	l2 := &irqLog{}
	u.SetIRQ(l2.set)
	l2.want(t, "SetIRQ with the line up", true)
	l.want(t, "old callback", true, false, true, false, true)
}

// TestUARTPushRaisesWhileBlocked: input from a host goroutine raises the
// line even when Push then has to wait for room, so an interrupt-driven
// guest drains the buffer and Push completes.
func TestUARTPushRaisesWhileBlocked(t *testing.T) {
	u := NewUART(nil, 4)
	raised := make(chan struct{}, 1)
	u.SetIRQ(func(level bool) {
		if level {
			select {
			case raised <- struct{}{}:
			default:
			}
		}
	})
	u.Write(uartMCR, mcrOUT2)
	u.Write(uartIER, ierERBFI)
	msg := []byte("a message longer than the buffer")
	done := make(chan int)
	go func() { done <- u.Push(msg) }()
	var got []byte
	for len(got) < len(msg) {
		select {
		case <-raised:
		case <-time.After(poll.Timeout):
			t.Fatalf("no interrupt after %q", got)
		}
		// The handler: IIR names received data; read while DR.
		for u.Read(uartIIR)&iirRDI != 0 {
			for u.Read(uartLSR)&lsrDR != 0 {
				got = append(got, u.Read(uartRBR))
			}
		}
	}
	if n := <-done; n != len(msg) || string(got) != string(msg) {
		t.Fatalf("got %q, Push queued %d", got, n)
	}
	if u.IRQLevel() {
		t.Fatal("line still up with nothing pending")
	}
}

// TestUARTConcurrent runs Push on host goroutines against an
// interrupt-driven reader and a transmitting vCPU (go test -race): every
// byte arrives once and in order, and the line's calls alternate, starting
// with a rise and ending low.
func TestUARTConcurrent(t *testing.T) {
	var out atomic.Int64
	u := NewUART(func(byte) { out.Add(1) }, 16)
	l := &irqLog{}
	u.SetIRQ(l.set)
	u.Write(uartIIR, fcrEnable|0x80) // trigger level 8: both RX IDs occur
	u.Write(uartMCR, mcrOUT2)
	u.Write(uartIER, ierERBFI|ierELSI)
	const n = 20000
	var want []byte
	for i := range n {
		want = append(want, byte(i*7))
	}
	pushed := make(chan int)
	go func() {
		total := 0
		for i := 0; i < n; {
			m := min(1+i%23, n-i)
			total += u.Push(want[i : i+m])
			i += m
		}
		pushed <- total
	}()
	const txN = 5000
	txDone := make(chan struct{})
	go func() { // a second vCPU, transmitting and polling LSR
		for range txN {
			for u.Read(uartLSR)&lsrTHRE == 0 {
			}
			u.Write(uartRBR, 'x')
		}
		close(txDone)
	}()
	var got []byte
	deadline := time.Now().Add(poll.Timeout)
	for len(got) < n {
		if time.Now().After(deadline) {
			t.Fatalf("received %d of %d bytes", len(got), n)
		}
		if !u.IRQLevel() {
			runtime.Gosched()
			continue
		}
		for {
			iir := u.Read(uartIIR)
			if iir&iirNoInt != 0 {
				break
			}
			if iir&0x0f != iirRDI && iir&0x0f != iirTimeout {
				t.Fatalf("IIR %#x", iir)
			}
			for u.Read(uartLSR)&lsrDR != 0 {
				got = append(got, u.Read(uartRBR))
			}
		}
	}
	if total := <-pushed; total != n {
		t.Fatalf("Push queued %d", total)
	}
	<-txDone
	if !bytes.Equal(got, want) {
		t.Fatal("received bytes differ from those pushed")
	}
	if out.Load() != txN {
		t.Fatalf("transmitted %d", out.Load())
	}
	u.mu.Lock()
	calls := l.calls
	u.mu.Unlock()
	if len(calls) == 0 || len(calls)%2 != 0 {
		t.Fatalf("%d line calls", len(calls))
	}
	for i, c := range calls {
		if c != (i%2 == 0) {
			t.Fatalf("line call %d is %v: calls do not alternate", i, c)
		}
	}
	t.Logf("%d bytes in, %d out, %d interrupts", n, txN, len(calls)/2)
}

// FuzzUART drives the UART with arbitrary guest accesses and host input
// (the guest is untrusted): it must never panic, and the interrupt output
// must follow the registers: calls alternate, and the level is the pending
// condition gated by OUT2 and loopback. Each input byte pair is an access:
// op&0x0f picks the register and reads or writes, op>>4==0xf pushes.
func FuzzUART(f *testing.F) {
	f.Add([]byte{0x11, 0x0f, 0x14, 0x08, 0xf0, 'a', 0x02, 0, 0x00, 0})
	f.Add([]byte{0x14, 0x1a, 0x06, 0, 0x12, 0x01, 0x10, 'x', 0x10, 'y', 0x05, 0})
	f.Add([]byte{0x12, 0xc1, 0x11, 0x01, 0x14, 0x08, 0xf0, '1', 0xf0, '2', 0x02, 0, 0x00, 0})
	f.Fuzz(func(t *testing.T, script []byte) {
		var calls []bool
		u := NewUART(func(byte) {}, 32)
		u.SetIRQ(func(level bool) { calls = append(calls, level) })
		for i := 0; i+1 < len(script); i += 2 {
			op, v := script[i], script[i+1]
			reg := uint16(op & 7)
			switch {
			case op>>4 == 0xf:
				// Push waits while the buffer is full or the guest is
				// in loopback: push only when it would not.
				u.mu.Lock()
				room := len(u.rx) < u.rxMax && u.mcr&mcrLoop == 0
				u.mu.Unlock()
				if room {
					u.Push([]byte{v})
				}
			case op&0x10 != 0:
				u.Write(reg, v)
			default:
				got := u.Read(reg)
				switch {
				case reg == uartIIR && got&0x30 != 0:
					t.Fatalf("IIR %#x: bits 5:4 set", got)
				case reg == uartLSR && got&(lsrTHRE|lsrTEMT) != lsrTHRE|lsrTEMT:
					t.Fatalf("LSR %#x: transmitter not empty", got)
				case reg == uartMCR && got > 0x1f:
					t.Fatalf("MCR %#x", got)
				case reg == uartIER && u.Read(uartLCR)&lcrDLAB == 0 && got > 0x0f:
					t.Fatalf("IER %#x", got)
				}
			}
			u.mu.Lock()
			want := u.pending() != iirNoInt && u.mcr&mcrOUT2 != 0 && u.mcr&mcrLoop == 0
			line := u.line
			u.mu.Unlock()
			if line != want {
				t.Fatalf("access %d: line %v, pending %v", i/2, line, want)
			}
		}
		for i, c := range calls {
			if c != (i%2 == 0) {
				t.Fatalf("line calls %v do not alternate", calls)
			}
		}
	})
}
