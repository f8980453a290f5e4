package guestkernel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"reflect"
	"testing"
)

func newPatchListMem(t testing.TB) (*fakeMem, uint64) {
	im := openImage(t, Vmlinux())
	addr := im.addr(t, "klp_patch_list")
	mem := newFakeMem()
	mem.add(addr, im.read(t, "klp_patch_list", PatchListSize))
	return mem, addr
}

func TestPatchListWriter(t *testing.T) {
	mem, addr := newPatchListMem(t)
	// The image's own list: empty, no transition.
	l, seq, err := DecodePatchList(mem.regions[addr])
	if err != nil || seq != 0 || len(l.Patches) != 0 || l.Transition != -1 {
		t.Fatalf("initial list %+v seq %d: %v", l, seq, err)
	}
	w, err := NewPatchListWriter(mem, addr)
	if err != nil {
		t.Fatal(err)
	}
	want := PatchList{Patches: []PatchListEntry{{0xffffffffa0000080, 0xffffffffa00000a0}, {0xffffffffa0001080, 0}}, Transition: 1}
	if err := w.Write(want); err != nil {
		t.Fatal(err)
	}
	got, seq, err := DecodePatchList(mem.regions[addr])
	if err != nil || seq != 2 || !reflect.DeepEqual(got, want) {
		t.Fatalf("seq %d %v\n got %+v\nwant %+v", seq, err, got, want)
	}
	seqAt := fmt.Sprintf("%#x:4", addr+offPLSeq)
	if mem.writes[0] != seqAt || mem.writes[len(mem.writes)-1] != seqAt {
		t.Fatalf("writes %v: seq must be written first and last", mem.writes)
	}
	// The transition over: one patch left, none in transition.
	if err := w.Write(PatchList{Patches: want.Patches[1:], Transition: -1}); err != nil {
		t.Fatal(err)
	}
	if got, seq, _ = DecodePatchList(mem.regions[addr]); seq != 4 || len(got.Patches) != 1 || got.Transition != -1 {
		t.Fatalf("after: seq %d %+v", seq, got)
	}
	// A writer that died mid-update left seq odd: the next write ends even.
	binary.LittleEndian.PutUint32(mem.regions[addr][offPLSeq:], 9)
	if err := w.Write(PatchList{Transition: -1}); err != nil {
		t.Fatal(err)
	}
	if _, seq, _ = DecodePatchList(mem.regions[addr]); seq%2 != 0 || seq <= 9 {
		t.Fatalf("recovery: seq %d", seq)
	}
	// Refused, nothing written: too many, a transition outside the list.
	before := len(mem.writes)
	if err := w.Write(PatchList{Patches: make([]PatchListEntry, PatchListMax+1), Transition: -1}); !errors.Is(err, ErrCapacity) {
		t.Errorf("too many: %v", err)
	}
	if err := w.Write(PatchList{Patches: want.Patches, Transition: 2}); !errors.Is(err, ErrInvalid) {
		t.Errorf("transition out of range: %v", err)
	}
	if len(mem.writes) != before {
		t.Errorf("a refused list was written")
	}
	// A header that is not one.
	binary.LittleEndian.PutUint64(mem.regions[addr][offPLMagic:], 1)
	if _, err := NewPatchListWriter(mem, addr); !errors.Is(err, ErrFormat) {
		t.Errorf("bad magic: %v", err)
	}
}
