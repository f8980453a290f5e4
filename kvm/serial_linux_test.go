package kvm

import (
	"strings"
	"testing"
)

// This file replays what Linux's 8250 driver (drivers/tty/serial/8250/
// 8250_port.c, read at v5.x and v6.6; Debian's 6.1 lies between and does
// the same) does to a port: autoconfig's probe, serial8250_do_startup's
// THRE and TX-enable tests, set_termios, autoconfig_irq, and the interrupt
// handler (serial8250_interrupt -> serial8250_default_handle_irq ->
// serial8250_handle_irq). The C is transcribed statement by statement into
// Go against a lnxIO, so each test checks that the UART makes Linux
// reach the conclusion a real 16550A does, rather than a register value
// written down by hand. Mutated ports (lnxMutant) show that the replay
// tells other UARTs apart.

// Linux's include/uapi/linux/serial_reg.h names.
const (
	lnxRX, lnxTX, lnxDLL, lnxDLM = 0, 0, 0, 1
	lnxIER, lnxIIR, lnxFCR       = 1, 2, 2
	lnxEFR, lnxLCR, lnxMCR       = 2, 3, 4
	lnxLSR, lnxMSR, lnxSCR       = 5, 6, 7

	lnxIerRDI, lnxIerTHRI, lnxIerRLSI, lnxIerMSI = 0x01, 0x02, 0x04, 0x08
	lnxIerAllIntr                                = 0x0f
	lnxIerUUE                                    = 0x40

	lnxIirNoInt, lnxIirRDI, lnxIirFIFOEnabled = 0x01, 0x04, 0xc0
	lnxIir64ByteFIFO                          = 0x20
	lnxIirFIFOEnabled8250                     = 0x00
	lnxIirFIFOEnabled16550                    = 0x80
	lnxIirFIFOEnabled16550A                   = 0xc0

	lnxFcrEnableFIFO, lnxFcrClearRcvr, lnxFcrClearXmit = 0x01, 0x02, 0x04
	lnxFcrRTrig10, lnxFcr7_64Byte                      = 0x80, 0x20

	lnxLcrWLen8, lnxLcrConfModeA, lnxLcrConfModeB = 0x03, 0x80, 0xbf

	lnxMcrDTR, lnxMcrRTS, lnxMcrOUT1, lnxMcrOUT2, lnxMcrLoop = 0x01, 0x02, 0x04, 0x08, 0x10

	lnxLsrDR, lnxLsrBI, lnxLsrTHRE, lnxLsrTEMT = 0x01, 0x10, 0x20, 0x40

	lnxMsrCTS, lnxMsrDCD, lnxMsrStatusBits = 0x10, 0x80, 0xf0

	lnxBugTHRE = 1 << 0 // UART_BUG_THRE: THRE not reasserted
	lnxBugTXEN = 1 << 1 // UART_BUG_TXEN: no interrupt when TX is enabled

	lnxCapFIFO = 1 << 8 // UART_CAP_FIFO
)

// Port types (include/uapi/linux/serial_core.h), those autoconfig can reach
// here.
const (
	portUnknown = iota
	port8250
	port16450
	port16550
	port16550A
	port16650
	port16650V2
	port16750
	portNS16550A
	portXScale
	portU6_16550A
	port16550AFSL64
)

var portNames = map[int]string{
	portUnknown: "unknown", port8250: "8250", port16450: "16450",
	port16550: "16550", port16550A: "16550A", port16650: "ST16650",
	port16650V2: "ST16650V2", port16750: "TI16750", portNS16550A: "NS16550A",
	portXScale: "XScale", portU6_16550A: "U6_16550A", port16550AFSL64: "16550A_FSL64",
}

// lnxIO is serial_in/serial_out.
type lnxIO interface {
	in(off int) byte
	out(off int, v byte)
}

type uartPort struct{ u *UART }

func (p uartPort) in(off int) byte     { return p.u.Read(uint16(off)) }
func (p uartPort) out(off int, v byte) { p.u.Write(uint16(off), v) }

// lnxMutant is a UART with one register behaving differently, to show
// that the replay can reach other conclusions.
type lnxMutant struct {
	u     *UART
	onIn  func(off int, v byte) byte // the value the driver sees
	onOut func(off int, v byte) bool // false: the write is dropped
}

