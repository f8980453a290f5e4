package emu

import (
	"errors"
	"fmt"
	"sync/atomic"

	"golang.org/x/arch/x86/x86asm"
)

// handler executes one predecoded instruction. regs[rIP] already points
// past it and curRIP at it.
type handler func(c *cpu, in *inst)

type aluFn func(f *Flags, size uint8, a, b uint64) uint64
type shiftFn func(f *Flags, size uint8, a uint64, count uint8) uint64

// inst is one predecoded instruction: its handler and resolved operands.
// Register operands: r1 is the first (destination) operand, r2 the second.
// When an operand is memory (mem), its effective address is
// regs[base] + regs[index]<<scale + disp (+ FS/GS base, see eaf).
type inst struct {
	fn    handler
	next  *inst // the following instruction of the block, nil for the last
	alu   aluFn
	sh    shiftFn
	imm   uint64
	disp  uint64
	len   uint8
	size  uint8 // operand size in bytes
	sz2   uint8 // source size (MOVZX/MOVSX) or other secondary size
	r1    uint8
	r2    uint8
	base  uint8
	index uint8
	scale uint8
	eaf   uint8 // eaFS, eaGS, ea32
	cc    uint8 // condition code, or a sub-operation selector
	mem   bool
	rep   uint8  // 0, repE (F3) or repNE (F2) for string instructions
	idx   uint16 // position in the block
	off   uint16 // offset from the block's first instruction
}

const (
	eaFS = 1 << iota
	eaGS
	ea32
)

const (
	repE  = 1
	repNE = 2
)

// ea computes the linear address of the memory operand.
func (c *cpu) ea(in *inst) uint64 {
	a := c.regs[in.base] + c.regs[in.index]<<(in.scale&3) + in.disp
	if in.eaf != 0 {
		a = c.eaSlow(in, a)
	}
	return a
}

func (c *cpu) eaSlow(in *inst, a uint64) uint64 {
	if in.eaf&ea32 != 0 {
		a = uint64(uint32(a))
	}
	if in.eaf&eaFS != 0 {
		a += c.sr.FS.Base
	} else if in.eaf&eaGS != 0 {
		a += c.sr.GS.Base
	}
	return a
}

// block is a run of instructions translated from one guest-physical page
// (its last instruction may extend into a second page, pfn2).
type block struct {
	phys  uint64
	pfn2  uint64 // noPage unless the last instruction straddles
	gen1  uint32
	gen2  uint32
	insts []inst
	first *inst    // &insts[0]: a block has at least one instruction
	texts []string // disassembly, only when tracing
	// links remember the blocks that followed this one (a branch's two
	// successors), so the run loop skips the TLB and cache lookups.
	links    [2]blockLink
	nextLink uint8
}

// blockLink is valid while its stamp is the vCPU's linkStamp: neither
// has the TLB been flushed since the link was made, nor has any page's
// translated code been invalidated (so the target's page generation is
// unchanged). Rare invalidations then cost every link a re-lookup, and the
// common check is two compares.
type blockLink struct {
	rip   uint64
	stamp uint64
	b     *block
}

// linkStamp changes whenever a block link may have become stale: the sum
// of two counters that only grow, the TLB epoch and the VM's code epoch.
func (c *cpu) linkStamp() uint64 { return c.tlbEpoch + c.codeEpoch.Load() }

// linked returns the block that prev links to at rip, or nil.
func (c *cpu) linked(prev *block, rip uint64) *block {
	stamp := c.linkStamp()
	if l := &prev.links[0]; l.rip == rip && l.stamp == stamp {
		return l.b
	}
	if l := &prev.links[1]; l.rip == rip && l.stamp == stamp {
		return l.b
	}
	return nil
}

// nextBlock returns the block at RIP when prev has no valid link to it,
// and links prev to it. The stamp is taken before the block is looked up
// and validated: an invalidation racing with the lookup then leaves a
// link that is already stale (invalidatePage bumps the code epoch after
// the page generation).
func (c *cpu) nextBlock(prev *block) *block {
	rip := c.regs[rIP]
	stamp := c.linkStamp()
	b := c.getBlock()
	if prev != &c.noBlock && b.pfn2 == noPage {
		prev.links[prev.nextLink&1] = blockLink{rip: rip, stamp: stamp, b: b}
		prev.nextLink++
	}
	return b
}

const noPage = ^uint64(0)

func bcacheIndex(phys uint64) uint64 { return (phys ^ phys>>12) & (bcacheSize - 1) }

// getBlock returns the valid translated block at RIP, translating it if
// needed. Fetch faults are raised for the instruction at RIP.
func (c *cpu) getBlock() *block {
	rip := c.regs[rIP]
	vpn := rip >> 12
	e := &c.tlbX[vpn&tlbMask]
	var phys uint64
	if e.tag == vpn {
		phys = e.phys | rip&0xfff
	} else {
		phys = c.translate(rip, accExec)
		if phys >= c.ram.size {
			c.fatal("instruction fetch at guest-physical %#x (RIP %#x) is outside RAM", phys, rip)
		}
	}
	b := c.bcache[bcacheIndex(phys)]
	if b == nil || b.phys != phys || atomic.LoadUint32(&c.gen[phys>>12]) != b.gen1 || b.pfn2 != noPage && !c.page2OK(b, rip) {
		b = c.blockSlow(phys, rip)
	}
	return b
}

func (c *cpu) page2OK(b *block, rip uint64) bool {
	if atomic.LoadUint32(&c.gen[b.pfn2]) != b.gen2 {
		return false
	}
	return c.translate((rip|0xfff)+1, accExec)>>12 == b.pfn2
}

