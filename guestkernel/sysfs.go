package guestkernel

import (
	"encoding/binary"
	"strings"
)

// MemoryWriter reads and writes guest memory by kernel virtual address.
// Writes must reach guest memory in call order (plain stores on x86 do):
// the seqlock below depends on it.
type MemoryWriter interface {
	Memory
	WriteVirt(addr uint64, b []byte) error
}

// SysfsPatch is one patch as /sys/kernel/livepatch shows it.
type SysfsPatch struct {
	Name       string
	Enabled    bool
	Transition bool
	Force      bool
	Replace    bool
	StackOrder uint32
	Objects    []SysfsObject
}

// SysfsObject is one patched object ("vmlinux" or a module name).
type SysfsObject struct {
	Name    string
	Patched bool
	Funcs   []SysfsFunc
}

// SysfsFunc is one function of an object: directory "<name>,<sympos>".
type SysfsFunc struct {
	Name   string
	Sympos uint32
}

// checkName refuses names that cannot be a sysfs directory name or do not
// fit the guest's fixed-size field (which needs room for the NUL).
func checkName(kind, name string, size int) error {
	switch {
	case name == "" || name == "." || name == "..":
		return errorf("encode sysfs state", ErrInvalid, 0, "%s name %q", kind, name)
	case len(name) >= size:
		return errorf("encode sysfs state", ErrInvalid, 0, "%s name %q: %d bytes, max %d", kind, name, len(name), size-1)
	case strings.ContainsAny(name, "/\x00\n"):
		return errorf("encode sysfs state", ErrInvalid, 0, "%s name %q contains '/', NUL or newline", kind, name)
	}
	return nil
}

// EncodeSysfsState lays out patches as the body of struct klp_sysfs_state
// (everything from nr_patches on, SysfsStateSize-offSSNrPatches bytes).
func EncodeSysfsState(patches []SysfsPatch) ([]byte, error) {
	return encodeSysfs(nil, patches)
}

// encodeSysfs is EncodeSysfsState into st, a whole struct image
// (SysfsStateSize bytes) that may hold a previous encoding; nil allocates.
func encodeSysfs(st []byte, patches []SysfsPatch) ([]byte, error) {
	const op = "encode sysfs state"
	nObj, nFunc := 0, 0
	for _, p := range patches {
		nObj += len(p.Objects)
		for _, o := range p.Objects {
			nFunc += len(o.Funcs)
		}
	}
	switch {
	case len(patches) > SysfsMaxPatches:
		return nil, errorf(op, ErrCapacity, 0, "%d patches, the guest holds %d", len(patches), SysfsMaxPatches)
	case nObj > SysfsMaxObjs:
		return nil, errorf(op, ErrCapacity, 0, "%d objects, the guest holds %d", nObj, SysfsMaxObjs)
	case nFunc > SysfsMaxFuncs:
		return nil, errorf(op, ErrCapacity, 0, "%d functions, the guest holds %d", nFunc, SysfsMaxFuncs)
	}
	if st == nil {
		st = make([]byte, SysfsStateSize)
	}
	return encodeSysfsState(st, patches, nObj, nFunc)
}

// encodeSysfsState fills st (SysfsStateSize bytes, possibly holding a
// previous encoding) after EncodeSysfsState's checks of the counts. Only
// the entries in use are cleared and written: the body's unused entries
// are never read (Write sends the used part of each table, the guest
// clamps by count).
func encodeSysfsState(st []byte, patches []SysfsPatch, nObj, nFunc int) ([]byte, error) {
	const op = "encode sysfs state"
	clear(st[offSSPatches : offSSPatches+len(patches)*SysfsPatchSize])
	clear(st[offSSObjs : offSSObjs+nObj*SysfsObjSize])
	clear(st[offSSFuncs : offSSFuncs+nFunc*SysfsFuncSize])
	le := binary.LittleEndian
	le.PutUint32(st[offSSNrPatches:], uint32(len(patches)))
	le.PutUint32(st[offSSNrObjs:], uint32(nObj))
	le.PutUint32(st[offSSNrFuncs:], uint32(nFunc))
	oi, fi := 0, 0
	seen := map[string]bool{}
	for pi, p := range patches {
		if err := checkName("patch", p.Name, SysfsNameLen); err != nil {
			return nil, err
		}
		if seen[p.Name] {
			return nil, errorf(op, ErrInvalid, 0, "patch %q listed twice", p.Name)
		}
		seen[p.Name] = true
		e := st[offSSPatches+pi*SysfsPatchSize:]
		copy(e[offSPName:offSPName+SysfsNameLen], p.Name)
		e[offSPEnabled], e[offSPTransition], e[offSPForce], e[offSPReplace] = b2u(p.Enabled), b2u(p.Transition), b2u(p.Force), b2u(p.Replace)
		le.PutUint32(e[offSPStackOrder:], p.StackOrder)
		le.PutUint32(e[offSPFirstObj:], uint32(oi))
		le.PutUint32(e[offSPNrObjs:], uint32(len(p.Objects)))
		objSeen := map[string]bool{}
		for _, o := range p.Objects {
			if err := checkName("object", o.Name, SysfsNameLen); err != nil {
				return nil, err
			}
			if objSeen[o.Name] {
				return nil, errorf(op, ErrInvalid, 0, "patch %q: object %q listed twice", p.Name, o.Name)
			}
			objSeen[o.Name] = true
			oe := st[offSSObjs+oi*SysfsObjSize:]
			copy(oe[offSOName:offSOName+SysfsNameLen], o.Name)
			le.PutUint32(oe[offSOPatched:], uint32(b2u(o.Patched)))
			le.PutUint32(oe[offSOFirstFunc:], uint32(fi))
			le.PutUint32(oe[offSONrFuncs:], uint32(len(o.Funcs)))
			for _, f := range o.Funcs {
				if err := checkName("function", f.Name, SysfsFuncNameLen); err != nil {
					return nil, err
				}
				fe := st[offSSFuncs+fi*SysfsFuncSize:]
				copy(fe[offSFName:offSFName+SysfsFuncNameLen], f.Name)
				le.PutUint32(fe[offSFSympos:], f.Sympos)
				fi++
			}
			oi++
		}
	}
	return st[offSSNrPatches:], nil
}

