package linuxkernel

import (
	"strings"
	"testing"
)

// A sleeping task whose stack passes through code the host placed (a
// live patch): with the module's text alone the unwind stops there and
// falls back to the scan; with its ORC tables (given unsorted, with a
// weak terminator at the same IP as a real entry, as a .ko's sections
// may be) it is exact.
func TestUnwindThroughHostORC(t *testing.T) {
	f := newUnwindFixture(t)
	sp := f.top - 0x400
	f.mem.put(sp-8, tMod+0x10) // the task frame's ret_addr: in the patch
	f.mem.put(sp+16, tRFF+0x10)
	f.mem.put(sp+40, tFA+0x10) // a stale text word the scan would report
	task := Task{StackBase: tStack, StackTop: f.top, SavedSP: sp - 56}
	text := AddrRange{tMod, tMod + 0x40}
	var st Stack

	f.u.Modules = []ModuleORC{{Name: "klp-kvm patch", Text: text}}
	f.u.UnwindTask(task, &st)
	if st.Reliable || !isKind(st.Err, ErrNotFound) {
		t.Fatalf("text without ORC: %+v, want the scan", st)
	}
	if _, ok := st.Hit([]AddrRange{{tFA, tFA + 0x20}}); !ok {
		t.Errorf("the scan did not keep the stale word: %+v", st.Scan)
	}

	const ipVA = tMod + 0x800
	ipRaw, entRaw := encodeORC(ipVA, []orcAt{
		{tMod + 4, call(24)},
		{tMod + 0x40, ORCEntry{}}, // the terminator after the code
		{tMod + 4, ORCEntry{}},    // a weak terminator, sorted before the real entry
		{tMod, call(8)},
	})
	m, err := HostORC("klp-kvm patch", text, ipVA, ipRaw, entRaw, ORCFormat1)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.ORC.IPs) != 4 || m.ORC.IPs[0] != tMod || m.ORC.IPs[3] != tMod+0x40 {
		t.Fatalf("sorted IPs %#x", m.ORC.IPs)
	}
	if e, ok := m.ORC.Find(tMod + 0xf); !ok || e.SPOffset != 24 {
		t.Errorf("Find(+0xf) = %+v %v: want the real entry, not the weak terminator", e, ok)
	}
	if _, ok := m.ORC.Find(tMod + 0x40); ok {
		t.Error("Find at the end of the text")
	}
	f.u.Modules = []ModuleORC{m}
	f.u.UnwindTask(task, &st)
	if want := []uint64{tMod + 0x10, tRFF + 0x10}; !st.Reliable || !sameAddrs(frameAddrs(st.Frames), want) || st.Frames[0].String() != "[klp-kvm patch]+0x10" {
		t.Fatalf("through the patch: %+v", st)
	}
	if _, ok := st.Hit([]AddrRange{{tFA, tFA + 0x20}}); ok {
		t.Error("the exact unwind still reports the stale word")
	}
}

// HostORC refuses tables that do not fit the module's text, that would
// end an unwind inside it, or that are malformed.
func TestHostORCRefuses(t *testing.T) {
	text := AddrRange{tMod, tMod + 0x40}
	const ipVA = tMod + 0x800
	good := []orcAt{{tMod, call(8)}, {tMod + 0x40, ORCEntry{}}}
	for _, c := range []struct {
		name    string
		entries []orcAt
		edit    func(ip, ent []byte) ([]byte, []byte)
		text    AddrRange
		format  int
		kind    error
		want    string
	}{
		{"outside the text", []orcAt{{tMod, call(8)}, {tMod + 0x100, call(8)}}, nil, text, ORCFormat1, ErrFormat, "outside"},
		{"below the text", []orcAt{{tMod - 1, call(8)}}, nil, text, ORCFormat1, ErrFormat, "outside"},
		{"end of stack", []orcAt{{tMod, ORCEntry{End: true}}}, nil, text, ORCFormat1, ErrFormat, "end of stack"},
		{"fewer entries", good, func(ip, ent []byte) ([]byte, []byte) { return ip, ent[:6] }, text, ORCFormat1, ErrFormat, "entries"},
		{"ragged", good, func(ip, ent []byte) ([]byte, []byte) { return ip[:7], ent }, text, ORCFormat1, ErrFormat, "multiple"},
		{"empty", nil, nil, text, ORCFormat1, ErrLimit, "ORC entries"},
		{"no text", good, nil, AddrRange{tMod, tMod}, ORCFormat1, ErrInvalid, "text"},
		{"format", good, nil, text, 7, ErrUnsupported, "format"},
	} {
		t.Run(c.name, func(t *testing.T) {
			ip, ent := encodeORC(ipVA, c.entries)
			if c.edit != nil {
				ip, ent = c.edit(ip, ent)
			}
			_, err := HostORC("p", c.text, ipVA, ip, ent, c.format)
			if !isKind(err, c.kind) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want %v with %q", err, c.kind, c.want)
			}
		})
	}
	ip, ent := encodeORC(ipVA, good)
	if _, err := HostORC("p", text, ^uint64(0)-3, ip, ent, ORCFormat1); !isKind(err, ErrFormat) {
		t.Errorf("wrapping table: %v", err)
	}
}

func FuzzHostORC(f *testing.F) {
	ip, ent := encodeORC(tMod+0x800, []orcAt{{tMod + 4, call(24)}, {tMod, call(8)}, {tMod + 0x40, ORCEntry{}}})
	f.Add(ip, ent)
	f.Fuzz(func(t *testing.T, ip, ent []byte) {
		m, err := HostORC("p", AddrRange{tMod, tMod + 0x40}, tMod+0x800, ip, ent, ORCFormat1)
		if err != nil {
			return
		}
		for i := 1; i < len(m.ORC.IPs); i++ {
			if m.ORC.IPs[i] < m.ORC.IPs[i-1] {
				t.Fatalf("not sorted: %#x", m.ORC.IPs)
			}
		}
		for _, a := range m.ORC.IPs {
			if a < tMod || a > tMod+0x40 {
				t.Fatalf("IP %#x outside the text", a)
			}
		}
	})
}