func (m lnxMutant) in(off int) byte {
	v := m.u.Read(uint16(off))
	if m.onIn != nil {
		v = m.onIn(off, v)
	}
	return v
}

func (m lnxMutant) out(off int, v byte) {
	if m.onOut == nil || m.onOut(off, v) {
		m.u.Write(uint16(off), v)
	}
}

// lnxPort is the part of struct uart_8250_port the replay uses.
type lnxPort struct {
	p            lnxIO
	typ          int
	capabilities int
	bugs         int
	fifosize     int
	txLoadsz     int
	ier          byte // up->ier, the driver's shadow
	mcr          byte
	fcr          byte
	failed       string // why autoconfig found no port (DEBUG_AUTOCONF)
	xmit         []byte // the tty's transmit circ_buf
	rx           []byte // what reached the tty flip buffer
}

func (up *lnxPort) in(off int) byte     { return up.p.in(off) }
func (up *lnxPort) out(off int, v byte) { up.p.out(off, v) }
func (up *lnxPort) dlRead() int         { return int(up.in(lnxDLL)) | int(up.in(lnxDLM))<<8 }
func (up *lnxPort) dlWrite(v int) {
	up.out(lnxDLL, byte(v))
	up.out(lnxDLM, byte(v>>8))
}

// uart_config[type]: fifo_size, tx_loadsz, fcr, flags.
func (up *lnxPort) config() (fifo, loadsz int, fcr byte, flags int) {
	switch up.typ {
	case port16550A:
		return 16, 16, lnxFcrEnableFIFO | lnxFcrRTrig10, lnxCapFIFO
	case portU6_16550A:
		return 64, 64, lnxFcrEnableFIFO | lnxFcrRTrig10, lnxCapFIFO
	}
	return 1, 1, 0, 0
}

// serial8250_clear_fifos.
func (up *lnxPort) clearFIFOs() {
	if up.capabilities&lnxCapFIFO != 0 {
		up.out(lnxFCR, lnxFcrEnableFIFO)
		up.out(lnxFCR, lnxFcrEnableFIFO|lnxFcrClearRcvr|lnxFcrClearXmit)
		up.out(lnxFCR, 0)
	}
}

// autoconfig, with the port flags of a PC's legacy COM ports minus
// UPF_SKIP_TEST, so that the loopback test runs too.
func (up *lnxPort) autoconfig() {
	up.capabilities, up.bugs = 0, 0

	// "Do a simple existence test first"
	scratch := up.in(lnxIER)
	up.out(lnxIER, 0)
	scratch2 := up.in(lnxIER) & lnxIerAllIntr
	up.out(lnxIER, lnxIerAllIntr)
	scratch3 := up.in(lnxIER) & lnxIerAllIntr
	up.out(lnxIER, scratch)
	if scratch2 != 0 || scratch3 != lnxIerAllIntr {
		up.failed = "IER test failed"
		return
	}

	saveMCR := up.in(lnxMCR)
	saveLCR := up.in(lnxLCR)

	// "Check to see if a UART is really there."
	up.out(lnxMCR, lnxMcrLoop|lnxMcrOUT2|lnxMcrRTS)
	status1 := up.in(lnxMSR) & lnxMsrStatusBits
	up.out(lnxMCR, saveMCR)
	if status1 != lnxMsrDCD|lnxMsrCTS {
		up.failed = "LOOP test failed"
		return
	}

	// "We also initialise the EFR (if any) to zero for later."
	up.out(lnxLCR, lnxLcrConfModeB)
	up.out(lnxEFR, 0)
	up.out(lnxLCR, 0)

	up.out(lnxFCR, lnxFcrEnableFIFO)
	switch up.in(lnxIIR) & lnxIirFIFOEnabled {
	case lnxIirFIFOEnabled8250:
		up.autoconfig8250()
	case lnxIirFIFOEnabled16550:
		up.typ = port16550
	case lnxIirFIFOEnabled16550A:
		up.autoconfig16550A()
	default:
		up.typ = portUnknown
	}

	up.out(lnxLCR, saveLCR)

	var fcr byte
	up.fifosize, up.txLoadsz, fcr, up.capabilities = up.config()
	up.fcr = fcr
	if up.typ == portUnknown {
		return
	}
	// "Reset the UART."
	up.out(lnxMCR, saveMCR)
	up.clearFIFOs()
	up.in(lnxRX)
	up.out(lnxIER, 0) // serial8250_clear_IER
}

