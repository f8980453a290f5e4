package kvm

import (
	"encoding/binary"
	"io"
	"sync"
	"sync/atomic"

	"klp-kvm/kvm/engine"
)

// bus routes port I/O to the machine's devices. Its fields are set before
// the vCPUs start and only read afterwards, except the atomic counters.
type bus struct {
	com1, com2   *UART
	pc           *pcDevices    // the PC platform of a Linux guest; nil for klp-kvm's own
	unknownPorts atomic.Uint64 // accesses to ports nobody serves
	ioExits      atomic.Uint64
}

// exitAction is what the vCPU loop does after an exit.
type exitAction int

const (
	actContinue exitAction = iota // run again
	actPowerOff                   // the guest asked to power off (code set)
	actHalt                       // the vCPU halted for good (IF=0)
	actFail                       // the guest cannot go on (err set)
	actPause                      // the run was interrupted by a kick
	actReset                      // a Linux guest reset the machine (err says how): it stops
)

// handleExit decides what one exit means. It is a free function over the
// device bus so that exit handling is tested without a VM.
func handleExit(b *bus, ex *engine.Exit, sym func(uint64) string) (act exitAction, code int, err error) {
	switch ex.Reason {
	case engine.ExitIntr:
		return actPause, 0, nil
	case engine.ExitDebug:
		// Breakpoints are armed only by RunUntil, which handles their
		// exits itself: one seen here is stale and harmless.
		return actContinue, 0, nil
	case engine.ExitIO:
		b.ioExits.Add(1)
		return b.portIO(&ex.IO)
	case engine.ExitHLT:
		return actHalt, 0, nil
	case engine.ExitMMIO:
		// No MMIO devices: reads see all-ones, writes are dropped, as on
		// an unclaimed bus.
		b.unknownPorts.Add(1)
		if !ex.MMIO.Write {
			for i := range ex.MMIO.Data {
				ex.MMIO.Data[i] = 0xff
			}
		}
		return actContinue, 0, nil
	case engine.ExitShutdown:
		if b.pc != nil {
			// Linux's last resort to reboot (reboot=t, or every other
			// method failed) is a triple fault: a reset, like the i8042's.
			return actReset, 0, errorf("run", ErrReset, "triple fault (KVM_EXIT_SHUTDOWN) at RIP %#x: %s", ex.RIP, ex.Message)
		}
		return actFail, 0, errorf("run", ErrGuest, "shutdown (triple fault) at RIP %#x%s: %s", ex.RIP, symSuffix(sym, ex.RIP), ex.Message)
	case engine.ExitInternalError:
		return actFail, 0, errorf("run", ErrGuest, "engine internal error at RIP %#x%s: %s", ex.RIP, symSuffix(sym, ex.RIP), ex.Message)
	}
	return actFail, 0, errorf("run", ErrGuest, "unknown exit reason %d at RIP %#x", ex.Reason, ex.RIP)
}

func symSuffix(sym func(uint64) string, addr uint64) string {
	if sym == nil {
		return ""
	}
	if s := sym(addr); s != "" {
		return " (" + s + ")"
	}
	return ""
}

func (b *bus) portIO(io *engine.IOExit) (exitAction, int, error) {
	n := int(io.Size)
	if n == 0 || len(io.Data) < n {
		return actFail, 0, errorf("run", ErrGuest, "malformed I/O exit: port %#x size %d data %d bytes", io.Port, io.Size, len(io.Data))
	}
	for i := 0; i+n <= len(io.Data); i += n {
		d := io.Data[i : i+n]
		var u *UART
		var reg uint16
		switch {
		case io.Port >= PortCOM1 && io.Port < PortCOM1+8:
			u, reg = b.com1, io.Port-PortCOM1
		case io.Port >= PortCOM2 && io.Port < PortCOM2+8:
			u, reg = b.com2, io.Port-PortCOM2
		case io.Port == PortPowerOff && io.Out:
			var v uint32
			switch n {
			case 1:
				v = uint32(d[0])
			case 2:
				v = uint32(binary.LittleEndian.Uint16(d))
			default:
				v = binary.LittleEndian.Uint32(d)
			}
			return actPowerOff, int(int32(v)), nil
		}
		if u == nil && b.pc != nil {
			switch b.pc.io(io.Port, io.Out, d) {
			case pcNone:
				continue
			case pcReset:
				return actReset, 0, errorf("run", ErrReset, "i8042 reset (command %#x to port %#x)", i8042CmdReset, portI8042Status)
			}
		}
		switch {
		case u == nil:
			b.unknownPorts.Add(1)
			if b.pc != nil {
				b.pc.noteUnknown(io.Port)
			}
			if !io.Out {
				for j := range d {
					d[j] = 0xff
				}
			}
		case io.Out:
			u.Write(reg, d[0])
		default:
			d[0] = u.Read(reg)
			for j := 1; j < n; j++ {
				d[j] = 0xff
			}
		}
	}
	return actContinue, 0, nil
}

// byteQueue is a bounded FIFO between a device (producer, a vCPU thread that
// must never block on the host) and a host reader. When full, new bytes are
// dropped and counted: a host that stops reading must not stall the guest.
type byteQueue struct {
	mu      sync.Mutex
	cond    *sync.Cond
	buf     []byte
	max     int
	closed  bool
	dropped uint64
}

func newByteQueue(max int) *byteQueue {
	q := &byteQueue{max: max}
	q.cond = sync.NewCond(&q.mu)
	return q
}

func (q *byteQueue) put(c byte) {
	q.mu.Lock()
	if len(q.buf) >= q.max {
		q.dropped++
	} else {
		q.buf = append(q.buf, c)
		q.cond.Signal()
	}
	q.mu.Unlock()
}

func (q *byteQueue) Read(p []byte) (int, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.buf) == 0 {
		if q.closed {
			return 0, io.EOF
		}
		q.cond.Wait()
	}
	n := copy(p, q.buf)
	q.buf = q.buf[n:]
	if len(q.buf) == 0 {
		q.buf = nil
	}
	return n, nil
}

func (q *byteQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.cond.Broadcast()
	q.mu.Unlock()
}

// serialPort is the host end of a UART as a byte stream: Read returns
// what the guest transmitted, Write queues input for the guest.
type serialPort struct {
	u *UART
	q *byteQueue
}

func (s *serialPort) Read(p []byte) (int, error) { return s.q.Read(p) }

func (s *serialPort) Write(p []byte) (int, error) {
	n := s.u.Push(p)
	if n < len(p) {
		return n, io.ErrClosedPipe
	}
	return n, nil
}
