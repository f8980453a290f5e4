package linuxpatch

// Test helpers: the committed modules, a resolver over a fixed symbol
// map, and small in-place rewrites of a .ko (rename a section, turn a
// plain undefined symbol into a kpatch-style .klp.sym one, patch a
// relocation) made by appending to the file and repointing headers, so
// every other byte stays as the compiler wrote it.

import (
	"encoding/binary"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	"klp-kvm/elfpatch"
)

const (
	sampleKo = "testdata/livepatch-sample/livepatch-sample.ko"
	staticKo = "testdata/klp-static/klp-static.ko"
	testBase = 0xffffffffc0a00000 // a module-area address
)

func readKo(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// kernelSyms is a fake kernel: kernel-text addresses for the symbols the
// test modules use.
var kernelSyms = map[string]uint64{
	"seq_printf":         0xffffffff81345670,
	"seq_puts":           0xffffffff81345800,
	"__x86_return_thunk": 0xffffffff81e00200,
	"klp_enable_patch":   0xffffffff81190000,
	"cmdline_proc_show":  0xffffffff813f0010,
}

type call struct {
	obj, name string
	pos       int
}

// mapResolver resolves vmlinux symbols from syms and records its calls.
func mapResolver(syms map[string]uint64, calls *[]call) Resolver {
	return func(obj, name string, pos int) (uint64, error) {
		if calls != nil {
			*calls = append(*calls, call{obj, name, pos})
		}
		if obj != VmlinuxObject {
			return 0, &Error{Op: "resolve", Kind: ErrNotFound, Detail: "object " + obj}
		}
		if a, ok := syms[name]; ok {
			return a, nil
		}
		return 0, &Error{Op: "resolve", Kind: ErrNotFound, Symbol: name}
	}
}

var le = binary.LittleEndian

func mustObj(t testing.TB, data []byte) *elfpatch.ObjectFile {
	t.Helper()
	o, err := elfpatch.ParseObjectFile(data)
	if err != nil {
		t.Fatal(err)
	}
	return o
}

func sectionIndex(t testing.TB, o *elfpatch.ObjectFile, name string) int {
	t.Helper()
	for i, s := range o.Sections() {
		if s.Name == name {
			return i
		}
	}
	t.Fatalf("no section %s", name)
	return -1
}

func symbolIndex(t testing.TB, o *elfpatch.ObjectFile, name string) int {
	t.Helper()
	for i, s := range o.Symbols() {
		if s.Name == name {
			return i
		}
	}
	t.Fatalf("no symbol %s", name)
	return -1
}

// shdr is the file offset of section i's header.
func shdr(data []byte, i int) int { return int(le.Uint64(data[0x28:])) + 64*i }

// appendBlob appends b at the end of data, 8-byte aligned, and returns
// the new data and b's offset.
func appendBlob(data, b []byte) ([]byte, uint64) {
	for len(data)%8 != 0 {
		data = append(data, 0)
	}
	off := uint64(len(data))
	return append(data, b...), off
}

// addShstr appends a name to a relocated copy of .shstrtab and returns
// the new data and the name's offset in it.
func addShstr(t testing.TB, data []byte, name string) ([]byte, uint32) {
	t.Helper()
	idx := int(le.Uint16(data[0x3e:]))
	h := shdr(data, idx)
	old := data[le.Uint64(data[h+24:]) : le.Uint64(data[h+24:])+le.Uint64(data[h+32:])]
	tab := append(append(append([]byte{}, old...), name...), 0)
	data, off := appendBlob(data, tab)
	h = shdr(data, idx)
	le.PutUint64(data[h+24:], off)
	le.PutUint64(data[h+32:], uint64(len(tab)))
	return data, uint32(len(old))
}

// renameSection gives section name a new name.
func renameSection(t testing.TB, data []byte, name, newName string) []byte {
	t.Helper()
	idx := sectionIndex(t, mustObj(t, data), name)
	data = append([]byte{}, data...)
	data, n := addShstr(t, data, newName)
	le.PutUint32(data[shdr(data, idx):], n)
	return data
}

// klpConvert turns the plain undefined symbol sym into the SHN_LIVEPATCH
// symbol klpName and moves every normal relocation against it in section
// target into a new section .klp.rela.<obj>.<target> (SHF_RELA_LIVEPATCH
// | SHF_ALLOC | SHF_INFO_LINK, as kpatch-build writes them).
func klpConvert(t testing.TB, data []byte, sym, klpName, obj, target string) []byte {
	t.Helper()
	o := mustObj(t, data)
	data = append([]byte{}, data...)
	si := symbolIndex(t, o, sym)
	ti := sectionIndex(t, o, target)
	symtab := -1
	var relaIdx int = -1
	for i, s := range o.Sections() {
		if s.Type == elfpatch.SHT_SYMTAB {
			symtab = i
		}
		if s.Type == elfpatch.SHT_RELA && int(s.Info) == ti && s.Flags&elfpatch.SHF_RELA_LIVEPATCH == 0 {
			relaIdx = i
		}
	}
	// The symbol: a new name in a relocated copy of .strtab, SHN_LIVEPATCH.
	strIdx := int(o.Sections()[symtab].Link)
	sh := o.Sections()[strIdx]
	tab := append(append(append([]byte{}, data[sh.Offset:sh.Offset+sh.Size]...), klpName...), 0)
	data, toff := appendBlob(data, tab)
	le.PutUint64(data[shdr(data, strIdx)+24:], toff)
	le.PutUint64(data[shdr(data, strIdx)+32:], uint64(len(tab)))
	symOff := o.Sections()[symtab].Offset + uint64(si)*24
	le.PutUint32(data[symOff:], uint32(sh.Size))
	le.PutUint16(data[symOff+6:], shnLivepatch)
	// Its relocations: out of the normal section (compacted in place),
	// into the new one.
	rs := o.Sections()[relaIdx]
	var keep, moved []byte
	for off := rs.Offset; off < rs.Offset+rs.Size; off += 24 {
		e := data[off : off+24]
		if int(le.Uint64(e[8:])>>32) == si {
			moved = append(moved, e...)
		} else {
			keep = append(keep, e...)
		}
	}
	if len(moved) == 0 {
		t.Fatalf("no relocation against %s in %s", sym, rs.Name)
	}
	copy(data[rs.Offset:], keep)
	le.PutUint64(data[shdr(data, relaIdx)+32:], uint64(len(keep)))
	data, roff := appendBlob(data, moved)
	data, nameOff := addShstr(t, data, fmt.Sprintf(".klp.rela.%s.%s", obj, target))
	// The new section header: the table moves to the end with one more
	// entry.
	n := int(le.Uint16(data[0x3c:]))
	table := append([]byte{}, data[shdr(data, 0):shdr(data, n)]...)
	h := make([]byte, 64)
	le.PutUint32(h[0:], nameOff)
	le.PutUint32(h[4:], elfpatch.SHT_RELA)
	le.PutUint64(h[8:], elfpatch.SHF_RELA_LIVEPATCH|elfpatch.SHF_ALLOC|0x40)
	le.PutUint64(h[24:], roff)
	le.PutUint64(h[32:], uint64(len(moved)))
	le.PutUint32(h[40:], uint32(symtab))
	le.PutUint32(h[44:], uint32(ti))
	le.PutUint64(h[48:], 8)
	le.PutUint64(h[56:], 24)
	data, shoff := appendBlob(data, append(table, h...))
	le.PutUint64(data[0x28:], shoff)
	le.PutUint16(data[0x3c:], uint16(n+1))
	return data
}

// setRelocType changes the type of the normal relocation at offset off
// of section target.
func setRelocType(t testing.TB, data []byte, target string, off uint64, typ uint32) []byte {
	t.Helper()
	o := mustObj(t, data)
	ti := sectionIndex(t, o, target)
	data = append([]byte{}, data...)
	for _, s := range o.Sections() {
		if s.Type != elfpatch.SHT_RELA || int(s.Info) != ti {
			continue
		}
		for e := s.Offset; e < s.Offset+s.Size; e += 24 {
			if le.Uint64(data[e:]) == off {
				info := le.Uint64(data[e+8:])
				le.PutUint64(data[e+8:], info&^0xffffffff|uint64(typ))
				return data
			}
		}
	}
	t.Fatalf("no relocation at %s+%#x", target, off)
	return nil
}

// fuzzSeed reads a []byte corpus file of the fuzzer.
func fuzzSeed(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := strings.TrimSpace(strings.TrimPrefix(string(b), "go test fuzz v1\n"))
	s = strings.TrimSuffix(strings.TrimPrefix(s, "[]byte("), ")")
	u, err := strconv.Unquote(s)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return []byte(u)
}

// setRelocSym points the normal relocation at offset off of section
// target at symbol sym.
func setRelocSym(t testing.TB, data []byte, target string, off uint64, sym int) []byte {
	t.Helper()
	o := mustObj(t, data)
	ti := sectionIndex(t, o, target)
	data = append([]byte{}, data...)
	for _, s := range o.Sections() {
		if s.Type != elfpatch.SHT_RELA || int(s.Info) != ti {
			continue
		}
		for e := s.Offset; e < s.Offset+s.Size; e += 24 {
			if le.Uint64(data[e:]) == off {
				info := le.Uint64(data[e+8:])
				le.PutUint64(data[e+8:], info&0xffffffff|uint64(sym)<<32)
				return data
			}
		}
	}
	t.Fatalf("no relocation at %s+%#x", target, off)
	return nil
}

// sectionSymbol is the index of section name's STT_SECTION symbol.
func sectionSymbol(t testing.TB, o *elfpatch.ObjectFile, name string) int {
	t.Helper()
	idx := sectionIndex(t, o, name)
	for i, s := range o.Symbols() {
		if s.Type == elfpatch.TypeSection && s.Section == idx {
			return i
		}
	}
	t.Fatalf("no section symbol for %s", name)
	return -1
}
