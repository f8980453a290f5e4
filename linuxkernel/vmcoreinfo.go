package linuxkernel

import (
	"bytes"
	"strconv"
	"strings"
)

// vmcoreinfo is the text page the kernel fills at boot for crash dumps
// (kernel/crash_core.c, crash_save_vmcoreinfo_init: one zeroed page from
// get_zeroed_page, first line "OSRELEASE=<release>"), "KEY=value" lines:
// SYMBOL(name)=<hex address>, NUMBER(name)=<decimal>, OFFSET(type.member),
// SIZE(type), LENGTH(name), and x86-64's KERNELOFFSET=<hex> (the KASLR
// offset), NUMBER(phys_base), SYMBOL(init_top_pgt),
// NUMBER(pgtable_l5_enabled). Linux >= 6.0 adds SYMBOL(kallsyms_names),
// kallsyms_num_syms, kallsyms_token_table, kallsyms_token_index and
// kallsyms_offsets + kallsyms_relative_base (CONFIG_KALLSYMS_BASE_RELATIVE)
// or kallsyms_addresses.

const (
	vmcoreinfoMax      = pageSize // VMCOREINFO_BYTES is PAGE_SIZE
	vmcoreinfoMaxLine  = 256
	vmcoreinfoMaxLines = 512
	vmcoreinfoMagic    = "OSRELEASE="
)

// VMCoreInfo is a parsed vmcoreinfo page.
type VMCoreInfo struct {
	Phys   uint64            // where the page was found (0 if parsed from bytes)
	Values map[string]string // key -> value, as written
	Keys   []string          // in the page's order
}

// ParseVMCoreInfo parses vmcoreinfo text strictly: it ends at the first
// NUL (the rest of the page is zero), at most vmcoreinfoMaxLines lines of
// at most vmcoreinfoMaxLine bytes, each KEY=value with a printable key
// and value, no duplicate keys, OSRELEASE first.
func ParseVMCoreInfo(b []byte) (*VMCoreInfo, error) {
	if len(b) > vmcoreinfoMax {
		b = b[:vmcoreinfoMax]
	}
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	if !bytes.HasPrefix(b, []byte(vmcoreinfoMagic)) {
		return nil, errf("vmcoreinfo", ErrFormat, "does not start with %q", vmcoreinfoMagic)
	}
	vi := &VMCoreInfo{Values: map[string]string{}}
	for len(b) > 0 {
		if len(vi.Keys) >= vmcoreinfoMaxLines {
			return nil, errf("vmcoreinfo", ErrLimit, "more than %d lines", vmcoreinfoMaxLines)
		}
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			return nil, errf("vmcoreinfo", ErrFormat, "line %d not terminated", len(vi.Keys)+1)
		}
		line := b[:i]
		b = b[i+1:]
		if len(line) > vmcoreinfoMaxLine {
			return nil, errf("vmcoreinfo", ErrLimit, "line %d is %d bytes (max %d)", len(vi.Keys)+1, len(line), vmcoreinfoMaxLine)
		}
		eq := bytes.IndexByte(line, '=')
		if eq <= 0 {
			return nil, errf("vmcoreinfo", ErrFormat, "line %d has no KEY=", len(vi.Keys)+1)
		}
		k, v := string(line[:eq]), string(line[eq+1:])
		for _, c := range []byte(line) {
			if c < 0x20 || c > 0x7e {
				return nil, errf("vmcoreinfo", ErrFormat, "line %d has byte %#x", len(vi.Keys)+1, c)
			}
		}
		if _, dup := vi.Values[k]; dup {
			return nil, errf("vmcoreinfo", ErrFormat, "key %q twice", k)
		}
		vi.Values[k] = v
		vi.Keys = append(vi.Keys, k)
	}
	return vi, nil
}

// Release is OSRELEASE (the kernel's uname -r).
func (vi *VMCoreInfo) Release() string { return vi.Values["OSRELEASE"] }

// Symbol is SYMBOL(name): a kernel virtual address.
func (vi *VMCoreInfo) Symbol(name string) (uint64, error) {
	return vi.hex("SYMBOL(" + name + ")")
}

// Number is NUMBER(name), decimal (signed in the kernel's %ld).
func (vi *VMCoreInfo) Number(name string) (int64, error) {
	k := "NUMBER(" + name + ")"
	v, ok := vi.Values[k]
	if !ok {
		return 0, errf("vmcoreinfo", ErrNotFound, "%s", k)
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return 0, wrap("vmcoreinfo", ErrFormat, err, "%s=%q", k, v)
	}
	return n, nil
}

// KernelOffset is KERNELOFFSET, the KASLR offset of the kernel image
// (kaslr_offset(); 0 with nokaslr).
func (vi *VMCoreInfo) KernelOffset() (uint64, error) { return vi.hex("KERNELOFFSET") }

func (vi *VMCoreInfo) hex(k string) (uint64, error) {
	v, ok := vi.Values[k]
	if !ok {
		return 0, errf("vmcoreinfo", ErrNotFound, "%s", k)
	}
	n, err := strconv.ParseUint(strings.TrimPrefix(v, "0x"), 16, 64)
	if err != nil {
		return 0, wrap("vmcoreinfo", ErrFormat, err, "%s=%q", k, v)
	}
	return n, nil
}

// FindVMCoreInfo scans guest-physical memory page by page for the
// vmcoreinfo page, with no help from the guest: the first page that starts
// with "OSRELEASE=" and parses. The guest could plant a fake; callers
// validate what they take from it (every address is translated and
// bounds-checked before use).
func FindVMCoreInfo(m PhysMem) (*VMCoreInfo, error) {
	size := m.PhysSize()
	if size < pageSize {
		return nil, errf("vmcoreinfo", ErrInvalid, "RAM of %#x bytes", size)
	}
	var head [len(vmcoreinfoMagic)]byte
	page := make([]byte, pageSize)
	var firstErr error
	for pa := uint64(0); pa+pageSize <= size; pa += pageSize {
		if err := m.ReadPhys(pa, head[:]); err != nil {
			continue // a hole in RAM
		}
		if string(head[:]) != vmcoreinfoMagic {
			continue
		}
		if err := m.ReadPhys(pa, page); err != nil {
			continue
		}
		vi, err := ParseVMCoreInfo(page)
		if err != nil {
			if firstErr == nil {
				firstErr = wrap("vmcoreinfo", ErrFormat, err, "page at %#x", pa)
			}
			continue
		}
		vi.Phys = pa
		return vi, nil
	}
	if firstErr != nil {
		return nil, firstErr
	}
	return nil, errf("vmcoreinfo", ErrNotFound, "no page starting with %q in %#x bytes of RAM", vmcoreinfoMagic, size)
}
