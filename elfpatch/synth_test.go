package elfpatch

import (
	"bytes"
	"fmt"
)

// synthKernel builds a vmlinux-class ELF in memory: nfuncs functions of
// fnSize bytes each (fentry NOP, ret, int3 padding) in one .text, a global
// FUNC symbol each (every 16th also has a local duplicate name, as static
// functions do), __mcount_loc with every site, and one PT_LOAD. With
// nfuncs = 100000 and fnSize = 512 it is ~51 MB with 100k+ symbols.
func synthKernel(nfuncs, fnSize int) []byte {
	const (
		textVA = 0xffffffff81000000
		textPA = 0x1000000
	)
	type sec struct {
		name                string
		typ                 uint32
		flags, addr, align  uint64
		link, info, entsize uint32
		data                []byte
	}
	text := bytes.Repeat([]byte{0xcc}, nfuncs*fnSize)
	mcount := make([]byte, 8*nfuncs)
	var strtab bytes.Buffer
	strtab.WriteByte(0)
	var symtab bytes.Buffer
	symtab.Write(make([]byte, symSize))
	putSym := func(name string, bind SymBind, typ SymType, shndx uint16, value, size uint64) {
		var b [symSize]byte
		le.PutUint32(b[0:], uint32(strtab.Len()))
		strtab.WriteString(name)
		strtab.WriteByte(0)
		b[4] = byte(bind)<<4 | byte(typ)
		le.PutUint16(b[6:], shndx)
		le.PutUint64(b[8:], value)
		le.PutUint64(b[16:], size)
		symtab.Write(b[:])
	}
	// Locals first (ELF requires it), then globals.
	for i := 0; i < nfuncs; i += 16 {
		putSym(fmt.Sprintf("synth_fn_%06d", i), BindLocal, TypeFunc, 1, textVA+uint64(i*fnSize), uint64(fnSize))
	}
	nlocal := uint32(symtab.Len() / symSize)
	for i := 0; i < nfuncs; i++ {
		off := i * fnSize
		copy(text[off:], Nop5[:])
		text[off+5] = 0xc3
		le.PutUint64(mcount[8*i:], textVA+uint64(off))
		name := fmt.Sprintf("synth_fn_%06d", i)
		if i%16 == 0 {
			name = fmt.Sprintf("synth_gfn_%06d", i)
		}
		putSym(name, BindGlobal, TypeFunc, 1, textVA+uint64(off), uint64(fnSize))
	}
	mcountVA := textVA + uint64(len(text))
	putSym("__start_mcount_loc", BindGlobal, TypeNoType, 2, mcountVA, 0)
	putSym("__stop_mcount_loc", BindGlobal, TypeNoType, 2, mcountVA+uint64(len(mcount)), 0)
	secs := []sec{
		{},
		{name: ".text", typ: SHT_PROGBITS, flags: SHF_ALLOC | SHF_EXECINSTR, addr: textVA, align: 16, data: text},
		{name: ".init.data", typ: SHT_PROGBITS, flags: SHF_ALLOC, addr: mcountVA, align: 8, data: mcount},
		{name: ".symtab", typ: SHT_SYMTAB, align: 8, link: 4, info: nlocal, entsize: symSize, data: symtab.Bytes()},
		{name: ".strtab", typ: SHT_STRTAB, align: 1, data: strtab.Bytes()},
		{name: ".shstrtab", typ: SHT_STRTAB, align: 1},
	}
	var shstr bytes.Buffer
	shstr.WriteByte(0)
	names := make([]uint32, len(secs))
	for i := 1; i < len(secs); i++ {
		names[i] = uint32(shstr.Len())
		shstr.WriteString(secs[i].name)
		shstr.WriteByte(0)
	}
	secs[5].data = shstr.Bytes()

	var out bytes.Buffer
	out.Write(make([]byte, headerSize+progSize))
	offs := make([]uint64, len(secs))
	for i := 1; i < len(secs); i++ {
		for out.Len()%16 != 0 {
			out.WriteByte(0)
		}
		offs[i] = uint64(out.Len())
		out.Write(secs[i].data)
	}
	for out.Len()%8 != 0 {
		out.WriteByte(0)
	}
	shoff := out.Len()
	for i, s := range secs {
		var b [sectionSize]byte
		le.PutUint32(b[0:], names[i])
		le.PutUint32(b[4:], s.typ)
		le.PutUint64(b[8:], s.flags)
		le.PutUint64(b[16:], s.addr)
		le.PutUint64(b[24:], offs[i])
		le.PutUint64(b[32:], uint64(len(s.data)))
		le.PutUint32(b[40:], s.link)
		le.PutUint32(b[44:], s.info)
		le.PutUint64(b[48:], s.align)
		le.PutUint64(b[56:], uint64(s.entsize))
		out.Write(b[:])
	}
	d := out.Bytes()
	copy(d, "\x7fELF\x02\x01\x01")
	le.PutUint16(d[16:], etExec)
	le.PutUint16(d[18:], emX86_64)
	le.PutUint32(d[20:], 1)
	le.PutUint64(d[24:], textVA)
	le.PutUint64(d[32:], headerSize)
	le.PutUint64(d[40:], uint64(shoff))
	le.PutUint16(d[52:], headerSize)
	le.PutUint16(d[54:], progSize)
	le.PutUint16(d[56:], 1)
	le.PutUint16(d[58:], sectionSize)
	le.PutUint16(d[60:], uint16(len(secs)))
	le.PutUint16(d[62:], 5)
	ph := d[headerSize:]
	le.PutUint32(ph[0:], ptLoad)
	le.PutUint32(ph[4:], 5)
	le.PutUint64(ph[8:], offs[1])
	le.PutUint64(ph[16:], textVA)
	le.PutUint64(ph[24:], textPA)
	seg := uint64(len(text) + len(mcount))
	le.PutUint64(ph[32:], offs[2]+uint64(len(mcount))-offs[1])
	le.PutUint64(ph[40:], max(seg, offs[2]+uint64(len(mcount))-offs[1]))
	le.PutUint64(ph[48:], 4096)
	return d
}
