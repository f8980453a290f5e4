package guestkernel

import "encoding/binary"

// PatchListEntry is one patch of struct klp_patch_list: the guest
// addresses of its struct klp_patch and of its klp_state array (0: none).
type PatchListEntry struct {
	Patch  uint64
	States uint64
}

// PatchList is the content of klp_patch_list (include/klp_abi.h): Linux's
// klp_patches list, oldest first, and klp_transition_patch (Transition:
// its index in Patches, -1 if no transition is in progress). The guest's
// klp_get_prev_state walks it (kernel/state.c).
type PatchList struct {
	Patches    []PatchListEntry
	Transition int
}

// EncodePatchList lays l out as the body of struct klp_patch_list from
// nr_patches on (PatchListSize-offPLNrPatches bytes).
func EncodePatchList(l PatchList) ([]byte, error) {
	const op = "encode klp_patch_list"
	if len(l.Patches) > PatchListMax {
		return nil, errorf(op, ErrCapacity, 0, "%d patches, the guest holds %d", len(l.Patches), PatchListMax)
	}
	if l.Transition < -1 || l.Transition >= len(l.Patches) {
		return nil, errorf(op, ErrInvalid, 0, "transition %d of %d patches", l.Transition, len(l.Patches))
	}
	b := make([]byte, PatchListSize-offPLNrPatches)
	le := binary.LittleEndian
	le.PutUint32(b[offPLNrPatches-offPLNrPatches:], uint32(len(l.Patches)))
	le.PutUint32(b[offPLTransition-offPLNrPatches:], uint32(l.Transition+1))
	for i, e := range l.Patches {
		at := offPLPatches - offPLNrPatches + i*PatchListEntrySize
		le.PutUint64(b[at+offPLEPatch:], e.Patch)
		le.PutUint64(b[at+offPLEStates:], e.States)
	}
	return b, nil
}

// DecodePatchList parses a whole struct klp_patch_list image, clamped as
// the guest clamps it, and returns it with its seq. For tests and for
// reading back what the host wrote.
func DecodePatchList(p []byte) (PatchList, uint32, error) {
	const op = "decode klp_patch_list"
	if len(p) < PatchListSize {
		return PatchList{}, 0, errorf(op, ErrFormat, 0, "%d bytes, want %d", len(p), PatchListSize)
	}
	if err := checkPatchListHeader(p[:PatchListHeader], 0); err != nil {
		return PatchList{}, 0, err
	}
	le := binary.LittleEndian
	n := min(le.Uint32(p[offPLNrPatches:]), PatchListMax)
	l := PatchList{Transition: int(le.Uint32(p[offPLTransition:])) - 1}
	if l.Transition >= int(n) {
		l.Transition = -1 // the guest ignores a transition beyond the list
	}
	for i := 0; i < int(n); i++ {
		at := offPLPatches + i*PatchListEntrySize
		l.Patches = append(l.Patches, PatchListEntry{Patch: le.Uint64(p[at+offPLEPatch:]), States: le.Uint64(p[at+offPLEStates:])})
	}
	return l, le.Uint32(p[offPLSeq:]), nil
}

func checkPatchListHeader(h []byte, addr uint64) error {
	const op = "check klp_patch_list"
	le := binary.LittleEndian
	switch {
	case le.Uint64(h[offPLMagic:]) != PatchListMagic:
		return errorf(op, ErrFormat, addr, "magic %#x, want %#x", le.Uint64(h[offPLMagic:]), uint64(PatchListMagic))
	case le.Uint32(h[offPLVersion:]) != PatchListVersion:
		return errorf(op, ErrFormat, addr, "version %d, this host knows %d", le.Uint32(h[offPLVersion:]), PatchListVersion)
	case le.Uint32(h[offPLSize:]) != PatchListSize:
		return errorf(op, ErrFormat, addr, "size %d, want %d", le.Uint32(h[offPLSize:]), PatchListSize)
	case le.Uint32(h[offPLMaxPatches:]) != PatchListMax:
		return errorf(op, ErrFormat, addr, "capacity %d, want %d", le.Uint32(h[offPLMaxPatches:]), PatchListMax)
	}
	return nil
}

// PatchListWriter writes klp_patch_list under its seqlock, as
// SysfsWriter writes klp_sysfs_state. One writer per guest.
type PatchListWriter struct {
	mem  MemoryWriter
	addr uint64
}

// NewPatchListWriter checks the header of the klp_patch_list at addr.
func NewPatchListWriter(mem MemoryWriter, addr uint64) (*PatchListWriter, error) {
	h := make([]byte, PatchListHeader)
	if err := mem.ReadVirt(addr, h); err != nil {
		return nil, &Error{Op: "read klp_patch_list", Kind: ErrMemory, Addr: addr, Err: err}
	}
	if err := checkPatchListHeader(h, addr); err != nil {
		return nil, err
	}
	return &PatchListWriter{mem: mem, addr: addr}, nil
}

// NewPatchListWriterSym finds klp_patch_list through the kernel's
// symbols: ErrNotFound for a guest kernel from before klp_state, which
// has no state API to serve.
func NewPatchListWriterSym(mem MemoryWriter, syms *Symbols) (*PatchListWriter, error) {
	s, err := syms.Lookup("klp_patch_list")
	if err != nil {
		return nil, err
	}
	return NewPatchListWriter(mem, s.Addr)
}

// Write replaces the list the guest sees: seq made odd, the body (counts,
// then every entry, zeros past the list) written, seq made even. Nothing is written if l
// does not fit; a previous writer that died mid-update (odd seq) is
// recovered.
func (w *PatchListWriter) Write(l PatchList) error {
	const op = "write klp_patch_list"
	body, err := EncodePatchList(l)
	if err != nil {
		return err
	}
	var sb [4]byte
	if err := w.mem.ReadVirt(w.addr+offPLSeq, sb[:]); err != nil {
		return &Error{Op: op, Kind: ErrMemory, Addr: w.addr + offPLSeq, Err: err}
	}
	seq := binary.LittleEndian.Uint32(sb[:])
	odd := seq | 1
	if odd == seq {
		odd = seq + 2
	}
	put := func(off uint64, b []byte) error {
		if err := w.mem.WriteVirt(w.addr+off, b); err != nil {
			return &Error{Op: op, Kind: ErrMemory, Addr: w.addr + off, Err: err}
		}
		return nil
	}
	binary.LittleEndian.PutUint32(sb[:], odd)
	if err := put(offPLSeq, sb[:]); err != nil {
		return err
	}
	// Every entry, the unused ones zeroed: no stale address stays in
	// the guest after a patch leaves the list.
	if err := put(offPLNrPatches, body); err != nil {
		return err
	}
	binary.LittleEndian.PutUint32(sb[:], odd+1)
	return put(offPLSeq, sb[:])
}
