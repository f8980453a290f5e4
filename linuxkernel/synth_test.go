package linuxkernel

// A synthetic guest: hand-built page tables, vmcoreinfo, kallsyms tables,
// BTF and tasks in a byte slice, so the whole pipeline runs without a VM
// and tests can break one piece at a time.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/cilium/ebpf/btf"
)

const (
	synRAM       = 24 << 20
	synPML4      = 0xa000 // 8 KiB-aligned like a PTI pgd pair
	synKASLR     = 0x200000
	synKernelVA  = 0xffffffff81000000 + synKASLR
	synImagePA   = 0x1000000 + synKASLR // phys_base 0
	synDirectVA  = 0xffff888000000000
	synDirectPA  = 0x400000 // the direct map's one 2 MiB page maps this
	synVMCoreInf = 0x800000
)

type synSym struct {
	typ  byte
	name string
	addr uint64
}

// synKernel is the synthetic guest and what it contains.
type synKernel struct {
	mem  BytesMem
	syms []synSym
	// task_struct addresses: init_task, then two more; cpu i runs
	// current[i].
	tasks   []uint64
	current []uint64
}

// Synthetic task_struct layout (see synBTF).
const (
	tsThreadInfoCPU = 8
	tsState         = 16
	tsStack         = 24
	tsOnCPU         = 32
	tsTasks         = 40
	tsPid           = 56 // in an anonymous struct {pid; tgid}
	tsTgid          = 60
	tsComm          = 64
	tsExitState     = 80
	tsThreadSP      = 96 + 8
	tsSignal        = 88
	tsThreadNode    = 112
	tsSize          = 128
	sigThreadHead   = 8
)

func synBTF(t testing.TB) []byte {
	u64 := &btf.Int{Name: "long unsigned int", Size: 8}
	u32 := &btf.Int{Name: "unsigned int", Size: 4}
	i32 := &btf.Int{Name: "int", Size: 4, Encoding: btf.Signed}
	char := &btf.Int{Name: "char", Size: 1, Encoding: btf.Char}
	lh := &btf.Struct{Name: "list_head", Size: 16}
	lh.Members = []btf.Member{{Name: "next", Type: &btf.Pointer{Target: lh}}, {Name: "prev", Type: &btf.Pointer{Target: lh}, Offset: 64}}
	ti := &btf.Struct{Name: "thread_info", Size: 16, Members: []btf.Member{{Name: "flags", Type: u64}, {Name: "cpu", Type: u32, Offset: 64}}}
	th := &btf.Struct{Name: "thread_struct", Size: 16, Members: []btf.Member{{Name: "sp0", Type: u64}, {Name: "sp", Type: u64, Offset: 64}}}
	sig := &btf.Struct{Name: "signal_struct", Size: 24, Members: []btf.Member{{Name: "sigcnt", Type: &btf.Int{Name: "int", Size: 4, Encoding: btf.Signed}}, {Name: "thread_head", Type: lh, Offset: sigThreadHead * 8}}}
	ids := &btf.Struct{Size: 8, Members: []btf.Member{{Name: "pid", Type: i32}, {Name: "tgid", Type: i32, Offset: 32}}}
	ts := &btf.Struct{Name: "task_struct", Size: tsSize, Members: []btf.Member{
		{Name: "thread_info", Type: ti},
		{Name: "__state", Type: u32, Offset: tsState * 8},
		{Name: "stack", Type: &btf.Pointer{Target: &btf.Void{}}, Offset: tsStack * 8},
		{Name: "on_cpu", Type: i32, Offset: tsOnCPU * 8},
		{Name: "tasks", Type: lh, Offset: tsTasks * 8},
		{Name: "", Type: ids, Offset: tsPid * 8},
		{Name: "comm", Type: &btf.Array{Index: u32, Type: char, Nelems: 16}, Offset: tsComm * 8},
		{Name: "exit_state", Type: i32, Offset: tsExitState * 8},
		{Name: "thread", Type: th, Offset: 96 * 8},
		{Name: "signal", Type: &btf.Pointer{Target: sig}, Offset: tsSignal * 8},
		{Name: "thread_node", Type: lh, Offset: tsThreadNode * 8},
	}}
	b, err := btf.NewBuilder([]btf.Type{ts}, nil)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := b.Marshal(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// synTokens: tokens 1 and 2 are multi-character (the kernel's compression
// in miniature), printable bytes stand for themselves.
func synTokens() (table []byte, index [256]uint16) {
	for i := 0; i < 256; i++ {
		tok := "?"
		switch {
		case i == 1:
			tok = "cmdline_"
		case i == 2:
			tok = "proc_"
		case i >= 0x20 && i < 0x7f:
			tok = string(rune(i))
		}
		index[i] = uint16(len(table))
		table = append(append(table, tok...), 0)
	}
	return table, index
}

func synEncodeName(s string) []byte {
	var out []byte
	for len(s) > 0 {
		switch {
		case strings.HasPrefix(s, "cmdline_"):
			out, s = append(out, 1), s[8:]
		case strings.HasPrefix(s, "proc_"):
			out, s = append(out, 2), s[5:]
		default:
			out, s = append(out, s[0]), s[1:]
		}
	}
	return out
}

// put writes b at guest-virtual va of the kernel image or direct map.
func (k *synKernel) put(va uint64, b []byte) {
	switch {
	case va >= synKernelVA && va < synKernelVA+2<<20:
		copy(k.mem[synImagePA+va-synKernelVA:], b)
	case va >= synDirectVA+synDirectPA && va < synDirectVA+synDirectPA+2<<20:
		copy(k.mem[va-synDirectVA:], b)
	default:
		panic(fmt.Sprintf("synthetic put at unmapped %#x", va))
	}
}

func (k *synKernel) put64(va, v uint64) {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], v)
	k.put(va, b[:])
}

