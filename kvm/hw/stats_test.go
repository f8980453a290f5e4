package hw

import (
	"encoding/binary"
	"errors"
	"testing"
)

// statsFile builds a KVM binary stats file: header, descriptors with
// name_size-byte names, data.
func statsFile(nameSize int, descs []struct {
	name string
	size uint16
	off  uint32
}, data []uint64) []byte {
	le := binary.LittleEndian
	descOff := uint32(sizeofStatsHeader + 8) // an id string of 8 bytes between
	step := sizeofStatsDesc + nameSize
	dataOff := descOff + uint32(step*len(descs))
	b := make([]byte, int(dataOff)+8*len(data))
	le.PutUint32(b[4:], uint32(nameSize))
	le.PutUint32(b[8:], uint32(len(descs)))
	le.PutUint32(b[12:], sizeofStatsHeader)
	le.PutUint32(b[16:], descOff)
	le.PutUint32(b[20:], dataOff)
	for i, d := range descs {
		p := b[int(descOff)+i*step:]
		le.PutUint16(p[6:], d.size)
		le.PutUint32(p[8:], d.off)
		copy(p[sizeofStatsDesc:sizeofStatsDesc+nameSize-1], d.name)
	}
	for i, v := range data {
		le.PutUint64(b[int(dataOff)+8*i:], v)
	}
	return b
}

func TestParseStats(t *testing.T) {
	type d = struct {
		name string
		size uint16
		off  uint32
	}
	b := statsFile(48, []d{{"exits", 1, 0}, {"halt_poll_success_hist", 4, 8}, {"insn_emulation", 1, 40}}, []uint64{7, 1, 2, 3, 4, 99})
	l, err := parseStats(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(l.descs) != 2 || l.dataSize != 48 {
		t.Fatalf("layout %+v: want 2 single counters (the histogram skipped) and 48 data bytes", l)
	}
	v := l.values(b[l.dataOffset:])
	if v["exits"] != 7 || v["insn_emulation"] != 99 || len(v) != 2 {
		t.Errorf("values %v", v)
	}
	// A short data read loses the counters it does not cover, nothing else.
	if v := l.values(b[l.dataOffset : l.dataOffset+8]); v["exits"] != 7 || len(v) != 1 {
		t.Errorf("short data: %v", v)
	}
	for name, bad := range map[string][]byte{
		"short header":     b[:10],
		"descs past end":   b[:sizeofStatsHeader+20],
		"zero name size":   func() []byte { c := append([]byte(nil), b...); binary.LittleEndian.PutUint32(c[4:], 0); return c }(),
		"huge descriptors": func() []byte { c := append([]byte(nil), b...); binary.LittleEndian.PutUint32(c[8:], 1<<20); return c }(),
	} {
		if _, err := parseStats(bad); !errors.Is(err, ErrABI) {
			t.Errorf("%s: err %v, want ErrABI", name, err)
		}
	}
}
