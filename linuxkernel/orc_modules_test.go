package linuxkernel

import (
	"strings"
	"testing"

	"github.com/cilium/ebpf/btf"
)

const (
	tMod     = 0xffffffffc0001000 // a module's text
	tModInit = 0xffffffffc0100000 // its init text
)

// A sleeping task whose stack passes through module code: without the
// module's table the return address is not even text; with it the
// unwind goes through, the frame named by the module.
func TestUnwindThroughModule(t *testing.T) {
	f := newUnwindFixture(t)
	sp := f.top - 0x400
	f.mem.put(sp-8, tMod+0x10) // the task frame's ret_addr
	f.mem.put(sp+16, tRFF+0x10)
	var st Stack
	task := Task{StackBase: tStack, StackTop: f.top, SavedSP: sp - 56}
	f.u.UnwindTask(task, &st)
	if st.Reliable || !isKind(st.Err, ErrFormat) || !strings.Contains(st.Why, "not kernel text") {
		t.Fatalf("without the module: %+v", st)
	}
	const ipVA = tMod + 0x800
	ipRaw, entRaw := encodeORC(ipVA, []orcAt{{tMod, call(8)}, {tMod + 4, call(24)}, {tMod + 0x100, ORCEntry{}}})
	o, err := ParseORC(ipVA, ipRaw, entRaw, ORCFormat1)
	if err != nil {
		t.Fatal(err)
	}
	o.Covered = []AddrRange{{tMod, tMod + 0x100}}
	f.u.Modules = []ModuleORC{{Name: "mod", Text: AddrRange{tMod, tMod + 0x100}, ORC: o}}
	f.u.UnwindTask(task, &st)
	if want := []uint64{tMod + 0x10, tRFF + 0x10}; !st.Reliable || !sameAddrs(frameAddrs(st.Frames), want) || st.Frames[0].String() != "[mod]+0x10" {
		t.Fatalf("through the module: %+v", st)
	}
}

// Synthetic struct module (BTF) and module list in the synthetic guest.
const (
	smState    = 0
	smList     = 8
	smName     = 24
	smCore     = 80
	smInit     = 96
	smArch     = 112
	smSize     = 136
	synModules = synKernelVA + 0x104000 // the modules list head
)

