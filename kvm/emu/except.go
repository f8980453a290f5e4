package emu

import (
	"fmt"
	"runtime/debug"
	"strings"

	"klp-kvm/kvm/engine"
)

type eventKind uint8

const (
	evFault    eventKind = iota // CPU exception (fault or trap)
	evExternal                  // APIC interrupt
	evSoft                      // INT n / INT3 / INTO
)

// event is an exception or interrupt to deliver through the IDT.
type event struct {
	vec     uint8
	kind    eventKind
	hasCode bool
	code    uint32
	rip     uint64 // the RIP the frame saves
}

var excNames = [...]string{"#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "#MF",
	"#TS", "#NP", "#SS", "#GP", "#PF", "#15", "#MF", "#AC", "#MC", "#XM"}

func (e event) String() string {
	name := fmt.Sprintf("vector %d", e.vec)
	if e.kind == evFault && int(e.vec) < len(excNames) {
		name = excNames[e.vec]
	} else if e.kind == evSoft {
		name = fmt.Sprintf("INT %#x", e.vec)
	} else if e.kind == evExternal {
		name = fmt.Sprintf("interrupt %#x", e.vec)
	}
	if e.hasCode {
		name += fmt.Sprintf(" (error code %#x)", e.code)
	}
	return name
}

// fault raises exception vec without an error code for the current
// instruction (the frame saves its address, so it restarts).
func (c *cpu) fault(vec uint8) {
	c.regs[rIP] = c.curRIP
	c.exc = event{vec: vec, kind: evFault, rip: c.curRIP}
	panic(sigException)
}

func (c *cpu) faultCode(vec uint8, code uint32) {
	c.regs[rIP] = c.curRIP
	c.exc = event{vec: vec, kind: evFault, hasCode: true, code: code, rip: c.curRIP}
	panic(sigException)
}

// trap raises an event whose frame saves the next instruction (INT n, INT3).
func (c *cpu) trap(vec uint8, kind eventKind) {
	c.exc = event{vec: vec, kind: kind, rip: c.regs[rIP]}
	panic(sigException)
}

func (c *cpu) ud() { c.fault(vecUD) }

func (c *cpu) gp0() { c.faultCode(vecGP, 0) }

func contributory(v uint8) bool { return v == vecDE || v >= vecTS && v <= vecGP }

// raise delivers e, applying the SDM's rules for faults during delivery:
// contributory-on-contributory or #PF-then-#PF/contributory becomes #DF,
// anything during #DF is a triple fault (ExitShutdown); a benign first
// event is replaced by the second.
func (c *cpu) raise(e event) {
	chain := []string{}
	for range 8 {
		chain = append(chain, e.String())
		if c.trace {
			c.traceLine(fmt.Sprintf("cpu%d event %v at RIP %#x (CR2 %#x)", c.id, e, e.rip, c.sr.CR2))
		}
		nested, ok := c.tryDeliver(e)
		if ok {
			return
		}
		if e.kind == evSoft {
			nested.rip = c.curRIP
		} else {
			nested.rip = e.rip
		}
		c.regs[rIP] = nested.rip
		switch {
		case e.kind == evFault && e.vec == vecDF:
			chain = append(chain, nested.String())
			c.tripleFault(nested.rip, chain)
			return
		case e.kind == evFault && (contributory(e.vec) && contributory(nested.vec) ||
			e.vec == vecPF && (nested.vec == vecPF || contributory(nested.vec))):
			chain = append(chain, nested.String())
			e = event{vec: vecDF, kind: evFault, hasCode: true, code: 0, rip: nested.rip}
		default:
			e = nested
		}
	}
	c.tripleFault(e.rip, chain)
}

func (c *cpu) tripleFault(rip uint64, chain []string) {
	msg := fmt.Sprintf("triple fault at RIP %#x: %s", rip, strings.Join(chain, " -> "))
	if c.sr.CR2 != 0 {
		msg += fmt.Sprintf(" (CR2 %#x)", c.sr.CR2)
	}
	c.shutdown = msg
	c.exit = engine.Exit{Reason: engine.ExitShutdown, RIP: rip, Message: msg}
	c.exitReady = true
}

// tryDeliver pushes the frame and enters the handler; a fault on the way
// is returned as nested (ok=false) with no state changed.
func (c *cpu) tryDeliver(e event) (nested event, ok bool) {
	defer func() {
		r := recover()
		if r == nil {
			return
		}
		switch r {
		case sigException:
			nested, ok = c.exc, false
		case sigFatal:
			c.setExit(engine.ExitInternalError, c.fatalMsg)
			ok = true
		default:
			c.setExit(engine.ExitInternalError, fmt.Sprintf("emu: interpreter bug delivering %v: %v\n%s", e, r, debug.Stack()))
			ok = true
		}
		c.stop = false
	}()
	c.deliver(e)
	return event{}, true
}