func (k *synKernel) put32(va uint64, v uint32) {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	k.put(va, b[:])
}

func (k *synKernel) pte(pa, v uint64) { binary.LittleEndian.PutUint64(k.mem[pa:], v) }

func newSynKernel(t testing.TB) *synKernel {
	k := &synKernel{mem: make(BytesMem, synRAM)}
	// Page tables: the kernel image in 4 KiB pages, the direct map's one
	// 2 MiB page.
	const pdptK, pdK, ptK, pdptD, pdD = 0x2000, 0x3000, 0x4000, 0x5000, 0x6000
	k.pte(synPML4+511*8, pdptK|3)
	k.pte(pdptK+510*8, pdK|3)
	k.pte(pdK+((synKernelVA>>21)&0x1ff)*8, ptK|3)
	for i := uint64(0); i < 512; i++ {
		k.pte(ptK+i*8, (synImagePA+i*pageSize)|3)
	}
	k.pte(synPML4+((synDirectVA>>39)&0x1ff)*8, pdptD|3)
	k.pte(pdptD, pdD|3)
	k.pte(pdD+(synDirectPA>>21)*8, synDirectPA|3|ptePS)

	K := uint64(synKernelVA)
	D := uint64(synDirectVA + synDirectPA)
	btfRaw := synBTF(t)
	k.syms = []synSym{
		{'T', "_text", K},
		{'T', "cmdline_proc_show", K + 0x1000},
		{'T', "traced_fn", K + 0x1100},
		{'T', "ftrace_caller", K + 0x1200},
		{'T', "weird_fn", K + 0x1300},
		{'t', "dup", K + 0x1400},
		{'t', "dup", K + 0x1500},
		{'T', "entry_SYSCALL_64", K + 0x1600},
		{'T', "tramp_fn", K + 0x1700},
		{'B', "_end", K + 0x1ff000},
		{'D', "init_task", K + 0x100000},
		{'D', "__per_cpu_offset", K + 0x101000},
		{'D', "nr_cpu_ids", K + 0x102000},
		{'R', "__start_BTF", K + 0x110000},
		{'R', "__stop_BTF", K + 0x110000 + uint64(len(btfRaw))},
		{'D', "current_task", 0x1000}, // per-CPU: absolute
	}
	k.put(K+0x1000, nop5)
	call := []byte{0xf3, 0x0f, 0x1e, 0xfa, 0xe8, 0, 0, 0, 0}
	binary.LittleEndian.PutUint32(call[5:], uint32(int32(int64(K+0x1200)-int64(K+0x1100+4+5))))
	k.put(K+0x1100, call)
	k.put(K+0x1300, []byte{0xcc, 0x1f, 0x44, 0, 0})
	tramp := []byte{0xe8, 0, 0, 0, 0}
	binary.LittleEndian.PutUint32(tramp[1:], uint32(uint64(0xffffffffc0001000)-(K+0x1700+5)))
	k.put(K+0x1700, tramp)
	k.put(K+0x110000, btfRaw)

	// Kallsyms tables.
	tab, idx := synTokens()
	var names []byte
	offsets := make([]byte, 0, 4*len(k.syms))
	for _, s := range k.syms {
		enc := synEncodeName(string(s.typ) + s.name)
		names = append(append(names, byte(len(enc))), enc...)
		var o int32
		if s.addr < K {
			o = int32(s.addr)
		} else {
			o = int32(-int64(s.addr-K) - 1)
		}
		offsets = binary.LittleEndian.AppendUint32(offsets, uint32(o))
	}
	ks := K + 0x180000
	offVA, baseVA, numVA, namesVA := ks, ks+0x1000, ks+0x1008, ks+0x1010
	tokVA := namesVA + uint64(len(names)) + 64 // room for "markers"
	tokIdxVA := tokVA + uint64(len(tab))
	k.put(offVA, offsets)
	k.put64(baseVA, K)
	k.put32(numVA, uint32(len(k.syms)))
	k.put(namesVA, names)
	k.put(tokVA, tab)
	for i, o := range idx {
		k.put(tokIdxVA+2*uint64(i), binary.LittleEndian.AppendUint16(nil, o))
	}

	// vmcoreinfo.
	vi := fmt.Sprintf("OSRELEASE=6.1.0-synthetic\nPAGESIZE=4096\nSYMBOL(init_top_pgt)=%x\nNUMBER(phys_base)=0\nNUMBER(pgtable_l5_enabled)=0\nKERNELOFFSET=%x\n"+
		"SYMBOL(kallsyms_names)=%x\nSYMBOL(kallsyms_num_syms)=%x\nSYMBOL(kallsyms_token_table)=%x\nSYMBOL(kallsyms_token_index)=%x\nSYMBOL(kallsyms_offsets)=%x\nSYMBOL(kallsyms_relative_base)=%x\n",
		uint64(startKernelMap+synPML4), synKASLR, namesVA, numVA, tokVA, tokIdxVA, offVA, baseVA)
	copy(k.mem[synVMCoreInf:], vi)

	// Tasks: init_task in the image, two in the direct map; a ring over
	// tasks. CPU 0 runs task 1, CPU 1 runs task 2.
	k.tasks = []uint64{K + 0x100000, D + 0x1000, D + 0x2000}
	comms := []string{"swapper/0", "init", "kthreadd"}
	states := []uint32{0, 1, 0x402}
	for i, ta := range k.tasks {
		next := k.tasks[(i+1)%len(k.tasks)]
		k.put64(ta+tsTasks, next+tsTasks)
		k.put32(ta+tsPid, uint32(i))
		k.put32(ta+tsTgid, uint32(i))
		k.put(ta+tsComm, append([]byte(comms[i]), 0))
		k.put32(ta+tsState, states[i])
		k.put32(ta+tsThreadInfoCPU, uint32(i%2))
		stack := D + 0x10000*uint64(i+1)
		k.put64(ta+tsStack, stack)
		k.put64(ta+tsThreadSP, stack+0x3f00)
	}
	// Threads: init (pid 1) has a second thread, tid 3, off the task
	// list; the others are alone in their signal_struct.
	thread := D + 0x3000
	k.put32(thread+tsPid, 3)
	k.put32(thread+tsTgid, 1)
	k.put(thread+tsComm, []byte("init-worker\x00"))
	k.put64(thread+tsStack, D+0x40000)
	k.put64(thread+tsThreadSP, D+0x40000+0x3f00)
	for i, ta := range k.tasks {
		sig := D + 0x8000 + uint64(i)*0x100
		k.put64(ta+tsSignal, sig)
		members := []uint64{ta}
		if i == 1 {
			members = append(members, thread)
			k.put64(thread+tsSignal, sig)
		}
		// head -> members... -> head
		prev := sig + sigThreadHead
		for _, m := range members {
			k.put64(prev, m+tsThreadNode)
			prev = m + tsThreadNode
		}
		k.put64(prev, sig+sigThreadHead)
	}
	k.current = []uint64{k.tasks[1], k.tasks[2]}
	k.put32(K+0x102000, 2)
	for cpu, cur := range k.current {
		base := D + 0x100000 + uint64(cpu)*0x10000
		k.put64(K+0x101000+8*uint64(cpu), base)
		k.put64(base+0x1000, cur)
	}
	return k
}

