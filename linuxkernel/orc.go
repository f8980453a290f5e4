package linuxkernel

import (
	"encoding/binary"
	"sort"
	"strconv"
	"strings"
)

// The guest kernel's ORC unwind tables (CONFIG_UNWINDER_ORC, every
// distribution x86-64 kernel since 4.14; Debian's have no frame
// pointers): objtool writes, for every instruction address where the
// stack layout changes, one struct orc_entry saying where the caller's
// stack pointer and frame pointer are. The tables are two parallel
// arrays in vmlinux, sorted at build time (scripts/sorttable):
//
//	__start_orc_unwind_ip .. __stop_orc_unwind_ip: s32, each an IP
//	                         relative to its own address
//	__start_orc_unwind .. __stop_orc_unwind:       struct orc_entry
//
// plus orc_lookup .. orc_lookup_end, u32 per 256-byte block of
// [_stext, _etext): the first table index of the block, written at
// boot by unwind_init. Everything is read from guest memory and
// validated (sizes bounded, IPs sorted, lookup entries checked against
// the table) before use.

const (
	orcEntrySize    = 6       // sizeof(struct orc_entry), __packed
	maxORCEntries   = 1 << 22 // Debian 6.1: 384,849
	lookupBlockSize = 256     // LOOKUP_BLOCK_SIZE (asm/orc_lookup.h)
)

// ORC base registers, ORC_REG_* (arch/x86/include/asm/orc_types.h).
const (
	ORCRegUndefined  = 0
	ORCRegPrevSP     = 1
	ORCRegDX         = 2
	ORCRegDI         = 3
	ORCRegBP         = 4
	ORCRegSP         = 5
	ORCRegR10        = 6
	ORCRegR13        = 7
	ORCRegBPIndirect = 8
	ORCRegSPIndirect = 9
)

// ORC entry types: UNWIND_HINT_TYPE_CALL, _REGS, _REGS_PARTIAL
// (include/linux/objtool.h, Linux 4.14 to 6.2), the values objtool
// writes into orc_entry.type.
const (
	ORCTypeCall        = 0
	ORCTypeRegs        = 1
	ORCTypeRegsPartial = 2
)

// ORCEntry is struct orc_entry of Linux 4.14 to 6.2 (6.1's
// arch/x86/include/asm/orc_types.h):
//
//	s16 sp_offset; s16 bp_offset;
//	unsigned sp_reg:4; unsigned bp_reg:4; unsigned type:2; unsigned end:1;
//
// packed into 6 bytes; the bitfields are the little-endian u16 at
// offset 4 (sp_reg in bits 0-3, bp_reg 4-7, type 8-9, end 10).
type ORCEntry struct {
	SPOffset int16 `json:"sp_offset"`
	BPOffset int16 `json:"bp_offset"`
	SPReg    uint8 `json:"sp_reg"`
	BPReg    uint8 `json:"bp_reg"`
	Type     uint8 `json:"type"`
	End      bool  `json:"end"`
}

// ORCFormat1 is the only ORC entry layout this package reads: Linux
// 4.14 (the ORC unwinder's introduction) to 6.2. Linux 6.3 added a
// `signal` bit before `end`; 6.4 widened `type` to 3 bits (UNDEFINED,
// END_OF_STACK, CALL, REGS, REGS_PARTIAL) and dropped `end`. Reading
// those with this layout would misread every entry, so they are refused.
const ORCFormat1 = 1

// ORCFormatOf gives the ORC entry layout of a kernel release
// ("6.1.0-57-amd64"): ORCFormat1 for 4.14..6.2, ErrUnsupported otherwise.
func ORCFormatOf(release string) (int, error) {
	f := strings.SplitN(release, ".", 3)
	if len(f) < 2 {
		return 0, errf("orc", ErrUnsupported, "kernel release %q: no major.minor version", release)
	}
	minor := f[1]
	if i := strings.IndexFunc(minor, func(r rune) bool { return r < '0' || r > '9' }); i >= 0 {
		minor = minor[:i]
	}
	maj, err1 := strconv.Atoi(f[0])
	min, err2 := strconv.Atoi(minor)
	if err1 != nil || err2 != nil {
		return 0, errf("orc", ErrUnsupported, "kernel release %q: no major.minor version", release)
	}
	v := maj*1000 + min
	switch {
	case v < 4014:
		return 0, errf("orc", ErrUnsupported, "Linux %d.%d predates the ORC unwinder (4.14)", maj, min)
	case v >= 6003:
		return 0, errf("orc", ErrUnsupported, "Linux %d.%d: its struct orc_entry (signal bit, 3-bit type from 6.4) is not the 4.14..6.2 layout this package reads", maj, min)
	}
	return ORCFormat1, nil
}

