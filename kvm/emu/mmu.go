package emu

import (
	"sync/atomic"

	"klp-kvm/kvm/engine"
)

// Control register and EFER bits.
const (
	cr0PE uint64 = 1 << 0
	cr0TS uint64 = 1 << 3
	cr0WP uint64 = 1 << 16
	cr0PG uint64 = 1 << 31

	cr4PSE  uint64 = 1 << 4
	cr4PAE  uint64 = 1 << 5
	cr4PGE  uint64 = 1 << 7
	cr4SMEP uint64 = 1 << 20

	eferSCE uint64 = 1 << 0
	eferLME uint64 = 1 << 8
	eferLMA uint64 = 1 << 10
	eferNXE uint64 = 1 << 11
)

// Page-table entry bits.
const (
	pteP    uint64 = 1 << 0
	pteW    uint64 = 1 << 1
	pteU    uint64 = 1 << 2
	pteA    uint64 = 1 << 5
	pteD    uint64 = 1 << 6
	ptePS   uint64 = 1 << 7
	pteNX   uint64 = 1 << 63
	pteAddr uint64 = 0x000ffffffffff000
)

// #PF error code bits.
const (
	pfP    uint32 = 1 << 0
	pfW    uint32 = 1 << 1
	pfU    uint32 = 1 << 2
	pfRSVD uint32 = 1 << 3
	pfI    uint32 = 1 << 4
)

type access uint8

const (
	accRead access = iota
	accWrite
	accExec
)

const (
	vecDE = 0
	vecDB = 1
	vecBP = 3
	vecOF = 4
	vecUD = 6
	vecNM = 7
	vecDF = 8
	vecTS = 10
	vecNP = 11
	vecSS = 12
	vecGP = 13
	vecPF = 14
)

func canonical(a uint64) bool { return uint64(int64(a<<16)>>16) == a }

func (c *cpu) flushTLB() {
	c.tlbEpoch++
	for i := range c.tlbR {
		c.tlbR[i].tag = tagInvalid
		c.tlbW[i].tag = tagInvalid
		c.tlbX[i].tag = tagInvalid
	}
}

// translate maps linear address lin to a guest-physical address for acc,
// walking the page tables (setting accessed/dirty bits) and raising #PF or
// #GP as the CPU would. RAM pages are entered in the TLB.
func (c *cpu) translate(lin uint64, acc access) uint64 {
	if c.sr.CR0&cr0PG == 0 {
		return lin
	}
	if !canonical(lin) {
		c.faultCode(vecGP, 0)
	}
	nxe := c.sr.EFER&eferNXE != 0
	user := c.cpl == 3
	table := c.sr.CR3 & pteAddr
	writable, userOK, nx := true, true, false
	var entries [4]uint64
	for level := 4; level >= 1; level-- {
		shift := uint(12 + 9*(level-1))
		ea := table + (lin>>shift&511)*8
		if ea+8 > c.ram.size {
			c.fatal("page-table entry at guest-physical %#x (level %d, for %#x) is outside RAM", ea, level, lin)
		}
		pte := c.ram.load64(ea)
		entries[4-level] = ea
		if pte&pteP == 0 {
			c.pageFault(lin, acc, 0)
		}
		if pte&pteNX != 0 && !nxe || level == 4 && pte&ptePS != 0 {
			c.pageFault(lin, acc, pfP|pfRSVD)
		}
		writable = writable && pte&pteW != 0
		userOK = userOK && pte&pteU != 0
		nx = nx || nxe && pte&pteNX != 0
		if level > 1 && pte&ptePS == 0 {
			table = pte & pteAddr
			continue
		}
		size := uint64(1) << shift
		if level > 1 && (pte>>13)&(size>>13-1) != 0 {
			c.pageFault(lin, acc, pfP|pfRSVD) // large-page address bits below the page size
		}
		switch {
		case user && !userOK:
			c.pageFault(lin, acc, pfP)
		case acc == accWrite && !writable && (user || c.sr.CR0&cr0WP != 0):
			c.pageFault(lin, acc, pfP)
		case acc == accExec && (nx || !user && userOK && c.sr.CR4&cr4SMEP != 0):
			c.pageFault(lin, acc, pfP)
		}
		for i := 0; i <= 4-level; i++ {
			bits := pteA
			if i == 4-level && acc == accWrite {
				bits |= pteD
			}
			if c.ram.load64(entries[i])&bits != bits {
				c.ram.or64(entries[i], bits)
			}
		}
		phys := pte&pteAddr&^(size-1) | lin&(size-1)
		page := phys &^ 0xfff
		if page+0x1000 <= c.ram.size {
			vpn := lin >> 12
			e := tlbEntry{tag: vpn, phys: page}
			switch acc {
			case accRead:
				c.tlbR[vpn&tlbMask] = e
			case accWrite:
				c.tlbW[vpn&tlbMask] = tlbWEntry{e, &c.mark[page>>12]}
				c.tlbR[vpn&tlbMask] = e
			case accExec:
				c.tlbX[vpn&tlbMask] = e
			}
		}
		return phys
	}
	panic("unreachable")
}

