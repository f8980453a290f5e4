package linuxkernel

// The ORC reader against the real Debian kernel, with no VM: the cached
// bzImage's vmlinux is loaded at its physical addresses into a byte
// slice, mapped by hand-built page tables at __START_KERNEL_map, given a
// vmcoreinfo page naming its kallsyms tables (found in .rodata the way
// scripts/kallsyms.c lays them out), and its orc_lookup filled as
// unwind_init fills it at boot. Open then reads symbols, BTF and the ORC
// tables from "guest memory" exactly as from a live guest, and the
// result is compared with the ELF's own sections. Skipped without the
// nested tier's kernel cache.

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

var debianImage struct {
	once sync.Once
	elf  []byte
	err  string
}

// debianVmlinux is the decompressed vmlinux of the cached kernel
// (decompressed once per test binary: ~2 s of xz).
func debianVmlinux(t testing.TB) (*elf.File, []byte) {
	dir := nestedKernelDir()
	bz, err := os.ReadFile(filepath.Join(dir, "vmlinuz"))
	if err != nil {
		t.Skipf("no cached Debian kernel (%v): run test/nested/prepare.sh", err)
	}
	debianImage.once.Do(func() { debianImage.elf = vmlinuxFromBzImage(t, bz) })
	if debianImage.elf == nil {
		t.Skip("vmlinux not extracted")
	}
	f, err := elf.NewFile(bytes.NewReader(debianImage.elf))
	if err != nil {
		t.Fatal(err)
	}
	return f, debianImage.elf
}

func sectionData(t testing.TB, f *elf.File, name string) (*elf.Section, []byte) {
	s := f.Section(name)
	if s == nil {
		t.Fatalf("vmlinux has no %s", name)
	}
	if s.Type == elf.SHT_NOBITS {
		return s, nil
	}
	b, err := s.Data()
	if err != nil {
		t.Fatal(err)
	}
	return s, b
}

// kallsymsAt are the kallsyms tables' addresses in an image.
type kallsymsAt struct {
	offsets, relBase, num, names, tokTable, tokIndex uint64
}

// findKallsyms locates the tables in .rodata by their layout
// (scripts/kallsyms.c, 6.1 with kallsyms_seqs_of_names, every label
// .balign 8): kallsyms_relative_base is _text's link address, followed
// by kallsyms_num_syms, kallsyms_names (num length-prefixed token
// strings), kallsyms_markers (offsets of every 256th name, the first 0),
// kallsyms_seqs_of_names (3 bytes a symbol), kallsyms_token_table and
// kallsyms_token_index.
func findKallsyms(t testing.TB, ro []byte, roVA, text uint64) kallsymsAt {
	align := func(x int) int { return (x + 7) &^ 7 }
	for r := 0; r+16 <= len(ro); r += 8 {
		if binary.LittleEndian.Uint64(ro[r:]) != text {
			continue
		}
		num := int(binary.LittleEndian.Uint32(ro[r+8:]))
		if num < 1000 || num > maxSyms {
			continue
		}
		names := r + 16
		pos := names
		var second int // names offset of symbol 256
		ok := true
		for i := 0; i < num && ok; i++ {
			if i == 256 {
				second = pos - names
			}
			if pos >= len(ro) {
				ok = false
				break
			}
			l := int(ro[pos])
			pos++
			if l&0x80 != 0 {
				l = l&0x7f | int(ro[pos])<<7
				pos++
			}
			pos += l
		}
		if !ok {
			continue
		}
		markers := align(pos)
		nm := (num + 255) / 256
		if markers+8 > len(ro) || binary.LittleEndian.Uint32(ro[markers:]) != 0 || int(binary.LittleEndian.Uint32(ro[markers+4:])) != second {
			continue
		}
		seqs := align(markers + 4*nm)
		tok := align(seqs + 3*num)
		// 256 NUL-terminated tokens, then the u16 index of their offsets.
		p := tok
		var idx [256]uint16
		for i := range idx {
			idx[i] = uint16(p - tok)
			e := bytes.IndexByte(ro[p:min(p+256, len(ro))], 0)
			if e < 0 {
				ok = false
				break
			}
			p += e + 1
		}
		tokIdx := align(p)
		if !ok || tokIdx+512 > len(ro) {
			continue
		}
		for i := range idx {
			if binary.LittleEndian.Uint16(ro[tokIdx+2*i:]) != idx[i] {
				ok = false
				break
			}
		}
		if !ok {
			continue
		}
		va := func(off int) uint64 { return roVA + uint64(off) }
		return kallsymsAt{offsets: va(r - align(4*num)), relBase: va(r), num: va(r + 8), names: va(names), tokTable: va(tok), tokIndex: va(tokIdx)}
	}
	t.Fatal("no kallsyms tables found in .rodata")
	return kallsymsAt{}
}

// debianGuest is the vmlinux as the memory of a guest that booted it
// without KASLR.
type debianGuest struct {
	mem  BytesMem
	f    *elf.File
	kern *Kernel
}

var debianGuestOnce struct {
	once sync.Once
	g    *debianGuest
}

