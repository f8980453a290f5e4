package linuxkernel

import (
	"encoding/binary"
	"sort"
)

// Kallsyms tables as scripts/kallsyms.c (Linux 6.1) emits them into
// .rodata:
//
//	kallsyms_offsets:       int32[num_syms] (CONFIG_KALLSYMS_BASE_RELATIVE)
//	kallsyms_relative_base: u64
//	kallsyms_num_syms:      u32
//	kallsyms_names:         per symbol a length (1 byte, or 2 bytes
//	                        ULEB128 when >= 0x80: "big" symbols, 6.1) then
//	                        that many token indices
//	kallsyms_markers:       u32 offset into names every 256 symbols
//	kallsyms_token_table:   256 NUL-terminated strings
//	kallsyms_token_index:   u16[256], each token's offset in token_table
//
// A decoded name's first character is the type letter (T, t, D, ...).
// Addresses: with CONFIG_KALLSYMS_ABSOLUTE_PERCPU (x86-64 SMP's default,
// every distribution kernel) a non-negative offset is an absolute value
// (per-CPU symbols) and a negative one is relative_base - 1 - offset;
// without it every offset is an unsigned displacement from relative_base.
// The tables come from the guest: every index and length is checked.

const (
	maxSyms        = 1 << 22 // Linux 6.1 distribution kernels have ~200k
	maxNamesBytes  = 64 << 20
	maxTokenBytes  = 64 << 10
	maxSymbolChars = 1024 // KSYM_NAME_LEN is 512 in 6.1
)

// KallsymsTables is the raw content of the tables.
type KallsymsTables struct {
	NumSyms        uint32
	Names          []byte
	TokenTable     []byte
	TokenIndex     [256]uint16
	Offsets        []int32 // base-relative kernels
	Addresses      []uint64
	RelativeBase   uint64
	AbsolutePercpu bool
}

// Symbol is one kernel symbol.
type Symbol struct {
	Name string `json:"name"`
	Addr uint64 `json:"addr"`
	Type byte   `json:"type"` // kallsyms type letter (T t D d R r B b A W V ...)
}

// DecodeKallsyms turns the tables into symbols in table order.
func DecodeKallsyms(t *KallsymsTables) ([]Symbol, error) {
	n := int(t.NumSyms)
	if t.NumSyms == 0 || t.NumSyms > maxSyms {
		return nil, errf("kallsyms", ErrLimit, "kallsyms_num_syms=%d (1..%d)", t.NumSyms, maxSyms)
	}
	if t.Addresses == nil && len(t.Offsets) < n {
		return nil, errf("kallsyms", ErrFormat, "%d offsets for %d symbols", len(t.Offsets), n)
	}
	if t.Addresses != nil && len(t.Addresses) < n {
		return nil, errf("kallsyms", ErrFormat, "%d addresses for %d symbols", len(t.Addresses), n)
	}
	// The 256 tokens, each checked to lie inside the token table and be
	// NUL-terminated there.
	var tokens [256]string
	for i, off := range t.TokenIndex {
		if int(off) >= len(t.TokenTable) {
			return nil, errf("kallsyms", ErrFormat, "token %d at offset %d, table is %d bytes", i, off, len(t.TokenTable))
		}
		end := int(off)
		for end < len(t.TokenTable) && t.TokenTable[end] != 0 {
			end++
		}
		if end == len(t.TokenTable) {
			return nil, errf("kallsyms", ErrFormat, "token %d at offset %d not NUL-terminated", i, off)
		}
		tokens[i] = string(t.TokenTable[off:end])
	}
	syms := make([]Symbol, 0, n)
	pos := 0
	buf := make([]byte, 0, 128)
	for i := 0; i < n; i++ {
		if pos >= len(t.Names) {
			return nil, errf("kallsyms", ErrFormat, "symbol %d: names end at offset %d", i, pos)
		}
		l := int(t.Names[pos])
		pos++
		if l&0x80 != 0 {
			if pos >= len(t.Names) {
				return nil, errf("kallsyms", ErrFormat, "symbol %d: names end in a 2-byte length at offset %d", i, pos)
			}
			l = l&0x7f | int(t.Names[pos])<<7
			pos++
		}
		if l == 0 || l > len(t.Names)-pos {
			return nil, errf("kallsyms", ErrFormat, "symbol %d: length %d at names offset %d (names are %d bytes)", i, l, pos, len(t.Names))
		}
		buf = buf[:0]
		for _, tok := range t.Names[pos : pos+l] {
			buf = append(buf, tokens[tok]...)
			if len(buf) > maxSymbolChars {
				return nil, errf("kallsyms", ErrLimit, "symbol %d: name longer than %d", i, maxSymbolChars)
			}
		}
		pos += l
		if len(buf) < 2 {
			return nil, errf("kallsyms", ErrFormat, "symbol %d: decoded name %q has no type and name", i, buf)
		}
		var addr uint64
		switch {
		case t.Addresses != nil:
			addr = t.Addresses[i]
		case !t.AbsolutePercpu:
			addr = t.RelativeBase + uint64(uint32(t.Offsets[i]))
		case t.Offsets[i] >= 0:
			addr = uint64(t.Offsets[i])
		default:
			addr = t.RelativeBase - 1 - uint64(int64(t.Offsets[i]))
		}
		syms = append(syms, Symbol{Name: string(buf[1:]), Type: buf[0], Addr: addr})
	}
	return syms, nil
}