// decodeORCEntry decodes one 6-byte entry of format 1.
func decodeORCEntry(b []byte) ORCEntry {
	bits := binary.LittleEndian.Uint16(b[4:])
	return ORCEntry{
		SPOffset: int16(binary.LittleEndian.Uint16(b[0:])),
		BPOffset: int16(binary.LittleEndian.Uint16(b[2:])),
		SPReg:    uint8(bits & 0xf),
		BPReg:    uint8(bits >> 4 & 0xf),
		Type:     uint8(bits >> 8 & 0x3),
		End:      bits>>10&1 != 0,
	}
}

// AddrRange is [Start, End).
type AddrRange struct {
	Start uint64 `json:"start"`
	End   uint64 `json:"end"`
}

// Contains reports whether a lies in [Start, End).
func (r AddrRange) Contains(a uint64) bool { return a >= r.Start && a < r.End }

// ORC is the kernel's ORC table, decoded and validated.
type ORC struct {
	// IPs are the absolute instruction addresses, sorted (duplicates are
	// "weak" section terminators followed by the real entry).
	IPs []uint64
	// Entries[i] describes the code from IPs[i] to the next IP.
	Entries []ORCEntry
	// Covered are the address ranges the vmlinux table answers for, as
	// orc_find does: the lookup range [_stext, _etext) and init text.
	// Empty: the whole table's range.
	Covered []AddrRange

	lookup      []uint32 // orc_lookup, validated; nil: binary search only
	lookupStart uint64   // LOOKUP_START_IP (_stext)
}

// ParseORC decodes the two tables: ipBase is the address of the first
// .orc_unwind_ip entry (each entry is an s32 relative to its own
// address), ipRaw and entRaw the sections' bytes. The entries must be as
// many as the IPs (1..4M), and the IPs sorted.
func ParseORC(ipBase uint64, ipRaw, entRaw []byte, format int) (*ORC, error) {
	if format != ORCFormat1 {
		return nil, errf("orc", ErrUnsupported, "ORC format %d", format)
	}
	if len(ipRaw)%4 != 0 || len(entRaw)%orcEntrySize != 0 {
		return nil, errf("orc", ErrFormat, ".orc_unwind_ip is %d bytes (a multiple of 4), .orc_unwind %d (a multiple of %d)", len(ipRaw), len(entRaw), orcEntrySize)
	}
	n := len(ipRaw) / 4
	if n == 0 || n > maxORCEntries {
		return nil, errf("orc", ErrLimit, "%d ORC entries (1..%d)", n, maxORCEntries)
	}
	if len(entRaw)/orcEntrySize != n {
		return nil, errf("orc", ErrFormat, "%d IPs but %d entries", n, len(entRaw)/orcEntrySize)
	}
	if ipBase+uint64(len(ipRaw)) < ipBase {
		return nil, errf("orc", ErrFormat, ".orc_unwind_ip at %#x wraps around", ipBase)
	}
	o := &ORC{IPs: make([]uint64, n), Entries: make([]ORCEntry, n)}
	for i := range n {
		rel := int64(int32(binary.LittleEndian.Uint32(ipRaw[4*i:])))
		ip := ipBase + 4*uint64(i) + uint64(rel)
		if i > 0 && ip < o.IPs[i-1] {
			return nil, errf("orc", ErrFormat, "IP table not sorted: entry %d is %#x after %#x", i, ip, o.IPs[i-1])
		}
		o.IPs[i] = ip
		o.Entries[i] = decodeORCEntry(entRaw[orcEntrySize*i:])
	}
	return o, nil
}

// find is __orc_find over entries [lo, hi): the index of the rightmost
// entry whose IP is <= ip, or -1 when ip is below them all. (The
// kernel returns the first entry then; the callers never ask outside
// the table's coverage.)
func (o *ORC) find(lo, hi int, ip uint64) int {
	i := lo + sort.Search(hi-lo, func(j int) bool { return o.IPs[lo+j] > ip })
	if i == lo {
		return -1
	}
	return i - 1
}

// SetLookup validates the kernel's orc_lookup table (one u32 per
// 256-byte block of [start, stop), plus one for stop: the linker script
// reserves exactly that many) against the IP
// table, entry by entry, the way unwind_init computed it, and uses it
// as Find's fast path. A table that disagrees is a corrupt guest:
// ErrFormat naming the first wrong block.
func (o *ORC) SetLookup(lookup []uint32, start, stop uint64) error {
	if stop <= start {
		return errf("orc", ErrFormat, "lookup range [%#x, %#x)", start, stop)
	}
	blocks := (stop-start+lookupBlockSize-1)/lookupBlockSize + 1
	if uint64(len(lookup)) != blocks {
		return errf("orc", ErrFormat, "orc_lookup has %d blocks, [%#x, %#x) needs %d", len(lookup), start, stop, blocks)
	}
	n := len(o.IPs)
	for i := range lookup {
		ip := start + lookupBlockSize*uint64(i)
		if i == len(lookup)-1 {
			ip = stop
		}
		want := o.find(0, n, ip)
		if want < 0 {
			want = 0
		}
		if lookup[i] != uint32(want) {
			return errf("orc", ErrFormat, "orc_lookup[%d] (block at %#x) is %d, the IP table says %d", i, ip, lookup[i], want)
		}
	}
	o.lookup, o.lookupStart = lookup, start
	return nil
}

