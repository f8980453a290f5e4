package kvm

import "sync"

// UART is a register model of a National/TI 16550A (PC16550D datasheet) as
// both a polled driver (klp-kvm's own guest kernel) and Linux's interrupt
// driven 8250 driver see it: THR/RBR, IER, IIR/FCR, LCR (with DLAB), MCR
// (with loopback), LSR, MSR, SCR and the divisor latch, the FIFO control
// that makes Linux's autoconfig detect a 16550A, and an interrupt output.
//
// It has no timing. A byte written to THR is handed to out at once, so THR
// and the transmitter are always empty again by the time the guest looks
// (LSR.THRE and LSR.TEMT always set, and a THRE interrupt is due again after
// every THR write). Received data that sits below the FIFO's trigger level
// reports the character timeout interrupt at once, as if the four character
// times had passed. No line errors or breaks are ever received (LSR's PE,
// FE, BI and bit 7 stay 0; LCR's break bit is kept but sends nothing); OE
// comes only from loopback.
//
// It is pure: the host feeds input with Push and is handed output through
// the out callback and the interrupt line through the callback set with
// SetIRQ. Safe for concurrent use: Push from host goroutines, Read and Write
// from vCPU threads.
//
// Receive side: host input queues in rx, bounded by rxMax (Push waits while
// it is full, so host input never overruns); rx is the receive FIFO and the
// wire behind it in one. Clearing the receive FIFO (FCR) drops all of it,
// so a host message sent before the guest's driver reset the port is lost
// whole rather than cut. In loopback mode (MCR.LOOP) the serial input is
// disconnected: Push waits until the guest leaves loopback, and THR bytes
// come back through a receive FIFO of the hardware's depth (16 bytes, or 1
// with FIFOs off), overrunning (LSR.OE) when it is full.
type UART struct {
	mu     sync.Mutex
	out    func(byte) // called with mu held; must not call back into the UART
	irq    func(bool) // called with mu held; must not call back into the UART
	line   bool       // the interrupt output's level as last computed
	rx     []byte     // pending input, bounded by rxMax
	rxMax  int        // at least 1
	space  *sync.Cond // signalled when rx drains or loopback ends (Push waits)
	closed bool
	ier    byte // bits 3:0 only
	lcr    byte
	mcr    byte // bits 4:0 only
	fcr    byte // FIFO enable, DMA mode and trigger level as last programmed
	lsrErr byte // latched LSR error bits (OE), cleared by reading LSR
	msr    byte // modem inputs (7:4) and their deltas (3:0)
	thri   bool // the THRE interrupt's latch (datasheet table 4, "THRE")
	scr    byte
	dll    byte
	dlm    byte
}

// 16550 register offsets (from the port base).
const (
	uartRBR = 0 // RBR on read, THR on write; DLL with DLAB
	uartIER = 1 // DLM with DLAB
	uartIIR = 2 // FCR on write
	uartLCR = 3
	uartMCR = 4
	uartLSR = 5
	uartMSR = 6
	uartSCR = 7
)

// Register bits, with the datasheet's (and Linux's serial_reg.h) names.
const (
	ierERBFI = 0x01 // received data available
	ierETBEI = 0x02 // transmitter holding register empty
	ierELSI  = 0x04 // receiver line status
	ierEDSSI = 0x08 // modem status

	iirNoInt   = 0x01 // no interrupt pending
	iirMSI     = 0x00 // modem status (priority 4)
	iirTHRI    = 0x02 // THR empty (priority 3)
	iirRDI     = 0x04 // received data available (priority 2)
	iirRLSI    = 0x06 // receiver line status (priority 1, highest)
	iirTimeout = 0x0c // character timeout (priority 2, FIFO mode)
	iirFIFOs   = 0xc0 // bits 7:6 set: FIFOs enabled (a 16550A; 10 was the 16550)

	fcrEnable   = 0x01
	fcrClearRx  = 0x02
	fcrClearTx  = 0x04
	fcrTrigMask = 0xc0

	lcrDLAB = 0x80

	mcrDTR  = 0x01
	mcrRTS  = 0x02
	mcrOUT1 = 0x04
	mcrOUT2 = 0x08 // gates the interrupt line on PC hardware
	mcrLoop = 0x10

	lsrDR   = 0x01 // data ready
	lsrOE   = 0x02 // overrun error
	lsrTHRE = 0x20 // transmit holding register empty
	lsrTEMT = 0x40 // transmitter empty

	msrDCTS  = 0x01
	msrDDSR  = 0x02
	msrTERI  = 0x04 // trailing edge of RI
	msrDDCD  = 0x08
	msrDelta = 0x0f
	msrCTS   = 0x10
	msrDSR   = 0x20
	msrRI    = 0x40
	msrDCD   = 0x80

	// msrReady is what the modem inputs read outside loopback: a line
	// that is always ready (CTS, DSR, DCD), no ring.
	msrReady = msrCTS | msrDSR | msrDCD

	uartFIFODepth = 16
)