// readKallsyms reads the tables through as from the addresses vmcoreinfo
// gives (Linux >= 6.0). Table sizes come from kallsyms_num_syms and the
// order scripts/kallsyms.c lays them out in; each is bounded.
func readKallsyms(as *AddressSpace, vi *VMCoreInfo, absPercpu bool) (*KallsymsTables, error) {
	sym := func(name string) (uint64, error) {
		a, err := vi.Symbol(name)
		if err != nil {
			return 0, wrap("kallsyms", ErrNotFound, err, "vmcoreinfo has no %s (Linux < 6.0 or !CONFIG_KALLSYMS: use System.map)", name)
		}
		return a, nil
	}
	var addrs [4]uint64
	for i, name := range []string{"kallsyms_num_syms", "kallsyms_names", "kallsyms_token_table", "kallsyms_token_index"} {
		a, err := sym(name)
		if err != nil {
			return nil, err
		}
		addrs[i] = a
	}
	numVA, namesVA, tokVA, tokIdxVA := addrs[0], addrs[1], addrs[2], addrs[3]
	t := &KallsymsTables{AbsolutePercpu: absPercpu}
	num, err := as.U32(numVA)
	if err != nil {
		return nil, wrap("kallsyms", ErrBounds, err, "kallsyms_num_syms at %#x", numVA)
	}
	if num == 0 || num > maxSyms {
		return nil, errf("kallsyms", ErrLimit, "kallsyms_num_syms=%d at %#x (1..%d)", num, numVA, maxSyms)
	}
	t.NumSyms = num
	var idx [512]byte
	if err := as.Read(tokIdxVA, idx[:]); err != nil {
		return nil, wrap("kallsyms", ErrBounds, err, "kallsyms_token_index at %#x", tokIdxVA)
	}
	maxOff := 0
	for i := range t.TokenIndex {
		t.TokenIndex[i] = binary.LittleEndian.Uint16(idx[2*i:])
		maxOff = max(maxOff, int(t.TokenIndex[i]))
	}
	// The token table ends with the last token's NUL; tokens are short.
	tokLen := min(maxOff+256, maxTokenBytes)
	if tokIdxVA > tokVA && tokIdxVA-tokVA < uint64(tokLen) {
		tokLen = int(tokIdxVA - tokVA)
	}
	t.TokenTable = make([]byte, tokLen)
	if err := as.Read(tokVA, t.TokenTable); err != nil {
		return nil, wrap("kallsyms", ErrBounds, err, "kallsyms_token_table at %#x", tokVA)
	}
	// The names stream lies between kallsyms_names and the token table
	// (kallsyms_markers between them is small).
	if tokVA <= namesVA || tokVA-namesVA > maxNamesBytes {
		return nil, errf("kallsyms", ErrFormat, "kallsyms_names at %#x and kallsyms_token_table at %#x: not a names stream of at most %d bytes", namesVA, tokVA, maxNamesBytes)
	}
	t.Names = make([]byte, tokVA-namesVA)
	if err := as.Read(namesVA, t.Names); err != nil {
		return nil, wrap("kallsyms", ErrBounds, err, "kallsyms_names at %#x", namesVA)
	}
	if offVA, err := vi.Symbol("kallsyms_offsets"); err == nil {
		baseVA, err := sym("kallsyms_relative_base")
		if err != nil {
			return nil, err
		}
		if t.RelativeBase, err = as.U64(baseVA); err != nil {
			return nil, wrap("kallsyms", ErrBounds, err, "kallsyms_relative_base at %#x", baseVA)
		}
		raw := make([]byte, 4*int(num))
		if err := as.Read(offVA, raw); err != nil {
			return nil, wrap("kallsyms", ErrBounds, err, "kallsyms_offsets at %#x", offVA)
		}
		t.Offsets = make([]int32, num)
		for i := range t.Offsets {
			t.Offsets[i] = int32(binary.LittleEndian.Uint32(raw[4*i:]))
		}
	} else {
		addrVA, err := sym("kallsyms_addresses")
		if err != nil {
			return nil, err
		}
		raw := make([]byte, 8*int(num))
		if err := as.Read(addrVA, raw); err != nil {
			return nil, wrap("kallsyms", ErrBounds, err, "kallsyms_addresses at %#x", addrVA)
		}
		t.Addresses = make([]uint64, num)
		for i := range t.Addresses {
			t.Addresses[i] = binary.LittleEndian.Uint64(raw[8*i:])
		}
	}
	return t, nil
}