// autoconfig_8250: no FIFO; a 16450 has a scratch register.
func (up *lnxPort) autoconfig8250() {
	up.typ = port8250
	scratch := up.in(lnxSCR)
	up.out(lnxSCR, 0xa5)
	status1 := up.in(lnxSCR)
	up.out(lnxSCR, 0x5a)
	status2 := up.in(lnxSCR)
	up.out(lnxSCR, scratch)
	if status1 == 0xa5 && status2 == 0x5a {
		up.typ = port16450
	}
}

// autoconfig_16550a, for a port without UPF_EXAR_EFR.
func (up *lnxPort) autoconfig16550A() {
	up.typ = port16550A
	up.capabilities |= lnxCapFIFO

	// "Check for presence of the EFR when DLAB is set."
	up.out(lnxLCR, lnxLcrConfModeA)
	if up.in(lnxEFR) == 0 {
		up.out(lnxEFR, 0xa8)
		if up.in(lnxEFR) != 0 {
			up.typ = port16650
		} else {
			up.out(lnxLCR, 0)
			up.out(lnxFCR, lnxFcrEnableFIFO|lnxFcr7_64Byte)
			status1 := up.in(lnxIIR) & (lnxIir64ByteFIFO | lnxIirFIFOEnabled)
			up.out(lnxFCR, 0)
			up.out(lnxLCR, 0)
			if status1 == lnxIir64ByteFIFO|lnxIirFIFOEnabled {
				up.typ = port16550AFSL64
			}
		}
		up.out(lnxEFR, 0)
		return
	}

	// "Maybe it requires 0xbf to be written to the LCR."
	up.out(lnxLCR, lnxLcrConfModeB)
	if up.in(lnxEFR) == 0 && !up.brokenEFR() {
		up.typ = port16650V2 // autoconfig_has_efr, which needs an EFR
		return
	}

	// "Check for a National Semiconductor SuperIO chip."
	up.out(lnxLCR, 0)
	status1 := up.in(lnxMCR)
	up.out(lnxLCR, 0xe0)
	status2 := up.in(0x02) // EXCR1
	if (status2^status1)&lnxMcrLoop == 0 {
		up.out(lnxLCR, 0)
		up.out(lnxMCR, status1^lnxMcrLoop)
		up.out(lnxLCR, 0xe0)
		status2 = up.in(0x02)
		up.out(lnxLCR, 0)
		up.out(lnxMCR, status1)
		if (status2^status1)&lnxMcrLoop != 0 {
			up.typ = portNS16550A
			return
		}
	}

	// "No EFR. Try to detect a TI16750, which only sets bit 5 of the IIR
	// when 64 byte FIFO mode is enabled when DLAB is set."
	up.out(lnxLCR, 0)
	up.out(lnxFCR, lnxFcrEnableFIFO|lnxFcr7_64Byte)
	status1 = up.in(lnxIIR) & (lnxIir64ByteFIFO | lnxIirFIFOEnabled)
	up.out(lnxFCR, lnxFcrEnableFIFO)
	up.out(lnxLCR, lnxLcrConfModeA)
	up.out(lnxFCR, lnxFcrEnableFIFO|lnxFcr7_64Byte)
	status2 = up.in(lnxIIR) & (lnxIir64ByteFIFO | lnxIirFIFOEnabled)
	up.out(lnxFCR, lnxFcrEnableFIFO)
	up.out(lnxLCR, 0)
	if status1 == lnxIirFIFOEnabled16550A && status2 == lnxIir64ByteFIFO|lnxIirFIFOEnabled16550A {
		up.typ = port16750
		return
	}

	// "Try writing and reading the UART_IER_UUE bit (b6)." (XScale)
	iersave := up.in(lnxIER)
	up.out(lnxIER, iersave&^lnxIerUUE)
	if up.in(lnxIER)&lnxIerUUE == 0 {
		up.out(lnxIER, iersave|lnxIerUUE)
		if up.in(lnxIER)&lnxIerUUE != 0 {
			up.typ = portXScale
			return
		}
	}
	up.out(lnxIER, iersave)

	// "We distinguish between 16550A and U6 16550A by counting how many
	// bytes are in the FIFO."
	if up.typ == port16550A && up.sizeFIFO() == 64 {
		up.typ = portU6_16550A
	}
}