func TestSyntheticPipeline(t *testing.T) {
	k := newSynKernel(t)
	kern, err := Open(k.mem, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if kern.Release != "6.1.0-synthetic" || kern.KASLROffset != synKASLR || kern.Source != SourceKallsyms || kern.VMCoreInfo.Phys != synVMCoreInf {
		t.Errorf("release %q offset %#x source %s vmcoreinfo at %#x", kern.Release, kern.KASLROffset, kern.Source, kern.VMCoreInfo.Phys)
	}
	if kern.BTFErr != nil || kern.BTFTypes < 5 {
		t.Fatalf("BTF: %d types, %v", kern.BTFTypes, kern.BTFErr)
	}
	if kern.Symbols.Len() != len(k.syms) {
		t.Errorf("%d symbols, want %d", kern.Symbols.Len(), len(k.syms))
	}
	for _, s := range k.syms {
		if s.name == "dup" {
			continue
		}
		a, err := kern.Symbols.Addr(s.name)
		if err != nil || a != s.addr {
			t.Errorf("%s at %#x, %v; want %#x", s.name, a, err, s.addr)
		}
	}
	if got := kern.Symbols.Lookup("dup"); len(got) != 2 {
		t.Errorf("dup: %+v", got)
	}
	if _, err := kern.Symbols.Addr("dup"); !isKind(err, ErrFormat) {
		t.Errorf("Addr(dup) = %v, want ErrFormat", err)
	}
	if s, off, ok := kern.Symbols.At(synKernelVA + 0x1003); !ok || s.Name != "cmdline_proc_show" || off != 3 {
		t.Errorf("At = %+v %d %v", s, off, ok)
	}
	fs, err := kern.Fentry("cmdline_proc_show")
	if err != nil || len(fs) != 1 || fs[0].Kind != FentryNop || fs[0].Endbr {
		t.Errorf("cmdline_proc_show: %+v %v", fs, err)
	}
	fs, err = kern.Fentry("traced_fn")
	if err != nil || len(fs) != 1 || fs[0].Kind != FentryCall || !fs[0].Endbr || fs[0].TargetSym != "ftrace_caller" || fs[0].Site != synKernelVA+0x1104 {
		t.Errorf("traced_fn: %+v %v", fs, err)
	}
	fs, err = kern.Fentry("weird_fn")
	if err != nil || fs[0].Kind != FentryUnknown || fs[0].Bytes != "cc1f440000" {
		t.Errorf("weird_fn: %+v %v", fs, err)
	}
	fs, err = kern.Fentry("tramp_fn")
	if err != nil || fs[0].Kind != FentryCall || fs[0].Target != 0xffffffffc0001000 || fs[0].TargetSym != "" {
		t.Errorf("tramp_fn (a call beyond _end): %+v %v", fs, err)
	}
	if _, err := kern.Fentry("nope"); !isKind(err, ErrNotFound) {
		t.Errorf("Fentry(nope) = %v", err)
	}
	tasks, err := kern.Tasks()
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		comm, state string
		running     int
	}{{"swapper/0", "R", -1}, {"init", "S", 0}, {"kthreadd", "I", 1}}
	if len(tasks) != len(want) {
		t.Fatalf("%d tasks: %+v", len(tasks), tasks)
	}
	for i, w := range want {
		ts := tasks[i]
		if ts.Addr != k.tasks[i] || ts.Pid != int32(i) || ts.Comm != w.comm || ts.State != w.state || ts.RunningOn != w.running || ts.CPU != i%2 ||
			ts.StackTop-ts.StackBase != 16<<10 || !ts.SPInStack {
			t.Errorf("task %d = %+v, want %+v", i, ts, w)
		}
	}
}