// Symbols is a kernel symbol table sorted by address, with lookups by
// name and by address.
type Symbols struct {
	sorted []Symbol
	byName map[string][]int // indices into sorted, in address order
}

// NewSymbols sorts syms by address (stable: equal addresses keep their
// order) and indexes them by name.
func NewSymbols(syms []Symbol) *Symbols {
	s := &Symbols{sorted: append([]Symbol(nil), syms...), byName: map[string][]int{}}
	sort.SliceStable(s.sorted, func(i, j int) bool { return s.sorted[i].Addr < s.sorted[j].Addr })
	for i, sym := range s.sorted {
		s.byName[sym.Name] = append(s.byName[sym.Name], i)
	}
	return s
}

// Len is the number of symbols.
func (s *Symbols) Len() int { return len(s.sorted) }

// All is every symbol, by address.
func (s *Symbols) All() []Symbol { return s.sorted }

// Lookup gives the symbols called name (static functions can share a
// name), by address.
func (s *Symbols) Lookup(name string) []Symbol {
	var out []Symbol
	for _, i := range s.byName[name] {
		out = append(out, s.sorted[i])
	}
	return out
}

// Addr is the address of the one symbol called name: ErrNotFound if none,
// ErrFormat if several have different addresses.
func (s *Symbols) Addr(name string) (uint64, error) {
	l := s.Lookup(name)
	if len(l) == 0 {
		return 0, errf("symbols", ErrNotFound, "no symbol %q", name)
	}
	for _, o := range l[1:] {
		if o.Addr != l[0].Addr {
			return 0, errf("symbols", ErrFormat, "%d symbols %q at different addresses", len(l), name)
		}
	}
	return l[0].Addr, nil
}

// At gives the symbol containing addr (the last one at or below it) and
// the offset into it; ok is false below the first symbol.
func (s *Symbols) At(addr uint64) (sym Symbol, off uint64, ok bool) {
	i := sort.Search(len(s.sorted), func(i int) bool { return s.sorted[i].Addr > addr })
	if i == 0 {
		return Symbol{}, 0, false
	}
	// Prefer a text symbol among equal addresses.
	j := i - 1
	for k := j; k >= 0 && s.sorted[k].Addr == s.sorted[j].Addr; k-- {
		if t := s.sorted[k].Type; t == 'T' || t == 't' {
			j = k
			break
		}
	}
	return s.sorted[j], addr - s.sorted[j].Addr, true
}