func loadDebianGuest(t testing.TB) *debianGuest {
	f, _ := debianVmlinux(t)
	debianGuestOnce.once.Do(func() { debianGuestOnce.g = buildDebianGuest(t, f) })
	if debianGuestOnce.g == nil {
		t.Fatal("building the Debian guest image failed earlier")
	}
	return debianGuestOnce.g
}

func buildDebianGuest(t testing.TB, f *elf.File) *debianGuest {
	var top uint64
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD {
			top = max(top, p.Paddr+p.Memsz)
		}
	}
	ramSize := (top + 4<<20) &^ (2<<20 - 1)
	mem := make(BytesMem, ramSize)
	for _, p := range f.Progs {
		if p.Type != elf.PT_LOAD {
			continue
		}
		if _, err := p.ReadAt(mem[p.Paddr:p.Paddr+p.Filesz], 0); err != nil {
			t.Fatal(err)
		}
	}
	// Page tables below the image (it starts at 16 MiB): the kernel map,
	// __START_KERNEL_map + pa for all of RAM, in 2 MiB pages.
	const pml4, pdpt, pd = 0x1000, 0x2000, 0x3000
	put := func(pa, v uint64) { binary.LittleEndian.PutUint64(mem[pa:], v) }
	put(pml4+511*8, pdpt|3)
	put(pdpt+510*8, pd|3)
	for i := uint64(0); i < ramSize>>21; i++ {
		put(pd+8*i, i<<21|3|ptePS)
	}
	va2pa := func(va uint64) uint64 { return va - startKernelMap }

	text := f.Section(".text").Addr
	ro, roData := sectionData(t, f, ".rodata")
	ks := findKallsyms(t, roData, ro.Addr, text)

	// orc_lookup as unwind_init fills it (the section is NOBITS).
	ipSec, ipRaw := sectionData(t, f, ".orc_unwind_ip")
	_, entRaw := sectionData(t, f, ".orc_unwind")
	lkSec, _ := sectionData(t, f, ".orc_lookup")
	o, err := ParseORC(ipSec.Addr, ipRaw, entRaw, ORCFormat1)
	if err != nil {
		t.Fatal(err)
	}
	// _stext = _text = the start of .text; _etext: the lookup table has
	// one block per 256 bytes of [_stext, _etext) plus one.
	blocks := lkSec.Size / 4
	for i := uint64(0); i < blocks; i++ {
		ip := text + lookupBlockSize*i
		j := o.find(0, len(o.IPs), ip)
		if j < 0 {
			j = 0
		}
		binary.LittleEndian.PutUint32(mem[va2pa(lkSec.Addr)+4*i:], uint32(j))
	}
	release := "6.1.0"
	if v, err := os.ReadFile(filepath.Join(nestedKernelDir(), "version")); err == nil {
		release = strings.TrimSpace(string(v))
	}
	vi := fmt.Sprintf("OSRELEASE=%s\nPAGESIZE=4096\nSYMBOL(init_top_pgt)=%x\nNUMBER(phys_base)=0\nNUMBER(pgtable_l5_enabled)=0\nKERNELOFFSET=0\n"+
		"SYMBOL(kallsyms_names)=%x\nSYMBOL(kallsyms_num_syms)=%x\nSYMBOL(kallsyms_token_table)=%x\nSYMBOL(kallsyms_token_index)=%x\nSYMBOL(kallsyms_offsets)=%x\nSYMBOL(kallsyms_relative_base)=%x\n",
		release, uint64(startKernelMap+pml4), ks.names, ks.num, ks.tokTable, ks.tokIndex, ks.offsets, ks.relBase)
	copy(mem[0x100000:], vi)
	k, err := Open(mem, Options{})
	if err != nil {
		t.Fatal(err)
	}
	// The last block is LOOKUP_STOP_IP, _etext.
	etext, err := k.Symbols.Addr("_etext")
	if err != nil {
		t.Fatal(err)
	}
	j := o.find(0, len(o.IPs), etext)
	binary.LittleEndian.PutUint32(mem[va2pa(lkSec.Addr)+4*(blocks-1):], uint32(j))
	return &debianGuest{mem: mem, f: f, kern: k}
}

