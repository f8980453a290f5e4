package linuxkernel

import (
	"testing"

	"github.com/cilium/ebpf/btf"
)

// synFtrace lays out ftrace's pages and records in the synthetic guest's
// direct map: two pages of sorted records, the second holding want.
func synFtrace(t *testing.T) (*synKernel, *Ftrace, uint64) {
	t.Helper()
	k := newSynKernel(t)
	as := &AddressSpace{Mem: k.mem, Root: synPML4}
	D := uint64(synDirectVA + synDirectPA)
	f := &Ftrace{as: as,
		pagesStart: D + 0x180000, lock: D + 0x180008, opsList: D + 0x180010, listEnd: D + 0x180100,
		pgNext: 0, pgRecords: 8, pgIndex: 16,
		recSize: 16, recIP: 0, recFlags: 8,
		Disabled: 1 << 25, Enabled: 1 << 31, IPModify: 1 << 26, RefMask: 1<<23 - 1}
	pg1, pg2 := D+0x181000, D+0x181100
	recs1, recs2 := D+0x182000, D+0x183000
	k.put64(f.pagesStart, pg1)
	k.put64(f.opsList, f.listEnd)
	k.put64(pg1, pg2)
	k.put64(pg1+8, recs1)
	k.put32(pg1+16, 3)
	k.put64(pg2, 0)
	k.put64(pg2+8, recs2)
	k.put32(pg2+16, 5)
	for i := uint64(0); i < 3; i++ {
		k.put64(recs1+16*i, synKernelVA+0x100+0x10*i)
	}
	for i := uint64(0); i < 5; i++ {
		k.put64(recs2+16*i, synKernelVA+0x1000+0x100*i)
		k.put64(recs2+16*i+8, i) // flags: i ops
	}
	return k, f, synKernelVA + 0x1000 + 0x300 // the fourth of page 2
}

func TestFtraceRecord(t *testing.T) {
	k, f, ip := synFtrace(t)
	va, err := f.Record(ip)
	if want := uint64(synDirectVA+synDirectPA) + 0x183000 + 3*16 + 8; err != nil || va != want {
		t.Fatalf("Record(%#x) = %#x, %v; want %#x", ip, va, err, want)
	}
	if fl, err := f.Flags(va); err != nil || fl != 3 {
		t.Errorf("flags %#x, %v; want 3", fl, err)
	}
	for _, miss := range []uint64{ip + 1, synKernelVA, synKernelVA + 0x5000} {
		if _, err := f.Record(miss); !isKind(err, ErrNotFound) {
			t.Errorf("Record(%#x): %v, want ErrNotFound", miss, err)
		}
	}
	held, ops, err := f.Busy()
	if err != nil || held || ops {
		t.Errorf("idle ftrace: lock held %v, ops registered %v, %v", held, ops, err)
	}
	k.put64(f.lock, 0xffff888000123400)
	k.put64(f.opsList, 0xffffffffc0001000)
	if held, ops, err := f.Busy(); err != nil || !held || !ops {
		t.Errorf("busy ftrace: lock held %v, ops registered %v, %v", held, ops, err)
	}
}

// A hostile guest's ftrace pages: a loop, a huge or negative count, a
// records pointer into nowhere. Each is an error, not a hang or a panic.
func TestFtraceRecordHostile(t *testing.T) {
	D := uint64(synDirectVA + synDirectPA)
	for _, c := range []struct {
		name string
		bad  func(k *synKernel)
		kind error
	}{
		{"loop", func(k *synKernel) { k.put64(D+0x181100, D+0x181000); k.put32(D+0x181100+16, 0) }, ErrFormat},
		{"huge count", func(k *synKernel) { k.put32(D+0x181000+16, 1<<21) }, ErrFormat},
		{"negative count", func(k *synKernel) { k.put32(D+0x181000+16, 0xffffffff) }, ErrFormat},
		{"records unmapped", func(k *synKernel) { k.put64(D+0x181000+8, 0xffffc90000000000) }, ErrBounds},
		{"next unmapped", func(k *synKernel) { k.put64(D+0x181000, 0xffffc90000000000) }, ErrBounds},
	} {
		k, f, ip := synFtrace(t)
		c.bad(k)
		if _, err := f.Record(ip); !isKind(err, c.kind) {
			t.Errorf("%s: %v, want %v", c.name, err, c.kind)
		}
	}
}