func (c *cpu) blockSlow(phys, rip uint64) *block {
	if b := c.blocks[phys]; b != nil && atomic.LoadUint32(&c.gen[phys>>12]) == b.gen1 &&
		(b.pfn2 == noPage || c.page2OK(b, rip)) {
		c.bcache[bcacheIndex(phys)] = b
		return b
	}
	b := c.translateBlock(phys, rip)
	c.blocks[phys] = b
	c.bcache[bcacheIndex(phys)] = b
	return b
}

// translateBlock decodes instructions from phys (the translation of rip)
// up to a block-ending instruction, the page end or the block limit.
func (c *cpu) translateBlock(phys, rip uint64) *block {
	pfn := phys >> 12
	// Mark before reading the generation and the bytes, so that a store
	// racing with this translation either bumps the generation we read
	// after it or happens before we read the bytes.
	atomic.OrUint32(&c.mark[pfn], chunkBits(phys&0xfff, min(15, (phys|0xfff)+1-phys)))
	b := &block{phys: phys, pfn2: noPage, gen1: atomic.LoadUint32(&c.gen[pfn])}
	// Unused links never match: their stamp 0 is before the first TLB flush.
	c.translations++
	pageEnd := (phys | 0xfff) + 1
	off := phys
	var buf [16]byte
	for n := 0; n < c.vm.cfg.maxBlock && off < pageEnd; n++ {
		k := min(15, pageEnd-off)
		atomic.OrUint32(&c.mark[pfn], chunkBits(off&0xfff, k))
		c.ram.copyOut(buf[:k], off)
		x, err := decodeInst(buf[:k])
		// x86asm reports some truncated instructions as ErrTruncated and
		// others (e.g. a lone REX prefix: "48 89 53" at a page end) as a
		// 1-byte instruction with Op 0 and no error.
		if k < 15 && ((err != nil && errors.Is(err, x86asm.ErrTruncated)) || (err == nil && x.Op == 0)) {
			if n > 0 {
				break // let the straddling instruction start its own block
			}
			lin2 := (rip | 0xfff) + 1
			p2 := c.translate(lin2, accExec)
			if p2+15-k > c.ram.size {
				c.fatal("instruction fetch at guest-physical %#x (RIP %#x) is outside RAM", p2, lin2)
			}
			atomic.OrUint32(&c.mark[p2>>12], chunkBits(p2&0xfff, 15-k))
			b.pfn2 = p2 >> 12
			b.gen2 = atomic.LoadUint32(&c.gen[p2>>12])
			c.ram.copyOut(buf[k:15], p2)
			k = 15
			x, err = decodeInst(buf[:k])
		}
		var in inst
		end := true
		if err == nil {
			in, end = safeCompile(&x, !c.vm.cfg.generic)
		} else {
			in = inst{fn: hUD, len: 1}
		}
		if in.fn == nil {
			in = inst{fn: hUD, len: uint8(max(x.Len, 1))}
			end = true
		}
		b.insts = append(b.insts, in)
		if c.trace {
			text := fmt.Sprintf("(bad: % x)", buf[:min(k, 4)])
			if err == nil {
				text = x86asm.GNUSyntax(x, 0, nil)
			}
			b.texts = append(b.texts, text)
		}
		off += uint64(in.len)
		if end || b.pfn2 != noPage {
			break
		}
	}
	b.insts = b.insts[:len(b.insts):len(b.insts)]
	b.first = &b.insts[0]
	var pos uint16
	for i := range b.insts {
		b.insts[i].idx = uint16(i)
		b.insts[i].off = pos
		pos += uint16(b.insts[i].len)
		if i+1 < len(b.insts) {
			b.insts[i].next = &b.insts[i+1]
		}
	}
	return b
}

// safeCompile is compile with a guard: a decoder corner case that trips
// it must become #UD in the guest, not a stopped vCPU. fast substitutes
// the fast handler where there is one (ops_fast.go).
func safeCompile(x *x86asm.Inst, fast bool) (in inst, end bool) {
	defer func() {
		if recover() != nil {
			in, end = inst{len: uint8(max(x.Len, 1))}, true
		}
	}()
	in, end = compile(x)
	if fast {
		if h := fastHandler(x, &in); h != nil {
			in.fn = h
		}
	}
	return in, end
}

// decodeInst decodes one 64-bit instruction. x86asm decodes endbr64/32
// (f3 0f 1e fa/fb) wrongly; they are NOPs here.
func decodeInst(b []byte) (x86asm.Inst, error) {
	if len(b) >= 4 && b[0] == 0xf3 && b[1] == 0x0f && b[2] == 0x1e && (b[3] == 0xfa || b[3] == 0xfb) {
		return x86asm.Inst{Op: x86asm.NOP, Len: 4, Mode: 64, DataSize: 32, AddrSize: 64}, nil
	}
	return x86asm.Decode(b, 64)
}

// Implemented decodes the instruction at the start of code and reports its
// length and whether the interpreter executes it (err says why not: a
// decode error or an instruction it would answer with #UD). UD0/UD1/UD2
// count as implemented: raising #UD is what they do.
func Implemented(code []byte) (n int, err error) {
	defer func() {
		if r := recover(); r != nil {
			n, err = 0, fmt.Errorf("decode % x: internal error: %v", code[:min(len(code), 15)], r)
		}
	}()
	x, err := decodeInst(code[:min(len(code), 15)])
	if err != nil {
		return 0, fmt.Errorf("decode % x: %w", code[:min(len(code), 15)], err)
	}
	in, _ := compile(&x)
	switch {
	case x.Op == x86asm.UD0 || x.Op == x86asm.UD1 || x.Op == x86asm.UD2:
		return x.Len, nil
	case in.fn == nil:
		return x.Len, fmt.Errorf("%s: not implemented", x86asm.GNUSyntax(x, 0, nil))
	}
	return x.Len, nil
}
