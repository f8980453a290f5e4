package elfpatch

import "encoding/binary"

// On-disk ELF64 little-endian structures and constants, decoded by hand
// (bounds are checked by the callers before decoding).

const (
	elfClass64   = 2
	elfData2LSB  = 1
	emX86_64     = 62
	etRel        = 1
	etExec       = 2
	etDyn        = 3
	headerSize   = 64
	sectionSize  = 64
	progSize     = 56
	symSize      = 24
	relaSize     = 24
	shnUndef     = 0
	shnLoReserve = 0xff00
	shnLivepatch = 0xff20 // Linux: symbols resolved by the livepatch core
	shnAbs       = 0xfff1
	shnCommon    = 0xfff2
	shnXindex    = 0xffff
)

// Section types.
const (
	SHT_NULL         = 0
	SHT_PROGBITS     = 1
	SHT_SYMTAB       = 2
	SHT_STRTAB       = 3
	SHT_RELA         = 4
	SHT_NOBITS       = 8
	SHT_REL          = 9
	SHT_GROUP        = 17
	SHT_SYMTAB_SHNDX = 18

	shtInitArray   = 14
	shtFiniArray   = 15
	shtX8664Unwind = 0x70000001
)

// Section flags.
const (
	SHF_WRITE          = 0x1
	SHF_ALLOC          = 0x2
	SHF_EXECINSTR      = 0x4
	SHF_GROUP          = 0x200
	SHF_RELA_LIVEPATCH = 0x00100000 // Linux: .klp.rela.* sections
)

const (
	ptLoad  = 1
	shtNote = 7
)

// x86-64 relocation types.
const (
	R_X86_64_NONE  = 0
	R_X86_64_64    = 1
	R_X86_64_PC32  = 2
	R_X86_64_PLT32 = 4
	R_X86_64_32    = 10
	R_X86_64_32S   = 11
)

var relocNames = map[uint32]string{
	0: "R_X86_64_NONE", 1: "R_X86_64_64", 2: "R_X86_64_PC32", 3: "R_X86_64_GOT32",
	4: "R_X86_64_PLT32", 5: "R_X86_64_COPY", 6: "R_X86_64_GLOB_DAT",
	7: "R_X86_64_JUMP_SLOT", 8: "R_X86_64_RELATIVE", 9: "R_X86_64_GOTPCREL",
	10: "R_X86_64_32", 11: "R_X86_64_32S", 12: "R_X86_64_16", 13: "R_X86_64_PC16",
	14: "R_X86_64_8", 15: "R_X86_64_PC8", 16: "R_X86_64_DTPMOD64",
	17: "R_X86_64_DTPOFF64", 18: "R_X86_64_TPOFF64", 19: "R_X86_64_TLSGD",
	20: "R_X86_64_TLSLD", 21: "R_X86_64_DTPOFF32", 22: "R_X86_64_GOTTPOFF",
	23: "R_X86_64_TPOFF32", 24: "R_X86_64_PC64", 25: "R_X86_64_GOTOFF64",
	26: "R_X86_64_GOTPC32", 41: "R_X86_64_GOTPCRELX", 42: "R_X86_64_REX_GOTPCRELX",
}

// RelocTypeName returns the conventional name of an x86-64 relocation type.
func RelocTypeName(t uint32) string {
	if n, ok := relocNames[t]; ok {
		return n
	}
	return "R_X86_64_" + itoa(uint64(t))
}

func itoa(v uint64) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + v%10)
		v /= 10
		if v == 0 {
			return string(b[i:])
		}
	}
}

type rawHeader struct {
	Ident     [16]byte
	Type      uint16
	Machine   uint16
	Version   uint32
	Entry     uint64
	Phoff     uint64
	Shoff     uint64
	Flags     uint32
	Ehsize    uint16
	Phentsize uint16
	Phnum     uint16
	Shentsize uint16
	Shnum     uint16
	Shstrndx  uint16
}

type rawSection struct {
	Name      uint32
	Type      uint32
	Flags     uint64
	Addr      uint64
	Offset    uint64
	Size      uint64
	Link      uint32
	Info      uint32
	Addralign uint64
	Entsize   uint64
}

type rawProg struct {
	Type   uint32
	Flags  uint32
	Offset uint64
	Vaddr  uint64
	Paddr  uint64
	Filesz uint64
	Memsz  uint64
	Align  uint64
}

type rawSym struct {
	Name  uint32
	Info  uint8
	Other uint8
	Shndx uint16
	Value uint64
	Size  uint64
}

type rawRela struct {
	Off    uint64
	Info   uint64
	Addend int64
}

var le = binary.LittleEndian

// The decoders take exactly-sized slices; callers check lengths.

func decodeHeader(b []byte) rawHeader {
	var h rawHeader
	copy(h.Ident[:], b[:16])
	h.Type = le.Uint16(b[16:])
	h.Machine = le.Uint16(b[18:])
	h.Version = le.Uint32(b[20:])
	h.Entry = le.Uint64(b[24:])
	h.Phoff = le.Uint64(b[32:])
	h.Shoff = le.Uint64(b[40:])
	h.Flags = le.Uint32(b[48:])
	h.Ehsize = le.Uint16(b[52:])
	h.Phentsize = le.Uint16(b[54:])
	h.Phnum = le.Uint16(b[56:])
	h.Shentsize = le.Uint16(b[58:])
	h.Shnum = le.Uint16(b[60:])
	h.Shstrndx = le.Uint16(b[62:])
	return h
}

func decodeSection(b []byte) rawSection {
	return rawSection{
		Name: le.Uint32(b[0:]), Type: le.Uint32(b[4:]), Flags: le.Uint64(b[8:]),
		Addr: le.Uint64(b[16:]), Offset: le.Uint64(b[24:]), Size: le.Uint64(b[32:]),
		Link: le.Uint32(b[40:]), Info: le.Uint32(b[44:]), Addralign: le.Uint64(b[48:]),
		Entsize: le.Uint64(b[56:]),
	}
}

func decodeProg(b []byte) rawProg {
	return rawProg{
		Type: le.Uint32(b[0:]), Flags: le.Uint32(b[4:]), Offset: le.Uint64(b[8:]),
		Vaddr: le.Uint64(b[16:]), Paddr: le.Uint64(b[24:]), Filesz: le.Uint64(b[32:]),
		Memsz: le.Uint64(b[40:]), Align: le.Uint64(b[48:]),
	}
}

func decodeSym(b []byte) rawSym {
	return rawSym{
		Name: le.Uint32(b[0:]), Info: b[4], Other: b[5], Shndx: le.Uint16(b[6:]),
		Value: le.Uint64(b[8:]), Size: le.Uint64(b[16:]),
	}
}

func decodeRela(b []byte) rawRela {
	return rawRela{Off: le.Uint64(b[0:]), Info: le.Uint64(b[8:]), Addend: int64(le.Uint64(b[16:]))}
}
