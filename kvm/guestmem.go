package kvm

// Guest memory access for the host. Reads are allowed at any time (a
// running guest may change what they see); writes that may hit code must
// be done while paused, which the ftrace layer enforces. Every write tells
// the engine which bytes changed so that cached decoded code is dropped.

// ReadPhys copies guest-physical [pa, pa+len(b)) into b.
func (m *Machine) ReadPhys(pa uint64, b []byte) error {
	if err := physRange(m.ram, pa, uint64(len(b))); err != nil {
		return err
	}
	copy(b, m.ram[pa:])
	return nil
}

// WritePhys copies b to guest-physical pa.
func (m *Machine) WritePhys(pa uint64, b []byte) error {
	if err := physRange(m.ram, pa, uint64(len(b))); err != nil {
		return err
	}
	copy(m.ram[pa:], b)
	m.vm.CodeChanged(pa, uint64(len(b)))
	return nil
}

// ReadVirt reads guest-virtual memory through the boot page tables (klp-kvm
// guests keep the host's page tables; see boot_info.h).
func (m *Machine) ReadVirt(va uint64, b []byte) error {
	return m.ReadVirtCR3(m.layout.CR3, va, b)
}

// WriteVirt writes guest-virtual memory through the boot page tables. The
// whole range is translated first, so a fault writes nothing.
func (m *Machine) WriteVirt(va uint64, b []byte) error {
	return m.WriteVirtCR3(m.layout.CR3, va, b)
}

// ReadVirtCR3 reads guest-virtual memory through the tables at cr3.
func (m *Machine) ReadVirtCR3(cr3, va uint64, b []byte) error {
	return virtChunks(m.ram, cr3, va, len(b), func(pa uint64, off, n int) error {
		copy(b[off:off+n], m.ram[pa:])
		return nil
	})
}

// WriteVirtCR3 writes guest-virtual memory through the tables at cr3,
// all or nothing.
func (m *Machine) WriteVirtCR3(cr3, va uint64, b []byte) error {
	type chunk struct {
		pa     uint64
		off, n int
	}
	var chunks []chunk
	if err := virtChunks(m.ram, cr3, va, len(b), func(pa uint64, off, n int) error {
		chunks = append(chunks, chunk{pa, off, n})
		return nil
	}); err != nil {
		return err
	}
	for _, c := range chunks {
		copy(m.ram[c.pa:], b[c.off:c.off+c.n])
		m.vm.CodeChanged(c.pa, uint64(c.n))
	}
	return nil
}

// Translate returns the translation of va through the boot page tables.
func (m *Machine) Translate(va uint64) (Translation, error) {
	return Walk(m.ram, m.layout.CR3, va)
}

// VirtPhys translates va through the boot page tables: its guest-physical
// address and the bytes from there to the end of its page (both inside
// RAM). With the guest paused the answer holds until it resumes, so a
// host that touches many small places of one page (the ftrace sites of a
// 1024-function patch) walks the tables once per page, not per place,
// and reads and writes them with ReadPhys and WritePhys.
func (m *Machine) VirtPhys(va uint64) (pa, n uint64, err error) {
	t, err := Walk(m.ram, m.layout.CR3, va)
	if err != nil {
		return 0, 0, err
	}
	n = t.PageSize - t.Phys&(t.PageSize-1)
	if t.Phys >= uint64(len(m.ram)) {
		return 0, 0, physRange(m.ram, t.Phys, 1)
	}
	n = min(n, uint64(len(m.ram))-t.Phys)
	return t.Phys, n, nil
}

// EqualVirt reports whether guest-virtual [va, va+len(b)) holds b,
// comparing in place (no copy): ftrace verifies a 45 KB text cluster
// against its snapshot inside the pause window with it. An unmapped
// byte is an error, not a difference.
func (m *Machine) EqualVirt(va uint64, b []byte) (bool, error) {
	eq := true
	err := virtChunks(m.ram, m.layout.CR3, va, len(b), func(pa uint64, off, n int) error {
		if eq && string(m.ram[pa:pa+uint64(n)]) != string(b[off:off+n]) {
			eq = false
		}
		return nil
	})
	if err != nil {
		return false, err
	}
	return eq, nil
}