func (c *cpu) pageFault(lin uint64, acc access, code uint32) {
	if acc == accWrite {
		code |= pfW
	}
	if c.cpl == 3 {
		code |= pfU
	}
	if acc == accExec && (c.sr.EFER&eferNXE != 0 || c.sr.CR4&cr4SMEP != 0) {
		code |= pfI
	}
	c.sr.CR2 = lin
	c.faultCode(vecPF, code)
}

// tlbMaps reports whether TLB entry e, the slot of lin's page, maps a
// size-byte access at lin. Its tag must be the page of the access's last
// byte: that is lin's page unless the access straddles into the next page,
// whose number is never the tag of lin's slot, so one compare tests both.
// (Near the top of the address space lin+size-1 wraps to page 0, which is
// not the tag of lin's slot either.)
func tlbMaps(e *tlbEntry, lin uint64, size uint8) bool {
	return e.tag == (lin+uint64(size)-1)>>12
}

// read loads size bytes from linear address lin.
func (c *cpu) read(lin uint64, size uint8) uint64 {
	if e := &c.tlbR[lin>>12&tlbMask]; tlbMaps(e, lin, size) {
		return c.ram.load(e.phys|lin&0xfff, size)
	}
	return c.readSlow(lin, size, nil)
}

// write stores size bytes at linear address lin.
func (c *cpu) write(lin uint64, size uint8, v uint64) {
	if e := &c.tlbW[lin>>12&tlbMask]; tlbMaps(&e.tlbEntry, lin, size) {
		p := e.phys | lin&0xfff
		c.ram.store(p, size, v)
		c.codeStore(p, uint64(size))
		return
	}
	c.writeSlow(lin, size, v, nil)
}

// tryRead64 and tryWrite64 are the TLB hit paths of 8-byte reads and
// writes, inlined into the handlers of stack operations and 64-bit MOVs
// (most of a guest's memory traffic). They report false, having done
// nothing, when the access needs read/write: a TLB miss, a page
// straddle, or (for a write) a page holding translated code.
func (c *cpu) tryRead64(lin uint64) (uint64, bool) {
	e := &c.tlbR[lin>>12&tlbMask]
	if !tlbMaps(e, lin, 8) {
		return 0, false
	}
	return c.ram.load64(e.phys | lin&0xfff), true
}

// tryRead is tryRead64 for any size (a constant at every call site, so
// that the size switch of the access folds); tryWrite32 is tryWrite64 for
// 4 bytes.
func (c *cpu) tryRead(lin uint64, size uint8) (uint64, bool) {
	e := &c.tlbR[lin>>12&tlbMask]
	if !tlbMaps(e, lin, size) {
		return 0, false
	}
	return c.ram.load(e.phys|lin&0xfff, size), true
}

func (c *cpu) tryWrite32(lin, v uint64) bool {
	e := &c.tlbW[lin>>12&tlbMask]
	if !tlbMaps(&e.tlbEntry, lin, 4) || atomic.LoadUint32(e.mark) != 0 {
		return false
	}
	c.ram.store32(e.phys|lin&0xfff, uint32(v))
	return true
}

func (c *cpu) tryWrite64(lin, v uint64) bool {
	e := &c.tlbW[lin>>12&tlbMask]
	if !tlbMaps(&e.tlbEntry, lin, 8) || atomic.LoadUint32(e.mark) != 0 {
		return false
	}
	c.ram.store64(e.phys|lin&0xfff, v)
	return true
}

// codeWritten invalidates code translated from physical page pfn after a
// guest store into it; if the running block came from that page it ends
// after the current instruction, so the modified code is re-translated.
func (c *cpu) codeWritten(pfn uint64) {
	c.vm.invalidatePage(pfn)
	if b := c.cur; b != nil && (b.phys>>12 == pfn || b.pfn2 == pfn) {
		c.stop = true
	}
}