func (c *cpu) deliver(e event) {
	ext := uint32(0)
	if e.kind != evSoft {
		ext = 1
	}
	idtCode := uint32(e.vec)*8 + 2 + ext
	oldCPL := c.cpl
	committed := false
	if oldCPL != 0 {
		// IDT, GDT and TSS reads and the pushes on the new stack are
		// supervisor accesses. The TLB holds translations checked at the
		// current CPL, so it is flushed around the switch, and restored
		// to the old CPL if delivery faults.
		c.flushTLB()
		c.cpl = 0
		defer func() {
			if !committed {
				c.cpl = oldCPL
				c.flushTLB()
			}
		}()
	}
	if uint32(e.vec)*16+15 > uint32(c.sr.IDT.Limit) {
		c.faultCode(vecGP, idtCode)
	}
	gate := c.sr.IDT.Base + uint64(e.vec)*16
	lo := c.read(gate, 8)
	hi := c.read(gate+8, 8)
	typ := lo >> 40 & 0xf
	dpl := uint8(lo >> 45 & 3)
	if typ != 0xe && typ != 0xf {
		c.faultCode(vecGP, idtCode)
	}
	if e.kind == evSoft && dpl < oldCPL {
		c.faultCode(vecGP, idtCode)
	}
	if lo>>47&1 == 0 {
		c.faultCode(vecNP, idtCode)
	}
	sel := uint16(lo >> 16)
	target := lo&0xffff | (lo>>48&0xffff)<<16 | (hi&0xffffffff)<<32
	ist := lo >> 32 & 7
	cs := c.codeDescriptor(sel, ext)
	newCPL := cs.DPL
	if newCPL > oldCPL {
		c.faultCode(vecGP, uint32(sel&^3)+ext)
	}
	rsp := c.regs[rSP]
	switch {
	case ist != 0:
		rsp = c.read(c.sr.TR.Base+0x24+(ist-1)*8, 8)
	case newCPL < oldCPL:
		rsp = c.read(c.sr.TR.Base+4+uint64(newCPL)*8, 8)
	}
	rsp &^= 15
	frame := [6]uint64{uint64(c.sr.SS.Selector), c.regs[rSP], c.rflags(), uint64(c.sr.CS.Selector), e.rip, uint64(e.code)}
	n := 5
	if e.hasCode {
		n = 6
	}
	if !canonical(target) {
		c.faultCode(vecGP, ext)
	}
	c.cpl = newCPL // the new stack is accessed at the handler's privilege
	for i := 0; i < n; i++ {
		rsp -= 8
		c.write(rsp, 8, frame[i])
	}
	// Committed: nothing below can fault.
	committed = true
	if oldCPL != 0 && newCPL != 0 {
		c.flushTLB() // entries filled by the supervisor reads above
	}
	c.regs[rSP] = rsp
	c.regs[rIP] = target
	if newCPL != oldCPL {
		c.sr.SS = engine.Segment{Selector: uint16(newCPL), Unusable: 1, DPL: newCPL}
	}
	c.sr.CS = cs
	c.rf &^= FlagTF | flagNT | flagRF
	if typ == 0xe {
		c.rf &^= FlagIF
	}
}

// descriptor reads the 8-byte GDT entry for sel (LDT selectors are not
// supported and raise #GP like an out-of-limit selector).
func (c *cpu) descriptor(sel uint16, ext uint32) uint64 {
	if sel&4 != 0 || uint32(sel|7) > uint32(c.sr.GDT.Limit) {
		c.faultCode(vecGP, uint32(sel&^3)+ext)
	}
	return c.read(c.sr.GDT.Base+uint64(sel&^7), 8)
}

// segmentFrom decodes a code/data descriptor into the KVM segment form.
func segmentFrom(sel uint16, d uint64) engine.Segment {
	limit := uint32(d&0xffff | (d>>48&0xf)<<16)
	g := uint8(d >> 55 & 1)
	if g != 0 {
		limit = limit<<12 | 0xfff
	}
	return engine.Segment{
		Base:     d>>16&0xffffff | (d>>56&0xff)<<24,
		Limit:    limit,
		Selector: sel,
		Type:     uint8(d >> 40 & 0xf),
		S:        uint8(d >> 44 & 1),
		DPL:      uint8(d >> 45 & 3),
		Present:  uint8(d >> 47 & 1),
		AVL:      uint8(d >> 52 & 1),
		L:        uint8(d >> 53 & 1),
		DB:       uint8(d >> 54 & 1),
		G:        g,
	}
}