// broken_efr: Exar ST16C2550 "A2" devices report an EFR and ID 0x0201.
func (up *lnxPort) brokenEFR() bool {
	return up.readDivisorID() == 0x0201 && up.sizeFIFO() == 16
}

// autoconfig_read_divisor_id.
func (up *lnxPort) readDivisorID() int {
	oldLCR := up.in(lnxLCR)
	up.out(lnxLCR, lnxLcrConfModeA)
	oldDL := up.dlRead()
	up.dlWrite(0)
	id := up.dlRead()
	up.dlWrite(oldDL)
	up.out(lnxLCR, oldLCR)
	return id
}

// size_fifo: "a quickie test to see how big the FIFO is", 256 bytes through
// loopback and count what comes back.
func (up *lnxPort) sizeFIFO() int {
	oldLCR := up.in(lnxLCR)
	up.out(lnxLCR, 0)
	oldFCR := up.in(lnxFCR) // reads IIR, as in Linux
	oldMCR := up.in(lnxMCR)
	up.out(lnxFCR, lnxFcrEnableFIFO|lnxFcrClearRcvr|lnxFcrClearXmit)
	up.out(lnxMCR, lnxMcrLoop)
	up.out(lnxLCR, lnxLcrConfModeA)
	oldDL := up.dlRead()
	up.dlWrite(0x0001)
	up.out(lnxLCR, 0x03)
	for count := range 256 {
		up.out(lnxTX, byte(count))
	}
	// mdelay(20)
	count := 0
	for ; up.in(lnxLSR)&lnxLsrDR != 0 && count < 256; count++ {
		up.in(lnxRX)
	}
	up.out(lnxFCR, oldFCR)
	up.out(lnxMCR, oldMCR)
	up.out(lnxLCR, lnxLcrConfModeA)
	up.dlWrite(oldDL)
	up.out(lnxLCR, oldLCR)
	return count
}

// startup is serial8250_do_startup for a port with an IRQ (COM1: 4, COM2:
// 3) that is not shared.
func (up *lnxPort) startup() {
	up.mcr = 0
	up.clearFIFOs()
	// "Clear the interrupt registers."
	up.in(lnxLSR)
	up.in(lnxRX)
	up.in(lnxIIR)
	up.in(lnxMSR)
	if up.in(lnxLSR) == 0xff {
		up.failed = "LSR safety check engaged"
		return
	}

	// "Test for UARTs that do not reassert THRE when the transmitter is
	// idle and the interrupt has already been cleared."
	up.waitForLSR(lnxLsrTHRE)
	up.out(lnxIER, lnxIerTHRI)
	iir1 := up.in(lnxIIR)
	up.out(lnxIER, 0)
	up.out(lnxIER, lnxIerTHRI)
	iir := up.in(lnxIIR)
	up.out(lnxIER, 0)
	if iir1&lnxIirNoInt == 0 && iir&lnxIirNoInt != 0 {
		up.bugs |= lnxBugTHRE
	}

	// (setup_irq: request_irq)
	up.out(lnxLCR, lnxLcrWLen8)
	// "Most PC uarts need OUT2 raised to enable interrupts."
	up.setMctrl(lnxMcrOUT2)

	// "Do a quick test to see if we receive an interrupt when we enable
	// the TX irq."
	up.out(lnxIER, lnxIerTHRI)
	lsr := up.in(lnxLSR)
	iir = up.in(lnxIIR)
	up.out(lnxIER, 0)
	if lsr&lnxLsrTEMT != 0 && iir&lnxIirNoInt != 0 {
		up.bugs |= lnxBugTXEN
	} else {
		up.bugs &^= lnxBugTXEN
	}

	// "Clear the interrupt registers again for luck"
	up.in(lnxLSR)
	up.in(lnxRX)
	up.in(lnxIIR)
	up.in(lnxMSR)
	// The IER shadow; written by set_termios once the FIFOs are on.
	up.ier = lnxIerRLSI | lnxIerRDI
}

