package kvm

import (
	"bytes"
	"cmp"
	"fmt"
	"slices"

	"klp-kvm/elfpatch"
	"klp-kvm/guestkernel/layout"
)

// bootImage is the guest kernel as the VMM loads it: the image parsed by
// elfpatch (the project's one ELF reader, hardened and fuzzed) and its
// loadable segments, checked.
type bootImage struct {
	elf  *elfpatch.Kernel
	segs []elfpatch.Segment // PT_LOAD with memsz > 0, sorted by paddr, disjoint
}

// ParseKernel parses a guest kernel image (elfpatch.ParseKernel) and checks
// that the VMM can load it: an ELF64 x86-64 ET_EXEC whose PT_LOAD segments
// lie inside the file and do not overlap. The image is untrusted input:
// every failure is an error of kind ErrBadKernel wrapping the reason (an
// *elfpatch.Error for a malformed file), never a panic. Where the segments
// land in RAM is checked when a Machine loads them. The result can be given
// to New as Config.ParsedKernel.
func ParseKernel(image []byte) (*elfpatch.Kernel, error) {
	b, err := openKernel(image, nil)
	if err != nil {
		return nil, err
	}
	return b.elf, nil
}

// openKernel returns the kernel of a Config: parsed, parsed from image if
// nil, and checked for loading.
func openKernel(image []byte, parsed *elfpatch.Kernel) (*bootImage, error) {
	const op = "load kernel"
	if parsed == nil {
		k, err := elfpatch.ParseKernel(image)
		if err != nil {
			return nil, &Error{Op: op, Kind: ErrBadKernel, Err: err}
		}
		parsed = k
	} else if len(image) > 0 && !sameBytes(image, parsed.Data()) {
		return nil, errorf(op, ErrConfig, "Kernel and ParsedKernel are different images")
	}
	return checkKernel(parsed)
}

func sameBytes(a, b []byte) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0] || bytes.Equal(a, b))
}

// checkKernel applies the loader's checks to a parsed image (elfpatch has
// checked the ELF header and every segment's file range).
func checkKernel(k *elfpatch.Kernel) (*bootImage, error) {
	const op = "load kernel"
	if t := k.Type(); t != elfpatch.ET_EXEC {
		return nil, errorf(op, ErrBadKernel, "type %v, want ET_EXEC", t)
	}
	b := &bootImage{elf: k}
	for i, s := range k.Segments {
		if s.Memsz == 0 {
			continue
		}
		if s.Filesz > s.Memsz {
			return nil, errorf(op, ErrBadKernel, "segment %d: filesz %#x > memsz %#x", i, s.Filesz, s.Memsz)
		}
		if _, ok := k.SegmentBytes(s); !ok {
			return nil, errorf(op, ErrBadKernel, "segment %d: file range %#x+%#x beyond the file", i, s.Offset, s.Filesz)
		}
		if s.Paddr+s.Memsz < s.Paddr {
			return nil, errorf(op, ErrBadKernel, "segment %d: paddr %#x+%#x wraps", i, s.Paddr, s.Memsz)
		}
		b.segs = append(b.segs, s)
	}
	if len(b.segs) == 0 {
		return nil, errorf(op, ErrBadKernel, "no PT_LOAD segments")
	}
	slices.SortStableFunc(b.segs, func(x, y elfpatch.Segment) int { return cmp.Compare(x.Paddr, y.Paddr) })
	for i := 1; i < len(b.segs); i++ {
		x, y := b.segs[i-1], b.segs[i]
		if x.Paddr+x.Memsz > y.Paddr {
			return nil, errorf(op, ErrBadKernel, "segments at paddr %#x and %#x overlap", x.Paddr, y.Paddr)
		}
	}
	return b, nil
}

// load copies the segments into RAM, checking each fits and stays out of
// the host's boot area and patch area.
func (b *bootImage) load(ram []byte, l Layout) error {
	const op = "load kernel"
	for _, s := range b.segs {
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
	for _, s := range b.segs {
		src, _ := b.elf.SegmentBytes(s) // checked by checkKernel
		dst := ram[s.Paddr : s.Paddr+s.Memsz]
		n := copy(dst, src)
		clear(dst[n:])
	}
	return nil
}

// Symbolize names a guest address as "func+0xoff", or "" if unknown.
func (b *bootImage) Symbolize(addr uint64) string {
	if b == nil {
		return ""
	}
	if s, off, ok := b.elf.Addr2Func(addr); ok {
		return fmt.Sprintf("%s+%#x", s.Name, off)
	}
	return ""
}
