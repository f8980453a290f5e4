package guestkernel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// newSysfsMem places the image's initial klp_sysfs_state in fake memory.
func newSysfsMem(t testing.TB) (*fakeMem, uint64) {
	im := openImage(t, Vmlinux())
	addr := im.addr(t, "klp_sysfs_state")
	mem := newFakeMem()
	mem.add(addr, im.read(t, "klp_sysfs_state", SysfsStateSize))
	return mem, addr
}

func samplePatches() []SysfsPatch {
	return []SysfsPatch{
		{Name: "livepatch_sample", Enabled: true, StackOrder: 1, Objects: []SysfsObject{
			{Name: "vmlinux", Patched: true, Funcs: []SysfsFunc{{Name: "cmdline_proc_show", Sympos: 1}}}}},
		{Name: "livepatch_pair", Transition: true, Replace: true, StackOrder: 2, Objects: []SysfsObject{
			{Name: "vmlinux", Funcs: []SysfsFunc{{Name: "klp_pair_a"}, {Name: "klp_pair_b", Sympos: 0}}}}},
	}
}

func TestSysfsWriterSeqlock(t *testing.T) {
	mem, addr := newSysfsMem(t)
	w, err := NewSysfsWriter(mem, addr)
	if err != nil {
		t.Fatal(err)
	}
	want := samplePatches()
	if err := w.Write(want); err != nil {
		t.Fatal(err)
	}
	got, seq, err := DecodeSysfsState(mem.regions[addr])
	if err != nil {
		t.Fatal(err)
	}
	if seq != 2 || !reflect.DeepEqual(got, want) {
		t.Fatalf("seq %d\n got %+v\nwant %+v", seq, got, want)
	}
	// the seqlock discipline: first and last writes are seq, odd then even
	seqAt := fmt.Sprintf("%#x:4", addr+offSSSeq)
	if mem.writes[0] != seqAt || mem.writes[len(mem.writes)-1] != seqAt {
		t.Fatalf("writes %v: seq must be written first and last", mem.writes)
	}
	// shrink to one patch: the guest sees only it
	if err := w.Write(want[:1]); err != nil {
		t.Fatal(err)
	}
	got, seq, _ = DecodeSysfsState(mem.regions[addr])
	if seq != 4 || len(got) != 1 || got[0].Name != "livepatch_sample" {
		t.Fatalf("after shrink: seq %d %+v", seq, got)
	}
	// a writer that died mid-update left seq odd: the next write ends even
	binary.LittleEndian.PutUint32(mem.regions[addr][offSSSeq:], 7)
	if err := w.Write(nil); err != nil {
		t.Fatal(err)
	}
	if got, seq, _ = DecodeSysfsState(mem.regions[addr]); seq%2 != 0 || seq <= 7 || len(got) != 0 {
		t.Fatalf("recovery: seq %d, %d patches", seq, len(got))
	}
}

// TestSysfsWriterFailureLeavesOdd: a memory failure mid-write leaves seq
// odd, so the guest keeps retrying rather than render a torn state.
type failingMem struct {
	*fakeMem
	after int
}

func (f *failingMem) WriteVirt(addr uint64, b []byte) error {
	if f.after == 0 {
		return errors.New("injected fault")
	}
	f.after--
	return f.fakeMem.WriteVirt(addr, b)
}

func TestSysfsWriterFailureLeavesOdd(t *testing.T) {
	mem, addr := newSysfsMem(t)
	fm := &failingMem{fakeMem: mem, after: 2}
	w, err := NewSysfsWriter(fm, addr)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Write(samplePatches()); !errors.Is(err, ErrMemory) {
		t.Fatalf("want ErrMemory, got %v", err)
	}
	if seq := binary.LittleEndian.Uint32(mem.regions[addr][offSSSeq:]); seq%2 != 1 {
		t.Fatalf("seq %d after a failed write, want odd", seq)
	}
}