// setMctrl is serial8250_do_set_mctrl: TIOCM bits to MCR, or'ed with up->mcr.
func (up *lnxPort) setMctrl(mcr byte) {
	up.out(lnxMCR, mcr|up.mcr)
}

// waitForLSR is wait_for_lsr: poll up to 10000 times.
func (up *lnxPort) waitForLSR(bits byte) {
	for range 10000 {
		if up.in(lnxLSR)&bits == bits {
			return
		}
	}
}

// setTermios is the register part of serial8250_do_set_termios for 115200
// 8N1 with CLOCAL (no modem status interrupts), and uart_port_startup's
// DTR|RTS raise (uart_port_dtr_rts).
func (up *lnxPort) setTermios() {
	up.out(lnxIER, up.ier)
	up.out(lnxLCR, lnxLcrWLen8|lnxLcrConfModeA)
	up.dlWrite(1)
	up.out(lnxLCR, lnxLcrWLen8)
	if up.fcr&lnxFcrEnableFIFO != 0 {
		up.out(lnxFCR, up.fcr)
	}
	up.setMctrl(lnxMcrOUT2 | lnxMcrDTR | lnxMcrRTS)
}

// autoconfigIRQ is autoconfig_irq's register sequence; raised reports
// whether the line went up while probe_irq_on/off watched.
func (up *lnxPort) autoconfigIRQ(u *UART) (raised bool) {
	saveMCR := up.in(lnxMCR)
	saveIER := up.in(lnxIER)
	up.out(lnxMCR, lnxMcrOUT1|lnxMcrOUT2)
	u.SetIRQ(func(level bool) { raised = raised || level }) // probe_irq_on
	up.out(lnxMCR, 0)
	up.out(lnxMCR, lnxMcrDTR|lnxMcrRTS|lnxMcrOUT2)
	up.out(lnxIER, lnxIerAllIntr)
	up.in(lnxLSR)
	up.in(lnxRX)
	up.in(lnxIIR)
	up.in(lnxMSR)
	up.out(lnxTX, 0xff)
	u.SetIRQ(nil) // probe_irq_off
	up.out(lnxMCR, saveMCR)
	up.out(lnxIER, saveIER)
	return raised
}

// startTx is serial8250_start_tx -> __start_tx: set IER.THRI if it is not
// set (serial8250_set_THRI); with UART_BUG_TXEN, fill the FIFO at once.
func (up *lnxPort) startTx(s string) {
	up.xmit = append(up.xmit, s...)
	if up.ier&lnxIerTHRI == 0 {
		up.ier |= lnxIerTHRI
		up.out(lnxIER, up.ier)
		if up.bugs&lnxBugTXEN != 0 && up.in(lnxLSR)&lnxLsrTHRE != 0 {
			up.txChars()
		}
	}
}

// stopTx is __stop_tx -> serial8250_clear_THRI.
func (up *lnxPort) stopTx() {
	if up.ier&lnxIerTHRI != 0 {
		up.ier &^= lnxIerTHRI
		up.out(lnxIER, up.ier)
	}
}

// txChars is serial8250_tx_chars.
func (up *lnxPort) txChars() {
	if len(up.xmit) == 0 {
		up.stopTx()
		return
	}
	for count := up.txLoadsz; count > 0; count-- {
		up.out(lnxTX, up.xmit[0])
		up.xmit = up.xmit[1:]
		if len(up.xmit) == 0 {
			break
		}
	}
	if len(up.xmit) == 0 {
		up.stopTx()
	}
}

// rxChars is serial8250_rx_chars.
func (up *lnxPort) rxChars(lsr byte) byte {
	for maxCount := 256; ; {
		if lsr&lnxLsrDR != 0 { // serial8250_read_char
			up.rx = append(up.rx, up.in(lnxRX))
		}
		if maxCount--; maxCount == 0 {
			break
		}
		lsr = up.in(lnxLSR)
		if lsr&(lnxLsrDR|lnxLsrBI) == 0 {
			break
		}
	}
	return lsr
}

