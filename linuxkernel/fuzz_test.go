package linuxkernel

import (
	"encoding/binary"
	"testing"
)

// The guest controls vmcoreinfo, the kallsyms tables and the page tables:
// none may panic or loop whatever they hold.

func FuzzParseVMCoreInfo(f *testing.F) {
	f.Add([]byte("OSRELEASE=6.1.0-57-amd64\nPAGESIZE=4096\nSYMBOL(init_top_pgt)=ffffffff8a00a000\nNUMBER(phys_base)=-16777216\nKERNELOFFSET=9000000\n"))
	f.Add([]byte("OSRELEASE=x\nSYMBOL(kallsyms_names)=0x\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		vi, err := ParseVMCoreInfo(b)
		if err != nil {
			return
		}
		vi.KernelOffset()
		vi.Symbol("kallsyms_names")
		vi.Number("phys_base")
		if len(vi.Keys) > vmcoreinfoMaxLines {
			t.Fatalf("%d lines", len(vi.Keys))
		}
	})
}

// fuzzTables cuts fuzz input into kallsyms tables: a count, the token
// index, then names / token table split at a fuzzed point.
func fuzzTables(num uint16, split uint16, abs bool, b []byte) *KallsymsTables {
	t := &KallsymsTables{NumSyms: uint32(num), AbsolutePercpu: abs, RelativeBase: 0xffffffff81000000}
	for i := range t.TokenIndex {
		if 2*i+1 < len(b) {
			t.TokenIndex[i] = binary.LittleEndian.Uint16(b[2*i:]) % 512
		}
	}
	if len(b) > 512 {
		b = b[512:]
	} else {
		b = nil
	}
	s := min(int(split), len(b))
	t.Names, t.TokenTable = b[:s], b[s:]
	t.Offsets = make([]int32, num)
	for i := range t.Offsets {
		t.Offsets[i] = int32(i*16) - 1000
	}
	return t
}

func FuzzDecodeKallsyms(f *testing.F) {
	tab, idx := synTokens()
	seed := make([]byte, 512)
	for i, o := range idx {
		binary.LittleEndian.PutUint16(seed[2*i:], o)
	}
	names := []byte{}
	for _, n := range []string{"T_text", "tcmdline_proc_show", "Dinit_task"} {
		enc := synEncodeName(n)
		names = append(append(names, byte(len(enc))), enc...)
	}
	f.Add(uint16(3), uint16(len(names)), true, append(append(seed, names...), tab...))
	big := append([]byte{0x81, 0x01}, make([]byte, 129)...) // a 2-byte length
	f.Add(uint16(1), uint16(len(big)), false, append(append(append([]byte(nil), seed...), big...), tab...))
	f.Fuzz(func(t *testing.T, num, split uint16, abs bool, b []byte) {
		tb := fuzzTables(num, split, abs, b)
		syms, err := DecodeKallsyms(tb)
		if err != nil {
			return
		}
		if len(syms) != int(num) {
			t.Fatalf("%d symbols for num_syms %d", len(syms), num)
		}
		s := NewSymbols(syms)
		for _, sym := range syms {
			if len(s.Lookup(sym.Name)) == 0 {
				t.Fatalf("lost %q", sym.Name)
			}
			s.At(sym.Addr)
		}
	})
}

func FuzzPageWalk(f *testing.F) {
	// One 4-level path to a 4 KiB page and one 2 MiB page entry.
	mem := make([]byte, 0x6000)
	binary.LittleEndian.PutUint64(mem[0x1000+511*8:], 0x2000|1)
	binary.LittleEndian.PutUint64(mem[0x2000+510*8:], 0x3000|1)
	binary.LittleEndian.PutUint64(mem[0x3000+8*8:], 0x4000|1)
	binary.LittleEndian.PutUint64(mem[0x3000+9*8:], 0|1|ptePS)
	binary.LittleEndian.PutUint64(mem[0x4000:], 0x5000|1)
	f.Add(mem, uint64(0x1000), uint64(0xffffffff81000010), false, uint16(32))
	f.Add(mem, uint64(0x1000), uint64(0xffffffff81200ff0), false, uint16(64))
	f.Add(mem, uint64(0x1000), uint64(0xffffffff81000ff8), true, uint16(16))
	f.Fuzz(func(t *testing.T, mem []byte, root, va uint64, la57 bool, n uint16) {
		as := &AddressSpace{Mem: BytesMem(mem), Root: root, LA57: la57}
		pa, size, err := as.Translate(va)
		if err == nil && (pa >= uint64(len(mem)) || size&(size-1) != 0 || size < pageSize) {
			t.Fatalf("Translate(%#x) = %#x, %#x", va, pa, size)
		}
		as.Read(va, make([]byte, n%8192))
	})
}

// FuzzHostileGuest corrupts the synthetic guest at fuzzed places (page
// tables, vmcoreinfo, kallsyms tables, BTF, tasks, per-CPU data) and runs
// the whole pipeline: errors are fine, panics and hangs are not.
func FuzzHostileGuest(f *testing.F) {
	pristine := newSynKernel(f)
	work := make(BytesMem, len(pristine.mem))
	// Seeds aim at each structure.
	f.Add(uint32(synPML4+511*8), []byte{0x07, 0xa0})                   // kernel PML4 entry
	f.Add(uint32(synVMCoreInf+10), []byte("\n\n"))                     // vmcoreinfo
	f.Add(uint32(synImagePA+0x181008), []byte{0xff, 0xff, 0x00, 0x00}) // kallsyms_num_syms
	f.Add(uint32(synImagePA+0x181010), []byte{0x80, 0xff})             // a 2-byte name length
	f.Add(uint32(synImagePA+0x110000+8), []byte{0xff, 0xff, 0xff})     // BTF header
	f.Add(uint32(synImagePA+0x100000+tsTasks), []byte{0x28, 0, 0x10})  // init_task.tasks.next
	f.Add(uint32(synImagePA+0x102000), []byte{0, 0, 0, 1})             // nr_cpu_ids
	f.Fuzz(func(t *testing.T, off uint32, val []byte) {
		copy(work, pristine.mem)
		copy(work[int(off)%len(work):], val)
		k, err := Open(work, Options{})
		if err != nil {
			return
		}
		k.Tasks()
		k.Fentry("cmdline_proc_show")
		k.Report([]string{"traced_fn", "weird_fn"})
	})
}
