package kvm

import "sync"

// UART is a register model of a 16550 as a polled driver sees it: THR/RBR,
// IER, IIR/FCR, LCR (with DLAB), MCR, LSR, MSR, SCR. It has no interrupts
// (the guest polls LSR) and no timing: a byte written to THR is handed to
// out at once. It is pure: the host side feeds input with Push and is
// handed output through the out callback. Safe for concurrent use.
type UART struct {
	mu     sync.Mutex
	out    func(byte) // called with mu held; must not call back into the UART
	rx     []byte     // pending input, bounded by rxMax
	rxMax  int
	space  *sync.Cond // signalled when rx drains (for Push backpressure)
	closed bool
	ier    byte
	lcr    byte
	mcr    byte
	scr    byte
	dll    byte
	dlm    byte
}

// 16550 register offsets and bits.
const (
	uartRBR = 0 // THR on write; DLL with DLAB
	uartIER = 1 // DLM with DLAB
	uartIIR = 2 // FCR on write
	uartLCR = 3
	uartMCR = 4
	uartLSR = 5
	uartMSR = 6
	uartSCR = 7

	lcrDLAB  = 0x80
	lsrDR    = 0x01 // data ready
	lsrTHRE  = 0x20 // transmit holding register empty
	lsrTEMT  = 0x40 // transmitter empty
	iirNoInt = 0x01
)

// NewUART returns a UART whose transmitted bytes go to out, with an input
// buffer of rxMax bytes.
func NewUART(out func(byte), rxMax int) *UART {
	u := &UART{out: out, rxMax: rxMax}
	u.space = sync.NewCond(&u.mu)
	return u
}

// Read is a guest IN from register reg (0..7).
func (u *UART) Read(reg uint16) byte {
	u.mu.Lock()
	defer u.mu.Unlock()
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
		return iirNoInt | 0xc0 // FIFOs enabled, no interrupt pending
	case uartLCR:
		return u.lcr
	case uartMCR:
		return u.mcr
	case uartLSR:
		v := byte(lsrTHRE | lsrTEMT)
		if len(u.rx) > 0 {
			v |= lsrDR
		}
		return v
	case uartMSR:
		return 0xb0 // DCD, DSR, CTS: a line that is always ready
	case uartSCR:
		return u.scr
	}
	return 0xff
}

// Write is a guest OUT of v to register reg (0..7).
func (u *UART) Write(reg uint16, v byte) {
	u.mu.Lock()
	defer u.mu.Unlock()
	switch reg {
	case uartRBR:
		if u.lcr&lcrDLAB != 0 {
			u.dll = v
			return
		}
		if u.mcr&0x10 != 0 { // loopback mode
			if len(u.rx) < u.rxMax {
				u.rx = append(u.rx, v)
			}
			return
		}
		if u.out != nil {
			u.out(v)
		}
	case uartIER:
		if u.lcr&lcrDLAB != 0 {
			u.dlm = v
			return
		}
		u.ier = v & 0x0f
	case uartIIR: // FCR: bit 1 clears the receive FIFO
		if v&0x02 != 0 {
			u.rx = nil
			u.space.Broadcast()
		}
	case uartLCR:
		u.lcr = v
	case uartMCR:
		u.mcr = v & 0x1f
	case uartSCR:
		u.scr = v
	}
}

// Push queues host input for the guest. It blocks while the input buffer is
// full (backpressure), and returns the number of bytes queued, which is less
// than len(b) only if the UART was closed.
func (u *UART) Push(b []byte) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	n := 0
	for n < len(b) && !u.closed {
		free := u.rxMax - len(u.rx)
		if free == 0 {
			u.space.Wait()
			continue
		}
		m := min(free, len(b)-n)
		u.rx = append(u.rx, b[n:n+m]...)
		n += m
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