// codeDescriptor loads and checks a 64-bit code segment for CS.
func (c *cpu) codeDescriptor(sel uint16, ext uint32) engine.Segment {
	if sel&^3 == 0 {
		c.faultCode(vecGP, ext)
	}
	s := segmentFrom(sel, c.descriptor(sel, ext))
	if s.S == 0 || s.Type&8 == 0 || s.L == 0 || s.DB != 0 {
		c.faultCode(vecGP, uint32(sel&^3)+ext)
	}
	if s.Present == 0 {
		c.faultCode(vecNP, uint32(sel&^3)+ext)
	}
	return s
}

// loadDataSeg implements MOV/POP to DS, ES, SS, FS, GS in 64-bit mode.
// seg is the x86 segment number (0 ES, 2 SS, 3 DS, 4 FS, 5 GS).
func (c *cpu) loadDataSeg(seg int, sel uint16) {
	var s engine.Segment
	if sel&^3 == 0 {
		if seg == 2 && (c.cpl == 3 || sel&3 != uint16(c.cpl)) {
			c.gp0()
		}
		s = engine.Segment{Selector: sel, Unusable: 1}
	} else {
		s = segmentFrom(sel, c.descriptor(sel, 0))
		code := uint32(sel &^ 3)
		switch {
		case s.S == 0:
			c.faultCode(vecGP, code)
		case seg == 2 && (s.Type&8 != 0 || s.Type&2 == 0 || s.DPL != c.cpl):
			c.faultCode(vecGP, code) // SS needs a writable data segment at CPL
		case seg != 2 && s.Type&8 != 0 && s.Type&2 == 0:
			c.faultCode(vecGP, code) // execute-only code
		case s.Present == 0 && seg == 2:
			c.faultCode(vecSS, code)
		case s.Present == 0:
			c.faultCode(vecNP, code)
		}
	}
	switch seg {
	case 0:
		c.sr.ES = s
	case 2:
		c.sr.SS = s
		c.shadowArm = true
		c.stop = true
	case 3:
		c.sr.DS = s
	case 4:
		c.sr.FS = s
	case 5:
		c.sr.GS = s
	default:
		c.ud()
	}
}

// farReturn pops RIP and CS (LRET) or RIP, CS, RFLAGS, RSP, SS (IRETQ).
func (c *cpu) farReturn(size uint8, iret bool) {
	sp := c.regs[rSP]
	rip := c.read(sp, size)
	sel := uint16(c.read(sp+uint64(size), size))
	var fl, rsp, ss uint64
	if iret {
		fl = c.read(sp+2*uint64(size), size)
		rsp = c.read(sp+3*uint64(size), size)
		ss = c.read(sp+4*uint64(size), size)
	}
	rpl := uint8(sel & 3)
	if rpl < c.cpl {
		c.faultCode(vecGP, uint32(sel&^3))
	}
	cs := c.codeDescriptor(sel, 0)
	if cs.DPL != rpl && cs.Type&4 == 0 {
		c.faultCode(vecGP, uint32(sel&^3))
	}
	if !canonical(rip) {
		c.gp0()
	}
	if !iret {
		if rpl != c.cpl {
			c.ud() // far return to another privilege level: not supported
		}
		c.regs[rSP] = sp + 2*uint64(size)
		c.regs[rIP] = rip
		c.sr.CS = cs
		c.stop = true
		return
	}
	oldCPL := c.cpl
	// SS: null is fine for a 64-bit return to CPL 0..2.
	var ssSeg engine.Segment
	if uint16(ss)&^3 == 0 {
		if rpl == 3 {
			c.gp0()
		}
		ssSeg = engine.Segment{Selector: uint16(ss), Unusable: 1, DPL: rpl}
	} else {
		ssSeg = segmentFrom(uint16(ss), c.descriptor(uint16(ss), 0))
		if ssSeg.S == 0 || ssSeg.Type&8 != 0 || ssSeg.Type&2 == 0 || ssSeg.DPL != rpl || uint8(ss&3) != rpl {
			c.faultCode(vecGP, uint32(ss&^3))
		}
		if ssSeg.Present == 0 {
			c.faultCode(vecSS, uint32(ss&^3))
		}
	}
	c.regs[rIP] = rip
	c.regs[rSP] = rsp
	c.sr.CS = cs
	c.sr.SS = ssSeg
	c.cpl = rpl
	if rpl != oldCPL {
		c.flushTLB()
	}
	saved := c.cpl
	c.cpl = oldCPL // POPF rules use the CPL before the return
	c.setRFLAGS(fl)
	c.cpl = saved
	c.stop = true
	c.recheckIRQ()
}