// isKind: err is an *Error of this package and has kind in its chain.
func TestSyntheticThreads(t *testing.T) {
	k := newSynKernel(t)
	kern, err := Open(k.mem, Options{})
	if err != nil {
		t.Fatal(err)
	}
	th, err := kern.Threads()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, x := range th {
		got = append(got, fmt.Sprintf("%d/%d %s", x.Tgid, x.Pid, x.Comm))
	}
	if want := "0/0 swapper/0,1/1 init,1/3 init-worker,2/2 kthreadd"; strings.Join(got, ",") != want {
		t.Errorf("threads %s, want %s", strings.Join(got, ","), want)
	}
	// A thread list that loops without returning to its head.
	k.put64(k.tasks[1]+tsThreadNode, k.tasks[1]+tsThreadNode)
	if _, err := kern.Threads(); !isKind(err, ErrFormat) {
		t.Errorf("looping thread list: %v", err)
	}
}

func isKind(err, kind error) bool {
	var e *Error
	return errors.As(err, &e) && errors.Is(err, kind)
}

// Hostile guests: each breaks one thing and must get a clear error.
func TestSyntheticHostile(t *testing.T) {
	K := uint64(synKernelVA)
	for _, tc := range []struct {
		name   string
		break_ func(k *synKernel)
		open   bool // Open itself fails
		kind   error
	}{
		{"task list cycle", func(k *synKernel) { k.put64(k.tasks[2]+tsTasks, k.tasks[1]+tsTasks) }, false, ErrFormat},
		{"task pointer outside RAM", func(k *synKernel) { k.put64(k.tasks[1]+tsTasks, 0xffff888700000000) }, false, ErrBounds},
		{"nr_cpu_ids huge", func(k *synKernel) { k.put32(K+0x102000, 1<<20) }, false, ErrLimit},
		{"num_syms huge", func(k *synKernel) { k.put32(K+0x181008, 1<<30) }, true, ErrLimit},
		{"token index outside table", func(k *synKernel) {
			vi, _ := ParseVMCoreInfo(k.mem[synVMCoreInf : synVMCoreInf+pageSize])
			idx, _ := vi.Symbol("kallsyms_token_index")
			k.put(idx, []byte{0xff, 0xff})
		}, true, ErrFormat},
		{"no vmcoreinfo", func(k *synKernel) { k.mem[synVMCoreInf] = 'X' }, true, ErrNotFound},
		{"kernel page table entry outside RAM", func(k *synKernel) { k.pte(0x4000, 0x7f0000000|3) }, true, ErrBounds},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := newSynKernel(t)
			tc.break_(k)
			kern, err := Open(k.mem, Options{})
			if !tc.open {
				if err != nil {
					t.Fatal(err)
				}
				_, err = kern.Tasks()
			}
			if !isKind(err, tc.kind) {
				t.Fatalf("err = %v, want kind %v", err, tc.kind)
			}
			t.Log(err)
		})
	}
}
