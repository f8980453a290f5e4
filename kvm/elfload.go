package kvm

import (
	"bytes"
	"debug/elf"
	"fmt"
	"sort"

	"klp-kvm/guestkernel/layout"
)

// Kernel is a loaded guest kernel image: its entry and the function
// symbols used to name guest addresses in errors ("RIP, symbol if known").
type Kernel struct {
	Entry    uint64
	Segments []Segment
	syms     []symbol // sorted by addr
}

// Segment is one PT_LOAD segment as placed in guest RAM.
type Segment struct {
	Vaddr, Paddr, Filesz, Memsz uint64
}

type symbol struct {
	name       string
	addr, size uint64
}

// ParseKernel validates an ELF64 x86-64 executable. The image is untrusted
// input: every header field is range-checked before use.
func ParseKernel(image []byte) (k *Kernel, err error) {
	const op = "load kernel"
	defer func() {
		// debug/elf is robust, but a malformed file must never crash the VMM.
		if r := recover(); r != nil {
			k, err = nil, errorf(op, ErrBadKernel, "malformed ELF: %v", r)
		}
	}()
	f, err := elf.NewFile(bytes.NewReader(image))
	if err != nil {
		return nil, &Error{Op: op, Kind: ErrBadKernel, Detail: "not an ELF file", Err: err}
	}
	if f.Class != elf.ELFCLASS64 {
		return nil, errorf(op, ErrBadKernel, "ELF class %v, want ELFCLASS64", f.Class)
	}
	if f.Machine != elf.EM_X86_64 {
		return nil, errorf(op, ErrBadKernel, "machine %v, want EM_X86_64", f.Machine)
	}
	if f.Type != elf.ET_EXEC {
		return nil, errorf(op, ErrBadKernel, "type %v, want ET_EXEC", f.Type)
	}
	k = &Kernel{Entry: f.Entry}
	for i, p := range f.Progs {
		if p.Type != elf.PT_LOAD || p.Memsz == 0 {
			continue
		}
		if p.Filesz > p.Memsz {
			return nil, errorf(op, ErrBadKernel, "segment %d: filesz %#x > memsz %#x", i, p.Filesz, p.Memsz)
		}
		if p.Off+p.Filesz < p.Off || p.Off+p.Filesz > uint64(len(image)) {
			return nil, errorf(op, ErrBadKernel, "segment %d: file range %#x+%#x beyond the %d-byte file (truncated?)", i, p.Off, p.Filesz, len(image))
		}
		if p.Paddr+p.Memsz < p.Paddr {
			return nil, errorf(op, ErrBadKernel, "segment %d: paddr %#x+%#x wraps", i, p.Paddr, p.Memsz)
		}
		k.Segments = append(k.Segments, Segment{Vaddr: p.Vaddr, Paddr: p.Paddr, Filesz: p.Filesz, Memsz: p.Memsz})
	}
	if len(k.Segments) == 0 {
		return nil, errorf(op, ErrBadKernel, "no PT_LOAD segments")
	}
	sort.Slice(k.Segments, func(i, j int) bool { return k.Segments[i].Paddr < k.Segments[j].Paddr })
	for i := 1; i < len(k.Segments); i++ {
		a, b := k.Segments[i-1], k.Segments[i]
		if a.Paddr+a.Memsz > b.Paddr {
			return nil, errorf(op, ErrBadKernel, "segments at paddr %#x and %#x overlap", a.Paddr, b.Paddr)
		}
	}
	if syms, err := f.Symbols(); err == nil {
		for _, s := range syms {
			if elf.ST_TYPE(s.Info) == elf.STT_FUNC && s.Value != 0 {
				k.syms = append(k.syms, symbol{s.Name, s.Value, s.Size})
			}
		}
		sort.Slice(k.syms, func(i, j int) bool { return k.syms[i].addr < k.syms[j].addr })
	}
	return k, nil
}

// load copies the segments into RAM, checking each fits and stays out of
// the host's boot area and patch area.
func (k *Kernel) load(image, ram []byte, l Layout) error {
	const op = "load kernel"
	for _, s := range k.Segments {
		end := s.Paddr + s.Memsz
		switch {
		case s.Paddr < layout.BootLowEnd:
			return errorf(op, ErrBadKernel, "segment at paddr %#x overlaps the boot area below %#x", s.Paddr, layout.BootLowEnd)
		case end > uint64(len(ram)):
			return errorf(op, ErrBadKernel, "segment %#x-%#x outside the %d MiB of RAM", s.Paddr, end, len(ram)>>20)
		case s.Paddr < l.PatchAreaPhys+l.PatchAreaSize && end > l.PatchAreaPhys:
			return errorf(op, ErrBadKernel, "segment %#x-%#x overlaps the patch area at %#x", s.Paddr, end, l.PatchAreaPhys)
		}
	}
	f, err := elf.NewFile(bytes.NewReader(image))
	if err != nil {
		return &Error{Op: op, Kind: ErrBadKernel, Err: err}
	}
	for _, p := range f.Progs {
		if p.Type != elf.PT_LOAD || p.Memsz == 0 {
			continue
		}
		dst := ram[p.Paddr : p.Paddr+p.Memsz]
		n := copy(dst, image[p.Off:p.Off+p.Filesz])
		clear(dst[n:])
	}
	return nil
}

// Symbolize names a guest address as "sym+0xoff", or "" if unknown.
func (k *Kernel) Symbolize(addr uint64) string {
	if k == nil {
		return ""
	}
	i := sort.Search(len(k.syms), func(i int) bool { return k.syms[i].addr > addr }) - 1
	if i < 0 {
		return ""
	}
	s := k.syms[i]
	if s.size != 0 && addr >= s.addr+s.size {
		return ""
	}
	return fmt.Sprintf("%s+%#x", s.name, addr-s.addr)
}