func TestDebianORC(t *testing.T) {
	g := loadDebianGuest(t)
	k := g.kern
	t.Logf("image as guest memory: %d MiB, release %s, %d symbols from its kallsyms, %d BTF types", len(g.mem)>>20, k.Release, k.Symbols.Len(), k.BTFTypes)
	for name, sec := range map[string]string{"__start_orc_unwind_ip": ".orc_unwind_ip", "__start_orc_unwind": ".orc_unwind", "orc_lookup": ".orc_lookup", "_stext": ".text"} {
		if a, err := k.Symbols.Addr(name); err != nil || a != g.f.Section(sec).Addr {
			t.Errorf("kallsyms %s = %#x, %v; section %s at %#x", name, a, err, sec, g.f.Section(sec).Addr)
		}
	}
	o, err := k.ReadORC()
	if err != nil {
		t.Fatal(err)
	}
	// The table read through kallsyms and page tables is the ELF's.
	ipSec, ipRaw := sectionData(t, g.f, ".orc_unwind_ip")
	_, entRaw := sectionData(t, g.f, ".orc_unwind")
	want, err := ParseORC(ipSec.Addr, ipRaw, entRaw, ORCFormat1)
	if err != nil {
		t.Fatal(err)
	}
	if len(o.IPs) != len(want.IPs) || len(o.IPs) < 100000 {
		t.Fatalf("%d entries from guest memory, %d in the ELF", len(o.IPs), len(want.IPs))
	}
	for i := range o.IPs {
		if o.IPs[i] != want.IPs[i] || o.Entries[i] != want.Entries[i] {
			t.Fatalf("entry %d: %#x %+v from memory, %#x %+v in the ELF", i, o.IPs[i], o.Entries[i], want.IPs[i], want.Entries[i])
		}
	}
	// Every function entry: the return address on top of the stack,
	// nothing else (sp_offset 8 from SP, type CALL, BP unchanged). The
	// exceptions are the entry code and hand-written asm whose first
	// instruction has a hint of its own (UNWIND_HINT_EMPTY: the end of
	// a stack; UNWIND_HINT_IRET_REGS: a hardware exception frame).
	var funcs, call, regs, empty, other int
	var others []string
	text := o.Covered[0]
	for _, s := range k.Symbols.All() {
		// Text symbols that are functions: not the .cold parts GCC
		// splits off (jumped to from inside their function, with its
		// frame).
		if (s.Type != 'T' && s.Type != 't') || !text.Contains(s.Addr) || strings.Contains(s.Name, ".cold") {
			continue
		}
		funcs++
		e, ok := o.Find(s.Addr)
		switch {
		case !ok:
			t.Fatalf("no ORC entry for %s at %#x", s.Name, s.Addr)
		case e.SPReg == ORCRegSP && e.SPOffset == 8 && e.Type == ORCTypeCall && e.BPReg == ORCRegUndefined:
			call++
		case e.Type != ORCTypeCall:
			regs++
		case e.SPReg == ORCRegUndefined:
			empty++
		default:
			other++
			if len(others) < 40 {
				others = append(others, fmt.Sprintf("%s %+v", s.Name, e))
			}
		}
	}
	t.Logf("%d ORC entries; %d text symbols: %d enter with sp+8/CALL, %d with pt_regs or an iret frame, %d undefined (end of stack or unreachable), %d other: %v",
		len(o.IPs), funcs, call, regs, empty, other, others)
	// Debian 6.1: 43,883 of 44,074; the 7 others are labels inside asm
	// (ftrace_call, ...), not function entries.
	if funcs < 40000 || float64(call) < 0.99*float64(funcs) || other > 20 {
		t.Errorf("%d of %d function entries are sp+8/CALL, %d are neither that nor entry code", call, funcs, other)
	}
	// The lookup fast path agrees with a plain binary search everywhere
	// (the table was validated by SetLookup; this checks Find's use of it).
	plain := &ORC{IPs: o.IPs, Entries: o.Entries}
	for ip := text.Start; ip < text.End; ip += 97 {
		a, ok1 := o.Find(ip)
		b, ok2 := plain.Find(ip)
		if a != b || ok1 != ok2 {
			t.Fatalf("Find(%#x) = %+v %v with orc_lookup, %+v %v without", ip, a, ok1, b, ok2)
		}
	}
	// Known entry code: entry_SYSCALL_64 starts on a stack with nothing
	// to unwind (UNWIND_HINT_EMPTY: undefined SP, end), an exception
	// entry on the hardware's iret frame plus error code
	// (UNWIND_HINT_IRET_REGS offset=8: REGS_PARTIAL at sp+8).
	for _, c := range []struct {
		name string
		want ORCEntry
	}{
		{"entry_SYSCALL_64", ORCEntry{SPReg: ORCRegUndefined, BPReg: ORCRegUndefined, Type: ORCTypeCall, End: true}},
		{"asm_exc_page_fault", ORCEntry{SPReg: ORCRegSP, SPOffset: 8, BPReg: ORCRegUndefined, Type: ORCTypeRegsPartial}},
	} {
		a, err := k.Symbols.Addr(c.name)
		if err != nil {
			t.Fatal(err)
		}
		if e, _ := o.Find(a); e != c.want {
			t.Errorf("%s: %+v, want %+v", c.name, e, c.want)
		}
	}
	if _, err := k.NewUnwinder(); err != nil {
		t.Fatal(err)
	}
	// A corrupt orc_lookup in guest memory is refused with its block.
	lk := g.f.Section(".orc_lookup").Addr - startKernelMap
	saved := binary.LittleEndian.Uint32(g.mem[lk+400:])
	binary.LittleEndian.PutUint32(g.mem[lk+400:], saved+1000)
	_, err = k.ReadORC()
	binary.LittleEndian.PutUint32(g.mem[lk+400:], saved)
	if !isKind(err, ErrFormat) || !strings.Contains(err.Error(), "orc_lookup[100]") {
		t.Errorf("corrupt orc_lookup: %v", err)
	}
}
