package mptable

import (
	"encoding/binary"
	"errors"
	"testing"
)

func sum(b []byte) byte {
	var s byte
	for _, c := range b {
		s += c
	}
	return s
}

func TestBuild(t *testing.T) {
	for _, cpus := range []int{1, 2, 64} {
		const base = 0xf0000
		buf := make([]byte, 4096)
		n, err := Build(buf, base, cpus)
		if err != nil {
			t.Fatal(err)
		}
		if n != Size(cpus) {
			t.Fatalf("%d CPUs: wrote %d bytes, Size says %d", cpus, n, Size(cpus))
		}
		le := binary.LittleEndian
		f := buf[:16]
		if string(f[:4]) != "_MP_" || sum(f) != 0 || f[8] != 1 || f[9] != 4 || f[11] != 0 {
			t.Fatalf("floating pointer % x", f)
		}
		if p := le.Uint32(f[4:]); p != base+16 {
			t.Fatalf("physptr %#x, want %#x", p, base+16)
		}
		tb := buf[16:n]
		if string(tb[:4]) != "PCMP" || sum(tb) != 0 || int(le.Uint16(tb[4:])) != len(tb) {
			t.Fatalf("config table header % x (sum %d)", tb[:44], sum(tb))
		}
		if le.Uint32(tb[36:]) != APICDefaultBase {
			t.Errorf("lapic_addr %#x", le.Uint32(tb[36:]))
		}
		count := map[byte]int{}
		o := 44
		for i := 0; i < int(le.Uint16(tb[34:])); i++ {
			typ := tb[o]
			count[typ]++
			switch typ {
			case entryProcessor:
				id := tb[o+1]
				if int(id) != count[typ]-1 || tb[o+3]&cpuEnabled == 0 || (tb[o+3]&cpuBSP != 0) != (id == 0) {
					t.Errorf("processor entry %d: id %d flags %#x", count[typ]-1, id, tb[o+3])
				}
				o += 20
			case entryIOAPIC:
				if tb[o+1] != IOAPICID(cpus) || le.Uint32(tb[o+4:]) != IOAPICDefaultBase || tb[o+3] != 1 {
					t.Errorf("IOAPIC entry % x", tb[o:o+8])
				}
				o += 8
			case entryIOIntr:
				irq := count[typ] - 1
				if tb[o+1] != intINT || int(tb[o+5]) != irq || int(tb[o+7]) != irq || tb[o+6] != IOAPICID(cpus) {
					t.Errorf("I/O interrupt entry %d: % x", irq, tb[o:o+8])
				}
				o += 8
			case entryLocalIntr:
				lint := count[typ] - 1
				want := []byte{intExtINT, intNMI}[lint]
				if tb[o+1] != want || tb[o+6] != 0xff || int(tb[o+7]) != lint {
					t.Errorf("local interrupt entry %d: % x", lint, tb[o:o+8])
				}
				o += 8
			case entryBus:
				if string(tb[o+2:o+8]) != "ISA   " {
					t.Errorf("bus %q", tb[o+2:o+8])
				}
				o += 8
			default:
				t.Fatalf("entry type %d at %d", typ, o)
			}
		}
		if o != len(tb) {
			t.Errorf("entries end at %d, table is %d bytes", o, len(tb))
		}
		want := map[byte]int{entryProcessor: cpus, entryBus: 1, entryIOAPIC: 1, entryIOIntr: 16, entryLocalIntr: 2}
		for k, v := range want {
			if count[k] != v {
				t.Errorf("%d CPUs: %d entries of type %d, want %d", cpus, count[k], k, v)
			}
		}
	}
}

func TestBuildRejects(t *testing.T) {
	buf := make([]byte, 8192)
	for _, c := range []struct {
		name string
		dst  []byte
		base uint64
		cpus int
	}{
		{"no CPUs", buf, 0xf0000, 0},
		{"too many CPUs", buf, 0xf0000, 255},
		{"small buffer", buf[:100], 0xf0000, 1},
		{"above 1 MiB", buf, 0xfff00, 4},
		{"unaligned", buf, 0xf0008, 1},
	} {
		if _, err := Build(c.dst, c.base, c.cpus); !errors.Is(err, ErrTooBig) {
			t.Errorf("%s: %v", c.name, err)
		}
	}
}
