package linuxkernel

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
	"testing"
)

func TestParseVMCoreInfo(t *testing.T) {
	page := make([]byte, pageSize)
	copy(page, "OSRELEASE=6.1.0-57-amd64\nSYMBOL(init_top_pgt)=ffffffff8a00a000\nNUMBER(phys_base)=-16777216\nKERNELOFFSET=9000000\n")
	vi, err := ParseVMCoreInfo(page)
	if err != nil {
		t.Fatal(err)
	}
	if vi.Release() != "6.1.0-57-amd64" || len(vi.Keys) != 4 {
		t.Errorf("%+v", vi)
	}
	if a, err := vi.Symbol("init_top_pgt"); err != nil || a != 0xffffffff8a00a000 {
		t.Errorf("init_top_pgt %#x %v", a, err)
	}
	if n, err := vi.Number("phys_base"); err != nil || n != -16777216 {
		t.Errorf("phys_base %d %v", n, err)
	}
	if o, err := vi.KernelOffset(); err != nil || o != 0x9000000 {
		t.Errorf("offset %#x %v", o, err)
	}
	if _, err := vi.Symbol("kallsyms_names"); !isKind(err, ErrNotFound) {
		t.Errorf("missing symbol: %v", err)
	}
	for name, text := range map[string]string{
		"not first":   "PAGESIZE=4096\nOSRELEASE=x\n",
		"no newline":  "OSRELEASE=x",
		"no equals":   "OSRELEASE=x\nGARBAGE\n",
		"duplicate":   "OSRELEASE=x\nOSRELEASE=y\n",
		"control":     "OSRELEASE=x\x01\n",
		"long line":   "OSRELEASE=" + strings.Repeat("x", 300) + "\n",
		"many lines":  "OSRELEASE=x\n" + strings.Repeat("A=\n", 600),
		"bad hex sym": "OSRELEASE=x\nKERNELOFFSET=zz\n",
	} {
		vi, err := ParseVMCoreInfo([]byte(text))
		if err == nil {
			_, err = vi.KernelOffset()
		}
		if err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestParseSystemMap(t *testing.T) {
	syms, err := ParseSystemMap(strings.NewReader("0000000000000000 A fixed_percpu_data\nffffffff81000000 T _text\nffffffff81234560 t cmdline_proc_show\n"), 0x400000)
	if err != nil {
		t.Fatal(err)
	}
	want := []Symbol{{"fixed_percpu_data", 0, 'A'}, {"_text", 0xffffffff81400000, 'T'}, {"cmdline_proc_show", 0xffffffff81634560, 't'}}
	for i, w := range want {
		if syms[i] != w {
			t.Errorf("%d: %+v want %+v", i, syms[i], w)
		}
	}
	// Debian's /boot/System.map is a one-line placeholder.
	if _, err := ParseSystemMap(strings.NewReader("ffffffffffffffff B The real System.map is in the linux-image-<version>-dbg package\n"), 0); !isKind(err, ErrFormat) {
		t.Errorf("placeholder: %v", err)
	}
}

func TestSystemMapFallback(t *testing.T) {
	k := newSynKernel(t)
	k.mem[synVMCoreInf] = 'X' // no vmcoreinfo: symbols and offset from elsewhere
	var sm strings.Builder
	for _, s := range k.syms {
		a := s.addr
		if a >= synKernelVA {
			a -= synKASLR
		}
		fmt.Fprintf(&sm, "%016x %c %s\n", a, s.typ, s.name)
	}
	// A CR3 that maps nothing of the kernel.
	if _, err := Open(k.mem, Options{SystemMap: strings.NewReader(sm.String()), KASLROffset: synKASLR, CPUs: []CPU{{CR3: 0x100000}}}); !isKind(err, ErrBounds) {
		t.Fatalf("opened through empty page tables: %v", err)
	}
	// The vCPU's CR3 is the user half of a PTI pair (bit 12 set): the
	// kernel half is found.
	kern, err := Open(k.mem, Options{SystemMap: strings.NewReader(sm.String()), KASLROffset: synKASLR, CPUs: []CPU{{CR3: synPML4 | 0x1000}}})
	if err != nil {
		t.Fatal(err)
	}
	if kern.Source != SourceSystemMap || kern.VMCoreInfo != nil || kern.AS.Root != synPML4 || kern.KASLROffset != synKASLR || kern.KASLRSource != "option" {
		t.Errorf("source %s root %#x offset %#x (%s)", kern.Source, kern.AS.Root, kern.KASLROffset, kern.KASLRSource)
	}
	// The offset from MSR_LSTAR (entry_SYSCALL_64 at run time), no option.
	kern, err = Open(k.mem, Options{SystemMap: strings.NewReader(sm.String()), CPUs: []CPU{{CR3: synPML4, LSTAR: synKernelVA + 0x1600}}})
	if err != nil {
		t.Fatal(err)
	}
	if kern.KASLROffset != synKASLR || !strings.HasPrefix(kern.KASLRSource, "MSR_LSTAR") {
		t.Errorf("offset from LSTAR %#x (%s)", kern.KASLROffset, kern.KASLRSource)
	}
	if a, _ := kern.Symbols.Addr("cmdline_proc_show"); a != synKernelVA+0x1000 {
		t.Errorf("cmdline_proc_show at %#x", a)
	}
	// An LSTAR that is no KASLR offset away from entry_SYSCALL_64.
	if _, err := Open(k.mem, Options{SystemMap: strings.NewReader(sm.String()), CPUs: []CPU{{CR3: synPML4, LSTAR: synKernelVA + 0x1601}}}); !isKind(err, ErrFormat) {
		t.Errorf("odd LSTAR: %v", err)
	}
	tasks, err := kern.Tasks()
	if err != nil || len(tasks) != 3 {
		t.Errorf("tasks %+v %v", tasks, err)
	}
}

func TestStateLetter(t *testing.T) {
	for _, tc := range []struct {
		state, exit uint32
		want        string
	}{{0, 0, "R"}, {1, 0, "S"}, {2, 0, "D"}, {0x402, 0, "I"}, {4, 0, "T"}, {8, 0, "t"}, {0, 0x20, "Z"}, {0, 0x10, "X"}, {0x40, 0, "P"}, {0x1000, 0, "D"}} {
		if got := stateLetter(tc.state, tc.exit); got != tc.want {
			t.Errorf("state %#x exit %#x: %s, want %s", tc.state, tc.exit, got, tc.want)
		}
	}
}

func TestPageWalkHugeAndLA57(t *testing.T) {
	mem := make(BytesMem, 4<<20)
	put := func(pa, v uint64) { binary.LittleEndian.PutUint64(mem[pa:], v) }
	// 5-level: PML5[1] -> PML4 0x2000, [0] -> PDPT 0x3000, [2] 1 GiB page at 0.
	put(0x1000+1*8, 0x2000|1)
	put(0x2000, 0x3000|1)
	put(0x3000+2*8, 0|1|ptePS)
	as := &AddressSpace{Mem: mem, Root: 0x1000, LA57: true}
	va := uint64(1)<<48 | 2<<30 | 0x123456
	pa, size, err := as.Translate(va)
	if err != nil || pa != 0x123456 || size != 1<<30 {
		t.Errorf("1 GiB page: %#x %#x %v", pa, size, err)
	}
	// Beyond RAM within the 1 GiB page.
	if _, _, err := as.Translate(uint64(1)<<48 | 2<<30 | 0x500000); !isKind(err, ErrBounds) {
		t.Errorf("beyond RAM: %v", err)
	}
	// Non-canonical for 5-level.
	if _, _, err := as.Translate(1 << 60); !isKind(err, ErrBounds) {
		t.Errorf("non-canonical: %v", err)
	}
	// 4-level with the same root: PML4[1] is 0x2000 as a PDPT...; PS in a
	// PML4 entry is malformed.
	put(0x1000+3*8, 0x2000|1|ptePS)
	as4 := &AddressSpace{Mem: mem, Root: 0x1000}
	if _, _, err := as4.Translate(3 << 39); !isKind(err, ErrFormat) {
		t.Errorf("PS at level 4: %v", err)
	}
	// A read crossing from a mapped page into an unmapped one fails.
	put(0x1000+4*8, 0x4000|1)
	put(0x4000, 0x5000|1)
	put(0x5000, 0x6000|1)
	put(0x6000, 0x7000|1) // 4 KiB page at VA 4<<39 -> PA 0x7000; next page unmapped
	b := make([]byte, 16)
	if err := as4.Read(4<<39+pageSize-8, b); !isKind(err, ErrBounds) {
		t.Errorf("read into unmapped page: %v", err)
	}
	put(0x6000+8, 0x9000|1)
	copy(mem[0x7ff8:], "abcdefgh")
	copy(mem[0x9000:], "ijklmnop")
	if err := as4.Read(4<<39+pageSize-8, b); err != nil || string(b) != "abcdefghijklmnop" {
		t.Errorf("read across pages: %q %v", b, err)
	}
}

// TestObjReader: a task_struct's fields are read from guest-physical
// memory after one translation while they lie in its page, and through
// the page tables past it: an object over two 4 KiB pages mapped apart
// reads the same as the address space reads it, field by field.
func TestObjReader(t *testing.T) {
	mem := make(BytesMem, 1<<20)
	put := func(pa, v uint64) { binary.LittleEndian.PutUint64(mem[pa:], v) }
	put(0x1000, 0x2000|1)
	put(0x2000, 0x3000|1)
	put(0x3000, 0x4000|1)
	put(0x4000, 0x7000|1)   // VA 0 -> PA 0x7000
	put(0x4000+8, 0x5000|1) // VA 0x1000 -> PA 0x5000: not adjacent
	for i := range 0x2000 {
		mem[0x5000+i] = byte(i*13 + 1)
	}
	for i := range 0x1000 {
		mem[0x7000+i] = byte(i*7 + 3)
	}
	as := &AddressSpace{Mem: mem, Root: 0x1000}
	const obj = 0xf00 // the object starts 0x100 bytes before the page boundary
	r := newObjReader(as, obj)
	for _, off := range []uint64{0, 8, 0xf8, 0xfc, 0x100, 0x108, 0x800} {
		for _, n := range []int{4, 8, 16} {
			got, want := make([]byte, n), make([]byte, n)
			if err := as.Read(obj+off, want); err != nil {
				t.Fatal(err)
			}
			if err := r.read(off, got); err != nil || !bytes.Equal(got, want) {
				t.Errorf("field at +%#x, %d bytes: % x, %v; the address space reads % x", off, n, got, err, want)
			}
		}
	}
	// Past the mapped pages: the address space's error.
	if err := r.read(0x1100, make([]byte, 8)); !isKind(err, ErrBounds) {
		t.Errorf("field in an unmapped page: %v", err)
	}
	// An object that does not translate reads nothing.
	bad := newObjReader(as, 0x10000)
	if _, err := bad.u64(0); !isKind(err, ErrBounds) {
		t.Errorf("object not mapped: %v", err)
	}
}