// handleIRQ is serial8250_default_handle_irq -> serial8250_handle_irq
// (v6.x: receive whenever LSR has data, transmit when THRE and THRI).
func (up *lnxPort) handleIRQ() bool {
	iir := up.in(lnxIIR)
	if iir&lnxIirNoInt != 0 {
		return false
	}
	status := up.in(lnxLSR)
	if status&(lnxLsrDR|lnxLsrBI) != 0 {
		status = up.rxChars(status)
	}
	up.in(lnxMSR) // serial8250_modem_status
	if status&lnxLsrTHRE != 0 && up.ier&lnxIerTHRI != 0 {
		up.txChars()
	}
	return true
}

// interrupt is serial8250_interrupt for one port on the IRQ: handle until a
// pass finds nothing, at most PASS_LIMIT (512) passes. It returns the
// number of passes that handled something.
func (up *lnxPort) interrupt(t *testing.T) int {
	handled := 0
	for pass := 0; ; pass++ {
		if pass > 512 {
			t.Fatal("serial8250: too much work for irq")
		}
		if !up.handleIRQ() {
			return handled
		}
		handled++
	}
}

// linuxProbe runs autoconfig and startup on p and reports what Linux
// would print ("ttyS0 at I/O 0x3f8 (irq = 4, base_baud = 115200) is a
// 16550A") and the bugs it would work around.
func linuxProbe(p lnxIO) *lnxPort {
	up := &lnxPort{p: p}
	up.autoconfig()
	if up.failed == "" && up.typ != portUnknown {
		up.startup()
	}
	return up
}

func TestLinuxAutoconfigFinds16550A(t *testing.T) {
	// As the boot leaves COM1 for Linux: klp-kvm's firmware does nothing,
	// and a host console input may already wait (it must not confuse the
	// probe: the FIFO clear drops it).
	var out []byte
	u := NewUART(func(c byte) { out = append(out, c) }, 4096)
	u.Push([]byte("early"))
	l := &irqLog{}
	u.SetIRQ(l.set)
	up := linuxProbe(uartPort{u})
	if up.failed != "" {
		t.Fatalf("autoconfig: %s", up.failed)
	}
	if up.typ != port16550A {
		t.Fatalf("Linux sees a %s, want 16550A", portNames[up.typ])
	}
	if up.fifosize != 16 || up.capabilities&lnxCapFIFO == 0 {
		t.Fatalf("fifosize %d caps %#x", up.fifosize, up.capabilities)
	}
	if up.bugs != 0 {
		t.Fatalf("bugs %#x (THRE=1, TXEN=2): Linux would work around the UART", up.bugs)
	}
	if n := up.sizeFIFO(); n != 16 {
		t.Fatalf("size_fifo counts %d bytes, want the 16550A's 16", n)
	}
	if len(out) != 0 {
		t.Fatalf("the probe's loopback bytes reached the line: %q", out)
	}
	// The probe and startup ran with OUT2 up only from startup's
	// set_mctrl on, and the TX-enable test raised and cleared THRE.
	l.want(t, "probe and startup", true, false)
	up.setTermios()
	if iir := u.Read(uartIIR); iir != 0xc1 {
		t.Fatalf("IIR after set_termios %#x: FIFOs on, nothing pending", iir)
	}
	if u.Read(uartLSR)&lsrDR != 0 {
		t.Fatal("input from before the probe survived the FIFO clears")
	}
}

func TestLinuxAutoconfigIRQ(t *testing.T) {
	u := NewUART(nil, 64)
	up := linuxProbe(uartPort{u})
	if !up.autoconfigIRQ(u) {
		t.Fatal("autoconfig_irq: the line never rose, Linux would find no IRQ")
	}
	if u.IRQLevel() {
		t.Fatal("the line is still up after autoconfig_irq restored IER and MCR")
	}
}