func TestFtraceFlagBits(t *testing.T) {
	fl := func(name string, v uint64) btf.EnumValue { return btf.EnumValue{Name: name, Value: v} }
	good := &btf.Enum{Size: 4, Values: []btf.EnumValue{
		fl("FTRACE_FL_ENABLED", 1<<31), fl("FTRACE_FL_IPMODIFY", 1<<26), fl("FTRACE_FL_DISABLED", 1<<25),
		fl("FTRACE_FL_MODIFIED", 1<<19)}} // 6.6's layout: the count below bit 19
	other := &btf.Enum{Name: "x", Size: 4, Values: []btf.EnumValue{fl("X", 3)}}
	spec := func(t *testing.T, types ...btf.Type) *btf.Spec {
		b, err := btf.NewBuilder(types, nil)
		if err != nil {
			t.Fatal(err)
		}
		raw, err := b.Marshal(nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		s, _, err := ParseBTF(raw)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	var f Ftrace
	if err := f.flagBits(spec(t, other, good)); err != nil || f.Disabled != 1<<25 || f.Enabled != 1<<31 || f.IPModify != 1<<26 || f.RefMask != 1<<19-1 {
		t.Errorf("flags %+v, %v", f, err)
	}
	if err := new(Ftrace).flagBits(spec(t, other)); !isKind(err, ErrNotFound) {
		t.Errorf("no enum: %v", err)
	}
	bad := &btf.Enum{Size: 4, Values: []btf.EnumValue{fl("FTRACE_FL_DISABLED", 3), fl("FTRACE_FL_ENABLED", 1<<31), fl("FTRACE_FL_IPMODIFY", 1<<26)}}
	if err := new(Ftrace).flagBits(spec(t, bad)); !isKind(err, ErrFormat) {
		t.Errorf("two-bit flag: %v", err)
	}
}

// The real Debian 6.1 kernel's BTF has everything Ftrace needs, with
// 6.1's values (include/linux/ftrace.h).
func TestDebianVmlinuxFtrace(t *testing.T) {
	_, spec, _ := debianBTF(t)
	k := &Kernel{BTF: spec, Symbols: NewSymbols([]Symbol{
		{Name: "ftrace_pages_start", Addr: 1}, {Name: "ftrace_lock", Addr: 2}, {Name: "ftrace_ops_list", Addr: 3}, {Name: "ftrace_list_end", Addr: 4}})}
	f, err := k.Ftrace()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("ftrace layout %+v", *f)
	if f.Disabled != 1<<25 || f.Enabled != 1<<31 || f.IPModify != 1<<26 || f.RefMask != 1<<23-1 ||
		f.recSize != 16 || f.recIP != 0 || f.recFlags != 8 || f.pgNext != 0 || f.pgRecords != 8 || f.pgIndex != 16 || f.lock != 2 {
		t.Errorf("not Linux 6.1's ftrace: %+v", *f)
	}
}

// FuzzFtraceRecord writes the input over the synthetic guest's ftrace
// pages and records (the pages, then the records' area) and looks a
// site up: whatever the guest holds there, Record and Busy return a
// record or an error, in bounded time, and a record they return is the
// site's own.
func FuzzFtraceRecord(f *testing.F) {
	f.Add([]byte{}, uint64(0))
	f.Add(make([]byte, 24), uint64(0x300))
	loop := make([]byte, 0x110)
	copy(loop[0x100:], []byte{0x00, 0x10, 0x18, 0x80, 0x88, 0xff, 0xff, 0xff}) // page 2's next: page 1
	f.Add(loop, uint64(0x300))
	f.Fuzz(func(t *testing.T, data []byte, off uint64) {
		k, fr, ip := synFtrace(t)
		D := uint64(synDirectVA + synDirectPA)
		if len(data) > 0x3000 {
			data = data[:0x3000]
		}
		k.put(D+0x181000, data) // pages at 0x181000 and 0x181100, records from 0x182000
		target := ip + off%0x1000 - 0x800
		va, err := fr.Record(target)
		if err == nil {
			if got, rerr := fr.as.U64(va - fr.recFlags + fr.recIP); rerr != nil || got != target {
				t.Fatalf("Record(%#x) = %#x, whose ip reads %#x (%v)", target, va, got, rerr)
			}
		}
		if _, _, err := fr.Busy(); err != nil {
			t.Fatalf("Busy: %v", err)
		}
	})
}
