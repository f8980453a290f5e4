package linuxkernel

import (
	"encoding/binary"
	"sort"
)

// Code the host placed in the guest itself (a live patch's linked .ko,
// which is on none of the guest's module lists) has ORC tables only the
// host knows: the .ko's .orc_unwind_ip and .orc_unwind, linked at the
// image's addresses. HostORC makes them a ModuleORC for Unwinder.Modules,
// so that a stack through the patch's code unwinds exactly instead of
// falling back to the conservative scan.

// HostORC parses a module's two ORC sections as linked: ipBase is the
// address of the first .orc_unwind_ip entry (each an s32 relative to its
// own address, as the module's R_X86_64_PC32 relocations left it), ipRaw
// and entRaw the sections' bytes, text the module's code. The table is
// sorted as the module loader sorts it (unwind_module_init's orc_sort: by
// IP, a "weak" terminator before the real entry at the same IP), so the
// sections may be in any order. The input is the operator's patch, not
// the guest's, but it is checked all the same: every IP must lie in text
// (or at its end: the terminator after the last function), and no entry
// may be an end of stack (a module's code is never the bottom of a
// kernel stack: such an entry would end an unwind early and hide the
// frames under it from the consistency check).
func HostORC(name string, text AddrRange, ipBase uint64, ipRaw, entRaw []byte, format int) (ModuleORC, error) {
	m := ModuleORC{Name: name, Text: text, label: "[" + name + "]"}
	if format != ORCFormat1 {
		return m, errf("orc", ErrUnsupported, "%s: ORC format %d", name, format)
	}
	if text.End <= text.Start {
		return m, errf("orc", ErrInvalid, "%s: text [%#x, %#x)", name, text.Start, text.End)
	}
	if len(ipRaw)%4 != 0 || len(entRaw)%orcEntrySize != 0 {
		return m, errf("orc", ErrFormat, "%s: .orc_unwind_ip is %d bytes (a multiple of 4), .orc_unwind %d (a multiple of %d)",
			name, len(ipRaw), len(entRaw), orcEntrySize)
	}
	n := len(ipRaw) / 4
	if n == 0 || n > maxModuleORCs {
		return m, errf("orc", ErrLimit, "%s: %d ORC entries (1..%d)", name, n, maxModuleORCs)
	}
	if len(entRaw)/orcEntrySize != n {
		return m, errf("orc", ErrFormat, "%s: %d IPs but %d entries", name, n, len(entRaw)/orcEntrySize)
	}
	if ipBase+uint64(len(ipRaw)) < ipBase {
		return m, errf("orc", ErrFormat, "%s: .orc_unwind_ip at %#x wraps around", name, ipBase)
	}
	type pair struct {
		ip uint64
		e  ORCEntry
	}
	ps := make([]pair, n)
	for i := range n {
		rel := int64(int32(binary.LittleEndian.Uint32(ipRaw[4*i:])))
		ip := ipBase + 4*uint64(i) + uint64(rel)
		e := decodeORCEntry(entRaw[orcEntrySize*i:])
		if ip < text.Start || ip > text.End {
			return m, errf("orc", ErrFormat, "%s: ORC entry %d is for %#x, outside the module's text [%#x, %#x)", name, i, ip, text.Start, text.End)
		}
		if e.End {
			return m, errf("orc", ErrFormat, "%s: ORC entry %d (%#x) is an end of stack, which module code never is", name, i, ip)
		}
		ps[i] = pair{ip, e}
	}
	weak := func(e ORCEntry) bool { return e.SPReg == ORCRegUndefined && !e.End }
	sort.SliceStable(ps, func(i, j int) bool {
		if ps[i].ip != ps[j].ip {
			return ps[i].ip < ps[j].ip
		}
		return weak(ps[i].e) && !weak(ps[j].e)
	})
	o := &ORC{IPs: make([]uint64, n), Entries: make([]ORCEntry, n), Covered: []AddrRange{text}}
	for i, p := range ps {
		o.IPs[i], o.Entries[i] = p.ip, p.e
	}
	m.ORC = o
	return m, nil
}