// readSlow handles TLB misses, page-straddling accesses and, for MOV
// (mov != nil), MMIO. Any other access outside RAM stops the vCPU.
func (c *cpu) readSlow(lin uint64, size uint8, mov *inst) uint64 {
	if lin&0xfff > 0x1000-uint64(size) {
		// Straddles two pages: translate both before touching either.
		n1 := 0x1000 - lin&0xfff
		p1 := c.translate(lin, accRead)
		p2 := c.translate(lin+n1, accRead)
		if p1+n1 > c.ram.size || p2+uint64(size)-n1 > c.ram.size {
			c.fatal("%d-byte read at %#x straddles pages outside RAM", size, lin)
		}
		var v uint64
		for i := uint64(size); i > 0; i-- {
			p := p1 + i - 1
			if i-1 >= n1 {
				p = p2 + i - 1 - n1
			}
			v = v<<8 | c.ram.load(p, 1)
		}
		return v
	}
	p := c.translate(lin, accRead)
	if p+uint64(size) <= c.ram.size {
		return c.ram.load(p, size)
	}
	if mov == nil {
		c.fatal("read of %d bytes at guest-physical %#x (linear %#x) is outside RAM and not by a MOV", size, p, lin)
	}
	c.mmioExit(p, size, false, 0)
	return 0
}

func (c *cpu) writeSlow(lin uint64, size uint8, v uint64, mov *inst) {
	if lin&0xfff > 0x1000-uint64(size) {
		n1 := 0x1000 - lin&0xfff
		p1 := c.translate(lin, accWrite)
		p2 := c.translate(lin+n1, accWrite)
		if p1+n1 > c.ram.size || p2+uint64(size)-n1 > c.ram.size {
			c.fatal("%d-byte write at %#x straddles pages outside RAM", size, lin)
		}
		for i := uint64(0); i < uint64(size); i++ {
			p := p1 + i
			if i >= n1 {
				p = p2 + i - n1
			}
			c.ram.store(p, 1, v>>(8*i))
		}
		c.codeStore(p1, n1)
		c.codeStore(p2, uint64(size)-n1)
		return
	}
	p := c.translate(lin, accWrite)
	if p+uint64(size) <= c.ram.size {
		c.ram.store(p, size, v)
		c.codeStore(p, uint64(size))
		return
	}
	if mov == nil {
		c.fatal("write of %d bytes at guest-physical %#x (linear %#x) is outside RAM and not by a MOV", size, p, lin)
	}
	c.mmioExit(p, size, true, v)
}

// mmioExit ends the current MOV with an MMIO exit. A write is complete
// (RIP already past it); a read is finished by the next Run (complete).
func (c *cpu) mmioExit(phys uint64, size uint8, write bool, v uint64) {
	c.setExit(engine.ExitMMIO, "")
	c.exit.MMIO.Addr = phys
	c.exit.MMIO.Write = write
	c.exit.MMIO.Data = c.ioBuf[:size]
	if write {
		for i := range c.exit.MMIO.Data {
			c.ioBuf[i] = byte(v >> (8 * i))
		}
		return
	}
	clear(c.ioBuf[:size])
	c.pend = pendMMIORead
	c.pendNext = c.regs[rIP]
	c.regs[rIP] = c.curRIP
}

// physRMW resolves a locked read-modify-write target: the RAM offset for
// a write access of size bytes at lin, or ok=false if the access straddles
// pages (the caller then uses the global lock and the slow paths).
func (c *cpu) physRMW(lin uint64, size uint8) (off uint64, ok bool) {
	if lin&0xfff > 0x1000-uint64(size) {
		// Check both pages for write before the caller touches either.
		c.translate(lin, accWrite)
		c.translate(lin+(0x1000-lin&0xfff), accWrite)
		return 0, false
	}
	vpn := lin >> 12
	e := &c.tlbW[vpn&tlbMask]
	var p uint64
	if e.tag == vpn {
		p = e.phys | lin&0xfff
	} else {
		p = c.translate(lin, accWrite)
		if p+uint64(size) > c.ram.size {
			c.fatal("locked access at guest-physical %#x (linear %#x) is outside RAM", p, lin)
		}
	}
	return p, true
}

// chunkBits is the code-mark mask for bytes [off, off+n) of a page:
// one bit per 128-byte chunk, so that data stores sharing a page with
// translated code do not invalidate it.
func chunkBits(off, n uint64) uint32 {
	first, last := off>>codeChunkShift, (off+n-1)>>codeChunkShift
	return uint32(uint64(2)<<last - uint64(1)<<first)
}

const codeChunkShift = 7

// codeStore does the translated-code bookkeeping after a store of n bytes
// at physical p (within one page).
// The test for "no code on this page" (nearly every store) is inlined.
func (c *cpu) codeStore(p, n uint64) {
	if m := atomic.LoadUint32(&c.mark[p>>12]); m != 0 {
		c.codeStoreMarked(p, n, m)
	}
}

func (c *cpu) codeStoreMarked(p, n uint64, m uint32) {
	if m&chunkBits(p&0xfff, n) != 0 {
		c.codeWritten(p >> 12)
	}
}
