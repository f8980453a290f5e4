package bzimage

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// Offsets into struct boot_params (arch/x86/include/uapi/asm/bootparam.h).
const (
	ZPExtRamdiskImage = 0x0c0 // ext_ramdisk_image: bits 32-63 of ramdisk_image
	ZPExtRamdiskSize  = 0x0c4 // ext_ramdisk_size
	ZPExtCmdLinePtr   = 0x0c8 // ext_cmd_line_ptr
	ZPE820Entries     = 0x1e8 // e820_entries
	ZPE820Table       = 0x2d0 // e820_table[E820MaxEntries]
	E820MaxEntries    = 128   // E820_MAX_ENTRIES_ZEROPAGE
	e820EntrySize     = 20    // struct boot_e820_entry, packed
)

// E820 entry types.
const (
	E820RAM      = 1
	E820Reserved = 2
)

// E820Entry mirrors struct boot_e820_entry (packed, 20 bytes).
type E820Entry struct {
	Addr uint64
	Size uint64
	Type uint32
}

// BootParams is what the loader tells the kernel through the zero page.
type BootParams struct {
	CmdLinePtr   uint64 // physical address of the NUL-terminated command line
	RamdiskImage uint64 // physical address of the initrd, 0 for none
	RamdiskSize  uint64
	E820         []E820Entry
}

// ZeroPage builds struct boot_params for img: the image's setup header
// (as the protocol asks: the loader starts from the file's header) with
// the loader's fields filled in, and the e820 table.
func (img *Image) ZeroPage(p BootParams) ([ZeroPageSize]byte, error) {
	var zp [ZeroPageSize]byte
	if len(p.E820) == 0 || len(p.E820) > E820MaxEntries {
		return zp, &Error{Op: "zero page", Kind: ErrLayout, Offset: -1, Detail: fmt.Sprintf("%d e820 entries, want 1..%d", len(p.E820), E820MaxEntries)}
	}
	if p.CmdLinePtr == 0 {
		return zp, &Error{Op: "zero page", Kind: ErrLayout, Offset: -1, Detail: "no command line"}
	}
	if p.RamdiskSize != 0 {
		end := p.RamdiskImage + p.RamdiskSize
		limit := uint64(img.Header.InitrdAddrMax) + 1
		if img.Header.Xloadflags&XLFCanBeLoadedAbove4G != 0 {
			limit = 1 << 46
		}
		if end < p.RamdiskImage || end > limit {
			return zp, &Error{Op: "zero page", Kind: ErrLayout, Offset: -1,
				Detail: fmt.Sprintf("initrd %#x+%#x ends above initrd_addr_max %#x", p.RamdiskImage, p.RamdiskSize, limit-1)}
		}
	}
	h := img.Header
	h.TypeOfLoader = TypeOfLoaderUndefined
	h.Loadflags |= CanUseHeap
	// The heap end is relative to the real-mode setup's segment, which a
	// 64-bit entry never uses; boot.rst's usual value keeps it sane.
	h.HeapEndPtr = 0xfe00
	h.CmdLinePtr = uint32(p.CmdLinePtr)
	h.RamdiskImage = uint32(p.RamdiskImage)
	h.RamdiskSize = uint32(p.RamdiskSize)
	var buf bytes.Buffer
	if err := binary.Write(&buf, binary.LittleEndian, &h); err != nil {
		return zp, &Error{Op: "zero page", Kind: ErrLayout, Offset: -1, Err: err}
	}
	copy(zp[HeaderOffset:], buf.Bytes())
	le := binary.LittleEndian
	le.PutUint32(zp[ZPExtCmdLinePtr:], uint32(p.CmdLinePtr>>32))
	le.PutUint32(zp[ZPExtRamdiskImage:], uint32(p.RamdiskImage>>32))
	le.PutUint32(zp[ZPExtRamdiskSize:], uint32(p.RamdiskSize>>32))
	zp[ZPE820Entries] = uint8(len(p.E820))
	for i, e := range p.E820 {
		o := ZPE820Table + i*e820EntrySize
		le.PutUint64(zp[o:], e.Addr)
		le.PutUint64(zp[o+8:], e.Size)
		le.PutUint32(zp[o+16:], e.Type)
	}
	return zp, nil
}