func synModuleBTF(t testing.TB) *btf.Spec {
	u32 := &btf.Int{Name: "unsigned int", Size: 4}
	char := &btf.Int{Name: "char", Size: 1, Encoding: btf.Char}
	void := &btf.Pointer{Target: &btf.Void{}}
	lh := &btf.Struct{Name: "list_head", Size: 16}
	lh.Members = []btf.Member{{Name: "next", Type: &btf.Pointer{Target: lh}}, {Name: "prev", Type: &btf.Pointer{Target: lh}, Offset: 64}}
	layout := &btf.Struct{Name: "module_layout", Size: 16, Members: []btf.Member{{Name: "base", Type: void}, {Name: "size", Type: u32, Offset: 64}, {Name: "text_size", Type: u32, Offset: 96}}}
	arch := &btf.Struct{Name: "mod_arch_specific", Size: 24, Members: []btf.Member{{Name: "num_orcs", Type: u32}, {Name: "orc_unwind_ip", Type: void, Offset: 64}, {Name: "orc_unwind", Type: void, Offset: 128}}}
	mod := &btf.Struct{Name: "module", Size: smSize, Members: []btf.Member{
		{Name: "state", Type: u32, Offset: smState * 8},
		{Name: "list", Type: lh, Offset: smList * 8},
		{Name: "name", Type: &btf.Array{Index: u32, Type: char, Nelems: 56}, Offset: smName * 8},
		{Name: "core_layout", Type: layout, Offset: smCore * 8},
		{Name: "init_layout", Type: layout, Offset: smInit * 8},
		{Name: "arch", Type: arch, Offset: smArch * 8},
	}}
	b, err := btf.NewBuilder([]btf.Type{mod}, nil)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := b.Marshal(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	spec, _, err := ParseBTF(raw)
	if err != nil {
		t.Fatal(err)
	}
	return spec
}

type synModule struct {
	name                     string
	state                    uint32
	text, textSize, initBase uint64
	entries                  []orcAt
}

// synModuleGuest is the synthetic guest with a module list: each
// module's struct module and ORC tables in the direct map.
func synModuleGuest(t *testing.T, mods []synModule) (*synKernel, *Kernel, []uint64) {
	k := newSynKernel(t)
	kern, err := Open(k.mem, Options{})
	if err != nil {
		t.Fatal(err)
	}
	kern.BTF = synModuleBTF(t)
	kern.Symbols = NewSymbols(append(kern.Symbols.All(), Symbol{Name: "modules", Addr: synModules, Type: 'd'}))
	D := uint64(synDirectVA + synDirectPA)
	prev := uint64(synModules)
	var addrs []uint64
	for i, m := range mods {
		a := D + 0x20000 + uint64(i)*0x1000
		addrs = append(addrs, a)
		k.put64(prev, a+smList)
		prev = a + smList
		k.put32(a+smState, m.state)
		k.put(a+smName, append([]byte(m.name), 0))
		k.put64(a+smCore, m.text)
		k.put32(a+smCore+12, uint32(m.textSize))
		k.put64(a+smInit, m.initBase)
		k.put32(a+smInit+12, 0x100)
		ipVA := D + 0x40000 + uint64(i)*0x1000
		entVA := ipVA + 0x800
		ipRaw, entRaw := encodeORC(ipVA, m.entries)
		k.put(ipVA, ipRaw)
		k.put(entVA, entRaw)
		k.put32(a+smArch, uint32(len(m.entries)))
		k.put64(a+smArch+8, ipVA)
		k.put64(a+smArch+16, entVA)
	}
	k.put64(prev, synModules)
	return k, kern, addrs
}

func TestReadModuleORC(t *testing.T) {
	// The entries are relative to their own addresses, which the kernel
	// keeps within 2 GiB of the module's text (both in module memory):
	// here the "text" lies next to the tables in the direct map.
	const tMod, tModInit = synDirectVA + synDirectPA + 0x100000, synDirectVA + synDirectPA + 0x180000
	mods := []synModule{
		{name: "kvm", text: tMod, textSize: 0x1000, initBase: tModInit, entries: []orcAt{{tMod, call(8)}, {tMod + 4, call(16)}, {tModInit, call(8)}}},
		{name: "loading", state: moduleStateUnfmd, text: tMod + 0x10000, textSize: 0x100},
		{name: "irqbypass", text: tMod + 0x20000, textSize: 0x200, entries: []orcAt{{tMod + 0x20000, call(8)}}},
	}
	_, kern, _ := synModuleGuest(t, mods)
	got, err := kern.ReadModuleORC(nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Name != "kvm" || got[1].Name != "irqbypass" {
		t.Fatalf("modules %+v, want kvm and irqbypass (the unformed one skipped)", got)
	}
	kvm := got[0]
	if kvm.Text != (AddrRange{tMod, tMod + 0x1000}) || kvm.Init != (AddrRange{tModInit, tModInit + 0x100}) || len(kvm.ORC.IPs) != 3 {
		t.Errorf("kvm: %+v", kvm)
	}
	if e, ok := kvm.ORC.Find(tMod + 8); !ok || e.SPOffset != 16 {
		t.Errorf("kvm Find(+8) = %+v %v", e, ok)
	}
	if e, ok := kvm.ORC.Find(tModInit + 2); !ok || e.SPOffset != 8 {
		t.Errorf("kvm init text Find = %+v %v", e, ok)
	}
	if _, ok := kvm.ORC.Find(tMod + 0x5000); ok {
		t.Error("Find beyond the module's text")
	}
	// Unchanged modules keep their parsed tables.
	again, err := kern.ReadModuleORC(got)
	if err != nil || len(again) != 2 || again[0].ORC != got[0].ORC {
		t.Errorf("re-read: %+v, %v", again, err)
	}
	// An Unwinder over this kernel: RefreshModules, and module text is
	// text.
	u := &Unwinder{ORC: &ORC{}, k: kern}
	if err := u.RefreshModules(); err != nil || len(u.Modules) != 2 || !u.isText(tMod+0x20010) || u.isText(tMod+0x30000) {
		t.Errorf("RefreshModules: %v, %+v", err, u.Modules)
	}

	// Hostile lists and tables.
	for _, c := range []struct {
		name   string
		break_ func(k *synKernel, addrs []uint64)
		kind   error
	}{
		{"cycle", func(k *synKernel, addrs []uint64) { k.put64(addrs[2]+smList, addrs[0]+smList) }, ErrFormat},
		{"huge num_orcs", func(k *synKernel, addrs []uint64) { k.put32(addrs[0]+smArch, 1<<24) }, ErrLimit},
		{"table outside memory", func(k *synKernel, addrs []uint64) { k.put64(addrs[2]+smArch+8, 0xffffc9ffff000000) }, ErrBounds},
		{"unsorted table", func(k *synKernel, addrs []uint64) {
			ipVA := uint64(synDirectVA+synDirectPA) + 0x40000
			raw, _ := encodeORC(ipVA, []orcAt{{tMod + 4, call(8)}, {tMod, call(8)}, {tModInit, call(8)}})
			k.put(ipVA, raw)
		}, ErrFormat},
	} {
		t.Run(c.name, func(t *testing.T) {
			k, kern, addrs := synModuleGuest(t, mods)
			c.break_(k, addrs)
			_, err := kern.ReadModuleORC(nil)
			if !isKind(err, c.kind) {
				t.Fatalf("err = %v, want %v", err, c.kind)
			}
			t.Log(err)
		})
	}
}

// A vCPU's stacks from the per-CPU variables of the synthetic guest
// (per-CPU areas at __per_cpu_offset[cpu]), and UnwindCPU finding the
// CPU's current task.
func TestCPUStacks(t *testing.T) {
	k := newSynKernel(t)
	kern, err := Open(k.mem, Options{})
	if err != nil {
		t.Fatal(err)
	}
	D := uint64(synDirectVA + synDirectPA)
	kern.Symbols = NewSymbols(append(kern.Symbols.All(),
		Symbol{Name: "hardirq_stack_ptr", Addr: 0x2000, Type: 'D'},
		Symbol{Name: "cea_exception_stacks", Addr: 0x2008, Type: 'D'},
		Symbol{Name: "cpu_entry_area", Addr: 0x2010, Type: 'D'}))
	u := &Unwinder{ORC: &ORC{}, Mem: kern.AS, k: kern}
	u.initPerCPU(kern)
	const cpu = 1
	base := D + 0x100000 + cpu*0x10000 // newSynKernel's per-CPU area of CPU 1
	irqTop := uint64(0xffffc90000204000 - 8)
	cea := D + 0x30000 // mapped: the estacks are found
	entry := D + 0x60000
	k.put64(base+0x2000, irqTop)
	k.put64(base+0x2008, cea)
	k.put64(base+0x2010, entry)
	tasks, err := kern.Tasks()
	if err != nil {
		t.Fatal(err)
	}
	task := tasks[2] // runs on CPU 1
	if task.RunningOn != cpu {
		t.Fatalf("task %+v", task)
	}
	got, err := u.CPUStacks(task, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []StackRange{
		{StackTask, task.StackBase, task.StackTop},
		{StackIRQ, irqTop + 8 - 16<<10, irqTop + 8},
	}
	for i := range nExceptionStacks {
		s := cea + pageSize + uint64(i)*(pageSize+8<<10)
		want = append(want, StackRange{StackException + StackKind(i), s, s + 8<<10})
	}
	want = append(want, StackRange{StackEntry, entry + pageSize, entry + 2*pageSize})
	if len(got) != len(want) {
		t.Fatalf("stacks %+v\nwant %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("stack %d: %+v, want %+v", i, got[i], want[i])
		}
	}
	// UnwindCPU finds CPU 1's current task through current_task; in
	// user mode there is nothing to unwind.
	var st Stack
	if err := u.UnwindCPU(cpu, PtRegs{IP: 0x401000, CS: 0x33}, &st); err != nil || !st.Reliable || st.Stop != StopUserMode {
		t.Errorf("UnwindCPU: %v %+v", err, st)
	}
	if err := u.UnwindCPU(7, PtRegs{}, &st); !isKind(err, ErrInvalid) {
		t.Errorf("UnwindCPU(7): %v", err)
	}
	// Hostile per-CPU values.
	k.put64(base+0x2000, irqTop+3)
	if _, err := u.CPUStacks(task, nil); !isKind(err, ErrFormat) {
		t.Errorf("misaligned hardirq_stack_ptr: %v", err)
	}
	k.put64(base+0x2000, 0x100) // below IRQ_STACK_SIZE: would wrap
	if _, err := u.CPUStacks(task, nil); !isKind(err, ErrFormat) {
		t.Errorf("tiny hardirq_stack_ptr: %v", err)
	}
	task.RunningOn = 5
	if _, err := u.CPUStacks(task, nil); !isKind(err, ErrInvalid) {
		t.Errorf("CPU 5 of 2: %v", err)
	}
}