func TestSysfsEncodeRejects(t *testing.T) {
	many := func(n int) []SysfsPatch {
		var ps []SysfsPatch
		for i := 0; i < n; i++ {
			ps = append(ps, SysfsPatch{Name: fmt.Sprintf("p%d", i)})
		}
		return ps
	}
	funcs := make([]SysfsFunc, SysfsMaxFuncs+1)
	for i := range funcs {
		funcs[i] = SysfsFunc{Name: fmt.Sprintf("bench_fn_%04d", i)}
	}
	cases := map[string]struct {
		ps   []SysfsPatch
		kind error
	}{
		"too many patches": {many(SysfsMaxPatches + 1), ErrCapacity},
		"too many funcs":   {[]SysfsPatch{{Name: "b", Objects: []SysfsObject{{Name: "vmlinux", Funcs: funcs}}}}, ErrCapacity},
		"empty name":       {[]SysfsPatch{{Name: ""}}, ErrInvalid},
		"slash":            {[]SysfsPatch{{Name: "a/b"}}, ErrInvalid},
		"dotdot":           {[]SysfsPatch{{Name: ".."}}, ErrInvalid},
		"long name":        {[]SysfsPatch{{Name: strings.Repeat("x", SysfsNameLen)}}, ErrInvalid},
		"long func":        {[]SysfsPatch{{Name: "p", Objects: []SysfsObject{{Name: "vmlinux", Funcs: []SysfsFunc{{Name: strings.Repeat("f", SysfsFuncNameLen)}}}}}}, ErrInvalid},
		"duplicate patch":  {[]SysfsPatch{{Name: "p"}, {Name: "p"}}, ErrInvalid},
		"duplicate object": {[]SysfsPatch{{Name: "p", Objects: []SysfsObject{{Name: "vmlinux"}, {Name: "vmlinux"}}}}, ErrInvalid},
	}
	for name, c := range cases {
		if _, err := EncodeSysfsState(c.ps); !errors.Is(err, c.kind) {
			t.Errorf("%s: got %v, want %v", name, err, c.kind)
		}
	}
	ok := many(SysfsMaxPatches)
	if _, err := EncodeSysfsState(ok); err != nil {
		t.Errorf("full table refused: %v", err)
	}
	mem := newFakeMem()
	mem.add(0x1000, make([]byte, SysfsStateSize))
	if _, err := NewSysfsWriter(mem, 0x1000); !errors.Is(err, ErrFormat) {
		t.Errorf("zeroed state accepted: %v", err)
	}
}

// FuzzDecodeSysfsState: any buffer decodes without panic, clamped.
func FuzzDecodeSysfsState(f *testing.F) {
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		st := make([]byte, SysfsStateSize)
		le := binary.LittleEndian
		le.PutUint64(st[offSSMagic:], SysfsMagic)
		le.PutUint32(st[offSSVersion:], SysfsVersion)
		le.PutUint32(st[offSSSize:], SysfsStateSize)
		le.PutUint32(st[offSSMaxPatches:], SysfsMaxPatches)
		le.PutUint32(st[offSSMaxObjs:], SysfsMaxObjs)
		le.PutUint32(st[offSSMaxFuncs:], SysfsMaxFuncs)
		// fuzz the counts and the first entries
		copy(st[offSSNrPatches:], data)
		ps, _, err := DecodeSysfsState(st)
		if err != nil && !errors.Is(err, ErrFormat) {
			t.Fatal(err)
		}
		if len(ps) > SysfsMaxPatches {
			t.Fatalf("%d patches", len(ps))
		}
	})
}

// TestSysfsWriterReusesBuffer: a Write after a longer one leaves no trace
// of it in the entries it sends (the writer reuses its encoding buffer).
func TestSysfsWriterReusesBuffer(t *testing.T) {
	mem, addr := newSysfsMem(t)
	w, err := NewSysfsWriter(mem, addr)
	if err != nil {
		t.Fatal(err)
	}
	long := samplePatches()
	long[0].Name = strings.Repeat("p", SysfsNameLen-1)
	long[0].Enabled, long[0].StackOrder = true, 9
	long[0].Objects[0].Name = strings.Repeat("o", SysfsNameLen-1)
	long[0].Objects[0].Funcs[0].Name = strings.Repeat("f", SysfsFuncNameLen-1)
	long[0].Objects[0].Funcs[0].Sympos = 7
	if err := w.Write(long); err != nil {
		t.Fatal(err)
	}
	short := []SysfsPatch{{Name: "a", Objects: []SysfsObject{{Name: "b", Funcs: []SysfsFunc{{Name: "c"}}}}}}
	if err := w.Write(short); err != nil {
		t.Fatal(err)
	}
	fresh, err := EncodeSysfsState(short)
	if err != nil {
		t.Fatal(err)
	}
	img := mem.regions[addr]
	for _, r := range [][2]int{{offSSPatches, SysfsPatchSize}, {offSSObjs, SysfsObjSize}, {offSSFuncs, SysfsFuncSize}} {
		got := img[r[0] : r[0]+r[1]]
		want := fresh[r[0]-offSSNrPatches : r[0]-offSSNrPatches+r[1]]
		if string(got) != string(want) {
			t.Fatalf("entry at %#x:\n got % x\nwant % x", r[0], got, want)
		}
	}
	if got, _, _ := DecodeSysfsState(img); !reflect.DeepEqual(got, short) {
		t.Fatalf("decoded %+v, want %+v", got, short)
	}
}