// rxTrigger is the receive FIFO trigger level for FCR bits 7:6.
var rxTrigger = [4]int{1, 4, 8, 14}

// NewUART returns a UART whose transmitted bytes go to out, with an input
// buffer of rxMax bytes (at least 1). Its registers are in their reset
// state (FIFOs off, no interrupts enabled, OUT2 low) and it has no
// interrupt output until SetIRQ.
func NewUART(out func(byte), rxMax int) *UART {
	u := &UART{out: out, rxMax: max(rxMax, 1), msr: msrReady}
	u.space = sync.NewCond(&u.mu)
	return u
}

// SetIRQ sets the interrupt output: irq is called with the line's new level
// each time it changes, true when an enabled interrupt condition becomes
// pending while MCR.OUT2 is set (and the UART is not in loopback, where the
// OUT2 pin is forced inactive), false when that no longer holds. It is
// level-triggered at this boundary: one call per change, never two calls
// with the same level in a row. The only pulse inside one register access
// is the hardware's own: a THR write while THRE alone holds the line up
// lowers and raises it (see Write). If the line is already high,
// irq(true) is called before SetIRQ returns.
//
// irq is called with the UART's mutex held, from whichever goroutine made
// the change (a vCPU thread in Read or Write, a host goroutine in Push), so
// that the calls arrive in the order of the changes. It must therefore not
// call any method of this UART, directly or by waiting on a goroutine that
// does; it should only assert or deassert the line (e.g. KVM_IRQ_LINE) and
// return.
func (u *UART) SetIRQ(irq func(level bool)) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.irq = irq
	if irq != nil && u.line {
		irq(true)
	}
}

// IRQLevel is the interrupt output's current level.
func (u *UART) IRQLevel() bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.line
}

// Read is a guest IN from register reg (0..7).
func (u *UART) Read(reg uint16) byte {
	u.mu.Lock()
	defer u.mu.Unlock()
	defer u.updateLine()
	switch reg {
	case uartRBR:
		if u.lcr&lcrDLAB != 0 {
			return u.dll
		}
		if len(u.rx) == 0 {
			return 0
		}
		b := u.rx[0]
		u.rx = u.rx[1:]
		if len(u.rx) == 0 {
			u.rx = nil
		}
		u.space.Broadcast()
		return b
	case uartIER:
		if u.lcr&lcrDLAB != 0 {
			return u.dlm
		}
		return u.ier
	case uartIIR:
		id := u.pending()
		if id == iirTHRI {
			// Reading IIR when THRE is the source clears it.
			u.thri = false
		}
		if u.fcr&fcrEnable != 0 {
			id |= iirFIFOs
		}
		return id
	case uartLCR:
		return u.lcr
	case uartMCR:
		return u.mcr
	case uartLSR:
		v := lsrTHRE | lsrTEMT | u.lsrErr
		if len(u.rx) > 0 {
			v |= lsrDR
		}
		u.lsrErr = 0
		return v
	case uartMSR:
		v := u.msr
		u.msr &^= msrDelta
		return v
	case uartSCR:
		return u.scr
	}
	return 0xff
}

// Write is a guest OUT of v to register reg (0..7).
func (u *UART) Write(reg uint16, v byte) {
	u.mu.Lock()
	defer u.mu.Unlock()
	defer u.updateLine()
	switch reg {
	case uartRBR:
		if u.lcr&lcrDLAB != 0 {
			u.dll = v
			return
		}
		// Writing THR clears the THRE interrupt; the byte leaves at once
		// and THR is empty again, which sets it again. The line shows
		// that pulse as real INTR does (low, then high, if THRE was all
		// that held it up): with the PC's edge-triggered ISA IRQs every
		// refill of THR then re-arms the interrupt, so a driver that
		// leaves its handler with THRE pending (Linux's PASS_LIMIT) is
		// interrupted again rather than stalled.
		u.thri = false
		u.updateLine()
		if u.mcr&mcrLoop != 0 {
			u.loopback(v)
		} else if u.out != nil {
			u.out(v)
		}
		u.thri = true
	case uartIER:
		if u.lcr&lcrDLAB != 0 {
			u.dlm = v
			return
		}
		old := u.ier
		u.ier = v & 0x0f
		switch {
		case old&ierETBEI == 0 && u.ier&ierETBEI != 0:
			// Enabling ETBEI while THR is empty (always, here) raises
			// the THRE interrupt at once: Linux's THRE and TX-enable
			// tests in serial8250_do_startup expect it.
			u.thri = true
		case u.ier&ierETBEI == 0:
			u.thri = false
		}
	case uartIIR:
		u.writeFCR(v)
	case uartLCR:
		u.lcr = v
	case uartMCR:
		u.mcr = v & 0x1f
		u.setModemInputs()
		if u.mcr&mcrLoop == 0 {
			u.space.Broadcast() // the serial input is connected again
		}
	case uartSCR:
		u.scr = v
	}
}