// TestLinuxAutoconfigMutants: the same replay on UARTs that differ in one
// point reaches Linux's other verdicts, so the 16550A verdict above means
// something.
func TestLinuxAutoconfigMutants(t *testing.T) {
	ti16750 := &fcr64{}
	for _, tc := range []struct {
		name  string
		onIn  func(off int, v byte) byte
		onOut func(off int, v byte) bool
		typ   int
		fail  string
		bugs  int
	}{
		{name: "no FIFO (IIR 7:6 = 00)", typ: port16450,
			onIn: func(off int, v byte) byte {
				if off == uartIIR {
					v &^= 0xc0
				}
				return v
			}},
		{name: "no FIFO, no scratch register", typ: port8250,
			onIn: func(off int, v byte) byte {
				switch off {
				case uartIIR:
					v &^= 0xc0
				case uartSCR:
					v = 0xff
				}
				return v
			}},
		{name: "broken FIFO (IIR 7:6 = 10)", typ: port16550,
			onIn: func(off int, v byte) byte {
				if off == uartIIR {
					v &^= 0x40
				}
				return v
			}},
		{name: "IIR bit 5 set by FCR5 under DLAB (TI16750)", typ: port16750,
			onIn: func(off int, v byte) byte {
				if off == uartIIR && v&0xc0 == 0xc0 && ti16750.big {
					v |= 0x20
				}
				return v
			},
			onOut: ti16750.out},
		{name: "IIR bit 5 set by FCR5 without DLAB (a clone)", typ: port16550A,
			onIn: func(off int, v byte) byte {
				if off == uartIIR && v&0xc0 == 0xc0 {
					v |= 0x20
				}
				return v
			}},
		{name: "no loopback", fail: "LOOP test failed",
			onIn: func(off int, v byte) byte {
				if off == uartMSR {
					v = 0xb0
				}
				return v
			}},
		{name: "IER not writable", fail: "IER test failed",
			onOut: func(off int, v byte) bool { return off != uartIER }},
		{name: "no TX interrupt", typ: port16550A, bugs: lnxBugTXEN,
			onIn: func(off int, v byte) byte {
				if off == uartIIR {
					v = v&0xc0 | 0x01
				}
				return v
			}},
		{name: "THRE not reasserted", typ: port16550A, bugs: lnxBugTHRE,
			onIn: func() func(int, byte) byte {
				n := 0 // the second THRE seen is the re-enable in startup's test
				return func(off int, v byte) byte {
					if off == uartIIR && v&0x0f == 0x02 {
						if n++; n == 2 {
							v = v&0xc0 | 0x01
						}
					}
					return v
				}
			}()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := linuxProbe(lnxMutant{u: NewUART(nil, 64), onIn: tc.onIn, onOut: tc.onOut})
			if up.failed != tc.fail {
				t.Fatalf("autoconfig failure %q, want %q", up.failed, tc.fail)
			}
			if tc.fail == "" && up.typ != tc.typ {
				t.Fatalf("Linux sees a %s, want %s", portNames[up.typ], portNames[tc.typ])
			}
			if up.bugs != tc.bugs {
				t.Fatalf("bugs %#x, want %#x", up.bugs, tc.bugs)
			}
		})
	}
}

// linuxOpen probes, starts and configures a port as opening /dev/ttyS1
// does, with the interrupt line logged.
func linuxOpen(t *testing.T, out func(byte)) (*UART, *lnxPort, *irqLog) {
	t.Helper()
	u := NewUART(out, 4096)
	up := linuxProbe(uartPort{u})
	if up.typ != port16550A || up.bugs != 0 {
		t.Fatalf("probe: %s bugs %#x", portNames[up.typ], up.bugs)
	}
	up.setTermios()
	l := &irqLog{}
	u.SetIRQ(l.set)
	return u, up, l
}

// TestLinuxInterruptRX: host input reaches a Linux reader through RX
// interrupts only: the line rises on Push, the handler drains the FIFO,
// the line falls.
func TestLinuxInterruptRX(t *testing.T) {
	u, up, l := linuxOpen(t, nil)
	// Below the trigger level (8): the timeout interrupt.
	u.Push([]byte(`{"execute":"guest-ping","id":1}` + "\n"))
	l.want(t, "push", true)
	if n := up.interrupt(t); n != 1 {
		t.Fatalf("%d handled passes", n)
	}
	l.want(t, "handled", true, false)
	// A short line: fewer bytes than the trigger level.
	u.Push([]byte("ok\n"))
	if iir := u.Read(uartIIR); iir != 0xcc {
		t.Fatalf("IIR %#x: want the character timeout", iir)
	}
	up.interrupt(t)
	l.want(t, "short line", true, false, true, false)
	if got := string(up.rx); got != `{"execute":"guest-ping","id":1}`+"\nok\n" {
		t.Fatalf("tty got %q", got)
	}
}