// Find is orc_find for vmlinux: the entry for ip, through the lookup
// table when ip is in its range, else a binary search of the whole
// table. ok is false when ip is outside Covered (module code, BPF,
// ftrace trampolines: the kernel looks those up elsewhere, this package
// does not) or below the table.
func (o *ORC) Find(ip uint64) (e ORCEntry, ok bool) {
	if len(o.IPs) == 0 {
		return ORCEntry{}, false
	}
	if len(o.Covered) == 0 {
		if ip < o.IPs[0] || ip > o.IPs[len(o.IPs)-1] {
			return ORCEntry{}, false
		}
	} else {
		in := false
		for _, r := range o.Covered {
			if r.Contains(ip) {
				in = true
				break
			}
		}
		if !in {
			return ORCEntry{}, false
		}
	}
	lo, hi := 0, len(o.IPs)
	if o.lookup != nil && ip >= o.lookupStart {
		if idx := (ip - o.lookupStart) / lookupBlockSize; idx+1 < uint64(len(o.lookup)) {
			lo, hi = int(o.lookup[idx]), int(o.lookup[idx+1])+1 // validated by SetLookup
			hi = min(hi, len(o.IPs))
		}
	}
	i := o.find(lo, hi, ip)
	if i < 0 {
		return ORCEntry{}, false
	}
	return o.Entries[i], true
}

// ReadORC reads and validates the guest kernel's ORC tables through
// kallsyms: __start/__stop_orc_unwind_ip, __start/__stop_orc_unwind,
// orc_lookup/orc_lookup_end, with _stext/_etext and _sinittext/
// _einittext for the ranges the table covers. The layout comes from the
// kernel's release (ORCFormatOf).
func (k *Kernel) ReadORC() (*ORC, error) {
	format, err := ORCFormatOf(k.Release)
	if err != nil {
		return nil, err
	}
	var a [10]uint64
	for i, name := range []string{"__start_orc_unwind_ip", "__stop_orc_unwind_ip", "__start_orc_unwind", "__stop_orc_unwind",
		"orc_lookup", "orc_lookup_end", "_stext", "_etext", "_sinittext", "_einittext"} {
		if a[i], err = k.Symbols.Addr(name); err != nil {
			return nil, wrap("orc", ErrNotFound, err, "kernel without CONFIG_UNWINDER_ORC?")
		}
	}
	ipStart, ipStop, entStart, entStop, lkStart, lkStop := a[0], a[1], a[2], a[3], a[4], a[5]
	text := AddrRange{a[6], a[7]}
	init := AddrRange{a[8], a[9]}
	if ipStop < ipStart || ipStop-ipStart > 4*maxORCEntries || entStop < entStart || entStop-entStart > orcEntrySize*maxORCEntries {
		return nil, errf("orc", ErrLimit, ".orc_unwind_ip [%#x, %#x) and .orc_unwind [%#x, %#x): not tables of at most %d entries", ipStart, ipStop, entStart, entStop, maxORCEntries)
	}
	if text.End <= text.Start || init.End < init.Start {
		return nil, errf("orc", ErrFormat, "_stext %#x.._etext %#x, _sinittext %#x.._einittext %#x", text.Start, text.End, init.Start, init.End)
	}
	ipRaw := make([]byte, ipStop-ipStart)
	if err := k.AS.Read(ipStart, ipRaw); err != nil {
		return nil, wrap("orc", ErrBounds, err, ".orc_unwind_ip at %#x", ipStart)
	}
	entRaw := make([]byte, entStop-entStart)
	if err := k.AS.Read(entStart, entRaw); err != nil {
		return nil, wrap("orc", ErrBounds, err, ".orc_unwind at %#x", entStart)
	}
	o, err := ParseORC(ipStart, ipRaw, entRaw, format)
	if err != nil {
		return nil, err
	}
	o.Covered = []AddrRange{text, init}
	if lkStop < lkStart || lkStop-lkStart > 4*(maxORCEntries+2) {
		return nil, errf("orc", ErrLimit, "orc_lookup [%#x, %#x)", lkStart, lkStop)
	}
	raw := make([]byte, lkStop-lkStart)
	if err := k.AS.Read(lkStart, raw); err != nil {
		return nil, wrap("orc", ErrBounds, err, "orc_lookup at %#x", lkStart)
	}
	lookup := make([]uint32, len(raw)/4)
	for i := range lookup {
		lookup[i] = binary.LittleEndian.Uint32(raw[4*i:])
	}
	if err := o.SetLookup(lookup, text.Start, text.End); err != nil {
		return nil, err
	}
	return o, nil
}
