package elfpatch

import (
	"os"
	"testing"
)

// TestParseObjectFile reads a committed patch object as a plain relocatable
// object: every relocation lies inside its section and names a symbol.
func TestParseObjectFile(t *testing.T) {
	data, err := os.ReadFile("../guestkernel/prebuilt/patches/livepatch-sample.o")
	if err != nil {
		t.Skip(err)
	}
	o, err := ParseObjectFile(data)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for i, s := range o.Sections() {
		for _, r := range o.Relocs(i) {
			if r.Offset >= s.Size || r.Symbol >= len(o.Symbols()) {
				t.Fatalf("%s: bad reloc %+v", s.Name, r)
			}
			n++
		}
		if s.Name == ".klp.modname" && string(o.SectionData(i)) != "livepatch_sample\x00" {
			t.Errorf(".klp.modname = %q", o.SectionData(i))
		}
	}
	if n == 0 {
		t.Fatal("no relocations")
	}
	if _, err := ParseObjectFile(Nop5[:]); err == nil {
		t.Fatal("a 5-byte input parsed")
	}
}

func FuzzParseObjectFile(f *testing.F) {
	addSeeds(f, "../guestkernel/prebuilt/patches/*.o")
	f.Fuzz(func(t *testing.T, data []byte) {
		o, err := ParseObjectFile(data)
		if err != nil {
			if _, ok := err.(*Error); !ok {
				t.Fatalf("error of type %T: %v", err, err)
			}
			return
		}
		for i, s := range o.Sections() {
			d := o.SectionData(i)
			if s.Type != SHT_NOBITS && s.Type != SHT_NULL && uint64(len(d)) != s.Size {
				t.Fatalf("section %d: %d bytes, header says %d", i, len(d), s.Size)
			}
			for _, r := range o.Relocs(i) {
				if r.Offset >= s.Size || r.Symbol < 0 || r.Symbol >= len(o.Symbols()) {
					t.Fatalf("bad reloc %+v", r)
				}
			}
		}
	})
}