// writeFCR programs the FIFO control register. Per the datasheet, FCR0
// must be set for the other bits to be programmed, and changing FCR0
// clears both FIFOs.
func (u *UART) writeFCR(v byte) {
	if (u.fcr^v)&fcrEnable != 0 {
		u.clearRx()
	}
	if v&fcrEnable == 0 {
		u.fcr = 0
		return
	}
	if v&fcrClearRx != 0 {
		u.clearRx()
	}
	// fcrClearTx: the transmit FIFO is always empty already.
	u.fcr = v &^ (fcrClearRx | fcrClearTx)
}

func (u *UART) clearRx() {
	u.rx = nil
	u.space.Broadcast()
}

// loopback receives a THR byte in loopback mode through a FIFO of the
// hardware's depth: when it is full the byte is lost (FIFO mode) or
// overwrites RBR (16450 mode), and LSR.OE is set.
func (u *UART) loopback(v byte) {
	depth := 1
	if u.fcr&fcrEnable != 0 {
		depth = uartFIFODepth
	}
	depth = min(depth, u.rxMax)
	if len(u.rx) < depth {
		u.rx = append(u.rx, v)
		return
	}
	u.lsrErr |= lsrOE
	if u.fcr&fcrEnable == 0 {
		u.rx[len(u.rx)-1] = v
	}
}

// setModemInputs recomputes MSR's inputs after an MCR write: in loopback
// CTS, DSR, RI and DCD follow RTS, DTR, OUT1 and OUT2; otherwise the line
// is always ready. Changes set the delta bits (TERI only on RI's trailing
// edge), which stay until MSR is read.
func (u *UART) setModemInputs() {
	in := byte(msrReady)
	if m := u.mcr; m&mcrLoop != 0 {
		in = 0
		if m&mcrRTS != 0 {
			in |= msrCTS
		}
		if m&mcrDTR != 0 {
			in |= msrDSR
		}
		if m&mcrOUT1 != 0 {
			in |= msrRI
		}
		if m&mcrOUT2 != 0 {
			in |= msrDCD
		}
	}
	old := u.msr
	ch := old ^ in
	d := old & msrDelta
	if ch&msrCTS != 0 {
		d |= msrDCTS
	}
	if ch&msrDSR != 0 {
		d |= msrDDSR
	}
	if ch&msrRI != 0 && old&msrRI != 0 {
		d |= msrTERI
	}
	if ch&msrDCD != 0 {
		d |= msrDDCD
	}
	u.msr = in | d
}

// pending is the IIR interrupt ID of the highest-priority enabled
// condition (datasheet table 4): line status, then received data (or its
// timeout), then THRE, then modem status; iirNoInt if none.
func (u *UART) pending() byte {
	switch {
	case u.ier&ierELSI != 0 && u.lsrErr != 0:
		return iirRLSI
	case u.ier&ierERBFI != 0 && len(u.rx) > 0:
		if u.fcr&fcrEnable != 0 && len(u.rx) < rxTrigger[u.fcr>>6] {
			return iirTimeout
		}
		return iirRDI
	case u.ier&ierETBEI != 0 && u.thri:
		return iirTHRI
	case u.ier&ierEDSSI != 0 && u.msr&msrDelta != 0:
		return iirMSI
	}
	return iirNoInt
}

// updateLine recomputes the interrupt output after a change and tells irq
// if its level changed. On a PC the UART's INTR reaches the interrupt
// controller only through a buffer enabled by the OUT2 pin, which loopback
// forces inactive. Called with mu held, at the end of every access (and inside a THR write).
func (u *UART) updateLine() {
	level := u.pending() != iirNoInt && u.mcr&(mcrOUT2|mcrLoop) == mcrOUT2
	if level == u.line {
		return
	}
	u.line = level
	if u.irq != nil {
		u.irq(level)
	}
}

// Push queues host input for the guest. It blocks while the input buffer is
// full or the guest has the UART in loopback (backpressure), and returns the
// number of bytes queued, which is less than len(b) only if the UART was
// closed. Input that arrives while the guest has receive interrupts enabled
// raises the interrupt line before Push waits or returns.
func (u *UART) Push(b []byte) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	n := 0
	for n < len(b) && !u.closed {
		free := u.rxMax - len(u.rx)
		if free == 0 || u.mcr&mcrLoop != 0 {
			u.space.Wait()
			continue
		}
		m := min(free, len(b)-n)
		u.rx = append(u.rx, b[n:n+m]...)
		n += m
		u.updateLine()
	}
	return n
}

// Close wakes and fails any blocked Push.
func (u *UART) Close() {
	u.mu.Lock()
	u.closed = true
	u.space.Broadcast()
	u.mu.Unlock()
}