// TestLinuxInterruptTX: a write to the tty goes out through THRE
// interrupts, 16 bytes (tx_loadsz) per pass, and the line settles low when
// the circ_buf is empty and __stop_tx clears THRI.
func TestLinuxInterruptTX(t *testing.T) {
	var out strings.Builder
	u, up, l := linuxOpen(t, func(c byte) { out.WriteByte(c) })
	msg := `{"return":{},"id":1}` + "\n" + `{"event":"sysfs-write","data":{}}` + "\n"
	up.startTx(msg)
	l.want(t, "start_tx", true)
	passes := up.interrupt(t)
	if out.String() != msg {
		t.Fatalf("sent %q", out.String())
	}
	if want := (len(msg) + 15) / 16; passes != want {
		t.Fatalf("%d passes for %d bytes, want %d", passes, len(msg), want)
	}
	// Each pass: the IIR read clears THRE (line down), the first THR
	// write sets it again (up), each further write pulses it (down, up);
	// the last pass's stop_tx leaves it down.
	want := []bool{true}
	for left := len(msg); left > 0; left -= 16 {
		want = append(want, false, true)
		for range min(left, 16) - 1 {
			want = append(want, false, true)
		}
	}
	want = append(want, false)
	l.want(t, "transmit", want...)
	if u.IRQLevel() || up.ier&lnxIerTHRI != 0 {
		t.Fatal("transmitter interrupt still on")
	}
}

// TestLinuxInterruptRXTX: input arriving while the driver transmits is
// picked up by the same handler run (RX before THRE in IIR priority).
func TestLinuxInterruptRXTX(t *testing.T) {
	var out strings.Builder
	u, up, _ := linuxOpen(t, func(c byte) { out.WriteByte(c) })
	up.startTx("0123456789abcdefXYZ")
	u.Push([]byte("in"))
	if iir := u.Read(uartIIR); iir&0x0f != iirTimeout {
		t.Fatalf("IIR %#x: received data comes before THRE", iir)
	}
	up.interrupt(t)
	if string(up.rx) != "in" || out.String() != "0123456789abcdefXYZ" {
		t.Fatalf("rx %q tx %q", up.rx, out.String())
	}
	if u.IRQLevel() {
		t.Fatal("line still up")
	}
}

// fcr64 tracks a TI16750's 64-byte FIFO mode: FCR5 can be written only
// with DLAB set; clearing FCR0 leaves FIFO mode.
type fcr64 struct {
	lcr byte
	big bool
}

func (f *fcr64) out(off int, v byte) bool {
	switch off {
	case uartLCR:
		f.lcr = v
	case uartIIR:
		if v&fcrEnable == 0 {
			f.big = false
		} else if f.lcr&lcrDLAB != 0 {
			f.big = v&0x20 != 0
		}
	}
	return true
}

// BenchmarkUARTLinuxTX is the model's cost per byte a Linux driver sends
// through THRE interrupts (register accesses and line calls, no exits).
func BenchmarkUARTLinuxTX(b *testing.B) {
	u := NewUART(func(byte) {}, 4096)
	up := &lnxPort{p: uartPort{u}}
	up.autoconfig()
	up.startup()
	up.setTermios()
	calls := 0
	u.SetIRQ(func(bool) { calls++ })
	chunk := strings.Repeat("x", 4096)
	b.SetBytes(int64(len(chunk)))
	for b.Loop() {
		up.startTx(chunk)
		for up.handleIRQ() {
		}
	}
	b.ReportMetric(float64(calls)/float64(b.N)/float64(len(chunk)), "linecalls/byte")
}

// BenchmarkUARTPolledTX is klp-kvm's guest's path: an LSR poll per 16
// bytes, then THR writes, interrupts off.
func BenchmarkUARTPolledTX(b *testing.B) {
	u := NewUART(func(byte) {}, 4096)
	u.Write(uartIIR, 0x07)
	b.SetBytes(16)
	for b.Loop() {
		if u.Read(uartLSR)&lsrTHRE != 0 {
			for range 16 {
				u.Write(uartRBR, 'x')
			}
		}
	}
}