func b2u(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

// DecodeSysfsState parses a whole struct klp_sysfs_state image (as the
// guest would render it, with the same clamping) and returns its patches
// and seq. For tests and for reading back what the host wrote.
func DecodeSysfsState(st []byte) ([]SysfsPatch, uint32, error) {
	const op = "decode sysfs state"
	if len(st) < SysfsStateSize {
		return nil, 0, errorf(op, ErrFormat, 0, "%d bytes, want %d", len(st), SysfsStateSize)
	}
	if err := checkSysfsHeader(st[:SysfsHeaderSize], 0); err != nil {
		return nil, 0, err
	}
	le := binary.LittleEndian
	u32 := func(p []byte, o int) uint32 { return le.Uint32(p[o:]) }
	np := min(u32(st, offSSNrPatches), SysfsMaxPatches)
	no := min(u32(st, offSSNrObjs), SysfsMaxObjs)
	nf := min(u32(st, offSSNrFuncs), SysfsMaxFuncs)
	var out []SysfsPatch
	// ranges may overlap in a bogus buffer: bound the total decoded
	totalObjs, totalFuncs := 0, 0
	for pi := 0; pi < int(np); pi++ {
		e := st[offSSPatches+pi*SysfsPatchSize:]
		p := SysfsPatch{Name: cstring(e[:SysfsNameLen]), Enabled: e[offSPEnabled] != 0, Transition: e[offSPTransition] != 0,
			Force: e[offSPForce] != 0, Replace: e[offSPReplace] != 0, StackOrder: u32(e, offSPStackOrder)}
		first, n := u32(e, offSPFirstObj), u32(e, offSPNrObjs)
		for o := uint64(first); o < uint64(first)+uint64(n) && o < uint64(no); o++ {
			if totalObjs++; totalObjs > SysfsMaxObjs {
				return nil, 0, errorf(op, ErrFormat, 0, "object ranges overlap")
			}
			oe := st[offSSObjs+int(o)*SysfsObjSize:]
			obj := SysfsObject{Name: cstring(oe[:SysfsNameLen]), Patched: u32(oe, offSOPatched) != 0}
			ff, fn := u32(oe, offSOFirstFunc), u32(oe, offSONrFuncs)
			for f := uint64(ff); f < uint64(ff)+uint64(fn) && f < uint64(nf); f++ {
				if totalFuncs++; totalFuncs > SysfsMaxFuncs {
					return nil, 0, errorf(op, ErrFormat, 0, "function ranges overlap")
				}
				fe := st[offSSFuncs+int(f)*SysfsFuncSize:]
				obj.Funcs = append(obj.Funcs, SysfsFunc{Name: cstring(fe[:SysfsFuncNameLen]), Sympos: u32(fe, offSFSympos)})
			}
			p.Objects = append(p.Objects, obj)
		}
		out = append(out, p)
	}
	return out, u32(st, offSSSeq), nil
}

func checkSysfsHeader(h []byte, addr uint64) error {
	const op = "check klp_sysfs_state"
	le := binary.LittleEndian
	switch {
	case le.Uint64(h[offSSMagic:]) != SysfsMagic:
		return errorf(op, ErrFormat, addr, "magic %#x, want %#x", le.Uint64(h[offSSMagic:]), uint64(SysfsMagic))
	case le.Uint32(h[offSSVersion:]) != SysfsVersion:
		return errorf(op, ErrFormat, addr, "version %d, this host knows %d", le.Uint32(h[offSSVersion:]), SysfsVersion)
	case le.Uint32(h[offSSSize:]) != SysfsStateSize:
		return errorf(op, ErrFormat, addr, "size %d, want %d", le.Uint32(h[offSSSize:]), SysfsStateSize)
	case le.Uint32(h[offSSMaxPatches:]) != SysfsMaxPatches || le.Uint32(h[offSSMaxObjs:]) != SysfsMaxObjs ||
		le.Uint32(h[offSSMaxFuncs:]) != SysfsMaxFuncs:
		return errorf(op, ErrFormat, addr, "capacities %d/%d/%d, want %d/%d/%d", le.Uint32(h[offSSMaxPatches:]),
			le.Uint32(h[offSSMaxObjs:]), le.Uint32(h[offSSMaxFuncs:]), SysfsMaxPatches, SysfsMaxObjs, SysfsMaxFuncs)
	}
	return nil
}

// SysfsWriter writes the livepatch state into the guest's klp_sysfs_state
// under its seqlock. One writer per guest: the host side is not locked
// against itself (the livepatch package serialises its updates).
type SysfsWriter struct {
	mem        MemoryWriter
	addr       uint64
	generation uint32
	buf        []byte // the encoding, reused by each Write (a 139 KB image)
}

// NewSysfsWriter checks the header of the klp_sysfs_state at addr.
func NewSysfsWriter(mem MemoryWriter, addr uint64) (*SysfsWriter, error) {
	h := make([]byte, SysfsHeaderSize)
	if err := mem.ReadVirt(addr, h); err != nil {
		return nil, &Error{Op: "read klp_sysfs_state", Kind: ErrMemory, Addr: addr, Err: err}
	}
	if err := checkSysfsHeader(h, addr); err != nil {
		return nil, err
	}
	return &SysfsWriter{mem: mem, addr: addr, generation: binary.LittleEndian.Uint32(h[offSSGeneration:])}, nil
}

// NewSysfsWriterSym finds klp_sysfs_state through the kernel's symbols.
func NewSysfsWriterSym(mem MemoryWriter, syms *Symbols) (*SysfsWriter, error) {
	s, err := syms.Lookup("klp_sysfs_state")
	if err != nil {
		return nil, err
	}
	return NewSysfsWriter(mem, s.Addr)
}

// Write replaces the guest's view of the livepatch state. The sequence is
// the seqlock's: seq made odd, the body written, seq made even; a guest
// reader that overlaps retries. Nothing is written if the state does not
// fit. A previous writer that died mid-update (odd seq) is recovered.
func (w *SysfsWriter) Write(patches []SysfsPatch) error {
	const op = "write sysfs state"
	if w.buf == nil {
		w.buf = make([]byte, SysfsStateSize)
	}
	body, err := encodeSysfs(w.buf, patches)
	if err != nil {
		return err
	}
	var sb [4]byte
	if err := w.mem.ReadVirt(w.addr+offSSSeq, sb[:]); err != nil {
		return &Error{Op: op, Kind: ErrMemory, Addr: w.addr + offSSSeq, Err: err}
	}
	seq := binary.LittleEndian.Uint32(sb[:])
	odd := seq | 1
	if odd == seq {
		odd = seq + 2 // already odd: a writer died; stay odd, move on
	}
	put := func(off uint64, b []byte) error {
		if len(b) == 0 {
			return nil
		}
		if err := w.mem.WriteVirt(w.addr+off, b); err != nil {
			return &Error{Op: op, Kind: ErrMemory, Addr: w.addr + off, Err: err}
		}
		return nil
	}
	binary.LittleEndian.PutUint32(sb[:], odd)
	if err := put(offSSSeq, sb[:]); err != nil {
		return err
	}
	// counts and only the used part of each table: the guest clamps by count
	if err := put(offSSNrPatches, body[:12]); err != nil { // nr_patches, nr_objs, nr_funcs
		return err
	}
	w.generation++
	var gb [4]byte
	binary.LittleEndian.PutUint32(gb[:], w.generation)
	if err := put(offSSGeneration, gb[:]); err != nil {
		return err
	}
	le := binary.LittleEndian
	np := int(le.Uint32(body[0:]))
	no := int(le.Uint32(body[4:]))
	nf := int(le.Uint32(body[8:]))
	rel := func(off int) int { return off - offSSNrPatches }
	if err := put(offSSPatches, body[rel(offSSPatches):rel(offSSPatches)+np*SysfsPatchSize]); err != nil {
		return err
	}
	if err := put(offSSObjs, body[rel(offSSObjs):rel(offSSObjs)+no*SysfsObjSize]); err != nil {
		return err
	}
	if err := put(offSSFuncs, body[rel(offSSFuncs):rel(offSSFuncs)+nf*SysfsFuncSize]); err != nil {
		return err
	}
	binary.LittleEndian.PutUint32(sb[:], odd+1)
	return put(offSSSeq, sb[:])
}
